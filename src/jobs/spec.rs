//! The job document: parsing and validation. Pure: no IO.
//!
//! Field names are consul_servant's. Like Go's encoding/json, which consul_servant used, field
//! names match case-insensitively and unknown fields are ignored.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::process::container::{ContainerSpec, ContainerSpecError};
use crate::util::duration::parse_duration;
use crate::util::json::canonical_keys;
pub use crate::wire::{CheckSpec, ServiceSpec};

/// Default `Timeout` when a job gives none (consul_servant's).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How a job's command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum JobType {
    /// `/bin/sh -c Command`.
    #[default]
    Shell,
    /// `Args` (or `Command` split on whitespace) as argv, no shell.
    Exec,
    /// A container of `Image`: `Args`, or `Command` with the image's `/bin/sh -c`.
    Docker,
}

/// The job document as submitted, before defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawJob {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    command: Option<String>,
    #[serde(default)]
    no_wait: Option<bool>,
    #[serde(default)]
    timeout: Option<Value>,
    #[serde(rename = "Type", default)]
    job_type: Option<String>,
    #[serde(default)]
    services: Option<Vec<ServiceSpec>>,
    #[serde(default)]
    env: Option<BTreeMap<String, String>>,
    #[serde(rename = "EnvFromKV", default)]
    env_from_kv: Option<BTreeMap<String, String>>,
    #[serde(default)]
    dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    retries: Option<u32>,
    #[serde(default)]
    args: Option<Vec<String>>,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    docker: Option<Value>,
}

/// A validated job, ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSpec {
    /// The job's ID: the last segment of its key.
    pub id: String,
    /// `Name`, defaulting to the ID.
    pub name: String,
    /// `Command` as given (shell text for `shell`).
    pub command: String,
    pub job_type: JobType,
    /// argv for `exec`.
    pub argv: Vec<String>,
    pub no_wait: bool,
    pub timeout: Duration,
    pub services: Vec<ServiceSpec>,
    pub env: BTreeMap<String, String>,
    /// `EnvFromKV`: variables whose values are read from these KV keys (plain paths, not under
    /// the kv_prefix) just before the job starts. The values are secret: redacted from its output.
    pub env_from_kv: BTreeMap<String, String>,
    pub dir: Option<String>,
    pub user: Option<String>,
    /// Extra attempts after the first, when a node dies mid-run.
    pub retries: u32,
    /// `Image` and the `Docker` object of a `docker` job.
    pub container: Option<ContainerSpec>,
}

/// Why a job is refused. The text goes into the result's `ExitErrors`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("invalid job ID {0:?}: an ID is one key segment without spaces, control characters or \"..\"")]
    BadId(String),
    #[error("malformed job JSON: {0}")]
    Malformed(String),
    #[error("wrong field type: {0}")]
    WrongType(String),
    #[error("unknown Type {0:?}: expected shell, exec or docker")]
    UnknownType(String),
    #[error("{0}")]
    Container(#[from] ContainerSpecError),
    #[error("{0}")]
    Invalid(String),
    /// Outside this node's `[jobs]` policy.
    #[error("{0}")]
    Policy(#[from] crate::process::policy::Violation),
}

/// The canonical top-level field names; input keys match them case-insensitively.
const FIELDS: &[&str] = &[
    "ID",
    "Name",
    "Command",
    "NoWait",
    "Timeout",
    "Type",
    "Services",
    "Env",
    "EnvFromKV",
    "Dir",
    "User",
    "Retries",
    "Args",
    "Image",
    "Docker",
];
const SERVICE_FIELDS: &[&str] = &["ID", "Name", "Tags", "Port", "Address", "Check"];
const CHECK_FIELDS: &[&str] = &["TTL", "HTTP", "TCP", "Args", "Interval", "Timeout"];

/// Checks that a job ID can be a single, safe key segment.
pub fn validate_id(id: &str) -> Result<(), Rejection> {
    let bad = id.is_empty()
        || id == "."
        || id.contains("..")
        || id.contains('/')
        || id.chars().any(|c| c.is_whitespace() || c.is_control())
        || id.len() > 200;
    if bad {
        Err(Rejection::BadId(id.to_string()))
    } else {
        Ok(())
    }
}

/// Parses a job stored under a key whose last segment is `id`.
pub fn parse_job(id: &str, body: &[u8]) -> Result<JobSpec, Rejection> {
    validate_id(id)?;
    let mut v: Value =
        serde_json::from_slice(body).map_err(|e| Rejection::Malformed(e.to_string()))?;
    if !v.is_object() {
        return Err(Rejection::Malformed(format!(
            "a job is a JSON object, not {}",
            crate::util::json::kind(&v)
        )));
    }
    canonical_keys(&mut v, FIELDS);
    if let Some(Value::Array(svcs)) = v.get_mut("Services") {
        for s in svcs.iter_mut() {
            canonical_keys(s, SERVICE_FIELDS);
            if let Some(c) = s.get_mut("Check") {
                canonical_keys(c, CHECK_FIELDS);
            }
        }
    }
    let raw: RawJob = serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        Rejection::WrongType(format!("{path}: {}", e.into_inner()))
    })?;
    let job_type = match raw
        .job_type
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("") | Some("shell") => JobType::Shell,
        Some("exec") => JobType::Exec,
        Some("docker") => JobType::Docker,
        Some(_) => return Err(Rejection::UnknownType(raw.job_type.unwrap_or_default())),
    };
    let timeout = match raw.timeout {
        None | Some(Value::Null) => DEFAULT_TIMEOUT,
        Some(Value::Number(n)) => match n.as_f64() {
            Some(s) if s < 0.0 => {
                return Err(Rejection::Invalid(format!("Timeout: negative value {n}")))
            }
            Some(0.0) => DEFAULT_TIMEOUT,
            Some(s) => Duration::try_from_secs_f64(s)
                .map_err(|_| Rejection::Invalid(format!("Timeout: {n} is out of range")))?,
            None => {
                return Err(Rejection::Invalid(format!(
                    "Timeout: {n} is not a number of seconds"
                )))
            }
        },
        Some(Value::String(s)) => match parse_duration(&s) {
            Ok(d) if d.is_zero() => DEFAULT_TIMEOUT,
            Ok(d) => d,
            Err(e) => return Err(Rejection::WrongType(format!("Timeout: {e}"))),
        },
        Some(other) => {
            return Err(Rejection::WrongType(format!(
                "Timeout: expected seconds or a duration string, found {}",
                crate::util::json::kind(&other)
            )))
        }
    };
    let command = raw.command.unwrap_or_default();
    let argv = match job_type {
        JobType::Exec => match raw.args {
            Some(a) if !a.is_empty() => a,
            _ => command.split_whitespace().map(str::to_string).collect(),
        },
        _ => raw.args.unwrap_or_default(),
    };
    match job_type {
        JobType::Shell if command.trim().is_empty() => {
            return Err(Rejection::Invalid("Command is empty".into()))
        }
        JobType::Exec if argv.is_empty() => {
            return Err(Rejection::Invalid(
                "an exec job needs Args or a Command".into(),
            ))
        }
        _ => {}
    }
    let container = match job_type {
        JobType::Docker => {
            let Some(image) = raw.image.as_deref().filter(|i| !i.is_empty()) else {
                return Err(Rejection::Invalid("a docker job needs an Image".into()));
            };
            if let Some(d) = raw.dir.as_deref().filter(|d| !d.is_empty()) {
                if !d.starts_with('/') {
                    return Err(Rejection::Invalid(format!(
                        "Dir {d:?}: a container's working directory is an absolute path"
                    )));
                }
            }
            Some(ContainerSpec::parse(image, raw.docker.as_ref())?)
        }
        _ if raw.docker.as_ref().is_some_and(|d| !d.is_null()) => {
            return Err(Rejection::Invalid(
                "Docker is for Type docker; this job's Type is not docker".into(),
            ))
        }
        _ if raw.image.as_deref().is_some_and(|i| !i.is_empty()) => {
            return Err(Rejection::Invalid(
                "Image is for Type docker; this job's Type is not docker".into(),
            ))
        }
        _ => None,
    };
    let services = raw.services.unwrap_or_default();
    for (i, s) in services.iter().enumerate() {
        if s.name().is_empty() {
            return Err(Rejection::Invalid(format!(
                "Services[{i}]: a service needs a Name or an ID"
            )));
        }
        if let Some(c) = &s.check {
            for (field, val) in [
                ("Interval", &c.interval),
                ("Timeout", &c.timeout),
                ("TTL", &c.ttl),
            ] {
                if let Some(v) = val {
                    parse_duration(v).map_err(|e| {
                        Rejection::Invalid(format!("Services[{i}].Check.{field}: {e}"))
                    })?;
                }
            }
        }
    }
    let env = raw.env.unwrap_or_default();
    let env_from_kv = raw.env_from_kv.unwrap_or_default();
    for name in env.keys() {
        if let Some(why) = env_name_error(name) {
            return Err(Rejection::Invalid(format!("Env: {name:?} {why}")));
        }
    }
    for (name, key) in &env_from_kv {
        if let Some(why) = env_name_error(name) {
            return Err(Rejection::Invalid(format!("EnvFromKV: {name:?} {why}")));
        }
        if env.contains_key(name) {
            return Err(Rejection::Invalid(format!(
                "EnvFromKV: {name:?} is also in Env; a variable comes from one of them"
            )));
        }
        if key.trim_matches('/').is_empty() || key.contains('\0') {
            return Err(Rejection::Invalid(format!(
                "EnvFromKV: {name:?}: {key:?} is not a KV key"
            )));
        }
    }
    if let Some(u) = &raw.user {
        if u.is_empty() || u.contains(char::is_whitespace) {
            return Err(Rejection::Invalid(format!("User {u:?} is not a user name")));
        }
    }
    Ok(JobSpec {
        id: id.to_string(),
        name: raw
            .name
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| id.to_string()),
        command,
        job_type,
        argv,
        no_wait: raw.no_wait.unwrap_or(false),
        timeout,
        services,
        env,
        env_from_kv,
        dir: raw.dir.filter(|d| !d.is_empty()),
        user: raw.user,
        retries: raw.retries.unwrap_or(0),
        container,
    })
}

/// Why `name` cannot be an environment variable's name, if it cannot: `execve` takes
/// `NAME=value` strings, so a name is non-empty without `=` or NUL.
fn env_name_error(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is not a variable name: it is empty")
    } else if name.contains('=') {
        Some("is not a variable name: it contains '='")
    } else if name.contains('\0') {
        Some("is not a variable name: it contains a NUL")
    } else {
        None
    }
}

/// Best-effort fields of a job that failed to parse, so its rejection still names it.
pub fn salvage(body: &[u8]) -> (String, String, bool) {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let get = |name: &str| {
        v.as_object().and_then(|m| {
            m.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        })
    };
    let name = get("Name")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let command = get("Command")
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(4096)]).into_owned());
    let no_wait = get("NoWait").and_then(|v| v.as_bool()).unwrap_or(false);
    (name, command, no_wait)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn consul_servant_readme_example() {
        let j = parse_job("job1", br#"{ "Command": "echo hello world" }"#).unwrap();
        assert_eq!(j.command, "echo hello world");
        assert_eq!(j.timeout, DEFAULT_TIMEOUT);
        assert_eq!(j.job_type, JobType::Shell);
        assert_eq!(j.name, "job1");
    }

    #[test]
    fn service_port_as_string_from_the_readme() {
        let j = parse_job("61", br#"{"Command": "docker ps", "Timeout": 3, "Services": [ { "ID": "blu3", "Name": "blu3", "Port": "80", "Check": {"TTL": "23s"}} ] }"#).unwrap();
        assert_eq!(j.services[0].port, Some(80));
        assert_eq!(
            j.services[0].check.as_ref().unwrap().ttl.as_deref(),
            Some("23s")
        );
        assert_eq!(j.timeout, Duration::from_secs(3));
    }

    #[test]
    fn field_names_match_case_insensitively_like_go() {
        let j = parse_job(
            "a",
            br#"{"command": "true", "nowait": true, "TIMEOUT": "90s"}"#,
        )
        .unwrap();
        assert!(j.no_wait);
        assert_eq!(j.timeout, Duration::from_secs(90));
    }

    #[test]
    fn rejections_are_classified() {
        assert!(matches!(
            parse_job("a", b"{not json"),
            Err(Rejection::Malformed(_))
        ));
        assert!(matches!(
            parse_job("a", b"[1]"),
            Err(Rejection::Malformed(_))
        ));
        let e = parse_job("a", br#"{"Command": "true", "NoWait": "yes"}"#).unwrap_err();
        assert!(
            matches!(&e, Rejection::WrongType(m) if m.contains("NoWait")),
            "{e}"
        );
        assert!(matches!(
            parse_job("a", br#"{"Command": "true", "Type": "rocket"}"#),
            Err(Rejection::UnknownType(_))
        ));
        assert!(matches!(
            parse_job("a", br#"{"Command": "true", "Type": "docker"}"#),
            Err(Rejection::Invalid(m)) if m.contains("Image")
        ));
        assert!(matches!(
            parse_job("a b", br#"{"Command": "true"}"#),
            Err(Rejection::BadId(_))
        ));
        assert!(matches!(
            parse_job("..", br#"{"Command": "true"}"#),
            Err(Rejection::BadId(_))
        ));
        assert!(matches!(
            parse_job(
                "a",
                br#"{"Command": "true", "Services": [{"Name": "x", "Port": "http"}]}"#
            ),
            Err(Rejection::WrongType(_))
        ));
        assert!(matches!(
            parse_job("a", br#"{"Command": "true", "Timeout": "soon"}"#),
            Err(Rejection::WrongType(_))
        ));
        assert!(matches!(
            parse_job("a", br#"{"Command": ""}"#),
            Err(Rejection::Invalid(_))
        ));
    }

    #[test]
    fn exec_takes_args_or_splits_command() {
        let j = parse_job("a", br#"{"Type": "exec", "Args": ["printf", "%s", "a b"]}"#).unwrap();
        assert_eq!(j.argv, vec!["printf", "%s", "a b"]);
        let j = parse_job("a", br#"{"Type": "exec", "Command": "echo  hi"}"#).unwrap();
        assert_eq!(j.argv, vec!["echo", "hi"]);
    }

    #[test]
    fn docker_jobs_take_an_image_and_the_docker_object() {
        let j = parse_job(
            "d1",
            br#"{"Type":"docker","Image":"servant-test/busybox","Command":"echo hi"}"#,
        )
        .unwrap();
        assert_eq!(j.job_type, JobType::Docker);
        let c = j.container.unwrap();
        assert_eq!(c.image, "servant-test/busybox");
        assert!(c.ports.is_empty());
        let j = parse_job(
            "d2",
            br#"{"type":"docker","image":"img:1","args":["echo","a b"],"docker":{"ports":["8080:80"],"memory":"32m","pull":"never"}}"#,
        )
        .unwrap();
        assert_eq!(j.argv, vec!["echo", "a b"]);
        let c = j.container.unwrap();
        assert_eq!(c.ports[0].host_port, Some(8080));
        assert_eq!(c.memory, Some(32 << 20));
        // No command at all: the image's own.
        assert!(parse_job("d3", br#"{"Type":"docker","Image":"img"}"#).is_ok());
    }

    /// Issue 13's bad input: each is a rejection that says why.
    #[test]
    fn bad_docker_input_is_rejected_saying_why() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"Type":"docker","Image":"img","Docker":{"Privileged":true}}"#,
                "unknown key \"Privileged\"",
            ),
            (
                r#"{"Type":"docker","Image":"img","Docker":{"Ports":["80:http"]}}"#,
                "bad port spec \"80:http\"",
            ),
            (
                r#"{"Type":"docker","Image":"busy box","Command":"true"}"#,
                "Image \"busy box\" is not an image name: it contains spaces",
            ),
            (
                r#"{"Type":"docker","Image":"img","Docker":{"Volumes":["./rel:/x"]}}"#,
                "absolute host path or a volume name",
            ),
            (r#"{"Type":"docker","Image":"img","Dir":"rel"}"#, "absolute"),
            (
                r#"{"Command":"true","Image":"img"}"#,
                "Image is for Type docker",
            ),
            (
                r#"{"Command":"true","Docker":{"Ports":["80"]}}"#,
                "Docker is for Type docker",
            ),
        ];
        for (body, says) in cases {
            let e = parse_job("x", body.as_bytes()).unwrap_err();
            assert!(e.to_string().contains(says), "{body}: {e}");
        }
    }

    #[test]
    fn env_from_kv_names_variables_and_keys() {
        let j = parse_job(
            "a",
            br#"{"Command": "true", "Env": {"A": "1"}, "envfromkv": {"TOKEN": "secret/db/token"}}"#,
        )
        .unwrap();
        assert_eq!(j.env_from_kv["TOKEN"], "secret/db/token");
        assert_eq!(j.env["A"], "1");
        let cases: &[(&str, &str)] = &[
            (
                r#"{"Command":"true","Env":{"T":"1"},"EnvFromKV":{"T":"k"}}"#,
                "EnvFromKV: \"T\" is also in Env",
            ),
            (
                r#"{"Command":"true","EnvFromKV":{"A=B":"k"}}"#,
                "EnvFromKV: \"A=B\" is not a variable name",
            ),
            (
                r#"{"Command":"true","EnvFromKV":{"":"k"}}"#,
                "EnvFromKV: \"\" is not a variable name",
            ),
            (
                r#"{"Command":"true","EnvFromKV":{"T":"/"}}"#,
                "EnvFromKV: \"T\": \"/\" is not a KV key",
            ),
            (r#"{"Command":"true","Env":{"A=B":"1"}}"#, "Env: \"A=B\""),
        ];
        for (body, says) in cases {
            let e = parse_job("x", body.as_bytes()).unwrap_err();
            assert!(e.to_string().contains(says), "{body}: {e}");
        }
        let e = parse_job("x", br#"{"Command":"true","EnvFromKV":{"T":1}}"#).unwrap_err();
        assert!(
            matches!(&e, Rejection::WrongType(m) if m.contains("EnvFromKV")),
            "{e}"
        );
    }

    proptest! {
        #[test]
        fn docker_objects_never_panic_the_parser(ports in proptest::collection::vec("\\PC{0,12}", 0..3), mem in "\\PC{0,8}", key in "[A-Za-z]{1,10}", image in "\\PC{0,20}") {
            let body = serde_json::json!({"Type": "docker", "Image": image, "Docker": {"Ports": ports, "Memory": mem, key: 1}});
            let _ = parse_job("id", body.to_string().as_bytes());
        }

        #[test]
        fn parser_never_panics_on_bytes(body in proptest::collection::vec(any::<u8>(), 0..300), id in "\\PC{0,12}") {
            let _ = parse_job(&id, &body);
            let _ = salvage(&body);
        }

        #[test]
        fn parser_never_panics_on_json_shapes(cmd in "\\PC{0,40}", t in prop_oneof![Just("1".to_string()), Just("\"90s\"".to_string()), Just("-1".to_string()), Just("\"x\"".to_string()), Just("1e300".to_string()), Just("[]".to_string())], port in prop_oneof![Just("80".to_string()), Just("\"80\"".to_string()), Just("70000".to_string()), Just("\"-1\"".to_string()), Just("null".to_string())]) {
            let body = format!(r#"{{"Command": {}, "Timeout": {t}, "Services": [{{"Name": "s", "Port": {port}}}]}}"#, serde_json::to_string(&cmd).unwrap());
            let _ = parse_job("id", body.as_bytes());
        }

        #[test]
        fn any_command_text_arrives_unchanged(cmd in "\\PC{1,60}") {
            prop_assume!(!cmd.trim().is_empty());
            let body = serde_json::json!({"Command": cmd}).to_string();
            prop_assert_eq!(parse_job("id", body.as_bytes()).unwrap().command, cmd);
        }
    }
}
