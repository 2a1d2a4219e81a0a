//! Exactly one job per acknowledged upload, also when the process dies between writing the
//! object and recording its job.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use cloister_platform::dispatch::Dispatcher;
use cloister_platform::fdl::Service;
use cloister_platform::state::{JobSource, State};
use cloister_storage::{EventError, NoEvents, ObjectCreated, ObjectEvents, Store, WriteIntent};

fn service() -> Service {
    let mut service: Service = serde_json::from_value(serde_json::json!({
        "name": "svc", "script": "true",
        "input": [{"storage_provider": "minio.default", "path": "bucket/in"}]
    }))
    .unwrap();
    service.token = "t".repeat(64);
    service
}

/// The process dies after the store committed the object and before the job was recorded:
/// the sink records intents but never hears of the commit.
struct CrashAfterCommit(Arc<Dispatcher>);

impl ObjectEvents for CrashAfterCommit {
    fn before_write(&self, bucket: &str, key: &str) -> Result<Option<WriteIntent>, EventError> {
        self.0.before_write(bucket, key)
    }
    fn object_created(&self, _: WriteIntent, _: &ObjectCreated) -> Result<(), EventError> {
        Ok(())
    }
    fn write_failed(&self, _: WriteIntent) {}
}

#[tokio::test]
async fn interrupted_uploads_are_resolved_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let state = Arc::new(State::open(&dir.path().join("state.redb")).unwrap());
    assert!(state.put_service(&service(), true).unwrap());
    // An object that existed before any intent must not be mistaken for the interrupted write.
    {
        let store = Store::open(&dir.path().join("objects"), Arc::new(NoEvents)).unwrap();
        store.create_bucket("bucket", false).await.unwrap();
        store.put_bytes("bucket", "in/old", "old".into()).await.unwrap();
    }

    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let before_crash = Arc::new(Dispatcher::new(state.clone(), tx).unwrap());
    let store = Store::open(
        &dir.path().join("objects"),
        Arc::new(CrashAfterCommit(before_crash.clone())),
    )
    .unwrap();
    // Written, then the crash: the intent is on disk, the job is not.
    store
        .put_bytes("bucket", "in/written", "data".into())
        .await
        .unwrap();
    // The crash came before the write.
    assert!(before_crash.before_write("bucket", "in/never").unwrap().is_some());
    // The crash came before an overwrite of an old object.
    assert!(before_crash.before_write("bucket", "in/old").unwrap().is_some());
    // Uploads outside the input path leave no intent at all.
    assert!(before_crash.before_write("bucket", "out/x").unwrap().is_none());
    drop(before_crash);
    assert_eq!(state.intents().unwrap().len(), 3);

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let after_restart = Dispatcher::new(state.clone(), tx).unwrap();
    after_restart.recover(&store).await.unwrap();
    after_restart.recover(&store).await.unwrap();

    let jobs = state.jobs("svc", None, 100).unwrap().jobs;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(
        jobs[0].source,
        JobSource::Object {
            bucket: "bucket".into(),
            key: "in/written".into()
        }
    );
    assert!(jobs[0].event.contains("in%2Fwritten"));
    assert!(state.intents().unwrap().is_empty());
    assert_eq!(state.queued().unwrap().len(), 1);
    assert_eq!(rx.recv().await.map(|r| r.name), Some(jobs[0].name.clone()));
    assert!(rx.try_recv().is_err(), "a recovered upload was queued twice");
}

#[tokio::test]
async fn acknowledged_writes_create_their_job_before_returning() {
    let dir = tempfile::tempdir().unwrap();
    let state = Arc::new(State::open(&dir.path().join("state.redb")).unwrap());
    assert!(state.put_service(&service(), true).unwrap());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let dispatcher = Arc::new(Dispatcher::new(state.clone(), tx).unwrap());
    let store = Store::open(&dir.path().join("objects"), dispatcher.clone()).unwrap();
    store.create_bucket("bucket", false).await.unwrap();
    store.put_bytes("bucket", "in/a", "a".into()).await.unwrap();
    // No waiting: the record exists the moment the write returns.
    assert_eq!(state.jobs("svc", None, 10).unwrap().jobs.len(), 1);
    assert!(rx.try_recv().is_ok());
    store
        .put_bytes("bucket", "elsewhere/b", "b".into())
        .await
        .unwrap();
    assert_eq!(state.jobs("svc", None, 10).unwrap().jobs.len(), 1);
    assert!(state.intents().unwrap().is_empty());
}
