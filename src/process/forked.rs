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

/// How long a started spawner may take to say it forked.
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
    /// Forks a shim for `args` with these output files; returns once it runs (its pid known).
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
            Err(_) => Err(std::io::Error::other("the spawner did not answer")),
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

/// A shim the spawner forked: its lease (fence deadlines go down it; it ends when the agent
/// dies), and the spawner's report of its start and end.
#[derive(Debug)]
pub(super) struct ForkedShim {
    read: OwnedReadHalf,
    pub(super) lease: OwnedWriteHalf,
    buf: Vec<u8>,
    pub(super) pid: u32,
    /// The code the shim reported itself.
    told: Option<i32>,
    /// The end, once known.
    code: Option<i32>,
}

impl ForkedShim {
    /// The agent's end of a lease, before the spawner answered.
    fn on(stream: tokio::net::UnixStream) -> Self {
        let (read, lease) = stream.into_split();
        ForkedShim {
            read,
            lease,
            buf: Vec::new(),
            pid: 0,
            told: None,
            code: None,
        }
    }

    /// The next line from the spawner; None at the end. Cancel-safe: what was read stays in
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

    /// Reads up to the spawner's `pid` line. A shim whose command ends at once may write its
    /// own `code` line before the spawner, back from `fork`, writes the pid: it is kept.
    async fn started(&mut self) -> std::io::Result<()> {
        loop {
            let Some(l) = self.next_line().await else {
                return Err(std::io::Error::other("the spawner closed the task"));
            };
            if let Some(pid) = number(&l, "pid ") {
                self.pid = pid;
                return Ok(());
            }
            match number(&l, "code ") {
                Some(c) => self.told = Some(c),
                None => return Err(std::io::Error::other(format!("spawner: {l}"))),
            }
        }
    }

    /// The shim's exit code once the spawner reaped it. Should the spawner die first: the
    /// code the shim itself reported as it ended, else -1 (a shim killed by a signal).
    /// Cancel-safe.
    pub(super) async fn wait(&mut self) -> i32 {
        if let Some(c) = self.code {
            return c;
        }
        let code = loop {
            let Some(l) = self.next_line().await else {
                tracing::warn!(pid = self.pid, "the spawner did not report a task's end");
                break self.told.unwrap_or(-1);
            };
            if let Some(c) = number(&l, "exit ") {
                break c;
            }
            if let Some(c) = number(&l, "code ") {
                self.told = Some(c);
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

    /// CI failed `servant start` with "cannot start the job: spawner: code 0": a trivial
    /// command ended and its shim wrote `code 0` before the spawner, back from fork, wrote
    /// the pid.
    #[tokio::test]
    async fn regression_a_shim_that_ends_before_its_pid_is_told_still_started() {
        let mut shim = lease("code 0\npid 42\nexit 0\n").await;
        shim.started().await.expect("started");
        assert_eq!(shim.pid, 42);
        assert_eq!(shim.wait().await, 0);
    }

    #[tokio::test]
    async fn the_shims_own_code_counts_when_the_spawner_died_before_the_pid() {
        let mut shim = lease("code 3\npid 7\n").await;
        shim.started().await.expect("started");
        assert_eq!(shim.wait().await, 3);
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
