//! Object-created events.
//!
//! The store asks its [`ObjectEvents`] sink *before* an object write whether the write matters
//! (for example, whether it lands under some service's input path) and, if so, the sink records
//! an intent durably. After the write the sink turns the intent into its consequences (job
//! records) before the client gets its answer. If the process dies in between, the sink finds
//! the intent again at start-up and resolves it against the object that is (or is not) there:
//! an acknowledged write is never lost and never counted twice.

use time::OffsetDateTime;

/// A durable handle on a write in progress, issued by [`ObjectEvents::before_write`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WriteIntent(pub u64);

/// An object that has just been written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectCreated {
    /// Bucket name.
    pub bucket: String,
    /// Object key (not URL-encoded).
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Entity tag as S3 reports it (MD5 of the content for single-part uploads).
    pub etag: String,
    /// Modification time of the stored object.
    pub time: OffsetDateTime,
    /// Access key of the writer, or `cloister` for in-process writes.
    pub principal: String,
}

/// Error type of event sinks; its message is logged, never shown to S3 clients.
pub type EventError = Box<dyn std::error::Error + Send + Sync>;

/// Receives object-created events from the store. Methods are called from blocking threads.
pub trait ObjectEvents: Send + Sync + 'static {
    /// Whether a write to `bucket/key` can have consequences at all. It must not block: it runs
    /// on the request's own thread, and a `false` spares the write the hop to a blocking thread
    /// that [`Self::before_write`] takes. Defaults to `true`.
    fn wants(&self, _bucket: &str, _key: &str) -> bool {
        true
    }
    /// Called as a write starts (possibly while it runs); returns an intent when the write has
    /// consequences to record. It must be durable when this returns: the write is acknowledged
    /// only after both have finished.
    fn before_write(&self, bucket: &str, key: &str) -> Result<Option<WriteIntent>, EventError>;
    /// Called after the object is in place; must record the consequences durably.
    fn object_created(&self, intent: WriteIntent, object: &ObjectCreated) -> Result<(), EventError>;
    /// Called when the write failed, so the intent can be dropped.
    fn write_failed(&self, intent: WriteIntent);
}

/// A sink that ignores every write.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoEvents;

impl ObjectEvents for NoEvents {
    fn wants(&self, _: &str, _: &str) -> bool {
        false
    }
    fn before_write(&self, _: &str, _: &str) -> Result<Option<WriteIntent>, EventError> {
        Ok(None)
    }
    fn object_created(&self, _: WriteIntent, _: &ObjectCreated) -> Result<(), EventError> {
        Ok(())
    }
    fn write_failed(&self, _: WriteIntent) {}
}
