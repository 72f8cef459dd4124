//! The result document written to `jdone_jid/...` is `wire::job`'s; here is how the worker
//! starts one for a job, and the cap on its captured output.

pub use crate::wire::job::{JobResult, JobStatus};

use super::spec::{JobSpec, JobType};

// The job spec is this feature's, so a result built from one is made here; the document is wire's.
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
    fn cap_respects_utf8() {
        let mut s = "héllo".to_string();
        assert!(cap_text(&mut s, 2));
        assert_eq!(s, "h");
        let mut t = "abc".to_string();
        assert!(!cap_text(&mut t, 3));
    }
}
