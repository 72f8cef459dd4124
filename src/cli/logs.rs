//! `servant logs`: a job's full output, fetched from the agent API of the node that ran it.

use anyhow::{bail, Context};
use clap::Args;

use super::Ctx;
use crate::consul::QueryOptions;
use crate::jobs::layout::JobKey;
use crate::jobs::result::JobResult;

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The job was queued on this node (`start -n`/`--all`).
    #[arg(short = 'n', long = "node")]
    pub node: Option<String>,
    /// Only `stdout` or `stderr`.
    #[arg(long)]
    pub stream: Option<String>,
    /// The job ID.
    pub id: String,
}

pub async fn run(ctx: &Ctx, a: LogsArgs) -> anyhow::Result<i32> {
    let jk = match &a.node {
        Some(n) => JobKey::Node {
            node: n.clone(),
            id: a.id.clone(),
        },
        None => JobKey::Any { id: a.id.clone() },
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
    let mut q = vec![("key", key.clone())];
    if let Some(s) = &a.stream {
        q.push(("stream", s.clone()));
    }
    let body = fetch_log(ctx, &node, "/v1/logs", &q)
        .await
        .with_context(|| format!("job {}", a.id))?;
    use std::io::Write;
    std::io::stdout().write_all(&body)?;
    Ok(0)
}

/// Fetches `path` with `query` from the servant agent API of `node`, found in the catalog
/// (service `servant` with this KV prefix).
pub async fn fetch_log(
    ctx: &Ctx,
    node: &str,
    path: &str,
    query: &[(&str, String)],
) -> anyhow::Result<Vec<u8>> {
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
    let resp = reqwest::Client::new()
        .get(&url)
        .query(query)
        .send()
        .await
        .with_context(|| format!("cannot reach the servant agent on {node} at {url}"))?;
    let status = resp.status();
    let body = resp.bytes().await?;
    if !status.is_success() {
        bail!("agent on {node}: {}", String::from_utf8_lossy(&body).trim());
    }
    Ok(body.to_vec())
}
