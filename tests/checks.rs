//! Checks, roles and triggers on one node with real Consul: the service check's exit code and
//! JSON line for each role (and for bad role data), the process and crontab checks on real
//! processes, triggers by hand (shell, script, timeout, history), `consul watch` calling
//! `servant watch`, and the agent's own guard and watcher healing a service.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);

/// Runs a check command: (exit code, its JSON line).
fn check(addr: &str, args: &[&str]) -> (i32, Value) {
    let (code, out, err) = cli(addr, args);
    let line = out.lines().last().unwrap_or("");
    let v: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("not one JSON line ({e}): {out:?} / {err}"));
    (code, v)
}

fn service_check(addr: &str, status_cmd: &str) -> (i32, Value) {
    check(
        addr,
        &[
            "check",
            "service",
            "-s",
            "demo",
            "-S",
            "web",
            "--env",
            "test",
            "--status-cmd",
            status_cmd,
        ],
    )
}

#[test]
fn the_service_check_answers_for_each_role_and_for_bad_role_data() {
    let c = ConsulDev::start();
    let h = c.http();
    let addr = c.addr();
    let me = c.node.clone();
    let key = "/v1/kv/cluster/test/web";
    // Standalone: no data.
    let (code, v) = service_check(&addr, "exit 0");
    assert_eq!((code, v["status"].as_str()), (0, Some("passing")), "{v}");
    assert_eq!(v["role"], "standalone");
    let (code, v) = service_check(&addr, "exit 3");
    assert_eq!((code, v["expected"].as_str()), (2, Some("running")), "{v}");
    // Primary.
    h.put(
        key,
        json!({"active_nodes": [me], "standby_nodes": ["other"]}).to_string(),
    );
    let (code, v) = service_check(&addr, "exit 0");
    assert_eq!((code, v["role"].as_str()), (0, Some("primary")), "{v}");
    assert_eq!(service_check(&addr, "exit 3").0, 2);
    // Secondary with no healthy active node: it should run (take over).
    h.put(
        key,
        json!({"active_nodes": "ghost", "standby_nodes": me}).to_string(),
    );
    let (code, v) = service_check(&addr, "exit 3");
    assert_eq!((code, v["role"].as_str()), (2, Some("secondary")), "{v}");
    assert_eq!(v["expected"], "running");
    assert_eq!(v["active_healthy"], false);
    assert_eq!(service_check(&addr, "exit 0").0, 0);
    // Datacenters: this node's datacenter is dc1.
    h.put(
        key,
        json!({"active_datacenter": "dc1", "standby_datacenters": ["dr"]}).to_string(),
    );
    assert_eq!(service_check(&addr, "exit 0").1["role"], "primary");
    // Bad data: critical with a clear message, never a crash.
    for (body, want) in [
        ("{\"active_nodes\": [", "not JSON"),
        (
            r#"{"active_nodes": ["a"], "standby_nodes": ["b"]}"#,
            "neither",
        ),
        (
            r#"{"active_nodes": ["a"], "standby_datacenters": ["dr"]}"#,
            "both node lists",
        ),
    ] {
        h.put(key, body);
        let (code, v) = service_check(&addr, "exit 0");
        assert_eq!(code, 2, "{body}: {v}");
        assert!(v["message"].as_str().unwrap_or("").contains(want), "{v}");
    }
    // A status command that is not LSB: critical, saying so.
    h.delete(key);
    let (code, v) = service_check(&addr, "exit 7");
    assert_eq!(code, 2);
    assert!(v["message"].as_str().unwrap().contains("exited 7"), "{v}");
}

#[test]
fn the_process_check_counts_real_processes() {
    let c = ConsulDev::start();
    let arg = format!("77{:06}", std::process::id() % 1_000_000);
    let mut kids: Vec<Proc> = (0..2)
        .map(|i| {
            let dir = tempfile::tempdir().unwrap();
            let log = dir.path().join(format!("s{i}"));
            let p = spawn_logged("sleep", std::process::Command::new("sleep").arg(&arg), &log);
            std::mem::forget(dir);
            p
        })
        .collect();
    let pattern = format!("sleep {arg}");
    wait_for("two sleeps", T, || {
        (sleeps(&pattern).len() == 2).then_some(())
    });
    let run = |extra: &[&str]| {
        let mut args = vec!["check", "process", "-S", "sleeper", "-a", pattern.as_str()];
        args.extend_from_slice(extra);
        check(&c.addr(), &args)
    };
    let (code, v) = run(&["-c", "2:2"]);
    assert_eq!((code, v["count"].as_u64()), (0, Some(2)), "{v}");
    assert_eq!(run(&["-c", "1:1"]).0, 2);
    assert_eq!(run(&["-w", "3:", "-c", "1:5"]).0, 1);
    let (code, v) = run(&["-c", "5:2"]);
    assert_eq!(code, 2, "a bad range is critical: {v}");
    assert_eq!(run(&["-C", "sleep", "-u", "root", "-c", "2:"]).0, 0);
    for k in &mut kids {
        k.signal(nix::sys::signal::Signal::SIGKILL);
    }
    drop(kids);
    wait_for("gone", T, || sleeps(&pattern).is_empty().then_some(()));
    assert_eq!(run(&[]).0, 2, "no process is critical by default");
}

#[test]
fn the_crontab_check_is_critical_without_a_crontab() {
    let c = ConsulDev::start();
    let (code, v) = check(
        &c.addr(),
        &["check", "crontab", "-u", "no-such-user-xyz", "-S", "cron"],
    );
    assert_eq!(code, 2);
    assert!(
        v["message"].as_str().unwrap().contains("no such user"),
        "{v}"
    );
}

#[test]
fn triggers_run_by_hand_substitute_time_out_and_are_recorded() {
    let c = ConsulDev::start();
    let h = c.http();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fired");
    h.put(
        "/v1/kv/triggers/test/web/standalone/critical",
        format!("echo @ENV @HOST @ROLE > {}", out.display()),
    );
    let check_json = json!({"Node": c.node, "CheckID": "service:web", "Name": "web check",
                            "ServiceName": "web", "Status": "critical"})
    .to_string();
    let (code, _, err) = cli(
        &c.addr(),
        &["trigger", "critical", "-s", &check_json, "--env", "test"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap().trim(),
        format!("test {} standalone", c.node)
    );
    // The environment-less fallback key, and a script with its own interpreter.
    h.put(
        "/v1/kv/triggers/web/standalone/warning",
        format!(
            "#!/usr/bin/env python3\nopen('{}', 'w').write('py @ROLE')\n",
            out.display()
        ),
    );
    let (code, _, err) = cli(
        &c.addr(),
        &["trigger", "warning", "-s", &check_json, "--env", "other"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "py standalone");
    // A hanging action is killed at its timeout.
    h.put("/v1/kv/triggers/test/web/standalone/critical", "sleep 60");
    let t = Instant::now();
    let (code, _, err) = cli(
        &c.addr(),
        &[
            "trigger",
            "critical",
            "-s",
            &check_json,
            "--env",
            "test",
            "--timeout",
            "1s",
        ],
    );
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_ne!(code, 0);
    assert!(err.contains("timed out"), "{err}");
    let history: Value =
        serde_json::from_str(&h.kv_raw(&format!("trigger_history/{}", c.node)).unwrap()).unwrap();
    let runs = history.as_array().unwrap();
    assert_eq!(runs.len(), 3);
    assert_eq!(runs[2]["timed_out"], true);
    assert_eq!(runs[0]["key"], "triggers/test/web/standalone/critical");
    assert_eq!(runs[1]["key"], "triggers/web/standalone/warning");
    // Broken role data: no action runs (which one would be right?), and the error says why.
    h.put("/v1/kv/cluster/test/web", "{broken");
    h.put(
        "/v1/kv/triggers/test/web/standalone/critical",
        format!("echo should-not-run > {}", out.display()),
    );
    let (code, _, err) = cli(
        &c.addr(),
        &["trigger", "critical", "-s", &check_json, "--env", "test"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("without a role"), "{err}");
    assert_ne!(
        std::fs::read_to_string(&out).unwrap().trim(),
        "should-not-run"
    );
    h.delete("/v1/kv/cluster/test/web");
    // Not a check's JSON: an error, not a crash.
    let (code, _, err) = cli(&c.addr(), &["trigger", "critical", "-s", "{oops"]);
    assert_eq!(code, 1);
    assert!(err.contains("not a check's JSON"), "{err}");
}

#[test]
fn consul_watch_calling_servant_watch_runs_the_trigger() {
    let c = ConsulDev::start();
    let h = c.http();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fired");
    h.put(
        "/v1/kv/triggers/test/web/standalone/critical",
        format!("echo @HOST >> {}", out.display()),
    );
    // A service whose TTL check is critical from the start.
    h.put(
        "/v1/agent/service/register",
        json!({"ID": "web", "Name": "web", "Check": {"TTL": "60s", "Status": "critical"}})
            .to_string(),
    );
    let handler = format!(
        "{} --http-addr {} watch critical --env test",
        servant_bin(),
        c.addr()
    );
    let log = dir.path().join("watch.log");
    let _watch = spawn_logged(
        "consul watch",
        std::process::Command::new(consul_bin()).args([
            "watch",
            &format!("-http-addr={}", c.addr()),
            "-type=checks",
            "-state=critical",
            &handler,
        ]),
        &log,
    );
    let fired = wait_for("the trigger ran", T, || std::fs::read_to_string(&out).ok());
    assert_eq!(fired.trim(), c.node);
}

#[test]
fn the_agents_guard_and_watcher_heal_a_service() {
    let c = ConsulDev::start();
    let h = c.http();
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("running");
    let cfg = dir.path().join("servant.toml");
    std::fs::write(&cfg, guard_until_file(&flag)).unwrap();
    // Standalone: the service should run; the critical action starts it.
    h.put(
        "/v1/kv/triggers/test/web/standalone/critical",
        format!("touch {}", flag.display()),
    );
    let t0 = Instant::now();
    let _s = c.servant(&["--config", cfg.to_str().unwrap()]).ready();
    wait_for("the service started by its trigger", T, || {
        flag.exists().then_some(())
    });
    wait_for("the guard's check passing", T, || {
        let checks = h.get_json("/v1/agent/checks")?;
        (checks["servant:web"]["Status"] == "passing").then_some(())
    });
    eprintln!("healed {:?} after the agent started", t0.elapsed());
    let history: Value =
        serde_json::from_str(&h.kv_raw(&format!("trigger_history/{}", c.node)).unwrap()).unwrap();
    assert_eq!(history[0]["state"], "critical");
    assert_eq!(history[0]["exit_code"], 0);
    let out = h.get_json("/v1/agent/checks").unwrap()["servant:web"]["Output"].clone();
    let line: Value = serde_json::from_str(out.as_str().unwrap_or("")).unwrap_or_default();
    assert_eq!(
        line["role"], "standalone",
        "the check's output is its JSON line: {out}"
    );
}

/// Removes a file when dropped.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn the_service_check_reads_a_sysvinit_script_by_its_exit_code() {
    let c = ConsulDev::start();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // A throwaway LSB init script: `status` exits 0 when the state file says running, else 3.
    let name = format!("servant-test-{}", std::process::id());
    let script = std::path::PathBuf::from(format!("/etc/init.d/{name}"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = status ] || exit 2\ngrep -q running {} 2>/dev/null && exit 0\nexit 3\n",
            state.display()
        ),
    )
    .unwrap();
    let _rm = RemoveOnDrop(script.clone());
    let mut perms = std::fs::metadata(&script).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&script, perms).unwrap();
    if std::path::Path::new("/run/systemd/system").is_dir() {
        eprintln!("systemd manages this machine; the init script path is not the one taken");
        return;
    }
    let run = || {
        check(
            &c.addr(),
            &[
                "check", "service", "-s", &name, "-S", "web", "--env", "test",
            ],
        )
    };
    let (code, v) = run();
    assert_eq!((code, v["running"].as_bool()), (2, Some(false)), "{v}");
    std::fs::write(&state, "running").unwrap();
    let (code, v) = run();
    assert_eq!((code, v["running"].as_bool()), (0, Some(true)), "{v}");
}

#[test]
fn a_script_mode_guard_is_run_by_consul() {
    let c = ConsulDev::start_with(&["-hcl=enable_script_checks = true"], None);
    let h = c.http();
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("up");
    let cfg = dir.path().join("servant.toml");
    std::fs::write(
        &cfg,
        format!(
            "[checks]\nenvironment = \"test\"\nwatch = false\n\n[[checks.guard]]\nconsul_service = \"web\"\nlinux_service = \"demo\"\nstatus_cmd = \"test -f {} || exit 3\"\nmode = \"script\"\ninterval = \"1s\"\n",
            flag.display()
        ),
    )
    .unwrap();
    let _s = c.servant(&["--config", cfg.to_str().unwrap()]).ready();
    let status = |want: &str| {
        wait_for(&format!("the script check {want}"), T, || {
            let v = h.get_json("/v1/agent/checks")?;
            // Consul's first state has no output: wait for the script's own answer.
            let out = v["servant:web"]["Output"]
                .as_str()
                .unwrap_or("")
                .to_string();
            (v["servant:web"]["Status"] == want && out.contains("expected")).then_some(out)
        })
    };
    let out = status("critical");
    assert!(out.contains("\"expected\":\"running\""), "{out}");
    std::fs::write(&flag, "").unwrap();
    status("passing");
}

/// Issue 11: `kv_prefix` namespaced jobs and apps but not `cluster/`, `triggers/` and
/// `trigger_history/`, so two namespaces shared one trigger history and each other's actions.
#[test]
fn regression_kv_prefix_covers_roles_triggers_and_their_history() {
    let c = ConsulDev::start();
    let h = c.http();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fired");
    // The unprefixed action must not run for namespace team-a; the prefixed one must.
    h.put(
        "/v1/kv/triggers/test/web/standalone/critical",
        format!("echo unprefixed > {}", out.display()),
    );
    h.put(
        "/v1/kv/team-a/triggers/test/web/standalone/critical",
        format!("echo team-a @ROLE > {}", out.display()),
    );
    // Roles come from the namespace too: team-a's data makes this node primary.
    h.put(
        "/v1/kv/team-a/cluster/test/web",
        json!({"active_nodes": [c.node], "standby_nodes": ["other"]}).to_string(),
    );
    h.put(
        "/v1/kv/team-a/triggers/test/web/primary/critical",
        format!("echo team-a @ROLE > {}", out.display()),
    );
    let check_json = json!({"Node": c.node, "CheckID": "service:web", "Name": "web check",
                            "ServiceName": "web", "Status": "critical"})
    .to_string();
    let (code, _, err) = cli(
        &c.addr(),
        &[
            "--kv-prefix",
            "team-a",
            "trigger",
            "critical",
            "-s",
            &check_json,
            "--env",
            "test",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap().trim(),
        "team-a primary"
    );
    let history: Value = serde_json::from_str(
        &h.kv_raw(&format!("team-a/trigger_history/{}", c.node))
            .expect("the history is in the namespace"),
    )
    .unwrap();
    assert_eq!(
        history[0]["key"],
        "team-a/triggers/test/web/primary/critical"
    );
    assert!(
        h.kv_raw(&format!("trigger_history/{}", c.node)).is_none(),
        "nothing is recorded outside the namespace"
    );
}

/// The agent's config for the guarded `web` of `guard_until_file`, with `extra` appended to its
/// `[checks]` table and `after` after it (other tables).
fn guard_config(flag: &std::path::Path, checks_extra: &str, after: &str) -> String {
    guard_until_file(flag).replacen(
        "[checks]\n",
        &format!("[checks]\nrepeat = \"1s\"\n{checks_extra}\n"),
        1,
    ) + after
}

/// Issue 16: whoever can write `triggers/` runs commands on the node. With
/// `allow_kv_actions = false` a command written there does not run, and its run is recorded
/// and logged as refused; a value naming one of the node's own actions (`action:NAME`) runs.
#[test]
fn allow_kv_actions_false_refuses_commands_from_kv_and_runs_named_local_actions() {
    let c = ConsulDev::start();
    let h = c.http();
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("running");
    let bad = dir.path().join("kv-command-ran");
    let cfg = dir.path().join("servant.toml");
    std::fs::write(
        &cfg,
        guard_config(
            &flag,
            "allow_kv_actions = false",
            &format!("\n[checks.actions]\nheal = \"touch {}\"\n", flag.display()),
        ),
    )
    .unwrap();
    h.put(
        "/v1/kv/triggers/test/web/standalone/critical",
        format!("touch {} {}", bad.display(), flag.display()),
    );
    let s = c.servant(&["--config", cfg.to_str().unwrap()]).ready();
    let history = |h: &Http| -> Vec<Value> {
        h.kv_raw(&format!("trigger_history/{}", c.node))
            .and_then(|t| serde_json::from_str::<Vec<Value>>(&t).ok())
            .unwrap_or_default()
    };
    let refused = wait_for("a refused run in the history", T, || {
        history(&h).into_iter().find(|r| r["refused"].is_string())
    });
    assert!(
        refused["refused"]
            .as_str()
            .unwrap()
            .contains("allow_kv_actions"),
        "{refused}"
    );
    assert_eq!(refused["exit_code"], Value::Null, "{refused}");
    assert!(!bad.exists() && !flag.exists(), "the command from KV ran");
    wait_for("the refusal in the agent's log", T, || {
        s.proc
            .log_text()
            .contains("trigger action refused")
            .then_some(())
    });
    // The same key naming the node's own action: it runs (the watcher repeats every second
    // while the check is critical) and the service heals.
    h.put(
        "/v1/kv/triggers/test/web/standalone/critical",
        "action:heal",
    );
    wait_for("the local action ran", T, || flag.exists().then_some(()));
    assert!(!bad.exists());
    wait_for("a succeeded run in the history", T, || {
        history(&h)
            .into_iter()
            .find(|r| r["exit_code"] == 0 && r["refused"].is_null())
    });
    // `servant trigger` with the agent's config refuses the same way, and says why.
    h.put(
        "/v1/kv/triggers/test/web/standalone/critical",
        format!("touch {}", bad.display()),
    );
    let check_json = json!({"Node": c.node, "CheckID": "service:web", "Name": "web check",
                            "ServiceName": "web", "Status": "critical"})
    .to_string();
    let (code, _, err) = cli(
        &c.addr(),
        &[
            "trigger",
            "critical",
            "-s",
            &check_json,
            "--env",
            "test",
            "--config",
            cfg.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("allow_kv_actions"), "{err}");
    assert!(!bad.exists(), "the command from KV ran");
}

/// Issue 16: a command from KV runs as `[jobs] default_user`, not as the agent (root).
#[test]
fn kv_trigger_actions_run_as_the_jobs_default_user() {
    use std::os::unix::fs::PermissionsExt;
    let c = ConsulDev::start();
    let h = c.http();
    let dir = tempfile::tempdir().unwrap();
    // The action's user must be able to write here.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let flag = dir.path().join("running");
    let who = dir.path().join("who");
    let cfg = dir.path().join("servant.toml");
    std::fs::write(
        &cfg,
        guard_config(&flag, "", "\n[jobs]\ndefault_user = \"nobody\"\n"),
    )
    .unwrap();
    // A script action too: its file must be readable by the user it runs as.
    h.put(
        "/v1/kv/triggers/test/web/standalone/critical",
        format!(
            "#!/bin/sh\nid -un > {}\ntouch {}\n",
            who.display(),
            flag.display()
        ),
    );
    let _s = c.servant(&["--config", cfg.to_str().unwrap()]).ready();
    wait_for("the action ran", T, || flag.exists().then_some(()));
    assert_eq!(std::fs::read_to_string(&who).unwrap().trim(), "nobody");
}
