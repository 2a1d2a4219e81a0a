//! Turning object-created events into jobs, exactly once per acknowledged upload.
//!
//! As an object is written, the store asks [`Dispatcher`] which services' input paths match
//! ([`ObjectEvents::subscribers`]) and commits the upload's event in its outbox together with
//! the object. After that commit, before the upload is acknowledged,
//! [`ObjectEvents::object_created`] records one job per service and the event's id in one
//! state transaction, not forced to disk, and queues the jobs. The settler
//! ([`Dispatcher::settle`], run every few milliseconds by [`Dispatcher::run_settler`]) then makes
//! the state durable and only then removes the events from the outbox. A crash before that
//! loses the lazily committed jobs whole; the events are still in the outbox, and
//! [`Dispatcher::recover`] records their jobs at start. The event ids kept with the jobs make
//! every delivery after the first a no-op.
//!
//! The jobs do not wait for the commit to be queued: told of the event just before the commit
//! ([`ObjectEvents::object_committing`]), the dispatcher queues them behind a gate
//! ([`crate::gate`]) that opens once they are recorded, so a worker readies each job while
//! the upload's commit is flushed; a failed commit closes the gate and the jobs never run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use cloister_storage::{EventError, ObjectCreated, ObjectEvents, Store};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::mpsc::UnboundedSender;

use crate::fdl::Service;
use crate::gate::{GateOpener, Queued, new_gate};
use crate::state::{JobRecord, JobSource, JobStatus, NewJob, QueueBounds, State, StateError, WriteMark};

/// How long the settler waits between rounds: the bound on how long an upload's event stays
/// in the outbox after its jobs are recorded, and on the extra commits it costs under load.
const SETTLE_EVERY: Duration = Duration::from_millis(20);

/// The store's event sink and the source of new jobs.
pub struct Dispatcher {
    state: Arc<State>,
    services: RwLock<Arc<Vec<Service>>>,
    queue: UnboundedSender<Queued>,
    /// Events whose commit is running, with the jobs queued behind their gate.
    committing: Mutex<HashMap<u64, (Vec<NewJob>, GateOpener)>>,
    /// Events whose jobs are recorded, perhaps not yet durably, with the commit that recorded
    /// them (or found them recorded); still in the outbox.
    unsettled: Mutex<Vec<(u64, WriteMark)>>,
    /// A delivery failed: the settler takes the outbox's pending events again.
    redeliver: AtomicBool,
}

/// `url.QueryEscape`, as MinIO encodes keys in events: everything but `A-Za-z0-9-_.~` is
/// escaped (`/` included) and spaces become `+`.
const QUERY_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Encodes an object key the way MinIO does in event records.
pub fn encode_event_key(key: &str) -> String {
    key.split(' ')
        .map(|part| utf8_percent_encode(part, QUERY_ESCAPE).to_string())
        .collect::<Vec<_>>()
        .join("+")
}

/// Decodes an event key (`+` is a space, then percent-decoding).
pub fn decode_event_key(key: &str) -> Option<String> {
    let spaced = key.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// The MinIO-shaped `s3:ObjectCreated:Put` event OSCAR delivers to jobs, as JSON text.
///
/// Written from typed fields rather than through a `serde_json::Value`: it is built on the
/// index's commit thread just before each upload's commit, where a tree of maps and strings
/// cost more than the rest of the job's preparation there.
pub fn object_event(object: &ObjectCreated) -> String {
    let principal = Principal {
        principal_id: &object.principal,
    };
    let event = Event {
        event_name: "s3:ObjectCreated:Put",
        key: format!("{}/{}", object.bucket, object.key),
        records: [EventRecord {
            event_version: "2.0",
            event_source: "minio:s3",
            aws_region: "",
            event_time: object.time.format(&Rfc3339).unwrap_or_default(),
            event_name: "s3:ObjectCreated:Put",
            user_identity: principal,
            request_parameters: RequestParameters {
                principal_id: &object.principal,
                region: "",
                source_ip_address: "127.0.0.1",
            },
            response_elements: Empty {},
            s3: EventS3 {
                s3_schema_version: "1.0",
                configuration_id: "Config",
                bucket: EventBucket {
                    name: &object.bucket,
                    owner_identity: principal,
                    arn: format!("arn:aws:s3:::{}", object.bucket),
                },
                object: EventObject {
                    key: encode_event_key(&object.key),
                    size: object.size,
                    e_tag: &object.etag,
                    content_type: "application/octet-stream",
                    user_metadata: Empty {},
                    sequencer: format!("{:X}", object.time.unix_timestamp_nanos()),
                },
            },
            source: EventSource {
                host: "127.0.0.1",
                port: "",
                user_agent: "cloister",
            },
        }],
    };
    // Strings and numbers only: serialising cannot fail.
    serde_json::to_string(&event).unwrap_or_default()
}

#[derive(Serialize)]
struct Event<'a> {
    #[serde(rename = "EventName")]
    event_name: &'static str,
    #[serde(rename = "Key")]
    key: String,
    #[serde(rename = "Records")]
    records: [EventRecord<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventRecord<'a> {
    event_version: &'static str,
    event_source: &'static str,
    aws_region: &'static str,
    event_time: String,
    event_name: &'static str,
    user_identity: Principal<'a>,
    request_parameters: RequestParameters<'a>,
    response_elements: Empty,
    s3: EventS3<'a>,
    source: EventSource,
}

#[derive(Serialize, Clone, Copy)]
#[serde(rename_all = "camelCase")]
struct Principal<'a> {
    principal_id: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RequestParameters<'a> {
    principal_id: &'a str,
    region: &'static str,
    #[serde(rename = "sourceIPAddress")]
    source_ip_address: &'static str,
}

/// `{}`.
#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventS3<'a> {
    s3_schema_version: &'static str,
    configuration_id: &'static str,
    bucket: EventBucket<'a>,
    object: EventObject<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventBucket<'a> {
    name: &'a str,
    owner_identity: Principal<'a>,
    arn: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventObject<'a> {
    key: String,
    size: u64,
    e_tag: &'a str,
    content_type: &'static str,
    user_metadata: Empty,
    sequencer: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventSource {
    host: &'static str,
    port: &'static str,
    user_agent: &'static str,
}

/// A fresh Pending job record for `service`.
pub fn new_job(service: &Service, source: JobSource, event: String) -> JobRecord {
    let uuid = uuid::Uuid::now_v7();
    JobRecord {
        name: format!("{}-{}", service.name, uuid.simple()),
        service: service.name.clone(),
        uuid: uuid.to_string(),
        status: JobStatus::Pending,
        creation_time: OffsetDateTime::now_utc(),
        start_time: None,
        finish_time: None,
        exit_code: None,
        reason: None,
        source,
        event,
        image: service.image.clone(),
        queue_seq: 0,
    }
}

fn log_created(record: &JobRecord) {
    match &record.source {
        JobSource::Object { bucket, key } => {
            tracing::info!(service = %record.service, object = %format_args!("{bucket}/{key}"), job = %record.name, "job created")
        }
        JobSource::Payload => {
            tracing::info!(service = %record.service, source = "POST /job", job = %record.name, "job created")
        }
    }
}

impl Dispatcher {
    /// A dispatcher sending new jobs to `queue`.
    pub fn new(state: Arc<State>, queue: UnboundedSender<Queued>) -> Result<Self, StateError> {
        let services = RwLock::new(Arc::new(state.services()?));
        Ok(Self {
            state,
            services,
            queue,
            committing: Mutex::default(),
            unsettled: Mutex::default(),
            redeliver: AtomicBool::new(false),
        })
    }

    /// Reloads the service list after a service changed.
    pub fn refresh(&self) -> Result<(), StateError> {
        let services = Arc::new(self.state.services()?);
        if let Ok(mut guard) = self.services.write() {
            *guard = services;
        }
        Ok(())
    }

    fn services(&self) -> Arc<Vec<Service>> {
        self.services.read().map(|g| g.clone()).unwrap_or_default()
    }

    /// A service from the in-memory copy of the registry (kept current by [`Self::refresh`]).
    pub fn service(&self, name: &str) -> Option<Service> {
        self.services().iter().find(|s| s.name == name).cloned()
    }

    /// Records a `POST /job`'s job within `bounds` (see [`State::create_job_bounded`]) and
    /// queues it.
    pub fn submit_bounded(&self, job: NewJob, bounds: QueueBounds) -> Result<JobRecord, StateError> {
        let created = self.state.create_job_bounded(job, bounds)?;
        log_created(&created);
        let _ = self.queue.send(created.clone().into());
        Ok(created)
    }

    /// Puts an already recorded job back on the in-memory queue (after a restart).
    pub fn requeue(&self, record: JobRecord) {
        let _ = self.queue.send(record.into());
    }

    fn jobs_for(&self, event: &ObjectCreated) -> Vec<NewJob> {
        let body = object_event(event);
        let services = self.services();
        event
            .subscribers
            .iter()
            .filter_map(|name| services.iter().find(|s| &s.name == name))
            .map(|service| NewJob {
                record: new_job(
                    service,
                    JobSource::Object {
                        bucket: event.bucket.clone(),
                        key: event.key.clone(),
                    },
                    body.clone(),
                ),
                payload: None,
            })
            .collect()
    }

    /// Records and queues the jobs of `event`, unless they were recorded already; jobs queued
    /// behind a gate when the event's commit began are recorded, and their gate opened, instead.
    fn record(&self, event: &ObjectCreated) -> Result<(), StateError> {
        let gated = self.committing.lock().ok().and_then(|mut c| c.remove(&event.id));
        let mark = match gated {
            Some((jobs, opener)) => {
                let mut recorded = Vec::new();
                match self.state.create_event_jobs(event.id, jobs, |created| {
                    recorded = created.to_vec();
                }) {
                    Ok(mark) => {
                        recorded.iter().for_each(log_created);
                        opener.open(recorded);
                        mark
                    }
                    Err(e) => {
                        // Delivered again later, with new jobs; these never run.
                        opener.close();
                        return Err(e);
                    }
                }
            }
            None => self
                .state
                .create_event_jobs(event.id, self.jobs_for(event), |created| {
                    for record in created {
                        // The receiver only goes away at shutdown; the job stays queued on disk.
                        let _ = self.queue.send(record.clone().into());
                        log_created(record);
                    }
                })?,
        };
        if let Ok(mut unsettled) = self.unsettled.lock() {
            unsettled.push((event.id, mark));
        }
        Ok(())
    }

    /// Makes the jobs recorded so far durable (a durable commit since, such as a job's final
    /// state, already did), then removes their events from the outbox. Jobs whose lazy commit
    /// the state database lost (it was opened again after a failed write) are not settled:
    /// their events stay and are delivered again.
    pub async fn settle(&self, store: &Store) -> anyhow::Result<()> {
        let batch = self
            .unsettled
            .lock()
            .map(|mut u| std::mem::take(&mut *u))
            .unwrap_or_default();
        if batch.is_empty() {
            return Ok(());
        }
        let settled = async {
            let state = self.state.clone();
            let marks: Vec<WriteMark> = batch.iter().map(|(_, mark)| *mark).collect();
            if !tokio::task::spawn_blocking(move || state.make_durable(&marks)).await?? {
                tracing::warn!(
                    uploads = batch.len(),
                    "the state database was opened again after a failed write: recording uploads' jobs again"
                );
                self.redeliver.store(true, Ordering::Release);
                return anyhow::Ok(());
            }
            let ids: Vec<u64> = batch.iter().map(|(id, _)| *id).collect();
            store.events_done(ids.clone()).await?;
            self.state.forget_events(Some(&ids))?;
            anyhow::Ok(())
        }
        .await;
        if settled.is_err()
            && let Ok(mut unsettled) = self.unsettled.lock()
        {
            unsettled.extend(batch);
        }
        settled
    }

    /// Records the jobs of every event still in the outbox (each at most once).
    async fn deliver_pending(&self, store: &Store) -> anyhow::Result<usize> {
        let pending = store.pending_events()?;
        let count = pending.len();
        // Rare (a start after a crash, a retry after a failure) and short: run in place.
        for event in pending {
            self.record(&event)?;
        }
        Ok(count)
    }

    /// At start, before anything new is accepted: records the jobs of uploads whose events a
    /// crash left in the outbox, and settles them.
    pub async fn recover(&self, store: &Store) -> anyhow::Result<()> {
        let state = self.state.clone();
        for intent in tokio::task::spawn_blocking(move || state.take_legacy_intents()).await?? {
            tracing::warn!(
                bucket = %intent.bucket, key = %intent.key,
                "an upload was interrupted by a crash under an earlier release: if the object is there, its jobs were not created; upload it again to run them"
            );
        }
        let recovered = self.deliver_pending(store).await?;
        if recovered > 0 {
            tracing::info!(
                uploads = recovered,
                "recorded the jobs of uploads a crash interrupted"
            );
        }
        self.settle(store).await?;
        // Every event is out of the outbox now, so no id kept can come again.
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || state.forget_events(None)).await??;
        Ok(())
    }

    /// Settles recorded jobs every [`SETTLE_EVERY`], and delivers again the events whose
    /// delivery failed, until `shutdown`; then settles once more.
    pub async fn run_settler(
        self: Arc<Self>,
        store: Store,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(SETTLE_EVERY) => {}
                _ = shutdown.changed() => break,
            }
            let round = async {
                if self.redeliver.swap(false, Ordering::AcqRel) {
                    self.deliver_pending(&store).await?;
                }
                self.settle(&store).await
            }
            .await;
            if round.is_err() {
                // Whatever failed, the outbox still holds the events: take them all again.
                self.redeliver.store(true, Ordering::Release);
            }
            match (&round, failing) {
                (Err(e), false) => tracing::error!(error = %e, "cannot settle uploads' jobs; retrying"),
                (Ok(()), true) => tracing::info!("uploads' jobs settled again"),
                _ => {}
            }
            failing = round.is_err();
        }
        if let Err(e) = self.settle(&store).await {
            tracing::warn!(error = %e, "cannot settle uploads' jobs at shutdown; the next start will");
        }
    }
}

impl ObjectEvents for Dispatcher {
    fn subscribers(&self, bucket: &str, key: &str) -> Vec<String> {
        self.services()
            .iter()
            .filter(|s| s.input.iter().any(|io| io.matches(bucket, key)))
            .map(|s| s.name.clone())
            .collect()
    }

    fn object_created(&self, event: &ObjectCreated) -> Result<(), EventError> {
        self.record(event).map_err(|e| {
            self.redeliver.store(true, Ordering::Release);
            e.into()
        })
    }

    fn object_committing(&self, event: &ObjectCreated, content: Option<&[u8]>) {
        let jobs = self.jobs_for(event);
        if jobs.is_empty() {
            return;
        }
        let (opener, gate) = new_gate(content.map(Arc::from));
        for job in &jobs {
            let _ = self.queue.send(Queued {
                record: job.record.clone(),
                gate: Some(gate.clone()),
            });
        }
        if let Ok(mut committing) = self.committing.lock() {
            committing.insert(event.id, (jobs, opener));
        }
    }

    fn object_abandoned(&self, event: &ObjectCreated) {
        let gated = self.committing.lock().ok().and_then(|mut c| c.remove(&event.id));
        if let Some((_, opener)) = gated {
            opener.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> Service {
        let mut service: Service = serde_json::from_value(serde_json::json!({
            "name": "svc", "script": "true",
            "input": [{"storage_provider": "minio.default", "path": "bucket/in"}]
        }))
        .unwrap();
        service.token = "t".repeat(64);
        service
    }

    fn key_of(record: &JobRecord) -> String {
        match &record.source {
            JobSource::Object { key, .. } => key.clone(),
            JobSource::Payload => panic!("not an upload's job: {record:?}"),
        }
    }

    /// The record of an upload's jobs fails (twice in a row): each upload is still acknowledged
    /// (its event is durable in the outbox), the gate of its readied job closes so that job
    /// never runs, and the settler delivers the event again, which records exactly one job per
    /// upload. An upload once writes work again gets its job at once, through its gate.
    #[tokio::test]
    async fn a_failed_jobs_record_closes_the_gate_and_the_event_is_delivered_again() {
        let dir = tempfile::tempdir().unwrap();
        let state = Arc::new(State::open(&dir.path().join("state.redb")).unwrap());
        assert!(state.put_service(&service(), true).unwrap());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let dispatcher = Arc::new(Dispatcher::new(state.clone(), tx).unwrap());
        let store = Store::open(&dir.path().join("objects"), dispatcher.clone()).unwrap();
        store.create_bucket("bucket", false).await.unwrap();

        state.fail_writes.store(2, Ordering::Release);
        for key in ["in/a", "in/b"] {
            store.put_bytes("bucket", key, "x".into()).await.unwrap();
            let queued = rx.try_recv().expect("the job was not queued before its commit");
            let gate = queued.gate.expect("queued behind a gate");
            assert!(
                gate.wait_for_record(&queued.record.name).await.is_none(),
                "a job whose record failed may run"
            );
        }
        assert!(
            state.jobs("svc", None, 10).unwrap().jobs.is_empty(),
            "a record was left"
        );
        assert_eq!(
            store.pending_events().unwrap().len(),
            2,
            "an acknowledged upload lost its event"
        );

        store.put_bytes("bucket", "in/c", "x".into()).await.unwrap();
        let queued = rx.try_recv().unwrap();
        let gate = queued.gate.expect("queued behind a gate");
        assert!(gate.wait_for_record(&queued.record.name).await.is_some());

        let (stop, stopped) = tokio::sync::watch::channel(false);
        let settler = tokio::spawn(dispatcher.clone().run_settler(store.clone(), stopped));
        let mut redelivered = Vec::new();
        for _ in 0..2 {
            let queued = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("the failed uploads' events were not delivered again")
                .unwrap();
            assert!(queued.gate.is_none(), "a redelivered job waits for no commit");
            redelivered.push(key_of(&queued.record));
        }
        redelivered.sort();
        assert_eq!(redelivered, ["in/a", "in/b"]);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !store.pending_events().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "the settler did not settle");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.send(true).unwrap();
        settler.await.unwrap();
        let mut keys: Vec<String> = state
            .jobs("svc", None, 10)
            .unwrap()
            .jobs
            .iter()
            .map(key_of)
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            ["in/a", "in/b", "in/c"],
            "not exactly one job per acknowledged upload"
        );
        assert!(rx.try_recv().is_err(), "an upload's job was queued twice");
    }

    /// The event as it was built before, through a `serde_json::Value`.
    fn object_event_as_value(object: &ObjectCreated) -> serde_json::Value {
        let time = object.time.format(&Rfc3339).unwrap_or_default();
        serde_json::json!({
            "EventName": "s3:ObjectCreated:Put",
            "Key": format!("{}/{}", object.bucket, object.key),
            "Records": [{
                "eventVersion": "2.0",
                "eventSource": "minio:s3",
                "awsRegion": "",
                "eventTime": time,
                "eventName": "s3:ObjectCreated:Put",
                "userIdentity": {"principalId": object.principal},
                "requestParameters": {"principalId": object.principal, "region": "", "sourceIPAddress": "127.0.0.1"},
                "responseElements": {},
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "Config",
                    "bucket": {
                        "name": object.bucket,
                        "ownerIdentity": {"principalId": object.principal},
                        "arn": format!("arn:aws:s3:::{}", object.bucket),
                    },
                    "object": {
                        "key": encode_event_key(&object.key),
                        "size": object.size,
                        "eTag": object.etag,
                        "contentType": "application/octet-stream",
                        "userMetadata": {},
                        "sequencer": format!("{:X}", object.time.unix_timestamp_nanos()),
                    },
                },
                "source": {"host": "127.0.0.1", "port": "", "userAgent": "cloister"},
            }],
        })
    }

    /// Byte for byte what the `Value` gave: the text is what every job of an upload reads.
    #[test]
    fn object_events_are_written_as_before() {
        let object = ObjectCreated {
            id: 7,
            bucket: "bucket".into(),
            key: "in/a b+\"c\".png".into(),
            size: 1234,
            etag: "\"0123abcd\"".into(),
            time: OffsetDateTime::from_unix_timestamp_nanos(1_764_500_000_123_456_789).unwrap(),
            principal: "AKIA\\x".into(),
            subscribers: vec!["svc".into()],
        };
        assert_eq!(object_event(&object), object_event_as_value(&object).to_string());
    }

    #[test]
    fn event_keys_are_encoded_like_minio() {
        assert_eq!(encode_event_key("in/a b+c.png"), "in%2Fa+b%2Bc.png");
        assert_eq!(
            decode_event_key("in%2Fa+b%2Bc.png").as_deref(),
            Some("in/a b+c.png")
        );
        assert_eq!(decode_event_key("in/plain.txt").as_deref(), Some("in/plain.txt"));
    }
}
