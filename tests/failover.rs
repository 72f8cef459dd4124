//! Active/standby failover end to end: three Consul servers launched by servants; node1 is
//! active and node2 standby for service `demo` (node3 only keeps Consul's quorum). Each of the
//! two guards `demo` with a TTL check its agent updates; the trigger actions start and stop a
//! small real service (a `sleep` with a pid file). SIGKILL node1 (its Consul, its servant and
//! its service): node2's check turns critical and its action starts the service there. Bring
//! node1 back: node2 sees it healthy, expects its own copy stopped, and its action stops it.

mod common;

use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;

#[test]
fn standby_takes_over_when_the_active_node_dies_and_gives_back_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let arg = format!("66{:06}", std::process::id() % 1_000_000);
    let mut c = active_standby(
        &d,
        "test",
        "debounce = \"300ms\"\nrepeat = \"2s\"\ntrigger_timeout = \"10s\"",
        "interval = \"1s\"",
        &format!("sleep {arg}"),
    );
    let h = c.http(2);
    let guard = Cleanup(d.clone());

    // Steady state: the service on node1 only, both checks passing.
    wait_for("demo on node1 only, both checks passing", T, || {
        let ok = pid_alive(&d, "node1").is_some()
            && pid_alive(&d, "node2").is_none()
            && ["node1", "node2"].iter().all(|n| {
                h.get_json(&format!("/v1/health/node/{n}"))
                    .and_then(|v| {
                        v.as_array()?
                            .iter()
                            .find(|c| c["CheckID"] == "servant:demo")
                            .map(|c| c["Status"] == "passing")
                    })
                    .unwrap_or(false)
            });
        ok.then_some(())
    });

    // SIGKILL node1, and its service with it.
    let pid1 = pid_alive(&d, "node1").expect("demo on node1");
    let t0 = Instant::now();
    c.sigkill_keep(0);
    kill_pid(pid1);
    wait_for("demo started on node2", Duration::from_secs(90), || {
        pid_alive(&d, "node2")
    });
    let takeover = t0.elapsed();

    // Bring node1 back: it starts its service again; node2 stops its copy.
    let t1 = Instant::now();
    c.restart(0);
    wait_for(
        "demo back on node1 and stopped on node2",
        Duration::from_secs(90),
        || (pid_alive(&d, "node1").is_some() && pid_alive(&d, "node2").is_none()).then_some(()),
    );
    let giveback = t1.elapsed();
    eprintln!(
        "takeover {takeover:?} after SIGKILL of node1; give-back {giveback:?} after its restart"
    );
    let history = h
        .kv_raw("trigger_history/node2")
        .expect("node2 recorded its runs");
    assert!(history.contains("\"role\":\"secondary\""), "{history}");
    drop(guard);
}

/// Kills the services the actions started, whatever happened.
struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for n in ["node1", "node2"] {
            if let Some(p) = pid_alive(&self.0, n) {
                kill_pid(p);
            }
        }
    }
}
