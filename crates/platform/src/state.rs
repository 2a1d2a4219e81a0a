//! Durable platform state in one redb database: services, job records, job logs, the queue of
//! jobs waiting to run, and upload intents (see `cloister_storage::events`).
//!
//! Every change that answers a client (service changes, upload intents, new jobs from
//! `POST /job`, final job states) commits with `Durability::Immediate`, so an acknowledged
//! change survives a crash. Two transitions are committed lazily because something durable
//! already stands for them: jobs created from an upload (their intent is durable and recovery
//! re-creates them) and Pending→Running (losing it means the job runs again).

use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::fdl::Service;

const SERVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("services");
const JOBS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("jobs");
const LOGS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("logs");
const PAYLOADS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("payloads");
const QUEUE: TableDefinition<u64, (&str, &str)> = TableDefinition::new("queue");
const INTENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("intents");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const BUCKETS: TableDefinition<&str, &[u8]> = TableDefinition::new("buckets");

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The database failed.
    #[error("state database: {0}")]
    Db(String),
    /// A stored record could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

/// An upload in progress whose object, once written, starts jobs for `services`.
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
    db: Database,
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
    /// Opens (creating if needed) the database file.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        let _ = txn.open_table(BUCKETS)?;
        let _ = txn.open_table(SERVICES)?;
        let _ = txn.open_table(INTENTS)?;
        for table in [JOBS, LOGS, PAYLOADS] {
            let _ = txn.open_table(table)?;
        }
        let _ = txn.open_table(QUEUE)?;
        let _ = txn.open_table(COUNTERS)?;
        txn.commit()?;
        Ok(Self { db })
    }

    fn write(&self, durable: bool) -> Result<redb::WriteTransaction, StateError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        Ok(txn)
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
        txn.commit()?;
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
            jobs.retain_in(service_range(name), |_, _| false)?;
            txn.open_table(LOGS)?
                .retain_in(service_range(name), |_, _| false)?;
            txn.open_table(PAYLOADS)?
                .retain_in(service_range(name), |_, _| false)?;
            txn.open_table(QUEUE)?.retain(|_, (svc, _)| svc != name)?;
        }
        txn.commit()?;
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
        txn.commit()?;
        Ok(())
    }

    /// Forgets a bucket's settings.
    pub fn delete_bucket(&self, name: &str) -> Result<(), StateError> {
        let txn = self.write(true)?;
        txn.open_table(BUCKETS)?.remove(name)?;
        txn.commit()?;
        Ok(())
    }

    // ---- intents ----

    /// Records an upload intent; returns its id.
    pub fn add_intent(&self, intent: &Intent) -> Result<u64, StateError> {
        let txn = self.write(true)?;
        let id = {
            let id = next_counter(&mut txn.open_table(COUNTERS)?, "intent")?;
            txn.open_table(INTENTS)?
                .insert(id, serde_json::to_vec(intent)?.as_slice())?;
            id
        };
        txn.commit()?;
        Ok(id)
    }

    /// One intent.
    pub fn intent(&self, id: u64) -> Result<Option<Intent>, StateError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(INTENTS)?;
        Ok(match table.get(id)? {
            Some(v) => Some(serde_json::from_slice(v.value())?),
            None => None,
        })
    }

    /// All open intents (after a crash: writes whose outcome is unknown).
    pub fn intents(&self) -> Result<Vec<(u64, Intent)>, StateError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(INTENTS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (id, value) = entry?;
            out.push((id.value(), serde_json::from_slice(value.value())?));
        }
        Ok(out)
    }

    /// Drops an intent whose write failed.
    pub fn drop_intent(&self, id: u64) -> Result<(), StateError> {
        let txn = self.write(false)?;
        txn.open_table(INTENTS)?.remove(id)?;
        txn.commit()?;
        Ok(())
    }

    // ---- jobs ----

    /// Records new jobs and resolves `intent`, in one transaction. Returns the records with
    /// their queue positions.
    ///
    /// With an intent, the commit is not forced to disk: until some later commit is, the
    /// durable intent still stands for these jobs, and recovery re-creates them from it if the
    /// process dies. Without one (a `POST /job`), the commit is durable before it returns.
    pub fn create_jobs(&self, intent: Option<u64>, jobs: Vec<NewJob>) -> Result<Vec<JobRecord>, StateError> {
        let txn = self.write(intent.is_none())?;
        let mut created = Vec::with_capacity(jobs.len());
        {
            let mut counters = txn.open_table(COUNTERS)?;
            let mut table = txn.open_table(JOBS)?;
            let mut queue = txn.open_table(QUEUE)?;
            let mut payloads = txn.open_table(PAYLOADS)?;
            for NewJob { mut record, payload } in jobs {
                record.queue_seq = next_counter(&mut counters, "queue")?;
                let key = (record.service.as_str(), record.name.as_str());
                table.insert(key, serde_json::to_vec(&record)?.as_slice())?;
                queue.insert(record.queue_seq, key)?;
                if let Some(payload) = &payload {
                    payloads.insert(key, payload.as_slice())?;
                }
                created.push(record);
            }
            if let Some(id) = intent {
                txn.open_table(INTENTS)?.remove(id)?;
            }
        }
        txn.commit()?;
        Ok(created)
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
            record.status = JobStatus::Running;
            record.start_time = Some(at);
            table.insert((service, job), serde_json::to_vec(&record)?.as_slice())?;
        }
        txn.commit()?;
        Ok(true)
    }

    /// Records a job's final state and log, and takes it off the queue.
    pub fn finish(&self, update: &JobRecord, log: &[u8]) -> Result<bool, StateError> {
        let txn = self.write(true)?;
        {
            let mut table = txn.open_table(JOBS)?;
            let key = (update.service.as_str(), update.name.as_str());
            if table.get(key)?.is_none() {
                // Deleted while running: nothing to record.
                return Ok(false);
            }
            table.insert(key, serde_json::to_vec(update)?.as_slice())?;
            txn.open_table(LOGS)?.insert(key, log)?;
            txn.open_table(QUEUE)?.remove(update.queue_seq)?;
            txn.open_table(PAYLOADS)?.remove(key)?;
        }
        txn.commit()?;
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
            let mut queue = txn.open_table(QUEUE)?;
            let mut payloads = txn.open_table(PAYLOADS)?;
            for record in doomed {
                let key = (service, record.name.as_str());
                table.remove(key)?;
                logs.remove(key)?;
                payloads.remove(key)?;
                if !record.status.is_final() {
                    queue.remove(record.queue_seq)?;
                }
                deleted.push(record);
            }
        }
        txn.commit()?;
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

fn decode<T: serde::de::DeserializeOwned>(
    value: Option<redb::AccessGuard<'_, &[u8]>>,
) -> Result<Option<T>, StateError> {
    Ok(match value {
        Some(v) => Some(serde_json::from_slice(v.value())?),
        None => None,
    })
}
