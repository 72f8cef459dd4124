//! The node's job policy (`[jobs]` in the agent's configuration): which job types, users,
//! Docker images and host paths this node runs. Pure: no IO.
//!
//! The defaults allow everything, as before the policy existed. A job outside the policy gets a
//! `rejected` result whose `ExitErrors` names the rule
//! (`rejected: policy [jobs] allowed_types does not allow "docker" on node n1`).

use std::path::{Component, Path, PathBuf};

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

use super::spec::{JobSpec, JobType};
use crate::util::Invalid;

/// What this node agrees to run. Every list left out (or `None`) allows anything.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct JobPolicy {
    /// Job types this node runs: `shell`, `exec`, `docker`. Default: all three.
    pub allowed_types: Option<Vec<JobKind>>,
    /// User names a shell or exec job's `User` may name. Default: any.
    pub allowed_users: Option<Vec<String>>,
    /// The user a shell or exec job without `User` runs as. Default: the agent's own user.
    pub default_user: Option<String>,
    /// Glob patterns a docker job's `Image` must match, as written in the job (`*` stays
    /// within one `/` segment, `**` crosses them). Default: any image.
    pub allowed_images: Option<Vec<String>>,
    /// Host path prefixes (on whole path components) a container may mount, and the named
    /// volumes it may mount (entries without a leading `/`). Default: any.
    pub allowed_volumes: Option<Vec<String>>,
    /// Privileged containers. Must stay false: jobs cannot ask for one yet (a `Privileged` key
    /// in `Docker` is refused on every node), so there is nothing to allow.
    pub allow_privileged: bool,
}

/// A job type as the policy names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Shell,
    Exec,
    Docker,
}

impl From<JobType> for JobKind {
    fn from(t: JobType) -> Self {
        match t {
            JobType::Shell => JobKind::Shell,
            JobType::Exec => JobKind::Exec,
            JobType::Docker => JobKind::Docker,
        }
    }
}

impl JobKind {
    fn name(self) -> &'static str {
        match self {
            JobKind::Shell => "shell",
            JobKind::Exec => "exec",
            JobKind::Docker => "docker",
        }
    }
}

/// A job outside the policy: the rule it breaks, what it asked for, and the node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy [jobs] {rule} does not allow {value:?} on node {node}")]
pub struct Violation {
    /// The configuration key: `allowed_types`, `allowed_users`, `allowed_images`,
    /// `allowed_volumes`.
    pub rule: &'static str,
    pub value: String,
    pub node: String,
}

/// A policy ready to check jobs: its image patterns compiled once.
#[derive(Debug, Clone, Default)]
pub struct CompiledPolicy {
    policy: JobPolicy,
    images: Option<GlobSet>,
}

fn image_glob(pattern: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(pattern).literal_separator(true).build()
}

/// `p` with `.` dropped and `..` applied, lexically (the filesystem is not consulted).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

impl JobPolicy {
    /// Values that parse but cannot work; the error names the field.
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(users) = &self.allowed_users {
            if let Some(u) = users
                .iter()
                .find(|u| u.is_empty() || u.contains(char::is_whitespace))
            {
                return Err(Invalid::new(
                    "jobs.allowed_users",
                    format!("{u:?} is not a user name"),
                ));
            }
            match &self.default_user {
                None => {
                    return Err(Invalid::new(
                        "jobs.default_user",
                        "must be set when jobs.allowed_users is: a job without User would run as the agent's own user, which the list does not name",
                    ))
                }
                Some(d) if !users.contains(d) => {
                    return Err(Invalid::new(
                        "jobs.default_user",
                        format!("{d:?} is not in jobs.allowed_users"),
                    ))
                }
                Some(_) => {}
            }
        }
        if let Some(d) = &self.default_user {
            if d.is_empty() || d.contains(char::is_whitespace) {
                return Err(Invalid::new(
                    "jobs.default_user",
                    format!("{d:?} is not a user name"),
                ));
            }
        }
        for p in self.allowed_images.iter().flatten() {
            if p.is_empty() {
                return Err(Invalid::new(
                    "jobs.allowed_images",
                    "an empty pattern matches no image",
                ));
            }
            image_glob(p)
                .map_err(|e| Invalid::new("jobs.allowed_images", format!("{p:?}: {e}")))?;
        }
        for v in self.allowed_volumes.iter().flatten() {
            let ok = if v.starts_with('/') {
                !Path::new(v)
                    .components()
                    .any(|c| matches!(c, Component::ParentDir))
            } else {
                v.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
                    && v.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
            };
            if !ok {
                return Err(Invalid::new(
                    "jobs.allowed_volumes",
                    format!(
                        "{v:?}: expected an absolute host path without \"..\", or a volume name"
                    ),
                ));
            }
        }
        if self.allow_privileged {
            return Err(Invalid::new(
                "jobs.allow_privileged",
                "privileged containers are not supported yet (a job's Docker.Privileged is refused on every node), so there is nothing to allow",
            ));
        }
        Ok(())
    }

    /// Compiles the image patterns. Call `validate` first; a pattern that does not compile is
    /// an error naming the field all the same.
    pub fn compile(&self) -> Result<CompiledPolicy, Invalid> {
        let images =
            match &self.allowed_images {
                None => None,
                Some(patterns) => {
                    let mut b = GlobSetBuilder::new();
                    for p in patterns {
                        b.add(image_glob(p).map_err(|e| {
                            Invalid::new("jobs.allowed_images", format!("{p:?}: {e}"))
                        })?);
                    }
                    Some(
                        b.build()
                            .map_err(|e| Invalid::new("jobs.allowed_images", e.to_string()))?,
                    )
                }
            };
        Ok(CompiledPolicy {
            policy: self.clone(),
            images,
        })
    }
}

impl CompiledPolicy {
    /// Checks `job` against the policy and fills in what the policy decides (`default_user`).
    /// The first rule broken is the error.
    pub fn apply(&self, job: &mut JobSpec, node: &str) -> Result<(), Violation> {
        let p = &self.policy;
        let deny = |rule: &'static str, value: &str| Violation {
            rule,
            value: value.to_string(),
            node: node.to_string(),
        };
        let kind = JobKind::from(job.job_type);
        if let Some(types) = &p.allowed_types {
            if !types.contains(&kind) {
                return Err(deny("allowed_types", kind.name()));
            }
        }
        if matches!(kind, JobKind::Shell | JobKind::Exec) {
            if job.user.is_none() {
                job.user = p.default_user.clone();
            }
            if let (Some(users), Some(u)) = (&p.allowed_users, &job.user) {
                if !users.contains(u) {
                    return Err(deny("allowed_users", u));
                }
            }
        }
        if let Some(c) = &job.container {
            if let Some(set) = &self.images {
                if !set.is_match(&c.image) {
                    return Err(deny("allowed_images", &c.image));
                }
            }
            if let Some(allowed) = &p.allowed_volumes {
                for v in &c.volumes {
                    if !volume_allowed(allowed, &v.source) {
                        return Err(deny("allowed_volumes", &v.source));
                    }
                }
            }
        }
        Ok(())
    }
}

/// A host path is allowed under a listed prefix, on whole components, after `.` and `..` are
/// applied; a named volume only when it is listed by name.
fn volume_allowed(allowed: &[String], source: &str) -> bool {
    if source.starts_with('/') {
        let path = normalize(Path::new(source));
        allowed
            .iter()
            .filter(|a| a.starts_with('/'))
            .any(|a| path.starts_with(normalize(Path::new(a))))
    } else {
        allowed.iter().any(|a| a == source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::spec::parse_job;
    use proptest::prelude::*;

    fn policy(toml_text: &str) -> CompiledPolicy {
        let p: JobPolicy = toml::from_str(toml_text).unwrap();
        p.validate().unwrap();
        p.compile().unwrap()
    }

    fn check(p: &CompiledPolicy, job: &str) -> Result<JobSpec, String> {
        let mut j = parse_job("j1", job.as_bytes()).unwrap();
        p.apply(&mut j, "n1").map_err(|e| e.to_string())?;
        Ok(j)
    }

    #[test]
    fn the_default_policy_allows_everything_and_changes_nothing() {
        let p = JobPolicy::default().compile().unwrap();
        for job in [
            r#"{"Command": "id"}"#,
            r#"{"Type": "exec", "Args": ["id"], "User": "root"}"#,
            r#"{"Type": "docker", "Image": "anything/at:all", "Docker": {"Volumes": ["/:/host", "vol:/v"]}}"#,
        ] {
            let before = parse_job("j1", job.as_bytes()).unwrap();
            assert_eq!(check(&p, job).unwrap(), before, "{job}");
        }
    }

    #[test]
    fn each_rule_names_itself_the_value_and_the_node() {
        let p = policy(
            r#"
            allowed_types = ["shell", "docker"]
            allowed_users = ["app", "nobody"]
            default_user = "nobody"
            allowed_images = ["registry.local/*"]
            allowed_volumes = ["/data", "cache"]
            "#,
        );
        assert_eq!(
            check(&p, r#"{"Type": "exec", "Args": ["id"]}"#).unwrap_err(),
            r#"policy [jobs] allowed_types does not allow "exec" on node n1"#
        );
        assert_eq!(
            check(&p, r#"{"Command": "id", "User": "root"}"#).unwrap_err(),
            r#"policy [jobs] allowed_users does not allow "root" on node n1"#
        );
        assert_eq!(
            check(
                &p,
                r#"{"Type": "docker", "Image": "docker.io/library/busybox"}"#
            )
            .unwrap_err(),
            r#"policy [jobs] allowed_images does not allow "docker.io/library/busybox" on node n1"#
        );
        assert_eq!(
            check(
                &p,
                r#"{"Type": "docker", "Image": "registry.local/app:1", "Docker": {"Volumes": ["/data/x:/x", "/database:/db"]}}"#
            )
            .unwrap_err(),
            r#"policy [jobs] allowed_volumes does not allow "/database" on node n1"#
        );
        let ok = check(
            &p,
            r#"{"Type": "docker", "Image": "registry.local/app:1", "Docker": {"Volumes": ["/data:/d", "/data/x/y:/x:ro", "cache:/c"]}}"#,
        )
        .unwrap();
        // A container's User is a user in its image: the user rules are for host processes.
        assert_eq!(ok.user, None);
        assert_eq!(
            check(&p, r#"{"Command": "id"}"#).unwrap().user.as_deref(),
            Some("nobody")
        );
        assert_eq!(
            check(&p, r#"{"Command": "id", "User": "app"}"#)
                .unwrap()
                .user
                .as_deref(),
            Some("app")
        );
    }

    #[test]
    fn image_patterns_keep_star_within_a_segment() {
        let p = policy(r#"allowed_images = ["registry.local/*", "busybox:*", "mirror/**"]"#);
        let img = |i: &str| check(&p, &format!(r#"{{"Type": "docker", "Image": "{i}"}}"#)).is_ok();
        assert!(img("registry.local/app"));
        assert!(img("registry.local/app:1.2"));
        assert!(!img("registry.local/team/app"));
        assert!(!img("registry.local.evil.example/app"));
        assert!(img("busybox:1.36"));
        assert!(!img("busybox"));
        assert!(img("mirror/a/b/c:1"));
    }

    #[test]
    fn volume_prefixes_match_whole_components_after_dot_dot() {
        let allowed = vec!["/data".to_string(), "/srv/app/".to_string(), "named".into()];
        for (src, ok) in [
            ("/data", true),
            ("/data/x", true),
            ("/data/", true),
            ("/database", false),
            ("/data/../etc", false),
            ("/data/x/../y", true),
            ("/srv/app", true),
            ("/srv/application", false),
            ("/", false),
            ("named", true),
            ("other", false),
            ("/named", false),
        ] {
            assert_eq!(volume_allowed(&allowed, src), ok, "{src}");
        }
    }

    #[test]
    fn bad_settings_are_errors_naming_the_field() {
        for (text, field) in [
            (r#"allowed_users = ["app"]"#, "jobs.default_user"),
            (
                "allowed_users = [\"app\"]\ndefault_user = \"root\"",
                "jobs.default_user",
            ),
            (r#"allowed_users = ["a b"]"#, "jobs.allowed_users"),
            (r#"default_user = """#, "jobs.default_user"),
            (r#"allowed_images = ["reg/[a"]"#, "jobs.allowed_images"),
            (r#"allowed_images = [""]"#, "jobs.allowed_images"),
            (
                r#"allowed_volumes = ["/data/../etc"]"#,
                "jobs.allowed_volumes",
            ),
            (r#"allowed_volumes = ["data/x"]"#, "jobs.allowed_volumes"),
            ("allow_privileged = true", "jobs.allow_privileged"),
        ] {
            let p: JobPolicy = toml::from_str(text).unwrap();
            assert_eq!(p.validate().unwrap_err().field, field, "{text}");
        }
        assert!(toml::from_str::<JobPolicy>(r#"allowed_types = ["rocket"]"#).is_err());
        // A default user alone is fine: it is the only user a job without User may get.
        let p: JobPolicy = toml::from_str(r#"default_user = "nobody""#).unwrap();
        assert!(p.validate().is_ok());
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z]{1,4}".prop_map(String::from),
            Just("..".to_string()),
            Just(".".to_string()),
        ]
    }

    proptest! {
        /// A host path is allowed exactly when, with `.` and `..` applied, its components begin
        /// with the prefix's: never a sibling that merely shares the prefix's text.
        #[test]
        fn volume_prefix_is_a_component_prefix(
            prefix in proptest::collection::vec("[a-z]{1,4}", 1..3),
            path in proptest::collection::vec(segment(), 0..6),
        ) {
            let prefix_s = format!("/{}", prefix.join("/"));
            let path_s = format!("/{}", path.join("/"));
            let mut resolved: Vec<&str> = Vec::new();
            for s in &path {
                match s.as_str() {
                    "." => {}
                    ".." => { resolved.pop(); }
                    s => resolved.push(s),
                }
            }
            let expect = resolved.len() >= prefix.len()
                && resolved.iter().zip(&prefix).all(|(a, b)| a == b);
            prop_assert_eq!(volume_allowed(&[prefix_s], &path_s), expect);
        }

        /// The default policy never rejects a job and never changes one.
        #[test]
        fn the_default_policy_is_today_s_behaviour(
            user in proptest::option::of("[a-z]{1,8}"),
            image in "[a-z]{1,6}(/[a-z]{1,6}){0,2}(:[0-9]{1,3})?",
            vol in "/[a-z]{1,5}(/[a-z.]{1,5}){0,3}",
            docker in any::<bool>(),
        ) {
            let mut doc = serde_json::json!({"Command": "true"});
            if let Some(u) = &user { doc["User"] = u.clone().into(); }
            if docker {
                doc["Type"] = "docker".into();
                doc["Image"] = image.into();
                doc["Docker"] = serde_json::json!({"Volumes": [format!("{vol}:/v")]});
            }
            let body = doc.to_string();
            let before = parse_job("j1", body.as_bytes()).unwrap();
            let mut after = before.clone();
            JobPolicy::default().compile().unwrap().apply(&mut after, "n").unwrap();
            prop_assert_eq!(after, before);
        }
    }
}
