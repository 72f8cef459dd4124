//! Consul DNS from `servant agent -dev`, asked with real `dig` and compared with a real Consul
//! 1.8.7 dev agent given the same registrations: services with passing, warning and critical
//! checks, tags, SRV with its additional records, the node, NXDOMAIN; maintenance; the
//! `--dns-port` flag; bad packets.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);

/// One `dig` reply: its status and its records by section, as `name ttl class type data`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reply {
    status: String,
    answer: BTreeSet<String>,
    authority: BTreeSet<String>,
    additional: BTreeSet<String>,
}

/// Asks `ip:port` with dig; `extra` are dig options (`+tcp`, `+noedns`...).
fn dig(ip: &str, port: u16, name: &str, kind: &str, extra: &[&str]) -> Reply {
    let out = Command::new("dig")
        .arg(format!("@{ip}"))
        .args(["-p", &port.to_string(), name, kind])
        .args([
            "+noall",
            "+comments",
            "+answer",
            "+authority",
            "+additional",
            "+time=2",
            "+tries=2",
        ])
        .args(extra)
        .output()
        .expect("run dig (Debian's dnsutils; scripts/test installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut r = Reply {
        status: String::new(),
        answer: BTreeSet::new(),
        authority: BTreeSet::new(),
        additional: BTreeSet::new(),
    };
    let mut section = "";
    for line in text.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            r.status = rest.split(',').next().unwrap_or("").to_string();
        } else if line.starts_with(";; ANSWER SECTION") {
            section = "answer";
        } else if line.starts_with(";; AUTHORITY SECTION") {
            section = "authority";
        } else if line.starts_with(";; ADDITIONAL SECTION") {
            section = "additional";
        } else if line.is_empty() || line.starts_with(';') {
            continue;
        } else {
            let rec = line.split_whitespace().collect::<Vec<_>>().join(" ");
            match section {
                "answer" => r.answer.insert(rec),
                "authority" => r.authority.insert(rec),
                _ => r.additional.insert(rec),
            };
        }
    }
    if r.status.is_empty() {
        r.status = format!("no reply: {}", text.trim());
    }
    r
}

/// The same reply with this backend's node name and address, the SOA serial (a clock) and
/// Consul's node-meta TXT records (the embedded node has no meta) taken out.
fn normalise(r: &Reply, node: &str, ip: &str) -> Reply {
    let fix = |set: &BTreeSet<String>| -> BTreeSet<String> {
        set.iter()
            .filter(|rec| !rec.contains(" TXT "))
            .map(|rec| {
                let rec = rec.replace(node, "NODE").replace(ip, "NODE-IP");
                let mut w: Vec<&str> = rec.split(' ').collect();
                if w.get(3) == Some(&"SOA") && w.len() > 6 {
                    w[6] = "SERIAL";
                }
                w.join(" ")
            })
            .collect()
    };
    Reply {
        status: r.status.clone(),
        answer: fix(&r.answer),
        authority: fix(&r.authority),
        additional: fix(&r.additional),
    }
}

/// The registrations both backends get.
fn register(h: &Http) {
    for reg in [
        json!({"ID": "web1", "Name": "web", "Tags": ["v1"], "Port": 8080, "Check": {"TTL": "1h", "Status": "passing"}}),
        json!({"ID": "web2", "Name": "web", "Tags": ["v2"], "Port": 8081, "Address": "127.0.0.9", "Check": {"TTL": "1h", "Status": "passing"}}),
        json!({"ID": "web3", "Name": "web", "Tags": ["v1"], "Port": 8082, "Check": {"TTL": "1h", "Status": "critical"}}),
        json!({"ID": "web4", "Name": "web", "Port": 8083, "Check": {"TTL": "1h", "Status": "warning"}}),
        json!({"ID": "db", "Name": "db", "Port": 5432}),
        json!({"ID": "down", "Name": "down", "Port": 1, "Checks": [
            {"CheckID": "down-a", "TTL": "1h", "Status": "passing"},
            {"CheckID": "down-b", "TTL": "1h", "Status": "critical"}]}),
    ] {
        assert_eq!(h.put("/v1/agent/service/register", reg.to_string()).0, 200);
    }
    // Consul's agent syncs to the catalog a moment later; DNS answers from the catalog.
    wait_for("registrations in the catalog", T, || {
        let web = h.get_json("/v1/health/service/web")?;
        let down = h.get_json("/v1/health/service/down")?;
        let states = |v: &Value| -> usize {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .flat_map(|e| e["Checks"].as_array().cloned().unwrap_or_default())
                        .filter(|c| c["Status"] != "passing")
                        .count()
                })
                .unwrap_or(0)
        };
        (web.as_array()?.len() == 4 && states(&web) == 2 && states(&down) == 1).then_some(())
    });
}

/// The queries of the comparison, with dig options.
fn queries(node: &str) -> Vec<(String, &'static str, Vec<&'static str>)> {
    let mut q: Vec<(String, &'static str, Vec<&'static str>)> = [
        ("web.service.consul", "SRV"),
        ("web.service.consul", "A"),
        ("web.service.dc1.consul", "A"),
        ("WEB.Service.Consul", "A"),
        ("v1.web.service.consul", "SRV"),
        ("v2.web.service.consul", "A"),
        ("_web._v2.service.consul", "SRV"),
        ("_web._tcp.service.consul", "SRV"),
        ("_web._tcp.dc1.consul", "SRV"),
        ("db.service.consul", "SRV"),
        ("down.service.consul", "A"),
        ("nope.service.consul", "A"),
        ("web.service.consul", "AAAA"),
        ("web.service.dc2.consul", "A"),
        ("ghost.node.consul", "A"),
        ("7f000009.addr.dc1.consul", "A"),
        ("consul", "SOA"),
        ("example.com", "A"),
    ]
    .into_iter()
    .map(|(n, t)| (n.to_string(), t, vec![]))
    .collect();
    q.push((format!("{node}.node.consul"), "A", vec![]));
    q.push((format!("{node}.node.dc1.consul"), "A", vec![]));
    q.push(("web.service.consul".into(), "SRV", vec!["+tcp"]));
    q.push(("v1.web.service.consul".into(), "A", vec!["+noedns"]));
    q
}

/// Every query against real Consul 1.8.7 and against `-dev`, with the same registrations: the
/// same status and records (TTL 0, SOA in authority, SRV targets with their address records).
#[test]
fn dns_answers_match_real_consul() {
    // -dev answers passing instances only, as Consul does with `only_passing`.
    let real = ConsulDev::start_with(&["-hcl", "dns_config { only_passing = true }"], None);
    let dev = Single::start(Backend::Dev, &[]);
    register(&real.http());
    register(&dev.http());
    for (qname, kind, extra) in queries("NODE") {
        let ask = |ip: &str, node: &str| {
            let q = qname.replace("NODE", node);
            normalise(&dig(ip, 8600, &q, kind, &extra), node, ip)
        };
        let a = ask(&real.ip, &real.node);
        let b = ask(&dev.ip, &dev.node);
        assert_eq!(
            a, b,
            "\n{qname} {kind} {extra:?}\nreal consul: {a:#?}\nembedded:    {b:#?}"
        );
    }
    // What that comparison covered, spelled out on the embedded server.
    let srv = dig(&dev.ip, 8600, "web.service.consul", "SRV", &[]);
    assert_eq!(srv.status, "NOERROR");
    assert_eq!(
        srv.answer,
        BTreeSet::from([
            "web.service.consul. 0 IN SRV 1 1 8080 devnode.node.dc1.consul.".to_string(),
            "web.service.consul. 0 IN SRV 1 1 8081 7f000009.addr.dc1.consul.".to_string(),
        ]),
        "the critical and the warning instances are left out (passing only)"
    );
    assert_eq!(
        srv.additional,
        BTreeSet::from([
            format!("devnode.node.dc1.consul. 0 IN A {}", dev.ip),
            "7f000009.addr.dc1.consul. 0 IN A 127.0.0.9".to_string(),
        ])
    );
    let nx = dig(&dev.ip, 8600, "down.service.consul", "A", &[]);
    assert_eq!(nx.status, "NXDOMAIN");
    assert!(
        nx.authority
            .iter()
            .any(|r| r.starts_with("consul. 0 IN SOA ns.consul. hostmaster.consul.")),
        "{nx:?}"
    );
}

/// Maintenance (`consul maint`) takes the node's services, or one service, out of DNS on both
/// backends; the node itself still answers.
#[test]
fn maintenance_leaves_dns_on_both_backends() {
    let real = ConsulDev::start_with(&["-hcl", "dns_config { only_passing = true }"], None);
    let dev = Single::start(Backend::Dev, &[]);
    for (ip, addr, node) in [
        (&real.ip, real.addr(), real.node.as_str()),
        (&dev.ip, dev.addr(), dev.node.as_str()),
    ] {
        let h = Http::new(&addr);
        register(&h);
        let consul = |args: &[&str]| {
            let out = Command::new(consul_bin())
                .args(args)
                .env("CONSUL_HTTP_ADDR", &addr)
                .output()
                .unwrap();
            assert!(out.status.success(), "consul {args:?} against {addr}");
        };
        let srv_ports = |name: &str| -> Option<BTreeSet<String>> {
            let r = dig(ip, 8600, name, "SRV", &[]);
            (r.status == "NOERROR" || r.status == "NXDOMAIN").then(|| {
                r.answer
                    .iter()
                    .filter_map(|a| a.split(' ').nth(6).map(str::to_string))
                    .collect()
            })
        };
        let until = |what: &str, name: &str, want: &[&str]| {
            let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
            wait_for(&format!("{what} on {addr}"), T, || {
                (srv_ports(name)? == want).then_some(())
            });
        };
        // 8083 has a warning check: passing instances only.
        until(
            "all passing answer",
            "web.service.consul",
            &["8080", "8081"],
        );
        consul(&["maint", "-enable", "-service", "web1", "-reason", "upgrade"]);
        until("web1 out", "web.service.consul", &["8081"]);
        consul(&["maint", "-enable", "-reason", "disk swap"]);
        until("node out", "web.service.consul", &[]);
        until("node out", "db.service.consul", &[]);
        assert_eq!(
            dig(ip, 8600, "db.service.consul", "A", &[]).status,
            "NXDOMAIN"
        );
        let n = dig(ip, 8600, &format!("{node}.node.consul"), "A", &[]);
        assert_eq!(
            n.answer,
            BTreeSet::from([format!("{node}.node.consul. 0 IN A {ip}")]),
            "the node answers whatever its health"
        );
        consul(&["maint", "-disable"]);
        until("node back", "db.service.consul", &["5432"]);
        until("node back", "web.service.consul", &["8081"]);
        consul(&["maint", "-disable", "-service", "web1"]);
        until("web1 back", "web.service.consul", &["8080", "8081"]);
    }
}

/// A free UDP port on `ip` (also free for TCP on a fresh address).
fn free_port(ip: &str) -> u16 {
    let s = std::net::UdpSocket::bind(format!("{ip}:0")).unwrap();
    s.local_addr().unwrap().port()
}

/// `--dns-port` and `SERVANT_DNS_PORT` move DNS (UDP and TCP) on the dev listener's IP; -1
/// turns it off, as Consul's `-dns-port`.
#[test]
fn dns_port_flag_environment_and_off() {
    let ip = format!("{}.2", subnet());
    let port = free_port(&ip);
    let d = Single::dev_in(
        ip.clone(),
        tempfile::tempdir().unwrap(),
        &["--dns-port", &port.to_string()],
    );
    for extra in [&[][..], &["+tcp"][..]] {
        let r = dig(&ip, port, "devnode.node.consul", "A", extra);
        assert_eq!(
            r.answer,
            BTreeSet::from([format!("devnode.node.consul. 0 IN A {ip}")]),
            "{extra:?}"
        );
    }
    assert_ne!(
        dig(
            &ip,
            8600,
            "devnode.node.consul",
            "A",
            &["+time=1", "+tries=1"]
        )
        .status,
        "NOERROR",
        "nothing on the default port"
    );
    drop(d);

    let ip = format!("{}.2", subnet());
    let data = tempfile::tempdir().unwrap();
    let mut cmd = dev_command(&ip, data.path());
    let port = free_port(&ip);
    cmd.env("SERVANT_DNS_PORT", port.to_string());
    let proc = spawn_logged("servant-dev", &mut cmd, &data.path().join("agent.log"));
    let env = Single {
        node: "devnode".into(),
        ip: ip.clone(),
        servant: Servant { proc, data }.ready(),
        consul: None,
    };
    assert_eq!(
        dig(&ip, port, "devnode.node.consul", "A", &[]).status,
        "NOERROR"
    );
    drop(env);

    let ip = format!("{}.2", subnet());
    let off = Single::dev_in(
        ip.clone(),
        tempfile::tempdir().unwrap(),
        &["-dns-port", "-1"],
    );
    assert!(off
        .servant
        .proc
        .log_text()
        .contains("embedded server DNS is off"));
    assert_ne!(
        dig(
            &ip,
            8600,
            "devnode.node.consul",
            "A",
            &["+time=1", "+tries=1"]
        )
        .status,
        "NOERROR"
    );
    assert!(off.http().get_json("/v1/agent/self").is_some());
}

/// A DNS port in use stops the start with an error naming the address and the flag.
#[test]
fn dns_port_in_use_is_a_clear_start_error() {
    let ip = format!("{}.2", subnet());
    let taken = std::net::UdpSocket::bind(format!("{ip}:0")).unwrap();
    let port = taken.local_addr().unwrap().port();
    let data = tempfile::tempdir().unwrap();
    let out = dev_command(&ip, data.path())
        .args(["--dns-port", &port.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot serve DNS on {ip}:{port} (udp)"))
            && err.contains("--dns-port")
            && err.contains("-1"),
        "{err}"
    );
}

/// Garbage over UDP and TCP is answered with FORMERR or dropped; the server keeps answering.
#[test]
fn malformed_packets_do_not_stop_dns() {
    use std::io::{Read, Write};
    let d = Single::start(Backend::Dev, &[]);
    let target = format!("{}:8600", d.ip);
    let udp = std::net::UdpSocket::bind(format!("{}:0", d.ip)).unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut replies = 0;
    for i in 0..300usize {
        let len = i % 90;
        let packet: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8 & if len > 2 { 0x7f } else { 0xff }
            })
            .collect();
        udp.send_to(&packet, &target).unwrap();
        if len >= 12 && i % 30 == 12 {
            let mut buf = [0u8; 1500];
            if let Ok((n, _)) = udp.recv_from(&mut buf) {
                // A header came back, with a response code.
                assert!(n >= 12);
                replies += 1;
            }
        }
    }
    assert!(replies > 0, "malformed queries get FORMERR answers");
    // A TCP frame that promises more than it sends, and one of junk.
    let mut t = std::net::TcpStream::connect(&target).unwrap();
    t.write_all(&[0x01, 0x00, 0xde, 0xad]).unwrap();
    drop(t);
    let mut t = std::net::TcpStream::connect(&target).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    t.write_all(&[0x00, 0x05, 1, 2, 3, 4, 5]).unwrap();
    let mut buf = [0u8; 64];
    let _ = t.read(&mut buf);
    for extra in [&[][..], &["+tcp"][..]] {
        let r = dig(&d.ip, 8600, "devnode.node.consul", "A", extra);
        assert_eq!(r.status, "NOERROR", "{extra:?}: {r:?}");
    }
    assert!(d
        .http()
        .get_json("/v1/agent/self")
        .is_some_and(|v| v["Config"]["NodeName"] == "devnode"));
}
