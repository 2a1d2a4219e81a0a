//! A redb database that survives a failed write. After an I/O error (a commit that hit a full
//! disk), redb fails every later transaction with `PreviousIo` until the database is closed
//! and opened again; without this, one write on a full disk would leave the store (or the
//! platform's state) unusable until a restart, even after space returns. A failed commit is
//! not visible after the reopen: redb's commit switches to the new root only once everything
//! it names is written.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redb::{Database, DatabaseError, ReadTransaction, StorageError, TransactionError, WriteTransaction};

fn open(path: &Path, cache_bytes: usize) -> Result<Database, DatabaseError> {
    redb::Builder::new().set_cache_size(cache_bytes).create(path)
}

/// How long a reopen waits for the old handle's last readers to let go of its file.
const REOPEN_WAIT: Duration = Duration::from_secs(2);

/// A redb database, opened again after an I/O error poisoned it.
#[derive(Debug)]
pub struct ReopeningDatabase {
    path: PathBuf,
    /// redb's cache size, kept for reopening.
    cache_bytes: usize,
    /// `None` only between closing a poisoned handle and opening its successor.
    current: RwLock<Option<Arc<Database>>>,
    /// How many times the file was opened again. Commits with `Durability::None` live only in
    /// the handle that made them: a reopen drops those not yet made durable, so a writer that
    /// counts on a later durable commit to cover them must see that no reopen came between.
    reopened: AtomicU64,
}

impl ReopeningDatabase {
    /// Opens (creating if needed) the database at `path`, keeping at most `cache_bytes` of it
    /// in memory.
    pub fn create(path: &Path, cache_bytes: usize) -> Result<Self, DatabaseError> {
        Ok(Self {
            path: path.to_path_buf(),
            cache_bytes,
            current: RwLock::new(Some(Arc::new(open(path, cache_bytes)?))),
            reopened: AtomicU64::new(0),
        })
    }

    /// The current handle, reopening when the last one was closed and not replaced.
    fn handle(&self) -> Result<Arc<Database>, TransactionError> {
        if let Some(db) = self.current.read().ok().and_then(|c| c.clone()) {
            return Ok(db);
        }
        self.reopen(None)
    }

    /// Replaces the handle `failed` (any handle when `None`) with a fresh one, unless another
    /// thread already did.
    fn reopen(&self, failed: Option<*const Database>) -> Result<Arc<Database>, TransactionError> {
        let unavailable = || TransactionError::Storage(StorageError::PreviousIo);
        let mut current = self.current.write().map_err(|_| unavailable())?;
        if let Some(db) = current.as_ref()
            && failed.is_none_or(|failed| !std::ptr::eq(Arc::as_ptr(db), failed))
        {
            return Ok(db.clone());
        }
        // redb locks its file: the old handle must be gone before the new one opens.
        *current = None;
        let deadline = Instant::now() + REOPEN_WAIT;
        loop {
            match open(&self.path, self.cache_bytes) {
                Ok(db) => {
                    tracing::warn!(path = %self.path.display(), "database reopened after an I/O error");
                    let db = Arc::new(db);
                    *current = Some(db.clone());
                    self.reopened.fetch_add(1, Ordering::AcqRel);
                    return Ok(db);
                }
                // Readers of the old handle still hold its file.
                Err(DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(DatabaseError::Storage(e)) => return Err(TransactionError::Storage(e)),
                Err(e) => {
                    tracing::warn!(error = %e, path = %self.path.display(), "cannot reopen a database");
                    return Err(unavailable());
                }
            }
        }
    }

    /// Runs `begin` on the current handle; if the handle is poisoned, once more on a fresh one.
    fn begin<T>(
        &self,
        begin: impl Fn(&Database) -> Result<T, TransactionError>,
    ) -> Result<T, TransactionError> {
        let db = self.handle()?;
        match begin(&db) {
            Err(TransactionError::Storage(StorageError::PreviousIo)) => {
                let failed = Arc::as_ptr(&db);
                drop(db);
                begin(&*self.reopen(Some(failed))?)
            }
            other => other,
        }
    }

    /// How many times the file was opened again after an I/O error: a change says that
    /// commits not made durable before it are gone.
    pub fn reopened(&self) -> u64 {
        self.reopened.load(Ordering::Acquire)
    }

    /// Begins a write transaction.
    pub fn begin_write(&self) -> Result<WriteTransaction, TransactionError> {
        self.begin(Database::begin_write)
    }

    /// Begins a read transaction.
    pub fn begin_read(&self) -> Result<ReadTransaction, TransactionError> {
        use redb::ReadableDatabase as _;
        self.begin(Database::begin_read)
    }
}
