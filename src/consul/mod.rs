//! The typed Consul HTTP client. Architecture invariant: this module is the only code that speaks
//! HTTP to Consul; everything else calls these typed methods.

mod agent;
mod blocking;
mod catalog;
mod client;
mod event;
mod keeper;
mod kv;
mod metrics;
mod session;
mod txn;

pub use agent::{
    AgentCheckRegistration, AgentMember, AgentSelf, AgentService, AgentServiceRegistration,
    CheckUpdate,
};
pub use blocking::{
    spawn_paced, spawn_watch, watch_key, watch_key_paced, watch_loop, watch_prefix,
    watch_prefix_paced, BlockingIndex, Pace,
};
pub use catalog::{CatalogNode, CatalogService, HealthCheck, ServiceEntry};
pub use client::{Client, ClientConfig, ConsulError, InProcessError, QueryMeta, QueryOptions};
pub use event::UserEvent;
pub use keeper::{SessionKeeper, SessionSettings, SessionState};
pub use kv::{KvPair, KvPutOptions};
pub use metrics::ConsulMetrics;
pub use session::{SessionBehavior, SessionEntry, SessionRequest};
pub use txn::{TxnError, TxnKvOp, TxnOp, TxnOutcome, TxnResult};
