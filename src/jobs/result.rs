//! The result document written to `jdone_jid/...`. Field names keep consul_servant's.

use serde::{Deserialize, Serialize};

use super::spec::{JobSpec, JobType, ServiceSpec};

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
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl JobResult {
    /// A result skeleton for a parsed job.
    pub fn for_job(job: &JobSpec, node: &str, attempt: u64) -> Self {
        JobResult {
            id: job.id.clone(),
            name: job.name.clone(),
            command: if job.job_type == JobType::Exec && job.command.is_empty() {
                job.argv.join(" ")
            } else {
                job.command.clone()
            },
            job_type: serde_json::to_value(job.job_type)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            no_wait: job.no_wait,
            execution_node: node.to_string(),
            timeout: job.timeout.as_secs(),
            services: job.services.clone(),
            attempt,
            exit_code: -1,
            ..Default::default()
        }
    }

    pub fn status_str(&self) -> &'static str {
        self.status.map(|s| s.as_str()).unwrap_or("unknown")
    }
}

/// Cuts text to at most `cap` bytes on a character boundary; returns whether it cut.
pub fn cap_text(s: &mut String, cap: usize) -> bool {
    if s.len() <= cap {
        return false;
    }
    let mut end = cap;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    true
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
    fn cap_respects_utf8() {
        let mut s = "héllo".to_string();
        assert!(cap_text(&mut s, 2));
        assert_eq!(s, "h");
        let mut t = "abc".to_string();
        assert!(!cap_text(&mut t, 3));
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
}
