//! Redaction of secret values (a job's `EnvFromKV`) from its output: plain substring
//! replacement, never a regex, so a secret with `.*` or `$` in it is just bytes. Also the registry
//! through which the agent API redacts the log of a job that is still running.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Secrets shorter than this are not redacted: replacing every `a` or `ab` would garble the
/// output while hiding nothing (a 3-byte value is guessed in far fewer tries than it takes to
/// read the log).
pub const MIN_SECRET_LEN: usize = 4;

/// Replaces each secret value with `[secret NAME]`. Leftmost match first, the longest value at
/// one position. The output never contains a secret (proptested): when a value could overlap a
/// marker (it contains `[` or `]`, or lies inside one), a marker of a byte no value contains is
/// used instead, and if there is none, everything is withheld.
#[derive(Clone, Default)]
pub struct Redactor {
    /// (value, marker), longest value first.
    secrets: Vec<(Vec<u8>, Vec<u8>)>,
    withhold: bool,
}

// Never prints the values: a redactor may end up in a log line.
impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

impl Redactor {
    /// From (name, value) pairs; values shorter than `MIN_SECRET_LEN` are left alone, and a value
    /// given under two names is redacted under the first.
    pub fn new<N: AsRef<str>, V: AsRef<[u8]>>(pairs: impl IntoIterator<Item = (N, V)>) -> Self {
        let mut secrets: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for (name, value) in pairs {
            let v = value.as_ref();
            if v.len() < MIN_SECRET_LEN || secrets.iter().any(|(s, _)| s == v) {
                continue;
            }
            secrets.push((
                v.to_vec(),
                format!("[secret {}]", name.as_ref()).into_bytes(),
            ));
        }
        // Stable: equal lengths keep their order.
        secrets.sort_by_key(|(v, _)| std::cmp::Reverse(v.len()));
        let mut withhold = false;
        // An occurrence overlapping a marker contains one of the marker's bytes: its first or
        // last (`[`, `]`), or lies inside it. Values that cannot do that are safe with markers.
        let overlaps = secrets.iter().any(|(v, _)| {
            v.contains(&b'[') || v.contains(&b']') || secrets.iter().any(|(_, m)| contains(m, v))
        });
        if overlaps {
            let fallback = (b' '..=b'~')
                .rev()
                .find(|b| secrets.iter().all(|(v, _)| !v.contains(b)));
            match fallback {
                Some(b) => {
                    for (_, m) in &mut secrets {
                        *m = vec![b; 8];
                    }
                }
                None => withhold = true,
            }
        }
        Redactor { secrets, withhold }
    }

    /// No value to redact.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// The longest value's length in bytes (0 without any).
    pub fn longest(&self) -> usize {
        self.secrets.first().map_or(0, |(v, _)| v.len())
    }

    /// `text` with every secret replaced.
    pub fn redact(&self, text: &[u8]) -> Vec<u8> {
        self.redact_chunk(&mut Vec::new(), text, true)
    }

    /// `text` with every secret replaced; still UTF-8, as values and markers are whole strings.
    pub fn redact_str(&self, text: &str) -> String {
        if self.is_empty() {
            return text.to_string();
        }
        String::from_utf8_lossy(&self.redact(text.as_bytes())).into_owned()
    }

    /// The part of a growing log (a running job's) that can be shown: redacted, without a tail
    /// that may be the first bytes of a secret still being written.
    pub fn redact_growing(&self, text: &[u8]) -> Vec<u8> {
        self.redact_chunk(&mut Vec::new(), text, false)
    }

    /// Redacts `carry` (held back by the previous call) followed by `input`. Unless `last`, a
    /// tail that is the start of a value is held back in `carry` for the next call, so a value
    /// split between two chunks is still found.
    pub fn redact_chunk(&self, carry: &mut Vec<u8>, input: &[u8], last: bool) -> Vec<u8> {
        let mut buf = std::mem::take(carry);
        buf.extend_from_slice(input);
        if self.withhold {
            return Vec::new();
        }
        if self.secrets.is_empty() {
            return buf;
        }
        let mut out = Vec::with_capacity(buf.len());
        let mut i = 0;
        'scan: while i < buf.len() {
            let rest = &buf[i..];
            for (value, marker) in &self.secrets {
                if rest.starts_with(value) {
                    out.extend_from_slice(marker);
                    i += value.len();
                    continue 'scan;
                }
                if !last && rest.len() < value.len() && value.starts_with(rest) {
                    *carry = rest.to_vec();
                    return out;
                }
            }
            out.push(buf[i]);
            i += 1;
        }
        out
    }

    /// Rewrites the file at `path` redacted (a new file renamed over it, same permissions).
    /// Blocking: call from `spawn_blocking`. A missing file is fine.
    pub fn redact_file_blocking(&self, path: &Path) -> std::io::Result<()> {
        use std::io::{Read, Write};
        if self.is_empty() {
            return Ok(());
        }
        let mut src = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let perms = src.metadata()?.permissions();
        let tmp = PathBuf::from(format!("{}.redacting", path.display()));
        let mut dst = std::fs::File::create(&tmp)?;
        dst.set_permissions(perms)?;
        let mut carry = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let written = (|| -> std::io::Result<()> {
            loop {
                let n = src.read(&mut chunk)?;
                let out = self.redact_chunk(&mut carry, &chunk[..n], n == 0);
                dst.write_all(&out)?;
                if n == 0 {
                    break;
                }
            }
            dst.sync_all()
        })();
        match written {
            Ok(()) => std::fs::rename(&tmp, path),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// The secrets of the jobs running on this node, by their stdout log path: the worker fills it,
/// the agent API redacts what it serves of those logs with it.
#[derive(Clone, Default, Debug)]
pub struct SecretRegistry(Arc<Mutex<HashMap<PathBuf, Arc<Redactor>>>>);

impl SecretRegistry {
    pub fn insert(&self, log: PathBuf, r: Arc<Redactor>) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(log, r);
        }
    }

    pub fn remove(&self, log: &Path) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(log);
        }
    }

    pub fn get(&self, log: &Path) -> Option<Arc<Redactor>> {
        self.0.lock().ok().and_then(|m| m.get(log).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(pairs: &[(&str, &str)]) -> Redactor {
        Redactor::new(pairs.iter().copied())
    }

    #[test]
    fn replaces_values_with_their_names() {
        let red = r(&[("TOKEN", "hunter22"), ("PIN", "123")]);
        assert_eq!(
            red.redact_str("a hunter22 b hunter22hunter22 123"),
            "a [secret TOKEN] b [secret TOKEN][secret TOKEN] 123"
        );
        assert_eq!(format!("{red:?}"), "Redactor(1 secrets)");
    }

    #[test]
    fn regex_characters_are_plain_bytes() {
        let red = r(&[("R", ".*$^(a|b)\\")]);
        assert_eq!(red.redact_str("x.*$^(a|b)\\y ab"), "x[secret R]y ab");
    }

    #[test]
    fn the_longest_value_wins_at_a_position() {
        let red = r(&[("SHORT", "abcd"), ("LONG", "abcdef")]);
        assert_eq!(red.redact_str("abcdefabcd"), "[secret LONG][secret SHORT]");
    }

    #[test]
    fn a_value_split_between_chunks_is_found() {
        let red = r(&[("S", "s3cr3t")]);
        let mut carry = Vec::new();
        let mut out = red.redact_chunk(&mut carry, b"xx s3c", false);
        assert_eq!(out, b"xx ");
        out.extend(red.redact_chunk(&mut carry, b"r3t yy", false));
        out.extend(red.redact_chunk(&mut carry, b"", true));
        assert_eq!(out, b"xx [secret S] yy");
        // A growing log hides a tail that may be a secret being written.
        assert_eq!(red.redact_growing(b"ok s3cr"), b"ok ");
        assert_eq!(red.redact_growing(b"ok s3cx"), b"ok s3cx");
    }

    #[test]
    fn values_that_could_hide_in_markers_get_plain_ones() {
        let red = r(&[("A", "[sec"), ("B", "cret")]);
        let out = red.redact_str("x[secret]y");
        assert!(!out.contains("[sec") && !out.contains("cret"), "{out}");
        assert!(out.contains("~~~~~~~~"), "{out}");
    }

    #[test]
    fn files_are_rewritten_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.out");
        let mut text = "a".repeat(64 * 1024 - 3);
        text.push_str("s3cr3t and again s3cr3t\n");
        std::fs::write(&p, &text).unwrap();
        r(&[("S", "s3cr3t")]).redact_file_blocking(&p).unwrap();
        let got = std::fs::read_to_string(&p).unwrap();
        assert!(!got.contains("s3cr3t"));
        assert!(got.ends_with("[secret S] and again [secret S]\n"));
        r(&[("S", "s3cr3t")])
            .redact_file_blocking(&dir.path().join("none"))
            .unwrap();
    }

    proptest! {
        #[test]
        fn redacted_text_never_contains_a_secret(
            secrets in proptest::collection::vec(prop_oneof![
                "[a-c\\[\\] sertNAM]{1,8}",
                // Pieces of markers and what is around them: the hard cases.
                (0usize..26, 1usize..12).prop_map(|(at, n)| {
                    let t = "ab[secret N0]c[secret N1]ab";
                    t[at.min(t.len() - 1)..(at + n).min(t.len())].to_string()
                }),
            ], 1..4),
            parts in proptest::collection::vec("[a-c\\[\\] sertNAM]{0,6}", 0..8),
            cut in 0usize..64,
        ) {
            let pairs: Vec<(String, String)> =
                secrets.iter().enumerate().map(|(i, s)| (format!("N{i}"), s.clone())).collect();
            let red = Redactor::new(pairs);
            // Secrets woven into the text.
            let mut text = String::new();
            for (i, p) in parts.iter().enumerate() {
                text.push_str(p);
                text.push_str(&secrets[i % secrets.len()]);
            }
            let whole = red.redact(text.as_bytes());
            // The same text in two chunks, cut anywhere.
            let cut = cut.min(text.len());
            let mut carry = Vec::new();
            let mut chunked = red.redact_chunk(&mut carry, &text.as_bytes()[..cut], false);
            chunked.extend(red.redact_chunk(&mut carry, &text.as_bytes()[cut..], true));
            prop_assert_eq!(&chunked, &whole);
            let growing = red.redact_growing(&text.as_bytes()[..cut]);
            for s in secrets.iter().filter(|s| s.len() >= MIN_SECRET_LEN) {
                prop_assert!(!contains(&whole, s.as_bytes()), "{:?} in {:?}", s, String::from_utf8_lossy(&whole));
                prop_assert!(!contains(&growing, s.as_bytes()));
            }
        }
    }
}
