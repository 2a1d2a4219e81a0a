//! How the master key is protected at rest.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use crate::{MasterKey, Share, StoreError};

/// Seals the master key to a trusted execution environment (for example SGX sealing to the
/// enclave's identity, or a key released by a TEE key broker), so that only the same attested
/// CAS can unseal it.
///
/// The blob returned by [`TeeSealer::seal`] is stored in the vault directory as `master.tee`; it
/// is only useful to the TEE that made it.
pub trait TeeSealer: Send + Sync {
    /// Seals the key into an opaque blob.
    fn seal(&self, key: &MasterKey) -> Result<Vec<u8>, StoreError>;
    /// Recovers the key from a blob made by [`TeeSealer::seal`]; errors with
    /// [`StoreError::Tee`] when this TEE cannot unseal it.
    fn unseal(&self, blob: &[u8]) -> Result<MasterKey, StoreError>;
    /// A short stable name (for example `sgx-mrenclave`), recorded at init and checked at open
    /// so a vault is not handed to the wrong sealer.
    fn name(&self) -> &str;
}

/// How a new vault protects its master key. Chosen at [`crate::Vault::init`] and fixed for the
/// vault's life.
pub enum SealingConfig {
    /// Split the key into `shares` Shamir shares, `threshold` of which unseal the vault
    /// (`2 <= threshold <= shares <= 255`). The key is never written to disk; the vault opens
    /// sealed and operators unseal it share by share. Production without a TEE.
    Shamir {
        /// Number of shares to hand out.
        shares: u8,
        /// Number of shares needed to unseal.
        threshold: u8,
    },
    /// Development only: the key is written in hex to this file with mode 0600 and the vault
    /// opens unsealed. Anyone who can read the file can read the whole store. A relative path
    /// is resolved against the vault directory.
    KeyFile(PathBuf),
    /// The key is sealed by a TEE; the vault opens unsealed inside that TEE.
    Tee(Box<dyn TeeSealer>),
}

impl fmt::Debug for SealingConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SealingConfig::Shamir { shares, threshold } => f
                .debug_struct("Shamir")
                .field("shares", shares)
                .field("threshold", threshold)
                .finish(),
            SealingConfig::KeyFile(p) => f.debug_tuple("KeyFile").field(p).finish(),
            SealingConfig::Tee(s) => f.debug_tuple("Tee").field(&s.name()).finish(),
        }
    }
}

/// What [`crate::Vault::init`] hands back to the operator.
#[derive(Debug)]
pub enum InitOutput {
    /// Shamir mode: the shares, each to be given to one key holder. They are not stored
    /// anywhere; losing more than `shares - threshold` of them loses the vault.
    Shares(Vec<Share>),
    /// Key-file mode: where the key was written (absolute or relative to the vault directory
    /// as given).
    KeyFile(PathBuf),
    /// TEE mode: the key was sealed by the TEE.
    Tee,
}

/// The vault's sealing state, for an operator status endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Status {
    /// Always true for an opened vault (kept so the server can report an uninitialized
    /// directory with the same shape).
    pub initialized: bool,
    /// Whether the master key is absent from memory.
    pub sealed: bool,
    /// `shamir`, `key-file` or `tee:<name>`.
    pub sealing: String,
    /// Shares needed (Shamir mode only).
    pub threshold: Option<u8>,
    /// Distinct shares collected towards the next unseal (0 when unsealed).
    pub shares_provided: u8,
}
