//! Counters that never go back, even when an older copy of the store is put in place of the
//! current one.
//!
//! Counters live in the store like records, each encrypted under its name. On its own that
//! makes them only as monotonic as the disk: whoever controls the disk can put back last
//! week's copy of `cas.redb`, and every counter is last week's again. Three things close that:
//!
//! - **A generation.** Every transaction that increments a counter also raises the store's
//!   counter generation by one (`meta` `counters.state`, encrypted and bound to its purpose).
//!   An older copy of the store has a lower generation.
//! - **A digest.** The same record holds the sum, modulo 2²⁵⁶, of HMAC-SHA256(name, value)
//!   over every counter, under a key derived from the master key, updated incrementally by each
//!   increment. It is checked against the counters at every unseal, so a counter's ciphertext
//!   copied from an older copy into the current file (the AAD binds a blob to its name, not to
//!   its version) is found out too.
//! - **An anchor outside the store.** After such a transaction commits, and before its caller
//!   gets an answer, the new generation is written durably to a small file kept apart from the
//!   store (the *counter anchor*: two slots, each the generation encrypted under the data key
//!   with the CAS identity in its AAD; a write replaces the slot of its parity and `fdatasync`s,
//!   so a torn write leaves the other slot, one generation older, intact). At unseal the store's
//!   generation must be at least the anchor's. A store below its anchor is an older copy: the
//!   vault refuses to unseal ([`StoreError::Rollback`]) unless the operator opens it with
//!   [`VaultOptions::accept_rollback`], which is audited and moves the generation above the
//!   anchor so that what follows is ordered again.
//!
//! Crash consistency: the store commits first, the anchor follows. A crash in between leaves
//! the anchor one step behind the store, which is the normal case of the check (anchor ≤
//! store), and the unseal brings the anchor up to the store. Only an anchor *above* the store
//! means a rollback. An answer (a released configuration, an incremented value) goes out only
//! once both are written, so no value a client has seen can be taken back by restoring the
//! store alone.
//!
//! A refused unseal leaves the vault sealed, and a CAS that unseals at start (key-file, TEE)
//! exits: its audit log cannot take the refusal then. The refusal is **journaled** instead, in
//! `<anchor>.refusals` beside the anchor (one line per refusal: the time, who unsealed and why,
//! AES-GCM-sealed under the data key with the CAS identity in the AAD, so nobody without the
//! key can forge one; the file is appended to with `fdatasync` and kept under 1 MiB). The next
//! unseal moves every authentic line into the audit log (`unseal-refused`, with the time it
//! happened) in its own transaction, counts lines that fail authentication
//! (`unseal-refusal-journal-unauthentic`), and empties the journal once that committed. The
//! host can delete the journal, as it can the anchor; it cannot make up a refusal.
//!
//! What the file anchor does not defend against: someone who restores an older copy of the
//! store **and** of the anchor together (the host controls both disks). A file can only raise
//! the bar to "restore two files that may live on different disks, under different owners";
//! keep the anchor away from the store's directory and its backups. The hardware answer is a
//! monotonic source the host cannot roll back: a TPM NV counter, a TEE's monotonic counter or
//! an external witness (a replicated log) that the generation is written to instead of, or
//! besides, the file.

use std::fs::{File, OpenOptions};
use std::io::Read as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use redb::{ReadableTable, WriteTransaction};
use serde_json::{Value, json};

use super::records::decode_counter;
use super::{COUNTERS, Keys, META};
use crate::StoreError;
use crate::crypto::{Purpose, aad};

/// The anchor's file name when [`VaultOptions::counter_anchor`] is not given: inside the vault
/// directory, where restoring the whole directory restores the anchor too. Production should
/// keep it elsewhere.
pub const ANCHOR_FILE: &str = "counter.anchor";

/// `<dir>.counter-anchor`, beside the vault directory rather than in it, where restoring the
/// directory from a backup does not restore the anchor with it: where `cloister cas` keeps it
/// unless told otherwise.
pub fn anchor_beside(dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .map_or_else(|| "cas-data".into(), |n| n.to_string_lossy().into_owned());
    dir.parent()
        .unwrap_or_else(|| Path::new(""))
        .join(format!("{name}.counter-anchor"))
}

const M_COUNTER_STATE: &str = "counters.state";
/// The refusal journal's size limit (bytes): refusals beyond it are not journaled.
const MAX_JOURNAL: u64 = 1 << 20;
const SLOT_SIZE: u64 = 4096;
const SLOT_MAGIC: &[u8; 8] = b"CLCANCH1";

/// The sum of the counters' tags, modulo 2²⁵⁶ (big-endian).
pub(super) type Digest = [u8; 32];

/// How a vault keeps its counter anchor, and what it does with a store older than the anchor.
#[derive(Debug, Clone, Default)]
pub struct VaultOptions {
    /// Where the counter anchor lives; [`ANCHOR_FILE`] in the vault directory when `None`.
    pub counter_anchor: Option<PathBuf>,
    /// Unseal even a store older than its anchor (or one whose anchor is missing or damaged):
    /// its counters are then lower than values already handed out. Audited
    /// (`counter-rollback-accepted`); the generation moves above the anchor.
    pub accept_rollback: bool,
}

fn add(into: &mut Digest, tag: &Digest) {
    let mut carry = 0u16;
    for (a, b) in into.iter_mut().zip(tag).rev() {
        let sum = u16::from(*a) + u16::from(*b) + carry;
        *a = sum.to_be_bytes()[1];
        carry = sum >> 8;
    }
}

fn negate(tag: &Digest) -> Digest {
    // Two's complement: subtracting a tag is adding its negation.
    let mut out = [0u8; 32];
    for (o, t) in out.iter_mut().zip(tag) {
        *o = !t;
    }
    let mut one = [0u8; 32];
    one[31] = 1;
    add(&mut out, &one);
    out
}

fn tag(keys: &Keys, name: &str, value: u64) -> Digest {
    keys.digest.tag(&[name.as_bytes(), &value.to_be_bytes()])
}

/// What an increment of `name` from `old` to `new` changes in the digest, added to `delta`.
pub(super) fn account(keys: &Keys, delta: &mut Option<Digest>, name: &str, old: u64, new: u64) {
    let d = delta.get_or_insert([0u8; 32]);
    if old > 0 {
        add(d, &negate(&tag(keys, name, old)));
    }
    add(d, &tag(keys, name, new));
}

/// The store's counter generation and digest.
struct CounterState {
    generation: u64,
    digest: Digest,
}

fn read_state(txn: &WriteTransaction, keys: &Keys) -> Result<Option<CounterState>, StoreError> {
    let meta = txn.open_table(META)?;
    let Some(blob) = meta.get(M_COUNTER_STATE)? else {
        return Ok(None);
    };
    let plain = keys
        .data
        .open(&aad(Purpose::CounterState, &[]), blob.value())
        .ok_or_else(|| StoreError::Corrupt("the counter state failed authentication".into()))?;
    let (generation, digest) = plain
        .split_at_checked(8)
        .ok_or_else(|| StoreError::Corrupt("the counter state is malformed".into()))?;
    Ok(Some(CounterState {
        generation: u64::from_be_bytes(
            generation
                .try_into()
                .map_err(|_| StoreError::Corrupt("the counter state is malformed".into()))?,
        ),
        digest: digest
            .try_into()
            .map_err(|_| StoreError::Corrupt("the counter state is malformed".into()))?,
    }))
}

fn write_state(txn: &WriteTransaction, keys: &Keys, state: &CounterState) -> Result<(), StoreError> {
    let mut plain = state.generation.to_be_bytes().to_vec();
    plain.extend_from_slice(&state.digest);
    let blob = keys.data.seal(&aad(Purpose::CounterState, &[]), &plain)?;
    txn.open_table(META)?.insert(M_COUNTER_STATE, blob.as_slice())?;
    Ok(())
}

/// The state of a new store: generation 0, no counters.
pub(super) fn init_state(txn: &WriteTransaction, keys: &Keys) -> Result<(), StoreError> {
    write_state(
        txn,
        keys,
        &CounterState {
            generation: 0,
            digest: [0u8; 32],
        },
    )
}

/// Raises the generation by one and adds `delta` to the digest, in the transaction that made
/// the increments; returns the new generation, for the anchor once committed.
pub(super) fn advance(txn: &WriteTransaction, keys: &Keys, delta: &Digest) -> Result<u64, StoreError> {
    let mut state =
        read_state(txn, keys)?.ok_or_else(|| StoreError::Corrupt("the counter state is missing".into()))?;
    state.generation = state
        .generation
        .checked_add(1)
        .ok_or_else(|| StoreError::Corrupt("the counter generation is exhausted".into()))?;
    add(&mut state.digest, delta);
    write_state(txn, keys, &state)?;
    Ok(state.generation)
}

/// The digest the authentic counters stored in `txn` add up to, and the names of those that
/// fail authentication (left out).
fn digest_of_counters(txn: &WriteTransaction, keys: &Keys) -> Result<(Digest, Vec<String>), StoreError> {
    let mut digest = [0u8; 32];
    let mut unauthentic = Vec::new();
    for item in txn.open_table(COUNTERS)?.iter()? {
        let (name, blob) = item?;
        let name = name.value();
        match decode_counter(keys, name, blob.value()) {
            Ok(value) => add(&mut digest, &tag(keys, name, value)),
            Err(_) => unauthentic.push(name.to_owned()),
        }
    }
    Ok((digest, unauthentic))
}

/// What the anchor file says.
enum AnchorRead {
    Missing,
    Unreadable(String),
    At(u64),
}

/// What the unseal does about counters: the generation the anchor must be brought to once the
/// unseal commits, and an audit detail when a rollback was accepted.
pub(super) struct Settled {
    pub(super) generation: u64,
    pub(super) accepted: Option<Value>,
}

/// The counter anchor of a vault (see the module documentation).
pub(super) struct Anchor {
    path: PathBuf,
    accept_rollback: bool,
    file: Mutex<AnchorFile>,
}

struct AnchorFile {
    handle: Option<File>,
    /// The highest generation known to be on disk.
    written: u64,
}

impl Anchor {
    pub(super) fn new(dir: &Path, options: &VaultOptions) -> Self {
        Self {
            path: options
                .counter_anchor
                .clone()
                .unwrap_or_else(|| dir.join(ANCHOR_FILE)),
            accept_rollback: options.accept_rollback,
            file: Mutex::new(AnchorFile {
                handle: None,
                written: 0,
            }),
        }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, AnchorFile> {
        // Every update is one assignment after a completed write: consistent even if poisoned.
        self.file.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A fresh anchor at generation 0, replacing whatever the path held (a new vault's key
    /// makes an old anchor meaningless).
    pub(super) fn create(&self, keys: &Keys, identity: &[u8; 32]) -> Result<(), StoreError> {
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let file = options
            .open(&self.path)
            .map_err(|e| StoreError::io(format!("creating the counter anchor {}", self.path.display()), e))?;
        write_slot(&file, &self.path, keys, identity, 0)?;
        sync_parent(&self.path)?;
        let mut state = self.lock();
        state.handle = Some(file);
        state.written = 0;
        Ok(())
    }

    fn read(&self, keys: &Keys, identity: &[u8; 32]) -> AnchorRead {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return AnchorRead::Missing,
            Err(e) => return AnchorRead::Unreadable(format!("cannot read it: {e}")),
        };
        let mut bytes = Vec::new();
        // The file is two slots; a larger one is read no further.
        if let Err(e) = file.take(2 * SLOT_SIZE).read_to_end(&mut bytes) {
            return AnchorRead::Unreadable(format!("cannot read it: {e}"));
        }
        let slots = [0u64, SLOT_SIZE].map(|offset| {
            let at = usize::try_from(offset).ok()?;
            let slot = bytes.get(at..at + SLOT_MAGIC.len() + BLOB_LEN)?;
            let (magic, blob) = slot.split_at(SLOT_MAGIC.len());
            if magic != SLOT_MAGIC {
                return None;
            }
            let plain = keys.data.open(&aad(Purpose::Anchor, &[identity]), blob)?;
            Some(u64::from_be_bytes(plain.as_slice().try_into().ok()?))
        });
        match slots.into_iter().flatten().max() {
            Some(generation) => AnchorRead::At(generation),
            None => AnchorRead::Unreadable(
                "no slot is authentic (damaged, or the anchor of another vault)".into(),
            ),
        }
    }

    /// Writes `generation` durably unless the anchor already holds it or more.
    pub(super) fn advance(
        &self,
        keys: &Keys,
        identity: &[u8; 32],
        generation: u64,
    ) -> Result<(), StoreError> {
        let mut state = self.lock();
        if generation <= state.written {
            return Ok(());
        }
        let file = match state.handle.take() {
            Some(file) => file,
            None => open_anchor(&self.path)?,
        };
        let written = write_slot(&file, &self.path, keys, identity, generation);
        state.handle = Some(file);
        written?;
        state.written = generation;
        Ok(())
    }

    /// The unseal's check, inside its transaction: the store's generation against the anchor,
    /// the digest against the counters. Initializes the state of a store written before
    /// counters had one; accepts a rollback only when told to (and says so for the audit).
    pub(super) fn check(
        &self,
        txn: &WriteTransaction,
        keys: &Keys,
        identity: &[u8; 32],
    ) -> Result<Settled, StoreError> {
        let anchor = self.read(keys, identity);
        let (counted, unauthentic) = digest_of_counters(txn, keys)?;
        let state = read_state(txn, keys)?;
        let shown = |a: &AnchorRead| match a {
            AnchorRead::Missing => json!("missing"),
            AnchorRead::Unreadable(_) => json!("unreadable"),
            AnchorRead::At(g) => json!(g),
        };
        let path = self.path.display();
        let refusal = match (&state, &anchor) {
            _ if !unauthentic.is_empty() => Some(format!(
                "counters fail authentication (altered, or moved from another name): {}",
                unauthentic.join(", ")
            )),
            (Some(s), _) if s.digest != counted => Some(
                "the counters do not add up to their digest: a counter was altered or copied \
                 back from an older copy of the store"
                    .to_owned(),
            ),
            (_, AnchorRead::Unreadable(why)) => Some(format!("the counter anchor {path} is unusable: {why}")),
            // Every store that has a counter state was given an anchor when it got the state
            // (at init, or at the first unseal of an older store): a missing one was removed.
            (Some(s), AnchorRead::Missing) => Some(format!(
                "the counter anchor {path} is missing while the store is at counter generation {} \
                 (if it was moved, give its path)",
                s.generation
            )),
            (None, AnchorRead::At(a)) if *a > 0 => Some(format!(
                "the store has no counter generation but its anchor {path} is at {a}: an older \
                 copy of the store was put back"
            )),
            (Some(s), AnchorRead::At(a)) if *a > s.generation => Some(format!(
                "the store is at counter generation {} but its anchor {path} is at {a}: an older \
                 copy of the store was put back, and its counters are lower than values already \
                 handed out",
                s.generation
            )),
            _ => None,
        };
        let anchor_shown = shown(&anchor);
        let anchor_generation = match anchor {
            AnchorRead::At(a) => a,
            _ => 0,
        };
        let Some(reason) = refusal else {
            let generation = match state {
                Some(s) => s.generation,
                None => {
                    write_state(
                        txn,
                        keys,
                        &CounterState {
                            generation: 0,
                            digest: counted,
                        },
                    )?;
                    0
                }
            };
            return Ok(Settled {
                generation,
                accepted: None,
            });
        };
        if !self.accept_rollback {
            return Err(StoreError::Rollback(reason));
        }
        let store_generation = state.as_ref().map_or(0, |s| s.generation);
        let generation = store_generation
            .max(anchor_generation)
            .checked_add(1)
            .ok_or_else(|| StoreError::Corrupt("the counter generation is exhausted".into()))?;
        write_state(
            txn,
            keys,
            &CounterState {
                generation,
                digest: counted,
            },
        )?;
        Ok(Settled {
            generation,
            accepted: Some(json!({
                "reason": reason,
                "store_generation": store_generation,
                "anchor_generation": anchor_shown,
                "new_generation": generation,
            })),
        })
    }

    /// The refusal journal: the anchor's path with `.refusals` added.
    fn journal_path(&self) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(".refusals");
        PathBuf::from(name)
    }

    /// Journals a refused unseal (see the module documentation), durably.
    pub(super) fn journal_refusal(
        &self,
        keys: &Keys,
        identity: &[u8; 32],
        actor: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        let at = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let record = serde_json::to_vec(&json!({"at": at, "actor": actor, "reason": reason}))
            .map_err(|e| StoreError::Corrupt(format!("cannot encode a refusal: {e}")))?;
        let blob = keys
            .data
            .seal(&aad(Purpose::UnsealRefusal, &[identity]), &record)?;
        let path = self.journal_path();
        let failed = |e| StoreError::io(format!("journaling a refused unseal in {}", path.display()), e);
        let existed = path.exists();
        let mut options = OpenOptions::new();
        options.append(true).create(true);
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(&path).map_err(failed)?;
        if file.metadata().map_err(failed)?.len() >= MAX_JOURNAL {
            return Err(failed(std::io::Error::other("the journal is full")));
        }
        use std::io::Write as _;
        file.write_all(format!("{}\n", hex::encode(blob)).as_bytes())
            .and_then(|()| file.sync_data())
            .map_err(failed)?;
        if !existed {
            sync_parent(&path)?;
        }
        Ok(())
    }

    /// The journaled refusals that authenticate, and how many lines do not.
    pub(super) fn journaled_refusals(&self, keys: &Keys, identity: &[u8; 32]) -> (Vec<Value>, usize) {
        let Ok(file) = File::open(self.journal_path()) else {
            return (Vec::new(), 0);
        };
        let mut text = Vec::new();
        if file.take(MAX_JOURNAL).read_to_end(&mut text).is_err() {
            return (Vec::new(), 1);
        }
        let mut records = Vec::new();
        let mut unauthentic = 0;
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let record = hex::decode(line)
                .ok()
                .and_then(|blob| keys.data.open(&aad(Purpose::UnsealRefusal, &[identity]), &blob))
                .and_then(|plain| serde_json::from_slice::<Value>(&plain).ok());
            match record {
                Some(record) => records.push(record),
                None => unauthentic += 1,
            }
        }
        (records, unauthentic)
    }

    /// Empties the journal once its refusals are in the audit log.
    pub(super) fn clear_journal(&self) -> Result<(), StoreError> {
        let path = self.journal_path();
        match OpenOptions::new().write(true).open(&path) {
            Ok(file) => file
                .set_len(0)
                .and_then(|()| file.sync_data())
                .map_err(|e| StoreError::io(format!("emptying {}", path.display()), e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(format!("emptying {}", path.display()), e)),
        }
    }

    /// After the unseal committed: the anchor learns the store's generation (a crash between a
    /// commit and its anchor write left it behind; an accepted rollback moved it on).
    pub(super) fn settle(&self, keys: &Keys, identity: &[u8; 32], generation: u64) -> Result<(), StoreError> {
        let on_disk = match self.read(keys, identity) {
            AnchorRead::At(a) => Some(a),
            _ => None,
        };
        let mut state = self.lock();
        state.handle = None;
        match on_disk {
            Some(a) if a >= generation => state.written = a,
            _ => {
                let file = open_anchor(&self.path)?;
                write_slot(&file, &self.path, keys, identity, generation)?;
                state.handle = Some(file);
                state.written = generation;
            }
        }
        Ok(())
    }
}

/// Opens the anchor for writing, creating it (durably: its directory is synced) if missing.
fn open_anchor(path: &Path) -> Result<File, StoreError> {
    let existed = path.exists();
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(false);
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let file = options
        .open(path)
        .map_err(|e| StoreError::io(format!("opening the counter anchor {}", path.display()), e))?;
    if !existed {
        sync_parent(path)?;
    }
    Ok(file)
}

/// Encrypted generation: version, nonce, 8 bytes, tag.
const BLOB_LEN: usize = 1 + 12 + 8 + 16;

fn write_slot(
    file: &File,
    path: &Path,
    keys: &Keys,
    identity: &[u8; 32],
    generation: u64,
) -> Result<(), StoreError> {
    let blob = keys
        .data
        .seal(&aad(Purpose::Anchor, &[identity]), &generation.to_be_bytes())?;
    let mut slot = SLOT_MAGIC.to_vec();
    slot.extend_from_slice(&blob);
    let offset = (generation % 2) * SLOT_SIZE;
    file.write_all_at(&slot, offset)
        .and_then(|()| file.sync_data())
        .map_err(|e| StoreError::io(format!("writing the counter anchor {}", path.display()), e))
}

fn sync_parent(path: &Path) -> Result<(), StoreError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(format!("syncing directory {}", parent.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_arithmetic_wraps_and_negation_cancels() {
        let mut d = [0xffu8; 32];
        let mut one = [0u8; 32];
        one[31] = 1;
        add(&mut d, &one);
        assert_eq!(d, [0u8; 32]);
        let t = [0x5au8; 32];
        let mut d = [0x13u8; 32];
        let before = d;
        add(&mut d, &t);
        assert_ne!(d, before);
        add(&mut d, &negate(&t));
        assert_eq!(d, before);
    }
}
