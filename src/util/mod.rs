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

/// Cuts text to at most `cap` bytes on a character boundary; returns whether it cut.
pub fn cap_text(s: &mut String, cap: usize) -> bool {
    if s.len() <= cap {
        return false;
    }
    let mut end = cap;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    true
}

#[cfg(test)]
mod cap_tests {
    use super::cap_text;

    #[test]
    fn cap_respects_utf8() {
        let mut s = "héllo".to_string();
        assert!(cap_text(&mut s, 2));
        assert_eq!(s, "h");
        let mut t = "abc".to_string();
        assert!(!cap_text(&mut t, 3));
    }
}
