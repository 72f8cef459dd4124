//! The checks part's metrics: `servant_trigger_runs_total{state,outcome}`, the trigger actions
//! this node ran, by the check state that fired them and how they ended. Registered by the agent.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::trigger::TriggerRun;

type Labels = Vec<(String, String)>;

/// How a run ended: `succeeded` (exit 0), `timed_out`, `refused` (the node's policy did not
/// run it), or `failed` (any other exit, or it could not start).
pub fn outcome(run: &TriggerRun) -> &'static str {
    if run.refused.is_some() {
        return "refused";
    }
    match (run.timed_out, run.exit_code) {
        (true, _) => "timed_out",
        (false, Some(0)) => "succeeded",
        _ => "failed",
    }
}

/// Cheap to clone: every clone counts into the same series.
#[derive(Clone, Debug, Default)]
pub struct CheckMetrics {
    trigger_runs: Family<Labels, Counter>,
}

impl CheckMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "servant_trigger_runs",
            "Trigger actions this node ran, by the check state that fired them and their outcome",
            self.trigger_runs.clone(),
        );
    }

    pub fn ran(&self, run: &TriggerRun) {
        // The state is one of Consul's four check states: bounded.
        self.trigger_runs
            .get_or_create(&vec![
                ("state".to_string(), run.state.clone()),
                ("outcome".to_string(), outcome(run).to_string()),
            ])
            .inc();
    }
}
