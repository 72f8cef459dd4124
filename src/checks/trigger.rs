//! Trigger actions: `triggers/<env>/<svc>/<role>/<state>` (falling back to
//! `triggers/<svc>/<role>/<state>`), run when a check changes state. A value starting with `#!`
//! runs as a script with its own interpreter; anything else with `sh -c`. `@ENV`, `@HOST` and
//! `@ROLE` are substituted; the action also gets `SERVANT_*` variables, among them
//! `SERVANT_EXPECTED` (running or stopped), so one secondary action can both take over and give
//! back. Each run has a timeout (the process group gets SIGTERM, then SIGKILL), and is
//! recorded. Actions are the one kind of process whose background children outlive it: they
//! are launched `Detached`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::consul::{Client, KvPutOptions, QueryOptions};
use crate::process::{
    run_with_timeout, LaunchSpec, Lifetime, Limits, Outcome, Output, ProcessDriver,
};
use crate::util::time::now_ms;
use crate::wire::{HealthStatus, Namespace};

/// Runs kept in `trigger_history/<node>`, newest last.
pub const HISTORY_LEN: usize = 20;
/// Bytes of an action's output kept in the record.
const OUTPUT_CAP: usize = 4096;

/// `@ENV`, `@HOST` and `@ROLE` replaced.
pub fn substitute(action: &str, env: &str, host: &str, role: &str) -> String {
    action
        .replace("@ENV", env)
        .replace("@HOST", host)
        .replace("@ROLE", role)
}

/// The prefix of a trigger value that names one of the node's own actions (`[checks.actions]`).
pub const LOCAL_ACTION: &str = "action:";

/// Where a node takes its trigger actions from (`[checks]`), and who runs them (`[jobs]`).
#[derive(Debug, Clone)]
pub struct ActionPolicy {
    /// The commands written in `triggers/` keys run; when false, only `action:NAME` values do.
    pub allow_kv_actions: bool,
    /// `[checks.actions]`: this node's own actions, by name.
    pub local: BTreeMap<String, String>,
    /// `[jobs] default_user`: the user a command from KV runs as (None: the agent's).
    pub kv_user: Option<String>,
    /// The node's name, for the refusal's text.
    pub node: String,
}

impl Default for ActionPolicy {
    /// Today's behaviour: every command from KV runs, as the agent's user.
    fn default() -> Self {
        ActionPolicy {
            allow_kv_actions: true,
            local: BTreeMap::new(),
            kv_user: None,
            node: String::new(),
        }
    }
}

/// What a trigger key's value runs on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// The command (or script), as `user` (None: the agent's user).
    Run { text: String, user: Option<String> },
    /// Nothing runs: why, naming the rule.
    Refused(String),
}

impl ActionPolicy {
    /// Pure: what `value` (a trigger key's text) runs here.
    pub fn resolve(&self, value: &str) -> Resolved {
        if let Some(name) = value.trim().strip_prefix(LOCAL_ACTION) {
            let name = name.trim();
            return match self.local.get(name) {
                // Written by whoever configures this node: it runs as the agent.
                Some(command) => Resolved::Run {
                    text: command.clone(),
                    user: None,
                },
                None => Resolved::Refused(format!(
                    "refused: no action {name:?} in [checks.actions] on node {}",
                    self.node
                )),
            };
        }
        if !self.allow_kv_actions {
            return Resolved::Refused(format!(
                "refused: policy [checks] allow_kv_actions is false on node {}: only {LOCAL_ACTION}NAME values run (names from [checks.actions])",
                self.node
            ));
        }
        Resolved::Run {
            text: value.to_string(),
            user: self.kv_user.clone(),
        }
    }
}

/// What a trigger run is about.
#[derive(Debug, Clone, Default)]
pub struct TriggerCtx {
    pub env: String,
    /// This host's name (`@HOST`): the Consul node name.
    pub host: String,
    pub service: String,
    pub role: String,
    pub state: HealthStatus,
    /// The check's output (the check's JSON line for servant checks).
    pub check_output: String,
}

/// One recorded run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriggerRun {
    /// When it started, ms since the epoch.
    pub time_ms: u64,
    pub service: String,
    pub role: String,
    pub state: String,
    /// The key the action came from.
    pub key: String,
    /// Exit code; None when it was killed at its timeout or could not start.
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub duration_ms: u64,
    /// stdout and stderr, capped.
    pub output: String,
    /// Set when the node's policy refused the action (nothing ran): why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// Finds the action for `ctx`: (key, action), or None when neither key exists.
pub async fn find_action(
    client: &Client,
    layout: &Namespace,
    ctx: &TriggerCtx,
) -> Result<Option<(String, String)>, crate::consul::ConsulError> {
    for key in layout.triggers(&ctx.env, &ctx.service, &ctx.role, ctx.state.as_str()) {
        if let Some(v) = client.kv_get_raw(&key).await? {
            let text = String::from_utf8_lossy(&v).to_string();
            if !text.trim().is_empty() {
                return Ok(Some((key, text)));
            }
        }
    }
    Ok(None)
}

/// The record of a run of `key`'s action for `ctx` that has not started yet.
fn new_run(key: &str, ctx: &TriggerCtx) -> TriggerRun {
    TriggerRun {
        time_ms: now_ms(),
        service: ctx.service.clone(),
        role: ctx.role.clone(),
        state: ctx.state.to_string(),
        key: key.to_string(),
        exit_code: None,
        timed_out: false,
        duration_ms: 0,
        output: String::new(),
        refused: None,
    }
}

/// Runs one action to its end or its timeout, as the agent's user.
pub async fn run_action(
    key: &str,
    action: &str,
    ctx: &TriggerCtx,
    timeout: Duration,
    scratch: &Path,
) -> TriggerRun {
    run_action_as(key, action, None, ctx, timeout, scratch).await
}

/// Runs one action to its end or its timeout, as `user` (None: the agent's user).
pub async fn run_action_as(
    key: &str,
    action: &str,
    user: Option<&str>,
    ctx: &TriggerCtx,
    timeout: Duration,
    scratch: &Path,
) -> TriggerRun {
    let started = Instant::now();
    let mut run = new_run(key, ctx);
    let text = substitute(action, &ctx.env, &ctx.host, &ctx.role);
    let expected = serde_json::from_str::<serde_json::Value>(&ctx.check_output)
        .ok()
        .and_then(|v| v["expected"].as_str().map(str::to_string))
        .unwrap_or_default();
    let env: BTreeMap<String, String> = [
        ("SERVANT_ENV", ctx.env.as_str()),
        ("SERVANT_HOST", &ctx.host),
        ("SERVANT_ROLE", &ctx.role),
        ("SERVANT_STATE", ctx.state.as_str()),
        ("SERVANT_SERVICE", &ctx.service),
        ("SERVANT_CHECK_OUTPUT", &ctx.check_output),
        ("SERVANT_EXPECTED", &expected),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    // A script: the kernel runs its interpreter, whatever it is. Its file is removed when
    // `script` drops, however the run ends.
    let script = if text.starts_with("#!") {
        match write_script(scratch, &text, user).await {
            Ok(p) => Some(p),
            Err(e) => {
                run.output = format!("cannot write the script to {}: {e}", scratch.display());
                return run;
            }
        }
    } else {
        None
    };
    let spec = match &script {
        Some(p) => LaunchSpec::new(vec![p.to_string_lossy().into_owned()]).env(env),
        None => LaunchSpec::shell(&text, &env),
    };
    // Output goes to a file, not a pipe: a service the action starts in the background keeps
    // its stdout, and the run must end when the action does, not when that service does.
    let spec = spec
        .user(user.map(str::to_string))
        .output(Output::Capture {
            dir: Some(scratch.to_path_buf()),
            combined: true,
        })
        .lifetime(Lifetime::Detached);
    let done = run_with_timeout(
        &ProcessDriver::current(),
        &spec,
        Limits::new(timeout, OUTPUT_CAP),
    )
    .await;
    if let Some(p) = script {
        let _ = tokio::task::spawn_blocking(move || p.close()).await;
    }
    match done {
        Err(e) => run.output = format!("cannot start the action: {}", e.detail()),
        Ok(f) => {
            let text = f.output.stdout;
            match f.outcome {
                Outcome::Exited { code, .. } => {
                    run.exit_code = Some(code);
                    run.output = text;
                }
                // The action and everything it started are killed: a hung action leaves
                // nothing.
                Outcome::TimedOut | Outcome::Killed(_) => {
                    run.timed_out = true;
                    run.output = format!("{text}killed after its timeout of {timeout:?}");
                }
            }
        }
    }
    run.duration_ms = started.elapsed().as_millis() as u64;
    run
}

/// Writes a script action to a private (0700) file of its own in `dir`, owned by `user` when
/// it runs as one, closed so that it can be run; the file is removed when the returned path
/// drops.
async fn write_script(
    dir: &Path,
    text: &str,
    user: Option<&str>,
) -> std::io::Result<tempfile::TempPath> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let (dir, text, user) = (
        dir.to_path_buf(),
        text.to_string(),
        user.map(str::to_string),
    );
    tokio::task::spawn_blocking(move || {
        let mut f = tempfile::Builder::new()
            .prefix("servant-trigger-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempfile_in(&dir)?;
        f.write_all(text.as_bytes())?;
        if let Some(name) = user {
            let u = nix::unistd::User::from_name(&name)
                .map_err(std::io::Error::from)?
                .ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("no user {name:?} on this node"),
                    )
                })?;
            std::os::unix::fs::fchown(f.as_file(), Some(u.uid.as_raw()), Some(u.gid.as_raw()))?;
        }
        // The kernel refuses to run a file that is open for writing.
        Ok(f.into_temp_path())
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Appends `run` to `trigger_history/<node>` (the newest `HISTORY_LEN`), with check-and-set.
pub async fn record(client: &Client, layout: &Namespace, node: &str, run: &TriggerRun) {
    let key = layout.trigger_history(node);
    for _ in 0..5 {
        let (entry, _) = match client.kv_get(&key, &QueryOptions::default()).await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "cannot read the trigger history");
                return;
            }
        };
        let (mut list, index) = match entry {
            Some(e) => (
                serde_json::from_slice::<Vec<TriggerRun>>(&e.value).unwrap_or_default(),
                e.modify_index,
            ),
            None => (Vec::new(), 0),
        };
        list.push(run.clone());
        let skip = list.len().saturating_sub(HISTORY_LEN);
        let list: Vec<_> = list.into_iter().skip(skip).collect();
        let body = serde_json::to_vec(&list).unwrap_or_default();
        let opts = KvPutOptions {
            cas: Some(index),
            ..Default::default()
        };
        match client.kv_put(&key, &body, &opts).await {
            Ok(true) => return,
            Ok(false) => continue,
            Err(e) => {
                warn!(error = %e, "cannot write the trigger history");
                return;
            }
        }
    }
}

/// Finds and runs the action for `ctx` under `policy`, logs and records it (a refused one too).
/// None when there is no action.
pub async fn fire(
    client: &Client,
    layout: &Namespace,
    policy: &ActionPolicy,
    ctx: &TriggerCtx,
    timeout: Duration,
    scratch: &Path,
) -> Option<TriggerRun> {
    let node = policy.node.as_str();
    let (key, action) = match find_action(client, layout, ctx).await {
        Ok(Some(a)) => a,
        Ok(None) => {
            info!(service = %ctx.service, role = %ctx.role, state = %ctx.state, "no trigger action");
            return None;
        }
        Err(e) => {
            warn!(service = %ctx.service, error = %e, "cannot read the trigger action");
            return None;
        }
    };
    let run = match policy.resolve(&action) {
        Resolved::Run { text, user } => {
            run_action_as(&key, &text, user.as_deref(), ctx, timeout, scratch).await
        }
        Resolved::Refused(why) => {
            warn!(service = %ctx.service, role = %ctx.role, state = %ctx.state, key = %key, reason = %why, "trigger action refused");
            let mut run = new_run(&key, ctx);
            run.output = why.clone();
            run.refused = Some(why);
            record(client, layout, node, &run).await;
            return Some(run);
        }
    };
    info!(
        service = %run.service, role = %run.role, state = %run.state, key = %run.key,
        exit_code = ?run.exit_code, timed_out = run.timed_out, duration_ms = run.duration_ms,
        "trigger ran"
    );
    record(client, layout, node, &run).await;
    Some(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitution() {
        assert_eq!(
            substitute("echo @HOST @ENV @ROLE @HOST", "prod", "h1", "primary"),
            "echo h1 prod primary h1"
        );
    }

    #[test]
    fn the_action_policy_decides_what_a_trigger_value_runs() {
        let mut p = ActionPolicy {
            node: "n1".into(),
            kv_user: Some("nobody".into()),
            ..ActionPolicy::default()
        };
        p.local
            .insert("takeover".into(), "systemctl start web".into());
        // By default a command from KV runs, as [jobs] default_user.
        assert_eq!(
            p.resolve("echo hi"),
            Resolved::Run {
                text: "echo hi".into(),
                user: Some("nobody".into())
            }
        );
        // A named local action runs as the agent, whatever allow_kv_actions says.
        let local = Resolved::Run {
            text: "systemctl start web".into(),
            user: None,
        };
        assert_eq!(p.resolve(" action:takeover\n"), local);
        p.allow_kv_actions = false;
        assert_eq!(p.resolve("action: takeover"), local);
        match p.resolve("echo hi") {
            Resolved::Refused(why) => {
                assert!(why.contains("allow_kv_actions"), "{why}");
                assert!(why.contains("n1"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        match p.resolve("action:rm-rf") {
            Resolved::Refused(why) => assert!(why.contains("\"rm-rf\""), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    fn ctx() -> TriggerCtx {
        TriggerCtx {
            env: "prod".into(),
            host: "h1".into(),
            service: "web".into(),
            role: "secondary".into(),
            state: HealthStatus::Critical,
            check_output: r#"{"expected":"stopped"}"#.into(),
        }
    }

    #[tokio::test]
    async fn shell_and_script_actions_run_with_substitutions_and_variables() {
        let dir = tempfile::tempdir().unwrap();
        let r = run_action(
            "k",
            "echo @HOST $SERVANT_EXPECTED; exit 3",
            &ctx(),
            Duration::from_secs(10),
            dir.path(),
        )
        .await;
        assert_eq!(r.exit_code, Some(3));
        assert_eq!(r.output.trim(), "h1 stopped");
        let r = run_action(
            "k",
            "#!/usr/bin/env python3\nprint('py @ROLE')\n",
            &ctx(),
            Duration::from_secs(10),
            dir.path(),
        )
        .await;
        assert_eq!(r.exit_code, Some(0), "{r:?}");
        assert_eq!(r.output.trim(), "py secondary");
    }

    fn entries(dir: &Path) -> Vec<std::ffi::OsString> {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect()
    }

    /// Issue 11: every script action left a 0700 file in the scratch dir, and so did one that
    /// timed out or could not start.
    #[tokio::test]
    async fn script_actions_leave_nothing_in_the_scratch_dir() {
        let dir = tempfile::tempdir().unwrap();
        let ok = run_action(
            "k",
            "#!/bin/sh\necho script\n",
            &ctx(),
            Duration::from_secs(10),
            dir.path(),
        )
        .await;
        assert_eq!((ok.exit_code, ok.output.as_str()), (Some(0), "script\n"));
        let hung = run_action(
            "k",
            "#!/bin/sh\nsleep 30\n",
            &ctx(),
            Duration::from_millis(200),
            dir.path(),
        )
        .await;
        assert!(hung.timed_out, "{hung:?}");
        let broken = run_action(
            "k",
            "#!/no/such/interpreter\n",
            &ctx(),
            Duration::from_secs(10),
            dir.path(),
        )
        .await;
        assert_eq!(broken.exit_code, None);
        assert!(
            broken.output.starts_with("cannot start the action: "),
            "{broken:?}"
        );
        assert_eq!(entries(dir.path()), Vec::<std::ffi::OsString>::new());
    }

    /// Issue 11: output files were named by pid and millisecond, so two services' actions
    /// started in the same millisecond shared one (and one of them lost its output).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn actions_started_together_each_keep_their_own_output() {
        let dir = tempfile::tempdir().unwrap();
        let mut runs = tokio::task::JoinSet::new();
        for n in 0..12 {
            let scratch = dir.path().to_path_buf();
            runs.spawn(async move {
                let action = format!("echo {n}; sleep 0.2; echo {n} done");
                let r = run_action("k", &action, &ctx(), Duration::from_secs(10), &scratch).await;
                (n, r)
            });
        }
        while let Some(done) = runs.join_next().await {
            let (n, r) = done.unwrap();
            assert_eq!(r.output, format!("{n}\n{n} done\n"), "{r:?}");
        }
        assert_eq!(entries(dir.path()), Vec::<std::ffi::OsString>::new());
    }

    #[tokio::test]
    async fn a_hanging_action_is_killed_at_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let t = Instant::now();
        let r = run_action(
            "k",
            "sleep 31 & sleep 30",
            &ctx(),
            Duration::from_millis(300),
            dir.path(),
        )
        .await;
        assert!(r.timed_out);
        assert_eq!(r.exit_code, None);
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_service_started_in_the_background_outlives_its_action() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let t = Instant::now();
        let r = run_action(
            "k",
            &format!("sleep 32 & echo $! > {}; echo started", pidfile.display()),
            &ctx(),
            Duration::from_secs(20),
            dir.path(),
        )
        .await;
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the run ends with the action"
        );
        assert_eq!((r.exit_code, r.output.trim()), (Some(0), "started"));
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "the service still runs"
        );
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}
