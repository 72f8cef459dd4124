//! Durability of the embedded server. Each batch of writes is one record in the write-ahead
//! log (`wal`), fdatasynced before any write of the batch is answered; a checkpoint copies the
//! rows the log holds into a redb file in one transaction, and the log starts again. Opening
//! loads redb, then replays the log's records that the last checkpoint does not hold.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, TableDefinition};

use super::state::{Check, Dirty, Entry, Session, State};
use super::wal::Wal;
use crate::wire::HealthStatus;

/// A row: (kind, flags, create_index, modify_index, lock_index, session or "", value).
/// Kind `ENTRY` is a key; `TOMBSTONE` a deleted key (modify_index = the deletion's index); the
/// row at `META_KEY` holds the file's random identity in flags and (index, kv_index, last log
/// record checkpointed) in create/modify/lock. One table, so a commit of a small write copies as few pages as possible.
type KvRow = (u8, u64, u64, u64, u64, &'static str, &'static [u8]);
/// A key's row as read back, borrowing its strings.
type KvRowRef<'a> = (u8, u64, u64, u64, u64, &'a str, &'a [u8]);
/// key → its row.
const KV: TableDefinition<&str, KvRow> = TableDefinition::new("kv1");
const ENTRY: u8 = 0;
const TOMBSTONE: u8 = 1;
const META_ROW: u8 = 2;
/// Not a key a client can write: KV keys never start with a NUL here.
const META_KEY: &str = "\u{0}meta";
/// service ID → its registration (Consul's JSON).
const SERVICES: TableDefinition<&str, &str> = TableDefinition::new("services");
/// check ID → the check as JSON.
const CHECKS: TableDefinition<&str, &str> = TableDefinition::new("checks");
/// session ID → the session as JSON.
const SESSIONS: TableDefinition<&str, &str> = TableDefinition::new("sessions");
/// Rows waiting for a checkpoint, at most: bounds the time one checkpoint takes.
const MAX_PENDING: usize = 20_000;

/// Why the data file cannot be used. The file is never emptied to get past one.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the data file {path}: {detail} (it is left as it is; move it away to start empty)")]
    Open { path: String, detail: String },
    #[error("the data file {path} is unreadable: {detail} (it is left as it is; move it away to start empty)")]
    Corrupt { path: String, detail: String },
    #[error("cannot write the data file: {0}")]
    Write(String),
}

/// Why a row of the data file, or a log record, cannot be loaded.
#[derive(Debug, thiserror::Error)]
enum RowError {
    #[error("a log record is malformed")]
    Malformed,
    #[error("a log record has an unknown tag {0}")]
    Tag(u8),
    #[error("row {key:?} has unknown kind {kind}")]
    Kind { key: String, kind: u8 },
    #[error("{what} {id}: {error}")]
    Json {
        what: &'static str,
        id: String,
        error: serde_json::Error,
    },
}

/// The data files: redb and its log.
pub struct Store {
    db: Database,
    wal: Wal,
    /// Rows written to the log since the last checkpoint.
    pending: Dirty,
    /// Number of the last log record.
    seq: u64,
    /// The redb file's identity, kept in its meta row.
    id: u64,
    /// (index, kv_index) as last persisted: a batch that changed nothing writes nothing.
    persisted: (u64, u64),
}

/// The log file beside the redb file.
fn wal_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".wal");
    PathBuf::from(p)
}

impl Store {
    /// Opens (or creates) the files and loads the state they hold. TTL sessions and checks get
    /// a fresh timer (`now_ms`), as after a Consul leader change.
    pub fn open(path: &Path, now_ms: u64) -> Result<(Store, State), StoreError> {
        let shown = path.display().to_string();
        let db = Database::create(path).map_err(|e| StoreError::Open {
            path: shown.clone(),
            detail: e.to_string(),
        })?;
        let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt {
            path: shown.clone(),
            detail: e.to_string(),
        };
        // Make sure the tables exist, so a fresh file reads as empty, and that the file has its
        // identity, which its log's records carry.
        let w = db.begin_write().map_err(|e| corrupt(&e))?;
        {
            let mut kv = w.open_table(KV).map_err(|e| corrupt(&e))?;
            if kv.get(META_KEY).map_err(|e| corrupt(&e))?.is_none() {
                let id = uuid::Uuid::new_v4().as_u64_pair().0;
                kv.insert(META_KEY, (META_ROW, id, 0, 0, 0, "", &[][..]))
                    .map_err(|e| corrupt(&e))?;
            }
            w.open_table(SESSIONS).map_err(|e| corrupt(&e))?;
            w.open_table(SERVICES).map_err(|e| corrupt(&e))?;
            w.open_table(CHECKS).map_err(|e| corrupt(&e))?;
        }
        w.commit().map_err(|e| corrupt(&e))?;
        let mut st = State::default();
        let (mut seq, mut id) = (0, 0);
        let r = db.begin_read().map_err(|e| corrupt(&e))?;
        let kv = r.open_table(KV).map_err(|e| corrupt(&e))?;
        for row in kv.iter().map_err(|e| corrupt(&e))? {
            let (k, v) = row.map_err(|e| corrupt(&e))?;
            let v = v.value();
            if v.0 == META_ROW {
                (id, st.index, st.kv_index, seq) = (v.1, v.2, v.3, v.4);
                continue;
            }
            load_kv(&mut st, k.value(), Some(v)).map_err(|e| corrupt(&e))?;
        }
        let tables = [SESSIONS, SERVICES, CHECKS];
        for (table, def) in tables.into_iter().enumerate() {
            let t = r.open_table(def).map_err(|e| corrupt(&e))?;
            for row in t.iter().map_err(|e| corrupt(&e))? {
                let (k, v) = row.map_err(|e| corrupt(&e))?;
                load_json(&mut st, table as u8, k.value(), Some(v.value()), now_ms)
                    .map_err(|e| corrupt(&e))?;
            }
        }
        drop(r);
        let log = wal_path(path);
        let log_corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt {
            path: log.display().to_string(),
            detail: e.to_string(),
        };
        let (wal, records) = Wal::open(&log, id, seq + 1).map_err(|e| StoreError::Open {
            path: log.display().to_string(),
            detail: e.to_string(),
        })?;
        let mut pending = Dirty::default();
        for rec in &records {
            replay(&mut st, rec, now_ms, &mut pending).map_err(|e| log_corrupt(&e))?;
        }
        seq += records.len() as u64;
        let persisted = (st.index, st.kv_index);
        let mut store = Store {
            db,
            wal,
            pending,
            seq,
            id,
            persisted,
        };
        if !records.is_empty() {
            store.checkpoint(&st)?;
        }
        Ok((store, st))
    }

    /// Writes what changed since the last call and makes it durable.
    pub fn persist(&mut self, st: &mut State) -> Result<(), StoreError> {
        self.write(st)?;
        self.sync_handle()?
            .sync_data()
            .map_err(|e| StoreError::Write(format!("write-ahead log: {e}")))
    }

    /// A handle whose `sync_data` makes every record `write` appended so far durable.
    pub fn sync_handle(&self) -> Result<std::fs::File, StoreError> {
        self.wal
            .sync_handle()
            .map_err(|e| StoreError::Write(format!("write-ahead log: {e}")))
    }

    /// Writes what changed since the last call and clears the change marks: one log record,
    /// durable once the log is synced, or a checkpoint (durable at once) when the record does
    /// not fit the log.
    pub fn write(&mut self, st: &mut State) -> Result<(), StoreError> {
        if st.dirty.is_empty() && self.persisted == (st.index, st.kv_index) {
            return Ok(());
        }
        let payload = encode(st);
        let mut batch = std::mem::take(&mut st.dirty);
        self.pending.absorb(&mut batch);
        if self.wal.fits(payload.len()) {
            self.wal
                .append(self.seq + 1, &payload)
                .map_err(|e| StoreError::Write(format!("write-ahead log: {e}")))?;
            self.seq += 1;
            if self.pending.len() > MAX_PENDING {
                self.checkpoint(st)?;
            }
        } else {
            // Too big for what is left of the log: the checkpoint makes it durable instead.
            self.checkpoint(st)?;
        }
        self.persisted = (st.index, st.kv_index);
        Ok(())
    }

    /// Copies the pending rows into redb in one durable transaction, then starts the log again.
    fn checkpoint(&mut self, st: &State) -> Result<(), StoreError> {
        let err = |e: &dyn std::fmt::Display| StoreError::Write(e.to_string());
        let w = self.db.begin_write().map_err(|e| err(&e))?;
        {
            let mut kv = w.open_table(KV).map_err(|e| err(&e))?;
            for k in &self.pending.kv {
                match (st.kv.get(k), st.tombstones.get(k)) {
                    (Some(e), _) => {
                        kv.insert(
                            k.as_str(),
                            (
                                ENTRY,
                                e.flags,
                                e.create_index,
                                e.modify_index,
                                e.lock_index,
                                e.session.as_deref().unwrap_or(""),
                                e.value.as_slice(),
                            ),
                        )
                        .map_err(|e| err(&e))?;
                    }
                    (None, Some(i)) => {
                        kv.insert(k.as_str(), (TOMBSTONE, 0, 0, *i, 0, "", &[][..]))
                            .map_err(|e| err(&e))?;
                    }
                    (None, None) => {
                        kv.remove(k.as_str()).map_err(|e| err(&e))?;
                    }
                }
            }
            kv.insert(
                META_KEY,
                (
                    META_ROW,
                    self.id,
                    st.index,
                    st.kv_index,
                    self.seq,
                    "",
                    &[][..],
                ),
            )
            .map_err(|e| err(&e))?;
            let mut services = w.open_table(SERVICES).map_err(|e| err(&e))?;
            for id in &self.pending.services {
                match st.services.get(id) {
                    Some(reg) => {
                        services
                            .insert(id.as_str(), reg.to_string().as_str())
                            .map_err(|e| err(&e))?;
                    }
                    None => {
                        services.remove(id.as_str()).map_err(|e| err(&e))?;
                    }
                }
            }
            let mut checks = w.open_table(CHECKS).map_err(|e| err(&e))?;
            for id in &self.pending.checks {
                match st.checks.get(id) {
                    Some(c) => {
                        let json = serde_json::to_string(c).map_err(|e| err(&e))?;
                        checks
                            .insert(id.as_str(), json.as_str())
                            .map_err(|e| err(&e))?;
                    }
                    None => {
                        checks.remove(id.as_str()).map_err(|e| err(&e))?;
                    }
                }
            }
            let mut sessions = w.open_table(SESSIONS).map_err(|e| err(&e))?;
            for id in &self.pending.sessions {
                match st.sessions.get(id) {
                    Some(s) => {
                        let json = serde_json::to_string(s).map_err(|e| err(&e))?;
                        sessions
                            .insert(id.as_str(), json.as_str())
                            .map_err(|e| err(&e))?;
                    }
                    None => {
                        sessions.remove(id.as_str()).map_err(|e| err(&e))?;
                    }
                }
            }
        }
        w.commit().map_err(|e| err(&e))?;
        self.pending = Dirty::default();
        self.wal.reset();
        Ok(())
    }
}

// Log payload: index u64 | kv_index u64 | changes, each `tag u8 | name (u32 length, bytes) |
// body`. Tags: a key (`T_ENTRY` flags, create, modify, lock u64, session bytes, value bytes),
// a tombstone (`T_TOMBSTONE` modify u64), a key gone (`T_GONE`); and for sessions, services
// and checks `T_JSON + table` with the row's JSON, or `T_GONE_JSON + table`.
const T_ENTRY: u8 = 1;
const T_TOMBSTONE: u8 = 2;
const T_GONE: u8 = 3;
const T_JSON: u8 = 10;
const T_GONE_JSON: u8 = 20;
/// Tables of JSON rows, in the order of the tag offsets.
const T_SESSION: u8 = 0;
const T_SERVICE: u8 = 1;
const T_CHECK: u8 = 2;

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// The log record of the state's changed rows.
fn encode(st: &State) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + st.dirty.len() * 64);
    out.extend_from_slice(&st.index.to_le_bytes());
    out.extend_from_slice(&st.kv_index.to_le_bytes());
    for k in &st.dirty.kv {
        match (st.kv.get(k), st.tombstones.get(k)) {
            (Some(e), _) => {
                out.push(T_ENTRY);
                put_bytes(&mut out, k.as_bytes());
                for n in [e.flags, e.create_index, e.modify_index, e.lock_index] {
                    out.extend_from_slice(&n.to_le_bytes());
                }
                put_bytes(&mut out, e.session.as_deref().unwrap_or("").as_bytes());
                put_bytes(&mut out, &e.value);
            }
            (None, Some(i)) => {
                out.push(T_TOMBSTONE);
                put_bytes(&mut out, k.as_bytes());
                out.extend_from_slice(&i.to_le_bytes());
            }
            (None, None) => {
                out.push(T_GONE);
                put_bytes(&mut out, k.as_bytes());
            }
        }
    }
    let mut json = |table: u8, id: &str, row: Option<String>| match row {
        Some(j) => {
            out.push(T_JSON + table);
            put_bytes(&mut out, id.as_bytes());
            put_bytes(&mut out, j.as_bytes());
        }
        None => {
            out.push(T_GONE_JSON + table);
            put_bytes(&mut out, id.as_bytes());
        }
    };
    for id in &st.dirty.sessions {
        let row = st
            .sessions
            .get(id)
            .and_then(|s| serde_json::to_string(s).ok());
        json(T_SESSION, id, row);
    }
    for id in &st.dirty.services {
        json(T_SERVICE, id, st.services.get(id).map(|v| v.to_string()));
    }
    for id in &st.dirty.checks {
        let row = st
            .checks
            .get(id)
            .and_then(|c| serde_json::to_string(c).ok());
        json(T_CHECK, id, row);
    }
    out
}

/// Reads a log payload's fields in order; `None` when it ends early.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u64(&mut self) -> Option<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Some(u64::from_le_bytes(a))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        self.take(u32::from_le_bytes(a) as usize)
    }
    fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }
}

/// Applies one log record to the state and notes its rows in `pending`.
fn replay(st: &mut State, rec: &[u8], now_ms: u64, pending: &mut Dirty) -> Result<(), RowError> {
    let bad = || RowError::Malformed;
    let mut c = Cursor(rec);
    st.index = c.u64().ok_or_else(bad)?;
    st.kv_index = c.u64().ok_or_else(bad)?;
    while let Some(tag) = c.u8() {
        let name = c.str().ok_or_else(bad)?;
        match tag {
            T_ENTRY => {
                let mut n = [0u64; 4];
                for slot in &mut n {
                    *slot = c.u64().ok_or_else(bad)?;
                }
                let session = c.str().ok_or_else(bad)?;
                let value = c.bytes().ok_or_else(bad)?;
                let row = (ENTRY, n[0], n[1], n[2], n[3], session, value);
                load_kv(st, name, Some(row))?;
            }
            T_TOMBSTONE => {
                let i = c.u64().ok_or_else(bad)?;
                load_kv(st, name, Some((TOMBSTONE, 0, 0, i, 0, "", &[])))?;
            }
            T_GONE => load_kv(st, name, None)?,
            t if (T_JSON..T_JSON + 3).contains(&t) => {
                let json = c.str().ok_or_else(bad)?;
                load_json(st, t - T_JSON, name, Some(json), now_ms)?;
            }
            t if (T_GONE_JSON..T_GONE_JSON + 3).contains(&t) => {
                load_json(st, t - T_GONE_JSON, name, None, now_ms)?;
            }
            other => return Err(RowError::Tag(other)),
        }
        match tag {
            T_ENTRY | T_TOMBSTONE | T_GONE => pending.kv.insert(name.to_string()),
            t => match t % 10 {
                T_SESSION => pending.sessions.insert(name.to_string()),
                T_SERVICE => pending.services.insert(name.to_string()),
                _ => pending.checks.insert(name.to_string()),
            },
        };
    }
    Ok(())
}

/// Sets (or with `None` removes) one key's row in the state.
fn load_kv(st: &mut State, key: &str, row: Option<KvRowRef<'_>>) -> Result<(), RowError> {
    st.kv.remove(key);
    st.tombstones.remove(key);
    let Some((kind, flags, create_index, modify_index, lock_index, session, value)) = row else {
        return Ok(());
    };
    match kind {
        ENTRY => {
            st.kv.insert(
                key.to_string(),
                Entry {
                    value: value.to_vec(),
                    flags,
                    create_index,
                    modify_index,
                    lock_index,
                    session: (!session.is_empty()).then(|| session.to_string()),
                },
            );
        }
        TOMBSTONE => {
            st.tombstones.insert(key.to_string(), modify_index);
        }
        other => {
            return Err(RowError::Kind {
                key: key.to_string(),
                kind: other,
            })
        }
    }
    Ok(())
}

/// Sets (or with `None` removes) one session, service or check from its JSON. Timers start
/// again at `now_ms`, as after a Consul agent restart.
fn load_json(
    st: &mut State,
    table: u8,
    id: &str,
    json: Option<&str>,
    now_ms: u64,
) -> Result<(), RowError> {
    let what = ["session", "service", "check"][table.min(2) as usize];
    let Some(json) = json else {
        match table {
            T_SESSION => st.sessions.remove(id).map(|_| ()),
            T_SERVICE => st.services.remove(id).map(|_| ()),
            _ => st.checks.remove(id).map(|_| ()),
        };
        return Ok(());
    };
    let bad = |error| RowError::Json {
        what,
        id: id.to_string(),
        error,
    };
    match table {
        T_SESSION => {
            let mut s: Session = serde_json::from_str(json).map_err(bad)?;
            if s.ttl_secs > 0 {
                s.expires_at_ms = now_ms + s.ttl_secs * 1000 * super::state::TTL_MULTIPLIER;
            }
            st.sessions.insert(s.id.clone(), s);
        }
        T_SERVICE => {
            let reg: serde_json::Value = serde_json::from_str(json).map_err(bad)?;
            st.services.insert(id.to_string(), reg);
        }
        _ => {
            let mut c: Check = serde_json::from_str(json).map_err(bad)?;
            c.expires_at_ms = if c.ttl_ms > 0 && c.status != HealthStatus::Critical {
                now_ms.saturating_add(c.ttl_ms)
            } else {
                0
            };
            st.checks.insert(c.id.clone(), c);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devserver::state::{Behavior, PutOptions};

    #[test]
    fn state_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.redb");
        let (mut store, mut st) = Store::open(&path, 0).unwrap();
        st.put(
            "a/bin",
            vec![0, 1, 255],
            &PutOptions {
                flags: 7,
                ..Default::default()
            },
            0,
        )
        .unwrap();
        let s = Session {
            id: "s1".into(),
            name: "n".into(),
            node: "dev".into(),
            checks: vec![],
            ttl_secs: 10,
            behavior: Behavior::Release,
            lock_delay_ms: 0,
            create_index: 0,
            expires_at_ms: 0,
        };
        st.session_create(s, Some(10), "10s", 0).unwrap();
        st.put(
            "a/lock",
            b"x".to_vec(),
            &PutOptions {
                acquire: Some("s1".into()),
                ..Default::default()
            },
            0,
        )
        .unwrap();
        st.put("gone", b"x".to_vec(), &PutOptions::default(), 0)
            .unwrap();
        store.persist(&mut st).unwrap();
        st.delete("gone", false, None);
        store.persist(&mut st).unwrap();
        drop(store);
        let (_store, back) = Store::open(&path, 1_000).unwrap();
        assert_eq!(back.kv, st.kv);
        assert_eq!(back.index, st.index);
        assert_eq!(back.kv_index, st.kv_index);
        assert_eq!(
            back.sessions["s1"].expires_at_ms, 21_000,
            "a TTL session gets a fresh timer"
        );
        assert!(back.get("gone").is_none());
        assert_eq!(back.tombstones.get("gone"), st.tombstones.get("gone"));
    }

    #[test]
    fn services_and_checks_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.redb");
        let (mut store, mut st) = Store::open(&path, 0).unwrap();
        let c = Check {
            id: "service:web".into(),
            name: "ttl".into(),
            status: HealthStatus::Passing,
            notes: String::new(),
            output: String::new(),
            service_id: "web".into(),
            service_name: "web".into(),
            ttl_ms: 30_000,
            expires_at_ms: 0,
            probe: None,
        };
        st.service_register(
            "web",
            serde_json::json!({"ID": "web", "Name": "web", "Port": 80}),
            vec![c],
            0,
        );
        st.service_register(
            "gone",
            serde_json::json!({"ID": "gone", "Name": "gone"}),
            vec![],
            0,
        );
        store.persist(&mut st).unwrap();
        st.service_deregister("gone", 0);
        store.persist(&mut st).unwrap();
        drop(store);
        let (_s, back) = Store::open(&path, 5_000).unwrap();
        assert_eq!(back.services, st.services);
        assert_eq!(back.checks["service:web"].status, "passing");
        assert_eq!(
            back.checks["service:web"].expires_at_ms, 35_000,
            "TTL timers start again"
        );
        assert!(!back.services.contains_key("gone"));
    }

    /// Files written by the code before check states were typed (commit afeede1): a redb file
    /// whose checkpoint holds four checks, and a log whose one record adds three and turns
    /// `ckpt-warning` passing. The redb file is stored as run-length pairs (count u32 LE, byte),
    /// the log as it was, cut after its record.
    #[test]
    fn checks_written_before_typed_states_still_load() {
        let rle = include_bytes!("fixtures/pre-wire.redb.rle");
        let mut redb = Vec::new();
        for pair in rle.chunks_exact(5) {
            let n = u32::from_le_bytes([pair[0], pair[1], pair[2], pair[3]]) as usize;
            redb.extend(std::iter::repeat_n(pair[4], n));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.redb");
        std::fs::write(&path, &redb).unwrap();
        std::fs::write(
            wal_path(&path),
            include_bytes!("fixtures/pre-wire.redb.wal"),
        )
        .unwrap();
        let (_s, st) = Store::open(&path, 1_000).unwrap();
        let status = |id: &str| st.checks[id].status;
        assert_eq!(st.checks.len(), 7, "{:?}", st.checks.keys());
        // From the checkpoint only.
        assert_eq!(status("ckpt-passing"), "passing");
        assert_eq!(status("ckpt-critical"), "critical");
        assert_eq!(status("ckpt-warning-kept"), "warning");
        // From the log, over the checkpoint.
        assert_eq!(status("ckpt-warning"), "passing");
        assert_eq!(st.checks["ckpt-warning"].output, "now passing");
        // From the log only.
        assert_eq!(status("log-passing"), "passing");
        assert_eq!(status("log-warning"), "warning");
        assert_eq!(status("log-critical"), "critical");
        assert!(st.checks["log-critical"].probe.is_some());
        // TTL timers start again, except for a critical check.
        assert_eq!(st.checks["ckpt-passing"].expires_at_ms, 31_000);
        assert_eq!(st.checks["log-warning"].expires_at_ms, 11_000);
        assert_eq!(st.checks["ckpt-critical"].expires_at_ms, 0);
        // And a check is written as the old code wrote it: its row in that log, byte for byte.
        let mut c = st.checks["log-critical"].clone();
        c.expires_at_ms = 0;
        let row = serde_json::to_string(&c).unwrap();
        assert!(row.contains(r#""status":"critical""#), "{row}");
        let log = include_bytes!("fixtures/pre-wire.redb.wal");
        assert!(log.windows(row.len()).any(|w| w == row.as_bytes()), "{row}");
    }

    #[test]
    fn a_corrupt_file_is_an_error_and_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.redb");
        std::fs::write(&path, b"this is not a database, but it is someone's data").unwrap();
        let e = Store::open(&path, 0).err().expect("refused");
        assert!(e.to_string().contains("dev.redb"), "{e}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"this is not a database, but it is someone's data"
        );
    }

    fn put(st: &mut State, key: &str, value: &[u8]) {
        st.put(key, value.to_vec(), &PutOptions::default(), 0)
            .unwrap();
    }

    #[test]
    fn writes_past_checkpoints_and_log_rounds_all_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.redb");
        let (mut store, mut st) = Store::open(&path, 0).unwrap();
        // Enough rows to force checkpoints by count, and values big enough to fill the log
        // several times over, so records of earlier rounds lie after the live ones.
        let big = vec![7u8; 300 * 1024];
        for i in 0..(MAX_PENDING + 500) {
            put(&mut st, &format!("small/{i}"), b"v");
            if i % 50 == 0 {
                store.persist(&mut st).unwrap();
            }
        }
        for i in 0..120 {
            put(&mut st, &format!("big/{}", i % 7), &big);
            store.persist(&mut st).unwrap();
        }
        st.delete("small/3", false, None);
        put(&mut st, "last", b"after the last checkpoint");
        store.persist(&mut st).unwrap();
        assert!(store.wal.used() > 0, "the last writes are only in the log");
        drop(store);
        let (_s, back) = Store::open(&path, 0).unwrap();
        assert_eq!(back.kv, st.kv);
        assert_eq!(back.tombstones, st.tombstones);
        assert_eq!((back.index, back.kv_index), (st.index, st.kv_index));
    }

    #[test]
    fn a_log_left_beside_another_data_file_is_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.redb");
        let (mut store, mut st) = Store::open(&path, 0).unwrap();
        put(&mut st, "old", b"from the file that was moved away");
        store.persist(&mut st).unwrap();
        drop(store);
        std::fs::rename(&path, dir.path().join("moved.redb")).unwrap();
        let (_s, fresh) = Store::open(&path, 0).unwrap();
        assert!(fresh.kv.is_empty(), "{:?}", fresh.kv);
        assert_eq!(fresh.index, 0);
    }

    #[test]
    fn a_batch_that_changed_nothing_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.redb");
        let (mut store, mut st) = Store::open(&path, 0).unwrap();
        put(&mut st, "k", b"v");
        store.persist(&mut st).unwrap();
        let used = store.wal.used();
        // A failed CAS changes nothing.
        let cas = PutOptions {
            cas: Some(999),
            ..Default::default()
        };
        assert!(!st.put("k", b"w".to_vec(), &cas, 0).unwrap());
        store.persist(&mut st).unwrap();
        assert_eq!(store.wal.used(), used);
    }
}
