//! The file-to-file API (`encrypt_file`, `decrypt_file`) against the streaming API: objects
//! interchangeable both ways, at chunk edges and with 1..=4 threads; the streaming decryptor's
//! error for every tampered, truncated, reordered or extended object, whatever the thread count
//! (the lowest failing chunk wins); and an empty output file after any failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::FileExt;

use cloister_crypt::{
    CryptError, DecryptionKey, EncryptOptions, Identity, ObjectBinding, Recipient, SymmetricKey, TAG_LEN,
    decrypt, decrypt_file, encrypt, encrypt_file, encrypted_len, inspect,
};
use proptest::prelude::*;

fn binding() -> ObjectBinding {
    ObjectBinding::new("input-bucket", "patients/0001.dcm")
}

fn opts(cs: u32) -> EncryptOptions {
    EncryptOptions { chunk_size: cs }
}

fn data(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[2])
        .collect()
}

/// An anonymous temporary file holding `bytes`.
fn file_with(bytes: &[u8]) -> File {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(bytes).unwrap();
    f
}

/// Everything in `f`, read positionally (the cursor is irrelevant).
fn contents(f: &File) -> Vec<u8> {
    let mut buf = vec![0u8; f.metadata().unwrap().len() as usize];
    f.read_exact_at(&mut buf, 0).unwrap();
    buf
}

/// The streaming decryptor's verdict, as the reference.
fn dec_stream(ct: &[u8], id: &Identity) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    decrypt(ct, &mut out, id, &binding()).map_err(|e| e.to_string())?;
    Ok(out)
}

/// `decrypt_file` of `ct` into a file that held stale bytes; on error the file must be empty.
fn dec_file_with(
    ct: &[u8],
    key: DecryptionKey<'_>,
    binding: &ObjectBinding,
    threads: usize,
) -> Result<Vec<u8>, CryptError> {
    let input = file_with(ct);
    let output = file_with(b"stale bytes that must not survive");
    match decrypt_file(&input, &output, key, binding, threads) {
        Ok(n) => {
            let out = contents(&output);
            assert_eq!(n, out.len() as u64, "returned length");
            Ok(out)
        }
        Err(e) => {
            assert_eq!(
                output.metadata().unwrap().len(),
                0,
                "output not emptied after {e}"
            );
            Err(e)
        }
    }
}

fn dec_file(ct: &[u8], id: &Identity, threads: usize) -> Result<Vec<u8>, String> {
    dec_file_with(ct, DecryptionKey::X25519(id), &binding(), threads).map_err(|e| e.to_string())
}

/// `encrypt_file` of `pt` into a file that held stale bytes (longer than some objects).
fn enc_file(pt: &[u8], r: &[Recipient], cs: u32, threads: usize) -> Vec<u8> {
    let input = file_with(pt);
    let output = file_with(&[0xAA; 300]);
    let n = encrypt_file(&input, &output, r, &binding(), &opts(cs), threads).unwrap();
    assert_eq!(n, pt.len() as u64);
    contents(&output)
}

fn enc_stream(pt: &[u8], r: &[Recipient], cs: u32) -> Vec<u8> {
    let mut ct = Vec::new();
    encrypt(pt, &mut ct, r, &binding(), &opts(cs)).unwrap();
    ct
}

/// `decrypt_file` must give exactly the streaming decryptor's result, with every thread count.
fn assert_same_verdict(ct: &[u8], id: &Identity, threads: &[usize], what: &str) {
    let reference = dec_stream(ct, id);
    for &t in threads {
        assert_eq!(dec_file(ct, id, t), reference, "{what}, {t} threads");
    }
}

fn header_len(ct: &[u8]) -> usize {
    inspect(ct).unwrap().header_len
}

#[test]
fn round_trip_at_chunk_edges_both_ways() {
    let id = Identity::generate();
    let r = [id.public()];
    for cs in [16u32, 64, 1000, 65_536] {
        let c = cs as usize;
        for n in [
            0,
            1,
            c - 1,
            c,
            c + 1,
            2 * c - 1,
            2 * c,
            2 * c + 1,
            3 * c,
            3 * c + 17,
            7 * c + 5,
        ] {
            let pt = data(n);
            let want_len = encrypted_len(n as u64, &r, cs) as usize;
            let streamed = enc_stream(&pt, &r, cs);
            for threads in 0..=4 {
                let what = format!("size {n}, chunk {cs}, {threads} threads");
                // encrypt_file -> streaming decrypt, and -> decrypt_file.
                let ct = enc_file(&pt, &r, cs, threads);
                assert_eq!(ct.len(), want_len, "{what}");
                assert_eq!(ct.len(), streamed.len(), "{what}");
                assert_eq!(dec_stream(&ct, &id).as_deref(), Ok(&pt[..]), "{what}");
                assert_eq!(dec_file(&ct, &id, threads).as_deref(), Ok(&pt[..]), "{what}");
                // streaming encrypt -> decrypt_file.
                assert_eq!(
                    dec_file(&streamed, &id, threads).as_deref(),
                    Ok(&pt[..]),
                    "{what}"
                );
            }
        }
    }
}

/// Objects of many more chunks than one batch per thread (16-byte chunks: over 60 000 of them;
/// 64 KiB chunks: several batches), and more threads than chunks.
#[test]
fn round_trip_with_many_chunks_and_batches() {
    let id = Identity::generate();
    let r = [id.public()];
    for (cs, n) in [
        (16u32, 1_000_003usize),
        (65_536, 3 << 20),
        (1 << 20, (2 << 20) + 1),
    ] {
        let pt = data(n);
        let streamed = enc_stream(&pt, &r, cs);
        for threads in [1, 2, 3, 4, 64] {
            let what = format!("size {n}, chunk {cs}, {threads} threads");
            let ct = enc_file(&pt, &r, cs, threads);
            assert_eq!(ct.len(), streamed.len(), "{what}");
            assert_eq!(dec_stream(&ct, &id).as_deref(), Ok(&pt[..]), "{what}");
            assert_eq!(
                dec_file(&streamed, &id, threads).as_deref(),
                Ok(&pt[..]),
                "{what}"
            );
        }
    }
}

#[test]
fn symmetric_key_and_several_recipients() {
    let sym = SymmetricKey::generate("cas/input").unwrap();
    let id = Identity::generate();
    let r = [id.public(), Recipient::symmetric(sym.clone())];
    let pt = data(5000);
    let ct = enc_file(&pt, &r, 64, 3);
    assert_eq!(ct.len() as u64, encrypted_len(5000, &r, 64));
    let by_sym = dec_file_with(&ct, DecryptionKey::Symmetric(&sym), &binding(), 3).unwrap();
    assert_eq!(by_sym, pt);
    assert_eq!(dec_file(&ct, &id, 2).unwrap(), pt);
}

#[test]
fn every_flipped_byte_fails_and_leaves_no_plaintext() {
    let id = Identity::generate();
    // 100 bytes in 16-byte chunks: 7 chunks, the last one short.
    let ct = enc_stream(&data(100), &[id.public()], 16);
    for i in 0..ct.len() {
        for mask in [0x01u8, 0x80] {
            let mut t = ct.clone();
            t[i] ^= mask;
            let what = format!("flip {mask:#x} at byte {i}");
            assert!(dec_stream(&t, &id).is_err(), "{what} accepted");
            assert_same_verdict(&t, &id, &[1, 3], &what);
        }
    }
}

#[test]
fn truncation_at_every_offset_fails() {
    let id = Identity::generate();
    let cs = 32usize;
    for n in [0, 10, cs, 2 * cs, 3 * cs + 17] {
        let ct = enc_stream(&data(n), &[id.public()], cs as u32);
        for cut in 0..ct.len() {
            let what = format!("size {n}, cut {cut}");
            assert!(dec_stream(&ct[..cut], &id).is_err(), "{what} accepted");
            assert_same_verdict(&ct[..cut], &id, &[1, 2, 4], &what);
        }
    }
    // A cut at a chunk boundary is the distinct truncation error, full last chunk included.
    let ct = enc_stream(&data(3 * cs), &[id.public()], cs as u32);
    let hl = header_len(&ct);
    for cut in [hl, hl + cs + TAG_LEN, hl + 2 * (cs + TAG_LEN)] {
        for threads in 1..=4 {
            assert!(
                matches!(
                    dec_file_with(&ct[..cut], DecryptionKey::X25519(&id), &binding(), threads),
                    Err(CryptError::Truncated)
                ),
                "cut {cut}, {threads} threads"
            );
        }
    }
}

#[test]
fn appended_reordered_duplicated_or_dropped_chunks_fail() {
    let id = Identity::generate();
    let cs = 32usize;
    let ct = enc_stream(&data(3 * cs + 5), &[id.public()], cs as u32);
    let hl = header_len(&ct);
    let (head, body) = ct.split_at(hl);
    let chunks: Vec<&[u8]> = body.chunks(cs + TAG_LEN).collect();
    assert_eq!(chunks.len(), 4);
    let join = |order: &[usize], extra: &[u8]| {
        let mut v = head.to_vec();
        for &i in order {
            v.extend_from_slice(chunks[i]);
        }
        v.extend_from_slice(extra);
        v
    };
    for (order, extra) in [
        (vec![1, 0, 2, 3], &[][..]),
        (vec![0, 2, 1, 3], &[]),
        (vec![0, 0, 1, 2, 3], &[]),
        (vec![0, 2, 3], &[]),
        (vec![0, 1, 2, 3, 3], &[]),
        (vec![0, 1, 2], &[]),
        (vec![0, 1, 2, 3], &[0u8]),
        (vec![0, 1, 2, 3], &[0u8; 15]),
        (vec![0, 1, 2, 3], &[0u8; 16]),
        (vec![0, 1, 2, 3], &[0u8; 17]),
        (vec![0, 1, 2, 3], &[0u8; 48]),
        (vec![0, 1, 2, 3], &[0u8; 49]),
        (vec![0, 1, 2, 3], &[0u8; 100]),
    ] {
        let t = join(&order, extra);
        let what = format!("{order:?} + {} bytes", extra.len());
        assert!(dec_stream(&t, &id).is_err(), "{what} accepted");
        assert_same_verdict(&t, &id, &[1, 2, 3, 4], &what);
    }
    // Appending to an object whose last chunk is full.
    let full = enc_stream(&data(2 * cs), &[id.public()], cs as u32);
    for extra in [1usize, 16, cs + TAG_LEN, cs + TAG_LEN + 1] {
        let mut t = full.clone();
        t.extend(std::iter::repeat_n(7u8, extra));
        assert!(dec_stream(&t, &id).is_err());
        assert_same_verdict(&t, &id, &[1, 2, 3], &format!("full last chunk + {extra} bytes"));
    }
}

/// With several failing chunks spread over the threads' ranges, the error is the first chunk's,
/// as the sequential reader reports it.
#[test]
fn the_lowest_failing_chunk_is_reported() {
    let id = Identity::generate();
    let cs = 16usize;
    let ct = enc_stream(&data(40 * cs + 3), &[id.public()], cs as u32);
    let hl = header_len(&ct);
    let at = |chunk: usize| hl + chunk * (cs + TAG_LEN) + 3;
    for bad in [
        vec![1usize, 39],
        vec![5, 20, 30],
        vec![25, 26],
        vec![40],
        vec![12, 40],
    ] {
        let mut t = ct.clone();
        for &c in &bad {
            t[at(c)] ^= 0x10;
        }
        for threads in 1..=4 {
            let got = dec_file_with(&t, DecryptionKey::X25519(&id), &binding(), threads);
            assert!(
                matches!(got, Err(CryptError::ChunkAuth { index }) if index == bad[0] as u64),
                "chunks {bad:?}, {threads} threads: {got:?}"
            );
        }
        assert_same_verdict(&t, &id, &[1, 2, 3, 4], &format!("chunks {bad:?}"));
    }
    // A tampered early chunk wins over a cut (mid-chunk or at a boundary) at the end.
    for cut in [1usize, 5, TAG_LEN, cs + TAG_LEN] {
        let mut t = ct[..ct.len() - cut].to_vec();
        t[at(2)] ^= 1;
        for threads in 1..=4 {
            let got = dec_file_with(&t, DecryptionKey::X25519(&id), &binding(), threads);
            assert!(
                matches!(got, Err(CryptError::ChunkAuth { index: 2 })),
                "cut {cut}, {threads} threads: {got:?}"
            );
        }
    }
}

#[test]
fn wrong_binding_or_key_fails_and_leaves_no_plaintext() {
    let id = Identity::generate();
    let ct = enc_file(&data(1000), &[id.public()], 64, 2);
    let moved = ObjectBinding::new("input-bucket", "patients/0002.dcm");
    let other_bucket = ObjectBinding::new("other-bucket", "patients/0001.dcm");
    for threads in [1, 4] {
        for b in [&moved, &other_bucket] {
            let got = dec_file_with(&ct, DecryptionKey::X25519(&id), b, threads);
            assert!(matches!(got, Err(CryptError::NoMatchingRecipient)), "{got:?}");
        }
        let stranger = Identity::generate();
        let got = dec_file_with(&ct, DecryptionKey::X25519(&stranger), &binding(), threads);
        assert!(matches!(got, Err(CryptError::NoMatchingRecipient)), "{got:?}");
        let sym = SymmetricKey::generate("k").unwrap();
        let got = dec_file_with(&ct, DecryptionKey::Symmetric(&sym), &binding(), threads);
        assert!(matches!(got, Err(CryptError::NoMatchingRecipient)), "{got:?}");
    }
    // The same verdicts as the streaming decryptor, message for message.
    let mut out = Vec::new();
    let reference = decrypt(&ct[..], &mut out, &id, &moved).unwrap_err().to_string();
    let got = dec_file_with(&ct, DecryptionKey::X25519(&id), &moved, 3).unwrap_err();
    assert_eq!(got.to_string(), reference);
}

#[test]
fn not_an_object_and_malformed_headers_give_the_streaming_error() {
    let id = Identity::generate();
    for bytes in [
        &b""[..],
        b"CLSTROB",
        b"not an object at all, just text",
        &[0u8; 200],
    ] {
        assert_same_verdict(bytes, &id, &[1, 2], &format!("{} bytes", bytes.len()));
    }
}

#[test]
fn invalid_arguments_are_refused() {
    let id = Identity::generate();
    let dir = tempfile::tempdir().unwrap();
    let not_a_file = File::open(dir.path()).unwrap();
    let out = file_with(b"old");
    let r = encrypt_file(&not_a_file, &out, &[id.public()], &binding(), &opts(64), 2);
    assert!(matches!(r, Err(CryptError::InvalidArgument(_))), "{r:?}");
    let r = decrypt_file(&not_a_file, &out, DecryptionKey::X25519(&id), &binding(), 2);
    assert!(matches!(r, Err(CryptError::InvalidArgument(_))), "{r:?}");
    assert_eq!(out.metadata().unwrap().len(), 0);

    let input = file_with(&data(10));
    for (recipients, cs) in [
        (vec![], 64u32),
        (vec![id.public()], 8),
        (vec![id.public()], (16 << 20) + 1),
    ] {
        let out = file_with(b"old");
        let r = encrypt_file(&input, &out, &recipients, &binding(), &opts(cs), 2);
        assert!(matches!(r, Err(CryptError::InvalidArgument(_))), "{r:?}");
        assert_eq!(out.metadata().unwrap().len(), 0);
    }
}

/// The file cursors are neither used nor moved.
#[test]
fn positional_io_leaves_the_cursors_alone() {
    use std::io::{Seek, SeekFrom};
    let id = Identity::generate();
    let mut input = file_with(&data(3000));
    input.seek(SeekFrom::Start(17)).unwrap();
    let mut sealed = tempfile::tempfile().unwrap();
    encrypt_file(&input, &sealed, &[id.public()], &binding(), &opts(64), 2).unwrap();
    assert_eq!(input.stream_position().unwrap(), 17);
    assert_eq!(sealed.stream_position().unwrap(), 0);
    let opened = tempfile::tempfile().unwrap();
    decrypt_file(&sealed, &opened, DecryptionKey::X25519(&id), &binding(), 2).unwrap();
    assert_eq!(sealed.stream_position().unwrap(), 0);
    assert_eq!(contents(&opened), data(3000));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn prop_file_and_stream_interoperate(len in 0usize..3000, cs in 16u32..200, threads in 0usize..6) {
        let id = Identity::generate();
        let r = [id.public()];
        let pt = data(len);
        let ct = enc_file(&pt, &r, cs, threads);
        prop_assert_eq!(dec_stream(&ct, &id), Ok(pt.clone()));
        let streamed = enc_stream(&pt, &r, cs);
        prop_assert_eq!(dec_file(&streamed, &id, threads), Ok(pt));
    }

    #[test]
    fn prop_mutations_give_the_streaming_verdict(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
        threads in 1usize..5,
    ) {
        let id = Identity::generate();
        let ct = enc_stream(&data(300), &[id.public()], 16);
        let mut t = ct.clone();
        for (pos, v) in edits { let i = pos % t.len(); t[i] = v; }
        let keep = if cut % 3 == 0 { cut % (t.len() + 1) } else { t.len() };
        t.truncate(keep);
        let reference = dec_stream(&t, &id);
        prop_assert_eq!(reference.is_ok(), t == ct);
        prop_assert_eq!(dec_file(&t, &id, threads), reference);
    }
}
