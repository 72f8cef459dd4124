//! What is open to whom: the start warning (Consul's ACLs off while its HTTP API listens beyond
//! loopback) and `servant doctor`'s findings. The decisions are pure; the probes ask Consul
//! (`/v1/agent/self`, and each prefix read and written by a token) without changing anything.
//!
//! A write probe is a check-and-set PUT at index 1 of a key that does not exist: Consul checks
//! the ACL first (403 when denied), then refuses the CAS, so nothing is written and no watch
//! wakes.

use std::net::IpAddr;

use crate::consul::{AgentSelf, Client, ConsulError, KvPutOptions, QueryOptions};
use crate::wire::Namespace;

/// The KV prefixes whose writers run code or move work on the nodes, and what a writer can do.
/// `{node}` is the node the probe runs for.
pub const PREFIXES: &[(&str, &str)] = &[
    ("jobs/", "run any command on some node"),
    ("queues/{node}/", "run any command on node {node}"),
    (
        "appmgr/task/",
        "run commands or containers on the nodes and keep them running",
    ),
    (
        "triggers/",
        "run a command on a node when its checks change state",
    ),
    (
        "cluster/",
        "move the active and standby roles (a node starts or stops its service)",
    ),
    ("jdone_jid/", "forge the results of jobs"),
];

/// Prefixes an agent's own token must not write: with them one node could make the others run
/// code.
const NOT_FOR_AGENTS: &[&str] = &["appmgr/task/", "triggers/", "cluster/"];

/// How Consul's HTTP API is exposed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exposure {
    pub acls_enabled: bool,
    /// Where its HTTP API listens (`tcp://IP:PORT`, `unix://...`, or `IP:PORT`).
    pub http_addrs: Vec<String>,
}

impl Exposure {
    /// From the local Consul agent's `/v1/agent/self`; `reached` (the address the client
    /// used) stands in when the answer names no HTTP address (the embedded server).
    pub fn of(me: &AgentSelf, reached: &str) -> Exposure {
        let mut http_addrs = me.http_addrs.clone();
        if http_addrs.is_empty() {
            http_addrs.push(reached.to_string());
        }
        Exposure {
            acls_enabled: me.acls_enabled,
            http_addrs,
        }
    }

    /// The HTTP addresses reachable from beyond this host.
    pub fn beyond_loopback(&self) -> Vec<&str> {
        self.http_addrs
            .iter()
            .map(String::as_str)
            .filter(|a| !is_loopback(a))
            .collect()
    }
}

/// Whether an address (`tcp://IP:PORT`, `http://HOST:PORT`, `IP:PORT`, `unix://PATH`) is
/// reachable only from this host. A name that is not an IP counts as beyond, except
/// `localhost`.
pub fn is_loopback(addr: &str) -> bool {
    if addr.starts_with("unix://") || addr.starts_with('/') {
        return true;
    }
    let rest = addr.split_once("://").map_or(addr, |(_, r)| r);
    let host_port = rest.split('/').next().unwrap_or(rest);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or(v6)
    } else {
        match host_port.rsplit_once(':') {
            // A bare IPv6 address has several colons and no port.
            Some((h, _)) if !h.contains(':') => h,
            _ => host_port,
        }
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The prefixes of `PREFIXES` under `layout`, for `node` (none: `queues/` is left out), with
/// what a writer can do.
pub fn prefixes(layout: &Namespace, node: &str) -> Vec<(String, String)> {
    PREFIXES
        .iter()
        .filter(|(p, _)| !(node.is_empty() && p.contains("{node}")))
        .map(|(p, what)| {
            (
                format!("{}{}", layout.prefix(), p.replace("{node}", node)),
                what.replace("{node}", node),
            )
        })
        .collect()
}

/// The start warning, when there is one: ACLs off and the HTTP API beyond loopback.
pub fn start_warning(e: &Exposure, layout: &Namespace, node: &str) -> Option<String> {
    let beyond = e.beyond_loopback();
    if e.acls_enabled || beyond.is_empty() {
        return None;
    }
    let list: Vec<String> = prefixes(layout, node)
        .into_iter()
        .map(|(p, what)| format!("{p} ({what})"))
        .collect();
    Some(format!(
        "Consul's ACLs are off and its HTTP API listens on {}: anyone who can reach it can write {}. Turn ACLs on (README: Security model), or listen on loopback only; `servant doctor` shows what is open",
        beyond.join(", "),
        list.join(", ")
    ))
}

/// Whether a token may do something, as Consul answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Yes,
    No,
    /// Consul answered something else: its words.
    Unknown(String),
}

impl Access {
    fn from(r: Result<(), ConsulError>) -> Access {
        match r {
            Ok(()) => Access::Yes,
            Err(ConsulError::PermissionDenied { .. }) => Access::No,
            Err(e) => Access::Unknown(e.to_string()),
        }
    }

    pub fn word(&self, yes: &'static str) -> &'static str {
        match self {
            Access::Yes => yes,
            Access::No => "-",
            Access::Unknown(_) => "?",
        }
    }
}

/// One prefix's rights for a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Right {
    pub prefix: String,
    pub what: String,
    pub read: Access,
    pub write: Access,
}

/// The probe key under a prefix: no servant part reads it as work.
const PROBE: &str = "__servant_doctor_probe__";

/// What `client`'s token may do on each prefix, asked of Consul without changing anything.
pub async fn rights(client: &Client, layout: &Namespace, node: &str) -> Vec<Right> {
    let mut out = Vec::new();
    for (prefix, what) in prefixes(layout, node) {
        let key = format!("{prefix}{PROBE}");
        let read = client
            .kv_get(&key, &QueryOptions::default())
            .await
            .map(|_| ());
        let cas_at_one = KvPutOptions {
            cas: Some(1),
            ..Default::default()
        };
        let write = client.kv_put(&key, b"", &cas_at_one).await.map(|_| ());
        out.push(Right {
            prefix,
            what,
            read: Access::from(read),
            write: Access::from(write),
        });
    }
    out
}

/// `servant doctor`'s findings (pure): what anyone without a token may write (with ACLs off:
/// everything, reachable from beyond this host or only from it), and what the agent's token
/// may write that no agent needs.
pub fn findings(e: &Exposure, anonymous: &[Right], agent: Option<&[Right]>) -> Vec<String> {
    let mut out = Vec::new();
    let open: Vec<&Right> = anonymous
        .iter()
        .filter(|r| r.write == Access::Yes)
        .collect();
    let beyond = e.beyond_loopback();
    let from = if beyond.is_empty() {
        "every user of this host".to_string()
    } else {
        format!("anyone who can reach {}", beyond.join(", "))
    };
    let why = if e.acls_enabled {
        "Consul's ACLs let a request without a token"
    } else {
        "Consul's ACLs are off:"
    };
    for r in open {
        out.push(format!("{why} {from} can write {}: {}", r.prefix, r.what));
    }
    if e.acls_enabled {
        for r in agent.unwrap_or_default() {
            let too_much = |p: &&str| r.prefix.ends_with(p) && r.write == Access::Yes;
            if NOT_FOR_AGENTS.iter().any(too_much) {
                out.push(format!(
                    "the agent's token may write {}: {} (an agent only reads it; a node whose agent is taken over could move the others)",
                    r.prefix, r.what
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses_are_told_from_the_rest() {
        for a in [
            "tcp://127.0.0.1:8500",
            "127.0.0.2:8500",
            "http://127.0.88.2:8500",
            "tcp://[::1]:8500",
            "unix:///run/consul.sock",
            "localhost:8500",
            "::1",
        ] {
            assert!(is_loopback(a), "{a}");
        }
        for a in [
            "tcp://0.0.0.0:8500",
            "tcp://[::]:8500",
            "10.0.0.5:8500",
            "http://consul.example:8500",
            "tcp://172.17.0.1:8500",
        ] {
            assert!(!is_loopback(a), "{a}");
        }
    }

    fn exposure(acls: bool, addrs: &[&str]) -> Exposure {
        Exposure {
            acls_enabled: acls,
            http_addrs: addrs.iter().map(|a| a.to_string()).collect(),
        }
    }

    #[test]
    fn the_start_warning_needs_acls_off_and_an_address_beyond_loopback() {
        let ns = Namespace::new("");
        assert_eq!(
            start_warning(&exposure(false, &["tcp://127.0.0.1:8500"]), &ns, "n1"),
            None
        );
        assert_eq!(
            start_warning(&exposure(true, &["tcp://0.0.0.0:8500"]), &ns, "n1"),
            None
        );
        let w = start_warning(
            &exposure(false, &["tcp://127.0.0.1:8500", "tcp://0.0.0.0:8500"]),
            &Namespace::new("team-a"),
            "n1",
        )
        .expect("a warning");
        assert!(w.contains("0.0.0.0:8500"), "{w}");
        assert!(!w.contains("127.0.0.1"), "{w}");
        for p in [
            "team-a/jobs/",
            "team-a/queues/n1/",
            "team-a/appmgr/task/",
            "team-a/triggers/",
        ] {
            assert!(w.contains(p), "{p}: {w}");
        }
    }

    fn right(prefix: &str, write: Access) -> Right {
        Right {
            prefix: prefix.into(),
            what: "x".into(),
            read: Access::Yes,
            write,
        }
    }

    #[test]
    fn findings_name_open_prefixes_and_an_agent_token_that_writes_too_much() {
        let all_open = vec![right("jobs/", Access::Yes), right("triggers/", Access::Yes)];
        let f = findings(&exposure(false, &["127.0.0.1:8500"]), &all_open, None);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f[0].contains("ACLs are off") && f[0].contains("every user of this host"));
        let f = findings(&exposure(false, &["tcp://0.0.0.0:8500"]), &all_open, None);
        assert!(
            f[1].contains("anyone who can reach tcp://0.0.0.0:8500") && f[1].contains("triggers/")
        );
        // Hardened: nothing without a token, an agent token that writes only what it needs.
        let closed = vec![right("jobs/", Access::No), right("triggers/", Access::No)];
        let agent = vec![right("jobs/", Access::Yes), right("triggers/", Access::No)];
        assert!(findings(
            &exposure(true, &["tcp://0.0.0.0:8500"]),
            &closed,
            Some(&agent)
        )
        .is_empty());
        let greedy = vec![right("jobs/", Access::Yes), right("triggers/", Access::Yes)];
        let f = findings(
            &exposure(true, &["tcp://0.0.0.0:8500"]),
            &closed,
            Some(&greedy),
        );
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].contains("agent's token may write triggers/"), "{f:?}");
    }
}
