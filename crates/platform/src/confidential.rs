//! The local executor's side of confidential jobs: it hands the job to a `cloister-runtime`
//! process (the code that would run inside the TEE) and only ever touches ciphertext.
//!
//! The contract is [`cloister_runtime::tee`]: a job directory with `job.json` (no script: the
//! program comes from the CAS session) and the job's storage credential; the runtime's standard
//! output is the job's log (status lines, no content); the runtime stores the outputs itself,
//! encrypted, over S3 with that credential (scoped to the service's output folders), and
//! `result.json` lists them beside the sealed log of the program. The job directory is
//! writable by the program, so this side reads it without following links, bounded.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cloister_runtime::contained::{ContainedStorage, SOCKET_DIR, SOCKET_FILE};
use cloister_runtime::tee::{SEALED_LOG_OVERHEAD, STORAGE_FILE, TeeInput, TeeJob, TeeResult};
use cloister_runtime::{
    CgroupSupport, JobInput, JobIo, JobOutcome, JobSpec, Limits, LogLine, Program, ProgramOptions,
    RunFailure, Status, Tee,
};
use futures::future::BoxFuture;
use time::OffsetDateTime;

use crate::container::Containers;

/// What the local executor needs to run confidential jobs on this host.
#[derive(Debug, Clone)]
pub struct ConfidentialHost {
    /// The `cloister-runtime` binary, which runs each confidential job.
    pub runtime_binary: PathBuf,
    /// Seed file of this host's simulated TEE platform key (simulation TEE).
    pub sim_platform_key: PathBuf,
    /// Memory-backed directory (tmpfs) for plaintext, outside the data directory.
    pub plain_root: PathBuf,
    /// This server's job directories, under `plain_root` but its own: servers of other data
    /// directories may share `plain_root`, and each start clears only its own.
    pub jobs_dir: PathBuf,
    /// Where services' encrypted volumes are kept (`<root>/<service>/`).
    pub volumes_root: PathBuf,
}

impl ConfidentialHost {
    /// Removes what runtimes that died (with this server, or killed) left in the plaintext
    /// folder; a folder that fails its ownership and mode checks is reported and left alone
    /// (the runtime refuses it too).
    pub fn sweep(&self) {
        match cloister_runtime::plain::PlainRoot::open(&self.plain_root, false) {
            Ok(root) => {
                let removed = root.sweep();
                if removed > 0 {
                    tracing::warn!(
                        removed,
                        "removed plaintext left by confidential jobs that did not finish"
                    );
                }
                let _ = std::fs::remove_dir_all(&self.jobs_dir);
            }
            Err(reason) => tracing::warn!(%reason, "confidential jobs will fail until this is fixed"),
        }
    }
}

/// Extra time the runtime gets beyond the script's own timeout (attestation, crypto).
const RUNTIME_GRACE: Duration = Duration::from_secs(120);

pub(crate) struct Slot<'a> {
    pub cgroups: &'a CgroupSupport,
    pub name: String,
}

/// The socket in a contained job's folder through which its runtime reaches the CAS.
const CAS_SOCKET: &str = "cas.sock";
/// A contained job's copy of the simulated platform key, in its folder: handed to the image's
/// user with the folder, where the server's own file (0600) would be unreadable to a non-root
/// `USER`.
const PLATFORM_KEY: &str = "platform.key";

pub(crate) async fn run(
    host: &ConfidentialHost,
    spec: &JobSpec,
    io: &dyn JobIo,
    slot: Slot<'_>,
    containers: Option<&Containers>,
    cancel: BoxFuture<'static, ()>,
    on_start: Box<dyn FnOnce() + Send>,
) -> JobOutcome {
    let mut outcome = JobOutcome::new(Status::Failed);
    // The job directory holds only ciphertext and public facts, so it may live anywhere; in
    // the memory-backed folder the sealed outputs cost no disk write before their upload.
    let work = host.jobs_dir.join(format!("job-{}", spec.job_uuid));
    let subject = match &spec.input {
        JobInput::Object { bucket, key } => format!("on {bucket}/{key}"),
        _ => "without input".to_owned(),
    };
    let wiring = spec.placement.attestation.as_ref();
    outcome.log.push(LogLine {
        time: OffsetDateTime::now_utc(),
        text: format!(
            "cloister: confidential job {subject}; the runtime attests to {} as {}/{}",
            wiring.map_or("?", |w| w.cas.as_str()),
            wiring.map_or("?", |w| w.session.as_str()),
            wiring.map_or("?", |w| w.service.as_str()),
        ),
    });
    // In a container the engine holds the job to its limits.
    let cgroups = if containers.is_some() {
        &CgroupSupport::None
    } else {
        slot.cgroups
    };
    let procs = match cgroups.prepare(&slot.name, &spec.limits) {
        Ok(p) => p,
        Err(e) => {
            fail(&mut outcome, format!("cannot prepare the job's cgroup: {e}"));
            return outcome;
        }
    };
    match prepare(host, spec, io, &work, procs.clone(), containers).await {
        Ok(prepared) => {
            let runner = match containers {
                Some(containers) => Runner::Container(containers, &prepared),
                None => Runner::Host,
            };
            execute(host, spec, &work, runner, cancel, on_start, &mut outcome).await;
        }
        Err(reason) => fail(&mut outcome, reason),
    }
    cgroups.clear(&procs);
    // A runtime killed mid-job (timeout, deletion, memory limit) cannot remove its plaintext.
    let plain = host.plain_root.join(format!("job-{}", spec.job_uuid));
    if tokio::fs::try_exists(&plain).await.unwrap_or(false) {
        tracing::warn!(job = %spec.job_name, "removing the plaintext folder of a runtime that did not finish");
        let _ = tokio::task::spawn_blocking(move || cloister_runtime::plain::wipe(&plain)).await;
    }
    let removed = tokio::fs::remove_dir_all(&work).await;
    if let Err(e) = removed
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(job = %spec.job_name, error = %e, "cannot remove job work directory");
    }
    outcome
}

fn fail(outcome: &mut JobOutcome, reason: String) {
    outcome.log.push(LogLine {
        time: OffsetDateTime::now_utc(),
        text: format!("cloister: {reason}"),
    });
    outcome.status = Status::Failed;
    outcome.reason.get_or_insert(reason);
}

/// What [`prepare`] readied beyond `job.json`: the host files a container mounts, and the
/// CAS relay and the job's S3 socket, serving until the job ends.
struct Prepared {
    input: Option<PathBuf>,
    volumes: PathBuf,
    _relay: Option<crate::container::CasRelay>,
    s3_socket: Option<crate::container::JobSocket>,
}

/// Where the runtime runs.
enum Runner<'a> {
    /// A process of this host.
    Host,
    /// The first program of a container of the service's image.
    Container(&'a Containers, &'a Prepared),
}

async fn prepare(
    host: &ConfidentialHost,
    spec: &JobSpec,
    io: &dyn JobIo,
    work: &Path,
    cgroup_procs: Vec<PathBuf>,
    containers: Option<&Containers>,
) -> Result<Prepared, String> {
    let contained = containers.is_some();
    use crate::container::{CONFIDENTIAL_INPUT, CONFIDENTIAL_PLAIN_ROOT, CONFIDENTIAL_VOLUMES};
    let prepare_dir = || -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        if work.exists() {
            std::fs::remove_dir_all(work)?;
        }
        std::fs::create_dir_all(work.parent().unwrap_or(work))?;
        std::fs::DirBuilder::new().mode(0o700).create(work)
    };
    prepare_dir().map_err(|e| format!("cannot prepare the job's work directory: {e}"))?;
    // The job folder as the runtime sees it: mounted at the work mount point in a container.
    let inside = |name: &str| {
        if contained {
            Path::new(crate::container::MOUNT_POINT).join(name)
        } else {
            work.join(name)
        }
    };
    let mut mounted_input = None;
    let input = match &spec.input {
        JobInput::Object { bucket, key } => {
            // The runtime reads the ciphertext where it is stored when storage is local.
            let file = match io.local_path(bucket, key).filter(|p| p.is_file()) {
                Some(path) if contained => {
                    mounted_input = Some(path);
                    PathBuf::from(CONFIDENTIAL_INPUT)
                }
                Some(path) => path,
                None => {
                    let dest = work.join("input.cvol");
                    io.fetch(bucket, key, &dest)
                        .await
                        .map_err(|e| format!("cannot fetch input {bucket}/{key}: {e}"))?;
                    inside("input.cvol")
                }
            };
            Some(TeeInput {
                bucket: bucket.clone(),
                key: key.clone(),
                file,
            })
        }
        JobInput::None => None,
        JobInput::Inline(_) => {
            return Err("confidential services take encrypted objects, not inline bodies".into());
        }
    };
    let tee = spec.placement.tee.ok_or("the job needs no TEE")?;
    // A TEE without wiring: OSCAR's `enable_sgx` on a service with no confidential block.
    let wiring = spec
        .placement
        .attestation
        .as_ref()
        .ok_or("the service's confidential block gives no CLOISTER_CAS")?;
    let volumes = host.volumes_root.join(&spec.service);
    let access = spec
        .storage
        .as_ref()
        .ok_or("the job has no storage credential for its outputs (the platform could not issue one)")?;
    let (relay, s3_socket) = match containers {
        Some(containers) => {
            // A container's mount needs its source to exist.
            std::fs::create_dir_all(&volumes).map_err(|e| format!("cannot create the volume folder: {e}"))?;
            if tee == Tee::Sim {
                copy_private(&host.sim_platform_key, &work.join(PLATFORM_KEY))
                    .map_err(|e| format!("cannot hand the simulated platform key to the job: {e}"))?;
            }
            (
                Some(crate::container::relay_to_cas(work, CAS_SOCKET, &wiring.cas)?),
                Some(containers.confidential_socket(work)?),
            )
        }
        None => (None, None),
    };
    // The runtime reads and removes it before the program starts; a container reaches the
    // store through its socket, a runtime on this host through the S3 port.
    let endpoint = if contained {
        format!("unix://{SOCKET_DIR}/{SOCKET_FILE}")
    } else {
        access.endpoint.clone()
    };
    let credential = serde_json::to_vec(&ContainedStorage::new(access, endpoint))
        .map_err(|e| format!("cannot hand the storage credential to the job: {e}"))?;
    write_private(&work.join(STORAGE_FILE), &credential)
        .map_err(|e| format!("cannot hand the storage credential to the job: {e}"))?;
    let job = TeeJob {
        job_name: spec.job_name.clone(),
        job_uuid: spec.job_uuid.clone(),
        service: spec.service.clone(),
        tee,
        cas: wiring.cas.clone(),
        cas_pin: wiring.cas_pin.clone(),
        cas_socket: contained.then(|| inside(CAS_SOCKET)),
        session: wiring.session.clone(),
        cas_service: wiring.service.clone(),
        sim_platform_key: Some(if contained {
            inside(PLATFORM_KEY)
        } else {
            host.sim_platform_key.clone()
        }),
        input,
        event: spec.event.clone(),
        event_time: spec
            .event_time
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        // The container's memory limit is the engine's, and holds the runtime and its tmpfs.
        memory_bytes: if contained { None } else { spec.limits.memory_bytes },
        timeout_secs: spec.limits.timeout.as_secs(),
        log_limit: spec.log_limit,
        cgroup_procs,
        plain_root: if contained {
            PathBuf::from(CONFIDENTIAL_PLAIN_ROOT)
        } else {
            host.plain_root.clone()
        },
        volumes_dir: if contained {
            PathBuf::from(CONFIDENTIAL_VOLUMES)
        } else {
            volumes.clone()
        },
    };
    let bytes = serde_json::to_vec_pretty(&job).map_err(|e| format!("cannot describe the job: {e}"))?;
    std::fs::write(work.join("job.json"), bytes).map_err(|e| format!("cannot describe the job: {e}"))?;
    Ok(Prepared {
        input: mounted_input,
        volumes,
        _relay: relay,
        s3_socket,
    })
}

#[allow(clippy::too_many_arguments)]
async fn execute(
    host: &ConfidentialHost,
    spec: &JobSpec,
    work: &Path,
    runner: Runner<'_>,
    cancel: BoxFuture<'static, ()>,
    on_start: Box<dyn FnOnce() + Send>,
    outcome: &mut JobOutcome,
) {
    // The runtime holds the program it runs to the job's limits (the cgroup slot named in
    // job.json); it is not charged for them itself, so it starts outside the slot.
    let args = ["--job".to_owned(), work.display().to_string()];
    let env = [("PATH".to_owned(), "/usr/local/bin:/usr/bin:/bin".to_owned())];
    let limits = Limits {
        memory_bytes: None,
        cpu_millis: None,
        timeout: spec.limits.timeout + RUNTIME_GRACE,
    };
    let options = ProgramOptions {
        program: Program::Direct(&host.runtime_binary),
        args: &args,
        work_dir: work,
        env: &env,
        limits: &limits,
        cgroups: &CgroupSupport::None,
        slot: "",
        log_limit: spec.log_limit,
        keep_stdout: None,
    };
    let run = match runner {
        Runner::Host => cloister_runtime::run_program(options, cancel, on_start).await,
        Runner::Container(containers, prepared) => {
            let Some(s3_socket) = &prepared.s3_socket else {
                fail(outcome, "the job's container has no S3 socket".into());
                return;
            };
            let files = crate::container::ConfidentialFiles {
                job_dir: work,
                input: prepared.input.as_deref(),
                volumes: &prepared.volumes,
                sockets: s3_socket.folder(),
            };
            containers
                .run_confidential(spec, &files, limits.timeout, cancel, on_start)
                .await
        }
    };
    outcome.log.extend(run.log);
    let signal = match run.failure {
        None => None,
        Some(RunFailure::Killed { signal }) => Some(signal),
        Some(RunFailure::TimedOut(_) | RunFailure::Cancelled) => {
            fail(outcome, "the job was stopped (timeout or deleted)".into());
            return;
        }
        Some(RunFailure::Wait(e)) => {
            fail(outcome, format!("cannot wait for the runtime: {e}"));
            return;
        }
        Some(failure) => {
            fail(outcome, failure.to_string());
            return;
        }
    };
    let result = match read_result(work).await {
        Ok(r) => r,
        Err(e) => {
            let reason = match signal {
                // Plaintext lives in memory (tmpfs) charged to the job, so a large input
                // needs a memory limit above its size.
                Some(libc::SIGKILL) => {
                    "the runtime was killed (SIGKILL): most likely the job's memory limit, \
                                        which must hold the plaintext input, outputs and volumes"
                        .to_owned()
                }
                Some(signal) => format!("the runtime died of signal {signal}"),
                None => format!("the runtime left no result ({e})"),
            };
            fail(outcome, reason);
            return;
        }
    };
    outcome.exit_code = result.exit_code;
    // The program's own output, encrypted to the data owners: kept whether or not the job
    // succeeded (a failing script's output is what its owner needs most).
    if let Some(name) = &result.sealed_log {
        let limit = spec.log_limit.saturating_add(SEALED_LOG_OVERHEAD) as u64;
        match sealed_file(name) {
            Some(relative) => match read_job_file(work, &relative, limit).await {
                Ok(bytes) => outcome.sealed_log = Some(bytes),
                Err(JobFileError::TooLarge) => outcome.log.push(LogLine {
                    time: OffsetDateTime::now_utc(),
                    text: format!(
                        "cloister: the sealed log is longer than the {limit} bytes kept per job and was dropped"
                    ),
                }),
                // Something else wrote the job folder: nothing of it is taken.
                Err(e) => {
                    fail(outcome, format!("cannot read the sealed log: {e}"));
                    return;
                }
            },
            None => {
                fail(
                    outcome,
                    format!("the runtime named an invalid sealed log {name:?}"),
                );
                return;
            }
        }
    }
    // The runtime stored the outputs with the job's credential, which writes nowhere but under
    // the service's output folders; the list is for the job's record (a failed job lists what
    // it stored before it failed). Anything in the job's container can write `result.json`: a
    // list naming another place is not the runtime's.
    if let Some(output) = result
        .outputs
        .iter()
        .find(|o| !spec.outputs.iter().any(|t| t.contains(&o.bucket, &o.key)))
    {
        fail(
            outcome,
            format!(
                "the job's result names the output {}/{}, which no output path of the service contains",
                output.bucket, output.key
            ),
        );
        return;
    }
    outcome.uploaded = result
        .outputs
        .iter()
        .map(|o| format!("{}/{}", o.bucket, o.key))
        .collect();
    if result.status != Status::Succeeded {
        // The runtime already logged its reason.
        outcome.status = Status::Failed;
        outcome.reason = result
            .reason
            .or_else(|| Some("the confidential runtime failed".into()));
        return;
    }
    outcome.status = Status::Succeeded;
}

/// Largest `result.json` read: statuses, names and reasons, no data.
const MAX_RESULT_FILE: u64 = 16 << 20;

/// Why a file the runtime left in the job folder was not read.
#[derive(Debug, thiserror::Error)]
enum JobFileError {
    /// It is larger than it may be.
    #[error("larger than allowed")]
    TooLarge,
    /// It is not a regular file of the job folder (a link, a FIFO, missing) or reading failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Reads `relative` in the job folder `work`, at most `limit` bytes. Anything in the job's
/// container (the program, a tool of the image, a process it left running) can write there,
/// so no link is followed and no FIFO waited on (see [`cloister_runtime::open_file_beneath`]).
async fn read_job_file(work: &Path, relative: &str, limit: u64) -> Result<Vec<u8>, JobFileError> {
    let (work, relative) = (work.to_path_buf(), relative.to_owned());
    tokio::task::spawn_blocking(move || {
        use std::io::Read as _;
        let file = cloister_runtime::open_file_beneath(&work, &relative)?;
        if file.metadata()?.len() > limit {
            return Err(JobFileError::TooLarge);
        }
        let mut bytes = Vec::new();
        // It may grow after its size was read.
        file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > limit {
            return Err(JobFileError::TooLarge);
        }
        Ok(bytes)
    })
    .await
    .map_err(|e| JobFileError::Io(std::io::Error::other(e)))?
}

/// The runtime's `result.json`.
async fn read_result(work: &Path) -> Result<TeeResult, String> {
    let bytes = read_job_file(work, "result.json", MAX_RESULT_FILE)
        .await
        .map_err(|e| match e {
            JobFileError::TooLarge => format!("result.json is larger than {MAX_RESULT_FILE} bytes"),
            JobFileError::Io(e) => e.to_string(),
        })?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

/// Writes a new file `path` readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    crate::create_private(path)?.write_all(bytes)
}

/// Copies `from` to a new file `to` readable by its owner only.
fn copy_private(from: &Path, to: &Path) -> std::io::Result<()> {
    let mut source = std::fs::File::open(from)?;
    let mut copy = crate::create_private(to)?;
    std::io::copy(&mut source, &mut copy).map(|_| ())
}

/// The runtime names the sealed log `log`, inside `sealed/`; anything else could point outside
/// the job dir.
fn sealed_file(name: &str) -> Option<String> {
    (name == "log").then(|| format!("sealed/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(plain_root: &Path, server: &str) -> ConfidentialHost {
        ConfidentialHost {
            runtime_binary: PathBuf::from("/nonexistent"),
            sim_platform_key: PathBuf::from("/nonexistent"),
            plain_root: plain_root.to_path_buf(),
            jobs_dir: plain_root.join("jobs").join(server),
            volumes_root: PathBuf::from("/nonexistent"),
        }
    }

    /// A job folder as a hostile runtime leaves it: `runtime` is the body of the shell script
    /// run in the runtime's place (`$2` is the job folder, `$HOST` a folder of the host holding
    /// secret files, `$FORGED` a result naming an output and the sealed log).
    async fn hostile(runtime: &str) -> (JobOutcome, tempfile::TempDir) {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let host_dir = dir.path().join("host");
        std::fs::create_dir(&host_dir).unwrap();
        for name in ["log", "result.json"] {
            std::fs::write(host_dir.join(name), "HOST SECRET").unwrap();
        }
        let forged = r#"{"status":"Succeeded","exit_code":0,"reason":null,"outputs":[{"bucket":"svc","key":"out/x"}],"sealed_log":"log"}"#;
        std::fs::write(host_dir.join("forged.json"), forged).unwrap();
        let program = dir.path().join("runtime.sh");
        std::fs::write(
            &program,
            format!(
                "#!/bin/sh\nset -eu\nHOST={}\nFORGED='{forged}'\ncd \"$2\"\n{runtime}\n",
                host_dir.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut host = host(dir.path(), "aaaa");
        host.runtime_binary = program;
        let work = dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        let spec = JobSpec {
            job_name: "svc-job".into(),
            job_uuid: "0193a5e2-7c4e-7b8a-9f00-aabbccddeeff".into(),
            service: "svc".into(),
            service_token: String::new(),
            script: String::new(),
            environment: Default::default(),
            input: JobInput::None,
            event: "{}".into(),
            event_time: OffsetDateTime::now_utc(),
            outputs: vec![cloister_runtime::OutputTarget {
                bucket: "svc".into(),
                folder: "out".into(),
                prefix: Vec::new(),
                suffix: Vec::new(),
            }],
            limits: Limits {
                memory_bytes: None,
                cpu_millis: None,
                timeout: Duration::from_secs(20),
            },
            log_limit: 64 * 1024,
            placement: Default::default(),
            storage: None,
        };
        let mut outcome = JobOutcome::new(Status::Failed);
        execute(
            &host,
            &spec,
            &work,
            Runner::Host,
            Box::pin(std::future::pending()),
            Box::new(|| {}),
            &mut outcome,
        )
        .await;
        (outcome, dir)
    }

    /// What the job's container (its program, a tool of the image, a process it left behind) can
    /// write in the job folder cannot make the platform read host files, record outputs outside
    /// the service's output paths, or hang: links, FIFOs and oversized files are refused. A
    /// well-formed folder is accepted (so the refusals are the checks').
    #[tokio::test]
    async fn the_job_folder_cannot_point_the_platform_elsewhere() {
        let genuine = "mkdir sealed\necho sealed-log > sealed/log\n";
        let (outcome, _dir) = hostile(&format!("{genuine}printf '%s' \"$FORGED\" > result.json")).await;
        assert_eq!(outcome.status, Status::Succeeded, "{:?}", outcome.log);
        assert_eq!(outcome.uploaded, ["svc/out/x"]);
        assert_eq!(outcome.sealed_log.as_deref(), Some(&b"sealed-log\n"[..]));

        let cases = [
            // `sealed` is a link to a host folder holding a `log`.
            (
                "ln -s \"$HOST\" sealed\nprintf '%s' \"$FORGED\" > result.json".to_owned(),
                "cannot read the sealed log",
            ),
            // The sealed log is a link to a host file.
            (
                format!("{genuine}ln -sf \"$HOST/log\" sealed/log\nprintf '%s' \"$FORGED\" > result.json"),
                "cannot read the sealed log",
            ),
            // `result.json` itself is a link to a file of the host's.
            (
                format!("{genuine}ln -s \"$HOST/forged.json\" result.json"),
                "the runtime left no result",
            ),
            // A FIFO nobody writes to: reading it would wait forever.
            (
                format!("{genuine}mkfifo result.json"),
                "the runtime left no result",
            ),
            // Larger than any result (a sparse file).
            (
                format!("{genuine}dd if=/dev/zero of=result.json bs=1 count=0 seek=20M 2>/dev/null"),
                "larger than",
            ),
            // Outputs of another service's bucket, or outside the output folder.
            (
                format!(
                    "{genuine}printf '%s' \"$FORGED\" | sed 's/\"bucket\":\"svc\"/\"bucket\":\"other\"/' > result.json"
                ),
                "no output path of the service contains",
            ),
            (
                format!("{genuine}printf '%s' \"$FORGED\" | sed 's#out/x#in/x#' > result.json"),
                "no output path of the service contains",
            ),
        ];
        for (runtime, reason) in cases {
            let (outcome, _dir) = hostile(&runtime).await;
            assert_eq!(outcome.status, Status::Failed, "{runtime}: {:?}", outcome.log);
            let text = outcome.reason.clone().unwrap_or_default();
            assert!(text.contains(reason), "{runtime}: {text}");
            assert!(outcome.uploaded.is_empty(), "{runtime}");
            let leaked = |log: &[u8]| String::from_utf8_lossy(log).contains("HOST SECRET");
            assert!(!outcome.sealed_log.as_deref().is_some_and(leaked), "{runtime}");
        }
    }

    /// Two servers (two data directories) may share the plaintext folder: a start clears what
    /// its own earlier run left, never the job directories of the other's running jobs (which
    /// it once did, failing them at random).
    #[test]
    fn a_start_clears_only_its_own_job_directories() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::create_dir(&plain).unwrap();
        std::fs::set_permissions(&plain, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let (first, second) = (host(&plain, "aaaa"), host(&plain, "bbbb"));
        let running = first.jobs_dir.join("job-1");
        std::fs::create_dir_all(&running).unwrap();
        std::fs::write(running.join("job.json"), "{}").unwrap();
        let left = second.jobs_dir.join("job-2");
        std::fs::create_dir_all(&left).unwrap();

        second.sweep();
        assert!(
            running.join("job.json").exists(),
            "the other server's running job was removed"
        );
        assert!(!left.exists(), "the server's own leftover was kept");
        first.sweep();
        assert!(!running.exists());
    }
}
