//! The job runtime: the one entrypoint every job's life passes through.
//!
//! [`run_job`] implements OSCAR's FaaS-supervisor contract: it stages the input object into
//! `TMP_INPUT_DIR`, runs the service's `script.sh` under `/bin/sh` with the contract's
//! environment, captures its output as timestamped log lines, and uploads every regular file
//! left in `TMP_OUTPUT_DIR` to each output target whose filters it passes. The job's process
//! lives in its own process group with memory/CPU limits (cgroups where writable, `RLIMIT_AS`
//! otherwise) and a wall-clock timeout.
//!
//! Storage is reached through [`JobIo`], so the same runtime serves the in-process local
//! executor (direct access to the embedded store) and `cloister-runtime` in a job's container
//! (or, later, pod), which talks S3 over the network with the job's own credential
//! ([`contained`]).

pub mod contained;
pub mod plain;
mod sandbox;
pub mod tee;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use cloister_tee::Tee;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub use sandbox::{
    CgroupSupport, HandOver, Hold, Limits, Program, ProgramOptions, RunFailure, ScriptRun, Setup,
    run_program, run_program_held,
};

/// Runs a job's script somewhere other than a process of this host (a container), seeing the
/// job's work directory at [`ScriptRunner::mount_point`]. The runtime still prepares the work
/// directory, stages the input and uploads the outputs; a runner only runs the script.
#[async_trait::async_trait]
pub trait ScriptRunner: Send + Sync + std::fmt::Debug {
    /// Where the work directory appears to the script; the contract's paths are given there.
    fn mount_point(&self) -> &Path;

    /// Runs `script.sh` of `job.work_dir` with exactly `job.env` (plus what the image itself
    /// sets), under the job's limits, until it exits, times out or `cancel` resolves, and
    /// leaves nothing of it running. `on_start` is called once it is being started.
    async fn run<'a>(
        &'a self,
        job: RunnerJob<'a>,
        cancel: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>,
        on_start: Box<dyn FnOnce() + Send + 'a>,
    ) -> ScriptRun;
}

/// One script for a [`ScriptRunner`].
#[derive(Debug, Clone, Copy)]
pub struct RunnerJob<'a> {
    /// The job.
    pub spec: &'a JobSpec,
    /// Its work directory on this host (`input/`, `output/`, `tmp/`, `script.sh`).
    pub work_dir: &'a Path,
    /// The script's environment, paths given at the mount point.
    pub env: &'a [(String, String)],
    /// Keep stdout on its own up to this many bytes (see [`ProgramOptions::keep_stdout`]).
    pub keep_stdout: Option<usize>,
}

/// Errors raised by [`JobIo`] implementations; the message is shown in the job's log.
pub type IoError = Box<dyn std::error::Error + Send + Sync>;

/// How a job reaches object storage.
#[async_trait::async_trait]
pub trait JobIo: Send + Sync {
    /// Downloads `bucket/key` into the local file `dest`.
    async fn fetch(&self, bucket: &str, key: &str, dest: &Path) -> Result<u64, IoError>;
    /// Uploads the local file `src` as `bucket/key`.
    async fn upload(&self, bucket: &str, key: &str, src: &Path) -> Result<(), IoError>;

    /// The object as a local file, when storage is on this host: the runtime then copies it
    /// while preparing the work directory instead of fetching it afterwards.
    fn local_path(&self, _bucket: &str, _key: &str) -> Option<PathBuf> {
        None
    }
}

/// Where a job's input comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobInput {
    /// No input file (an event without an object).
    None,
    /// An object in storage.
    Object {
        /// Bucket name.
        bucket: String,
        /// Object key.
        key: String,
    },
    /// Bytes handed over directly (synchronous invocations).
    Inline(Vec<u8>),
}

/// A place outputs are uploaded to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputTarget {
    /// Bucket name.
    pub bucket: String,
    /// Folder inside the bucket ("" for the bucket root).
    pub folder: String,
    /// Upload only files whose name starts with one of these (all when empty).
    pub prefix: Vec<String>,
    /// Upload only files whose name ends with one of these (all when empty).
    pub suffix: Vec<String>,
}

impl OutputTarget {
    /// Whether a file name passes this target's prefix and suffix filters.
    pub fn accepts(&self, file_name: &str) -> bool {
        (self.prefix.is_empty() || self.prefix.iter().any(|p| file_name.starts_with(p.as_str())))
            && (self.suffix.is_empty() || self.suffix.iter().any(|s| file_name.ends_with(s.as_str())))
    }

    /// Whether the object `bucket/key` is under this path (its bucket and folder) and its name
    /// passes the filters: the same rule as for input paths, so one type describes both.
    pub fn contains(&self, bucket: &str, key: &str) -> bool {
        if bucket != self.bucket {
            return false;
        }
        let relative = if self.folder.is_empty() {
            Some(key)
        } else {
            key.strip_prefix(self.folder.as_str())
                .and_then(|rest| rest.strip_prefix('/'))
        };
        match relative {
            Some(relative) if !relative.is_empty() => {
                self.accepts(relative.rsplit('/').next().unwrap_or(relative))
            }
            _ => false,
        }
    }

    /// The object key for an output file at `relative` (a `/`-separated path).
    pub fn key_for(&self, relative: &str) -> String {
        if self.folder.is_empty() {
            relative.to_owned()
        } else {
            format!("{}/{relative}", self.folder)
        }
    }
}

/// Everything the runtime needs to run one job.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// Job name as listed by the API.
    pub job_name: String,
    /// The job's UUID (`JOB_UUID`).
    pub job_uuid: String,
    /// Service name (`OSCAR_SERVICE_NAME`).
    pub service: String,
    /// Service token (`OSCAR_SERVICE_TOKEN`).
    pub service_token: String,
    /// The script's content.
    pub script: String,
    /// Environment from the service definition (variables and secrets).
    pub environment: BTreeMap<String, String>,
    /// The input.
    pub input: JobInput,
    /// The event that started the job (`EVENT`), as JSON text.
    pub event: String,
    /// When the event happened (`EVENT_TIME`).
    pub event_time: OffsetDateTime,
    /// Upload targets; empty for synchronous invocations, whose outputs are returned instead.
    pub outputs: Vec<OutputTarget>,
    /// Resource limits.
    pub limits: Limits,
    /// Most bytes of log kept; later lines are dropped with a note.
    pub log_limit: usize,
    /// Where the job must run: resources, TEE, attestation wiring.
    pub placement: Placement,
    /// S3 access limited to this job's input object and output folders, for a runtime that
    /// reaches storage over the network (in a container or a pod); `None` when the platform
    /// issued none. Never part of the script's environment: the runtime uses it itself.
    pub storage: Option<StorageAccess>,
}

/// A job's own S3 credential and where to use it. Its `Debug` form hides the secret; it is not
/// serialisable, so it cannot end up in a record by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct StorageAccess {
    /// The S3 endpoint, e.g. `http://127.0.0.1:9000` (as the platform reaches it: an executor
    /// whose jobs see the network differently substitutes its own address for it).
    pub endpoint: String,
    /// The region to sign for.
    pub region: String,
    /// The credential's access key id.
    pub access_key_id: String,
    /// The credential's secret.
    pub secret_access_key: String,
    /// When the credential stops working (the job's timeout plus a grace).
    pub expires: OffsetDateTime,
}

impl StorageAccess {
    /// The credential as the variables S3 clients read (AWS SDKs, boto3, the aws cli), in name
    /// order, for the environment of a runtime process — not of a script.
    pub fn environment(&self) -> [(&'static str, String); 4] {
        [
            ("AWS_ACCESS_KEY_ID", self.access_key_id.clone()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", self.region.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_access_key.clone()),
        ]
    }
}

impl std::fmt::Debug for StorageAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageAccess")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"[redacted]")
            .field("expires", &self.expires)
            .finish()
    }
}

/// What an executor must provide for a job, in the terms a Kubernetes executor uses: resource
/// limits (including device-plugin resources), added capabilities, a runtime class, and the
/// environment that tells the runtime where to attest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The container image (recorded; the local executor runs on the host).
    pub image: String,
    /// Resource limits, e.g. `cpu`, `memory`, `sgx.intel.com/enclave`, `sgx.intel.com/epc`.
    pub resources: BTreeMap<String, String>,
    /// Linux capabilities added to the job's container (`SYS_RAWIO` for SGX, as OSCAR does).
    pub capabilities: Vec<String>,
    /// Kubernetes runtime class for confidential VMs (TDX, SEV-SNP).
    pub runtime_class: Option<String>,
    /// The TEE the job needs, if any.
    pub tee: Option<Tee>,
    /// Where the runtime of a confidential job attests; `None` for other jobs (serialised as
    /// an empty map, so the form is the variables' map either way).
    #[serde(default, with = "wiring_map")]
    pub attestation: Option<AttestationWiring>,
    /// Whether the job's container may reach the network (FDL `enable_network`; off by
    /// default). The host executor does not isolate the network.
    #[serde(default)]
    pub network: bool,
    /// When to pull the image (Kubernetes' `imagePullPolicy`).
    #[serde(default)]
    pub image_pull_policy: PullPolicy,
    /// Names of the registry credentials to pull the image with (`image_pull_secrets`).
    #[serde(default)]
    pub image_pull_secrets: Vec<String>,
}

/// When an executor pulls a job's image: Kubernetes' `imagePullPolicy`, spelled as there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PullPolicy {
    /// Before every job (concurrent jobs of one image share a pull).
    Always,
    /// Only when the image is not present (the default).
    #[default]
    IfNotPresent,
    /// Never: a job whose image is absent fails.
    Never,
}

impl std::str::FromStr for PullPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Always" => Ok(Self::Always),
            "IfNotPresent" => Ok(Self::IfNotPresent),
            "Never" => Ok(Self::Never),
            _ => Err("must be Always, IfNotPresent or Never".to_owned()),
        }
    }
}

/// Where the runtime of a confidential job attests: the TEE, the CAS and its identity pin, the
/// session and the service in it. Public facts, no secrets. Serialised under the names of the
/// variables that carry it into a job's environment ([`AttestationWiring::environment`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationWiring {
    /// CAS URL (`https://host:port`): `CLOISTER_CAS`.
    #[serde(rename = "CLOISTER_CAS")]
    pub cas: String,
    /// Pin of the CAS identity, as the FDL gives it: `CLOISTER_CAS_PIN`.
    #[serde(rename = "CLOISTER_CAS_PIN")]
    pub cas_pin: String,
    /// Service name within the session: `CLOISTER_SERVICE`.
    #[serde(rename = "CLOISTER_SERVICE")]
    pub service: String,
    /// CAS session name: `CLOISTER_SESSION`.
    #[serde(rename = "CLOISTER_SESSION")]
    pub session: String,
    /// The TEE the runtime collects evidence in: `CLOISTER_TEE`.
    #[serde(rename = "CLOISTER_TEE")]
    pub tee: Tee,
}

impl AttestationWiring {
    /// The wiring as environment variables, in name order.
    pub fn environment(&self) -> [(&'static str, String); 5] {
        [
            ("CLOISTER_CAS", self.cas.clone()),
            ("CLOISTER_CAS_PIN", self.cas_pin.clone()),
            ("CLOISTER_SERVICE", self.service.clone()),
            ("CLOISTER_SESSION", self.session.clone()),
            ("CLOISTER_TEE", self.tee.to_string()),
        ]
    }
}

/// [`Placement::attestation`] as a map of variables, empty for `None`.
mod wiring_map {
    use std::collections::BTreeMap;

    use serde::de::value::MapDeserializer;
    use serde::ser::SerializeMap;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::AttestationWiring;

    pub(super) fn serialize<S: Serializer>(
        wiring: &Option<AttestationWiring>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match wiring {
            Some(wiring) => wiring.serialize(serializer),
            None => serializer.serialize_map(Some(0))?.end(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<AttestationWiring>, D::Error> {
        let variables = BTreeMap::<String, String>::deserialize(deserializer)?;
        if variables.is_empty() {
            return Ok(None);
        }
        AttestationWiring::deserialize(MapDeserializer::new(variables.into_iter())).map(Some)
    }
}

/// Final state of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// The script exited with 0 and every output was uploaded.
    Succeeded,
    /// Anything else.
    Failed,
}

/// One line of a job's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// When the line was read.
    pub time: OffsetDateTime,
    /// The line without its newline (invalid UTF-8 replaced).
    pub text: String,
}

/// What a finished job produced.
#[derive(Debug)]
pub struct JobOutcome {
    /// Succeeded or Failed.
    pub status: Status,
    /// Exit code of the script, if it exited normally.
    pub exit_code: Option<i32>,
    /// Why the job failed, without any content of the job's data.
    pub reason: Option<String>,
    /// stdout and stderr as they arrived, then the runtime's own notes.
    pub log: Vec<LogLine>,
    /// The script's stdout alone (kept for synchronous invocations).
    pub stdout: Vec<u8>,
    /// Output files as `(relative path, content)`; filled only when there are no output targets.
    pub files: Vec<(String, Vec<u8>)>,
    /// Keys uploaded, as `bucket/key`.
    pub uploaded: Vec<String>,
    /// The script's output encrypted to the data owner's recipients (confidential jobs; bound
    /// with [`tee::sealed_log_binding`]); `None` for plain jobs.
    pub sealed_log: Option<Vec<u8>>,
}

/// Options that depend on where the runtime runs rather than on the job.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Parent directory for the job's private work directory (removed afterwards).
    pub work_root: PathBuf,
    /// Cgroup hierarchy to place jobs in, if the host allows.
    pub cgroups: CgroupSupport,
    /// Name of the cgroup and work directory this run uses; runs sharing a slot must not
    /// overlap in time.
    pub slot: String,
    /// Keep stdout separately and return output files instead of uploading them.
    pub synchronous: bool,
    /// Most bytes of output files, or of stdout, returned by a synchronous invocation; beyond
    /// it the invocation fails (an answer is never cut short).
    pub max_sync_output: u64,
    /// Where the script runs when not as a process of this host (a container); `cgroups` are
    /// then not used.
    pub runner: Option<std::sync::Arc<dyn ScriptRunner>>,
    /// The environment the script starts from, before the service's and the contract's
    /// variables: a container image's own (as its engine gave it to a runtime in the
    /// container), whose `PATH` and locale are the image's. `None` is this host's default
    /// `PATH` and `LANG`.
    pub base_env: Option<Vec<(String, String)>>,
}

/// What a job made before the write it depends on waits at (see [`run_job_gated`]).
pub struct Gate {
    /// Resolves `true` once the job may start, `false` when it must never run.
    pub decision: std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>,
    /// The input object's bytes as the write commits them, when whoever decides holds them (a
    /// small upload's): the input is then staged while the gate is shut, so that nothing is
    /// left between the decision and the script's first line but the release.
    pub input: Option<std::sync::Arc<[u8]>>,
    /// Takes the held script's release once nothing else is left to do before it (the input
    /// staged), so that whoever decides releases the script at once.
    pub hand_over: Option<HandOver>,
}

impl Gate {
    /// A gate that only decides: the input is staged, and the script released, once `decision`
    /// resolves `true`.
    pub fn new(decision: impl std::future::Future<Output = bool> + Send + 'static) -> Self {
        Self {
            decision: Box::pin(decision),
            input: None,
            hand_over: None,
        }
    }
}

/// Why a gated job never ran: its gate said no.
pub const GATE_CLOSED: &str = "the job's upload was not committed; it never ran";

/// Runs one job to completion. `on_start` is called once the script's process exists.
///
/// Never returns an error: every failure becomes a `Failed` outcome with a reason and a log
/// line, because a job record must always reach a final state.
pub async fn run_job(
    spec: &JobSpec,
    io: &dyn JobIo,
    options: &RunOptions,
    cancel: impl std::future::Future<Output = ()> + Send,
    on_start: impl FnOnce() + Send,
) -> JobOutcome {
    run_job_gated(spec, io, options, None, cancel, on_start).await
}

/// As [`run_job`], for a job made before the write it depends on is known to have happened
/// (its upload's commit is still running): the work directory is readied and a script's
/// process started meanwhile, but its first line runs only once `gate` decides `true`, and its
/// input is staged only then unless the gate gave its bytes. When it decides `false`, nothing
/// of the job ran and the outcome (Failed, [`GATE_CLOSED`]) is to be discarded.
pub async fn run_job_gated(
    spec: &JobSpec,
    io: &dyn JobIo,
    options: &RunOptions,
    gate: Option<Gate>,
    cancel: impl std::future::Future<Output = ()> + Send,
    on_start: impl FnOnce() + Send,
) -> JobOutcome {
    let mut outcome = JobOutcome::new(Status::Failed);
    // A slot runs one job at a time, so its directory is the job's own while it runs.
    let work = if options.slot.is_empty() {
        options.work_root.join(format!("job-{}", spec.job_uuid))
    } else {
        options.work_root.join(&options.slot)
    };
    let (decision, gate_input, hand_over) = match gate {
        Some(gate) => (Some(gate.decision), gate.input, gate.hand_over),
        None => (None, None, None),
    };
    // A gated job's object may not be visible yet: it is staged from the bytes the gate gave, or
    // once the gate opens.
    let local_input = match &spec.input {
        JobInput::Object { bucket, key } => match (&decision, gate_input) {
            (None, _) => io.local_path(bucket, key).map(InputSource::File),
            (Some(_), bytes) => bytes.map(InputSource::Bytes),
        }
        .map(|source| (source, input_name(key))),
        _ => None,
    };
    let staged_input = local_input
        .as_ref()
        .map(|(_, name)| work.join("input").join(name));
    let input_is_a_file = matches!(local_input, Some((InputSource::File(_), _)));
    let not_prepared = {
        let missing = input_is_a_file.then(|| input_missing(&spec.input));
        move |e: std::io::Error| match (e.kind(), &missing) {
            (std::io::ErrorKind::NotFound, Some(missing)) => missing.clone(),
            _ => format!("cannot prepare the job's work directory: {e}"),
        }
    };
    let began = std::time::Instant::now();
    // When the files were in place: the end of the job's preparation, for its stages.
    let readied = std::sync::Arc::new(std::sync::OnceLock::new());
    let write_files = {
        let (work, script, event, readied) = (
            work.clone(),
            spec.script.clone(),
            spec.event.clone(),
            readied.clone(),
        );
        move || {
            let written = write_job_files(&work, &script, &event, local_input.as_ref());
            let _ = readied.set(std::time::Instant::now());
            written
        }
    };
    let run = async {
        // A held script of this host is started by the thread that readies its work directory,
        // and its files are written while its process starts: one hand-off to that thread
        // instead of two, and the files' cost overlaps the process's own start.
        let setup = if decision.is_some() && options.runner.is_none() {
            let (dir, after_failed) = (work.clone(), not_prepared.clone());
            Some(Setup {
                before: Box::new(move || ready_work_dir(&dir).map_err(not_prepared)),
                after: Box::new(move || write_files().map_err(after_failed)),
            })
        } else {
            let dir = work.clone();
            let prepared = tokio::task::spawn_blocking(move || {
                ready_work_dir(&dir)?;
                write_files()
            })
            .await;
            match prepared {
                Ok(Ok(())) => None,
                Ok(Err(e)) => return outcome.fail(not_prepared(e)),
                Err(e) => return outcome.fail(format!("cannot prepare the job's work directory: {e}")),
            }
        };
        let prepared = Prepared {
            staged_input,
            dir: work.clone(),
        };
        // The stages of a job's start, for `cloister-bench jobs --stages`.
        let on_start = || {
            let input = match &spec.input {
                JobInput::Object { key, .. } => key.as_str(),
                _ => "",
            };
            let ready = readied.get().copied().unwrap_or(began);
            tracing::debug!(
                target: "cloister::stages",
                job = %spec.job_name,
                input,
                prepare_us = micros(ready.duration_since(began)),
                spawn_us = micros(ready.elapsed()),
                "job started"
            );
            on_start();
        };
        let gate = decision.map(|decision| (decision, hand_over));
        run_in(
            spec,
            io,
            options,
            &prepared,
            gate,
            setup,
            cancel,
            on_start,
            &mut outcome,
        )
        .await;
    };
    run.await;
    let reset = tokio::task::spawn_blocking(move || reset_work_dir(&work)).await;
    if let Ok(Err(e)) = reset {
        tracing::warn!(job = %spec.job_name, error = %e, "cannot reset the job's work directory");
    }
    outcome
}

/// Whole microseconds, as the stage timings log them.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl JobOutcome {
    /// An outcome with `status` and nothing else yet: no exit code, reason, log, output or
    /// upload.
    pub fn new(status: Status) -> Self {
        Self {
            status,
            exit_code: None,
            reason: None,
            log: Vec::new(),
            stdout: Vec::new(),
            files: Vec::new(),
            uploaded: Vec::new(),
            sealed_log: None,
        }
    }

    fn fail(&mut self, reason: String) {
        self.note(format!("cloister: {reason}"));
        self.status = Status::Failed;
        self.reason.get_or_insert(reason);
    }

    fn note(&mut self, text: String) {
        self.log.push(LogLine {
            time: OffsetDateTime::now_utc(),
            text,
        });
    }
}

/// Where an input staged while the work directory is readied comes from.
enum InputSource {
    /// A local file holding the object (the store's data file).
    File(PathBuf),
    /// The object's bytes.
    Bytes(std::sync::Arc<[u8]>),
}

/// A job's work directory, ready for the script.
struct Prepared {
    dir: PathBuf,
    /// The input, when it was copied in while preparing.
    staged_input: Option<PathBuf>,
}

/// The folders of a work directory, kept between the jobs of a slot.
const WORK_FOLDERS: [&str; 3] = ["input", "output", "tmp"];

/// Writes the script, the event file and the input into `work`, readied (private to the job:
/// the slot's directory, reused from its previous job when that left it clean, see
/// [`ready_work_dir`]).
fn write_job_files(
    work: &Path,
    script: &str,
    event: &str,
    input: Option<&(InputSource, String)>,
) -> std::io::Result<()> {
    // Files are created, never opened if present, so nothing left in the folder is written
    // through (a symbolic or hard link).
    let create = |path: PathBuf| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
    };
    std::io::Write::write_all(&mut create(work.join("script.sh"))?, script.as_bytes())?;
    std::io::Write::write_all(&mut create(work.join(EVENT_FILE_NAME))?, event.as_bytes())?;
    match input {
        Some((InputSource::File(source), name)) => copy_input(source, &work.join("input").join(name))?,
        Some((InputSource::Bytes(bytes), name)) => {
            std::io::Write::write_all(&mut create(work.join("input").join(name))?, bytes)?;
        }
        None => {}
    }
    Ok(())
}

/// Copies a local object into the work directory, creating the file (never writing through
/// one a job left).
fn copy_input(source: &Path, target: &Path) -> std::io::Result<()> {
    let mut source = std::fs::File::open(source)?;
    // A folder of other keys is not an object.
    if source.metadata()?.is_dir() {
        return Err(std::io::ErrorKind::NotFound.into());
    }
    let mut target = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(target)?;
    std::io::copy(&mut source, &mut target)?;
    Ok(())
}

/// Readies `work` for a job whose runtime runs elsewhere (in a container that mounts it): it
/// then holds exactly its three empty folders, as [`run_job`] expects a reused directory.
pub fn ready_work_dir(work: &Path) -> std::io::Result<()> {
    if work_dir_is_clean(work) {
        Ok(())
    } else {
        create_work_dir(work)
    }
}

/// Whether `work` holds exactly its three folders, empty, as its last job's reset left it.
pub fn work_dir_is_clean(work: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(work) else {
        return false;
    };
    let mut folders = 0;
    for entry in entries {
        let Ok(entry) = entry else { return false };
        let is_folder = entry.file_type().is_ok_and(|t| t.is_dir())
            && entry
                .file_name()
                .to_str()
                .is_some_and(|n| WORK_FOLDERS.contains(&n));
        if !is_folder || std::fs::read_dir(entry.path()).map_or(true, |mut d| d.next().is_some()) {
            return false;
        }
        folders += 1;
    }
    folders == WORK_FOLDERS.len()
}

/// Makes `work` afresh (mode 0700) with empty folders, discarding whatever was there.
fn create_work_dir(work: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    discard_work_dir(work)?;
    std::fs::create_dir_all(work.parent().unwrap_or(work))?;
    std::fs::DirBuilder::new().mode(0o700).create(work)?;
    for folder in WORK_FOLDERS {
        std::fs::create_dir(work.join(folder))?;
    }
    Ok(())
}

/// Removes `work`; when something in it cannot be removed (a job made a folder unwritable),
/// moves it aside under a name [`remove_stale_work_dirs`] cleans up.
fn discard_work_dir(work: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(work) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            let aside = work.with_file_name(format!(
                "discarded-{}-{}",
                std::process::id(),
                DISCARDED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            tracing::warn!(dir = %work.display(), error = %e, "cannot empty a work directory; moving it aside");
            std::fs::rename(work, aside)
        }
        _ => Ok(()),
    }
}

static DISCARDED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Empties a slot's work directory after its job: everything goes but the three folders, which
/// are emptied, so the next job starts without creating directories. Anything that resists is
/// discarded with the directory.
pub fn reset_work_dir(work: &Path) -> std::io::Result<()> {
    let emptied = (|| -> std::io::Result<()> {
        for entry in std::fs::read_dir(work)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let keep = kind.is_dir()
                && entry
                    .file_name()
                    .to_str()
                    .is_some_and(|n| WORK_FOLDERS.contains(&n));
            if keep {
                for inner in std::fs::read_dir(entry.path())? {
                    let inner = inner?;
                    remove_entry(&inner.path(), inner.file_type()?)?;
                }
            } else {
                remove_entry(&entry.path(), kind)?;
            }
        }
        Ok(())
    })();
    match emptied {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) => discard_work_dir(work),
        Ok(()) => Ok(()),
    }
}

fn remove_entry(path: &Path, kind: std::fs::FileType) -> std::io::Result<()> {
    if kind.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

/// Removes work directories no running job uses: those of slots whose server process has
/// ended (`slot-<pid>-<n>`), directories moved aside, and per-job directories of earlier
/// versions. Called when an executor starts.
pub fn remove_stale_work_dirs(root: &Path) {
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let owned = name.starts_with("slot-") || name.starts_with("discarded-");
        let stale = match owned.then(|| sandbox::slot_owner(name)).flatten() {
            Some(pid) => pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists(),
            // Per-job folders: the container executor's control folders, earlier versions' work.
            None => name.starts_with("job-") || name.starts_with("ctl-"),
        };
        if stale && let Err(e) = std::fs::remove_dir_all(entry.path()) {
            tracing::warn!(dir = %entry.path().display(), error = %e, "cannot remove a stale work directory");
        }
    }
}

/// The input file's name: the key's last segment when it is a plain name (any S3 key is valid,
/// `a/`, `.` and `..` among them), else `input`.
fn input_name(key: &str) -> String {
    key.rsplit('/')
        .next()
        .filter(|n| !n.is_empty() && *n != ".." && *n != ".")
        .unwrap_or("input")
        .to_owned()
}

fn input_missing(input: &JobInput) -> String {
    match input {
        JobInput::Object { bucket, key } => format!("cannot fetch input {bucket}/{key}: no such object"),
        _ => "cannot stage the input".to_owned(),
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_in(
    spec: &JobSpec,
    io: &dyn JobIo,
    options: &RunOptions,
    prepared: &Prepared,
    gate: Option<(Decision, Option<HandOver>)>,
    setup: Option<Setup>,
    cancel: impl std::future::Future<Output = ()> + Send,
    on_start: impl FnOnce() + Send,
    outcome: &mut JobOutcome,
) {
    let work = prepared.dir.as_path();
    let input_dir = work.join("input");
    let output_dir = work.join("output");
    let tmp_dir = work.join("tmp");
    let script_path = work.join("script.sh");

    // Behind a gate, an input not staged yet is staged when the gate opens (the script waits for
    // it); when nothing is left to do but the release, the release is handed to the gate.
    type Until<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>>;
    let (input_path, hold): (_, Option<Hold<Until<'_>>>) = match (prepared.staged_input.clone(), gate) {
        (Some(path), gate) => {
            let hold = gate.map(|(decision, hand_over)| {
                let until: Until<'_> = Box::pin(open_or_close(decision));
                Hold {
                    until,
                    hand_over,
                    setup,
                }
            });
            (Some(path), hold)
        }
        (None, Some((decision, _))) => {
            let staged_in = input_dir.clone();
            let until: Until<'_> = Box::pin(async move {
                open_or_close(decision).await?;
                stage_input(spec, io, &staged_in).await.map(|_| ())
            });
            let hold = Hold {
                until,
                hand_over: None,
                setup,
            };
            (input_file(spec, &input_dir), Some(hold))
        }
        (None, None) => match stage_input(spec, io, &input_dir).await {
            Ok(p) => (p, None),
            Err(reason) => {
                outcome.fail(reason);
                return;
            }
        },
    };

    // The paths the script is given are where it sees them: in a container, under the mount
    // point of the work directory.
    let runner = options.runner.as_deref();
    let seen = |path: &Path| -> String {
        match runner {
            Some(runner) => match path.strip_prefix(work) {
                Ok(inner) if inner.as_os_str().is_empty() => runner.mount_point().display().to_string(),
                Ok(inner) => runner.mount_point().join(inner).display().to_string(),
                Err(_) => path.display().to_string(),
            },
            None => path.display().to_string(),
        }
    };
    let mut env: Vec<(String, String)> = options.base_env.clone().unwrap_or_default();
    // An image sets its own PATH and locale (its tools may live anywhere).
    if runner.is_none() && options.base_env.is_none() {
        env.extend([
            (
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
            ("LANG".into(), "C.UTF-8".into()),
        ]);
    }
    env.extend([("HOME".into(), seen(work)), ("TMPDIR".into(), seen(&tmp_dir))]);
    env.extend(spec.environment.iter().map(|(k, v)| (k.clone(), v.clone())));
    if let Some(wiring) = &spec.placement.attestation {
        env.extend(wiring.environment().map(|(k, v)| (k.to_owned(), v)));
    }
    // The contract's variables come last so a service cannot shadow them by accident.
    let event_time = spec
        .event_time
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let event_file = seen(&work.join(EVENT_FILE_NAME));
    let event = if spec.event.len() <= EVENT_INLINE_MAX {
        spec.event.clone()
    } else {
        event_file.clone()
    };
    env.extend([
        ("TMP_INPUT_DIR".into(), seen(&input_dir)),
        ("TMP_OUTPUT_DIR".into(), seen(&output_dir)),
        ("EVENT".into(), event),
        ("EVENT_FILE".into(), event_file),
        ("EVENT_TIME".into(), event_time),
        ("JOB_UUID".into(), spec.job_uuid.clone()),
        ("JOB_NAME".into(), spec.job_name.clone()),
        ("OSCAR_SERVICE_NAME".into(), spec.service.clone()),
        ("OSCAR_SERVICE_TOKEN".into(), spec.service_token.clone()),
    ]);
    if let Some(path) = &input_path {
        env.push(("INPUT_FILE_PATH".into(), seen(path)));
    }
    if let JobInput::Object { key, .. } = &spec.input {
        env.push(("STORAGE_OBJECT_KEY".into(), key.clone()));
    }
    // The kernel would refuse to start the script with a bare "Argument list too long".
    if let Some((name, value)) = env
        .iter()
        .find(|(name, value)| name.len() + 1 + value.len() > MAX_ENV_STRING)
    {
        outcome.fail(format!(
            "the variable {name} is {} bytes long; a variable can hold at most {MAX_ENV_STRING} bytes",
            value.len()
        ));
        return;
    }

    let keep_stdout = options
        .synchronous
        .then(|| usize::try_from(options.max_sync_output).unwrap_or(usize::MAX));
    let run = match runner {
        Some(runner) => {
            let job = RunnerJob {
                spec,
                work_dir: work,
                env: &env,
                keep_stdout,
            };
            if let Some(hold) = hold
                && let Err(reason) = hold.until.await
            {
                outcome.fail(reason);
                return;
            }
            runner.run(job, Box::pin(cancel), Box::new(on_start)).await
        }
        None => {
            let program = ProgramOptions {
                program: Program::Script(&script_path),
                args: &[],
                work_dir: work,
                env: &env,
                limits: &spec.limits,
                cgroups: &options.cgroups,
                slot: &options.slot,
                log_limit: spec.log_limit,
                keep_stdout,
            };
            sandbox::run_program_held(program, hold, cancel, on_start).await
        }
    };
    outcome.log.extend(run.log);
    outcome.stdout = run.stdout;
    outcome.exit_code = run.exit_code;
    if let Some(failure) = run.failure {
        outcome.fail(failure.to_string());
        return;
    }
    if run.exit_code != Some(0) {
        let code = run.exit_code.map_or_else(|| "none".to_owned(), |c| c.to_string());
        outcome.fail(format!("script exited with code {code}"));
        return;
    }

    let files = match collect_outputs(&output_dir).await {
        Ok(f) => f,
        Err(e) => {
            outcome.fail(format!("cannot read the output directory: {e}"));
            return;
        }
    };
    if options.synchronous {
        let read = tokio::task::spawn_blocking({
            let dir = output_dir.clone();
            let budget = options.max_sync_output;
            move || read_outputs(&dir, &files, budget)
        })
        .await;
        match read {
            Ok(Ok(contents)) => outcome.files = contents,
            Ok(Err(ReadOutputsError::TooLarge)) => {
                outcome.fail(format!(
                    "outputs exceed the synchronous limit of {} bytes",
                    options.max_sync_output
                ));
                return;
            }
            Ok(Err(ReadOutputsError::Io(relative, e))) => {
                outcome.fail(format!("cannot read output {relative}: {e}"));
                return;
            }
            Err(e) => {
                outcome.fail(format!("cannot read the outputs: {e}"));
                return;
            }
        }
    } else {
        for (relative, path) in &files {
            let name = relative.rsplit('/').next().unwrap_or(relative);
            for target in spec.outputs.iter().filter(|t| t.accepts(name)) {
                let key = target.key_for(relative);
                if let Err(e) = io.upload(&target.bucket, &key, path).await {
                    outcome.fail(format!(
                        "cannot upload output {relative} to {}/{key}: {e}",
                        target.bucket
                    ));
                    return;
                }
                outcome.uploaded.push(format!("{}/{key}", target.bucket));
            }
        }
        if !outcome.uploaded.is_empty() {
            let note = format!("cloister: uploaded {} output object(s)", outcome.uploaded.len());
            outcome.note(note);
        }
    }
    outcome.status = Status::Succeeded;
}

/// A gate's decision: `true` once the job may start.
type Decision = std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>;

async fn open_or_close(decision: Decision) -> Result<(), String> {
    if decision.await {
        Ok(())
    } else {
        Err(GATE_CLOSED.to_owned())
    }
}

/// Where [`stage_input`] puts the input.
fn input_file(spec: &JobSpec, input_dir: &Path) -> Option<PathBuf> {
    match &spec.input {
        JobInput::None => None,
        JobInput::Inline(_) => Some(input_dir.join("input")),
        JobInput::Object { key, .. } => Some(input_dir.join(input_name(key))),
    }
}

async fn stage_input(spec: &JobSpec, io: &dyn JobIo, input_dir: &Path) -> Result<Option<PathBuf>, String> {
    match &spec.input {
        JobInput::None => Ok(None),
        JobInput::Inline(bytes) => {
            let path = input_dir.join("input");
            tokio::fs::write(&path, bytes)
                .await
                .map_err(|e| format!("cannot stage the input: {e}"))?;
            Ok(Some(path))
        }
        JobInput::Object { bucket, key } => {
            // Any S3 key is valid (`a/`, `.`, `..`): only a plain last segment names the file.
            let name = input_name(key);
            let path = input_dir.join(name);
            if let Some(local) = io.local_path(bucket, key) {
                let target = path.clone();
                return match tokio::task::spawn_blocking(move || copy_input(&local, &target)).await {
                    Ok(Ok(())) => Ok(Some(path)),
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Err(input_missing(&spec.input)),
                    Ok(Err(e)) => Err(format!("cannot stage input {bucket}/{key}: {e}")),
                    Err(e) => Err(format!("cannot stage input {bucket}/{key}: {e}")),
                };
            }
            io.fetch(bucket, key, &path)
                .await
                .map_err(|e| format!("cannot fetch input {bucket}/{key}: {e}"))?;
            Ok(Some(path))
        }
    }
}

/// Regular files under `dir` as `(relative path, absolute path)`, sorted. Symbolic links and
/// other special files are skipped and never followed — `dir` itself must be a folder, not a
/// link to one — so a script cannot make the runtime upload host files; names that are not
/// UTF-8 are skipped (a folder with its contents).
pub async fn collect_outputs(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        // A script that replaced its output folder with a link would otherwise have the walk
        // start wherever the link points (walkdir follows a root link by default).
        if !std::fs::symlink_metadata(&dir)?.is_dir() {
            return Err(std::io::Error::other("the output folder is not a folder"));
        }
        let mut files = Vec::new();
        let entries = walkdir::WalkDir::new(&dir)
            .follow_links(false)
            .follow_root_links(false)
            .into_iter()
            .filter_entry(|entry| {
                let utf8 = entry.depth() == 0 || entry.file_name().to_str().is_some();
                if !utf8 {
                    tracing::warn!("skipping an output whose name is not UTF-8");
                }
                utf8
            });
        for entry in entries {
            let entry = entry?;
            if !entry.file_type().is_file() {
                continue;
            }
            let relative = entry
                .path()
                .strip_prefix(&dir)
                .ok()
                .and_then(Path::to_str)
                .ok_or_else(|| std::io::Error::other("an output path left its folder"))?
                .to_owned();
            files.push((relative, entry.into_path()));
        }
        files.sort();
        Ok(files)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Why [`read_outputs`] stopped.
#[derive(Debug)]
enum ReadOutputsError {
    /// The files together are larger than the budget.
    TooLarge,
    /// One file could not be opened or read safely.
    Io(String, std::io::Error),
}

/// The contents of `files` (as [`collect_outputs`] found them under `dir`), at most `budget`
/// bytes in all. Each is opened beneath `dir` one name at a time without following any link,
/// and its size is checked before it is read: a process still running where the outputs are
/// (a program that escaped its script, a reused container) cannot swap a folder for a link
/// between the walk and the read, nor make the reader hold a huge file.
fn read_outputs(
    dir: &Path,
    files: &[(String, PathBuf)],
    budget: u64,
) -> Result<Vec<(String, Vec<u8>)>, ReadOutputsError> {
    use std::io::Read as _;
    let root = open_folder(rustix::fs::CWD, dir).map_err(|e| ReadOutputsError::Io(".".into(), e))?;
    let mut left = budget;
    let mut contents = Vec::with_capacity(files.len());
    for (relative, _) in files {
        let failed = |e: std::io::Error| ReadOutputsError::Io(relative.clone(), e);
        let file = open_beneath(&root, relative).map_err(failed)?;
        let len = file.metadata().map_err(failed)?.len();
        if len > left {
            return Err(ReadOutputsError::TooLarge);
        }
        let mut content = Vec::new();
        // The file may grow after the size was read: never read past what is left.
        file.take(left + 1).read_to_end(&mut content).map_err(failed)?;
        let read = content.len() as u64;
        if read > left {
            return Err(ReadOutputsError::TooLarge);
        }
        left -= read;
        contents.push((relative.clone(), content));
    }
    Ok(contents)
}

/// Opens the regular file `relative` (`/`-separated) beneath the folder `dir` as a synchronous
/// invocation's outputs are read: no component a link (nor `dir`'s last), no `..`, and a FIFO
/// refused rather than waited on. For what the platform reads from a folder a job's processes could
/// write to (a confidential job's `result.json` and sealed log), so that a link planted there
/// cannot make it read a file of the host.
pub fn open_file_beneath(dir: &Path, relative: &str) -> std::io::Result<std::fs::File> {
    let root = open_folder(rustix::fs::CWD, dir)?;
    open_beneath(&root, relative)
}

fn open_folder(at: impl rustix::fd::AsFd, name: impl rustix::path::Arg) -> std::io::Result<std::fs::File> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::openat(
        at,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(std::fs::File::from(fd))
}

/// Opens the regular file `relative` beneath `root`, one component at a time, none of them a
/// link.
fn open_beneath(root: &std::fs::File, relative: &str) -> std::io::Result<std::fs::File> {
    use rustix::fs::{Mode, OFlags};
    let mut parts = relative.split('/').filter(|p| !p.is_empty()).peekable();
    let mut folder: Option<std::fs::File> = None;
    while let Some(part) = parts.next() {
        if part == "." || part == ".." {
            return Err(std::io::Error::other("an output path left its folder"));
        }
        let at = folder.as_ref().unwrap_or(root);
        if parts.peek().is_some() {
            folder = Some(open_folder(at, part)?);
            continue;
        }
        // NONBLOCK: a FIFO put there meanwhile must not hang the reader; it is refused below.
        let fd = rustix::fs::openat(
            at,
            part,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let file = std::fs::File::from(fd);
        if !file.metadata()?.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        return Ok(file);
    }
    Err(std::io::Error::other("an empty output path"))
}

/// Default timeout when a caller does not choose one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);

/// Largest event handed to a script in `EVENT` itself. Linux caps one variable (or argument)
/// at 128 KiB (`MAX_ARG_STRLEN`) and all of them together at `ARG_MAX`, so a larger event
/// (the body of a `/run` or `/job` invocation can be the body limit) is handed over as a file:
/// `EVENT` then holds the path of `EVENT_FILE`, which always holds the whole event.
pub const EVENT_INLINE_MAX: usize = 64 * 1024;

/// The name of the file in the work directory that holds the whole event (`EVENT_FILE`).
const EVENT_FILE_NAME: &str = "event.json";

/// Longest `NAME=value` string the kernel passes to a new program (`MAX_ARG_STRLEN`, 32 pages,
/// with its terminating NUL).
const MAX_ENV_STRING: usize = 32 * 4096 - 1;

#[cfg(test)]
mod tests;
