//! Encrypted volumes: a directory that persists across a service's jobs, stored as one
//! encrypted tar stream per version, with the current (version, SHA-256 of ciphertext) kept
//! by the CAS.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use cloister_cas_client::protocol::VolumeState;
use cloister_crypt::{DecryptionKey, EncryptOptions, ObjectBinding, Recipient, SymmetricKey};
use sha2::{Digest, Sha256};

/// The binding of a volume version: the ciphertext of version 3 does not decrypt as version 4,
/// nor as another service's or session's volume.
pub fn volume_binding(session: &str, service: &str, volume: &str, version: u64) -> ObjectBinding {
    ObjectBinding::new(
        "cloister-volume",
        format!("{session}/{service}/{volume}@{version}"),
    )
}

/// The file a volume version is stored in. The tag is in the name so that two jobs racing to
/// write the same version never overwrite each other (only one of them wins the CAS commit).
pub fn volume_file_name(volume: &str, version: u64, tag: &str) -> String {
    format!("{volume}.v{version}.{}.cvol", tag.get(..16).unwrap_or(tag))
}

pub(crate) struct VolumeContext<'a> {
    pub session: &'a str,
    pub service: &'a str,
    pub key: &'a SymmetricKey,
    pub store: &'a Path,
}

/// Restores `volume` at the recorded `state` into `dest` (an empty directory). Refuses
/// anything that is not exactly the recorded ciphertext.
pub(crate) fn restore(
    ctx: &VolumeContext<'_>,
    volume: &str,
    state: &VolumeState,
    dest: &Path,
) -> Result<(), String> {
    if state.version == 0 {
        return Ok(());
    }
    let path = ctx
        .store
        .join(volume_file_name(volume, state.version, &state.tag));
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let offered = offered_versions(ctx.store, volume);
            return Err(format!(
                "volume {volume:?}: the CAS records version {} but storage offers {}; refusing to start \
                 from anything else (rollback protection)",
                state.version,
                if offered.is_empty() {
                    "no version".to_owned()
                } else {
                    format!("only version(s) {offered:?}")
                }
            ));
        }
        Err(e) => return Err(format!("volume {volume:?}: cannot read its ciphertext: {e}")),
    };
    let tag = hex::encode(Sha256::digest(&bytes));
    if tag != state.tag {
        return Err(format!(
            "volume {volume:?}: the stored ciphertext is not version {} as recorded by the CAS (rollback or \
             tampering refused)",
            state.version
        ));
    }
    let binding = volume_binding(ctx.session, ctx.service, volume, state.version);
    let mut tar_bytes = zeroize::Zeroizing::new(Vec::with_capacity(bytes.len()));
    cloister_crypt::decrypt_with(
        &bytes[..],
        &mut *tar_bytes,
        DecryptionKey::Symmetric(ctx.key),
        &binding,
    )
    .map_err(|e| {
        format!(
            "volume {volume:?}: version {} does not decrypt: {e}",
            state.version
        )
    })?;
    tar::Archive::new(&tar_bytes[..])
        .unpack(dest)
        .map_err(|e| format!("volume {volume:?}: cannot unpack: {e}"))
}

/// Versions of `volume` present in storage, for the refusal message.
fn offered_versions(store: &Path, volume: &str) -> Vec<u64> {
    let prefix = format!("{volume}.v");
    let mut versions: Vec<u64> = std::fs::read_dir(store)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|name| {
            let rest = name.strip_prefix(&prefix)?.strip_suffix(".cvol")?;
            rest.split('.').next()?.parse().ok()
        })
        .collect();
    versions.sort_unstable();
    versions.dedup();
    versions
}

/// Packs `dir` as the next version after `from` and stores its ciphertext (written to a
/// temporary file, synced, renamed). Returns the tag and the stored file.
pub(crate) fn seal(
    ctx: &VolumeContext<'_>,
    volume: &str,
    from: u64,
    dir: &Path,
) -> Result<(String, PathBuf), String> {
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("volume {volume:?}: cannot {what}: {e}");
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Deterministic);
    builder.append_dir_all(".", dir).map_err(|e| fail("pack", &e))?;
    let tar_bytes = zeroize::Zeroizing::new(builder.into_inner().map_err(|e| fail("pack", &e))?);
    std::fs::create_dir_all(ctx.store).map_err(|e| fail("create the volume store", &e))?;
    // The tag is the hash of the ciphertext as produced here, in memory: hashing the file after
    // writing it would hash whatever the host (who owns the storage) put there meanwhile.
    let recipients = [Recipient::symmetric(ctx.key.clone())];
    let binding = volume_binding(ctx.session, ctx.service, volume, from + 1);
    let mut ciphertext = Vec::with_capacity(tar_bytes.len() + 4096);
    cloister_crypt::encrypt(
        &tar_bytes[..],
        &mut ciphertext,
        &recipients,
        &binding,
        &EncryptOptions::default(),
    )
    .map_err(|e| fail("encrypt", &e))?;
    let tag = hex::encode(Sha256::digest(&ciphertext));
    let path = ctx.store.join(volume_file_name(volume, from + 1, &tag));
    let temp = ctx.store.join(format!(".tmp-{volume}-{}", uuid::Uuid::new_v4()));
    let result = (|| {
        let mut file = File::create(&temp).map_err(|e| fail("write", &e))?;
        file.write_all(&ciphertext).map_err(|e| fail("write", &e))?;
        file.sync_all().map_err(|e| fail("sync", &e))?;
        drop(file);
        std::fs::rename(&temp, &path).map_err(|e| fail("store", &e))?;
        Ok((tag, path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// Removes stored versions older than `keep_from` (the previous version stays, so a commit
/// that never reached the CAS loses nothing).
pub(crate) fn prune(store: &Path, volume: &str, keep_from: u64) {
    let prefix = format!("{volume}.v");
    for entry in std::fs::read_dir(store).into_iter().flatten().flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let version: Option<u64> = name
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix(".cvol"))
            .and_then(|r| r.split('.').next())
            .and_then(|v| v.parse().ok());
        if version.is_some_and(|v| v < keep_from) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx<'a>(key: &'a SymmetricKey, store: &'a Path) -> VolumeContext<'a> {
        VolumeContext {
            session: "s",
            service: "svc",
            key,
            store,
        }
    }

    #[test]
    fn a_volume_round_trips_and_older_or_foreign_versions_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        let key = SymmetricKey::new("volume", [9; 32]).unwrap();
        let ctx = ctx(&key, &store);
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/count"), b"1").unwrap();
        let (tag1, file1) = seal(&ctx, "state", 0, &src).unwrap();
        std::fs::write(src.join("sub/count"), b"2").unwrap();
        let (tag2, file2) = seal(&ctx, "state", 1, &src).unwrap();
        let v1 = VolumeState {
            version: 1,
            tag: tag1,
        };
        let v2 = VolumeState {
            version: 2,
            tag: tag2.clone(),
        };

        let out = tmp.path().join("out2");
        std::fs::create_dir(&out).unwrap();
        restore(&ctx, "state", &v2, &out).unwrap();
        assert_eq!(std::fs::read(out.join("sub/count")).unwrap(), b"2");

        // Version 1's ciphertext renamed to version 2's file: refused by the tag.
        std::fs::copy(&file1, &file2).unwrap();
        let err = restore(&ctx, "state", &v2, &tmp.path().join("x")).unwrap_err();
        assert!(err.contains("rollback"), "{err}");
        // Even with a matching tag the binding keeps version 1 from passing as version 2.
        let forged = VolumeState {
            version: 2,
            tag: v1.tag.clone(),
        };
        std::fs::copy(&file1, store.join(volume_file_name("state", 2, &v1.tag))).unwrap();
        let err = restore(&ctx, "state", &forged, &tmp.path().join("y")).unwrap_err();
        assert!(err.contains("does not decrypt"), "{err}");
        // Missing current version while an older one is there.
        std::fs::remove_file(&file2).unwrap();
        let err = restore(&ctx, "state", &v2, &tmp.path().join("z")).unwrap_err();
        assert!(
            err.contains("only version(s) [1, 2]") || err.contains("only version(s) [1]"),
            "{err}"
        );
        // Another service's key does not open it.
        let other = SymmetricKey::new("volume", [8; 32]).unwrap();
        let err = restore(
            &super::tests::ctx(&other, &store),
            "state",
            &v1,
            &tmp.path().join("w"),
        )
        .unwrap_err();
        assert!(err.contains("does not decrypt"), "{err}");
        prune(&store, "state", 2);
        assert!(!file1.exists());
    }
}
