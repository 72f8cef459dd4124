//! The `servant` command line: one flag table (clap) and one file per command.
//!
//! Like Consul's CLI (Go flags), long options may be written with one dash (`-join`, `-all`):
//! `normalize_args` rewrites them before clap sees them.

pub mod agent;
pub mod apps;
pub mod check;
pub mod jobs;
pub mod kv;
pub mod logs;
pub mod node;
pub mod show;
pub mod start;
pub mod template;

use clap::{CommandFactory, Parser, Subcommand};

use crate::consul::{Client, ClientConfig};
use crate::jobs::layout::Layout;

/// consul-servant: run commands and apps across a Consul cluster.
#[derive(Debug, Parser)]
#[command(name = "servant", version, about, propagate_version = true)]
pub struct Cli {
    /// Consul's HTTP address.
    #[arg(long, global = true, env = "CONSUL_HTTP_ADDR", value_name = "ADDR")]
    pub http_addr: Option<String>,
    /// Consul ACL token.
    #[arg(
        long,
        global = true,
        env = "CONSUL_HTTP_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// CA bundle to verify Consul's HTTPS certificate.
    #[arg(long, global = true, env = "CONSUL_CACERT", value_name = "FILE")]
    pub ca_file: Option<String>,
    /// Client certificate for Consul's HTTPS (verify_incoming).
    #[arg(long, global = true, env = "CONSUL_CLIENT_CERT", value_name = "FILE")]
    pub client_cert: Option<String>,
    /// Key of the client certificate.
    #[arg(long, global = true, env = "CONSUL_CLIENT_KEY", value_name = "FILE")]
    pub client_key: Option<String>,
    /// Namespace of every KV path (must match the agents').
    #[arg(
        long,
        global = true,
        env = "SERVANT_KV_PREFIX",
        value_name = "PREFIX",
        default_value = ""
    )]
    pub kv_prefix: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent on this node.
    Agent(Box<agent::AgentArgs>),
    /// Start a job in the cluster.
    #[command(visible_alias = "s")]
    Start(start::StartArgs),
    /// Show a job: queued, running (where, since when) or done.
    #[command(visible_alias = "w")]
    Show(show::ShowArgs),
    /// List queued, running and recent jobs.
    Jobs(jobs::JobsArgs),
    /// Print a job's full output, from the node that ran it.
    Logs(logs::LogsArgs),
    /// Read and write Consul's KV store.
    #[command(subcommand)]
    Kv(kv::KvCommand),
    /// Nodes of the cluster.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Replicated app tasks (`appmgr/task/`).
    #[command(subcommand)]
    Task(apps::TaskCommand),
    /// The apps running on the nodes.
    #[command(subcommand)]
    App(apps::AppCommand),
    /// Hosts × apps as placed by the leader, with unplaced replicas and invalid tasks.
    Topology(apps::JsonArg),
    /// Health checks (python-powerconsul's): one JSON line, exit 0/1/2.
    #[command(subcommand)]
    Check(check::CheckCommand),
    /// Run the trigger action of a check's state by hand.
    Trigger(check::TriggerArgs),
    /// A `consul watch -type=checks` handler: runs the triggers of this node's checks in a state.
    Watch(check::WatchArgs),
    /// Render templates from Consul's catalog and KV, and keep them current (consul-template).
    Template(template::TemplateArgs),
    /// Get an item from the KV store (consul_visa).
    #[command(name = "kv-get")]
    KvGet(kv::KeyArg),
    /// List keys in the KV store (consul_visa).
    #[command(name = "kv-keys")]
    KvKeys(kv::KeysArgs),
    /// List items in the KV store (consul_visa).
    #[command(name = "kv-list")]
    KvList(kv::PrefixArg),
    /// Delete a tree in the KV store (consul_visa).
    #[command(name = "kv-deltree")]
    KvDeltree(kv::PrefixArg),
    /// List nodes (consul_visa).
    #[command(name = "node-list")]
    NodeList(node::ListArgs),
    /// Eject a failed node (consul_visa).
    #[command(name = "node-eject")]
    NodeEject(node::EjectArgs),
    /// Internal: the process-group leader that runs a job's command.
    #[command(name = "__job-shim", hide = true)]
    JobShim {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// What every client command needs.
pub struct Ctx {
    pub client: Client,
    pub layout: Layout,
}

impl Cli {
    pub fn ctx(&self) -> anyhow::Result<Ctx> {
        let mut cfg = ClientConfig::from_env();
        if self.http_addr.is_some() {
            cfg.address = self.http_addr.clone();
        }
        if self.token.is_some() {
            cfg.token = self.token.clone();
        }
        for (dst, src) in [
            (&mut cfg.ca_cert, &self.ca_file),
            (&mut cfg.client_cert, &self.client_cert),
            (&mut cfg.client_key, &self.client_key),
        ] {
            if src.is_some() {
                *dst = src.clone();
            }
        }
        Ok(Ctx {
            client: Client::new(&cfg)?,
            layout: Layout::new(&self.kv_prefix),
        })
    }
}

/// Rewrites Go-style single-dash long options (`-join x`, `-all`) to clap's `--join x`.
pub fn normalize_args(args: Vec<String>) -> Vec<String> {
    let mut longs = std::collections::HashSet::new();
    let mut takes_value = std::collections::HashSet::new();
    fn walk(
        c: &clap::Command,
        longs: &mut std::collections::HashSet<String>,
        takes: &mut std::collections::HashSet<String>,
    ) {
        for a in c.get_arguments() {
            let value = a.get_num_args().map(|n| n.takes_values()).unwrap_or(false)
                || matches!(
                    a.get_action(),
                    clap::ArgAction::Set | clap::ArgAction::Append
                );
            if let Some(l) = a.get_long() {
                longs.insert(l.to_string());
                if value {
                    takes.insert(format!("--{l}"));
                }
            }
            if let Some(s) = a.get_short() {
                if value {
                    takes.insert(format!("-{s}"));
                }
            }
        }
        for s in c.get_subcommands() {
            walk(s, longs, takes);
        }
    }
    let cmd = Cli::command();
    walk(&cmd, &mut longs, &mut takes_value);
    let mut out = Vec::with_capacity(args.len());
    let mut after_dashes = false;
    let mut prev_takes_value = false;
    for (i, a) in args.into_iter().enumerate() {
        if i == 0 || after_dashes || prev_takes_value {
            prev_takes_value = false;
            out.push(a);
            continue;
        }
        if a == "--" || a == "__job-shim" {
            after_dashes = true;
            out.push(a);
            continue;
        }
        let rewritten = match a.strip_prefix('-') {
            Some(rest) if !rest.starts_with('-') && rest.len() > 1 => {
                let name = rest.split('=').next().unwrap_or(rest);
                if longs.contains(name) {
                    format!("-{a}")
                } else {
                    a
                }
            }
            _ => a,
        };
        prev_takes_value = takes_value.contains(&rewritten) && !rewritten.contains('=');
        out.push(rewritten);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn go_style_flags_become_long_flags() {
        assert_eq!(
            normalize_args(v(&["servant", "start", "-all", "-c", "echo hi", "job1"])),
            v(&["servant", "start", "--all", "-c", "echo hi", "job1"])
        );
        assert_eq!(
            normalize_args(v(&["servant", "agent", "-join", "127.0.0.2", "-server"])),
            v(&["servant", "agent", "--join", "127.0.0.2", "--server"])
        );
        assert_eq!(
            normalize_args(v(&["servant", "agent", "-bootstrap-expect=3"])),
            v(&["servant", "agent", "--bootstrap-expect=3"])
        );
    }

    #[test]
    fn values_are_never_rewritten() {
        assert_eq!(
            normalize_args(v(&["servant", "start", "-c", "-all", "j"])),
            v(&["servant", "start", "-c", "-all", "j"])
        );
        assert_eq!(
            normalize_args(v(&["servant", "kv", "put", "k", "-la"])),
            v(&["servant", "kv", "put", "k", "-la"])
        );
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
