//! `servant check service`: is a Linux service running, and is that what this node's role
//! expects? The service manager is asked the way an operator would: systemd's `systemctl
//! is-active`, a sysvinit/LSB script's `status` (exit 0 running, 3 stopped), the `service`
//! wrapper, or an explicit status command.

use std::path::Path;
use std::time::Duration;

use super::role::{
    environment, expects_running, judge, parse_roles, role_of, ClusterRoles, Grouping, Role,
    RoleError,
};
use super::verdict::Verdict;
use crate::consul::{Client, ConsulError, QueryOptions};
use crate::process::{run_with_timeout, LaunchSpec, Limits, Outcome, Output, ProcessDriver};
use crate::wire::{HealthStatus, Namespace};

/// Why the check cannot tell what this node should do: each is a critical verdict that says so.
#[derive(Debug, thiserror::Error)]
pub enum ServiceCheckError {
    #[error("cannot ask the local Consul agent: {0}")]
    LocalAgent(ConsulError),
    #[error("cannot read {key}: {error}")]
    Roles { key: String, error: ConsulError },
    #[error(transparent)]
    Role(#[from] RoleError),
    #[error("cannot read the health of {node}: {error}")]
    NodeHealth { node: String, error: ConsulError },
    #[error("cannot read {service} in {dc}: {error}")]
    ServiceHealth {
        service: String,
        dc: String,
        error: ConsulError,
    },
}

/// How long a status command may take before the check calls it critical.
const STATUS_TIMEOUT: Duration = Duration::from_secs(30);

/// Who knows whether the service runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manager {
    /// `systemctl is-active --quiet <svc>`.
    Systemd,
    /// `/etc/init.d/<svc> status`.
    SysV,
    /// `service <svc> status`.
    ServiceWrapper,
    /// `sh -c <cmd>`, read like an LSB status (0 running, 3 stopped).
    Command(String),
}

/// Picks the manager: an explicit command; systemd when it is PID 1's manager; an init script
/// when one exists; else the `service` wrapper.
pub fn detect(service: &str, status_cmd: Option<&str>, root: &Path) -> Manager {
    if let Some(c) = status_cmd {
        return Manager::Command(c.to_string());
    }
    if root.join("run/systemd/system").is_dir() {
        return Manager::Systemd;
    }
    if root.join("etc/init.d").join(service).is_file() {
        return Manager::SysV;
    }
    Manager::ServiceWrapper
}

/// Why the service manager gave no answer the check can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusFailure {
    /// LSB's 4: "status unknown", usually no such service.
    Unknown,
    /// An exit code LSB gives no meaning to.
    Exited(i32),
    Signal,
    /// It could not be started.
    CannotRun(String),
    NoAnswer(Duration),
}

/// A service manager's failure to answer, with what was asked and what it said on stderr.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct StatusError {
    /// What was asked (`systemctl is-active web`, `status command "..."`).
    pub what: String,
    pub failure: StatusFailure,
    /// Its stderr, capped; empty when it said nothing.
    pub stderr: String,
}

impl std::fmt::Display for StatusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = &self.what;
        match &self.failure {
            StatusFailure::Unknown => {
                write!(f, "{what}: status unknown (exit 4: no such service?)")?
            }
            StatusFailure::Exited(c) => write!(f, "{what}: exited {c}")?,
            StatusFailure::Signal => write!(f, "{what}: killed by a signal")?,
            StatusFailure::CannotRun(why) => write!(f, "{what}: cannot run: {why}")?,
            StatusFailure::NoAnswer(t) => write!(f, "{what}: no answer within {t:?}")?,
        }
        match self.stderr.trim() {
            "" => Ok(()),
            err => write!(f, " ({err})"),
        }
    }
}

/// Reads an LSB status exit code: running, stopped, or an error to report as critical.
pub fn lsb_status(code: Option<i32>, what: &str) -> Result<bool, StatusError> {
    let failure = match code {
        Some(0) => return Ok(true),
        // 1: dead, pid file left; 2: dead, lock file left; 3: not running.
        Some(1..=3) => return Ok(false),
        Some(4) => StatusFailure::Unknown,
        Some(c) => StatusFailure::Exited(c),
        None => StatusFailure::Signal,
    };
    Err(StatusError {
        what: what.to_string(),
        failure,
        stderr: String::new(),
    })
}

/// Asks the manager whether `service` runs.
pub async fn is_running(m: &Manager, service: &str) -> Result<bool, StatusError> {
    status_within(m, service, STATUS_TIMEOUT).await
}

/// Bytes of a status command's stderr quoted when its answer is not LSB.
const STDERR_CAP: usize = 512;

/// `is_running` with its timeout. The command runs in a process group of its own, so a
/// command past its timeout is killed with everything it started.
async fn status_within(m: &Manager, service: &str, timeout: Duration) -> Result<bool, StatusError> {
    let argv = |a: &[&str]| LaunchSpec::new(a.iter().map(|s| s.to_string()).collect());
    let (spec, what) = match m {
        Manager::Systemd => (
            argv(&["systemctl", "is-active", "--quiet", service]),
            format!("systemctl is-active {service}"),
        ),
        Manager::SysV => {
            let script = format!("/etc/init.d/{service}");
            (argv(&[&script, "status"]), format!("{script} status"))
        }
        Manager::ServiceWrapper => (
            argv(&["service", service, "status"]),
            format!("service {service} status"),
        ),
        Manager::Command(s) => (
            LaunchSpec::shell(s, &Default::default()),
            format!("status command {s:?}"),
        ),
    };
    let spec = spec.output(Output::Capture {
        dir: None,
        combined: false,
    });
    let done = run_with_timeout(
        &ProcessDriver::current(),
        &spec,
        Limits::new(timeout, STDERR_CAP),
    )
    .await
    .map_err(|e| StatusError {
        what: what.clone(),
        failure: StatusFailure::CannotRun(e.detail()),
        stderr: String::new(),
    })?;
    match done.outcome {
        // systemctl: 0 active, 3 inactive/failed, 4 no such unit.
        Outcome::Exited { code, .. } => lsb_status(Some(code), &what).map_err(|e| StatusError {
            stderr: done.output.stderr.trim().to_string(),
            ..e
        }),
        Outcome::TimedOut | Outcome::Killed(_) => Err(StatusError {
            what,
            failure: StatusFailure::NoAnswer(timeout),
            stderr: String::new(),
        }),
    }
}

/// Whether some active node (or some node in an active datacenter) is healthy: its serfHealth
/// and the service's own checks all passing.
pub async fn active_healthy(
    client: &Client,
    roles: &ClusterRoles,
    consul_service: &str,
) -> Result<bool, ServiceCheckError> {
    let ours = |c: &crate::consul::HealthCheck| {
        c.check_id != "serfHealth"
            && (c.service_name == consul_service
                || c.name == consul_service
                || c.check_id == consul_service)
    };
    match roles.grouping {
        Grouping::Nodes => {
            for node in &roles.active {
                let (checks, _) = client
                    .health_node(node, &QueryOptions::default())
                    .await
                    .map_err(|error| ServiceCheckError::NodeHealth {
                        node: node.clone(),
                        error,
                    })?;
                let serf = checks
                    .iter()
                    .any(|c| c.check_id == "serfHealth" && c.status == HealthStatus::Passing);
                let svc: Vec<_> = checks.iter().filter(|c| ours(c)).collect();
                if serf && !svc.is_empty() && svc.iter().all(|c| c.status == HealthStatus::Passing)
                {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        Grouping::Datacenters => {
            for dc in &roles.active {
                let q = QueryOptions {
                    dc: Some(dc.clone()),
                    ..Default::default()
                };
                let (entries, _) = client
                    .health_service(consul_service, false, &q)
                    .await
                    .map_err(|error| ServiceCheckError::ServiceHealth {
                        service: consul_service.to_string(),
                        dc: dc.clone(),
                        error,
                    })?;
                if entries.iter().any(|e| {
                    !e.checks.is_empty()
                        && e.checks.iter().all(|c| c.status == HealthStatus::Passing)
                }) {
                    return Ok(true);
                }
            }
            Ok(false)
        }
    }
}

/// What `servant check service` needs.
#[derive(Debug, Clone)]
pub struct ServiceCheck {
    /// The local service (`-s`).
    pub linux_service: String,
    /// The Consul service the roles and triggers are keyed by (`-S`).
    pub consul_service: String,
    /// Overrides the service manager.
    pub status_cmd: Option<String>,
    /// The environment; else the hostname's prefix.
    pub environment: Option<String>,
}

/// This node as checks and triggers see it.
#[derive(Debug, Clone)]
pub struct Local {
    /// Consul's node name (`@HOST`, and the name in `active_nodes`).
    pub node: String,
    /// Consul's datacenter (the name in `active_datacenters`).
    pub datacenter: String,
    /// `@ENV`: configured, else the hostname's prefix.
    pub env: String,
    /// Where the role data and the triggers are (`kv_prefix`).
    pub layout: Namespace,
}

/// Asks the local agent who this node is.
pub async fn local(
    client: &Client,
    env: Option<&str>,
    layout: &Namespace,
) -> Result<Local, ServiceCheckError> {
    let me = client
        .agent_self()
        .await
        .map_err(ServiceCheckError::LocalAgent)?;
    let (node, datacenter) = (me.node_name, me.datacenter);
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| node.clone());
    Ok(Local {
        env: environment(env, &host),
        node,
        datacenter,
        layout: layout.clone(),
    })
}

/// This node's role for `consul_service`, with the role data (None: standalone).
pub async fn role_for(
    client: &Client,
    me: &Local,
    consul_service: &str,
) -> Result<(Role, Option<ClusterRoles>), ServiceCheckError> {
    let key = me.layout.cluster(&me.env, consul_service);
    let body = client
        .kv_get_raw(&key)
        .await
        .map_err(|error| ServiceCheckError::Roles {
            key: key.clone(),
            error,
        })?;
    let roles = parse_roles(&key, body.as_deref())?;
    let role = role_of(roles.as_ref(), &me.node, &me.datacenter, &key)?;
    Ok((role, roles))
}

/// Runs the whole check. Every failure along the way is a critical verdict that says why.
pub async fn check(client: &Client, layout: &Namespace, c: &ServiceCheck) -> Verdict {
    match local(client, c.environment.as_deref(), layout).await {
        Ok(me) => check_as(client, &me, c).await,
        Err(e) => Verdict::error(e),
    }
}

/// The check for a node already known (a guard asks the agent who it is once, not per run).
pub async fn check_as(client: &Client, me: &Local, c: &ServiceCheck) -> Verdict {
    let base = |v: Verdict| {
        v.with("service", c.linux_service.clone())
            .with("consul_service", c.consul_service.clone())
            .with("environment", me.env.clone())
            .with("node", me.node.clone())
    };
    let (role, roles) = match role_for(client, me, &c.consul_service).await {
        Ok(r) => r,
        Err(e) => return base(Verdict::error(e)),
    };
    let healthy_active = match (&roles, role) {
        (Some(r), Role::Secondary) => match active_healthy(client, r, &c.consul_service).await {
            Ok(h) => Some(h),
            Err(e) => return base(Verdict::error(e).with("role", role.as_str())),
        },
        _ => None,
    };
    // Two stats of the local file system: off the async workers (a guard runs in the agent).
    let (svc, cmd) = (c.linux_service.clone(), c.status_cmd.clone());
    let manager =
        match tokio::task::spawn_blocking(move || detect(&svc, cmd.as_deref(), Path::new("/")))
            .await
        {
            Ok(m) => m,
            Err(e) => return base(Verdict::error(e).with("role", role.as_str())),
        };
    let running = match is_running(&manager, &c.linux_service).await {
        Ok(r) => r,
        Err(e) => return base(Verdict::error(e).with("role", role.as_str())),
    };
    let expected = expects_running(role, healthy_active.unwrap_or(false));
    let status = judge(expected, running);
    let state = |r: bool| if r { "running" } else { "stopped" };
    let why = match (role, healthy_active) {
        (Role::Secondary, Some(true)) => " (an active node is healthy)",
        (Role::Secondary, _) => " (no active node is healthy: this node takes over)",
        _ => "",
    };
    let message = format!(
        "{} is {}; as {}{why} it should be {}",
        c.linux_service,
        state(running),
        role.as_str(),
        state(expected)
    );
    let mut v = base(Verdict::new(status, message))
        .with("role", role.as_str())
        .with("expected", state(expected))
        .with("running", running);
    if let Some(h) = healthy_active {
        v = v.with("active_healthy", h);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsb_codes() {
        assert_eq!(lsb_status(Some(0), "x"), Ok(true));
        assert_eq!(lsb_status(Some(3), "x"), Ok(false));
        assert_eq!(lsb_status(Some(1), "x"), Ok(false));
        assert!(lsb_status(Some(4), "x")
            .unwrap_err()
            .to_string()
            .contains("unknown"));
        assert!(lsb_status(Some(127), "x").is_err());
        assert!(lsb_status(None, "x").is_err());
    }

    #[test]
    fn manager_detection_prefers_the_explicit_command_then_systemd_then_init_scripts() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(detect("web", None, root.path()), Manager::ServiceWrapper);
        std::fs::create_dir_all(root.path().join("etc/init.d")).unwrap();
        std::fs::write(root.path().join("etc/init.d/web"), "#!/bin/sh\n").unwrap();
        assert_eq!(detect("web", None, root.path()), Manager::SysV);
        std::fs::create_dir_all(root.path().join("run/systemd/system")).unwrap();
        assert_eq!(detect("web", None, root.path()), Manager::Systemd);
        assert_eq!(
            detect("web", Some("true"), root.path()),
            Manager::Command("true".into())
        );
    }

    #[tokio::test]
    async fn status_commands_are_read_by_exit_code() {
        assert_eq!(
            is_running(&Manager::Command("exit 0".into()), "x").await,
            Ok(true)
        );
        assert_eq!(
            is_running(&Manager::Command("exit 3".into()), "x").await,
            Ok(false)
        );
        assert!(is_running(&Manager::Command("exit 9".into()), "x")
            .await
            .is_err());
        let e = is_running(&Manager::Command("echo broken >&2; exit 9".into()), "x")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("exited 9 (broken)"), "{e}");
    }

    /// Issue 11: a status command past its timeout was killed alone; what it had started ran
    /// on.
    #[tokio::test]
    async fn a_status_command_past_its_timeout_leaves_no_process_behind() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let cmd = format!("sleep 300 & echo $! > {}; wait", pid_file.display());
        let t = std::time::Instant::now();
        let e = status_within(&Manager::Command(cmd), "x", Duration::from_millis(300))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("no answer within"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        let pid = crate::process::testing::read_pid(&pid_file);
        assert!(
            crate::process::testing::gone(pid).await,
            "the status command's child {pid} still runs"
        );
    }
}
