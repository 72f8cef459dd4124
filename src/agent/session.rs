//! The node session: one long-lived session per agent, tied to the node's serfHealth check and a
//! TTL, behaviour release. It is renewed at TTL/2; when Consul says it is gone, the agent is
//! fenced: the holder of the old session is told, and a new session is made.

use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::{broadcast, watch};
use tracing::{error, info, warn};

use crate::consul::{
    Backoff, BlockingIndex, Client, ConsulError, QueryOptions, SessionBehavior, SessionRequest,
};

/// The session as the rest of the agent sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionState {
    /// The current session ID; None while there is none (start-up, or after a loss).
    pub id: Option<String>,
    /// Bumped on every new session, so a holder can tell "fenced" from "same".
    pub generation: u64,
}

/// Settings of the node session.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// Session name; live servants are found by it.
    pub name: String,
    pub ttl: Duration,
    pub lock_delay: Duration,
}

/// Creates the node session (retrying transient errors) and keeps it alive until shutdown.
pub struct SessionKeeper {
    client: Client,
    settings: SessionSettings,
    tx: watch::Sender<SessionState>,
}

impl SessionKeeper {
    pub fn new(client: Client, settings: SessionSettings) -> (Self, watch::Receiver<SessionState>) {
        let (tx, rx) = watch::channel(SessionState::default());
        (
            SessionKeeper {
                client,
                settings,
                tx,
            },
            rx,
        )
    }

    async fn create(&self) -> Result<String, ConsulError> {
        self.client
            .session_create(&SessionRequest {
                name: self.settings.name.clone(),
                node: None,
                checks: Some(vec!["serfHealth".to_string()]),
                ttl: Some(self.settings.ttl),
                behavior: SessionBehavior::Release,
                lock_delay: Some(self.settings.lock_delay),
            })
            .await
    }

    /// Creates the first session; errors that are not transient (permissions) are returned.
    pub async fn start(&self) -> Result<String, ConsulError> {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            match self.create().await {
                Ok(id) => {
                    info!(session = %id, "node session created");
                    self.tx.send_modify(|s| {
                        s.id = Some(id.clone());
                        s.generation += 1;
                    });
                    return Ok(id);
                }
                Err(e) if e.is_transient() => {
                    warn!(error = %e, "cannot create the node session yet");
                    tokio::time::sleep(backoff.fail()).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Renews at TTL/2 until shutdown, then destroys the session. Between renewals it blocks on
    /// the session's info, so an invalidation is seen at once, not at the next renewal.
    pub async fn run(self, mut shutdown: broadcast::Receiver<()>) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let renew_every = self.settings.ttl / 2;
        let mut next_renew = Instant::now() + renew_every;
        let mut index = BlockingIndex::default();
        loop {
            let current = self.tx.borrow().id.clone();
            let Some(id) = current else {
                tokio::select! {
                    _ = self.recreate(&mut backoff) => {}
                    _ = shutdown.recv() => break,
                }
                index = BlockingIndex::default();
                next_renew = Instant::now() + renew_every;
                continue;
            };
            let wait = next_renew
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(10));
            let q = QueryOptions::blocking(index.get(), wait);
            let watched = tokio::select! {
                r = tokio::time::timeout(wait + Duration::from_secs(1), self.client.session_info(&id, &q)) => r,
                _ = shutdown.recv() => break,
            };
            let mut gone = false;
            match watched {
                Ok(Ok((None, _))) => gone = true,
                Ok(Ok((Some(_), meta))) => {
                    index.update(meta.index);
                }
                Ok(Err(e)) => {
                    index = BlockingIndex::default();
                    warn!(error = %e, "cannot watch the node session");
                    tokio::time::sleep(backoff.fail()).await;
                }
                Err(_) => {}
            }
            if !gone && Instant::now() >= next_renew {
                next_renew = Instant::now() + renew_every;
                match self.client.session_renew(&id).await {
                    Ok(Some(_)) => backoff.reset(),
                    Ok(None) => gone = true,
                    Err(e) => warn!(error = %e, "cannot renew the node session"),
                }
            }
            if gone {
                error!(session = %id, "node session was invalidated: fencing this node's jobs");
                self.tx.send_modify(|s| s.id = None);
            }
        }
        let current = self.tx.borrow().id.clone();
        if let Some(id) = current {
            match self.client.session_destroy(&id).await {
                Ok(()) => info!(session = %id, "node session destroyed"),
                Err(e) => warn!(error = %e, "cannot destroy the node session"),
            }
        }
        self.tx.send_modify(|s| s.id = None);
    }

    async fn recreate(&self, backoff: &mut Backoff) {
        match self.create().await {
            Ok(id) => {
                info!(session = %id, "new node session created");
                backoff.reset();
                self.tx.send_modify(|s| {
                    s.id = Some(id);
                    s.generation += 1;
                });
            }
            Err(e) => {
                warn!(error = %e, "cannot create a new node session");
                tokio::time::sleep(backoff.fail()).await;
            }
        }
    }
}
