//! Durable, encrypted state of Cloister's configuration and attestation service (CAS): the
//! records it keeps (sessions, secrets, policies), its monotonic counters, its identity key, the
//! sealing of its master key, and its tamper-evident audit log.
//!
//! The CAS operator's disk is not trusted with secrets and no single operator should hold the
//! master key. So every secret on disk is encrypted under a key derived from a 32-byte master
//! key, and the master key itself is either split into Shamir shares held by several people
//! ([`SealingConfig::Shamir`]), sealed to a TEE ([`SealingConfig::Tee`]), or — for development
//! only — kept in a file ([`SealingConfig::KeyFile`]).
//!
//! ```no_run
//! # use cloister_cas_store::*;
//! # fn main() -> Result<(), StoreError> {
//! let dir = std::path::Path::new("/var/lib/cloister-cas");
//! let (vault, out) = Vault::init(dir, SealingConfig::Shamir { shares: 5, threshold: 3 })?;
//! // hand each share in `out` to one key holder; later, after a restart:
//! let vault = Vault::open(dir, None)?;           // sealed
//! # let shares: Vec<Share> = vec![];
//! for s in &shares[..3] { vault.unseal(s)?; }   // unsealed at the third share
//! vault.write(|t| t.put("sessions", "demo", b"policy"))?;
//! let policy = vault.get("sessions", "demo")?;
//! # Ok(()) }
//! ```
//!
//! Appends that must be durable before their caller answers, from many threads at once (the
//! CAS's attestations), share transactions through an [`AuditWriter`] (group commit).
//!
//! # On-disk format
//!
//! Everything lives in one directory:
//!
//! | file | content |
//! | --- | --- |
//! | `cas.redb` | the redb database: tables `meta`, `records`, `counters`, `audit` |
//! | `master.key` (or the path given) | key-file mode only: the master key as 64 hex digits, mode 0600 |
//! | `master.tee` | TEE mode only: the blob returned by [`TeeSealer::seal`] |
//! | `counter.anchor` (or the path given) | the counter anchor: two 4 KiB slots, each `CLCANCH1` and the counter generation encrypted like a record (purpose `counter-anchor`, the identity public key as its part) |
//!
//! Tables of `cas.redb`:
//!
//! - `meta` (`&str → bytes`): `format` = `cloister-cas-store/1`; `sealing` = `shamir` /
//!   `key-file` / `tee`; `shamir.shares`, `shamir.threshold`, `shamir.set` (share-set id);
//!   `key-file.path`; `tee.name`; `identity.public` (Ed25519 public key, 32 bytes);
//!   `identity.secret` (the identity key's 32-byte seed, **encrypted**); `key-check`
//!   (**encrypted** constant, see below); `counters.state` (**encrypted**: the counter
//!   generation, u64 big-endian, and the counters' digest, 32 bytes).
//! - `records` (`(table, key) → bytes`): one entry per record, value **encrypted**.
//! - `counters` (`name → bytes`): value **encrypted** (u64, big-endian).
//! - `audit` (`seq → bytes`): one [`AuditEntry`] per entry as JSON, **in clear**, signed.
//!
//! Every encrypted value is `0x01 || nonce (12 bytes, random) || AES-256-GCM ciphertext || tag
//! (16 bytes)`. The AES key is derived from the master key with HKDF-SHA256 (fixed salt
//! `cloister-cas/v1/hkdf-salt`, info `cloister-cas/v1/data-key/aes-256-gcm`); the master key
//! itself never encrypts anything directly. The associated data is
//! `"cloister-cas/v1\0"` followed by length-prefixed (u64 big-endian) parts: the purpose
//! (`record`, `counter`, `identity`, `key-check`), then for records the table name and record
//! key, for counters the counter name.
//!
//! # What is in clear
//!
//! Table names, record keys, counter names, the sealing configuration, the share-set id, the
//! identity *public* key and the whole audit log. Callers must therefore never put secrets in
//! table names, record keys, counter names or audit fields. Record values, counter values and
//! the identity private key are encrypted and authenticated.
//!
//! # Why the AAD binds the table and the key
//!
//! An attacker with write access to the disk cannot read or forge ciphertexts, but without the
//! binding could *move* them: copy the value of `secrets/alice-db-password` over
//! `secrets/bob-db-password`, or a policy record over another session's, and the CAS would
//! decrypt it and release it under the wrong name. With the table and key in the AAD a moved
//! value fails authentication and [`Vault::get`] returns [`StoreError::Corrupt`]. The purpose
//! label likewise stops a counter blob from being accepted as a record, or as the key check.
//!
//! # Why the key check value is an encrypted constant, not a hash of the key
//!
//! After recombining shares the vault must tell a right key from a wrong one before it writes
//! anything under it. A hash of the master key would be a second, unkeyed function of the key
//! stored in clear on an untrusted disk, outside the HKDF/AEAD construction everything else
//! uses. The key check value is instead a known constant encrypted exactly like a record: it is
//! checked with the derived data key, so a successful check proves the whole derivation and
//! decryption path works with this key, it reveals nothing about the key beyond what any other
//! ciphertext does, the comparison is the AEAD's constant-time tag check, and it cannot be
//! forged without the key.
//!
//! # What this store does not protect against
//!
//! Whole-file rollback of records: an operator can restore an older copy of the directory
//! (older records, a shorter audit log). Counters are the exception: a store older than its
//! counter anchor, kept outside the store, is refused at unseal (see [`VaultOptions`] and
//! `vault/counters.rs` for the protocol and its limit: restoring the anchor too). Real
//! freshness of everything needs a TEE monotonic counter or an external witness of the audit
//! head.
//! Random 96-bit nonces bound one master key to about 2³² encryptions.

mod audit;
mod audit_writer;
mod crypto;
mod error;
mod sealing;
mod shamir;
mod signer;
mod vault;

pub use audit::{
    AuditEntry, AuditError, AuditFault, AuditReport, GENESIS_PREV, export_jsonl, parse_jsonl, verify_audit,
};
pub use audit_writer::{AuditRecord, AuditWriteError, AuditWriter, CounterStep};
pub use crypto::{MASTER_KEY_LEN, MasterKey};
pub use ed25519_dalek::SigningKey;
pub use error::StoreError;
pub use sealing::{InitOutput, SealingConfig, Status, TeeSealer};
pub use shamir::{Share, combine, split};
pub use vault::{
    ANCHOR_FILE, DB_FILE, KEY_FILE, TEE_BLOB_FILE, Vault, VaultOptions, WriteTxn, anchor_beside,
};
pub use zeroize::Zeroizing;
