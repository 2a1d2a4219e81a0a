//! Secret generation, certificates, carry-over across updates, imports and exports.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cloister_cas_session::{
    ClientKey, ExportTarget, Importer, KeyAlgorithm, SecretKind, SecretValue, Secrets, Session, SessionError,
    check_export, materialize_secrets, public_part, refresh_imports, secret_bytes,
};
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::common::*;

fn get<'a>(secrets: &'a Secrets, name: &str) -> &'a SecretValue {
    secrets.get(name).unwrap_or_else(|| panic!("no secret {name}"))
}

fn raw(secrets: &Secrets, name: &str) -> Vec<u8> {
    let v = get(secrets, name);
    match v.kind {
        SecretKind::Ascii => secret_bytes(v, None).expect("raw"),
        SecretKind::Binary => B64.decode(secret_bytes(v, None).expect("b64")).expect("base64"),
        _ => secret_bytes(v, Some("privatekey")).expect("key"),
    }
}

fn cert(der: &[u8]) -> X509Certificate<'_> {
    X509Certificate::from_der(der).expect("certificate parses").1
}

fn cn(c: &X509Certificate<'_>) -> String {
    c.subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn materialize_next(next: &Session, prev: (&Session, &Secrets), now: OffsetDateTime) -> Secrets {
    materialize_secrets(next, Some(prev), &Exporters::new(vec![provider()]), now)
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn sizes_kinds_and_explicit_values() {
    let s = parse(&full_example());
    let secrets = materialize(&s);
    assert_eq!(secrets.len(), 8);
    let api = raw(&secrets, "api_key");
    assert_eq!(api.len(), 24);
    assert!(api.iter().all(u8::is_ascii_alphanumeric), "{api:?}");
    assert_eq!(raw(&secrets, "model_key").len(), 32);
    assert_eq!(raw(&secrets, "fixed_token"), b"explicit-token");
    assert_eq!(raw(&secrets, "fixed_blob"), [0, 1, 2, 3]);
    // Two generations differ (not a constant).
    let again = materialize(&s);
    assert_ne!(raw(&secrets, "api_key"), raw(&again, "api_key"));
    assert_ne!(raw(&secrets, "model_key"), raw(&again, "model_key"));
    assert_eq!(
        get(&secrets, "signing_key").algorithm,
        Some(KeyAlgorithm::Ed25519)
    );
    assert_eq!(get(&secrets, "api_key").algorithm, None);

    let big = parse(
        "name: a/b\nsecrets:\n- {name: a, kind: ascii, size: 65536}\n- {name: b, kind: binary, size: 1}\n",
    );
    let v = materialize_secrets(&big, None, &NoImports, NOW).expect("materialize");
    assert_eq!(raw(&v, "a").len(), 65536);
    assert_eq!(raw(&v, "b").len(), 1);
}

#[test]
fn private_keys_of_every_algorithm() {
    let s = parse(
        "name: a/b\nsecrets:\n- {name: e, kind: private-key, algorithm: ed25519}\n- {name: p, kind: private-key}\n- {name: q, kind: private-key, algorithm: p384}\n- {name: r, kind: private-key, algorithm: rsa-2048}\n",
    );
    let secrets = materialize_secrets(&s, None, &NoImports, NOW).expect("materialize");
    for (name, oid) in [
        ("e", "1.3.101.112"),
        ("p", "1.2.840.10045.2.1"),
        ("q", "1.2.840.10045.2.1"),
        ("r", "1.2.840.113549.1.1.1"),
    ] {
        let v = get(&secrets, name);
        let pem_text = String::from_utf8(secret_bytes(v, None).expect("pem")).expect("utf8");
        assert!(pem_text.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{name}");
        assert_eq!(
            secret_bytes(v, Some("privatekey")).expect("pem"),
            pem_text.as_bytes()
        );
        let public = public_part(v, None).expect("public part");
        assert_eq!(public_part(v, Some("publickey")), Some(public.clone()));
        assert_eq!(secret_bytes(v, Some("publickey")).expect("spki pem"), public);
        let spki_der = pem::parse(&public).expect("pem").into_contents();
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&spki_der).expect("SPKI");
        assert_eq!(spki.algorithm.algorithm.to_id_string(), oid, "{name}");
        assert_eq!(
            public_part(v, Some("privatekey")),
            None,
            "private part never public"
        );
        assert_eq!(
            public_part(v, Some("hex")),
            Some(hex::encode(&spki_der).into_bytes())
        );
        // The stored key loads back as the algorithm's key pair.
        let pkcs8 = pem::parse(&pem_text).expect("pem").into_contents();
        assert_eq!(
            hex::encode(&pkcs8).into_bytes(),
            secret_bytes(v, Some("hex")).expect("hex")
        );
    }
}

#[test]
fn certificate_chain_verifies() {
    let s = parse(&full_example());
    let secrets = materialize(&s);
    let ca_v = get(&secrets, "ca");
    let leaf_v = get(&secrets, "server_cert");
    let ca_der = ca_v.public.as_deref().expect("ca cert");
    let leaf_der = leaf_v.public.as_deref().expect("leaf cert");
    let ca = cert(ca_der);
    let leaf = cert(leaf_der);

    assert_eq!(cn(&ca), "Hospital CA");
    assert!(ca.is_ca());
    ca.verify_signature(None).expect("CA is self-signed");
    assert_eq!(ca.issuer(), ca.subject());
    assert!(ca_v.chain.is_empty());

    assert_eq!(cn(&leaf), "model-runner");
    assert!(!leaf.is_ca());
    assert_eq!(leaf.issuer(), ca.subject());
    leaf.verify_signature(Some(ca.public_key()))
        .expect("leaf signed by the CA");
    assert!(leaf.verify_signature(None).is_err(), "leaf is not self-signed");
    assert_eq!(leaf_v.chain, vec![ca_der.to_vec()]);
    let san = leaf
        .subject_alternative_name()
        .expect("SAN ok")
        .expect("SAN present");
    let names: Vec<String> = san
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => d.to_string(),
            GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(names, ["model-runner.local", "ip:[10, 0, 0, 1]"]);
    // Validity: from 5 minutes before now, for valid_for.
    let nb = leaf.validity().not_before.to_datetime();
    let na = leaf.validity().not_after.to_datetime();
    assert_eq!(nb, NOW - Duration::minutes(5));
    assert_eq!(na, NOW + Duration::days(365));
    assert_eq!(ca.validity().not_after.to_datetime(), NOW + Duration::days(3650));
    // The key in the certificate is the stored key.
    let leaf_spki = secret_bytes(leaf_v, Some("publickey")).expect("spki");
    let cert_spki = pem::parse(&leaf_spki).expect("pem").into_contents();
    assert_eq!(cert_spki, leaf.public_key().raw);

    // Formats: crt, chain, default, hex/base64 of the certificate.
    let crt = String::from_utf8(secret_bytes(leaf_v, Some("crt")).expect("crt")).expect("utf8");
    assert_eq!(pem::parse(&crt).expect("pem").contents(), leaf_der);
    assert_eq!(secret_bytes(leaf_v, None).expect("default"), crt.as_bytes());
    let chain = secret_bytes(leaf_v, Some("chain")).expect("chain");
    let parts = pem::parse_many(&chain).expect("pem");
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0].contents(), leaf_der);
    assert_eq!(parts[1].contents(), ca_der);
    assert_eq!(
        secret_bytes(leaf_v, Some("hex")).expect("hex"),
        hex::encode(leaf_der).into_bytes()
    );
    assert_eq!(public_part(leaf_v, Some("chain")), Some(chain));
    assert_eq!(public_part(leaf_v, None).as_deref(), Some(crt.as_bytes()));
    assert!(secret_bytes(leaf_v, Some("pem")).is_err());
    assert!(secret_bytes(get(&secrets, "api_key"), Some("crt")).is_err());
    assert_eq!(public_part(get(&secrets, "api_key"), None), None);
}

#[test]
fn intermediate_ca_and_every_algorithm_for_certificates() {
    let s = parse(
        "name: a/b\nsecrets:\n- {name: root, kind: x509-ca, algorithm: ed25519, valid_for: 30d}\n- {name: mid, kind: x509-ca, issuer: root, algorithm: rsa-2048}\n- {name: leaf, kind: x509, issuer: mid, algorithm: p384, san: [\"*.svc.local\", \"::1\"]}\n",
    );
    let secrets = materialize_secrets(&s, None, &NoImports, NOW).expect("materialize");
    let root_der = get(&secrets, "root").public.clone().expect("root");
    let mid_der = get(&secrets, "mid").public.clone().expect("mid");
    let leaf_v = get(&secrets, "leaf");
    let (root, mid, leaf) = (
        cert(&root_der),
        cert(&mid_der),
        cert(leaf_v.public.as_deref().expect("leaf")),
    );
    mid.verify_signature(Some(root.public_key()))
        .expect("mid signed by root");
    leaf.verify_signature(Some(mid.public_key()))
        .expect("leaf signed by mid");
    assert_eq!(leaf_v.chain, vec![mid_der.clone(), root_der.clone()]);
    assert_eq!(get(&secrets, "mid").chain, vec![root_der.clone()]);
    // Never valid beyond the issuer: root lives 30 days, so do mid and leaf.
    let root_end = root.validity().not_after.to_datetime();
    assert_eq!(root_end, NOW + Duration::days(30));
    assert_eq!(mid.validity().not_after.to_datetime(), root_end);
    assert_eq!(leaf.validity().not_after.to_datetime(), root_end);
}

#[test]
fn generated_secrets_carry_over_across_updates() {
    let v1 = parse(&full_example());
    let s1 = materialize(&v1);
    // An unrelated change, plus spelled-out defaults and changed export settings.
    let v2_yaml = edit(
        &edit(
            &edit(
                &full_example(),
                "- name: model_key\n  kind: binary",
                "- name: model_key\n  kind: binary\n  size: 32\n  export: [\"*\"]",
            ),
            "pwd: /app/",
            "pwd: /srv/",
        ),
        "  export_public: true\n- name: ca",
        "  export_public: false\n- name: ca",
    );
    let v2 = parse(&format!("predecessor: {}\n{v2_yaml}", v1.hash()));
    let s2 = materialize_next(&v2, (&v1, &s1), NOW + Duration::days(1));
    for name in [
        "api_key",
        "model_key",
        "fixed_token",
        "fixed_blob",
        "signing_key",
        "ca",
        "server_cert",
    ] {
        assert_eq!(raw(&s2, name), raw(&s1, name), "{name} kept");
    }
    for name in ["ca", "server_cert"] {
        assert_eq!(
            get(&s2, name).public,
            get(&s1, name).public,
            "{name} certificate kept"
        );
        assert_eq!(get(&s2, name).chain, get(&s1, name).chain);
    }
}

#[test]
fn changed_parameters_give_new_values() {
    let v1 = parse(&full_example());
    let s1 = materialize(&v1);
    let v2 = parse(
        &full_example()
            .replace(
                "- name: api_key\n  kind: ascii\n  size: 24",
                "- name: api_key\n  kind: binary\n  size: 24",
            )
            .replace(
                "- name: model_key\n  kind: binary",
                "- name: model_key\n  kind: binary\n  size: 33",
            )
            .replace("  algorithm: ed25519", "  algorithm: p256")
            .replace(
                "$$CLOISTER::api_key$$\", \"blob",
                "$$CLOISTER::api_key:hex$$\", \"blob",
            ),
    );
    let s2 = materialize_next(&v2, (&v1, &s1), NOW);
    assert_eq!(get(&s2, "api_key").kind, SecretKind::Binary);
    assert_ne!(raw(&s2, "api_key"), raw(&s1, "api_key"), "kind changed");
    assert_ne!(raw(&s2, "model_key"), raw(&s1, "model_key"), "size changed");
    assert_eq!(raw(&s2, "model_key").len(), 33);
    assert_ne!(
        raw(&s2, "signing_key"),
        raw(&s1, "signing_key"),
        "algorithm changed"
    );
    assert_eq!(raw(&s2, "fixed_token"), raw(&s1, "fixed_token"));
}

#[test]
fn removed_then_re_added_is_new() {
    let with = parse(&minimal());
    let s1 = materialize_secrets(&with, None, &NoImports, NOW).expect("v1");
    let without = parse("name: a/b\nsecrets:\n- {name: other, kind: ascii}\n");
    let s2 = materialize_secrets(&without, Some((&with, &s1)), &NoImports, NOW).expect("v2");
    assert!(s2.get("k").is_none(), "removed secrets are dropped");
    let s3 = materialize_secrets(&with, Some((&without, &s2)), &NoImports, NOW).expect("v3");
    assert_ne!(raw(&s3, "k"), raw(&s1, "k"));
    // And with the same session as predecessor it is kept.
    let s4 = materialize_secrets(&with, Some((&with, &s3)), &NoImports, NOW).expect("v4");
    assert_eq!(raw(&s4, "k"), raw(&s3, "k"));
}

#[test]
fn explicit_and_generated_do_not_mix() {
    let explicit =
        parse("name: a/b\nsecrets:\n- {name: k, kind: ascii, value: abcdefghijklmnopqrstuvwxyz012345}\n");
    let generated = parse("name: a/b\nsecrets:\n- {name: k, kind: ascii}\n");
    let s1 = materialize_secrets(&explicit, None, &NoImports, NOW).expect("v1");
    let s2 = materialize_secrets(&generated, Some((&explicit, &s1)), &NoImports, NOW).expect("v2");
    assert_ne!(
        raw(&s2, "k"),
        raw(&s1, "k"),
        "an explicit value is never kept as generated"
    );
    let s3 = materialize_secrets(&explicit, Some((&generated, &s2)), &NoImports, NOW).expect("v3");
    assert_eq!(raw(&s3, "k"), b"abcdefghijklmnopqrstuvwxyz012345");
}

#[test]
fn certificates_are_re_issued_for_the_same_key() {
    let v1 = parse(&full_example());
    let s1 = materialize(&v1);
    // Subject change of the leaf: new certificate, same key; CA untouched.
    let v2 = parse(&edit(
        &full_example(),
        "common_name: model-runner",
        "common_name: runner",
    ));
    let s2 = materialize_next(&v2, (&v1, &s1), NOW);
    assert_eq!(get(&s2, "ca").public, get(&s1, "ca").public);
    assert_ne!(get(&s2, "server_cert").public, get(&s1, "server_cert").public);
    assert_eq!(raw(&s2, "server_cert"), raw(&s1, "server_cert"), "key kept");
    assert_eq!(
        cn(&cert(get(&s2, "server_cert").public.as_deref().expect("cert"))),
        "runner"
    );

    // SAN change re-issues too.
    let v2b = parse(&edit(&full_example(), "10.0.0.1]", "10.0.0.2]"));
    let s2b = materialize_next(&v2b, (&v1, &s1), NOW);
    assert_ne!(get(&s2b, "server_cert").public, get(&s1, "server_cert").public);

    // CA change: the CA is re-issued (same key) and so is the leaf it signs.
    let v3 = parse(&edit(
        &full_example(),
        "common_name: Hospital CA",
        "common_name: Hospital Root",
    ));
    let s3 = materialize_next(&v3, (&v1, &s1), NOW);
    assert_ne!(get(&s3, "ca").public, get(&s1, "ca").public);
    assert_eq!(raw(&s3, "ca"), raw(&s1, "ca"));
    let leaf = cert(get(&s3, "server_cert").public.as_deref().expect("leaf"));
    let ca = cert(get(&s3, "ca").public.as_deref().expect("ca"));
    assert_eq!(leaf.issuer(), ca.subject());
    leaf.verify_signature(Some(ca.public_key()))
        .expect("re-issued leaf verifies");
    assert_eq!(
        get(&s3, "server_cert").chain,
        vec![get(&s3, "ca").public.clone().expect("ca")]
    );

    // Issuer change: from the CA to self-signed.
    let v4 = parse(&edit(&full_example(), "  issuer: ca\n", ""));
    let s4 = materialize_next(&v4, (&v1, &s1), NOW);
    let self_signed = cert(get(&s4, "server_cert").public.as_deref().expect("cert"));
    self_signed.verify_signature(None).expect("now self-signed");
    assert!(get(&s4, "server_cert").chain.is_empty());

    // Expiry: an update after the leaf expired re-issues it (the CA is still valid).
    let later = NOW + Duration::days(400);
    let s5 = materialize_next(&v1, (&v1, &s1), later);
    assert_eq!(get(&s5, "ca").public, get(&s1, "ca").public);
    assert_ne!(get(&s5, "server_cert").public, get(&s1, "server_cert").public);
    let renewed = cert(get(&s5, "server_cert").public.as_deref().expect("cert"));
    assert_eq!(
        renewed.validity().not_after.to_datetime(),
        later + Duration::days(365)
    );
    assert_eq!(raw(&s5, "server_cert"), raw(&s1, "server_cert"));

    // Kind change x509 -> x509-ca: a new key.
    let v6 = parse(&edit(
        &full_example(),
        "- name: server_cert\n  kind: x509",
        "- name: server_cert\n  kind: x509-ca",
    ));
    let s6 = materialize_next(&v6, (&v1, &s1), NOW);
    assert_ne!(raw(&s6, "server_cert"), raw(&s1, "server_cert"));
}

#[test]
fn imports_resolve_and_follow_the_exporter() {
    let (provider_session, provider_secrets) = provider();
    let exporters = Exporters::new(vec![(provider_session.clone(), provider_secrets.clone())]);
    let s = parse(&full_example());
    let secrets = materialize_secrets(&s, None, &exporters, NOW).expect("materialize");
    assert_eq!(raw(&secrets, "shared_key"), raw(&provider_secrets, "model_key"));
    assert_eq!(raw(&secrets, "shared_key").len(), 16);

    // Imports are resolved each time, never carried over from the importer's previous value.
    let (_, rotated) = provider();
    let exporters2 = Exporters::new(vec![(provider_session.clone(), rotated.clone())]);
    let again = materialize_secrets(&s, Some((&s, &secrets)), &exporters2, NOW).expect("again");
    assert_eq!(raw(&again, "shared_key"), raw(&rotated, "model_key"));

    // The right name under another owner (a squatter's session): refused.
    let squatted = Exporters::owned_by(
        vec![(provider_session.clone(), provider_secrets.clone())],
        other_owner(),
    );
    match materialize_secrets(&s, None, &squatted, NOW) {
        Err(SessionError::ImportRefused { reason, .. }) => {
            assert!(reason.contains(&other_owner().to_string()), "{reason}");
        }
        other => panic!("a squatter imported: {other:?}"),
    }

    // Not in the export list: refused.
    let other = parse(&edit(
        &full_example(),
        "name: hospital/inference",
        "name: hospital/other",
    ));
    match materialize_secrets(&other, None, &exporters, NOW) {
        Err(SessionError::ImportRefused {
            session,
            secret,
            reason,
        }) => {
            assert_eq!(session, "provider/models");
            assert_eq!(secret, "model_key");
            assert!(reason.contains("hospital/other"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // Declared kind must match.
    let wrong_kind = parse(&edit(
        &full_example(),
        "- name: shared_key\n  kind: binary",
        "- name: shared_key\n  kind: ascii",
    ));
    match materialize_secrets(&wrong_kind, None, &exporters, NOW) {
        Err(SessionError::Secret { name, reason }) => {
            assert_eq!(name, "shared_key");
            assert!(reason.contains("kind binary"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn imported_ca_issues_certificates() {
    let ca_owner = parse(
        "name: org/pki\nsecrets:\n- {name: root, kind: x509-ca, common_name: Org Root, export: [\"*\"]}\n",
    );
    let ca_secrets = materialize_secrets(&ca_owner, None, &NoImports, NOW).expect("ca");
    let app = parse(
        "name: org/app\nsecrets:\n- {name: org_ca, kind: x509-ca, import: {session: org/pki, secret: root}}\n- {name: tls, kind: x509, issuer: org_ca, san: [app.org]}\n",
    );
    let secrets = materialize_secrets(
        &app,
        None,
        &Exporters::new(vec![(ca_owner, ca_secrets.clone())]),
        NOW,
    )
    .expect("app");
    let root_der = get(&ca_secrets, "root").public.clone().expect("root");
    let leaf = cert(get(&secrets, "tls").public.as_deref().expect("leaf"));
    let root = cert(&root_der);
    assert_eq!(cn(&root), "Org Root");
    assert_eq!(leaf.issuer(), root.subject());
    leaf.verify_signature(Some(root.public_key()))
        .expect("signed by the imported CA");
    assert_eq!(get(&secrets, "tls").chain, vec![root_der]);
}

#[test]
fn check_export_enforces_the_export_list() {
    let s = parse(&full_example());
    let other = other_owner();
    fn importer<'a>(session: &'a str, owner: &'a ClientKey) -> Importer<'a> {
        Importer {
            session,
            owner,
            hash: HASH_A,
        }
    }
    check_export(&s, "server_cert", &importer("hospital/other", &other)).expect("listed");
    let refused = |secret: &str, session: &str, owner: &ClientKey| match check_export(
        &s,
        secret,
        &importer(session, owner),
    ) {
        Err(SessionError::ImportRefused { reason, .. }) => reason,
        result => panic!("{secret} to {session}: {result:?}"),
    };
    assert!(refused("server_cert", "hospital/else", &other).contains("not in its export list"));
    // The listed name, owned by another key: whoever created it first gets nothing.
    assert!(refused("server_cert", "hospital/other", &key(9)).contains("not in its export list"));
    assert!(refused("api_key", "hospital/other", &other).contains("not in its export list"));
    assert!(refused("missing", "hospital/other", &other).contains("no such secret"));
    assert!(refused("shared_key", "hospital/other", &other).contains("imported"));
    let star = parse("name: a/b\nsecrets:\n- {name: k, kind: ascii, export: [\"*\"]}\n");
    check_export(&star, "k", &importer("any/session", &key(9))).expect("* exports to all");
}

const HASH_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const HASH_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

#[test]
fn an_export_pinned_by_hash_admits_only_those_versions_of_the_importer() {
    let owner = other_owner();
    let pinned = |hashes: &str| {
        parse(&format!(
            "name: a/b\nsecrets:\n- name: k\n  kind: ascii\n  export: [{{session: c/d, owner: \"{owner}\", \
             hashes: [{hashes}]}}]\n"
        ))
    };
    // Written in upper case, kept in lower case, sorted and without duplicates.
    let s = pinned(&format!("{}, {HASH_A}, {HASH_A}", HASH_B.to_uppercase()));
    match &s.secrets[0].export[0] {
        ExportTarget::Session { hashes, .. } => assert_eq!(hashes, &[HASH_A, HASH_B]),
        other => panic!("{other:?}"),
    }
    let version = |hash| Importer {
        session: "c/d",
        owner: &owner,
        hash,
    };
    check_export(&s, "k", &version(HASH_A)).expect("pinned");
    check_export(&s, "k", &version(HASH_B)).expect("pinned");
    let other_version = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";
    match check_export(&s, "k", &version(other_version)) {
        Err(SessionError::ImportRefused { reason, .. }) => {
            assert!(reason.contains("pins other versions"), "{reason}")
        }
        other => panic!("an unpinned version imported: {other:?}"),
    }
    // The right version under another owner is refused all the same.
    let squatter = key(9);
    match check_export(
        &s,
        "k",
        &Importer {
            owner: &squatter,
            ..version(HASH_A)
        },
    ) {
        Err(SessionError::ImportRefused { reason, .. }) => {
            assert!(reason.contains("not in its export list"), "{reason}")
        }
        other => panic!("another owner imported: {other:?}"),
    }
    // Pins are part of the session's hash; an export without them keeps its old bytes.
    assert_ne!(pinned(HASH_A).hash(), pinned(HASH_B).hash());
    let unpinned = parse(&format!(
        "name: a/b\nsecrets:\n- name: k\n  kind: ascii\n  export: [{{session: c/d, owner: \"{owner}\"}}]\n"
    ));
    assert!(
        !String::from_utf8(unpinned.canonical_bytes())
            .unwrap()
            .contains("hashes")
    );
    for bad in ["abc", "zz", &"a".repeat(63)] {
        let text = format!(
            "name: a/b\nsecrets:\n- name: k\n  kind: ascii\n  export: [{{session: c/d, owner: \"{owner}\", \
             hashes: [\"{bad}\"]}}]\n"
        );
        match cloister_cas_session::parse_session(&text) {
            Err(e) => assert!(e.to_string().contains("export[0].hashes[0]"), "{e}"),
            Ok(_) => panic!("{bad:?} accepted as a hash"),
        }
    }
}

#[test]
fn materializing_and_refreshing_check_the_importing_versions_hash() {
    let owner = inference_owner();
    let importer = parse(
        "name: hospital/inference\nsecrets:\n- name: shared_key\n  kind: binary\n  \
         import: {session: provider/models, secret: model_key}\n",
    );
    let exporter = |hash: &str| {
        let s = parse(&format!(
            "name: provider/models\nsecrets:\n- name: model_key\n  kind: binary\n  \
             export: [{{session: hospital/inference, owner: \"{owner}\", hashes: [{hash}]}}]\n"
        ));
        let secrets = materialize_secrets(&s, None, &NoImports, NOW).unwrap();
        (s, secrets)
    };
    let mut secrets = materialize_secrets(
        &importer,
        None,
        &Exporters::new(vec![exporter(&importer.hash())]),
        NOW,
    )
    .expect("the pinned version imports");
    match materialize_secrets(&importer, None, &Exporters::new(vec![exporter(HASH_A)]), NOW) {
        Err(SessionError::ImportRefused { reason, .. }) => assert!(reason.contains("pins other versions")),
        other => panic!("an unpinned version imported: {other:?}"),
    }
    refresh_imports(
        &importer,
        &mut secrets,
        &Exporters::new(vec![exporter(&importer.hash())]),
    )
    .expect("refresh while pinned");
    match refresh_imports(&importer, &mut secrets, &Exporters::new(vec![exporter(HASH_A)])) {
        Err(SessionError::ImportRefused { reason, .. }) => assert!(reason.contains("pins other versions")),
        other => panic!("a re-pinned export still refreshed: {other:?}"),
    }
}

#[test]
fn refreshed_imports_follow_the_exporter_and_its_revocations() {
    let (provider_session, provider_secrets) = provider();
    let s = parse(&full_example());
    let mut secrets = materialize_secrets(
        &s,
        None,
        &Exporters::new(vec![(provider_session.clone(), provider_secrets.clone())]),
        NOW,
    )
    .expect("materialize");
    let api_key = raw(&secrets, "api_key");
    // The exporter rotated its key: the importer's stored copy is refreshed, nothing else.
    let (_, rotated) = provider();
    refresh_imports(
        &s,
        &mut secrets,
        &Exporters::new(vec![(provider_session.clone(), rotated.clone())]),
    )
    .expect("refresh");
    assert_eq!(raw(&secrets, "shared_key"), raw(&rotated, "model_key"));
    assert_eq!(raw(&secrets, "api_key"), api_key);
    // The exporter withdrew the export: refused.
    let mut revoked = provider_session.clone();
    revoked.secrets[0].export.clear();
    match refresh_imports(&s, &mut secrets, &Exporters::new(vec![(revoked, rotated)])) {
        Err(SessionError::ImportRefused { reason, .. }) => {
            assert!(reason.contains("not in its export list"), "{reason}")
        }
        other => panic!("a withdrawn export still refreshed: {other:?}"),
    }
}

#[test]
fn secrets_serialize_for_the_store() {
    let s = parse(&full_example());
    let secrets = materialize(&s);
    let json = serde_json::to_string(&secrets).expect("serialize");
    let back: Secrets = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(
        back.names().collect::<Vec<_>>(),
        secrets.names().collect::<Vec<_>>()
    );
    for name in secrets.names() {
        assert_eq!(raw(&back, name), raw(&secrets, name), "{name}");
        assert_eq!(get(&back, name).public, get(&secrets, name).public);
        assert_eq!(get(&back, name).chain, get(&secrets, name).chain);
    }
    assert!(!back.is_empty());
    assert!(serde_json::from_str::<Secrets>(r#"{"k":{"kind":"ascii","value":"!!"}}"#).is_err());
}

#[test]
fn materialize_validates_sessions_built_in_code() {
    let mut s = parse(&minimal());
    s.secrets[0].size = Some(u32::MAX);
    match materialize_secrets(&s, None, &NoImports, NOW) {
        Err(SessionError::Invalid { field, .. }) => assert_eq!(field, "secrets[0].size"),
        other => panic!("{other:?}"),
    }
}
