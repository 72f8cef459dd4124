//! A fault lab: Consul servers and clients, each on a host with its own network stack (see
//! `netns`), each with a servant agent beside it; processes the test can kill, pause, cut off
//! and restart one by one. The servants run with the product's defaults unless told otherwise,
//! since the fault tests check the documented bounds.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::netns::Net;
use super::{consul_bin, servant_bin, spawn_logged, wait_for, Http, Proc};

/// One host of the lab.
pub struct LabHost {
    pub ip: String,
    /// Consul's node name.
    pub node: String,
    pub server: bool,
    pub consul: Option<Proc>,
    pub servant: Option<Proc>,
    pub consul_dir: tempfile::TempDir,
    pub servant_dir: tempfile::TempDir,
}

pub struct Lab {
    pub net: Net,
    pub hosts: Vec<LabHost>,
    /// `raft_multiplier = 1`; false keeps Consul's default Raft timing (elections of 13–18 s).
    pub fast_raft: bool,
    /// Extra `servant agent` arguments for every servant.
    pub servant_args: Vec<String>,
}

impl Lab {
    /// `servers` Consul servers then `clients` client agents, all joined; no servant yet.
    pub fn start(servers: usize, clients: usize, fast_raft: bool) -> Lab {
        let net = Net::new(servers + clients);
        let hosts = (0..servers + clients)
            .map(|i| LabHost {
                ip: net.hosts[i].ip.clone(),
                node: format!("{}{}", if i < servers { "s" } else { "c" }, i + 1),
                server: i < servers,
                consul: None,
                servant: None,
                consul_dir: tempfile::tempdir().expect("tempdir"),
                servant_dir: tempfile::tempdir().expect("tempdir"),
            })
            .collect();
        let mut lab = Lab {
            net,
            hosts,
            fast_raft,
            servant_args: Vec::new(),
        };
        for i in 0..lab.hosts.len() {
            lab.start_consul(i);
        }
        let n = lab.hosts.len();
        wait_for("every member alive", Duration::from_secs(90), || {
            let (st, body) = lab.http(0).try_get("/v1/agent/members")?;
            let v: Value = serde_json::from_str(&body).ok().filter(|_| st == 200)?;
            let alive = v.as_array()?.iter().filter(|m| m["Status"] == 1).count();
            (alive == n && lab.leader().is_some()).then_some(())
        });
        lab
    }

    /// (Re)starts host `i`'s Consul agent in its data dir.
    pub fn start_consul(&mut self, i: usize) {
        let h = &self.hosts[i];
        let servers: Vec<String> = self
            .hosts
            .iter()
            .filter(|x| x.server)
            .map(|x| x.ip.clone())
            .collect();
        let mut c = self.net.command(i, consul_bin());
        c.args(["agent", "-bind", &h.ip, "-client", &h.ip, "-node", &h.node])
            .arg(format!("-data-dir={}", h.consul_dir.path().display()))
            .args(["-log-level", "info"]);
        if h.server {
            c.args(["-server", &format!("-bootstrap-expect={}", servers.len())]);
        }
        for s in &servers {
            if s != &h.ip {
                c.arg(format!("-retry-join={s}"));
            }
        }
        if self.fast_raft {
            c.args(["-hcl", "performance { raft_multiplier = 1 }"]);
        }
        let log = h
            .consul_dir
            .path()
            .join(format!("consul-{}.log", now_tag()));
        let p = spawn_logged(&format!("consul {}", h.node), &mut c, &log);
        self.hosts[i].consul = Some(p);
    }

    /// (Re)starts host `i`'s servant agent in its data dir, talking to the host's Consul.
    pub fn start_servant(&mut self, i: usize, extra: &[&str]) {
        let h = &self.hosts[i];
        let mut c = self.net.command(i, servant_bin());
        c.args([
            "agent",
            "--http-addr",
            &format!("{}:8500", h.ip),
            "--data-dir",
        ])
        .arg(h.servant_dir.path())
        .args(["--api-addr", &format!("{}:0", h.ip)])
        .args(&self.servant_args)
        .args(extra)
        .env("SERVANT_LOG", "info,servant=debug")
        .env_remove("CONSUL_HTTP_TOKEN")
        .env_remove("CONSUL_HTTP_ADDR");
        let log = h
            .servant_dir
            .path()
            .join(format!("agent-{}.log", now_tag()));
        let p = spawn_logged(&format!("servant {}", h.node), &mut c, &log);
        self.hosts[i].servant = Some(p);
        let log2 = log.clone();
        wait_for(
            &format!("servant on {} ready", self.hosts[i].node),
            Duration::from_secs(60),
            move || {
                std::fs::read_to_string(&log2)
                    .ok()?
                    .contains("servant agent ready")
                    .then_some(())
            },
        );
    }

    /// The HTTP API of host `i`'s Consul.
    pub fn http(&self, i: usize) -> Http {
        Http::new(&format!("{}:8500", self.hosts[i].ip))
    }

    /// A host whose Consul answers, other than those in `not`.
    pub fn http_except(&self, not: &[usize]) -> Http {
        let i = (0..self.hosts.len())
            .find(|i| !not.contains(i) && self.hosts[*i].consul.is_some())
            .expect("a host left");
        self.http(i)
    }

    /// The index of the Raft leader's host, as host 0's Consul (or any other) knows it.
    pub fn leader(&self) -> Option<usize> {
        for i in 0..self.hosts.len() {
            if self.hosts[i].consul.is_none() {
                continue;
            }
            if let Some((200, body)) = self.http(i).try_get("/v1/status/leader") {
                let addr: String = serde_json::from_str(&body).unwrap_or_default();
                let ip = addr.split(':').next().unwrap_or("");
                if let Some(j) = self.hosts.iter().position(|h| h.ip == ip) {
                    return Some(j);
                }
            }
        }
        None
    }

    pub fn kill_consul(&mut self, i: usize) {
        if let Some(mut p) = self.hosts[i].consul.take() {
            p.signal(nix::sys::signal::Signal::SIGKILL);
            p.wait_exit(Duration::from_secs(10));
        }
    }

    pub fn kill_servant(&mut self, i: usize) {
        if let Some(mut p) = self.hosts[i].servant.take() {
            p.signal(nix::sys::signal::Signal::SIGKILL);
            p.wait_exit(Duration::from_secs(10));
        }
    }

    pub fn signal_servant(&self, i: usize, sig: nix::sys::signal::Signal) {
        if let Some(p) = &self.hosts[i].servant {
            p.signal(sig);
        }
    }

    /// A Consul leader election: SIGKILLs host `leader`'s Consul, starts it again after
    /// `restart_after`, and returns 20 s after that restart (Consul 1.8 has no pre-vote, so
    /// the returning server may force a second election) once a leader takes writes (through
    /// `probe`), with roughly how long writes had no leader in all.
    pub fn election(&mut self, leader: usize, probe: &Http, restart_after: Duration) -> Duration {
        let t0 = std::time::Instant::now();
        self.kill_consul(leader);
        let mut leaderless = Duration::ZERO;
        let mut restarted = false;
        loop {
            let t = std::time::Instant::now();
            // A write goes through only with a leader.
            let writes = matches!(probe.try_put("/v1/kv/probe", "x"), Some((200, _)));
            let l = if writes { self.leader() } else { None };
            if l.is_none() {
                leaderless += t.elapsed().max(Duration::from_millis(100));
            }
            if !restarted && t0.elapsed() >= restart_after {
                self.start_consul(leader);
                restarted = true;
            }
            if restarted && l.is_some() && t0.elapsed() >= restart_after + Duration::from_secs(20) {
                return leaderless;
            }
            assert!(
                t0.elapsed() < restart_after + Duration::from_secs(90),
                "no leader 90 s after the restart"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every log of host `i`'s servants so far, for a failure message.
    pub fn servant_logs(&self, i: usize) -> String {
        let mut out = String::new();
        if let Ok(rd) = std::fs::read_dir(self.hosts[i].servant_dir.path()) {
            let mut paths: Vec<PathBuf> = rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect();
            paths.sort();
            for p in paths {
                out.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
            }
        }
        out
    }

    /// Every servant log line, on every host, that names `needle` (a job key, say), each
    /// prefixed with its host's node name: what a failure message needs about one job.
    pub fn lines_about(&self, needle: &str) -> String {
        let mut out = String::new();
        for (i, h) in self.hosts.iter().enumerate() {
            for l in self
                .servant_logs(i)
                .lines()
                .filter(|l| l.contains(needle))
                .take(60)
            {
                out.push_str(&format!("{}: {l}\n", h.node));
            }
        }
        out
    }

    /// With `SERVANT_KEEP_LOGS=DIR`, copies every log of the lab there, for a closer look.
    fn keep_logs(&self) {
        let Some(keep) = std::env::var_os("SERVANT_KEEP_LOGS") else {
            return;
        };
        for h in &self.hosts {
            let to = PathBuf::from(&keep).join(&h.node);
            let _ = std::fs::create_dir_all(&to);
            for d in [h.consul_dir.path(), h.servant_dir.path()] {
                for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
                    if e.path().extension().is_some_and(|x| x == "log") {
                        let _ = std::fs::copy(e.path(), to.join(e.file_name()));
                    }
                }
            }
        }
    }

    /// What a failure message needs about `node`: its servants' warnings and errors, and what
    /// every Consul agent logged about it (membership, serf health, sessions).
    pub fn diagnosis(&self, node: &str) -> String {
        let mut out = format!("--- servant errors on {node}:\n");
        if let Some(i) = self.hosts.iter().position(|h| h.node == node) {
            for l in self
                .servant_logs(i)
                .lines()
                .filter(|l| l.contains("ERROR") || l.contains("killing"))
                .take(80)
            {
                out.push_str(l);
                out.push('\n');
            }
        }
        for h in &self.hosts {
            out.push_str(&format!("--- consul {} on {node}:\n", h.node));
            let Ok(rd) = std::fs::read_dir(h.consul_dir.path()) else {
                continue;
            };
            let mut paths: Vec<PathBuf> = rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect();
            paths.sort();
            for p in paths {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                for l in text
                    .lines()
                    .filter(|l| {
                        let low = l.to_lowercase();
                        l.contains(node)
                            && !low.contains("agent.http")
                            && [
                                "fail", "suspect", "invalid", "critical", "session", "reap", "leav",
                            ]
                            .iter()
                            .any(|w| low.contains(w))
                    })
                    .take(40)
                {
                    out.push_str(l);
                    out.push('\n');
                }
            }
        }
        out
    }

    /// The node (of this lab) whose session holds `key`, if any.
    pub fn holder_node(&self, h: &Http, key: &str) -> Option<String> {
        let sid = h.get_json(&format!("/v1/kv/{key}"))?[0]["Session"]
            .as_str()?
            .to_string();
        let info: Value = h.get_json(&format!("/v1/session/info/{sid}"))?;
        info[0]["Node"].as_str().map(str::to_string)
    }
}

impl Drop for Lab {
    /// A failed test's logs go with its temporary directories, unless `SERVANT_KEEP_LOGS=DIR`
    /// asks to keep them.
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.keep_logs();
        }
    }
}

/// A name part that orders logs by start.
fn now_tag() -> String {
    format!(
        "{:020}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    )
}

/// A job that proves it never ran twice at once: it holds a per-job `flock` while it runs and
/// writes `start`/`end` lines (with the session and attempt it ran under, and on `start` its
/// host's network namespace) to `<dir>/<id>.log`;
/// when the lock is already held, it writes `OVERLAP` instead.
pub fn guarded_job(dir: &std::path::Path, id: &str, secs: u64, retries: u32) -> Value {
    let lock = dir.join(format!("{id}.lock"));
    let log = dir.join(format!("{id}.log"));
    let body = format!(
        "echo \"start $(date +%s%N) $SERVANT_SESSION $SERVANT_ATTEMPT $(readlink /proc/self/ns/net)\" >> {log}; sleep {secs}; echo \"end $(date +%s%N) $SERVANT_SESSION $SERVANT_ATTEMPT\" >> {log}",
        log = log.display()
    );
    let cmd = format!(
        "flock -n {lock} -c '{body}' || echo \"OVERLAP $(date +%s%N)\" >> {log}",
        lock = lock.display(),
        log = log.display()
    );
    serde_json::json!({"Command": cmd, "Timeout": secs + 120, "Retries": retries})
}

/// The lines a guarded job wrote.
pub fn job_log(dir: &std::path::Path, id: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{id}.log"))).unwrap_or_default()
}

/// The load of an election test: three Consul servers with Consul's default Raft timing, a
/// servant on each (room for 110 jobs), and 100 guarded 40 s jobs (logs in `dir`) running on
/// each non-leader.
pub struct ElectionLoad {
    pub lab: Lab,
    pub leader: usize,
    pub others: Vec<usize>,
    /// The jobs' keys; a key's last part is its guarded job's id.
    pub keys: Vec<String>,
}

pub fn election_load(dir: &std::path::Path) -> ElectionLoad {
    let mut lab = Lab::start(3, 0, false);
    lab.servant_args = vec!["--max-parallel".into(), "110".into()];
    for i in 0..3 {
        lab.start_servant(i, &[]);
    }
    let leader = lab.leader().expect("a leader");
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let h = lab.http(others[0]);
    let mut keys = Vec::new();
    for (n, i) in others.iter().enumerate() {
        for j in 0..100 {
            let id = format!("e{n}x{j}");
            let key = format!("queues/{}/{id}", lab.hosts[*i].node);
            let (st, _) = h.put(
                &format!("/v1/kv/{key}"),
                guarded_job(dir, &id, 40, 0).to_string(),
            );
            assert_eq!(st, 200, "queue {key}");
            keys.push(key);
        }
    }
    wait_for("all 200 running", Duration::from_secs(120), || {
        keys.iter()
            .all(|k| job_log(dir, k.rsplit('/').next().unwrap_or_default()).contains("start"))
            .then_some(())
    });
    ElectionLoad {
        lab,
        leader,
        others,
        keys,
    }
}
