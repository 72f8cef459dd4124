//! `servant jobs`: queued, running and recent jobs.

use clap::Args;

use super::show::view_of;
use super::table::{job_row, table};
use super::Ctx;
use crate::consul::QueryOptions;
use crate::wire::{JobResult, JobView};

#[derive(Debug, Args)]
pub struct JobsArgs {
    /// How many recent results to list.
    #[arg(long, default_value_t = 20)]
    pub recent: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(ctx: &Ctx, a: JobsArgs) -> anyhow::Result<i32> {
    let p = ctx.layout.prefix().to_string();
    let mut views = Vec::new();
    for prefix in [format!("{p}jobs/"), format!("{p}queues/")] {
        let (entries, _) = ctx
            .client
            .kv_list(&prefix, &QueryOptions::default())
            .await?;
        for e in entries
            .iter()
            .filter(|e| ctx.layout.parse_job_key(&e.key).is_some())
        {
            if let Some(v) = view_of(ctx, &e.key, Some(e), None).await? {
                views.push(v);
            }
        }
    }
    let (results, _) = ctx
        .client
        .kv_list(&ctx.layout.results_prefix(), &QueryOptions::default())
        .await?;
    let mut done: Vec<(String, JobResult)> = results
        .iter()
        .filter_map(|e| {
            let jk = ctx.layout.parse_result_key(&e.key)?;
            Some((
                ctx.layout.job_key(&jk),
                serde_json::from_slice::<JobResult>(&e.value).ok()?,
            ))
        })
        .collect();
    done.sort_by_key(|(_, r)| std::cmp::Reverse(r.end_time.max(r.start_time)));
    views.extend(
        done.into_iter()
            .take(a.recent)
            .map(|(key, r)| JobView::Done {
                key,
                result: Box::new(r),
            }),
    );
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&views)?);
    } else {
        let rows: Vec<Vec<String>> = views.iter().map(|v| job_row(v).to_vec()).collect();
        out!(
            "{}",
            table(&["KEY", "STATE", "NODE", "TIME", "DETAIL"], &rows)
        );
    }
    Ok(0)
}
