//! `servant __job-shim`: the process-group leader between the agent and the command of every
//! `Owned` task (jobs, apps, the launched Consul, short commands).
//!
//! Why it exists: a job must die with its agent. If the agent is SIGKILLed, the job's lock is
//! released and another node may retry it; the old process must not go on running beside the
//! retry. The shim is spawned as a new process group, runs the command as its child, and kills
//! the whole group as soon as its parent changes (the agent died). It also switches to `User`.
//! It uses no async runtime: it only waits and polls. The binary's `main` calls `run` before
//! anything else.

use std::process::Command;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::{getpgrp, getppid, User};

use super::exit_code;

/// How often the shim checks that its parent is alive.
const PARENT_POLL: Duration = Duration::from_millis(50);

/// Shim arguments: `[--parent PID] [--user NAME] [--pid-file PATH] -- PROGRAM ARGS...`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ShimArgs {
    /// The agent's pid. Passed in, not read with getppid() after exec: if the agent died in
    /// between, getppid() would already name init and the watchdog would never fire.
    pub parent: Option<i32>,
    pub user: Option<String>,
    pub pid_file: Option<String>,
    pub argv: Vec<String>,
}

/// A bad shim argument list (only the agent writes one).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShimArgError {
    #[error("--parent needs a pid")]
    Parent,
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
            "--parent" => {
                out.parent = Some(
                    it.next()
                        .and_then(|p| p.parse().ok())
                        .ok_or(ShimArgError::Parent)?,
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

/// Runs the shim and returns its exit code. 127 means the command could not start.
pub fn run(args: &[String]) -> i32 {
    let a = match parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("servant job-shim: {e}");
            return 127;
        }
    };
    let parent = a
        .parent
        .map(nix::unistd::Pid::from_raw)
        .unwrap_or_else(getppid);
    if getppid() != parent {
        // The agent is already gone: run nothing.
        return 137;
    }
    let mut cmd = Command::new(&a.argv[0]);
    cmd.args(&a.argv[1..]);
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
    // A watchdog thread takes the group down if the agent dies; this thread just waits.
    std::thread::spawn(move || loop {
        if getppid() != parent {
            let _ = killpg(getpgrp(), Signal::SIGKILL);
        }
        std::thread::sleep(PARENT_POLL);
    });
    match child.wait() {
        Ok(status) => exit_code(status),
        Err(e) => {
            eprintln!("servant: cannot wait for the command: {e}");
            127
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
    }
}
