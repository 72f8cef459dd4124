//! A check's verdict: Nagios-style exit code (0 passing, 1 warning, 2 critical) and one JSON
//! line on stdout. Internal errors are critical, never warning. Pure.

use serde_json::{Map, Value};

use crate::wire::HealthStatus;

/// What a check found.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The state to report.
    pub status: HealthStatus,
    /// One human sentence: what was expected and what was found.
    pub message: String,
    /// Facts behind the verdict (role, expected, running, counts...), printed in the JSON line.
    pub details: Map<String, Value>,
}

impl Verdict {
    pub fn new(status: HealthStatus, message: impl Into<String>) -> Verdict {
        Verdict {
            status,
            message: message.into(),
            details: Map::new(),
        }
    }

    /// An internal error (bad role data, unreadable /proc, Consul unreachable): critical.
    pub fn error(message: impl std::fmt::Display) -> Verdict {
        Verdict::new(HealthStatus::Critical, message.to_string())
    }

    /// Adds a fact to the JSON line.
    pub fn with(mut self, key: &str, v: impl Into<Value>) -> Verdict {
        self.details.insert(key.to_string(), v.into());
        self
    }

    /// The one JSON line: `{"status": ..., "message": ..., <details>}`.
    pub fn json_line(&self) -> String {
        let mut m = self.details.clone();
        m.insert("status".into(), Value::from(self.status.as_str()));
        m.insert("message".into(), Value::from(self.message.clone()));
        Value::Object(m).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_and_json() {
        let v = Verdict::new(HealthStatus::Warning, "two of three").with("count", 2);
        assert_eq!(v.status.exit_code(), 1);
        let j: Value = serde_json::from_str(&v.json_line()).unwrap();
        assert_eq!(j["status"], "warning");
        assert_eq!(j["count"], 2);
        assert_eq!(Verdict::error("x").status.exit_code(), 2);
        assert_eq!(
            HealthStatus::parse("critical"),
            Some(HealthStatus::Critical)
        );
        assert_eq!(HealthStatus::parse("maintenance"), None);
    }
}
