//! `servant template`'s loop: one blocking watch per distinct dependency, shared by every
//! template; render when the data changed and has been quiet for `wait.min` (or `wait.max`
//! passed); write a changed output atomically (temp file + rename, with perms and an optional
//! backup); run its command only when the output changed, with a timeout. A render error keeps
//! the last good file and is reported.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

use super::source::{fetch, CachedSource, Dep, DATA_FUNCS};
use super::{parse, Template};
use crate::consul::{spawn_watch, Client};
use crate::process::run::TIMEOUT_GRACE;
use crate::process::{run_with_timeout, LaunchSpec, Limits, Outcome, Output, ProcessDriver};
use crate::util::duration::{de_duration, go_format, parse_duration, ser_duration, DurationError};

/// One template: where it comes from, where it goes, what runs after a change. Every field is
/// parsed here, when the file is read: a bad value is an error naming it, never a default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    pub source: PathBuf,
    pub destination: PathBuf,
    /// Run by `sh -c` after the output changed (a reload).
    #[serde(default)]
    pub command: Option<String>,
    /// Mode of the output file, e.g. 0o644 (written as a number or an octal string).
    #[serde(default, deserialize_with = "de_perms")]
    pub perms: Option<u32>,
    /// Keep the previous output as `<destination>.bak`.
    #[serde(default)]
    pub backup: bool,
    /// The command is killed after this long (Go duration or seconds).
    #[serde(
        default = "default_command_timeout",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub command_timeout: Duration,
}

fn default_command_timeout() -> Duration {
    Duration::from_secs(30)
}

/// A file mode: a number (TOML's `0o644`) or an octal string ("644", "0o644"), at most 0o7777.
fn de_perms<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    use serde::de::Error;
    let mode = match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => u64::from_str_radix(s.trim_start_matches("0o"), 8).ok(),
        Some(_) => None,
    };
    match mode.and_then(|m| u32::try_from(m).ok()) {
        Some(m) if m <= 0o7777 => Ok(Some(m)),
        _ => Err(D::Error::custom(
            "expected a file mode such as 0o644 or \"644\" (octal, at most 7777)",
        )),
    }
}

/// Why a `-template` flag was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("-template {0:?}: expected \"in:out[:command]\"")]
pub struct TemplateFlagError(String);

/// consul-template's `-template "in:out[:command]"`.
pub fn parse_template_flag(s: &str) -> Result<TemplateSpec, TemplateFlagError> {
    let mut parts = s.splitn(3, ':');
    let source = parts.next().unwrap_or("");
    let dest = parts.next().unwrap_or("");
    if source.is_empty() || dest.is_empty() {
        return Err(TemplateFlagError(s.to_string()));
    }
    Ok(TemplateSpec {
        source: source.into(),
        destination: dest.into(),
        command: parts.next().filter(|c| !c.is_empty()).map(str::to_string),
        perms: None,
        backup: false,
        command_timeout: default_command_timeout(),
    })
}

/// Quiescence, consul-template's `wait`: render once the data was quiet for `min`, or at the
/// latest `max` after the first change. Written `min[:max]`; max defaults to 4 × min.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wait {
    pub min: Duration,
    pub max: Duration,
}

/// Why a `wait` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    #[error(transparent)]
    Duration(#[from] DurationError),
    #[error("max is below min")]
    MaxBelowMin,
}

/// `min[:max]`; max defaults to 4 × min, as consul-template does.
pub fn parse_wait(s: &str) -> Result<Wait, WaitError> {
    let (a, b) = match s.split_once(':') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let min = parse_duration(a)?;
    let max = match b {
        Some(b) => parse_duration(b)?,
        None => min * 4,
    };
    if max < min {
        return Err(WaitError::MaxBelowMin);
    }
    Ok(Wait { min, max })
}

impl FromStr for Wait {
    type Err = WaitError;
    fn from_str(s: &str) -> Result<Wait, WaitError> {
        parse_wait(s)
    }
}

impl<'de> Deserialize<'de> for Wait {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Wait, D::Error> {
        let s = String::deserialize(d)?;
        parse_wait(&s).map_err(|e| serde::de::Error::custom(format!("wait {s:?}: {e}")))
    }
}

impl Serialize for Wait {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}:{}", go_format(self.min), go_format(self.max)))
    }
}

/// How the runner behaves.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub templates: Vec<TemplateSpec>,
    /// Quiescence: render after the data was quiet this long...
    pub wait_min: Duration,
    /// ...or at the latest this long after the first change.
    pub wait_max: Duration,
    /// Render once, when every dependency has data, then stop.
    pub once: bool,
    /// Print to stdout instead of writing files or running commands.
    pub dry: bool,
    /// `wait` of the blocking queries.
    pub watch_wait: Duration,
    /// What the runner counts for `/metrics` (the agent registers it).
    pub metrics: super::metrics::TemplateMetrics,
}

/// Why the runner stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot read template {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error(transparent)]
    Parse(#[from] super::TemplateError),
    #[error("{0}")]
    Render(String),
    #[error("cannot print the dry run")]
    Output(#[source] crate::util::output::OutputError),
}

struct Loaded {
    spec: TemplateSpec,
    template: Template,
}

/// Starts the watch of one dependency on `tasks`: its value on `tx` whenever it changes.
fn watch(
    tasks: &TaskTracker,
    client: &Client,
    dep: Dep,
    wait: Duration,
    tx: mpsc::UnboundedSender<(Dep, Value)>,
    stop: &CancellationToken,
) {
    let c = client.clone();
    let d = dep.clone();
    let mut rx = spawn_watch(
        tasks,
        format!("template dependency {dep:?}"),
        wait,
        move |q| {
            let c = c.clone();
            let d = d.clone();
            async move { fetch(&c, &d, &q).await }
        },
        stop,
    );
    tasks.spawn(async move {
        while rx.changed().await.is_ok() {
            let v = rx.borrow_and_update().clone();
            if let Some(v) = v {
                if tx.send((dep.clone(), v)).is_err() {
                    return;
                }
            }
        }
    });
}

/// Writes `text` to `dest` atomically, on a blocking thread; keeps the old file as `.bak` when
/// asked.
async fn write_atomic(spec: &TemplateSpec, text: &str) -> std::io::Result<()> {
    let (spec, text) = (spec.clone(), text.to_string());
    tokio::task::spawn_blocking(move || write_atomic_blocking(&spec, &text))
        .await
        .map_err(std::io::Error::other)?
}

fn write_atomic_blocking(spec: &TemplateSpec, text: &str) -> std::io::Result<()> {
    let dest = &spec.destination;
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let tmp = dir.join(format!(
        ".{}.servant-tmp",
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("out")
    ));
    let written = (|| {
        std::fs::write(&tmp, text)?;
        let mode = spec.perms.or_else(|| {
            std::fs::metadata(dest)
                .ok()
                .map(|m| m.permissions().mode() & 0o7777)
        });
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode.unwrap_or(0o644)))?;
        if spec.backup && dest.exists() {
            std::fs::copy(dest, PathBuf::from(format!("{}.bak", dest.display())))?;
        }
        std::fs::rename(&tmp, dest)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Bytes of a command's output kept for the log.
const COMMAND_OUTPUT_CAP: usize = 4096;

/// Why a template's command failed.
#[derive(Debug, thiserror::Error)]
enum CommandError {
    #[error("cannot run {cmd:?}: {detail}")]
    Start { cmd: String, detail: String },
    #[error("{cmd:?} exited {code}{output}")]
    Exited {
        cmd: String,
        code: i32,
        output: String,
    },
    #[error("{cmd:?} killed after {timeout:?}{output}")]
    TimedOut {
        cmd: String,
        timeout: Duration,
        output: String,
    },
}

/// Runs a template's command (`sh -c`, a process group of its own) with its timeout, after
/// which it gets SIGTERM, then SIGKILL after `grace`. Its output (stdout and stderr, capped).
async fn run_command(
    cmd: &str,
    timeout: Duration,
    grace: Duration,
) -> Result<String, CommandError> {
    let spec = LaunchSpec::shell(cmd, &Default::default()).output(Output::Capture {
        dir: None,
        combined: true,
    });
    let limits = Limits {
        timeout,
        grace,
        cap: COMMAND_OUTPUT_CAP,
    };
    let done = run_with_timeout(&ProcessDriver::current(), &spec, limits)
        .await
        .map_err(|e| CommandError::Start {
            cmd: cmd.to_string(),
            detail: e.detail(),
        })?;
    let text = done.output.stdout;
    let output = match text.trim() {
        "" => String::new(),
        t => format!(": {t}"),
    };
    match done.outcome {
        Outcome::Exited { code: 0, .. } => Ok(text),
        Outcome::Exited { code, .. } => Err(CommandError::Exited {
            cmd: cmd.to_string(),
            code,
            output,
        }),
        Outcome::TimedOut | Outcome::Killed(_) => Err(CommandError::TimedOut {
            cmd: cmd.to_string(),
            timeout,
            output,
        }),
    }
}

/// Runs until `shutdown` (or, with `once`, until every template rendered once).
pub async fn run(
    client: Client,
    cfg: RunnerConfig,
    stop: CancellationToken,
) -> Result<(), RunError> {
    // The watches end with this run, however it ends; all are awaited.
    let tasks = TaskTracker::new();
    let watching = stop.child_token();
    let result = render_loop(&client, &cfg, &stop, &watching, &tasks).await;
    watching.cancel();
    tasks.close();
    tasks.wait().await;
    result
}

async fn render_loop(
    client: &Client,
    cfg: &RunnerConfig,
    stop: &CancellationToken,
    watching: &CancellationToken,
    tasks: &TaskTracker,
) -> Result<(), RunError> {
    let mut loaded = Vec::new();
    for spec in &cfg.templates {
        let text = tokio::fs::read_to_string(&spec.source)
            .await
            .map_err(|e| RunError::Read {
                path: spec.source.display().to_string(),
                error: e,
            })?;
        let name = spec.source.display().to_string();
        let template = parse(&name, &text, DATA_FUNCS)?;
        loaded.push(Loaded {
            spec: spec.clone(),
            template,
        });
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<(Dep, Value)>();
    let mut cache = CachedSource::default();
    let mut watched: HashSet<Dep> = HashSet::new();
    // Dependencies known before the first render: one watch each, shared by all templates.
    for l in &loaded {
        for (name, args) in l.template.literal_calls() {
            if let Some(dep) = Dep::of(&name, &args) {
                if watched.insert(dep.clone()) {
                    watch(tasks, client, dep, cfg.watch_wait, tx.clone(), watching);
                }
            }
        }
    }
    let mut last: BTreeMap<PathBuf, String> = BTreeMap::new();
    for l in &loaded {
        if let Ok(t) = tokio::fs::read_to_string(&l.spec.destination).await {
            last.insert(l.spec.destination.clone(), t);
        }
    }
    let mut first_render = true;
    loop {
        // Wait for data: everything watched has a value, then quiescence. A template that
        // needs no Consul data renders at once.
        let nothing_to_wait_for = first_render && watched.is_empty();
        if !nothing_to_wait_for {
            let first = tokio::select! {
                m = rx.recv() => m,
                _ = stop.cancelled() => return Ok(()),
            };
            let Some((dep, v)) = first else { return Ok(()) };
            cache.data.insert(dep, v);
        }
        if !nothing_to_wait_for && (!first_render || !cfg.wait_min.is_zero()) {
            let deadline = tokio::time::Instant::now() + cfg.wait_max;
            loop {
                let quiet = tokio::time::Instant::now() + cfg.wait_min;
                tokio::select! {
                    m = rx.recv() => match m {
                        Some((d, v)) => { cache.data.insert(d, v); }
                        None => return Ok(()),
                    },
                    _ = tokio::time::sleep_until(quiet.min(deadline)) => break,
                    _ = stop.cancelled() => return Ok(()),
                }
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
            }
        }
        // Take whatever else arrived meanwhile.
        while let Ok((d, v)) = rx.try_recv() {
            cache.data.insert(d, v);
        }
        if watched.iter().any(|d| !cache.data.contains_key(d)) {
            continue;
        }
        first_render = false;
        let mut all_rendered = true;
        let mut failures = Vec::new();
        for l in &loaded {
            cache.missing.clear();
            let out = l.template.execute(&Value::Null, &mut cache);
            if !cache.missing.is_empty() {
                // Found dependencies the first pass could not see (computed arguments).
                for dep in std::mem::take(&mut cache.missing) {
                    if watched.insert(dep.clone()) {
                        watch(tasks, client, dep, cfg.watch_wait, tx.clone(), watching);
                    }
                }
                all_rendered = false;
                continue;
            }
            let text = match out {
                Ok(t) => t,
                Err(e) => {
                    cfg.metrics.rendered("render_error");
                    error!(template = %l.spec.source.display(), error = %e, "render failed; the last good file stays");
                    failures.push(e.to_string());
                    continue;
                }
            };
            if cfg.dry {
                let shown = format!("> {}\n{text}\n", l.spec.destination.display());
                crate::util::output::write(shown.as_bytes()).map_err(RunError::Output)?;
                continue;
            }
            if last.get(&l.spec.destination) == Some(&text) {
                cfg.metrics.rendered("unchanged");
                continue;
            }
            if let Err(e) = write_atomic(&l.spec, &text).await {
                cfg.metrics.rendered("write_error");
                error!(file = %l.spec.destination.display(), error = %e, "cannot write the output");
                failures.push(format!("{}: {e}", l.spec.destination.display()));
                continue;
            }
            cfg.metrics.rendered("written");
            info!(file = %l.spec.destination.display(), "rendered");
            last.insert(l.spec.destination.clone(), text);
            if let Some(cmd) = &l.spec.command {
                match run_command(cmd, l.spec.command_timeout, TIMEOUT_GRACE).await {
                    Ok(out) => info!(command = %cmd, output = %out.trim_end(), "command ran"),
                    Err(e) => error!(error = %e, "command failed"),
                }
            }
        }
        if cfg.once && all_rendered {
            return if failures.is_empty() {
                Ok(())
            } else {
                Err(RunError::Render(failures.join("; ")))
            };
        }
        if !all_rendered {
            // New watches answer soon; render again then.
            continue;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_and_wait_flags() {
        let t = parse_template_flag("in.ctmpl:/etc/nginx/conf.d/x.conf:nginx -s reload").unwrap();
        assert_eq!(t.source, PathBuf::from("in.ctmpl"));
        assert_eq!(t.destination, PathBuf::from("/etc/nginx/conf.d/x.conf"));
        assert_eq!(t.command.as_deref(), Some("nginx -s reload"));
        assert_eq!(parse_template_flag("a:b").unwrap().command, None);
        assert!(parse_template_flag("only").is_err());
        let wait = |s: &str| parse_wait(s).map(|w| (w.min, w.max));
        assert_eq!(
            wait("2s").unwrap(),
            (Duration::from_secs(2), Duration::from_secs(8))
        );
        assert_eq!(
            wait("1s:3s").unwrap(),
            (Duration::from_secs(1), Duration::from_secs(3))
        );
        assert!(parse_wait("3s:1s").is_err());
        assert!(parse_wait("soon").is_err());
    }

    /// Issue 11: a command past its timeout got SIGKILL at once, with no chance to clean up.
    #[tokio::test]
    async fn a_command_past_its_timeout_gets_sigterm_then_sigkill() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("term");
        let pid_file = dir.path().join("pid");
        // Traps SIGTERM and carries on, so only the SIGKILL after the grace period ends it.
        let cmd = format!(
            "echo $$ > {}; trap 'echo term > {}' TERM; echo reloading; while :; do sleep 0.05; done",
            pid_file.display(),
            marker.display()
        );
        let t = std::time::Instant::now();
        // The timeout leaves the shell time to set its trap, even on a busy machine.
        let e = run_command(&cmd, Duration::from_secs(1), Duration::from_millis(700))
            .await
            .unwrap_err();
        // The shell may add "Terminated" for the sleep the SIGTERM ended.
        assert!(e.to_string().contains("killed after 1s: reloading"), "{e}");
        assert_eq!(
            std::fs::read_to_string(&marker).unwrap(),
            "term\n",
            "SIGTERM came first"
        );
        assert!(
            t.elapsed() >= Duration::from_millis(1700),
            "then the grace: {:?}",
            t.elapsed()
        );
        let pid = crate::process::testing::read_pid(&pid_file);
        assert!(!crate::process::testing::alive(pid), "then SIGKILL");
        assert_eq!(
            run_command("echo fine", Duration::from_secs(5), TIMEOUT_GRACE)
                .await
                .unwrap(),
            "fine\n"
        );
        let e = run_command("echo no >&2; exit 4", Duration::from_secs(5), TIMEOUT_GRACE)
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "\"echo no >&2; exit 4\" exited 4: no");
    }

    #[tokio::test]
    async fn writes_are_atomic_with_perms_and_backup() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.conf");
        let spec = TemplateSpec {
            source: "x".into(),
            destination: dest.clone(),
            command: None,
            perms: Some(0o600),
            backup: true,
            command_timeout: default_command_timeout(),
        };
        write_atomic(&spec, "one").await.unwrap();
        write_atomic(&spec, "two").await.unwrap();
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "two");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("out.conf.bak")).unwrap(),
            "one"
        );
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
