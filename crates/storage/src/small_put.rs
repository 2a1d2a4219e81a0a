//! Small, plain PUTs written in one blocking call, in s3s-fs's on-disk layout.
//!
//! s3s-fs stores an object as three files (the object, its attributes, its entity tag), each
//! written to a temporary file and renamed into place through `tokio::fs`: a dozen hops to the
//! blocking pool for a one-byte object, which was the largest part
//! of the time between an upload and its job's start. PUTs of up to [`MAX_SIZE`] bytes without
//! conditions, checksums, trailers or metadata other than a content type are written here with
//! the same files, names and contents (s3s-fs reads them back for GET, HEAD and listings),
//! except that an empty attributes file is not written; every other PUT goes to s3s-fs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use md5::Digest;
use s3s::dto::{PutObjectInput, StreamingBlob};
use s3s::{S3Result, s3_error};

/// Largest body taken by this path; it is held in memory while written.
pub(crate) const MAX_SIZE: u64 = 1 << 20;

/// Whether `input` is a PUT this path writes exactly as s3s-fs would.
pub(crate) fn applies(input: &PutObjectInput, has_trailers: bool) -> bool {
    let small = input
        .content_length
        .and_then(|n| u64::try_from(n).ok())
        .is_some_and(|n| n <= MAX_SIZE);
    small
        && !has_trailers
        && input.body.is_some()
        && !input.key.ends_with('/')
        && input.content_md5.is_none()
        && input.checksum_algorithm.is_none()
        && input.checksum_crc32.is_none()
        && input.checksum_crc32c.is_none()
        && input.checksum_crc64nvme.is_none()
        && input.checksum_sha1.is_none()
        && input.checksum_sha256.is_none()
        && input.if_match.is_none()
        && input.if_none_match.is_none()
        && input.storage_class.is_none()
        && input.metadata.as_ref().is_none_or(|m| m.is_empty())
        && input.content_encoding.is_none()
        && input.content_disposition.is_none()
        && input.content_language.is_none()
        && input.cache_control.is_none()
        && input.expires.is_none()
        && input.website_redirect_location.is_none()
}

/// Reads a body announced as `length` bytes; a body of another length is refused.
pub(crate) async fn read_body(mut body: StreamingBlob, length: u64) -> S3Result<Bytes> {
    let capacity = usize::try_from(length.min(MAX_SIZE)).unwrap_or(0);
    let mut buf = BytesMut::with_capacity(capacity);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| s3_error!(IncompleteBody, "cannot read the request body: {e}"))?;
        if (buf.len() + chunk.len()) as u64 > length {
            return Err(s3_error!(
                IncompleteBody,
                "the body is longer than its Content-Length"
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    if buf.len() as u64 != length {
        return Err(s3_error!(
            IncompleteBody,
            "the body is shorter than its Content-Length"
        ));
    }
    Ok(buf.freeze())
}

/// An object's attributes file, as s3s-fs serialises it (absent fields are omitted).
#[derive(serde::Serialize)]
struct Attributes<'a> {
    content_type: Option<&'a str>,
}

/// Where the object and its two companion files go under the store's `root`.
struct Paths {
    object: PathBuf,
    attributes: PathBuf,
    internal: PathBuf,
}

impl Paths {
    fn new(root: &Path, bucket: &str, key: &str) -> Self {
        let encode = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let prefix = format!(".bucket-{}.object-{}", encode(bucket), encode(key));
        Self {
            object: root.join(bucket).join(key),
            attributes: root.join(format!("{prefix}.metadata.json")),
            internal: root.join(format!("{prefix}.internal.json")),
        }
    }
}

/// Writes `bucket/key` (names already validated) and returns its entity tag (hex MD5).
/// `Ok(None)` means the bucket does not exist.
pub(crate) fn write(
    root: &Path,
    counter: &AtomicU64,
    bucket: &str,
    key: &str,
    body: &[u8],
    content_type: Option<&str>,
) -> std::io::Result<Option<String>> {
    if !root.join(bucket).is_dir() {
        return Ok(None);
    }
    let etag = hex::encode(md5::Md5::digest(body));
    let paths = Paths::new(root, bucket, key);
    // Temporary names s3s-fs removes at start-up (`.tmp.*.internal.part`), apart from its own.
    let replace = |dest: &Path, content: &[u8]| -> std::io::Result<()> {
        let tmp = root.join(format!(
            ".tmp.small-{}.internal.part",
            counter.fetch_add(1, Ordering::Relaxed)
        ));
        let written = std::fs::File::create(&tmp).and_then(|mut file| file.write_all(content));
        let placed = written.and_then(|()| {
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::rename(&tmp, dest)
        });
        if placed.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        placed
    };
    replace(&paths.object, body)?;
    match content_type {
        Some(content_type) => {
            let attributes = serde_json::to_vec(&Attributes {
                content_type: Some(content_type),
            })
            .map_err(std::io::Error::other)?;
            replace(&paths.attributes, &attributes)?;
        }
        // s3s-fs would write `{}`, which reads back the same as no file at all; not creating
        // one saves a file creation (a journal entry) per upload. One left by an earlier
        // version of the object must go.
        None => match std::fs::remove_file(&paths.attributes) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        },
    }
    let internal =
        serde_json::to_vec(&serde_json::json!({ "e_tag": etag })).map_err(std::io::Error::other)?;
    replace(&paths.internal, &internal)?;
    Ok(Some(etag))
}
