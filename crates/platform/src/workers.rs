//! The worker pool: runs queued jobs through the executor, at most `concurrency` at a time,
//! and records their final state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloister_runtime::{JobInput, JobOutcome, JobSpec, Limits, OutputTarget, Placement, Status, TeeKind};
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
        placement: placement_for(service),
    }
}

/// Where a service's jobs must run: OSCAR's `enable_sgx` translation (the SGX device-plugin
/// resource and `SYS_RAWIO`), plus an EPC request, runtime classes for confidential VMs, and
/// the attestation wiring the runtime reads.
pub(crate) fn placement_for(service: &Service) -> Placement {
    let mut resources = std::collections::BTreeMap::from([
        ("cpu".to_owned(), service.cpu.clone()),
        ("memory".to_owned(), service.memory.clone()),
    ]);
    if service.enable_gpu {
        resources.insert("nvidia.com/gpu".to_owned(), "1".to_owned());
    }
    let tee = match (&service.confidential, service.enable_sgx) {
        (Some(c), _) => Some(c.tee),
        (None, true) => Some(TeeKind::Sgx),
        (None, false) => None,
    };
    let mut capabilities = Vec::new();
    let mut runtime_class = None;
    match tee {
        Some(TeeKind::Sgx) => {
            resources.insert("sgx.intel.com/enclave".to_owned(), "1".to_owned());
            let epc = service.sgx_epc.clone().unwrap_or_else(|| service.memory.clone());
            resources.insert("sgx.intel.com/epc".to_owned(), epc);
            capabilities.push("SYS_RAWIO".to_owned());
        }
        Some(TeeKind::Tdx) => {
            runtime_class = Some(
                service
                    .confidential
                    .as_ref()
                    .and_then(|c| c.runtime_class.clone())
                    .unwrap_or_else(|| "kata-qemu-tdx".to_owned()),
            );
        }
        Some(TeeKind::Snp) => {
            runtime_class = Some(
                service
                    .confidential
                    .as_ref()
                    .and_then(|c| c.runtime_class.clone())
                    .unwrap_or_else(|| "kata-qemu-snp".to_owned()),
            );
        }
        Some(TeeKind::Sim) | None => {}
    }
    let mut attestation = std::collections::BTreeMap::new();
    if let Some(c) = &service.confidential {
        let tee_name = serde_json::to_value(c.tee)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        attestation.insert("CLOISTER_TEE".to_owned(), tee_name);
        attestation.insert("CLOISTER_CAS".to_owned(), c.cas.clone());
        attestation.insert("CLOISTER_CAS_PIN".to_owned(), c.cas_pin.clone());
        attestation.insert("CLOISTER_SESSION".to_owned(), c.session.clone());
        attestation.insert(
            "CLOISTER_SERVICE".to_owned(),
            c.service.clone().unwrap_or_else(|| service.name.clone()),
        );
    }
    Placement {
        image: service.image.clone(),
        resources,
        capabilities,
        runtime_class,
        tee,
        attestation,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn service(json: &str) -> Service {
        let mut service = Service::from_json(json.as_bytes()).unwrap();
        service.validate().unwrap();
        service.normalize();
        service
    }

    /// The job description executors receive for SGX, TDX and plain services, against golden
    /// files (update them deliberately when the description changes).
    #[test]
    fn placements_match_the_golden_files() {
        let cases = [
            (
                r#"{"name":"oscar-sgx","image":"registry/scone-app:1","script":"run","enable_sgx":true,"memory":"1Gi"}"#,
                include_str!("../tests/golden/placement-oscar-sgx.json"),
            ),
            (
                r#"{"name":"model","image":"registry/model:2","script":"run","cpu":"2","memory":"4Gi","enable_sgx":true,"sgx_epc":"2Gi",
                    "confidential":{"tee":"sgx","cas":"https://cas.example:8081","cas_pin":"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef","session":"hospital/inference","service":"runner"}}"#,
                include_str!("../tests/golden/placement-confidential-sgx.json"),
            ),
            (
                r#"{"name":"vm-job","image":"registry/tool:1","script":"run",
                    "confidential":{"tee":"tdx","cas":"https://cas.example:8081","cas_pin":"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef","session":"lab/tdx"}}"#,
                include_str!("../tests/golden/placement-tdx.json"),
            ),
            (
                r#"{"name":"plain","image":"debian","script":"run"}"#,
                include_str!("../tests/golden/placement-plain.json"),
            ),
        ];
        for (json, golden) in cases {
            let placement = placement_for(&service(json));
            let expected: Placement = serde_json::from_str(golden).unwrap();
            assert_eq!(
                placement,
                expected,
                "{}",
                serde_json::to_string_pretty(&placement).unwrap()
            );
        }
    }

    #[test]
    fn confidential_blocks_are_validated() {
        let base = r#"{"name":"x","script":"run","confidential":{"tee":"sgx","cas":"https://c","cas_pin":"sha256:PIN","session":"a/b"}}"#;
        let pin = "0".repeat(64);
        let ok = base.replace("PIN", &pin);
        Service::from_json(ok.as_bytes()).unwrap().validate().unwrap();
        for (from, to, field) in [
            ("https://c", "http://c", "confidential.cas"),
            ("sha256:PIN", "sha256:abc", "confidential.cas_pin"),
            ("a/b", "", "confidential.session"),
        ] {
            let bad = base.replace(from, to).replace("PIN", &pin);
            let err = Service::from_json(bad.as_bytes())
                .unwrap()
                .validate()
                .unwrap_err();
            assert!(err.to_string().contains(field), "{err}");
        }
        let nul = ok.replace("\"session\"", "\"args\":[\"a\",\"b\\u0000\"],\"session\"");
        let err = Service::from_json(nul.as_bytes())
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("confidential.args[1]"), "{err}");
        let many = ok.replace(
            "\"session\"",
            &format!("\"args\":{:?},\"session\"", vec!["x"; 65]),
        );
        let err = Service::from_json(many.as_bytes())
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("confidential.args"), "{err}");
        let mismatch = ok
            .replace("\"tee\":\"sgx\"", "\"tee\":\"tdx\"")
            .replace("\"name\":\"x\"", "\"name\":\"x\",\"enable_sgx\":true");
        assert!(
            Service::from_json(mismatch.as_bytes())
                .unwrap()
                .validate()
                .is_err()
        );
        assert!(
            Service::from_json(br#"{"name":"x","script":"r","confidential":{"tee":"quantum"}}"#).is_err()
        );
    }
}
