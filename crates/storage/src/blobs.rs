//! Object data: small objects inline in the index, larger ones in immutable files named by a
//! random id under `blobs/xx/`. A key never becomes a path, so any valid S3 key works and none
//! can reach the file system. A data file is written and fsynced before the index commit that
//! refers to it; one left by a crash before that commit is an orphan, removed at start-up.

use std::io::Write;
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use s3s::dto::{ChecksumAlgorithm, StreamingBlob};
use s3s::{S3Error, S3Result, s3_error};

use crate::index::{Blob, Checksums};

/// Objects up to this size live in the index: one commit makes them durable.
pub(crate) const INLINE_MAX: usize = 64 * 1024;

/// Bytes the writer gathers before each write to a data file: enough for few system calls, few
/// enough that the bytes are still in the processor's cache when the kernel copies them (1 MiB
/// cost the server ~15% more processor time per GiB PUT).
const WRITE_BUFFER: usize = 256 << 10;

/// Chunks the writer gathers at most before a write (well under the kernel's `IOV_MAX`), so a
/// body sent in tiny pieces still makes bounded writes.
const MAX_GATHERED: usize = 64;

/// Chunks in flight between the body and the writer (and the hasher) threads.
const PIPELINE_DEPTH: usize = 16;

/// Which checksums to compute while a body streams in.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Wanted {
    pub crc32: bool,
    pub crc32c: bool,
    pub sha1: bool,
    pub sha256: bool,
    pub crc64nvme: bool,
}

impl Wanted {
    pub(crate) fn add(&mut self, algorithm: &str) -> S3Result<()> {
        match algorithm.to_ascii_uppercase().as_str() {
            ChecksumAlgorithm::CRC32 => self.crc32 = true,
            ChecksumAlgorithm::CRC32C => self.crc32c = true,
            ChecksumAlgorithm::SHA1 => self.sha1 = true,
            ChecksumAlgorithm::SHA256 => self.sha256 = true,
            ChecksumAlgorithm::CRC64NVME => self.crc64nvme = true,
            other => {
                return Err(s3_error!(
                    InvalidArgument,
                    "unsupported checksum algorithm {other:?}"
                ));
            }
        }
        Ok(())
    }

    /// Also every checksum the client sent a value for.
    pub(crate) fn add_given(&mut self, given: &Checksums) {
        self.crc32 |= given.crc32.is_some();
        self.crc32c |= given.crc32c.is_some();
        self.sha1 |= given.sha1.is_some();
        self.sha256 |= given.sha256.is_some();
        self.crc64nvme |= given.crc64nvme.is_some();
    }
}

/// A hasher computing the checksums `wanted` names.
pub(crate) fn checksum_hasher(wanted: Wanted) -> s3s::checksum::ChecksumHasher {
    let mut sums = s3s::checksum::ChecksumHasher::default();
    if wanted.crc32 {
        sums.crc32 = Some(Default::default());
    }
    if wanted.crc32c {
        sums.crc32c = Some(Default::default());
    }
    if wanted.sha1 {
        sums.sha1 = Some(Default::default());
    }
    if wanted.sha256 {
        sums.sha256 = Some(Default::default());
    }
    if wanted.crc64nvme {
        sums.crc64nvme = Some(Default::default());
    }
    sums
}

struct Hasher {
    md5: crate::etag_md5::Md5,
    sums: s3s::checksum::ChecksumHasher,
}

impl Hasher {
    fn new(wanted: Wanted) -> S3Result<Self> {
        Ok(Self {
            md5: crate::etag_md5::Md5::new().ok_or_else(md5_failed)?,
            sums: checksum_hasher(wanted),
        })
    }

    fn update(&mut self, data: &[u8]) {
        self.md5.update(data);
        self.sums.update(data);
    }

    fn finish(self) -> S3Result<(String, Checksums)> {
        let sums = self.sums.finalize();
        Ok((
            hex::encode(self.md5.finalize().ok_or_else(md5_failed)?),
            Checksums {
                crc32: sums.checksum_crc32,
                crc32c: sums.checksum_crc32c,
                sha1: sums.checksum_sha1,
                sha256: sums.checksum_sha256,
                crc64nvme: sums.checksum_crc64nvme,
            },
        ))
    }
}

fn md5_failed() -> S3Error {
    tracing::error!("object store: the MD5 of a body could not be computed");
    s3_error!(InternalError, "cannot compute the object's ETag")
}

/// A body as received: where it went, how big it was, and its digests.
#[derive(Debug)]
pub(crate) struct Received {
    pub blob: Blob,
    /// The bytes of an inline blob, for the commit that stores them.
    pub inline: Option<Bytes>,
    pub size: u64,
    /// MD5, hex.
    pub md5: String,
    pub checksums: Checksums,
}

/// The data-file side of the store.
pub(crate) struct Blobs {
    dir: PathBuf,
}

pub(crate) fn new_id() -> u128 {
    rand::random::<u128>()
}

fn io_fault(what: &str, e: &std::io::Error) -> S3Error {
    tracing::error!(error = %e, "object store: {what}");
    s3_error!(InternalError, "{what}")
}

impl Blobs {
    pub(crate) fn open(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        for shard in 0..=255u8 {
            let path = dir.join(format!("{shard:02x}"));
            if !path.is_dir() {
                std::fs::create_dir(&path)?;
                std::fs::File::open(&dir)?.sync_all()?;
            }
        }
        Ok(Self { dir })
    }

    /// Refuses (507) a write of `needed` bytes the disk has no room for, reserve included.
    pub(crate) fn ensure_room(&self, needed: u64) -> S3Result<()> {
        crate::space::ensure_room(&self.dir, needed)
    }

    pub(crate) fn path(&self, id: u128) -> PathBuf {
        let name = format!("{id:032x}");
        self.dir.join(&name[..2]).join(name)
    }

    /// Every data file's id (for the orphan sweep).
    pub(crate) fn all_ids(&self) -> std::io::Result<Vec<u128>> {
        let mut ids = Vec::new();
        for shard in std::fs::read_dir(&self.dir)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(shard.path())? {
                let file = file?;
                if let Some(id) = file
                    .file_name()
                    .to_str()
                    .and_then(|n| u128::from_str_radix(n, 16).ok())
                {
                    ids.push(id);
                }
            }
        }
        Ok(ids)
    }

    pub(crate) fn remove(&self, id: u128) {
        match std::fs::remove_file(self.path(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(error = %e, "object store: cannot remove a data file"),
        }
    }

    /// Receives a body: inline when it ends within [`INLINE_MAX`] bytes, else into a new data
    /// file, written and hashed on two threads and fsynced (with its directory) before this
    /// returns. `expected` is the announced length, checked against what arrived.
    pub(crate) async fn receive(
        &self,
        body: StreamingBlob,
        expected: Option<u64>,
        wanted: Wanted,
    ) -> S3Result<Received> {
        self.ensure_room(expected.unwrap_or(0))?;
        let mut body = body;
        let mut head = BytesMut::new();
        let mut spill = None;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| s3_error!(IncompleteBody, "the request body failed: {e}"))?;
            if head.len() + chunk.len() > INLINE_MAX {
                spill = Some(chunk);
                break;
            }
            head.extend_from_slice(&chunk);
        }
        let Some(first_spilled) = spill else {
            let data = head.freeze();
            check_length(expected, data.len() as u64)?;
            let mut hasher = Hasher::new(wanted)?;
            hasher.update(&data);
            let (md5, checksums) = hasher.finish()?;
            return Ok(Received {
                blob: Blob::Inline(new_id()),
                size: data.len() as u64,
                inline: Some(data),
                md5,
                checksums,
            });
        };
        let mut hasher = Hasher::new(wanted)?;
        let id = new_id();
        let path = self.path(id);
        let (to_writer, mut writer_rx) = tokio::sync::mpsc::channel::<Bytes>(PIPELINE_DEPTH);
        let (to_hasher, mut hasher_rx) = tokio::sync::mpsc::channel::<Bytes>(PIPELINE_DEPTH);
        let writer = tokio::task::spawn_blocking({
            let path = path.clone();
            let dir = self.dir.clone();
            move || write_file(&path, &dir, &mut writer_rx)
        });
        let hasher = tokio::task::spawn_blocking(move || {
            while let Some(chunk) = hasher_rx.blocking_recv() {
                hasher.update(&chunk);
            }
            hasher.finish()
        });
        let fed = async {
            for chunk in [head.freeze(), first_spilled] {
                if to_writer.send(chunk.clone()).await.is_err() || to_hasher.send(chunk).await.is_err() {
                    return Ok(false);
                }
            }
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| s3_error!(IncompleteBody, "the request body failed: {e}"))?;
                if to_writer.send(chunk.clone()).await.is_err() || to_hasher.send(chunk).await.is_err() {
                    return Ok(false);
                }
            }
            Ok::<_, S3Error>(true)
        }
        .await;
        drop((to_writer, to_hasher));
        let written = writer.await;
        let hashed = hasher.await;
        let cleanup = |e: S3Error| {
            let _ = std::fs::remove_file(&path);
            e
        };
        let fed = fed.map_err(cleanup)?;
        let size = match written {
            Ok(Ok(n)) if fed => n,
            Ok(Ok(_)) => return Err(cleanup(s3_error!(InternalError, "cannot store the object"))),
            Ok(Err(e)) if crate::space::is_full(&e) => {
                crate::space::refused(&e);
                return Err(cleanup(crate::space::insufficient_storage()));
            }
            Ok(Err(e)) => return Err(cleanup(io_fault("cannot write a data file", &e))),
            Err(e) => return Err(cleanup(s3_error!(InternalError, "data writer failed: {e}"))),
        };
        let (md5, checksums) = hashed
            .map_err(|e| s3_error!(InternalError, "hasher failed: {e}"))
            .and_then(|hashed| hashed)
            .map_err(cleanup)?;
        check_length(expected, size).map_err(cleanup)?;
        Ok(Received {
            blob: Blob::File(id),
            inline: None,
            size,
            md5,
            checksums,
        })
    }
}

/// Writes the chunks `received` sends to a new file at `path` and fsyncs it with its directory;
/// returns the number of bytes written.
fn write_file(
    path: &std::path::Path,
    blobs_dir: &std::path::Path,
    received: &mut tokio::sync::mpsc::Receiver<Bytes>,
) -> std::io::Result<u64> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    std::thread::scope(|scope| {
        // The new name must be as durable as the bytes. It exists from now on, so its directory
        // is flushed while the body streams in rather than after, off the answer's path.
        let sync_directory = || match path.parent() {
            Some(parent) => std::fs::File::open(parent)?.sync_all(),
            None => Ok(()),
        };
        // Without a thread (the system may refuse one) it is flushed after, as it must be.
        let directory_synced = std::thread::Builder::new()
            .name("cloister-s3-dirsync".into())
            .spawn_scoped(scope, sync_directory)
            .ok();
        let written = write_chunks(&mut file, blobs_dir, received).and_then(|n| {
            file.sync_all()?;
            Ok(n)
        });
        let synced = match directory_synced {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the directory flush panicked"))),
            None => sync_directory(),
        };
        let written = written?;
        synced?;
        Ok(written)
    })
}

fn write_chunks(
    file: &mut std::fs::File,
    blobs_dir: &std::path::Path,
    received: &mut tokio::sync::mpsc::Receiver<Bytes>,
) -> std::io::Result<u64> {
    // The body arrives in pieces of a few KiB to a few hundred; the disk wants fewer, larger
    // writes. They are gathered and written with one writev, not copied into a buffer.
    let mut gathered: Vec<Bytes> = Vec::with_capacity(MAX_GATHERED);
    let mut gathered_len = 0;
    let mut written = 0u64;
    let mut next_check = crate::space::CHECK_EVERY;
    while let Some(chunk) = received.blocking_recv() {
        gathered_len += chunk.len();
        gathered.push(chunk);
        if gathered_len >= WRITE_BUFFER || gathered.len() >= MAX_GATHERED {
            write_gathered(file, &gathered)?;
            written += gathered_len as u64;
            gathered.clear();
            gathered_len = 0;
            // A body of unknown length may eat the reserve the index commits need.
            if written >= next_check {
                next_check = written + crate::space::CHECK_EVERY;
                if crate::space::low(blobs_dir) {
                    return Err(std::io::ErrorKind::StorageFull.into());
                }
            }
        }
    }
    write_gathered(file, &gathered)?;
    Ok(written + gathered_len as u64)
}

fn write_gathered(file: &mut std::fs::File, chunks: &[Bytes]) -> std::io::Result<()> {
    let mut slices: Vec<std::io::IoSlice<'_>> = chunks.iter().map(|c| std::io::IoSlice::new(c)).collect();
    let mut slices = slices.as_mut_slice();
    while !slices.is_empty() {
        match file.write_vectored(slices) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => std::io::IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn check_length(expected: Option<u64>, got: u64) -> S3Result<()> {
    match expected {
        Some(n) if n != got => Err(s3_error!(
            IncompleteBody,
            "the body had {got} bytes, Content-Length announced {n}"
        )),
        _ => Ok(()),
    }
}
