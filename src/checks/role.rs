//! Active/standby roles from `cluster/<env>/<consulService>`, and what each role expects of the
//! service. Pure: the caller reads the key and the health of the active side.
//!
//! ```json
//! {"active_nodes": ["node1"], "standby_nodes": "node2"}
//! {"active_datacenters": ["hq"], "standby_datacenters": ["dr"]}
//! ```
//!
//! Lists or single strings are accepted, and powerconsul's singular spellings
//! (`active_datacenter`, `standby_node`) too. No data means standalone.

use serde_json::Value;

use crate::wire::HealthStatus;

/// A node's role for one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// No role data: always expected running.
    Standalone,
    /// Named active: expected running.
    Primary,
    /// Named standby: expected stopped while an active node is healthy, running otherwise.
    Secondary,
}

impl Role {
    /// powerconsul's names, used in trigger keys and `@ROLE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Standalone => "standalone",
            Role::Primary => "primary",
            Role::Secondary => "secondary",
        }
    }
}

/// How the active and standby sides are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    Nodes,
    Datacenters,
}

/// The parsed role data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRoles {
    pub grouping: Grouping,
    /// Nodes or datacenters that run the service.
    pub active: Vec<String>,
    /// Nodes or datacenters that take over when no active node is healthy.
    pub standby: Vec<String>,
}

/// Role data that cannot be used: the check is critical with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    #[error("role data at {key} is not JSON: {detail}")]
    Json { key: String, detail: String },
    #[error("role data at {key}: {detail}")]
    Invalid { key: String, detail: String },
    #[error("{what} {name} is in neither the active nor the standby list of {key}")]
    Unlisted {
        what: &'static str,
        name: String,
        key: String,
    },
    #[error("{what} {name} is in both the active and the standby list of {key}")]
    Both {
        what: &'static str,
        name: String,
        key: String,
    },
}

/// A list, a single string, or absent.
fn names(v: &Value, keys: &[&str], key: &str) -> Result<Option<Vec<String>>, RoleError> {
    let mut out: Option<Vec<String>> = None;
    for k in keys {
        let Some(x) = v.get(*k) else { continue };
        let list: Vec<String> = match x {
            Value::String(s) => vec![s.clone()],
            Value::Array(a) => a
                .iter()
                .map(|e| {
                    e.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| RoleError::Invalid {
                            key: key.to_string(),
                            detail: format!("{k} must hold names (strings), found {e}"),
                        })
                })
                .collect::<Result<_, _>>()?,
            Value::Null => vec![],
            other => {
                return Err(RoleError::Invalid {
                    key: key.to_string(),
                    detail: format!("{k} must be a list or a string, found {other}"),
                })
            }
        };
        out.get_or_insert_with(Vec::new).extend(list);
    }
    Ok(out)
}

/// Parses the value at `key`; `None` (no key, or an empty value) means standalone.
pub fn parse_roles(key: &str, body: Option<&[u8]>) -> Result<Option<ClusterRoles>, RoleError> {
    let Some(body) = body.filter(|b| !b.iter().all(u8::is_ascii_whitespace)) else {
        return Ok(None);
    };
    let v: Value = serde_json::from_slice(body).map_err(|e| RoleError::Json {
        key: key.to_string(),
        detail: e.to_string(),
    })?;
    if !v.is_object() {
        return Err(RoleError::Invalid {
            key: key.to_string(),
            detail: format!("expected an object, found {v}"),
        });
    }
    let an = names(&v, &["active_nodes", "active_node"], key)?;
    let sn = names(&v, &["standby_nodes", "standby_node"], key)?;
    let ad = names(&v, &["active_datacenters", "active_datacenter"], key)?;
    let sd = names(&v, &["standby_datacenters", "standby_datacenter"], key)?;
    let by_nodes = an.is_some() || sn.is_some();
    let by_dcs = ad.is_some() || sd.is_some();
    let (grouping, active, standby) = match (by_nodes, by_dcs) {
        (true, true) => {
            return Err(RoleError::Invalid {
                key: key.to_string(),
                detail: "both node lists and datacenter lists are set; use one mode".into(),
            })
        }
        (true, false) => (Grouping::Nodes, an, sn),
        (false, true) => (Grouping::Datacenters, ad, sd),
        (false, false) => {
            if v.as_object().is_some_and(|m| m.is_empty()) {
                return Ok(None);
            }
            return Err(RoleError::Invalid {
                key: key.to_string(),
                detail: "no active_nodes/standby_nodes or active_datacenters/standby_datacenters"
                    .into(),
            });
        }
    };
    Ok(Some(ClusterRoles {
        grouping,
        active: active.unwrap_or_default(),
        standby: standby.unwrap_or_default(),
    }))
}

/// This node's role, from its name and datacenter.
pub fn role_of(
    roles: Option<&ClusterRoles>,
    node: &str,
    datacenter: &str,
    key: &str,
) -> Result<Role, RoleError> {
    let Some(r) = roles else {
        return Ok(Role::Standalone);
    };
    let (what, name) = match r.grouping {
        Grouping::Nodes => ("node", node),
        Grouping::Datacenters => ("datacenter", datacenter),
    };
    let active = r.active.iter().any(|n| n == name);
    let standby = r.standby.iter().any(|n| n == name);
    match (active, standby) {
        (true, true) => Err(RoleError::Both {
            what,
            name: name.to_string(),
            key: key.to_string(),
        }),
        (true, false) => Ok(Role::Primary),
        (false, true) => Ok(Role::Secondary),
        (false, false) => Err(RoleError::Unlisted {
            what,
            name: name.to_string(),
            key: key.to_string(),
        }),
    }
}

/// Whether the role expects the service running, given whether some active node is healthy
/// (only asked of a secondary).
pub fn expects_running(role: Role, active_healthy: bool) -> bool {
    match role {
        Role::Standalone | Role::Primary => true,
        Role::Secondary => !active_healthy,
    }
}

/// Passing when the service is as expected, critical otherwise.
pub fn judge(expected_running: bool, running: bool) -> HealthStatus {
    if expected_running == running {
        HealthStatus::Passing
    } else {
        HealthStatus::Critical
    }
}

/// The environment: configured, else the hostname's prefix before the first `-`
/// (`production-web1` → `production`), as powerconsul 0.3 did.
pub fn environment(configured: Option<&str>, hostname: &str) -> String {
    match configured.filter(|c| !c.is_empty()) {
        Some(c) => c.to_string(),
        None => hostname.split('-').next().unwrap_or(hostname).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const K: &str = "cluster/prod/web";

    fn roles(body: &str) -> Result<Option<ClusterRoles>, RoleError> {
        parse_roles(K, Some(body.as_bytes()))
    }

    #[test]
    fn lists_single_strings_and_singular_names_are_accepted() {
        let r = roles(r#"{"active_nodes": ["a", "b"], "standby_nodes": "c"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(r.grouping, Grouping::Nodes);
        assert_eq!((r.active.len(), r.standby), (2, vec!["c".to_string()]));
        let r = roles(r#"{"active_datacenter": "hq", "standby_datacenters": ["dr"]}"#)
            .unwrap()
            .unwrap();
        assert_eq!(r.grouping, Grouping::Datacenters);
        assert_eq!(role_of(Some(&r), "x", "dr", K), Ok(Role::Secondary));
        assert_eq!(role_of(Some(&r), "x", "hq", K), Ok(Role::Primary));
    }

    #[test]
    fn no_data_is_standalone() {
        assert_eq!(parse_roles(K, None), Ok(None));
        assert_eq!(parse_roles(K, Some(b"  ")), Ok(None));
        assert_eq!(roles("{}"), Ok(None));
        assert_eq!(role_of(None, "n", "dc1", K), Ok(Role::Standalone));
    }

    #[test]
    fn bad_role_data_says_why() {
        for (body, want) in [
            ("{not json", "not JSON"),
            ("[1]", "expected an object"),
            (r#"{"active_nodes": [1]}"#, "names"),
            (r#"{"active_nodes": 5}"#, "list or a string"),
            (
                r#"{"active_nodes": ["a"], "standby_datacenters": ["dr"]}"#,
                "both node lists",
            ),
            (r#"{"primary": "a"}"#, "no active_nodes"),
        ] {
            let e = roles(body).unwrap_err().to_string();
            assert!(e.contains(want), "{body}: {e}");
        }
        let r = roles(r#"{"active_nodes": ["a"], "standby_nodes": ["b", "a"]}"#)
            .unwrap()
            .unwrap();
        assert!(role_of(Some(&r), "a", "dc1", K)
            .unwrap_err()
            .to_string()
            .contains("both"));
        let e = role_of(Some(&r), "z", "dc1", K).unwrap_err().to_string();
        assert!(e.contains("node z is in neither"), "{e}");
    }

    #[test]
    fn what_each_role_expects() {
        assert!(expects_running(Role::Primary, true));
        assert!(expects_running(Role::Standalone, true));
        assert!(!expects_running(Role::Secondary, true));
        assert!(expects_running(Role::Secondary, false));
        assert_eq!(judge(true, true), HealthStatus::Passing);
        assert_eq!(judge(false, true), HealthStatus::Critical);
        assert_eq!(judge(true, false), HealthStatus::Critical);
        assert_eq!(judge(false, false), HealthStatus::Passing);
    }

    #[test]
    fn environment_comes_from_config_or_hostname_prefix() {
        assert_eq!(environment(Some("staging"), "production-web1"), "staging");
        assert_eq!(environment(None, "production-web1"), "production");
        assert_eq!(environment(Some(""), "qa-db-2"), "qa");
        assert_eq!(environment(None, "plainhost"), "plainhost");
    }

    proptest! {
        #[test]
        fn role_parsing_never_panics(body in proptest::collection::vec(any::<u8>(), 0..100)) {
            if let Ok(r) = parse_roles(K, Some(&body)) {
                let _ = role_of(r.as_ref(), "n", "d", K);
            }
        }

        /// Names written in any accepted spelling (plural or singular key, list or single
        /// string) come back in order, and each gets its list's role.
        #[test]
        fn written_roles_read_back(
            by_dcs in any::<bool>(),
            active in proptest::collection::vec("\\PC{0,8}", 0..4),
            standby in proptest::collection::vec("\\PC{0,8}", 0..4),
            singular in any::<bool>(),
        ) {
            prop_assume!(!active.is_empty() || !standby.is_empty());
            let what = if by_dcs { "datacenter" } else { "node" };
            let mut doc = serde_json::Map::new();
            for (side, names) in [("active", &active), ("standby", &standby)] {
                let value = match names.as_slice() {
                    [one] if singular => Value::String(one.clone()),
                    _ => serde_json::json!(names),
                };
                let key = if singular { format!("{side}_{what}") } else { format!("{side}_{what}s") };
                doc.insert(key, value);
            }
            let body = Value::Object(doc).to_string();
            let r = parse_roles(K, Some(body.as_bytes())).unwrap().unwrap();
            prop_assert_eq!(r.grouping, if by_dcs { Grouping::Datacenters } else { Grouping::Nodes });
            prop_assert_eq!(&r.active, &active);
            prop_assert_eq!(&r.standby, &standby);
            for (names, role) in [(&active, Role::Primary), (&standby, Role::Secondary)] {
                for n in names {
                    let got = role_of(Some(&r), n, n, K);
                    if active.contains(n) && standby.contains(n) {
                        prop_assert!(matches!(got, Err(RoleError::Both { .. })), "{:?}", got);
                    } else {
                        prop_assert_eq!(got, Ok(role));
                    }
                }
            }
        }
    }
}
