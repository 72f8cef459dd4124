//! `/v1/jobs` and `/v1/jobs/<key>`: the cluster's jobs from KV, answered by any agent.
//! The shaping (entries, results and session holders into rows, the filters) is pure; the
//! handlers only read Consul.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::hub::Snapshot;
use super::{ApiError, ApiState};
use crate::consul::KvPair;
use crate::wire::{JobKey, JobResult, JobStatus, JobView, Namespace};

/// The rows `/v1/jobs` returns when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;
/// The most rows one answer may hold, so a caller cannot make the agent build a huge answer.
pub const MAX_LIMIT: usize = 10_000;

/// The states `?state=` accepts: a job's live states and every result status.
const STATES: [&str; 8] = [
    "queued",
    "running",
    "succeeded",
    "failed",
    "timed_out",
    "rejected",
    "lost",
    "started",
];

/// The query of `/v1/jobs`, as received.
#[derive(Debug, Default, Deserialize)]
pub struct JobsQuery {
    pub state: Option<String>,
    pub node: Option<String>,
    pub limit: Option<String>,
    /// Rows to skip first (paging).
    pub offset: Option<String>,
}

/// A checked `/v1/jobs` query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFilter {
    pub state: Option<String>,
    pub node: Option<String>,
    pub limit: usize,
    pub offset: usize,
}

impl JobFilter {
    /// Checks the query: an unknown state or a limit that is not a number is refused, naming it.
    pub fn parse(q: &JobsQuery) -> Result<JobFilter, ApiError> {
        let state = match q.state.as_deref() {
            None | Some("") => None,
            Some(s) if STATES.contains(&s) => Some(s.to_string()),
            Some(s) => {
                return Err(ApiError::BadRequest(format!(
                    "unknown state {s:?}: use one of {}",
                    STATES.join(", ")
                )))
            }
        };
        let limit = match q.limit.as_deref() {
            None | Some("") => DEFAULT_LIMIT,
            Some(l) => match l.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(ApiError::BadRequest(format!(
                        "bad limit {l:?}: a number from 1 to {MAX_LIMIT}"
                    )))
                }
            },
        };
        let offset = match q.offset.as_deref() {
            None | Some("") => 0,
            Some(o) => o.parse::<usize>().map_err(|_| {
                ApiError::BadRequest(format!("bad offset {o:?}: a number of rows to skip"))
            })?,
        };
        Ok(JobFilter {
            state,
            node: q.node.clone().filter(|n| !n.is_empty()),
            limit,
            offset,
        })
    }

    fn keeps(&self, row: &JobRow) -> bool {
        self.state.as_deref().is_none_or(|s| row.state == s)
            && self
                .node
                .as_deref()
                .is_none_or(|n| row.node.as_deref() == Some(n))
    }
}

/// One job in the `/v1/jobs` list (the output is left to `/v1/jobs/<key>`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct JobRow {
    /// The job key relative to the `kv_prefix`, e.g. `jobs/job1`, the `<key>` of `/v1/jobs/<key>`.
    pub key: String,
    /// `queued`, `running`, or the result's status.
    pub state: String,
    /// Queued on a node's queue: that node; running: the holder's node; done: where it ran.
    pub node: Option<String>,
    /// Attempts so far (the job key's `LockIndex`, or the result's `Attempt`).
    pub attempt: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// When it was claimed (running) or ended (done), RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
}

/// The answer of `/v1/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct JobList {
    pub jobs: Vec<JobRow>,
    /// Rows that matched the filter after `offset` but were left out by `limit`.
    pub left_off: usize,
    /// Rows that matched the filter, in all.
    pub total: usize,
    /// The rows skipped before the first one listed.
    pub offset: usize,
    /// Jobs by state, whatever the filter: `queued`, `running` and each result status.
    pub counts: BTreeMap<String, usize>,
    /// Result keys whose value is not a job result (listed here, not dropped silently).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<String>,
}

/// Session ID → node, from Consul's session list.
pub type Holders = HashMap<String, String>;

fn row_of_entry(layout: &Namespace, e: &KvPair, holders: &Holders) -> Option<JobRow> {
    let jk = layout.parse_job_key(&e.key)?;
    let key = jk.relative();
    let view = match e.holder() {
        // A holder whose session is gone is named by its session, as `servant show` does.
        Some(sid) => {
            let node = holders
                .get(sid)
                .cloned()
                .unwrap_or_else(|| format!("session {sid}"));
            JobView::from_entry(&key, e.lock_index, e.flags, Some(&node))
        }
        None => JobView::from_entry(&key, e.lock_index, e.flags, None),
    };
    Some(match view {
        JobView::Running {
            node,
            since,
            attempt,
            ..
        } => JobRow {
            key,
            state: "running".into(),
            node: Some(node),
            attempt,
            exit_code: None,
            time: Some(since),
        },
        _ => JobRow {
            node: match &jk {
                JobKey::Node { node, .. } => Some(node.clone()),
                JobKey::Any { .. } => None,
            },
            key,
            state: "queued".into(),
            attempt: e.lock_index,
            exit_code: None,
            time: None,
        },
    })
}

fn row_of_result(key: String, r: &JobResult) -> JobRow {
    JobRow {
        key,
        state: r.status_str().to_string(),
        node: (!r.execution_node.is_empty()).then(|| r.execution_node.clone()),
        attempt: r.attempt,
        exit_code: r.status.filter(|s| s.is_final()).map(|_| r.exit_code),
        time: (!r.end_time_str.is_empty()).then(|| r.end_time_str.clone()),
    }
}

/// Every job's row in `/v1/jobs`'s order, counted by state, before any filter: built once per
/// change of the cluster and shared by every request and page (the hub keeps the last one).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AllJobs {
    pub rows: Vec<JobRow>,
    pub counts: BTreeMap<String, usize>,
    pub unreadable: Vec<String>,
}

/// Live jobs (queued, then running) by key, then results newest first; a job with both a held
/// key and a `started` result (NoWait) is listed once, as its result.
pub fn all_jobs<'a>(
    layout: &Namespace,
    entries: impl IntoIterator<Item = &'a KvPair>,
    results: &[KvPair],
    holders: &Holders,
) -> AllJobs {
    let mut unreadable = Vec::new();
    let mut done: Vec<(i64, JobRow)> = Vec::new();
    for r in results {
        let Some(jk) = layout.parse_result_key(&r.key) else {
            continue;
        };
        match serde_json::from_slice::<JobResult>(&r.value) {
            Ok(res) => done.push((res.end_time, row_of_result(jk.relative(), &res))),
            Err(_) => unreadable.push(r.key.clone()),
        }
    }
    let started: std::collections::HashSet<&str> = done
        .iter()
        .filter(|(_, r)| r.state == JobStatus::Started.as_str())
        .map(|(_, r)| r.key.as_str())
        .collect();
    let mut live: Vec<JobRow> = entries
        .into_iter()
        .filter_map(|e| row_of_entry(layout, e, holders))
        .filter(|r| !(r.state == "running" && started.contains(r.key.as_str())))
        .collect();
    live.sort_by(|a, b| (a.state != "queued", &a.key).cmp(&(b.state != "queued", &b.key)));
    // Newest first; a `started` result has no end time yet, so it sorts first.
    done.sort_by(|a, b| {
        let ka = if a.0 == 0 { i64::MAX } else { a.0 };
        let kb = if b.0 == 0 { i64::MAX } else { b.0 };
        kb.cmp(&ka).then_with(|| a.1.key.cmp(&b.1.key))
    });
    let mut counts = BTreeMap::new();
    let rows: Vec<JobRow> = live
        .into_iter()
        .chain(done.into_iter().map(|(_, r)| r))
        .inspect(|r| *counts.entry(r.state.clone()).or_insert(0) += 1)
        .collect();
    AllJobs {
        rows,
        counts,
        unreadable,
    }
}

/// One page of `all` under `filter`: its rows, how many matched, and the counts of every job.
pub fn page(all: &AllJobs, filter: &JobFilter) -> JobList {
    let matched: Vec<&JobRow> = all.rows.iter().filter(|r| filter.keeps(r)).collect();
    let total = matched.len();
    let offset = filter.offset.min(total);
    let left_off = (total - offset).saturating_sub(filter.limit);
    JobList {
        jobs: matched
            .into_iter()
            .skip(offset)
            .take(filter.limit)
            .cloned()
            .collect(),
        left_off,
        total,
        offset,
        counts: all.counts.clone(),
        unreadable: all.unreadable.clone(),
    }
}

/// The rows of `/v1/jobs`: `all_jobs`, then `page`.
pub fn job_list<'a>(
    layout: &Namespace,
    entries: impl IntoIterator<Item = &'a KvPair>,
    results: &[KvPair],
    holders: &Holders,
    filter: &JobFilter,
) -> JobList {
    page(&all_jobs(layout, entries, results, holders), filter)
}

/// The view of one job key (relative to the prefix) from its entry and its result, as
/// `servant show` builds it: a held key is running unless its result says `started`.
pub fn job_detail(
    key: &str,
    entry: Option<&KvPair>,
    result: Option<&KvPair>,
    holder_node: Option<&str>,
) -> Result<Option<JobView>, ApiError> {
    let parsed = match result {
        Some(r) => Some(
            serde_json::from_slice::<JobResult>(&r.value)
                .map_err(|e| ApiError::Unreadable(format!("{} is not a job result: {e}", r.key)))?,
        ),
        None => None,
    };
    if let Some(e) = entry {
        let started = parsed
            .as_ref()
            .is_some_and(|r| r.status == Some(JobStatus::Started));
        if !(e.holder().is_some() && started) {
            let node = e
                .holder()
                .map(|sid| holder_node.map_or_else(|| format!("session {sid}"), str::to_string));
            return Ok(Some(JobView::from_entry(
                key,
                e.lock_index,
                e.flags,
                node.as_deref(),
            )));
        }
    }
    Ok(parsed.map(|r| JobView::Done {
        key: key.to_string(),
        result: Box::new(r),
    }))
}

/// Session ID → node, from the sessions of a snapshot.
pub fn holders(s: &Snapshot) -> Holders {
    s.sessions
        .iter()
        .map(|e| (e.id.clone(), e.node.clone()))
        .collect()
}

/// Every job of a snapshot (the hub memoizes it per snapshot).
pub fn all_of(s: &Snapshot, layout: &Namespace) -> AllJobs {
    all_jobs(
        layout,
        s.jobs.iter().chain(s.queues.iter()),
        &s.results,
        &holders(s),
    )
}

/// `/v1/jobs/<key>` from a snapshot: the key checked, then its entry and its result.
pub fn show_of(s: &Snapshot, layout: &Namespace, key: &str) -> Result<JobView, ApiError> {
    let jk = layout
        .parse_job_key(&format!("{}{key}", layout.prefix()))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{key:?} is not a job key: use jobs/<id> or queues/<node>/<id>"
            ))
        })?;
    let full = layout.job_key(&jk);
    let entry = s.jobs.iter().chain(s.queues.iter()).find(|e| e.key == full);
    let rkey = layout.result_key(&jk);
    let result = s.results.iter().find(|e| e.key == rkey);
    let holder_node = entry
        .and_then(|e| e.holder())
        .and_then(|sid| s.sessions.iter().find(|x| x.id == sid))
        .map(|x| x.node.clone());
    let mut view = job_detail(&jk.relative(), entry, result, holder_node.as_deref())?
        .ok_or_else(|| ApiError::NotFound(format!("no job {key}: neither queued nor a result")))?;
    // A running docker job: its image from the document, its container from its node's report.
    if let (
        JobView::Running {
            node,
            image,
            container_id,
            ..
        },
        Some(e),
    ) = (&mut view, entry)
    {
        *image = crate::wire::job::image_of(&e.value);
        if image.is_some() {
            let rkey = layout.resource(node);
            *container_id = s
                .appmgr
                .iter()
                .find(|x| x.key == rkey)
                .and_then(|x| crate::wire::ResourceReport::parse(&x.value).ok())
                .and_then(|r| r.job_container(&full).map(|c| c.id.clone()));
        }
    }
    Ok(view)
}

/// `GET /v1/jobs`.
pub async fn list(
    State(st): State<ApiState>,
    Query(q): Query<JobsQuery>,
) -> Result<Json<JobList>, ApiError> {
    let filter = JobFilter::parse(&q)?;
    let s = st.hub.snapshot().await?;
    Ok(Json(page(&st.hub.all_jobs(&s), &filter)))
}

/// `GET /v1/jobs/<key>`, `<key>` as `/v1/jobs` lists it (`jobs/<id>`, `queues/<node>/<id>`).
pub async fn show(
    State(st): State<ApiState>,
    Path(key): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    let s = st.hub.snapshot().await?;
    show_of(&s, &st.layout, &key).map(Json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, lock: u64, session: Option<&str>) -> KvPair {
        KvPair {
            key: key.into(),
            lock_index: lock,
            flags: if session.is_some() {
                1_700_000_000_000
            } else {
                0
            },
            value: b"{}".to_vec(),
            session: session.map(str::to_string),
            ..Default::default()
        }
    }

    fn result(key: &str, status: JobStatus, end: i64, node: &str) -> KvPair {
        let r = JobResult {
            id: key.rsplit('/').next().unwrap_or_default().into(),
            status: Some(status),
            end_time: end,
            end_time_str: if end > 0 {
                format!("t{end}")
            } else {
                "".into()
            },
            execution_node: node.into(),
            exit_code: if status == JobStatus::Succeeded { 0 } else { 3 },
            attempt: 1,
            ..Default::default()
        };
        KvPair {
            key: key.into(),
            value: crate::wire::encode(&r),
            ..Default::default()
        }
    }

    fn filter(state: Option<&str>, node: Option<&str>, limit: Option<&str>) -> JobFilter {
        JobFilter::parse(&JobsQuery {
            state: state.map(Into::into),
            node: node.map(Into::into),
            limit: limit.map(Into::into),
            offset: None,
        })
        .unwrap()
    }

    fn fixture() -> (Namespace, Vec<KvPair>, Vec<KvPair>, Holders) {
        let ns = Namespace::new("p");
        let entries = vec![
            entry("p/jobs/run", 1, Some("s1")),
            entry("p/queues/n2/q2", 0, None),
            entry("p/jobs/q1", 2, None),
        ];
        let results = vec![
            result("p/jdone_jid/jobs/ok", JobStatus::Succeeded, 10, "n1"),
            result("p/jdone_jid/queues/n2/bad", JobStatus::Failed, 20, "n2"),
            KvPair {
                key: "p/jdone_jid/jobs/junk".into(),
                value: b"not json".to_vec(),
                ..Default::default()
            },
        ];
        let holders = [("s1".to_string(), "n1".to_string())].into();
        (ns, entries, results, holders)
    }

    #[test]
    fn lists_queued_running_then_results_newest_first() {
        let (ns, e, r, h) = fixture();
        let l = job_list(&ns, &e, &r, &h, &filter(None, None, None));
        let got: Vec<(&str, &str, Option<&str>)> = l
            .jobs
            .iter()
            .map(|r| (r.key.as_str(), r.state.as_str(), r.node.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("jobs/q1", "queued", None),
                ("queues/n2/q2", "queued", Some("n2")),
                ("jobs/run", "running", Some("n1")),
                ("queues/n2/bad", "failed", Some("n2")),
                ("jobs/ok", "succeeded", Some("n1")),
            ]
        );
        assert_eq!(l.jobs[0].attempt, 2);
        assert_eq!(l.jobs[3].exit_code, Some(3));
        assert_eq!(l.unreadable, ["p/jdone_jid/jobs/junk"]);
        assert_eq!(l.left_off, 0);
    }

    #[test]
    fn filters_by_state_and_node_and_limits() {
        let (ns, e, r, h) = fixture();
        let l = job_list(&ns, &e, &r, &h, &filter(Some("failed"), None, None));
        assert_eq!(l.jobs.len(), 1);
        assert_eq!(l.jobs[0].key, "queues/n2/bad");
        let l = job_list(&ns, &e, &r, &h, &filter(None, Some("n1"), None));
        let keys: Vec<&str> = l.jobs.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["jobs/run", "jobs/ok"]);
        let l = job_list(&ns, &e, &r, &h, &filter(None, None, Some("2")));
        assert_eq!(l.jobs.len(), 2);
        assert_eq!(l.left_off, 3);
    }

    #[test]
    fn a_holder_without_session_is_named_by_its_session() {
        let (ns, e, r, _) = fixture();
        let l = job_list(
            &ns,
            &e,
            &r,
            &Holders::new(),
            &filter(Some("running"), None, None),
        );
        assert_eq!(l.jobs[0].node.as_deref(), Some("session s1"));
    }

    #[test]
    fn a_nowait_job_is_listed_once_as_started() {
        let ns = Namespace::new("");
        let e = vec![entry("jobs/nw", 1, Some("s1"))];
        let r = vec![result("jdone_jid/jobs/nw", JobStatus::Started, 0, "n1")];
        let l = job_list(&ns, &e, &r, &Holders::new(), &filter(None, None, None));
        assert_eq!(l.jobs.len(), 1);
        assert_eq!(l.jobs[0].state, "started");
        assert_eq!(l.jobs[0].exit_code, None);
    }

    #[test]
    fn pages_skip_offset_rows_and_counts_ignore_the_filter() {
        let (ns, entries, results, holders) = fixture();
        let all = job_list(&ns, &entries, &results, &holders, &filter(None, None, None));
        let mut f = filter(None, None, Some("2"));
        f.offset = 1;
        let page = job_list(&ns, &entries, &results, &holders, &f);
        assert_eq!(page.total, all.total);
        assert_eq!(page.offset, 1);
        let keys = |l: &JobList| l.jobs.iter().map(|r| r.key.clone()).collect::<Vec<_>>();
        assert_eq!(keys(&page), keys(&all)[1..3].to_vec());
        assert_eq!(page.left_off, all.total - 3);
        assert_eq!(page.counts, all.counts);
        assert_eq!(page.counts.values().sum::<usize>(), all.total);
        // An offset past the end lists nothing and says so.
        f.offset = 1000;
        let past = job_list(&ns, &entries, &results, &holders, &f);
        assert!(past.jobs.is_empty());
        assert_eq!((past.offset, past.left_off), (all.total, 0));
        let failed = job_list(
            &ns,
            &entries,
            &results,
            &holders,
            &filter(Some("failed"), None, None),
        );
        assert_eq!(failed.counts, all.counts, "counts are of every job");
    }

    #[test]
    fn bad_queries_are_refused_with_the_reason() {
        for (s, l) in [(Some("done"), None), (None, Some("0")), (None, Some("x"))] {
            let e = JobFilter::parse(&JobsQuery {
                state: s.map(Into::into),
                node: None,
                limit: l.map(Into::into),
                offset: None,
            })
            .unwrap_err();
            assert!(matches!(e, ApiError::BadRequest(_)), "{e:?}");
        }
    }

    #[test]
    fn detail_is_live_state_or_result() {
        let e = entry("jobs/a", 1, Some("s1"));
        let v = job_detail("jobs/a", Some(&e), None, Some("n1")).unwrap();
        assert!(matches!(v, Some(JobView::Running { ref node, .. }) if node == "n1"));
        let q = entry("jobs/a", 0, None);
        let v = job_detail("jobs/a", Some(&q), None, None).unwrap();
        assert!(matches!(v, Some(JobView::Queued { .. })));
        let r = result("jdone_jid/jobs/a", JobStatus::Succeeded, 5, "n1");
        let v = job_detail("jobs/a", None, Some(&r), None).unwrap();
        assert!(matches!(v, Some(JobView::Done { ref result, .. }) if result.exit_code == 0));
        let s = result("jdone_jid/jobs/a", JobStatus::Started, 0, "n1");
        let v = job_detail("jobs/a", Some(&e), Some(&s), Some("n1")).unwrap();
        assert!(matches!(v, Some(JobView::Done { .. })));
        assert_eq!(job_detail("jobs/a", None, None, None).unwrap(), None);
        let junk = KvPair {
            key: "jdone_jid/jobs/a".into(),
            value: b"x".to_vec(),
            ..Default::default()
        };
        assert!(matches!(
            job_detail("jobs/a", None, Some(&junk), None),
            Err(ApiError::Unreadable(_))
        ));
    }
}
