//! The chunked STREAM payload: encryption and decryption over `std::io`.
//!
//! Chunk `i` (from 0) is `AES-256-GCM(payload_key, nonce_prefix ‖ u32be(i) ‖ last, aad = "",
//! plaintext_i)` with its 16-byte tag appended; every chunk but the last holds exactly
//! `chunk_size` plaintext bytes; the last one holds 0..=chunk_size (0 only for an empty object).
//! Because the index and the last flag are in the nonce, reordering, duplicating, dropping or
//! appending chunks changes the nonce a chunk is opened with and its tag fails.
//!
//! Memory is constant: one buffer of `chunk_size + 16` bytes, reused for every chunk, sealed
//! and opened in place. A full chunk is only sealed once we know whether more data follows
//! (one byte of look-ahead), so the last chunk may be full, as in Tink and age.

use std::io::{self, Read, Write};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce};
use zeroize::Zeroizing;

use crate::CryptError;
use crate::header::{
    self, DEFAULT_CHUNK_SIZE, NONCE_PREFIX_LEN, ParsedHeader, TAG_LEN, build_header, open_header, read_header,
};
use crate::keys::{DecryptionKey, Identity, ObjectBinding, Recipient};

/// What a decryption found: how much plaintext, and which sender the object is authenticated by.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Decrypted {
    /// Plaintext bytes written (or left in the buffer).
    pub len: u64,
    /// The sender whose HPKE Auth-mode stanza opened with the key (displayed as
    /// `cloister1x25519:…`), or `None` when the stanza that opened names no sender (a Base-mode
    /// X25519 stanza or a symmetric key): then anyone who knows the recipient could have written
    /// the object.
    pub sender: Option<Recipient>,
}

/// Options for [`encrypt`] and [`Encryptor`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncryptOptions {
    /// Plaintext bytes per chunk, 16 bytes ..= 16 MiB. Default 64 KiB; 1 MiB trades memory
    /// for slightly fewer per-chunk costs (see the benchmark).
    pub chunk_size: u32,
}

impl Default for EncryptOptions {
    fn default() -> Self {
        EncryptOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
        }
    }
}

/// The 12-byte chunk nonce: prefix(7) ‖ u32be(index) ‖ last-flag(1), Tink's layout.
#[inline]
pub(crate) fn chunk_nonce(
    prefix: &[u8; NONCE_PREFIX_LEN],
    index: u64,
    last: bool,
) -> Result<Nonce, CryptError> {
    let idx = u32::try_from(index).map_err(|_| CryptError::TooManyChunks)?;
    let mut n = [0u8; 12];
    let (p, rest) = n.split_at_mut(NONCE_PREFIX_LEN);
    p.copy_from_slice(prefix);
    let (i, flag) = rest.split_at_mut(4);
    i.copy_from_slice(&idx.to_be_bytes());
    if let Some(f) = flag.first_mut() {
        *f = u8::from(last);
    }
    Ok(Nonce::assume_unique_for_key(n))
}

/// Reads until `buf` is full or EOF; returns the number of bytes read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let Some(rest) = buf.get_mut(n..) else { break };
        match r.read(rest) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Seals `buf[..len]` in place as chunk `index` and appends the tag at `buf[len..len + 16]`.
/// `buf` must be at least `len + 16` long.
#[inline]
pub(crate) fn seal_chunk(
    key: &LessSafeKey,
    nonce: Nonce,
    buf: &mut [u8],
    len: usize,
) -> Result<usize, CryptError> {
    let (pt, tail) = buf.split_at_mut(len);
    let tag = key
        .seal_in_place_separate_tag(nonce, Aad::empty(), pt)
        .map_err(|_| CryptError::Crypto("AES-GCM seal failed"))?;
    let tag_dst = tail
        .get_mut(..TAG_LEN)
        .ok_or(CryptError::Crypto("chunk buffer too small"))?;
    tag_dst.copy_from_slice(tag.as_ref());
    Ok(len + TAG_LEN)
}

/// Encrypts everything `input` yields into `output` as one Cloister object bound to `binding`,
/// readable by each of `recipients`. Returns the number of plaintext bytes encrypted.
///
/// Reads straight into the reused chunk buffer (no intermediate copy). `output` is not
/// flushed; wrap it in a `BufWriter` only if it is unbuffered and the chunk size is small.
pub fn encrypt<R: Read, W: Write>(
    mut input: R,
    mut output: W,
    recipients: &[Recipient],
    binding: &ObjectBinding,
    options: &EncryptOptions,
) -> Result<u64, CryptError> {
    let h = build_header(recipients, binding, options.chunk_size)?;
    output.write_all(&h.bytes)?;
    let prefix = h.nonce_prefix;
    encrypt_chunks(
        &mut input,
        &mut output,
        options.chunk_size as usize,
        &h.payload,
        |index, last| chunk_nonce(&prefix, index, last),
    )
}

/// The STREAM loop shared by the native format and the age export: fixed-size chunks, the last
/// one flagged, sealed in place in one reused buffer. `nonce(index, last)` gives each chunk's
/// nonce. Returns the plaintext length.
pub(crate) fn encrypt_chunks<R: Read, W: Write>(
    input: &mut R,
    output: &mut W,
    cs: usize,
    key: &LessSafeKey,
    nonce: impl Fn(u64, bool) -> Result<Nonce, CryptError>,
) -> Result<u64, CryptError> {
    let mut buf = Zeroizing::new(vec![0u8; cs + TAG_LEN]);
    let mut filled = 0usize;
    let mut index = 0u64;
    let mut total = 0u64;
    let mut peek = [0u8; 1];
    loop {
        let dst = buf
            .get_mut(filled..cs)
            .ok_or(CryptError::Crypto("chunk buffer too small"))?;
        filled += read_full(input, dst)?;
        // A short chunk means EOF; a full one is the last iff one byte of look-ahead hits EOF.
        let last = filled < cs || read_full(input, &mut peek)? == 0;
        let n = seal_chunk(key, nonce(index, last)?, &mut buf, filled)?;
        output.write_all(buf.get(..n).unwrap_or_default())?;
        total += filled as u64;
        if last {
            return Ok(total);
        }
        // The look-ahead byte starts the next chunk.
        index += 1;
        if let Some(first) = buf.first_mut() {
            *first = peek[0];
        }
        filled = 1;
    }
}

/// A `Write` adapter that encrypts into `W`. Call [`Encryptor::finish`] at the end: without
/// it the last chunk is never written and the object will fail to decrypt as truncated (the
/// safe outcome of an interrupted upload).
pub struct Encryptor<W: Write> {
    output: W,
    key: LessSafeKey,
    prefix: [u8; NONCE_PREFIX_LEN],
    buf: Zeroizing<Vec<u8>>,
    chunk_size: usize,
    filled: usize,
    index: u64,
    total: u64,
    failed: bool,
}

impl<W: Write> Encryptor<W> {
    /// Writes the header to `output` and returns an adapter that encrypts what is written to it.
    pub fn new(
        mut output: W,
        recipients: &[Recipient],
        binding: &ObjectBinding,
        options: &EncryptOptions,
    ) -> Result<Self, CryptError> {
        let h = build_header(recipients, binding, options.chunk_size)?;
        output.write_all(&h.bytes)?;
        let cs = options.chunk_size as usize;
        Ok(Encryptor {
            output,
            key: h.payload,
            prefix: h.nonce_prefix,
            buf: Zeroizing::new(vec![0u8; cs + TAG_LEN]),
            chunk_size: cs,
            filled: 0,
            index: 0,
            total: 0,
            failed: false,
        })
    }

    fn emit(&mut self, last: bool) -> Result<(), CryptError> {
        let nonce = chunk_nonce(&self.prefix, self.index, last)?;
        let n = seal_chunk(&self.key, nonce, &mut self.buf, self.filled)?;
        self.output.write_all(self.buf.get(..n).unwrap_or_default())?;
        self.total += self.filled as u64;
        self.index += 1;
        self.filled = 0;
        Ok(())
    }

    /// Seals the final chunk, flushes, and returns the inner writer and the plaintext length.
    pub fn finish(mut self) -> Result<(W, u64), CryptError> {
        if self.failed {
            return Err(CryptError::Finished);
        }
        self.emit(true)?;
        self.output.flush()?;
        let total = self.total;
        Ok((self.output, total))
    }
}

impl<W: Write> Write for Encryptor<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.failed {
            return Err(CryptError::Finished.into());
        }
        if data.is_empty() {
            return Ok(0);
        }
        // Only now do we know the buffered full chunk is not the last one.
        if self.filled == self.chunk_size
            && let Err(e) = self.emit(false)
        {
            self.failed = true;
            return Err(e.into());
        }
        let room = self.chunk_size - self.filled;
        let n = room.min(data.len());
        let (Some(dst), Some(src)) = (self.buf.get_mut(self.filled..self.filled + n), data.get(..n)) else {
            return Err(CryptError::Crypto("chunk buffer too small").into());
        };
        dst.copy_from_slice(src);
        self.filled += n;
        Ok(n)
    }

    /// Flushes the inner writer. A partial chunk stays buffered: chunks are fixed-size.
    fn flush(&mut self) -> io::Result<()> {
        self.output.flush()
    }
}

/// Chunk-by-chunk verifier/decryptor shared by [`decrypt`] and [`Decryptor`].
struct ChunkOpener {
    key: LessSafeKey,
    prefix: [u8; NONCE_PREFIX_LEN],
    buf: Zeroizing<Vec<u8>>,
    chunk_size: usize,
    index: u64,
    carry: Option<u8>,
    done: bool,
}

impl ChunkOpener {
    fn new(header: &ParsedHeader, key: LessSafeKey) -> Self {
        let cs = header.chunk_size as usize;
        ChunkOpener {
            key,
            prefix: header.nonce_prefix,
            buf: Zeroizing::new(vec![0u8; cs + TAG_LEN]),
            chunk_size: cs,
            index: 0,
            carry: None,
            done: false,
        }
    }

    /// Reads, verifies and decrypts the next chunk in place. Returns `Some(len)` with the
    /// plaintext in `self.buf[..len]`, or `None` once the verified last chunk has been consumed.
    fn next_chunk<R: Read>(&mut self, r: &mut R) -> Result<Option<usize>, CryptError> {
        if self.done {
            return Ok(None);
        }
        let cap = self.chunk_size + TAG_LEN;
        let mut filled = 0;
        if let (Some(b), Some(first)) = (self.carry.take(), self.buf.first_mut()) {
            *first = b;
            filled = 1;
        }
        let dst = self
            .buf
            .get_mut(filled..cap)
            .ok_or(CryptError::Crypto("chunk buffer too small"))?;
        filled += read_full(r, dst)?;
        let last = if filled < cap {
            // EOF inside this chunk: it must be the last one. Fewer bytes than a tag cannot be
            // a chunk at all, so the stream was cut (at a boundary when `filled == 0`).
            if filled < TAG_LEN {
                return Err(if filled == 0 {
                    CryptError::Truncated
                } else {
                    CryptError::ChunkAuth { index: self.index }
                });
            }
            true
        } else {
            let mut peek = [0u8; 1];
            if read_full(r, &mut peek)? == 0 {
                true
            } else {
                self.carry = peek.first().copied();
                false
            }
        };
        let nonce = chunk_nonce(&self.prefix, self.index, last)?;
        let ct = self
            .buf
            .get_mut(..filled)
            .ok_or(CryptError::Crypto("chunk buffer too small"))?;
        // A full chunk followed by EOF is either a full last chunk or a non-last chunk whose
        // successors were cut off. Keep a copy (once per stream, at its end) so that, if it
        // fails as "last", we can tell the caller it is a truncation rather than tampering.
        let backup = (last && filled == cap).then(|| Zeroizing::new(ct.to_vec()));
        let len = match self.key.open_in_place(nonce, Aad::empty(), ct) {
            Ok(pt) => pt.len(),
            Err(_) => {
                if let Some(mut copy) = backup {
                    let nonce = chunk_nonce(&self.prefix, self.index, false)?;
                    if self.key.open_in_place(nonce, Aad::empty(), &mut copy).is_ok() {
                        return Err(CryptError::Truncated);
                    }
                }
                return Err(CryptError::ChunkAuth { index: self.index });
            }
        };
        if last && len == 0 && self.index > 0 {
            return Err(CryptError::EmptyLastChunk { index: self.index });
        }
        self.index += 1;
        self.done = last;
        Ok(Some(len))
    }

    fn plaintext(&self, len: usize) -> &[u8] {
        self.buf.get(..len).unwrap_or_default()
    }
}

fn open<R: Read>(
    input: &mut R,
    key: DecryptionKey<'_>,
    binding: &ObjectBinding,
    senders: &[Recipient],
) -> Result<(ChunkOpener, Option<Recipient>), CryptError> {
    let header = read_header(input)?;
    let (payload, sender) = open_header(&header, key, binding, senders)?;
    Ok((ChunkOpener::new(&header, payload), sender))
}

/// Decrypts one object from `input` into `output` with an X25519 identity. Returns the number
/// of plaintext bytes written.
///
/// Plaintext is written chunk by chunk, each only after its tag verified; on error, `output`
/// may already hold the verified prefix of the object and must be discarded by the caller.
pub fn decrypt<R: Read, W: Write>(
    input: R,
    output: W,
    identity: &Identity,
    binding: &ObjectBinding,
) -> Result<u64, CryptError> {
    decrypt_with(input, output, DecryptionKey::X25519(identity), binding)
}

/// Like [`decrypt`], with any [`DecryptionKey`] (X25519 identity or CAS-held symmetric key).
///
/// Accepts objects with or without a sender and does not say which; use [`decrypt_from`] to
/// learn or require the sender.
pub fn decrypt_with<R: Read, W: Write>(
    input: R,
    output: W,
    key: DecryptionKey<'_>,
    binding: &ObjectBinding,
) -> Result<u64, CryptError> {
    decrypt_from(input, output, key, binding, &[]).map(|d| d.len)
}

/// Like [`decrypt_with`], and reports the object's authenticated sender; when `senders` is not
/// empty, the object must be authenticated by one of them.
///
/// `senders` are plain X25519 recipients (`cloister1x25519:…`, an owner's public key). When the
/// list is non-empty, only the object's HPKE Auth-mode stanzas naming one of them are tried;
/// an object without such a stanza that opens with `key` (encrypted without a sender, by
/// another sender, with a tampered or substituted sender key, or read with a symmetric key) is
/// refused with [`CryptError::SenderNotAuthenticated`] before any plaintext is written. With an
/// empty list every object that opens is accepted, and [`Decrypted::sender`] says whether it
/// was authenticated and by whom.
pub fn decrypt_from<R: Read, W: Write>(
    mut input: R,
    mut output: W,
    key: DecryptionKey<'_>,
    binding: &ObjectBinding,
    senders: &[Recipient],
) -> Result<Decrypted, CryptError> {
    let (mut opener, sender) = open(&mut input, key, binding, senders)?;
    let mut total = 0u64;
    while let Some(len) = opener.next_chunk(&mut input)? {
        output.write_all(opener.plaintext(len))?;
        total += len as u64;
    }
    Ok(Decrypted { len: total, sender })
}

/// A `Read` adapter that yields an object's plaintext. It releases a chunk's bytes only after
/// the chunk's tag verified, and it reports truncation or tampering as an error (never as a
/// silent EOF); after an error every further read fails too.
pub struct Decryptor<R: Read> {
    input: R,
    opener: ChunkOpener,
    sender: Option<Recipient>,
    pos: usize,
    avail: usize,
    failed: Option<(io::ErrorKind, String)>,
}

impl<R: Read> Decryptor<R> {
    /// Reads and authenticates the header (so a wrong key or binding fails here).
    pub fn new<'k>(
        input: R,
        key: impl Into<DecryptionKey<'k>>,
        binding: &ObjectBinding,
    ) -> Result<Self, CryptError> {
        Decryptor::new_from(input, key, binding, &[])
    }

    /// Like [`Decryptor::new`], and when `senders` is not empty the object must be authenticated
    /// by one of them (the rules of [`decrypt_from`]), or this fails before any plaintext is read.
    pub fn new_from<'k>(
        mut input: R,
        key: impl Into<DecryptionKey<'k>>,
        binding: &ObjectBinding,
        senders: &[Recipient],
    ) -> Result<Self, CryptError> {
        let (opener, sender) = open(&mut input, key.into(), binding, senders)?;
        Ok(Decryptor {
            input,
            opener,
            sender,
            pos: 0,
            avail: 0,
            failed: None,
        })
    }

    /// The sender the object is authenticated by (see [`Decrypted::sender`]). Known once the
    /// header opened; the payload is still verified chunk by chunk as it is read.
    pub fn sender(&self) -> Option<&Recipient> {
        self.sender.as_ref()
    }

    /// Returns the underlying reader.
    pub fn into_inner(self) -> R {
        self.input
    }
}

impl<R: Read> Read for Decryptor<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if self.pos < self.avail {
                let n = (self.avail - self.pos).min(out.len());
                let src = self.opener.buf.get(self.pos..self.pos + n).unwrap_or_default();
                let Some(dst) = out.get_mut(..src.len()) else {
                    return Err(io::Error::other("read buffer mismatch"));
                };
                dst.copy_from_slice(src);
                self.pos += src.len();
                return Ok(src.len());
            }
            if let Some((kind, msg)) = &self.failed {
                return Err(io::Error::new(*kind, format!("earlier failure: {msg}")));
            }
            match self.opener.next_chunk(&mut self.input) {
                Ok(Some(len)) => {
                    self.pos = 0;
                    self.avail = len;
                }
                Ok(None) => return Ok(0),
                Err(e) => {
                    let err: io::Error = e.into();
                    self.failed = Some((err.kind(), err.to_string()));
                    return Err(err);
                }
            }
        }
    }
}

/// Length of the ciphertext for `plaintext_len` bytes, excluding the header.
pub fn payload_len(plaintext_len: u64, chunk_size: u32) -> u64 {
    let cs = u64::from(chunk_size.max(header::MIN_CHUNK_SIZE));
    let chunks = if plaintext_len == 0 {
        1
    } else {
        plaintext_len.div_ceil(cs)
    };
    plaintext_len + chunks * TAG_LEN as u64
}

/// Length of the whole encrypted object (header and payload) for `plaintext_len` bytes sealed
/// to `recipients`: what [`encrypt`] writes, and the capacity [`crate::seal_in_place`] and
/// [`crate::encrypt_into`] need to run without reallocating.
pub fn encrypted_len(plaintext_len: u64, recipients: &[Recipient], chunk_size: u32) -> u64 {
    header::header_len_for(recipients) as u64 + payload_len(plaintext_len, chunk_size)
}
