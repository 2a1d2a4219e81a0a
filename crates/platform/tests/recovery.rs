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
    assert_eq!(rx.recv().await.map(|q| q.record.name), Some(lost.name.clone()));
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

/// A tmpfs of a few MiB (root only); `None` where mounting is not permitted, unless
/// `CLOISTER_REQUIRE_TMPFS` is set (CI), which makes that a failure.
struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn small_tmpfs(path: &std::path::Path) -> Option<Tmpfs> {
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

/// Fills the disk the store lives on just before the commit of a write under `in/doomed`, so
/// that commit fails after the dispatcher queued the write's jobs.
struct DiskFillsDuringCommit {
    dispatcher: Arc<Dispatcher>,
    disk: std::path::PathBuf,
}

impl ObjectEvents for DiskFillsDuringCommit {
    fn subscribers(&self, bucket: &str, key: &str) -> Vec<String> {
        self.dispatcher.subscribers(bucket, key)
    }
    fn object_created(&self, event: &ObjectCreated) -> Result<(), EventError> {
        self.dispatcher.object_created(event)
    }
    fn object_committing(&self, event: &ObjectCreated, content: Option<&[u8]>) {
        self.dispatcher.object_committing(event, content);
        if event.key.starts_with("in/doomed") {
            let mut filler = std::fs::File::create(self.disk.join("filler")).unwrap();
            let chunk = vec![1u8; 64 << 10];
            let mut size = chunk.len();
            while size > 0 {
                match std::io::Write::write(&mut filler, &chunk[..size]) {
                    Ok(_) => {}
                    Err(_) => size /= 2,
                }
            }
        }
    }
    fn object_abandoned(&self, event: &ObjectCreated) {
        self.dispatcher.object_abandoned(event);
    }
}

/// Jobs are queued while their upload's commit runs, behind a gate: it opens with the job's
/// committed record once the commit is durable, and closes when the commit fails — that job
/// never runs and leaves no record, and the failed upload is not acknowledged.
#[tokio::test]
async fn jobs_queued_before_their_commit_run_only_if_it_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = small_tmpfs(&dir.path().join("disk")) else {
        return;
    };
    let state = Arc::new(State::open(&dir.path().join("state.redb")).unwrap());
    assert!(state.put_service(&service(), true).unwrap());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let dispatcher = Arc::new(Dispatcher::new(state.clone(), tx).unwrap());
    let sink = Arc::new(DiskFillsDuringCommit {
        dispatcher: dispatcher.clone(),
        disk: disk.0.clone(),
    });
    let store = Store::open_with_cache(&disk.0.join("objects"), sink, 1 << 20).unwrap();
    store.create_bucket("bucket", false).await.unwrap();

    store.put_bytes("bucket", "in/kept", "a".into()).await.unwrap();
    let queued = rx.try_recv().expect("the job was not queued");
    let gate = queued
        .gate
        .expect("an upload's job is queued before its commit ends");
    let committed = gate.wait_for_record(&queued.record.name).await;
    let committed = committed.expect("the gate of a committed upload closed");
    assert!(committed.queue_seq > 0, "the gate gives the record as committed");
    assert_eq!(state.jobs("svc", None, 10).unwrap().jobs.len(), 1);

    let failed = store.put_bytes("bucket", "in/doomed", "b".into()).await;
    assert!(failed.is_err(), "a write whose commit failed was acknowledged");
    let queued = rx.try_recv().expect("the job was not queued before the commit");
    let gate = queued.gate.expect("queued behind a gate");
    let verdict = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        gate.wait_for_record(&queued.record.name),
    );
    assert!(
        verdict
            .await
            .expect("the gate of a failed commit stayed shut")
            .is_none(),
        "the job of an upload that was not committed may run"
    );
    assert_eq!(
        state.jobs("svc", None, 10).unwrap().jobs.len(),
        1,
        "a record was left"
    );
    assert!(store.head("bucket", "in/doomed").await.unwrap().is_none());
    assert!(
        store
            .pending_events()
            .unwrap()
            .iter()
            .all(|e| e.key != "in/doomed")
    );

    // Space returns: the next upload's job runs as usual.
    std::fs::remove_file(disk.0.join("filler")).unwrap();
    store.put_bytes("bucket", "in/after", "c".into()).await.unwrap();
    let queued = rx.try_recv().unwrap();
    assert!(
        queued
            .gate
            .unwrap()
            .wait_for_record(&queued.record.name)
            .await
            .is_some()
    );
}

/// What a process killed now leaves on disk: a copy of the state database and of the store's
/// folder, taken while both are open (a lazy commit is in neither file's header until a
/// durable one follows, as after a `kill -9`).
fn crash_image(dir: &std::path::Path) -> tempfile::TempDir {
    fn copy(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
    let image = tempfile::tempdir().unwrap();
    std::fs::copy(dir.join("state.redb"), image.path().join("state.redb")).unwrap();
    copy(&dir.join("objects"), &image.path().join("objects"));
    image
}

type Started = (
    Arc<State>,
    Arc<Dispatcher>,
    Store,
    tokio::sync::mpsc::UnboundedReceiver<cloister_platform::gate::Queued>,
);

async fn start(dir: &std::path::Path, state: Arc<State>) -> Started {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let dispatcher = Arc::new(Dispatcher::new(state.clone(), tx).unwrap());
    let store = Store::open(&dir.join("objects"), dispatcher.clone()).unwrap();
    (state, dispatcher, store, rx)
}

async fn committed_record(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<cloister_platform::gate::Queued>,
) -> cloister_platform::state::JobRecord {
    let queued = rx.try_recv().expect("the upload's job was not queued");
    let gate = queued.gate.expect("queued behind a gate");
    gate.wait_for_record(&queued.record.name)
        .await
        .expect("the gate of a committed upload closed")
}

/// The settler's redelivery: the jobs of an upload were made durable, then the process died
/// before the store removed the upload's event. After the restart the event is delivered
/// once more, finds its jobs recorded, and makes no second job (nor queues one).
#[tokio::test]
async fn an_event_left_after_its_jobs_were_durable_is_delivered_once_more_without_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let state = Arc::new(State::open(&dir.path().join("state.redb")).unwrap());
    assert!(state.put_service(&service(), true).unwrap());
    let (state, _dispatcher, store, mut rx) = start(dir.path(), state).await;
    store.create_bucket("bucket", false).await.unwrap();
    store.put_bytes("bucket", "in/a", "a".into()).await.unwrap();
    let recorded = committed_record(&mut rx).await;
    // The state's side of settling: a durable commit after the record (a service update).
    assert!(state.put_service(&service(), false).unwrap());
    let image = crash_image(dir.path());

    let state = Arc::new(State::open(&image.path().join("state.redb")).unwrap());
    let (state, dispatcher, store, mut rx) = start(image.path(), state).await;
    assert_eq!(
        store.pending_events().unwrap().len(),
        1,
        "the crash left the event"
    );
    dispatcher.recover(&store).await.unwrap();
    dispatcher.recover(&store).await.unwrap();
    let jobs = state.jobs("svc", None, 10).unwrap().jobs;
    assert_eq!(
        jobs.iter().map(|j| j.name.as_str()).collect::<Vec<_>>(),
        [recorded.name.as_str()],
        "the redelivery made another job"
    );
    assert!(store.pending_events().unwrap().is_empty(), "recovery settles");
    assert!(
        rx.try_recv().is_err(),
        "the recorded job was queued again by the redelivery"
    );
    assert_eq!(
        state.queued().unwrap().len(),
        1,
        "the job is still queued on disk"
    );
}

/// Settling commits nothing of its own when a durable commit followed the jobs' record (a
/// job's final state usually does), and loses nothing for it: after a crash right after
/// settling, both uploads have their job — the one a job's final state covered, and the one
/// recorded after it, which the settler had to make durable itself.
#[tokio::test]
async fn settled_jobs_survive_a_crash_whether_or_not_the_settler_committed() {
    let dir = tempfile::tempdir().unwrap();
    let state = Arc::new(State::open(&dir.path().join("state.redb")).unwrap());
    assert!(state.put_service(&service(), true).unwrap());
    let (state, dispatcher, store, mut rx) = start(dir.path(), state).await;
    store.create_bucket("bucket", false).await.unwrap();

    store.put_bytes("bucket", "in/a", "a".into()).await.unwrap();
    let mut finished = committed_record(&mut rx).await;
    finished.status = cloister_platform::state::JobStatus::Succeeded;
    finished.finish_time = Some(time::OffsetDateTime::now_utc());
    assert!(state.finish(&finished, b"done", None).unwrap());
    store.put_bytes("bucket", "in/b", "b".into()).await.unwrap();
    let lazy = committed_record(&mut rx).await;
    dispatcher.settle(&store).await.unwrap();
    assert!(store.pending_events().unwrap().is_empty());
    let image = crash_image(dir.path());

    let state = Arc::new(State::open(&image.path().join("state.redb")).unwrap());
    let (state, dispatcher, store, _rx) = start(image.path(), state).await;
    assert!(store.pending_events().unwrap().is_empty());
    dispatcher.recover(&store).await.unwrap();
    let mut jobs: Vec<(String, cloister_platform::state::JobStatus)> = state
        .jobs("svc", None, 10)
        .unwrap()
        .jobs
        .into_iter()
        .map(|j| (j.name, j.status))
        .collect();
    jobs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut expected = vec![
        (finished.name, cloister_platform::state::JobStatus::Succeeded),
        (lazy.name, cloister_platform::state::JobStatus::Pending),
    ];
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(jobs, expected, "a settled upload lost its job in the crash");
}

/// A write of the state fails for lack of space after an upload's jobs were recorded lazily;
/// the database is opened again, which drops that record. The settler must not then remove
/// the upload's event as if its jobs were durable: it delivers the event again, and the
/// upload keeps exactly one job.
#[tokio::test]
async fn jobs_dropped_by_a_reopen_are_recorded_again_not_settled_away() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = small_tmpfs(&dir.path().join("disk")) else {
        return;
    };
    let state = Arc::new(State::open_with_cache(&disk.0.join("state.redb"), 1 << 20).unwrap());
    assert!(state.put_service(&service(), true).unwrap());
    let (state, dispatcher, store, mut rx) = start(dir.path(), state).await;
    store.create_bucket("bucket", false).await.unwrap();
    store.put_bytes("bucket", "in/a", "a".into()).await.unwrap();
    let mut record = committed_record(&mut rx).await;

    // Space returns only once this handle is closed too.
    let mut filler = std::fs::File::create(disk.0.join("filler")).unwrap();
    let chunk = vec![1u8; 64 << 10];
    let mut size = chunk.len();
    while size > 0 {
        match std::io::Write::write(&mut filler, &chunk[..size]) {
            Ok(_) => {}
            Err(_) => size /= 2,
        }
    }
    record.status = cloister_platform::state::JobStatus::Failed;
    assert!(
        state.finish(&record, &vec![b'x'; 256 << 10], None).is_err(),
        "a commit on a full disk succeeded"
    );
    drop(filler);
    std::fs::remove_file(disk.0.join("filler")).unwrap();

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let settler = tokio::spawn(dispatcher.clone().run_settler(store.clone(), stopped));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !store.pending_events().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the settler did not settle");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    stop.send(true).unwrap();
    settler.await.unwrap();
    let jobs = state.jobs("svc", None, 10).unwrap().jobs;
    assert_eq!(
        jobs.iter().map(object_of).collect::<Vec<_>>(),
        ["bucket/in/a"],
        "an acknowledged upload was settled without its job"
    );
    assert_eq!(
        rx.try_recv().map(|q| q.gate.is_none()).ok(),
        Some(true),
        "not queued again"
    );
}
