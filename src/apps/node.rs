//! The apps part of the agent, the IO around the pure scheduler: this node's apps session
//! (behaviour delete, tied to serfHealth), its reports and capacity record, its part in leader
//! election on `appmgr/leader`, the leader's reconciliation, and the supervisor fed from this
//! node's own `appmgr/topology/<host>` key.
//!
//! The leader follows the capacity records (`appmgr/capacity/`), tasks and topology, never the
//! reports (`appmgr/status/`): every node rewrites its reports every `report_interval` with new
//! readings (time, load), and a leader woken by each of those writes would list every record
//! again for nothing (100 passes a second at 1,000 nodes and 10 s). A capacity record changes
//! only with what placement depends on, and vanishes with its node's apps session.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::config::AppsConfig;
use super::launch::{read_tasks, Owner};
use super::report::ResourceSampler;
use super::scheduler::{place, HostInfo, TaskReq, Topology};
use super::supervisor::{Supervisor, SupervisorCtx};
use crate::consul::{
    spawn_watch, watch_key, watch_key_paced, watch_prefix_paced, Client, ConsulError, KvPair,
    KvPutOptions, Pace, QueryOptions, SessionBehavior, TxnKvOp, TxnOp,
};
use crate::consul::{SessionKeeper, SessionSettings, SessionState};
use crate::util::backoff::Backoff;
use crate::util::time::now_ms;
use crate::wire::capacity::read_capacities;
use crate::wire::topology::{encode_host, parse_host, read_topology};
use crate::wire::{
    self, Applications, Capacity, DocError, HealthStatus, KvEntry, Namespace, ScheduleReport, Task,
};

/// Ops per leader transaction besides the leadership check (Consul allows 64).
const TXN_OPS: usize = 60;
/// How long a node whose apps session was replaced waits for the leader to rewrite its
/// topology key before trusting the key as it is.
const REJOIN_HOLD: Duration = Duration::from_secs(10);
/// How long the leader keeps the placements of a host whose capacity record vanished while its
/// Consul node is alive (`serfHealth` passing): its agent is restarting (a new run ends its
/// predecessor's apps session, which deletes the record and the reports, before it writes its
/// own), and the app containers it left wait to be adopted. A dead node's `serfHealth` fails
/// before its session goes, so its replicas move at once.
const REJOIN_GRACE: Duration = Duration::from_secs(10);
/// Request bytes per leader transaction (Consul allows 512 KB; values travel as base64).
const TXN_BYTES: usize = 384 * 1024;

/// `(key, value)` of each listed entry, as `wire`'s readers take them.
fn kv(entries: &[KvPair]) -> impl Iterator<Item = KvEntry<'_>> {
    entries.iter().map(|e| (e.key.as_str(), e.value.as_slice()))
}

/// What the scheduler needs of a task.
pub fn task_req(t: &Task) -> TaskReq {
    TaskReq {
        name: t.name.clone(),
        replication: t.replication,
        labels: t.labels.clone(),
        cpu: t.cpu,
        memory_mb: t.memory_mb,
    }
}

/// Live hosts (those with a readable capacity record, which their apps session holds) and what
/// they offer; and the hosts whose record is unreadable, with why: nothing is placed on those.
pub fn hosts_from_capacity(
    layout: &Namespace,
    entries: &[KvPair],
) -> (Vec<HostInfo>, BTreeMap<String, DocError>) {
    let (records, unreadable) = read_capacities(layout, kv(entries));
    let hosts = records
        .into_iter()
        .map(|(name, c)| host_info(name, c))
        .collect();
    (hosts, unreadable)
}

/// What the scheduler sees of a host offering `c`.
fn host_info(name: String, c: Capacity) -> HostInfo {
    HostInfo {
        memory_mb: c.memory_mb(),
        cpu_cores: c.cpu_processors as f64,
        labels: c.labels,
        name,
    }
}

/// What the last leader pass reported: a pass that changed nothing writes and logs nothing.
#[derive(Default)]
struct LastPass {
    schedule: Option<ScheduleReport>,
    unreadable: BTreeSet<String>,
    /// What each host offered when last seen live (or held), for holding it.
    known: BTreeMap<String, HostInfo>,
    /// Hosts held while their capacity records are missing, and since when.
    missing_since: BTreeMap<String, tokio::time::Instant>,
}

/// Everything the apps part needs from the agent.
#[derive(Clone)]
pub struct AppsNodeConfig {
    pub node: String,
    pub layout: Namespace,
    pub labels: BTreeMap<String, String>,
    pub session_ttl: Duration,
    pub fence_after: Duration,
    pub report_interval: Duration,
    pub topology_interval: Duration,
    pub watch_wait: Duration,
    pub shim: PathBuf,
    pub log_dir: PathBuf,
    pub kill_grace: Duration,
    /// This node's containers, for the `resource` report (set by the agent).
    pub containers: Option<crate::process::stats::ContainerMonitor>,
    /// What the apps part counts for `/metrics` (set by the agent).
    pub metrics: super::metrics::AppMetrics,
    /// The node's `[jobs]` policy, held to apps too (set by the agent; default: anything).
    pub policy: crate::process::policy::CompiledPolicy,
}

impl AppsNodeConfig {
    /// The apps part's settings: its own section, and what it takes from the agent's.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        apps: &AppsConfig,
        node: &str,
        layout: Namespace,
        shim: PathBuf,
        log_dir: PathBuf,
        kill_grace: Duration,
        watch_wait: Duration,
    ) -> Self {
        AppsNodeConfig {
            node: node.to_string(),
            layout,
            labels: apps.labels.clone(),
            session_ttl: apps.session_ttl,
            // The apps session has no lock-delay: its replicas move as soon as Consul lets it
            // go, so a partitioned node's apps may overlap their replacements for at most this
            // long. Long enough to ride out a Consul leader election (up to about 20 s with
            // Consul's default Raft timing) without restarting every app in the cluster.
            fence_after: apps.fence_after(),
            report_interval: apps.report_interval,
            topology_interval: apps.topology_interval,
            watch_wait,
            shim,
            log_dir,
            kill_grace,
            containers: None,
            metrics: Default::default(),
            policy: Default::default(),
        }
    }
}

/// Runs the apps part until `stop`; then stops this node's apps and ends the session (which
/// deletes the reports and frees the leader lock). Every task it starts has ended when it
/// returns.
pub async fn run(client: Client, cfg: AppsNodeConfig, stop: CancellationToken) {
    if let Err(e) = tokio::fs::create_dir_all(&cfg.log_dir).await {
        warn!(dir = %cfg.log_dir.display(), error = %e, "cannot create the apps' log directory");
    }
    let (keeper, session_rx) = SessionKeeper::new(
        client.for_part("sessions"),
        SessionSettings {
            name: cfg.layout.apps_session(),
            ttl: cfg.session_ttl,
            // Leader writes are fenced by Consul itself (each checks the leader lock's
            // session), so a new leader need not wait.
            lock_delay: Duration::ZERO,
            fence_after: cfg.fence_after,
            behavior: SessionBehavior::Delete,
        },
    );
    keeper.clear_predecessors(&cfg.node).await;
    clear_leftover_services(&client).await;
    let started = tokio::select! {
        r = keeper.start() => r,
        _ = stop.cancelled() => return,
    };
    if let Err(e) = started {
        warn!(error = %e, "cannot create the apps session; apps are off on this node");
        return;
    }
    // The session outlives the loops: it is ended last, after the apps have stopped.
    let keeper_stop = CancellationToken::new();
    let deadline = keeper.deadline();
    let keeper_task = tokio::spawn(keeper.run(keeper_stop.clone()));
    let changed = Arc::new(Notify::new());
    let mut sup = Supervisor::new(SupervisorCtx {
        client: client.clone(),
        shim: cfg.shim.clone(),
        log_dir: cfg.log_dir.clone(),
        kill_grace: cfg.kill_grace,
        changed: changed.clone(),
        deadline,
        session: session_rx.clone(),
        owner: Owner {
            node: cfg.node.clone(),
            prefix: cfg.layout.prefix().to_string(),
        },
        docker: Default::default(),
        metrics: cfg.metrics.clone(),
        policy: cfg.policy.clone(),
    });
    // Before any app starts: the containers an earlier run left, to adopt or remove.
    sup.find_leftovers().await;
    let sup = Arc::new(tokio::sync::Mutex::new(sup));
    let tasks = TaskTracker::new();
    // The leader stands only once this node's own report and capacity record are written: a
    // leader that saw no record of its own would take its node for dead and move (or stop) the
    // apps it runs, the containers it is about to adopt among them.
    let (reported_tx, reported) = watch::channel(false);
    tasks.spawn(report_loop(
        client.clone(),
        cfg.clone(),
        session_rx.clone(),
        sup.clone(),
        changed,
        reported_tx,
        stop.clone(),
    ));
    tasks.spawn(leader_loop(
        // Its own label in `/metrics`: the leader's reads and a node's are told apart.
        client.for_part("apps-leader"),
        cfg.clone(),
        session_rx.clone(),
        reported,
        stop.clone(),
    ));
    tasks.spawn(node_loop(
        client.clone(),
        cfg.clone(),
        session_rx,
        sup.clone(),
        stop.clone(),
    ));
    tasks.close();
    tasks.wait().await;
    // Containers stay for the next run to adopt (until the fence deadline); processes stop.
    sup.lock()
        .await
        .stop_all(crate::process::KillReason::Detach)
        .await;
    keeper_stop.cancel();
    let _ = keeper_task.await;
}

/// The services an earlier run's apps registered (it was killed before it could deregister
/// them). No app runs yet, so all of them go.
async fn clear_leftover_services(client: &Client) {
    if let Ok(services) = client.agent_services().await {
        for (id, v) in &services {
            if v.pointer("/Meta/servant_app").is_some() {
                info!(service = %id, "deregistering an app service left by an earlier run");
                let _ = client.agent_service_deregister(id).await;
            }
        }
    }
}

/// Writes this node's reports every `report_interval`, and the apps report soon after an app
/// changes state; and its capacity record when that or the session changes (the apps leader
/// watches those records, so rewriting an unchanged one would wake it for nothing). A wake-up
/// that changed nothing writes nothing: every write wakes the watchers of the KV store, this
/// node's own among them. A record that vanishes or changes under it (deleted by hand, say) is
/// written again at once: it follows its own record with a watch, which is quiet while the
/// record stays as written.
async fn report_loop(
    client: Client,
    cfg: AppsNodeConfig,
    session: watch::Receiver<SessionState>,
    sup: Arc<tokio::sync::Mutex<Supervisor>>,
    changed: Arc<Notify>,
    reported: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let started = now_ms();
    let sampler = ResourceSampler::new().with_containers(cfg.containers.clone());
    // The apps report last written, and the session it was written with.
    let mut written: Option<(String, Applications)> = None;
    // The capacity record last written, and the session it was written with.
    let mut capacity_written: Option<(String, Capacity)> = None;
    let watches = TaskTracker::new();
    let mut own = watch_key(
        &watches,
        &client,
        "own capacity record",
        cfg.layout.capacity(&cfg.node),
        cfg.watch_wait,
        &stop,
    );
    // Whether the watch has shown the record as last written: only a change after that is
    // someone else's (an answer read before the write is not).
    let mut seen_written = false;
    let mut next_full = tokio::time::Instant::now();
    loop {
        let sid = session.borrow().id.clone();
        let full = tokio::time::Instant::now() >= next_full;
        if full {
            next_full = tokio::time::Instant::now() + cfg.report_interval;
        }
        if let Some(sid) = sid {
            let apps: Applications = sup.lock().await.statuses();
            cfg.metrics.states(&apps);
            let mut writes = Vec::new();
            // The capacity record to write, when it changed (or the session did).
            let mut capacity = None;
            if full {
                match sampler.sample(&cfg.labels, started, now_ms()).await {
                    Ok(r) => {
                        let c = (sid.clone(), Capacity::of(&r));
                        if capacity_written.as_ref() != Some(&c) {
                            writes.push((cfg.layout.capacity(&cfg.node), c.1.encode()));
                            capacity = Some(c);
                        }
                        writes.push((cfg.layout.resource(&cfg.node), wire::encode(&r)));
                    }
                    Err(e) => warn!(error = %e, "cannot sample this node's resources"),
                }
            }
            if full || written.as_ref() != Some(&(sid.clone(), apps.clone())) {
                writes.push((cfg.layout.applications(&cfg.node), wire::encode(&apps)));
            }
            let opts = KvPutOptions {
                acquire: Some(sid.clone()),
                ..Default::default()
            };
            let capacity_key = cfg.layout.capacity(&cfg.node);
            let mut all_ok = true;
            for (key, body) in writes {
                let ok = match client.kv_put(&key, &body, &opts).await {
                    Ok(true) => true,
                    Ok(false) => {
                        warn!(key = %key, "the report is held by another session");
                        false
                    }
                    Err(e) => {
                        warn!(key = %key, error = %e, "cannot write the report");
                        false
                    }
                };
                all_ok &= ok;
                if key == capacity_key {
                    // A record that did not go through is written again at the next report.
                    capacity_written = if ok { capacity.take() } else { None };
                }
            }
            let capacity_ok = capacity_written.as_ref().is_some_and(|(s, _)| *s == sid);
            if all_ok && full && capacity_ok {
                reported.send_if_modified(|r| !std::mem::replace(r, true));
            }
            written = all_ok.then_some((sid, apps));
        }
        tokio::select! {
            _ = tokio::time::sleep_until(next_full) => {}
            _ = changed.notified() => {
                // Let a burst of changes settle into one write.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            r = own.changed() => {
                if r.is_err() {
                    break;
                }
                let stored = own.borrow_and_update().clone().flatten();
                let as_written = capacity_written.as_ref().is_some_and(|(sid, c)| {
                    stored
                        .as_ref()
                        .is_some_and(|e| e.holder() == Some(sid.as_str()) && e.value == c.encode())
                });
                if as_written {
                    seen_written = true;
                } else if seen_written {
                    info!("this node's capacity record changed or vanished: writing it again");
                    seen_written = false;
                    capacity_written = None;
                    next_full = tokio::time::Instant::now();
                }
            }
            _ = stop.cancelled() => break,
        }
    }
    watches.close();
    watches.wait().await;
}

/// How often a node reads its topology key while it is missing, and the tasks while there are
/// none (see `watch_key_paced`).
const EMPTY_WATCH_PACE: Pace = Pace(Duration::from_millis(500));

/// A key watch's latest answer: None before the first, then the entry if the key exists.
type KeyWatch = watch::Receiver<Option<Option<KvPair>>>;

/// Up to this many own tasks are followed one key watch each; past it, the node follows the
/// whole `appmgr/task/` prefix instead. Each watch holds a connection to the local Consul
/// agent, which allows 200 per client by default (`limits.http_max_conns_per_client`), and a
/// node with that many apps is in a cluster small enough for the prefix.
const MAX_TASK_WATCHES: usize = 32;

/// The tasks this node's topology key names, each followed by a key watch of its own (paced
/// while the key is missing): a task change is read by the nodes that run it, not by every node
/// (issue 15: following `appmgr/task/` with values made each change cost every node the whole
/// task set). Past `MAX_TASK_WATCHES` own tasks, one paced watch of the prefix.
struct OwnTasks {
    client: Client,
    layout: Namespace,
    wait: Duration,
    tracker: TaskTracker,
    stop: CancellationToken,
    /// Each followed task's latest answer and the token that ends its watch.
    each: BTreeMap<String, (KeyWatch, CancellationToken)>,
    /// The prefix watch, when there are too many tasks for one watch each.
    prefix: Option<(watch::Receiver<Option<Vec<KvPair>>>, CancellationToken)>,
    /// Told by every watch at each answer.
    changed: Arc<Notify>,
}

impl OwnTasks {
    fn new(
        client: &Client,
        cfg: &AppsNodeConfig,
        tracker: &TaskTracker,
        stop: &CancellationToken,
    ) -> OwnTasks {
        OwnTasks {
            client: client.clone(),
            layout: cfg.layout.clone(),
            wait: cfg.watch_wait,
            tracker: tracker.clone(),
            stop: stop.clone(),
            each: BTreeMap::new(),
            prefix: None,
            changed: Arc::new(Notify::new()),
        }
    }

    /// Follows exactly `names`: new ones get a watch, the watches of the others end.
    fn follow(&mut self, names: &BTreeSet<String>) {
        if names.len() > MAX_TASK_WATCHES {
            for (_, end) in std::mem::take(&mut self.each).into_values() {
                end.cancel();
            }
            if self.prefix.is_none() {
                let end = self.stop.child_token();
                let rx = watch_prefix_paced(
                    &self.tracker,
                    &self.client,
                    "tasks",
                    self.layout.tasks(),
                    self.wait,
                    EMPTY_WATCH_PACE,
                    &end,
                );
                self.forward(rx.clone(), end.clone());
                self.prefix = Some((rx, end));
            }
            return;
        }
        if let Some((_, end)) = self.prefix.take() {
            end.cancel();
        }
        self.each.retain(|name, (_, end)| {
            let keep = names.contains(name);
            if !keep {
                end.cancel();
            }
            keep
        });
        for name in names {
            if self.each.contains_key(name) {
                continue;
            }
            let end = self.stop.child_token();
            let rx = watch_key_paced(
                &self.tracker,
                &self.client,
                format!("task {name}"),
                self.layout.task(name),
                self.wait,
                EMPTY_WATCH_PACE,
                &end,
            );
            self.forward(rx.clone(), end.clone());
            self.each.insert(name.clone(), (rx, end));
        }
    }

    /// Tells `changed` at each answer of `rx` until `end`.
    fn forward<T: Send + Sync + 'static>(
        &self,
        mut rx: watch::Receiver<T>,
        end: CancellationToken,
    ) {
        let changed = self.changed.clone();
        self.tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = end.cancelled() => break,
                    r = rx.changed() => {
                        if r.is_err() {
                            break;
                        }
                        // A permit is kept when nobody waits: no answer is missed.
                        changed.notify_one();
                    }
                }
            }
        });
    }

    /// The followed tasks' entries (a deleted task has none; the prefix gives others too),
    /// once every watch has answered.
    fn snapshot(&self) -> Option<Vec<KvPair>> {
        if let Some((rx, _)) = &self.prefix {
            return rx.borrow().clone();
        }
        let mut out = Vec::with_capacity(self.each.len());
        for (rx, _) in self.each.values() {
            match &*rx.borrow() {
                None => return None,
                Some(Some(e)) => out.push(e.clone()),
                Some(None) => {}
            }
        }
        Some(out)
    }

    /// Resolves after any followed task's watch answered since the last call.
    async fn changed(&self) {
        self.changed.notified().await
    }
}

/// Keeps this node's apps equal to its topology key and the tasks it names. While the apps
/// session is lost, nothing runs here: the leader is placing these replicas elsewhere.
async fn node_loop(
    client: Client,
    cfg: AppsNodeConfig,
    mut session: watch::Receiver<SessionState>,
    sup: Arc<tokio::sync::Mutex<Supervisor>>,
    stop: CancellationToken,
) {
    let watches = TaskTracker::new();
    // The folder key `appmgr/task/` keeps the tasks prefix from ever being empty (see
    // `Client::kv_ensure`); task names never include it (`Namespace::name_under`).
    if let Err(e) = client.kv_ensure(&cfg.layout.tasks(), b"").await {
        debug!(error = %e, "cannot create the folder key of the tasks");
    }
    // Paced while missing or empty: a node with nothing placed would otherwise read its
    // topology key at every write anywhere in the cluster (issue 15). A first placement is seen
    // within `EMPTY_WATCH_PACE`; the leader's later changes at once.
    let mut topo_rx = watch_key_paced(
        &watches,
        &client,
        "own topology",
        cfg.layout.topology(&cfg.node),
        cfg.watch_wait,
        EMPTY_WATCH_PACE,
        &stop,
    );
    let mut own = OwnTasks::new(&client, &cfg, &watches, &stop);
    // After this node's apps session was lost and made again, its topology key may still name
    // apps the leader is moving away: hold off until the key changes (the leader has seen the
    // loss) or `REJOIN_HOLD` passes (it never did).
    let mut generation = 0u64;
    let mut hold: Option<(tokio::time::Instant, u64)> = None;
    loop {
        let st = session.borrow_and_update().clone();
        let ok = st.id.is_some() && !st.fenced;
        let topo = topo_rx.borrow_and_update().clone();
        let key_index = topo
            .as_ref()
            .and_then(|t| t.as_ref().map(|e| e.modify_index))
            .unwrap_or(0);
        if st.generation != generation {
            if generation != 0 {
                info!("apps session replaced: holding apps until the leader has placed them again");
                hold = Some((tokio::time::Instant::now() + REJOIN_HOLD, key_index));
            }
            generation = st.generation;
        }
        if let Some((until, index)) = hold {
            if key_index != index || tokio::time::Instant::now() >= until {
                hold = None;
            }
        }
        if let Some(topo) = topo {
            let names: BTreeSet<String> = topo
                .and_then(|e| parse_host(&e.value).ok())
                .unwrap_or_default();
            own.follow(&names);
            if ok && hold.is_none() {
                // Until each named task has been read once, a task not yet read would look
                // removed and be stopped: wait for the rest.
                if let Some(tasks) = own.snapshot() {
                    let (parsed, _) = read_tasks(&cfg.layout, kv(&tasks));
                    let desired: BTreeMap<String, Task> = parsed
                        .into_iter()
                        .filter(|(n, _)| names.contains(n))
                        .collect();
                    sup.lock().await.reconcile(&desired).await;
                }
            } else {
                // Fenced: no grace, the leader is already placing these elsewhere.
                sup.lock()
                    .await
                    .stop_all(crate::process::KillReason::Fenced)
                    .await;
            }
        }
        let wake = hold.map(|(until, _)| until);
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            r = topo_rx.changed() => if r.is_err() { break },
            _ = own.changed() => {}
            r = session.changed() => if r.is_err() { break },
            _ = async { match wake { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {}
        }
    }
    watches.close();
    watches.wait().await;
}

/// Stands for leader while the apps session exists: acquire `appmgr/leader`; when another
/// node holds it, follow the key with a watch and try again when it is freed (no polling).
async fn leader_loop(
    client: Client,
    cfg: AppsNodeConfig,
    mut session: watch::Receiver<SessionState>,
    mut reported: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    tokio::select! {
        r = reported.wait_for(|r| *r) => if r.is_err() { return },
        _ = stop.cancelled() => return,
    }
    let key = cfg.layout.leader();
    let watches = TaskTracker::new();
    let c = client.clone();
    let k = key.clone();
    // Who holds the lock (None: free, or no key yet).
    let mut holder = spawn_watch(
        &watches,
        "apps leader",
        cfg.watch_wait,
        move |q| {
            let c = c.clone();
            let k = k.clone();
            async move {
                let (e, meta) = c.kv_get(&k, &q).await?;
                Ok((e.and_then(|e| e.holder().map(str::to_string)), meta))
            }
        },
        &stop,
    );
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    'outer: loop {
        // The session ends during shutdown too: never stand again then.
        if stop.is_cancelled() {
            break;
        }
        let state = session.borrow_and_update().clone();
        let Some(sid) = state.id.clone() else {
            tokio::select! {
                _ = session.changed() => continue,
                _ = stop.cancelled() => break,
            }
        };
        let opts = KvPutOptions {
            acquire: Some(sid.clone()),
            ..Default::default()
        };
        let pause = match client.kv_put(&key, cfg.node.as_bytes(), &opts).await {
            Ok(true) => {
                backoff.reset();
                info!(node = %cfg.node, "apps leader");
                tokio::select! {
                    _ = lead(&client, &cfg, &sid, &stop, &watches) => {}
                    _ = session.changed() => {}
                    _ = stop.cancelled() => break,
                }
                info!(node = %cfg.node, "no longer the apps leader");
                continue;
            }
            Err(e) => {
                warn!(error = %e, "cannot stand for apps leader");
                Some(backoff.fail())
            }
            // Held by another node: wait until the watch says it is free. Free but refused is
            // a lock-delay: try again shortly.
            Ok(false) => holder
                .borrow_and_update()
                .as_ref()
                .is_some_and(|h| h.is_none())
                .then(|| backoff.fail()),
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => break 'outer,
                _ = session.changed() => continue 'outer,
                _ = async { match pause { Some(p) => tokio::time::sleep(p).await, None => std::future::pending().await } } => continue 'outer,
                r = holder.changed() => {
                    if r.is_err() {
                        break 'outer;
                    }
                    if holder.borrow_and_update().as_ref().is_some_and(|h| h.is_none()) {
                        continue 'outer;
                    }
                }
            }
        }
    }
    watches.close();
    watches.wait().await;
}

/// The leader's work: on every change to tasks, capacity records (hosts appearing, vanishing or
/// changing what they offer) or topology (and every `topology_interval`), schedule and write
/// the changed host keys. Report rewrites do not wake it. Returns when a write finds
/// that this session no longer holds the leader lock.
async fn lead(
    client: &Client,
    cfg: &AppsNodeConfig,
    sid: &str,
    stop: &CancellationToken,
    watches: &TaskTracker,
) {
    // Dropped (leadership or the session lost, or the agent stopping) or returned: either way
    // the guard ends the watches; the caller's tracker awaits them.
    let watching = stop.child_token();
    let _end = watching.clone().drop_guard();
    // Folder keys keep the watched prefixes non-empty (see `Client::kv_ensure`): an empty one
    // would wake the leader at every write anywhere. Host and task names never include them.
    for folder in [cfg.layout.tasks(), cfg.layout.topology_prefix()] {
        if let Err(e) = client.kv_ensure(&folder, b"").await {
            debug!(key = %folder, error = %e, "cannot create a folder key");
        }
    }
    let mut inputs = [
        cfg.layout.tasks(),
        cfg.layout.capacity_prefix(),
        cfg.layout.topology_prefix(),
    ]
    .map(|prefix| {
        let c = client.clone();
        spawn_watch(
            watches,
            "leader input",
            cfg.watch_wait,
            move |q| {
                let c = c.clone();
                let prefix = prefix.clone();
                async move {
                    // A listing's index tells a change under the prefix only when the prefix
                    // holds keys; an empty prefix answers with the whole KV table's index.
                    c.kv_keys(&prefix, None, &q)
                        .await
                        .map(|(keys, meta)| (if keys.is_empty() { 0 } else { meta.index }, meta))
                }
            },
            &watching,
        )
    });
    let mut last_report = LastPass::default();
    loop {
        let mut wake = tokio::time::Instant::now() + cfg.topology_interval;
        cfg.metrics.leader_pass();
        match reconcile(client, cfg, sid, &mut last_report).await {
            Ok(Some(hold_ends)) => wake = wake.min(hold_ends.unwrap_or(wake)),
            Ok(None) => break,
            Err(e) => warn!(error = %e, "apps reconciliation failed; retrying"),
        }
        let [a, b, c] = &mut inputs;
        tokio::select! {
            r = a.changed() => if r.is_err() { break },
            r = b.changed() => if r.is_err() { break },
            r = c.changed() => if r.is_err() { break },
            _ = tokio::time::sleep_until(wake) => {}
        }
        // Let a burst (several task writes, nodes joining together) settle.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether `node`'s Consul agent is alive: its `serfHealth` passes.
async fn serf_passing(client: &Client, node: &str) -> bool {
    match client.health_node(node, &QueryOptions::default()).await {
        Ok((checks, _)) => checks
            .iter()
            .any(|c| c.check_id == "serfHealth" && c.status == HealthStatus::Passing),
        Err(_) => false,
    }
}

/// What `host` offers according to its `resource` report, when a session holds the report and
/// it is readable: a host of an agent that writes no capacity record.
async fn legacy_host(
    client: &Client,
    cfg: &AppsNodeConfig,
    host: &str,
) -> Result<Option<HostInfo>, ConsulError> {
    let (entry, _) = client
        .kv_get(&cfg.layout.resource(host), &QueryOptions::default())
        .await?;
    let Some(entry) = entry.filter(|e| e.holder().is_some()) else {
        return Ok(None);
    };
    Ok(wire::ResourceReport::parse(&entry.value)
        .ok()
        .map(|r| host_info(host.to_string(), Capacity::of(&r))))
}

/// One leader pass. Ok(None): the leader lock is no longer this session's; Ok(Some(t)): done,
/// and a held host's grace ends at `t`.
async fn reconcile(
    client: &Client,
    cfg: &AppsNodeConfig,
    sid: &str,
    last_report: &mut LastPass,
) -> Result<Option<Option<tokio::time::Instant>>, ConsulError> {
    let q = QueryOptions::default();
    let (task_entries, _) = client.kv_list(&cfg.layout.tasks(), &q).await?;
    let (capacity_entries, _) = client.kv_list(&cfg.layout.capacity_prefix(), &q).await?;
    let (topo_entries, _) = client.kv_list(&cfg.layout.topology_prefix(), &q).await?;
    let (tasks, invalid) = read_tasks(&cfg.layout, kv(&task_entries));
    let (mut hosts, unreadable) = hosts_from_capacity(&cfg.layout, &capacity_entries);
    let topo = read_topology(&cfg.layout, kv(&topo_entries));
    let current = topo.placed;
    // A placed host without a capacity record may be an agent older than the records (a
    // rolling upgrade): while its `resource` report is held by a session, it is live and
    // offers what the report says. None of those in a cluster of this version: no read.
    for (host, names) in &current {
        if names.is_empty()
            || hosts.iter().any(|h| h.name == *host)
            || unreadable.contains_key(host)
        {
            continue;
        }
        if let Some(info) = legacy_host(client, cfg, host).await? {
            hosts.push(info);
        }
    }
    // Hosts with placements whose capacity records vanished while their Consul node lives: held
    // for `REJOIN_GRACE`, so a restarting agent finds its apps (and adopts its containers).
    let now = tokio::time::Instant::now();
    let live: BTreeSet<String> = hosts.iter().map(|h| h.name.clone()).collect();
    let mut held = BTreeMap::new();
    let mut hold_ends: Option<tokio::time::Instant> = None;
    for (host, names) in &current {
        if names.is_empty() || live.contains(host) || unreadable.contains_key(host) {
            continue;
        }
        let Some(info) = last_report.known.get(host) else {
            continue;
        };
        let since = last_report.missing_since.get(host).copied().unwrap_or(now);
        let until = since + REJOIN_GRACE;
        if now >= until || !serf_passing(client, host).await {
            continue;
        }
        if !last_report.missing_since.contains_key(host) {
            info!(host = %host, "its capacity record is gone but its Consul node lives: keeping its apps placed for {REJOIN_GRACE:?}");
        }
        held.insert(host.clone(), since);
        hosts.push(info.clone());
        hold_ends = Some(hold_ends.map_or(until, |t| t.min(until)));
    }
    // Keys holding something that is not a list of names are rewritten too.
    let mut stored: Topology = current.clone();
    for h in topo.unreadable.keys() {
        stored.insert(h.clone(), ["\u{0}unreadable".to_string()].into());
    }
    let reqs: Vec<_> = tasks.values().map(task_req).collect();
    let plan = place(&reqs, &hosts, &current);
    let mut ops: Vec<TxnKvOp> = plan
        .writes(&stored)
        .into_iter()
        .map(|(host, names)| match names {
            Some(n) => TxnKvOp::Set {
                key: cfg.layout.topology(&host),
                value: encode_host(&n),
                flags: 0,
            },
            None => TxnKvOp::Delete {
                key: cfg.layout.topology(&host),
            },
        })
        .collect();
    let report = ScheduleReport {
        leader: cfg.node.clone(),
        unplaced: plan.unplaced.clone(),
        invalid: invalid
            .iter()
            .map(|(n, e)| (n.clone(), e.to_string()))
            .collect(),
        hosts: hosts.iter().map(|h| h.name.clone()).collect(),
    };
    if last_report.schedule.as_ref() != Some(&report) {
        ops.push(TxnKvOp::Set {
            key: cfg.layout.schedule(),
            value: report.encode(),
            flags: 0,
        });
        for (task, why) in &invalid {
            warn!(task = %task, "invalid task skipped: {why}");
        }
        for u in &plan.unplaced {
            warn!(task = %u.task, "{}", u.reason);
        }
    }
    let unreadable_hosts: BTreeSet<String> = unreadable.keys().cloned().collect();
    if unreadable_hosts != last_report.unreadable {
        for (host, why) in &unreadable {
            warn!(host = %host, "nothing is placed on a host whose capacity record is unreadable: {why}");
        }
    }
    // Consul takes at most 64 ops and 512 KB per transaction: split by both.
    let mut chunks: Vec<Vec<TxnKvOp>> = vec![Vec::new()];
    let mut bytes = 0usize;
    for op in &ops {
        let size = match op {
            TxnKvOp::Set { key, value, .. } => key.len() + value.len() * 4 / 3 + 64,
            _ => 128,
        };
        let full = chunks
            .last()
            .is_some_and(|c| c.len() >= TXN_OPS || (bytes + size > TXN_BYTES && !c.is_empty()));
        if full {
            chunks.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(c) = chunks.last_mut() {
            c.push(op.clone());
        }
    }
    for chunk in chunks.iter().filter(|c| !c.is_empty()) {
        let mut txn = vec![TxnOp::Kv(TxnKvOp::CheckSession {
            key: cfg.layout.leader(),
            session: sid.to_string(),
        })];
        txn.extend(chunk.iter().cloned().map(TxnOp::Kv));
        if !client.txn(&txn).await?.committed() {
            return Ok(None);
        }
    }
    if !ops.is_empty() {
        info!(writes = ops.len(), "apps topology updated");
    }
    *last_report = LastPass {
        schedule: Some(report),
        unreadable: unreadable_hosts,
        known: hosts.into_iter().map(|h| (h.name.clone(), h)).collect(),
        missing_since: held,
    };
    Ok(Some(hold_ends))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::parse_task;
    use serde_json::json;

    fn entry(key: &str, value: &[u8]) -> KvPair {
        KvPair {
            key: key.to_string(),
            value: value.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn a_capacity_record_without_a_field_the_scheduler_needs_skips_its_host_and_says_why() {
        let layout = Namespace::new("");
        let record = |processors_key: &str| {
            let mut v = json!({"mem_total_bytes": 2u64 << 30, "labels": {"zone": "a"}});
            v[processors_key] = json!(4);
            serde_json::to_vec(&v).unwrap()
        };
        let (hosts, unreadable) = hosts_from_capacity(
            &layout,
            &[
                entry("appmgr/capacity/good", &record("cpu_processors")),
                entry("appmgr/capacity/renamed", &record("cpu_procs")),
                entry("appmgr/capacity/good/deeper", b"{}"),
            ],
        );
        assert_eq!(
            hosts,
            vec![HostInfo {
                name: "good".into(),
                labels: [("zone".to_string(), "a".to_string())].into(),
                cpu_cores: 4.0,
                memory_mb: 2048,
            }]
        );
        assert_eq!(unreadable.keys().collect::<Vec<_>>(), ["renamed"]);
        let why = unreadable["renamed"].to_string();
        assert!(why.contains("cpu_processors"), "{why}");
    }

    /// The record a node writes is the scheduling part of its `resource` report: the host the
    /// leader sees is the one it saw when it read the reports.
    #[test]
    fn a_capacity_record_offers_what_the_resource_report_did() {
        let layout = Namespace::new("");
        let report = wire::ResourceReport::parse(
            json!({
                "host": "x", "pid": 1, "appmgr_start_time": "", "systime": "",
                "cpu_cores": 2, "cpu_processors": 4, "cpu_sockets": 1,
                "mem_total_bytes": 3u64 << 30, "mem_free_bytes": 7, "mem_used_bytes": 9,
                "swap_total_bytes": 0, "swap_free_bytes": 0,
                "load_average": {"1min": 0.5, "5min": 0.0, "15min": 0.0},
                "fs": [], "net": [], "labels": {"zone": "a"},
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let (hosts, _) = hosts_from_capacity(
            &layout,
            &[entry("appmgr/capacity/x", &Capacity::of(&report).encode())],
        );
        assert_eq!(
            hosts,
            vec![HostInfo {
                name: "x".into(),
                labels: report.labels.clone(),
                cpu_cores: 4.0,
                memory_mb: report.memory_mb(),
            }]
        );
        // Live readings are not part of it: a new sample of the same machine is the same record.
        let mut later = report.clone();
        later.systime = "later".into();
        later.mem_free_bytes += 1;
        later.load_average.one = 3.0;
        assert_eq!(Capacity::of(&later), Capacity::of(&report));
    }

    #[test]
    fn the_scheduler_gets_the_tasks_scheduling_fields() {
        let body = json!({"content": {"command": "x"}, "replication": 3,
                          "labels": {"zone": "a"}, "cpu": 0.5, "memory_mb": 256});
        let r = task_req(&parse_task("w", body.to_string().as_bytes()).unwrap());
        assert_eq!(r.name, "w");
        assert_eq!((r.replication, r.cpu, r.memory_mb), (3, 0.5, 256));
        assert_eq!(r.labels["zone"], "a");
    }
}
