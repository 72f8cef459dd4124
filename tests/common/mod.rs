//! Test harness: real Consul agents and real servant agents on private loopback addresses, each
//! stopped by PID when its guard drops.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod browser;
pub mod cluster;
pub mod docker;
pub mod lab;
pub mod metrics;
pub mod netns;

/// The consul binary: CONSUL_BIN, else what scripts/install-consul prints (it is idempotent).
pub fn consul_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(b) = std::env::var("CONSUL_BIN") {
            if !b.is_empty() {
                return PathBuf::from(b);
            }
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-consul");
        let out = Command::new(script)
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/install-consul");
        assert!(out.status.success(), "scripts/install-consul failed");
        PathBuf::from(String::from_utf8(out.stdout).expect("utf8 path").trim())
    })
    .clone()
}

/// The servant binary under test; a bench may name another with `BENCH_SERVANT_BIN` (an
/// older build, to compare two in one run on the same machine).
pub fn servant_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("BENCH_SERVANT_BIN")
            .ok()
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_servant").to_string())
    })
}

/// A /24 of loopback addresses no other test uses: 127.A.B.0 with A from the process id and B
/// from a counter, so parallel tests and test binaries do not collide.
pub fn subnet() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let pid = std::process::id();
    let a = 20 + (pid % 200);
    let b = (pid / 200 * 7 + n) % 250 + 1;
    format!("127.{a}.{b}")
}

/// A child process killed (SIGKILL, by PID) and reaped when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }
    /// Waits for the process to exit by itself, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os("TEST_SHOW_LOGS").is_some() {
            eprintln!(
                "----- {} log ({}) -----\n{}",
                self.name,
                self.log.display(),
                self.log_text()
            );
        }
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

pub fn spawn_logged(name: &str, cmd: &mut Command, log: &Path) -> Proc {
    let f = std::fs::File::create(log).expect("log file");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(f.try_clone().expect("clone"))
        .stderr(f)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    Proc {
        child,
        name: name.to_string(),
        log: log.to_path_buf(),
    }
}

/// Polls `f` every 50 ms until it returns Some, or panics with `what` after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A minimal blocking HTTP helper for tests (tests may speak HTTP to Consul directly).
pub struct Http {
    pub base: String,
    pub token: Option<String>,
    agent: reqwest::blocking::Client,
}

impl Http {
    pub fn new(addr: &str) -> Self {
        Http {
            base: format!("http://{addr}"),
            token: None,
            agent: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
        }
    }
    pub fn with_token(mut self, t: &str) -> Self {
        self.token = Some(t.to_string());
        self
    }
    fn req(&self, m: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
        let mut r = self.agent.request(m, format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            r = r.header("X-Consul-Token", t);
        }
        r
    }
    /// GET that tolerates a server not up yet.
    pub fn try_get(&self, path: &str) -> Option<(u16, String)> {
        let r = self.req(reqwest::Method::GET, path).send().ok()?;
        Some((r.status().as_u16(), r.text().unwrap_or_default()))
    }
    /// GET; returns (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        let r = self.req(reqwest::Method::GET, path).send().expect("GET");
        (r.status().as_u16(), r.text().unwrap_or_default())
    }
    pub fn get_json(&self, path: &str) -> Option<Value> {
        let (s, b) = self.get(path);
        (s == 200).then(|| serde_json::from_str(&b).expect("json"))
    }
    /// A request with a body and extra headers; returns (status, body).
    pub fn send(
        &self,
        method: &str,
        path: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> (u16, String) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut r = self.req(m, path).body(body.to_string());
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let r = r.send().expect("request");
        (r.status().as_u16(), r.text().unwrap_or_default())
    }
    /// PUT that tolerates a server not up yet.
    pub fn try_put(&self, path: &str, body: &str) -> Option<(u16, String)> {
        let r = self
            .req(reqwest::Method::PUT, path)
            .body(body.to_string())
            .send()
            .ok()?;
        Some((r.status().as_u16(), r.text().unwrap_or_default()))
    }
    pub fn put(&self, path: &str, body: impl Into<reqwest::blocking::Body>) -> (u16, String) {
        let r = self
            .req(reqwest::Method::PUT, path)
            .body(body)
            .send()
            .expect("PUT");
        (r.status().as_u16(), r.text().unwrap_or_default())
    }
    pub fn delete(&self, path: &str) -> (u16, String) {
        let r = self
            .req(reqwest::Method::DELETE, path)
            .send()
            .expect("DELETE");
        (r.status().as_u16(), r.text().unwrap_or_default())
    }
    /// A KV value, raw.
    pub fn kv_raw(&self, key: &str) -> Option<String> {
        let (s, b) = self.get(&format!("/v1/kv/{key}?raw"));
        (s == 200).then_some(b)
    }
    /// Waits for a final job result at `key` and returns it.
    pub fn wait_result(&self, key: &str, limit: Duration) -> Value {
        wait_for(&format!("a final result at {key}"), limit, || {
            let v: Value = serde_json::from_str(&self.kv_raw(key)?).ok()?;
            let st = v["Status"].as_str().unwrap_or("");
            (st != "started" && st != "running").then_some(v)
        })
    }
    /// The X-Consul-Index answered to a GET of `path`.
    pub fn index_of(&self, path: &str) -> u64 {
        let r = self.req(reqwest::Method::GET, path).send().expect("GET");
        r.headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// A header of the answer to a GET of `path`.
    pub fn header(&self, path: &str, name: &str) -> Option<String> {
        let r = self.req(reqwest::Method::GET, path).send().expect("GET");
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    /// The X-Consul-Index of the KV store right now.
    pub fn index(&self) -> u64 {
        let r = self
            .req(reqwest::Method::GET, "/v1/kv/?keys")
            .send()
            .expect("GET");
        r.headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// A `consul agent -dev` on its own loopback address.
pub struct ConsulDev {
    pub proc: Proc,
    pub ip: String,
    pub node: String,
    pub dir: tempfile::TempDir,
}

impl ConsulDev {
    pub fn start() -> Self {
        Self::start_with(&[], None)
    }

    /// With extra `consul agent` arguments; `token` reads the catalog when ACLs deny by default.
    pub fn start_with(extra: &[&str], token: Option<&str>) -> Self {
        let ip = format!("{}.2", subnet());
        let dir = tempfile::tempdir().expect("tempdir");
        let node = format!("dev-{}", ip.replace('.', "-"));
        let mut cmd = Command::new(consul_bin());
        cmd.args([
            "agent", "-dev", "-bind", &ip, "-client", &ip, "-node", &node,
        ])
        .args(extra);
        let proc = spawn_logged("consul", &mut cmd, &dir.path().join("consul.log"));
        let mut http = Http::new(&format!("{ip}:8500"));
        if let Some(t) = token {
            http = http.with_token(t);
        }
        let d = ConsulDev {
            proc,
            ip,
            node,
            dir,
        };
        wait_for("consul dev leader", Duration::from_secs(30), || {
            let (s, b) = http.try_get("/v1/status/leader")?;
            (s == 200 && b.len() > 4).then_some(())
        });
        // Sessions need the node's own registration and serfHealth in the catalog.
        wait_for("node registered", Duration::from_secs(30), || {
            let (s, b) = http.try_get(&format!("/v1/health/node/{}", d.node))?;
            (s == 200 && b.contains("serfHealth") && b.contains("passing")).then_some(())
        });
        d
    }

    pub fn addr(&self) -> String {
        format!("{}:8500", self.ip)
    }

    pub fn http(&self) -> Http {
        Http::new(&self.addr())
    }

    /// Starts a servant agent against this Consul.
    pub fn servant(&self, extra: &[&str]) -> Servant {
        Servant::start(&self.addr(), &self.ip, extra, &[])
    }
}

/// A `servant agent` process.
pub struct Servant {
    pub proc: Proc,
    pub data: tempfile::TempDir,
}

impl Servant {
    pub fn start(http_addr: &str, api_ip: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let data = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(servant_bin());
        cmd.args(["agent", "--http-addr", http_addr, "--data-dir"])
            .arg(data.path())
            .args(["--api-addr", &format!("{api_ip}:0")])
            .args(extra);
        cmd.env("SERVANT_LOG", "info,servant=debug")
            .env_remove("CONSUL_HTTP_TOKEN");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let log = data.path().join("agent.log");
        let proc = spawn_logged("servant", &mut cmd, &log);
        Servant { proc, data }
    }

    /// A servant that launches its own Consul agent (`--server`, `--join`, ...).
    pub fn launch(api_ip: &str, args: &[&str]) -> Self {
        Self::launch_in(tempfile::tempdir().expect("tempdir"), api_ip, args)
    }

    /// Like `launch`, in an existing data dir (a restart keeps Consul's node ID and data).
    pub fn launch_in(data: tempfile::TempDir, api_ip: &str, args: &[&str]) -> Self {
        let mut cmd = Command::new(servant_bin());
        cmd.args(["agent", "--data-dir"])
            .arg(data.path())
            .args(["--api-addr", &format!("{api_ip}:0")])
            .args(args);
        cmd.env("SERVANT_LOG", "info,servant=debug")
            .env_remove("CONSUL_HTTP_TOKEN")
            .env_remove("CONSUL_HTTP_ADDR");
        let log = data.path().join("agent.log");
        let proc = spawn_logged("servant", &mut cmd, &log);
        Servant { proc, data }
    }

    /// Waits until the agent logs that it is ready.
    pub fn ready(mut self) -> Self {
        let text = wait_for("servant ready", Duration::from_secs(60), || {
            let t = self.proc.log_text();
            if t.contains("servant agent ready") {
                return Some(t);
            }
            if !self.proc.alive() {
                panic!("servant exited early:\n{t}");
            }
            None
        });
        drop(text);
        self
    }
}

/// The agent API's address (`ip:port`), as the agent registered it in Consul (service
/// `servant`); with several agents, the first one listed.
pub fn servant_api(h: &Http) -> String {
    wait_for("the servant service", Duration::from_secs(60), || {
        let v = h.get_json("/v1/catalog/service/servant")?;
        let s = v.as_array()?.first()?.clone();
        Some(format!(
            "{}:{}",
            s["ServiceAddress"].as_str()?,
            s["ServicePort"].as_u64()?
        ))
    })
}

/// An agent configuration's `[checks]` (environment `test`) with one guard of service `web`
/// whose status command is critical until `flag` exists (a trigger action can create it).
pub fn guard_until_file(flag: &Path) -> String {
    format!(
        r#"
[checks]
environment = "test"
debounce = "500ms"

[[checks.guard]]
consul_service = "web"
linux_service = "demo"
status_cmd = "test -f {} || exit 3"
interval = "1s"
"#,
        flag.display()
    )
}

/// Which server a single-node test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A real `consul agent -dev` and a servant beside it.
    Consul,
    /// `servant agent -dev`: the embedded server inside the agent.
    Dev,
}

/// One node of either backend, with its agent running.
pub struct Single {
    pub node: String,
    pub ip: String,
    pub servant: Servant,
    /// The real Consul, for the Consul backend.
    pub consul: Option<ConsulDev>,
}

impl Single {
    pub fn start(b: Backend, extra: &[&str]) -> Single {
        match b {
            Backend::Consul => {
                let c = ConsulDev::start();
                let servant = c.servant(extra).ready();
                Single {
                    node: c.node.clone(),
                    ip: c.ip.clone(),
                    servant,
                    consul: Some(c),
                }
            }
            Backend::Dev => Single::dev_in(
                format!("{}.2", subnet()),
                tempfile::tempdir().expect("tempdir"),
                extra,
            ),
        }
    }

    /// `servant agent -dev` on `ip:8500` with the data dir `data` (a restart reuses both).
    pub fn dev_in(ip: String, data: tempfile::TempDir, extra: &[&str]) -> Single {
        let mut cmd = dev_command(&ip, data.path());
        cmd.args(extra);
        let log = data.path().join("agent.log");
        let proc = spawn_logged("servant-dev", &mut cmd, &log);
        Single {
            node: "devnode".into(),
            ip,
            servant: Servant { proc, data }.ready(),
            consul: None,
        }
    }

    pub fn addr(&self) -> String {
        format!("{}:8500", self.ip)
    }

    pub fn http(&self) -> Http {
        Http::new(&self.addr())
    }
}

/// Runs the servant CLI against `addr`; returns (exit code, stdout, stderr).
pub fn cli(addr: &str, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["--http-addr", addr];
    all.extend_from_slice(args);
    run_servant(&all)
}

/// Runs servant with exactly these arguments, no Consul address, token or prefix from the
/// environment: (exit code, stdout, stderr).
pub fn run_servant(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(servant_bin())
        .args(args)
        .env_remove("CONSUL_HTTP_ADDR")
        .env_remove("CONSUL_HTTP_TOKEN")
        .env_remove("SERVANT_KV_PREFIX")
        .output()
        .expect("run servant");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs each named scenario `fn(Backend)` as two tests: `on_consul::name` against a real Consul
/// 1.8.7 dev agent and `on_dev::name` against `servant agent -dev`.
#[macro_export]
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        /// Against a real Consul 1.8.7 dev agent.
        mod on_consul {
            use super::*;
            $( #[test] fn $name() { super::$name(Backend::Consul) } )*
        }
        /// Against `servant agent -dev`, the embedded server.
        mod on_dev {
            use super::*;
            $( #[test] fn $name() { super::$name(Backend::Dev) } )*
        }
    };
}

/// User + system CPU clock ticks a process has used, from /proc.
pub fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0)
}

/// Busy CPU clock ticks of the whole machine (user, nice, system, irq, softirq), from
/// /proc/stat: what every process of a run cost, children included.
pub fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("read /proc/stat");
    let cpu = stat.lines().next().unwrap_or("");
    let f: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    [0, 1, 2, 5, 6]
        .iter()
        .map(|i| f.get(*i).copied().unwrap_or(0))
        .sum()
}

/// Resident memory of a process in KiB, from /proc.
pub fn rss_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `servant agent -dev` on `ip:8500` with its data in `data`, not started.
pub fn dev_command(ip: &str, data: &Path) -> Command {
    let mut cmd = Command::new(servant_bin());
    cmd.args([
        "agent",
        "-dev",
        "--dev-listen",
        &format!("{ip}:8500"),
        "--api-addr",
        &format!("{ip}:0"),
        "--node",
        "devnode",
        "--data-dir",
    ])
    .arg(data);
    cmd.env("SERVANT_LOG", "info,servant=debug")
        .env_remove("CONSUL_HTTP_TOKEN")
        .env_remove("CONSUL_HTTP_ADDR");
    cmd
}

/// Processes whose command line contains `needle`.
pub fn procs_matching(needle: &str) -> Vec<i32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) {
            v.push(pid);
        }
    }
    v
}

/// The process group of a pid, from /proc.
pub fn pgid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

/// Pids of `sleep` processes whose command line holds `needle`: the sleep itself, not the shim
/// or shell whose command line carries the same text.
pub fn sleeps(needle: &str) -> std::collections::BTreeSet<i32> {
    procs_matching(needle)
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| c.starts_with(b"sleep\0"))
                .unwrap_or(false)
        })
        .collect()
}

/// `servant template -template SRC:OUT -once [extra...]` against `addr`: (exit code, stdout,
/// stderr).
pub fn render_once(addr: &str, src: &Path, out: &Path, extra: &[&str]) -> (i32, String, String) {
    let spec = format!("{}:{}", src.display(), out.display());
    let mut args = vec!["template", "-template", spec.as_str(), "-once"];
    args.extend_from_slice(extra);
    cli(addr, &args)
}

/// A real Consul with ACLs on (`default_policy = "deny"`) and a client with its management
/// token; `tag` (four hex digits) makes that token this test's own.
pub fn acl_consul(tag: &str) -> (ConsulDev, Http) {
    let root = format!("b1c2d3e4-0000-4000-8000-00000000{tag}");
    let hcl = format!(
        r#"acl {{ enabled = true, default_policy = "deny", down_policy = "extend-cache", tokens {{ master = "{root}", agent = "{root}" }} }}"#
    );
    let c = ConsulDev::start_with(&["-hcl", &hcl], Some(&root));
    let admin = c.http().with_token(&root);
    (c, admin)
}

/// A policy `name` with `rules`, and a token of it described as `name`: (SecretID, AccessorID).
pub fn acl_token(admin: &Http, name: &str, rules: &str) -> (String, String) {
    let (st, body) = admin.put(
        "/v1/acl/policy",
        serde_json::json!({"Name": name, "Rules": rules}).to_string(),
    );
    assert_eq!(st, 200, "policy {name}: {body}");
    let (st, body) = admin.put(
        "/v1/acl/token",
        serde_json::json!({"Description": name, "Policies": [{"Name": name}]}).to_string(),
    );
    assert_eq!(st, 200, "token {name}: {body}");
    let t: Value = serde_json::from_str(&body).expect("token");
    let field = |k: &str| t[k].as_str().expect("token field").to_string();
    (field("SecretID"), field("AccessorID"))
}

/// The `data:` lines of a server-sent event stream, read on a thread of its own; the thread
/// ends when the receiver is dropped or the stream ends.
pub fn sse_events(resp: reqwest::blocking::Response) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(resp).lines() {
            let Ok(line) = line else { return };
            if let Some(d) = line.strip_prefix("data: ") {
                if tx.send(d.to_string()).is_err() {
                    return;
                }
            }
        }
    });
    rx
}
