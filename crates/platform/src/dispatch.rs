//! Turning object-created events into jobs, exactly once per acknowledged upload.
//!
//! As an object is written, [`Dispatcher::before_write`] finds the services whose input path
//! matches and durably records an intent naming them (the storage runs it alongside the write;
//! the intent's time is taken before the write begins). After the write, the intent is
//! replaced by one job record per service in a single transaction; only then is the upload
//! acknowledged. At start-up, [`Dispatcher::recover`] resolves intents left by a crash: if the
//! object is there and was written after the intent, the jobs are created; otherwise the write
//! never happened and the intent is dropped.

use std::sync::{Arc, RwLock};

use cloister_storage::{EventError, ObjectCreated, ObjectEvents, Store, WriteIntent};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::mpsc::UnboundedSender;

use crate::fdl::Service;
use crate::state::{Intent, JobRecord, JobSource, JobStatus, NewJob, QueueBounds, State, StateError};

/// The store's event sink and the source of new jobs.
pub struct Dispatcher {
    state: Arc<State>,
    services: RwLock<Arc<Vec<Service>>>,
    queue: UnboundedSender<JobRecord>,
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

/// The MinIO-shaped `s3:ObjectCreated:Put` event OSCAR delivers to jobs.
pub fn object_event(object: &ObjectCreated) -> serde_json::Value {
    let time = object.time.format(&Rfc3339).unwrap_or_default();
    json!({
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
    pub fn new(state: Arc<State>, queue: UnboundedSender<JobRecord>) -> Result<Self, StateError> {
        let services = RwLock::new(Arc::new(state.services()?));
        Ok(Self {
            state,
            services,
            queue,
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

    /// Records jobs and queues them.
    pub fn submit(&self, intent: Option<u64>, jobs: Vec<NewJob>) -> Result<Vec<JobRecord>, StateError> {
        let created = self.state.create_jobs(intent, jobs)?;
        for record in &created {
            log_created(record);
            // The receiver only goes away at shutdown; the job stays queued on disk.
            let _ = self.queue.send(record.clone());
        }
        Ok(created)
    }

    /// Records a `POST /job`'s job within `bounds` (see [`State::create_job_bounded`]) and
    /// queues it.
    pub fn submit_bounded(&self, job: NewJob, bounds: QueueBounds) -> Result<JobRecord, StateError> {
        let created = self.state.create_job_bounded(job, bounds)?;
        log_created(&created);
        let _ = self.queue.send(created.clone());
        Ok(created)
    }

    /// Puts an already recorded job back on the in-memory queue (after a restart).
    pub fn requeue(&self, record: JobRecord) {
        let _ = self.queue.send(record);
    }

    fn jobs_for(&self, intent: &Intent, object: &ObjectCreated) -> Vec<NewJob> {
        let event = object_event(object).to_string();
        let services = self.services();
        intent
            .services
            .iter()
            .filter_map(|name| services.iter().find(|s| &s.name == name))
            .map(|service| NewJob {
                record: new_job(
                    service,
                    JobSource::Object {
                        bucket: object.bucket.clone(),
                        key: object.key.clone(),
                    },
                    event.clone(),
                ),
                payload: None,
            })
            .collect()
    }

    /// Resolves intents left by a crash (see the module documentation).
    pub async fn recover(&self, store: &Store) -> Result<(), anyhow::Error> {
        for (id, intent) in self.state.intents()? {
            let head = store.head(&intent.bucket, &intent.key).await?;
            // The store records which write made each version: the intent's write committed
            // exactly when the current version names it.
            let written = head
                .filter(|info| info.written_by == Some(WriteIntent(id)))
                .map(|info| {
                    let modified = info.last_modified.unwrap_or_else(OffsetDateTime::now_utc);
                    (info, modified)
                });
            match written {
                Some((info, modified)) => {
                    let object = ObjectCreated {
                        bucket: intent.bucket.clone(),
                        key: intent.key.clone(),
                        size: info.size,
                        etag: info.etag,
                        time: modified,
                        principal: "cloister-recovery".to_owned(),
                    };
                    let jobs = self.jobs_for(&intent, &object);
                    tracing::info!(bucket = %intent.bucket, key = %intent.key, jobs = jobs.len(), "recovered an interrupted upload");
                    self.submit(Some(id), jobs)?;
                }
                None => self.state.drop_intent(id)?,
            }
        }
        Ok(())
    }
}

impl ObjectEvents for Dispatcher {
    fn wants(&self, bucket: &str, key: &str) -> bool {
        self.services()
            .iter()
            .any(|s| s.input.iter().any(|io| io.matches(bucket, key)))
    }

    fn before_write(&self, bucket: &str, key: &str) -> Result<Option<WriteIntent>, EventError> {
        let services: Vec<String> = self
            .services()
            .iter()
            .filter(|s| s.input.iter().any(|io| io.matches(bucket, key)))
            .map(|s| s.name.clone())
            .collect();
        if services.is_empty() {
            return Ok(None);
        }
        let intent = Intent {
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            services,
            time: OffsetDateTime::now_utc(),
        };
        Ok(Some(WriteIntent(self.state.add_intent(&intent)?)))
    }

    fn object_created(&self, intent: WriteIntent, object: &ObjectCreated) -> Result<(), EventError> {
        let Some(recorded) = self.state.intent(intent.0)? else {
            return Err("upload intent vanished".into());
        };
        let jobs = self.jobs_for(&recorded, object);
        self.submit(Some(intent.0), jobs)?;
        Ok(())
    }

    fn write_failed(&self, intent: WriteIntent) {
        if let Err(e) = self.state.drop_intent(intent.0) {
            tracing::warn!(error = %e, "cannot drop a failed upload's intent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
