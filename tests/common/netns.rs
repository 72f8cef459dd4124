//! Test hosts with network stacks of their own: one network namespace per host, each joined to a
//! private bridge by a veth pair. Loopback addresses share one stack, so a partition cannot be
//! made there; here a host can be cut off from all others (its veth goes down) or from chosen
//! hosts (iptables in its namespace), and healed. Everything is removed on drop: namespaces,
//! veths, the bridge and the one FORWARD rule that lets the bridge pass traffic (Docker sets the
//! FORWARD policy to DROP with bridge netfilter on).

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A private network of `n` hosts, 10.A.B.2 .. 10.A.B.(n+1).
pub struct Net {
    pub id: String,
    bridge: String,
    subnet: String,
    pub hosts: Vec<Host>,
    forward_rule: bool,
}

/// One host: its namespace and address.
pub struct Host {
    pub ns: String,
    pub ip: String,
    /// The veth end in the root namespace, on the bridge: down = the host is cut off.
    veth: String,
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) {
    if let Err(e) = run(args) {
        panic!("{e}");
    }
}

impl Net {
    /// Creates the hosts. Needs root, `ip` and `iptables` (Debian's iproute2 and iptables).
    pub fn new(n: usize) -> Net {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let k = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        // Interface names are at most 15 bytes; keep every name short and unique per test.
        let id = format!("{:x}{:x}", pid % 0xfffff, k);
        let subnet = format!("10.{}.{}", 200 + (pid % 50), (pid / 50 * 7 + k) % 250 + 1);
        let bridge = format!("sb{id}");
        let mut net = Net {
            id: id.clone(),
            bridge: bridge.clone(),
            subnet: subnet.clone(),
            hosts: Vec::new(),
            forward_rule: false,
        };
        must(&["ip", "link", "add", &bridge, "type", "bridge"]);
        // The root namespace (the test itself) reaches every host through the bridge.
        must(&[
            "ip",
            "addr",
            "add",
            &format!("{subnet}.1/24"),
            "dev",
            &bridge,
        ]);
        must(&["ip", "link", "set", &bridge, "up"]);
        must(&[
            "iptables", "-I", "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT",
        ]);
        net.forward_rule = true;
        for i in 0..n {
            let ns = format!("sn{id}h{i}");
            let veth = format!("sv{id}h{i}");
            let peer = format!("sp{id}h{i}");
            let ip = format!("{subnet}.{}", i + 2);
            must(&["ip", "netns", "add", &ns]);
            net.hosts.push(Host {
                ns: ns.clone(),
                ip: ip.clone(),
                veth: veth.clone(),
            });
            must(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            must(&[
                "ip", "link", "add", &veth, "type", "veth", "peer", "name", &peer,
            ]);
            must(&["ip", "link", "set", &peer, "netns", &ns]);
            must(&["ip", "link", "set", &veth, "master", &bridge]);
            must(&["ip", "link", "set", &veth, "up"]);
            must(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                &peer,
            ]);
            must(&["ip", "-n", &ns, "link", "set", &peer, "up"]);
        }
        net
    }

    /// A command that runs `program` inside host `i`'s network namespace (`ip netns exec`
    /// execs it, so the child's pid is the program's).
    pub fn command(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.hosts[i].ns]).arg(program);
        c
    }

    /// Cuts host `i` off from every other host.
    pub fn cut(&self, i: usize) {
        must(&["ip", "link", "set", &self.hosts[i].veth, "down"]);
    }

    /// Undoes `cut`.
    pub fn heal(&self, i: usize) {
        must(&["ip", "link", "set", &self.hosts[i].veth, "up"]);
    }

    /// Drops all traffic between hosts `a` and `b` (both ways), leaving the rest.
    pub fn cut_between(&self, a: usize, b: usize) {
        for (x, y) in [(a, b), (b, a)] {
            for chain in ["INPUT", "OUTPUT"] {
                let dir = if chain == "INPUT" { "-s" } else { "-d" };
                must(&[
                    "ip",
                    "netns",
                    "exec",
                    &self.hosts[x].ns,
                    "iptables",
                    "-A",
                    chain,
                    dir,
                    &self.hosts[y].ip,
                    "-j",
                    "DROP",
                ]);
            }
        }
    }

    /// Undoes every `cut_between` (the rules sit in both hosts' namespaces).
    pub fn heal_all(&self) {
        for h in &self.hosts {
            for chain in ["INPUT", "OUTPUT"] {
                let _ = run(&["ip", "netns", "exec", &h.ns, "iptables", "-F", chain]);
            }
        }
    }

    /// The subnet's first three octets.
    pub fn subnet(&self) -> &str {
        &self.subnet
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in &self.hosts {
            // Deleting the namespace deletes its veth end, and with it the pair.
            let _ = run(&["ip", "netns", "del", &h.ns]);
            let _ = run(&["ip", "link", "del", &h.veth]);
        }
        let _ = run(&["ip", "link", "del", &self.bridge]);
        if self.forward_rule {
            let _ = run(&[
                "iptables",
                "-D",
                "FORWARD",
                "-i",
                &self.bridge,
                "-o",
                &self.bridge,
                "-j",
                "ACCEPT",
            ]);
        }
    }
}
