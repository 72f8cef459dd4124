//! Secrets from KV for jobs (issue 16): `EnvFromKV` sets variables from KV keys at run time, on
//! the node that runs the job. The values reach the process and nothing else: not the result,
//! not `servant logs` or the agent API's `/v1/logs` (during the run or after), not the job's
//! log files, not the agent's own log. A missing key fails the job before it starts.
//! A real `consul agent -dev` or `servant agent -dev`, and a real agent, per test.

mod common;

use std::path::Path;
use std::time::Duration;

use common::docker::ImageLab;
use common::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);

/// A value with regex characters in it, unique per test process.
fn secret(tag: &str) -> String {
    format!("s3cr3t-{tag}-{}.*$(x|y)", std::process::id())
}

fn put_secret(h: &Http, key: &str, value: &str) {
    let (st, _) = h.put(&format!("/v1/kv/{key}"), value.to_string());
    assert_eq!(st, 200);
}

fn submit(h: &Http, id: &str, job: Value) {
    let (st, _) = h.put(&format!("/v1/kv/jobs/{id}"), job.to_string());
    assert_eq!(st, 200);
}

/// Every job log file the agent keeps, with its text.
fn job_log_files(c: &Single) -> Vec<(String, String)> {
    let dir = c.servant.data.path().join("logs");
    std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            (
                e.path().display().to_string(),
                String::from_utf8_lossy(&std::fs::read(e.path()).unwrap_or_default()).into_owned(),
            )
        })
        .collect()
}

/// What the agent API and `servant logs` serve of job `id`: (API body, CLI stdout + stderr).
fn served_logs(c: &Single, api: &str, id: &str) -> (String, String) {
    let (st, body) = Http::new(api).get(&format!("/v1/logs?key=jobs/{id}"));
    assert_eq!(st, 200, "{body}");
    let (code, out, err) = cli(&c.addr(), &["logs", id]);
    assert_eq!(code, 0, "{out}{err}");
    (body, format!("{out}{err}"))
}

/// `value` is in none of `what`, nor the agent's log, nor (once the job ended: `ended`) the job
/// log files on disk, which hold the output as written until then.
fn assert_nowhere(c: &Single, value: &str, ended: bool, what: &[(&str, &str)]) {
    for (name, text) in what {
        assert!(!text.contains(value), "the secret is in {name}: {text}");
    }
    let agent_log = c.servant.proc.log_text();
    assert!(
        !agent_log.contains(value),
        "the secret is in the agent's log:\n{agent_log}"
    );
    for (path, text) in job_log_files(c).into_iter().filter(|_| ended) {
        assert!(!text.contains(value), "the secret is in {path}: {text}");
    }
}

/// The first `Live` output of the dashboard's job view (`/v1/stream?view=job`) that shows the
/// job's stdout, as JSON text.
fn dashboard_live(api: &str, key: &str) -> String {
    let resp = reqwest::blocking::Client::new()
        .get(format!("http://{api}/v1/stream?view=job&key={key}"))
        .send()
        .expect("stream");
    assert_eq!(resp.status(), 200);
    let rx = sse_events(resp);
    loop {
        let ev: Value =
            serde_json::from_str(&rx.recv_timeout(T).expect("a view event")).expect("json");
        if ev["Live"]["Stdout"].as_str().is_some_and(|o| !o.is_empty()) {
            return ev["Live"].to_string();
        }
    }
}

fn a_secret_reaches_the_process_and_nothing_else(b: Backend) {
    let c = Single::start(b, &[]);
    let h = c.http();
    let api = servant_api(&h);
    let value = secret("done");
    put_secret(&h, "secret/db/token", &value);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("seen");
    submit(
        &h,
        "sec1",
        json!({
            "Command": format!(
                "echo \"token: $SECRET.\"; printf %s \"$SECRET\" >&2; printf %s \"$SECRET\" > {}",
                file.display()
            ),
            // A plain KV path; a leading slash is the same key.
            "EnvFromKV": {"SECRET": "/secret/db/token"},
        }),
    );
    let r = h.wait_result("jdone_jid/jobs/sec1", T);
    assert_eq!(r["Status"], "succeeded", "{r}");
    // The CLI's flag, with `--wait` printing the output.
    let (code, out, err) = cli(
        &c.addr(),
        &[
            "start",
            "--wait",
            "--env-from-kv",
            "SECRET=secret/db/token",
            "-c",
            "echo \"cli: $SECRET\"",
            "sec1cli",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "sec1cli\ncli: [secret SECRET]\n", "{err}");
    // The process had it.
    assert_eq!(std::fs::read_to_string(&file).expect("seen"), value);
    // The result says where it was, never what.
    assert_eq!(r["Output"], "token: [secret SECRET].\n", "{r}");
    assert_eq!(r["OutputErrors"], "[secret SECRET]", "{r}");
    let raw = h.kv_raw("jdone_jid/jobs/sec1").expect("result");
    let (api_body, cli_out) = served_logs(&c, &api, "sec1");
    assert!(api_body.contains("token: [secret SECRET]."), "{api_body}");
    assert!(cli_out.contains("[secret SECRET]"), "{cli_out}");
    assert_nowhere(
        &c,
        &value,
        true,
        &[
            ("the result", &raw),
            ("/v1/logs", &api_body),
            ("servant logs", &cli_out),
        ],
    );
}

fn a_running_jobs_log_is_redacted_as_it_is_served(b: Backend) {
    let c = Single::start(b, &[]);
    let h = c.http();
    let api = servant_api(&h);
    let value = secret("running");
    put_secret(&h, "app/pass", &value);
    let dir = tempfile::tempdir().expect("tempdir");
    let flag = dir.path().join("go");
    submit(
        &h,
        "sec2",
        json!({
            // The secret, then its first bytes only (a value being written, as far as a reader
            // can tell), then a wait for the test.
            "Command": format!(
                "echo \"pass=$SECRET\"; printf 'tail=%s' \"${{SECRET%????}}\" >&2; \
                 while [ ! -e {} ]; do sleep 0.1; done; echo end",
                flag.display()
            ),
            "EnvFromKV": {"SECRET": "app/pass"},
            "Timeout": "60s",
        }),
    );
    let prefix = &value[..value.len() - 4];
    let (api_body, cli_out) = wait_for("the running job's log", T, || {
        let (st, body) = Http::new(&api).get("/v1/logs?key=jobs/sec2");
        (st == 200 && body.contains("pass=") && body.contains("tail="))
            .then(|| served_logs(&c, &api, "sec2"))
    });
    assert!(h.kv_raw("jdone_jid/jobs/sec2").is_none(), "still running");
    // Until the job ends its log files hold the value: the agent's user alone reads them.
    for ext in ["out", "err"] {
        let p = c
            .servant
            .data
            .path()
            .join(format!("logs/jobs%2Fsec2.{ext}"));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&p).expect("log file").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{}", p.display());
    }
    assert!(api_body.contains("pass=[secret SECRET]\n"), "{api_body}");
    assert!(cli_out.contains("pass=[secret SECRET]"), "{cli_out}");
    // The tail may be the start of the value: not shown while the job runs.
    assert!(!api_body.contains(prefix), "{api_body}");
    assert!(!cli_out.contains(prefix), "{cli_out}");
    assert_nowhere(
        &c,
        &value,
        false,
        &[("/v1/logs", &api_body), ("servant logs", &cli_out)],
    );
    // The dashboard's job page follows the running job's log.
    let live = dashboard_live(&api, "jobs/sec2");
    assert!(live.contains("pass=[secret SECRET]"), "{live}");
    assert!(!live.contains(prefix), "{live}");
    assert_nowhere(&c, &value, false, &[("the dashboard", &live)]);
    std::fs::write(&flag, "").expect("flag");
    let r = h.wait_result("jdone_jid/jobs/sec2", T);
    assert_eq!(r["Status"], "succeeded", "{r}");
    assert_eq!(r["Output"], "pass=[secret SECRET]\nend\n", "{r}");
    let raw = h.kv_raw("jdone_jid/jobs/sec2").expect("result");
    let (api_body, cli_out) = served_logs(&c, &api, "sec2");
    assert_nowhere(
        &c,
        &value,
        true,
        &[
            ("the result", &raw),
            ("/v1/logs", &api_body),
            ("servant logs", &cli_out),
        ],
    );
}

fn a_missing_key_fails_the_job_before_it_starts(b: Backend) {
    let c = Single::start(b, &[]);
    let h = c.http();
    let dir = tempfile::tempdir().expect("tempdir");
    let ran = dir.path().join("ran");
    submit(
        &h,
        "sec3",
        json!({
            "Command": format!("touch {}", ran.display()),
            "Env": {"PLAIN": "1"},
            "EnvFromKV": {"DB_PASS": "secret/nope"},
        }),
    );
    let r = h.wait_result("jdone_jid/jobs/sec3", T);
    assert_eq!(r["Status"], "failed", "{r}");
    assert_eq!(
        r["ExitErrors"],
        "EnvFromKV: cannot set DB_PASS from KV key \"secret/nope\": no such key; the job did not start",
        "{r}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(!Path::new(&ran).exists(), "the command ran");

    // A name in Env and EnvFromKV is a parse error: rejected, naming the field.
    submit(
        &h,
        "sec4",
        json!({"Command": "true", "Env": {"X": "1"}, "EnvFromKV": {"X": "secret/x"}}),
    );
    let r = h.wait_result("jdone_jid/jobs/sec4", T);
    assert_eq!(r["Status"], "rejected", "{r}");
    assert!(
        r["ExitErrors"]
            .as_str()
            .is_some_and(|e| e.contains("EnvFromKV: \"X\" is also in Env")),
        "{r}"
    );
}

/// An agent killed mid-job cannot redact that job's log: the next run of the agent withholds
/// it before its API serves anything. (The dev backend: the restart keeps the data dir.)
#[test]
fn a_log_left_unredacted_by_a_killed_agent_is_withheld() {
    let c = Single::start(Backend::Dev, &[]);
    let h = c.http();
    let api = servant_api(&h);
    let value = secret("killed");
    put_secret(&h, "app/key", &value);
    submit(
        &h,
        "sec5",
        json!({
            "Command": "echo \"key=$SECRET\"; printf %s \"$SECRET\" >&2; sleep 60",
            "EnvFromKV": {"SECRET": "app/key"},
        }),
    );
    wait_for("the running job's log", T, || {
        let (st, body) = Http::new(&api).get("/v1/logs?key=jobs/sec5");
        (st == 200 && body.contains("key=[secret SECRET]")).then_some(())
    });
    let Single { servant, ip, .. } = c;
    servant.proc.signal(nix::sys::signal::Signal::SIGKILL);
    let Servant { mut proc, data } = servant;
    proc.wait_exit(Duration::from_secs(10)).expect("killed");
    drop(proc);
    let on_disk = std::fs::read_to_string(data.path().join("logs/jobs%2Fsec5.out")).expect("log");
    assert!(on_disk.contains(&value), "the job wrote it: {on_disk}");

    let c = Single::dev_in(ip, data, &[]);
    let h = c.http();
    let api = servant_api(&h);
    let (st, body) = Http::new(&api).get("/v1/logs?key=jobs/sec5");
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("[log withheld"), "{body}");
    let r = h.wait_result("jdone_jid/jobs/sec5", T);
    assert_eq!(r["Status"], "lost", "{r}");
    let raw = h.kv_raw("jdone_jid/jobs/sec5").expect("result");
    assert_nowhere(
        &c,
        &value,
        true,
        &[("the result", &raw), ("/v1/logs", &body)],
    );
}

/// A docker job gets the variable in its container, and its output is redacted like any job's.
/// Needs the machine's Docker Engine (as tests/docker_jobs.rs).
#[test]
fn a_container_gets_the_secret_and_its_output_is_redacted() {
    let c = ConsulDev::start();
    let lab = ImageLab::new(&c.node);
    let s = c.servant(&[]).ready();
    let h = c.http();
    let api = servant_api(&h);
    let value = secret("docker");
    put_secret(&h, "secret/ctr", &value);
    submit(
        &h,
        "sec6",
        json!({
            "Type": "docker",
            "Image": lab.image,
            "Command": "echo \"ctr=$SECRET len=${#SECRET}\"; printf %s \"$SECRET\" >&2",
            "EnvFromKV": {"SECRET": "secret/ctr"},
        }),
    );
    let r = h.wait_result("jdone_jid/jobs/sec6", Duration::from_secs(60));
    assert_eq!(r["Status"], "succeeded", "{r}");
    assert_eq!(
        r["Output"],
        format!("ctr=[secret SECRET] len={}\n", value.len()),
        "{r}"
    );
    assert_eq!(r["OutputErrors"], "[secret SECRET]", "{r}");
    let raw = h.kv_raw("jdone_jid/jobs/sec6").expect("result");
    let (st, body) = Http::new(&api).get("/v1/logs?key=jobs/sec6");
    assert_eq!(st, 200, "{body}");
    let single = Single {
        node: c.node.clone(),
        ip: c.ip.clone(),
        servant: s,
        consul: None,
    };
    assert_nowhere(
        &single,
        &value,
        true,
        &[("the result", &raw), ("/v1/logs", &body)],
    );
    drop(single);
    drop(c);
    drop(lab);
}

/// On an ACL-enabled Consul the agent reads the keys with its own token: a key its policy may
/// read works, one it may not fails the job with Consul's permission error, naming the variable
/// and the key. (Real Consul only: the embedded server has no ACLs.)
#[test]
fn a_key_the_agent_token_may_not_read_fails_the_job() {
    let (c, admin) = acl_consul("5ec7");
    let rules = format!(
        r#"
key_prefix "jobs/" {{ policy = "write" }}
key_prefix "queues/" {{ policy = "write" }}
key_prefix "jdone_jid/" {{ policy = "write" }}
key_prefix "secret/servant/" {{ policy = "read" }}
session_prefix "" {{ policy = "read" }}
session "{node}" {{ policy = "write" }}
node_prefix "" {{ policy = "read" }}
agent "{node}" {{ policy = "read" }}
service "servant" {{ policy = "write" }}
"#,
        node = c.node
    );
    let (agent_token, _) = acl_token(&admin, "servant", &rules);
    let s = Servant::start(
        &c.addr(),
        &c.ip,
        &[],
        &[("CONSUL_HTTP_TOKEN", &agent_token)],
    )
    .ready();
    let allowed = secret("acl");
    put_secret(&admin, "secret/servant/ok", &allowed);
    put_secret(&admin, "secret/other/no", &secret("acl-no"));

    submit(
        &admin,
        "sec7",
        json!({"Command": "echo \"v=$OK\"", "EnvFromKV": {"OK": "secret/servant/ok"}}),
    );
    let r = admin.wait_result("jdone_jid/jobs/sec7", T);
    assert_eq!(r["Status"], "succeeded", "{r}");
    assert_eq!(r["Output"], "v=[secret OK]\n", "{r}");

    submit(
        &admin,
        "sec8",
        json!({"Command": "true", "EnvFromKV": {"NO": "secret/other/no"}}),
    );
    let r = admin.wait_result("jdone_jid/jobs/sec8", T);
    assert_eq!(r["Status"], "failed", "{r}");
    let why = r["ExitErrors"].as_str().unwrap_or_default();
    assert!(
        why.starts_with("EnvFromKV: cannot set NO from KV key \"secret/other/no\": cannot read it: permission denied")
            && why.ends_with("the job did not start"),
        "{r}"
    );
    let log = s.proc.log_text();
    assert!(!log.contains(&allowed), "{log}");
}

on_both!(
    a_secret_reaches_the_process_and_nothing_else,
    a_running_jobs_log_is_redacted_as_it_is_served,
    a_missing_key_fails_the_job_before_it_starts,
);
