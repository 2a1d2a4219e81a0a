//! Object-created events, through a transactional outbox.
//!
//! As a write starts, the store asks its [`ObjectEvents`] sink who subscribes to it (for
//! example, the services whose input path the key is under). When someone does, the event is
//! recorded in the store's *outbox* in the same index transaction that commits the object: an
//! object is never visible without its event, and an event never exists without its object.
//! After the commit the store hands the event to [`ObjectEvents::object_created`]; the sink
//! records the consequences (job records) idempotently by [`ObjectCreated::id`] and, once they
//! are durable on its side, tells the store with [`crate::Store::events_done`], which removes
//! them from the outbox. Events still in the outbox after a crash, or after a delivery that
//! failed, are found again with [`crate::Store::pending_events`]: an acknowledged write is
//! never lost and never counted twice.

use std::time::{Duration, Instant};

use time::OffsetDateTime;

/// An object that has just been written, as its outbox event records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectCreated {
    /// The event's id in the outbox: unique for the store's life, increasing with commits.
    pub id: u64,
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
    /// Who the sink said subscribed to the write as it started.
    pub subscribers: Vec<String>,
}

/// Error type of event sinks; its message is logged, never shown to S3 clients.
pub type EventError = Box<dyn std::error::Error + Send + Sync>;

/// Receives object-created events from the store.
pub trait ObjectEvents: Send + Sync + 'static {
    /// The subscribers of a write to `bucket/key`, recorded with the event; none means the
    /// write raises no event. It must not block: it runs on the request's own thread.
    fn subscribers(&self, bucket: &str, key: &str) -> Vec<String>;
    /// Called after the object and its event are committed, before the writer gets its answer,
    /// on the store's commit thread: it must be quick and must not write to this store (the
    /// next commit waits for it). It must be idempotent by `event.id`: an event is delivered again
    /// after a crash, and whenever the sink asks for [`crate::Store::pending_events`], until
    /// the sink reports it done. An error is logged and the event stays in the outbox; the
    /// write itself has succeeded.
    fn object_created(&self, event: &ObjectCreated) -> Result<(), EventError>;

    /// Called on the commit thread once the write's transaction holds the event and just
    /// before it is committed; [`Self::object_created`] or [`Self::object_abandoned`] follows
    /// for the same event. A sink may ready the event's consequences here, so that they
    /// overlap the commit's flush to disk, but nothing of them may take effect (a job's first
    /// line, an answer to anyone) before `object_created`: the write may still fail.
    /// `content` is the object's bytes when the store holds them in memory (an object small
    /// enough to live in the index): the object itself is not visible before the commit.
    fn object_committing(&self, _event: &ObjectCreated, _content: Option<&[u8]>) {}

    /// The commit that held an event announced by [`Self::object_committing`] failed: the
    /// write did not happen, and the event will never be delivered.
    fn object_abandoned(&self, _event: &ObjectCreated) {}
}

/// A write raised an event, handed to its sink after the commit; `delivery` is how long the
/// sink took.
pub(crate) struct Raised {
    pub delivery: Duration,
}

/// Hands a committed write's event to `events`. The write has succeeded whatever happens
/// here: its event is durable in the outbox, and one the sink could not take now (an error,
/// or a panic, caught so that the thread delivering goes on) is delivered again later.
pub(crate) fn deliver(events: &dyn ObjectEvents, event: ObjectCreated) -> Raised {
    let began = Instant::now();
    let delivered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| events.object_created(&event)));
    match delivered {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(error = %e, event = event.id, bucket = %event.bucket, key = %event.key, "cannot record an upload's consequences now; its event stays queued")
        }
        Err(_) => tracing::error!(
            event = event.id,
            "the event sink panicked; the event stays queued"
        ),
    }
    Raised {
        delivery: began.elapsed(),
    }
}

/// Tells `events` a write's commit is about to run (a panicking sink is logged, not fatal to
/// the commit thread).
pub(crate) fn announce(events: &dyn ObjectEvents, event: &ObjectCreated, content: Option<&[u8]>) {
    let announced = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        events.object_committing(event, content)
    }));
    if announced.is_err() {
        tracing::error!(event = event.id, "the event sink panicked before a commit");
    }
}

/// Tells `events` an announced write's commit failed.
pub(crate) fn abandon(events: &dyn ObjectEvents, event: &ObjectCreated) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| events.object_abandoned(event))).is_err() {
        tracing::error!(event = event.id, "the event sink panicked after a failed commit");
    }
}

/// A sink that ignores every write.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoEvents;

impl ObjectEvents for NoEvents {
    fn subscribers(&self, _: &str, _: &str) -> Vec<String> {
        Vec::new()
    }
    fn object_created(&self, _: &ObjectCreated) -> Result<(), EventError> {
        Ok(())
    }
}
