//! The embedded server's state machine: KV, sessions and their locks, with Consul 1.8.7's
//! semantics. Pure: no IO, no clock (time comes in as milliseconds), so every rule is
//! unit-testable and the HTTP layer around it stays thin.
//!
//! Index rules follow Consul's state store:
//! - every write (a PUT, a DELETE, a whole transaction, a session change) takes the next index;
//! - a single-key read answers the KV table's index;
//! - a prefix listing answers the highest index under the prefix, counting deleted keys
//!   (tombstones), so deleting the newest key never makes a blocking list go backwards.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::wire::HealthStatus;

/// Consul's value size limit.
pub const MAX_VALUE_BYTES: usize = 512 * 1024;
/// Consul's limit of operations in one transaction.
pub const MAX_TXN_OPS: usize = 64;
/// Consul invalidates a TTL session this many TTLs after its last renewal.
pub const TTL_MULTIPLIER: u64 = 2;
/// Tombstones kept for index continuity; the oldest go first beyond this.
pub const MAX_TOMBSTONES: usize = 50_000;

/// A stored key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub value: Vec<u8>,
    pub flags: u64,
    pub create_index: u64,
    pub modify_index: u64,
    pub lock_index: u64,
    /// The session holding the lock.
    pub session: Option<String>,
}

/// What happens to a session's locks when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Behavior {
    Release,
    Delete,
}

/// A session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub name: String,
    pub node: String,
    /// Health checks whose failure invalidates the session.
    pub checks: Vec<String>,
    /// TTL in seconds, 0 for none.
    pub ttl_secs: u64,
    pub behavior: Behavior,
    /// Lock-delay in milliseconds.
    pub lock_delay_ms: u64,
    pub create_index: u64,
    /// When a TTL session expires unless renewed (ms since the epoch); 0 for none.
    pub expires_at_ms: u64,
}

/// User events kept for `/v1/event/list`.
pub const MAX_EVENTS: usize = 256;

/// A health check on the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub id: String,
    pub name: String,
    /// Stored by its lowercase name, as when it was a string: older data files read the same.
    pub status: HealthStatus,
    pub notes: String,
    pub output: String,
    pub service_id: String,
    pub service_name: String,
    /// TTL in ms for a TTL check; 0 otherwise.
    pub ttl_ms: u64,
    /// When a TTL check goes critical unless updated (ms); 0 for none.
    pub expires_at_ms: u64,
    /// What the server probes itself, for HTTP and TCP checks.
    pub probe: Option<Probe>,
}

/// An HTTP or TCP check the embedded server runs itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// `http://...` URL (GET) or `host:port` (TCP connect).
    pub target: String,
    pub http: bool,
    pub interval_ms: u64,
    pub timeout_ms: u64,
}

impl Probe {
    /// Consul's verdict on an HTTP status: 2xx passing, 429 warning, anything else critical.
    pub fn http_status(code: u16) -> HealthStatus {
        match code {
            200..=299 => HealthStatus::Passing,
            429 => HealthStatus::Warning,
            _ => HealthStatus::Critical,
        }
    }
}

/// A user event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEvent {
    pub id: String,
    pub name: String,
    pub payload: Vec<u8>,
    pub ltime: u64,
}

/// Errors shaped for Consul-like answers; the HTTP layer maps them to status codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// HTTP 413.
    #[error("Value exceeds {MAX_VALUE_BYTES} byte limit")]
    TooLarge,
    /// HTTP 500, as Consul answers an unknown session on acquire.
    #[error("invalid session {0:?}")]
    InvalidSession(String),
    /// HTTP 500.
    #[error("Invalid Session TTL '{0}', must be between [10s=24h0m0s]")]
    BadTtl(String),
    /// HTTP 400.
    #[error("{0}")]
    BadRequest(String),
    /// HTTP 500 with Consul's words (e.g. "Missing check 'x' registration").
    #[error("{0}")]
    Refused(String),
    /// HTTP 404.
    #[error("{0}")]
    NotFound(String),
}

/// Why one op of a transaction fails, in Consul's words: the `What` of a rolled-back
/// transaction's `Errors`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxnOpError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("key {0:?} doesn't exist")]
    Missing(String),
    #[error("failed to set key {0:?}, index is stale")]
    StaleSet(String),
    #[error("failed to lock key {0:?}, lock is already held")]
    Held(String),
    #[error("failed to lock key {0:?} due to lock delay")]
    LockDelay(String),
    #[error("failed to unlock key {0:?}, lock isn't held, or is held by another session")]
    NotHeld(String),
    #[error("current modify index {current} != {wanted}")]
    Index { current: u64, wanted: u64 },
    #[error("lock is currently held by {0:?}")]
    HeldBy(String),
    #[error("key {0:?} exists")]
    Exists(String),
    #[error("failed to delete key {0:?}, index is stale")]
    StaleDelete(String),
}

/// One KV verb of a transaction: the client's own type, so both sides share one list of verbs.
pub use crate::wire::TxnKvOp as TxnOp;

/// The state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The last index handed out.
    pub index: u64,
    /// Index of the last KV change (writes, deletes, lock releases).
    pub kv_index: u64,
    pub kv: BTreeMap<String, Entry>,
    /// Deleted keys and the index of their deletion.
    pub tombstones: BTreeMap<String, u64>,
    pub sessions: BTreeMap<String, Session>,
    /// Keys under lock-delay, until this instant (ms). Not persisted: like Consul's, it lives
    /// in memory only.
    pub lock_delays: BTreeMap<String, u64>,
    /// Services registered on the agent, by ID, as registered (Consul's own JSON).
    #[serde(skip)]
    pub services: BTreeMap<String, serde_json::Value>,
    /// Health checks registered on the agent, by check ID (not counting serfHealth).
    #[serde(skip)]
    pub checks: BTreeMap<String, Check>,
    /// Recent user events, oldest first (at most `MAX_EVENTS`). In memory.
    #[serde(skip)]
    pub events: Vec<UserEvent>,
    /// Index of the last catalog change.
    #[serde(skip)]
    pub catalog_index: u64,
    /// Index of the last session created or ended (renewals take none), for session reads.
    #[serde(skip)]
    pub sessions_index: u64,
    /// What changed since the store last persisted.
    #[serde(skip)]
    pub dirty: Dirty,
}

/// Names of the rows changed (written or removed), by table: what the store must persist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dirty {
    /// Keys written or deleted.
    pub kv: BTreeSet<String>,
    /// Sessions created or ended.
    pub sessions: BTreeSet<String>,
    /// Services registered or removed.
    pub services: BTreeSet<String>,
    /// Checks registered, changed or removed.
    pub checks: BTreeSet<String>,
}

impl Dirty {
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows named, in all tables.
    pub fn len(&self) -> usize {
        self.kv.len() + self.sessions.len() + self.services.len() + self.checks.len()
    }

    /// Moves `other`'s names into this set, leaving `other` empty. One insert per name:
    /// `BTreeSet::append` rebuilds the whole set, and this set grows large between checkpoints.
    pub fn absorb(&mut self, other: &mut Dirty) {
        for (to, from) in [
            (&mut self.kv, &mut other.kv),
            (&mut self.sessions, &mut other.sessions),
            (&mut self.services, &mut other.services),
            (&mut self.checks, &mut other.checks),
        ] {
            to.extend(std::mem::take(from));
        }
    }
}

/// Options of a KV PUT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOptions {
    pub flags: u64,
    pub cas: Option<u64>,
    pub acquire: Option<String>,
    pub release: Option<String>,
}

/// A transaction's verdict: results for committed ops, or errors with their op index.
pub type TxnVerdict = Result<Vec<Option<(String, Entry)>>, Vec<(usize, TxnOpError)>>;

impl State {
    fn next_index(&mut self) -> u64 {
        self.index += 1;
        self.index
    }

    /// The index a single-key read answers.
    pub fn kv_table_index(&self) -> u64 {
        self.kv_index.max(1)
    }

    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.kv.get(key)
    }

    /// Entries whose key starts with `prefix`, in key order.
    fn under<'a>(&'a self, prefix: &str) -> impl Iterator<Item = (&'a String, &'a Entry)> + 'a {
        let p = prefix.to_string();
        self.kv
            .range(p.clone()..)
            .take_while(move |(k, _)| k.starts_with(&p))
    }

    /// Entries under `prefix` and the listing's index.
    pub fn list(&self, prefix: &str) -> (u64, Vec<(&String, &Entry)>) {
        let entries: Vec<_> = self.under(prefix).collect();
        (
            self.prefix_index(
                prefix,
                entries
                    .iter()
                    .map(|(_, e)| e.modify_index)
                    .max()
                    .unwrap_or(0),
            ),
            entries,
        )
    }

    /// Key names under `prefix`, folded after `separator` like Consul's `?keys&separator=`.
    pub fn keys(&self, prefix: &str, separator: Option<&str>) -> (u64, Vec<String>) {
        let (index, entries) = self.list(prefix);
        let mut out: Vec<String> = Vec::new();
        for (k, _) in entries {
            let name = match separator.filter(|s| !s.is_empty()) {
                Some(sep) => match k[prefix.len()..].find(sep) {
                    Some(pos) => k[..prefix.len() + pos + sep.len()].to_string(),
                    None => k.clone(),
                },
                None => k.clone(),
            };
            if out.last() != Some(&name) {
                out.push(name);
            }
        }
        (index, out)
    }

    fn prefix_index(&self, prefix: &str, entries_max: u64) -> u64 {
        if prefix.is_empty() {
            return self.kv_table_index();
        }
        let graves = self
            .tombstones
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, i)| *i)
            .max()
            .unwrap_or(0);
        let idx = entries_max.max(graves);
        if idx == 0 {
            self.kv_table_index()
        } else {
            idx
        }
    }

    fn check_value(value: &[u8]) -> Result<(), StateError> {
        if value.len() > MAX_VALUE_BYTES {
            Err(StateError::TooLarge)
        } else {
            Ok(())
        }
    }

    fn valid_session(&self, id: &str) -> Result<(), StateError> {
        if self.sessions.contains_key(id) {
            Ok(())
        } else {
            Err(StateError::InvalidSession(id.to_string()))
        }
    }

    /// A KV PUT. Ok(false) is Consul's `false`: a cas or lock that did not happen.
    pub fn put(
        &mut self,
        key: &str,
        value: Vec<u8>,
        o: &PutOptions,
        now_ms: u64,
    ) -> Result<bool, StateError> {
        Self::check_value(&value)?;
        // Consul refuses any two of cas, acquire and release together.
        let set = [o.cas.is_some(), o.acquire.is_some(), o.release.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
        if set > 1 {
            return Err(StateError::BadRequest(
                "Conflicting flags: cas=, acquire=, release= may not be combined".into(),
            ));
        }
        if let Some(cas) = o.cas {
            match (cas, self.kv.get(key)) {
                (0, Some(_)) => return Ok(false),
                (c, Some(e)) if c != 0 && e.modify_index != c => return Ok(false),
                (c, None) if c != 0 => return Ok(false),
                _ => {}
            }
        }
        if let Some(s) = &o.acquire {
            self.valid_session(s)?;
            if !self.can_lock(key, s, now_ms) {
                return Ok(false);
            }
            let idx = self.next_index();
            self.write_lock(key, value, o.flags, s, idx);
            return Ok(true);
        }
        if let Some(s) = &o.release {
            // Consul answers `false`, not an error, for a session that is gone.
            match self.kv.get(key) {
                Some(e) if e.session.as_deref() == Some(s.as_str()) => {}
                _ => return Ok(false),
            }
            let idx = self.next_index();
            self.write_unlock(key, value, o.flags, idx);
            return Ok(true);
        }
        let idx = self.next_index();
        self.write_set(key, value, o.flags, idx);
        Ok(true)
    }

    fn can_lock(&self, key: &str, session: &str, now_ms: u64) -> bool {
        match self.kv.get(key).and_then(|e| e.session.as_deref()) {
            Some(holder) => holder == session,
            None => self
                .lock_delays
                .get(key)
                .is_none_or(|until| *until <= now_ms),
        }
    }

    fn write_set(&mut self, key: &str, value: Vec<u8>, flags: u64, idx: u64) {
        self.kv_index = idx;
        self.dirty.kv.insert(key.to_string());
        self.tombstones.remove(key);
        match self.kv.get_mut(key) {
            Some(e) => {
                e.value = value;
                e.flags = flags;
                e.modify_index = idx;
            }
            None => {
                self.kv.insert(
                    key.to_string(),
                    Entry {
                        value,
                        flags,
                        create_index: idx,
                        modify_index: idx,
                        lock_index: 0,
                        session: None,
                    },
                );
            }
        }
    }

    fn write_lock(&mut self, key: &str, value: Vec<u8>, flags: u64, session: &str, idx: u64) {
        let already = self.kv.get(key).and_then(|e| e.session.as_deref()) == Some(session);
        self.write_set(key, value, flags, idx);
        if let Some(e) = self.kv.get_mut(key) {
            if !already {
                e.lock_index += 1;
                e.session = Some(session.to_string());
            }
        }
    }

    fn write_unlock(&mut self, key: &str, value: Vec<u8>, flags: u64, idx: u64) {
        self.write_set(key, value, flags, idx);
        if let Some(e) = self.kv.get_mut(key) {
            e.session = None;
        }
    }

    fn write_delete(&mut self, key: &str, idx: u64) -> bool {
        if self.kv.remove(key).is_some() {
            self.dirty.kv.insert(key.to_string());
            self.kv_index = idx;
            self.tombstones.insert(key.to_string(), idx);
            true
        } else {
            false
        }
    }

    /// A KV DELETE. With `cas`, only at that ModifyIndex (Ok(false) otherwise).
    pub fn delete(&mut self, key: &str, recurse: bool, cas: Option<u64>) -> bool {
        if let Some(c) = cas {
            match self.kv.get(key) {
                Some(e) if e.modify_index == c => {}
                // Consul: a key that is not there is deleted already.
                None => return true,
                _ => return false,
            }
        }
        let keys: Vec<String> = if recurse {
            self.under(key).map(|(k, _)| k.clone()).collect()
        } else {
            vec![key.to_string()]
        };
        if keys.iter().all(|k| !self.kv.contains_key(k)) {
            return true;
        }
        let idx = self.next_index();
        for k in keys {
            self.write_delete(&k, idx);
        }
        self.reap_tombstones();
        true
    }

    fn reap_tombstones(&mut self) {
        if self.tombstones.len() <= MAX_TOMBSTONES {
            return;
        }
        let mut by_index: Vec<(u64, String)> = self
            .tombstones
            .iter()
            .map(|(k, i)| (*i, k.clone()))
            .collect();
        by_index.sort();
        let excess = self.tombstones.len() - MAX_TOMBSTONES;
        for (_, k) in by_index.into_iter().take(excess) {
            self.tombstones.remove(&k);
            // So the store drops the row too.
            self.dirty.kv.insert(k);
        }
    }

    /// Runs a transaction atomically: all ops see one index, and any failure changes nothing.
    pub fn txn(&mut self, ops: &[TxnOp], now_ms: u64) -> Result<TxnVerdict, StateError> {
        if ops.len() > MAX_TXN_OPS {
            return Err(StateError::BadRequest(format!(
                "Transaction contains too many operations ({} > {MAX_TXN_OPS})",
                ops.len()
            )));
        }
        let mut scratch = self.clone_for_txn(ops);
        let idx = scratch.index + 1;
        scratch.index = idx;
        let mut results = Vec::new();
        let mut errors = Vec::new();
        let mut wrote = false;
        for (i, op) in ops.iter().enumerate() {
            match scratch.apply_op(op, idx, now_ms) {
                Ok((r, w)) => {
                    wrote |= w;
                    results.push(r);
                }
                Err(what) => errors.push((i, what)),
            }
        }
        if !errors.is_empty() {
            return Ok(Err(errors));
        }
        if wrote {
            self.merge_txn(scratch, ops);
        }
        Ok(Ok(results))
    }

    /// A copy holding what a transaction's ops can touch (the keys and trees they name), so a
    /// transaction costs what it touches, not the store's size.
    fn clone_for_txn(&self, ops: &[TxnOp]) -> State {
        let mut s = State {
            index: self.index,
            kv_index: self.kv_index,
            sessions: self.sessions.clone(),
            ..Default::default()
        };
        for op in ops {
            let (key, tree) = op_key(op);
            let range: Vec<(&String, &Entry)> = if tree {
                self.under(key).collect()
            } else {
                self.kv.get_key_value(key).into_iter().collect()
            };
            for (k, e) in range {
                s.kv.insert(k.clone(), e.clone());
            }
            if let Some(d) = self.lock_delays.get(key) {
                s.lock_delays.insert(key.to_string(), *d);
            }
        }
        s
    }

    fn merge_txn(&mut self, scratch: State, ops: &[TxnOp]) {
        for op in ops {
            let (key, tree) = op_key(op);
            let before: Vec<String> = if tree {
                self.under(key).map(|(k, _)| k.clone()).collect()
            } else {
                vec![key.to_string()]
            };
            for k in before {
                if !scratch.kv.contains_key(&k) && self.kv.remove(&k).is_some() {
                    self.dirty.kv.insert(k.clone());
                    self.tombstones.insert(k, scratch.index);
                }
            }
        }
        for (k, e) in scratch.kv {
            if e.modify_index == scratch.index {
                self.tombstones.remove(&k);
                self.dirty.kv.insert(k.clone());
            }
            self.kv.insert(k, e);
        }
        self.index = scratch.index;
        self.kv_index = scratch.index;
        self.reap_tombstones();
    }

    /// One op on the scratch copy: its result entry and whether it wrote.
    fn apply_op(
        &mut self,
        op: &TxnOp,
        idx: u64,
        now_ms: u64,
    ) -> Result<(Option<(String, Entry)>, bool), TxnOpError> {
        let meta = |s: &State, k: &str| {
            s.kv.get(k).map(|e| {
                (
                    k.to_string(),
                    Entry {
                        value: Vec::new(),
                        ..e.clone()
                    },
                )
            })
        };
        let missing = |k: &str| TxnOpError::Missing(k.to_string());
        match op {
            TxnOp::Set { key, value, flags } => {
                Self::check_value(value)?;
                self.write_set(key, value.clone(), *flags, idx);
                Ok((meta(self, key), true))
            }
            TxnOp::Cas {
                key,
                value,
                flags,
                index,
            } => {
                Self::check_value(value)?;
                let ok = match (self.kv.get(key), *index) {
                    (None, 0) => true,
                    (Some(e), i) => e.modify_index == i,
                    (None, _) => false,
                };
                if !ok {
                    return Err(TxnOpError::StaleSet(key.clone()));
                }
                self.write_set(key, value.clone(), *flags, idx);
                Ok((meta(self, key), true))
            }
            TxnOp::Lock {
                key,
                value,
                flags,
                session,
            } => {
                self.valid_session(session)?;
                if !self.can_lock(key, session, now_ms) {
                    let held = self.kv.get(key).is_some_and(|e| e.session.is_some());
                    return Err(if held {
                        TxnOpError::Held(key.clone())
                    } else {
                        TxnOpError::LockDelay(key.clone())
                    });
                }
                self.write_lock(key, value.clone(), *flags, session, idx);
                Ok((meta(self, key), true))
            }
            TxnOp::Unlock {
                key,
                value,
                flags,
                session,
            } => {
                match self.kv.get(key) {
                    Some(e) if e.session.as_deref() == Some(session.as_str()) => {}
                    _ => return Err(TxnOpError::NotHeld(key.clone())),
                }
                self.write_unlock(key, value.clone(), *flags, idx);
                Ok((meta(self, key), true))
            }
            TxnOp::Get { key } => match self.kv.get(key) {
                Some(e) => Ok((Some((key.clone(), e.clone())), false)),
                None => Err(missing(key)),
            },
            TxnOp::GetTree { .. } => Ok((None, false)),
            TxnOp::CheckIndex { key, index } => match self.kv.get(key) {
                Some(e) if e.modify_index == *index => Ok((meta(self, key), false)),
                Some(e) => Err(TxnOpError::Index {
                    current: e.modify_index,
                    wanted: *index,
                }),
                None => Err(missing(key)),
            },
            TxnOp::CheckSession { key, session } => match self.kv.get(key) {
                Some(e) if e.session.as_deref() == Some(session.as_str()) => {
                    Ok((meta(self, key), false))
                }
                Some(e) => Err(TxnOpError::HeldBy(e.session.clone().unwrap_or_default())),
                None => Err(missing(key)),
            },
            TxnOp::CheckNotExists { key } => match self.kv.get(key) {
                Some(_) => Err(TxnOpError::Exists(key.clone())),
                None => Ok((None, false)),
            },
            TxnOp::Delete { key } => {
                let w = self.write_delete(key, idx);
                Ok((None, w))
            }
            TxnOp::DeleteTree { key } => {
                let keys: Vec<String> = self.under(key).map(|(k, _)| k.clone()).collect();
                let w = !keys.is_empty();
                for k in keys {
                    self.write_delete(&k, idx);
                }
                Ok((None, w))
            }
            TxnOp::DeleteCas { key, index } => match self.kv.get(key) {
                Some(e) if e.modify_index == *index => Ok((None, self.write_delete(key, idx))),
                Some(_) => Err(TxnOpError::StaleDelete(key.clone())),
                // Consul: deleting a key that is not there succeeds.
                None => Ok((None, false)),
            },
        }
    }

    /// Entries of a `get-tree` op, read after the transaction (it never writes).
    pub fn tree(&self, prefix: &str) -> Vec<(String, Entry)> {
        self.list(prefix)
            .1
            .into_iter()
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    }

    /// Creates a session. `ttl` is Consul's duration text; 10s to 24h, or empty.
    pub fn session_create(
        &mut self,
        mut s: Session,
        ttl_secs: Option<u64>,
        ttl_text: &str,
        now_ms: u64,
    ) -> Result<String, StateError> {
        if let Some(t) = ttl_secs {
            if !(10..=86_400).contains(&t) {
                return Err(StateError::BadTtl(ttl_text.to_string()));
            }
            s.ttl_secs = t;
            s.expires_at_ms = now_ms + t * 1000 * TTL_MULTIPLIER;
        }
        let idx = self.next_index();
        self.sessions_index = idx;
        s.create_index = idx;
        let id = s.id.clone();
        self.dirty.sessions.insert(id.clone());
        self.sessions.insert(id.clone(), s);
        Ok(id)
    }

    /// Renews a TTL session; None if it does not exist.
    pub fn session_renew(&mut self, id: &str, now_ms: u64) -> Option<&Session> {
        let s = self.sessions.get_mut(id)?;
        if s.ttl_secs > 0 {
            s.expires_at_ms = now_ms + s.ttl_secs * 1000 * TTL_MULTIPLIER;
        }
        Some(s)
    }

    /// Ends a session: its locks are released or their keys deleted, and each of those keys
    /// enters the session's lock-delay. Returns whether it existed.
    pub fn session_destroy(&mut self, id: &str, now_ms: u64) -> bool {
        let Some(s) = self.sessions.remove(id) else {
            return false;
        };
        self.dirty.sessions.insert(id.to_string());
        let idx = self.next_index();
        self.sessions_index = idx;
        let held: Vec<String> = self
            .kv
            .iter()
            .filter(|(_, e)| e.session.as_deref() == Some(id))
            .map(|(k, _)| k.clone())
            .collect();
        for k in held {
            if s.lock_delay_ms > 0 {
                self.lock_delays.insert(k.clone(), now_ms + s.lock_delay_ms);
            }
            match s.behavior {
                Behavior::Release => {
                    if let Some(e) = self.kv.get_mut(&k) {
                        e.session = None;
                        e.modify_index = idx;
                        self.kv_index = idx;
                        self.dirty.kv.insert(k.clone());
                    }
                }
                Behavior::Delete => {
                    self.write_delete(&k, idx);
                }
            }
        }
        self.lock_delays.retain(|_, until| *until > now_ms);
        true
    }

    /// Invalidates TTL sessions past their time. Returns the IDs ended.
    pub fn expire_sessions(&mut self, now_ms: u64) -> Vec<String> {
        let expired: Vec<String> = self
            .sessions
            .values()
            .filter(|s| s.expires_at_ms > 0 && s.expires_at_ms <= now_ms)
            .map(|s| s.id.clone())
            .collect();
        for id in &expired {
            self.session_destroy(id, now_ms);
        }
        expired
    }

    /// Registers (or replaces) a service on the agent, with its checks (earlier ones go, but a
    /// maintenance check stays, as in Consul).
    pub fn service_register(
        &mut self,
        id: &str,
        reg: serde_json::Value,
        checks: Vec<Check>,
        now_ms: u64,
    ) {
        let maint = self.checks.remove(&service_maintenance_id(id));
        self.drop_service_checks(id, now_ms);
        if let Some(m) = maint {
            self.checks.insert(m.id.clone(), m);
        }
        let idx = self.next_index();
        self.catalog_index = idx;
        self.services.insert(id.to_string(), reg);
        self.dirty.services.insert(id.to_string());
        for c in checks {
            self.check_register(c, now_ms);
        }
    }

    /// Deregisters a service and its checks; false if it was not there.
    pub fn service_deregister(&mut self, id: &str, now_ms: u64) -> bool {
        self.drop_service_checks(id, now_ms);
        if self.services.remove(id).is_none() {
            return false;
        }
        self.dirty.services.insert(id.to_string());
        let idx = self.next_index();
        self.catalog_index = idx;
        true
    }

    fn drop_service_checks(&mut self, service_id: &str, now_ms: u64) {
        let ids: Vec<String> = self
            .checks
            .values()
            .filter(|c| c.service_id == service_id)
            .map(|c| c.id.clone())
            .collect();
        for c in ids {
            self.check_deregister(&c, now_ms);
        }
    }

    /// Registers (or replaces) a check.
    pub fn check_register(&mut self, mut c: Check, now_ms: u64) {
        c.expires_at_ms = if c.ttl_ms > 0 && c.status != HealthStatus::Critical {
            now_ms.saturating_add(c.ttl_ms)
        } else {
            0
        };
        let idx = self.next_index();
        self.catalog_index = idx;
        self.dirty.checks.insert(c.id.clone());
        self.checks.insert(c.id.clone(), c);
    }

    /// Deregisters a check; false if it was not there. Sessions naming it end, as in Consul.
    pub fn check_deregister(&mut self, id: &str, now_ms: u64) -> bool {
        if self.checks.remove(id).is_none() {
            return false;
        }
        self.dirty.checks.insert(id.to_string());
        let idx = self.next_index();
        self.catalog_index = idx;
        self.invalidate_sessions_naming(id, now_ms);
        true
    }

    /// Sets a check's status; a TTL update resets its timer. Only a real change takes an index
    /// (a heartbeat with the same status wakes nobody). A check going critical invalidates the
    /// sessions that name it. False if the check does not exist.
    pub fn check_update(
        &mut self,
        id: &str,
        status: HealthStatus,
        output: Option<String>,
        now_ms: u64,
    ) -> bool {
        let Some(c) = self.checks.get_mut(id) else {
            return false;
        };
        let changed = c.status != status || output.as_ref().is_some_and(|o| *o != c.output);
        c.status = status;
        if let Some(o) = output {
            c.output = o;
        }
        // A critical check has nothing left to expire.
        c.expires_at_ms = if c.ttl_ms > 0 && status != HealthStatus::Critical {
            now_ms.saturating_add(c.ttl_ms)
        } else {
            0
        };
        if changed {
            let idx = self.next_index();
            self.catalog_index = idx;
            self.dirty.checks.insert(id.to_string());
        }
        if status == HealthStatus::Critical {
            self.invalidate_sessions_naming(id, now_ms);
        }
        true
    }

    /// Invalidates every session that names `check` (it went critical). Returns the IDs ended.
    pub fn invalidate_sessions_naming(&mut self, check: &str, now_ms: u64) -> Vec<String> {
        let ids: Vec<String> = self
            .sessions
            .values()
            .filter(|s| s.checks.iter().any(|c| c == check))
            .map(|s| s.id.clone())
            .collect();
        for id in &ids {
            self.session_destroy(id, now_ms);
        }
        ids
    }

    /// TTL checks past their time go critical, with Consul's output.
    pub fn expire_checks(&mut self, now_ms: u64) -> Vec<String> {
        let due: Vec<String> = self
            .checks
            .values()
            .filter(|c| {
                c.expires_at_ms > 0
                    && c.expires_at_ms <= now_ms
                    && c.status != HealthStatus::Critical
            })
            .map(|c| c.id.clone())
            .collect();
        for id in &due {
            self.check_update(
                id,
                HealthStatus::Critical,
                Some("TTL expired".into()),
                now_ms,
            );
        }
        due
    }

    /// Node maintenance mode, as Consul's agent keeps it: a critical check `_node_maintenance`
    /// whose notes hold the reason. Enabling it twice keeps the first reason.
    pub fn node_maintenance(&mut self, enable: bool, reason: &str, now_ms: u64) {
        if !enable {
            self.check_deregister(NODE_MAINTENANCE, now_ms);
            return;
        }
        if self.checks.contains_key(NODE_MAINTENANCE) {
            return;
        }
        let notes = if reason.is_empty() {
            "Maintenance mode is enabled for this node, but no reason was provided. This is a default message."
        } else {
            reason
        };
        self.check_register(
            maintenance_check(NODE_MAINTENANCE, "Node Maintenance Mode", notes, "", ""),
            now_ms,
        );
    }

    /// Service maintenance mode: a critical check `_service_maintenance:<id>` tied to the
    /// service. NotFound (Consul's 404 text) for a service that is not registered.
    pub fn service_maintenance(
        &mut self,
        service_id: &str,
        enable: bool,
        reason: &str,
        now_ms: u64,
    ) -> Result<(), StateError> {
        let Some(reg) = self.services.get(service_id) else {
            return Err(StateError::NotFound(format!(
                "No service registered with ID {service_id:?}"
            )));
        };
        let name = reg
            .get("Name")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_string();
        let id = service_maintenance_id(service_id);
        if !enable {
            self.check_deregister(&id, now_ms);
            return Ok(());
        }
        if self.checks.contains_key(&id) {
            return Ok(());
        }
        let notes = if reason.is_empty() {
            "Maintenance mode is enabled for this service, but no reason was provided. This is a default message."
        } else {
            reason
        };
        self.check_register(
            maintenance_check(&id, "Service Maintenance Mode", notes, service_id, &name),
            now_ms,
        );
        Ok(())
    }

    /// Records a user event; the oldest go beyond `MAX_EVENTS`.
    pub fn event_fire(&mut self, id: &str, name: &str, payload: Vec<u8>) -> UserEvent {
        let ltime = self.events.last().map(|e| e.ltime + 1).unwrap_or(1);
        let ev = UserEvent {
            id: id.to_string(),
            name: name.to_string(),
            payload,
            ltime,
        };
        self.events.push(ev.clone());
        if self.events.len() > MAX_EVENTS {
            self.events.remove(0);
        }
        ev
    }

    /// The earliest instant a TTL session or a TTL check expires, for the expiry timer.
    pub fn next_expiry(&self) -> Option<u64> {
        self.sessions
            .values()
            .map(|s| s.expires_at_ms)
            .chain(self.checks.values().map(|c| c.expires_at_ms))
            .filter(|t| *t > 0)
            .min()
    }
}

/// Consul's check ID for node maintenance mode.
pub const NODE_MAINTENANCE: &str = "_node_maintenance";
/// Prefix of Consul's check IDs for service maintenance mode.
pub const SERVICE_MAINTENANCE_PREFIX: &str = "_service_maintenance:";

/// The maintenance check ID of a service.
pub fn service_maintenance_id(service_id: &str) -> String {
    format!("{SERVICE_MAINTENANCE_PREFIX}{service_id}")
}

/// Whether a check ID is one of Consul's maintenance checks.
pub fn is_maintenance(check_id: &str) -> bool {
    check_id == NODE_MAINTENANCE || check_id.starts_with(SERVICE_MAINTENANCE_PREFIX)
}

fn maintenance_check(id: &str, name: &str, notes: &str, service_id: &str, service: &str) -> Check {
    Check {
        id: id.to_string(),
        name: name.to_string(),
        status: HealthStatus::Critical,
        notes: notes.to_string(),
        output: String::new(),
        service_id: service_id.to_string(),
        service_name: service.to_string(),
        ttl_ms: 0,
        expires_at_ms: 0,
        probe: None,
    }
}

/// The key an op names, and whether it names a whole tree.
fn op_key(op: &TxnOp) -> (&str, bool) {
    match op {
        TxnOp::Set { key, .. }
        | TxnOp::Cas { key, .. }
        | TxnOp::Lock { key, .. }
        | TxnOp::Unlock { key, .. }
        | TxnOp::Get { key }
        | TxnOp::CheckIndex { key, .. }
        | TxnOp::CheckSession { key, .. }
        | TxnOp::CheckNotExists { key }
        | TxnOp::Delete { key }
        | TxnOp::DeleteCas { key, .. } => (key, false),
        TxnOp::GetTree { key } | TxnOp::DeleteTree { key } => (key, true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn session(id: &str, behavior: Behavior, lock_delay_ms: u64) -> Session {
        Session {
            id: id.into(),
            name: String::new(),
            node: "n".into(),
            checks: vec!["serfHealth".into()],
            ttl_secs: 0,
            behavior,
            lock_delay_ms,
            create_index: 0,
            expires_at_ms: 0,
        }
    }

    fn put(s: &mut State, k: &str, v: &str) -> bool {
        s.put(k, v.as_bytes().to_vec(), &PutOptions::default(), 0)
            .unwrap()
    }

    #[test]
    fn cas_zero_means_absent_only() {
        let mut s = State::default();
        let o = PutOptions {
            cas: Some(0),
            ..Default::default()
        };
        assert!(s.put("a", b"1".to_vec(), &o, 0).unwrap());
        assert!(!s.put("a", b"2".to_vec(), &o, 0).unwrap());
        let mi = s.get("a").unwrap().modify_index;
        assert!(s
            .put(
                "a",
                b"3".to_vec(),
                &PutOptions {
                    cas: Some(mi),
                    ..Default::default()
                },
                0
            )
            .unwrap());
        assert_eq!(s.get("a").unwrap().value, b"3");
        assert_eq!(s.get("a").unwrap().create_index, mi);
    }

    #[test]
    fn acquire_by_a_second_session_fails_and_lock_delay_holds_after_invalidation() {
        let mut s = State::default();
        s.session_create(session("s1", Behavior::Release, 1000), None, "", 0)
            .unwrap();
        s.session_create(session("s2", Behavior::Release, 0), None, "", 0)
            .unwrap();
        let acq = |id: &str| PutOptions {
            acquire: Some(id.into()),
            ..Default::default()
        };
        assert!(s.put("l", b"x".to_vec(), &acq("s1"), 0).unwrap());
        assert_eq!(s.get("l").unwrap().lock_index, 1);
        assert!(!s.put("l", b"y".to_vec(), &acq("s2"), 0).unwrap());
        // Re-acquire by the holder updates the value without counting a new lock.
        assert!(s.put("l", b"z".to_vec(), &acq("s1"), 0).unwrap());
        assert_eq!(s.get("l").unwrap().lock_index, 1);
        assert!(s.session_destroy("s1", 5_000));
        assert_eq!(s.get("l").unwrap().session, None);
        assert!(
            !s.put("l", b"y".to_vec(), &acq("s2"), 5_500).unwrap(),
            "lock-delay"
        );
        assert!(s.put("l", b"y".to_vec(), &acq("s2"), 6_000).unwrap());
        assert_eq!(s.get("l").unwrap().lock_index, 2);
        assert_eq!(
            s.put("l", vec![], &acq("nope"), 0),
            Err(StateError::InvalidSession("nope".into()))
        );
        assert!(matches!(
            s.put(
                "l",
                vec![],
                &PutOptions {
                    acquire: Some("s2".into()),
                    cas: Some(1),
                    ..Default::default()
                },
                0
            ),
            Err(StateError::BadRequest(_))
        ));
    }

    #[test]
    fn behavior_delete_removes_held_keys() {
        let mut s = State::default();
        s.session_create(session("d", Behavior::Delete, 0), None, "", 0)
            .unwrap();
        assert!(s
            .put(
                "r",
                b"1".to_vec(),
                &PutOptions {
                    acquire: Some("d".into()),
                    ..Default::default()
                },
                0
            )
            .unwrap());
        s.session_destroy("d", 0);
        assert!(s.get("r").is_none());
    }

    #[test]
    fn deleting_the_newest_key_keeps_the_list_index_from_going_back() {
        let mut s = State::default();
        put(&mut s, "p/a", "1");
        put(&mut s, "p/b", "2");
        let (i1, _) = s.list("p/");
        s.delete("p/b", false, None);
        let (i2, entries) = s.list("p/");
        assert_eq!(entries.len(), 1);
        assert!(i2 > i1, "{i2} > {i1}");
        // An untouched prefix keeps its index.
        put(&mut s, "q/x", "1");
        let (iq, _) = s.list("q/");
        put(&mut s, "other", "1");
        assert_eq!(s.list("q/").0, iq);
    }

    #[test]
    fn keys_fold_at_the_separator() {
        let mut s = State::default();
        for k in ["t/a/1", "t/a/2", "t/b", "t/c/d/e"] {
            put(&mut s, k, "v");
        }
        assert_eq!(s.keys("t/", Some("/")).1, vec!["t/a/", "t/b", "t/c/"]);
        assert_eq!(s.keys("t/", None).1.len(), 4);
    }

    #[test]
    fn txn_is_all_or_nothing_with_one_index() {
        let mut s = State::default();
        s.session_create(session("s", Behavior::Release, 0), None, "", 0)
            .unwrap();
        put(&mut s, "j", "job");
        let mi = s.get("j").unwrap().modify_index;
        let ok = s
            .txn(
                &[
                    TxnOp::CheckIndex {
                        key: "j".into(),
                        index: mi,
                    },
                    TxnOp::Lock {
                        key: "j".into(),
                        value: b"job".to_vec(),
                        flags: 9,
                        session: "s".into(),
                    },
                    TxnOp::Set {
                        key: "r".into(),
                        value: b"x".to_vec(),
                        flags: 0,
                    },
                ],
                0,
            )
            .unwrap()
            .unwrap();
        assert_eq!(ok[1].as_ref().unwrap().1.lock_index, 1);
        assert_eq!(
            s.get("j").unwrap().modify_index,
            s.get("r").unwrap().modify_index
        );
        let before = s.clone();
        let bad = s
            .txn(
                &[
                    TxnOp::Set {
                        key: "z".into(),
                        value: vec![],
                        flags: 0,
                    },
                    TxnOp::CheckIndex {
                        key: "missing".into(),
                        index: 1,
                    },
                ],
                0,
            )
            .unwrap();
        assert_eq!(bad.unwrap_err()[0].0, 1);
        assert_eq!(s, before, "a failed transaction changes nothing");
        let done = s
            .txn(
                &[
                    TxnOp::CheckSession {
                        key: "j".into(),
                        session: "s".into(),
                    },
                    TxnOp::Set {
                        key: "res".into(),
                        value: b"ok".to_vec(),
                        flags: 0,
                    },
                    TxnOp::Delete { key: "j".into() },
                ],
                0,
            )
            .unwrap();
        assert!(done.is_ok());
        assert!(s.get("j").is_none());
        assert!(s.tombstones.contains_key("j"));
        assert!(s.txn(&vec![TxnOp::Get { key: "x".into() }; 65], 0).is_err());
    }

    #[test]
    fn ttl_sessions_expire_after_twice_their_ttl() {
        let mut s = State::default();
        assert!(matches!(
            s.session_create(session("t", Behavior::Release, 0), Some(5), "5s", 0),
            Err(StateError::BadTtl(_))
        ));
        s.session_create(session("t", Behavior::Release, 0), Some(10), "10s", 0)
            .unwrap();
        assert!(s.expire_sessions(19_999).is_empty());
        s.session_renew("t", 10_000);
        assert!(s.expire_sessions(29_999).is_empty());
        assert_eq!(s.expire_sessions(30_000), vec!["t"]);
        assert!(s.session_renew("t", 0).is_none());
    }

    #[test]
    fn a_ttl_check_going_critical_invalidates_sessions_that_name_it() {
        let mut s = State::default();
        let c = Check {
            id: "svc-ttl".into(),
            name: "ttl".into(),
            status: HealthStatus::Passing,
            notes: String::new(),
            output: String::new(),
            service_id: "svc".into(),
            service_name: "svc".into(),
            ttl_ms: 10_000,
            expires_at_ms: 0,
            probe: None,
        };
        s.check_register(c, 0);
        let mut sess = session("s", Behavior::Release, 0);
        sess.checks = vec!["serfHealth".into(), "svc-ttl".into()];
        s.session_create(sess, None, "", 0).unwrap();
        s.put(
            "k",
            b"v".to_vec(),
            &PutOptions {
                acquire: Some("s".into()),
                ..Default::default()
            },
            0,
        )
        .unwrap();
        assert!(s.expire_checks(9_999).is_empty());
        assert!(s.check_update("svc-ttl", HealthStatus::Passing, None, 5_000));
        assert!(
            s.expire_checks(14_999).is_empty(),
            "an update resets the TTL"
        );
        assert_eq!(s.expire_checks(15_000), vec!["svc-ttl"]);
        assert_eq!(s.checks["svc-ttl"].status, "critical");
        assert!(s.sessions.is_empty());
        assert_eq!(s.get("k").unwrap().session, None);
    }

    #[test]
    fn release_by_a_gone_session_is_false_and_deregistering_a_check_ends_its_sessions() {
        let mut s = State::default();
        assert_eq!(
            s.put(
                "k",
                vec![],
                &PutOptions {
                    release: Some("gone".into()),
                    ..Default::default()
                },
                0
            ),
            Ok(false)
        );
        let c = Check {
            id: "c".into(),
            name: "c".into(),
            status: HealthStatus::Passing,
            notes: String::new(),
            output: String::new(),
            service_id: String::new(),
            service_name: String::new(),
            ttl_ms: 0,
            expires_at_ms: 0,
            probe: None,
        };
        s.check_register(c, 0);
        let mut sess = session("s", Behavior::Release, 0);
        sess.checks = vec!["c".into()];
        s.session_create(sess, None, "", 0).unwrap();
        assert!(s.check_deregister("c", 0));
        assert!(s.sessions.is_empty());
        // A delete with cas of a key that is not there succeeds, as in Consul.
        assert!(s.delete("nothing", false, Some(5)));
    }

    #[test]
    fn a_critical_ttl_check_has_nothing_to_expire_and_heartbeats_take_no_index() {
        let mut s = State::default();
        let c = Check {
            id: "t".into(),
            name: "t".into(),
            status: HealthStatus::Critical,
            notes: String::new(),
            output: String::new(),
            service_id: String::new(),
            service_name: String::new(),
            ttl_ms: 1000,
            expires_at_ms: 0,
            probe: None,
        };
        s.check_register(c, 0);
        assert_eq!(s.next_expiry(), None);
        s.check_update("t", HealthStatus::Passing, None, 0);
        assert_eq!(s.next_expiry(), Some(1000));
        let idx = s.catalog_index;
        s.check_update("t", HealthStatus::Passing, None, 500);
        assert_eq!(
            s.catalog_index, idx,
            "a heartbeat with no change takes no index"
        );
        assert_eq!(s.next_expiry(), Some(1500));
    }

    #[test]
    fn maintenance_checks_follow_consul() {
        let mut s = State::default();
        s.node_maintenance(true, "disk swap", 0);
        s.node_maintenance(true, "second reason", 0);
        assert_eq!(
            s.checks[NODE_MAINTENANCE].notes, "disk swap",
            "first reason kept"
        );
        assert_eq!(s.checks[NODE_MAINTENANCE].status, "critical");
        s.node_maintenance(false, "", 0);
        assert!(s.checks.is_empty());
        s.node_maintenance(true, "", 0);
        assert!(s.checks[NODE_MAINTENANCE]
            .notes
            .contains("no reason was provided"));
        assert!(matches!(
            s.service_maintenance("web1", true, "x", 0),
            Err(StateError::NotFound(m)) if m == "No service registered with ID \"web1\""
        ));
        let reg = serde_json::json!({"Name": "web"});
        s.service_register("web1", reg.clone(), vec![], 0);
        s.service_maintenance("web1", true, "upgrade", 0).unwrap();
        let id = service_maintenance_id("web1");
        assert_eq!(
            (
                s.checks[&id].service_name.as_str(),
                s.checks[&id].notes.as_str()
            ),
            ("web", "upgrade")
        );
        // Registering the service again keeps its maintenance; deregistering ends it.
        s.service_register("web1", reg, vec![], 0);
        assert!(s.checks.contains_key(&id));
        s.service_deregister("web1", 0);
        assert!(!s.checks.contains_key(&id));
        assert!(is_maintenance(NODE_MAINTENANCE) && is_maintenance(&id) && !is_maintenance("x"));
    }

    #[test]
    fn session_reads_move_only_with_sessions() {
        let mut s = State::default();
        s.session_create(session("a", Behavior::Release, 0), None, "", 0)
            .unwrap();
        let i = s.sessions_index;
        put(&mut s, "k", "v");
        s.session_renew("a", 1);
        assert_eq!(
            s.sessions_index, i,
            "KV writes and renewals do not wake session readers"
        );
        s.session_destroy("a", 2);
        assert!(s.sessions_index > i);
    }

    #[test]
    fn value_limit() {
        let mut s = State::default();
        assert_eq!(
            s.put(
                "big",
                vec![0; MAX_VALUE_BYTES + 1],
                &PutOptions::default(),
                0
            ),
            Err(StateError::TooLarge)
        );
        assert!(s
            .put("ok", vec![0; MAX_VALUE_BYTES], &PutOptions::default(), 0)
            .unwrap());
    }

    proptest! {
        /// Indexes never go backwards for any prefix, whatever the writes and deletes.
        #[test]
        fn list_index_is_monotonic(ops in proptest::collection::vec((0u8..3, "[ab]/[xyz]"), 1..60)) {
            let mut s = State::default();
            let mut last: BTreeMap<&str, u64> = BTreeMap::new();
            for (op, key) in &ops {
                match op {
                    0 => { s.put(key, b"v".to_vec(), &PutOptions::default(), 0).unwrap(); }
                    1 => { s.delete(key, false, None); }
                    _ => { s.delete(&key[..2], true, None); }
                }
                for p in ["a/", "b/", ""] {
                    let (i, _) = s.list(p);
                    let prev = last.insert(p, i).unwrap_or(0);
                    prop_assert!(i >= prev, "prefix {p}: {i} < {prev}");
                }
            }
        }
    }
}
