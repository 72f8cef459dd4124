//! Printing an error with its causes. Errors of this crate either say their cause in their own
//! message or expose it as `source()`, never both; `chain` prints each link once. It also skips a
//! link whose text already ends what was printed, for errors of other crates (or of modules not
//! yet converted) that do both.

use std::error::Error;

/// `error: cause: cause of the cause`, each cause once.
pub fn chain(e: &(dyn Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !text.is_empty() && !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot open {path}: {source}")]
    struct Doubled {
        path: String,
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("starting the agent")]
    struct Context(#[source] Doubled);

    #[test]
    fn each_cause_is_printed_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let d = Doubled {
            path: "/x".into(),
            source: io(),
        };
        assert_eq!(chain(&d), "cannot open /x: no such file");
        assert_eq!(
            chain(&Context(Doubled {
                path: "/x".into(),
                source: io()
            })),
            "starting the agent: cannot open /x: no such file"
        );
        let plain = std::io::Error::other("plain");
        assert_eq!(chain(&plain), "plain");
    }
}

/// Every error type here that carries another error: its message names the cause, so it must not
/// also expose it as `source()` (which printers of chains print again).
#[cfg(test)]
mod ours {
    use std::error::Error;

    use crate::agent::config::{AgentConfig, ConfigError};
    use crate::agent::consul_proc::LaunchError;
    use crate::agent::run::AgentError;
    use crate::consul::{Client, ClientConfig, ConsulError};
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
    }
}
