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

/// Takes every write as an upload that starts jobs, and fails to record them the way the
/// platform's commit fails on a disk that filled up meanwhile (`fill_first`), or for another
/// reason.
struct FailingSink {
    disk: std::path::PathBuf,
    fill_first: bool,
}

impl cloister_storage::ObjectEvents for FailingSink {
    fn subscribers(&self, _: &str, _: &str) -> Vec<String> {
        vec!["svc".to_owned()]
    }
    fn object_created(
        &self,
        _: &cloister_storage::ObjectCreated,
    ) -> Result<(), cloister_storage::EventError> {
        if self.fill_first {
            fill(&self.disk);
            return Err("cannot commit the jobs: No space left on device".into());
        }
        Err("cannot commit the jobs: the database is corrupt".into())
    }
}

/// The object and its event are one commit: a sink that cannot record the upload's jobs then
/// (the disk filled up in between, or another fault) loses nothing — the write stands, and its
/// event waits in the outbox for the sink to take it again.
#[tokio::test]
async fn a_sink_that_fails_after_the_commit_leaves_the_write_and_its_event() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = mount(&dir.path().join("disk")) else {
        return;
    };
    for fill_first in [false, true] {
        let root = disk.0.join(format!("store-{fill_first}"));
        let events = std::sync::Arc::new(FailingSink {
            disk: disk.0.clone(),
            fill_first,
        });
        let store = cloister_storage::Store::open_with_cache(&root, events, 1 << 20).unwrap();
        store.create_bucket("bkt", false).await.unwrap();
        store.put_bytes("bkt", "in/x", "x".into()).await.unwrap();
        assert!(store.head("bkt", "in/x").await.unwrap().is_some());
        let pending = store.pending_events().unwrap();
        assert_eq!(pending.len(), 1, "{pending:?}");
        assert_eq!((pending[0].key.as_str(), pending[0].size), ("in/x", 1));
        let _ = std::fs::remove_file(disk.0.join("filler"));
    }
}
