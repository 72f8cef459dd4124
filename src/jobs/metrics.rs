//! The job worker's metrics (DESIGN "Web UI, API, metrics"): kept by the worker, registered by
//! the agent into its registry. Labels are bounded: a status, never a job ID.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::wire::JobStatus;

type Labels = Vec<(String, String)>;

/// Cheap to clone: every clone counts into the same series.
#[derive(Clone, Debug)]
pub struct JobMetrics {
    results: Family<Labels, Counter>,
    running: Gauge,
    live_servants: Gauge,
    claim_seconds: Histogram,
    duration_seconds: Histogram,
    claim_conflicts: Counter,
    fenced: Counter,
}

impl Default for JobMetrics {
    fn default() -> Self {
        JobMetrics {
            results: Family::default(),
            running: Gauge::default(),
            live_servants: Gauge::default(),
            // 1 ms to about 65 s.
            claim_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            // 10 ms to about 11 h.
            duration_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 22)),
            claim_conflicts: Counter::default(),
            fenced: Counter::default(),
        }
    }
}

impl JobMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "servant_jobs",
            "Job results this node wrote, by final status",
            self.results.clone(),
        );
        r.register(
            "servant_jobs_running",
            "Jobs running on this node now",
            self.running.clone(),
        );
        r.register(
            "servant_live_servants",
            "Servant agents this node sees live, itself included: the nodes it ranks jobs among",
            self.live_servants.clone(),
        );
        r.register(
            "servant_job_claim_seconds",
            "From this agent first seeing a queued job to its claim",
            self.claim_seconds.clone(),
        );
        r.register(
            "servant_job_duration_seconds",
            "How long this node's jobs ran, from start to end",
            self.duration_seconds.clone(),
        );
        r.register(
            "servant_claim_conflicts",
            "Claims another node won first",
            self.claim_conflicts.clone(),
        );
        r.register(
            "servant_fenced",
            "Jobs killed because this node could no longer be sure it held them",
            self.fenced.clone(),
        );
    }

    /// A result written: counted once, by its final status (a NoWait job's `started` is not).
    pub fn result(&self, status: Option<JobStatus>) {
        if let Some(s) = status.filter(JobStatus::is_final) {
            self.results
                .get_or_create(&vec![("status".to_string(), s.as_str().to_string())])
                .inc();
        }
    }

    /// A job started here; the returned guard marks its end.
    pub fn started(&self) -> RunningGuard {
        self.running.inc();
        RunningGuard {
            running: self.running.clone(),
            duration: self.duration_seconds.clone(),
            since: std::time::Instant::now(),
        }
    }

    /// The live set this node ranks jobs among changed to `n` servants.
    pub fn live_servants(&self, n: usize) {
        self.live_servants.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn claimed_after(&self, waited: std::time::Duration) {
        self.claim_seconds.observe(waited.as_secs_f64());
    }

    pub fn claim_conflict(&self) {
        self.claim_conflicts.inc();
    }

    pub fn fenced(&self) {
        self.fenced.inc();
    }
}

/// Decrements `servant_jobs_running` and observes the run's duration when dropped.
pub struct RunningGuard {
    running: Gauge,
    duration: Histogram,
    since: std::time::Instant,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.running.dec();
        self.duration.observe(self.since.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_results_are_counted_by_status_and_running_follows_guards() {
        let m = JobMetrics::default();
        let mut r = Registry::default();
        m.register(&mut r);
        m.result(Some(JobStatus::Succeeded));
        m.result(Some(JobStatus::Succeeded));
        m.result(Some(JobStatus::TimedOut));
        m.result(Some(JobStatus::Started));
        m.result(None);
        let g = m.started();
        m.live_servants(3);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        assert!(
            text.contains("servant_jobs_total{status=\"succeeded\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("servant_jobs_total{status=\"timed_out\"} 1"),
            "{text}"
        );
        assert!(!text.contains("status=\"started\""), "{text}");
        assert!(text.contains("servant_jobs_running 1"), "{text}");
        assert!(text.contains("servant_live_servants 3"), "{text}");
        drop(g);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        assert!(text.contains("servant_jobs_running 0"), "{text}");
        assert!(
            text.contains("servant_job_duration_seconds_count 1"),
            "{text}"
        );
    }
}
