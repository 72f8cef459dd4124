//! `/v1/apps`: the tasks (`appmgr/task/`), the topology, each node's app states
//! (`appmgr/status/<node>/applications`) and the leader's report of unplaced replicas
//! (`appmgr/schedule`), from one read of the `appmgr/` prefix.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use serde_json::Value;

use super::{ApiError, ApiState};
use crate::consul::KvPair;
use crate::wire::topology::read_topology;
use crate::wire::{self, parse_tasks, Applications, Namespace, ScheduleReport};

/// A task as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskRow {
    pub replication: u32,
    pub labels: BTreeMap<String, String>,
    pub cpu: f64,
    #[serde(rename = "MemoryMB")]
    pub memory_mb: u64,
    /// The app JSON as written.
    pub content: Value,
}

/// The answer of `/v1/apps`. Documents that cannot be read are listed with the reason, never
/// dropped silently.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AppsDoc {
    pub tasks: BTreeMap<String, TaskRow>,
    pub invalid_tasks: BTreeMap<String, String>,
    /// Host → the tasks placed there.
    pub topology: BTreeMap<String, BTreeSet<String>>,
    /// Host → the apps it reports, in App Manager's `applications` shape.
    pub states: BTreeMap<String, Applications>,
    /// The leader's report (leader, unplaced replicas with reasons); absent before a leader
    /// wrote one.
    pub schedule: Option<ScheduleReport>,
    /// Key → why it is not what it should be (topology, applications, schedule).
    pub unreadable: BTreeMap<String, String>,
}

/// Shapes the entries under `appmgr/` into `/v1/apps`'s answer.
pub fn apps_doc(layout: &Namespace, entries: &[KvPair]) -> AppsDoc {
    let kv = || entries.iter().map(|e| (e.key.as_str(), e.value.as_slice()));
    let (tasks, invalid) = parse_tasks(layout, kv());
    let topo = read_topology(layout, kv());
    let mut unreadable: BTreeMap<String, String> = topo
        .unreadable
        .into_iter()
        .map(|(h, e)| (layout.topology(&h), e.to_string()))
        .collect();
    let status = layout.status_prefix();
    let mut states = BTreeMap::new();
    for e in entries {
        let host = e
            .key
            .strip_prefix(status.as_str())
            .and_then(|r| r.strip_suffix("/applications"))
            .filter(|h| !h.is_empty() && !h.contains('/'));
        if let Some(host) = host {
            match wire::decode::<Applications>("applications report", &e.value) {
                Ok(a) => {
                    states.insert(host.to_string(), a);
                }
                Err(err) => {
                    unreadable.insert(e.key.clone(), err.to_string());
                }
            }
        }
    }
    let schedule_key = layout.schedule();
    let schedule = entries
        .iter()
        .find(|e| e.key == schedule_key)
        .and_then(|e| match ScheduleReport::parse(&e.value) {
            Ok(s) => Some(s),
            Err(err) => {
                unreadable.insert(e.key.clone(), err.to_string());
                None
            }
        });
    AppsDoc {
        tasks: tasks
            .into_iter()
            .map(|(n, t)| {
                (
                    n,
                    TaskRow {
                        replication: t.replication,
                        labels: t.labels,
                        cpu: t.cpu,
                        memory_mb: t.memory_mb,
                        content: t.content,
                    },
                )
            })
            .collect(),
        invalid_tasks: invalid
            .into_iter()
            .map(|(n, e)| (n, e.to_string()))
            .collect(),
        topology: topo.placed,
        states,
        schedule,
        unreadable,
    }
}

/// `GET /v1/apps`.
pub async fn list(State(st): State<ApiState>) -> Result<Json<AppsDoc>, ApiError> {
    let s = st.hub.snapshot().await?;
    Ok(Json(apps_doc(&st.layout, &s.appmgr)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str) -> KvPair {
        KvPair {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn shapes_tasks_topology_states_and_schedule() {
        let ns = Namespace::new("");
        let entries = vec![
            kv(
                "appmgr/task/web",
                r#"{"content":{"name":"web","command":"sleep 9"},"replication":2}"#,
            ),
            kv("appmgr/task/broken", r#"{"replication":1}"#),
            kv("appmgr/topology/n1", r#"["web"]"#),
            kv("appmgr/topology/n2", "nope"),
            kv(
                "appmgr/status/n1/applications",
                r#"{"web":{"name":"web","command":"sleep 9","status":1,"health":0,"pid":7,"start_time":"","last_start_time":"","next_start_time":"","start_interval_seconds":0,"user":"","working_dir":"","restarts":0,"last_exit":""}}"#,
            ),
            kv("appmgr/status/n1/resource", "{}"),
            kv(
                "appmgr/schedule",
                r#"{"leader":"n1","unplaced":[{"task":"web","wanted":2,"placed":1,"reason":"only 1 live host"}],"invalid":{},"hosts":["n1"]}"#,
            ),
        ];
        let d = apps_doc(&ns, &entries);
        assert_eq!(d.tasks["web"].replication, 2);
        assert!(d.invalid_tasks.contains_key("broken"));
        assert_eq!(d.topology["n1"], BTreeSet::from(["web".to_string()]));
        assert!(d.unreadable.contains_key("appmgr/topology/n2"));
        assert_eq!(d.states["n1"]["web"].pid, 7);
        let s = d.schedule.unwrap();
        assert_eq!(s.unplaced[0].placed, 1);
    }
}
