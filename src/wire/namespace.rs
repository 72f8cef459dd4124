//! The one KV namespace: every path the product reads or writes, under the optional
//! `kv_prefix`. Pure: maps keys to meaning and back. The defaults are the older tools' paths
//! (consul_servant's jobs and results, App Manager's `appmgr/`, python-powerconsul's `cluster/`
//! and `triggers/`), so their curl examples work unchanged.

/// Every KV path under an optional `kv_prefix`. Nothing builds a KV path by hand: a path that
/// bypassed this type would ignore the prefix, and two namespaces would share it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Namespace {
    /// "" or "ns/" (always ends in `/` when set).
    prefix: String,
}

/// Where a job was queued.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JobKey {
    /// `jobs/<id>`: any node may run it.
    Any { id: String },
    /// `queues/<node>/<id>`: only `<node>` may run it.
    Node { node: String, id: String },
}

impl JobKey {
    pub fn id(&self) -> &str {
        match self {
            JobKey::Any { id } | JobKey::Node { id, .. } => id,
        }
    }
    /// The key relative to the prefix, e.g. `jobs/job1`.
    pub fn relative(&self) -> String {
        match self {
            JobKey::Any { id } => format!("jobs/{id}"),
            JobKey::Node { node, id } => format!("queues/{node}/{id}"),
        }
    }
}

impl Namespace {
    pub fn new(prefix: &str) -> Self {
        let p = prefix.trim_matches('/');
        Namespace {
            prefix: if p.is_empty() {
                String::new()
            } else {
                format!("{p}/")
            },
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The watched prefix of jobs any node may run. Ends in `/`.
    pub fn jobs_prefix(&self) -> String {
        format!("{}jobs/", self.prefix)
    }

    /// The watched prefix of one node's queue. Ends in `/`, so `node1` never matches `node10`.
    pub fn queue_prefix(&self, node: &str) -> String {
        format!("{}queues/{node}/", self.prefix)
    }

    pub fn results_prefix(&self) -> String {
        format!("{}jdone_jid/", self.prefix)
    }

    /// The absolute KV key of a job.
    pub fn job_key(&self, k: &JobKey) -> String {
        format!("{}{}", self.prefix, k.relative())
    }

    /// Where a job's result goes: `jdone_jid/jobs/<id>` or `jdone_jid/queues/<node>/<id>`.
    pub fn result_key(&self, k: &JobKey) -> String {
        format!("{}jdone_jid/{}", self.prefix, k.relative())
    }

    /// Parses an absolute job key. Everything after the queue prefix is the ID, so a nested or
    /// odd ID is still recognised, and then rejected by validation rather than ignored.
    pub fn parse_job_key(&self, key: &str) -> Option<JobKey> {
        let rel = key.strip_prefix(&self.prefix)?;
        if let Some(id) = rel.strip_prefix("jobs/") {
            return (!id.is_empty()).then(|| JobKey::Any { id: id.to_string() });
        }
        let rest = rel.strip_prefix("queues/")?;
        let (node, id) = rest.split_once('/')?;
        (!node.is_empty() && !id.is_empty()).then(|| JobKey::Node {
            node: node.to_string(),
            id: id.to_string(),
        })
    }

    /// Parses an absolute result key back to the job key it belongs to.
    pub fn parse_result_key(&self, key: &str) -> Option<JobKey> {
        let rel = key.strip_prefix(&self.results_prefix())?;
        self.parse_job_key(&format!("{}{rel}", self.prefix))
    }

    /// Name of the servants' jobs sessions; the live servants are the nodes holding one. Two
    /// namespaces on one node have sessions of their own.
    pub fn jobs_session(&self) -> String {
        self.session_name("servant")
    }

    /// Name of the apps sessions (behaviour delete: a node's reports vanish with it).
    pub fn apps_session(&self) -> String {
        self.session_name("servant-apps")
    }

    /// The ID of the agent's `servant` service on `node`: `servant-<node>`, and for a prefix
    /// `servant-<node>:<prefix>` (its `/` as `:`, for the deregistration URL), so two namespaces
    /// served on one node do not replace each other's registration.
    pub fn servant_service_id(&self, node: &str) -> String {
        let p = self.prefix.trim_end_matches('/');
        if p.is_empty() {
            format!("servant-{node}")
        } else {
            format!("servant-{node}:{}", p.replace('/', ":"))
        }
    }

    fn session_name(&self, base: &str) -> String {
        if self.prefix.is_empty() {
            base.to_string()
        } else {
            format!("{base}:{}", self.prefix)
        }
    }

    // App Manager's keys.

    pub fn leader(&self) -> String {
        format!("{}appmgr/leader", self.prefix)
    }
    /// The leader's report: unplaced replicas and invalid tasks.
    pub fn schedule(&self) -> String {
        format!("{}appmgr/schedule", self.prefix)
    }
    pub fn tasks(&self) -> String {
        format!("{}appmgr/task/", self.prefix)
    }
    pub fn task(&self, name: &str) -> String {
        format!("{}appmgr/task/{name}", self.prefix)
    }
    pub fn topology_prefix(&self) -> String {
        format!("{}appmgr/topology/", self.prefix)
    }
    pub fn topology(&self, host: &str) -> String {
        format!("{}appmgr/topology/{host}", self.prefix)
    }
    pub fn status_prefix(&self) -> String {
        format!("{}appmgr/status/", self.prefix)
    }
    pub fn resource(&self, host: &str) -> String {
        format!("{}appmgr/status/{host}/resource", self.prefix)
    }
    pub fn applications(&self, host: &str) -> String {
        format!("{}appmgr/status/{host}/applications", self.prefix)
    }
    /// The prefix of the nodes' capacity records, which the apps leader watches instead of the
    /// reports. Ends in `/`.
    pub fn capacity_prefix(&self) -> String {
        format!("{}appmgr/capacity/", self.prefix)
    }
    /// A node's capacity record: what the scheduler needs of it (processors, memory, labels),
    /// held by its apps session like its reports, and rewritten only when it changes.
    pub fn capacity(&self, host: &str) -> String {
        format!("{}appmgr/capacity/{host}", self.prefix)
    }
    /// The last segment after `prefix`, if `key` is directly under it.
    pub fn name_under<'a>(&self, prefix: &str, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(prefix)
            .filter(|n| !n.is_empty() && !n.contains('/'))
    }

    // python-powerconsul's keys.

    /// Active/standby role data of a service: `cluster/<env>/<svc>`.
    pub fn cluster(&self, env: &str, service: &str) -> String {
        format!("{}cluster/{env}/{service}", self.prefix)
    }

    /// The keys of a trigger action, most specific first: `triggers/<env>/<svc>/<role>/<state>`,
    /// then `triggers/<svc>/<role>/<state>`.
    pub fn triggers(&self, env: &str, service: &str, role: &str, state: &str) -> [String; 2] {
        [
            format!("{}triggers/{env}/{service}/{role}/{state}", self.prefix),
            format!("{}triggers/{service}/{role}/{state}", self.prefix),
        ]
    }

    /// The node's recent trigger runs.
    pub fn trigger_history(&self, node: &str) -> String {
        format!("{}trigger_history/{node}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_layout_matches_consul_servant() {
        let l = Namespace::new("");
        let k = JobKey::Any { id: "job1".into() };
        assert_eq!(l.job_key(&k), "jobs/job1");
        assert_eq!(l.result_key(&k), "jdone_jid/jobs/job1");
        let q = JobKey::Node {
            node: "node1".into(),
            id: "j".into(),
        };
        assert_eq!(l.job_key(&q), "queues/node1/j");
        assert_eq!(l.result_key(&q), "jdone_jid/queues/node1/j");
        assert_eq!(l.parse_job_key("queues/node1/j"), Some(q.clone()));
        assert_eq!(l.parse_result_key("jdone_jid/queues/node1/j"), Some(q));
    }

    #[test]
    fn each_namespace_has_its_own_servant_service_id() {
        assert_eq!(Namespace::new("").servant_service_id("n1"), "servant-n1");
        assert_eq!(
            Namespace::new("/team-a/").servant_service_id("n1"),
            "servant-n1:team-a"
        );
        assert_eq!(
            Namespace::new("org/team-b").servant_service_id("n1"),
            "servant-n1:org:team-b"
        );
    }

    #[test]
    fn queue_prefix_of_node1_does_not_cover_node10() {
        let l = Namespace::new("");
        assert!(!"queues/node10/j".starts_with(&l.queue_prefix("node1")));
    }

    #[test]
    fn prefix_namespaces_everything() {
        let l = Namespace::new("/team-a/");
        assert_eq!(l.jobs_prefix(), "team-a/jobs/");
        assert_eq!(
            l.parse_job_key("team-a/jobs/x"),
            Some(JobKey::Any { id: "x".into() })
        );
        assert_eq!(l.parse_job_key("jobs/x"), None);
    }

    #[test]
    fn the_prefix_covers_apps_checks_triggers_and_sessions() {
        let plain = Namespace::new("");
        assert_eq!(plain.resource("h"), "appmgr/status/h/resource");
        assert_eq!(plain.capacity("h"), "appmgr/capacity/h");
        assert_eq!(
            plain.name_under(&plain.capacity_prefix(), &plain.capacity("h")),
            Some("h")
        );
        assert_eq!(plain.cluster("prod", "web"), "cluster/prod/web");
        assert_eq!(
            plain.triggers("prod", "web", "secondary", "critical"),
            [
                "triggers/prod/web/secondary/critical".to_string(),
                "triggers/web/secondary/critical".to_string()
            ]
        );
        assert_eq!(plain.trigger_history("h"), "trigger_history/h");
        assert_eq!(plain.jobs_session(), "servant");
        let ns = Namespace::new("team-a");
        for k in [
            ns.leader(),
            ns.schedule(),
            ns.task("t"),
            ns.topology("h"),
            ns.applications("h"),
            ns.capacity("h"),
            ns.capacity_prefix(),
            ns.cluster("prod", "web"),
            ns.triggers("prod", "web", "secondary", "critical")[0].clone(),
            ns.triggers("prod", "web", "secondary", "critical")[1].clone(),
            ns.trigger_history("h"),
        ] {
            assert!(k.starts_with("team-a/"), "{k}");
        }
        assert_eq!(ns.jobs_session(), "servant:team-a/");
        assert_eq!(ns.apps_session(), "servant-apps:team-a/");
    }

    #[test]
    fn nested_ids_are_kept_whole_for_rejection() {
        let l = Namespace::new("");
        assert_eq!(
            l.parse_job_key("jobs/a/../b"),
            Some(JobKey::Any {
                id: "a/../b".into()
            })
        );
        assert_eq!(l.parse_job_key("jobs/"), None);
    }
}
