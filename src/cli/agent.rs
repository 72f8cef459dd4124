//! `servant agent`: flags, environment and config file merged into one `AgentConfig`.

use std::path::PathBuf;

use clap::Args;

use crate::agent::config::AgentConfig;
use crate::util::duration::parse_duration;

/// TLS material from the global flags (`--ca-file`, `--client-cert`, `--client-key`).
#[derive(Debug, Default)]
pub struct Tls {
    pub ca_file: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
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
    #[arg(long, env = "SERVANT_SESSION_TTL", value_parser = parse_duration)]
    pub session_ttl: Option<std::time::Duration>,
    /// Lock-delay of the node session.
    #[arg(long, env = "SERVANT_LOCK_DELAY", value_parser = parse_duration)]
    pub lock_delay: Option<std::time::Duration>,
    /// Claim delay per rendezvous rank.
    #[arg(long, env = "SERVANT_CLAIM_STAGGER", value_parser = parse_duration)]
    pub claim_stagger: Option<std::time::Duration>,
    /// Time running jobs get to finish after SIGINT/SIGTERM.
    #[arg(long, env = "SERVANT_SHUTDOWN_GRACE", value_parser = parse_duration)]
    pub shutdown_grace: Option<std::time::Duration>,
    /// Time between SIGTERM and SIGKILL of a job.
    #[arg(long, env = "SERVANT_KILL_GRACE", value_parser = parse_duration)]
    pub kill_grace: Option<std::time::Duration>,
    /// Bytes of stdout and of stderr kept in a KV result.
    #[arg(long, env = "SERVANT_OUTPUT_CAP")]
    pub output_cap: Option<usize>,
    /// Age after which results are deleted.
    #[arg(long, env = "SERVANT_RESULT_MAX_AGE", value_parser = parse_duration)]
    pub result_max_age: Option<std::time::Duration>,
    /// How often old results are looked for.
    #[arg(long, env = "SERVANT_RESULT_GC_INTERVAL", value_parser = parse_duration)]
    pub result_gc_interval: Option<std::time::Duration>,
    /// `wait` of blocking queries.
    #[arg(long, env = "SERVANT_WATCH_WAIT", value_parser = parse_duration)]
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
    /// Run the embedded single-node server: nothing else needed (data under --data-dir).
    #[arg(long)]
    pub dev: bool,
    /// Where the embedded server listens.
    #[arg(long, env = "SERVANT_DEV_LISTEN")]
    pub dev_listen: Option<String>,
    /// The embedded server's Consul DNS port (UDP and TCP, on the IP of --dev-listen); -1
    /// turns DNS off, as Consul's -dns-port.
    #[arg(long, env = "SERVANT_DNS_PORT", allow_negative_numbers = true)]
    pub dns_port: Option<i32>,
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
    /// A label of this node for app placement, KEY=VALUE (repeatable; adds to the config's
    /// `[apps] labels`).
    #[arg(long, value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// Do not report, lead or run apps on this node.
    #[arg(long)]
    pub no_apps: bool,
    /// Keep docker jobs' exited containers once their results are written (`[docker]
    /// keep_containers`).
    #[arg(long)]
    pub keep_containers: bool,
    /// How long a pull of a docker job's missing image may take.
    #[arg(long, env = "SERVANT_PULL_TIMEOUT", value_parser = parse_duration)]
    pub pull_timeout: Option<std::time::Duration>,
    /// Registrator mode: keep the local Consul agent's services equal to the running
    /// containers' published ports (`[docker] registrator`).
    #[arg(long)]
    pub registrator: bool,
    /// Registrator: register the container's IP and exposed port, not the published ones.
    #[arg(long)]
    pub internal: bool,
    /// Registrator: the address to register (default: the node's advertise address).
    #[arg(long, value_name = "IP")]
    pub ip: Option<String>,
    /// Registrator: tags added to every service, a comma list.
    #[arg(long, value_name = "TAGS", value_delimiter = ',')]
    pub tags: Vec<String>,
    /// Registrator: only containers with SERVICE_NAME.
    #[arg(long)]
    pub explicit: bool,
    /// Registrator: when an exited container's services go: always, or on-success (a failed
    /// container's stay until it is removed).
    #[arg(long, value_name = "MODE", value_parser = ["always", "on-success"])]
    pub deregister: Option<String>,
    /// Registrator: between full comparisons of containers and services.
    #[arg(long, env = "SERVANT_RESYNC", value_parser = parse_duration)]
    pub resync: Option<std::time::Duration>,
    /// Registrator: only containers with this label, KEY or KEY=VALUE.
    #[arg(long, value_name = "LABEL")]
    pub only_label: Option<String>,
}

impl AgentArgs {
    /// The merged configuration.
    pub fn config(
        &self,
        http_addr: Option<String>,
        token: Option<String>,
        tls: Tls,
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
            result_gc_interval,
            watch_wait,
            api_addr,
            dns_port
        );
        if http_addr.is_some() {
            c.http_addr = http_addr;
        }
        if token.is_some() {
            c.token = token;
        }
        for (dst, src) in [
            (&mut c.ca_cert, tls.ca_file),
            (&mut c.client_cert, tls.client_cert),
            (&mut c.client_key, tls.client_key),
        ] {
            if src.is_some() {
                *dst = src;
            }
        }
        if !kv_prefix.is_empty() {
            c.kv_prefix = kv_prefix.to_string();
        }
        c.dev |= self.dev;
        if let Some(d) = &self.dev_listen {
            c.dev_listen = d.clone();
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
        for kv in &self.label {
            let Some((k, v)) = kv.split_once('=').filter(|(k, _)| !k.is_empty()) else {
                anyhow::bail!("--label {kv:?}: expected KEY=VALUE");
            };
            c.apps.labels.insert(k.to_string(), v.to_string());
        }
        if self.no_apps {
            c.apps.enabled = false;
        }
        c.docker.keep_containers |= self.keep_containers;
        if let Some(t) = self.pull_timeout {
            c.docker.pull_timeout = t;
        }
        let d = &mut c.docker;
        d.registrator |= self.registrator;
        d.internal |= self.internal;
        d.explicit |= self.explicit;
        if self.ip.is_some() {
            d.ip = self.ip.clone();
        }
        d.tags.extend(
            self.tags
                .iter()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty()),
        );
        if let Some(m) = &self.deregister {
            d.deregister = m.parse()?;
        }
        if let Some(r) = self.resync {
            d.resync = r;
        }
        if self.only_label.is_some() {
            d.only_label = self.only_label.clone();
        }
        c.validate()?;
        Ok(c)
    }
}

/// Runs the agent.
pub async fn run(
    args: AgentArgs,
    http_addr: Option<String>,
    token: Option<String>,
    tls: Tls,
    kv_prefix: &str,
) -> anyhow::Result<()> {
    let cfg = args.config(http_addr, token, tls, kv_prefix)?;
    crate::agent::run::run(cfg).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};

    fn agent_config(args: &[&str]) -> crate::agent::config::AgentConfig {
        let mut full = vec!["servant", "agent"];
        full.extend_from_slice(args);
        let cli = Cli::parse_from(crate::cli::normalize_args(
            full.iter().map(|s| s.to_string()).collect(),
        ));
        match cli.command {
            Command::Agent(a) => a
                .config(
                    cli.http_addr,
                    cli.token,
                    super::Tls {
                        ca_file: cli.ca_file,
                        client_cert: cli.client_cert,
                        client_key: cli.client_key,
                    },
                    &cli.kv_prefix,
                )
                .unwrap(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn every_flag_reaches_the_config() {
        let c = agent_config(&[
            "--data-dir",
            "/d",
            "--max-parallel",
            "3",
            "--session-ttl",
            "20s",
            "--lock-delay",
            "2s",
            "--claim-stagger",
            "5ms",
            "--shutdown-grace",
            "7s",
            "--kill-grace",
            "3s",
            "--output-cap",
            "1000",
            "--result-max-age",
            "1h",
            "--result-gc-interval",
            "9s",
            "--watch-wait",
            "30s",
            "--api-addr",
            "127.0.0.1:1",
            "-join",
            "127.0.0.2",
            "-server",
            "-bootstrap-expect",
            "3",
            "--bind",
            "127.0.0.3",
            "--client",
            "127.0.0.4",
            "--node",
            "n",
            "--consul-bin",
            "/c",
            "--consul-arg=-hcl=x",
            "--kv-prefix",
            "ns",
            "--http-addr",
            "h:1",
            "--token",
            "t",
            "-dns-port",
            "-1",
            "-registrator",
            "-internal",
            "-ip",
            "10.1.2.3",
            "-tags",
            "a,b",
            "-explicit",
            "-deregister",
            "on-success",
            "-resync",
            "2s",
            "-only-label",
            "team=a",
        ]);
        use std::time::Duration as D;
        assert_eq!(c.data_dir, std::path::PathBuf::from("/d"));
        assert_eq!(c.max_parallel, 3);
        assert_eq!(
            (c.session_ttl, c.lock_delay, c.claim_stagger),
            (D::from_secs(20), D::from_secs(2), D::from_millis(5))
        );
        assert_eq!(
            (c.shutdown_grace, c.kill_grace),
            (D::from_secs(7), D::from_secs(3))
        );
        assert_eq!(c.output_cap, 1000);
        assert_eq!(
            (c.result_max_age, c.result_gc_interval, c.watch_wait),
            (D::from_secs(3600), D::from_secs(9), D::from_secs(30))
        );
        assert_eq!(c.api_addr, "127.0.0.1:1");
        assert_eq!(c.consul.join, vec!["127.0.0.2"]);
        assert!(c.consul.server);
        assert_eq!(c.consul.bootstrap_expect, Some(3));
        assert_eq!(
            (
                c.consul.bind.as_deref(),
                c.consul.client.as_deref(),
                c.consul.node.as_deref()
            ),
            (Some("127.0.0.3"), Some("127.0.0.4"), Some("n"))
        );
        assert_eq!(c.consul.bin.as_deref(), Some("/c"));
        assert_eq!(c.consul.extra_args, vec!["-hcl=x"]);
        assert_eq!(c.dns_port, -1);
        let r = c.docker.registrator();
        assert!(r.enabled && r.internal && r.explicit);
        assert_eq!(r.ip.as_deref(), Some("10.1.2.3"));
        assert_eq!(r.tags, vec!["a", "b"]);
        assert_eq!(r.deregister, crate::registrator::Deregister::OnSuccess);
        assert_eq!(r.resync, D::from_secs(2));
        assert_eq!(r.only_label.as_deref(), Some("team=a"));
        assert_eq!(
            (
                c.kv_prefix.as_str(),
                c.http_addr.as_deref(),
                c.token.as_deref()
            ),
            ("ns", Some("h:1"), Some("t"))
        );
    }

    #[test]
    fn flags_override_the_environment_which_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "output_cap = 100\nkill_grace = \"9s\"\nmax_parallel = 2\n",
        )
        .unwrap();
        // Only this test sets this variable.
        std::env::set_var("SERVANT_OUTPUT_CAP", "200");
        let c = agent_config(&["--config", f.to_str().unwrap(), "--max-parallel", "4"]);
        std::env::remove_var("SERVANT_OUTPUT_CAP");
        assert_eq!(c.output_cap, 200, "environment over file");
        assert_eq!(c.max_parallel, 4, "flag over file");
        assert_eq!(
            c.kill_grace,
            std::time::Duration::from_secs(9),
            "file over default"
        );
    }
}
