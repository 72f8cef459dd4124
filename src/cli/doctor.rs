//! `servant doctor`: what is open to whom on this Consul. Findings: prefixes anyone may write
//! without a token (all of them with ACLs off, said with whether Consul's HTTP API is reachable
//! beyond this host), and prefixes the agent's token may write that no agent needs. Then the
//! rights of the agent's token (its `--config`'s `token`, else this command's) and of no token
//! on each prefix, checked against Consul without changing anything.
//!
//! Exit 0 when nothing is open, 2 with findings, 1 on an error.

use clap::Args;

use super::Ctx;
use crate::agent::config::AgentConfig;
use crate::agent::doctor::{findings, rights, Exposure, Right};
use crate::consul::ConsulError;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The agent's configuration file: its `token` is the agent token checked (else this
    /// command's token), and its `kv_prefix` is used.
    #[arg(long, env = "SERVANT_CONFIG")]
    pub config: Option<std::path::PathBuf>,
}

fn table(title: &str, rs: &[Right]) -> anyhow::Result<()> {
    outln!("{title}");
    let w = rs.iter().map(|r| r.prefix.len()).max().unwrap_or(0);
    for r in rs {
        outln!(
            "  {:w$}  {:5} {:5}  {}",
            r.prefix,
            r.read.word("read"),
            r.write.word("write"),
            r.what
        );
    }
    Ok(())
}

pub async fn run(ctx: &Ctx, a: DoctorArgs) -> anyhow::Result<i32> {
    let cfg = a.config.as_deref().map(AgentConfig::load).transpose()?;
    let layout = match &cfg {
        Some(c) => crate::wire::Namespace::new(&c.kv_prefix),
        None => ctx.layout.clone(),
    };
    let reached = ctx.client.base_url().to_string();
    // A token without `agent` read cannot ask the local agent; the refusal itself says that
    // ACLs are on.
    let (e, node) = match ctx.client.agent_self().await {
        Ok(me) => (Exposure::of(&me, &reached), me.node()?.to_string()),
        Err(ConsulError::PermissionDenied { .. }) => {
            outln!("(this token may not read the local agent: its node's queue is not checked)");
            let e = Exposure {
                acls_enabled: true,
                http_addrs: vec![reached.clone()],
            };
            (e, String::new())
        }
        Err(other) => return Err(other.into()),
    };
    outln!(
        "consul: {} (node {node}): ACLs {}, HTTP API on {}",
        reached,
        if e.acls_enabled { "on" } else { "off" },
        e.http_addrs.join(", ")
    );
    let anonymous = rights(&ctx.client.with_token(None), &layout, &node).await;
    let agent_token = cfg
        .as_ref()
        .and_then(|c| c.token.clone())
        .or_else(|| ctx.client.token().map(str::to_string));
    let agent = match &agent_token {
        Some(t) => Some(rights(&ctx.client.with_token(Some(t.clone())), &layout, &node).await),
        None => None,
    };
    let found = findings(&e, &anonymous, agent.as_deref());
    if found.is_empty() {
        outln!("findings: none");
    } else {
        outln!("findings: {}", found.len());
        for f in &found {
            outln!("  ! {f}");
        }
    }
    table("rights without a token:", &anonymous)?;
    match &agent {
        Some(rs) => table("rights of the agent's token:", rs)?,
        None => outln!("rights of the agent's token: no token given (--config with a token, -token or CONSUL_HTTP_TOKEN)"),
    }
    Ok(if found.is_empty() { 0 } else { 2 })
}
