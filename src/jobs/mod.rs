//! Jobs: consul_servant's queues in KV, done right.
//!
//! `spec`, `policy`, `layout`, `result`, `claim` and `view` are pure; `worker` is the thin IO loop that watches
//! Consul and ties them together, and runs jobs through `crate::process`.

pub mod claim;
pub mod metrics;
pub mod policy;
pub mod result;
pub mod spec;
pub mod submit;
pub mod view;
pub mod worker;
