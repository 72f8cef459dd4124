//! Consul's three health states, one type for every reader and writer: checks, their verdicts,
//! roles, triggers, templates' state filters and the embedded server.

use serde::{Deserialize, Serialize};

/// A check's state, in Consul's names. Maintenance mode is `Critical`, as in Consul.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Passing,
    Warning,
    /// Also what a check is before anything says otherwise.
    #[default]
    Critical,
}

impl HealthStatus {
    /// The exit code Consul's script checks read (Nagios's).
    pub fn exit_code(self) -> i32 {
        match self {
            HealthStatus::Passing => 0,
            HealthStatus::Warning => 1,
            HealthStatus::Critical => 2,
        }
    }

    /// Consul's name of the state.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Passing => "passing",
            HealthStatus::Warning => "warning",
            HealthStatus::Critical => "critical",
        }
    }

    /// Parses Consul's name ("passing", "warning", "critical").
    pub fn parse(s: &str) -> Option<HealthStatus> {
        match s {
            "passing" => Some(HealthStatus::Passing),
            "warning" => Some(HealthStatus::Warning),
            "critical" => Some(HealthStatus::Critical),
            _ => None,
        }
    }

    /// The state a script check's exit code means: 0 passing, 1 warning, anything else
    /// critical (Consul's rule).
    pub fn from_exit_code(code: Option<i32>) -> HealthStatus {
        match code {
            Some(0) => HealthStatus::Passing,
            Some(1) => HealthStatus::Warning,
            _ => HealthStatus::Critical,
        }
    }
}

/// Compares with Consul's name, as in `check.status == "critical"`.
impl PartialEq<&str> for HealthStatus {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// The same through references (`checks.iter().all(|c| c == "passing")`).
impl PartialEq<str> for HealthStatus {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl std::fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_json_and_text() {
        for s in [
            HealthStatus::Passing,
            HealthStatus::Warning,
            HealthStatus::Critical,
        ] {
            let j = serde_json::to_string(&s).unwrap();
            assert_eq!(j, format!("\"{}\"", s.as_str()));
            assert_eq!(serde_json::from_str::<HealthStatus>(&j).unwrap(), s);
            assert_eq!(HealthStatus::parse(s.as_str()), Some(s));
        }
        assert!(serde_json::from_str::<HealthStatus>("\"maintenance\"").is_err());
    }
}
