//! The documents the product writes to Consul and reads back, as types shared by every writer and
//! reader (agent, CLI, dashboard, embedded server, tests), and the one KV namespace they live
//! in. Pure: no IO. A field renamed here is renamed for everyone; nothing parses these documents
//! field by field with defaults: a document that lacks a field its type needs is a `DocError`.

pub mod applications;
pub mod capacity;
pub mod health;
pub mod job;
pub mod namespace;
pub mod resource;
pub mod schedule;
pub mod service;
pub mod task;
pub mod topology;
pub mod txn;

pub use applications::{AppHealth, AppState, AppStatus, Applications};
pub use capacity::Capacity;
pub use health::HealthStatus;
pub use job::{JobResult, JobStatus, JobView};
pub use namespace::{JobKey, Namespace};
pub use resource::ResourceReport;
pub use schedule::ScheduleReport;
pub use service::{CheckSpec, ServiceSpec};
pub use task::{parse_task, parse_tasks, App, Task, TaskError};
pub use topology::Topology;
pub use txn::TxnKvOp;

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A stored document without its type's shape: not JSON, or a field missing, renamed or of
/// another type. Says which document and where in it.
#[derive(Debug, thiserror::Error)]
#[error("not a {what}: {}{error}", at(path))]
pub struct DocError {
    /// The document's name, e.g. "resource report".
    pub what: &'static str,
    /// Where in the document, e.g. `fs[0].size_bytes` ("." for the whole).
    pub path: String,
    pub error: serde_json::Error,
}

fn at(path: &str) -> String {
    if path.is_empty() || path == "." {
        String::new()
    } else {
        format!("{path}: ")
    }
}

/// Reads a document of type `T` (called `what` in errors).
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, DocError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let doc = serde_path_to_error::deserialize(&mut de).map_err(|e| DocError {
        what,
        path: e.path().to_string(),
        error: e.into_inner(),
    })?;
    // Trailing bytes after the document.
    de.end().map_err(|error| DocError {
        what,
        path: String::new(),
        error,
    })?;
    Ok(doc)
}

/// A document's JSON with its object keys sorted, as the `json!` writers before these types
/// wrote them: the bytes in KV do not change.
pub fn encode<T: Serialize>(doc: &T) -> Vec<u8> {
    serde_json::to_value(doc)
        .and_then(|v| serde_json::to_vec(&v))
        .unwrap_or_default()
}

/// `(key, value)` pairs of a KV listing, as the readers below take them.
pub type KvEntry<'a> = (&'a str, &'a [u8]);

/// The documents of a listing, by name: each key that `name` gives a name is read with `read`,
/// into the readable documents and why the others are not. Other keys are ignored.
fn read_listing<'a, T, E>(
    entries: impl IntoIterator<Item = KvEntry<'a>>,
    name: impl Fn(&'a str) -> Option<&'a str>,
    read: impl Fn(&str, &[u8]) -> Result<T, E>,
) -> (BTreeMap<String, T>, BTreeMap<String, E>) {
    let mut ok = BTreeMap::new();
    let mut bad = BTreeMap::new();
    for (key, value) in entries {
        let Some(name) = name(key) else { continue };
        match read(name, value) {
            Ok(doc) => {
                ok.insert(name.to_string(), doc);
            }
            Err(e) => {
                bad.insert(name.to_string(), e);
            }
        }
    }
    (ok, bad)
}
