//! `servant node list|eject`, and consul_visa's `node-list`/`node-eject`.

use clap::{Args, Subcommand};

use super::table::table;
use super::Ctx;

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EjectArgs {
    /// The failed node to force out of the cluster.
    pub node: String,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List the cluster's nodes with their gossip status.
    List(ListArgs),
    /// Force a failed node to leave.
    Eject(EjectArgs),
}

pub async fn run(ctx: &Ctx, cmd: NodeCommand) -> anyhow::Result<i32> {
    match cmd {
        NodeCommand::List(a) => {
            let members = ctx.client.agent_members().await?;
            if a.json {
                outln!("{}", serde_json::to_string_pretty(&members)?);
            } else {
                let rows: Vec<Vec<String>> = members
                    .iter()
                    .map(|m| {
                        vec![
                            m.name.clone(),
                            format!("{}:{}", m.addr, m.port),
                            m.status_name().to_string(),
                            m.tags.get("role").cloned().unwrap_or_default(),
                        ]
                    })
                    .collect();
                out!("{}", table(&["NODE", "ADDRESS", "STATUS", "ROLE"], &rows));
            }
        }
        NodeCommand::Eject(a) => {
            let members = ctx.client.agent_members().await?;
            match members.iter().find(|m| m.name == a.node) {
                None => anyhow::bail!("no node named {} in the cluster", a.node),
                Some(m) if m.is_alive() => anyhow::bail!(
                    "node {} is alive; only a failed node can be ejected",
                    a.node
                ),
                Some(_) => {}
            }
            ctx.client.agent_force_leave(&a.node).await?;
            eprintln!("ejected {}", a.node);
        }
    }
    Ok(0)
}
