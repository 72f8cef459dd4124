//! Pure. A container and the services gliderlabs/registrator's rules give it.
//!
//! - One service per published port (`-internal`: per exposed port, at the container's IP), ID
//!   `<node>:<container-name>:<port>[:udp]`.
//! - `SERVICE_<port>_<KEY>` beats `SERVICE_<KEY>`; at each level a label beats an env variable.
//! - Name: `SERVICE_NAME`, else the image's base name (`-explicit`: no name, no service); with
//!   several ports `-<port>` is added, unless the name came from `SERVICE_<port>_NAME`.
//! - `SERVICE_TAGS` (comma list) plus `-tags`; `SERVICE_IGNORE` only when `true`, `1` or `yes`
//!   (registrator ignored on any value, `false` too); the other keys become service Meta.
//! - One check: `SERVICE_CHECK_HTTP`, `_HTTPS`, `_SCRIPT`, `_TTL` or `_TCP` (in that order of
//!   preference), with `_INTERVAL` (10s) and `_TIMEOUT`.
//! - The address: `-ip`, else a specific host IP the port is published on, else the node's
//!   advertise address; never `0.0.0.0` or a loopback address the port was bound to.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use super::config::{Deregister, RegistratorConfig};
use crate::consul::{AgentCheckRegistration, AgentServiceRegistration};
use crate::util::duration::parse_duration;
use crate::util::hash::stable_hash;

/// Meta on every service the registrator registers: the node whose registrator owns it.
pub const OWNER_META: &str = "servant-registrator";
/// Meta: a hash of the rest of the registration, so a resync rewrites only what changed.
pub const SPEC_META: &str = "servant-registrator-spec";
/// Meta: the container's port the service stands for (the haproxy template's host names).
pub const PORT_META: &str = "servant-port";

/// A check's default interval, as registrator's.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Consul's limits on service Meta.
const META_MAX_PAIRS: usize = 64;
const META_KEY_MAX: usize = 128;
const META_VALUE_MAX: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

/// One port of a container: exposed, and maybe published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub exposed: u16,
    pub proto: Proto,
    /// Where it is published: the host IP (`0.0.0.0`, `::` or a specific one) and port.
    pub host_ip: Option<String>,
    pub host_port: Option<u16>,
}

/// What the registrator needs to know of a container (from the Engine's inspect).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Container {
    pub id: String,
    /// Without Docker's leading `/`.
    pub name: String,
    pub image: String,
    /// `KEY=VALUE` strings, as the Engine gives them.
    pub env: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<Port>,
    /// The container's IP on its network (for `-internal`).
    pub ip: Option<String>,
    pub running: bool,
    /// Once it has exited.
    pub exit_code: Option<i64>,
}

/// The settings of one mapping: the registrator's and the node's.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The Consul node name: the IDs' first part and the owner Meta.
    pub node: String,
    /// The node's advertise address (the local Consul agent's).
    pub advertise: String,
    pub cfg: RegistratorConfig,
}

/// Whether `--only-label` lets the registrator see a container.
fn labelled(c: &Container, s: &Settings) -> bool {
    match s.cfg.only_label.as_deref() {
        None => true,
        Some(l) => match l.split_once('=') {
            Some((k, v)) => c.labels.get(k).is_some_and(|x| x == v),
            None => c.labels.contains_key(l),
        },
    }
}

/// Whether a container's services belong in Consul: while it runs.
pub fn wanted(c: &Container, s: &Settings) -> bool {
    labelled(c, s) && c.running
}

/// Whether a stopped container keeps the services it has (`-deregister on-success` after a
/// failed exit, until it is removed). The Engine forgets a stopped container's published
/// ports, so they are kept as registered, not mapped again.
pub fn kept(c: &Container, s: &Settings) -> bool {
    labelled(c, s)
        && !c.running
        && s.cfg.deregister == Deregister::OnSuccess
        && c.exit_code.is_some_and(|e| e != 0)
}

/// The ID prefix of every service of the container named `name` on `node`.
pub fn id_prefix(node: &str, name: &str) -> String {
    format!("{node}:{name}:")
}

/// The image's base name: no registry or path, no tag or digest (`a/b/nginx:1` → `nginx`).
pub fn base_name(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    last.split(':').next().unwrap_or(last)
}

/// The `SERVICE_*` settings that apply to `port`: the lower-cased keys, and those that came
/// from `SERVICE_<port>_<KEY>`.
fn metadata(c: &Container, port: u16) -> (BTreeMap<String, String>, BTreeSet<String>) {
    let port = port.to_string();
    let env = c.env.iter().filter_map(|kv| kv.split_once('='));
    let labels = c.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    // Each entry: (key, value, from a label, port-specific).
    let mut entries: Vec<(String, &str, bool, bool)> = Vec::new();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    for (k, v, label) in env
        .map(|(k, v)| (k, v, false))
        .chain(labels.map(|(k, v)| (k, v, true)))
    {
        let Some(rest) = k.strip_prefix("SERVICE_") else {
            continue;
        };
        match rest.split_once('_') {
            Some((p, key)) if digits(p) && p == port && !key.is_empty() => {
                entries.push((key.to_ascii_lowercase(), v, label, true));
            }
            // Another port's.
            Some((p, _)) if digits(p) => {}
            _ if digits(rest) => {}
            _ if !rest.is_empty() => entries.push((rest.to_ascii_lowercase(), v, label, false)),
            _ => {}
        }
    }
    // Lowest precedence first: generic env, generic label, port env, port label.
    entries.sort_by_key(|(_, _, label, specific)| (*specific, *label));
    let mut meta = BTreeMap::new();
    let mut from_port = BTreeSet::new();
    for (k, v, _, specific) in entries {
        if specific {
            from_port.insert(k.clone());
        }
        meta.insert(k, v.to_string());
    }
    (meta, from_port)
}

fn truthy(v: &str) -> bool {
    matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes")
}

/// A Consul duration string for a value the user wrote (`10s`, `1m30s`, `5` seconds), or None
/// for a bad one (Consul would refuse the whole registration).
fn consul_duration(v: &str) -> Option<String> {
    parse_duration(v)
        .ok()
        .filter(|d| !d.is_zero())
        .map(|d| format!("{}ms", d.as_millis().max(1)))
}

fn host_for_url(addr: &str) -> String {
    match addr.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => format!("[{addr}]"),
        _ => addr.to_string(),
    }
}

/// The one check the metadata asks for, if any.
fn check(
    meta: &BTreeMap<String, String>,
    id: &str,
    name: &str,
    addr: &str,
    port: u16,
) -> Option<AgentCheckRegistration> {
    let get = |k: &str| meta.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let host = host_for_url(addr);
    let path = |p: &str| {
        if p.starts_with('/') {
            p.to_string()
        } else {
            format!("/{p}")
        }
    };
    let mut c = AgentCheckRegistration {
        check_id: Some(format!("service:{id}")),
        name: Some(format!("Service '{name}' check")),
        ..Default::default()
    };
    if let Some(p) = get("check_http") {
        c.http = Some(format!("http://{host}:{port}{}", path(p)));
    } else if let Some(p) = get("check_https") {
        c.http = Some(format!("https://{host}:{port}{}", path(p)));
    } else if let Some(script) = get("check_script") {
        let script = script
            .replace("$SERVICE_IP", addr)
            .replace("$SERVICE_PORT", &port.to_string());
        c.args = Some(vec!["sh".into(), "-c".into(), script]);
    } else if let Some(ttl) = get("check_ttl") {
        c.ttl = Some(consul_duration(ttl)?);
        return Some(c);
    } else if get("check_tcp").is_some_and(|v| !matches!(v, "false" | "0" | "no")) {
        c.tcp = Some(format!("{host}:{port}"));
    } else {
        return None;
    }
    c.interval = Some(
        get("check_interval")
            .and_then(consul_duration)
            .unwrap_or_else(|| format!("{}ms", DEFAULT_INTERVAL.as_millis())),
    );
    c.timeout = get("check_timeout").and_then(consul_duration);
    Some(c)
}

/// A key Consul accepts in service Meta.
fn meta_key_ok(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= META_KEY_MAX
        && !k.starts_with("consul-")
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether a host IP a port is published on names one address (not `0.0.0.0`, `::` or
/// loopback, which say nothing to another node).
fn specific_ip(ip: &str) -> bool {
    ip.parse::<IpAddr>()
        .is_ok_and(|a| !a.is_unspecified() && !a.is_loopback())
}

/// The services a container should have, in Consul's registration shape, each carrying the
/// owner and spec Meta. None when it should have none (ignored, not `wanted`, no ports).
pub fn services(c: &Container, s: &Settings) -> Vec<AgentServiceRegistration> {
    if !wanted(c, s) || c.name.is_empty() {
        return Vec::new();
    }
    // One entry per port and protocol (Docker lists a port published on IPv4 and IPv6 twice):
    // published on IPv4 first, else published, else only exposed.
    let mut keys: Vec<(u16, Proto)> = c.ports.iter().map(|p| (p.exposed, p.proto)).collect();
    keys.sort();
    keys.dedup();
    let ports: Vec<&Port> = keys
        .iter()
        .filter_map(|k| {
            let same = || c.ports.iter().filter(move |q| (q.exposed, q.proto) == *k);
            same()
                .find(|q| {
                    q.host_port.is_some() && !q.host_ip.as_deref().unwrap_or("").contains(':')
                })
                .or_else(|| same().find(|q| q.host_port.is_some()))
                .or_else(|| same().next())
        })
        .collect();
    // As registrator: "several ports" counts every port of the container, published or not.
    let group = ports.len() > 1;
    let mut out = Vec::new();
    for p in ports {
        let (address, port) = if s.cfg.internal {
            match &c.ip {
                Some(ip) if !ip.is_empty() => (ip.clone(), p.exposed),
                _ => continue,
            }
        } else {
            let Some(hp) = p.host_port else { continue };
            let addr = match (&s.cfg.ip, p.host_ip.as_deref()) {
                (Some(ip), _) => ip.clone(),
                (None, Some(h)) if specific_ip(h) => h.to_string(),
                _ => s.advertise.clone(),
            };
            (addr, hp)
        };
        let (meta, from_port) = metadata(c, p.exposed);
        if meta.get("ignore").is_some_and(|v| truthy(v)) {
            continue;
        }
        let mut name = match meta.get("name").filter(|n| !n.is_empty()) {
            Some(n) => n.clone(),
            None if s.cfg.explicit => continue,
            None => base_name(&c.image).to_string(),
        };
        if name.is_empty() {
            continue;
        }
        if group && !from_port.contains("name") {
            name = format!("{name}-{}", p.exposed);
        }
        let mut id = format!("{}{}", id_prefix(&s.node, &c.name), p.exposed);
        let mut tags: Vec<String> = Vec::new();
        let listed = meta.get("tags").map(String::as_str).unwrap_or("");
        for t in listed
            .split(',')
            .map(str::trim)
            .chain(s.cfg.tags.iter().map(|t| t.trim()))
        {
            if !t.is_empty() && !tags.iter().any(|x| x == t) {
                tags.push(t.to_string());
            }
        }
        if p.proto == Proto::Udp {
            id.push_str(":udp");
            if !tags.iter().any(|t| t == "udp") {
                tags.push("udp".into());
            }
        }
        let check = check(&meta, &id, &name, &address, port);
        let mut service_meta: BTreeMap<String, String> = meta
            .into_iter()
            .filter(|(k, _)| {
                !matches!(k.as_str(), "name" | "tags" | "ignore" | "id")
                    && !k.starts_with("check_")
                    && meta_key_ok(k)
            })
            .filter(|(_, v)| v.len() <= META_VALUE_MAX)
            .take(META_MAX_PAIRS - 3)
            .collect();
        service_meta.insert(OWNER_META.into(), s.node.clone());
        service_meta.insert(PORT_META.into(), p.exposed.to_string());
        let mut reg = AgentServiceRegistration {
            id: Some(id),
            name,
            tags,
            port: Some(port),
            address: Some(address),
            meta: service_meta,
            checks: check.into_iter().collect(),
        };
        let spec = spec_hash(&reg);
        reg.meta.insert(SPEC_META.into(), spec);
        out.push(reg);
    }
    out
}

/// The hash of a registration without its spec Meta: equal hashes, equal registrations.
pub fn spec_hash(reg: &AgentServiceRegistration) -> String {
    let mut r = reg.clone();
    r.meta.remove(SPEC_META);
    let text = serde_json::to_string(&r).unwrap_or_default();
    format!("{:016x}", stable_hash(&[&text]))
}

/// The TTL check of a registration, with its TTL: the agent passes it while the container runs.
pub fn ttl_check(reg: &AgentServiceRegistration) -> Option<(String, Duration)> {
    let c = reg.checks.iter().find(|c| c.ttl.is_some())?;
    let ttl = parse_duration(c.ttl.as_deref()?).ok()?;
    Some((c.check_id.clone()?, ttl))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            node: "n1".into(),
            advertise: "10.0.0.5".into(),
            cfg: RegistratorConfig {
                enabled: true,
                ..Default::default()
            },
        }
    }

    fn web() -> Container {
        Container {
            id: "abc".into(),
            name: "web1".into(),
            image: "registry:5000/team/nginx:1.2".into(),
            ports: vec![Port {
                exposed: 80,
                proto: Proto::Tcp,
                host_ip: Some("0.0.0.0".into()),
                host_port: Some(8081),
            }],
            ip: Some("172.17.0.2".into()),
            running: true,
            ..Default::default()
        }
    }

    fn label(c: &mut Container, k: &str, v: &str) {
        c.labels.insert(k.into(), v.into());
    }

    #[test]
    fn one_published_port_is_one_service_at_the_advertise_address() {
        let s = &services(&web(), &settings())[0];
        assert_eq!(s.id.as_deref(), Some("n1:web1:80"));
        assert_eq!(s.name, "nginx");
        assert_eq!(
            (s.address.as_deref(), s.port),
            (Some("10.0.0.5"), Some(8081))
        );
        assert_eq!(s.meta[OWNER_META], "n1");
        assert_eq!(s.meta[PORT_META], "80");
        assert!(s.checks.is_empty());
    }

    #[test]
    fn base_names() {
        assert_eq!(base_name("nginx"), "nginx");
        assert_eq!(base_name("nginx:latest"), "nginx");
        assert_eq!(base_name("localhost:5000/a/b/redis:7"), "redis");
        assert_eq!(base_name("x/y@sha256:abcd"), "y");
    }

    #[test]
    fn several_ports_add_the_port_unless_the_name_is_the_ports_own() {
        let mut c = web();
        c.ports.push(Port {
            exposed: 443,
            proto: Proto::Tcp,
            host_ip: Some("0.0.0.0".into()),
            host_port: Some(8443),
        });
        c.ports.push(Port {
            exposed: 53,
            proto: Proto::Udp,
            host_ip: Some("0.0.0.0".into()),
            host_port: Some(5353),
        });
        label(&mut c, "SERVICE_NAME", "www");
        label(&mut c, "SERVICE_443_NAME", "secure");
        let v = services(&c, &settings());
        let names: Vec<(&str, &str)> = v
            .iter()
            .map(|s| (s.id.as_deref().unwrap(), s.name.as_str()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("n1:web1:53:udp", "www-53"),
                ("n1:web1:80", "www-80"),
                ("n1:web1:443", "secure")
            ]
        );
        assert!(v[0].tags.contains(&"udp".to_string()));
    }

    #[test]
    fn unpublished_ports_count_but_are_not_registered_unless_internal() {
        let mut c = web();
        c.ports.push(Port {
            exposed: 443,
            proto: Proto::Tcp,
            host_ip: None,
            host_port: None,
        });
        let v = services(&c, &settings());
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].name, "nginx-80");
        let mut s = settings();
        s.cfg.internal = true;
        let v = services(&c, &s);
        assert_eq!(v.len(), 2);
        assert_eq!(
            (v[1].address.as_deref(), v[1].port),
            (Some("172.17.0.2"), Some(443))
        );
    }

    #[test]
    fn port_keys_beat_generic_keys_and_labels_beat_env() {
        let mut c = web();
        c.env = vec![
            "SERVICE_NAME=from-env".into(),
            "SERVICE_80_TAGS=env80".into(),
            "SERVICE_VERSION=1".into(),
            "SERVICE_81_NAME=other-port".into(),
            "PATH=/bin".into(),
        ];
        let s = &services(&c, &settings())[0];
        assert_eq!(s.name, "from-env");
        assert_eq!(s.tags, vec!["env80"]);
        assert_eq!(s.meta["version"], "1");
        label(&mut c, "SERVICE_NAME", "from-label");
        label(&mut c, "SERVICE_TAGS", "a, b,,a");
        let s = &services(&c, &settings())[0];
        assert_eq!(s.name, "from-label");
        assert_eq!(s.tags, vec!["env80"], "a port's env beats a generic label");
        label(&mut c, "SERVICE_80_TAGS", "l80");
        assert_eq!(services(&c, &settings())[0].tags, vec!["l80"]);
        c.labels.remove("SERVICE_80_TAGS");
        c.env.retain(|e| !e.starts_with("SERVICE_80_TAGS"));
        let mut st = settings();
        st.cfg.tags = vec!["forced".into(), "a".into()];
        assert_eq!(services(&c, &st)[0].tags, vec!["a", "b", "forced"]);
    }

    #[test]
    fn only_true_1_or_yes_ignore() {
        for (v, ignored) in [
            ("true", true),
            ("1", true),
            ("yes", true),
            ("YES", true),
            ("false", false),
            ("0", false),
            ("no", false),
            ("", false),
        ] {
            let mut c = web();
            label(&mut c, "SERVICE_IGNORE", v);
            assert_eq!(services(&c, &settings()).is_empty(), ignored, "{v:?}");
        }
        let mut c = web();
        label(&mut c, "SERVICE_80_IGNORE", "true");
        assert!(services(&c, &settings()).is_empty());
    }

    #[test]
    fn explicit_wants_a_name() {
        let mut s = settings();
        s.cfg.explicit = true;
        assert!(services(&web(), &s).is_empty());
        let mut c = web();
        c.env.push("SERVICE_NAME=web".into());
        assert_eq!(services(&c, &s)[0].name, "web");
    }

    #[test]
    fn the_address_never_is_a_wildcard_or_loopback() {
        let mut c = web();
        for (host_ip, want) in [
            ("0.0.0.0", "10.0.0.5"),
            ("::", "10.0.0.5"),
            ("127.0.0.1", "10.0.0.5"),
            ("", "10.0.0.5"),
            ("192.168.1.9", "192.168.1.9"),
        ] {
            c.ports[0].host_ip = Some(host_ip.into());
            assert_eq!(
                services(&c, &settings())[0].address.as_deref(),
                Some(want),
                "{host_ip}"
            );
        }
        let mut s = settings();
        s.cfg.ip = Some("1.2.3.4".into());
        assert_eq!(services(&c, &s)[0].address.as_deref(), Some("1.2.3.4"));
    }

    #[test]
    fn checks_from_metadata() {
        let mut c = web();
        label(&mut c, "SERVICE_CHECK_HTTP", "/health");
        label(&mut c, "SERVICE_CHECK_TIMEOUT", "2s");
        let s = &services(&c, &settings())[0];
        let ch = &s.checks[0];
        assert_eq!(ch.http.as_deref(), Some("http://10.0.0.5:8081/health"));
        assert_eq!(ch.interval.as_deref(), Some("10000ms"));
        assert_eq!(ch.timeout.as_deref(), Some("2000ms"));
        assert_eq!(ch.check_id.as_deref(), Some("service:n1:web1:80"));
        assert!(
            !s.meta.keys().any(|k| k.starts_with("check_")),
            "{:?}",
            s.meta
        );

        let mut c = web();
        label(&mut c, "SERVICE_CHECK_TCP", "true");
        label(&mut c, "SERVICE_CHECK_INTERVAL", "3s");
        let ch = &services(&c, &settings())[0].checks[0];
        assert_eq!(
            (ch.tcp.as_deref(), ch.interval.as_deref()),
            (Some("10.0.0.5:8081"), Some("3000ms"))
        );

        let mut c = web();
        label(&mut c, "SERVICE_CHECK_TTL", "30s");
        let s = &services(&c, &settings())[0];
        assert_eq!(s.checks[0].interval, None);
        assert_eq!(
            ttl_check(s),
            Some(("service:n1:web1:80".into(), Duration::from_secs(30)))
        );

        let mut c = web();
        label(
            &mut c,
            "SERVICE_CHECK_SCRIPT",
            "nc -z $SERVICE_IP $SERVICE_PORT",
        );
        label(&mut c, "SERVICE_CHECK_INTERVAL", "soon");
        let ch = &services(&c, &settings())[0].checks[0];
        assert_eq!(ch.args.as_ref().unwrap()[2], "nc -z 10.0.0.5 8081");
        assert_eq!(
            ch.interval.as_deref(),
            Some("10000ms"),
            "a bad interval is the default"
        );

        let mut c = web();
        label(&mut c, "SERVICE_CHECK_HTTPS", "x");
        assert_eq!(
            services(&c, &settings())[0].checks[0].http.as_deref(),
            Some("https://10.0.0.5:8081/x")
        );
    }

    #[test]
    fn stopped_containers_keep_services_only_after_a_failure_with_on_success() {
        let mut c = web();
        c.running = false;
        c.exit_code = Some(1);
        assert!(services(&c, &settings()).is_empty());
        assert!(!kept(&c, &settings()));
        let mut s = settings();
        s.cfg.deregister = Deregister::OnSuccess;
        assert!(kept(&c, &s));
        assert!(
            services(&c, &s).is_empty(),
            "kept as registered, not mapped"
        );
        c.exit_code = Some(0);
        assert!(!kept(&c, &s));
        s.cfg.only_label = Some("x".into());
        c.exit_code = Some(1);
        assert!(!kept(&c, &s), "not ours to keep");
    }

    #[test]
    fn a_port_published_on_ipv4_and_ipv6_is_one_service() {
        let mut c = web();
        c.ports.insert(
            0,
            Port {
                exposed: 80,
                proto: Proto::Tcp,
                host_ip: Some("::".into()),
                host_port: Some(8081),
            },
        );
        let v = services(&c, &settings());
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].name, "nginx", "one port, no suffix");
    }

    #[test]
    fn only_label_keeps_to_labelled_containers() {
        let mut s = settings();
        s.cfg.only_label = Some("team=a".into());
        let mut c = web();
        assert!(services(&c, &s).is_empty());
        label(&mut c, "team", "b");
        assert!(services(&c, &s).is_empty());
        label(&mut c, "team", "a");
        assert_eq!(services(&c, &s).len(), 1);
        s.cfg.only_label = Some("team".into());
        assert_eq!(services(&c, &s).len(), 1);
        s.cfg.only_label = Some("other".into());
        assert!(services(&c, &s).is_empty());
    }

    #[test]
    fn meta_keys_consul_refuses_are_left_out() {
        let mut c = web();
        label(&mut c, "SERVICE_GOOD_KEY", "v");
        label(&mut c, "SERVICE_CONSUL-X", "v");
        label(&mut c, "SERVICE_BAD.KEY", "v");
        let m = &services(&c, &settings())[0].meta;
        assert!(m.contains_key("good_key"));
        assert!(
            !m.keys()
                .any(|k| k.contains('.') || k.starts_with("consul-")),
            "{m:?}"
        );
    }

    proptest::proptest! {
        /// Whatever the labels and env say: IDs are unique and of the node's form, every
        /// service carries the owner Meta and a spec hash that matches it, Meta is within
        /// Consul's rules, and the mapping is deterministic.
        #[test]
        fn any_container_maps_to_valid_owned_services(
            keys in proptest::collection::vec(
                (proptest::sample::select(vec!["SERVICE_NAME", "SERVICE_TAGS", "SERVICE_IGNORE",
                    "SERVICE_80_NAME", "SERVICE_443_IGNORE", "SERVICE_CHECK_HTTP", "SERVICE_X",
                    "SERVICE_CHECK_TTL", "SERVICE_80_CHECK_INTERVAL", "SERVICE_9_A", "OTHER"]),
                 "[a-z0-9,. ]{0,6}", proptest::prelude::any::<bool>()), 0..8),
            ports in proptest::collection::vec((proptest::sample::select(vec![80u16, 443, 53, 9]),
                proptest::prelude::any::<bool>(), proptest::option::of(1024u16..2000)), 0..5),
            explicit in proptest::prelude::any::<bool>(),
            internal in proptest::prelude::any::<bool>(),
        ) {
            let mut c = web();
            c.ports = ports.iter().map(|&(e, udp, hp)| Port {
                exposed: e,
                proto: if udp { Proto::Udp } else { Proto::Tcp },
                host_ip: hp.map(|_| "0.0.0.0".to_string()),
                host_port: hp,
            }).collect();
            for (k, v, is_label) in keys {
                if is_label { label(&mut c, k, &v) } else { c.env.push(format!("{k}={v}")) }
            }
            let mut s = settings();
            s.cfg.explicit = explicit;
            s.cfg.internal = internal;
            let v = services(&c, &s);
            proptest::prop_assert_eq!(&v, &services(&c, &s));
            let ids: BTreeSet<_> = v.iter().map(|r| r.id.clone().unwrap()).collect();
            proptest::prop_assert_eq!(ids.len(), v.len());
            for r in &v {
                let id = r.id.as_deref().unwrap();
                proptest::prop_assert!(id.starts_with("n1:web1:"));
                proptest::prop_assert_eq!(r.meta.get(OWNER_META).map(String::as_str), Some("n1"));
                proptest::prop_assert_eq!(r.meta.get(SPEC_META).cloned(), Some(spec_hash(r)));
                proptest::prop_assert!(r.meta.len() <= META_MAX_PAIRS);
                proptest::prop_assert!(r.meta.keys().all(|k| meta_key_ok(k)));
                proptest::prop_assert!(!r.name.is_empty());
                proptest::prop_assert!(r.address.as_deref() != Some("0.0.0.0"));
            }
        }
    }
}
