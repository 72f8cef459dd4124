//! Launching and supervising the local `consul agent` (consul_servant's one-executable start).
//!
//! Consul runs under the job shim, so it dies with the servant even on SIGKILL. It is restarted
//! with the restart policy's back-off if it exits on its own, and asked to leave (SIGINT, to the
//! pid in its pid file) when the servant stops.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::config::LaunchConfig;
use crate::consul::Client;
use crate::process::local::find_on_path;
use crate::process::{
    Driver, LaunchSpec, Output, ProcessDriver, RestartPolicy, Signal, SpawnError, TaskHandle,
};

/// Restarts of a Consul that exits: 1 s, doubling up to 30 s; a run of `STABLE_RUN` starts
/// the back-off over.
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const STABLE_RUN: Duration = Duration::from_secs(60);
/// How long a leaving Consul may take before it is killed.
const LEAVE_GRACE: Duration = Duration::from_secs(10);

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

impl LaunchError {
    fn of_spawn(bin: &str, e: SpawnError) -> Self {
        match e {
            SpawnError::Log { path, error } => LaunchError::Dir { path, error },
            SpawnError::Spawn(error) => LaunchError::Spawn {
                bin: bin.to_string(),
                error,
            },
            other => LaunchError::Spawn {
                bin: bin.to_string(),
                error: std::io::Error::other(other.to_string()),
            },
        }
    }
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
    find_on_path("consul")
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

/// Keeps Consul running until `stop`: when it exits, waits the policy's pause and starts it
/// again (a start that fails is retried the same way); on `stop`, asks it to leave and kills
/// what is left after `LEAVE_GRACE`.
async fn keep_running<D: Driver>(
    driver: D,
    spec: LaunchSpec,
    mut current: D::Handle,
    mut policy: RestartPolicy,
    mut stop: oneshot::Receiver<()>,
) {
    let mut started = Instant::now();
    loop {
        let exited = tokio::select! {
            code = current.wait() => Some(code),
            _ = &mut stop => None,
        };
        let Some(code) = exited else {
            current.stop(Signal::SIGINT, LEAVE_GRACE).await;
            return;
        };
        let mut pause = policy.after_run(started.elapsed());
        error!(exit_code = code, ran = ?started.elapsed(), restart_in = ?pause, "consul exited; restarting it");
        loop {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = &mut stop => return,
            }
            match driver.launch(&spec).await {
                Ok(h) => {
                    info!(pgid = %h.id(), "consul restarted");
                    current = h;
                    started = Instant::now();
                    break;
                }
                Err(e) => {
                    pause = policy.after_failed_start();
                    error!(error = %e, retry_in = ?pause, "cannot restart consul");
                }
            }
        }
    }
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
        tokio::fs::create_dir_all(&data_dir)
            .await
            .map_err(|e| LaunchError::Dir {
                path: data_dir.display().to_string(),
                error: e,
            })?;
        let shim = std::env::current_exe().map_err(|e| LaunchError::Spawn {
            bin: "servant".into(),
            error: e,
        })?;
        let args = consul_args(cfg, &data_dir);
        let log_path = servant_data.join("consul.log");
        info!(bin = %bin, args = ?args, log = %log_path.display(), "launching consul");
        let mut argv = vec![bin.clone()];
        argv.extend(args);
        let spec = LaunchSpec::new(argv)
            .output(Output::Combined {
                path: log_path.clone(),
                append: true,
            })
            .pid_file(servant_data.join("consul.pid"));
        let driver = ProcessDriver::with_shim(shim);
        let first = driver
            .launch(&spec)
            .await
            .map_err(|e| LaunchError::of_spawn(&bin, e))?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let policy = RestartPolicy::new(MIN_BACKOFF, MAX_BACKOFF, STABLE_RUN);
        let done = tokio::spawn(keep_running(driver, spec, first, policy, stop_rx));
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
    use crate::process::Captured;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    /// A "consul" whose runs last the scripted durations, then exit 1.
    #[derive(Clone, Default)]
    struct Fake {
        runs: Arc<Mutex<VecDeque<Duration>>>,
        launches: Arc<Mutex<Vec<Instant>>>,
        stops: Arc<Mutex<Vec<Signal>>>,
    }

    struct FakeRun {
        ends: Instant,
        stops: Arc<Mutex<Vec<Signal>>>,
    }

    impl Driver for Fake {
        type Handle = FakeRun;
        async fn launch(&self, _: &LaunchSpec) -> Result<FakeRun, SpawnError> {
            let now = Instant::now();
            self.launches.lock().unwrap().push(now);
            let ran = self
                .runs
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Duration::from_secs(3600));
            Ok(FakeRun {
                ends: now + ran,
                stops: self.stops.clone(),
            })
        }
    }

    impl TaskHandle for FakeRun {
        fn id(&self) -> String {
            "fake".into()
        }
        fn pid(&self) -> u32 {
            0
        }
        async fn wait(&mut self) -> i32 {
            tokio::time::sleep_until(self.ends).await;
            1
        }
        async fn stop(&mut self, signal: Signal, _: Duration) {
            self.stops.lock().unwrap().push(signal);
        }
        async fn stop_leftovers(&mut self, _: Duration) -> usize {
            0
        }
        async fn captured(&mut self, _: usize) -> Captured {
            Captured::default()
        }
        async fn fence(&mut self, _: Option<u64>) {}
    }

    /// Issue 11: the launched Consul's back-off was never reset, so after a few crashes every
    /// restart waited the longest pause, even after days of healthy running.
    #[tokio::test]
    async fn a_consul_that_ran_healthily_is_restarted_after_the_shortest_pause() {
        let ms = Duration::from_millis;
        let fake = Fake::default();
        // Four quick crashes (pauses 100, 200, 400, 800 ms), then a healthy run past
        // `stable_after` that ends in a crash: the pause is 100 ms again, not 1600.
        fake.runs
            .lock()
            .unwrap()
            .extend([ms(5), ms(5), ms(5), ms(5), ms(1200)]);
        let first = fake.launch(&LaunchSpec::default()).await.unwrap();
        let (stop, stop_rx) = oneshot::channel();
        let policy = RestartPolicy::new(ms(100), ms(5000), ms(1000));
        let task = tokio::spawn(keep_running(
            fake.clone(),
            LaunchSpec::default(),
            first,
            policy,
            stop_rx,
        ));
        let launched = |n: usize| fake.launches.lock().unwrap().len() >= n;
        while !launched(6) {
            tokio::time::sleep(ms(10)).await;
        }
        let at = fake.launches.lock().unwrap().clone();
        // The pause before launch n+1 began when run n ended.
        let pause = |n: usize, ran: Duration| at[n + 1] - (at[n] + ran);
        assert!(
            pause(3, ms(5)) >= ms(800),
            "the back-off grew: {:?}",
            pause(3, ms(5))
        );
        let after_healthy = pause(4, ms(1200));
        assert!(after_healthy >= ms(100), "{after_healthy:?}");
        assert!(
            after_healthy < ms(800),
            "restarted after {after_healthy:?}, not after the shortest pause"
        );
        stop.send(()).unwrap();
        task.await.unwrap();
        assert_eq!(
            *fake.stops.lock().unwrap(),
            [Signal::SIGINT],
            "asked to leave"
        );
    }

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
