//! One confidential job, from `job.json` to `result.json`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write as _;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use cloister_attestation::{EvidenceSource, GramineSource, SimPlatform, TsmProvider, TsmSource};
use cloister_cas_client::client::CasClient;
use cloister_cas_client::protocol::{
    CounterIncrement, InitData, ReleasedConfig, VolumeCommit, VolumeState, valid_volume_name,
};
use cloister_crypt::{CryptError, EncryptOptions, Identity, ObjectBinding, Recipient, SymmetricKey};
use cloister_runtime::contained::ContainedStorage;
use cloister_runtime::plain::PlainRoot;
use cloister_runtime::tee::{STORAGE_FILE, TeeJob, TeeOutput, TeeResult, render_log, sealed_log_binding};
use cloister_runtime::{CgroupSupport, Limits, OutputTarget, Program, ProgramOptions, Status, Tee};
use zeroize::Zeroizing;

use crate::approver::{self, Approver};
use crate::cas_wait::{self, Repeat, WaitFailure};
use crate::failure::{FileCrypto, InputProblem, JobFailure, JobFileProblem, ReleasedProblem, exit_code_text};
use crate::reserved;
use crate::s3::{PutSealedError, S3Io};
use crate::volumes::{self, VolumeContext};

/// Largest `job.json` accepted (it holds names and paths, not data).
const MAX_JOB_FILE: u64 = 1024 * 1024;
/// Largest storage credential file accepted.
const MAX_STORAGE_FILE: u64 = 64 * 1024;
/// Largest event handed to the program (`EVENT`): what a plain job gets inline.
const MAX_EVENT: usize = cloister_runtime::EVENT_INLINE_MAX;
/// The file in the plaintext folder that holds the event (`EVENT_FILE`).
const EVENT_FILE_NAME: &str = "event.json";
/// Most bytes of the program's output kept in its encrypted log, whatever the job asks.
const MAX_SEALED_LOG: usize = 16 * 1024 * 1024;
/// How long a volume commit waits for an unavailable CAS, after the program: well inside the
/// grace the executor gives the runtime beyond the job's timeout (120 s).
const COMMIT_PATIENCE: Duration = Duration::from_secs(60);

/// Runs the confidential job described in `job_dir/job.json`, writes `job_dir/result.json`
/// and returns the same result. Status lines (no content) go to `log`.
pub async fn run_job_dir(job_dir: &Path, log: &mut (dyn FnMut(&str) + Send)) -> TeeResult {
    let mut result = TeeResult {
        status: Status::Failed,
        exit_code: None,
        reason: None,
        outputs: Vec::new(),
        sealed_log: None,
    };
    // First of all, before anything of the job runs: this process's memory, descriptors and
    // environment are closed to the program, which runs as the same user without
    // CAP_SYS_PTRACE (they hold the storage credential, the session's keys, an approver's
    // key), and the storage credential leaves the job folder, which the program can reach.
    let storage = crate::contained::not_dumpable()
        .map_err(JobFailure::NotDumpable)
        .and_then(|()| take_storage(job_dir));
    let prepared = storage
        .and_then(|storage| load_job(job_dir).map(|job| (job, storage)))
        .and_then(|(job, storage)| {
            // Hardware TEEs keep plaintext in their own memory; a disk-backed folder in a
            // confidential VM may be storage the host reads.
            let root =
                PlainRoot::open(&job.plain_root, job.tee != Tee::Sim).map_err(JobFailure::Plaintext)?;
            let swept = root.sweep();
            if swept > 0 {
                log(&format!(
                    "cloister: removed {swept} plaintext folder(s) left by runtimes that did not finish"
                ));
            }
            let plain = root
                .create_job_dir(&job.job_uuid)
                .map_err(JobFailure::Plaintext)?;
            Ok((job, plain, storage))
        });
    match prepared {
        Ok((job, plain, storage)) => {
            if let Err(failure) = run(&job, job_dir, plain.path(), storage.as_ref(), log, &mut result).await {
                // Outputs stored before the failure stay listed: they are in storage.
                result.status = Status::Failed;
                result.reason = Some(failure.to_string());
            }
            plain.wipe();
        }
        Err(failure) => result.reason = Some(failure.to_string()),
    }
    if let Some(reason) = &result.reason {
        log(&format!("cloister: {reason}"));
    }
    let written = serde_json::to_vec_pretty(&result)
        .map_err(std::io::Error::other)
        .and_then(|bytes| write_atomically(&job_dir.join("result.json"), &bytes));
    if let Err(e) = written {
        log(&format!("cloister: cannot write result.json: {e}"));
    }
    result
}

/// The job's storage credential ([`STORAGE_FILE`]), read and removed; `None` when the
/// executor gave none (the job then cannot store outputs). Its content never appears in a
/// reason: a malformed file is reported by position only.
fn take_storage(job_dir: &Path) -> Result<Option<S3Io>, JobFailure> {
    let path = job_dir.join(STORAGE_FILE);
    match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        _ => {}
    }
    let bytes = Zeroizing::new(
        crate::contained::read_and_remove(&path, MAX_STORAGE_FILE).map_err(JobFailure::Storage)?,
    );
    let storage: ContainedStorage = serde_json::from_slice(&bytes).map_err(|e| {
        JobFailure::Storage(format!(
            "{STORAGE_FILE} is not a storage credential (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    S3Io::new(&storage.into_access())
        .map(Some)
        .map_err(|e| JobFailure::Storage(e.to_string()))
}

fn load_job(job_dir: &Path) -> Result<TeeJob, JobFailure> {
    let job_bytes = read_limited(&job_dir.join("job.json"), MAX_JOB_FILE)?;
    let job: TeeJob = serde_json::from_slice(&job_bytes).map_err(JobFileProblem::Json)?;
    if uuid::Uuid::parse_str(&job.job_uuid).is_err() {
        return Err(JobFileProblem::NotUuid.into());
    }
    for (what, name) in [("job_name", &job.job_name), ("service", &job.service)] {
        if name.is_empty()
            || name.len() > 128
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(JobFileProblem::InvalidName(what).into());
        }
    }
    // The program joins these cgroups: only real cgroup membership files are written to.
    for procs in &job.cgroup_procs {
        let normal = procs
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if !normal || !procs.starts_with("/sys/fs/cgroup") || !procs.ends_with("cgroup.procs") {
            return Err(JobFileProblem::NotCgroupProcs(procs.clone()).into());
        }
    }
    if job.event.len() > MAX_EVENT || serde_json::from_str::<serde_json::Value>(&job.event).is_err() {
        return Err(JobFileProblem::Event.into());
    }
    Ok(job)
}

fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, JobFailure> {
    use std::io::Read as _;
    let unreadable = |source| JobFailure::Read {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(unreadable)?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).map_err(unreadable)?;
    if bytes.len() as u64 > limit {
        return Err(JobFailure::TooLarge {
            path: path.to_owned(),
            limit,
        });
    }
    Ok(bytes)
}

/// What this runtime was launched for. Under SGX it comes from the manifest's trusted file;
/// elsewhere from `job.json`, and the evidence's launch register vouches for it (checked in
/// [`CasClient::attest`] before anything is sent).
fn init_data(job: &TeeJob) -> Result<InitData, JobFailure> {
    if job.tee == Tee::Sgx {
        let bytes = read_limited(Path::new(crate::SGX_INIT_DATA), 64 * 1024)?;
        return serde_json::from_slice(&bytes).map_err(JobFailure::MalformedInitData);
    }
    InitData::new(&job.cas_pin, &job.session, &job.cas_service)
        .map_err(|e| JobFileProblem::InitData(e).into())
}

async fn run(
    job: &TeeJob,
    job_dir: &Path,
    plain: &Path,
    storage: Option<&S3Io>,
    log: &mut (dyn FnMut(&str) + Send),
    result: &mut TeeResult,
) -> Result<(), JobFailure> {
    // The job's timeout covers the whole job, waiting for the CAS included: a CAS that is
    // down or silent when the job starts is tried again until it runs out.
    let deadline = Instant::now() + Duration::from_secs(job.timeout_secs.max(1));
    // 1. Attest: evidence over this runtime, launched for this CAS, session and service.
    let init = init_data(job)?;
    let source = evidence_source(job, &init)?;
    let mut client = CasClient::new(&job.cas, &init.cas_pin, None).map_err(JobFailure::CasClient)?;
    if let Some(socket) = &job.cas_socket {
        client = client.through_socket(socket.clone());
    }
    let started = Instant::now();
    let released = cas_wait::with_retries(&job.cas, deadline, Repeat::Freely, log, || {
        client.attest(&init, source.as_ref(), |_| {})
    })
    .await
    .map_err(|failure| match failure {
        WaitFailure::Answered(refusal) => JobFailure::Attestation(refusal),
        WaitFailure::Unreachable(unreachable) => JobFailure::CasUnreachable(unreachable),
    })?;
    log(&format!(
        "cloister: attested to the CAS as {}/{} ({} evidence) in {:.1} ms; configuration of session \
         version {} received",
        init.session,
        init.service,
        job.tee,
        started.elapsed().as_secs_f64() * 1000.0,
        short(&released.session_hash),
    ));
    let ReleasedConfig {
        command,
        mut environment,
        files,
        volumes: volume_states,
        volume_grant,
        session_hash: _,
        pwd,
    } = released;
    let keys = Keys::take(&mut environment)?;

    // 2. Stage: injected files, the decrypted input, the volumes — all in the private dir.
    for dir in ["input", "output", "tmp", "files", "volumes"] {
        std::fs::create_dir(plain.join(dir)).map_err(JobFailure::PlainLayout)?;
    }
    // As for plain jobs: `EVENT_FILE` holds the event (here never larger than `EVENT` holds).
    write_private(&plain.join(EVENT_FILE_NAME), job.event.as_bytes(), 0o600)
        .map_err(JobFailure::PlainLayout)?;
    let mut staged_files = BTreeMap::new();
    for file in &files {
        let relative =
            safe_relative(&file.path).ok_or_else(|| JobFailure::UnsafeFilePath(file.path.clone()))?;
        let dest = plain.join("files").join(relative);
        let not_injected = |source| JobFailure::Inject {
            path: file.path.clone(),
            source,
        };
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(not_injected)?;
        }
        write_private(&dest, &file.content, file.mode & 0o700).map_err(not_injected)?;
        staged_files.insert(file.path.clone(), dest);
    }
    drop(files);
    let mut input_path = None;
    if let Some(input) = &job.input {
        if !keys.inputs.is_empty() && !keys.inputs.iter().any(|p| p.contains(&input.bucket, &input.key)) {
            return Err(JobFailure::InputOutsidePaths {
                bucket: input.bucket.clone(),
                key: input.key.clone(),
            });
        }
        let identity = keys.input.as_ref().ok_or(JobFailure::NoInputKey)?;
        let name = input
            .key
            .rsplit('/')
            .next()
            .filter(|n| !n.is_empty() && *n != "." && *n != "..")
            .unwrap_or("input");
        let dest = plain.join("input").join(name);
        let started = Instant::now();
        let decrypted = decrypt_file(
            &input.file,
            &dest,
            identity,
            &ObjectBinding::new(&input.bucket, &input.key),
            &keys.senders,
        )
        .map_err(|source| JobFailure::InputRejected {
            bucket: input.bucket.clone(),
            key: input.key.clone(),
            source,
        })?;
        // "Authenticated" only when a sender proved it: without one, anyone who knows the
        // service's public recipient (the host too) could have made this input.
        let origin = match &decrypted.sender {
            Some(sender) => format!("authenticated from {sender}"),
            None => "sender not authenticated".to_owned(),
        };
        log(&format!(
            "cloister: input {}/{} decrypted ({} bytes, {:.1} ms; {origin})",
            input.bucket,
            input.key,
            decrypted.len,
            started.elapsed().as_secs_f64() * 1000.0
        ));
        input_path = Some(dest);
    }
    let volume_ctx = match &keys.volume {
        Some(key) => Some(VolumeContext {
            session: &init.session,
            service: &init.service,
            key,
            store: &job.volumes_dir,
        }),
        None if keys.volumes.is_empty() => None,
        None => return Err(JobFailure::NoVolumeKey),
    };
    let mut volume_dirs = Vec::new();
    for name in &keys.volumes {
        let state = volume_states.get(name).cloned().unwrap_or_default();
        let dir = plain.join("volumes").join(name);
        std::fs::create_dir(&dir).map_err(|source| JobFailure::VolumeFolder {
            name: name.clone(),
            source,
        })?;
        if let Some(ctx) = &volume_ctx {
            volumes::restore(ctx, name, &state, &dir).map_err(JobFailure::Volume)?;
        }
        log(&format!("cloister: volume {name:?} at version {}", state.version));
        volume_dirs.push((name.clone(), state, dir));
    }

    // The run counts before the program starts: a counter at its max refuses the run. The
    // grant stays here; the program learns the values only.
    let mut counted = Vec::new();
    for name in &keys.counters {
        let increment = CounterIncrement {
            session: init.session.clone(),
            service: init.service.clone(),
            counter: name.clone(),
            grant: volume_grant.clone(),
        };
        // An increment is not idempotent: sent again only when it cannot have arrived.
        let value = cas_wait::with_retries(&job.cas, deadline, Repeat::UnlessSent, log, || {
            client.increment_counter(&increment)
        })
        .await
        .map_err(|failure| match failure {
            WaitFailure::Answered(source) => JobFailure::CounterIncrement {
                name: name.clone(),
                source,
            },
            WaitFailure::Unreachable(source) => JobFailure::CounterIncrementUnreachable {
                name: name.clone(),
                source,
            },
        })?;
        log(&format!("cloister: counter {name:?} at {}", value.value));
        counted.push((name.clone(), value.value));
    }

    // An approver's key is made and bound only now that everything else about the run is
    // settled, and lives only in this process.
    let approver = if keys.approver {
        let approver = Approver::bind(
            &job.cas,
            &init.cas_pin,
            &init.session,
            &init.service,
            &volume_grant,
            deadline,
            log,
        )
        .await?;
        let (listener, path) = Approver::listen(plain)?;
        Some((approver, listener, path))
    } else {
        None
    };

    // 3. Run the program the session names, with the released environment and arguments only.
    let (program, args) = resolve_command(&command, &staged_files)?;
    let workdir = match &pwd {
        Some(pwd) => staged_files
            .get(pwd)
            .cloned()
            .or_else(|| safe_relative(pwd).map(|r| plain.join("files").join(r)))
            .filter(|p| p.is_dir())
            .unwrap_or_else(|| plain.to_owned()),
        None => plain.to_owned(),
    };
    let mut env = script_environment(
        job,
        plain,
        environment,
        input_path.as_deref(),
        &volume_dirs,
        &counted,
        !staged_files.is_empty(),
    );
    if let Some((_, _, socket)) = &approver {
        env.push((
            approver::APPROVER_SOCKET_VARIABLE.into(),
            socket.display().to_string(),
        ));
    }
    // The program runs under the job's limits, in the cgroup slot the executor prepared (or
    // under RLIMIT_AS without one); the runtime's own staging and crypto are not charged to
    // them, just as a plain job's staging and uploads are not.
    let limits = Limits {
        memory_bytes: job.memory_bytes,
        cpu_millis: None,
        timeout: deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1)),
    };
    let cgroups = if job.cgroup_procs.is_empty() {
        CgroupSupport::None
    } else {
        CgroupSupport::Prepared(job.cgroup_procs.clone())
    };
    let options = ProgramOptions {
        program: Program::Exec(&program),
        args: &args,
        work_dir: &workdir,
        env: &env,
        limits: &limits,
        cgroups: &cgroups,
        slot: "",
        log_limit: job.log_limit.min(MAX_SEALED_LOG),
        keep_stdout: None,
    };
    let program = cloister_runtime::run_program(options, std::future::pending(), || {});
    let run = match approver {
        // The socket is served while the program runs, and closed with it.
        Some((approver, listener, socket)) => {
            let run = tokio::select! {
                run = program => run,
                never = approver.serve(listener, log) => match never {},
            };
            let _ = std::fs::remove_file(socket);
            run
        }
        None => program.await,
    };
    let code = exit_code_text(run.exit_code);
    if keys.recipients.is_empty() {
        log(&format!(
            "cloister: program finished (exit code {code}); its output is withheld (the session names no \
             recipient)"
        ));
    } else {
        let started = Instant::now();
        let (bucket, key) = sealed_log_binding(&job.service, &job.job_name);
        // Made here, never found: a folder or link something else put there is refused.
        let sealed = job_dir.join("sealed");
        std::fs::create_dir(&sealed).map_err(|source| JobFailure::CreateDir {
            path: sealed.clone(),
            source,
        })?;
        let text = Zeroizing::new(render_log(&run.log));
        encrypt_bytes(
            &text,
            &sealed.join("log"),
            &keys.recipients,
            &ObjectBinding::new(&bucket, &key),
        )
        .map_err(JobFailure::SealLog)?;
        result.sealed_log = Some("log".into());
        log(&format!(
            "cloister: program finished (exit code {code}); its output ({} bytes) is encrypted to the \
             owners ({:.1} ms): `cloister job logs {} {} --decrypt KEY`",
            text.len(),
            started.elapsed().as_secs_f64() * 1000.0,
            job.service,
            job.job_name
        ));
    }
    drop(run.log);
    result.exit_code = run.exit_code;
    if let Some(failure) = run.failure {
        return Err(JobFailure::Program(failure));
    }
    if run.exit_code != Some(0) {
        return Err(JobFailure::ProgramExit(run.exit_code));
    }

    // 4. The volumes are sealed and committed, then every output is stored for every target
    //    the session names: outputs appear (and may start other services' jobs) only once
    //    nothing but their own upload can fail the job. Plaintext is dropped as soon as
    //    nothing needs it: the input now, each output once stored. It lives in memory charged
    //    to the job, and no sealed copy is kept (each output is encrypted as it is sent).
    let _ = std::fs::remove_dir_all(plain.join("input"));
    let outputs = cloister_runtime::collect_outputs(&plain.join("output"))
        .await
        .map_err(JobFailure::OutputDir)?;
    let any_upload = outputs
        .iter()
        .any(|(relative, _)| targets_of(&keys.outputs, relative).next().is_some());
    if any_upload && keys.recipients.is_empty() {
        return Err(JobFailure::NoOutputRecipient);
    }
    let storage = match storage {
        Some(storage) => Some(storage),
        None if any_upload => return Err(JobFailure::NoStorageAccess),
        None => None,
    };
    if let Some(ctx) = &volume_ctx {
        for (name, state, dir) in &volume_dirs {
            let (tag, stored) = volumes::seal(ctx, name, state.version, dir).map_err(JobFailure::Volume)?;
            let commit = VolumeCommit {
                session: init.session.clone(),
                service: init.service.clone(),
                volume: name.clone(),
                grant: volume_grant.clone(),
                from_version: state.version,
                tag,
            };
            // The CAS may have restarted while the program ran: the grant survives that, so
            // the commit waits for it a while (the host gives the runtime this long beyond
            // the job's timeout).
            let until = Instant::now() + COMMIT_PATIENCE;
            let committed = cas_wait::with_retries(&job.cas, until, Repeat::UnlessSent, log, || {
                client.commit_volume(&commit)
            })
            .await;
            match committed {
                Ok(now) => {
                    log(&format!(
                        "cloister: volume {name:?} committed as version {}",
                        now.version
                    ));
                    volumes::prune(&job.volumes_dir, name, state.version);
                }
                Err(failure) => {
                    let _ = std::fs::remove_file(&stored);
                    return Err(match failure {
                        WaitFailure::Answered(source) => JobFailure::VolumeCommit {
                            name: name.clone(),
                            source,
                        },
                        WaitFailure::Unreachable(source) => JobFailure::VolumeCommitUnreachable {
                            name: name.clone(),
                            source,
                        },
                    });
                }
            }
        }
    }
    if let Some(storage) = storage {
        let started = Instant::now();
        let mut stored = 0u64;
        for (relative, path) in &outputs {
            for target in targets_of(&keys.outputs, relative) {
                let key = target.key_for(relative);
                stored += storage
                    .put_sealed(path, &target.bucket, &key, &keys.recipients)
                    .await
                    .map_err(|source| match source {
                        PutSealedError::Upload(source) => JobFailure::UploadOutput {
                            bucket: target.bucket.clone(),
                            key: key.clone(),
                            source,
                        },
                        source => JobFailure::SealOutput {
                            relative: relative.clone(),
                            source,
                        },
                    })?;
                result.outputs.push(TeeOutput {
                    bucket: target.bucket.clone(),
                    key,
                });
            }
            let _ = std::fs::remove_file(path);
        }
        if !result.outputs.is_empty() {
            log(&format!(
                "cloister: {} output object(s) encrypted to {} recipient(s) and stored ({stored} bytes) in {:.1} ms",
                result.outputs.len(),
                keys.recipients.len(),
                started.elapsed().as_secs_f64() * 1000.0
            ));
        }
    }
    result.status = Status::Succeeded;
    Ok(())
}

/// The session's output targets that take the output at `relative` (by its file name).
fn targets_of<'a>(targets: &'a [OutputTarget], relative: &'a str) -> impl Iterator<Item = &'a OutputTarget> {
    let name = relative.rsplit('/').next().unwrap_or(relative);
    targets.iter().filter(move |t| t.accepts(name))
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// The program and its arguments: words naming an injected file name its staged copy.
fn resolve_command(
    command: &[String],
    staged: &BTreeMap<String, PathBuf>,
) -> Result<(PathBuf, Vec<String>), JobFailure> {
    let resolve = |word: &String| {
        staged
            .get(word)
            .map_or_else(|| word.clone(), |p| p.display().to_string())
    };
    let Some(first) = command.first() else {
        return Err(JobFailure::NoCommand);
    };
    let program = PathBuf::from(resolve(first));
    Ok((program, command[1..].iter().map(resolve).collect()))
}

/// Keys and settings the runtime takes out of the released environment.
struct Keys {
    input: Option<Identity>,
    /// When not empty, an input must be authenticated by one of these senders.
    senders: Vec<Recipient>,
    recipients: Vec<Recipient>,
    inputs: Vec<OutputTarget>,
    outputs: Vec<OutputTarget>,
    volume: Option<SymmetricKey>,
    volumes: Vec<String>,
    /// Counters to increment once per run, before the program starts.
    counters: Vec<String>,
    /// Whether the service is an attested approver.
    approver: bool,
}

impl Keys {
    fn take(environment: &mut BTreeMap<String, String>) -> Result<Self, ReleasedProblem> {
        let input = environment
            .remove(reserved::INPUT_KEY)
            .map(|hex_key| parse_key32(&hex_key, reserved::INPUT_KEY))
            .transpose()?
            .map(|bytes| {
                Identity::from_secret_bytes(&bytes).map_err(|source| ReleasedProblem::Key {
                    variable: reserved::INPUT_KEY,
                    source,
                })
            })
            .transpose()?;
        let recipients = parse_recipients(
            environment.remove(reserved::OUTPUT_RECIPIENTS),
            reserved::OUTPUT_RECIPIENTS,
        )?;
        let senders = parse_recipients(
            environment.remove(reserved::INPUT_SENDERS),
            reserved::INPUT_SENDERS,
        )?;
        let targets = |variable: &'static str, value: Option<String>| {
            value.map_or(Ok(Vec::<OutputTarget>::new()), |json| {
                serde_json::from_str(&json).map_err(|source| ReleasedProblem::Targets { variable, source })
            })
        };
        let inputs = targets(reserved::INPUTS, environment.remove(reserved::INPUTS))?;
        let outputs = targets(reserved::OUTPUTS, environment.remove(reserved::OUTPUTS))?;
        let volume = environment
            .remove(reserved::VOLUME_KEY)
            .map(|hex_key| parse_key32(&hex_key, reserved::VOLUME_KEY))
            .transpose()?
            .map(|bytes| {
                SymmetricKey::new("volume", *bytes).map_err(|source| ReleasedProblem::Key {
                    variable: reserved::VOLUME_KEY,
                    source,
                })
            })
            .transpose()?;
        let volumes = names(environment.remove(reserved::VOLUMES), ReleasedProblem::VolumeName)?;
        // Counter names have the shape of volume names.
        let counters = names(
            environment.remove(reserved::COUNTERS),
            ReleasedProblem::CounterName,
        )?;
        let approver = match environment.remove(reserved::APPROVER).as_deref() {
            None => false,
            Some("1") => true,
            Some(_) => return Err(ReleasedProblem::Approver),
        };
        Ok(Keys {
            approver,
            input,
            senders,
            recipients,
            inputs,
            outputs,
            volume,
            volumes,
            counters,
        })
    }
}

/// A comma-separated list of names (`[a-z0-9][a-z0-9-_.]*`, at most 64 characters), without
/// duplicates; `invalid` names the problem with a bad one.
fn names(
    list: Option<String>,
    invalid: fn(String) -> ReleasedProblem,
) -> Result<Vec<String>, ReleasedProblem> {
    let mut out: Vec<String> = Vec::new();
    for name in list.unwrap_or_default().split(',') {
        let name = name.trim();
        if name.is_empty() || out.iter().any(|n| n == name) {
            continue;
        }
        if !valid_volume_name(name) {
            return Err(invalid(name.to_owned()));
        }
        out.push(name.to_owned());
    }
    Ok(out)
}

/// `CLOISTER_<KIND>_<NAME>`: `name` upper-cased, other characters than letters and digits as
/// `_`.
fn name_variable(kind: &str, name: &str) -> String {
    let var: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("CLOISTER_{kind}_{var}")
}

fn parse_recipients(
    value: Option<String>,
    variable: &'static str,
) -> Result<Vec<Recipient>, ReleasedProblem> {
    value
        .unwrap_or_default()
        .split([' ', ',', '\n'])
        .filter(|r| !r.trim().is_empty())
        .map(|r| {
            r.parse::<Recipient>()
                .map_err(|source| ReleasedProblem::Key { variable, source })
        })
        .collect()
}

fn parse_key32(text: &str, variable: &'static str) -> Result<Zeroizing<[u8; 32]>, ReleasedProblem> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(text.trim(), &mut *bytes).map_err(|_| ReleasedProblem::KeyNotHex(variable))?;
    Ok(bytes)
}

fn evidence_source(job: &TeeJob, init: &InitData) -> Result<Box<dyn EvidenceSource>, JobFailure> {
    Ok(match job.tee {
        Tee::Sim => {
            let path = job
                .sim_platform_key
                .as_ref()
                .ok_or(JobFailure::NoSimPlatformKey)?;
            let seed = Zeroizing::new(read_limited(path, 32)?);
            let seed: [u8; 32] = seed
                .as_slice()
                .try_into()
                .map_err(|_| JobFailure::BadSimPlatformKey(path.clone()))?;
            Box::new(
                init.simulated(SimPlatform::from_seed(seed), crate::sim_measurement())
                    .map_err(JobFailure::SimulatedTee)?,
            )
        }
        Tee::Sgx => Box::new(GramineSource::new()),
        Tee::Tdx => Box::new(TsmSource::new(TsmProvider::Tdx)),
        Tee::Snp => Box::new(TsmSource::new(TsmProvider::SevSnp)),
    })
}

fn script_environment(
    job: &TeeJob,
    plain: &Path,
    released: BTreeMap<String, String>,
    input: Option<&Path>,
    volumes: &[(String, VolumeState, PathBuf)],
    counters: &[(String, u64)],
    has_files: bool,
) -> Vec<(String, String)> {
    let path = |p: &Path| p.display().to_string();
    let mut env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("HOME".into(), path(plain)),
        ("TMPDIR".into(), path(&plain.join("tmp"))),
        ("LANG".into(), "C.UTF-8".into()),
    ];
    // Only the CAS decides the program's environment: variables from the platform could
    // change what the program does (LD_PRELOAD, BASH_ENV, …).
    env.extend(released);
    if has_files {
        env.push(("CLOISTER_FILES".into(), path(&plain.join("files"))));
    }
    for (name, _, dir) in volumes {
        env.push((name_variable("VOLUME", name), path(dir)));
    }
    for (name, value) in counters {
        env.push((name_variable("COUNTER", name), value.to_string()));
    }
    // OSCAR's contract. The event, names and times are the host's description of the job:
    // information for the program, not instructions (the input itself is authenticated).
    env.extend([
        ("TMP_INPUT_DIR".into(), path(&plain.join("input"))),
        ("TMP_OUTPUT_DIR".into(), path(&plain.join("output"))),
        ("EVENT".into(), job.event.clone()),
        ("EVENT_FILE".into(), path(&plain.join(EVENT_FILE_NAME))),
        ("EVENT_TIME".into(), job.event_time.clone()),
        ("JOB_UUID".into(), job.job_uuid.clone()),
        ("JOB_NAME".into(), job.job_name.clone()),
        ("OSCAR_SERVICE_NAME".into(), job.service.clone()),
    ]);
    if let Some(input) = input {
        env.push(("INPUT_FILE_PATH".into(), path(input)));
    }
    if let Some(input) = &job.input {
        env.push(("STORAGE_OBJECT_KEY".into(), input.key.clone()));
    }
    env
}

/// `path` (absolute, from the CAS) as a relative path with only normal components.
fn safe_relative(path: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::RootDir => {}
            Component::Normal(part) => out.push(part),
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

fn decrypt_file(
    src: &Path,
    dest: &Path,
    identity: &Identity,
    binding: &ObjectBinding,
    senders: &[Recipient],
) -> Result<cloister_crypt::Decrypted, InputProblem> {
    let input = File::open(src).map_err(InputProblem::Open)?;
    let output = create_private(dest, 0o600).map_err(InputProblem::Write)?;
    // One thread per available CPU. On any failure the plaintext file is left empty: nothing of
    // an unverified object remains.
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    cloister_crypt::decrypt_file_from(&input, &output, identity.into(), binding, senders, threads).map_err(
        |e| match e {
            CryptError::NotAnObject => InputProblem::NotEncrypted,
            other => InputProblem::Crypt(other),
        },
    )
}

fn encrypt_bytes(
    plain: &[u8],
    dest: &Path,
    recipients: &[Recipient],
    binding: &ObjectBinding,
) -> Result<(), FileCrypto> {
    // A new file: nothing that was there is written through.
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)?;
    let mut output = std::io::BufWriter::new(created);
    cloister_crypt::encrypt(
        plain,
        &mut output,
        recipients,
        binding,
        &EncryptOptions::default(),
    )?;
    Ok(output.flush()?)
}

fn create_private(path: &Path, mode: u32) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
}

fn write_private(path: &Path, content: &[u8], mode: u32) -> std::io::Result<()> {
    create_private(path, mode)?.write_all(content)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temp = path.with_extension("tmp");
    // Whatever is at the temporary name (a link the program left) is replaced, not written
    // through.
    match std::fs::remove_file(&temp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)?
        .write_all(bytes)?;
    std::fs::rename(temp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_normal_absolute_paths_are_injected() {
        assert_eq!(safe_relative("/etc/app/key"), Some(PathBuf::from("etc/app/key")));
        assert_eq!(safe_relative("/../x"), None);
        assert_eq!(safe_relative("/a/./b"), Some(PathBuf::from("a/b")));
        assert_eq!(safe_relative("/"), None);
    }

    #[test]
    fn command_words_naming_injected_files_point_at_their_staged_copies() {
        let staged = BTreeMap::from([(
            "/cloister/script.sh".to_owned(),
            PathBuf::from("/plain/files/cloister/script.sh"),
        )]);
        let command = ["/bin/sh", "/cloister/script.sh", "a", "/cloister/other"].map(String::from);
        let (program, args) = resolve_command(&command, &staged).unwrap();
        assert_eq!(program, PathBuf::from("/bin/sh"));
        assert_eq!(args, ["/plain/files/cloister/script.sh", "a", "/cloister/other"]);
        assert!(resolve_command(&[], &staged).is_err());
    }

    #[test]
    fn reserved_variables_are_taken_out_and_checked() {
        let id = Identity::generate();
        let target = r#"[{"bucket":"b","folder":"out","prefix":[],"suffix":[]}]"#;
        let mut env: BTreeMap<String, String> = [
            (reserved::INPUT_KEY.to_owned(), hex::encode(*id.secret_bytes())),
            (
                reserved::OUTPUT_RECIPIENTS.to_owned(),
                format!("{} ", id.public()),
            ),
            (reserved::VOLUMES.to_owned(), "state, model".to_owned()),
            (
                reserved::COUNTERS.to_owned(),
                "runs,, predictions, runs".to_owned(),
            ),
            (reserved::OUTPUTS.to_owned(), target.to_owned()),
            (reserved::INPUTS.to_owned(), target.replace("out", "in")),
            (reserved::APPROVER.to_owned(), "1".to_owned()),
            ("KEEP".to_owned(), "1".to_owned()),
        ]
        .into_iter()
        .collect();
        let keys = Keys::take(&mut env).unwrap();
        assert!(keys.input.is_some());
        assert_eq!(keys.recipients.len(), 1);
        assert_eq!(keys.volumes, ["state", "model"]);
        assert_eq!(keys.counters, ["runs", "predictions"]);
        assert!(keys.approver);
        assert_eq!(name_variable("COUNTER", "a-b.c"), "CLOISTER_COUNTER_A_B_C");
        assert_eq!(keys.outputs[0].folder, "out");
        assert!(keys.inputs[0].contains("b", "in/x.txt"));
        assert!(!keys.inputs[0].contains("b", "out/x.txt"));
        assert_eq!(env.keys().collect::<Vec<_>>(), ["KEEP"]);
        for (name, value) in [
            (reserved::INPUT_KEY, "zz"),
            (reserved::VOLUMES, "../x"),
            (reserved::COUNTERS, "Runs"),
            (reserved::OUTPUTS, "{not json"),
            (reserved::OUTPUT_RECIPIENTS, "cloister1nope"),
            (reserved::APPROVER, "yes"),
        ] {
            let mut bad = BTreeMap::from([(name.to_owned(), value.to_owned())]);
            assert!(Keys::take(&mut bad).is_err(), "{name}={value}");
        }
    }
}
