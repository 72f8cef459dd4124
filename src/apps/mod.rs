//! Replicated long-running apps (App Manager's `appmgr/` keys, done right): task definitions,
//! the placement scheduler, node reports, leader election and the node supervisor.
//!
//! - `task`: the task document, `wire::task` (kept here under its old path for the supervisor).
//! - `launch`: pure: how an app starts (a process group, or a container with `image`), bad
//!   container descriptions as invalid tasks.
//! - `scheduler`: pure placement of task replicas on live hosts.
//! - `report`: samples the node's `resource` report (sysinfo plus /sys, off the async workers).
//! - `supervisor`: runs this node's apps (process groups, backoff, periodic starts, health,
//!   log rotation, services).
//! - `node`: the IO around them: the apps session, reports, leader election and the leader's
//!   reconciliation, this node's topology watch.

pub mod config;
pub mod launch;
pub mod metrics;
pub mod node;
pub mod report;
pub mod scheduler;
pub mod supervisor;
pub use crate::wire::task;
