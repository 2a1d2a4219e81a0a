//! Rough latency of the vault's record operations on this machine (no assertions).
//!
//! `cargo run --release -p cloister-cas-store --example timing`

use std::time::Instant;

use cloister_cas_store::{SealingConfig, StoreError, Vault};

fn per_op(label: &str, n: u32, start: Instant) {
    let us = start.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    println!("{label:<48} {us:>10.1} µs/op");
}

fn main() -> Result<(), StoreError> {
    let dir = std::env::temp_dir().join(format!("cas-store-timing-{}", std::process::id()));
    let (vault, _) = Vault::init(&dir, SealingConfig::KeyFile("master.key".into()))?;
    let value = vec![0x42u8; 256];
    let n = 200;

    let start = Instant::now();
    for i in 0..n {
        vault.write(|t| t.put("bench", &format!("key-{i:05}"), &value))?;
    }
    per_op("put, 256 B, one durable transaction each", n, start);

    let start = Instant::now();
    vault.write(|t| {
        for i in 0..10 * n {
            t.put("batch", &format!("key-{i:05}"), &value)?;
        }
        Ok(())
    })?;
    per_op("put, 256 B, 2000 in one transaction", 10 * n, start);

    let start = Instant::now();
    for i in 0..10 * n {
        let v = vault.get("batch", &format!("key-{i:05}"))?;
        assert!(v.is_some());
    }
    per_op("get, 256 B (read txn + AES-GCM open)", 10 * n, start);

    let start = Instant::now();
    for _ in 0..n {
        vault.counter_increment("bench")?;
    }
    per_op("counter_increment (durable)", n, start);

    let start = Instant::now();
    for i in 0..n {
        vault.audit_append("bench", "timing", &format!("s{i}"), serde_json::json!({"i": i}))?;
    }
    per_op("audit_append (hash + Ed25519 sign, durable)", n, start);

    let entries = vault.audit_entries(1, usize::MAX)?;
    let start = Instant::now();
    cloister_cas_store::verify_audit(&entries, &vault.identity_public().unwrap_or([0; 32]))
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    per_op(
        "verify_audit, per entry",
        u32::try_from(entries.len()).unwrap_or(1),
        start,
    );

    drop(vault);
    let start = Instant::now();
    let vault = Vault::open(&dir, None)?;
    per_op("open (integrity check + unseal from key file)", 1, start);
    drop(vault);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
