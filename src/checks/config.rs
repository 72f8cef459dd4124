//! The checks part's configuration (`[checks]` and `[[checks.guard]]` in the agent's file).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::util::duration::{de_duration, ser_duration};
use crate::util::Invalid;

/// Checks this agent registers, and the native trigger watcher.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ChecksConfig {
    /// `@ENV` and the `cluster/<env>/` of roles; default: the hostname's prefix before `-`.
    pub environment: Option<String>,
    /// Watch this node's checks and run `triggers/` actions on changes.
    pub watch: bool,
    /// A new state must hold this long before its action runs.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub debounce: Duration,
    /// An action still running after this long is killed with its process group.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub trigger_timeout: Duration,
    /// While a check stays warning or critical, its action runs again this often (a start
    /// that failed, or an action written after the check changed); 0 turns it off.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub repeat: Duration,
    /// Services to guard with `servant check service`.
    pub guard: Vec<GuardConfig>,
    /// Run the commands written in `triggers/` keys. When false, a trigger key may only name
    /// one of `actions` (`action:NAME`); any other value is refused and recorded as refused:
    /// whoever can write `triggers/` then chooses when a local action runs, never what runs.
    pub allow_kv_actions: bool,
    /// This node's own actions, by name, for trigger keys whose value is `action:NAME`. They
    /// run as the agent's user (a command in a trigger key runs as `[jobs] default_user`).
    pub actions: BTreeMap<String, String>,
}

impl Default for ChecksConfig {
    fn default() -> Self {
        ChecksConfig {
            environment: None,
            watch: true,
            debounce: Duration::from_secs(1),
            trigger_timeout: Duration::from_secs(60),
            repeat: Duration::from_secs(60),
            guard: Vec::new(),
            allow_kv_actions: true,
            actions: BTreeMap::new(),
        }
    }
}

/// One guarded service: a Consul service with a `servant check service` check.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GuardConfig {
    /// The Consul service (registered by the agent, keys roles and triggers).
    pub consul_service: String,
    /// The local service the check asks about.
    pub linux_service: String,
    /// A status command instead of the service manager (0 running, 3 stopped).
    #[serde(default)]
    pub status_cmd: Option<String>,
    /// Who runs the check.
    #[serde(default)]
    pub mode: GuardMode,
    /// How often the check runs.
    #[serde(
        default = "ten_seconds",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub interval: Duration,
}

/// Who runs a guard's check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuardMode {
    /// The agent runs the check and updates a TTL check (works with any Consul).
    #[default]
    Ttl,
    /// Consul runs `servant check service` (needs Consul's `enable_script_checks`).
    Script,
}

impl std::fmt::Display for GuardMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GuardMode::Ttl => "ttl",
            GuardMode::Script => "script",
        })
    }
}

fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}

impl ChecksConfig {
    /// Values that parse but cannot work.
    pub fn validate(&self) -> Result<(), Invalid> {
        for g in &self.guard {
            if g.interval < Duration::from_secs(1) || g.consul_service.is_empty() {
                return Err(Invalid::new(
                    "checks.guard",
                    "needs a consul_service and an interval of at least 1s",
                ));
            }
        }
        for (name, command) in &self.actions {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
            {
                return Err(Invalid::new(
                    "checks.actions",
                    format!("{name:?}: a name is letters, digits, '_', '.' and '-'"),
                ));
            }
            if command.trim().is_empty() {
                return Err(Invalid::new(
                    "checks.actions",
                    format!("{name:?} has an empty command"),
                ));
            }
        }
        Ok(())
    }
}
