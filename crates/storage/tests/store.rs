//! The indexed store through its in-process handle: migration of a data directory written by
//! the earlier release, exact write attribution, reclamation, and consistency after crashes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;

use cloister_storage::{EventError, NoEvents, ObjectCreated, ObjectEvents, StorageError, Store};

fn fixture(into: &Path) {
    let archive = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/s3s-fs-0.14-layout.tar.gz");
    let status = std::process::Command::new("tar")
        .arg("xzf")
        .arg(&archive)
        .arg("-C")
        .arg(into)
        .status()
        .unwrap();
    assert!(status.success());
}

async fn read(store: &Store, bucket: &str, key: &str, scratch: &Path) -> Vec<u8> {
    let dest = scratch.join("read.tmp");
    store.get_to_file(bucket, key, &dest).await.unwrap();
    std::fs::read(dest).unwrap()
}

#[tokio::test]
async fn a_data_directory_of_the_earlier_release_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    let root = dir.path().join("objects");
    let store = Store::open(&root, Arc::new(NoEvents)).unwrap();

    let buckets: Vec<String> = store
        .list_buckets()
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert_eq!(buckets, ["empty-bucket", "photos"]);
    let page = store.list_objects("photos", "", None, 1000).await.unwrap();
    let keys: Vec<&str> = page.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "empty",
            "in/cat.txt",
            "in/deep/nested/dog.bin",
            "out/multipart.bin",
            "top level with spaces+plus.txt",
            "unicodé/ñ.txt"
        ]
    );
    let cat = store.head("photos", "in/cat.txt").await.unwrap().unwrap();
    assert_eq!(cat.etag, "ad606d6a24a2dec982bc2993aaaf9160");
    assert_eq!(read(&store, "photos", "in/cat.txt", dir.path()).await, b"meow\n");
    let multipart = store.head("photos", "out/multipart.bin").await.unwrap().unwrap();
    assert_eq!(multipart.etag, "19f6a5fb6f8bf04427f32af568197f4e-2");
    let expected: Vec<u8> = (0..6 * 1024 * 1024 + 123)
        .map(|i: u64| ((i * 7) % 251) as u8)
        .collect();
    assert_eq!(
        read(&store, "photos", "out/multipart.bin", dir.path()).await,
        expected
    );
    assert_eq!(read(&store, "photos", "empty", dir.path()).await, b"");

    // The old tree is gone: only the store's own directory is left.
    let left: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, [".cloister"]);
    let report = store.check().unwrap();
    assert_eq!(
        (report.objects, report.missing_files, report.unreferenced_files),
        (6, 0, 0)
    );

    // Opening again migrates nothing twice.
    drop(store);
    let store = Store::open(&root, Arc::new(NoEvents)).unwrap();
    assert_eq!(
        store
            .list_objects("photos", "", None, 1000)
            .await
            .unwrap()
            .objects
            .len(),
        6
    );
}

#[tokio::test]
async fn any_key_is_an_object_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Arc::new(NoEvents)).unwrap();
    store.create_bucket("bkt", false).await.unwrap();
    let keys = [
        "a",
        "a/",
        "a/b",
        "a/b/c",
        "a//b",
        ".",
        "..",
        "a/../b",
        "/lead",
        "sp ace+plus%",
    ];
    for (i, key) in keys.iter().enumerate() {
        store.put_bytes("bkt", key, format!("v{i}").into()).await.unwrap();
    }
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(
            read(&store, "bkt", key, dir.path()).await,
            format!("v{i}").as_bytes(),
            "{key}"
        );
    }
    // No key reached the file system: the data dir holds only the store's own directory.
    let entries: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "read.tmp")
        .collect();
    assert_eq!(entries, [".cloister"]);
    for key in keys {
        store.delete_object("bkt", key).await.unwrap();
    }
    store.delete_bucket("bkt", false).await.unwrap();
    assert!(!store.bucket_exists("bkt").await.unwrap());
}

#[tokio::test]
async fn replaced_and_deleted_data_is_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Arc::new(NoEvents)).unwrap();
    store.create_bucket("bkt", false).await.unwrap();
    let big = bytes::Bytes::from(vec![7u8; 300 * 1024]);
    for _ in 0..5 {
        store.put_bytes("bkt", "big", big.clone()).await.unwrap();
    }
    store.put_bytes("bkt", "gone", big.clone()).await.unwrap();
    store.delete_object("bkt", "gone").await.unwrap();
    // Reclamation follows the commit on its own thread.
    let mut report = store.check().unwrap();
    for _ in 0..100 {
        if report.data_files == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        report = store.check().unwrap();
    }
    assert_eq!(report.data_files, 1, "{report:?}");
    assert_eq!((report.missing_files, report.unreferenced_files), (0, 0));
    assert!(matches!(
        store.delete_bucket("bkt", false).await,
        Err(StorageError::BucketNotEmpty)
    ));
    store.delete_bucket("bkt", true).await.unwrap();
}

/// Subscribes to `in/` and records the events it hears.
#[derive(Default)]
struct Recorder {
    created: std::sync::Mutex<Vec<ObjectCreated>>,
}

impl ObjectEvents for Recorder {
    fn subscribers(&self, _: &str, key: &str) -> Vec<String> {
        if key.starts_with("in/") {
            vec!["a".to_owned(), "b".to_owned()]
        } else {
            Vec::new()
        }
    }
    fn object_created(&self, event: &ObjectCreated) -> Result<(), EventError> {
        self.created.lock().unwrap().push(event.clone());
        Ok(())
    }
}

#[tokio::test]
async fn each_subscribed_write_commits_one_event_that_stays_until_done() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Arc::new(Recorder::default());
    let store = Store::open(dir.path(), recorder.clone()).unwrap();
    store.create_bucket("bkt", false).await.unwrap();
    // Concurrent writers share commits; each still gets an event of its own.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .put_bytes("bkt", &format!("in/{i}"), format!("{i}").into())
                .await
                .unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    store.put_bytes("bkt", "other", "x".into()).await.unwrap();
    assert!(store.put_bytes("nobucket", "in/x", "x".into()).await.is_err());
    let delivered = recorder.created.lock().unwrap().clone();
    assert_eq!(delivered.len(), 40);
    let pending = store.pending_events().unwrap();
    let mut sorted = delivered.clone();
    sorted.sort_by_key(|e| e.id);
    assert_eq!(pending, sorted, "what was delivered is what the outbox holds");
    for event in &pending {
        let info = store.head("bkt", &event.key).await.unwrap().unwrap();
        assert_eq!(
            (event.size, &event.etag),
            (info.size, &info.etag),
            "{}",
            event.key
        );
        assert_eq!(event.subscribers, ["a", "b"]);
        assert_eq!(event.principal, "cloister");
    }

    let (done, kept): (Vec<_>, Vec<_>) = pending.iter().partition(|e| e.id % 2 == 0);
    store
        .events_done(done.iter().map(|e| e.id).collect())
        .await
        .unwrap();
    let last = pending.iter().map(|e| e.id).max().unwrap();
    drop(store);

    // What is not done survives a restart, and ids are never reused.
    let store = Store::open(dir.path(), recorder.clone()).unwrap();
    let left = store.pending_events().unwrap();
    assert_eq!(left.iter().collect::<Vec<_>>(), kept);
    store.put_bytes("bkt", "in/new", "n".into()).await.unwrap();
    let newest = store.pending_events().unwrap().last().unwrap().clone();
    assert_eq!(newest.key, "in/new");
    assert!(newest.id > last, "event id {} reused after {last}", newest.id);
}

#[tokio::test]
async fn the_check_reports_what_a_crash_left_and_a_start_repairs_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), Arc::new(NoEvents)).unwrap();
        store.create_bucket("bkt", false).await.unwrap();
        store
            .put_bytes("bkt", "big", vec![1u8; 200 * 1024].into())
            .await
            .unwrap();
    }
    // A PUT that died after writing its data file and before its commit.
    let orphan = dir
        .path()
        .join(".cloister/blobs/ab")
        .join(format!("ab{}", "0".repeat(30)));
    std::fs::write(&orphan, b"half an upload").unwrap();
    let inspected = Store::inspect(dir.path()).unwrap().check().unwrap();
    assert_eq!(
        (
            inspected.objects,
            inspected.missing_files,
            inspected.unreferenced_files
        ),
        (1, 0, 1)
    );
    assert!(orphan.exists(), "inspecting changed the store");
    let repaired = Store::open(dir.path(), Arc::new(NoEvents))
        .unwrap()
        .check()
        .unwrap();
    assert_eq!(
        (
            repaired.objects,
            repaired.missing_files,
            repaired.unreferenced_files
        ),
        (1, 0, 0)
    );
    assert!(!orphan.exists());
    // A record whose data file is gone is data loss, and the check says so.
    for shard in std::fs::read_dir(dir.path().join(".cloister/blobs")).unwrap() {
        for file in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            std::fs::remove_file(file.unwrap().path()).unwrap();
        }
    }
    let lost = Store::inspect(dir.path()).unwrap().check().unwrap();
    assert_eq!(lost.missing_files, 1);
    // An empty directory is no store to inspect.
    let empty = tempfile::tempdir().unwrap();
    assert!(Store::inspect(empty.path()).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_during_overwrites_see_one_whole_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Arc::new(NoEvents)).unwrap();
    store.create_bucket("bkt", false).await.unwrap();
    let versions = [vec![b'a'; 300 * 1024], vec![b'b'; 310 * 1024]];
    store
        .put_bytes("bkt", "obj", versions[0].clone().into())
        .await
        .unwrap();
    let writer = {
        let (store, versions) = (store.clone(), versions.clone());
        tokio::spawn(async move {
            for i in 0..150 {
                store
                    .put_bytes("bkt", "obj", versions[i % 2].clone().into())
                    .await
                    .unwrap();
            }
        })
    };
    let scratch = dir.path().join("read");
    let mut reads = 0;
    while !writer.is_finished() {
        store.get_to_file("bkt", "obj", &scratch).await.unwrap();
        let got = std::fs::read(&scratch).unwrap();
        assert!(
            got == versions[0] || got == versions[1],
            "a read saw {} mixed bytes",
            got.len()
        );
        reads += 1;
    }
    writer.await.unwrap();
    assert!(reads > 0);
}
