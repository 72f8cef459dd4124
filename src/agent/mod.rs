//! The agent: configuration, the node session, the supervised Consul process and the HTTP API.

pub mod api;
pub mod config;
pub mod consul_proc;
pub mod datadir;
pub mod run;
pub mod session;
