//! Small helpers shared by several features: pure ones, and the one place that writes a
//! command's output (`output`).

pub mod backoff;
pub mod duration;
pub mod error;
pub mod hash;
pub mod json;
pub mod output;
pub mod redact;
pub mod time;

/// A setting that parses but cannot work; each part's configuration says which and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting {field}: {detail}")]
pub struct Invalid {
    pub field: &'static str,
    pub detail: String,
}

impl Invalid {
    pub fn new(field: &'static str, detail: impl Into<String>) -> Self {
        Invalid {
            field,
            detail: detail.into(),
        }
    }
}
