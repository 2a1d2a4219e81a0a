//! The sealing lifecycle of a [`Vault`]: creating the database, opening it, checking a master
//! key (recombined from Shamir shares, read from the key file or unsealed by a TEE) against the
//! key check value, and sealing again. The metadata table that records how the master key is
//! protected is read and written only here.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ed25519_dalek::SigningKey;
use redb::{Database, ReadableDatabase, ReadableTable};
use serde_json::{Value, json};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::audit_log::append_audit;
use super::counters::{self, Anchor, VaultOptions};
use super::{COUNTERS, DB_FILE, Keys, META, RECORDS, State, TEE_BLOB_FILE, Vault, begin_durable};
use crate::StoreError;
use crate::crypto::{DataKey, DigestKey, MASTER_KEY_LEN, MasterKey, Purpose, aad, fill_random};
use crate::sealing::{InitOutput, SealingConfig, Status, TeeSealer};
use crate::shamir::{Share, combine, split};

const DB_INIT_FILE: &str = "cas.redb.init";
const FORMAT: &[u8] = b"cloister-cas-store/1";
const KEY_CHECK_PLAINTEXT: &[u8] = b"cloister-cas key check v1";

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

/// How this vault's master key is protected, as recorded in its metadata.
pub(super) enum Mode {
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
        Self::init_with(dir, sealing, VaultOptions::default())
    }

    /// [`Vault::init`] with the counter anchor where `options` say; the anchor is created at
    /// generation 0, replacing any file at that path.
    pub fn init_with(
        dir: &Path,
        sealing: SealingConfig,
        options: VaultOptions,
    ) -> Result<(Vault, InitOutput), StoreError> {
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
        let keys = Keys::new(data, DigestKey::derive(&master)?, identity)?;

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

        let key_check = keys
            .data
            .seal(&aad(Purpose::KeyCheck, &[]), KEY_CHECK_PLAINTEXT)?;
        let identity_secret = keys.data.seal(&aad(Purpose::Identity, &[]), seed.as_slice())?;

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
            counters::init_state(&txn, &keys)?;
            append_audit(
                &txn,
                &keys.signer,
                OffsetDateTime::now_utc(),
                "init",
                "operator",
                "cas",
                detail,
            )?;
            txn.commit()?;
        }
        // The anchor first: a vault in place without its anchor would be refused at unseal.
        let anchor = Anchor::new(dir, &options);
        anchor.create(&keys, &identity_public)?;
        fs::rename(&tmp_path, &db_path).map_err(io_err("renaming into place", &db_path))?;
        sync_dir(dir)?;

        let db = open_db(&db_path)?;
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
            anchor,
        };
        Ok((vault, output))
    }

    /// Opens the vault in `dir`.
    ///
    /// Key-file and TEE vaults come up unsealed (a TEE vault needs `tee`, the same sealer it
    /// was created with) and record an `unseal` audit entry; Shamir vaults come up sealed. The
    /// database's page checksums are verified on open, since the disk is not trusted.
    pub fn open(dir: &Path, tee: Option<Box<dyn TeeSealer>>) -> Result<Vault, StoreError> {
        Self::open_with(dir, tee, VaultOptions::default())
    }

    /// [`Vault::open`] with the counter anchor where `options` say. Every unseal (here for
    /// key-file and TEE vaults, at the last share for Shamir ones) compares the store with the
    /// anchor and refuses a store older than it ([`StoreError::Rollback`]) unless `options`
    /// accept the rollback.
    pub fn open_with(
        dir: &Path,
        tee: Option<Box<dyn TeeSealer>>,
        options: VaultOptions,
    ) -> Result<Vault, StoreError> {
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
            anchor: Anchor::new(dir, &options),
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
        Keys::new(data, DigestKey::derive(master)?, identity)
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
            let settled = match self.anchor.check(&txn, &keys, &self.identity_public) {
                Ok(settled) => settled,
                Err(e) => {
                    if let Err(abort) = txn.abort() {
                        tracing::warn!(error = %abort, "aborting the unseal transaction failed");
                    }
                    return Err(e);
                }
            };
            let moved_on = settled.accepted.is_some();
            if !moved_on {
                // The generation is the one already committed: the anchor may learn it first
                // (a crash between a commit and its anchor write left it behind), and if it
                // cannot, the vault stays sealed with nothing written.
                self.anchor
                    .settle(&keys, &self.identity_public, settled.generation)?;
            }
            // Refusals journaled while the vault could not log them (see `counters`).
            let (journaled, unauthentic) = self.anchor.journaled_refusals(&keys, &self.identity_public);
            let journal_time = OffsetDateTime::now_utc();
            for record in &journaled {
                let text = |field: &str| record[field].as_str().unwrap_or_default().to_owned();
                append_audit(
                    &txn,
                    &keys.signer,
                    journal_time,
                    "unseal-refused",
                    &text("actor"),
                    "cas",
                    json!({"reason": text("reason"), "at": text("at"), "journaled": true}),
                )?;
            }
            if unauthentic > 0 {
                append_audit(
                    &txn,
                    &keys.signer,
                    journal_time,
                    "unseal-refusal-journal-unauthentic",
                    "cas",
                    "cas",
                    json!({"lines": unauthentic}),
                )?;
            }
            let journal_read = !journaled.is_empty() || unauthentic > 0;
            for p in &pending {
                append_audit(
                    &txn,
                    &keys.signer,
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
                    &keys.signer,
                    now,
                    "audit-overflow",
                    "cas",
                    "cas",
                    json!({"dropped_while_sealed": dropped}),
                )?;
            }
            if let Some(accepted) = settled.accepted {
                append_audit(
                    &txn,
                    &keys.signer,
                    now,
                    "counter-rollback-accepted",
                    actor,
                    "cas",
                    accepted,
                )?;
            }
            append_audit(&txn, &keys.signer, now, "unseal", actor, "cas", detail)?;
            txn.commit()?;
            if journal_read && let Err(e) = self.anchor.clear_journal() {
                // Left as it is, the journal is audited again at the next unseal.
                tracing::error!(error = %e, "cannot empty the unseal refusal journal");
            }
            Ok::<(u64, bool), StoreError>((settled.generation, moved_on))
        })();
        // An accepted rollback moved the generation above the anchor in this commit: only now
        // may the anchor follow. If it cannot, it stays below the store, which the next unseal
        // accepts.
        if let Ok((generation, true)) = result
            && let Err(e) = self.anchor.settle(&keys, &self.identity_public, generation)
        {
            tracing::error!(error = %e, "cannot bring the counter anchor up to the store");
        }
        let mut st = self.lock();
        match result {
            Ok(_) => {
                st.keys = Some(Arc::new(keys));
                st.collected.clear();
                Ok(())
            }
            Err(e) => {
                let newer = std::mem::take(&mut st.pending);
                st.pending = pending;
                st.pending.extend(newer);
                st.dropped = st.dropped.saturating_add(dropped);
                if let StoreError::Rollback(reason) = &e {
                    // Durably beside the anchor, for a CAS that exits now; in memory only if
                    // that fails (audited at a later unseal of this process).
                    if let Err(journal) =
                        self.anchor
                            .journal_refusal(&keys, &self.identity_public, actor, reason)
                    {
                        tracing::error!(error = %journal, "cannot journal a refused unseal");
                        st.queue("unseal-refused", actor, "cas", json!({"reason": reason}));
                    }
                }
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
                    &keys.signer,
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

    /// The CAS identity signing key (audit signatures; the server's TLS identity).
    pub fn identity(&self) -> Result<SigningKey, StoreError> {
        Ok(self.unsealed_keys()?.identity.clone())
    }

    /// The identity key's Ed25519 signature of `message` (the same bytes
    /// `identity().sign(message)` gives, made faster and without copying the key out).
    pub fn sign_as_identity(&self, message: &[u8]) -> Result<[u8; 64], StoreError> {
        Ok(self.unsealed_keys()?.signer.sign(message))
    }

    /// The CAS identity public key, stored in clear and so available while sealed: clients pin
    /// it and verify audit logs with it. Always `Some` for an opened vault.
    pub fn identity_public(&self) -> Option<[u8; 32]> {
        Some(self.identity_public)
    }
}

fn open_db(path: &Path) -> Result<Database, StoreError> {
    Ok(redb::Builder::new()
        .set_check_integrity_on_open(true)
        .open(path)?)
}
