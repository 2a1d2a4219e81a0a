//! Throughput benchmark: streaming encrypt/decrypt against the raw AES-256-GCM ceiling of the
//! same library, on the same data, in the same run, on the calling thread.
//!
//! Call it from release builds (`cargo run --release -p cloister-crypt --example crypt_bench`);
//! the CLI can call [`run`] too.

use std::fmt;
use std::io::Read;
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

use crate::{CryptError, Decryptor, EncryptOptions, Identity, ObjectBinding, decrypt, encrypt};

/// Results of one benchmark run; rates are in GB/s (10^9 bytes per second) of plaintext.
#[derive(Clone, Debug)]
pub struct BenchReport {
    /// Plaintext size in bytes.
    pub size: usize,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Raw AES-256-GCM seal in place, chunk by chunk (the ceiling for encryption).
    pub raw_seal: f64,
    /// Raw AES-256-GCM open in place, chunk by chunk (the ceiling for decryption).
    pub raw_open: f64,
    /// [`encrypt`] from a `&[u8]` reader into a `Vec<u8>` writer.
    pub encrypt: f64,
    /// [`decrypt`] from a `&[u8]` reader into a `Vec<u8>` writer.
    pub decrypt: f64,
    /// [`Decryptor`] read into a large caller buffer.
    pub decryptor_read: f64,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pct = |x: f64, of: f64| 100.0 * x / of;
        writeln!(
            f,
            "size {} MiB, chunk {} KiB, one thread",
            self.size >> 20,
            self.chunk_size >> 10
        )?;
        writeln!(f, "  raw AES-256-GCM seal   {:6.2} GB/s", self.raw_seal)?;
        writeln!(f, "  raw AES-256-GCM open   {:6.2} GB/s", self.raw_open)?;
        writeln!(
            f,
            "  stream encrypt         {:6.2} GB/s  ({:5.1}% of raw seal)",
            self.encrypt,
            pct(self.encrypt, self.raw_seal)
        )?;
        writeln!(
            f,
            "  stream decrypt         {:6.2} GB/s  ({:5.1}% of raw open)",
            self.decrypt,
            pct(self.decrypt, self.raw_open)
        )?;
        write!(
            f,
            "  Decryptor (Read)       {:6.2} GB/s  ({:5.1}% of raw open)",
            self.decryptor_read,
            pct(self.decryptor_read, self.raw_open)
        )
    }
}

fn gbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64().max(1e-9) / 1e9
}

/// Runs the benchmark on `size` bytes with `chunk_size`, keeping the best of `iterations` runs
/// of each measurement (the first run also faults in every buffer).
pub fn run(size: usize, chunk_size: u32, iterations: usize) -> Result<BenchReport, CryptError> {
    let iterations = iterations.max(1);
    let cs = chunk_size as usize;
    let mut data = vec![0u8; size];
    // Non-constant data; content does not affect AES-GCM speed but avoids any zero-page tricks.
    for (i, b) in data.iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1];
    }

    // Ceiling: seal/open in place with the same library, same chunking, no I/O, no copies.
    let mut key_bytes = [0u8; 32];
    crate::header::random(&mut key_bytes)?;
    let key =
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key_bytes).map_err(|_| CryptError::Crypto("key"))?);
    let mut work = data.clone();
    let mut tags = vec![[0u8; 16]; size.div_ceil(cs.max(1)).max(1)];
    let nonce = |i: usize| {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&(i as u64).to_be_bytes());
        Nonce::assume_unique_for_key(n)
    };
    let (mut raw_seal, mut raw_open) = (Duration::MAX, Duration::MAX);
    for _ in 0..iterations {
        let t = Instant::now();
        for (i, (c, tag)) in work.chunks_mut(cs).zip(tags.iter_mut()).enumerate() {
            let tg = key
                .seal_in_place_separate_tag(nonce(i), Aad::empty(), c)
                .map_err(|_| CryptError::Crypto("seal"))?;
            tag.copy_from_slice(tg.as_ref());
        }
        raw_seal = raw_seal.min(t.elapsed());
        let t = Instant::now();
        for (i, (c, tag)) in work.chunks_mut(cs).zip(tags.iter()).enumerate() {
            key.open_in_place_separate_tag(nonce(i), Aad::empty(), tag, c)
                .map_err(|_| CryptError::Crypto("open"))?;
        }
        raw_open = raw_open.min(t.elapsed());
    }
    drop(work);

    let id = Identity::generate();
    let recipients = [id.public()];
    let binding = ObjectBinding::new("bench-bucket", "bench/object.bin");
    let opts = EncryptOptions { chunk_size };
    let ct_cap = size + size / cs.max(1) * 16 + 4096;
    let mut ct = Vec::with_capacity(ct_cap);
    let mut pt = Vec::with_capacity(size);
    let mut out = vec![0u8; size];
    let (mut enc, mut dec, mut rd) = (Duration::MAX, Duration::MAX, Duration::MAX);
    for _ in 0..iterations {
        ct.clear();
        let t = Instant::now();
        encrypt(&data[..], &mut ct, &recipients, &binding, &opts)?;
        enc = enc.min(t.elapsed());

        pt.clear();
        let t = Instant::now();
        decrypt(&ct[..], &mut pt, &id, &binding)?;
        dec = dec.min(t.elapsed());
        if pt != data {
            return Err(CryptError::Crypto("benchmark round trip mismatch"));
        }

        let t = Instant::now();
        let mut r = Decryptor::new(&ct[..], &id, &binding)?;
        let mut pos = 0;
        while let Some(dst) = out.get_mut(pos..) {
            let n = r.read(dst)?;
            if n == 0 {
                break;
            }
            pos += n;
        }
        rd = rd.min(t.elapsed());
        if pos != size {
            return Err(CryptError::Crypto("benchmark Decryptor length mismatch"));
        }
    }
    Ok(BenchReport {
        size,
        chunk_size,
        raw_seal: gbps(size, raw_seal),
        raw_open: gbps(size, raw_open),
        encrypt: gbps(size, enc),
        decrypt: gbps(size, dec),
        decryptor_read: gbps(size, rd),
    })
}
