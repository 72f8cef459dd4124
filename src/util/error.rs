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
