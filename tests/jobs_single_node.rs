//! Jobs on one node: a real `consul agent -dev` and a real `servant agent`, per test.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .arg("-sS")
        .args(args)
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn readme_curl_put_jobs_and_get_result_raw(b: Backend) {
    let c = Single::start(b, &[]);
    let base = format!("http://{}", c.addr());
    // Verbatim from consul_servant's README (host and port made ours).
    curl(&[
        "-X",
        "PUT",
        "-d",
        r#"{ "Command": "echo hello world" }"#,
        &format!("{base}/v1/kv/jobs/job1"),
    ]);
    let r = wait_for("result", T, || {
        let body = curl(&[
            "-X",
            "GET",
            &format!("{base}/v1/kv/jdone_jid/jobs/job1?raw"),
        ]);
        serde_json::from_str::<Value>(&body).ok()
    });
    assert_eq!(r["Output"], "hello world\n");
    assert_eq!(r["Status"], "succeeded");
    assert_eq!(r["ExitCode"], 0);
    assert_eq!(r["ExecutionNode"], c.node.as_str());
    assert_eq!(r["Attempt"], 1);
    // The job key is gone once the result is written.
    assert_eq!(c.http().get("/v1/kv/jobs/job1").0, 404);
}

fn readme_curl_node_queue(b: Backend) {
    let c = Single::start(b, &[]);
    let base = format!("http://{}", c.addr());
    curl(&[
        "-X",
        "PUT",
        "-d",
        r#"{ "Command": "echo hello world" }"#,
        &format!("{base}/v1/kv/queues/{}/qjob", c.node),
    ]);
    let r = c
        .http()
        .wait_result(&format!("jdone_jid/queues/{}/qjob", c.node), T);
    assert_eq!(r["Output"], "hello world\n");
    // A queue of another node is not ours: it stays queued.
    curl(&[
        "-X",
        "PUT",
        "-d",
        r#"{ "Command": "true" }"#,
        &format!("{base}/v1/kv/queues/{}0/other", c.node),
    ]);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        c.http().get(&format!("/v1/kv/queues/{}0/other", c.node)).0,
        200
    );
}

fn readme_service_registration_example(b: Backend) {
    let c = Single::start(b, &[]);
    let h = c.http();
    let base = format!("http://{}", c.addr());
    // Verbatim: Port is the string "80".
    curl(&[
        "-X",
        "PUT",
        "-d",
        r#"{"Command": "docker ps", "Timeout": 3, "Services": [ { "ID": "blu3", "Name": "blu3", "Port": "80", "Check": {"TTL": "23s"}} ] }"#,
        &format!("{base}/v1/kv/jobs/61"),
    ]);
    let r = h.wait_result("jdone_jid/jobs/61", T);
    assert_ne!(r["Status"], "rejected", "{r}");
    assert_eq!(r["Services"][0]["Port"], 80);
    // The same service on a job that runs long enough to look at it.
    curl(&[
        "-X",
        "PUT",
        "-d",
        r#"{"Command": "sleep 3", "Timeout": 10, "Services": [ { "ID": "blu3", "Name": "blu3", "Port": "80", "Check": {"TTL": "23s"}} ] }"#,
        &format!("{base}/v1/kv/jobs/62"),
    ]);
    let svc = wait_for("blu3 in the catalog", T, || {
        let v = h.get_json("/v1/catalog/service/blu3")?;
        v.as_array().filter(|a| !a.is_empty()).cloned()
    });
    assert_eq!(svc[0]["ServicePort"], 80);
    h.wait_result("jdone_jid/jobs/62", T);
    wait_for("blu3 gone from the catalog", T, || {
        let v = h.get_json("/v1/catalog/service/blu3")?;
        v.as_array().filter(|a| a.is_empty()).map(|_| ())
    });
}

fn timeout_kills_grandchildren(b: Backend) {
    let c = Single::start(b, &["--kill-grace", "1s"]);
    let h = c.http();
    // A sleep length no other test uses, so we can look for leftovers.
    let marker = format!("sleep {}", 3000 + std::process::id() % 1000);
    let cmd = format!("sh -c '{marker} & {marker}'");
    h.put(
        "/v1/kv/jobs/tk",
        json!({"Command": cmd, "Timeout": "2s"}).to_string(),
    );
    wait_for("the sleeps to start", T, || {
        (procs_matching(&marker).len() >= 2).then_some(())
    });
    let r = h.wait_result("jdone_jid/jobs/tk", T);
    assert_eq!(r["Status"], "timed_out");
    assert!(r["ExitErrors"].as_str().unwrap().contains("timed out"));
    wait_for("no sleep left behind", Duration::from_secs(5), || {
        procs_matching(&marker).is_empty().then_some(())
    });
}

/// Deleting a running job's key stops it (the dashboard's stop does this with the caller's
/// token): its whole group gets SIGTERM, and its node writes a `failed` result that says so.
fn deleting_a_running_jobs_key_stops_it_with_a_result(b: Backend) {
    let c = Single::start(b, &["--kill-grace", "1s"]);
    let h = c.http();
    let marker = format!(
        "sleep {}",
        5000 + std::process::id() % 1000 * 2 + u32::from(b == Backend::Dev)
    );
    let cmd = format!("sh -c '{marker} & {marker}'");
    h.put(
        "/v1/kv/jobs/del",
        json!({"Command": cmd, "Timeout": "10m"}).to_string(),
    );
    wait_for("the sleeps to start", T, || {
        (procs_matching(&marker).len() >= 2).then_some(())
    });
    let (code, body) = h.delete("/v1/kv/jobs/del");
    assert_eq!(code, 200, "{body}");
    let r = h.wait_result("jdone_jid/jobs/del", T);
    assert_eq!(r["Status"], "failed", "{r}");
    assert!(
        r["ExitErrors"].as_str().unwrap().starts_with("stopped"),
        "{r}"
    );
    assert_eq!(r["Attempt"], 1);
    wait_for("no sleep left behind", Duration::from_secs(5), || {
        procs_matching(&marker).is_empty().then_some(())
    });
    // The agent goes on.
    h.put("/v1/kv/jobs/after", r#"{"Command":"echo after"}"#);
    assert_eq!(
        h.wait_result("jdone_jid/jobs/after", T)["Output"],
        "after\n"
    );
}

fn bad_input_gets_a_result_and_the_agent_keeps_working(b: Backend) {
    let mut c = Single::start(b, &["--output-cap", "65536"]);
    let h = c.http();
    h.put("/v1/kv/jobs/malformed", "{ \"Command\": ");
    h.put(
        "/v1/kv/jobs/wrongtype",
        r#"{"Command": "true", "NoWait": "yes"}"#,
    );
    h.put(
        "/v1/kv/jobs/unknowntype",
        r#"{"Command": "true", "Type": "rocket"}"#,
    );
    h.put(
        "/v1/kv/jobs/docker",
        r#"{"Command": "true", "Type": "docker", "Image": "x", "Docker": {"Bogus": 1}}"#,
    );
    h.put(
        "/v1/kv/jobs/big",
        r#"{"Command": "head -c 10000000 /dev/zero | tr '\\0' a; echo err >&2"}"#,
    );
    h.put("/v1/kv/jobs/with%20space", r#"{"Command": "true"}"#);
    // A key with `..` cannot travel in a URL path (it is normalised away), so write it by txn.
    let dots = json!([{"KV": {"Verb": "set", "Key": "jobs/a..b", "Value": base64(br#"{"Command": "true"}"#)}}]);
    assert_eq!(h.put("/v1/txn", dots.to_string()).0, 200);

    let expect = [
        ("malformed", "malformed job JSON"),
        ("wrongtype", "NoWait"),
        ("unknowntype", "unknown Type"),
        ("docker", "Docker: unknown key \"Bogus\""),
        ("with space", "invalid job ID"),
        ("a..b", "invalid job ID"),
    ];
    for (id, why) in expect {
        let key = format!("jdone_jid/jobs/{}", id.replace(' ', "%20"));
        let r = if id.contains("..") {
            wait_for("a..b result", T, || {
                txn_get(&h, &format!("jdone_jid/jobs/{id}"))
            })
        } else {
            h.wait_result(&key, T)
        };
        assert_eq!(r["Status"], "rejected", "{id}: {r}");
        assert!(r["ExitErrors"].as_str().unwrap().contains(why), "{id}: {r}");
    }
    let big = h.wait_result("jdone_jid/jobs/big", T);
    assert_eq!(big["Status"], "succeeded");
    assert_eq!(big["OutputTruncated"], true);
    assert_eq!(big["Output"].as_str().unwrap().len(), 65536);
    assert_eq!(big["OutputErrors"], "err\n");
    // The full output is on the node, served by `servant logs`.
    let (code, out, err) = cli(&c.addr(), &["logs", "--stream", "stdout", "big"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.len(), 10_000_000);
    // Still working.
    h.put("/v1/kv/jobs/after", r#"{"Command": "echo still here"}"#);
    assert_eq!(
        h.wait_result("jdone_jid/jobs/after", T)["Output"],
        "still here\n"
    );
    assert!(c.servant.proc.alive());
}

fn base64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn txn_get(h: &Http, key: &str) -> Option<Value> {
    let (st, body) = h.put(
        "/v1/txn",
        json!([{"KV": {"Verb": "get", "Key": key}}]).to_string(),
    );
    if st != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    let b64 = v["Results"][0]["KV"]["Value"].as_str()?;
    use base64::Engine;
    serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(b64).ok()?).ok()
}

fn cli_start_wait_show_jobs_and_aliases(b: Backend) {
    let c = Single::start(b, &[]);
    let a = c.addr();
    let tricky = r#"printf '%s|' "dq\"x" 'sq' {{.Name}} back\\slash"#;
    let (code, out, err) = cli(&a, &["start", "--wait", "-c", tricky, "tricky"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "tricky\ndq\"x|sq|{{.Name}}|back\\slash|");
    let r: Value =
        serde_json::from_str(&c.http().kv_raw("jdone_jid/jobs/tricky").unwrap()).unwrap();
    assert_eq!(r["Command"], tricky);
    // --wait exits with the job's exit code.
    let (code, _, _) = cli(&a, &["s", "--wait", "-c", "exit 7"]);
    assert_eq!(code, 7);
    // A generated ID is printed.
    let (code, out, _) = cli(&a, &["start", "-c", "sleep 3"]);
    assert_eq!(code, 0);
    let id = out.trim().to_string();
    assert_eq!(id.len(), 12);
    let running = wait_for("show says running", T, || {
        let (_, out, _) = cli(&a, &["w", &id]);
        out.contains("running").then_some(out)
    });
    assert!(running.contains(&c.node), "{running}");
    let (_, out, _) = cli(&a, &["show", "--json", "tricky"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["State"], "done");
    assert_eq!(v[0]["Result"]["Status"], "succeeded");
    let (code, out, _) = cli(&a, &["jobs"]);
    assert_eq!(code, 0);
    assert!(out.contains("jobs/tricky") && out.contains(&id), "{out}");
    // Duplicate IDs are refused while queued.
    let (code, _, err) = cli(&a, &["start", "-c", "true", &id]);
    assert_ne!(code, 0);
    assert!(err.contains("already queued"), "{err}");
    // consul_visa aliases.
    assert_eq!(cli(&a, &["kv", "put", "x/y", "v1"]).0, 0);
    assert_eq!(cli(&a, &["kv-get", "x/y"]).1, "v1\n");
    assert_eq!(cli(&a, &["kv-keys", "x/"]).1, "x/y\n");
    assert_eq!(cli(&a, &["kv-list", "x/"]).1, "x/y=v1\n");
    assert_eq!(cli(&a, &["kv-deltree", "x/"]).0, 0);
    let (code, _, err) = cli(&a, &["kv-get", "x/y"]);
    assert_eq!(code, 1);
    assert!(err.contains("key not found"), "{err}");
    assert!(cli(&a, &["node-list"]).1.contains(&c.node));
    let (code, _, err) = cli(&a, &["node-eject", "no-such-node"]);
    assert_ne!(code, 0);
    assert!(err.contains("no node named"), "{err}");
    // Errors exit non-zero with a message (consul_visa exited 0).
    let (code, _, err) = cli(&a, &["show", "missing-job"]);
    assert_eq!(code, 1);
    assert!(err.contains("no job missing-job"), "{err}");
    let (code, _, err) = cli("127.0.0.1:1", &["kv", "get", "x"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach consul"), "{err}");
}

fn job_file_and_node_flag(b: Backend) {
    let c = Single::start(b, &[]);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("job1.job");
    std::fs::write(&f, r#"{ "ID": "job1", "Command": "echo hello world" }"#).unwrap();
    let (code, out, err) = cli(&c.addr(), &["start", "--wait", f.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "job1\nhello world\n");
    let (code, out, _) = cli(
        &c.addr(),
        &["start", "--wait", "-n", &c.node, "-c", "echo on node", "j2"],
    );
    assert_eq!(code, 0);
    assert_eq!(out, "j2\non node\n");
    assert!(c
        .http()
        .kv_raw(&format!("jdone_jid/queues/{}/j2", c.node))
        .is_some());
}

fn env_dir_user_exec_and_nowait(b: Backend) {
    let c = Single::start(b, &[]);
    let h = c.http();
    h.put("/v1/kv/jobs/env", json!({"Command": "echo $GREETING; pwd; id -un", "Env": {"GREETING": "hi"}, "Dir": "/tmp", "User": "nobody"}).to_string());
    assert_eq!(
        h.wait_result("jdone_jid/jobs/env", T)["Output"],
        "hi\n/tmp\nnobody\n"
    );
    h.put(
        "/v1/kv/jobs/exec",
        json!({"Type": "exec", "Args": ["printf", "%s", "$HOME;|"]}).to_string(),
    );
    assert_eq!(h.wait_result("jdone_jid/jobs/exec", T)["Output"], "$HOME;|");
    h.put(
        "/v1/kv/jobs/baduser",
        json!({"Command": "true", "User": "no-such-user-x"}).to_string(),
    );
    let r = h.wait_result("jdone_jid/jobs/baduser", T);
    assert_eq!(r["Status"], "failed");
    assert!(
        r["OutputErrors"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{r}"
    );
    h.put(
        "/v1/kv/jobs/baddir",
        json!({"Command": "true", "Dir": "/no/such/dir"}).to_string(),
    );
    let r = h.wait_result("jdone_jid/jobs/baddir", T);
    assert!(
        r["ExitErrors"].as_str().unwrap().contains("/no/such/dir"),
        "{r}"
    );
    // NoWait: first `started` with a pid, then completed when the process exits.
    h.put(
        "/v1/kv/jobs/bg",
        json!({"Command": "sleep 2; echo done", "NoWait": true}).to_string(),
    );
    let started = wait_for("started result", T, || {
        let v: Value = serde_json::from_str(&h.kv_raw("jdone_jid/jobs/bg")?).ok()?;
        (v["Status"] == "started").then_some(v)
    });
    assert!(started["Pid"].as_u64().unwrap() > 1);
    let done = h.wait_result("jdone_jid/jobs/bg", T);
    assert_eq!(done["Status"], "succeeded");
    assert_eq!(done["Output"], "done\n");
}

#[test]
fn sigterm_lets_jobs_finish_then_reports_the_rest() {
    let c = ConsulDev::start();
    let mut s = c
        .servant(&["--shutdown-grace", "2s", "--kill-grace", "1s"])
        .ready();
    let h = c.http();
    h.put("/v1/kv/jobs/short", r#"{"Command": "sleep 1; echo short"}"#);
    h.put(
        "/v1/kv/jobs/long",
        r#"{"Command": "sleep 60", "Timeout": 120}"#,
    );
    wait_for("both running", T, || {
        let a = h.get_json("/v1/kv/jobs/short")?;
        let b = h.get_json("/v1/kv/jobs/long")?;
        (a[0]["Session"].is_string() && b[0]["Session"].is_string()).then_some(())
    });
    s.proc.signal(nix::sys::signal::Signal::SIGTERM);
    // Jobs queued after the signal are not taken.
    std::thread::sleep(Duration::from_millis(300));
    h.put("/v1/kv/jobs/late", r#"{"Command": "true"}"#);
    let st = s
        .proc
        .wait_exit(Duration::from_secs(20))
        .expect("agent exits");
    assert!(st.success(), "{}", s.proc.log_text());
    assert_eq!(
        h.wait_result("jdone_jid/jobs/short", T)["Output"],
        "short\n"
    );
    let long = h.wait_result("jdone_jid/jobs/long", T);
    assert_eq!(long["Status"], "failed");
    assert!(
        long["ExitErrors"]
            .as_str()
            .unwrap()
            .contains("stopped before the job finished"),
        "{long}"
    );
    assert_eq!(
        h.get("/v1/kv/jobs/late").0,
        200,
        "a late job must stay queued"
    );
    // The node session is destroyed.
    let sessions = h.get_json(&format!("/v1/session/node/{}", c.node)).unwrap();
    assert_eq!(sessions.as_array().unwrap().len(), 0, "{sessions}");
}

fn lost_session_fences_running_jobs_and_the_agent_recovers(b: Backend) {
    // A short lock-delay, so the claim after the new session comes soon; not 0 s, whose 500 ms
    // fence a loaded machine can miss (a job fenced by a late confirmation is not run again).
    let mut c = Single::start(b, &["--lock-delay", "4s", "--kill-grace", "1s"]);
    let h = c.http();
    // One sleep length per backend: both run at once in this test binary.
    let marker = format!(
        "sleep {}",
        40_000 + (std::process::id() % 1000) * 2 + u32::from(b == Backend::Dev)
    );
    // A sleep in the background too: whatever a job leaves in its group ends with it when the
    // command exits (issue 10), and a fenced job's whole group is killed at once, background
    // included.
    h.put(
        "/v1/kv/jobs/fenced",
        json!({"Command": format!("{marker} & {marker}"), "Timeout": 120}).to_string(),
    );
    let sid = wait_for("claimed", T, || {
        h.get_json("/v1/kv/jobs/fenced")?[0]["Session"]
            .as_str()
            .map(str::to_string)
    });
    // Both sleeps running (the shell's command line names them too: it is in the list).
    let first = wait_for("job running", T, || {
        let all = procs_matching(&marker);
        let sleeps = all
            .iter()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| c.replace('\0', " ").starts_with(&marker))
            })
            .count();
        (sleeps == 2).then_some(all)
    });
    assert_eq!(h.put(&format!("/v1/session/destroy/{sid}"), "").0, 200);
    wait_for("fenced job killed", T, || {
        first
            .iter()
            .all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
            .then_some(())
    });
    // The agent made a new session and claimed the job again (its lock was released): that is
    // attempt 2, and with Retries 0 the job is reported lost instead of run twice.
    let r = h.wait_result("jdone_jid/jobs/fenced", T);
    assert_eq!(r["Status"], "lost", "{r}");
    // The result names the attempt that ran; attempt 2 was refused.
    assert_eq!(r["Attempt"], 1);
    // One jobs session, a new one (the apps session is the node's other session).
    let all = h.get_json(&format!("/v1/session/node/{}", c.node)).unwrap();
    let holders: Vec<&Value> = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["Name"] == "servant")
        .collect();
    assert_eq!(holders.len(), 1, "{all}");
    assert_ne!(holders[0]["ID"], sid.as_str());
    h.put("/v1/kv/jobs/next", r#"{"Command": "echo ok"}"#);
    assert_eq!(h.wait_result("jdone_jid/jobs/next", T)["Output"], "ok\n");
    assert!(c.servant.proc.alive());
}

/// consul_servant waited on a key's ModifyIndex instead of X-Consul-Index and spun forever after
/// its first job. An idle agent must use almost no CPU after jobs come and go.
fn regression_busy_loop_after_first_job(b: Backend) {
    let c = Single::start(b, &[]);
    let h = c.http();
    for i in 0..3 {
        h.put(&format!("/v1/kv/jobs/b{i}"), r#"{"Command": "true"}"#);
        h.wait_result(&format!("jdone_jid/jobs/b{i}"), T);
    }
    let ticks = || cpu_ticks(c.servant.proc.pid());
    let before = ticks();
    std::thread::sleep(Duration::from_secs(3));
    let used = ticks() - before;
    // A busy loop burns ~300 ticks in 3 s; an idle agent a handful.
    assert!(used < 60, "idle agent used {used} clock ticks in 3 s");
}

/// A finished key is kept out of the claims while a listing from before its deletion may still
/// show it; a job queued again under the same ID at once must still run each time. Here a long
/// job holds one of two slots, so while the other runs the node is saturated and its next
/// listing waits 100 ms: the job is queued again within that wait, and the listing that shows
/// it again is the first after its deletion. A view that took that listing for a stale one
/// would leave the job queued for good.
fn a_job_queued_again_under_its_id_as_it_ends_runs_each_time(b: Backend) {
    let c = Single::start(b, &["--max-parallel", "2"]);
    let h = c.http();
    h.put(
        "/v1/kv/jobs/long",
        r#"{"Command": "sleep 120", "Timeout": 300}"#,
    );
    wait_for("the long job running", T, || {
        h.get_json("/v1/kv/jobs/long")?[0]["Session"]
            .as_str()
            .map(drop)
    });
    for i in 0..10 {
        let cmd = format!("echo run-{i}");
        h.put("/v1/kv/jobs/again", json!({ "Command": cmd }).to_string());
        let want = format!("run-{i}\n");
        let end = std::time::Instant::now() + T;
        // Polled every millisecond, so the next run is queued well within the 100 ms.
        loop {
            let out = h
                .kv_raw("jdone_jid/jobs/again")
                .and_then(|r| serde_json::from_str::<Value>(&r).ok())
                .map(|v| v["Output"].clone());
            if out.as_ref().and_then(Value::as_str) == Some(want.as_str()) {
                break;
            }
            assert!(
                std::time::Instant::now() < end,
                "run {i} never ran: {out:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    assert_eq!(h.delete("/v1/kv/jobs/long").0, 200);
}

#[test]
fn bad_config_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(&f, "max_paralel = 3\n").unwrap();
    let out = Command::new(servant_bin())
        .args(["agent", "--config", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("max_paralel") && err.contains("c.toml"),
        "{err}"
    );
}

fn old_results_are_cleaned_up(b: Backend) {
    let c = Single::start(b, &["--result-max-age", "2s", "--result-gc-interval", "1s"]);
    let h = c.http();
    h.put("/v1/kv/jobs/old", r#"{"Command": "true"}"#);
    h.wait_result("jdone_jid/jobs/old", T);
    // A result of a node that no longer exists is cleaned by a live node.
    let orphan = json!({"ID": "orphan", "Status": "succeeded", "ExecutionNode": "gone-node", "EndTime": 1_000_000_000i64});
    h.put("/v1/kv/jdone_jid/jobs/orphan", orphan.to_string());
    // Something that is not a result is left alone.
    h.put("/v1/kv/jdone_jid/jobs/notes", "not json");
    wait_for("old results deleted", T, || {
        (h.get("/v1/kv/jdone_jid/jobs/old").0 == 404
            && h.get("/v1/kv/jdone_jid/jobs/orphan").0 == 404)
            .then_some(())
    });
    assert_eq!(h.get("/v1/kv/jdone_jid/jobs/notes").0, 200);
}

/// `servant agent --consul-dev` launches Consul, restarts it if it dies, and stops it on exit.
#[test]
fn launched_consul_is_supervised_and_stopped_with_the_agent() {
    let ip = format!("{}.2", subnet());
    let bin = consul_bin().display().to_string();
    let mut s = Servant::launch(
        &ip,
        &[
            "--consul-dev",
            "--bind",
            &ip,
            "--client",
            &ip,
            "--node",
            "launched",
            "--consul-bin",
            &bin,
            "--lock-delay",
            "0s",
        ],
    )
    .ready();
    let h = Http::new(&format!("{ip}:8500"));
    h.put("/v1/kv/jobs/l1", r#"{"Command": "echo one"}"#);
    assert_eq!(h.wait_result("jdone_jid/jobs/l1", T)["Output"], "one\n");
    let pid_file = s.data.path().join("consul.pid");
    let first: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // A new Consul comes up (a dev agent starts empty), the agent makes a new session and works.
    let second = wait_for("consul restarted", Duration::from_secs(60), || {
        let p: i32 = std::fs::read_to_string(&pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        (p != first && std::path::Path::new(&format!("/proc/{p}")).exists()).then_some(p)
    });
    wait_for("job after restart", Duration::from_secs(60), || {
        let (st, _) = h.try_get("/v1/status/leader")?;
        if st != 200 {
            return None;
        }
        let _ = h.try_put("/v1/kv/jobs/l2", r#"{"Command": "echo two"}"#)?;
        let v: Value = serde_json::from_str(&h.kv_raw("jdone_jid/jobs/l2")?).ok()?;
        (v["Output"] == "two\n").then_some(())
    });
    assert!(s.proc.alive());
    s.proc.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(s
        .proc
        .wait_exit(Duration::from_secs(30))
        .expect("agent exits")
        .success());
    wait_for("consul stopped", Duration::from_secs(15), || {
        (!std::path::Path::new(&format!("/proc/{second}/cmdline")).exists()
            || std::fs::read(format!("/proc/{second}/cmdline"))
                .map(|c| c.is_empty())
                .unwrap_or(true))
        .then_some(())
    });
}

/// On timeout the command gets SIGTERM and its grace period; the shim does not die first.
fn timeout_gives_the_command_its_sigterm_grace(b: Backend) {
    let c = Single::start(b, &["--kill-grace", "5s"]);
    let h = c.http();
    h.put("/v1/kv/jobs/trap", json!({"Command": "trap 'sleep 1; echo cleaned up; exit 0' TERM; sleep 30 & wait", "Timeout": "1s"}).to_string());
    let r = h.wait_result("jdone_jid/jobs/trap", T);
    assert_eq!(r["Status"], "timed_out", "{r}");
    assert_eq!(r["Output"], "cleaned up\n", "{r}");
}

fn oversized_job_is_rejected_without_a_claim(b: Backend) {
    let c = Single::start(b, &[]);
    let h = c.http();
    let big = json!({"Command": format!("echo {}", "x".repeat(400 * 1024))}).to_string();
    assert_eq!(h.put("/v1/kv/jobs/huge", big).0, 200);
    let r = h.wait_result("jdone_jid/jobs/huge", T);
    assert_eq!(r["Status"], "rejected");
    assert!(r["ExitErrors"].as_str().unwrap().contains("at most"), "{r}");
    assert_eq!(h.get("/v1/kv/jobs/huge").0, 404);
}

#[test]
fn services_left_by_a_killed_agent_are_deregistered_at_start() {
    let c = ConsulDev::start();
    let h = c.http();
    let reg = json!({"ID": "left1", "Name": "left", "Meta": {"servant_job": "jobs/x", "servant_prefix": ""}});
    assert_eq!(h.put("/v1/agent/service/register", reg.to_string()).0, 200);
    let other = json!({"ID": "mine", "Name": "mine"});
    assert_eq!(
        h.put("/v1/agent/service/register", other.to_string()).0,
        200
    );
    let _s = c.servant(&[]).ready();
    // The worker clears them as it starts, which may finish just after "ready" is logged.
    let services = wait_for("the leftover service gone", Duration::from_secs(15), || {
        h.get_json("/v1/agent/services")
            .filter(|s| s.get("left1").is_none())
    });
    assert!(
        services.get("mine").is_some(),
        "services the agent did not make stay"
    );
}

/// If Consul stops answering, the agent cannot know whether its session is still valid; it
/// kills its jobs before the lock-delay could let another node start them.
#[test]
fn unconfirmed_session_fences_jobs_before_the_lock_delay() {
    let c = ConsulDev::start();
    let _s = c.servant(&["--lock-delay", "4s"]).ready();
    let h = c.http();
    let marker = format!("sleep {}", 6000 + std::process::id() % 1000);
    h.put(
        "/v1/kv/jobs/paused",
        json!({"Command": marker, "Timeout": 120}).to_string(),
    );
    let pids = wait_for("job running", T, || {
        Some(procs_matching(&marker)).filter(|p| !p.is_empty())
    });
    c.proc.signal(nix::sys::signal::Signal::SIGSTOP);
    let t0 = std::time::Instant::now();
    wait_for(
        "job killed while consul is paused",
        Duration::from_secs(15),
        || {
            pids.iter()
                .all(|p| {
                    !std::path::Path::new(&format!("/proc/{p}/cmdline")).exists()
                        || std::fs::read(format!("/proc/{p}/cmdline"))
                            .map(|c| c.is_empty())
                            .unwrap_or(true)
                })
                .then_some(())
        },
    );
    let fenced_after = t0.elapsed();
    c.proc.signal(nix::sys::signal::Signal::SIGCONT);
    // The abandoned session is destroyed, its lock released, and the next claim is attempt 2:
    // with Retries 0 the job is reported lost, never run twice.
    let r = h.wait_result("jdone_jid/jobs/paused", T);
    assert_eq!(r["Status"], "lost", "{r}");
    assert!(
        fenced_after < Duration::from_secs(4),
        "fenced after {fenced_after:?}, not before the 4 s lock-delay"
    );
}

/// A key held by this node's session with no task behind it (a claim whose answer was lost) is
/// released and run again rather than left locked forever.
///
/// The default lock-delay: releasing a key does not start one. (A lock-delay of 0 s made the
/// session's fence 500 ms, shorter than a loaded CI machine takes to confirm it: the job was
/// killed at its fence.)
fn key_held_by_our_session_without_a_task_is_released(b: Backend) {
    let c = Single::start(b, &[]);
    let h = c.http();
    let sid = wait_for("agent session", T, || {
        let v = h.get_json(&format!("/v1/session/node/{}", c.node))?;
        v.as_array()?
            .iter()
            .find(|s| s["Name"] == "servant")
            .and_then(|s| s["ID"].as_str())
            .map(str::to_string)
    });
    // Take the lock in the agent's name, as a claim whose reply was lost would have.
    let (st, body) = h.put(
        &format!("/v1/kv/jobs/orphan?acquire={sid}"),
        r#"{"Command": "echo rerun", "Retries": 1}"#,
    );
    assert_eq!((st, body.trim()), (200, "true"));
    let r = h.wait_result("jdone_jid/jobs/orphan", T);
    assert_eq!(r["Status"], "succeeded", "{r}");
    assert_eq!(r["Output"], "rerun\n");
    assert_eq!(r["Attempt"], 2);
}

/// A process's parent and short name, from /proc.
fn parent_and_name(pid: i32) -> Option<(i32, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_string();
    Some((rest.split_whitespace().nth(1)?.parse().ok()?, name))
}

/// Issue 15: each job's shim used to be an exec of the whole servant binary, a third of a
/// trivial job's CPU. It is now forked by the agent's one spawner, and kept for the next job
/// once its own ended (a fork and an exit per job were a fifth of the machine's CPU). A
/// spawner killed while a job runs costs nothing but itself: the job still gets its own exit
/// code (its shim reports it), the idle shims end, and the next job starts another spawner. The
/// spawner ends with its agent.
fn jobs_are_forked_by_one_spawner_that_ends_with_the_agent(b: Backend) {
    let c = Single::start(b, &[]);
    let h = c.http();
    let agent = c.servant.proc.pid();
    let dir = tempfile::tempdir().unwrap();
    let (ppid, flag) = (dir.path().join("ppid"), dir.path().join("go"));
    let cmd = format!(
        "echo $PPID > {}; while [ ! -e {} ]; do sleep 0.05; done; exit 7",
        ppid.display(),
        flag.display()
    );
    h.put(
        "/v1/kv/jobs/forked",
        json!({"Command": cmd, "Timeout": 120}).to_string(),
    );
    let shim: i32 = wait_for("the job's shim", T, || {
        std::fs::read_to_string(&ppid).ok()?.trim().parse().ok()
    });
    // (A zombie is not running: nobody may reap it once its parent is gone.)
    let running = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
        })
    };
    let (spawner, name) = parent_and_name(shim).expect("the shim runs");
    assert_eq!(name, "servant-shim");
    let (spawner_parent, _) = parent_and_name(spawner).expect("the spawner runs");
    assert_eq!(spawner_parent, agent, "the spawner is the agent's child");
    let cmdline = std::fs::read(format!("/proc/{spawner}/cmdline")).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("__spawner"),
        "{cmdline:?}"
    );
    // The shim's parent, seen from a job: the same spawner serves every job.
    let parent_of_shim = r#"awk '{print $4}' /proc/$PPID/stat"#;
    let shim_and_parent = r#"echo $PPID $(awk '{print $4}' /proc/$PPID/stat)"#;
    h.put(
        "/v1/kv/jobs/second",
        json!({ "Command": shim_and_parent }).to_string(),
    );
    let r = h.wait_result("jdone_jid/jobs/second", T);
    let pids = |r: &Value| -> Vec<i32> {
        r["Output"]
            .as_str()
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    let idle_shim = pids(&r)[0];
    assert_ne!(idle_shim, shim, "the first job's shim is busy: {r}");
    assert_eq!(pids(&r)[1], spawner, "{r}");
    // Regression: an idle shim kept the last job's log files open (a removed log's space is
    // not freed while a descriptor holds it).
    let data = c.servant.data.path().canonicalize().unwrap();
    let held = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(format!("/proc/{idle_shim}/fd"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| std::fs::read_link(e.path()).ok())
                    .filter(|p| p.starts_with(&data))
                    .collect()
            })
            .unwrap_or_default()
    };
    wait_for(
        "the idle shim holds no job file",
        Duration::from_secs(5),
        || held().is_empty().then_some(()),
    );
    // A SIGTERM (a service manager stopping the agent's whole cgroup) does not end it: it must
    // report the ends of the tasks the agent then stops. Nor does it reach the jobs it forks
    // held: their commands keep the default disposition.
    // The same holds for an idle shim, which then takes the next job.
    for pid in [spawner, idle_shim] {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }
    h.put(
        "/v1/kv/jobs/termed",
        json!({ "Command": shim_and_parent }).to_string(),
    );
    let r = h.wait_result("jdone_jid/jobs/termed", T);
    assert_eq!(
        pids(&r),
        [idle_shim, spawner],
        "the idle shim took the job, under the same spawner: {r}"
    );
    // The masks a command starts with, read by the command itself (an exec job: a shell clears
    // the mask of what it forks, so a `grep` under `sh` showed none blocked while the shell
    // itself kept SIGTERM blocked and never ran its TERM trap).
    h.put(
        "/v1/kv/jobs/masks",
        json!({ "Type": "exec", "Args": ["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"] })
            .to_string(),
    );
    let r = h.wait_result("jdone_jid/jobs/masks", T);
    let out = r["Output"].as_str().unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{r}");
    let mask = |l: &str| u64::from_str_radix(l.split_whitespace().nth(1).unwrap(), 16).unwrap();
    // SIGHUP, SIGINT and SIGTERM: bits 0, 1 and 14.
    let stop_signals = 1 | 2 | (1 << 14);
    assert_eq!(mask(lines[0]), 0, "nothing blocked: {r}");
    assert_eq!(mask(lines[1]) & stop_signals, 0, "nothing ignored: {r}");

    // The spawner dies while the first job runs: the job ends with its own code all the same,
    // and the idle shim ends.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(spawner),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    std::fs::write(&flag, "").unwrap();
    let r = h.wait_result("jdone_jid/jobs/forked", T);
    assert_eq!(
        (&r["Status"], &r["ExitCode"]),
        (&json!("failed"), &json!(7)),
        "{r}"
    );
    wait_for("the idle shim gone with its spawner", T, || {
        (!running(idle_shim)).then_some(())
    });
    // The next job starts another spawner.
    h.put(
        "/v1/kv/jobs/third",
        json!({ "Command": parent_of_shim }).to_string(),
    );
    let r = h.wait_result("jdone_jid/jobs/third", T);
    let second: i32 = r["Output"].as_str().unwrap().trim().parse().unwrap();
    assert_ne!(second, spawner);
    assert_eq!(parent_and_name(second).map(|p| p.0), Some(agent));

    // The spawner goes with its agent, even a SIGKILLed one.
    c.servant.proc.signal(nix::sys::signal::Signal::SIGKILL);
    wait_for("the spawner gone", T, || (!running(second)).then_some(()));
    drop(c);
}

/// A process a job leaves behind outside its process group (a `setsid` child, a daemon) was
/// adopted by PID 1 when the job's shell ended, and under a PID 1 that reaps nothing (a
/// container's, this sandbox's) it stayed a zombie once it ended. The spawner is now a child
/// subreaper: it adopts such a process and reaps it.
#[test]
fn regression_a_process_a_job_leaves_behind_is_adopted_and_reaped_by_the_spawner() {
    let c = Single::start(Backend::Dev, &[]);
    let h = c.http();
    let dir = tempfile::tempdir().unwrap();
    let (flag, ready) = (dir.path().join("go"), dir.path().join("ready"));
    // The spawner (the shim's parent), then a child in a session of its own that waits for the
    // flag (30 s at most, so a failed test leaves nothing behind for long). The job ends only
    // once the child is in its session (it wrote `ready` after setsid): until then it is in
    // the job's group, and what is left there when the job ends is stopped, as it should be.
    let cmd = format!(
        "awk '{{print $4}}' /proc/$PPID/stat; \
         setsid sh -c 'touch {r}; for i in $(seq 600); do [ -e {f} ] && exit 0; sleep 0.05; done' \
         >/dev/null 2>&1 & echo $!; \
         for i in $(seq 600); do [ -e {r} ] && exit 0; sleep 0.05; done; exit 1",
        r = ready.display(),
        f = flag.display()
    );
    h.put("/v1/kv/jobs/leaver", json!({ "Command": cmd }).to_string());
    let r = h.wait_result("jdone_jid/jobs/leaver", T);
    let pids: Vec<i32> = r["Output"]
        .as_str()
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert_eq!(pids.len(), 2, "{r}");
    assert_eq!(
        r["ExitCode"], 0,
        "the left process reached its session: {r}"
    );
    let (spawner, left) = (pids[0], pids[1]);
    assert_eq!(
        parent_and_name(left).map(|p| p.0),
        Some(spawner),
        "the process the job left is the spawner's now"
    );
    std::fs::write(&flag, "").unwrap();
    wait_for("the left process reaped, not a zombie", T, || {
        (!std::path::Path::new(&format!("/proc/{left}")).exists()).then_some(())
    });
}

/// Voluntary context switches of every thread of `pid`: how often it went to sleep.
fn wakeups(pid: i32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

/// The shim looked at its fence deadline every 20 ms, 50 wake-ups a second for each running
/// job and app. It now sleeps on a CLOCK_BOOTTIME timer set to the deadline and on its lease,
/// and wakes for nothing else (the kill at the deadline is tested by the fencing tests).
#[test]
fn regression_a_shim_does_not_wake_while_its_job_runs() {
    let c = Single::start(Backend::Dev, &[]);
    let h = c.http();
    let dir = tempfile::tempdir().unwrap();
    let ppid = dir.path().join("ppid");
    let cmd = format!("echo $PPID > {}; sleep 120", ppid.display());
    h.put(
        "/v1/kv/jobs/idle",
        json!({"Command": cmd, "Timeout": 300}).to_string(),
    );
    let shim: i32 = wait_for("the job's shim", T, || {
        std::fs::read_to_string(&ppid).ok()?.trim().parse().ok()
    });
    std::thread::sleep(Duration::from_millis(200));
    let before = wakeups(shim);
    std::thread::sleep(Duration::from_secs(2));
    let woke = wakeups(shim) - before;
    // A fence line now and then from the agent's session confirmations; 100 with the old poll.
    assert!(woke <= 10, "the shim woke {woke} times in 2 s");
    assert_eq!(h.delete("/v1/kv/jobs/idle").0, 200);
    let r = h.wait_result("jdone_jid/jobs/idle", T);
    assert_ne!(r["Status"], "succeeded", "{r}");
}

on_both!(
    readme_curl_put_jobs_and_get_result_raw,
    readme_curl_node_queue,
    readme_service_registration_example,
    timeout_kills_grandchildren,
    deleting_a_running_jobs_key_stops_it_with_a_result,
    bad_input_gets_a_result_and_the_agent_keeps_working,
    cli_start_wait_show_jobs_and_aliases,
    job_file_and_node_flag,
    env_dir_user_exec_and_nowait,
    lost_session_fences_running_jobs_and_the_agent_recovers,
    regression_busy_loop_after_first_job,
    old_results_are_cleaned_up,
    timeout_gives_the_command_its_sigterm_grace,
    oversized_job_is_rejected_without_a_claim,
    key_held_by_our_session_without_a_task_is_released,
    jobs_are_forked_by_one_spawner_that_ends_with_the_agent,
    a_job_queued_again_under_its_id_as_it_ends_runs_each_time,
);

/// Two agents on one node serving two namespaces (`kv_prefix`) registered the same service ID,
/// `servant-<node>`: the second replaced the first's registration, and when it stopped it
/// deregistered the only one left, so the first agent vanished from the live set and from
/// `servant logs` while it ran.
#[test]
fn regression_two_namespaces_on_one_node_keep_their_own_service() {
    let c = ConsulDev::start();
    let h = c.http();
    // What an agent of the team's namespace from before left when it was killed: the new one
    // removes it.
    let legacy = json!({"ID": format!("servant-{}", c.node), "Name": "servant", "Port": 1,
        "Meta": {"kv_prefix": "team-b"}});
    assert_eq!(
        h.put("/v1/agent/service/register", legacy.to_string()).0,
        200
    );
    let team = c.servant(&["--kv-prefix", "team-b"]).ready();
    let ids = |h: &Http| -> Vec<(String, String)> {
        let v = h.get_json("/v1/agent/services").unwrap_or_default();
        let mut out: Vec<(String, String)> = v
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(_, s)| s["Service"] == "servant")
                    .map(|(id, s)| {
                        (
                            id.clone(),
                            s["Meta"]["kv_prefix"].as_str().unwrap_or("").into(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    };
    wait_for("the legacy registration replaced", T, || {
        (ids(&h) == vec![(format!("servant-{}:team-b", c.node), "team-b".to_string())])
            .then_some(())
    });
    let plain = c.servant(&[]).ready();
    let both = wait_for("both registrations", T, || {
        let v = ids(&h);
        (v.len() == 2).then_some(v)
    });
    assert_eq!(
        both,
        vec![
            (format!("servant-{}", c.node), String::new()),
            (format!("servant-{}:team-b", c.node), "team-b".to_string()),
        ]
    );
    h.put("/v1/kv/team-b/jobs/t1", r#"{"Command": "echo team"}"#);
    assert_eq!(
        h.wait_result("team-b/jdone_jid/jobs/t1", T)["Output"],
        "team\n"
    );
    // A clean stop deregisters the agent's own service, and only it.
    team.proc.signal(nix::sys::signal::Signal::SIGTERM);
    wait_for("the team agent's registration gone", T, || {
        (ids(&h).len() == 1).then_some(())
    });
    assert_eq!(
        ids(&h),
        vec![(format!("servant-{}", c.node), String::new())]
    );
    h.put("/v1/kv/jobs/p1", r#"{"Command": "echo plain"}"#);
    assert_eq!(h.wait_result("jdone_jid/jobs/p1", T)["Output"], "plain\n");
    drop(plain);
}
