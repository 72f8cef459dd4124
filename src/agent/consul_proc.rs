//! Launching and supervising the local `consul agent` (consul_servant's one-executable start).
//!
//! Consul runs under the job shim, so it dies with the servant even on SIGKILL. It is restarted
//! with back-off if it exits on its own, and asked to leave (SIGINT) when the servant stops.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use super::config::LaunchConfig;
use crate::consul::Client;
use crate::util::backoff::Backoff;

/// Errors of the launched agent.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("no consul binary: set CONSUL_BIN, put consul on PATH, or run scripts/install-consul")]
    NoBinary,
    #[error("cannot start {bin}: {error}")]
    Spawn { bin: String, error: std::io::Error },
    #[error("cannot create {path}: {error}")]
    Dir { path: String, error: std::io::Error },
    #[error("consul elected no leader within {0:?}; see {1}")]
    NoLeader(Duration, String),
}

/// Finds the consul binary: the configured one, CONSUL_BIN, then PATH.
pub fn find_consul(cfg: &LaunchConfig) -> Result<String, LaunchError> {
    if let Some(b) = cfg
        .bin
        .clone()
        .or_else(|| std::env::var("CONSUL_BIN").ok().filter(|v| !v.is_empty()))
    {
        return Ok(b);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("consul"))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
        .ok_or(LaunchError::NoBinary)
}

/// The `consul agent` arguments for a launch configuration.
pub fn consul_args(cfg: &LaunchConfig, data_dir: &std::path::Path) -> Vec<String> {
    let mut a = vec!["agent".to_string()];
    if cfg.dev {
        a.push("-dev".into());
    } else {
        a.push(format!("-data-dir={}", data_dir.display()));
    }
    if cfg.server {
        a.push("-server".into());
    }
    if let Some(n) = cfg.bootstrap_expect {
        a.push(format!("-bootstrap-expect={n}"));
    }
    for j in &cfg.join {
        a.push(format!("-retry-join={j}"));
    }
    if let Some(b) = &cfg.bind {
        a.push(format!("-bind={b}"));
    }
    if let Some(c) = &cfg.client {
        a.push(format!("-client={c}"));
    }
    if let Some(n) = &cfg.node {
        a.push(format!("-node={n}"));
    }
    a.extend(cfg.extra_args.iter().cloned());
    a
}

/// A supervised consul agent; dropping the stop sender (or calling `stop`) ends it.
pub struct ConsulProcess {
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
    /// Consul's output goes here.
    pub log_path: PathBuf,
}

struct Spawned {
    child: Child,
    pid_file: PathBuf,
}

fn spawn(
    bin: &str,
    args: &[String],
    shim: &std::path::Path,
    log: &std::path::Path,
    pid_file: &std::path::Path,
) -> Result<Spawned, LaunchError> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| LaunchError::Dir {
            path: log.display().to_string(),
            error: e,
        })?;
    let err = out.try_clone().map_err(|e| LaunchError::Dir {
        path: log.display().to_string(),
        error: e,
    })?;
    let _ = std::fs::remove_file(pid_file);
    let child = Command::new(shim)
        .arg("__job-shim")
        .arg("--parent")
        .arg(std::process::id().to_string())
        .arg("--pid-file")
        .arg(pid_file)
        .arg("--")
        .arg(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| LaunchError::Spawn {
            bin: bin.to_string(),
            error: e,
        })?;
    Ok(Spawned {
        child,
        pid_file: pid_file.to_path_buf(),
    })
}

fn consul_pid(pid_file: &std::path::Path) -> Option<i32> {
    std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()
}

/// Asks consul to leave (SIGINT), waits up to `grace` (the shim exits with consul), then kills
/// whatever is left of the group.
async fn stop_child(mut s: Spawned, grace: Duration) {
    let pgid = s.child.id().unwrap_or(0);
    if let Some(pid) = consul_pid(&s.pid_file) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGINT);
        let _ = tokio::time::timeout(grace, s.child.wait()).await;
    }
    crate::jobs::runner::signal_group(pgid, Signal::SIGKILL);
    let _ = s.child.wait().await;
}

impl ConsulProcess {
    /// Starts consul and waits until the cluster has a leader (or `leader_timeout` passes).
    pub async fn start(
        cfg: &LaunchConfig,
        servant_data: &std::path::Path,
        client: Client,
        leader_timeout: Duration,
    ) -> Result<Self, LaunchError> {
        let bin = find_consul(cfg)?;
        let data_dir = cfg
            .data_dir
            .clone()
            .unwrap_or_else(|| servant_data.join("consul"));
        std::fs::create_dir_all(&data_dir).map_err(|e| LaunchError::Dir {
            path: data_dir.display().to_string(),
            error: e,
        })?;
        let shim = std::env::current_exe().map_err(|e| LaunchError::Spawn {
            bin: "servant".into(),
            error: e,
        })?;
        let args = consul_args(cfg, &data_dir);
        let log_path = servant_data.join("consul.log");
        let pid_file = servant_data.join("consul.pid");
        info!(bin = %bin, args = ?args, log = %log_path.display(), "launching consul");
        let first = spawn(&bin, &args, &shim, &log_path, &pid_file)?;
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let log2 = log_path.clone();
        let done = tokio::spawn(async move {
            let mut current = first;
            let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
            loop {
                tokio::select! {
                    st = current.child.wait() => {
                        let pause = backoff.fail();
                        error!(status = ?st, restart_in = ?pause, "consul exited; restarting it");
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = &mut stop_rx => return,
                        }
                        match spawn(&bin, &args, &shim, &log2, &pid_file) {
                            Ok(s) => current = s,
                            Err(e) => { error!(error = %e, "cannot restart consul"); return; }
                        }
                    }
                    _ = &mut stop_rx => {
                        stop_child(current, Duration::from_secs(10)).await;
                        return;
                    }
                }
            }
        });
        let me = ConsulProcess {
            stop: Some(stop_tx),
            done: Some(done),
            log_path: log_path.clone(),
        };
        let deadline = tokio::time::Instant::now() + leader_timeout;
        loop {
            match client.status_leader().await {
                Ok(l) if !l.is_empty() => {
                    info!(leader = %l, "consul has a leader");
                    return Ok(me);
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "consul not answering yet"),
            }
            if tokio::time::Instant::now() > deadline {
                me.stop().await;
                return Err(LaunchError::NoLeader(
                    leader_timeout,
                    log_path.display().to_string(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Makes consul leave and waits for it to exit.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(d) = self.done.take() {
            if d.await.is_err() {
                warn!("consul supervisor ended abnormally");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_for_a_joining_client() {
        let cfg = LaunchConfig {
            join: vec!["127.0.0.2".into()],
            bind: Some("127.0.0.3".into()),
            client: Some("127.0.0.3".into()),
            ..Default::default()
        };
        let a = consul_args(&cfg, std::path::Path::new("/d"));
        assert_eq!(
            a,
            vec![
                "agent",
                "-data-dir=/d",
                "-retry-join=127.0.0.2",
                "-bind=127.0.0.3",
                "-client=127.0.0.3"
            ]
        );
    }

    #[test]
    fn args_for_a_bootstrapping_server() {
        let cfg = LaunchConfig {
            server: true,
            bootstrap_expect: Some(3),
            ..Default::default()
        };
        let a = consul_args(&cfg, std::path::Path::new("/d"));
        assert_eq!(
            a,
            vec!["agent", "-data-dir=/d", "-server", "-bootstrap-expect=3"]
        );
    }
}
