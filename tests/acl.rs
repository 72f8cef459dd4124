//! An ACL-enabled Consul: the agent works with a token limited to its prefixes and node, and
//! without a token it stops with a clear permission error.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const ROOT: &str = "b1c2d3e4-0000-4000-8000-00000000root";

#[test]
fn acl_token_limited_to_servant_prefixes_works_and_no_token_is_a_clear_error() {
    let root = ROOT.replace("root", "0001");
    let hcl = format!(
        r#"acl {{ enabled = true, default_policy = "deny", down_policy = "extend-cache", tokens {{ master = "{root}", agent = "{root}" }} }}"#
    );
    let c = ConsulDev::start_with(&["-hcl", &hcl], Some(&root));
    let admin = c.http().with_token(&root);
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
    let (st, body) = admin.put(
        "/v1/acl/policy",
        json!({"Name": "servant", "Rules": rules}).to_string(),
    );
    assert_eq!(st, 200, "{body}");
    let (st, body) = admin.put(
        "/v1/acl/token",
        json!({"Description": "servant agent", "Policies": [{"Name": "servant"}]}).to_string(),
    );
    assert_eq!(st, 200, "{body}");
    let token: serde_json::Value = serde_json::from_str(&body).unwrap();
    let secret = token["SecretID"].as_str().unwrap().to_string();

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
