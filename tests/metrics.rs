//! `/metrics` after a real workload on a real Consul: jobs that succeed, fail and time out, an
//! app that crashes twice before it stays up, a trigger run by a guard and a template rendered. The counters match
//! what happened (read back from the results, the apps report and the trigger history),
//! `promtool check metrics` accepts the page, and a real Prometheus scrapes the agent and
//! answers a PromQL query with the job count.

mod common;

use std::time::Duration;

use common::metrics::*;
use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(90);

/// The value of the unlabelled sample `name` in Prometheus text.
fn plain(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn counters_match_a_workload_of_jobs_app_restarts_and_triggers() {
    let c = ConsulDev::start();
    let h = c.http();
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("running");
    let cfg = dir.path().join("servant.toml");
    // One template the agent keeps rendered: one render written.
    let tmpl = dir.path().join("greeting.ctmpl");
    let out = dir.path().join("greeting.txt");
    std::fs::write(&tmpl, "{{ key \"greeting\" }}\n").unwrap();
    h.put("/v1/kv/greeting", "hi");
    let apps_and_template = format!(
        "[apps]\nreport_interval = \"1s\"\n\n[[template]]\nsource = \"{}\"\ndestination = \"{}\"\n",
        tmpl.display(),
        out.display()
    );
    std::fs::write(&cfg, apps_and_template + &guard_until_file(&flag)).unwrap();
    // The guard's check is critical until the trigger creates the flag: one run.
    h.put(
        "/v1/kv/triggers/test/web/standalone/critical",
        format!("touch {}", flag.display()),
    );
    let s = c.servant(&["--config", cfg.to_str().unwrap()]).ready();
    let api = servant_api(&h);

    // Jobs: 3 succeed, 2 fail, 1 times out.
    for i in 0..3 {
        h.put(&format!("/v1/kv/jobs/ok{i}"), r#"{"Command":"true"}"#);
    }
    for i in 0..2 {
        h.put(&format!("/v1/kv/jobs/bad{i}"), r#"{"Command":"exit 3"}"#);
    }
    h.put("/v1/kv/jobs/slow", r#"{"Command":"sleep 30","Timeout":1}"#);
    let mut statuses = Vec::new();
    for k in ["ok0", "ok1", "ok2", "bad0", "bad1", "slow"] {
        let r = h.wait_result(&format!("jdone_jid/jobs/{k}"), T);
        statuses.push(r["Status"].as_str().unwrap().to_string());
    }
    assert_eq!(
        statuses,
        [
            "succeeded",
            "succeeded",
            "succeeded",
            "failed",
            "failed",
            "timed_out"
        ]
    );

    // An app that exits at its first two starts and then stays up: two restarts.
    let count = dir.path().join("starts");
    let cmd = format!(
        "n=$(cat {c} 2>/dev/null || echo 0); echo $((n+1)) > {c}; [ $n -ge 2 ] && exec sleep 1000; exit 1",
        c = count.display()
    );
    let task = serde_json::json!({"content": {"name": "crashy", "command": cmd}, "replication": 1});
    h.put("/v1/kv/appmgr/task/crashy", task.to_string());
    let restarts = wait_for("the app up after two restarts", T, || {
        let v: Value =
            serde_json::from_str(&h.kv_raw(&format!("appmgr/status/{}/applications", c.node))?)
                .ok()?;
        let a = &v["crashy"];
        (a["pid"].as_u64()? > 0 && a["restarts"].as_u64()? >= 2).then(|| a["restarts"].as_u64())?
    });
    assert_eq!(restarts, 2);

    // The trigger ran once.
    wait_for("the trigger's flag", T, || flag.exists().then_some(()));
    let history: Value = serde_json::from_str(&wait_for("the trigger history", T, || {
        h.kv_raw(&format!("trigger_history/{}", c.node))
    }))
    .unwrap();
    assert_eq!(history.as_array().unwrap().len(), 1, "{history}");

    wait_for("the template rendered", T, || {
        (std::fs::read_to_string(&out).ok()? == "hi\n").then_some(())
    });
    let url = format!("http://{api}/metrics");
    let text = wait_for("the apps gauge and the trigger counter", T, || {
        let (_, t) = get_metrics(&url, None);
        (gauge(&t, "servant_apps", "state=\"healthy\"") == Some(1.0)
            && gauge(&t, "servant_trigger_runs_total", "outcome=\"succeeded\"").is_some())
        .then_some(t)
    });
    let count = |status: &str| gauge(&text, "servant_jobs_total", &format!("status=\"{status}\""));
    assert_eq!(count("succeeded"), Some(3.0), "{text}");
    assert_eq!(count("failed"), Some(2.0), "{text}");
    assert_eq!(count("timed_out"), Some(1.0), "{text}");
    assert_eq!(plain(&text, "servant_jobs_running"), Some(0.0), "{text}");
    assert_eq!(
        plain(&text, "servant_job_duration_seconds_count"),
        Some(6.0),
        "{text}"
    );
    assert_eq!(
        plain(&text, "servant_app_restarts_total"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        gauge(
            &text,
            "servant_trigger_runs_total",
            "state=\"critical\",outcome=\"succeeded\""
        ),
        Some(1.0),
        "{text}"
    );
    // Every claim and every result is a transaction; the job listings are KV reads.
    let txns = gauge(
        &text,
        "servant_consul_requests_total",
        "part=\"jobs\",endpoint=\"txn\",outcome=\"ok\"",
    )
    .unwrap_or(0.0);
    assert!(
        txns >= 12.0,
        "6 claims and 6 results, {txns} transactions:\n{text}"
    );
    assert!(
        gauge(
            &text,
            "servant_consul_response_bytes_total",
            "endpoint=\"kv\""
        )
        .unwrap_or(0.0)
            > 0.0,
        "{text}"
    );
    for name in [
        "servant_consul_requests_total",
        "servant_consul_response_bytes_total",
        "servant_jobs_total",
        "servant_jobs_running",
        "servant_job_claim_seconds",
        "servant_job_duration_seconds",
        "servant_claim_conflicts_total",
        "servant_fenced_total",
        "servant_apps",
        "servant_app_restarts_total",
        "servant_trigger_runs_total",
        "servant_template_renders_total",
        "servant_session_renewals_total",
        "servant_registrator_services",
        "servant_build_info",
    ] {
        // The classic text format names a counter's HELP and TYPE with its `_total`.
        assert!(
            text.contains(&format!("# HELP {name} ")) && text.contains(&format!("# TYPE {name} ")),
            "{name} has no HELP or TYPE:\n{text}"
        );
    }
    assert!(
        !text.contains("ok0") && !text.contains("jobs/"),
        "a job ID in a label:\n{text}"
    );
    promtool_check(&text);

    // A real Prometheus scrapes the agent; PromQL gives the job count.
    let (_prom, prom_addr) = prometheus(&c.ip, &api, dir.path());
    let ph = Http::new(&prom_addr);
    let q = "/api/v1/query?query=sum(servant_jobs_total)";
    let total = wait_for("Prometheus' sum of servant_jobs_total", T, || {
        let (_, body) = ph.try_get(q)?;
        let v: Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1]
            .as_str()?
            .parse::<f64>()
            .ok()
    });
    assert_eq!(total, 6.0);
    drop(s);
}
