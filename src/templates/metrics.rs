//! The template runner's metrics: `servant_template_renders_total{outcome}`: `written` (the
//! output changed and was written), `unchanged`, `render_error` (the last good file stays),
//! `write_error`. Registered by the agent for its configured templates.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

#[derive(Clone, Debug, Default)]
pub struct TemplateMetrics {
    renders: Family<Labels, Counter>,
}

impl TemplateMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "servant_template_renders",
            "Template renders by outcome: written, unchanged, render_error, write_error",
            self.renders.clone(),
        );
    }

    pub fn rendered(&self, outcome: &'static str) {
        self.renders
            .get_or_create(&vec![("outcome".to_string(), outcome.to_string())])
            .inc();
    }
}
