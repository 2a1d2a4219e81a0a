//! Sender authentication (HPKE Auth-mode stanzas, kind 0x03): round trips through every API,
//! the reported sender, required senders, and every way to present an object a required sender
//! did not write.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use cloister_crypt::{
    AgeRecipient, CryptError, DecryptionKey, Decryptor, EncryptOptions, Encryptor, Identity, ObjectBinding,
    Recipient, RecipientInfo, SymmetricKey, decrypt, decrypt_file, decrypt_file_from, decrypt_from,
    decrypt_into_from, decrypt_with, encrypt, encrypt_file, encrypt_to_vec, encrypted_len, inspect,
    open_in_place, open_in_place_from, seal_in_place,
};

fn binding() -> ObjectBinding {
    ObjectBinding::new("input", "scans/0001.dcm")
}

fn opts(cs: u32) -> EncryptOptions {
    EncryptOptions { chunk_size: cs }
}

fn data(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1])
        .collect()
}

fn file_with(bytes: &[u8]) -> File {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(bytes).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f
}

fn contents(f: &File) -> Vec<u8> {
    let mut buf = vec![0u8; f.metadata().unwrap().len() as usize];
    f.read_exact_at(&mut buf, 0).unwrap();
    buf
}

/// What every decryption API says about `ct`: the plaintext and the sender's text form, or the
/// error. All APIs must agree, and on a refusal none may release plaintext.
fn open_all(
    ct: &[u8],
    key: DecryptionKey<'_>,
    senders: &[Recipient],
) -> Result<(Vec<u8>, Option<String>), String> {
    let b = binding();

    let mut streamed = Vec::new();
    let stream = decrypt_from(ct, &mut streamed, key, &b, senders)
        .map(|d| {
            assert_eq!(d.len, streamed.len() as u64, "decrypt_from length");
            (streamed.clone(), d.sender.map(|s| s.to_string()))
        })
        .map_err(|e| e.to_string());

    let reader = Decryptor::new_from(ct, key, &b, senders)
        .map_err(|e| e.to_string())
        .and_then(|mut r| {
            let sender = r.sender().map(ToString::to_string);
            let mut out = Vec::new();
            r.read_to_end(&mut out).map_err(|e| e.to_string())?;
            Ok((out, sender))
        });

    let mut appended = b"kept".to_vec();
    let slice = decrypt_into_from(ct, &mut appended, key, &b, senders)
        .map(|d| {
            assert_eq!(d.len, appended.len() as u64 - 4, "decrypt_into_from length");
            (appended[4..].to_vec(), d.sender.map(|s| s.to_string()))
        })
        .map_err(|e| e.to_string());
    assert_eq!(&appended[..4], b"kept");

    let mut buf = ct.to_vec();
    let in_place = open_in_place_from(&mut buf, key, &b, senders)
        .map(|d| {
            assert_eq!(d.len, buf.len() as u64, "open_in_place_from length");
            (buf.clone(), d.sender.map(|s| s.to_string()))
        })
        .map_err(|e| e.to_string());

    let mut files = Vec::new();
    for threads in [1, 3] {
        let input = file_with(ct);
        let output = file_with(b"stale bytes that must not survive");
        let r = decrypt_file_from(&input, &output, key, &b, senders, threads)
            .map(|d| {
                let out = contents(&output);
                assert_eq!(d.len, out.len() as u64, "decrypt_file_from length");
                (out, d.sender.map(|s| s.to_string()))
            })
            .map_err(|e| e.to_string());
        if r.is_err() {
            assert_eq!(output.metadata().unwrap().len(), 0, "file output not emptied");
        }
        files.push(r);
    }

    if stream.is_err() && refused_by_header(&stream) {
        // The header is checked first: nothing was written or changed by any API.
        assert!(streamed.is_empty(), "plaintext written before a header refusal");
        assert_eq!(appended, b"kept");
        assert_eq!(buf, ct, "in-place buffer changed by a header refusal");
    }
    assert_eq!(reader, stream, "Decryptor vs decrypt_from");
    assert_eq!(slice, stream, "decrypt_into_from vs decrypt_from");
    assert_eq!(in_place, stream, "open_in_place_from vs decrypt_from");
    for f in files {
        assert_eq!(f, stream, "decrypt_file_from vs decrypt_from");
    }
    stream
}

fn refused_by_header<T>(r: &Result<T, String>) -> bool {
    r.as_ref()
        .is_err_and(|e| !e.contains("chunk") && !e.starts_with("truncated"))
}

/// The stream API's error, as a value to match on.
fn refusal(ct: &[u8], id: &Identity, senders: &[Recipient]) -> CryptError {
    let mut out = Vec::new();
    let err = decrypt_from(ct, &mut out, DecryptionKey::X25519(id), &binding(), senders).unwrap_err();
    assert!(out.is_empty());
    // Every other API refuses too, with the same message.
    assert_eq!(
        open_all(ct, DecryptionKey::X25519(id), senders),
        Err(err.to_string())
    );
    err
}

fn is_sender_refusal(e: &CryptError) -> bool {
    matches!(e, CryptError::SenderNotAuthenticated(_))
}

/// Offset and length of stanza `index` (kind byte included) in `ct`.
fn stanza(ct: &[u8], index: usize) -> (usize, usize) {
    let mut at = 54;
    for i in 0.. {
        let len = 3 + usize::from(u16::from_be_bytes([ct[at + 1], ct[at + 2]]));
        if i == index {
            return (at, len);
        }
        at += len;
    }
    unreachable!()
}

struct Parties {
    owner: Identity,
    service: Identity,
    stranger: Identity,
}

fn parties() -> Parties {
    Parties {
        owner: Identity::generate(),
        service: Identity::generate(),
        stranger: Identity::generate(),
    }
}

fn sealed_by(sender: &Identity, to: &Identity, pt: &[u8], cs: u32) -> Vec<u8> {
    let r = to.public().authenticated_by(sender).unwrap();
    encrypt_to_vec(pt, &[r], &binding(), &opts(cs)).unwrap()
}

#[test]
fn every_encryption_api_round_trips_through_every_decryption_api_with_the_sender() {
    let p = parties();
    let owner = p.owner.public();
    let recipients = [p.service.public().authenticated_by(&p.owner).unwrap()];
    let key = DecryptionKey::X25519(&p.service);
    for (n, cs) in [
        (0usize, 16u32),
        (1, 16),
        (16, 16),
        (17, 16),
        (1000, 64),
        (70_000, 65_536),
    ] {
        let pt = data(n);
        let mut streamed = Vec::new();
        encrypt(&pt[..], &mut streamed, &recipients, &binding(), &opts(cs)).unwrap();
        let mut writer = Encryptor::new(Vec::new(), &recipients, &binding(), &opts(cs)).unwrap();
        writer.write_all(&pt).unwrap();
        let (written, _) = writer.finish().unwrap();
        let sliced = encrypt_to_vec(&pt, &recipients, &binding(), &opts(cs)).unwrap();
        let mut in_place = pt.clone();
        seal_in_place(&mut in_place, &recipients, &binding(), &opts(cs)).unwrap();
        let output = file_with(&[]);
        encrypt_file(&file_with(&pt), &output, &recipients, &binding(), &opts(cs), 2).unwrap();
        let filed = contents(&output);

        for (api, ct) in [
            ("encrypt", &streamed),
            ("Encryptor", &written),
            ("encrypt_to_vec", &sliced),
            ("seal_in_place", &in_place),
            ("encrypt_file", &filed),
        ] {
            let what = format!("{api}, size {n}, chunk {cs}");
            assert_eq!(
                ct.len() as u64,
                encrypted_len(n as u64, &recipients, cs),
                "{what}"
            );
            let expected = Ok((pt.clone(), Some(owner.to_string())));
            assert_eq!(open_all(ct, key, &[]), expected, "{what}, no sender required");
            assert_eq!(
                open_all(ct, key, std::slice::from_ref(&owner)),
                expected,
                "{what}, owner required"
            );
            // The APIs that do not report senders still read authenticated objects.
            let mut out = Vec::new();
            decrypt(&ct[..], &mut out, &p.service, &binding()).unwrap();
            assert_eq!(out, pt, "{what}, decrypt");
            let mut buf = ct.clone();
            open_in_place(&mut buf, &p.service, &binding()).unwrap();
            assert_eq!(buf, pt, "{what}, open_in_place");
            let plain = file_with(&[]);
            decrypt_file(&file_with(ct), &plain, key, &binding(), 2).unwrap();
            assert_eq!(contents(&plain), pt, "{what}, decrypt_file");
        }
    }
}

#[test]
fn the_reported_sender_is_the_one_that_sealed_and_any_listed_sender_suffices() {
    let p = parties();
    let ct = sealed_by(&p.owner, &p.service, b"scan", 64);
    let key = DecryptionKey::X25519(&p.service);
    let listed = [p.stranger.public(), p.owner.public()];
    let (pt, sender) = open_all(&ct, key, &listed).unwrap();
    assert_eq!(pt, b"scan");
    assert_eq!(sender, Some(p.owner.public().to_string()));
    assert!(sender.unwrap().starts_with("cloister1x25519:"));
}

#[test]
fn a_base_mode_object_reports_no_sender_and_is_refused_when_a_sender_is_required() {
    let p = parties();
    // Anyone who knows the service's public recipient can make this object.
    let ct = encrypt_to_vec(b"forged input", &[p.service.public()], &binding(), &opts(64)).unwrap();
    let key = DecryptionKey::X25519(&p.service);
    assert_eq!(open_all(&ct, key, &[]), Ok((b"forged input".to_vec(), None)));
    let e = refusal(&ct, &p.service, &[p.owner.public()]);
    assert!(is_sender_refusal(&e), "{e}");
    assert!(e.to_string().contains("no sender authentication"), "{e}");
}

#[test]
fn an_object_from_another_sender_is_refused() {
    let p = parties();
    let ct = sealed_by(&p.stranger, &p.service, b"not from the owner", 64);
    assert_eq!(
        open_all(&ct, DecryptionKey::X25519(&p.service), &[]),
        Ok((
            b"not from the owner".to_vec(),
            Some(p.stranger.public().to_string())
        ))
    );
    let e = refusal(&ct, &p.service, &[p.owner.public()]);
    assert!(is_sender_refusal(&e), "{e}");
    assert!(e.to_string().contains("not expected"), "{e}");
}

#[test]
fn a_substituted_sender_key_is_refused() {
    let p = parties();
    let ct = sealed_by(&p.owner, &p.service, b"payload", 64);
    let (at, _) = stanza(&ct, 0);
    let substitute = |key: &Identity| {
        let mut forged = ct.clone();
        forged[at + 3..at + 35].copy_from_slice(&key.public().x25519_bytes().unwrap());
        forged
    };
    // The stanza now names the stranger: it no longer opens (the sender's key is in the KEM).
    let forged = substitute(&p.stranger);
    assert_eq!(
        inspect(&forged).unwrap().recipients,
        [RecipientInfo::X25519Auth {
            sender: p.stranger.public().to_string()
        }]
    );
    let e = refusal(&forged, &p.service, &[p.stranger.public()]);
    assert!(is_sender_refusal(&e), "{e}");
    assert!(
        e.to_string().contains("does not open") || e.to_string().contains("opens"),
        "{e}"
    );
    let e = refusal(&forged, &p.service, &[p.owner.public()]);
    assert!(is_sender_refusal(&e), "{e}");
    let e = refusal(&forged, &p.service, &[]);
    assert!(matches!(e, CryptError::NoMatchingRecipient), "{e}");
    // The other way round: a stranger's object relabelled as the owner's.
    let theirs = sealed_by(&p.stranger, &p.service, b"payload", 64);
    let mut relabelled = theirs.clone();
    relabelled[at + 3..at + 35].copy_from_slice(&p.owner.public().x25519_bytes().unwrap());
    let e = refusal(&relabelled, &p.service, &[p.owner.public()]);
    assert!(is_sender_refusal(&e), "{e}");
}

#[test]
fn every_flipped_bit_of_the_auth_stanza_is_refused() {
    let p = parties();
    let ct = sealed_by(&p.owner, &p.service, &data(100), 32);
    let (at, len) = stanza(&ct, 0);
    assert_eq!(ct[at], 3, "stanza kind");
    assert_eq!(len, 3 + 32 + 32 + 48);
    for i in at..at + len {
        // Alternate the bit so that both ends of each byte are exercised across the stanza.
        let bit = if i % 2 == 0 { 0x01u8 } else { 0x80 };
        let mut bad = ct.clone();
        bad[i] ^= bit;
        for senders in [vec![], vec![p.owner.public()]] {
            let r = open_all(&bad, DecryptionKey::X25519(&p.service), &senders);
            assert!(
                r.is_err(),
                "byte {i} bit {bit:#x} accepted with {} senders",
                senders.len()
            );
        }
    }
}

#[test]
fn every_flipped_byte_of_the_object_is_refused_when_a_sender_is_required() {
    let p = parties();
    let ct = sealed_by(&p.owner, &p.service, &data(50), 16);
    let owner = [p.owner.public()];
    for i in 0..ct.len() {
        let mut bad = ct.clone();
        bad[i] ^= 0x20;
        let r = decrypt_from(
            &bad[..],
            &mut Vec::new(),
            DecryptionKey::X25519(&p.service),
            &binding(),
            &owner,
        );
        assert!(r.is_err(), "byte {i} accepted");
        // The other APIs agree (checked on a sample: each check runs six decryptions).
        if i % 5 == 0 {
            assert!(
                open_all(&bad, DecryptionKey::X25519(&p.service), &owner).is_err(),
                "byte {i}"
            );
        }
    }
}

#[test]
fn several_recipients_each_authenticate_the_sender() {
    let p = parties();
    let colleague = Identity::generate();
    let plain_reader = Identity::generate();
    let sym = SymmetricKey::generate("cas/input").unwrap();
    let recipients = [
        p.service.public().authenticated_by(&p.owner).unwrap(),
        colleague.public().authenticated_by(&p.owner).unwrap(),
        plain_reader.public(),
        Recipient::symmetric(sym.clone()),
    ];
    let pt = data(3000);
    let ct = encrypt_to_vec(&pt, &recipients, &binding(), &opts(256)).unwrap();
    assert_eq!(ct.len() as u64, encrypted_len(3000, &recipients, 256));
    let owner = p.owner.public().to_string();
    assert_eq!(
        inspect(&ct).unwrap().recipients,
        [
            RecipientInfo::X25519Auth {
                sender: owner.clone()
            },
            RecipientInfo::X25519Auth {
                sender: owner.clone()
            },
            RecipientInfo::X25519,
            RecipientInfo::Symmetric {
                key_id: "cas/input".into()
            },
        ]
    );
    // The colleague's stanza comes second: the first, for the service, does not open for it
    // and is not the end of the search.
    for id in [&p.service, &colleague] {
        assert_eq!(
            open_all(&ct, DecryptionKey::X25519(id), &[p.owner.public()]),
            Ok((pt.clone(), Some(owner.clone())))
        );
    }
    // Its Base-mode stanza opens for the plain reader, without a sender; requiring one refuses.
    assert_eq!(
        open_all(&ct, DecryptionKey::X25519(&plain_reader), &[]),
        Ok((pt.clone(), None))
    );
    let e = refusal(&ct, &plain_reader, &[p.owner.public()]);
    assert!(is_sender_refusal(&e), "{e}");
    // A symmetric key opens its stanza, but cannot authenticate a sender.
    assert_eq!(
        open_all(&ct, DecryptionKey::Symmetric(&sym), &[]),
        Ok((pt.clone(), None))
    );
    let mut out = Vec::new();
    let e = decrypt_from(
        &ct[..],
        &mut out,
        DecryptionKey::Symmetric(&sym),
        &binding(),
        &[p.owner.public()],
    )
    .unwrap_err();
    assert!(is_sender_refusal(&e), "{e}");
    assert!(out.is_empty());
    // Someone who is not a recipient gets nothing either way.
    assert!(matches!(
        refusal(&ct, &p.stranger, &[p.owner.public()]),
        CryptError::SenderNotAuthenticated(_)
    ));
    assert!(matches!(
        refusal(&ct, &p.stranger, &[]),
        CryptError::NoMatchingRecipient
    ));
}

#[test]
fn a_base_stanza_next_to_a_broken_auth_stanza_is_no_fallback() {
    let p = parties();
    // One object with both an Auth and a Base stanza for the service.
    let recipients = [
        p.service.public().authenticated_by(&p.owner).unwrap(),
        p.service.public(),
    ];
    let ct = encrypt_to_vec(b"both", &recipients, &binding(), &opts(64)).unwrap();
    let key = DecryptionKey::X25519(&p.service);
    // The Auth stanza is tried first, so the sender is reported even with nothing required.
    assert_eq!(
        open_all(&ct, key, &[]),
        Ok((b"both".to_vec(), Some(p.owner.public().to_string())))
    );
    // A sender that is not the owner is refused although the Base stanza would open.
    let e = refusal(&ct, &p.service, &[p.stranger.public()]);
    assert!(is_sender_refusal(&e), "{e}");
    // Break the Auth stanza's ciphertext: with the owner required, the Base stanza is not a way
    // around it; without a requirement, the Base stanza opens but the header MAC still fails.
    let (at, len) = stanza(&ct, 0);
    let mut broken = ct.clone();
    broken[at + len - 1] ^= 1;
    let e = refusal(&broken, &p.service, &[p.owner.public()]);
    assert!(is_sender_refusal(&e), "{e}");
    let e = refusal(&broken, &p.service, &[]);
    assert!(matches!(e, CryptError::HeaderMac), "{e}");
}

#[test]
fn an_authenticated_object_stays_bound_to_its_bucket_and_key() {
    let p = parties();
    let ct = sealed_by(&p.owner, &p.service, b"bound", 64);
    for moved in [
        ObjectBinding::new("input", "scans/0002.dcm"),
        ObjectBinding::new("other", "scans/0001.dcm"),
    ] {
        for senders in [vec![], vec![p.owner.public()]] {
            let r = decrypt_from(
                &ct[..],
                &mut Vec::new(),
                DecryptionKey::X25519(&p.service),
                &moved,
                &senders,
            );
            assert!(r.is_err(), "{moved:?} accepted");
        }
    }
}

#[test]
fn invalid_sender_arguments_are_refused() {
    let p = parties();
    let sym = SymmetricKey::generate("k").unwrap();
    // A symmetric recipient cannot carry sender authentication.
    assert!(matches!(
        Recipient::symmetric(sym.clone()).authenticated_by(&p.owner),
        Err(CryptError::InvalidArgument(_))
    ));
    // Expected senders are plain public keys.
    let ct = sealed_by(&p.owner, &p.service, b"x", 64);
    for bad in [
        Recipient::symmetric(sym),
        p.owner.public().authenticated_by(&p.stranger).unwrap(),
    ] {
        let r = decrypt_from(
            &ct[..],
            &mut Vec::new(),
            DecryptionKey::X25519(&p.service),
            &binding(),
            &[bad],
        );
        assert!(matches!(r, Err(CryptError::InvalidArgument(_))), "{r:?}");
    }
    // Authenticating again replaces the sender; the recipient's text form stays its own key.
    let twice = p
        .service
        .public()
        .authenticated_by(&p.stranger)
        .unwrap()
        .authenticated_by(&p.owner)
        .unwrap();
    assert_eq!(twice.to_string(), p.service.public().to_string());
    let ct = encrypt_to_vec(b"x", &[twice], &binding(), &opts(64)).unwrap();
    assert_eq!(
        open_all(&ct, DecryptionKey::X25519(&p.service), &[p.owner.public()]),
        Ok((b"x".to_vec(), Some(p.owner.public().to_string())))
    );
}

#[test]
fn decrypt_with_keeps_its_contract_for_every_kind_of_object() {
    let p = parties();
    for ct in [
        sealed_by(&p.owner, &p.service, b"abc", 16),
        encrypt_to_vec(b"abc", &[p.service.public()], &binding(), &opts(16)).unwrap(),
    ] {
        let mut out = Vec::new();
        let n = decrypt_with(&ct[..], &mut out, DecryptionKey::X25519(&p.service), &binding()).unwrap();
        assert_eq!((n, out), (3, b"abc".to_vec()));
    }
}

#[test]
fn age_export_takes_plain_recipients_only() {
    let p = parties();
    let plain = p.service.public();
    assert!(AgeRecipient::from_recipient(&plain).is_some());
    // An age file cannot authenticate a sender: converting would silently drop it.
    let authenticated = plain.authenticated_by(&p.owner).unwrap();
    assert!(AgeRecipient::from_recipient(&authenticated).is_none());
}

#[test]
fn hostile_auth_stanzas_do_not_panic() {
    let p = parties();
    let ct = sealed_by(&p.owner, &p.service, b"x", 64);
    let (at, len) = stanza(&ct, 0);
    // Shorter and longer bodies, an all-zero (low-order) sender key, an all-zero enc.
    let mut zero_sender = ct.clone();
    zero_sender[at + 3..at + 35].fill(0);
    let mut zero_enc = ct.clone();
    zero_enc[at + 35..at + 67].fill(0);
    let mut short = ct[..at + 1].to_vec();
    short.extend_from_slice(&((len - 4) as u16).to_be_bytes());
    short.extend_from_slice(&ct[at + 3..at + len - 1]);
    short.extend_from_slice(&ct[at + len..]);
    for bad in [zero_sender, zero_enc, short] {
        for senders in [vec![], vec![p.owner.public()]] {
            assert!(open_all(&bad, DecryptionKey::X25519(&p.service), &senders).is_err());
        }
    }
}
