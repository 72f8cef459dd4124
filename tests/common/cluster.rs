//! A loopback cluster: servants that each launch their own Consul server on their own address,
//! in a subnet of their own (the one-executable cluster start).

use std::path::Path;
use std::time::Duration;

use super::*;

pub const T: Duration = Duration::from_secs(60);

pub struct Node {
    pub name: String,
    pub ip: String,
    pub servant: Option<Servant>,
    /// How it was launched, for a restart.
    args: Vec<String>,
    /// The data dir of a node killed with `sigkill_keep`, for `restart`.
    kept: Option<tempfile::TempDir>,
}

pub struct Cluster {
    pub net: String,
    pub nodes: Vec<Node>,
    /// Arguments every server node gets besides its addresses and joins.
    extra: Vec<String>,
}

impl Cluster {
    /// Three Consul servers, launched by their servants with -server -bootstrap-expect 3.
    pub fn start() -> Cluster {
        Self::start_n(3, &[])
    }

    /// `n` servers (bootstrap-expect 3), each servant also given `extra`.
    pub fn start_n(n: usize, extra: &[&str]) -> Cluster {
        Self::start_each(n, extra, |_| Vec::new())
    }

    /// `n` servers, node `i` also given `per(i)`.
    pub fn start_each(n: usize, extra: &[&str], per: impl Fn(usize) -> Vec<String>) -> Cluster {
        let mut c = Cluster {
            net: subnet(),
            nodes: Vec::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        let launched: Vec<(Servant, Vec<String>)> = (0..n)
            .map(|i| {
                let args = c.args(i, n, true, &per(i));
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                (Servant::launch(&c.ip(i), &refs), args)
            })
            .collect();
        for (i, (s, args)) in launched.into_iter().enumerate() {
            c.nodes.push(Node {
                name: format!("node{}", i + 1),
                ip: c.ip(i),
                servant: Some(s.ready()),
                args,
                kept: None,
            });
        }
        let h = c.http(0);
        wait_for("live servants", T, || {
            let v = h.get_json("/v1/session/list")?;
            (v.as_array()?
                .iter()
                .filter(|s| s["Name"] == "servant")
                .count()
                == n)
                .then_some(())
        });
        super::metrics::wait_every_node_sees(&h, &c.names(), n);
        c
    }

    fn ip(&self, i: usize) -> String {
        format!("{}.{}", self.net, i + 2)
    }

    /// The arguments of node `i`, joining the first `known` nodes' addresses; a Consul server
    /// or a client agent.
    fn args(&self, i: usize, known: usize, server: bool, more: &[String]) -> Vec<String> {
        let ip = self.ip(i);
        let mut args: Vec<String> = if server {
            vec!["--server".into(), "--bootstrap-expect".into(), "3".into()]
        } else {
            vec!["--launch-consul".into()]
        };
        args.extend([
            "--bind".into(),
            ip.clone(),
            "--client".into(),
            ip.clone(),
            "--node".into(),
            format!("node{}", i + 1),
        ]);
        for j in 0..known {
            if j != i {
                args.push("--join".into());
                args.push(self.ip(j));
            }
        }
        args.extend([
            "--consul-bin".into(),
            consul_bin().display().to_string(),
            // Long enough that a loaded machine's scheduling delays stay inside the hold (3 s);
            // short enough for quick retries.
            "--lock-delay".into(),
            "5s".into(),
            "--kill-grace".into(),
            "1s".into(),
        ]);
        args.push("--consul-arg=-hcl=performance { raft_multiplier = 1 }".into());
        if server {
            args.extend(self.extra.iter().cloned());
        }
        args.extend(more.iter().cloned());
        args
    }

    /// Adds one more server node joining the others; returns its index.
    pub fn add_node(&mut self) -> usize {
        self.add(true, &[])
    }

    /// Adds a client agent (not a Consul server) with extra servant arguments; returns its
    /// index.
    pub fn add_client(&mut self, more: &[&str]) -> usize {
        self.add(false, more)
    }

    fn add(&mut self, server: bool, more: &[&str]) -> usize {
        let i = self.nodes.len();
        let more: Vec<String> = more.iter().map(|s| s.to_string()).collect();
        let args = self.args(i, i, server, &more);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let s = Servant::launch(&self.ip(i), &refs).ready();
        self.nodes.push(Node {
            name: format!("node{}", i + 1),
            ip: self.ip(i),
            servant: Some(s),
            args,
            kept: None,
        });
        i
    }

    /// SIGKILL node `i` but keep its data dir, so `restart` brings the same node back.
    pub fn sigkill_keep(&mut self, i: usize) {
        let s = self.nodes[i].servant.take().expect("node already killed");
        s.proc.signal(nix::sys::signal::Signal::SIGKILL);
        let Servant { proc, data } = s;
        drop(proc);
        self.nodes[i].kept = Some(data);
    }

    /// Starts node `i` again in its kept data dir, joining the others.
    pub fn restart(&mut self, i: usize) {
        let data = self.nodes[i].kept.take().expect("killed with sigkill_keep");
        let refs: Vec<&str> = self.nodes[i].args.iter().map(String::as_str).collect();
        let s = Servant::launch_in(data, &self.nodes[i].ip, &refs).ready();
        self.nodes[i].servant = Some(s);
    }

    /// Like `restart`, with `more` arguments this time only (a later `--label` overrides an
    /// earlier one of the same key).
    pub fn restart_with(&mut self, i: usize, more: &[&str]) {
        let data = self.nodes[i].kept.take().expect("killed with sigkill_keep");
        let mut refs: Vec<&str> = self.nodes[i].args.iter().map(String::as_str).collect();
        refs.extend(more);
        let s = Servant::launch_in(data, &self.nodes[i].ip, &refs).ready();
        self.nodes[i].servant = Some(s);
    }

    pub fn http(&self, i: usize) -> Http {
        Http::new(&format!("{}:8500", self.nodes[i].ip))
    }

    pub fn addr(&self, i: usize) -> String {
        format!("{}:8500", self.nodes[i].ip)
    }

    pub fn index_of(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// SIGKILL node `i`'s servant; its Consul dies with it (the shim's watchdog).
    pub fn sigkill(&mut self, i: usize) {
        let s = self.nodes[i].servant.take().expect("node already killed");
        s.proc.signal(nix::sys::signal::Signal::SIGKILL);
        drop(s);
    }

    pub fn alive(&self, i: usize) -> bool {
        self.nodes[i].servant.is_some()
    }

    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }
}

/// An active/standby pair for service `demo` in environment `env`, on three Consul servers
/// (`--no-apps`): node1 active, node2 standby (node3 keeps the quorum). Both guard `demo` with
/// a status command that reads `<dir>/<node>.pid`; `checks_extra` adds lines to their `[checks]`
/// section and `guard_extra` to their guard's. One trigger action serves both roles: when the check expects the service stopped it
/// kills the pid; otherwise, unless it already runs, it starts `start` detached (`$IP` is the
/// node's own address) and writes the pid file.
pub fn active_standby(
    dir: &Path,
    env: &str,
    checks_extra: &str,
    guard_extra: &str,
    start: &str,
) -> Cluster {
    let config = |node: &str| {
        let f = dir.join(format!("{node}.toml"));
        std::fs::write(
            &f,
            format!(
                "[checks]\nenvironment = \"{env}\"\n{checks_extra}\n\n[[checks.guard]]\nconsul_service = \"demo\"\nlinux_service = \"demo\"\nstatus_cmd = \"kill -0 $(cat {dir}/{node}.pid 2>/dev/null) 2>/dev/null || exit 3\"\n{guard_extra}\n",
                dir = dir.display()
            ),
        )
        .expect("write config");
        f.display().to_string()
    };
    let (c1, c2) = (config("node1"), config("node2"));
    let c = Cluster::start_each(3, &["--no-apps"], |i| match i {
        0 => vec!["--config".into(), c1.clone()],
        1 => vec!["--config".into(), c2.clone()],
        _ => vec![],
    });
    let h = c.http(2);
    h.put(
        &format!("/v1/kv/cluster/{env}/demo"),
        serde_json::json!({"active_nodes": ["node1"], "standby_nodes": ["node2"]}).to_string(),
    );
    let action = format!(
        "#!/bin/sh\nPIDF={dir}/@HOST.pid\ncase @HOST in node1) IP={ip1};; *) IP={ip2};; esac\nif [ \"$SERVANT_EXPECTED\" = stopped ]; then\n  kill $(cat $PIDF) 2>/dev/null; rm -f $PIDF\nelif ! kill -0 $(cat $PIDF 2>/dev/null) 2>/dev/null; then\n  setsid {start} </dev/null >/dev/null 2>&1 &\n  echo $! > $PIDF\nfi\n",
        dir = dir.display(),
        ip1 = c.nodes[0].ip,
        ip2 = c.nodes[1].ip,
    );
    for role in ["primary", "secondary"] {
        h.put(
            &format!("/v1/kv/triggers/{env}/demo/{role}/critical"),
            action.clone(),
        );
    }
    c
}

/// The pid in `<dir>/<node>.pid`, if that process is alive (not a zombie).
pub fn pid_alive(dir: &Path, node: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dir.join(format!("{node}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit(')').next()?.split_whitespace().next()?;
    (state != "Z").then_some(pid)
}

/// SIGKILL one pid, ignoring one that is gone.
pub fn kill_pid(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Whether the catalog has `node`'s serfHealth critical: Consul's failure detection is done.
pub fn serf_critical(h: &Http, node: &str) -> bool {
    h.get_json(&format!("/v1/health/node/{node}"))
        .and_then(|v| {
            v.as_array()?
                .iter()
                .find(|c| c["CheckID"] == "serfHealth")
                .map(|c| c["Status"] == "critical")
        })
        .unwrap_or(false)
}
