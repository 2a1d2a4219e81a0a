//! The vault: the CAS's encrypted records, counters, identity key and audit log in one redb
//! database, and the seal state of the master key.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ed25519_dalek::SigningKey;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde_json::{Value, json};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::StoreError;
use crate::audit::{AuditEntry, GENESIS_PREV, make_entry};
use crate::crypto::{DataKey, MASTER_KEY_LEN, MasterKey, Purpose, aad, fill_random};
use crate::sealing::{InitOutput, SealingConfig, Status, TeeSealer};
use crate::shamir::{Share, combine, split};

/// The database file inside the vault directory.
pub const DB_FILE: &str = "cas.redb";
/// Where a TEE-sealed master key blob is kept inside the vault directory.
pub const TEE_BLOB_FILE: &str = "master.tee";
/// The key file name [`SealingConfig::KeyFile`] conventionally uses (`master.key`).
pub const KEY_FILE: &str = "master.key";

const DB_INIT_FILE: &str = "cas.redb.init";
const FORMAT: &[u8] = b"cloister-cas-store/1";
const KEY_CHECK_PLAINTEXT: &[u8] = b"cloister-cas key check v1";
/// Events recorded while sealed are kept in memory up to this many; beyond it they are counted
/// and the count is logged, so an unauthenticated caller hammering the unseal endpoint cannot
/// exhaust memory.
const MAX_PENDING: usize = 1024;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const RECORDS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("records");
const COUNTERS: TableDefinition<&str, &[u8]> = TableDefinition::new("counters");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

const M_FORMAT: &str = "format";
const M_SEALING: &str = "sealing";
const M_SHAMIR_SHARES: &str = "shamir.shares";
const M_SHAMIR_THRESHOLD: &str = "shamir.threshold";
const M_SHAMIR_SET: &str = "shamir.set";
const M_KEY_FILE: &str = "key-file.path";
const M_TEE_NAME: &str = "tee.name";
const M_IDENTITY_PUBLIC: &str = "identity.public";
const M_IDENTITY_SECRET: &str = "identity.secret";
const M_KEY_CHECK: &str = "key-check";

enum Mode {
    Shamir { shares: u8, threshold: u8, set: [u8; 4] },
    KeyFile { path: PathBuf },
    Tee { name: String },
}

impl Mode {
    fn label(&self) -> String {
        match self {
            Mode::Shamir { .. } => "shamir".into(),
            Mode::KeyFile { .. } => "key-file".into(),
            Mode::Tee { name } => format!("tee:{name}"),
        }
    }
}

/// What exists only while unsealed.
struct Keys {
    data: DataKey,
    identity: SigningKey,
}

struct Pending {
    time: OffsetDateTime,
    kind: String,
    actor: String,
    subject: String,
    detail: Value,
}

#[derive(Default)]
struct State {
    keys: Option<Arc<Keys>>,
    collected: Vec<Share>,
    pending: Vec<Pending>,
    dropped: u64,
}

impl State {
    fn queue(&mut self, kind: &str, actor: &str, subject: &str, detail: Value) {
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

/// The CAS's durable, encrypted state. `Send + Sync`: share it behind an `Arc`.
///
/// See the crate documentation for the on-disk format.
pub struct Vault {
    db: Database,
    mode: Mode,
    identity_public: [u8; 32],
    key_check: Vec<u8>,
    identity_secret: Vec<u8>,
    state: Mutex<State>,
}

fn io_err(context: &str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let context = format!("{context} {}", path.display());
    move |e| StoreError::io(context, e)
}

fn resolve(dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        dir.join(path)
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing directory", dir))
}

/// Writes a new file (refusing to replace one) with owner-only permissions and syncs it.
fn write_new_private(path: &Path, contents: &[u8]) -> Result<(), StoreError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path).map_err(io_err("creating", path))?;
    f.write_all(contents)
        .and_then(|()| f.sync_all())
        .map_err(io_err("writing", path))
}

fn check_name(what: &str, name: &str) -> Result<(), StoreError> {
    if name.is_empty() {
        return Err(StoreError::InvalidArgument(format!(
            "the {what} must not be empty"
        )));
    }
    Ok(())
}

fn read_key_file(path: &Path) -> Result<MasterKey, StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = fs::metadata(path)
            && m.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", m.permissions().mode() & 0o777),
                "master key file is accessible by group or others"
            );
        }
    }
    let text = Zeroizing::new(fs::read_to_string(path).map_err(io_err("reading key file", path))?);
    let mut key = Zeroizing::new([0u8; MASTER_KEY_LEN]);
    hex::decode_to_slice(text.trim(), key.as_mut_slice()).map_err(|_| {
        StoreError::Corrupt(format!("key file {} does not hold 64 hex digits", path.display()))
    })?;
    Ok(MasterKey::from_bytes(&key))
}

fn meta_get<T: ReadableTable<&'static str, &'static [u8]>>(t: &T, name: &str) -> Result<Vec<u8>, StoreError> {
    t.get(name)?
        .map(|v| v.value().to_vec())
        .ok_or_else(|| StoreError::Corrupt(format!("metadata field {name:?} is missing")))
}

fn meta_u8<T: ReadableTable<&'static str, &'static [u8]>>(t: &T, name: &str) -> Result<u8, StoreError> {
    match meta_get(t, name)?.as_slice() {
        [b] => Ok(*b),
        _ => Err(StoreError::Corrupt(format!(
            "metadata field {name:?} is malformed"
        ))),
    }
}

fn meta_string<T: ReadableTable<&'static str, &'static [u8]>>(
    t: &T,
    name: &str,
) -> Result<String, StoreError> {
    String::from_utf8(meta_get(t, name)?)
        .map_err(|_| StoreError::Corrupt(format!("metadata field {name:?} is not UTF-8")))
}

fn decode_counter(keys: &Keys, name: &str, blob: &[u8]) -> Result<u64, StoreError> {
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

/// Appends one signed entry after the current head, inside `txn`.
fn append_audit(
    txn: &WriteTransaction,
    signer: &SigningKey,
    time: OffsetDateTime,
    kind: &str,
    actor: &str,
    subject: &str,
    detail: Value,
) -> Result<AuditEntry, StoreError> {
    check_name("audit kind", kind)?;
    let mut table = txn.open_table(AUDIT)?;
    let head = match table.last()? {
        Some((k, v)) => Some(parse_stored_entry(k.value(), v.value())?),
        None => None,
    };
    let (seq, prev) = match head {
        Some(h) => (
            h.seq
                .checked_add(1)
                .ok_or_else(|| StoreError::Corrupt("audit sequence exhausted".into()))?,
            h.hash,
        ),
        None => (1, GENESIS_PREV.to_owned()),
    };
    let entry = make_entry(signer, seq, prev, time, kind, actor, subject, detail)
        .map_err(StoreError::InvalidArgument)?;
    let bytes = serde_json::to_vec(&entry)
        .map_err(|e| StoreError::InvalidArgument(format!("audit entry cannot be encoded: {e}")))?;
    table.insert(seq, bytes.as_slice())?;
    Ok(entry)
}

fn begin_durable(db: &Database) -> Result<WriteTransaction, StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    Ok(txn)
}

impl Vault {
    /// Whether `dir` holds an initialized vault.
    pub fn exists(dir: &Path) -> bool {
        dir.join(DB_FILE).is_file()
    }

    /// Creates a new vault in `dir` (created if missing).
    ///
    /// Generates the master key and the CAS identity (Ed25519) key, stores the identity key
    /// encrypted and its public half in clear, writes the key check value and a first audit
    /// entry (`init`), and protects the master key as `sealing` says. The returned vault is
    /// unsealed. Refuses a directory that already holds a vault, and an existing key file.
    pub fn init(dir: &Path, sealing: SealingConfig) -> Result<(Vault, InitOutput), StoreError> {
        fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        let db_path = dir.join(DB_FILE);
        if db_path.exists() {
            return Err(StoreError::AlreadyInitialized(dir.to_path_buf()));
        }
        let master = MasterKey::generate()?;
        let data = DataKey::derive(&master)?;
        let mut seed = Zeroizing::new([0u8; 32]);
        fill_random(seed.as_mut_slice())?;
        let identity = SigningKey::from_bytes(&seed);
        let identity_public = identity.verifying_key().to_bytes();

        // Everything that can be refused is checked before anything is written.
        let (mode, output, detail) = match sealing {
            SealingConfig::Shamir { shares, threshold } => {
                let parts = split(&master, shares, threshold)?;
                let set = parts.first().map(Share::set_bytes).unwrap_or_default();
                (
                    Mode::Shamir {
                        shares,
                        threshold,
                        set,
                    },
                    InitOutput::Shares(parts),
                    json!({"sealing": "shamir", "shares": shares, "threshold": threshold,
                           "share_set": hex::encode(set)}),
                )
            }
            SealingConfig::KeyFile(path) => {
                if path.to_str().is_none() {
                    return Err(StoreError::InvalidArgument(
                        "the key file path must be UTF-8".into(),
                    ));
                }
                let full = resolve(dir, &path);
                if full.exists() {
                    return Err(StoreError::AlreadyInitialized(full));
                }
                let hexkey = Zeroizing::new(format!("{}\n", hex::encode(master.as_bytes())));
                write_new_private(&full, hexkey.as_bytes())?;
                (
                    Mode::KeyFile { path: path.clone() },
                    InitOutput::KeyFile(path),
                    json!({"sealing": "key-file"}),
                )
            }
            SealingConfig::Tee(sealer) => {
                let blob = sealer.seal(&master)?;
                let blob_path = dir.join(TEE_BLOB_FILE);
                // A blob without a database (an init that died half-way) protects nothing.
                match fs::remove_file(&blob_path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(StoreError::io(
                            format!("removing stale {}", blob_path.display()),
                            e,
                        ));
                    }
                    _ => {}
                }
                write_new_private(&blob_path, &blob)?;
                let name = sealer.name().to_owned();
                (
                    Mode::Tee { name: name.clone() },
                    InitOutput::Tee,
                    json!({"sealing": "tee", "tee": name}),
                )
            }
        };

        let key_check = data.seal(&aad(Purpose::KeyCheck, &[]), KEY_CHECK_PLAINTEXT)?;
        let identity_secret = data.seal(&aad(Purpose::Identity, &[]), seed.as_slice())?;

        // Built under a temporary name and renamed, so a crash mid-init never leaves a
        // half-written `cas.redb` that `open` would take for a vault.
        let tmp_path = dir.join(DB_INIT_FILE);
        match fs::remove_file(&tmp_path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(StoreError::io(format!("removing {}", tmp_path.display()), e));
            }
            _ => {}
        }
        {
            let db = Database::create(&tmp_path)?;
            let txn = begin_durable(&db)?;
            {
                let mut meta = txn.open_table(META)?;
                meta.insert(M_FORMAT, FORMAT)?;
                meta.insert(M_IDENTITY_PUBLIC, identity_public.as_slice())?;
                meta.insert(M_IDENTITY_SECRET, identity_secret.as_slice())?;
                meta.insert(M_KEY_CHECK, key_check.as_slice())?;
                match &mode {
                    Mode::Shamir {
                        shares,
                        threshold,
                        set,
                    } => {
                        meta.insert(M_SEALING, b"shamir".as_slice())?;
                        meta.insert(M_SHAMIR_SHARES, [*shares].as_slice())?;
                        meta.insert(M_SHAMIR_THRESHOLD, [*threshold].as_slice())?;
                        meta.insert(M_SHAMIR_SET, set.as_slice())?;
                    }
                    Mode::KeyFile { path } => {
                        meta.insert(M_SEALING, b"key-file".as_slice())?;
                        let p = path.to_str().unwrap_or_default();
                        meta.insert(M_KEY_FILE, p.as_bytes())?;
                    }
                    Mode::Tee { name } => {
                        meta.insert(M_SEALING, b"tee".as_slice())?;
                        meta.insert(M_TEE_NAME, name.as_bytes())?;
                    }
                }
            }
            txn.open_table(RECORDS)?;
            txn.open_table(COUNTERS)?;
            append_audit(
                &txn,
                &identity,
                OffsetDateTime::now_utc(),
                "init",
                "operator",
                "cas",
                detail,
            )?;
            txn.commit()?;
        }
        fs::rename(&tmp_path, &db_path).map_err(io_err("renaming into place", &db_path))?;
        sync_dir(dir)?;

        let db = open_db(&db_path)?;
        let keys = Keys { data, identity };
        let vault = Vault {
            db,
            mode,
            identity_public,
            key_check,
            identity_secret,
            state: Mutex::new(State {
                keys: Some(Arc::new(keys)),
                ..State::default()
            }),
        };
        Ok((vault, output))
    }

    /// Opens the vault in `dir`.
    ///
    /// Key-file and TEE vaults come up unsealed (a TEE vault needs `tee`, the same sealer it
    /// was created with) and record an `unseal` audit entry; Shamir vaults come up sealed. The
    /// database's page checksums are verified on open, since the disk is not trusted.
    pub fn open(dir: &Path, tee: Option<Box<dyn TeeSealer>>) -> Result<Vault, StoreError> {
        let db_path = dir.join(DB_FILE);
        if !db_path.is_file() {
            return Err(StoreError::NotInitialized(dir.to_path_buf()));
        }
        let db = open_db(&db_path)?;
        let (mode, identity_public, key_check, identity_secret) = {
            let txn = db.begin_read()?;
            let meta = txn.open_table(META)?;
            if meta_get(&meta, M_FORMAT)? != FORMAT {
                return Err(StoreError::Corrupt(
                    "unknown store format (written by another version?)".into(),
                ));
            }
            let mode = match meta_string(&meta, M_SEALING)?.as_str() {
                "shamir" => {
                    let set: [u8; 4] = meta_get(&meta, M_SHAMIR_SET)?
                        .try_into()
                        .map_err(|_| StoreError::Corrupt("share set id is malformed".into()))?;
                    Mode::Shamir {
                        shares: meta_u8(&meta, M_SHAMIR_SHARES)?,
                        threshold: meta_u8(&meta, M_SHAMIR_THRESHOLD)?,
                        set,
                    }
                }
                "key-file" => Mode::KeyFile {
                    path: PathBuf::from(meta_string(&meta, M_KEY_FILE)?),
                },
                "tee" => Mode::Tee {
                    name: meta_string(&meta, M_TEE_NAME)?,
                },
                other => {
                    return Err(StoreError::Corrupt(format!("unknown sealing mode {other:?}")));
                }
            };
            let identity_public: [u8; 32] = meta_get(&meta, M_IDENTITY_PUBLIC)?
                .try_into()
                .map_err(|_| StoreError::Corrupt("identity public key is malformed".into()))?;
            (
                mode,
                identity_public,
                meta_get(&meta, M_KEY_CHECK)?,
                meta_get(&meta, M_IDENTITY_SECRET)?,
            )
        };
        let vault = Vault {
            db,
            mode,
            identity_public,
            key_check,
            identity_secret,
            state: Mutex::new(State::default()),
        };
        let (master, actor) = match &vault.mode {
            Mode::Shamir { .. } => return Ok(vault),
            Mode::KeyFile { path } => (read_key_file(&resolve(dir, path))?, "key-file".to_owned()),
            Mode::Tee { name } => {
                let sealer = tee.ok_or_else(|| {
                    StoreError::Config(format!(
                        "this vault is sealed to the TEE {name:?}; open it with that sealer"
                    ))
                })?;
                if sealer.name() != name {
                    return Err(StoreError::Config(format!(
                        "this vault is sealed to the TEE {name:?}, not {:?}",
                        sealer.name()
                    )));
                }
                let blob_path = dir.join(TEE_BLOB_FILE);
                let blob = fs::read(&blob_path).map_err(io_err("reading", &blob_path))?;
                (sealer.unseal(&blob)?, format!("tee:{name}"))
            }
        };
        let keys = vault.unlock(&master)?;
        vault.finish_unseal(keys, &actor, json!({"method": vault.mode.label()}))?;
        Ok(vault)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every update is a single
        // assignment or push.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn unsealed_keys(&self) -> Result<Arc<Keys>, StoreError> {
        self.lock().keys.clone().ok_or(StoreError::Sealed)
    }

    /// Checks a candidate master key against the key check value and decrypts the identity.
    fn unlock(&self, master: &MasterKey) -> Result<Keys, StoreError> {
        let data = DataKey::derive(master)?;
        match data.open(&aad(Purpose::KeyCheck, &[]), &self.key_check) {
            Some(p) if p.as_slice() == KEY_CHECK_PLAINTEXT => {}
            _ => return Err(StoreError::WrongKey),
        }
        let seed = data
            .open(&aad(Purpose::Identity, &[]), &self.identity_secret)
            .ok_or_else(|| StoreError::Corrupt("identity key failed authentication".into()))?;
        let seed: Zeroizing<[u8; 32]> = Zeroizing::new(
            seed.as_slice()
                .try_into()
                .map_err(|_| StoreError::Corrupt("identity key is malformed".into()))?,
        );
        let identity = SigningKey::from_bytes(&seed);
        if identity.verifying_key().to_bytes() != self.identity_public {
            return Err(StoreError::Corrupt(
                "identity key does not match the public key on record".into(),
            ));
        }
        Ok(Keys { data, identity })
    }

    /// Appends the events queued while sealed and an `unseal` entry, then installs the keys.
    /// On a database failure the events stay queued and the vault stays sealed.
    fn finish_unseal(&self, keys: Keys, actor: &str, detail: Value) -> Result<(), StoreError> {
        let (pending, dropped) = {
            let mut st = self.lock();
            (std::mem::take(&mut st.pending), std::mem::take(&mut st.dropped))
        };
        let result = (|| {
            let txn = begin_durable(&self.db)?;
            for p in &pending {
                append_audit(
                    &txn,
                    &keys.identity,
                    p.time,
                    &p.kind,
                    &p.actor,
                    &p.subject,
                    p.detail.clone(),
                )?;
            }
            let now = OffsetDateTime::now_utc();
            if dropped > 0 {
                append_audit(
                    &txn,
                    &keys.identity,
                    now,
                    "audit-overflow",
                    "cas",
                    "cas",
                    json!({"dropped_while_sealed": dropped}),
                )?;
            }
            append_audit(&txn, &keys.identity, now, "unseal", actor, "cas", detail)?;
            txn.commit()?;
            Ok::<(), StoreError>(())
        })();
        let mut st = self.lock();
        match result {
            Ok(()) => {
                st.keys = Some(Arc::new(keys));
                st.collected.clear();
                Ok(())
            }
            Err(e) => {
                let newer = std::mem::take(&mut st.pending);
                st.pending = pending;
                st.pending.extend(newer);
                st.dropped = st.dropped.saturating_add(dropped);
                Err(e)
            }
        }
    }

    /// The current seal state.
    pub fn status(&self) -> Status {
        let st = self.lock();
        Status {
            initialized: true,
            sealed: st.keys.is_none(),
            sealing: self.mode.label(),
            threshold: match self.mode {
                Mode::Shamir { threshold, .. } => Some(threshold),
                _ => None,
            },
            shares_provided: u8::try_from(st.collected.len()).unwrap_or(u8::MAX),
        }
    }

    /// Gives one Shamir share towards unsealing.
    ///
    /// Shares are collected in memory only (wiped when discarded). A share identical to one
    /// already given is ignored; when `threshold` distinct shares are in, the key is combined
    /// and checked against the key check value. Errors discard every share collected so far:
    /// [`StoreError::BadShare`] for a share of another split or a different value under a
    /// number already given, [`StoreError::WrongKey`] when the combined key does not open the
    /// vault. Each accepted share, rejection and the final unseal are audited (queued while
    /// sealed, appended at the unseal). Giving a share to an unsealed vault does nothing.
    /// Key-file and TEE vaults refuse shares ([`StoreError::Config`]): reopen them instead.
    pub fn unseal(&self, share: &Share) -> Result<Status, StoreError> {
        let Mode::Shamir {
            shares,
            threshold,
            set,
        } = self.mode
        else {
            return Err(StoreError::Config(format!(
                "this vault uses {} sealing; shares do not apply (reopen it to unseal)",
                self.mode.label()
            )));
        };
        let ready = {
            let mut st = self.lock();
            if st.keys.is_some() {
                drop(st);
                return Ok(self.status());
            }
            let detail = json!({"share": share.index(), "share_set": share.set_id()});
            if share.set_bytes() != set || share.shares() != shares || share.threshold() != threshold {
                let discarded = st.collected.len();
                st.collected.clear();
                st.queue(
                    "unseal-reject",
                    "operator",
                    "cas",
                    json!({"share": share.index(), "share_set": share.set_id(),
                           "reason": "share of another split", "discarded": discarded}),
                );
                return Err(StoreError::BadShare(format!(
                    "share {} belongs to another key split (set {}, {} of {} needed); this vault's \
                     shares are set {} with {} of {} needed; the {} share(s) collected so far were \
                     discarded",
                    share.index(),
                    share.set_id(),
                    share.threshold(),
                    share.shares(),
                    hex::encode(set),
                    threshold,
                    shares,
                    discarded
                )));
            }
            if let Some(known) = st.collected.iter().find(|s| s.index() == share.index()) {
                if known.same_as(share) {
                    drop(st);
                    return Ok(self.status());
                }
                let discarded = st.collected.len();
                st.collected.clear();
                st.queue(
                    "unseal-reject",
                    "operator",
                    "cas",
                    json!({"share": share.index(), "share_set": share.set_id(),
                           "reason": "conflicting value for a share number", "discarded": discarded}),
                );
                return Err(StoreError::BadShare(format!(
                    "a different share {} was already given; the {discarded} share(s) collected so \
                     far were discarded",
                    share.index()
                )));
            }
            st.collected.push(share.clone());
            st.queue("unseal-share", "operator", "cas", detail);
            if st.collected.len() >= usize::from(threshold) {
                Some(std::mem::take(&mut st.collected))
            } else {
                None
            }
        };
        let Some(collected) = ready else {
            return Ok(self.status());
        };
        let unlocked = combine(&collected).and_then(|master| self.unlock(&master));
        drop(collected);
        match unlocked {
            Ok(keys) => {
                self.finish_unseal(keys, "operator", json!({"method": "shamir"}))?;
                Ok(self.status())
            }
            Err(e) => {
                self.lock()
                    .queue("unseal-fail", "operator", "cas", json!({"reason": e.to_string()}));
                Err(e)
            }
        }
    }

    /// Forgets the master key and every derived key, and discards collected shares; appends a
    /// `seal` audit entry first. A Shamir vault is unsealed again with shares; key-file and
    /// TEE vaults by reopening.
    pub fn seal(&self) {
        let keys = {
            let mut st = self.lock();
            st.collected.clear();
            st.keys.take()
        };
        if let Some(keys) = keys {
            let result = (|| {
                let txn = begin_durable(&self.db)?;
                append_audit(
                    &txn,
                    &keys.identity,
                    OffsetDateTime::now_utc(),
                    "seal",
                    "operator",
                    "cas",
                    json!({}),
                )?;
                txn.commit()?;
                Ok::<(), StoreError>(())
            })();
            if let Err(e) = result {
                tracing::error!(error = %e, "could not audit the seal");
            }
        }
    }

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
        let keys = self.unsealed_keys()?;
        let txn = begin_durable(&self.db)?;
        let result = f(&mut WriteTxn {
            txn: &txn,
            keys: &keys,
        });
        match result {
            Ok(r) => {
                txn.commit()?;
                Ok(r)
            }
            Err(e) => {
                if let Err(abort) = txn.abort() {
                    tracing::warn!(error = %abort, "aborting a write transaction failed");
                }
                Err(e)
            }
        }
    }

    /// The CAS identity signing key (audit signatures; the server's TLS identity).
    pub fn identity(&self) -> Result<SigningKey, StoreError> {
        Ok(self.unsealed_keys()?.identity.clone())
    }

    /// The CAS identity public key, stored in clear and so available while sealed: clients pin
    /// it and verify audit logs with it. Always `Some` for an opened vault.
    pub fn identity_public(&self) -> Option<[u8; 32]> {
        Some(self.identity_public)
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

fn open_db(path: &Path) -> Result<Database, StoreError> {
    Ok(redb::Builder::new()
        .set_check_integrity_on_open(true)
        .open(path)?)
}

/// One write transaction of [`Vault::write`]. Reads through it see its own writes.
pub struct WriteTxn<'a> {
    txn: &'a WriteTransaction,
    keys: &'a Keys,
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
        check_name("counter name", name)?;
        let mut t = self.txn.open_table(COUNTERS)?;
        let current = match t.get(name)? {
            Some(v) => decode_counter(self.keys, name, v.value())?,
            None => 0,
        };
        let next = current
            .checked_add(1)
            .ok_or_else(|| StoreError::InvalidArgument(format!("counter {name:?} is at its maximum")))?;
        let blob = self
            .keys
            .data
            .seal(&aad(Purpose::Counter, &[name.as_bytes()]), &next.to_be_bytes())?;
        t.insert(name, blob.as_slice())?;
        Ok(next)
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
            &self.keys.identity,
            OffsetDateTime::now_utc(),
            kind,
            actor,
            subject,
            detail,
        )
    }
}
