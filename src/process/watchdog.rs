//! `servant __container-watchdog --container ID [--fence-until MS]`: what the shim is to a
//! process, for a container. The container is not the agent's child, so a closed pipe cannot
//! kill it by itself; this small process holds the agent's lease pipe (its stdin) and acts for
//! the agent when the agent cannot:
//! - the pipe closes (the agent died, however it died): the container is removed at once
//!   (killed and deleted), so a retry elsewhere never runs beside it;
//! - the fence deadline (`fence <ms>` lines, CLOCK_BOOTTIME, as the shim reads them) passes
//!   while the agent is paused: the container is killed (SIGKILL). The agent removes it when
//!   it wakes, or this process does when the pipe closes.
//!
//! With `--outlive-agent` (an app's container, which the agent's next run adopts) a closed pipe
//! removes the container only once the last fence deadline it was given passes (at once if it
//! never had one): an agent restarted before then ends this watchdog and starts its own. So the
//! container never outlives the agent's hold either.
//!
//! The agent ends the watchdog with SIGKILL once the container's result is written (and only
//! then removes the container, unless it keeps containers). The Engine is reached through
//! bollard on a current-thread runtime of its own.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bollard::query_parameters::{KillContainerOptions, RemoveContainerOptions};

use super::shim::{read_lease, NO_FENCE};
use crate::util::time::boot_ms;

const CHECK: Duration = Duration::from_millis(20);

/// Watchdog arguments.
#[derive(Debug, PartialEq, Eq)]
pub struct WatchdogArgs {
    pub container: String,
    pub fence_until: Option<u64>,
    /// Keep the container after the pipe closes, until the fence deadline.
    pub outlive_agent: bool,
}

/// A bad watchdog argument list (only the agent writes one).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WatchdogArgError {
    #[error("--fence-until needs a CLOCK_BOOTTIME millisecond")]
    Fence,
    #[error("--container needs a container id")]
    Container,
    #[error("unexpected watchdog argument {0:?}")]
    Unexpected(String),
}

pub fn parse_args(args: &[String]) -> Result<WatchdogArgs, WatchdogArgError> {
    let mut container = None;
    let mut fence_until = None;
    let mut outlive_agent = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--outlive-agent" => outlive_agent = true,
            "--container" => container = Some(it.next().ok_or(WatchdogArgError::Container)?),
            "--fence-until" => {
                fence_until = Some(
                    it.next()
                        .and_then(|p| p.parse().ok())
                        .ok_or(WatchdogArgError::Fence)?,
                )
            }
            other => return Err(WatchdogArgError::Unexpected(other.to_string())),
        }
    }
    Ok(WatchdogArgs {
        container: container
            .filter(|c| !c.is_empty())
            .ok_or(WatchdogArgError::Container)?
            .clone(),
        fence_until,
        outlive_agent,
    })
}

/// Runs the watchdog until the lease pipe closes; returns its exit code.
pub fn run(args: &[String]) -> i32 {
    let a = match parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("servant container-watchdog: {e}");
            return 2;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("servant container-watchdog: no runtime: {e}");
            return 1;
        }
    };
    // Agreed now, so a kill later costs one request.
    let mut docker = rt.block_on(super::docker::connect()).ok();
    let fence = Arc::new(AtomicU64::new(a.fence_until.unwrap_or(NO_FENCE)));
    let closed = Arc::new(AtomicBool::new(false));
    let (cell, eof) = (fence.clone(), closed.clone());
    std::thread::spawn(move || {
        read_lease(&cell);
        eof.store(true, Ordering::SeqCst);
    });
    let mut killed = false;
    loop {
        let until = fence.load(Ordering::SeqCst);
        let held = a.outlive_agent && until != NO_FENCE && boot_ms() < until;
        if closed.load(Ordering::SeqCst) && !held {
            // The agent is gone (and, for an adoptable container, its hold ran out): nothing
            // of its may run on.
            remove(&rt, &mut docker, &a.container);
            return 0;
        }
        if !killed && until != NO_FENCE && boot_ms() >= until {
            eprintln!(
                "servant container-watchdog: fence deadline passed: killing container {}",
                a.container
            );
            killed = kill(&rt, &mut docker, &a.container);
        }
        std::thread::sleep(CHECK);
    }
}

/// A client, made again if the first attempt failed.
fn client<'a>(
    rt: &tokio::runtime::Runtime,
    docker: &'a mut Option<bollard::Docker>,
) -> Option<&'a bollard::Docker> {
    if docker.is_none() {
        match rt.block_on(super::docker::connect()) {
            Ok(d) => *docker = Some(d),
            Err(e) => eprintln!("servant container-watchdog: {e}"),
        }
    }
    docker.as_ref()
}

fn kill(rt: &tokio::runtime::Runtime, docker: &mut Option<bollard::Docker>, id: &str) -> bool {
    let Some(d) = client(rt, docker) else {
        return false;
    };
    let opts = KillContainerOptions {
        signal: "SIGKILL".into(),
    };
    match rt.block_on(d.kill_container(id, Some(opts))) {
        Ok(()) => true,
        // Not running (409) or gone (404): nothing left to kill.
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404 | 409,
            ..
        }) => true,
        Err(e) => {
            eprintln!("servant container-watchdog: cannot kill container {id}: {e}");
            false
        }
    }
}

fn remove(rt: &tokio::runtime::Runtime, docker: &mut Option<bollard::Docker>, id: &str) {
    // The Engine may be restarting: a few tries, never forever.
    for _ in 0..10 {
        if let Some(d) = client(rt, docker) {
            let opts = RemoveContainerOptions {
                force: true,
                ..Default::default()
            };
            match rt.block_on(d.remove_container(id, Some(opts))) {
                Ok(())
                | Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => return,
                Err(e) => {
                    eprintln!("servant container-watchdog: cannot remove container {id}: {e}")
                }
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_watchdog_args() {
        let v: Vec<String> = ["--container", "abc", "--fence-until", "12"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            parse_args(&v),
            Ok(WatchdogArgs {
                container: "abc".into(),
                fence_until: Some(12),
                outlive_agent: false,
            })
        );
        let v: Vec<String> = ["--container", "abc", "--outlive-agent"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(parse_args(&v).unwrap().outlive_agent);
        assert_eq!(parse_args(&[]), Err(WatchdogArgError::Container));
        assert_eq!(
            parse_args(&["--x".to_string()]),
            Err(WatchdogArgError::Unexpected("--x".into()))
        );
    }
}
