//! A loopback cluster: servants that each launch their own Consul server on their own address,
//! in a subnet of their own (the one-executable cluster start).

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
            "--lock-delay".into(),
            "1s".into(),
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
