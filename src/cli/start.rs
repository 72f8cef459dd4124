//! `servant start` (alias `s`): queue a job on any node, one node (`-n`) or every alive node
//! (`--all`), optionally waiting for its result.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Map, Value};

use super::Ctx;
use crate::consul::QueryOptions;
use crate::jobs::spec::{self, validate_id};
use crate::wire::JobKey;
use crate::wire::JobResult;

#[derive(Debug, Args)]
pub struct StartArgs {
    /// The command to run (shell text; quotes, backslashes and `{{` arrive unchanged).
    #[arg(
        short = 'c',
        long = "command",
        value_name = "CMD",
        allow_hyphen_values = true
    )]
    pub command: Option<String>,
    /// Run only on this node (its queue).
    #[arg(
        short = 'n',
        long = "node",
        value_name = "NODE",
        conflicts_with = "all"
    )]
    pub node: Option<String>,
    /// Run on every alive node.
    #[arg(long)]
    pub all: bool,
    /// Queue for -n NODE even if it is not an alive member of the cluster.
    #[arg(long)]
    pub force: bool,
    /// Wait for the result and exit with the job's exit code (1 if -n NODE leaves or fails
    /// first).
    #[arg(long)]
    pub wait: bool,
    /// Job timeout: seconds or a duration such as 90s.
    #[arg(long)]
    pub timeout: Option<String>,
    /// Start detached (NoWait); the result says `started`, then completes when it exits.
    #[arg(long)]
    pub no_wait: bool,
    /// shell (default), exec or docker.
    #[arg(long = "type", value_name = "TYPE")]
    pub job_type: Option<String>,
    /// Attempts after the first if the running node dies.
    #[arg(long)]
    pub retries: Option<u32>,
    /// Environment variable for the job, KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Environment variable read from a KV key when the job starts, secret (redacted from its
    /// output), KEY=path/in/kv (repeatable).
    #[arg(long = "env-from-kv", value_name = "KEY=PATH")]
    pub env_from_kv: Vec<String>,
    /// Working directory of the job.
    #[arg(long)]
    pub dir: Option<String>,
    /// User to run the job as.
    #[arg(long)]
    pub user: Option<String>,
    /// Job name (defaults to the ID).
    #[arg(long)]
    pub name: Option<String>,
    /// The image of a docker job (implies --type docker).
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// A docker job's published port, [ip:][host:]container[/proto] (repeatable).
    #[arg(short = 'p', long = "publish", value_name = "PORT")]
    pub publish: Vec<String>,
    /// A docker job's volume, source:target[:ro|rw] (repeatable).
    #[arg(short = 'v', long = "volume", value_name = "VOLUME")]
    pub volume: Vec<String>,
    /// A docker job's memory limit: bytes, or a size such as 256MiB.
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// A docker job's network (bridge, host, none or a network's name).
    #[arg(long, value_name = "NETWORK")]
    pub network: Option<String>,
    /// When a docker job's image is pulled: missing (default), always or never.
    #[arg(long, value_name = "POLICY")]
    pub pull: Option<String>,
    /// `ID` with -c, or `FILE [ID]` for a job file.
    #[arg(value_name = "ID|FILE")]
    pub positional: Vec<String>,
    /// After `--`: the command as arguments (`Args`), for a docker or an exec job (implies
    /// --type exec without --image).
    #[arg(last = true, value_name = "CMD")]
    pub args: Vec<String>,
}

/// Builds the job document and its ID from the flags and an optional job file.
pub fn build_job(a: &StartArgs) -> anyhow::Result<(String, Value)> {
    let inline = a.command.is_some() || a.image.is_some() || !a.args.is_empty();
    let (mut doc, file_id, explicit_id) = match (inline, a.positional.as_slice()) {
        (true, []) => (Map::new(), None, None),
        (true, [id]) => (Map::new(), None, Some(id.clone())),
        (true, _) => bail!("too many arguments: with -c give at most one job ID"),
        (false, []) => bail!("nothing to run: give -c CMD, --image IMAGE, -- CMD... or a job file"),
        (false, [file, rest @ ..]) => {
            if rest.len() > 1 {
                bail!("too many arguments: give a job file and at most one job ID");
            }
            let path = Path::new(file);
            if !path.is_file() {
                bail!("{file} is not a job file; to run a command use -c \"{file}\"");
            }
            let text =
                std::fs::read(path).with_context(|| format!("cannot read job file {file}"))?;
            let v: Value = serde_json::from_slice(&text)
                .with_context(|| format!("job file {file} is not valid JSON"))?;
            let Value::Object(m) = v else {
                bail!("job file {file} must hold a JSON object")
            };
            let file_id = m
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("ID"))
                .and_then(|(_, v)| v.as_str())
                .map(str::to_string);
            (m, file_id, rest.first().cloned())
        }
    };
    let mut set = |k: &str, v: Value| {
        doc.retain(|key, _| !key.eq_ignore_ascii_case(k));
        doc.insert(k.to_string(), v);
    };
    if let Some(c) = &a.command {
        set("Command", json!(c));
    }
    if let Some(t) = &a.timeout {
        crate::util::duration::parse_duration(t).map_err(|e| anyhow::anyhow!("--timeout: {e}"))?;
        set("Timeout", json!(t));
    }
    if a.no_wait {
        set("NoWait", json!(true));
    }
    for (k, v) in [
        ("Type", &a.job_type),
        ("Dir", &a.dir),
        ("User", &a.user),
        ("Name", &a.name),
    ] {
        if let Some(v) = v {
            set(k, json!(v));
        }
    }
    if let Some(r) = a.retries {
        set("Retries", json!(r));
    }
    if let Some(i) = &a.image {
        set("Image", json!(i));
        if a.job_type.is_none() {
            set("Type", json!("docker"));
        }
    }
    if !a.args.is_empty() {
        set("Args", json!(a.args));
        if a.job_type.is_none() && a.image.is_none() {
            set("Type", json!("exec"));
        }
    }
    let mut docker = Map::new();
    if !a.publish.is_empty() {
        docker.insert("Ports".into(), json!(a.publish));
    }
    if !a.volume.is_empty() {
        docker.insert("Volumes".into(), json!(a.volume));
    }
    for (k, v) in [
        ("Memory", &a.memory),
        ("Network", &a.network),
        ("Pull", &a.pull),
    ] {
        if let Some(v) = v {
            docker.insert(k.into(), json!(v));
        }
    }
    if !docker.is_empty() {
        set("Docker", Value::Object(docker));
    }
    if !a.env.is_empty() {
        let mut env = BTreeMap::new();
        for kv in &a.env {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--env {kv:?}: expected KEY=VALUE"))?;
            env.insert(k.to_string(), v.to_string());
        }
        set("Env", json!(env));
    }
    if !a.env_from_kv.is_empty() {
        let mut env = BTreeMap::new();
        for kv in &a.env_from_kv {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--env-from-kv {kv:?}: expected KEY=PATH"))?;
            env.insert(k.to_string(), v.to_string());
        }
        set("EnvFromKV", json!(env));
    }
    let id = explicit_id
        .or(file_id)
        .unwrap_or_else(crate::jobs::submit::new_id);
    validate_id(&id).map_err(|e| anyhow::anyhow!("{e}"))?;
    set("ID", json!(id));
    let doc = Value::Object(doc);
    // Refuse here what an agent would reject, so the operator hears it at once.
    let body = serde_json::to_vec(&doc)?;
    spec::parse_job(&id, &body).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((id, doc))
}

/// The nodes with a live servant: they hold a node session and their serf status is alive.
pub async fn alive_servants(ctx: &Ctx) -> anyhow::Result<Vec<String>> {
    let name = ctx.layout.jobs_session();
    let (sessions, _) = ctx.client.session_list(&QueryOptions::default()).await?;
    let members = ctx.client.agent_members().await?;
    let mut nodes: Vec<String> = sessions
        .into_iter()
        .filter(|s| s.name == name)
        .map(|s| s.node)
        .filter(|n| members.iter().any(|m| &m.name == n && m.is_alive()))
        .collect();
    nodes.sort();
    nodes.dedup();
    Ok(nodes)
}

/// Refuses a target node that is not an alive member, as Nomad refuses a job with no eligible
/// node: such a job would wait in its queue, unseen, and `--wait` with it. `force` queues it
/// anyway, with a warning. An alive member without a servant agent gets a warning.
async fn check_target(ctx: &Ctx, node: &str, force: bool) -> anyhow::Result<()> {
    let members = ctx.client.agent_members().await?;
    let problem = match members.iter().find(|m| m.name == node) {
        None => {
            let mut names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
            names.sort_unstable();
            let more = names.len().saturating_sub(10);
            names.truncate(10);
            format!(
                "node {node} is not a member of the cluster (members: {}{})",
                names.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            )
        }
        Some(m) if !m.is_alive() => format!("node {node} is {}, not alive", m.status_name()),
        Some(_) => {
            if !alive_servants(ctx).await?.iter().any(|n| n == node) {
                eprintln!(
                    "servant: warning: node {node} runs no servant agent; the job waits in its queue until one starts there"
                );
            }
            return Ok(());
        }
    };
    if !force {
        bail!("{problem}: nothing would run the job; --force queues it anyway");
    }
    eprintln!("servant: warning: {problem}; queued anyway (--force)");
    Ok(())
}

/// The command that prints a job's whole output.
pub fn logs_command(t: &JobKey) -> String {
    match t {
        JobKey::Any { id } => format!("servant logs {id}"),
        JobKey::Node { node, id } => format!("servant logs -n {node} {id}"),
    }
}

pub async fn run(ctx: &Ctx, a: StartArgs) -> anyhow::Result<i32> {
    let (id, doc) = build_job(&a)?;
    match &a.node {
        Some(node) => check_target(ctx, node, a.force).await?,
        None if a.force => bail!("--force goes with -n NODE"),
        None => {}
    }
    let body = serde_json::to_vec(&doc)?;
    let targets: Vec<JobKey> = if a.all {
        let nodes = alive_servants(ctx).await?;
        if nodes.is_empty() {
            bail!("no alive node runs a servant agent");
        }
        nodes
            .into_iter()
            .map(|node| JobKey::Node {
                node,
                id: id.clone(),
            })
            .collect()
    } else if let Some(node) = &a.node {
        vec![JobKey::Node {
            node: node.clone(),
            id: id.clone(),
        }]
    } else {
        vec![JobKey::Any { id: id.clone() }]
    };
    crate::jobs::submit::enqueue(&ctx.client, &ctx.layout, &id, &body, &targets).await?;
    outln!("{id}");
    for t in &targets {
        eprintln!("queued {}", ctx.layout.job_key(t));
    }
    if !a.wait {
        return Ok(0);
    }
    let mut worst = 0;
    let many = targets.len() > 1;
    for t in &targets {
        let code = match wait_target(ctx, t).await? {
            Waited::Done(r) => print_result(&r, many, &logs_command(t))?,
            Waited::NodeGone(why) => {
                eprintln!("servant: error: {why}");
                1
            }
        };
        if worst == 0 {
            worst = code;
        }
    }
    Ok(worst)
}

/// How waiting for a job ended.
pub enum Waited {
    Done(Box<JobResult>),
    /// The job's node left or failed first; why, in words.
    NodeGone(String),
}

/// Waits for the result of `t`. A job queued for one node also ends the wait when that node
/// leaves or fails: nothing else can run it.
pub async fn wait_target(ctx: &Ctx, t: &JobKey) -> anyhow::Result<Waited> {
    let result_key = ctx.layout.result_key(t);
    let JobKey::Node { node, id } = t else {
        return Ok(Waited::Done(Box::new(wait_result(ctx, &result_key).await?)));
    };
    let gone = tokio::select! {
        r = wait_result(ctx, &result_key) => return Ok(Waited::Done(Box::new(r?))),
        g = node_gone(ctx, node) => g?,
    };
    // The result may have been written just before.
    let (entry, _) = ctx
        .client
        .kv_get(&result_key, &QueryOptions::default())
        .await?;
    if let Some(r) = entry
        .and_then(|e| serde_json::from_slice::<JobResult>(&e.value).ok())
        .filter(|r| r.status.map(|s| s.is_final()).unwrap_or(true))
    {
        return Ok(Waited::Done(Box::new(r)));
    }
    let key = ctx.layout.job_key(t);
    let (entry, _) = ctx.client.kv_get(&key, &QueryOptions::default()).await?;
    // The node's failure releases its locks, so a claim shows as a lock count by now.
    let state = match entry {
        Some(e) if e.holder().is_some() || e.lock_index > 0 => "was running on it",
        _ => "was queued for it",
    };
    Ok(Waited::NodeGone(format!(
        "node {node} {gone} while job {id} {state}; the job stays at {key} until the node is back"
    )))
}

/// Returns, in words, once `node` has left or failed. It waits on the node's health (its
/// `serfHealth` check) with blocking queries; the gossip membership then says which it was. A
/// node missing from the catalog counts only if the membership agrees, as one that just joined
/// may not be in the catalog yet.
async fn node_gone(ctx: &Ctx, node: &str) -> anyhow::Result<String> {
    let mut index = crate::consul::BlockingIndex::default();
    loop {
        let (checks, meta) = ctx
            .client
            .health_node(
                node,
                &QueryOptions::blocking(index.get(), std::time::Duration::from_secs(300)),
            )
            .await?;
        index.update(meta.index);
        let serf = checks.iter().find(|c| c.check_id == "serfHealth");
        if serf.is_some_and(|c| c.status != crate::wire::HealthStatus::Critical) {
            continue;
        }
        let members = ctx.client.agent_members().await?;
        let word = match members.iter().find(|m| m.name == node) {
            Some(m) if m.is_alive() && serf.is_none() => continue,
            Some(m) if m.is_alive() => "failed".to_string(),
            Some(m) => m.status_name().to_string(),
            None if serf.is_none() => return Ok("is not a member of the cluster".to_string()),
            None => "left".to_string(),
        };
        let why = serf.map(|c| c.output.trim()).unwrap_or_default();
        return Ok(if why.is_empty() {
            word
        } else {
            format!("{word} (serfHealth critical: {why})")
        });
    }
}

/// Blocks until a final result exists at `key`.
pub async fn wait_result(ctx: &Ctx, key: &str) -> anyhow::Result<JobResult> {
    let mut index = crate::consul::BlockingIndex::default();
    loop {
        let (entry, meta) = ctx
            .client
            .kv_get(
                key,
                &QueryOptions::blocking(index.get(), std::time::Duration::from_secs(60)),
            )
            .await?;
        index.update(meta.index);
        if let Some(e) = entry {
            let r: JobResult = serde_json::from_slice(&e.value)
                .with_context(|| format!("{key} does not hold a job result"))?;
            if r.status.map(|s| s.is_final()).unwrap_or(true) {
                return Ok(r);
            }
        }
    }
}

/// Prints a result like a local run: Output to stdout, OutputErrors to stderr; `logs` is the
/// command that prints all of a truncated output. Returns the exit code to use: the job's, or 1
/// if it did not exit by itself.
pub fn print_result(r: &JobResult, header: bool, logs: &str) -> anyhow::Result<i32> {
    if header {
        outln!(
            "==> {} ({}, exit {})",
            r.execution_node,
            r.status_str(),
            r.exit_code
        );
    }
    crate::util::output::write(r.output.as_bytes())?;
    crate::util::output::write_stderr(r.output_errors.as_bytes())?;
    if r.output_truncated || r.output_errors_truncated {
        eprintln!("servant: output truncated in KV; `{logs}` prints all of it");
    }
    let code = match (r.status_str(), r.exit_code) {
        ("succeeded", _) => 0,
        (_, c) if c > 0 => c,
        (status, _) => {
            eprintln!("servant: job {} {status}: {}", r.id, r.exit_errors);
            1
        }
    };
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(v: &[&str]) -> StartArgs {
        let mut full = vec!["servant", "start"];
        full.extend_from_slice(v);
        match crate::cli::Cli::parse_from(full).command {
            crate::cli::Command::Start(a) => *a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn command_with_quotes_and_braces_is_kept() {
        let cmd = r#"printf '%s\n' "a \"b\"" {{x}} \\"#;
        let (id, doc) = build_job(&args(&["-c", cmd, "job1"])).unwrap();
        assert_eq!(id, "job1");
        assert_eq!(doc["Command"], cmd);
    }

    /// Issue 13: `servant start --type docker --image IMG [-p 8080:80] [-v a:b] -- CMD...`.
    #[test]
    fn docker_jobs_from_flags() {
        let (id, doc) = build_job(&args(&[
            "--type", "docker", "--image", "img:1", "-p", "8080:80", "-v", "/a:/b", "--memory",
            "64MiB", "d1", "--", "echo", "-n", "hi",
        ]))
        .unwrap();
        assert_eq!(id, "d1");
        assert_eq!(doc["Type"], "docker");
        assert_eq!(doc["Image"], "img:1");
        assert_eq!(doc["Args"], serde_json::json!(["echo", "-n", "hi"]));
        assert_eq!(
            doc["Docker"],
            serde_json::json!({"Ports": ["8080:80"], "Volumes": ["/a:/b"], "Memory": "64MiB"})
        );
        // --image alone implies the type; a bad port is refused here already.
        let (_, doc) = build_job(&args(&["--image", "img", "-c", "echo hi"])).unwrap();
        assert_eq!(doc["Type"], "docker");
        let e = build_job(&args(&["--image", "img", "-p", "80:http"])).unwrap_err();
        assert!(e.to_string().contains("bad port spec"), "{e}");
        // `-- CMD...` without an image is an exec job.
        let (_, doc) = build_job(&args(&["--", "printf", "%s", "a b"])).unwrap();
        assert_eq!(doc["Type"], "exec");
    }

    #[test]
    fn id_is_generated_when_missing() {
        let (id, _) = build_job(&args(&["-c", "true"])).unwrap();
        assert_eq!(id.len(), 12);
    }

    #[test]
    fn job_file_gives_id_and_fields() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("job1.job");
        std::fs::write(&f, r#"{ "ID": "job1", "Command": "echo hello world" }"#).unwrap();
        let (id, doc) = build_job(&args(&[f.to_str().unwrap()])).unwrap();
        assert_eq!(id, "job1");
        assert_eq!(doc["Command"], "echo hello world");
        let (id, _) = build_job(&args(&[f.to_str().unwrap(), "other"])).unwrap();
        assert_eq!(id, "other");
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        assert!(build_job(&args(&[]))
            .unwrap_err()
            .to_string()
            .contains("nothing to run"));
        assert!(build_job(&args(&["nofile"]))
            .unwrap_err()
            .to_string()
            .contains("not a job file"));
        assert!(build_job(&args(&["-c", "true", "a b"]))
            .unwrap_err()
            .to_string()
            .contains("invalid job ID"));
        assert!(build_job(&args(&["-c", "true", "--timeout", "soon"])).is_err());
        assert!(build_job(&args(&["-c", "true", "--type", "rocket"])).is_err());
    }
}
