//! One agent per data dir, and one per node: a second agent is refused with the pid or the
//! address of the first, before it could disturb it (share its files, or destroy its sessions
//! as a predecessor's).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use crate::consul::Client;

/// Why the data dir cannot be ours.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("another servant agent (pid {pid}) is using data dir {path}; stop it, or give this one its own --data-dir")]
    InUse { path: String, pid: String },
    #[error("cannot lock data dir {path}: {error}")]
    Lock { path: String, error: std::io::Error },
}

/// Held for the agent's lifetime: an exclusive lock on `<data_dir>/servant.pid`, which holds
/// the agent's pid. The kernel drops the lock when the process dies, however it dies.
#[derive(Debug)]
pub struct DataDirLock {
    _lock: Flock<File>,
}

impl DataDirLock {
    pub fn acquire(dir: &Path) -> Result<Self, DataDirError> {
        let path: PathBuf = dir.join("servant.pid");
        let shown = dir.display().to_string();
        let io = |error: std::io::Error| DataDirError::Lock {
            path: shown.clone(),
            error,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(DataDirError::InUse {
                    path: shown,
                    pid: if pid.is_empty() { "unknown" } else { pid }.to_string(),
                });
            }
            Err((_, e)) => return Err(io(std::io::Error::from(e))),
        };
        lock.set_len(0).map_err(io)?;
        lock.rewind().map_err(io)?;
        writeln!(lock, "{}", std::process::id()).map_err(io)?;
        Ok(DataDirLock { _lock: lock })
    }
}

/// Another servant agent that answers for `node` (and this KV prefix) at the API address it
/// registered: (address, pid). An agent that was killed leaves its registration behind, but
/// does not answer.
pub async fn live_peer(client: &Client, node: &str, kv_prefix: &str) -> Option<(String, String)> {
    let services = client.agent_services().await.ok()?;
    let svc = services.get(&crate::wire::Namespace::new(kv_prefix).servant_service_id(node))?;
    if svc
        .pointer("/Meta/kv_prefix")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        != kv_prefix
    {
        return None;
    }
    let addr = format!(
        "{}:{}",
        svc.get("Address")?.as_str()?,
        svc.get("Port")?.as_u64()?
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    let v: serde_json::Value = http
        .get(format!("http://{addr}/v1/agent"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    (v.get("Node")?.as_str()? == node).then(|| {
        let pid = v
            .get("Pid")
            .and_then(|p| p.as_u64())
            .map_or("unknown".to_string(), |p| p.to_string());
        (addr, pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_first_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let err = DataDirLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        DataDirLock::acquire(dir.path()).unwrap();
    }
}
