//! Which queued job this node should try to claim, and when. Pure: no IO, time is passed in.
//!
//! Every node sees every job in `jobs/`. If all raced for each job, a job would cost one write per
//! node. Instead each job has a preferred node, chosen by rendezvous hashing over the live
//! servants: the first-ranked node claims at once, the k-th waits k × `stagger` and claims only
//! if the job is still unclaimed. So a job costs about one claim write, whatever the node count,
//! and a busy or dead preferred node delays it by one stagger only.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

pub use crate::util::hash::stable_hash;

/// This node's position (0 = preferred) for `key` among `live` nodes plus itself.
pub fn rank(key: &str, me: &str, live: &[String]) -> usize {
    let mine = stable_hash(&[key, me]);
    live.iter()
        .filter(|n| n.as_str() != me)
        .filter(|n| {
            let h = stable_hash(&[key, n]);
            h > mine || (h == mine && n.as_str() < me)
        })
        .count()
}

/// The node that ranks first for `key`, if any node is live.
pub fn preferred<'a>(key: &str, live: &'a [String]) -> Option<&'a str> {
    live.iter()
        .max_by(|a, b| {
            stable_hash(&[key, a])
                .cmp(&stable_hash(&[key, b]))
                .then(b.cmp(a))
        })
        .map(String::as_str)
}

/// What a successful claim means, given the key's `LockIndex` after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Run it; this is attempt `attempt` (1-based).
    Run { attempt: u64 },
    /// Attempts exceed `Retries` + 1: the previous holder died mid-run too often.
    Lost { attempt: u64 },
}

pub fn verdict(lock_index: u64, retries: u32) -> Verdict {
    let attempt = lock_index.max(1);
    if attempt > u64::from(retries) + 1 {
        Verdict::Lost { attempt }
    } else {
        Verdict::Run { attempt }
    }
}

/// An unclaimed job as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Absolute KV key.
    pub key: String,
    /// Raft index of the key's last write; a claim is conditional on it.
    pub modify_index: u64,
    /// Queue order.
    pub create_index: u64,
    /// True for `queues/<me>/...`: only this node may run it, so no ranking.
    pub own_queue: bool,
}

/// What to do now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Keys to claim now, oldest first.
    pub claim: Vec<String>,
    /// When to look again even if nothing changes.
    pub wake_at: Option<Instant>,
}

/// Planner memory: when each candidate was first seen and which claims failed.
#[derive(Debug)]
pub struct ClaimBook {
    /// This node's name, for the ranking.
    me: String,
    /// Tunables.
    params: PlanParams,
    /// When each unclaimed key was first seen unclaimed; the stagger counts from here.
    first_seen: HashMap<String, Instant>,
    /// A failed claim at a ModifyIndex is not retried before the instant (lock-delay, races).
    failed: HashMap<String, (u64, Instant)>,
    /// The delay per rank position now: `params.stagger`, doubled after each lost race (the
    /// nodes ahead take longer than that to claim, on a busy cluster) up to
    /// `params.max_stagger`, and shrunk by an eighth after each claim won.
    stagger: Duration,
}

/// Tunables of the planner.
#[derive(Debug, Clone, Copy)]
pub struct PlanParams {
    /// Delay per rank position.
    pub stagger: Duration,
    /// Pause before retrying a failed claim of an unchanged key.
    pub retry_after: Duration,
    /// The most the stagger grows to after lost races.
    pub max_stagger: Duration,
}

impl ClaimBook {
    pub fn new(me: &str, params: PlanParams) -> Self {
        ClaimBook {
            me: me.to_string(),
            params,
            first_seen: HashMap::new(),
            failed: HashMap::new(),
            stagger: params.stagger,
        }
    }

    /// The delay per rank position now.
    pub fn stagger(&self) -> Duration {
        self.stagger
    }

    /// Another node claimed a key this node tried at the same time: the nodes ahead of it
    /// need longer than the stagger, so it waits longer.
    pub fn lost_race(&mut self) {
        self.stagger = (self.stagger * 2).min(self.params.max_stagger.max(self.params.stagger));
    }

    /// A claim went through: the stagger creeps back toward its base.
    pub fn won(&mut self) {
        self.stagger = (self.stagger - self.stagger / 8).max(self.params.stagger);
    }

    /// Records a claim that did not happen.
    pub fn claim_failed(&mut self, key: &str, modify_index: u64, now: Instant) {
        self.failed.insert(
            key.to_string(),
            (modify_index, now + self.params.retry_after),
        );
    }

    /// Decides which candidates to claim now. `busy` are keys this node is already claiming or
    /// running; `free` is how many more it may take.
    pub fn plan(
        &mut self,
        now: Instant,
        candidates: &[Candidate],
        live: &[String],
        busy: &HashSet<String>,
        free: usize,
    ) -> Plan {
        let me = self.me.as_str();
        let stagger = self.stagger;
        let present: HashSet<&str> = candidates.iter().map(|c| c.key.as_str()).collect();
        self.first_seen.retain(|k, _| present.contains(k.as_str()));
        self.failed.retain(|k, _| present.contains(k.as_str()));
        // Own-queue jobs first, then by this node's rank. Under load this is work stealing: if
        // every saturated node took "the oldest job" whenever a slot freed, they would all race
        // for the same key. So a node takes its preferred jobs (rank 0) oldest first, and takes
        // other nodes' jobs (rank >= 1) newest first, from the far end of their owners' queue.
        let mut ordered: Vec<(usize, &Candidate)> = candidates
            .iter()
            .filter(|c| !busy.contains(&c.key))
            .map(|c| {
                (
                    if c.own_queue {
                        0
                    } else {
                        rank(&c.key, me, live)
                    },
                    c,
                )
            })
            .collect();
        let age = |r: usize, c: &Candidate| {
            if r == 0 {
                c.create_index as i128
            } else {
                -(c.create_index as i128)
            }
        };
        ordered.sort_by(|(ra, a), (rb, b)| {
            (!a.own_queue, ra, age(*ra, a), &a.key).cmp(&(!b.own_queue, rb, age(*rb, b), &b.key))
        });
        let mut plan = Plan::default();
        let wake = |t: Instant, plan: &mut Plan| {
            plan.wake_at = Some(plan.wake_at.map_or(t, |w| w.min(t)));
        };
        for (r, c) in ordered {
            let seen = *self.first_seen.entry(c.key.clone()).or_insert(now);
            let mut due = seen + stagger * r as u32;
            if let Some((idx, until)) = self.failed.get(&c.key) {
                if *idx == c.modify_index {
                    due = due.max(*until);
                }
            }
            if due > now {
                wake(due, &mut plan);
            } else if plan.claim.len() < free {
                plan.claim.push(c.key.clone());
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nodes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node{i}")).collect()
    }

    #[test]
    fn exactly_one_node_ranks_first() {
        let live = nodes(5);
        for j in 0..200 {
            let key = format!("jobs/{j}");
            let firsts: Vec<_> = live.iter().filter(|n| rank(&key, n, &live) == 0).collect();
            assert_eq!(firsts.len(), 1);
            assert_eq!(Some(firsts[0].as_str()), preferred(&key, &live));
        }
    }

    #[test]
    fn preference_spreads_over_nodes() {
        let live = nodes(3);
        let mut counts = HashMap::new();
        for j in 0..3000 {
            *counts
                .entry(preferred(&format!("jobs/{j}"), &live).unwrap().to_string())
                .or_insert(0) += 1;
        }
        for n in &live {
            let c = counts[n];
            assert!((800..1200).contains(&c), "{n} got {c} of 3000");
        }
    }

    #[test]
    fn verdict_counts_attempts_against_retries() {
        assert_eq!(verdict(1, 0), Verdict::Run { attempt: 1 });
        assert_eq!(verdict(2, 0), Verdict::Lost { attempt: 2 });
        assert_eq!(verdict(2, 1), Verdict::Run { attempt: 2 });
        assert_eq!(verdict(3, 1), Verdict::Lost { attempt: 3 });
    }

    fn params() -> PlanParams {
        PlanParams {
            stagger: Duration::from_millis(100),
            retry_after: Duration::from_millis(500),
            max_stagger: Duration::from_millis(1600),
        }
    }

    #[test]
    fn the_stagger_grows_after_lost_races_and_creeps_back_after_wins() {
        let mut b = ClaimBook::new("node0", params());
        let base = Duration::from_millis(100);
        assert_eq!(b.stagger(), base);
        b.lost_race();
        b.lost_race();
        assert_eq!(b.stagger(), base * 4);
        for _ in 0..10 {
            b.lost_race();
        }
        assert_eq!(b.stagger(), Duration::from_millis(1600), "capped");
        for _ in 0..200 {
            b.won();
        }
        assert_eq!(b.stagger(), base, "never below the base");
        // A grown stagger delays the lower-ranked claim by as much.
        b.lost_race();
        let live = nodes(2);
        let key = (0..100)
            .map(|j| format!("jobs/{j}"))
            .find(|k| rank(k, "node0", &live) == 1)
            .unwrap();
        let t0 = Instant::now();
        let c = vec![Candidate {
            key: key.clone(),
            modify_index: 1,
            create_index: 1,
            own_queue: false,
        }];
        let plan = b.plan(t0, &c, &live, &HashSet::new(), 4);
        assert_eq!(plan.wake_at, Some(t0 + base * 2));
        assert!(b
            .plan(t0 + base, &c, &live, &HashSet::new(), 4)
            .claim
            .is_empty());
        assert_eq!(
            b.plan(t0 + base * 2, &c, &live, &HashSet::new(), 4).claim,
            vec![key]
        );
    }

    #[test]
    fn lower_ranked_node_waits_its_stagger() {
        let live = nodes(3);
        let key = (0..100)
            .map(|j| format!("jobs/{j}"))
            .find(|k| rank(k, "node0", &live) == 2)
            .unwrap();
        let c = vec![Candidate {
            key: key.clone(),
            modify_index: 5,
            create_index: 5,
            own_queue: false,
        }];
        let mut book = ClaimBook::new("node0", params());
        let t0 = Instant::now();
        let p = book.plan(t0, &c, &live, &HashSet::new(), 4);
        assert!(p.claim.is_empty());
        assert_eq!(p.wake_at, Some(t0 + Duration::from_millis(200)));
        let p = book.plan(
            t0 + Duration::from_millis(200),
            &c,
            &live,
            &HashSet::new(),
            4,
        );
        assert_eq!(p.claim, vec![key]);
    }

    #[test]
    fn a_saturated_node_takes_its_own_preferred_jobs_first() {
        let live = nodes(3);
        let c: Vec<_> = (0..30)
            .map(|i| Candidate {
                key: format!("jobs/{i}"),
                modify_index: i,
                create_index: i,
                own_queue: false,
            })
            .collect();
        let mut book = ClaimBook::new("node1", params());
        let t0 = Instant::now();
        book.plan(t0, &c, &live, &HashSet::new(), 0);
        let later = t0 + Duration::from_secs(1);
        let p = book.plan(later, &c, &live, &HashSet::new(), 3);
        assert_eq!(p.claim.len(), 3);
        for k in &p.claim {
            assert_eq!(rank(k, "node1", &live), 0, "{k}");
        }
        // Jobs preferred by others are stolen newest first, away from their owners' end.
        let others: Vec<_> = c
            .iter()
            .filter(|c| rank(&c.key, "node1", &live) == 1)
            .cloned()
            .collect();
        let p = book.plan(later, &others, &live, &HashSet::new(), 1);
        assert_eq!(p.claim, vec![others.last().unwrap().key.clone()]);
    }

    #[test]
    fn own_queue_is_claimed_at_once_and_capacity_is_respected() {
        let c: Vec<_> = (0..5)
            .map(|i| Candidate {
                key: format!("queues/me/{i}"),
                modify_index: i,
                create_index: i,
                own_queue: true,
            })
            .collect();
        let mut book = ClaimBook::new("me", params());
        let p = book.plan(Instant::now(), &c, &[], &HashSet::new(), 2);
        assert_eq!(p.claim, vec!["queues/me/0", "queues/me/1"]);
    }

    #[test]
    fn failed_claim_waits_unless_the_key_changed() {
        let mut c = vec![Candidate {
            key: "queues/me/a".into(),
            modify_index: 7,
            create_index: 7,
            own_queue: true,
        }];
        let mut book = ClaimBook::new("me", params());
        let t0 = Instant::now();
        book.claim_failed("queues/me/a", 7, t0);
        assert!(book.plan(t0, &c, &[], &HashSet::new(), 1).claim.is_empty());
        c[0].modify_index = 8;
        assert_eq!(book.plan(t0, &c, &[], &HashSet::new(), 1).claim.len(), 1);
    }

    proptest! {
        #[test]
        fn ranks_are_a_permutation(key in "[a-z0-9/]{1,20}", n in 1usize..12) {
            let live = nodes(n);
            let mut ranks: Vec<usize> = live.iter().map(|m| rank(&key, m, &live)).collect();
            ranks.sort();
            prop_assert_eq!(ranks, (0..n).collect::<Vec<_>>());
        }
    }
}
