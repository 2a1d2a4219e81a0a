//! The age export must decrypt with the reference `age` binary (Debian package `age`).
//! Without `age` on PATH when the crate was built these tests are ignored, so the test runner
//! reports them as skipped; CLOISTER_REQUIRE_AGE=1 makes a missing `age` a build error (see
//! build.rs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use cloister_crypt::{AgeRecipient, Identity, encrypt_age};

fn age_decrypt(identity_file: &Path, ct: &[u8], dir: &Path) -> Vec<u8> {
    let ct_path = dir.join("ct.age");
    std::fs::write(&ct_path, ct).unwrap();
    let out = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(identity_file)
        .arg(&ct_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "age -d failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

#[test]
#[cfg_attr(not(has_age), ignore = "age is not installed")]
fn age_export_decrypts_with_stock_age() {
    let dir = tempfile::tempdir().unwrap();
    // A Cloister identity exported as an age secret key...
    let id = Identity::generate();
    let id_file = dir.path().join("cloister.agekey");
    std::fs::write(&id_file, format!("{}\n", id.to_age_secret_key().as_str())).unwrap();
    // ...and a key made by age-keygen, read back through its public key line.
    let kg_file = dir.path().join("keygen.agekey");
    let st = Command::new("age-keygen")
        .arg("-o")
        .arg(&kg_file)
        .output()
        .unwrap();
    assert!(st.status.success());
    let kg_text = std::fs::read_to_string(&kg_file).unwrap();
    let kg_pub = kg_text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .unwrap()
        .parse::<AgeRecipient>()
        .unwrap();
    let kg_id = kg_text
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-1"))
        .unwrap();
    // Our age secret-key parser and Bech32 agree with age-keygen's key pair.
    let kg_identity = Identity::from_age_secret_key(kg_id).unwrap();
    assert_eq!(
        AgeRecipient::from_recipient(&kg_identity.public()).unwrap(),
        kg_pub
    );

    let recipients = [AgeRecipient::from_recipient(&id.public()).unwrap(), kg_pub];
    for n in [0usize, 1, 65_535, 65_536, 65_537, 3 * 65_536 + 17] {
        let pt = data(n);
        let mut ct = Vec::new();
        assert_eq!(encrypt_age(&pt[..], &mut ct, &recipients).unwrap(), n as u64);
        assert_eq!(
            age_decrypt(&id_file, &ct, dir.path()),
            pt,
            "size {n}, cloister key"
        );
        assert_eq!(
            age_decrypt(&kg_file, &ct, dir.path()),
            pt,
            "size {n}, age-keygen key"
        );
    }
}

#[test]
#[cfg_attr(not(has_age), ignore = "age is not installed")]
fn stock_age_rejects_tampered_export() {
    let dir = tempfile::tempdir().unwrap();
    let id = Identity::generate();
    let id_file = dir.path().join("k");
    std::fs::write(&id_file, format!("{}\n", id.to_age_secret_key().as_str())).unwrap();
    let mut ct = Vec::new();
    encrypt_age(
        &data(1000)[..],
        &mut ct,
        &[AgeRecipient::from_recipient(&id.public()).unwrap()],
    )
    .unwrap();
    let last = ct.len() - 1;
    ct[last] ^= 1;
    let ct_path = dir.path().join("bad.age");
    std::fs::write(&ct_path, &ct).unwrap();
    let out = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&id_file)
        .arg(&ct_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
}
