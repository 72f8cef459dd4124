//! The native trigger watcher in the agent: a blocking query on this node's checks; when a
//! check moves to warning or critical (or back to passing, when a `passing` action exists), its
//! service's action runs, after a debounce, one at a time per service, with a timeout. Every run
//! is logged and recorded in `trigger_history/<node>`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::service::{local, role_for, Local};
use super::trigger::{fire, TriggerCtx};
use crate::consul::{spawn_watch, Client, HealthCheck};
use crate::wire::{HealthStatus, Namespace};

/// What the watcher needs from the agent.
#[derive(Debug, Clone)]
pub struct WatcherConfig {
    pub node: String,
    /// `@ENV`; else the hostname's prefix.
    pub environment: Option<String>,
    pub debounce: Duration,
    pub timeout: Duration,
    /// While a check stays warning or critical, its action runs again this often (0: never).
    pub repeat: Duration,
    /// Where script actions are written before they run.
    pub scratch: PathBuf,
    pub watch_wait: Duration,
    /// Where the role data, the actions and the history are (`kv_prefix`).
    pub layout: Namespace,
    /// What the watcher counts for `/metrics`.
    pub metrics: super::metrics::CheckMetrics,
    /// Which actions run, and as whom.
    pub policy: super::trigger::ActionPolicy,
}

/// A check's new state, for its service's worker.
#[derive(Debug, Clone)]
struct Change {
    check_id: String,
    state: HealthStatus,
}

type Snapshot = watch::Receiver<Option<Vec<HealthCheck>>>;

/// The service a check belongs to: its service's name, else the check's name.
fn service_of(c: &HealthCheck) -> &str {
    if c.service_name.is_empty() {
        &c.name
    } else {
        &c.service_name
    }
}

/// Runs until `shutdown`.
pub async fn run(client: Client, cfg: WatcherConfig, stop: CancellationToken) {
    let me = loop {
        match local(&client, cfg.environment.as_deref(), &cfg.layout).await {
            Ok(m) => break m,
            Err(e) => {
                warn!(error = %e, "trigger watcher waiting for the local agent");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    };
    // The watch and one worker per service; all end with `stop` and are awaited.
    let tasks = TaskTracker::new();
    let c = client.clone();
    let node = cfg.node.clone();
    let mut rx = spawn_watch(
        &tasks,
        "node checks",
        cfg.watch_wait,
        move |q| {
            let c = c.clone();
            let node = node.clone();
            async move { c.health_node(&node, &q).await }
        },
        &stop,
    );
    let mut last: HashMap<String, HealthStatus> = HashMap::new();
    // When each check's change was last handed to its worker, for `repeat`.
    let mut sent: HashMap<String, tokio::time::Instant> = HashMap::new();
    let mut workers: HashMap<String, mpsc::UnboundedSender<Change>> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            r = rx.changed() => if r.is_err() { break },
            _ = tick.tick() => {}
        }
        let Some(checks) = rx.borrow().clone() else {
            continue;
        };
        let now = tokio::time::Instant::now();
        for c in checks.iter().filter(|c| c.check_id != "serfHealth") {
            let prev = last.insert(c.check_id.clone(), c.status);
            let again = !cfg.repeat.is_zero()
                && c.status != HealthStatus::Passing
                && sent
                    .get(&c.check_id)
                    .is_some_and(|t| now.duration_since(*t) >= cfg.repeat);
            if prev == Some(c.status) && !again {
                continue;
            }
            // A first sight of a passing check is no transition; warning and critical are
            // acted on even at start (a standby that starts while no active node is healthy
            // must take over).
            if prev.is_none() && c.status == HealthStatus::Passing {
                continue;
            }
            sent.insert(c.check_id.clone(), now);
            let service = service_of(c).to_string();
            let w = workers.entry(service.clone()).or_insert_with(|| {
                let (wtx, wrx) = mpsc::unbounded_channel();
                tasks.spawn(worker(
                    client.clone(),
                    cfg.clone(),
                    me.clone(),
                    service,
                    wrx,
                    rx.clone(),
                    stop.clone(),
                ));
                wtx
            });
            let _ = w.send(Change {
                check_id: c.check_id.clone(),
                state: c.status,
            });
        }
    }
    drop(workers);
    tasks.close();
    tasks.wait().await;
}

/// One service's actions, one at a time: waits out the debounce, keeps only the newest change,
/// and runs its action if the check is still in that state.
async fn worker(
    client: Client,
    cfg: WatcherConfig,
    me: Local,
    service: String,
    mut rx: mpsc::UnboundedReceiver<Change>,
    snapshot: Snapshot,
    stop: CancellationToken,
) {
    // An action under way runs to its end (or its timeout); no new one starts after `stop`.
    while let Some(mut change) = tokio::select! {
        c = rx.recv() => c,
        _ = stop.cancelled() => None,
    } {
        tokio::select! {
            _ = tokio::time::sleep(cfg.debounce) => {}
            _ = stop.cancelled() => break,
        }
        while let Ok(newer) = rx.try_recv() {
            change = newer;
        }
        // The state and output as the local agent has them now: the catalog's output can lag
        // by Consul's check_update_interval, and the action must see the latest verdict.
        let current = match client.agent_checks().await {
            Ok(checks) => checks
                .get(&change.check_id)
                .map(|c| (c.status, c.output.clone())),
            Err(_) => snapshot.borrow().as_ref().and_then(|cs| {
                cs.iter()
                    .find(|c| c.check_id == change.check_id)
                    .map(|c| (c.status, c.output.clone()))
            }),
        };
        let Some((status, output)) = current else {
            continue;
        };
        if status != change.state {
            info!(service = %service, check = %change.check_id, "state changed again within the debounce; no action");
            continue;
        }
        // Without a role there is no telling which action is right (a standby must not run a
        // standalone's start): no action, and the check itself says why it is critical.
        let role = match role_for(&client, &me, &service).await {
            Ok((r, _)) => r,
            Err(e) => {
                warn!(service = %service, error = %e, "role unknown; no trigger action runs");
                continue;
            }
        };
        let ctx = TriggerCtx {
            env: me.env.clone(),
            host: me.node.clone(),
            service: service.clone(),
            role: role.as_str().to_string(),
            state: status,
            check_output: output,
        };
        if let Some(run) = fire(
            &client,
            &cfg.layout,
            &cfg.policy,
            &ctx,
            cfg.timeout,
            &cfg.scratch,
        )
        .await
        {
            cfg.metrics.ran(&run);
        }
    }
}
