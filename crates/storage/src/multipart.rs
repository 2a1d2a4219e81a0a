//! Completing a multipart upload: one commit that checks every listed part, then makes them
//! the object's segments. A refused completion changes nothing, so the client can retry.

use std::collections::HashMap;

use crate::index::Db as _;
use base64::Engine;
use md5::Digest;
use redb::{ReadableTable, WriteTransaction};
use s3s::dto::ETagCondition;
use s3s::{S3Result, s3_error};

use crate::conditions;
use crate::index::{Checksums, ObjectRecord, PARTS, PartRecord, Segment, UPLOADS, UploadRecord, decode};
use crate::store::{current, install, now_ns, release, require_bucket};

const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;

#[allow(clippy::too_many_arguments)]
pub(crate) fn complete(
    txn: &WriteTransaction,
    bucket: &str,
    key: &str,
    upload_id: &str,
    listed: &[(u32, Option<String>)],
    event: Option<&crate::outbox::EventDraft>,
    if_match: Option<ETagCondition>,
    if_none_match: Option<ETagCondition>,
) -> S3Result<(ObjectRecord, Option<crate::ObjectCreated>)> {
    require_bucket(txn, bucket)?;
    let upload: UploadRecord = {
        let uploads = txn.open_table(UPLOADS).db()?;
        let found = uploads.get(upload_id).db()?;
        match found {
            Some(v) => decode(v.value())?,
            None => return Err(crate::s3::no_such_upload()),
        }
    };
    if upload.bucket != bucket || upload.key != key {
        return Err(crate::s3::no_such_upload());
    }
    let mut uploaded: HashMap<u32, PartRecord> = HashMap::new();
    {
        let parts = txn.open_table(PARTS).db()?;
        for entry in parts.range((upload_id, 0u32)..=(upload_id, u32::MAX)).db()? {
            let (k, v) = entry.db()?;
            uploaded.insert(k.value().1, decode(v.value())?);
        }
    }
    let mut chosen = Vec::with_capacity(listed.len());
    for (i, (number, etag)) in listed.iter().enumerate() {
        let Some(part) = uploaded.get(number) else {
            return Err(s3_error!(
                InvalidPart,
                "part {number} was not uploaded (or its upload failed): upload it, then complete again"
            ));
        };
        if let Some(etag) = etag
            && etag.trim_matches('"') != part.etag
        {
            return Err(s3_error!(
                InvalidPart,
                "the ETag given for part {number} does not match the uploaded part"
            ));
        }
        let last = i + 1 == listed.len();
        if !last && part.segment.size < MIN_PART_SIZE {
            return Err(s3_error!(
                EntityTooSmall,
                "part {number} has {} bytes: every part but the last needs at least 5 MiB",
                part.segment.size
            ));
        }
        chosen.push((*number, part.clone()));
    }
    let existing = current(txn, bucket, key)?;
    conditions::check_write(existing.as_ref(), if_match.as_ref(), if_none_match.as_ref(), key)?;

    let mut md5s = md5::Md5::new();
    for (_, part) in &chosen {
        md5s.update(
            hex::decode(&part.etag).map_err(|_| s3_error!(InternalError, "a stored part ETag is not hex"))?,
        );
    }
    let etag = format!("{}-{}", hex::encode(md5s.finalize()), chosen.len());
    let checksums = composite(upload.checksum_algorithm.as_deref(), &chosen);
    let segments: Vec<Segment> = chosen.iter().map(|(_, p)| p.segment.clone()).collect();
    let record = ObjectRecord {
        size: segments.iter().map(|s| s.size).sum(),
        etag,
        modified: now_ns(),
        segments,
        multipart: true,
        headers: upload.headers.clone(),
        metadata: upload.metadata.clone(),
        checksums,
        tags: upload.tags.clone(),
    };
    // Mutations from here on: the parts not listed are released, the listed ones move into
    // the object.
    let kept: std::collections::HashSet<u32> = chosen.iter().map(|(n, _)| *n).collect();
    let unused: Vec<Segment> = uploaded
        .iter()
        .filter(|(n, _)| !kept.contains(n))
        .map(|(_, p)| p.segment.clone())
        .collect();
    {
        let mut parts = txn.open_table(PARTS).db()?;
        for number in uploaded.keys() {
            parts.remove((upload_id, *number)).db()?;
        }
    }
    txn.open_table(UPLOADS).db()?.remove(upload_id).db()?;
    release(txn, &unused)?;
    let event = match event {
        Some(draft) => Some(crate::outbox::append(txn, bucket, key, &record, draft)?),
        None => None,
    };
    install(txn, bucket, key, &record)?;
    Ok((record, event))
}

/// S3's composite checksum: the checksum of the parts' binary checksums, then `-N`.
fn composite(algorithm: Option<&str>, parts: &[(u32, PartRecord)]) -> Checksums {
    let Some(algorithm) = algorithm else {
        return Checksums::default();
    };
    let pick = |c: &Checksums| -> Option<String> {
        match algorithm {
            "CRC32" => c.crc32.clone(),
            "CRC32C" => c.crc32c.clone(),
            "SHA1" => c.sha1.clone(),
            "SHA256" => c.sha256.clone(),
            _ => None,
        }
    };
    let mut raw = Vec::new();
    for (_, part) in parts {
        let Some(sum) = pick(&part.segment.checksums) else {
            return Checksums::default();
        };
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(sum) else {
            return Checksums::default();
        };
        raw.extend(bytes);
    }
    let mut wanted = crate::blobs::Wanted::default();
    if wanted.add(algorithm).is_err() {
        return Checksums::default();
    }
    let mut hasher = crate::blobs::checksum_hasher(wanted);
    hasher.update(&raw);
    let sums = hasher.finalize();
    let suffix = |s: Option<String>| s.map(|s| format!("{s}-{}", parts.len()));
    Checksums {
        crc32: suffix(sums.checksum_crc32),
        crc32c: suffix(sums.checksum_crc32c),
        sha1: suffix(sums.checksum_sha1),
        sha256: suffix(sums.checksum_sha256),
        crc64nvme: None,
    }
}
