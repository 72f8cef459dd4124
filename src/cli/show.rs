//! `servant show` (alias `w`): where a job stands.

use anyhow::bail;
use clap::Args;

use super::table::{job_row, table};
use super::Ctx;
use crate::consul::{KvPair, QueryOptions};
use crate::wire::resource::ResourceReport;
use crate::wire::{JobKey, JobResult, JobStatus, JobView};

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

/// The container of running job `key`, from its node's `resource` report (None until the
/// node has reported it, or when the report cannot be read: the listing goes on without it).
async fn running_container(ctx: &Ctx, node: &str, key: &str) -> Option<String> {
    let (entry, _) = ctx
        .client
        .kv_get(&ctx.layout.resource(node), &QueryOptions::default())
        .await
        .ok()?;
    let report = ResourceReport::parse(&entry?.value).ok()?;
    report.job_container(key).map(|c| c.id.clone())
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
            let mut view = JobView::from_entry(key, e.lock_index, e.flags, Some(&node));
            if let JobView::Running {
                image,
                container_id,
                ..
            } = &mut view
            {
                *image = crate::wire::job::image_of(&e.value);
                if image.is_some() {
                    *container_id = running_container(ctx, &node, key).await;
                }
            }
            return Ok(Some(view));
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

/// The per-node keys of job `id`: `queues/<node>/<id>` entries and their results, each node once.
pub async fn node_keys(ctx: &Ctx, id: &str) -> anyhow::Result<Vec<JobKey>> {
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
        .filter(|k| k.id() == id)
        .collect();
    ks.sort();
    ks.dedup();
    Ok(ks)
}

/// The views of the given keys that hold a job or a result.
async fn views_of(ctx: &Ctx, keys: &[JobKey]) -> anyhow::Result<Vec<(JobKey, JobView)>> {
    let mut views = Vec::new();
    for k in keys {
        let key = ctx.layout.job_key(k);
        let (entry, _) = ctx.client.kv_get(&key, &QueryOptions::default()).await?;
        let (result, _) = ctx
            .client
            .kv_get(&ctx.layout.result_key(k), &QueryOptions::default())
            .await?;
        if let Some(v) = view_of(ctx, &key, entry.as_ref(), result.as_ref()).await? {
            views.push((k.clone(), v));
        }
    }
    Ok(views)
}

/// Node names of per-node keys, for messages.
pub fn node_names(keys: &[JobKey]) -> String {
    keys.iter()
        .filter_map(|k| match k {
            JobKey::Node { node, .. } => Some(node.as_str()),
            JobKey::Any { .. } => None,
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn run(ctx: &Ctx, a: ShowArgs) -> anyhow::Result<i32> {
    let mut views = if a.all {
        views_of(ctx, &node_keys(ctx, &a.id).await?).await?
    } else if let Some(n) = &a.node {
        let k = JobKey::Node {
            node: n.clone(),
            id: a.id.clone(),
        };
        views_of(ctx, &[k]).await?
    } else {
        views_of(ctx, &[JobKey::Any { id: a.id.clone() }]).await?
    };
    if !a.all && a.node.is_none() {
        // A bare ID may be a job queued per node (`start -n`, `start --all`).
        let per_node = node_keys(ctx, &a.id).await?;
        if views.is_empty() {
            views = views_of(ctx, &per_node).await?;
        } else if !per_node.is_empty() {
            eprintln!(
                "servant: note: per-node jobs use the ID {} too (on {}); `servant show --all {}` shows them",
                a.id,
                node_names(&per_node),
                a.id
            );
        }
    }
    if views.is_empty() {
        bail!(
            "no job {} found{}",
            a.id,
            match &a.node {
                Some(n) => format!(
                    " at {}",
                    ctx.layout.job_key(&JobKey::Node {
                        node: n.clone(),
                        id: a.id.clone()
                    })
                ),
                None if a.all => " in any node's queue".to_string(),
                None => format!(
                    " at {} or in any node's queue",
                    ctx.layout.job_key(&JobKey::Any { id: a.id.clone() })
                ),
            }
        );
    }
    if a.json {
        let views: Vec<&JobView> = views.iter().map(|(_, v)| v).collect();
        outln!("{}", serde_json::to_string_pretty(&views)?);
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = views.iter().map(|(_, v)| job_row(v).to_vec()).collect();
    out!(
        "{}",
        table(&["KEY", "STATE", "NODE", "TIME", "DETAIL"], &rows)
    );
    if let [(
        _,
        JobView::Running {
            image: Some(image),
            container_id,
            ..
        },
    )] = views.as_slice()
    {
        outln!("\nImage: {image}");
        if let Some(id) = container_id {
            outln!("Container: {id}");
        }
    }
    if let [(key, JobView::Done { result, .. })] = views.as_slice() {
        let logs = super::start::logs_command(key);
        for (name, text, truncated) in [
            ("Output", &result.output, result.output_truncated),
            (
                "OutputErrors",
                &result.output_errors,
                result.output_errors_truncated,
            ),
        ] {
            if !text.is_empty() {
                outln!("\n{name}:\n{}", text.trim_end());
            }
            if truncated {
                outln!("({name} is truncated in KV; `{logs}` prints all of it)");
            }
        }
        if let Some(image) = &result.image {
            outln!("\nImage: {image}");
            if let Some(id) = &result.container_id {
                outln!("Container: {id}");
            }
            if result.oom_killed {
                outln!("OOMKilled: true (over its memory limit)");
            }
        }
        if result.leftover_processes > 0 {
            outln!(
                "\n({} process(es) it left running in the background were stopped when it ended: a job's processes end with it)",
                result.leftover_processes
            );
        }
    }
    Ok(0)
}
