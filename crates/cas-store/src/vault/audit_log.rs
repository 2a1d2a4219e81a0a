//! The audit table of a [`Vault`]: signed, hash-chained entries appended in the same
//! transactions as the records they account for, and the events that happen while the vault is
//! sealed (no signing key), queued until the next unseal.

use redb::{ReadableDatabase, ReadableTable, WriteTransaction};
use serde_json::Value;
use time::OffsetDateTime;

use super::{AUDIT, State, Vault, WriteTxn, check_name};
use crate::StoreError;
use crate::audit::{AuditEntry, GENESIS_PREV, make_entry};
use crate::signer::IdentitySigner;

/// Events recorded while sealed are kept in memory up to this many; beyond it they are counted
/// and the count is logged, so an unauthenticated caller hammering the unseal endpoint cannot
/// exhaust memory.
const MAX_PENDING: usize = 1024;

/// An event that happened while sealed, with its time, waiting for the next unseal.
pub(super) struct Pending {
    pub(super) time: OffsetDateTime,
    pub(super) kind: String,
    pub(super) actor: String,
    pub(super) subject: String,
    pub(super) detail: Value,
}

impl State {
    /// Keeps an event for the next unseal, or only counts it once the queue is full.
    pub(super) fn queue(&mut self, kind: &str, actor: &str, subject: &str, detail: Value) {
        if self.pending.len() >= MAX_PENDING {
            self.dropped = self.dropped.saturating_add(1);
            return;
        }
        self.pending.push(Pending {
            time: OffsetDateTime::now_utc(),
            kind: kind.to_owned(),
            actor: actor.to_owned(),
            subject: subject.to_owned(),
            detail,
        });
    }
}

fn parse_stored_entry(seq: u64, bytes: &[u8]) -> Result<AuditEntry, StoreError> {
    let entry: AuditEntry = serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt(format!("audit entry {seq} cannot be decoded: {e}")))?;
    if entry.seq != seq {
        return Err(StoreError::Corrupt(format!(
            "audit entry stored under {seq} says seq {}",
            entry.seq
        )));
    }
    Ok(entry)
}

/// The last entry of the audit log, which the next one chains on: its seq and hash, or seq 0
/// and [`GENESIS_PREV`] for an empty log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AuditHead {
    pub(crate) seq: u64,
    pub(crate) hash: String,
}

impl AuditHead {
    fn after(entry: &AuditEntry) -> Self {
        Self {
            seq: entry.seq,
            hash: entry.hash.clone(),
        }
    }

    /// Whether `entry` is the one that follows this head.
    pub(crate) fn is_followed_by(&self, entry: &AuditEntry) -> bool {
        self.seq.checked_add(1) == Some(entry.seq) && self.hash == entry.prev
    }
}

fn read_head(table: &impl ReadableTable<u64, &'static [u8]>) -> Result<AuditHead, StoreError> {
    Ok(match table.last()? {
        Some((k, v)) => AuditHead::after(&parse_stored_entry(k.value(), v.value())?),
        None => AuditHead {
            seq: 0,
            hash: GENESIS_PREV.to_owned(),
        },
    })
}

/// Builds and signs the entry that follows `head`.
#[allow(clippy::too_many_arguments)]
fn entry_after(
    head: &AuditHead,
    signer: &IdentitySigner,
    time: OffsetDateTime,
    kind: &str,
    actor: &str,
    subject: &str,
    detail: Value,
) -> Result<AuditEntry, StoreError> {
    check_name("audit kind", kind)?;
    let seq = head
        .seq
        .checked_add(1)
        .ok_or_else(|| StoreError::Corrupt("audit sequence exhausted".into()))?;
    make_entry(signer, seq, head.hash.clone(), time, kind, actor, subject, detail)
        .map_err(StoreError::InvalidArgument)
}

fn insert_entry(txn: &WriteTransaction, entry: &AuditEntry) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(entry)
        .map_err(|e| StoreError::InvalidArgument(format!("audit entry cannot be encoded: {e}")))?;
    txn.open_table(AUDIT)?.insert(entry.seq, bytes.as_slice())?;
    Ok(())
}

/// Appends one signed entry after the current head, inside `txn`.
pub(super) fn append_audit(
    txn: &WriteTransaction,
    signer: &IdentitySigner,
    time: OffsetDateTime,
    kind: &str,
    actor: &str,
    subject: &str,
    detail: Value,
) -> Result<AuditEntry, StoreError> {
    check_name("audit kind", kind)?;
    let head = read_head(&txn.open_table(AUDIT)?)?;
    let entry = entry_after(&head, signer, time, kind, actor, subject, detail)?;
    insert_entry(txn, &entry)?;
    Ok(entry)
}

impl Vault {
    /// Appends a signed entry to the audit log (durably) and returns it.
    ///
    /// `detail` and every string are stored **in clear**: pass names, hashes and reasons, never
    /// secrets. Fails with [`StoreError::Sealed`] while sealed (there is no signing key); use
    /// [`Vault::audit_note`] for events that must be kept even then.
    pub fn audit_append(
        &self,
        kind: &str,
        actor: &str,
        subject: &str,
        detail: Value,
    ) -> Result<AuditEntry, StoreError> {
        self.write(|t| t.audit_append(kind, actor, subject, detail))
    }

    /// Like [`Vault::audit_append`], but while sealed the event is queued in memory (with its
    /// time) and appended right after the next successful unseal; returns `None` then. At most
    /// 1024 events are queued; further ones are counted and an `audit-overflow` entry records
    /// how many were lost. Queued events are lost if the process stops while sealed.
    pub fn audit_note(
        &self,
        kind: &str,
        actor: &str,
        subject: &str,
        detail: Value,
    ) -> Result<Option<AuditEntry>, StoreError> {
        check_name("audit kind", kind)?;
        {
            let mut st = self.lock();
            if st.keys.is_none() {
                st.queue(kind, actor, subject, detail);
                return Ok(None);
            }
        }
        match self.audit_append(kind, actor, subject, detail.clone()) {
            // Sealed between the check and the append.
            Err(StoreError::Sealed) => {
                self.lock().queue(kind, actor, subject, detail);
                Ok(None)
            }
            other => other.map(Some),
        }
    }

    /// Up to `limit` audit entries from `from_seq` on (the first entry is seq 1). Entries are
    /// public, so this works while sealed.
    pub fn audit_entries(&self, from_seq: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(AUDIT)?;
        let mut out = Vec::new();
        for item in t.range(from_seq..)?.take(limit) {
            let (k, v) = item?;
            out.push(parse_stored_entry(k.value(), v.value())?);
        }
        Ok(out)
    }
}

impl Vault {
    /// The audit log's head as committed.
    pub(crate) fn audit_head(&self) -> Result<AuditHead, StoreError> {
        let txn = self.db.begin_read()?;
        read_head(&txn.open_table(AUDIT)?)
    }

    /// Signs entries for `records`, chained after `head`, outside any transaction (see
    /// `AuditWriter`): [`WriteTxn::audit_insert_signed`] stores them if `head` is still the
    /// head then.
    pub(crate) fn sign_audit_entries<'r>(
        &self,
        head: &AuditHead,
        records: impl IntoIterator<Item = &'r crate::AuditRecord>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let keys = self.unsealed_keys()?;
        let time = OffsetDateTime::now_utc();
        let mut head = head.clone();
        let mut entries = Vec::new();
        for record in records {
            let entry = entry_after(
                &head,
                &keys.signer,
                time,
                &record.kind,
                &record.actor,
                &record.subject,
                record.detail.clone(),
            )?;
            head = AuditHead::after(&entry);
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl WriteTxn<'_> {
    /// The audit log's head in this transaction.
    pub(crate) fn audit_head(&self) -> Result<AuditHead, StoreError> {
        read_head(&self.txn.open_table(AUDIT)?)
    }

    /// Stores entries signed ahead by [`Vault::sign_audit_entries`] if they follow this
    /// transaction's head; `false` (and nothing stored) if they do not.
    pub(crate) fn audit_insert_signed(&mut self, entries: &[AuditEntry]) -> Result<bool, StoreError> {
        let mut head = self.audit_head()?;
        if !entries.first().is_none_or(|first| head.is_followed_by(first)) {
            return Ok(false);
        }
        for entry in entries {
            if !head.is_followed_by(entry) {
                return Err(StoreError::InvalidArgument(
                    "audit entries signed ahead are not a chain".into(),
                ));
            }
            insert_entry(self.txn, entry)?;
            head = AuditHead::after(entry);
        }
        Ok(true)
    }

    /// Appends an audit entry within this transaction, so the event is recorded if and only if
    /// the other writes are. Same rules as [`Vault::audit_append`].
    pub fn audit_append(
        &mut self,
        kind: &str,
        actor: &str,
        subject: &str,
        detail: Value,
    ) -> Result<AuditEntry, StoreError> {
        append_audit(
            self.txn,
            &self.keys.signer,
            OffsetDateTime::now_utc(),
            kind,
            actor,
            subject,
            detail,
        )
    }
}
