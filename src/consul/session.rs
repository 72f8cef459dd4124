//! `/v1/session`: create, renew, destroy, info, list, node.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::client::{Client, ConsulError, QueryMeta, QueryOptions};

/// What happens to a session's locks when it is invalidated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SessionBehavior {
    /// Locks are released; the keys stay (jobs: another node may retry).
    #[default]
    Release,
    /// Locked keys are deleted (App Manager's status reports).
    Delete,
}

/// A session to create.
#[derive(Debug, Clone, Default)]
pub struct SessionRequest {
    /// Human name; the agent uses it to find live servants.
    pub name: String,
    /// Node the session belongs to; None means the local agent's node.
    pub node: Option<String>,
    /// Health checks that invalidate the session; None gives Consul's default (serfHealth).
    pub checks: Option<Vec<String>>,
    /// TTL; Consul refuses less than 10 s.
    pub ttl: Option<Duration>,
    /// Behaviour on invalidation.
    pub behavior: SessionBehavior,
    /// How long a released lock cannot be re-acquired.
    pub lock_delay: Option<Duration>,
}

/// A session as Consul describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SessionEntry {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub node: String,
    #[serde(default, rename = "TTL")]
    pub ttl: String,
    #[serde(default)]
    pub behavior: String,
    /// Lock-delay in nanoseconds.
    #[serde(default)]
    pub lock_delay: u64,
    #[serde(default)]
    pub create_index: u64,
    /// `NodeChecks` since Consul 1.7, `Checks` before.
    #[serde(default, alias = "NodeChecks")]
    pub checks: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct Created {
    #[serde(rename = "ID")]
    id: String,
}

fn go_secs(d: Duration) -> String {
    format!("{}s", d.as_secs().max(1))
}

impl Client {
    /// Creates a session and returns its ID.
    pub async fn session_create(&self, req: &SessionRequest) -> Result<String, ConsulError> {
        let mut body = json!({ "Name": req.name, "Behavior": req.behavior });
        if let Some(n) = &req.node {
            body["Node"] = json!(n);
        }
        if let Some(c) = &req.checks {
            body["Checks"] = json!(c);
        }
        if let Some(t) = req.ttl {
            body["TTL"] = json!(go_secs(t));
        }
        if let Some(d) = req.lock_delay {
            body["LockDelay"] = json!(format!("{}ms", d.as_millis()));
        }
        let c: Created = self
            .put_json("/v1/session/create", Some(&body), &[])
            .await?;
        Ok(c.id)
    }

    /// Renews a TTL session. `Ok(None)` means the session no longer exists (invalidated).
    pub async fn session_renew(&self, id: &str) -> Result<Option<SessionEntry>, ConsulError> {
        let path = format!("/v1/session/renew/{id}");
        let resp = self
            .send("PUT", &path, self.request(reqwest::Method::PUT, &path))
            .await?;
        if resp.status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let v: Vec<SessionEntry> = Client::json(&path, &resp)?;
        self.metrics().renewed();
        Ok(v.into_iter().next())
    }

    /// Destroys a session, releasing or deleting its locks per its behaviour.
    pub async fn session_destroy(&self, id: &str) -> Result<(), ConsulError> {
        self.put_unit(&format!("/v1/session/destroy/{id}"), None, &[])
            .await
    }

    /// One session, or None if it does not exist; blocking-capable.
    pub async fn session_info(
        &self,
        id: &str,
        q: &QueryOptions,
    ) -> Result<(Option<SessionEntry>, QueryMeta), ConsulError> {
        let (v, m) = self
            .get_json::<Vec<SessionEntry>>(&format!("/v1/session/info/{id}"), q, &[])
            .await?;
        Ok((v.and_then(|v| v.into_iter().next()), m))
    }

    /// Every session in the datacenter; blocking-capable.
    pub async fn session_list(
        &self,
        q: &QueryOptions,
    ) -> Result<(Vec<SessionEntry>, QueryMeta), ConsulError> {
        let (v, m) = self
            .get_json::<Vec<SessionEntry>>("/v1/session/list", q, &[])
            .await?;
        Ok((v.unwrap_or_default(), m))
    }

    /// The sessions of one node.
    pub async fn session_node(
        &self,
        node: &str,
        q: &QueryOptions,
    ) -> Result<(Vec<SessionEntry>, QueryMeta), ConsulError> {
        let (v, m) = self
            .get_json::<Vec<SessionEntry>>(&format!("/v1/session/node/{node}"), q, &[])
            .await?;
        Ok((v.unwrap_or_default(), m))
    }
}
