//! Pure. What to write to make the agent's services equal to the wanted ones: only the
//! differences, so an unchanged service costs no write (registrator's `-resync` re-registered
//! everything and woke every watcher, #449).

use std::collections::BTreeSet;

use super::mapping::{OWNER_META, SPEC_META};
use crate::consul::{AgentService, AgentServiceRegistration};

/// The writes a sync needs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub register: Vec<AgentServiceRegistration>,
    /// Service IDs.
    pub deregister: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.register.is_empty() && self.deregister.is_empty()
    }
}

/// Compares `wanted` with the agent's `current` services. Only services whose owner Meta names
/// `node` are ours to remove; with `scope` (a container's ID prefix), only those under it, so a
/// sync of one container leaves the others alone. A wanted service is written when the agent
/// lacks it, holds it under another owner, or holds another spec of it. Services under a
/// `keep` prefix (a failed container with `-deregister on-success`) are left as they are.
pub fn plan(
    wanted: &[AgentServiceRegistration],
    current: &[AgentService],
    node: &str,
    scope: Option<&str>,
    keep: &[String],
) -> Plan {
    let in_scope = |id: &str| {
        scope.is_none_or(|p| id.starts_with(p)) && !keep.iter().any(|k| id.starts_with(k))
    };
    let mut seen = BTreeSet::new();
    let mut register = Vec::new();
    for w in wanted {
        let Some(id) = w.id.as_deref() else { continue };
        if !in_scope(id) || !seen.insert(id.to_string()) {
            continue;
        }
        let same = current.iter().any(|c| {
            c.id == id
                && c.meta.get(OWNER_META).map(String::as_str) == Some(node)
                && c.meta.contains_key(SPEC_META)
                && c.meta.get(SPEC_META) == w.meta.get(SPEC_META)
        });
        if !same {
            register.push(w.clone());
        }
    }
    let deregister = current
        .iter()
        .filter(|c| c.meta.get(OWNER_META).map(String::as_str) == Some(node))
        .filter(|c| in_scope(&c.id) && !seen.contains(&c.id))
        .map(|c| c.id.clone())
        .collect();
    Plan {
        register,
        deregister,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registrator::mapping::spec_hash;
    use std::collections::BTreeMap;

    fn reg(id: &str, port: u16) -> AgentServiceRegistration {
        let mut r = AgentServiceRegistration {
            id: Some(id.into()),
            name: "web".into(),
            port: Some(port),
            meta: [(OWNER_META.to_string(), "n1".to_string())].into(),
            ..Default::default()
        };
        let h = spec_hash(&r);
        r.meta.insert(SPEC_META.into(), h);
        r
    }

    fn held(r: &AgentServiceRegistration) -> AgentService {
        AgentService {
            id: r.id.clone().unwrap(),
            service: r.name.clone(),
            meta: r.meta.clone(),
            ..Default::default()
        }
    }

    fn foreign(id: &str, owner: Option<&str>) -> AgentService {
        AgentService {
            id: id.into(),
            service: "x".into(),
            meta: owner
                .map(|o| BTreeMap::from([(OWNER_META.to_string(), o.to_string())]))
                .unwrap_or_default(),
            ..Default::default()
        }
    }

    #[test]
    fn unchanged_services_cost_nothing() {
        let w = vec![reg("n1:a:80", 1), reg("n1:b:80", 2)];
        let cur: Vec<_> = w.iter().map(held).collect();
        assert!(plan(&w, &cur, "n1", None, &[]).is_empty());
    }

    #[test]
    fn changes_missing_and_stale_services() {
        let w = vec![reg("n1:a:80", 1), reg("n1:b:80", 2)];
        let mut cur = vec![held(&reg("n1:a:80", 9)), held(&reg("n1:gone:80", 3))];
        cur.push(foreign("servant-n1", None));
        cur.push(foreign("n2:c:80", Some("n2")));
        let p = plan(&w, &cur, "n1", None, &[]);
        let ids: Vec<_> = p.register.iter().map(|r| r.id.clone().unwrap()).collect();
        assert_eq!(ids, vec!["n1:a:80", "n1:b:80"]);
        assert_eq!(p.deregister, vec!["n1:gone:80"], "never another owner's");
        // One container's sync touches that container only.
        let p = plan(&w, &cur, "n1", Some("n1:gone:"), &[]);
        assert_eq!((p.register.len(), p.deregister.len()), (0, 1));
        let p = plan(&w, &cur, "n1", Some("n1:a:"), &[]);
        assert_eq!((p.register.len(), p.deregister.len()), (1, 0));
    }

    #[test]
    fn kept_services_are_left_alone() {
        let cur = vec![held(&reg("n1:failed:80", 1)), held(&reg("n1:gone:80", 2))];
        let p = plan(&[], &cur, "n1", None, &["n1:failed:".to_string()]);
        assert_eq!(p.deregister, vec!["n1:gone:80"]);
        assert!(p.register.is_empty());
    }

    #[test]
    fn a_service_of_ours_registered_by_someone_else_is_taken_over() {
        let w = vec![reg("n1:a:80", 1)];
        let mut other = held(&w[0]);
        other.meta.remove(OWNER_META);
        assert_eq!(plan(&w, &[other], "n1", None, &[]).register.len(), 1);
    }

    proptest::proptest! {
        /// Applying a plan (register then deregister) to the agent's services leaves exactly
        /// the wanted ones among ours, others untouched, and the next plan is empty.
        #[test]
        fn a_plan_applied_converges(
            wanted in proptest::collection::btree_map(0u8..12, 1u16..4, 0..8),
            ours in proptest::collection::btree_map(0u8..12, 1u16..4, 0..8),
            theirs in proptest::collection::btree_set(0u8..12, 0..4),
        ) {
            let w: Vec<_> = wanted.iter().map(|(i, p)| reg(&format!("n1:c{i}:80"), *p)).collect();
            let mut cur: Vec<AgentService> = ours.iter().map(|(i, p)| held(&reg(&format!("n1:c{i}:80"), *p))).collect();
            cur.extend(theirs.iter().map(|i| foreign(&format!("n2:c{i}:80"), Some("n2"))));
            let p = plan(&w, &cur, "n1", None, &[]);
            for r in &p.register {
                cur.retain(|c| Some(&c.id) != r.id.as_ref());
                cur.push(held(r));
            }
            cur.retain(|c| !p.deregister.contains(&c.id));
            proptest::prop_assert!(plan(&w, &cur, "n1", None, &[]).is_empty());
            let mine: BTreeSet<_> = cur.iter().filter(|c| c.id.starts_with("n1:")).map(|c| c.id.clone()).collect();
            let want: BTreeSet<_> = w.iter().map(|r| r.id.clone().unwrap()).collect();
            proptest::prop_assert_eq!(mine, want);
            proptest::prop_assert_eq!(cur.iter().filter(|c| c.id.starts_with("n2:")).count(), theirs.len());
            // Only what differed was written.
            let unchanged = wanted.iter().filter(|(i, p)| ours.get(i) == Some(p)).count();
            proptest::prop_assert_eq!(p.register.len(), wanted.len() - unchanged);
        }
    }
}
