//! One confidential job, from `job.json` to `result.json`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write as _;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use cloister_attestation::{EvidenceSource, GramineSource, SimPlatform, SimSource, TsmProvider, TsmSource};
use cloister_cas::client::CasClient;
use cloister_cas::protocol::{VolumeCommit, VolumeState};
use cloister_cas_session::ServiceConfig;
use cloister_crypt::{EncryptOptions, Identity, ObjectBinding, Recipient, SymmetricKey};
use cloister_runtime::tee::{TeeJob, TeeOutput, TeeResult};
use cloister_runtime::{CgroupSupport, Limits, Status, TeeKind};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::reserved;
use crate::volumes::{self, VolumeContext};

/// Largest `job.json` accepted (it holds names and paths, not data).
const MAX_JOB_FILE: u64 = 1024 * 1024;
/// Largest script accepted.
const MAX_SCRIPT: u64 = 16 * 1024 * 1024;

/// The configuration the CAS releases to an attested runtime.
#[derive(Deserialize)]
struct Released {
    #[serde(flatten)]
    config: ServiceConfig,
    #[serde(default)]
    volumes: BTreeMap<String, VolumeState>,
    #[serde(default)]
    volume_grant: String,
}

/// A job's failure: the reason is reported; it never contains data content.
type Step<T> = Result<T, String>;

/// Runs the confidential job described in `job_dir/job.json`, writes `job_dir/result.json`
/// and returns the same result. Status lines (no content) go to `log`.
pub async fn run_job_dir(job_dir: &Path, log: &mut (dyn FnMut(&str) + Send)) -> TeeResult {
    let mut result = TeeResult {
        status: Status::Failed,
        exit_code: None,
        reason: None,
        outputs: Vec::new(),
    };
    match load_job(job_dir) {
        Ok((job, script)) => {
            let plain = job.plain_root.join(format!("job-{}", job.job_uuid));
            match make_private_dir(&plain) {
                Ok(()) => {
                    if let Err(reason) = run(&job, &script, job_dir, &plain, log, &mut result).await {
                        result.status = Status::Failed;
                        result.outputs.clear();
                        result.reason = Some(reason);
                    }
                    wipe(&plain);
                }
                Err(e) => result.reason = Some(format!("cannot create the plaintext directory: {e}")),
            }
        }
        Err(reason) => result.reason = Some(reason),
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

fn load_job(job_dir: &Path) -> Step<(TeeJob, Vec<u8>)> {
    let job_bytes = read_limited(&job_dir.join("job.json"), MAX_JOB_FILE)?;
    let job: TeeJob = serde_json::from_slice(&job_bytes).map_err(|e| format!("malformed job.json: {e}"))?;
    if uuid::Uuid::parse_str(&job.job_uuid).is_err() {
        return Err("malformed job.json: job_uuid is not a UUID".into());
    }
    let script = read_limited(&job_dir.join("script.sh"), MAX_SCRIPT)?;
    Ok((job, script))
}

fn read_limited(path: &Path, limit: u64) -> Step<Vec<u8>> {
    use std::io::Read as _;
    let file = File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > limit {
        return Err(format!("{} is larger than {limit} bytes", path.display()));
    }
    Ok(bytes)
}

async fn run(
    job: &TeeJob,
    script: &[u8],
    job_dir: &Path,
    plain: &Path,
    log: &mut (dyn FnMut(&str) + Send),
    result: &mut TeeResult,
) -> Step<()> {
    // 1. Attest: evidence over exactly the script bytes that will run.
    let measurement = crate::sim_measurement(script, &job.image);
    let source = evidence_source(job, measurement)?;
    let client = CasClient::new(&job.cas, &job.cas_pin, None).map_err(|e| format!("CAS client: {e}"))?;
    let started = Instant::now();
    let released = client
        .attest(&job.session, &job.cas_service, source.as_ref(), |_| {})
        .await
        .map_err(|e| format!("attestation refused: {e}"))?;
    let released: Released = serde_json::from_value(released)
        .map_err(|e| format!("the CAS released a malformed configuration: {e}"))?;
    log(&format!(
        "cloister: attested to the CAS as {}/{} ({} evidence, measurement {}) in {:.1} ms; configuration received",
        job.session,
        job.cas_service,
        job.tee_name(),
        hex::encode(measurement),
        started.elapsed().as_secs_f64() * 1000.0
    ));
    let mut environment = released.config.environment.clone();
    let keys = Keys::take(&mut environment)?;

    // 2. Stage: injected files, the decrypted input, the volumes — all in the private dir.
    for dir in ["input", "output", "tmp", "files", "volumes"] {
        std::fs::create_dir(plain.join(dir))
            .map_err(|e| format!("cannot prepare the plaintext directory: {e}"))?;
    }
    for file in &released.config.files {
        let relative = safe_relative(&file.path)
            .ok_or_else(|| format!("the CAS released an unsafe file path {:?}", file.path))?;
        let dest = plain.join("files").join(relative);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("cannot inject {}: {e}", file.path))?;
        }
        write_private(&dest, &file.content, file.mode)
            .map_err(|e| format!("cannot inject {}: {e}", file.path))?;
    }
    let mut input_path = None;
    if let Some(input) = &job.input {
        let identity = keys
            .input
            .as_ref()
            .ok_or("the session releases no input key (CLOISTER_INPUT_KEY) but the job has an input")?;
        let name = input
            .key
            .rsplit('/')
            .next()
            .filter(|n| !n.is_empty() && *n != "." && *n != "..")
            .unwrap_or("input");
        let dest = plain.join("input").join(name);
        let started = Instant::now();
        let bytes = decrypt_file(
            &input.file,
            &dest,
            identity,
            &ObjectBinding::new(&input.bucket, &input.key),
        )
        .map_err(|e| format!("input {}/{} rejected: {e}", input.bucket, input.key))?;
        log(&format!(
            "cloister: input {}/{} authenticated and decrypted ({bytes} bytes, {:.1} ms)",
            input.bucket,
            input.key,
            started.elapsed().as_secs_f64() * 1000.0
        ));
        input_path = Some(dest);
    }
    let volume_ctx = match &keys.volume {
        Some(key) => Some(VolumeContext {
            session: &job.session,
            service: &job.cas_service,
            key,
            store: &job.volumes_dir,
        }),
        None if keys.volumes.is_empty() => None,
        None => return Err("the session declares volumes but releases no volume key".into()),
    };
    let mut volume_dirs = Vec::new();
    for name in &keys.volumes {
        let state = released.volumes.get(name).cloned().unwrap_or_default();
        let dir = plain.join("volumes").join(name);
        std::fs::create_dir(&dir).map_err(|e| format!("cannot prepare volume {name:?}: {e}"))?;
        if let Some(ctx) = &volume_ctx {
            volumes::restore(ctx, name, &state, &dir)?;
        }
        log(&format!("cloister: volume {name:?} at version {}", state.version));
        volume_dirs.push((name.clone(), state, dir));
    }

    // 3. Run the script, unmodified, with the released environment and arguments.
    let script_path = plain.join("script.sh");
    write_private(&script_path, script, 0o600).map_err(|e| format!("cannot stage the script: {e}"))?;
    let env = script_environment(
        job,
        plain,
        environment,
        input_path.as_deref(),
        &volume_dirs,
        !released.config.files.is_empty(),
    );
    // The script runs under the job's limits, in the cgroup slot the executor prepared (or
    // under RLIMIT_AS without one); the runtime's own staging and crypto are not charged to
    // them, just as a plain job's staging and uploads are not.
    let limits = Limits {
        memory_bytes: job.memory_bytes,
        cpu_millis: None,
        timeout: Duration::from_secs(job.timeout_secs.max(1)),
    };
    let cgroups = if job.cgroup_procs.is_empty() {
        CgroupSupport::None
    } else {
        CgroupSupport::Prepared(job.cgroup_procs.clone())
    };
    // Arguments come from the session, like the environment: the platform cannot change them.
    let run = cloister_runtime::run_script(
        &script_path,
        &released.config.command,
        plain,
        &env,
        &limits,
        &cgroups,
        "",
        usize::MAX,
        false,
        std::future::pending(),
        || {},
    )
    .await;
    let withheld: usize = run.log.iter().map(|l| l.text.len() + 1).sum();
    log(&format!(
        "cloister: script finished (exit code {}); {withheld} bytes of its output withheld (confidential service)",
        run.exit_code.map_or_else(|| "none".to_owned(), |c| c.to_string())
    ));
    drop(run.log);
    result.exit_code = run.exit_code;
    if let Some(failure) = run.failure {
        return Err(failure);
    }
    if run.exit_code != Some(0) {
        let code = run.exit_code.map_or_else(|| "none".to_owned(), |c| c.to_string());
        return Err(format!("script exited with code {code}"));
    }

    // 4. Seal: every output for every target, then the volumes.
    let files = cloister_runtime::collect_outputs(&plain.join("output"))
        .await
        .map_err(|e| format!("cannot read the output directory: {e}"))?;
    if !files.is_empty() && !job.outputs.is_empty() && keys.recipients.is_empty() {
        return Err(
            "the session names no output recipient (CLOISTER_OUTPUT_RECIPIENTS): outputs cannot leave".into(),
        );
    }
    let sealed_dir = job_dir.join("sealed");
    std::fs::create_dir_all(&sealed_dir)
        .map_err(|e| format!("cannot create {}: {e}", sealed_dir.display()))?;
    let started = Instant::now();
    for (relative, path) in &files {
        let name = relative.rsplit('/').next().unwrap_or(relative);
        for target in job.outputs.iter().filter(|t| t.accepts(name)) {
            let key = target.key_for(relative);
            let file = format!("{}", result.outputs.len());
            encrypt_file(
                path,
                &sealed_dir.join(&file),
                &keys.recipients,
                &ObjectBinding::new(&target.bucket, &key),
            )
            .map_err(|e| format!("cannot encrypt output {relative}: {e}"))?;
            result.outputs.push(TeeOutput {
                bucket: target.bucket.clone(),
                key,
                file,
            });
        }
    }
    if !result.outputs.is_empty() {
        log(&format!(
            "cloister: {} output object(s) encrypted to {} recipient(s) in {:.1} ms",
            result.outputs.len(),
            keys.recipients.len(),
            started.elapsed().as_secs_f64() * 1000.0
        ));
    }
    if let Some(ctx) = &volume_ctx {
        for (name, state, dir) in &volume_dirs {
            let (tag, stored) = volumes::seal(ctx, name, state.version, dir)?;
            let commit = VolumeCommit {
                session: job.session.clone(),
                service: job.cas_service.clone(),
                volume: name.clone(),
                grant: released.volume_grant.clone(),
                from_version: state.version,
                tag,
            };
            match client.commit_volume(&commit).await {
                Ok(now) => {
                    log(&format!(
                        "cloister: volume {name:?} committed as version {}",
                        now.version
                    ));
                    volumes::prune(&job.volumes_dir, name, state.version);
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&stored);
                    return Err(format!("volume {name:?} not committed: {e}"));
                }
            }
        }
    }
    result.status = Status::Succeeded;
    Ok(())
}

/// Keys and settings the runtime takes out of the released environment.
struct Keys {
    input: Option<Identity>,
    recipients: Vec<Recipient>,
    volume: Option<SymmetricKey>,
    volumes: Vec<String>,
}

impl Keys {
    fn take(environment: &mut BTreeMap<String, String>) -> Step<Self> {
        let input = environment
            .remove(reserved::INPUT_KEY)
            .map(|hex_key| parse_key32(&hex_key, reserved::INPUT_KEY))
            .transpose()?
            .map(|bytes| {
                Identity::from_secret_bytes(&bytes).map_err(|e| format!("{}: {e}", reserved::INPUT_KEY))
            })
            .transpose()?;
        let recipients = environment
            .remove(reserved::OUTPUT_RECIPIENTS)
            .unwrap_or_default()
            .split([' ', ',', '\n'])
            .filter(|r| !r.trim().is_empty())
            .map(|r| {
                r.parse::<Recipient>()
                    .map_err(|e| format!("{}: {e}", reserved::OUTPUT_RECIPIENTS))
            })
            .collect::<Step<Vec<_>>>()?;
        let volume = environment
            .remove(reserved::VOLUME_KEY)
            .map(|hex_key| parse_key32(&hex_key, reserved::VOLUME_KEY))
            .transpose()?
            .map(|bytes| {
                SymmetricKey::new("volume", *bytes).map_err(|e| format!("{}: {e}", reserved::VOLUME_KEY))
            })
            .transpose()?;
        let mut volumes = Vec::new();
        for name in environment
            .remove(reserved::VOLUMES)
            .unwrap_or_default()
            .split(',')
        {
            let name = name.trim();
            if name.is_empty() {
                continue;
            }
            if !cloister_cas::volumes::valid_volume_name(name) {
                return Err(format!("{}: invalid volume name {name:?}", reserved::VOLUMES));
            }
            volumes.push(name.to_owned());
        }
        Ok(Keys {
            input,
            recipients,
            volume,
            volumes,
        })
    }
}

fn parse_key32(text: &str, what: &str) -> Step<Zeroizing<[u8; 32]>> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(text.trim(), &mut *bytes).map_err(|_| format!("{what} must be 64 hex digits"))?;
    Ok(bytes)
}

fn evidence_source(job: &TeeJob, measurement: [u8; 32]) -> Step<Box<dyn EvidenceSource>> {
    Ok(match job.tee {
        TeeKind::Sim => {
            let path = job
                .sim_platform_key
                .as_ref()
                .ok_or("the job names no simulation platform key")?;
            let seed = Zeroizing::new(read_limited(path, 32)?);
            let seed: [u8; 32] = seed
                .as_slice()
                .try_into()
                .map_err(|_| format!("{} is not a 32-byte platform key", path.display()))?;
            Box::new(SimSource::new(SimPlatform::from_seed(seed), measurement))
        }
        TeeKind::Sgx => Box::new(GramineSource::new()),
        TeeKind::Tdx => Box::new(TsmSource::new(TsmProvider::Tdx)),
        TeeKind::Snp => Box::new(TsmSource::new(TsmProvider::SevSnp)),
    })
}

trait TeeName {
    fn tee_name(&self) -> &'static str;
}

impl TeeName for TeeJob {
    fn tee_name(&self) -> &'static str {
        match self.tee {
            TeeKind::Sgx => "sgx",
            TeeKind::Tdx => "tdx",
            TeeKind::Snp => "snp",
            TeeKind::Sim => "simulation",
        }
    }
}

fn script_environment(
    job: &TeeJob,
    plain: &Path,
    released: BTreeMap<String, String>,
    input: Option<&Path>,
    volumes: &[(String, VolumeState, PathBuf)],
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
    // Only the CAS decides the script's environment: variables from the platform could
    // change what the measured script does (LD_PRELOAD, BASH_ENV, …).
    env.extend(released);
    if has_files {
        env.push(("CLOISTER_FILES".into(), path(&plain.join("files"))));
    }
    for (name, _, dir) in volumes {
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
        env.push((format!("CLOISTER_VOLUME_{var}"), path(dir)));
    }
    env.extend([
        ("TMP_INPUT_DIR".into(), path(&plain.join("input"))),
        ("TMP_OUTPUT_DIR".into(), path(&plain.join("output"))),
        ("EVENT".into(), job.event.clone()),
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
) -> Result<u64, String> {
    let input = File::open(src).map_err(|e| format!("cannot open the ciphertext: {e}"))?;
    let output = create_private(dest, 0o600).map_err(|e| format!("cannot write the plaintext: {e}"))?;
    // One thread per available CPU. On any failure the plaintext file is left empty: nothing of
    // an unverified object remains.
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    cloister_crypt::decrypt_file(&input, &output, identity.into(), binding, threads)
        .map_err(|e| e.to_string())
}

fn encrypt_file(
    src: &Path,
    dest: &Path,
    recipients: &[Recipient],
    binding: &ObjectBinding,
) -> Result<u64, String> {
    let input = File::open(src).map_err(|e| e.to_string())?;
    let output = File::create(dest).map_err(|e| e.to_string())?;
    let options = EncryptOptions { chunk_size: 1 << 20 };
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    cloister_crypt::encrypt_file(&input, &output, recipients, binding, &options, threads)
        .map_err(|e| e.to_string())
}

fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    if dir.exists() {
        wipe(dir);
    }
    std::fs::DirBuilder::new().mode(0o700).create(dir)
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
    std::fs::write(&temp, bytes)?;
    std::fs::rename(temp, path)
}

/// Removes the plaintext tree. On a disk-backed file system every file is overwritten with
/// zeros first, so its blocks do not keep plaintext; on tmpfs the freed pages are zeroed by
/// the kernel before anyone else gets them, and overwriting would only cost time.
fn wipe(dir: &Path) {
    if !on_tmpfs(dir) {
        overwrite_and_remove(dir);
    } else {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn on_tmpfs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: statfs(2) writes into the buffer we own; it is read only when the call succeeds.
    let ok = unsafe { libc::statfs(c_path.as_ptr(), stat.as_mut_ptr()) } == 0;
    // SAFETY: initialised by the successful call above.
    // `f_type` is i64 on x86-64 but narrower elsewhere.
    #[allow(clippy::useless_conversion)]
    let kind = ok.then(|| i64::from(unsafe { stat.assume_init() }.f_type));
    kind == Some(TMPFS_MAGIC)
}

fn overwrite_and_remove(dir: &Path) {
    fn zero_files(dir: &Path) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() {
                zero_files(&entry.path());
            } else if kind.is_file() {
                zero_file(&entry.path());
            }
        }
    }
    fn zero_file(path: &Path) {
        use std::io::{Seek as _, SeekFrom};
        let Ok(mut file) = std::fs::OpenOptions::new().write(true).open(path) else {
            return;
        };
        let Ok(len) = file.metadata().map(|m| m.len()) else {
            return;
        };
        let zeros = vec![0u8; (len.min(1 << 20)) as usize];
        let _ = file.seek(SeekFrom::Start(0));
        let mut left = len;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            if file.write_all(&zeros[..n]).is_err() {
                break;
            }
            left -= n as u64;
        }
    }
    zero_files(dir);
    let _ = std::fs::remove_dir_all(dir);
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
    fn reserved_variables_are_taken_out_and_checked() {
        let id = Identity::generate();
        let mut env: BTreeMap<String, String> = [
            (reserved::INPUT_KEY.to_owned(), hex::encode(*id.secret_bytes())),
            (
                reserved::OUTPUT_RECIPIENTS.to_owned(),
                format!("{} ", id.public()),
            ),
            (reserved::VOLUMES.to_owned(), "state, model".to_owned()),
            ("KEEP".to_owned(), "1".to_owned()),
        ]
        .into_iter()
        .collect();
        let keys = Keys::take(&mut env).unwrap();
        assert!(keys.input.is_some());
        assert_eq!(keys.recipients.len(), 1);
        assert_eq!(keys.volumes, ["state", "model"]);
        assert_eq!(env.keys().collect::<Vec<_>>(), ["KEEP"]);
        let mut bad = BTreeMap::from([(reserved::INPUT_KEY.to_owned(), "zz".to_owned())]);
        assert!(Keys::take(&mut bad).is_err());
        let mut bad = BTreeMap::from([(reserved::VOLUMES.to_owned(), "../x".to_owned())]);
        assert!(Keys::take(&mut bad).is_err());
    }

    #[test]
    fn wipe_removes_everything() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("p");
        make_private_dir(&dir).unwrap();
        std::fs::create_dir(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/f"), b"secret").unwrap();
        wipe(&dir);
        assert!(!dir.exists());
    }

    #[test]
    fn tmpfs_is_recognised() {
        if Path::new("/dev/shm").is_dir() {
            assert!(on_tmpfs(Path::new("/dev/shm")));
        }
        assert!(!on_tmpfs(Path::new("/proc/self")));
    }
}
