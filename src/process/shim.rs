//! The job shim: the watcher between the agent and the command of every `Owned` task (jobs,
//! apps, the launched Consul, short commands). The agent's spawner forks it and hands it one
//! task after another (`spawner`); `run_task` is one task's life in it.
//!
//! Why it exists: a job must die with its agent, and must not outlive the agent's hold on it.
//! If the agent is SIGKILLed, its jobs are retried elsewhere; if it is paused (SIGSTOP, a VM
//! freeze), Consul lets its session go and its jobs are retried elsewhere too. Either way the
//! old process must not run on beside the retry, and a dead or paused agent cannot kill it.
//!
//! The shim runs the command as its child, in a process group of its own. The task's lease is a
//! socket whose other end only the agent holds:
//! - the lease ends when the agent dies, however it dies: the shim kills the whole group at
//!   once (no polling: a command that ended meanwhile could otherwise finish with nobody to
//!   write its result);
//! - the agent writes `fence <ms>` lines, the moment (CLOCK_BOOTTIME milliseconds) after which
//!   the work is no longer surely the agent's; `fence none` for work without one. A paused
//!   agent stops moving the deadline, and the shim kills the group when it passes (a
//!   CLOCK_BOOTTIME timer wakes it then; it wakes for nothing else).
//!
//! It also switches to `User`. It uses no async runtime: it is a fork of the single-threaded
//! spawner, which the binary's `main` starts before anything else.

use std::process::Command;

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::signal::{killpg, SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use nix::unistd::{Pid, User};

use super::exit_code;
use crate::util::time::boot_ms;

/// "No deadline" in the shared cell.
pub(super) const NO_FENCE: u64 = u64::MAX;

/// What a shim runs: one JSON line, the first on its lease.
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShimArgs {
    /// The first fence deadline (CLOCK_BOOTTIME ms), given before the agent could be paused;
    /// none when absent.
    pub fence_until: Option<u64>,
    pub user: Option<String>,
    pub pid_file: Option<String>,
    pub argv: Vec<String>,
    /// Added to the command's environment.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// The command's working directory; the agent's when None.
    #[serde(default)]
    pub dir: Option<String>,
}

/// One line the agent writes on the lease pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseLine {
    /// The work must be gone at this CLOCK_BOOTTIME millisecond unless moved again.
    Fence(u64),
    /// No deadline.
    NoFence,
}

impl LeaseLine {
    pub fn to_line(self) -> String {
        match self {
            LeaseLine::Fence(ms) => format!("fence {ms}\n"),
            LeaseLine::NoFence => "fence none\n".to_string(),
        }
    }

    /// A line read from the pipe; None for anything else (ignored).
    pub fn parse(line: &str) -> Option<LeaseLine> {
        match line.trim().strip_prefix("fence ")? {
            "none" => Some(LeaseLine::NoFence),
            ms => ms.parse().ok().map(LeaseLine::Fence),
        }
    }
}

/// A `User` that cannot be switched to.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("user {0:?} does not exist")]
    Missing(String),
    #[error("cannot look up user {name:?}: {error}")]
    Lookup { name: String, error: nix::Error },
}

/// Looks `name` up in the user database (a blocking read of /etc/passwd or NSS).
pub fn lookup_user(name: &str) -> Result<User, UserError> {
    match User::from_name(name) {
        Ok(Some(u)) => Ok(u),
        Ok(None) => Err(UserError::Missing(name.to_string())),
        Err(error) => Err(UserError::Lookup {
            name: name.to_string(),
            error,
        }),
    }
}

/// Makes `cmd` run as `u`, with its login variables.
pub fn run_as(cmd: &mut Command, u: &User) {
    use std::os::unix::process::CommandExt;
    cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw());
    cmd.env("HOME", &u.dir)
        .env("USER", &u.name)
        .env("LOGNAME", &u.name);
}

/// Runs one task in a shim the spawner forked, its stdout and stderr already the task's: reads
/// its arguments (the first line of `lease`), starts the command in a process group of its own,
/// tells the agent `pid N` (the group; 0 when nothing started), watches it, and tells `exit N`.
/// `ready` is called before the `exit` line, told whether the shim may take another task (not
/// once it killed one: the agent is gone, or its hold on the task ended; nor when it could not
/// watch it); it says whether the shim will, which it returns.
pub fn run_task(lease: File, ended: &SignalFd, ready: impl FnOnce(bool) -> bool) -> bool {
    let mut lease = BufReader::new(lease);
    let (code, again) = match forked_args(&mut lease) {
        Ok(a) => run_args(a, &mut lease, ended),
        Err(e) => {
            eprintln!("servant job-shim: {e}");
            tell(&lease, "pid 0\n");
            (127, true)
        }
    };
    let again = ready(again);
    tell(&lease, &format!("exit {code}\n"));
    again
}

/// Writes a line to the agent's end of the lease; a gone agent cannot read it.
fn tell(lease: &Lease, line: &str) {
    let _ = lease.get_ref().write_all(line.as_bytes());
}

/// Why a forked shim has nothing to run.
#[derive(Debug, thiserror::Error)]
pub enum ShimArgError {
    #[error("cannot read the job: {0}")]
    Read(#[from] std::io::Error),
    #[error("a bad job line from the agent: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("no command to run")]
    NoCommand,
}

/// The lease, read through a buffer of our own: what is buffered past a line must be seen
/// before waiting for more.
type Lease = BufReader<File>;

/// The first line of a forked shim's lease, parsed.
fn forked_args(lease: &mut impl BufRead) -> Result<ShimArgs, ShimArgError> {
    let mut line = String::new();
    lease.read_line(&mut line)?;
    let a: ShimArgs = serde_json::from_str(&line)?;
    if a.argv.is_empty() {
        return Err(ShimArgError::NoCommand);
    }
    Ok(a)
}

/// Runs the command: its exit code, and whether the shim may take another task.
fn run_args(a: ShimArgs, lease: &mut Lease, ended: &SignalFd) -> (i32, bool) {
    let fence = a.fence_until;
    if passed(fence) {
        // The agent's hold ended before the command could start: run nothing.
        tell(lease, "pid 0\n");
        return (137, true);
    }
    let mut cmd = Command::new(&a.argv[0]);
    cmd.args(&a.argv[1..]);
    cmd.envs(a.env.iter().map(|(k, v)| (k, v)));
    if let Some(d) = &a.dir {
        cmd.current_dir(d);
    }
    // The lease is the shim's alone.
    cmd.stdin(std::process::Stdio::null());
    // A group of its own, which the agent signals and the shim kills; the shim outlives it.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    if let Some(name) = &a.user {
        match lookup_user(name) {
            Ok(u) => run_as(&mut cmd, &u),
            Err(e) => {
                eprintln!("servant: {e}");
                tell(lease, "pid 0\n");
                return (127, true);
            }
        }
    }
    // The command inherits the mask (`Command` does not clear it) and must start with nothing
    // blocked: SIGCHLD, which the shim reads from `ended`, is unblocked while it starts. A
    // command that ended in between left no signal to read; `watch` looks first.
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    let _ = chld.thread_unblock();
    let spawned = cmd.spawn();
    let _ = chld.thread_block();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            eprintln!("servant: cannot start {:?}: {e}", a.argv[0]);
            tell(lease, "pid 0\n");
            return (127, true);
        }
    };
    let pgid = child.id();
    tell(lease, &format!("pid {pgid}\n"));
    if let Some(p) = &a.pid_file {
        if let Err(e) = std::fs::write(p, format!("{pgid}\n")) {
            eprintln!("servant: cannot write pid file {p}: {e}");
        }
    }
    match watch(lease, fence, &mut child, ended) {
        Ok(Some(status)) => return (exit_code(status), true),
        Ok(None) => {}
        Err(e) => eprintln!("servant: cannot watch the command and the lease: {e}"),
    }
    // The lease ended (the agent is gone), its deadline passed, or they cannot be watched:
    // nothing may outlive the agent's hold.
    let _ = killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL);
    let code = child.wait().map(exit_code).unwrap_or(137);
    (code, false)
}

/// Waits until the command ends (its status), or the lease ends (the agent is gone, end of
/// file) or its fence deadline passes (None). `ended` reads the shim's SIGCHLD. The deadline is a CLOCK_BOOTTIME timer: it fires
/// on time across a suspend (a sleep would not count the suspended time), and nothing wakes
/// in between.
///
/// The shim has one thread: it waits for the command's end (SIGCHLD, read from a signalfd) and
/// for the lease at once (a second thread for the lease cost a thread's start and end per
/// task). SIGTERM/SIGINT/SIGHUP sent to the group reach the command only: the shim is not in
/// it, and catches them (the spawner's handlers) should they come its way.
fn watch(
    lease: &mut Lease,
    mut until: Option<u64>,
    child: &mut std::process::Child,
    ended: &SignalFd,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::time::TimeSpec;
    use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};

    let timer = TimerFd::new(
        ClockId::CLOCK_BOOTTIME,
        TimerFlags::TFD_CLOEXEC | TimerFlags::TFD_NONBLOCK,
    )?;
    let arm = |until: Option<u64>| {
        let Some(ms) = until else {
            return timer.unset();
        };
        let at = TimeSpec::new((ms / 1000) as i64, ((ms % 1000) * 1_000_000) as i64);
        // An absolute moment already past fires at once.
        timer.set(
            Expiration::OneShot(at),
            TimerSetTimeFlags::TFD_TIMER_ABSTIME,
        )
    };
    arm(until)?;
    // A command that ended before SIGCHLD was blocked left no signal to read.
    if let Some(status) = child.try_wait()? {
        return Ok(Some(status));
    }
    let mut line = String::new();
    loop {
        // Lines already buffered are read before waiting for more.
        if lease.buffer().is_empty() {
            let mut fds = [
                PollFd::new(ended.as_fd(), PollFlags::POLLIN),
                PollFd::new(lease.get_ref().as_fd(), PollFlags::POLLIN),
                PollFd::new(timer.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let has = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
            let (exited, readable, fired) = (has(0), has(1), has(2));
            // The command's end first: a command that ended as the lease did still has its
            // status reported.
            if exited {
                while let Ok(Some(_)) = ended.read_signal() {}
                if let Some(status) = child.try_wait()? {
                    return Ok(Some(status));
                }
            }
            if fired {
                if passed(until) {
                    return Ok(None);
                }
                // Woken within the millisecond before it: wait again.
                arm(until)?;
            }
            if !readable {
                continue;
            }
        }
        line.clear();
        match lease.read_line(&mut line) {
            // The agent is gone.
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {
                until = match LeaseLine::parse(&line) {
                    Some(LeaseLine::Fence(ms)) => Some(ms),
                    Some(LeaseLine::NoFence) => None,
                    None => continue,
                };
                arm(until)?;
            }
        }
    }
}

/// Whether the deadline (CLOCK_BOOTTIME ms) has passed; never without one.
fn passed(until: Option<u64>) -> bool {
    until.is_some_and(|ms| boot_ms() >= ms)
}

/// Reads the lease pipe (stdin) until it ends (the agent is gone) or fails: each `fence` line
/// sets the deadline in `cell`, `nofence` clears it. Blocking: run it on a thread of its own.
pub(super) fn read_lease(cell: &AtomicU64) {
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        match line.as_deref().ok().and_then(LeaseLine::parse) {
            Some(LeaseLine::Fence(ms)) => cell.store(ms, Ordering::SeqCst),
            Some(LeaseLine::NoFence) => cell.store(NO_FENCE, Ordering::SeqCst),
            None if line.is_err() => break,
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_line_round_trips_and_leaves_the_fence_lines() {
        let args = ShimArgs {
            fence_until: Some(1234),
            user: Some("nobody".into()),
            pid_file: None,
            argv: vec!["sh".into(), "-c".into(), "echo \"--\"\n".into()],
            env: vec![("K".into(), "v=1".into())],
            dir: Some("/tmp".into()),
        };
        let mut text = serde_json::to_vec(&args).unwrap();
        text.extend_from_slice(b"\nfence 99\n");
        let mut r = std::io::Cursor::new(text);
        assert_eq!(forked_args(&mut r).unwrap(), args);
        let mut rest = String::new();
        r.read_line(&mut rest).unwrap();
        assert_eq!(LeaseLine::parse(&rest), Some(LeaseLine::Fence(99)));

        let parse = |t: &str| forked_args(&mut std::io::Cursor::new(t.as_bytes().to_vec()));
        assert!(matches!(
            parse("{\"argv\":[]}\n"),
            Err(ShimArgError::NoCommand)
        ));
        assert!(matches!(parse("fence 1\n"), Err(ShimArgError::Parse(_))));
        // The agent went away before it wrote the job.
        assert!(matches!(parse(""), Err(ShimArgError::Parse(_))));
    }

    #[test]
    fn lease_lines_round_trip() {
        for l in [
            LeaseLine::Fence(0),
            LeaseLine::Fence(987_654_321),
            LeaseLine::NoFence,
        ] {
            assert_eq!(LeaseLine::parse(&l.to_line()), Some(l));
        }
        assert_eq!(LeaseLine::parse("fence soon"), None);
        assert_eq!(LeaseLine::parse("hello"), None);
    }
}
