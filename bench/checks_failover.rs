//! Active/standby failover benchmark: `cargo bench --bench checks_failover`.
//!
//! Three Consul servers launched by servants (`--no-apps`); node1 active and node2 standby for
//! service `demo`, each guarding it with the documented defaults (TTL check every 10s, or within
//! a second while not passing, and at once on a change to the service's health; debounce 1s). The service is a real HTTP server
//! (`python3 -m http.server` on the node's own address), started and stopped by one trigger
//! action. Each trial SIGKILLs node1's servant, its Consul and its HTTP server, and times until
//! the standby's HTTP server answers; then node1 is restarted and the give-back (node1 serving,
//! node2's copy stopped) is timed. The part that is Consul's failure detection (until node1's
//! serfHealth is critical in the catalog) is measured in the same trials. Medians of
//! `BENCH_TRIALS` (default 5); nothing asserted.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::*;

const PORT: u16 = 18_080;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Whether an HTTP server answers on `ip:PORT`.
fn answers(ip: &str) -> bool {
    let Ok(addr) = format!("{ip}:{PORT}").parse() else {
        return false;
    };
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"GET / HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.")
}

fn main() {
    let trials: usize = std::env::var("BENCH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let mut c = active_standby(
        &d,
        "bench",
        "",
        "",
        &format!("/usr/bin/python3 -m http.server {PORT} --bind $IP"),
    );
    let (ip1, ip2) = (c.nodes[0].ip.clone(), c.nodes[1].ip.clone());
    let h = c.http(2);
    let cleanup = |d: &Path| {
        for n in ["node1", "node2"] {
            if let Some(p) = pid_alive(d, n) {
                kill_pid(p);
            }
        }
    };
    // Steady: node1 serving and node2 not, for three seconds in a row.
    let steady = |d: &Path| {
        let mut since: Option<Instant> = None;
        wait_for("node1 serving, node2 not", Duration::from_secs(120), || {
            let ok = answers(&ip1) && !answers(&ip2) && pid_alive(d, "node2").is_none();
            match (ok, since) {
                (false, _) => since = None,
                (true, None) => since = Some(Instant::now()),
                (true, Some(t)) if t.elapsed() >= Duration::from_secs(3) => return Some(()),
                _ => {}
            }
            std::thread::sleep(Duration::from_millis(100));
            None
        })
    };
    steady(&d);
    let (mut takeover, mut detect, mut giveback) = (Vec::new(), Vec::new(), Vec::new());
    for trial in 0..trials {
        let pid1 = pid_alive(&d, "node1").expect("node1's server");
        let t0 = Instant::now();
        c.sigkill_keep(0);
        kill_pid(pid1);
        let mut detected = None;
        loop {
            if detected.is_none() && serf_critical(&h, "node1") {
                detected = Some(t0.elapsed().as_secs_f64());
            }
            if answers(&ip2) {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(120), "no takeover");
            std::thread::sleep(Duration::from_millis(20));
        }
        let t = t0.elapsed().as_secs_f64();
        takeover.push(t);
        detect.push(detected.unwrap_or(t));
        let t1 = Instant::now();
        c.restart(0);
        steady(&d);
        // The three seconds of the steady check are not part of the give-back.
        let back = t1.elapsed().as_secs_f64() - 3.0;
        giveback.push(back);
        eprintln!(
            "trial {trial}: takeover {t:.2}s (consul {:.2}s), give-back {back:.2}s",
            detected.unwrap_or(t)
        );
    }
    cleanup(&d);
    println!("# active/standby failover ({trials} trials, documented defaults)\n");
    println!("| figure | median (s) |\n|---|---|");
    println!(
        "| SIGKILL of the active node until the standby's service answers | {:.2} |",
        median(&mut takeover)
    );
    println!(
        "| of which Consul's failure detection (serfHealth critical) | {:.2} |",
        median(&mut detect)
    );
    println!(
        "| active node restarted until it serves and the standby's copy is stopped | {:.2} |",
        median(&mut giveback)
    );
}
