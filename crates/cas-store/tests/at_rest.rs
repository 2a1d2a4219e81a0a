//! What an attacker with the disk sees and can do: no plaintext, and moved or altered
//! ciphertexts are refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;

use base64::Engine as _;
use cloister_cas_store::{StoreError, Vault};
use common::{key_file_vault, shamir_vault};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// The store's records table, as an attacker who knows the format would open it.
const RECORDS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("records");
const COUNTERS: TableDefinition<&str, &[u8]> = TableDefinition::new("counters");

const MARKER: &[u8] = b"CLOISTER-PLAINTEXT-MARKER-9f1c2e7b-secret-value-that-must-never-hit-disk";

fn all_file_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(all_file_bytes(&path));
        } else {
            out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

fn needles() -> Vec<(String, Vec<u8>)> {
    let mut n = vec![
        ("plain".to_string(), MARKER.to_vec()),
        ("hex".to_string(), hex::encode(MARKER).into_bytes()),
        ("HEX".to_string(), hex::encode_upper(MARKER).into_bytes()),
    ];
    // Base64 of the marker at each of the three byte alignments it could have inside a larger
    // encoded blob; the first and last 4 characters mix in neighbouring bytes, so they are cut.
    for engine in [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        for align in 0..3 {
            let mut buf = vec![0u8; align];
            buf.extend_from_slice(MARKER);
            let enc = engine.encode(&buf);
            n.push((
                format!("base64/{align}"),
                enc.as_bytes()[4..enc.len() - 4].to_vec(),
            ));
        }
    }
    n
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn assert_no_marker(dir: &Path) {
    let files = all_file_bytes(dir);
    assert!(!files.is_empty());
    for (name, bytes) in &files {
        for (kind, needle) in needles() {
            assert!(!contains(bytes, &needle), "{kind} marker found in {name}");
        }
    }
}

#[test]
fn the_needle_scan_would_find_a_plaintext_marker() {
    // Guards the scan itself: the same check fails on a file that does hold the marker.
    let dir = tempfile::tempdir().unwrap();
    let mut blob = b"xx".to_vec();
    blob.extend(
        base64::engine::general_purpose::STANDARD
            .encode(MARKER)
            .as_bytes(),
    );
    std::fs::write(dir.path().join("leak"), &blob).unwrap();
    let result = std::panic::catch_unwind(|| assert_no_marker(dir.path()));
    assert!(result.is_err());
}

#[test]
fn record_values_never_reach_the_disk_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let (vault, shares) = shamir_vault(dir.path(), 3, 2);
    vault
        .write(|t| {
            t.put("secrets", "db-password", MARKER)?;
            t.put("secrets", "hex", hex::encode(MARKER).as_bytes())?;
            t.counter_increment("n")
        })
        .unwrap();
    // Overwrite and delete too: old versions must not linger in clear either.
    vault.write(|t| t.put("secrets", "db-password", MARKER)).unwrap();
    vault.write(|t| t.delete("secrets", "hex").map(|_| ())).unwrap();
    assert_no_marker(dir.path());
    drop(vault);
    assert_no_marker(dir.path());
    let vault = Vault::open(dir.path(), None).unwrap();
    vault.unseal(&shares[0]).unwrap();
    vault.unseal(&shares[2]).unwrap();
    assert_eq!(
        vault.get("secrets", "db-password").unwrap().unwrap().as_slice(),
        MARKER
    );
    drop(vault);
    assert_no_marker(dir.path());
    // Neither the master key (never written in Shamir mode) nor a share value is on disk.
    let share_text = shares[0].to_string();
    let share_value = &share_text[share_text.len() - 73..share_text.len() - 9];
    for (name, bytes) in all_file_bytes(dir.path()) {
        assert!(!contains(&bytes, share_value.as_bytes()), "share value in {name}");
    }
}

fn raw_db(dir: &Path) -> Database {
    Database::open(dir.join("cas.redb")).unwrap()
}

fn raw_get(db: &Database, table: &str, key: &str) -> Vec<u8> {
    let txn = db.begin_read().unwrap();
    let t = txn.open_table(RECORDS).unwrap();
    t.get((table, key)).unwrap().unwrap().value().to_vec()
}

fn raw_put(db: &Database, table: &str, key: &str, value: &[u8]) {
    let txn = db.begin_write().unwrap();
    txn.open_table(RECORDS)
        .unwrap()
        .insert((table, key), value)
        .unwrap();
    txn.commit().unwrap();
}

fn assert_corrupt<T: std::fmt::Debug>(r: Result<T, StoreError>, what: &str) {
    match r {
        Err(StoreError::Corrupt(m)) => assert!(m.contains("failed authentication"), "{what}: {m}"),
        other => panic!("{what}: expected Corrupt, got {other:?}"),
    }
}

#[test]
fn moved_or_altered_ciphertext_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let vault = key_file_vault(dir.path());
    vault
        .write(|t| {
            t.put("secrets", "alice", b"alice's password")?;
            t.put("secrets", "bob", b"bob's password")?;
            t.put("policies", "p", b"policy")?;
            t.counter_increment("runs")?;
            t.counter_increment("other")?;
            t.counter_increment("other")
        })
        .unwrap();
    drop(vault);

    let db = raw_db(dir.path());
    let alice = raw_get(&db, "secrets", "alice");
    assert!(!contains(&alice, b"alice's password"));
    // Same table, other key.
    raw_put(&db, "secrets", "bob", &alice);
    // Other table, same key.
    raw_put(&db, "public", "alice", &alice);
    // A flipped ciphertext byte (after version and nonce), and a flipped tag byte.
    let mut policy = raw_get(&db, "policies", "p");
    policy[14] ^= 0x01;
    raw_put(&db, "policies", "p", &policy);
    raw_put(&db, "policies", "tag", &{
        let mut v = alice.clone();
        let last = v.len() - 1;
        v[last] ^= 0x80;
        v
    });
    raw_put(&db, "policies", "short", &alice[..10]);
    // A counter value replayed under another counter's name.
    {
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(COUNTERS).unwrap();
            let runs = t.get("runs").unwrap().unwrap().value().to_vec();
            t.insert("other", runs.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    drop(db);

    // A tampered counter keeps the vault sealed (see `counters.rs`); accepted, it is still
    // refused one by one.
    match Vault::open(dir.path(), None) {
        Err(StoreError::Rollback(m)) => assert!(m.contains("counters fail authentication"), "{m}"),
        other => panic!("expected a refusal to unseal, got {:?}", other.map(|_| ())),
    }
    let accepting = cloister_cas_store::VaultOptions {
        counter_anchor: None,
        accept_rollback: true,
    };
    let vault = Vault::open_with(dir.path(), None, accepting).unwrap();
    assert_eq!(
        vault.get("secrets", "alice").unwrap().unwrap().as_slice(),
        b"alice's password"
    );
    assert_corrupt(vault.get("secrets", "bob"), "moved to another key");
    assert_corrupt(vault.get("public", "alice"), "moved to another table");
    assert_corrupt(vault.get("policies", "p"), "flipped ciphertext byte");
    assert_corrupt(vault.get("policies", "tag"), "flipped tag byte");
    assert_corrupt(vault.get("policies", "short"), "truncated");
    assert_corrupt(vault.write(|t| t.get("secrets", "bob")), "inside a transaction");
    assert_corrupt(vault.counter_get("other"), "counter moved");
    assert_corrupt(vault.counter_increment("other"), "counter moved");
    assert_eq!(vault.counter_get("runs").unwrap(), 1);
}
