//! The services that jobs and apps declare (consul_servant's `Services` shape), registered on
//! the local Consul agent while they run.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// A service check, in consul_servant's (and Consul's) names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CheckSpec {
    #[serde(rename = "TTL", default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    #[serde(rename = "HTTP", default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    #[serde(rename = "TCP", default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// A service the job registers while it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceSpec {
    #[serde(rename = "ID", default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// A number or a numeric string ("80", as consul_servant's README writes it).
    #[serde(default, deserialize_with = "de_port")]
    pub port: Option<u16>,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub check: Option<CheckSpec>,
}

impl ServiceSpec {
    /// The service name: `Name`, else `ID`.
    pub fn name(&self) -> &str {
        self.name
            .as_deref()
            .or(self.id.as_deref())
            .unwrap_or_default()
    }
    /// The service ID: `ID`, else `Name`.
    pub fn id(&self) -> &str {
        self.id
            .as_deref()
            .or(self.name.as_deref())
            .unwrap_or_default()
    }
}

fn de_port<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    use serde::de::Error;
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("port {n} is not in 0..=65535"))),
        Value::String(s) if s.trim().is_empty() => Ok(None),
        Value::String(s) => s
            .trim()
            .parse::<u16>()
            .map(Some)
            .map_err(|_| D::Error::custom(format!("port {s:?} is not a number in 0..=65535"))),
        other => Err(D::Error::custom(format!(
            "port must be a number or a numeric string, not {other}"
        ))),
    }
}
