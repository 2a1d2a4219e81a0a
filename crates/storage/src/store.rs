//! The store's core: opening (with migration and recovery), the index reads and writes the S3
//! operations share, data streaming, and reclamation of unreferenced data files.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use crate::index::Db as _;
use bytes::Bytes;
use redb::{ReadableTable, ReadableTableMetadata, WriteTransaction};
use s3s::dto::StreamingBlob;
use s3s::{S3Error, S3Result, s3_error};
use time::OffsetDateTime;

use crate::blobs::Blobs;
use crate::events::ObjectEvents;
use crate::index::{
    BUCKETS, Blob, BucketRecord, GARBAGE, INLINE, Index, IndexError, ObjectRecord, PARTS, Segment, UPLOADS,
    decode, encode, objects_table, objects_table_name,
};

/// Errors of the core are S3 errors: their code is what the client gets.
pub(crate) type StoreError = S3Error;

impl From<IndexError> for S3Error {
    fn from(e: IndexError) -> Self {
        if let IndexError::Full(e) = &e {
            crate::space::refused(e);
            return crate::space::insufficient_storage();
        }
        tracing::error!(error = %e, "object store: metadata index failure");
        s3_error!(InternalError, "the object store's index failed")
    }
}

/// The store shared by the S3 service and the in-process [`crate::Store`] handle.
pub(crate) struct Core {
    pub index: Arc<Index>,
    pub blobs: Arc<Blobs>,
    pub events: Arc<dyn ObjectEvents>,
}

pub(crate) fn now_ns() -> i64 {
    i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

pub(crate) fn time_of(ns: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns)).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

impl Core {
    pub(crate) fn open(
        root: &Path,
        events: Arc<dyn ObjectEvents>,
        cache_bytes: usize,
    ) -> Result<Arc<Self>, crate::StorageError> {
        Self::open_as(root, events, true, cache_bytes)
    }

    /// Opens the store; `recover` finishes what a crash interrupted (migration, orphaned data
    /// files) and starts the reclaimer. Without it the store is looked at as it was left.
    pub(crate) fn open_as(
        root: &Path,
        events: Arc<dyn ObjectEvents>,
        recover: bool,
        cache_bytes: usize,
    ) -> Result<Arc<Self>, crate::StorageError> {
        if !recover {
            let index_path = root.join(crate::INDEX_FILE);
            if !index_path.exists() {
                return Err(crate::StorageError::Backend(format!(
                    "{} holds no indexed object store (a server start creates or migrates it)",
                    root.display()
                )));
            }
            let index = Index::open(&index_path, cache_bytes)
                .map_err(|e| crate::StorageError::Backend(e.to_string()))?;
            let blobs = Arc::new(Blobs::open(root.join(crate::BLOBS_DIR))?);
            return Ok(Arc::new(Self { index, blobs, events }));
        }
        std::fs::create_dir_all(root)?;
        std::fs::create_dir_all(root.join(crate::STORE_DIR))?;
        let index_path = root.join(crate::INDEX_FILE);
        let legacy = !index_path.exists() && crate::migrate::has_legacy_layout(root)?;
        let index =
            Index::open(&index_path, cache_bytes).map_err(|e| crate::StorageError::Backend(e.to_string()))?;
        let blobs = Arc::new(Blobs::open(root.join(crate::BLOBS_DIR))?);
        if legacy || crate::migrate::pending(&index)? {
            crate::migrate::run(root, &index, &blobs)?;
        }
        let core = Arc::new(Self { index, blobs, events });
        core.sweep_orphans()?;
        core.start_reclaimer();
        Ok(core)
    }

    /// Removes data files that no record refers to: written by a PUT that crashed before its
    /// commit, or orphaned by a commit whose reclamation did not run.
    fn sweep_orphans(&self) -> Result<(), crate::StorageError> {
        let referenced = self
            .referenced_files()
            .map_err(|e| crate::StorageError::Backend(e.to_string()))?;
        let mut removed = 0usize;
        for id in self.blobs.all_ids()? {
            if !referenced.contains(&id) {
                self.blobs.remove(id);
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(files = removed, "object store: removed unreferenced data files");
        }
        // Everything in the garbage table is gone or was just swept.
        let clear = || -> Result<(), IndexError> {
            let txn = self.index.db.begin_write()?;
            txn.delete_table(GARBAGE).db()?;
            let _ = txn.open_table(GARBAGE).db()?;
            txn.commit()?;
            Ok(())
        };
        clear().map_err(|e| crate::StorageError::Backend(e.to_string()))
    }

    /// Every data file id the index refers to, from objects and parts.
    pub(crate) fn referenced_files(&self) -> Result<HashSet<u128>, IndexError> {
        let txn = self.index.read()?;
        let mut ids = HashSet::new();
        let buckets = txn.open_table(BUCKETS).db()?;
        for entry in buckets.iter().db()? {
            let (name, _) = entry.db()?;
            let table_name = objects_table_name(name.value());
            let Ok(objects) = txn.open_table(objects_table(&table_name)) else {
                continue;
            };
            for entry in objects.iter().db()? {
                let (_, value) = entry.db()?;
                let record: ObjectRecord = decode(value.value())?;
                ids.extend(record.segments.iter().filter_map(|s| file_id(s.blob)));
            }
        }
        let parts = txn.open_table(PARTS).db()?;
        for entry in parts.iter().db()? {
            let (_, value) = entry.db()?;
            let part: crate::index::PartRecord = decode(value.value())?;
            ids.extend(file_id(part.segment.blob));
        }
        Ok(ids)
    }

    fn start_reclaimer(self: &Arc<Self>) {
        let Some(signal) = self.index.take_reclaim_signal() else {
            return;
        };
        let weak = Arc::downgrade(self);
        let _ = std::thread::Builder::new()
            .name("cloister-s3-reclaim".into())
            .spawn(move || {
                let mut next_expiry = std::time::Instant::now();
                loop {
                    match signal.recv_timeout(STALE_UPLOAD_CHECK) {
                        Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                    let Some(core) = weak.upgrade() else { return };
                    if std::time::Instant::now() >= next_expiry {
                        next_expiry = std::time::Instant::now() + STALE_UPLOAD_CHECK;
                        match core.abort_stale_uploads(STALE_UPLOAD_AGE) {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(uploads = n, "aborted multipart uploads idle for a week"),
                            Err(e) => tracing::warn!(error = %e, "cannot expire stale multipart uploads"),
                        }
                    }
                    core.reclaim();
                }
            });
    }

    /// Aborts multipart uploads begun longer than `age` ago, releasing their parts (as S3's
    /// `AbortIncompleteMultipartUpload` lifecycle rule does); returns how many.
    pub(crate) fn abort_stale_uploads(&self, age: std::time::Duration) -> S3Result<usize> {
        let cutoff = now_ns().saturating_sub(i64::try_from(age.as_nanos()).unwrap_or(i64::MAX));
        let mut stale = Vec::new();
        {
            let txn = self.index.read()?;
            let uploads = txn.open_table(UPLOADS).db()?;
            for entry in uploads.iter().db()? {
                let (id, value) = entry.db()?;
                let upload: crate::index::UploadRecord = decode(value.value())?;
                if upload.initiated < cutoff {
                    stale.push(id.value().to_owned());
                }
            }
        }
        if stale.is_empty() {
            return Ok(0);
        }
        self.index.write_blocking(move |txn| {
            let mut aborted = 0;
            for id in &stale {
                // Completed or aborted meanwhile: nothing to do.
                if txn.open_table(UPLOADS).db()?.get(id.as_str()).db()?.is_some() {
                    drop_upload(txn, id)?;
                    aborted += 1;
                }
            }
            Ok(aborted)
        })
    }

    /// Deletes garbage data files not being read, then forgets them.
    fn reclaim(&self) {
        let Ok(txn) = self.index.db.begin_read() else {
            return;
        };
        let Ok(table) = txn.open_table(GARBAGE) else {
            return;
        };
        let Ok(iter) = table.iter() else { return };
        let ids: Vec<u128> = iter
            .filter_map(|e| e.ok().map(|(k, _)| k.value()))
            .filter(|id| !self.index.is_pinned(*id))
            .take(10_000)
            .collect();
        drop(table);
        drop(txn);
        if ids.is_empty() {
            return;
        }
        for id in &ids {
            self.blobs.remove(*id);
        }
        // Forgetting them rides along with the next commit; a lost forget only means the
        // files are "deleted" again after a restart.
        let _ = self.index.write_blocking(move |txn| {
            let mut table = txn.open_table(GARBAGE).db()?;
            for id in ids {
                table.remove(id).db()?;
            }
            Ok(())
        });
    }
}

/// Multipart uploads idle this long are aborted (S3 leaves them forever unless a lifecycle rule
/// says otherwise; parts nobody will complete would hold disk space for good).
const STALE_UPLOAD_AGE: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);
const STALE_UPLOAD_CHECK: std::time::Duration = std::time::Duration::from_secs(3600);

pub(crate) fn file_id(blob: Blob) -> Option<u128> {
    match blob {
        Blob::File(id) => Some(id),
        Blob::Inline(_) => None,
    }
}

// ---- reads ----

pub(crate) fn bucket_record(txn: &redb::ReadTransaction, bucket: &str) -> S3Result<BucketRecord> {
    let table = txn.open_table(BUCKETS).db()?;
    let Some(value) = table.get(bucket).db()? else {
        return Err(s3_error!(NoSuchBucket, "the bucket {bucket:?} does not exist"));
    };
    Ok(decode(value.value())?)
}

pub(crate) fn object_record(
    txn: &redb::ReadTransaction,
    bucket: &str,
    key: &str,
) -> S3Result<Option<ObjectRecord>> {
    bucket_record(txn, bucket)?;
    let name = objects_table_name(bucket);
    let table = match txn.open_table(objects_table(&name)) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(IndexError::from(e).into()),
    };
    match table.get(key.as_bytes()).db()? {
        Some(value) => Ok(Some(decode(value.value())?)),
        None => Ok(None),
    }
}

pub(crate) fn no_such_key(key: &str) -> S3Error {
    s3_error!(NoSuchKey, "the object {key:?} does not exist")
}

impl Core {
    pub(crate) fn get_record(&self, bucket: &str, key: &str) -> S3Result<ObjectRecord> {
        let txn = self.index.read()?;
        object_record(&txn, bucket, key)?.ok_or_else(|| no_such_key(key))
    }

    pub(crate) fn bucket_exists(&self, bucket: &str) -> S3Result<bool> {
        let txn = self.index.read()?;
        let table = txn.open_table(BUCKETS).db()?;
        Ok(table.get(bucket).db()?.is_some())
    }

    /// The current version of `bucket/key` and a stream of the bytes `choose` picks from it
    /// (with whatever else `choose` derives, such as a checked precondition). A version replaced
    /// between the lookup and the read is looked up again.
    pub(crate) fn read<T>(
        &self,
        bucket: &str,
        key: &str,
        choose: impl Fn(&ObjectRecord) -> S3Result<(T, std::ops::Range<u64>)>,
    ) -> S3Result<(ObjectRecord, T, StreamingBlob)> {
        let mut attempt = 0;
        loop {
            let record = self.get_record(bucket, key)?;
            let (chosen, range) = choose(&record)?;
            match self.stream(&record, range) {
                Ok(body) => return Ok((record, chosen, body)),
                Err(e) if was_replaced(&e) && attempt < 3 => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// The bytes `range` (end exclusive) of an object, streamed from its segments. Data files
    /// are pinned until the stream ends so that an overwrite does not pull them away.
    pub(crate) fn stream(
        &self,
        record: &ObjectRecord,
        range: std::ops::Range<u64>,
    ) -> S3Result<StreamingBlob> {
        let mut pieces = Vec::new();
        let mut offset = 0u64;
        for segment in &record.segments {
            let (start, end) = (offset, offset + segment.size);
            offset = end;
            if end <= range.start || start >= range.end {
                continue;
            }
            let from = range.start.max(start) - start;
            let to = range.end.min(end) - start;
            pieces.push((segment.blob, from, to));
        }
        let mut inline = std::collections::HashMap::new();
        let file_ids: Vec<u128> = pieces.iter().filter_map(|(b, _, _)| file_id(*b)).collect();
        {
            let txn = self.index.read()?;
            let table = txn.open_table(INLINE).db()?;
            for (blob, _, _) in &pieces {
                if let Blob::Inline(id) = blob {
                    let data = table
                        .get(*id)
                        .db()?
                        .ok_or_else(|| IndexError::Corrupt("an inline object has no data".into()))?;
                    inline.insert(*id, Bytes::copy_from_slice(data.value()));
                }
            }
        }
        self.index.pin(&file_ids);
        let pin = PinGuard {
            index: self.index.clone(),
            ids: file_ids,
        };
        // Files are opened now, while pinned: an open file outlives its reclamation. One already
        // gone belongs to a version replaced since the index read; the caller looks again.
        let mut opened = std::collections::HashMap::new();
        for (blob, _, _) in &pieces {
            if let Blob::File(id) = blob
                && opened.len() < MAX_OPEN_AHEAD
                && !opened.contains_key(id)
            {
                match std::fs::File::open(self.blobs.path(*id)) {
                    Ok(file) => {
                        opened.insert(*id, file);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(replaced()),
                    Err(e) => {
                        tracing::error!(error = %e, "object store: cannot open a data file");
                        return Err(s3_error!(InternalError, "cannot read the object"));
                    }
                }
            }
        }
        if pieces.len() == 1
            && let Some((Blob::Inline(id), from, to)) = pieces.first()
            && let Some(data) = inline.get(id)
        {
            let piece = data.slice(usize::try_from(*from).unwrap_or(0)..usize::try_from(*to).unwrap_or(0));
            return Ok(StreamingBlob::wrap(futures::stream::once(async move {
                Ok::<_, std::io::Error>(piece)
            })));
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
        let blobs = self.blobs.clone();
        tokio::task::spawn_blocking(move || {
            let _pin = pin;
            // One pool for the whole stream, so a multipart object's parts reuse its buffers.
            let pool = Pool::new();
            for (blob, from, to) in pieces {
                let sent = match blob {
                    Blob::Inline(id) => {
                        let data = inline.get(&id).cloned().unwrap_or_default();
                        let piece =
                            data.slice(usize::try_from(from).unwrap_or(0)..usize::try_from(to).unwrap_or(0));
                        tx.blocking_send(Ok(piece)).is_ok()
                    }
                    Blob::File(id) => {
                        let file = match opened.remove(&id) {
                            Some(file) => Ok(file),
                            None => std::fs::File::open(blobs.path(id)),
                        };
                        send_file(file, from, to, &pool, &tx)
                    }
                };
                if !sent {
                    return;
                }
            }
        });
        Ok(StreamingBlob::wrap(ReceiverStream(rx)))
    }
}

/// Data files a read opens before it answers; a multipart object with more parts opens the rest
/// as it streams (so a read holds a bounded number of descriptors).
const MAX_OPEN_AHEAD: usize = 64;

const REPLACED: &str = "the object was replaced while it was being read";

fn replaced() -> S3Error {
    s3_error!(NoSuchKey, "{REPLACED}")
}

/// Whether [`Core::stream`] failed because the version it was given was replaced meanwhile.
fn was_replaced(e: &S3Error) -> bool {
    e.message() == Some(REPLACED)
}

/// Bytes read from a data file per piece of a streamed body.
const PIECE: usize = 1 << 20;

/// Idle read buffers a stream keeps for reuse.
const POOLED_PIECES: usize = 8;

/// A piece of a data file in a buffer that goes back to its stream's pool once the HTTP layer
/// has sent it, so a large read neither zeroes nor faults in fresh memory for every piece.
struct Piece {
    buffer: Vec<u8>,
    len: usize,
    pool: std::sync::mpsc::SyncSender<Vec<u8>>,
}

impl AsRef<[u8]> for Piece {
    fn as_ref(&self) -> &[u8] {
        &self.buffer[..self.len]
    }
}

impl Drop for Piece {
    fn drop(&mut self) {
        // A full pool (or a stream already over) frees the buffer instead.
        let _ = self.pool.try_send(std::mem::take(&mut self.buffer));
    }
}

/// The buffers of one stream: those the HTTP layer has sent come back here.
struct Pool {
    home: std::sync::mpsc::SyncSender<Vec<u8>>,
    returned: std::sync::mpsc::Receiver<Vec<u8>>,
}

impl Pool {
    fn new() -> Self {
        let (home, returned) = std::sync::mpsc::sync_channel(POOLED_PIECES);
        Self { home, returned }
    }

    /// A returned buffer, or a new one. Never waits for one to come back: the channel to the
    /// HTTP layer bounds how many are out, so allocating when none has returned stays bounded.
    fn buffer(&self) -> Vec<u8> {
        self.returned.try_recv().unwrap_or_else(|_| vec![0u8; PIECE])
    }
}

fn send_file(
    file: std::io::Result<std::fs::File>,
    from: u64,
    to: u64,
    pool: &Pool,
    tx: &tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
) -> bool {
    use std::os::unix::fs::FileExt;
    let file = match file {
        Ok(file) => file,
        Err(e) => {
            let _ = tx.blocking_send(Err(e));
            return false;
        }
    };
    let mut at = from;
    while at < to {
        let len = usize::try_from((to - at).min(PIECE as u64)).unwrap_or(PIECE);
        let mut buffer = pool.buffer();
        match file.read_at(&mut buffer[..len], at) {
            Ok(0) => {
                let _ = tx.blocking_send(Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "data file shorter than its record",
                )));
                return false;
            }
            Ok(n) => {
                at += n as u64;
                let piece = Piece {
                    buffer,
                    len: n,
                    pool: pool.home.clone(),
                };
                if tx.blocking_send(Ok(Bytes::from_owner(piece))).is_err() {
                    return false;
                }
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return false;
            }
        }
    }
    true
}

struct PinGuard {
    index: Arc<Index>,
    ids: Vec<u128>,
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        self.index.unpin(&self.ids);
    }
}

struct ReceiverStream(tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>);

impl futures::Stream for ReceiverStream {
    type Item = std::io::Result<Bytes>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

// ---- writes (run inside the shared transaction: validate, then mutate) ----

/// Stores an inline blob's data.
pub(crate) fn store_inline(txn: &WriteTransaction, id: u128, data: &[u8]) -> S3Result<()> {
    txn.open_table(INLINE).db()?.insert(id, data).db()?;
    Ok(())
}

/// Releases what a replaced or deleted record held: inline data at once, files after commit.
pub(crate) fn release(txn: &WriteTransaction, segments: &[Segment]) -> S3Result<()> {
    let mut inline = txn.open_table(INLINE).db()?;
    let mut garbage = txn.open_table(GARBAGE).db()?;
    for segment in segments {
        match segment.blob {
            Blob::Inline(id) => {
                inline.remove(id).db()?;
            }
            Blob::File(id) => {
                garbage.insert(id, ()).db()?;
            }
        }
    }
    Ok(())
}

/// Requires the bucket to exist, inside a write transaction.
pub(crate) fn require_bucket(txn: &WriteTransaction, bucket: &str) -> S3Result<()> {
    if txn.open_table(BUCKETS).db()?.get(bucket).db()?.is_none() {
        return Err(s3_error!(NoSuchBucket, "the bucket {bucket:?} does not exist"));
    }
    Ok(())
}

/// The current record of a key, inside a write transaction.
pub(crate) fn current(txn: &WriteTransaction, bucket: &str, key: &str) -> S3Result<Option<ObjectRecord>> {
    let name = objects_table_name(bucket);
    let table = txn.open_table(objects_table(&name)).db()?;
    let found = table.get(key.as_bytes()).db()?;
    Ok(match found {
        Some(value) => Some(decode(value.value())?),
        None => None,
    })
}

/// Puts `record` under `key`, releasing what it replaces.
pub(crate) fn install(
    txn: &WriteTransaction,
    bucket: &str,
    key: &str,
    record: &ObjectRecord,
) -> S3Result<()> {
    let value = encode(record)?;
    let name = objects_table_name(bucket);
    let mut table = txn.open_table(objects_table(&name)).db()?;
    let old = table
        .insert(key.as_bytes(), value.as_slice())
        .db()?
        .map(|v| v.value().to_vec());
    drop(table);
    if let Some(old) = old {
        let old: ObjectRecord = decode(&old)?;
        release(txn, &old.segments)?;
    }
    Ok(())
}

/// Removes `key`, releasing its data; returns whether it existed.
pub(crate) fn remove(txn: &WriteTransaction, bucket: &str, key: &str) -> S3Result<bool> {
    let name = objects_table_name(bucket);
    let mut table = txn.open_table(objects_table(&name)).db()?;
    let old = table.remove(key.as_bytes()).db()?.map(|v| v.value().to_vec());
    drop(table);
    match old {
        Some(old) => {
            let old: ObjectRecord = decode(&old)?;
            release(txn, &old.segments)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Number of objects in a bucket.
pub(crate) fn object_count(txn: &WriteTransaction, bucket: &str) -> S3Result<u64> {
    let name = objects_table_name(bucket);
    Ok(txn.open_table(objects_table(&name)).db()?.len().db()?)
}

/// Aborts a bucket's pending multipart uploads (S3 deletes a bucket that has some).
pub(crate) fn abort_uploads_of(txn: &WriteTransaction, bucket: &str) -> S3Result<()> {
    let mut ids = Vec::new();
    {
        let uploads = txn.open_table(UPLOADS).db()?;
        for entry in uploads.iter().db()? {
            let (id, value) = entry.db()?;
            let upload: crate::index::UploadRecord = decode(value.value())?;
            if upload.bucket == bucket {
                ids.push(id.value().to_owned());
            }
        }
    }
    for id in ids {
        drop_upload(txn, &id)?;
    }
    Ok(())
}

/// Deletes an upload and its parts, releasing their data.
pub(crate) fn drop_upload(txn: &WriteTransaction, upload_id: &str) -> S3Result<()> {
    txn.open_table(UPLOADS).db()?.remove(upload_id).db()?;
    let mut parts = txn.open_table(PARTS).db()?;
    let mut segments = Vec::new();
    let mut numbers = Vec::new();
    for entry in parts.range((upload_id, 0u32)..=(upload_id, u32::MAX)).db()? {
        let (k, v) = entry.db()?;
        let part: crate::index::PartRecord = decode(v.value())?;
        numbers.push(k.value().1);
        segments.push(part.segment);
    }
    for n in numbers {
        parts.remove((upload_id, n)).db()?;
    }
    drop(parts);
    release(txn, &segments)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::request;
    use crate::s3::EmbeddedS3;
    use s3s::S3;
    use s3s::dto::*;

    #[tokio::test]
    async fn idle_multipart_uploads_are_aborted_and_their_parts_reclaimed() {
        let dir = tempfile::tempdir().unwrap();
        let core = Core::open(dir.path(), Arc::new(crate::NoEvents), crate::DEFAULT_CACHE_BYTES).unwrap();
        let s3 = EmbeddedS3(core.clone());
        s3.create_bucket(request(CreateBucketInput {
            bucket: "bkt".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
        let created = s3
            .create_multipart_upload(request(CreateMultipartUploadInput {
                bucket: "bkt".into(),
                key: "big".into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .output;
        let upload_id = created.upload_id.unwrap();
        let part = bytes::Bytes::from(vec![3u8; 200 * 1024]);
        s3.upload_part(request(UploadPartInput {
            bucket: "bkt".into(),
            key: "big".into(),
            upload_id: upload_id.clone(),
            part_number: 1,
            content_length: Some(part.len() as i64),
            body: Some(StreamingBlob::wrap(futures::stream::once(async move {
                Ok::<_, std::io::Error>(part)
            }))),
            ..Default::default()
        }))
        .await
        .unwrap();
        assert_eq!(core.blobs.all_ids().unwrap().len(), 1);
        // A fresh upload is not idle.
        assert_eq!(core.abort_stale_uploads(STALE_UPLOAD_AGE).unwrap(), 0);
        let core2 = core.clone();
        let aborted =
            tokio::task::spawn_blocking(move || core2.abort_stale_uploads(std::time::Duration::ZERO))
                .await
                .unwrap()
                .unwrap();
        assert_eq!(aborted, 1);
        let listed = s3
            .list_parts(request(ListPartsInput {
                bucket: "bkt".into(),
                key: "big".into(),
                upload_id,
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(*listed.code(), s3s::S3ErrorCode::NoSuchUpload);
        for _ in 0..100 {
            if core.blobs.all_ids().unwrap().is_empty() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("the aborted upload's part was not reclaimed");
    }

    /// Runs [`send_file`] over `from..to` of a file holding `data` and collects what it sends,
    /// dropping each piece as the HTTP layer would.
    fn streamed(data: &[u8], pieces: &[(u64, u64)]) -> (Vec<u8>, Option<std::io::Error>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, data).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let pieces = pieces.to_vec();
        let sender = std::thread::spawn(move || {
            let pool = Pool::new();
            for (from, to) in pieces {
                if !send_file(std::fs::File::open(&path), from, to, &pool, &tx) {
                    return;
                }
            }
        });
        let (mut got, mut error) = (Vec::new(), None);
        while let Some(piece) = rx.blocking_recv() {
            match piece {
                Ok(bytes) => got.extend_from_slice(&bytes),
                Err(e) => error = Some(e),
            }
        }
        sender.join().unwrap();
        (got, error)
    }

    #[test]
    fn pooled_pieces_carry_the_exact_bytes() {
        let data: Vec<u8> = (0..3 * PIECE + 12_345).map(|i| (i % 251) as u8).collect();
        let len = data.len() as u64;
        let (got, error) = streamed(&data, &[(0, len)]);
        assert!(error.is_none());
        assert!(got == data, "the whole file, through reused buffers");
        // Segments of one stream share the pool; a reused buffer longer than the piece it
        // carries must not leak its old tail.
        let (got, error) = streamed(&data, &[(5, len), (0, 100), (len - 7, len)]);
        assert!(error.is_none());
        let expected: Vec<u8> = [&data[5..], &data[..100], &data[data.len() - 7..]].concat();
        assert!(got == expected, "ranges of several segments");
    }

    #[test]
    fn a_data_file_shorter_than_its_record_is_an_error() {
        let data = vec![7u8; 1000];
        let (got, error) = streamed(&data, &[(0, 2000)]);
        assert_eq!(got, data, "what the file holds is sent");
        let error = error.expect("the missing bytes are an error, not a short body");
        assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
