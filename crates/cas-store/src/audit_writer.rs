//! Group commit of audit records: callers on many threads append, one thread writes, and the
//! appends that arrive together share one durable transaction.
//!
//! Every transaction of the vault ends with an fsync, so one transaction per caller would cap
//! a busy CAS (every attestation records its outcome) at the disk's sync rate. Sharing the
//! sync lets throughput grow with concurrency, while each caller still waits until its own
//! records are on disk: nothing is answered before it is recorded.

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};

use serde_json::Value;

use crate::{StoreError, Vault};

/// One audit entry to append: what [`Vault::audit_append`] takes, as a value that can wait in a
/// queue. Every field is stored **in clear**: names, hashes and reasons, never secrets.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// What happened (`attest-ok`, `attest-fail`, ...); not empty.
    pub kind: String,
    /// Who did it (`operator`, `workload:<tee>`, a client key).
    pub actor: String,
    /// What it was done to (a session, `session#service`, ...).
    pub subject: String,
    /// Details of the event.
    pub detail: Value,
}

/// Why records given to [`AuditWriter::append`] were not committed. Nothing of a failed
/// append is in the log: its records roll back with the batch they were in.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AuditWriteError {
    /// The writer thread is gone (it ends only if it panicked).
    #[error("audit writer stopped")]
    Stopped,
    /// The batch's transaction failed (sealed vault, disk or database failure); every append
    /// in the batch gets the same error.
    #[error(transparent)]
    Store(Arc<StoreError>),
}

/// Most appends one transaction takes: a steady stream of appends still commits regularly
/// instead of growing one transaction, and so one wait, without bound.
const MAX_BATCH: usize = 256;

/// One caller's records and where its outcome goes.
struct Append {
    records: Vec<AuditRecord>,
    outcome: SyncSender<Result<(), AuditWriteError>>,
}

/// Appends audit records to a vault by group commit (see the module documentation). The
/// writer thread lives as long as this value.
pub struct AuditWriter {
    queue: Sender<Append>,
}

impl AuditWriter {
    /// Starts the writer thread for `vault`.
    pub fn start(vault: Arc<Vault>) -> Self {
        let (queue, appends) = mpsc::channel::<Append>();
        std::thread::spawn(move || write_batches(&vault, &appends));
        Self { queue }
    }

    /// Appends `records` durably, in this order and next to each other, in a transaction
    /// shared with concurrent appends; blocks until it is committed. Either all of them are in
    /// the log or none.
    pub fn append(&self, records: Vec<AuditRecord>) -> Result<(), AuditWriteError> {
        let (outcome, wait) = mpsc::sync_channel(1);
        self.queue
            .send(Append { records, outcome })
            .map_err(|_| AuditWriteError::Stopped)?;
        wait.recv().map_err(|_| AuditWriteError::Stopped)?
    }
}

/// The writer thread: takes what is waiting (up to [`MAX_BATCH`]), commits it in one
/// transaction and tells every caller of the batch the outcome. Ends when the [`AuditWriter`]
/// is dropped.
fn write_batches(vault: &Vault, appends: &Receiver<Append>) {
    while let Ok(first) = appends.recv() {
        let mut batch = vec![first];
        while let Ok(more) = appends.try_recv() {
            batch.push(more);
            if batch.len() >= MAX_BATCH {
                break;
            }
        }
        let written = vault.write(|txn| {
            for append in &batch {
                for record in &append.records {
                    txn.audit_append(
                        &record.kind,
                        &record.actor,
                        &record.subject,
                        record.detail.clone(),
                    )?;
                }
            }
            Ok(())
        });
        let outcome = written.map_err(|e| AuditWriteError::Store(Arc::new(e)));
        for append in batch {
            let _ = append.outcome.send(outcome.clone());
        }
    }
}
