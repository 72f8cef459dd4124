//! The apps leader on a real loopback cluster is woken by what placement depends on (capacity
//! records, tasks, topology), never by nodes rewriting their reports: three Consul servers and
//! worker clients, every node rewriting its reports every second, the leader's safety re-check
//! (`topology_interval`) at an hour so that only its watches can wake it. While nothing moves,
//! the leader makes no pass and reads no reports, counted on its `/metrics`; a capacity record
//! deleted by hand is written again by its node; a node whose labels change, a node joining and
//! a node dying still re-place the replica.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::cluster::*;
use common::metrics::*;
use common::*;
use serde_json::{json, Value};

/// `appmgr/topology/<host>` as host → task names.
fn topology(h: &Http) -> BTreeMap<String, BTreeSet<String>> {
    let keys: Vec<String> = h
        .get_json("/v1/kv/appmgr/topology/?keys")
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    keys.iter()
        .filter_map(|k| {
            let host = k.strip_prefix("appmgr/topology/")?.to_string();
            let names: BTreeSet<String> = serde_json::from_str(&h.kv_raw(k)?).ok()?;
            Some((host, names))
        })
        .collect()
}

fn hosts_of(h: &Http, task: &str) -> BTreeSet<String> {
    topology(h)
        .into_iter()
        .filter(|(_, t)| t.contains(task))
        .map(|(host, _)| host)
        .collect()
}

/// The one host `task` runs on: placed there, and that node reports it running.
fn running_host(h: &Http, task: &str) -> Option<String> {
    let hosts = hosts_of(h, task);
    let [host] = hosts.into_iter().collect::<Vec<_>>().try_into().ok()?;
    let v: Value =
        serde_json::from_str(&h.kv_raw(&format!("appmgr/status/{host}/applications"))?).ok()?;
    (v[task]["pid"].as_i64()? > 0).then_some(host)
}

/// What an agent's `/metrics` says of its Consul reads and its apps leader passes.
#[derive(Debug, Clone, Copy)]
struct Reads {
    kv_requests: f64,
    kv_bytes: f64,
    passes: f64,
}

fn reads(api: &str) -> Reads {
    let (_, t) = get_metrics(&format!("http://{api}/metrics"), None);
    Reads {
        kv_requests: sum(&t, "servant_consul_requests_total", "endpoint=\"kv\""),
        kv_bytes: sum(&t, "servant_consul_response_bytes_total", "endpoint=\"kv\""),
        passes: plain(&t, "servant_apps_leader_passes_total").unwrap_or(0.0),
    }
}

fn delta(a: Reads, b: Reads) -> Reads {
    Reads {
        kv_requests: b.kv_requests - a.kv_requests,
        kv_bytes: b.kv_bytes - a.kv_bytes,
        passes: b.passes - a.passes,
    }
}

#[test]
fn the_apps_leader_ignores_report_rewrites_but_follows_capacity_and_liveness() {
    let cfg = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        cfg.path(),
        "[apps]\nreport_interval = \"1s\"\ntopology_interval = \"1h\"\n",
    )
    .unwrap();
    let cfg_path = cfg.path().to_str().unwrap().to_string();
    let conf: &[&str] = &["--config", &cfg_path];
    let mut c = Cluster::start_n(3, conf);
    let worker: Vec<&str> = conf
        .iter()
        .copied()
        .chain(["--label", "role=worker"])
        .collect();
    let a = c.add_client(&worker);
    let h = c.http(0);
    let arg = (89_000 + std::process::id() % 1_000).to_string();
    let (st, _) = h.put(
        "/v1/kv/appmgr/task/web",
        json!({"content": {"command": format!("exec sleep {arg}")}, "replication": 1,
               "labels": {"role": "worker"}})
        .to_string(),
    );
    assert_eq!(st, 200);
    let name_a = c.nodes[a].name.clone();
    assert_eq!(
        wait_for("web running", T, || running_host(&h, "web")),
        name_a
    );
    // The leader stood before the worker joined (it needs no label), on a server.
    let leader = h.kv_raw("appmgr/leader").expect("a leader");
    let follower = c
        .names()
        .into_iter()
        .take(3)
        .find(|n| *n != leader)
        .expect("a server that does not lead");
    let (leader_api, follower_api) = (servant_api_of(&h, &leader), servant_api_of(&h, &follower));
    // Every node's capacity record, written once.
    for n in c.names() {
        let rec: Value =
            serde_json::from_str(&h.kv_raw(&format!("appmgr/capacity/{n}")).expect("a record"))
                .unwrap();
        assert!(rec["cpu_processors"].as_u64().unwrap_or(0) >= 1, "{rec}");
    }

    // Nothing moves for 15 s while four nodes rewrite their reports every second.
    std::thread::sleep(Duration::from_secs(3));
    let systime = |h: &Http| -> Option<String> {
        let v: Value =
            serde_json::from_str(&h.kv_raw(&format!("appmgr/status/{name_a}/resource"))?).ok()?;
        v["systime"].as_str().map(str::to_string)
    };
    let (t0, i0) = (systime(&h), h.index());
    let capacity_index = h.index_of("/v1/kv/appmgr/capacity/?keys");
    let (l0, f0) = (reads(&leader_api), reads(&follower_api));
    std::thread::sleep(Duration::from_secs(15));
    let (l1, f1) = (reads(&leader_api), reads(&follower_api));
    let (lead, follow) = (delta(l0, l1), delta(f0, f1));
    let writes = h.index() - i0;
    eprintln!("over 15 s: {writes} KV writes; leader {lead:?}; follower {follow:?}");
    assert_ne!(systime(&h), t0, "the reports were rewritten meanwhile");
    assert!(writes >= 40, "the nodes rewrote their reports: {writes}");
    assert_eq!(
        h.index_of("/v1/kv/appmgr/capacity/?keys"),
        capacity_index,
        "no capacity record was rewritten"
    );
    // Before the capacity records, every report write woke the leader into a pass that listed
    // every report: about one pass per write, and the reports' bytes each time.
    assert!(
        lead.passes <= 1.0,
        "the leader passed {} times while nothing moved",
        lead.passes
    );
    assert!(
        lead.kv_bytes <= follow.kv_bytes + 16_384.0,
        "the leader read {} KV bytes, a follower {}",
        lead.kv_bytes,
        follow.kv_bytes
    );
    assert_eq!(running_host(&h, "web").as_deref(), Some(name_a.as_str()));

    // A's record deleted by hand: A writes it again at once, and the leader, which saw A's
    // record gone while its Consul node lives, held A's placement meanwhile.
    h.delete(&format!("/v1/kv/appmgr/capacity/{name_a}"));
    wait_for("A's record written again", T, || {
        h.kv_raw(&format!("appmgr/capacity/{name_a}"))
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(running_host(&h, "web").as_deref(), Some(name_a.as_str()));
    assert!(
        c.nodes[a]
            .servant
            .as_ref()
            .expect("A runs")
            .proc
            .log_text()
            .contains("capacity record changed or vanished"),
        "A noticed"
    );

    // A's labels change (a restart with another label): its new record no longer matches, so
    // web leaves it and, with no other worker, is reported unplaced.
    c.sigkill_keep(a);
    c.restart_with(a, &["--label", "role=other"]);
    wait_for("A's new labels in its record", T, || {
        let rec: Value =
            serde_json::from_str(&h.kv_raw(&format!("appmgr/capacity/{name_a}"))?).ok()?;
        (rec["labels"]["role"] == "other").then_some(())
    });
    wait_for("web unplaced", T, || {
        let v: Value = serde_json::from_str(&h.kv_raw("appmgr/schedule")?).ok()?;
        let unplaced = v["unplaced"].as_array()?.iter().any(|u| u["task"] == "web");
        (unplaced && hosts_of(&h, "web").is_empty()).then_some(())
    });
    wait_for("web stopped on A", T, || {
        sleeps(&format!("sleep {arg}")).is_empty().then_some(())
    });

    // Two workers join: web runs on one of them (only their records can wake the leader now).
    let b = c.add_client(&worker);
    let d = c.add_client(&worker);
    let first = wait_for("web running on a new worker", T, || running_host(&h, "web"));
    let (names_b, names_d) = (c.nodes[b].name.clone(), c.nodes[d].name.clone());
    assert!(first == names_b || first == names_d, "{first}");

    // That worker dies: its record vanishes with its session, and web moves to the other.
    c.sigkill(c.index_of(&first));
    let second = wait_for("web running on the other worker", T, || {
        running_host(&h, "web").filter(|n| *n != first)
    });
    assert!(second == names_b || second == names_d, "{second}");
    wait_for("the dead worker's record gone", T, || {
        h.kv_raw(&format!("appmgr/capacity/{first}"))
            .is_none()
            .then_some(())
    });
}
