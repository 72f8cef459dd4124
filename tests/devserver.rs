//! `servant agent -dev`: the embedded single-node server. The conformance scenario runs the same
//! requests against a real Consul 1.8.7 dev agent and against the embedded server, and compares
//! status codes and bodies (index values and generated IDs left out).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);

#[test]
fn dev_runs_jobs_with_nothing_else_installed() {
    let d = Single::start(Backend::Dev, &[]);
    let h = d.http();
    // consul_servant's README, verbatim but for the address.
    let out = Command::new("curl")
        .args([
            "-sS",
            "-X",
            "PUT",
            "-d",
            r#"{ "Command": "echo hello world" }"#,
            &format!("http://{}/v1/kv/jobs/job1", d.addr()),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "true");
    let r = h.wait_result("jdone_jid/jobs/job1", T);
    assert_eq!(r["Output"], "hello world\n");
    assert_eq!(r["ExecutionNode"], "devnode");
    let (code, out, err) = cli(&d.addr(), &["start", "--wait", "-c", "echo from cli", "j2"]);
    assert_eq!((code, out.as_str()), (0, "j2\nfrom cli\n"), "{err}");
    let (code, out, _) = cli(&d.addr(), &["logs", "job1"]);
    assert_eq!((code, out.as_str()), (0, "hello world\n"));
}

#[test]
fn dev_data_survives_kill_9() {
    let d = Single::start(Backend::Dev, &[]);
    let h = d.http();
    assert_eq!(h.put("/v1/kv/keep/me", vec![0u8, 1, 2, 255]).0, 200);
    let reg = json!({"ID": "kept", "Name": "kept", "Port": 9, "Check": {"TTL": "1h", "Status": "passing"}});
    assert_eq!(h.put("/v1/agent/service/register", reg.to_string()).0, 200);
    let Single { servant, ip, .. } = d;
    servant.proc.signal(nix::sys::signal::Signal::SIGKILL);
    let Servant { mut proc, data } = servant;
    proc.wait_exit(Duration::from_secs(10)).expect("killed");
    drop(proc);
    let d = Single::dev_in(ip, data, &[]);
    let v = d.http().get_json("/v1/kv/keep/me").unwrap();
    assert_eq!(v[0]["Value"], "AAEC/w==");
    // Agent services and checks are kept too, as a Consul agent keeps them in its data dir.
    let services = d.http().get_json("/v1/agent/services").unwrap();
    assert_eq!(services["kept"]["Port"], 9, "{services}");
    let checks = d.http().get_json("/v1/agent/checks").unwrap();
    assert_eq!(checks["service:kept"]["Status"], "passing", "{checks}");
}

#[test]
fn dev_refuses_to_join_or_serve_a_cluster() {
    for extra in [["-join", "127.0.0.9"], ["-server", "--bind"]] {
        let mut args = vec!["agent", "-dev"];
        args.extend(extra.iter().filter(|a| !a.starts_with("--")));
        let out = Command::new(servant_bin()).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("not a distributed store") && err.contains("real Consul"),
            "{err}"
        );
    }
}

#[test]
fn consul_cli_works_against_the_embedded_server() {
    let d = Single::start(Backend::Dev, &[]);
    let consul = |args: &[&str]| {
        let out = Command::new(consul_bin())
            .args(args)
            .env("CONSUL_HTTP_ADDR", d.addr())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert!(consul(&["kv", "put", "app/a", "one"]).0);
    assert!(consul(&["kv", "put", "app/b", "two"]).0);
    assert_eq!(consul(&["kv", "get", "app/a"]).1, "one\n");
    assert_eq!(
        consul(&["kv", "get", "-recurse", "app/"]).1,
        "app/a:one\napp/b:two\n"
    );
    let (ok, export, _) = consul(&["kv", "export", "app/"]);
    assert!(ok);
    assert!(consul(&["kv", "delete", "-recurse", "app/"]).0);
    assert!(!consul(&["kv", "get", "app/a"]).0);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("export.json");
    std::fs::write(&f, &export).unwrap();
    assert!(consul(&["kv", "import", &format!("@{}", f.display())]).0);
    assert_eq!(consul(&["kv", "get", "app/b"]).1, "two\n");
    let (ok, members, err) = consul(&["members"]);
    assert!(ok, "{err}");
    assert!(
        members.contains("devnode") && members.contains("alive"),
        "{members}"
    );
    let (ok, out, err) = consul(&["lock", "locks/x", "echo inside the lock"]);
    assert!(ok, "{err}");
    assert!(out.contains("inside the lock"), "{out}");
    // `consul watch -type=key` with a handler runs it with the value, then again when it
    // changes. (Without a handler it prints once and exits, on real Consul too.)
    assert!(consul(&["kv", "put", "w/k", "first"]).0);
    let mut watch = Command::new(consul_bin())
        .args(["watch", "-type=key", "-key=w/k", "cat"])
        .env("CONSUL_HTTP_ADDR", d.addr())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(consul(&["kv", "put", "w/k", "second"]).0);
    std::thread::sleep(Duration::from_millis(1500));
    let _ = watch.kill();
    let out = watch.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // Values are base64: "first" and "second".
    assert!(
        text.contains("Zmlyc3Q=") && text.contains("c2Vjb25k"),
        "{text}"
    );
}

/// Runs one scenario of requests and returns what each answered, normalised: index fields and
/// generated IDs are replaced, so two backends can be compared.
fn scenario(h: &Http) -> Vec<(String, u16, Value)> {
    let mut out = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    let mut record = |what: &str, st: u16, body: &str, ids: &mut Vec<String>| {
        let mut v: Value =
            serde_json::from_str(body).unwrap_or(Value::String(body.trim().to_string()));
        normalise(&mut v, ids);
        out.push((what.to_string(), st, v));
    };
    let (st, b) = h.get("/v1/kv/c/missing");
    record("get missing", st, &b, &mut ids);
    let (st, b) = h.put("/v1/kv/c/a?flags=42", "alpha");
    record("put", st, &b, &mut ids);
    let (st, b) = h.put("/v1/kv/c/a?cas=0", "again");
    record("cas 0 on existing", st, &b, &mut ids);
    let (st, b) = h.put("/v1/kv/c/new?cas=0", "fresh");
    record("cas 0 on new", st, &b, &mut ids);
    let (st, b) = h.put("/v1/kv/c/bin", vec![0u8, 159, 146, 150, 255]);
    record("binary put", st, &b, &mut ids);
    let (st, b) = h.get("/v1/kv/c/bin");
    record("binary get", st, &b, &mut ids);
    let (st, b) = h.get("/v1/kv/c/a");
    record("get", st, &b, &mut ids);
    let (st, b) = h.get("/v1/kv/c/a?raw");
    record("raw", st, &b, &mut ids);
    h.put("/v1/kv/c/d/e/f", "x");
    let (st, b) = h.get("/v1/kv/c/?keys&separator=/");
    record("keys separator", st, &b, &mut ids);
    let (st, b) = h.get("/v1/kv/c/?recurse");
    record("recurse", st, &b, &mut ids);
    let (st, b) = h.put(
        "/v1/session/create",
        r#"{"Name": "one", "LockDelay": "2s", "TTL": "15s"}"#,
    );
    let s1 = serde_json::from_str::<Value>(&b)
        .ok()
        .and_then(|v| v["ID"].as_str().map(str::to_string))
        .unwrap_or_default();
    record("session create", st, &b, &mut ids);
    let (st, b) = h.put(
        "/v1/session/create",
        r#"{"Name": "two", "LockDelay": "0s", "Behavior": "delete"}"#,
    );
    let s2 = serde_json::from_str::<Value>(&b)
        .ok()
        .and_then(|v| v["ID"].as_str().map(str::to_string))
        .unwrap_or_default();
    record("session create 2", st, &b, &mut ids);
    let (st, b) = h.put("/v1/session/create", r#"{"TTL": "5s"}"#);
    record(
        "session bad ttl",
        st,
        if st == 500 { "error" } else { &b },
        &mut ids,
    );
    let (st, b) = h.get(&format!("/v1/session/info/{s1}"));
    record("session info", st, &b, &mut ids);
    let (st, b) = h.put(&format!("/v1/kv/c/lock?acquire={s1}"), "held");
    record("acquire", st, &b, &mut ids);
    let (st, b) = h.put(&format!("/v1/kv/c/lock?acquire={s2}"), "stolen");
    record("acquire by second session", st, &b, &mut ids);
    let (st, b) = h.put(&format!("/v1/kv/c/lock?acquire={s1}&cas=1"), "x");
    record(
        "acquire with cas",
        st,
        if st == 400 { "conflicting" } else { &b },
        &mut ids,
    );
    let (st, _) = h.put(&format!("/v1/kv/c/lock?release={s1}&cas=1"), "x");
    record("release with cas", st, "status only", &mut ids);
    let (st, _) = h.delete("/v1/kv/");
    record(
        "delete the root without recurse",
        st,
        "status only",
        &mut ids,
    );
    let (st, b) = h.get("/v1/kv/c/lock");
    record("locked entry", st, &b, &mut ids);
    let (st, b) = h.put(&format!("/v1/session/destroy/{s1}"), "");
    record("destroy", st, &b, &mut ids);
    let (st, b) = h.put(&format!("/v1/kv/c/lock?acquire={s2}"), "too soon");
    record("acquire during lock-delay", st, &b, &mut ids);
    let (st, b) = h.get("/v1/kv/c/lock");
    record("released entry", st, &b, &mut ids);
    let txn_ok = json!([
        {"KV": {"Verb": "set", "Key": "c/t1", "Value": "dHgx"}},
        {"KV": {"Verb": "get", "Key": "c/a"}},
        {"KV": {"Verb": "check-not-exists", "Key": "c/none"}}
    ]);
    let (st, b) = h.put("/v1/txn", txn_ok.to_string());
    record("txn", st, &b, &mut ids);
    let txn_bad = json!([
        {"KV": {"Verb": "set", "Key": "c/t2", "Value": "dHgy"}},
        {"KV": {"Verb": "check-index", "Key": "c/none", "Index": 3}}
    ]);
    let (st, b) = h.put("/v1/txn", txn_bad.to_string());
    let mut v: Value = serde_json::from_str(&b).unwrap_or(Value::Null);
    if let Some(errs) = v["Errors"].as_array_mut() {
        for e in errs {
            e["What"] = json!("...");
        }
    }
    record("txn rolled back", st, &v.to_string(), &mut ids);
    let (st, b) = h.get("/v1/kv/c/t2");
    record("nothing from the rolled back txn", st, &b, &mut ids);
    let (st, b) = h.delete("/v1/kv/c/?recurse");
    record("delete tree", st, &b, &mut ids);
    let (st, b) = h.get("/v1/kv/c/?recurse");
    record("empty tree", st, &b, &mut ids);
    let (st, b) = h.get("/v1/status/leader");
    record(
        "leader",
        st,
        if b.contains(":8300") { "leader" } else { &b },
        &mut ids,
    );
    out
}

fn normalise(v: &mut Value, ids: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for k in ["CreateIndex", "ModifyIndex", "LockIndex"] {
                if let Some(x) = m.get_mut(k) {
                    // LockIndex is kept as a count; the others are positions in a log.
                    if k != "LockIndex" {
                        *x = json!("idx");
                    }
                }
            }
            for k in ["ID", "Session"] {
                if let Some(Value::String(s)) = m.get_mut(k) {
                    let n = match ids.iter().position(|x| x == s) {
                        Some(n) => n,
                        None => {
                            ids.push(s.clone());
                            ids.len() - 1
                        }
                    };
                    *s = format!("id{n}");
                }
            }
            m.remove("Node");
            for (_, x) in m.iter_mut() {
                normalise(x, ids);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| normalise(x, ids)),
        _ => {}
    }
}

/// Runs `scenario` against a real Consul dev agent and against the embedded server, and
/// compares what each step recorded.
fn same_on_real_consul_and_dev<T: PartialEq + std::fmt::Debug>(scenario: fn(&Http) -> Vec<T>) {
    let real = ConsulDev::start();
    let dev = Single::start(Backend::Dev, &[]);
    let a = scenario(&real.http());
    let b = scenario(&dev.http());
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x, y, "\nreal consul: {x:?}\nembedded:    {y:?}");
    }
}

#[test]
fn conformance_kv_txn_sessions_match_real_consul() {
    same_on_real_consul_and_dev(scenario);
}

/// Blocking behaviour on both backends: a list waits, wakes on a write under its prefix, and
/// deleting the newest key still moves the index forward.
#[test]
fn conformance_blocking_queries() {
    let real = ConsulDev::start();
    let dev = Single::start(Backend::Dev, &[]);
    for h in [real.http(), dev.http()] {
        h.put("/v1/kv/b/1", "one");
        h.put("/v1/kv/b/2", "two");
        let i0 = h.index_of("/v1/kv/b/?recurse");
        // Nothing changes: the read holds for its wait.
        let t = Instant::now();
        let (st, _) = h.get(&format!("/v1/kv/b/?recurse&index={i0}&wait=300ms"));
        assert_eq!(st, 200);
        assert!(
            t.elapsed() >= Duration::from_millis(280),
            "{:?} on {}",
            t.elapsed(),
            h.base
        );
        // A write elsewhere does not wake a prefix with entries (Consul watches the prefix).
        // Deleting the newest key wakes it with a higher index.
        let base = h.base.clone();
        let waiter = std::thread::spawn(move || {
            let h = Http::new(base.trim_start_matches("http://"));
            let t = Instant::now();
            let (st, body) = h.get(&format!("/v1/kv/b/?recurse&index={i0}&wait=10s"));
            (st, body, t.elapsed(), h.index_of("/v1/kv/b/?recurse"))
        });
        std::thread::sleep(Duration::from_millis(300));
        h.delete("/v1/kv/b/2");
        let (st, body, took, i1) = waiter.join().unwrap();
        assert_eq!(st, 200);
        assert!(
            took < Duration::from_secs(5),
            "woke after {took:?} on {}",
            h.base
        );
        assert!(body.contains("b/1") && !body.contains("b/2"));
        assert!(i1 > i0, "index went from {i0} to {i1} on {}", h.base);
    }
}

/// Keeps only the named fields of each object (recursively into arrays), so that fields one
/// backend has and the other lacks (Consul's check definitions, raft indexes) do not matter.
fn project(v: &Value, fields: &[&str]) -> Value {
    match v {
        Value::Array(a) => {
            let mut items: Vec<Value> = a.iter().map(|x| project(x, fields)).collect();
            items.sort_by_key(|x| x.to_string());
            Value::Array(items)
        }
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| fields.contains(&k.as_str()))
                .map(|(k, x)| (k.clone(), project(x, fields)))
                .collect(),
        ),
        // Generated IDs (node IDs) differ by nature.
        Value::String(s) if s.len() == 36 && s.matches('-').count() == 4 => json!("uuid"),
        other => other.clone(),
    }
}

/// Agent services and checks, TTL updates, health filters, catalog, events and a session tied
/// to a service check: the same answers (in the fields both have) from both backends.
fn scenario_agent(h: &Http) -> Vec<(String, u16, Value)> {
    let mut out = Vec::new();
    let fields = [
        "CheckID",
        "Status",
        "ServiceID",
        "ServiceName",
        "ServiceTags",
        "ServicePort",
        "Service",
        "Checks",
        "ID",
        "Tags",
        "Port",
        "Name",
        "Output",
        "Notes",
    ];
    let mut rec = |what: &str, (st, body): (u16, String)| {
        let v: Value =
            serde_json::from_str(&body).unwrap_or(Value::String(body.trim().to_string()));
        out.push((what.to_string(), st, project(&v, &fields)));
    };
    let reg =
        json!({"ID": "web1", "Name": "web", "Tags": ["v1"], "Port": 8080, "Check": {"TTL": "30s"}});
    rec(
        "register",
        h.put("/v1/agent/service/register", reg.to_string()),
    );
    let reg2 = json!({"ID": "web2", "Name": "web", "Tags": ["v2"], "Port": 8081, "Check": {"TTL": "30s", "Status": "passing"}});
    rec(
        "register 2",
        h.put("/v1/agent/service/register", reg2.to_string()),
    );
    std::thread::sleep(Duration::from_millis(300));
    rec("agent services", h.get("/v1/agent/services"));
    rec("agent checks", h.get("/v1/agent/checks"));
    rec("passing only", h.get("/v1/health/service/web?passing"));
    rec(
        "pass",
        h.put("/v1/agent/check/pass/service:web1?note=fine", ""),
    );
    std::thread::sleep(Duration::from_millis(300));
    rec(
        "passing after pass",
        h.get("/v1/health/service/web?passing"),
    );
    rec("warn", h.put("/v1/agent/check/warn/service:web2", ""));
    std::thread::sleep(Duration::from_millis(300));
    rec("warning state", h.get("/v1/health/state/warning"));
    rec(
        "catalog service by tag",
        h.get("/v1/catalog/service/web?tag=v1"),
    );
    rec("health checks of web", h.get("/v1/health/checks/web"));
    rec(
        "unknown check",
        h.put("/v1/agent/check/pass/nope", "")
            .0
            .to_string()
            .pipe(|s| (200u16, s)),
    );
    let sess = json!({"Name": "tied", "Checks": ["serfHealth", "service:web1"], "LockDelay": "0s"});
    let (st, b) = h.put("/v1/session/create", sess.to_string());
    let sid = serde_json::from_str::<Value>(&b)
        .ok()
        .and_then(|v| v["ID"].as_str().map(str::to_string))
        .unwrap_or_default();
    rec(
        "session tied to a check",
        (st, if st == 200 { "created".into() } else { b }),
    );
    rec(
        "missing check",
        h.put(
            "/v1/session/create",
            json!({"Checks": ["nope"]}).to_string(),
        )
        .0
        .to_string()
        .pipe(|s| (200u16, s)),
    );
    let reg3 = json!({"ID": "web3", "Name": "web", "Port": 8082, "Check": {"TTL": "30s"}});
    rec(
        "register 3 (its TTL check starts critical)",
        h.put("/v1/agent/service/register", reg3.to_string()),
    );
    let naming = json!({"Checks": ["serfHealth", "service:web3"]}).to_string();
    rec(
        "session naming a critical check",
        (200, h.put("/v1/session/create", naming).0.to_string()),
    );
    rec(
        "deregister 3",
        h.put("/v1/agent/service/deregister/web3", ""),
    );
    h.put(&format!("/v1/kv/tied?acquire={sid}"), "x");
    rec("fail", h.put("/v1/agent/check/fail/service:web1", ""));
    std::thread::sleep(Duration::from_millis(500));
    let (st, b) = h.get(&format!("/v1/session/info/{sid}"));
    rec(
        "session gone after its check failed",
        (
            st,
            if b.trim() == "null" || b.trim() == "[]" {
                "none".into()
            } else {
                b
            },
        ),
    );
    let holder = h
        .get_json("/v1/kv/tied")
        .map(|v| v[0]["Session"].clone())
        .unwrap_or(Value::Null);
    rec("lock released", (200, holder.to_string()));
    rec("deregister", h.put("/v1/agent/service/deregister/web1", ""));
    rec("checks after deregister", h.get("/v1/agent/checks"));
    let (st, b) = h.put("/v1/event/fire/deploy", "payload");
    rec(
        "fire",
        (
            st,
            serde_json::from_str::<Value>(&b)
                .map(|v| json!({"Name": v["Name"], "Payload": v["Payload"]}).to_string())
                .unwrap_or(b),
        ),
    );
    let (st, b) = h.get("/v1/event/list?name=deploy");
    rec(
        "list",
        (
            st,
            serde_json::from_str::<Value>(&b)
                .map(|v| {
                    json!(v.as_array().map(|a| a
                        .iter()
                        .map(|e| json!({"Name": e["Name"], "Payload": e["Payload"]}))
                        .collect::<Vec<_>>()))
                })
                .unwrap_or_default()
                .to_string(),
        ),
    );
    out
}

trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}
impl<T> Pipe for T {}

#[test]
fn conformance_agent_catalog_health_events_match_real_consul() {
    let real = ConsulDev::start();
    let dev = Single::start(Backend::Dev, &[]);
    let a = scenario_agent(&real.http());
    let b = scenario_agent(&dev.http());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x, y, "\nreal consul: {x:?}\nembedded:    {y:?}");
    }
}

/// The rest of the API the issue names: session renew, list and node; behaviour delete;
/// agent self, members and check update; a TTL check running out; the catalog's nodes, node
/// and services; health by node; status peers; the leader headers; the value size limit; a
/// `wait` past Consul's 10-minute cap. Compared in the fields both backends have.
fn scenario_rest(h: &Http) -> Vec<(String, u16, Value)> {
    let mut out = Vec::new();
    let fields = [
        "CheckID",
        "Status",
        "ServiceID",
        "ServiceName",
        "Name",
        "Output",
        "Behavior",
        "TTL",
        "LockDelay",
        "Tags",
        "Port",
        "Service",
        "Services",
        "Checks",
    ];
    let mut ids = Vec::new();
    let mut rec = |what: &str, (st, body): (u16, String)| {
        let v: Value =
            serde_json::from_str(&body).unwrap_or(Value::String(body.trim().to_string()));
        // Built here (not an API body): compared whole.
        let mut v = if what.starts_with('=') {
            v
        } else {
            project(&v, &fields)
        };
        normalise(&mut v, &mut ids);
        out.push((what.to_string(), st, v));
    };
    let me = h.get_json("/v1/agent/self").expect("agent self");
    let node = me["Config"]["NodeName"].as_str().unwrap_or("").to_string();
    rec(
        "=self names the node and its member",
        (
            200,
            json!({
                "has node": !node.is_empty(),
                "member": me["Member"]["Name"] == json!(node),
                "datacenter": me["Config"]["Datacenter"],
            })
            .to_string(),
        ),
    );
    let members = h.get_json("/v1/agent/members").unwrap_or_default();
    rec(
        "=members",
        (
            200,
            json!(members.as_array().map(|a| a
                .iter()
                .map(|m| (m["Name"] == json!(node), m["Status"].clone()))
                .collect::<Vec<_>>()))
            .to_string(),
        ),
    );
    let (st, b) = h.put(
        "/v1/session/create",
        r#"{"Name": "r", "TTL": "20s", "Behavior": "delete", "LockDelay": "0s"}"#,
    );
    let sid = serde_json::from_str::<Value>(&b)
        .ok()
        .and_then(|v| v["ID"].as_str().map(str::to_string))
        .unwrap_or_default();
    rec("create", (st, "created".into()));
    rec("renew", h.put(&format!("/v1/session/renew/{sid}"), ""));
    // Only this scenario's session: the embedded backend has a servant agent with its own.
    let ours = |(st, b): (u16, String)| {
        let v: Value = serde_json::from_str(&b).unwrap_or_default();
        let mine: Vec<Value> = v
            .as_array()
            .map(|a| a.iter().filter(|s| s["Name"] == "r").cloned().collect())
            .unwrap_or_default();
        (st, Value::Array(mine).to_string())
    };
    rec("list", ours(h.get("/v1/session/list")));
    rec(
        "node's sessions",
        ours(h.get(&format!("/v1/session/node/{node}"))),
    );
    rec(
        "renew unknown",
        (
            h.put("/v1/session/renew/00000000-0000-0000-0000-000000000000", "")
                .0,
            "status only".into(),
        ),
    );
    h.put(&format!("/v1/kv/r/owned?acquire={sid}"), "mine");
    h.put(&format!("/v1/session/destroy/{sid}"), "");
    rec("behaviour delete removed the key", h.get("/v1/kv/r/owned"));
    let reg = json!({"ID": "api", "Name": "api", "Tags": ["t"], "Port": 9000,
        "Check": {"TTL": "1s", "Status": "passing"}});
    rec(
        "register",
        h.put("/v1/agent/service/register", reg.to_string()),
    );
    rec(
        "check update",
        h.put(
            "/v1/agent/check/update/service:api",
            json!({"Status": "warning", "Output": "disk at 91%"}).to_string(),
        ),
    );
    let checks = h.get_json("/v1/agent/checks").unwrap_or_default();
    rec("after update", (200, checks["service:api"].to_string()));
    rec(
        "bad status",
        (
            h.put(
                "/v1/agent/check/update/service:api",
                json!({"Status": "sideways"}).to_string(),
            )
            .0,
            "status only".into(),
        ),
    );
    h.put("/v1/agent/check/pass/service:api", "");
    std::thread::sleep(Duration::from_millis(2_500));
    let checks = h.get_json("/v1/agent/checks").unwrap_or_default();
    rec(
        "TTL ran out",
        (200, checks["service:api"]["Status"].to_string()),
    );
    let nodes = h.get_json("/v1/catalog/nodes").unwrap_or_default();
    rec(
        "=catalog nodes",
        (
            200,
            json!(nodes.as_array().map(|a| a
                .iter()
                .map(|n| n["Node"] == json!(node))
                .collect::<Vec<_>>()))
            .to_string(),
        ),
    );
    let cat = h
        .get_json(&format!("/v1/catalog/node/{node}"))
        .unwrap_or_default();
    rec("catalog node", (200, cat["Services"]["api"].to_string()));
    let mut services = h.get_json("/v1/catalog/services").unwrap_or_default();
    // The embedded backend's servant agent registers itself.
    if let Some(m) = services.as_object_mut() {
        m.remove("servant");
    }
    rec("=catalog services", (200, services.to_string()));
    // Consul's agent copies a check's new state to the catalog a moment later.
    let by_node = format!("/v1/health/node/{node}");
    wait_for(
        "the expired check in the catalog",
        Duration::from_secs(15),
        || h.get(&by_node).1.contains("TTL expired").then_some(()),
    );
    rec("health node", h.get(&by_node));
    let peers = h.get_json("/v1/status/peers").unwrap_or_default();
    rec(
        "=peers",
        (200, json!(peers.as_array().map(|a| a.len())).to_string()),
    );
    rec(
        "=leader headers",
        (
            200,
            json!([
                h.header("/v1/kv/r/?recurse", "X-Consul-KnownLeader"),
                h.header("/v1/kv/r/?recurse", "X-Consul-LastContact"),
            ])
            .to_string(),
        ),
    );
    rec(
        "=a missing key's 404 carries the index",
        (
            h.get("/v1/kv/r/none").0,
            json!(h
                .header("/v1/kv/r/none", "X-Consul-Index")
                .and_then(|i| i.parse::<u64>().ok())
                .is_some_and(|i| i > 0))
            .to_string(),
        ),
    );
    rec(
        "512 KB is allowed",
        h.put("/v1/kv/r/big", vec![b'x'; 512 * 1024]),
    );
    let (st, _) = h.put("/v1/kv/r/big", vec![b'x'; 512 * 1024 + 1]);
    rec("one byte more is refused", (st, "status only".into()));
    // A wait of an hour is accepted (held at most 10 minutes) and a write still ends it.
    let i0 = h.index_of("/v1/kv/r/big");
    let base = h.base.clone();
    let waiter = std::thread::spawn(move || {
        let h = Http::new(base.trim_start_matches("http://"));
        h.get(&format!("/v1/kv/r/big?index={i0}&wait=1h")).0
    });
    std::thread::sleep(Duration::from_millis(300));
    h.put("/v1/kv/r/big", "small");
    rec("wait=1h", (waiter.join().unwrap(), "status only".into()));
    out
}

#[test]
fn conformance_sessions_catalog_status_and_limits_match_real_consul() {
    same_on_real_consul_and_dev(scenario_rest);
}

/// Check states in registrations and updates: the three names are taken, anything else is
/// refused with Consul's words for each endpoint, and an empty state starts critical.
fn scenario_check_states(h: &Http) -> Vec<(String, u16, String)> {
    let mut out = Vec::new();
    let mut rec = |what: &str, (st, body): (u16, String)| {
        out.push((what.to_string(), st, body.trim().to_string()));
    };
    let bad_service =
        json!({"ID": "sbad", "Name": "sbad", "Check": {"TTL": "30s", "Status": "bogus"}});
    rec(
        "service with a bad check state",
        h.put("/v1/agent/service/register", bad_service.to_string()),
    );
    for (id, status) in [
        ("cbad", "bogus"),
        ("ccase", "Passing"),
        ("cwarn", "warning"),
        ("cempty", ""),
    ] {
        let check = json!({"ID": id, "Name": id, "TTL": "30s", "Status": status});
        rec(
            &format!("check registered {status:?}"),
            h.put("/v1/agent/check/register", check.to_string()),
        );
    }
    rec(
        "update to a bad state",
        h.put(
            "/v1/agent/check/update/cwarn",
            json!({"Status": "bogus"}).to_string(),
        ),
    );
    rec(
        "update without a state",
        h.put("/v1/agent/check/update/cwarn", "{}"),
    );
    rec(
        "update to passing",
        h.put(
            "/v1/agent/check/update/cempty",
            json!({"Status": "passing", "Output": "ok"}).to_string(),
        ),
    );
    let states = h
        .get_json("/v1/agent/checks")
        .map(|v| {
            let mut m: Vec<String> = v
                .as_object()
                .into_iter()
                .flatten()
                .map(|(id, c)| format!("{id}={}", c["Status"].as_str().unwrap_or("?")))
                .collect();
            m.sort();
            m.join(",")
        })
        .unwrap_or_default();
    rec("states", (200, states));
    out
}

#[test]
fn check_states_are_read_and_refused_like_real_consul() {
    same_on_real_consul_and_dev(scenario_check_states);
}

/// Debian's python3-consul, an independent client, runs a scripted session against both
/// backends. `.ci/run` installs it; the system interpreter is used because pyenv's has no
/// Debian modules.
#[test]
fn python_consul_client_session_on_both_backends() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients/python_consul_session.py");
    let real = ConsulDev::start();
    let dev = Single::start(Backend::Dev, &[]);
    for ip in [&real.ip, &dev.ip] {
        let out = Command::new("/usr/bin/python3")
            .arg(&script)
            .arg(ip)
            .arg("8500")
            .output()
            .expect("run /usr/bin/python3 (apt-get install python3-consul)");
        assert!(
            out.status.success(),
            "python3-consul against {ip}:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("all ok"));
    }
}

#[test]
fn corrupt_data_file_is_a_clear_error_and_is_kept() {
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("dev.redb");
    std::fs::write(&file, b"precious bytes that are not a database").unwrap();
    let ip = format!("{}.2", subnet());
    let out = dev_command(&ip, data.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("dev.redb") && err.contains("left as it is"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"precious bytes that are not a database"
    );
}

/// 1,000 blocking reads held at once; one write answers them all.
#[test]
fn a_thousand_blocking_queries_are_held_and_woken() {
    let d = Single::start(Backend::Dev, &[]);
    let h = d.http();
    h.put("/v1/kv/many/k", "0");
    let index = h.index_of("/v1/kv/many/k");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let base = h.base.clone();
    let answers = rt.block_on(async move {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let mut tasks = Vec::new();
        for _ in 0..1000 {
            let c = client.clone();
            let url = format!("{base}/v1/kv/many/k?index={index}&wait=50s");
            tasks.push(tokio::spawn(async move {
                c.get(url).send().await.map(|r| r.status().as_u16())
            }));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        client
            .put(format!("{base}/v1/kv/many/k"))
            .body("1")
            .send()
            .await
            .unwrap();
        let t = Instant::now();
        let mut codes = Vec::new();
        for t in tasks {
            codes.push(t.await.unwrap());
        }
        (codes, t.elapsed())
    });
    let (codes, took) = answers;
    let ok = codes.iter().filter(|c| matches!(c, Ok(200))).count();
    assert_eq!(
        ok,
        1000,
        "{:?}",
        codes
            .iter()
            .filter(|c| !matches!(c, Ok(200)))
            .take(3)
            .collect::<Vec<_>>()
    );
    assert!(took < Duration::from_secs(30), "woken in {took:?}");
}

/// A tiny HTTP server answering every request with `status`, changeable while it runs.
fn http_responder() -> (String, std::sync::Arc<std::sync::atomic::AtomicU16>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let status = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(200));
    let s2 = status.clone();
    std::thread::spawn(move || {
        for mut conn in l.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let code = s2.load(std::sync::atomic::Ordering::SeqCst);
            let _ = write!(
                conn,
                "HTTP/1.1 {code} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            );
        }
    });
    (addr, status)
}

/// HTTP and TCP checks are run by both backends with the same verdicts.
#[test]
fn http_and_tcp_checks_are_run_like_consul() {
    let (web, status) = http_responder();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let real = ConsulDev::start();
    let dev = Single::start(Backend::Dev, &[]);
    for h in [real.http(), dev.http()] {
        let reg = json!({"ID": "h1", "Name": "probed", "Port": 1, "Checks": [
            {"CheckID": "http", "HTTP": format!("http://{web}/health"), "Interval": "200ms"},
            {"CheckID": "tcp-open", "TCP": web, "Interval": "200ms"},
            {"CheckID": "tcp-closed", "TCP": closed, "Interval": "200ms", "Timeout": "1s"}
        ]});
        assert_eq!(h.put("/v1/agent/service/register", reg.to_string()).0, 200);
        let state = |id: &str| -> String {
            let v = h.get_json("/v1/agent/checks").unwrap();
            v[id]["Status"].as_str().unwrap_or("").to_string()
        };
        status.store(200, std::sync::atomic::Ordering::SeqCst);
        wait_for("http and tcp checks pass", T, || {
            (state("http") == "passing"
                && state("tcp-open") == "passing"
                && state("tcp-closed") == "critical")
                .then_some(())
        });
        status.store(429, std::sync::atomic::Ordering::SeqCst);
        wait_for("429 is a warning", T, || {
            (state("http") == "warning").then_some(())
        });
        status.store(500, std::sync::atomic::Ordering::SeqCst);
        wait_for("500 is critical", T, || {
            (state("http") == "critical").then_some(())
        });
        assert_eq!(h.put("/v1/agent/service/deregister/h1", "").0, 200);
    }
}

/// Runs Consul's own CLI against `addr`: (exit code, stdout, stderr).
fn consul_cli(addr: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(consul_bin())
        .args(args)
        .env("CONSUL_HTTP_ADDR", addr)
        .env_remove("CONSUL_HTTP_TOKEN")
        .output()
        .expect("run consul");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `consul info`'s sections as key sets, and the values one single-node server must share.
fn info_view(out: &str) -> Value {
    let mut sections: std::collections::BTreeMap<
        String,
        std::collections::BTreeMap<String, String>,
    > = Default::default();
    let mut current = String::new();
    for line in out.lines() {
        if let Some(name) = line.strip_suffix(':').filter(|_| !line.starts_with('\t')) {
            current = name.to_string();
            sections.entry(current.clone()).or_default();
        } else if let Some((k, v)) = line.trim().split_once(" = ") {
            sections
                .entry(current.clone())
                .or_default()
                .insert(k.to_string(), v.to_string());
        } else if let Some(k) = line.trim().strip_suffix(" =") {
            sections
                .entry(current.clone())
                .or_default()
                .insert(k.to_string(), String::new());
        }
    }
    let keys = |s: &str| -> Vec<String> {
        sections
            .get(s)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    };
    let val = |s: &str, k: &str| -> String {
        sections
            .get(s)
            .and_then(|m| m.get(k))
            .cloned()
            .unwrap_or_default()
    };
    json!({
        // Go's runtime and serf's WAN pool have no counterpart on the embedded server.
        "sections served": (["agent", "build", "consul", "raft", "runtime", "serf_lan"].iter().map(|s| sections.contains_key(*s)).collect::<Vec<_>>()),
        "agent keys": keys("agent"),
        "consul keys": keys("consul"),
        "raft keys": keys("raft"),
        "serf_lan keys": keys("serf_lan"),
        "single leader": (["acl", "bootstrap", "known_datacenters", "leader", "server"].iter().map(|k| val("consul", k)).collect::<Vec<_>>()),
        "raft": (["state", "num_peers", "protocol_version"].iter().map(|k| val("raft", k)).collect::<Vec<_>>()),
        "leader_addr is the raft port": val("consul", "leader_addr").ends_with(":8300"),
        "serf": (["members", "failed", "left", "encrypted"].iter().map(|k| val("serf_lan", k)).collect::<Vec<_>>()),
        "version": val("build", "version"),
        "runtime has os and arch": !val("runtime", "os").is_empty() && !val("runtime", "arch").is_empty(),
    })
}

/// `consul info`, `consul catalog datacenters`, `consul reload` and `consul operator raft
/// list-peers` work against the embedded server and print what they print against Consul
/// 1.8.7 (where a single node's figures must agree).
#[test]
fn consul_info_datacenters_reload_and_raft_peers_match_real_consul() {
    let real = ConsulDev::start();
    let dev = Single::start(Backend::Dev, &[]);
    let mut seen = Vec::new();
    for (addr, node, ip) in [
        (real.addr(), real.node.clone(), real.ip.clone()),
        (dev.addr(), dev.node.clone(), dev.ip.clone()),
    ] {
        let (code, info, err) = consul_cli(&addr, &["info"]);
        assert_eq!(code, 0, "consul info against {addr}: {err}");
        let (code, dcs, err) = consul_cli(&addr, &["catalog", "datacenters"]);
        assert_eq!(code, 0, "{err}");
        let (code, reload, err) = consul_cli(&addr, &["reload"]);
        assert_eq!(code, 0, "{err}");
        let (code, peers, err) = consul_cli(&addr, &["operator", "raft", "list-peers"]);
        assert_eq!(code, 0, "{err}");
        // One row: this node, its Raft address, leader, voter, protocol 3.
        let rows: Vec<Vec<String>> = peers
            .lines()
            .map(|l| {
                l.split_whitespace()
                    .map(|w| {
                        if w == node {
                            "NODE".to_string()
                        } else if w == format!("{ip}:8300") {
                            "ADDR".to_string()
                        } else if w.len() == 36 && w.matches('-').count() == 4 {
                            "UUID".to_string()
                        } else {
                            w.to_string()
                        }
                    })
                    .collect()
            })
            .collect();
        seen.push(json!({
            "info": info_view(&info),
            "datacenters": dcs,
            "reload": reload,
            "peers": rows,
        }));
    }
    assert_eq!(
        seen[0], seen[1],
        "\nreal consul: {:#}\nembedded:    {:#}",
        seen[0], seen[1]
    );
    assert_eq!(seen[1]["datacenters"], "dc1\n");
    assert_eq!(
        seen[1]["peers"][1],
        json!(["NODE", "UUID", "ADDR", "leader", "true", "3"])
    );
}

/// `consul maint` for the node and for a service, against both backends: the same output, the
/// same maintenance checks (critical, with the reason), health endpoints that then leave the
/// node's or the service's instances out, and the same errors.
fn scenario_maint(addr: &str, node: &str) -> Vec<(String, Value)> {
    let h = Http::new(addr);
    let mut out: Vec<(String, Value)> = Vec::new();
    let fields = [
        "CheckID",
        "Name",
        "Status",
        "Notes",
        "ServiceID",
        "ServiceName",
        "ServiceTags",
        "Type",
        "Service",
        "Checks",
        "ID",
    ];
    let reg = json!({"ID": "web1", "Name": "web", "Tags": ["v1"], "Port": 8080,
        "Check": {"TTL": "1h", "Status": "passing"}});
    assert_eq!(h.put("/v1/agent/service/register", reg.to_string()).0, 200);
    let cli = |args: &[&str]| {
        let (code, o, e) = consul_cli(addr, args);
        json!([code, o.replace(node, "NODE"), e.replace(node, "NODE")])
    };
    // Consul's agent copies its checks to the catalog a moment later: wait for `want`.
    let settle = |path: &str, want: &dyn Fn(&Value) -> bool| -> Value {
        wait_for(&format!("{path} on {addr}"), T, || {
            let v = h.get_json(path)?;
            want(&v).then_some(v)
        })
    };
    let instances = |v: &Value| v.as_array().map(|a| a.len()).unwrap_or(99);
    settle("/v1/health/service/web?passing", &|v| instances(v) == 1);
    out.push(("no maintenance".into(), cli(&["maint"])));
    out.push((
        "enable node".into(),
        cli(&["maint", "-enable", "-reason", "disk swap"]),
    ));
    out.push((
        "enable service".into(),
        cli(&["maint", "-enable", "-service", "web1", "-reason", "upgrade"]),
    ));
    out.push((
        "enable again keeps the first reason".into(),
        cli(&["maint", "-enable", "-reason", "other"]),
    ));
    // `consul maint` lists the checks of a Go map, in no fixed order: compare the entries.
    let listing = {
        let (code, o, e) = consul_cli(addr, &["maint"]);
        let mut entries: Vec<String> = o
            .replace(node, "NODE")
            .split("\n\n")
            .map(str::to_string)
            .collect();
        entries.sort();
        json!([code, entries, e])
    };
    out.push(("listing".into(), listing));
    out.push((
        "unknown service".into(),
        cli(&["maint", "-enable", "-service", "nope"]),
    ));
    let checks = h.get_json("/v1/agent/checks").unwrap_or_default();
    out.push((
        "agent checks".into(),
        project(
            &json!([
                checks["_node_maintenance"],
                checks["_service_maintenance:web1"]
            ]),
            &fields,
        ),
    ));
    let passing = settle("/v1/health/service/web?passing", &|v| instances(v) == 0);
    out.push(("passing instances".into(), passing));
    let all = settle("/v1/health/service/web", &|v| {
        v[0]["Checks"].as_array().map(|c| c.len()) == Some(4)
    });
    out.push((
        "instance checks".into(),
        project(&all[0]["Checks"], &fields),
    ));
    let critical = settle("/v1/health/state/critical", &|v| instances(v) == 2);
    out.push(("critical".into(), project(&critical, &fields)));
    out.push((
        "node health".into(),
        project(
            &settle(&format!("/v1/health/node/{node}"), &|v| instances(v) == 4),
            &fields,
        ),
    ));
    out.push(("bad enable value".into(), {
        let (st, b) = h.put("/v1/agent/maintenance?enable=yes", "");
        json!([st, b])
    }));
    out.push(("missing enable".into(), {
        let (st, b) = h.put("/v1/agent/service/maintenance/web1", "");
        json!([st, b])
    }));
    out.push(("disable node".into(), cli(&["maint", "-disable"])));
    out.push((
        "disable service".into(),
        cli(&["maint", "-disable", "-service", "web1"]),
    ));
    out.push(("listing after".into(), cli(&["maint"])));
    settle("/v1/health/service/web?passing", &|v| instances(v) == 1);
    out.push((
        "no maintenance check left".into(),
        json!(h
            .get_json("/v1/agent/checks")
            .and_then(|c| c.as_object().map(|m| m.keys().any(|k| k.starts_with('_'))))),
    ));
    out
}

#[test]
fn consul_maint_matches_real_consul() {
    let real = ConsulDev::start();
    let dev = Single::start(Backend::Dev, &[]);
    let a = scenario_maint(&real.addr(), &real.node);
    let b = scenario_maint(&dev.addr(), &dev.node);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x, y, "\nreal consul: {x:?}\nembedded:    {y:?}");
    }
}

/// What the embedded server does not do is refused with a 501 whose text Consul's CLI prints,
/// not an empty 404: `consul force-leave`, `consul monitor`, `consul exec` (refused at its
/// `_rexec` event, so it cleans up and fails instead of reporting "0 / 0 node(s)"), and any
/// other `/v1/` path.
#[test]
fn unsupported_consul_commands_fail_with_a_clear_error() {
    let d = Single::start(Backend::Dev, &[]);
    let addr = d.addr();
    let (code, _, err) = consul_cli(&addr, &["force-leave", "somenode"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("Unexpected response code: 501")
            && err
                .contains("servant agent -dev does not support PUT /v1/agent/force-leave/somenode"),
        "{err}"
    );
    // `consul monitor` streams forever when it is served; refused, it ends at once.
    let mut monitor = Command::new(consul_bin())
        .arg("monitor")
        .env("CONSUL_HTTP_ADDR", &addr)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + T;
    while monitor.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = monitor.kill();
            panic!("consul monitor did not end");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = monitor.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("501") && err.contains("does not support GET /v1/agent/monitor"),
        "{err}"
    );
    let (code, out, err) = consul_cli(&addr, &["exec", "uptime"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(!out.contains("node(s)"), "{out}");
    assert!(
        err.contains("Failed to fire event")
            && err.contains("does not support remote execution (consul exec)")
            && err.contains("servant start"),
        "{err}"
    );
    // consul exec removed its session and its job spec on the way out.
    let h = d.http();
    wait_for("consul exec's cleanup", T, || {
        let sessions = h.get("/v1/session/list").1;
        let spec = h.get("/v1/kv/_rexec/?recurse").0;
        (!sessions.contains("Remote Exec") && spec == 404).then_some(())
    });
    // Any other API path: 501 in plain text; outside /v1/ Consul's empty 404.
    let r = reqwest::blocking::get(format!("http://{addr}/v1/acl/tokens")).unwrap();
    assert_eq!(r.status().as_u16(), 501);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "text/plain; charset=utf-8"
    );
    assert!(r
        .text()
        .unwrap()
        .starts_with("servant agent -dev does not support GET /v1/acl/tokens"));
    assert_eq!(h.get("/not-an-api").0, 404);
    // What it does serve still answers, and a user event other than `_rexec` still fires.
    assert_eq!(h.put("/v1/event/fire/deploy", "x").0, 200);
}
