//! Scale benchmark (issue 15): `cargo bench --bench scale`.
//!
//! Real Consul 1.8.7 agents and real servants on private loopback addresses; nothing asserted,
//! medians and ratios from one run on a shared machine. At each cluster size of BENCH_NODES
//! (default "1,5,20"), one Consul server and client agents joining it, each launched by its own
//! servant (`performance { raft_multiplier = 1 }`), the clients started at once:
//! 1. the servants' Consul requests and response bytes per job and per node, from their own
//!    `/metrics` (`servant_consul_requests_total`, `servant_consul_response_bytes_total`), read
//!    before and after each phase, net of an idle baseline measured on the same cluster over
//!    an interval as long as the steady phase: (a) a steady 100 jobs/s of `true` for
//!    BENCH_STEADY_SECS (default 20) from a paced submitter, until every result exists; (b) a
//!    burst of BENCH_BURST (default 2,000) jobs PUT by 4 threads, until every result exists;
//! 2. `servant start --all -c true` (the CLI) against the server's Consul: submit to the last
//!    node's result, BENCH_START_RUNS (default 20) runs, p50 and p90.
//!
//! First, on one node (BENCH_PARTS=dev, or `cluster` for the part above only): 2,000 `true`
//! jobs (BENCH_JOBS) from 4 threads until every result exists, on `servant agent -dev` and on a
//! `consul agent -dev` with one servant: jobs/s and CPU time per job (utime+stime from
//! /proc/PID/stat), median of BENCH_TRIALS (default 3).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// One node of the cluster: its servant (which runs its Consul agent) and addresses.
struct Node {
    name: String,
    servant: Servant,
    /// The servant's API (`ip:port`), for `/metrics`.
    api: String,
}

/// `n` nodes launched by servants: the first a Consul server, then the rest at once, clients
/// joining it.
fn cluster(n: usize) -> (Vec<Node>, String, f64) {
    let t = Instant::now();
    let net = subnet();
    let bin = consul_bin().display().to_string();
    let first = format!("{net}.2");
    let addr = format!("{first}:8500");
    let h = Http::new(&addr);
    let launch = |i: usize| {
        let ip = format!("{net}.{}", i + 2);
        let name = format!("scale{}", i + 1);
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
        if i == 0 {
            args.extend(["--server", "--bootstrap-expect", "1"]);
        } else {
            args.extend(["--join", &first]);
        }
        args.extend(["--consul-arg=-hcl=performance { raft_multiplier = 1 }"]);
        let s = Servant::launch(&ip, &args);
        (name.clone(), s)
    };
    // The server first, up to its leader: a client that cannot reach it at once retries its
    // join only after Consul's 30 s retry interval. Then every client at once.
    let mut launched = vec![launch(0)];
    wait_for("the server's leader", Duration::from_secs(60), || {
        let (s, b) = h.try_get("/v1/status/leader")?;
        (s == 200 && b.len() > 4).then_some(())
    });
    launched.extend((1..n).map(launch));
    let ready: Vec<(String, Servant)> = launched
        .into_iter()
        .map(|(name, s)| (name, s.ready()))
        .collect();
    wait_for("all servants", Duration::from_secs(120), || {
        let s = h.get_json("/v1/session/list")?;
        (s.as_array()?
            .iter()
            .filter(|s| s["Name"] == "servant")
            .count()
            == n)
            .then_some(())
    });
    let apis: BTreeMap<String, String> = wait_for(
        "every servant's API in the catalog",
        Duration::from_secs(60),
        || {
            let v = h.get_json("/v1/catalog/service/servant")?;
            let m: BTreeMap<String, String> = v
                .as_array()?
                .iter()
                .filter_map(|s| {
                    Some((
                        s["Node"].as_str()?.to_string(),
                        format!(
                            "{}:{}",
                            s["ServiceAddress"].as_str()?,
                            s["ServicePort"].as_u64()?
                        ),
                    ))
                })
                .collect();
            (m.len() == n).then_some(m)
        },
    );
    let nodes = ready
        .into_iter()
        .map(|(name, servant)| Node {
            api: apis[&name].clone(),
            name,
            servant,
        })
        .collect();
    (nodes, addr, t.elapsed().as_secs_f64())
}

/// Requests and response bytes by part and endpoint, one node.
type Counts = BTreeMap<String, (f64, f64)>;

/// The endpoint label's value in a sample line.
fn label<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let at = line.find(&format!("{name}=\""))? + name.len() + 2;
    line[at..].split('"').next()
}

/// One node's Consul counters now, by part and endpoint (outcomes summed).
fn counts(api: &str) -> Counts {
    let (_, text) = metrics::get_metrics(&format!("http://{api}/metrics"), None);
    let mut c = Counts::new();
    for l in text.lines() {
        let req = l.starts_with("servant_consul_requests_total{");
        let bytes = l.starts_with("servant_consul_response_bytes_total{");
        if !req && !bytes {
            continue;
        }
        let (Some(ep), Some(v)) = (
            label(l, "endpoint"),
            l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()),
        ) else {
            continue;
        };
        // By loop and endpoint (`jobs kv`) where the agent names the loop (`part`).
        let key = match label(l, "part") {
            Some(part) => format!("{part} {ep}"),
            None => ep.to_string(),
        };
        let e = c.entry(key).or_default();
        if req {
            e.0 += v;
        } else {
            e.1 += v;
        }
    }
    c
}

fn snapshot(nodes: &[Node]) -> Vec<Counts> {
    nodes.iter().map(|n| counts(&n.api)).collect()
}

fn delta(before: &Counts, after: &Counts) -> Counts {
    after
        .iter()
        .map(|(k, (r, b))| {
            let (r0, b0) = before.get(k).copied().unwrap_or_default();
            (k.clone(), (r - r0, b - b0))
        })
        .collect()
}

/// Each node's counters per second over an idle interval.
fn idle_rates(nodes: &[Node], secs: u64) -> Vec<Counts> {
    let before = snapshot(nodes);
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let after = snapshot(nodes);
    let el = t.elapsed().as_secs_f64();
    before
        .iter()
        .zip(&after)
        .map(|(b, a)| {
            delta(b, a)
                .into_iter()
                .map(|(k, (r, by))| (k, (r / el, by / el)))
                .collect()
        })
        .collect()
}

/// What one phase cost, per node: raw and net of the idle rates.
struct Phase {
    jobs: usize,
    secs: f64,
    /// Per node, raw deltas.
    raw: Vec<Counts>,
    /// Per node, deltas minus idle rate x phase time.
    net: Vec<Counts>,
}

fn measure(nodes: &[Node], idle: &[Counts], jobs: usize, run: impl FnOnce() -> f64) -> Phase {
    let before = snapshot(nodes);
    let t = Instant::now();
    let secs = run();
    // Let the last result's follow-up reads land before the snapshot.
    std::thread::sleep(Duration::from_secs(1));
    let after = snapshot(nodes);
    let el = t.elapsed().as_secs_f64();
    let raw: Vec<Counts> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| delta(b, a))
        .collect();
    let net = raw
        .iter()
        .zip(idle)
        .map(|(d, i)| {
            let keys: BTreeSet<&String> = d.keys().chain(i.keys()).collect();
            keys.into_iter()
                .map(|k| {
                    let (r, b) = d.get(k).copied().unwrap_or_default();
                    let (ir, ib) = i.get(k).copied().unwrap_or_default();
                    (k.clone(), (r - ir * el, b - ib * el))
                })
                .collect()
        })
        .collect();
    Phase {
        jobs,
        secs,
        raw,
        net,
    }
}

fn sum(c: &Counts) -> (f64, f64) {
    c.values().fold((0.0, 0.0), |a, v| (a.0 + v.0, a.1 + v.1))
}

fn print_phase(title: &str, p: &Phase) {
    let n = p.net.len() as f64;
    let j = p.jobs as f64;
    println!("\n{title}: {} jobs, {:.1} s\n", p.jobs, p.secs);
    println!("| part and endpoint | requests/job/node (net of idle) | response bytes/job/node (net) | max over nodes: requests/job (net) |\n|---|---|---|---|");
    let eps: BTreeSet<&String> = p.net.iter().flat_map(|c| c.keys()).collect();
    for ep in eps {
        let get = |c: &Counts| c.get(ep).copied().unwrap_or_default();
        let (r, b) = p
            .net
            .iter()
            .map(get)
            .fold((0.0, 0.0), |a, v| (a.0 + v.0, a.1 + v.1));
        let max = p.net.iter().map(|c| get(c).0).fold(f64::MIN, f64::max);
        if r.abs() / j / n < 0.005 && b.abs() / j / n < 0.5 {
            continue;
        }
        println!(
            "| {ep} | {:.3} | {:.0} | {:.3} |",
            r / j / n,
            b / j / n,
            max / j
        );
    }
    let (r, b) = p
        .net
        .iter()
        .map(sum)
        .fold((0.0, 0.0), |a, v| (a.0 + v.0, a.1 + v.1));
    let (rr, rb) = p
        .raw
        .iter()
        .map(sum)
        .fold((0.0, 0.0), |a, v| (a.0 + v.0, a.1 + v.1));
    let max = p.net.iter().map(|c| sum(c).0).fold(f64::MIN, f64::max);
    println!(
        "| **all (net)** | **{:.2}** | **{:.0}** | **{:.2}** |",
        r / j / n,
        b / j / n,
        max / j
    );
    println!(
        "| all (raw, idle included) | {:.2} | {:.0} | |",
        rr / j / n,
        rb / j / n
    );
}

/// Polls (every 250 ms) until `n` results exist under `jdone_jid/jobs/<tag>`.
fn wait_results(h: &Http, tag: &str, n: usize) {
    let end = Instant::now() + Duration::from_secs(900);
    loop {
        let c = h
            .get_json(&format!("/v1/kv/jdone_jid/jobs/{tag}?keys"))
            .and_then(|v| v.as_array().map(Vec::len))
            .unwrap_or(0);
        if c >= n {
            return;
        }
        assert!(Instant::now() < end, "only {c} of {n} results for {tag}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `rate` jobs a second for `secs`, job `i` PUT at `i / rate` s by one of 8 paced threads (a
/// PUT to a server on disk takes longer than 10 ms); returns (seconds to the last result,
/// achieved submit rate).
fn steady(h: &Arc<Http>, tag: &str, rate: usize, secs: u64) -> (f64, f64) {
    let n = rate * secs as usize;
    let t = Instant::now();
    let threads: Vec<_> = (0..8)
        .map(|k| {
            let h = h.clone();
            let tag = tag.to_string();
            std::thread::spawn(move || {
                for i in (k..n).step_by(8) {
                    let at = Duration::from_secs_f64(i as f64 / rate as f64);
                    if let Some(d) = at.checked_sub(t.elapsed()) {
                        std::thread::sleep(d);
                    }
                    h.put(&format!("/v1/kv/jobs/{tag}{i}"), r#"{"Command": "true"}"#);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let submit = t.elapsed().as_secs_f64();
    wait_results(h, tag, n);
    (t.elapsed().as_secs_f64(), n as f64 / submit)
}

/// `n` jobs PUT by 4 threads as fast as they go; seconds until every result exists.
fn burst(h: &Arc<Http>, tag: &str, n: usize) -> f64 {
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
    wait_results(h, tag, n);
    t.elapsed().as_secs_f64()
}

/// Blocks until `key` holds a final result.
fn block_final(client: &reqwest::blocking::Client, base: &str, key: &str) {
    let mut index = 0u64;
    let end = Instant::now() + Duration::from_secs(300);
    loop {
        assert!(Instant::now() < end, "no final result at {key}");
        let r = client
            .get(format!("{base}/v1/kv/{key}?raw&index={index}&wait=60s"))
            .send()
            .unwrap();
        index = r
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if r.status().as_u16() == 200 {
            let v: Value = serde_json::from_slice(&r.bytes().unwrap()).unwrap_or(Value::Null);
            let st = v["Status"].as_str().unwrap_or("");
            if !st.is_empty() && st != "started" && st != "running" {
                return;
            }
        }
    }
}

/// `servant start --all -c true`, `runs` times: (CLI exit, last node's result) in ms.
fn start_all(addr: &str, nodes: &[Node], runs: usize) -> (Vec<f64>, Vec<f64>) {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(70))
        .build()
        .unwrap();
    let base = format!("http://{addr}");
    let (mut cli_ms, mut last_ms) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        let (code, out, err) = cli(addr, &["start", "--all", "-c", "true"]);
        cli_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(code, 0, "servant start --all: {err}");
        let id = out.trim().to_string();
        assert_eq!(
            err.matches("queued ").count(),
            nodes.len(),
            "every node queued: {err}"
        );
        for n in nodes {
            block_final(&client, &base, &format!("jdone_jid/queues/{}/{id}", n.name));
        }
        last_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    (cli_ms, last_ms)
}

/// One row of the summary table.
struct Row {
    nodes: usize,
    startup: f64,
    idle_req: f64,
    idle_bytes: f64,
    steady: [f64; 3],
    steady_rate: f64,
    steady_lag: f64,
    burst: [f64; 3],
    burst_tput: f64,
    start_cli: f64,
    start_p50: f64,
    start_p90: f64,
}

fn per_job(p: &Phase) -> [f64; 3] {
    let n = p.net.len() as f64;
    let j = p.jobs as f64;
    let (r, b) = p
        .net
        .iter()
        .map(sum)
        .fold((0.0, 0.0), |a, v| (a.0 + v.0, a.1 + v.1));
    let max = p.net.iter().map(|c| sum(c).0).fold(f64::MIN, f64::max);
    [r / j / n, b / j / n, max / j]
}

fn cluster_size(n: usize, steady_secs: u64, burst_n: usize, runs: usize) -> Row {
    let (nodes, addr, startup) = cluster(n);
    let h = Arc::new(Http::new(&addr));
    println!("\n## {n} node(s)\n\nStarted (the server, then the clients at once) and every servant registered in {startup:.1} s.");
    // Start-up writes and reads settle first.
    std::thread::sleep(Duration::from_secs(3));
    let idle = idle_rates(&nodes, steady_secs);
    println!("\nIdle, over {steady_secs} s, per node per second:\n");
    println!("| part and endpoint | requests/node/s | bytes/node/s |\n|---|---|---|");
    let mut idle_tot = (0.0, 0.0);
    let eps: BTreeSet<&String> = idle.iter().flat_map(|c| c.keys()).collect();
    for ep in eps {
        let (r, b) = idle
            .iter()
            .map(|c| c.get(ep).copied().unwrap_or_default())
            .fold((0.0, 0.0), |a, v| (a.0 + v.0, a.1 + v.1));
        idle_tot.0 += r / n as f64;
        idle_tot.1 += b / n as f64;
        if r > 0.0 {
            println!("| {ep} | {:.3} | {:.0} |", r / n as f64, b / n as f64);
        }
    }
    println!(
        "| **all** | **{:.3}** | **{:.0}** |",
        idle_tot.0, idle_tot.1
    );

    let rate = 100;
    let tag = format!("st{n}-");
    let mut lag = (0.0, 0.0);
    let p = measure(&nodes, &idle, rate * steady_secs as usize, || {
        let (secs, achieved) = steady(&h, &tag, rate, steady_secs);
        lag = (secs - steady_secs as f64, achieved);
        secs
    });
    print_phase(
        &format!(
            "Steady {rate} jobs/s for {steady_secs} s (achieved {:.1} jobs/s; last result {:.1} s after the submits' end)",
            lag.1, lag.0
        ),
        &p
    );
    let steady_row = per_job(&p);

    let tag = format!("bu{n}-");
    let p = measure(&nodes, &idle, burst_n, || burst(&h, &tag, burst_n));
    let burst_tput = burst_n as f64 / p.secs;
    print_phase(
        &format!("Burst of {burst_n} jobs by 4 threads ({burst_tput:.0} jobs/s)"),
        &p,
    );
    let burst_row = per_job(&p);

    let (mut cli_ms, mut last) = start_all(&addr, &nodes, runs);
    println!(
        "\n`servant start --all -c true`, {runs} runs: CLI exit p50 {:.0} ms; submit to the last of {n} results p50 {:.0} ms, p90 {:.0} ms",
        pct(&mut cli_ms, 0.5),
        pct(&mut last, 0.5),
        pct(&mut last, 0.9)
    );
    let races: usize = nodes
        .iter()
        .map(|n| n.servant.proc.log_text().matches("claim not taken").count())
        .sum();
    println!("Claim transactions that lost a race over the run: {races}");
    let row = Row {
        nodes: n,
        startup,
        idle_req: idle_tot.0,
        idle_bytes: idle_tot.1,
        steady: steady_row,
        steady_rate: lag.1,
        steady_lag: lag.0,
        burst: burst_row,
        burst_tput,
        start_cli: pct(&mut cli_ms, 0.5),
        start_p50: pct(&mut last, 0.5),
        start_p90: pct(&mut last, 0.9),
    };
    drop(nodes);
    row
}

/// What one single-node throughput trial measured.
struct Trial {
    jobs_per_s: f64,
    /// CPU ms per job of each measured process.
    cpu_ms: Vec<f64>,
    /// CPU ms per job of the whole machine: the shims, the commands and the submitter too.
    machine_ms: f64,
}

fn one_node(b: Backend, jobs: usize, trial: usize) -> Trial {
    let s = Single::start(b, &[]);
    let h = Arc::new(s.http());
    std::thread::sleep(Duration::from_secs(1));
    let mut pids = vec![s.servant.proc.pid()];
    if let Some(c) = &s.consul {
        pids.push(c.proc.pid());
    }
    let t0: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    let m0 = machine_busy_ticks();
    let tag = format!("tp{trial}-");
    let secs = burst(&h, &tag, jobs);
    let t1: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    let m1 = machine_busy_ticks();
    let hz = 100.0;
    Trial {
        jobs_per_s: jobs as f64 / secs,
        machine_ms: m1.saturating_sub(m0) as f64 / hz * 1000.0 / jobs as f64,
        cpu_ms: t0
            .iter()
            .zip(&t1)
            .map(|(a, b)| (b - a) as f64 / hz * 1000.0 / jobs as f64)
            .collect(),
    }
}

fn dev_part(jobs: usize, trials: usize) {
    println!("\n## One node: {jobs} `true` jobs by 4 threads, median of {trials} fresh agents\n");
    println!("| server | jobs/s | servant agent CPU ms/job | consul CPU ms/job | both, ms/job | whole machine, ms/job |\n|---|---|---|---|---|---|");
    for (b, name) in [
        (Backend::Dev, "`servant agent -dev` (embedded)"),
        (Backend::Consul, "`consul agent -dev` + servant"),
    ] {
        let runs: Vec<Trial> = (0..trials).map(|t| one_node(b, jobs, t)).collect();
        let mut tput: Vec<f64> = runs.iter().map(|r| r.jobs_per_s).collect();
        let mut agent: Vec<f64> = runs.iter().map(|r| r.cpu_ms[0]).collect();
        let mut all: Vec<f64> = runs.iter().map(|r| r.cpu_ms.iter().sum()).collect();
        let mut machine: Vec<f64> = runs.iter().map(|r| r.machine_ms).collect();
        let consul = if b == Backend::Consul {
            let mut c: Vec<f64> = runs.iter().map(|r| r.cpu_ms[1]).collect();
            format!("{:.3}", pct(&mut c, 0.5))
        } else {
            "(inside the agent)".into()
        };
        println!(
            "| {name} | {:.0} | {:.3} | {consul} | {:.3} | {:.3} |",
            pct(&mut tput, 0.5),
            pct(&mut agent, 0.5),
            pct(&mut all, 0.5),
            pct(&mut machine, 0.5)
        );
    }
}

fn main() {
    let sizes: Vec<usize> = std::env::var("BENCH_NODES")
        .unwrap_or_else(|_| "1,5,20".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let steady_secs: u64 = env_or("BENCH_STEADY_SECS", 20);
    let burst_n: usize = env_or("BENCH_BURST", 2000);
    let runs: usize = env_or("BENCH_START_RUNS", 20);
    let jobs: usize = env_or("BENCH_JOBS", 2000);
    let trials: usize = env_or("BENCH_TRIALS", 3);
    let parts = std::env::var("BENCH_PARTS").unwrap_or_else(|_| "cluster,dev".into());
    let version = Command::new(consul_bin())
        .arg("version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    println!(
        "# consul-servant scale benchmark ({version}; nodes {sizes:?}, steady {steady_secs} s, burst {burst_n}, {runs} start --all runs)"
    );
    let t = Instant::now();
    if parts.contains("dev") {
        dev_part(jobs, trials);
    }
    let mut rows = Vec::new();
    if parts.contains("cluster") {
        for &n in &sizes {
            rows.push(cluster_size(n, steady_secs, burst_n, runs));
        }
        println!("\n## Summary (requests and bytes per job per node, net of idle)\n");
        println!("| nodes | start-up | idle req/node/s (bytes) | steady 100/s: req/job/node | bytes/job/node | max node req/job | results lag | burst: req/job/node | bytes/job/node | max node req/job | burst jobs/s | `start --all`: CLI p50 | to last result p50 / p90 |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for r in &rows {
            println!(
                "| {} | {:.1} s | {:.2} ({:.0}) | {:.2} | {:.0} | {:.2} | {:.1} s ({:.0}/s submitted) | {:.2} | {:.0} | {:.2} | {:.0} | {:.0} ms | {:.0} / {:.0} ms |",
                r.nodes,
                r.startup,
                r.idle_req,
                r.idle_bytes,
                r.steady[0],
                r.steady[1],
                r.steady[2],
                r.steady_lag,
                r.steady_rate,
                r.burst[0],
                r.burst[1],
                r.burst[2],
                r.burst_tput,
                r.start_cli,
                r.start_p50,
                r.start_p90
            );
        }
    }
    println!("\nWhole run: {:.0} s", t.elapsed().as_secs_f64());
}
