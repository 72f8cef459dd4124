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
