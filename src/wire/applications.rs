//! App Manager's `appmgr/status/<host>/applications` report: each app this node runs, by name.
//! Written by the node's apps part, read by `servant app ls`, the dashboard and tests. `status`
//! and `health` stay numbers on the wire (App Manager's), and are enums here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// App Manager's `status`: 0 disabled, 1 enabled, 2 unavailable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum AppState {
    /// Stopped: its task left this node.
    Disabled,
    /// Running, or waiting for its next start.
    #[default]
    Enabled,
    /// Cannot be started (a missing directory or user), or crash-looping.
    Unavailable,
}

/// App Manager's `health`: 0 healthy, 1 unhealthy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum AppHealth {
    Healthy,
    /// Not running, or its health command failed.
    #[default]
    Unhealthy,
}

/// A number App Manager never wrote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} is not an App Manager app status/health")]
pub struct BadCode(u8);

impl From<AppState> for u8 {
    fn from(s: AppState) -> u8 {
        match s {
            AppState::Disabled => 0,
            AppState::Enabled => 1,
            AppState::Unavailable => 2,
        }
    }
}

impl TryFrom<u8> for AppState {
    type Error = BadCode;
    fn try_from(n: u8) -> Result<Self, BadCode> {
        match n {
            0 => Ok(AppState::Disabled),
            1 => Ok(AppState::Enabled),
            2 => Ok(AppState::Unavailable),
            other => Err(BadCode(other)),
        }
    }
}

impl From<AppHealth> for u8 {
    fn from(h: AppHealth) -> u8 {
        match h {
            AppHealth::Healthy => 0,
            AppHealth::Unhealthy => 1,
        }
    }
}

impl TryFrom<u8> for AppHealth {
    type Error = BadCode;
    fn try_from(n: u8) -> Result<Self, BadCode> {
        match n {
            0 => Ok(AppHealth::Healthy),
            1 => Ok(AppHealth::Unhealthy),
            other => Err(BadCode(other)),
        }
    }
}

/// One app's state as App Manager's `applications` report shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppStatus {
    pub name: String,
    pub command: String,
    pub status: AppState,
    pub health: AppHealth,
    /// Process group leader's pid while running, else 0.
    pub pid: u32,
    /// First start by this agent.
    pub start_time: String,
    pub last_start_time: String,
    /// When a periodic app (or a restart after backoff) starts next; "" when running.
    pub next_start_time: String,
    pub start_interval_seconds: u64,
    pub user: String,
    pub working_dir: String,
    /// Ours: starts after the first.
    pub restarts: u64,
    /// Ours: how the last run ended ("exit status 1", "spawn failed: ...").
    pub last_exit: String,
}

impl AppStatus {
    /// In words, as `servant app ls` shows it: running, waiting, disabled or unavailable.
    pub fn state_word(&self) -> &'static str {
        match self.status {
            AppState::Disabled => "disabled",
            AppState::Enabled if self.pid > 0 => "running",
            AppState::Enabled => "waiting",
            AppState::Unavailable => "unavailable",
        }
    }
}

/// A node's `applications` report.
pub type Applications = BTreeMap<String, AppStatus>;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_on_the_wire_enums_here() {
        let s = AppStatus {
            name: "web".into(),
            status: AppState::Unavailable,
            health: AppHealth::Healthy,
            pid: 7,
            ..Default::default()
        };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["status"], 2);
        assert_eq!(v["health"], 0);
        assert_eq!(serde_json::from_value::<AppStatus>(v).unwrap(), s);
        let bad = json!({"name": "x", "command": "", "status": 7, "health": 0, "pid": 0,
            "start_time": "", "last_start_time": "", "next_start_time": "",
            "start_interval_seconds": 0, "user": "", "working_dir": "", "restarts": 0,
            "last_exit": ""});
        let e = serde_json::from_value::<AppStatus>(bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("7 is not an App Manager"), "{e}");
    }
}
