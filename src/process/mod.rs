//! The process layer: the one place that starts processes. Jobs, apps and their health
//! commands, trigger actions, template commands, service status commands, the crontab check and
//! the launched Consul all start theirs here.
//!
//! Nomad's split is the model: a `Driver` launches a `LaunchSpec` and hands back a
//! `TaskHandle` to wait for and to stop. `ProcessDriver` (`local`) is the first driver: a
//! process group, through the shim (`shim`) so that it dies with the agent. `DockerDriver`
//! (`docker`) is the second: a Docker container, through the Engine API, with a watchdog
//! (`watchdog`) in the shim's place.
//!
//! - `spec`: what to start (argv, environment, directory, user, output, pid file, lifetime).
//! - `local`: the process driver and its handle; process groups and their signals.
//! - `shim`: the job shim, the watcher between the agent and the command's process group.
//! - `spawner`: `servant __spawner`, the single-threaded process that forks the shims and keeps
//!   them for the next tasks, so that a task costs neither an `exec` of the servant binary nor
//!   a `fork`; `forked`: the agent's side.
//! - `logs`: log file names, capped reads, copy-truncate rotation (off the async workers).
//! - `run`: `supervise` (wait, timeout, kill requests) and `run_with_timeout`.
//! - `restart`: the restart policy of apps and the launched Consul.
//! - `container`: what a container runs beyond the command (image, ports, volumes...), parsed.
//! - `docker`: the container driver and its handle; the stale-container sweep at start.
//! - `watchdog`: `servant __container-watchdog`, a container's lease holder.

use std::future::Future;
use std::time::Duration;

pub use nix::sys::signal::Signal;

pub mod container;
pub mod docker;
mod forked;
pub mod local;
pub mod logs;
pub mod policy;
pub mod restart;
pub mod run;
// The shim's stderr is the job's own: it reports there, not through tracing.
#[allow(clippy::print_stderr)]
pub mod shim;
// Reports on its stderr too. Its three functions that fork, own received descriptors and catch
// the stop signals are the crate's only unsafe code.
#[allow(clippy::print_stderr)]
pub mod spawner;
pub mod spec;
pub mod stats;
// Like the shim, it reports on its own stderr.
#[allow(clippy::print_stderr)]
pub mod watchdog;

pub use docker::{ContainerReport, DockerDriver};
pub use local::ProcessDriver;
pub use logs::{read_capped, LogPaths};
pub use restart::RestartPolicy;
pub use run::{run_with_timeout, supervise, Finished, KillReason, Limits, Outcome};
pub use spec::{LaunchSpec, Lifetime, Output};

/// Errors before the command could run.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot create log file {path}: {error}")]
    Log { path: String, error: std::io::Error },
    #[error("cannot start the job: {0}")]
    Spawn(std::io::Error),
    #[error("working directory {0:?} does not exist or is not a directory")]
    Dir(String),
    #[error("nothing to run: the command is empty")]
    Empty,
    #[error(transparent)]
    User(#[from] shim::UserError),
    #[error("the container driver needs an image")]
    NoImage,
    #[error("image {0} is not on this node and its Pull policy is never")]
    ImageMissing(String),
    #[error("cannot pull image {image}: {detail}")]
    Pull { image: String, detail: String },
    #[error(transparent)]
    Docker(#[from] docker::DockerError),
}

impl SpawnError {
    /// The error without the jobs' "cannot start the job" in front, for the other callers.
    pub fn detail(&self) -> String {
        match self {
            SpawnError::Spawn(e) => e.to_string(),
            other => other.to_string(),
        }
    }
}

/// Output captured by `Output::Capture`, at most a cap of each stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    /// stdout, or both streams when they were captured together.
    pub stdout: String,
    pub stderr: String,
    /// More than the cap was written.
    pub truncated: bool,
}

/// Starts tasks: the launch half of the interface every way of running something implements.
pub trait Driver: Send + Sync {
    type Handle: TaskHandle;
    /// Starts `spec`. An error means nothing runs.
    fn launch(
        &self,
        spec: &LaunchSpec,
    ) -> impl Future<Output = Result<Self::Handle, SpawnError>> + Send;
    /// Runs `spec` beside the running task `task` (its `TaskHandle::id`) to its end or
    /// `limits`: an app's health command. A process driver starts a process of its own (the
    /// default, `run_with_timeout`); the container driver runs it inside the container
    /// (`docker exec`).
    fn exec(
        &self,
        task: &str,
        spec: &LaunchSpec,
        limits: Limits,
    ) -> impl Future<Output = Result<Finished, SpawnError>> + Send
    where
        Self: Sized,
    {
        let _ = task;
        run_with_timeout(self, spec, limits)
    }
}

/// A started task: wait for it, stop it.
pub trait TaskHandle: Send {
    /// What names the task to its driver: the process group's id for processes.
    fn id(&self) -> String;
    /// The pid shown to operators: the group leader's.
    fn pid(&self) -> u32;
    /// Waits for the task's main process to end: its exit code, 128+n after signal n (-1 when
    /// it cannot be known). Cancel-safe.
    fn wait(&mut self) -> impl Future<Output = i32> + Send;
    /// Sends `signal` to the whole task, waits up to `grace` for it to end, then kills all of
    /// it. With a pid file the signal goes to the process it names (Consul's SIGINT means
    /// "leave"), the kill still to the whole task.
    fn stop(&mut self, signal: Signal, grace: Duration) -> impl Future<Output = ()> + Send;
    /// After the main process ended: stops what it left running (SIGTERM, `grace`, SIGKILL)
    /// and says how many there were; 0 without looking when its lifetime lets them outlive it.
    fn stop_leftovers(&mut self, grace: Duration) -> impl Future<Output = usize> + Send;
    /// What `Output::Capture` caught, at most `cap` bytes a stream; empty for other outputs.
    fn captured(&mut self, cap: usize) -> impl Future<Output = Captured> + Send;
    /// Moves the fence deadline (CLOCK_BOOTTIME ms; None: no deadline): the task is killed
    /// when it passes, by a watchdog that does not need the agent (it may be paused).
    fn fence(&mut self, until: Option<u64>) -> impl Future<Output = ()> + Send;
    /// A container's id, image and whether the kernel's OOM killer ended it, once it ended;
    /// None for a process.
    fn container(&mut self) -> impl Future<Output = Option<ContainerReport>> + Send {
        async { None }
    }
    /// Once the task's result is written: frees what is left of it (a container is removed,
    /// unless the agent keeps them). Nothing for a process.
    fn release(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
    /// At the agent's shutdown: leaves the task running for the agent's next run to adopt,
    /// if it can outlive the agent (an app's container, until its fence deadline); false
    /// when it cannot (a process dies with its shim's lease), and then it is stopped.
    fn detach(&mut self) -> impl Future<Output = bool> + Send {
        async { false }
    }
}

/// An exit status as one code: the code, or 128 + the signal, as a shell reports it.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// For tests that look at real processes.
#[cfg(test)]
pub(crate) mod testing {
    use std::time::Duration;

    /// Whether `pid` runs; a zombie waiting for its reaper does not.
    pub fn alive(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
            })
            .unwrap_or(false)
    }

    /// The pid a test's command wrote to `path`.
    pub fn read_pid(path: &std::path::Path) -> i32 {
        let text = std::fs::read_to_string(path).expect("pid file");
        text.trim().parse().expect("a pid")
    }

    /// Waits up to two seconds for `pid` to stop running.
    pub async fn gone(pid: i32) -> bool {
        for _ in 0..100 {
            if !alive(pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Lines of product code (test modules left out) under `p` that start a process.
    fn spawns(p: &Path, out: &mut Vec<String>) {
        if p.is_dir() {
            for e in std::fs::read_dir(p).unwrap().flatten() {
                spawns(&e.path(), out);
            }
            return;
        }
        if p.extension().and_then(|x| x.to_str()) != Some("rs") {
            return;
        }
        let text = std::fs::read_to_string(p).unwrap();
        // A file's test module comes last, after its `#[cfg(test)]`.
        let product = text.split("#[cfg(test)]").next().unwrap_or("");
        for (n, line) in product.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if code.contains("Command::new") || code.contains("process::Command") {
                out.push(format!("{}:{}: {}", p.display(), n + 1, line.trim()));
            }
        }
    }

    /// Issue 11: five modules started processes five ways. Only `src/process/` may (and
    /// `src/cli/`, whose `Command` is clap's).
    #[test]
    fn no_module_but_process_starts_a_process() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut found = Vec::new();
        for e in std::fs::read_dir(&src).unwrap().flatten() {
            let name = e.file_name();
            if name != "process" && name != "cli" {
                spawns(&e.path(), &mut found);
            }
        }
        assert!(
            found.is_empty(),
            "processes started outside src/process/:\n{}",
            found.join("\n")
        );
    }
}
