//! The S3 operations over the core store: names are checked first, metadata comes from the
//! index, and every object write raises its events before the client hears of it.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::index::Db as _;
use redb::ReadableTable;
use s3s::dto::*;
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};

use crate::blobs::{Received, Wanted};
use crate::conditions;
use crate::events::Raised;
use crate::index::{
    BUCKETS, Blob, BucketRecord, Checksums, CorsRule, Headers, ObjectRecord, PARTS, PartRecord, Segment,
    UPLOADS, UploadRecord, decode, encode, objects_table, objects_table_name,
};
use crate::listing::{self, ListParams};
use crate::names::{validate_bucket_name, validate_object_key};
use crate::outbox::EventDraft;
use crate::store::{
    Core, bucket_record, current, file_id, install, no_such_key, now_ns, require_bucket, time_of,
};

/// The S3 service's implementation; cheap to clone.
#[derive(Clone)]
pub(crate) struct EmbeddedS3(pub Arc<Core>);

const MAX_PART_NUMBER: i32 = 10_000;
/// The one owner of everything in a single-tenant store.
const OWNER_ID: &str = "cloister";

/// An S3 DTO with its five checksum fields taken from a [`Checksums`] and the rest defaulted,
/// for struct update syntax: `PutObjectOutput { e_tag, ..with_checksums!(PutObjectOutput, sums) }`.
macro_rules! with_checksums {
    ($dto:ident, $sums:expr) => {{
        let sums: &Checksums = &$sums;
        $dto {
            checksum_crc32: sums.crc32.clone(),
            checksum_crc32c: sums.crc32c.clone(),
            checksum_sha1: sums.sha1.clone(),
            checksum_sha256: sums.sha256.clone(),
            checksum_crc64nvme: sums.crc64nvme.clone(),
            ..Default::default()
        }
    }};
}

pub(crate) fn owner() -> Owner {
    Owner {
        display_name: Some(OWNER_ID.to_owned()),
        id: Some(OWNER_ID.to_owned()),
    }
}

pub(crate) fn check_bucket(bucket: &str) -> S3Result<()> {
    validate_bucket_name(bucket)
        .map_err(|e| S3Error::with_message(S3ErrorCode::InvalidBucketName, e.to_string()))
}

pub(crate) fn check_key(bucket: &str, key: &str) -> S3Result<()> {
    check_bucket(bucket)?;
    validate_object_key(key).map_err(|e| match key.len() > crate::names::MAX_KEY_LEN {
        true => S3Error::with_message(S3ErrorCode::KeyTooLongError, e.to_string()),
        false => S3Error::with_message(S3ErrorCode::InvalidArgument, e.to_string()),
    })
}

fn quoted(etag: &str) -> ETag {
    ETag::Strong(etag.to_owned())
}

fn timestamp(ns: i64) -> Timestamp {
    Timestamp::from(time_of(ns))
}

fn format_timestamp(ts: &Timestamp) -> Option<String> {
    let mut buf = Vec::new();
    ts.format(TimestampFormat::HttpDate, &mut buf).ok()?;
    String::from_utf8(buf).ok()
}

fn parse_timestamp(s: &str) -> Option<Timestamp> {
    Timestamp::parse(TimestampFormat::HttpDate, s).ok()
}

fn metadata_map(metadata: Option<Metadata>) -> BTreeMap<String, String> {
    metadata.map(|m| m.into_iter().collect()).unwrap_or_default()
}

fn metadata_out(metadata: &BTreeMap<String, String>) -> Option<Metadata> {
    (!metadata.is_empty()).then(|| metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

fn checksums_given(
    crc32: Option<String>,
    crc32c: Option<String>,
    sha1: Option<String>,
    sha256: Option<String>,
    crc64nvme: Option<String>,
) -> Checksums {
    Checksums {
        crc32,
        crc32c,
        sha1,
        sha256,
        crc64nvme,
    }
}

/// Reads trailing checksums (aws-chunked uploads send them after the body) into `given`.
fn take_trailers(trailers: Option<s3s::TrailingHeaders>, given: &mut Checksums) -> S3Result<()> {
    let Some(trailers) = trailers.and_then(|t| t.take()) else {
        return Ok(());
    };
    let read = |name: &str| -> S3Result<Option<String>> {
        trailers
            .get(name)
            .map(|v| {
                v.to_str()
                    .map(str::to_owned)
                    .map_err(|_| s3_error!(InvalidArgument, "trailer {name} is not text"))
            })
            .transpose()
    };
    given.crc32 = read("x-amz-checksum-crc32")?.or(given.crc32.take());
    given.crc32c = read("x-amz-checksum-crc32c")?.or(given.crc32c.take());
    given.sha1 = read("x-amz-checksum-sha1")?.or(given.sha1.take());
    given.sha256 = read("x-amz-checksum-sha256")?.or(given.sha256.take());
    given.crc64nvme = read("x-amz-checksum-crc64nvme")?.or(given.crc64nvme.take());
    Ok(())
}

/// The algorithms an upload announces in `x-amz-trailer` (their values come after the body).
fn trailer_algorithms(headers: &http::HeaderMap, wanted: &mut Wanted) -> S3Result<()> {
    for value in headers.get_all("x-amz-trailer") {
        let value = value
            .to_str()
            .map_err(|_| s3_error!(InvalidArgument, "x-amz-trailer is not text"))?;
        for name in value.split(',').map(str::trim) {
            if let Some(algorithm) = name.to_ascii_lowercase().strip_prefix("x-amz-checksum-") {
                wanted.add(algorithm)?;
            }
        }
    }
    Ok(())
}

/// Checks what arrived against what the client said it sent.
fn verify(received: &Received, content_md5: Option<&str>, given: &Checksums) -> S3Result<()> {
    if let Some(content_md5) = content_md5 {
        use base64::Engine;
        let expected = base64::engine::general_purpose::STANDARD
            .decode(content_md5)
            .map_err(|_| s3_error!(InvalidDigest, "Content-MD5 is not base64"))?;
        if hex::encode(expected) != received.md5 {
            return Err(s3_error!(
                BadDigest,
                "the Content-MD5 you specified did not match what we received"
            ));
        }
    }
    let pairs = [
        ("CRC32", &given.crc32, &received.checksums.crc32),
        ("CRC32C", &given.crc32c, &received.checksums.crc32c),
        ("SHA1", &given.sha1, &received.checksums.sha1),
        ("SHA256", &given.sha256, &received.checksums.sha256),
        ("CRC64NVME", &given.crc64nvme, &received.checksums.crc64nvme),
    ];
    for (name, expected, got) in pairs {
        if let Some(expected) = expected
            && Some(expected) != got.as_ref()
        {
            return Err(s3_error!(
                BadDigest,
                "the {name} you specified did not match the calculated checksum"
            ));
        }
    }
    Ok(())
}

fn wanted_for(
    algorithm: Option<&ChecksumAlgorithm>,
    given: &Checksums,
    headers: &http::HeaderMap,
) -> S3Result<Wanted> {
    let mut wanted = Wanted::default();
    if let Some(algorithm) = algorithm {
        wanted.add(algorithm.as_str())?;
    }
    wanted.add_given(given);
    trailer_algorithms(headers, &mut wanted)?;
    Ok(wanted)
}

/// Removes the data file of a body whose commit did not happen.
fn discard(core: &Core, received: &Received) {
    if let Some(id) = file_id(received.blob) {
        core.blobs.remove(id);
    }
}

fn segment_of(received: &Received) -> Segment {
    Segment {
        blob: received.blob,
        size: received.size,
        checksums: received.checksums.clone(),
    }
}

fn checksum_type_of(record: &ObjectRecord) -> Option<ChecksumType> {
    if record.checksums.is_empty() {
        return None;
    }
    let composite = [
        &record.checksums.crc32,
        &record.checksums.crc32c,
        &record.checksums.sha1,
        &record.checksums.sha256,
    ]
    .into_iter()
    .flatten()
    .any(|c| c.contains('-'));
    Some(ChecksumType::from_static(if composite {
        ChecksumType::COMPOSITE
    } else {
        ChecksumType::FULL_OBJECT
    }))
}

fn storage_class_ok(class: Option<&StorageClass>) -> S3Result<()> {
    match class.map(StorageClass::as_str) {
        None | Some("STANDARD") | Some("REDUCED_REDUNDANCY") => Ok(()),
        Some(other) => Err(s3_error!(
            InvalidStorageClass,
            "storage class {other:?} is not offered here"
        )),
    }
}

fn headers_from(
    content_type: Option<String>,
    content_encoding: Option<String>,
    content_disposition: Option<String>,
    content_language: Option<String>,
    cache_control: Option<String>,
    expires: Option<Timestamp>,
    website_redirect_location: Option<String>,
) -> Headers {
    let mut headers = Headers {
        content_type,
        content_encoding,
        content_disposition,
        content_language,
        cache_control,
        expires: expires.as_ref().and_then(format_timestamp),
        website_redirect_location,
    };
    headers.strip_aws_chunked();
    headers
}

fn parse_tagging(header: Option<&str>) -> S3Result<BTreeMap<String, String>> {
    let Some(header) = header else {
        return Ok(BTreeMap::new());
    };
    let mut tags = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(header.as_bytes()) {
        tags.insert(k.into_owned(), v.into_owned());
    }
    check_tags(&tags)?;
    Ok(tags)
}

fn check_tags(tags: &BTreeMap<String, String>) -> S3Result<()> {
    if tags.len() > 10 {
        return Err(s3_error!(InvalidTag, "an object can have at most 10 tags"));
    }
    for (k, v) in tags {
        if k.is_empty() || k.chars().count() > 128 || v.chars().count() > 256 {
            return Err(s3_error!(
                InvalidTag,
                "tag keys are 1 to 128 characters, values at most 256"
            ));
        }
    }
    Ok(())
}

fn tag_set(tags: &BTreeMap<String, String>) -> TagSet {
    tags.iter()
        .map(|(k, v)| Tag {
            key: Some(k.clone()),
            value: Some(v.clone()),
        })
        .collect()
}

fn tags_from(set: TagSet) -> S3Result<BTreeMap<String, String>> {
    let mut tags = BTreeMap::new();
    for tag in set {
        let (Some(k), Some(v)) = (tag.key, tag.value) else {
            return Err(s3_error!(InvalidTag, "a tag needs a key and a value"));
        };
        if tags.insert(k, v).is_some() {
            return Err(s3_error!(InvalidTag, "tag keys must be unique"));
        }
    }
    check_tags(&tags)?;
    Ok(tags)
}

/// The byte range and part count a GET or HEAD asks for.
fn select(record: &ObjectRecord, range: Option<&Range>, part_number: Option<i32>) -> S3Result<Selection> {
    match (range, part_number) {
        (Some(_), Some(_)) => Err(s3_error!(
            InvalidRequest,
            "Range and partNumber cannot both be given"
        )),
        (None, Some(n)) => {
            let parts = if record.multipart {
                record.segments.len()
            } else {
                1
            };
            let index = usize::try_from(n).ok().filter(|n| (1..=parts).contains(n));
            let Some(index) = index else {
                let mut e = S3Error::with_message(
                    S3ErrorCode::Custom("InvalidPartNumber".into()),
                    format!("the object has {parts} part(s)"),
                );
                e.set_status_code(http::StatusCode::RANGE_NOT_SATISFIABLE);
                return Err(e);
            };
            let (start, len) = if record.multipart {
                let start: u64 = record.segments.iter().take(index - 1).map(|s| s.size).sum();
                (start, record.segments.get(index - 1).map_or(0, |s| s.size))
            } else {
                (0, record.size)
            };
            Ok(Selection {
                range: start..start + len,
                partial: true,
                parts_count: Some(i32::try_from(parts).unwrap_or(i32::MAX)),
            })
        }
        (Some(range), None) => {
            let range = range
                .check(record.size)
                .map_err(|_| s3_error!(InvalidRange, "the requested range is not satisfiable"))?;
            Ok(Selection {
                partial: true,
                range,
                parts_count: None,
            })
        }
        (None, None) => Ok(Selection {
            range: 0..record.size,
            partial: false,
            parts_count: None,
        }),
    }
}

struct Selection {
    range: std::ops::Range<u64>,
    partial: bool,
    parts_count: Option<i32>,
}

impl Selection {
    fn content_range(&self, size: u64) -> Option<String> {
        (self.partial && !self.range.is_empty())
            .then(|| format!("bytes {}-{}/{size}", self.range.start, self.range.end - 1))
    }
}

fn default_content_type(headers: &Headers) -> String {
    headers
        .content_type
        .clone()
        .unwrap_or_else(|| "binary/octet-stream".to_owned())
}

/// `future`'s output and when it was ready.
async fn timed<F: std::future::Future>(future: F) -> (F::Output, std::time::Instant) {
    let output = future.await;
    (output, std::time::Instant::now())
}

impl EmbeddedS3 {
    /// Runs a write that may have consequences (jobs): when the sink subscribes to it, `commit`
    /// records its event in the outbox with the object (see [`crate::events`]), and the event
    /// is handed to the sink on the commit thread, before the answer
    /// ([`crate::index::Index::write_raising`]).
    async fn recorded<P, T, C, Fut>(
        &self,
        bucket: &str,
        key: &str,
        principal: Option<String>,
        prepare: impl std::future::Future<Output = S3Result<P>>,
        commit: C,
    ) -> S3Result<T>
    where
        C: FnOnce(Option<EventDraft>, P) -> Fut,
        Fut: std::future::Future<Output = S3Result<(T, Option<Raised>)>>,
    {
        let subscribers = self.0.events.subscribers(bucket, key);
        let draft = (!subscribers.is_empty()).then(|| EventDraft {
            subscribers,
            principal: principal.unwrap_or_else(|| "cloister".to_owned()),
        });
        let began = std::time::Instant::now();
        let (prepared, data_done) = timed(prepare).await;
        let (out, raised) = commit(draft, prepared?).await?;
        let Some(raised) = raised else {
            return Ok(out);
        };
        // The stages of an upload that starts jobs, for `cloister-bench jobs --stages`.
        let micros = |d: std::time::Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let answered = data_done.elapsed();
        tracing::debug!(
            target: "cloister::stages",
            bucket, key,
            data_us = micros(data_done.saturating_duration_since(began)),
            commit_us = micros(answered.saturating_sub(raised.delivery)),
            jobs_us = micros(raised.delivery),
            "upload recorded"
        );
        Ok(out)
    }

    /// Commits a new version of `key`, subject to conditions on the current one, with the
    /// write's event when it raises one.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn commit_object(
        &self,
        bucket: &str,
        key: &str,
        received: Received,
        record: ObjectRecord,
        event: Option<EventDraft>,
        if_match: Option<ETagCondition>,
        if_none_match: Option<ETagCondition>,
    ) -> S3Result<(ObjectRecord, Option<Raised>)> {
        let (b, k) = (bucket.to_owned(), key.to_owned());
        let committed = record.clone();
        let inline = received.inline.clone();
        let blob = received.blob;
        let content = match blob {
            Blob::Inline(_) => inline.clone(),
            Blob::File(_) => None,
        };
        let result = self
            .0
            .index
            .write_raising(self.0.events.clone(), content, move |txn| {
                require_bucket(txn, &b)?;
                let existing = current(txn, &b, &k)?;
                conditions::check_write(existing.as_ref(), if_match.as_ref(), if_none_match.as_ref(), &k)?;
                let event = match &event {
                    Some(draft) => Some(crate::outbox::append(txn, &b, &k, &committed, draft)?),
                    None => None,
                };
                if let (Blob::Inline(id), Some(data)) = (blob, &inline) {
                    crate::store::store_inline(txn, id, data)?;
                }
                install(txn, &b, &k, &committed)?;
                Ok(((), event))
            })
            .await;
        match result {
            Ok(((), raised)) => Ok((record, raised)),
            Err(e) => {
                discard(&self.0, &received);
                Err(e)
            }
        }
    }

    async fn require_bucket_read(&self, bucket: &str) -> S3Result<()> {
        if self.0.bucket_exists(bucket)? {
            Ok(())
        } else {
            Err(s3_error!(NoSuchBucket, "the bucket {bucket:?} does not exist"))
        }
    }

    fn upload(&self, bucket: &str, key: &str, upload_id: &str) -> S3Result<UploadRecord> {
        let txn = self.0.index.read()?;
        bucket_record(&txn, bucket)?;
        let table = txn.open_table(UPLOADS).db()?;
        let found = table.get(upload_id).db()?;
        let upload: UploadRecord = match found {
            Some(v) => decode(v.value())?,
            None => return Err(no_such_upload()),
        };
        if upload.bucket != bucket || upload.key != key {
            return Err(no_such_upload());
        }
        Ok(upload)
    }
}

pub(crate) fn no_such_upload() -> S3Error {
    s3_error!(
        NoSuchUpload,
        "the upload does not exist: it may have been aborted or completed"
    )
}

/// The object (or its part) as a listing shows it.
fn listed_object(key: String, record: &ObjectRecord, with_owner: bool) -> Object {
    Object {
        key: Some(key),
        size: Some(i64::try_from(record.size).unwrap_or(i64::MAX)),
        e_tag: Some(quoted(&record.etag)),
        last_modified: Some(timestamp(record.modified)),
        storage_class: Some(ObjectStorageClass::from_static(ObjectStorageClass::STANDARD)),
        owner: with_owner.then(owner),
        checksum_type: checksum_type_of(record),
        ..Default::default()
    }
}

#[async_trait::async_trait]
impl S3 for EmbeddedS3 {
    // ---- buckets ----

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let bucket = req.input.bucket;
        check_bucket(&bucket)?;
        self.0.blobs.ensure_room(0)?;
        let b = bucket.clone();
        self.0
            .index
            .write(move |txn| {
                let mut table = txn.open_table(BUCKETS).db()?;
                if table.get(b.as_str()).db()?.is_some() {
                    // One tenant owns every bucket here.
                    return Err(s3_error!(
                        BucketAlreadyOwnedByYou,
                        "you already own the bucket {b:?}"
                    ));
                }
                let record = BucketRecord {
                    created: now_ns(),
                    ..Default::default()
                };
                table.insert(b.as_str(), encode(&record)?.as_slice()).db()?;
                drop(table);
                let name = objects_table_name(&b);
                let _ = txn.open_table(objects_table(&name)).db()?;
                Ok(())
            })
            .await?;
        Ok(S3Response::new(CreateBucketOutput {
            location: Some(format!("/{bucket}")),
        }))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let bucket = req.input.bucket;
        check_bucket(&bucket)?;
        self.0.delete_bucket(&bucket, false).await?;
        Ok(S3Response::new(DeleteBucketOutput {}))
    }

    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
        check_bucket(&req.input.bucket)?;
        self.require_bucket_read(&req.input.bucket).await?;
        Ok(S3Response::new(HeadBucketOutput {
            bucket_region: Some(crate::REGION.to_owned()),
            ..Default::default()
        }))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        check_bucket(&req.input.bucket)?;
        self.require_bucket_read(&req.input.bucket).await?;
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let input = req.input;
        let max = input
            .max_buckets
            .map_or(10_000, |n| usize::try_from(n.clamp(1, 10_000)).unwrap_or(10_000));
        let after = match input.continuation_token.as_deref() {
            Some(token) => Some(listing::decode_token(token)?),
            None => None,
        };
        let prefix = input.prefix.clone().unwrap_or_default();
        let txn = self.0.index.read()?;
        let table = txn.open_table(BUCKETS).db()?;
        let mut buckets = Vec::new();
        let mut next = None;
        for entry in table.iter().db()? {
            let (name, value) = entry.db()?;
            let name = name.value().to_owned();
            if !name.starts_with(&prefix) || after.as_ref().is_some_and(|a| name.as_str() <= a.as_str()) {
                continue;
            }
            if buckets.len() == max {
                next = buckets
                    .last()
                    .and_then(|b: &Bucket| b.name.as_deref())
                    .map(listing::encode_token);
                break;
            }
            let record: BucketRecord = decode(value.value())?;
            buckets.push(Bucket {
                name: Some(name),
                creation_date: Some(timestamp(record.created)),
                bucket_region: Some(crate::REGION.to_owned()),
            });
        }
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            continuation_token: next,
            owner: Some(owner()),
            prefix: input.prefix,
        }))
    }

    async fn get_bucket_versioning(
        &self,
        req: S3Request<GetBucketVersioningInput>,
    ) -> S3Result<S3Response<GetBucketVersioningOutput>> {
        check_bucket(&req.input.bucket)?;
        self.require_bucket_read(&req.input.bucket).await?;
        // Never versioned: S3 then answers with neither Status nor MFADelete.
        Ok(S3Response::new(GetBucketVersioningOutput::default()))
    }

    async fn put_bucket_versioning(
        &self,
        req: S3Request<PutBucketVersioningInput>,
    ) -> S3Result<S3Response<PutBucketVersioningOutput>> {
        check_bucket(&req.input.bucket)?;
        self.require_bucket_read(&req.input.bucket).await?;
        let wanted = req
            .input
            .versioning_configuration
            .status
            .as_ref()
            .map(|s| s.as_str().to_owned());
        match wanted.as_deref() {
            None | Some("Suspended") => Ok(S3Response::new(PutBucketVersioningOutput {})),
            Some(_) => Err(s3_error!(
                NotImplemented,
                "versioning is not offered yet: buckets stay unversioned"
            )),
        }
    }

    // ---- CORS and tags of buckets ----

    async fn put_bucket_cors(
        &self,
        req: S3Request<PutBucketCorsInput>,
    ) -> S3Result<S3Response<PutBucketCorsOutput>> {
        let bucket = req.input.bucket;
        check_bucket(&bucket)?;
        let mut rules = Vec::new();
        for rule in req.input.cors_configuration.cors_rules {
            if rule.allowed_origins.is_empty() || rule.allowed_methods.is_empty() {
                return Err(s3_error!(
                    MalformedXML,
                    "a CORS rule needs AllowedOrigin and AllowedMethod"
                ));
            }
            for method in &rule.allowed_methods {
                if !["GET", "PUT", "POST", "DELETE", "HEAD"].contains(&method.as_str()) {
                    return Err(s3_error!(InvalidRequest, "unsupported CORS method {method:?}"));
                }
            }
            rules.push(CorsRule {
                id: rule.id,
                allowed_origins: rule.allowed_origins,
                allowed_methods: rule.allowed_methods,
                allowed_headers: rule.allowed_headers.unwrap_or_default(),
                expose_headers: rule.expose_headers.unwrap_or_default(),
                max_age_seconds: rule.max_age_seconds,
            });
        }
        if rules.len() > 100 {
            return Err(s3_error!(InvalidRequest, "at most 100 CORS rules"));
        }
        self.0
            .update_bucket(&bucket, move |record| record.cors = Some(rules))
            .await?;
        Ok(S3Response::new(PutBucketCorsOutput {}))
    }

    async fn get_bucket_cors(
        &self,
        req: S3Request<GetBucketCorsInput>,
    ) -> S3Result<S3Response<GetBucketCorsOutput>> {
        check_bucket(&req.input.bucket)?;
        let txn = self.0.index.read()?;
        let record = bucket_record(&txn, &req.input.bucket)?;
        let Some(rules) = record.cors else {
            return Err(s3_error!(
                NoSuchCORSConfiguration,
                "the bucket has no CORS configuration"
            ));
        };
        Ok(S3Response::new(GetBucketCorsOutput {
            cors_rules: Some(
                rules
                    .into_iter()
                    .map(|r| CORSRule {
                        id: r.id,
                        allowed_origins: r.allowed_origins,
                        allowed_methods: r.allowed_methods,
                        allowed_headers: (!r.allowed_headers.is_empty()).then_some(r.allowed_headers),
                        expose_headers: (!r.expose_headers.is_empty()).then_some(r.expose_headers),
                        max_age_seconds: r.max_age_seconds,
                    })
                    .collect(),
            ),
        }))
    }

    async fn delete_bucket_cors(
        &self,
        req: S3Request<DeleteBucketCorsInput>,
    ) -> S3Result<S3Response<DeleteBucketCorsOutput>> {
        check_bucket(&req.input.bucket)?;
        self.0
            .update_bucket(&req.input.bucket, |record| record.cors = None)
            .await?;
        Ok(S3Response::new(DeleteBucketCorsOutput {}))
    }

    async fn put_bucket_tagging(
        &self,
        req: S3Request<PutBucketTaggingInput>,
    ) -> S3Result<S3Response<PutBucketTaggingOutput>> {
        check_bucket(&req.input.bucket)?;
        let tags = tags_from(req.input.tagging.tag_set)?;
        self.0
            .update_bucket(&req.input.bucket, move |record| record.tags = Some(tags))
            .await?;
        Ok(S3Response::new(PutBucketTaggingOutput {}))
    }

    async fn get_bucket_tagging(
        &self,
        req: S3Request<GetBucketTaggingInput>,
    ) -> S3Result<S3Response<GetBucketTaggingOutput>> {
        check_bucket(&req.input.bucket)?;
        let txn = self.0.index.read()?;
        let record = bucket_record(&txn, &req.input.bucket)?;
        let Some(tags) = record.tags else {
            return Err(s3_error!(NoSuchTagSet, "the bucket has no tags"));
        };
        Ok(S3Response::new(GetBucketTaggingOutput {
            tag_set: tag_set(&tags),
        }))
    }

    async fn delete_bucket_tagging(
        &self,
        req: S3Request<DeleteBucketTaggingInput>,
    ) -> S3Result<S3Response<DeleteBucketTaggingOutput>> {
        check_bucket(&req.input.bucket)?;
        self.0
            .update_bucket(&req.input.bucket, |record| record.tags = None)
            .await?;
        Ok(S3Response::new(DeleteBucketTaggingOutput {}))
    }

    // ---- listings ----

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let input = req.input;
        check_bucket(&input.bucket)?;
        let url = listing::url_encoding(input.encoding_type.as_ref())?;
        let params = ListParams::new(
            input.prefix.as_deref(),
            input.delimiter.as_deref(),
            input.marker.clone(),
            input.max_keys,
        )?;
        let listed = self.0.list(&input.bucket, &params)?;
        let enc = |s: &str| listing::encode_if(url, s);
        let next_marker = listed
            .truncated
            .then(|| listed.last.as_deref().map(enc))
            .flatten();
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(input.bucket),
            prefix: Some(enc(params.prefix)),
            marker: Some(input.marker.as_deref().map(enc).unwrap_or_default()),
            max_keys: Some(params.max_keys_echo()),
            is_truncated: Some(listed.truncated),
            contents: Some(
                listed
                    .objects
                    .iter()
                    .map(|(k, r)| listed_object(enc(k), r, true))
                    .collect(),
            ),
            common_prefixes: listing::common_prefixes(&listed.prefixes, url),
            delimiter: params.delimiter.map(enc),
            next_marker,
            encoding_type: input.encoding_type,
            request_charged: None,
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        check_bucket(&input.bucket)?;
        let url = listing::url_encoding(input.encoding_type.as_ref())?;
        let token = match input.continuation_token.as_deref() {
            Some(token) => Some(listing::decode_token(token)?),
            None => None,
        };
        let after = match (token, input.start_after.clone()) {
            (Some(t), Some(s)) => Some(t.max(s)),
            (t, s) => t.or(s),
        };
        let params = ListParams::new(
            input.prefix.as_deref(),
            input.delimiter.as_deref(),
            after,
            input.max_keys,
        )?;
        let listed = self.0.list(&input.bucket, &params)?;
        let enc = |s: &str| listing::encode_if(url, s);
        let with_owner = input.fetch_owner.unwrap_or(false);
        let contents: Vec<Object> = listed
            .objects
            .iter()
            .map(|(k, r)| listed_object(enc(k), r, with_owner))
            .collect();
        let key_count = contents.len() + listed.prefixes.len();
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: Some(enc(params.prefix)),
            max_keys: Some(params.max_keys_echo()),
            key_count: Some(i32::try_from(key_count).unwrap_or(i32::MAX)),
            continuation_token: input.continuation_token,
            is_truncated: Some(listed.truncated),
            next_continuation_token: listed
                .truncated
                .then(|| listed.last.as_deref().map(listing::encode_token))
                .flatten(),
            contents: Some(contents),
            common_prefixes: listing::common_prefixes(&listed.prefixes, url),
            delimiter: params.delimiter.map(enc),
            encoding_type: input.encoding_type,
            start_after: input.start_after.as_deref().map(enc),
            request_charged: None,
        }))
    }

    async fn list_object_versions(
        &self,
        req: S3Request<ListObjectVersionsInput>,
    ) -> S3Result<S3Response<ListObjectVersionsOutput>> {
        let input = req.input;
        check_bucket(&input.bucket)?;
        let url = listing::url_encoding(input.encoding_type.as_ref())?;
        let params = ListParams::new(
            input.prefix.as_deref(),
            input.delimiter.as_deref(),
            input.key_marker.clone(),
            input.max_keys,
        )?;
        let listed = self.0.list(&input.bucket, &params)?;
        let enc = |s: &str| listing::encode_if(url, s);
        // An unversioned bucket: each object is its one version, "null".
        let versions = listed
            .objects
            .iter()
            .map(|(k, r)| ObjectVersion {
                key: Some(enc(k)),
                version_id: Some("null".to_owned()),
                is_latest: Some(true),
                size: Some(i64::try_from(r.size).unwrap_or(i64::MAX)),
                e_tag: Some(quoted(&r.etag)),
                last_modified: Some(timestamp(r.modified)),
                owner: Some(owner()),
                storage_class: Some(ObjectVersionStorageClass::from_static(
                    ObjectVersionStorageClass::STANDARD,
                )),
                checksum_type: checksum_type_of(r),
                ..Default::default()
            })
            .collect();
        let next = listed
            .truncated
            .then(|| listed.last.as_deref().map(enc))
            .flatten();
        Ok(S3Response::new(ListObjectVersionsOutput {
            name: Some(input.bucket),
            prefix: Some(enc(params.prefix)),
            key_marker: Some(input.key_marker.as_deref().map(enc).unwrap_or_default()),
            version_id_marker: Some(input.version_id_marker.unwrap_or_default()),
            max_keys: Some(params.max_keys_echo()),
            is_truncated: Some(listed.truncated),
            next_version_id_marker: next.as_ref().map(|_| "null".to_owned()),
            next_key_marker: next,
            versions: Some(versions),
            common_prefixes: listing::common_prefixes(&listed.prefixes, url),
            delimiter: params.delimiter.map(enc),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    // ---- objects ----

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        check_key(&input.bucket, &input.key)?;
        let record = self.0.get_record(&input.bucket, &input.key)?;
        conditions::check_read(
            &record,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            input.if_unmodified_since.as_ref(),
        )?;
        let selection = select(&record, input.range.as_ref(), input.part_number)?;
        let with_checksums = input.checksum_mode.is_some() && !selection.partial;
        // S3 returns checksums only when asked, and only for the whole object.
        let shown = if with_checksums {
            record.checksums.clone()
        } else {
            Checksums::default()
        };
        let len = selection.range.end - selection.range.start;
        Ok(S3Response::new(HeadObjectOutput {
            accept_ranges: Some("bytes".to_owned()),
            content_length: Some(i64::try_from(len).unwrap_or(i64::MAX)),
            content_range: selection.content_range(record.size),
            parts_count: selection.parts_count.or(record
                .multipart
                .then(|| i32::try_from(record.segments.len()).unwrap_or(i32::MAX))),
            e_tag: Some(quoted(&record.etag)),
            last_modified: Some(timestamp(record.modified)),
            metadata: metadata_out(&record.metadata),
            content_type: Some(default_content_type(&record.headers)),
            content_encoding: record.headers.content_encoding.clone(),
            content_disposition: record.headers.content_disposition.clone(),
            content_language: record.headers.content_language.clone(),
            cache_control: record.headers.cache_control.clone(),
            expires: record.headers.expires.as_deref().and_then(parse_timestamp),
            website_redirect_location: record.headers.website_redirect_location.clone(),
            storage_class: None,
            checksum_type: checksum_type_of(&record).filter(|_| with_checksums),
            ..with_checksums!(HeadObjectOutput, shown)
        }))
    }

    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        check_key(&input.bucket, &input.key)?;
        let (record, selection, body) = self.0.read(&input.bucket, &input.key, |record| {
            conditions::check_read(
                record,
                input.if_match.as_ref(),
                input.if_none_match.as_ref(),
                input.if_modified_since.as_ref(),
                input.if_unmodified_since.as_ref(),
            )?;
            let selection = select(record, input.range.as_ref(), input.part_number)?;
            let range = selection.range.clone();
            Ok((selection, range))
        })?;
        let with_checksums = input.checksum_mode.is_some() && !selection.partial;
        // S3 returns checksums only when asked, and only for the whole object.
        let shown = if with_checksums {
            record.checksums.clone()
        } else {
            Checksums::default()
        };
        let len = selection.range.end - selection.range.start;
        let headers = &record.headers;
        Ok(S3Response::new(GetObjectOutput {
            body: Some(body),
            accept_ranges: Some("bytes".to_owned()),
            content_length: Some(i64::try_from(len).unwrap_or(i64::MAX)),
            content_range: selection.content_range(record.size),
            parts_count: selection.parts_count,
            e_tag: Some(quoted(&record.etag)),
            last_modified: Some(timestamp(record.modified)),
            metadata: metadata_out(&record.metadata),
            content_type: Some(
                input
                    .response_content_type
                    .unwrap_or_else(|| default_content_type(headers)),
            ),
            content_encoding: input
                .response_content_encoding
                .or_else(|| headers.content_encoding.clone()),
            content_disposition: input
                .response_content_disposition
                .or_else(|| headers.content_disposition.clone()),
            content_language: input
                .response_content_language
                .or_else(|| headers.content_language.clone()),
            cache_control: input
                .response_cache_control
                .or_else(|| headers.cache_control.clone()),
            expires: input
                .response_expires
                .or_else(|| headers.expires.as_deref().and_then(parse_timestamp)),
            website_redirect_location: headers.website_redirect_location.clone(),
            tag_count: (!record.tags.is_empty()).then(|| i32::try_from(record.tags.len()).unwrap_or(0)),
            checksum_type: checksum_type_of(&record).filter(|_| with_checksums),
            ..with_checksums!(GetObjectOutput, shown)
        }))
    }

    async fn get_object_attributes(
        &self,
        req: S3Request<GetObjectAttributesInput>,
    ) -> S3Result<S3Response<GetObjectAttributesOutput>> {
        let input = req.input;
        check_key(&input.bucket, &input.key)?;
        let record = self.0.get_record(&input.bucket, &input.key)?;
        // One header, `x-amz-object-attributes: ETag,ObjectSize`, may carry them all.
        let wants = |name: &str| {
            input
                .object_attributes
                .iter()
                .flat_map(|a| a.as_str().split(','))
                .any(|a| a.trim().eq_ignore_ascii_case(name))
        };
        let object_parts = (wants("ObjectParts") && record.multipart).then(|| {
            let marker = input.part_number_marker.unwrap_or(0);
            let max = input.max_parts.unwrap_or(1000).clamp(0, 1000);
            let all: Vec<ObjectPart> = record
                .segments
                .iter()
                .enumerate()
                .map(|(i, s)| ObjectPart {
                    part_number: Some(i32::try_from(i + 1).unwrap_or(i32::MAX)),
                    size: Some(i64::try_from(s.size).unwrap_or(i64::MAX)),
                    ..with_checksums!(ObjectPart, s.checksums)
                })
                .filter(|p| p.part_number.unwrap_or(0) > marker)
                .collect();
            let truncated = all.len() > usize::try_from(max).unwrap_or(0);
            let parts: Vec<ObjectPart> = all.into_iter().take(usize::try_from(max).unwrap_or(0)).collect();
            GetObjectAttributesParts {
                is_truncated: Some(truncated),
                max_parts: Some(max),
                next_part_number_marker: parts.last().and_then(|p| p.part_number).filter(|_| truncated),
                part_number_marker: Some(marker),
                total_parts_count: Some(i32::try_from(record.segments.len()).unwrap_or(i32::MAX)),
                parts: Some(parts),
            }
        });
        let checksum = (wants("Checksum") && !record.checksums.is_empty()).then(|| Checksum {
            checksum_type: checksum_type_of(&record),
            ..with_checksums!(Checksum, record.checksums)
        });
        Ok(S3Response::new(GetObjectAttributesOutput {
            e_tag: wants("ETag").then(|| ETag::Strong(record.etag.clone())),
            object_size: wants("ObjectSize").then(|| i64::try_from(record.size).unwrap_or(i64::MAX)),
            storage_class: wants("StorageClass").then(|| StorageClass::from_static(StorageClass::STANDARD)),
            last_modified: Some(timestamp(record.modified)),
            object_parts,
            checksum,
            ..Default::default()
        }))
    }

    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        let principal = req.credentials.as_ref().map(|c| c.access_key.clone());
        let headers = req.headers;
        let trailers = req.trailing_headers;
        let input = req.input;
        let (bucket, key) = (input.bucket.clone(), input.key.clone());
        check_key(&bucket, &key)?;
        storage_class_ok(input.storage_class.as_ref())?;
        let tags = parse_tagging(input.tagging.as_deref())?;
        self.require_bucket_read(&bucket).await?;
        if input.if_match.is_some() || input.if_none_match.is_some() {
            // Refuse early what the commit would refuse, before receiving the body.
            let existing = self.0.get_record(&bucket, &key).ok();
            conditions::check_write(
                existing.as_ref(),
                input.if_match.as_ref(),
                input.if_none_match.as_ref(),
                &key,
            )?;
        }
        let mut given = checksums_given(
            input.checksum_crc32,
            input.checksum_crc32c,
            input.checksum_sha1,
            input.checksum_sha256,
            input.checksum_crc64nvme,
        );
        let wanted = wanted_for(input.checksum_algorithm.as_ref(), &given, &headers)?;
        let expected = input.content_length.and_then(|n| u64::try_from(n).ok());
        let body = input.body.unwrap_or_else(|| {
            StreamingBlob::wrap(futures::stream::empty::<Result<bytes::Bytes, std::io::Error>>())
        });
        let record_headers = headers_from(
            input.content_type,
            input.content_encoding,
            input.content_disposition,
            input.content_language,
            input.cache_control,
            input.expires,
            input.website_redirect_location,
        );
        let metadata = metadata_map(input.metadata);
        let (if_match, if_none_match, content_md5) = (input.if_match, input.if_none_match, input.content_md5);
        let this = self.clone();
        let (b, k) = (bucket.clone(), key.clone());
        let core = self.0.clone();
        let prepare = async move {
            let received = core.blobs.receive(body, expected, wanted).await?;
            take_trailers(trailers, &mut given).inspect_err(|_| discard(&core, &received))?;
            verify(&received, content_md5.as_deref(), &given).inspect_err(|_| discard(&core, &received))?;
            Ok(received)
        };
        let record = self
            .recorded(
                &bucket,
                &key,
                principal,
                prepare,
                move |event, received| async move {
                    let record = ObjectRecord {
                        size: received.size,
                        etag: received.md5.clone(),
                        modified: now_ns(),
                        segments: vec![segment_of(&received)],
                        multipart: false,
                        headers: record_headers,
                        metadata,
                        checksums: received.checksums.clone(),
                        tags,
                    };
                    this.commit_object(&b, &k, received, record, event, if_match, if_none_match)
                        .await
                },
            )
            .await?;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(quoted(&record.etag)),
            checksum_type: checksum_type_of(&record),
            size: Some(i64::try_from(record.size).unwrap_or(i64::MAX)),
            ..with_checksums!(PutObjectOutput, record.checksums)
        }))
    }

    async fn copy_object(&self, req: S3Request<CopyObjectInput>) -> S3Result<S3Response<CopyObjectOutput>> {
        let principal = req.credentials.as_ref().map(|c| c.access_key.clone());
        let input = req.input;
        let (bucket, key) = (input.bucket.clone(), input.key.clone());
        check_key(&bucket, &key)?;
        let CopySource::Bucket {
            bucket: src_bucket,
            key: src_key,
            version_id,
        } = &input.copy_source
        else {
            return Err(s3_error!(
                NotImplemented,
                "copying from an access point is not supported"
            ));
        };
        check_key(src_bucket, src_key)?;
        if version_id.as_deref().is_some_and(|v| v != "null") {
            return Err(s3_error!(
                NoSuchVersion,
                "the bucket is not versioned: only version \"null\" exists"
            ));
        }
        storage_class_ok(input.storage_class.as_ref())?;
        self.require_bucket_read(&bucket).await?;
        let source = self.0.get_record(src_bucket, src_key)?;
        conditions::check_copy_source(
            &source,
            input.copy_source_if_match.as_ref(),
            input.copy_source_if_none_match.as_ref(),
            input.copy_source_if_modified_since.as_ref(),
            input.copy_source_if_unmodified_since.as_ref(),
        )?;
        let replace = input
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str().eq_ignore_ascii_case("REPLACE"));
        let replace_tags = input
            .tagging_directive
            .as_ref()
            .is_some_and(|d| d.as_str().eq_ignore_ascii_case("REPLACE"));
        if **src_bucket == *bucket
            && **src_key == *key
            && !replace
            && !replace_tags
            && input.storage_class.is_none()
        {
            return Err(s3_error!(
                InvalidRequest,
                "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata, storage class, website redirect location or encryption attributes."
            ));
        }
        let (headers, metadata) = if replace {
            (
                headers_from(
                    input.content_type,
                    input.content_encoding,
                    input.content_disposition,
                    input.content_language,
                    input.cache_control,
                    input.expires,
                    input.website_redirect_location,
                ),
                metadata_map(input.metadata),
            )
        } else {
            (source.headers.clone(), source.metadata.clone())
        };
        let tags = if replace_tags {
            parse_tagging(input.tagging.as_deref())?
        } else {
            source.tags.clone()
        };
        let mut wanted = Wanted::default();
        if let Some(algorithm) = &input.checksum_algorithm {
            wanted.add(algorithm.as_str())?;
        } else if let Some(c) = &source.checksums.crc32 {
            wanted.crc32 = !c.contains('-');
        }
        let body = self.0.stream(&source, 0..source.size)?;
        let this = self.clone();
        let (b, k) = (bucket.clone(), key.clone());
        let core = self.0.clone();
        let size = source.size;
        let prepare = async move { core.blobs.receive(body, Some(size), wanted).await };
        let record = self
            .recorded(
                &bucket,
                &key,
                principal,
                prepare,
                move |event, received| async move {
                    let record = ObjectRecord {
                        size: received.size,
                        etag: received.md5.clone(),
                        modified: now_ns(),
                        segments: vec![segment_of(&received)],
                        multipart: false,
                        headers,
                        metadata,
                        checksums: received.checksums.clone(),
                        tags,
                    };
                    this.commit_object(&b, &k, received, record, event, None, None)
                        .await
                },
            )
            .await?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(quoted(&record.etag)),
                last_modified: Some(timestamp(record.modified)),
                checksum_type: checksum_type_of(&record),
                ..with_checksums!(CopyObjectResult, record.checksums)
            }),
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let input = req.input;
        check_key(&input.bucket, &input.key)?;
        let (b, k, if_match) = (input.bucket, input.key, input.if_match);
        self.0
            .index
            .write(move |txn| {
                require_bucket(txn, &b)?;
                if let Some(condition) = &if_match {
                    match current(txn, &b, &k)? {
                        Some(existing) if conditions::etag_matches(condition, &existing.etag) => {}
                        Some(_) => return Err(s3_error!(PreconditionFailed, "the ETag does not match")),
                        None => return Err(no_such_key(&k)),
                    }
                }
                crate::store::remove(txn, &b, &k)?;
                Ok(())
            })
            .await?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let input = req.input;
        check_bucket(&input.bucket)?;
        if input.delete.objects.len() > 1000 {
            return Err(s3_error!(
                MalformedXML,
                "at most 1000 keys can be deleted at once"
            ));
        }
        let quiet = input.delete.quiet.unwrap_or(false);
        let mut errors = Vec::new();
        let mut keys = Vec::new();
        for object in input.delete.objects {
            match check_key(&input.bucket, &object.key) {
                Ok(()) => keys.push(object.key),
                Err(e) => errors.push(Error {
                    code: Some(e.code().as_str().to_owned()),
                    message: e.message().map(str::to_owned),
                    key: Some(object.key),
                    version_id: None,
                }),
            }
        }
        let b = input.bucket.clone();
        let deleted_keys = keys.clone();
        self.0
            .index
            .write(move |txn| {
                require_bucket(txn, &b)?;
                for key in &deleted_keys {
                    crate::store::remove(txn, &b, key)?;
                }
                Ok(())
            })
            .await?;
        let deleted = (!quiet).then(|| {
            keys.into_iter()
                .map(|key| DeletedObject {
                    key: Some(key),
                    ..Default::default()
                })
                .collect()
        });
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted,
            errors: (!errors.is_empty()).then_some(errors),
            request_charged: None,
        }))
    }

    // ---- object tags ----

    async fn put_object_tagging(
        &self,
        req: S3Request<PutObjectTaggingInput>,
    ) -> S3Result<S3Response<PutObjectTaggingOutput>> {
        let input = req.input;
        check_key(&input.bucket, &input.key)?;
        let tags = tags_from(input.tagging.tag_set)?;
        self.0
            .update_object(&input.bucket, &input.key, move |r| r.tags = tags)
            .await?;
        Ok(S3Response::new(PutObjectTaggingOutput::default()))
    }

    async fn get_object_tagging(
        &self,
        req: S3Request<GetObjectTaggingInput>,
    ) -> S3Result<S3Response<GetObjectTaggingOutput>> {
        let input = req.input;
        check_key(&input.bucket, &input.key)?;
        let record = self.0.get_record(&input.bucket, &input.key)?;
        Ok(S3Response::new(GetObjectTaggingOutput {
            tag_set: tag_set(&record.tags),
            version_id: None,
        }))
    }

    async fn delete_object_tagging(
        &self,
        req: S3Request<DeleteObjectTaggingInput>,
    ) -> S3Result<S3Response<DeleteObjectTaggingOutput>> {
        let input = req.input;
        check_key(&input.bucket, &input.key)?;
        self.0
            .update_object(&input.bucket, &input.key, |r| r.tags.clear())
            .await?;
        Ok(S3Response::new(DeleteObjectTaggingOutput::default()))
    }

    // ---- multipart uploads ----

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let input = req.input;
        check_key(&input.bucket, &input.key)?;
        storage_class_ok(input.storage_class.as_ref())?;
        self.0.blobs.ensure_room(0)?;
        if let Some(algorithm) = &input.checksum_algorithm {
            Wanted::default().add(algorithm.as_str())?;
        }
        let checksum_type =
            crate::multipart::checksum_type(input.checksum_algorithm.as_ref(), input.checksum_type.as_ref())?;
        let upload = UploadRecord {
            bucket: input.bucket.clone(),
            key: input.key.clone(),
            initiated: now_ns(),
            headers: headers_from(
                input.content_type,
                input.content_encoding,
                input.content_disposition,
                input.content_language,
                input.cache_control,
                input.expires,
                input.website_redirect_location,
            ),
            metadata: metadata_map(input.metadata),
            checksum_algorithm: input
                .checksum_algorithm
                .as_ref()
                .map(|a| a.as_str().to_ascii_uppercase()),
            checksum_type: checksum_type.as_ref().map(|t| t.as_str().to_owned()),
            tags: parse_tagging(input.tagging.as_deref())?,
        };
        let upload_id = format!("{:032x}", crate::blobs::new_id());
        let id = upload_id.clone();
        self.0
            .index
            .write(move |txn| {
                require_bucket(txn, &upload.bucket)?;
                txn.open_table(UPLOADS)
                    .db()?
                    .insert(id.as_str(), encode(&upload)?.as_slice())
                    .db()?;
                Ok(())
            })
            .await?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(upload_id),
            checksum_algorithm: input.checksum_algorithm,
            checksum_type,
            ..Default::default()
        }))
    }

    async fn upload_part(&self, req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
        let headers = req.headers;
        let trailers = req.trailing_headers;
        let input = req.input;
        check_key(&input.bucket, &input.key)?;
        if !(1..=MAX_PART_NUMBER).contains(&input.part_number) {
            return Err(s3_error!(InvalidArgument, "part numbers are 1 to 10000"));
        }
        let upload = self.upload(&input.bucket, &input.key, &input.upload_id)?;
        let mut given = checksums_given(
            input.checksum_crc32,
            input.checksum_crc32c,
            input.checksum_sha1,
            input.checksum_sha256,
            input.checksum_crc64nvme,
        );
        let mut wanted = wanted_for(input.checksum_algorithm.as_ref(), &given, &headers)?;
        // The upload's own algorithm whatever the part's request names: completion needs it.
        if let Some(algorithm) = &upload.checksum_algorithm {
            wanted.add(algorithm)?;
        }
        let body = input.body.unwrap_or_else(|| {
            StreamingBlob::wrap(futures::stream::empty::<Result<bytes::Bytes, std::io::Error>>())
        });
        let expected = input.content_length.and_then(|n| u64::try_from(n).ok());
        let received = self.0.blobs.receive(body, expected, wanted).await?;
        take_trailers(trailers, &mut given).inspect_err(|_| discard(&self.0, &received))?;
        verify(&received, input.content_md5.as_deref(), &given)
            .inspect_err(|_| discard(&self.0, &received))?;
        let part = PartRecord {
            segment: segment_of(&received),
            etag: received.md5.clone(),
            modified: now_ns(),
        };
        self.0
            .commit_part(&input.upload_id, input.part_number, &received, part.clone())
            .await?;
        let sums = &part.segment.checksums;
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(quoted(&part.etag)),
            ..with_checksums!(UploadPartOutput, sums)
        }))
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        let input = req.input;
        check_key(&input.bucket, &input.key)?;
        if !(1..=MAX_PART_NUMBER).contains(&input.part_number) {
            return Err(s3_error!(InvalidArgument, "part numbers are 1 to 10000"));
        }
        let CopySource::Bucket {
            bucket: src_bucket,
            key: src_key,
            ..
        } = &input.copy_source
        else {
            return Err(s3_error!(
                NotImplemented,
                "copying from an access point is not supported"
            ));
        };
        check_key(src_bucket, src_key)?;
        let upload = self.upload(&input.bucket, &input.key, &input.upload_id)?;
        let source = self.0.get_record(src_bucket, src_key)?;
        conditions::check_copy_source(
            &source,
            input.copy_source_if_match.as_ref(),
            input.copy_source_if_none_match.as_ref(),
            input.copy_source_if_modified_since.as_ref(),
            input.copy_source_if_unmodified_since.as_ref(),
        )?;
        let range = match input.copy_source_range.as_deref() {
            None => 0..source.size,
            Some(spec) => listing::parse_copy_range(spec, source.size)?,
        };
        let mut wanted = Wanted::default();
        if let Some(algorithm) = &upload.checksum_algorithm {
            wanted.add(algorithm)?;
        }
        let body = self.0.stream(&source, range.clone())?;
        let received = self
            .0
            .blobs
            .receive(body, Some(range.end - range.start), wanted)
            .await?;
        let part = PartRecord {
            segment: segment_of(&received),
            etag: received.md5.clone(),
            modified: now_ns(),
        };
        self.0
            .commit_part(&input.upload_id, input.part_number, &received, part.clone())
            .await?;
        Ok(S3Response::new(UploadPartCopyOutput {
            copy_part_result: Some(CopyPartResult {
                e_tag: Some(quoted(&part.etag)),
                last_modified: Some(timestamp(part.modified)),
                ..with_checksums!(CopyPartResult, part.segment.checksums)
            }),
            ..Default::default()
        }))
    }

    async fn list_parts(&self, req: S3Request<ListPartsInput>) -> S3Result<S3Response<ListPartsOutput>> {
        let input = req.input;
        check_key(&input.bucket, &input.key)?;
        let upload = self.upload(&input.bucket, &input.key, &input.upload_id)?;
        let marker = input.part_number_marker.unwrap_or(0).max(0);
        let max = input.max_parts.unwrap_or(1000).clamp(0, 1000);
        let txn = self.0.index.read()?;
        let table = txn.open_table(PARTS).db()?;
        let id = input.upload_id.as_str();
        let start = u32::try_from(marker).unwrap_or(0).saturating_add(1);
        let mut parts = Vec::new();
        let mut truncated = false;
        for entry in table.range((id, start)..=(id, u32::MAX)).db()? {
            let (k, v) = entry.db()?;
            if parts.len() == usize::try_from(max).unwrap_or(0) {
                truncated = true;
                break;
            }
            let part: PartRecord = decode(v.value())?;
            let sums = &part.segment.checksums;
            parts.push(Part {
                part_number: Some(i32::try_from(k.value().1).unwrap_or(i32::MAX)),
                e_tag: Some(quoted(&part.etag)),
                size: Some(i64::try_from(part.segment.size).unwrap_or(i64::MAX)),
                last_modified: Some(timestamp(part.modified)),
                ..with_checksums!(Part, sums)
            });
        }
        let next = parts
            .last()
            .and_then(|p: &Part| p.part_number)
            .filter(|_| truncated);
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            part_number_marker: Some(marker),
            next_part_number_marker: next,
            max_parts: Some(max),
            is_truncated: Some(truncated),
            parts: Some(parts),
            owner: Some(owner()),
            initiator: Some(Initiator {
                display_name: Some(OWNER_ID.to_owned()),
                id: Some(OWNER_ID.to_owned()),
            }),
            storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
            checksum_algorithm: upload.checksum_algorithm.map(ChecksumAlgorithm::from),
            ..Default::default()
        }))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let input = req.input;
        check_bucket(&input.bucket)?;
        let url = listing::url_encoding(input.encoding_type.as_ref())?;
        let enc = |s: &str| listing::encode_if(url, s);
        let max = usize::try_from(input.max_uploads.unwrap_or(1000).clamp(0, 1000)).unwrap_or(1000);
        let prefix = input.prefix.clone().unwrap_or_default();
        let delimiter = input.delimiter.clone().filter(|d| !d.is_empty());
        let txn = self.0.index.read()?;
        bucket_record(&txn, &input.bucket)?;
        let table = txn.open_table(UPLOADS).db()?;
        let mut all = Vec::new();
        for entry in table.iter().db()? {
            let (id, v) = entry.db()?;
            let upload: UploadRecord = decode(v.value())?;
            if upload.bucket == input.bucket && upload.key.starts_with(&prefix) {
                all.push((
                    upload.key.clone(),
                    upload.initiated,
                    id.value().to_owned(),
                    upload,
                ));
            }
        }
        all.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        let key_marker = input.key_marker.clone().unwrap_or_default();
        let id_marker = input.upload_id_marker.clone();
        let mut uploads = Vec::new();
        let mut prefixes: Vec<String> = Vec::new();
        let mut truncated = false;
        let mut last = None;
        for (key, _, id, upload) in all {
            let after_marker = match &id_marker {
                Some(marker) if key == key_marker => id.as_str() > marker.as_str(),
                _ => key.as_str() > key_marker.as_str() || key_marker.is_empty(),
            };
            if !after_marker {
                continue;
            }
            let common = delimiter.as_deref().and_then(|d| {
                key.get(prefix.len()..)
                    .and_then(|rest| rest.find(d).map(|i| key[..prefix.len() + i + d.len()].to_owned()))
            });
            if uploads.len() + prefixes.len() == max {
                truncated = true;
                break;
            }
            match common {
                Some(cp) => {
                    if prefixes.last() != Some(&cp) {
                        prefixes.push(cp);
                    }
                }
                None => {
                    last = Some((key.clone(), id.clone()));
                    uploads.push(MultipartUpload {
                        key: Some(enc(&key)),
                        upload_id: Some(id),
                        initiated: Some(timestamp(upload.initiated)),
                        initiator: Some(Initiator {
                            display_name: Some(OWNER_ID.to_owned()),
                            id: Some(OWNER_ID.to_owned()),
                        }),
                        owner: Some(owner()),
                        storage_class: Some(StorageClass::from_static(StorageClass::STANDARD)),
                        checksum_algorithm: upload.checksum_algorithm.map(ChecksumAlgorithm::from),
                        ..Default::default()
                    });
                }
            }
        }
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: Some(enc(&prefix)),
            delimiter: delimiter.as_deref().map(enc),
            key_marker: Some(enc(&key_marker)),
            upload_id_marker: Some(input.upload_id_marker.unwrap_or_default()),
            next_key_marker: last.as_ref().map(|(k, _)| enc(k)).filter(|_| truncated),
            next_upload_id_marker: last.map(|(_, id)| id).filter(|_| truncated),
            max_uploads: Some(i32::try_from(max).unwrap_or(1000)),
            is_truncated: Some(truncated),
            uploads: Some(uploads),
            common_prefixes: listing::common_prefixes(&prefixes, url),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let principal = req.credentials.as_ref().map(|c| c.access_key.clone());
        let input = req.input;
        let (bucket, key) = (input.bucket.clone(), input.key.clone());
        check_key(&bucket, &key)?;
        self.upload(&bucket, &key, &input.upload_id)?;
        let listed: Vec<(u32, Option<String>)> = input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                let number = p.part_number.and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
                (number, p.e_tag.map(|e| e.value().to_owned()))
            })
            .collect();
        if listed.is_empty() {
            return Err(s3_error!(MalformedXML, "the request must name at least one part"));
        }
        if listed.windows(2).any(|w| matches!(w, [a, b] if a.0 >= b.0)) {
            return Err(s3_error!(
                InvalidPartOrder,
                "the parts must be listed in ascending order"
            ));
        }
        let this = self.clone();
        let upload_id = input.upload_id.clone();
        let (b, k) = (bucket.clone(), key.clone());
        let (if_match, if_none_match) = (input.if_match, input.if_none_match);
        let claimed = crate::multipart::Claimed {
            checksums: checksums_given(
                input.checksum_crc32,
                input.checksum_crc32c,
                input.checksum_sha1,
                input.checksum_sha256,
                input.checksum_crc64nvme,
            ),
            checksum_type: input.checksum_type,
        };
        let record = self
            .recorded(
                &bucket,
                &key,
                principal,
                async { Ok(()) },
                move |event, ()| async move {
                    this.0
                        .index
                        .write_raising(this.0.events.clone(), None, move |txn| {
                            crate::multipart::complete(
                                txn,
                                &b,
                                &k,
                                &upload_id,
                                &listed,
                                &claimed,
                                event.as_ref(),
                                if_match,
                                if_none_match,
                            )
                        })
                        .await
                },
            )
            .await?;
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(bucket.clone()),
            key: Some(key.clone()),
            location: Some(format!("/{bucket}/{key}")),
            e_tag: Some(quoted(&record.etag)),
            checksum_type: checksum_type_of(&record),
            ..with_checksums!(CompleteMultipartUploadOutput, record.checksums)
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let input = req.input;
        check_key(&input.bucket, &input.key)?;
        self.upload(&input.bucket, &input.key, &input.upload_id)?;
        let id = input.upload_id;
        self.0
            .index
            .write(move |txn| {
                if txn.open_table(UPLOADS).db()?.get(id.as_str()).db()?.is_none() {
                    return Err(no_such_upload());
                }
                crate::store::drop_upload(txn, &id)
            })
            .await?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }
}

impl Core {
    async fn update_bucket(
        &self,
        bucket: &str,
        change: impl FnOnce(&mut BucketRecord) + Send + 'static,
    ) -> S3Result<()> {
        let b = bucket.to_owned();
        self.index
            .write(move |txn| {
                let mut table = txn.open_table(BUCKETS).db()?;
                let mut record: BucketRecord = match table.get(b.as_str()).db()? {
                    Some(v) => decode(v.value())?,
                    None => return Err(s3_error!(NoSuchBucket, "the bucket {b:?} does not exist")),
                };
                change(&mut record);
                table.insert(b.as_str(), encode(&record)?.as_slice()).db()?;
                Ok(())
            })
            .await
    }

    async fn update_object(
        &self,
        bucket: &str,
        key: &str,
        change: impl FnOnce(&mut ObjectRecord) + Send + 'static,
    ) -> S3Result<()> {
        let (b, k) = (bucket.to_owned(), key.to_owned());
        self.index
            .write(move |txn| {
                require_bucket(txn, &b)?;
                let Some(mut record) = current(txn, &b, &k)? else {
                    return Err(no_such_key(&k));
                };
                change(&mut record);
                let name = objects_table_name(&b);
                txn.open_table(objects_table(&name))
                    .db()?
                    .insert(k.as_bytes(), encode(&record)?.as_slice())
                    .db()?;
                Ok(())
            })
            .await
    }

    async fn commit_part(
        &self,
        upload_id: &str,
        number: i32,
        received: &Received,
        part: PartRecord,
    ) -> S3Result<()> {
        let id = upload_id.to_owned();
        let number = u32::try_from(number).unwrap_or(0);
        let inline = received.inline.clone();
        let result = self
            .index
            .write(move |txn| {
                if txn.open_table(UPLOADS).db()?.get(id.as_str()).db()?.is_none() {
                    return Err(no_such_upload());
                }
                if let (Blob::Inline(blob), Some(data)) = (part.segment.blob, &inline) {
                    crate::store::store_inline(txn, blob, data)?;
                }
                let old = txn
                    .open_table(PARTS)
                    .db()?
                    .insert((id.as_str(), number), encode(&part)?.as_slice())
                    .db()?
                    .map(|v| v.value().to_vec());
                if let Some(old) = old {
                    let old: PartRecord = decode(&old)?;
                    crate::store::release(txn, &[old.segment])?;
                }
                Ok(())
            })
            .await;
        if result.is_err() {
            discard(self, received);
        }
        result
    }
}
