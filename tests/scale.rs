//! Issue 15: what a node asks of Consul must not grow with the queue or with unrelated activity.
//! Each test reads the agent's own counters (`servant_consul_requests_total` and
//! `servant_consul_response_bytes_total`, by part and endpoint) before and after the load.
//! These are counts of requests and bytes, not speeds.

mod common;

use std::time::Duration;

use common::metrics::get_metrics;
use common::*;
use serde_json::json;

const T: Duration = Duration::from_secs(60);

/// The sum of every sample of `name` whose labels contain all of `labels`.
fn sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn metrics(api: &str) -> String {
    get_metrics(&format!("http://{api}/metrics"), None).1
}

/// Requests of one part of the agent to Consul, every endpoint.
fn part_requests(api: &str, part: &str) -> f64 {
    sum(
        &metrics(api),
        "servant_consul_requests_total",
        &[&format!("part=\"{part}\"")],
    )
}

/// The job worker's requests to Consul (every endpoint) and its KV answer bytes.
fn jobs_load(api: &str) -> (f64, f64) {
    let text = metrics(api);
    (
        sum(&text, "servant_consul_requests_total", &["part=\"jobs\""]),
        sum(
            &text,
            "servant_consul_response_bytes_total",
            &["part=\"jobs\"", "endpoint=\"kv\""],
        ),
    )
}

/// Every node used to re-read the whole `jobs/` queue, values included, on every change to it:
/// with a queue of Q big documents, each submit, claim and result cost Q documents. Now the
/// worker follows the key names and reads a document when it is about to claim it.
fn each_queued_job_document_is_read_about_once(b: Backend) {
    let c = Single::start(b, &["--max-parallel", "1"]);
    let h = c.http();
    let api = servant_api(&h);
    let (_, bytes0) = jobs_load(&api);
    let pad = "x".repeat(30 * 1024);
    let n = 30;
    for i in 0..n {
        let doc = json!({"Command": "sleep 0.05", "Env": {"PAD": pad}}).to_string();
        assert_eq!(h.put(&format!("/v1/kv/jobs/big{i}"), doc).0, 200);
    }
    for i in 0..n {
        let r = h.wait_result(&format!("jdone_jid/jobs/big{i}"), T);
        assert_eq!(r["Status"], "succeeded", "{r}");
    }
    let (_, bytes1) = jobs_load(&api);
    let docs = (n * pad.len()) as f64;
    let read = bytes1 - bytes0;
    // Base64 makes a document 4/3 larger on the wire; a few re-reads (a lost answer, a resync)
    // are allowed. Reading the queue at every change would be about n/2 times the documents.
    assert!(
        read < 3.0 * docs,
        "the worker read {read} bytes of KV for {docs} bytes of job documents"
    );
}

/// A watch of an empty prefix (or a missing key) is answered with the whole KV table's index,
/// so it woke at every write anywhere: an idle worker made a request per unrelated write, and so
/// did an apps node with nothing placed on it.
fn unrelated_writes_do_not_wake_the_job_worker_or_the_apps_node(b: Backend) {
    let c = Single::start(b, &[]);
    let h = c.http();
    let api = servant_api(&h);
    // Start-up reads settle first (the folder keys, the first resync).
    std::thread::sleep(Duration::from_secs(2));
    let (req0, _) = jobs_load(&api);
    let apps0 = part_requests(&api, "apps");
    for i in 0..200 {
        assert_eq!(h.put(&format!("/v1/kv/elsewhere/k{i}"), "v").0, 200);
    }
    std::thread::sleep(Duration::from_secs(1));
    let (req1, _) = jobs_load(&api);
    let apps1 = part_requests(&api, "apps");
    assert!(
        req1 - req0 < 20.0,
        "200 writes outside jobs/ and queues/ cost the job worker {} requests",
        req1 - req0
    );
    // The apps node, with nothing placed on it and no tasks: its topology key is missing and
    // the tasks prefix empty, which it now reads at most every 500 ms.
    assert!(
        apps1 - apps0 < 20.0,
        "200 unrelated writes cost the apps node {} requests",
        apps1 - apps0
    );
    // And it still runs jobs.
    h.put("/v1/kv/jobs/after", r#"{"Command": "echo ok"}"#);
    assert_eq!(h.wait_result("jdone_jid/jobs/after", T)["Output"], "ok\n");
}

/// The worker found the live servants by listing every session in the cluster, at every
/// session created or destroyed anywhere. It now follows the `servant` service's health.
fn session_churn_does_not_wake_the_job_worker(b: Backend) {
    let c = Single::start(b, &[]);
    let h = c.http();
    let api = servant_api(&h);
    std::thread::sleep(Duration::from_secs(2));
    let (req0, _) = jobs_load(&api);
    for i in 0..30 {
        let (st, body) = h.put(
            "/v1/session/create",
            json!({"Name": format!("other{i}"), "TTL": "30s"}).to_string(),
        );
        assert_eq!(st, 200, "{body}");
        let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["ID"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(h.put(&format!("/v1/session/destroy/{id}"), "").0, 200);
    }
    std::thread::sleep(Duration::from_secs(1));
    let (req1, _) = jobs_load(&api);
    assert!(
        req1 - req0 < 10.0,
        "60 session changes cost the job worker {} requests",
        req1 - req0
    );
}

on_both!(
    each_queued_job_document_is_read_about_once,
    unrelated_writes_do_not_wake_the_job_worker_or_the_apps_node,
    session_churn_does_not_wake_the_job_worker,
);
