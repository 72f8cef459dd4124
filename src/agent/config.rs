//! Agent configuration: a TOML or JSON file, overridden by environment variables and flags (the
//! CLI applies those on top of what `load` returns).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::util::duration::parse_duration;

/// Everything the agent can be told. Field names are the file's keys.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Consul's HTTP address (CONSUL_HTTP_ADDR); default 127.0.0.1:8500, or the launched agent's.
    pub http_addr: Option<String>,
    /// ACL token (CONSUL_HTTP_TOKEN).
    pub token: Option<String>,
    /// TLS to Consul: CA bundle, client certificate and key (CONSUL_CACERT, ...).
    pub ca_cert: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    /// Where logs of jobs and the launched Consul's data live.
    pub data_dir: PathBuf,
    /// Namespaces every KV path ("" keeps consul_servant's paths).
    pub kv_prefix: String,
    /// Jobs run at once on this node.
    pub max_parallel: usize,
    /// Node session TTL (Consul's minimum is 10s).
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub session_ttl: Duration,
    /// Lock-delay of the node session: how long a dead node's jobs wait before a retry.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub lock_delay: Duration,
    /// Claim delay per rendezvous rank.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub claim_stagger: Duration,
    /// Running jobs' time to finish after SIGINT/SIGTERM.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub shutdown_grace: Duration,
    /// Between SIGTERM and SIGKILL of a job's process group.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub kill_grace: Duration,
    /// Bytes of stdout and of stderr kept in a KV result (the full log stays on disk).
    pub output_cap: usize,
    /// Results older than this are deleted.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub result_max_age: Duration,
    /// How often old results are looked for (the first pass runs within a minute of start).
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub result_gc_interval: Duration,
    /// `wait` of blocking queries.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub watch_wait: Duration,
    /// The agent's own HTTP API (job logs), registered in Consul as service `servant`.
    pub api_addr: String,
    /// Run the embedded single-node server (`servant agent -dev`) instead of talking to Consul.
    pub dev: bool,
    /// Where the embedded server listens.
    pub dev_listen: String,
    /// The embedded server's Consul DNS port, on the IP of `dev_listen`, UDP and TCP. As
    /// Consul's `-dns-port`: 0 or less (-1) turns DNS off.
    pub dns_port: i32,
    /// A Consul agent to launch and supervise; none by default.
    pub consul: LaunchConfig,
    /// Replicated apps (App Manager's `appmgr/` keys).
    pub apps: AppsConfig,
    /// Health checks, roles and triggers (python-powerconsul's).
    pub checks: ChecksConfig,
    /// Templates the agent keeps rendered (`[[template]]`, as in `servant template -config`).
    pub template: Vec<crate::templates::runner::TemplateSpec>,
    /// Their quiescence, `min[:max]`.
    pub template_wait: Option<String>,
}

/// Checks this agent registers, and the native trigger watcher.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ChecksConfig {
    /// `@ENV` and the `cluster/<env>/` of roles; default: the hostname's prefix before `-`.
    pub environment: Option<String>,
    /// Watch this node's checks and run `triggers/` actions on changes.
    pub watch: bool,
    /// A new state must hold this long before its action runs.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub debounce: Duration,
    /// An action still running after this long is killed with its process group.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub trigger_timeout: Duration,
    /// While a check stays warning or critical, its action runs again this often (a start
    /// that failed, or an action written after the check changed); 0 turns it off.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub repeat: Duration,
    /// Services to guard with `servant check service`.
    pub guard: Vec<GuardConfig>,
}

impl Default for ChecksConfig {
    fn default() -> Self {
        ChecksConfig {
            environment: None,
            watch: true,
            debounce: Duration::from_secs(1),
            trigger_timeout: Duration::from_secs(60),
            repeat: Duration::from_secs(60),
            guard: Vec::new(),
        }
    }
}

/// One guarded service: a Consul service with a `servant check service` check.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GuardConfig {
    /// The Consul service (registered by the agent, keys roles and triggers).
    pub consul_service: String,
    /// The local service the check asks about.
    pub linux_service: String,
    /// A status command instead of the service manager (0 running, 3 stopped).
    #[serde(default)]
    pub status_cmd: Option<String>,
    /// `ttl`: the agent runs the check and updates a TTL check (works with any Consul);
    /// `script`: Consul runs `servant check service` (needs Consul's `enable_script_checks`).
    #[serde(default = "ttl_mode")]
    pub mode: String,
    /// How often the check runs.
    #[serde(
        default = "ten_seconds",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub interval: Duration,
}

fn ttl_mode() -> String {
    "ttl".into()
}

fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}

/// Replicated apps: this node's reports, its part in leader election, its apps.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AppsConfig {
    /// Take part: report, stand for leader, run the apps placed here.
    pub enabled: bool,
    /// This node's labels, matched by tasks' `labels`.
    pub labels: std::collections::BTreeMap<String, String>,
    /// TTL of the apps session that holds the reports and the leader lock (App Manager's
    /// `session_TTL`). Tied to serfHealth too, so a dead node is noticed by Consul's failure
    /// detection, not by this TTL.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub session_ttl: Duration,
    /// How often the reports are rewritten (App Manager's `report_interval`); an app's change
    /// of state rewrites them at once.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub report_interval: Duration,
    /// The leader's safety re-check (App Manager's `topology_interval`); it reconciles on
    /// every change anyway.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub topology_interval: Duration,
}

impl Default for AppsConfig {
    fn default() -> Self {
        AppsConfig {
            enabled: true,
            labels: Default::default(),
            session_ttl: Duration::from_secs(30),
            report_interval: Duration::from_secs(10),
            topology_interval: Duration::from_secs(30),
        }
    }
}

/// The one-executable cluster start: launch `consul agent` beside the servant.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct LaunchConfig {
    /// Launch a Consul agent (implied by join, server, bootstrap_expect or dev).
    pub launch: bool,
    /// The consul binary; default CONSUL_BIN, then PATH.
    pub bin: Option<String>,
    /// Addresses to join (`-retry-join`).
    pub join: Vec<String>,
    pub server: bool,
    pub bootstrap_expect: Option<u32>,
    /// A throwaway in-memory `consul agent -dev`.
    pub dev: bool,
    /// Consul's `-data-dir`; default `<data_dir>/consul`.
    pub data_dir: Option<PathBuf>,
    /// Consul's `-bind` and `-client` addresses.
    pub bind: Option<String>,
    pub client: Option<String>,
    /// Consul's `-node`.
    pub node: Option<String>,
    /// More arguments passed to `consul agent` as they are.
    pub extra_args: Vec<String>,
}

impl LaunchConfig {
    pub fn wanted(&self) -> bool {
        self.launch
            || self.dev
            || self.server
            || self.bootstrap_expect.is_some()
            || !self.join.is_empty()
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            http_addr: None,
            token: None,
            ca_cert: None,
            client_cert: None,
            client_key: None,
            data_dir: PathBuf::from("servant-data"),
            kv_prefix: String::new(),
            max_parallel: 8,
            session_ttl: Duration::from_secs(15),
            lock_delay: Duration::from_secs(5),
            claim_stagger: Duration::from_millis(25),
            shutdown_grace: Duration::from_secs(30),
            kill_grace: Duration::from_secs(5),
            output_cap: 128 * 1024,
            result_max_age: Duration::from_secs(24 * 3600),
            result_gc_interval: Duration::from_secs(600),
            watch_wait: Duration::from_secs(300),
            api_addr: "127.0.0.1:8686".to_string(),
            dev: false,
            dev_listen: "127.0.0.1:8500".to_string(),
            dns_port: 8600,
            consul: LaunchConfig::default(),
            apps: AppsConfig::default(),
            checks: ChecksConfig::default(),
            template: Vec::new(),
            template_wait: None,
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("config file {path}: {detail}")]
    Parse { path: String, detail: String },
    #[error("invalid setting {field}: {detail}")]
    Invalid { field: &'static str, detail: String },
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(f64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(s) if s >= 0.0 && s.is_finite() => Ok(Duration::from_secs_f64(s)),
        Raw::Secs(s) => Err(serde::de::Error::custom(format!("invalid duration {s}"))),
        Raw::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom),
    }
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::util::duration::go_format(*d))
}

impl AgentConfig {
    /// Reads a file: `.json` as JSON, anything else as TOML.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            error: e,
        })?;
        let parsed = if path.extension().and_then(|e| e.to_str()) == Some("json") {
            serde_json::from_str(&text).map_err(|e| e.to_string())
        } else {
            toml::from_str(&text).map_err(|e| e.to_string())
        };
        parsed.map_err(|detail| ConfigError::Parse {
            path: path.display().to_string(),
            detail,
        })
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.session_ttl < Duration::from_secs(10)
            || self.session_ttl > Duration::from_secs(86400)
        {
            return Err(ConfigError::Invalid {
                field: "session_ttl",
                detail: "Consul accepts 10s to 24h".into(),
            });
        }
        if self.lock_delay > Duration::from_secs(60) {
            return Err(ConfigError::Invalid {
                field: "lock_delay",
                detail: "Consul accepts at most 60s".into(),
            });
        }
        if self.apps.session_ttl < Duration::from_secs(10)
            || self.apps.session_ttl > Duration::from_secs(86400)
        {
            return Err(ConfigError::Invalid {
                field: "apps.session_ttl",
                detail: "Consul accepts 10s to 24h".into(),
            });
        }
        if self.apps.report_interval < Duration::from_secs(1)
            || self.apps.topology_interval < Duration::from_secs(1)
        {
            return Err(ConfigError::Invalid {
                field: "apps.report_interval/topology_interval",
                detail: "must be at least 1s".into(),
            });
        }
        for g in &self.checks.guard {
            if g.mode != "ttl" && g.mode != "script" {
                return Err(ConfigError::Invalid {
                    field: "checks.guard.mode",
                    detail: format!("{:?}: expected ttl or script", g.mode),
                });
            }
            if g.interval < Duration::from_secs(1) || g.consul_service.is_empty() {
                return Err(ConfigError::Invalid {
                    field: "checks.guard",
                    detail: "needs a consul_service and an interval of at least 1s".into(),
                });
            }
        }
        if let Some(w) = &self.template_wait {
            crate::templates::runner::parse_wait(w).map_err(|e| ConfigError::Invalid {
                field: "template_wait",
                detail: e,
            })?;
        }
        if self.dns_port > 65_535 {
            return Err(ConfigError::Invalid {
                field: "dns_port",
                detail: format!(
                    "{} is not a port: use 1 to 65535, or -1 to turn DNS off",
                    self.dns_port
                ),
            });
        }
        if self.max_parallel == 0 {
            return Err(ConfigError::Invalid {
                field: "max_parallel",
                detail: "must be at least 1".into(),
            });
        }
        if self.output_cap == 0 || self.output_cap > 160 * 1024 {
            return Err(ConfigError::Invalid {
                field: "output_cap",
                detail:
                    "must be 1 to 163840 bytes (a result must fit a 512 KiB Consul transaction)"
                        .into(),
            });
        }
        if self.dev && self.consul.wanted() {
            return Err(ConfigError::Invalid {
                field: "dev",
                detail: "-dev runs an embedded single-node server, not a distributed store: it cannot join, be a server or launch Consul. For a cluster, run real Consul (scripts/install-consul) with -join/-server".into(),
            });
        }
        if self.consul.dev
            && (self.consul.server
                || !self.consul.join.is_empty()
                || self.consul.bootstrap_expect.is_some())
        {
            return Err(ConfigError::Invalid {
                field: "consul.dev",
                detail: "a dev agent cannot join, be a server or expect peers".into(),
            });
        }
        Ok(())
    }

    /// The embedded server's DNS port; None when DNS is off (a port of 0 or less, as Consul).
    pub fn dns_port(&self) -> Option<u16> {
        u16::try_from(self.dns_port).ok().filter(|p| *p > 0)
    }

    /// How long the node session may go unconfirmed before the agent kills its own jobs: half the
    /// lock-delay, so they are dead before another node may claim them (at least 500 ms).
    pub fn fence_after(&self) -> Duration {
        (self.lock_delay / 2).max(Duration::from_millis(500))
    }

    /// The Consul client settings: this config, else Consul's environment variables.
    pub fn client_config(&self) -> crate::consul::ClientConfig {
        let env = crate::consul::ClientConfig::from_env();
        crate::consul::ClientConfig {
            address: self.http_addr.clone().or(env.address),
            token: self.token.clone().or(env.token),
            ca_cert: self.ca_cert.clone().or(env.ca_cert),
            client_cert: self.client_cert.clone().or(env.client_cert),
            client_key: self.client_key.clone().or(env.client_key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_and_json_files_parse() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("a.toml");
        std::fs::write(&t, "max_parallel = 3\nsession_ttl = \"20s\"\nlock_delay = 2\n[consul]\njoin = [\"127.0.0.2\"]\n").unwrap();
        let c = AgentConfig::load(&t).unwrap();
        assert_eq!(c.max_parallel, 3);
        assert_eq!(c.session_ttl, Duration::from_secs(20));
        assert_eq!(c.lock_delay, Duration::from_secs(2));
        assert!(c.consul.wanted());
        let j = dir.path().join("a.json");
        std::fs::write(&j, r#"{"kv_prefix": "x", "shutdown_grace": "1m"}"#).unwrap();
        let c = AgentConfig::load(&j).unwrap();
        assert_eq!(c.kv_prefix, "x");
        assert_eq!(c.shutdown_grace, Duration::from_secs(60));
    }

    #[test]
    fn dns_port_follows_consul_minus_one_or_zero_turn_it_off() {
        let port = |p: i32| AgentConfig {
            dns_port: p,
            ..Default::default()
        };
        assert_eq!(AgentConfig::default().dns_port(), Some(8600));
        assert_eq!(port(53).dns_port(), Some(53));
        assert_eq!(port(-1).dns_port(), None);
        assert_eq!(port(0).dns_port(), None);
        assert!(port(-1).validate().is_ok());
        let e = port(70_000).validate().unwrap_err().to_string();
        assert!(e.contains("dns_port") && e.contains("-1"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("a.toml");
        std::fs::write(&t, "dns_port = -1\n").unwrap();
        assert_eq!(AgentConfig::load(&t).unwrap().dns_port(), None);
    }

    #[test]
    fn bad_files_get_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("a.toml");
        std::fs::write(&t, "max_paralel = 3\n").unwrap();
        let e = AgentConfig::load(&t).unwrap_err().to_string();
        assert!(e.contains("max_paralel"), "{e}");
        std::fs::write(&t, "session_ttl = \"soon\"\n").unwrap();
        assert!(AgentConfig::load(&t).is_err());
        assert!(AgentConfig::load(&dir.path().join("missing.toml")).is_err());
        let c = AgentConfig {
            session_ttl: Duration::from_secs(5),
            ..Default::default()
        };
        assert!(c.validate().is_err());
    }
}
