//! The registrator's settings: keys of the agent's `[docker]` section and `servant agent` flags.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// When the services of an exited container leave Consul (registrator's `-deregister`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Deregister {
    /// Whenever the container stops.
    #[default]
    Always,
    /// Only when it exits with code 0: a failed container's services stay, their checks
    /// failing, until the container is removed.
    OnSuccess,
}

/// A `--deregister` value that is neither `always` nor `on-success`.
#[derive(Debug, thiserror::Error)]
#[error("{0:?}: --deregister takes always or on-success")]
pub struct BadDeregister(pub String);

impl std::str::FromStr for Deregister {
    type Err = BadDeregister;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(Deregister::Always),
            "on-success" => Ok(Deregister::OnSuccess),
            other => Err(BadDeregister(other.to_string())),
        }
    }
}

/// What the registrator does; the agent's configuration composes it into `[docker]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistratorConfig {
    /// Register the services of containers (`--registrator`).
    pub enabled: bool,
    /// The container's IP and exposed port instead of the published one (`-internal`).
    pub internal: bool,
    /// The address to register instead of the node's advertise address (`-ip`).
    pub ip: Option<String>,
    /// Tags added to every service (`-tags`).
    pub tags: Vec<String>,
    /// Only containers with `SERVICE_NAME` (`-explicit`).
    pub explicit: bool,
    pub deregister: Deregister,
    /// Between full comparisons of containers and services (`-resync`).
    pub resync: Duration,
    /// Only containers with this label, `KEY` or `KEY=VALUE` (`--only-label`): several
    /// registrators on one Engine, each for its own containers.
    pub only_label: Option<String>,
}

impl Default for RegistratorConfig {
    fn default() -> Self {
        RegistratorConfig {
            enabled: false,
            internal: false,
            ip: None,
            tags: Vec::new(),
            explicit: false,
            deregister: Deregister::Always,
            resync: Duration::from_secs(30),
            only_label: None,
        }
    }
}
