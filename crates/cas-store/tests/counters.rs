//! Counters that never go back: the generation, the digest and the anchor outside the store,
//! checked at unseal against restored copies of the store, spliced counters, missing, damaged
//! and foreign anchors, and a crash between a commit and its anchor write; counted appends of
//! the group-commit writer at their limit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::{Arc, Barrier};

use cloister_cas_store::{
    ANCHOR_FILE, AuditRecord, AuditWriteError, AuditWriter, CounterStep, DB_FILE, StoreError, Vault,
    VaultOptions, verify_audit,
};
use common::{key_file_vault, shamir_vault};
use serde_json::json;

fn copy_store(dir: &Path, to: &Path) {
    std::fs::copy(dir.join(DB_FILE), to).unwrap();
}

fn put_back_store(from: &Path, dir: &Path) {
    std::fs::copy(from, dir.join(DB_FILE)).unwrap();
}

fn assert_rollback<T>(result: Result<T, StoreError>, reason: &str) {
    match result {
        Err(StoreError::Rollback(message)) => {
            assert!(message.contains(reason), "expected {reason:?} in {message:?}")
        }
        Err(other) => panic!("expected a rollback refusal, got {other}"),
        Ok(_) => panic!("expected a rollback refusal, the vault opened"),
    }
}

fn accepting() -> VaultOptions {
    VaultOptions {
        counter_anchor: None,
        accept_rollback: true,
    }
}

#[test]
fn an_older_copy_of_the_store_is_refused_at_unseal_and_accepted_only_when_told() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cas");
    let vault = key_file_vault(&dir);
    for _ in 0..3 {
        vault.counter_increment("run:a#svc").unwrap();
    }
    let old = tmp.path().join("old.redb");
    drop(vault);
    copy_store(&dir, &old);
    let vault = Vault::open(&dir, None).unwrap();
    assert_eq!(vault.counter_increment("run:a#svc").unwrap(), 4);
    assert_eq!(vault.counter_increment("counter:a#x").unwrap(), 1);
    drop(vault);

    put_back_store(&old, &dir);
    assert_rollback(
        Vault::open(&dir, None),
        "the store is at counter generation 3 but its anchor",
    );
    // Still refused: refusing changed nothing.
    assert_rollback(Vault::open(&dir, None), "generation 3");

    let vault = Vault::open_with(&dir, None, accepting()).unwrap();
    assert_eq!(vault.counter_get("run:a#svc").unwrap(), 3, "the restored value");
    let entries = vault.audit_entries(0, usize::MAX).unwrap();
    let accepted = entries
        .iter()
        .find(|e| e.kind == "counter-rollback-accepted")
        .expect("the accepted rollback is audited");
    assert_eq!(accepted.detail["store_generation"], 3);
    assert_eq!(accepted.detail["anchor_generation"], 5);
    assert_eq!(accepted.detail["new_generation"], 6);
    // Ordered again from above the anchor: a normal open works, and the next increment
    // carries on from the restored value.
    assert_eq!(vault.counter_increment("run:a#svc").unwrap(), 4);
    drop(vault);
    let vault = Vault::open(&dir, None).unwrap();
    assert_eq!(vault.counter_get("run:a#svc").unwrap(), 4);
    drop(vault);
    // The copy is older than the new anchor too.
    put_back_store(&old, &dir);
    assert_rollback(Vault::open(&dir, None), "an older copy of the store was put back");
}

/// A refused unseal cannot be written to the sealed store, and a CAS that unseals at start
/// exits: the refusal is journaled beside the anchor, sealed under the data key, and the next
/// unseal moves it into the audit log. Lines that do not authenticate are counted, not copied.
#[test]
fn refused_unseals_are_journaled_and_audited_at_the_next_unseal() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cas");
    let vault = key_file_vault(&dir);
    vault.counter_increment("c").unwrap();
    drop(vault);
    let old = tmp.path().join("old.redb");
    copy_store(&dir, &old);
    let vault = Vault::open(&dir, None).unwrap();
    vault.counter_increment("c").unwrap();
    drop(vault);

    put_back_store(&old, &dir);
    for _ in 0..2 {
        assert_rollback(Vault::open(&dir, None), "an older copy of the store was put back");
    }
    let journal = dir.join(format!("{ANCHOR_FILE}.refusals"));
    let lines = std::fs::read_to_string(&journal).unwrap();
    assert_eq!(lines.lines().count(), 2);
    assert!(!lines.contains("older copy"), "the journal is sealed");
    // The host adds a line of its own: it does not authenticate.
    let mut forged = lines.lines().next().unwrap().to_owned();
    forged.replace_range(40..42, if &forged[40..42] == "00" { "11" } else { "00" });
    std::fs::write(&journal, format!("{lines}{forged}\nnot hex\n")).unwrap();

    let vault = Vault::open_with(&dir, None, accepting()).unwrap();
    let entries = vault.audit_entries(0, usize::MAX).unwrap();
    let refused: Vec<_> = entries.iter().filter(|e| e.kind == "unseal-refused").collect();
    assert_eq!(refused.len(), 2);
    for entry in &refused {
        assert_eq!(entry.detail["journaled"], true);
        assert!(
            entry.detail["reason"]
                .as_str()
                .unwrap()
                .contains("an older copy of the store was put back")
        );
        assert!(!entry.detail["at"].as_str().unwrap().is_empty());
    }
    let unauthentic = entries
        .iter()
        .find(|e| e.kind == "unseal-refusal-journal-unauthentic")
        .expect("the forged lines are counted");
    assert_eq!(unauthentic.detail["lines"], 2);
    // Audited once: the journal is empty now, and the next unseal adds nothing.
    assert_eq!(std::fs::read(&journal).unwrap().len(), 0);
    drop(vault);
    let vault = Vault::open(&dir, None).unwrap();
    let again = vault
        .audit_entries(0, usize::MAX)
        .unwrap()
        .iter()
        .filter(|e| e.kind == "unseal-refused")
        .count();
    assert_eq!(again, 2);
}

#[test]
fn a_shamir_vault_stays_sealed_on_a_rollback_until_it_is_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cas");
    let (vault, shares) = shamir_vault(&dir, 3, 2);
    vault.counter_increment("c").unwrap();
    drop(vault);
    let old = tmp.path().join("old.redb");
    copy_store(&dir, &old);
    let vault = Vault::open(&dir, None).unwrap();
    vault.unseal(&shares[0]).unwrap();
    vault.unseal(&shares[1]).unwrap();
    vault.counter_increment("c").unwrap();
    drop(vault);

    put_back_store(&old, &dir);
    let vault = Vault::open(&dir, None).unwrap();
    vault.unseal(&shares[0]).unwrap();
    assert_rollback(
        vault.unseal(&shares[1]),
        "an older copy of the store was put back",
    );
    assert!(vault.status().sealed);
    assert!(matches!(vault.counter_get("c"), Err(StoreError::Sealed)));
    drop(vault);

    let vault = Vault::open_with(&dir, None, accepting()).unwrap();
    vault.unseal(&shares[2]).unwrap();
    vault.unseal(&shares[0]).unwrap();
    assert!(!vault.status().sealed);
    let kinds: Vec<String> = vault
        .audit_entries(0, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(
        kinds.contains(&"counter-rollback-accepted".to_owned()),
        "{kinds:?}"
    );
}

#[test]
fn a_crash_between_the_commit_and_the_anchor_write_still_unseals() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cas");
    let vault = key_file_vault(&dir);
    vault.counter_increment("c").unwrap();
    let anchor = dir.join(ANCHOR_FILE);
    let before = std::fs::read(&anchor).unwrap();
    vault.counter_increment("c").unwrap();
    drop(vault);
    // The commit reached the store, the anchor write did not: the anchor is one behind.
    std::fs::write(&anchor, &before).unwrap();
    let vault = Vault::open(&dir, None).unwrap();
    assert_eq!(vault.counter_get("c").unwrap(), 2);
    drop(vault);
    // The unseal brought the anchor up to the store: the copy from before is now refused.
    let behind = tmp.path().join("behind.redb");
    copy_store(&dir, &behind);
    let vault = Vault::open(&dir, None).unwrap();
    vault.counter_increment("c").unwrap();
    drop(vault);
    put_back_store(&behind, &dir);
    assert_rollback(Vault::open(&dir, None), "generation 2 but its anchor");
}

#[test]
fn a_torn_anchor_write_leaves_the_previous_slot() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cas");
    let vault = key_file_vault(&dir);
    vault.counter_increment("c").unwrap();
    vault.counter_increment("c").unwrap();
    drop(vault);
    // Generation 2 is in slot 0: destroy it, as a torn write would.
    let anchor = dir.join(ANCHOR_FILE);
    let mut bytes = std::fs::read(&anchor).unwrap();
    bytes[20] ^= 0xff;
    std::fs::write(&anchor, &bytes).unwrap();
    let vault = Vault::open(&dir, None).unwrap();
    assert_eq!(vault.counter_get("c").unwrap(), 2);
}

#[test]
fn a_missing_damaged_or_foreign_anchor_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cas");
    let vault = key_file_vault(&dir);
    vault.counter_increment("c").unwrap();
    drop(vault);
    let anchor = dir.join(ANCHOR_FILE);
    let good = std::fs::read(&anchor).unwrap();

    std::fs::remove_file(&anchor).unwrap();
    assert_rollback(Vault::open(&dir, None), "is missing");

    std::fs::write(&anchor, vec![0x41; 8192]).unwrap();
    assert_rollback(Vault::open(&dir, None), "no slot is authentic");

    let other = tmp.path().join("other");
    let other_vault = key_file_vault(&other);
    for _ in 0..5 {
        other_vault.counter_increment("c").unwrap();
    }
    drop(other_vault);
    std::fs::copy(other.join(ANCHOR_FILE), &anchor).unwrap();
    assert_rollback(Vault::open(&dir, None), "no slot is authentic");

    std::fs::write(&anchor, &good).unwrap();
    Vault::open(&dir, None).unwrap();
}

#[test]
fn an_anchor_elsewhere_is_where_the_options_say() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cas");
    let anchor = tmp.path().join("elsewhere.anchor");
    let options = VaultOptions {
        counter_anchor: Some(anchor.clone()),
        accept_rollback: false,
    };
    let (vault, _) = Vault::init_with(
        &dir,
        cloister_cas_store::SealingConfig::KeyFile("master.key".into()),
        options.clone(),
    )
    .unwrap();
    assert_eq!(vault.counter_anchor(), anchor);
    vault.counter_increment("c").unwrap();
    drop(vault);
    assert!(!dir.join(ANCHOR_FILE).exists());
    // Opened without the path, the anchor is not found.
    assert_rollback(Vault::open(&dir, None), "is missing");
    Vault::open_with(&dir, None, options).unwrap();
    assert_eq!(
        cloister_cas_store::anchor_beside(Path::new("/var/lib/cas")),
        Path::new("/var/lib/cas.counter-anchor")
    );
}

/// A counter's ciphertext copied back from an older copy of the store into the current file
/// (its AAD binds it to its name, not its version) breaks the digest.
#[test]
fn a_counter_copied_back_from_an_older_copy_is_found_out() {
    const COUNTERS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("counters");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cas");
    let vault = key_file_vault(&dir);
    vault.counter_increment("victim").unwrap();
    drop(vault);
    let old = tmp.path().join("old.redb");
    copy_store(&dir, &old);
    let vault = Vault::open(&dir, None).unwrap();
    for _ in 0..4 {
        vault.counter_increment("victim").unwrap();
    }
    vault.counter_increment("other").unwrap();
    drop(vault);

    let stale = {
        let db = redb::Database::open(&old).unwrap();
        let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
        let table = txn.open_table(COUNTERS).unwrap();
        redb::ReadableTable::get(&table, "victim")
            .unwrap()
            .unwrap()
            .value()
            .to_vec()
    };
    {
        let db = redb::Database::open(dir.join(DB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(COUNTERS)
            .unwrap()
            .insert("victim", stale.as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    assert_rollback(Vault::open(&dir, None), "do not add up to their digest");
}

#[test]
fn counted_appends_stop_exactly_at_the_limit_under_concurrency() {
    let tmp = tempfile::tempdir().unwrap();
    let vault = Arc::new(key_file_vault(tmp.path()));
    let writer = Arc::new(AuditWriter::start(vault.clone()));
    const THREADS: usize = 16;
    const MAX: u64 = 37;
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (writer, barrier) = (writer.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let mut values = Vec::new();
                let mut refused = 0;
                for i in 0..5 {
                    let records = vec![AuditRecord {
                        kind: "run".into(),
                        actor: format!("t{t}"),
                        subject: "s".into(),
                        detail: json!({"i": i}),
                    }];
                    let step = CounterStep {
                        name: "runs".into(),
                        max: MAX,
                    };
                    match writer.append_counted(records, step) {
                        Ok(v) => values.push(v),
                        Err(AuditWriteError::AtLimit { value }) => {
                            assert_eq!(value, MAX);
                            refused += 1;
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                (values, refused)
            })
        })
        .collect();
    let mut values = Vec::new();
    let mut refused = 0;
    for h in handles {
        let (v, r) = h.join().unwrap();
        values.extend(v);
        refused += r;
    }
    values.sort_unstable();
    assert_eq!(
        values,
        (1..=MAX).collect::<Vec<_>>(),
        "each value handed out once"
    );
    assert_eq!(refused, THREADS * 5 - MAX as usize);
    assert_eq!(vault.counter_get("runs").unwrap(), MAX);
    let entries = vault.audit_entries(0, usize::MAX).unwrap();
    assert_eq!(
        entries.iter().filter(|e| e.kind == "run").count(),
        MAX as usize,
        "a refused append writes nothing"
    );
    let report = verify_audit(&entries, &vault.identity_public().unwrap()).unwrap();
    assert_eq!(report.entries, entries.len());
    drop(writer);
    drop(vault);
    Vault::open(tmp.path(), None).unwrap();
}
