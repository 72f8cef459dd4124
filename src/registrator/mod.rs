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

/// Runs the registrator of `node` until `stop`.
pub async fn run(
    client: crate::consul::Client,
    cfg: RegistratorConfig,
    node: String,
    stop: tokio_util::sync::CancellationToken,
) {
    Registrator::new(client, cfg, node).run(stop).await
}
