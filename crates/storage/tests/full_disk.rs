//! A redb commit that fails on a full disk poisons the database (every later transaction
//! fails with `PreviousIo`); [`ReopeningDatabase`] opens it again, so reads go on, the failed
//! commit is not visible, and writes work once space returns, without a restart.
//!
//! Mounts a small tmpfs (root only); skipped where that is not permitted, unless
//! `CLOISTER_REQUIRE_TMPFS` is set (CI), which makes that a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write as _;
use std::path::Path;

use cloister_storage::reopen::ReopeningDatabase;
use redb::TableDefinition;

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("t");

struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn mount(path: &Path) -> Option<Tmpfs> {
    std::fs::create_dir_all(path).unwrap();
    let out = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(path)
        .output();
    match out {
        Ok(out) if out.status.success() => Some(Tmpfs(path.to_path_buf())),
        other => {
            assert!(
                std::env::var_os("CLOISTER_REQUIRE_TMPFS").is_none(),
                "CLOISTER_REQUIRE_TMPFS is set but a tmpfs cannot be mounted: {other:?}"
            );
            eprintln!("skipped: cannot mount a tmpfs here; set CLOISTER_REQUIRE_TMPFS to fail instead");
            None
        }
    }
}

fn fill(dir: &Path) -> std::path::PathBuf {
    let filler = dir.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let chunk = vec![1u8; 1 << 20];
    let mut size = chunk.len();
    while size > 0 {
        match file.write(&chunk[..size]) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => size /= 2,
            Err(e) => panic!("{e}"),
        }
    }
    filler
}

fn put(db: &ReopeningDatabase, key: &str, value: &[u8]) -> Result<(), String> {
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut table = txn.open_table(TABLE).map_err(|e| e.to_string())?;
        table.insert(key, value).map_err(|e| e.to_string())?;
    }
    txn.commit().map_err(|e| e.to_string())
}

fn get(db: &ReopeningDatabase, key: &str) -> Option<Vec<u8>> {
    let txn = db.begin_read().unwrap();
    let table = txn.open_table(TABLE).unwrap();
    table.get(key).unwrap().map(|v| v.value().to_vec())
}

#[test]
fn a_commit_failed_for_lack_of_space_leaves_the_database_usable() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = mount(&dir.path().join("disk")) else {
        return;
    };
    let db = ReopeningDatabase::create(&disk.0.join("db.redb"), 1 << 20).unwrap();
    put(&db, "kept", b"committed before the disk filled").unwrap();
    let filler = fill(&disk.0);

    let big = vec![7u8; 512 * 1024];
    let (failed, failure) = (0..64)
        .find_map(|i| put(&db, &format!("big{i}"), &big).err().map(|e| (i, e)))
        .expect("a full disk took 32 MiB of commits");
    assert!(
        failure.contains("No space left") || failure.contains("I/O"),
        "{failure}"
    );

    // Reads go on, and show what was committed, not the failed commit.
    assert_eq!(
        get(&db, "kept").as_deref(),
        Some(&b"committed before the disk filled"[..])
    );
    assert!(
        get(&db, &format!("big{failed}")).is_none(),
        "the failed commit is visible"
    );
    if failed > 0 {
        assert_eq!(get(&db, &format!("big{}", failed - 1)), Some(big.clone()));
    }

    // Space returns: writes work again on the same handle.
    std::fs::remove_file(filler).unwrap();
    put(&db, "after", b"space returned").unwrap();
    assert_eq!(get(&db, "after").as_deref(), Some(&b"space returned"[..]));
    assert_eq!(
        get(&db, "kept").as_deref(),
        Some(&b"committed before the disk filled"[..])
    );
    drop(db);
}

/// Takes every write as an upload that starts jobs, and fails to record its intent the way the
/// platform's commit fails on a disk that filled up meanwhile (`fill_first`), or for another
/// reason.
struct FailingIntent {
    disk: std::path::PathBuf,
    fill_first: bool,
}

impl cloister_storage::ObjectEvents for FailingIntent {
    fn before_write(
        &self,
        _: &str,
        _: &str,
    ) -> Result<Option<cloister_storage::WriteIntent>, cloister_storage::EventError> {
        if self.fill_first {
            fill(&self.disk);
            return Err("cannot commit the intent: No space left on device".into());
        }
        Err("cannot commit the intent: the database is corrupt".into())
    }
    fn object_created(
        &self,
        _: cloister_storage::WriteIntent,
        _: &cloister_storage::ObjectCreated,
    ) -> Result<(), cloister_storage::EventError> {
        Ok(())
    }
    fn write_failed(&self, _: cloister_storage::WriteIntent) {}
}

#[tokio::test]
async fn an_intent_that_fails_on_a_full_disk_is_insufficient_storage_not_a_server_fault() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = mount(&dir.path().join("disk")) else {
        return;
    };
    for fill_first in [false, true] {
        let root = disk.0.join(format!("store-{fill_first}"));
        let events = std::sync::Arc::new(FailingIntent {
            disk: disk.0.clone(),
            fill_first,
        });
        let store = cloister_storage::Store::open_with_cache(&root, events, 1 << 20).unwrap();
        store.create_bucket("bkt", false).await.unwrap();
        let refused = store.put_bytes("bkt", "in/x", "x".into()).await;
        if fill_first {
            assert!(
                matches!(refused, Err(cloister_storage::StorageError::InsufficientStorage)),
                "{refused:?}"
            );
        } else {
            assert!(
                refused
                    .as_ref()
                    .is_err_and(|e| !matches!(e, cloister_storage::StorageError::InsufficientStorage)),
                "{refused:?}"
            );
        }
        assert!(store.head("bkt", "in/x").await.unwrap().is_none());
    }
}
