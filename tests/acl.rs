//! An ACL-enabled Consul: the agent works with a token limited to its prefixes and node, and
//! without a token it stops with a clear permission error.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[test]
fn acl_token_limited_to_servant_prefixes_works_and_no_token_is_a_clear_error() {
    let (c, admin) = acl_consul("0001");
    let rules = format!(
        r#"
key_prefix "jobs/" {{ policy = "write" }}
key_prefix "queues/" {{ policy = "write" }}
key_prefix "jdone_jid/" {{ policy = "write" }}
session_prefix "" {{ policy = "read" }}
session "{node}" {{ policy = "write" }}
node_prefix "" {{ policy = "read" }}
agent "{node}" {{ policy = "read" }}
service "servant" {{ policy = "write" }}
"#,
        node = c.node
    );
    let (secret, _) = acl_token(&admin, "servant-agent", &rules);

    // Without a token: a clear error, and a non-zero exit.
    let mut bare = Servant::start(&c.addr(), &c.ip, &[], &[]);
    let st = bare
        .proc
        .wait_exit(Duration::from_secs(30))
        .expect("agent without a token exits");
    assert!(!st.success());
    let log = bare.proc.log_text();
    assert!(
        log.contains("permission denied") && log.contains("CONSUL_HTTP_TOKEN"),
        "{log}"
    );

    // With the limited token (from Consul's own variable).
    let _s = Servant::start(&c.addr(), &c.ip, &[], &[("CONSUL_HTTP_TOKEN", &secret)]).ready();
    let (st, _) = admin.put("/v1/kv/jobs/acl1", r#"{"Command": "echo allowed"}"#);
    assert_eq!(st, 200);
    let r = admin.wait_result("jdone_jid/jobs/acl1", Duration::from_secs(30));
    assert_eq!(r["Output"], "allowed\n");
    // The CLI takes the token by flag.
    let (code, out, err) = cli(
        &c.addr(),
        &[
            "--token",
            &secret,
            "start",
            "--wait",
            "-c",
            "echo by flag",
            "acl2",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "acl2\nby flag\n");
    // The limited token cannot touch other prefixes.
    let (code, _, err) = cli(
        &c.addr(),
        &["--token", &secret, "kv", "put", "other/key", "x"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("permission denied"), "{err}");
}

/// The HCL block the README puts after `<!-- acl-policy: NAME -->`, for node `node`.
fn readme_policy(name: &str, node: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let marker = format!("<!-- acl-policy: {name} -->");
    let after = &readme[readme
        .find(&marker)
        .unwrap_or_else(|| panic!("README has no {marker}"))..];
    let start = after
        .find("```hcl\n")
        .expect("an hcl block after the marker")
        + "```hcl\n".len();
    let len = after[start..].find("```").expect("the block's end");
    after[start..start + len].replace("\"node1\"", &format!("\"{node}\""))
}

/// Issue 16: the README's three least-privilege policies, read from the README itself, on an
/// ACL-enabled Consul: the agent runs jobs and apps with its policy and cannot write
/// `triggers/` or `appmgr/task/`; the operator submits jobs and apps and reads results and
/// logs; the viewer reads and cannot submit; a log read with no token is refused by the agent
/// API.
#[test]
fn the_readme_policies_give_each_party_what_it_needs() {
    let (c, admin) = acl_consul("0002");
    let mut tokens = std::collections::BTreeMap::new();
    let mut accessors = std::collections::BTreeMap::new();
    for name in ["agent", "operator", "viewer"] {
        let (secret, accessor) = acl_token(&admin, name, &readme_policy(name, &c.node));
        tokens.insert(name, secret);
        accessors.insert(name, accessor);
    }
    let (agent, operator, viewer) = (&tokens["agent"], &tokens["operator"], &tokens["viewer"]);
    let mut s = Servant::start(
        &c.addr(),
        &c.ip,
        &[],
        &[("CONSUL_HTTP_TOKEN", agent.as_str())],
    )
    .ready();
    let as_op = c.http().with_token(operator);
    let as_viewer = c.http().with_token(viewer);
    let as_agent = c.http().with_token(agent);

    // The operator submits a job and waits for it; the agent runs it.
    let (code, out, err) = cli(
        &c.addr(),
        &[
            "--token", operator, "start", "--wait", "-c", "echo op", "op1",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "op1\nop\n");
    // Its log: with a token that may read the job's key, and refused without one.
    let (code, out, err) = cli(&c.addr(), &["--token", operator, "logs", "op1"]);
    assert_eq!((code, out.as_str()), (0, "op\n"), "{err}");
    let (code, _, err) = cli(&c.addr(), &["--token", viewer, "logs", "op1"]);
    assert_eq!(code, 0, "the viewer may read jobs/: {err}");
    let api = servant_api(&admin);
    let (st, body) = Http::new(&api).get("/v1/logs?key=jobs/op1");
    assert_eq!(st, 401, "{body}");
    assert!(body.contains("ACLs are on"), "{body}");
    let (st, body) = Http::new(&api)
        .with_token(agent)
        .get("/v1/logs?key=jobs/op1");
    assert_eq!(st, 200, "the agent's own token reads jobs/: {body}");

    // A write through the agent API runs with the caller's token, and the agent logs whose
    // (the accessor ID, never the secret).
    let (st, body) = Http::new(&api).with_token(operator).send(
        "POST",
        "/v1/jobs",
        &json!({"ID": "op-api", "Command": "echo via api"}).to_string(),
        &[
            ("X-Servant-Request", "1"),
            ("Content-Type", "application/json"),
        ],
    );
    assert_eq!(st, 201, "{body}");
    let line = format!("token {} (operator)", accessors["operator"]);
    wait_for(
        "the write logged with its token",
        Duration::from_secs(10),
        || s.proc.log_text().contains(&line).then_some(()),
    );
    assert!(!s.proc.log_text().contains(operator.as_str()));

    // The viewer reads results, and cannot submit.
    assert_eq!(as_viewer.get("/v1/kv/jdone_jid/jobs/op1").0, 200);
    let (code, _, err) = cli(
        &c.addr(),
        &["--token", viewer, "start", "-c", "echo no", "v1"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("permission denied"), "{err}");
    assert_eq!(as_viewer.put("/v1/kv/jobs/v2", "{}").0, 403);
    assert_eq!(as_viewer.put("/v1/kv/appmgr/task/v3", "{}").0, 403);

    // The operator puts an app; the agent runs it and reports it.
    let (st, body) = as_op.put(
        "/v1/kv/appmgr/task/opapp",
        json!({"replication": 1, "content": {"command": "exec sleep 600"}}).to_string(),
    );
    assert_eq!(st, 200, "{body}");
    wait_for(
        "the operator's app running",
        Duration::from_secs(60),
        || {
            let v: serde_json::Value = serde_json::from_str(
                &as_viewer.kv_raw(&format!("appmgr/status/{}/applications", c.node))?,
            )
            .ok()?;
            (v["opapp"]["pid"].as_i64()? > 0).then_some(())
        },
    );
    assert_eq!(as_op.delete("/v1/kv/appmgr/task/opapp").0, 200);

    // The agent's token cannot write what makes other nodes run code.
    for key in [
        "triggers/web/standalone/critical",
        "appmgr/task/evil",
        "cluster/prod/web",
    ] {
        assert_eq!(
            as_agent.put(&format!("/v1/kv/{key}"), "touch /tmp/x").0,
            403,
            "the agent token wrote {key}"
        );
    }
    // `servant doctor` on the hardened setup: nothing open without a token, and the agent's
    // token writes only what an agent needs.
    let (code, out, err) = cli(&c.addr(), &["--token", agent, "doctor"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("findings: none"), "{out}");
    assert!(out.contains("ACLs on"), "{out}");
    // The operator's token may write appmgr/task/: as an agent's, that is a finding.
    let (code, out, _) = cli(&c.addr(), &["--token", operator, "doctor"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("token may write appmgr/task/"), "{out}");
    assert!(s.proc.alive(), "{}", s.proc.log_text());
}
