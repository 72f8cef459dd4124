//! Running one job's process: spawn through the shim in a new process group, stdout and stderr
//! straight to log files, timeout, and killing the whole group.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use tokio::sync::watch;

use super::spec::{JobSpec, JobType};

/// Why a running job is being stopped from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillReason {
    /// The node's session was invalidated: the job is no longer ours.
    Fenced,
    /// The agent is stopping and the grace period is over.
    Shutdown,
    /// An app's task was removed from this node or changed: SIGTERM, then SIGKILL after the
    /// grace period.
    Removed,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exited by itself with this code (128+n if the command died of signal n). `leftovers`
    /// processes it left in its group (started in the background) were then stopped: the
    /// group ends with its command, as a Nomad task's processes do.
    Exited { code: i32, leftovers: usize },
    /// Ran past its timeout; the group was killed.
    TimedOut,
    /// Stopped from outside.
    Killed(KillReason),
}

/// Where a run's output goes on disk.
#[derive(Debug, Clone)]
pub struct LogPaths {
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl LogPaths {
    /// The log files of a job key under `log_dir`. The key is percent-encoded into one safe file
    /// name, so `..` or `/` in an ID cannot escape the directory.
    pub fn for_key(log_dir: &Path, key: &str) -> Self {
        let mut name = String::new();
        for b in key.bytes() {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                name.push(b as char);
            } else {
                name.push_str(&format!("%{b:02X}"));
            }
        }
        // File names are limited to 255 bytes: keep a readable head and a stable hash.
        if name.len() > 150 {
            let hash = crate::jobs::claim::stable_hash(&[key]);
            name = format!("{}~{hash:016x}", &name[..120]);
        }
        LogPaths {
            stdout: log_dir.join(format!("{name}.out")),
            stderr: log_dir.join(format!("{name}.err")),
        }
    }
}

/// A started job.
#[derive(Debug)]
pub struct Running {
    child: Child,
    /// The process group (= the shim's pid).
    pub pgid: u32,
}

/// Errors before the command could run.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot create log file {path}: {error}")]
    Log { path: String, error: std::io::Error },
    #[error("cannot start the job: {0}")]
    Spawn(std::io::Error),
    #[error("working directory {0:?} does not exist or is not a directory")]
    Dir(String),
}

/// What to start, job or app alike.
#[derive(Debug, Clone, Copy)]
pub struct Launch<'a> {
    /// Program and arguments.
    pub argv: &'a [String],
    /// Added to the agent's environment.
    pub env: &'a BTreeMap<String, String>,
    /// Working directory; the agent's when None.
    pub dir: Option<&'a str>,
    /// User to switch to (the shim does it).
    pub user: Option<&'a str>,
    /// Append to the log files (an app's restarts) instead of starting them empty (a job).
    pub append: bool,
}

/// Linux refuses any one argument or environment string over 128 KiB (MAX_ARG_STRLEN) with
/// "Argument list too long". A longer shell command travels in pieces of this size.
const ARG_PIECE: usize = 96 * 1024;

/// The argv that runs `command` with `/bin/sh`, and the environment it needs. A command too
/// long for one argument is passed in environment variables of at most `ARG_PIECE` bytes
/// each, joined and `eval`ed by the shell, which unsets them first so the command never sees
/// them.
fn shell_argv(
    command: &str,
    env: &BTreeMap<String, String>,
) -> (Vec<String>, BTreeMap<String, String>) {
    if command.len() <= ARG_PIECE {
        return (
            vec!["/bin/sh".into(), "-c".into(), command.to_string()],
            env.clone(),
        );
    }
    let mut env = env.clone();
    let mut names = Vec::new();
    let mut rest = command;
    while !rest.is_empty() {
        let mut cut = rest.len().min(ARG_PIECE);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let name = format!("SERVANT_COMMAND_{}", names.len());
        env.insert(name.clone(), rest[..cut].to_string());
        names.push(name);
        rest = &rest[cut..];
    }
    let joined: String = names.iter().map(|n| format!("${{{n}}}")).collect();
    let script = format!(
        "__servant_command=\"{joined}\"; unset {}; eval \"$__servant_command\"",
        names.join(" ")
    );
    (vec!["/bin/sh".into(), "-c".into(), script], env)
}

/// Starts `job` through the shim at `shim_exe`, output into `logs`.
pub fn spawn(job: &JobSpec, shim_exe: &Path, logs: &LogPaths) -> Result<Running, SpawnError> {
    let (argv, env) = match job.job_type {
        JobType::Exec => (job.argv.clone(), job.env.clone()),
        _ => shell_argv(&job.command, &job.env),
    };
    spawn_launch(
        &Launch {
            argv: &argv,
            env: &env,
            dir: job.dir.as_deref(),
            user: job.user.as_deref(),
            append: false,
        },
        shim_exe,
        logs,
    )
}

/// Starts a process through the shim at `shim_exe` in a new process group, output into `logs`.
pub fn spawn_launch(l: &Launch, shim_exe: &Path, logs: &LogPaths) -> Result<Running, SpawnError> {
    if let Some(d) = l.dir {
        if !Path::new(d).is_dir() {
            return Err(SpawnError::Dir(d.to_string()));
        }
    }
    let open = |p: &Path| {
        let mut o = std::fs::OpenOptions::new();
        if l.append {
            o.append(true).create(true);
        } else {
            o.write(true).create(true).truncate(true);
        }
        o.open(p).map_err(|e| SpawnError::Log {
            path: p.display().to_string(),
            error: e,
        })
    };
    let out = open(&logs.stdout)?;
    let err = open(&logs.stderr)?;
    let mut cmd = Command::new(shim_exe);
    cmd.arg("__job-shim")
        .arg("--parent")
        .arg(std::process::id().to_string());
    if let Some(u) = l.user {
        cmd.arg("--user").arg(u);
    }
    cmd.arg("--").args(l.argv);
    cmd.envs(l.env);
    if let Some(d) = l.dir {
        cmd.current_dir(d);
    }
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(false);
    let child = cmd.spawn().map_err(SpawnError::Spawn)?;
    let pgid = child.id().unwrap_or(0);
    Ok(Running { child, pgid })
}

/// Sends `sig` to the whole group, ignoring a group that is already gone.
pub fn signal_group(pgid: u32, sig: Signal) {
    if pgid > 1 {
        let _ = killpg(Pid::from_raw(pgid as i32), sig);
    }
}

/// SIGTERM the group, then SIGKILL it after `grace`.
pub async fn kill_group(pgid: u32, grace: Duration) {
    signal_group(pgid, Signal::SIGTERM);
    tokio::time::sleep(grace).await;
    signal_group(pgid, Signal::SIGKILL);
}

impl Running {
    /// Waits for the job to end, its timeout (None = no timeout), or a kill request.
    /// On timeout or kill, the whole group gets SIGTERM, then SIGKILL after `grace`.
    pub async fn supervise(
        mut self,
        timeout: Option<Duration>,
        mut kill: watch::Receiver<Option<KillReason>>,
        grace: Duration,
    ) -> Outcome {
        let deadline = async {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let killed = async {
            loop {
                if let Some(r) = *kill.borrow_and_update() {
                    return r;
                }
                if kill.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        let outcome = tokio::select! {
            st = self.child.wait() => {
                let code = st.map(|s| {
                    use std::os::unix::process::ExitStatusExt;
                    s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
                }).unwrap_or(-1);
                let leftovers = stop_leftovers(self.pgid, grace).await;
                return Outcome::Exited { code, leftovers };
            }
            _ = deadline => Outcome::TimedOut,
            r = killed => Outcome::Killed(r),
        };
        // A fenced job is no longer ours: another node may start it after the lock-delay, so
        // it gets no grace period.
        let grace = if outcome == Outcome::Killed(KillReason::Fenced) {
            Duration::ZERO
        } else {
            grace
        };
        signal_group(self.pgid, Signal::SIGTERM);
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            signal_group(self.pgid, Signal::SIGKILL);
            let _ = self.child.wait().await;
        }
        // Grandchildren may outlive the shim's exit on SIGTERM: make sure the group is gone.
        signal_group(self.pgid, Signal::SIGKILL);
        outcome
    }
}

/// Live (not zombie) processes in process group `pgid`, from /proc.
fn group_members(pgid: u32) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            // After the command name (which may hold spaces and parentheses): state, ppid, pgrp.
            let mut f = stat
                .rsplit_once(')')
                .map(|(_, r)| r)
                .unwrap_or("")
                .split_whitespace();
            let state = f.next();
            let pgrp = f.nth(1).and_then(|g| g.parse::<u32>().ok());
            state != Some("Z") && pgrp == Some(pgid)
        })
        .count()
}

async fn count_group(pgid: u32) -> usize {
    // Signal 0 tells whether any process is left in the group without reading /proc: the
    // common case, a job that left nothing, costs one system call.
    if pgid <= 1 || killpg(Pid::from_raw(pgid as i32), None) == Err(nix::errno::Errno::ESRCH) {
        return 0;
    }
    tokio::task::spawn_blocking(move || group_members(pgid))
        .await
        .unwrap_or(0)
}

/// After a group's leader (the shim) exited: stops what is left in the group, SIGTERM then
/// SIGKILL after `grace`, and returns how many processes were left.
async fn stop_leftovers(pgid: u32, grace: Duration) -> usize {
    let left = count_group(pgid).await;
    if left == 0 {
        return 0;
    }
    signal_group(pgid, Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline && count_group(pgid).await > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal_group(pgid, Signal::SIGKILL);
    left
}

/// Reads at most `cap` bytes of a log file, lossily as UTF-8; returns whether more was there.
pub async fn read_capped(path: &Path, cap: usize) -> (String, bool) {
    let Ok(mut f) = tokio::fs::File::open(path).await else {
        return (String::new(), false);
    };
    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    let mut buf = Vec::with_capacity(cap.min(len as usize));
    let _ = (&mut f).take(cap as u64).read_to_end(&mut buf).await;
    let mut text = String::from_utf8_lossy(&buf).into_owned();
    let truncated = len > cap as u64;
    if truncated {
        // A cut multi-byte character shows as U+FFFD; drop it.
        if text.ends_with('\u{FFFD}') {
            text.pop();
        }
    }
    (text, truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_command_travels_in_pieces_under_the_argument_limit() {
        let short = shell_argv("echo hi", &BTreeMap::new());
        assert_eq!(short.0, vec!["/bin/sh", "-c", "echo hi"]);
        let long = format!("echo {}", "ж".repeat(200 * 1024));
        let (argv, env) = shell_argv(&long, &BTreeMap::new());
        assert!(argv.iter().all(|a| a.len() <= ARG_PIECE));
        assert!(env.values().all(|v| v.len() <= ARG_PIECE));
        let pieces: String = (0..env.len())
            .map(|i| env[&format!("SERVANT_COMMAND_{i}")].clone())
            .collect();
        assert_eq!(pieces, long);
    }

    #[test]
    fn log_names_are_safe_and_short() {
        let p = LogPaths::for_key(Path::new("/l"), "jobs/../x y");
        assert_eq!(p.stdout, Path::new("/l/jobs%2F%2E%2E%2Fx%20y.out"));
        let long = format!("jobs/{}", "ж".repeat(100));
        let p = LogPaths::for_key(Path::new("/l"), &long);
        let name = p.stdout.file_name().unwrap().to_str().unwrap().to_string();
        assert!(name.len() < 200, "{}", name.len());
        assert_ne!(
            LogPaths::for_key(Path::new("/l"), &format!("{long}a")).stdout,
            p.stdout
        );
    }
}
