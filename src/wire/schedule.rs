//! The apps leader's report (`appmgr/schedule`): who leads, the replicas it could not place and
//! why, the tasks it skipped as invalid, and the live hosts it placed on. Written by the leader
//! when it changes; read by `servant topology`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{decode, encode, DocError};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScheduleReport {
    /// The leader's node name.
    pub leader: String,
    /// Tasks short of replicas, sorted by task name.
    pub unplaced: Vec<Unplaced>,
    /// Task name → why its value cannot be used.
    pub invalid: BTreeMap<String, String>,
    /// The hosts with a readable capacity record (live, or held while their agent restarts).
    pub hosts: Vec<String>,
}

/// A task that did not get all its replicas, so operators see why instead of silence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unplaced {
    /// The task's name.
    pub task: String,
    /// Its `replication`.
    pub wanted: u32,
    /// Replicas it has in the plan (these are kept).
    pub placed: u32,
    /// Human-readable cause, e.g.
    /// "2 of 3 replicas placed: only 2 live hosts match labels {zone=a}".
    pub reason: String,
}

impl ScheduleReport {
    pub fn parse(value: &[u8]) -> Result<ScheduleReport, DocError> {
        decode("schedule report", value)
    }

    /// The value written to KV.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_leaders_report_round_trips_with_the_untyped_writers_bytes() {
        let report = ScheduleReport {
            leader: "n1".into(),
            unplaced: vec![Unplaced {
                task: "wide".into(),
                wanted: 3,
                placed: 1,
                reason: "1 of 3 replicas placed: only 1 live host".into(),
            }],
            invalid: [("bad".to_string(), "not JSON: x".to_string())].into(),
            hosts: vec!["n1".into()],
        };
        // What the leader wrote with `json!` before this type existed.
        let old = json!({
            "leader": "n1",
            "unplaced": [{"task": "wide", "wanted": 3, "placed": 1,
                          "reason": "1 of 3 replicas placed: only 1 live host"}],
            "invalid": {"bad": "not JSON: x"},
            "hosts": ["n1"],
        });
        let bytes = report.encode();
        assert_eq!(bytes, serde_json::to_vec(&old).unwrap());
        assert_eq!(ScheduleReport::parse(&bytes).unwrap(), report);
        let e = ScheduleReport::parse(br#"{"leader": "n1"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("schedule report") && e.contains("unplaced"),
            "{e}"
        );
    }
}
