//! Jobs: consul_servant's queues in KV, done right.
//!
//! `spec`, `layout`, `result` and `claim` are pure; `runner` owns processes; `worker` is the thin
//! IO loop that watches Consul and ties them together.

pub mod claim;
pub mod result;
pub mod runner;
#[allow(clippy::print_stderr)]
pub mod shim;
pub mod spec;
pub mod worker;
