//! The process driver: each task is a process group of its own, led by the command, under a
//! shim that watches it (`Owned`) or alone (`Detached`). Signals go to the whole group.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::process::Child;

use super::forked::{spawner, ForkedShim};
use super::logs::read_capped_blocking;
use super::shim::{lookup_user, run_as, LeaseLine, ShimArgs};
use super::spec::{LaunchSpec, Lifetime, Output};
use super::{exit_code, Captured, Driver, SpawnError, TaskHandle};

/// Starts process groups. `shim` is the servant executable, whose spawner (`servant
/// __spawner`) forks the shim in front of `Owned` tasks; without one they still get a group of
/// their own, but do not die with the agent.
#[derive(Debug, Clone)]
pub struct ProcessDriver {
    shim: Option<PathBuf>,
}

impl ProcessDriver {
    /// A driver whose shim is `exe` (the servant binary).
    pub fn with_shim(exe: PathBuf) -> Self {
        ProcessDriver { shim: Some(exe) }
    }

    /// A driver whose shim is this executable.
    pub fn current() -> Self {
        // A unit test runs inside the test harness, which is no shim.
        if cfg!(test) {
            return ProcessDriver { shim: None };
        }
        ProcessDriver {
            shim: std::env::current_exe().ok(),
        }
    }
}

/// A started process group.
#[derive(Debug)]
pub struct ProcessHandle {
    leader: Leader,
    /// The process group (= the command's pid); 0 when the shim could not start the command
    /// (its exit code, 127 or 137, follows).
    pgid: u32,
    pid_file: Option<PathBuf>,
    lifetime: Lifetime,
    /// `Output::Capture`'s files: stdout (or both), and stderr when apart.
    capture: Option<(File, Option<File>)>,
}

/// What the agent waits on for the task's end.
#[derive(Debug)]
enum Leader {
    /// The agent's child: the command itself (no shim).
    Child(Child),
    /// The task's shim, which reports the command's end.
    Forked(ForkedShim),
}

impl Leader {
    async fn wait(&mut self) -> i32 {
        match self {
            Leader::Child(c) => c.wait().await.map(exit_code).unwrap_or(-1),
            Leader::Forked(f) => f.wait().await,
        }
    }
}

/// The files and user a launch needs, prepared on a blocking thread.
pub(super) struct Prepared {
    pub(super) stdout: Option<File>,
    pub(super) stderr: Option<File>,
    pub(super) capture: Option<(File, Option<File>)>,
    pub(super) user: Option<nix::unistd::User>,
}

fn open_log(path: &Path, append: bool) -> Result<File, SpawnError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    // The agent's alone (it serves them through its API, to tokens that may read the job): a
    // running job's log may hold its EnvFromKV values until they are redacted at its end.
    o.mode(0o600);
    if append {
        o.append(true).create(true);
    } else {
        o.write(true).create(true).truncate(true);
    }
    o.open(path).map_err(|error| SpawnError::Log {
        path: path.display().to_string(),
        error,
    })
}

fn clone_file(f: &File, path: &Path) -> Result<File, SpawnError> {
    f.try_clone().map_err(|error| SpawnError::Log {
        path: path.display().to_string(),
        error,
    })
}

/// Checks the directory, opens the output files, looks the user up (when no shim will) and
/// removes a stale pid file.
pub(super) fn prepare(
    output: &Output,
    dir: Option<&str>,
    user: Option<&str>,
    pid_file: Option<&Path>,
) -> Result<Prepared, SpawnError> {
    if let Some(d) = dir {
        if !Path::new(d).is_dir() {
            return Err(SpawnError::Dir(d.to_string()));
        }
    }
    let (stdout, stderr, capture) = match output {
        Output::Null => (None, None, None),
        Output::Files { logs, append } => (
            Some(open_log(&logs.stdout, *append)?),
            Some(open_log(&logs.stderr, *append)?),
            None,
        ),
        Output::Combined { path, append } => {
            let f = open_log(path, *append)?;
            (Some(clone_file(&f, path)?), Some(f), None)
        }
        Output::Capture { dir, combined } => {
            let dir = dir.clone().unwrap_or_else(std::env::temp_dir);
            let temp = || {
                tempfile::tempfile_in(&dir).map_err(|error| SpawnError::Log {
                    path: dir.display().to_string(),
                    error,
                })
            };
            let out = temp()?;
            let err = if *combined {
                clone_file(&out, &dir)?
            } else {
                temp()?
            };
            let keep_err = if *combined {
                None
            } else {
                Some(clone_file(&err, &dir)?)
            };
            let keep_out = clone_file(&out, &dir)?;
            (Some(out), Some(err), Some((keep_out, keep_err)))
        }
    };
    let user = user.map(lookup_user).transpose()?;
    if let Some(p) = pid_file {
        let _ = std::fs::remove_file(p);
    }
    Ok(Prepared {
        stdout,
        stderr,
        capture,
        user,
    })
}

impl Driver for ProcessDriver {
    type Handle = ProcessHandle;

    async fn launch(&self, spec: &LaunchSpec) -> Result<ProcessHandle, SpawnError> {
        if spec.argv.is_empty() {
            return Err(SpawnError::Empty);
        }
        let shim = match spec.lifetime {
            Lifetime::Owned => self.shim.clone(),
            Lifetime::Detached => None,
        };
        let (output, dir, pid_file) =
            (spec.output.clone(), spec.dir.clone(), spec.pid_file.clone());
        // The shim switches users itself; without it the lookup is ours.
        let user = spec.user.clone().filter(|_| shim.is_none());
        let prepared = tokio::task::spawn_blocking(move || {
            prepare(
                &output,
                dir.as_deref(),
                user.as_deref(),
                pid_file.as_deref(),
            )
        })
        .await
        .map_err(|e| SpawnError::Spawn(std::io::Error::other(e)))??;

        if let Some(exe) = &shim {
            let args = ShimArgs {
                fence_until: spec.fence,
                user: spec.user.clone(),
                pid_file: spec.pid_file.as_ref().map(|p| p.display().to_string()),
                argv: spec.argv.clone(),
                env: spec
                    .env
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                dir: spec.dir.clone(),
            };
            let forked = spawner(exe)
                .start(&args, prepared.stdout, prepared.stderr)
                .await
                .map_err(SpawnError::Spawn)?;
            return Ok(ProcessHandle {
                pgid: forked.pid,
                leader: Leader::Forked(forked),
                pid_file: spec.pid_file.clone(),
                lifetime: spec.lifetime,
                capture: prepared.capture,
            });
        }
        // No shim: the command itself leads its group.
        let mut cmd = std::process::Command::new(&spec.argv[0]);
        cmd.args(&spec.argv[1..]);
        if let Some(u) = &prepared.user {
            run_as(&mut cmd, u);
        }
        cmd.envs(&spec.env);
        if let Some(d) = &spec.dir {
            cmd.current_dir(d);
        }
        let stdio = |f: Option<File>| f.map(Stdio::from).unwrap_or_else(Stdio::null);
        cmd.stdin(Stdio::null())
            .stdout(stdio(prepared.stdout))
            .stderr(stdio(prepared.stderr));
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(false);
        let child = cmd.spawn().map_err(SpawnError::Spawn)?;
        let pgid = child.id().unwrap_or(0);
        if let Some(p) = &spec.pid_file {
            // No shim to write it: the command itself is the real process.
            let _ = tokio::fs::write(p, format!("{pgid}\n")).await;
        }
        Ok(ProcessHandle {
            leader: Leader::Child(child),
            pgid,
            pid_file: spec.pid_file.clone(),
            lifetime: spec.lifetime,
            capture: prepared.capture,
        })
    }
}

impl ProcessHandle {
    /// Where `stop`'s first signal goes: the pid in the pid file when it names a member of
    /// the group (a stale file names some other process), else the group.
    async fn signal_first(&self, sig: Signal) {
        if let Some(p) = &self.pid_file {
            let named = tokio::fs::read_to_string(p)
                .await
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
                .map(Pid::from_raw);
            if let Some(pid) = named {
                if nix::unistd::getpgid(Some(pid)).ok() == Some(Pid::from_raw(self.pgid as i32)) {
                    let _ = kill(pid, sig);
                    return;
                }
            }
        }
        signal_group(self.pgid, sig);
    }
}

impl TaskHandle for ProcessHandle {
    fn id(&self) -> String {
        self.pgid.to_string()
    }

    fn pid(&self) -> u32 {
        self.pgid
    }

    async fn wait(&mut self) -> i32 {
        self.leader.wait().await
    }

    async fn stop(&mut self, signal: Signal, grace: Duration) {
        self.signal_first(signal).await;
        if tokio::time::timeout(grace, self.leader.wait())
            .await
            .is_err()
        {
            signal_group(self.pgid, Signal::SIGKILL);
            let _ = self.leader.wait().await;
        }
        // Grandchildren may outlive the leader's exit on SIGTERM: make sure the group is gone.
        signal_group(self.pgid, Signal::SIGKILL);
    }

    async fn stop_leftovers(&mut self, grace: Duration) -> usize {
        match self.lifetime {
            Lifetime::Owned => stop_leftovers(self.pgid, grace).await,
            Lifetime::Detached => 0,
        }
    }

    async fn fence(&mut self, until: Option<u64>) {
        // Only a shim has a lease; a command without one has no fence.
        if let Leader::Forked(f) = &mut self.leader {
            send_fence(&mut f.lease, until).await;
        }
    }

    async fn captured(&mut self, cap: usize) -> Captured {
        read_captured(&self.capture, cap).await
    }
}

/// Sends `sig` to the whole group, ignoring a group that is already gone.
fn signal_group(pgid: u32, sig: Signal) {
    if pgid > 1 {
        let _ = killpg(Pid::from_raw(pgid as i32), sig);
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

/// After a group's leader exited: stops what is left in the group, SIGTERM then SIGKILL after
/// `grace`, and returns how many processes were left.
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

/// The first `name` in PATH that is a file.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Sends a fence deadline (or its end) down a task's lease. A watcher that is gone cannot read
/// it; what it watched is gone with it.
pub(super) async fn send_fence<W: tokio::io::AsyncWrite + Unpin>(
    lease: &mut W,
    until: Option<u64>,
) {
    use tokio::io::AsyncWriteExt;
    let line = match until {
        Some(ms) => LeaseLine::Fence(ms),
        None => LeaseLine::NoFence,
    };
    let _ = lease.write_all(line.to_line().as_bytes()).await;
}

/// The captured stdout and stderr (when kept apart) of a task, each up to `cap` bytes, read in
/// one hand-off to a blocking thread.
pub(super) async fn read_captured(capture: &Option<(File, Option<File>)>, cap: usize) -> Captured {
    let Some((out, err)) = capture else {
        return Captured::default();
    };
    // Owned copies for the blocking thread (a copy shares its file's offset: each read seeks to
    // the start first, and the task appends).
    let out = out.try_clone().ok();
    let err = err.as_ref().and_then(|e| e.try_clone().ok());
    tokio::task::spawn_blocking(move || {
        let read = |f: Option<File>| match f {
            Some(mut f) => read_capped_blocking(&mut f, cap),
            None => (String::new(), false),
        };
        let (stdout, out_cut) = read(out);
        let (stderr, err_cut) = read(err);
        Captured {
            stdout,
            stderr,
            truncated: out_cut || err_cut,
        }
    })
    .await
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::testing::{alive, gone, read_pid};
    use crate::process::LogPaths;

    #[tokio::test]
    async fn files_capture_and_exit_codes() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogPaths::for_key(dir.path(), "k");
        let d = ProcessDriver::current();
        let spec = LaunchSpec::shell("echo out; echo err >&2; exit 3", &Default::default()).output(
            Output::Files {
                logs: logs.clone(),
                append: false,
            },
        );
        let mut h = d.launch(&spec).await.unwrap();
        assert_eq!(h.wait().await, 3);
        assert_eq!(std::fs::read_to_string(&logs.stdout).unwrap(), "out\n");
        assert_eq!(std::fs::read_to_string(&logs.stderr).unwrap(), "err\n");

        let spec = LaunchSpec::shell("echo a; echo b >&2; kill -9 $$", &Default::default()).output(
            Output::Capture {
                dir: Some(dir.path().into()),
                combined: true,
            },
        );
        let mut h = d.launch(&spec).await.unwrap();
        assert_eq!(h.wait().await, 128 + 9);
        let c = h.captured(100).await;
        assert_eq!((c.stdout.as_str(), c.stderr.as_str()), ("a\nb\n", ""));
        let spec = spec.output(Output::Capture {
            dir: None,
            combined: false,
        });
        let mut h = d.launch(&spec).await.unwrap();
        h.wait().await;
        let c = h.captured(1).await;
        assert_eq!(
            (c.stdout.as_str(), c.stderr.as_str(), c.truncated),
            ("a", "b", true)
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 2, "captures leave no file: {names:?}");
    }

    #[tokio::test]
    async fn launch_errors_say_why() {
        let d = ProcessDriver::current();
        let e = d.launch(&LaunchSpec::new(vec![])).await.unwrap_err();
        assert!(matches!(e, SpawnError::Empty), "{e}");
        let spec = LaunchSpec::new(vec!["true".into()]).dir(Some("/no/such/dir".into()));
        let e = d.launch(&spec).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "working directory \"/no/such/dir\" does not exist or is not a directory"
        );
        let e = d
            .launch(&LaunchSpec::new(vec!["/no/such/program".into()]))
            .await
            .unwrap_err();
        assert!(e.to_string().starts_with("cannot start the job: "), "{e}");
        assert!(!e.detail().starts_with("cannot start the job"), "{e}");
        let spec = LaunchSpec::new(vec!["true".into()]).user(Some("no-such-user-xyz".into()));
        let e = d.launch(&spec).await.unwrap_err();
        assert_eq!(e.to_string(), "user \"no-such-user-xyz\" does not exist");
        let spec = LaunchSpec::new(vec!["true".into()]).output(Output::Files {
            logs: LogPaths::for_key(Path::new("/no/such/dir"), "k"),
            append: true,
        });
        let e = d.launch(&spec).await.unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot create log file /no/such/dir/k.out"),
            "{e}"
        );
    }

    /// Owned: what the command leaves in its group is stopped and counted; Detached: it
    /// outlives the command.
    #[tokio::test]
    async fn leftovers_are_stopped_unless_detached() {
        let dir = tempfile::tempdir().unwrap();
        let d = ProcessDriver::current();
        for (lifetime, name) in [(Lifetime::Owned, "owned"), (Lifetime::Detached, "detached")] {
            let cmd = format!("sleep 300 & echo $! > {}", dir.path().join(name).display());
            let mut h = d
                .launch(&LaunchSpec::shell(&cmd, &Default::default()).lifetime(lifetime))
                .await
                .unwrap();
            assert_eq!(h.wait().await, 0);
            let left = h.stop_leftovers(Duration::from_secs(5)).await;
            let pid = read_pid(&dir.path().join(name));
            match lifetime {
                Lifetime::Owned => {
                    assert_eq!(left, 1);
                    assert!(gone(pid).await, "the leftover was stopped");
                }
                Lifetime::Detached => {
                    assert_eq!(left, 0);
                    assert!(alive(pid), "the background process outlives its command");
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
    }

    /// With a pid file, `stop`'s signal goes to the process it names; the rest of the group is
    /// killed after the grace period.
    #[tokio::test]
    async fn stop_signals_the_pid_file_process_then_kills_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let marker = dir.path().join("int");
        let ready = dir.path().join("ready");
        let cmd = format!(
            "trap 'echo int > {}; exit 0' INT; touch {}; sleep 300 & wait",
            marker.display(),
            ready.display()
        );
        let d = ProcessDriver::current();
        let mut h = d
            .launch(&LaunchSpec::shell(&cmd, &Default::default()).pid_file(pid_file.clone()))
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(&pid_file).unwrap().trim(),
            h.pid().to_string()
        );
        // The trap is set from here on.
        while !ready.exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        h.stop(Signal::SIGINT, Duration::from_secs(5)).await;
        assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "int");
        // SIGKILL takes effect a moment after it is sent.
        let mut left = count_group(h.pgid).await;
        for _ in 0..100 {
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            left = count_group(h.pgid).await;
        }
        assert_eq!(left, 0, "the sleep went with its group");
    }
}
