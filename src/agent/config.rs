//! Agent configuration: a TOML or JSON file, overridden by environment variables and flags (the
//! CLI applies those on top of what `load` returns).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::util::duration::{de_duration, ser_duration};

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
    pub apps: crate::apps::config::AppsConfig,
    /// Health checks, roles and triggers (python-powerconsul's).
    pub checks: crate::checks::config::ChecksConfig,
    /// Templates the agent keeps rendered (`[[template]]`, as in `servant template -config`).
    pub template: Vec<crate::templates::runner::TemplateSpec>,
    /// Their quiescence, `min[:max]`.
    pub template_wait: Option<crate::templates::runner::Wait>,
    /// Docker: jobs' `keep_containers`, `pull_timeout`; the registrator's keys.
    pub docker: DockerSection,
    /// What jobs this node runs: types, users, images, volumes (issue 16's job policy).
    pub jobs: crate::process::policy::JobPolicy,
}

/// The `[docker]` section: the container driver's settings and the registrator's, side by side
/// in one table (each part keeps its own type; `driver()` and `registrator()` hand them out).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DockerSection {
    /// Keep exited containers once their result is written (`--keep-containers`).
    pub keep_containers: bool,
    /// How long a pull of a missing image may take before the job fails.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub pull_timeout: Duration,
    /// Registrator mode: register the running containers' published ports (`--registrator`).
    pub registrator: bool,
    /// The container's IP and exposed port (`--internal`).
    pub internal: bool,
    /// The address to register instead of the node's advertise address (`--ip`).
    pub ip: Option<String>,
    /// Tags added to every container service (`--tags`).
    pub tags: Vec<String>,
    /// Only containers with `SERVICE_NAME` (`--explicit`).
    pub explicit: bool,
    /// `always` or `on-success` (`--deregister`).
    pub deregister: crate::registrator::Deregister,
    /// Between full comparisons of containers and services (`--resync`).
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub resync: Duration,
    /// Only containers with this label, `KEY` or `KEY=VALUE` (`--only-label`).
    pub only_label: Option<String>,
}

impl Default for DockerSection {
    fn default() -> Self {
        let d = crate::process::docker::DockerConfig::default();
        let r = crate::registrator::RegistratorConfig::default();
        DockerSection {
            keep_containers: d.keep_containers,
            pull_timeout: d.pull_timeout,
            registrator: r.enabled,
            internal: r.internal,
            ip: r.ip,
            tags: r.tags,
            explicit: r.explicit,
            deregister: r.deregister,
            resync: r.resync,
            only_label: r.only_label,
        }
    }
}

impl DockerSection {
    /// The container driver's settings.
    pub fn driver(&self) -> crate::process::docker::DockerConfig {
        crate::process::docker::DockerConfig {
            keep_containers: self.keep_containers,
            pull_timeout: self.pull_timeout,
        }
    }

    /// The registrator's settings.
    pub fn registrator(&self) -> crate::registrator::RegistratorConfig {
        crate::registrator::RegistratorConfig {
            enabled: self.registrator,
            internal: self.internal,
            ip: self.ip.clone(),
            tags: self.tags.clone(),
            explicit: self.explicit,
            deregister: self.deregister,
            resync: self.resync,
            only_label: self.only_label.clone(),
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
            lock_delay: Duration::from_secs(25),
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
            apps: Default::default(),
            checks: Default::default(),
            template: Vec::new(),
            template_wait: None,
            docker: Default::default(),
            jobs: Default::default(),
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

impl From<crate::util::Invalid> for ConfigError {
    fn from(e: crate::util::Invalid) -> Self {
        ConfigError::Invalid {
            field: e.field,
            detail: e.detail,
        }
    }
}

/// What the jobs' fence keeps free under the lock-delay: a slow reply, a scheduling delay, and
/// the container watchdog's tick (a shim's timer fires at the deadline itself).
const FENCE_MARGIN: Duration = Duration::from_secs(2);

impl AgentConfig {
    /// Reads a file: `.json` as JSON, anything else as TOML. Every value is parsed here, into
    /// its type: a bad one is an error naming its field.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            error: e,
        })?;
        let bad = |detail: String| ConfigError::Parse {
            path: path.display().to_string(),
            detail,
        };
        // "field: why", the field as a path (`template[0].command_timeout`).
        let named = |field: &serde_path_to_error::Path, e: &dyn std::fmt::Display| {
            bad(match field.to_string().as_str() {
                "" | "." => e.to_string(),
                f => format!("{f}: {e}"),
            })
        };
        if path.extension().and_then(|e| e.to_str()) == Some("json") {
            let mut de = serde_json::Deserializer::from_str(&text);
            let c = serde_path_to_error::deserialize(&mut de)
                .map_err(|e| named(e.path(), e.inner()))?;
            de.end().map_err(|e| bad(e.to_string()))?;
            Ok(c)
        } else {
            serde_path_to_error::deserialize(toml::Deserializer::new(&text))
                .map_err(|e| named(e.path(), e.inner()))
        }
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
        self.apps.validate()?;
        self.checks.validate()?;
        self.jobs.validate()?;
        self.jobs.compile()?;
        if self.docker.resync < Duration::from_millis(100) {
            return Err(ConfigError::Invalid {
                field: "docker.resync",
                detail: "must be at least 100ms".into(),
            });
        }
        if self.docker.ip.as_deref().is_some_and(|ip| {
            ip.parse::<std::net::IpAddr>()
                .map_or(true, |a| a.is_unspecified())
        }) {
            return Err(ConfigError::Invalid {
                field: "docker.ip",
                detail: "must be an IP address other services can reach (not 0.0.0.0 or ::)".into(),
            });
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

    /// Which trigger actions this node runs, and as whom: `[checks]` allow_kv_actions and
    /// actions, `[jobs]` default_user.
    pub fn action_policy(&self, node: &str) -> crate::checks::trigger::ActionPolicy {
        crate::checks::trigger::ActionPolicy {
            allow_kv_actions: self.checks.allow_kv_actions,
            local: self.checks.actions.clone(),
            kv_user: self.jobs.default_user.clone(),
            node: node.to_string(),
        }
    }

    /// How long the node session may go unconfirmed before the agent kills its own jobs: the
    /// lock-delay less 2 s (23 s by default), so they are dead before another node may claim
    /// them; at least half the lock-delay, and 500 ms. ARCHITECTURE.md derives it.
    pub fn fence_after(&self) -> Duration {
        self.lock_delay
            .saturating_sub(FENCE_MARGIN)
            .max(self.lock_delay / 2)
            .max(Duration::from_millis(500))
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
    fn the_docker_section_holds_the_driver_and_the_registrator() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("a.toml");
        std::fs::write(
            &t,
            "[docker]\nkeep_containers = true\nregistrator = true\nresync = \"5s\"\nderegister = \"on-success\"\ntags = [\"a\"]\nip = \"10.0.0.9\"\nonly_label = \"team\"\n",
        )
        .unwrap();
        let c = AgentConfig::load(&t).unwrap();
        assert!(c.validate().is_ok());
        assert!(c.docker.driver().keep_containers);
        let r = c.docker.registrator();
        assert!(r.enabled && !r.internal && !r.explicit);
        assert_eq!(r.resync, Duration::from_secs(5));
        assert_eq!(r.deregister, crate::registrator::Deregister::OnSuccess);
        assert_eq!(r.tags, vec!["a"]);
        assert_eq!(r.ip.as_deref(), Some("10.0.0.9"));
        assert_eq!(r.only_label.as_deref(), Some("team"));
        assert_eq!(
            AgentConfig::default().docker.registrator().resync,
            Duration::from_secs(30)
        );
        for (text, field) in [
            ("[docker]\nderegister = \"never\"\n", "docker.deregister"),
            ("[docker]\nresync = \"soon\"\n", "docker.resync"),
            ("[docker]\nregistrater = true\n", "registrater"),
        ] {
            std::fs::write(&t, text).unwrap();
            let e = AgentConfig::load(&t).unwrap_err().to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
        for (text, field) in [
            ("[docker]\nresync = \"10ms\"\n", "docker.resync"),
            ("[docker]\nip = \"0.0.0.0\"\n", "docker.ip"),
        ] {
            std::fs::write(&t, text).unwrap();
            let e = AgentConfig::load(&t)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
    }

    #[test]
    fn the_jobs_section_is_the_node_s_job_policy() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("a.toml");
        assert_eq!(AgentConfig::default().jobs, Default::default());
        std::fs::write(
            &t,
            "[jobs]\nallowed_types = [\"shell\"]\nallowed_users = [\"nobody\"]\ndefault_user = \"nobody\"\nallowed_images = [\"registry.local/*\"]\nallowed_volumes = [\"/data\"]\n",
        )
        .unwrap();
        let c = AgentConfig::load(&t).unwrap();
        assert!(c.validate().is_ok());
        assert_eq!(c.jobs.default_user.as_deref(), Some("nobody"));
        for (text, field) in [
            (
                "[jobs]\nallowed_types = [\"rocket\"]\n",
                "jobs.allowed_types",
            ),
            ("[jobs]\nallowed_typs = []\n", "allowed_typs"),
        ] {
            std::fs::write(&t, text).unwrap();
            let e = AgentConfig::load(&t).unwrap_err().to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
        for (text, field) in [
            ("[jobs]\nallowed_users = [\"app\"]\n", "jobs.default_user"),
            (
                "[jobs]\nallowed_images = [\"a/[\"]\n",
                "jobs.allowed_images",
            ),
            (
                "[jobs]\nallowed_volumes = [\"data/x\"]\n",
                "jobs.allowed_volumes",
            ),
            ("[jobs]\nallow_privileged = true\n", "jobs.allow_privileged"),
        ] {
            std::fs::write(&t, text).unwrap();
            let e = AgentConfig::load(&t)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
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
    fn values_are_parsed_once_at_load_and_a_bad_one_names_its_field() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("a.toml");
        std::fs::write(
            &t,
            "template_wait = \"1s:3s\"\n[[template]]\nsource = \"in\"\ndestination = \"out\"\nperms = 0o600\n",
        )
        .unwrap();
        let c = AgentConfig::load(&t).unwrap();
        let w = c.template_wait.unwrap();
        assert_eq!(
            (w.min, w.max),
            (Duration::from_secs(1), Duration::from_secs(3))
        );
        assert_eq!(c.template[0].command_timeout, Duration::from_secs(30));
        assert_eq!(c.template[0].perms, Some(0o600));
        let tmpl = "[[template]]\nsource = \"in\"\ndestination = \"out\"\n";
        for (text, field) in [
            ("template_wait = \"soon\"\n".to_string(), "template_wait"),
            ("template_wait = \"3s:1s\"\n".to_string(), "template_wait"),
            (
                format!("{tmpl}command_timeout = \"30 secs\"\n"),
                "command_timeout",
            ),
            (format!("{tmpl}perms = -1\n"), "perms"),
            (format!("{tmpl}perms = \"rw\"\n"), "perms"),
        ] {
            std::fs::write(&t, &text).unwrap();
            let e = AgentConfig::load(&t).unwrap_err().to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
        let j = dir.path().join("a.json");
        std::fs::write(
            &j,
            r#"{"template": [{"source": "in", "destination": "out", "command_timeout": "x"}]}"#,
        )
        .unwrap();
        let e = AgentConfig::load(&j).unwrap_err().to_string();
        assert!(e.contains("template[0].command_timeout"), "{e}");
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
