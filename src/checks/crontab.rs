//! `servant check crontab`: whether a user's crontab exists (and, with a pattern, whether a
//! non-comment line contains it). Reads the cron spool directly, falling back to
//! `crontab -l -u <user>` where the spool is elsewhere.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::verdict::Verdict;
use crate::process::local::find_on_path;
use crate::process::{run_with_timeout, LaunchSpec, Limits, Outcome, Output, ProcessDriver};
use crate::wire::HealthStatus;

/// The default spool directories: Debian/Ubuntu first, then RHEL/CentOS.
pub const SPOOL_DIRS: &[&str] = &["/var/spool/cron/crontabs", "/var/spool/cron"];

/// How long `crontab -l` may take.
const CRONTAB_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of `crontab -l`'s output read.
const CRONTAB_CAP: usize = 1 << 20;

/// `servant check crontab -u user [-p pattern]`: passing when the user has a crontab (and,
/// with a pattern, some non-comment line contains it); critical otherwise, saying which.
/// Reads `<dir>/<user>` from the first of `spool_dirs` that has it, else runs
/// `crontab -l -u <user>`. An unknown user is critical "no such user".
pub async fn check(user: &str, pattern: Option<&str>, spool_dirs: &[&Path]) -> Verdict {
    let (u, p) = (user.to_string(), pattern.map(str::to_string));
    let dirs: Vec<PathBuf> = spool_dirs.iter().map(|d| d.to_path_buf()).collect();
    // The user database and the spool are files: read them off the async workers.
    let spool = tokio::task::spawn_blocking(move || {
        let dirs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
        let found = from_spool(&u, p.as_deref(), &dirs);
        (found, find_on_path("crontab").is_some())
    })
    .await;
    match spool {
        Ok((Some(v), _)) => v,
        Ok((None, true)) => from_crontab_l(user, pattern).await,
        Ok((None, false)) => none(user, " (no spool file, and no crontab command to ask)"),
        Err(e) => Verdict::error(format!("cannot read the crontab of {user:?}: {e}")),
    }
}

fn none(user: &str, why: &str) -> Verdict {
    Verdict::new(
        HealthStatus::Critical,
        format!("no crontab for user {user}{why}"),
    )
    .with("user", user)
}

/// The verdict from the spool; None when no spool dir holds the user's file.
fn from_spool(user: &str, pattern: Option<&str>, spool_dirs: &[&Path]) -> Option<Verdict> {
    match nix::unistd::User::from_name(user) {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Some(Verdict::error(format!("no such user {user:?}")).with("user", user))
        }
        Err(e) => {
            let msg = format!("cannot look up user {user:?}: {e}");
            return Some(Verdict::error(msg).with("user", user));
        }
    }
    for dir in spool_dirs {
        let path = dir.join(user);
        if !path.is_file() {
            continue;
        }
        return Some(match std::fs::read(&path) {
            Ok(bytes) => judge(
                user,
                pattern,
                &String::from_utf8_lossy(&bytes),
                &path.display().to_string(),
            ),
            Err(e) => {
                Verdict::error(format!("cannot read {}: {e}", path.display())).with("user", user)
            }
        });
    }
    None
}

/// Asks `crontab -l -u <user>`.
async fn from_crontab_l(user: &str, pattern: Option<&str>) -> Verdict {
    let spec = LaunchSpec::new(vec![
        "crontab".into(),
        "-l".into(),
        "-u".into(),
        user.into(),
    ])
    .output(Output::Capture {
        dir: None,
        combined: false,
    });
    let limits = Limits::new(CRONTAB_TIMEOUT, CRONTAB_CAP);
    let done = match run_with_timeout(&ProcessDriver::current(), &spec, limits).await {
        Ok(d) => d,
        Err(e) => {
            let msg = format!("cannot run crontab -l -u {user}: {}", e.detail());
            return Verdict::error(msg).with("user", user);
        }
    };
    match done.outcome {
        Outcome::Exited { code: 0, .. } => judge(user, pattern, &done.output.stdout, "crontab -l"),
        Outcome::Exited { .. } => match done.output.stderr.trim() {
            "" => none(user, ""),
            err => none(user, &format!(" (crontab -l: {err})")),
        },
        Outcome::TimedOut | Outcome::Killed(_) => {
            let msg = format!("crontab -l -u {user}: no answer within {CRONTAB_TIMEOUT:?}");
            Verdict::error(msg).with("user", user)
        }
    }
}

/// The verdict on a crontab's text, read from `source` (a spool path or "crontab -l").
fn judge(user: &str, pattern: Option<&str>, text: &str, source: &str) -> Verdict {
    let Some(pattern) = pattern else {
        let v = Verdict::new(
            HealthStatus::Passing,
            format!("user {user} has a crontab ({source})"),
        );
        return v.with("user", user).with("source", source);
    };
    let hit = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .find(|l| l.contains(pattern));
    let v = match hit {
        Some(line) => Verdict::new(
            HealthStatus::Passing,
            format!("crontab of user {user} has a line containing {pattern:?}"),
        )
        .with("line", line),
        None => Verdict::new(
            HealthStatus::Critical,
            format!("crontab of user {user} has no non-comment line containing {pattern:?}"),
        ),
    };
    v.with("user", user)
        .with("source", source)
        .with("pattern", pattern)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    const ROOT_TAB: &str = "# m h dom mon dow command\n# 0 3 * * * /usr/bin/old-backup\n\
                            */5 * * * * /usr/local/bin/servant-sync --all\n";

    #[test]
    fn spool_file_exists() {
        let d = spool(&[("root", ROOT_TAB)]);
        let v = from_spool("root", None, &[d.path()]).unwrap();
        assert_eq!(v.status, HealthStatus::Passing, "{}", v.message);
        assert!(v.details["source"]
            .as_str()
            .is_some_and(|s| s.ends_with("/root")));
    }

    #[test]
    fn pattern_on_a_live_line_passes() {
        let d = spool(&[("root", ROOT_TAB)]);
        let v = from_spool("root", Some("servant-sync"), &[d.path()]).unwrap();
        assert_eq!(v.status, HealthStatus::Passing, "{}", v.message);
        assert_eq!(
            v.details["line"],
            "*/5 * * * * /usr/local/bin/servant-sync --all"
        );
    }

    #[test]
    fn pattern_only_in_a_comment_is_critical() {
        let d = spool(&[("root", ROOT_TAB)]);
        let v = from_spool("root", Some("old-backup"), &[d.path()]).unwrap();
        assert_eq!(v.status, HealthStatus::Critical);
        assert!(v.message.contains("no non-comment line"), "{}", v.message);
    }

    #[test]
    fn first_spool_dir_with_the_file_wins() {
        let (empty, rhel) = (spool(&[]), spool(&[("root", "@reboot /bin/true\n")]));
        let v = from_spool("root", Some("/bin/true"), &[empty.path(), rhel.path()]).unwrap();
        assert_eq!(v.status, HealthStatus::Passing, "{}", v.message);
        let deb = spool(&[("root", "# nothing\n")]);
        let v = from_spool("root", Some("/bin/true"), &[deb.path(), rhel.path()]).unwrap();
        assert_eq!(v.status, HealthStatus::Critical, "{}", v.message);
    }

    #[tokio::test]
    async fn no_spool_file_asks_crontab_or_is_critical() {
        let (a, b) = (spool(&[]), spool(&[]));
        assert!(from_spool("root", None, &[a.path(), b.path()]).is_none());
        // What `crontab -l` says depends on the machine; without a crontab for root it is
        // critical either way, and says so.
        let v = check("root", Some("no-such-pattern-xyz"), &[a.path(), b.path()]).await;
        assert_eq!(v.status, HealthStatus::Critical, "{}", v.message);
    }

    #[tokio::test]
    async fn unknown_user_is_critical() {
        let d = spool(&[("no-such-user-xyz", ROOT_TAB)]);
        let v = check("no-such-user-xyz", None, &[d.path()]).await;
        assert_eq!(v.status, HealthStatus::Critical);
        assert!(v.message.contains("no such user"), "{}", v.message);
    }
}
