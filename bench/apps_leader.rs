//! Apps leader benchmark: `cargo bench --bench apps_leader`.
//!
//! What the apps leader asks of Consul while nothing moves, against how often the nodes rewrite
//! their reports. For each `report_interval` (BENCH_INTERVALS, default `10s,2s`): 20 nodes on
//! loopback (BENCH_NODES), each a servant with its own Consul agent (one server, the rest
//! clients), one task placed (replication 1). Once every node reports, BENCH_WINDOWS (default
//! 3) windows of BENCH_SECS (default 30) each count, from `/metrics`, the KV requests and KV
//! response bytes of the leader's agent and of a follower's (the same node work without the
//! leader's), and the leader's reconciliation passes (`servant_apps_leader_passes_total`;
//! absent before that metric existed). Medians of the windows, per minute; nothing asserted.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::metrics::*;
use common::*;
use serde_json::json;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `n` nodes launched by servants with `config`: one server, the rest clients joining it.
/// Returns them and the server's Consul HTTP address.
fn cluster(n: usize, config: &str) -> (Vec<Servant>, String) {
    let net = subnet();
    let mut v = Vec::new();
    for i in 0..n {
        let ip = format!("{net}.{}", i + 2);
        let name = format!("bench{}", i + 1);
        let bin = consul_bin().display().to_string();
        let mut args = vec![
            "--bind",
            &ip,
            "--client",
            &ip,
            "--node",
            &name,
            "--consul-bin",
            &bin,
            "--config",
            config,
        ];
        let first = format!("{net}.2");
        if i == 0 {
            args.extend(["--server", "--bootstrap-expect", "1"]);
        } else {
            args.extend(["--join", &first]);
        }
        args.extend(["--consul-arg=-hcl=performance { raft_multiplier = 1 }"]);
        v.push(Servant::launch(&ip, &args).ready());
    }
    (v, format!("{net}.2:8500"))
}

/// KV requests, KV response bytes and leader passes on one agent's `/metrics`.
fn counters(api: &str) -> [f64; 3] {
    let (_, t) = get_metrics(&format!("http://{api}/metrics"), None);
    [
        sum(&t, "servant_consul_requests_total", "endpoint=\"kv\""),
        sum(&t, "servant_consul_response_bytes_total", "endpoint=\"kv\""),
        plain(&t, "servant_apps_leader_passes_total").unwrap_or(f64::NAN),
    ]
}

/// Per-minute medians for one report interval: leader [requests, bytes, passes], follower
/// [requests, bytes], and KV writes per minute.
struct Figures {
    leader: [f64; 3],
    follower: [f64; 2],
    writes: f64,
}

fn run(nodes: usize, interval: &str, windows: usize, secs: u64) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("servant.toml");
    std::fs::write(
        &config,
        format!("[apps]\nreport_interval = \"{interval}\"\n"),
    )
    .unwrap();
    let (servants, server) = cluster(nodes, config.to_str().unwrap());
    let h = Http::new(&server);
    wait_for("every apps session", Duration::from_secs(120), || {
        let s = h.get_json("/v1/session/list")?;
        (s.as_array()?
            .iter()
            .filter(|s| s["Name"] == "servant-apps")
            .count()
            == nodes)
            .then_some(())
    });
    wait_for("every resource report", Duration::from_secs(120), || {
        let keys = h.get_json("/v1/kv/appmgr/status/?keys")?;
        (keys
            .as_array()?
            .iter()
            .filter(|k| k.as_str().is_some_and(|k| k.ends_with("/resource")))
            .count()
            == nodes)
            .then_some(())
    });
    h.put(
        "/v1/kv/appmgr/task/idle",
        json!({"content": {"command": "exec sleep 86399"}, "replication": 1}).to_string(),
    );
    wait_for("the task placed", Duration::from_secs(60), || {
        let keys = h.get_json("/v1/kv/appmgr/topology/?keys")?;
        // The leader's folder key `appmgr/topology/` aside.
        let hosts = keys
            .as_array()?
            .iter()
            .filter(|k| k.as_str() != Some("appmgr/topology/"))
            .count();
        (hosts > 0).then_some(())
    });
    let leader = wait_for("a leader", Duration::from_secs(60), || {
        h.kv_raw("appmgr/leader")
    });
    let follower = (1..=nodes)
        .map(|i| format!("bench{i}"))
        .find(|n| *n != leader)
        .expect("a follower");
    let (leader_api, follower_api) = (servant_api_of(&h, &leader), servant_api_of(&h, &follower));
    // Let start-up settle: every node has written its reports a few times.
    std::thread::sleep(Duration::from_secs(5));
    let per_min = 60.0 / secs as f64;
    let (mut l, mut f, mut w) = ([vec![], vec![], vec![]], [vec![], vec![]], vec![]);
    for _ in 0..windows {
        let (l0, f0, i0) = (counters(&leader_api), counters(&follower_api), h.index());
        std::thread::sleep(Duration::from_secs(secs));
        let (l1, f1, i1) = (counters(&leader_api), counters(&follower_api), h.index());
        for k in 0..3 {
            l[k].push((l1[k] - l0[k]) * per_min);
        }
        for k in 0..2 {
            f[k].push((f1[k] - f0[k]) * per_min);
        }
        w.push((i1 - i0) as f64 * per_min);
        eprintln!(
            "{interval}: leader {:?}, follower {:?}, writes {}",
            [l1[0] - l0[0], l1[1] - l0[1], l1[2] - l0[2]],
            [f1[0] - f0[0], f1[1] - f0[1]],
            i1 - i0
        );
    }
    drop(servants);
    Figures {
        leader: [median(&mut l[0]), median(&mut l[1]), median(&mut l[2])],
        follower: [median(&mut f[0]), median(&mut f[1])],
        writes: median(&mut w),
    }
}

fn main() {
    let nodes: usize = env_or("BENCH_NODES", 20);
    let windows: usize = env_or("BENCH_WINDOWS", 3);
    let secs: u64 = env_or("BENCH_SECS", 30);
    let intervals = std::env::var("BENCH_INTERVALS").unwrap_or_else(|_| "10s,2s".into());
    let mut rows = Vec::new();
    for interval in intervals.split(',') {
        rows.push((interval.to_string(), run(nodes, interval, windows, secs)));
    }
    println!(
        "# apps leader, {nodes} nodes, nothing to move (medians of {windows} windows of {secs} s, per minute)\n"
    );
    println!("| report_interval | KV writes/min (cluster) | leader passes/min | leader KV reads/min | leader KV bytes/min | follower KV reads/min | follower KV bytes/min | leader minus follower, reads/min | leader minus follower, KB/min |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (interval, f) in &rows {
        println!(
            "| {interval} | {:.0} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} |",
            f.writes,
            if f.leader[2].is_nan() {
                "-".to_string()
            } else {
                format!("{:.1}", f.leader[2])
            },
            f.leader[0],
            f.leader[1],
            f.follower[0],
            f.follower[1],
            f.leader[0] - f.follower[0],
            (f.leader[1] - f.follower[1]) / 1024.0
        );
    }
    if let [(a, fa), (b, fb)] = rows.as_slice() {
        println!(
            "\nratio {b} / {a}: leader KV reads {:.2}x, leader KV bytes {:.2}x, cluster KV writes {:.2}x",
            fb.leader[0] / fa.leader[0],
            fb.leader[1] / fa.leader[1],
            fb.writes / fa.writes
        );
    }
}
