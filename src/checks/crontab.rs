//! `servant check crontab`: whether a user's crontab exists (and, with a pattern, whether a
//! non-comment line contains it). Reads the cron spool directly, falling back to
//! `crontab -l -u <user>` where the spool is elsewhere.

use std::io::ErrorKind;
use std::path::Path;
use std::process::Command;

use super::verdict::Verdict;
use crate::wire::HealthStatus;

/// The default spool directories: Debian/Ubuntu first, then RHEL/CentOS.
pub const SPOOL_DIRS: &[&str] = &["/var/spool/cron/crontabs", "/var/spool/cron"];

/// `servant check crontab -u user [-p pattern]`: passing when the user has a crontab (and,
/// with a pattern, some non-comment line contains it); critical otherwise, saying which.
/// Reads `<dir>/<user>` from the first of `spool_dirs` that has it, else runs
/// `crontab -l -u <user>`. An unknown user is critical "no such user".
pub fn check(user: &str, pattern: Option<&str>, spool_dirs: &[&Path]) -> Verdict {
    check_with(user, pattern, spool_dirs, true)
}

/// `check`, with the `crontab -l` fallback optional so tests stay hermetic.
fn check_with(user: &str, pattern: Option<&str>, spool_dirs: &[&Path], fallback: bool) -> Verdict {
    match nix::unistd::User::from_name(user) {
        Ok(Some(_)) => {}
        Ok(None) => return Verdict::error(format!("no such user {user:?}")).with("user", user),
        Err(e) => {
            let msg = format!("cannot look up user {user:?}: {e}");
            return Verdict::error(msg).with("user", user);
        }
    }
    for dir in spool_dirs {
        let path = dir.join(user);
        if !path.is_file() {
            continue;
        }
        return match std::fs::read(&path) {
            Ok(bytes) => judge(
                user,
                pattern,
                &String::from_utf8_lossy(&bytes),
                &path.display().to_string(),
            ),
            Err(e) => {
                Verdict::error(format!("cannot read {}: {e}", path.display())).with("user", user)
            }
        };
    }
    let none = |why: &str| {
        Verdict::new(
            HealthStatus::Critical,
            format!("no crontab for user {user}{why}"),
        )
        .with("user", user)
    };
    if !fallback {
        return none("");
    }
    match Command::new("crontab").args(["-l", "-u", user]).output() {
        Ok(out) if out.status.success() => judge(
            user,
            pattern,
            &String::from_utf8_lossy(&out.stdout),
            "crontab -l",
        ),
        Ok(out) => match String::from_utf8_lossy(&out.stderr).trim() {
            "" => none(""),
            err => none(&format!(" (crontab -l: {err})")),
        },
        Err(e) if e.kind() == ErrorKind::NotFound => {
            none(" (no spool file, and no crontab command to ask)")
        }
        Err(e) => {
            Verdict::error(format!("cannot run crontab -l -u {user}: {e}")).with("user", user)
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
        let v = check_with("root", None, &[d.path()], false);
        assert_eq!(v.status, HealthStatus::Passing, "{}", v.message);
        assert!(v.details["source"]
            .as_str()
            .is_some_and(|s| s.ends_with("/root")));
    }

    #[test]
    fn pattern_on_a_live_line_passes() {
        let d = spool(&[("root", ROOT_TAB)]);
        let v = check_with("root", Some("servant-sync"), &[d.path()], false);
        assert_eq!(v.status, HealthStatus::Passing, "{}", v.message);
        assert_eq!(
            v.details["line"],
            "*/5 * * * * /usr/local/bin/servant-sync --all"
        );
    }

    #[test]
    fn pattern_only_in_a_comment_is_critical() {
        let d = spool(&[("root", ROOT_TAB)]);
        let v = check_with("root", Some("old-backup"), &[d.path()], false);
        assert_eq!(v.status, HealthStatus::Critical);
        assert!(v.message.contains("no non-comment line"), "{}", v.message);
    }

    #[test]
    fn first_spool_dir_with_the_file_wins() {
        let (empty, rhel) = (spool(&[]), spool(&[("root", "@reboot /bin/true\n")]));
        let v = check_with(
            "root",
            Some("/bin/true"),
            &[empty.path(), rhel.path()],
            false,
        );
        assert_eq!(v.status, HealthStatus::Passing, "{}", v.message);
        let deb = spool(&[("root", "# nothing\n")]);
        let v = check_with("root", Some("/bin/true"), &[deb.path(), rhel.path()], false);
        assert_eq!(v.status, HealthStatus::Critical, "{}", v.message);
    }

    #[test]
    fn no_spool_file_without_fallback_is_critical() {
        let (a, b) = (spool(&[]), spool(&[]));
        let v = check_with("root", None, &[a.path(), b.path()], false);
        assert_eq!(v.status, HealthStatus::Critical);
        assert!(
            v.message.contains("no crontab for user root"),
            "{}",
            v.message
        );
    }

    #[test]
    fn unknown_user_is_critical() {
        let d = spool(&[("no-such-user-xyz", ROOT_TAB)]);
        let v = check("no-such-user-xyz", None, &[d.path()]);
        assert_eq!(v.status, HealthStatus::Critical);
        assert!(v.message.contains("no such user"), "{}", v.message);
    }
}
