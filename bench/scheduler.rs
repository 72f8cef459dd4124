//! Placement scheduler benchmark: `cargo bench --bench scheduler`.
//!
//! The scheduler is pure, so this times `apps::scheduler::schedule` in-process on synthetic
//! clusters of two sizes: 1,000 hosts × 10,000 tasks, and 10,000 hosts × 100,000 tasks (issue 15's
//! scale). Hosts are in zones a/b/c with 16–64 cores and 32–256 GB; tasks have replication 3, one
//! in ten constrained to a zone, 0.1–0.5 cores and 64–512 MB per replica. Three passes per size:
//! - first: from an empty topology (every replica placed);
//! - no change: the first plan as `current`, which must keep everything (zero writes);
//! - host leaves: the first plan as `current`, one host gone, its replicas placed elsewhere.
//!
//! Each pass is timed two ways, alternating trial by trial (BENCH_TRIALS, default 5, each after
//! an untimed warm-up): the plan as a map (`schedule`) then `changes` against the stored keys,
//! which is what the leader did before, and `place` then `Placement::writes`, which is what it
//! does now (no copy of the unchanged hosts' names). Medians of the wall time and of the
//! thread's CPU time, their ratio, the host keys written (both ways write the same) and the
//! unplaced tasks. The targets (a pass ≤ 100 ms at the small size, ≤ 200 ms at the large one)
//! are reported, never asserted (these machines are shared and noisy). `BENCH_SIZES=small` or
//! `large` runs one size only.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use nix::time::{clock_gettime, ClockId};

use servant::apps::scheduler::{changes, place, schedule, HostInfo, Plan, TaskReq, Topology};

/// A fixed linear congruential generator: the same cluster on every run, no extra dependency.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

const ZONES: [&str; 3] = ["a", "b", "c"];

fn zone(z: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("zone".to_string(), z.to_string())])
}

/// Digits of the largest index below `n`, at least 4: `host-0000` at 1,000 hosts.
fn width(n: usize) -> usize {
    n.saturating_sub(1).to_string().len().max(4)
}

fn cluster(n_hosts: usize, n_tasks: usize) -> (Vec<HostInfo>, Vec<TaskReq>) {
    let mut rng = Lcg(42);
    let (hw, tw) = (width(n_hosts), width(n_tasks));
    let hosts = (0..n_hosts)
        .map(|i| HostInfo {
            name: format!("host-{i:0hw$}"),
            labels: zone(ZONES[i % 3]),
            cpu_cores: (16 + rng.below(49)) as f64,
            memory_mb: (32 + rng.below(225)) * 1024,
        })
        .collect();
    let tasks = (0..n_tasks)
        .map(|i| TaskReq {
            name: format!("task-{i:0tw$}"),
            replication: 3,
            labels: if i % 10 == 0 {
                zone(ZONES[rng.below(3) as usize])
            } else {
                BTreeMap::new()
            },
            cpu: (1 + rng.below(5)) as f64 / 10.0,
            memory_mb: 64 * (1 + rng.below(8)),
        })
        .collect();
    (hosts, tasks)
}

/// This thread's CPU time in ms: on a shared machine the wall time also counts the time other
/// processes had the core, so both are reported.
fn cpu_ms() -> f64 {
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map_or(f64::NAN, |t| {
        t.tv_sec() as f64 * 1000.0 + t.tv_nsec() as f64 / 1e6
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Median wall ms and median CPU ms of `trials` timed runs of `f` (after one untimed), and the
/// last result.
fn time<T>(trials: usize, f: impl Fn() -> T) -> (f64, f64, T) {
    let mut last = f();
    let (mut wall, mut cpu) = (Vec::with_capacity(trials), Vec::with_capacity(trials));
    for _ in 0..trials {
        drop(last);
        let (t, c) = (Instant::now(), cpu_ms());
        last = black_box(f());
        cpu.push(cpu_ms() - c);
        wall.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    (median(wall), median(cpu), last)
}

/// One pass both ways, alternating trial by trial so both see the same machine: the plan as a
/// map then `changes` (what the leader did before), and `place` then `writes` (what it does).
fn pass(
    name: &str,
    trials: usize,
    tasks: &[TaskReq],
    hosts: &[HostInfo],
    current: &Topology,
    stored: &Topology,
) -> Plan {
    let map = || {
        let plan = schedule(tasks, hosts, current);
        let writes = changes(stored, &plan.topology);
        (plan, writes.len())
    };
    let lean = || {
        let placed = place(tasks, hosts, current);
        (placed.writes(stored).len(), placed.unplaced.len())
    };
    let (mut map_ms, mut lean_ms) = (Vec::new(), Vec::new());
    let (mut map_cpu, mut lean_cpu) = (Vec::new(), Vec::new());
    let mut plan = None;
    let mut counts = (0, 0);
    for _ in 0..trials {
        let (w, c, (p, n)) = time(1, map);
        map_ms.push(w);
        map_cpu.push(c);
        plan = Some(p);
        let (w, c, (n2, unplaced)) = time(1, lean);
        lean_ms.push(w);
        lean_cpu.push(c);
        assert_eq!(n, n2, "both ways write the same keys");
        counts = (n, unplaced);
    }
    let (m, l) = (median(map_ms), median(lean_ms));
    println!(
        "| {name} | {m:.1} ms | {l:.1} ms | {:.2}× | {:.1} / {:.1} ms | {} | {} |",
        m / l,
        median(map_cpu),
        median(lean_cpu),
        counts.0,
        counts.1
    );
    plan.expect("at least one trial")
}

fn run(trials: usize, n_hosts: usize, n_tasks: usize, target_ms: u32) {
    let (hosts, tasks) = cluster(n_hosts, n_tasks);
    let empty = Topology::new();
    println!(
        "## {} hosts, {} tasks × 3 replicas, {trials} trials\n",
        hosts.len(),
        tasks.len()
    );
    println!(
        "| pass | plan as a map + `changes` | `place` + `writes` (the leader's) | ratio | CPU (map / leader's) | host keys written | unplaced |\n\
         |---|---|---|---|---|---|---|"
    );
    let first = pass(
        "first, from an empty topology",
        trials,
        &tasks,
        &hosts,
        &empty,
        &empty,
    );
    let current = &first.topology;
    pass(
        "no change (sticky)",
        trials,
        &tasks,
        &hosts,
        current,
        current,
    );
    let fewer: Vec<HostInfo> = hosts.iter().skip(1).cloned().collect();
    pass(
        &format!("host `{}` leaves", hosts[0].name),
        trials,
        &tasks,
        &fewer,
        current,
        current,
    );
    let moved = current.get(&hosts[0].name).map_or(0, |s| s.len());
    println!("\nReplicas on the host that left: {moved}. Target: a pass ≤ {target_ms} ms.\n");
}

fn main() {
    let trials: usize = std::env::var("BENCH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let sizes = std::env::var("BENCH_SIZES").unwrap_or_default();
    println!("# consul-servant scheduler benchmark\n");
    if sizes.is_empty() || sizes == "small" {
        run(trials, 1000, 10_000, 100);
    }
    if sizes.is_empty() || sizes == "large" {
        run(trials, 10_000, 100_000, 200);
    }
}
