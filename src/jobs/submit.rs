//! Queueing a job: the one way the CLI (`servant start`) and the dashboard write a job. One
//! target is a put with check-and-set 0; several (`--all`) are transactions of check-not-exists
//! and set, so an ID already queued anywhere refuses the whole submission, never half of it.

use crate::consul::{Client, ConsulError, KvPutOptions, TxnOp, TxnOutcome};
use crate::wire::{JobKey, Namespace, TxnKvOp};

/// Keys per transaction: two operations each, under Consul's 64.
const PER_TXN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("job {id} is already queued at {key}; choose another ID")]
    Exists { id: String, key: String },
    #[error("job {id} is already queued on some node: {why}")]
    ExistsSomewhere { id: String, why: String },
    #[error(transparent)]
    Consul(#[from] ConsulError),
}

/// A fresh job ID: 12 hex digits.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// Writes `body` at the key of every target; none may exist yet.
pub async fn enqueue(
    client: &Client,
    layout: &Namespace,
    id: &str,
    body: &[u8],
    targets: &[JobKey],
) -> Result<(), SubmitError> {
    if let [one] = targets {
        let key = layout.job_key(one);
        let opts = KvPutOptions {
            cas: Some(0),
            ..Default::default()
        };
        if !client.kv_put(&key, body, &opts).await? {
            return Err(SubmitError::Exists {
                id: id.to_string(),
                key,
            });
        }
        return Ok(());
    }
    for chunk in targets.chunks(PER_TXN) {
        let mut ops = Vec::new();
        for t in chunk {
            let key = layout.job_key(t);
            ops.push(TxnOp::Kv(TxnKvOp::CheckNotExists { key: key.clone() }));
            ops.push(TxnOp::Kv(TxnKvOp::Set {
                key,
                value: body.to_vec(),
                flags: 0,
            }));
        }
        if let TxnOutcome::RolledBack(errs) = client.txn(&ops).await? {
            return Err(SubmitError::ExistsSomewhere {
                id: id.to_string(),
                why: errs
                    .iter()
                    .map(|e| e.what.clone())
                    .collect::<Vec<_>>()
                    .join("; "),
            });
        }
    }
    Ok(())
}
