//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the CAS store.
///
/// Messages name files, tables, record keys, share numbers and share-set identifiers, never key
/// material, share values or record contents, so an error can be logged or returned to a client
/// as it is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The vault holds no master key: it must be unsealed before records, counters, the identity
    /// key or audit appends can be used.
    #[error("the CAS vault is sealed")]
    Sealed,
    /// The directory holds no initialized vault.
    #[error("no CAS vault is initialized in {}", .0.display())]
    NotInitialized(PathBuf),
    /// `Vault::init` was asked to initialize a directory that already holds a vault (or a
    /// leftover key file).
    #[error("{} is already initialized", .0.display())]
    AlreadyInitialized(PathBuf),
    /// A master key (recombined from shares, read from the key file or unsealed by the TEE)
    /// does not match this vault's key check value.
    #[error("wrong master key: it does not open this vault's key check value")]
    WrongKey,
    /// A share was refused: malformed, mistyped (checksum), from another split, inconsistent
    /// with the shares already given, or too few shares to combine.
    #[error("bad share: {0}")]
    BadShare(String),
    /// Stored data failed authentication or could not be decoded: it was altered, moved to
    /// another record, or is not what this version of the store wrote.
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// The store is older than its counter anchor (an older copy was put back), or its
    /// counters do not match their digest, or the anchor is missing or damaged: the vault
    /// stays sealed unless opened with `VaultOptions::accept_rollback`.
    #[error(
        "refusing to unseal: {0}. If this store was restored on purpose, start the CAS with \
         --accept-rollback (audited): counters then go on from the restored values"
    )]
    Rollback(String),
    /// The request does not fit this vault's configuration (for example a share given to a
    /// key-file vault, or a TEE vault opened without its sealer).
    #[error("configuration: {0}")]
    Config(String),
    /// An argument is out of range (share counts, names).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A write closure asked for its transaction to be rolled back.
    #[error("transaction aborted: {0}")]
    Aborted(String),
    /// A TEE sealer failed to seal or unseal the master key.
    #[error("TEE sealer: {0}")]
    Tee(String),
    /// The system's cryptographic library failed (random generation, key setup).
    #[error("cryptographic failure: {0}")]
    Crypto(&'static str),
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The embedded database (redb) failed.
    #[error("database: {0}")]
    Db(#[source] Box<redb::Error>),
}

impl StoreError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(Box::new(e.into()))
            }
        }
    )*};
}

from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);
