//! The agent's JSON API against a real Consul: jobs that succeeded, failed, are running and are
//! queued for a node that does not exist, each listed and shown with its state; filters and
//! limits; nodes, apps, services, containers, trigger runs and the dashboard's event stream, each
//! with its shape; unknown paths and methods get 4xx JSON.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The row of `key` in a `/v1/jobs` answer.
fn row<'a>(list: &'a Value, key: &str) -> Option<&'a Value> {
    list["Jobs"]
        .as_array()?
        .iter()
        .find(|r| r["Key"].as_str() == Some(key))
}

#[test]
fn jobs_are_listed_and_shown_with_their_state() {
    let c = ConsulDev::start();
    let s = c.servant(&[]).ready();
    let h = c.http();
    let api = Http::new(&servant_api(&h));

    h.put("/v1/kv/jobs/ok", r#"{"Command":"echo hello api"}"#);
    h.put("/v1/kv/jobs/bad", r#"{"Command":"echo oops >&2; exit 3"}"#);
    h.put(
        "/v1/kv/jobs/long",
        r#"{"Command":"sleep 300","Timeout":600}"#,
    );
    // Nobody runs this node's queue: it stays queued.
    h.put("/v1/kv/queues/nosuch/waiting", r#"{"Command":"true"}"#);
    h.wait_result("jdone_jid/jobs/ok", T);
    h.wait_result("jdone_jid/jobs/bad", T);

    let list = wait_for("the long job running in /v1/jobs", T, || {
        let l = api.get_json("/v1/jobs")?;
        (row(&l, "jobs/long")?["State"] == "running").then_some(l)
    });
    let ok = row(&list, "jobs/ok").expect("jobs/ok listed");
    assert_eq!(ok["State"], "succeeded");
    assert_eq!(ok["Node"], c.node.as_str());
    assert_eq!(ok["ExitCode"], 0);
    let bad = row(&list, "jobs/bad").expect("jobs/bad listed");
    assert_eq!(bad["State"], "failed");
    assert_eq!(bad["ExitCode"], 3);
    let long = row(&list, "jobs/long").expect("jobs/long listed");
    assert_eq!(long["Node"], c.node.as_str(), "the holder's node");
    assert_eq!(long["Attempt"], 1);
    let waiting = row(&list, "queues/nosuch/waiting").expect("queued job listed");
    assert_eq!(waiting["State"], "queued");
    assert_eq!(waiting["Node"], "nosuch");
    assert_eq!(list["LeftOff"], 0);

    // Filters and the limit.
    let failed = api.get_json("/v1/jobs?state=failed").expect("state filter");
    let keys: Vec<&str> = failed["Jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["Key"].as_str())
        .collect();
    assert_eq!(keys, ["jobs/bad"]);
    let on_nosuch = api.get_json("/v1/jobs?node=nosuch").expect("node filter");
    assert_eq!(on_nosuch["Jobs"].as_array().unwrap().len(), 1);
    let one = api.get_json("/v1/jobs?limit=1").expect("limit");
    assert_eq!(one["Jobs"].as_array().unwrap().len(), 1);
    assert_eq!(one["LeftOff"], 3);

    // One job: the result with its output, or the live state.
    let v = api.get_json("/v1/jobs/jobs/ok").expect("jobs/ok shown");
    assert_eq!(v["State"], "done");
    assert_eq!(v["Result"]["Output"], "hello api\n");
    let v = api.get_json("/v1/jobs/jobs/bad").expect("jobs/bad shown");
    assert_eq!(v["Result"]["OutputErrors"], "oops\n");
    assert_eq!(v["Result"]["ExitCode"], 3);
    let v = api.get_json("/v1/jobs/jobs/long").expect("jobs/long shown");
    assert_eq!(v["State"], "running");
    assert_eq!(v["Node"], c.node.as_str());
    let v = api
        .get_json("/v1/jobs/queues/nosuch/waiting")
        .expect("queued job shown");
    assert_eq!(v["State"], "queued");

    // Errors: JSON with a reason and a 4xx status.
    for (path, status) in [
        ("/v1/jobs/jobs/none", 404),
        ("/v1/jobs/elsewhere/x", 400),
        ("/v1/jobs?state=sleeping", 400),
        ("/v1/jobs?limit=lots", 400),
        ("/v1/nowhere", 404),
    ] {
        let (code, body) = api.get(path);
        assert_eq!(code, status, "{path}: {body}");
        assert!(
            json(&body)["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{path}: {body}"
        );
    }
    let (code, body) = api.put("/v1/jobs", "{}");
    assert_eq!(code, 405, "{body}");
    assert!(json(&body)["error"].as_str().unwrap().contains("PUT"));

    drop(s);
}

#[test]
fn nodes_show_health_report_and_servant() {
    let c = ConsulDev::start();
    let cfg = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(cfg.path(), "[apps]\nreport_interval = \"1s\"\n").unwrap();
    let s = c
        .servant(&["--config", cfg.path().to_str().unwrap()])
        .ready();
    let api = Http::new(&servant_api(&c.http()));
    let nodes = wait_for("the node's report in /v1/nodes", T, || {
        let v = api.get_json("/v1/nodes")?;
        let n = v["Nodes"].as_array()?.first()?.clone();
        n["Resource"].is_object().then_some(v)
    });
    let list = nodes["Nodes"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{nodes}");
    let n = &list[0];
    assert_eq!(n["Node"], c.node.as_str());
    assert_eq!(n["Address"], c.ip.as_str());
    assert_eq!(n["SerfHealth"], "passing");
    assert_eq!(n["Servant"], true);
    assert!(n["Resource"]["cpu_processors"].as_u64().unwrap() >= 1);
    assert!(n["Resource"]["mem_total_bytes"].as_u64().unwrap() > 0);
    let (code, body) = api.delete("/v1/nodes");
    assert_eq!(code, 405, "{body}");
    drop(s);
}

#[test]
fn services_show_instances_and_health() {
    let c = ConsulDev::start();
    let s = c.servant(&[]).ready();
    let h = c.http();
    let api = Http::new(&servant_api(&h));
    let reg = format!(
        r#"{{"ID":"web1","Name":"web","Tags":["v1"],"Port":8080,"Address":"{}",
            "Check":{{"CheckID":"web1-ttl","TTL":"600s","Status":"warning"}}}}"#,
        c.ip
    );
    let (code, body) = h.put("/v1/agent/service/register", reg);
    assert_eq!(code, 200, "{body}");
    let v = wait_for("web in /v1/services", T, || {
        let v = api.get_json("/v1/services")?;
        v["Services"]
            .as_array()?
            .iter()
            .find(|s| s["Name"] == "web")
            .cloned()
    });
    assert_eq!(v["Tags"], serde_json::json!(["v1"]));
    assert_eq!(v["Status"], "warning");
    let i = &v["Instances"][0];
    assert_eq!(i["ID"], "web1");
    assert_eq!(i["Node"], c.node.as_str());
    assert_eq!(i["Port"], 8080);
    assert_eq!(i["Checks"]["web1-ttl"], "warning");
    assert_eq!(i["Checks"]["serfHealth"], "passing");
    // The servant's own service is listed too.
    let all = api.get_json("/v1/services").unwrap();
    assert!(all["Services"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["Name"] == "servant"));
    drop(s);
}

#[test]
fn apps_show_tasks_topology_states_and_unplaced() {
    let c = ConsulDev::start();
    let cfg = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(cfg.path(), "[apps]\nreport_interval = \"1s\"\n").unwrap();
    let s = c
        .servant(&["--config", cfg.path().to_str().unwrap()])
        .ready();
    let h = c.http();
    let api = Http::new(&servant_api(&h));
    // A sleep argument no other test uses, so the app's process is ours alone.
    let arg = (88_000 + std::process::id() % 1_000).to_string();
    let task =
        serde_json::json!({"replication": 2, "content": {"command": format!("exec sleep {arg}")}});
    let (code, body) = h.put("/v1/kv/appmgr/task/wide", task.to_string());
    assert_eq!(code, 200, "{body}");
    h.put("/v1/kv/appmgr/task/junk", "not json");
    let v = wait_for(
        "the app running and its unplaced replica in /v1/apps",
        T,
        || {
            let v = api.get_json("/v1/apps")?;
            let running = v["States"][c.node.as_str()]["wide"]["pid"].as_u64()? > 0;
            let unplaced = v["Schedule"]["unplaced"]
                .as_array()?
                .iter()
                .any(|u| u["task"] == "wide" && u["placed"] == 1);
            (running && unplaced).then_some(v)
        },
    );
    assert_eq!(v["Tasks"]["wide"]["Replication"], 2);
    assert_eq!(v["Tasks"]["wide"]["Content"], task["content"]);
    assert!(v["InvalidTasks"]["junk"].as_str().is_some(), "{v}");
    assert_eq!(v["Topology"][c.node.as_str()], serde_json::json!(["wide"]));
    assert_eq!(v["Schedule"]["leader"], c.node.as_str());
    h.delete("/v1/kv/appmgr/task/wide");
    wait_for("the app stopped", T, || {
        sleeps(&format!("sleep {arg}")).is_empty().then_some(())
    });
    drop(s);
}

#[test]
fn containers_lists_this_nodes_running_container() {
    let c = ConsulDev::start();
    // Declared before the agent, so dropped after it: the lab removes what is left.
    let lab = common::docker::ImageLab::new(&c.node);
    let s = c.servant(&[]).ready();
    let h = c.http();
    let api = Http::new(&servant_api(&h));
    h.put(
        "/v1/kv/jobs/ctr",
        serde_json::json!({"Type": "docker", "Image": lab.image, "Timeout": "5m",
            "Command": "while :; do sleep 1; done"})
        .to_string(),
    );
    let v = wait_for("the job's container in /v1/containers", T, || {
        let v = api.get_json("/v1/containers")?;
        v["Containers"]
            .as_array()?
            .iter()
            .any(|x| x["job"] == "jobs/ctr")
            .then_some(v)
    });
    assert_eq!(v["Node"], c.node.as_str());
    assert_eq!(v["Docker"], true);
    let x = v["Containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["job"] == "jobs/ctr")
        .unwrap();
    let id = lab.running("jobs/ctr").expect("the container runs");
    assert_eq!(x["id"], id.as_str(), "{x}");
    assert_eq!(x["image"], lab.image.as_str(), "{x}");
    assert!(x["memory_limit_bytes"].as_u64().unwrap_or(0) > 0, "{x}");
    drop(s);
}

#[test]
fn triggers_and_the_event_stream_have_their_shapes() {
    let c = ConsulDev::start();
    let s = c.servant(&[]).ready();
    let h = c.http();
    let addr = servant_api(&h);
    let api = Http::new(&addr);

    // A trigger run by hand is recorded in trigger_history/<node> and listed with its output.
    h.put(
        "/v1/kv/triggers/web/standalone/critical",
        "echo failing over @HOST",
    );
    let check = serde_json::json!({"Node": c.node, "CheckID": "service:web", "ServiceName": "web"});
    let (code, out, err) = cli(
        &c.addr(),
        &[
            "trigger",
            "--env",
            "test",
            "-s",
            &check.to_string(),
            "critical",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let v = wait_for("the run in /v1/triggers", T, || {
        let v = api.get_json("/v1/triggers")?;
        (!v["Runs"].as_array()?.is_empty()).then_some(v)
    });
    let run = &v["Runs"][0];
    assert_eq!(run["Node"], c.node.as_str(), "{v}");
    assert_eq!(run["Run"]["service"], "web");
    assert_eq!(run["Run"]["state"], "critical");
    assert_eq!(run["Run"]["key"], "triggers/web/standalone/critical");
    assert_eq!(run["Run"]["exit_code"], 0);
    assert_eq!(
        run["Run"]["output"],
        format!("failing over {}\n", c.node).as_str()
    );

    // The stream: a first event at once with the whole view, then one per change.
    h.put("/v1/kv/jobs/s1", r#"{"Command":"echo s1"}"#);
    h.wait_result("jdone_jid/jobs/s1", T);
    let resp = reqwest::blocking::Client::new()
        .get(format!("http://{addr}/v1/stream?view=jobs&limit=10"))
        .send()
        .expect("stream");
    assert_eq!(resp.status(), 200);
    assert!(resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .starts_with("text/event-stream"));
    let rx = sse_events(resp);
    let first: Value = json(&rx.recv_timeout(T).expect("a first event"));
    assert_eq!(first["Jobs"][0]["Key"], "jobs/s1", "{first}");
    assert_eq!(first["Counts"]["succeeded"], 1, "{first}");
    h.put("/v1/kv/jobs/s2", r#"{"Command":"echo s2"}"#);
    let with_s2 = wait_for("an event with s2 succeeded", T, || {
        let v: Value = json(&rx.recv_timeout(T).ok()?);
        let done = v["Jobs"]
            .as_array()?
            .iter()
            .any(|r| r["Key"] == "jobs/s2" && r["State"] == "succeeded");
        done.then_some(v)
    });
    assert_eq!(with_s2["Total"], 2, "{with_s2}");

    // Bad views and a job view without its key are 400 with the reason.
    for path in ["/v1/stream", "/v1/stream?view=nope", "/v1/stream?view=job"] {
        let (code, body) = api.get(path);
        assert_eq!(code, 400, "{path}: {body}");
        assert!(json(&body)["error"].as_str().is_some(), "{body}");
    }
    drop(s);
}
