//! Consul data for templates: each data function call is a dependency (`Dep`), fetched from
//! Consul with a blocking query by the runner (one watch per distinct dependency, shared by
//! every template) and answered from a cache while a template renders. Shapes follow
//! consul-template's (`.Address`, `.Port`, `.Tags`, `.Key`, `.Value`...).

use crate::wire::HealthStatus;
use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::{DataSource, FuncError};
use crate::consul::{Client, ConsulError, QueryMeta, QueryOptions};

/// The data functions templates may call.
pub const DATA_FUNCS: &[&str] = &[
    "service",
    "services",
    "key",
    "keyOrDefault",
    "keyExists",
    "ls",
    "safeLs",
    "tree",
    "safeTree",
    "nodes",
    "node",
    "env",
];

/// One thing to watch in Consul. `key`, `keyOrDefault` and `keyExists` of one path share a
/// dependency, as do `ls`/`safeLs` and `tree`/`safeTree` of one prefix.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dep {
    /// `service "[tag.]name[|states][@dc]"`: healthy instances.
    Service(String),
    Services,
    Key(String),
    Ls(String),
    Tree(String),
    Nodes,
    Node(String),
}

impl Dep {
    /// The dependency of a call, or None for `env` and unknown names.
    pub fn of(name: &str, args: &[Value]) -> Option<Dep> {
        let arg = |i: usize| {
            args.get(i)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        Some(match name {
            "service" => Dep::Service(arg(0)),
            "services" => Dep::Services,
            "key" | "keyOrDefault" | "keyExists" => Dep::Key(arg(0)),
            "ls" | "safeLs" => Dep::Ls(arg(0)),
            "tree" | "safeTree" => Dep::Tree(arg(0)),
            "nodes" => Dep::Nodes,
            "node" => Dep::Node(arg(0)),
            _ => return None,
        })
    }
}

/// `service`'s argument: `tag.name|passing,warning@dc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceQuery {
    pub name: String,
    pub tag: Option<String>,
    /// Check states an instance may be in; `any` drops the filter. Default: passing only.
    pub states: BTreeSet<HealthStatus>,
    /// Instances in maintenance mode pass the filter too (consul-template's `maintenance`).
    pub maintenance: bool,
    pub any: bool,
    pub dc: Option<String>,
}

/// Why `service`'s argument is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceArgError {
    #[error("service {0:?}: no service name")]
    NoName(String),
    #[error("service {arg:?}: unknown health filter {filter:?}")]
    Filter { arg: String, filter: String },
}

impl From<ServiceArgError> for FuncError {
    fn from(e: ServiceArgError) -> Self {
        e.to_string().into()
    }
}

/// Parses `service`'s argument.
pub fn parse_service(s: &str) -> Result<ServiceQuery, ServiceArgError> {
    let (rest, filter) = match s.split_once('|') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let (rest, dc) = match rest.split_once('@') {
        Some((a, b)) => (a, Some(b.to_string())),
        None => (rest, None),
    };
    let (tag, name) = match rest.rsplit_once('.') {
        Some((t, n)) => (Some(t.to_string()), n.to_string()),
        None => (None, rest.to_string()),
    };
    if name.is_empty() {
        return Err(ServiceArgError::NoName(s.to_string()));
    }
    let mut states = BTreeSet::new();
    let mut any = false;
    let mut maintenance = false;
    for f in filter.unwrap_or("passing").split(',').map(str::trim) {
        match (f, HealthStatus::parse(f)) {
            ("any", _) => any = true,
            ("maintenance", _) => maintenance = true,
            (_, Some(st)) => {
                states.insert(st);
            }
            (other, None) => {
                return Err(ServiceArgError::Filter {
                    arg: s.to_string(),
                    filter: other.to_string(),
                })
            }
        }
    }
    Ok(ServiceQuery {
        name,
        tag,
        states,
        maintenance,
        any,
        dc,
    })
}

/// An instance's state: the worst of its checks (Consul's aggregate); None in maintenance
/// mode, which consul-template tells apart from critical.
fn aggregate(checks: &[crate::consul::HealthCheck]) -> Option<HealthStatus> {
    if checks.iter().any(|c| {
        c.check_id == "_node_maintenance" || c.check_id.starts_with("_service_maintenance:")
    }) {
        return None;
    }
    Some(
        checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(HealthStatus::Passing),
    )
}

/// Fetches a dependency, blocking on `q`: its value in the shape templates see.
pub async fn fetch(
    client: &Client,
    dep: &Dep,
    q: &QueryOptions,
) -> Result<(Value, QueryMeta), ConsulError> {
    match dep {
        Dep::Service(arg) => {
            let sq = parse_service(arg).map_err(|e| ConsulError::Decode {
                path: "service".into(),
                detail: e.to_string(),
            })?;
            let q = QueryOptions {
                dc: sq.dc.clone(),
                ..q.clone()
            };
            let (entries, meta) = client.health_service(&sq.name, false, &q).await?;
            let mut out = Vec::new();
            for e in &entries {
                let tags: Vec<String> = e.service["Tags"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|t| t.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                if sq.tag.as_ref().is_some_and(|t| !tags.contains(t)) {
                    continue;
                }
                let state = aggregate(&e.checks);
                let wanted = match state {
                    Some(st) => sq.states.contains(&st),
                    None => sq.maintenance,
                };
                if !sq.any && !wanted {
                    continue;
                }
                let status = state.map_or("maintenance", HealthStatus::as_str);
                let svc_addr = e.service["Address"].as_str().unwrap_or("");
                let address = if svc_addr.is_empty() {
                    e.node.address.clone()
                } else {
                    svc_addr.to_string()
                };
                out.push(json!({
                    "Node": e.node.node,
                    "NodeAddress": e.node.address,
                    "Address": address,
                    "ID": e.service["ID"],
                    "Name": e.service["Service"],
                    "Tags": tags,
                    "Port": e.service["Port"],
                    "ServiceMeta": e.service["Meta"],
                    "Status": status,
                }));
            }
            // Stable order: a reordering alone must not rewrite the file.
            out.sort_by_key(|v| (v["Node"].to_string(), v["ID"].to_string()));
            Ok((Value::Array(out), meta))
        }
        Dep::Services => {
            let (m, meta) = client.catalog_services(q).await?;
            let v: Vec<Value> = m
                .into_iter()
                .map(|(name, mut tags)| {
                    tags.sort();
                    json!({"Name": name, "Tags": tags})
                })
                .collect();
            Ok((Value::Array(v), meta))
        }
        Dep::Key(path) => {
            let (e, meta) = client.kv_get(path, q).await?;
            Ok((
                e.map(|e| Value::String(String::from_utf8_lossy(&e.value).to_string()))
                    .unwrap_or(Value::Null),
                meta,
            ))
        }
        Dep::Ls(prefix) | Dep::Tree(prefix) => {
            let p = format!("{}/", prefix.trim_end_matches('/'));
            let (pairs, meta) = client.kv_list(&p, q).await?;
            let deep = matches!(dep, Dep::Tree(_));
            let v: Vec<Value> = pairs
                .iter()
                .filter_map(|e| {
                    let rel = e.key.strip_prefix(&p)?;
                    if rel.is_empty() || rel.ends_with('/') || (!deep && rel.contains('/')) {
                        return None;
                    }
                    Some(json!({"Key": rel, "Value": String::from_utf8_lossy(&e.value)}))
                })
                .collect();
            Ok((Value::Array(v), meta))
        }
        Dep::Nodes => {
            let (nodes, meta) = client.catalog_nodes(q).await?;
            Ok((serde_json::to_value(nodes).unwrap_or(Value::Null), meta))
        }
        Dep::Node(name) => {
            let name = if name.is_empty() {
                client.agent_node_name().await?
            } else {
                name.clone()
            };
            let (checks, meta) = client.health_node(&name, q).await?;
            let (nodes, _) = client.catalog_nodes(&QueryOptions::default()).await?;
            let node = nodes.into_iter().find(|n| n.node == name);
            Ok((json!({"Node": node, "Checks": checks}), meta))
        }
    }
}

/// Answers data functions from fetched values; notes what it lacked.
#[derive(Debug, Default)]
pub struct CachedSource {
    /// The latest value of every dependency watched so far.
    pub data: BTreeMap<Dep, Value>,
    /// Dependencies a render asked for that have no value yet: the runner watches them and
    /// renders again; nothing is written meanwhile.
    pub missing: BTreeSet<Dep>,
}

impl DataSource for CachedSource {
    fn call(&mut self, name: &str, args: &[Value]) -> Result<Option<Value>, FuncError> {
        if name == "env" {
            let k = args.first().and_then(Value::as_str).unwrap_or("");
            return Ok(Some(Value::String(std::env::var(k).unwrap_or_default())));
        }
        let Some(dep) = Dep::of(name, args) else {
            return Ok(None);
        };
        if let Dep::Service(arg) = &dep {
            parse_service(arg)?;
        }
        let Some(v) = self.data.get(&dep).cloned() else {
            self.missing.insert(dep);
            // A neutral value so the render can go on and find the other dependencies.
            return Ok(Some(match name {
                "key" | "keyOrDefault" => Value::String(String::new()),
                "keyExists" => Value::Bool(false),
                "node" => Value::Null,
                _ => Value::Array(vec![]),
            }));
        };
        Ok(Some(match name {
            "keyExists" => Value::Bool(!v.is_null()),
            "keyOrDefault" => match v {
                Value::Null => args.get(1).cloned().unwrap_or(Value::String(String::new())),
                other => other,
            },
            "key" => match v {
                Value::Null => Value::String(String::new()),
                other => other,
            },
            "safeLs" | "safeTree" => {
                if v.as_array().is_none_or(|a| a.is_empty()) {
                    return Err(format!(
                        "{name}: nothing under {:?}; not rendering from an empty prefix",
                        args.first().and_then(Value::as_str).unwrap_or("")
                    )
                    .into());
                }
                v
            }
            _ => v,
        }))
    }

    fn names(&self) -> Vec<&'static str> {
        DATA_FUNCS.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_arguments() {
        let q = parse_service("web").unwrap();
        assert_eq!((q.name.as_str(), q.tag, q.any), ("web", None, false));
        assert!(q.states.contains(&HealthStatus::Passing) && q.states.len() == 1);
        // consul-template's order: tag.name@dc|filter.
        let q = parse_service("v1.web@dc2|passing,warning").unwrap();
        assert_eq!(q.tag.as_deref(), Some("v1"));
        assert_eq!(q.dc.as_deref(), Some("dc2"));
        assert_eq!(q.states.len(), 2);
        assert!(parse_service("web|any").unwrap().any);
        assert!(parse_service("web|sideways").is_err());
        assert!(parse_service("").is_err());
    }

    #[test]
    fn the_cache_answers_shares_key_dependencies_and_notes_what_is_missing() {
        let mut s = CachedSource::default();
        assert_eq!(
            s.call("key", &[json!("a/b")]).unwrap(),
            Some(json!("")),
            "neutral while missing"
        );
        assert!(s.missing.contains(&Dep::Key("a/b".into())));
        s.data.insert(Dep::Key("a/b".into()), Value::Null);
        assert_eq!(
            s.call("keyOrDefault", &[json!("a/b"), json!("dflt")])
                .unwrap(),
            Some(json!("dflt"))
        );
        assert_eq!(
            s.call("keyExists", &[json!("a/b")]).unwrap(),
            Some(json!(false))
        );
        s.data.insert(Dep::Ls("cfg".into()), json!([]));
        assert!(s
            .call("safeLs", &[json!("cfg")])
            .unwrap_err()
            .to_string()
            .contains("empty prefix"));
        assert_eq!(s.call("ls", &[json!("cfg")]).unwrap(), Some(json!([])));
        assert_eq!(s.call("nosuch", &[]).unwrap(), None);
    }

    #[test]
    fn templates_render_from_the_cache() {
        let t = super::super::parse(
            "t",
            r#"{{range service "web"}}{{.Address}}:{{.Port}} {{end}}{{keyOrDefault "x" "d"}}"#,
            DATA_FUNCS,
        )
        .unwrap();
        let mut s = CachedSource::default();
        s.data.insert(
            Dep::Service("web".into()),
            json!([{"Address": "10.0.0.1", "Port": 80}, {"Address": "10.0.0.2", "Port": 81}]),
        );
        s.data.insert(Dep::Key("x".into()), Value::Null);
        assert_eq!(
            t.execute(&Value::Null, &mut s).unwrap(),
            "10.0.0.1:80 10.0.0.2:81 d"
        );
        assert!(s.missing.is_empty());
    }
}
