//! Docker apps (issue 13) and the services of containers, on the machine's real Docker Engine
//! and real Consul: an app's `content` with `image` runs as a container through App Manager's
//! whole life cycle (health by `docker exec`, restart, update, removal), is adopted by a
//! restarted agent without a restart, moves when its node dies, and is routed by nginx through
//! `servant template`; services get the containers' published host ports. Each test builds its
//! own `FROM scratch` busybox image and removes every container made from it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use common::docker::*;
use common::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(90);

/// The test image, and this test's containers, told apart from other tests' by a label of
/// their own (`Docker.Labels`: the images of all tests are one image ID, and cluster nodes have
/// the same names in every test), all removed when dropped.
struct Images {
    lab: ImageLab,
    tag: String,
}

impl Images {
    fn new() -> Images {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let tag = format!(
            "{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        Images {
            lab: ImageLab::new(&format!("docker-apps-{tag}")),
            tag,
        }
    }

    fn image(&self) -> &str {
        &self.lab.image
    }

    /// The `Docker` object's labels that mark this test's containers.
    fn labels(&self) -> Value {
        json!({ "servant-test": self.tag })
    }

    fn filter(&self) -> String {
        format!("label=servant-test={}", self.tag)
    }

    /// Running containers of this image with app `app`: id → labels.
    fn running(&self, app: &str) -> BTreeMap<String, BTreeMap<String, String>> {
        let (_, out, _) = docker(&[
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            &self.filter(),
            "--filter",
            &format!("label=servant.app={app}"),
        ]);
        out.lines()
            .filter_map(|id| Some((id.to_string(), labels(id)?)))
            .collect()
    }

    /// Every container of this image, running or not.
    fn all(&self) -> Vec<String> {
        let (_, out, _) = docker(&["ps", "-aq", "--no-trunc", "--filter", &self.filter()]);
        out.lines().map(str::to_string).collect()
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        for c in self.all() {
            docker(&["rm", "-f", &c]);
        }
    }
}

fn labels(id: &str) -> Option<BTreeMap<String, String>> {
    let (ok, out, _) = docker(&["inspect", "--format", "{{json .Config.Labels}}", id]);
    ok.then(|| serde_json::from_str(out.trim()).ok()).flatten()
}

fn inspect(id: &str, format: &str) -> String {
    docker(&["inspect", "--format", format, id])
        .1
        .trim()
        .to_string()
}

/// The host port container `id` publishes its port `ctr` (`80/tcp`) on.
fn host_port(id: &str, ctr: &str) -> Option<u16> {
    let (ok, out, _) = docker(&["port", id, ctr]);
    if !ok {
        return None;
    }
    out.lines().next()?.rsplit(':').next()?.trim().parse().ok()
}

/// One HTTP GET: (status, body).
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((status, body))
}

/// This node's `applications` report entry for `app`.
fn app_state(h: &Http, node: &str, app: &str) -> Option<Value> {
    let v: Value =
        serde_json::from_str(&h.kv_raw(&format!("appmgr/status/{node}/applications"))?).ok()?;
    let s = v.get(app)?.clone();
    (!s.is_null()).then_some(s)
}

fn put_task(h: &Http, name: &str, v: &Value) {
    let (st, b) = h.put(&format!("/v1/kv/appmgr/task/{name}"), v.to_string());
    assert_eq!(st, 200, "{b}");
}

/// A busybox httpd serving `hello-<container hostname>` on port 80.
const HTTPD: &str =
    "mkdir -p /www && echo hello-$HOSTNAME > /www/index.html && exec httpd -f -p 80 -h /www";

/// The only running container of `app`, once there is exactly one.
fn one_running(img: &Images, app: &str) -> (String, BTreeMap<String, String>) {
    wait_for(&format!("one running container of {app}"), T, || {
        let r = img.running(app);
        (r.len() == 1).then(|| r.into_iter().next()).flatten()
    })
}

/// A service's catalog entries: (node, address, port).
fn instances(h: &Http, name: &str) -> Vec<(String, String, u64)> {
    h.get_json(&format!("/v1/catalog/service/{name}"))
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let addr = e["ServiceAddress"]
                .as_str()
                .filter(|a| !a.is_empty())
                .or(e["Address"].as_str())
                .unwrap_or_default();
            (
                e["Node"].as_str().unwrap_or_default().to_string(),
                addr.to_string(),
                e["ServicePort"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// A docker app: its container carries the agent's labels; its service is registered with
/// the published host port and the node's address, and answers there; its health command runs
/// by `docker exec` in the container; failing health restarts it (a new container, the next
/// attempt); a changed task replaces the container; `servant task rm` removes it and its
/// service.
#[test]
fn a_docker_app_runs_is_health_checked_restarted_updated_and_removed() {
    let img = Images::new();
    let c = ConsulDev::start();
    let h = c.http();
    let _s = c.servant(&[]).ready();
    let svc = format!("dapp-{}", std::process::id());
    let mut task = json!({"replication": 1, "content": {
        "image": img.image(),
        "command": format!("mkdir -p /tmp && touch /tmp/ok; {HTTPD}"),
        "docker": {"ports": ["80"], "labels": img.labels()},
        "env": {"V": "1"},
        "services": [{"Name": svc, "Port": 80}],
        "health_check_cmd": "test -f /tmp/ok",
        "health_check_interval_seconds": 1,
        "health_restart_after": 2,
    }});
    put_task(&h, "web", &task);

    let (id, l) = one_running(&img, "web");
    assert_eq!(l["servant.app"], "web");
    assert_eq!(l["servant.node"], c.node);
    assert_eq!(l["servant.attempt"], "1");
    let session = l["servant.session"].clone();
    assert_eq!(session.len(), 36, "the apps session's id: {l:?}");

    // The service has the container's host port and the node's address, and answers there.
    let port = host_port(&id, "80/tcp").expect("a published port");
    let inst = wait_for("the service registered", T, || {
        let i = instances(&h, &svc);
        (!i.is_empty()).then_some(i)
    });
    assert_eq!(inst, vec![(c.node.clone(), c.ip.clone(), u64::from(port))]);
    let (status, body) = wait_for("httpd answers", T, || get(&format!("{}:{port}", c.ip), "/"));
    assert_eq!(status, 200);
    assert_eq!(body.trim(), format!("hello-{}", &id[..12]));

    // Healthy by `docker exec` in the container (the file exists only in there).
    let st = wait_for("reported healthy", T, || {
        let st = app_state(&h, &c.node, "web")?;
        (st["health"] == 0).then_some(st)
    });
    assert!(st["pid"].as_i64().unwrap_or(0) > 0, "{st}");

    // Its health fails twice: the container is replaced, the next attempt.
    let (ok, _, err) = docker(&["exec", &id, "rm", "/tmp/ok"]);
    assert!(ok, "{err}");
    let (id2, l2) = wait_for("restarted for its health", T, || {
        let r = img.running("web");
        let (i, l) = r.into_iter().next()?;
        (i != id).then_some((i, l))
    });
    assert_eq!(l2["servant.attempt"], "2", "{l2:?}");
    wait_for("the unhealthy container removed", T, || {
        (!exists(&id)).then_some(())
    });
    let st = wait_for("healthy again", T, || {
        let st = app_state(&h, &c.node, "web")?;
        (st["health"] == 0 && st["restarts"] == 1).then_some(st)
    });
    assert!(
        st["last_exit"]
            .as_str()
            .unwrap_or_default()
            .contains("health checks failed"),
        "{st}"
    );

    // A changed task: the container is replaced by one with the new definition.
    task["content"]["env"]["V"] = json!("2");
    put_task(&h, "web", &task);
    let id3 = wait_for("replaced after the update", T, || {
        let r = img.running("web");
        let (i, _) = r.into_iter().next()?;
        (i != id2).then_some(i)
    });
    assert!(
        inspect(&id3, "{{json .Config.Env}}").contains("\"V=2\""),
        "{}",
        inspect(&id3, "{{json .Config.Env}}")
    );
    wait_for("the old container removed", T, || {
        (!exists(&id2)).then_some(())
    });
    let port3 = host_port(&id3, "80/tcp").expect("a published port");
    wait_for("the service follows the new port", T, || {
        (instances(&h, &svc) == vec![(c.node.clone(), c.ip.clone(), u64::from(port3))])
            .then_some(())
    });

    // `servant task rm`: the container and its service go.
    let (code, out, err) = cli(&c.addr(), &["task", "rm", "web"]);
    assert_eq!(code, 0, "{out}{err}");
    wait_for("no container left", T, || {
        img.all().is_empty().then_some(())
    });
    wait_for("the service deregistered", T, || {
        instances(&h, &svc).is_empty().then_some(())
    });
}

/// A periodic docker app (`start_interval_seconds`) is started again every interval, each time
/// a new container, the ended one removed; it logs into the app's log like a process app.
#[test]
fn a_periodic_docker_app_starts_every_interval() {
    let img = Images::new();
    let c = ConsulDev::start();
    let h = c.http();
    let s = c.servant(&[]).ready();
    put_task(
        &h,
        "tick",
        &json!({"content": {"image": img.image(), "command": "echo tick-$HOSTNAME",
                            "start_interval_seconds": 2, "docker": {"labels": img.labels()}}}),
    );
    let mut seen = BTreeSet::new();
    wait_for("three starts", T, || {
        let all = img.all();
        assert!(all.len() <= 1, "ended containers are removed: {all:?}");
        seen.extend(all);
        let st = app_state(&h, &c.node, "tick")?;
        (st["restarts"].as_u64()? >= 2).then_some(())
    });
    assert!(seen.len() >= 2, "a new container each start: {seen:?}");
    // Every start's output, appended to the app's log.
    let log = std::fs::read_to_string(s.data.path().join("apps/tick.out")).unwrap_or_default();
    let lines: BTreeSet<&str> = log.lines().filter(|l| l.starts_with("tick-")).collect();
    assert!(lines.len() >= 2, "{log:?}");
    let (code, out, err) = cli(&c.addr(), &["task", "rm", "tick"]);
    assert_eq!(code, 0, "{out}{err}");
    wait_for("no container left", T, || {
        img.all().is_empty().then_some(())
    });
}

/// A docker app whose node's topology key disappears is stopped and its container removed;
/// the leader then places it again: a new container.
#[test]
fn a_docker_app_stops_when_its_nodes_topology_key_disappears() {
    let img = Images::new();
    let c = ConsulDev::start();
    let h = c.http();
    let _s = c.servant(&[]).ready();
    put_task(
        &h,
        "keyed",
        &json!({"content": {"image": img.image(), "command": "exec sleep 100000",
                            "docker": {"labels": img.labels()}}}),
    );
    let (first, _) = one_running(&img, "keyed");
    h.delete(&format!("/v1/kv/appmgr/topology/{}", c.node));
    wait_for("the first container removed", T, || {
        (!exists(&first)).then_some(())
    });
    let (second, _) = one_running(&img, "keyed");
    assert_ne!(first, second);
    h.delete("/v1/kv/appmgr/task/keyed");
    wait_for("no container left", T, || {
        img.all().is_empty().then_some(())
    });
}

/// An agent restarted while a docker app runs, after SIGTERM and after SIGKILL: the new run
/// adopts the same container (same ID, same start time), never a second one.
#[test]
fn a_restarted_agent_adopts_its_app_containers() {
    let img = Images::new();
    let c = ConsulDev::start();
    let h = c.http();
    let mut s = c.servant(&[]).ready();
    put_task(
        &h,
        "keeper",
        &json!({"content": {"image": img.image(), "command": "exec sleep 100000",
                            "docker": {"labels": img.labels()}}}),
    );
    let (id, _) = one_running(&img, "keeper");
    let started = inspect(&id, "{{.State.StartedAt}}");
    wait_for("reported running", T, || {
        (app_state(&h, &c.node, "keeper")?["pid"].as_i64()? > 0).then_some(())
    });

    for sig in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGKILL,
    ] {
        s.proc.signal(sig);
        assert!(
            s.proc.wait_exit(Duration::from_secs(30)).is_some(),
            "the agent ends on {sig}"
        );
        // The container outlives the agent (until the apps session's fence deadline).
        assert_eq!(
            inspect(&id, "{{.State.Running}}"),
            "true",
            "after {sig}: {}",
            s.proc.log_text()
        );
        s = c.servant(&[]).ready();
        wait_for(&format!("adopted after {sig}"), T, || {
            s.proc.log_text().contains("app adopted").then_some(())
        });
        wait_for("reported running again", T, || {
            (app_state(&h, &c.node, "keeper")?["pid"].as_i64()? > 0).then_some(())
        });
        // Give a wrong adoption time to show: a restart, a second container.
        std::thread::sleep(Duration::from_secs(3));
        let running = img.running("keeper");
        assert_eq!(
            running.keys().collect::<Vec<_>>(),
            [&id],
            "after {sig}: the same container, no other:\n{}",
            s.proc.log_text()
        );
        assert_eq!(
            inspect(&id, "{{.State.StartedAt}}"),
            started,
            "not restarted"
        );
    }
    let (code, out, err) = cli(&c.addr(), &["task", "rm", "keeper"]);
    assert_eq!(code, 0, "{out}{err}");
    wait_for("the container removed", T, || {
        img.all().is_empty().then_some(())
    });
}

/// Self-fencing covers app containers: an agent paused (SIGSTOP) past its apps session's fence
/// deadline (`session_ttl` 10 s: 5 s) cannot stop its container, so the container's watchdog
/// kills it; woken, the agent removes it and, with its session confirmed again, starts a new one.
#[test]
fn a_paused_agents_app_container_is_killed_at_the_fence_deadline() {
    let img = Images::new();
    let c = ConsulDev::start();
    let h = c.http();
    let cfg = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(cfg.path(), "[apps]\nsession_ttl = \"10s\"\n").unwrap();
    let s = c
        .servant(&["--config", cfg.path().to_str().unwrap()])
        .ready();
    put_task(
        &h,
        "fenced",
        &json!({"content": {"image": img.image(), "command": "exec sleep 100000",
                            "docker": {"labels": img.labels()}}}),
    );
    let (id, _) = one_running(&img, "fenced");
    wait_for("reported running", T, || {
        (app_state(&h, &c.node, "fenced")?["pid"].as_i64()? > 0).then_some(())
    });
    assert_eq!(inspect(&id, "{{.State.Running}}"), "true");
    s.proc.signal(nix::sys::signal::Signal::SIGSTOP);
    wait_for("the watchdog kills the container", T, || {
        (inspect(&id, "{{.State.Running}}") == "false").then_some(())
    });
    s.proc.signal(nix::sys::signal::Signal::SIGCONT);
    let id2 = wait_for("a new container once the agent is back", T, || {
        img.running("fenced").into_keys().find(|i| *i != id)
    });
    wait_for("the killed container removed", T, || {
        (!exists(&id)).then_some(())
    });
    assert_ne!(id2, id);
    let (code, out, err) = cli(&c.addr(), &["task", "rm", "fenced"]);
    assert_eq!(code, 0, "{out}{err}");
    wait_for("no container left", T, || {
        img.all().is_empty().then_some(())
    });
}

/// In a cluster, an agent restarted (SIGKILL, then SIGTERM) while its Consul agent lives keeps
/// its replica: the leader holds the placements of a host whose reports vanished while its
/// `serfHealth` passes, and the new run adopts the same container; nothing moves.
#[test]
fn a_restarted_agent_in_a_cluster_keeps_and_adopts_its_replica() {
    let img = Images::new();
    let mut lab = common::lab::Lab::start(3, 0, true);
    for i in 0..3 {
        lab.start_servant(i, &[]);
    }
    let h = lab.http(0);
    put_task(
        &h,
        "kept",
        &json!({"replication": 2, "content": {"image": img.image(), "command": "exec sleep 100000",
                                              "docker": {"labels": img.labels()}}}),
    );
    let placed = wait_for("two containers on distinct nodes", T, || {
        let r = img.running("kept");
        let nodes: BTreeSet<String> = r.values().map(|l| l["servant.node"].clone()).collect();
        (r.len() == 2 && nodes.len() == 2).then_some(r)
    });
    let before: BTreeSet<String> = placed.keys().cloned().collect();
    // A replica's host that is not the leader: the leader's own restart is another story (a
    // new leader does not know the old one's hosts).
    let leader = h.kv_raw("appmgr/leader").expect("a leader");
    let (id, labels) = placed
        .iter()
        .find(|(_, l)| l["servant.node"] != leader)
        .expect("a replica off the leader");
    let i = lab
        .hosts
        .iter()
        .position(|x| x.node == labels["servant.node"])
        .unwrap();
    for sig in [
        nix::sys::signal::Signal::SIGKILL,
        nix::sys::signal::Signal::SIGTERM,
    ] {
        let adopted_before = lab.servant_logs(i).matches("app adopted").count();
        let mut p = lab.hosts[i].servant.take().expect("a servant");
        p.signal(sig);
        assert!(p.wait_exit(Duration::from_secs(30)).is_some());
        drop(p);
        lab.start_servant(i, &[]);
        wait_for(&format!("adopted after {sig}"), T, || {
            (lab.servant_logs(i).matches("app adopted").count() > adopted_before).then_some(())
        });
        std::thread::sleep(Duration::from_secs(3));
        let now: BTreeSet<String> = img.running("kept").into_keys().collect();
        assert_eq!(
            now,
            before,
            "after {sig}: the same two containers, nothing moved:\n{}",
            lab.servant_logs(i)
        );
        assert_eq!(inspect(id, "{{.State.Running}}"), "true");
    }
    h.delete("/v1/kv/appmgr/task/kept");
    wait_for("no container left", T, || {
        img.all().is_empty().then_some(())
    });
}

/// A docker job's services get the container's published host ports: a `Port` naming a
/// container port gets its host port; a service without one gets the first published port of
/// `Docker.Ports`. Both are deregistered when the job ends.
#[test]
fn a_docker_jobs_services_have_the_published_host_ports() {
    let img = Images::new();
    let c = ConsulDev::start();
    let h = c.http();
    let _s = c.servant(&[]).ready();
    let (a, b) = (
        format!("djob-a-{}", std::process::id()),
        format!("djob-b-{}", std::process::id()),
    );
    h.put(
        "/v1/kv/jobs/served",
        json!({"Type": "docker", "Image": img.image(), "Command": "sleep 8",
               "Docker": {"Ports": ["80", "9000"], "Labels": img.labels()},
               "Services": [{"Name": a, "Port": 9000}, {"Name": b}]})
        .to_string(),
    );
    let id = wait_for("the job's container", T, || {
        let (_, out, _) = docker(&["ps", "-q", "--no-trunc", "--filter", &img.filter()]);
        out.lines().next().map(str::to_string)
    });
    let p9000 = host_port(&id, "9000/tcp").expect("9000 published");
    let p80 = host_port(&id, "80/tcp").expect("80 published");
    assert_ne!(p9000, 9000, "a port the Engine picked");
    wait_for("both services registered", T, || {
        (!instances(&h, &a).is_empty() && !instances(&h, &b).is_empty()).then_some(())
    });
    assert_eq!(
        instances(&h, &a),
        vec![(c.node.clone(), c.ip.clone(), u64::from(p9000))]
    );
    assert_eq!(
        instances(&h, &b),
        vec![(c.node.clone(), c.ip.clone(), u64::from(p80))],
        "no Port: the first of Docker.Ports"
    );
    let r = h.wait_result("jdone_jid/jobs/served", T);
    assert_eq!(r["Status"], "succeeded", "{r}");
    assert!(instances(&h, &a).is_empty() && instances(&h, &b).is_empty());
}

/// Bad container apps are invalid tasks with the reason, reported by the leader; the agent
/// goes on and runs the good one beside them.
#[test]
fn bad_docker_apps_are_reported_and_the_agent_goes_on() {
    let img = Images::new();
    let c = ConsulDev::start();
    let h = c.http();
    let s = c.servant(&[]).ready();
    put_task(
        &h,
        "unknown",
        &json!({"content": {"image": img.image(), "docker": {"Portz": ["80"]}}}),
    );
    put_task(
        &h,
        "badport",
        &json!({"content": {"image": img.image(), "docker": {"ports": ["80:x"]}}}),
    );
    put_task(&h, "spaces", &json!({"content": {"image": "bad image"}}));
    put_task(
        &h,
        "good",
        &json!({"content": {"image": img.image(), "command": "exec sleep 100000",
                            "docker": {"labels": img.labels()}}}),
    );
    let invalid = wait_for("the invalid tasks reported", T, || {
        let v: Value = serde_json::from_str(&h.kv_raw("appmgr/schedule")?).ok()?;
        let inv = v["invalid"].as_object()?.clone();
        (inv.len() == 3).then_some(inv)
    });
    for (name, want) in [
        ("unknown", "unknown key \"Portz\""),
        ("badport", "80:x"),
        ("spaces", "bad image"),
    ] {
        let why = invalid[name].as_str().unwrap_or_default();
        assert!(why.contains(want), "{name}: {why:?} should say {want:?}");
    }
    one_running(&img, "good");
    let names: BTreeSet<String> = img
        .all()
        .iter()
        .filter_map(|id| labels(id)?.get("servant.app").cloned())
        .collect();
    assert_eq!(names, BTreeSet::from(["good".to_string()]));
    // The CLI refuses the same at `task put`, with the reason.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.json");
    std::fs::write(
        &f,
        json!({"content": {"name": "x", "image": img.image(), "docker": {"Portz": []}}})
            .to_string(),
    )
    .unwrap();
    let (code, _, err) = cli(&c.addr(), &["task", "put", f.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("Portz"), "{err}");
    let mut s = s;
    assert!(s.proc.alive(), "the agent goes on");
    let (code, out, err) = cli(&c.addr(), &["task", "rm", "good"]);
    assert_eq!(code, 0, "{out}{err}");
    wait_for("the container removed", T, || {
        img.all().is_empty().then_some(())
    });
}

/// Kills a whole process group when dropped: nginx's workers with their master.
struct GroupGuard(i32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Bodies seen in `n` requests through `addr`, and how many failed.
fn spread(addr: &str, n: usize) -> (BTreeSet<String>, usize) {
    let mut seen = BTreeSet::new();
    let mut failed = 0;
    for _ in 0..n {
        match get(addr, "/") {
            Some((200, body)) => {
                seen.insert(body.trim().to_string());
            }
            _ => failed += 1,
        }
    }
    (seen, failed)
}

/// Starts nginx routing service `svc` from a `servant template` of node 0's catalog.
fn nginx_for(
    consul: &str,
    d: &Path,
    svc: &str,
    listen: &str,
) -> (Proc, GroupGuard, Proc, std::path::PathBuf) {
    std::fs::write(
        d.join("routes.ctmpl"),
        format!(
            "upstream dweb {{\n{{{{- range service \"{svc}\"}}}}\n  server {{{{.Address}}}}:{{{{.Port}}}};\n{{{{- else}}}}\n  server 127.0.0.1:65535;\n{{{{- end}}}}\n}}\nserver {{\n  listen {listen};\n  location / {{ proxy_pass http://dweb; }}\n}}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("nginx.conf"),
        format!(
            "worker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\nevents {{}}\nhttp {{\n  access_log off;\n  include {dir}/routes.conf;\n}}\n",
            dir = d.display()
        ),
    )
    .unwrap();
    let (src, out) = (d.join("routes.ctmpl"), d.join("routes.conf"));
    let (code, _, err) = render_once(consul, &src, &out, &[]);
    assert_eq!(code, 0, "{err}");
    let conf = d.join("nginx.conf");
    let prefix = d.display().to_string();
    let mut ngx = std::process::Command::new("nginx");
    ngx.args([
        "-p",
        &prefix,
        "-c",
        conf.to_str().unwrap(),
        "-g",
        "daemon off;",
    ]);
    std::os::unix::process::CommandExt::process_group(&mut ngx, 0);
    let nginx = spawn_logged("nginx", &mut ngx, &d.join("nginx.log"));
    let group = GroupGuard(nginx.pid());
    let reload = format!("nginx -p {prefix} -c {} -s reload", conf.display());
    let mut command = std::process::Command::new(servant_bin());
    command.args([
        "--http-addr",
        consul,
        "template",
        "-template",
        &format!("{}:{}:{reload}", src.display(), out.display()),
        "-wait",
        "500ms:2s",
    ]);
    let t = spawn_logged("servant template", &mut command, &d.join("template.log"));
    (nginx, group, t, out)
}

/// A docker app with replication 2 on a 3-node cluster: two containers on distinct nodes, each
/// registered with its host port and node address; nginx, configured by `servant template`,
/// reaches both. SIGKILL of one replica's node (servant and its Consul): nginx drops it, the
/// replica moves to the third node (and nginx reaches it), and the dead node's container goes
/// at its fence deadline. `servant task rm` removes the containers.
#[test]
fn a_replicated_docker_app_moves_with_its_node_and_is_routed_by_nginx() {
    let img = Images::new();
    let mut c = common::cluster::Cluster::start_n(3, &[]);
    let h = c.http(0);
    let svc = format!("dweb-{}", std::process::id());
    put_task(
        &h,
        "dweb",
        &json!({"replication": 2, "content": {
            "image": img.image(),
            "command": HTTPD,
            "docker": {"ports": ["80"], "labels": img.labels()},
            "services": [{"Name": svc, "Port": 80}],
        }}),
    );
    let placed = wait_for("two containers on distinct nodes", T, || {
        let r = img.running("dweb");
        let nodes: BTreeSet<String> = r.values().map(|l| l["servant.node"].clone()).collect();
        (r.len() == 2 && nodes.len() == 2).then_some(r)
    });
    let nodes: BTreeMap<String, String> = placed
        .iter()
        .map(|(id, l)| (l["servant.node"].clone(), id.clone()))
        .collect();
    // Each replica's service: its node's address, its container's host port.
    let want: BTreeSet<(String, String, u64)> = nodes
        .iter()
        .map(|(n, id)| {
            let ip = c.nodes[c.index_of(n)].ip.clone();
            (n.clone(), ip, u64::from(host_port(id, "80/tcp").unwrap()))
        })
        .collect();
    wait_for("both replicas registered", T, || {
        let got: BTreeSet<_> = instances(&h, &svc).into_iter().collect();
        (got == want).then_some(())
    });

    // nginx, fed by node 1's catalog, reaches both.
    let dir = tempfile::tempdir().unwrap();
    let listen = format!(
        "{}:{}",
        c.nodes[0].ip,
        24_000 + (std::process::id() % 1_000) as u16 * 8
    );
    let (_nginx, _group, _t, out) = nginx_for(&c.addr(0), dir.path(), &svc, &listen);
    let hello = |id: &str| format!("hello-{}", &id[..12]);
    let both: BTreeSet<String> = nodes.values().map(|id| hello(id)).collect();
    wait_for("nginx reaches both replicas", T, || {
        (spread(&listen, 12).0 == both).then_some(())
    });

    // SIGKILL a replica's node (not node 1, which feeds the template).
    let (victim, victim_id) = nodes
        .iter()
        .find(|(n, _)| n.as_str() != c.nodes[0].name)
        .map(|(n, id)| (n.clone(), id.clone()))
        .expect("a replica off node 1");
    let survivor_id = nodes
        .values()
        .find(|id| **id != victim_id)
        .cloned()
        .unwrap();
    let vi = c.index_of(&victim);
    let victim_port = host_port(&victim_id, "80/tcp").unwrap();
    c.sigkill(vi);
    wait_for("nginx drops the dead node's replica", T, || {
        std::fs::read_to_string(&out)
            .ok()
            .filter(|t| !t.contains(&format!("{}:{victim_port};", c.nodes[vi].ip)))
    });
    // The replica moves to the third node.
    let third = c
        .names()
        .into_iter()
        .find(|n| !nodes.contains_key(n))
        .expect("a third node");
    let moved = wait_for("the replica moved to the third node", T, || {
        img.running("dweb")
            .into_iter()
            .find(|(_, l)| l["servant.node"] == third)
            .map(|(id, _)| id)
    });
    let now: BTreeSet<String> = [hello(&survivor_id), hello(&moved)].into();
    wait_for(
        "nginx reaches the survivor and the moved replica",
        T,
        || (spread(&listen, 12).0 == now).then_some(()),
    );
    wait_for(
        "the dead node's container removed at its fence deadline",
        T,
        || (!exists(&victim_id)).then_some(()),
    );

    // `servant task rm`: every container goes.
    let (code, o, err) = cli(&c.addr(0), &["task", "rm", "dweb"]);
    assert_eq!(code, 0, "{o}{err}");
    wait_for("no container left", T, || {
        img.all().is_empty().then_some(())
    });
}
