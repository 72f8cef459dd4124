//! `/v1/services`: every service in the catalog with its instances and their health, from
//! Consul's `/v1/health/service/<name>`.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use super::{ApiError, ApiState};
use crate::consul::{QueryOptions, ServiceEntry};
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

fn instance(e: &ServiceEntry) -> Instance {
    let s = &e.service;
    let address = s["Address"]
        .as_str()
        .filter(|a| !a.is_empty())
        .unwrap_or(&e.node.address)
        .to_string();
    Instance {
        node: e.node.node.clone(),
        id: s["ID"].as_str().unwrap_or_default().to_string(),
        address,
        port: s["Port"].as_u64().unwrap_or(0),
        status: e
            .checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(HealthStatus::Passing),
        checks: e
            .checks
            .iter()
            .map(|c| (c.check_id.clone(), c.status))
            .collect(),
    }
}

/// The rows of `/v1/services`, by name: the catalog's names and tags, and each name's
/// health entries.
pub fn service_list(
    names: &BTreeMap<String, Vec<String>>,
    health: &BTreeMap<String, Vec<ServiceEntry>>,
) -> Vec<ServiceRow> {
    names
        .iter()
        .map(|(name, tags)| {
            let mut instances: Vec<Instance> = health
                .get(name)
                .map(|es| es.iter().map(instance).collect())
                .unwrap_or_default();
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

/// `GET /v1/services`: one catalog read, then one health read per service.
pub async fn list(State(st): State<ApiState>) -> Result<Json<ServiceList>, ApiError> {
    let qo = QueryOptions::default();
    let (names, _) = st.client.catalog_services(&qo).await?;
    let mut health = BTreeMap::new();
    for name in names.keys() {
        let (entries, _) = st.client.health_service(name, false, &qo).await?;
        health.insert(name.clone(), entries);
    }
    Ok(Json(ServiceList {
        services: service_list(&names, &health),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consul::{CatalogNode, HealthCheck};
    use serde_json::json;

    fn entry(node: &str, id: &str, addr: &str, checks: &[(&str, HealthStatus)]) -> ServiceEntry {
        ServiceEntry {
            node: CatalogNode {
                node: node.into(),
                address: "10.0.0.9".into(),
                ..Default::default()
            },
            service: json!({"ID": id, "Address": addr, "Port": 80}),
            checks: checks
                .iter()
                .map(|(c, s)| HealthCheck {
                    node: node.into(),
                    check_id: (*c).into(),
                    status: *s,
                    ..Default::default()
                })
                .collect(),
        }
    }

    #[test]
    fn services_get_instances_with_worst_check() {
        let names: BTreeMap<String, Vec<String>> = [
            ("web".to_string(), vec!["v1".to_string()]),
            ("idle".to_string(), vec![]),
        ]
        .into();
        let health: BTreeMap<String, Vec<ServiceEntry>> = [(
            "web".to_string(),
            vec![
                entry(
                    "n2",
                    "web2",
                    "",
                    &[
                        ("serfHealth", HealthStatus::Passing),
                        ("http", HealthStatus::Warning),
                    ],
                ),
                entry("n1", "web1", "10.1.1.1", &[]),
            ],
        )]
        .into();
        let rows = service_list(&names, &health);
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
