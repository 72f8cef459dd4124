//! consul-servant: a cluster manager and orchestrator on HashiCorp Consul.
#![forbid(unsafe_code)]

pub mod agent;
pub mod apps;
pub mod checks;
pub mod cli;
pub mod consul;
pub mod devserver;
pub mod jobs;
pub mod templates;
pub mod util;
