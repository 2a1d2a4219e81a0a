//! Job credentials: S3 key pairs that let one job read exactly its input objects and write only
//! under its output folders, until they expire or are revoked.
//!
//! SigV4 needs the secret itself to check a signature, so a hash of it cannot be stored; the
//! secret is instead *derived*: `HMAC-SHA256(store key, access key id)`, where the store key is
//! 256 random bits in `.cloister/credentials.key` (mode 0600, made at first start). The index
//! keeps only what is public — each credential's scope, expiry and label, by access key id — so
//! credentials survive a restart (a job re-attached after one keeps working) without any secret
//! in the index, and deleting the key file revokes every job credential at once.

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hmac::{Hmac, KeyInit as _, Mac as _};
use redb::{ReadableTable as _, TableDefinition};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::index::{Db as _, Index, decode, encode};
use crate::names::{validate_bucket_name, validate_object_key};

/// Job credentials by access key id (JSON [`Grant`]s: scope, expiry, label; no secret).
const CREDENTIALS: TableDefinition<&str, &[u8]> = TableDefinition::new("job_credentials");
/// The derivation key, beside the index.
const KEY_FILE: &str = ".cloister/credentials.key";
/// Every job access key id starts so (and is otherwise 32 upper-case hex digits, 128 random
/// bits), so an operator reading a refusal in the log knows it was a job's.
const ACCESS_KEY_PREFIX: &str = "CJ";
/// Domain separation of the derivation: this key derives nothing else.
const DERIVATION_LABEL: &[u8] = b"cloister job credential v1\0";
/// Bounds on one scope, so that a record stays small.
const MAX_SCOPE_ENTRIES: usize = 256;

/// Errors of issuing and revoking job credentials.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The scope was refused; the message says which entry and why.
    #[error("invalid job credential scope: {0}")]
    InvalidScope(String),
    /// The validity is zero or beyond what a timestamp can hold.
    #[error("a job credential must be valid for a positive time, not {0:?}")]
    InvalidLifetime(Duration),
    /// This handle cannot issue credentials (a store opened for inspection).
    #[error("this store handle does not issue job credentials")]
    Unavailable,
    /// The store failed to record the credential.
    #[error(transparent)]
    Storage(#[from] crate::StorageError),
}

/// One object a job may read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopedObject {
    /// Bucket name.
    pub bucket: String,
    /// The object's exact key.
    pub key: String,
}

/// A folder a job may write under.
///
/// `folder` is a key prefix ending in `/` (`"out"` is taken as `"out/"`), or `""` for the whole
/// bucket. A key is under it when it starts with the folder, is longer than it, and what follows
/// has no empty, `.` or `..` segment: keys are opaque to S3, but tools that mirror a bucket to
/// a file system would resolve `out/../x` to `x`, outside the folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopedFolder {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix, `""` or ending in `/`.
    pub folder: String,
}

/// What a job credential allows: `GetObject`/`HeadObject` of exactly the `read` objects;
/// `PutObject`, the multipart operations (`CreateMultipartUpload`, `UploadPart`,
/// `CompleteMultipartUpload`, `AbortMultipartUpload`, `ListParts`) and copies (whose source must
/// be a `read` object) of keys under a `write` folder; nothing else — no listing, deleting,
/// bucket, tagging, ACL or CORS operation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobScope {
    /// Objects the job may read.
    pub read: Vec<ScopedObject>,
    /// Folders the job may write under.
    pub write: Vec<ScopedFolder>,
}

impl JobScope {
    /// The scope with folders normalised to end in `/`, or why it is refused.
    fn validated(mut self) -> Result<Self, CredentialError> {
        let invalid = |what: String| CredentialError::InvalidScope(what);
        if self.read.len() > MAX_SCOPE_ENTRIES || self.write.len() > MAX_SCOPE_ENTRIES {
            return Err(invalid(format!(
                "at most {MAX_SCOPE_ENTRIES} objects and {MAX_SCOPE_ENTRIES} folders"
            )));
        }
        for object in &self.read {
            validate_bucket_name(&object.bucket).map_err(|e| invalid(e.to_string()))?;
            validate_object_key(&object.key).map_err(|e| invalid(e.to_string()))?;
        }
        for place in &mut self.write {
            validate_bucket_name(&place.bucket).map_err(|e| invalid(e.to_string()))?;
            if !place.folder.is_empty() && !place.folder.ends_with('/') {
                place.folder.push('/');
            }
            if !place.folder.is_empty() {
                validate_object_key(&place.folder).map_err(|e| invalid(e.to_string()))?;
                if !clean_segments(&place.folder[..place.folder.len() - 1]) {
                    return Err(invalid(format!(
                        "the folder {:?} has an empty, '.' or '..' segment",
                        place.folder
                    )));
                }
            }
        }
        Ok(self)
    }

    /// Whether `bucket/key` is one of the objects this scope may read.
    pub fn may_read(&self, bucket: &str, key: &str) -> bool {
        self.read.iter().any(|o| o.bucket == bucket && o.key == key)
    }

    /// Whether `bucket/key` is under one of the folders this scope may write.
    pub fn may_write(&self, bucket: &str, key: &str) -> bool {
        self.write.iter().any(|place| {
            place.bucket == bucket
                && key
                    .strip_prefix(place.folder.as_str())
                    .is_some_and(|rest| !rest.is_empty() && clean_segments(rest))
        })
    }
}

/// Whether no `/`-separated segment of `path` is empty, `.` or `..`.
fn clean_segments(path: &str) -> bool {
    path.split('/').all(|segment| !matches!(segment, "" | "." | ".."))
}

/// A job credential as issued: the only time its secret is handed out. Its `Debug` form hides
/// the secret.
#[derive(Clone)]
pub struct JobCredential {
    /// The access key id (public: it appears in requests and logs).
    pub access_key_id: String,
    secret_access_key: String,
    /// When the credential stops working.
    pub expires: OffsetDateTime,
}

impl JobCredential {
    /// The secret access key, to hand to the job (never to log or store).
    pub fn secret_access_key(&self) -> &str {
        &self.secret_access_key
    }
}

impl std::fmt::Debug for JobCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobCredential")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"[redacted]")
            .field("expires", &self.expires)
            .finish()
    }
}

/// What the index keeps of a credential.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Grant {
    pub scope: JobScope,
    /// Unix seconds.
    pub expires: i64,
    /// Who it was issued for (a job's name), for the log.
    pub label: String,
}

impl Grant {
    pub(crate) fn expired(&self, now: i64) -> bool {
        now >= self.expires
    }

    pub(crate) fn expiry(&self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(self.expires).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

/// A credential the registry knows: its grant and its (derived) secret.
pub(crate) struct Known {
    pub grant: Grant,
    pub secret: s3s::auth::SecretKey,
}

/// The registry of live job credentials: durable in the index, mirrored in memory (this
/// process is the index's only writer) so that checking a request reads no database.
pub(crate) struct JobCredentials {
    key: [u8; 32],
    index: Arc<Index>,
    live: RwLock<HashMap<String, Arc<Known>>>,
}

pub(crate) fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

impl JobCredentials {
    /// Loads the derivation key (made at first start) and the credentials that have not
    /// expired; removes the expired ones from the index.
    pub(crate) fn open(root: &Path, index: Arc<Index>) -> Result<Self, crate::StorageError> {
        let key = load_or_make_key(&root.join(KEY_FILE))?;
        let registry = Self {
            key,
            index,
            live: RwLock::default(),
        };
        let now = now();
        let mut expired = Vec::new();
        let mut live = HashMap::new();
        {
            let txn = registry.index.read()?;
            match txn.open_table(CREDENTIALS) {
                Ok(table) => {
                    for entry in table.iter().map_err(crate::index::IndexError::from)? {
                        let (id, value) = entry.map_err(crate::index::IndexError::from)?;
                        let id = id.value().to_owned();
                        let grant: Grant = decode(value.value())?;
                        if grant.expired(now) {
                            expired.push(id);
                        } else {
                            let secret = registry.secret_for(&id);
                            live.insert(id, Arc::new(Known { grant, secret }));
                        }
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(crate::index::IndexError::from(e).into()),
            }
        }
        if !expired.is_empty() {
            tracing::info!(credentials = expired.len(), "removed expired job credentials");
            // At open, before any request: the commit thread has nothing queued to share with.
            let remove = || -> Result<(), crate::index::IndexError> {
                let txn = registry.index.db.begin_write()?;
                {
                    let mut table = txn.open_table(CREDENTIALS)?;
                    for id in &expired {
                        table.remove(id.as_str())?;
                    }
                }
                txn.commit()?;
                Ok(())
            };
            remove()?;
        }
        if let Ok(mut map) = registry.live.write() {
            *map = live;
        }
        Ok(registry)
    }

    fn secret_for(&self, access_key_id: &str) -> s3s::auth::SecretKey {
        use base64::Engine as _;
        // A 32-byte key is always a valid HMAC key; the fallback is unreachable.
        let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(&self.key) else {
            return s3s::auth::SecretKey::from(String::new());
        };
        mac.update(DERIVATION_LABEL);
        mac.update(access_key_id.as_bytes());
        let digest = mac.finalize().into_bytes();
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(digest)
            .into()
    }

    /// The credential behind `access_key_id`, if one was issued and not revoked (expired or
    /// not: the caller says which refusal applies).
    pub(crate) fn get(&self, access_key_id: &str) -> Option<Arc<Known>> {
        self.live.read().ok()?.get(access_key_id).cloned()
    }

    pub(crate) async fn issue(
        &self,
        scope: JobScope,
        lifetime: Duration,
        label: &str,
    ) -> Result<JobCredential, CredentialError> {
        let scope = scope.validated()?;
        if lifetime.is_zero() {
            return Err(CredentialError::InvalidLifetime(lifetime));
        }
        // Rounded up to the second: a credential is valid for at least its lifetime.
        let deadline = time::Duration::try_from(lifetime)
            .ok()
            .and_then(|lifetime| OffsetDateTime::now_utc().checked_add(lifetime))
            .ok_or(CredentialError::InvalidLifetime(lifetime))?;
        let expires = deadline.unix_timestamp() + i64::from(deadline.nanosecond() > 0);
        let now = now();
        let access_key_id = format!(
            "{ACCESS_KEY_PREFIX}{}",
            hex::encode_upper(rand::random::<[u8; 16]>())
        );
        let grant = Grant {
            scope,
            expires,
            label: label.to_owned(),
        };
        let record = encode(&grant).map_err(crate::StorageError::from)?;
        // Expired credentials leave the index with the next issue (and at start), so the table
        // holds about as many as there are running jobs.
        let expired: Vec<String> = self
            .live
            .read()
            .map(|live| {
                live.iter()
                    .filter(|(_, known)| known.grant.expired(now))
                    .map(|(id, _)| id.clone())
                    .collect()
            })
            .unwrap_or_default();
        let id = access_key_id.clone();
        let removed = expired.clone();
        self.index
            .write(move |txn| {
                let mut table = txn.open_table(CREDENTIALS).db()?;
                table.insert(id.as_str(), record.as_slice()).db()?;
                for id in removed {
                    table.remove(id.as_str()).db()?;
                }
                Ok(())
            })
            .await
            .map_err(|e| crate::StorageError::Backend(e.to_string()))?;
        let secret = self.secret_for(&access_key_id);
        let secret_access_key = secret.expose().to_owned();
        if let Ok(mut live) = self.live.write() {
            for id in &expired {
                live.remove(id);
            }
            live.insert(access_key_id.clone(), Arc::new(Known { grant, secret }));
        }
        tracing::debug!(access_key_id, label, expires, "issued a job credential");
        Ok(JobCredential {
            access_key_id,
            secret_access_key,
            expires: OffsetDateTime::from_unix_timestamp(expires).unwrap_or(OffsetDateTime::UNIX_EPOCH),
        })
    }

    /// Revokes a credential: refused at once, removed from the index durably. Unknown ids are
    /// not an error (revoked already, or expired and cleaned up).
    pub(crate) async fn revoke(&self, access_key_id: &str) -> Result<(), CredentialError> {
        if let Ok(mut live) = self.live.write() {
            live.remove(access_key_id);
        }
        let id = access_key_id.to_owned();
        self.index
            .write(move |txn| {
                txn.open_table(CREDENTIALS).db()?.remove(id.as_str()).db()?;
                Ok(())
            })
            .await
            .map_err(|e| crate::StorageError::Backend(e.to_string()))?;
        Ok(())
    }
}

/// Reads the derivation key, or makes it (exclusively, synced) on first start. A key file others
/// can read is narrowed to its owner, with a warning.
fn load_or_make_key(path: &Path) -> Result<[u8; 32], crate::StorageError> {
    let corrupt = || {
        crate::StorageError::Backend(format!(
            "{} is not a job credential key (64 hex digits); remove it to make a new one, which \
             revokes every job credential",
            path.display()
        ))
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mode = std::fs::metadata(path)?.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "the job credential key was readable by others; made it private");
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            }
            let bytes = hex::decode(text.trim()).map_err(|_| corrupt())?;
            bytes.try_into().map_err(|_| corrupt())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key: [u8; 32] = rand::random();
            let tmp = path.with_extension("tmp");
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(hex::encode(key).as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)?;
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(key)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(bucket: &str, folder: &str) -> ScopedFolder {
        ScopedFolder {
            bucket: bucket.into(),
            folder: folder.into(),
        }
    }

    #[test]
    fn folders_are_prefixes_ending_in_a_slash_with_clean_segments_below() {
        let scope = JobScope {
            read: vec![],
            write: vec![folder("bkt", "out"), folder("whole", "")],
        }
        .validated()
        .unwrap();
        assert_eq!(scope.write[0].folder, "out/");
        for key in ["out/a", "out/a/b.txt", "out/..a", "out/a.", "out/ spaced"] {
            assert!(scope.may_write("bkt", key), "{key}");
        }
        for key in [
            "out", "out/", "out2/a", "outa", "out//a", "out/./a", "out/../a", "out/a/..", "out/a/", "in/a",
        ] {
            assert!(!scope.may_write("bkt", key), "{key}");
        }
        assert!(!scope.may_write("ckt", "out/a"));
        assert!(scope.may_write("whole", "a/b"));
        assert!(!scope.may_write("whole", "../a"));
        assert!(!scope.may_write("whole", "/a"));
        for bad in ["a//", "./", "a/../", "/"] {
            let refused = JobScope {
                read: vec![],
                write: vec![folder("bkt", bad)],
            }
            .validated();
            assert!(matches!(refused, Err(CredentialError::InvalidScope(_))), "{bad}");
        }
    }

    #[test]
    fn reads_are_exact() {
        let scope = JobScope {
            read: vec![ScopedObject {
                bucket: "b".into(),
                key: "in/a.txt".into(),
            }],
            write: vec![],
        };
        assert!(scope.may_read("b", "in/a.txt"));
        for (bucket, key) in [
            ("b", "in/a.txt2"),
            ("b", "in/a.tx"),
            ("b", "in/"),
            ("c", "in/a.txt"),
        ] {
            assert!(!scope.may_read(bucket, key), "{bucket}/{key}");
        }
    }
}
