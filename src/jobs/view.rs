//! This node's view of the shared queue `jobs/`. Pure: no IO.
//!
//! A node follows `jobs/` with a keys-only watch, so a change costs it the key names, not every
//! queued document (before, every node re-read every queued job, values included, on every
//! change: N × Q documents per submit). What a node knows of a key beyond its name comes from
//! two reads it makes itself: the key read just before a claim, and a whole listing (a resync)
//! at start, when the live servants change, and now and then while keys it saw held by others
//! are queued (a holder that restarted frees its keys without the live set changing).
//!
//! Lock and unlock do not change the key names, so a keys-only watch does not say a holder let
//! go; that is what the resyncs are for. A key whose state is unknown is a candidate: the claim
//! task reads it first and says what it found ([`Found`]).

use std::collections::{HashMap, HashSet};

use std::time::Instant;

use super::claim::{Candidate, ClaimBook};
use crate::consul::KvPair;
use crate::wire::Namespace;

/// What a claim task learned about a `jobs/` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Claimed, then run or rejected: the key is done for this node. With the Raft index of
    /// the transaction that deleted the key, when known: a listing older than that may still
    /// show it.
    Claimed(Option<u64>),
    /// Not claimed. With the entry when the key was free at that index (a lock-delay, or an
    /// answer lost to a Consul error): the same entry is tried again later. Without it the key
    /// changed under us (a lost race): it is read again before the next try.
    NotClaimed(Option<KvPair>),
    /// Held by a session (another node's, or this node's with no task behind it: an orphan).
    Held(KvPair),
    /// The key no longer exists.
    Gone,
}

/// The view: what is known of each listed key, and the order keys were first seen in. It
/// keeps the claim planner's shared candidates up to date change by change: a listing is
/// compared with the last one (both sorted), and only the keys that came, went or were
/// learned about are looked at again (`sync`), so a pass costs what changed.
#[derive(Debug, Default)]
pub struct JobsView {
    /// Entries as last read, by key; listed keys only.
    known: HashMap<String, KvPair>,
    /// Keys this node finished, and how to tell a listing that may still show them.
    finished: HashMap<String, Finished>,
    /// Queue order: the order keys were first seen in (a keys-only listing has no CreateIndex).
    order: HashMap<String, u64>,
    next_order: u64,
    /// Listings of `jobs/` seen so far.
    listings: u64,
    /// The last listing's key names, sorted.
    listed: Vec<String>,
    /// The last listing's Raft index (`X-Consul-Index`).
    listed_at: u64,
    /// Keys whose candidacy may have changed since the last `sync`.
    dirty: HashSet<String>,
}

/// A key this node finished. A listing answered before the result's transaction deleted it
/// still shows it (it was in flight, or sent by a change from before the deletion); a read
/// would then find it gone, one wasted request for about half the jobs under load.
#[derive(Debug, Clone, Copy)]
struct Finished {
    /// Listings seen when it finished.
    listings: u64,
    /// The Raft index of the deletion, when known.
    gone_at: Option<u64>,
}

impl Finished {
    /// Whether a listing (the `listings`-th, at Raft index `index`) that shows the key says it
    /// was queued again. A listing's index is at least every listed key's ModifyIndex, so one
    /// older than the deletion cannot show a key queued after it, and one at or past it no
    /// longer holds the deleted key. Without the index, any later listing counts.
    fn queued_again(&self, listings: u64, index: u64) -> bool {
        match self.gone_at {
            Some(at) => index >= at,
            None => listings > self.listings,
        }
    }
}

impl JobsView {
    /// A new keys-only listing arrived, answered at Raft index `index`: the keys that came are
    /// candidates (unknown, read before a claim), the keys that went are forgotten.
    pub fn listing(&mut self, index: u64, keys: &[String]) {
        self.listings += 1;
        if index < self.listed_at {
            // Consul's indexes went back (its data was reset): a deletion's index says nothing
            // about the new ones, so finished keys fall back to counting listings.
            for f in self.finished.values_mut() {
                f.gone_at = None;
            }
        }
        self.listed_at = index;
        // Consul lists keys sorted; should a listing not be, it is sorted here.
        let mut names: Vec<&String> = keys.iter().collect();
        if !names.is_sorted() {
            names.sort();
            names.dedup();
        }
        let mut old = std::mem::take(&mut self.listed).into_iter().peekable();
        let mut listed = Vec::with_capacity(names.len());
        for key in names {
            while let Some(gone) = old.next_if(|o| o < key) {
                self.forget(gone);
            }
            match old.next_if(|o| o == key) {
                Some(kept) => listed.push(kept),
                None => {
                    self.next_order += 1;
                    self.order.insert(key.clone(), self.next_order);
                    self.dirty.insert(key.clone());
                    listed.push(key.clone());
                }
            }
        }
        for gone in old {
            self.forget(gone);
        }
        // A key finished here that a newer listing still shows was submitted again.
        self.dirty.extend(self.finished.keys().cloned());
        self.listed = listed;
    }

    fn forget(&mut self, key: String) {
        self.known.remove(&key);
        self.finished.remove(&key);
        self.order.remove(&key);
        self.dirty.insert(key);
    }

    /// Whether the last listing showed `key`.
    pub fn is_listed(&self, key: &str) -> bool {
        self.listed
            .binary_search_by(|k| k.as_str().cmp(key))
            .is_ok()
    }

    /// How many listings have arrived: a higher count is a newer view.
    pub fn listings(&self) -> u64 {
        self.listings
    }

    /// A whole listing of `jobs/`, values included, replaces what was known of held keys. Free
    /// keys in it become unknown again, to be read just before a claim: by the time a slot
    /// frees, a listing's free entry is likely taken, and a claim made from it fails, which
    /// costs Consul a Raft entry (a read costs none).
    pub fn resynced(&mut self, entries: Vec<KvPair>) {
        self.dirty.extend(self.known.drain().map(|(k, _)| k));
        for e in entries {
            if e.holder().is_some() && self.is_listed(&e.key) {
                self.dirty.insert(e.key.clone());
                self.known.insert(e.key.clone(), e);
            }
        }
    }

    /// What a claim task found. Values are kept even for held entries: an orphan is given
    /// back with its value.
    pub fn learn(&mut self, key: &str, found: Found) {
        self.dirty.insert(key.to_string());
        if !self.is_listed(key) {
            // Gone from the listing meanwhile: nothing to remember.
            return;
        }
        match found {
            Found::Claimed(gone_at) => {
                self.known.remove(key);
                let f = Finished {
                    listings: self.listings,
                    gone_at,
                };
                self.finished.insert(key.to_string(), f);
            }
            Found::NotClaimed(Some(e)) | Found::Held(e) => {
                self.known.insert(key.to_string(), e);
            }
            Found::NotClaimed(None) | Found::Gone => {
                self.known.remove(key);
            }
        }
    }

    /// Whether some listed key was last seen held by another session: a resync may find it
    /// freed.
    pub fn held_by_others(&self, session: &str) -> bool {
        self.known
            .values()
            .any(|e| e.holder().is_some_and(|h| h != session))
    }

    /// The entry to claim `key` with, when it was last seen free; None when it must be read.
    pub fn entry(&self, key: &str) -> Option<KvPair> {
        self.known
            .get(key)
            .filter(|e| e.holder().is_none())
            .cloned()
    }

    /// Tells the planner about every key whose candidacy may have changed: a listed job key
    /// that no session holds and this node has not just finished is a candidate.
    pub fn sync(&mut self, layout: &Namespace, book: &mut ClaimBook, now: Instant) {
        for key in std::mem::take(&mut self.dirty) {
            let known = self.known.get(&key);
            let candidate = self.is_listed(&key)
                && layout.parse_job_key(&key).is_some()
                && known.and_then(KvPair::holder).is_none()
                // A listing older than the finish may still show the key; a read would say it
                // is gone, but there is no need to ask.
                && self
                    .finished
                    .get(&key)
                    .is_none_or(|f| f.queued_again(self.listings, self.listed_at));
            match (candidate, self.order.get(&key)) {
                (true, Some(order)) => book.upsert(
                    Candidate {
                        modify_index: known.map_or(0, |e| e.modify_index),
                        create_index: *order,
                        own_queue: false,
                        key,
                    },
                    now,
                ),
                _ => book.remove(&key),
            }
        }
    }

    /// The listed entries this `session` holds that `busy` does not explain: orphans.
    pub fn orphans(
        &self,
        layout: &Namespace,
        session: &str,
        busy: &HashSet<String>,
    ) -> Vec<KvPair> {
        self.known
            .values()
            .filter(|e| {
                e.holder() == Some(session)
                    && !busy.contains(&e.key)
                    && layout.parse_job_key(&e.key).is_some()
            })
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::jobs::claim::PlanParams;

    fn entry(key: &str, index: u64, session: Option<&str>) -> KvPair {
        KvPair {
            key: key.into(),
            create_index: index,
            modify_index: index,
            lock_index: 0,
            flags: 0,
            value: b"{\"Command\":\"true\"}".to_vec(),
            session: session.map(str::to_string),
        }
    }

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    fn book() -> ClaimBook {
        ClaimBook::new(
            "me",
            PlanParams {
                stagger: Duration::from_millis(25),
                retry_after: Duration::from_millis(500),
                max_stagger: Duration::from_millis(400),
            },
        )
    }

    /// The shared candidates after a sync, in the plan's order.
    fn candidates(v: &mut JobsView, b: &mut ClaimBook) -> Vec<String> {
        let now = Instant::now();
        v.sync(&Namespace::new(""), b, now);
        b.plan(
            now + Duration::from_secs(60),
            &[],
            &HashSet::new(),
            usize::MAX,
        )
        .claim
    }

    #[test]
    fn unknown_keys_are_candidates_in_the_order_first_seen_and_the_folder_key_is_not() {
        let (mut v, mut b) = (JobsView::default(), book());
        v.listing(0, &keys(&["jobs/", "jobs/b"]));
        assert_eq!(candidates(&mut v, &mut b), ["jobs/b"]);
        v.listing(0, &keys(&["jobs/a", "jobs/b"]));
        assert_eq!(
            candidates(&mut v, &mut b),
            ["jobs/b", "jobs/a"],
            "b was seen first"
        );
        assert_eq!(v.entry("jobs/a"), None, "unknown: read before the claim");
        assert!(v.is_listed("jobs/a") && !v.is_listed("jobs/"));
    }

    #[test]
    fn an_unsorted_listing_is_diffed_as_a_sorted_one() {
        let (mut v, mut b) = (JobsView::default(), book());
        v.listing(0, &keys(&["jobs/c", "jobs/a", "jobs/c"]));
        assert_eq!(candidates(&mut v, &mut b), ["jobs/a", "jobs/c"]);
        v.listing(0, &keys(&["jobs/d", "jobs/a"]));
        assert_eq!(candidates(&mut v, &mut b), ["jobs/a", "jobs/d"]);
        assert!(!v.is_listed("jobs/c") && v.order.len() == 2);
    }

    #[test]
    fn held_keys_are_skipped_until_a_resync_frees_them() {
        let (mut v, mut b) = (JobsView::default(), book());
        v.listing(0, &keys(&["jobs/a", "jobs/b"]));
        v.learn("jobs/a", Found::Held(entry("jobs/a", 7, Some("other"))));
        assert_eq!(candidates(&mut v, &mut b), ["jobs/b"]);
        assert!(v.held_by_others("s1"));
        v.resynced(vec![
            entry("jobs/a", 9, None),
            entry("jobs/b", 10, Some("x")),
        ]);
        // Free in the listing: a candidate again, read before its claim (not claimed from the
        // listing's entry, which a slow pass would find taken).
        assert_eq!(candidates(&mut v, &mut b), ["jobs/a"]);
        assert_eq!(v.entry("jobs/a"), None);
        assert!(v.held_by_others("s1"), "b is held by x");
        v.resynced(vec![]);
        assert!(!v.held_by_others("s1"));
        assert_eq!(candidates(&mut v, &mut b), ["jobs/a", "jobs/b"]);
    }

    #[test]
    fn a_key_held_by_this_session_without_a_task_is_an_orphan() {
        let (mut v, mut b) = (JobsView::default(), book());
        let l = Namespace::new("");
        v.listing(0, &keys(&["jobs/a"]));
        v.learn("jobs/a", Found::Held(entry("jobs/a", 7, Some("s1"))));
        assert!(candidates(&mut v, &mut b).is_empty());
        assert_eq!(v.orphans(&l, "s1", &HashSet::new()).len(), 1);
        let busy: HashSet<String> = ["jobs/a".to_string()].into();
        assert!(v.orphans(&l, "s1", &busy).is_empty());
        assert!(v.orphans(&l, "s2", &HashSet::new()).is_empty());
    }

    #[test]
    fn a_finished_key_is_skipped_until_a_newer_listing_and_forgotten_when_gone() {
        let (mut v, mut b) = (JobsView::default(), book());
        let ks = keys(&["jobs/a"]);
        v.listing(0, &ks);
        assert_eq!(candidates(&mut v, &mut b).len(), 1);
        v.learn("jobs/a", Found::Claimed(None));
        assert!(candidates(&mut v, &mut b).is_empty());
        // Submitted again under the same ID: a newer listing shows it, and it is a candidate.
        v.listing(0, &ks);
        assert_eq!(candidates(&mut v, &mut b).len(), 1);
        v.learn("jobs/a", Found::Claimed(None));
        v.listing(0, &[]);
        assert!(candidates(&mut v, &mut b).is_empty());
        assert!(v.finished.is_empty() && v.order.is_empty() && v.known.is_empty());
        assert_eq!(b.shared_len(), 0);
    }

    /// Under load about half the finished jobs were read once more, and found gone: a listing
    /// answered before the result's transaction deleted the key arrived after the finish, and
    /// counted as newer.
    #[test]
    fn regression_a_listing_from_before_the_deletion_does_not_bring_a_finished_key_back() {
        let (mut v, mut b) = (JobsView::default(), book());
        let ks = keys(&["jobs/a"]);
        v.listing(10, &ks);
        assert_eq!(candidates(&mut v, &mut b).len(), 1);
        // The result's transaction deleted it at index 15.
        v.learn("jobs/a", Found::Claimed(Some(15)));
        assert!(candidates(&mut v, &mut b).is_empty());
        // Answered at 12 (another job's claim), it arrives after the finish and still shows it.
        v.listing(12, &ks);
        assert!(candidates(&mut v, &mut b).is_empty());
        // Queued again under the same ID: shown by a listing at or past the deletion.
        v.listing(17, &ks);
        assert_eq!(candidates(&mut v, &mut b), ["jobs/a"]);
        // Consul's indexes reset: a key queued again at a low index is not kept out for good
        // (any later listing counts, as without an index).
        v.learn("jobs/a", Found::Claimed(Some(20)));
        assert!(candidates(&mut v, &mut b).is_empty());
        v.listing(3, &ks);
        assert_eq!(candidates(&mut v, &mut b), ["jobs/a"]);
    }

    #[test]
    fn a_lost_race_forgets_the_entry_and_a_lock_delay_keeps_it() {
        let mut v = JobsView::default();
        v.listing(0, &keys(&["jobs/a"]));
        v.learn("jobs/a", Found::NotClaimed(Some(entry("jobs/a", 5, None))));
        assert_eq!(v.entry("jobs/a").map(|e| e.modify_index), Some(5));
        v.learn("jobs/a", Found::NotClaimed(None));
        assert_eq!(v.entry("jobs/a"), None);
        v.learn("jobs/a", Found::Held(entry("jobs/a", 6, Some("x"))));
        assert_eq!(v.entry("jobs/a"), None);
        assert!(
            !v.known["jobs/a"].value.is_empty(),
            "an orphan is given back with its value"
        );
        v.learn("jobs/a", Found::Gone);
        assert!(v.known.is_empty());
    }

    #[test]
    fn what_is_learned_of_a_key_no_longer_listed_is_not_kept() {
        let mut v = JobsView::default();
        v.listing(0, &keys(&["jobs/a"]));
        v.listing(0, &[]);
        v.learn("jobs/a", Found::Held(entry("jobs/a", 6, Some("x"))));
        v.learn("jobs/a", Found::Claimed(None));
        v.resynced(vec![entry("jobs/a", 6, Some("x"))]);
        assert!(v.known.is_empty() && v.finished.is_empty());
        assert!(!v.held_by_others("s1"));
    }
}
