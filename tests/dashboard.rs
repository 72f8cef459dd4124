//! The dashboard (`/ui/`) in headless Chromium, driven over the DevTools protocol, against real
//! agents: `servant agent -dev`, a 3-node loopback cluster and an ACL-enabled Consul. Every test
//! keeps screenshots in `target/tmp/screenshots/` (look at them).

mod common;

use std::time::Duration;

use common::browser::{Browser, Page};
use common::cluster::Cluster;
use common::*;
use serde_json::json;

const T: Duration = Duration::from_secs(60);

/// Navigates to `url` and waits for the new page's first render, then marks its JS context, so
/// a test can tell a live update from a reload.
fn goto(b: &mut Browser, p: &Page, url: &str) {
    b.navigate(p, url);
    b.wait_js(
        p,
        &format!("the page {url} rendered"),
        T,
        &format!(
            "location.href === {url:?} && document.body.dataset.updated !== undefined && typeof window.servantStream === 'object'"
        ),
    );
    b.eval(p, "window.__notReloaded = true");
}

fn still_same_page(b: &mut Browser, p: &Page) {
    assert_eq!(
        b.eval(p, "window.__notReloaded === true"),
        json!(true),
        "the page was reloaded"
    );
}

/// Whether a `sleep <arg>` process runs on this machine (the tests' sleeps have unique lengths).
fn sleeping(arg: &str) -> bool {
    let want = format!("sleep\0{arg}\0");
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten().any(|e| {
                std::fs::read(e.path().join("cmdline"))
                    .map(|c| c == want.as_bytes())
                    .unwrap_or(false)
            })
        })
        .unwrap_or(false)
}

fn state_of_row(key: &str) -> String {
    format!(
        "(() => {{ const r = [...document.querySelectorAll('tr[data-key]')].find(r => r.dataset.key === {key:?}); return r ? r.dataset.state : null; }})()"
    )
}

#[test]
fn dev_dashboard_lists_the_node_follows_jobs_live_and_submits_from_its_form() {
    let s = Single::start(Backend::Dev, &[]);
    let h = s.http();
    let api = servant_api(&h);
    let ui = format!("http://{api}/ui/");
    let mut b = Browser::start();

    // The overview lists the node, healthy, with its servant.
    let p = b.open(&ui, 1280, 900);
    b.wait_js(
        &p,
        "the node on the overview",
        T,
        &format!(
            "(() => {{ const r = document.querySelector('tr[data-node={:?}]'); return r && r.querySelector('[data-state=passing]') && r.textContent.includes('yes'); }})()",
            s.node
        ),
    );
    b.screenshot(&p, "dev-overview");

    // A job submitted with curl appears on the jobs page without a reload, and its result too.
    goto(&mut b, &p, &format!("{ui}jobs"));
    h.put(
        "/v1/kv/jobs/dash1",
        r#"{"Command":"echo first line; sleep 2; echo from-dash1"}"#,
    );
    b.wait_js(&p, "dash1 listed", T, &state_of_row("jobs/dash1"));
    b.wait_js(
        &p,
        "dash1 succeeded on the page",
        T,
        &format!("{} === 'succeeded'", state_of_row("jobs/dash1")),
    );
    still_same_page(&mut b, &p);
    b.screenshot(&p, "dev-jobs");

    // A running job's page follows its log, then shows its result, without a reload.
    h.put(
        "/v1/kv/jobs/dash2",
        r#"{"Command":"echo started-dash2; sleep 3; echo ended-dash2"}"#,
    );
    goto(&mut b, &p, &format!("{ui}job?key=jobs/dash2"));
    b.wait_js(
        &p,
        "dash2's live output while it runs",
        T,
        "(() => { const o = document.querySelector('#stdout'); return o && o.textContent.includes('started-dash2') && document.querySelector('[data-state=running]'); })()",
    );
    b.screenshot(&p, "dev-job-running");
    b.wait_js(
        &p,
        "dash2's whole output once it ends",
        T,
        "(() => { const o = document.querySelector('#stdout'); return o && o.textContent.includes('ended-dash2') && document.querySelector('[data-state=succeeded]'); })()",
    );
    still_same_page(&mut b, &p);
    b.screenshot(&p, "dev-job-done");

    // A job submitted from the form runs and its result shows.
    goto(&mut b, &p, &format!("{ui}jobs"));
    b.eval(
        &p,
        "(() => { const f = document.querySelector('#submit-form'); f.command.value = 'echo from-the-form'; f.requestSubmit(); })()",
    );
    let key = b.wait_js(
        &p,
        "the form's answer",
        T,
        "(() => { const a = document.querySelector('[data-queued]'); return a ? a.dataset.queued : null; })()",
    );
    let key = key.as_str().expect("a job key").to_string();
    b.wait_js(
        &p,
        "the form's job succeeded",
        T,
        &format!("{} === 'succeeded'", state_of_row(&key)),
    );
    let r = h.wait_result(&format!("jdone_jid/{key}"), T);
    assert_eq!(r["Output"], "from-the-form\n", "{r}");
    b.screenshot(&p, "dev-jobs-form");

    // A running job is stopped from its page: its process ends and its result says why.
    h.put(
        "/v1/kv/jobs/dash3",
        r#"{"Command":"sleep 301","Timeout":600}"#,
    );
    goto(&mut b, &p, &format!("{ui}job?key=jobs/dash3"));
    b.wait_js(
        &p,
        "dash3 running with a stop button",
        T,
        "document.querySelector('#stop-job') !== null && document.querySelector('[data-state=running]') !== null",
    );
    wait_for("dash3's sleep running", T, || sleeping("301").then_some(()));
    b.eval(&p, "document.querySelector('#stop-job').click()");
    b.wait_js(
        &p,
        "dash3 failed as stopped on its page",
        T,
        "document.querySelector('[data-state=failed]') !== null && document.querySelector('main').textContent.includes('stopped')",
    );
    b.screenshot(&p, "dev-job-stopped");
    let r = h.wait_result("jdone_jid/jobs/dash3", T);
    assert_eq!(r["Status"], "failed", "{r}");
    assert!(
        r["ExitErrors"].as_str().unwrap().starts_with("stopped"),
        "{r}"
    );
    assert!(!sleeping("301"), "the stopped job's process still runs");

    // A task is put and removed from the apps page.
    goto(&mut b, &p, &format!("{ui}apps"));
    b.wait_js(
        &p,
        "the task form",
        T,
        "document.querySelector('#task-form') !== null",
    );
    b.eval(
        &p,
        r#"(() => { const f = document.querySelector('#task-form'); f.name.value = 'webapp'; f.body.value = '{"content":{"name":"webapp","command":"sleep 302"},"replication":1}'; f.requestSubmit(); })()"#,
    );
    b.wait_js(
        &p,
        "webapp healthy on the topology",
        T,
        &format!(
            "document.querySelector('tr[data-host={:?}] [data-state=healthy]') !== null",
            s.node
        ),
    );
    assert!(sleeping("302"), "the app's process runs");
    b.screenshot(&p, "dev-apps-task");
    b.eval(&p, "document.querySelector('#task-rm').click()");
    b.wait_js(
        &p,
        "webapp gone from the page",
        T,
        "!document.querySelector('main').textContent.includes('webapp') || document.querySelector('#task-box .msg.ok') !== null && document.querySelector('tr[data-host]') === null",
    );
    wait_for("the app's process stopped", T, || {
        (!sleeping("302")).then_some(())
    });
    assert!(h.kv_raw("appmgr/task/webapp").is_none());

    // A narrow window: the overview still fits.
    let narrow = b.open(&ui, 420, 900);
    b.wait_js(
        &narrow,
        "the node on a narrow overview",
        T,
        &format!(
            "document.querySelector('tr[data-node={:?}]') !== null",
            s.node
        ),
    );
    let fits = b.eval(
        &narrow,
        "document.documentElement.scrollWidth <= window.innerWidth + 1",
    );
    b.screenshot(&narrow, "dev-overview-narrow");
    assert_eq!(fits, json!(true), "the page scrolls sideways at 420 px");

    // The other pages render their data.
    for page in ["apps", "services", "triggers", "containers"] {
        goto(&mut b, &p, &format!("{ui}{page}"));
        b.screenshot(&p, &format!("dev-{page}"));
    }
}

#[test]
fn a_cross_site_post_is_refused() {
    let s = Single::start(Backend::Dev, &[]);
    let h = s.http();
    let api = servant_api(&h);
    let mut b = Browser::start();
    // A page of another origin (a data: URL) posts a form to the agent: no marker header, a
    // foreign origin, a form's content type.
    let form = format!(
        "data:text/html,<form id=f method=post enctype=text/plain action='http://{api}/v1/jobs'><input name='{{\"Command\":\"touch /tmp/x\",\"x\":\"' value='\"}}'></form><script>document.getElementById('f').submit()</script>"
    );
    let p = b.open(&form, 800, 600);
    let text = b.wait_js(
        &p,
        "the agent's answer to the cross-site form",
        T,
        "document.location.href.startsWith('http') && document.body && document.body.innerText",
    );
    assert!(
        text.as_str()
            .unwrap_or("")
            .contains("cross-site request refused"),
        "{text}"
    );
    b.screenshot(&p, "cross-site-refused");
    // Nothing was queued (the agent's folder key `jobs/` aside).
    let (code, body) = h.get("/v1/kv/jobs/?keys");
    assert!(
        code == 404 || body == "[]" || body == r#"["jobs/"]"#,
        "a job was queued: {body}"
    );

    // The same from curl: a foreign Origin, or no marker header, is refused; the marker passes.
    let api = Http::new(&api);
    let post = |headers: &[(&str, &str)]| {
        let mut all = vec![("Content-Type", "application/json")];
        all.extend_from_slice(headers);
        api.send("POST", "/v1/jobs", r#"{"Command":"echo curl"}"#, &all)
    };
    let (code, body) = post(&[
        ("X-Servant-Request", "1"),
        ("Origin", "http://evil.example"),
    ]);
    assert_eq!(code, 403, "{body}");
    let (code, body) = post(&[]);
    assert_eq!(code, 403, "{body}");
    let (code, body) = post(&[("X-Servant-Request", "1")]);
    assert_eq!(code, 201, "{body}");
    let key = serde_json::from_str::<serde_json::Value>(&body).unwrap()["Keys"][0]
        .as_str()
        .unwrap()
        .to_string();
    let r = h.wait_result(&format!("jdone_jid/{key}"), T);
    assert_eq!(r["Output"], "curl\n");
}

#[test]
fn cluster_overview_lists_every_node_and_a_killed_node_turns_unhealthy() {
    let mut c = Cluster::start();
    let h = c.http(0);
    // The first node's agent serves the page.
    let api = format!(
        "{}:{}",
        c.nodes[0].ip,
        wait_for("node1's servant service", T, || {
            let v = h.get_json("/v1/catalog/service/servant")?;
            v.as_array()?.iter().find(|s| s["Node"] == "node1")?["ServicePort"].as_u64()
        })
    );
    let mut b = Browser::start();
    let p = b.open(&format!("http://{api}/ui/"), 1280, 900);
    let every = c
        .names()
        .iter()
        .map(|n| format!("document.querySelector('tr[data-node={n:?}] [data-state=passing]')"))
        .collect::<Vec<_>>()
        .join(" && ");
    b.wait_js(&p, "every node passing on the overview", T, &every);
    b.eval(&p, "window.__notReloaded = true");
    b.screenshot(&p, "cluster-overview");

    c.sigkill(2);
    let killed = std::time::Instant::now();
    b.wait_js(
        &p,
        "node3 critical on the overview",
        T,
        "document.querySelector('tr[data-node=\"node3\"] [data-state=critical]') !== null",
    );
    let took = killed.elapsed();
    still_same_page(&mut b, &p);
    b.screenshot(&p, "cluster-node3-killed");
    eprintln!("node3 turned critical on the page {took:?} after SIGKILL");
}

const ROOT: &str = "d1c2b3a4-0000-4000-8000-0000000000aa";

#[test]
fn with_acls_a_write_needs_the_callers_token_and_runs_with_it() {
    let hcl = format!(
        r#"acl {{ enabled = true, default_policy = "deny", down_policy = "extend-cache", tokens {{ master = "{ROOT}", agent = "{ROOT}" }} }}"#
    );
    let c = ConsulDev::start_with(&["-hcl", &hcl], Some(ROOT));
    let admin = c.http().with_token(ROOT);
    let _s = Servant::start(&c.addr(), &c.ip, &[], &[("CONSUL_HTTP_TOKEN", ROOT)]).ready();
    // A viewer may read but not write jobs; an operator may queue them.
    let mut tokens = Vec::new();
    for (name, rules) in [
        ("viewer", r#"key_prefix "" { policy = "read" }"#),
        ("operator", r#"key_prefix "jobs/" { policy = "write" }"#),
    ] {
        let (st, body) = admin.put(
            "/v1/acl/policy",
            json!({"Name": name, "Rules": rules}).to_string(),
        );
        assert_eq!(st, 200, "{body}");
        let (st, body) = admin.put(
            "/v1/acl/token",
            json!({"Policies": [{"Name": name}]}).to_string(),
        );
        assert_eq!(st, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        tokens.push(v["SecretID"].as_str().unwrap().to_string());
    }
    let api_addr = servant_api(&admin);
    let api = Http::new(&api_addr);
    let post = |token: Option<&str>, id: &str| {
        let mut hs = vec![
            ("Content-Type", "application/json"),
            ("X-Servant-Request", "1"),
        ];
        if let Some(t) = token {
            hs.push(("X-Consul-Token", t));
        }
        api.send(
            "POST",
            "/v1/jobs",
            &json!({"ID": id, "Command": "echo acl"}).to_string(),
            &hs,
        )
    };
    let (code, body) = post(None, "acl0");
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("needs your Consul ACL token"), "{body}");
    let (code, body) = post(Some(&tokens[0]), "acl1");
    assert_eq!(code, 403, "the viewer's token may not write: {body}");
    let (code, body) = post(Some(&tokens[1]), "acl2");
    assert_eq!(code, 201, "{body}");
    let r = admin.wait_result("jdone_jid/jobs/acl2", T);
    assert_eq!(r["Output"], "acl\n");
    for id in ["acl0", "acl1"] {
        assert!(admin.kv_raw(&format!("jobs/{id}")).is_none());
    }

    // The dashboard's form without a token says why it was refused.
    let mut b = Browser::start();
    let p = b.open(&format!("http://{api_addr}/ui/jobs"), 1280, 900);
    b.wait_js(
        &p,
        "the jobs page",
        T,
        "document.querySelector('#submit-form') !== null",
    );
    b.eval(
        &p,
        "(() => { const f = document.querySelector('#submit-form'); f.command.value = 'echo no-token'; f.requestSubmit(); })()",
    );
    let msg = b.wait_js(
        &p,
        "the refusal on the page",
        T,
        "(() => { const m = document.querySelector('#submit-box .msg.bad'); return m ? m.textContent : null; })()",
    );
    assert!(msg.as_str().unwrap().contains("ACL token"), "{msg}");
    b.screenshot(&p, "acl-no-token");
    // With the operator's token saved in the page, the form's job runs.
    b.eval(
        &p,
        &format!(
            "(() => {{ sessionStorage.setItem('servant-token', {:?}); const f = document.querySelector('#submit-form'); f.command.value = 'echo with-token'; f.requestSubmit(); }})()",
            tokens[1]
        ),
    );
    let key = b.wait_js(
        &p,
        "the form's job queued",
        T,
        "(() => { const a = document.querySelector('[data-queued]'); return a ? a.dataset.queued : null; })()",
    );
    let r = admin.wait_result(&format!("jdone_jid/{}", key.as_str().unwrap()), T);
    assert_eq!(r["Output"], "with-token\n");
}
