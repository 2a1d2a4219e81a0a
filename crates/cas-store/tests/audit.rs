//! The audit log: signed hash chain, offline verification, tamper detection, sealed-time events.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cloister_cas_store::{
    AuditEntry, AuditError, AuditFault, GENESIS_PREV, SigningKey, Vault, export_jsonl, parse_jsonl,
    verify_audit,
};
use common::{key_file_vault, shamir_vault};
use ed25519_dalek::Signer;
use serde_json::json;

/// A vault with a log of several kinds of entries, and the log.
fn sample() -> (tempfile::TempDir, Vault, Vec<AuditEntry>) {
    let dir = tempfile::tempdir().unwrap();
    let vault = key_file_vault(dir.path());
    vault
        .audit_append(
            "session-create",
            "owner:ab12",
            "hospital/inference",
            json!({"hash": "c0ffee"}),
        )
        .unwrap();
    vault
        .audit_append(
            "attest-ok",
            "workload",
            "hospital/inference",
            json!({"tee": "sgx", "mrenclave": "aa".repeat(32)}),
        )
        .unwrap();
    vault
        .audit_append(
            "secret-release",
            "workload",
            "hospital/inference",
            json!({"secrets": ["db"]}),
        )
        .unwrap();
    vault
        .audit_append(
            "attest-fail",
            "workload",
            "hospital/inference",
            json!({"reason": "TCB OutOfDate"}),
        )
        .unwrap();
    vault
        .audit_append(
            "session-update",
            "owner:ab12",
            "hospital/inference",
            json!({"approvals": 2}),
        )
        .unwrap();
    let entries = vault.audit_entries(1, 1000).unwrap();
    (dir, vault, entries)
}

/// A change an attacker makes to one entry.
type Edit = fn(&mut AuditEntry);

fn fault(r: Result<impl std::fmt::Debug, AuditError>) -> (usize, AuditFault) {
    match r {
        Err(AuditError::Invalid { index, fault, .. }) => (index, fault),
        other => panic!("expected an invalid entry, got {other:?}"),
    }
}

#[test]
fn a_fresh_log_verifies() {
    let (_dir, vault, entries) = sample();
    let kinds: Vec<&str> = entries.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "init",
            "session-create",
            "attest-ok",
            "secret-release",
            "attest-fail",
            "session-update"
        ]
    );
    assert_eq!(entries[0].prev, GENESIS_PREV);
    assert_eq!(entries[0].seq, 1);
    for w in entries.windows(2) {
        assert_eq!(w[1].prev, w[0].hash);
        assert_eq!(w[1].seq, w[0].seq + 1);
    }
    let public = vault.identity_public().unwrap();
    let report = verify_audit(&entries, &public).unwrap();
    assert_eq!(report.entries, 6);
    assert_eq!((report.first_seq, report.last_seq), (1, 6));
    assert_eq!(report.head_hash, entries[5].hash);
    // Pagination.
    let page = vault.audit_entries(3, 2).unwrap();
    assert_eq!(page, entries[2..4]);
    assert!(vault.audit_entries(100, 10).unwrap().is_empty());
}

#[test]
fn jsonl_round_trip_verifies_offline() {
    let (_dir, vault, entries) = sample();
    let text = export_jsonl(&entries).unwrap();
    assert_eq!(text.lines().count(), entries.len());
    let back = parse_jsonl(&format!("\n{text}\n\n")).unwrap();
    assert_eq!(back, entries);
    verify_audit(&back, &vault.identity_public().unwrap()).unwrap();

    // Editing the exported text is detected at the edited line.
    let edited = text.replacen("TCB OutOfDate", "TCB UpToDate", 1);
    assert_ne!(edited, text);
    let parsed = parse_jsonl(&edited).unwrap();
    assert_eq!(
        fault(verify_audit(&parsed, &vault.identity_public().unwrap())),
        (4, AuditFault::Hash)
    );

    // Unknown fields and broken lines are refused with the line number.
    let extra = text.replacen("\"seq\":2,", "\"seq\":2,\"note\":\"x\",", 1);
    assert!(matches!(
        parse_jsonl(&extra),
        Err(AuditError::Parse { line: 2, .. })
    ));
    let broken = format!("{text}{{not json\n");
    assert!(matches!(
        parse_jsonl(&broken),
        Err(AuditError::Parse { line: 7, .. })
    ));
}

#[test]
fn each_tampering_is_caught_at_the_right_entry() {
    let (_dir, vault, entries) = sample();
    let public = vault.identity_public().unwrap();

    // An edited field, for each content field.
    let edits: [(&str, Edit); 5] = [
        ("subject", |e| e.subject = "hospital/other".into()),
        ("actor", |e| e.actor = "someone-else".into()),
        ("kind", |e| e.kind = "attest-ok".into()),
        ("detail", |e| e.detail = json!({"secrets": []})),
        ("time", |e| e.time += time::Duration::seconds(1)),
    ];
    for (name, edit) in edits {
        let mut log = entries.clone();
        edit(&mut log[3]);
        assert_eq!(
            fault(verify_audit(&log, &public)),
            (3, AuditFault::Hash),
            "{name}"
        );
    }
    // An edited hash or prev breaks the chain.
    let mut log = entries.clone();
    log[2].hash = log[1].hash.clone();
    assert_eq!(fault(verify_audit(&log, &public)), (2, AuditFault::Hash));
    let mut log = entries.clone();
    log[2].prev = GENESIS_PREV.into();
    assert_eq!(fault(verify_audit(&log, &public)), (2, AuditFault::Chain));
    // An edited seq.
    let mut log = entries.clone();
    log[4].seq = 9;
    assert_eq!(
        fault(verify_audit(&log, &public)),
        (4, AuditFault::Sequence { expected: 5 })
    );

    // A removed middle entry.
    let mut log = entries.clone();
    log.remove(2);
    assert_eq!(
        fault(verify_audit(&log, &public)),
        (2, AuditFault::Sequence { expected: 3 })
    );
    // A removed first entry.
    let log = entries[1..].to_vec();
    assert_eq!(
        fault(verify_audit(&log, &public)),
        (0, AuditFault::Sequence { expected: 1 })
    );
    // Two entries swapped.
    let mut log = entries.clone();
    log.swap(2, 4);
    assert_eq!(
        fault(verify_audit(&log, &public)),
        (2, AuditFault::Sequence { expected: 3 })
    );
    // Removed and renumbered (seq and prev patched): the hash gives it away.
    let mut log = entries.clone();
    log.remove(2);
    log[2].seq = 3;
    log[2].prev = log[1].hash.clone();
    assert_eq!(fault(verify_audit(&log, &public)), (2, AuditFault::Hash));
}

#[test]
fn forged_signatures_and_wrong_keys_are_caught() {
    let (_dir, vault, entries) = sample();
    let public = vault.identity_public().unwrap();
    let attacker = SigningKey::from_bytes(&[42; 32]);

    // An edited entry with a recomputed hash, signed by another key.
    let mut log = entries.clone();
    log[3].subject = "hospital/other".into();
    let hash = log[3].compute_hash().unwrap();
    log[3].hash = hex::encode(hash);
    log[3].signature = hex::encode(attacker.sign(&hash).to_bytes());
    assert_eq!(fault(verify_audit(&log, &public)), (3, AuditFault::Signature));

    // A whole log rebuilt and re-signed by another key verifies under that key only.
    let mut forged = entries.clone();
    let mut prev = GENESIS_PREV.to_string();
    for e in &mut forged {
        e.prev = prev.clone();
        let h = e.compute_hash().unwrap();
        e.hash = hex::encode(h);
        e.signature = hex::encode(attacker.sign(&h).to_bytes());
        prev = e.hash.clone();
    }
    verify_audit(&forged, &attacker.verifying_key().to_bytes()).unwrap();
    assert_eq!(fault(verify_audit(&forged, &public)), (0, AuditFault::Signature));

    // The genuine log against the wrong public key.
    assert_eq!(
        fault(verify_audit(&entries, &attacker.verifying_key().to_bytes())),
        (0, AuditFault::Signature)
    );

    // A garbage signature.
    let mut log = entries.clone();
    log[1].signature = "zz".into();
    assert!(matches!(
        fault(verify_audit(&log, &public)),
        (1, AuditFault::Malformed(_))
    ));
}

#[test]
fn events_while_sealed_are_appended_after_unseal() {
    let dir = tempfile::tempdir().unwrap();
    let (vault, shares) = shamir_vault(dir.path(), 3, 2);
    let public = vault.identity_public().unwrap();
    drop(vault);
    let other_dir = tempfile::tempdir().unwrap();
    let (_other, foreign) = shamir_vault(other_dir.path(), 3, 2);

    let vault = Vault::open(dir.path(), None).unwrap();
    let before = vault.audit_entries(1, 1000).unwrap();
    assert_eq!(before.len(), 1, "only init so far");
    // Audit entries are public: readable while sealed, but nothing can be signed.
    assert!(vault.audit_append("x", "a", "s", json!({})).is_err());
    let noted = vault
        .audit_note(
            "unseal-attempt",
            "10.0.0.7",
            "cas",
            json!({"reason": "bad token"}),
        )
        .unwrap();
    assert!(noted.is_none());
    std::thread::sleep(std::time::Duration::from_millis(5));
    assert!(vault.unseal(&foreign[0]).is_err());
    vault.unseal(&shares[0]).unwrap();
    assert_eq!(
        vault.audit_entries(1, 1000).unwrap().len(),
        1,
        "nothing appended while sealed"
    );
    vault.unseal(&shares[2]).unwrap();

    let after = vault.audit_entries(1, 1000).unwrap();
    let kinds: Vec<&str> = after.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "init",
            "unseal-attempt",
            "unseal-reject",
            "unseal-share",
            "unseal-share",
            "unseal"
        ]
    );
    assert_eq!(after[1].actor, "10.0.0.7");
    // Queued events keep the time they happened, before the unseal entry's time.
    assert!(after[1].time < after[2].time);
    assert!(after[2].time <= after[5].time);
    assert_eq!(after[3].detail["share"], 1);
    assert_eq!(after[4].detail["share"], 3);
    // No share value made it into the log.
    let text = export_jsonl(&after).unwrap();
    for s in &shares {
        let t = s.to_string();
        assert!(!text.contains(&t[t.len() - 73..t.len() - 9]));
    }
    verify_audit(&after, &public).unwrap();

    // Unsealed: audit_note appends at once; seal is audited.
    assert!(
        vault
            .audit_note("attest-ok", "w", "s", json!({}))
            .unwrap()
            .is_some()
    );
    vault.seal();
    let last = vault.audit_entries(1, 1000).unwrap();
    assert_eq!(last.last().unwrap().kind, "seal");
    verify_audit(&last, &public).unwrap();
}

#[test]
fn the_log_continues_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let vault = key_file_vault(dir.path());
    vault.audit_append("a", "x", "y", json!(null)).unwrap();
    let public = vault.identity_public().unwrap();
    drop(vault);
    let vault = Vault::open(dir.path(), None).unwrap();
    let e = vault.audit_append("b", "x", "y", json!([1, 2])).unwrap();
    let all = vault.audit_entries(0, 1000).unwrap();
    let kinds: Vec<&str> = all.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["init", "a", "unseal", "b"]);
    assert_eq!(all.last(), Some(&e));
    verify_audit(&all, &public).unwrap();
    assert!(
        vault.audit_append("", "x", "y", json!({})).is_err(),
        "empty kind refused"
    );
}
