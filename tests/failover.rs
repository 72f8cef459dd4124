//! Active/standby failover end to end: three Consul servers launched by servants; node1 is
//! active and node2 standby for service `demo` (node3 only keeps Consul's quorum). Each of the
//! two guards `demo` with a TTL check its agent updates; the trigger actions start and stop a
//! small real service (a `sleep` with a pid file). SIGKILL node1 (its Consul, its servant and
//! its service): node2's check turns critical and its action starts the service there. Bring
//! node1 back: node2 sees it healthy, expects its own copy stopped, and its action stops it.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;
use serde_json::json;

/// The pid in `<dir>/<node>.pid`, if that process is alive.
fn running(dir: &Path, node: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dir.join(format!("{node}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // A zombie is not running.
    let state = stat.rsplit(')').next()?.split_whitespace().next()?;
    (state != "Z").then_some(pid)
}

fn kill(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

#[test]
fn standby_takes_over_when_the_active_node_dies_and_gives_back_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let config = |node: &str| {
        let f = d.join(format!("{node}.toml"));
        std::fs::write(
            &f,
            format!(
                r#"
[checks]
environment = "test"
debounce = "300ms"
repeat = "2s"
trigger_timeout = "10s"

[[checks.guard]]
consul_service = "demo"
linux_service = "demo"
status_cmd = "kill -0 $(cat {dir}/{node}.pid 2>/dev/null) 2>/dev/null || exit 3"
interval = "1s"
"#,
                dir = d.display()
            ),
        )
        .unwrap();
        f.display().to_string()
    };
    let (c1, c2) = (config("node1"), config("node2"));
    let mut c = Cluster::start_each(3, &["--no-apps"], |i| match i {
        0 => vec!["--config".into(), c1.clone()],
        1 => vec!["--config".into(), c2.clone()],
        _ => vec![],
    });
    let h = c.http(2);
    h.put(
        "/v1/kv/cluster/test/demo",
        json!({"active_nodes": ["node1"], "standby_nodes": ["node2"]}).to_string(),
    );
    // One action for both roles: start when the check expects the service running, stop when
    // it expects it stopped.
    let arg = format!("66{:06}", std::process::id() % 1_000_000);
    let action = format!(
        "#!/bin/sh\nPIDF={dir}/@HOST.pid\nif [ \"$SERVANT_EXPECTED\" = stopped ]; then\n  kill $(cat $PIDF) 2>/dev/null; rm -f $PIDF\nelif ! kill -0 $(cat $PIDF 2>/dev/null) 2>/dev/null; then\n  setsid sleep {arg} </dev/null >/dev/null 2>&1 &\n  echo $! > $PIDF\nfi\n",
        dir = d.display()
    );
    for role in ["primary", "secondary"] {
        h.put(
            &format!("/v1/kv/triggers/test/demo/{role}/critical"),
            action.clone(),
        );
    }
    let guard = Cleanup(d.clone());

    // Steady state: the service on node1 only, both checks passing.
    wait_for("demo on node1 only, both checks passing", T, || {
        let ok = running(&d, "node1").is_some()
            && running(&d, "node2").is_none()
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
    let pid1 = running(&d, "node1").expect("demo on node1");
    let t0 = Instant::now();
    c.sigkill_keep(0);
    kill(pid1);
    wait_for("demo started on node2", Duration::from_secs(90), || {
        running(&d, "node2")
    });
    let takeover = t0.elapsed();

    // Bring node1 back: it starts its service again; node2 stops its copy.
    let t1 = Instant::now();
    c.restart(0);
    wait_for(
        "demo back on node1 and stopped on node2",
        Duration::from_secs(90),
        || (running(&d, "node1").is_some() && running(&d, "node2").is_none()).then_some(()),
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
            if let Some(p) = running(&self.0, n) {
                kill(p);
            }
        }
    }
}
