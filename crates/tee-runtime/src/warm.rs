//! A warm container's runtime (`--warm DIR`): it connects to the platform's control socket in
//! DIR and runs synchronous invocations of its service one at a time, for as long as the
//! platform keeps the connection open (contract: [`cloister_runtime::contained`]'s
//! [`WarmInvocation`]). The platform prepares each invocation's work directory (mounted at
//! [`WORK_DIR`]) and empties it afterwards; between invocations the runtime kills every process
//! an invocation left and removes what it created in the container's writable scratch folders,
//! so an invocation finds none of the previous one's processes or files.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cloister_runtime::contained::{
    CONTROL_SOCKET, MAX_CONTROL_FRAME, WORK_DIR, WarmInvocation, WarmReport, read_frame, write_frame,
};
use cloister_runtime::{CgroupSupport, Limits, Program, ProgramOptions};

/// The writable folders of a read-only container (the engine's tmpfs mounts): what an
/// invocation creates there is removed after it.
const SCRATCH: &[&str] = &["/tmp", "/var/tmp", "/run", "/dev/shm", "/dev/mqueue"];

/// How long the processes an invocation left may take to die once killed.
const KILL_BOUND: Duration = Duration::from_secs(5);

/// Serves invocations until the platform closes the connection (`Ok`) or the connection fails.
pub async fn run_warm(control: &Path) -> Result<(), String> {
    // As for a contained job: the script cannot read this process's memory or descriptors
    // (the connection to the platform).
    crate::contained::not_dumpable()
        .map_err(|e| format!("cannot protect the runtime from the script: {e}"))?;
    if !crate::init::under_init() {
        return Err("a warm container's runtime must be the container's first program".to_owned());
    }
    let scratch = snapshot();
    let mut stream = tokio::net::UnixStream::connect(control.join(CONTROL_SOCKET))
        .await
        .map_err(|e| format!("cannot reach the platform's control socket: {e}"))?;
    // What the engine gave this process (`HOME`, `HOSTNAME`): the image's own variables come
    // with each invocation (the platform starts this runtime without them).
    let base_env: Vec<(String, String)> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let work = Path::new(WORK_DIR);
    let script = work.join("script.sh");
    loop {
        let Some(frame) = read_frame(&mut stream, MAX_CONTROL_FRAME)
            .await
            .map_err(|e| format!("the control connection failed: {e}"))?
        else {
            return Ok(());
        };
        let invocation: WarmInvocation =
            serde_json::from_slice(&frame).map_err(|e| format!("not an invocation: {e}"))?;
        let mut env = base_env.clone();
        env.extend(invocation.env);
        let limits = Limits {
            memory_bytes: None,
            cpu_millis: None,
            timeout: Duration::from_millis(invocation.timeout_ms.max(1)),
        };
        let options = ProgramOptions {
            program: Program::Script(&script),
            args: &[],
            work_dir: work,
            env: &env,
            limits: &limits,
            cgroups: &CgroupSupport::None,
            slot: "",
            log_limit: invocation.log_limit,
            keep_stdout: invocation.keep_stdout,
        };
        let mut run = cloister_runtime::run_program(options, std::future::pending(), || {}).await;
        // Nothing of the invocation may still write to the work directory once the platform
        // hears it ended: it empties the folder for the next one.
        let killed = tokio::task::spawn_blocking(|| crate::init::kill_all_but_init(KILL_BOUND))
            .await
            .map_err(|e| e.to_string())
            .and_then(|killed| killed);
        let mut report = WarmReport::from_run(&mut run);
        if let Err(reason) = &killed {
            report.failure = Some(cloister_runtime::contained::WarmFailure::Other(format!(
                "cannot end what the script left: {reason}"
            )));
        }
        let json = serde_json::to_vec(&report).map_err(|e| e.to_string())?;
        let answered = match write_frame(&mut stream, &json).await {
            Ok(()) => write_frame(&mut stream, &run.stdout).await,
            Err(e) => Err(e),
        };
        answered.map_err(|e| format!("cannot answer the platform: {e}"))?;
        // The platform retires a container whose leftovers survived.
        killed?;
        let scratch = scratch.clone();
        tokio::task::spawn_blocking(move || clean(&scratch))
            .await
            .map_err(|e| e.to_string())?;
    }
}

/// Every path under the scratch folders as the container started, so that what invocations
/// add can be told apart.
fn snapshot() -> HashSet<PathBuf> {
    let mut seen = HashSet::new();
    for root in SCRATCH {
        walk(Path::new(root), &mut |path| {
            seen.insert(path.to_path_buf());
            true
        });
    }
    seen
}

/// Removes from the scratch folders everything that was not there when the container started.
fn clean(kept: &HashSet<PathBuf>) {
    for root in SCRATCH {
        walk(Path::new(root), &mut |path| {
            if kept.contains(path) {
                return true;
            }
            let removed = match std::fs::symlink_metadata(path) {
                Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
                Ok(_) => std::fs::remove_file(path),
                Err(e) => Err(e),
            };
            if let Err(e) = removed
                && e.kind() != std::io::ErrorKind::NotFound
            {
                eprintln!("cloister: cannot remove {}: {e}", path.display());
            }
            false
        });
    }
}

/// Visits the entries under `dir` (never following links); `visit` answers whether to descend
/// into a folder.
fn walk(dir: &Path, visit: &mut dyn FnMut(&Path) -> bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if visit(&path) && is_dir {
            walk(&path, visit);
        }
    }
}
