//! Apps failover benchmark: `cargo bench --bench apps_failover`.
//!
//! A loopback cluster with the documented defaults (apps session TTL 30s, report interval 10s):
//! three Consul servers whose servants run with `--no-apps` (so losing an apps node never costs
//! Consul its quorum) and three worker nodes (Consul client agents, each with a servant). One
//! task, replication 1. Each trial SIGKILLs a worker's servant (its Consul dies with it):
//! - the node running the replica: time until the replica runs on another node (its process
//!   found by PID in the report);
//! - the apps leader (when it is not the replica's node): time until another node holds
//!   `appmgr/leader`.
//!
//! Both are split into Consul's part (until the node's serfHealth is critical in the catalog,
//! which is what invalidates its sessions) and ours (the rest). A fresh worker replaces each
//! killed one. Medians over `BENCH_TRIALS` (default 5) kills of each kind; nothing asserted.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;
use serde_json::{json, Value};

const WORKER: &[&str] = &["--label", "role=worker"];

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn host_of(h: &Http, task: &str) -> Option<String> {
    let keys: Vec<String> =
        serde_json::from_value(h.get_json("/v1/kv/appmgr/topology/?keys")?).unwrap_or_default();
    keys.iter().find_map(|k| {
        let names: Vec<String> = serde_json::from_str(&h.kv_raw(k)?).ok()?;
        names
            .iter()
            .any(|n| n == task)
            .then(|| k.trim_start_matches("appmgr/topology/").to_string())
    })
}

/// The host running `task`, once its reported pid leads a live `sleep` group.
fn running_host(h: &Http, task: &str, arg: &str) -> Option<String> {
    let host = host_of(h, task)?;
    let v: Value =
        serde_json::from_str(&h.kv_raw(&format!("appmgr/status/{host}/applications"))?).ok()?;
    let pid = v[task]["pid"].as_i64()? as i32;
    sleeps(&format!("sleep {arg}"))
        .iter()
        .any(|p| pgid(*p) == Some(pid))
        .then_some(host)
}

/// Polls every 20 ms: (time to Consul's failure detection, time to `done`).
fn time_kill(
    c: &mut Cluster,
    victim: usize,
    h: &Http,
    mut done: impl FnMut() -> bool,
) -> (f64, f64) {
    let name = c.nodes[victim].name.clone();
    let t0 = Instant::now();
    c.sigkill(victim);
    let mut detected = None;
    loop {
        if detected.is_none() && serf_critical(h, &name) {
            detected = Some(t0.elapsed().as_secs_f64());
        }
        if done() {
            let total = t0.elapsed().as_secs_f64();
            return (detected.unwrap_or(total), total);
        }
        assert!(t0.elapsed() < Duration::from_secs(180), "no failover");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn main() {
    let trials: usize = std::env::var("BENCH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut c = Cluster::start_n(3, &["--no-apps"]);
    for _ in 0..3 {
        c.add_client(WORKER);
    }
    let h = c.http(0);
    let arg = (88_000 + std::process::id() % 1_000).to_string();
    h.put(
        "/v1/kv/appmgr/task/web",
        json!({"content": {"command": format!("exec sleep {arg}")}, "replication": 1,
               "labels": {"role": "worker"}})
        .to_string(),
    );
    let (mut replica, mut replica_consul) = (Vec::new(), Vec::new());
    let (mut leader, mut leader_consul) = (Vec::new(), Vec::new());
    while replica.len() < trials || leader.len() < trials {
        let host = wait_for("web running", T, || running_host(&h, "web", &arg));
        let lead = wait_for("a leader", T, || h.kv_raw("appmgr/leader"));
        if replica.len() < trials && host != lead {
            let i = c.index_of(&host);
            let (d, t) = time_kill(&mut c, i, &h, || {
                running_host(&h, "web", &arg).is_some_and(|n| n != host)
            });
            eprintln!("replica: {host} killed; consul {d:.2}s, running elsewhere {t:.2}s");
            replica_consul.push(d);
            replica.push(t);
        } else if leader.len() < trials {
            let i = c.index_of(&lead);
            let (d, t) = time_kill(&mut c, i, &h, || {
                h.kv_raw("appmgr/leader").is_some_and(|n| n != lead)
            });
            eprintln!("leader: {lead} killed; consul {d:.2}s, new leader {t:.2}s");
            leader_consul.push(d);
            leader.push(t);
        } else {
            // Replica samples are done but the replica's node leads: move it on.
            let i = c.index_of(&host);
            c.sigkill(i);
        }
        c.add_client(WORKER);
    }
    println!("# apps failover ({trials} trials each, SIGKILL of a node's servant and Consul)\n");
    println!(
        "| figure | median (s) | of which Consul's failure detection (s) | App Manager's design bound (s) |"
    );
    println!("|---|---|---|---|");
    println!(
        "| SIGKILL of a node until its replica runs elsewhere | {:.2} | {:.2} | 75 (2 x 30s TTL + 15s lock-delay) |",
        median(&mut replica),
        median(&mut replica_consul)
    );
    println!(
        "| SIGKILL of the leader until another node leads | {:.2} | {:.2} | 75 |",
        median(&mut leader),
        median(&mut leader_consul)
    );
}
