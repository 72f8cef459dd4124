//! `servant logs`: a job's full output, fetched from the agent API of the node that ran it. The
//! job's stdout goes to stdout and its stderr to stderr.

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};

use super::show::{node_keys, node_names};
use super::Ctx;
use crate::consul::QueryOptions;
use crate::wire::JobKey;
use crate::wire::JobResult;

/// One stream of a job's or an app's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    /// The streams to print: the one asked for, or both.
    pub fn chosen(s: Option<Stream>) -> &'static [Stream] {
        match s {
            Some(Stream::Stdout) => &[Stream::Stdout],
            Some(Stream::Stderr) => &[Stream::Stderr],
            None => &[Stream::Stdout, Stream::Stderr],
        }
    }

    /// Writes `body` where this stream belongs: stdout or stderr.
    pub fn write(self, body: &[u8]) -> Result<(), crate::util::output::OutputError> {
        match self {
            Stream::Stdout => crate::util::output::write(body),
            Stream::Stderr => crate::util::output::write_stderr(body),
        }
    }
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The job was queued on this node (`start -n`/`--all`).
    #[arg(short = 'n', long = "node")]
    pub node: Option<String>,
    /// Only this stream.
    #[arg(long, value_enum)]
    pub stream: Option<Stream>,
    /// The job ID.
    pub id: String,
}

/// The key a bare job ID means: `jobs/<id>` if it ran or runs there, else the only node queue
/// that holds it.
async fn resolve(ctx: &Ctx, id: &str) -> anyhow::Result<JobKey> {
    let any = JobKey::Any { id: id.to_string() };
    let q = QueryOptions::default();
    let (result, _) = ctx.client.kv_get(&ctx.layout.result_key(&any), &q).await?;
    let (entry, _) = ctx.client.kv_get(&ctx.layout.job_key(&any), &q).await?;
    if result.is_some() || entry.is_some() {
        return Ok(any);
    }
    let mut per_node = node_keys(ctx, id).await?;
    match per_node.len() {
        0 => Ok(any),
        1 => Ok(per_node.remove(0)),
        _ => bail!(
            "job {id} was queued on several nodes ({}); give -n NODE",
            node_names(&per_node)
        ),
    }
}

pub async fn run(ctx: &Ctx, a: LogsArgs) -> anyhow::Result<i32> {
    let jk = match &a.node {
        Some(n) => JobKey::Node {
            node: n.clone(),
            id: a.id.clone(),
        },
        None => resolve(ctx, &a.id).await?,
    };
    let key = ctx.layout.job_key(&jk);
    let (result, _) = ctx
        .client
        .kv_get(&ctx.layout.result_key(&jk), &QueryOptions::default())
        .await?;
    let mut node = result
        .and_then(|r| serde_json::from_slice::<JobResult>(&r.value).ok())
        .map(|r| r.execution_node)
        .filter(|n| !n.is_empty());
    if node.is_none() {
        let (entry, _) = ctx.client.kv_get(&key, &QueryOptions::default()).await?;
        if let Some(sid) = entry.as_ref().and_then(|e| e.holder()) {
            node = ctx
                .client
                .session_info(sid, &QueryOptions::default())
                .await?
                .0
                .map(|s| s.node);
        }
    }
    let Some(node) = node else {
        bail!(
            "job {} has not run anywhere yet (no result and no running claim at {key})",
            a.id
        )
    };
    let q = vec![("key", key.clone())];
    print_streams(ctx, &node, "/v1/logs", &q, a.stream)
        .await
        .with_context(|| format!("job {}", a.id))?;
    Ok(0)
}

/// Fetches the chosen streams from `node`'s agent API and writes each where it belongs. A stream
/// with no log file is empty, unless it was asked for alone or neither exists.
pub async fn print_streams(
    ctx: &Ctx,
    node: &str,
    path: &str,
    query: &[(&str, String)],
    stream: Option<Stream>,
) -> anyhow::Result<()> {
    let mut bodies = Vec::new();
    let mut missing = Vec::new();
    for &s in Stream::chosen(stream) {
        let mut q = query.to_vec();
        q.push(("stream", s.as_str().to_string()));
        match fetch_log(ctx, node, path, &q).await? {
            Fetched::Body(b) => bodies.push((s, b)),
            Fetched::Missing(why) => missing.push(why),
        }
    }
    if bodies.is_empty() {
        missing.dedup();
        bail!("agent on {node}: {}", missing.join("; "));
    }
    for (s, b) in bodies {
        s.write(&b)?;
    }
    Ok(())
}

/// What an agent answered for a log.
pub enum Fetched {
    Body(Vec<u8>),
    /// It has no such log; its words.
    Missing(String),
}

/// Fetches `path` with `query` from the servant agent API of `node`, found in the catalog
/// (service `servant` with this KV prefix).
pub async fn fetch_log(
    ctx: &Ctx,
    node: &str,
    path: &str,
    query: &[(&str, String)],
) -> anyhow::Result<Fetched> {
    let (agents, _) = ctx
        .client
        .catalog_service("servant", None, &QueryOptions::default())
        .await?;
    let prefix = ctx.layout.prefix().trim_end_matches('/').to_string();
    let Some(agent) = agents.iter().find(|s| {
        s.node == node
            && s.service_meta
                .as_ref()
                .and_then(|m| m.get("kv_prefix"))
                .map(|p| p.trim_matches('/').to_string())
                .unwrap_or_default()
                == prefix
    }) else {
        bail!("node {node} has no servant agent API registered (is its agent running?)")
    };
    let host = if agent.service_address.is_empty() {
        &agent.address
    } else {
        &agent.service_address
    };
    let url = format!("http://{host}:{}{path}", agent.service_port);
    let mut req = reqwest::Client::new().get(&url).query(query);
    // With ACLs on, the agent lets only a token that may read the job's (or task's) key read
    // its log.
    if let Some(t) = ctx.client.token() {
        req = req.header("X-Consul-Token", t);
    }
    let resp = req.send().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach the servant agent on {node} at {url}: {}",
            crate::util::error::chain(&e.without_url())
        )
    })?;
    let status = resp.status();
    let body = resp.bytes().await?;
    if status == reqwest::StatusCode::NOT_FOUND {
        return Ok(Fetched::Missing(
            String::from_utf8_lossy(&body).trim().to_string(),
        ));
    }
    if !status.is_success() {
        bail!("agent on {node}: {}", String::from_utf8_lossy(&body).trim());
    }
    Ok(Fetched::Body(body.to_vec()))
}
