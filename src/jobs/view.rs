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

use super::claim::Candidate;
use crate::consul::KvPair;
use crate::wire::Namespace;

/// What a claim task learned about a `jobs/` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Claimed, then run or rejected: the key is done for this node.
    Claimed,
    /// Not claimed. With the entry when the key was free at that index (a lock-delay, or an
    /// answer lost to a Consul error): the same entry is tried again later. Without it the key
    /// changed under us (a lost race): it is read again before the next try.
    NotClaimed(Option<KvPair>),
    /// Held by a session (another node's, or this node's with no task behind it: an orphan).
    Held(KvPair),
    /// The key no longer exists.
    Gone,
}

/// The view: what is known of each listed key, and the order keys were first seen in.
#[derive(Debug, Default)]
pub struct JobsView {
    /// Entries as last read, by key.
    known: HashMap<String, KvPair>,
    /// Keys this node finished, with the count of listings seen when it did: a listing no newer
    /// than that may still show them.
    finished: HashMap<String, u64>,
    /// Queue order: the order keys were first seen in (a keys-only listing has no CreateIndex).
    order: HashMap<String, u64>,
    next_order: u64,
    /// Listings of `jobs/` seen so far.
    listings: u64,
}

impl JobsView {
    /// A new keys-only listing arrived.
    pub fn listing(&mut self) {
        self.listings += 1;
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
        self.known.clear();
        for e in entries.into_iter().filter(|e| e.holder().is_some()) {
            self.remember(e);
        }
    }

    /// Values are kept even for held entries: an orphan is given back with its value.
    fn remember(&mut self, e: KvPair) {
        self.known.insert(e.key.clone(), e);
    }

    /// What a claim task found.
    pub fn learn(&mut self, key: &str, found: Found) {
        match found {
            Found::Claimed => {
                self.known.remove(key);
                self.finished.insert(key.to_string(), self.listings);
            }
            Found::NotClaimed(Some(e)) | Found::Held(e) => self.remember(e),
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

    /// Walks the current key names: forgets keys no longer listed and returns the candidates
    /// to plan with, and the entries this `session` holds that `busy` does not explain (orphans).
    pub fn candidates(
        &mut self,
        layout: &Namespace,
        keys: &[String],
        session: &str,
        busy: &HashSet<String>,
    ) -> (Vec<Candidate>, Vec<KvPair>) {
        let present: HashSet<&str> = keys.iter().map(String::as_str).collect();
        self.known.retain(|k, _| present.contains(k.as_str()));
        self.finished.retain(|k, _| present.contains(k.as_str()));
        self.order.retain(|k, _| present.contains(k.as_str()));
        let mut out = Vec::new();
        let mut orphans = Vec::new();
        for key in keys {
            if layout.parse_job_key(key).is_none() {
                continue;
            }
            let order = *self.order.entry(key.clone()).or_insert_with(|| {
                self.next_order += 1;
                self.next_order
            });
            let known = self.known.get(key);
            match known.and_then(KvPair::holder) {
                Some(h) if h == session && !busy.contains(key) => {
                    if let Some(e) = known {
                        orphans.push(e.clone());
                    }
                    continue;
                }
                Some(_) => continue,
                None => {}
            }
            // A listing no newer than the finish may still show the key; a read would say it
            // is gone, but there is no need to ask.
            if self
                .finished
                .get(key)
                .is_some_and(|at| self.listings <= *at)
            {
                continue;
            }
            out.push(Candidate {
                key: key.clone(),
                modify_index: known.map_or(0, |e| e.modify_index),
                create_index: order,
                own_queue: false,
            });
        }
        (out, orphans)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn names(c: &[Candidate]) -> Vec<&str> {
        c.iter().map(|c| c.key.as_str()).collect()
    }

    #[test]
    fn unknown_keys_are_candidates_in_the_order_first_seen_and_the_folder_key_is_not() {
        let l = Namespace::new("");
        let mut v = JobsView::default();
        let (c, _) = v.candidates(&l, &keys(&["jobs/", "jobs/b"]), "s1", &HashSet::new());
        assert_eq!(names(&c), ["jobs/b"]);
        let (c, _) = v.candidates(&l, &keys(&["jobs/a", "jobs/b"]), "s1", &HashSet::new());
        assert_eq!(names(&c), ["jobs/a", "jobs/b"]);
        assert!(c[1].create_index < c[0].create_index, "b was seen first");
        assert_eq!(c[0].modify_index, 0, "unknown: read before the claim");
        assert_eq!(v.entry("jobs/a"), None);
    }

    #[test]
    fn held_keys_are_skipped_until_a_resync_frees_them() {
        let l = Namespace::new("");
        let mut v = JobsView::default();
        v.learn("jobs/a", Found::Held(entry("jobs/a", 7, Some("other"))));
        let ks = keys(&["jobs/a"]);
        assert!(v.candidates(&l, &ks, "s1", &HashSet::new()).0.is_empty());
        assert!(v.held_by_others("s1"));
        v.resynced(vec![
            entry("jobs/a", 9, None),
            entry("jobs/b", 10, Some("x")),
        ]);
        let (c, _) = v.candidates(&l, &keys(&["jobs/a", "jobs/b"]), "s1", &HashSet::new());
        // Free in the listing: a candidate again, read before its claim (not claimed from the
        // listing's entry, which a slow pass would find taken).
        assert_eq!(names(&c), ["jobs/a"]);
        assert_eq!(c[0].modify_index, 0);
        assert_eq!(v.entry("jobs/a"), None);
        assert!(v.held_by_others("s1"), "b is held by x");
        v.resynced(vec![]);
        assert!(!v.held_by_others("s1"));
    }

    #[test]
    fn a_key_held_by_this_session_without_a_task_is_an_orphan() {
        let l = Namespace::new("");
        let mut v = JobsView::default();
        v.learn("jobs/a", Found::Held(entry("jobs/a", 7, Some("s1"))));
        let ks = keys(&["jobs/a"]);
        let (c, o) = v.candidates(&l, &ks, "s1", &HashSet::new());
        assert!(c.is_empty());
        assert_eq!(o.len(), 1);
        let busy: HashSet<String> = ["jobs/a".to_string()].into();
        let (c, o) = v.candidates(&l, &ks, "s1", &busy);
        assert!(c.is_empty() && o.is_empty());
    }

    #[test]
    fn a_finished_key_is_skipped_until_a_newer_listing_and_forgotten_when_gone() {
        let l = Namespace::new("");
        let mut v = JobsView::default();
        let ks = keys(&["jobs/a"]);
        v.listing();
        v.learn("jobs/a", Found::Claimed);
        assert!(v.candidates(&l, &ks, "s1", &HashSet::new()).0.is_empty());
        // Submitted again under the same ID: a newer listing shows it, and it is a candidate.
        v.listing();
        assert_eq!(v.candidates(&l, &ks, "s1", &HashSet::new()).0.len(), 1);
        v.learn("jobs/a", Found::Claimed);
        v.candidates(&l, &[], "s1", &HashSet::new());
        assert!(v.finished.is_empty() && v.order.is_empty() && v.known.is_empty());
    }

    #[test]
    fn a_lost_race_forgets_the_entry_and_a_lock_delay_keeps_it() {
        let mut v = JobsView::default();
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
}
