//! Faults on hosts with network stacks of their own (network namespaces; see common/netns.rs):
//! a Consul leader killed, a client cut off, a minority of servers cut off, a paused agent, an
//! agent killed again and again, an active node cut off. Each asserts the promises of
//! DESIGN.md's "Faults" (no job lost, none run twice at once; bounded overlap of app replicas;
//! one active after healing), not timings. The servants run with the product's defaults
//! (lock-delay 25 s, session TTL 15 s) unless a test says otherwise.
//!
//! The scenarios run one after another (each has a network of its own, but they all need the
//! machine's two cores to keep Consul's failure detection honest).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::lab::*;
use common::*;
use nix::sys::signal::Signal;
use serde_json::{json, Value};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every job's log is free of overlaps, and each job has exactly one final result.
fn assert_once_each(h: &Http, dir: &Path, keys: &[String]) -> Vec<Value> {
    let mut results = Vec::new();
    for key in keys {
        let id = key.rsplit('/').next().unwrap();
        let log = job_log(dir, id);
        assert!(!log.contains("OVERLAP"), "{key} ran twice at once:\n{log}");
        let r = h.wait_result(&format!("jdone_jid/{key}"), Duration::from_secs(240));
        assert!(
            h.get_json(&format!("/v1/kv/{key}")).is_none(),
            "{key} still queued after its result"
        );
        results.push(r);
    }
    results
}

/// With Consul's default Raft timing (elections of 13–18 s), SIGKILL of the leader's Consul, and
/// its restart 12 s later, while 200 jobs run on the other servers: nothing killed, nothing
/// re-run, every result written.
#[test]
fn a_consul_leader_election_kills_nothing_and_reruns_nothing() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let ElectionLoad {
        mut lab,
        leader,
        others,
        keys,
    } = election_load(dir.path());
    let t0 = Instant::now();
    let probe = lab.http(others[0]);
    let leaderless = lab.election(leader, &probe, Duration::from_secs(12));
    eprintln!(
        "no leader for about {leaderless:?}; a leader again {:?} after the kill",
        t0.elapsed()
    );
    assert!(
        leaderless >= Duration::from_secs(3),
        "an election happened: {leaderless:?}"
    );
    let h = lab.http(others[0]);
    let results = assert_once_each(&h, dir.path(), &keys);
    for r in &results {
        if r["Status"] != "succeeded" || r["Attempt"] != 1 {
            let bad = results
                .iter()
                .filter(|r| r["Status"] != "succeeded")
                .count();
            let node = r["ExecutionNode"].as_str().unwrap_or_default();
            panic!(
                "{bad} of {} jobs did not succeed at once; the first: {r}\n{}",
                results.len(),
                lab.diagnosis(node)
            );
        }
    }
    for k in &keys {
        let log = job_log(dir.path(), k.rsplit('/').next().unwrap());
        assert_eq!(
            log.matches("start").count(),
            1,
            "{k} ran more than once:\n{log}"
        );
    }
    for i in others {
        let log = lab.servant_logs(i);
        assert!(
            !log.contains("killing the job"),
            "{} killed a job:\n{log}",
            lab.hosts[i].node
        );
    }
}

/// The start time (ns) of each line of `log` that begins with `word`.
fn times(log: &str, word: &str) -> Vec<u128> {
    log.lines()
        .filter(|l| l.starts_with(word))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect()
}

/// A client node cut off from every other host for 60 s while it runs ten jobs and an app
/// replica: its jobs die before any retry starts elsewhere (a per-job flock catches any
/// overlap), every job has one result after the heal; the replica's replacement overlaps it for
/// no longer than the documented bound (25 s), and one replica is left after the heal.
#[test]
fn a_client_cut_off_kills_its_work_before_it_runs_elsewhere() {
    let _one = serial();
    let mut lab = Lab::start(3, 2, true);
    let c1 = 3;
    let dir = tempfile::tempdir().unwrap();
    // c1 alone first, so the replica is placed on it (placements are sticky).
    // c1 claims at once whatever its rank; the others would wait a minute, so the jobs below
    // are c1's (and their retries go to whichever survivor ranks first).
    lab.start_servant(
        c1,
        &[
            "--label",
            "zone=a",
            "--claim-stagger",
            "0s",
            "--max-parallel",
            "20",
        ],
    );
    let h = lab.http(0);
    let beats = dir.path().join("beats");
    let app = format!(
        "while true; do echo \"$(readlink /proc/self/ns/net) $(date +%s%N)\" >> {}; sleep 0.2; done",
        beats.display()
    );
    h.put(
        "/v1/kv/appmgr/task/long",
        json!({"content": {"command": app}, "replication": 1, "labels": {"zone": "a"}}).to_string(),
    );
    wait_for("c1 runs the replica", Duration::from_secs(60), || {
        std::fs::metadata(&beats).ok()
    });
    lab.start_servant(4, &["--label", "zone=a", "--claim-stagger", "60s"]);
    for i in [0, 1, 2] {
        lab.start_servant(i, &["--claim-stagger", "60s"]);
    }
    // Ten jobs whose preferred node is c1 (every node ranks them the same): it claims them at
    // once, the others would wait their rank times a minute.
    let names: Vec<String> = lab.hosts.iter().map(|h| h.node.clone()).collect();
    let keys: Vec<String> = (0..)
        .map(|j| format!("jobs/p{j}"))
        .filter(|k| servant::jobs::claim::preferred(k, &names) == Some(lab.hosts[c1].node.as_str()))
        .take(10)
        .collect();
    // Every agent ranks among all five before the jobs come.
    common::metrics::wait_every_node_sees(&h, &names, 5);
    for k in &keys {
        let id = k.rsplit('/').next().unwrap();
        h.put(
            &format!("/v1/kv/{k}"),
            guarded_job(dir.path(), id, 50, 2).to_string(),
        );
    }
    let mut holders = Vec::new();
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end {
        holders = keys.iter().map(|k| lab.holder_node(&h, k)).collect();
        if holders
            .iter()
            .all(|n| n.as_deref() == Some(lab.hosts[c1].node.as_str()))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        holders
            .iter()
            .all(|n| n.as_deref() == Some(lab.hosts[c1].node.as_str())),
        "c1 holds the ten jobs: {holders:?}\n{}",
        lab.servant_logs(c1)
    );
    // Held is not yet started: the cut must find every job's command running on c1 (CI once
    // cut c1 between a claim and its command's start, and that first start, after the cut,
    // passed for the retry).
    wait_for("c1 runs the ten jobs", Duration::from_secs(60), || {
        keys.iter()
            .all(|k| job_log(dir.path(), k.rsplit('/').next().unwrap()).starts_with("start"))
            .then_some(())
    });
    let c1_net = std::fs::read_to_string(&beats)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    lab.net.cut(c1);
    let cut_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::thread::sleep(Duration::from_secs(60));
    lab.net.heal(c1);
    let results = assert_once_each(&h, dir.path(), &keys);
    for (k, r) in keys.iter().zip(&results) {
        let log = job_log(dir.path(), k.rsplit('/').next().unwrap());
        let story = || {
            format!(
                "{r}\n--- its log:\n{log}--- servants on it:\n{}",
                lab.lines_about(k)
            )
        };
        assert_eq!(r["Status"], "succeeded", "{}", story());
        // Where each run started: (time, network namespace).
        let starts: Vec<(u128, &str)> = log
            .lines()
            .filter(|l| l.starts_with("start"))
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((f.get(1)?.parse().ok()?, *f.get(4)?))
            })
            .collect();
        assert_eq!(
            starts.first().map(|s| s.1),
            Some(c1_net.as_str()),
            "{}",
            story()
        );
        // The retry ran elsewhere.
        let retry = starts.iter().find(|(t, _)| *t > cut_at);
        assert!(
            retry.is_some_and(|(_, net)| *net != c1_net),
            "retried elsewhere: {}",
            story()
        );
        // It ran there to its end, unless that node lost its own session. Seen in 1 of 6 runs
        // here: at the heal, c1 gossiped the death of c5 it had concluded while alone, the
        // servers marked c5 failed for 0.2 s before c5 refuted it, and c5's session (tied to
        // serfHealth) was gone; c5 stopped the retry, and after the lock-delay c1 ran a third
        // attempt, as it ranks first for these jobs. Not a double run, and not c1's doing.
        if r["ExecutionNode"] == lab.hosts[c1].node.as_str() {
            let about_k = format!("key={k}");
            let lost_hold = (0..lab.hosts.len()).filter(|i| *i != c1).any(|i| {
                lab.servant_logs(i).lines().any(|l| {
                    l.split_whitespace().any(|w| w == about_k)
                        && (l.contains("session lost: killing the job")
                            || l.contains("cannot confirm this node's session"))
                })
            });
            assert!(lost_hold, "the retry ended early: {}", story());
        }
    }
    // The replica: c1's heartbeats stop by the bound after the cut; the replacement's begin
    // after Consul's failure detection; they overlap by at most 25 s (+1 s for the beat).
    std::thread::sleep(Duration::from_secs(5));
    let text = std::fs::read_to_string(&beats).unwrap();
    let mut by_net: BTreeMap<String, (u128, u128)> = BTreeMap::new();
    for l in text.lines() {
        let mut f = l.split_whitespace();
        let (Some(net), Some(t)) = (f.next(), f.next().and_then(|t| t.parse::<u128>().ok())) else {
            continue;
        };
        let e = by_net.entry(net.to_string()).or_insert((t, t));
        e.0 = e.0.min(t);
        e.1 = e.1.max(t);
    }
    let (_, c1_last) = by_net[&c1_net];
    let other_first = by_net
        .iter()
        .filter(|(n, _)| **n != c1_net)
        .map(|(_, (a, _))| *a)
        .min()
        .expect("the replica runs elsewhere");
    let overlap = c1_last.saturating_sub(other_first) as f64 / 1e9;
    eprintln!(
        "replica: c1 stopped {:.1} s after the cut; replacement started {:.1} s after; overlap {overlap:.1} s",
        (c1_last - cut_at) as f64 / 1e9,
        (other_first - cut_at) as f64 / 1e9
    );
    assert!(overlap <= 26.0, "replicas overlapped for {overlap:.1} s");
    // One replica after the heal: only one network namespace still beats.
    wait_for(
        "one replica after the heal",
        Duration::from_secs(90),
        || {
            let before = std::fs::read_to_string(&beats).ok()?;
            std::thread::sleep(Duration::from_secs(2));
            let after = std::fs::read_to_string(&beats).ok()?;
            let fresh: BTreeSet<&str> = after[before.len()..]
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .collect();
            (fresh.len() == 1).then_some(())
        },
    );
    h.delete("/v1/kv/appmgr/task/long");
}

/// The Consul servers split: one server and one client cut off from the other two servers and
/// the other client. The minority side has no leader: its agent stops its jobs at the hold
/// deadline; the majority takes them over after the lock-delay; no job runs twice at once; once
/// healed, the cut-off agent works again.
#[test]
fn a_minority_of_servers_cut_off_never_runs_a_job_twice() {
    let _one = serial();
    let mut lab = Lab::start(3, 2, true);
    let (s3, c1, c2) = (2, 3, 4);
    let dir = tempfile::tempdir().unwrap();
    lab.start_servant(c2, &[]);
    let h = lab.http(0);
    let keys: Vec<String> = (0..6).map(|j| format!("jobs/m{j}")).collect();
    for (j, k) in keys.iter().enumerate() {
        h.put(
            &format!("/v1/kv/{k}"),
            guarded_job(dir.path(), &format!("m{j}"), 50, 2).to_string(),
        );
    }
    wait_for("c2 runs the jobs", Duration::from_secs(60), || {
        keys.iter()
            .all(|k| job_log(dir.path(), k.rsplit('/').next().unwrap()).contains("start"))
            .then_some(())
    });
    for i in [0, 1, c1] {
        lab.start_servant(i, &[]);
    }
    // Minority: s3 and c2. Majority: s1, s2, c1.
    for a in [s3, c2] {
        for b in [0, 1, c1] {
            lab.net.cut_between(a, b);
        }
    }
    std::thread::sleep(Duration::from_secs(60));
    lab.net.heal_all();
    let results = assert_once_each(&h, dir.path(), &keys);
    for r in &results {
        assert_eq!(r["Status"], "succeeded", "{r}");
    }
    // The cut-off agent stopped its work, and works again.
    assert!(
        lab.servant_logs(c2)
            .contains("consul has not confirmed the session")
            || lab
                .servant_logs(c2)
                .contains("consul says the session is gone"),
        "{}",
        lab.servant_logs(c2)
    );
    let node = lab.hosts[c2].node.clone();
    h.put(
        &format!("/v1/kv/queues/{node}/after"),
        r#"{"Command": "echo back"}"#,
    );
    let end = Instant::now() + Duration::from_secs(120);
    let mut r = None;
    while Instant::now() < end && r.is_none() {
        r = h.kv_raw(&format!("jdone_jid/queues/{node}/after"));
        std::thread::sleep(Duration::from_millis(500));
    }
    let logs = lab.servant_logs(c2);
    let tail: Vec<&str> = logs.lines().rev().take(60).collect();
    let r = r.unwrap_or_else(|| {
        panic!(
            "no result after the heal; the agent's log ends:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    });
    assert!(r.contains("back"), "{r}");
}

/// A servant paused (SIGSTOP) for about three session TTLs while a 40 s job runs: the agent cannot
/// kill it, its shim does, at the hold deadline, before Consul lets another node take it.
#[test]
fn a_paused_agent_cannot_let_a_job_run_twice() {
    let _one = serial();
    let mut lab = Lab::start(1, 2, true);
    // A short TTL and lock-delay, so the retry comes while the agent is still paused.
    lab.servant_args = vec![
        "--session-ttl".into(),
        "10s".into(),
        "--lock-delay".into(),
        "10s".into(),
    ];
    let (c1, c2) = (1, 2);
    let dir = tempfile::tempdir().unwrap();
    lab.start_servant(c1, &[]);
    let h = lab.http(0);
    h.put(
        "/v1/kv/jobs/paused",
        guarded_job(dir.path(), "paused", 40, 1).to_string(),
    );
    wait_for("c1 runs it", Duration::from_secs(60), || {
        job_log(dir.path(), "paused")
            .contains("start")
            .then_some(())
    });
    lab.start_servant(c2, &[]);
    lab.signal_servant(c1, Signal::SIGSTOP);
    wait_for(
        "the retry starts on c2 while c1's agent is paused",
        Duration::from_secs(60),
        || (job_log(dir.path(), "paused").matches("start").count() >= 2).then_some(()),
    );
    std::thread::sleep(Duration::from_secs(2));
    lab.signal_servant(c1, Signal::SIGCONT);
    let r = assert_once_each(&h, dir.path(), &["jobs/paused".to_string()]);
    assert_eq!(r[0]["Status"], "succeeded", "{}", r[0]);
    assert_eq!(r[0]["Attempt"], 2, "{}", r[0]);
    let log = job_log(dir.path(), "paused");
    let starts = times(&log, "start");
    let ends = times(&log, "end");
    assert_eq!(ends.len(), 1, "only the retry finished:\n{log}");
    assert!(ends[0] > starts[1], "{log}");
}

/// An agent SIGKILLed twenty times over two minutes under a stream of jobs, restarted at once
/// each time: no command finishes after its agent died (its shim killed it when the lease pipe
/// closed), no job runs twice at once, and every job has one result.
#[test]
fn an_agent_killed_again_and_again_leaves_no_orphan() {
    let _one = serial();
    let mut lab = Lab::start(1, 2, true);
    let (c1, c2) = (1, 2);
    let dir = tempfile::tempdir().unwrap();
    lab.start_servant(c1, &[]);
    lab.start_servant(c2, &[]);
    let h = lab.http(0);
    let mut keys = Vec::new();
    let mut kills: Vec<(u128, usize)> = Vec::new();
    let t0 = Instant::now();
    let mut next_kill = Instant::now() + Duration::from_secs(3);
    let mut j = 0;
    while kills.len() < 20 {
        let key = format!("jobs/k{j}");
        h.put(
            &format!("/v1/kv/{key}"),
            guarded_job(dir.path(), &format!("k{j}"), 1 + j % 3, 5).to_string(),
        );
        keys.push(key);
        j += 1;
        std::thread::sleep(Duration::from_millis(300));
        if Instant::now() >= next_kill {
            lab.kill_servant(c1);
            kills.push((
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos(),
                kills.len(),
            ));
            lab.start_servant(c1, &[]);
            next_kill = Instant::now() + Duration::from_secs(4);
        }
    }
    eprintln!("{} jobs, 20 kills in {:?}", keys.len(), t0.elapsed());
    let results = assert_once_each(&h, dir.path(), &keys);
    for r in &results {
        assert_eq!(r["Status"], "succeeded", "{r}");
    }
    // Each run of c1's agent logs to a file of its own; the jobs sessions it made die with it.
    // An `end` under such a session after that run was killed would be an orphan finishing its
    // command.
    let mut runs: Vec<std::path::PathBuf> = std::fs::read_dir(lab.hosts[c1].servant_dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("agent-"))
        })
        .collect();
    runs.sort();
    let mut killed_at: BTreeMap<String, u128> = BTreeMap::new();
    for (run, (t, _)) in runs.iter().zip(kills.iter()) {
        let text = std::fs::read_to_string(run).unwrap_or_default();
        for l in text.lines().filter(|l| {
            l.contains("session created")
                && l.contains("name=servant")
                && !l.contains("servant-apps")
        }) {
            if let Some(s) = l
                .split_whitespace()
                .find_map(|w| w.strip_prefix("session="))
            {
                killed_at.insert(s.to_string(), *t);
            }
        }
    }
    assert!(killed_at.len() >= 20, "{killed_at:?}");
    for k in &keys {
        let log = job_log(dir.path(), k.rsplit('/').next().unwrap());
        for l in log.lines().filter(|l| l.starts_with("end")) {
            let mut f = l.split_whitespace().skip(1);
            let (Some(t), Some(s)) = (f.next().and_then(|t| t.parse::<u128>().ok()), f.next())
            else {
                continue;
            };
            if let Some(killed) = killed_at.get(s) {
                assert!(
                    t < *killed,
                    "{k}: a command of a killed agent's run finished after the kill:\n{log}"
                );
            }
        }
    }
}

/// An active/standby pair with the active node cut off: the standby takes over; after the heal,
/// one active again.
#[test]
fn an_active_node_cut_off_leaves_one_active_after_the_heal() {
    let _one = serial();
    let mut lab = Lab::start(3, 2, true);
    let (c1, c2) = (3, 4);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let arg = format!("77{:06}", std::process::id() % 1_000_000);
    for i in [c1, c2] {
        let node = lab.hosts[i].node.clone();
        let cfg = d.join(format!("{node}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[checks]\nenvironment = \"lab\"\ndebounce = \"300ms\"\nrepeat = \"2s\"\n\n[[checks.guard]]\nconsul_service = \"demo\"\nlinux_service = \"demo\"\nstatus_cmd = \"kill -0 $(cat {d}/{node}.pid 2>/dev/null) 2>/dev/null || exit 3\"\ninterval = \"1s\"\n",
                d = d.display()
            ),
        )
        .unwrap();
        lab.start_servant(i, &["--no-apps", "--config", cfg.to_str().unwrap()]);
    }
    let (n1, n2) = (lab.hosts[c1].node.clone(), lab.hosts[c2].node.clone());
    let h = lab.http(0);
    h.put(
        "/v1/kv/cluster/lab/demo",
        json!({"active_nodes": [n1], "standby_nodes": [n2]}).to_string(),
    );
    let action = format!(
        "#!/bin/sh\nPIDF={d}/@HOST.pid\nif [ \"$SERVANT_EXPECTED\" = stopped ]; then\n  kill $(cat $PIDF) 2>/dev/null; rm -f $PIDF\nelif ! kill -0 $(cat $PIDF 2>/dev/null) 2>/dev/null; then\n  setsid sleep {arg} </dev/null >/dev/null 2>&1 &\n  echo $! > $PIDF\nfi\n",
        d = d.display()
    );
    for role in ["primary", "secondary"] {
        h.put(
            &format!("/v1/kv/triggers/lab/demo/{role}/critical"),
            action.clone(),
        );
    }
    let alive = |node: &str| common::cluster::pid_alive(d, node);
    wait_for("active on c4 only", Duration::from_secs(90), || {
        (alive(&n1).is_some() && alive(&n2).is_none()).then_some(())
    });
    lab.net.cut(c1);
    wait_for("the standby takes over", Duration::from_secs(90), || {
        alive(&n2)
    });
    std::thread::sleep(Duration::from_secs(10));
    lab.net.heal(c1);
    wait_for(
        "one active after the heal",
        Duration::from_secs(120),
        || {
            let n = [&n1, &n2].iter().filter(|n| alive(n).is_some()).count();
            (n == 1).then_some(())
        },
    );
    for n in [&n1, &n2] {
        if let Some(p) = alive(n) {
            common::cluster::kill_pid(p);
        }
    }
}
