//! Object storage for Cloister.
//!
//! The single-machine default is an embedded S3 endpoint ([`Store`], served by [`serve`]):
//! real SigV4-authenticated S3 over HTTP so that aws-cli, boto3 and S3 client crates work
//! against it, with objects kept as plain files under a data directory. Every object write —
//! over HTTP or in-process — raises an [`ObjectCreated`] event through an [`ObjectEvents`] sink
//! with a write-ahead intent, which is how uploads become jobs without loss or duplication.

mod embedded;
pub mod events;
pub mod names;
mod presign;
mod serve;
mod small_put;

pub use embedded::Store;
pub use events::{EventError, NoEvents, ObjectCreated, ObjectEvents, WriteIntent};
pub use presign::{PresignError, Presigner};
pub use serve::serve;

use time::OffsetDateTime;

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
    /// Creation (or, where the file system lacks it, modification) time.
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
