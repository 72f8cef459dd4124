//! `servant __job-shim`: the process-group leader between the agent and the command of every
//! `Owned` task (jobs, apps, the launched Consul, short commands).
//!
//! Why it exists: a job must die with its agent, and must not outlive the agent's hold on it.
//! If the agent is SIGKILLed, its jobs are retried elsewhere; if it is paused (SIGSTOP, a VM
//! freeze), Consul lets its session go and its jobs are retried elsewhere too. Either way the
//! old process must not run on beside the retry, and a dead or paused agent cannot kill it.
//!
//! The shim is spawned as a new process group and runs the command as its child. Its stdin is
//! the agent's lease pipe:
//! - the pipe closes when the agent dies, however it dies: the shim kills the whole group at
//!   once (no polling: a command that ended meanwhile could otherwise finish with nobody to
//!   write its result);
//! - the agent writes `fence <ms>` lines, the moment (CLOCK_BOOTTIME milliseconds) after which
//!   the work is no longer surely the agent's; `fence none` for work without one. A paused
//!   agent stops moving the deadline, and the shim kills the group when it passes.
//!
//! It also switches to `User`. It uses no async runtime. The binary's `main` calls `run` before
//! anything else.

use std::process::Command;
use std::time::Duration;

use std::io::{BufRead, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::{getpgrp, User};

use super::exit_code;
use crate::util::time::boot_ms;

/// How often the shim looks at its fence deadline.
const FENCE_CHECK: Duration = Duration::from_millis(20);

/// "No deadline" in the shared cell.
pub(super) const NO_FENCE: u64 = u64::MAX;

/// Shim arguments: `[--fence-until MS] [--user NAME] [--pid-file PATH] -- PROGRAM ARGS...`
/// when the shim is executed; one JSON line on its stdin when the spawner forks it (which also
/// carries the environment and directory an executed shim gets as its own).
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ShimArgs {
    /// The first fence deadline (CLOCK_BOOTTIME ms), given before the agent could be paused;
    /// none when absent.
    pub fence_until: Option<u64>,
    pub user: Option<String>,
    pub pid_file: Option<String>,
    pub argv: Vec<String>,
    /// Added to the command's environment (forked shims only).
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// The command's working directory (forked shims only).
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

/// A bad shim argument list (only the agent writes one).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShimArgError {
    #[error("--fence-until needs a CLOCK_BOOTTIME millisecond")]
    Fence,
    #[error("{0} needs a value")]
    Value(&'static str),
    #[error("unexpected shim argument {0:?}")]
    Unexpected(String),
    #[error("no command after --")]
    NoCommand,
}

/// Parses the shim's own small argument list.
pub fn parse_args(args: &[String]) -> Result<ShimArgs, ShimArgError> {
    let mut out = ShimArgs::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--fence-until" => {
                out.fence_until = Some(
                    it.next()
                        .and_then(|p| p.parse().ok())
                        .ok_or(ShimArgError::Fence)?,
                )
            }
            "--user" => out.user = Some(it.next().ok_or(ShimArgError::Value("--user"))?.clone()),
            "--pid-file" => {
                out.pid_file = Some(it.next().ok_or(ShimArgError::Value("--pid-file"))?.clone())
            }
            "--" => {
                out.argv = it.cloned().collect();
                break;
            }
            other => return Err(ShimArgError::Unexpected(other.to_string())),
        }
    }
    if out.argv.is_empty() {
        return Err(ShimArgError::NoCommand);
    }
    Ok(out)
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

/// Runs the executed shim (`servant __job-shim ARGS`) and returns its exit code. 127 means
/// the command could not start.
pub fn run(args: &[String]) -> i32 {
    match parse_args(args) {
        Ok(a) => run_args(a),
        Err(e) => {
            eprintln!("servant job-shim: {e}");
            127
        }
    }
}

/// Runs a shim the spawner forked: its arguments are the first line of the lease (stdin). Its
/// exit code also goes back up the lease (`code N`), for the agent to know it should the
/// spawner die before it could report the shim's end.
pub fn run_forked() -> i32 {
    let code = match forked_args() {
        Ok(a) => run_args(a),
        Err(e) => {
            eprintln!("servant job-shim: {e}");
            127
        }
    };
    if let Ok(fd) = std::io::stdin().as_fd().try_clone_to_owned() {
        let _ = std::fs::File::from(fd).write_all(format!("code {code}\n").as_bytes());
    }
    code
}

/// Why a forked shim has nothing to run.
#[derive(Debug, thiserror::Error)]
enum ForkedArgError {
    #[error("cannot read the job: {0}")]
    Read(#[from] std::io::Error),
    #[error("a bad job line from the agent: {0}")]
    Parse(#[from] serde_json::Error),
    #[error(transparent)]
    Args(#[from] ShimArgError),
}

/// The first line of a forked shim's lease, parsed.
fn forked_args() -> Result<ShimArgs, ForkedArgError> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let a: ShimArgs = serde_json::from_str(&line)?;
    if a.argv.is_empty() {
        return Err(ShimArgError::NoCommand.into());
    }
    Ok(a)
}

fn run_args(a: ShimArgs) -> i32 {
    let fence = Arc::new(AtomicU64::new(a.fence_until.unwrap_or(NO_FENCE)));
    if fence_passed(&fence) {
        // The agent's hold ended before the command could start: run nothing.
        return 137;
    }
    let mut cmd = Command::new(&a.argv[0]);
    cmd.args(&a.argv[1..]);
    cmd.envs(a.env.iter().map(|(k, v)| (k, v)));
    if let Some(d) = &a.dir {
        cmd.current_dir(d);
    }
    // The lease pipe is the shim's alone.
    cmd.stdin(std::process::Stdio::null());
    if let Some(name) = &a.user {
        match lookup_user(name) {
            Ok(u) => run_as(&mut cmd, &u),
            Err(e) => {
                eprintln!("servant: {e}");
                return 127;
            }
        }
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("servant: cannot start {:?}: {e}", a.argv[0]);
            return 127;
        }
    };
    if let Some(p) = &a.pid_file {
        if let Err(e) = std::fs::write(p, format!("{}\n", child.id())) {
            eprintln!("servant: cannot write pid file {p}: {e}");
        }
    }
    // SIGTERM/SIGINT/SIGHUP sent to the group reach the command directly; the shim must outlive
    // them so the command gets its grace period (the agent SIGKILLs the group after it).
    // Handlers are installed after the spawn, so the command keeps default dispositions.
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ] {
        let _ = signal_hook::flag::register(sig, flag.clone());
    }
    // The lease pipe: the agent's fence deadlines, and its death (end of file). Read on a
    // thread of its own; another enforces the deadline; this one waits for the command.
    let cell = fence.clone();
    std::thread::spawn(move || {
        read_lease(&cell);
        // End of file (or a read error): the agent is gone. Nothing may outlive it.
        let _ = killpg(getpgrp(), Signal::SIGKILL);
    });
    std::thread::spawn(move || loop {
        if fence_passed(&fence) {
            let _ = killpg(getpgrp(), Signal::SIGKILL);
        }
        std::thread::sleep(FENCE_CHECK);
    });
    match child.wait() {
        Ok(status) => exit_code(status),
        Err(e) => {
            eprintln!("servant: cannot wait for the command: {e}");
            127
        }
    }
}

/// Whether the deadline in `cell` has passed.
fn fence_passed(cell: &AtomicU64) -> bool {
    let until = cell.load(Ordering::SeqCst);
    until != NO_FENCE && boot_ms() >= until
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
    fn parses_shim_args() {
        let v: Vec<String> = ["--user", "nobody", "--", "sh", "-c", "echo --"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let a = parse_args(&v).unwrap();
        assert_eq!(a.user.as_deref(), Some("nobody"));
        assert_eq!(a.argv, vec!["sh", "-c", "echo --"]);
        assert_eq!(parse_args(&[]), Err(ShimArgError::NoCommand));
        assert_eq!(
            parse_args(&["--".to_string()]),
            Err(ShimArgError::NoCommand)
        );
        assert_eq!(
            parse_args(&["--user".to_string()]),
            Err(ShimArgError::Value("--user"))
        );
        let v: Vec<String> = ["--fence-until", "1234", "--", "true"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(parse_args(&v).unwrap().fence_until, Some(1234));
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
