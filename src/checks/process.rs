//! `servant check process`: counts processes from /proc with check_procs-like selectors
//! (-C name, -a args, -u user) and Nagios threshold ranges (-w, -c), replacing
//! python-powerconsul's wrapper around Nagios `check_procs`.

use std::fmt;
use std::path::Path;

use super::verdict::Verdict;
use crate::wire::HealthStatus;

/// A Nagios threshold range: alert when the value is OUTSIDE [start, end] (or inside, with '@').
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Lower bound, inclusive; `None` is -infinity ("~"), so no value is too small.
    pub start: Option<i64>,
    /// Upper bound, inclusive; `None` is +infinity ("10:"), so no value is too large.
    pub end: Option<i64>,
    /// '@' prefix: alert when the value is inside the range instead of outside.
    pub inside: bool,
}

/// Why a threshold range was refused; each names the text so the operator can find it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// Nothing (or only "@") was given.
    #[error("empty threshold range {0:?}: expected Nagios syntax such as \"10\", \"10:\", \"~:10\", \"10:20\" or \"@10:20\"")]
    Empty(String),
    /// A bound is not an integer.
    #[error("invalid threshold range {text:?}: {part:?} is not an integer")]
    InvalidNumber {
        /// The whole range text as given.
        text: String,
        /// The bound that failed to parse.
        part: String,
    },
    /// start > end: no value could ever be inside, almost surely a typo.
    #[error("invalid threshold range {text:?}: start {start} is greater than end {end}")]
    Reversed {
        /// The whole range text as given.
        text: String,
        /// The parsed lower bound.
        start: i64,
        /// The parsed upper bound.
        end: i64,
    },
}

/// Parses Nagios range syntax: "10" (= 0:10), "10:" (10..inf), "~:10" (-inf..10), "10:20",
/// "@10:20" (alert inside). An empty start (":10") is 0, as in the Nagios plugins.
pub fn parse_range(s: &str) -> Result<Range, RangeError> {
    let text = s.trim();
    let (inside, body) = match text.strip_prefix('@') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    if body.is_empty() {
        return Err(RangeError::Empty(s.to_string()));
    }
    let num = |part: &str| {
        part.parse::<i64>().map_err(|_| RangeError::InvalidNumber {
            text: s.to_string(),
            part: part.to_string(),
        })
    };
    let (start, end) = match body.split_once(':') {
        None => (Some(0), Some(num(body)?)),
        Some((a, b)) => {
            let start = match a {
                "~" => None,
                "" => Some(0),
                _ => Some(num(a)?),
            };
            (start, if b.is_empty() { None } else { Some(num(b)?) })
        }
    };
    if let (Some(start), Some(end)) = (start, end) {
        if start > end {
            let text = s.to_string();
            return Err(RangeError::Reversed { text, start, end });
        }
    }
    Ok(Range { start, end, inside })
}

impl Range {
    /// Whether `value` breaches the threshold (outside the range, or inside with '@').
    pub fn alerts(&self, value: u64) -> bool {
        let v = i128::from(value);
        let within = self.start.is_none_or(|s| v >= i128::from(s))
            && self.end.is_none_or(|e| v <= i128::from(e));
        within == self.inside
    }
}

/// Canonical Nagios text ("0:10", "~:5", "@1:", ...), so messages show what was enforced.
impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.inside {
            f.write_str("@")?;
        }
        match self.start {
            Some(s) => write!(f, "{s}:")?,
            None => f.write_str("~:")?,
        }
        match self.end {
            Some(e) => write!(f, "{e}"),
            None => Ok(()),
        }
    }
}

/// Which processes count (all given selectors must match).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    /// -C: exact process name (the `comm` in /proc/PID/stat, or argv[0]'s file name, since
    /// `comm` is cut to 15 bytes); check_procs compares the command name.
    pub name: Option<String>,
    /// -a: substring that must appear in the full command line (args joined by spaces).
    pub args: Option<String>,
    /// -u: user name or numeric uid owning the process (real uid from /proc/PID/status "Uid:").
    pub user: Option<String>,
}

/// A human description like "name=nginx user=www-data" ("any" when nothing is selected),
/// for the message and the "selector" detail. Values with spaces are quoted.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (key, value) in [
            ("name", &self.name),
            ("args", &self.args),
            ("user", &self.user),
        ] {
            let Some(v) = value else { continue };
            parts.push(match v.is_empty() || v.contains(char::is_whitespace) {
                true => format!("{key}={v:?}"),
                false => format!("{key}={v}"),
            });
        }
        if parts.is_empty() {
            parts.push("any".to_string());
        }
        f.write_str(&parts.join(" "))
    }
}

/// One process as read from /proc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    /// The process id (the /proc directory name).
    pub pid: i32,
    /// `comm` from /proc/PID/stat: the kernel's (15-byte) command name.
    pub name: String,
    /// /proc/PID/cmdline with NULs turned into spaces; empty for kernel threads and zombies.
    pub cmdline: String,
    /// Real uid from the "Uid:" line of /proc/PID/status.
    pub uid: u32,
}

/// Reads every process under `proc_root` (normally "/proc"; tests may point at a fake tree),
/// sorted by pid. Vanished or malformed processes (a race with exit) are skipped, not errors;
/// an unreadable proc_root is an error.
pub fn scan(proc_root: &Path) -> std::io::Result<Vec<ProcInfo>> {
    let mut procs = Vec::new();
    for entry in std::fs::read_dir(proc_root)? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue; // "self", "sys", "meminfo"...
        };
        if let Some(p) = read_proc(&entry.path(), pid) {
            procs.push(p);
        }
    }
    procs.sort_by_key(|p| p.pid);
    Ok(procs)
}

/// One process's info, or `None` when any of its files is gone or unparsable.
fn read_proc(dir: &Path, pid: i32) -> Option<ProcInfo> {
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    // comm may itself contain ')' or spaces: it runs from the first '(' to the last ')'.
    let name = stat.get(stat.find('(')? + 1..stat.rfind(')')?)?.to_string();
    let raw = std::fs::read(dir.join("cmdline")).ok()?;
    let raw = raw.strip_suffix(&[0]).unwrap_or(&raw);
    let cmdline = String::from_utf8_lossy(raw).replace('\0', " ");
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    let uid_line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let uid = uid_line.split_whitespace().next()?.parse().ok()?;
    Some(ProcInfo {
        pid,
        name,
        cmdline,
        uid,
    })
}

/// Pure: the processes matching `sel`, except `exclude_pid` (the checker itself, so
/// `servant check process -a foo` does not count itself). `uid` is `sel.user` resolved by
/// the caller; without it a numeric `sel.user` is used as the uid, and a user name that was
/// not resolved matches nothing (never everything).
pub fn matching<'a>(
    procs: &'a [ProcInfo],
    sel: &Selector,
    uid: Option<u32>,
    exclude_pid: i32,
) -> Vec<&'a ProcInfo> {
    let want_uid = uid.or_else(|| sel.user.as_deref().and_then(|u| u.parse().ok()));
    if sel.user.is_some() && want_uid.is_none() {
        return Vec::new();
    }
    procs
        .iter()
        .filter(|p| p.pid != exclude_pid)
        .filter(|p| want_uid.is_none_or(|u| p.uid == u))
        .filter(|p| sel.args.as_deref().is_none_or(|a| p.cmdline.contains(a)))
        .filter(|p| {
            sel.name.as_deref().is_none_or(|n| {
                let argv0 = p.cmdline.split(' ').next().unwrap_or("");
                let base = argv0.rsplit('/').next().unwrap_or(argv0);
                p.name == n || (!base.is_empty() && base == n)
            })
        })
        .collect()
}

/// Why a `-u` value is no uid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("no such user {0:?}")]
    Unknown(String),
    #[error("cannot look up user {user:?}: {error}")]
    Lookup { user: String, error: nix::Error },
}

/// A `-u` value as a uid: numeric as is, else looked up.
fn resolve_uid(user: &str) -> Result<u32, UserError> {
    if let Ok(n) = user.parse() {
        return Ok(n);
    }
    match nix::unistd::User::from_name(user) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        Ok(None) => Err(UserError::Unknown(user.to_string())),
        Err(error) => Err(UserError::Lookup {
            user: user.to_string(),
            error,
        }),
    }
}

/// The check: count matching processes; critical if `critical` range alerts, else warning if
/// `warning` alerts, else passing. With neither range given, check_procs' default: critical
/// when the count is 0 ("-c 1:"). Details: "count", "selector", "pids" (first 20).
pub fn check(
    sel: &Selector,
    warning: Option<&Range>,
    critical: Option<&Range>,
    proc_root: &Path,
) -> Verdict {
    let desc = sel.to_string();
    let fail = |msg: String| Verdict::error(msg).with("selector", desc.clone());
    let uid = match sel.user.as_deref().map(resolve_uid).transpose() {
        Ok(uid) => uid,
        Err(e) => return fail(e.to_string()),
    };
    let procs = match scan(proc_root) {
        Ok(procs) => procs,
        Err(e) => return fail(format!("cannot read {}: {e}", proc_root.display())),
    };
    let me = i32::try_from(std::process::id()).unwrap_or(-1);
    let pids: Vec<i32> = matching(&procs, sel, uid, me)
        .iter()
        .map(|p| p.pid)
        .collect();
    let count = pids.len() as u64;
    let default_critical = Range {
        start: Some(1),
        end: None,
        inside: false,
    };
    let critical = if warning.or(critical).is_none() {
        Some(&default_critical)
    } else {
        critical
    };
    let (status, why) = if let Some(c) = critical.filter(|c| c.alerts(count)) {
        (HealthStatus::Critical, format!("critical range {c}"))
    } else if let Some(w) = warning.filter(|w| w.alerts(count)) {
        (HealthStatus::Warning, format!("warning range {w}"))
    } else {
        let ranges: Vec<String> = [("warning", warning), ("critical", critical)]
            .into_iter()
            .filter_map(|(k, r)| r.map(|r| format!("{k} range {r}")))
            .collect();
        (HealthStatus::Passing, ranges.join(", "))
    };
    let noun = if count == 1 { "process" } else { "processes" };
    let what = match *sel == Selector::default() {
        true => "in total".to_string(),
        false => format!("matching {desc}"),
    };
    Verdict::new(status, format!("{count} {noun} {what} ({why})"))
        .with("count", count)
        .with("selector", desc)
        .with("pids", pids.into_iter().take(20).collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::process::{Child, Command};

    fn r(s: &str) -> Range {
        parse_range(s).unwrap()
    }

    fn p(pid: i32, name: &str, cmdline: &str, uid: u32) -> ProcInfo {
        ProcInfo {
            pid,
            name: name.into(),
            cmdline: cmdline.into(),
            uid,
        }
    }

    fn sel(name: Option<&str>, args: Option<&str>, user: Option<&str>) -> Selector {
        let s = |v: Option<&str>| v.map(String::from);
        Selector {
            name: s(name),
            args: s(args),
            user: s(user),
        }
    }

    #[test]
    fn parse_range_forms() {
        let range = |start, end, inside| Range { start, end, inside };
        assert_eq!(r("10"), range(Some(0), Some(10), false));
        assert_eq!(r("10:"), range(Some(10), None, false));
        assert_eq!(r("~:10"), range(None, Some(10), false));
        assert_eq!(r("10:20"), range(Some(10), Some(20), false));
        assert_eq!(r("@10:20"), range(Some(10), Some(20), true));
        assert_eq!(r(":5"), range(Some(0), Some(5), false));
        assert_eq!(r(" 1:1 ").to_string(), "1:1");
        assert_eq!(r("@~:").to_string(), "@~:");
    }

    #[test]
    fn parse_range_errors() {
        assert!(matches!(parse_range(""), Err(RangeError::Empty(_))));
        assert!(matches!(parse_range("@"), Err(RangeError::Empty(_))));
        assert!(matches!(
            parse_range("abc"),
            Err(RangeError::InvalidNumber { .. })
        ));
        assert!(matches!(
            parse_range("1:2:3"),
            Err(RangeError::InvalidNumber { .. })
        ));
        assert!(matches!(
            parse_range("5:2"),
            Err(RangeError::Reversed { .. })
        ));
        let msg = parse_range("abc").unwrap_err().to_string();
        assert!(msg.contains("\"abc\""), "{msg}");
        assert!(parse_range("5:2")
            .unwrap_err()
            .to_string()
            .contains("\"5:2\""));
    }

    #[test]
    fn alerts_outside_or_inside() {
        assert!(!r("1:1").alerts(1) && r("1:1").alerts(0) && r("1:1").alerts(2));
        assert!(r("10").alerts(11) && !r("10").alerts(0));
        assert!(r("10:").alerts(9) && !r("10:").alerts(u64::MAX));
        assert!(!r("~:10").alerts(0) && r("~:10").alerts(11));
        assert!(r("@10:20").alerts(15) && !r("@10:20").alerts(21));
    }

    proptest! {
        #[test]
        fn parse_range_never_panics(s in "\\PC{0,20}", t in "[@~:0-9-]{0,8}") {
            let _ = parse_range(&s);
            if let Ok(range) = parse_range(&t) {
                prop_assert_eq!(parse_range(&range.to_string()), Ok(range));
            }
        }

        #[test]
        fn alerts_is_outside(a in 0u64..1000, len in 0u64..1000, v in 0u64..3000) {
            let b = a + len;
            let range = r(&format!("{a}:{b}"));
            prop_assert_eq!(range.alerts(v), !(a <= v && v <= b));
            prop_assert_eq!(r(&format!("@{a}:{b}")).alerts(v), a <= v && v <= b);
        }
    }

    #[test]
    fn matching_selectors_and_self_exclusion() {
        let procs = [
            p(1, "nginx", "nginx: master process /usr/sbin/nginx", 0),
            p(2, "nginx", "nginx: worker process", 33),
            p(3, "python3", "/usr/bin/python3 /opt/app.py --port 80", 33),
            p(
                4,
                "a-very-long-pro",
                "/opt/bin/a-very-long-program-name x",
                0,
            ),
            p(5, "kworker/0:1", "", 0),
        ];
        let pids = |s: &Selector, uid, me| -> Vec<i32> {
            matching(&procs, s, uid, me).iter().map(|p| p.pid).collect()
        };
        assert_eq!(pids(&sel(Some("nginx"), None, None), None, 0), [1, 2]);
        assert_eq!(
            pids(&sel(Some("a-very-long-program-name"), None, None), None, 0),
            [4]
        );
        assert_eq!(pids(&sel(None, Some("app.py --port"), None), None, 0), [3]);
        assert_eq!(pids(&sel(None, None, Some("33")), None, 0), [2, 3]);
        assert_eq!(
            pids(&sel(None, None, Some("www-data")), Some(33), 0),
            [2, 3]
        );
        assert_eq!(
            pids(&sel(None, None, Some("nobody-xyz")), None, 0),
            [] as [i32; 0]
        );
        assert_eq!(
            pids(&sel(Some("nginx"), Some("worker"), Some("33")), None, 0),
            [2]
        );
        assert_eq!(pids(&sel(Some("nginx"), None, None), None, 1), [2]);
        assert_eq!(pids(&Selector::default(), None, 3), [1, 2, 4, 5]);
    }

    #[test]
    fn scan_fake_proc_tree() {
        let dir = tempfile::tempdir().unwrap();
        let write = |pid: &str, comm: &str, cmdline: &[u8], uid: u32| {
            let d = dir.path().join(pid);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("stat"), format!("{pid} ({comm}) S 0 1 1 0")).unwrap();
            std::fs::write(d.join("cmdline"), cmdline).unwrap();
            let status = format!("Name:\t{comm}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n");
            std::fs::write(d.join("status"), status).unwrap();
        };
        write("1", "sleep", b"sleep\x00300\x00", 1000);
        write("2", "my (odd) name", b"", 0);
        write("self", "sleep", b"sleep\x00300\x00", 1000);
        std::fs::create_dir(dir.path().join("3")).unwrap(); // vanished mid-scan
        let procs = scan(dir.path()).unwrap();
        assert_eq!(
            procs,
            [
                p(1, "sleep", "sleep 300", 1000),
                p(2, "my (odd) name", "", 0)
            ]
        );
        assert!(scan(&dir.path().join("missing")).is_err());
        let v = check(&sel(None, Some("sleep 300"), None), None, None, dir.path());
        assert_eq!(
            (v.status, v.details["count"].as_u64()),
            (HealthStatus::Passing, Some(1))
        );
        let v = check(&Selector::default(), None, Some(&r("5:")), dir.path());
        assert_eq!(v.status, HealthStatus::Critical, "{}", v.message);
        let v = check(
            &sel(None, None, Some("no-such-user-xyz")),
            None,
            None,
            dir.path(),
        );
        assert!(v.status == HealthStatus::Critical && v.message.contains("no such user"));
        let v = check(
            &Selector::default(),
            None,
            None,
            &dir.path().join("missing"),
        );
        assert!(v.status == HealthStatus::Critical && v.message.contains("cannot read"));
    }

    /// Kills and reaps the spawned sleeps even when an assertion fails.
    struct Kids(Vec<Child>);

    impl Drop for Kids {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    #[test]
    fn check_counts_real_processes() {
        // Fixed width, so no other test binary's pid can make a superstring of ours.
        let secs = format!("30{:07}", std::process::id());
        let spawn = || Command::new("sleep").arg(&secs).spawn().unwrap();
        let _kids = Kids(vec![spawn(), spawn()]);
        let s = sel(None, Some(&format!("sleep {secs}")), None);
        let proc_root = Path::new("/proc");
        let run = |w: Option<&str>, c: Option<&str>| {
            check(&s, w.map(r).as_ref(), c.map(r).as_ref(), proc_root)
        };
        // Until both children have exec'd sleep, their cmdline is still ours.
        for _ in 0..100 {
            if run(None, Some("2:2")).status == HealthStatus::Passing {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let v = run(None, Some("2:2"));
        assert_eq!(v.status, HealthStatus::Passing, "{}", v.message);
        assert_eq!(v.details["count"], 2);
        assert_eq!(v.details["pids"].as_array().map(Vec::len), Some(2));
        let v = run(None, Some("1:1"));
        assert_eq!(v.status, HealthStatus::Critical, "{}", v.message);
        assert!(
            v.message.starts_with("2 processes matching args=\"sleep "),
            "{}",
            v.message
        );
        assert!(v.message.ends_with("(critical range 1:1)"), "{}", v.message);
        assert_eq!(run(Some("3:"), Some("2:2")).status, HealthStatus::Warning);
        assert_eq!(run(Some("3:"), None).status, HealthStatus::Warning);
        assert_eq!(run(Some("1:2"), Some("2:")).status, HealthStatus::Passing);
    }
}
