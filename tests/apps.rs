//! Replicated apps on a real loopback cluster: six servants, each with its own Consul agent:
//! three servers, and worker clients labelled `role=worker` (two at first, one added later),
//! so that losing two nodes never costs Consul its quorum. Placement, supervision by PID,
//! invalid tasks, updates, node loss, leader loss and removal, all through App Manager's KV
//! paths.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::cluster::*;
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

/// The pid a node reports for an app, when it reports one running.
fn reported_pid(h: &Http, node: &str, task: &str) -> Option<i32> {
    let v: Value =
        serde_json::from_str(&h.kv_raw(&format!("appmgr/status/{node}/applications"))?).ok()?;
    let pid = v[task]["pid"].as_i64()? as i32;
    (pid > 0).then_some(pid)
}

/// Waits until `task` runs on exactly `n` distinct live hosts, each reporting the pid of a
/// process group that holds a `sleep <arg>`; returns host → pid.
fn running_on(c: &Cluster, via: usize, task: &str, arg: &str, n: usize) -> BTreeMap<String, i32> {
    let h = c.http(via);
    wait_for(&format!("{task} running on {n} hosts"), T, || {
        let hosts = hosts_of(&h, task);
        if hosts.len() != n {
            return None;
        }
        let procs = sleeps(&format!("sleep {arg}"));
        if procs.len() != n {
            return None;
        }
        let groups: BTreeSet<i32> = procs.iter().filter_map(|p| pgid(*p)).collect();
        let mut out = BTreeMap::new();
        for host in &hosts {
            let i = c.index_of(host);
            if !c.alive(i) {
                return None;
            }
            let pid = reported_pid(&h, host, task)?;
            if !groups.contains(&pid) {
                return None;
            }
            out.insert(host.clone(), pid);
        }
        Some(out)
    })
}

fn task(cmd: &str, replication: u32) -> String {
    json!({"content": {"name": "web", "command": cmd}, "replication": replication,
           "labels": {"role": "worker"}})
    .to_string()
}

const WORKER: &[&str] = &["--label", "role=worker"];

#[test]
fn apps_are_placed_supervised_and_moved_on_a_real_cluster() {
    let mut c = Cluster::start_n(3, &[]);
    c.add_client(WORKER);
    c.add_client(WORKER);
    let h = c.http(0);
    // Distinct sleep arguments per run, so parallel tests cannot be confused with ours.
    let base = 86_400 + (std::process::id() % 10_000) * 10;
    let (v1, v2) = (base.to_string(), (base + 1).to_string());

    // A task with replication 2 runs on two distinct nodes, checked by PID.
    let (st, _) = h.put("/v1/kv/appmgr/task/web", task(&format!("sleep {v1}"), 2));
    assert_eq!(st, 200);
    let placed = running_on(&c, 0, "web", &v1, 2);
    let leader = h.kv_raw("appmgr/leader").expect("a leader");
    assert!(c.names().contains(&leader), "leader {leader:?}");
    for n in 0..c.nodes.len() {
        let name = &c.nodes[n].name;
        let res: Value = serde_json::from_str(
            &h.kv_raw(&format!("appmgr/status/{name}/resource"))
                .expect("every node reports"),
        )
        .unwrap();
        assert!(res["cpu_processors"].as_u64().unwrap_or(0) >= 1, "{res}");
    }

    // The CLI shows the placement and the running apps.
    let addr = c.addr(0);
    let (code, out, err) = cli(&addr, &["topology"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("leader: {leader}")) && out.contains("web"),
        "{out}"
    );
    for host in placed.keys() {
        assert!(
            out.lines()
                .any(|l| l.starts_with(host.as_str()) && l.contains('x')),
            "{out}"
        );
    }
    let (code, out, _) = cli(&addr, &["task", "ls"]);
    assert_eq!(code, 0);
    assert!(out.contains("web") && out.contains("2/2"), "{out}");
    let (code, out, _) = cli(&addr, &["app", "ls"]);
    assert_eq!(code, 0);
    for (host, pid) in &placed {
        assert!(
            out.lines().any(|l| l.starts_with(host.as_str())
                && l.contains("running")
                && l.contains(&pid.to_string())),
            "{out}"
        );
    }
    // `task put` refuses a broken file with the reason and stores nothing.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"content": {"name": "x", "command": "true"}, "replicas": 2}"#,
    )
    .unwrap();
    let (code, _, err) = cli(&addr, &["task", "put", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("replicas"), "{err}");
    assert!(h.kv_raw("appmgr/task/x").is_none());

    // An invalid task is reported, and the others are not disturbed.
    h.put("/v1/kv/appmgr/task/broken", "{\"content\": {\"command\": ");
    wait_for("the invalid task reported", T, || {
        let v: Value = serde_json::from_str(&h.kv_raw("appmgr/schedule")?).ok()?;
        v["invalid"]["broken"].as_str().map(str::to_string)
    });
    assert_eq!(running_on(&c, 0, "web", &v1, 2), placed, "web undisturbed");

    // A node joins: nothing moves.
    let before = topology(&h);
    let added = c.add_client(WORKER);
    let name5 = c.nodes[added].name.clone();
    wait_for("the new node's report", T, || {
        h.kv_raw(&format!("appmgr/status/{name5}/resource"))
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(topology(&h), before, "a new node moves nothing");
    assert_eq!(running_on(&c, 0, "web", &v1, 2), placed);

    // A task update restarts the app with the new command, where it was.
    h.put("/v1/kv/appmgr/task/web", task(&format!("sleep {v2}"), 2));
    let updated = running_on(&c, 0, "web", &v2, 2);
    assert_eq!(
        updated.keys().collect::<Vec<_>>(),
        placed.keys().collect::<Vec<_>>(),
        "an update keeps the placement"
    );
    wait_for("the old command gone", T, || {
        sleeps(&format!("sleep {v1}")).is_empty().then_some(())
    });

    // SIGKILL a node running a replica (not the leader): the replica runs on a survivor and
    // the dead node's reports vanish.
    let leader = h.kv_raw("appmgr/leader").expect("a leader");
    let victim = updated
        .keys()
        .find(|n| **n != leader)
        .expect("a replica off the leader")
        .clone();
    let vi = c.index_of(&victim);
    let via = (0..c.nodes.len()).find(|i| *i != vi).unwrap_or(0);
    let t0 = Instant::now();
    c.sigkill(vi);
    let h = c.http(via);
    let moved = running_on(&c, via, "web", &v2, 2);
    let took = t0.elapsed();
    assert!(!moved.contains_key(&victim));
    wait_for("the dead node's reports gone", T, || {
        (h.kv_raw(&format!("appmgr/status/{victim}/resource"))
            .is_none()
            && h.kv_raw(&format!("appmgr/status/{victim}/applications"))
                .is_none())
        .then_some(())
    });
    eprintln!("replica moved {took:?} after SIGKILL of {victim}");

    // Kill the leader: another node leads, and the placements on survivors stay.
    let leader = h.kv_raw("appmgr/leader").expect("a leader");
    let li = c.index_of(&leader);
    let via = (0..c.nodes.len())
        .find(|i| *i != li && c.alive(*i))
        .expect("a survivor");
    let h = c.http(via);
    let kept: BTreeMap<String, BTreeSet<String>> = topology(&h)
        .into_iter()
        .filter(|(host, _)| *host != leader)
        .collect();
    let t0 = Instant::now();
    c.sigkill(li);
    let new_leader = wait_for("a new leader", T, || {
        h.kv_raw("appmgr/leader").filter(|l| *l != leader)
    });
    eprintln!(
        "{new_leader} leads {:?} after SIGKILL of {leader}",
        t0.elapsed()
    );
    let after = running_on(&c, via, "web", &v2, 2);
    let now = topology(&h);
    for (host, names) in &kept {
        for n in names {
            assert!(
                now.get(host).is_some_and(|s| s.contains(n)),
                "{n} stays on {host}: {now:?}"
            );
        }
    }
    assert!(!after.contains_key(&leader));

    // Removing the task stops the app everywhere.
    let (code, _, err) = cli(&c.addr(via), &["task", "rm", "web"]);
    assert_eq!(code, 0, "{err}");
    wait_for("web stopped everywhere", T, || {
        (sleeps(&format!("sleep {v2}")).is_empty() && hosts_of(&h, "web").is_empty()).then_some(())
    });
}
