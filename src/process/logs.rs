//! A task's output on disk: log file names, capped reads, and copy-truncate rotation, all off
//! the async workers.

use std::path::{Path, PathBuf};

use tracing::warn;

/// Rotated copies kept beside a log file (`.1` newest to `.3`).
pub const KEEP: usize = 3;

/// Where a run's output goes on disk.
#[derive(Debug, Clone)]
pub struct LogPaths {
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl LogPaths {
    /// The log files of a job key under `log_dir`. The key is percent-encoded into one safe file
    /// name, so `..` or `/` in an ID cannot escape the directory.
    pub fn for_key(log_dir: &Path, key: &str) -> Self {
        let mut name = String::new();
        for b in key.bytes() {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                name.push(b as char);
            } else {
                name.push_str(&format!("%{b:02X}"));
            }
        }
        // File names are limited to 255 bytes: keep a readable head and a stable hash.
        if name.len() > 150 {
            let hash = crate::util::hash::stable_hash(&[key]);
            name = format!("{}~{hash:016x}", &name[..120]);
        }
        LogPaths {
            stdout: log_dir.join(format!("{name}.out")),
            stderr: log_dir.join(format!("{name}.err")),
        }
    }
}

/// Reads at most `cap` bytes of a log file, lossily as UTF-8; returns whether more was there.
pub async fn read_capped(path: &Path, cap: usize) -> (String, bool) {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || match std::fs::File::open(&path) {
        Ok(mut f) => read_capped_blocking(&mut f, cap),
        Err(_) => (String::new(), false),
    })
    .await
    .unwrap_or_default()
}

/// `read_capped` of an open file, from its start, on a blocking thread: one hand-off for the
/// whole read, where an async file costs one for each of its metadata, seek and reads.
pub(super) fn read_capped_blocking(f: &mut std::fs::File, cap: usize) -> (String, bool) {
    use std::io::{Read, Seek};
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if f.seek(std::io::SeekFrom::Start(0)).is_err() {
        return (String::new(), len > 0);
    }
    let mut buf = Vec::with_capacity(cap.min(len as usize));
    let _ = f.take(cap as u64).read_to_end(&mut buf);
    let mut text = String::from_utf8_lossy(&buf).into_owned();
    let truncated = len > cap as u64;
    if truncated {
        // A cut multi-byte character shows as U+FFFD; drop it.
        if text.ends_with('\u{FFFD}') {
            text.pop();
        }
    }
    (text, truncated)
}

/// Rotates each of `logs` that is over `max` bytes (`rotate_blocking`), on a blocking thread.
pub async fn rotate_if_big(logs: &LogPaths, max: u64) {
    let logs = logs.clone();
    let _ = tokio::task::spawn_blocking(move || {
        for p in [&logs.stdout, &logs.stderr] {
            rotate_blocking(p, max);
        }
    })
    .await;
}

/// Copy-and-truncate rotation: the process keeps its file open with O_APPEND, so the live file
/// is copied to `.1` (older copies shift up to `.KEEP`) and truncated in place.
pub fn rotate_blocking(path: &Path, max: u64) {
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    if meta.len() <= max {
        return;
    }
    let gen = |n: usize| PathBuf::from(format!("{}.{n}", path.display()));
    for n in (1..KEEP).rev() {
        let _ = std::fs::rename(gen(n), gen(n + 1));
    }
    if let Err(e) = std::fs::copy(path, gen(1)) {
        warn!(log = %path.display(), error = %e, "cannot rotate the log");
        return;
    }
    if let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) {
        let _ = f.set_len(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_names_are_safe_and_short() {
        let p = LogPaths::for_key(Path::new("/l"), "jobs/../x y");
        assert_eq!(p.stdout, Path::new("/l/jobs%2F%2E%2E%2Fx%20y.out"));
        let long = format!("jobs/{}", "ж".repeat(100));
        let p = LogPaths::for_key(Path::new("/l"), &long);
        let name = p.stdout.file_name().unwrap().to_str().unwrap().to_string();
        assert!(name.len() < 200, "{}", name.len());
        assert_ne!(
            LogPaths::for_key(Path::new("/l"), &format!("{long}a")).stdout,
            p.stdout
        );
    }

    #[test]
    fn big_logs_rotate_and_keep_three_generations() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("app.out");
        for round in 0..5u8 {
            std::fs::write(&p, vec![b'a' + round; 100]).unwrap();
            rotate_blocking(&p, 50);
            assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
        }
        let read = |n: usize| std::fs::read(dir.path().join(format!("app.out.{n}"))).unwrap();
        assert_eq!(read(1)[0], b'e', "newest copy first");
        assert_eq!(read(2)[0], b'd');
        assert_eq!(read(3)[0], b'c');
        assert!(!dir.path().join("app.out.4").exists());
        std::fs::write(&p, b"small").unwrap();
        rotate_blocking(&p, 50);
        assert_eq!(std::fs::read(&p).unwrap(), b"small");
    }

    #[tokio::test]
    async fn capped_reads_cut_whole_characters_and_say_so() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out");
        std::fs::write(&p, "aж").unwrap();
        assert_eq!(read_capped(&p, 2).await, ("a".to_string(), true));
        assert_eq!(read_capped(&p, 3).await, ("aж".to_string(), false));
        assert_eq!(
            read_capped(&dir.path().join("none"), 3).await,
            (String::new(), false)
        );
    }
}
