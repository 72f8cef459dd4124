//! The job worker: the thin IO loop around the pure planner. It watches `jobs/` (key names only,
//! see `view`) and `queues/<node>/` with blocking queries, reads a shared job just before claiming
//! it, claims with one conditional lock, runs, and writes the result in one transaction that also
//! deletes the job key.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::consul::SessionState;
use crate::consul::{
    spawn_paced, spawn_watch, watch_prefix, AgentServiceRegistration, Client, KvPair, TxnKvOp,
    TxnOp, TxnOutcome, TxnResult,
};
use crate::process::container::published_service;
use crate::process::docker::{
    self as docker, DockerConfig, DockerDriver, LABEL_ATTEMPT, LABEL_JOB, LABEL_NODE, LABEL_PREFIX,
    LABEL_SESSION,
};
use crate::process::{
    read_capped, supervise, Driver, KillReason, LaunchSpec, LogPaths, Outcome, Output,
    ProcessDriver, Signal, SpawnError, TaskHandle,
};
use crate::util::backoff::Backoff;
use crate::util::duration::go_format;
use crate::util::redact::{Redactor, SecretRegistry};
use crate::util::time::{now_ms, now_ns, rfc3339_ns};

use super::claim::{self, Candidate, ClaimBook, PlanParams, Verdict};
use super::result::{JobResult, JobStatus};
use super::spec::{self, JobSpec, JobType, Rejection, ServiceSpec};
use super::view::{Found, JobsView};
use crate::util::cap_text;
use crate::wire::{JobKey, Namespace};

/// Largest result document written to KV. Consul limits a transaction's body to 512 KiB, and
/// values travel base64-encoded in it (4/3 larger).
const MAX_RESULT_BYTES: usize = 360 * 1024;

/// How much of a long command a result echoes when the whole would not fit.
const COMMAND_ECHO_CAP: usize = 64 * 1024;

/// Largest job document that can be claimed: the claim transaction carries it base64-encoded.
pub const MAX_JOB_BYTES: usize = 360 * 1024;

/// Settings of the worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub layout: Namespace,
    /// This node's Consul node name.
    pub node: String,
    /// Name of the servants' node sessions.
    pub session_name: String,
    /// Jobs this node runs at once.
    pub max_parallel: usize,
    /// Claim delay per rendezvous rank.
    pub claim_stagger: Duration,
    /// Pause before retrying a failed claim of an unchanged key (lock-delay).
    pub claim_retry: Duration,
    /// Bytes of stdout and of stderr kept in the KV result.
    pub output_cap: usize,
    /// Between SIGTERM and SIGKILL of a job's process group.
    pub kill_grace: Duration,
    /// How long running jobs may finish after the agent is asked to stop.
    pub shutdown_grace: Duration,
    /// Where full job logs are kept.
    pub log_dir: PathBuf,
    /// The servant executable, used as the job shim.
    pub shim_exe: PathBuf,
    /// `wait` of the blocking queries.
    pub watch_wait: Duration,
    /// Results older than this are deleted by housekeeping.
    pub result_max_age: Duration,
    /// How often housekeeping runs.
    pub gc_interval: Duration,
    /// Docker jobs: keep their containers, pull timeout.
    pub docker: DockerConfig,
    /// What the worker counts for `/metrics`.
    pub metrics: crate::jobs::metrics::JobMetrics,
    /// What this node agrees to run (`[jobs]`).
    pub policy: crate::process::policy::CompiledPolicy,
    /// The `EnvFromKV` values of running jobs, by log path, for the agent API to redact with.
    pub secrets: SecretRegistry,
}

/// What is left to do once a job's result is written: its container is removed.
type Release = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// One job this node is claiming or running.
struct Handle {
    /// Tells the job to stop, and why.
    kill: watch::Sender<Option<KillReason>>,
    /// The session the claim was made with; a new session fences the job.
    session: String,
}

/// What a job task reports when it ends.
struct Done {
    key: String,
    /// The ModifyIndex the claim was conditioned on.
    claimed_at: u64,
    /// The claim did not happen (lost a race, lock-delay, Consul error).
    claim_failed: bool,
    /// For a `jobs/` key: what was learned of it, for the view.
    found: Option<Found>,
    /// How the claim transaction ended, when one was sent for a `jobs/` key: a lost race
    /// grows the stagger, a claim won shrinks it.
    claim_end: Option<ClaimEnd>,
}

/// How far lost races grow the claim stagger: 16 × 25 ms = 400 ms per rank position at most.
const MAX_STAGGER_FACTOR: u32 = 16;

/// The longest pause in claiming shared jobs after a lost race, waiting for a newer listing.
const STALE_HOLD: Duration = Duration::from_millis(200);

/// Cluster-wide listings of `jobs/` per second: each node waits `nodes / LISTINGS_PER_SECOND`
/// between two of its reads (0.25 ms with 5 nodes, 50 ms with 1,000). A change to `jobs/`
/// answers every node's blocking read, so without a pace the cluster's reads per job grow with
/// the node count; with it they are bounded, and a job waits at most one interval longer.
const LISTINGS_PER_SECOND: u32 = 20_000;

/// The pause between two reads of `jobs/` by one node when `nodes` servants are live, and
/// whether the node is `saturated`: every slot taken or about to be, by keys it already knows.
/// A saturated node cannot run a job it would hear of sooner, so it reads the key names at most
/// every `SATURATED_LISTING_INTERVAL`: under a backlog each listing holds every queued name, and
/// one per job made a node's reads per job grow with the queue.
fn listing_interval(nodes: usize, saturated: bool) -> Duration {
    let paced = node_share(nodes, LISTINGS_PER_SECOND);
    if saturated {
        paced.max(SATURATED_LISTING_INTERVAL)
    } else {
        paced
    }
}

/// See `listing_interval`. A job deleted by an operator while it runs is stopped this much later
/// at most; a job whose preferred node is saturated is taken by another after the stagger.
const SATURATED_LISTING_INTERVAL: Duration = Duration::from_millis(100);

/// Cluster-wide reads of the live servant set per second: each node waits
/// `nodes / LIVE_READS_PER_SECOND` between two of its reads (100 ms alone, 2 s with 20 nodes,
/// 100 s with 1,000). Each read holds every live servant (about 2 KB each), and a servant that
/// comes, goes or fails answers every node's blocking read: unpaced, one event cost the cluster
/// N² entries (2 GB at 1,000 nodes), and steady churn that much again per event. A stale set
/// costs little: it only ranks nodes (for claims, and for clearing a gone node's old results), so
/// a job ranked to a gone node waits for the next rank's stagger, and a new node's jobs may draw
/// one lost race.
const LIVE_READS_PER_SECOND: u32 = 10;

/// The pause before a node's next blocking read of the live set, when it last saw `nodes`.
fn live_interval(nodes: usize) -> Duration {
    node_share(nodes.max(1), LIVE_READS_PER_SECOND)
}

/// The pause between one node's reads when `nodes` of them share `per_second` reads.
fn node_share(nodes: usize, per_second: u32) -> Duration {
    Duration::from_secs(1) * u32::try_from(nodes).unwrap_or(u32::MAX) / per_second
}

/// How often a node with room re-reads the whole `jobs/` queue while keys it saw held by other
/// sessions are queued (a holder that restarted frees them without changing their names).
const RESYNC_EVERY: Duration = Duration::from_secs(30);

/// How long a key may look held by us with no task behind it before it is released. Longer
/// than any watch lag, so a job that just finished is never mistaken for one.
const ORPHAN_GRACE: Duration = Duration::from_secs(3);

/// Gives an orphaned key back, unchanged, so the next claim (another attempt) can run it.
async fn release_orphan(ctx: Arc<Ctx>, e: KvPair, session: String) {
    warn!(key = %e.key, "held by this node with no task running it: releasing it");
    release(&ctx.client, e, session).await;
}

/// Unlocks `e` on behalf of `session`, unchanged. A release, unlike an invalidated session,
/// imposes no lock-delay: the next attempt may start at once.
async fn release(client: &Client, e: KvPair, session: String) {
    let ops = [
        TxnOp::Kv(TxnKvOp::CheckSession {
            key: e.key.clone(),
            session: session.clone(),
        }),
        TxnOp::Kv(TxnKvOp::Unlock {
            key: e.key.clone(),
            value: e.value.clone(),
            flags: e.flags,
            session,
        }),
    ];
    if let Err(err) = client.txn(&ops).await {
        warn!(key = %e.key, error = %err, "cannot release the key");
    }
}

/// Releases the job keys that the sessions of an earlier run of this agent (`dead`) still
/// hold, so their next attempts need not wait out the lock-delay that destroying those
/// sessions imposes. Safe because that run is gone (the data dir's lock says so) and its work
/// died with it (its shims' lease pipes closed when it died).
pub async fn release_predecessors(
    client: &Client,
    layout: &Namespace,
    node: &str,
    dead: &[String],
) {
    if dead.is_empty() {
        return;
    }
    for prefix in [layout.jobs_prefix(), layout.queue_prefix(node)] {
        let entries = match client.kv_list(&prefix, &Default::default()).await {
            Ok((e, _)) => e,
            Err(e) => {
                warn!(error = %e, "cannot list the jobs an earlier run held");
                continue;
            }
        };
        for e in entries {
            let Some(holder) = e.holder().map(str::to_string) else {
                continue;
            };
            if dead.contains(&holder) {
                info!(key = %e.key, "releasing a job an earlier run of this agent held");
                release(client, e, holder).await;
            }
        }
    }
}

/// Sends the task's `Done` when dropped.
struct DoneGuard {
    done: mpsc::UnboundedSender<Done>,
    report: Option<Done>,
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        if let Some(r) = self.report.take() {
            let _ = self.done.send(r);
        }
    }
}

/// The worker and its shared context.
pub struct Worker {
    ctx: Arc<Ctx>,
    session: watch::Receiver<SessionState>,
}

struct Ctx {
    client: Client,
    cfg: WorkerConfig,
    /// The session's hold deadline (CLOCK_BOOTTIME ms), handed to each job's watchdog.
    deadline: watch::Receiver<Option<u64>>,
    /// The Engine client, made at the first docker job (a node without Docker runs the rest).
    docker: tokio::sync::Mutex<Option<bollard::Docker>>,
}

impl Ctx {
    /// The container driver; connects to the Engine the first time.
    async fn docker_driver(&self) -> Result<DockerDriver, docker::DockerError> {
        let mut client = self.docker.lock().await;
        let d = match client.as_ref() {
            Some(d) => d.clone(),
            None => {
                let d = docker::connect().await?;
                *client = Some(d.clone());
                d
            }
        };
        Ok(DockerDriver::new(
            d,
            Some(self.cfg.shim_exe.clone()),
            self.cfg.docker.clone(),
        ))
    }
}

impl Worker {
    /// `deadline` is the session keeper's hold deadline: a job's shim kills it when it passes,
    /// even if this agent is paused and cannot.
    pub fn new(
        client: Client,
        cfg: WorkerConfig,
        session: watch::Receiver<SessionState>,
        deadline: watch::Receiver<Option<u64>>,
    ) -> Self {
        Worker {
            ctx: Arc::new(Ctx {
                client,
                cfg,
                deadline,
                docker: tokio::sync::Mutex::new(None),
            }),
            session,
        }
    }

    /// Runs until `stop` is cancelled, then drains: running jobs get `shutdown_grace` to finish
    /// and are then killed with a result that says so. Every task it starts is tracked and has
    /// ended when this returns.
    pub async fn run(mut self, stop: CancellationToken) {
        let ctx = self.ctx.clone();
        let cfg = &ctx.cfg;
        if let Err(e) = tokio::fs::create_dir_all(&cfg.log_dir).await {
            error!(dir = %cfg.log_dir.display(), error = %e, "cannot create the job log directory");
        }
        // The watches and housekeeping end with `stop`; job tasks, key releases and result
        // writes are tracked too, and awaited after the drain.
        let tasks = TaskTracker::new();
        // `jobs/` by key names only: a change costs each node the names, not every queued
        // document (see `view`). Its own queue is its own work, so values come with it.
        // Paced by the node count: every change to jobs/ answers every node's watch, so
        // together they read it at most `LISTINGS_PER_SECOND` times a second.
        let c = ctx.client.clone();
        let prefix = cfg.layout.jobs_prefix();
        let live_count = Arc::new(AtomicUsize::new(1));
        let pace = live_count.clone();
        let saturated = Arc::new(AtomicBool::new(false));
        let busy_pace = saturated.clone();
        let mut next_read = std::time::Instant::now();
        let mut jobs_rx = spawn_watch(
            &tasks,
            "jobs",
            cfg.watch_wait,
            move |q| {
                let c = c.clone();
                let p = prefix.clone();
                let now = std::time::Instant::now();
                let delay = next_read.saturating_duration_since(now);
                next_read = now
                    + delay
                    + listing_interval(
                        pace.load(Ordering::Relaxed),
                        busy_pace.load(Ordering::Relaxed),
                    );
                async move {
                    tokio::time::sleep(delay).await;
                    // The index goes with the names: the view tells a listing from before a
                    // finished job's deletion by it.
                    let (keys, meta) = c.kv_keys(&p, None, &q).await?;
                    Ok(((meta.index, keys), meta))
                }
            },
            &stop,
        );
        let mut queue_rx = watch_prefix(
            &tasks,
            &ctx.client,
            "queue",
            cfg.layout.queue_prefix(&cfg.node),
            cfg.watch_wait,
            &stop,
        );
        let mut live_rx = watch_live(&tasks, &ctx.client, cfg, &stop);
        tasks.spawn(housekeeping(ctx.clone(), live_rx.clone(), stop.clone()));
        // An empty prefix answers a blocking read with the whole KV table's index, so its
        // watch would wake at every write anywhere; a folder key keeps both prefixes non-empty.
        for folder in [cfg.layout.jobs_prefix(), cfg.layout.queue_prefix(&cfg.node)] {
            ensure_folder(&ctx.client, &folder).await;
        }

        deregister_leftover_services(&ctx).await;
        let params = PlanParams {
            stagger: cfg.claim_stagger,
            retry_after: cfg.claim_retry,
            max_stagger: cfg.claim_stagger * MAX_STAGGER_FACTOR,
        };
        let mut book = ClaimBook::new(&cfg.node, params);
        let mut handles: HashMap<String, Handle> = HashMap::new();
        let mut view = JobsView::default();
        // Own-queue keys this node finished, with the ModifyIndex it claimed them at: a stale
        // snapshot showing them unclaimed must not cause a second claim attempt.
        let mut finished: HashMap<String, u64> = HashMap::new();
        // After a lost claim race: the count of jobs/ listings that must be passed before this
        // node claims shared jobs again, and when the hold ends anyway (a quiet cluster may send
        // no newer listing).
        let mut hold: Option<(u64, Instant)> = None;
        // Keys held by this node's session with no task of ours behind them (a claim whose
        // answer was lost, a result that could not be written), and since when.
        let mut orphans: HashMap<String, std::time::Instant> = HashMap::new();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        // Whole listings of jobs/ (resyncs): one at a time, due at start.
        let (resync_tx, mut resync_rx) = mpsc::unbounded_channel::<Vec<KvPair>>();
        let mut resyncing = false;
        // Orphaned keys given back: free now, to be read again.
        let (released_tx, mut released_rx) = mpsc::unbounded_channel::<String>();
        let mut resync_at = Some(Instant::now());
        let mut wake: Option<Instant> = None;
        let mut session_id = self.session.borrow().id.clone();
        let mut fenced = self.session.borrow().fenced;
        loop {
            let sleep = async {
                match wake {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            // `stop` first, and level-triggered: once cancelled it wins every pass. A watch ends
            // only with `stop`, so a closed channel means the same.
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                r = jobs_rx.changed() => {
                    if r.is_err() { break; }
                    if let Some((index, keys)) = jobs_rx.borrow_and_update().as_ref() {
                        view.listing(*index, keys);
                    }
                }
                r = queue_rx.changed() => if r.is_err() { break },
                r = live_rx.changed() => {
                    if r.is_err() { break; }
                    let n = live_rx.borrow().as_ref().map_or(1, Vec::len);
                    live_count.store(n.max(1), Ordering::Relaxed);
                    cfg.metrics.live_servants(n);
                    // A node that left freed its keys without changing their names.
                    resync_at = Some(Instant::now());
                }
                r = self.session.changed() => {
                    if r.is_err() { break; }
                    let (now_id, now_fenced) = {
                        let st = self.session.borrow();
                        (st.id.clone(), st.fenced)
                    };
                    if now_id != session_id {
                        if let Some(old) = &session_id {
                            for (key, h) in handles.iter().filter(|(_, h)| &h.session == old) {
                                warn!(key = %key, "session lost: killing the job; its lock is no longer ours");
                                let _ = h.kill.send(Some(KillReason::Fenced));
                            }
                        }
                        session_id = now_id;
                        resync_at = Some(Instant::now());
                    } else if now_fenced && !fenced {
                        // Consul has not confirmed the session for `fence_after`: another node
                        // may take these jobs soon. Stop them; a result that is already
                        // written stays, and one being written waits for Consul.
                        for (key, h) in &handles {
                            warn!(key = %key, "consul cannot confirm this node's session: killing the job");
                            let _ = h.kill.send(Some(KillReason::Fenced));
                        }
                    }
                    fenced = now_fenced;
                }
                Some(d) = done_rx.recv() => {
                    handles.remove(&d.key);
                    match d.claim_end {
                        Some(ClaimEnd::Changed) => {
                            book.lost_race();
                            debug!(key = %d.key, stagger = ?book.stagger(), "lost a claim race");
                        }
                        Some(ClaimEnd::Claimed) => book.won(),
                        _ => {}
                    }
                    match d.found {
                        Some(found) => {
                            if matches!(found, Found::NotClaimed(_)) {
                                book.claim_failed(&d.key, d.claimed_at, std::time::Instant::now());
                                hold = Some((view.listings(), Instant::now() + STALE_HOLD));
                            }
                            view.learn(&d.key, found);
                        }
                        None if d.claim_failed => {
                            book.claim_failed(&d.key, d.claimed_at, std::time::Instant::now());
                            // Our view was stale: take no more shared jobs until a newer
                            // listing arrives, or each claim from the same view may fail too.
                            hold = Some((view.listings(), Instant::now() + STALE_HOLD));
                        }
                        None => {
                            finished.insert(d.key, d.claimed_at);
                        }
                    }
                }
                Some(key) = released_rx.recv() => view.learn(&key, Found::NotClaimed(None)),
                Some(entries) = resync_rx.recv() => {
                    resyncing = false;
                    view.resynced(entries);
                }
                _ = sleep => {}
            }
            wake = None;
            // No new work while fenced: nothing says the session is still ours.
            let Some(session) = session_id.clone().filter(|_| !fenced) else {
                continue;
            };
            let free = cfg.max_parallel.saturating_sub(handles.len());
            if !resyncing && resync_at.is_some_and(|t| t <= Instant::now()) {
                resyncing = true;
                resync_at = None;
                tasks.spawn(resync(ctx.clone(), resync_tx.clone()));
            }
            let mut entries: HashMap<String, KvPair> = HashMap::new();
            // The own queue comes whole with its values (it is this node's alone); the
            // shared queue's candidates are kept by the view and the planner between passes.
            let mut own_listed: HashSet<String> = HashSet::new();
            let mut own_candidates = Vec::new();
            let own_queue = cfg.layout.queue_prefix(&cfg.node);
            if hold.is_some_and(|(seen, until)| view.listings() > seen || Instant::now() >= until) {
                hold = None;
            }
            if let Some((_, until)) = hold {
                wake = Some(wake.map_or(until, |w| w.min(until)));
            }
            let busy: HashSet<String> = handles.keys().cloned().collect();
            book.set_live(live_rx.borrow().as_deref().unwrap_or_default());
            view.sync(&cfg.layout, &mut book, std::time::Instant::now());
            let mut held_by_us = view.orphans(&cfg.layout, &session, &busy);
            for e in queue_rx.borrow().iter().flatten() {
                own_listed.insert(e.key.clone());
                if e.holder() == Some(session.as_str()) && !handles.contains_key(&e.key) {
                    held_by_us.push(e.clone());
                }
                if e.holder().is_some() || cfg.layout.parse_job_key(&e.key).is_none() {
                    continue;
                }
                if finished.get(&e.key) == Some(&e.modify_index) {
                    continue;
                }
                own_candidates.push(Candidate {
                    key: e.key.clone(),
                    modify_index: e.modify_index,
                    create_index: e.create_index,
                    own_queue: true,
                });
                entries.insert(e.key.clone(), e.clone());
            }
            for e in held_by_us {
                let since = *orphans
                    .entry(e.key.clone())
                    .or_insert_with(std::time::Instant::now);
                if since.elapsed() > ORPHAN_GRACE {
                    orphans.remove(&e.key);
                    let (ctx, session, released) =
                        (ctx.clone(), session.clone(), released_tx.clone());
                    tasks.spawn(async move {
                        let key = e.key.clone();
                        release_orphan(ctx, e, session).await;
                        // Unlocking changes no key name: the jobs/ watch would not say it.
                        let _ = released.send(key);
                    });
                }
            }
            let listed = |k: &str| own_listed.contains(k) || view.is_listed(k);
            // Forget a finished key only once the watch no longer lists it at all (deleted).
            finished.retain(|k, _| own_listed.contains(k));
            orphans.retain(|k, _| listed(k) && !handles.contains_key(k));
            // A job whose key was deleted while this session held it was stopped by an
            // operator (`consul kv delete`, the dashboard): it gets SIGTERM, then SIGKILL after
            // `kill_grace`, and a result that says so. Only while the session is ours and not
            // fenced: then no other node can have held the key meanwhile.
            for (key, h) in &handles {
                if !listed(key) && h.session == session && h.kill.borrow().is_none() {
                    info!(key = %key, "the job's key was deleted while it ran: stopping the job");
                    let _ = h.kill.send(Some(KillReason::Removed));
                }
            }
            if !orphans.is_empty() {
                let w = Instant::now() + ORPHAN_GRACE;
                wake = Some(wake.map_or(w, |x| x.min(w)));
            }
            // Keys seen held by other sessions may have been freed by a holder that restarted
            // (the live set did not change): look again now and then while there is room.
            if free > 0 && resync_at.is_none() && !resyncing && view.held_by_others(&session) {
                resync_at = Some(Instant::now() + RESYNC_EVERY);
            }
            if let Some(t) = resync_at {
                wake = Some(wake.map_or(t, |x| x.min(t)));
            }
            let plan = book.plan(std::time::Instant::now(), &own_candidates, &busy, free);
            // While held after a lost race, the node waits for a newer listing: not saturated.
            saturated.store(
                hold.is_none() && plan.claim.len() >= free,
                Ordering::Relaxed,
            );
            if let Some(w) = plan.wake_at {
                let w = Instant::from_std(w);
                wake = Some(wake.map_or(w, |x| x.min(w)));
            }
            for key in plan.claim {
                let own = key.starts_with(&own_queue);
                if hold.is_some() && !own {
                    continue;
                }
                // Own-queue jobs come with their entry; shared ones with the one last read,
                // if it was free, else they are read first.
                let entry = if own {
                    match entries.remove(&key) {
                        Some(e) => Some(e),
                        None => continue,
                    }
                } else {
                    view.entry(&key)
                };
                let (kill_tx, kill_rx) = watch::channel(None);
                handles.insert(
                    key.clone(),
                    Handle {
                        kill: kill_tx,
                        session: session.clone(),
                    },
                );
                let ctx = ctx.clone();
                let done = done_tx.clone();
                let session = session.clone();
                let seen = book
                    .first_seen(&key)
                    .unwrap_or_else(std::time::Instant::now);
                tasks.spawn(async move {
                    // Reports on drop, so even a panicking task frees its slot.
                    let mut guard = DoneGuard {
                        done,
                        report: Some(Done {
                            key: key.clone(),
                            claimed_at: entry.as_ref().map_or(0, |e| e.modify_index),
                            claim_failed: true,
                            found: (!own).then_some(Found::NotClaimed(None)),
                            claim_end: None,
                        }),
                    };
                    let entry = match entry {
                        Some(e) => e,
                        None => match read_for_claim(&ctx, &key, &session).await {
                            Ok(e) => e,
                            Err(found) => {
                                if let Some(r) = guard.report.as_mut() {
                                    r.found = Some(found);
                                }
                                return;
                            }
                        },
                    };
                    let at = entry.modify_index;
                    let kill_seen = kill_rx.clone();
                    let (end, gone_at) =
                        claim_and_run(&ctx, entry.clone(), &session, kill_rx, seen).await;
                    if let Some(r) = guard.report.as_mut() {
                        r.claimed_at = at;
                        r.claim_failed = !matches!(end, ClaimEnd::Claimed | ClaimEnd::Fenced);
                        if !own {
                            r.claim_end = Some(end);
                            let fenced = *kill_seen.borrow() == Some(KillReason::Fenced);
                            r.found = Some(found_after(end, fenced, entry, gone_at));
                        }
                    }
                });
            }
        }
        drain(handles, done_rx, cfg.shutdown_grace, cfg.kill_grace).await;
        tasks.close();
        // A result write retries while Consul is unreachable; shutdown waits for it only so long.
        if tokio::time::timeout(Duration::from_secs(15), tasks.wait())
            .await
            .is_err()
        {
            warn!("some job results could not be written before the agent stopped");
        }
    }
}

/// Lets running jobs finish within `grace`, then kills the rest (they write a result saying so).
async fn drain(
    mut handles: HashMap<String, Handle>,
    mut done_rx: mpsc::UnboundedReceiver<Done>,
    grace: Duration,
    kill_grace: Duration,
) {
    if handles.is_empty() {
        return;
    }
    info!(jobs = handles.len(), grace = ?grace, "stopping: waiting for running jobs");
    let deadline = Instant::now() + grace;
    while !handles.is_empty() {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some(d)) => {
                handles.remove(&d.key);
            }
            Ok(None) => return,
            Err(_) => break,
        }
    }
    for (key, h) in &handles {
        warn!(key = %key, "grace period over: killing the job");
        let _ = h.kill.send(Some(KillReason::Shutdown));
    }
    let deadline = Instant::now() + kill_grace + Duration::from_secs(10);
    while !handles.is_empty() {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some(d)) => {
                handles.remove(&d.key);
            }
            _ => break,
        }
    }
}

/// Claims `entry` and, if the claim holds, runs it and writes its result. Returns how the claim
/// ended and, when a result deleted the key, the Raft index it did so at.
async fn claim_and_run(
    ctx: &Ctx,
    entry: KvPair,
    session: &str,
    kill: watch::Receiver<Option<KillReason>>,
    seen: std::time::Instant,
) -> (ClaimEnd, Option<u64>) {
    let cfg = &ctx.cfg;
    let Some(jk) = cfg.layout.parse_job_key(&entry.key) else {
        return (ClaimEnd::Changed, None);
    };
    if entry.value.len() > MAX_JOB_BYTES {
        // Too large to travel in a claim transaction (base64 in a 512 KiB body): reject it
        // without a lock. check-index makes sure exactly one node does.
        let rej = Rejection::Invalid(format!(
            "the job document is {} bytes; at most {MAX_JOB_BYTES} are accepted",
            entry.value.len()
        ));
        let mut r = rejected(&jk, &entry.value, &rej, &cfg.node, entry.lock_index + 1);
        r.command = format!("({} bytes, not shown)", entry.value.len());
        let ops = [
            TxnOp::Kv(TxnKvOp::CheckIndex {
                key: entry.key.clone(),
                index: entry.modify_index,
            }),
            TxnOp::Kv(TxnKvOp::Set {
                key: cfg.layout.result_key(&jk),
                value: encode_result(r),
                flags: 0,
            }),
            TxnOp::Kv(TxnKvOp::Delete {
                key: entry.key.clone(),
            }),
        ];
        let Ok(TxnOutcome::Committed(results)) = ctx.client.txn(&ops).await else {
            return (ClaimEnd::Changed, None);
        };
        cfg.metrics.result(Some(JobStatus::Rejected));
        return (ClaimEnd::Claimed, commit_index(&results, 1));
    }
    let ops = [
        TxnOp::Kv(TxnKvOp::CheckIndex {
            key: entry.key.clone(),
            index: entry.modify_index,
        }),
        // Flags carry the claim time (ms), so `servant show` can say "running since" for free.
        TxnOp::Kv(TxnKvOp::Lock {
            key: entry.key.clone(),
            value: entry.value.clone(),
            flags: now_ms(),
            session: session.to_string(),
        }),
    ];
    let lock_index = match ctx.client.txn(&ops).await {
        // Results come in op order: [check-index, lock]. The lock's entry has the new LockIndex.
        Ok(TxnOutcome::Committed(results)) => {
            cfg.metrics.claimed_after(seen.elapsed());
            txn_entry(&results, 1)
                .map(|kv| kv.lock_index)
                .unwrap_or(entry.lock_index + 1)
        }
        Ok(TxnOutcome::RolledBack(errs)) => {
            cfg.metrics.claim_conflict();
            debug!(key = %entry.key, errors = ?errs, "claim not taken");
            // Only the lock refused (op 1) at an unchanged index: a lock-delay.
            let end = if errs.iter().all(|e| e.op_index == 1) {
                ClaimEnd::Refused
            } else {
                ClaimEnd::Changed
            };
            return (end, None);
        }
        Err(e) => {
            // The claim may have committed even though the answer was lost: look before
            // walking away, or the job could stay locked by us with nobody running it.
            warn!(key = %entry.key, error = %e, "claim outcome unknown; reading the key back");
            match claimed_after_error(ctx, &entry.key, session).await {
                Some(lock_index) => lock_index,
                None => return (ClaimEnd::Changed, None),
            }
        }
    };
    let mut release = None;
    // Parsed, then held to this node's policy, before anything runs.
    let parsed = spec::parse_job(jk.id(), &entry.value).and_then(|mut job| {
        crate::jobs::policy::apply(&cfg.policy, &mut job, &cfg.node)?;
        Ok(job)
    });
    let result = match parsed {
        Err(rej) => Some(rejected(&jk, &entry.value, &rej, &cfg.node, lock_index)),
        Ok(job) => {
            match claim::verdict(lock_index, job.retries) {
                Verdict::Lost { attempt } => {
                    // `attempt` is the one refused; the result names the ones that ran.
                    let ran = attempt - 1;
                    let mut r = JobResult::for_job(&job, &cfg.node, ran);
                    r.status = Some(JobStatus::Lost);
                    r.exit_errors = lost_reason(ran, entry.flags, job.retries);
                    stamp_end(&mut r);
                    Some(r)
                }
                Verdict::Run { attempt } => {
                    let (r, rel) =
                        run_job(ctx, &jk, &entry.key, &job, attempt, session, kill.clone()).await;
                    release = rel;
                    r
                }
            }
        }
    };
    let end = if result.is_some() {
        ClaimEnd::Claimed
    } else {
        ClaimEnd::Fenced
    };
    let mut gone_at = None;
    if let Some(r) = result {
        info!(key = %entry.key, status = r.status_str(), attempt = r.attempt, "job finished");
        if *kill.borrow() == Some(KillReason::Removed) {
            write_stopped_result(ctx, &entry.key, &cfg.layout.result_key(&jk), r).await;
        } else {
            gone_at = write_result(
                ctx,
                &entry.key,
                &cfg.layout.result_key(&jk),
                session,
                r,
                true,
            )
            .await;
        }
    }
    // Only now, with its result written (or no longer ours to write), its container goes.
    if let Some(rel) = release {
        rel.await;
    }
    (end, gone_at)
}

/// The entry a committed transaction's `op`-th op returned (results come in op order).
fn txn_entry(results: &[TxnResult], op: usize) -> Option<&KvPair> {
    results.get(op)?.kv.as_ref()
}

/// The Raft index a committed transaction was applied at: the ModifyIndex of the entry its
/// `set_op`-th op (a set) wrote.
fn commit_index(results: &[TxnResult], set_op: usize) -> Option<u64> {
    txn_entry(results, set_op).map(|kv| kv.modify_index)
}

/// What a claim task learned of a `jobs/` key from how its claim ended; `fenced`: the worker
/// killed the job because Consul did not confirm its session.
fn found_after(end: ClaimEnd, fenced: bool, entry: KvPair, gone_at: Option<u64>) -> Found {
    match end {
        // Ran but fenced, by the worker or by its own shim at the deadline (a fence that lifted
        // within milliseconds may never reach the worker): no result was written. The key may
        // still be this session's (an orphan, given back after the grace), free again, or
        // another node's: it is read again.
        ClaimEnd::Fenced => Found::NotClaimed(None),
        ClaimEnd::Claimed if fenced => Found::NotClaimed(None),
        ClaimEnd::Claimed => Found::Claimed(gone_at),
        // Free at its index but refused: tried again with the same entry after `claim_retry`.
        ClaimEnd::Refused => Found::NotClaimed(Some(entry)),
        ClaimEnd::Changed => Found::NotClaimed(None),
    }
}

/// How a claim ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClaimEnd {
    /// Ours: it ran, or got its result (rejected, lost) without running.
    Claimed,
    /// The key changed since it was read (another node took it, it was deleted), or the
    /// outcome is unknown and the key is not ours.
    Changed,
    /// The lock was refused at an unchanged index: the lock-delay of a holder that died.
    Refused,
    /// Ours, but the job was fenced (or left running at shutdown): no result was written.
    Fenced,
}

/// Reads a `jobs/` key just before claiming it: the entry when it is free, else what was found.
async fn read_for_claim(ctx: &Ctx, key: &str, session: &str) -> Result<KvPair, Found> {
    match ctx.client.kv_get(key, &Default::default()).await {
        Ok((None, _)) => {
            debug!(key, "gone before the claim");
            Err(Found::Gone)
        }
        Ok((Some(e), _)) if e.holder().is_some() => {
            if e.holder() != Some(session) {
                debug!(key, "held by another session");
            }
            Err(Found::Held(e))
        }
        Ok((Some(e), _)) => Ok(e),
        Err(e) => {
            debug!(key, error = %e, "cannot read the job before claiming it");
            Err(Found::NotClaimed(None))
        }
    }
}

/// A whole listing of `jobs/`, values included, for the view; also puts back the folder key
/// if someone deleted it.
async fn resync(ctx: Arc<Ctx>, tx: mpsc::UnboundedSender<Vec<KvPair>>) {
    let prefix = ctx.cfg.layout.jobs_prefix();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match ctx.client.kv_list(&prefix, &Default::default()).await {
            Ok((entries, _)) => {
                if !entries.iter().any(|e| e.key == prefix) {
                    ensure_folder(&ctx.client, &prefix).await;
                }
                let _ = tx.send(entries);
                return;
            }
            Err(e) => {
                debug!(error = %e, "cannot list jobs/ yet");
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(backoff.fail()).await;
            }
        }
    }
}

/// Creates the folder key `prefix` (empty value) unless it exists.
async fn ensure_folder(client: &Client, prefix: &str) {
    if let Err(e) = client.kv_ensure(prefix, b"").await {
        debug!(key = prefix, error = %e, "cannot create the folder key");
    }
}

/// The live servants of this namespace: nodes whose `servant` service (the agent API each agent
/// registers) passes, node checks included. A blocking read of one service: it changes only when
/// a servant comes, goes or fails, unlike the session list, which every session anywhere moves.
/// Paced by the node count (`live_interval`): the changes within one pause come in one answer.
fn watch_live(
    tasks: &TaskTracker,
    client: &Client,
    cfg: &WorkerConfig,
    stop: &CancellationToken,
) -> watch::Receiver<Option<Vec<String>>> {
    let c = client.clone();
    let prefix = cfg.layout.prefix().to_string();
    let pause = |nodes: &Vec<String>| live_interval(nodes.len());
    spawn_paced(tasks, "servants", cfg.watch_wait, stop, pause, move |q| {
        let c = c.clone();
        let prefix = prefix.clone();
        async move {
            let (entries, meta) = c.health_service("servant", true, &q).await?;
            let mut nodes: Vec<String> = entries
                .into_iter()
                .filter(|e| {
                    let p = e.service["Meta"]["kv_prefix"].as_str().unwrap_or("");
                    Namespace::new(p).prefix() == prefix
                })
                .map(|e| e.node.node)
                .collect();
            nodes.sort();
            nodes.dedup();
            Ok((nodes, meta))
        }
    })
}

/// After a claim error: the key's LockIndex if our session holds it, else None. Retries the read
/// while Consul is unreachable, for up to a minute.
async fn claimed_after_error(ctx: &Ctx, key: &str, session: &str) -> Option<u64> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match ctx.client.kv_get(key, &Default::default()).await {
            Ok((Some(e), _)) if e.holder() == Some(session) => return Some(e.lock_index),
            Ok(_) => return None,
            Err(e) if Instant::now() < deadline => {
                debug!(key, error = %e, "cannot read the key back yet");
                tokio::time::sleep(backoff.fail()).await;
            }
            Err(_) => return None,
        }
    }
}

/// Why a job is `lost`: which attempts ran, when the last one was claimed (the key's flags
/// hold the claim time in ms), and that `Retries` allows no more.
fn lost_reason(ran: u64, claimed_ms: u64, retries: u32) -> String {
    let which = if ran <= 1 {
        "attempt 1".to_string()
    } else {
        format!("attempts 1 to {ran} ran; attempt {ran}")
    };
    let when = match i64::try_from(claimed_ms) {
        Ok(ms) if ms > 0 => format!(" (claimed at {})", rfc3339_ns(ms.saturating_mul(1_000_000))),
        _ => String::new(),
    };
    format!(
        "lost: {which}{when} was running when its node or agent failed; Retries {retries} allows no further attempt"
    )
}

fn rejected(jk: &JobKey, body: &[u8], rej: &Rejection, node: &str, attempt: u64) -> JobResult {
    let (name, command, no_wait) = spec::salvage(body);
    let mut r = JobResult {
        id: jk.id().to_string(),
        name,
        command,
        no_wait,
        execution_node: node.to_string(),
        status: Some(JobStatus::Rejected),
        exit_errors: format!("rejected: {rej}"),
        exit_code: -1,
        attempt,
        ..Default::default()
    };
    cap_text(&mut r.command, 64 * 1024);
    let now = now_ns();
    r.start_time = now;
    r.start_time_str = rfc3339_ns(now);
    stamp_end(&mut r);
    r
}

fn stamp_end(r: &mut JobResult) {
    let now = now_ns();
    if r.start_time == 0 {
        r.start_time = now;
        r.start_time_str = rfc3339_ns(now);
    }
    r.end_time = now;
    r.end_time_str = rfc3339_ns(now);
}

/// Runs a claimed job. Returns None when the job was fenced (its lock is no longer ours), and
/// what is left to do once the result is written.
async fn run_job(
    ctx: &Ctx,
    jk: &JobKey,
    key: &str,
    job: &JobSpec,
    attempt: u64,
    session: &str,
    kill: watch::Receiver<Option<KillReason>>,
) -> (Option<JobResult>, Option<Release>) {
    let cfg = &ctx.cfg;
    let _running = cfg.metrics.started();
    let mut r = JobResult::for_job(job, &cfg.node, attempt);
    let start = now_ns();
    r.start_time = start;
    r.start_time_str = rfc3339_ns(start);
    let secret_env = match read_secrets(&ctx.client, job).await {
        Ok(env) => env,
        Err(why) => {
            r.status = Some(JobStatus::Failed);
            r.exit_errors = why.to_string();
            stamp_end(&mut r);
            return (Some(r), None);
        }
    };
    let logs = LogPaths::for_key(&cfg.log_dir, key);
    let secrets = (!secret_env.is_empty()).then(|| {
        let red = Arc::new(Redactor::new(secret_env.iter()));
        // Before it starts, so the API never serves its log unredacted.
        cfg.secrets.insert(logs.stdout.clone(), red.clone());
        red
    });
    if secrets.is_some() {
        // Says "not redacted yet" to the next run of this agent, should this one die first.
        let names: Vec<&str> = secret_env.keys().map(String::as_str).collect();
        if let Err(e) = tokio::fs::write(unsealed_marker(&logs), names.join("\n")).await {
            warn!(key = %key, error = %e, "cannot mark the job's log as holding secrets");
        }
    }
    let run = Run {
        jk,
        key,
        job,
        session,
        registered: Vec::new(),
        logs,
        secrets,
    };
    let mut spec = launch_spec(job, &run.logs).fence(*ctx.deadline.borrow());
    spec.env.extend(secret_env);
    spec.env.extend(fencing_token(key, attempt, session));
    match &job.container {
        Some(c) => {
            let mut c = c.clone();
            c.labels.extend([
                (LABEL_NODE.to_string(), cfg.node.clone()),
                (LABEL_JOB.to_string(), key.to_string()),
                (LABEL_SESSION.to_string(), session.to_string()),
                (LABEL_ATTEMPT.to_string(), attempt.to_string()),
                (LABEL_PREFIX.to_string(), cfg.layout.prefix().to_string()),
            ]);
            r.image = Some(c.image.clone());
            let spec = spec.container(c);
            match ctx.docker_driver().await {
                Ok(d) => run_on(ctx, &d, &spec, r, run, kill).await,
                Err(e) => {
                    seal_logs(cfg, &run).await;
                    r.status = Some(JobStatus::Failed);
                    r.exit_errors = e.to_string();
                    stamp_end(&mut r);
                    (Some(r), None)
                }
            }
        }
        None => {
            let d = ProcessDriver::with_shim(cfg.shim_exe.clone());
            run_on(ctx, &d, &spec, r, run, kill).await
        }
    }
}

/// A claimed job on its way through a driver.
struct Run<'a> {
    jk: &'a JobKey,
    key: &'a str,
    job: &'a JobSpec,
    session: &'a str,
    /// Its services, registered once it started (a container's with its published ports).
    registered: Vec<String>,
    logs: LogPaths,
    /// The job's `EnvFromKV` values, redacted from its logs and result.
    secrets: Option<Arc<Redactor>>,
}

/// Why a job's `EnvFromKV` variable could not be set: it names the variable and the key, never
/// a value.
#[derive(Debug, thiserror::Error)]
#[error("EnvFromKV: cannot set {name} from KV key {key:?}: {why}; the job did not start")]
struct SecretUnavailable {
    name: String,
    key: String,
    why: SecretWhy,
}

#[derive(Debug, thiserror::Error)]
enum SecretWhy {
    #[error("no such key")]
    Missing,
    #[error("its value is not UTF-8 text")]
    NotText,
    #[error("cannot read it: {0}")]
    Read(crate::consul::ConsulError),
}

/// Reads a job's `EnvFromKV` keys with the agent's token. A key that is missing, unreadable or
/// not text is the reason the job does not start.
async fn read_secrets(
    client: &Client,
    job: &JobSpec,
) -> Result<std::collections::BTreeMap<String, String>, SecretUnavailable> {
    let mut env = std::collections::BTreeMap::new();
    for (name, path) in &job.env_from_kv {
        // A plain KV path, as `consul kv get` takes it; a leading `/` is the same key.
        let key = path.trim_start_matches('/');
        let why = match client.kv_get(key, &Default::default()).await {
            Ok((Some(e), _)) => match String::from_utf8(e.value) {
                Ok(v) => {
                    env.insert(name.clone(), v);
                    continue;
                }
                Err(_) => SecretWhy::NotText,
            },
            Ok((None, _)) => SecretWhy::Missing,
            Err(e) => SecretWhy::Read(e),
        };
        return Err(SecretUnavailable {
            name: name.clone(),
            key: key.to_string(),
            why,
        });
    }
    Ok(env)
}

/// Once a job with secrets has ended: its log files are rewritten redacted, and only then does
/// the agent API stop redacting them as it serves them. A file that cannot be rewritten is
/// emptied rather than left with the values in it.
async fn seal_logs(cfg: &WorkerConfig, run: &Run<'_>) {
    let Some(red) = run.secrets.clone() else {
        return;
    };
    let logs = run.logs.clone();
    let key = run.key.to_string();
    let _ = tokio::task::spawn_blocking(move || {
        for p in [&logs.stdout, &logs.stderr] {
            if let Err(e) = red.redact_file_blocking(p) {
                warn!(key = %key, log = %p.display(), error = %e, "cannot redact the job's log; emptying it");
                if let Ok(f) = std::fs::OpenOptions::new().write(true).open(p) {
                    let _ = f.set_len(0);
                }
            }
        }
    })
    .await;
    let _ = tokio::fs::remove_file(unsealed_marker(&run.logs)).await;
    cfg.secrets.remove(&run.logs.stdout);
}

/// Beside the logs of a job with secrets until they are redacted: the variables' names.
fn unsealed_marker(logs: &LogPaths) -> PathBuf {
    PathBuf::from(format!("{}.secrets", logs.stdout.display()))
}

/// Empties the logs an earlier run of this agent left unredacted (it died while a job with
/// `EnvFromKV` ran; its values are not known any more), leaving a line that says so.
pub async fn withhold_unsealed_logs(log_dir: &std::path::Path) {
    let Ok(mut dir) = tokio::fs::read_dir(log_dir).await else {
        return;
    };
    while let Ok(Some(e)) = dir.next_entry().await {
        let marker = e.path();
        let Some(stdout) = marker
            .to_str()
            .and_then(|m| m.strip_suffix(".secrets"))
            .map(PathBuf::from)
        else {
            continue;
        };
        let stderr = stdout.with_extension("err");
        for p in [&stdout, &stderr] {
            let note = "[log withheld: the agent stopped before it could redact this job's EnvFromKV values]\n";
            if let Err(e) = tokio::fs::write(p, note).await {
                warn!(log = %p.display(), error = %e, "cannot withhold a log with secrets");
            }
        }
        warn!(log = %stdout.display(), "withheld a job log with secrets that an earlier run did not redact");
        let _ = tokio::fs::remove_file(&marker).await;
    }
}

/// Reads at most `cap` bytes of a log, redacted. Reads a little more than the cap and cuts
/// after redacting, so a value across the cap is replaced, not shown in part.
async fn read_redacted(
    path: &std::path::Path,
    cap: usize,
    red: Option<&Redactor>,
) -> (String, bool) {
    let Some(red) = red else {
        return read_capped(path, cap).await;
    };
    let (text, cut) = read_capped(path, cap.saturating_add(red.longest())).await;
    let mut text = red.redact_str(&text);
    let cut_now = cap_text(&mut text, cap);
    (text, cut || cut_now)
}

/// Launches `spec` with `driver`, supervises it and fills in the result: the same for a process
/// and a container.
async fn run_on<D: Driver>(
    ctx: &Ctx,
    driver: &D,
    spec: &LaunchSpec,
    mut r: JobResult,
    run: Run<'_>,
    kill: watch::Receiver<Option<KillReason>>,
) -> (Option<JobResult>, Option<Release>)
where
    D::Handle: 'static,
{
    let cfg = &ctx.cfg;
    let (job, key) = (run.job, run.key);
    let mut run = run;
    let mut running = match driver.launch(spec).await {
        Ok(p) => p,
        Err(e) => {
            if let SpawnError::ImageMissing(_) = e {
                r.status = Some(JobStatus::Rejected);
                r.exit_errors = format!("rejected: {e}");
            } else {
                r.status = Some(JobStatus::Failed);
                r.exit_errors = e.to_string();
            }
            stamp_end(&mut r);
            seal_logs(cfg, &run).await;
            return (Some(r), None);
        }
    };
    let report = running.container().await;
    if let Some(c) = &report {
        r.container_id = Some(c.id.clone());
        info!(key = %key, attempt = r.attempt, container = %running.id(), "job started");
    } else {
        info!(key = %key, attempt = r.attempt, pgid = running.pid(), "job started");
    }
    // Services go up once it runs: a container's with the host side of its published ports.
    let declared = spec
        .container
        .as_ref()
        .map(|c| c.ports.clone())
        .unwrap_or_default();
    let published = report.map(|c| c.ports).unwrap_or_default();
    for s in &job.services {
        let s = published_service(s, &declared, &published);
        let reg = registration(&s, run.jk, cfg.layout.prefix());
        if let Err(e) = ctx.client.agent_service_register(&reg).await {
            deregister(ctx, &run.registered).await;
            running.stop(Signal::SIGKILL, Duration::ZERO).await;
            running.release().await;
            seal_logs(cfg, &run).await;
            r.status = Some(JobStatus::Failed);
            r.exit_errors = format!("cannot register service {:?}: {e}", s.id());
            stamp_end(&mut r);
            return (Some(r), None);
        }
        run.registered.push(s.id().to_string());
    }
    let timeout = if job.no_wait { None } else { Some(job.timeout) };
    if job.no_wait {
        let mut started = r.clone();
        started.status = Some(JobStatus::Started);
        started.pid = Some(running.pid());
        write_result(
            ctx,
            key,
            &cfg.layout.result_key(run.jk),
            run.session,
            started,
            false,
        )
        .await;
        r.pid = Some(running.pid());
    }
    let outcome = supervise(
        &mut running,
        timeout,
        kill,
        cfg.kill_grace,
        Some(ctx.deadline.clone()),
    )
    .await;
    deregister(ctx, &run.registered).await;
    stamp_end(&mut r);
    seal_logs(cfg, &run).await;
    let red = run.secrets.as_deref();
    let (out, out_cut) = read_redacted(&run.logs.stdout, cfg.output_cap, red).await;
    let (err, err_cut) = read_redacted(&run.logs.stderr, cfg.output_cap, red).await;
    r.output = out;
    r.output_errors = err;
    r.output_truncated = out_cut;
    r.output_errors_truncated = err_cut;
    let container = running.container().await;
    r.oom_killed = container.as_ref().is_some_and(|c| c.oom_killed);
    let what = if container.is_some() {
        "the container was stopped"
    } else {
        "the process group was killed"
    };
    let release: Release = Box::pin(async move { running.release().await });
    match outcome {
        Outcome::Exited { code: 0, leftovers } => {
            r.status = Some(JobStatus::Succeeded);
            r.exit_code = 0;
            r.leftover_processes = leftovers;
        }
        Outcome::Exited { code, leftovers } => {
            r.leftover_processes = leftovers;
            r.status = Some(JobStatus::Failed);
            r.exit_code = code;
            r.exit_errors = if code > 128 {
                format!("exit status {code} (signal {})", code - 128)
            } else {
                format!("exit status {code}")
            };
            if r.oom_killed {
                r.exit_errors.push_str(
                    "; killed by the OOM killer: the container went over its memory limit",
                );
            }
        }
        Outcome::TimedOut => {
            r.status = Some(JobStatus::TimedOut);
            r.exit_errors = format!("timed out after {}; {what}", go_format(job.timeout));
        }
        Outcome::Killed(KillReason::Shutdown) => {
            r.status = Some(JobStatus::Failed);
            r.exit_errors = format!(
                "killed: the agent on {} stopped before the job finished (shutdown grace {})",
                cfg.node,
                go_format(cfg.shutdown_grace)
            );
        }
        Outcome::Killed(KillReason::Fenced) => {
            cfg.metrics.fenced();
            return (None, Some(release));
        }
        Outcome::Killed(KillReason::Removed) => {
            r.status = Some(JobStatus::Failed);
            r.exit_errors = format!(
                "stopped: its job key was deleted while it ran (the dashboard's stop, or a KV delete); SIGTERM, then SIGKILL after {}",
                go_format(cfg.kill_grace)
            );
        }
        Outcome::Killed(KillReason::Detach) => return (None, Some(release)),
    }
    (Some(r), Some(release))
}

/// How a job is started: `Exec` as argv, the rest with the shell; a container with `Args`,
/// else `Command` with the image's shell, else the image's own command. Output into fresh log
/// files.
fn launch_spec(job: &JobSpec, logs: &LogPaths) -> LaunchSpec {
    let spec = match job.job_type {
        JobType::Exec => LaunchSpec::new(job.argv.clone()).env(job.env.clone()),
        JobType::Docker if !job.argv.is_empty() => {
            LaunchSpec::new(job.argv.clone()).env(job.env.clone())
        }
        JobType::Docker if job.command.trim().is_empty() => {
            LaunchSpec::new(Vec::new()).env(job.env.clone())
        }
        JobType::Docker => {
            LaunchSpec::new(vec!["/bin/sh".into(), "-c".into(), job.command.clone()])
                .env(job.env.clone())
        }
        JobType::Shell => LaunchSpec::shell(&job.command, &job.env),
    };
    spec.dir(job.dir.clone())
        .user(job.user.clone())
        .output(Output::Files {
            logs: logs.clone(),
            append: false,
        })
}

/// A job's fencing token, for its environment: the key, the lock's `LockIndex` (the attempt)
/// and the session holding it, so the job can fence its own writes elsewhere.
fn fencing_token(key: &str, attempt: u64, session: &str) -> [(String, String); 3] {
    [
        ("SERVANT_JOB_KEY".into(), key.to_string()),
        ("SERVANT_ATTEMPT".into(), attempt.to_string()),
        ("SERVANT_SESSION".into(), session.to_string()),
    ]
}

/// The agent registration of a job's service. The job key goes into the service's meta.
fn registration(s: &ServiceSpec, jk: &JobKey, prefix: &str) -> AgentServiceRegistration {
    let mut meta = std::collections::BTreeMap::new();
    meta.insert("servant_job".to_string(), jk.relative());
    meta.insert("servant_prefix".to_string(), prefix.to_string());
    AgentServiceRegistration::from_spec(s, meta)
}

/// Services of jobs registered by an earlier run of this agent (killed before it could
/// deregister them) would stay in the catalog and DNS. No job runs yet, so all of them go.
async fn deregister_leftover_services(ctx: &Ctx) {
    let services = match ctx.client.agent_services().await {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot list this node's services");
            return;
        }
    };
    let prefix = ctx.cfg.layout.prefix();
    let stale: Vec<String> = services
        .iter()
        .filter(|(_, v)| {
            v.pointer("/Meta/servant_job").is_some()
                && v.pointer("/Meta/servant_prefix").and_then(|p| p.as_str()) == Some(prefix)
        })
        .map(|(id, _)| id.clone())
        .collect();
    for id in &stale {
        info!(service = %id, "deregistering a service left by an earlier run");
    }
    deregister(ctx, &stale).await;
}

async fn deregister(ctx: &Ctx, ids: &[String]) {
    for id in ids {
        if let Err(e) = ctx.client.agent_service_deregister(id).await {
            warn!(service = %id, error = %e, "cannot deregister the job's service");
        }
    }
}

/// Shrinks the result until it fits Consul's value limit: first the echoed command (the job
/// document may be up to `MAX_JOB_BYTES`), then the output fields.
fn encode_result(mut r: JobResult) -> Vec<u8> {
    if serde_json::to_vec(&r).map(|b| b.len()).unwrap_or(0) > MAX_RESULT_BYTES
        && cap_text(&mut r.command, COMMAND_ECHO_CAP)
    {
        r.command.push_str(" [...]");
    }
    loop {
        let bytes = serde_json::to_vec(&r).unwrap_or_default();
        if bytes.len() <= MAX_RESULT_BYTES || (r.output.is_empty() && r.output_errors.is_empty()) {
            return bytes;
        }
        for (text, flag) in [
            (&mut r.output, &mut r.output_truncated),
            (&mut r.output_errors, &mut r.output_errors_truncated),
        ] {
            let half = text.len() / 2;
            if cap_text(text, half) {
                *flag = true;
            }
        }
    }
}

/// Writes a result while this node's session still holds the job's lock; `finish` also deletes
/// the job key in the same transaction. The Raft index it was written at, when it was.
async fn write_result(
    ctx: &Ctx,
    job_key: &str,
    result_key: &str,
    session: &str,
    r: JobResult,
    finish: bool,
) -> Option<u64> {
    let ops = |r: &JobResult| {
        let mut ops = vec![
            TxnOp::Kv(TxnKvOp::CheckSession {
                key: job_key.to_string(),
                session: session.to_string(),
            }),
            TxnOp::Kv(TxnKvOp::Set {
                key: result_key.to_string(),
                value: encode_result(r.clone()),
                flags: 0,
            }),
        ];
        if finish {
            ops.push(TxnOp::Kv(TxnKvOp::Delete {
                key: job_key.to_string(),
            }));
        }
        ops
    };
    let mut current = r;
    let mut stripped = false;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    // Transient errors (Consul restarting, no leader) are retried for as long as it takes: a
    // job must not stay locked without a result. Only losing the lock ends the attempts.
    loop {
        match ctx.client.txn(&ops(&current)).await {
            // Results come in op order: [check-session, set, delete].
            Ok(TxnOutcome::Committed(results)) => {
                ctx.cfg.metrics.result(current.status);
                return commit_index(&results, 1);
            }
            Ok(TxnOutcome::RolledBack(errs)) => {
                warn!(key = %job_key, errors = ?errs, "result not written: this node no longer holds the job");
                return None;
            }
            Err(e) if e.is_transient() => {
                warn!(key = %job_key, error = %e, "cannot write the result yet; retrying");
                tokio::time::sleep(backoff.fail()).await;
            }
            Err(e) if !stripped => {
                // Refused as it is (too large, or something in the output): keep the verdict,
                // drop the output, which stays in the log on this node.
                error!(key = %job_key, error = %e, "result refused; writing it without its output");
                stripped = true;
                current.exit_errors = format!(
                    "{} (result refused by consul: {e}; see `servant logs`)",
                    current.exit_errors
                )
                .trim_start()
                .to_string();
                current.output.clear();
                current.output_errors.clear();
                current.output_truncated = true;
                current.output_errors_truncated = true;
            }
            Err(e) => {
                // Nothing more this node can do (permissions, most likely); say so loudly. The
                // job stays held by this node, so `servant show` points here.
                error!(key = %job_key, error = %e, "cannot write the result");
                return None;
            }
        }
    }
}

/// Writes the result of a job stopped by deleting its key. No session check is possible on a
/// key that is gone; the key must still be absent (a job queued again under the same ID is not
/// overwritten), and the caller decided while its session held the key.
async fn write_stopped_result(ctx: &Ctx, job_key: &str, result_key: &str, r: JobResult) {
    let ops = [
        TxnOp::Kv(TxnKvOp::CheckNotExists {
            key: job_key.to_string(),
        }),
        TxnOp::Kv(TxnKvOp::Set {
            key: result_key.to_string(),
            value: encode_result(r.clone()),
            flags: 0,
        }),
    ];
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    for _ in 0..20 {
        match ctx.client.txn(&ops).await {
            Ok(TxnOutcome::Committed(_)) => {
                ctx.cfg.metrics.result(r.status);
                return;
            }
            Ok(TxnOutcome::RolledBack(_)) => {
                warn!(key = %job_key, "a stopped job's result not written: its key was queued again");
                return;
            }
            Err(e) if e.is_transient() => tokio::time::sleep(backoff.fail()).await,
            Err(e) => {
                error!(key = %job_key, error = %e, "cannot write a stopped job's result");
                return;
            }
        }
    }
}

/// Deletes results older than `result_max_age`. Each node deletes the results it wrote, and the
/// rendezvous-preferred live node deletes those of nodes that are gone.
async fn housekeeping(
    ctx: Arc<Ctx>,
    live: watch::Receiver<Option<Vec<String>>>,
    stop: CancellationToken,
) {
    let cfg = &ctx.cfg;
    let mut first = true;
    loop {
        let pause = if first {
            cfg.gc_interval.min(Duration::from_secs(60))
        } else {
            cfg.gc_interval
        };
        first = false;
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.cancelled() => return,
        }
        let live_nodes = live.borrow().clone().unwrap_or_default();
        debug!(live = ?live_nodes, "housekeeping pass");
        let (entries, _) = match ctx
            .client
            .kv_list(&cfg.layout.results_prefix(), &Default::default())
            .await
        {
            Ok(v) => v,
            Err(e) => {
                warn!(error = %e, "housekeeping: cannot list results");
                continue;
            }
        };
        let cutoff = now_ns() - cfg.result_max_age.as_nanos().min(i64::MAX as u128) as i64;
        let mut ops = Vec::new();
        for e in entries {
            let Ok(r) = serde_json::from_slice::<JobResult>(&e.value) else {
                continue;
            };
            // A `started` result whose final result never came is aged by its start.
            let age_from = if r.end_time > 0 {
                r.end_time
            } else {
                r.start_time
            };
            if age_from == 0 || age_from > cutoff {
                continue;
            }
            let mine = r.execution_node == cfg.node
                || (!live_nodes.contains(&r.execution_node)
                    && claim::preferred(&e.key, &live_nodes) == Some(cfg.node.as_str()));
            if mine {
                ops.push(TxnOp::Kv(TxnKvOp::DeleteCas {
                    key: e.key.clone(),
                    index: e.modify_index,
                }));
            }
        }
        let n = ops.len();
        for chunk in ops.chunks(64) {
            if let Err(e) = ctx.client.txn(chunk).await {
                warn!(error = %e, "housekeeping: cannot delete old results");
            }
        }
        if n > 0 {
            info!(deleted = n, "housekeeping: old results deleted");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_reads_jobs_at_most_listings_per_second() {
        assert_eq!(listing_interval(1, false), Duration::from_micros(50));
        assert_eq!(listing_interval(5, false), Duration::from_micros(250));
        assert_eq!(listing_interval(1000, false), Duration::from_millis(50));
        for n in [1usize, 20, 1000, 10_000] {
            let per_second = n as f64 / listing_interval(n, false).as_secs_f64();
            assert!((per_second - f64::from(LISTINGS_PER_SECOND)).abs() < 1.0);
        }
    }

    /// CI: a job killed by its own shim at the fence deadline, with a fence that lifted 31 ms
    /// later (before the worker saw it), counted as claimed and done; its key stayed locked by
    /// the session with no result, and nothing looked at it again.
    #[test]
    fn regression_a_job_its_shim_fenced_is_read_again_not_done() {
        let e = KvPair {
            key: "jobs/a".into(),
            create_index: 1,
            modify_index: 1,
            lock_index: 0,
            flags: 0,
            value: Vec::new(),
            session: None,
        };
        assert_eq!(
            found_after(ClaimEnd::Fenced, false, e.clone(), None),
            Found::NotClaimed(None)
        );
        assert_eq!(
            found_after(ClaimEnd::Claimed, true, e.clone(), Some(9)),
            Found::NotClaimed(None)
        );
        assert_eq!(
            found_after(ClaimEnd::Claimed, false, e.clone(), Some(9)),
            Found::Claimed(Some(9))
        );
        assert_eq!(
            found_after(ClaimEnd::Refused, false, e.clone(), None),
            Found::NotClaimed(Some(e))
        );
    }

    #[test]
    fn the_cluster_reads_the_live_set_at_most_live_reads_per_second() {
        assert_eq!(live_interval(0), Duration::from_millis(100));
        assert_eq!(live_interval(1), Duration::from_millis(100));
        assert_eq!(live_interval(20), Duration::from_secs(2));
        assert_eq!(live_interval(1000), Duration::from_secs(100));
        for n in [1usize, 20, 1000, 10_000] {
            let per_second = n as f64 / live_interval(n).as_secs_f64();
            assert!((per_second - f64::from(LIVE_READS_PER_SECOND)).abs() < 0.01);
        }
    }

    #[test]
    fn a_saturated_node_lists_at_most_every_saturated_interval() {
        assert_eq!(listing_interval(1, true), SATURATED_LISTING_INTERVAL);
        assert_eq!(listing_interval(10_000, true), Duration::from_millis(500));
    }

    /// A value across the output cap is replaced whole, not cut to its first bytes (for a log
    /// that could not be rewritten).
    #[tokio::test]
    async fn a_secret_across_the_output_cap_is_not_shown_in_part() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.out");
        std::fs::write(&p, format!("{}s3cr3t-value tail", "a".repeat(10))).unwrap();
        let red = Redactor::new([("S", "s3cr3t-value")]);
        let (text, cut) = read_redacted(&p, 14, Some(&red)).await;
        assert_eq!(text, "aaaaaaaaaa[sec");
        assert!(cut);
        let (text, cut) = read_redacted(&p, 100, Some(&red)).await;
        assert_eq!(text, "aaaaaaaaaa[secret S] tail");
        assert!(!cut);
        // Without secrets, as before.
        assert_eq!(read_redacted(&p, 14, None).await.0, "aaaaaaaaaas3cr");
    }

    #[test]
    fn a_lost_result_names_the_attempts_that_ran() {
        let one = lost_reason(1, 1_795_305_695_030, 0);
        assert!(
            one.starts_with("lost: attempt 1 (claimed at 2026-11-22T"),
            "{one}"
        );
        assert!(
            one.ends_with("Retries 0 allows no further attempt"),
            "{one}"
        );
        let three = lost_reason(3, 0, 2);
        assert!(
            three.starts_with("lost: attempts 1 to 3 ran; attempt 3 was running"),
            "{three}"
        );
    }
}
