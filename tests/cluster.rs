//! Multi-node: three servants, each launching its own Consul server on its own loopback address
//! (the one-executable cluster start), in a subnet of their own.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

use common::cluster::*;

#[test]
fn cluster_runs_each_job_once_spread_and_targeted() {
    let mut c = Cluster::start();
    let h = c.http(0);
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs.log");
    for i in 0..200 {
        let cmd = format!("echo j{i} >> {}", runs.display());
        assert_eq!(
            h.put(
                &format!("/v1/kv/jobs/j{i}"),
                json!({ "Command": cmd }).to_string()
            )
            .0,
            200
        );
    }
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for i in 0..200 {
        let r = h.wait_result(&format!("jdone_jid/jobs/j{i}"), T);
        assert_eq!(r["Status"], "succeeded", "{r}");
        assert_eq!(r["Attempt"], 1, "{r}");
        *per_node
            .entry(r["ExecutionNode"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let text = std::fs::read_to_string(&runs).unwrap();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for l in text.lines() {
        *seen.entry(l).or_default() += 1;
    }
    assert_eq!(seen.len(), 200);
    assert!(seen.values().all(|n| *n == 1), "some job ran twice");
    for n in c.names() {
        assert!(
            per_node.get(&n).copied().unwrap_or(0) >= 20,
            "poor spread: {per_node:?}"
        );
    }

    // -n runs only on that node.
    let (code, out, err) = cli(
        &c.addr(0),
        &[
            "start",
            "--wait",
            "-n",
            "node2",
            "-c",
            "echo targeted",
            "t1",
        ],
    );
    assert_eq!((code, out.as_str()), (0, "t1\ntargeted\n"), "{err}");
    let r: Value = serde_json::from_str(&h.kv_raw("jdone_jid/queues/node2/t1").unwrap()).unwrap();
    assert_eq!(r["ExecutionNode"], "node2");

    // --all runs on every alive node.
    let (code, out, err) = cli(
        &c.addr(0),
        &["start", "--wait", "--all", "-c", "echo everywhere", "a1"],
    );
    assert_eq!(code, 0, "{err}");
    for n in c.names() {
        assert!(out.contains(&format!("==> {n} (succeeded")), "{out}");
    }
    let (code, out, _) = cli(&c.addr(0), &["show", "--all", "a1"]);
    assert_eq!(code, 0);
    assert_eq!(out.matches("succeeded").count(), 3, "{out}");

    // A node that died is not picked by --all.
    c.sigkill(2);
    wait_for("node3 failed", T, || {
        let m = h.get_json("/v1/agent/members")?;
        m.as_array()?
            .iter()
            .any(|m| m["Name"] == "node3" && m["Status"] != 1)
            .then_some(())
    });
    let (code, out, err) = cli(
        &c.addr(0),
        &["start", "--wait", "--all", "-c", "echo survivors", "a2"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("==> node1") && out.contains("==> node2") && !out.contains("node3"),
        "{out}"
    );
    assert_eq!(h.get("/v1/kv/queues/node3/a2").0, 404);
}

/// The job marks its start, checks that no earlier run is still alive, and marks its end.
fn guarded_job(dir: &std::path::Path, id: &str, retries: u32) -> Value {
    let d = dir.display();
    let cmd = format!(
        "if [ -f {d}/{id}.pid ] && kill -0 $(cat {d}/{id}.pid) 2>/dev/null; then echo OVERLAP >> {d}/{id}.log; fi; echo $$ > {d}/{id}.pid; echo start >> {d}/{id}.log; sleep 8; echo end >> {d}/{id}.log"
    );
    json!({"Command": cmd, "Timeout": 60, "Retries": retries})
}

#[test]
fn cluster_sigkill_mid_job_retries_elsewhere_or_reports_lost() {
    // A stagger well above a loaded machine's scheduling delays, so the preferred node is the
    // one that claims (the default 25ms is a preference, not a promise, under load).
    let mut c = Cluster::start_n(3, &["--claim-stagger", "500ms"]);
    let h = c.http(0);
    let dir = tempfile::tempdir().unwrap();
    // Pick two IDs whose preferred node is the same, not node1 (whose API we keep using).
    let names = c.names();
    let mut by_node: HashMap<String, Vec<String>> = HashMap::new();
    for i in 0..200 {
        let id = format!("g{i}");
        let pref = servant::jobs::claim::preferred(&format!("jobs/{id}"), &names)
            .unwrap()
            .to_string();
        by_node.entry(pref).or_default().push(id);
    }
    let victim = "node2";
    let ids = &by_node[victim];
    let (retry_id, lost_id) = (ids[0].clone(), ids[1].clone());
    h.put(
        &format!("/v1/kv/jobs/{retry_id}"),
        guarded_job(dir.path(), &retry_id, 1).to_string(),
    );
    h.put(
        &format!("/v1/kv/jobs/{lost_id}"),
        guarded_job(dir.path(), &lost_id, 0).to_string(),
    );
    for id in [&retry_id, &lost_id] {
        let holder = wait_for("claimed", T, || {
            h.get_json(&format!("/v1/kv/jobs/{id}"))?[0]["Session"]
                .as_str()
                .map(str::to_string)
        });
        let info = h.get_json(&format!("/v1/session/info/{holder}")).unwrap();
        assert_eq!(info[0]["Node"], victim, "the preferred node claims first");
    }
    wait_for("both started", T, || {
        let a = std::fs::read_to_string(dir.path().join(format!("{retry_id}.log"))).ok()?;
        let b = std::fs::read_to_string(dir.path().join(format!("{lost_id}.log"))).ok()?;
        (a.contains("start") && b.contains("start")).then_some(())
    });
    c.sigkill(c.index_of(victim));

    let r = h.wait_result(
        &format!("jdone_jid/jobs/{retry_id}"),
        Duration::from_secs(90),
    );
    assert_eq!(r["Status"], "succeeded", "{r}");
    assert_eq!(r["Attempt"], 2);
    assert_ne!(r["ExecutionNode"], victim);
    let log = std::fs::read_to_string(dir.path().join(format!("{retry_id}.log"))).unwrap();
    assert_eq!(
        log, "start\nstart\nend\n",
        "never two runs at once, and the killed run never finished"
    );

    let l = h.wait_result(
        &format!("jdone_jid/jobs/{lost_id}"),
        Duration::from_secs(90),
    );
    assert_eq!(l["Status"], "lost", "{l}");
    // The attempt that ran (attempt 2 was refused).
    assert_eq!(l["Attempt"], 1);
    let log = std::fs::read_to_string(dir.path().join(format!("{lost_id}.log"))).unwrap();
    assert_eq!(log, "start\n", "a lost job is not run again");
}
