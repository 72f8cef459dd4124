//! `/v1/event`: fire and list user events.

use serde::{Deserialize, Serialize};

use super::client::{Client, ConsulError, QueryMeta, QueryOptions};

/// A user event. Its list index is a hash: compare with `!=`, never `<`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct UserEvent {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    #[serde(default, deserialize_with = "super::kv::de_b64")]
    pub payload: Vec<u8>,
    #[serde(rename = "LTime", default)]
    pub ltime: u64,
}

impl Client {
    /// Fires a user event with a payload.
    pub async fn event_fire(&self, name: &str, payload: &[u8]) -> Result<UserEvent, ConsulError> {
        let path = format!("/v1/event/fire/{name}");
        let r = self
            .request(reqwest::Method::PUT, &path)
            .body(payload.to_vec());
        let a = self.send("PUT", &path, r).await?;
        Client::json(&path, &a)
    }

    /// Recent events, optionally of one name.
    pub async fn event_list(
        &self,
        name: Option<&str>,
        q: &QueryOptions,
    ) -> Result<(Vec<UserEvent>, QueryMeta), ConsulError> {
        let extra: Vec<(&str, String)> = name
            .map(|n| vec![("name", n.to_string())])
            .unwrap_or_default();
        let (v, m) = self.get_json("/v1/event/list", q, &extra).await?;
        Ok((v.unwrap_or_default(), m))
    }
}
