//! `/v1/agent` and `/v1/status`: the local agent, membership, services and checks.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::client::{Client, ConsulError, QueryOptions};

/// A gossip member as `/v1/agent/members` lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentMember {
    pub name: String,
    pub addr: String,
    pub port: u16,
    /// Serf status: 1 alive, 2 leaving, 3 left, 4 failed.
    pub status: u8,
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
}

impl AgentMember {
    pub fn is_alive(&self) -> bool {
        self.status == 1
    }
    pub fn status_name(&self) -> &'static str {
        match self.status {
            1 => "alive",
            2 => "leaving",
            3 => "left",
            4 => "failed",
            _ => "none",
        }
    }
}

/// A check attached to a service registration, in Consul's own field names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentCheckRegistration {
    #[serde(rename = "CheckID", skip_serializing_if = "Option::is_none")]
    pub check_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "TTL", skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    #[serde(rename = "HTTP", skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    #[serde(rename = "TCP", skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(rename = "ServiceID", skip_serializing_if = "Option::is_none")]
    pub service_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deregister_critical_service_after: Option<String>,
}

/// A service registration for `/v1/agent/service/register`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentServiceRegistration {
    #[serde(rename = "ID", skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub meta: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<AgentCheckRegistration>,
}

impl AgentServiceRegistration {
    /// The registration of a service a job or an app declares, with `meta` saying who
    /// registered it (so leftovers of an earlier run can be found). A check without `Interval`
    /// runs every 10s.
    pub fn from_spec(
        spec: &crate::wire::ServiceSpec,
        meta: std::collections::BTreeMap<String, String>,
    ) -> Self {
        let checks = spec
            .check
            .as_ref()
            .map(|c| {
                let interval = c
                    .interval
                    .clone()
                    .or_else(|| (c.ttl.is_none()).then(|| "10s".to_string()));
                vec![AgentCheckRegistration {
                    name: Some(format!("{} check", spec.name())),
                    ttl: c.ttl.clone(),
                    http: c.http.clone(),
                    tcp: c.tcp.clone(),
                    args: c.args.clone(),
                    interval: if c.ttl.is_some() { None } else { interval },
                    timeout: c
                        .timeout
                        .clone()
                        .filter(|t| crate::util::duration::parse_duration(t).is_ok()),
                    ..Default::default()
                }]
            })
            .unwrap_or_default();
        AgentServiceRegistration {
            id: Some(spec.id().to_string()),
            name: spec.name().to_string(),
            tags: spec.tags.clone(),
            port: spec.port,
            address: spec.address.clone(),
            meta,
            checks,
        }
    }
}

/// A service as the local agent lists it (`/v1/agent/services`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentService {
    #[serde(rename = "ID")]
    pub id: String,
    pub service: String,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    #[serde(default)]
    pub meta: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub port: u16,
    #[serde(default)]
    pub address: String,
}

/// The three TTL check updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckUpdate {
    Pass,
    Warn,
    Fail,
}

/// What servant reads of the local agent's `/v1/agent/self`, parsed once: the node name, the
/// exposure `servant doctor` and the start warning judge, the address the registrator
/// advertises.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentSelf {
    /// `Config.NodeName`; empty when the answer has none.
    pub node_name: String,
    /// `Config.Datacenter`.
    pub datacenter: String,
    /// `Member.Addr`: the LAN advertise address; empty when the answer has none.
    pub advertise_addr: String,
    /// `DebugConfig.ACLsEnabled`: whether Consul enforces ACLs.
    pub acls_enabled: bool,
    /// `DebugConfig.HTTPAddrs`: where its HTTP API listens (`tcp://IP:PORT`, `unix://...`);
    /// empty from the embedded server.
    pub http_addrs: Vec<String>,
}

impl AgentSelf {
    /// From the JSON answer; missing fields are left empty (Consul versions differ).
    pub fn from_json(v: &Value) -> AgentSelf {
        let text = |p: &str| {
            v.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        AgentSelf {
            node_name: text("/Config/NodeName"),
            datacenter: text("/Config/Datacenter"),
            advertise_addr: text("/Member/Addr"),
            acls_enabled: v["DebugConfig"]["ACLsEnabled"].as_bool().unwrap_or(false),
            http_addrs: v["DebugConfig"]["HTTPAddrs"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// The node name, or an error saying the answer had none.
    pub fn node(&self) -> Result<&str, ConsulError> {
        Self::required(&self.node_name, "no Config.NodeName")
    }

    /// The LAN advertise address, or an error saying the answer had none.
    pub fn advertise(&self) -> Result<&str, ConsulError> {
        Self::required(&self.advertise_addr, "no Member.Addr")
    }

    fn required<'a>(field: &'a str, missing: &str) -> Result<&'a str, ConsulError> {
        if field.is_empty() {
            return Err(ConsulError::Decode {
                path: "/v1/agent/self".into(),
                detail: missing.into(),
            });
        }
        Ok(field)
    }
}

impl Client {
    /// `/v1/agent/self`: the agent's configuration and member record.
    pub async fn agent_self(&self) -> Result<AgentSelf, ConsulError> {
        let (v, _) = self
            .get_json::<Value>("/v1/agent/self", &QueryOptions::default(), &[])
            .await?;
        Ok(AgentSelf::from_json(&v.unwrap_or(Value::Null)))
    }

    /// Whether Consul enforces ACLs, from the local agent's configuration.
    pub async fn acls_enabled(&self) -> Result<bool, ConsulError> {
        Ok(self.agent_self().await?.acls_enabled)
    }

    /// Who this client's token is: `(AccessorID, Description)` from `/v1/acl/token/self` (any
    /// valid token may read itself). Never the secret.
    pub async fn acl_token_self(&self) -> Result<(String, String), ConsulError> {
        let (v, _) = self
            .get_json::<Value>("/v1/acl/token/self", &QueryOptions::default(), &[])
            .await?;
        let v = v.unwrap_or(Value::Null);
        let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        Ok((field("AccessorID"), field("Description")))
    }

    /// The local agent's node name.
    pub async fn agent_node_name(&self) -> Result<String, ConsulError> {
        Ok(self.agent_self().await?.node()?.to_string())
    }

    /// The local agent's LAN advertise address (its member record's `Addr`).
    pub async fn agent_advertise_addr(&self) -> Result<String, ConsulError> {
        Ok(self.agent_self().await?.advertise()?.to_string())
    }

    /// LAN members as seen by the local agent's gossip.
    pub async fn agent_members(&self) -> Result<Vec<AgentMember>, ConsulError> {
        let (v, _) = self
            .get_json::<Vec<AgentMember>>("/v1/agent/members", &QueryOptions::default(), &[])
            .await?;
        Ok(v.unwrap_or_default())
    }

    /// Asks the local agent to join `addr`.
    pub async fn agent_join(&self, addr: &str) -> Result<(), ConsulError> {
        self.put_unit(&format!("/v1/agent/join/{addr}"), None, &[])
            .await
    }

    /// Forces a failed node into the left state (`node eject`).
    pub async fn agent_force_leave(&self, node: &str) -> Result<(), ConsulError> {
        self.put_unit(&format!("/v1/agent/force-leave/{node}"), None, &[])
            .await
    }

    /// Registers a service, with its checks, on the local agent.
    pub async fn agent_service_register(
        &self,
        reg: &AgentServiceRegistration,
    ) -> Result<(), ConsulError> {
        let body = serde_json::to_value(reg).map_err(|e| ConsulError::Decode {
            path: "service register".into(),
            detail: e.to_string(),
        })?;
        self.put_unit("/v1/agent/service/register", Some(&body), &[])
            .await
    }

    /// Deregisters a service from the local agent.
    pub async fn agent_service_deregister(&self, id: &str) -> Result<(), ConsulError> {
        self.put_unit(&format!("/v1/agent/service/deregister/{id}"), None, &[])
            .await
    }

    /// Services registered on the local agent, keyed by ID.
    pub async fn agent_services(
        &self,
    ) -> Result<std::collections::BTreeMap<String, Value>, ConsulError> {
        let (v, _) = self
            .get_json("/v1/agent/services", &QueryOptions::default(), &[])
            .await?;
        Ok(v.unwrap_or_default())
    }

    /// Services registered on the local agent, typed.
    pub async fn agent_service_list(&self) -> Result<Vec<AgentService>, ConsulError> {
        let (v, _) = self
            .get_json::<std::collections::BTreeMap<String, AgentService>>(
                "/v1/agent/services",
                &QueryOptions::default(),
                &[],
            )
            .await?;
        Ok(v.unwrap_or_default().into_values().collect())
    }

    /// The local agent's checks by ID, as the agent itself sees them: fresher than the
    /// catalog, which gets output-only changes only every `check_update_interval`.
    pub async fn agent_checks(
        &self,
    ) -> Result<std::collections::BTreeMap<String, crate::consul::HealthCheck>, ConsulError> {
        let (v, _) = self
            .get_json("/v1/agent/checks", &QueryOptions::default(), &[])
            .await?;
        Ok(v.unwrap_or_default())
    }

    /// Registers a standalone check on the local agent.
    pub async fn agent_check_register(
        &self,
        reg: &AgentCheckRegistration,
    ) -> Result<(), ConsulError> {
        let body = serde_json::to_value(reg).map_err(|e| ConsulError::Decode {
            path: "check register".into(),
            detail: e.to_string(),
        })?;
        self.put_unit("/v1/agent/check/register", Some(&body), &[])
            .await
    }

    /// Updates a TTL check: pass, warn or fail, with an optional note. Always a PUT.
    pub async fn agent_check_update(
        &self,
        check_id: &str,
        update: CheckUpdate,
        note: Option<&str>,
    ) -> Result<(), ConsulError> {
        let verb = match update {
            CheckUpdate::Pass => "pass",
            CheckUpdate::Warn => "warn",
            CheckUpdate::Fail => "fail",
        };
        let extra: Vec<(&str, String)> = note
            .map(|n| vec![("note", n.to_string())])
            .unwrap_or_default();
        self.put_unit(&format!("/v1/agent/check/{verb}/{check_id}"), None, &extra)
            .await
    }

    /// `/v1/status/leader`: the Raft leader's address, empty while there is none.
    pub async fn status_leader(&self) -> Result<String, ConsulError> {
        let (v, _) = self
            .get_json::<String>("/v1/status/leader", &QueryOptions::default(), &[])
            .await?;
        Ok(v.unwrap_or_default())
    }

    /// `/v1/status/peers`: the Raft peers.
    pub async fn status_peers(&self) -> Result<Vec<String>, ConsulError> {
        let (v, _) = self
            .get_json::<Vec<String>>("/v1/status/peers", &QueryOptions::default(), &[])
            .await?;
        Ok(v.unwrap_or_default())
    }
}
