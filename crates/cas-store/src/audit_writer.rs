//! Group commit of audit records: callers on many threads append, and the appends that arrive
//! together share one durable transaction.
//!
//! Every transaction of the vault ends with an fsync, so one transaction per caller would cap
//! a busy CAS (every attestation records its outcome) at the disk's sync rate. Sharing the
//! sync lets throughput grow with concurrency, while each caller still waits until its own
//! records are on disk: nothing is answered before it is recorded.
//!
//! Two threads form a pipeline. Each entry is signed, and its hash chains on the entry before
//! it, so entries are made one after another; signing them inside the transaction would add
//! the signing of a whole batch to every wait for the disk. Instead the *signer* thread signs
//! appends as they arrive, chained after the entries already signed, while the *committer*
//! thread commits what was signed before; when a commit ends, everything signed meanwhile goes
//! into the next one. The committer stores entries signed ahead only if they still follow the
//! log's head in its transaction (another writer, such as a session update, may have appended
//! in between); otherwise it signs them afresh there, as a single thread would have.
//!
//! An append may also increment a counter up to a limit ([`AuditWriter::append_counted`]): the
//! increment and the records commit together or not at all, and an append whose counter is at
//! its limit writes nothing (its batch is then signed afresh in the transaction). A commit that
//! moved counters must reach the counter anchor before its callers are answered; a third
//! thread, the *anchorer*, writes the anchor and answers, so the anchor's sync of one commit
//! runs while the next commit syncs (and one anchor write serves every commit that finished
//! while the previous one was written).

use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use serde_json::Value;

use crate::vault::AuditHead;
use crate::{AuditEntry, StoreError, Vault};

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

/// A counter an append increments in the append's transaction, unless it is at `max`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterStep {
    /// The counter's name (stored in clear).
    pub name: String,
    /// The highest value the increment may reach.
    pub max: u64,
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
    /// The append's counter was already at its limit: nothing of the append was written.
    #[error("counter at its limit ({value})")]
    AtLimit {
        /// The counter's value.
        value: u64,
    },
}

/// What an append comes to: the counter's new value, if it stepped one.
type Answer = Result<Option<u64>, AuditWriteError>;

/// Where an append's answer goes: a thread blocked in [`AuditWriter::append`], or a task
/// awaiting [`AuditWriter::append_async`] (which holds no thread while its commit runs).
enum Reply {
    Blocking(SyncSender<Answer>),
    Async(futures_channel::oneshot::Sender<Answer>),
}

impl Reply {
    fn send(self, answer: Answer) {
        // A caller that stopped waiting (its request went away) needs no answer.
        let _ = match self {
            Self::Blocking(to) => to.send(answer).map_err(drop),
            Self::Async(to) => to.send(answer).map_err(drop),
        };
    }
}

/// One caller's records and where its outcome goes.
struct Append {
    records: Vec<AuditRecord>,
    counter: Option<CounterStep>,
    outcome: Reply,
}

/// Appends audit records to a vault by group commit (see the module documentation). The
/// writer threads live as long as this value: dropping it waits for them, so that the vault
/// they hold is released (and can be opened again) when the drop returns.
pub struct AuditWriter {
    queue: Option<Sender<Append>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for AuditWriter {
    fn drop(&mut self) {
        // Closing the queue ends the signer, whose end ends the committer, whose end ends the
        // anchorer.
        self.queue.take();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl AuditWriter {
    /// Starts the writer threads for `vault`.
    pub fn start(vault: Arc<Vault>) -> Self {
        let (queue, appends) = mpsc::channel::<Append>();
        let (anchoring, anchored) = mpsc::channel::<Committed>();
        let pipeline = Arc::new(Pipeline::default());
        let committer = (vault.clone(), pipeline.clone());
        let anchorer = vault.clone();
        let threads = vec![
            std::thread::spawn(move || sign_ahead(&vault, &appends, &pipeline)),
            std::thread::spawn(move || commit_batches(&committer.0, &committer.1, &anchoring)),
            std::thread::spawn(move || answer_once_anchored(&anchorer, &anchored)),
        ];
        Self {
            queue: Some(queue),
            threads,
        }
    }

    /// Appends `records` durably, in this order and next to each other, in a transaction
    /// shared with concurrent appends; blocks until it is committed. Either all of them are in
    /// the log or none.
    pub fn append(&self, records: Vec<AuditRecord>) -> Result<(), AuditWriteError> {
        self.send(records, None).map(|_| ())
    }

    /// Like [`AuditWriter::append`], and increments `counter` in the same transaction: the new
    /// value, or [`AuditWriteError::AtLimit`] (and nothing written) when it is at its `max`.
    pub fn append_counted(
        &self,
        records: Vec<AuditRecord>,
        counter: CounterStep,
    ) -> Result<u64, AuditWriteError> {
        self.send(records, Some(counter))?.ok_or(AuditWriteError::Stopped)
    }

    /// [`AuditWriter::append`] for async callers: the same group commit, awaited without
    /// holding a thread.
    pub fn append_async(
        &self,
        records: Vec<AuditRecord>,
    ) -> impl Future<Output = Result<(), AuditWriteError>> + Send + 'static {
        let answer = self.enqueue_async(records, None);
        async move { answer.await.map(|_| ()) }
    }

    /// [`AuditWriter::append_counted`] for async callers.
    pub fn append_counted_async(
        &self,
        records: Vec<AuditRecord>,
        counter: CounterStep,
    ) -> impl Future<Output = Result<u64, AuditWriteError>> + Send + 'static {
        let answer = self.enqueue_async(records, Some(counter));
        async move { answer.await?.ok_or(AuditWriteError::Stopped) }
    }

    fn enqueue_async(
        &self,
        records: Vec<AuditRecord>,
        counter: Option<CounterStep>,
    ) -> impl Future<Output = Answer> + Send + 'static {
        let (outcome, wait) = futures_channel::oneshot::channel();
        let queued = self.enqueue(Append {
            records,
            counter,
            outcome: Reply::Async(outcome),
        });
        async move {
            queued?;
            wait.await.map_err(|_| AuditWriteError::Stopped)?
        }
    }

    fn send(&self, records: Vec<AuditRecord>, counter: Option<CounterStep>) -> Answer {
        let (outcome, wait) = mpsc::sync_channel(1);
        self.enqueue(Append {
            records,
            counter,
            outcome: Reply::Blocking(outcome),
        })?;
        wait.recv().map_err(|_| AuditWriteError::Stopped)?
    }

    fn enqueue(&self, append: Append) -> Result<(), AuditWriteError> {
        self.queue
            .as_ref()
            .ok_or(AuditWriteError::Stopped)?
            .send(append)
            .map_err(|_| AuditWriteError::Stopped)
    }
}

/// Most appends one batch takes: a steady stream of appends still commits regularly instead of
/// growing one transaction, and so one wait, without bound.
const MAX_BATCH: usize = 256;

/// Appends that arrived together, with their entries if the signer could sign them ahead.
struct Batch {
    appends: Vec<Append>,
    /// Chained after the previous batch's entries, or on the head the committer last reported;
    /// `None` when the signer did not know the head (or signing failed: the committer then
    /// meets the same failure inside its transaction and reports it).
    signed: Option<Vec<AuditEntry>>,
}

/// What the signer hands the committer.
#[derive(Default)]
struct Pipeline {
    state: Mutex<Handover>,
    ready: Condvar,
}

#[derive(Default)]
struct Handover {
    batches: Vec<Batch>,
    /// The head the log will have once `batches` are committed, when known: what the next
    /// batch is signed after.
    tail: Option<AuditHead>,
    /// Bumped whenever the committer resets `tail`, so that a batch signed after a tail that
    /// was withdrawn meanwhile is not handed over as signed.
    generation: u64,
    /// The signer is gone (the writer was dropped): commit what is left, then stop.
    closed: bool,
}

impl Pipeline {
    fn lock(&self) -> MutexGuard<'_, Handover> {
        // Every update is a few assignments and pushes: the state stays consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The signer thread: takes what is waiting (up to [`MAX_BATCH`]), signs it after the known
/// tail and hands it to the committer. Ends when the [`AuditWriter`] is dropped.
fn sign_ahead(vault: &Vault, appends: &Receiver<Append>, pipeline: &Pipeline) {
    while let Ok(first) = appends.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match appends.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let (tail, generation) = {
            let state = pipeline.lock();
            (state.tail.clone(), state.generation)
        };
        let signed = tail.as_ref().and_then(|tail| {
            vault
                .sign_audit_entries(tail, batch.iter().flat_map(|a| &a.records))
                .ok()
        });
        let mut state = pipeline.lock();
        let signed = signed.filter(|_| state.generation == generation);
        state.tail = match &signed {
            Some(entries) => entries
                .last()
                .map(|last| AuditHead {
                    seq: last.seq,
                    hash: last.hash.clone(),
                })
                .or(tail),
            // The head after an unsigned batch is known only once it is committed.
            None => None,
        };
        state.batches.push(Batch {
            appends: batch,
            signed,
        });
        pipeline.ready.notify_one();
    }
    pipeline.lock().closed = true;
    pipeline.ready.notify_one();
}

/// The answers of one commit, waiting for its counter generation (if it moved counters) to
/// reach the anchor.
struct Committed {
    generation: Option<u64>,
    answers: Vec<(Reply, Answer)>,
}

/// The anchorer thread: brings the anchor up to the highest generation committed so far (one
/// write for every commit waiting), then answers their callers; if the anchor cannot be
/// written, they are answered with that failure (their commit stands, unseen by them).
fn answer_once_anchored(vault: &Vault, committed: &Receiver<Committed>) {
    while let Ok(first) = committed.recv() {
        let mut waiting = vec![first];
        while let Ok(more) = committed.try_recv() {
            waiting.push(more);
        }
        let failure = waiting
            .iter()
            .filter_map(|c| c.generation)
            .max()
            .and_then(|generation| vault.anchor_to(generation).err())
            .map(|e| AuditWriteError::Store(Arc::new(e)));
        for (to, result) in waiting.into_iter().flat_map(|c| c.answers) {
            let result = match (&failure, result) {
                (Some(e), Ok(_)) => Err(e.clone()),
                (_, result) => result,
            };
            to.send(result);
        }
    }
}

/// The committer thread: commits every batch handed over since its last commit in one
/// transaction and hands the outcome of every caller to the anchorer.
fn commit_batches(vault: &Vault, pipeline: &Pipeline, anchoring: &Sender<Committed>) {
    loop {
        let batches = {
            let mut state = pipeline.lock();
            while state.batches.is_empty() && !state.closed {
                state = pipeline.ready.wait(state).unwrap_or_else(PoisonError::into_inner);
            }
            if state.batches.is_empty() {
                return;
            }
            std::mem::take(&mut state.batches)
        };
        let written = vault.write_unanchored(|txn| {
            let mut as_signed = true;
            let mut counted = Vec::new();
            for batch in &batches {
                let first = counted.len();
                for append in &batch.appends {
                    counted.push(match &append.counter {
                        None => Ok(None),
                        Some(step) => match txn.counter_increment_up_to(&step.name, step.max)? {
                            Some(value) => Ok(Some(value)),
                            None => Err(txn.counter_get(&step.name)?),
                        },
                    });
                }
                let outcomes = counted.get(first..).unwrap_or_default();
                let stored = match &batch.signed {
                    Some(entries) if outcomes.iter().all(Result::is_ok) => {
                        txn.audit_insert_signed(entries)?
                    }
                    _ => false,
                };
                if !stored {
                    as_signed = false;
                    for (append, outcome) in batch.appends.iter().zip(outcomes) {
                        if outcome.is_err() {
                            continue;
                        }
                        for record in &append.records {
                            txn.audit_append(
                                &record.kind,
                                &record.actor,
                                &record.subject,
                                record.detail.clone(),
                            )?;
                        }
                    }
                }
            }
            Ok((as_signed, txn.audit_head()?, counted))
        });
        // The signer's tail is right only if every batch went in as signed; otherwise start it
        // again from the committed head, if nothing was signed after the wrong one meanwhile
        // (such batches are signed afresh by the next commit, which then resets the tail).
        let (outcome, committed_head, generation) = match written {
            Ok(((true, _, counted), generation)) => (Ok(counted), None, generation),
            Ok(((false, head, counted), generation)) => (Ok(counted), Some(Some(head)), generation),
            Err(e) => (
                Err(AuditWriteError::Store(Arc::new(e))),
                Some(vault.audit_head().ok()),
                None,
            ),
        };
        {
            let mut state = pipeline.lock();
            if let Some(head) = committed_head {
                state.generation = state.generation.wrapping_add(1);
                state.tail = if state.batches.is_empty() { head } else { None };
            } else if state.tail.is_none() && state.batches.is_empty() {
                // Nothing was known to sign after: learn the head from this commit.
                state.tail = vault.audit_head().ok();
            }
        }
        let answers = batches
            .into_iter()
            .flat_map(|b| b.appends)
            .enumerate()
            .map(|(i, append)| {
                let result = match &outcome {
                    Ok(counted) => match counted.get(i) {
                        Some(Ok(value)) => Ok(*value),
                        Some(Err(value)) => Err(AuditWriteError::AtLimit { value: *value }),
                        None => Err(AuditWriteError::Stopped),
                    },
                    Err(e) => Err(e.clone()),
                };
                (append.outcome, result)
            })
            .collect();
        if let Err(mpsc::SendError(unsent)) = anchoring.send(Committed { generation, answers }) {
            // The anchorer is gone (it ends only if it panicked): nobody is told of a commit
            // whose anchor was not written.
            for (to, _) in unsent.answers {
                to.send(Err(AuditWriteError::Stopped));
            }
        }
    }
}
