//! `servant template` against real Consul: `-once` renders the catalog and KV; a running
//! `servant template` follows a change within its wait window, runs its command only when the
//! output changed, keeps the last good file on a render error, and refuses `safeLs` of an
//! empty prefix.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const T: Duration = Duration::from_secs(30);

const TEMPLATE: &str = r#"upstream web {
  least_conn;
  {{- range service "web"}}
  server {{.Address}}:{{.Port}};
  {{- else}}
  server 127.0.0.1:65535;
  {{- end}}
}
# {{key "config/greeting"}}
"#;

fn register(h: &Http, id: &str, port: u16, status: &str) {
    h.put(
        "/v1/agent/service/register",
        json!({"ID": id, "Name": "web", "Port": port, "Address": "10.1.1.1",
               "Check": {"TTL": "600s", "Status": status}})
        .to_string(),
    );
}

#[test]
fn once_renders_healthy_instances_and_keys() {
    let c = ConsulDev::start();
    let h = c.http();
    register(&h, "web-1", 8001, "passing");
    register(&h, "web-2", 8002, "passing");
    register(&h, "web-3", 8003, "critical");
    h.put("/v1/kv/config/greeting", "hello");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("web.ctmpl");
    let out = dir.path().join("web.conf");
    std::fs::write(&src, TEMPLATE).unwrap();
    let (code, _, err) = render_once(&c.addr(), &src, &out, &[]);
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(
        text.contains("server 10.1.1.1:8001;") && text.contains("server 10.1.1.1:8002;"),
        "{text}"
    );
    assert!(
        !text.contains("8003"),
        "critical instances are left out: {text}"
    );
    assert!(text.contains("# hello"), "{text}");
    // -dry prints instead of writing.
    let other = dir.path().join("dry.conf");
    let (code, stdout, err) = render_once(&c.addr(), &src, &other, &["-dry"]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("server 10.1.1.1:8001;"), "{stdout}");
    assert!(!other.exists(), "-dry writes nothing");
    // A parse error names the line and writes nothing.
    std::fs::write(&src, "line one\n{{range service \"web\"}}\n").unwrap();
    let (code, _, err) = render_once(&c.addr(), &src, &out, &[]);
    assert_eq!(code, 1);
    assert!(err.contains(":2:"), "{err}");
}

#[test]
fn a_running_template_follows_the_catalog_and_reloads_only_on_change() {
    let c = ConsulDev::start();
    let h = c.http();
    register(&h, "web-1", 8001, "passing");
    h.put("/v1/kv/config/greeting", "v1");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("web.ctmpl");
    let out = dir.path().join("web.conf");
    let reloads = dir.path().join("reloads");
    std::fs::write(&src, TEMPLATE).unwrap();
    let cmd = format!("echo reload >> {}", reloads.display());
    let mut command = std::process::Command::new(servant_bin());
    command.args([
        "--http-addr",
        &c.addr(),
        "template",
        "-template",
        &format!("{}:{}:{cmd}", src.display(), out.display()),
        "-wait",
        "200ms:1s",
    ]);
    let _t = spawn_logged("servant template", &mut command, &dir.path().join("t.log"));
    let count = || {
        std::fs::read_to_string(&reloads)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    wait_for("first render", T, || {
        std::fs::read_to_string(&out)
            .ok()
            .filter(|t| t.contains(":8001;"))
    });
    wait_for("one reload", T, || (count() == 1).then_some(()));
    register(&h, "web-2", 8002, "passing");
    wait_for("the new instance rendered", T, || {
        std::fs::read_to_string(&out)
            .ok()
            .filter(|t| t.contains(":8002;"))
    });
    wait_for("a second reload", T, || (count() == 2).then_some(()));
    // A change that does not change the output: no reload.
    h.put("/v1/kv/unrelated", "x");
    h.put("/v1/agent/check/pass/service:web-1?note=same", "");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(count(), 2, "no reload without a changed output");
    // The instance fails its check: it leaves the upstream.
    h.put("/v1/agent/check/fail/service:web-2", "");
    wait_for("the failed instance gone", T, || {
        std::fs::read_to_string(&out)
            .ok()
            .filter(|t| !t.contains(":8002;"))
    });
    // No instance left: the fallback line.
    h.put("/v1/agent/check/fail/service:web-1", "");
    let text = wait_for("the fallback", T, || {
        std::fs::read_to_string(&out)
            .ok()
            .filter(|t| t.contains("65535"))
    });
    assert!(!text.contains(":8001;"));
}

#[test]
fn safe_ls_refuses_an_empty_prefix_and_keeps_the_last_file() {
    let c = ConsulDev::start();
    let h = c.http();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("cfg.ctmpl");
    let out = dir.path().join("cfg.conf");
    std::fs::write(
        &src,
        "{{range safeLs \"app/cfg\"}}{{.Key}}={{.Value}}\n{{end}}",
    )
    .unwrap();
    std::fs::write(&out, "last good\n").unwrap();
    h.delete("/v1/kv/app/cfg?recurse");
    let (code, _, err) = render_once(&c.addr(), &src, &out, &[]);
    assert_eq!(code, 1);
    assert!(err.contains("empty prefix"), "{err}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "last good\n");
    h.put("/v1/kv/app/cfg/a", "1");
    let (code, _, err) = render_once(&c.addr(), &src, &out, &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "a=1\n");
}

#[test]
fn the_agent_keeps_its_configured_templates_rendered() {
    let c = ConsulDev::start();
    let h = c.http();
    register(&h, "web-1", 8001, "passing");
    h.put("/v1/kv/config/greeting", "from the agent");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("web.ctmpl");
    let out = dir.path().join("web.conf");
    let names = dir.path().join("names.ctmpl");
    let names_out = dir.path().join("names.txt");
    std::fs::write(&src, TEMPLATE).unwrap();
    std::fs::write(&names, "{{range services}}{{.Name}} {{end}}").unwrap();
    let cfg = dir.path().join("servant.toml");
    std::fs::write(
        &cfg,
        format!(
            "template_wait = \"100ms:1s\"\n\n[[template]]\nsource = \"{}\"\ndestination = \"{}\"\nperms = \"0600\"\n\n[[template]]\nsource = \"{}\"\ndestination = \"{}\"\n",
            src.display(),
            out.display(),
            names.display(),
            names_out.display()
        ),
    )
    .unwrap();
    let _s = c.servant(&["--config", cfg.to_str().unwrap()]).ready();
    wait_for("rendered by the agent", T, || {
        std::fs::read_to_string(&out)
            .ok()
            .filter(|t| t.contains(":8001;") && t.contains("# from the agent"))
    });
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&out).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    h.put(
        "/v1/agent/service/register",
        json!({"ID": "db-1", "Name": "db", "Port": 5432}).to_string(),
    );
    wait_for("the second template follows the catalog", T, || {
        std::fs::read_to_string(&names_out)
            .ok()
            .filter(|t| t.contains("db "))
    });
}
