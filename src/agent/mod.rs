//! The agent: configuration, the node session, the supervised Consul process and the HTTP API.

pub mod api;
pub mod config;
pub mod consul_proc;
pub mod datadir;
pub mod doctor;
pub mod metrics;
pub mod run;

/// Every error type of the agent that carries another error: its message names the cause, so it must not
/// also expose it as `source()` (which printers of chains print again).
#[cfg(test)]
mod error_chains {
    use std::error::Error;

    use crate::agent::config::{AgentConfig, ConfigError};
    use crate::agent::consul_proc::LaunchError;
    use crate::agent::run::AgentError;
    use crate::consul::{Client, ClientConfig, ConsulError, InProcessError};
    use crate::templates::runner::RunError;

    fn once(e: &(dyn Error + 'static)) {
        let mut cur = Some(e);
        while let Some(e) = cur {
            if let Some(s) = e.source() {
                let (outer, inner) = (e.to_string(), s.to_string());
                assert!(
                    !outer.contains(&inner),
                    "{outer:?} says its source {inner:?} and exposes it"
                );
            }
            cur = e.source();
        }
    }

    fn io() -> std::io::Error {
        std::io::Error::from(std::io::ErrorKind::AddrInUse)
    }

    #[tokio::test]
    async fn no_error_says_its_cause_twice() {
        let c = Client::new(&ClientConfig {
            address: Some("127.0.0.1:1".into()),
            ..Default::default()
        })
        .unwrap();
        let e = c.kv_get_raw("k").await.unwrap_err();
        assert!(matches!(e, ConsulError::Unreachable { .. }), "{e}");
        once(&e);
        assert!(
            e.to_string().contains("refused"),
            "the cause is in the message: {e}"
        );
        let missing = std::path::Path::new("/nonexistent/servant.toml");
        let ce = AgentConfig::load(missing).unwrap_err();
        assert!(matches!(ce, ConfigError::Read { .. }));
        once(&ce);
        for e in [
            AgentError::DataDir {
                path: "/d".into(),
                error: io(),
            },
            AgentError::Api {
                addr: "a".into(),
                error: io(),
            },
            AgentError::Config(ce),
            AgentError::Consul(e),
            AgentError::Launch(LaunchError::Spawn {
                bin: "b".into(),
                error: io(),
            }),
            AgentError::Launch(LaunchError::Dir {
                path: "p".into(),
                error: io(),
            }),
        ] {
            once(&e);
        }
        once(&RunError::Read {
            path: "t".into(),
            error: io(),
        });
        once(&ConsulError::InProcess {
            url: "u".into(),
            cause: InProcessError::TimedOut(std::time::Duration::from_secs(1)),
        });
    }
}
