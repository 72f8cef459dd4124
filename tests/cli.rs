//! The command line's edges, through the real `servant` binary: exit codes, version and help,
//! error messages, Consul-style one-dash flags, target nodes, per-node job IDs, truncated
//! output, output streams and closed pipes. Tests that need a cluster run against a real agent
//! (each portable one on real Consul 1.8.7 and on `servant agent -dev`).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

/// `servant --http-addr ADDR ARGS | head HEAD` through a real pipe: (servant's exit code, its
/// stderr).
fn piped_to_head(addr: &str, args: &[&str], head: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let err = dir.path().join("stderr");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            r#""$0" --http-addr "$1" "${{@:3}}" 2>"$2" | head {head} >/dev/null; exit ${{PIPESTATUS[0]}}"#
        ))
        .arg(servant_bin())
        .arg(addr)
        .arg(&err)
        .args(args)
        .env_remove("CONSUL_HTTP_TOKEN")
        .env_remove("SERVANT_KV_PREFIX")
        .output()
        .expect("run bash");
    (
        out.status.code().unwrap_or(-1),
        std::fs::read_to_string(&err).unwrap_or_default(),
    )
}

fn version_line() -> String {
    format!("servant {}\n", env!("CARGO_PKG_VERSION"))
}

#[test]
fn usage_errors_exit_1_help_and_version_exit_0() {
    for args in [
        &["bogus"][..],
        &["start", "--bogus"],
        &["show"],
        &["logs", "--stream", "bogus", "j"],
    ] {
        let (code, out, err) = run_servant(args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(out.is_empty() && err.contains("error:"), "{args:?}: {err}");
    }
    // A check's exit code is its state: any error of `servant check` is critical.
    for args in [
        &["check", "process", "--bogus"][..],
        &[
            "check",
            "crontab",
            "-u",
            "u",
            "-S",
            "s",
            "--ca-file",
            "/nonexistent/ca",
        ],
    ] {
        let (code, _, err) = run_servant(args);
        assert_eq!(code, 2, "{args:?}: {err}");
    }
    for args in [
        &["--help"][..],
        &["-h"],
        &["-help"],
        &["start", "-help"],
        &["help", "kv"],
    ] {
        let (code, out, err) = run_servant(args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(out.contains("Usage:"), "{args:?}: {out}");
    }
    for args in [
        &["version"][..],
        &["-v"],
        &["-version"],
        &["--version"],
        &["start", "-version"],
    ] {
        let (code, out, err) = run_servant(args);
        assert_eq!(
            (code, out.as_str()),
            (0, version_line().as_str()),
            "{args:?}: {err}"
        );
    }
    // A command's own flags, then the global ones under their heading.
    let (_, help, _) = run_servant(&["start", "--help"]);
    let own = help.find("--wait").unwrap();
    let heading = help.find("Global options:").unwrap();
    let global = help.find("--http-addr").unwrap();
    assert!(own < heading && heading < global, "{help}");
}

/// How often `needle` occurs in `hay`.
fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

#[test]
fn errors_print_each_cause_once() {
    // A config file that is not there.
    let (code, _, err) = run_servant(&["agent", "--config", "/nonexistent/servant.toml"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        count(&err, "No such file or directory (os error 2)"),
        1,
        "{err}"
    );
    // A CA file that is not there.
    let (code, _, err) = run_servant(&["start", "--ca-file", "/nonexistent/ca.pem", "-c", "true"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        count(&err, "No such file or directory (os error 2)"),
        1,
        "{err}"
    );
    // Nothing listens there.
    let ip = format!("{}.2", subnet());
    let free = std::net::TcpListener::bind(format!("{ip}:0")).unwrap();
    let addr = free.local_addr().unwrap().to_string();
    drop(free);
    let (code, _, err) = run_servant(&["--http-addr", &addr, "kv", "get", "k"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(count(&err, "Connection refused"), 1, "{err}");
    assert_eq!(count(&err, "error sending request"), 1, "{err}");
    assert_eq!(count(&err, &addr), 1, "{err}");
    // The agent's API address (and then the embedded server's) already in use.
    let taken = std::net::TcpListener::bind(format!("{ip}:0")).unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let free = std::net::TcpListener::bind(format!("{ip}:0")).unwrap();
    let free_addr = free.local_addr().unwrap().to_string();
    drop(free);
    for (flag, listen) in [
        ("--api-addr", free_addr),
        ("--dev-listen", taken_addr.clone()),
    ] {
        let data = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(servant_bin());
        cmd.args(["agent", "-dev", "--node", "devnode", "--data-dir"])
            .arg(data.path())
            .env_remove("CONSUL_HTTP_ADDR")
            .env_remove("SERVANT_LOG");
        if flag == "--api-addr" {
            cmd.args(["--dev-listen", &listen, "--api-addr", &taken_addr]);
        } else {
            cmd.args(["--dev-listen", &listen, "--api-addr", &format!("{ip}:0")]);
        }
        let mut p = spawn_logged("servant", &mut cmd, &data.path().join("out.log"));
        let st = p.wait_exit(T).expect("the agent exits by itself");
        let text = p.log_text();
        assert_eq!(st.code(), Some(1), "{flag}: {text}");
        let line = text
            .lines()
            .find(|l| l.starts_with("servant: error:"))
            .unwrap_or_else(|| panic!("{flag}: no error line: {text}"));
        assert!(line.contains(&taken_addr), "{flag}: {line}");
        assert_eq!(count(line, "Address already in use"), 1, "{flag}: {line}");
    }
}

#[test]
fn stream_values_are_checked_by_the_cli() {
    // Nothing listens at this address: the CLI must refuse before asking anyone.
    for args in [
        &["logs", "--stream", "bogus", "j"][..],
        &["app", "logs", "--stream", "bogus", "a"],
    ] {
        let mut full = vec!["--http-addr", "127.0.0.1:1"];
        full.extend_from_slice(args);
        let (code, _, err) = run_servant(&full);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("invalid value 'bogus'"), "{err}");
        assert!(err.contains("stdout, stderr"), "{err}");
        assert!(!err.contains("cannot reach"), "{err}");
    }
}

/// One-dash flags after a boolean one, target nodes that are not alive members, and `kv get`'s
/// newline.
fn start_flags_and_targets(b: Backend) {
    let c = Single::start(b, &[]);
    let (a, h, node) = (c.addr(), c.http(), c.node.clone());
    // The issue's commands.
    let (code, out, err) = cli(
        &a,
        &["start", "-wait", "-node", &node, "-c", "echo node", "j1"],
    );
    assert_eq!((code, out.as_str()), (0, "j1\nnode\n"), "{err}");
    assert!(h.kv_raw(&format!("jdone_jid/queues/{node}/j1")).is_some());
    assert_eq!(h.get("/v1/kv/queues/ode/?recurse").0, 404);
    let (code, out, err) = cli(&a, &["start", "--wait", "-timeout", "5", "-c", "echo c"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.ends_with("\nc\n"), "{out}");
    let (code, out, err) = cli(
        &a,
        &[
            "start",
            "-wait",
            &format!("-node={node}"),
            "-timeout=5",
            "-env=X=y",
            "-c",
            "echo $X",
            "j2",
        ],
    );
    assert_eq!((code, out.as_str()), (0, "j2\ny\n"), "{err}");
    let r: Value =
        serde_json::from_str(&h.kv_raw(&format!("jdone_jid/queues/{node}/j2")).unwrap()).unwrap();
    assert_eq!(r["Timeout"], 5, "{r}");

    // A node that is not a member: refused, and nothing queued.
    let (code, _, err) = cli(&a, &["start", "-n", "nosuchnode", "-c", "true", "x1"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("node nosuchnode is not a member") && err.contains(&node),
        "{err}"
    );
    assert!(err.contains("--force"), "{err}");
    assert!(h.kv_raw("queues/nosuchnode/x1").is_none());
    // --force queues it, with a warning.
    let (code, out, err) = cli(
        &a,
        &["start", "--force", "-n", "nosuchnode", "-c", "true", "x1"],
    );
    assert_eq!((code, out.as_str()), (0, "x1\n"), "{err}");
    assert!(
        err.contains("warning") && err.contains("not a member"),
        "{err}"
    );
    assert!(h.kv_raw("queues/nosuchnode/x1").is_some());
    // --wait does not wait forever for a node that is not there.
    let (code, _, err) = cli(
        &a,
        &[
            "start",
            "--wait",
            "-force",
            "-n",
            "nosuchnode",
            "-c",
            "true",
            "x2",
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("node nosuchnode is not a member of the cluster while job x2 was queued"),
        "{err}"
    );
    let (code, _, err) = cli(&a, &["start", "--force", "-c", "true"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--force goes with -n"), "{err}");

    // `kv get` ends with a newline, exactly as `consul kv get` does.
    for (k, v) in [
        ("nl/a", "v1"),
        ("nl/b", "v1\n"),
        ("nl/c", ""),
        ("nl/d", "a\nb"),
    ] {
        assert_eq!(h.put(&format!("/v1/kv/{k}"), v.to_string()).0, 200);
        let ours = cli(&a, &["kv", "get", k]);
        let theirs = Command::new(consul_bin())
            .args(["kv", "get", k])
            .env("CONSUL_HTTP_ADDR", &a)
            .env_remove("CONSUL_HTTP_TOKEN")
            .output()
            .unwrap();
        assert!(theirs.status.success());
        assert_eq!(ours.0, 0, "{}", ours.2);
        assert_eq!(ours.1.as_bytes(), &theirs.stdout[..], "{k}");
        assert_eq!(ours.1, format!("{v}\n"));
    }
}

/// A bare job ID finds the jobs of `start -n`/`--all`, and says when it is ambiguous.
fn per_node_ids(b: Backend) {
    let c = Single::start(b, &[]);
    let (a, node) = (c.addr(), c.node.clone());
    let (code, _, err) = cli(&a, &["start", "--all", "--wait", "-c", "echo all", "ja1"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cli(&a, &["show", "ja1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("queues/{node}/ja1")), "{out}");
    assert!(out.contains("Output:\nall"), "{out}");
    let (code, out, err) = cli(&a, &["logs", "ja1"]);
    assert_eq!((code, out.as_str()), (0, "all\n"), "{err}");
    // The same ID for any node too: that one is shown, and --all is pointed to.
    let (code, _, err) = cli(&a, &["start", "--wait", "-c", "echo any", "ja1"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cli(&a, &["show", "ja1"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("jobs/ja1") && !out.contains("queues/"),
        "{out}"
    );
    assert!(
        err.contains(&format!("on {node}")) && err.contains("servant show --all ja1"),
        "{err}"
    );
    let (_, out, _) = cli(&a, &["show", "--all", "ja1"]);
    assert!(out.contains(&format!("queues/{node}/ja1")), "{out}");
    let (_, out, _) = cli(&a, &["logs", "ja1"]);
    assert_eq!(out, "any\n");
    // Two nodes' queues with one ID: `logs` asks which.
    let (code, _, err) = cli(
        &a,
        &["start", "--force", "-n", "elsewhere", "-c", "true", "jb"],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli(&a, &["start", "-n", &node, "--wait", "-c", "true", "jb"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cli(&a, &["show", "jb"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("queues/elsewhere/jb") && out.contains(&format!("queues/{node}/jb")),
        "{out}"
    );
    let (code, _, err) = cli(&a, &["logs", "jb"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("several nodes") && err.contains("-n NODE"),
        "{err}"
    );
    let (code, _, err) = cli(&a, &["show", "nosuchjob"]);
    assert_eq!(code, 1);
    assert!(err.contains("no job nosuchjob found"), "{err}");
}

/// Output beyond the KV cap: `show` says so and how to get it all, `logs` gives it all with
/// each stream in its place, and a closed pipe ends every command quietly.
fn big_output(b: Backend) {
    let c = Single::start(b, &[]);
    let (a, h, node) = (c.addr(), c.http(), c.node.clone());
    let cmd = "head -c 300000 /dev/zero | tr '\\0' a; echo err-line >&2";
    let (code, _, err) = cli(&a, &["start", "--wait", "-c", cmd, "huge"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("`servant logs huge` prints all of it"),
        "{err}"
    );
    let r = h.wait_result("jdone_jid/jobs/huge", T);
    assert_eq!(r["OutputTruncated"], true);

    let (code, out, err) = cli(&a, &["show", "huge"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("(Output is truncated in KV; `servant logs huge` prints all of it)"),
        "{}",
        &out[out.len().saturating_sub(300)..]
    );
    let (code, out, err) = cli(&a, &["logs", "huge"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.len(), 300_000);
    assert!(out.bytes().all(|b| b == b'a'));
    assert_eq!(err, "err-line\n");
    let (_, out, err) = cli(&a, &["logs", "--stream", "stderr", "huge"]);
    assert_eq!((out.as_str(), err.as_str()), ("", "err-line\n"));
    let (_, out, err) = cli(&a, &["logs", "--stream", "stdout", "huge"]);
    assert_eq!((out.len(), err.as_str()), (300_000, ""));

    // A job of one node: the hint names the node.
    let (code, _, err) = cli(
        &a,
        &[
            "start",
            "--wait",
            "-n",
            &node,
            "-c",
            "head -c 200000 /dev/zero",
            "pn",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let hint = format!("`servant logs -n {node} pn` prints all of it");
    assert!(err.contains(&hint), "{err}");
    let (_, out, _) = cli(&a, &["show", "pn"]);
    assert!(
        out.contains(&hint),
        "{}",
        &out[out.len().saturating_sub(300)..]
    );

    // Closed pipes. Each output is well beyond a pipe's buffer, so the reader leaves first.
    let big = "b".repeat(200_000);
    assert_eq!(h.put("/v1/kv/bigkey", big).0, 200);
    for (args, head) in [
        (&["show", "--json", "huge"][..], "-c 100"),
        (&["show", "huge"], "-n 3"),
        (&["logs", "huge"], "-c 10"),
        (&["logs", "--stream", "stdout", "huge"], "-n 1"),
        (&["kv", "get", "bigkey"], "-c 5"),
    ] {
        let (code, err) = piped_to_head(&a, args, head);
        assert_eq!((code, err.as_str()), (0, ""), "{args:?} | head {head}");
    }
    let (code, err) = piped_to_head(&a, &["start", "--wait", "-c", cmd, "huge2"], "-c 100");
    assert_eq!(code, 0, "{err}");
    assert!(
        !err.contains("error") && !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );
}

on_both!(start_flags_and_targets, per_node_ids, big_output);

/// A client agent on `ip`, launched by its servant, joining the server at `server_ip`.
fn client_node(ip: &str, name: &str, server_ip: &str) -> Servant {
    let bin = consul_bin().display().to_string();
    Servant::launch(
        ip,
        &[
            "--launch-consul",
            "--bind",
            ip,
            "--client",
            ip,
            "--node",
            name,
            "--join",
            server_ip,
            "--consul-bin",
            &bin,
            "--max-parallel",
            "1",
            "--shutdown-grace",
            "1s",
            "--no-apps",
        ],
    )
    .ready()
}

/// `--wait` ends, with exit 1 and the reason, when the job's node fails or leaves while the job
/// runs on it or waits for it; a failed node is then refused. A real Consul server and client
/// agents (each launched by its servant) on loopback: one is killed, the other stopped.
#[test]
fn wait_stops_when_the_target_node_fails_or_leaves() {
    let server = ConsulDev::start();
    let a = server.addr();
    let net = server.ip.rsplit_once('.').unwrap().0.to_string();
    let client1 = client_node(&format!("{net}.3"), "client1", &server.ip);
    let client2 = client_node(&format!("{net}.4"), "client2", &server.ip);
    let h = server.http();
    for n in ["client1", "client2"] {
        wait_for("the clients' servant sessions", T, || {
            let v = h.get_json(&format!("/v1/session/node/{n}"))?;
            (!v.as_array()?.is_empty()).then_some(())
        });
    }
    let dir = tempfile::tempdir().unwrap();
    let spawn_wait = |node: &str, id: &str, cmd: &str| {
        let mut c = Command::new(servant_bin());
        c.args([
            "--http-addr",
            &a,
            "start",
            "--wait",
            "-n",
            node,
            "-c",
            cmd,
            id,
        ])
        .env_remove("CONSUL_HTTP_TOKEN")
        .env_remove("SERVANT_KV_PREFIX");
        spawn_logged(id, &mut c, &dir.path().join(format!("{id}.log")))
    };
    let running_on = |node: &str, id: &str| {
        wait_for(&format!("{id} running on {node}"), T, || {
            let (_, out, _) = cli(&a, &["show", "-n", node, id]);
            out.contains("running").then_some(())
        })
    };
    let mut run1 = spawn_wait("client1", "run1", "sleep 300");
    let mut run2 = spawn_wait("client2", "run2", "sleep 300");
    running_on("client1", "run1");
    running_on("client2", "run2");
    // max-parallel 1: these stay queued.
    let mut queued1 = spawn_wait("client1", "queued1", "echo q");
    let mut queued2 = spawn_wait("client2", "queued2", "echo q");
    for k in ["queues/client1/queued1", "queues/client2/queued2"] {
        wait_for(k, T, || h.kv_raw(k).map(|_| ()));
    }
    std::thread::sleep(Duration::from_millis(500));
    for p in [&mut run1, &mut run2, &mut queued1, &mut queued2] {
        assert!(p.alive(), "{}: {}", p.name, p.log_text());
    }

    // client1 fails: its Consul agent and its servant are SIGKILLed.
    let pid: i32 = std::fs::read_to_string(client1.data.path().join("consul.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    cluster::kill_pid(pid);
    client1.proc.signal(nix::sys::signal::Signal::SIGKILL);
    for (p, state) in [
        (&mut run1, "run1 was running on it"),
        (&mut queued1, "queued1 was queued for it"),
    ] {
        let st = p
            .wait_exit(Duration::from_secs(90))
            .unwrap_or_else(|| panic!("{} still waits: {}", p.name, p.log_text()));
        let text = p.log_text();
        assert_eq!(st.code(), Some(1), "{text}");
        assert!(
            text.contains("servant: error: node client1 failed (serfHealth critical")
                && text.contains(&format!("while job {state}")),
            "{text}"
        );
    }
    let (code, _, err) = cli(&a, &["start", "-n", "client1", "-c", "true"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("node client1 is failed, not alive"), "{err}");

    // client2 leaves: its servant is stopped, which ends its running job (a result) and makes
    // its Consul agent leave; the queued job's wait ends.
    client2.proc.signal(nix::sys::signal::Signal::SIGTERM);
    let st = run2.wait_exit(Duration::from_secs(90)).expect("run2 ends");
    assert_eq!(st.code(), Some(1), "{}", run2.log_text());
    let st = queued2
        .wait_exit(Duration::from_secs(90))
        .unwrap_or_else(|| panic!("queued2 still waits: {}", queued2.log_text()));
    let text = queued2.log_text();
    assert_eq!(st.code(), Some(1), "{text}");
    assert!(
        text.contains("servant: error: node client2 left")
            && text.contains("while job queued2 was queued for it"),
        "{text}"
    );
    drop(client2);
    drop(client1);
}
