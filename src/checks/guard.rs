//! Guarded services: the agent registers each configured Consul service with a `servant check
//! service` check, either as a TTL check it runs and updates itself (works on any Consul) or as
//! a script check Consul runs (needs Consul's `enable_script_checks`: it refuses script checks
//! registered over HTTP otherwise).

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::config::{GuardConfig, GuardMode};
use super::service::{self, ServiceCheck};
use super::verdict::Verdict;
use crate::consul::{
    spawn_watch, AgentCheckRegistration, AgentServiceRegistration, CheckUpdate, Client,
};
use crate::wire::HealthStatus;
use crate::wire::Namespace;

/// The check's ID on the local agent.
pub fn check_id(g: &GuardConfig) -> String {
    format!("servant:{}", g.consul_service)
}

/// The registration: the service, with its one check.
pub fn registration(
    g: &GuardConfig,
    exe: &str,
    http_addr: &str,
    env: Option<&str>,
    layout: &Namespace,
) -> AgentServiceRegistration {
    let interval = format!("{}ms", g.interval.as_millis());
    let check = if g.mode == GuardMode::Script {
        let mut args = vec![
            exe.to_string(),
            "--http-addr".into(),
            http_addr.to_string(),
            "check".into(),
            "service".into(),
            "-s".into(),
            g.linux_service.clone(),
            "-S".into(),
            g.consul_service.clone(),
        ];
        if let Some(c) = &g.status_cmd {
            args.extend(["--status-cmd".into(), c.clone()]);
        }
        if let Some(e) = env {
            args.extend(["--env".into(), e.to_string()]);
        }
        if !layout.prefix().is_empty() {
            args.extend(["--kv-prefix".into(), layout.prefix().to_string()]);
        }
        AgentCheckRegistration {
            check_id: Some(check_id(g)),
            name: Some(format!("servant check {}", g.consul_service)),
            args: Some(args),
            interval: Some(interval),
            timeout: Some("30s".into()),
            ..Default::default()
        }
    } else {
        AgentCheckRegistration {
            check_id: Some(check_id(g)),
            name: Some(format!("servant check {}", g.consul_service)),
            // Three missed runs turn it critical.
            ttl: Some(format!("{}ms", (g.interval * 3).as_millis())),
            ..Default::default()
        }
    };
    let mut meta = std::collections::BTreeMap::new();
    meta.insert("servant_guard".to_string(), g.linux_service.clone());
    AgentServiceRegistration {
        id: Some(g.consul_service.clone()),
        name: g.consul_service.clone(),
        meta,
        checks: vec![check],
        ..Default::default()
    }
}

/// Registers every guard, runs the TTL ones until `shutdown`, then deregisters them all.
pub async fn run(
    client: Client,
    guards: Vec<GuardConfig>,
    env: Option<String>,
    layout: Namespace,
    exe: PathBuf,
    watch_wait: Duration,
    stop: CancellationToken,
) {
    let exe = exe.display().to_string();
    let addr = client.base_url().to_string();
    for g in &guards {
        let reg = registration(g, &exe, &addr, env.as_deref(), &layout);
        match client.agent_service_register(&reg).await {
            Ok(()) => info!(service = %g.consul_service, mode = %g.mode, "guard registered"),
            Err(e) => warn!(service = %g.consul_service, error = %e, "cannot register the guard"),
        }
    }
    let tasks = TaskTracker::new();
    for g in guards.iter().filter(|g| g.mode == GuardMode::Ttl).cloned() {
        let client = client.clone();
        let env = env.clone();
        let layout = layout.clone();
        let stop = stop.clone();
        let c = client.clone();
        let svc = g.consul_service.clone();
        // The service's health across the cluster (an active node's serfHealth or check).
        let mut health = spawn_watch(
            &tasks,
            "guarded service health",
            watch_wait,
            move |q| {
                let c = c.clone();
                let svc = svc.clone();
                async move { c.health_service(&svc, false, &q).await }
            },
            &stop,
        );
        tasks.spawn(async move {
            let c = ServiceCheck {
                linux_service: g.linux_service.clone(),
                consul_service: g.consul_service.clone(),
                status_cmd: g.status_cmd.clone(),
                environment: env,
            };
            let id = check_id(&g);
            // Who this node is does not change while the agent runs: asked until known, once.
            let mut me: Option<service::Local> = None;
            loop {
                let started = tokio::time::Instant::now();
                let v = if let Some(m) = &me {
                    service::check_as(&client, m, &c).await
                } else {
                    match service::local(&client, c.environment.as_deref(), &layout).await {
                        Ok(m) => {
                            let v = service::check_as(&client, &m, &c).await;
                            me = Some(m);
                            v
                        }
                        Err(e) => Verdict::error(e),
                    }
                };
                let update = match v.status {
                    HealthStatus::Passing => CheckUpdate::Pass,
                    HealthStatus::Warning => CheckUpdate::Warn,
                    HealthStatus::Critical => CheckUpdate::Fail,
                };
                if let Err(e) = client
                    .agent_check_update(&id, update, Some(&v.json_line()))
                    .await
                {
                    warn!(check = %id, error = %e, "cannot update the guard's check");
                }
                // Wait for the interval, or sooner for a change in the service's health across
                // the cluster: a standby reacts to the active node's failure as soon as Consul
                // notices it, not at its next run. A check that is not passing is asked again
                // within a second: the action that fixes it (a trigger starting the service)
                // shows at once.
                let wait = if v.status == HealthStatus::Passing {
                    g.interval
                } else {
                    g.interval.min(Duration::from_secs(1))
                };
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                    r = health.changed() => if r.is_err() { return },
                }
                // Never busier than every 200 ms.
                let next = started + Duration::from_millis(200);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep_until(next) => {}
                }
            }
        });
    }
    stop.cancelled().await;
    tasks.close();
    tasks.wait().await;
    for g in &guards {
        let _ = client.agent_service_deregister(&g.consul_service).await;
    }
}
