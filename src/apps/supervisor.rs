//! The node side of apps: run the apps placed on this node, each in its own process group
//! through the shim; restart with exponential backoff; start periodic apps every
//! `start_interval_seconds`; run the health command; rotate the logs; register the app's
//! services; stop (SIGTERM, then SIGKILL after the grace period) when the task leaves this node
//! or changes (then start it again with the new definition).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::report::app_time;
use super::task::Task;
use crate::consul::{AgentServiceRegistration, Client};
use crate::process::logs::rotate_if_big;
use crate::process::{
    run_with_timeout, supervise, Driver, KillReason, LaunchSpec, Limits, LogPaths, Outcome, Output,
    ProcessDriver, RestartPolicy, TaskHandle,
};
use crate::util::time::now_ms;

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
    /// The servant binary, run as `__job-shim` in front of every app.
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
}

impl Supervisor {
    pub fn new(ctx: SupervisorCtx) -> Self {
        Supervisor {
            ctx,
            apps: BTreeMap::new(),
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
                info!(app = %name, command = %task.app.command, "starting");
                let h = self.start(task.clone());
                self.apps.insert(name.clone(), h);
                changed = true;
            }
        }
        if changed {
            self.ctx.changed.notify_one();
        }
    }

    /// Stops every app: `Removed` on shutdown (SIGTERM, grace, SIGKILL); `Fenced` when the
    /// apps session is lost (SIGKILL at once: the leader is already moving them).
    pub async fn stop_all(&mut self, why: KillReason) {
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

    fn start(&self, task: Task) -> Handle {
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
        let join = tokio::spawn(run_app(self.ctx.clone(), task, status.clone(), kill_rx));
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

/// One app's life on this node, until it is stopped.
async fn run_app(
    ctx: SupervisorCtx,
    task: Task,
    status: Arc<Mutex<AppStatus>>,
    mut kill: watch::Receiver<Option<KillReason>>,
) {
    let app = &task.app;
    let logs = LogPaths::for_key(&ctx.log_dir, &task.name);
    let driver = ProcessDriver::with_shim(ctx.shim.clone());
    let spec = LaunchSpec::shell(&app.command, &app.env)
        .dir(app.working_dir.clone())
        .user(app.user.clone())
        .output(Output::Files {
            logs: logs.clone(),
            append: true,
        });
    let periodic =
        (app.start_interval_seconds > 0).then(|| Duration::from_secs(app.start_interval_seconds));
    let mut policy = RestartPolicy::new(MIN_BACKOFF, MAX_BACKOFF, STABLE_RUN);
    let mut services_up = false;
    loop {
        if kill.borrow().is_some() {
            break;
        }
        rotate_if_big(&logs, LOG_MAX_BYTES).await;
        let started = tokio::time::Instant::now();
        let started_ms = now_ms();
        let spec = spec.clone().fence(*ctx.deadline.borrow());
        let mut running = match driver.launch(&spec).await {
            Ok(r) => r,
            Err(e) => {
                warn!(app = %task.name, error = %e, "cannot start the app");
                let next = policy.after_failed_start();
                set(&ctx, &status, |s| {
                    s.status = AppState::Unavailable;
                    s.health = AppHealth::Unhealthy;
                    s.pid = 0;
                    s.last_exit = format!("spawn failed: {e}");
                    s.next_start_time = app_time(now_ms().saturating_add(next.as_millis() as u64));
                });
                if sleep_or_killed(next, &mut kill).await {
                    break;
                }
                continue;
            }
        };
        let pgid = running.pid();
        set(&ctx, &status, |s| {
            if s.start_time.is_empty() {
                s.start_time = app_time(started_ms);
            } else {
                s.restarts += 1;
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
        info!(app = %task.name, pid = pgid, "app started");
        if !services_up {
            register_services(&ctx, &task).await;
            services_up = true;
        }
        let health = app.health_check_cmd.clone().map(|cmd| {
            let ctx = ctx.clone();
            let status = status.clone();
            let every = Duration::from_secs(app.health_check_interval_seconds);
            let task = task.clone();
            tokio::spawn(async move { health_loop(&ctx, &task, &cmd, every, &status).await })
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
            kill.clone(),
            ctx.kill_grace,
            Some(ctx.deadline.clone()),
        )
        .await;
        rotation.abort();
        if let Some(h) = health {
            h.abort();
        }
        let ended = match outcome {
            Outcome::Exited { code: c, .. } if c > 128 => {
                format!("exit status {c} (signal {})", c - 128)
            }
            Outcome::Exited { code: c, .. } => format!("exit status {c}"),
            Outcome::TimedOut => "timed out".into(),
            Outcome::Killed(r) => format!("stopped ({r:?})"),
        };
        info!(app = %task.name, pid = pgid, "app ended: {ended}");
        if matches!(outcome, Outcome::Killed(_)) {
            break;
        }
        let ran = started.elapsed();
        let wait = match periodic {
            Some(every) => every.saturating_sub(ran),
            None => policy.after_run(ran),
        };
        // Quick exits that pushed the backoff up: crash-looping, so unavailable.
        let looping = periodic.is_none() && policy.looping();
        set(&ctx, &status, |s| {
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
    if services_up {
        deregister_services(&ctx, &task).await;
    }
    set(&ctx, &status, |s| {
        s.pid = 0;
        s.health = AppHealth::Unhealthy;
        s.status = AppState::Disabled;
    });
}

/// Runs the health command every `every` while the app runs, as the app runs (its user,
/// directory and environment, its own process group through the shim): exit 0 within `every`
/// is healthy; a command past `every` is killed with its group. Its last output is kept in
/// `<name>.health.out/.err`.
async fn health_loop(
    ctx: &SupervisorCtx,
    task: &Task,
    cmd: &str,
    every: Duration,
    status: &Mutex<AppStatus>,
) {
    let logs = LogPaths::for_key(&ctx.log_dir, &format!("{}.health", task.name));
    let driver = ProcessDriver::with_shim(ctx.shim.clone());
    let spec = LaunchSpec::shell(cmd, &task.app.env)
        .dir(task.app.working_dir.clone())
        .user(task.app.user.clone())
        .output(Output::Files {
            logs,
            append: false,
        });
    let limits = Limits {
        timeout: every,
        grace: Duration::ZERO,
        cap: 0,
    };
    loop {
        let healthy = match run_with_timeout(&driver, &spec, limits).await {
            Ok(f) => matches!(f.outcome, Outcome::Exited { code: 0, .. }),
            Err(e) => {
                warn!(app = %task.name, error = %e, "cannot run the health command");
                false
            }
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
        tokio::time::sleep(every).await;
    }
}

async fn register_services(ctx: &SupervisorCtx, task: &Task) {
    for s in &task.app.services {
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

async fn deregister_services(ctx: &SupervisorCtx, task: &Task) {
    for s in &task.app.services {
        if let Err(e) = ctx.client.agent_service_deregister(s.id()).await {
            warn!(app = %task.name, service = %s.id(), error = %e, "cannot deregister the app's service");
        }
    }
}
