//! The worker pool: runs queued jobs through the executor, at most `concurrency` at a time,
//! and records their final state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloister_attestation::Tee;
use cloister_runtime::tee::{SEALED_LOG_OVERHEAD, render_log};
use cloister_runtime::{
    AttestationWiring, JobInput, JobOutcome, JobSpec, Limits, LogLine, Placement, Status, StorageAccess,
};
use cloister_storage::{JobScope, ScopedFolder, ScopedObject};
use time::OffsetDateTime;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use crate::Platform;
use crate::fdl::Service;
use crate::gate::Queued;
use crate::state::{JobSource, JobStatus, StateError};

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

/// How long a job runs before it is recorded Running.
const RUNNING_AFTER: Duration = Duration::from_millis(20);

/// Takes jobs off the queue and runs them until shutdown.
pub(crate) async fn run(
    platform: Arc<Platform>,
    mut queue: mpsc::UnboundedReceiver<Queued>,
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
        outputs: service.output.iter().map(crate::fdl::StorageIo::target).collect(),
        limits: Limits {
            memory_bytes: service.memory_bytes(),
            cpu_millis: service.cpu_millis(),
            timeout: platform.config.job_timeout,
        },
        log_limit: platform.config.log_limit,
        placement: placement_for(service),
        storage: None,
    }
}

/// Tells the executor how many warm instances `service` wants for its synchronous invocations
/// (`synchronous.min_scale`), and what they run; called when a service is created or changed
/// and for every service at start.
pub(crate) fn keep_warm(platform: &Platform, service: &Service) {
    let replicas = service.synchronous.as_ref().map_or(0, |s| s.min_scale);
    let template = (replicas > 0).then(|| {
        spec_for(
            platform,
            service,
            &format!("{}-warm", service.name),
            "warm",
            JobInput::None,
            String::new(),
            OffsetDateTime::now_utc(),
        )
    });
    platform.executor.keep_warm(&service.name, replicas, template);
}

/// How long a job's storage credential outlives the job's timeout: the runtime stages the input
/// before the script's clock starts and uploads outputs after it stops, and an executor may
/// take a while to notice the end of a job it re-attached to after a restart.
const CREDENTIAL_GRACE: Duration = Duration::from_secs(300);

/// What a job may touch in the store: its input object, and its service's output folders.
fn storage_scope(spec: &JobSpec) -> JobScope {
    JobScope {
        read: match &spec.input {
            JobInput::Object { bucket, key } => vec![ScopedObject {
                bucket: bucket.clone(),
                key: key.clone(),
            }],
            JobInput::None | JobInput::Inline(_) => Vec::new(),
        },
        write: spec
            .outputs
            .iter()
            .map(|target| ScopedFolder {
                bucket: target.bucket.clone(),
                folder: target.folder.clone(),
            })
            .collect(),
    }
}

/// A storage credential for a starting job, valid for its timeout plus [`CREDENTIAL_GRACE`].
/// A failure to issue one is logged and the job goes on without: an executor that needs it
/// refuses the job, one that reads the store in-process does not miss it.
async fn issue_storage_access(platform: &Platform, spec: &JobSpec) -> Option<StorageAccess> {
    let lifetime = spec.limits.timeout.saturating_add(CREDENTIAL_GRACE);
    match platform
        .store
        .issue_job_credential(storage_scope(spec), lifetime, &spec.job_name)
        .await
    {
        Ok(credential) => Some(StorageAccess {
            endpoint: platform.s3_endpoint.clone(),
            region: platform.config.s3_region.clone(),
            secret_access_key: credential.secret_access_key().to_owned(),
            access_key_id: credential.access_key_id,
            expires: credential.expires,
        }),
        Err(e) => {
            tracing::warn!(service = %spec.service, job = %spec.job_name, error = %e, "cannot issue the job's storage credential");
            None
        }
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
        (None, true) => Some(Tee::Sgx),
        (None, false) => None,
    };
    let mut capabilities = Vec::new();
    let mut runtime_class = None;
    match tee {
        Some(Tee::Sgx) => {
            resources.insert("sgx.intel.com/enclave".to_owned(), "1".to_owned());
            let epc = service.sgx_epc.clone().unwrap_or_else(|| service.memory.clone());
            resources.insert("sgx.intel.com/epc".to_owned(), epc);
            capabilities.push("SYS_RAWIO".to_owned());
        }
        Some(Tee::Tdx) => {
            runtime_class = Some(
                service
                    .confidential
                    .as_ref()
                    .and_then(|c| c.runtime_class.clone())
                    .unwrap_or_else(|| "kata-qemu-tdx".to_owned()),
            );
        }
        Some(Tee::Snp) => {
            runtime_class = Some(
                service
                    .confidential
                    .as_ref()
                    .and_then(|c| c.runtime_class.clone())
                    .unwrap_or_else(|| "kata-qemu-snp".to_owned()),
            );
        }
        Some(Tee::Sim) | None => {}
    }
    let attestation = service.confidential.as_ref().map(|c| AttestationWiring {
        cas: c.cas.clone(),
        cas_pin: c.cas_pin.clone(),
        service: c.service.clone().unwrap_or_else(|| service.name.clone()),
        session: c.session.clone(),
        tee: c.tee,
    });
    Placement {
        image: service.image.clone(),
        resources,
        capabilities,
        runtime_class,
        tee,
        attestation,
        network: service.enable_network,
        // Validated when the service was accepted.
        image_pull_policy: service
            .image_pull_policy
            .as_deref()
            .and_then(|p| p.parse().ok())
            .unwrap_or_default(),
        image_pull_secrets: service.image_pull_secrets.clone(),
    }
}

/// A job's log as stored, and its sealed log if the executor brought one within the job's
/// bound (the log limit plus the ciphertext's overhead). A larger one is dropped whole, since a
/// cut ciphertext would not open, and the plain log says so.
fn logs_to_store(outcome: &mut JobOutcome, log_limit: usize) -> (Vec<u8>, Option<Vec<u8>>) {
    let sealed = outcome.sealed_log.take();
    let limit = log_limit.saturating_add(SEALED_LOG_OVERHEAD);
    let sealed = match sealed {
        Some(sealed) if sealed.len() > limit => {
            outcome.log.push(LogLine {
                time: OffsetDateTime::now_utc(),
                text: format!(
                    "cloister: the sealed log ({} bytes) is longer than the {limit} bytes kept per job and was dropped",
                    sealed.len()
                ),
            });
            None
        }
        sealed => sealed,
    };
    (render_log(&outcome.log), sealed)
}

async fn execute(platform: &Arc<Platform>, queued: Queued) -> Result<(), StateError> {
    let state = &platform.state;
    // Queued records are what was committed (or will be, behind a gate); a job deleted
    // meanwhile is noticed by `finish`.
    let Queued { mut record, gate } = queued;
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
    let mut spec = spec_for(
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
    if platform.executor.needs_storage_access(&spec) {
        spec.storage = issue_storage_access(platform, &spec).await;
    }
    let credential = spec.storage.as_ref().map(|access| access.access_key_id.clone());
    // When the script was released, kept here rather than read back from the state: a job is
    // queued before its record's commit ends (`State::create_event_jobs`), and only a write
    // transaction is sure to wait for that commit. A gate that releases the script sets it.
    let started = Arc::new(std::sync::OnceLock::new());
    let (started_tx, started_rx) = oneshot::channel();
    let on_start = {
        let started = started.clone();
        let (service, job) = (record.service.clone(), record.name.clone());
        Box::new(move || {
            let at = *started.get_or_init(OffsetDateTime::now_utc);
            tracing::info!(%service, %job, "job started");
            let _ = started_tx.send(at);
        })
    };
    let run = async {
        match &gate {
            Some(gate) => {
                let gate = gate.clone().for_runtime(record.name.clone(), started.clone());
                platform.executor.run_gated(spec, gate, cancel, on_start).await
            }
            None => platform.executor.run(spec, cancel, on_start).await,
        }
    };
    // A job still running a moment after its start is recorded Running; one that ends before
    // is not: its final state, start time included, is its next write. Most jobs of a busy
    // service are short, and that commit was a sixth of the work of an upload's job.
    let mark_running = async {
        if let Ok(at) = started_rx.await {
            tokio::time::sleep(RUNNING_AFTER).await;
            if let Err(e) = state.mark_running(&record.service, &record.name, at) {
                tracing::warn!(error = %e, "cannot mark a job running");
            }
        }
    };
    let mut outcome = {
        tokio::pin!(run);
        tokio::select! {
            outcome = &mut run => outcome,
            () = mark_running => run.await,
        }
    };
    platform.workers.release(&record.service, &record.name);
    if let Some(gate) = gate {
        // Decided by now: the run waited for it, or was cancelled (and then the job's upload
        // is committed or not by the time its commit ends).
        let decided = gate.wait_for_record(&record.name).await;
        match decided {
            Some(committed) => record = committed,
            None => {
                tracing::debug!(job = %record.name, "a job whose upload was not committed was dropped unrun");
                revoke(platform, credential, &record.name).await;
                return Ok(());
            }
        }
    }
    revoke(platform, credential, &record.name).await;

    record.start_time = started.get().copied();
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
    let ran_for = record
        .finish_time
        .zip(record.start_time)
        .map(|(finish, start)| Duration::try_from(finish - start).unwrap_or_default());
    tracing::info!(
        service = %record.service,
        job = %record.name,
        status = ?record.status,
        exit_code = record.exit_code,
        duration = ?ran_for.unwrap_or_default(),
        reason = record.reason.as_deref().unwrap_or(""),
        "job finished"
    );
    let (log, sealed_log) = logs_to_store(&mut outcome, platform.config.log_limit);
    // A job deleted while it ran is not recorded again (`finish` is false then).
    state.finish(&record, &log, sealed_log.as_deref())?;
    Ok(())
}

async fn revoke(platform: &Platform, credential: Option<String>, job: &str) {
    if let Some(credential) = credential
        && let Err(e) = platform.store.revoke_job_credential(&credential).await
    {
        // It still expires with the job's timeout.
        tracing::warn!(%job, error = %e, "cannot revoke the job's storage credential");
    }
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
    use crate::dispatch::Dispatcher;
    use crate::executor::Executor;
    use crate::state::{NewJob, State};

    /// Stands in for an executor whose runtime sealed the script's output.
    struct SealingExecutor {
        sealed: Vec<u8>,
    }

    #[async_trait::async_trait]
    impl Executor for SealingExecutor {
        fn name(&self) -> &'static str {
            "sealing"
        }

        async fn run(
            &self,
            spec: JobSpec,
            _cancel: futures::future::BoxFuture<'static, ()>,
            on_start: Box<dyn FnOnce() + Send>,
        ) -> JobOutcome {
            on_start();
            JobOutcome {
                status: Status::Succeeded,
                exit_code: Some(0),
                reason: None,
                log: vec![LogLine {
                    time: OffsetDateTime::now_utc(),
                    text: format!("cloister: ran {}", spec.job_name),
                }],
                stdout: Vec::new(),
                files: Vec::new(),
                uploaded: Vec::new(),
                sealed_log: Some(self.sealed.clone()),
            }
        }

        async fn run_sync(&self, _spec: JobSpec, _max_output: u64) -> JobOutcome {
            JobOutcome {
                reason: Some("not used".to_owned()),
                ..JobOutcome::new(Status::Failed)
            }
        }
    }

    const LOG_LIMIT: usize = 1000;

    /// A platform over a fresh data directory with `service` and `executor`; the receiver gets
    /// the jobs it queues. Its S3 endpoint is `s3_endpoint` (nothing listens there unless the
    /// test serves the store).
    fn test_platform(
        dir: &std::path::Path,
        service: &Service,
        executor: Arc<dyn Executor>,
        s3_endpoint: &str,
    ) -> (Arc<Platform>, mpsc::UnboundedReceiver<Queued>) {
        test_platform_with(dir, service, |_| executor, |dispatcher| dispatcher, s3_endpoint)
    }

    /// As [`test_platform`], with the executor made for the platform's store and the store's
    /// event sink made around its dispatcher.
    fn test_platform_with(
        dir: &std::path::Path,
        service: &Service,
        executor: impl FnOnce(&cloister_storage::Store) -> Arc<dyn Executor>,
        sink: impl FnOnce(Arc<Dispatcher>) -> Arc<dyn cloister_storage::ObjectEvents>,
        s3_endpoint: &str,
    ) -> (Arc<Platform>, mpsc::UnboundedReceiver<Queued>) {
        let state = Arc::new(State::open(&dir.join("state.redb")).unwrap());
        assert!(state.put_service(service, true).unwrap());
        let (tx, rx) = mpsc::unbounded_channel();
        let dispatcher = Arc::new(Dispatcher::new(state.clone(), tx).unwrap());
        let store = cloister_storage::Store::open(&dir.join("objects"), sink(dispatcher.clone())).unwrap();
        let executor = executor(&store);
        let config = crate::Config {
            data_dir: dir.to_path_buf(),
            listen: "127.0.0.1:0".parse().unwrap(),
            s3_listen: "127.0.0.1:0".parse().unwrap(),
            admin_user: "admin".into(),
            admin_password: "password".into(),
            s3_access_key: "access".into(),
            s3_secret_key: "secret".into(),
            s3_region: "us-east-1".into(),
            concurrency: 1,
            job_timeout: Duration::from_secs(60),
            log_retention: None,
            max_body: 1 << 20,
            max_queued_jobs: 10,
            max_queued_bytes: 1 << 20,
            max_sync_invocations: 2,
            log_limit: LOG_LIMIT,
            runtime_binary: None,
            plain_dir: dir.join("plain"),
            work_dir: None,
            db_cache_bytes: crate::state::DEFAULT_CACHE_BYTES,
            connections: Default::default(),
            executor: crate::ExecutorKind::Host,
            container_engine: None,
            registry_auth_dir: None,
        };
        let platform = Arc::new(Platform {
            state,
            presigner: cloister_storage::Presigner::new(s3_endpoint, "us-east-1", "access", "secret"),
            store,
            executor,
            workers: Workers::default(),
            s3_endpoint: s3_endpoint.into(),
            sync_slots: Arc::new(Semaphore::new(1)),
            sync_admission: Semaphore::new(2),
            sim_platform_public: String::new(),
            dispatcher,
            config,
        });
        (platform, rx)
    }

    /// Runs one `POST /job`-style job of a fresh platform through `execute`; returns the
    /// state and the job's name.
    async fn run_one(dir: &std::path::Path, sealed: Vec<u8>) -> (Arc<State>, String) {
        let mut service = Service::from_json(br#"{"name":"conf","script":"true"}"#).unwrap();
        service.token = "t".repeat(64);
        let (platform, mut rx) = test_platform(
            dir,
            &service,
            Arc::new(SealingExecutor { sealed }),
            "http://127.0.0.1:1",
        );
        let job = NewJob {
            record: crate::dispatch::new_job(&service, JobSource::Payload, "{}".into()),
            payload: Some(b"{}".to_vec()),
        };
        platform
            .dispatcher
            .submit_bounded(job, platform.queue_bounds())
            .unwrap();
        let queued = rx.recv().await.unwrap();
        let name = queued.record.name.clone();
        execute(&platform, queued).await.unwrap();
        (platform.state.clone(), name)
    }

    #[tokio::test]
    async fn a_sealed_log_is_stored_with_the_job_and_the_queue_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let sealed = vec![0xA5; LOG_LIMIT + SEALED_LOG_OVERHEAD];
        let (state, job) = run_one(dir.path(), sealed.clone()).await;
        let record = state.job("conf", &job).unwrap().unwrap();
        assert_eq!(record.status, JobStatus::Succeeded);
        assert_eq!(state.sealed_log("conf", &job).unwrap(), Some(sealed));
        let log = String::from_utf8(state.log("conf", &job).unwrap().unwrap()).unwrap();
        assert!(log.contains(&format!("cloister: ran {job}")), "{log}");
        assert!(!log.contains("dropped"), "{log}");
        assert_eq!(state.queue_usage("conf").unwrap(), Default::default());
    }

    #[tokio::test]
    async fn an_oversized_sealed_log_is_dropped_with_a_note() {
        let dir = tempfile::tempdir().unwrap();
        let sealed = vec![0xA5; LOG_LIMIT + SEALED_LOG_OVERHEAD + 1];
        let (state, job) = run_one(dir.path(), sealed).await;
        assert_eq!(state.sealed_log("conf", &job).unwrap(), None);
        let record = state.job("conf", &job).unwrap().unwrap();
        assert_eq!(record.status, JobStatus::Succeeded);
        let log = String::from_utf8(state.log("conf", &job).unwrap().unwrap()).unwrap();
        assert!(log.contains(&format!("cloister: ran {job}")), "{log}");
        assert!(
            log.contains(
                "sealed log (66537 bytes) is longer than the 66536 bytes kept per job and was dropped"
            ),
            "{log}"
        );
    }

    /// The store's sink, holding each upload's commit until the upload's job has staged its
    /// input (its release is handed to the gate right after), and noting when each upload's
    /// jobs were recorded.
    struct HeldCommit {
        dispatcher: Arc<Dispatcher>,
        work_root: std::path::PathBuf,
        recorded: Mutex<HashMap<String, OffsetDateTime>>,
    }

    impl cloister_storage::ObjectEvents for HeldCommit {
        fn subscribers(&self, bucket: &str, key: &str) -> Vec<String> {
            self.dispatcher.subscribers(bucket, key)
        }
        fn object_created(
            &self,
            event: &cloister_storage::ObjectCreated,
        ) -> Result<(), cloister_storage::EventError> {
            let created = self.dispatcher.object_created(event);
            self.recorded
                .lock()
                .unwrap()
                .insert(event.key.clone(), OffsetDateTime::now_utc());
            created
        }
        fn object_committing(&self, event: &cloister_storage::ObjectCreated, content: Option<&[u8]>) {
            self.dispatcher.object_committing(event, content);
            let name = event.key.rsplit('/').next().unwrap().to_owned();
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while std::time::Instant::now() < deadline {
                let staged = std::fs::read_dir(&self.work_root)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .any(|slot| slot.path().join("input").join(&name).exists());
                if staged {
                    std::thread::sleep(Duration::from_millis(100));
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        fn object_abandoned(&self, event: &cloister_storage::ObjectCreated) {
            self.dispatcher.object_abandoned(event);
        }
    }

    /// Stands in for an executor whose job runs for a while after its start.
    struct RunsFor(Duration);

    #[async_trait::async_trait]
    impl Executor for RunsFor {
        fn name(&self) -> &'static str {
            "runs-for"
        }

        async fn run(
            &self,
            _spec: JobSpec,
            _cancel: futures::future::BoxFuture<'static, ()>,
            on_start: Box<dyn FnOnce() + Send>,
        ) -> JobOutcome {
            on_start();
            tokio::time::sleep(self.0).await;
            JobOutcome {
                exit_code: Some(0),
                ..JobOutcome::new(Status::Succeeded)
            }
        }

        async fn run_sync(&self, _spec: JobSpec, _max_output: u64) -> JobOutcome {
            unreachable!("not used")
        }
    }

    /// A job that ends right after its start costs one write, its final state (with its start
    /// time); one still running a while after its start is recorded Running meanwhile.
    #[tokio::test]
    async fn only_jobs_still_running_after_a_while_are_recorded_running() {
        for runs_for in [Duration::ZERO, RUNNING_AFTER * 10] {
            let dir = tempfile::tempdir().unwrap();
            let mut service = Service::from_json(br#"{"name":"svc","script":"true"}"#).unwrap();
            service.token = "t".repeat(64);
            let (platform, mut rx) = test_platform(
                dir.path(),
                &service,
                Arc::new(RunsFor(runs_for)),
                "http://127.0.0.1:1",
            );
            let job = NewJob {
                record: crate::dispatch::new_job(&service, JobSource::Payload, "{}".into()),
                payload: Some(b"{}".to_vec()),
            };
            platform
                .dispatcher
                .submit_bounded(job, platform.queue_bounds())
                .unwrap();
            let queued = rx.recv().await.unwrap();
            let name = queued.record.name.clone();
            let writes = platform.state.writes_begun();
            let running = async {
                let deadline = std::time::Instant::now() + runs_for;
                let mut seen = None;
                while std::time::Instant::now() < deadline {
                    let record = platform.state.job("svc", &name).unwrap().unwrap();
                    if record.status == JobStatus::Running {
                        seen = record.start_time;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                seen
            };
            let (executed, running) = tokio::join!(execute(&platform, queued), running);
            executed.unwrap();
            let record = platform.state.job("svc", &name).unwrap().unwrap();
            assert_eq!(record.status, JobStatus::Succeeded);
            let started = record.start_time.expect("no start time recorded");
            if runs_for.is_zero() {
                assert_eq!(
                    platform.state.writes_begun() - writes,
                    1,
                    "a job that ended at once was recorded more than once"
                );
            } else {
                assert_eq!(
                    running,
                    Some(started),
                    "a long job was not recorded Running with its start"
                );
            }
        }
    }

    /// The host executor, hearing its gates' decisions late: a job that waits for the decision
    /// to release its script starts well after its record.
    struct HearsLate(crate::executor::LocalExecutor);

    #[async_trait::async_trait]
    impl Executor for HearsLate {
        fn name(&self) -> &'static str {
            "hears-late"
        }

        async fn run(
            &self,
            spec: JobSpec,
            cancel: futures::future::BoxFuture<'static, ()>,
            on_start: Box<dyn FnOnce() + Send>,
        ) -> JobOutcome {
            self.0.run(spec, cancel, on_start).await
        }

        async fn run_gated(
            &self,
            spec: JobSpec,
            mut gate: cloister_runtime::Gate,
            cancel: futures::future::BoxFuture<'static, ()>,
            on_start: Box<dyn FnOnce() + Send>,
        ) -> JobOutcome {
            let decision = gate.decision;
            gate.decision = Box::pin(async move {
                let decided = decision.await;
                tokio::time::sleep(HEARD_AFTER).await;
                decided
            });
            self.0.run_gated(spec, gate, cancel, on_start).await
        }

        async fn run_sync(&self, spec: JobSpec, max_output: u64) -> JobOutcome {
            self.0.run_sync(spec, max_output).await
        }
    }

    const HEARD_AFTER: Duration = Duration::from_millis(500);

    /// An upload's job is readied during the upload's commit with the upload's bytes as its
    /// input (the object is not visible yet) and its script held; the thread that records the
    /// job releases the script and records its start (not the job's task, which hears of the
    /// decision later), and a job whose record fails is never released: its script never runs.
    #[tokio::test]
    async fn an_uploads_job_is_released_by_its_record_with_the_bytes_it_was_given() {
        let dir = tempfile::tempdir().unwrap();
        let (ran, ran_at) = (dir.path().join("ran"), dir.path().join("ran_at"));
        let mut service = Service::from_json(
            format!(
                r#"{{"name":"svc","script":"cat \"$INPUT_FILE_PATH\" >> {}; date +%s%N > {}","input":[{{"path":"svc/in"}}]}}"#,
                ran.display(),
                ran_at.display()
            )
            .as_bytes(),
        )
        .unwrap();
        service.validate().unwrap();
        service.normalize();
        service.token = "t".repeat(64);
        let work_root = dir.path().join("work");
        let sink = std::sync::OnceLock::new();
        let (platform, rx) = test_platform_with(
            dir.path(),
            &service,
            |store| {
                Arc::new(HearsLate(crate::executor::LocalExecutor::new(
                    store.clone(),
                    &work_root,
                )))
            },
            |dispatcher| {
                let held = Arc::new(HeldCommit {
                    dispatcher,
                    work_root: work_root.clone(),
                    recorded: Mutex::default(),
                });
                let _ = sink.set(held.clone());
                held
            },
            "http://127.0.0.1:1",
        );
        let (_stop, stopped) = watch::channel(false);
        tokio::spawn(run(platform.clone(), rx, stopped));
        platform.store.create_bucket("svc", false).await.unwrap();
        let finished = |key: &'static str| {
            let state = platform.state.clone();
            async move {
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                loop {
                    let jobs = state.jobs("svc", None, 10).unwrap().jobs;
                    let job = jobs
                        .into_iter()
                        .find(|j| matches!(&j.source, JobSource::Object { key: k, .. } if k == key));
                    if let Some(job) = job.filter(|j| j.status.is_final()) {
                        return job;
                    }
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the job of {key} did not finish"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };

        platform
            .store
            .put_bytes("svc", "in/first", "the first upload\n".into())
            .await
            .unwrap();
        let job = finished("in/first").await;
        assert_eq!(job.status, JobStatus::Succeeded);
        assert_eq!(std::fs::read_to_string(&ran).unwrap(), "the first upload\n");
        let recorded = sink.get().unwrap().recorded.lock().unwrap()["in/first"];
        let started = job.start_time.unwrap();
        assert!(
            started <= recorded,
            "the script was not released by the thread that recorded its job ({started} > {recorded})"
        );
        let ran_at: i128 = std::fs::read_to_string(&ran_at).unwrap().trim().parse().unwrap();
        let ran_at = OffsetDateTime::from_unix_timestamp_nanos(ran_at).unwrap();
        assert!(
            ran_at >= started && ran_at - started < HEARD_AFTER / 2,
            "the script did not run at its release ({started}) but at {ran_at}"
        );

        platform
            .state
            .fail_writes
            .store(1, std::sync::atomic::Ordering::Release);
        platform
            .store
            .put_bytes("svc", "in/second", "the second upload\n".into())
            .await
            .unwrap();
        tokio::time::sleep(HEARD_AFTER * 2).await;
        assert_eq!(
            std::fs::read_to_string(&ran).unwrap(),
            "the first upload\n",
            "the script of a job whose record failed ran"
        );
        assert!(
            platform
                .state
                .jobs("svc", None, 10)
                .unwrap()
                .jobs
                .iter()
                .all(|j| matches!(&j.source, JobSource::Object { key, .. } if key == "in/first")),
            "a record was left"
        );
    }

    /// Stands in for a container executor: uses the job's storage credential over the real S3
    /// endpoint as the runtime in a container will, and reports what it was allowed to do.
    #[derive(Default)]
    struct CredentialUser {
        seen: Mutex<Vec<String>>,
        access: Mutex<Option<StorageAccess>>,
    }

    fn s3_client(access: &StorageAccess, bucket: &str) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&access.endpoint)
            .with_region(&access.region)
            .with_access_key_id(&access.access_key_id)
            .with_secret_access_key(&access.secret_access_key)
            .with_bucket_name(bucket)
            .with_allow_http(true)
            .build()
            .unwrap()
    }

    #[async_trait::async_trait]
    impl Executor for CredentialUser {
        fn name(&self) -> &'static str {
            "credential-user"
        }

        fn needs_storage_access(&self, _spec: &JobSpec) -> bool {
            true
        }

        async fn run(
            &self,
            spec: JobSpec,
            _cancel: futures::future::BoxFuture<'static, ()>,
            on_start: Box<dyn FnOnce() + Send>,
        ) -> JobOutcome {
            use object_store::ObjectStoreExt as _;
            on_start();
            let access = spec.storage.clone().unwrap();
            let JobInput::Object { bucket, key } = &spec.input else {
                panic!("{:?}", spec.input)
            };
            let s3 = s3_client(&access, bucket);
            let path = |k: &str| object_store::path::Path::parse(k).unwrap();
            let mut seen = Vec::new();
            let mut note =
                |what: &str, ok: bool| seen.push(format!("{what}: {}", if ok { "ok" } else { "refused" }));
            note("get input", s3.get(&path(key)).await.is_ok());
            note("get other", s3.get(&path("in/other.txt")).await.is_ok());
            for (what, k) in [
                ("put output", "out/result.txt"),
                ("put beside", "outside/result.txt"),
                ("put input", "in/new.txt"),
            ] {
                let put = s3
                    .put(&path(k), object_store::PutPayload::from_static(b"r"))
                    .await;
                note(what, put.is_ok());
            }
            *self.seen.lock().unwrap() = seen;
            *self.access.lock().unwrap() = Some(access);
            JobOutcome {
                exit_code: Some(0),
                ..JobOutcome::new(Status::Succeeded)
            }
        }

        async fn run_sync(&self, _spec: JobSpec, _max_output: u64) -> JobOutcome {
            unreachable!("not used")
        }
    }

    /// A job gets a credential for exactly its input and its output folder when it starts,
    /// expiring after its timeout, and it is revoked when the job ends.
    #[tokio::test]
    async fn a_job_gets_a_scoped_storage_credential_revoked_at_its_end() {
        use object_store::ObjectStoreExt as _;
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let mut service = Service::from_json(
            br#"{"name":"creds","script":"true","input":[{"path":"creds/in"}],"output":[{"path":"creds/out"}]}"#,
        )
        .unwrap();
        service.validate().unwrap();
        service.normalize();
        service.token = "t".repeat(64);
        let executor = Arc::new(CredentialUser::default());
        let (platform, mut rx) = test_platform(dir.path(), &service, executor.clone(), &endpoint);
        let (_stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(cloister_storage::serve(
            listener,
            platform.store.s3_service("access", "secret"),
            Default::default(),
            async move {
                let _ = stopped.await;
            },
        ));
        platform.store.create_bucket("creds", false).await.unwrap();
        platform
            .store
            .put_bytes("creds", "in/other.txt", "o".into())
            .await
            .unwrap();
        platform
            .store
            .put_bytes("creds", "in/photo.txt", "p".into())
            .await
            .unwrap();
        let mut queued = rx.recv().await.unwrap();
        while !matches!(&queued.record.source, JobSource::Object { key, .. } if key == "in/photo.txt") {
            queued = rx.recv().await.unwrap();
        }
        let started = OffsetDateTime::now_utc();
        execute(&platform, queued).await.unwrap();

        assert_eq!(
            *executor.seen.lock().unwrap(),
            [
                "get input: ok",
                "get other: refused",
                "put output: ok",
                "put beside: refused",
                "put input: refused"
            ]
        );
        let access = executor.access.lock().unwrap().clone().unwrap();
        assert_eq!(access.endpoint, endpoint);
        let lifetime = access.expires - started;
        assert!(
            lifetime >= time::Duration::seconds(60 + 299) && lifetime <= time::Duration::seconds(60 + 302),
            "{lifetime}"
        );
        // Revoked once the job ended.
        let after = s3_client(&access, "creds")
            .get(&object_store::path::Path::parse("in/photo.txt").unwrap())
            .await;
        assert!(
            matches!(after, Err(object_store::Error::PermissionDenied { .. })),
            "{after:?}"
        );
    }

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
