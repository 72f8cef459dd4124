//! Jobs: consul_servant's queues in KV, done right.
//!
//! `spec`, `policy`, `layout`, `result` and `claim` are pure; `worker` is the thin IO loop that watches
//! Consul and ties them together, and runs jobs through `crate::process`.

pub mod claim;
pub mod metrics;
pub mod policy;
pub mod result;
pub mod spec;
pub mod submit;
pub mod worker;
