//! The embedded S3 endpoint: `s3s-fs` for the protocol and the on-disk layout, wrapped so that
//! every operation validates names first and every object write raises events.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;
use s3s::dto::*;
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};
use time::OffsetDateTime;

use crate::events::{ObjectCreated, ObjectEvents, WriteIntent};
use crate::names::{validate_bucket_name, validate_object_key};
use crate::{BucketInfo, ObjectInfo, ObjectPage, StorageError};

/// The S3 implementation served on the S3 port and used in-process through [`Store`].
struct EmbeddedS3 {
    fs: s3s_fs::FileSystem,
    root: PathBuf,
    events: Arc<dyn ObjectEvents>,
    /// Names the temporary files of [`crate::small_put`].
    small_puts: Arc<std::sync::atomic::AtomicU64>,
}

fn check_bucket(bucket: &str) -> S3Result<()> {
    validate_bucket_name(bucket)
        .map_err(|e| S3Error::with_message(S3ErrorCode::InvalidBucketName, e.to_string()))
}

fn check_key(bucket: &str, key: &str) -> S3Result<()> {
    check_bucket(bucket)?;
    validate_object_key(key).map_err(|e| S3Error::with_message(S3ErrorCode::InvalidArgument, e.to_string()))
}

impl EmbeddedS3 {
    fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        // Only called after `check_key`, so the key cannot leave the bucket directory.
        self.root.join(bucket).join(key)
    }

    async fn before_write(&self, bucket: &str, key: &str) -> S3Result<Option<WriteIntent>> {
        let events = self.events.clone();
        let (bucket, key) = (bucket.to_owned(), key.to_owned());
        tokio::task::spawn_blocking(move || events.before_write(&bucket, &key))
            .await
            .map_err(|e| s3_error!(InternalError, "event hook panicked: {e}"))?
            .map_err(|e| {
                tracing::error!(error = %e, "cannot record upload intent");
                s3_error!(InternalError, "cannot record upload intent")
            })
    }

    /// Reports a finished write. The caller answers the client only after this returns, so an
    /// acknowledged write always has its consequences (jobs) recorded. The object's metadata is
    /// read in the same blocking call as the hook runs: each hop to the blocking pool costs tens
    /// of microseconds on the path from an upload to its job.
    async fn after_write(
        &self,
        intent: Option<WriteIntent>,
        bucket: &str,
        key: &str,
        etag: Option<&ETag>,
        principal: Option<&str>,
    ) -> S3Result<()> {
        let Some(intent) = intent else { return Ok(()) };
        let path = self.object_path(bucket, key);
        let (bucket, key) = (bucket.to_owned(), key.to_owned());
        let etag = etag.map(|e| e.value().to_owned()).unwrap_or_default();
        let principal = principal.unwrap_or("cloister").to_owned();
        let events = self.events.clone();
        tokio::task::spawn_blocking(move || {
            let meta = std::fs::metadata(&path)
                .map_err(|e| s3_error!(InternalError, "object vanished after write: {e}"))?;
            let created = ObjectCreated {
                bucket,
                key,
                size: meta.len(),
                etag,
                time: meta
                    .modified()
                    .map(OffsetDateTime::from)
                    .unwrap_or_else(|_| OffsetDateTime::now_utc()),
                principal,
            };
            events.object_created(intent, &created).map_err(|e| {
                tracing::error!(error = %e, "cannot record object-created event");
                s3_error!(InternalError, "cannot record object-created event")
            })
        })
        .await
        .map_err(|e| s3_error!(InternalError, "event hook panicked: {e}"))?
    }

    /// Performs a write that may create an object under a service's input path, with its
    /// consequences recorded before the client hears of it. The intent's commit (an fsync) runs
    /// alongside the write rather than before it: all that matters is that it is durable before
    /// the acknowledgement, and it was timed before the write began, so recovery still
    /// recognises the object as this write's. A write whose intent cannot be recorded is
    /// answered with an error (the object may then exist without jobs, as after any failed PUT
    /// that a client retries).
    async fn recorded_write<T>(
        &self,
        bucket: &str,
        key: &str,
        principal: Option<String>,
        write: impl std::future::Future<Output = S3Result<S3Response<T>>>,
        etag: impl FnOnce(&T) -> Option<ETag>,
    ) -> S3Result<S3Response<T>> {
        let (intent, written) = tokio::join!(self.before_write(bucket, key), write);
        let (intent, resp) = match (intent, written) {
            (Ok(intent), Ok(resp)) => (intent, resp),
            (Ok(intent), Err(e)) => {
                self.write_failed(intent).await;
                return Err(e);
            }
            (Err(e), _) => return Err(e),
        };
        let etag = etag(&resp.output);
        self.after_write(intent, bucket, key, etag.as_ref(), principal.as_deref())
            .await?;
        Ok(resp)
    }

    /// Writes a PUT that [`crate::small_put::applies`] to in one blocking call.
    async fn put_small(&self, mut input: PutObjectInput) -> S3Result<S3Response<PutObjectOutput>> {
        let length = input
            .content_length
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0);
        let Some(body) = input.body.take() else {
            return Err(s3_error!(IncompleteBody));
        };
        let body = crate::small_put::read_body(body, length).await?;
        let (root, counter) = (self.root.clone(), self.small_puts.clone());
        let (bucket, key, content_type) = (input.bucket, input.key, input.content_type);
        let written = tokio::task::spawn_blocking(move || {
            crate::small_put::write(&root, &counter, &bucket, &key, &body, content_type.as_deref())
        })
        .await
        .map_err(|e| s3_error!(InternalError, "object write panicked: {e}"))?;
        match written {
            Ok(Some(etag)) => Ok(S3Response::new(PutObjectOutput {
                e_tag: Some(ETag::Strong(etag)),
                ..Default::default()
            })),
            Ok(None) => Err(s3_error!(NoSuchBucket)),
            Err(e) => {
                tracing::error!(error = %e, "cannot write an object");
                Err(s3_error!(InternalError, "cannot write the object"))
            }
        }
    }

    /// s3s-fs creates a missing bucket when an object is written into it; S3 answers
    /// `NoSuchBucket`, and so do we.
    async fn require_bucket(&self, bucket: &str) -> S3Result<()> {
        match tokio::fs::metadata(self.root.join(bucket)).await {
            Ok(meta) if meta.is_dir() => Ok(()),
            _ => Err(s3_error!(NoSuchBucket)),
        }
    }

    async fn write_failed(&self, intent: Option<WriteIntent>) {
        if let Some(intent) = intent {
            let events = self.events.clone();
            let _ = tokio::task::spawn_blocking(move || events.write_failed(intent)).await;
        }
    }
}

/// Forwards an operation to `s3s-fs` after checking the bucket name.
macro_rules! bucket_op {
    ($name:ident, $input:ty, $output:ty) => {
        fn $name<'a, 'b>(&'a self, req: S3Request<$input>) -> BoxFuture<'b, S3Result<S3Response<$output>>>
        where
            'a: 'b,
            Self: 'b,
        {
            Box::pin(async move {
                check_bucket(&req.input.bucket)?;
                self.fs.$name(req).await
            })
        }
    };
}

/// Forwards an operation to `s3s-fs` after checking the bucket name and object key.
macro_rules! key_op {
    ($name:ident, $input:ty, $output:ty) => {
        fn $name<'a, 'b>(&'a self, req: S3Request<$input>) -> BoxFuture<'b, S3Result<S3Response<$output>>>
        where
            'a: 'b,
            Self: 'b,
        {
            Box::pin(async move {
                check_key(&req.input.bucket, &req.input.key)?;
                self.fs.$name(req).await
            })
        }
    };
}

#[async_trait::async_trait]
impl S3 for EmbeddedS3 {
    bucket_op!(create_bucket, CreateBucketInput, CreateBucketOutput);
    bucket_op!(
        get_bucket_location,
        GetBucketLocationInput,
        GetBucketLocationOutput
    );
    bucket_op!(head_bucket, HeadBucketInput, HeadBucketOutput);
    bucket_op!(list_objects, ListObjectsInput, ListObjectsOutput);
    bucket_op!(list_objects_v2, ListObjectsV2Input, ListObjectsV2Output);
    key_op!(get_object, GetObjectInput, GetObjectOutput);
    key_op!(head_object, HeadObjectInput, HeadObjectOutput);
    key_op!(delete_object, DeleteObjectInput, DeleteObjectOutput);
    key_op!(upload_part, UploadPartInput, UploadPartOutput);
    key_op!(list_parts, ListPartsInput, ListPartsOutput);
    key_op!(
        abort_multipart_upload,
        AbortMultipartUploadInput,
        AbortMultipartUploadOutput
    );

    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        self.fs.list_buckets(req).await
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        check_bucket(&req.input.bucket)?;
        // s3s-fs deletes a bucket with everything in it; S3 refuses a non-empty bucket.
        let dir = self.root.join(&req.input.bucket);
        let mut entries = tokio::fs::read_dir(&dir)
            .await
            .map_err(|_| s3_error!(NoSuchBucket))?;
        if entries.next_entry().await.ok().flatten().is_some() {
            return Err(s3_error!(BucketNotEmpty));
        }
        self.fs.delete_bucket(req).await
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        for object in &req.input.delete.objects {
            check_key(&req.input.bucket, &object.key)?;
        }
        self.fs.delete_objects(req).await
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        check_key(&req.input.bucket, &req.input.key)?;
        if let CopySource::Bucket { bucket, key, .. } = &req.input.copy_source {
            check_key(bucket, key)?;
        }
        self.fs.upload_part_copy(req).await
    }

    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        check_key(&bucket, &key)?;
        let principal = req.credentials.as_ref().map(|c| c.access_key.clone());
        if crate::small_put::applies(&req.input, req.trailing_headers.is_some()) {
            let write = self.put_small(req.input);
            return self
                .recorded_write(&bucket, &key, principal, write, |out| out.e_tag.clone())
                .await;
        }
        self.require_bucket(&bucket).await?;
        self.recorded_write(&bucket, &key, principal, self.fs.put_object(req), |out| {
            out.e_tag.clone()
        })
        .await
    }

    async fn copy_object(&self, req: S3Request<CopyObjectInput>) -> S3Result<S3Response<CopyObjectOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        check_key(&bucket, &key)?;
        if let CopySource::Bucket { bucket, key, .. } = &req.input.copy_source {
            check_key(bucket, key)?;
        }
        let principal = req.credentials.as_ref().map(|c| c.access_key.clone());
        self.require_bucket(&bucket).await?;
        self.recorded_write(&bucket, &key, principal, self.fs.copy_object(req), |out| {
            out.copy_object_result.as_ref().and_then(|r| r.e_tag.clone())
        })
        .await
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        check_key(&req.input.bucket, &req.input.key)?;
        self.require_bucket(&req.input.bucket).await?;
        self.fs.create_multipart_upload(req).await
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        check_key(&bucket, &key)?;
        let principal = req.credentials.as_ref().map(|c| c.access_key.clone());
        self.require_bucket(&bucket).await?;
        self.recorded_write(
            &bucket,
            &key,
            principal,
            self.fs.complete_multipart_upload(req),
            |out| out.e_tag.clone(),
        )
        .await
    }
}

fn request<T>(input: T) -> S3Request<T> {
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

fn storage_error(e: S3Error) -> StorageError {
    match e.code() {
        S3ErrorCode::NoSuchBucket => StorageError::NoSuchBucket,
        S3ErrorCode::NoSuchKey => StorageError::NoSuchKey,
        S3ErrorCode::BucketAlreadyExists | S3ErrorCode::BucketAlreadyOwnedByYou => StorageError::BucketExists,
        S3ErrorCode::BucketNotEmpty => StorageError::BucketNotEmpty,
        S3ErrorCode::InvalidBucketName | S3ErrorCode::InvalidArgument => {
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
    inner: Arc<EmbeddedS3>,
}

impl Store {
    /// Opens (creating if needed) the store rooted at `root`.
    pub fn open(root: &Path, events: Arc<dyn ObjectEvents>) -> Result<Self, StorageError> {
        std::fs::create_dir_all(root)?;
        let root = root.canonicalize()?;
        let fs = s3s_fs::FileSystem::new(&root).map_err(|e| StorageError::Backend(format!("{e:?}")))?;
        Ok(Self {
            inner: Arc::new(EmbeddedS3 {
                fs,
                root,
                events,
                small_puts: Arc::default(),
            }),
        })
    }

    /// The S3 HTTP service (SigV4 with one access/secret key pair) for [`crate::serve`].
    pub fn s3_service(&self, access_key: &str, secret_key: &str) -> s3s::service::S3Service {
        let mut builder = s3s::service::S3ServiceBuilder::new(SharedS3(self.inner.clone()));
        builder.set_auth(s3s::auth::SimpleAuth::from_single(access_key, secret_key));
        builder.build()
    }

    /// Creates a bucket; an existing bucket is not an error when `exist_ok`.
    pub async fn create_bucket(&self, bucket: &str, exist_ok: bool) -> Result<(), StorageError> {
        validate_bucket_name(bucket)?;
        let input = CreateBucketInput {
            bucket: bucket.to_owned(),
            ..Default::default()
        };
        match self
            .inner
            .create_bucket(request(input))
            .await
            .map_err(storage_error)
        {
            Err(StorageError::BucketExists) if exist_ok => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Whether the bucket exists.
    pub async fn bucket_exists(&self, bucket: &str) -> Result<bool, StorageError> {
        validate_bucket_name(bucket)?;
        Ok(tokio::fs::metadata(self.inner.root.join(bucket))
            .await
            .is_ok_and(|m| m.is_dir()))
    }

    /// Deletes a bucket; with `force` its objects go too, otherwise it must be empty.
    pub async fn delete_bucket(&self, bucket: &str, force: bool) -> Result<(), StorageError> {
        validate_bucket_name(bucket)?;
        let input = DeleteBucketInput {
            bucket: bucket.to_owned(),
            ..Default::default()
        };
        if force {
            self.inner
                .fs
                .delete_bucket(request(input))
                .await
                .map_err(storage_error)?;
        } else {
            self.inner
                .delete_bucket(request(input))
                .await
                .map_err(storage_error)?;
        }
        Ok(())
    }

    /// All buckets, sorted by name.
    pub async fn list_buckets(&self) -> Result<Vec<BucketInfo>, StorageError> {
        let out = self
            .inner
            .list_buckets(request(ListBucketsInput::default()))
            .await
            .map_err(storage_error)?;
        let mut buckets: Vec<BucketInfo> = out
            .output
            .buckets
            .unwrap_or_default()
            .into_iter()
            .filter_map(|b| {
                Some(BucketInfo {
                    name: b.name?,
                    created: b.creation_date.map(OffsetDateTime::from),
                })
            })
            .collect();
        buckets.sort_by(|a, b| a.name.cmp(&b.name));
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
        let input = ListObjectsV2Input {
            bucket: bucket.to_owned(),
            prefix: (!prefix.is_empty()).then(|| prefix.to_owned()),
            continuation_token: continuation.map(str::to_owned),
            max_keys: Some(i32::try_from(max_keys.clamp(1, 1000)).unwrap_or(1000)),
            ..Default::default()
        };
        let out = self
            .inner
            .list_objects_v2(request(input))
            .await
            .map_err(storage_error)?
            .output;
        let objects = out
            .contents
            .unwrap_or_default()
            .into_iter()
            .filter_map(|o| {
                Some(ObjectInfo {
                    key: o.key?,
                    size: u64::try_from(o.size.unwrap_or(0)).unwrap_or(0),
                    etag: o.e_tag.map(|e| e.value().to_owned()).unwrap_or_default(),
                    last_modified: o.last_modified.map(OffsetDateTime::from),
                })
            })
            .collect();
        Ok(ObjectPage {
            objects,
            next: out.next_continuation_token,
        })
    }

    /// Metadata of one object, `None` when it does not exist.
    pub async fn head(&self, bucket: &str, key: &str) -> Result<Option<ObjectInfo>, StorageError> {
        validate_bucket_name(bucket)?;
        validate_object_key(key)?;
        let input = HeadObjectInput {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            ..Default::default()
        };
        match self.inner.head_object(request(input)).await {
            Ok(out) => Ok(Some(ObjectInfo {
                key: key.to_owned(),
                size: u64::try_from(out.output.content_length.unwrap_or(0)).unwrap_or(0),
                etag: out.output.e_tag.map(|e| e.value().to_owned()).unwrap_or_default(),
                last_modified: out.output.last_modified.map(OffsetDateTime::from),
            })),
            Err(e) if matches!(e.code(), S3ErrorCode::NoSuchKey) => Ok(None),
            Err(e) => Err(storage_error(e)),
        }
    }

    /// Uploads a local file as an object (raising events) and returns its metadata.
    pub async fn put_file(&self, bucket: &str, key: &str, path: &Path) -> Result<(), StorageError> {
        let file = tokio::fs::File::open(path).await?;
        let len = file.metadata().await?.len();
        let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
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
        self.inner
            .put_object(request(input))
            .await
            .map_err(storage_error)?;
        Ok(())
    }

    /// The file holding an object (which may not exist); names are validated first.
    pub fn object_file(&self, bucket: &str, key: &str) -> Result<PathBuf, StorageError> {
        validate_bucket_name(bucket)?;
        validate_object_key(key)?;
        Ok(self.inner.object_path(bucket, key))
    }

    /// Copies an object into a local file; returns its size. Objects are plain files in this
    /// store, so this is one kernel-side copy rather than a stream through the S3 layer.
    pub async fn get_to_file(&self, bucket: &str, key: &str, dest: &Path) -> Result<u64, StorageError> {
        validate_bucket_name(bucket)?;
        validate_object_key(key)?;
        let bucket_dir = self.inner.root.join(bucket);
        let source = self.inner.object_path(bucket, key);
        let dest = dest.to_path_buf();
        let copied = tokio::task::spawn_blocking(move || {
            // A key that is a folder of other keys is not an object.
            if std::fs::metadata(&source).is_ok_and(|m| m.is_dir()) {
                return Err(std::io::Error::from(std::io::ErrorKind::NotFound));
            }
            std::fs::copy(&source, &dest)
        })
        .await
        .map_err(|e| StorageError::Backend(e.to_string()))?;
        match copied {
            Ok(size) => Ok(size),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if tokio::fs::metadata(&bucket_dir).await.is_ok() {
                    Err(StorageError::NoSuchKey)
                } else {
                    Err(StorageError::NoSuchBucket)
                }
            }
            Err(e) => Err(e.into()),
        }
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
        self.inner
            .delete_object(request(input))
            .await
            .map_err(storage_error)?;
        Ok(())
    }
}

/// `S3ServiceBuilder` takes the implementation by value; this shares it with [`Store`].
struct SharedS3(Arc<EmbeddedS3>);

macro_rules! shared_ops {
    ($($name:ident($input:ty) -> $output:ty;)*) => {
        impl S3 for SharedS3 {
            $(fn $name<'a, 'b>(&'a self, req: S3Request<$input>) -> BoxFuture<'b, S3Result<S3Response<$output>>>
            where
                'a: 'b,
                Self: 'b,
            {
                self.0.$name(req)
            })*
        }
    };
}

shared_ops! {
    create_bucket(CreateBucketInput) -> CreateBucketOutput;
    get_bucket_location(GetBucketLocationInput) -> GetBucketLocationOutput;
    head_bucket(HeadBucketInput) -> HeadBucketOutput;
    list_objects(ListObjectsInput) -> ListObjectsOutput;
    list_objects_v2(ListObjectsV2Input) -> ListObjectsV2Output;
    get_object(GetObjectInput) -> GetObjectOutput;
    head_object(HeadObjectInput) -> HeadObjectOutput;
    delete_object(DeleteObjectInput) -> DeleteObjectOutput;
    create_multipart_upload(CreateMultipartUploadInput) -> CreateMultipartUploadOutput;
    upload_part(UploadPartInput) -> UploadPartOutput;
    list_parts(ListPartsInput) -> ListPartsOutput;
    abort_multipart_upload(AbortMultipartUploadInput) -> AbortMultipartUploadOutput;
    list_buckets(ListBucketsInput) -> ListBucketsOutput;
    delete_bucket(DeleteBucketInput) -> DeleteBucketOutput;
    delete_objects(DeleteObjectsInput) -> DeleteObjectsOutput;
    upload_part_copy(UploadPartCopyInput) -> UploadPartCopyOutput;
    put_object(PutObjectInput) -> PutObjectOutput;
    copy_object(CopyObjectInput) -> CopyObjectOutput;
    complete_multipart_upload(CompleteMultipartUploadInput) -> CompleteMultipartUploadOutput;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::NoEvents;

    fn put_input(key: &str, body: &'static [u8], content_type: Option<&str>) -> PutObjectInput {
        let stream =
            futures::stream::once(async move { Ok::<_, std::io::Error>(bytes::Bytes::from_static(body)) });
        PutObjectInput {
            bucket: "bkt".to_owned(),
            key: key.to_owned(),
            body: Some(StreamingBlob::wrap(stream)),
            content_length: Some(body.len() as i64),
            content_type: content_type.map(str::to_owned),
            ..Default::default()
        }
    }

    fn companion(root: &Path, key: &str, kind: &str) -> Vec<u8> {
        use base64::Engine;
        let encode = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        std::fs::read(root.join(format!(
            ".bucket-{}.object-{}.{kind}.json",
            encode("bkt"),
            encode(key)
        )))
        .unwrap()
    }

    /// Small PUTs must leave on disk what s3s-fs would (byte for byte, but for the empty
    /// attributes file it writes and they skip), or GET and HEAD would read them differently;
    /// this also catches a change of s3s-fs's layout when it is upgraded.
    #[tokio::test]
    async fn small_puts_are_stored_as_s3s_fs_stores_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Arc::new(NoEvents)).unwrap();
        store.create_bucket("bkt", false).await.unwrap();
        let root = store.inner.root.clone();
        for (i, content_type) in [None, Some("text/plain; charset=utf-8")].into_iter().enumerate() {
            let (fast, slow) = (format!("fast/{i}.txt"), format!("slow/{i}.txt"));
            let input = put_input(&fast, b"hello small world", content_type);
            assert!(crate::small_put::applies(&input, false));
            let fast_out = store.inner.put_object(request(input)).await.unwrap().output;
            let slow_out = store
                .inner
                .fs
                .put_object(request(put_input(&slow, b"hello small world", content_type)))
                .await
                .unwrap()
                .output;
            assert_eq!(fast_out.e_tag, slow_out.e_tag);
            assert_eq!(
                std::fs::read(root.join("bkt").join(&fast)).unwrap(),
                std::fs::read(root.join("bkt").join(&slow)).unwrap()
            );
            assert_eq!(
                companion(&root, &fast, "internal"),
                companion(&root, &slow, "internal")
            );
            match content_type {
                Some(_) => assert_eq!(
                    companion(&root, &fast, "metadata"),
                    companion(&root, &slow, "metadata")
                ),
                // s3s-fs writes `{}`; no file reads back the same (checked by the GET below).
                None => assert_eq!(companion(&root, &slow, "metadata"), b"{}"),
            }
            let got = store
                .inner
                .get_object(request(
                    GetObjectInput::builder()
                        .bucket("bkt".into())
                        .key(fast)
                        .build()
                        .unwrap(),
                ))
                .await
                .unwrap()
                .output;
            assert_eq!(got.content_type.as_deref(), content_type);
            assert_eq!(got.e_tag, slow_out.e_tag);
            assert_eq!(got.content_length, Some(17));
        }
        // Overwriting without a content type drops the earlier one.
        let input = put_input("fast/1.txt", b"plain again", None);
        store.inner.put_object(request(input)).await.unwrap();
        let got = store
            .inner
            .get_object(request(
                GetObjectInput::builder()
                    .bucket("bkt".into())
                    .key("fast/1.txt".into())
                    .build()
                    .unwrap(),
            ))
            .await
            .unwrap()
            .output;
        assert_eq!(got.content_type, None);
        assert_eq!(got.content_length, Some(11));
        // Nothing temporary is left behind.
        let leftovers: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".part"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[tokio::test]
    async fn small_puts_refuse_bodies_of_the_wrong_length_and_missing_buckets() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Arc::new(NoEvents)).unwrap();
        let err = store
            .inner
            .put_object(request(put_input("k", b"data", None)))
            .await
            .unwrap_err();
        assert_eq!(*err.code(), S3ErrorCode::NoSuchBucket);
        // Large bodies (s3s-fs's path) too: it would create the bucket.
        let large = store
            .put_bytes("bkt", "k", bytes::Bytes::from(vec![0u8; 2 << 20]))
            .await;
        assert!(matches!(large, Err(StorageError::NoSuchBucket)), "{large:?}");
        assert!(!store.inner.root.join("bkt").exists());
        store.create_bucket("bkt", false).await.unwrap();
        for announced in [3, 5] {
            let mut input = put_input("k", b"data", None);
            input.content_length = Some(announced);
            let err = store.inner.put_object(request(input)).await.unwrap_err();
            assert_eq!(*err.code(), S3ErrorCode::IncompleteBody, "{announced}");
            assert!(!store.inner.root.join("bkt/k").exists());
        }
        // Conditions, checksums and metadata go to s3s-fs.
        let mut input = put_input("k", b"data", None);
        input.if_none_match = Some(IfNoneMatch::Any);
        assert!(!crate::small_put::applies(&input, false));
        let mut input = put_input("k", b"data", None);
        input.metadata = Some([("a".to_owned(), "b".to_owned())].into());
        assert!(!crate::small_put::applies(&input, false));
        assert!(!crate::small_put::applies(&put_input("k", b"data", None), true));
    }
}
