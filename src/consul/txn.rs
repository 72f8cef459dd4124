//! `/v1/txn`: atomic KV operations (at most 64 per transaction).

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::client::{Client, ConsulError};
use super::kv::KvPair;

pub use crate::wire::TxnKvOp;

/// A transaction operation; only KV ops are used by the product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    Kv(TxnKvOp),
}

impl TxnOp {
    fn to_json(&self) -> Value {
        let b64 = |v: &[u8]| base64::engine::general_purpose::STANDARD.encode(v);
        let TxnOp::Kv(op) = self;
        let kv = match op {
            TxnKvOp::Set { key, value, flags } => {
                json!({"Verb": "set", "Key": key, "Value": b64(value), "Flags": flags})
            }
            TxnKvOp::Cas {
                key,
                value,
                flags,
                index,
            } => {
                json!({"Verb": "cas", "Key": key, "Value": b64(value), "Flags": flags, "Index": index})
            }
            TxnKvOp::Lock {
                key,
                value,
                flags,
                session,
            } => {
                json!({"Verb": "lock", "Key": key, "Value": b64(value), "Flags": flags, "Session": session})
            }
            TxnKvOp::Unlock {
                key,
                value,
                flags,
                session,
            } => {
                json!({"Verb": "unlock", "Key": key, "Value": b64(value), "Flags": flags, "Session": session})
            }
            TxnKvOp::Get { key } => json!({"Verb": "get", "Key": key}),
            TxnKvOp::GetTree { key } => json!({"Verb": "get-tree", "Key": key}),
            TxnKvOp::CheckIndex { key, index } => {
                json!({"Verb": "check-index", "Key": key, "Index": index})
            }
            TxnKvOp::CheckSession { key, session } => {
                json!({"Verb": "check-session", "Key": key, "Session": session})
            }
            TxnKvOp::CheckNotExists { key } => json!({"Verb": "check-not-exists", "Key": key}),
            TxnKvOp::Delete { key } => json!({"Verb": "delete", "Key": key}),
            TxnKvOp::DeleteTree { key } => json!({"Verb": "delete-tree", "Key": key}),
            TxnKvOp::DeleteCas { key, index } => {
                json!({"Verb": "delete-cas", "Key": key, "Index": index})
            }
        };
        json!({ "KV": kv })
    }
}

/// Why one operation failed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TxnError {
    #[serde(rename = "OpIndex")]
    pub op_index: usize,
    #[serde(rename = "What")]
    pub what: String,
}

/// One result entry; only KV results exist for KV ops.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TxnResult {
    #[serde(rename = "KV")]
    pub kv: Option<KvPair>,
}

/// A transaction either commits with its results or is rolled back with its errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOutcome {
    Committed(Vec<TxnResult>),
    RolledBack(Vec<TxnError>),
}

impl TxnOutcome {
    pub fn committed(&self) -> bool {
        matches!(self, TxnOutcome::Committed(_))
    }
}

#[derive(Deserialize)]
struct Answer {
    #[serde(rename = "Results", default)]
    results: Option<Vec<TxnResult>>,
    #[serde(rename = "Errors", default)]
    errors: Option<Vec<TxnError>>,
}

impl Client {
    /// Runs a transaction. HTTP 409 (rolled back) is an outcome, not an error.
    pub async fn txn(&self, ops: &[TxnOp]) -> Result<TxnOutcome, ConsulError> {
        let path = "/v1/txn";
        let body = Value::Array(ops.iter().map(TxnOp::to_json).collect());
        let r = self.request(reqwest::Method::PUT, path).json(&body);
        let resp = match self.send("PUT", path, r).await {
            Ok(resp) => resp,
            Err(ConsulError::Status {
                status: 409, body, ..
            }) => {
                let a: Answer = serde_json::from_str(&body).map_err(|e| ConsulError::Decode {
                    path: path.into(),
                    detail: e.to_string(),
                })?;
                return Ok(TxnOutcome::RolledBack(a.errors.unwrap_or_default()));
            }
            Err(e) => return Err(e),
        };
        let a: Answer = Client::json(path, &resp)?;
        match a.errors {
            Some(e) if !e.is_empty() => Ok(TxnOutcome::RolledBack(e)),
            _ => Ok(TxnOutcome::Committed(a.results.unwrap_or_default())),
        }
    }
}
