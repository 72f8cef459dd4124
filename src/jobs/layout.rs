//! The KV layout of jobs and results. Pure: maps keys to meaning and back.

/// Paths under an optional `kv_prefix`, kept compatible with consul_servant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
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

impl Layout {
    pub fn new(prefix: &str) -> Self {
        let p = prefix.trim_matches('/');
        Layout {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_layout_matches_consul_servant() {
        let l = Layout::new("");
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
    fn queue_prefix_of_node1_does_not_cover_node10() {
        let l = Layout::new("");
        assert!(!"queues/node10/j".starts_with(&l.queue_prefix("node1")));
    }

    #[test]
    fn prefix_namespaces_everything() {
        let l = Layout::new("/team-a/");
        assert_eq!(l.jobs_prefix(), "team-a/jobs/");
        assert_eq!(
            l.parse_job_key("team-a/jobs/x"),
            Some(JobKey::Any { id: "x".into() })
        );
        assert_eq!(l.parse_job_key("jobs/x"), None);
    }

    #[test]
    fn nested_ids_are_kept_whole_for_rejection() {
        let l = Layout::new("");
        assert_eq!(
            l.parse_job_key("jobs/a/../b"),
            Some(JobKey::Any {
                id: "a/../b".into()
            })
        );
        assert_eq!(l.parse_job_key("jobs/"), None);
    }
}
