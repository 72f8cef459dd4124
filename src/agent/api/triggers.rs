//! `/v1/triggers`: recent trigger runs of every node, newest first, from `trigger_history/<node>`
//! (each node keeps its newest runs there, with their output).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use super::hub::Snapshot;
use super::{ApiError, ApiState};
use crate::checks::trigger::TriggerRun;
use crate::consul::KvPair;
use crate::wire::Namespace;

/// One run and the node it ran on.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TriggerRow {
    pub node: String,
    /// The run as the node recorded it (`time_ms`, `service`, `role`, `state`, `key`,
    /// `exit_code`, `timed_out`, `duration_ms`, `output`, `refused` when the policy refused it).
    pub run: TriggerRun,
}

/// The answer of `/v1/triggers`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TriggerList {
    pub runs: Vec<TriggerRow>,
    /// History keys that do not hold a list of runs, with why.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub unreadable: BTreeMap<String, String>,
}

/// Every node's runs, newest first (ties by node).
pub fn trigger_list(layout: &Namespace, entries: &[KvPair]) -> TriggerList {
    let prefix = format!("{}trigger_history/", layout.prefix());
    let mut runs = Vec::new();
    let mut unreadable = BTreeMap::new();
    for e in entries {
        let Some(node) = e.key.strip_prefix(&prefix).filter(|n| !n.contains('/')) else {
            continue;
        };
        match serde_json::from_slice::<Vec<TriggerRun>>(&e.value) {
            Ok(list) => runs.extend(list.into_iter().map(|run| TriggerRow {
                node: node.to_string(),
                run,
            })),
            Err(err) => {
                unreadable.insert(e.key.clone(), format!("not a list of trigger runs: {err}"));
            }
        }
    }
    runs.sort_by(|a, b| {
        b.run
            .time_ms
            .cmp(&a.run.time_ms)
            .then_with(|| a.node.cmp(&b.node))
    });
    TriggerList { runs, unreadable }
}

/// `/v1/triggers` from a snapshot.
pub fn list_of(s: &Snapshot, layout: &Namespace) -> TriggerList {
    trigger_list(layout, &s.triggers)
}

/// `GET /v1/triggers`.
pub async fn list(State(st): State<ApiState>) -> Result<Json<TriggerList>, ApiError> {
    let s = st.hub.snapshot().await?;
    Ok(Json(list_of(&s, &st.layout)))
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

    fn run(t: u64, service: &str) -> String {
        format!(
            r#"{{"time_ms":{t},"service":"{service}","role":"primary","state":"critical","key":"k","exit_code":0,"timed_out":false,"duration_ms":3,"output":"ok"}}"#
        )
    }

    #[test]
    fn runs_of_every_node_newest_first_and_bad_history_named() {
        let ns = Namespace::new("p");
        let entries = vec![
            kv(
                "p/trigger_history/n1",
                &format!("[{},{}]", run(10, "a"), run(30, "b")),
            ),
            kv("p/trigger_history/n2", &format!("[{}]", run(20, "c"))),
            kv("p/trigger_history/n3", "nope"),
        ];
        let l = trigger_list(&ns, &entries);
        let order: Vec<(&str, &str)> = l
            .runs
            .iter()
            .map(|r| (r.node.as_str(), r.run.service.as_str()))
            .collect();
        assert_eq!(order, [("n1", "b"), ("n2", "c"), ("n1", "a")]);
        assert!(l.unreadable.contains_key("p/trigger_history/n3"));
    }
}
