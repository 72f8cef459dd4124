//! The embedded single-node server behind `servant agent -dev` (issue 3, in progress).
//!
//! So far: the pure state machine (KV, transactions, sessions and locks with Consul 1.8.7's
//! rules). Still to come: the HTTP API, persistence, agent/catalog/health/events, and the
//! conformance suite against real Consul.

pub mod state;
pub mod store;
