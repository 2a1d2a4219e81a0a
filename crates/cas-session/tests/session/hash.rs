//! Canonical form, hash and the predecessor rule.

use cloister_cas_session::{Session, SessionError};
use sha2::{Digest, Sha256};

use crate::common::*;

/// The same session as `minimal()`, written differently: flow style, other key order,
/// comments, command as a string, defaults spelled out, upper-case hex, quoted scalars,
/// unordered lists in another order.
fn minimal_rewritten() -> String {
    let sim = hex::encode_upper(sim_workload());
    format!(
        r#"# comment
secrets: [{{kind: ascii, name: k, size: 32}}]
version: '0.3'
services:
  - attestation: [{{measurement: "{sim}", tee: sim}}]
    name: svc
    command: run '$$CLOISTER::k$$'
    environment: {{}}
name: "a/b"
access_policy: {{update: [creator, CREATOR], read: [CREATOR]}}
security: {{attestation: {{tolerate: [simulation, simulation], mode: hardware, ignore_advisories: []}}}}
files: []
"#
    )
}

#[test]
fn formatting_does_not_change_the_hash() {
    let a = parse(&minimal());
    let b = parse(&minimal_rewritten());
    assert_eq!(a.canonical_bytes(), b.canonical_bytes());
    assert_eq!(a.hash(), b.hash());
    assert_eq!(a, b, "normalized sessions are equal");
}

#[test]
fn list_order_without_meaning_does_not_change_the_hash() {
    let (k1, k2) = (key(1), key(2));
    // The same key written three ways: prefixed, bare hex, upper-case hex.
    let bare = k1.to_string().trim_start_matches("ed25519:").to_owned();
    let one = format!(
        "name: a/b\nsecrets:\n- {{name: x, kind: ascii}}\n- {{name: y, kind: binary, export: [{{session: c/d, owner: \"{k2}\"}}, {{session: c/d, owner: \"{k1}\"}}, \"*\"]}}\nfiles:\n- {{path: /b}}\n- {{path: /a}}\n"
    );
    let two = format!(
        "name: a/b\nfiles:\n- {{path: /a}}\n- {{path: /b}}\nsecrets:\n- {{name: y, kind: binary, export: [\"*\", {{owner: \"{bare}\", session: c/d}}, {{session: c/d, owner: \"ED25519:{}\"}}, {{session: c/d, owner: \"{k2}\"}}]}}\n- {{name: x, kind: ascii}}\n",
        bare.to_uppercase()
    );
    assert_eq!(parse(&one).hash(), parse(&two).hash());
}

#[test]
fn canonical_bytes_are_the_documented_json() {
    let s = parse("name: a/b\nsecrets:\n- name: k\n  kind: ascii\n");
    let text = String::from_utf8(s.canonical_bytes()).expect("UTF-8");
    assert_eq!(
        text,
        concat!(
            r#"{"access_policy":{"read":["CREATOR"],"update":["CREATOR"]},"files":[],"name":"a/b","#,
            r#""secrets":[{"export":[],"export_public":false,"kind":"ascii","name":"k","san":[],"size":32}],"#,
            r#""security":{"attestation":{"ignore_advisories":[],"mode":"hardware","tolerate":[]}},"#,
            r#""services":[],"version":"0.3"}"#
        )
    );
    assert_eq!(s.hash(), hex::encode(Sha256::digest(text.as_bytes())));
    // An export list: "*" first, then {owner, session} objects with their keys sorted.
    let k = key(1);
    let exporting = parse(&format!(
        "name: a/b\nsecrets:\n- {{name: k, kind: ascii, export: [{{session: c/d, owner: \"{k}\"}}, \"*\"]}}\n"
    ));
    let text = String::from_utf8(exporting.canonical_bytes()).expect("UTF-8");
    assert!(
        text.contains(&format!(
            r#""export":["*",{{"owner":"{k}","session":"c/d"}}],"export_public":false"#
        )),
        "{text}"
    );
    assert_eq!(s.hash().len(), 64);
    assert!(
        s.hash()
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
}

#[test]
fn canonical_bytes_do_not_depend_on_prior_normalization() {
    // A session built in code, not normalized: canonical_bytes normalizes a copy.
    let mut s = parse(&full_example());
    let expected = s.hash();
    s.services.reverse();
    s.secrets.reverse();
    s.files.reverse();
    s.security.attestation.ignore_advisories.reverse();
    // Remove defaults that normalization made explicit.
    for spec in &mut s.secrets {
        match spec.name.as_str() {
            "model_key" | "fixed_token" | "fixed_blob" => spec.size = None,
            "server_cert" => spec.algorithm = None,
            _ => {}
        }
    }
    s.files
        .iter_mut()
        .for_each(|f| f.permission = f.permission.trim_start_matches('0').to_string());
    assert_eq!(s.hash(), expected);
}

#[test]
fn every_semantic_change_changes_the_hash() {
    let base = full_example();
    let h = parse(&base).hash();
    let changes = [
        ("name: hospital/inference", "name: hospital/inference2"),
        ("tolerate: [simulation, outdated-tcb]", "tolerate: [simulation]"),
        ("INTEL-SA-00615", "INTEL-SA-00616"),
        ("read: [CREATOR, ", "read: [ANY, "),
        ("python3 /app/run.py", "python3 /app/run2.py"),
        ("python3 /app/run.py --key", "python3 /app/run.py\\ --key"),
        (
            "FIXED: \"$$CLOISTER::fixed_token$$\"",
            "FIXED: \"$$CLOISTER::fixed_token:hex$$\"",
        ),
        ("pwd: /app/", "pwd: /srv/"),
        ("isvsvn_min: 2", "isvsvn_min: 3"),
        ("isvprodid: 1", "isvprodid: 2"),
        (&format!("rtmr3: {H96}"), &format!("rtmr3: {}", "3".repeat(96))),
        ("snp: 8, microcode", "snp: 9, microcode"),
        ("min_tcb: {bootloader: 3,", "min_tcb: {fmc: 1, bootloader: 3,"),
        ("allow_smt: false", "allow_smt: true"),
        (
            "allow_smt: false",
            "allow_smt: false\n    allow_migration_agent: true",
        ),
        ("0x0000000000030000", "0x0000000000070000"),
        ("vmpl: 0", "vmpl: 1"),
        (
            &format!("host_data: {H64}"),
            &format!("host_data: {}", "2".repeat(64)),
        ),
        ("  size: 24", "  size: 25"),
        ("value: explicit-token", "value: explicit-tokem"),
        ("algorithm: ed25519", "algorithm: p256"),
        (
            "  export_public: true\n- name: ca",
            "  export_public: false\n- name: ca",
        ),
        ("common_name: model-runner", "common_name: model-runner2"),
        (
            "san: [model-runner.local, 10.0.0.1]",
            "san: [10.0.0.1, model-runner.local]",
        ),
        ("valid_for: 365d", "valid_for: 366d"),
        ("{session: hospital/other,", "{session: hospital/else,"),
        (&other_owner().to_string(), &inference_owner().to_string()),
        ("secret: model_key}", "secret: model_key2}"),
        ("permission: \"0640\"", "permission: \"0644\""),
        ("services: [model-runner]", "services: [auditor]"),
        ("\"blob\"", "\"blob2\""),
    ];
    for (from, to) in changes {
        let changed = parse(&edit(&base, from, to)).hash();
        assert_ne!(changed, h, "{from} -> {to} did not change the hash");
    }
    // Order of alternatives is meaningful (match_evidence reports the index).
    let mut s = parse(&base);
    s.services[1].attestation.swap(0, 1);
    assert_ne!(s.hash(), h);
    // The predecessor is covered, so versions form a chain.
    let mut s = parse(&base);
    s.predecessor = Some(H64.to_string());
    assert_ne!(s.hash(), h);
}

#[test]
fn predecessor_rules() {
    let v1 = parse(&minimal());
    // Create: predecessor must be absent.
    v1.check_predecessor(None).expect("create without predecessor");
    let with_pred = parse(&format!("predecessor: {}\n{}", v1.hash(), minimal()));
    match with_pred.check_predecessor(None) {
        Err(SessionError::Invalid { field, .. }) => assert_eq!(field, "predecessor"),
        other => panic!("{other:?}"),
    }
    // Update without predecessor.
    match v1.check_predecessor(Some(&v1)) {
        Err(SessionError::Invalid { field, reason }) => {
            assert_eq!(field, "predecessor");
            assert!(reason.contains(&v1.hash()), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // Right predecessor (also upper-case).
    with_pred.check_predecessor(Some(&v1)).expect("right predecessor");
    let upper = parse(&format!(
        "predecessor: {}\n{}",
        v1.hash().to_uppercase(),
        minimal()
    ));
    upper
        .check_predecessor(Some(&v1))
        .expect("hex is case-insensitive");
    assert_eq!(
        upper.predecessor.as_deref(),
        Some(v1.hash().as_str()),
        "normalized to lower case"
    );
    // Stale: v2 was written against v1, but v1 was already replaced by v1b.
    let v1b = parse(&edit(&minimal(), "name: a/b", "name: a/b\nfiles: [{path: /x}]"));
    match with_pred.check_predecessor(Some(&v1b)) {
        Err(e @ SessionError::StalePredecessor { .. }) => {
            assert!(e.to_string().starts_with("stale predecessor"), "{e}");
            if let SessionError::StalePredecessor { given, current } = e {
                assert_eq!(given, v1.hash());
                assert_eq!(current, v1b.hash());
            }
        }
        other => panic!("{other:?}"),
    }
    // A malformed predecessor is a validation error.
    let bad = format!("predecessor: abc\n{}", minimal());
    assert!(matches!(
        cloister_cas_session::parse_session(&bad),
        Err(SessionError::Invalid { field, .. }) if field == "predecessor"
    ));
}

#[test]
fn stored_json_validates() {
    let s = parse(&full_example());
    let json = serde_json::to_vec(&s).expect("json");
    let back: Session = serde_json::from_slice(&json).expect("parses");
    back.validate().expect("valid");
    let mut broken = back.clone();
    broken.services[0].name = "Bad Name".into();
    assert!(
        matches!(broken.validate(), Err(SessionError::Invalid { field, .. }) if field == "services[0].name")
    );
}
