//! The task document: `appmgr/task/<name>` values, App Manager's shape plus scheduling fields.
//!
//! ```json
//! {"content": {"name": "myapp", "command": "sleep 30"}, "replication": 2,
//!  "labels": {"zone": "a"}, "cpu": 0.5, "memory_mb": 256}
//! ```
//!
//! `content` is App Manager's app JSON; the fields the supervisor uses are typed, the rest are
//! ignored (App Manager apps carry many more). Pure: no IO.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::{read_listing, KvEntry, Namespace, ServiceSpec};

/// Why a task value cannot be used. Reported by the leader; the other tasks go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("{0}")]
    Invalid(String),
}

/// One app as the node runs it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct App {
    /// The task's name (the key's last segment); `content.name` must agree when given.
    #[serde(default)]
    pub name: String,
    /// Run by `/bin/sh -c` in its own process group; for a container app (with `image`), by
    /// the image's `/bin/sh -c`, and when empty the image's own command runs.
    #[serde(default)]
    pub command: String,
    /// A container app: the image to run (the jobs' `Image`).
    #[serde(default, alias = "Image")]
    pub image: Option<String>,
    /// A container app's `Docker` object (the jobs' fields: ports, volumes, network, memory,
    /// cpus, labels, entrypoint, pull). Checked by the process layer's parser, not here: this
    /// module is pure and below it.
    #[serde(default, alias = "Docker")]
    pub docker: Option<Value>,
    /// Working directory; the agent's when absent.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// User to run as (needs the agent to be root to switch).
    #[serde(default)]
    pub user: Option<String>,
    /// Extra environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// 0: a long-running app, restarted with backoff when it exits. N > 0: a periodic app,
    /// started every N seconds (App Manager's field), unless still running.
    #[serde(default)]
    pub start_interval_seconds: u64,
    /// Exit 0 means healthy; run every `health_check_interval_seconds`.
    #[serde(default)]
    pub health_check_cmd: Option<String>,
    /// Seconds between health commands (default 10).
    #[serde(default = "default_health_interval")]
    pub health_check_interval_seconds: u64,
    /// After this many failed health commands in a row the app is restarted (with the
    /// restart backoff); 0, the default, never restarts it for its health.
    #[serde(default)]
    pub health_restart_after: u32,
    /// Services registered on the local Consul agent while the app runs (the jobs' shape).
    #[serde(default, alias = "Services")]
    pub services: Vec<ServiceSpec>,
}

fn default_health_interval() -> u64 {
    10
}

/// A task: the app and how many copies, where.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// Key name under `appmgr/task/`.
    pub name: String,
    /// The app every replica runs.
    pub app: App,
    /// Copies on distinct hosts.
    pub replication: u32,
    /// Labels a host must carry (all of them, equal values).
    pub labels: BTreeMap<String, String>,
    /// Cores requested per replica (0: none).
    pub cpu: f64,
    /// Memory requested per replica (0: none).
    pub memory_mb: u64,
    /// The app JSON as written, compared to notice a change that needs a restart.
    pub content: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    content: Value,
    #[serde(default = "one")]
    replication: u32,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    cpu: f64,
    #[serde(default)]
    memory_mb: u64,
}

fn one() -> u32 {
    1
}

/// Parses a task value stored at `appmgr/task/<name>`.
pub fn parse_task(name: &str, body: &[u8]) -> Result<Task, TaskError> {
    if name.is_empty() || name.contains('/') {
        return Err(TaskError::Invalid(format!(
            "task name {name:?} must be one non-empty path segment"
        )));
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| TaskError::Json(e.to_string()))?;
    let raw: Raw = serde_path_to_error::deserialize(&v)
        .map_err(|e| TaskError::Invalid(format!("{}: {}", e.path(), e.inner())))?;
    if !raw.content.is_object() {
        return Err(TaskError::Invalid("content must be an object".into()));
    }
    let mut app: App = serde_path_to_error::deserialize(&raw.content)
        .map_err(|e| TaskError::Invalid(format!("content.{}: {}", e.path(), e.inner())))?;
    if app.name.is_empty() {
        app.name = name.to_string();
    } else if app.name != name {
        return Err(TaskError::Invalid(format!(
            "content.name {:?} differs from the key's name {name:?}",
            app.name
        )));
    }
    if app.docker.as_ref().is_some_and(|d| !d.is_null()) && app.image.is_none() {
        return Err(TaskError::Invalid(
            "content.docker needs content.image".into(),
        ));
    }
    if app.command.trim().is_empty() && app.image.is_none() {
        return Err(TaskError::Invalid("content.command is empty".into()));
    }
    if !(raw.cpu.is_finite() && raw.cpu >= 0.0) {
        return Err(TaskError::Invalid(format!(
            "cpu must be a number of cores >= 0, not {}",
            raw.cpu
        )));
    }
    if app.start_interval_seconds > 366 * 86_400 {
        return Err(TaskError::Invalid(
            "content.start_interval_seconds must be at most a year".into(),
        ));
    }
    if app.health_check_interval_seconds > 86_400 {
        return Err(TaskError::Invalid(
            "content.health_check_interval_seconds must be at most a day".into(),
        ));
    }
    if app.health_check_interval_seconds == 0 {
        return Err(TaskError::Invalid(
            "content.health_check_interval_seconds must be at least 1".into(),
        ));
    }
    Ok(Task {
        name: name.to_string(),
        app,
        replication: raw.replication,
        labels: raw.labels,
        cpu: raw.cpu,
        memory_mb: raw.memory_mb,
        content: raw.content,
    })
}

/// Parses every task directly under the tasks prefix: the valid ones, and why the others are
/// not. Other keys are ignored.
pub fn parse_tasks<'a>(
    ns: &Namespace,
    entries: impl IntoIterator<Item = KvEntry<'a>>,
) -> (BTreeMap<String, Task>, BTreeMap<String, TaskError>) {
    let prefix = ns.tasks();
    read_listing(entries, |key| ns.name_under(&prefix, key), parse_task)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn app_managers_documented_task_parses() {
        let t = parse_task(
            "myapp",
            br#"{"content": {"command": "sleep 30", "name": "myapp"}, "replication": 1}"#,
        )
        .unwrap();
        assert_eq!(t.app.command, "sleep 30");
        assert_eq!(t.replication, 1);
        assert_eq!(t.app.start_interval_seconds, 0);
        assert_eq!(t.app.health_check_interval_seconds, 10);
    }

    #[test]
    fn app_manager_fields_we_do_not_use_are_ignored() {
        let t = parse_task(
            "ipmail",
            br#"{"replication": 2, "content": {"name": "ipmail", "command": "sh /opt/launch.sh",
                 "cache_lines": 20, "status": 1, "user": "root", "working_dir": "/opt",
                 "start_interval_seconds": 300, "env": {"A": "1"}}}"#,
        )
        .unwrap();
        assert_eq!(t.app.user.as_deref(), Some("root"));
        assert_eq!(t.app.start_interval_seconds, 300);
        assert_eq!(t.app.env["A"], "1");
    }

    #[test]
    fn scheduling_fields_are_read() {
        let t = parse_task(
            "w",
            br#"{"content": {"command": "x"}, "replication": 3, "labels": {"zone": "a"},
                 "cpu": 0.5, "memory_mb": 256}"#,
        )
        .unwrap();
        assert_eq!(
            t.app.name, "w",
            "the key names the app when content does not"
        );
        assert_eq!((t.replication, t.cpu, t.memory_mb), (3, 0.5, 256));
        assert_eq!(t.labels["zone"], "a");
    }

    #[test]
    fn tasks_are_read_from_their_keys_only() {
        let ns = Namespace::new("team");
        let (ok, bad) = parse_tasks(
            &ns,
            [
                (
                    "team/appmgr/task/a",
                    &br#"{"content": {"command": "x"}}"#[..],
                ),
                ("team/appmgr/task/b", b"{"),
                ("team/appmgr/task/c/nested", b"{}"),
                ("appmgr/task/other-namespace", b"{}"),
            ],
        );
        assert_eq!(ok.keys().collect::<Vec<_>>(), ["a"]);
        assert!(matches!(bad["b"], TaskError::Json(_)), "{bad:?}");
        assert_eq!(bad.len(), 1);
    }

    #[test]
    fn bad_tasks_say_why() {
        for (body, want) in [
            (&b"{not json"[..], "not JSON"),
            (br#"{"replication": 1}"#, "content"),
            (
                br#"{"content": {"command": "x"}, "replication": "two"}"#,
                "replication",
            ),
            (
                br#"{"content": {"command": "x"}, "replicas": 2}"#,
                "replicas",
            ),
            (
                br#"{"content": {"name": "other", "command": "x"}}"#,
                "differs",
            ),
            (br#"{"content": {"command": "  "}}"#, "command is empty"),
            (br#"{"content": {"command": "x"}, "cpu": -1}"#, "cpu"),
            (br#"{"content": []}"#, "object"),
            (br#"{"content": {"command": "x", "env": {"A": 1}}}"#, "env"),
        ] {
            let e = parse_task("t", body).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should mention {want:?}");
        }
    }

    proptest! {
        #[test]
        fn parse_task_never_panics(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_task("t", &body);
        }

        #[test]
        fn parse_task_never_panics_on_json_shapes(
            replication in proptest::option::of(0u32..10),
            cmd in "[ -~]{0,20}",
            cpu in proptest::option::of(-2.0f64..8.0),
            interval in proptest::option::of(0u64..1000),
        ) {
            let mut v = serde_json::json!({"content": {"command": cmd}});
            if let Some(r) = replication { v["replication"] = r.into(); }
            if let Some(c) = cpu { v["cpu"] = c.into(); }
            if let Some(i) = interval { v["content"]["start_interval_seconds"] = i.into(); }
            let _ = parse_task("t", v.to_string().as_bytes());
        }

        /// The fields a task is written with are the ones read back.
        #[test]
        fn written_tasks_read_back(
            name in "[a-z0-9_-]{1,12}",
            cmd in "[!-~][ -~]{0,20}",
            replication in 0u32..10,
            labels in proptest::collection::btree_map("\\PC{1,6}", "\\PC{0,6}", 0..3),
            env in proptest::collection::btree_map("[A-Z_]{1,6}", "\\PC{0,6}", 0..3),
            cpu in 0.0f64..64.0,
            memory_mb in 0u64..1_000_000,
            start_interval in 0u64..86_400,
            health_interval in 1u64..86_400,
        ) {
            let v = serde_json::json!({
                "content": {"name": name, "command": cmd, "env": env,
                            "start_interval_seconds": start_interval,
                            "health_check_interval_seconds": health_interval},
                "replication": replication, "labels": labels, "cpu": cpu, "memory_mb": memory_mb,
            });
            let t = parse_task(&name, v.to_string().as_bytes()).unwrap();
            prop_assert_eq!(&t.name, &name);
            prop_assert_eq!(&t.app.command, &cmd);
            prop_assert_eq!(&t.app.env, &env);
            prop_assert_eq!(t.app.start_interval_seconds, start_interval);
            prop_assert_eq!(t.app.health_check_interval_seconds, health_interval);
            prop_assert_eq!(
                (t.replication, &t.labels, t.memory_mb),
                (replication, &labels, memory_mb)
            );
            // serde_json's default float parser may land one unit in the last place away.
            prop_assert!((t.cpu - cpu).abs() <= cpu * 1e-15, "{} != {}", t.cpu, cpu);
            prop_assert_eq!(&t.content["command"], &v["content"]["command"]);
        }
    }
}
