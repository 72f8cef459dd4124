//! Container monitoring (cAdvisor's part in the Nomad demo): the CPU and memory use of every
//! running container labelled with this node (`servant.node`; its jobs' and apps'), from the
//! Engine's stats API.
//!
//! Cost: nothing runs between reads. A reader (the `resource` report, a `/metrics` scrape)
//! asks for the use; if the last sample is older than `max_age`, one refresh (shared by the
//! readers that come meanwhile, each waiting for it no longer than it chose) lists the node's
//! running containers and asks each for one stats answer (`stream=false`), all at once: the
//! Engine answers them together at its stats collector's next tick (about a second). CPU use
//! is the difference between two samples: a container seen before is asked `one-shot` (one
//! sample) and compared with our previous sample; a new one is asked without `one-shot`, so
//! the Engine pairs two of its own samples a second apart. No stream stays open per container:
//! with 50 containers that would be 50 connections the Engine feeds every second whether
//! anyone reads or not.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::models::{ContainerCpuStats, ContainerMemoryStats, ContainerStatsResponse};
use bollard::query_parameters::{ListContainersOptions, StatsOptions};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::debug;

use super::docker::{connect, LABEL_APP, LABEL_JOB, LABEL_NODE, LABEL_PREFIX};
use crate::wire::resource::ContainerUsage;

/// How many stats requests are in flight at once. The Engine answers each at its stats
/// collector's next tick (once a second, `one-shot` or not: measured 1.4 s and 2.7 s on Docker
/// 20.10), and one tick serves every waiting request, so they all go at once: a few at a time,
/// 50 containers took over 5 s.
const PARALLEL: usize = 64;
/// How long one refresh may take; past it, readers get the previous sample.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(15);
/// How long after a failed connection to the Engine the next refresh tries again.
const RECONNECT_AFTER: Duration = Duration::from_secs(30);

/// One reading of a container's CPU counters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuSample {
    /// CPU time the container used since it started, in ns (`cpu_usage.total_usage`).
    pub container_ns: u64,
    /// CPU time the whole machine used, in ns (`system_cpu_usage`), when the Engine gives it.
    pub system_ns: Option<u64>,
    /// CPUs the container may run on (`online_cpus`).
    pub online_cpus: u32,
    /// When it was read (the wall clock, ns), for the fallback without `system_ns`.
    pub wall_ns: u64,
}

impl CpuSample {
    /// From the Engine's `cpu_stats` (or `precpu_stats`); None if it has no usage figure (an
    /// empty `precpu_stats` of a one-shot answer).
    pub fn from_stats(s: &ContainerCpuStats, wall_ns: u64) -> Option<CpuSample> {
        let container_ns = s.cpu_usage.as_ref()?.total_usage?;
        let online_cpus = s
            .online_cpus
            .filter(|n| *n > 0)
            .or_else(|| {
                s.cpu_usage
                    .as_ref()
                    .and_then(|u| u.percpu_usage.as_ref())
                    .map(|v| v.len() as u32)
            })
            .unwrap_or(1)
            .max(1);
        Some(CpuSample {
            container_ns,
            system_ns: s.system_cpu_usage.filter(|n| *n > 0),
            online_cpus,
            wall_ns,
        })
    }
}

/// CPU use between two samples as `docker stats` computes it: the container's share of the
/// machine's CPU time times the CPUs, in percent (100 = one whole CPU). Without the machine's
/// figure, the container's CPU time over the wall time between the samples. 0 when the
/// counters went backwards (a restarted container) or no time passed.
pub fn cpu_percent(prev: &CpuSample, cur: &CpuSample) -> f64 {
    let Some(used) = cur.container_ns.checked_sub(prev.container_ns) else {
        return 0.0;
    };
    let pct = match (prev.system_ns, cur.system_ns) {
        (Some(a), Some(b)) if b > a => {
            used as f64 / (b - a) as f64 * f64::from(cur.online_cpus) * 100.0
        }
        _ => match cur.wall_ns.checked_sub(prev.wall_ns) {
            Some(w) if w > 0 => used as f64 / w as f64 * 100.0,
            _ => 0.0,
        },
    };
    if pct.is_finite() {
        pct.max(0.0)
    } else {
        0.0
    }
}

/// Memory in use as `docker stats` counts it: the usage less the inactive page cache the
/// kernel can drop (`inactive_file` on cgroup v2, `total_inactive_file` on v1).
pub fn memory_used(m: &ContainerMemoryStats) -> u64 {
    let usage = m.usage.unwrap_or(0);
    let inactive = m.stats.as_ref().and_then(|s| {
        s.get("total_inactive_file")
            .or_else(|| s.get("inactive_file"))
            .copied()
    });
    match inactive {
        Some(i) if i < usage => usage - i,
        _ => usage,
    }
}

/// A container as listed, before its stats.
#[derive(Debug, Clone)]
struct Listed {
    id: String,
    name: String,
    image: String,
    job: Option<String>,
    app: Option<String>,
}

/// The running containers of this node and namespace among the Engine's listing.
async fn list(
    docker: &Docker,
    node: &str,
    prefix: &str,
) -> Result<Vec<Listed>, bollard::errors::Error> {
    let filters: HashMap<String, Vec<String>> = [
        ("label".to_string(), vec![format!("{LABEL_NODE}={node}")]),
        ("status".to_string(), vec!["running".to_string()]),
    ]
    .into_iter()
    .collect();
    let opts = ListContainersOptions {
        filters: Some(filters),
        ..Default::default()
    };
    let list = docker.list_containers(Some(opts)).await?;
    Ok(list
        .into_iter()
        .filter_map(|c| {
            let labels = c.labels.unwrap_or_default();
            // Another namespace's agent on this node watches its own.
            if labels.get(LABEL_PREFIX).is_some_and(|p| p != prefix) {
                return None;
            }
            Some(Listed {
                id: c.id?,
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_default(),
                image: c.image.unwrap_or_default(),
                job: labels.get(LABEL_JOB).cloned(),
                app: labels.get(LABEL_APP).cloned(),
            })
        })
        .collect())
}

fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// One stats answer: the Engine's `stream=false` sends one object and closes.
async fn stats_once(docker: &Docker, id: &str, one_shot: bool) -> Option<ContainerStatsResponse> {
    let opts = StatsOptions {
        stream: false,
        one_shot,
    };
    let mut s = docker.stats(id, Some(opts));
    match s.next().await {
        Some(Ok(r)) => Some(r),
        Some(Err(e)) => {
            debug!(container = %id, error = %e, "no stats for the container");
            None
        }
        None => None,
    }
}

/// What the last refresh saw.
#[derive(Debug, Default)]
struct Latest {
    /// None: no Engine answered (or none was asked yet).
    containers: Option<Arc<Vec<ContainerUsage>>>,
    at: Option<Instant>,
}

/// What a refresh needs from the one before.
#[derive(Debug, Default)]
struct RefreshState {
    docker: Option<Docker>,
    /// When connecting last failed.
    failed_at: Option<Instant>,
    /// Each container's last CPU sample.
    prev: HashMap<String, CpuSample>,
}

#[derive(Debug)]
struct Inner {
    node: String,
    prefix: String,
    max_age: Duration,
    /// Held by the one refresh under way; readers that come meanwhile wait for its answer.
    state: tokio::sync::Mutex<RefreshState>,
    latest: Mutex<Latest>,
    /// The refresh under way: it says `true` when done.
    inflight: Mutex<Option<watch::Receiver<bool>>>,
}

/// The containers' use, sampled when read and at most `max_age` old. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ContainerMonitor {
    inner: Arc<Inner>,
}

impl ContainerMonitor {
    /// Watches the containers labelled with `node` (and, when they carry one, namespace
    /// `prefix`). It connects to the Engine at its first read, and again after a failure.
    pub fn new(node: &str, prefix: &str, max_age: Duration) -> Self {
        ContainerMonitor {
            inner: Arc::new(Inner {
                node: node.to_string(),
                prefix: prefix.to_string(),
                max_age,
                state: tokio::sync::Mutex::new(RefreshState::default()),
                latest: Mutex::new(Latest::default()),
                inflight: Mutex::new(None),
            }),
        }
    }

    /// The last sample, however old, without asking the Engine (for a synchronous reader).
    pub fn latest(&self) -> Option<Arc<Vec<ContainerUsage>>> {
        match self.inner.latest.lock() {
            Ok(l) => l.containers.clone(),
            Err(p) => p.into_inner().containers.clone(),
        }
    }

    fn fresh(&self) -> bool {
        let l = match self.inner.latest.lock() {
            Ok(l) => l.at,
            Err(p) => p.into_inner().at,
        };
        l.is_some_and(|at| at.elapsed() < self.inner.max_age)
    }

    /// The containers' use, refreshed first if the last sample is older than `max_age`,
    /// waiting at most `wait` for the refresh: past it, the previous sample (the refresh goes
    /// on, for the next reader). None when no Docker Engine answers.
    pub async fn usage(&self, wait: Duration) -> Option<Arc<Vec<ContainerUsage>>> {
        if !self.fresh() {
            let mut done = self.start_refresh();
            let _ = tokio::time::timeout(wait, done.wait_for(|d| *d)).await;
        }
        self.latest()
    }

    /// The refresh under way, or a new one. It runs as a task of its own, so a reader that
    /// stops waiting does not cancel it halfway.
    fn start_refresh(&self) -> watch::Receiver<bool> {
        let mut inflight = match self.inner.inflight.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(rx) = inflight.as_ref() {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(false);
        *inflight = Some(rx.clone());
        let me = self.clone();
        tokio::spawn(async move {
            let mut st = me.inner.state.lock().await;
            if !me.fresh() {
                match tokio::time::timeout(REFRESH_TIMEOUT, me.refresh(&mut st)).await {
                    Ok(containers) => {
                        let mut l = match me.inner.latest.lock() {
                            Ok(l) => l,
                            Err(p) => p.into_inner(),
                        };
                        *l = Latest {
                            containers,
                            at: Some(Instant::now()),
                        };
                    }
                    Err(_) => debug!("container stats took too long; the last ones stand"),
                }
            }
            drop(st);
            match me.inner.inflight.lock() {
                Ok(mut g) => *g = None,
                Err(p) => *p.into_inner() = None,
            }
            let _ = tx.send(true);
        });
        rx
    }

    async fn refresh(&self, st: &mut RefreshState) -> Option<Arc<Vec<ContainerUsage>>> {
        if st.docker.is_none() {
            if st.failed_at.is_some_and(|t| t.elapsed() < RECONNECT_AFTER) {
                return None;
            }
            match connect().await {
                Ok(d) => {
                    st.docker = Some(d);
                    st.failed_at = None;
                }
                Err(e) => {
                    debug!(error = %e, "no Docker Engine: no container stats");
                    st.failed_at = Some(Instant::now());
                    return None;
                }
            }
        }
        let docker = st.docker.clone()?;
        let listed = match list(&docker, &self.inner.node, &self.inner.prefix).await {
            Ok(l) => l,
            Err(e) => {
                debug!(error = %e, "cannot list containers; reconnecting next time");
                st.docker = None;
                st.failed_at = Some(Instant::now());
                return None;
            }
        };
        let prev = &st.prev;
        let sampled: Vec<(Listed, Option<(ContainerUsage, CpuSample)>)> =
            futures_util::stream::iter(listed)
                .map(|c| {
                    let docker = docker.clone();
                    let before = prev.get(&c.id).copied();
                    async move {
                        let r = stats_once(&docker, &c.id, before.is_some()).await;
                        let u = r.and_then(|r| usage_of(&c, &r, before));
                        (c, u)
                    }
                })
                .buffer_unordered(PARALLEL)
                .collect()
                .await;
        let mut next = HashMap::new();
        let mut out = Vec::new();
        for (_, u) in sampled {
            if let Some((u, cpu)) = u {
                next.insert(u.id.clone(), cpu);
                out.push(u);
            }
        }
        // Gone containers' samples go with them.
        st.prev = next;
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        Some(Arc::new(out))
    }
}

/// A container's use from one stats answer and our previous CPU sample of it (None: the
/// answer's own `precpu_stats`).
fn usage_of(
    c: &Listed,
    r: &ContainerStatsResponse,
    before: Option<CpuSample>,
) -> Option<(ContainerUsage, CpuSample)> {
    let now = wall_ns();
    let cur = CpuSample::from_stats(r.cpu_stats.as_ref()?, now)?;
    let pre = before.or_else(|| {
        // The Engine's own earlier sample, about a second before.
        CpuSample::from_stats(r.precpu_stats.as_ref()?, now.saturating_sub(1_000_000_000))
    });
    let cpu = pre.map(|p| cpu_percent(&p, &cur)).unwrap_or(0.0);
    let mem = r.memory_stats.as_ref();
    Some((
        ContainerUsage {
            id: c.id.clone(),
            name: c.name.clone(),
            image: c.image.clone(),
            job: c.job.clone(),
            app: c.app.clone(),
            // Two decimals are all `docker stats` shows; fewer digits in KV.
            cpu_percent: (cpu * 100.0).round() / 100.0,
            memory_bytes: mem.map(memory_used).unwrap_or(0),
            memory_limit_bytes: mem.and_then(|m| m.limit).unwrap_or(0),
        },
        cur,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::ContainerCpuUsage;

    fn sample(container_ns: u64, system_ns: Option<u64>, cpus: u32, wall_ns: u64) -> CpuSample {
        CpuSample {
            container_ns,
            system_ns,
            online_cpus: cpus,
            wall_ns,
        }
    }

    #[test]
    fn cpu_percent_is_the_share_of_the_machine_times_its_cpus() {
        // 2 CPUs: the machine counted 2 s of CPU time in 1 s; the container used 0.5 s of it.
        let a = sample(1_000_000_000, Some(10_000_000_000), 2, 0);
        let b = sample(1_500_000_000, Some(12_000_000_000), 2, 1_000_000_000);
        assert!((cpu_percent(&a, &b) - 50.0).abs() < 1e-9);
        // A busy loop on one CPU of four: 1 s of 4 s.
        let a = sample(0, Some(0), 4, 0);
        let b = sample(1_000_000_000, Some(4_000_000_000), 4, 1_000_000_000);
        assert!((cpu_percent(&a, &b) - 100.0).abs() < 1e-9);
        // Idle.
        assert_eq!(cpu_percent(&b, &b), 0.0);
    }

    #[test]
    fn cpu_percent_falls_back_to_wall_time_and_never_goes_negative() {
        // No machine figure: 0.25 s of CPU in 0.5 s of wall time.
        let a = sample(0, None, 2, 1_000_000_000);
        let b = sample(250_000_000, None, 2, 1_500_000_000);
        assert!((cpu_percent(&a, &b) - 50.0).abs() < 1e-9);
        // A restarted container's counter starts over.
        assert_eq!(cpu_percent(&b, &a), 0.0);
        // The machine's counter did not move and no wall time passed.
        let c = sample(300_000_000, Some(5), 2, 1_500_000_000);
        let d = sample(400_000_000, Some(5), 2, 1_500_000_000);
        assert_eq!(cpu_percent(&c, &d), 0.0);
    }

    #[test]
    fn samples_come_from_the_engines_cpu_stats() {
        let s = ContainerCpuStats {
            cpu_usage: Some(ContainerCpuUsage {
                total_usage: Some(7),
                percpu_usage: Some(vec![3, 4, 0]),
                ..Default::default()
            }),
            system_cpu_usage: Some(100),
            online_cpus: None,
            ..Default::default()
        };
        let c = CpuSample::from_stats(&s, 9).unwrap();
        assert_eq!(c, sample(7, Some(100), 3, 9));
        // A one-shot answer's empty `precpu_stats`.
        assert_eq!(
            CpuSample::from_stats(&ContainerCpuStats::default(), 9),
            None
        );
    }

    #[test]
    fn memory_leaves_out_the_inactive_page_cache() {
        let m = |usage, key: &str, inactive| ContainerMemoryStats {
            usage: Some(usage),
            stats: Some([(key.to_string(), inactive)].into_iter().collect()),
            ..Default::default()
        };
        assert_eq!(memory_used(&m(100, "inactive_file", 30)), 70);
        assert_eq!(memory_used(&m(100, "total_inactive_file", 40)), 60);
        assert_eq!(memory_used(&m(100, "inactive_file", 300)), 100);
        assert_eq!(memory_used(&m(100, "active_anon", 30)), 100);
        assert_eq!(memory_used(&ContainerMemoryStats::default()), 0);
    }

    #[test]
    fn usage_uses_the_engines_earlier_sample_for_a_new_container() {
        let c = Listed {
            id: "abc".into(),
            name: "n".into(),
            image: "img".into(),
            job: Some("jobs/x".into()),
            app: None,
        };
        let cpu = |total, system| ContainerCpuStats {
            cpu_usage: Some(ContainerCpuUsage {
                total_usage: Some(total),
                ..Default::default()
            }),
            system_cpu_usage: Some(system),
            online_cpus: Some(2),
            ..Default::default()
        };
        let r = ContainerStatsResponse {
            cpu_stats: Some(cpu(2_000, 10_000)),
            precpu_stats: Some(cpu(1_000, 6_000)),
            memory_stats: Some(ContainerMemoryStats {
                usage: Some(5 << 20),
                limit: Some(1 << 30),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (u, s) = usage_of(&c, &r, None).unwrap();
        // 1000 of 4000 ns of the machine's time, times 2 CPUs.
        assert_eq!(u.cpu_percent, 50.0);
        assert_eq!((u.memory_bytes, u.memory_limit_bytes), (5 << 20, 1 << 30));
        assert_eq!(u.job.as_deref(), Some("jobs/x"));
        assert_eq!(s.container_ns, 2_000);
        // Seen before: our own sample, not the Engine's.
        let (u, _) = usage_of(&c, &r, Some(sample(2_000, Some(9_000), 2, 0))).unwrap();
        assert_eq!(u.cpu_percent, 0.0);
    }
}
