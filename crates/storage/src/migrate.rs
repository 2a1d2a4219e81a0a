//! Migration from the layout of the earlier s3s-fs store: one directory per bucket, objects as
//! files at their key's path, and `.bucket-….object-….{metadata,internal}.json` companions.
//!
//! Each bucket's objects are hard-linked (or copied) into data files and recorded in one
//! commit per bucket; a marker in the index says a migration is under way, so a crash part way
//! resumes (objects recorded twice just replace themselves, their first data files becoming
//! garbage). Only when every bucket is recorded is the old tree removed. Multipart uploads
//! that were in progress are dropped: their clients must start them again.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use serde::Deserialize;

use crate::StorageError;
use crate::blobs::{Blobs, new_id};
use crate::index::{
    BUCKETS, Blob, BucketRecord, Checksums, Headers, Index, META, ObjectRecord, Segment, decode, encode,
    objects_table, objects_table_name,
};
use crate::names::{validate_bucket_name, validate_object_key};

const MIGRATION: &str = "migration-from-s3s-fs";

/// Whether `root` holds data in the old layout.
pub(crate) fn has_legacy_layout(root: &Path) -> Result<bool, StorageError> {
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(".bucket-") || (entry.file_type()?.is_dir() && validate_bucket_name(name).is_ok())
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether a migration began and did not finish.
pub(crate) fn pending(index: &Index) -> Result<bool, StorageError> {
    let txn = index.read().map_err(backend)?;
    let meta = txn.open_table(META).map_err(backend)?;
    Ok(meta
        .get(MIGRATION)
        .map_err(backend)?
        .is_some_and(|v| v.value() == b"pending"))
}

fn backend(e: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(e.to_string())
}

#[derive(Deserialize, Default)]
struct LegacyAttributes {
    #[serde(default)]
    user_metadata: Option<BTreeMap<String, String>>,
    #[serde(flatten)]
    headers: Headers,
}

#[derive(Deserialize, Default)]
struct LegacyInternal {
    e_tag: Option<String>,
    checksum_crc32: Option<String>,
    checksum_crc32c: Option<String>,
    checksum_sha1: Option<String>,
    checksum_sha256: Option<String>,
    checksum_crc64nvme: Option<String>,
}

fn companion<T: for<'de> Deserialize<'de> + Default>(root: &Path, bucket: &str, key: &str, kind: &str) -> T {
    let encode = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let path = root.join(format!(
        ".bucket-{}.object-{}.{kind}.json",
        encode(bucket),
        encode(key)
    ));
    std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

fn md5_of(path: &Path) -> std::io::Result<String> {
    use md5::Digest;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = md5::Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(buf.get(..n).unwrap_or_default());
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Moves every bucket of the old layout into the index, then removes the old tree.
pub(crate) fn run(root: &Path, index: &Index, blobs: &Blobs) -> Result<(), StorageError> {
    let mark = |value: &[u8]| -> Result<(), StorageError> {
        let txn = index.db.begin_write().map_err(backend)?;
        txn.open_table(META)
            .map_err(backend)?
            .insert(MIGRATION, value)
            .map_err(backend)?;
        txn.commit().map_err(backend)
    };
    mark(b"pending")?;
    let mut buckets = Vec::new();
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(name) = name.to_str()
            && entry.file_type()?.is_dir()
            && validate_bucket_name(name).is_ok()
        {
            buckets.push((name.to_owned(), entry.path()));
        }
    }
    let mut total = 0usize;
    for (bucket, dir) in &buckets {
        let created = std::fs::metadata(dir)
            .and_then(|m| m.modified())
            .map(|t| i64::try_from(time::OffsetDateTime::from(t).unix_timestamp_nanos()).unwrap_or(0))
            .unwrap_or_else(|_| crate::store::now_ns());
        let mut records = Vec::new();
        for entry in walkdir::WalkDir::new(dir).follow_links(false) {
            let entry =
                entry.map_err(|e| StorageError::Backend(format!("cannot read the old store: {e}")))?;
            if !entry.file_type().is_file() {
                continue;
            }
            let Ok(relative) = entry.path().strip_prefix(dir) else {
                continue;
            };
            let Some(key) = relative
                .to_str()
                .map(|k| k.replace(std::path::MAIN_SEPARATOR, "/"))
            else {
                tracing::warn!(path = %entry.path().display(), "migration: skipping a file whose name is not UTF-8");
                continue;
            };
            if validate_object_key(&key).is_err() {
                tracing::warn!(%bucket, %key, "migration: skipping a file whose name is not a valid key");
                continue;
            }
            let meta = entry
                .metadata()
                .map_err(|e| StorageError::Backend(e.to_string()))?;
            let attributes: LegacyAttributes = companion(root, bucket, &key, "metadata");
            let internal: LegacyInternal = companion(root, bucket, &key, "internal");
            let etag = match internal.e_tag.clone() {
                Some(etag) => etag,
                None => md5_of(entry.path())?,
            };
            let id = new_id();
            let target = blobs.path(id);
            if std::fs::hard_link(entry.path(), &target).is_err() {
                std::fs::copy(entry.path(), &target)?;
                std::fs::File::open(&target)?.sync_all()?;
            }
            let parts = etag
                .rsplit_once('-')
                .and_then(|(_, n)| n.parse::<usize>().ok())
                .filter(|_| etag.contains('-'));
            let mut headers = attributes.headers;
            headers.strip_aws_chunked();
            records.push((
                key,
                ObjectRecord {
                    size: meta.len(),
                    etag,
                    modified: meta
                        .modified()
                        .map(|t| {
                            i64::try_from(time::OffsetDateTime::from(t).unix_timestamp_nanos()).unwrap_or(0)
                        })
                        .unwrap_or(created),
                    segments: vec![Segment {
                        blob: Blob::File(id),
                        size: meta.len(),
                        checksums: Checksums::default(),
                    }],
                    // The old layout kept no part boundaries: a multipart object keeps its ETag
                    // but becomes one segment.
                    multipart: false,
                    headers,
                    metadata: attributes.user_metadata.unwrap_or_default(),
                    checksums: if parts.is_some() {
                        Checksums::default()
                    } else {
                        Checksums {
                            crc32: internal.checksum_crc32,
                            crc32c: internal.checksum_crc32c,
                            sha1: internal.checksum_sha1,
                            sha256: internal.checksum_sha256,
                            crc64nvme: internal.checksum_crc64nvme,
                        }
                    },
                    tags: BTreeMap::new(),
                },
            ));
        }
        // The data files just linked must be durable before the records naming them.
        for shard in std::fs::read_dir(root.join(crate::BLOBS_DIR))? {
            std::fs::File::open(shard?.path())?.sync_all()?;
        }
        let txn = index.db.begin_write().map_err(backend)?;
        {
            let mut table = txn.open_table(BUCKETS).map_err(backend)?;
            let record = BucketRecord {
                created,
                ..Default::default()
            };
            table
                .insert(bucket.as_str(), encode(&record).map_err(backend)?.as_slice())
                .map_err(backend)?;
            let name = objects_table_name(bucket);
            let mut objects = txn.open_table(objects_table(&name)).map_err(backend)?;
            let mut garbage = txn.open_table(crate::index::GARBAGE).map_err(backend)?;
            for (key, record) in &records {
                let old = objects
                    .insert(key.as_bytes(), encode(record).map_err(backend)?.as_slice())
                    .map_err(backend)?
                    .map(|v| v.value().to_vec());
                if let Some(old) = old {
                    let old: ObjectRecord = decode(&old).map_err(backend)?;
                    for segment in old.segments {
                        if let Blob::File(id) = segment.blob {
                            garbage.insert(id, ()).map_err(backend)?;
                        }
                    }
                }
            }
        }
        txn.commit().map_err(backend)?;
        total += records.len();
        tracing::info!(%bucket, objects = records.len(), "migrated a bucket from the s3s-fs layout");
    }
    mark(b"done")?;
    for (_, dir) in &buckets {
        std::fs::remove_dir_all(dir)?;
    }
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let legacy_file =
            name.starts_with(".bucket-") || name.starts_with(".upload") || name.starts_with(".tmp.");
        if legacy_file && entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
        }
    }
    tracing::info!(
        buckets = buckets.len(),
        objects = total,
        "object store migrated to the indexed layout"
    );
    Ok(())
}
