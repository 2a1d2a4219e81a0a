//! The vault: the CAS's encrypted records, counters, identity key and audit log in one redb
//! database, and the seal state of the master key.
//!
//! One [`Vault`] type, four concerns, one file each: `lifecycle` creates and opens the
//! database and takes the master key from sealed to unsealed and back (Shamir shares, key
//! file, TEE); `records` encrypts and decrypts records and counters, in snapshots and durable
//! write transactions; `counters` keeps counters monotonic across restored copies of the
//! store (generation, digest, anchor); `audit_log` appends signed entries to the audit table,
//! queueing the events that happen while sealed. What they share (the tables, the keys that exist only while
//! unsealed, the state lock) is here.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ed25519_dalek::SigningKey;
use redb::{Database, Durability, TableDefinition, WriteTransaction};

use crate::StoreError;
use crate::crypto::{DataKey, DigestKey};
use crate::shamir::Share;
use crate::signer::IdentitySigner;

mod audit_log;
mod counters;
mod lifecycle;
mod records;

pub(crate) use audit_log::AuditHead;
use audit_log::Pending;
pub use counters::{ANCHOR_FILE, VaultOptions, anchor_beside};
use lifecycle::Mode;
pub use records::WriteTxn;

/// The database file inside the vault directory.
pub const DB_FILE: &str = "cas.redb";
/// Where a TEE-sealed master key blob is kept inside the vault directory.
pub const TEE_BLOB_FILE: &str = "master.tee";
/// The key file name [`SealingConfig::KeyFile`](crate::SealingConfig::KeyFile) conventionally uses (`master.key`).
pub const KEY_FILE: &str = "master.key";

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const RECORDS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("records");
const COUNTERS: TableDefinition<&str, &[u8]> = TableDefinition::new("counters");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// What exists only while unsealed.
struct Keys {
    data: DataKey,
    /// Keys the counters' digest (see `counters`).
    digest: DigestKey,
    identity: SigningKey,
    /// The identity key again, in the form that signs (see `signer`).
    signer: IdentitySigner,
}

impl Keys {
    fn new(data: DataKey, digest: DigestKey, identity: SigningKey) -> Result<Self, StoreError> {
        let signer = IdentitySigner::new(&identity)?;
        Ok(Self {
            data,
            digest,
            identity,
            signer,
        })
    }
}

/// The seal state: the keys while unsealed, the shares collected towards an unseal, and the
/// audit events waiting for one.
#[derive(Default)]
struct State {
    keys: Option<Arc<Keys>>,
    collected: Vec<Share>,
    pending: Vec<Pending>,
    dropped: u64,
}

/// The CAS's durable, encrypted state. `Send + Sync`: share it behind an `Arc`.
///
/// See the crate documentation for the on-disk format.
pub struct Vault {
    db: Database,
    mode: Mode,
    identity_public: [u8; 32],
    key_check: Vec<u8>,
    identity_secret: Vec<u8>,
    state: Mutex<State>,
    /// Where the counter generation is kept outside the store.
    anchor: counters::Anchor,
}

impl Vault {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every update is a single
        // assignment or push.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn unsealed_keys(&self) -> Result<Arc<Keys>, StoreError> {
        self.lock().keys.clone().ok_or(StoreError::Sealed)
    }
}

fn check_name(what: &str, name: &str) -> Result<(), StoreError> {
    if name.is_empty() {
        return Err(StoreError::InvalidArgument(format!(
            "the {what} must not be empty"
        )));
    }
    Ok(())
}

fn begin_durable(db: &Database) -> Result<WriteTransaction, StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    Ok(txn)
}
