//! Health checks, active/standby roles and triggers (python-powerconsul, done right).
//!
//! - `verdict`: exit codes and the JSON line every check prints.
//! - `process`: counting processes from /proc with check_procs-like selectors and ranges.
//! - `crontab`: whether a user's crontab exists (and matches a pattern).
//! - `role`: pure: active/standby roles from `cluster/<env>/<svc>` and what each expects.
//! - `service`: the service check: the service manager's answer against the role's.
//! - `trigger`: finding, running (script or `sh -c`, with a timeout) and recording actions.
//! - `watcher`: the agent's native watcher: this node's check changes run their actions.
//! - `guard`: services the agent registers with a service check (TTL it updates, or script).

pub mod config;
pub mod crontab;
pub mod guard;
pub mod metrics;
pub mod process;
pub mod role;
pub mod service;
pub mod trigger;
pub mod verdict;
pub mod watcher;
