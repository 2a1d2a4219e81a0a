//! Behaviour of the native format: round trips, recipients, binding, and every kind of tamper.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};

use cloister_crypt::{
    CryptError, DecryptionKey, Decryptor, EncryptOptions, Encryptor, Identity, ObjectBinding, Recipient,
    RecipientInfo, SymmetricKey, TAG_LEN, decrypt, decrypt_with, encrypt, inspect, payload_len,
};
use proptest::prelude::*;

fn binding() -> ObjectBinding {
    ObjectBinding::new("input-bucket", "patients/0001.dcm")
}

fn data(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[2])
        .collect()
}

fn enc(pt: &[u8], recipients: &[Recipient], cs: u32) -> Vec<u8> {
    let mut ct = Vec::new();
    let n = encrypt(
        pt,
        &mut ct,
        recipients,
        &binding(),
        &EncryptOptions { chunk_size: cs },
    )
    .unwrap();
    assert_eq!(n, pt.len() as u64);
    ct
}

fn dec(ct: &[u8], id: &Identity) -> Result<Vec<u8>, CryptError> {
    let mut out = Vec::new();
    decrypt(ct, &mut out, id, &binding())?;
    Ok(out)
}

/// Reads everything through the `Decryptor` adapter with a small read size.
fn dec_reader(ct: &[u8], id: &Identity) -> std::io::Result<Vec<u8>> {
    let mut r = Decryptor::new(ct, id, &binding()).map_err(std::io::Error::from)?;
    let mut out = Vec::new();
    let mut buf = [0u8; 7];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
    }
}

fn header_len(ct: &[u8]) -> usize {
    inspect(ct).unwrap().header_len
}

#[test]
fn round_trip_edge_sizes() {
    let id = Identity::generate();
    for cs in [16u32, 64, 65_536] {
        let c = cs as usize;
        for n in [0, 1, c - 1, c, c + 1, 2 * c, 3 * c + 17] {
            let pt = data(n);
            let ct = enc(&pt, &[id.public()], cs);
            assert_eq!(
                (ct.len() - header_len(&ct)) as u64,
                payload_len(n as u64, cs),
                "size {n} chunk {cs}"
            );
            assert_eq!(dec(&ct, &id).unwrap(), pt, "decrypt size {n} chunk {cs}");
            assert_eq!(dec_reader(&ct, &id).unwrap(), pt, "Decryptor size {n} chunk {cs}");
        }
    }
}

#[test]
fn encryptor_writer_matches_plaintext_for_any_write_pattern() {
    let id = Identity::generate();
    let pt = data(1000);
    for step in [1usize, 7, 64, 65, 999, 5000] {
        let mut w = Encryptor::new(
            Vec::new(),
            &[id.public()],
            &binding(),
            &EncryptOptions { chunk_size: 64 },
        )
        .unwrap();
        for piece in pt.chunks(step) {
            w.write_all(piece).unwrap();
        }
        let (ct, n) = w.finish().unwrap();
        assert_eq!(n, 1000);
        assert_eq!(dec(&ct, &id).unwrap(), pt, "step {step}");
    }
    // Exactly one full chunk: the last chunk is full (no extra empty chunk).
    let mut w = Encryptor::new(
        Vec::new(),
        &[id.public()],
        &binding(),
        &EncryptOptions { chunk_size: 64 },
    )
    .unwrap();
    w.write_all(&pt[..64]).unwrap();
    let (ct, _) = w.finish().unwrap();
    assert_eq!(ct.len() - header_len(&ct), 64 + TAG_LEN);
    assert_eq!(dec(&ct, &id).unwrap(), &pt[..64]);
}

#[test]
fn encryptor_dropped_without_finish_reads_as_truncated() {
    let id = Identity::generate();
    let mut ct = Vec::new();
    {
        let mut w = Encryptor::new(
            &mut ct,
            &[id.public()],
            &binding(),
            &EncryptOptions { chunk_size: 16 },
        )
        .unwrap();
        w.write_all(&data(40)).unwrap();
        // dropped: simulates an interrupted upload
    }
    assert!(matches!(dec(&ct, &id), Err(CryptError::Truncated)));
}

#[test]
fn every_recipient_decrypts_and_inspect_lists_them() {
    let ids: Vec<Identity> = (0..3).map(|_| Identity::generate()).collect();
    let sym = SymmetricKey::generate("cas/session-a/input-key").unwrap();
    let mut recipients: Vec<Recipient> = ids.iter().map(Identity::public).collect();
    recipients.push(Recipient::symmetric(sym.clone()));
    let pt = data(300);
    let ct = enc(&pt, &recipients, 64);
    for id in &ids {
        assert_eq!(dec(&ct, id).unwrap(), pt);
    }
    let mut out = Vec::new();
    decrypt_with(&ct[..], &mut out, DecryptionKey::Symmetric(&sym), &binding()).unwrap();
    assert_eq!(out, pt);

    let info = inspect(&ct).unwrap();
    assert_eq!(info.version, 1);
    assert_eq!(info.chunk_size, 64);
    assert_eq!(
        info.recipients,
        vec![
            RecipientInfo::X25519,
            RecipientInfo::X25519,
            RecipientInfo::X25519,
            RecipientInfo::Symmetric {
                key_id: "cas/session-a/input-key".into()
            }
        ]
    );
}

#[test]
fn wrong_identity_or_symmetric_key_is_refused() {
    let id = Identity::generate();
    let sym = SymmetricKey::generate("k1").unwrap();
    let ct = enc(&data(100), &[id.public(), Recipient::symmetric(sym)], 64);
    let other = Identity::generate();
    assert!(matches!(dec(&ct, &other), Err(CryptError::NoMatchingRecipient)));
    // Same id, different key material.
    let forged = SymmetricKey::new("k1", [9u8; 32]).unwrap();
    let r = decrypt_with(&ct[..], &mut Vec::new(), (&forged).into(), &binding());
    assert!(matches!(r, Err(CryptError::NoMatchingRecipient)));
    // Unknown id.
    let unknown = SymmetricKey::new("k2", [9u8; 32]).unwrap();
    let r = decrypt_with(&ct[..], &mut Vec::new(), (&unknown).into(), &binding());
    assert!(matches!(r, Err(CryptError::NoMatchingRecipient)));
}

#[test]
fn wrong_binding_is_refused_for_every_recipient_kind() {
    let id = Identity::generate();
    let sym = SymmetricKey::generate("k").unwrap();
    let ct = enc(&data(100), &[id.public(), Recipient::symmetric(sym.clone())], 64);
    let wrong = [
        ObjectBinding::new("other-bucket", "patients/0001.dcm"),
        ObjectBinding::new("input-bucket", "patients/0002.dcm"),
        // Same concatenation, different split: the length prefixes keep them apart.
        ObjectBinding::new("input-bucketp", "atients/0001.dcm"),
        ObjectBinding::new("", ""),
    ];
    for b in &wrong {
        assert!(decrypt(&ct[..], &mut Vec::new(), &id, b).is_err(), "{b:?}");
        assert!(
            decrypt_with(&ct[..], &mut Vec::new(), (&sym).into(), b).is_err(),
            "{b:?}"
        );
        assert!(Decryptor::new(&ct[..], &id, b).is_err());
    }
}

#[test]
fn header_tamper_is_detected_by_the_mac() {
    let id = Identity::generate();
    let ct = enc(&data(100), &[id.public()], 64);
    // Offsets: magic 0..8, version 8, chunk size 9..13, salt 13..45, nonce prefix 45..52.
    for off in 45..52 {
        let mut t = ct.clone();
        t[off] ^= 1;
        assert!(
            matches!(dec(&t, &id), Err(CryptError::HeaderMac)),
            "nonce prefix byte {off}"
        );
    }
    let hl = header_len(&ct);
    for off in hl - 32..hl {
        let mut t = ct.clone();
        t[off] ^= 0x80;
        assert!(
            matches!(dec(&t, &id), Err(CryptError::HeaderMac)),
            "mac byte {off}"
        );
    }
    // A chunk size change (still in range) is caught by the MAC too.
    let mut t = ct.clone();
    t[12] ^= 0x20;
    assert!(matches!(dec(&t, &id), Err(CryptError::HeaderMac)));
}

#[test]
fn header_parse_errors() {
    let id = Identity::generate();
    let ct = enc(&data(10), &[id.public()], 64);
    let mut t = ct.clone();
    t[0] = b'X';
    assert!(matches!(dec(&t, &id), Err(CryptError::NotAnObject)));
    let mut t = ct.clone();
    t[8] = 2;
    assert!(matches!(dec(&t, &id), Err(CryptError::UnsupportedVersion(2))));
    for cut in 0..header_len(&ct) {
        assert!(
            matches!(
                dec(&ct[..cut], &id),
                Err(CryptError::MalformedHeader(_) | CryptError::NotAnObject)
            ),
            "cut {cut}"
        );
    }
}

/// A short plaintext mistaken for an object is "not an object", as a long one is, so that a user
/// who forgot to encrypt is told so rather than shown a truncated header.
#[test]
fn short_plaintext_is_not_an_object() {
    let id = Identity::generate();
    for plain in [&b""[..], b"hi\n", b"CLSTR", b"hello world, plain text\n"] {
        assert!(
            matches!(dec(plain, &id), Err(CryptError::NotAnObject)),
            "{plain:?}"
        );
    }
}

#[test]
fn truncation_anywhere_is_refused() {
    let id = Identity::generate();
    let cs = 32usize;
    let ct = enc(&data(3 * cs + 17), &[id.public()], cs as u32);
    let hl = header_len(&ct);
    for cut in hl..ct.len() {
        let r = dec(&ct[..cut], &id);
        let at_boundary = (cut - hl).is_multiple_of(cs + TAG_LEN);
        if at_boundary {
            assert!(matches!(r, Err(CryptError::Truncated)), "cut {cut}: {r:?}");
        } else {
            assert!(r.is_err(), "cut {cut} accepted");
        }
        // The Read adapter must report an error too, never a clean EOF.
        assert!(
            dec_reader(&ct[..cut], &id).is_err(),
            "Decryptor accepted cut {cut}"
        );
    }
    // Truncated error message is the distinct one the platform shows.
    assert_eq!(
        CryptError::Truncated.to_string(),
        "truncated: the last chunk is missing"
    );
}

#[test]
fn a_full_last_chunk_cut_off_is_truncation() {
    // Plaintext of exactly two chunks: dropping the (full) last chunk leaves a valid-looking
    // first chunk that was sealed as non-last.
    let id = Identity::generate();
    let ct = enc(&data(64), &[id.public()], 32);
    let hl = header_len(&ct);
    assert!(matches!(dec(&ct[..hl + 48], &id), Err(CryptError::Truncated)));
}

#[test]
fn reordering_duplication_and_dropping_chunks_are_refused() {
    let id = Identity::generate();
    let cs = 32usize;
    let ct = enc(&data(3 * cs + 5), &[id.public()], cs as u32);
    let hl = header_len(&ct);
    let (head, body) = ct.split_at(hl);
    let chunks: Vec<&[u8]> = body.chunks(cs + TAG_LEN).collect();
    assert_eq!(chunks.len(), 4);
    let join = |order: &[usize]| {
        let mut v = head.to_vec();
        for &i in order {
            v.extend_from_slice(chunks[i]);
        }
        v
    };
    for order in [
        vec![1, 0, 2, 3],
        vec![0, 2, 1, 3],
        vec![0, 0, 1, 2, 3],
        vec![0, 1, 1, 2, 3],
        vec![0, 2, 3],
        vec![0, 1, 2, 3, 3],
        vec![0, 1, 3],
    ] {
        let r = dec(&join(&order), &id);
        assert!(r.is_err(), "order {order:?} accepted");
        assert!(dec_reader(&join(&order), &id).is_err());
    }
    assert_eq!(dec(&join(&[0, 1, 2, 3]), &id).unwrap(), data(3 * cs + 5));
}

#[test]
fn chunks_cannot_be_spliced_between_objects() {
    // Two objects for the same recipient and binding: a chunk of one is useless in the other
    // (different salt => different payload key; different nonce prefix).
    let id = Identity::generate();
    let a = enc(&data(64), &[id.public()], 32);
    let b = enc(&data(64), &[id.public()], 32);
    let hl = header_len(&a);
    let mut spliced = a[..hl + 48].to_vec();
    spliced.extend_from_slice(&b[hl + 48..]);
    assert!(matches!(
        dec(&spliced, &id),
        Err(CryptError::ChunkAuth { index: 1 })
    ));
}

#[test]
fn every_flipped_byte_is_refused() {
    let id = Identity::generate();
    // About two chunks with the smallest chunk size keeps the exhaustive loop fast.
    let ct = enc(&data(20), &[id.public()], 16);
    assert!(ct.len() > 150);
    for i in 0..ct.len() {
        for mask in [0x01u8, 0x80] {
            let mut t = ct.clone();
            t[i] ^= mask;
            assert!(dec(&t, &id).is_err(), "flip {mask:#x} at byte {i} accepted");
        }
    }
}

#[test]
fn appended_data_after_the_last_chunk_is_refused() {
    let id = Identity::generate();
    for n in [0usize, 10, 32, 40] {
        let ct = enc(&data(n), &[id.public()], 32);
        let hl = header_len(&ct);
        let last_chunk = ct[hl..].chunks(48).last().unwrap().to_vec();
        for extra in [vec![0u8], vec![0u8; 16], vec![0u8; 48], last_chunk] {
            let mut t = ct.clone();
            t.extend_from_slice(&extra);
            assert!(dec(&t, &id).is_err(), "size {n}, {} bytes appended", extra.len());
            assert!(dec_reader(&t, &id).is_err());
        }
    }
}

#[test]
fn decryptor_errors_are_sticky() {
    let id = Identity::generate();
    let mut ct = enc(&data(100), &[id.public()], 32);
    let last = ct.len() - 1;
    ct[last] ^= 1;
    let mut r = Decryptor::new(&ct[..], &id, &binding()).unwrap();
    let mut sink = Vec::new();
    let err = r.read_to_end(&mut sink).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    // Only verified chunks were released: the first three 32-byte chunks.
    assert_eq!(sink, data(96));
    let mut buf = [0u8; 8];
    assert!(r.read(&mut buf).is_err());
    assert!(r.read(&mut buf).is_err());
}

#[test]
fn options_and_arguments_are_validated() {
    let id = Identity::generate();
    let b = binding();
    let e = |cs, r: &[Recipient]| encrypt(&b""[..], Vec::new(), r, &b, &EncryptOptions { chunk_size: cs });
    assert!(matches!(
        e(15, &[id.public()]),
        Err(CryptError::InvalidArgument(_))
    ));
    assert!(matches!(
        e((16 << 20) + 1, &[id.public()]),
        Err(CryptError::InvalidArgument(_))
    ));
    assert!(matches!(e(64, &[]), Err(CryptError::InvalidArgument(_))));
    assert!(SymmetricKey::new("", [0; 32]).is_err());
    assert!(SymmetricKey::new("x".repeat(256), [0; 32]).is_err());
}

#[test]
fn recipient_and_identity_text_forms() {
    let id = Identity::generate();
    let s = id.public().to_string();
    assert!(s.starts_with("cloister1x25519:") && s.len() == 16 + 64);
    let back: Recipient = s.parse().unwrap();
    assert_eq!(back.x25519_bytes(), id.public().x25519_bytes());
    for bad in [
        "",
        "cloister1x25519:",
        "cloister1x25519:zz",
        "age1abc",
        &s[..s.len() - 1],
    ] {
        assert!(bad.parse::<Recipient>().is_err(), "{bad:?}");
    }
    let secret = id.to_secret_string();
    let id2 = Identity::parse(&secret).unwrap();
    assert_eq!(id2.public().to_string(), s);
    assert!(Identity::parse("CLOISTER-X25519-SECRET-KEY:00").is_err());
    assert!(Identity::parse("# only a comment").is_err());

    // Debug output never shows secrets.
    let secret_hex = &secret[secret.len() - 64..];
    assert!(!format!("{id:?}").contains(secret_hex));
    let sym = SymmetricKey::new("kid", [0xab; 32]).unwrap();
    assert!(!format!("{sym:?}").contains("abab"));
    assert!(!format!("{:?}", Recipient::symmetric(sym.clone())).contains("abab"));
    assert!(!Recipient::symmetric(sym).to_string().contains("abab"));
}

#[test]
fn identity_file_is_private_and_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("id.key");
    let id = Identity::generate();
    id.save(&path).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let loaded = Identity::load(&path).unwrap();
    assert_eq!(loaded.public().to_string(), id.public().to_string());
    assert!(Identity::generate().save(&path).is_err(), "must not overwrite");
    // A file from `save` decrypts what was encrypted to the original.
    let ct = enc(b"x", &[id.public()], 16);
    assert_eq!(dec(&ct, &loaded).unwrap(), b"x");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn prop_round_trip(len in 0usize..2000, cs in 16u32..200, step in 1usize..300) {
        let id = Identity::generate();
        let pt = data(len);
        let ct = enc(&pt, &[id.public()], cs);
        prop_assert_eq!(&dec(&ct, &id).unwrap(), &pt);
        let mut w = Encryptor::new(Vec::new(), &[id.public()], &binding(), &EncryptOptions { chunk_size: cs }).unwrap();
        for p in pt.chunks(step) { w.write_all(p).unwrap(); }
        let (ct2, _) = w.finish().unwrap();
        prop_assert_eq!(ct2.len(), ct.len());
        prop_assert_eq!(&dec_reader(&ct2, &id).unwrap(), &pt);
    }

    #[test]
    fn prop_decrypt_never_panics_on_arbitrary_input(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let id = Identity::generate();
        let _ = dec(&bytes, &id);
        let _ = inspect(&bytes);
    }

    #[test]
    fn prop_decrypt_never_panics_or_accepts_mutations(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in any::<usize>(),
    ) {
        let id = Identity::generate();
        let ct = enc(&data(100), &[id.public()], 32);
        let mut t = ct.clone();
        for (pos, v) in edits { let i = pos % t.len(); t[i] = v; }
        let keep = if cut % 3 == 0 { cut % (t.len() + 1) } else { t.len() };
        t.truncate(keep);
        let r = dec(&t, &id);
        if t != ct { prop_assert!(r.is_err()); } else { prop_assert!(r.is_ok()); }
    }
}
