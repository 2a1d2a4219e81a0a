//! Executors: where a job's runtime runs. Every executor hands the job to
//! [`cloister_runtime::run_job`], the single entrypoint of a job's life; they differ in where
//! that happens (this process for [`LocalExecutor`]'s host jobs; `cloister-runtime` as the
//! first program of the job's container with [`LocalExecutor::with_containers`]; a Kubernetes
//! pod later) and so in how it reaches storage (in-process, or over S3 with the job's own
//! credential).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use cloister_attestation::Tee;
use cloister_runtime::{CgroupSupport, IoError, JobIo, JobOutcome, JobSpec, RunOptions};
use cloister_storage::Store;
use futures::future::BoxFuture;

/// Runs jobs.
#[async_trait::async_trait]
pub trait Executor: Send + Sync + 'static {
    /// A short name for `/system/info`.
    fn name(&self) -> &'static str;

    /// Runs an asynchronous job: outputs go to the spec's output targets.
    async fn run(
        &self,
        spec: JobSpec,
        cancel: BoxFuture<'static, ()>,
        on_start: Box<dyn FnOnce() + Send>,
    ) -> JobOutcome;

    /// As [`Self::run`], for a job queued before its upload's commit ended (see
    /// [`crate::gate`]): nothing of the job may run before `gate` resolves `true`; when it
    /// resolves `false` the outcome is discarded. An executor may ready the job meanwhile; by
    /// default it waits.
    async fn run_gated(
        &self,
        spec: JobSpec,
        gate: cloister_runtime::Gate,
        cancel: BoxFuture<'static, ()>,
        on_start: Box<dyn FnOnce() + Send>,
    ) -> JobOutcome {
        let mut cancel = cancel;
        if let Err(refusal) = pass_gate(gate, &mut cancel).await {
            return refusal;
        }
        self.run(spec, cancel, on_start).await
    }

    /// Runs a synchronous invocation: output files come back in the outcome.
    async fn run_sync(&self, spec: JobSpec, max_output: u64) -> JobOutcome;

    /// Whether `spec`'s job reaches storage over the S3 endpoint and so needs
    /// [`JobSpec::storage`], a credential scoped to the job (issuing one costs a durable commit
    /// at the job's start and another at its end). Jobs whose runtime reads the store
    /// in-process need none.
    fn needs_storage_access(&self, _spec: &JobSpec) -> bool {
        false
    }

    /// Keeps `replicas` instances of `service` started for its synchronous invocations, as
    /// `template` describes them (the service's image, limits and devices); called whenever a
    /// service is created, changed (what was started for it before is replaced) or deleted
    /// (`None`). Executors that start nothing ahead ignore it.
    fn keep_warm(&self, _service: &str, _replicas: u32, _template: Option<JobSpec>) {}

    /// Stops what the executor keeps running between jobs, as the server stops.
    async fn shutdown(&self) {}
}

/// Runs jobs on this host, reading and writing the embedded store directly.
///
/// By default the script runs as a process of the host, not in the service's container image
/// (the image is recorded only); its isolation is then a private work directory, a cleared
/// environment, its own process group, resource limits and a timeout. With
/// [`Self::with_containers`] a job runs in a container of the service's image instead, with
/// `cloister-runtime` inside reaching the store over a socket of its own (a synchronous
/// invocation: only the script, see [`crate::container`], in a warm container where the
/// service keeps some); a confidential job under the simulation TEE then runs its
/// `cloister-runtime` in a container of the service's image too, an SGX job on the host.
pub struct LocalExecutor {
    io: StoreIo,
    work_root: PathBuf,
    cgroups: CgroupSupport,
    slots: Arc<Mutex<SlotPool>>,
    confidential: Option<crate::confidential::ConfidentialHost>,
    containers: Option<Arc<crate::container::Containers>>,
    warm: Option<Arc<crate::container::WarmPools>>,
}

/// Cgroup slots: one per job running at once, reused from job to job.
#[derive(Default)]
struct SlotPool {
    free: Vec<usize>,
    created: usize,
}

struct Slot {
    id: usize,
    pool: Arc<Mutex<SlotPool>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut pool) = self.pool.lock() {
            pool.free.push(self.id);
        }
    }
}

impl LocalExecutor {
    /// An executor keeping job work directories under `work_root`.
    pub fn new(store: Store, work_root: &Path) -> Self {
        cloister_runtime::remove_stale_work_dirs(work_root);
        let cgroups = CgroupSupport::detect();
        if cgroups.enabled() {
            tracing::info!(?cgroups, "jobs get cgroups for CPU and memory limits");
        } else {
            tracing::info!("no writable cgroups: memory limited with RLIMIT_AS, CPU not limited");
        }
        Self {
            io: StoreIo(store),
            work_root: work_root.to_path_buf(),
            cgroups,
            slots: Arc::default(),
            confidential: None,
            containers: None,
            warm: None,
        }
    }

    /// Runs plain jobs' scripts in containers of their services' images.
    /// Synchronous invocations of services with `synchronous.min_scale` above 0 run in warm
    /// containers (see [`crate::container::WarmPools`]).
    pub fn with_containers(mut self, containers: crate::container::Containers) -> Self {
        // Work directories are handed to the container's user (an image's `USER` may be any
        // uid, which may also exist on this host): only this server's user may reach them.
        {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            let private = std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.work_root)
                .and_then(|()| {
                    std::fs::set_permissions(&self.work_root, std::fs::Permissions::from_mode(0o700))
                });
            if let Err(e) = private {
                tracing::warn!(dir = %self.work_root.display(), error = %e, "cannot make the work root private");
            }
        }
        let containers = Arc::new(containers);
        self.warm = Some(crate::container::WarmPools::new(
            containers.clone(),
            &self.work_root,
        ));
        self.containers = Some(containers);
        self
    }

    /// Lets this executor run confidential jobs (see [`crate::confidential`]).
    pub fn with_confidential(mut self, host: crate::confidential::ConfidentialHost) -> Self {
        self.confidential = Some(host);
        self
    }

    fn slot(&self) -> Slot {
        let id = match self.slots.lock() {
            Ok(mut pool) => pool.free.pop().unwrap_or_else(|| {
                pool.created += 1;
                pool.created - 1
            }),
            // A poisoned pool only loses reuse; a fresh id is still exclusive.
            Err(_) => usize::MAX - (std::process::id() as usize),
        };
        Slot {
            id,
            pool: self.slots.clone(),
        }
    }

    fn options(&self, slot: &Slot, synchronous: bool, max_sync_output: u64) -> RunOptions {
        let runner: Option<Arc<dyn cloister_runtime::ScriptRunner>> = match &self.containers {
            Some(containers) => Some(containers.clone()),
            None => None,
        };
        RunOptions {
            work_root: self.work_root.clone(),
            // A container's limits are the engine's.
            cgroups: if runner.is_some() {
                CgroupSupport::None
            } else {
                self.cgroups.clone()
            },
            // Several servers (or test instances) may share a host's cgroup hierarchy.
            slot: format!("slot-{}-{}", std::process::id(), slot.id),
            synchronous,
            max_sync_output,
            runner,
            base_env: None,
        }
    }
}

#[async_trait::async_trait]
impl Executor for LocalExecutor {
    fn name(&self) -> &'static str {
        if self.containers.is_some() {
            "container"
        } else {
            "local"
        }
    }

    async fn run(
        &self,
        spec: JobSpec,
        cancel: BoxFuture<'static, ()>,
        on_start: Box<dyn FnOnce() + Send>,
    ) -> JobOutcome {
        if let Some(refusal) = unavailable_tee(&spec) {
            return refusal;
        }
        let slot = self.slot();
        if spec.placement.tee.is_some() {
            let Some(host) = &self.confidential else {
                return refused("this server is not set up to run confidential jobs");
            };
            let options = self.options(&slot, false, 0);
            let slot = crate::confidential::Slot {
                cgroups: &self.cgroups,
                name: options.slot,
            };
            // SGX runs the runtime under Gramine on this host; the simulation TEE's runtime runs
            // in the service's image where containers are the executor.
            let containers = self
                .containers
                .as_deref()
                .filter(|_| spec.placement.tee == Some(Tee::Sim));
            return crate::confidential::run(host, &spec, &self.io, slot, containers, cancel, on_start).await;
        }
        let options = self.options(&slot, false, 0);
        if let Some(containers) = &self.containers {
            let work = self.work_root.join(&options.slot);
            let control = self.work_root.join(format!("ctl-{}", spec.job_uuid));
            return containers
                .run_contained(&spec, &work, &control, cancel, on_start)
                .await;
        }
        cloister_runtime::run_job(&spec, &self.io, &options, cancel, on_start).await
    }

    /// Plain jobs in containers reach the store over their socket; confidential jobs' runtimes
    /// always do (over the S3 port from this host, their socket from a container), storing
    /// their outputs while they encrypt them.
    fn needs_storage_access(&self, spec: &JobSpec) -> bool {
        self.containers.is_some() || spec.placement.tee.is_some()
    }

    async fn run_gated(
        &self,
        spec: JobSpec,
        gate: cloister_runtime::Gate,
        cancel: BoxFuture<'static, ()>,
        on_start: Box<dyn FnOnce() + Send>,
    ) -> JobOutcome {
        // A plain job on this host readies its work directory and its script's process while
        // the gate is shut; the others wait for it first.
        if spec.placement.tee.is_some() || self.containers.is_some() {
            let mut cancel = cancel;
            if let Err(refusal) = pass_gate(gate, &mut cancel).await {
                return refusal;
            }
            return self.run(spec, cancel, on_start).await;
        }
        let slot = self.slot();
        let options = self.options(&slot, false, 0);
        cloister_runtime::run_job_gated(&spec, &self.io, &options, Some(gate), cancel, on_start).await
    }

    async fn run_sync(&self, spec: JobSpec, max_output: u64) -> JobOutcome {
        if spec.placement.tee.is_some() {
            // A synchronous body travels through the platform in plaintext.
            return refused(
                "confidential services process encrypted objects uploaded to their input bucket; \
                 synchronous invocations would hand plaintext to the platform",
            );
        }
        if let Some(pools) = &self.warm
            && let Some(warm) = pools.checkout(&spec.service)
        {
            let lease = Arc::new(crate::container::Lease::new(warm));
            let work = lease.work();
            let options = RunOptions {
                work_root: work.parent().unwrap_or(work).to_path_buf(),
                cgroups: CgroupSupport::None,
                slot: work
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                synchronous: true,
                max_sync_output: max_output,
                runner: Some(lease.clone()),
                base_env: None,
            };
            let outcome =
                cloister_runtime::run_job(&spec, &self.io, &options, std::future::pending(), || {}).await;
            lease.end(pools);
            return outcome;
        }
        let slot = self.slot();
        let options = self.options(&slot, true, max_output);
        cloister_runtime::run_job(&spec, &self.io, &options, std::future::pending(), || {}).await
    }

    fn keep_warm(&self, service: &str, replicas: u32, template: Option<JobSpec>) {
        if let Some(pools) = &self.warm {
            // Confidential services take no synchronous invocations.
            let template = template.filter(|t| t.placement.tee.is_none());
            pools.configure(service, replicas, template);
        }
    }

    async fn shutdown(&self) {
        if let Some(pools) = &self.warm {
            pools.shutdown().await;
        }
    }
}

/// A failed outcome when the job needs a TEE this host cannot give it: running it without one
/// would silently drop the protection the service asked for.
fn unavailable_tee(spec: &JobSpec) -> Option<JobOutcome> {
    let reason = match spec.placement.tee? {
        Tee::Sgx
            if ["/dev/sgx_enclave", "/dev/sgx/enclave"]
                .iter()
                .any(|d| Path::new(d).exists()) =>
        {
            return None;
        }
        Tee::Sgx => "the service needs SGX (enable_sgx) but this host has no SGX device (/dev/sgx_enclave)",
        Tee::Tdx | Tee::Snp => {
            "TDX and SEV-SNP services run in confidential VMs, which the local executor cannot start"
        }
        Tee::Sim => return None,
    };
    Some(refused(reason))
}

/// Waits for a job's gate; the outcome to report when it closes or the job is cancelled first.
async fn pass_gate(
    gate: cloister_runtime::Gate,
    cancel: &mut BoxFuture<'static, ()>,
) -> Result<(), JobOutcome> {
    let opened = tokio::select! {
        opened = gate.decision => opened,
        () = cancel => return Err(refused("cancelled before it started")),
    };
    if opened {
        Ok(())
    } else {
        Err(refused(cloister_runtime::GATE_CLOSED))
    }
}

fn refused(reason: &str) -> JobOutcome {
    JobOutcome {
        reason: Some(reason.to_owned()),
        log: vec![cloister_runtime::LogLine {
            time: time::OffsetDateTime::now_utc(),
            text: format!("cloister: {reason}"),
        }],
        ..JobOutcome::new(cloister_runtime::Status::Failed)
    }
}

struct StoreIo(Store);

#[async_trait::async_trait]
impl JobIo for StoreIo {
    async fn fetch(&self, bucket: &str, key: &str, dest: &Path) -> Result<u64, IoError> {
        Ok(self.0.get_to_file(bucket, key, dest).await?)
    }

    async fn upload(&self, bucket: &str, key: &str, src: &Path) -> Result<(), IoError> {
        Ok(self.0.put_file(bucket, key, src).await?)
    }

    fn local_path(&self, bucket: &str, key: &str) -> Option<PathBuf> {
        self.0.object_file(bucket, key).ok()
    }
}
