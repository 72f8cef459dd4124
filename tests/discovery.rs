//! Service discovery through Consul DNS: services that jobs declare, with working HTTP checks,
//! answer `dig ... web.service.consul SRV`, tag and A queries; a backend that stops leaves
//! the answers. Real Consul, real HTTP servers (Python's) started as servant jobs, real `dig`.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::json;

const T: Duration = Duration::from_secs(30);

/// `dig +short` lines for a query on Consul's DNS port.
fn dig(ip: &str, name: &str, kind: &str) -> BTreeSet<String> {
    let out = std::process::Command::new("dig")
        .args([
            &format!("@{ip}"),
            "-p",
            "8600",
            name,
            kind,
            "+short",
            "+time=2",
            "+tries=1",
        ])
        .output()
        .expect("run dig (Debian's dnsutils; scripts/test installs it)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn job_services_with_http_checks_answer_consul_dns() {
    let c = ConsulDev::start();
    let h = c.http();
    let _s = c.servant(&[]).ready();
    let base = 21_000 + (std::process::id() % 2_000) as u16 * 4;
    let ports = [base, base + 1];
    for (i, port) in ports.iter().enumerate() {
        let job = json!({
            "Command": format!("exec /usr/bin/python3 -m http.server {port} --bind {}", c.ip),
            "NoWait": true,
            "Services": [{
                "ID": format!("web-{i}"), "Name": "web", "Tags": ["v1"], "Port": port,
                "Address": c.ip,
                "Check": {"HTTP": format!("http://{}:{port}/", c.ip), "Interval": "1s"},
            }],
        });
        h.put(&format!("/v1/kv/jobs/web{i}"), job.to_string());
    }
    wait_for("both backends passing", T, || {
        let v = h.get_json("/v1/health/service/web?passing")?;
        (v.as_array()?.len() == 2).then_some(())
    });
    let srv = wait_for("both in SRV", T, || {
        let s = dig(&c.ip, "web.service.consul", "SRV");
        (s.len() == 2).then_some(s)
    });
    for port in ports {
        assert!(
            srv.iter()
                .any(|l| l.split_whitespace().nth(2) == Some(&port.to_string())),
            "{srv:?}"
        );
    }
    assert_eq!(
        dig(&c.ip, "web.service.consul", "A"),
        BTreeSet::from([c.ip.clone()])
    );
    assert_eq!(
        dig(&c.ip, "v1.web.service.consul", "SRV").len(),
        2,
        "tag lookup"
    );
    // Stop one backend: its check fails and it leaves the answers.
    let victims = procs_matching(&format!("http.server {}", ports[0]));
    for p in victims {
        if std::fs::read(format!("/proc/{p}/cmdline"))
            .map(|c| c.starts_with(b"/usr/bin/python3"))
            .unwrap_or(false)
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let srv = wait_for("one left in SRV", T, || {
        let s = dig(&c.ip, "web.service.consul", "SRV");
        (s.len() == 1).then_some(s)
    });
    assert!(
        srv.iter().all(|l| l.contains(&ports[1].to_string())),
        "{srv:?}"
    );
}

#[test]
fn job_services_register_tcp_ttl_and_script_checks() {
    let c = ConsulDev::start_with(&["-hcl=enable_script_checks = true"], None);
    let h = c.http();
    let _s = c.servant(&[]).ready();
    let port = 22_000 + (std::process::id() % 2_000) as u16 * 2;
    let job = json!({
        "Command": format!("exec /usr/bin/python3 -m http.server {port} --bind {}", c.ip),
        "NoWait": true,
        "Services": [
            {"ID": "tcp-svc", "Name": "tcp-svc", "Port": port, "Address": c.ip,
             "Check": {"TCP": format!("{}:{port}", c.ip), "Interval": "1s"}},
            {"ID": "script-svc", "Name": "script-svc", "Port": port,
             "Check": {"Args": ["/bin/sh", "-c", "exit 0"], "Interval": "1s"}},
            {"ID": "ttl-svc", "Name": "ttl-svc", "Port": port, "Check": {"TTL": "30s"}},
        ],
    });
    h.put("/v1/kv/jobs/checked", job.to_string());
    for svc in ["tcp-svc", "script-svc"] {
        wait_for(&format!("{svc} passing"), T, || {
            (h.get_json(&format!("/v1/health/service/{svc}?passing"))?
                .as_array()?
                .len()
                == 1)
                .then_some(())
        });
    }
    // A TTL check waits for its owner's update: registered, and critical until then.
    let checks = h.get_json("/v1/agent/checks").unwrap();
    let ttl = checks
        .as_object()
        .unwrap()
        .values()
        .find(|c| c["ServiceID"] == "ttl-svc")
        .expect("the TTL check is registered")
        .clone();
    assert_eq!(ttl["Type"], "ttl", "{ttl}");
    let srv = dig(&c.ip, "tcp-svc.service.consul", "SRV");
    assert_eq!(srv.len(), 1, "{srv:?}");
}
