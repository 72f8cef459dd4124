//! `servant template` benchmark: `cargo bench --bench templates`.
//!
//! Against a real `consul agent -dev`, in one run:
//! - latency from a catalog change (the registration's reply) to the rendered file, p50 and
//!   p99 over 100 changes, with `-wait 0`;
//! - Consul requests per change with 50 templates watching the same service, counted by a
//!   small proxy between `servant template` and Consul;
//! - RSS of `servant template` with 1,000 services rendered (one watch per service, as
//!   consul-template also has; the Consul agent allows 4,000 connections per client instead of
//!   its default 200).
//!
//! Medians and counts are reported, never asserted.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// A TCP proxy to `upstream` that counts the HTTP requests going through it.
fn counting_proxy(upstream: String) -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let up = TcpStream::connect(&upstream).unwrap();
            let (mut a, mut b) = (conn.try_clone().unwrap(), up.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut b, &mut a);
            });
            let c = c.clone();
            let (mut from, mut to) = (conn, up);
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                loop {
                    let n = match from.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let text = String::from_utf8_lossy(&buf[..n]);
                    let requests = text.matches(" HTTP/1.1\r\n").count();
                    c.fetch_add(requests, Ordering::SeqCst);
                    if to.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, count)
}

fn register(h: &Http, id: &str, name: &str, port: u16) {
    h.put(
        "/v1/agent/service/register",
        json!({"ID": id, "Name": name, "Port": port}).to_string(),
    );
}

fn start_template(addr: &str, args: &[String], log: &std::path::Path) -> Proc {
    let mut cmd = std::process::Command::new(servant_bin());
    cmd.args(["--http-addr", addr, "template"]).args(args);
    spawn_logged("servant template", &mut cmd, log)
}

fn main() {
    // 1,000 watched services are 1,000 held blocking queries from one address: Consul's
    // default of 200 connections per client would refuse most (consul-template meets the
    // same limit), so this agent allows more.
    let c = ConsulDev::start_with(&["-hcl=limits { http_max_conns_per_client = 4000 }"], None);
    let h = c.http();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("web.ctmpl"),
        "{{range service \"web\"}}server {{.Address}}:{{.Port}};\n{{end}}",
    )
    .unwrap();
    register(&h, "web-0", "web", 9000);

    // Latency: change the catalog, time until the file shows it.
    let out = d.join("web.conf");
    let args = vec![
        "-template".to_string(),
        format!("{}:{}", d.join("web.ctmpl").display(), out.display()),
    ];
    let t = start_template(&c.addr(), &args, &d.join("lat.log"));
    wait_for("first render", Duration::from_secs(30), || {
        std::fs::read_to_string(&out)
            .ok()
            .filter(|s| s.contains(":9000;"))
    });
    let mut lat = Vec::new();
    for i in 0..100u16 {
        let port = 10_000 + i;
        let t0 = Instant::now();
        register(&h, "web-1", "web", port);
        let needle = format!(":{port};");
        loop {
            if std::fs::read_to_string(&out).is_ok_and(|s| s.contains(&needle)) {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "no render");
            std::thread::sleep(Duration::from_micros(200));
        }
        lat.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    drop(t);

    // Requests per change with 50 templates on the same service.
    let (proxy, count) = counting_proxy(c.addr());
    let mut args = Vec::new();
    for i in 0..50 {
        args.push("-template".to_string());
        args.push(format!(
            "{}:{}",
            d.join("web.ctmpl").display(),
            d.join(format!("out{i}.conf")).display()
        ));
    }
    let t = start_template(&proxy, &args, &d.join("fifty.log"));
    wait_for("fifty renders", Duration::from_secs(30), || {
        (0..50)
            .all(|i| d.join(format!("out{i}.conf")).exists())
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let before = count.load(Ordering::SeqCst);
    let changes = 20u16;
    for i in 0..changes {
        register(&h, "web-1", "web", 20_000 + i);
        let needle = format!(":{};", 20_000 + i);
        wait_for("all fifty rendered", Duration::from_secs(10), || {
            (0..50)
                .all(|k| {
                    std::fs::read_to_string(d.join(format!("out{k}.conf")))
                        .is_ok_and(|s| s.contains(&needle))
                })
                .then_some(())
        });
    }
    let per_change = (count.load(Ordering::SeqCst) - before) as f64 / changes as f64;
    drop(t);

    // RSS with 1,000 services rendered.
    for i in 0..1000u16 {
        register(&h, &format!("svc-{i}"), &format!("svc-{i}"), 30_000 + i);
    }
    std::fs::write(
        d.join("all.ctmpl"),
        "{{range services}}{{range service .Name}}{{.Name}} {{.Address}}:{{.Port}}\n{{end}}{{end}}",
    )
    .unwrap();
    let all = d.join("all.conf");
    let args = vec![
        "-template".to_string(),
        format!("{}:{}", d.join("all.ctmpl").display(), all.display()),
    ];
    let t = start_template(&c.addr(), &args, &d.join("all.log"));
    wait_for("1,000 services rendered", Duration::from_secs(120), || {
        std::fs::read_to_string(&all)
            .ok()
            .filter(|s| s.lines().count() >= 1001)
    });
    std::thread::sleep(Duration::from_secs(1));
    let rss = rss_kb(t.pid()) as f64 / 1024.0;

    println!("# servant template against consul agent -dev\n");
    println!("| figure | value |\n|---|---|");
    println!(
        "| catalog change to rendered file, p50 / p99 (ms), 100 changes | {:.2} / {:.2} |",
        pct(&mut lat.clone(), 0.5),
        pct(&mut lat, 0.99)
    );
    println!("| Consul requests per change, 50 templates on one service | {per_change:.2} |");
    println!("| RSS with 1,000 services rendered (MB) | {rss:.1} |");
}
