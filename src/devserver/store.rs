//! Durability of the embedded server: the state's rows in a redb file, written in one fsynced
//! transaction per batch of writes, before any of those writes is answered.

use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition};

use super::state::{Check, Entry, Session, State};

/// A row: (kind, flags, create_index, modify_index, lock_index, session or "", value).
/// Kind `ENTRY` is a key; `TOMBSTONE` a deleted key (modify_index = the deletion's index); the
/// row at `META_KEY` holds (index, kv_index) in create/modify. One table, so a commit of a
/// small write copies as few pages as possible.
type KvRow = (u8, u64, u64, u64, u64, &'static str, &'static [u8]);
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

/// The data file.
pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (or creates) the file and loads the state it holds. TTL sessions get a fresh timer
    /// (`now_ms`), as after a Consul leader change.
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
        // Make sure the tables exist, so a fresh file reads as empty.
        let w = db.begin_write().map_err(|e| corrupt(&e))?;
        {
            w.open_table(KV).map_err(|e| corrupt(&e))?;
            w.open_table(SESSIONS).map_err(|e| corrupt(&e))?;
            w.open_table(SERVICES).map_err(|e| corrupt(&e))?;
            w.open_table(CHECKS).map_err(|e| corrupt(&e))?;
        }
        w.commit().map_err(|e| corrupt(&e))?;
        let mut st = State::default();
        let r = db.begin_read().map_err(|e| corrupt(&e))?;
        let kv = r.open_table(KV).map_err(|e| corrupt(&e))?;
        for row in kv.iter().map_err(|e| corrupt(&e))? {
            let (k, v) = row.map_err(|e| corrupt(&e))?;
            let (kind, flags, create_index, modify_index, lock_index, session, value) = v.value();
            let key = k.value().to_string();
            match kind {
                ENTRY => {
                    st.kv.insert(
                        key,
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
                    st.tombstones.insert(key, modify_index);
                }
                META_ROW => {
                    st.index = create_index;
                    st.kv_index = modify_index;
                }
                other => return Err(corrupt(&format!("row {key:?} has unknown kind {other}"))),
            }
        }
        let sessions = r.open_table(SESSIONS).map_err(|e| corrupt(&e))?;
        for row in sessions.iter().map_err(|e| corrupt(&e))? {
            let (k, v) = row.map_err(|e| corrupt(&e))?;
            let mut s: Session = serde_json::from_str(v.value())
                .map_err(|e| corrupt(&format!("session {}: {e}", k.value())))?;
            if s.ttl_secs > 0 {
                s.expires_at_ms = now_ms + s.ttl_secs * 1000 * super::state::TTL_MULTIPLIER;
            }
            st.sessions.insert(s.id.clone(), s);
        }
        let services = r.open_table(SERVICES).map_err(|e| corrupt(&e))?;
        for row in services.iter().map_err(|e| corrupt(&e))? {
            let (k, v) = row.map_err(|e| corrupt(&e))?;
            let reg: serde_json::Value = serde_json::from_str(v.value())
                .map_err(|e| corrupt(&format!("service {}: {e}", k.value())))?;
            st.services.insert(k.value().to_string(), reg);
        }
        let checks = r.open_table(CHECKS).map_err(|e| corrupt(&e))?;
        for row in checks.iter().map_err(|e| corrupt(&e))? {
            let (k, v) = row.map_err(|e| corrupt(&e))?;
            let mut c: Check = serde_json::from_str(v.value())
                .map_err(|e| corrupt(&format!("check {}: {e}", k.value())))?;
            // TTL timers start again, as after a Consul agent restart.
            c.expires_at_ms = if c.ttl_ms > 0 && c.status != "critical" {
                now_ms.saturating_add(c.ttl_ms)
            } else {
                0
            };
            st.checks.insert(c.id.clone(), c);
        }
        Ok((Store { db }, st))
    }

    /// Writes what changed since the last call, in one durable transaction, and clears the
    /// change marks.
    pub fn persist(&self, st: &mut State) -> Result<(), StoreError> {
        let err = |e: &dyn std::fmt::Display| StoreError::Write(e.to_string());
        let w = self.db.begin_write().map_err(|e| err(&e))?;
        {
            let mut kv = w.open_table(KV).map_err(|e| err(&e))?;
            for k in &st.dirty_kv {
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
                (META_ROW, 0, st.index, st.kv_index, 0, "", &[][..]),
            )
            .map_err(|e| err(&e))?;
            let mut services = w.open_table(SERVICES).map_err(|e| err(&e))?;
            for id in &st.dirty_services {
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
            for id in &st.dirty_checks {
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
            for id in &st.dirty_sessions {
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
        st.dirty_kv.clear();
        st.dirty_sessions.clear();
        st.dirty_services.clear();
        st.dirty_checks.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devserver::state::{Behavior, PutOptions};

    #[test]
    fn state_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev.redb");
        let (store, mut st) = Store::open(&path, 0).unwrap();
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
        let (store, mut st) = Store::open(&path, 0).unwrap();
        let c = Check {
            id: "service:web".into(),
            name: "ttl".into(),
            status: "passing".into(),
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
}
