//! What is open to whom (issue 16): the agent's loud warning when Consul's ACLs are off and its
//! HTTP API listens beyond loopback, and `servant doctor`'s findings against an ACL-less
//! Consul. (Against the hardened setup of the README's policies: tests/acl.rs.)
//!
//! "Beyond loopback" needs an address that is not one: the agent runs in a network namespace of
//! its own, on a private bridge (common/netns.rs), never on the machine's own interfaces.

mod common;

use std::time::Duration;

use common::netns::Net;
use common::*;

const T: Duration = Duration::from_secs(60);

#[test]
fn the_agent_warns_when_consul_listens_beyond_loopback_without_acls() {
    let net = Net::new(1);
    let ip = net.hosts[0].ip.clone();
    let data = tempfile::tempdir().expect("tempdir");
    let mut c = net.command(0, servant_bin());
    c.args([
        "agent",
        "-dev",
        "--dev-listen",
        &format!("{ip}:8500"),
        "--api-addr",
        "127.0.0.1:0",
        "--dns-port",
        "-1",
        "--data-dir",
    ])
    .arg(data.path())
    .env("SERVANT_LOG", "info")
    .env_remove("CONSUL_HTTP_TOKEN")
    .env_remove("CONSUL_HTTP_ADDR");
    let agent = spawn_logged(
        "servant in a namespace",
        &mut c,
        &data.path().join("agent.log"),
    );
    let line = wait_for("the security warning", T, || {
        agent
            .log_text()
            .lines()
            .find(|l| l.contains("SECURITY"))
            .map(str::to_string)
    });
    assert!(line.contains("ERROR"), "loud: {line}");
    assert!(
        line.contains(&format!("listens on http://{ip}:8500")),
        "{line}"
    );
    for prefix in ["jobs/", "queues/", "appmgr/task/", "triggers/", "cluster/"] {
        assert!(line.contains(prefix), "{prefix}: {line}");
    }
    // `servant doctor` says the same, from inside the namespace.
    wait_for("the agent ready", T, || {
        agent
            .log_text()
            .contains("servant agent ready")
            .then_some(())
    });
    let out = net
        .command(0, servant_bin())
        .args(["--http-addr", &format!("{ip}:8500"), "doctor"])
        .env_remove("CONSUL_HTTP_TOKEN")
        .output()
        .expect("servant doctor");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains(&format!(
            "anyone who can reach http://{ip}:8500 can write triggers/"
        )),
        "{text}"
    );
}

/// On loopback the agent does not warn: only local users reach Consul.
#[test]
fn an_agent_on_loopback_does_not_warn() {
    let s = Single::start(Backend::Dev, &[]);
    let log = s.servant.proc.log_text();
    assert!(log.contains("servant agent ready"), "{log}");
    assert!(!log.contains("SECURITY"), "{log}");
}

/// `servant doctor` against an ACL-less Consul lists every prefix anyone may write, exits 2,
/// and writes nothing.
#[test]
fn doctor_reports_the_open_prefixes_of_an_acl_less_consul() {
    let c = ConsulDev::start();
    let h = c.http();
    let before = h.get("/v1/kv/?keys").1;
    let (code, out, err) = cli(&c.addr(), &["doctor"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.contains("ACLs off"), "{out}");
    for prefix in [
        "jobs/".to_string(),
        format!("queues/{}/", c.node),
        "appmgr/task/".into(),
        "triggers/".into(),
        "cluster/".into(),
    ] {
        assert!(
            out.contains(&format!("every user of this host can write {prefix}:")),
            "{prefix}: {out}"
        );
    }
    assert_eq!(h.get("/v1/kv/?keys").1, before, "the probes wrote nothing");
}
