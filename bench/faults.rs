//! Faults benchmark: `cargo bench --bench faults` (as root: the hosts are network namespaces,
//! see tests/common/netns.rs). The servants run with the product's defaults (lock-delay 25 s,
//! jobs session TTL 15 s). Three measurements:
//!
//! 1. **Agent SIGKILL, restarted at once** (as a service manager does): one Consul server and
//!    two clients with Consul's fast Raft timing, a servant on each. Each trial queues a 60 s
//!    job that the first client ranks first for, waits until it runs, SIGKILLs that servant and
//!    starts it again; time from the kill to the job's next `start` line.
//! 2. **Node death**: the same, but the client's Consul dies with its servant and neither comes
//!    back until the retry started elsewhere (Consul's failure detection, then the lock-delay).
//! 3. **A Consul leader election under load**, with Consul's *default* Raft timing: three
//!    servers, 100 jobs of 40 s running on each non-leader, the leader's Consul SIGKILLed and
//!    restarted 12 s later; jobs killed (their agents' logs) and jobs run more than once
//!    (their own logs).
//!
//! `BENCH_TRIALS` (default 20) kills of each of the first two kinds, `BENCH_ELECTIONS`
//! (default 1) elections. Medians and maxima; nothing asserted (tests/faults.rs asserts the
//! invariants).

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::lab::*;
use common::*;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn median_max(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = if v.len() % 2 == 0 {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    } else {
        v[v.len() / 2]
    };
    (m, v[v.len() - 1])
}

/// The times (ns) of a guarded job's `start` lines.
fn starts(dir: &Path, id: &str) -> Vec<u128> {
    job_log(dir, id)
        .lines()
        .filter(|l| l.starts_with("start"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect()
}

/// A job key that `node` ranks first for among `names`, not used before.
fn key_for(node: &str, names: &[String], next: &mut usize) -> String {
    loop {
        let k = format!("jobs/b{next}");
        *next += 1;
        if servant::jobs::claim::preferred(&k, names) == Some(node) {
            return k;
        }
    }
}

/// Kill-to-retry times (s) over `trials` kills of host 1's agent; `node_death` kills its Consul
/// too and restarts both only after the retry.
fn kill_to_retry(trials: usize, node_death: bool) -> Vec<f64> {
    let mut lab = Lab::start(1, 2, true);
    for i in 0..3 {
        lab.start_servant(i, &[]);
    }
    let names: Vec<String> = lab.hosts.iter().map(|h| h.node.clone()).collect();
    let victim = 1;
    let h = lab.http(0);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut next = 0;
    let mut out = Vec::new();
    for t in 0..trials {
        let key = key_for(&lab.hosts[victim].node, &names, &mut next);
        let id = key.rsplit('/').next().unwrap_or_default().to_string();
        h.put(
            &format!("/v1/kv/{key}"),
            guarded_job(dir.path(), &id, 60, 5).to_string(),
        );
        wait_for("the job runs", Duration::from_secs(60), || {
            (!starts(dir.path(), &id).is_empty()).then_some(())
        });
        let killed = now_ns();
        lab.kill_servant(victim);
        if node_death {
            lab.kill_consul(victim);
        } else {
            lab.start_servant(victim, &[]);
        }
        let retry = wait_for("the retry", Duration::from_secs(180), || {
            starts(dir.path(), &id).get(1).copied()
        });
        let s = retry.saturating_sub(killed) as f64 / 1e9;
        eprintln!(
            "{} {t}: retry {s:.2} s after the kill",
            if node_death {
                "node death"
            } else {
                "agent kill"
            }
        );
        out.push(s);
        if node_death {
            lab.start_consul(victim);
            let h2 = lab.http(victim);
            wait_for("the node rejoins", Duration::from_secs(90), || {
                let (st, body) = h2.try_get("/v1/status/leader")?;
                (st == 200 && body.len() > 4).then_some(())
            });
            lab.start_servant(victim, &[]);
        }
        h.delete(&format!("/v1/kv/{key}"));
    }
    out
}

/// (leaderless seconds, jobs killed, jobs run more than once) for one election.
fn election() -> (f64, usize, usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ElectionLoad {
        mut lab,
        leader,
        others,
        keys,
    } = election_load(dir.path());
    let h = lab.http(others[0]);
    let leaderless = lab.election(leader, &h, Duration::from_secs(12));
    for key in &keys {
        wait_for("every result", Duration::from_secs(240), || {
            h.kv_raw(&format!("jdone_jid/{key}"))
        });
    }
    let killed: usize = others
        .iter()
        .map(|i| lab.servant_logs(*i).matches("killing the job").count())
        .sum();
    let rerun = keys
        .iter()
        .filter(|k| starts(dir.path(), k.rsplit('/').next().unwrap_or_default()).len() > 1)
        .count();
    (leaderless.as_secs_f64(), killed, rerun)
}

fn main() {
    let trials = env_or("BENCH_TRIALS", 20);
    let elections = env_or("BENCH_ELECTIONS", 1);

    let mut restart = kill_to_retry(trials, false);
    let mut death = kill_to_retry(trials, true);
    let mut runs = Vec::new();
    for _ in 0..elections {
        let r = election();
        eprintln!(
            "election: no leader for {:.1} s; {} jobs killed, {} re-run",
            r.0, r.1, r.2
        );
        runs.push(r);
    }

    let (m1, x1) = median_max(&mut restart);
    let (m2, x2) = median_max(&mut death);
    println!("faults benchmark, defaults (lock-delay 25 s, session TTL 15 s)");
    println!(
        "agent SIGKILL, restarted at once: kill to retry median {m1:.2} s, max {x1:.2} s ({} kills)",
        restart.len()
    );
    println!(
        "node death (agent and Consul SIGKILLed): kill to retry median {m2:.2} s, max {x2:.2} s ({} kills)",
        death.len()
    );
    for (i, (l, k, r)) in runs.iter().enumerate() {
        println!(
            "election {}: no leader for {l:.1} s with default Raft timing; 200 jobs running: {k} killed, {r} re-run",
            i + 1
        );
    }
}
