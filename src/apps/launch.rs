//! Pure. How an app is started: a process group (`command` through `/bin/sh -c`), or a container
//! when its `content` names an `image` (the jobs' `Docker` object in `docker`, read by the
//! process layer's one parser). Tasks whose container cannot be described are invalid, like any
//! bad task: reported by the leader and never placed or started.

use std::collections::BTreeMap;

use crate::process::container::{ContainerSpec, LABEL_PREFIX as USER_LABEL_PREFIX};
use crate::process::docker::{
    LABEL_APP, LABEL_APP_HASH, LABEL_ATTEMPT, LABEL_NODE, LABEL_PREFIX, LABEL_SESSION,
};
use crate::process::{LaunchSpec, LogPaths, Output};
use crate::util::hash::stable_hash;
use crate::wire::{parse_tasks, App, KvEntry, Namespace, Task, TaskError};

/// Who starts an app's containers: labels every container carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub node: String,
    /// The agent's `kv_prefix`.
    pub prefix: String,
}

/// What the supervisor starts for an app, and its health command.
#[derive(Debug, Clone)]
pub struct AppLaunch {
    pub spec: LaunchSpec,
    /// The health command, run beside the app (`Driver::exec`).
    pub health: Option<LaunchSpec>,
}

/// An app's container, when it has an `image`; the refusal names the field.
pub fn container_of(app: &App) -> Result<Option<ContainerSpec>, TaskError> {
    let Some(image) = app.image.as_deref() else {
        return Ok(None);
    };
    let c = ContainerSpec::parse(image, app.docker.as_ref())
        .map_err(|e| TaskError::Invalid(format!("content.{e}")))?;
    if let Some(k) = c.labels.keys().find(|k| k.starts_with(USER_LABEL_PREFIX)) {
        return Err(TaskError::Invalid(format!(
            "content.docker.Labels: {k:?}: labels under {USER_LABEL_PREFIX:?} are the agent's"
        )));
    }
    Ok(Some(c))
}

/// `wire::parse_tasks`, with each container app's `image` and `docker` checked: a task whose
/// container cannot be described is invalid, with the reason.
pub fn read_tasks<'a>(
    ns: &Namespace,
    entries: impl IntoIterator<Item = KvEntry<'a>>,
) -> (BTreeMap<String, Task>, BTreeMap<String, TaskError>) {
    let (tasks, mut invalid) = parse_tasks(ns, entries);
    let mut ok = BTreeMap::new();
    for (name, t) in tasks {
        match container_of(&t.app) {
            Ok(_) => {
                ok.insert(name, t);
            }
            Err(e) => {
                invalid.insert(name, e);
            }
        }
    }
    (ok, invalid)
}

/// A hash of the app's definition, carried by its containers: a restarted agent adopts one
/// only when the task is unchanged.
pub fn content_hash(task: &Task) -> String {
    format!("{:016x}", stable_hash(&[&task.content.to_string()]))
}

/// The launch of `task`: its command, environment, directory and user, its output appended to
/// `logs`, its health command's output in `health_logs`; for a container app, its container
/// with the owner's labels (the session and attempt are set per start, `for_start`).
pub fn app_launch(
    task: &Task,
    owner: &Owner,
    logs: &LogPaths,
    health_logs: &LogPaths,
) -> Result<AppLaunch, TaskError> {
    let app = &task.app;
    let container = container_of(app)?;
    let argv = |cmd: &str| vec!["/bin/sh".to_string(), "-c".to_string(), cmd.to_string()];
    // `shell` carries the environment (a long command travels in it).
    let spec = match &container {
        // The image's own command when there is none.
        Some(_) if app.command.trim().is_empty() => {
            LaunchSpec::new(Vec::new()).env(app.env.clone())
        }
        Some(_) => LaunchSpec::new(argv(&app.command)).env(app.env.clone()),
        None => LaunchSpec::shell(&app.command, &app.env),
    };
    let mut spec = spec
        .dir(app.working_dir.clone())
        .user(app.user.clone())
        .output(Output::Files {
            logs: logs.clone(),
            append: true,
        });
    let health = app.health_check_cmd.as_deref().map(|cmd| {
        let h = match &container {
            Some(_) => LaunchSpec::new(argv(cmd)).env(app.env.clone()),
            None => LaunchSpec::shell(cmd, &app.env),
        };
        h.dir(app.working_dir.clone())
            .user(app.user.clone())
            .output(Output::Files {
                logs: health_logs.clone(),
                append: false,
            })
    });
    if let Some(mut c) = container {
        c.labels.extend([
            (LABEL_NODE.to_string(), owner.node.clone()),
            (LABEL_PREFIX.to_string(), owner.prefix.clone()),
            (LABEL_APP.to_string(), task.name.clone()),
            (LABEL_APP_HASH.to_string(), content_hash(task)),
        ]);
        spec = spec.container(c);
    }
    Ok(AppLaunch { spec, health })
}

/// `spec` for one start: a container gets the session and the attempt (this node's count of
/// starts of the app, from 1) as labels.
pub fn for_start(spec: &LaunchSpec, session: &str, attempt: u64) -> LaunchSpec {
    let mut spec = spec.clone();
    if let Some(c) = spec.container.as_mut() {
        c.labels
            .insert(LABEL_SESSION.to_string(), session.to_string());
        c.labels
            .insert(LABEL_ATTEMPT.to_string(), attempt.to_string());
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::parse_task;
    use serde_json::json;

    fn task(content: serde_json::Value) -> Task {
        parse_task("web", json!({ "content": content }).to_string().as_bytes()).unwrap()
    }

    fn owner() -> Owner {
        Owner {
            node: "n1".into(),
            prefix: "".into(),
        }
    }

    fn logs() -> LogPaths {
        LogPaths::for_key(std::path::Path::new("/tmp/x"), "web")
    }

    #[test]
    fn a_process_app_runs_its_command_with_the_shell() {
        let t = task(json!({"command": "sleep 5", "health_check_cmd": "true"}));
        let l = app_launch(&t, &owner(), &logs(), &logs()).unwrap();
        assert!(l.spec.container.is_none());
        assert!(
            l.spec.argv.iter().any(|a| a.contains("sleep 5")),
            "{:?}",
            l.spec.argv
        );
        assert!(l.health.unwrap().container.is_none());
    }

    #[test]
    fn a_container_app_gets_its_image_docker_object_and_labels() {
        let t = task(json!({"image": "img:1", "command": "httpd -f",
                            "docker": {"ports": ["80"], "memory": "64m"},
                            "env": {"A": "1"}, "health_check_cmd": "wget -q -O- localhost"}));
        let l = app_launch(&t, &owner(), &logs(), &logs()).unwrap();
        let spec = for_start(&l.spec, "sess", 3);
        assert_eq!(spec.argv, ["/bin/sh", "-c", "httpd -f"]);
        assert_eq!(spec.env["A"], "1");
        let c = spec.container.unwrap();
        assert_eq!(c.image, "img:1");
        assert_eq!(c.ports[0].container_port, 80);
        assert_eq!(c.memory, Some(64 << 20));
        for (k, v) in [
            (LABEL_NODE, "n1"),
            (LABEL_APP, "web"),
            (LABEL_SESSION, "sess"),
            (LABEL_ATTEMPT, "3"),
            (LABEL_PREFIX, ""),
        ] {
            assert_eq!(c.labels[k], v, "{k}");
        }
        assert_eq!(c.labels[LABEL_APP_HASH], content_hash(&t));
        // The health command runs in the container (docker exec), with the image's shell.
        let h = l.health.unwrap();
        assert_eq!(h.argv, ["/bin/sh", "-c", "wget -q -O- localhost"]);
    }

    #[test]
    fn a_container_app_without_a_command_runs_the_images_own() {
        let t = task(json!({"image": "img"}));
        let l = app_launch(&t, &owner(), &logs(), &logs()).unwrap();
        assert!(l.spec.argv.is_empty());
    }

    #[test]
    fn a_changed_definition_changes_the_hash() {
        let a = task(json!({"image": "img:1"}));
        let b = task(json!({"image": "img:2"}));
        assert_ne!(content_hash(&a), content_hash(&b));
        assert_eq!(content_hash(&a), content_hash(&a.clone()));
    }

    #[test]
    fn bad_container_apps_are_invalid_tasks_that_say_why() {
        let ns = Namespace::new("");
        let body = |c: serde_json::Value| json!({ "content": c }).to_string().into_bytes();
        let entries = [
            ("appmgr/task/good", body(json!({"image": "img"}))),
            (
                "appmgr/task/unknown",
                body(json!({"image": "img", "docker": {"Portz": ["80"]}})),
            ),
            (
                "appmgr/task/port",
                body(json!({"image": "img", "docker": {"ports": ["80:x"]}})),
            ),
            ("appmgr/task/space", body(json!({"image": "bad image"}))),
            (
                "appmgr/task/label",
                body(json!({"image": "img", "docker": {"labels": {"servant.app": "x"}}})),
            ),
            ("appmgr/task/noimage", body(json!({"docker": {}}))),
            ("appmgr/task/nothing", body(json!({"env": {}}))),
        ];
        let (ok, bad) = read_tasks(&ns, entries.iter().map(|(k, v)| (*k, v.as_slice())));
        assert_eq!(ok.keys().collect::<Vec<_>>(), ["good"]);
        for (name, want) in [
            ("unknown", "Portz"),
            ("port", "80:x"),
            ("space", "bad image"),
            ("label", "servant.app"),
            ("noimage", "needs content.image"),
            ("nothing", "command is empty"),
        ] {
            let e = bad[name].to_string();
            assert!(e.contains(want), "{name}: {e:?} should mention {want:?}");
        }
    }
}
