//! A check's verdict: Nagios-style exit code (0 passing, 1 warning, 2 critical) and one JSON
//! line on stdout. Internal errors are critical, never warning. Pure.

use serde::Serialize;
use serde_json::{Map, Value};

/// Consul's three check states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Passing,
    Warning,
    Critical,
}

impl Status {
    /// The exit code Consul's script checks read.
    pub fn exit_code(self) -> i32 {
        match self {
            Status::Passing => 0,
            Status::Warning => 1,
            Status::Critical => 2,
        }
    }

    /// Consul's name of the state.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passing => "passing",
            Status::Warning => "warning",
            Status::Critical => "critical",
        }
    }

    /// Parses Consul's name ("passing", "warning", "critical").
    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "passing" => Some(Status::Passing),
            "warning" => Some(Status::Warning),
            "critical" => Some(Status::Critical),
            _ => None,
        }
    }
}

/// What a check found.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The state to report.
    pub status: Status,
    /// One human sentence: what was expected and what was found.
    pub message: String,
    /// Facts behind the verdict (role, expected, running, counts...), printed in the JSON line.
    pub details: Map<String, Value>,
}

impl Verdict {
    pub fn new(status: Status, message: impl Into<String>) -> Verdict {
        Verdict {
            status,
            message: message.into(),
            details: Map::new(),
        }
    }

    /// An internal error (bad role data, unreadable /proc, Consul unreachable): critical.
    pub fn error(message: impl Into<String>) -> Verdict {
        Verdict::new(Status::Critical, message)
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
        let v = Verdict::new(Status::Warning, "two of three").with("count", 2);
        assert_eq!(v.status.exit_code(), 1);
        let j: Value = serde_json::from_str(&v.json_line()).unwrap();
        assert_eq!(j["status"], "warning");
        assert_eq!(j["count"], 2);
        assert_eq!(Verdict::error("x").status.exit_code(), 2);
        assert_eq!(Status::parse("critical"), Some(Status::Critical));
        assert_eq!(Status::parse("maintenance"), None);
    }
}
