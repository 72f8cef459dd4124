//! The node side of apps: run the apps placed on this node, each in its own process group
//! through the shim, or in a container when its task names an `image`; one life cycle for
//! both, generic over the process layer's `Driver`: restart with exponential backoff; start
//! periodic apps every `start_interval_seconds`; run the health command beside the app
//! (`Driver::exec`: a process, or `docker exec` in the container), restarting it after
//! `health_restart_after` failures; rotate the logs; register the app's services (with a
//! container's published ports); stop (SIGTERM, then SIGKILL after the grace period) when the
//! task leaves this node or changes (then start it again with the new definition).
//!
//! Containers outlive the agent's shutdown and death until the apps session's fence deadline
//! (their watchdog keeps them that long): a run that starts before then adopts the containers of
//! unchanged apps still placed here, without a restart, and removes the others.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::launch::{app_launch, content_hash, for_start, AppLaunch, Owner};
use super::report::app_time;
use super::task::Task;
use crate::consul::{AgentServiceRegistration, Client, SessionState};
use crate::process::container::{published_service, PortSpec, Published};
use crate::process::docker::{self, AppContainer, DockerConfig, DockerDriver, DockerError};
use crate::process::logs::rotate_if_big;
use crate::process::policy::JobKind;
use crate::process::{
    supervise, Driver, KillReason, Limits, LogPaths, Outcome, ProcessDriver, RestartPolicy,
    TaskHandle,
};
use crate::util::time::now_ms;
use crate::wire::ServiceSpec;

/// First restart delay of an app that exits; doubled per quick exit up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A run this long resets the backoff: the app was up, not crash-looping.
const STABLE_RUN: Duration = Duration::from_secs(30);
/// Log file size that triggers a rotation (copy to `.1`, truncate; three copies are kept).
pub const LOG_MAX_BYTES: u64 = 10 << 20;

pub use crate::wire::{AppHealth, AppState, AppStatus};

/// What every app task needs from the agent.
#[derive(Clone)]
pub struct SupervisorCtx {
    /// Registers and deregisters the apps' services on the local agent.
    pub client: Client,
    /// The servant binary, whose spawner forks the shim in front of every app.
    pub shim: PathBuf,
    /// `<data_dir>/apps`: the apps' log files.
    pub log_dir: PathBuf,
    /// Between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// Told whenever an app's status changes, so the report is rewritten soon.
    pub changed: Arc<Notify>,
    /// The apps session's hold deadline (CLOCK_BOOTTIME ms): each app's shim kills it when it
    /// passes, even if the agent is paused and cannot.
    pub deadline: watch::Receiver<Option<u64>>,
    /// The apps session, whose id labels the containers.
    pub session: watch::Receiver<SessionState>,
    /// This node and namespace, on every container's labels.
    pub owner: Owner,
    /// The Engine client, made at the first container app (a node without Docker runs the
    /// rest).
    pub docker: Arc<tokio::sync::Mutex<Option<bollard::Docker>>>,
    /// Counts restarts for `/metrics`.
    pub metrics: super::metrics::AppMetrics,
    /// The node's `[jobs]` policy: an app outside it is not started.
    pub policy: crate::process::policy::CompiledPolicy,
}

impl SupervisorCtx {
    /// The container driver of apps (containers an agent's next run may adopt); connects to
    /// the Engine the first time.
    async fn docker_driver(&self) -> Result<DockerDriver, DockerError> {
        let mut client = self.docker.lock().await;
        let d = match client.as_ref() {
            Some(d) => d.clone(),
            None => {
                let d = docker::connect().await?;
                *client = Some(d.clone());
                d
            }
        };
        Ok(DockerDriver::new(d, Some(self.shim.clone()), DockerConfig::default()).adoptable())
    }
}

struct Handle {
    /// The definition it runs, to notice an update.
    content: Value,
    kill: watch::Sender<Option<KillReason>>,
    status: Arc<Mutex<AppStatus>>,
    join: JoinHandle<()>,
}

/// The apps of this node.
pub struct Supervisor {
    ctx: SupervisorCtx,
    apps: BTreeMap<String, Handle>,
    /// App containers an earlier run of the agent left (found at start), until the first
    /// reconcile adopts or removes them.
    found: Option<Vec<AppContainer>>,
}

impl Supervisor {
    pub fn new(ctx: SupervisorCtx) -> Self {
        Supervisor {
            ctx,
            apps: BTreeMap::new(),
            found: None,
        }
    }

    /// Finds the app containers of this node (and namespace) an earlier run left, to adopt or
    /// remove at the first reconcile. A node without Docker has none.
    pub async fn find_leftovers(&mut self) {
        let client = match docker::connect().await {
            Ok(d) => d,
            Err(e) => {
                debug!(error = %e, "no Docker Engine: no app containers to adopt");
                return;
            }
        };
        match docker::app_containers(&client, &self.ctx.owner.node, &self.ctx.owner.prefix).await {
            Ok(found) => {
                if !found.is_empty() {
                    info!(
                        containers = found.len(),
                        "app containers of an earlier run found"
                    );
                }
                self.found = Some(found);
            }
            Err(e) => warn!(error = %e, "cannot list this node's app containers"),
        }
        *self.ctx.docker.lock().await = Some(client);
    }

    /// The earlier run's containers: the running one of `task` with its unchanged definition
    /// is taken (for adoption); the app's others are removed.
    async fn take_found(&mut self, task: &Task) -> Option<String> {
        let found = self.found.as_mut()?;
        let hash = content_hash(task);
        let mut adopt = None;
        let mut gone = Vec::new();
        found.retain(|c| {
            if c.app != task.name {
                return true;
            }
            if adopt.is_none() && c.running && c.hash == hash {
                adopt = Some(c.id.clone());
            } else {
                gone.push(c.id.clone());
            }
            false
        });
        self.remove_containers(gone).await;
        adopt
    }

    /// Removes what is left of the earlier run's containers: their apps are not placed here.
    async fn drop_found(&mut self) {
        if let Some(found) = self.found.take() {
            self.remove_containers(found.into_iter().map(|c| c.id).collect())
                .await;
        }
    }

    async fn remove_containers(&self, ids: Vec<String>) {
        if ids.is_empty() {
            return;
        }
        let Some(client) = self.ctx.docker.lock().await.clone() else {
            return;
        };
        for id in ids {
            info!(container = %id, "removing an app container of an earlier run");
            if let Err(e) = docker::remove_container(&client, &id).await {
                warn!(container = %id, error = %e, "cannot remove the container");
            }
        }
    }

    /// Makes the running apps match `desired`: stops those not in it or whose definition
    /// changed, starts the missing ones.
    pub async fn reconcile(&mut self, desired: &BTreeMap<String, Task>) {
        let stale: Vec<String> = self
            .apps
            .iter()
            .filter(|(name, h)| desired.get(*name).is_none_or(|t| t.content != h.content))
            .map(|(n, _)| n.clone())
            .collect();
        let mut stopping = Vec::new();
        for name in stale {
            if let Some(h) = self.apps.remove(&name) {
                let why = if desired.contains_key(&name) {
                    "its task changed"
                } else {
                    "its task left this node"
                };
                info!(app = %name, "stopping: {why}");
                stopping.push(h);
            }
        }
        let mut changed = !stopping.is_empty();
        self.stop_many(stopping, KillReason::Removed).await;
        for (name, task) in desired {
            if !self.apps.contains_key(name) {
                let adopt = self.take_found(task).await;
                match &adopt {
                    Some(id) => info!(app = %name, container = %id, "adopting its container"),
                    None => info!(app = %name, command = %task.app.command, "starting"),
                }
                let h = self.start(task.clone(), adopt);
                self.apps.insert(name.clone(), h);
                changed = true;
            }
        }
        self.drop_found().await;
        if changed {
            self.ctx.changed.notify_one();
        }
    }

    /// Stops every app: `Detach` on shutdown (processes get SIGTERM, grace, SIGKILL; containers
    /// are left for the next run to adopt, until the fence deadline); `Fenced` when the apps
    /// session is lost (SIGKILL at once: the leader is already moving them).
    pub async fn stop_all(&mut self, why: KillReason) {
        if why == KillReason::Fenced {
            self.drop_found().await;
        }
        let all: Vec<Handle> = std::mem::take(&mut self.apps).into_values().collect();
        if all.is_empty() {
            return;
        }
        self.stop_many(all, why).await;
        self.ctx.changed.notify_one();
    }

    /// The status of every app, by name.
    pub fn statuses(&self) -> BTreeMap<String, AppStatus> {
        self.apps
            .iter()
            .map(|(n, h)| {
                let st = h.status.lock().map(|s| s.clone()).unwrap_or_default();
                (n.clone(), st)
            })
            .collect()
    }

    /// Names of the apps managed now.
    pub fn names(&self) -> Vec<String> {
        self.apps.keys().cloned().collect()
    }

    fn start(&self, task: Task, adopt: Option<String>) -> Handle {
        let (kill, kill_rx) = watch::channel(None);
        let status = Arc::new(Mutex::new(AppStatus {
            name: task.name.clone(),
            command: task.app.command.clone(),
            status: AppState::Enabled,
            health: AppHealth::Unhealthy,
            start_interval_seconds: task.app.start_interval_seconds,
            user: task.app.user.clone().unwrap_or_default(),
            working_dir: task.app.working_dir.clone().unwrap_or_default(),
            ..Default::default()
        }));
        let content = task.content.clone();
        let join = tokio::spawn(run_task(
            self.ctx.clone(),
            task,
            adopt,
            status.clone(),
            kill_rx,
        ));
        Handle {
            content,
            kill,
            status,
            join,
        }
    }

    /// Signals all first, then waits for all: N apps take one grace period, not N.
    async fn stop_many(&self, handles: Vec<Handle>, why: KillReason) {
        for h in &handles {
            let _ = h.kill.send(Some(why));
        }
        // An app task ends after SIGKILL at the latest.
        let limit = self.ctx.kill_grace + Duration::from_secs(10);
        for h in handles {
            if tokio::time::timeout(limit, h.join).await.is_err() {
                warn!("an app did not stop within {limit:?}");
            }
        }
    }
}

/// Updates the shared status and tells the reporter.
fn set(ctx: &SupervisorCtx, status: &Mutex<AppStatus>, f: impl FnOnce(&mut AppStatus)) {
    if let Ok(mut s) = status.lock() {
        f(&mut s);
    }
    ctx.changed.notify_one();
}

/// Waits `d`, or returns true at once if the app is being stopped.
async fn sleep_or_killed(d: Duration, kill: &mut watch::Receiver<Option<KillReason>>) -> bool {
    if kill.borrow().is_some() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = kill.changed() => true,
    }
}

/// Why an app is not started: its task cannot be described, or the node's policy refuses it.
#[derive(Debug, thiserror::Error)]
enum CannotLaunch {
    // The message says the cause, so it is not also a `source()`.
    #[error("{0}")]
    Task(crate::wire::TaskError),
    #[error("rejected: {0}")]
    Policy(crate::process::policy::Violation),
}

/// `launch` under the node's `[jobs]` policy: a process app counts as `shell` and a container
/// app as `docker`, a process app without `user` runs as `default_user`; the refusal names the
/// rule as a job's does.
fn held_to_policy(ctx: &SupervisorCtx, mut launch: AppLaunch) -> Result<AppLaunch, CannotLaunch> {
    let kind = if launch.spec.container.is_some() {
        JobKind::Docker
    } else {
        JobKind::Shell
    };
    let mut user = launch.spec.user.clone();
    ctx.policy
        .check(
            kind,
            &mut user,
            launch.spec.container.as_ref(),
            &ctx.owner.node,
        )
        .map_err(CannotLaunch::Policy)?;
    if let Some(h) = launch.health.as_mut().filter(|_| kind == JobKind::Shell) {
        h.user = user.clone();
    }
    launch.spec.user = user;
    Ok(launch)
}

/// One app's life on this node, until it is stopped: its launch described, its driver chosen
/// (a process group, or a container), then `run_app`, the same for both.
async fn run_task(
    ctx: SupervisorCtx,
    task: Task,
    adopt: Option<String>,
    status: Arc<Mutex<AppStatus>>,
    mut kill: watch::Receiver<Option<KillReason>>,
) {
    let logs = LogPaths::for_key(&ctx.log_dir, &task.name);
    let health_logs = LogPaths::for_key(&ctx.log_dir, &format!("{}.health", task.name));
    let launch = match app_launch(&task, &ctx.owner, &logs, &health_logs)
        .map_err(CannotLaunch::Task)
        .and_then(|l| held_to_policy(&ctx, l))
    {
        Ok(l) => l,
        Err(e) => {
            // The node's reader drops invalid tasks; this is only a second line of defence.
            warn!(app = %task.name, error = %e, "cannot start the app");
            set(&ctx, &status, |s| {
                s.status = AppState::Unavailable;
                s.last_exit = e.to_string();
            });
            let _ = kill.wait_for(|k| k.is_some()).await;
            return finish(&ctx, &status);
        }
    };
    if launch.spec.container.is_none() {
        let driver = ProcessDriver::with_shim(ctx.shim.clone());
        return run_app(&ctx, &driver, None, launch, &logs, &task, &status, kill).await;
    }
    // The Engine may be away: the app is unavailable and tried again with the backoff.
    let mut policy = RestartPolicy::new(MIN_BACKOFF, MAX_BACKOFF, STABLE_RUN);
    let driver = loop {
        match ctx.docker_driver().await {
            Ok(d) => break d,
            Err(e) => {
                warn!(app = %task.name, error = %e, "cannot start the app's container");
                let next = policy.after_failed_start();
                set(&ctx, &status, |s| {
                    s.status = AppState::Unavailable;
                    s.last_exit = e.to_string();
                    s.next_start_time = app_time(now_ms().saturating_add(next.as_millis() as u64));
                });
                if sleep_or_killed(next, &mut kill).await {
                    return finish(&ctx, &status);
                }
            }
        }
    };
    let adopted = match adopt {
        Some(id) => {
            let spec = launch.spec.clone().fence(*ctx.deadline.borrow());
            match driver.adopt(&id, &spec).await {
                Ok(h) => Some(h),
                Err(e) => {
                    warn!(app = %task.name, container = %id, error = %e, "cannot adopt the container; starting a new one");
                    if let Some(client) = ctx.docker.lock().await.clone() {
                        let _ = docker::remove_container(&client, &id).await;
                    }
                    None
                }
            }
        }
        None => None,
    };
    run_app(&ctx, &driver, adopted, launch, &logs, &task, &status, kill).await
}

/// The app is no longer run here.
fn finish(ctx: &SupervisorCtx, status: &Mutex<AppStatus>) {
    set(ctx, status, |s| {
        s.pid = 0;
        s.health = AppHealth::Unhealthy;
        s.status = AppState::Disabled;
    });
}

/// The life cycle of one app with `driver`, until it is stopped. `adopted`: a task an earlier
/// run of the agent started, supervised first instead of a launch.
#[allow(clippy::too_many_arguments)]
async fn run_app<D>(
    ctx: &SupervisorCtx,
    driver: &D,
    mut adopted: Option<D::Handle>,
    launch: AppLaunch,
    logs: &LogPaths,
    task: &Task,
    status: &Arc<Mutex<AppStatus>>,
    mut kill: watch::Receiver<Option<KillReason>>,
) where
    D: Driver + Clone + 'static,
    D::Handle: 'static,
{
    let app = &task.app;
    let declared: Vec<PortSpec> = launch
        .spec
        .container
        .as_ref()
        .map(|c| c.ports.clone())
        .unwrap_or_default();
    let periodic =
        (app.start_interval_seconds > 0).then(|| Duration::from_secs(app.start_interval_seconds));
    let mut policy = RestartPolicy::new(MIN_BACKOFF, MAX_BACKOFF, STABLE_RUN);
    // The services as last registered.
    let mut registered: Option<Vec<ServiceSpec>> = None;
    let mut attempt = 0u64;
    loop {
        if kill.borrow().is_some() {
            break;
        }
        rotate_if_big(logs, LOG_MAX_BYTES).await;
        let started = tokio::time::Instant::now();
        let started_ms = now_ms();
        attempt += 1;
        let adopting = adopted.is_some();
        let launched = match adopted.take() {
            Some(h) => Ok(h),
            None => {
                let session = ctx.session.borrow().id.clone().unwrap_or_default();
                let spec = for_start(&launch.spec, &session, attempt).fence(*ctx.deadline.borrow());
                driver.launch(&spec).await
            }
        };
        let mut running = match launched {
            Ok(r) => r,
            Err(e) => {
                warn!(app = %task.name, error = %e, "cannot start the app");
                let next = policy.after_failed_start();
                set(ctx, status, |s| {
                    s.status = AppState::Unavailable;
                    s.health = AppHealth::Unhealthy;
                    s.pid = 0;
                    s.last_exit = format!("spawn failed: {}", e.detail());
                    s.next_start_time = app_time(now_ms().saturating_add(next.as_millis() as u64));
                });
                if sleep_or_killed(next, &mut kill).await {
                    break;
                }
                continue;
            }
        };
        let pgid = running.pid();
        let report = running.container().await;
        set(ctx, status, |s| {
            if s.start_time.is_empty() {
                s.start_time = app_time(started_ms);
            } else {
                s.restarts += 1;
                ctx.metrics.restarted();
            }
            s.status = AppState::Enabled;
            s.pid = pgid;
            s.last_start_time = app_time(started_ms);
            s.next_start_time.clear();
            s.health = if app.health_check_cmd.is_some() {
                AppHealth::Unhealthy
            } else {
                AppHealth::Healthy
            };
        });
        match &report {
            Some(c) if adopting => info!(app = %task.name, container = %c.id, "app adopted"),
            Some(c) => info!(app = %task.name, container = %c.id, "app started"),
            None => info!(app = %task.name, pid = pgid, "app started"),
        }
        let published: Published = report.map(|c| c.ports).unwrap_or_default();
        let services: Vec<ServiceSpec> = app
            .services
            .iter()
            .map(|s| published_service(s, &declared, &published))
            .collect();
        if registered.as_ref() != Some(&services) {
            register_services(ctx, task, &services).await;
            registered = Some(services);
        }
        // This run's stop requests: the supervisor's, and the health loop's restarts.
        let (run_kill, run_rx) = watch::channel(kill.borrow().as_ref().copied());
        let forward = {
            let mut outer = kill.clone();
            let tx = run_kill.clone();
            tokio::spawn(async move {
                if let Ok(r) = outer.wait_for(|k| k.is_some()).await {
                    let _ = tx.send(*r);
                }
            })
        };
        let health = launch.health.clone().map(|spec| {
            let (ctx, status, task, driver) =
                (ctx.clone(), status.clone(), task.clone(), driver.clone());
            let id = running.id();
            let restart = run_kill.clone();
            tokio::spawn(async move {
                health_loop(&ctx, &task, &driver, &id, &spec, &status, restart).await
            })
        });
        let rotation = {
            let logs = logs.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    rotate_if_big(&logs, LOG_MAX_BYTES).await;
                }
            })
        };
        let outcome = supervise(
            &mut running,
            None,
            run_rx,
            ctx.kill_grace,
            Some(ctx.deadline.clone()),
        )
        .await;
        forward.abort();
        rotation.abort();
        if let Some(h) = health {
            h.abort();
        }
        // Stopped by the health loop, not by the supervisor: a failed run, restarted.
        let unhealthy = kill.borrow().is_none() && matches!(outcome, Outcome::Killed(_));
        let ended = match outcome {
            _ if unhealthy => format!(
                "restarted: {} health checks failed in a row",
                app.health_restart_after
            ),
            Outcome::Exited { code: c, .. } if c > 128 => {
                format!("exit status {c} (signal {})", c - 128)
            }
            Outcome::Exited { code: c, .. } => format!("exit status {c}"),
            Outcome::TimedOut => "timed out".into(),
            Outcome::Killed(r) => format!("stopped ({r:?})"),
        };
        info!(app = %task.name, pid = pgid, "app ended: {ended}");
        if outcome == Outcome::Killed(KillReason::Detach) {
            // Left running for the next run of the agent; its services go with this run.
            break;
        }
        // A container is removed once it ended (each start makes a new one).
        running.release().await;
        if matches!(outcome, Outcome::Killed(_)) && !unhealthy {
            break;
        }
        let ran = started.elapsed();
        let wait = match periodic {
            Some(every) if !unhealthy => every.saturating_sub(ran),
            _ => policy.after_run(ran),
        };
        // Quick exits that pushed the backoff up: crash-looping, so unavailable.
        let looping = periodic.is_none() && policy.looping();
        set(ctx, status, |s| {
            s.pid = 0;
            s.health = AppHealth::Unhealthy;
            if looping {
                s.status = AppState::Unavailable;
            }
            s.last_exit = ended;
            s.next_start_time = app_time(now_ms().saturating_add(wait.as_millis() as u64));
        });
        if sleep_or_killed(wait, &mut kill).await {
            break;
        }
    }
    if let Some(services) = registered {
        deregister_services(ctx, task, &services).await;
    }
    finish(ctx, status);
}

/// Runs the health command every `health_check_interval_seconds` while the app runs, beside it
/// (`Driver::exec`: for a process app a process of its own group, as the app runs: its user,
/// directory and environment; for a container app `docker exec` in the container): exit 0
/// within the interval is healthy; a command past it is killed. Its last output is kept in
/// `<name>.health.out/.err`. After `health_restart_after` failures in a row (when not 0) it
/// asks for the app's restart through `restart`.
async fn health_loop<D: Driver>(
    ctx: &SupervisorCtx,
    task: &Task,
    driver: &D,
    id: &str,
    spec: &crate::process::LaunchSpec,
    status: &Mutex<AppStatus>,
    restart: watch::Sender<Option<KillReason>>,
) {
    let every = Duration::from_secs(task.app.health_check_interval_seconds);
    let limits = Limits {
        timeout: every,
        grace: Duration::ZERO,
        cap: 0,
    };
    let mut failures = 0u32;
    loop {
        let healthy = match driver.exec(id, spec, limits).await {
            Ok(f) => {
                debug!(app = %task.name, outcome = ?f.outcome, "health command");
                matches!(f.outcome, Outcome::Exited { code: 0, .. })
            }
            Err(e) => {
                warn!(app = %task.name, error = %e, "cannot run the health command");
                false
            }
        };
        failures = if healthy {
            0
        } else {
            failures.saturating_add(1)
        };
        let h = if healthy {
            AppHealth::Healthy
        } else {
            AppHealth::Unhealthy
        };
        let changed = status.lock().map(|s| s.health != h).unwrap_or(false);
        if changed {
            set(ctx, status, |s| s.health = h);
        }
        let limit = task.app.health_restart_after;
        if limit > 0 && failures >= limit {
            warn!(app = %task.name, failures, "the health command keeps failing: restarting the app");
            let _ = restart.send(Some(KillReason::Removed));
            return;
        }
        tokio::time::sleep(every).await;
    }
}

async fn register_services(ctx: &SupervisorCtx, task: &Task, services: &[ServiceSpec]) {
    for s in services {
        let mut meta = BTreeMap::new();
        meta.insert("servant_app".to_string(), task.name.clone());
        if let Err(e) = ctx
            .client
            .agent_service_register(&AgentServiceRegistration::from_spec(s, meta))
            .await
        {
            warn!(app = %task.name, service = %s.id(), error = %e, "cannot register the app's service");
        }
    }
}

async fn deregister_services(ctx: &SupervisorCtx, task: &Task, services: &[ServiceSpec]) {
    for s in services {
        if let Err(e) = ctx.client.agent_service_deregister(s.id()).await {
            warn!(app = %task.name, service = %s.id(), error = %e, "cannot deregister the app's service");
        }
    }
}
