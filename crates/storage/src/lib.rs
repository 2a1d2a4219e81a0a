//! Object storage for Cloister.
//!
//! The single-machine default is an embedded S3 endpoint ([`Store`], served by [`serve`]):
//! real SigV4-authenticated S3 over HTTP so that aws-cli, boto3, rclone and s3cmd work against
//! it. It is a store of its own behind the `s3s` protocol layer: metadata in a transactional
//! index (redb), data inline in the index or in immutable files named by a random id — never
//! by the key. Every object write — over HTTP or in-process — raises an [`ObjectCreated`]
//! event, committed with the object in the index's outbox and handed to an [`ObjectEvents`]
//! sink, which is how uploads become jobs without loss or duplication.

mod access;
mod blobs;
mod conditions;
mod credentials;
mod embedded;
mod etag_md5;
pub mod events;
mod index;
pub mod listen;
mod listing;
mod migrate;
mod multipart;
pub mod names;
mod outbox;
mod presign;
pub mod reopen;
mod s3;
mod serve;
mod space;
mod store;

pub use credentials::{CredentialError, JobCredential, JobScope, ScopedFolder, ScopedObject};
pub use embedded::Store;
pub use events::{EventError, NoEvents, ObjectCreated, ObjectEvents};
pub use presign::{PresignError, Presigner};
pub use serve::{S3Http, serve};

use time::OffsetDateTime;

/// The store's own files, under the data directory; a name no bucket can have.
const STORE_DIR: &str = ".cloister";
const INDEX_FILE: &str = ".cloister/index.redb";
const BLOBS_DIR: &str = ".cloister/blobs";
/// The region the endpoint reports (clients sign with whatever region they like).
const REGION: &str = "us-east-1";

/// How much of the object index [`Store::open`] keeps in memory.
pub const DEFAULT_CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A bucket name or object key was refused; the message says which and why.
    #[error("invalid name: {0}")]
    InvalidName(String),
    /// The bucket does not exist.
    #[error("no such bucket")]
    NoSuchBucket,
    /// The object does not exist.
    #[error("no such object")]
    NoSuchKey,
    /// The bucket already exists.
    #[error("bucket already exists")]
    BucketExists,
    /// The bucket still holds objects.
    #[error("bucket is not empty")]
    BucketNotEmpty,
    /// The disk is (nearly) full: nothing was written. Writes succeed again once space has
    /// been freed.
    #[error("the server's disk is full")]
    InsufficientStorage,
    /// A local file-system error.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// Any other failure of the backend.
    #[error("storage backend error: {0}")]
    Backend(String),
}

/// A bucket as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketInfo {
    /// Bucket name.
    pub name: String,
    /// Creation time.
    pub created: Option<OffsetDateTime>,
}

/// An object as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Object key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Entity tag.
    pub etag: String,
    /// Last modification time.
    pub last_modified: Option<OffsetDateTime>,
}

/// One page of an object listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectPage {
    /// Objects on this page, in key order.
    pub objects: Vec<ObjectInfo>,
    /// Token for the next page, if any.
    pub next: Option<String>,
}

/// What [`Store::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckReport {
    /// Objects in all buckets.
    pub objects: u64,
    /// Data files on disk.
    pub data_files: u64,
    /// Data files a record names that do not exist (data loss: must be 0).
    pub missing_files: u64,
    /// Data files no record names and not yet queued for reclamation (must be 0 after a
    /// start; a crash can leave some until the next start).
    pub unreferenced_files: u64,
}
