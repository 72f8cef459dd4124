//! `servant agent`: wires the pieces together and owns graceful shutdown.
//!
//! Order at start: listen for SIGINT/SIGTERM; launch Consul if asked and wait for a leader; learn
//! the node name; create the node session; serve the API and register it; start the parts (jobs,
//! apps, checks, templates). At SIGINT/SIGTERM, whenever it comes: stop taking jobs, let running
//! ones finish within the grace period, end the other parts, destroy the session, deregister,
//! stop the API, and stop the launched Consul last.
//!
//! One `CancellationToken` is the stop signal. It is level-triggered: a signal during start-up is
//! seen by whatever step runs next, and a part started after it stops at once. Every task a
//! part starts is tracked and awaited before the part returns.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use super::api::hub::Hub;
use super::api::{router, ApiState};
use super::metrics::{AgentMetrics, PartMetrics};
use crate::process::stats::ContainerMonitor;

/// The oldest container stats a reader (the `resource` report, a `/metrics` scrape) is given
/// before they are sampled again: scrapes closer together cost the Engine nothing.
const CONTAINER_STATS_AGE: Duration = Duration::from_secs(5);
use super::config::AgentConfig;
use super::consul_proc::{ConsulProcess, LaunchError};
use super::datadir::{live_peer, DataDirLock};
use crate::consul::{AgentSelf, AgentServiceRegistration, Client, ConsulError};
use crate::consul::{SessionKeeper, SessionSettings};
use crate::devserver::DevServer;
use crate::jobs::worker::{Worker, WorkerConfig};
use crate::util::backoff::Backoff;
use crate::wire::Namespace;

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] super::config::ConfigError),
    #[error(transparent)]
    Consul(#[from] ConsulError),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error("cannot use data dir {path}: {error}")]
    DataDir { path: String, error: std::io::Error },
    #[error("cannot serve the agent API on {addr}: {error}")]
    Api { addr: String, error: std::io::Error },
    #[error(transparent)]
    Dev(#[from] crate::devserver::DevError),
    #[error("cannot find the servant executable: {0}")]
    Exe(std::io::Error),
    #[error(transparent)]
    DataDirLock(#[from] super::datadir::DataDirError),
    #[error("another servant agent (pid {pid}) already serves node {node}, its API at {addr}; stop it first")]
    NodeServed {
        node: String,
        addr: String,
        pid: String,
    },
}

/// How long to wait for a launched Consul's leader, or for Consul to answer at all.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Cancels `stop` when SIGINT or SIGTERM arrives.
async fn cancel_on_signal(stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the agent");
            let _ = tokio::signal::ctrl_c().await;
            stop.cancel();
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = stop.cancelled() => return,
    }
    info!("signal received: stopping");
    stop.cancel();
}

/// `fut`'s output, or None if `stop` comes first.
async fn unless_stopped<T>(
    stop: &CancellationToken,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        _ = stop.cancelled() => None,
        v = fut => Some(v),
    }
}

/// Runs the agent until a termination signal.
pub async fn run(cfg: AgentConfig) -> Result<(), AgentError> {
    // Before anything else: a signal at any point of the start must stop the agent.
    let stop = CancellationToken::new();
    let signals = tokio::spawn(cancel_on_signal(stop.clone()));
    let outcome = run_until(cfg, &stop).await;
    stop.cancel();
    let _ = signals.await;
    outcome
}

async fn run_until(mut cfg: AgentConfig, stop: &CancellationToken) -> Result<(), AgentError> {
    cfg.validate()?;
    tokio::fs::create_dir_all(&cfg.data_dir)
        .await
        .map_err(|e| AgentError::DataDir {
            path: cfg.data_dir.display().to_string(),
            error: e,
        })?;
    cfg.data_dir =
        tokio::fs::canonicalize(&cfg.data_dir)
            .await
            .map_err(|e| AgentError::DataDir {
                path: cfg.data_dir.display().to_string(),
                error: e,
            })?;
    let dir = cfg.data_dir.clone();
    let _lock = tokio::task::spawn_blocking(move || DataDirLock::acquire(&dir))
        .await
        .map_err(|e| AgentError::DataDir {
            path: cfg.data_dir.display().to_string(),
            error: std::io::Error::other(e),
        })??;
    if cfg.consul.wanted() && cfg.http_addr.is_none() {
        // Talk to the agent we launch, on its client address.
        let host = cfg
            .consul
            .client
            .clone()
            .unwrap_or_else(|| "127.0.0.1".into());
        cfg.http_addr = Some(format!("{host}:8500"));
    }
    let dev = if cfg.dev {
        let node = cfg.consul.node.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "servant-dev".into())
        });
        let d = DevServer::start(&cfg.data_dir, &cfg.dev_listen, &node, cfg.dns_port()).await?;
        if let Some(other) = &cfg.http_addr {
            warn!(ignored = %other, "-dev: the agent talks to its embedded server, not to the configured Consul address");
        }
        info!(addr = %d.addr, data = %cfg.data_dir.join("dev.redb").display(), "embedded single-node server listening");
        match d.dns {
            Some(dns) => info!(%dns, "embedded server answering Consul DNS (udp and tcp)"),
            None => info!("embedded server DNS is off (dns_port -1)"),
        }
        cfg.http_addr = Some(d.addr.to_string());
        Some(d)
    } else {
        None
    };
    let client = Client::new(&cfg.client_config())?;
    // The agent's own requests to its embedded server stay in this process (others use TCP).
    let client = match &dev {
        Some(d) => client.in_process(d.router.clone()),
        None => client,
    };
    let consul = if cfg.consul.wanted() {
        let launched = unless_stopped(
            stop,
            ConsulProcess::start(&cfg.consul, &cfg.data_dir, client.clone(), STARTUP_TIMEOUT),
        )
        .await;
        match launched {
            Some(c) => Some(c?),
            // Stopped while waiting for a leader: the launched Consul runs under the job shim
            // and ends with this process.
            None => {
                if let Some(d) = dev {
                    d.stop();
                }
                return Ok(());
            }
        }
    } else {
        None
    };
    let outcome = serve(&cfg, client, stop).await;
    if let Some(c) = consul {
        info!("stopping the launched consul agent");
        c.stop().await;
    }
    if let Some(d) = dev {
        d.stop();
    }
    outcome
}

/// Stops and removes this node's job containers left by an earlier run of the agent. No job of
/// this run has started yet, so every one is an earlier run's. A node without Docker has none.
async fn remove_stale_containers(cfg: &AgentConfig, node: &str) {
    let docker = match crate::process::docker::connect().await {
        Ok(d) => d,
        Err(e) => {
            debug!(error = %e, "no Docker Engine: no containers to look for");
            return;
        }
    };
    match crate::process::docker::remove_stale(
        &docker,
        node,
        Namespace::new(&cfg.kv_prefix).prefix(),
        None,
        cfg.docker.keep_containers,
    )
    .await
    {
        Ok(0) => {}
        Ok(n) => info!(
            removed = n,
            "removed containers an earlier run of this agent left"
        ),
        Err(e) => warn!(error = %e, "cannot look for containers an earlier run left"),
    }
}

/// Agents before the service ID carried the KV prefix registered `servant-<node>` for every
/// namespace: one of ours left by a killed agent would point `servant logs` at a dead address.
async fn forget_legacy_registration(client: &Client, node: &str, ours: &str, kv_prefix: &str) {
    let legacy = format!("servant-{node}");
    if ours == legacy {
        return;
    }
    let Ok(services) = client.agent_services().await else {
        return;
    };
    let mine = services
        .get(&legacy)
        .and_then(|s| s.pointer("/Meta/kv_prefix"))
        .and_then(|p| p.as_str())
        .is_some_and(|p| Namespace::new(p) == Namespace::new(kv_prefix));
    if mine {
        if let Err(e) = client.agent_service_deregister(&legacy).await {
            debug!(error = %e, "cannot deregister a legacy servant service");
        }
    }
}

/// The local agent's `/v1/agent/self` with a node name, waiting for Consul to answer.
async fn local_agent(client: &Client) -> Result<AgentSelf, ConsulError> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
    loop {
        match client.agent_self().await.and_then(|me| {
            me.node()?;
            Ok(me)
        }) {
            Ok(me) => return Ok(me),
            Err(e) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                warn!(error = %e, "waiting for consul");
                tokio::time::sleep(backoff.fail()).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn serve(
    cfg: &AgentConfig,
    client: Client,
    stop: &CancellationToken,
) -> Result<(), AgentError> {
    let Some(me) = unless_stopped(stop, local_agent(&client)).await else {
        return Ok(());
    };
    let me = me?;
    let node = me.node_name.clone();
    let layout = Namespace::new(&cfg.kv_prefix);
    let session_name = layout.jobs_session();
    info!(node = %node, consul = client.base_url(), "servant agent starting");
    let exposure = super::doctor::Exposure::of(&me, client.base_url());
    if let Some(w) = super::doctor::start_warning(&exposure, &layout, &node) {
        // Loud on purpose: write access to these prefixes is code execution.
        error!("SECURITY: {w}");
    }
    let (keeper, session_rx) = SessionKeeper::new(
        client.for_part("sessions"),
        SessionSettings {
            name: session_name.clone(),
            ttl: cfg.session_ttl,
            lock_delay: cfg.lock_delay,
            fence_after: cfg.fence_after(),
            behavior: crate::consul::SessionBehavior::Release,
        },
    );
    // A servant that still answers for this node is not a predecessor: refuse rather than
    // destroy its sessions (which would kill its jobs).
    if let Some((addr, pid)) = live_peer(&client, &node, &cfg.kv_prefix).await {
        return Err(AgentError::NodeServed { node, addr, pid });
    }
    // An earlier run's containers are stopped and removed first (a watchdog that died with
    // its agent, or an Engine that was down, may have left one running), so that no retry of
    // their jobs ever runs beside them.
    remove_stale_containers(cfg, &node).await;
    // An earlier run's jobs are released then (no lock-delay: its work died with it), then its
    // session is ended.
    let dead = keeper.predecessors(&node).await;
    crate::jobs::worker::release_predecessors(&client, &layout, &node, &dead).await;
    for id in &dead {
        keeper.destroy_predecessor(id).await;
    }
    let Some(started) = unless_stopped(stop, keeper.start()).await else {
        return Ok(());
    };
    started?;
    // From here the session exists: it is destroyed on every way out.
    let deadline_rx = keeper.deadline();
    let keeper_stop = CancellationToken::new();
    let keeper_task = tokio::spawn(keeper.run(keeper_stop.clone()));
    let outcome = serve_parts(cfg, &client, &node, layout, session_rx, deadline_rx, stop).await;
    keeper_stop.cancel();
    let _ = keeper_task.await;
    outcome
}

/// Serves the API and runs the parts until `stop`; returns once every part has ended.
async fn serve_parts(
    cfg: &AgentConfig,
    client: &Client,
    node: &str,
    layout: Namespace,
    session_rx: tokio::sync::watch::Receiver<crate::consul::SessionState>,
    deadline_rx: tokio::sync::watch::Receiver<Option<u64>>,
    stop: &CancellationToken,
) -> Result<(), AgentError> {
    let session_name = layout.jobs_session();
    let log_dir = cfg.data_dir.join("logs");
    let listener = tokio::net::TcpListener::bind(&cfg.api_addr)
        .await
        .map_err(|e| AgentError::Api {
            addr: cfg.api_addr.clone(),
            error: e,
        })?;
    let api_addr = listener.local_addr().map_err(|e| AgentError::Api {
        addr: cfg.api_addr.clone(),
        error: e,
    })?;
    // The API outlives the parts, so `servant logs` works while jobs drain.
    let api_stop = CancellationToken::new();
    // This node's containers: sampled when the report or a scrape reads them, never more
    // often than every CONTAINER_STATS_AGE.
    let containers = ContainerMonitor::new(node, layout.prefix(), CONTAINER_STATS_AGE);
    let mut metrics = AgentMetrics::new();
    metrics.add_containers(containers.clone());
    let part_metrics = PartMetrics::default();
    part_metrics.register(&mut metrics);
    client.metrics().register(metrics.registry_mut());
    // The dashboard's and the JSON API's shared watches; they start at the first read.
    let hub_tasks = TaskTracker::new();
    let hub = Hub::new(
        client.for_part("dashboard"),
        layout.clone(),
        hub_tasks.clone(),
        api_stop.clone(),
    );
    // The worker fills it, the API redacts running jobs' logs with it.
    let secrets = crate::util::redact::SecretRegistry::default();
    // Before the API serves them: logs an earlier run could not redact (it died mid-job).
    crate::jobs::worker::withhold_unsealed_logs(&log_dir).await;
    let api_state = ApiState {
        log_dir,
        apps_log_dir: cfg.data_dir.join("apps"),
        node: node.to_string(),
        metrics: Arc::new(metrics),
        client: client.for_part("api"),
        layout: layout.clone(),
        containers: containers.clone(),
        hub,
        peer: reqwest::Client::new(),
        acls: Default::default(),
        secrets: secrets.clone(),
    };
    let api = {
        let api_stop = api_stop.clone();
        tokio::spawn(async move {
            let app = router(api_state);
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { api_stop.cancelled().await })
                .await;
        })
    };
    let service_id = layout.servant_service_id(node);
    forget_legacy_registration(client, node, &service_id, &cfg.kv_prefix).await;
    let reg = AgentServiceRegistration {
        id: Some(service_id.clone()),
        name: "servant".into(),
        port: Some(api_addr.port()),
        address: Some(api_addr.ip().to_string()),
        meta: [("kv_prefix".to_string(), cfg.kv_prefix.clone())]
            .into_iter()
            .collect(),
        ..Default::default()
    };
    if let Err(e) = client.agent_service_register(&reg).await {
        warn!(error = %e, "cannot register the agent API as service servant; `servant logs` will not find this node");
    }
    info!(api = %api_addr, dashboard = %format!("http://{api_addr}/ui/"), "agent API and dashboard listening");
    if !api_addr.ip().is_loopback() {
        warn!(api = %api_addr, "the agent API and dashboard listen beyond loopback: anyone who reaches this address reads the cluster's jobs and their output");
    }
    let outcome = run_parts(
        cfg,
        client,
        node,
        layout,
        session_name,
        (session_rx, deadline_rx),
        containers,
        secrets,
        part_metrics,
        stop,
    )
    .await;
    if let Err(e) = client.agent_service_deregister(&service_id).await {
        warn!(error = %e, "cannot deregister the agent API service");
    }
    api_stop.cancel();
    let _ = api.await;
    hub_tasks.close();
    hub_tasks.wait().await;
    info!("servant agent stopped");
    outcome
}

/// Starts every part on one tracker and waits, after `stop`, for all of them to end.
#[allow(clippy::too_many_arguments)]
async fn run_parts(
    cfg: &AgentConfig,
    client: &Client,
    node: &str,
    layout: Namespace,
    session_name: String,
    (session_rx, deadline_rx): (
        tokio::sync::watch::Receiver<crate::consul::SessionState>,
        tokio::sync::watch::Receiver<Option<u64>>,
    ),
    containers: ContainerMonitor,
    secrets: crate::util::redact::SecretRegistry,
    metrics: PartMetrics,
    stop: &CancellationToken,
) -> Result<(), AgentError> {
    let shim_exe = std::env::current_exe().map_err(AgentError::Exe)?;
    let parts = TaskTracker::new();
    let worker = Worker::new(
        client.for_part("jobs"),
        WorkerConfig {
            layout: layout.clone(),
            node: node.to_string(),
            session_name,
            max_parallel: cfg.max_parallel,
            claim_stagger: cfg.claim_stagger,
            claim_retry: Duration::from_millis(500)
                .min(cfg.lock_delay.max(Duration::from_millis(100))),
            output_cap: cfg.output_cap,
            kill_grace: cfg.kill_grace,
            shutdown_grace: cfg.shutdown_grace,
            log_dir: cfg.data_dir.join("logs"),
            shim_exe: shim_exe.clone(),
            watch_wait: cfg.watch_wait,
            result_max_age: cfg.result_max_age,
            gc_interval: cfg.result_gc_interval,
            docker: cfg.docker.driver(),
            metrics: metrics.jobs.clone(),
            policy: cfg
                .jobs
                .compile()
                .map_err(super::config::ConfigError::from)?,
            secrets,
        },
        session_rx,
        deadline_rx,
    );
    parts.spawn(worker.run(stop.clone()));
    if cfg.checks.watch {
        parts.spawn(crate::checks::watcher::run(
            client.for_part("checks"),
            crate::checks::watcher::WatcherConfig {
                node: node.to_string(),
                environment: cfg.checks.environment.clone(),
                debounce: cfg.checks.debounce,
                timeout: cfg.checks.trigger_timeout,
                repeat: cfg.checks.repeat,
                scratch: std::env::temp_dir(),
                watch_wait: cfg.watch_wait,
                layout: layout.clone(),
                metrics: metrics.checks.clone(),
                policy: cfg.action_policy(node),
            },
            stop.clone(),
        ));
    }
    if !cfg.checks.guard.is_empty() {
        parts.spawn(crate::checks::guard::run(
            client.for_part("checks"),
            cfg.checks.guard.clone(),
            cfg.checks.environment.clone(),
            layout.clone(),
            shim_exe.clone(),
            cfg.watch_wait,
            stop.clone(),
        ));
    }
    if !cfg.template.is_empty() {
        let wait = cfg.template_wait.unwrap_or_default();
        let runner = crate::templates::runner::RunnerConfig {
            templates: cfg.template.clone(),
            wait_min: wait.min,
            wait_max: wait.max,
            once: false,
            dry: false,
            watch_wait: cfg.watch_wait,
            metrics: metrics.templates.clone(),
        };
        let client = client.for_part("templates");
        let stop = stop.clone();
        parts.spawn(async move {
            if let Err(e) = crate::templates::runner::run(client, runner, stop).await {
                tracing::error!(error = %e, "the agent's templates stopped");
            }
        });
    }
    if cfg.docker.registrator {
        parts.spawn(crate::registrator::run(
            client.for_part("registrator"),
            cfg.docker.registrator(),
            node.to_string(),
            metrics.registrator.clone(),
            stop.clone(),
        ));
    }
    if cfg.apps.enabled {
        let mut apps_cfg = crate::apps::node::AppsNodeConfig::new(
            &cfg.apps,
            node,
            layout,
            shim_exe,
            cfg.data_dir.join("apps"),
            cfg.kill_grace,
            cfg.watch_wait,
        );
        apps_cfg.containers = Some(containers);
        apps_cfg.metrics = metrics.apps.clone();
        apps_cfg.policy = cfg
            .jobs
            .compile()
            .map_err(super::config::ConfigError::from)?;
        parts.spawn(crate::apps::node::run(
            client.for_part("apps"),
            apps_cfg,
            stop.clone(),
        ));
    }
    parts.close();
    if !stop.is_cancelled() {
        info!(node = %node, "servant agent ready");
    }
    stop.cancelled().await;
    info!("no new jobs; waiting for running jobs and the other parts");
    parts.wait().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::consul::{Client, ClientConfig, KvPutOptions, QueryOptions};

    /// The agent calls its embedded server in process: answers, indexes, a missing key, a
    /// refused write, an error and a blocking read are what the same server gives over TCP.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_in_process_client_gets_what_a_tcp_client_gets() {
        let dir = tempfile::tempdir().unwrap();
        let d = crate::devserver::DevServer::start(dir.path(), "127.0.0.1:0", "n1", None)
            .await
            .unwrap();
        let tcp = Client::new(&ClientConfig {
            address: Some(d.addr.to_string()),
            ..Default::default()
        })
        .unwrap();
        let local = tcp.clone().in_process(d.router.clone());
        let put = KvPutOptions::default();
        let now = QueryOptions::default();

        assert!(local.kv_put("a/b", b"one", &put).await.unwrap());
        let (over_tcp, tcp_meta) = tcp.kv_get("a/b", &now).await.unwrap();
        let (in_process, meta) = local.kv_get("a/b", &now).await.unwrap();
        assert_eq!(in_process.unwrap().value, b"one");
        assert_eq!(over_tcp.unwrap().value, b"one");
        assert!(meta.index > 0 && meta.known_leader, "{meta:?}");
        assert_eq!(meta.index, tcp_meta.index);
        assert_eq!(local.kv_get_raw("a/none").await.unwrap(), None);
        let stale = KvPutOptions {
            cas: Some(meta.index + 1000),
            ..Default::default()
        };
        assert!(!local.kv_put("a/b", b"two", &stale).await.unwrap());

        let no_session = KvPutOptions {
            acquire: Some("00000000-0000-0000-0000-000000000000".into()),
            ..Default::default()
        };
        let e_tcp = tcp.kv_put("a/c", b"", &no_session).await.unwrap_err();
        let e_local = local.kv_put("a/c", b"", &no_session).await.unwrap_err();
        assert_eq!(e_local.to_string(), e_tcp.to_string());

        // A blocking read held in process is answered by a write over TCP.
        let wait = QueryOptions {
            index: meta.index,
            wait: Some(Duration::from_secs(20)),
            ..Default::default()
        };
        let reader = local.clone();
        let held = tokio::spawn(async move { reader.kv_get("a/b", &wait).await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!held.is_finished(), "the read waits for a change");
        assert!(tcp.kv_put("a/b", b"three", &put).await.unwrap());
        let (pair, after) = tokio::time::timeout(Duration::from_secs(10), held)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(pair.unwrap().value, b"three");
        assert!(after.index > meta.index);
        d.stop();
    }
}
