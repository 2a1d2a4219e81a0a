//! The in-memory API: the same objects as [`crate::encrypt`] and [`crate::decrypt`], sealed and
//! opened between the caller's buffers instead of through `Read`/`Write`.
//!
//! A `Read`/`Write` pipeline has to copy every byte into its chunk buffer and out again, and on
//! large objects those copies cost more than AES itself (see `cloister-bench crypt`). Here each chunk
//! goes once to its place in the output and is sealed (opened) there while in cache; the
//! in-place variants do that within the caller's buffer, so, like raw in-place AES-GCM, they read
//! and write every byte once. The bytes are exactly those of the streaming API for the same
//! header (tested), and decryption follows the rules of `docs/encrypted-object-format.md` with
//! the same errors as [`crate::decrypt`].

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce};
use zeroize::{Zeroize, Zeroizing};

use crate::CryptError;
use crate::header::{NONCE_PREFIX_LEN, NewHeader, TAG_LEN, build_header, open_header, read_header};
use crate::keys::{DecryptionKey, ObjectBinding, Recipient};
use crate::stream::{Decrypted, EncryptOptions, chunk_nonce, seal_chunk};

/// The chunk counter is 32 bits wide (format rule `n ≤ 2^32`).
pub(crate) const MAX_CHUNKS: u64 = 1 << 32;

/// Number of chunks for `plaintext_len` bytes: an empty object still has one (empty) chunk.
fn chunk_count(plaintext_len: usize, cs: usize) -> Result<usize, CryptError> {
    let n = plaintext_len.div_ceil(cs).max(1);
    if n as u64 > MAX_CHUNKS {
        return Err(CryptError::TooManyChunks);
    }
    Ok(n)
}

/// `header_len + plaintext_len + n·16`, or an error if it does not fit in memory.
fn object_len(header_len: usize, plaintext_len: usize, chunks: usize) -> Result<usize, CryptError> {
    chunks
        .checked_mul(TAG_LEN)
        .and_then(|tags| tags.checked_add(plaintext_len))
        .and_then(|payload| payload.checked_add(header_len))
        .ok_or(CryptError::InvalidArgument(
            "plaintext too large for one in-memory object",
        ))
}

/// Encrypts `plaintext` as one object bound to `binding`, readable by each of `recipients`,
/// and appends it to `output`.
///
/// Each chunk is copied to its place in `output` and sealed there (no intermediate buffer);
/// `output` is reserved once for the whole object (see [`crate::encrypted_len`]). On error,
/// `output` is restored to its original length. [`seal_in_place`] is faster when the plaintext
/// buffer may be consumed: it writes no second copy of the data.
pub fn encrypt_into(
    plaintext: &[u8],
    output: &mut Vec<u8>,
    recipients: &[Recipient],
    binding: &ObjectBinding,
    options: &EncryptOptions,
) -> Result<(), CryptError> {
    let h = build_header(recipients, binding, options.chunk_size)?;
    encrypt_into_with(&h, options.chunk_size as usize, plaintext, output)
}

/// Like [`encrypt_into`], into a new `Vec` of exactly the object's length.
pub fn encrypt_to_vec(
    plaintext: &[u8],
    recipients: &[Recipient],
    binding: &ObjectBinding,
    options: &EncryptOptions,
) -> Result<Vec<u8>, CryptError> {
    let mut out = Vec::new();
    encrypt_into(plaintext, &mut out, recipients, binding, options)?;
    Ok(out)
}

fn encrypt_into_with(
    h: &NewHeader,
    cs: usize,
    plaintext: &[u8],
    output: &mut Vec<u8>,
) -> Result<(), CryptError> {
    let n = chunk_count(plaintext.len(), cs)?;
    let start = output.len();
    output.reserve(object_len(h.bytes.len(), plaintext.len(), n)?);
    output.extend_from_slice(&h.bytes);
    let sealed = (0..n).try_for_each(|i| {
        // Not `plaintext.chunks(cs)`: an empty plaintext still needs its one empty chunk.
        let rest = plaintext.get(i * cs..).unwrap_or_default();
        let pt = rest.get(..cs).unwrap_or(rest);
        seal_chunk_into(&h.payload, &h.nonce_prefix, i, i + 1 == n, pt, output)
    });
    if sealed.is_err() {
        // Only ciphertext was written, but a partial object is useless to the caller.
        output.truncate(start);
    }
    sealed
}

/// Appends chunk `index` (ciphertext ‖ tag) of `pt` to `output`.
///
/// The chunk is copied to its place and sealed there rather than sealed out of place into
/// `output`: safe Rust cannot hand AES the uninitialised spare capacity, and zero-filling it
/// first measured slower than the copy (the copy brings the lines into cache for AES).
#[inline]
fn seal_chunk_into(
    key: &LessSafeKey,
    prefix: &[u8; NONCE_PREFIX_LEN],
    index: usize,
    last: bool,
    pt: &[u8],
    output: &mut Vec<u8>,
) -> Result<(), CryptError> {
    let nonce = chunk_nonce(prefix, index as u64, last)?;
    let at = output.len();
    output.extend_from_slice(pt);
    output.extend_from_slice(&[0u8; TAG_LEN]);
    let chunk = output
        .get_mut(at..)
        .ok_or(CryptError::Crypto("output buffer too small"))?;
    seal_chunk(key, nonce, chunk, pt.len()).map(|_| ())
}

/// Encrypts the plaintext in `buf` in place: on success `buf` holds the whole object (header
/// and chunks), exactly as [`encrypt_into`] would have written it.
///
/// The object is [`crate::encrypted_len`] bytes long; if `buf`'s capacity is smaller, it grows
/// once (a reallocation). Chunks are processed from the last to the first, each moved to its
/// final offset and sealed there, so every byte is read and written once, like raw in-place
/// AES-GCM. If the arguments are invalid (or the RNG fails), `buf` is left unchanged; if sealing
/// fails midway, `buf` is zeroized and emptied, as it is then neither plaintext nor an object.
pub fn seal_in_place(
    buf: &mut Vec<u8>,
    recipients: &[Recipient],
    binding: &ObjectBinding,
    options: &EncryptOptions,
) -> Result<(), CryptError> {
    let h = build_header(recipients, binding, options.chunk_size)?;
    seal_in_place_with(&h, options.chunk_size as usize, buf)
}

fn seal_in_place_with(h: &NewHeader, cs: usize, buf: &mut Vec<u8>) -> Result<(), CryptError> {
    let pt_len = buf.len();
    let hl = h.bytes.len();
    let n = chunk_count(pt_len, cs)?;
    buf.resize(object_len(hl, pt_len, n)?, 0);
    let payload = PayloadKey {
        key: &h.payload,
        prefix: &h.nonce_prefix,
        chunk_size: cs,
    };
    if let Err(e) = payload.seal_in_place(buf, pt_len, hl, 0, n as u64) {
        buf.zeroize();
        return Err(e);
    }
    buf.get_mut(..hl)
        .ok_or(CryptError::Crypto("object buffer too small"))?
        .copy_from_slice(&h.bytes);
    Ok(())
}

/// An object's payload key, nonce prefix and chunk size: all it takes to seal or open any run of
/// its chunks in place within a buffer. Shared by the in-place API (the whole object at once)
/// and [`crate::encrypt_file`] / [`crate::decrypt_file`] (one batch of chunks at a time).
pub(crate) struct PayloadKey<'a> {
    pub(crate) key: &'a LessSafeKey,
    pub(crate) prefix: &'a [u8; NONCE_PREFIX_LEN],
    pub(crate) chunk_size: usize,
}

impl PayloadKey<'_> {
    /// Seals the plaintext in `buf[..pt_len]` in place as chunks `first..` of an object of
    /// `total` chunks: chunk `first + j` moves from `j·chunk_size` to `base + j·(chunk_size + 16)`
    /// and is sealed there. The run's chunks are full but for the last one (an empty run is one
    /// empty chunk); `buf` must be at least `base + pt_len + 16·chunks` long.
    pub(crate) fn seal_in_place(
        &self,
        buf: &mut [u8],
        pt_len: usize,
        base: usize,
        first: u64,
        total: u64,
    ) -> Result<(), CryptError> {
        let cs = self.chunk_size;
        let n = pt_len.div_ceil(cs).max(1);
        (0..n).rev().try_for_each(|j| {
            // Chunk j moves from j·cs to base + j·(cs + 16): to the right, past the plaintext of
            // every earlier chunk, so going backwards never overwrites plaintext not yet sealed.
            let src = j * cs;
            let len = cs.min(pt_len - src);
            let dst = base + j * (cs + TAG_LEN);
            if buf.len() < dst + len + TAG_LEN {
                return Err(CryptError::Crypto("object buffer too small"));
            }
            if dst != src {
                buf.copy_within(src..src + len, dst);
            }
            let chunk = buf
                .get_mut(dst..dst + len + TAG_LEN)
                .ok_or(CryptError::Crypto("object buffer too small"))?;
            let index = first + j as u64;
            let nonce = chunk_nonce(self.prefix, index, index + 1 == total)?;
            seal_chunk(self.key, nonce, chunk, len).map(|_| ())
        })
    }

    /// Opens the chunks described by `spans` (their `start` relative to `base` in `buf`) in
    /// place and compacts their plaintext to `buf[..len]`; returns `len`. The errors are those of
    /// the streaming reader, for the first chunk that fails; on error `buf` may hold plaintext of
    /// the chunks before it and must be wiped or discarded by the caller.
    pub(crate) fn open_in_place(
        &self,
        buf: &mut [u8],
        spans: impl Iterator<Item = ChunkSpan>,
        base: usize,
    ) -> Result<usize, CryptError> {
        let (key, prefix, cs) = (self.key, self.prefix, self.chunk_size);
        let mut plain = 0;
        for span in spans {
            let start = base + span.start;
            let chunk = buf
                .get_mut(start..start + span.len)
                .ok_or(CryptError::Crypto("chunk out of bounds"))?;
            // A failed open may leave the chunk overwritten, so keep a copy of the one chunk that
            // can be opened a second time (the full last one, once per object) to tell truncation
            // from tampering.
            let mut backup = (span.last && span.len == cs + TAG_LEN).then(|| Zeroizing::new(chunk.to_vec()));
            let ct_len = span.len.saturating_sub(TAG_LEN);
            let (ct, tag) = chunk.split_at_mut(ct_len);
            open_chunk(prefix, &span, cs, |nonce, retry| {
                if !retry {
                    return key
                        .open_in_place_separate_tag(nonce, Aad::empty(), tag, ct)
                        .is_ok();
                }
                let Some(mut copy) = backup.take() else {
                    return false;
                };
                let (c, t) = copy.split_at_mut(ct_len);
                key.open_in_place_separate_tag(nonce, Aad::empty(), t, c).is_ok()
            })?;
            // The plaintext moves left (plain ≤ start), below the ciphertext of every later chunk;
            // the source range was bounds-checked by `get_mut` above.
            if plain != start {
                buf.copy_within(start..start + ct_len, plain);
            }
            plain += ct_len;
        }
        Ok(plain)
    }
}

/// What decrypting the payload needs from an authenticated header.
pub(crate) struct OpenedHeader {
    pub(crate) key: LessSafeKey,
    pub(crate) prefix: [u8; NONCE_PREFIX_LEN],
    pub(crate) chunk_size: usize,
    /// Header length: the payload starts here.
    pub(crate) len: usize,
    /// The sender authenticated by the stanza that opened, if any.
    pub(crate) sender: Option<Recipient>,
}

impl OpenedHeader {
    pub(crate) fn payload_key(&self) -> PayloadKey<'_> {
        PayloadKey {
            key: &self.key,
            prefix: &self.prefix,
            chunk_size: self.chunk_size,
        }
    }
}

/// Parses the header at the start of `object` and authenticates it with `key` and `binding`.
fn open_object_header(
    object: &[u8],
    key: DecryptionKey<'_>,
    binding: &ObjectBinding,
    senders: &[Recipient],
) -> Result<OpenedHeader, CryptError> {
    let mut input = object;
    read_and_open_header(&mut input, key, binding, senders)
}

/// Reads the header from `input` (all the streaming reader's checks) and authenticates it with
/// `key` and `binding`, requiring one of `senders` if any (see [`crate::decrypt_from`]).
pub(crate) fn read_and_open_header<R: std::io::Read>(
    input: &mut R,
    key: DecryptionKey<'_>,
    binding: &ObjectBinding,
    senders: &[Recipient],
) -> Result<OpenedHeader, CryptError> {
    let header = read_header(input)?;
    let (key, sender) = open_header(&header, key, binding, senders)?;
    Ok(OpenedHeader {
        key,
        prefix: header.nonce_prefix,
        chunk_size: header.chunk_size as usize,
        len: header.len(),
        sender,
    })
}

/// Where chunk `index` of a payload lies and whether it is the last one.
pub(crate) struct ChunkSpan {
    pub(crate) index: u64,
    /// Offset of the chunk in the payload (or in the buffer holding it).
    pub(crate) start: usize,
    /// Ciphertext + tag length.
    pub(crate) len: usize,
    pub(crate) last: bool,
}

/// Splits a payload of `payload_len` bytes into chunks the way the streaming reader does:
/// full `chunk_size + 16` chunks, the last one whatever remains (rule 2 of the format).
fn chunk_spans(payload_len: usize, cs: usize) -> Result<impl Iterator<Item = ChunkSpan>, CryptError> {
    // Nothing at all after the header: cut at the first chunk boundary.
    if payload_len == 0 {
        return Err(CryptError::Truncated);
    }
    let cap = cs + TAG_LEN;
    let n = payload_len.div_ceil(cap);
    Ok((0..n).map(move |i| {
        let start = i * cap;
        ChunkSpan {
            index: i as u64,
            start,
            len: cap.min(payload_len - start),
            last: i + 1 == n,
        }
    }))
}

/// Opens one chunk with the errors of the streaming reader. `open(nonce, retry)` opens the
/// chunk with `nonce` and says whether its tag verified; `retry` is set for the second attempt
/// (as non-last), made only for a full last chunk, after the first attempt failed.
///
/// A chunk shorter than a tag cannot be a chunk; a full last chunk that opens as non-last means
/// the real last chunk was cut off; an empty last chunk is only allowed for an empty object.
fn open_chunk(
    prefix: &[u8; NONCE_PREFIX_LEN],
    span: &ChunkSpan,
    cs: usize,
    mut open: impl FnMut(Nonce, bool) -> bool,
) -> Result<(), CryptError> {
    let index = span.index;
    if span.len < TAG_LEN {
        return Err(CryptError::ChunkAuth { index });
    }
    if !open(chunk_nonce(prefix, index, span.last)?, false) {
        let full = span.len == cs + TAG_LEN;
        if span.last && full && open(chunk_nonce(prefix, index, false)?, true) {
            return Err(CryptError::Truncated);
        }
        return Err(CryptError::ChunkAuth { index });
    }
    if span.last && span.len == TAG_LEN && index > 0 {
        return Err(CryptError::EmptyLastChunk { index });
    }
    Ok(())
}

/// Decrypts one object held in memory and appends its plaintext to `output`.
///
/// Each chunk is copied to its place in `output` and opened there (no intermediate buffer). On
/// error, `output` is restored to its original length, and the bytes appended so far are
/// zeroized: no plaintext of an object that fails to verify is released. [`open_in_place`] is
/// faster when the ciphertext buffer may be consumed.
pub fn decrypt_into<'k>(
    object: &[u8],
    output: &mut Vec<u8>,
    key: impl Into<DecryptionKey<'k>>,
    binding: &ObjectBinding,
) -> Result<(), CryptError> {
    decrypt_into_from(object, output, key, binding, &[]).map(|_| ())
}

/// Like [`decrypt_into`], and reports the object's authenticated sender; when `senders` is not
/// empty, the object must be authenticated by one of them (the rules of
/// [`crate::decrypt_from`]), else nothing is appended. [`Decrypted::len`] is the number of
/// bytes appended.
pub fn decrypt_into_from<'k>(
    object: &[u8],
    output: &mut Vec<u8>,
    key: impl Into<DecryptionKey<'k>>,
    binding: &ObjectBinding,
    senders: &[Recipient],
) -> Result<Decrypted, CryptError> {
    let h = open_object_header(object, key.into(), binding, senders)?;
    let payload = object.get(h.len..).unwrap_or_default();
    let start = output.len();
    // The plaintext is shorter than the payload: one reservation suffices.
    output.reserve(payload.len());
    let opened = open_payload_into(&h, payload, output);
    if opened.is_err()
        && let Some(appended) = output.get_mut(start..)
    {
        appended.zeroize();
        output.truncate(start);
    }
    opened?;
    Ok(Decrypted {
        len: (output.len() - start) as u64,
        sender: h.sender,
    })
}

/// Like [`decrypt_into`], into a new `Vec`.
pub fn decrypt_to_vec<'k>(
    object: &[u8],
    key: impl Into<DecryptionKey<'k>>,
    binding: &ObjectBinding,
) -> Result<Vec<u8>, CryptError> {
    let mut out = Vec::new();
    decrypt_into(object, &mut out, key, binding)?;
    Ok(out)
}

fn open_payload_into(h: &OpenedHeader, payload: &[u8], output: &mut Vec<u8>) -> Result<(), CryptError> {
    let (key, prefix, cs) = (&h.key, &h.prefix, h.chunk_size);
    for span in chunk_spans(payload.len(), cs)? {
        let chunk = payload
            .get(span.start..span.start + span.len)
            .ok_or(CryptError::Crypto("chunk out of bounds"))?;
        let (ct, tag) = chunk.split_at(span.len.saturating_sub(TAG_LEN));
        // Copied to its place and opened there, as in `seal_chunk_into` (faster than zero-filling
        // and opening out of place). `decrypt_into` wipes the output if any chunk fails.
        let at = output.len();
        output.extend_from_slice(ct);
        let out = output
            .get_mut(at..)
            .ok_or(CryptError::Crypto("output buffer too small"))?;
        open_chunk(prefix, &span, cs, |nonce, retry| {
            // A failed attempt may have overwritten `out`; the input is intact, so start over.
            if retry {
                out.copy_from_slice(ct);
            }
            key.open_in_place_separate_tag(nonce, Aad::empty(), tag, out)
                .is_ok()
        })?;
    }
    Ok(())
}

/// Decrypts the object in `buf` in place: on success `buf` holds the plaintext.
///
/// Each chunk is opened where it lies and its plaintext moved down to its final offset while it
/// is in cache, so every byte is read and written once. If the header does not open (wrong
/// key, wrong binding, malformed), `buf` is left unchanged; if a chunk fails, `buf` is zeroized
/// and emptied, so no plaintext of an object that fails to verify is released.
pub fn open_in_place<'k>(
    buf: &mut Vec<u8>,
    key: impl Into<DecryptionKey<'k>>,
    binding: &ObjectBinding,
) -> Result<(), CryptError> {
    open_in_place_from(buf, key, binding, &[]).map(|_| ())
}

/// Like [`open_in_place`], and reports the object's authenticated sender; when `senders` is not
/// empty, the object must be authenticated by one of them (the rules of
/// [`crate::decrypt_from`]), else `buf` is left unchanged.
pub fn open_in_place_from<'k>(
    buf: &mut Vec<u8>,
    key: impl Into<DecryptionKey<'k>>,
    binding: &ObjectBinding,
    senders: &[Recipient],
) -> Result<Decrypted, CryptError> {
    let h = open_object_header(buf, key.into(), binding, senders)?;
    let payload = h.payload_key();
    let opened = chunk_spans(buf.len().saturating_sub(h.len), h.chunk_size)
        .and_then(|spans| payload.open_in_place(buf, spans, h.len));
    match opened {
        Ok(len) => {
            buf.truncate(len);
            Ok(Decrypted {
                len: len as u64,
                sender: h.sender,
            })
        }
        Err(e) => {
            buf.zeroize();
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;
    use crate::stream::encrypt_chunks;

    fn data(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
            .collect()
    }

    /// With one header (same keys, same nonce prefix), the streaming writer, the slice API and
    /// the in-place API must produce the same bytes.
    #[test]
    fn slice_and_in_place_bytes_equal_streaming_bytes() -> Result<(), CryptError> {
        let id = Identity::generate();
        let sender = Identity::generate();
        let binding = ObjectBinding::new("b", "k");
        let recipients = [
            id.public(),
            Identity::generate().public().authenticated_by(&sender)?,
        ];
        for cs in [16usize, 64, 1000] {
            let h = build_header(&recipients, &binding, cs as u32)?;
            for n in [0, 1, cs - 1, cs, cs + 1, 2 * cs, 3 * cs + 7] {
                let pt = data(n);
                let mut streamed = h.bytes.clone();
                encrypt_chunks(&mut &pt[..], &mut streamed, cs, &h.payload, |i, last| {
                    chunk_nonce(&h.nonce_prefix, i, last)
                })?;

                let mut sliced = b"prefix".to_vec();
                encrypt_into_with(&h, cs, &pt, &mut sliced)?;
                assert_eq!(sliced.get(..6), Some(&b"prefix"[..]));
                assert_eq!(sliced.get(6..), Some(&streamed[..]), "slice, size {n} chunk {cs}");

                let mut in_place = pt.clone();
                seal_in_place_with(&h, cs, &mut in_place)?;
                assert_eq!(in_place, streamed, "in place, size {n} chunk {cs}");
            }
        }
        Ok(())
    }
}
