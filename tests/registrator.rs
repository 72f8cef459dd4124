//! Registrator mode (issue 13) on the machine's real Docker Engine and a real Consul 1.8.7 dev
//! agent: services of `docker run` containers with their checks and DNS answers, deregistration
//! on `die`, no stale service after an agent killed while a container went, an event stream
//! broken by a socket proxy restart, resyncs that write nothing when nothing changed, the
//! `SERVICE_*` and flag semantics, and harbur's haproxy-consul template routing by host name.
//! Containers run from a `FROM scratch` busybox image built per test; every container a test
//! starts has a unique name and is removed by a guard (and by the image lab, by its label).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::docker::*;
use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

/// A container the test started, removed when dropped.
struct Ctr(String);

impl Drop for Ctr {
    fn drop(&mut self) {
        docker(&["rm", "-f", &self.0]);
    }
}

/// A name no other test (or run) uses.
fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "reg-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A TCP port free on this machine right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `docker run -d` of busybox httpd serving `body` on port 80, labelled with the lab's node
/// (so the lab removes it too), with `args` before the image.
fn run_httpd(lab: &ImageLab, name: &str, args: &[&str], body: &str) -> Ctr {
    let node_label = format!("servant.node={}", lab.node);
    let mut all = vec!["run", "-d", "--name", name, "-l", &node_label];
    all.extend_from_slice(args);
    let script =
        format!("mkdir -p /www && echo {body} > /www/index.html && exec httpd -f -p 80 -h /www");
    all.extend_from_slice(&[&lab.image, "sh", "-c", &script]);
    let (ok, _, err) = docker(&all);
    assert!(ok, "docker run {name}: {err}");
    Ctr(name.to_string())
}

/// The agent's services (the local agent's view), by ID.
fn agent_services(h: &Http) -> serde_json::Map<String, Value> {
    h.get_json("/v1/agent/services")
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default()
}

fn wait_service(h: &Http, id: &str) -> Value {
    wait_for(&format!("service {id} on the agent"), T, || {
        agent_services(h).get(id).cloned()
    })
}

fn wait_gone(h: &Http, id: &str, limit: Duration) {
    wait_for(&format!("service {id} gone from the agent"), limit, || {
        (!agent_services(h).contains_key(id)).then_some(())
    });
}

/// A Consul dev agent and its image lab.
fn consul_and_lab() -> (ImageLab, ConsulDev) {
    let c = ConsulDev::start();
    let lab = ImageLab::new(&c.node);
    (lab, c)
}

/// A registrator agent beside `c`, for this test's containers only (tests and other test
/// binaries run containers on the same Engine at once): `args` and `--only-label`.
fn registrator(c: &ConsulDev, args: &[&str], env: &[(&str, &str)]) -> Servant {
    let label = format!("servant.node={}", c.node);
    let mut all = args.to_vec();
    all.extend_from_slice(&["-only-label", &label]);
    Servant::start(&c.addr(), &c.ip, &all, env).ready()
}

/// How many times the agent's log says `needle`.
fn count_in_log(s: &Servant, needle: &str) -> usize {
    s.proc.log_text().matches(needle).count()
}

/// Issue 13's row: `docker run -d -p PORT:80 -l SERVICE_NAME=web -l SERVICE_CHECK_HTTP=/` gives
/// service `web`, ID `<node>:<name>:80`, at the node's advertise address, with a passing HTTP
/// check; it answers in Consul DNS; stopping the container deregisters it on the `die` event
/// (the resync is an hour away, so nothing else could).
#[test]
fn a_published_port_is_a_service_with_a_passing_check_in_dns_until_the_container_dies() {
    let (lab, c) = consul_and_lab();
    let h = c.http();
    let s = registrator(&c, &["--registrator", "--resync", "1h", "--no-apps"], &[]);
    let name = unique("web");
    let port = free_port();
    let publish = format!("{port}:80");
    let svc = unique("websvc");
    let ctr = run_httpd(
        &lab,
        &name,
        &[
            "-p",
            &publish,
            "-l",
            &format!("SERVICE_NAME={svc}"),
            "-l",
            "SERVICE_CHECK_HTTP=/",
            "-l",
            "SERVICE_CHECK_INTERVAL=1s",
            "-e",
            "SERVICE_VERSION=7",
        ],
        "hello",
    );
    let id = format!("{}:{name}:80", c.node);
    let got = wait_service(&h, &id);
    assert_eq!(got["Service"], svc.as_str(), "{got}");
    assert_eq!(got["Port"], port, "{got}");
    assert_eq!(
        got["Address"],
        c.ip.as_str(),
        "the advertise address: {got}"
    );
    assert_eq!(got["Meta"]["servant-registrator"], c.node.as_str(), "{got}");
    assert_eq!(got["Meta"]["version"], "7", "{got}");
    let passing = wait_for("a passing HTTP check in the catalog", T, || {
        let v = h.get_json(&format!("/v1/health/service/{svc}?passing"))?;
        let list = v.as_array()?.clone();
        (list.len() == 1).then_some(list)
    });
    let check = passing[0]["Checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|ch| ch["ServiceID"] == id.as_str())
        .cloned()
        .expect("the service's check");
    assert_eq!(check["Status"], "passing", "{check}");
    assert!(
        check["Output"].as_str().unwrap_or("").contains("200 OK"),
        "{check}"
    );

    // Consul DNS, SRV and A.
    let dig = |qtype: &str| {
        let out = std::process::Command::new("dig")
            .args([
                &format!("@{}", c.ip),
                "-p",
                "8600",
                &format!("{svc}.service.consul"),
                qtype,
                "+short",
            ])
            .output()
            .expect("dig");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let srv = wait_for("an SRV answer", T, || {
        let a = dig("SRV");
        a.contains(&format!(" {port} ")).then_some(a)
    });
    assert!(srv.contains(&format!(" {port} ")), "{srv}");
    assert_eq!(dig("A").trim(), c.ip, "A record");

    // `/metrics` counts the service it holds, and none once it is gone.
    let api = servant_api(&h);
    let held = |n: f64| {
        wait_for(&format!("servant_registrator_services {n}"), T, || {
            let (_, t) = common::metrics::get_metrics(&format!("http://{api}/metrics"), None);
            t.lines()
                .any(|l| l == format!("servant_registrator_services {n}"))
                .then_some(())
        })
    };
    held(1.0);

    // Stop: the die event deregisters it, long before any resync.
    let (ok, _, err) = docker(&["stop", "-t", "1", &name]);
    assert!(ok, "{err}");
    wait_gone(&h, &id, Duration::from_secs(20));
    // The line is logged once the deregistration call returns, which may be just after Consul
    // already answers without the service (CI read the log in between).
    wait_for("the die event's deregistration logged", T, || {
        s.proc
            .log_text()
            .contains("registrator: deregistered")
            .then_some(())
    });
    held(0.0);
    drop(ctr);
}

/// SIGKILL of the agent; meanwhile one container is removed and another started; the agent
/// restarted: the removed one's service goes, the new one's comes, and the survivor's is not
/// written again (its catalog ModifyIndex stays).
#[test]
fn no_stale_service_after_the_agent_is_killed_and_a_container_removed_meanwhile() {
    let (lab, c) = consul_and_lab();
    let h = c.http();
    let mut s = registrator(&c, &["--registrator", "--resync", "1h", "--no-apps"], &[]);
    let (a, b, n) = (unique("keep"), unique("gone"), unique("new"));
    let (sa, sb, sn) = (unique("sa"), unique("sb"), unique("sn"));
    // The survivor has an HTTP check: writing it again would reset it to critical.
    let _ca = run_httpd(
        &lab,
        &a,
        &[
            "-p",
            "80",
            "-l",
            &format!("SERVICE_NAME={sa}"),
            "-l",
            "SERVICE_CHECK_HTTP=/",
            "-l",
            "SERVICE_CHECK_INTERVAL=1s",
        ],
        "a",
    );
    let cb = run_httpd(
        &lab,
        &b,
        &["-p", "80", "-l", &format!("SERVICE_NAME={sb}")],
        "b",
    );
    let ida = format!("{}:{a}:80", c.node);
    let idb = format!("{}:{b}:80", c.node);
    let idn = format!("{}:{n}:80", c.node);
    wait_service(&h, &ida);
    wait_service(&h, &idb);
    wait_for(&format!("{sa} passing"), T, || {
        let v = h.get_json(&format!("/v1/health/service/{sa}?passing"))?;
        (v.as_array()?.len() == 1).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let health_index = || h.index_of(&format!("/v1/health/service/{sa}"));
    let before = health_index();

    s.proc.signal(nix::sys::signal::Signal::SIGKILL);
    assert!(s.proc.wait_exit(Duration::from_secs(10)).is_some());
    drop(cb); // docker rm -f while no agent watches
    let _cn = run_httpd(
        &lab,
        &n,
        &["-p", "80", "-l", &format!("SERVICE_NAME={sn}")],
        "n",
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        agent_services(&h).contains_key(&idb),
        "nobody removed it yet"
    );

    let s2 = registrator(&c, &["--registrator", "--resync", "1h", "--no-apps"], &[]);
    wait_gone(&h, &idb, T);
    wait_service(&h, &idn);
    let now = agent_services(&h);
    assert!(now.contains_key(&ida));
    let stale: Vec<_> = now
        .iter()
        .filter(|(id, v)| {
            v["Meta"]["servant-registrator"] == c.node.as_str() && *id != &ida && *id != &idn
        })
        .map(|(id, _)| id.clone())
        .collect();
    assert!(stale.is_empty(), "stale: {stale:?}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        health_index(),
        before,
        "the survivor's service was written again:\n{}",
        s2.proc.log_text()
    );
    // Consul keeps a re-registered check's state, so the index alone may miss one rewrite:
    // the restarted agent must not have registered the survivor at all.
    assert!(
        !s2.proc
            .log_text()
            .contains(&format!("registered service={ida} ")),
        "the survivor was registered again:\n{}",
        s2.proc.log_text()
    );
}

/// A unix-socket proxy to the real Engine socket, in threads: stop closes every connection.
struct SockProxy {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<UnixStream>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SockProxy {
    fn start(path: &Path) -> SockProxy {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).expect("bind the proxy socket");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<UnixStream>>> = Arc::default();
        let thread = {
            let (stop, conns) = (stop.clone(), conns.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let client = match listener.accept() {
                        Ok((c, _)) => c,
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                    };
                    let _ = client.set_nonblocking(false);
                    let Ok(upstream) = UnixStream::connect("/var/run/docker.sock") else {
                        continue;
                    };
                    let pipe = |mut from: UnixStream, mut to: UnixStream| {
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(std::net::Shutdown::Both);
                            let _ = from.shutdown(std::net::Shutdown::Both);
                        });
                    };
                    if let (Ok(c2), Ok(u2), Ok(c3), Ok(u3)) = (
                        client.try_clone(),
                        upstream.try_clone(),
                        client.try_clone(),
                        upstream.try_clone(),
                    ) {
                        conns.lock().unwrap().extend([c3, u3]);
                        pipe(client, u2);
                        pipe(upstream, c2);
                    }
                }
            })
        };
        SockProxy {
            path: path.to_path_buf(),
            stop,
            conns,
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for SockProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The event stream breaks (the proxy between agent and Engine stops, dropping every
/// connection); a container starts while it is down; the proxy comes back: the agent
/// reconnects, resyncs in full and registers that container (the periodic resync is an hour
/// away). The machine's Docker daemon is never restarted.
#[test]
fn the_event_stream_reconnects_through_a_restarted_proxy_and_resyncs() {
    let (lab, c) = consul_and_lab();
    let h = c.http();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("docker.sock");
    let mut proxy = SockProxy::start(&sock);
    let host = format!("unix://{}", sock.display());
    let s = registrator(
        &c,
        &["--registrator", "--resync", "1h", "--no-apps"],
        &[("DOCKER_HOST", host.as_str())],
    );
    let first = unique("before");
    let _c1 = run_httpd(
        &lab,
        &first,
        &["-p", "80", "-l", "SERVICE_NAME=before"],
        "1",
    );
    wait_service(&h, &format!("{}:{first}:80", c.node));

    proxy.stop();
    wait_for("the agent to see the stream break", T, || {
        let log = s.proc.log_text();
        (log.contains("event stream broke") || log.contains("event stream closed")).then_some(())
    });
    let during = unique("during");
    let _c2 = run_httpd(
        &lab,
        &during,
        &["-p", "80", "-l", "SERVICE_NAME=during"],
        "2",
    );
    std::thread::sleep(Duration::from_secs(2));
    let id = format!("{}:{during}:80", c.node);
    assert!(
        !agent_services(&h).contains_key(&id),
        "registered without the Engine?"
    );
    let _proxy = SockProxy::start(&sock);
    wait_service(&h, &id);
    let log = s.proc.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("registrator: resync") && l.contains("registered=1")),
        "registered by the full resync after the reconnection:\n{log}"
    );
}

/// Resyncs every 300 ms with nothing changed write nothing: the catalog's index stays, through
/// many resyncs, with services that have HTTP checks (a re-registration would reset them to
/// critical and move the index) and the agent logs no registration.
#[test]
fn a_resync_with_nothing_changed_writes_nothing() {
    let (lab, c) = consul_and_lab();
    let h = c.http();
    let s = registrator(
        &c,
        &["--registrator", "--resync", "300ms", "--no-apps"],
        &[],
    );
    let svc = unique("quiet");
    let mut ctrs = Vec::new();
    for i in 0..3 {
        let name = unique(&format!("q{i}"));
        ctrs.push(run_httpd(
            &lab,
            &name,
            &[
                "-p",
                "80",
                "-l",
                &format!("SERVICE_NAME={svc}"),
                "-l",
                "SERVICE_CHECK_HTTP=/",
                "-l",
                "SERVICE_CHECK_INTERVAL=1s",
            ],
            "q",
        ));
    }
    wait_for("three passing instances", T, || {
        let v = h.get_json(&format!("/v1/health/service/{svc}?passing"))?;
        (v.as_array()?.len() == 3).then_some(())
    });
    // Let the check outputs and anti-entropy settle.
    std::thread::sleep(Duration::from_secs(3));
    let index = h.index_of("/v1/catalog/services");
    let health = h.index_of(&format!("/v1/health/service/{svc}"));
    let registered = count_in_log(&s, "registrator: registered");
    let resyncs = count_in_log(&s, "registrator: resync");
    std::thread::sleep(Duration::from_secs(4));
    let later = count_in_log(&s, "registrator: resync");
    assert!(later >= resyncs + 5, "resyncs ran: {resyncs} then {later}");
    assert_eq!(
        h.index_of(&format!("/v1/health/service/{svc}")),
        health,
        "health index moved"
    );
    assert_eq!(
        h.index_of("/v1/catalog/services"),
        index,
        "catalog index moved"
    );
    assert_eq!(count_in_log(&s, "registrator: registered"), registered);
    drop(ctrs);
}

/// `SERVICE_IGNORE=false` does not ignore (registrator's bug), `true` does; `-explicit` skips a
/// container without `SERVICE_NAME`; `-tags` adds tags; all flags in Consul's one-dash form.
#[test]
fn ignore_false_explicit_and_tags() {
    let (lab, c) = consul_and_lab();
    let h = c.http();
    let s = registrator(
        &c,
        &[
            "-registrator",
            "-explicit",
            "-tags",
            "blue,green",
            "-resync",
            "300ms",
            "-no-apps",
        ],
        &[],
    );
    let (unnamed, ignored, kept) = (unique("unnamed"), unique("ignored"), unique("kept"));
    let _c1 = run_httpd(&lab, &unnamed, &["-p", "80"], "u");
    let _c2 = run_httpd(
        &lab,
        &ignored,
        &[
            "-p",
            "80",
            "-l",
            "SERVICE_NAME=ign",
            "-l",
            "SERVICE_IGNORE=true",
        ],
        "i",
    );
    let _c3 = run_httpd(
        &lab,
        &kept,
        &[
            "-p",
            "80",
            "-l",
            "SERVICE_NAME=kept",
            "-e",
            "SERVICE_IGNORE=false",
            "-l",
            "SERVICE_TAGS=x",
        ],
        "k",
    );
    let got = wait_service(&h, &format!("{}:{kept}:80", c.node));
    assert_eq!(
        got["Tags"],
        serde_json::json!(["x", "blue", "green"]),
        "{got}"
    );
    // Several resyncs later, still only that one.
    let n = count_in_log(&s, "resync, nothing to change");
    wait_for("three more resyncs", T, || {
        (count_in_log(&s, "resync, nothing to change") >= n + 3).then_some(())
    });
    let mine: Vec<String> = agent_services(&h)
        .into_iter()
        .filter(|(_, v)| v["Meta"]["servant-registrator"] == c.node.as_str())
        .map(|(id, _)| id)
        .collect();
    assert_eq!(mine, vec![format!("{}:{kept}:80", c.node)]);
}

/// `-internal`: the container's IP and exposed port, not a published one.
#[test]
fn internal_registers_the_container_ip_and_exposed_port() {
    let (lab, c) = consul_and_lab();
    let h = c.http();
    let _s = registrator(&c, &["-registrator", "-internal", "-no-apps"], &[]);
    let name = unique("internal");
    let _c = run_httpd(
        &lab,
        &name,
        &["--expose", "80", "-l", "SERVICE_NAME=inner"],
        "i",
    );
    let (ok, ip, err) = docker(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &name,
    ]);
    assert!(ok, "{err}");
    let got = wait_service(&h, &format!("{}:{name}:80", c.node));
    assert_eq!(got["Address"], ip.trim(), "{got}");
    assert_eq!(got["Port"], 80, "{got}");
}

/// One HTTP GET with a Host header: (status, body).
fn get_host(addr: &str, host: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET / HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((status, body))
}

/// Kills a process group when dropped (haproxy's master and workers).
struct GroupGuard(i32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// harbur's stack: two busybox httpd containers registered by the registrator, the shipped
/// `templates/haproxy-consul.ctmpl` rendered by `servant template`, a real haproxy: each is
/// reached by `<service>-<port>.<domain>`, and by `<service>.<domain>`; an unknown host is not.
#[test]
fn the_haproxy_consul_template_routes_each_container_by_host_name() {
    let (lab, c) = consul_and_lab();
    let h = c.http();
    let _s = registrator(&c, &["--registrator", "--no-apps"], &[]);
    let (alpha, beta) = (unique("alpha"), unique("beta"));
    let (sa, sb) = (unique("sa"), unique("sb"));
    let _ca = run_httpd(
        &lab,
        &alpha,
        &[
            "-p",
            "80",
            "-l",
            &format!("SERVICE_NAME={sa}"),
            "-l",
            "SERVICE_CHECK_HTTP=/",
            "-l",
            "SERVICE_CHECK_INTERVAL=1s",
        ],
        "from-alpha",
    );
    let _cb = run_httpd(
        &lab,
        &beta,
        &[
            "-p",
            "80",
            "-l",
            &format!("SERVICE_NAME={sb}"),
            "-l",
            "SERVICE_CHECK_HTTP=/",
            "-l",
            "SERVICE_CHECK_INTERVAL=1s",
        ],
        "from-beta",
    );
    for svc in [&sa, &sb] {
        wait_for(&format!("{svc} passing"), T, || {
            let v = h.get_json(&format!("/v1/health/service/{svc}?passing"))?;
            (v.as_array()?.len() == 1).then_some(())
        });
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("haproxy.cfg");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/haproxy-consul.ctmpl");
    let listen = format!("{}:{}", c.ip, free_port());
    let spec = format!("{}:{}", src.display(), out.display());
    let rendered = std::process::Command::new(servant_bin())
        .args([
            "--http-addr",
            &c.addr(),
            "template",
            "-template",
            &spec,
            "-once",
        ])
        .env("HAPROXY_DOMAIN", "example.test")
        .env("HAPROXY_BIND", &listen)
        .env_remove("CONSUL_HTTP_TOKEN")
        .output()
        .expect("servant template");
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let cfg = std::fs::read_to_string(&out).unwrap();
    let (ok, _, err) = {
        let o = std::process::Command::new("haproxy")
            .args(["-c", "-f", out.to_str().unwrap()])
            .output()
            .expect("haproxy -c");
        (
            o.status.success(),
            String::new(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    assert!(ok, "haproxy refuses the rendered config: {err}\n{cfg}");
    let mut hap = std::process::Command::new("haproxy");
    hap.args(["-db", "-f", out.to_str().unwrap()]);
    std::os::unix::process::CommandExt::process_group(&mut hap, 0);
    let haproxy = spawn_logged("haproxy", &mut hap, &dir.path().join("haproxy.log"));
    let _group = GroupGuard(haproxy.pid());
    for (svc, body) in [(&sa, "from-alpha"), (&sb, "from-beta")] {
        for host in [
            format!("{svc}-80.example.test"),
            format!("{svc}.example.test"),
            format!("{}-80.EXAMPLE.test:8080", svc.to_uppercase()),
        ] {
            let got = wait_for(&format!("{host} through haproxy"), T, || {
                get_host(&listen, &host).filter(|(s, _)| *s == 200)
            });
            assert_eq!(got.1.trim(), body, "{host}\n{cfg}");
        }
    }
    let (status, _) = get_host(&listen, "nobody-80.example.test").expect("an answer");
    assert_eq!(status, 503, "an unknown host reaches no backend");
}

/// `-deregister on-success`: a container that exits non-zero keeps its service (until it is
/// removed); one that exits 0 loses it, as with `always`.
#[test]
fn deregister_on_success_keeps_a_failed_containers_service_until_it_is_removed() {
    let (lab, c) = consul_and_lab();
    let h = c.http();
    let s = registrator(
        &c,
        &[
            "-registrator",
            "-deregister",
            "on-success",
            "-resync",
            "300ms",
            "-no-apps",
        ],
        &[],
    );
    let node_label = format!("servant.node={}", lab.node);
    let run = |name: &str, code: u8| {
        // httpd without -f goes to the background; the shell exits after the test saw it.
        let script = format!(
            "mkdir -p /www && echo x > /www/index.html && httpd -p 80 -h /www && \
             while [ ! -e /www/go ]; do sleep 0.1; done; exit {code}"
        );
        let (ok, _, err) = docker(&[
            "run",
            "-d",
            "--name",
            name,
            "-l",
            &node_label,
            "-p",
            "80",
            &lab.image,
            "sh",
            "-c",
            &script,
        ]);
        assert!(ok, "{err}");
        Ctr(name.to_string())
    };
    let (failed, fine) = (unique("fails"), unique("fine"));
    let cf = run(&failed, 3);
    let _cok = run(&fine, 0);
    let idf = format!("{}:{failed}:80", c.node);
    let idok = format!("{}:{fine}:80", c.node);
    wait_service(&h, &idf);
    wait_service(&h, &idok);
    for n in [&failed, &fine] {
        let (ok, _, err) = docker(&["exec", n, "touch", "/www/go"]);
        assert!(ok, "{err}");
    }
    wait_gone(&h, &idok, T);
    let (_, code, _) = docker(&["wait", &failed]);
    assert_eq!(code.trim(), "3");
    // Several resyncs later the failed one's service is still there.
    let n = count_in_log(&s, "registrator: resync");
    wait_for("three more resyncs", T, || {
        (count_in_log(&s, "registrator: resync") >= n + 3).then_some(())
    });
    assert!(agent_services(&h).contains_key(&idf));
    drop(cf);
    wait_gone(&h, &idf, T);
}

/// Consul itself restarts (a dev agent: every service is lost): the next resync registers the
/// containers' services again.
#[test]
fn services_come_back_after_consul_restarts() {
    let (lab, mut c) = consul_and_lab();
    let h = c.http();
    let _s = registrator(&c, &["-registrator", "-resync", "1s", "-no-apps"], &[]);
    let name = unique("back");
    let _ctr = run_httpd(&lab, &name, &["-p", "80", "-l", "SERVICE_NAME=back"], "b");
    let id = format!("{}:{name}:80", c.node);
    wait_service(&h, &id);

    c.proc.signal(nix::sys::signal::Signal::SIGKILL);
    assert!(c.proc.wait_exit(Duration::from_secs(10)).is_some());
    let mut cmd = std::process::Command::new(consul_bin());
    cmd.args([
        "agent", "-dev", "-bind", &c.ip, "-client", &c.ip, "-node", &c.node,
    ]);
    c.proc = spawn_logged("consul", &mut cmd, &c.dir.path().join("consul2.log"));
    wait_for("consul back with a leader", T, || {
        let (s, b) = h.try_get("/v1/status/leader")?;
        (s == 200 && b.len() > 4).then_some(())
    });
    wait_service(&h, &id);
}

/// `SERVICE_CHECK_TTL`: the agent passes the TTL check while the container runs (registrator's
/// `-ttl` did nothing on Consul), so it passes and stays passing past several TTLs; once the
/// container stops, its service goes.
#[test]
fn ttl_checks_are_passed_while_the_container_runs() {
    let (lab, c) = consul_and_lab();
    let h = c.http();
    let _s = registrator(&c, &["-registrator", "-no-apps"], &[]);
    let name = unique("ttl");
    let ctr = run_httpd(
        &lab,
        &name,
        &[
            "-p",
            "80",
            "-l",
            "SERVICE_NAME=ttl",
            "-l",
            "SERVICE_CHECK_TTL=3s",
        ],
        "t",
    );
    let id = format!("{}:{name}:80", c.node);
    let check = format!("service:{id}");
    let status = || -> Option<String> {
        h.get_json("/v1/agent/checks")?
            .get(&check)?
            .get("Status")?
            .as_str()
            .map(str::to_string)
    };
    wait_for("the TTL check passing", T, || {
        (status()? == "passing").then_some(())
    });
    // Three TTLs: without the agent's passes it would turn critical after one.
    for _ in 0..9 {
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(status().as_deref(), Some("passing"));
    }
    drop(ctr);
    wait_gone(&h, &id, T);
}
