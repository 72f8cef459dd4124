//! Registrator mode (`servant agent --registrator`): the local Consul agent's services kept
//! equal to the running containers' published ports, as gliderlabs/registrator does, without
//! its failures (DESIGN.md "Containers").
//!
//! - `mapping` (pure): a container and its `SERVICE_*` settings → the services it should have.
//! - `diff` (pure): those against the agent's services → the writes needed, only differences.
//! - `run`: the Engine's events and listing, the agent's services, the loop.

pub mod config;
pub mod diff;
pub mod mapping;
pub mod run;

pub use config::{Deregister, RegistratorConfig};
pub use run::Registrator;

/// `servant_registrator_services`: the services registrator mode holds on this node's agent,
/// counted after every change and every resync. Registered by the agent.
#[derive(Clone, Debug, Default)]
pub struct RegistratorMetrics {
    services: prometheus_client::metrics::gauge::Gauge,
}

impl RegistratorMetrics {
    pub fn register(&self, r: &mut prometheus_client::registry::Registry) {
        r.register(
            "servant_registrator_services",
            "Services registrator mode holds for this node's containers",
            self.services.clone(),
        );
    }

    pub(crate) fn set(&self, n: usize) {
        self.services.set(n as i64);
    }
}

/// Runs the registrator of `node` until `stop`.
pub async fn run(
    client: crate::consul::Client,
    cfg: RegistratorConfig,
    node: String,
    metrics: RegistratorMetrics,
    stop: tokio_util::sync::CancellationToken,
) {
    Registrator::new(client, cfg, node)
        .with_metrics(metrics)
        .run(stop)
        .await
}
