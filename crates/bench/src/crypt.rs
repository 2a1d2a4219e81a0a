//! `cloister-bench crypt`: the encrypted object format, through each API, against the raw
//! AES-256-GCM ceiling of the same library, on the same data, in the same run, on the calling
//! thread; and the file-to-file API ([`encrypt_file`], [`decrypt_file`]) on real temporary files
//! with one thread per available CPU.
//!
//! The reference is raw AES-256-GCM sealing (opening) the same bytes in place, chunk by chunk,
//! with the same chunk size: the least memory traffic any implementation can have (every byte
//! read and written once). Every other rate covers the whole format: header (key wrap, HKDF,
//! header MAC) and every chunk with its nonce and tag. For information the report also gives
//! raw AES-256-GCM out of place (from one buffer into another), the ceiling of every API that
//! leaves its input intact: on large buffers it moves half as many bytes again (the output lines
//! are fetched before they are written), so it runs well below in place.
//!
//! The file rows go from a plaintext file to an object file and back, in the system's temporary
//! directory (`TMPDIR`), with `threads` = [`std::thread::available_parallelism`]. Files are not
//! synced, so they measure the page cache (reads of cached data, writes of dirty pages), as a
//! job reading its input and writing its outputs sees it; the kernel writes the dirty pages back
//! in the background meanwhile. The output files are reused across iterations, like the output
//! buffers of the other rows.
//!
//! Run it from release builds: `cargo run --release -p cloister-bench -- crypt`.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use cloister_cli::client::{exit, fail};
use cloister_crypt::{
    DecryptionKey, Decryptor, EncryptOptions, Identity, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, ObjectBinding,
    TAG_LEN, decrypt, decrypt_file, decrypt_into, encrypt, encrypt_file, encrypt_into, encrypted_len,
    open_in_place, seal_in_place,
};

/// Sizes of the encrypted-object-format benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct CryptArgs {
    /// Plaintext size in MiB.
    #[arg(long, default_value_t = 256)]
    size_mib: usize,
    /// Chunk size in KiB.
    #[arg(long, default_value_t = 64)]
    chunk_kib: u32,
    /// Runs; the best is kept.
    #[arg(long, default_value_t = 3)]
    iterations: usize,
}

/// Runs the benchmark and prints its report.
pub fn run(args: CryptArgs, json: bool) -> anyhow::Result<()> {
    let report = measure(args.size_mib << 20, args.chunk_kib << 10, args.iterations)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "size": report.size, "chunk_size": report.chunk_size,
                "raw_seal_gbps": report.raw_seal, "raw_open_gbps": report.raw_open,
                "encrypt_gbps": report.encrypt, "decrypt_gbps": report.decrypt,
                "decryptor_read_gbps": report.decryptor_read,
                "raw_seal_out_of_place_gbps": report.raw_seal_out_of_place,
                "raw_open_out_of_place_gbps": report.raw_open_out_of_place,
                "encrypt_into_gbps": report.encrypt_into, "decrypt_into_gbps": report.decrypt_into,
                "seal_in_place_gbps": report.seal_in_place, "open_in_place_gbps": report.open_in_place,
                "file_threads": report.threads,
                "file_encrypt_gbps": report.file_encrypt, "file_decrypt_gbps": report.file_decrypt,
            }))?
        );
    } else {
        println!("{report}");
    }
    Ok(())
}

/// Results of one benchmark run; rates are in GB/s (10^9 bytes per second) of plaintext.
#[derive(Clone, Debug)]
struct BenchReport {
    /// Plaintext size in bytes.
    size: usize,
    /// Chunk size in bytes.
    chunk_size: u32,
    /// Raw AES-256-GCM seal in place, chunk by chunk (the ceiling for encryption).
    raw_seal: f64,
    /// Raw AES-256-GCM open in place, chunk by chunk (the ceiling for decryption).
    raw_open: f64,
    /// Raw AES-256-GCM seal from the plaintext into a separate buffer, chunk by chunk.
    raw_seal_out_of_place: f64,
    /// Raw AES-256-GCM open from the ciphertext into a separate buffer, chunk by chunk.
    raw_open_out_of_place: f64,
    /// [`encrypt`] (`Read`/`Write` API) from a `&[u8]` reader into a `Vec<u8>` writer.
    encrypt: f64,
    /// [`decrypt`] (`Read`/`Write` API) from a `&[u8]` reader into a `Vec<u8>` writer.
    decrypt: f64,
    /// [`Decryptor`] read into a large caller buffer.
    decryptor_read: f64,
    /// [`encrypt_into`] from a `&[u8]` into a reused `Vec<u8>`.
    encrypt_into: f64,
    /// [`decrypt_into`] from a `&[u8]` into a reused `Vec<u8>`.
    decrypt_into: f64,
    /// [`seal_in_place`] of a `Vec<u8>` with room for the object.
    seal_in_place: f64,
    /// [`open_in_place`] of that object.
    open_in_place: f64,
    /// Threads used by the file rows ([`std::thread::available_parallelism`]).
    threads: usize,
    /// [`encrypt_file`] from a plaintext file to an object file, on `threads` threads.
    file_encrypt: f64,
    /// [`decrypt_file`] from that object file to a plaintext file, on `threads` threads.
    file_decrypt: f64,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // (label, rate, whether it is encryption); percentages are of the in-place raw rate.
        let file_encrypt = format!("file encrypt ({} threads)", self.threads);
        let file_decrypt = format!("file decrypt ({} threads)", self.threads);
        let rows = [
            (
                "raw AES-256-GCM seal, out of place",
                self.raw_seal_out_of_place,
                true,
            ),
            (
                "raw AES-256-GCM open, out of place",
                self.raw_open_out_of_place,
                false,
            ),
            ("Read/Write encrypt (&[u8] -> Vec)", self.encrypt, true),
            ("Read/Write decrypt (&[u8] -> Vec)", self.decrypt, false),
            ("Read/Write Decryptor::read", self.decryptor_read, false),
            ("slice encrypt_into (&[u8] -> Vec)", self.encrypt_into, true),
            ("slice decrypt_into (&[u8] -> Vec)", self.decrypt_into, false),
            ("in place seal_in_place (Vec)", self.seal_in_place, true),
            ("in place open_in_place (Vec)", self.open_in_place, false),
            (&file_encrypt, self.file_encrypt, true),
            (&file_decrypt, self.file_decrypt, false),
        ];
        write!(
            f,
            "size {} MiB, chunk {} KiB, one thread (file rows: {} threads)\n  {:<36} {:6.2} GB/s\n  \
             {:<36} {:6.2} GB/s",
            self.size >> 20,
            self.chunk_size >> 10,
            self.threads,
            "raw AES-256-GCM seal, in place",
            self.raw_seal,
            "raw AES-256-GCM open, in place",
            self.raw_open,
        )?;
        for (label, rate, seal) in rows {
            let (of, of_label) = if seal {
                (self.raw_seal, "seal")
            } else {
                (self.raw_open, "open")
            };
            write!(
                f,
                "\n  {label:<36} {rate:6.2} GB/s  ({:5.1}% of raw {of_label} in place)",
                100.0 * rate / of
            )?;
        }
        Ok(())
    }
}

fn gbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64().max(1e-9) / 1e9
}

/// Runs the benchmark on `size` bytes with `chunk_size`, keeping the best of `iterations` runs
/// of each measurement (the first run also faults in every buffer).
fn measure(size: usize, chunk_size: u32, iterations: usize) -> anyhow::Result<BenchReport> {
    // Checked up front: the raw loops below would panic on a zero chunk size.
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        return Err(fail(
            exit::INVALID,
            "chunk size must be between 16 bytes and 16 MiB",
        ));
    }
    let iterations = iterations.max(1);
    let cs = chunk_size as usize;
    let mut data = vec![0u8; size];
    // Non-constant data; content does not affect AES-GCM speed but avoids any zero-page tricks.
    for (i, b) in data.iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1];
    }

    // Ceiling: seal/open in place with the same library, same chunking, no I/O, no copies.
    let mut key_bytes = [0u8; 32];
    rand::fill(&mut key_bytes);
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key_bytes).context("AES key")?);
    let mut work = data.clone();
    let mut tags = vec![[0u8; 16]; size.div_ceil(cs).max(1)];
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
                .context("raw AES-GCM seal")?;
            tag.copy_from_slice(tg.as_ref());
        }
        raw_seal = raw_seal.min(t.elapsed());
        let t = Instant::now();
        for (i, (c, tag)) in work.chunks_mut(cs).zip(tags.iter()).enumerate() {
            key.open_in_place_separate_tag(nonce(i), Aad::empty(), tag, c)
                .context("raw AES-GCM open")?;
        }
        raw_open = raw_open.min(t.elapsed());
    }

    // Out of place: plaintext -> `sealed` (chunk ‖ tag, the object's layout) -> `work`.
    let mut sealed = vec![0u8; size.div_ceil(cs).max(1) * TAG_LEN + size];
    let (mut raw_seal_oop, mut raw_open_oop) = (Duration::MAX, Duration::MAX);
    for _ in 0..iterations {
        let t = Instant::now();
        for (i, (p, c)) in data.chunks(cs).zip(sealed.chunks_mut(cs + TAG_LEN)).enumerate() {
            let (ct, tag) = c.split_at_mut(p.len());
            key.seal_out_of_place_scatter(nonce(i), Aad::empty(), p, ct, &[], tag)
                .context("raw AES-GCM seal")?;
        }
        raw_seal_oop = raw_seal_oop.min(t.elapsed());
        let t = Instant::now();
        for (i, (c, p)) in sealed.chunks(cs + TAG_LEN).zip(work.chunks_mut(cs)).enumerate() {
            let (ct, tag) = c.split_at(p.len());
            key.open_separate_gather(nonce(i), Aad::empty(), ct, tag, p)
                .context("raw AES-GCM open")?;
        }
        raw_open_oop = raw_open_oop.min(t.elapsed());
    }
    drop((work, sealed));

    let id = Identity::generate();
    let recipients = [id.public()];
    let binding = ObjectBinding::new("bench-bucket", "bench/object.bin");
    let opts = EncryptOptions { chunk_size };
    let ct_cap = size + size / cs * 16 + 4096;
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
            anyhow::bail!("benchmark round trip mismatch");
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
            anyhow::bail!("benchmark Decryptor length mismatch");
        }
    }

    drop((ct, pt, out));

    // The in-memory API on the same data: slice to `Vec`, then in place. Output buffers are
    // reused across iterations, like `ct` and `out` above, so no run pays for page faults.
    let obj_len = usize::try_from(encrypted_len(size as u64, &recipients, chunk_size))
        .context("benchmark size too large")?;
    let mut ct2 = Vec::with_capacity(obj_len);
    let mut pt2 = Vec::with_capacity(obj_len);
    let mut buf = Vec::with_capacity(obj_len);
    let (mut enc2, mut dec2, mut seal, mut open) =
        (Duration::MAX, Duration::MAX, Duration::MAX, Duration::MAX);
    for _ in 0..iterations {
        ct2.clear();
        let t = Instant::now();
        encrypt_into(&data, &mut ct2, &recipients, &binding, &opts)?;
        enc2 = enc2.min(t.elapsed());

        pt2.clear();
        let t = Instant::now();
        decrypt_into(&ct2, &mut pt2, &id, &binding)?;
        dec2 = dec2.min(t.elapsed());
        if pt2 != data {
            anyhow::bail!("benchmark slice round trip mismatch");
        }

        // Refilling the buffer with plaintext is setup, outside the timed region.
        buf.clear();
        buf.extend_from_slice(&data);
        let t = Instant::now();
        seal_in_place(&mut buf, &recipients, &binding, &opts)?;
        seal = seal.min(t.elapsed());
        if buf.len() != obj_len {
            anyhow::bail!("benchmark in-place object length mismatch");
        }

        let t = Instant::now();
        open_in_place(&mut buf, &id, &binding)?;
        open = open.min(t.elapsed());
        if buf != data {
            anyhow::bail!("benchmark in-place round trip mismatch");
        }
    }

    drop((ct2, pt2, buf));
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let (file_enc, file_dec) = bench_files(&data, &id, &binding, &opts, threads, iterations)?;

    Ok(BenchReport {
        size,
        chunk_size,
        raw_seal: gbps(size, raw_seal),
        raw_open: gbps(size, raw_open),
        raw_seal_out_of_place: gbps(size, raw_seal_oop),
        raw_open_out_of_place: gbps(size, raw_open_oop),
        encrypt: gbps(size, enc),
        decrypt: gbps(size, dec),
        decryptor_read: gbps(size, rd),
        encrypt_into: gbps(size, enc2),
        decrypt_into: gbps(size, dec2),
        seal_in_place: gbps(size, seal),
        open_in_place: gbps(size, open),
        threads,
        file_encrypt: gbps(size, file_enc),
        file_decrypt: gbps(size, file_dec),
    })
}

/// Temporary files of the file rows, removed when dropped (also when the benchmark fails).
struct TempFiles(Vec<PathBuf>);

impl Drop for TempFiles {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Best times of [`encrypt_file`] and [`decrypt_file`] over real files holding `data`.
fn bench_files(
    data: &[u8],
    id: &Identity,
    binding: &ObjectBinding,
    opts: &EncryptOptions,
    threads: usize,
    iterations: usize,
) -> anyhow::Result<(Duration, Duration)> {
    let dir = std::env::temp_dir();
    let name = |what: &str| dir.join(format!("cloister-crypt-bench-{}-{what}", std::process::id()));
    let files = TempFiles(vec![name("plain"), name("object"), name("opened")]);
    let [plain_path, object_path, opened_path] = &files.0[..] else {
        anyhow::bail!("benchmark file list");
    };
    let open_rw = |path: &PathBuf| {
        File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
    };
    // The plaintext is written and synced before any timing, so it is cached and clean.
    std::fs::write(plain_path, data)?;
    let plain = File::open(plain_path)?;
    plain.sync_all()?;
    let object = open_rw(object_path)?;
    let opened = open_rw(opened_path)?;
    let recipients = [id.public()];
    let (mut enc, mut dec) = (Duration::MAX, Duration::MAX);
    for _ in 0..iterations {
        let t = Instant::now();
        let n = encrypt_file(&plain, &object, &recipients, binding, opts, threads)?;
        enc = enc.min(t.elapsed());
        if n != data.len() as u64 {
            anyhow::bail!("benchmark encrypt_file length mismatch");
        }

        let t = Instant::now();
        let n = decrypt_file(&object, &opened, DecryptionKey::X25519(id), binding, threads)?;
        dec = dec.min(t.elapsed());
        if n != data.len() as u64 {
            anyhow::bail!("benchmark decrypt_file length mismatch");
        }
    }
    if std::fs::read(opened_path)? != data {
        anyhow::bail!("benchmark file round trip mismatch");
    }
    Ok((enc, dec))
}
