//! Free space. The store refuses new data with `507 InsufficientStorage` while the file system
//! has less than [`RESERVE`] free, so that what remains is there for the index's commits (a
//! failed commit would leave the index unusable until it is reopened). Checked before a body
//! is received and while a data file is written; when space returns, writes succeed again.

use std::path::Path;

use s3s::{S3Error, S3ErrorCode};

/// Space kept free for metadata commits (the index, the platform's state), or a sixteenth of
/// a smaller file system.
pub(crate) const RESERVE: u64 = 32 << 20;

/// How often a data file being written looks at the free space again.
pub(crate) const CHECK_EVERY: u64 = 16 << 20;

/// Bytes free for an unprivileged writer on the file system of `dir`, and the reserve to
/// keep there (`None` when unknown).
pub(crate) fn available(dir: &Path) -> Option<(u64, u64)> {
    let stat = rustix::fs::statvfs(dir).ok()?;
    let total = stat.f_blocks.saturating_mul(stat.f_frsize);
    Some((
        stat.f_bavail.saturating_mul(stat.f_frsize),
        RESERVE.min(total / 16),
    ))
}

/// Whether `dir`'s file system is down to its reserve.
pub(crate) fn low(dir: &Path) -> bool {
    available(dir).is_some_and(|(free, reserve)| free < reserve)
}

/// Whether an I/O error means the file system (or the user's quota) is full.
pub(crate) fn is_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// The error a client gets for a write refused for lack of space (HTTP 507).
pub(crate) fn insufficient_storage() -> S3Error {
    let mut e = S3Error::with_message(
        S3ErrorCode::Custom("InsufficientStorage".into()),
        "The server's disk is full: the object was not stored. Reads still work; retry once space \
         has been freed.",
    );
    e.set_status_code(http::StatusCode::INSUFFICIENT_STORAGE);
    e
}

/// Refuses a write of `needed` bytes that would leave less than [`RESERVE`] free on `dir`'s
/// file system. Unknown free space lets the write try.
pub(crate) fn ensure_room(dir: &Path, needed: u64) -> Result<(), S3Error> {
    match available(dir) {
        Some((free, reserve)) if free < needed.saturating_add(reserve) => {
            refused(&format_args!(
                "{free} bytes free, {needed} needed, {reserve} kept in reserve"
            ));
            Err(insufficient_storage())
        }
        _ => Ok(()),
    }
}

/// Logs a write refused for lack of space, once per interval (a full disk refuses every write).
pub(crate) fn refused(detail: &dyn std::fmt::Display) {
    static THROTTLE: std::sync::Mutex<crate::listen::Throttle> =
        std::sync::Mutex::new(crate::listen::Throttle {
            last: None,
            suppressed: 0,
        });
    let pass = THROTTLE.lock().ok().and_then(|mut t| t.pass());
    if let Some(suppressed) = pass {
        tracing::warn!(%detail, suppressed, "object store: the disk is full, writes are refused");
    }
}
