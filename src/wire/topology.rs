//! The topology keys: `appmgr/topology/<host>` holds a JSON array of the task names placed on
//! that host. Written only by the apps leader, one key per host; read by each node (its own key),
//! the leader and the CLI.

use std::collections::{BTreeMap, BTreeSet};

use super::{decode, read_listing, DocError, KvEntry, Namespace};

/// Task names placed on each host. A host missing from the map holds nothing.
pub type Topology = BTreeMap<String, BTreeSet<String>>;

const WHAT: &str = "topology key (a list of task names)";

/// The names in one host's key.
pub fn parse_host(value: &[u8]) -> Result<BTreeSet<String>, DocError> {
    decode(WHAT, value)
}

/// One host's key value.
pub fn encode_host(names: &BTreeSet<String>) -> Vec<u8> {
    super::encode(names)
}

/// What the topology keys say.
#[derive(Debug, Default)]
pub struct TopologyKeys {
    /// The hosts with at least one task.
    pub placed: Topology,
    /// Keys whose value is not a list of names (they place nothing; the leader rewrites them).
    pub unreadable: BTreeMap<String, DocError>,
}

/// Reads the keys directly under the topology prefix.
pub fn read_topology<'a>(
    ns: &Namespace,
    entries: impl IntoIterator<Item = KvEntry<'a>>,
) -> TopologyKeys {
    let prefix = ns.topology_prefix();
    let (mut placed, unreadable) = read_listing(
        entries,
        |key| ns.name_under(&prefix, key),
        |_, v| parse_host(v),
    );
    placed.retain(|_, names| !names.is_empty());
    TopologyKeys { placed, unreadable }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_bad_ones_are_named() {
        let ns = Namespace::new("");
        let names: BTreeSet<String> = ["b".to_string(), "a".to_string()].into();
        let value = encode_host(&names);
        assert_eq!(
            value, br#"["a","b"]"#,
            "App Manager's shape: an array of names"
        );
        let keys = read_topology(
            &ns,
            [
                ("appmgr/topology/h1", value.as_slice()),
                ("appmgr/topology/h2", b"[]"),
                ("appmgr/topology/h3", br#"{"a": 1}"#),
                ("appmgr/topology/h3/x", b"[]"),
            ],
        );
        assert_eq!(keys.placed, Topology::from([("h1".to_string(), names)]));
        assert_eq!(keys.unreadable.keys().collect::<Vec<_>>(), ["h3"]);
        let e = keys.unreadable["h3"].to_string();
        assert!(e.contains("topology key"), "{e}");
    }
}
