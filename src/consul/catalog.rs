//! `/v1/catalog` and `/v1/health`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::client::{Client, ConsulError, QueryMeta, QueryOptions};

/// A node in the catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CatalogNode {
    #[serde(rename = "ID", default)]
    pub id: String,
    pub node: String,
    pub address: String,
    #[serde(default)]
    pub datacenter: String,
    #[serde(default)]
    pub meta: Option<BTreeMap<String, String>>,
}

/// One instance of a service in the catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CatalogService {
    pub node: String,
    pub address: String,
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    pub service_name: String,
    #[serde(default)]
    pub service_address: String,
    #[serde(default)]
    pub service_port: u16,
    #[serde(default)]
    pub service_tags: Option<Vec<String>>,
    #[serde(default)]
    pub service_meta: Option<BTreeMap<String, String>>,
}

/// A health check's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthCheck {
    pub node: String,
    #[serde(rename = "CheckID")]
    pub check_id: String,
    pub name: String,
    pub status: crate::wire::HealthStatus,
    #[serde(default)]
    pub notes: String,
    #[serde(default)]
    pub output: String,
    #[serde(rename = "ServiceID", default)]
    pub service_id: String,
    #[serde(default)]
    pub service_name: String,
}

/// `/v1/health/service` entry: node, service and checks together.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceEntry {
    pub node: CatalogNode,
    pub service: serde_json::Value,
    pub checks: Vec<HealthCheck>,
}

impl Client {
    /// All catalog nodes; blocking-capable.
    pub async fn catalog_nodes(
        &self,
        q: &QueryOptions,
    ) -> Result<(Vec<CatalogNode>, QueryMeta), ConsulError> {
        let (v, m) = self.get_json("/v1/catalog/nodes", q, &[]).await?;
        Ok((v.unwrap_or_default(), m))
    }

    /// Service names with their tags; blocking-capable.
    pub async fn catalog_services(
        &self,
        q: &QueryOptions,
    ) -> Result<(BTreeMap<String, Vec<String>>, QueryMeta), ConsulError> {
        let (v, m) = self.get_json("/v1/catalog/services", q, &[]).await?;
        Ok((v.unwrap_or_default(), m))
    }

    /// Instances of one service, optionally filtered by tag; blocking-capable.
    pub async fn catalog_service(
        &self,
        name: &str,
        tag: Option<&str>,
        q: &QueryOptions,
    ) -> Result<(Vec<CatalogService>, QueryMeta), ConsulError> {
        let extra: Vec<(&str, String)> = tag
            .map(|t| vec![("tag", t.to_string())])
            .unwrap_or_default();
        let (v, m) = self
            .get_json(&format!("/v1/catalog/service/{name}"), q, &extra)
            .await?;
        Ok((v.unwrap_or_default(), m))
    }

    /// Checks of one node; blocking-capable.
    pub async fn health_node(
        &self,
        node: &str,
        q: &QueryOptions,
    ) -> Result<(Vec<HealthCheck>, QueryMeta), ConsulError> {
        let (v, m) = self
            .get_json(&format!("/v1/health/node/{node}"), q, &[])
            .await?;
        Ok((v.unwrap_or_default(), m))
    }

    /// Checks of one service.
    pub async fn health_checks(
        &self,
        service: &str,
        q: &QueryOptions,
    ) -> Result<(Vec<HealthCheck>, QueryMeta), ConsulError> {
        let (v, m) = self
            .get_json(&format!("/v1/health/checks/{service}"), q, &[])
            .await?;
        Ok((v.unwrap_or_default(), m))
    }

    /// Instances of a service with their node and checks; `passing` keeps healthy ones only.
    pub async fn health_service(
        &self,
        name: &str,
        passing: bool,
        q: &QueryOptions,
    ) -> Result<(Vec<ServiceEntry>, QueryMeta), ConsulError> {
        let extra: Vec<(&str, String)> = if passing {
            vec![("passing", String::new())]
        } else {
            vec![]
        };
        let (v, m) = self
            .get_json(&format!("/v1/health/service/{name}"), q, &extra)
            .await?;
        Ok((v.unwrap_or_default(), m))
    }

    /// Checks in a state (`any`, `passing`, `warning`, `critical`); blocking-capable.
    pub async fn health_state(
        &self,
        state: &str,
        q: &QueryOptions,
    ) -> Result<(Vec<HealthCheck>, QueryMeta), ConsulError> {
        let (v, m) = self
            .get_json(&format!("/v1/health/state/{state}"), q, &[])
            .await?;
        Ok((v.unwrap_or_default(), m))
    }
}
