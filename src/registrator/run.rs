//! The registrator's IO: the Engine's event stream and container listing (bollard), the local
//! Consul agent's services (`consul::agent`), and the loop that keeps them equal.
//!
//! - At start, after every reconnection to the Engine and every `resync`: a full sync. Every
//!   running container is inspected and mapped; the agent's services carrying our owner Meta are
//!   compared with that; only the differences are written.
//! - An event of one container (start, die, stop, destroy, rename, unpause) syncs that container.
//! - The event stream asks for events since just before it was opened, so none is lost between
//!   the listing and the stream; when it breaks or closes, the loop reconnects with back-off and
//!   syncs in full.
//! - TTL checks are passed by the loop while their container runs (registrator's `-ttl` did
//!   nothing on Consul).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::{EventsOptions, ListContainersOptions};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::config::{Deregister, RegistratorConfig};
use super::diff::{plan, Plan};
use super::mapping::{
    id_prefix, kept, services, ttl_check, Container, Port, Proto, Settings, OWNER_META,
};
use crate::consul::{AgentServiceRegistration, CheckUpdate, Client, ConsulError};
use crate::process::docker::{connect, DockerError};
use crate::util::backoff::Backoff;

/// Why a sync did not finish.
#[derive(Debug, thiserror::Error)]
pub enum RegistratorError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error("consul: {0}")]
    Consul(#[from] ConsulError),
}

/// What a sync wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub registered: usize,
    pub deregistered: usize,
}

/// How often due TTL checks are looked for.
const TTL_TICK: Duration = Duration::from_secs(1);

fn api(action: &'static str) -> impl FnOnce(bollard::errors::Error) -> RegistratorError {
    move |error| RegistratorError::Docker(DockerError::Api { action, error })
}

fn not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// The registrator's inputs from an inspect.
pub fn from_inspect(i: ContainerInspectResponse) -> Container {
    let config = i.config.unwrap_or_default();
    let state = i.state.unwrap_or_default();
    let net = i.network_settings.unwrap_or_default();
    let running = state.running.unwrap_or(false);
    let mut ports = Vec::new();
    for (key, bindings) in net.ports.unwrap_or_default() {
        let (num, proto) = key.split_once('/').unwrap_or((key.as_str(), "tcp"));
        let Ok(exposed) = num.parse::<u16>() else {
            continue;
        };
        let proto = match proto {
            "udp" => Proto::Udp,
            "tcp" => Proto::Tcp,
            // sctp: registrator has no ID form for it.
            _ => continue,
        };
        let bindings = bindings.unwrap_or_default();
        if bindings.is_empty() {
            ports.push(Port {
                exposed,
                proto,
                host_ip: None,
                host_port: None,
            });
        }
        for b in bindings {
            ports.push(Port {
                exposed,
                proto,
                host_ip: b.host_ip,
                host_port: b.host_port.and_then(|p| p.parse().ok()),
            });
        }
    }
    let mut networks: Vec<_> = net.networks.unwrap_or_default().into_iter().collect();
    networks.sort_by(|a, b| a.0.cmp(&b.0));
    let ip = networks
        .into_iter()
        .filter_map(|(_, n)| n.ip_address)
        .find(|a| !a.is_empty());
    Container {
        id: i.id.unwrap_or_default(),
        name: i
            .name
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        image: config.image.unwrap_or_default(),
        env: config.env.unwrap_or_default(),
        labels: config.labels.unwrap_or_default().into_iter().collect(),
        ports,
        ip,
        running,
        exit_code: if running { None } else { state.exit_code },
    }
}

/// The registrator of one node.
pub struct Registrator {
    client: Client,
    cfg: RegistratorConfig,
    node: String,
    /// TTL checks of the services we hold: their TTL and when they were last passed.
    ttl: BTreeMap<String, (Duration, Option<Instant>)>,
    metrics: super::RegistratorMetrics,
}

impl Registrator {
    pub fn new(client: Client, cfg: RegistratorConfig, node: String) -> Self {
        Registrator {
            client,
            cfg,
            node,
            ttl: BTreeMap::new(),
            metrics: Default::default(),
        }
    }

    /// Counts the services it holds into `metrics`.
    pub fn with_metrics(mut self, metrics: super::RegistratorMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The services of `list` that carry this node's mark.
    fn owned(&self, list: &[crate::consul::AgentService]) -> usize {
        list.iter()
            .filter(|s| s.meta.get(OWNER_META) == Some(&self.node))
            .count()
    }

    /// Counts the services held now (after a change: one listing of the local agent).
    async fn recount(&self) {
        if let Ok(list) = self.client.agent_service_list().await {
            self.metrics.set(self.owned(&list));
        }
    }

    async fn settings(&self) -> Result<Settings, RegistratorError> {
        // Asked at every sync: a restarted Consul may advertise another address.
        let advertise = if self.cfg.ip.is_some() || self.cfg.internal {
            String::new()
        } else {
            self.client.agent_advertise_addr().await?
        };
        Ok(Settings {
            node: self.node.clone(),
            advertise,
            cfg: self.cfg.clone(),
        })
    }

    /// Every container whose services may be wanted, inspected.
    async fn containers(&self, docker: &Docker) -> Result<Vec<Container>, RegistratorError> {
        let mut status = vec!["running".to_string()];
        if self.cfg.deregister == Deregister::OnSuccess {
            status.push("exited".into());
        }
        let mut filters = HashMap::from([("status".to_string(), status)]);
        if let Some(l) = &self.cfg.only_label {
            filters.insert("label".into(), vec![l.clone()]);
        }
        let opts = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let list = docker
            .list_containers(Some(opts))
            .await
            .map_err(api("ps"))?;
        let mut out = Vec::with_capacity(list.len());
        for c in list {
            let Some(id) = c.id else { continue };
            match docker.inspect_container(&id, None).await {
                Ok(i) => out.push(from_inspect(i)),
                // Removed since the listing.
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(api("inspect")(e)),
            }
        }
        Ok(out)
    }

    /// Writes a plan: deregistrations, then registrations. A registration Consul refuses (bad
    /// labels) is reported and skipped, so it cannot stop the others.
    async fn apply(&mut self, p: Plan) -> Result<SyncStats, RegistratorError> {
        let mut stats = SyncStats::default();
        for id in &p.deregister {
            match self.client.agent_service_deregister(id).await {
                Ok(()) => {}
                Err(ConsulError::Status { status: 404, .. }) => {}
                Err(e) => return Err(e.into()),
            }
            info!(service = %id, "registrator: deregistered");
            self.ttl.retain(|k, _| k != &format!("service:{id}"));
            stats.deregistered += 1;
        }
        for r in &p.register {
            let id = r.id.as_deref().unwrap_or("");
            match self.client.agent_service_register(r).await {
                Ok(()) => {
                    info!(service = %id, name = %r.name, address = r.address.as_deref().unwrap_or(""), port = r.port.unwrap_or(0), "registrator: registered");
                    stats.registered += 1;
                    if let Some((check, _)) = ttl_check(r) {
                        // A new TTL check starts critical: pass it at once.
                        if let Some(e) = self.ttl.get_mut(&check) {
                            e.1 = None;
                        }
                    }
                }
                Err(e) if e.is_transient() => return Err(e.into()),
                Err(e) => {
                    warn!(service = %id, error = %e, "registrator: consul refused the service; fix the container's SERVICE_* labels")
                }
            }
        }
        if stats != SyncStats::default() {
            self.recount().await;
        }
        Ok(stats)
    }

    /// Remembers the TTL checks of `wanted` (within `scope`, or all).
    fn track_ttl(&mut self, wanted: &[AgentServiceRegistration], scope: Option<&str>) {
        self.ttl
            .retain(|k, _| scope.is_some_and(|s| !k.trim_start_matches("service:").starts_with(s)));
        for r in wanted {
            if let Some((check, ttl)) = ttl_check(r) {
                self.ttl.insert(check, (ttl, None));
            }
        }
    }

    /// The full comparison: every container against every service we own.
    pub async fn resync(&mut self, docker: &Docker) -> Result<SyncStats, RegistratorError> {
        let settings = self.settings().await?;
        let containers = self.containers(docker).await?;
        let wanted: Vec<_> = containers
            .iter()
            .flat_map(|c| services(c, &settings))
            .collect();
        let keep: Vec<String> = containers
            .iter()
            .filter(|c| kept(c, &settings))
            .map(|c| id_prefix(&self.node, &c.name))
            .collect();
        let current = self.client.agent_service_list().await?;
        let p = plan(&wanted, &current, &self.node, None, &keep);
        let old = std::mem::take(&mut self.ttl);
        self.track_ttl(&wanted, None);
        // Keep the last pass of checks that were already held.
        for (k, v) in self.ttl.iter_mut() {
            if let Some(o) = old.get(k) {
                v.1 = o.1;
            }
        }
        let stats = self.apply(p).await?;
        if stats == SyncStats::default() {
            self.metrics.set(self.owned(&current));
            debug!(
                containers = containers.len(),
                services = wanted.len(),
                "registrator: resync, nothing to change"
            );
        } else {
            info!(
                containers = containers.len(),
                registered = stats.registered,
                deregistered = stats.deregistered,
                "registrator: resync"
            );
        }
        Ok(stats)
    }

    /// Syncs one container after an event: `name` is the event's, for a container gone.
    async fn sync_one(
        &mut self,
        docker: &Docker,
        id: &str,
        name: Option<&str>,
    ) -> Result<SyncStats, RegistratorError> {
        let settings = self.settings().await?;
        let (wanted, name, keep) = match docker.inspect_container(id, None).await {
            Ok(i) => {
                let c = from_inspect(i);
                let keep = kept(&c, &settings);
                (services(&c, &settings), c.name, keep)
            }
            Err(e) if not_found(&e) => match name {
                Some(n) => (Vec::new(), n.to_string(), false),
                None => return Ok(SyncStats::default()),
            },
            Err(e) => return Err(api("inspect")(e)),
        };
        let scope = id_prefix(&self.node, &name);
        if keep {
            // Its services stay as registered; nothing runs to pass their TTL checks.
            self.track_ttl(&[], Some(&scope));
            return Ok(SyncStats::default());
        }
        let current = self.client.agent_service_list().await?;
        let p = plan(&wanted, &current, &self.node, Some(&scope), &[]);
        self.track_ttl(&wanted, Some(&scope));
        self.apply(p).await
    }

    /// Removes the services of a container name that no longer exists.
    async fn sync_gone(&mut self, name: &str) -> Result<SyncStats, RegistratorError> {
        let scope = id_prefix(&self.node, name);
        let current = self.client.agent_service_list().await?;
        let p = plan(&[], &current, &self.node, Some(&scope), &[]);
        self.track_ttl(&[], Some(&scope));
        self.apply(p).await
    }

    /// Passes the TTL checks that are due (a third of their TTL since the last pass).
    async fn pass_ttl(&mut self) {
        let now = Instant::now();
        for (check, (ttl, last)) in self.ttl.iter_mut() {
            if last.is_some_and(|l| now.duration_since(l) < *ttl / 3) {
                continue;
            }
            match self
                .client
                .agent_check_update(check, CheckUpdate::Pass, Some("container running"))
                .await
            {
                Ok(()) => *last = Some(now),
                Err(e) => {
                    debug!(check = %check, error = %e, "registrator: cannot pass a TTL check")
                }
            }
        }
    }

    /// Runs until `stop`: connect, full sync, follow events; on any break, back off and again.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        info!(node = %self.node, resync = ?self.cfg.resync, "registrator starting");
        'connect: while !stop.is_cancelled() {
            let docker = tokio::select! {
                _ = stop.cancelled() => break,
                d = connect() => d,
            };
            let docker = match docker {
                Ok(d) => d,
                Err(e) => {
                    warn!(error = %e, "registrator: no Docker Engine; retrying");
                    pause(&stop, backoff.fail()).await;
                    continue;
                }
            };
            // Events from a second before the stream opens: nothing between the listing below
            // and the stream is missed (a replayed event only syncs its container again).
            let since = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs().saturating_sub(1))
                .unwrap_or(0);
            let mut filters = HashMap::from([
                ("type".to_string(), vec!["container".to_string()]),
                (
                    "event".to_string(),
                    ["start", "die", "stop", "destroy", "rename", "unpause"]
                        .map(String::from)
                        .to_vec(),
                ),
            ]);
            if let Some(l) = &self.cfg.only_label {
                filters.insert("label".into(), vec![l.clone()]);
            }
            let mut events = docker.events(Some(EventsOptions {
                since: Some(since.to_string()),
                filters: Some(filters),
                ..Default::default()
            }));
            let mut next_resync = Instant::now();
            let mut ttl_tick = tokio::time::interval(TTL_TICK);
            ttl_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => break 'connect,
                    ev = events.next() => match ev {
                        Some(Ok(m)) => {
                            let actor = m.actor.unwrap_or_default();
                            let Some(id) = actor.id else { continue };
                            let attrs = actor.attributes.unwrap_or_default();
                            let action = m.action.unwrap_or_default();
                            debug!(container = %id, %action, "registrator: event");
                            let mut synced = self.sync_one(&docker, &id, attrs.get("name").map(String::as_str)).await;
                            // A renamed container's services under its old name go.
                            if let (true, Some(old), Ok(_)) = (action == "rename", attrs.get("oldName"), &synced) {
                                synced = self.sync_gone(old.trim_start_matches('/')).await;
                            }
                            match synced {
                                Ok(_) => {}
                                Err(RegistratorError::Consul(e)) => {
                                    warn!(error = %e, "registrator: consul did not take a change; full resync soon");
                                    next_resync = Instant::now() + backoff.fail();
                                }
                                Err(e) => {
                                    warn!(error = %e, "registrator: the Engine failed; reconnecting");
                                    break;
                                }
                            }
                        }
                        Some(Err(e)) => {
                            warn!(error = %e, "registrator: the Docker event stream broke; reconnecting");
                            break;
                        }
                        None => {
                            warn!("registrator: the Docker event stream closed; reconnecting");
                            break;
                        }
                    },
                    _ = tokio::time::sleep_until(next_resync) => {
                        match self.resync(&docker).await {
                            Ok(_) => {
                                backoff.reset();
                                next_resync = Instant::now() + self.cfg.resync;
                            }
                            Err(RegistratorError::Consul(e)) => {
                                let wait = backoff.fail();
                                warn!(error = %e, retry_in = ?wait, "registrator: resync failed");
                                next_resync = Instant::now() + wait.min(self.cfg.resync);
                            }
                            Err(e) => {
                                warn!(error = %e, "registrator: the Engine failed; reconnecting");
                                break;
                            }
                        }
                    }
                    _ = ttl_tick.tick() => self.pass_ttl().await,
                }
            }
            pause(&stop, backoff.fail()).await;
        }
        info!("registrator stopped");
    }
}

async fn pause(stop: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}
