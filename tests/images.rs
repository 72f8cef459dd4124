//! The container image and the sample cluster (issue 12): `scripts/images` builds the image FROM
//! scratch, `scripts/cluster up 3` starts three nodes on a private Docker network (each a
//! servant launching a Consul server), a job runs on every node through the CLI from this
//! machine, and `scripts/cluster down` removes every container and the network.
//!
//! Each run has its own name prefix and image tag, and Docker picks the loopback host ports, so
//! parallel runs do not collide. A guard takes the cluster and the image down on every way out,
//! a panic included. The test skips only when docker is not installed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs a command, its output captured.
fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn ok(cmd: &mut Command) -> String {
    let what = format!("{cmd:?}");
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn docker(args: &[&str]) -> Output {
    run(Command::new("docker").args(args))
}

/// One test run's cluster: its prefix, image tag and the scripts' environment.
struct Run {
    prefix: String,
    image: String,
}

impl Run {
    fn new() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let tag = format!("{}-{}", std::process::id(), nanos % 1_000_000);
        Run {
            prefix: format!("servant-test-{tag}"),
            image: format!("consul-servant:test-{tag}"),
        }
    }

    fn script(&self, name: &str) -> Command {
        let mut c = Command::new(root().join("scripts").join(name));
        c.env("SERVANT_CLUSTER_PREFIX", &self.prefix)
            .env("SERVANT_CLUSTER_HTTP_PORT", "0")
            .env("SERVANT_CLUSTER_API_PORT", "0")
            .env("SERVANT_IMAGE", &self.image)
            .stderr(Stdio::inherit());
        c
    }

    fn down(&self) -> Output {
        run(self.script("cluster").arg("down"))
    }

    /// Containers and networks whose name starts with the prefix.
    fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        for args in [
            vec!["ps", "-a", "--format", "container {{.Names}}"],
            vec!["network", "ls", "--format", "network {{.Name}}"],
        ] {
            let out = docker(&args);
            assert!(
                out.status.success(),
                "docker {args:?}: {}",
                text(&out.stderr)
            );
            left.extend(
                text(&out.stdout)
                    .lines()
                    .filter(|l| {
                        l.split(' ')
                            .nth(1)
                            .is_some_and(|n| n.starts_with(&self.prefix))
                    })
                    .map(str::to_string),
            );
        }
        left
    }
}

/// Takes the cluster down and removes the image when dropped, on a panic too.
struct Guard<'a> {
    run: &'a Run,
    cluster_down: bool,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if !self.cluster_down {
            let out = self.run.down();
            if !out.status.success() {
                eprintln!("scripts/cluster down failed: {}", text(&out.stderr));
            }
        }
        let _ = docker(&["image", "rm", &self.run.image]);
    }
}

fn get_json(url: &str) -> Option<Value> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .ok()?;
    let r = client.get(url).send().ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().ok()
}

/// The loopback address Docker published for a container's port.
fn published(container: &str, port: &str) -> String {
    let out = ok(Command::new("docker").args(["port", container, &format!("{port}/tcp")]));
    let addr = out
        .lines()
        .find(|l| l.starts_with("127.0.0.1:"))
        .unwrap_or_else(|| panic!("{container} publishes {port} on no loopback port: {out}"));
    addr.trim().to_string()
}

#[test]
fn images_build_and_a_three_node_cluster_runs_jobs_on_every_node() {
    if on_path("docker").is_none() {
        eprintln!("SKIPPED images test: docker is not installed (no `docker` on PATH)");
        return;
    }
    let r = Run::new();
    let mut guard = Guard {
        run: &r,
        cluster_down: false,
    };

    // The image, from the servant binary this test run built (a release build would add many
    // minutes; the image is the same but for the binary's optimisation).
    let built = ok(r
        .script("images")
        .env("SERVANT_BIN", common::servant_bin())
        .env("CONSUL_BIN", common::consul_bin()));
    assert_eq!(built.trim(), r.image);
    let inspect = ok(Command::new("docker").args([
        "image",
        "inspect",
        "-f",
        "{{.Os}} {{len .RootFS.Layers}}",
        &r.image,
    ]));
    assert_eq!(inspect.trim(), "linux 1", "one layer FROM scratch");

    let up = ok(r.script("cluster").args(["up", "3"]));
    let node1 = format!("{}-node1", r.prefix);
    let http = published(&node1, "8500");
    assert!(
        up.contains(&format!("export CONSUL_HTTP_ADDR={http}")),
        "up prints how to reach the cluster:\n{up}"
    );

    // A leader, three servers in the Raft configuration, and three servants registered at their
    // containers' addresses. `up` waited for this; the test looks for itself.
    let base = format!("http://{http}");
    let deadline = Instant::now() + Duration::from_secs(120);
    let servants = loop {
        let leader = get_json(&format!("{base}/v1/status/leader"));
        let services = get_json(&format!("{base}/v1/catalog/service/servant"));
        if let (Some(Value::String(l)), Some(Value::Array(s))) = (&leader, &services) {
            if !l.is_empty() && s.len() == 3 {
                break s.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no leader and three servants: leader {leader:?}, services {services:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let peers = get_json(&format!("{base}/v1/status/peers")).expect("raft peers");
    assert_eq!(peers.as_array().map(Vec::len), Some(3), "peers {peers}");
    let mut nodes: Vec<String> = Vec::new();
    for s in &servants {
        let node = s["Node"].as_str().expect("Node").to_string();
        let ip = ok(Command::new("docker").args([
            "inspect",
            "-f",
            &format!(
                "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
                r.prefix
            ),
            &format!("{}-{node}", r.prefix),
        ]));
        assert_eq!(s["Address"].as_str(), Some(ip.trim()), "{s}");
        assert_eq!(s["ServiceAddress"].as_str(), Some(ip.trim()), "{s}");
        assert_eq!(s["ServicePort"].as_u64(), Some(8686), "{s}");
        nodes.push(node);
    }
    nodes.sort();
    assert_eq!(nodes, ["node1", "node2", "node3"]);

    // A job on every node, through the CLI on this machine. The command uses the image's tools
    // (busybox's sh and hostname, util-linux's flock) and the job's fencing token.
    let servant = || {
        let mut c = Command::new(common::servant_bin());
        c.env("CONSUL_HTTP_ADDR", &http)
            .env_remove("CONSUL_HTTP_TOKEN");
        c
    };
    let id = "everywhere";
    let out = run(servant().args([
        "start",
        "--wait",
        "--all",
        "-c",
        "flock /tmp/job.lock -c 'echo \"$(hostname) $SERVANT_JOB_KEY\"'",
        id,
    ]));
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "start --all: {}\n{stdout}\n{}",
        out.status,
        text(&out.stderr)
    );
    for node in &nodes {
        let line = format!("{node} queues/{node}/{id}");
        assert!(
            stdout.contains(&format!("==> {node} (succeeded, exit 0)\n{line}\n")),
            "{node} in:\n{stdout}"
        );
        // The result in Consul, written by that node.
        let doc = get_json(&format!("{base}/v1/kv/jdone_jid/queues/{node}/{id}?raw"))
            .unwrap_or_else(|| panic!("no result for {node}"));
        assert_eq!(doc["ExecutionNode"].as_str(), Some(node.as_str()), "{doc}");
        assert_eq!(doc["Status"].as_str(), Some("succeeded"), "{doc}");
        assert_eq!(doc["Output"].as_str(), Some(format!("{line}\n").as_str()));
        // The whole log, from the node's servant API at its container address.
        let logs = ok(servant().args(["logs", "-n", node, id]));
        assert_eq!(logs, format!("{line}\n"));
    }

    // `status` shows the three members alive.
    let status = ok(r.script("cluster").arg("status"));
    for node in &nodes {
        assert!(
            status.lines().any(|l| l.starts_with(node.as_str())
                && l.contains("alive")
                && l.contains("server")),
            "{node} alive in:\n{status}"
        );
    }

    // `down` leaves nothing with the prefix.
    let out = r.down();
    assert!(out.status.success(), "down: {}", text(&out.stderr));
    guard.cluster_down = true;
    assert_eq!(r.leftovers(), Vec::<String>::new());
    // A second `down` finds nothing and succeeds.
    let again = r.down();
    assert!(again.status.success());
    drop(guard);
    let out = docker(&["image", "inspect", &r.image]);
    assert!(!out.status.success(), "the test's image is removed");
}
