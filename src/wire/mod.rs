//! The documents the product writes to Consul and reads back, as types shared by every writer and
//! reader (agent, CLI, dashboard, embedded server, tests), and the one KV namespace they live
//! in. Pure: no IO. A field renamed here is renamed for everyone; nothing parses these documents
//! field by field with defaults.

pub mod health;
pub mod job;
pub mod namespace;
pub mod service;
pub mod txn;

pub use health::HealthStatus;
pub use job::{JobResult, JobStatus, JobView};
pub use namespace::{JobKey, Namespace};
pub use service::{CheckSpec, ServiceSpec};
pub use txn::TxnKvOp;
