//! The embedded server's core: the state behind a lock, one writer thread that applies writes
//! and makes them durable in batches (group commit) before answering, blocking reads, and the
//! session expiry timer.

use std::path::Path;
use std::sync::{mpsc, Arc, RwLock};
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use super::state::{Probe, State};
use super::store::{Store, StoreError};
use crate::util::time::now_ms;

/// Writes gathered into one durable transaction at most.
const MAX_BATCH: usize = 256;

/// A write: applied to the state by the writer thread, answered after the batch is durable.
type Apply = Box<dyn FnOnce(&mut State, u64) -> Box<dyn FnOnce(Result<(), String>) + Send> + Send>;

/// The server core, cheap to clone.
#[derive(Clone)]
pub struct Core {
    inner: Arc<Inner>,
}

struct Inner {
    /// The state; writes happen only on the writer thread.
    state: RwLock<State>,
    /// Queue of the writer thread.
    writes: mpsc::Sender<Apply>,
    /// The current index, for blocking reads to wait on.
    changed: watch::Sender<u64>,
    /// This node's name.
    pub node: String,
    /// The address reported as leader and peer, and as the node's address.
    pub addr: String,
}

/// Why a write failed outside the state's own rules.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("the write could not be made durable: {0}")]
    Durability(String),
    #[error("the server is stopping")]
    Stopped,
}

impl Core {
    /// Opens the data file and starts the writer thread.
    pub fn open(path: &Path, node: &str, addr: &str) -> Result<Core, StoreError> {
        let (store, mut state) = Store::open(path, now_ms())?;
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
        let (changed, _) = watch::channel(state.index);
        let inner = Arc::new(Inner {
            state: RwLock::new(state),
            writes: tx,
            changed,
            node: node.to_string(),
            addr: addr.to_string(),
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("devserver-writer".into())
            .spawn(move || writer(rx, store, weak))
            .map_err(|e| StoreError::Write(e.to_string()))?;
        Ok(Core { inner })
    }

    pub fn node(&self) -> &str {
        &self.inner.node
    }

    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// Reads the state.
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        let st = self.inner.state.read().unwrap_or_else(|p| p.into_inner());
        f(&st)
    }

    /// Applies a write and answers once it is durable.
    pub async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut State, u64) -> T + Send + 'static,
    ) -> Result<T, CoreError> {
        let (tx, rx) = oneshot::channel::<Result<T, String>>();
        let apply: Apply = Box::new(move |st, now| {
            let out = f(st, now);
            Box::new(move |durable: Result<(), String>| {
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
        let mut rx = self.inner.changed.subscribe();
        loop {
            let (idx, v) = self.read(&f);
            if min_index == 0 || idx > min_index || tokio::time::Instant::now() >= deadline {
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
            let due = self.read(|st| st.next_expiry().is_some_and(|t| t <= now_ms()));
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
            let probes: Vec<(String, Probe)> = self.read(|st| {
                st.checks
                    .values()
                    .filter_map(|c| c.probe.clone().map(|p| (c.id.clone(), p)))
                    .collect()
            });
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
async fn probe(http: &reqwest::Client, p: &Probe) -> (&'static str, String) {
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
            Err(e) => ("critical", format!("Get {:?}: {e}", p.target)),
        }
    } else {
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&p.target)).await {
            Ok(Ok(_)) => ("passing", format!("TCP connect {}: Success", p.target)),
            Ok(Err(e)) => ("critical", format!("dial tcp {}: {e}", p.target)),
            Err(_) => ("critical", format!("dial tcp {}: i/o timeout", p.target)),
        }
    }
}

/// The writer thread: take one write, gather what else is queued, apply all, persist once, then
/// answer all and wake the blocking reads.
fn writer(rx: mpsc::Receiver<Apply>, store: Store, inner: std::sync::Weak<Inner>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(a) => batch.push(a),
                Err(_) => break,
            }
        }
        let Some(inner) = inner.upgrade() else { return };
        let (done, durable, index) = {
            let mut st = inner.state.write().unwrap_or_else(|p| p.into_inner());
            let now = now_ms();
            let done: Vec<_> = batch.into_iter().map(|a| a(&mut st, now)).collect();
            let durable = store.persist(&mut st).map_err(|e| e.to_string());
            (done, durable, st.index)
        };
        let failed = durable.is_err();
        for d in done {
            d(durable.clone());
        }
        if failed {
            // Memory is now ahead of the disk: take no more writes (they would be answered as
            // durable on top of one that is not). A restart reloads what is on disk.
            tracing::error!(
                "the embedded server cannot write its data file; it takes no more writes"
            );
            return;
        }
        inner.changed.send_replace(index);
    }
}
