//! The job documents: the result written to `jdone_jid/...` (field names keep consul_servant's)
//! and the view of a job that `show`, `jobs` and the dashboard print (queued, running, done),
//! built from a job key's entry and its result.

use serde::{Deserialize, Serialize};

use super::ServiceSpec;
use crate::util::time::rfc3339_ns;

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Rejected,
    Lost,
    /// A NoWait job whose process was started; completed later.
    Started,
}

impl JobStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::TimedOut => "timed_out",
            JobStatus::Rejected => "rejected",
            JobStatus::Lost => "lost",
            JobStatus::Started => "started",
        }
    }
    /// Whether the job will not change any more.
    pub fn is_final(&self) -> bool {
        !matches!(self, JobStatus::Running | JobStatus::Started)
    }
}

/// A job's result, as stored in KV.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct JobResult {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub command: String,
    /// stdout, capped; see `OutputTruncated`.
    pub output: String,
    /// stderr, capped; see `OutputErrorsTruncated`.
    pub output_errors: String,
    #[serde(rename = "Type")]
    pub job_type: String,
    pub no_wait: bool,
    /// Nanoseconds since the epoch.
    pub start_time: i64,
    pub end_time: i64,
    pub start_time_str: String,
    pub end_time_str: String,
    pub execution_node: String,
    /// Seconds.
    pub timeout: u64,
    /// Why it failed, in words; empty on success.
    pub exit_errors: String,
    pub services: Vec<ServiceSpec>,
    /// The process's exit code; -1 when it did not exit by itself (signal, timeout, rejection).
    pub exit_code: i32,
    pub status: Option<JobStatus>,
    /// 1 for the first run; LockIndex of the job key.
    pub attempt: u64,
    pub output_truncated: bool,
    pub output_errors_truncated: bool,
    /// Process group of a started NoWait job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Processes the command left running in its group when it exited (started in the
    /// background), stopped then: a job's processes end with it.
    #[serde(skip_serializing_if = "is_zero")]
    pub leftover_processes: usize,
    /// A docker job's container (absent for processes).
    #[serde(rename = "ContainerID", skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// A docker job's image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The container was ended by the kernel's OOM killer (over its memory limit).
    #[serde(rename = "OOMKilled", skip_serializing_if = "is_false")]
    pub oom_killed: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl JobResult {
    pub fn status_str(&self) -> &'static str {
        self.status.map(|s| s.as_str()).unwrap_or("unknown")
    }
}

/// The `Image` of a job document (field names match case-insensitively), if it has one.
pub fn image_of(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("Image"))
        .and_then(|(_, v)| v.as_str().map(str::to_string))
}

/// A job's state as an operator sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "State", rename_all = "lowercase")]
pub enum JobView {
    /// Waiting in its queue; `Attempts` so far.
    Queued {
        #[serde(rename = "Key")]
        key: String,
        #[serde(rename = "Attempts")]
        attempts: u64,
    },
    /// Held by a node's session.
    Running {
        #[serde(rename = "Key")]
        key: String,
        #[serde(rename = "Node")]
        node: String,
        #[serde(rename = "Since")]
        since: String,
        #[serde(rename = "Attempt")]
        attempt: u64,
        /// A docker job's image, from the job document.
        #[serde(rename = "Image", default, skip_serializing_if = "Option::is_none")]
        image: Option<String>,
        /// A docker job's container, from its node's `resource` report (absent until the
        /// node has reported it).
        #[serde(
            rename = "ContainerID",
            default,
            skip_serializing_if = "Option::is_none"
        )]
        container_id: Option<String>,
    },
    /// A result exists (it may be `started` for a NoWait job still running).
    Done {
        #[serde(rename = "Key")]
        key: String,
        #[serde(rename = "Result")]
        result: Box<JobResult>,
    },
}

impl JobView {
    /// From the job key's entry: `holder_node` is the node of the session holding it, and
    /// `flags` carries the claim time in milliseconds.
    pub fn from_entry(key: &str, lock_index: u64, flags: u64, holder_node: Option<&str>) -> Self {
        match holder_node {
            Some(n) => JobView::Running {
                key: key.to_string(),
                node: n.to_string(),
                since: if flags > 0 {
                    rfc3339_ns((flags as i64).saturating_mul(1_000_000))
                } else {
                    "unknown".into()
                },
                attempt: lock_index,
                image: None,
                container_id: None,
            },
            None => JobView::Queued {
                key: key.to_string(),
                attempts: lock_index,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_serialize_as_documented() {
        let v = serde_json::to_value(JobStatus::TimedOut).unwrap();
        assert_eq!(v, "timed_out");
    }

    #[test]
    fn result_keeps_consul_servant_names() {
        let r = JobResult {
            id: "x".into(),
            ..Default::default()
        };
        let v = serde_json::to_value(&r).unwrap();
        for k in [
            "ID",
            "Name",
            "Command",
            "Output",
            "OutputErrors",
            "Type",
            "NoWait",
            "StartTime",
            "EndTime",
            "StartTimeStr",
            "EndTimeStr",
            "ExecutionNode",
            "Timeout",
            "ExitErrors",
            "Services",
            "ExitCode",
            "Status",
            "Attempt",
            "OutputTruncated",
            "OutputErrorsTruncated",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
    }

    #[test]
    fn from_entry_reads_claim_time_from_flags() {
        let v = JobView::from_entry("jobs/a", 1, 1_700_000_000_123, Some("node2"));
        assert!(matches!(
            &v,
            JobView::Running { node, since, attempt: 1, .. }
                if node == "node2" && since == "2023-11-14T22:13:20.123Z"
        ));
        assert!(matches!(
            JobView::from_entry("jobs/a", 0, 0, None),
            JobView::Queued { .. }
        ));
    }

    #[test]
    fn views_keep_their_json_shape() {
        let v = JobView::from_entry("jobs/a", 2, 0, None);
        assert_eq!(
            serde_json::to_value(&v).unwrap(),
            serde_json::json!({"State": "queued", "Key": "jobs/a", "Attempts": 2})
        );
    }
}
