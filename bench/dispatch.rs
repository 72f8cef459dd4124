//! Job dispatch benchmark: `cargo bench --bench dispatch`.
//!
//! Runs real Consul and real servant agents on private loopback addresses and reports medians and
//! ratios measured in the same run (never asserted: these machines are shared and noisy):
//! - submit-to-start and submit-to-result latency, p50 and p99, on a `consul agent -dev`;
//! - `consul exec` on the same dev agent, for the ratio;
//! - throughput of 1,000 `true` jobs with 1 node and with 3 nodes, and Consul writes per job
//!   from X-Consul-Index deltas;
//! - the idle agent's CPU and RSS over 60 s (BENCH_IDLE_SECS to change).
//!
//! BENCH_PARTS=dev or BENCH_PARTS=cluster runs one half; BENCH_JOBS and BENCH_TRIALS size it.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Blocks until `key` exists; returns the value.
fn block_for(h: &Http, key: &str) -> Value {
    let mut index = 0u64;
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(70))
        .build()
        .unwrap();
    loop {
        let r = client
            .get(format!("{}/v1/kv/{key}?index={index}&wait=60s", h.base))
            .send()
            .unwrap();
        index = r
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if r.status().as_u16() == 200 {
            let v: Value = r.json().unwrap();
            use base64::Engine;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(v[0]["Value"].as_str().unwrap())
                .unwrap();
            return serde_json::from_slice(&raw).unwrap();
        }
    }
}

fn latency(h: &Http, n: usize) -> (Vec<f64>, Vec<f64>) {
    let (mut start, mut done) = (Vec::new(), Vec::new());
    for i in 0..n {
        let t0 = now_ns();
        let w = Instant::now();
        h.put(&format!("/v1/kv/jobs/lat{i}"), r#"{"Command": "true"}"#);
        let r = block_for(h, &format!("jdone_jid/jobs/lat{i}"));
        done.push(w.elapsed().as_secs_f64() * 1000.0);
        start.push((r["StartTime"].as_i64().unwrap() - t0) as f64 / 1e6);
    }
    (start, done)
}

/// The server's Raft log index: every write, including failed transactions and catalog updates.
fn raft_index(h: &Http) -> u64 {
    let v = h.get_json("/v1/agent/self").unwrap();
    v["Stats"]["raft"]["last_log_index"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// What one throughput run measured.
struct Run {
    secs: f64,
    /// X-Consul-Index delta of the KV store.
    kv_delta: u64,
    /// Raft log delta on the server.
    raft_delta: u64,
}

/// Submits `n` jobs from 4 threads and waits for every result.
fn throughput(h: &Arc<Http>, tag: &str, n: usize) -> Run {
    let before = h.index();
    let raft_before = raft_index(h);
    let t = Instant::now();
    let threads: Vec<_> = (0..4)
        .map(|k| {
            let h = h.clone();
            let tag = tag.to_string();
            std::thread::spawn(move || {
                for i in (k..n).step_by(4) {
                    h.put(&format!("/v1/kv/jobs/{tag}{i}"), r#"{"Command": "true"}"#);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    wait_for("all results", Duration::from_secs(600), || {
        let v = h.get_json(&format!("/v1/kv/jdone_jid/jobs/{tag}?keys"))?;
        (v.as_array()?.len() >= n).then_some(())
    });
    let secs = t.elapsed().as_secs_f64();
    Run {
        secs,
        kv_delta: h.index() - before,
        raft_delta: raft_index(h) - raft_before,
    }
}

/// Claim transactions that lost a race, from the agents' debug logs.
fn failed_claims(servants: &[&Servant]) -> usize {
    servants
        .iter()
        .map(|s| s.proc.log_text().matches("claim not taken").count())
        .sum()
}

fn consul_exec(c: &ConsulDev, runs: usize) -> Vec<f64> {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            let out = Command::new(consul_bin())
                .args(["exec", &format!("-http-addr={}", c.addr()), "true"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "consul exec: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect()
}

fn ticks_and_rss(pid: i32) -> (u64, u64) {
    (cpu_ticks(pid), rss_kb(pid))
}

/// A cluster of `n` nodes launched by servants: one server, the rest clients joining it.
fn cluster(n: usize) -> Vec<Servant> {
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
    let h = Http::new(&format!("{net}.2:8500"));
    wait_for("all servants", Duration::from_secs(60), || {
        let s = h.get_json("/v1/session/list")?;
        (s.as_array()?
            .iter()
            .filter(|s| s["Name"] == "servant")
            .count()
            == n)
            .then_some(())
    });
    v
}

/// On a consul dev agent with one servant: latency, `consul exec`, throughput, writes, idle.
fn dev_part(jobs: usize, idle_secs: u64) {
    // Dev agent, one servant.
    let c = ConsulDev::start_with(&["-hcl", "disable_remote_exec = false"], None);
    let s = c.servant(&[]).ready();
    let h = Arc::new(c.http());
    // A fresh agent first: an idle measured only after a run missed an agent that never went
    // quiet when nothing had run yet (issue 10). Start-up writes settle within a second or two.
    std::thread::sleep(Duration::from_secs(2));
    let fresh = idle(&h, s.proc.pid(), idle_secs);
    let (mut start, mut done) = latency(&h, 200);
    let mut exec = consul_exec(&c, 10);
    let run = throughput(&h, "tp", jobs);
    println!("\n## dev agent, 1 node");
    println!("| figure | value |\n|---|---|");
    println!(
        "| submit-to-start p50 / p99 | {:.2} ms / {:.2} ms |",
        pct(&mut start, 0.5),
        pct(&mut start, 0.99)
    );
    println!(
        "| submit-to-result p50 / p99 | {:.2} ms / {:.2} ms |",
        pct(&mut done, 0.5),
        pct(&mut done, 0.99)
    );
    let exec_p50 = pct(&mut exec, 0.5);
    println!("| `consul exec true`, p50 of 10 | {:.0} ms |", exec_p50);
    println!(
        "| ratio `consul exec` / servant submit-to-result (p50) | {:.0}x |",
        exec_p50 / pct(&mut done, 0.5)
    );
    println!(
        "| throughput, {jobs} jobs submitted by 4 threads | {:.0} jobs/s |",
        jobs as f64 / run.secs
    );
    println!(
        "| KV index delta per job, submit included | {:.2} |",
        run.kv_delta as f64 / jobs as f64
    );
    println!(
        "| Raft log entries per job, submit included | {:.2} |",
        run.raft_delta as f64 / jobs as f64
    );
    println!(
        "| agent writes per job (Raft entries minus the submit) | {:.2} |",
        run.raft_delta as f64 / jobs as f64 - 1.0
    );
    println!(
        "| claim transactions that lost a race | {} |",
        failed_claims(&[&s])
    );

    let after = idle(&h, s.proc.pid(), idle_secs);
    for (when, m) in [("fresh agent", &fresh), ("after the runs", &after)] {
        println!(
            "| idle agent CPU over {idle_secs} s, {when} | {:.3}% of one core |",
            m.cpu_percent
        );
        println!(
            "| KV writes by the idle agent over {idle_secs} s, {when} | {} |",
            m.kv_writes
        );
        println!("| agent RSS, {when} | {:.1} MB |", m.rss_mb);
    }
    drop(s);
    drop(c);
}

/// What an agent costs while it has nothing to do.
struct Idle {
    cpu_percent: f64,
    /// The KV store's index moves on every write; a quiet agent writes only its reports
    /// (every `report_interval`, 10 s by default).
    kv_writes: u64,
    rss_mb: f64,
}

fn idle(h: &Http, pid: i32, secs: u64) -> Idle {
    let (t0, _) = ticks_and_rss(pid);
    let i0 = h.index();
    std::thread::sleep(Duration::from_secs(secs));
    let (t1, rss) = ticks_and_rss(pid);
    let hz = 100.0;
    Idle {
        cpu_percent: (t1 - t0) as f64 / hz / secs as f64 * 100.0,
        kv_writes: h.index().saturating_sub(i0),
        rss_mb: rss as f64 / 1024.0,
    }
}

fn main() {
    let jobs: usize = std::env::var("BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let idle_secs: u64 = std::env::var("BENCH_IDLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    println!(
        "# consul-servant dispatch benchmark ({} jobs, consul {})",
        jobs,
        String::from_utf8_lossy(
            &Command::new(consul_bin())
                .arg("version")
                .output()
                .unwrap()
                .stdout
        )
        .lines()
        .next()
        .unwrap_or("")
    );

    let parts = std::env::var("BENCH_PARTS").unwrap_or_else(|_| "dev,cluster".into());
    if parts.contains("dev") {
        dev_part(jobs, idle_secs);
    }
    if !parts.contains("cluster") {
        return;
    }
    // Real (non-dev) Consul: one server alone, then a server and two clients.
    println!("\n## server on disk, 1 node vs 3 nodes");
    println!("Median of BENCH_TRIALS (default 3) fresh clusters; agent writes are Raft entries per job minus the submit.\n");
    println!("| nodes | throughput | KV index delta per job | agent writes per job (range) | lost claim races | jobs per node (last trial) |\n|---|---|---|---|---|---|");
    let trials: usize = std::env::var("BENCH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    for n in [1, 3] {
        let mut tput = Vec::new();
        let mut writes = Vec::new();
        let mut kv = Vec::new();
        let mut races = Vec::new();
        let mut spread = String::new();
        for trial in 0..trials {
            let nodes = cluster(n);
            let first = {
                let log = nodes[0].proc.log_text();
                let at = log.find("consul=\"http://").map(|i| i + 15).unwrap();
                log[at..]
                    .split('"')
                    .next()
                    .unwrap()
                    .trim_start_matches("http://")
                    .to_string()
            };
            let h = Arc::new(Http::new(&first));
            let run = throughput(&h, &format!("c{n}-{trial}-"), jobs);
            let res = h
                .get_json(&format!("/v1/kv/jdone_jid/jobs/c{n}-{trial}-?recurse"))
                .unwrap();
            let mut per: std::collections::BTreeMap<String, usize> = Default::default();
            use base64::Engine;
            for e in res.as_array().unwrap() {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(e["Value"].as_str().unwrap())
                    .unwrap();
                let r: Value = serde_json::from_slice(&raw).unwrap();
                *per.entry(r["ExecutionNode"].as_str().unwrap().to_string())
                    .or_default() += 1;
            }
            let refs: Vec<&Servant> = nodes.iter().collect();
            tput.push(jobs as f64 / run.secs);
            writes.push(run.raft_delta as f64 / jobs as f64 - 1.0);
            kv.push(run.kv_delta as f64 / jobs as f64);
            races.push(failed_claims(&refs) as f64);
            spread = per
                .values()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(" / ");
        }
        let range = |v: &[f64]| {
            format!(
                "{:.2}–{:.2}",
                v.iter().cloned().fold(f64::MAX, f64::min),
                v.iter().cloned().fold(f64::MIN, f64::max)
            )
        };
        println!(
            "| {n} | {:.0} jobs/s | {:.2} | {:.2} ({}) | {:.0} | {} |",
            pct(&mut tput, 0.5),
            pct(&mut kv, 0.5),
            pct(&mut writes.clone(), 0.5),
            range(&writes),
            pct(&mut races, 0.5),
            spread
        );
    }
}
