//! The embedded single-node server behind `servant agent -dev` (issue 3): the
//! subset of Consul's HTTP API that the product uses, on one machine, persisted under the data
//! dir, so the product runs with nothing else installed.
//!
//! - `state`: the pure state machine (KV, transactions, sessions, locks, services).
//! - `store`: durability: a write-ahead log synced before a write is answered, folded into redb
//!   now and then.
//! - `wal`: the log file.
//! - `server`: the state behind a lock, the group-commit writer thread, blocking reads, expiry.
//! - `http`: the HTTP API (axum).

pub mod http;
pub mod server;
pub mod state;
pub mod store;
pub mod wal;

use std::path::Path;

/// Why the embedded server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

/// A running embedded server.
pub struct DevServer {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
    /// The TTL expiry loop; it holds the core, so it must end for the data file to close.
    expiry: tokio::task::JoinHandle<()>,
    /// The HTTP/TCP check runner; it holds the core too.
    probes: tokio::task::JoinHandle<()>,
}

impl DevServer {
    /// Opens `<dir>/dev.redb` and serves on `listen`.
    pub async fn start(dir: &Path, listen: &str, node: &str) -> Result<DevServer, DevError> {
        let listener =
            tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| DevError::Listen {
                    addr: listen.to_string(),
                    source: e,
                })?;
        let addr = listener.local_addr().map_err(|e| DevError::Listen {
            addr: listen.to_string(),
            source: e,
        })?;
        let core = server::Core::open(&dir.join("dev.redb"), node, &addr.ip().to_string())?;
        let expiry = tokio::spawn(core.clone().run_expiry());
        let probes = tokio::spawn(core.clone().run_probes());
        let app = http::router(core);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(DevServer {
            addr,
            task,
            expiry,
            probes,
        })
    }

    /// Stops serving.
    pub fn stop(self) {
        self.task.abort();
        self.expiry.abort();
        self.probes.abort();
    }
}
