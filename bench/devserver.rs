//! Embedded server benchmark: `cargo bench --bench devserver`.
//!
//! The same KV workload against a real `consul agent -dev` (in memory, no fsync) and against
//! `servant agent -dev` (every write fsynced before its reply), in the same run:
//! - PUT, GET and CAS latency, sequential, p50 and p99;
//! - write throughput with 32 concurrent writers (bare keep-alive HTTP connections), median of
//!   three runs, and the server's CPU time per write;
//! - blocking-query wake-up: from the write's reply to the blocked reader's answer;
//! - RSS with the keys written (30,000 and more, past the 10,000 the target names).
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

/// A bare HTTP/1.1 keep-alive connection: the load generator spends a few microseconds per
/// request, so on a two-core machine the servers, not the client, are what is measured.
struct Raw {
    r: std::io::BufReader<std::net::TcpStream>,
    w: std::net::TcpStream,
}

impl Raw {
    fn connect(base: &str) -> Raw {
        let addr = base.trim_start_matches("http://");
        let w = std::net::TcpStream::connect(addr).unwrap();
        w.set_nodelay(true).unwrap();
        Raw {
            r: std::io::BufReader::new(w.try_clone().unwrap()),
            w,
        }
    }

    /// Sends one request and reads the whole reply: (status, body).
    fn call(&mut self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        use std::io::{BufRead, Read, Write};
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut req = head.into_bytes();
        req.extend_from_slice(body);
        self.w.write_all(&req).unwrap();
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        let status: u16 = line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut len = 0usize;
        loop {
            line.clear();
            self.r.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap();
                }
            }
        }
        let mut out = vec![0; len];
        self.r.read_exact(&mut out).unwrap();
        (status, out)
    }
}

struct Figures {
    put: Vec<f64>,
    get: Vec<f64>,
    cas: Vec<f64>,
    writes_per_sec: f64,
    wake: Vec<f64>,
    rss_mb: f64,
    cpu_us_per_write: f64,
}

fn measure(base: &str, pid: i32, n: usize) -> Figures {
    let c = client();
    let mut raw = Raw::connect(base);
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1000.0;
    let mut put = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        let (status, _) = raw.call("PUT", &format!("/v1/kv/lat/{i}"), b"value");
        assert_eq!(status, 200);
        put.push(ms(t));
    }
    let mut get = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        let (status, _) = raw.call("GET", &format!("/v1/kv/lat/{i}"), b"");
        assert_eq!(status, 200);
        get.push(ms(t));
    }
    let mut cas = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        let (_, body) = raw.call("GET", &format!("/v1/kv/lat/{i}"), b"");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let idx = v[0]["ModifyIndex"].as_u64().unwrap();
        let (_, ok) = raw.call("PUT", &format!("/v1/kv/lat/{i}?cas={idx}"), b"next");
        assert_eq!(ok.trim_ascii(), b"true");
        cas.push(ms(t));
    }
    // Throughput: 32 writers, 10,000 writes in all, three trials; the median, and the
    // server's CPU time per write over all three.
    let mut rates = Vec::new();
    let cpu0 = cpu_ticks(pid);
    for trial in 0..3 {
        let total = 10_000usize;
        let next = Arc::new(AtomicUsize::new(0));
        let t = Instant::now();
        let threads: Vec<_> = (0..32)
            .map(|_| {
                let next = next.clone();
                let base = base.to_string();
                std::thread::spawn(move || {
                    let mut raw = Raw::connect(&base);
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= total {
                            return;
                        }
                        let (status, _) = raw.call("PUT", &format!("/v1/kv/tp{trial}/{i}"), b"v");
                        assert_eq!(status, 200);
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        rates.push(total as f64 / t.elapsed().as_secs_f64());
    }
    let ticks_per_sec = 100.0; // USER_HZ on Linux
    let cpu_us_per_write = (cpu_ticks(pid) - cpu0) as f64 / ticks_per_sec * 1e6 / 30_000.0;
    let writes_per_sec = pct(&mut rates, 0.5);
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
        cpu_us_per_write,
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
    for l in dev
        .servant
        .proc
        .log_text()
        .lines()
        .filter(|l| l.contains("STATS"))
    {
        println!("{l}");
    }
    println!(
        "# embedded server vs consul agent -dev ({n} sequential ops each; 30,000 keys written)\n"
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
        "| write throughput, 32 writers (median of 3 x 10,000) | {:.0}/s | {:.0}/s | {:.2}x |",
        a.writes_per_sec,
        b.writes_per_sec,
        b.writes_per_sec / a.writes_per_sec
    );
    println!(
        "| server CPU per write in those runs (us) | {:.0} | {:.0} | |",
        a.cpu_us_per_write, b.cpu_us_per_write
    );
    let (aw, bw) = (pct(&mut a.wake, 0.5), pct(&mut b.wake, 0.5));
    println!("| blocking wake-up after the write's reply, p50 (ms) | {aw:.3} | {bw:.3} | |");
    println!(
        "| RSS with {} keys (MB) | {:.1} | {:.1} (agent included) | |",
        n + 30_001,
        a.rss_mb,
        b.rss_mb
    );
}
