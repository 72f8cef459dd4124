//! The agent's side of the spawner (`spawner`): one spawner process per shim executable, started
//! when the first owned task needs it and again if it died; a forked shim's lease and status.

use std::collections::HashMap;
use std::fs::File;
use std::io::IoSlice;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use nix::sys::socket::{
    sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

use super::shim::ShimArgs;
use super::spawner::{HAS_STDERR, HAS_STDOUT};

/// How long a task may take to start: the spawner hands it to a shim (forking one if none is
/// idle), which reads its arguments and starts the command.
const FORK_REPLY: Duration = Duration::from_secs(10);

/// The spawner of one shim executable.
#[derive(Debug)]
pub(super) struct Spawner {
    exe: PathBuf,
    conn: tokio::sync::Mutex<Option<Conn>>,
}

#[derive(Debug)]
struct Conn {
    /// A `SOCK_SEQPACKET` socket (its end closes when the agent dies, which a datagram
    /// socket's would not tell the spawner), held in tokio's datagram type for its readiness
    /// only: every send is our own `sendmsg`.
    control: tokio::net::UnixDatagram,
    process: tokio::process::Child,
}

/// The spawner for `exe`: one per agent process (every driver made for `exe` shares it).
pub(super) fn spawner(exe: &Path) -> Arc<Spawner> {
    static ALL: OnceLock<Mutex<HashMap<PathBuf, Arc<Spawner>>>> = OnceLock::new();
    let mut all = ALL
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    all.entry(exe.to_path_buf())
        .or_insert_with(|| {
            Arc::new(Spawner {
                exe: exe.to_path_buf(),
                conn: tokio::sync::Mutex::new(None),
            })
        })
        .clone()
}

impl Spawner {
    /// Runs `args` in a shim with these output files; returns once the command runs (its
    /// process group known).
    pub(super) async fn start(
        &self,
        args: &ShimArgs,
        stdout: Option<File>,
        stderr: Option<File>,
    ) -> std::io::Result<ForkedShim> {
        let (mine, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let mut flags = 0u8;
        let mut fds = vec![theirs.as_raw_fd()];
        if let Some(f) = &stdout {
            flags |= HAS_STDOUT;
            fds.push(f.as_raw_fd());
        }
        if let Some(f) = &stderr {
            flags |= HAS_STDERR;
            fds.push(f.as_raw_fd());
        }
        self.send(flags, &fds).await?;
        // The spawner holds its own copies now.
        drop((theirs, stdout, stderr));
        let mine = std::os::unix::net::UnixStream::from(mine);
        mine.set_nonblocking(true)?;
        let mut shim = ForkedShim::on(tokio::net::UnixStream::from_std(mine)?);
        let mut line = serde_json::to_vec(args).map_err(std::io::Error::other)?;
        line.push(b'\n');
        shim.lease.write_all(&line).await?;
        match tokio::time::timeout(FORK_REPLY, shim.started()).await {
            Ok(r) => r.map(|()| shim),
            Err(_) => Err(std::io::Error::other("the task did not start in time")),
        }
    }

    /// Sends one request, starting the spawner first if it is not running (once again if the
    /// send finds it gone).
    async fn send(&self, flags: u8, fds: &[i32]) -> std::io::Result<()> {
        let mut conn = self.conn.lock().await;
        for attempt in 0..2 {
            let c = match conn.take() {
                None => self.launch()?,
                Some(mut c) => {
                    if matches!(c.process.try_wait(), Ok(None)) {
                        c
                    } else {
                        tracing::warn!("the task spawner ended; starting another");
                        self.launch()?
                    }
                }
            };
            let c = conn.insert(c);
            match send_on(&c.control, flags, fds).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt == 0 => {
                    tracing::warn!(error = %e, "the task spawner is gone; starting another");
                    *conn = None;
                }
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::other("the task spawner cannot be reached"))
    }

    fn launch(&self) -> std::io::Result<Conn> {
        let (mine, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let mine = std::os::unix::net::UnixDatagram::from(mine);
        mine.set_nonblocking(true)?;
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg("__spawner")
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            // Not in the agent's group: a Ctrl-C meant for the agent must not end the
            // spawner before the agent has stopped its tasks (it reports their ends).
            .process_group(0)
            .kill_on_drop(true);
        let process = cmd.spawn()?;
        Ok(Conn {
            control: tokio::net::UnixDatagram::from_std(mine)?,
            process,
        })
    }
}

async fn send_on(
    control: &tokio::net::UnixDatagram,
    flags: u8,
    fds: &[i32],
) -> std::io::Result<()> {
    let byte = [flags];
    let iov = [IoSlice::new(&byte)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    control
        .async_io(tokio::io::Interest::WRITABLE, || {
            sendmsg::<()>(
                control.as_raw_fd(),
                &iov,
                &cmsg,
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .map_err(std::io::Error::from)
        })
        .await
        .map(|_| ())
}

/// A task in a shim of the spawner: its lease (fence deadlines go down it; it ends when the
/// agent dies), and the shim's report of the command's start and end.
#[derive(Debug)]
pub(super) struct ForkedShim {
    read: OwnedReadHalf,
    pub(super) lease: OwnedWriteHalf,
    buf: Vec<u8>,
    /// The command's process group; 0 when it could not start (its `exit` follows).
    pub(super) pid: u32,
    /// The end, once known.
    code: Option<i32>,
}

impl ForkedShim {
    /// The agent's end of a lease, before the shim answered.
    fn on(stream: tokio::net::UnixStream) -> Self {
        let (read, lease) = stream.into_split();
        ForkedShim {
            read,
            lease,
            buf: Vec::new(),
            pid: 0,
            code: None,
        }
    }

    /// The next line from the spawner or the shim; None at the end. Cancel-safe: what was read stays in
    /// `buf`.
    async fn next_line(&mut self) -> Option<String> {
        loop {
            if let Some(n) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=n).collect();
                return Some(String::from_utf8_lossy(&line).trim().to_string());
            }
            match self.read.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Reads up to the shim's `pid` line; a spawner's `error` line is not a start.
    async fn started(&mut self) -> std::io::Result<()> {
        let Some(l) = self.next_line().await else {
            return Err(std::io::Error::other("the spawner closed the task"));
        };
        match number(&l, "pid ") {
            Some(pid) => {
                self.pid = pid;
                Ok(())
            }
            None => Err(std::io::Error::other(format!("spawner: {l}"))),
        }
    }

    /// The command's exit code, as its shim reported it; -1 when the shim died first (killed
    /// by a signal). Cancel-safe.
    pub(super) async fn wait(&mut self) -> i32 {
        if let Some(c) = self.code {
            return c;
        }
        let code = loop {
            let Some(l) = self.next_line().await else {
                tracing::warn!(
                    pgid = self.pid,
                    "the task's shim ended without reporting its end"
                );
                break -1;
            };
            if let Some(c) = number(&l, "exit ") {
                break c;
            }
        };
        self.code = Some(code);
        code
    }
}

/// The number of a `<prefix>N` line from the spawner or the shim.
fn number<T: std::str::FromStr>(line: &str, prefix: &str) -> Option<T> {
    line.strip_prefix(prefix)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spawner's side of a lease, written by the test.
    async fn lease(lines: &str) -> ForkedShim {
        let (mine, mut theirs) = tokio::net::UnixStream::pair().expect("socketpair");
        theirs.write_all(lines.as_bytes()).await.expect("write");
        drop(theirs);
        ForkedShim::on(mine)
    }

    #[tokio::test]
    async fn the_shim_reports_the_group_then_the_code() {
        let mut shim = lease("pid 42\nexit 7\n").await;
        shim.started().await.expect("started");
        assert_eq!(shim.pid, 42);
        assert_eq!(shim.wait().await, 7);
        // Asked again, the same answer (a stop after the end).
        assert_eq!(shim.wait().await, 7);
    }

    #[tokio::test]
    async fn a_command_that_could_not_start_has_no_group_and_its_code() {
        let mut shim = lease("pid 0\nexit 127\n").await;
        shim.started().await.expect("started");
        assert_eq!(shim.pid, 0);
        assert_eq!(shim.wait().await, 127);
    }

    #[tokio::test]
    async fn a_shim_that_died_without_an_exit_line_ended_by_a_signal() {
        let mut shim = lease("pid 9\n").await;
        shim.started().await.expect("started");
        assert_eq!(shim.wait().await, -1);
    }

    #[tokio::test]
    async fn a_spawner_error_or_silence_is_not_a_start() {
        let mut shim = lease("error cannot fork: EAGAIN\n").await;
        let e = shim.started().await.expect_err("an error line");
        assert!(e.to_string().contains("cannot fork"), "{e}");
        let mut shim = lease("").await;
        assert!(shim.started().await.is_err());
    }
}
