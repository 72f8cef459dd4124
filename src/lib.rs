//! consul-servant: a cluster manager and orchestrator on HashiCorp Consul.
// Denied, not forbidden: `process::spawner` alone allows it (a fork in a single-threaded
// process, and the descriptors it receives).
#![deny(unsafe_code)]
// stdout is written only through `util::output`, which tells a closed stdout apart; `print!`
// would panic on it (clippy.toml also refuses `std::io::stdout`).
#![cfg_attr(not(test), deny(clippy::print_stdout))]
// The agent reports through `tracing`; stderr is the CLI's (and the job shim's, whose stderr is
// the job's).
#![cfg_attr(not(test), deny(clippy::print_stderr))]

pub mod agent;
pub mod apps;
pub mod checks;
#[allow(clippy::print_stderr)]
pub mod cli;
pub mod consul;
pub mod devserver;
pub mod jobs;
pub mod process;
pub mod registrator;
pub mod templates;
pub mod util;
pub mod wire;
