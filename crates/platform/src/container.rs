//! The container executor's engine side: each job's script runs in the service's image through
//! the CLI of an OCI engine (Podman; Docker's CLI where a daemon runs), one container per job.
//!
//! The runtime still prepares the job's work directory, stages the input and uploads the
//! outputs (in this process); [`Containers`] runs only the script, as a
//! [`cloister_runtime::ScriptRunner`]: the work directory bind-mounted at [`MOUNT_POINT`], no
//! network unless the service asks for it, a read-only root with a writable tmpfs `/tmp`, the
//! service's CPU and memory as the container's limits, and an environment holding only the
//! runtime contract's variables (read from a file in the work directory by the container's
//! shell, so values never appear on a command line). Containers are named `cloister-<job uuid>`
//! and labelled with the server's id, so a timed-out or cancelled job's container is removed at
//! once and a restarted server removes what its previous run left.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloister_runtime::{
    CgroupSupport, Limits, Placement, Program, ProgramOptions, PullPolicy, RunFailure, RunnerJob, ScriptRun,
    Tee,
};

/// Where a job's work directory appears inside its container.
pub const MOUNT_POINT: &str = "/cloister/job";

/// The label naming the server (its data directory's id) that owns a container.
const SERVER_LABEL: &str = "cloister.server";

/// The file in the work directory the container's shell reads the job's environment from.
const ENV_FILE: &str = ".cloister-env";

/// The container's first program: it exports the job's variables from the environment file,
/// removes the file, then sources the script in the same shell (as the host sandbox does, so
/// `$#` is 0 and `$0` is `cloister-job`).
const PRELUDE: &str = concat!(
    "set -a; . /cloister/job/.cloister-env || exit 125; set +a; ",
    "rm -f /cloister/job/.cloister-env; . /cloister/job/script.sh"
);

/// How long a pull may take before the job fails.
const PULL_TIMEOUT: Duration = Duration::from_secs(1800);

/// How long the engine's housekeeping commands (list, remove, inspect) may take.
const ENGINE_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The engine's own settings passed through from the server's environment (never to a job:
/// the engine gives its containers none of its environment).
const ENGINE_ENVIRONMENT: &[&str] = &[
    "PATH",
    "HOME",
    "TMPDIR",
    "XDG_RUNTIME_DIR",
    "XDG_CONFIG_HOME",
    "CONTAINERS_CONF",
    "CONTAINERS_STORAGE_CONF",
    "CONTAINERS_REGISTRIES_CONF",
    "REGISTRY_AUTH_FILE",
    "DOCKER_HOST",
    "DOCKER_CONFIG",
    "DOCKER_CONTEXT",
];

/// Why the container executor cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// No engine given and none on PATH.
    #[error("no container engine found: install podman (apt-get install podman) or give --container-engine")]
    NoEngine,
    /// The engine did not answer as expected.
    #[error("the container engine {} does not work: {reason}", .engine.display())]
    Broken {
        /// The engine's path.
        engine: PathBuf,
        /// What it said.
        reason: String,
    },
}

/// Which engine's CLI dialect to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// Podman (tested).
    Podman,
    /// Docker's CLI with a running daemon (same flags where compatible).
    Docker,
}

/// The container executor's engine, its settings and its image cache.
#[derive(Debug)]
pub struct Containers {
    engine: PathBuf,
    kind: EngineKind,
    /// Options before the subcommand (Podman's runtime and cgroup manager).
    global: Vec<String>,
    /// This server's id, the value of [`SERVER_LABEL`].
    server_id: String,
    /// Where `image_pull_secrets` name registry credentials (`<name>.json`).
    auth_dir: PathBuf,
    /// `--ulimit` values at this process's hard limits (raising one needs a capability the
    /// engine may not have).
    ulimits: Vec<String>,
    /// The engine's environment (see [`ENGINE_ENVIRONMENT`]).
    engine_env: Vec<(String, String)>,
    /// Images known to be present (pulled or found by this process).
    present: Mutex<HashSet<String>>,
    /// One lock per image, so that an image is pulled once however many jobs want it.
    pulls: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Instant>>>>>,
    mount_point: PathBuf,
}

impl Containers {
    /// Finds the engine (`engine`, else `podman`, else `docker` on PATH), checks that it
    /// answers, and removes the containers a previous run of this server left (those labelled
    /// with `server_id`: no job of this process runs yet).
    pub async fn start(
        engine: Option<&Path>,
        server_id: &str,
        auth_dir: &Path,
    ) -> Result<Self, ContainerError> {
        let engine = match engine {
            Some(engine) => engine.to_path_buf(),
            None => on_path("podman")
                .or_else(|| on_path("docker"))
                .ok_or(ContainerError::NoEngine)?,
        };
        let engine_env: Vec<(String, String)> = ENGINE_ENVIRONMENT
            .iter()
            .filter_map(|name| std::env::var(name).ok().map(|v| ((*name).to_owned(), v)))
            .collect();
        let broken = |engine: &Path| {
            let engine = engine.to_path_buf();
            move |reason: String| ContainerError::Broken { engine, reason }
        };
        let version = engine_output(
            &engine,
            &engine_env,
            &["--version".to_owned()],
            ENGINE_COMMAND_TIMEOUT,
        )
        .await
        .map_err(broken(&engine))?;
        let kind = if version.to_ascii_lowercase().contains("docker") {
            EngineKind::Docker
        } else {
            EngineKind::Podman
        };
        let mut global = Vec::new();
        if kind == EngineKind::Podman {
            // crun refuses hybrid cgroup layouts that runc handles, and the systemd cgroup
            // manager needs a systemd the server may not run under.
            if on_path("runc").is_some() {
                global.extend(["--runtime".to_owned(), "runc".to_owned()]);
            }
            global.extend(["--cgroup-manager".to_owned(), "cgroupfs".to_owned()]);
        }
        let containers = Self {
            engine,
            kind,
            global,
            server_id: server_id.to_owned(),
            auth_dir: auth_dir.to_path_buf(),
            ulimits: ulimits(),
            engine_env,
            present: Mutex::default(),
            pulls: Mutex::default(),
            mount_point: PathBuf::from(MOUNT_POINT),
        };
        let leftovers = containers.ours().await.map_err(broken(&containers.engine))?;
        if !leftovers.is_empty() {
            tracing::info!(
                containers = leftovers.len(),
                "removing containers the previous run of this server left"
            );
            containers.remove(&leftovers).await;
        }
        tracing::info!(engine = %containers.engine.display(), kind = ?containers.kind, "jobs run in containers");
        Ok(containers)
    }

    /// The engine's path.
    pub fn engine(&self) -> &Path {
        &self.engine
    }

    /// Names of all containers labelled as this server's.
    async fn ours(&self) -> Result<Vec<String>, String> {
        let mut args = self.global.clone();
        args.extend([
            "ps".to_owned(),
            "--all".to_owned(),
            "--filter".to_owned(),
            format!("label={SERVER_LABEL}={}", self.server_id),
            "--format".to_owned(),
            "{{.Names}}".to_owned(),
        ]);
        let listed = engine_output(&self.engine, &self.engine_env, &args, ENGINE_COMMAND_TIMEOUT).await?;
        Ok(listed.split_whitespace().map(str::to_owned).collect())
    }

    /// Kills and removes containers; failures are logged (a container already gone is fine).
    async fn remove(&self, names: &[String]) {
        let mut args = self.global.clone();
        args.extend(["rm".to_owned(), "--force".to_owned()]);
        if self.kind == EngineKind::Podman {
            args.extend(["--time".to_owned(), "0".to_owned(), "--ignore".to_owned()]);
        }
        args.extend(names.iter().cloned());
        if let Err(reason) =
            engine_output(&self.engine, &self.engine_env, &args, ENGINE_COMMAND_TIMEOUT).await
        {
            tracing::warn!(%reason, "cannot remove containers");
        }
    }

    /// Makes sure `image` is present as `policy` asks, pulling it at most once at a time.
    async fn ensure_image(&self, image: &str, policy: PullPolicy, secrets: &[String]) -> Result<(), String> {
        let asked = Instant::now();
        if policy != PullPolicy::Always && self.present.lock().is_ok_and(|p| p.contains(image)) {
            return Ok(());
        }
        let lock = match self.pulls.lock() {
            Ok(mut pulls) => pulls.entry(image.to_owned()).or_default().clone(),
            Err(_) => Arc::default(),
        };
        let mut last_pull = lock.lock().await;
        // A pull that started after this job asked is as fresh as Always wants.
        let fresh = last_pull.is_some_and(|started| started >= asked);
        if fresh || (policy != PullPolicy::Always && self.image_exists(image).await) {
            self.mark_present(image);
            return Ok(());
        }
        if policy == PullPolicy::Never {
            return Err(format!(
                "the image {image} is not present and the service's image_pull_policy is Never"
            ));
        }
        *last_pull = Some(Instant::now());
        self.pull(image, secrets).await?;
        self.mark_present(image);
        Ok(())
    }

    fn mark_present(&self, image: &str) {
        if let Ok(mut present) = self.present.lock() {
            present.insert(image.to_owned());
        }
    }

    async fn image_exists(&self, image: &str) -> bool {
        let mut args = self.global.clone();
        args.extend(["image".to_owned(), "inspect".to_owned(), "--format".to_owned()]);
        args.extend(["{{.Id}}".to_owned(), image.to_owned()]);
        engine_output(&self.engine, &self.engine_env, &args, ENGINE_COMMAND_TIMEOUT)
            .await
            .is_ok()
    }

    /// Pulls `image`, with each named credential in turn until one works (as Kubernetes tries
    /// a pod's pull secrets).
    async fn pull(&self, image: &str, secrets: &[String]) -> Result<(), String> {
        let mut attempts: Vec<Option<PathBuf>> = Vec::new();
        for name in secrets {
            let file = self.auth_dir.join(format!("{name}.json"));
            if !file.is_file() {
                return Err(format!(
                    "the image pull secret {name:?} is not in the server's registry credentials ({})",
                    file.display()
                ));
            }
            if self.kind == EngineKind::Docker {
                return Err(
                    "image_pull_secrets need Podman (Docker's CLI has no per-pull credentials)".into(),
                );
            }
            attempts.push(Some(file));
        }
        if attempts.is_empty() {
            attempts.push(None);
        }
        let mut last = String::new();
        for authfile in attempts {
            let mut args = self.global.clone();
            args.push("pull".to_owned());
            if let Some(file) = authfile {
                args.extend(["--authfile".to_owned(), file.display().to_string()]);
            }
            args.extend(["--quiet".to_owned(), image.to_owned()]);
            tracing::info!(image, "pulling an image");
            match engine_output(&self.engine, &self.engine_env, &args, PULL_TIMEOUT).await {
                Ok(_) => return Ok(()),
                Err(reason) => last = reason,
            }
        }
        Err(format!("cannot pull the image {image}: {last}"))
    }

    /// The `run` arguments for a job (everything after the global options).
    fn run_args(&self, job: &RunnerJob<'_>, name: &str) -> Result<Vec<String>, String> {
        let spec = job.spec;
        let placement = &spec.placement;
        let work = job.work_dir.to_str().filter(|w| !w.contains([':', ',']));
        let Some(work) = work else {
            return Err(format!(
                "the work directory {} cannot be mounted (its path must be UTF-8 without ':' or ',')",
                job.work_dir.display()
            ));
        };
        let mut args: Vec<String> = vec![
            "run".into(),
            "--rm".into(),
            "--name".into(),
            name.into(),
            "--label".into(),
            format!("{SERVER_LABEL}={}", self.server_id),
            "--label".into(),
            format!("cloister.job={}", spec.job_name),
            "--pull".into(),
            "never".into(),
            // The job's output is read from the attached streams; the engine need not keep it.
            "--log-driver".into(),
            "none".into(),
            "--read-only".into(),
            "--security-opt".into(),
            "no-new-privileges".into(),
            "--volume".into(),
            format!("{work}:{}", self.mount_point.display()),
            "--workdir".into(),
            self.mount_point.display().to_string(),
            "--entrypoint".into(),
            "/bin/sh".into(),
        ];
        if self.kind == EngineKind::Docker {
            // Podman mounts tmpfs on /tmp, /var/tmp and /run of a read-only container itself.
            args.extend(["--tmpfs".into(), "/tmp".into()]);
        }
        if !placement.network {
            args.extend(["--network".into(), "none".into()]);
        }
        if let Some(millis) = spec.limits.cpu_millis {
            args.extend(["--cpus".into(), format!("{}.{:03}", millis / 1000, millis % 1000)]);
        }
        if let Some(bytes) = spec.limits.memory_bytes {
            // Swap equal to memory: the job cannot swap its way past its limit.
            args.extend(["--memory".into(), bytes.to_string()]);
            args.extend(["--memory-swap".into(), bytes.to_string()]);
        }
        for ulimit in &self.ulimits {
            args.extend(["--ulimit".into(), ulimit.clone()]);
        }
        args.extend(devices(placement)?);
        for capability in &placement.capabilities {
            args.extend(["--cap-add".into(), capability.clone()]);
        }
        args.push(image_reference(&placement.image)?.to_owned());
        args.extend(["-c".into(), PRELUDE.into(), "cloister-job".into()]);
        Ok(args)
    }
}

/// The engine's device requests for a placement, or why the host cannot satisfy them: a GPU
/// through CDI (`nvidia.com/gpu=all`), SGX through its device nodes.
fn devices(placement: &Placement) -> Result<Vec<String>, String> {
    let mut args = Vec::new();
    if placement.resources.contains_key("nvidia.com/gpu") {
        if !cdi_knows("nvidia.com/gpu") {
            return Err(
                "the service needs a GPU (enable_gpu) but this host has no CDI device nvidia.com/gpu \
                 (no spec in /etc/cdi or /var/run/cdi; `nvidia-ctk cdi generate` writes one)"
                    .to_owned(),
            );
        }
        args.extend(["--device".into(), "nvidia.com/gpu=all".into()]);
    }
    if placement.tee == Some(Tee::Sgx) {
        for device in ["/dev/sgx_enclave", "/dev/sgx_provision"] {
            if !Path::new(device).exists() {
                return Err(format!(
                    "the service needs SGX (enable_sgx) but this host has no SGX device ({device})"
                ));
            }
            args.extend(["--device".into(), device.into()]);
        }
    }
    Ok(args)
}

/// Whether a CDI spec on this host declares devices of `kind`.
fn cdi_knows(kind: &str) -> bool {
    ["/etc/cdi", "/var/run/cdi"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(dir).into_iter().flatten().flatten())
        .any(|entry| {
            std::fs::read_to_string(entry.path()).is_ok_and(|spec| {
                spec.lines().any(|line| {
                    line.trim_start()
                        .strip_prefix("kind:")
                        .or_else(|| line.trim_start().strip_prefix("\"kind\":"))
                        .is_some_and(|v| v.trim().trim_matches([',', '"', '\'']).trim() == kind)
                })
            })
        })
}

/// The image as the engine is given it: an argument that could be taken for an option, or
/// that holds anything but a reference's characters, is refused.
fn image_reference(image: &str) -> Result<&str, String> {
    if image.is_empty() {
        return Err(
            "the service has no image; the container executor runs scripts in the service's image".into(),
        );
    }
    let valid = image.len() <= 512
        && image.starts_with(|c: char| c.is_ascii_alphanumeric())
        && image
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@+".contains(c));
    if valid {
        Ok(image)
    } else {
        Err(format!("the image {image:?} is not a valid image reference"))
    }
}

/// `--ulimit` values for the open-file and process limits, at or below this process's hard
/// limits: without a capability to raise limits (a sandboxed host), the engine's default
/// values fail the container's start. Podman's monitor (conmon) itself runs with at most
/// 32768 processes, and the runtime cannot give a container more than its parent has.
fn ulimits() -> Vec<String> {
    let hard = |resource| {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the limit into the struct we own.
        #[allow(unsafe_code)]
        let ok = unsafe { libc::getrlimit(resource, &raw mut limit) } == 0;
        ok.then_some(limit.rlim_max)
    };
    [
        ("nofile", libc::RLIMIT_NOFILE, 1 << 20),
        ("nproc", libc::RLIMIT_NPROC, 32768),
    ]
    .into_iter()
    .filter_map(|(name, resource, ceiling)| {
        hard(resource).map(|n| {
            let n = n.min(ceiling);
            format!("{name}={n}:{n}")
        })
    })
    .collect()
}

/// Quotes a value for a POSIX shell: `'…'`, with `'` written as `'\''`.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// Writes the job's environment where the container's shell reads it (a file created anew,
/// readable by its owner only).
fn write_env_file(work: &Path, env: &[(String, String)]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut text = String::new();
    for (name, value) in env {
        // Names were checked when the service was accepted; values cannot hold NUL.
        let valid = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid || value.contains('\0') {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("the variable {name:?} cannot be handed to a container"),
            ));
        }
        text.push_str(name);
        text.push('=');
        text.push_str(&shell_quote(value));
        text.push('\n');
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(work.join(ENV_FILE))?;
    file.write_all(text.as_bytes())
}

/// Runs an engine command to its end (bounded); its stdout, or its last error line.
async fn engine_output(
    engine: &Path,
    env: &[(String, String)],
    args: &[String],
    timeout: Duration,
) -> Result<String, String> {
    let mut command = tokio::process::Command::new(engine);
    command
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(timeout, command.output())
        .await
        .map_err(|_| format!("no answer in {} s", timeout.as_secs()))?
        .map_err(|e| format!("cannot start it: {e}"))?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    let last: String = last.chars().take(500).collect();
    Err(if last.is_empty() {
        format!("exited with {}", output.status)
    } else {
        last
    })
}

fn on_path(tool: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(tool))
            .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
    })
}

/// A failed run that never started its container.
fn not_run(failure: RunFailure, note: &str) -> ScriptRun {
    ScriptRun {
        log: vec![cloister_runtime::LogLine {
            time: time::OffsetDateTime::now_utc(),
            text: format!("cloister: {note}"),
        }],
        stdout: Vec::new(),
        exit_code: None,
        failure: Some(failure),
    }
}

#[async_trait::async_trait]
impl cloister_runtime::ScriptRunner for Containers {
    fn mount_point(&self) -> &Path {
        &self.mount_point
    }

    async fn run<'a>(
        &'a self,
        job: RunnerJob<'a>,
        cancel: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>,
        on_start: Box<dyn FnOnce() + Send + 'a>,
    ) -> ScriptRun {
        let mut cancel = cancel;
        let spec = job.spec;
        let name = format!("cloister-{}", spec.job_uuid);
        let mut args = self.global.clone();
        match self.run_args(&job, &name) {
            Ok(run) => args.extend(run),
            Err(reason) => return not_run(RunFailure::Container(reason.clone()), &reason),
        }
        let placement = &spec.placement;
        // The pull counts against the job's timeout and yields to its cancellation.
        let pulled = tokio::select! {
            pulled = self.ensure_image(&placement.image, placement.image_pull_policy, &placement.image_pull_secrets) => pulled,
            () = tokio::time::sleep(spec.limits.timeout) => Err(format!("timed out after {} s while pulling the image", spec.limits.timeout.as_secs())),
            () = &mut cancel => return not_run(RunFailure::Cancelled, "cancelled while pulling the image"),
        };
        if let Err(reason) = pulled {
            return not_run(RunFailure::Container(reason.clone()), &reason);
        }
        let env_file = {
            let (work, env) = (job.work_dir.to_path_buf(), job.env.to_vec());
            tokio::task::spawn_blocking(move || write_env_file(&work, &env)).await
        };
        match env_file {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let reason = format!("cannot hand the environment to the container: {e}");
                return not_run(RunFailure::Container(reason.clone()), &reason);
            }
            Err(e) => {
                let reason = format!("cannot hand the environment to the container: {e}");
                return not_run(RunFailure::Container(reason.clone()), &reason);
            }
        }
        let program = ProgramOptions {
            program: Program::Direct(&self.engine),
            args: &args,
            work_dir: job.work_dir,
            env: &self.engine_env,
            // The engine holds the container to the job's limits; the CLI process is not.
            limits: &Limits {
                memory_bytes: None,
                cpu_millis: None,
                timeout: spec.limits.timeout,
            },
            cgroups: &CgroupSupport::None,
            slot: "",
            log_limit: spec.log_limit,
            keep_stdout: job.keep_stdout,
        };
        let mut run = cloister_runtime::run_program(program, cancel, on_start).await;
        // Killing the CLI does not stop the container: the engine's monitor owns it.
        let interrupted = run.failure.is_some() || run.exit_code.is_none();
        if interrupted {
            self.remove(std::slice::from_ref(&name)).await;
        }
        if run.failure.is_none() {
            classify_exit(&mut run);
        }
        if matches!(run.failure, Some(RunFailure::Container(_))) {
            // The image may have been removed behind our back: look again next time.
            if let Ok(mut present) = self.present.lock() {
                present.remove(&placement.image);
            }
        }
        run
    }
}

/// Turns the engine's own exit codes into failures: 137 is the container's SIGKILL (the memory
/// limit, most likely); 125–127 with an `Error:` line are the engine's refusals to run it.
fn classify_exit(run: &mut ScriptRun) {
    match run.exit_code {
        Some(137) => {
            run.exit_code = None;
            run.failure = Some(RunFailure::Killed {
                signal: libc::SIGKILL,
            });
        }
        Some(125..=127) => {
            let error = run
                .log
                .iter()
                .rev()
                .find_map(|l| l.text.strip_prefix("Error: "))
                .map(str::to_owned);
            if let Some(error) = error {
                run.exit_code = None;
                run.failure = Some(RunFailure::Container(error));
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_quoted_for_the_shell() {
        assert_eq!(shell_quote("plain"), "'plain'");
        assert_eq!(shell_quote("it's $HOME `x`"), r"'it'\''s $HOME `x`'");
        assert_eq!(shell_quote("a\nb"), "'a\nb'");
    }

    #[test]
    fn images_that_could_be_options_are_refused() {
        assert!(image_reference("localhost/cloister-test/busybox:1").is_ok());
        assert!(image_reference("ghcr.io/grycap/imagemagick@sha256:0123abcd").is_ok());
        for bad in ["", "--privileged", "-v", "image name", "a;b", "img\n"] {
            assert!(image_reference(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_gpu_without_a_cdi_spec_is_refused() {
        let placement = Placement {
            resources: [("nvidia.com/gpu".to_owned(), "1".to_owned())].into(),
            ..Placement::default()
        };
        if !cdi_knows("nvidia.com/gpu") {
            let reason = devices(&placement).unwrap_err();
            assert!(reason.contains("enable_gpu"), "{reason}");
        }
        assert_eq!(devices(&Placement::default()).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn sgx_without_its_devices_is_refused() {
        let placement = Placement {
            tee: Some(Tee::Sgx),
            ..Placement::default()
        };
        if !Path::new("/dev/sgx_enclave").exists() {
            assert!(devices(&placement).unwrap_err().contains("/dev/sgx_enclave"));
        }
    }

    #[test]
    fn the_engine_exit_codes_become_failures() {
        let run = |code, line: &str| {
            let mut run = ScriptRun {
                log: vec![cloister_runtime::LogLine {
                    time: time::OffsetDateTime::now_utc(),
                    text: line.to_owned(),
                }],
                stdout: Vec::new(),
                exit_code: Some(code),
                failure: None,
            };
            classify_exit(&mut run);
            run
        };
        assert!(matches!(
            run(137, "x").failure,
            Some(RunFailure::Killed { signal: 9 })
        ));
        let refused = run(125, "Error: localhost/none:1: image not known");
        assert!(
            matches!(refused.failure, Some(RunFailure::Container(ref e)) if e.contains("image not known"))
        );
        // A script's own exit code stays the script's.
        let own = run(125, "plain output");
        assert_eq!((own.exit_code, own.failure.is_none()), (Some(125), true));
        assert_eq!(run(3, "Error: x").exit_code, Some(3));
    }
}
