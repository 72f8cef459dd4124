//! The embedded server's core: the state behind a lock; a writer thread that applies writes in
//! batches and appends each batch to the log; a sync thread that makes the appended batches
//! durable (group commit) and only then answers their writes; blocking reads; the session
//! expiry timer.
//!
//! The two threads form a pipeline: the next batch is applied while the previous one is being
//! synced. So that no client ever sees a write that is not durable, every read notes the last
//! batch applied when it read and answers only once that batch is durable.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use tokio::sync::{oneshot, watch, RwLock};

use super::state::{Probe, State};
use super::store::{Store, StoreError};
use crate::util::time::now_ms;
use crate::wire::HealthStatus;

/// Writes gathered into one durable transaction at most.
const MAX_BATCH: usize = 256;

/// The answer to one write, given whether its batch became durable.
type Answer = Box<dyn FnOnce(Result<(), DurabilityError>) + Send>;
/// A write: applied to the state by the writer thread, answered after the batch is durable.
type Apply = Box<dyn FnOnce(&mut State, u64) -> Answer + Send>;

/// The server core, cheap to clone.
#[derive(Clone)]
pub struct Core {
    inner: Arc<Inner>,
}

struct Inner {
    /// The state; writes happen only on the writer thread, which holds the lock while a batch
    /// is made durable (reads never see a write that is not). An async lock: a read waiting
    /// for that fsync yields its worker thread to other requests instead of blocking it.
    state: RwLock<State>,
    /// Queue of the writer thread.
    writes: mpsc::Sender<Apply>,
    /// Number of the last batch applied to `state`; set under its write lock.
    applied: AtomicU64,
    /// Number of the last batch that is durable: reads wait on it, blocking reads wake on it.
    /// `u64::MAX` once the log cannot be synced (the server then takes no more writes).
    durable: watch::Sender<u64>,
    /// Set when the data files cannot be written: writes are refused from then on.
    failed: AtomicBool,
    /// This node's name.
    pub node: String,
    /// The address reported as leader and peer, and as the node's address.
    pub addr: String,
}

/// Why a batch of writes is not durable: the same cause for every write in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DurabilityError {
    #[error(transparent)]
    Store(Arc<StoreError>),
    #[error("write-ahead log: {0}")]
    Sync(Arc<std::io::Error>),
}

/// Why a write failed outside the state's own rules.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("the write could not be made durable: {0}")]
    Durability(DurabilityError),
    #[error("the server is stopping")]
    Stopped,
}

impl Core {
    /// Opens the data file and starts the writer thread.
    pub fn open(path: &Path, node: &str, addr: &str) -> Result<Core, StoreError> {
        let (mut store, mut state) = Store::open(path, now_ms())?;
        // A session naming a check that is gone (a data file from before checks were kept)
        // cannot be held to it: it ends now and releases its locks.
        let orphaned: Vec<String> = state
            .sessions
            .values()
            .filter(|s| {
                s.checks
                    .iter()
                    .any(|c| c != "serfHealth" && !state.checks.contains_key(c))
            })
            .map(|s| s.id.clone())
            .collect();
        for id in &orphaned {
            state.session_destroy(id, now_ms());
        }
        state.catalog_index = state.index;
        state.sessions_index = state.index;
        if !orphaned.is_empty() {
            store.persist(&mut state)?;
        }
        let (tx, rx) = mpsc::channel::<Apply>();
        let (durable, _) = watch::channel(0);
        let sync_file = store.sync_handle()?;
        let inner = Arc::new(Inner {
            state: RwLock::new(state),
            writes: tx,
            applied: AtomicU64::new(0),
            durable,
            failed: AtomicBool::new(false),
            node: node.to_string(),
            addr: addr.to_string(),
        });
        let (sync_tx, sync_rx) = mpsc::channel::<Applied>();
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("devserver-writer".into())
            .spawn(move || writer(rx, store, weak, sync_tx))
            .map_err(|e| StoreError::Write(e.to_string()))?;
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("devserver-sync".into())
            .spawn(move || syncer(sync_rx, sync_file, weak))
            .map_err(|e| StoreError::Write(e.to_string()))?;
        Ok(Core { inner })
    }

    pub fn node(&self) -> &str {
        &self.inner.node
    }

    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// Reads the state; answers once everything the read saw is durable.
    pub async fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        let (batch, out) = self.read_now(f).await;
        self.durable_through(batch).await;
        out
    }

    /// Reads the state as it is, durable or not: the last batch applied and `f`'s result.
    async fn read_now<T>(&self, f: impl FnOnce(&State) -> T) -> (u64, T) {
        let st = self.inner.state.read().await;
        (self.inner.applied.load(Ordering::Acquire), f(&st))
    }

    /// Waits until batch `n` is durable.
    async fn durable_through(&self, n: u64) {
        let mut rx = self.inner.durable.subscribe();
        let _ = rx.wait_for(|d| *d >= n).await;
    }

    /// Applies a write and answers once it is durable.
    pub async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut State, u64) -> T + Send + 'static,
    ) -> Result<T, CoreError> {
        let (tx, rx) = oneshot::channel::<Result<T, DurabilityError>>();
        let apply: Apply = Box::new(move |st, now| {
            let out = f(st, now);
            Box::new(move |durable: Result<(), DurabilityError>| {
                let _ = tx.send(durable.map(|_| out));
            })
        });
        self.inner
            .writes
            .send(apply)
            .map_err(|_| CoreError::Stopped)?;
        match rx.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(CoreError::Durability(e)),
            Err(_) => Err(CoreError::Stopped),
        }
    }

    /// A blocking read: answers at once when `min_index` is 0 or the result's index is past it,
    /// else when it moves past it or `wait` runs out.
    pub async fn block<T>(
        &self,
        min_index: u64,
        wait: Duration,
        f: impl Fn(&State) -> (u64, T),
    ) -> (u64, T) {
        let deadline = tokio::time::Instant::now() + wait;
        let mut rx = self.inner.durable.subscribe();
        loop {
            rx.borrow_and_update();
            let (batch, (idx, v)) = self.read_now(&f).await;
            if min_index == 0 || idx > min_index || tokio::time::Instant::now() >= deadline {
                self.durable_through(batch).await;
                return (idx, v);
            }
            tokio::select! {
                r = rx.changed() => { if r.is_err() { return (idx, v); } }
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// Expires TTL sessions and TTL checks when due; runs until the core is dropped.
    pub async fn run_expiry(self) {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let due = self
                .read(|st| st.next_expiry().is_some_and(|t| t <= now_ms()))
                .await;
            if due
                && self
                    .write(|st, now| {
                        st.expire_sessions(now);
                        st.expire_checks(now);
                    })
                    .await
                    .is_err()
            {
                return;
            }
        }
    }
}

impl Core {
    /// Runs the HTTP and TCP checks registered on the agent at their intervals, as Consul's
    /// agent does, and records each verdict. Runs until the task is aborted.
    pub async fn run_probes(self) {
        let http = match reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::limited(10))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the HTTP client of the check runner");
                return;
            }
        };
        let mut next: std::collections::HashMap<String, tokio::time::Instant> =
            std::collections::HashMap::new();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let probes: Vec<(String, Probe)> = self
                .read(|st| {
                    st.checks
                        .values()
                        .filter_map(|c| c.probe.clone().map(|p| (c.id.clone(), p)))
                        .collect()
                })
                .await;
            next.retain(|id, _| probes.iter().any(|(p, _)| p == id));
            let now = tokio::time::Instant::now();
            for (id, p) in probes {
                if next.get(&id).is_some_and(|t| *t > now) {
                    continue;
                }
                next.insert(id.clone(), now + Duration::from_millis(p.interval_ms));
                let core = self.clone();
                let http = http.clone();
                tokio::spawn(async move {
                    let (status, output) = probe(&http, &p).await;
                    let _ = core
                        .write(move |st, now| st.check_update(&id, status, Some(output), now))
                        .await;
                });
            }
        }
    }
}

/// One run of a probe: Consul's status and output text.
async fn probe(http: &reqwest::Client, p: &Probe) -> (HealthStatus, String) {
    let timeout = Duration::from_millis(p.timeout_ms);
    if p.http {
        match http.get(&p.target).timeout(timeout).send().await {
            Ok(r) => {
                let code = r.status();
                let body = r.text().await.unwrap_or_default();
                let body: String = body.chars().take(4096).collect();
                (
                    Probe::http_status(code.as_u16()),
                    format!("HTTP GET {}: {} Output: {body}", p.target, code),
                )
            }
            Err(e) => (HealthStatus::Critical, format!("Get {:?}: {e}", p.target)),
        }
    } else {
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&p.target)).await {
            Ok(Ok(_)) => (
                HealthStatus::Passing,
                format!("TCP connect {}: Success", p.target),
            ),
            Ok(Err(e)) => (
                HealthStatus::Critical,
                format!("dial tcp {}: {e}", p.target),
            ),
            Err(_) => (
                HealthStatus::Critical,
                format!("dial tcp {}: i/o timeout", p.target),
            ),
        }
    }
}

/// A batch applied and written to the log, waiting for the sync: its answers.
struct Applied {
    /// The batch's number.
    n: u64,
    /// Answers to the batch's writes, given the outcome of the sync.
    answers: Vec<Answer>,
    /// Set when the batch could not be written: it is answered with this error.
    failed: Option<DurabilityError>,
}

/// The writer thread: take one write, gather what else is queued, apply all, write the batch
/// to the log, and pass the answers to the sync thread.
fn writer(
    rx: mpsc::Receiver<Apply>,
    mut store: Store,
    inner: std::sync::Weak<Inner>,
    sync: mpsc::Sender<Applied>,
) {
    let mut n = 0;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(a) => batch.push(a),
                Err(_) => break,
            }
        }
        let Some(inner) = inner.upgrade() else { return };
        if inner.failed.load(Ordering::Acquire) {
            // The sync failed: stop. Writes not applied are dropped unanswered, which their
            // callers see as `CoreError::Stopped`; later ones cannot be queued.
            return;
        }
        n += 1;
        let (answers, written) = {
            let mut st = inner.state.blocking_write();
            let now = now_ms();
            let answers: Vec<_> = batch.into_iter().map(|a| a(&mut st, now)).collect();
            let written = store
                .write(&mut st)
                .map_err(|e| DurabilityError::Store(Arc::new(e)));
            inner.applied.store(n, Ordering::Release);
            (answers, written)
        };
        let failed = written.err();
        if failed.is_some() {
            // Memory is now ahead of the disk: take no more writes (they would be answered as
            // durable on top of one that is not). A restart reloads what is on disk.
            inner.failed.store(true, Ordering::Release);
            tracing::error!(
                "the embedded server cannot write its data file; it takes no more writes"
            );
        }
        let stop = failed.is_some();
        if sync.send(Applied { n, answers, failed }).is_err() || stop {
            return;
        }
    }
}

/// The sync thread: take the batches written so far, sync the log once, answer them all and
/// wake the reads waiting for them.
fn syncer(rx: mpsc::Receiver<Applied>, file: std::fs::File, inner: std::sync::Weak<Inner>) {
    while let Ok(first) = rx.recv() {
        let mut batches = vec![first];
        while let Ok(b) = rx.try_recv() {
            batches.push(b);
        }
        let synced = file
            .sync_data()
            .map_err(|e| DurabilityError::Sync(Arc::new(e)));
        let Some(inner) = inner.upgrade() else { return };
        let mut last = 0;
        let mut ok = synced.is_ok();
        for b in batches {
            last = b.n;
            let outcome = match (&synced, &b.failed) {
                (Err(e), _) | (_, Some(e)) => {
                    ok = false;
                    Err(e.clone())
                }
                (Ok(()), None) => Ok(()),
            };
            for a in b.answers {
                a(outcome.clone());
            }
        }
        if !ok {
            tracing::error!(
                "the embedded server cannot make its writes durable; it takes no more writes"
            );
            inner.failed.store(true, Ordering::Release);
            // Reads must not wait for a sync that will never come.
            inner.durable.send_replace(u64::MAX);
            return;
        }
        inner.durable.send_replace(last);
    }
}
