//! `servant check service|process|crontab`, `servant trigger` and `servant watch`
//! (python-powerconsul's commands). Checks print one JSON line and exit 0 passing, 1 warning,
//! 2 critical; internal errors are critical.

use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;
use std::path::Path;

use super::Ctx;
use crate::checks::crontab;
use crate::checks::process::{self, Selector};
use crate::checks::service::{self, local, role_for, ServiceCheck};
use crate::checks::trigger::{fire, ActionPolicy, TriggerCtx};
use crate::checks::verdict::Verdict;
use crate::util::duration::parse_duration;
use crate::wire::HealthStatus;

#[derive(Debug, Subcommand)]
pub enum CheckCommand {
    /// A Linux service against this node's role: running where it should run, stopped where
    /// it should not.
    Service(ServiceArgs),
    /// Counts processes from /proc, like Nagios check_procs.
    Process(ProcessArgs),
    /// A user's crontab exists (and holds a pattern).
    Crontab(CrontabArgs),
}

#[derive(Debug, Args)]
pub struct ServiceArgs {
    /// The local service (systemd unit, init script or `service` name).
    #[arg(short = 's', long = "service")]
    pub service: String,
    /// The Consul service: names `cluster/<env>/<svc>` and the triggers.
    #[arg(short = 'S', long = "consul-service")]
    pub consul_service: String,
    /// A command whose exit code says the state instead (0 running, 3 stopped).
    #[arg(long)]
    pub status_cmd: Option<String>,
    /// The environment (default: the hostname's prefix before the first `-`).
    #[arg(long, env = "SERVANT_ENVIRONMENT")]
    pub env: Option<String>,
}

#[derive(Debug, Args)]
pub struct ProcessArgs {
    /// The Consul service the check belongs to (reported in the JSON line).
    #[arg(short = 'S', long = "consul-service")]
    pub consul_service: String,
    /// Exact process name.
    #[arg(short = 'C', long = "command")]
    pub name: Option<String>,
    /// Text that must appear in the command line.
    #[arg(short = 'a', long = "argument-array")]
    pub args: Option<String>,
    /// Owner (name or uid).
    #[arg(short = 'u', long = "user")]
    pub user: Option<String>,
    /// Warning range (Nagios syntax: `min:max`, `max`, `min:`, `@min:max`).
    #[arg(short = 'w', long = "warning")]
    pub warning: Option<String>,
    /// Critical range (default: critical when no process matches).
    #[arg(short = 'c', long = "critical")]
    pub critical: Option<String>,
}

#[derive(Debug, Args)]
pub struct CrontabArgs {
    /// The crontab's user.
    #[arg(short = 'u', long = "user")]
    pub user: String,
    /// The Consul service the check belongs to (reported in the JSON line).
    #[arg(short = 'S', long = "consul-service")]
    pub consul_service: String,
    /// Text some line of the crontab must hold.
    #[arg(short = 'p', long = "pattern")]
    pub pattern: Option<String>,
}

/// The states a trigger can be for.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum State {
    Passing,
    Warning,
    Critical,
}

impl State {
    fn status(self) -> HealthStatus {
        match self {
            State::Passing => HealthStatus::Passing,
            State::Warning => HealthStatus::Warning,
            State::Critical => HealthStatus::Critical,
        }
    }
}

#[derive(Debug, Args)]
pub struct TriggerArgs {
    /// The state whose action runs.
    pub state: State,
    /// The check, as Consul reports it (`{"Node": ..., "CheckID": ..., "ServiceName": ...}`).
    #[arg(short = 's', long = "check")]
    pub check: String,
    #[command(flatten)]
    pub opts: TriggerOpts,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Which checks' state runs triggers.
    pub state: State,
    #[command(flatten)]
    pub opts: TriggerOpts,
}

#[derive(Debug, Args)]
pub struct TriggerOpts {
    /// The environment (default: the hostname's prefix before the first `-`).
    #[arg(long, env = "SERVANT_ENVIRONMENT")]
    pub env: Option<String>,
    /// The action is killed after this long.
    #[arg(long, default_value = "60s")]
    pub timeout: String,
    /// The agent's configuration file: its `[checks] allow_kv_actions`, `[checks.actions]`
    /// and `[jobs] default_user` apply (without it, every command from KV runs as this user).
    #[arg(long, env = "SERVANT_CONFIG")]
    pub config: Option<std::path::PathBuf>,
}

pub async fn check(ctx: &Ctx, cmd: CheckCommand) -> anyhow::Result<i32> {
    let v = match cmd {
        CheckCommand::Service(a) => {
            service::check(
                &ctx.client,
                &ctx.layout,
                &ServiceCheck {
                    linux_service: a.service,
                    consul_service: a.consul_service,
                    status_cmd: a.status_cmd,
                    environment: a.env,
                },
            )
            .await
        }
        CheckCommand::Process(a) => {
            let ranges = (
                a.warning.as_deref().map(process::parse_range).transpose(),
                a.critical.as_deref().map(process::parse_range).transpose(),
            );
            match ranges {
                (Ok(w), Ok(c)) => process::check(
                    &Selector {
                        name: a.name,
                        args: a.args,
                        user: a.user,
                    },
                    w.as_ref(),
                    c.as_ref(),
                    Path::new("/proc"),
                ),
                (Err(e), _) | (_, Err(e)) => Verdict::error(e.to_string()),
            }
            .with("consul_service", a.consul_service)
        }
        CheckCommand::Crontab(a) => {
            let dirs: Vec<&Path> = crontab::SPOOL_DIRS.iter().map(Path::new).collect();
            crontab::check(&a.user, a.pattern.as_deref(), &dirs)
                .await
                .with("consul_service", a.consul_service)
        }
    };
    outln!("{}", v.json_line());
    Ok(v.status.exit_code())
}

/// Runs the trigger for one check (from `trigger -s` or a watch handler's input).
async fn trigger_one(
    ctx: &Ctx,
    check: &Value,
    state: HealthStatus,
    opts: &TriggerOpts,
) -> anyhow::Result<Option<i32>> {
    let timeout = parse_duration(&opts.timeout)
        .map_err(|e| anyhow::anyhow!("--timeout {:?}: {e}", opts.timeout))?;
    let me = local(&ctx.client, opts.env.as_deref(), &ctx.layout).await?;
    let service = check["ServiceName"]
        .as_str()
        .filter(|s| !s.is_empty())
        .or_else(|| check["Name"].as_str())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| anyhow::anyhow!("the check has neither ServiceName nor Name: {check}"))?
        .to_string();
    // Without a role there is no telling which action is right: refuse, saying why.
    let (role, _) = role_for(&ctx.client, &me, &service)
        .await
        .map_err(|e| anyhow::anyhow!("{e}; no trigger action runs without a role"))?;
    let tctx = TriggerCtx {
        env: me.env.clone(),
        host: me.node.clone(),
        service,
        role: role.as_str().to_string(),
        state,
        check_output: check["Output"].as_str().unwrap_or("").to_string(),
    };
    let policy = match &opts.config {
        Some(path) => crate::agent::config::AgentConfig::load(path)?.action_policy(&me.node),
        None => ActionPolicy {
            node: me.node.clone(),
            ..ActionPolicy::default()
        },
    };
    let scratch = std::env::temp_dir();
    let run = fire(&ctx.client, &ctx.layout, &policy, &tctx, timeout, &scratch).await;
    let Some(r) = run else { return Ok(None) };
    if let Some(why) = &r.refused {
        anyhow::bail!("trigger {}: {why}", r.key);
    }
    let how = match (r.timed_out, r.exit_code) {
        (true, _) => "timed out".to_string(),
        (false, Some(code)) => format!("exit {code}"),
        (false, None) => "could not start".to_string(),
    };
    eprintln!("servant: trigger {} ran: {how}", r.key);
    out!("{}", r.output);
    Ok(Some(r.exit_code.unwrap_or(1)))
}

pub async fn trigger(ctx: &Ctx, a: TriggerArgs) -> anyhow::Result<i32> {
    let check: Value = serde_json::from_str(&a.check)
        .map_err(|e| anyhow::anyhow!("-s is not a check's JSON: {e}"))?;
    match trigger_one(ctx, &check, a.state.status(), &a.opts).await? {
        Some(code) => Ok(code),
        None => {
            eprintln!("servant: no trigger action for this check and state");
            Ok(0)
        }
    }
}

/// A `consul watch -type=checks` handler: reads the whole JSON on stdin (the watch writes it,
/// then closes it), ignores the first call's empty list, and runs the trigger of each check of
/// this node in `state`.
pub async fn watch(ctx: &Ctx, a: WatchArgs) -> anyhow::Result<i32> {
    let mut input = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut input)?;
    if input.iter().all(u8::is_ascii_whitespace) {
        return Ok(0);
    }
    let checks: Value = serde_json::from_slice(&input)
        .map_err(|e| anyhow::anyhow!("the watch input is not JSON: {e}"))?;
    let Some(list) = checks.as_array() else {
        anyhow::bail!("the watch input is not a list of checks");
    };
    let me = local(&ctx.client, a.opts.env.as_deref(), &ctx.layout).await?;
    let mut worst = 0;
    for c in list {
        let ours = c["Node"].as_str().is_none_or(|n| n == me.node);
        if !ours
            || c["Status"].as_str() != Some(a.state.status().as_str())
            || c["CheckID"] == "serfHealth"
        {
            continue;
        }
        // One check's trouble (bad role data) does not keep the others' actions from running.
        match trigger_one(ctx, c, a.state.status(), &a.opts).await {
            Ok(Some(code)) => worst = worst.max(code),
            Ok(None) => {}
            Err(e) if crate::util::output::is_closed(e.as_ref()) => return Err(e),
            Err(e) => {
                eprintln!("servant: {}", crate::util::error::chain(e.as_ref()));
                worst = worst.max(1);
            }
        }
    }
    Ok(worst)
}
