//! Group commit of audit records: concurrent appends all land, each caller's records together
//! and in order, in a chain that verifies; an append to a sealed vault fails and leaves nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use cloister_cas_store::{AuditRecord, AuditWriteError, AuditWriter, StoreError, verify_audit};
use common::{key_file_vault, shamir_vault};
use serde_json::json;

fn record(kind: &str, caller: usize, n: usize) -> AuditRecord {
    AuditRecord {
        kind: kind.into(),
        actor: format!("caller-{caller}"),
        subject: "s#svc".into(),
        detail: json!({"n": n}),
    }
}

#[test]
fn concurrent_appends_are_all_committed_each_callers_records_together() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Arc::new(key_file_vault(dir.path()));
    let writer = Arc::new(AuditWriter::start(vault.clone()));
    let before = vault.audit_entries(1, usize::MAX).unwrap().len();

    let callers: Vec<_> = (0..8)
        .map(|caller| {
            let writer = writer.clone();
            std::thread::spawn(move || {
                for n in 0..10 {
                    writer
                        .append(vec![
                            record("attest-ok", caller, n),
                            record("secret-release", caller, n),
                        ])
                        .unwrap();
                }
            })
        })
        .collect();
    for caller in callers {
        caller.join().unwrap();
    }

    let entries = vault.audit_entries(1, usize::MAX).unwrap();
    verify_audit(&entries, &vault.identity_public().unwrap()).unwrap();
    let appended = &entries[before..];
    assert_eq!(appended.len(), 8 * 10 * 2);
    for pair in appended.chunks(2) {
        assert_eq!(pair[0].kind, "attest-ok");
        assert_eq!(pair[1].kind, "secret-release");
        assert_eq!(
            pair[0].actor, pair[1].actor,
            "one append's records are next to each other"
        );
        assert_eq!(pair[0].detail, pair[1].detail);
    }
}

#[test]
fn an_append_to_a_sealed_vault_fails_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (vault, _shares) = shamir_vault(dir.path(), 3, 2);
    let vault = Arc::new(vault);
    let writer = AuditWriter::start(vault.clone());
    writer.append(vec![record("attest-ok", 0, 0)]).unwrap();
    vault.seal();
    let before = vault.audit_entries(1, usize::MAX).unwrap().len();

    let refused = writer.append(vec![record("attest-ok", 0, 1), record("secret-release", 0, 1)]);
    match refused {
        Err(AuditWriteError::Store(e)) => assert!(matches!(*e, StoreError::Sealed), "{e}"),
        other => panic!("expected a sealed vault's refusal, got {other:?}"),
    }
    assert_eq!(vault.audit_entries(1, usize::MAX).unwrap().len(), before);
}

#[test]
fn an_empty_kind_rolls_back_the_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Arc::new(key_file_vault(dir.path()));
    let writer = AuditWriter::start(vault.clone());
    let before = vault.audit_entries(1, usize::MAX).unwrap().len();

    let refused = writer.append(vec![record("attest-ok", 0, 0), record("", 0, 0)]);
    assert!(
        matches!(&refused, Err(AuditWriteError::Store(e)) if matches!(**e, StoreError::InvalidArgument(_))),
        "{refused:?}"
    );
    assert_eq!(vault.audit_entries(1, usize::MAX).unwrap().len(), before);
}

/// The writer signs entries ahead of its transactions, chained on the entries it signed
/// before; other writers of the log (session updates, secret reads) append in their own
/// transactions in between. Every entry of both must land, in one chain that verifies, each
/// append's records still next to each other.
#[test]
fn entries_signed_ahead_never_break_the_chain_when_others_append_in_between() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Arc::new(key_file_vault(dir.path()));
    let writer = Arc::new(AuditWriter::start(vault.clone()));
    let before = vault.audit_entries(1, usize::MAX).unwrap().len();

    let mut threads: Vec<_> = (0..4)
        .map(|caller| {
            let writer = writer.clone();
            std::thread::spawn(move || {
                for n in 0..50 {
                    writer
                        .append(vec![
                            record("attest-ok", caller, n),
                            record("secret-release", caller, n),
                        ])
                        .unwrap();
                }
            })
        })
        .collect();
    threads.extend((0..2).map(|other| {
        let vault = vault.clone();
        std::thread::spawn(move || {
            for n in 0..50 {
                vault
                    .audit_append("session-update", &format!("other-{other}"), "s", json!({"n": n}))
                    .unwrap();
            }
        })
    }));
    for thread in threads {
        thread.join().unwrap();
    }

    let entries = vault.audit_entries(1, usize::MAX).unwrap();
    verify_audit(&entries, &vault.identity_public().unwrap()).unwrap();
    let appended = &entries[before..];
    assert_eq!(
        appended.len(),
        4 * 50 * 2 + 2 * 50,
        "no entry lost or overwritten"
    );
    let mut rest = appended.iter();
    while let Some(entry) = rest.next() {
        if entry.kind == "attest-ok" {
            let pair = rest.next().unwrap();
            assert_eq!(pair.kind, "secret-release");
            assert_eq!((&entry.actor, &entry.detail), (&pair.actor, &pair.detail));
        } else {
            assert_eq!(entry.kind, "session-update", "{entry:?}");
        }
    }
}
