//! Which queued job this node should try to claim, and when. Pure: no IO, time is passed in.
//!
//! Every node sees every job in `jobs/`. If all raced for each job, a job would cost one write per
//! node. Instead each job has a preferred node, chosen by rendezvous hashing over the live
//! servants: the first-ranked node claims at once, the k-th waits k × `stagger` and claims only
//! if the job is still unclaimed. So a job costs about one claim write, whatever the node count,
//! and a busy or dead preferred node delays it by one stagger only.

use std::collections::{BTreeSet, HashMap, HashSet};
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
    /// When to look again even if nothing changes. Left out once `free` is used up: a slot
    /// that frees brings the next look.
    pub wake_at: Option<Instant>,
}

/// Planner memory: the shared candidates in the plan's order, when each candidate was first
/// seen and which claims failed.
///
/// The shared candidates are kept between passes (`upsert`, `remove`, `set_live`), so a pass
/// walks from the front of the order and stops once `free` claims are chosen: under a backlog
/// it costs what it claims, not the queue's length (it used to re-sort every queued key at
/// every pass). Own-queue candidates come whole with each pass: that queue is this node's alone.
#[derive(Debug)]
pub struct ClaimBook {
    /// This node's name, for the ranking.
    me: String,
    /// Tunables.
    params: PlanParams,
    /// The delay per rank position now: `params.stagger`, doubled after each lost race (the
    /// nodes ahead take longer than that to claim, on a busy cluster) up to
    /// `params.max_stagger`, and shrunk by an eighth after each claim won.
    stagger: Duration,
    /// The live servants the ranks were computed against.
    live: Vec<String>,
    /// Shared candidates by key.
    shared: HashMap<String, Slot>,
    /// Shared candidates in the plan's order: rank, then `age`, then key.
    order: BTreeSet<(usize, i128, String)>,
    /// Own-queue candidates' memory, by key.
    own: HashMap<String, Seen>,
}

/// A shared candidate.
#[derive(Debug, Clone, Copy)]
struct Slot {
    modify_index: u64,
    create_index: u64,
    rank: usize,
    seen: Seen,
}

impl Slot {
    /// The slot's place in `ClaimBook::order`.
    fn place(&self, key: String) -> (usize, i128, String) {
        (self.rank, age(self.rank, self.create_index), key)
    }
}

/// When a candidate was first seen (the stagger counts from here), and a failed claim at a
/// ModifyIndex, not retried before the instant (lock-delay, races).
#[derive(Debug, Clone, Copy)]
struct Seen {
    at: Instant,
    failed: Option<(u64, Instant)>,
}

impl Seen {
    fn new(at: Instant) -> Self {
        Seen { at, failed: None }
    }

    /// When a candidate at `rank` and `modify_index` may be claimed.
    fn due(&self, rank: usize, stagger: Duration, modify_index: u64) -> Instant {
        let due = self.at + stagger * u32::try_from(rank).unwrap_or(u32::MAX);
        match self.failed {
            Some((idx, until)) if idx == modify_index => due.max(until),
            _ => due,
        }
    }
}

/// Within a rank, the order of claims. Under load this is work stealing: if every saturated
/// node took "the oldest job" whenever a slot freed, they would all race for the same key. So
/// a node takes its preferred jobs (rank 0) oldest first, and takes other nodes' jobs (rank >=
/// 1) newest first, from the far end of their owners' queue.
fn age(rank: usize, create_index: u64) -> i128 {
    if rank == 0 {
        i128::from(create_index)
    } else {
        -i128::from(create_index)
    }
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
            stagger: params.stagger,
            live: Vec::new(),
            shared: HashMap::new(),
            order: BTreeSet::new(),
            own: HashMap::new(),
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
        let failed = Some((modify_index, now + self.params.retry_after));
        match self.shared.get_mut(key) {
            Some(s) => s.seen.failed = failed,
            // Kept until the next plan, which forgets it unless the own queue still holds it.
            None => {
                self.own
                    .entry(key.to_string())
                    .or_insert_with(|| Seen::new(now))
                    .failed = failed
            }
        }
    }

    /// The live servants now: a change re-ranks every shared candidate.
    pub fn set_live(&mut self, live: &[String]) {
        if self.live == live {
            return;
        }
        self.live = live.to_vec();
        self.order.clear();
        for (key, s) in &mut self.shared {
            s.rank = rank(key, &self.me, &self.live);
            self.order.insert(s.place(key.clone()));
        }
    }

    /// A shared key is a candidate (again, perhaps at a new ModifyIndex); first seen `now` if
    /// it was not one.
    pub fn upsert(&mut self, c: Candidate, now: Instant) {
        if let Some(s) = self.shared.get_mut(&c.key) {
            s.modify_index = c.modify_index;
            if s.create_index != c.create_index {
                self.order.remove(&s.place(c.key.clone()));
                s.create_index = c.create_index;
                self.order.insert(s.place(c.key));
            }
            return;
        }
        let slot = Slot {
            modify_index: c.modify_index,
            create_index: c.create_index,
            rank: rank(&c.key, &self.me, &self.live),
            seen: Seen::new(now),
        };
        self.order.insert(slot.place(c.key.clone()));
        self.shared.insert(c.key, slot);
    }

    /// A shared key is no longer a candidate: its memory goes too.
    pub fn remove(&mut self, key: &str) {
        if let Some(s) = self.shared.remove(key) {
            self.order.remove(&s.place(key.to_string()));
        }
    }

    /// When a candidate was first seen.
    pub fn first_seen(&self, key: &str) -> Option<Instant> {
        self.shared
            .get(key)
            .map(|s| s.seen.at)
            .or_else(|| self.own.get(key).map(|s| s.at))
    }

    /// How many shared candidates there are.
    #[cfg(test)]
    pub fn shared_len(&self) -> usize {
        self.shared.len()
    }

    /// Decides which candidates to claim now: `own` (this node's own queue: no ranking,
    /// first), then the shared ones. `busy` are keys this node is already claiming or running;
    /// `free` is how many more it may take.
    pub fn plan(
        &mut self,
        now: Instant,
        own: &[Candidate],
        busy: &HashSet<String>,
        free: usize,
    ) -> Plan {
        let stagger = self.stagger;
        let listed: HashSet<&str> = own.iter().map(|c| c.key.as_str()).collect();
        self.own.retain(|k, _| listed.contains(k.as_str()));
        for c in own {
            if !self.own.contains_key(&c.key) {
                self.own.insert(c.key.clone(), Seen::new(now));
            }
        }
        let mut plan = Plan::default();
        if free == 0 {
            return plan;
        }
        let mut mine: Vec<&Candidate> = own.iter().collect();
        mine.sort_by(|a, b| (a.create_index, &a.key).cmp(&(b.create_index, &b.key)));
        // Own-queue keys (rank 0, oldest first), then the shared ones in their kept order.
        let own_due = mine.into_iter().filter_map(|c| {
            let seen = self.own.get(&c.key)?;
            Some((&c.key, seen.due(0, stagger, c.modify_index)))
        });
        let shared_due = self.order.iter().filter_map(|(r, _, key)| {
            let s = self.shared.get(key)?;
            Some((key, s.seen.due(*r, stagger, s.modify_index)))
        });
        for (key, due) in own_due.chain(shared_due) {
            if busy.contains(key) {
                continue;
            }
            if due > now {
                plan.wake_at = Some(plan.wake_at.map_or(due, |w| w.min(due)));
                continue;
            }
            plan.claim.push(key.clone());
            if plan.claim.len() == free {
                plan.wake_at = None;
                break;
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Makes the book's candidates exactly `cands` (as the worker's view does, change by
    /// change), then plans.
    fn plan_all(
        book: &mut ClaimBook,
        now: Instant,
        cands: &[Candidate],
        live: &[String],
        busy: &HashSet<String>,
        free: usize,
    ) -> Plan {
        book.set_live(live);
        let shared: HashSet<&str> = cands
            .iter()
            .filter(|c| !c.own_queue)
            .map(|c| c.key.as_str())
            .collect();
        let gone: Vec<String> = book
            .shared
            .keys()
            .filter(|k| !shared.contains(k.as_str()))
            .cloned()
            .collect();
        for k in gone {
            book.remove(&k);
        }
        for c in cands.iter().filter(|c| !c.own_queue) {
            book.upsert(c.clone(), now);
        }
        let own: Vec<Candidate> = cands.iter().filter(|c| c.own_queue).cloned().collect();
        book.plan(now, &own, busy, free)
    }

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
        let plan = plan_all(&mut b, t0, &c, &live, &HashSet::new(), 4);
        assert_eq!(plan.wake_at, Some(t0 + base * 2));
        assert!(plan_all(&mut b, t0 + base, &c, &live, &HashSet::new(), 4)
            .claim
            .is_empty());
        assert_eq!(
            plan_all(&mut b, t0 + base * 2, &c, &live, &HashSet::new(), 4).claim,
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
        let p = plan_all(&mut book, t0, &c, &live, &HashSet::new(), 4);
        assert!(p.claim.is_empty());
        assert_eq!(p.wake_at, Some(t0 + Duration::from_millis(200)));
        let p = plan_all(
            &mut book,
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
        plan_all(&mut book, t0, &c, &live, &HashSet::new(), 0);
        let later = t0 + Duration::from_secs(1);
        let p = plan_all(&mut book, later, &c, &live, &HashSet::new(), 3);
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
        let p = plan_all(&mut book, later, &others, &live, &HashSet::new(), 1);
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
        let p = plan_all(&mut book, Instant::now(), &c, &[], &HashSet::new(), 2);
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
        assert!(plan_all(&mut book, t0, &c, &[], &HashSet::new(), 1)
            .claim
            .is_empty());
        c[0].modify_index = 8;
        assert_eq!(
            plan_all(&mut book, t0, &c, &[], &HashSet::new(), 1)
                .claim
                .len(),
            1
        );
    }

    /// The planner as it was before it kept its candidates between passes: everything
    /// recomputed and sorted at every pass. The reference for `the_kept_order_plans_as_a_full_sort`.
    struct Reference {
        me: String,
        first_seen: HashMap<String, Instant>,
        failed: HashMap<String, (u64, Instant)>,
    }

    impl Reference {
        fn plan(
            &mut self,
            now: Instant,
            stagger: Duration,
            candidates: &[Candidate],
            live: &[String],
            busy: &HashSet<String>,
            free: usize,
        ) -> Plan {
            let me = self.me.as_str();
            let present: HashSet<&str> = candidates.iter().map(|c| c.key.as_str()).collect();
            self.first_seen.retain(|k, _| present.contains(k.as_str()));
            self.failed.retain(|k, _| present.contains(k.as_str()));
            for c in candidates {
                self.first_seen.entry(c.key.clone()).or_insert(now);
            }
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
            ordered.sort_by(|(ra, a), (rb, b)| {
                (!a.own_queue, ra, age(*ra, a.create_index), &a.key).cmp(&(
                    !b.own_queue,
                    rb,
                    age(*rb, b.create_index),
                    &b.key,
                ))
            });
            let mut plan = Plan::default();
            for (r, c) in ordered {
                let mut due = self.first_seen[&c.key] + stagger * r as u32;
                if let Some((idx, until)) = self.failed.get(&c.key) {
                    if *idx == c.modify_index {
                        due = due.max(*until);
                    }
                }
                if due > now {
                    plan.wake_at = Some(plan.wake_at.map_or(due, |w| w.min(due)));
                } else if plan.claim.len() < free {
                    plan.claim.push(c.key.clone());
                }
            }
            plan
        }
    }

    /// One pass of the property below: which keys are candidates (bit i of `shared` and
    /// `own`: key i, at ModifyIndex `index`), which are busy, how many slots are free, how far
    /// time moves, and what happened to the claims.
    #[derive(Debug, Clone)]
    struct Pass {
        shared: u16,
        own: u8,
        index: u64,
        busy: u16,
        free: usize,
        advance_ms: u64,
        nodes: usize,
        failed: u16,
        lost: bool,
    }

    fn pass() -> impl Strategy<Value = Pass> {
        (
            any::<u16>(),
            any::<u8>(),
            0u64..3,
            any::<u16>(),
            0usize..6,
            0u64..300,
            1usize..4,
            any::<u16>(),
            any::<bool>(),
        )
            .prop_map(
                |(shared, own, index, busy, free, advance_ms, nodes, failed, lost)| Pass {
                    shared,
                    own,
                    index,
                    busy,
                    free,
                    advance_ms,
                    nodes,
                    failed,
                    lost,
                },
            )
    }

    proptest! {
        #[test]
        fn ranks_are_a_permutation(key in "[a-z0-9/]{1,20}", n in 1usize..12) {
            let live = nodes(n);
            let mut ranks: Vec<usize> = live.iter().map(|m| rank(&key, m, &live)).collect();
            ranks.sort();
            prop_assert_eq!(ranks, (0..n).collect::<Vec<_>>());
        }

        #[test]
        fn the_kept_order_plans_as_a_full_sort(passes in proptest::collection::vec(pass(), 1..40)) {
            let mut book = ClaimBook::new("node0", params());
            let mut reference = Reference {
                me: "node0".into(),
                first_seen: HashMap::new(),
                failed: HashMap::new(),
            };
            let mut now = Instant::now();
            for p in passes {
                now += Duration::from_millis(p.advance_ms);
                let live = nodes(p.nodes);
                let key = |i: usize, own: bool| {
                    if own { format!("queues/node0/{i}") } else { format!("jobs/{i}") }
                };
                let mut cands = Vec::new();
                for i in 0..16 {
                    if p.shared & (1 << i) != 0 {
                        cands.push(Candidate {
                            key: key(i, false),
                            modify_index: p.index + i as u64,
                            create_index: 100 - i as u64 * 3,
                            own_queue: false,
                        });
                    }
                }
                for i in 0..8 {
                    if p.own & (1 << i) != 0 {
                        cands.push(Candidate {
                            key: key(i, true),
                            modify_index: p.index,
                            create_index: i as u64 % 3,
                            own_queue: true,
                        });
                    }
                }
                let busy: HashSet<String> = cands
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| p.busy & (1 << (i % 16)) != 0)
                    .map(|(_, c)| c.key.clone())
                    .collect();
                let stagger = book.stagger();
                let want = reference.plan(now, stagger, &cands, &live, &busy, p.free);
                let got = plan_all(&mut book, now, &cands, &live, &busy, p.free);
                prop_assert_eq!(&got.claim, &want.claim);
                if got.claim.len() < p.free {
                    prop_assert_eq!(got.wake_at, want.wake_at);
                }
                // Claims of candidates fail, races are lost or won.
                for (i, c) in cands.iter().enumerate() {
                    if p.failed & (1 << (i % 16)) != 0 {
                        book.claim_failed(&c.key, c.modify_index, now);
                        reference.failed.insert(c.key.clone(), (c.modify_index, now + params().retry_after));
                    }
                }
                if p.lost { book.lost_race() } else { book.won() }
            }
        }
    }
}
