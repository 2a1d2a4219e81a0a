//! The in-memory API (`encrypt_into`, `seal_in_place`, `decrypt_into`, `open_in_place`, …)
//! against the streaming API: interchangeable objects, the same errors for every tamper, and no
//! plaintext left behind on failure. Byte-for-byte equality of the output under one header is a
//! unit test in `src/slice.rs` (headers are random, so it needs the crate's internals).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cloister_crypt::{
    CryptError, DecryptionKey, EncryptOptions, Identity, ObjectBinding, Recipient, SymmetricKey, TAG_LEN,
    decrypt, decrypt_into, decrypt_to_vec, encrypt, encrypt_into, encrypt_to_vec, encrypted_len, inspect,
    open_in_place, seal_in_place,
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

/// The streaming decryptor's verdict, as the reference.
fn dec_stream(ct: &[u8], id: &Identity) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    decrypt(ct, &mut out, id, &binding()).map_err(|e| e.to_string())?;
    Ok(out)
}

fn dec_slice(ct: &[u8], id: &Identity) -> Result<Vec<u8>, String> {
    decrypt_to_vec(ct, id, &binding()).map_err(|e| e.to_string())
}

fn dec_in_place(ct: &[u8], id: &Identity) -> Result<Vec<u8>, String> {
    let mut buf = ct.to_vec();
    match open_in_place(&mut buf, id, &binding()) {
        Ok(()) => Ok(buf),
        Err(e) => Err(e.to_string()),
    }
}

/// Both in-memory decryptors must give exactly the streaming decryptor's result.
fn assert_same_verdict(ct: &[u8], id: &Identity, what: &str) {
    let reference = dec_stream(ct, id);
    assert_eq!(dec_slice(ct, id), reference, "decrypt_to_vec, {what}");
    assert_eq!(dec_in_place(ct, id), reference, "open_in_place, {what}");
}

fn header_len(ct: &[u8]) -> usize {
    inspect(ct).unwrap().header_len
}

#[test]
fn round_trip_at_chunk_edges_across_all_apis() {
    let id = Identity::generate();
    let r = [id.public()];
    for cs in [16u32, 64, 65_536] {
        let c = cs as usize;
        for n in [0, 1, c - 1, c, c + 1, 2 * c - 1, 2 * c, 2 * c + 1, 3 * c + 17] {
            let pt = data(n);
            let want_len = encrypted_len(n as u64, &r, cs) as usize;

            let sliced = encrypt_to_vec(&pt, &r, &binding(), &opts(cs)).unwrap();
            let mut in_place = pt.clone();
            seal_in_place(&mut in_place, &r, &binding(), &opts(cs)).unwrap();
            let mut streamed = Vec::new();
            encrypt(&pt[..], &mut streamed, &r, &binding(), &opts(cs)).unwrap();

            for (api, ct) in [
                ("encrypt_to_vec", &sliced),
                ("seal_in_place", &in_place),
                ("encrypt", &streamed),
            ] {
                let what = format!("{api}, size {n}, chunk {cs}");
                assert_eq!(ct.len(), want_len, "{what}");
                assert_eq!(dec_stream(ct, &id).as_deref(), Ok(&pt[..]), "{what}");
                assert_same_verdict(ct, &id, &what);
            }
        }
    }
}

#[test]
fn encrypted_len_is_exact_for_every_recipient_kind() {
    let ids: Vec<Identity> = (0..2).map(|_| Identity::generate()).collect();
    let mut r: Vec<Recipient> = ids.iter().map(Identity::public).collect();
    r.push(Recipient::symmetric(SymmetricKey::generate("k").unwrap()));
    r.push(Recipient::symmetric(
        SymmetricKey::generate("x".repeat(255)).unwrap(),
    ));
    for n in [0usize, 5, 1000] {
        let ct = encrypt_to_vec(&data(n), &r, &binding(), &opts(64)).unwrap();
        assert_eq!(ct.len() as u64, encrypted_len(n as u64, &r, 64), "size {n}");
    }
}

#[test]
fn symmetric_key_decrypts_in_memory() {
    let sym = SymmetricKey::generate("cas/input").unwrap();
    let pt = data(500);
    let ct = encrypt_to_vec(&pt, &[Recipient::symmetric(sym.clone())], &binding(), &opts(64)).unwrap();
    assert_eq!(decrypt_to_vec(&ct, &sym, &binding()).unwrap(), pt);
    let mut buf = ct.clone();
    open_in_place(&mut buf, DecryptionKey::Symmetric(&sym), &binding()).unwrap();
    assert_eq!(buf, pt);
}

#[test]
fn into_variants_append_to_existing_content() {
    let id = Identity::generate();
    let pt = data(200);
    let mut ct = b"existing".to_vec();
    encrypt_into(&pt, &mut ct, &[id.public()], &binding(), &opts(64)).unwrap();
    assert_eq!(&ct[..8], b"existing");
    let object = &ct[8..];
    let mut out = b"before".to_vec();
    decrypt_into(object, &mut out, &id, &binding()).unwrap();
    assert_eq!(&out[..6], b"before");
    assert_eq!(&out[6..], &pt[..]);
}

#[test]
fn every_flipped_byte_gives_the_streaming_error() {
    let id = Identity::generate();
    let ct = encrypt_to_vec(&data(20), &[id.public()], &binding(), &opts(16)).unwrap();
    for i in 0..ct.len() {
        for mask in [0x01u8, 0x80] {
            let mut t = ct.clone();
            t[i] ^= mask;
            assert!(dec_slice(&t, &id).is_err(), "flip {mask:#x} at byte {i} accepted");
            assert_same_verdict(&t, &id, &format!("flip {mask:#x} at byte {i}"));
        }
    }
}

#[test]
fn truncation_anywhere_gives_the_streaming_error() {
    let id = Identity::generate();
    let cs = 32usize;
    for n in [0, 10, cs, 2 * cs, 3 * cs + 17] {
        let ct = encrypt_to_vec(&data(n), &[id.public()], &binding(), &opts(cs as u32)).unwrap();
        for cut in 0..ct.len() {
            assert!(
                dec_slice(&ct[..cut], &id).is_err(),
                "size {n}, cut {cut} accepted"
            );
            assert_same_verdict(&ct[..cut], &id, &format!("size {n}, cut {cut}"));
        }
    }
    // A cut at a chunk boundary is the distinct truncation error, full last chunk included.
    let ct = encrypt_to_vec(&data(2 * cs), &[id.public()], &binding(), &opts(cs as u32)).unwrap();
    let cut = header_len(&ct) + cs + TAG_LEN;
    assert!(matches!(
        decrypt_to_vec(&ct[..cut], &id, &binding()),
        Err(CryptError::Truncated)
    ));
    let mut buf = ct[..cut].to_vec();
    assert!(matches!(
        open_in_place(&mut buf, &id, &binding()),
        Err(CryptError::Truncated)
    ));
}

#[test]
fn reordered_duplicated_dropped_or_appended_chunks_give_the_streaming_error() {
    let id = Identity::generate();
    let cs = 32usize;
    let ct = encrypt_to_vec(&data(3 * cs + 5), &[id.public()], &binding(), &opts(cs as u32)).unwrap();
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
        (vec![0, 1, 2, 3], &[0u8; 16]),
        (vec![0, 1, 2, 3], &[0u8; 48]),
    ] {
        let t = join(&order, extra);
        assert!(
            dec_slice(&t, &id).is_err(),
            "{order:?} + {} bytes accepted",
            extra.len()
        );
        assert_same_verdict(&t, &id, &format!("{order:?} + {} bytes", extra.len()));
    }
}

#[test]
fn chunks_spliced_from_another_object_are_refused() {
    let id = Identity::generate();
    let a = encrypt_to_vec(&data(64), &[id.public()], &binding(), &opts(32)).unwrap();
    let b = encrypt_to_vec(&data(64), &[id.public()], &binding(), &opts(32)).unwrap();
    let hl = header_len(&a);
    let mut spliced = a[..hl + 48].to_vec();
    spliced.extend_from_slice(&b[hl + 48..]);
    assert!(matches!(
        decrypt_to_vec(&spliced, &id, &binding()),
        Err(CryptError::ChunkAuth { index: 1 })
    ));
    assert_same_verdict(&spliced, &id, "spliced");
}

#[test]
fn failed_decryption_releases_no_plaintext() {
    let id = Identity::generate();
    let mut ct = encrypt_to_vec(&data(100), &[id.public()], &binding(), &opts(32)).unwrap();
    let last = ct.len() - 1;
    ct[last] ^= 1;

    // decrypt_into: the output is back to what it held before, verified chunks included.
    let mut out = b"before".to_vec();
    let r = decrypt_into(&ct, &mut out, &id, &binding());
    assert!(matches!(r, Err(CryptError::ChunkAuth { index: 3 })), "{r:?}");
    assert_eq!(out, b"before");

    // open_in_place: a chunk failure empties the buffer.
    let mut buf = ct.clone();
    assert!(matches!(
        open_in_place(&mut buf, &id, &binding()),
        Err(CryptError::ChunkAuth { index: 3 })
    ));
    assert!(buf.is_empty());

    // A header failure (wrong key, wrong binding) decrypts nothing and leaves the buffer as is.
    let good = encrypt_to_vec(&data(100), &[id.public()], &binding(), &opts(32)).unwrap();
    let mut buf = good.clone();
    assert!(matches!(
        open_in_place(&mut buf, &Identity::generate(), &binding()),
        Err(CryptError::NoMatchingRecipient)
    ));
    assert_eq!(buf, good);
    let moved = ObjectBinding::new("input-bucket", "patients/0002.dcm");
    assert!(open_in_place(&mut buf, &id, &moved).is_err());
    assert_eq!(buf, good);
    assert!(decrypt_to_vec(&good, &id, &moved).is_err());
}

#[test]
fn invalid_arguments_leave_the_plaintext_untouched() {
    let id = Identity::generate();
    let pt = data(100);
    for (recipients, cs) in [
        (vec![], 64u32),
        (vec![id.public()], 8),
        (vec![id.public()], (16 << 20) + 1),
    ] {
        let mut buf = pt.clone();
        assert!(matches!(
            seal_in_place(&mut buf, &recipients, &binding(), &opts(cs)),
            Err(CryptError::InvalidArgument(_))
        ));
        assert_eq!(buf, pt);
        let mut out = b"keep".to_vec();
        assert!(encrypt_into(&pt, &mut out, &recipients, &binding(), &opts(cs)).is_err());
        assert_eq!(out, b"keep");
    }
}

#[test]
fn in_place_does_not_reallocate_with_enough_capacity() {
    let id = Identity::generate();
    let r = [id.public()];
    let pt = data(10_000);
    let mut buf = Vec::with_capacity(encrypted_len(pt.len() as u64, &r, 64) as usize);
    buf.extend_from_slice(&pt);
    let ptr = buf.as_ptr();
    seal_in_place(&mut buf, &r, &binding(), &opts(64)).unwrap();
    assert_eq!(buf.as_ptr(), ptr);
    open_in_place(&mut buf, &id, &binding()).unwrap();
    assert_eq!(buf.as_ptr(), ptr);
    assert_eq!(buf, pt);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn prop_all_apis_interoperate(len in 0usize..2000, cs in 16u32..200) {
        let id = Identity::generate();
        let r = [id.public()];
        let pt = data(len);
        let mut buf = pt.clone();
        seal_in_place(&mut buf, &r, &binding(), &opts(cs)).unwrap();
        prop_assert_eq!(dec_stream(&buf, &id), Ok(pt.clone()));
        let ct = encrypt_to_vec(&pt, &r, &binding(), &opts(cs)).unwrap();
        prop_assert_eq!(ct.len(), buf.len());
        prop_assert_eq!(dec_slice(&ct, &id), Ok(pt.clone()));
        prop_assert_eq!(dec_in_place(&ct, &id), Ok(pt));
    }

    #[test]
    fn prop_mutations_give_the_streaming_verdict(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
    ) {
        let id = Identity::generate();
        let ct = encrypt_to_vec(&data(100), &[id.public()], &binding(), &opts(32)).unwrap();
        let mut t = ct.clone();
        for (pos, v) in edits { let i = pos % t.len(); t[i] = v; }
        let keep = if cut % 3 == 0 { cut % (t.len() + 1) } else { t.len() };
        t.truncate(keep);
        let reference = dec_stream(&t, &id);
        prop_assert_eq!(reference.is_ok(), t == ct);
        prop_assert_eq!(dec_slice(&t, &id), reference.clone());
        prop_assert_eq!(dec_in_place(&t, &id), reference);
    }

    #[test]
    fn prop_arbitrary_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let id = Identity::generate();
        prop_assert!(dec_slice(&bytes, &id).is_err());
        prop_assert!(dec_in_place(&bytes, &id).is_err());
    }
}
