//! `servant task put|rm|ls`, `servant app ls` and `servant topology`: App Manager's keys, read
//! and written for operators.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::Value;

use super::table::table;
use super::Ctx;
use crate::apps::launch::{container_of, read_tasks};
use crate::consul::{KvPair, KvPutOptions, QueryOptions};
use crate::wire::resource::{read_reports, ResourceReport};
use crate::wire::topology::{read_topology, Topology};
use crate::wire::{self, parse_task, AppHealth, Applications, KvEntry, Namespace, ScheduleReport};

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Store a task from a JSON file (`-` for stdin); its name is the file's `content.name`,
    /// or `--name`.
    Put(PutArgs),
    /// Remove a task: its app stops everywhere.
    Rm(NameArg),
    /// List tasks with their replication and placement.
    Ls(JsonArg),
}

#[derive(Debug, Args)]
pub struct PutArgs {
    /// The task's name (default: `content.name` in the file).
    #[arg(long)]
    pub name: Option<String>,
    /// `{"content": {...}, "replication": N, ...}`; `-` reads stdin.
    pub file: String,
}

#[derive(Debug, Args)]
pub struct NameArg {
    pub name: String,
}

#[derive(Debug, Args)]
pub struct JsonArg {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum AppCommand {
    /// Every node's apps with status and health, from the nodes' reports.
    Ls(JsonArg),
    /// An app's log files (stdout, then stderr), from the nodes that run it.
    Logs(AppLogsArgs),
}

#[derive(Debug, Args)]
pub struct AppLogsArgs {
    /// Only this node (default: every node the app is placed on).
    #[arg(short = 'n', long = "node")]
    pub node: Option<String>,
    /// Only this stream.
    #[arg(long, value_enum)]
    pub stream: Option<super::logs::Stream>,
    /// The app's (task's) name.
    pub name: String,
}

fn layout(ctx: &Ctx) -> Namespace {
    ctx.layout.clone()
}

/// `(key, value)` of each listed entry, as `wire`'s readers take them.
fn kv(entries: &[KvPair]) -> impl Iterator<Item = KvEntry<'_>> {
    entries.iter().map(|e| (e.key.as_str(), e.value.as_slice()))
}

/// The placements; unreadable keys place nothing (the leader rewrites them).
async fn placements(ctx: &Ctx, l: &Namespace) -> anyhow::Result<Topology> {
    let (entries, _) = ctx
        .client
        .kv_list(&l.topology_prefix(), &QueryOptions::default())
        .await?;
    Ok(read_topology(l, kv(&entries)).placed)
}

pub async fn task(ctx: &Ctx, cmd: TaskCommand) -> anyhow::Result<i32> {
    let l = layout(ctx);
    match cmd {
        TaskCommand::Put(a) => {
            let body = if a.file == "-" {
                let mut s = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut s)?;
                s
            } else {
                std::fs::read(&a.file).with_context(|| format!("cannot read {}", a.file))?
            };
            let name = match a.name {
                Some(n) => n,
                None => serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v["content"]["name"].as_str().map(str::to_string))
                    .context("the task has no content.name; give --name")?,
            };
            // Refused here with the reason, rather than stored and reported by the leader.
            let t = parse_task(&name, &body).map_err(|e| anyhow::anyhow!("task {name}: {e}"))?;
            container_of(&t.app).map_err(|e| anyhow::anyhow!("task {name}: {e}"))?;
            ctx.client
                .kv_put(&l.task(&name), &body, &KvPutOptions::default())
                .await?;
            outln!(
                "task {name} stored: {} replica(s) of {:?}",
                t.replication,
                t.app.command
            );
        }
        TaskCommand::Rm(a) => {
            let key = l.task(&a.name);
            let (entry, _) = ctx.client.kv_get(&key, &QueryOptions::default()).await?;
            if entry.is_none() {
                bail!("no task named {}", a.name);
            }
            ctx.client.kv_delete(&key, false, None).await?;
            outln!("task {} removed; its app stops on every node", a.name);
        }
        TaskCommand::Ls(a) => {
            let q = QueryOptions::default();
            let (entries, _) = ctx.client.kv_list(&l.tasks(), &q).await?;
            let (tasks, invalid) = read_tasks(&l, kv(&entries));
            let topo = placements(ctx, &l).await?;
            let mut hosts: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for (host, names) in &topo {
                for n in names {
                    hosts.entry(n.as_str()).or_default().push(host.as_str());
                }
            }
            if a.json {
                let v: BTreeMap<&str, Value> = tasks
                    .iter()
                    .map(|(n, t)| {
                        (
                            n.as_str(),
                            serde_json::json!({
                                "replication": t.replication,
                                "command": t.app.command,
                                "hosts": hosts.get(n.as_str()).cloned().unwrap_or_default(),
                            }),
                        )
                    })
                    .chain(invalid.iter().map(|(n, e)| {
                        (n.as_str(), serde_json::json!({ "invalid": e.to_string() }))
                    }))
                    .collect();
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let mut rows: Vec<Vec<String>> = tasks
                    .iter()
                    .map(|(n, t)| {
                        let on = hosts.get(n.as_str()).cloned().unwrap_or_default();
                        vec![
                            n.clone(),
                            format!("{}/{}", on.len(), t.replication),
                            on.join(","),
                            t.app.command.clone(),
                        ]
                    })
                    .collect();
                rows.extend(invalid.iter().map(|(n, e)| {
                    vec![n.clone(), "-".into(), "-".into(), format!("INVALID: {e}")]
                }));
                out!("{}", table(&["TASK", "PLACED", "HOSTS", "COMMAND"], &rows));
            }
        }
    }
    Ok(0)
}

pub async fn app(ctx: &Ctx, cmd: AppCommand) -> anyhow::Result<i32> {
    match cmd {
        AppCommand::Ls(a) => app_ls(ctx, a).await,
        AppCommand::Logs(a) => app_logs(ctx, a).await,
    }
}

async fn app_logs(ctx: &Ctx, a: AppLogsArgs) -> anyhow::Result<i32> {
    let l = layout(ctx);
    let nodes: Vec<String> = match a.node {
        Some(n) => vec![n],
        None => placements(ctx, &l)
            .await?
            .into_iter()
            .filter(|(_, names)| names.contains(&a.name))
            .map(|(host, _)| host)
            .collect(),
    };
    if nodes.is_empty() {
        bail!(
            "app {} is placed on no node; give -n NODE for a node it ran on",
            a.name
        );
    }
    let q = vec![("name", a.name.clone())];
    let many = nodes.len() > 1;
    for node in nodes {
        if many {
            outln!("==> {node} <==");
        }
        super::logs::print_streams(ctx, &node, "/v1/app-logs", &q, a.stream).await?;
    }
    Ok(0)
}

async fn app_ls(ctx: &Ctx, a: JsonArg) -> anyhow::Result<i32> {
    let l = layout(ctx);
    let (entries, _) = ctx
        .client
        .kv_list(&l.status_prefix(), &QueryOptions::default())
        .await?;
    let mut rows = Vec::new();
    let mut all = BTreeMap::new();
    // Each node's containers' use, from its `resource` report; an unreadable one shows none.
    let (reports, _) = read_reports(&l, kv(&entries));
    for e in &entries {
        let Some(host) = e
            .key
            .strip_prefix(&l.status_prefix())
            .and_then(|r| r.strip_suffix("/applications"))
        else {
            continue;
        };
        let apps: Applications = match wire::decode("applications report", &e.value) {
            Ok(a) => a,
            Err(err) => {
                eprintln!("servant: node {host}: {err}");
                continue;
            }
        };
        for (name, s) in &apps {
            let mut row = vec![
                host.to_string(),
                name.clone(),
                s.state_word().to_string(),
                match s.health {
                    AppHealth::Healthy => "healthy",
                    AppHealth::Unhealthy => "unhealthy",
                }
                .to_string(),
                s.pid.to_string(),
                s.last_start_time.clone(),
                s.restarts.to_string(),
            ];
            row.extend(container_cells(reports.get(host), name));
            rows.push(row);
        }
        all.insert(host.to_string(), apps);
    }
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        out!(
            "{}",
            table(
                &[
                    "NODE", "APP", "STATUS", "HEALTH", "PID", "STARTED", "RESTARTS", "CPU",
                    "MEMORY"
                ],
                &rows
            )
        );
    }
    Ok(0)
}

/// The CPU and memory columns of app `name`'s row: its containers' use on that node, from the
/// node's report ("-" for a process app, or before the node has reported its containers).
fn container_cells(report: Option<&ResourceReport>, name: &str) -> [String; 2] {
    let cs: Vec<_> = report
        .map(|r| r.app_containers(name).collect())
        .unwrap_or_default();
    if cs.is_empty() {
        return ["-".into(), "-".into()];
    }
    let cpu: f64 = cs.iter().map(|c| c.cpu_percent).sum();
    let mem: u64 = cs.iter().map(|c| c.memory_bytes).sum();
    let limit: u64 = cs.iter().map(|c| c.memory_limit_bytes).sum();
    [
        format!("{cpu:.2}%"),
        format!("{} / {}", mib(mem), mib(limit)),
    ]
}

/// Bytes in MiB with one decimal, as `docker stats` shows memory.
fn mib(b: u64) -> String {
    format!("{:.1}MiB", b as f64 / (1024.0 * 1024.0))
}

/// `servant topology`: hosts × apps, the leader, unplaced replicas and invalid tasks.
pub async fn topology(ctx: &Ctx, a: JsonArg) -> anyhow::Result<i32> {
    let l = layout(ctx);
    let topo = placements(ctx, &l).await?;
    // No report yet (no leader has run): nothing unplaced or invalid to show. An unreadable one
    // is said, and the placements are still shown.
    let report = match ctx.client.kv_get_raw(&l.schedule()).await? {
        Some(b) => match ScheduleReport::parse(&b) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("servant: {}: {e}", l.schedule());
                None
            }
        },
        None => None,
    };
    let leader = ctx
        .client
        .kv_get_raw(&l.leader())
        .await?
        .map(|b| String::from_utf8_lossy(&b).to_string());
    if a.json {
        let v = serde_json::json!({
            "leader": leader,
            "topology": topo,
            "unplaced": report.as_ref().map(|r| &r.unplaced),
            "invalid": report.as_ref().map(|r| &r.invalid),
        });
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    let apps: BTreeSet<&String> = topo.values().flatten().collect();
    let mut header = vec!["HOST"];
    header.extend(apps.iter().map(|s| s.as_str()));
    let rows: Vec<Vec<String>> = topo
        .iter()
        .map(|(host, names)| {
            let mut r = vec![host.clone()];
            r.extend(apps.iter().map(|a| {
                if names.contains(*a) {
                    "x".to_string()
                } else {
                    String::new()
                }
            }));
            r
        })
        .collect();
    outln!("leader: {}", leader.as_deref().unwrap_or("(none)"));
    out!("{}", table(&header, &rows));
    if let Some(r) = &report {
        for u in &r.unplaced {
            outln!("UNPLACED {}: {}", u.task, u.reason);
        }
        for (name, why) in &r.invalid {
            outln!("INVALID {name}: {why}");
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::resource::ContainerUsage;

    #[test]
    fn an_app_row_shows_its_containers_use() {
        let report = serde_json::json!({
            "host": "h1", "pid": 1, "appmgr_start_time": "", "systime": "", "cpu_cores": 1,
            "cpu_processors": 1, "cpu_sockets": 1, "mem_total_bytes": 1, "mem_free_bytes": 1,
            "mem_used_bytes": 1, "swap_total_bytes": 0, "swap_free_bytes": 0,
            "load_average": {"1min": 0.0, "5min": 0.0, "15min": 0.0}, "fs": [], "net": [],
            "labels": {}
        });
        let mut r = ResourceReport::parse(report.to_string().as_bytes()).unwrap();
        assert_eq!(container_cells(Some(&r), "web"), ["-", "-"]);
        assert_eq!(container_cells(None, "web"), ["-", "-"]);
        let c = |app: &str, cpu, mem| ContainerUsage {
            id: format!("{app}{cpu}"),
            name: "n".into(),
            image: "i".into(),
            job: None,
            app: Some(app.into()),
            cpu_percent: cpu,
            memory_bytes: mem,
            memory_limit_bytes: 64 << 20,
        };
        r.containers = Some(vec![c("web", 12.5, 30 << 20), c("db", 99.0, 1)]);
        assert_eq!(
            container_cells(Some(&r), "web"),
            ["12.50%", "30.0MiB / 64.0MiB"]
        );
    }
}
