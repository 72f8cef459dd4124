//! Registrator benchmark: `cargo bench --bench registrator`.
//!
//! Against a real `consul agent -dev` and the machine's Docker Engine (a `FROM scratch`
//! busybox image built for the run), with `servant agent --registrator`:
//! - from `docker run -d` (just before the CLI starts) to the service registered on the agent,
//!   and to its HTTP check passing in the catalog (`SERVICE_CHECK_INTERVAL=1s`; Consul runs a
//!   new check first after a random stagger within its interval), median of 20, beside how
//!   long the `docker run -d` command itself took;
//! - Consul writes per resync with 50 unchanged containers: the agent's service
//!   register/deregister requests, counted by a proxy between the servant and Consul, and the
//!   catalog's index, over 20 resyncs (`--resync 250ms`). Target: 0.
//!
//! Medians and counts are reported, never asserted.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::docker::*;
use common::*;

const T: Duration = Duration::from_secs(60);

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// A TCP proxy to `upstream` counting the requests that write services on the agent.
fn counting_proxy(upstream: String) -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let Ok(up) = TcpStream::connect(&upstream) else {
                continue;
            };
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
                    let writes = text.matches("PUT /v1/agent/service/register").count()
                        + text.matches("PUT /v1/agent/service/deregister").count();
                    c.fetch_add(writes, Ordering::SeqCst);
                    if to.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, count)
}

/// `docker run -d` of busybox httpd on a published port, labelled for the lab and the agent.
fn run_httpd(lab: &ImageLab, name: &str, labels: &[String]) -> (bool, String) {
    let node = format!("servant.node={}", lab.node);
    let mut args = vec!["run", "-d", "--name", name, "-p", "80", "-l", &node];
    for l in labels {
        args.extend(["-l", l.as_str()]);
    }
    args.extend([
        lab.image.as_str(),
        "sh",
        "-c",
        "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 80 -h /www",
    ]);
    let (ok, _, err) = docker(&args);
    (ok, err)
}

fn main() {
    let c = ConsulDev::start();
    let lab = ImageLab::new(&c.node);
    let h = c.http();
    let (proxy, writes) = counting_proxy(c.addr());
    let label = format!("servant.node={}", c.node);
    let s = Servant::start(
        &proxy,
        &c.ip,
        &[
            "--registrator",
            "--resync",
            "250ms",
            "--no-apps",
            "--only-label",
            &label,
        ],
        &[],
    )
    .ready();
    let pid = std::process::id();

    // 1. docker run → registered → passing, 20 times.
    let (mut cli, mut registered, mut passing) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..20 {
        let name = format!("regbench-{pid}-{i}");
        let svc = format!("regbench-{pid}-{i}");
        let id = format!("{}:{name}:80", c.node);
        let t0 = Instant::now();
        let (ok, err) = run_httpd(
            &lab,
            &name,
            &[
                format!("SERVICE_NAME={svc}"),
                "SERVICE_CHECK_HTTP=/".into(),
                "SERVICE_CHECK_INTERVAL=1s".into(),
            ],
        );
        assert!(ok, "docker run: {err}");
        cli.push(t0.elapsed().as_secs_f64() * 1000.0);
        wait_for("registered", T, || {
            h.get_json("/v1/agent/services")?.get(&id).map(|_| ())
        });
        registered.push(t0.elapsed().as_secs_f64() * 1000.0);
        // A blocking query on the passing instances: woken by the change, not by polling.
        let mut index = 0u64;
        loop {
            let path = format!("/v1/health/service/{svc}?passing&index={index}&wait=5s");
            let v = h.get_json(&path).unwrap_or_default();
            if v.as_array().is_some_and(|a| a.len() == 1) {
                break;
            }
            index = h.index_of(&format!("/v1/health/service/{svc}?passing"));
            assert!(t0.elapsed() < T, "{svc} never passed");
        }
        passing.push(t0.elapsed().as_secs_f64() * 1000.0);
        docker(&["rm", "-f", &name]);
    }
    println!("registrator, 20 containers, one at a time:");
    println!(
        "  `docker run -d` command returned:        median {:.0} ms",
        median(&mut cli)
    );
    println!(
        "  docker run -> service on the agent:      median {:.0} ms",
        median(&mut registered)
    );
    println!(
        "  docker run -> HTTP check passing (1s):   median {:.0} ms",
        median(&mut passing)
    );

    // 2. 50 unchanged containers: writes per resync.
    let names: Vec<String> = (0..50).map(|i| format!("regbench50-{pid}-{i}")).collect();
    for (i, n) in names.iter().enumerate() {
        let (ok, err) = run_httpd(&lab, n, &[format!("SERVICE_NAME=fifty-{i}")]);
        assert!(ok, "docker run: {err}");
    }
    wait_for("50 services on the agent", Duration::from_secs(120), || {
        let v = h.get_json("/v1/agent/services")?;
        let n = v
            .as_object()?
            .values()
            .filter(|s| {
                s["Service"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("fifty-"))
            })
            .count();
        (n == 50).then_some(())
    });
    // Let the removals of part 1 and anti-entropy settle.
    std::thread::sleep(Duration::from_secs(3));
    let resyncs = |s: &Servant| s.proc.log_text().matches("registrator: resync").count();
    let (w0, r0, i0) = (
        writes.load(Ordering::SeqCst),
        resyncs(&s),
        h.index_of("/v1/catalog/services"),
    );
    let t0 = Instant::now();
    wait_for("20 resyncs", T, || (resyncs(&s) >= r0 + 20).then_some(()));
    let spent = t0.elapsed();
    let (w1, r1, i1) = (
        writes.load(Ordering::SeqCst),
        resyncs(&s),
        h.index_of("/v1/catalog/services"),
    );
    let n = (r1 - r0) as f64;
    println!(
        "registrator, 50 unchanged containers, {} resyncs in {:.1} s:",
        r1 - r0,
        spent.as_secs_f64()
    );
    println!(
        "  service register/deregister requests:    {} ({:.2} per resync)",
        w1 - w0,
        (w1 - w0) as f64 / n
    );
    println!("  catalog index:                           {i0} -> {i1}");
    println!(
        "  (the proxy counted {w0} service writes before: parts 1 and 2's registrations and removals)"
    );
    for n in &names {
        docker(&["rm", "-f", n]);
    }
    drop(s);
}
