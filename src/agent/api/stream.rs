//! `/v1/stream?view=...`: the dashboard's one event stream per page. Each event is the page's
//! whole view as JSON, sent when it differs from the last one sent; the views are computed from
//! the hub's shared snapshot, so a stream costs no Consul query of its own. A running job's
//! output is followed from its log: on this node's disk, or from its node's agent.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::hub::Snapshot;
use super::jobs::{JobFilter, JobsQuery};
use super::{apps, containers, jobs, nodes, services, triggers, ApiError, ApiState};
use crate::consul::HealthCheck;
use crate::process::{read_capped, LogPaths};
use crate::wire::{HealthStatus, JobView};

/// Changes that come together (a result write moves the job key and the result) are sent once.
const SETTLE: Duration = Duration::from_millis(30);
/// How often a running job's log and this node's containers are read again.
const FOLLOW: Duration = Duration::from_secs(1);
const CONTAINERS_EVERY: Duration = Duration::from_secs(5);
/// How much of a running job's log a page gets: its start, as the job's result will keep it.
pub const LOG_CAP: usize = 64 * 1024;

/// The views a page can follow.
#[derive(Debug, Clone, PartialEq)]
pub enum View {
    Overview,
    Jobs(JobFilter),
    Job(String),
    Apps,
    Services,
    Triggers,
    Containers,
}

/// The query of `/v1/stream`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamQuery {
    pub view: Option<String>,
    pub key: Option<String>,
    pub state: Option<String>,
    pub node: Option<String>,
    pub limit: Option<String>,
    pub offset: Option<String>,
}

impl View {
    /// Checks the query: an unknown view, a job view without its key, or a bad filter is refused.
    pub fn parse(q: &StreamQuery) -> Result<View, ApiError> {
        Ok(match q.view.as_deref().unwrap_or("") {
            "overview" => View::Overview,
            "jobs" => View::Jobs(JobFilter::parse(&JobsQuery {
                state: q.state.clone(),
                node: q.node.clone(),
                limit: q.limit.clone(),
                offset: q.offset.clone(),
            })?),
            "job" => match q.key.as_deref() {
                Some(k) if !k.is_empty() => View::Job(k.to_string()),
                _ => {
                    return Err(ApiError::BadRequest(
                        "view=job needs key=<job key>, e.g. key=jobs/job1".into(),
                    ))
                }
            },
            "apps" => View::Apps,
            "services" => View::Services,
            "triggers" => View::Triggers,
            "containers" => View::Containers,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown view {other:?}: use overview, jobs, job, apps, services, triggers or containers"
                )))
            }
        })
    }

    fn name(&self) -> &'static str {
        match self {
            View::Overview => "overview",
            View::Jobs(_) => "jobs",
            View::Job(_) => "job",
            View::Apps => "apps",
            View::Services => "services",
            View::Triggers => "triggers",
            View::Containers => "containers",
        }
    }
}

/// The overview page: nodes, job counts, app counts and failing checks.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Overview {
    /// The node of the agent serving the page.
    pub agent: String,
    pub nodes: Vec<nodes::NodeRow>,
    pub job_counts: BTreeMap<String, usize>,
    /// `healthy`, `unhealthy`, `unavailable`, `stopped` and `unplaced` replicas.
    pub app_counts: BTreeMap<String, usize>,
    pub failing_checks: Vec<HealthCheck>,
}

/// The overview from a snapshot (pure).
pub fn overview(s: &Snapshot, st: &ApiState) -> Overview {
    let apps = apps::apps_doc(&st.layout, &s.appmgr);
    let mut app_counts = crate::apps::metrics::count_states(apps.states.values());
    if let Some(sch) = &apps.schedule {
        let missing: usize = sch
            .unplaced
            .iter()
            .map(|u| u.wanted.saturating_sub(u.placed) as usize)
            .sum();
        if missing > 0 {
            app_counts.insert("unplaced".into(), missing);
        }
    }
    let mut failing: Vec<HealthCheck> = s
        .checks
        .iter()
        .filter(|c| c.status != HealthStatus::Passing)
        .cloned()
        .collect();
    failing.sort_by(|a, b| (&a.node, &a.check_id).cmp(&(&b.node, &b.check_id)));
    Overview {
        agent: st.node.clone(),
        nodes: nodes::list_of(s, &st.layout).nodes,
        job_counts: st.hub.all_jobs(s).counts.clone(),
        app_counts,
        failing_checks: failing,
    }
}

/// A running job's log so far, from this node's disk or from the agent on its node.
async fn running_output(st: &ApiState, s: &Snapshot, key: &str, node: &str) -> Value {
    // The page's stream carries no token, and with ACLs on a log needs one.
    if st.acls_on().await.unwrap_or(true) {
        return json!({ "Error": "Consul's ACLs are on: read this job's log with `servant logs` and a token that may read its key" });
    }
    let full = format!("{}{key}", st.layout.prefix());
    let ((stdout, cut_out), (stderr, cut_err)) = if node == st.node {
        // Read up to the cap, never the whole file: a page asks again every second.
        let p = LogPaths::for_key(&st.log_dir, &full);
        // A running job's secrets are redacted; a little more than the cap is read so that a
        // value across it is replaced whole, and the redactor is looked up before and after.
        let before = st.secrets.get(&p.stdout);
        let extra = before.as_ref().map_or(0, |r| r.longest());
        let out = read_capped(&p.stdout, LOG_CAP + extra).await;
        let err = read_capped(&p.stderr, LOG_CAP + extra).await;
        let red = before.or_else(|| st.secrets.get(&p.stdout));
        let redact = |(text, cut): (String, bool)| match &red {
            Some(r) => {
                let mut t =
                    String::from_utf8_lossy(&r.redact_growing(text.as_bytes())).into_owned();
                let cut_now = crate::util::cap_text(&mut t, LOG_CAP);
                (t, cut || cut_now)
            }
            None => (text, cut),
        };
        (redact(out), redact(err))
    } else {
        let Some(addr) = s.services.get("servant").and_then(|(_, list)| {
            list.iter().find(|i| i.node == node).map(|i| {
                let a = if i.service_address.is_empty() {
                    &i.address
                } else {
                    &i.service_address
                };
                format!("{a}:{}", i.service_port)
            })
        }) else {
            return json!({ "Error": format!("no servant agent registered on node {node}") });
        };
        let get = |stream: &'static str| {
            let url = format!("http://{addr}/v1/logs");
            let req = st
                .peer
                .get(url)
                .query(&[("key", full.as_str()), ("stream", stream)])
                .timeout(Duration::from_secs(5));
            async move {
                let b = match req.send().await {
                    Ok(r) if r.status().is_success() => r.bytes().await.unwrap_or_default(),
                    _ => Default::default(),
                };
                let cut = b.len() > LOG_CAP;
                (
                    String::from_utf8_lossy(&b[..b.len().min(LOG_CAP)]).into_owned(),
                    cut,
                )
            }
        };
        (get("stdout").await, get("stderr").await)
    };
    json!({ "Stdout": stdout, "Stderr": stderr, "Truncated": cut_out || cut_err })
}

/// Whether a view reads something besides the snapshot that changes by itself.
fn ticks(view: &View, last: &Value) -> Option<Duration> {
    match view {
        View::Containers => Some(CONTAINERS_EVERY),
        View::Job(_) if last["Job"]["State"] == "running" => Some(FOLLOW),
        _ => None,
    }
}

/// The view's JSON now.
pub async fn render(st: &ApiState, view: &View) -> Value {
    let s = match st.hub.snapshot().await {
        Ok(s) => s,
        Err(e) => return json!({ "Error": e.to_string() }),
    };
    let v = match view {
        View::Overview => serde_json::to_value(overview(&s, st)),
        View::Jobs(f) => serde_json::to_value(jobs::page(&st.hub.all_jobs(&s), f)),
        View::Job(key) => {
            return match jobs::show_of(&s, &st.layout, key) {
                Ok(job) => {
                    let output = match &job {
                        JobView::Running { node, .. } => running_output(st, &s, key, node).await,
                        _ => Value::Null,
                    };
                    json!({ "Job": job, "Live": output })
                }
                Err(ApiError::NotFound(why)) => json!({ "Job": null, "Error": why }),
                Err(e) => json!({ "Job": null, "Error": e.to_string() }),
            }
        }
        View::Apps => serde_json::to_value(apps::apps_doc(&st.layout, &s.appmgr)),
        View::Services => serde_json::to_value(services::list_of(&s)),
        View::Triggers => serde_json::to_value(triggers::list_of(&s, &st.layout)),
        View::Containers => {
            serde_json::to_value(containers::list_of(st, Duration::from_millis(500)).await)
        }
    };
    v.unwrap_or_else(|e| json!({ "Error": format!("cannot encode the view: {e}") }))
}

struct Follow {
    st: ApiState,
    view: View,
    version: tokio::sync::watch::Receiver<u64>,
    last: Option<String>,
    /// When to render again with no change in the cluster (following a log, sampling).
    tick: Option<Duration>,
    first: bool,
}

/// `GET /v1/stream?view=...`: one event per change of the view.
pub async fn stream(
    State(st): State<ApiState>,
    Query(q): Query<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let view = View::parse(&q)?;
    let version = st.hub.subscribe().await;
    let f = Follow {
        st,
        view,
        version,
        last: None,
        tick: None,
        first: true,
    };
    let events = futures_util::stream::unfold(f, |mut f| async move {
        loop {
            if !f.first {
                let tick = f.tick.unwrap_or(Duration::from_secs(3600));
                tokio::select! {
                    r = f.version.changed() => if r.is_err() { return None },
                    _ = tokio::time::sleep(tick) => {}
                    _ = f.st.hub.stopped() => return None,
                }
                tokio::time::sleep(SETTLE).await;
                f.version.borrow_and_update();
            }
            f.first = false;
            let value = render(&f.st, &f.view).await;
            f.tick = ticks(&f.view, &value);
            let body = value.to_string();
            if f.last.as_deref() != Some(body.as_str()) {
                let ev = Event::default().event(f.view.name()).data(body.clone());
                f.last = Some(body);
                return Some((Ok(ev), f));
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
