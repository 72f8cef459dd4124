//! `servant template`: consul-template's job. Flags work like its own: `-template
//! "in:out[:command]"` (repeatable), `-once`, `-dry`, `-wait min[:max]`, and `-config FILE`
//! (TOML, or JSON by extension) holding `wait` and `[[template]]` tables.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Deserialize;

use super::Ctx;
use crate::templates::runner::{
    parse_template_flag, parse_wait, run, RunnerConfig, TemplateSpec, Wait,
};

#[derive(Debug, Args)]
pub struct TemplateArgs {
    /// `in:out[:command]`: render `in` to `out`, then run `command` if it changed.
    #[arg(long = "template", value_name = "IN:OUT[:COMMAND]")]
    pub template: Vec<String>,
    /// Render once, when every dependency has data, and exit.
    #[arg(long)]
    pub once: bool,
    /// Print the output instead of writing files and running commands.
    #[arg(long)]
    pub dry: bool,
    /// Quiescence: `min[:max]` (max defaults to 4 × min).
    #[arg(long, value_name = "MIN[:MAX]")]
    pub wait: Option<String>,
    /// A file with `wait` and `[[template]]` entries (source, destination, command, perms,
    /// backup, command_timeout).
    #[arg(long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    wait: Option<Wait>,
    #[serde(default)]
    template: Vec<TemplateSpec>,
}

pub async fn run_cmd(ctx: &Ctx, a: TemplateArgs) -> anyhow::Result<i32> {
    let mut templates = Vec::new();
    let mut wait = None;
    if let Some(path) = &a.config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let f: FileConfig = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?
        } else {
            toml::from_str(&text).with_context(|| format!("{}", path.display()))?
        };
        templates.extend(f.template);
        wait = f.wait;
    }
    for t in &a.template {
        templates.push(parse_template_flag(t)?);
    }
    if templates.is_empty() {
        anyhow::bail!("no templates: give -template in:out[:command] or -config FILE");
    }
    // The flag over the file.
    let wait = match a.wait {
        Some(w) => parse_wait(&w).with_context(|| format!("-wait {w:?}"))?,
        None => wait.unwrap_or_default(),
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let stopper = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stopper.cancel();
    });
    run(
        ctx.client.clone(),
        RunnerConfig {
            templates,
            wait_min: wait.min,
            wait_max: wait.max,
            once: a.once,
            dry: a.dry,
            watch_wait: Duration::from_secs(300),
            metrics: Default::default(),
        },
        stop,
    )
    .await?;
    Ok(0)
}
