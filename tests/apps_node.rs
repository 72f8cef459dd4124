//! The node side of apps on one node (`servant agent -dev`, and real Consul where it says):
//! environment, working directory, services, restart backoff, periodic starts, the health
//! command, unplaceable replicas, a topology key that disappears, removal.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);

/// This node's `applications` report entry for `app`.
fn app_state(h: &Http, node: &str, app: &str) -> Option<Value> {
    let v: Value =
        serde_json::from_str(&h.kv_raw(&format!("appmgr/status/{node}/applications"))?).ok()?;
    let s = v.get(app)?.clone();
    (!s.is_null()).then_some(s)
}

fn put_task(h: &Http, name: &str, v: Value) {
    let (st, b) = h.put(&format!("/v1/kv/appmgr/task/{name}"), v.to_string());
    assert_eq!(st, 200, "{b}");
}

/// A sleep argument no other test uses.
fn unique_sleep(k: u32) -> String {
    (87_000 + (std::process::id() % 1_000) * 20 + k).to_string()
}

fn app_runs_with_env_dir_and_services_then_stops_when_removed(b: Backend) {
    let s = Single::start(b, &[]);
    let h = s.http();
    let dir = tempfile::tempdir().unwrap();
    let arg = unique_sleep(if b == Backend::Dev { 1 } else { 2 });
    put_task(
        &h,
        "greeter",
        json!({"replication": 1, "content": {
            "command": format!("echo \"$GREETING from $(pwd)\" | tee out.txt; exec sleep {arg}"),
            "working_dir": dir.path(),
            "env": {"GREETING": "hello"},
            "services": [{"Name": "greeter", "Port": 9911, "Check": {"TTL": "30s"}}],
        }}),
    );
    let pid = wait_for("greeter running", T, || {
        app_state(&h, &s.node, "greeter")?["pid"]
            .as_i64()
            .filter(|p| *p > 0)
    });
    let out = wait_for("its output", T, || {
        std::fs::read_to_string(dir.path().join("out.txt")).ok()
    });
    assert_eq!(out.trim(), format!("hello from {}", dir.path().display()));
    let groups: Vec<Option<i32>> = sleeps(&format!("sleep {arg}"))
        .into_iter()
        .map(pgid)
        .collect();
    assert!(
        groups.contains(&Some(pid as i32)),
        "the reported pid leads the app's process group: {pid} vs {groups:?}"
    );
    let services = h.get_json("/v1/agent/services").unwrap();
    assert_eq!(services["greeter"]["Port"], 9911, "{services}");
    assert_eq!(services["greeter"]["Meta"]["servant_app"], "greeter");

    // Its log, through the node's agent API.
    for args in [
        vec!["app", "logs", "greeter"],
        vec![
            "app", "logs", "-n", &s.node, "--stream", "stdout", "greeter",
        ],
    ] {
        let (code, out, err) = cli(&s.addr(), &args);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("hello from"), "{out}");
    }
    let (code, _, err) = cli(&s.addr(), &["app", "logs", "nosuch"]);
    assert_eq!(code, 1);
    assert!(err.contains("placed on no node"), "{err}");
    h.delete("/v1/kv/appmgr/task/greeter");
    wait_for("greeter stopped", T, || {
        sleeps(&format!("sleep {arg}")).is_empty().then_some(())
    });
    wait_for("its service deregistered", T, || {
        h.get_json("/v1/agent/services")?
            .get("greeter")
            .is_none()
            .then_some(())
    });
    wait_for("gone from the report", T, || {
        app_state(&h, &s.node, "greeter").is_none().then_some(())
    });
}

#[test]
fn app_runs_with_env_dir_and_services_then_stops_when_removed_on_dev() {
    app_runs_with_env_dir_and_services_then_stops_when_removed(Backend::Dev);
}

#[test]
fn app_runs_with_env_dir_and_services_then_stops_when_removed_on_consul() {
    app_runs_with_env_dir_and_services_then_stops_when_removed(Backend::Consul);
}

#[test]
fn a_crashing_app_restarts_with_growing_backoff() {
    let s = Single::start(Backend::Dev, &[]);
    let h = s.http();
    put_task(&h, "crash", json!({"content": {"command": "exit 3"}}));
    let t0 = Instant::now();
    wait_for("a first restart", T, || {
        (app_state(&h, &s.node, "crash")?["restarts"].as_u64()? >= 1).then_some(())
    });
    std::thread::sleep(Duration::from_secs(5).saturating_sub(t0.elapsed()));
    let st = app_state(&h, &s.node, "crash").unwrap();
    let restarts = st["restarts"].as_u64().unwrap();
    // Backoff 1s, 2s, 4s: starts at 0, 1 and 3 s, so two restarts in five seconds (a constant
    // 1s delay would give four or five).
    assert!((1..=3).contains(&restarts), "{st}");
    assert_eq!(st["status"], 2, "crash-looping is unavailable: {st}");
    assert_eq!(st["last_exit"], "exit status 3", "{st}");
    assert_eq!(st["health"], 1);
    assert!(
        !st["next_start_time"].as_str().unwrap_or("").is_empty(),
        "{st}"
    );
}

#[test]
fn a_periodic_app_starts_every_interval() {
    let s = Single::start(Backend::Dev, &[]);
    let h = s.http();
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    put_task(
        &h,
        "tick",
        json!({"content": {"command": format!("date +%s.%N >> {}", runs.display()),
                           "start_interval_seconds": 1}}),
    );
    wait_for("a first run", T, || runs.exists().then_some(()));
    std::thread::sleep(Duration::from_millis(3_500));
    let n = std::fs::read_to_string(&runs).unwrap().lines().count();
    assert!(
        (3..=6).contains(&n),
        "{n} runs in about 3.5 s at 1 per second"
    );
    let st = app_state(&h, &s.node, "tick").unwrap();
    assert_eq!(st["start_interval_seconds"], 1);
    assert_eq!(st["status"], 1, "{st}");
}

#[test]
fn the_health_command_sets_the_reported_health() {
    let s = Single::start(Backend::Dev, &[]);
    let h = s.http();
    let dir = tempfile::tempdir().unwrap();
    let ok = dir.path().join("ok");
    let arg = unique_sleep(3);
    put_task(
        &h,
        "checked",
        // A relative path: the health command runs in the app's working directory.
        json!({"content": {"command": format!("exec sleep {arg}"),
                           "working_dir": dir.path(),
                           "health_check_cmd": "test -f ok",
                           "health_check_interval_seconds": 1}}),
    );
    wait_for("running, unhealthy", T, || {
        let st = app_state(&h, &s.node, "checked")?;
        (st["pid"].as_i64()? > 0 && st["health"] == 1).then_some(())
    });
    std::fs::write(&ok, b"").unwrap();
    wait_for("healthy", T, || {
        (app_state(&h, &s.node, "checked")?["health"] == 0).then_some(())
    });
    h.delete("/v1/kv/appmgr/task/checked");
    wait_for("stopped", T, || {
        sleeps(&format!("sleep {arg}")).is_empty().then_some(())
    });
}

#[test]
fn replicas_that_fit_nowhere_are_reported_in_kv_and_by_the_cli() {
    let s = Single::start(Backend::Dev, &[]);
    let h = s.http();
    let arg = unique_sleep(4);
    put_task(
        &h,
        "wide",
        json!({"replication": 3, "content": {"command": format!("exec sleep {arg}")}}),
    );
    let u = wait_for("unplaced replicas reported", T, || {
        let v: Value = serde_json::from_str(&h.kv_raw("appmgr/schedule")?).ok()?;
        v["unplaced"]
            .as_array()?
            .iter()
            .find(|u| u["task"] == "wide")
            .cloned()
    });
    assert_eq!(
        (u["wanted"].as_u64(), u["placed"].as_u64()),
        (Some(3), Some(1))
    );
    let (code, out, err) = cli(&s.addr(), &["topology"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("UNPLACED wide"), "{out}");
    // The one replica that fits runs (a single node holds at most one).
    wait_for("one replica runs", T, || {
        (sleeps(&format!("sleep {arg}")).len() == 1).then_some(())
    });
    h.delete("/v1/kv/appmgr/task/wide");
    wait_for("stopped", T, || {
        sleeps(&format!("sleep {arg}")).is_empty().then_some(())
    });
}

#[test]
fn an_app_stops_when_its_nodes_topology_key_disappears() {
    let s = Single::start(Backend::Dev, &[]);
    let h = s.http();
    let arg = unique_sleep(5);
    put_task(
        &h,
        "keyed",
        json!({"content": {"command": format!("exec sleep {arg}")}}),
    );
    let first = wait_for("running", T, || {
        app_state(&h, &s.node, "keyed")?["pid"]
            .as_i64()
            .filter(|p| *p > 0)
    });
    // The node stops what its key no longer names; the leader then places it again.
    h.delete(&format!("/v1/kv/appmgr/topology/{}", s.node));
    wait_for("the first process gone", T, || {
        (!std::path::Path::new(&format!("/proc/{first}")).exists()).then_some(())
    });
    let second = wait_for("started again by the leader's placement", T, || {
        app_state(&h, &s.node, "keyed")?["pid"]
            .as_i64()
            .filter(|p| *p > 0 && *p != first)
    });
    assert_ne!(first, second);
    h.delete("/v1/kv/appmgr/task/keyed");
    wait_for("stopped", T, || {
        sleeps(&format!("sleep {arg}")).is_empty().then_some(())
    });
}

#[test]
fn an_invalid_task_is_refused_by_the_cli_and_reported_by_the_leader() {
    let s = Single::start(Backend::Dev, &[]);
    let h = s.http();
    h.put("/v1/kv/appmgr/task/bad", r#"{"content": {"command": 7}}"#);
    let why = wait_for("reported", T, || {
        let v: Value = serde_json::from_str(&h.kv_raw("appmgr/schedule")?).ok()?;
        v["invalid"]["bad"].as_str().map(str::to_string)
    });
    assert!(why.contains("command"), "{why}");
    let (code, out, _) = cli(&s.addr(), &["task", "ls"]);
    assert_eq!(code, 0);
    assert!(out.contains("bad") && out.contains("INVALID"), "{out}");
    let (code, out, _) = cli(&s.addr(), &["topology"]);
    assert_eq!(code, 0);
    assert!(out.contains("INVALID bad"), "{out}");
}

#[test]
fn an_app_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let s = Single::start(Backend::Dev, &["--kill-grace", "1s"]);
    let h = s.http();
    let arg = unique_sleep(6);
    let dir = tempfile::tempdir().unwrap();
    // The app runs as nobody and writes here.
    let mut perms = std::fs::metadata(dir.path()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o777);
    std::fs::set_permissions(dir.path(), perms).unwrap();
    let who = dir.path().join("who");
    put_task(
        &h,
        "stubborn",
        json!({"content": {
            "command": format!("trap '' TERM; id -un > {}; sleep {arg}; sleep {arg}", who.display()),
            "user": "nobody",
        }}),
    );
    wait_for("running", T, || {
        (!sleeps(&format!("sleep {arg}")).is_empty()).then_some(())
    });
    assert_eq!(std::fs::read_to_string(&who).unwrap().trim(), "nobody");
    let t0 = Instant::now();
    h.delete("/v1/kv/appmgr/task/stubborn");
    wait_for("killed", T, || {
        sleeps(&format!("sleep {arg}")).is_empty().then_some(())
    });
    let took = t0.elapsed();
    // SIGTERM is ignored, so only the SIGKILL after the 1s grace ends it.
    assert!(took >= Duration::from_millis(900), "ended after {took:?}");
}

/// Issue 10: an idle agent rewrote its reports about ten times a second, forever. Its watch of
/// its own (missing) topology key and of the (empty) tasks prefix woke on every KV write, each
/// wake-up made a report write, and that write woke them again. With nothing placed and the
/// periodic report an hour away, an idle agent must write nothing at all.
fn regression_an_idle_agent_does_not_write_to_consul(b: Backend) {
    let cfg = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(cfg.path(), "[apps]\nreport_interval = \"1h\"\n").unwrap();
    let s = Single::start(b, &["--config", cfg.path().to_str().unwrap()]);
    let h = s.http();
    wait_for("the reports and the leader's schedule", T, || {
        h.kv_raw(&format!("appmgr/status/{}/applications", s.node))?;
        h.kv_raw("appmgr/schedule")
    });
    // Start-up writes (session, leader lock, schedule) settle within a second or two.
    std::thread::sleep(Duration::from_secs(2));
    let before = h.index();
    std::thread::sleep(Duration::from_secs(6));
    let after = h.index();
    assert_eq!(
        before,
        after,
        "an idle agent wrote to the KV store {} times in 6 s",
        after.saturating_sub(before)
    );
}

#[test]
fn regression_an_idle_agent_does_not_write_to_consul_on_dev() {
    regression_an_idle_agent_does_not_write_to_consul(Backend::Dev);
}

#[test]
fn regression_an_idle_agent_does_not_write_to_consul_on_consul() {
    regression_an_idle_agent_does_not_write_to_consul(Backend::Consul);
}
