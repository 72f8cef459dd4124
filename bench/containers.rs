//! Container benchmark: `cargo bench --bench containers`.
//!
//! On a real `consul agent -dev` and the machine's real Docker Engine, with a `FROM scratch`
//! busybox image built for the run (removed at the end with every container of its node), it
//! prints medians measured in one run (nothing is asserted: the machine is shared and noisy):
//! - submit-to-start (when the command itself ran: it prints the time) and submit-to-result of
//!   a trivial container job, beside a process job and `docker run --rm IMAGE` timed from the
//!   CLI, the same command in all three, interleaved trial by trial so that all three see the
//!   same load;
//! - the agent's RSS and CPU over a minute with no container, then with 50 running containers
//!   of its node monitored (its report every 10 s, `/metrics` scraped every 10 s), and the time
//!   a scrape takes when it refreshes the 50 containers' stats; the Docker daemon's CPU over
//!   the same minutes.
//!
//! BENCH_TRIALS (default 20) sizes the latency part, BENCH_IDLE_SECS (default 60) the minutes,
//! BENCH_CONTAINERS (default 50) the containers; BENCH_PARTS=latency or BENCH_PARTS=monitor
//! runs one part.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::docker::{docker, ImageLab};
use common::*;
use serde_json::{json, Value};

fn env_or(name: &str, d: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
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

/// The wall clock in ns that busybox `adjtimex` printed (its `time.tv_sec` and `tv_usec`):
/// when the command itself ran, inside or outside a container.
fn printed_ns(out: &str) -> i64 {
    let field = |name: &str| -> i64 {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {out:?}"))
    };
    field("time.tv_sec:") * 1_000_000_000 + field("time.tv_usec:") * 1_000
}

/// One job: (submit-to-start, submit-to-result) in ms; start is when its command ran.
fn job(h: &Http, id: &str, body: Value) -> (f64, f64) {
    let t0 = now_ns();
    let w = Instant::now();
    h.put(&format!("/v1/kv/jobs/{id}"), body.to_string());
    let r = block_for(h, &format!("jdone_jid/jobs/{id}"));
    let done = w.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(r["Status"], "succeeded", "{r}");
    let start = (printed_ns(r["Output"].as_str().unwrap()) - t0) as f64 / 1e6;
    (start, done)
}

fn latency(c: &ConsulDev, lab: &ImageLab) {
    let trials = env_or("BENCH_TRIALS", 20);
    let h = c.http();
    // Each prints the time it ran (busybox `adjtimex`: microseconds; its `date` has no %N).
    let cjob = json!({"Type": "docker", "Image": lab.image, "Args": ["adjtimex"]});
    let pjob = json!({"Command": "/bin/busybox adjtimex"});
    // One of each first, so that the image and the page cache are warm for all three.
    job(&h, "warm-c", cjob.clone());
    job(&h, "warm-p", pjob.clone());
    docker(&["run", "--rm", &lab.image, "adjtimex"]);
    let (mut cs, mut cd, mut ps, mut pd) = (vec![], vec![], vec![], vec![]);
    let (mut ds, mut dr) = (vec![], vec![]);
    for i in 0..trials {
        let (s, d) = job(&h, &format!("c{i}"), cjob.clone());
        cs.push(s);
        cd.push(d);
        let (s, d) = job(&h, &format!("p{i}"), pjob.clone());
        ps.push(s);
        pd.push(d);
        let t0 = now_ns();
        let w = Instant::now();
        let (ok, out, err) = docker(&["run", "--rm", &lab.image, "adjtimex"]);
        assert!(ok, "{err}");
        dr.push(w.elapsed().as_secs_f64() * 1000.0);
        ds.push((printed_ns(&out) - t0) as f64 / 1e6);
    }
    let (cs, cd, ps, pd, ds, dr) = (
        median(&mut cs),
        median(&mut cd),
        median(&mut ps),
        median(&mut pd),
        median(&mut ds),
        median(&mut dr),
    );
    println!("\n### Submit to start and to result, median of {trials} (ms)");
    println!("| what | submit-to-start | submit-to-result |");
    println!("|---|---|---|");
    println!("| container job | {cs:.1} | {cd:.1} |");
    println!("| process job | {ps:.2} | {pd:.2} |");
    println!("| `docker run --rm IMAGE` from the CLI | {ds:.1} | {dr:.1} |");
    println!(
        "| ratio container job / docker run (to start) | {:.2} | |",
        cs / ds
    );
    println!(
        "| ratio container job / docker run (to result) | | {:.2} |",
        cd / dr
    );
    println!(
        "| ratio container job / process job (to result) | | {:.1} |",
        cd / pd
    );
}

fn dockerd_pid() -> Option<i32> {
    let out = Command::new("pidof").arg("dockerd").output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

struct Minute {
    cpu_pct: f64,
    dockerd_pct: Option<f64>,
    rss_mb: f64,
    scrape_ms: Vec<f64>,
    series: usize,
}

/// The agent's CPU and RSS over BENCH_IDLE_SECS while `/metrics` is scraped every 10 s.
fn minute(pid: i32, api: &str) -> Minute {
    let secs = env_or("BENCH_IDLE_SECS", 60) as u64;
    let tick = 100.0; // USER_HZ
    let client = reqwest::blocking::Client::new();
    let dpid = dockerd_pid();
    let (a0, d0, w) = (cpu_ticks(pid), dpid.map(cpu_ticks), Instant::now());
    let mut scrape_ms = Vec::new();
    let mut series = 0;
    while w.elapsed() < Duration::from_secs(secs) {
        let t = Instant::now();
        let text = client
            .get(format!("http://{api}/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap();
        scrape_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        series = text
            .lines()
            .filter(|l| l.starts_with("servant_container_memory_usage_bytes{"))
            .count();
        std::thread::sleep(Duration::from_secs(10).min(Duration::from_secs(secs)));
    }
    let el = w.elapsed().as_secs_f64();
    Minute {
        cpu_pct: (cpu_ticks(pid) - a0) as f64 / tick / el * 100.0,
        dockerd_pct: dpid
            .zip(d0)
            .map(|(p, d0)| (cpu_ticks(p) - d0) as f64 / tick / el * 100.0),
        rss_mb: rss_kb(pid) as f64 / 1024.0,
        scrape_ms,
        series,
    }
}

fn monitor(c: &ConsulDev, lab: &ImageLab, s: &Servant) {
    let n = env_or("BENCH_CONTAINERS", 50);
    let h = c.http();
    let api = servant_api(&h);
    let pid = s.proc.pid();
    let idle = minute(pid, &api);
    // n containers of this node, as its jobs' and apps' are labelled, started with the CLI so
    // that only the monitoring is added to the agent's work.
    let w = Instant::now();
    for i in 0..n {
        let (ok, _, err) = docker(&[
            "run",
            "-d",
            "--label",
            &format!("servant.node={}", c.node),
            "--label",
            &format!("servant.app=bench{}", i % 5),
            &lab.image,
            "sleep",
            "3600",
        ]);
        assert!(ok, "{err}");
    }
    println!(
        "\n(started {n} containers in {:.1} s)",
        w.elapsed().as_secs_f64()
    );
    wait_for(
        "every container in the report",
        Duration::from_secs(120),
        || {
            let raw = h.kv_raw(&format!("appmgr/status/{}/resource", c.node))?;
            let v: Value = serde_json::from_str(&raw).ok()?;
            (v["containers"].as_array()?.len() >= n).then_some(())
        },
    );
    let busy = minute(pid, &api);
    let mut si = idle.scrape_ms.clone();
    let mut sb = busy.scrape_ms.clone();
    println!(
        "\n### Agent with {n} running containers monitored, over {} s",
        env_or("BENCH_IDLE_SECS", 60)
    );
    println!("| figure | no container | {n} containers |");
    println!("|---|---|---|");
    println!(
        "| agent CPU (% of one core) | {:.3} | {:.3} |",
        idle.cpu_pct, busy.cpu_pct
    );
    println!(
        "| agent RSS (MB) | {:.1} | {:.1} |",
        idle.rss_mb, busy.rss_mb
    );
    let d = |m: &Minute| {
        m.dockerd_pct
            .map(|p| format!("{p:.2}"))
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "| dockerd CPU (% of one core; other builds' containers too) | {} | {} |",
        d(&idle),
        d(&busy)
    );
    println!(
        "| `/metrics` scrape, median (ms; a sample under 5 s old is served as it is) | {:.1} | {:.1} |",
        median(&mut si),
        median(&mut sb)
    );
    println!(
        "| container series per gauge in the last scrape | {} | {} |",
        idle.series, busy.series
    );
    refresh_times(&c.node, n);
    streams(&c.node, n);
}

/// How long one refresh of the `n` containers' stats takes, through the agent's own
/// `ContainerMonitor`: the first (every container new: the Engine pairs two samples) and the
/// next ones (`one-shot` against the previous sample), median of 5.
fn refresh_times(node: &str, n: usize) {
    use servant::process::stats::ContainerMonitor;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (first, mut next) = rt.block_on(async {
        let m = ContainerMonitor::new(node, "", Duration::ZERO);
        let w = Instant::now();
        let got = m.usage(Duration::from_secs(60)).await.unwrap();
        assert_eq!(got.len(), n);
        let first = w.elapsed().as_secs_f64() * 1000.0;
        let mut next = Vec::new();
        for _ in 0..5 {
            let w = Instant::now();
            m.usage(Duration::from_secs(60)).await.unwrap();
            next.push(w.elapsed().as_secs_f64() * 1000.0);
        }
        (first, next)
    });
    println!("| one refresh of the {n} containers' stats, first (ms) | | {first:.0} |");
    println!(
        "| one refresh, next ones (median of 5, ms) | | {:.0} |",
        median(&mut next)
    );
}

/// The design not taken, measured beside it: one streamed stats request per container (the
/// Engine sends a sample a second on each), read by this process for BENCH_IDLE_SECS. Its CPU
/// is what an agent with a streamed sampler per container would spend at least (decoding
/// only), and the daemon's what feeding the streams costs.
fn streams(node: &str, n: usize) {
    let secs = env_or("BENCH_IDLE_SECS", 60) as u64;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let me = std::process::id() as i32;
    let dpid = dockerd_pid();
    let (msgs, el, cpu, dcpu) = rt.block_on(async move {
        use bollard::query_parameters::{ListContainersOptions, StatsOptions};
        use futures_util::StreamExt;
        let d = bollard::Docker::connect_with_local_defaults().unwrap();
        let filters = [("label".to_string(), vec![format!("servant.node={node}")])]
            .into_iter()
            .collect();
        let list = d
            .list_containers(Some(ListContainersOptions {
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .unwrap();
        let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (a0, d0, w) = (cpu_ticks(me), dpid.map(cpu_ticks), Instant::now());
        let mut tasks = Vec::new();
        for c in list.into_iter().take(n) {
            let (d, count) = (d.clone(), count.clone());
            let id = c.id.unwrap();
            tasks.push(tokio::spawn(async move {
                let mut s = d.stats(
                    &id,
                    Some(StatsOptions {
                        stream: true,
                        one_shot: false,
                    }),
                );
                while let Some(Ok(_)) = s.next().await {
                    count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let el = w.elapsed().as_secs_f64();
        let cpu = (cpu_ticks(me) - a0) as f64 / 100.0 / el * 100.0;
        let dcpu = dpid
            .zip(d0)
            .map(|(p, d0)| (cpu_ticks(p) - d0) as f64 / 100.0 / el * 100.0);
        for t in tasks {
            t.abort();
        }
        (
            count.load(std::sync::atomic::Ordering::Relaxed),
            el,
            cpu,
            dcpu,
        )
    });
    println!("\n### The alternative: one stats stream per container, {n} containers, {el:.0} s");
    println!("| figure | value |");
    println!("|---|---|");
    println!("| samples received | {msgs} ({:.1}/s) |", msgs as f64 / el);
    println!("| reader's CPU, decoding only (% of one core) | {cpu:.2} |");
    println!(
        "| dockerd CPU (% of one core) | {} |",
        dcpu.map(|p| format!("{p:.2}"))
            .unwrap_or_else(|| "-".into())
    );
}

fn main() {
    let parts = std::env::var("BENCH_PARTS").unwrap_or_default();
    let c = ConsulDev::start();
    let lab = ImageLab::new(&c.node);
    let cfg = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(cfg.path(), "[apps]\nreport_interval = \"10s\"\n").unwrap();
    let s = c
        .servant(&["--config", cfg.path().to_str().unwrap()])
        .ready();
    if parts.is_empty() || parts == "latency" {
        latency(&c, &lab);
    }
    if parts.is_empty() || parts == "monitor" {
        monitor(&c, &lab, &s);
    }
    drop(s);
    drop(c);
    drop(lab);
}
