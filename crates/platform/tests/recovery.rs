//! Exactly one job per acknowledged upload, also when the process dies between committing the
//! object (with its event) and recording or settling its jobs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use cloister_platform::dispatch::Dispatcher;
use cloister_platform::fdl::Service;
use cloister_platform::state::{JobSource, State};
use cloister_storage::{EventError, NoEvents, ObjectCreated, ObjectEvents, Store};

fn service() -> Service {
    let mut service: Service = serde_json::from_value(serde_json::json!({
        "name": "svc", "script": "true",
        "input": [{"storage_provider": "minio.default", "path": "bucket/in"}]
    }))
    .unwrap();
    service.token = "t".repeat(64);
    service
}

/// The process dies after the store committed an object: for keys under `in/lost`, before the
/// jobs were recorded; for the others, after they were recorded but before they were settled.
struct CrashAfterCommit(Arc<Dispatcher>);

impl ObjectEvents for CrashAfterCommit {
    fn subscribers(&self, bucket: &str, key: &str) -> Vec<String> {
        self.0.subscribers(bucket, key)
    }
    fn object_created(&self, event: &ObjectCreated) -> Result<(), EventError> {
        if event.key.starts_with("in/lost") {
            return Ok(());
        }
        self.0.object_created(event)
    }
}

fn object_of(job: &cloister_platform::state::JobRecord) -> String {
    match &job.source {
        JobSource::Object { bucket, key } => format!("{bucket}/{key}"),
        JobSource::Payload => panic!("not an upload's job: {job:?}"),
    }
}

#[tokio::test]
async fn interrupted_uploads_get_exactly_one_job_each() {
    let dir = tempfile::tempdir().unwrap();
    let state = Arc::new(State::open(&dir.path().join("state.redb")).unwrap());
    assert!(state.put_service(&service(), true).unwrap());
    {
        let store = Store::open(&dir.path().join("objects"), Arc::new(NoEvents)).unwrap();
        store.create_bucket("bucket", false).await.unwrap();
    }

    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let before_crash = Arc::new(Dispatcher::new(state.clone(), tx).unwrap());
    let store = Store::open(
        &dir.path().join("objects"),
        Arc::new(CrashAfterCommit(before_crash.clone())),
    )
    .unwrap();
    store.put_bytes("bucket", "in/lost", "data".into()).await.unwrap();
    store
        .put_bytes("bucket", "in/recorded", "data".into())
        .await
        .unwrap();
    // Uploads outside the input path raise no event at all.
    store.put_bytes("bucket", "out/x", "x".into()).await.unwrap();
    drop(before_crash);
    assert_eq!(store.pending_events().unwrap().len(), 2);
    assert_eq!(state.jobs("svc", None, 100).unwrap().jobs.len(), 1);

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let after_restart = Dispatcher::new(state.clone(), tx).unwrap();
    after_restart.recover(&store).await.unwrap();
    after_restart.recover(&store).await.unwrap();

    let jobs = state.jobs("svc", None, 100).unwrap().jobs;
    let mut objects: Vec<String> = jobs.iter().map(object_of).collect();
    objects.sort();
    assert_eq!(objects, ["bucket/in/lost", "bucket/in/recorded"], "{jobs:?}");
    let lost = jobs.iter().find(|j| object_of(j) == "bucket/in/lost").unwrap();
    assert!(lost.event.contains("in%2Flost"));
    assert!(store.pending_events().unwrap().is_empty(), "recovery settles");
    assert_eq!(state.queued().unwrap().len(), 2);
    // Only the job the crash lost is queued anew; the other was queued before it.
    assert_eq!(rx.recv().await.map(|r| r.name), Some(lost.name.clone()));
    assert!(rx.try_recv().is_err(), "a recovered upload was queued twice");
}

#[tokio::test]
async fn acknowledged_writes_have_their_job_and_settle_later() {
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
    assert_eq!(store.pending_events().unwrap().len(), 1);

    // The settler runs on its own; shutting it down settles what is left.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let settler = tokio::spawn(dispatcher.clone().run_settler(store.clone(), stopped));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !store.pending_events().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the settler did not settle");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    store.put_bytes("bucket", "in/c", "c".into()).await.unwrap();
    stop.send(true).unwrap();
    settler.await.unwrap();
    assert!(store.pending_events().unwrap().is_empty());
    assert_eq!(state.jobs("svc", None, 10).unwrap().jobs.len(), 2);
}
