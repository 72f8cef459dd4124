//! The apps part's configuration (`[apps]` in the agent's file).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::util::duration::{de_duration, ser_duration};
use crate::util::Invalid;

/// Replicated apps: this node's reports, its part in leader election, its apps.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AppsConfig {
    /// Take part: report, stand for leader, run the apps placed here.
    pub enabled: bool,
    /// This node's labels, matched by tasks' `labels`.
    pub labels: std::collections::BTreeMap<String, String>,
    /// TTL of the apps session that holds the reports and the leader lock (App Manager's
    /// `session_TTL`). Tied to serfHealth too, so a dead node is noticed by Consul's failure
    /// detection, not by this TTL.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub session_ttl: Duration,
    /// How often the reports are rewritten (App Manager's `report_interval`); an app's change
    /// of state rewrites them at once.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub report_interval: Duration,
    /// The leader's safety re-check (App Manager's `topology_interval`); it reconciles on
    /// every change anyway.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub topology_interval: Duration,
}

impl Default for AppsConfig {
    fn default() -> Self {
        AppsConfig {
            enabled: true,
            labels: Default::default(),
            session_ttl: Duration::from_secs(30),
            report_interval: Duration::from_secs(10),
            topology_interval: Duration::from_secs(30),
        }
    }
}

impl AppsConfig {
    /// How long the apps session may go unconfirmed before this node stops its apps: the TTL
    /// less 5 s (25 s by default), at least half the TTL.
    pub fn fence_after(&self) -> Duration {
        self.session_ttl
            .saturating_sub(Duration::from_secs(5))
            .max(self.session_ttl / 2)
    }

    /// Values that parse but cannot work.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.session_ttl < Duration::from_secs(10)
            || self.session_ttl > Duration::from_secs(86400)
        {
            return Err(Invalid::new(
                "apps.session_ttl",
                "Consul accepts 10s to 24h",
            ));
        }
        if self.report_interval < Duration::from_secs(1)
            || self.topology_interval < Duration::from_secs(1)
        {
            return Err(Invalid::new(
                "apps.report_interval/topology_interval",
                "must be at least 1s",
            ));
        }
        Ok(())
    }
}
