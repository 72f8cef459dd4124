//! `/v1/nodes`: the catalog's nodes with their `serfHealth`, their `resource` report and
//! whether a servant runs there (a live jobs session on the node).

use std::collections::{BTreeMap, HashSet};

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use super::hub::Snapshot;
use super::{ApiError, ApiState};
use crate::consul::{CatalogNode, HealthCheck, SessionEntry};
use crate::wire::resource::read_reports;
use crate::wire::{DocError, HealthStatus, Namespace, ResourceReport};

/// One node of `/v1/nodes`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeRow {
    pub node: String,
    pub address: String,
    /// The node's `serfHealth` check; absent when Consul has none for it.
    pub serf_health: Option<HealthStatus>,
    /// A servant holds its jobs session on this node.
    pub servant: bool,
    /// The node's `appmgr/status/<node>/resource` report, if it wrote one.
    pub resource: Option<ResourceReport>,
    /// Why its report could not be read, when it is not a report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_error: Option<String>,
}

/// The rows of `/v1/nodes`, by node name. A report of a host the catalog does not list is
/// ignored: the reports are held by sessions, so they vanish with their node.
pub fn node_list(
    nodes: &[CatalogNode],
    checks: &[HealthCheck],
    mut reports: BTreeMap<String, ResourceReport>,
    mut bad: BTreeMap<String, DocError>,
    sessions: &[SessionEntry],
    jobs_session: &str,
) -> Vec<NodeRow> {
    let servants: HashSet<&str> = sessions
        .iter()
        .filter(|s| s.name == jobs_session)
        .map(|s| s.node.as_str())
        .collect();
    let mut rows: Vec<NodeRow> = nodes
        .iter()
        .map(|n| NodeRow {
            node: n.node.clone(),
            address: n.address.clone(),
            serf_health: checks
                .iter()
                .find(|c| c.node == n.node && c.check_id == "serfHealth")
                .map(|c| c.status),
            servant: servants.contains(n.node.as_str()),
            resource: reports.remove(&n.node),
            resource_error: bad.remove(&n.node).map(|e| e.to_string()),
        })
        .collect();
    rows.sort_by(|a, b| a.node.cmp(&b.node));
    rows
}

/// The answer of `/v1/nodes`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeList {
    pub nodes: Vec<NodeRow>,
}

/// `/v1/nodes` from a snapshot.
pub fn list_of(s: &Snapshot, layout: &Namespace) -> NodeList {
    let (reports, bad) = read_reports(
        layout,
        s.appmgr
            .iter()
            .filter(|e| e.key.starts_with(&layout.status_prefix()))
            .map(|e| (e.key.as_str(), e.value.as_slice())),
    );
    NodeList {
        nodes: node_list(
            &s.nodes,
            &s.checks,
            reports,
            bad,
            &s.sessions,
            &layout.jobs_session(),
        ),
    }
}

/// `GET /v1/nodes`.
pub async fn list(State(st): State<ApiState>) -> Result<Json<NodeList>, ApiError> {
    let s = st.hub.snapshot().await?;
    Ok(Json(list_of(&s, &st.layout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: &str) -> CatalogNode {
        CatalogNode {
            node: n.into(),
            address: format!("10.0.0.{}", n.len()),
            ..Default::default()
        }
    }

    fn check(n: &str, id: &str, status: HealthStatus) -> HealthCheck {
        HealthCheck {
            node: n.into(),
            check_id: id.into(),
            status,
            ..Default::default()
        }
    }

    fn session(n: &str, name: &str) -> SessionEntry {
        SessionEntry {
            node: n.into(),
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn nodes_get_serf_health_servant_and_report() {
        let ns = Namespace::new("");
        let report = br#"{"host":"a","pid":1,"appmgr_start_time":"t","systime":"t","cpu_cores":1,
            "cpu_processors":2,"cpu_sockets":1,"mem_total_bytes":10,"mem_free_bytes":5,
            "mem_used_bytes":5,"swap_total_bytes":0,"swap_free_bytes":0,
            "load_average":{"1min":0.0,"5min":0.0,"15min":0.0},"fs":[],"net":[],"labels":{}}"#;
        let entries: Vec<(&str, &[u8])> = vec![
            ("appmgr/status/a/resource", report.as_slice()),
            ("appmgr/status/b/resource", b"junk".as_slice()),
            ("appmgr/status/gone/resource", report.as_slice()),
        ];
        let (reports, bad) = read_reports(&ns, entries);
        let rows = node_list(
            &[node("b"), node("a")],
            &[
                check("a", "serfHealth", HealthStatus::Passing),
                check("b", "other", HealthStatus::Passing),
                check("b", "serfHealth", HealthStatus::Critical),
            ],
            reports,
            bad,
            &[session("a", "servant"), session("b", "servant-apps")],
            &ns.jobs_session(),
        );
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].node, "a");
        assert_eq!(rows[0].serf_health, Some(HealthStatus::Passing));
        assert!(rows[0].servant);
        assert_eq!(rows[0].resource.as_ref().map(|r| r.cpu_processors), Some(2));
        assert_eq!(rows[1].serf_health, Some(HealthStatus::Critical));
        assert!(!rows[1].servant, "an apps session is not the servant's");
        assert!(rows[1].resource.is_none());
        assert!(rows[1].resource_error.is_some());
    }
}
