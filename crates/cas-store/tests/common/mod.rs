//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;

use cloister_cas_store::{InitOutput, MasterKey, SealingConfig, Share, StoreError, TeeSealer, Vault};

/// A new Shamir vault and its shares.
pub fn shamir_vault(dir: &Path, shares: u8, threshold: u8) -> (Vault, Vec<Share>) {
    let (vault, out) = Vault::init(dir, SealingConfig::Shamir { shares, threshold }).unwrap();
    match out {
        InitOutput::Shares(s) => (vault, s),
        other => panic!("expected shares, got {other:?}"),
    }
}

/// A new key-file vault (key in `dir/master.key`).
pub fn key_file_vault(dir: &Path) -> Vault {
    let (vault, out) = Vault::init(dir, SealingConfig::KeyFile("master.key".into())).unwrap();
    assert!(matches!(out, InitOutput::KeyFile(_)));
    vault
}

/// A stand-in TEE: "seals" by XOR with a pad that only this test double knows.
pub struct XorTee {
    pub name: String,
    pub pad: u8,
}

impl TeeSealer for XorTee {
    fn seal(&self, key: &MasterKey) -> Result<Vec<u8>, StoreError> {
        let mut blob = b"xor-tee:".to_vec();
        blob.extend(key.as_bytes().iter().map(|b| b ^ self.pad));
        Ok(blob)
    }

    fn unseal(&self, blob: &[u8]) -> Result<MasterKey, StoreError> {
        let body = blob
            .strip_prefix(b"xor-tee:")
            .ok_or_else(|| StoreError::Tee("not an xor-tee blob".into()))?;
        let bytes: Vec<u8> = body.iter().map(|b| b ^ self.pad).collect();
        MasterKey::from_slice(&bytes)
    }

    fn name(&self) -> &str {
        &self.name
    }
}
