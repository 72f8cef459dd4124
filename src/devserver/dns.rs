//! Consul DNS for the embedded server, pure: a query and a snapshot of the node, its services
//! and their checks in; the answer out. No sockets, no clock (the SOA serial and the shuffle
//! seed come in), so every rule is unit- and property-tested; `dns_server` only moves packets.
//!
//! The shapes are Consul 1.8.7's with its defaults, checked with `dig` against a real agent:
//! - `<name>.service[.dc1].consul`, `<tag>.<name>.service...` and RFC 2782's
//!   `_<name>._<tag|tcp>[.service][.dc1].consul` (SRV); `<node>.node[.dc1].consul`;
//!   `<hex ip>.addr[.dc1].consul` (the SRV targets of services with their own address);
//!   PTR for the node's and services' addresses.
//! - An instance answers only while all its checks and all the node's checks (maintenance
//!   included) pass: Consul's `dns_config { only_passing = true }` (its default also keeps
//!   warnings).
//! - Names are case-insensitive; TTLs are 0; answers are shuffled.
//! - A name that matches nothing is NXDOMAIN with the zone's SOA in authority; a name that
//!   exists without records of the asked type is NOERROR with the SOA (services) or empty
//!   (nodes); a name outside `consul.` is REFUSED.
//! - SRV answers name `<node>.node.dc1.consul.` (or `<hex>.addr.dc1.consul.`) with the address
//!   records in the additional section.
//! - Over UDP: without EDNS at most 3 answers and 512 bytes, else the client's buffer size
//!   (Consul's `udp_answer_limit` and trimming; no TC bit, as Consul's `enable_truncate` is off).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use serde_json::Value;

use super::state::State;
use crate::wire::HealthStatus;

/// Consul's default domain and this server's datacenter.
pub const DOMAIN: &str = "consul";
pub const DATACENTER: &str = "dc1";
/// Consul's default `udp_answer_limit`: answers in a UDP reply without EDNS.
const UDP_ANSWER_LIMIT: usize = 3;
/// A UDP reply without EDNS fits in this.
const UDP_MIN_SIZE: usize = 512;

/// What DNS answers from: the node, its services and the checks' states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub node: String,
    pub node_addr: IpAddr,
    /// States of the node's own checks (not serfHealth, which is always passing here).
    pub node_checks: Vec<HealthStatus>,
    pub instances: Vec<Instance>,
}

/// One registered service instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub name: String,
    pub tags: Vec<String>,
    /// The service's own address; empty for the node's.
    pub address: String,
    pub port: u16,
    /// States of the instance's checks.
    pub checks: Vec<HealthStatus>,
}

impl Snapshot {
    /// The snapshot of the server's state.
    pub fn of(st: &State, node: &str, node_addr: IpAddr) -> Snapshot {
        let mut by_service: HashMap<&str, Vec<HealthStatus>> = HashMap::new();
        let mut node_checks = Vec::new();
        for c in st.checks.values() {
            if c.service_id.is_empty() {
                node_checks.push(c.status);
            } else {
                by_service
                    .entry(c.service_id.as_str())
                    .or_default()
                    .push(c.status);
            }
        }
        let text = |reg: &Value, k: &str| {
            reg.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let instances = st
            .services
            .iter()
            .map(|(id, reg)| Instance {
                name: text(reg, "Name"),
                tags: reg
                    .get("Tags")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
                address: text(reg, "Address"),
                port: reg
                    .get("Port")
                    .and_then(Value::as_u64)
                    .and_then(|p| u16::try_from(p).ok())
                    .unwrap_or(0),
                checks: by_service.remove(id.as_str()).unwrap_or_default(),
            })
            .collect();
        Snapshot {
            node: node.to_string(),
            node_addr,
            node_checks,
            instances,
        }
    }

    /// Whether DNS answers with this instance: every check of its own and of its node passes
    /// (Consul's `dns_config { only_passing = true }`; by default Consul keeps warnings).
    fn healthy(&self, i: &Instance) -> bool {
        self.node_checks
            .iter()
            .chain(&i.checks)
            .all(|s| *s == HealthStatus::Passing)
    }
}

/// How a query arrived: UDP replies are trimmed, TCP replies are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// The reply to one packet, as bytes; None when nothing should be sent (a packet too short to
/// carry a DNS header, or one that is itself a response). Never panics, whatever the bytes.
pub fn respond(
    packet: &[u8],
    snap: &Snapshot,
    transport: Transport,
    serial: u32,
    seed: u64,
) -> Option<Vec<u8>> {
    if packet.len() < 12 || packet[2] & 0x80 != 0 {
        return None;
    }
    let id = u16::from_be_bytes([packet[0], packet[1]]);
    let mut reply = match Message::from_vec(packet) {
        Ok(req) => {
            let mut reply = answer(&req, snap, serial, seed);
            if transport == Transport::Udp {
                trim_udp(&mut reply, req.extensions().as_ref().map(Edns::max_payload));
            }
            reply
        }
        Err(_) => Message::error_msg(id, OpCode::Query, ResponseCode::FormErr),
    };
    match reply.to_vec() {
        Ok(b) => Some(b),
        Err(_) => {
            // A record that cannot be encoded: answer that the server failed, not nothing.
            reply = Message::error_msg(id, reply.op_code(), ResponseCode::ServFail);
            reply.to_vec().ok()
        }
    }
}

/// The full answer to a parsed request (before any UDP trimming).
pub fn answer(req: &Message, snap: &Snapshot, serial: u32, seed: u64) -> Message {
    let mut m = Message::new();
    m.set_id(req.id())
        .set_message_type(MessageType::Response)
        .set_op_code(req.op_code())
        .set_recursion_desired(req.recursion_desired());
    if req.op_code() != OpCode::Query {
        m.set_response_code(ResponseCode::NotImp);
        return m;
    }
    let [q] = req.queries() else {
        m.set_response_code(ResponseCode::FormErr);
        return m;
    };
    m.add_query(q.clone());
    let labels: Vec<String> = q
        .name()
        .iter()
        .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
        .collect();
    let qtype = q.query_type();
    let z = Zone {
        snap,
        serial,
        qname: q.name().clone(),
    };
    if labels.len() >= 2 && labels[labels.len() - 1] == "arpa" {
        z.ptr(&mut m, &labels);
    } else if labels.last().map(String::as_str) == Some(DOMAIN) {
        m.set_authoritative(true);
        z.in_domain(&mut m, &labels[..labels.len() - 1], qtype, seed);
    } else {
        // Not ours, and Consul has no recursors configured here.
        m.set_response_code(ResponseCode::Refused);
        return m;
    }
    if let Some(e) = req.extensions() {
        let mut edns = Edns::new();
        edns.set_max_payload(e.max_payload());
        m.set_edns(edns);
    }
    m
}

/// What a name inside the domain asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Lookup {
    Service {
        name: String,
        tag: Option<String>,
    },
    Node(String),
    Addr(String),
    /// A valid form that names nothing here (another datacenter, prepared queries, connect).
    Nothing,
    Invalid,
}

/// Consul's parse of the labels before the domain, from the last one back: `service`, `node`,
/// `addr`, or a datacenter (once).
fn parse(labels: &[String], srv: bool) -> Lookup {
    let mut labels = labels.to_vec();
    let mut dc: Option<String> = None;
    loop {
        let n = labels.len();
        if n == 0 {
            return Lookup::Invalid;
        }
        // An SRV query may leave out `service`: `_name._tag.consul`.
        let (kind, parts) = if srv && labels[n - 1].starts_with('_') {
            ("service", &labels[..])
        } else {
            (labels[n - 1].as_str(), &labels[..n - 1])
        };
        let found = match kind {
            "service" => match parts {
                [] => Lookup::Invalid,
                [name, tag] if name.starts_with('_') && tag.starts_with('_') => Lookup::Service {
                    name: name[1..].to_string(),
                    tag: Some(tag[1..].to_string()).filter(|t| t != "tcp"),
                },
                [rest @ .., name] => Lookup::Service {
                    name: name.clone(),
                    tag: (!rest.is_empty()).then(|| rest.join(".")),
                },
            },
            "node" if parts.is_empty() => Lookup::Invalid,
            "node" => Lookup::Node(parts.join(".")),
            "addr" if n == 2 => Lookup::Addr(labels[0].clone()),
            "addr" => Lookup::Invalid,
            "query" | "connect" | "ingress" if !parts.is_empty() => Lookup::Nothing,
            _ if dc.is_some() => Lookup::Invalid,
            other => {
                dc = Some(other.to_string());
                labels.pop();
                continue;
            }
        };
        return match dc {
            Some(d) if d != DATACENTER && found != Lookup::Invalid => Lookup::Nothing,
            _ => found,
        };
    }
}

/// The zone's records for one reply.
struct Zone<'a> {
    snap: &'a Snapshot,
    serial: u32,
    /// The name asked, as asked (answers keep its case).
    qname: Name,
}

fn name(s: &str) -> Option<Name> {
    Name::from_ascii(s).ok()
}

fn rec(n: Name, data: RData) -> Record {
    Record::from_rdata(n, 0, data)
}

fn addr_data(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(a) => RData::A(A(a)),
        IpAddr::V6(a) => RData::AAAA(AAAA(a)),
    }
}

/// Whether an address record of `ip` answers a query of type `t`.
fn wanted(ip: IpAddr, t: RecordType) -> bool {
    match ip {
        IpAddr::V4(_) => matches!(t, RecordType::A | RecordType::ANY),
        IpAddr::V6(_) => matches!(t, RecordType::AAAA | RecordType::ANY),
    }
}

/// `7f000009` for 127.0.0.9: the label of `.addr.` names.
fn hex_ip(ip: IpAddr) -> String {
    let bytes: Vec<u8> = match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// A small deterministic shuffle (xorshift), seeded by the caller.
fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut x = seed | 1;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let j = (x % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

impl Zone<'_> {
    fn node_fqdn(&self) -> Option<Name> {
        name(&format!("{}.node.{DATACENTER}.{DOMAIN}.", self.snap.node))
    }

    fn soa(&self) -> Option<Record> {
        let soa = SOA::new(
            name(&format!("ns.{DOMAIN}."))?,
            name(&format!("hostmaster.{DOMAIN}."))?,
            self.serial,
            3600,
            600,
            86400,
            0,
        );
        Some(rec(name(&format!("{DOMAIN}."))?, RData::SOA(soa)))
    }

    fn add_soa(&self, m: &mut Message) {
        if let Some(r) = self.soa() {
            m.add_name_server(r);
        }
    }

    fn nxdomain(&self, m: &mut Message) {
        m.set_response_code(ResponseCode::NXDomain);
        self.add_soa(m);
    }

    /// The zone's name server (this node) and its address record.
    fn ns(&self) -> Option<(Record, Record)> {
        let target = self.node_fqdn()?;
        Some((
            rec(name(&format!("{DOMAIN}."))?, RData::NS(NS(target.clone()))),
            rec(target, addr_data(self.snap.node_addr)),
        ))
    }

    fn in_domain(&self, m: &mut Message, labels: &[String], qtype: RecordType, seed: u64) {
        match qtype {
            RecordType::SOA => {
                if let Some(soa) = self.soa() {
                    m.add_answer(soa);
                }
                if let Some((ns, glue)) = self.ns() {
                    m.add_name_server(ns);
                    m.add_additional(glue);
                }
                return;
            }
            RecordType::NS => {
                if let Some((ns, glue)) = self.ns() {
                    m.add_answer(ns);
                    m.add_additional(glue);
                }
                return;
            }
            RecordType::AXFR => {
                m.set_response_code(ResponseCode::NotImp);
                m.set_recursion_desired(false);
                return;
            }
            _ => {}
        }
        match parse(labels, qtype == RecordType::SRV) {
            Lookup::Service { name, tag } => self.service(m, &name, tag.as_deref(), qtype, seed),
            Lookup::Node(n) => {
                if !n.eq_ignore_ascii_case(&self.snap.node) {
                    return self.nxdomain(m);
                }
                // The node answers whatever its health; a type it has no record of is an
                // empty NOERROR.
                if wanted(self.snap.node_addr, qtype) {
                    m.add_answer(rec(self.qname.clone(), addr_data(self.snap.node_addr)));
                }
            }
            Lookup::Addr(label) => match label.len() / 2 {
                4 | 16 => match unhex(&label).and_then(|b| ip_from(&b)) {
                    Some(ip) => {
                        m.add_answer(rec(self.qname.clone(), addr_data(ip)));
                    }
                    None => self.nxdomain(m),
                },
                _ => {}
            },
            Lookup::Nothing | Lookup::Invalid => self.nxdomain(m),
        }
    }

    fn service(
        &self,
        m: &mut Message,
        service: &str,
        tag: Option<&str>,
        qtype: RecordType,
        seed: u64,
    ) {
        let mut found: Vec<&Instance> = self
            .snap
            .instances
            .iter()
            .filter(|i| i.name.eq_ignore_ascii_case(service))
            .filter(|i| tag.is_none_or(|t| i.tags.iter().any(|x| x.eq_ignore_ascii_case(t))))
            .filter(|i| self.snap.healthy(i))
            .collect();
        if found.is_empty() {
            return self.nxdomain(m);
        }
        shuffle(&mut found, seed);
        if qtype == RecordType::SRV {
            for i in found {
                let Some((target, glue)) = self.target(i) else {
                    continue;
                };
                m.add_answer(rec(
                    self.qname.clone(),
                    RData::SRV(SRV::new(1, 1, i.port, target)),
                ));
                if let Some(g) = glue {
                    if !m.additionals().contains(&g) {
                        m.add_additional(g);
                    }
                }
            }
            return;
        }
        // TXT is answered like ANY, as Consul does for services.
        let t = if qtype == RecordType::TXT {
            RecordType::ANY
        } else {
            qtype
        };
        let mut seen: Vec<&str> = Vec::new();
        for i in found {
            let addr = if i.address.is_empty() {
                None
            } else {
                Some(i.address.as_str())
            };
            let key = addr.unwrap_or("");
            if seen.contains(&key) {
                continue;
            }
            seen.push(key);
            match addr.map(|a| a.parse::<IpAddr>()) {
                None => {
                    if wanted(self.snap.node_addr, t) {
                        m.add_answer(rec(self.qname.clone(), addr_data(self.snap.node_addr)));
                    }
                }
                Some(Ok(ip)) => {
                    if wanted(ip, t) {
                        m.add_answer(rec(self.qname.clone(), addr_data(ip)));
                    }
                }
                // A host name: Consul answers a CNAME to it.
                Some(Err(_)) => {
                    let target = name(&format!("{}.", key.trim_end_matches('.')));
                    if let (Some(target), true) = (
                        target,
                        matches!(
                            t,
                            RecordType::A | RecordType::AAAA | RecordType::ANY | RecordType::CNAME
                        ),
                    ) {
                        m.add_answer(rec(self.qname.clone(), RData::CNAME(CNAME(target))));
                    }
                }
            }
        }
        if m.answers().is_empty() {
            self.add_soa(m);
        }
    }

    /// An instance's SRV target and the address record that goes with it.
    fn target(&self, i: &Instance) -> Option<(Name, Option<Record>)> {
        if i.address.is_empty() {
            let t = self.node_fqdn()?;
            let glue = rec(t.clone(), addr_data(self.snap.node_addr));
            return Some((t, Some(glue)));
        }
        match i.address.parse::<IpAddr>() {
            Ok(ip) => {
                let t = name(&format!("{}.addr.{DATACENTER}.{DOMAIN}.", hex_ip(ip)))?;
                let glue = rec(t.clone(), addr_data(ip));
                Some((t, Some(glue)))
            }
            Err(_) => Some((
                name(&format!("{}.", i.address.trim_end_matches('.')))?,
                None,
            )),
        }
    }

    /// Reverse lookups: the node's address, then services' own addresses.
    fn ptr(&self, m: &mut Message, labels: &[String]) {
        let found = reverse_ip(labels).and_then(|ip| {
            if ip == self.snap.node_addr {
                return self.node_fqdn();
            }
            self.snap
                .instances
                .iter()
                .find(|i| i.address.parse::<IpAddr>().ok() == Some(ip))
                .and_then(|i| name(&format!("{}.service.{DATACENTER}.{DOMAIN}.", i.name)))
        });
        match found {
            Some(target) => {
                m.set_authoritative(true);
                m.add_answer(rec(self.qname.clone(), RData::PTR(PTR(target))));
            }
            None => {
                // Consul, with no recursors to ask, fails the query this way.
                m.set_response_code(ResponseCode::ServFail);
                m.set_recursion_available(true);
            }
        }
    }
}

fn ip_from(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        16 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(b);
            Some(IpAddr::V6(Ipv6Addr::from(o)))
        }
        _ => None,
    }
}

/// The address of `d.c.b.a.in-addr.arpa` or of the 32 nibbles of `...ip6.arpa`.
fn reverse_ip(labels: &[String]) -> Option<IpAddr> {
    match labels {
        [octets @ .., zone, arpa] if zone == "in-addr" && arpa == "arpa" && octets.len() == 4 => {
            let mut b = [0u8; 4];
            for (i, o) in octets.iter().rev().enumerate() {
                b[i] = o.parse().ok()?;
            }
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        }
        [nibbles @ .., zone, arpa] if zone == "ip6" && arpa == "arpa" && nibbles.len() == 32 => {
            let hex: String = nibbles.iter().rev().map(String::as_str).collect();
            if hex.len() != 32 {
                return None;
            }
            unhex(&hex).and_then(|b| ip_from(&b))
        }
        _ => None,
    }
}

/// Consul's trimming of a UDP reply: without EDNS (or with a buffer of 512 bytes) at most
/// `UDP_ANSWER_LIMIT` answers; then answers go until the reply fits the client's buffer. The
/// additional section keeps only the records of the SRV targets still answered.
fn trim_udp(m: &mut Message, edns_size: Option<u16>) {
    let max = usize::from(edns_size.unwrap_or(0)).max(UDP_MIN_SIZE);
    let before = m.answers().len();
    if max == UDP_MIN_SIZE && before > UDP_ANSWER_LIMIT {
        m.answers_mut().truncate(UDP_ANSWER_LIMIT);
    }
    while !m.answers().is_empty() && m.to_vec().map(|b| b.len() > max).unwrap_or(false) {
        m.answers_mut().pop();
        sync_additionals(m);
    }
    if m.answers().len() < before {
        sync_additionals(m);
    }
}

fn sync_additionals(m: &mut Message) {
    let targets: Vec<Name> = m
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::SRV(s) => Some(s.target().clone()),
            _ => None,
        })
        .collect();
    m.additionals_mut().retain(|r| targets.contains(r.name()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// Records by section, as `name type data` text.
    fn sections(m: &Message) -> BTreeMap<&'static str, Vec<String>> {
        let show = |rs: &[Record]| -> Vec<String> {
            rs.iter()
                .map(|r| format!("{} {} {}", r.name(), r.record_type(), r.data()))
                .collect()
        };
        BTreeMap::from([
            ("answer", show(m.answers())),
            ("authority", show(m.name_servers())),
            ("additional", show(m.additionals())),
        ])
    }

    fn inst(name: &str, tags: &[&str], address: &str, port: u16, checks: &[&str]) -> Instance {
        Instance {
            name: name.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            address: address.into(),
            port,
            checks: checks
                .iter()
                .map(|c| HealthStatus::parse(c).expect("a state"))
                .collect(),
        }
    }

    fn snap() -> Snapshot {
        Snapshot {
            node: "devnode".into(),
            node_addr: "127.0.0.2".parse().unwrap(),
            node_checks: vec![],
            instances: vec![
                inst("web", &["v1"], "", 8080, &["passing"]),
                inst("web", &["v2"], "127.0.0.9", 8081, &["passing"]),
                inst("web", &["v1"], "", 8082, &["critical"]),
                inst("web", &[], "", 8083, &["warning"]),
                inst("db", &[], "", 5432, &[]),
                inst("down", &[], "", 1, &["passing", "critical"]),
            ],
        }
    }

    fn query(qname: &str, t: RecordType, edns: Option<u16>) -> Message {
        let mut m = Message::new();
        m.set_id(7).set_recursion_desired(true);
        m.add_query(Query::query(Name::from_ascii(qname).unwrap(), t));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.set_edns(e);
        }
        m
    }

    /// Asks over TCP (no trimming) and parses the reply back from the wire.
    fn ask(s: &Snapshot, qname: &str, t: RecordType) -> Message {
        ask_over(s, qname, t, Transport::Tcp, Some(1232))
    }

    fn ask_over(
        s: &Snapshot,
        qname: &str,
        t: RecordType,
        tr: Transport,
        edns: Option<u16>,
    ) -> Message {
        let bytes = query(qname, t, edns).to_vec().unwrap();
        let out = respond(&bytes, s, tr, 1234, 99).expect("a reply");
        Message::from_vec(&out).expect("a reply that parses")
    }

    fn data(m: &Message) -> Vec<String> {
        let mut v: Vec<String> = m.answers().iter().map(|r| r.data().to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn a_records_of_healthy_instances_with_node_or_own_address() {
        let m = ask(&snap(), "web.service.consul.", RecordType::A);
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.authoritative() && m.recursion_desired() && !m.recursion_available());
        // The critical and warning instances are left out (passing only).
        assert_eq!(data(&m), vec!["127.0.0.2", "127.0.0.9"]);
        assert!(m.answers().iter().all(|r| r.ttl() == 0));
        assert_eq!(m.extensions().as_ref().map(Edns::max_payload), Some(1232));
    }

    #[test]
    fn srv_names_the_node_or_addr_target_with_address_records_in_additional() {
        let m = ask(&snap(), "web.service.dc1.consul.", RecordType::SRV);
        assert_eq!(
            data(&m),
            vec![
                "1 1 8080 devnode.node.dc1.consul.",
                "1 1 8081 7f000009.addr.dc1.consul.",
            ]
        );
        let mut extra = sections(&m)["additional"].clone();
        extra.sort();
        assert_eq!(
            extra,
            vec![
                "7f000009.addr.dc1.consul. A 127.0.0.9",
                "devnode.node.dc1.consul. A 127.0.0.2"
            ]
        );
    }

    #[test]
    fn tags_and_rfc2782_forms() {
        let s = snap();
        let ports = |m: &Message| -> Vec<u16> {
            let mut p: Vec<u16> = m
                .answers()
                .iter()
                .filter_map(|r| match r.data() {
                    RData::SRV(x) => Some(x.port()),
                    _ => None,
                })
                .collect();
            p.sort();
            p
        };
        assert_eq!(
            ports(&ask(&s, "v1.web.service.consul.", RecordType::SRV)),
            vec![8080]
        );
        assert_eq!(
            ports(&ask(&s, "_web._v2.service.consul.", RecordType::SRV)),
            vec![8081]
        );
        assert_eq!(
            ports(&ask(&s, "_web._tcp.service.consul.", RecordType::SRV)),
            vec![8080, 8081]
        );
        assert_eq!(
            ports(&ask(&s, "_web._tcp.dc1.consul.", RecordType::SRV)),
            vec![8080, 8081]
        );
        assert_eq!(
            data(&ask(&s, "v2.web.service.consul.", RecordType::A)),
            vec!["127.0.0.9"]
        );
        let none = ask(&s, "v9.web.service.consul.", RecordType::SRV);
        assert_eq!(none.response_code(), ResponseCode::NXDomain);
    }

    #[test]
    fn unknown_names_are_nxdomain_with_the_soa() {
        let s = snap();
        for q in [
            "nope.service.consul.",
            "down.service.consul.",
            "web.service.dc2.consul.",
            "ghost.node.consul.",
            "consul.",
            "service.consul.",
            "dc1.consul.",
            "web.service.dc1.dc1.consul.",
            "x.query.consul.",
            "zzzzzzzz.addr.consul.",
        ] {
            let m = ask(&s, q, RecordType::A);
            assert_eq!(m.response_code(), ResponseCode::NXDomain, "{q}");
            assert!(m.answers().is_empty(), "{q}");
            assert_eq!(
                sections(&m)["authority"],
                vec!["consul. SOA ns.consul. hostmaster.consul. 1234 3600 600 86400 0"],
                "{q}"
            );
        }
    }

    #[test]
    fn a_type_with_no_records_is_noerror() {
        let s = snap();
        let m = ask(&s, "web.service.consul.", RecordType::AAAA);
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.answers().is_empty());
        assert_eq!(m.name_servers().len(), 1, "services add the SOA");
        let m = ask(&s, "devnode.node.consul.", RecordType::AAAA);
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.answers().is_empty() && m.name_servers().is_empty());
    }

    #[test]
    fn names_are_case_insensitive_and_answers_keep_the_asked_case() {
        let s = snap();
        let m = ask(&s, "WEB.Service.CONSUL.", RecordType::A);
        assert_eq!(data(&m), vec!["127.0.0.2", "127.0.0.9"]);
        assert_eq!(m.answers()[0].name().to_ascii(), "WEB.Service.CONSUL.");
        let m = ask(&s, "DevNode.NODE.Dc1.consul.", RecordType::A);
        assert_eq!(data(&m), vec!["127.0.0.2"]);
        assert_eq!(
            data(&ask(&s, "V2.WEB.service.consul.", RecordType::A)),
            vec!["127.0.0.9"]
        );
    }

    #[test]
    fn a_critical_node_check_such_as_maintenance_hides_every_service_but_not_the_node() {
        let mut s = snap();
        s.node_checks.push(HealthStatus::Critical);
        let m = ask(&s, "db.service.consul.", RecordType::A);
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
        let m = ask(&s, "devnode.node.consul.", RecordType::A);
        assert_eq!(data(&m), vec!["127.0.0.2"]);
        // A warning node check too: passing only.
        let mut s = snap();
        s.node_checks.push(HealthStatus::Warning);
        assert_eq!(
            ask(&s, "db.service.consul.", RecordType::A).response_code(),
            ResponseCode::NXDomain
        );
    }

    #[test]
    fn outside_the_domain_is_refused() {
        let m = ask(&snap(), "example.com.", RecordType::A);
        assert_eq!(m.response_code(), ResponseCode::Refused);
        assert!(!m.authoritative());
    }

    #[test]
    fn soa_ns_addr_and_ptr() {
        let s = snap();
        let m = ask(&s, "consul.", RecordType::SOA);
        assert_eq!(m.answers().len(), 1);
        assert_eq!(
            sections(&m)["authority"],
            vec!["consul. NS devnode.node.dc1.consul."]
        );
        let m = ask(&s, "consul.", RecordType::NS);
        assert_eq!(data(&m), vec!["devnode.node.dc1.consul."]);
        let m = ask(&s, "7f000009.addr.dc1.consul.", RecordType::AAAA);
        assert_eq!(data(&m), vec!["127.0.0.9"]);
        let m = ask(&s, "2.0.0.127.in-addr.arpa.", RecordType::PTR);
        assert_eq!(data(&m), vec!["devnode.node.dc1.consul."]);
        let m = ask(&s, "9.0.0.127.in-addr.arpa.", RecordType::PTR);
        assert_eq!(data(&m), vec!["web.service.dc1.consul."]);
        let m = ask(&s, "99.0.0.127.in-addr.arpa.", RecordType::PTR);
        assert_eq!(m.response_code(), ResponseCode::ServFail);
        let m = ask(&s, "web.service.consul.", RecordType::AXFR);
        assert_eq!(m.response_code(), ResponseCode::NotImp);
    }

    #[test]
    fn ipv6_addresses_answer_aaaa() {
        let mut s = snap();
        s.node_addr = "::1".parse().unwrap();
        s.instances = vec![
            inst("v6", &[], "", 80, &[]),
            inst("v6", &[], "fd00::7", 81, &[]),
        ];
        let m = ask(&s, "v6.service.consul.", RecordType::AAAA);
        assert_eq!(data(&m), vec!["::1", "fd00::7"]);
        assert!(ask(&s, "v6.service.consul.", RecordType::A)
            .answers()
            .is_empty());
        let m = ask(&s, "v6.service.consul.", RecordType::SRV);
        let mut extra = sections(&m)["additional"].clone();
        extra.sort();
        assert_eq!(
            extra,
            vec![
                "devnode.node.dc1.consul. AAAA ::1",
                "fd000000000000000000000000000007.addr.dc1.consul. AAAA fd00::7"
            ]
        );
    }

    #[test]
    fn udp_without_edns_answers_three_records_and_tcp_all() {
        let mut s = snap();
        s.instances = (1..=6)
            .map(|i| inst("many", &[], &format!("127.0.1.{i}"), 9000 + i, &[]))
            .collect();
        let udp = ask_over(
            &s,
            "many.service.consul.",
            RecordType::SRV,
            Transport::Udp,
            None,
        );
        assert_eq!(udp.answers().len(), 3);
        assert_eq!(udp.additionals().len(), 3, "glue follows the answers kept");
        assert!(!udp.truncated(), "Consul does not set TC by default");
        let edns = ask_over(
            &s,
            "many.service.consul.",
            RecordType::SRV,
            Transport::Udp,
            Some(1232),
        );
        assert_eq!(edns.answers().len(), 6);
        let tcp = ask_over(
            &s,
            "many.service.consul.",
            RecordType::A,
            Transport::Tcp,
            None,
        );
        assert_eq!(tcp.answers().len(), 6);
    }

    #[test]
    fn bad_packets_get_formerr_or_nothing() {
        let s = snap();
        assert_eq!(respond(&[1, 2, 3], &s, Transport::Udp, 0, 0), None);
        // Header only, claiming a question that is not there.
        let bad = [0xab, 0xcd, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        let m = Message::from_vec(&respond(&bad, &s, Transport::Udp, 0, 0).unwrap()).unwrap();
        assert_eq!((m.id(), m.response_code()), (0xabcd, ResponseCode::FormErr));
        // A response is never answered (no loops between servers).
        let mut r = query("web.service.consul.", RecordType::A, None);
        r.set_message_type(MessageType::Response);
        assert_eq!(
            respond(&r.to_vec().unwrap(), &s, Transport::Udp, 0, 0),
            None
        );
        // Two questions.
        let mut two = query("web.service.consul.", RecordType::A, None);
        two.add_query(Query::query(
            Name::from_ascii("db.service.consul.").unwrap(),
            RecordType::A,
        ));
        let m =
            Message::from_vec(&respond(&two.to_vec().unwrap(), &s, Transport::Udp, 0, 0).unwrap())
                .unwrap();
        assert_eq!(m.response_code(), ResponseCode::FormErr);
    }

    #[test]
    fn snapshot_of_state_reads_services_checks_and_node_checks() {
        let mut st = State::default();
        let reg =
            serde_json::json!({"Name": "web", "Tags": ["a"], "Port": 80, "Address": "127.0.0.9"});
        let check = |id: &str, sid: &str, status: &str| super::super::state::Check {
            id: id.into(),
            name: id.into(),
            status: HealthStatus::parse(status).expect("a state"),
            notes: String::new(),
            output: String::new(),
            service_id: sid.into(),
            service_name: String::new(),
            ttl_ms: 0,
            expires_at_ms: 0,
            probe: None,
        };
        st.service_register("w1", reg, vec![check("c1", "w1", "warning")], 0);
        st.node_maintenance(true, "", 0);
        let s = Snapshot::of(&st, "n", "127.0.0.2".parse().unwrap());
        assert_eq!(s.node_checks, vec!["critical"]);
        assert_eq!(
            s.instances,
            vec![inst("web", &["a"], "127.0.0.9", 80, &["warning"])]
        );
    }

    fn arb_snapshot() -> impl Strategy<Value = Snapshot> {
        let status = prop_oneof![
            Just(HealthStatus::Passing),
            Just(HealthStatus::Warning),
            Just(HealthStatus::Critical)
        ];
        let instance = (
            prop_oneof!["web", "db", "Api"],
            proptest::collection::vec(prop_oneof!["v1", "v2"], 0..2),
            prop_oneof![
                Just(String::new()),
                (1u8..20).prop_map(|o| format!("127.0.3.{o}"))
            ],
            any::<u16>(),
            proptest::collection::vec(status.clone(), 0..3),
        )
            .prop_map(|(name, tags, address, port, checks)| Instance {
                name,
                tags,
                address,
                port,
                checks,
            });
        (
            proptest::collection::vec(status, 0..2),
            proptest::collection::vec(instance, 0..12),
        )
            .prop_map(|(node_checks, instances)| Snapshot {
                node: "devnode".into(),
                node_addr: "127.0.0.2".parse().unwrap(),
                node_checks,
                instances,
            })
    }

    proptest! {
        /// No bytes make the parser entry panic; whatever it sends back parses as DNS.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            for tr in [Transport::Udp, Transport::Tcp] {
                if let Some(out) = respond(&bytes, &snap(), tr, 1, 2) {
                    prop_assert!(Message::from_vec(&out).is_ok());
                }
            }
        }

        /// Valid queries with random bytes overwritten never make it panic either.
        #[test]
        fn mutated_queries_never_panic(
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            t in prop_oneof![Just(RecordType::A), Just(RecordType::SRV), Just(RecordType::ANY)],
        ) {
            let mut bytes = query("_web._v1.service.dc1.consul.", t, Some(4096)).to_vec().unwrap();
            for (at, b) in edits {
                let n = bytes.len();
                bytes[at % n] = b;
            }
            let _ = respond(&bytes, &snap(), Transport::Udp, 1, 2);
        }

        /// SRV over TCP answers exactly the instances of that name (and tag) whose checks and
        /// the node's all pass, whatever the mix, in any letter case.
        #[test]
        fn srv_answers_exactly_the_healthy_instances(
            s in arb_snapshot(),
            svc in prop_oneof!["web", "db", "api", "none"],
            tag in proptest::option::of(prop_oneof!["v1", "v2"]),
            upper in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let node_ok = s.node_checks.iter().all(|c| c == "passing");
            let mut want: Vec<u16> = s.instances.iter()
                .filter(|i| i.name.eq_ignore_ascii_case(&svc))
                .filter(|i| tag.as_ref().is_none_or(|t| i.tags.contains(t)))
                .filter(|i| node_ok && i.checks.iter().all(|c| c == "passing"))
                .map(|i| i.port)
                .collect();
            want.sort();
            let mut qname = match &tag {
                Some(t) => format!("{t}.{svc}.service.consul."),
                None => format!("{svc}.service.consul."),
            };
            if upper {
                qname = qname.to_uppercase();
            }
            let bytes = query(&qname, RecordType::SRV, None).to_vec().unwrap();
            let m = Message::from_vec(&respond(&bytes, &s, Transport::Tcp, 1, seed).unwrap()).unwrap();
            let mut got: Vec<u16> = m.answers().iter().filter_map(|r| match r.data() {
                RData::SRV(x) => Some(x.port()),
                _ => None,
            }).collect();
            got.sort();
            prop_assert_eq!(&got, &want);
            if want.is_empty() {
                prop_assert_eq!(m.response_code(), ResponseCode::NXDomain);
                prop_assert_eq!(m.name_servers().len(), 1);
            } else {
                // Every SRV target has its address record in the additional section.
                for r in m.answers() {
                    if let RData::SRV(x) = r.data() {
                        prop_assert!(m.additionals().iter().any(|a| a.name() == x.target()));
                    }
                }
            }
        }

        /// A UDP reply always fits the client's buffer (512 without EDNS).
        #[test]
        fn udp_replies_fit(s in arb_snapshot(), size in proptest::option::of(0u16..2000)) {
            let bytes = query("web.service.consul.", RecordType::SRV, size).to_vec().unwrap();
            let out = respond(&bytes, &s, Transport::Udp, 1, 3).unwrap();
            prop_assert!(out.len() <= usize::from(size.unwrap_or(0)).max(512));
        }
    }
}
