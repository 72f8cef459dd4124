//! `/v1/services`: every service in the catalog with its instances and their health: the
//! instances from the hub's service catalog, their health from its watch of every check (node
//! checks such as `serfHealth` count for every instance on the node, as in
//! `/v1/health/service/<name>`).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use super::hub::{ServiceCatalog, Snapshot};
use super::{ApiError, ApiState};
use crate::consul::{CatalogService, HealthCheck};
use crate::wire::HealthStatus;

/// One instance of a service.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Instance {
    pub node: String,
    #[serde(rename = "ID")]
    pub id: String,
    /// The service's address, or its node's when the service has none.
    pub address: String,
    pub port: u64,
    /// The worst of its checks (its node's included); passing when it has none, as Consul's
    /// `?passing` filter counts it.
    pub status: HealthStatus,
    /// Each check's ID and state.
    pub checks: BTreeMap<String, HealthStatus>,
}

/// One service.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceRow {
    pub name: String,
    pub tags: Vec<String>,
    /// The worst instance's state; absent when it has no instance.
    pub status: Option<HealthStatus>,
    pub instances: Vec<Instance>,
}

fn instance(s: &CatalogService, checks: &[HealthCheck]) -> Instance {
    let mine: Vec<&HealthCheck> = checks
        .iter()
        .filter(|c| c.node == s.node && (c.service_id.is_empty() || c.service_id == s.service_id))
        .collect();
    Instance {
        node: s.node.clone(),
        id: s.service_id.clone(),
        address: if s.service_address.is_empty() {
            s.address.clone()
        } else {
            s.service_address.clone()
        },
        port: u64::from(s.service_port),
        status: mine
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(HealthStatus::Passing),
        checks: mine
            .iter()
            .map(|c| (c.check_id.clone(), c.status))
            .collect(),
    }
}

/// The rows of `/v1/services`, by name; instances by node and ID; a service's status is its
/// worst instance's (None with no instance).
pub fn service_list(catalog: &ServiceCatalog, checks: &[HealthCheck]) -> Vec<ServiceRow> {
    catalog
        .iter()
        .map(|(name, (tags, list))| {
            let mut instances: Vec<Instance> = list.iter().map(|s| instance(s, checks)).collect();
            instances.sort_by(|a, b| (&a.node, &a.id).cmp(&(&b.node, &b.id)));
            ServiceRow {
                name: name.clone(),
                tags: tags.clone(),
                status: instances.iter().map(|i| i.status).max(),
                instances,
            }
        })
        .collect()
}

/// The answer of `/v1/services`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceList {
    pub services: Vec<ServiceRow>,
}

/// `/v1/services` from a snapshot.
pub fn list_of(s: &Snapshot) -> ServiceList {
    ServiceList {
        services: service_list(&s.services, &s.checks),
    }
}

/// `GET /v1/services`.
pub async fn list(State(st): State<ApiState>) -> Result<Json<ServiceList>, ApiError> {
    let s = st.hub.snapshot().await?;
    Ok(Json(list_of(&s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(node: &str, id: &str, addr: &str) -> CatalogService {
        CatalogService {
            node: node.into(),
            address: "10.0.0.9".into(),
            service_id: id.into(),
            service_name: "web".into(),
            service_address: addr.into(),
            service_port: 80,
            ..Default::default()
        }
    }

    fn check(node: &str, id: &str, service: &str, status: HealthStatus) -> HealthCheck {
        HealthCheck {
            node: node.into(),
            check_id: id.into(),
            service_id: service.into(),
            status,
            ..Default::default()
        }
    }

    #[test]
    fn services_get_instances_with_worst_check() {
        let catalog: ServiceCatalog = [
            (
                "web".to_string(),
                (
                    vec!["v1".to_string()],
                    vec![inst("n2", "web2", ""), inst("n1", "web1", "10.1.1.1")],
                ),
            ),
            ("idle".to_string(), (vec![], vec![])),
        ]
        .into();
        let checks = vec![
            check("n2", "serfHealth", "", HealthStatus::Passing),
            check("n2", "http", "web2", HealthStatus::Warning),
            // Another service's check on n1 is not web1's.
            check("n1", "db", "db1", HealthStatus::Critical),
        ];
        let rows = service_list(&catalog, &checks);
        assert_eq!(rows[0].name, "idle");
        assert_eq!(rows[0].status, None);
        let web = &rows[1];
        assert_eq!(web.status, Some(HealthStatus::Warning));
        assert_eq!(web.instances[0].id, "web1");
        assert_eq!(web.instances[0].address, "10.1.1.1");
        assert_eq!(web.instances[0].status, HealthStatus::Passing);
        assert_eq!(web.instances[1].address, "10.0.0.9", "the node's address");
        assert_eq!(web.instances[1].checks.len(), 2);
    }
}
