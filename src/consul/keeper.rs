//! A long-lived session kept alive: tied to the node's serfHealth check and a TTL, renewed at
//! TTL/2, watched so that its loss is seen at once; when Consul says it is gone, its holder is
//! told (fenced) and a new session is made. The agent keeps two: the jobs session (behaviour
//! release) and the apps session (behaviour delete).

use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{BlockingIndex, Client, ConsulError, QueryOptions, SessionBehavior, SessionRequest};
use crate::util::backoff::Backoff;

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
    /// Without Consul's confirmation for this long, the agent fences itself. Must be well under
    /// `lock_delay`, so a job is dead here before another node may take it.
    pub fence_after: Duration,
    /// Release for the jobs session (a dead node's jobs are retried); delete for the apps
    /// session (a dead node's reports vanish).
    pub behavior: SessionBehavior,
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

    /// Destroys the sessions of this name that an earlier run of this agent left on `node`
    /// (killed before it could destroy them). Consul would keep them, and every lock they hold,
    /// until their TTL ran out twice over; destroyed now, their jobs are free after the
    /// lock-delay. The earlier run's work died with it (the shim kills its process group).
    pub async fn clear_predecessors(&self, node: &str) {
        match self
            .client
            .session_node(node, &QueryOptions::default())
            .await
        {
            Ok((sessions, _)) => {
                for s in sessions.iter().filter(|s| s.name == self.settings.name) {
                    info!(session = %s.id, name = %s.name, "destroying the session of an earlier run");
                    if let Err(e) = self.client.session_destroy(&s.id).await {
                        warn!(session = %s.id, error = %e, "cannot destroy an old session");
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot list this node's sessions"),
        }
    }

    async fn create(&self) -> Result<String, ConsulError> {
        self.client
            .session_create(&SessionRequest {
                name: self.settings.name.clone(),
                node: None,
                checks: Some(vec!["serfHealth".to_string()]),
                ttl: Some(self.settings.ttl),
                behavior: self.settings.behavior,
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

    /// Renews at TTL/2 until `stop`, then destroys the session. Between renewals it blocks on
    /// the session's info, so an invalidation is seen at once, not at the next renewal.
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let renew_every = self.settings.ttl / 2;
        let fence_after = self.settings.fence_after;
        let mut next_renew = Instant::now() + renew_every;
        let mut index = BlockingIndex::default();
        // The last instant Consul confirmed the session: a blocking read came back with the
        // session in it. A read in flight keeps the session confirmed (Consul would answer at
        // once if the session went away); a broken connection or a read past its time does not.
        let mut confirmed = Instant::now();
        // A session this agent gave up on without Consul's word; destroyed once Consul answers,
        // so the locks it may still hold are released.
        let mut abandoned: Option<String> = None;
        loop {
            let current = self.tx.borrow().id.clone();
            let Some(id) = current else {
                tokio::select! {
                    _ = self.recreate(&mut backoff, &mut abandoned) => {}
                    _ = stop.cancelled() => break,
                }
                index = BlockingIndex::default();
                next_renew = Instant::now() + renew_every;
                confirmed = Instant::now();
                continue;
            };
            let sent = Instant::now();
            let wait = next_renew
                .saturating_duration_since(sent)
                .min(fence_after * 3 / 4)
                .max(Duration::from_millis(10));
            let q = QueryOptions::blocking(index.get(), wait);
            let watched = tokio::select! {
                r = tokio::time::timeout(fence_after.max(wait + Duration::from_millis(500)), self.client.session_info(&id, &q)) => r,
                _ = stop.cancelled() => break,
            };
            let mut gone = false;
            let answered = matches!(watched, Ok(Ok(_)));
            match watched {
                Ok(Ok((None, _))) => gone = true,
                Ok(Ok((Some(_), meta))) => {
                    // The read held while the session existed; it is valid as of the answer.
                    confirmed = Instant::now();
                    index.update(meta.index);
                }
                Ok(Err(e)) => {
                    index = BlockingIndex::default();
                    warn!(error = %e, "cannot watch the node session");
                }
                Err(_) => {
                    index = BlockingIndex::default();
                    warn!("consul did not answer the session watch in time");
                }
            }
            if !gone && Instant::now() >= next_renew {
                match self.client.session_renew(&id).await {
                    Ok(Some(_)) => {
                        backoff.reset();
                        next_renew = Instant::now() + renew_every;
                    }
                    Ok(None) => gone = true,
                    Err(e) => {
                        warn!(error = %e, "cannot renew the node session");
                        next_renew = Instant::now() + backoff.fail();
                    }
                }
            }
            if gone {
                error!(session = %id, "node session was invalidated: fencing this node's jobs");
                self.tx.send_modify(|s| s.id = None);
            } else if confirmed.elapsed() > fence_after {
                // Consul may have invalidated the session without us hearing it; after the
                // lock-delay another node may take our jobs. Stop them first.
                error!(session = %id, unconfirmed = ?confirmed.elapsed(), "consul has not confirmed the node session: fencing this node's jobs");
                abandoned = Some(id);
                self.tx.send_modify(|s| s.id = None);
            } else if !answered {
                tokio::time::sleep(backoff.fail().min(fence_after / 4)).await;
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

    async fn recreate(&self, backoff: &mut Backoff, abandoned: &mut Option<String>) {
        if let Some(old) = abandoned.clone() {
            // Release whatever the old session still holds before taking new work.
            match self.client.session_destroy(&old).await {
                Ok(()) => {
                    info!(session = %old, "abandoned node session destroyed");
                    *abandoned = None;
                }
                Err(e) => {
                    warn!(error = %e, "cannot destroy the abandoned node session yet");
                    tokio::time::sleep(backoff.fail()).await;
                    return;
                }
            }
        }
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
