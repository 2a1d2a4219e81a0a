//! A plain job with the runtime as its container's first program (`--container-job DIR`): the
//! contract is [`cloister_runtime::contained`]. The runtime reads and removes the job file,
//! stages the input, runs the script and uploads its outputs with [`cloister_runtime::run_job`]
//! over the network [`crate::s3::S3Io`], and reports a [`ContainedResult`].

use std::path::Path;

use cloister_runtime::contained::{
    ContainedInput, ContainedJob, ContainedResult, INPUT_FILE, JOB_FILE, MAX_JOB_FILE, WORK_DIR,
};
use cloister_runtime::{CgroupSupport, RunOptions, Status};

use crate::s3::S3Io;

/// Runs the job described in `control/job.json`; never fails, every failure is a `Failed`
/// result with its reason.
pub async fn run_container_job(control: &Path) -> ContainedResult {
    // The script runs as this process's user: a process that is not dumpable keeps its memory
    // (the credential), descriptors (the result's channel) and environment out of reach of
    // processes without CAP_SYS_PTRACE, which a job's container does not grant.
    if let Err(e) = not_dumpable() {
        return failed(format!("cannot protect the runtime from the script: {e}"));
    }
    let job: ContainedJob = match read_and_remove(&control.join(JOB_FILE), MAX_JOB_FILE).and_then(|bytes| {
        serde_json::from_slice(&bytes).map_err(|e| format!("the job file is not a job: {e}"))
    }) {
        Ok(job) => job,
        Err(reason) => return failed(reason),
    };
    let inline = match job.input {
        Some(ContainedInput::Inline) => match read_and_remove(&control.join(INPUT_FILE), u64::MAX - 1) {
            Ok(bytes) => Some(bytes),
            Err(reason) => return failed(reason),
        },
        _ => None,
    };
    let image_env = job.image_env.clone();
    let spec = job.into_spec(inline);
    let io = match spec.storage.as_ref().map(S3Io::new) {
        Some(Ok(io)) => io,
        Some(Err(e)) => return failed(e.to_string()),
        None => return failed("the job has no storage credential".to_owned()),
    };
    let work = Path::new(WORK_DIR);
    let (Some(work_root), Some(slot)) = (work.parent(), work.file_name().and_then(|n| n.to_str())) else {
        return failed("the work directory has no parent".to_owned());
    };
    let options = RunOptions {
        work_root: work_root.to_path_buf(),
        // The container's limits are the engine's.
        cgroups: CgroupSupport::None,
        slot: slot.to_owned(),
        synchronous: false,
        max_sync_output: 0,
        runner: None,
        // What the engine gave this process (`HOME`, `HOSTNAME`; with the image's variables
        // unless the server passes those in the job file), then the image's variables (its
        // PATH above all) as the server read them from the image.
        base_env: Some({
            let image_env = image_env.unwrap_or_default();
            let own: Vec<(String, String)> = std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .filter(|(name, _)| !image_env.iter().any(|(n, _)| n == name))
                .collect();
            own.into_iter().chain(image_env).collect()
        }),
    };
    let outcome = cloister_runtime::run_job(&spec, &io, &options, std::future::pending(), || {}).await;
    ContainedResult::from_outcome(outcome)
}

/// Reads a file of the control folder, of at most `limit` bytes, and removes it: the script
/// never finds the job's credential there. (An inline input is bounded by the platform's body
/// limit before it gets here.)
pub(crate) fn read_and_remove(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let unreadable = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(limit + 1).read_to_end(&mut bytes))
        .map_err(unreadable)?;
    std::fs::remove_file(path).map_err(|e| format!("cannot remove {}: {e}", path.display()))?;
    if bytes.len() as u64 > limit {
        return Err(format!("{} is larger than {limit} bytes", path.display()));
    }
    Ok(bytes)
}

#[allow(unsafe_code)] // a libc call: see its SAFETY comment
pub(crate) fn not_dumpable() -> std::io::Result<()> {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) changes a flag of this process; no memory is involved.
    let result = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn failed(reason: String) -> ContainedResult {
    ContainedResult {
        status: Status::Failed,
        exit_code: None,
        log: vec![(
            time::OffsetDateTime::now_utc().unix_timestamp_nanos(),
            format!("cloister: {reason}"),
        )],
        reason: Some(reason),
        uploaded: Vec::new(),
    }
}
