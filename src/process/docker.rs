//! The container driver: the second implementation of `Driver` / `TaskHandle`. A task is a
//! Docker container, started through the Engine API (bollard; the local socket or
//! `DOCKER_HOST`), never the `docker` CLI.
//!
//! - `launch`: the image is looked for and pulled as its `Pull` policy says (under
//!   `pull_timeout`); the container is created with the launch's command, environment,
//!   directory, user, the `Docker` object and the agent's `servant.*` labels; its watchdog
//!   starts (below); then the container starts. Its stdout and stderr are followed into the
//!   launch's `Output`, apart, as a process's are.
//! - `wait`: the container's exit code (128+n after signal n, as the Engine reports it).
//! - `stop`: the signal to the container's main process, then SIGKILL after the grace.
//! - `fence`: the deadline goes to the watchdog, as a shim's goes to the shim.
//! - `release` (after the result is written): the container is removed, unless kept.
//!
//! The watchdog (`servant __container-watchdog`, `watchdog.rs`) is what the shim is for a
//! process: a small process holding the agent's lease pipe. When the pipe closes (the agent
//! died, however) it removes the container; when the fence deadline passes (the agent is
//! paused) it kills it. So a container dies with its agent and never outlives the agent's hold.
//! Without a shim executable (unit tests) there is no watchdog: the agent's own fencing (a kill
//! request through `supervise`) still stops the container, but a paused agent cannot.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bollard::errors::Error as EngineError;
use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateImageOptions, KillContainerOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions, WaitContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::container::{pull_ref, ContainerSpec, HostPort, Published, PullPolicy};
use super::local::{prepare, read_captured, send_fence};
use super::run::{Finished, Limits, Outcome};
use super::spec::LaunchSpec;
use super::{Captured, Driver, SpawnError, TaskHandle};
use crate::util::backoff::Backoff;
use crate::util::duration::{de_duration, ser_duration};

/// The agent's labels on every container it starts.
pub const LABEL_NODE: &str = "servant.node";
/// The job key (a job's container).
pub const LABEL_JOB: &str = "servant.job";
pub const LABEL_SESSION: &str = "servant.session";
pub const LABEL_ATTEMPT: &str = "servant.attempt";
/// The agent's `kv_prefix`: agents of different namespaces on one node keep apart.
pub const LABEL_PREFIX: &str = "servant.prefix";
/// The app name (an app's container).
pub const LABEL_APP: &str = "servant.app";
/// A hash of the app's definition: a restarted agent adopts a container only if its task is
/// unchanged.
pub const LABEL_APP_HASH: &str = "servant.app-hash";

/// How long a request to the Engine may take (a pull has `pull_timeout`; a wait none).
const ENGINE_TIMEOUT: u64 = 60;

/// The `[docker]` section of the agent's configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DockerConfig {
    /// Keep exited containers once their result is written (`--keep-containers`).
    pub keep_containers: bool,
    /// How long a pull of a missing image may take before the job fails.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub pull_timeout: Duration,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            keep_containers: false,
            pull_timeout: Duration::from_secs(300),
        }
    }
}

/// Why the Engine could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot reach the Docker Engine: {0}")]
    Connect(EngineError),
    #[error("container {0} is not running")]
    NotRunning(String),
    #[error("docker {action}: {error}")]
    Api {
        action: &'static str,
        error: EngineError,
    },
}

/// A client of the local Engine (`DOCKER_HOST` or the local socket), its API version agreed.
pub async fn connect() -> Result<Docker, DockerError> {
    let d = Docker::connect_with_local_defaults().map_err(DockerError::Connect)?;
    let d = d.with_timeout(Duration::from_secs(ENGINE_TIMEOUT));
    match tokio::time::timeout(Duration::from_secs(10), d.negotiate_version()).await {
        Ok(r) => r.map_err(DockerError::Connect),
        Err(_) => Err(DockerError::Connect(EngineError::RequestTimeoutError)),
    }
}

/// Every container (running or not) of this node and namespace that carries `kind` (the job or
/// the app label): what the start-up sweeps look at.
async fn node_containers(
    docker: &Docker,
    node: &str,
    prefix: &str,
    kind: &str,
) -> Result<Vec<bollard::models::ContainerSummary>, DockerError> {
    let filters: HashMap<String, Vec<String>> = [(
        "label".to_string(),
        vec![
            format!("{LABEL_NODE}={node}"),
            format!("{LABEL_PREFIX}={prefix}"),
            kind.to_string(),
        ],
    )]
    .into_iter()
    .collect();
    let opts = ListContainersOptions {
        all: true,
        filters: Some(filters),
        ..Default::default()
    };
    docker
        .list_containers(Some(opts))
        .await
        .map_err(|error| DockerError::Api {
            action: "ps",
            error,
        })
}

/// Whether the Engine answered "no such ..." (404).
fn not_found(e: &EngineError) -> bool {
    matches!(
        e,
        EngineError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Starts containers.
#[derive(Debug, Clone)]
pub struct DockerDriver {
    docker: Docker,
    /// The servant executable, run as `__container-watchdog` beside each container.
    shim: Option<PathBuf>,
    cfg: DockerConfig,
    /// Containers an agent's next run may adopt (apps): when the agent dies or detaches them,
    /// they live on until the fence deadline, not a moment longer.
    adoptable: bool,
}

impl DockerDriver {
    pub fn new(docker: Docker, shim: Option<PathBuf>, cfg: DockerConfig) -> Self {
        DockerDriver {
            docker,
            shim,
            cfg,
            adoptable: false,
        }
    }

    /// A driver whose containers survive their agent until its fence deadline passes, for its
    /// next run to adopt (`adopt`): apps, never jobs.
    pub fn adoptable(mut self) -> Self {
        self.adoptable = true;
        self
    }

    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Makes sure `image` is here, pulling it as `policy` allows.
    async fn ensure_image(&self, image: &str, policy: PullPolicy) -> Result<(), SpawnError> {
        let present = match self.docker.inspect_image(image).await {
            Ok(_) => true,
            Err(e) if not_found(&e) => false,
            Err(error) => {
                return Err(SpawnError::Docker(DockerError::Api {
                    action: "image inspect",
                    error,
                }))
            }
        };
        match (present, policy) {
            (true, PullPolicy::Missing | PullPolicy::Never) => return Ok(()),
            (false, PullPolicy::Never) => {
                return Err(SpawnError::ImageMissing(image.to_string()));
            }
            _ => {}
        }
        info!(image, "pulling the image");
        let (from, tag) = pull_ref(image);
        let opts = CreateImageOptions {
            from_image: Some(from),
            tag: (!tag.is_empty()).then_some(tag),
            ..Default::default()
        };
        let pull = async {
            let mut s = self.docker.create_image(Some(opts), None, None);
            while let Some(item) = s.next().await {
                if let Err(e) = item {
                    return Err(e.to_string());
                }
            }
            Ok(())
        };
        match tokio::time::timeout(self.cfg.pull_timeout, pull).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(detail)) => Err(SpawnError::Pull {
                image: image.to_string(),
                detail,
            }),
            Err(_) => Err(SpawnError::Pull {
                image: image.to_string(),
                detail: format!(
                    "no answer within the pull timeout ({}s)",
                    self.cfg.pull_timeout.as_secs()
                ),
            }),
        }
    }

    /// Starts the watchdog of container `id`: a process of its own whose stdin is the lease
    /// pipe.
    fn watchdog(
        &self,
        id: &str,
        fence: Option<u64>,
    ) -> Result<Option<tokio::process::Child>, SpawnError> {
        let Some(exe) = &self.shim else {
            return Ok(None);
        };
        let mut c = std::process::Command::new(exe);
        c.arg("__container-watchdog").arg("--container").arg(id);
        if let Some(ms) = fence {
            c.arg("--fence-until").arg(ms.to_string());
        }
        if self.adoptable {
            c.arg("--outlive-agent");
        }
        c.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // Signals to the agent's group are not the watchdog's.
        std::os::unix::process::CommandExt::process_group(&mut c, 0);
        let mut c = tokio::process::Command::from(c);
        c.kill_on_drop(false);
        c.spawn().map(Some).map_err(SpawnError::Spawn)
    }
}

/// The body of a container's create request.
fn create_body(spec: &LaunchSpec, c: &ContainerSpec) -> ContainerCreateBody {
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in &c.ports {
        bindings
            .entry(p.key())
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: p.host_ip.clone(),
                host_port: Some(p.host_port.map(|h| h.to_string()).unwrap_or_default()),
            });
    }
    let exposed: Vec<String> = bindings.keys().cloned().collect();
    let host = HostConfig {
        binds: (!c.volumes.is_empty()).then(|| c.volumes.iter().map(|v| v.bind()).collect()),
        port_bindings: (!bindings.is_empty()).then_some(bindings),
        network_mode: c.network.clone(),
        memory: c.memory.map(|m| m as i64),
        // No swap beyond the memory limit: over it, the OOM killer.
        memory_swap: c.memory.map(|m| m as i64),
        nano_cpus: c.nano_cpus,
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(c.image.clone()),
        cmd: (!spec.argv.is_empty()).then(|| spec.argv.clone()),
        entrypoint: c.entrypoint.clone(),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        working_dir: spec.dir.clone(),
        user: spec.user.clone(),
        labels: Some(c.labels.clone().into_iter().collect()),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        attach_stdout: Some(false),
        attach_stderr: Some(false),
        tty: Some(false),
        host_config: Some(host),
        ..Default::default()
    }
}

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Exit {
    code: i32,
    oom_killed: bool,
}

/// A started container.
#[derive(Debug)]
pub struct DockerHandle {
    docker: Docker,
    id: String,
    image: String,
    pid: u32,
    exit: watch::Receiver<Option<Exit>>,
    /// `Output::Capture`'s files: stdout (or both), and stderr when apart.
    capture: Option<(File, Option<File>)>,
    watchdog: Option<tokio::process::Child>,
    lease: Option<tokio::process::ChildStdin>,
    keep: bool,
    /// Its published ports, read when it started.
    published: Published,
    /// May be left running for the agent's next run (`detach`).
    adoptable: bool,
    /// Set when this handle sends SIGKILL: an exit 137 then is ours, not the OOM killer's,
    /// and `wait_exit` does not wait for an OOM event.
    sigkilled: Arc<AtomicBool>,
}

/// What a container's task adds to its result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerReport {
    pub id: String,
    pub image: String,
    pub oom_killed: bool,
    /// Container port (`80/tcp`) to where it is published on the host.
    pub ports: Published,
}

/// A container the agent started for an app, found by its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppContainer {
    pub id: String,
    pub app: String,
    /// `servant.app-hash`: the definition it was started with.
    pub hash: String,
    pub running: bool,
}

/// The published ports of an inspected container: the first binding of each.
fn published_ports(i: &bollard::models::ContainerInspectResponse) -> Published {
    let mut out = Published::new();
    let ports = i.network_settings.as_ref().and_then(|n| n.ports.as_ref());
    for (key, bindings) in ports.into_iter().flatten() {
        let first = bindings.as_ref().and_then(|b| b.first());
        if let Some(b) = first {
            if let Some(port) = b.host_port.as_deref().and_then(|p| p.parse::<u16>().ok()) {
                out.insert(
                    key.clone(),
                    HostPort {
                        ip: b.host_ip.clone().unwrap_or_default(),
                        port,
                    },
                );
            }
        }
    }
    out
}

impl Driver for DockerDriver {
    type Handle = DockerHandle;

    async fn launch(&self, spec: &LaunchSpec) -> Result<DockerHandle, SpawnError> {
        let Some(c) = spec.container.as_ref() else {
            return Err(SpawnError::NoImage);
        };
        self.ensure_image(&c.image, c.pull).await?;
        let output = spec.output.clone();
        let prepared = tokio::task::spawn_blocking(move || prepare(&output, None, None, None))
            .await
            .map_err(|e| SpawnError::Spawn(std::io::Error::other(e)))??;
        let api = |action| move |error| SpawnError::Docker(DockerError::Api { action, error });
        let created = self
            .docker
            .create_container(None, create_body(spec, c))
            .await
            .map_err(api("create"))?;
        let id = created.id;
        let (docker, id_ref) = (&self.docker, id.as_str());
        let remove = move || async move {
            let opts = RemoveContainerOptions {
                force: true,
                ..Default::default()
            };
            let _ = docker.remove_container(id_ref, Some(opts)).await;
        };
        // The watchdog holds the lease before the container runs: from its start on, the
        // container dies with the agent.
        let mut watchdog = match self.watchdog(&id, spec.fence) {
            Ok(w) => w,
            Err(e) => {
                remove().await;
                return Err(e);
            }
        };
        let lease = watchdog.as_mut().and_then(|w| w.stdin.take());
        if let Err(e) = self.docker.start_container(&id, None).await {
            remove().await;
            if let Some(w) = watchdog.as_mut() {
                let _ = w.kill().await;
            }
            return Err(api("start")(e));
        }
        let (pid, published) = match self.docker.inspect_container(&id, None).await {
            Ok(i) => (
                i.state.as_ref().and_then(|s| s.pid).unwrap_or(0).max(0) as u32,
                published_ports(&i),
            ),
            Err(_) => (0, Published::new()),
        };
        debug!(container = %id, image = %c.image, "container started");
        let (rx, sigkilled) = follow(&self.docker, &id, prepared.stdout, prepared.stderr, 0);
        Ok(DockerHandle {
            sigkilled,
            docker: self.docker.clone(),
            id,
            image: c.image.clone(),
            pid,
            exit: rx,
            capture: prepared.capture,
            watchdog,
            lease,
            keep: self.cfg.keep_containers,
            published,
            adoptable: self.adoptable,
        })
    }

    async fn exec(
        &self,
        task: &str,
        spec: &LaunchSpec,
        limits: Limits,
    ) -> Result<Finished, SpawnError> {
        exec_in(&self.docker, task, spec, limits).await
    }
}

/// Runs `spec`'s command inside the running container `id` (`docker exec`), its output into
/// `spec`'s `Output` (files truncated or appended; `Capture` keeps `limits.cap` bytes). Past
/// `limits.timeout` the exec's process is killed (the Engine has no call for it: by its host
/// pid, which needs the agent to be allowed to signal it) and the outcome is `TimedOut`.
pub async fn exec_in(
    docker: &Docker,
    id: &str,
    spec: &LaunchSpec,
    limits: Limits,
) -> Result<Finished, SpawnError> {
    use bollard::exec::StartExecResults;
    let api = |action| move |error| SpawnError::Docker(DockerError::Api { action, error });
    if spec.argv.is_empty() {
        return Err(SpawnError::Empty);
    }
    let config = bollard::models::ExecConfig {
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        cmd: Some(spec.argv.clone()),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        user: spec.user.clone(),
        working_dir: spec.dir.clone(),
        ..Default::default()
    };
    let exec = docker
        .create_exec(id, config)
        .await
        .map_err(api("exec create"))?
        .id;
    let output = spec.output.clone();
    let prepared = tokio::task::spawn_blocking(move || prepare(&output, None, None, None))
        .await
        .map_err(|e| SpawnError::Spawn(std::io::Error::other(e)))??;
    let mut out = prepared.stdout.map(tokio::fs::File::from_std);
    let mut err = prepared.stderr.map(tokio::fs::File::from_std);
    let started = docker
        .start_exec(&exec, None)
        .await
        .map_err(api("exec start"))?;
    let copy = async {
        if let StartExecResults::Attached { mut output, .. } = started {
            while let Some(Ok(item)) = output.next().await {
                let (sink, bytes) = match &item {
                    bollard::container::LogOutput::StdErr { message } => (&mut err, message),
                    bollard::container::LogOutput::StdOut { message }
                    | bollard::container::LogOutput::Console { message } => (&mut out, message),
                    bollard::container::LogOutput::StdIn { .. } => continue,
                };
                if let Some(f) = sink.as_mut() {
                    let _ = f.write_all(bytes).await;
                }
            }
        }
    };
    let timed_out = tokio::time::timeout(limits.timeout, copy).await.is_err();
    for f in [out.as_mut(), err.as_mut()].into_iter().flatten() {
        let _ = f.flush().await;
    }
    // The output ends a moment before the Engine records the exit: ask again for a while.
    let mut inspected = docker.inspect_exec(&exec).await.ok();
    if !timed_out {
        for _ in 0..50 {
            if inspected.as_ref().is_none_or(|i| i.running != Some(true)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            inspected = docker.inspect_exec(&exec).await.ok();
        }
    }
    let outcome = match inspected {
        Some(i) if timed_out || i.running == Some(true) => {
            if let Some(pid) = i.pid.filter(|p| *p > 0) {
                let pid = nix::unistd::Pid::from_raw(pid as i32);
                if let Err(e) = nix::sys::signal::kill(pid, Signal::SIGKILL) {
                    debug!(exec = %exec, error = %e, "cannot kill the exec's process");
                }
            }
            Outcome::TimedOut
        }
        Some(i) => Outcome::Exited {
            code: i.exit_code.unwrap_or(-1) as i32,
            leftovers: 0,
        },
        None if timed_out => Outcome::TimedOut,
        None => Outcome::Exited {
            code: -1,
            leftovers: 0,
        },
    };
    let output = read_captured(&prepared.capture, limits.cap).await;
    Ok(Finished { outcome, output })
}

impl DockerDriver {
    /// Takes over container `id`, which an earlier run of this agent started (an app's): that
    /// run's watchdog is ended and one holding this run's lease (and `spec`'s fence deadline)
    /// takes its place; its output from now on goes to `spec`'s `Output`, and its end is
    /// waited for as a launched one's. Err when it no longer runs.
    pub async fn adopt(&self, id: &str, spec: &LaunchSpec) -> Result<DockerHandle, SpawnError> {
        let api = |action| move |error| SpawnError::Docker(DockerError::Api { action, error });
        let i = self
            .docker
            .inspect_container(id, None)
            .await
            .map_err(api("inspect"))?;
        let running = i.state.as_ref().and_then(|s| s.running) == Some(true);
        if !running {
            return Err(SpawnError::Docker(DockerError::NotRunning(id.to_string())));
        }
        let id = i.id.clone().unwrap_or_else(|| id.to_string());
        let ended = end_watchdogs_of(id.clone()).await;
        debug!(container = %id, watchdogs = ended, "the earlier run's watchdog ended");
        let mut watchdog = self.watchdog(&id, spec.fence)?;
        let lease = watchdog.as_mut().and_then(|w| w.stdin.take());
        let output = spec.output.clone();
        let prepared = tokio::task::spawn_blocking(move || prepare(&output, None, None, None))
            .await
            .map_err(|e| SpawnError::Spawn(std::io::Error::other(e)))??;
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i32)
            .unwrap_or(0);
        let (rx, sigkilled) = follow(&self.docker, &id, prepared.stdout, prepared.stderr, since);
        Ok(DockerHandle {
            sigkilled,
            docker: self.docker.clone(),
            image: i
                .config
                .as_ref()
                .and_then(|c| c.image.clone())
                .unwrap_or_default(),
            pid: i.state.as_ref().and_then(|s| s.pid).unwrap_or(0).max(0) as u32,
            published: published_ports(&i),
            id,
            exit: rx,
            capture: prepared.capture,
            watchdog,
            lease,
            keep: self.cfg.keep_containers,
            adoptable: self.adoptable,
        })
    }
}

/// Ends (SIGKILL) the watchdogs of container `id` still running from an earlier run of the
/// agent, found by their command line in /proc; returns how many. Off the async workers.
async fn end_watchdogs_of(id: String) -> usize {
    let found = tokio::task::spawn_blocking(move || {
        let mut pids = Vec::new();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return pids;
        };
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
            let is_ours = args.get(1) == Some(&&b"__container-watchdog"[..])
                && args
                    .windows(2)
                    .any(|w| w[0] == b"--container" && w[1] == id.as_bytes());
            if is_ours {
                pids.push(pid);
            }
        }
        pids
    })
    .await
    .unwrap_or_default();
    let mut n = 0;
    for pid in found {
        if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
            n += 1;
        }
    }
    n
}

/// The app containers of this node (and namespace), running or not.
pub async fn app_containers(
    docker: &Docker,
    node: &str,
    prefix: &str,
) -> Result<Vec<AppContainer>, DockerError> {
    let list = node_containers(docker, node, prefix, LABEL_APP).await?;
    Ok(list
        .into_iter()
        .filter_map(|c| {
            let labels = c.labels.unwrap_or_default();
            Some(AppContainer {
                id: c.id?,
                app: labels.get(LABEL_APP)?.clone(),
                hash: labels.get(LABEL_APP_HASH).cloned().unwrap_or_default(),
                running: c.state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING),
            })
        })
        .collect())
}

/// Stops and removes container `id` (and ends an earlier run's watchdog of it).
pub async fn remove_container(docker: &Docker, id: &str) -> Result<(), DockerError> {
    end_watchdogs_of(id.to_string()).await;
    let opts = RemoveContainerOptions {
        force: true,
        ..Default::default()
    };
    match docker.remove_container(id, Some(opts)).await {
        Ok(()) => Ok(()),
        Err(e) if not_found(&e) => Ok(()),
        Err(error) => Err(DockerError::Api {
            action: "rm",
            error,
        }),
    }
}

/// Starts copying a started (or adopted) container's log from `since` and waiting for its end:
/// its exit comes on the receiver once the log is copied; the flag is set by the handle when
/// it SIGKILLs the container itself.
fn follow(
    docker: &Docker,
    id: &str,
    out: Option<File>,
    err: Option<File>,
    since: i32,
) -> (watch::Receiver<Option<Exit>>, Arc<AtomicBool>) {
    let logs = tokio::spawn(follow_logs(docker.clone(), id.to_string(), out, err, since));
    let (tx, rx) = watch::channel(None);
    let sigkilled = Arc::new(AtomicBool::new(false));
    tokio::spawn(wait_exit(
        docker.clone(),
        id.to_string(),
        logs,
        tx,
        sigkilled.clone(),
    ));
    (rx, sigkilled)
}

/// Copies the container's stdout and stderr, apart, into `out` and `err` from `since` (unix
/// seconds; 0: from its start) until it ends.
async fn follow_logs(docker: Docker, id: String, out: Option<File>, err: Option<File>, since: i32) {
    let mut sinks = [
        out.map(tokio::fs::File::from_std),
        err.map(tokio::fs::File::from_std),
    ];
    // Bytes of each stream copied so far: [stdout, stderr].
    let mut copied = [0usize; 2];
    copy_logs(&docker, &id, true, since, &mut sinks, &mut copied).await;
    // The Engine can end a followed stream at the container's exit before its last lines were
    // copied to the stream (a short container's final stderr, seen under load): read the
    // whole log once more and copy what the stream missed of each stream.
    copy_logs(&docker, &id, false, since, &mut sinks, &mut copied).await;
    for f in sinks.iter_mut().flatten() {
        let _ = f.flush().await;
    }
}

/// Copies the container's log from `since` into `sinks` (stdout, stderr), past the first
/// `copied` bytes of each stream, which a read from the start skips; `copied` grows by what is
/// copied.
async fn copy_logs(
    docker: &Docker,
    id: &str,
    follow: bool,
    since: i32,
    sinks: &mut [Option<tokio::fs::File>; 2],
    copied: &mut [usize; 2],
) {
    let opts = LogsOptions {
        follow,
        stdout: true,
        stderr: true,
        since,
        ..Default::default()
    };
    let mut seen = [0usize; 2];
    let mut s = docker.logs(id, Some(opts));
    while let Some(item) = s.next().await {
        let Some((i, bytes)) = log_chunk(id, item) else {
            break;
        };
        let skip = copied[i].saturating_sub(seen[i]).min(bytes.len());
        seen[i] += bytes.len();
        if skip < bytes.len() {
            copy_log(id, &mut sinks[i], &bytes, skip).await;
            copied[i] += bytes.len() - skip;
        }
    }
}

/// A log item as (0 stdout or 1 stderr, its bytes); None at an error (the stream's end).
fn log_chunk(
    id: &str,
    item: Result<bollard::container::LogOutput, EngineError>,
) -> Option<(usize, Vec<u8>)> {
    match item {
        Ok(bollard::container::LogOutput::StdErr { message }) => Some((1, message.into())),
        Ok(
            bollard::container::LogOutput::StdOut { message }
            | bollard::container::LogOutput::Console { message },
        ) => Some((0, message.into())),
        Ok(bollard::container::LogOutput::StdIn { .. }) => Some((0, Vec::new())),
        Err(e) => {
            debug!(container = %id, error = %e, "log stream ended");
            None
        }
    }
}

/// Appends `bytes[skip..]` to a log file, if the stream is kept.
async fn copy_log(id: &str, sink: &mut Option<tokio::fs::File>, bytes: &[u8], skip: usize) {
    if let Some(f) = sink.as_mut() {
        if let Err(e) = f.write_all(&bytes[skip..]).await {
            warn!(container = %id, error = %e, "cannot write the container's log");
        }
    }
}

/// Waits for the container to end, then for its logs to be copied, then publishes its exit.
async fn wait_exit(
    docker: Docker,
    id: String,
    logs: tokio::task::JoinHandle<()>,
    tx: watch::Sender<Option<Exit>>,
    sigkilled: Arc<AtomicBool>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let code = loop {
        let opts = WaitContainerOptions {
            condition: "not-running".into(),
        };
        let mut s = docker.wait_container(&id, Some(opts));
        match s.next().await {
            Some(Ok(r)) => break r.status_code as i32,
            Some(Err(EngineError::DockerContainerWaitError { code, .. })) => break code as i32,
            Some(Err(e)) if not_found(&e) => break -1,
            Some(Err(e)) => {
                warn!(container = %id, error = %e, "cannot wait for the container; retrying")
            }
            None => {}
        }
        // The connection broke: the container may still run.
        match docker.inspect_container(&id, None).await {
            Err(e) if not_found(&e) => break -1,
            Ok(i) => {
                if let Some(st) = i.state.filter(|s| s.running != Some(true)) {
                    break st.exit_code.unwrap_or(-1) as i32;
                }
            }
            Err(_) => {}
        }
        tokio::time::sleep(backoff.fail()).await;
    };
    // The log stream ends with the container; it is given a moment, not forever.
    let _ = tokio::time::timeout(Duration::from_secs(10), logs).await;
    // The Engine learns of an OOM kill from the kernel's event, which can come just after the
    // exit it caused: a container SIGKILLed by someone else than this handle (137) is asked
    // again for up to 5 s. No wait helps when containerd 1.6 (cgroup v1) drops the event
    // because the container's cgroup was gone before it read it (its first process was the
    // victim): the Engine then never sets `OOMKilled`, and neither can this report it.
    let unexplained_kill = code == 137 && !sigkilled.load(Ordering::SeqCst);
    let mut oom_killed = false;
    for _ in 0..if unexplained_kill { 50 } else { 1 } {
        oom_killed = match docker.inspect_container(&id, None).await {
            Ok(i) => i.state.and_then(|s| s.oom_killed).unwrap_or(false),
            Err(_) => false,
        };
        if oom_killed || !unexplained_kill {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = tx.send(Some(Exit { code, oom_killed }));
}

impl DockerHandle {
    async fn exited(&mut self) -> Exit {
        match self.exit.wait_for(|e| e.is_some()).await {
            Ok(e) => e.unwrap_or(Exit {
                code: -1,
                oom_killed: false,
            }),
            Err(_) => Exit {
                code: -1,
                oom_killed: false,
            },
        }
    }

    async fn kill(&self, signal: Signal) {
        if signal == Signal::SIGKILL {
            self.sigkilled.store(true, Ordering::SeqCst);
        }
        let opts = KillContainerOptions {
            signal: signal.as_str().to_string(),
        };
        if let Err(e) = self.docker.kill_container(&self.id, Some(opts)).await {
            debug!(container = %self.id, error = %e, "kill");
        }
    }

    pub fn container_id(&self) -> &str {
        &self.id
    }
}

impl TaskHandle for DockerHandle {
    fn id(&self) -> String {
        self.id.clone()
    }

    fn pid(&self) -> u32 {
        self.pid
    }

    async fn wait(&mut self) -> i32 {
        self.exited().await.code
    }

    async fn stop(&mut self, signal: Signal, grace: Duration) {
        if self.exit.borrow().is_some() {
            return;
        }
        self.kill(signal).await;
        if tokio::time::timeout(grace, self.exited()).await.is_err() {
            self.kill(Signal::SIGKILL).await;
            let _ = tokio::time::timeout(Duration::from_secs(30), self.exited()).await;
        }
    }

    async fn stop_leftovers(&mut self, _grace: Duration) -> usize {
        // A container's processes end with its main process (its PID namespace goes).
        0
    }

    async fn captured(&mut self, cap: usize) -> Captured {
        read_captured(&self.capture, cap).await
    }

    async fn fence(&mut self, until: Option<u64>) {
        if let Some(lease) = self.lease.as_mut() {
            send_fence(lease, until).await;
        }
    }

    async fn container(&mut self) -> Option<ContainerReport> {
        let oom_killed = self.exit.borrow().is_some_and(|e| e.oom_killed);
        Some(ContainerReport {
            id: self.id.clone(),
            image: self.image.clone(),
            oom_killed,
            ports: self.published.clone(),
        })
    }

    async fn detach(&mut self) -> bool {
        if !self.adoptable || self.exit.borrow().is_some() {
            return false;
        }
        // The lease closes with the watchdog still running: it keeps the container until the
        // fence deadline, for the agent's next run to adopt.
        self.lease = None;
        if let Some(mut w) = self.watchdog.take() {
            // Reaped in the background; it is not killed.
            tokio::spawn(async move {
                let _ = w.wait().await;
            });
        }
        true
    }

    async fn release(&mut self) {
        // The watchdog goes first: its end of the lease must not read as the agent's death.
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill().await;
        }
        self.lease = None;
        if self.keep {
            return;
        }
        let opts = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        match self.docker.remove_container(&self.id, Some(opts)).await {
            Ok(()) => debug!(container = %self.id, "container removed"),
            Err(e) if not_found(&e) => {}
            Err(e) => warn!(container = %self.id, error = %e, "cannot remove the container"),
        }
    }
}

/// Stops and removes the job containers of this node (and namespace) that no longer belong to
/// a run of this agent: any not started by `session` (None: every one, at start, before this
/// run has a session; the earlier run is gone, the data dir's lock says so). With `keep`,
/// exited ones stay for inspection and only running ones go. Returns how many were removed.
pub async fn remove_stale(
    docker: &Docker,
    node: &str,
    prefix: &str,
    session: Option<&str>,
    keep: bool,
) -> Result<usize, DockerError> {
    let list = node_containers(docker, node, prefix, LABEL_JOB).await?;
    let mut n = 0;
    for c in list {
        let labels = c.labels.unwrap_or_default();
        let mine =
            session.is_some_and(|s| labels.get(LABEL_SESSION).map(String::as_str) == Some(s));
        let running = c.state.as_ref().is_some_and(|s| {
            matches!(
                s,
                bollard::models::ContainerSummaryStateEnum::RUNNING
                    | bollard::models::ContainerSummaryStateEnum::PAUSED
                    | bollard::models::ContainerSummaryStateEnum::RESTARTING
                    | bollard::models::ContainerSummaryStateEnum::CREATED
            )
        });
        if mine || (keep && !running) {
            continue;
        }
        let Some(id) = c.id else { continue };
        warn!(
            container = %id,
            job = labels.get(LABEL_JOB).map(String::as_str).unwrap_or(""),
            session = labels.get(LABEL_SESSION).map(String::as_str).unwrap_or(""),
            "removing a container of a job this run of the agent does not hold"
        );
        let opts = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        match docker.remove_container(&id, Some(opts)).await {
            Ok(()) => n += 1,
            Err(e) if not_found(&e) => {}
            Err(error) => {
                return Err(DockerError::Api {
                    action: "rm",
                    error,
                })
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::container::ContainerSpec;
    use serde_json::json;

    #[test]
    fn the_create_body_carries_the_docker_object() {
        let c = ContainerSpec::parse(
            "img:1",
            Some(
                &json!({"Ports": ["127.0.0.1:8080:80", "53/udp"], "Volumes": ["/a:/b:ro"],
                "Memory": "64m", "Cpus": 1.5, "Labels": {"team": "x"}, "Network": "none"}),
            ),
        )
        .unwrap();
        let mut spec = LaunchSpec::new(vec!["echo".into(), "hi".into()])
            .dir(Some("/w".into()))
            .user(Some("nobody".into()));
        spec.env.insert("A".into(), "1".into());
        let b = create_body(&spec, &c);
        assert_eq!(b.image.as_deref(), Some("img:1"));
        assert_eq!(b.cmd, Some(vec!["echo".to_string(), "hi".to_string()]));
        assert_eq!(b.env, Some(vec!["A=1".to_string()]));
        assert_eq!(b.working_dir.as_deref(), Some("/w"));
        let mut exposed = b.exposed_ports.unwrap();
        exposed.sort();
        assert_eq!(exposed, vec!["53/udp", "80/tcp"]);
        let h = b.host_config.unwrap();
        assert_eq!(h.binds, Some(vec!["/a:/b:ro".to_string()]));
        assert_eq!(h.memory, Some(64 << 20));
        assert_eq!(h.memory_swap, Some(64 << 20));
        assert_eq!(h.nano_cpus, Some(1_500_000_000));
        assert_eq!(h.network_mode.as_deref(), Some("none"));
        let pb = h.port_bindings.unwrap();
        let b80 = pb["80/tcp"].as_ref().unwrap();
        assert_eq!(b80[0].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(b80[0].host_port.as_deref(), Some("8080"));
        assert_eq!(
            pb["53/udp"].as_ref().unwrap()[0].host_port.as_deref(),
            Some("")
        );
        // No command: the image's own.
        let b = create_body(&LaunchSpec::new(vec![]), &c);
        assert_eq!(b.cmd, None);
    }
}
