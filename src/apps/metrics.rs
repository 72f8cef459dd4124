//! The apps part's metrics: `servant_apps{state}` (this node's apps by state, set at each
//! report), `servant_app_restarts_total` and `servant_apps_leader_passes_total` (the apps
//! leader's reconciliation passes on this node). Registered by the agent.

use std::collections::BTreeMap;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::wire::{AppHealth, AppState, Applications};

type Labels = Vec<(String, String)>;

/// The states an app is counted in, as the dashboard names them too.
pub const STATES: [&str; 4] = ["healthy", "unhealthy", "unavailable", "stopped"];

/// The word for an app's reported state.
pub fn state_word(status: AppState, health: AppHealth) -> &'static str {
    match (status, health) {
        (AppState::Unavailable, _) => "unavailable",
        (AppState::Disabled, _) => "stopped",
        (AppState::Enabled, AppHealth::Healthy) => "healthy",
        (AppState::Enabled, AppHealth::Unhealthy) => "unhealthy",
    }
}

/// Apps by state word.
pub fn count_states<'a>(
    apps: impl IntoIterator<Item = &'a Applications>,
) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for a in apps.into_iter().flat_map(|m| m.values()) {
        *out.entry(state_word(a.status, a.health).to_string())
            .or_insert(0) += 1;
    }
    out
}

/// Cheap to clone: every clone counts into the same series.
#[derive(Clone, Debug, Default)]
pub struct AppMetrics {
    apps: Family<Labels, Gauge>,
    restarts: Counter,
    leader_passes: Counter,
}

impl AppMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "servant_apps",
            "This node's apps by state",
            self.apps.clone(),
        );
        r.register(
            "servant_app_restarts",
            "Restarts of this node's apps (after an exit, a failed health check or an update)",
            self.restarts.clone(),
        );
        r.register(
            "servant_apps_leader_passes",
            "Reconciliation passes of the apps leader on this node (each lists tasks, capacity records and topology)",
            self.leader_passes.clone(),
        );
    }

    /// The apps leader on this node starts a reconciliation pass.
    pub fn leader_pass(&self) {
        self.leader_passes.inc();
    }

    pub fn restarted(&self) {
        self.restarts.inc();
    }

    /// This node's apps now; every state is present, at 0 when no app is in it.
    pub fn states(&self, apps: &Applications) {
        let counts = count_states([apps]);
        for s in STATES {
            self.apps
                .get_or_create(&vec![("state".to_string(), s.to_string())])
                .set(counts.get(s).copied().unwrap_or(0) as i64);
        }
    }
}
