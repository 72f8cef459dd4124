//! The node's `[jobs]` policy held to a job (the policy itself is `process::policy`, shared
//! with apps and trigger actions).

use super::spec::{JobSpec, JobType};
use crate::process::policy::{CompiledPolicy, JobKind, Violation};

impl From<JobType> for JobKind {
    fn from(t: JobType) -> Self {
        match t {
            JobType::Shell => JobKind::Shell,
            JobType::Exec => JobKind::Exec,
            JobType::Docker => JobKind::Docker,
        }
    }
}

/// Checks `job` against `policy` and fills in what the policy decides (`default_user`).
pub fn apply(policy: &CompiledPolicy, job: &mut JobSpec, node: &str) -> Result<(), Violation> {
    let kind = JobKind::from(job.job_type);
    policy.check(kind, &mut job.user, job.container.as_ref(), node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::spec::parse_job;
    use crate::process::policy::JobPolicy;
    use proptest::prelude::*;

    fn policy(toml_text: &str) -> CompiledPolicy {
        let p: JobPolicy = toml::from_str(toml_text).unwrap();
        p.validate().unwrap();
        p.compile().unwrap()
    }

    fn check(p: &CompiledPolicy, job: &str) -> Result<JobSpec, String> {
        let mut j = parse_job("j1", job.as_bytes()).unwrap();
        apply(p, &mut j, "n1").map_err(|e| e.to_string())?;
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

    proptest! {
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
            apply(&JobPolicy::default().compile().unwrap(), &mut after, "n").unwrap();
            prop_assert_eq!(after, before);
        }
    }
}
