//! What to start: `LaunchSpec`, the same for every driver.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::container::ContainerSpec;
use super::logs::LogPaths;

/// Where a task's stdout and stderr go. Its stdin is always empty.
#[derive(Debug, Clone, Default)]
pub enum Output {
    /// Nowhere.
    #[default]
    Null,
    /// Each stream to its own file, appended to (an app's restarts) or started empty (a job).
    Files { logs: LogPaths, append: bool },
    /// Both streams into one file.
    Combined { path: PathBuf, append: bool },
    /// Into unnamed temporary files (in `dir`, else the system's temporary directory) that
    /// vanish with the task, read back with `TaskHandle::captured`. `combined` puts both
    /// streams in one, in the order they were written. A file, not a pipe: a process the task
    /// leaves running keeps its stdout without holding the run open.
    Capture {
        dir: Option<PathBuf>,
        combined: bool,
    },
}

/// How a task's processes relate to the agent's life and to its main process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Lifetime {
    /// Through the shim: the whole group dies with the agent (even on SIGKILL), and what the
    /// command leaves in its group is stopped when it exits.
    #[default]
    Owned,
    /// Started directly in a group of its own: what it starts in the background outlives it
    /// and the agent (a trigger action starting a service). A timeout or a stop still kills
    /// the group.
    Detached,
}

/// What to start, job, app or command alike.
#[derive(Debug, Clone, Default)]
pub struct LaunchSpec {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Added to the agent's environment.
    pub env: BTreeMap<String, String>,
    /// Working directory; the agent's when None.
    pub dir: Option<String>,
    /// User to switch to.
    pub user: Option<String>,
    pub output: Output,
    /// Where the real program's pid is written, when it matters (Consul's, to ask it to leave):
    /// the group leader is the shim.
    pub pid_file: Option<PathBuf>,
    pub lifetime: Lifetime,
    /// The first fence deadline (CLOCK_BOOTTIME ms) of an `Owned` task: past it, unless moved
    /// with `TaskHandle::fence`, the shim kills the task even if the agent cannot (paused).
    /// None: no deadline (it still dies with the agent).
    pub fence: Option<u64>,
    /// For the container driver: the image and the `Docker` object. `argv` is then the
    /// container's command (empty: the image's own), `dir` and `user` are inside it, and
    /// `pid_file` and `lifetime` do not apply (a container dies with its agent through its
    /// watchdog).
    pub container: Option<ContainerSpec>,
}

/// Linux refuses any one argument or environment string over 128 KiB (MAX_ARG_STRLEN) with
/// "Argument list too long". A longer shell command travels in pieces of this size.
const ARG_PIECE: usize = 96 * 1024;

impl LaunchSpec {
    /// Runs `argv` as it is.
    pub fn new(argv: Vec<String>) -> Self {
        LaunchSpec {
            argv,
            ..Default::default()
        }
    }

    /// Runs `command` with `/bin/sh -c`, with `env`. A command too long for one argument is
    /// passed in environment variables of at most `ARG_PIECE` bytes each, joined and `eval`ed
    /// by the shell, which unsets them first so the command never sees them.
    pub fn shell(command: &str, env: &BTreeMap<String, String>) -> Self {
        let mut env = env.clone();
        if command.len() <= ARG_PIECE {
            return LaunchSpec {
                argv: vec!["/bin/sh".into(), "-c".into(), command.to_string()],
                env,
                ..Default::default()
            };
        }
        let mut names = Vec::new();
        let mut rest = command;
        while !rest.is_empty() {
            let mut cut = rest.len().min(ARG_PIECE);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let name = format!("SERVANT_COMMAND_{}", names.len());
            env.insert(name.clone(), rest[..cut].to_string());
            names.push(name);
            rest = &rest[cut..];
        }
        let joined: String = names.iter().map(|n| format!("${{{n}}}")).collect();
        let script = format!(
            "__servant_command=\"{joined}\"; unset {}; eval \"$__servant_command\"",
            names.join(" ")
        );
        LaunchSpec {
            argv: vec!["/bin/sh".into(), "-c".into(), script],
            env,
            ..Default::default()
        }
    }

    pub fn env(mut self, env: BTreeMap<String, String>) -> Self {
        self.env = env;
        self
    }

    pub fn dir(mut self, dir: Option<String>) -> Self {
        self.dir = dir;
        self
    }

    pub fn user(mut self, user: Option<String>) -> Self {
        self.user = user;
        self
    }

    pub fn output(mut self, output: Output) -> Self {
        self.output = output;
        self
    }

    pub fn pid_file(mut self, path: PathBuf) -> Self {
        self.pid_file = Some(path);
        self
    }

    pub fn lifetime(mut self, lifetime: Lifetime) -> Self {
        self.lifetime = lifetime;
        self
    }

    pub fn fence(mut self, until: Option<u64>) -> Self {
        self.fence = until;
        self
    }

    pub fn container(mut self, c: ContainerSpec) -> Self {
        self.container = Some(c);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_command_travels_in_pieces_under_the_argument_limit() {
        let short = LaunchSpec::shell("echo hi", &BTreeMap::new());
        assert_eq!(short.argv, vec!["/bin/sh", "-c", "echo hi"]);
        let long = format!("echo {}", "ж".repeat(200 * 1024));
        let spec = LaunchSpec::shell(&long, &BTreeMap::new());
        assert!(spec.argv.iter().all(|a| a.len() <= ARG_PIECE));
        assert!(spec.env.values().all(|v| v.len() <= ARG_PIECE));
        let pieces: String = (0..spec.env.len())
            .map(|i| spec.env[&format!("SERVANT_COMMAND_{i}")].clone())
            .collect();
        assert_eq!(pieces, long);
    }
}
