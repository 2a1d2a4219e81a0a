//! The metadata index: one redb database holding buckets, objects, multipart uploads and the
//! data of small objects. Every change is one transaction; concurrent changes share a commit
//! (group commit), so a burst of small uploads costs one fsync, not one each.
//!
//! Writers submit operations to a single commit thread. An operation validates first and
//! mutates after: one that returns an error must have changed nothing, because it shares its
//! transaction with others that will commit.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::events::{ObjectCreated, Raised};

pub(crate) const BUCKETS: TableDefinition<&str, &[u8]> = TableDefinition::new("buckets");
/// Data of objects small enough to live in the index, by blob id.
pub(crate) const INLINE: TableDefinition<u128, &[u8]> = TableDefinition::new("inline");
pub(crate) const UPLOADS: TableDefinition<&str, &[u8]> = TableDefinition::new("uploads");
/// Parts by (upload id, part number).
pub(crate) const PARTS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("parts");
/// Data files no record refers to any more, deleted after the commit that orphaned them.
pub(crate) const GARBAGE: TableDefinition<u128, ()> = TableDefinition::new("garbage");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// The objects of one bucket, by key bytes (so that listings can skip past a common prefix by
/// seeking to the prefix's byte successor).
pub(crate) fn objects_table(bucket: &str) -> TableDefinition<'_, &'static [u8], &'static [u8]> {
    TableDefinition::new(bucket)
}

/// Table names of object tables are `o/<bucket>`; this keeps the name alive for the borrow.
pub(crate) fn objects_table_name(bucket: &str) -> String {
    format!("o/{bucket}")
}

/// Errors of the index; cloneable because one commit failure answers every writer in it.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum IndexError {
    #[error("metadata index: {0}")]
    Db(String),
    #[error("corrupt metadata record: {0}")]
    Corrupt(String),
    #[error("the metadata index is closed")]
    Closed,
    #[error("metadata index: the disk is full: {0}")]
    Full(String),
}

/// Whether redb failed for lack of space.
fn storage_full(e: &redb::StorageError) -> bool {
    matches!(e, redb::StorageError::Io(io) if crate::space::is_full(io))
}

impl From<redb::StorageError> for IndexError {
    fn from(e: redb::StorageError) -> Self {
        if storage_full(&e) {
            Self::Full(e.to_string())
        } else {
            Self::Db(e.to_string())
        }
    }
}

impl From<redb::CommitError> for IndexError {
    fn from(e: redb::CommitError) -> Self {
        match e {
            redb::CommitError::Storage(e) => e.into(),
            e => Self::Db(e.to_string()),
        }
    }
}

impl From<redb::TransactionError> for IndexError {
    fn from(e: redb::TransactionError) -> Self {
        match e {
            redb::TransactionError::Storage(e) => e.into(),
            e => Self::Db(e.to_string()),
        }
    }
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for IndexError {
            fn from(e: $t) -> Self {
                Self::Db(e.to_string())
            }
        }
    )*};
}
db_err!(redb::DatabaseError, redb::TableError);

impl From<serde_json::Error> for IndexError {
    fn from(e: serde_json::Error) -> Self {
        Self::Corrupt(e.to_string())
    }
}

/// Where an object's (or part's) bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Blob {
    /// In the index's `inline` table.
    Inline(u128),
    /// In an immutable data file named by the id.
    File(u128),
}

/// S3 checksums, base64 as S3 sends them; composite ones end in `-N`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Checksums {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32c: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha1: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc64nvme: Option<String>,
}

impl Checksums {
    pub(crate) fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// One stretch of an object's bytes: the whole object, or one part of a multipart object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Segment {
    pub blob: Blob,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Checksums::is_empty")]
    pub checksums: Checksums,
}

/// The standard headers stored with an object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Headers {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_disposition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_language: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub website_redirect_location: Option<String>,
}

impl Headers {
    /// Drops `aws-chunked` from the content encoding: it is a transfer detail of the upload,
    /// not the object's encoding.
    pub(crate) fn strip_aws_chunked(&mut self) {
        if let Some(encoding) = self.content_encoding.take() {
            let kept: Vec<&str> = encoding
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty() && !e.eq_ignore_ascii_case("aws-chunked"))
                .collect();
            if !kept.is_empty() {
                self.content_encoding = Some(kept.join(","));
            }
        }
    }
}

/// An object's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ObjectRecord {
    pub size: u64,
    /// Without quotes; `-N` for multipart objects.
    pub etag: String,
    /// Unix time in nanoseconds.
    pub modified: i64,
    pub segments: Vec<Segment>,
    /// Whether `segments` are the parts of a multipart upload.
    #[serde(default)]
    pub multipart: bool,
    #[serde(default)]
    pub headers: Headers,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Checksums::is_empty")]
    pub checksums: Checksums,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// A bucket's metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BucketRecord {
    pub created: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Vec<CorsRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
}

/// One CORS rule of a bucket, as S3's `CORSRule`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CorsRule {
    #[serde(default)]
    pub id: Option<String>,
    pub allowed_origins: Vec<String>,
    pub allowed_methods: Vec<String>,
    #[serde(default)]
    pub allowed_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub max_age_seconds: Option<i32>,
}

/// A multipart upload in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UploadRecord {
    pub bucket: String,
    pub key: String,
    pub initiated: i64,
    #[serde(default)]
    pub headers: Headers,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// The checksum algorithm the client chose at creation (`CRC32`, …), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_algorithm: Option<String>,
    /// With an algorithm: `FULL_OBJECT` (the CRC of the whole object, combined from the parts'
    /// CRCs) or `COMPOSITE` (the checksum of the parts' checksums, `-N`); uploads recorded
    /// before this field are composite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// One uploaded part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PartRecord {
    pub segment: Segment,
    /// MD5 of the part, hex.
    pub etag: String,
    pub modified: i64,
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, IndexError> {
    Ok(serde_json::to_vec(value)?)
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, IndexError> {
    Ok(serde_json::from_slice(bytes)?)
}

type Finish = Box<dyn FnOnce(Option<&IndexError>) + Send>;
type Op = Box<dyn FnOnce(&WriteTransaction) -> Finish + Send>;

/// A write queued for the commit thread.
struct Submitted {
    op: Op,
    /// Housekeeping no client waits for (removing settled events): held up to [`PATIENCE`]
    /// for a write that is not, so that it rides on that write's commit instead of paying a
    /// durable commit of its own.
    patient: bool,
}

/// The index: reads go straight to redb; writes go through the commit thread.
pub(crate) struct Index {
    pub db: Arc<crate::reopen::ReopeningDatabase>,
    queue: Mutex<Option<std::sync::mpsc::Sender<Submitted>>>,
    /// Data files being read (by GET streams); the reclaimer leaves them until released.
    pins: Mutex<HashMap<u128, usize>>,
    /// Woken after a commit that left garbage.
    reclaim: std::sync::mpsc::SyncSender<()>,
    reclaim_rx: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    /// Joined on drop, so that the database is closed when the store is (a reopen would
    /// otherwise find it still open).
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Most operations a commit takes at once; bounds the latency of the first in a burst.
const MAX_BATCH: usize = 512;

/// How long a patient write waits for another to share its commit: under load (uploads every
/// few milliseconds) it always finds one; when idle it commits alone after this.
const PATIENCE: std::time::Duration = std::time::Duration::from_millis(50);

impl Index {
    /// Opens (creating if needed) the index; redb keeps at most `cache_bytes` of it in memory.
    pub(crate) fn open(path: &Path, cache_bytes: usize) -> Result<Arc<Self>, IndexError> {
        let db = Arc::new(crate::reopen::ReopeningDatabase::create(path, cache_bytes)?);
        let txn = db.begin_write()?;
        {
            let _ = txn.open_table(BUCKETS)?;
            let _ = txn.open_table(INLINE)?;
            let _ = txn.open_table(UPLOADS)?;
            let _ = txn.open_table(PARTS)?;
            let _ = txn.open_table(GARBAGE)?;
            let _ = txn.open_table(META)?;
            let _ = txn.open_table(crate::outbox::OUTBOX)?;
        }
        txn.commit()?;
        let (tx, rx) = std::sync::mpsc::channel::<Submitted>();
        let (reclaim, reclaim_rx) = std::sync::mpsc::sync_channel(1);
        let wake_reclaimer = reclaim.clone();
        let committer_db = db.clone();
        let committer = std::thread::Builder::new()
            .name("cloister-s3-commit".into())
            .spawn(move || commit_loop(&committer_db, &rx, &wake_reclaimer))
            .map_err(|e| IndexError::Db(format!("cannot start the commit thread: {e}")))?;
        Ok(Arc::new(Self {
            db,
            queue: Mutex::new(Some(tx)),
            pins: Mutex::default(),
            reclaim,
            reclaim_rx: Mutex::new(Some(reclaim_rx)),
            committer: Mutex::new(Some(committer)),
        }))
    }

    /// Takes the reclaimer's wake-up channel (once).
    pub(crate) fn take_reclaim_signal(&self) -> Option<std::sync::mpsc::Receiver<()>> {
        self.reclaim_rx.lock().ok()?.take()
    }

    fn submit<R: Send + 'static>(
        &self,
        op: impl FnOnce(&WriteTransaction) -> Result<R, crate::store::StoreError> + Send + 'static,
        patient: bool,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<R, crate::store::StoreError>>, IndexError> {
        self.submit_then(patient, op, |result, failed| match failed {
            Some(e) => Err(e.clone().into()),
            None => result,
        })
    }

    /// As [`Self::submit`]; `then` runs on the commit thread once the commit ended, with the
    /// commit's error if it failed, before the writer is answered.
    fn submit_then<R: Send + 'static, S: Send + 'static>(
        &self,
        patient: bool,
        op: impl FnOnce(&WriteTransaction) -> Result<R, crate::store::StoreError> + Send + 'static,
        then: impl FnOnce(
            Result<R, crate::store::StoreError>,
            Option<&IndexError>,
        ) -> Result<S, crate::store::StoreError>
        + Send
        + 'static,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<S, crate::store::StoreError>>, IndexError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let run: Op = Box::new(move |txn: &WriteTransaction| -> Finish {
            let result = op(txn);
            Box::new(move |failed: Option<&IndexError>| {
                let _ = tx.send(then(result, failed));
            })
        });
        let queue = self.queue.lock().map_err(|_| IndexError::Closed)?;
        queue
            .as_ref()
            .ok_or(IndexError::Closed)?
            .send(Submitted { op: run, patient })
            .map_err(|_| IndexError::Closed)?;
        Ok(rx)
    }

    /// Runs `op` in a shared write transaction and returns once that transaction is durable.
    pub(crate) async fn write<R: Send + 'static>(
        &self,
        op: impl FnOnce(&WriteTransaction) -> Result<R, crate::store::StoreError> + Send + 'static,
    ) -> Result<R, crate::store::StoreError> {
        self.submit(op, false)?.await.map_err(|_| IndexError::Closed)?
    }

    /// As [`Self::write`], for housekeeping nobody waits for: the commit thread holds it up to
    /// [`PATIENCE`] for another write to commit with. Durable like any other once it returns.
    pub(crate) async fn write_patient<R: Send + 'static>(
        &self,
        op: impl FnOnce(&WriteTransaction) -> Result<R, crate::store::StoreError> + Send + 'static,
    ) -> Result<R, crate::store::StoreError> {
        self.submit(op, true)?.await.map_err(|_| IndexError::Closed)?
    }

    /// Runs a write that may raise an object-created event (see [`crate::events`]), on the
    /// commit thread: the sink hears of the event just before the commit
    /// ([`ObjectEvents::object_committing`](crate::events::ObjectEvents::object_committing)),
    /// so it can ready the event's jobs while the commit is flushed, and gets it once the
    /// commit is durable, before the writer is answered (or hears that it was abandoned).
    /// Delivering it there rather than from the writer's task also saves the two thread
    /// hand-offs that stood between an upload's commit and its jobs. `content` is the object's
    /// bytes when they are in memory, for the sink (see `ObjectEvents::object_committing`).
    pub(crate) async fn write_raising<R: Send + 'static>(
        &self,
        events: Arc<dyn crate::events::ObjectEvents>,
        content: Option<bytes::Bytes>,
        op: impl FnOnce(&WriteTransaction) -> Result<(R, Option<ObjectCreated>), crate::store::StoreError>
        + Send
        + 'static,
    ) -> Result<(R, Option<Raised>), crate::store::StoreError> {
        let announce = events.clone();
        let op = move |txn: &WriteTransaction| {
            let (out, event) = op(txn)?;
            if let Some(event) = &event {
                crate::events::announce(&*announce, event, content.as_deref());
            }
            Ok((out, event))
        };
        let rx = self.submit_then(false, op, move |result, failed| {
            let (out, event) = result?;
            match failed {
                Some(e) => {
                    if let Some(event) = &event {
                        crate::events::abandon(&*events, event);
                    }
                    Err(e.clone().into())
                }
                None => Ok((out, event.map(|event| crate::events::deliver(&*events, event)))),
            }
        })?;
        rx.await.map_err(|_| IndexError::Closed)?
    }

    /// As [`Self::write`], from a blocking thread.
    pub(crate) fn write_blocking<R: Send + 'static>(
        &self,
        op: impl FnOnce(&WriteTransaction) -> Result<R, crate::store::StoreError> + Send + 'static,
    ) -> Result<R, crate::store::StoreError> {
        self.submit(op, false)?
            .blocking_recv()
            .map_err(|_| IndexError::Closed)?
    }

    pub(crate) fn read(&self) -> Result<redb::ReadTransaction, IndexError> {
        Ok(self.db.begin_read()?)
    }

    pub(crate) fn pin(&self, ids: &[u128]) {
        if let Ok(mut pins) = self.pins.lock() {
            for id in ids {
                *pins.entry(*id).or_default() += 1;
            }
        }
    }

    pub(crate) fn unpin(&self, ids: &[u128]) {
        if let Ok(mut pins) = self.pins.lock() {
            for id in ids {
                if let Some(n) = pins.get_mut(id) {
                    *n -= 1;
                    if *n == 0 {
                        pins.remove(id);
                    }
                }
            }
        }
        let _ = self.reclaim.try_send(());
    }

    pub(crate) fn is_pinned(&self, id: u128) -> bool {
        self.pins.lock().is_ok_and(|pins| pins.contains_key(&id))
    }
}

impl Drop for Index {
    fn drop(&mut self) {
        if let Ok(mut queue) = self.queue.lock() {
            queue.take();
        }
        if let Some(committer) = self.committer.lock().ok().and_then(|mut c| c.take()) {
            let _ = committer.join();
        }
    }
}

fn commit_loop(
    db: &crate::reopen::ReopeningDatabase,
    rx: &std::sync::mpsc::Receiver<Submitted>,
    reclaim: &std::sync::mpsc::SyncSender<()>,
) {
    let take_queued = |batch: &mut Vec<Submitted>| {
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
    };
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        take_queued(&mut batch);
        if batch.iter().all(|s| s.patient) {
            let until = std::time::Instant::now() + PATIENCE;
            while batch.len() < MAX_BATCH {
                // Disconnected (the index is closing) or the wait is over: commit what is here.
                let Ok(next) = rx.recv_timeout(until.saturating_duration_since(std::time::Instant::now()))
                else {
                    break;
                };
                let eager = !next.patient;
                batch.push(next);
                if eager {
                    take_queued(&mut batch);
                    break;
                }
            }
        }
        let txn = match db.begin_write() {
            Ok(txn) => txn,
            Err(e) => {
                let e = IndexError::from(e);
                tracing::error!(error = %e, "object index: cannot begin a transaction");
                for submitted in batch {
                    // Ops answer through their finish closure; without a transaction there is
                    // nothing to run them in, so each is failed unrun.
                    drop(submitted);
                }
                continue;
            }
        };
        let finishes: Vec<Finish> = batch.into_iter().map(|s| (s.op)(&txn)).collect();
        let garbage = txn
            .open_table(GARBAGE)
            .ok()
            .and_then(|t| t.first().ok().flatten().map(|_| ()))
            .is_some();
        let committed = txn.commit().map_err(IndexError::from);
        if let Err(e) = &committed {
            tracing::error!(error = %e, "object index: commit failed");
        }
        for finish in finishes {
            finish(committed.as_ref().err());
        }
        if garbage {
            let _ = reclaim.try_send(());
        }
    }
}

/// Turns redb's many error types into [`IndexError`] at a call site (`?` converts only once).
pub(crate) trait Db<T> {
    fn db(self) -> Result<T, IndexError>;
}

impl<T, E> Db<T> for Result<T, E>
where
    IndexError: From<E>,
{
    fn db(self) -> Result<T, IndexError> {
        self.map_err(IndexError::from)
    }
}

impl From<IndexError> for crate::StorageError {
    fn from(e: IndexError) -> Self {
        Self::Backend(e.to_string())
    }
}
