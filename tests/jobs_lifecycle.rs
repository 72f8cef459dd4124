//! A job's life at its edges, on one node (each test against real Consul and against `-dev`):
//! what a job leaves running when it ends, a command at the documented size limit, and an
//! agent killed and restarted mid-job.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);

/// A sleep argument no other test uses.
fn unique_sleep(k: u32) -> String {
    (61_000 + (std::process::id() % 1_000) * 20 + k).to_string()
}

/// Issue 10: `nohup sleep 300 & echo started` reported `succeeded` and the sleep died without a
/// word. A job's process group ends with its command (as a Nomad task's processes do); the
/// result says how many processes were left and stopped.
fn background_children_end_with_the_job_and_the_result_says_so(b: Backend) {
    let s = Single::start(b, &["--kill-grace", "1s"]);
    let h = s.http();
    let arg = unique_sleep(if b == Backend::Dev { 1 } else { 2 });
    h.put(
        "/v1/kv/jobs/bg",
        json!({"Command": format!("nohup sleep {arg} >/dev/null 2>&1 & nohup sleep {arg} >/dev/null 2>&1 & echo started")})
            .to_string(),
    );
    let r = h.wait_result("jdone_jid/jobs/bg", T);
    assert_eq!(r["Status"], "succeeded", "{r}");
    assert_eq!(r["Output"], "started\n");
    assert_eq!(r["LeftoverProcesses"], 2, "{r}");
    assert!(
        sleeps(&format!("sleep {arg}")).is_empty(),
        "the leftovers were stopped"
    );
    let (code, out, err) = cli(&s.addr(), &["show", "bg"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("2 process(es) it left running in the background were stopped"),
        "{out}"
    );

    // A job that leaves nothing behind says nothing about it.
    h.put("/v1/kv/jobs/fg", r#"{"Command": "echo plain"}"#);
    let r = h.wait_result("jdone_jid/jobs/fg", T);
    assert!(r.get("LeftoverProcesses").is_none(), "{r}");

    // NoWait: the supervised process is the command itself; what it backgrounds ends with it.
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("touched");
    h.put(
        "/v1/kv/jobs/nowaitbg",
        json!({"NoWait": true, "Command": format!("(sleep 2; touch {}) &", marker.display())})
            .to_string(),
    );
    let r = h.wait_result("jdone_jid/jobs/nowaitbg", T);
    assert_eq!(r["Status"], "succeeded", "{r}");
    // The subshell, and its sleep if it had forked it yet.
    let left = r["LeftoverProcesses"].as_u64().unwrap_or(0);
    assert!((1..=2).contains(&left), "{r}");
    std::thread::sleep(Duration::from_secs(3));
    assert!(!marker.exists(), "the backgrounded subshell was stopped");
}

/// Issue 10: a `Command` over 128 KiB failed with "Argument list too long" (Linux's limit on one
/// argument), though the README accepts job documents up to 368,640 bytes.
fn a_command_at_the_documented_size_limit_runs(b: Backend) {
    let s = Single::start(b, &[]);
    let h = s.http();
    let tail = "; echo \"long ${#pad} $(env | grep -c SERVANT_COMMAND_)\"";
    let skeleton = json!({"Command": format!("pad=''{tail}")}).to_string();
    let pad = 368_640 - skeleton.len();
    let doc = json!({"Command": format!("pad='{}'{tail}", "x".repeat(pad))}).to_string();
    assert_eq!(doc.len(), 368_640);
    let (st, body) = h.put("/v1/kv/jobs/long", doc);
    assert_eq!(st, 200, "{body}");
    let r = h.wait_result("jdone_jid/jobs/long", T);
    assert_eq!(r["Status"], "succeeded", "{r}");
    assert_eq!(
        r["Output"],
        format!("long {pad} 0\n"),
        "the pieces are not in the command's environment"
    );
    assert_eq!(r["OutputErrors"], "", "{r}");
    assert!(
        r["Command"].as_str().unwrap().ends_with(" [...]"),
        "the result echoes a cut command"
    );
}

/// The jobs session of this node's servant (the apps session is its other one).
fn jobs_session(h: &Http, node: &str) -> Vec<String> {
    h.get_json(&format!("/v1/session/node/{node}"))
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter(|s| s["Name"] == "servant")
        .filter_map(|s| s["ID"].as_str().map(str::to_string))
        .collect()
}

/// Issue 10: after an agent was SIGKILLed mid-job and restarted, its job still showed `running`
/// for about 35 s, held by the dead run's session until Consul's TTL ran out. The new run
/// destroys its predecessor's session before it takes work, so the job is free after the
/// lock-delay; with Retries 0 it ends `lost`, and the result names the attempt that ran.
fn regression_a_restarted_agent_frees_its_predecessors_jobs(b: Backend) {
    let args = ["--lock-delay", "1s"];
    let mut s = Single::start(b, &args);
    let h = s.http();
    let arg = unique_sleep(if b == Backend::Dev { 3 } else { 4 });
    h.put(
        "/v1/kv/jobs/victim",
        json!({"Command": format!("sleep {arg}"), "Timeout": 300}).to_string(),
    );
    let old = wait_for("claimed", T, || {
        h.get_json("/v1/kv/jobs/victim")?[0]["Session"]
            .as_str()
            .map(str::to_string)
    });
    wait_for("running", T, || {
        (!sleeps(&format!("sleep {arg}")).is_empty()).then_some(())
    });
    s.servant.proc.signal(nix::sys::signal::Signal::SIGKILL);
    s.servant.proc.wait_exit(T);
    wait_for("the job died with its agent", T, || {
        sleeps(&format!("sleep {arg}")).is_empty().then_some(())
    });
    // Restart: on the same Consul, or the same -dev data dir (which keeps the old session).
    let s = match b {
        Backend::Consul => {
            let c = s.consul.take().unwrap();
            let servant = c.servant(&args).ready();
            Single {
                node: c.node.clone(),
                ip: c.ip.clone(),
                servant,
                consul: Some(c),
            }
        }
        Backend::Dev => {
            let Single { ip, servant, .. } = s;
            let Servant { proc, data } = servant;
            drop(proc);
            Single::dev_in(ip, data, &args)
        }
    };
    let h = s.http();
    let sessions = jobs_session(&h, &s.node);
    assert!(
        !sessions.contains(&old),
        "the dead run's session is gone once the new run is ready: {sessions:?}"
    );
    let r: Value = h.wait_result("jdone_jid/jobs/victim", T);
    assert_eq!(r["Status"], "lost", "{r}");
    assert_eq!(r["Attempt"], 1, "the attempt that ran: {r}");
    let why = r["ExitErrors"].as_str().unwrap();
    assert!(why.starts_with("lost: attempt 1 (claimed at "), "{why}");
    assert!(why.contains("Retries 0 allows no further attempt"), "{why}");
}

on_both!(
    background_children_end_with_the_job_and_the_result_says_so,
    a_command_at_the_documented_size_limit_runs,
    regression_a_restarted_agent_frees_its_predecessors_jobs,
);

/// Issue 10: a second agent on the same data dir was told to move the directory away. It is
/// refused with the first agent's pid; and a second agent for the same node with a data dir of
/// its own is refused too, before it could take the first one's sessions for a predecessor's.
#[test]
fn a_second_agent_is_refused_and_names_the_first() {
    let c = ConsulDev::start();
    let first = c.servant(&[]).ready();
    let h = c.http();
    let sessions = jobs_session(&h, &c.node);
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let second = |data: &std::path::Path| {
        let out = std::process::Command::new(servant_bin())
            .args(["agent", "--http-addr", &c.addr(), "--data-dir"])
            .arg(data)
            .args(["--api-addr", &format!("{}:0", c.ip)])
            .env_remove("CONSUL_HTTP_TOKEN")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = second(first.data.path());
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "another servant agent (pid {}) is using data dir",
            first.proc.pid()
        )),
        "{err}"
    );
    let other = tempfile::tempdir().unwrap();
    let (code, err) = second(other.path());
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "another servant agent (pid {}) already serves node {}",
            first.proc.pid(),
            c.node
        )),
        "{err}"
    );
    assert_eq!(
        jobs_session(&h, &c.node),
        sessions,
        "the first agent keeps its session"
    );
}
