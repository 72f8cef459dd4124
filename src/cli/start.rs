//! `servant start` (alias `s`): queue a job on any node, one node (`-n`) or every alive node
//! (`--all`), optionally waiting for its result.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Map, Value};

use super::Ctx;
use crate::consul::{KvPutOptions, QueryOptions, TxnKvOp, TxnOp, TxnOutcome};
use crate::jobs::layout::JobKey;
use crate::jobs::result::JobResult;
use crate::jobs::spec::{self, validate_id};

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
    /// Wait for the result and exit with the job's exit code.
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
    /// Working directory of the job.
    #[arg(long)]
    pub dir: Option<String>,
    /// User to run the job as.
    #[arg(long)]
    pub user: Option<String>,
    /// Job name (defaults to the ID).
    #[arg(long)]
    pub name: Option<String>,
    /// `ID` with -c, or `FILE [ID]` for a job file.
    #[arg(value_name = "ID|FILE")]
    pub positional: Vec<String>,
}

/// Builds the job document and its ID from the flags and an optional job file.
pub fn build_job(a: &StartArgs) -> anyhow::Result<(String, Value)> {
    let (mut doc, file_id, explicit_id) = match (&a.command, a.positional.as_slice()) {
        (Some(_), []) => (Map::new(), None, None),
        (Some(_), [id]) => (Map::new(), None, Some(id.clone())),
        (Some(_), _) => bail!("too many arguments: with -c give at most one job ID"),
        (None, []) => bail!("nothing to run: give -c CMD or a job file"),
        (None, [file, rest @ ..]) => {
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
    let id = explicit_id
        .or(file_id)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_string());
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
    let name = if ctx.layout.prefix().is_empty() {
        "servant".to_string()
    } else {
        format!("servant:{}", ctx.layout.prefix())
    };
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

pub async fn run(ctx: &Ctx, a: StartArgs) -> anyhow::Result<i32> {
    let (id, doc) = build_job(&a)?;
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
    if targets.len() == 1 {
        let key = ctx.layout.job_key(&targets[0]);
        if !ctx
            .client
            .kv_put(
                &key,
                &body,
                &KvPutOptions {
                    cas: Some(0),
                    ..Default::default()
                },
            )
            .await?
        {
            bail!("job {id} is already queued at {key}; choose another ID");
        }
    } else {
        for chunk in targets.chunks(32) {
            let mut ops = Vec::new();
            for t in chunk {
                let key = ctx.layout.job_key(t);
                ops.push(TxnOp::Kv(TxnKvOp::CheckNotExists { key: key.clone() }));
                ops.push(TxnOp::Kv(TxnKvOp::Set {
                    key,
                    value: body.clone(),
                    flags: 0,
                }));
            }
            if let TxnOutcome::RolledBack(errs) = ctx.client.txn(&ops).await? {
                bail!(
                    "job {id} is already queued on some node: {}",
                    errs.iter()
                        .map(|e| e.what.clone())
                        .collect::<Vec<_>>()
                        .join("; ")
                );
            }
        }
    }
    println!("{id}");
    for t in &targets {
        eprintln!("queued {}", ctx.layout.job_key(t));
    }
    if !a.wait {
        return Ok(0);
    }
    let mut worst = 0;
    let many = targets.len() > 1;
    for t in &targets {
        let r = wait_result(ctx, &ctx.layout.result_key(t)).await?;
        let code = print_result(&r, many)?;
        if worst == 0 {
            worst = code;
        }
    }
    Ok(worst)
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

/// Prints a result like a local run: Output to stdout, OutputErrors to stderr. Returns the exit
/// code to use: the job's, or 1 if it did not exit by itself.
pub fn print_result(r: &JobResult, header: bool) -> anyhow::Result<i32> {
    if header {
        println!(
            "==> {} ({}, exit {})",
            r.execution_node,
            r.status_str(),
            r.exit_code
        );
    }
    let mut out = std::io::stdout();
    out.write_all(r.output.as_bytes())?;
    out.flush()?;
    eprint!("{}", r.output_errors);
    if r.output_truncated || r.output_errors_truncated {
        eprintln!(
            "servant: output truncated in KV; `servant logs {}` has all of it",
            r.id
        );
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
            crate::cli::Command::Start(a) => a,
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
