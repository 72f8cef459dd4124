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
//! - `dns`: Consul DNS, pure (a query and a snapshot in, the answer out); `dns_server`: its UDP
//!   and TCP sockets.

pub mod dns;
pub mod dns_server;
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
    #[error("cannot listen on {addr}: {error}")]
    Listen { addr: String, error: std::io::Error },
    /// The cause is in the message, not the error chain, so the advice comes last.
    #[error("cannot serve DNS on {addr} ({proto}): {cause}. Choose another port with --dns-port (config dns_port, SERVANT_DNS_PORT), or turn DNS off with --dns-port -1")]
    Dns {
        addr: String,
        proto: &'static str,
        cause: std::io::Error,
    },
}

/// A running embedded server.
pub struct DevServer {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// Where it answers DNS, if it does.
    pub dns: Option<std::net::SocketAddr>,
    /// Its HTTP API, for this process's own clients to call without a socket.
    pub router: axum::Router,
    task: tokio::task::JoinHandle<()>,
    /// The DNS sockets' tasks; they hold the core too.
    dns_tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The TTL expiry loop; it holds the core, so it must end for the data file to close.
    expiry: tokio::task::JoinHandle<()>,
    /// The HTTP/TCP check runner; it holds the core too.
    probes: tokio::task::JoinHandle<()>,
}

impl DevServer {
    /// Opens `<dir>/dev.redb` and serves HTTP on `listen`, and DNS on `dns_port` of the same
    /// IP (UDP and TCP) unless it is None.
    pub async fn start(
        dir: &Path,
        listen: &str,
        node: &str,
        dns_port: Option<u16>,
    ) -> Result<DevServer, DevError> {
        let listener =
            tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| DevError::Listen {
                    addr: listen.to_string(),
                    error: e,
                })?;
        let addr = listener.local_addr().map_err(|e| DevError::Listen {
            addr: listen.to_string(),
            error: e,
        })?;
        // Bound before the data file opens, so a port in use stops the start cleanly.
        let dns = match dns_port {
            Some(p) => Some(dns_server::bind(std::net::SocketAddr::new(addr.ip(), p)).await?),
            None => None,
        };
        let core = server::Core::open(&dir.join("dev.redb"), node, &addr.ip().to_string())?;
        let dns_addr = dns.as_ref().map(|d| d.addr);
        let dns_tasks = dns
            .map(|d| dns_server::serve(d, core.clone(), addr.ip()))
            .unwrap_or_default();
        let expiry = tokio::spawn(core.clone().run_expiry());
        let probes = tokio::spawn(core.clone().run_probes());
        let app = http::router(core);
        let router = app.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(DevServer {
            addr,
            dns: dns_addr,
            router,
            task,
            dns_tasks,
            expiry,
            probes,
        })
    }

    /// Stops serving.
    pub fn stop(self) {
        self.task.abort();
        self.dns_tasks.iter().for_each(|t| t.abort());
        self.expiry.abort();
        self.probes.abort();
    }
}
