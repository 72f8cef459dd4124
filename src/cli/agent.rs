//! `servant agent`: flags, environment and config file merged into one `AgentConfig`.

use std::path::PathBuf;

use clap::Args;

use crate::agent::config::AgentConfig;
use crate::util::duration::parse_duration;

fn duration(s: &str) -> Result<std::time::Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

/// Flags override environment variables (SERVANT_*), which override the config file.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Config file, TOML or JSON (by extension).
    #[arg(long, env = "SERVANT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Job logs and the launched Consul's data go here.
    #[arg(long, env = "SERVANT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Jobs run at once on this node.
    #[arg(long, env = "SERVANT_MAX_PARALLEL")]
    pub max_parallel: Option<usize>,
    /// Node session TTL (min 10s).
    #[arg(long, env = "SERVANT_SESSION_TTL", value_parser = duration)]
    pub session_ttl: Option<std::time::Duration>,
    /// Lock-delay of the node session.
    #[arg(long, env = "SERVANT_LOCK_DELAY", value_parser = duration)]
    pub lock_delay: Option<std::time::Duration>,
    /// Claim delay per rendezvous rank.
    #[arg(long, env = "SERVANT_CLAIM_STAGGER", value_parser = duration)]
    pub claim_stagger: Option<std::time::Duration>,
    /// Time running jobs get to finish after SIGINT/SIGTERM.
    #[arg(long, env = "SERVANT_SHUTDOWN_GRACE", value_parser = duration)]
    pub shutdown_grace: Option<std::time::Duration>,
    /// Time between SIGTERM and SIGKILL of a job.
    #[arg(long, env = "SERVANT_KILL_GRACE", value_parser = duration)]
    pub kill_grace: Option<std::time::Duration>,
    /// Bytes of stdout and of stderr kept in a KV result.
    #[arg(long, env = "SERVANT_OUTPUT_CAP")]
    pub output_cap: Option<usize>,
    /// Age after which results are deleted.
    #[arg(long, env = "SERVANT_RESULT_MAX_AGE", value_parser = duration)]
    pub result_max_age: Option<std::time::Duration>,
    /// `wait` of blocking queries.
    #[arg(long, env = "SERVANT_WATCH_WAIT", value_parser = duration)]
    pub watch_wait: Option<std::time::Duration>,
    /// Address of the agent's own HTTP API.
    #[arg(long, env = "SERVANT_API_ADDR")]
    pub api_addr: Option<String>,
    /// Launch a Consul agent that joins this address (repeatable).
    #[arg(long)]
    pub join: Vec<String>,
    /// Launch Consul as a server.
    #[arg(long)]
    pub server: bool,
    /// Launch Consul as a server expecting N servers.
    #[arg(long, value_name = "N")]
    pub bootstrap_expect: Option<u32>,
    /// Launch a throwaway `consul agent -dev`.
    #[arg(long)]
    pub consul_dev: bool,
    /// Launch a Consul agent with only the settings below.
    #[arg(long)]
    pub launch_consul: bool,
    /// The launched Consul's -bind address.
    #[arg(long)]
    pub bind: Option<String>,
    /// The launched Consul's -client address (its HTTP API listens there).
    #[arg(long)]
    pub client: Option<String>,
    /// The launched Consul's node name.
    #[arg(long)]
    pub node: Option<String>,
    /// The launched Consul's -data-dir (default <data-dir>/consul).
    #[arg(long)]
    pub consul_data_dir: Option<PathBuf>,
    /// The consul binary (default CONSUL_BIN, then PATH).
    #[arg(long)]
    pub consul_bin: Option<String>,
    /// An extra argument for `consul agent` (repeatable).
    #[arg(long, allow_hyphen_values = true)]
    pub consul_arg: Vec<String>,
}

impl AgentArgs {
    /// The merged configuration.
    pub fn config(
        &self,
        http_addr: Option<String>,
        token: Option<String>,
        kv_prefix: &str,
    ) -> anyhow::Result<AgentConfig> {
        let mut c = match &self.config {
            Some(p) => AgentConfig::load(p)?,
            None => AgentConfig::default(),
        };
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f.clone() { c.$f = v; } )* };
        }
        set!(
            data_dir,
            max_parallel,
            session_ttl,
            lock_delay,
            claim_stagger,
            shutdown_grace,
            kill_grace,
            output_cap,
            result_max_age,
            watch_wait,
            api_addr
        );
        if http_addr.is_some() {
            c.http_addr = http_addr;
        }
        if token.is_some() {
            c.token = token;
        }
        if !kv_prefix.is_empty() {
            c.kv_prefix = kv_prefix.to_string();
        }
        let l = &mut c.consul;
        l.join.extend(self.join.iter().cloned());
        l.server |= self.server;
        l.dev |= self.consul_dev;
        l.launch |= self.launch_consul;
        if self.bootstrap_expect.is_some() {
            l.bootstrap_expect = self.bootstrap_expect;
        }
        for (dst, src) in [
            (&mut l.bind, &self.bind),
            (&mut l.client, &self.client),
            (&mut l.node, &self.node),
            (&mut l.bin, &self.consul_bin),
        ] {
            if src.is_some() {
                *dst = src.clone();
            }
        }
        if self.consul_data_dir.is_some() {
            l.data_dir = self.consul_data_dir.clone();
        }
        l.extra_args.extend(self.consul_arg.iter().cloned());
        c.validate()?;
        Ok(c)
    }
}

/// Runs the agent.
pub async fn run(
    args: AgentArgs,
    http_addr: Option<String>,
    token: Option<String>,
    kv_prefix: &str,
) -> anyhow::Result<()> {
    let cfg = args.config(http_addr, token, kv_prefix)?;
    crate::agent::run::run(cfg).await?;
    Ok(())
}
