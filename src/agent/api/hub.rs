//! The cluster as the JSON API and the dashboard see it: one set of blocking watches per agent,
//! shared by every request and every open page.
//!
//! Nomad's UI holds one watch per row and per page, and runs out of the browser's connections.
//! Here a page holds one event stream, and every stream and every `/v1/` read takes its data from
//! the same handful of watches, so a hundred pages cost Consul what one costs. The watches start
//! at the first read and stop when no page has been open and no read came for `IDLE_STOP`, so an
//! agent nobody looks at holds none (issue 15 counts every blocking query per node).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Mutex};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::jobs::AllJobs;
use super::ApiError;
use crate::consul::spawn_watch;
use crate::consul::{
    CatalogNode, CatalogService, Client, ConsulError, HealthCheck, KvPair, QueryMeta, QueryOptions,
    SessionEntry,
};
use crate::wire::Namespace;

/// How long a blocking read of the hub waits.
const WAIT: Duration = Duration::from_secs(300);
/// How long a read waits for the first answers after the watches start.
const FIRST_ANSWER: Duration = Duration::from_secs(10);
/// With no open stream and no read for this long, the watches stop.
pub const IDLE_STOP: Duration = Duration::from_secs(300);

/// Service name → (tags, instances), from the catalog.
pub type ServiceCatalog = BTreeMap<String, (Vec<String>, Vec<CatalogService>)>;

type Feed<T> = watch::Receiver<Option<Arc<T>>>;

/// The latest answer of every watch; cheap to clone (every part is shared).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// `jobs/` entries (the cluster-wide queue).
    pub jobs: Arc<Vec<KvPair>>,
    /// `queues/` entries (per-node queues).
    pub queues: Arc<Vec<KvPair>>,
    /// `jdone_jid/` results.
    pub results: Arc<Vec<KvPair>>,
    pub sessions: Arc<Vec<SessionEntry>>,
    pub nodes: Arc<Vec<CatalogNode>>,
    /// Every check of the cluster (`/v1/health/state/any`).
    pub checks: Arc<Vec<HealthCheck>>,
    /// Everything under `appmgr/`.
    pub appmgr: Arc<Vec<KvPair>>,
    /// Everything under `trigger_history/`.
    pub triggers: Arc<Vec<KvPair>>,
    pub services: Arc<ServiceCatalog>,
}

#[derive(Clone)]
struct Feeds {
    jobs: Feed<Vec<KvPair>>,
    queues: Feed<Vec<KvPair>>,
    results: Feed<Vec<KvPair>>,
    sessions: Feed<Vec<SessionEntry>>,
    nodes: Feed<Vec<CatalogNode>>,
    checks: Feed<Vec<HealthCheck>>,
    appmgr: Feed<Vec<KvPair>>,
    triggers: Feed<Vec<KvPair>>,
    services: Feed<ServiceCatalog>,
    stop: CancellationToken,
}

fn latest<T>(f: &Feed<T>) -> Option<Arc<T>> {
    f.borrow().clone()
}

impl Feeds {
    /// The snapshot, or the names of the watches that have not answered yet.
    fn snapshot(&self) -> Result<Snapshot, Vec<&'static str>> {
        let mut missing = Vec::new();
        macro_rules! take {
            ($f:ident) => {
                match latest(&self.$f) {
                    Some(v) => v,
                    None => {
                        missing.push(stringify!($f));
                        Default::default()
                    }
                }
            };
        }
        let s = Snapshot {
            jobs: take!(jobs),
            queues: take!(queues),
            results: take!(results),
            sessions: take!(sessions),
            nodes: take!(nodes),
            checks: take!(checks),
            appmgr: take!(appmgr),
            triggers: take!(triggers),
            services: take!(services),
        };
        if missing.is_empty() {
            Ok(s)
        } else {
            Err(missing)
        }
    }

    /// Resolves when any feed publishes a new answer, or when the feeds stop.
    async fn changed(&mut self) -> bool {
        tokio::select! {
            r = self.jobs.changed() => r.is_ok(),
            r = self.queues.changed() => r.is_ok(),
            r = self.results.changed() => r.is_ok(),
            r = self.sessions.changed() => r.is_ok(),
            r = self.nodes.changed() => r.is_ok(),
            r = self.checks.changed() => r.is_ok(),
            r = self.appmgr.changed() => r.is_ok(),
            r = self.triggers.changed() => r.is_ok(),
            r = self.services.changed() => r.is_ok(),
        }
    }
}

/// A feed: `fetch` (given a client and each request's options) followed by `spawn_watch`, its
/// answers shared behind an `Arc`, so every reader shares one copy.
fn follow<T, F, Fut>(
    tracker: &TaskTracker,
    stop: &CancellationToken,
    client: &Client,
    what: &'static str,
    fetch: F,
) -> Feed<T>
where
    T: PartialEq + Send + Sync + 'static,
    F: Fn(Client, QueryOptions) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(T, QueryMeta), ConsulError>> + Send + 'static,
{
    let c = client.clone();
    spawn_watch(
        tracker,
        what,
        WAIT,
        move |q| {
            let answer = fetch(c.clone(), q);
            async move { answer.await.map(|(v, m)| (Arc::new(v), m)) }
        },
        stop,
    )
}

/// The service catalog: names (blocking on the services table, which moves when a service
/// registers or leaves, not when a check changes), then each service's instances. Health comes
/// from the checks watch, so a flapping check re-reads nothing here.
async fn service_catalog(
    c: &Client,
    q: &QueryOptions,
) -> Result<(ServiceCatalog, QueryMeta), ConsulError> {
    let (names, meta) = c.catalog_services(q).await?;
    let mut out = ServiceCatalog::new();
    for (name, tags) in names {
        let (instances, _) = c
            .catalog_service(&name, None, &QueryOptions::default())
            .await?;
        out.insert(name, (tags, instances));
    }
    Ok((out, meta))
}

struct Inner {
    client: Client,
    layout: Namespace,
    tracker: TaskTracker,
    /// The agent API's shutdown.
    stop: CancellationToken,
    feeds: Mutex<Option<Feeds>>,
    last_read: std::sync::Mutex<Instant>,
    /// Bumped on every change of any feed; streams wait on it.
    version: watch::Sender<u64>,
    /// The last `AllJobs` and the answers it was built from (kept alive, so a pointer match
    /// means the same answer).
    jobs_memo: std::sync::Mutex<Option<JobsMemo>>,
}

struct JobsMemo {
    from: [Arc<Vec<KvPair>>; 3],
    sessions: Arc<Vec<SessionEntry>>,
    all: Arc<AllJobs>,
}

impl JobsMemo {
    fn of(&self, s: &Snapshot) -> Option<Arc<AllJobs>> {
        let same = Arc::ptr_eq(&self.from[0], &s.jobs)
            && Arc::ptr_eq(&self.from[1], &s.queues)
            && Arc::ptr_eq(&self.from[2], &s.results)
            && Arc::ptr_eq(&self.sessions, &s.sessions);
        same.then(|| self.all.clone())
    }
}

/// The shared watches; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl Hub {
    /// A hub on `tracker`, stopped by `stop`; no watch starts before the first read.
    pub fn new(
        client: Client,
        layout: Namespace,
        tracker: TaskTracker,
        stop: CancellationToken,
    ) -> Hub {
        let (version, _) = watch::channel(0);
        let hub = Hub {
            inner: Arc::new(Inner {
                client,
                layout,
                tracker,
                stop,
                feeds: Mutex::new(None),
                last_read: std::sync::Mutex::new(Instant::now()),
                version,
                jobs_memo: std::sync::Mutex::new(None),
            }),
        };
        let reaper = hub.clone();
        hub.inner.tracker.spawn(async move { reaper.reap().await });
        hub
    }

    /// Stops the watches after `IDLE_STOP` with no stream open and no read.
    async fn reap(self) {
        let tick = IDLE_STOP / 10;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = self.inner.stop.cancelled() => return,
            }
            let idle = self
                .inner
                .last_read
                .lock()
                .map(|t| t.elapsed() >= IDLE_STOP)
                .unwrap_or(false);
            if idle && self.inner.version.receiver_count() == 0 {
                if let Some(f) = self.inner.feeds.lock().await.take() {
                    tracing::debug!("no page open: the dashboard's watches stop");
                    f.stop.cancel();
                    if let Ok(mut m) = self.inner.jobs_memo.lock() {
                        *m = None;
                    }
                }
            }
        }
    }

    fn touch(&self) {
        if let Ok(mut t) = self.inner.last_read.lock() {
            *t = Instant::now();
        }
    }

    /// Whether the watches run now (the benchmark and the tests read it).
    pub async fn running(&self) -> bool {
        self.inner.feeds.lock().await.is_some()
    }

    async fn feeds(&self) -> Feeds {
        let mut slot = self.inner.feeds.lock().await;
        if let Some(f) = slot.as_ref() {
            return f.clone();
        }
        let f = self.start();
        *slot = Some(f.clone());
        f
    }

    fn start(&self) -> Feeds {
        let i = &self.inner;
        let stop = i.stop.child_token();
        let t = &i.tracker;
        let kv = |what: &'static str, prefix: String| {
            follow(t, &stop, &i.client, what, move |c, q| {
                let p = prefix.clone();
                async move { c.kv_list(&p, &q).await }
            })
        };
        let prefix = i.layout.prefix().to_string();
        let jobs = kv("dashboard jobs", i.layout.jobs_prefix());
        let queues = kv("dashboard queues", format!("{prefix}queues/"));
        let results = kv("dashboard results", i.layout.results_prefix());
        let appmgr = kv("dashboard apps", format!("{prefix}appmgr/"));
        let triggers = kv("dashboard triggers", format!("{prefix}trigger_history/"));
        let sessions = follow(
            t,
            &stop,
            &i.client,
            "dashboard sessions",
            |c, q| async move { c.session_list(&q).await },
        );
        let nodes = follow(t, &stop, &i.client, "dashboard nodes", |c, q| async move {
            c.catalog_nodes(&q).await
        });
        let checks = follow(t, &stop, &i.client, "dashboard checks", |c, q| async move {
            c.health_state("any", &q).await
        });
        let services = follow(
            t,
            &stop,
            &i.client,
            "dashboard services",
            |c, q| async move { service_catalog(&c, &q).await },
        );
        let feeds = Feeds {
            jobs,
            queues,
            results,
            sessions,
            nodes,
            checks,
            appmgr,
            triggers,
            services,
            stop: stop.clone(),
        };
        // One task turns any feed's change into a new version for the streams.
        let mut f = feeds.clone();
        let version = i.version.clone();
        t.spawn(async move {
            loop {
                tokio::select! {
                    alive = f.changed() => if !alive { return },
                    _ = stop.cancelled() => return,
                }
                version.send_modify(|v| *v += 1);
            }
        });
        feeds
    }

    /// The latest snapshot; starts the watches if they are not running and waits for their
    /// first answers.
    pub async fn snapshot(&self) -> Result<Snapshot, ApiError> {
        self.touch();
        let feeds = self.feeds().await;
        let deadline = tokio::time::Instant::now() + FIRST_ANSWER;
        let mut version = self.inner.version.subscribe();
        loop {
            match feeds.snapshot() {
                Ok(s) => return Ok(s),
                Err(missing) => {
                    let woke = tokio::time::timeout_at(deadline, version.changed()).await;
                    if woke.is_err() || feeds.stop.is_cancelled() {
                        return Err(ApiError::Unavailable(format!(
                            "no answer from Consul yet for the agent's watches of {}",
                            missing.join(", ")
                        )));
                    }
                }
            }
        }
    }

    /// A receiver that changes whenever the cluster does; holding it keeps the watches running.
    pub async fn subscribe(&self) -> watch::Receiver<u64> {
        self.touch();
        self.feeds().await;
        self.inner.version.subscribe()
    }

    /// Every job of `s`, built once per change however many pages and requests ask: with 20
    /// pages open each change would otherwise parse every result 20 times.
    pub fn all_jobs(&self, s: &Snapshot) -> Arc<AllJobs> {
        if let Some(hit) = self
            .inner
            .jobs_memo
            .lock()
            .ok()
            .and_then(|m| m.as_ref().and_then(|m| m.of(s)))
        {
            return hit;
        }
        let all = Arc::new(super::jobs::all_of(s, &self.inner.layout));
        if let Ok(mut m) = self.inner.jobs_memo.lock() {
            *m = Some(JobsMemo {
                from: [s.jobs.clone(), s.queues.clone(), s.results.clone()],
                sessions: s.sessions.clone(),
                all: all.clone(),
            });
        }
        all
    }

    /// Resolves when the agent API stops: every open stream ends then, so the server's
    /// graceful shutdown does not wait on pages.
    pub async fn stopped(&self) {
        self.inner.stop.cancelled().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jobs_memo_answers_only_for_the_very_answers_it_was_built_from() {
        let s = Snapshot::default();
        let memo = JobsMemo {
            from: [s.jobs.clone(), s.queues.clone(), s.results.clone()],
            sessions: s.sessions.clone(),
            all: Arc::new(AllJobs::default()),
        };
        assert!(memo.of(&s).is_some(), "the same snapshot");
        assert!(memo.of(&s.clone()).is_some(), "a clone shares its answers");
        // A new answer, even an equal one, is another Arc: built again.
        let mut newer = s.clone();
        newer.results = Arc::new(Vec::new());
        assert!(memo.of(&newer).is_none());
        let mut moved = s.clone();
        moved.sessions = Arc::new(Vec::new());
        assert!(
            memo.of(&moved).is_none(),
            "a holder's node may have changed"
        );
    }
}
