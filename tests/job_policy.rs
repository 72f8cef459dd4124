//! The node's job policy, `[jobs]` in the agent's configuration (issue 16): jobs outside it get a
//! `rejected` result naming the rule; a job without `User` runs as `default_user`; the rest run.
//! A real `consul agent -dev` or `servant agent -dev`, and a real agent, per test.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);

/// An image no registry serves: the policy must refuse it before any pull is tried.
const MISSING: &str = "registry.local/servant-policy-test-missing:1";

const HARDENED: &str = r#"
[jobs]
allowed_types = ["shell", "docker"]
allowed_users = ["nobody"]
default_user = "nobody"
allowed_images = ["registry.local/*"]
allowed_volumes = ["/data"]
"#;

fn config(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("servant.toml");
    std::fs::write(&path, text).expect("write config");
    path.to_str().expect("utf-8 path").to_string()
}

fn submit(h: &Http, id: &str, job: Value) -> Value {
    let (st, _) = h.put(&format!("/v1/kv/jobs/{id}"), job.to_string());
    assert_eq!(st, 200);
    h.wait_result(&format!("jdone_jid/jobs/{id}"), T)
}

fn assert_rejected_by(r: &Value, rule: &str, value: &str, node: &str) {
    assert_eq!(r["Status"], "rejected", "{r}");
    assert_eq!(
        r["ExitErrors"],
        format!("rejected: policy [jobs] {rule} does not allow {value:?} on node {node}"),
        "{r}"
    );
}

fn jobs_outside_the_policy_are_rejected_naming_the_rule(b: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = config(&dir, HARDENED);
    let c = Single::start(b, &["--config", &path]);
    let h = c.http();
    let node = c.node.as_str();

    let r = submit(&h, "t-exec", json!({"Type": "exec", "Args": ["id", "-un"]}));
    assert_rejected_by(&r, "allowed_types", "exec", node);

    let r = submit(&h, "t-user", json!({"Command": "id -un", "User": "root"}));
    assert_rejected_by(&r, "allowed_users", "root", node);
    assert_eq!(r["Output"], "", "{r}");

    let img = "docker.io/library/servant-policy-test-missing:1";
    let r = submit(
        &h,
        "t-image",
        json!({"Type": "docker", "Image": img, "Command": "true", "Docker": {"Pull": "never"}}),
    );
    assert_rejected_by(&r, "allowed_images", img, node);

    let r = submit(
        &h,
        "t-volume",
        json!({"Type": "docker", "Image": MISSING, "Command": "true",
               "Docker": {"Pull": "never", "Volumes": ["/data/ok:/ok:ro", "/database:/db"]}}),
    );
    assert_rejected_by(&r, "allowed_volumes", "/database", node);

    // `..` does not lead out of an allowed prefix.
    let r = submit(
        &h,
        "t-dotdot",
        json!({"Type": "docker", "Image": MISSING, "Command": "true",
               "Docker": {"Pull": "never", "Volumes": ["/data/../etc:/etc2"]}}),
    );
    assert_rejected_by(&r, "allowed_volumes", "/data/../etc", node);

    // Inside the policy, a docker job gets as far as the image: missing, never pulled.
    let r = submit(
        &h,
        "t-docker-ok",
        json!({"Type": "docker", "Image": MISSING, "Command": "true",
               "Docker": {"Pull": "never", "Volumes": ["/data/x:/x:ro"]}}),
    );
    assert_eq!(r["Status"], "rejected", "{r}");
    let e = r["ExitErrors"].as_str().unwrap_or_default();
    assert!(!e.contains("policy [jobs]"), "{r}");
    assert!(e.contains(MISSING), "{r}");

    // The agent keeps working: allowed jobs run.
    let r = submit(
        &h,
        "t-ok",
        json!({"Command": "echo fine", "User": "nobody"}),
    );
    assert_eq!(r["Status"], "succeeded", "{r}");
    assert_eq!(r["Output"], "fine\n");
}

fn a_job_without_user_runs_as_default_user(b: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = config(&dir, "[jobs]\ndefault_user = \"nobody\"\n");
    let c = Single::start(b, &["--config", &path]);
    let h = c.http();
    let r = submit(&h, "d-shell", json!({"Command": "id -un"}));
    assert_eq!(r["Status"], "succeeded", "{r}");
    assert_eq!(r["Output"], "nobody\n");
    let r = submit(&h, "d-exec", json!({"Type": "exec", "Args": ["id", "-un"]}));
    assert_eq!(r["Output"], "nobody\n", "{r}");
    // A job's own User still wins where no allowed_users narrows it.
    let r = submit(&h, "d-root", json!({"Command": "id -un", "User": "root"}));
    assert_eq!(r["Output"], "root\n", "{r}");
}

fn without_a_jobs_section_jobs_run_as_before(b: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = config(&dir, "");
    let c = Single::start(b, &["--config", &path]);
    let h = c.http();
    let me = std::process::Command::new("id")
        .arg("-un")
        .output()
        .expect("id -un");
    let r = submit(&h, "n-shell", json!({"Command": "id -un"}));
    assert_eq!(r["Status"], "succeeded", "{r}");
    assert_eq!(r["Output"], String::from_utf8_lossy(&me.stdout).as_ref());
    let r = submit(&h, "n-exec", json!({"Type": "exec", "Args": ["echo", "x"]}));
    assert_eq!(r["Output"], "x\n", "{r}");
}

/// This node's `applications` report entry for `app`, once it has one.
fn app_state(h: &Http, node: &str, app: &str) -> Option<Value> {
    let v: Value =
        serde_json::from_str(&h.kv_raw(&format!("appmgr/status/{node}/applications"))?).ok()?;
    v.get(app).filter(|s| !s.is_null()).cloned()
}

/// Apps are held to `[jobs]` too: an app outside the policy is unavailable and its
/// `last_exit` names the rule; a process app without `user` runs as `default_user`.
fn apps_outside_the_policy_are_refused_naming_the_rule(b: Backend) {
    let dir = tempfile::tempdir().expect("tempdir");
    // The apps' user must be able to write their output here.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    let path = config(&dir, HARDENED);
    let c = Single::start(b, &["--config", &path]);
    let h = c.http();
    let node = c.node.as_str();
    let who = dir.path().join("who");
    let put = |name: &str, content: Value| {
        let body = json!({"replication": 1, "content": content}).to_string();
        assert_eq!(h.put(&format!("/v1/kv/appmgr/task/{name}"), body).0, 200);
    };
    put("as-root", json!({"command": "sleep 600", "user": "root"}));
    put(
        "foreign",
        json!({"image": MISSING.replace("registry.local", "docker.io")}),
    );
    put(
        "plain",
        json!({"command": format!("id -un > {}; exec sleep 600", who.display())}),
    );
    for (app, rule, value) in [
        ("as-root", "allowed_users", "root".to_string()),
        (
            "foreign",
            "allowed_images",
            MISSING.replace("registry.local", "docker.io"),
        ),
    ] {
        let st = wait_for(&format!("{app} refused"), T, || {
            app_state(&h, node, app).filter(|s| s["last_exit"] != "")
        });
        assert_eq!(st["status"], 2, "unavailable: {st}");
        assert_eq!(
            st["last_exit"],
            format!("rejected: policy [jobs] {rule} does not allow {value:?} on node {node}"),
            "{st}"
        );
    }
    let out = wait_for("the plain app's output", T, || {
        std::fs::read_to_string(&who).ok().filter(|t| !t.is_empty())
    });
    assert_eq!(out, "nobody\n");
    for app in ["as-root", "foreign", "plain"] {
        h.delete(&format!("/v1/kv/appmgr/task/{app}"));
    }
    wait_for("the plain app stopped", T, || {
        app_state(&h, node, "plain")
            .is_none_or(|s| s["pid"] == 0)
            .then_some(())
    });
}

/// A `[jobs]` value that cannot work stops the agent at start, with the field's name.
#[test]
fn a_bad_jobs_section_is_a_config_error_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (text, field) in [
        (
            "[jobs]\nallowed_types = [\"rocket\"]\n",
            "jobs.allowed_types",
        ),
        ("[jobs]\nallowed_users = [\"app\"]\n", "jobs.default_user"),
        ("[jobs]\nallow_privileged = true\n", "jobs.allow_privileged"),
        (
            "[jobs]\nallowed_images = [\"reg/[a\"]\n",
            "jobs.allowed_images",
        ),
    ] {
        let path = config(&dir, text);
        // A guard: an agent that started after all is killed when this drops.
        let mut agent = spawn_logged(
            "servant-bad-jobs-config",
            dev_command(&format!("{}.2", subnet()), &dir.path().join("data"))
                .args(["--config", &path]),
            &dir.path().join("agent.log"),
        );
        let status = agent.wait_exit(Duration::from_secs(20));
        let err = agent.log_text();
        assert_eq!(status.and_then(|s| s.code()), Some(1), "{text}: {err}");
        assert!(err.contains(field), "{text}: {err}");
    }
}

on_both!(
    jobs_outside_the_policy_are_rejected_naming_the_rule,
    a_job_without_user_runs_as_default_user,
    without_a_jobs_section_jobs_run_as_before,
    apps_outside_the_policy_are_refused_naming_the_rule,
);
