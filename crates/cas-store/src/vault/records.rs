//! The encrypted record store of a [`Vault`]: records under (table, key) and monotonic
//! counters, each value AES-256-GCM under the data key with its place bound as associated
//! data; read from one snapshot or written in durable transactions that commit whole or not at
//! all.

use redb::{ReadableDatabase, ReadableTable, WriteTransaction};
use zeroize::Zeroizing;

use super::counters::{self, Digest};
use super::{COUNTERS, Keys, RECORDS, Vault, begin_durable, check_name};
use crate::StoreError;
use crate::crypto::{Purpose, aad};

pub(super) fn decode_counter(keys: &Keys, name: &str, blob: &[u8]) -> Result<u64, StoreError> {
    let plain = keys
        .data
        .open(&aad(Purpose::Counter, &[name.as_bytes()]), blob)
        .ok_or_else(|| StoreError::Corrupt(format!("counter {name:?} failed authentication")))?;
    let bytes: [u8; 8] = plain
        .as_slice()
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("counter {name:?} is malformed")))?;
    Ok(u64::from_be_bytes(bytes))
}

fn read_record<T: ReadableTable<(&'static str, &'static str), &'static [u8]>>(
    t: &T,
    keys: &Keys,
    table: &str,
    key: &str,
) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
    let Some(blob) = t.get((table, key))? else {
        return Ok(None);
    };
    keys.data
        .open(
            &aad(Purpose::Record, &[table.as_bytes(), key.as_bytes()]),
            blob.value(),
        )
        .map(Some)
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "record {table:?}/{key:?} failed authentication (altered, or moved from another record)"
            ))
        })
}

fn list_keys<T: ReadableTable<(&'static str, &'static str), &'static [u8]>>(
    t: &T,
    table: &str,
    prefix: &str,
) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    // (table, key) tuples sort by table, then key, so the matches are one contiguous run.
    for item in t.range((table, prefix)..)? {
        let (k, _) = item?;
        let (t_name, key) = k.value();
        if t_name != table || !key.starts_with(prefix) {
            break;
        }
        out.push(key.to_owned());
    }
    Ok(out)
}

impl Vault {
    /// Reads and decrypts one record. `Ok(None)` when absent; [`StoreError::Corrupt`] when the
    /// stored value fails authentication (altered, or copied from another table or key).
    pub fn get(&self, table: &str, key: &str) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let keys = self.unsealed_keys()?;
        let txn = self.db.begin_read()?;
        let t = txn.open_table(RECORDS)?;
        read_record(&t, &keys, table, key)
    }

    /// Reads several records from one snapshot: no write commits between them, so records
    /// written together are read together (never one from before a write and one from after).
    pub fn get_all(&self, records: &[(&str, &str)]) -> Result<Vec<Option<Zeroizing<Vec<u8>>>>, StoreError> {
        let keys = self.unsealed_keys()?;
        let txn = self.db.begin_read()?;
        let t = txn.open_table(RECORDS)?;
        records
            .iter()
            .map(|(table, key)| read_record(&t, &keys, table, key))
            .collect()
    }

    /// Record keys of `table` that start with `prefix`, in byte order.
    pub fn keys(&self, table: &str, prefix: &str) -> Result<Vec<String>, StoreError> {
        let _keys = self.unsealed_keys()?;
        let txn = self.db.begin_read()?;
        let t = txn.open_table(RECORDS)?;
        list_keys(&t, table, prefix)
    }

    /// Runs `f` in one write transaction, committed durably (fsync) if `f` returns `Ok`, rolled
    /// back entirely if it returns `Err` (the error is passed through). Writers are serialised;
    /// readers see either none or all of a transaction's writes.
    pub fn write<R>(
        &self,
        f: impl FnOnce(&mut WriteTxn<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let (r, generation) = self.write_unanchored(f)?;
        if let Some(generation) = generation {
            // Before anyone is told: a value handed out is never above the anchor.
            self.anchor_to(generation)?;
        }
        Ok(r)
    }

    /// [`Vault::write`] without the anchor write: also returns the counter generation the
    /// transaction committed, if it moved counters, which the caller must pass to
    /// [`Vault::anchor_to`] before telling anyone of the transaction.
    pub(crate) fn write_unanchored<R>(
        &self,
        f: impl FnOnce(&mut WriteTxn<'_>) -> Result<R, StoreError>,
    ) -> Result<(R, Option<u64>), StoreError> {
        let keys = self.unsealed_keys()?;
        let txn = begin_durable(&self.db)?;
        let mut writes = WriteTxn {
            txn: &txn,
            keys: &keys,
            counted: None,
        };
        let result = f(&mut writes);
        let counted = writes.counted;
        // A transaction that moved counters moves the generation with them (see `counters`).
        let result = result.and_then(|r| {
            let generation = counted
                .map(|delta| counters::advance(&txn, &keys, &delta))
                .transpose()?;
            Ok((r, generation))
        });
        match result {
            Ok((r, generation)) => {
                txn.commit()?;
                Ok((r, generation))
            }
            Err(e) => {
                if let Err(abort) = txn.abort() {
                    tracing::warn!(error = %abort, "aborting a write transaction failed");
                }
                Err(e)
            }
        }
    }

    /// Writes `generation` to the counter anchor (durably) unless it holds as much already.
    pub(crate) fn anchor_to(&self, generation: u64) -> Result<(), StoreError> {
        let keys = self.unsealed_keys()?;
        self.anchor.advance(&keys, &self.identity_public, generation)
    }

    /// Increments the named monotonic counter durably and returns its new value (the first
    /// increment returns 1).
    pub fn counter_increment(&self, name: &str) -> Result<u64, StoreError> {
        self.write(|t| t.counter_increment(name))
    }

    /// The named counter's current value (0 if never incremented).
    pub fn counter_get(&self, name: &str) -> Result<u64, StoreError> {
        let keys = self.unsealed_keys()?;
        let txn = self.db.begin_read()?;
        let t = txn.open_table(COUNTERS)?;
        match t.get(name)? {
            Some(v) => decode_counter(&keys, name, v.value()),
            None => Ok(0),
        }
    }

    /// The counters whose names start with `prefix`, with their values, in name order, from
    /// one snapshot.
    pub fn counters(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let keys = self.unsealed_keys()?;
        let txn = self.db.begin_read()?;
        let t = txn.open_table(COUNTERS)?;
        let mut out = Vec::new();
        for item in t.range(prefix..)? {
            let (name, blob) = item?;
            let name = name.value();
            if !name.starts_with(prefix) {
                break;
            }
            out.push((name.to_owned(), decode_counter(&keys, name, blob.value())?));
        }
        Ok(out)
    }

    /// Where this vault keeps its counter anchor.
    pub fn counter_anchor(&self) -> &std::path::Path {
        self.anchor.path()
    }
}

/// One write transaction of [`Vault::write`]. Reads through it see its own writes.
pub struct WriteTxn<'a> {
    pub(super) txn: &'a WriteTransaction,
    pub(super) keys: &'a Keys,
    /// What this transaction's counter increments add to the counters' digest; `None` while
    /// it made none.
    pub(super) counted: Option<Digest>,
}

impl WriteTxn<'_> {
    /// Encrypts and stores `value` under `(table, key)`, replacing any previous value. Table
    /// and key names are stored in clear: never put secrets in them.
    pub fn put(&mut self, table: &str, key: &str, value: &[u8]) -> Result<(), StoreError> {
        check_name("table name", table)?;
        check_name("record key", key)?;
        let blob = self
            .keys
            .data
            .seal(&aad(Purpose::Record, &[table.as_bytes(), key.as_bytes()]), value)?;
        self.txn
            .open_table(RECORDS)?
            .insert((table, key), blob.as_slice())?;
        Ok(())
    }

    /// Reads a record, including writes made earlier in this transaction.
    pub fn get(&self, table: &str, key: &str) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let t = self.txn.open_table(RECORDS)?;
        read_record(&t, self.keys, table, key)
    }

    /// Removes a record; returns whether it existed.
    pub fn delete(&mut self, table: &str, key: &str) -> Result<bool, StoreError> {
        let mut t = self.txn.open_table(RECORDS)?;
        let existed = t.remove((table, key))?.is_some();
        Ok(existed)
    }

    /// Record keys of `table` that start with `prefix`, as this transaction sees them.
    pub fn keys(&self, table: &str, prefix: &str) -> Result<Vec<String>, StoreError> {
        let t = self.txn.open_table(RECORDS)?;
        list_keys(&t, table, prefix)
    }

    /// Increments a counter within this transaction (so it commits or rolls back with the
    /// other writes) and returns the new value.
    pub fn counter_increment(&mut self, name: &str) -> Result<u64, StoreError> {
        self.counter_increment_up_to(name, u64::MAX)?
            .ok_or_else(|| StoreError::InvalidArgument(format!("counter {name:?} is at its maximum")))
    }

    /// Increments a counter within this transaction unless it is already at `max`: the new
    /// value, or `None` (and nothing changed) at the limit.
    pub fn counter_increment_up_to(&mut self, name: &str, max: u64) -> Result<Option<u64>, StoreError> {
        check_name("counter name", name)?;
        let mut t = self.txn.open_table(COUNTERS)?;
        let current = match t.get(name)? {
            Some(v) => decode_counter(self.keys, name, v.value())?,
            None => 0,
        };
        if current >= max {
            return Ok(None);
        }
        let next = current + 1;
        let blob = self
            .keys
            .data
            .seal(&aad(Purpose::Counter, &[name.as_bytes()]), &next.to_be_bytes())?;
        t.insert(name, blob.as_slice())?;
        counters::account(self.keys, &mut self.counted, name, current, next);
        Ok(Some(next))
    }

    /// A counter's value as this transaction sees it (0 if never incremented).
    pub fn counter_get(&self, name: &str) -> Result<u64, StoreError> {
        let t = self.txn.open_table(COUNTERS)?;
        match t.get(name)? {
            Some(v) => decode_counter(self.keys, name, v.value()),
            None => Ok(0),
        }
    }
}
