//! A node's capacity record (`appmgr/capacity/<host>`): what the apps scheduler needs of a node
//! and nothing that moves while it runs (logical CPUs, total memory, labels). Written by each
//! node (`apps::node`) under its apps session when the record or the session changes, read by
//! the apps leader, which watches these records instead of the `resource` reports: a report is
//! rewritten every `report_interval` with new readings, a capacity record almost never.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{decode, encode, read_listing, DocError, KvEntry, Namespace, ResourceReport};

/// One node's capacity. The field names are the `resource` report's, so a reader of one reads
/// the other. Every field is required: a record without one is an error, never a host of 1 CPU
/// and 0 MB.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// Logical CPUs: what tasks' `cpu` requests are counted against.
    pub cpu_processors: u64,
    /// What tasks' `memory_mb` requests are counted against.
    pub mem_total_bytes: u64,
    /// This node's configured labels, matched by tasks' `labels`.
    pub labels: BTreeMap<String, String>,
}

const WHAT: &str = "capacity record";

impl Capacity {
    /// The capacity part of a `resource` report.
    pub fn of(r: &ResourceReport) -> Capacity {
        Capacity {
            cpu_processors: r.cpu_processors,
            mem_total_bytes: r.mem_total_bytes,
            labels: r.labels.clone(),
        }
    }

    pub fn parse(value: &[u8]) -> Result<Capacity, DocError> {
        decode(WHAT, value)
    }

    /// The value written to KV.
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    /// Total memory in MiB.
    pub fn memory_mb(&self) -> u64 {
        self.mem_total_bytes / (1024 * 1024)
    }
}

/// The capacity records under the capacity prefix, by host, and the hosts whose record is
/// unreadable. Keys nested deeper are ignored.
pub fn read_capacities<'a>(
    ns: &Namespace,
    entries: impl IntoIterator<Item = KvEntry<'a>>,
) -> (BTreeMap<String, Capacity>, BTreeMap<String, DocError>) {
    let prefix = ns.capacity_prefix();
    read_listing(
        entries,
        |key: &'a str| ns.name_under(&prefix, key),
        |_, value| Capacity::parse(value),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_record_reads_back_and_names_a_missing_field() {
        let c = Capacity {
            cpu_processors: 8,
            mem_total_bytes: 8 << 30,
            labels: [("zone".to_string(), "a".to_string())].into(),
        };
        assert_eq!(Capacity::parse(&c.encode()).unwrap(), c);
        assert_eq!(c.memory_mb(), 8192);
        let e = Capacity::parse(br#"{"cpu_processors": 2, "labels": {}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("capacity record") && e.contains("mem_total_bytes"),
            "{e}"
        );
    }

    #[test]
    fn records_are_read_by_host_and_bad_ones_are_named() {
        let ns = Namespace::new("ns");
        let good =
            json!({"cpu_processors": 2, "mem_total_bytes": 1u64 << 30, "labels": {}}).to_string();
        let (ok, bad) = read_capacities(
            &ns,
            [
                ("ns/appmgr/capacity/h1", good.as_bytes()),
                ("ns/appmgr/capacity/h2", b"{}".as_slice()),
                ("ns/appmgr/capacity/h3/deeper", good.as_bytes()),
                ("appmgr/capacity/other-namespace", good.as_bytes()),
            ],
        );
        assert_eq!(ok.keys().collect::<Vec<_>>(), ["h1"]);
        assert_eq!(bad.keys().collect::<Vec<_>>(), ["h2"]);
    }
}
