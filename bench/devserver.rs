//! Embedded server benchmark: `cargo bench --bench devserver`.
//!
//! The same KV workload against a real `consul agent -dev` (in memory, no fsync) and against
//! `servant agent -dev` (every write fsynced before its reply), in the same run:
//! - PUT, GET and CAS latency, sequential, p50 and p99;
//! - write throughput with 32 concurrent writers;
//! - blocking-query wake-up: from the write's reply to the blocked reader's answer;
//! - RSS with 10,000 keys.
//!
//! Medians and ratios are reported, never asserted.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .build()
        .unwrap()
}

struct Figures {
    put: Vec<f64>,
    get: Vec<f64>,
    cas: Vec<f64>,
    writes_per_sec: f64,
    wake: Vec<f64>,
    rss_mb: f64,
}

fn measure(base: &str, pid: i32, n: usize) -> Figures {
    let c = client();
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1000.0;
    let mut put = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        let r = c
            .put(format!("{base}/v1/kv/lat/{i}"))
            .body("value")
            .send()
            .unwrap();
        assert!(r.status().is_success());
        put.push(ms(t));
    }
    let mut get = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        let r = c.get(format!("{base}/v1/kv/lat/{i}")).send().unwrap();
        let _ = r.bytes();
        get.push(ms(t));
    }
    let mut cas = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        let v: serde_json::Value = c
            .get(format!("{base}/v1/kv/lat/{i}"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let idx = v[0]["ModifyIndex"].as_u64().unwrap();
        let ok = c
            .put(format!("{base}/v1/kv/lat/{i}?cas={idx}"))
            .body("next")
            .send()
            .unwrap()
            .text()
            .unwrap();
        assert_eq!(ok.trim(), "true");
        cas.push(ms(t));
    }
    // Throughput: 32 writers, 10,000 writes in all.
    let total = 10_000usize;
    let next = Arc::new(AtomicUsize::new(0));
    let t = Instant::now();
    let threads: Vec<_> = (0..32)
        .map(|_| {
            let next = next.clone();
            let base = base.to_string();
            std::thread::spawn(move || {
                let c = client();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= total {
                        return;
                    }
                    let r = c
                        .put(format!("{base}/v1/kv/tp/{i}"))
                        .body("v")
                        .send()
                        .unwrap();
                    assert!(r.status().is_success());
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    let writes_per_sec = total as f64 / t.elapsed().as_secs_f64();
    // Wake-up: a reader blocks on a key; the time from the PUT's reply to the reader's answer.
    let mut wake = Vec::new();
    for i in 0..100 {
        let key = format!("{base}/v1/kv/wake");
        c.put(&key).body(format!("{i}")).send().unwrap();
        let idx: u64 = c.get(&key).send().unwrap().headers()["X-Consul-Index"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let k2 = key.clone();
        let reader = std::thread::spawn(move || {
            let c = client();
            let _ = c
                .get(format!("{k2}?index={idx}&wait=30s"))
                .send()
                .unwrap()
                .bytes();
            tx.send(Instant::now()).unwrap();
        });
        std::thread::sleep(Duration::from_millis(20));
        c.put(&key).body("changed").send().unwrap();
        let replied = Instant::now();
        let woke = rx.recv().unwrap();
        reader.join().unwrap();
        wake.push(woke.saturating_duration_since(replied).as_secs_f64() * 1000.0);
    }
    let rss_kb = rss_kb(pid) as f64;
    Figures {
        put,
        get,
        cas,
        writes_per_sec,
        wake,
        rss_mb: rss_kb / 1024.0,
    }
}

fn main() {
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let real = ConsulDev::start();
    let dev = Single::start(Backend::Dev, &[]);
    let mut a = measure(&format!("http://{}", real.addr()), real.proc.pid(), n);
    let mut b = measure(&format!("http://{}", dev.addr()), dev.servant.proc.pid(), n);
    println!(
        "# embedded server vs consul agent -dev ({n} sequential ops each; 10,000 keys written)\n"
    );
    println!("| figure | consul 1.8.7 -dev (memory) | servant -dev (fsync per batch) | consul time / servant time |\n|---|---|---|---|");
    for (name, x, y) in [
        ("PUT p50 / p99 (ms)", &mut a.put, &mut b.put),
        ("GET p50 / p99 (ms)", &mut a.get, &mut b.get),
        ("CAS (GET+PUT) p50 / p99 (ms)", &mut a.cas, &mut b.cas),
    ] {
        let (x50, x99, y50, y99) = (pct(x, 0.5), pct(x, 0.99), pct(y, 0.5), pct(y, 0.99));
        println!(
            "| {name} | {x50:.3} / {x99:.3} | {y50:.3} / {y99:.3} | {:.2} (p50) |",
            x50 / y50
        );
    }
    println!(
        "| write throughput, 32 writers | {:.0}/s | {:.0}/s | {:.2}x |",
        a.writes_per_sec,
        b.writes_per_sec,
        b.writes_per_sec / a.writes_per_sec
    );
    let (aw, bw) = (pct(&mut a.wake, 0.5), pct(&mut b.wake, 0.5));
    println!("| blocking wake-up after the write's reply, p50 (ms) | {aw:.3} | {bw:.3} | |");
    println!(
        "| RSS with 10,000 keys (MB) | {:.1} | {:.1} (agent included) | |",
        a.rss_mb, b.rss_mb
    );
}
