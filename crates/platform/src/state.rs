//! Durable platform state in one redb database: services, job records, job logs, the queue of
//! jobs waiting to run, and the ids of the store's object-created events whose jobs are
//! recorded (see `cloister_storage::events`).
//!
//! `tallies` keeps, in the same transactions as the jobs, what jobs not yet finished hold:
//! how many of each service wait to start, and the bytes of their events and payloads. `POST
//! /job` is bounded by them without scanning the queue; they are recounted at every open.
//!
//! Every change that answers a client (service changes, new jobs from `POST /job`, final job
//! states) commits with `Durability::Immediate`, so an acknowledged change survives a crash.
//! Two transitions are committed lazily because something durable already stands for them:
//! jobs created from an upload (the upload's event stays in the store's outbox until a later
//! commit here is durable, and is delivered again otherwise) and Pending→Running (losing it
//! means the job runs again).

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Durability, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::fdl::Service;

/// How much of the state database [`State::open`] keeps in memory.
pub const DEFAULT_CACHE_BYTES: usize = 32 * 1024 * 1024;

const SERVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("services");
const JOBS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("jobs");
const LOGS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("logs");
/// Confidential jobs' logs, encrypted by the runtime to the data owner (opaque here).
const SEALED_LOGS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("sealed_logs");
const PAYLOADS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("payloads");
const QUEUE: TableDefinition<u64, (&str, &str)> = TableDefinition::new("queue");
/// Upload intents of earlier releases (see [`State::take_legacy_intents`]).
const INTENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("intents");
/// Ids of the store's object-created events whose jobs are recorded.
const EVENTS_DONE: TableDefinition<u64, ()> = TableDefinition::new("events_done");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const BUCKETS: TableDefinition<&str, &[u8]> = TableDefinition::new("buckets");
const TALLIES: TableDefinition<&str, u64> = TableDefinition::new("tallies");

/// The tally of bytes held by unfinished jobs (events and `POST /job` payloads), all services.
const QUEUED_BYTES: &str = "queued_bytes";

/// The tally of a service's jobs waiting to start.
fn pending_tally(service: &str) -> String {
    format!("pending/{service}")
}

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The database failed.
    #[error("state database: {0}")]
    Db(String),
    /// A stored record could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// A bounded submission would exceed its bounds; nothing was recorded.
    #[error(transparent)]
    QueueFull(#[from] QueueFull),
}

/// How much `POST /job` may leave waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueBounds {
    /// Most jobs of one service waiting to start (uploads' jobs count too).
    pub max_pending_jobs: u64,
    /// Most bytes held by unfinished jobs across services: their events, and the payloads of
    /// `POST /job`.
    pub max_queued_bytes: u64,
}

/// Why a bounded submission was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueFull {
    /// The service has as many jobs waiting to start as allowed.
    #[error("service {service:?} already has {pending} jobs waiting to start (at most {max})")]
    Jobs {
        /// The service.
        service: String,
        /// Its jobs waiting to start.
        pending: u64,
        /// The bound.
        max: u64,
    },
    /// Unfinished jobs hold as many bytes as allowed. How many, across services, is not
    /// told: one service's client would learn about the others' traffic.
    #[error("the queue of job data is full ({max} bytes at most, across services)")]
    Bytes {
        /// The bound.
        max: u64,
    },
}

/// What unfinished jobs hold, as the bounds of [`QueueBounds`] count it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueUsage {
    /// The service's jobs waiting to start.
    pub pending_jobs: u64,
    /// Bytes held by unfinished jobs across services.
    pub queued_bytes: u64,
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StateError {
            fn from(e: $t) -> Self {
                Self::Db(e.to_string())
            }
        }
    )*};
}
db_err!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

impl From<serde_json::Error> for StateError {
    fn from(e: serde_json::Error) -> Self {
        Self::Corrupt(e.to_string())
    }
}

/// Status of a job, as OSCAR names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum JobStatus {
    /// Waiting for a worker.
    Pending,
    /// Running.
    Running,
    /// Finished with exit code 0.
    Succeeded,
    /// Finished otherwise.
    Failed,
}

impl JobStatus {
    /// Whether the job has finished.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// Where a job's input comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobSource {
    /// An object in the store.
    Object {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
    },
    /// The body of a `POST /job` that was not an object event (kept in the payloads table).
    Payload,
}

/// A job record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Job name (`<service>-<uuid>`), unique within the service.
    pub name: String,
    /// Service name.
    pub service: String,
    /// The job's UUID (`JOB_UUID`).
    pub uuid: String,
    /// Current status.
    pub status: JobStatus,
    /// When the job was recorded.
    #[serde(with = "time::serde::rfc3339")]
    pub creation_time: OffsetDateTime,
    /// When its process started.
    #[serde(with = "time::serde::rfc3339::option")]
    pub start_time: Option<OffsetDateTime>,
    /// When it finished.
    #[serde(with = "time::serde::rfc3339::option")]
    pub finish_time: Option<OffsetDateTime>,
    /// Exit code of the script.
    pub exit_code: Option<i32>,
    /// Why it failed.
    pub reason: Option<String>,
    /// Its input.
    pub source: JobSource,
    /// The event delivered to the job as `EVENT`.
    pub event: String,
    /// The service's image when the job was created.
    pub image: String,
    /// Position in the queue while Pending or Running.
    pub queue_seq: u64,
}

/// An upload in progress whose object, once written, starts jobs for `services`, as releases
/// before the store's outbox recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// Bucket.
    pub bucket: String,
    /// Key.
    pub key: String,
    /// Services whose inputs match.
    pub services: Vec<String>,
    /// When the intent was recorded.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
}

/// Settings OSCAR keeps per bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketSettings {
    /// `private`, `public` or `restricted`.
    pub visibility: String,
    /// Users allowed for `restricted` buckets.
    #[serde(default)]
    pub allowed_users: Vec<String>,
    /// Who created it.
    pub owner: String,
}

/// One new job to record.
pub struct NewJob {
    /// The record (status Pending; `queue_seq` is assigned by the store).
    pub record: JobRecord,
    /// The payload for [`JobSource::Payload`] jobs.
    pub payload: Option<Vec<u8>>,
}

/// One page of a service's jobs.
pub struct JobPage {
    /// Jobs on the page, oldest first.
    pub jobs: Vec<JobRecord>,
    /// Name of the last job on the page when more follow.
    pub next: Option<String>,
    /// How many jobs follow this page.
    pub remaining: u64,
}

/// The state store.
pub struct State {
    db: cloister_storage::reopen::ReopeningDatabase,
    /// Write transactions begun so far; each gets the next number. Writers take turns (redb
    /// has one writer at a time), so the numbers follow the order of the commits.
    writes: AtomicU64,
    /// The number of the last write committed with `Durability::Immediate`: every commit up
    /// to it is durable, if the database was not opened again since (see [`WriteMark`]).
    durable: AtomicU64,
    /// Event ids whose events the store no longer holds: the next write that touches the
    /// events' table forgets them, instead of a commit of their own.
    forgettable: Mutex<Vec<u64>>,
    /// Unit tests: how many of the next writes fail before they begin.
    #[cfg(test)]
    pub(crate) fail_writes: std::sync::atomic::AtomicUsize,
}

/// Where a write stands in the state's history, to tell later whether it is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteMark {
    /// [`ReopeningDatabase::reopened`](cloister_storage::reopen::ReopeningDatabase::reopened)
    /// when it was made: a reopen drops every commit not yet durable.
    handle: u64,
    /// Its number among the writes.
    seq: u64,
}

/// A write transaction with its place in the history.
struct Write {
    txn: redb::WriteTransaction,
    mark: WriteMark,
    durable: bool,
    /// How many ids at the front of [`State::forgettable`] this transaction forgets: taken off
    /// the list once it commits (writers take turns, and ids are only added at the end).
    forgotten: usize,
}

impl std::ops::Deref for Write {
    type Target = redb::WriteTransaction;
    fn deref(&self) -> &Self::Target {
        &self.txn
    }
}

impl std::ops::DerefMut for Write {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.txn
    }
}

fn next_counter(table: &mut redb::Table<&str, u64>, name: &str) -> Result<u64, StateError> {
    let next = table.get(name)?.map_or(1, |v| v.value() + 1);
    table.insert(name, next)?;
    Ok(next)
}

fn service_range(service: &str) -> std::ops::RangeInclusive<(&str, &str)> {
    (service, "")..=(service, "\u{10FFFF}")
}

impl State {
    /// Opens (creating if needed) the database file, with the default cache.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        Self::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// Opens (creating if needed) the database file; redb keeps at most `cache_bytes` of it in
    /// memory (its own default, 1 GiB, let the server grow with its job history).
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<Self, StateError> {
        let db = cloister_storage::reopen::ReopeningDatabase::create(path, cache_bytes)?;
        let txn = db.begin_write()?;
        let _ = txn.open_table(BUCKETS)?;
        let _ = txn.open_table(SERVICES)?;
        let _ = txn.open_table(INTENTS)?;
        let _ = txn.open_table(EVENTS_DONE)?;
        for table in [JOBS, LOGS, SEALED_LOGS, PAYLOADS] {
            let _ = txn.open_table(table)?;
        }
        let _ = txn.open_table(QUEUE)?;
        let _ = txn.open_table(COUNTERS)?;
        recount_tallies(&txn)?;
        txn.commit()?;
        Ok(Self {
            db,
            writes: AtomicU64::new(0),
            durable: AtomicU64::new(0),
            forgettable: Mutex::default(),
            #[cfg(test)]
            fail_writes: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn write(&self, durable: bool) -> Result<Write, StateError> {
        #[cfg(test)]
        if self
            .fail_writes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(StateError::Db("injected write failure".to_owned()));
        }
        let mut txn = self.db.begin_write()?;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        // Numbered once the write lock is held, so numbers follow the commits' order.
        let mark = WriteMark {
            handle: self.db.reopened(),
            seq: self.writes.fetch_add(1, Ordering::AcqRel) + 1,
        };
        Ok(Write {
            txn,
            mark,
            durable,
            forgotten: 0,
        })
    }

    /// Unit tests: how many write transactions were begun so far.
    #[cfg(test)]
    pub(crate) fn writes_begun(&self) -> u64 {
        self.writes.load(Ordering::Acquire)
    }

    fn commit(&self, write: Write) -> Result<WriteMark, StateError> {
        let Write {
            txn,
            mark,
            durable,
            forgotten,
        } = write;
        txn.commit()?;
        if forgotten > 0
            && let Ok(mut forgettable) = self.forgettable.lock()
        {
            let forgotten = forgotten.min(forgettable.len());
            forgettable.drain(..forgotten);
        }
        if durable {
            self.durable.fetch_max(mark.seq, Ordering::AcqRel);
        }
        Ok(mark)
    }

    /// Removes the ids of [`Self::forgettable`] from the events' table in `write`.
    fn forget_in(&self, write: &mut Write) -> Result<(), StateError> {
        if self.forgettable.lock().map_or(true, |f| f.is_empty()) {
            return Ok(());
        }
        let forgotten = self.forget_from(&mut write.open_table(EVENTS_DONE)?)?;
        write.forgotten = forgotten;
        Ok(())
    }

    /// Removes the ids of [`Self::forgettable`] from `done`; how many, for [`Write::forgotten`].
    fn forget_from(&self, done: &mut redb::Table<u64, ()>) -> Result<usize, StateError> {
        let ids = self.forgettable.lock().map(|f| f.clone()).unwrap_or_default();
        for id in &ids {
            done.remove(*id)?;
        }
        Ok(ids.len())
    }

    // ---- services ----

    /// All services, by name.
    pub fn services(&self) -> Result<Vec<Service>, StateError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SERVICES)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (_, value) = entry?;
            out.push(serde_json::from_slice(value.value())?);
        }
        Ok(out)
    }

    /// One service.
    pub fn service(&self, name: &str) -> Result<Option<Service>, StateError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SERVICES)?;
        Ok(match table.get(name)? {
            Some(v) => Some(serde_json::from_slice(v.value())?),
            None => None,
        })
    }

    /// Stores a service; with `create`, fails (returns false) if it exists, otherwise fails if
    /// it does not.
    pub fn put_service(&self, service: &Service, create: bool) -> Result<bool, StateError> {
        let txn = self.write(true)?;
        {
            let mut table = txn.open_table(SERVICES)?;
            let exists = table.get(service.name.as_str())?.is_some();
            if exists == create {
                return Ok(false);
            }
            table.insert(service.name.as_str(), serde_json::to_vec(service)?.as_slice())?;
        }
        self.commit(txn)?;
        Ok(true)
    }

    /// Deletes a service with its jobs, logs and queue entries; false if it did not exist.
    pub fn delete_service(&self, name: &str) -> Result<bool, StateError> {
        let txn = self.write(true)?;
        {
            let mut services = txn.open_table(SERVICES)?;
            if services.remove(name)?.is_none() {
                return Ok(false);
            }
            let mut jobs = txn.open_table(JOBS)?;
            let mut payloads = txn.open_table(PAYLOADS)?;
            let mut released = 0u64;
            for entry in jobs.range(service_range(name))? {
                let (key, value) = entry?;
                // Finished jobs hold nothing: their records (with their events) are not built.
                if serde_json::from_slice::<StoredStatus>(value.value())?
                    .status
                    .is_final()
                {
                    continue;
                }
                let record: JobRecord = serde_json::from_slice(value.value())?;
                let payload = payloads.get(key.value())?.map_or(0, |p| p.value().len());
                released = released.saturating_add(held_bytes(&record, payload));
            }
            jobs.retain_in(service_range(name), |_, _| false)?;
            payloads.retain_in(service_range(name), |_, _| false)?;
            for table in [LOGS, SEALED_LOGS] {
                txn.open_table(table)?
                    .retain_in(service_range(name), |_, _| false)?;
            }
            txn.open_table(QUEUE)?.retain(|_, (svc, _)| svc != name)?;
            let mut tallies = txn.open_table(TALLIES)?;
            tallies.remove(pending_tally(name).as_str())?;
            tally_sub(&mut tallies, QUEUED_BYTES, released)?;
        }
        self.commit(txn)?;
        Ok(true)
    }

    // ---- bucket settings ----

    /// Settings of a bucket, if any were recorded.
    pub fn bucket(&self, name: &str) -> Result<Option<BucketSettings>, StateError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BUCKETS)?;
        Ok(match table.get(name)? {
            Some(v) => Some(serde_json::from_slice(v.value())?),
            None => None,
        })
    }

    /// Records a bucket's settings.
    pub fn put_bucket(&self, name: &str, settings: &BucketSettings) -> Result<(), StateError> {
        let txn = self.write(true)?;
        txn.open_table(BUCKETS)?
            .insert(name, serde_json::to_vec(settings)?.as_slice())?;
        self.commit(txn)?;
        Ok(())
    }

    /// Forgets a bucket's settings.
    pub fn delete_bucket(&self, name: &str) -> Result<(), StateError> {
        let txn = self.write(true)?;
        txn.open_table(BUCKETS)?.remove(name)?;
        self.commit(txn)?;
        Ok(())
    }

    // ---- upload events ----

    /// Records the jobs of the store's object-created event `event`, unless that event's jobs
    /// were recorded already (an event is delivered again after a crash or a failed delivery):
    /// then `None`, and nothing is written. The event's id is kept with the jobs, in the same
    /// transaction, to tell.
    ///
    /// The commit is not forced to disk: until a later commit is (see [`Self::sync`]), the
    /// event, durable in the store's outbox, stands for these jobs, and is delivered again if
    /// the process dies first.
    ///
    /// `before_commit` gets the records while the transaction still holds the database's write
    /// lock, so work on them (queueing a job) overlaps the commit, and any writer that comes
    /// from that work (the job marked Running) waits for the commit. Should the commit fail, a
    /// job queued by then finds no record: it runs, its state is not recorded, and the event,
    /// still in the outbox, is delivered again.
    pub fn create_event_jobs(
        &self,
        event: u64,
        jobs: Vec<NewJob>,
        before_commit: impl FnOnce(&[JobRecord]),
    ) -> Result<WriteMark, StateError> {
        let mut txn = self.write(false)?;
        let forgotten = {
            let mut done = txn.open_table(EVENTS_DONE)?;
            if done.get(event)?.is_some() {
                // Recorded by an earlier commit, which this one follows.
                return Ok(txn.mark);
            }
            done.insert(event, ())?;
            self.forget_from(&mut done)?
        };
        txn.forgotten = forgotten;
        let created = insert_jobs(&txn, jobs, None)?;
        before_commit(&created);
        self.commit(txn)
    }

    /// Makes the commits marked `marks` durable, with a commit of its own only when no durable
    /// commit followed them all (the final state of a job usually did). `false` when the
    /// database was opened again since one of them (after a failed write): a commit not durable
    /// by then is gone, and what it recorded must be recorded again.
    pub fn make_durable(&self, marks: &[WriteMark]) -> Result<bool, StateError> {
        let handle = self.db.reopened();
        if marks.iter().any(|m| m.handle != handle) {
            return Ok(false);
        }
        let last = marks.iter().map(|m| m.seq).max().unwrap_or(0);
        if self.durable.load(Ordering::Acquire) >= last {
            // Read after the durable number: a reopen before the commit it names shows here.
            return Ok(self.db.reopened() == handle);
        }
        let mut txn = self.write(true)?;
        self.forget_in(&mut txn)?;
        let synced = self.commit(txn)?;
        Ok(synced.handle == handle)
    }

    /// Forgets handled events (once the store no longer has them, they cannot come again):
    /// `Some(ids)` with the next write that touches the events' table, not a commit of their
    /// own; `None` forgets all at once, at start, after every pending event was handled.
    pub fn forget_events(&self, ids: Option<&[u64]>) -> Result<(), StateError> {
        match ids {
            Some(ids) => {
                if let Ok(mut forgettable) = self.forgettable.lock() {
                    forgettable.extend_from_slice(ids);
                }
                Ok(())
            }
            None => {
                let mut txn = self.write(false)?;
                txn.open_table(EVENTS_DONE)?.retain(|_, _| false)?;
                txn.forgotten = self.forgettable.lock().map_or(0, |f| f.len());
                self.commit(txn)?;
                Ok(())
            }
        }
    }

    /// Takes the upload intents an earlier release left (it recorded one per upload in flight,
    /// here, instead of an event in the store's outbox): the uploads a crash interrupted then.
    pub fn take_legacy_intents(&self) -> Result<Vec<Intent>, StateError> {
        let txn = self.write(true)?;
        let mut out = Vec::new();
        {
            let mut table = txn.open_table(INTENTS)?;
            for entry in table.iter()? {
                let (_, value) = entry?;
                out.push(serde_json::from_slice(value.value())?);
            }
            table.retain(|_, _| false)?;
        }
        self.commit(txn)?;
        Ok(out)
    }

    // ---- jobs ----

    /// Records new jobs, durably. Returns the records with their queue positions.
    pub fn create_jobs(&self, jobs: Vec<NewJob>) -> Result<Vec<JobRecord>, StateError> {
        let txn = self.write(true)?;
        let created = insert_jobs(&txn, jobs, None)?;
        self.commit(txn)?;
        Ok(created)
    }

    /// Records one job of a `POST /job`, durably, unless its service would then have more than
    /// `bounds.max_pending_jobs` jobs waiting to start or unfinished jobs would hold more than
    /// `bounds.max_queued_bytes`: then [`StateError::QueueFull`], and nothing is recorded.
    ///
    /// The check and the insertion are one transaction, so concurrent submissions cannot pass
    /// the check together.
    pub fn create_job_bounded(&self, job: NewJob, bounds: QueueBounds) -> Result<JobRecord, StateError> {
        let txn = self.write(true)?;
        let mut created = insert_jobs(&txn, vec![job], Some(bounds))?;
        // Dropping the transaction on the refusals above aborts it: nothing half-applied.
        self.commit(txn)?;
        created
            .pop()
            .ok_or_else(|| StateError::Db("a created job went missing".to_owned()))
    }

    /// What unfinished jobs hold now, as [`QueueBounds`] counts it, for `service`.
    pub fn queue_usage(&self, service: &str) -> Result<QueueUsage, StateError> {
        let txn = self.db.begin_read()?;
        let tallies = txn.open_table(TALLIES)?;
        let read = |key: &str| -> Result<u64, StateError> { Ok(tallies.get(key)?.map_or(0, |v| v.value())) };
        Ok(QueueUsage {
            pending_jobs: read(&pending_tally(service))?,
            queued_bytes: read(QUEUED_BYTES)?,
        })
    }

    /// One job.
    pub fn job(&self, service: &str, job: &str) -> Result<Option<JobRecord>, StateError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(JOBS)?;
        Ok(match table.get((service, job))? {
            Some(v) => Some(serde_json::from_slice(v.value())?),
            None => None,
        })
    }

    /// The payload of a [`JobSource::Payload`] job.
    pub fn payload(&self, service: &str, job: &str) -> Result<Option<Vec<u8>>, StateError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PAYLOADS)?;
        Ok(table.get((service, job))?.map(|v| v.value().to_vec()))
    }

    /// Jobs waiting or running, in queue order (used at start-up to refill the queue).
    pub fn queued(&self) -> Result<Vec<JobRecord>, StateError> {
        let txn = self.db.begin_read()?;
        let queue = txn.open_table(QUEUE)?;
        let jobs = txn.open_table(JOBS)?;
        let mut out = Vec::new();
        for entry in queue.iter()? {
            let (_, key) = entry?;
            let (service, job) = key.value();
            if let Some(v) = jobs.get((service, job))? {
                out.push(serde_json::from_slice(v.value())?);
            }
        }
        Ok(out)
    }

    /// Marks a job Running. Not forced to disk: if lost, the job is simply run again.
    pub fn mark_running(&self, service: &str, job: &str, at: OffsetDateTime) -> Result<bool, StateError> {
        let txn = self.write(false)?;
        {
            let mut table = txn.open_table(JOBS)?;
            let Some(mut record) = decode::<JobRecord>(table.get((service, job))?)? else {
                return Ok(false);
            };
            if record.status == JobStatus::Pending {
                tally_sub(&mut txn.open_table(TALLIES)?, &pending_tally(service), 1)?;
            }
            record.status = JobStatus::Running;
            record.start_time = Some(at);
            table.insert((service, job), serde_json::to_vec(&record)?.as_slice())?;
        }
        self.commit(txn)?;
        Ok(true)
    }

    /// Records a job's final state, its log and its sealed log (a confidential job's output,
    /// encrypted by its runtime), and takes it off the queue.
    pub fn finish(
        &self,
        update: &JobRecord,
        log: &[u8],
        sealed_log: Option<&[u8]>,
    ) -> Result<bool, StateError> {
        let mut txn = self.write(true)?;
        self.forget_in(&mut txn)?;
        {
            let mut table = txn.open_table(JOBS)?;
            let key = (update.service.as_str(), update.name.as_str());
            // Only the status is needed: the rest (the event may be large) is skipped.
            let Some(stored) = decode::<StoredStatus>(table.get(key)?)? else {
                // Deleted while running: nothing to record.
                return Ok(false);
            };
            table.insert(key, serde_json::to_vec(update)?.as_slice())?;
            txn.open_table(LOGS)?.insert(key, log)?;
            let mut sealed = txn.open_table(SEALED_LOGS)?;
            match sealed_log {
                Some(sealed_log) => sealed.insert(key, sealed_log)?,
                None => sealed.remove(key)?,
            };
            let mut tallies = txn.open_table(TALLIES)?;
            if !stored.status.is_final() {
                txn.open_table(QUEUE)?.remove(update.queue_seq)?;
                // Only `POST /job` bodies that are not object events have a payload; an upload's
                // job leaves the table alone (opening a table costs a commit work too).
                let payload = match update.source {
                    JobSource::Payload => txn
                        .open_table(PAYLOADS)?
                        .remove(key)?
                        .map_or(0, |p| p.value().len()),
                    JobSource::Object { .. } => 0,
                };
                tally_sub(&mut tallies, QUEUED_BYTES, held_bytes(update, payload))?;
            }
            if stored.status == JobStatus::Pending {
                tally_sub(&mut tallies, &pending_tally(&update.service), 1)?;
            }
        }
        self.commit(txn)?;
        Ok(true)
    }

    /// A page of a service's jobs after the job named `after`.
    pub fn jobs(&self, service: &str, after: Option<&str>, limit: usize) -> Result<JobPage, StateError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(JOBS)?;
        let mut jobs = Vec::new();
        let mut remaining = 0u64;
        let start = after.map_or((service, ""), |a| (service, a));
        for entry in table.range(start..=(service, "\u{10FFFF}"))? {
            let (key, value) = entry?;
            if after.is_some_and(|a| key.value().1 == a) {
                continue;
            }
            if jobs.len() < limit {
                jobs.push(serde_json::from_slice::<JobRecord>(value.value())?);
            } else {
                remaining += 1;
            }
        }
        let next = if remaining > 0 {
            jobs.last().map(|j| j.name.clone())
        } else {
            None
        };
        Ok(JobPage {
            jobs,
            next,
            remaining,
        })
    }

    /// A job's log.
    pub fn log(&self, service: &str, job: &str) -> Result<Option<Vec<u8>>, StateError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LOGS)?;
        Ok(table.get((service, job))?.map(|v| v.value().to_vec()))
    }

    /// A job's sealed log, if its runtime left one.
    pub fn sealed_log(&self, service: &str, job: &str) -> Result<Option<Vec<u8>>, StateError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SEALED_LOGS)?;
        Ok(table.get((service, job))?.map(|v| v.value().to_vec()))
    }

    /// Deletes jobs of a service matching `pred`; returns their names.
    pub fn delete_jobs(
        &self,
        service: &str,
        mut pred: impl FnMut(&JobRecord) -> bool,
    ) -> Result<Vec<JobRecord>, StateError> {
        let txn = self.write(true)?;
        let mut deleted = Vec::new();
        {
            let mut table = txn.open_table(JOBS)?;
            let mut doomed = Vec::new();
            for entry in table.range(service_range(service))? {
                let (_, value) = entry?;
                let record: JobRecord = serde_json::from_slice(value.value())?;
                if pred(&record) {
                    doomed.push(record);
                }
            }
            let mut logs = txn.open_table(LOGS)?;
            let mut sealed_logs = txn.open_table(SEALED_LOGS)?;
            let mut queue = txn.open_table(QUEUE)?;
            let mut payloads = txn.open_table(PAYLOADS)?;
            let mut tallies = txn.open_table(TALLIES)?;
            for record in doomed {
                let key = (service, record.name.as_str());
                table.remove(key)?;
                logs.remove(key)?;
                sealed_logs.remove(key)?;
                let payload = payloads.remove(key)?.map_or(0, |p| p.value().len());
                if !record.status.is_final() {
                    queue.remove(record.queue_seq)?;
                    tally_sub(&mut tallies, QUEUED_BYTES, held_bytes(&record, payload))?;
                }
                if record.status == JobStatus::Pending {
                    tally_sub(&mut tallies, &pending_tally(service), 1)?;
                }
                deleted.push(record);
            }
        }
        self.commit(txn)?;
        Ok(deleted)
    }

    /// Deletes finished jobs that finished before `cutoff`, across services.
    pub fn expire_jobs(&self, cutoff: OffsetDateTime) -> Result<usize, StateError> {
        let mut total = 0;
        for service in self.services()? {
            total += self
                .delete_jobs(&service.name, |j| {
                    j.status.is_final() && j.finish_time.is_some_and(|t| t < cutoff)
                })?
                .len();
        }
        Ok(total)
    }
}

/// The status of a stored job record, read without building the rest.
#[derive(Deserialize)]
struct StoredStatus {
    status: JobStatus,
}

/// Bytes an unfinished job holds in the queue's account: its event (kept with the queued
/// record) and its payload.
fn held_bytes(record: &JobRecord, payload_len: usize) -> u64 {
    (record.event.len() as u64).saturating_add(payload_len as u64)
}

/// Adds `amount` to a tally; returns the new value.
fn tally_add(tallies: &mut redb::Table<&str, u64>, key: &str, amount: u64) -> Result<u64, StateError> {
    let next = tallies.get(key)?.map_or(0, |v| v.value()).saturating_add(amount);
    tallies.insert(key, next)?;
    Ok(next)
}

/// Takes `amount` from a tally (never below zero); a tally at zero is removed.
fn tally_sub(tallies: &mut redb::Table<&str, u64>, key: &str, amount: u64) -> Result<(), StateError> {
    let next = tallies.get(key)?.map_or(0, |v| v.value()).saturating_sub(amount);
    if next == 0 {
        tallies.remove(key)?;
    } else {
        tallies.insert(key, next)?;
    }
    Ok(())
}

/// Records `jobs` (Pending, queued) in `txn` with their tallies. With `bounds`, a job that
/// would exceed them is refused with [`StateError::QueueFull`], leaving `txn` half-written:
/// the caller must then drop it uncommitted.
fn insert_jobs(
    txn: &redb::WriteTransaction,
    jobs: Vec<NewJob>,
    bounds: Option<QueueBounds>,
) -> Result<Vec<JobRecord>, StateError> {
    let mut created = Vec::with_capacity(jobs.len());
    let mut counters = txn.open_table(COUNTERS)?;
    let mut table = txn.open_table(JOBS)?;
    let mut queue = txn.open_table(QUEUE)?;
    // Opened only for a job that has a payload: an upload's jobs have none.
    let mut payloads = None;
    let mut tallies = txn.open_table(TALLIES)?;
    for NewJob { mut record, payload } in jobs {
        let held = held_bytes(&record, payload.as_ref().map_or(0, Vec::len));
        let pending_key = pending_tally(&record.service);
        let pending = tally_add(&mut tallies, &pending_key, 1)?;
        let queued = tally_add(&mut tallies, QUEUED_BYTES, held)?;
        if let Some(bounds) = bounds {
            if pending > bounds.max_pending_jobs {
                return Err(QueueFull::Jobs {
                    service: record.service,
                    pending: pending - 1,
                    max: bounds.max_pending_jobs,
                }
                .into());
            }
            if queued > bounds.max_queued_bytes {
                return Err(QueueFull::Bytes {
                    max: bounds.max_queued_bytes,
                }
                .into());
            }
        }
        record.queue_seq = next_counter(&mut counters, "queue")?;
        let key = (record.service.as_str(), record.name.as_str());
        table.insert(key, serde_json::to_vec(&record)?.as_slice())?;
        queue.insert(record.queue_seq, key)?;
        if let Some(payload) = &payload {
            let payloads = match &mut payloads {
                Some(table) => table,
                None => payloads.insert(txn.open_table(PAYLOADS)?),
            };
            payloads.insert(key, payload.as_slice())?;
        }
        created.push(record);
    }
    Ok(created)
}

/// Recomputes the tallies from the queue, so they are right whatever wrote the database last
/// (an older version kept none).
fn recount_tallies(txn: &redb::WriteTransaction) -> Result<(), StateError> {
    let mut tallies = txn.open_table(TALLIES)?;
    tallies.retain(|_, _| false)?;
    let queue = txn.open_table(QUEUE)?;
    let jobs = txn.open_table(JOBS)?;
    let payloads = txn.open_table(PAYLOADS)?;
    for entry in queue.iter()? {
        let (_, key) = entry?;
        let (service, job) = key.value();
        let Some(record) = decode::<JobRecord>(jobs.get((service, job))?)? else {
            continue;
        };
        let payload = payloads.get((service, job))?.map_or(0, |p| p.value().len());
        tally_add(&mut tallies, QUEUED_BYTES, held_bytes(&record, payload))?;
        if record.status == JobStatus::Pending {
            tally_add(&mut tallies, &pending_tally(service), 1)?;
        }
    }
    Ok(())
}

fn decode<T: serde::de::DeserializeOwned>(
    value: Option<redb::AccessGuard<'_, &[u8]>>,
) -> Result<Option<T>, StateError> {
    Ok(match value {
        Some(v) => Some(serde_json::from_slice(v.value())?),
        None => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &tempfile::TempDir) -> State {
        State::open(&dir.path().join("state.redb")).unwrap()
    }

    fn service(name: &str) -> Service {
        let mut service =
            Service::from_json(format!(r#"{{"name":"{name}","script":"true"}}"#).as_bytes()).unwrap();
        service.token = "t".repeat(64);
        service
    }

    fn payload_job(service: &str, payload: &[u8]) -> NewJob {
        NewJob {
            record: crate::dispatch::new_job(
                &self::service(service),
                JobSource::Payload,
                String::from_utf8_lossy(payload).into_owned(),
            ),
            payload: Some(payload.to_vec()),
        }
    }

    const BOUNDS: QueueBounds = QueueBounds {
        max_pending_jobs: 2,
        max_queued_bytes: 1000,
    };

    fn finished(mut record: JobRecord, at: OffsetDateTime) -> JobRecord {
        record.status = JobStatus::Succeeded;
        record.finish_time = Some(at);
        record
    }

    #[test]
    fn bounded_submissions_refuse_whole_and_free_up_as_jobs_start_and_finish() {
        let dir = tempfile::tempdir().unwrap();
        let state = open(&dir);
        let first = state.create_job_bounded(payload_job("a", b"11"), BOUNDS).unwrap();
        let second = state.create_job_bounded(payload_job("a", b"22"), BOUNDS).unwrap();
        assert_eq!(
            state.queue_usage("a").unwrap(),
            QueueUsage {
                pending_jobs: 2,
                queued_bytes: 8
            }
        );

        let refused = payload_job("a", b"33");
        let refused_name = refused.record.name.clone();
        let err = state.create_job_bounded(refused, BOUNDS).unwrap_err();
        assert!(
            matches!(
                &err,
                StateError::QueueFull(QueueFull::Jobs {
                    pending: 2,
                    max: 2,
                    ..
                })
            ),
            "{err}"
        );
        // Nothing of the refused job: no record, no payload, no queue entry, no tally.
        assert!(state.job("a", &refused_name).unwrap().is_none());
        assert!(state.payload("a", &refused_name).unwrap().is_none());
        assert_eq!(state.queued().unwrap().len(), 2);
        assert_eq!(state.queue_usage("a").unwrap().pending_jobs, 2);
        // The bound is per service.
        let other = state.create_job_bounded(payload_job("b", b"44"), BOUNDS).unwrap();

        // A job that starts no longer waits: one more fits.
        assert!(
            state
                .mark_running("a", &first.name, OffsetDateTime::now_utc())
                .unwrap()
        );
        assert_eq!(state.queue_usage("a").unwrap().pending_jobs, 1);
        let third = state.create_job_bounded(payload_job("a", b"55"), BOUNDS).unwrap();
        assert!(state.create_job_bounded(payload_job("a", b"66"), BOUNDS).is_err());

        // Finishing releases its bytes; a job finished without starting (refused by its
        // executor) leaves the waiting count too.
        let now = OffsetDateTime::now_utc();
        assert!(state.finish(&finished(first, now), b"log", None).unwrap());
        assert!(state.finish(&finished(second, now), b"log", None).unwrap());
        assert!(state.payload("a", &third.name).unwrap().is_some());
        assert_eq!(
            state.queue_usage("a").unwrap(),
            QueueUsage {
                pending_jobs: 1,
                queued_bytes: 8
            }
        );
        // Deleting unfinished jobs, or their service, releases what they held.
        state.delete_jobs("a", |_| true).unwrap();
        // Service b's job holds the rest.
        assert_eq!(
            state.queue_usage("a").unwrap(),
            QueueUsage {
                pending_jobs: 0,
                queued_bytes: 4
            }
        );
        assert!(state.put_service(&service("b"), true).unwrap());
        assert!(state.delete_service("b").unwrap());
        assert!(state.job("b", &other.name).unwrap().is_none());
        assert_eq!(state.queue_usage("b").unwrap(), QueueUsage::default());
    }

    #[test]
    fn the_byte_bound_is_global_and_counts_events_with_payloads() {
        let dir = tempfile::tempdir().unwrap();
        let state = open(&dir);
        // 400 bytes of payload and 400 of event.
        let big = state
            .create_job_bounded(payload_job("a", &[b'x'; 400]), BOUNDS)
            .unwrap();
        let refused = payload_job("b", &[b'y'; 150]);
        let refused_name = refused.record.name.clone();
        let err = state.create_job_bounded(refused, BOUNDS).unwrap_err();
        assert!(
            matches!(err, StateError::QueueFull(QueueFull::Bytes { max: 1000 })),
            "{err}"
        );
        // The message tells no other service's usage.
        assert!(!err.to_string().contains("800"), "{err}");
        assert!(state.job("b", &refused_name).unwrap().is_none());
        assert!(state.payload("b", &refused_name).unwrap().is_none());
        // Small enough still fits.
        state
            .create_job_bounded(payload_job("b", &[b'y'; 50]), BOUNDS)
            .unwrap();
        // Uploads' jobs are never refused, but they count.
        let upload = NewJob {
            record: crate::dispatch::new_job(
                &service("b"),
                JobSource::Object {
                    bucket: "b".into(),
                    key: "in/x".into(),
                },
                "e".repeat(100),
            ),
            payload: None,
        };
        state.create_jobs(vec![upload]).unwrap();
        assert_eq!(state.queue_usage("b").unwrap().queued_bytes, 800 + 100 + 100);
        assert_eq!(state.queue_usage("b").unwrap().pending_jobs, 2);
        assert!(state.create_job_bounded(payload_job("c", b"1"), BOUNDS).is_err());

        state
            .finish(&finished(big, OffsetDateTime::now_utc()), b"", None)
            .unwrap();
        state
            .create_job_bounded(payload_job("c", &[b'z'; 150]), BOUNDS)
            .unwrap();
        assert_eq!(state.queue_usage("c").unwrap().queued_bytes, 200 + 300);
    }

    #[test]
    fn tallies_are_recounted_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let state = open(&dir);
        state.create_job_bounded(payload_job("a", b"11"), BOUNDS).unwrap();
        let running = state
            .create_job_bounded(payload_job("a", b"2222"), BOUNDS)
            .unwrap();
        state
            .mark_running("a", &running.name, OffsetDateTime::now_utc())
            .unwrap();
        let before = state.queue_usage("a").unwrap();
        assert_eq!(
            before,
            QueueUsage {
                pending_jobs: 1,
                queued_bytes: 12
            }
        );
        // A database whose tallies were lost (or never kept) gets them back.
        {
            let txn = state.write(true).unwrap();
            txn.open_table(TALLIES).unwrap().retain(|_, _| false).unwrap();
            state.commit(txn).unwrap();
        }
        assert_eq!(state.queue_usage("a").unwrap(), QueueUsage::default());
        drop(state);
        assert_eq!(open(&dir).queue_usage("a").unwrap(), before);
    }

    #[test]
    fn sealed_logs_are_stored_with_the_final_state_and_deleted_with_the_job() {
        let dir = tempfile::tempdir().unwrap();
        let state = open(&dir);
        assert!(state.put_service(&service("a"), true).unwrap());
        let jobs = state
            .create_jobs((0..4).map(|_| payload_job("a", b"{}")).collect())
            .unwrap();
        let long_ago = OffsetDateTime::now_utc() - time::Duration::days(30);
        for (i, job) in jobs.iter().enumerate() {
            let sealed = format!("ciphertext {i}");
            assert!(
                state
                    .finish(
                        &finished(job.clone(), long_ago),
                        b"status",
                        Some(sealed.as_bytes())
                    )
                    .unwrap()
            );
            assert_eq!(
                state.sealed_log("a", &job.name).unwrap(),
                Some(sealed.into_bytes())
            );
        }
        // A job without one has none, also when it finishes again (a rerun after a crash).
        assert!(
            state
                .finish(&finished(jobs[3].clone(), long_ago), b"status", None)
                .unwrap()
        );
        assert_eq!(state.sealed_log("a", &jobs[3].name).unwrap(), None);

        state.delete_jobs("a", |j| j.name == jobs[0].name).unwrap();
        assert_eq!(state.sealed_log("a", &jobs[0].name).unwrap(), None);
        // Log retention: expired jobs take their sealed logs along.
        assert_eq!(
            state.expire_jobs(long_ago + time::Duration::seconds(1)).unwrap(),
            3
        );
        assert_eq!(state.sealed_log("a", &jobs[1].name).unwrap(), None);

        // Deleting the service deletes its sealed logs.
        let job = state
            .create_jobs(vec![payload_job("a", b"{}")])
            .unwrap()
            .remove(0);
        state
            .finish(&finished(job.clone(), long_ago), b"", Some(b"sealed"))
            .unwrap();
        assert!(state.delete_service("a").unwrap());
        assert_eq!(state.sealed_log("a", &job.name).unwrap(), None);
        // A job deleted while running records nothing when it finishes.
        assert!(
            !state
                .finish(&finished(job, long_ago), b"", Some(b"sealed"))
                .unwrap()
        );
    }
}
