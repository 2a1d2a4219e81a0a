//! The outbox table: object-created events committed with their objects (see
//! [`crate::events`]).

use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::events::ObjectCreated;
use crate::index::{Db, IndexError, META, ObjectRecord, decode, encode};

/// Event id → [`StoredEvent`].
pub(crate) const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
/// The next event id, in [`META`]; never reused, so a sink's record of the ids it handled
/// cannot be confused by a later event.
const NEXT_EVENT: &str = "next_event";

/// What a write that raises an event knows before it commits.
#[derive(Debug, Clone)]
pub(crate) struct EventDraft {
    pub subscribers: Vec<String>,
    pub principal: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredEvent {
    bucket: String,
    key: String,
    size: u64,
    etag: String,
    modified: i64,
    principal: String,
    subscribers: Vec<String>,
}

/// Records the event of `record`'s write in `txn`, the transaction that installs `record`.
/// Call it after every check of the write has passed: it mutates.
pub(crate) fn append(
    txn: &WriteTransaction,
    bucket: &str,
    key: &str,
    record: &ObjectRecord,
    draft: &EventDraft,
) -> Result<ObjectCreated, IndexError> {
    let id = {
        let mut meta = txn.open_table(META).db()?;
        let id = match meta.get(NEXT_EVENT).db()? {
            Some(v) => <[u8; 8]>::try_from(v.value())
                .map(u64::from_be_bytes)
                .map_err(|_| IndexError::Db("the outbox's event counter is corrupt".to_owned()))?,
            None => 1,
        };
        meta.insert(NEXT_EVENT, (id + 1).to_be_bytes().as_slice()).db()?;
        id
    };
    let stored = StoredEvent {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        size: record.size,
        etag: record.etag.clone(),
        modified: record.modified,
        principal: draft.principal.clone(),
        subscribers: draft.subscribers.clone(),
    };
    txn.open_table(OUTBOX)
        .db()?
        .insert(id, encode(&stored)?.as_slice())
        .db()?;
    Ok(event(id, stored))
}

fn event(id: u64, stored: StoredEvent) -> ObjectCreated {
    ObjectCreated {
        id,
        bucket: stored.bucket,
        key: stored.key,
        size: stored.size,
        etag: stored.etag,
        time: crate::store::time_of(stored.modified),
        principal: stored.principal,
        subscribers: stored.subscribers,
    }
}

/// Every event in the outbox, oldest first.
pub(crate) fn pending(txn: &redb::ReadTransaction) -> Result<Vec<ObjectCreated>, IndexError> {
    let table = txn.open_table(OUTBOX).db()?;
    let mut out = Vec::new();
    for entry in table.iter().db()? {
        let (id, value) = entry.db()?;
        out.push(event(id.value(), decode(value.value())?));
    }
    Ok(out)
}

/// Removes handled events.
pub(crate) fn remove(txn: &WriteTransaction, ids: &[u64]) -> Result<(), IndexError> {
    let mut table = txn.open_table(OUTBOX).db()?;
    for id in ids {
        table.remove(*id).db()?;
    }
    Ok(())
}
