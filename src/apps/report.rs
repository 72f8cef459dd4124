//! Samples the node's `resource` report (`wire::ResourceReport`, App Manager's shape plus our
//! own fields).
//!
//! Everything comes from sysinfo except CPU sockets, which sysinfo does not expose and which
//! are counted from `/sys` (falling back to `/proc/cpuinfo`). Nothing read from the OS may
//! panic: a missing or unreadable source yields a fallback value instead. Sampling reads /proc
//! and asks every mount for its free space, which blocks (for as long as a hung network mount
//! likes), so it runs on tokio's blocking threads, never on the async workers.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex, TryLockError};
use std::time::Duration;

use sysinfo::{
    CpuRefreshKind, DiskRefreshKind, Disks, MemoryRefreshKind, Networks, RefreshKind, System,
};

use crate::process::stats::ContainerMonitor;
use crate::wire::resource::{FileSystem, LoadAverage, NetInterface, ResourceReport};

/// How long a report waits for the containers' stats before it takes the previous ones.
const CONTAINERS_WAIT: Duration = Duration::from_secs(3);

/// How long a sample may take before the report is skipped this time.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why no report was sampled this time; the next sample tries again.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("the previous sample has not finished (a hung mount?)")]
    Busy,
    #[error("sampling took longer than {0:?} (a hung mount?)")]
    TimedOut(Duration),
    #[error("sampling failed: {0}")]
    Failed(tokio::task::JoinError),
}

/// Samples this machine's resources; keeps sysinfo's state between samples so refreshes are
/// cheap.
#[derive(Clone)]
pub struct ResourceSampler {
    probe: Arc<Mutex<Probe>>,
    /// This node's containers, for the report's `containers` (None: no such field).
    containers: Option<ContainerMonitor>,
}

/// sysinfo's state, used by one blocking thread at a time.
struct Probe {
    /// Memory and the CPU list live here; kept so each sample refreshes memory in place.
    system: System,
    /// Mounted file systems; kept so each sample only re-reads mounts and free space.
    disks: Disks,
    /// Network interfaces; kept so each sample only re-reads the interface list and addresses.
    networks: Networks,
    /// Logical CPUs, counted once at creation: hot-plugging CPUs under a running agent is rare.
    processors: usize,
    /// Physical cores, computed once: sysinfo re-parses /proc/cpuinfo on every call.
    cores: usize,
    /// Physical sockets, counted once from /sys for the same reason.
    sockets: u32,
}

impl Default for ResourceSampler {
    fn default() -> Self {
        Self::new()
    }
}

impl ResourceSampler {
    /// Creates a sampler, reading the CPU topology once (it does not change while we run).
    pub fn new() -> Self {
        let system =
            System::new_with_specifics(RefreshKind::nothing().with_cpu(CpuRefreshKind::nothing()));
        let processors = match system.cpus().len() {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let probe = Probe {
            system,
            disks: Disks::new(),
            networks: Networks::new(),
            processors,
            cores: System::physical_core_count().unwrap_or(processors),
            sockets: cpu_sockets(Path::new("/")),
        };
        Self {
            probe: Arc::new(Mutex::new(probe)),
            containers: None,
        }
    }

    /// Adds this node's containers to every report (sampled when the report is, so the
    /// report's cadence is unchanged).
    pub fn with_containers(mut self, monitor: Option<ContainerMonitor>) -> Self {
        self.containers = monitor;
        self
    }

    /// The `resource` report, sampled on a blocking thread. `labels`: this node's configured
    /// labels (used by the scheduler's constraints). `started_ms`: when the agent started (ms
    /// since epoch). `now_ms`: the time to report as systime. While an earlier sample is still
    /// stuck, this one is refused rather than queued behind it.
    pub async fn sample(
        &self,
        labels: &BTreeMap<String, String>,
        started_ms: u64,
        now_ms: u64,
    ) -> Result<ResourceReport, SampleError> {
        let probe = self.probe.clone();
        let labels = labels.clone();
        let job = tokio::task::spawn_blocking(move || {
            let mut p = match probe.try_lock() {
                Ok(p) => p,
                // A sample that panicked left nothing half-done that the next one relies on.
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                Err(TryLockError::WouldBlock) => return Err(SampleError::Busy),
            };
            Ok(p.sample(labels, started_ms, now_ms))
        });
        let mut report = match tokio::time::timeout(SAMPLE_TIMEOUT, job).await {
            Ok(Ok(report)) => report?,
            Ok(Err(e)) => return Err(SampleError::Failed(e)),
            Err(_) => return Err(SampleError::TimedOut(SAMPLE_TIMEOUT)),
        };
        if let Some(m) = &self.containers {
            // A slow Engine delays the report by CONTAINERS_WAIT at most: then it carries the
            // previous sample. No Engine leaves the field out.
            report.containers = m.usage(CONTAINERS_WAIT).await.map(|c| c.to_vec());
        }
        Ok(report)
    }
}

impl Probe {
    fn sample(
        &mut self,
        labels: BTreeMap<String, String>,
        started_ms: u64,
        now_ms: u64,
    ) -> ResourceReport {
        self.system
            .refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram().with_swap());
        self.disks
            .refresh_specifics(true, DiskRefreshKind::nothing().with_storage());
        self.networks.refresh(true);

        let mut fs: Vec<FileSystem> = self
            .disks
            .list()
            .iter()
            .filter(|d| d.total_space() > 0)
            .map(|d| FileSystem {
                device: d.name().to_string_lossy().into_owned(),
                mount_point: d.mount_point().to_string_lossy().into_owned(),
                fs_type: d.file_system().to_string_lossy().into_owned(),
                size_bytes: d.total_space(),
                available_bytes: d.available_space(),
            })
            .collect();
        fs.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));

        let mut names: Vec<&String> = self.networks.list().keys().collect();
        names.sort();
        let net: Vec<NetInterface> = names
            .into_iter()
            .filter_map(|name| self.networks.list().get(name).map(|n| (name, n)))
            .map(|(name, n)| {
                let ips = |v4: bool| -> Vec<String> {
                    n.ip_networks()
                        .iter()
                        .filter(|ip| ip.addr.is_ipv4() == v4)
                        .map(|ip| ip.addr.to_string())
                        .collect()
                };
                NetInterface {
                    name: name.clone(),
                    mac: n.mac_address().to_string(),
                    ipv4: ips(true),
                    ipv6: ips(false),
                }
            })
            .collect();

        let load = System::load_average();
        let host = System::host_name()
            .or_else(|| nix::unistd::gethostname().ok()?.into_string().ok())
            .unwrap_or_default();

        ResourceReport {
            host,
            pid: std::process::id(),
            appmgr_start_time: app_time(started_ms),
            systime: app_time(now_ms),
            cpu_cores: self.cores as u64,
            cpu_processors: self.processors as u64,
            cpu_sockets: self.sockets,
            mem_total_bytes: self.system.total_memory(),
            mem_free_bytes: self.system.available_memory(),
            mem_used_bytes: self.system.used_memory(),
            swap_total_bytes: self.system.total_swap(),
            swap_free_bytes: self.system.free_swap(),
            load_average: LoadAverage {
                one: load.one,
                five: load.five,
                fifteen: load.fifteen,
            },
            fs,
            net,
            labels,
            containers: None,
        }
    }
}

/// Counts physical CPU sockets from /sys/devices/system/cpu/cpu*/topology/physical_package_id
/// (distinct values); falls back to /proc/cpuinfo "physical id" lines; 1 if neither is
/// readable. Takes the root dir so tests can point it at a fake tree.
pub fn cpu_sockets(sys_root: &Path) -> u32 {
    let mut ids = BTreeSet::new();
    if let Ok(entries) = fs::read_dir(sys_root.join("sys/devices/system/cpu")) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let is_cpu = name
                .strip_prefix("cpu")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            if !is_cpu {
                continue;
            }
            let id_file = entry.path().join("topology/physical_package_id");
            if let Ok(id) = fs::read_to_string(id_file) {
                ids.insert(id.trim().to_string());
            }
        }
    }
    if ids.is_empty() {
        if let Ok(cpuinfo) = fs::read_to_string(sys_root.join("proc/cpuinfo")) {
            for line in cpuinfo.lines() {
                if let Some((key, value)) = line.split_once(':') {
                    if key.trim() == "physical id" {
                        ids.insert(value.trim().to_string());
                    }
                }
            }
        }
    }
    u32::try_from(ids.len()).unwrap_or(u32::MAX).max(1)
}

/// "YYYY-MM-DD HH:MM:SS" in UTC for ms since the epoch: App Manager's format, so tools written
/// for its reports can read ours. Uses Howard Hinnant's civil-from-days algorithm.
pub fn app_time(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, tod) = (secs / 86_400, secs % 86_400);
    // Shift the epoch to 0000-03-01 so leap days fall at the end of each (March-based) year.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097; // day of era, [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of March-based year
    let mp = (5 * doy + 2) / 153; // March = 0
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        tod / 3600,
        tod % 3600 / 60,
        tod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn app_time_known_values() {
        assert_eq!(app_time(0), "1970-01-01 00:00:00");
        assert_eq!(app_time(1_580_830_641_000), "2020-02-04 15:37:21");
        assert_eq!(app_time(1_580_830_641_999), "2020-02-04 15:37:21");
        assert_eq!(app_time(1_709_164_800_000), "2024-02-29 00:00:00");
        assert_eq!(app_time(1_709_251_199_000), "2024-02-29 23:59:59");
        // 2100 is not a leap year: Feb 28 is followed by Mar 1.
        assert_eq!(app_time(4_107_542_399_000), "2100-02-28 23:59:59");
        assert_eq!(app_time(4_107_542_400_000), "2100-03-01 00:00:00");
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().expect("test path has a parent")).expect("mkdir");
        fs::write(path, text).expect("write");
    }

    #[test]
    fn cpu_sockets_from_fake_sys_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cpu = "sys/devices/system/cpu";
        for (n, pkg) in [(0, "0"), (1, "0"), (2, "1\n"), (3, "1")] {
            write(
                dir.path(),
                &format!("{cpu}/cpu{n}/topology/physical_package_id"),
                pkg,
            );
        }
        // Not a CPU directory: must be ignored.
        write(
            dir.path(),
            &format!("{cpu}/cpufreq/topology/physical_package_id"),
            "7",
        );
        assert_eq!(cpu_sockets(dir.path()), 2);
    }

    #[test]
    fn cpu_sockets_falls_back_to_cpuinfo_then_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(cpu_sockets(dir.path()), 1);
        assert_eq!(cpu_sockets(&dir.path().join("missing")), 1);
        let info = "processor\t: 0\nphysical id\t: 0\n\nprocessor\t: 1\nphysical id\t: 1\n\n\
                    processor\t: 2\nphysical id\t: 1\n";
        write(dir.path(), "proc/cpuinfo", info);
        assert_eq!(cpu_sockets(dir.path()), 2);
    }

    // The default test runtime has one thread: sampling there proves it does not need the
    // caller's worker.
    #[tokio::test]
    async fn sample_reports_this_machine() {
        let sampler = ResourceSampler::new();
        let labels = BTreeMap::from([("zone".to_string(), "a".to_string())]);
        let typed = sampler
            .sample(&labels, 1_580_830_641_000, 1_580_832_118_000)
            .await
            .expect("sampled");
        // What the leader reads back is what was written.
        assert_eq!(ResourceReport::parse(&typed.encode()).unwrap(), typed);
        let report = serde_json::to_value(&typed).unwrap();
        for key in [
            "host",
            "pid",
            "appmgr_start_time",
            "systime",
            "cpu_cores",
            "cpu_processors",
            "cpu_sockets",
            "mem_total_bytes",
            "mem_free_bytes",
            "mem_used_bytes",
            "swap_total_bytes",
            "swap_free_bytes",
            "load_average",
            "fs",
            "net",
            "labels",
        ] {
            assert!(report.get(key).is_some(), "missing {key} in {report}");
        }
        assert_eq!(report["appmgr_start_time"], "2020-02-04 15:37:21");
        assert_eq!(report["systime"], "2020-02-04 16:01:58");
        assert!(report["cpu_processors"].as_u64().unwrap_or(0) >= 1);
        assert!(report["cpu_cores"].as_u64().unwrap_or(0) >= 1);
        assert!(report["cpu_sockets"].as_u64().unwrap_or(0) >= 1);
        assert!(report["mem_total_bytes"].as_u64().unwrap_or(0) > 0);
        assert_eq!(report["pid"].as_u64(), Some(u64::from(std::process::id())));
        assert_eq!(report["labels"], json!({"zone": "a"}));
        for key in ["1min", "5min", "15min"] {
            assert!(report["load_average"][key].is_number(), "load {key}");
        }
        assert!(report["fs"].is_array() && report["net"].is_array());
        for fs in report["fs"].as_array().into_iter().flatten() {
            assert!(fs["size_bytes"].as_u64().unwrap_or(0) > 0, "{fs}");
        }
        let text = serde_json::to_string(&report).expect("serialises");
        assert!(text.contains("\"cpu_processors\""));

        let again =
            serde_json::to_value(sampler.sample(&BTreeMap::new(), 0, 1000).await.unwrap()).unwrap();
        assert_eq!(again["systime"], "1970-01-01 00:00:01");
        assert_eq!(again["labels"], json!({}));
        assert_eq!(again["cpu_processors"], report["cpu_processors"]);
    }

    // Holding the probe's lock across the await is what this test is about.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test]
    async fn a_sample_stuck_in_the_kernel_is_not_queued_behind() {
        let sampler = ResourceSampler::new();
        // A sample that never returns (a hung NFS mount) holds the probe.
        let stuck = sampler.probe.lock().unwrap();
        let t0 = std::time::Instant::now();
        let e = sampler.sample(&BTreeMap::new(), 0, 0).await.unwrap_err();
        assert!(matches!(e, SampleError::Busy), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(5));
        drop(stuck);
        assert!(sampler.sample(&BTreeMap::new(), 0, 0).await.is_ok());
    }
}
