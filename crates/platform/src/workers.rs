//! The worker pool: runs queued jobs through the executor, at most `concurrency` at a time,
//! and records their final state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloister_runtime::{JobInput, JobOutcome, JobSpec, Limits, OutputTarget, Status};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::Platform;
use crate::fdl::Service;
use crate::state::{JobRecord, JobSource, JobStatus, StateError};

/// A job's (service, name).
type JobKey = (String, String);

/// Jobs running now, with the means to cancel each (taken once it has been used).
#[derive(Default)]
pub(crate) struct Workers {
    running: Mutex<HashMap<JobKey, Option<oneshot::Sender<()>>>>,
}

impl Workers {
    /// Cancels a running job; false if it is not running here.
    pub fn cancel(&self, service: &str, job: &str) -> bool {
        let Ok(mut running) = self.running.lock() else {
            return false;
        };
        match running.get_mut(&(service.to_owned(), job.to_owned())) {
            Some(slot) => slot.take().map(|tx| tx.send(())).is_some(),
            None => false,
        }
    }

    fn claim(&self, service: &str, job: &str) -> Option<oneshot::Receiver<()>> {
        let mut running = self.running.lock().ok()?;
        let key = (service.to_owned(), job.to_owned());
        if running.contains_key(&key) {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        running.insert(key, Some(tx));
        Some(rx)
    }

    fn release(&self, service: &str, job: &str) {
        if let Ok(mut running) = self.running.lock() {
            running.remove(&(service.to_owned(), job.to_owned()));
        }
    }
}

/// Queues the jobs that were waiting or running when the server last stopped.
pub(crate) fn requeue_unfinished(platform: &Platform) -> Result<(), StateError> {
    let queued = platform.state.queued()?;
    if !queued.is_empty() {
        tracing::info!(jobs = queued.len(), "resuming jobs left from the previous run");
    }
    for record in queued {
        platform.dispatcher.requeue(record);
    }
    Ok(())
}

/// Takes jobs off the queue and runs them until shutdown.
pub(crate) async fn run(
    platform: Arc<Platform>,
    mut queue: mpsc::UnboundedReceiver<JobRecord>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(platform.config.concurrency.max(1)));
    loop {
        let record = tokio::select! {
            record = queue.recv() => match record {
                Some(r) => r,
                None => break,
            },
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let platform = platform.clone();
        tokio::spawn(async move {
            if let Err(e) = execute(&platform, record).await {
                tracing::error!(error = %e, "cannot record a job's progress");
            }
            drop(permit);
        });
    }
}

/// Builds the runtime's description of a job of `service`.
pub(crate) fn spec_for(
    platform: &Platform,
    service: &Service,
    job_name: &str,
    job_uuid: &str,
    input: JobInput,
    event: String,
    event_time: OffsetDateTime,
) -> JobSpec {
    let mut environment = service.environment.variables.clone();
    environment.extend(service.environment.secrets.clone());
    JobSpec {
        job_name: job_name.to_owned(),
        job_uuid: job_uuid.to_owned(),
        service: service.name.clone(),
        service_token: service.token.clone(),
        script: service.script.clone(),
        environment,
        input,
        event,
        event_time,
        outputs: service
            .output
            .iter()
            .map(|io| {
                let (bucket, folder) = io.bucket_and_folder();
                OutputTarget {
                    bucket: bucket.to_owned(),
                    folder: folder.to_owned(),
                    prefix: io.prefix.clone(),
                    suffix: io.suffix.clone(),
                }
            })
            .collect(),
        limits: Limits {
            memory_bytes: service.memory_bytes(),
            cpu_millis: service.cpu_millis(),
            timeout: platform.config.job_timeout,
        },
        log_limit: platform.config.log_limit,
    }
}

/// A job's log as stored: one `<RFC 3339 time> <line>` per line.
pub(crate) fn render_log(outcome: &JobOutcome) -> Vec<u8> {
    let mut out = Vec::new();
    for line in &outcome.log {
        out.extend_from_slice(line.time.format(&Rfc3339).unwrap_or_default().as_bytes());
        out.push(b' ');
        out.extend_from_slice(line.text.as_bytes());
        out.push(b'\n');
    }
    out
}

async fn execute(platform: &Arc<Platform>, queued: JobRecord) -> Result<(), StateError> {
    let state = &platform.state;
    // Queued records are what was committed; a job deleted meanwhile is noticed by `finish`.
    let mut record = queued;
    let Some(service) = platform.dispatcher.service(&record.service) else {
        return Ok(());
    };
    let input = match &record.source {
        JobSource::Object { bucket, key } => JobInput::Object {
            bucket: bucket.clone(),
            key: key.clone(),
        },
        JobSource::Payload => {
            JobInput::Inline(state.payload(&record.service, &record.name)?.unwrap_or_default())
        }
    };
    let spec = spec_for(
        platform,
        &service,
        &record.name,
        &record.uuid,
        input,
        record.event.clone(),
        record.creation_time,
    );
    let Some(cancelled) = platform.workers.claim(&record.service, &record.name) else {
        return Ok(());
    };
    let cancel = Box::pin(async move {
        if cancelled.await.is_err() {
            std::future::pending::<()>().await;
        }
    });
    let on_start = {
        let state = state.clone();
        let (service, job) = (record.service.clone(), record.name.clone());
        Box::new(move || {
            if let Err(e) = state.mark_running(&service, &job, OffsetDateTime::now_utc()) {
                tracing::warn!(error = %e, "cannot mark a job running");
            }
        })
    };
    let outcome = platform.executor.run(spec, cancel, on_start).await;
    platform.workers.release(&record.service, &record.name);

    // mark_running may have updated the record; keep its start time.
    if let Some(current) = state.job(&record.service, &record.name)? {
        record.start_time = current.start_time;
    } else {
        return Ok(());
    }
    record.status = match outcome.status {
        Status::Succeeded => JobStatus::Succeeded,
        Status::Failed => JobStatus::Failed,
    };
    record.finish_time = Some(OffsetDateTime::now_utc());
    record
        .start_time
        .get_or_insert(record.finish_time.unwrap_or(record.creation_time));
    record.exit_code = outcome.exit_code;
    record.reason = outcome.reason.clone();
    tracing::info!(job = %record.name, status = ?record.status, "job finished");
    state.finish(&record, &render_log(&outcome))?;
    Ok(())
}

/// Deletes finished jobs older than `retention`, once a minute (or more often for short
/// retentions).
pub(crate) async fn expire(
    platform: Arc<Platform>,
    retention: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let period = (retention / 4).clamp(Duration::from_millis(200), Duration::from_secs(60));
    loop {
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let cutoff = OffsetDateTime::now_utc() - retention;
        let state = platform.state.clone();
        match tokio::task::spawn_blocking(move || state.expire_jobs(cutoff)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(jobs = n, "expired finished jobs past the log retention"),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot expire old jobs"),
            Err(e) => tracing::warn!(error = %e, "job expiry task failed"),
        }
    }
}
