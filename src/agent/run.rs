//! `servant agent`: wires the pieces together and owns graceful shutdown.
//!
//! Order at start: launch Consul if asked and wait for a leader; learn the node name; create the
//! node session; serve the API and register it; run the job worker. At SIGINT/SIGTERM: stop
//! taking jobs, let running ones finish within the grace period, destroy the session, deregister,
//! and stop the launched Consul last.

use std::time::Duration;

use tokio::sync::broadcast;
use tracing::{info, warn};

use super::api::{router, ApiState};
use super::config::AgentConfig;
use super::consul_proc::{ConsulProcess, LaunchError};
use super::datadir::{live_peer, DataDirLock};
use crate::consul::{AgentServiceRegistration, Backoff, Client, ConsulError};
use crate::consul::{SessionKeeper, SessionSettings};
use crate::devserver::DevServer;
use crate::jobs::worker::{Worker, WorkerConfig};
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

/// Resolves when SIGINT or SIGTERM arrives.
async fn termination() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Runs the agent until a termination signal.
pub async fn run(mut cfg: AgentConfig) -> Result<(), AgentError> {
    cfg.validate()?;
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| AgentError::DataDir {
        path: cfg.data_dir.display().to_string(),
        error: e,
    })?;
    cfg.data_dir = cfg
        .data_dir
        .canonicalize()
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
    let consul = if cfg.consul.wanted() {
        Some(
            ConsulProcess::start(&cfg.consul, &cfg.data_dir, client.clone(), STARTUP_TIMEOUT)
                .await?,
        )
    } else {
        None
    };
    let outcome = serve(&cfg, client).await;
    if let Some(c) = consul {
        info!("stopping the launched consul agent");
        c.stop().await;
    }
    if let Some(d) = dev {
        d.stop();
    }
    outcome
}

async fn node_name(client: &Client) -> Result<String, ConsulError> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
    loop {
        match client.agent_node_name().await {
            Ok(n) => return Ok(n),
            Err(e) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                warn!(error = %e, "waiting for consul");
                tokio::time::sleep(backoff.fail()).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn serve(cfg: &AgentConfig, client: Client) -> Result<(), AgentError> {
    let node = node_name(&client).await?;
    let layout = Namespace::new(&cfg.kv_prefix);
    let session_name = layout.jobs_session();
    info!(node = %node, consul = client.base_url(), "servant agent starting");
    let (keeper, session_rx) = SessionKeeper::new(
        client.clone(),
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
    keeper.clear_predecessors(&node).await;
    keeper.start().await?;

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
    let (shutdown, _) = broadcast::channel::<()>(4);
    let mut api_stop = shutdown.subscribe();
    let api_state = ApiState {
        log_dir,
        apps_log_dir: cfg.data_dir.join("apps"),
        node: node.clone(),
    };
    let api = tokio::spawn(async move {
        let app = router(api_state);
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = api_stop.recv().await;
            })
            .await;
    });
    let service_id = format!("servant-{node}");
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
    info!(api = %api_addr, "agent API listening");

    let (keeper_stop, _) = broadcast::channel::<()>(1);
    let keeper_task = tokio::spawn(keeper.run(keeper_stop.subscribe()));
    let shim_exe = std::env::current_exe().map_err(AgentError::Exe)?;
    let apps_layout = layout.clone();
    let worker = Worker::new(
        client.clone(),
        WorkerConfig {
            layout: layout.clone(),
            node: node.clone(),
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
        },
        session_rx,
    );
    let worker_task = tokio::spawn(worker.run(shutdown.clone()));
    let watcher_task = cfg.checks.watch.then(|| {
        tokio::spawn(crate::checks::watcher::run(
            client.clone(),
            crate::checks::watcher::WatcherConfig {
                node: node.clone(),
                environment: cfg.checks.environment.clone(),
                debounce: cfg.checks.debounce,
                timeout: cfg.checks.trigger_timeout,
                repeat: cfg.checks.repeat,
                scratch: std::env::temp_dir(),
                watch_wait: cfg.watch_wait,
                layout: layout.clone(),
            },
            shutdown.subscribe(),
        ))
    });
    let guard_task = (!cfg.checks.guard.is_empty()).then(|| {
        tokio::spawn(crate::checks::guard::run(
            client.clone(),
            cfg.checks.guard.clone(),
            cfg.checks.environment.clone(),
            layout.clone(),
            shim_exe.clone(),
            shutdown.subscribe(),
        ))
    });
    let templates_task = (!cfg.template.is_empty()).then(|| {
        let wait = cfg.template_wait.unwrap_or_default();
        let runner = crate::templates::runner::RunnerConfig {
            templates: cfg.template.clone(),
            wait_min: wait.min,
            wait_max: wait.max,
            once: false,
            dry: false,
            watch_wait: cfg.watch_wait,
        };
        let client = client.clone();
        let stop = shutdown.subscribe();
        tokio::spawn(async move {
            if let Err(e) = crate::templates::runner::run(client, runner, stop).await {
                tracing::error!(error = %e, "the agent's templates stopped");
            }
        })
    });
    let apps_task = cfg.apps.enabled.then(|| {
        let apps_cfg = crate::apps::node::AppsNodeConfig::new(
            &cfg.apps,
            &node,
            apps_layout,
            shim_exe.clone(),
            cfg.data_dir.join("apps"),
            cfg.kill_grace,
            cfg.watch_wait,
        );
        tokio::spawn(crate::apps::node::run(
            client.clone(),
            apps_cfg,
            shutdown.subscribe(),
        ))
    });
    info!(node = %node, "servant agent ready");

    termination().await;
    info!("signal received: no new jobs; waiting for running jobs");
    let _ = shutdown.send(());
    let _ = worker_task.await;
    for t in [apps_task, watcher_task, guard_task, templates_task]
        .into_iter()
        .flatten()
    {
        let _ = t.await;
    }
    let _ = keeper_stop.send(());
    let _ = keeper_task.await;
    if let Err(e) = client.agent_service_deregister(&service_id).await {
        warn!(error = %e, "cannot deregister the agent API service");
    }
    let _ = api.await;
    info!("servant agent stopped");
    Ok(())
}
