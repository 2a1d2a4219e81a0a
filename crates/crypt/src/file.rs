//! The file-to-file API: [`encrypt_file`] and [`decrypt_file`] seal and open one object between
//! two files on several threads, with positional I/O.
//!
//! Every chunk is independent given the payload key, the nonce prefix and its index, and a chunk's
//! place in both files follows from its index (plaintext at `i·chunk_size`, ciphertext at
//! `header_len + i·(chunk_size + 16)`). So the chunk range is split into one contiguous range per
//! thread, and each thread reads a batch of chunks (about [`BATCH_BYTES`]) into its own buffer
//! with `pread`, seals or opens it in place (the in-place code of [`crate::seal_in_place`] and
//! [`crate::open_in_place`]) and writes it at its offset with `pwrite`. The files' cursors are
//! never used or moved.
//!
//! The bytes are those of [`crate::encrypt`] for the same header, and decryption gives the
//! streaming reader's verdict for every input: the header is read and checked by the same code,
//! the chunk layout follows from the ciphertext length exactly as the streaming reader's
//! look-ahead splits it, and when several chunks fail, the error reported is the one of the
//! lowest failing chunk, the one a sequential reader hits first. Workers never stop on a failure
//! after their own chunks, only on one before them, so that lowest failure is always found.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use zeroize::Zeroizing;

use crate::CryptError;
use crate::header::{TAG_LEN, build_header};
use crate::keys::{DecryptionKey, ObjectBinding, Recipient};
use crate::slice::{ChunkSpan, MAX_CHUNKS, PayloadKey, read_and_open_header};
use crate::stream::{Decrypted, EncryptOptions};

/// Bytes each thread reads, seals or opens, and writes at a time (at least one chunk): large
/// enough that the system calls cost nothing next to AES, small enough to stay in L2 cache
/// between the read, the seal or open, and the write.
const BATCH_BYTES: usize = 1 << 20;

/// Encrypts the regular file `input` into `output` as one object bound to `binding`, readable by
/// each of `recipients`, on up to `threads` threads. Returns the number of plaintext bytes
/// encrypted.
///
/// The object has the layout [`crate::encrypt`] writes (and decrypts with every API); the
/// plaintext length is taken from `input.metadata()`, so `input` must not change during the call
/// (if it shrinks, the call fails). `threads` 0 or 1 runs on the calling thread; more threads are
/// capped at the number of chunks. Both files are accessed with positional reads and writes
/// (their cursors are not used): `output` must be writable and not opened in append mode, and is
/// set to exactly the object's length ([`crate::encrypted_len`]). On error, `output` is
/// truncated to length 0, as a partial object is useless.
pub fn encrypt_file(
    input: &File,
    output: &File,
    recipients: &[Recipient],
    binding: &ObjectBinding,
    options: &EncryptOptions,
    threads: usize,
) -> Result<u64, CryptError> {
    let result = encrypt_file_inner(input, output, recipients, binding, options, threads);
    if result.is_err() {
        // Best effort: the caller gets the original error either way.
        let _ = output.set_len(0);
    }
    result
}

fn encrypt_file_inner(
    input: &File,
    output: &File,
    recipients: &[Recipient],
    binding: &ObjectBinding,
    options: &EncryptOptions,
    threads: usize,
) -> Result<u64, CryptError> {
    let len = regular_file_len(input, "the input must be a regular file")?;
    let h = build_header(recipients, binding, options.chunk_size)?;
    let cs = options.chunk_size as usize;
    let (cs64, cap64) = (
        u64::from(options.chunk_size),
        u64::from(options.chunk_size) + TAG_LEN as u64,
    );
    let chunks = len.div_ceil(cs64).max(1);
    if chunks > MAX_CHUNKS {
        return Err(CryptError::TooManyChunks);
    }
    let hl = h.bytes.len() as u64;
    let object_len = (chunks * TAG_LEN as u64)
        .checked_add(len)
        .and_then(|payload| payload.checked_add(hl))
        .ok_or(CryptError::InvalidArgument("input too large"))?;
    output.write_all_at(&h.bytes, 0)?;
    let payload = PayloadKey {
        key: &h.payload,
        prefix: &h.nonce_prefix,
        chunk_size: cs,
    };
    for_each_batch(chunks, threads, cs + TAG_LEN, |first, count, buf| {
        // Chunks first..first + count: their plaintext is contiguous in `input`, their
        // ciphertext contiguous in `output`.
        let pt_start = first * cs64;
        let pt_len = to_usize(len.min((first + count) * cs64) - pt_start)?;
        let pt = buf
            .get_mut(..pt_len)
            .ok_or(CryptError::Crypto("batch buffer too small"))?;
        input.read_exact_at(pt, pt_start)?;
        payload.seal_in_place(buf, pt_len, 0, first, chunks)?;
        let ct = buf
            .get(..pt_len + to_usize(count)? * TAG_LEN)
            .ok_or(CryptError::Crypto("batch buffer too small"))?;
        output.write_all_at(ct, hl + first * cap64)?;
        Ok(())
    })?;
    // Also cuts whatever `output` held beyond the object.
    output.set_len(object_len)?;
    Ok(len)
}

/// Decrypts the object in the regular file `input` into `output` on up to `threads` threads.
/// Returns the number of plaintext bytes written.
///
/// The header is read and authenticated exactly as [`crate::decrypt_with`] does, and every input
/// gets the streaming reader's verdict: the same error for a wrong key or binding, a malformed or
/// tampered header, truncation, reordered, duplicated or flipped chunks, or appended bytes (the
/// error of the first chunk a sequential reader would reject). Each chunk's plaintext is written
/// at `index · chunk_size` once its tag verified; `output` is then set to exactly the plaintext
/// length. **On any error, `output` is truncated to length 0** before the error is returned, so
/// no plaintext of an object that fails to verify is left behind (if that truncation itself
/// fails, the original error is still returned and the caller must discard the file).
///
/// `threads` 0 or 1 runs on the calling thread; more threads are capped at the number of chunks.
/// Both files are accessed with positional reads and writes (their cursors are not used):
/// `output` must be writable and not opened in append mode, and `input` must not change during
/// the call.
pub fn decrypt_file(
    input: &File,
    output: &File,
    key: DecryptionKey<'_>,
    binding: &ObjectBinding,
    threads: usize,
) -> Result<u64, CryptError> {
    decrypt_file_from(input, output, key, binding, &[], threads).map(|d| d.len)
}

/// Like [`decrypt_file`], and reports the object's authenticated sender; when `senders` is not
/// empty, the object must be authenticated by one of them (the rules of
/// [`crate::decrypt_from`]): otherwise nothing is written and `output` is truncated to length 0.
pub fn decrypt_file_from(
    input: &File,
    output: &File,
    key: DecryptionKey<'_>,
    binding: &ObjectBinding,
    senders: &[Recipient],
    threads: usize,
) -> Result<Decrypted, CryptError> {
    let result = decrypt_file_inner(input, output, key, binding, senders, threads);
    if result.is_err() {
        // Best effort: the documented contract tells the caller what to do if it fails.
        let _ = output.set_len(0);
    }
    result
}

fn decrypt_file_inner(
    input: &File,
    output: &File,
    key: DecryptionKey<'_>,
    binding: &ObjectBinding,
    senders: &[Recipient],
    threads: usize,
) -> Result<Decrypted, CryptError> {
    let file_len = regular_file_len(input, "the input must be a regular file")?;
    let h = read_and_open_header(
        &mut BufReader::new(ReadAt { file: input, pos: 0 }),
        key,
        binding,
        senders,
    )?;
    let hl = h.len as u64;
    let payload_len = file_len.saturating_sub(hl);
    // Nothing after the header: cut at the first chunk boundary, as the streaming reader says.
    if payload_len == 0 {
        return Err(CryptError::Truncated);
    }
    let cap = h.chunk_size + TAG_LEN;
    let (cs64, cap64) = (h.chunk_size as u64, cap as u64);
    // The streaming reader's split: full chunks, the last one whatever remains (1..=cap bytes;
    // fewer than a tag fails on that chunk, after the ones before it, like there).
    let chunks = payload_len.div_ceil(cap64);
    let payload = h.payload_key();
    for_each_batch(chunks, threads, cap, |first, count, buf| {
        let ct_start = first * cap64;
        let ct_len = to_usize(payload_len.min((first + count) * cap64) - ct_start)?;
        let ct = buf
            .get_mut(..ct_len)
            .ok_or(CryptError::Crypto("batch buffer too small"))?;
        input.read_exact_at(ct, hl + ct_start)?;
        let spans = (0..count).map(|j| {
            let index = first + j;
            // j < count ≤ the batch size, which fits in the buffer: no truncation.
            let start = j as usize * cap;
            ChunkSpan {
                index,
                start,
                len: cap.min(ct_len.saturating_sub(start)),
                last: index + 1 == chunks,
            }
        });
        let plain = payload.open_in_place(buf, spans, 0)?;
        let pt = buf
            .get(..plain)
            .ok_or(CryptError::Crypto("batch buffer too small"))?;
        output.write_all_at(pt, first * cs64)?;
        Ok(())
    })?;
    // Every chunk verified, so each held at least a tag.
    let plaintext_len = payload_len
        .checked_sub(chunks * TAG_LEN as u64)
        .ok_or(CryptError::Crypto("chunk layout mismatch"))?;
    // Also cuts whatever `output` held beyond the plaintext.
    output.set_len(plaintext_len)?;
    Ok(Decrypted {
        len: plaintext_len,
        sender: h.sender,
    })
}

/// The length of `file`, which must be a regular file (positional I/O and a length known in
/// advance).
fn regular_file_len(file: &File, what: &'static str) -> Result<u64, CryptError> {
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(CryptError::InvalidArgument(what));
    }
    Ok(meta.len())
}

fn to_usize(n: u64) -> Result<usize, CryptError> {
    usize::try_from(n).map_err(|_| CryptError::InvalidArgument("object too large for this platform"))
}

/// A `Read` over a file from offset `pos` with positional reads: the file's cursor is left alone.
struct ReadAt<'a> {
    file: &'a File,
    pos: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// The failure of the lowest-indexed batch so far, over all threads: the error a sequential pass
/// over the chunks would have stopped at.
struct FirstFailure {
    /// First chunk of the failed batch, `u64::MAX` while none failed.
    index: AtomicU64,
    error: Mutex<Option<(u64, CryptError)>>,
}

impl FirstFailure {
    /// Whether the batch starting at chunk `first` can still matter: no batch before it failed.
    fn before(&self, first: u64) -> bool {
        first < self.index.load(Ordering::Relaxed)
    }

    fn record(&self, first: u64, error: CryptError) {
        self.index.fetch_min(first, Ordering::Relaxed);
        let mut slot = self.error.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.as_ref().is_none_or(|(at, _)| first < *at) {
            *slot = Some((first, error));
        }
    }

    fn into_result(self) -> Result<(), CryptError> {
        match self.error.into_inner().unwrap_or_else(PoisonError::into_inner) {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }
}

/// Runs `batch(first, count, buf)` over chunks `0..chunks`, on the calling thread if `threads`
/// ≤ 1, else on `min(threads, chunks)` scoped threads, each taking one contiguous range of
/// chunks in order, in batches of about [`BATCH_BYTES`] with its own zeroized buffer of
/// `count · bytes_per_chunk` bytes. A thread stops at its first failure, or once a batch before
/// its next one has failed; the error returned is that of the lowest failing batch.
///
/// Which chunk of a batch failed need not be recorded: ranges are disjoint and ordered, so the
/// batch start orders failures across threads as well as the chunk index would, and within a
/// thread the first failure is the lowest.
fn for_each_batch(
    chunks: u64,
    threads: usize,
    bytes_per_chunk: usize,
    batch: impl Fn(u64, u64, &mut [u8]) -> Result<(), CryptError> + Sync,
) -> Result<(), CryptError> {
    let per_batch = (BATCH_BYTES / bytes_per_chunk).max(1) as u64;
    let failure = FirstFailure {
        index: AtomicU64::new(u64::MAX),
        error: Mutex::new(None),
    };
    let work = |start: u64, end: u64| {
        let buf_len = per_batch.min(end - start) as usize * bytes_per_chunk;
        let mut buf = Zeroizing::new(vec![0u8; buf_len]);
        let mut first = start;
        while first < end && failure.before(first) {
            let count = per_batch.min(end - first);
            if let Err(e) = batch(first, count, &mut buf) {
                failure.record(first, e);
                return;
            }
            first += count;
        }
    };
    let threads = (threads.max(1) as u64).min(chunks);
    if threads <= 1 {
        work(0, chunks);
    } else {
        // Range k is [chunks·k/threads, chunks·(k+1)/threads); u128 keeps the product exact.
        let bound = |k: u64| (u128::from(chunks) * u128::from(k) / u128::from(threads)) as u64;
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|k| {
                    let (start, end) = (bound(k), bound(k + 1));
                    (start, s.spawn(move || work(start, end)))
                })
                .collect();
            for (start, worker) in workers {
                if worker.join().is_err() {
                    failure.record(start, CryptError::Crypto("worker thread panicked"));
                }
            }
        });
    }
    failure.into_result()
}
