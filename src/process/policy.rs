//! The node's launch policy (`[jobs]` in the agent's configuration): which kinds of work
//! (shell, exec, docker), users, Docker images and host paths this node runs, for jobs and apps
//! alike (and the user of trigger actions from KV). Pure: no IO.
//!
//! The defaults allow everything, as before the policy existed. A job outside the policy gets a
//! `rejected` result whose `ExitErrors` names the rule
//! (`rejected: policy [jobs] allowed_types does not allow "docker" on node n1`); an app is
//! unavailable with the same words.

use std::path::{Component, Path, PathBuf};

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

use super::container::ContainerSpec;
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

impl JobKind {
    pub fn name(self) -> &'static str {
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
    /// Checks one launch against the policy and fills in what the policy decides: `user`
    /// becomes `default_user` for a host process (shell, exec) that names none. `container` is
    /// the launch's container, for docker. The first rule broken is the error.
    pub fn check(
        &self,
        kind: JobKind,
        user: &mut Option<String>,
        container: Option<&ContainerSpec>,
        node: &str,
    ) -> Result<(), Violation> {
        let p = &self.policy;
        let deny = |rule: &'static str, value: &str| Violation {
            rule,
            value: value.to_string(),
            node: node.to_string(),
        };
        if let Some(types) = &p.allowed_types {
            if !types.contains(&kind) {
                return Err(deny("allowed_types", kind.name()));
            }
        }
        // A container's user is a user of its image: the user rules are for host processes.
        if matches!(kind, JobKind::Shell | JobKind::Exec) {
            if user.is_none() {
                *user = p.default_user.clone();
            }
            if let (Some(users), Some(u)) = (&p.allowed_users, &*user) {
                if !users.contains(u) {
                    return Err(deny("allowed_users", u));
                }
            }
        }
        if let Some(c) = container {
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

    /// `[jobs] default_user`: the user a host process that names none runs as.
    pub fn default_user(&self) -> Option<&str> {
        self.policy.default_user.as_deref()
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
    use proptest::prelude::*;

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
    }
}
