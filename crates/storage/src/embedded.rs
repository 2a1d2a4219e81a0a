//! The in-process handle on the object store, used by the platform (job inputs and outputs,
//! the bucket API) with the same semantics and events as the S3 port.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::index::Db as _;
use redb::ReadableTable;
use s3s::dto::*;
use s3s::{S3, S3ErrorCode, S3Request};

use crate::access::Gate;
use crate::credentials::{CredentialError, JobCredential, JobCredentials, JobScope};
use crate::events::ObjectEvents;
use crate::index::{BUCKETS, Blob, decode, objects_table, objects_table_name};
use crate::listing::ListParams;
use crate::names::{validate_bucket_name, validate_object_key};
use crate::s3::EmbeddedS3;
use crate::store::{Core, time_of};
use crate::{BucketInfo, ObjectInfo, ObjectPage, StorageError};

/// An in-process request (no HTTP, no credentials) for the S3 operations.
pub(crate) fn request<T>(input: T) -> S3Request<T> {
    S3Request {
        input,
        method: http::Method::GET,
        uri: http::Uri::from_static("/"),
        headers: http::HeaderMap::new(),
        extensions: http::Extensions::new(),
        credentials: None,
        region: None,
        service: None,
        trailing_headers: None,
    }
}

fn storage_error(e: s3s::S3Error) -> StorageError {
    match e.code() {
        S3ErrorCode::NoSuchBucket => StorageError::NoSuchBucket,
        S3ErrorCode::NoSuchKey => StorageError::NoSuchKey,
        S3ErrorCode::BucketAlreadyExists | S3ErrorCode::BucketAlreadyOwnedByYou => StorageError::BucketExists,
        S3ErrorCode::BucketNotEmpty => StorageError::BucketNotEmpty,
        S3ErrorCode::Custom(code) if &**code == "InsufficientStorage" => StorageError::InsufficientStorage,
        S3ErrorCode::InvalidBucketName | S3ErrorCode::InvalidArgument | S3ErrorCode::KeyTooLongError => {
            StorageError::InvalidName(e.message().unwrap_or("invalid name").to_owned())
        }
        _ => StorageError::Backend(e.message().unwrap_or(e.code().as_str()).to_owned()),
    }
}

/// An in-process handle on the embedded object store. Cheap to clone.
///
/// Writes made through it raise the same events as writes made over the S3 port, so a job's
/// outputs can trigger the next service in a pipeline.
#[derive(Clone)]
pub struct Store {
    s3: EmbeddedS3,
    /// `None` for a store opened for inspection.
    jobs: Option<Arc<JobCredentials>>,
}

impl Store {
    /// Opens (creating if needed) the store rooted at `root`, migrating a data directory of
    /// the earlier s3s-fs layout on first start.
    pub fn open(root: &Path, events: Arc<dyn ObjectEvents>) -> Result<Self, StorageError> {
        Self::open_with_cache(root, events, crate::DEFAULT_CACHE_BYTES)
    }

    /// [`Self::open`], keeping at most `cache_bytes` of the index in memory (so the server's
    /// memory is bounded by configuration, not by how many objects it has stored).
    pub fn open_with_cache(
        root: &Path,
        events: Arc<dyn ObjectEvents>,
        cache_bytes: usize,
    ) -> Result<Self, StorageError> {
        let core = Core::open(root, events, cache_bytes)?;
        let jobs = JobCredentials::open(root, core.index.clone())?;
        Ok(Self {
            s3: EmbeddedS3(core),
            jobs: Some(Arc::new(jobs)),
        })
    }

    /// Opens the store at `root` as it was left, for [`Self::check`]: no migration, no removal
    /// of orphaned data files, no reclamation (a server start does those).
    pub fn inspect(root: &Path) -> Result<Self, StorageError> {
        Ok(Self {
            s3: EmbeddedS3(Core::open_as(
                root,
                Arc::new(crate::NoEvents),
                false,
                crate::DEFAULT_CACHE_BYTES,
            )?),
            jobs: None,
        })
    }

    fn core(&self) -> &Core {
        &self.s3.0
    }

    /// The S3 HTTP service for [`crate::serve`]: SigV4 (or V2) signed with the administrator's
    /// key pair, which may do everything, or with a job credential from
    /// [`Self::issue_job_credential`], which may do what its scope allows.
    pub fn s3_service(&self, access_key: &str, secret_key: &str) -> crate::serve::S3Http {
        let gate = Gate {
            admin_access_key: access_key.to_owned(),
            admin_secret_key: secret_key.into(),
            jobs: self.jobs.clone(),
        };
        let mut builder = s3s::service::S3ServiceBuilder::new(self.s3.clone());
        builder.set_auth(gate.clone());
        builder.set_access(gate);
        crate::serve::S3Http {
            s3: builder.build(),
            store: self.clone(),
        }
    }

    /// Issues a credential for one job: it may read exactly `scope.read` and write under
    /// `scope.write` (see [`JobScope`]) over the S3 endpoint until `lifetime` has passed or it is
    /// revoked, and survives a restart meanwhile. `label` (a job's name) names it in the log.
    /// The secret is in the returned value only: the store keeps no copy of it.
    pub async fn issue_job_credential(
        &self,
        scope: JobScope,
        lifetime: std::time::Duration,
        label: &str,
    ) -> Result<JobCredential, CredentialError> {
        let jobs = self.jobs.as_ref().ok_or(CredentialError::Unavailable)?;
        jobs.issue(scope, lifetime, label).await
    }

    /// Revokes a job credential at once (requests signed with it are refused from now on). An
    /// unknown id is not an error: it was revoked already or has expired.
    pub async fn revoke_job_credential(&self, access_key_id: &str) -> Result<(), CredentialError> {
        let jobs = self.jobs.as_ref().ok_or(CredentialError::Unavailable)?;
        jobs.revoke(access_key_id).await
    }

    /// The CORS rules of a bucket, for the HTTP layer's preflight answers.
    pub(crate) fn cors_rules(&self, bucket: &str) -> Option<Vec<crate::index::CorsRule>> {
        let txn = self.core().index.read().ok()?;
        crate::store::bucket_record(&txn, bucket).ok()?.cors
    }

    /// Creates a bucket; an existing bucket is not an error when `exist_ok`.
    pub async fn create_bucket(&self, bucket: &str, exist_ok: bool) -> Result<(), StorageError> {
        validate_bucket_name(bucket)?;
        let input = CreateBucketInput {
            bucket: bucket.to_owned(),
            ..Default::default()
        };
        match self.s3.create_bucket(request(input)).await.map_err(storage_error) {
            Err(StorageError::BucketExists) if exist_ok => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Refuses, as the store's own writes do, a write of `needed` bytes that would leave the
    /// disk without its reserve for metadata commits: for data that other stores on the same
    /// disk (the platform's state) are about to take.
    pub fn ensure_room(&self, needed: u64) -> Result<(), StorageError> {
        self.core().blobs.ensure_room(needed).map_err(storage_error)
    }

    /// The object-created events not yet reported done, oldest first (see [`crate::events`]):
    /// after a crash, or after a delivery that failed, the sink handles these again.
    pub fn pending_events(&self) -> Result<Vec<crate::ObjectCreated>, StorageError> {
        let txn = self.core().index.read()?;
        Ok(crate::outbox::pending(&txn)?)
    }

    /// Removes events from the outbox: call it once their consequences are durable. The removal
    /// waits a little for another write to commit with (see `Index::write_patient`), and
    /// returns once it is durable.
    pub async fn events_done(&self, ids: Vec<u64>) -> Result<(), StorageError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.core()
            .index
            .write_patient(move |txn| Ok(crate::outbox::remove(txn, &ids)?))
            .await
            .map_err(storage_error)
    }

    /// Whether the bucket exists.
    pub async fn bucket_exists(&self, bucket: &str) -> Result<bool, StorageError> {
        validate_bucket_name(bucket)?;
        self.core().bucket_exists(bucket).map_err(storage_error)
    }

    /// Deletes a bucket; with `force` its objects go too, otherwise it must be empty.
    pub async fn delete_bucket(&self, bucket: &str, force: bool) -> Result<(), StorageError> {
        validate_bucket_name(bucket)?;
        self.core()
            .delete_bucket(bucket, force)
            .await
            .map_err(storage_error)
    }

    /// All buckets, sorted by name.
    pub async fn list_buckets(&self) -> Result<Vec<BucketInfo>, StorageError> {
        let backend = |e: &dyn std::fmt::Display| StorageError::Backend(e.to_string());
        let txn = self.core().index.read().map_err(|e| backend(&e))?;
        let table = txn.open_table(BUCKETS).map_err(|e| backend(&e))?;
        let mut buckets = Vec::new();
        for entry in table.iter().map_err(|e| backend(&e))? {
            let (name, value) = entry.map_err(|e| backend(&e))?;
            let record: crate::index::BucketRecord = decode(value.value()).map_err(|e| backend(&e))?;
            buckets.push(BucketInfo {
                name: name.value().to_owned(),
                created: Some(time_of(record.created)),
            });
        }
        Ok(buckets)
    }

    /// One page of the objects under `prefix`, continuing after the `continuation` token.
    pub async fn list_objects(
        &self,
        bucket: &str,
        prefix: &str,
        continuation: Option<&str>,
        max_keys: u32,
    ) -> Result<ObjectPage, StorageError> {
        validate_bucket_name(bucket)?;
        let after = match continuation {
            Some(token) => Some(crate::listing::decode_token(token).map_err(storage_error)?),
            None => None,
        };
        let max = i32::try_from(max_keys.clamp(1, 1000)).unwrap_or(1000);
        let params = ListParams::new(Some(prefix), None, after, Some(max)).map_err(storage_error)?;
        let listed = self.core().list(bucket, &params).map_err(storage_error)?;
        Ok(ObjectPage {
            next: listed
                .truncated
                .then(|| listed.last.as_deref().map(crate::listing::encode_token))
                .flatten(),
            objects: listed
                .objects
                .into_iter()
                .map(|(key, record)| object_info(key, &record))
                .collect(),
        })
    }

    /// Metadata of one object, `None` when it does not exist.
    pub async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectInfo>, StorageError> {
        validate_bucket_name(bucket)?;
        validate_object_key(key)?;
        match self.core().get_record(bucket, key) {
            Ok(record) => Ok(Some(object_info(key.to_owned(), &record))),
            Err(e) if *e.code() == S3ErrorCode::NoSuchKey => Ok(None),
            Err(e) => Err(storage_error(e)),
        }
    }

    /// Uploads a local file as an object (raising events).
    pub async fn put_file(&self, bucket: &str, key: &str, path: &Path) -> Result<(), StorageError> {
        let file = tokio::fs::File::open(path).await?;
        let len = file.metadata().await?.len();
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20);
        self.put_stream(bucket, key, StreamingBlob::wrap(stream), len)
            .await
    }

    /// Uploads bytes as an object (raising events).
    pub async fn put_bytes(&self, bucket: &str, key: &str, data: bytes::Bytes) -> Result<(), StorageError> {
        let len = data.len() as u64;
        let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(data) });
        self.put_stream(bucket, key, StreamingBlob::wrap(stream), len)
            .await
    }

    async fn put_stream(
        &self,
        bucket: &str,
        key: &str,
        body: StreamingBlob,
        len: u64,
    ) -> Result<(), StorageError> {
        validate_bucket_name(bucket)?;
        validate_object_key(key)?;
        let input = PutObjectInput {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            body: Some(body),
            content_length: Some(i64::try_from(len).unwrap_or(i64::MAX)),
            ..Default::default()
        };
        self.s3.put_object(request(input)).await.map_err(storage_error)?;
        Ok(())
    }

    /// The file holding an object's bytes, when it is one file (objects small enough to live
    /// in the index, and multipart objects, have none). Data files are immutable: a copy taken
    /// from the path is the object as it was when this was called, or fails if it was replaced
    /// and reclaimed meanwhile.
    pub fn object_file(&self, bucket: &str, key: &str) -> Result<PathBuf, StorageError> {
        validate_bucket_name(bucket)?;
        validate_object_key(key)?;
        let record = self.core().get_record(bucket, key).map_err(storage_error)?;
        match record.segments.as_slice() {
            [segment] => match segment.blob {
                Blob::File(id) => Ok(self.core().blobs.path(id)),
                Blob::Inline(_) => Err(StorageError::Backend("the object has no file of its own".into())),
            },
            _ => Err(StorageError::Backend("the object has no file of its own".into())),
        }
    }

    /// Copies an object into a local file; returns its size.
    pub async fn get_to_file(&self, bucket: &str, key: &str, dest: &Path) -> Result<u64, StorageError> {
        use futures::StreamExt;
        use tokio::io::AsyncWriteExt;
        validate_bucket_name(bucket)?;
        validate_object_key(key)?;
        let (record, (), mut body) = self
            .core()
            .read(bucket, key, |record| Ok(((), 0..record.size)))
            .map_err(storage_error)?;
        if record.size <= crate::blobs::INLINE_MAX as u64 {
            // A small object's data is in memory (inline in the index): gather it, then create
            // and write the file in one blocking call, instead of a thread hand-off for each of
            // tokio's file operations (a job's input is staged between its gate opening and its
            // first line).
            let mut data = Vec::with_capacity(usize::try_from(record.size).unwrap_or(0));
            while let Some(chunk) = body.next().await {
                data.extend_from_slice(&chunk.map_err(|e| StorageError::Backend(e.to_string()))?);
            }
            let dest = dest.to_path_buf();
            let written = data.len() as u64;
            tokio::task::spawn_blocking(move || std::fs::write(dest, data))
                .await
                .map_err(|e| StorageError::Backend(e.to_string()))??;
            return Ok(written);
        }
        let mut file = tokio::fs::File::create(dest).await?;
        let mut written = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| StorageError::Backend(e.to_string()))?;
            file.write_all(&chunk).await?;
            written += chunk.len() as u64;
        }
        file.flush().await?;
        Ok(written)
    }

    /// Deletes an object; a missing object is not an error (as in S3).
    pub async fn delete_object(&self, bucket: &str, key: &str) -> Result<(), StorageError> {
        validate_bucket_name(bucket)?;
        validate_object_key(key)?;
        let input = DeleteObjectInput {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            ..Default::default()
        };
        self.s3
            .delete_object(request(input))
            .await
            .map_err(storage_error)?;
        Ok(())
    }

    /// Checks the store's consistency: every record's data exists, and no data file is
    /// unreferenced (after a crash, the next start removes such files).
    pub fn check(&self) -> Result<crate::CheckReport, StorageError> {
        let backend = |e: &dyn std::fmt::Display| StorageError::Backend(e.to_string());
        let referenced = self.core().referenced_files().map_err(|e| backend(&e))?;
        let files: std::collections::HashSet<u128> = self.core().blobs.all_ids()?.into_iter().collect();
        let txn = self.core().index.read().map_err(|e| backend(&e))?;
        let garbage: std::collections::HashSet<u128> = txn
            .open_table(crate::index::GARBAGE)
            .map_err(|e| backend(&e))?
            .iter()
            .map_err(|e| backend(&e))?
            .filter_map(|e| e.ok().map(|(k, _)| k.value()))
            .collect();
        let mut objects = 0u64;
        for bucket in txn
            .open_table(BUCKETS)
            .map_err(|e| backend(&e))?
            .iter()
            .map_err(|e| backend(&e))?
        {
            let (name, _) = bucket.map_err(|e| backend(&e))?;
            let table_name = objects_table_name(name.value());
            if let Ok(table) = txn.open_table(objects_table(&table_name)) {
                objects += redb::ReadableTableMetadata::len(&table).map_err(|e| backend(&e))?;
            }
        }
        Ok(crate::CheckReport {
            objects,
            data_files: files.len() as u64,
            missing_files: referenced.difference(&files).count() as u64,
            unreferenced_files: files
                .iter()
                .filter(|id| !referenced.contains(id) && !garbage.contains(id))
                .count() as u64,
        })
    }
}

fn object_info(key: String, record: &crate::index::ObjectRecord) -> ObjectInfo {
    ObjectInfo {
        key,
        size: record.size,
        etag: record.etag.clone(),
        last_modified: Some(time_of(record.modified)),
    }
}

impl Core {
    pub(crate) async fn delete_bucket(&self, bucket: &str, force: bool) -> s3s::S3Result<()> {
        let b = bucket.to_owned();
        self.index
            .write(move |txn| {
                let buckets = txn.open_table(BUCKETS).db()?;
                if buckets.get(b.as_str()).db()?.is_none() {
                    return Err(s3s::s3_error!(NoSuchBucket, "the bucket {b:?} does not exist"));
                }
                drop(buckets);
                if !force && crate::store::object_count(txn, &b)? > 0 {
                    return Err(s3s::s3_error!(
                        BucketNotEmpty,
                        "the bucket {b:?} still holds objects"
                    ));
                }
                let name = objects_table_name(&b);
                let mut segments = Vec::new();
                {
                    let table = txn.open_table(objects_table(&name)).db()?;
                    for entry in table.iter().db()? {
                        let (_, v) = entry.db()?;
                        let record: crate::index::ObjectRecord = decode(v.value())?;
                        segments.extend(record.segments);
                    }
                }
                crate::store::release(txn, &segments)?;
                txn.delete_table(objects_table(&name)).db()?;
                crate::store::abort_uploads_of(txn, &b)?;
                txn.open_table(BUCKETS).db()?.remove(b.as_str()).db()?;
                Ok(())
            })
            .await
    }
}
