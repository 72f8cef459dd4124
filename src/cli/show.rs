//! `servant show` (alias `w`): where a job stands.

use anyhow::bail;
use clap::Args;

use super::Ctx;
use crate::consul::{KvPair, QueryOptions};
use crate::jobs::layout::JobKey;
use crate::jobs::result::{JobResult, JobStatus};
use crate::jobs::view::{table, JobView};

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The job was queued on this node.
    #[arg(short = 'n', long = "node", conflicts_with = "all")]
    pub node: Option<String>,
    /// Gather the job from every node's queue (for `start --all`).
    #[arg(long)]
    pub all: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The job ID.
    pub id: String,
}

/// The view of one job key from its entry (if queued or running) and its result (if any).
pub async fn view_of(
    ctx: &Ctx,
    key: &str,
    entry: Option<&KvPair>,
    result: Option<&KvPair>,
) -> anyhow::Result<Option<JobView>> {
    let parsed = result.and_then(|r| serde_json::from_slice::<JobResult>(&r.value).ok());
    if let Some(e) = entry {
        if let Some(sid) = e.holder() {
            if let Some(r) = parsed.filter(|r| r.status == Some(JobStatus::Started)) {
                return Ok(Some(JobView::Done {
                    key: key.to_string(),
                    result: Box::new(r),
                }));
            }
            let (s, _) = ctx
                .client
                .session_info(sid, &QueryOptions::default())
                .await?;
            let node = s
                .map(|s| s.node)
                .unwrap_or_else(|| format!("session {sid}"));
            return Ok(Some(JobView::from_entry(
                key,
                e.lock_index,
                e.flags,
                Some(&node),
            )));
        }
        return Ok(Some(JobView::from_entry(key, e.lock_index, e.flags, None)));
    }
    match (result, parsed) {
        (Some(_), Some(r)) => Ok(Some(JobView::Done {
            key: key.to_string(),
            result: Box::new(r),
        })),
        (Some(raw), None) => bail!(
            "{} holds something that is not a job result: {}",
            raw.key,
            raw.value_str()
        ),
        (None, _) => Ok(None),
    }
}

pub async fn run(ctx: &Ctx, a: ShowArgs) -> anyhow::Result<i32> {
    let keys: Vec<JobKey> = if a.all {
        let (entries, _) = ctx
            .client
            .kv_keys(
                &format!("{}queues/", ctx.layout.prefix()),
                None,
                &QueryOptions::default(),
            )
            .await?;
        let (results, _) = ctx
            .client
            .kv_keys(
                &format!("{}queues/", ctx.layout.results_prefix()),
                None,
                &QueryOptions::default(),
            )
            .await?;
        let mut ks: Vec<JobKey> = entries
            .iter()
            .filter_map(|k| ctx.layout.parse_job_key(k))
            .chain(
                results
                    .iter()
                    .filter_map(|k| ctx.layout.parse_result_key(k)),
            )
            .filter(|k| k.id() == a.id)
            .collect();
        ks.sort();
        ks.dedup();
        ks
    } else if let Some(n) = &a.node {
        vec![JobKey::Node {
            node: n.clone(),
            id: a.id.clone(),
        }]
    } else {
        vec![JobKey::Any { id: a.id.clone() }]
    };
    let mut views = Vec::new();
    for k in &keys {
        let key = ctx.layout.job_key(k);
        let (entry, _) = ctx.client.kv_get(&key, &QueryOptions::default()).await?;
        let (result, _) = ctx
            .client
            .kv_get(&ctx.layout.result_key(k), &QueryOptions::default())
            .await?;
        if let Some(v) = view_of(ctx, &key, entry.as_ref(), result.as_ref()).await? {
            views.push(v);
        }
    }
    if views.is_empty() {
        bail!(
            "no job {} found{}",
            a.id,
            if a.all {
                " in any node's queue".to_string()
            } else {
                format!(
                    " at {}",
                    keys.first()
                        .map(|k| ctx.layout.job_key(k))
                        .unwrap_or_default()
                )
            }
        );
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&views)?);
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = views.iter().map(|v| v.row().to_vec()).collect();
    print!(
        "{}",
        table(&["KEY", "STATE", "NODE", "TIME", "DETAIL"], &rows)
    );
    if let [JobView::Done { result, .. }] = views.as_slice() {
        if !result.output.is_empty() {
            println!("\nOutput:\n{}", result.output.trim_end());
        }
        if !result.output_errors.is_empty() {
            println!("\nOutputErrors:\n{}", result.output_errors.trim_end());
        }
    }
    Ok(0)
}
