//! Docker for tests: the docker CLI (tests may use it; the product talks to the Engine API) and
//! a `FROM scratch` busybox image built per test, removed with every container of its node.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Runs the docker CLI (the tests may; the product talks to the Engine API): (ok, stdout,
/// stderr).
pub fn docker(args: &[&str]) -> (bool, String, String) {
    match Command::new("docker").args(args).output() {
        Ok(o) => (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        ),
        Err(e) => (false, String::new(), e.to_string()),
    }
}

/// A test image and the node whose containers it cleans up: built on creation, removed with
/// every container labelled with the node when dropped.
pub struct ImageLab {
    pub image: String,
    pub node: String,
}

impl ImageLab {
    pub fn new(node: &str) -> ImageLab {
        let (ok, _, err) = docker(&["version", "--format", "{{.Server.Version}}"]);
        assert!(
            ok,
            "the Docker tests need a running Docker Engine and the docker CLI (to build its \
             test image); `docker version` failed: {err}. Install docker.io and start dockerd \
             (scripts/test does)."
        );
        let busybox = Path::new("/bin/busybox");
        assert!(
            busybox.is_file(),
            "the Docker tests need Debian's busybox-static at /bin/busybox \
             (apt-get install busybox-static; scripts/test does)"
        );
        static N: AtomicU32 = AtomicU32::new(0);
        let image = format!(
            "servant-test/busybox:{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0)
        );
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::copy(busybox, dir.path().join("busybox")).expect("copy busybox");
        std::fs::write(
            dir.path().join("Dockerfile"),
            "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n",
        )
        .expect("Dockerfile");
        // The Engine is shared with every other test building at the same moment; a build it
        // fails once (seen: the legacy builder's answer cut short) is tried again. `--force-rm`:
        // a failed try must not leave its intermediate container behind (seen after a CI run).
        let mut errors = Vec::new();
        for _ in 0..3 {
            let (ok, _, err) = docker(&[
                "build",
                "-q",
                "--force-rm",
                "-t",
                &image,
                &dir.path().to_string_lossy(),
            ]);
            if ok {
                break;
            }
            errors.push(err);
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
        assert!(
            errors.len() < 3,
            "cannot build the test image {image}: {}",
            errors.join("\n---\n")
        );
        ImageLab {
            image,
            node: node.to_string(),
        }
    }

    /// This node's containers (running or not), by the agent's label.
    pub fn containers(&self) -> Vec<String> {
        let (_, out, _) = docker(&[
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            &format!("label=servant.node={}", self.node),
        ]);
        out.lines().map(str::to_string).collect()
    }

    /// The running container of job key `key` on this node.
    pub fn running(&self, key: &str) -> Option<String> {
        let (_, out, _) = docker(&[
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("label=servant.node={}", self.node),
            "--filter",
            &format!("label=servant.job={key}"),
        ]);
        out.lines().next().map(str::to_string)
    }
}

impl Drop for ImageLab {
    fn drop(&mut self) {
        for c in self.containers() {
            docker(&["rm", "-f", &c]);
        }
        docker(&["rmi", "-f", &self.image]);
    }
}

pub fn exists(container: &str) -> bool {
    docker(&["inspect", container]).0
}
