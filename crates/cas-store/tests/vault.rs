//! Vault lifecycle, sealing modes, records, transactions and counters.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use cloister_cas_store::{SealingConfig, Share, StoreError, Vault, split};
use common::{XorTee, key_file_vault, shamir_vault};
use serde_json::json;

fn assert_sealed<T: std::fmt::Debug>(r: Result<T, StoreError>) {
    assert!(matches!(r, Err(StoreError::Sealed)), "expected Sealed, got {r:?}");
}

fn assert_all_data_methods_sealed(v: &Vault) {
    assert_sealed(v.get("t", "k"));
    assert_sealed(v.get_all(&[("t", "k")]));
    assert_sealed(v.keys("t", ""));
    assert_sealed(v.write(|t| t.put("t", "k", b"v")));
    assert_sealed(v.identity().map(|_| ()));
    assert_sealed(v.counter_increment("c"));
    assert_sealed(v.counter_get("c"));
    assert_sealed(v.audit_append("x", "a", "s", json!({})));
}

#[test]
fn vault_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Vault>();
}

#[test]
fn shamir_vault_opens_sealed_and_unseals_with_threshold_shares() {
    let dir = tempfile::tempdir().unwrap();
    let (vault, shares) = shamir_vault(dir.path(), 5, 3);
    // Init hands back an unsealed vault.
    assert!(!vault.status().sealed);
    vault.write(|t| t.put("sessions", "demo", b"policy v1")).unwrap();
    let public = vault.identity_public().unwrap();
    drop(vault);

    let vault = Vault::open(dir.path(), None).unwrap();
    let st = vault.status();
    assert!(st.initialized && st.sealed);
    assert_eq!(st.sealing, "shamir");
    assert_eq!(st.threshold, Some(3));
    assert_eq!(st.shares_provided, 0);
    assert_all_data_methods_sealed(&vault);
    assert_eq!(
        vault.identity_public(),
        Some(public),
        "public key readable while sealed"
    );

    // Out of order, with a duplicate: two distinct shares are not enough.
    assert_eq!(vault.unseal(&shares[4]).unwrap().shares_provided, 1);
    assert_eq!(
        vault.unseal(&shares[4]).unwrap().shares_provided,
        1,
        "duplicate ignored"
    );
    let st = vault.unseal(&shares[1]).unwrap();
    assert!(st.sealed);
    assert_eq!(st.shares_provided, 2);
    assert_all_data_methods_sealed(&vault);
    // A re-parsed copy of a share already given is also a duplicate.
    let copy: Share = shares[1].to_string().parse().unwrap();
    assert_eq!(vault.unseal(&copy).unwrap().shares_provided, 2);

    let st = vault.unseal(&shares[2]).unwrap();
    assert!(!st.sealed);
    assert_eq!(st.shares_provided, 0);
    assert_eq!(
        vault.get("sessions", "demo").unwrap().unwrap().as_slice(),
        b"policy v1"
    );
    assert_eq!(vault.identity().unwrap().verifying_key().to_bytes(), public);
    // Further shares are ignored once unsealed.
    assert!(!vault.unseal(&shares[0]).unwrap().sealed);
}

#[test]
fn seal_forgets_the_key_and_shares_unseal_again() {
    let dir = tempfile::tempdir().unwrap();
    let (vault, shares) = shamir_vault(dir.path(), 3, 2);
    vault.write(|t| t.put("t", "k", b"v")).unwrap();
    vault.seal();
    assert!(vault.status().sealed);
    assert_all_data_methods_sealed(&vault);
    vault.unseal(&shares[2]).unwrap();
    vault.seal();
    assert_eq!(
        vault.status().shares_provided,
        0,
        "seal discards collected shares"
    );
    vault.unseal(&shares[0]).unwrap();
    assert!(!vault.unseal(&shares[1]).unwrap().sealed);
    assert_eq!(vault.get("t", "k").unwrap().unwrap().as_slice(), b"v");
}

#[test]
fn foreign_share_is_refused_and_discards_the_collection() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (va, sa) = shamir_vault(a.path(), 5, 3);
    let (_vb, sb) = shamir_vault(b.path(), 5, 3);
    va.seal();
    va.unseal(&sa[0]).unwrap();
    va.unseal(&sa[1]).unwrap();
    let err = va.unseal(&sb[2]).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::BadShare(_)), "{msg}");
    assert!(msg.contains("another key split"), "{msg}");
    assert!(
        msg.contains(&sb[2].set_id()) && msg.contains(&sa[0].set_id()),
        "{msg}"
    );
    assert!(
        msg.contains("2 share(s) collected so far were discarded"),
        "{msg}"
    );
    let st = va.status();
    assert!(st.sealed);
    assert_eq!(st.shares_provided, 0);
    // The earlier shares must be given again.
    va.unseal(&sa[0]).unwrap();
    va.unseal(&sa[1]).unwrap();
    assert!(!va.unseal(&sa[3]).unwrap().sealed);
}

/// A share with this vault's set id and a valid checksum but a wrong value: only the key check
/// value can catch it.
fn forged(share: &Share) -> Share {
    use sha2::{Digest, Sha256};
    let text = share.to_string();
    let fields: Vec<&str> = text.split('-').collect();
    let mut value = hex::decode(fields[7]).unwrap();
    value[0] ^= 1;
    let set = hex::decode(fields[6]).unwrap();
    let mut h = Sha256::new();
    h.update(b"cloister-share-v1");
    h.update([share.index(), share.shares(), share.threshold()]);
    h.update(&set);
    h.update(&value);
    let check = hex::encode(&h.finalize()[..4]);
    let forged = format!(
        "cloister-share-{}-of-{}-t{}-{}-{}-{}",
        share.index(),
        share.shares(),
        share.threshold(),
        fields[6],
        hex::encode(&value),
        check
    );
    forged.parse().unwrap()
}

#[test]
fn wrong_recombined_key_is_detected_by_the_key_check_value() {
    let dir = tempfile::tempdir().unwrap();
    let (vault, shares) = shamir_vault(dir.path(), 5, 3);
    vault.seal();
    vault.unseal(&shares[0]).unwrap();
    vault.unseal(&shares[1]).unwrap();
    let err = vault.unseal(&forged(&shares[2])).unwrap_err();
    assert!(matches!(err, StoreError::WrongKey), "{err}");
    assert!(vault.status().sealed);
    assert_eq!(vault.status().shares_provided, 0, "collection discarded");
    // A conflicting value under a number already given is refused before combining.
    vault.unseal(&shares[2]).unwrap();
    let err = vault.unseal(&forged(&shares[2])).unwrap_err();
    assert!(err.to_string().contains("different share 3"), "{err}");
    assert_eq!(vault.status().shares_provided, 0);
    for s in &shares[2..] {
        vault.unseal(s).unwrap();
    }
    assert!(!vault.status().sealed);
}

#[test]
fn key_file_vault_opens_unsealed_and_refuses_shares() {
    let dir = tempfile::tempdir().unwrap();
    let vault = key_file_vault(dir.path());
    vault.write(|t| t.put("t", "k", b"v")).unwrap();
    drop(vault);
    let key_path = dir.path().join("master.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let text = std::fs::read_to_string(&key_path).unwrap();
    assert_eq!(text.trim().len(), 64);

    let vault = Vault::open(dir.path(), None).unwrap();
    let st = vault.status();
    assert!(!st.sealed);
    assert_eq!((st.sealing.as_str(), st.threshold), ("key-file", None));
    assert_eq!(vault.get("t", "k").unwrap().unwrap().as_slice(), b"v");
    let other = split(&cloister_cas_store::MasterKey::generate().unwrap(), 2, 2).unwrap();
    assert!(matches!(vault.unseal(&other[0]), Err(StoreError::Config(_))));
    drop(vault);

    // Another key in the key file is detected.
    std::fs::write(&key_path, format!("{}\n", "ab".repeat(32))).unwrap();
    assert!(matches!(Vault::open(dir.path(), None), Err(StoreError::WrongKey)));
    std::fs::write(&key_path, "not a key").unwrap();
    assert!(matches!(
        Vault::open(dir.path(), None),
        Err(StoreError::Corrupt(_))
    ));
}

#[test]
fn key_file_outside_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let keys = tempfile::tempdir().unwrap();
    let key_path = keys.path().join("cas.key");
    let (vault, _) = Vault::init(dir.path(), SealingConfig::KeyFile(key_path.clone())).unwrap();
    vault.write(|t| t.put("t", "k", b"v")).unwrap();
    drop(vault);
    assert!(key_path.is_file());
    assert!(!dir.path().join("master.key").exists());
    let vault = Vault::open(dir.path(), None).unwrap();
    assert_eq!(vault.get("t", "k").unwrap().unwrap().as_slice(), b"v");
}

#[test]
fn tee_vault_needs_its_sealer() {
    let dir = tempfile::tempdir().unwrap();
    let tee = || {
        Box::new(XorTee {
            name: "test-tee".into(),
            pad: 0x5a,
        })
    };
    let (vault, _) = Vault::init(dir.path(), SealingConfig::Tee(tee())).unwrap();
    vault.write(|t| t.put("t", "k", b"v")).unwrap();
    drop(vault);
    assert!(dir.path().join("master.tee").is_file());

    assert!(matches!(
        Vault::open(dir.path(), None),
        Err(StoreError::Config(_))
    ));
    let wrong_name = Box::new(XorTee {
        name: "other".into(),
        pad: 0x5a,
    });
    assert!(matches!(
        Vault::open(dir.path(), Some(wrong_name)),
        Err(StoreError::Config(_))
    ));
    let wrong_tee = Box::new(XorTee {
        name: "test-tee".into(),
        pad: 0x11,
    });
    assert!(matches!(
        Vault::open(dir.path(), Some(wrong_tee)),
        Err(StoreError::WrongKey)
    ));

    let vault = Vault::open(dir.path(), Some(tee())).unwrap();
    let st = vault.status();
    assert!(!st.sealed);
    assert_eq!(st.sealing, "tee:test-tee");
    assert_eq!(vault.get("t", "k").unwrap().unwrap().as_slice(), b"v");
}

#[test]
fn reinit_is_refused_and_open_needs_init() {
    let dir = tempfile::tempdir().unwrap();
    assert!(!Vault::exists(dir.path()));
    assert!(matches!(
        Vault::open(dir.path(), None),
        Err(StoreError::NotInitialized(_))
    ));
    let (vault, _) = shamir_vault(dir.path(), 3, 2);
    vault.write(|t| t.put("t", "k", b"keep me")).unwrap();
    assert!(Vault::exists(dir.path()));
    drop(vault);
    for sealing in [
        SealingConfig::Shamir {
            shares: 3,
            threshold: 2,
        },
        SealingConfig::KeyFile("master.key".into()),
    ] {
        assert!(matches!(
            Vault::init(dir.path(), sealing),
            Err(StoreError::AlreadyInitialized(_))
        ));
    }
    // Nothing was overwritten.
    assert!(!dir.path().join("master.key").exists());
    let vault = Vault::open(dir.path(), None).unwrap();
    assert_eq!(vault.status().sealing, "shamir");

    // Bad Shamir parameters are refused before anything is written.
    let other = tempfile::tempdir().unwrap();
    let err = Vault::init(
        other.path(),
        SealingConfig::Shamir {
            shares: 3,
            threshold: 1,
        },
    )
    .err()
    .unwrap();
    assert!(matches!(err, StoreError::InvalidArgument(_)));
    assert!(!Vault::exists(other.path()));
}

#[test]
fn data_survives_close_reopen_and_unseal() {
    let dir = tempfile::tempdir().unwrap();
    let (vault, shares) = shamir_vault(dir.path(), 3, 2);
    vault
        .write(|t| {
            t.put("sessions", "a", b"A")?;
            t.put("sessions", "b", b"B")?;
            t.put("secrets", "a/db", b"hunter2")?;
            t.put("sessions", "c", b"")
        })
        .unwrap();
    vault.write(|t| t.delete("sessions", "b").map(|_| ())).unwrap();
    drop(vault);
    let vault = Vault::open(dir.path(), None).unwrap();
    vault.unseal(&shares[1]).unwrap();
    vault.unseal(&shares[0]).unwrap();
    assert_eq!(vault.get("sessions", "a").unwrap().unwrap().as_slice(), b"A");
    assert!(vault.get("sessions", "b").unwrap().is_none());
    assert_eq!(vault.get("sessions", "c").unwrap().unwrap().as_slice(), b"");
    assert_eq!(
        vault.get("secrets", "a/db").unwrap().unwrap().as_slice(),
        b"hunter2"
    );
    assert!(vault.get("secrets", "a").unwrap().is_none());
    assert_eq!(vault.keys("sessions", "").unwrap(), ["a", "c"]);
    assert_eq!(vault.keys("secrets", "a/").unwrap(), ["a/db"]);
    assert!(vault.keys("secrets", "b").unwrap().is_empty());
    assert!(vault.keys("nope", "").unwrap().is_empty());
}

#[test]
fn keys_lists_by_prefix_within_one_table() {
    let dir = tempfile::tempdir().unwrap();
    let vault = key_file_vault(dir.path());
    vault
        .write(|t| {
            for (table, key) in [
                ("a", "x1"),
                ("a", "x2"),
                ("a", "y"),
                ("ab", "x3"),
                ("b", "x4"),
                ("a\u{0}", "x5"),
            ] {
                t.put(table, key, b"v")?;
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(vault.keys("a", "x").unwrap(), ["x1", "x2"]);
    assert_eq!(vault.keys("a", "").unwrap(), ["x1", "x2", "y"]);
    assert_eq!(vault.keys("ab", "").unwrap(), ["x3"]);
    assert!(matches!(
        vault.write(|t| t.put("", "k", b"v")),
        Err(StoreError::InvalidArgument(_))
    ));
    assert!(matches!(
        vault.write(|t| t.put("t", "", b"v")),
        Err(StoreError::InvalidArgument(_))
    ));
}

/// Records written in one transaction are read together, even while writers keep replacing
/// them: every snapshot holds a matching pair.
#[test]
fn get_all_reads_one_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Arc::new(key_file_vault(dir.path()));
    let write = |v: &Vault, n: u32| {
        v.write(|t| {
            t.put("a", "k", &n.to_be_bytes())?;
            t.put("b", "k", &n.to_be_bytes())
        })
        .unwrap()
    };
    write(&vault, 0);
    let writer = {
        let vault = vault.clone();
        std::thread::spawn(move || {
            for n in 1..200 {
                write(&vault, n);
            }
        })
    };
    let mut reads = 0;
    while !writer.is_finished() || reads == 0 {
        let both = vault
            .get_all(&[("a", "k"), ("b", "k"), ("a", "missing")])
            .unwrap();
        assert_eq!(both[0], both[1], "a torn read");
        assert!(both[0].is_some());
        assert!(both[2].is_none());
        reads += 1;
    }
    writer.join().unwrap();
}

#[test]
fn failed_write_closure_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let vault = key_file_vault(dir.path());
    vault.write(|t| t.put("t", "existing", b"old")).unwrap();
    let audit_before = vault.audit_entries(1, 1000).unwrap().len();
    let err = vault
        .write(|t| {
            t.put("t", "new", b"1")?;
            t.put("t", "existing", b"overwritten")?;
            assert_eq!(
                t.get("t", "new")?.unwrap().as_slice(),
                b"1",
                "reads its own writes"
            );
            assert_eq!(t.keys("t", "")?, ["existing", "new"]);
            t.counter_increment("c")?;
            t.audit_append("secret-release", "w", "s", json!({}))?;
            t.delete("t", "existing")?;
            Err::<(), _>(StoreError::Aborted("policy check failed".into()))
        })
        .unwrap_err();
    assert!(matches!(err, StoreError::Aborted(ref m) if m == "policy check failed"));
    assert!(vault.get("t", "new").unwrap().is_none());
    assert_eq!(vault.get("t", "existing").unwrap().unwrap().as_slice(), b"old");
    assert_eq!(vault.counter_get("c").unwrap(), 0);
    assert_eq!(vault.audit_entries(1, 1000).unwrap().len(), audit_before);

    // The same closure returning Ok commits everything, and a value comes back.
    let n = vault
        .write(|t| {
            t.put("t", "new", b"1")?;
            t.audit_append("secret-release", "w", "s", json!({}))?;
            t.counter_increment("c")
        })
        .unwrap();
    assert_eq!(n, 1);
    assert!(vault.get("t", "new").unwrap().is_some());
    assert_eq!(vault.audit_entries(1, 1000).unwrap().len(), audit_before + 1);
}

#[test]
fn counters_are_monotonic_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let vault = key_file_vault(dir.path());
    assert_eq!(vault.counter_get("licence/model-x").unwrap(), 0);
    for expected in 1..=3 {
        assert_eq!(vault.counter_increment("licence/model-x").unwrap(), expected);
    }
    assert_eq!(vault.counter_increment("other").unwrap(), 1);
    drop(vault);
    let vault = Vault::open(dir.path(), None).unwrap();
    assert_eq!(vault.counter_get("licence/model-x").unwrap(), 3);
    assert_eq!(vault.counter_increment("licence/model-x").unwrap(), 4);
    assert_eq!(vault.counter_get("other").unwrap(), 1);
    assert!(matches!(
        vault.counter_increment(""),
        Err(StoreError::InvalidArgument(_))
    ));
}

#[test]
fn concurrent_increments_are_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let vault = Arc::new(key_file_vault(dir.path()));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let v = Arc::clone(&vault);
            std::thread::spawn(move || {
                for _ in 0..10 {
                    v.counter_increment("n").unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(vault.counter_get("n").unwrap(), 40);
}
