//! Completing a multipart upload: one commit that checks every listed part, then makes them
//! the object's segments. A refused completion changes nothing, so the client can retry.

use std::collections::HashMap;

use crate::index::Db as _;
use base64::Engine;
use md5::Digest;
use redb::{ReadableTable, WriteTransaction};
use s3s::dto::{ChecksumAlgorithm, ChecksumType, ETagCondition};
use s3s::{S3Result, s3_error};

use crate::conditions;
use crate::index::{Checksums, ObjectRecord, PARTS, PartRecord, Segment, UPLOADS, UploadRecord, decode};
use crate::store::{current, install, now_ns, release, require_bucket};

const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;

/// What a CompleteMultipartUpload request says the object's checksums are.
pub(crate) struct Claimed {
    pub checksums: Checksums,
    pub checksum_type: Option<ChecksumType>,
}

/// The checksum type of a new upload, as S3 allows them: CRC64NVME only whole-object (its
/// default), SHA-1 and SHA-256 only composite, CRC32 and CRC32C either (composite by default);
/// no type without an algorithm.
pub(crate) fn checksum_type(
    algorithm: Option<&ChecksumAlgorithm>,
    kind: Option<&ChecksumType>,
) -> S3Result<Option<ChecksumType>> {
    let kind = kind.map(|k| k.as_str().to_ascii_uppercase());
    if let Some(kind) = &kind
        && kind != ChecksumType::FULL_OBJECT
        && kind != ChecksumType::COMPOSITE
    {
        return Err(s3_error!(
            InvalidRequest,
            "unknown checksum type {kind:?}: FULL_OBJECT or COMPOSITE"
        ));
    }
    let Some(algorithm) = algorithm else {
        return match kind {
            Some(_) => Err(s3_error!(
                InvalidRequest,
                "a checksum type needs a checksum algorithm (x-amz-checksum-algorithm)"
            )),
            None => Ok(None),
        };
    };
    let algorithm = algorithm.as_str().to_ascii_uppercase();
    let full = match (algorithm.as_str(), kind.as_deref()) {
        (ChecksumAlgorithm::CRC64NVME, None | Some(ChecksumType::FULL_OBJECT)) => true,
        (ChecksumAlgorithm::CRC32 | ChecksumAlgorithm::CRC32C, Some(ChecksumType::FULL_OBJECT)) => true,
        (ChecksumAlgorithm::CRC64NVME, Some(_)) | (_, Some(ChecksumType::FULL_OBJECT)) => {
            return Err(s3_error!(
                InvalidRequest,
                "the {algorithm} checksum cannot be of type {}: CRC64NVME is only FULL_OBJECT, SHA1 and SHA256 only COMPOSITE",
                kind.as_deref().unwrap_or_default()
            ));
        }
        _ => false,
    };
    Ok(Some(ChecksumType::from_static(if full {
        ChecksumType::FULL_OBJECT
    } else {
        ChecksumType::COMPOSITE
    })))
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn complete(
    txn: &WriteTransaction,
    bucket: &str,
    key: &str,
    upload_id: &str,
    listed: &[(u32, Option<String>)],
    claimed: &Claimed,
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
    let full_object = upload.checksum_type.as_deref() == Some(ChecksumType::FULL_OBJECT);
    if let Some(kind) = &claimed.checksum_type {
        let expected = if full_object {
            ChecksumType::FULL_OBJECT
        } else {
            ChecksumType::COMPOSITE
        };
        if upload.checksum_algorithm.is_some() && !kind.as_str().eq_ignore_ascii_case(expected) {
            return Err(s3_error!(
                InvalidRequest,
                "the upload was created with the {expected} checksum type, not {}",
                kind.as_str()
            ));
        }
    }
    let checksums = if full_object {
        whole(upload.checksum_algorithm.as_deref(), &chosen)?
    } else {
        composite(upload.checksum_algorithm.as_deref(), &chosen)
    };
    check_claimed(&claimed.checksums, &checksums)?;
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

/// The whole object's CRC, combined from the parts' CRCs (CRC combination, as zlib's
/// `crc32_combine`: no byte is read again).
fn whole(algorithm: Option<&str>, parts: &[(u32, PartRecord)]) -> S3Result<Checksums> {
    use crc_fast::CrcAlgorithm;
    type Pick = fn(&Checksums) -> Option<&String>;
    let (kind, width, pick): (CrcAlgorithm, usize, Pick) = match algorithm {
        Some(ChecksumAlgorithm::CRC32) => (CrcAlgorithm::Crc32IsoHdlc, 4, |c| c.crc32.as_ref()),
        Some(ChecksumAlgorithm::CRC32C) => (CrcAlgorithm::Crc32Iscsi, 4, |c| c.crc32c.as_ref()),
        Some(ChecksumAlgorithm::CRC64NVME) => (CrcAlgorithm::Crc64Nvme, 8, |c| c.crc64nvme.as_ref()),
        _ => return Ok(Checksums::default()),
    };
    let mut whole: Option<u64> = None;
    for (number, part) in parts {
        let crc = pick(&part.segment.checksums)
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .filter(|raw| raw.len() == width)
            .map(|raw| raw.iter().fold(0u64, |acc, byte| (acc << 8) | u64::from(*byte)))
            .ok_or_else(|| {
                s3_error!(
                    InvalidPart,
                    "part {number} has no {} checksum: upload it again, then complete",
                    algorithm.unwrap_or_default()
                )
            })?;
        whole = Some(match whole {
            None => crc,
            Some(acc) => crc_fast::checksum_combine(kind, acc, crc, part.segment.size),
        });
    }
    let encoded = whole.map(|crc| {
        let bytes = crc.to_be_bytes();
        base64::engine::general_purpose::STANDARD.encode(&bytes[8 - width..])
    });
    Ok(match algorithm {
        Some(ChecksumAlgorithm::CRC32) => Checksums {
            crc32: encoded,
            ..Default::default()
        },
        Some(ChecksumAlgorithm::CRC32C) => Checksums {
            crc32c: encoded,
            ..Default::default()
        },
        _ => Checksums {
            crc64nvme: encoded,
            ..Default::default()
        },
    })
}

/// Refuses a completion whose request names a checksum the object does not have.
fn check_claimed(claimed: &Checksums, computed: &Checksums) -> S3Result<()> {
    let pairs = [
        ("CRC32", &claimed.crc32, &computed.crc32),
        ("CRC32C", &claimed.crc32c, &computed.crc32c),
        ("SHA1", &claimed.sha1, &computed.sha1),
        ("SHA256", &claimed.sha256, &computed.sha256),
        ("CRC64NVME", &claimed.crc64nvme, &computed.crc64nvme),
    ];
    for (name, claimed, computed) in pairs {
        let Some(claimed) = claimed else { continue };
        match computed {
            Some(computed) if computed == claimed => {}
            Some(computed) => {
                return Err(s3_error!(
                    BadDigest,
                    "the {name} checksum given ({claimed}) does not match the object's ({computed})"
                ));
            }
            None => {
                return Err(s3_error!(
                    InvalidRequest,
                    "the upload was not created with the {name} checksum algorithm"
                ));
            }
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Parts with their checksums as the store computes them while a body streams in.
    fn parts(algorithm: &str, bodies: &[&[u8]]) -> Vec<(u32, PartRecord)> {
        bodies
            .iter()
            .zip(1..)
            .map(|(body, number)| {
                let mut wanted = crate::blobs::Wanted::default();
                wanted.add(algorithm).unwrap();
                let mut hasher = crate::blobs::checksum_hasher(wanted);
                hasher.update(body);
                let sums = hasher.finalize();
                let checksums = Checksums {
                    crc32: sums.checksum_crc32,
                    crc32c: sums.checksum_crc32c,
                    crc64nvme: sums.checksum_crc64nvme,
                    ..Default::default()
                };
                let segment = Segment {
                    blob: crate::index::Blob::Inline(u128::from(number)),
                    size: body.len() as u64,
                    checksums,
                };
                (
                    number,
                    PartRecord {
                        segment,
                        etag: String::new(),
                        modified: 0,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn a_whole_objects_crc_is_combined_from_its_parts() {
        let bodies: [&[u8]; 4] = [
            b"first part, ",
            b"",
            b"a third one that is longer than the others, ",
            b"end",
        ];
        let joined: Vec<u8> = bodies.concat();
        for algorithm in ["CRC32", "CRC32C", "CRC64NVME"] {
            let expected = {
                let mut wanted = crate::blobs::Wanted::default();
                wanted.add(algorithm).unwrap();
                let mut hasher = crate::blobs::checksum_hasher(wanted);
                hasher.update(&joined);
                let sums = hasher.finalize();
                sums.checksum_crc32
                    .or(sums.checksum_crc32c)
                    .or(sums.checksum_crc64nvme)
            };
            let got = whole(Some(algorithm), &parts(algorithm, &bodies)).unwrap();
            let got = got.crc32.or(got.crc32c).or(got.crc64nvme);
            assert_eq!(got, expected, "{algorithm}");
            assert!(got.is_some());
        }
        // A part without the upload's CRC cannot be combined: refused, never guessed.
        let mut missing = parts("CRC64NVME", &bodies);
        missing[2].1.segment.checksums = Checksums::default();
        assert!(whole(Some("CRC64NVME"), &missing).is_err());
    }

    #[test]
    fn checksum_types_follow_s3_rules() {
        let algorithm = |a: &'static str| Some(ChecksumAlgorithm::from_static(a));
        let kind = |k: &'static str| ChecksumType::from_static(k);
        let decide = |a: Option<ChecksumAlgorithm>, k: Option<ChecksumType>| {
            checksum_type(a.as_ref(), k.as_ref()).map(|t| t.map(|t| t.as_str().to_owned()))
        };
        assert_eq!(
            decide(algorithm("CRC64NVME"), None).unwrap().as_deref(),
            Some("FULL_OBJECT")
        );
        assert_eq!(
            decide(algorithm("CRC32"), None).unwrap().as_deref(),
            Some("COMPOSITE")
        );
        assert_eq!(
            decide(algorithm("CRC32C"), Some(kind("FULL_OBJECT")))
                .unwrap()
                .as_deref(),
            Some("FULL_OBJECT")
        );
        assert_eq!(decide(None, None).unwrap(), None);
        assert!(decide(algorithm("CRC64NVME"), Some(kind("COMPOSITE"))).is_err());
        assert!(decide(algorithm("SHA256"), Some(kind("FULL_OBJECT"))).is_err());
        assert!(decide(None, Some(kind("FULL_OBJECT"))).is_err());
        assert!(decide(algorithm("CRC32"), Some(kind("PARTIAL"))).is_err());
    }
}
