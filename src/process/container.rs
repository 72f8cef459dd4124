//! What a container runs, beyond a `LaunchSpec`'s command: the image and the `Docker` object of
//! a job (and later of an app), parsed and checked. Pure: no IO, so a bad port or image name is
//! refused when the document is read, before anything is started.

use std::collections::BTreeMap;

use serde_json::Value;

/// The `Docker` object's keys; input keys match them case-insensitively.
pub const DOCKER_FIELDS: &[&str] = &[
    "Ports",
    "Volumes",
    "Network",
    "Memory",
    "Cpus",
    "Labels",
    "Entrypoint",
    "Pull",
];

/// Docker refuses a memory limit under 6 MiB.
pub const MIN_MEMORY: u64 = 6 * 1024 * 1024;

/// Labels under this prefix are the agent's own (node, job, session, attempt).
pub const LABEL_PREFIX: &str = "servant.";

/// When a missing image is pulled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Only when the image is not on the node (the default).
    #[default]
    Missing,
    /// Before every run.
    Always,
    /// Never: a missing image is a rejected job.
    Never,
}

impl PullPolicy {
    pub fn as_str(&self) -> &'static str {
        match self {
            PullPolicy::Missing => "missing",
            PullPolicy::Always => "always",
            PullPolicy::Never => "never",
        }
    }
}

/// A published port: `[ip:][host:]container[/proto]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    pub host_ip: Option<String>,
    /// None: a port the Engine picks.
    pub host_port: Option<u16>,
    pub container_port: u16,
    /// tcp, udp or sctp.
    pub proto: String,
}

impl PortSpec {
    /// The Engine's name of the container side, `80/tcp`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.container_port, self.proto)
    }
}

/// A mount: `source:target[:ro|rw]`, the source a host path or a volume name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    pub source: String,
    pub target: String,
    pub read_only: bool,
}

impl VolumeSpec {
    /// The Engine's bind string.
    pub fn bind(&self) -> String {
        let mode = if self.read_only { "ro" } else { "rw" };
        format!("{}:{}:{mode}", self.source, self.target)
    }
}

/// Everything a container needs beyond the command, environment, directory and user.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerSpec {
    pub image: String,
    pub ports: Vec<PortSpec>,
    pub volumes: Vec<VolumeSpec>,
    pub network: Option<String>,
    /// Bytes.
    pub memory: Option<u64>,
    /// CPUs in billionths (the Engine's `NanoCpus`).
    pub nano_cpus: Option<i64>,
    /// The user's labels; the agent adds its `servant.*` ones when it starts the container.
    pub labels: BTreeMap<String, String>,
    pub entrypoint: Option<Vec<String>>,
    pub pull: PullPolicy,
}

/// Why a container's description is refused. The text names the field and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContainerSpecError {
    #[error("Image {image:?} is not an image name: {why}")]
    Image { image: String, why: &'static str },
    #[error("Docker: unknown key {0:?} (known keys: {keys})", keys = DOCKER_FIELDS.join(", "))]
    UnknownKey(String),
    #[error("Docker: expected an object, found {0}")]
    NotObject(&'static str),
    #[error("Docker.{field}: expected {expected}, found {found}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
        found: &'static str,
    },
    #[error("Docker.Ports: bad port spec {spec:?}: {why}")]
    Port { spec: String, why: &'static str },
    #[error("Docker.Volumes: bad volume {spec:?}: {why}")]
    Volume { spec: String, why: &'static str },
    #[error("Docker.Memory: {0}")]
    Memory(String),
    #[error("Docker.Cpus: {0}")]
    Cpus(String),
    #[error("Docker.Network {0:?} is not a network name")]
    Network(String),
    #[error("Docker.Labels: {0}")]
    Label(String),
    #[error("Docker.Pull {0:?}: expected missing, always or never")]
    Pull(String),
}

use crate::util::json::kind;

impl ContainerSpec {
    /// `image` with the `Docker` object `docker` (None or null: all defaults).
    pub fn parse(image: &str, docker: Option<&Value>) -> Result<Self, ContainerSpecError> {
        validate_image(image)?;
        let mut spec = ContainerSpec {
            image: image.to_string(),
            ..Default::default()
        };
        let map = match docker {
            None | Some(Value::Null) => return Ok(spec),
            Some(Value::Object(m)) => m,
            Some(other) => return Err(ContainerSpecError::NotObject(kind(other))),
        };
        for (key, v) in map {
            let Some(field) = DOCKER_FIELDS.iter().find(|f| f.eq_ignore_ascii_case(key)) else {
                return Err(ContainerSpecError::UnknownKey(key.clone()));
            };
            if v.is_null() {
                continue;
            }
            match *field {
                "Ports" => {
                    for p in strings(field, v, true)? {
                        spec.ports.push(parse_port(&p)?);
                    }
                }
                "Volumes" => {
                    for p in strings(field, v, false)? {
                        spec.volumes.push(parse_volume(&p)?);
                    }
                }
                "Network" => {
                    let n = string(field, v)?;
                    if n.is_empty() || n.chars().any(|c| c.is_whitespace() || c.is_control()) {
                        return Err(ContainerSpecError::Network(n));
                    }
                    spec.network = Some(n);
                }
                "Memory" => spec.memory = Some(parse_memory(v)?),
                "Cpus" => spec.nano_cpus = Some(parse_cpus(v)?),
                "Labels" => spec.labels = parse_labels(v)?,
                "Entrypoint" => {
                    spec.entrypoint = Some(match v {
                        Value::String(s) => vec![s.clone()],
                        other => strings(field, other, false)?,
                    })
                }
                _ => {
                    let p = string(field, v)?;
                    spec.pull = match p.to_ascii_lowercase().as_str() {
                        "" | "missing" => PullPolicy::Missing,
                        "always" => PullPolicy::Always,
                        "never" => PullPolicy::Never,
                        _ => return Err(ContainerSpecError::Pull(p)),
                    };
                }
            }
        }
        Ok(spec)
    }
}

fn string(field: &'static str, v: &Value) -> Result<String, ContainerSpecError> {
    v.as_str()
        .map(str::to_string)
        .ok_or(ContainerSpecError::WrongType {
            field,
            expected: "a string",
            found: kind(v),
        })
}

/// An array of strings (of numbers too when `numbers`: a port may be written 80).
fn strings(
    field: &'static str,
    v: &Value,
    numbers: bool,
) -> Result<Vec<String>, ContainerSpecError> {
    let wrong = |found| ContainerSpecError::WrongType {
        field,
        expected: "an array of strings",
        found,
    };
    let Value::Array(items) = v else {
        return Err(wrong(kind(v)));
    };
    items
        .iter()
        .map(|i| match i {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) if numbers => Ok(n.to_string()),
            other => Err(wrong(kind(other))),
        })
        .collect()
}

/// `ctr`, `host:ctr`, `ip:host:ctr` or `ip::ctr`, each with an optional `/tcp`, `/udp` or
/// `/sctp`.
pub fn parse_port(spec: &str) -> Result<PortSpec, ContainerSpecError> {
    let bad = |why| ContainerSpecError::Port {
        spec: spec.to_string(),
        why,
    };
    let (addr, proto) = match spec.split_once('/') {
        Some((a, p)) => (a, p.to_ascii_lowercase()),
        None => (spec, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(bad("the protocol is tcp, udp or sctp"));
    }
    if addr.contains('-') {
        return Err(bad("port ranges are not supported"));
    }
    let number = |s: &str| -> Result<u16, ContainerSpecError> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("a port is a number from 1 to 65535"));
        }
        match s.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(bad("a port is a number from 1 to 65535")),
        }
    };
    let parts: Vec<&str> = addr.split(':').collect();
    let (host_ip, host_port, ctr) = match parts.as_slice() {
        [c] => (None, None, *c),
        [h, c] => (None, Some(number(h)?), *c),
        [ip, h, c] => {
            if ip.is_empty() || ip.parse::<std::net::Ipv4Addr>().is_err() {
                return Err(bad("the host address is an IPv4 address"));
            }
            let host = if h.is_empty() { None } else { Some(number(h)?) };
            (Some(ip.to_string()), host, *c)
        }
        _ => return Err(bad("expected [ip:][host:]container[/proto]")),
    };
    Ok(PortSpec {
        host_ip,
        host_port,
        container_port: number(ctr)?,
        proto,
    })
}

/// `source:target[:ro|rw]`: an absolute host path or a volume name, an absolute target.
pub fn parse_volume(spec: &str) -> Result<VolumeSpec, ContainerSpecError> {
    let bad = |why| ContainerSpecError::Volume {
        spec: spec.to_string(),
        why,
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, target, read_only) = match parts.as_slice() {
        [s, t] => (*s, *t, false),
        [s, t, "ro"] => (*s, *t, true),
        [s, t, "rw"] => (*s, *t, false),
        [_, _, _] => return Err(bad("the mode is ro or rw")),
        _ => return Err(bad("expected source:target[:ro|rw]")),
    };
    if spec.chars().any(char::is_control) {
        return Err(bad("control characters are not allowed"));
    }
    let name_ok = source
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && source
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !source.starts_with('/') && !name_ok {
        return Err(bad(
            "the source is an absolute host path or a volume name ([A-Za-z0-9][A-Za-z0-9_.-]*)",
        ));
    }
    if !target.starts_with('/') {
        return Err(bad("the target is an absolute path in the container"));
    }
    Ok(VolumeSpec {
        source: source.to_string(),
        target: target.to_string(),
        read_only,
    })
}

/// Bytes as a number, or a string with a unit: `256MiB`, `256m`, `1g`, `512k` (binary units,
/// as Docker reads them).
pub fn parse_memory(v: &Value) -> Result<u64, ContainerSpecError> {
    let bytes = match v {
        Value::Number(n) => n.as_u64().ok_or_else(|| {
            ContainerSpecError::Memory(format!("{n} is not a whole number of bytes"))
        })?,
        Value::String(s) => {
            let t = s.trim();
            let split = t
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(t.len());
            let (num, unit) = t.split_at(split);
            let num: f64 = num
                .parse()
                .map_err(|_| ContainerSpecError::Memory(format!("{s:?} is not a size")))?;
            let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
                "" | "b" => 1,
                "k" | "kb" | "kib" => 1 << 10,
                "m" | "mb" | "mib" => 1 << 20,
                "g" | "gb" | "gib" => 1 << 30,
                "t" | "tb" | "tib" => 1 << 40,
                _ => {
                    return Err(ContainerSpecError::Memory(format!(
                        "{s:?}: the unit is b, k, m, g or t (KiB, MiB...)"
                    )))
                }
            };
            let b = num * mult as f64;
            if !b.is_finite() || b > u64::MAX as f64 / 2.0 {
                return Err(ContainerSpecError::Memory(format!("{s:?} is too large")));
            }
            b as u64
        }
        other => {
            return Err(ContainerSpecError::Memory(format!(
                "expected bytes or a size such as \"256MiB\", found {}",
                kind(other)
            )))
        }
    };
    if bytes < MIN_MEMORY {
        return Err(ContainerSpecError::Memory(format!(
            "{bytes} bytes is under Docker's minimum of 6 MiB"
        )));
    }
    Ok(bytes)
}

/// A positive number of CPUs (a number or a numeric string), at most 1024.
pub fn parse_cpus(v: &Value) -> Result<i64, ContainerSpecError> {
    let n = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match n {
        Some(c) if c.is_finite() && c > 0.0 && c <= 1024.0 => Ok((c * 1e9).round() as i64),
        _ => Err(ContainerSpecError::Cpus(format!(
            "{v} is not a number of CPUs above 0"
        ))),
    }
}

fn parse_labels(v: &Value) -> Result<BTreeMap<String, String>, ContainerSpecError> {
    let Value::Object(m) = v else {
        return Err(ContainerSpecError::WrongType {
            field: "Labels",
            expected: "an object of strings",
            found: kind(v),
        });
    };
    let mut out = BTreeMap::new();
    for (k, v) in m {
        let Value::String(s) = v else {
            return Err(ContainerSpecError::Label(format!(
                "{k:?}: a label's value is a string, found {}",
                kind(v)
            )));
        };
        if k.is_empty() || k.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ContainerSpecError::Label(format!(
                "{k:?} is not a label name"
            )));
        }
        if k.starts_with(LABEL_PREFIX) {
            return Err(ContainerSpecError::Label(format!(
                "{k:?}: labels under {LABEL_PREFIX:?} are the agent's own"
            )));
        }
        out.insert(k.clone(), s.clone());
    }
    Ok(out)
}

/// Checks an image reference: `[host[:port]/]path[:tag][@algo:hex]`, the path's components
/// lowercase letters and digits with `.`, `_`, `-` between them, as the Engine accepts.
pub fn validate_image(image: &str) -> Result<(), ContainerSpecError> {
    let bad = |why| {
        Err(ContainerSpecError::Image {
            image: image.to_string(),
            why,
        })
    };
    if image.is_empty() {
        return bad("it is empty");
    }
    if image.len() > 512 {
        return bad("it is longer than 512 bytes");
    }
    if image.chars().any(char::is_whitespace) {
        return bad("it contains spaces");
    }
    if image.chars().any(char::is_control) {
        return bad("it contains control characters");
    }
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (image, None),
    };
    if let Some(d) = digest {
        let ok = d.split_once(':').is_some_and(|(algo, hex)| {
            !algo.is_empty()
                && algo
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                && hex.len() >= 32
                && hex.chars().all(|c| c.is_ascii_hexdigit())
        });
        if !ok {
            return bad("the digest is algorithm:hex");
        }
    }
    // A tag follows the last ':' that comes after the last '/'.
    let slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[slash..].rfind(':') {
        Some(i) => (&rest[..slash + i], Some(&rest[slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && t.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !ok {
            return bad("the tag is [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}");
        }
    }
    let mut comps: Vec<&str> = name.split('/').collect();
    if comps.len() > 1
        && (comps[0].contains('.') || comps[0].contains(':') || comps[0] == "localhost")
    {
        let host = comps.remove(0);
        let (h, port) = match host.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host, None),
        };
        let host_ok = !h.is_empty()
            && h.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
            && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if !host_ok {
            return bad("the registry is host[:port]");
        }
    }
    for c in comps {
        let ok = !c.is_empty()
            && c.starts_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
            && c.ends_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit())
            && c.chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch));
        if !ok {
            return bad(
                "a name component is lowercase letters and digits, with . _ - between them",
            );
        }
    }
    Ok(())
}

/// The `fromImage` and `tag` of a pull: with no tag and no digest the Engine would pull every
/// tag, so `latest` is named.
pub fn pull_ref(image: &str) -> (String, String) {
    if image.contains('@') {
        return (image.to_string(), String::new());
    }
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[slash..].rfind(':') {
        Some(i) => (
            image[..slash + i].to_string(),
            image[slash + i + 1..].to_string(),
        ),
        None => (image.to_string(), "latest".to_string()),
    }
}

/// A running container's published ports, as the Engine reports them: the container side
/// (`80/tcp`) to the host side (address, port). The first binding of each port.
pub type Published = BTreeMap<String, HostPort>;

/// Where a container port is published on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// The host address it is bound to; `0.0.0.0`, `::` or empty mean every address.
    pub ip: String,
    pub port: u16,
}

/// The service a container's job or app declared, as it is registered: with the host side of
/// the container's published port, so that it is reachable from other nodes.
///
/// The rule (README, "Services of containers"):
/// - `Port` names a container port the container publishes (tcp first, then udp, sctp): the
///   service gets that port's host port;
/// - `Port` names anything else: kept (a host port already, as with `Network: host`);
/// - no `Port`: the first port of `Docker.Ports` (in its order) that is published;
/// - `Address` stays as written; without one, a port bound to one host address (not
///   `0.0.0.0`) gives that address, else it is left empty and Consul uses the node's address.
pub fn published_service(
    s: &crate::wire::ServiceSpec,
    declared: &[PortSpec],
    published: &Published,
) -> crate::wire::ServiceSpec {
    let find = |ctr: u16| {
        ["tcp", "udp", "sctp"]
            .iter()
            .find_map(|proto| published.get(&format!("{ctr}/{proto}")))
    };
    let host = match s.port {
        Some(p) => find(p),
        None => declared.iter().find_map(|d| published.get(&d.key())),
    };
    let mut out = s.clone();
    if let Some(h) = host {
        out.port = Some(h.port);
        let any = matches!(h.ip.as_str(), "" | "0.0.0.0" | "::");
        if out.address.is_none() && !any {
            out.address = Some(h.ip.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_get_the_published_host_ports() {
        use crate::wire::ServiceSpec;
        let declared: Vec<PortSpec> = ["8080:80", "127.0.0.3::53/udp", "9000"]
            .iter()
            .map(|p| parse_port(p).unwrap())
            .collect();
        let published: Published = [
            ("80/tcp", "0.0.0.0", 8080),
            ("53/udp", "127.0.0.3", 40001),
            ("9000/tcp", "", 40002),
        ]
        .iter()
        .map(|(k, ip, port)| {
            (
                k.to_string(),
                HostPort {
                    ip: ip.to_string(),
                    port: *port,
                },
            )
        })
        .collect();
        let svc = |port: Option<u16>, address: Option<&str>| ServiceSpec {
            name: Some("web".into()),
            port,
            address: address.map(str::to_string),
            ..Default::default()
        };
        let reg = |s: ServiceSpec| {
            let r = published_service(&s, &declared, &published);
            (r.port, r.address)
        };
        // A container port: its host port; bound to every address: the node's (None).
        assert_eq!(reg(svc(Some(80), None)), (Some(8080), None));
        assert_eq!(reg(svc(Some(9000), None)), (Some(40002), None));
        // Bound to one address: that address, unless the service names its own.
        assert_eq!(
            reg(svc(Some(53), None)),
            (Some(40001), Some("127.0.0.3".into()))
        );
        assert_eq!(
            reg(svc(Some(53), Some("10.0.0.1"))),
            (Some(40001), Some("10.0.0.1".into()))
        );
        // Not a published container port: kept as written.
        assert_eq!(reg(svc(Some(7000), None)), (Some(7000), None));
        // No port: the first of Docker.Ports that is published.
        assert_eq!(reg(svc(None, None)), (Some(8080), None));
        // Nothing published: unchanged.
        let r = published_service(&svc(None, None), &declared, &Published::new());
        assert_eq!((r.port, r.address), (None, None));
    }
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn ports_in_every_documented_form() {
        let p = parse_port("8080:80").unwrap();
        assert_eq!(
            (p.host_ip.clone(), p.host_port, p.container_port, p.key()),
            (None, Some(8080), 80, "80/tcp".to_string())
        );
        let p = parse_port("80").unwrap();
        assert_eq!((p.host_port, p.container_port), (None, 80));
        let p = parse_port("127.0.0.1:8080:80/udp").unwrap();
        assert_eq!(p.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(p.key(), "80/udp");
        let p = parse_port("127.0.0.1::53").unwrap();
        assert_eq!((p.host_port, p.container_port), (None, 53));
        for bad in [
            "",
            "0",
            "70000",
            "http",
            "80:",
            ":80",
            "1:2:3:4",
            "80/icmp",
            "8000-8010:80",
            "host:80:80",
            "-1",
        ] {
            assert!(
                matches!(parse_port(bad), Err(ContainerSpecError::Port { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn volumes_need_absolute_targets_and_a_known_mode() {
        let v = parse_volume("/srv/data:/data:ro").unwrap();
        assert_eq!(v.bind(), "/srv/data:/data:ro");
        assert_eq!(parse_volume("cache:/c").unwrap().bind(), "cache:/c:rw");
        for bad in ["/a", "a:b", "/a:/b:rx", "../x:/b", ":/b", "/a:/b:ro:x"] {
            assert!(
                matches!(parse_volume(bad), Err(ContainerSpecError::Volume { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn memory_as_bytes_or_with_units() {
        assert_eq!(parse_memory(&json!("256MiB")).unwrap(), 256 << 20);
        assert_eq!(parse_memory(&json!("256m")).unwrap(), 256 << 20);
        assert_eq!(parse_memory(&json!("1g")).unwrap(), 1 << 30);
        assert_eq!(parse_memory(&json!("1.5GiB")).unwrap(), 3 << 29);
        assert_eq!(parse_memory(&json!(16777216)).unwrap(), 16 << 20);
        for bad in [
            json!("1k"),
            json!("lots"),
            json!("5 parsecs"),
            json!(-1),
            json!(true),
        ] {
            assert!(parse_memory(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn images_with_spaces_or_capitals_are_refused() {
        for ok in [
            "busybox",
            "servant-test/busybox:1234",
            "localhost:5000/a/b_c:v1.2",
            "registry.example/x@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            validate_image(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let e = validate_image("busy box").unwrap_err();
        assert_eq!(
            e.to_string(),
            "Image \"busy box\" is not an image name: it contains spaces"
        );
        for bad in ["", "Busybox", "a//b", "a:", "a:-x", "-a", "a@sha256:zz"] {
            assert!(validate_image(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_docker_object_refuses_unknown_keys_and_takes_known_ones_in_any_case() {
        let d = json!({"ports": ["8080:80", 53], "VOLUMES": ["/a:/b:ro"], "Network": "bridge",
            "Memory": "64MiB", "Cpus": 0.5, "Labels": {"team": "x"}, "Entrypoint": "/bin/sh",
            "Pull": "Never"});
        let s = ContainerSpec::parse("img", Some(&d)).unwrap();
        assert_eq!(s.ports.len(), 2);
        assert_eq!(s.memory, Some(64 << 20));
        assert_eq!(s.nano_cpus, Some(500_000_000));
        assert_eq!(s.entrypoint, Some(vec!["/bin/sh".to_string()]));
        assert_eq!(s.pull, PullPolicy::Never);
        let e = ContainerSpec::parse("img", Some(&json!({"Privileged": true}))).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("Docker: unknown key \"Privileged\""),
            "{e}"
        );
        let e = ContainerSpec::parse("img", Some(&json!({"Labels": {"servant.node": "x"}})))
            .unwrap_err();
        assert!(e.to_string().contains("the agent's own"), "{e}");
        assert!(ContainerSpec::parse("img", Some(&json!([1]))).is_err());
        assert!(ContainerSpec::parse("img", Some(&json!({"Pull": "sometimes"}))).is_err());
        assert!(ContainerSpec::parse("img", Some(&json!({"Cpus": 0}))).is_err());
        assert_eq!(
            ContainerSpec::parse("img", None).unwrap(),
            ContainerSpec {
                image: "img".into(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn pulls_name_a_tag() {
        assert_eq!(pull_ref("busybox"), ("busybox".into(), "latest".into()));
        assert_eq!(pull_ref("a/b:1"), ("a/b".into(), "1".into()));
        assert_eq!(
            pull_ref("localhost:5000/b"),
            ("localhost:5000/b".into(), "latest".into())
        );
    }

    proptest! {
        #[test]
        fn port_parsing_never_panics_and_round_trips(h in 1u16.., c in 1u16.., junk in "\\PC{0,20}") {
            let _ = parse_port(&junk);
            let _ = parse_volume(&junk);
            let _ = validate_image(&junk);
            let _ = parse_memory(&Value::String(junk.clone()));
            let p = parse_port(&format!("{h}:{c}")).unwrap();
            prop_assert_eq!((p.host_port, p.container_port), (Some(h), c));
        }

        #[test]
        fn an_image_name_with_whitespace_is_always_refused(a in "[a-z]{1,8}", b in "[a-z]{1,8}", ws in "[ \t\n]") {
            let name = format!("{a}{ws}{b}");
            prop_assert!(validate_image(&name).is_err());
        }
    }
}
