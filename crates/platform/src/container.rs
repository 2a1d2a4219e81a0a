//! The container executor's engine side: each job runs in the service's image through the CLI
//! of an OCI engine (Podman; Docker's CLI where a daemon runs), one container per job.
//!
//! An asynchronous job's container starts `cloister-runtime --container-job` (mounted
//! read-only) as its first program ([`Containers::run_contained`], contract
//! [`cloister_runtime::contained`]): the runtime stages the input, runs the script and uploads
//! the outputs itself, over S3 with the job's scoped credential, through a Unix socket of its
//! own that this process serves and mounts into the container — so the container keeps no
//! network. It reports the outcome as JSON on its standard output. A synchronous invocation
//! (`/run`, input and outputs in the request and answer) keeps the runtime in this process and
//! runs only the script in the container ([`cloister_runtime::ScriptRunner`]), with its
//! environment read from a file by the container's shell.
//!
//! Either way: the work directory bind-mounted at [`MOUNT_POINT`], no network unless the
//! service asks for it, a read-only root with a writable tmpfs `/tmp`, the service's CPU and
//! memory as the container's limits, and an environment holding only the runtime contract's
//! variables (never on a command line). Containers are named `cloister-<job uuid>` and
//! labelled with the server's id, so a timed-out or cancelled job's container is removed at
//! once and a restarted server removes what its previous run left.

mod warm;

pub use warm::{Lease, Warm, WarmPools};

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloister_runtime::contained::{
    CONTROL_DIR, ContainedJob, ContainedResult, INPUT_FILE, JOB_FILE, RUNTIME_DIR, SOCKET_DIR, SOCKET_FILE,
    WORK_DIR,
};
use cloister_runtime::{
    CgroupSupport, JobOutcome, JobSpec, Limits, LogLine, Placement, Program, ProgramOptions, PullPolicy,
    RunFailure, RunnerJob, ScriptRun, Status, Tee,
};

/// Where a job's work directory appears inside its container.
pub const MOUNT_POINT: &str = WORK_DIR;

/// How long a contained job may run beyond its script's timeout: the runtime stages the input
/// before the script's clock starts and uploads the outputs after it stops. Within the job
/// credential's own grace (`workers::CREDENTIAL_GRACE`, 300 s), so the container is gone before
/// its credential would expire.
const CONTAINED_GRACE: Duration = Duration::from_secs(240);

/// Most bytes of the engine's own messages kept when a contained job reports no result.
const ENGINE_LOG_LIMIT: usize = 64 * 1024;

/// The connection limits of a job's own S3 socket: one runtime's requests, one at a time.
const JOB_SOCKET_LIMITS: cloister_storage::listen::ConnectionLimits =
    cloister_storage::listen::ConnectionLimits {
        max_connections: 16,
        idle_timeout: Duration::from_secs(90),
        header_read_timeout: Duration::from_secs(30),
    };

/// How a host folder is mounted into a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mount {
    /// Read-only, as it is (the runtime's files).
    ReadOnly,
    /// The job's own folder, handed to the container's user (Podman's `U`: an image whose
    /// `USER` is not root could not use a folder of the server's user, mode 0700).
    Owned,
    /// As [`Mount::Owned`], read-only inside.
    OwnedReadOnly,
}

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
/// Most processes (and threads) of one job's container.
const PIDS_LIMIT: u32 = 4096;

/// The host ids a rootful Podman maps a container's ids 0–65535 to: a block of [`ID_BLOCK`]
/// ids picked at random per container among [`ID_BLOCKS`], from [`FIRST_MAPPED_ID`] up —
/// above the ids of host accounts (and of systemd's dynamic users), below 2³¹.
const FIRST_MAPPED_ID: u32 = 0x1000_0000;
const ID_BLOCK: u32 = 0x1_0000;
const ID_BLOCKS: u32 = 0x6000;

/// The file in the private folder mounted over `/etc/ld.so.preload` (empty).
const EMPTY_FILE: &str = "empty";

/// Variables glibc's loader (or a static glibc) acts on before `main`.
const LOADER_VARIABLES: &[&str] = &["LD_PRELOAD", "LD_AUDIT", "LD_LIBRARY_PATH", "GLIBC_TUNABLES"];

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
    /// `cloister-runtime` cannot be mounted into containers.
    #[error("cannot run {} in containers: {reason}", .runtime.display())]
    Runtime {
        /// The runtime binary.
        runtime: PathBuf,
        /// Why.
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

/// An image's variables, in order.
type ImageEnv = Vec<(String, String)>;

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
    /// Whether each container gets user and group ids of its own on the host (a rootful
    /// Podman: see [`Containers::run_args`]).
    map_ids: bool,
    /// The engine's environment (see [`ENGINE_ENVIRONMENT`]).
    engine_env: Vec<(String, String)>,
    /// Images known to be present (pulled or found by this process).
    present: Mutex<HashSet<String>>,
    /// Each present image's own variables, read once (see [`Containers::image_env`]).
    image_envs: Mutex<HashMap<String, Arc<ImageEnv>>>,
    /// A private folder holding the empty file mounted over an image's `/etc/ld.so.preload`
    /// when the runtime starts through the host's loader.
    private: tempfile::TempDir,
    /// One lock per image, so that an image is pulled once however many jobs want it.
    pulls: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Instant>>>>>,
    mount_point: PathBuf,
    /// `cloister-runtime` as containers start it.
    runtime: RuntimeFiles,
    /// The store's S3 service, served on each contained job's own socket.
    s3: cloister_storage::S3Http,
}

/// `cloister-runtime` and what it needs to start in any image: its binary and, when it is
/// linked dynamically (as cargo links it for glibc), this host's loader and the libraries the
/// loader names, each mounted read-only under [`RUNTIME_DIR`]. The container then starts it
/// through that loader, so an image without a C library (or with another one) runs it too.
#[derive(Debug, Clone)]
struct RuntimeFiles {
    /// (host file, path in the container).
    mounts: Vec<(String, String)>,
    /// The container's entrypoint.
    entrypoint: String,
    /// The entrypoint's arguments up to the runtime's own.
    prefix: Vec<String>,
}

impl RuntimeFiles {
    /// Whether the runtime starts through the host's loader (it is linked dynamically).
    fn through_loader(&self) -> bool {
        !self.prefix.is_empty()
    }

    async fn locate(binary: &Path) -> Result<Self, String> {
        let binary = binary
            .canonicalize()
            .map_err(|e| format!("cannot find it: {e}"))?;
        let inside = format!("{RUNTIME_DIR}/cloister-runtime");
        let mut files = Self {
            mounts: vec![(mountable(&binary)?, inside.clone())],
            entrypoint: inside.clone(),
            prefix: Vec::new(),
        };
        // The program headers follow the ELF header in any file a linker writes.
        let elf = {
            use tokio::io::AsyncReadExt;
            let mut head = Vec::new();
            tokio::fs::File::open(&binary)
                .await
                .map_err(|e| format!("cannot read it: {e}"))?
                .take(64 * 1024)
                .read_to_end(&mut head)
                .await
                .map_err(|e| format!("cannot read it: {e}"))?;
            head
        };
        if !has_interpreter(&elf)? {
            return Ok(files);
        }
        // The loader resolves the libraries as it would for this host's own start of it.
        let listed = engine_output(
            Path::new("ldd"),
            &[("PATH".to_owned(), "/usr/bin:/bin".to_owned())],
            &[binary.display().to_string()],
            ENGINE_COMMAND_TIMEOUT,
        )
        .await
        .map_err(|e| format!("it is linked dynamically and ldd cannot list its libraries: {e}"))?;
        let lib_dir = format!("{RUNTIME_DIR}/lib");
        let mut loader = None;
        for line in listed.lines() {
            let line = line.trim();
            let (name, path) = match line.split_once("=>") {
                Some((name, rest)) => (name.trim(), rest.trim()),
                None => ("", line),
            };
            let Some(path) = path.split_whitespace().next().filter(|p| p.starts_with('/')) else {
                continue;
            };
            let host = Path::new(path)
                .canonicalize()
                .map_err(|e| format!("cannot find its library {path}: {e}"))?;
            let file_name = if name.is_empty() {
                Path::new(path)
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("ld.so")
                    .to_owned()
            } else {
                name.to_owned()
            };
            let target = format!("{lib_dir}/{file_name}");
            if name.is_empty() {
                loader = Some(target.clone());
            }
            files.mounts.push((mountable(&host)?, target));
        }
        let loader = loader.ok_or("ldd names no loader for it")?;
        files.entrypoint = loader;
        // The image's own library cache and LD_LIBRARY_PATH are not consulted.
        files.prefix = vec!["--library-path".into(), lib_dir, "--inhibit-cache".into(), inside];
        Ok(files)
    }
}

/// A host path as `--volume` takes it (no `:` or `,`, which separate its fields).
fn mountable(path: &Path) -> Result<String, String> {
    path.to_str()
        .filter(|p| !p.contains([':', ',']))
        .map(str::to_owned)
        .ok_or_else(|| {
            format!(
                "{} cannot be mounted (its path must be UTF-8 without ':' or ',')",
                path.display()
            )
        })
}

/// Whether an ELF file names a program interpreter (is linked dynamically).
fn has_interpreter(elf: &[u8]) -> Result<bool, String> {
    const PT_INTERP: u32 = 3;
    let not_elf = || "it is not a 64-bit little-endian ELF executable".to_owned();
    if elf.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return Err(not_elf());
    }
    // Offsets come from the file: every sum is checked.
    let bytes_at = |at: usize, len: usize| elf.get(at..at.checked_add(len)?);
    let u16_at = |at| {
        bytes_at(at, 2)
            .and_then(|b| b.try_into().ok())
            .map(u16::from_le_bytes)
    };
    let u32_at = |at| {
        bytes_at(at, 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let u64_at = |at| {
        bytes_at(at, 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return Err(not_elf());
    };
    let phoff = usize::try_from(phoff).map_err(|_| not_elf())?;
    for index in 0..usize::from(phnum) {
        let at = index
            .checked_mul(usize::from(phentsize))
            .and_then(|offset| offset.checked_add(phoff))
            .ok_or_else(not_elf)?;
        if u32_at(at).ok_or_else(not_elf)? == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

impl Containers {
    /// Finds the engine (`engine`, else `podman`, else `docker` on PATH), checks that it
    /// answers, and removes the containers a previous run of this server left (those labelled
    /// with `server_id`: no job of this process runs yet).
    ///
    /// `runtime` is the `cloister-runtime` binary asynchronous jobs' containers start; `s3` the
    /// store's S3 service, which each of them reaches through a socket of its own.
    pub async fn start(
        engine: Option<&Path>,
        server_id: &str,
        auth_dir: &Path,
        runtime: &Path,
        s3: cloister_storage::S3Http,
    ) -> Result<Self, ContainerError> {
        let runtime_files =
            RuntimeFiles::locate(runtime)
                .await
                .map_err(|reason| ContainerError::Runtime {
                    runtime: runtime.to_path_buf(),
                    reason,
                })?;
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
        let private = tempfile::Builder::new()
            .prefix("cloister-containers-")
            .tempdir()
            .and_then(|dir| {
                std::fs::write(dir.path().join(EMPTY_FILE), b"")?;
                Ok(dir)
            })
            .map_err(|e| broken(&engine)(format!("cannot create the runtime's private folder: {e}")))?;
        let containers = Self {
            engine,
            kind,
            global,
            server_id: server_id.to_owned(),
            auth_dir: auth_dir.to_path_buf(),
            ulimits: ulimits(),
            // A rootless engine's containers already run as this unprivileged user; Docker maps
            // ids for the whole daemon (`userns-remap`), not per container.
            // SAFETY: geteuid reads this process's effective user id; it cannot fail.
            #[allow(unsafe_code)]
            map_ids: kind == EngineKind::Podman && unsafe { libc::geteuid() } == 0,
            engine_env,
            present: Mutex::default(),
            image_envs: Mutex::default(),
            private,
            pulls: Mutex::default(),
            mount_point: PathBuf::from(MOUNT_POINT),
            runtime: runtime_files,
            s3,
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
        self.inspect_image(image, "{{.Id}}").await.is_ok()
    }

    /// `image inspect --format FORMAT IMAGE`'s output.
    async fn inspect_image(&self, image: &str, format: &str) -> Result<String, String> {
        let mut args = self.global.clone();
        args.extend(["image".to_owned(), "inspect".to_owned(), "--format".to_owned()]);
        args.extend([format.to_owned(), image.to_owned()]);
        engine_output(&self.engine, &self.engine_env, &args, ENGINE_COMMAND_TIMEOUT).await
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

    /// The `run` arguments for a job (everything after the global options): `mounts` as
    /// (host path, container path, how), the first being the work directory.
    fn run_args(
        &self,
        spec: &JobSpec,
        name: &str,
        mounts: &[(&str, &str, Mount)],
        entrypoint: &str,
        command: &[String],
        without_image_env: bool,
    ) -> Result<Vec<String>, String> {
        let placement = &spec.placement;
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
        ];
        for (host, inside, how) in mounts {
            // Docker's CLI has no `U`: there an image's user must be root (or own the folder).
            let owned = self.kind == EngineKind::Podman;
            let suffix = match how {
                Mount::ReadOnly => ":ro",
                Mount::Owned if owned => ":U",
                Mount::Owned => "",
                Mount::OwnedReadOnly if owned => ":ro,U",
                Mount::OwnedReadOnly => ":ro",
            };
            args.extend(["--volume".into(), format!("{host}:{inside}{suffix}")]);
        }
        args.extend([
            "--workdir".into(),
            self.mount_point.display().to_string(),
            "--entrypoint".into(),
            entrypoint.into(),
        ]);
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
        // `nproc` does not hold a root user; the cgroup's pid limit holds every user.
        args.extend(["--pids-limit".into(), PIDS_LIMIT.to_string()]);
        if self.map_ids {
            // Under a rootful engine the container's root would be the host's root on every
            // mounted folder (and after any escape from the container). Mapped, it is an
            // unprivileged host id of its own, another for each container, so one job's
            // processes own nothing of another's; `U` mounts are handed to the mapped ids.
            let first = FIRST_MAPPED_ID + ID_BLOCK * rand::random_range(0..ID_BLOCKS);
            let map = format!("0:{first}:{ID_BLOCK}");
            args.extend(["--uidmap".into(), map.clone(), "--gidmap".into(), map]);
        }
        if without_image_env {
            match self.kind {
                EngineKind::Podman => args.push("--unsetenv-all".into()),
                // Docker cannot drop an image's variables: those the loader reads are emptied.
                EngineKind::Docker => {
                    for name in LOADER_VARIABLES {
                        args.extend(["--env".into(), format!("{name}=")]);
                    }
                }
            }
        }
        args.extend(devices(placement)?);
        for capability in &placement.capabilities {
            args.extend(["--cap-add".into(), capability.clone()]);
        }
        args.push(image_reference(&placement.image)?.to_owned());
        args.extend(command.iter().cloned());
        Ok(args)
    }

    /// Pulls the job's image as its policy asks, within its timeout and cancellation.
    async fn pull_for(
        &self,
        spec: &JobSpec,
        cancel: &mut std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>,
    ) -> Result<(), (RunFailure, String)> {
        let placement = &spec.placement;
        let pulled = tokio::select! {
            pulled = self.ensure_image(&placement.image, placement.image_pull_policy, &placement.image_pull_secrets) => pulled,
            () = tokio::time::sleep(spec.limits.timeout) => Err(format!("timed out after {} s while pulling the image", spec.limits.timeout.as_secs())),
            () = cancel.as_mut() => return Err((RunFailure::Cancelled, "cancelled while pulling the image".to_owned())),
        };
        pulled.map_err(|reason| (RunFailure::Container(reason.clone()), reason))
    }

    /// Runs an asynchronous job in its container with `cloister-runtime` as the container's
    /// first program: `work` is the job's work directory (readied here), `control` a fresh
    /// folder for its job file, and beside it `<control>.sock` one for its S3 socket, mounted
    /// read-only (both removed at the end). `on_start` is called once the container is being
    /// started.
    pub async fn run_contained(
        &self,
        spec: &JobSpec,
        work: &Path,
        control: &Path,
        cancel: futures::future::BoxFuture<'static, ()>,
        on_start: Box<dyn FnOnce() + Send>,
    ) -> JobOutcome {
        let mut cancel: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> = cancel;
        if let Err((failure, reason)) = self.pull_for(spec, &mut cancel).await {
            return failed_outcome(not_run(failure, &reason));
        }
        let name = format!("cloister-{}", spec.job_uuid);
        let image_env = match self.image_env(&spec.placement.image).await {
            Ok(env) => env,
            Err(reason) => return failed_outcome(not_run(RunFailure::Container(reason.clone()), &reason)),
        };
        let sockets = socket_dir(control);
        let prepared = {
            let (work, control, sockets) = (work.to_path_buf(), control.to_path_buf(), sockets.clone());
            let job = ContainedJob::new(spec, format!("unix://{SOCKET_DIR}/{SOCKET_FILE}")).map(|mut job| {
                job.image_env = Some(image_env.as_ref().clone());
                job
            });
            let inline = match &spec.input {
                cloister_runtime::JobInput::Inline(bytes) => Some(bytes.clone()),
                _ => None,
            };
            tokio::task::spawn_blocking(move || {
                prepare_contained(
                    &work,
                    &control,
                    &sockets,
                    job.map_err(|e| e.to_string())?,
                    inline.as_deref(),
                )
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|prepared| prepared)
        };
        let listener = match prepared.and_then(|listener| {
            tokio::net::UnixListener::from_std(listener).map_err(|e| format!("S3 socket: {e}"))
        }) {
            Ok(listener) => listener,
            Err(reason) => {
                let reason = format!("cannot prepare the job's container: {reason}");
                remove_control(control).await;
                remove_control(&sockets).await;
                return failed_outcome(not_run(RunFailure::Container(reason.clone()), &reason));
            }
        };
        let stop = self.serve_s3(listener);
        let run = self
            .run_runtime(spec, &name, [work, control, &sockets], cancel, on_start)
            .await;
        drop(stop);
        remove_control(control).await;
        remove_control(&sockets).await;
        let reset = {
            let work = work.to_path_buf();
            tokio::task::spawn_blocking(move || cloister_runtime::reset_work_dir(&work)).await
        };
        if let Ok(Err(e)) = reset {
            tracing::warn!(job = %spec.job_name, error = %e, "cannot reset the job's work directory");
        }
        run
    }

    /// Serves the store's S3 service on a job's own socket until the returned sender is dropped.
    fn serve_s3(&self, listener: tokio::net::UnixListener) -> tokio::sync::oneshot::Sender<()> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(cloister_storage::serve(
            listener,
            self.s3.clone(),
            JOB_SOCKET_LIMITS,
            async move {
                let _ = stopped.await;
            },
        ));
        stop
    }

    /// A confidential job's own S3 socket, through which its runtime stores the outputs: as a
    /// plain job's ([`Self::run_contained`]), [`SOCKET_FILE`] in a fresh folder (0700) beside
    /// the job folder `job_dir`, mounted read-only at [`SOCKET_DIR`] — the program, which may
    /// write to the job folder, cannot put a socket of its own in its place (and so receive
    /// the runtime's signed requests). Served, and the folder kept, until it is dropped.
    pub(crate) fn confidential_socket(&self, job_dir: &Path) -> Result<JobSocket, String> {
        use std::os::unix::fs::DirBuilderExt;
        let folder = socket_dir(job_dir);
        if let Err(e) = std::fs::remove_dir_all(&folder)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(format!("cannot prepare the job's S3 socket: {e}"));
        }
        let listener = std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&folder)
            .and_then(|()| bind_socket(&folder, SOCKET_FILE))
            .and_then(tokio::net::UnixListener::from_std)
            .map_err(|e| format!("cannot prepare the job's S3 socket: {e}"))?;
        Ok(JobSocket {
            _stop: self.serve_s3(listener),
            folder,
        })
    }

    /// `folders`: the job's work directory, control folder and socket folder.
    async fn run_runtime(
        &self,
        spec: &JobSpec,
        name: &str,
        folders: [&Path; 3],
        cancel: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
        on_start: Box<dyn FnOnce() + Send>,
    ) -> JobOutcome {
        let [work, control, sockets] = folders;
        let (Ok(work_host), Ok(control_host), Ok(sockets_host)) =
            (mountable(work), mountable(control), mountable(sockets))
        else {
            let reason = format!("the work directory {} cannot be mounted", work.display());
            return failed_outcome(not_run(RunFailure::Container(reason.clone()), &reason));
        };
        let mut mounts: Vec<(&str, &str, Mount)> = vec![
            (work_host.as_str(), WORK_DIR, Mount::Owned),
            (control_host.as_str(), CONTROL_DIR, Mount::Owned),
            // The script may write to the control folder, never here: the socket stays this
            // process's.
            (sockets_host.as_str(), SOCKET_DIR, Mount::OwnedReadOnly),
        ];
        let empty = match self.empty_preload() {
            Ok(empty) => empty,
            Err(reason) => return failed_outcome(not_run(RunFailure::Container(reason.clone()), &reason)),
        };
        self.mount_runtime(&mut mounts, &empty);
        let mut command = self.runtime.prefix.clone();
        command.extend(["--container-job".into(), CONTROL_DIR.into()]);
        let args = match self.run_args(spec, name, &mounts, &self.runtime.entrypoint, &command, true) {
            Ok(run) => {
                let mut args = self.global.clone();
                args.extend(run);
                args
            }
            Err(reason) => return failed_outcome(not_run(RunFailure::Container(reason.clone()), &reason)),
        };
        let life = ContainerLife {
            name,
            args: &args,
            work_dir: work,
            // The engine holds the container to the job's limits, and the runtime the script to
            // its timeout; this one only ends a container that outlives both.
            timeout: spec.limits.timeout.saturating_add(CONTAINED_GRACE),
            log_limit: ENGINE_LOG_LIMIT,
            keep_stdout: Some(spec.log_limit.saturating_mul(16).saturating_add(1 << 20)),
        };
        let mut run = self.run_container(life, cancel, on_start).await;
        if run.failure.is_none()
            && let Ok(result) = serde_json::from_slice::<ContainedResult>(&run.stdout)
        {
            return result.into_outcome();
        }
        self.judge_exit(spec, &mut run);
        if run.failure.is_none() {
            let code = run.exit_code.map_or_else(|| "none".to_owned(), |c| c.to_string());
            run.failure = Some(RunFailure::Container(format!(
                "the runtime in the container reported no result (exit code {code})"
            )));
        }
        // What the engine or a runtime that could not report said is all there is to show.
        run.stdout.clear();
        failed_outcome(run)
    }

    /// Runs a confidential job's `cloister-runtime --job` as the first program of a container
    /// of the service's image (see [`crate::confidential`]): its job folder bound at
    /// [`WORK_DIR`], its plaintext root a private tmpfs of the container
    /// ([`CONFIDENTIAL_PLAIN_ROOT`], never on the host's disk), the input's ciphertext, the
    /// service's volume folder at the paths `job.json` names, its S3 socket's folder read-only
    /// at [`SOCKET_DIR`], no network (the CAS is reached through the relay socket in the job
    /// folder, the store through the S3 socket). The runtime's standard output is the job's
    /// log.
    pub(crate) async fn run_confidential(
        &self,
        spec: &JobSpec,
        files: &ConfidentialFiles<'_>,
        timeout: Duration,
        cancel: futures::future::BoxFuture<'static, ()>,
        on_start: Box<dyn FnOnce() + Send>,
    ) -> ScriptRun {
        let mut cancel: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> = cancel;
        if let Err((failure, reason)) = self.pull_for(spec, &mut cancel).await {
            return not_run(failure, &reason);
        }
        let name = format!("cloister-{}", spec.job_uuid);
        let unmountable = |path: &Path| {
            let reason = format!("{} cannot be mounted into the job's container", path.display());
            not_run(RunFailure::Container(reason.clone()), &reason)
        };
        let host_path = |path: &Path| mountable(path).map_err(|_| unmountable(path));
        let job_dir = match host_path(files.job_dir) {
            Ok(p) => p,
            Err(run) => return run,
        };
        let volumes = match host_path(files.volumes) {
            Ok(p) => p,
            Err(run) => return run,
        };
        let input = match files.input.map(host_path).transpose() {
            Ok(p) => p,
            Err(run) => return run,
        };
        let sockets = match host_path(files.sockets) {
            Ok(p) => p,
            Err(run) => return run,
        };
        let mut mounts: Vec<(&str, &str, Mount)> = vec![
            (job_dir.as_str(), WORK_DIR, Mount::Owned),
            (volumes.as_str(), CONFIDENTIAL_VOLUMES, Mount::Owned),
            // The program may write to the job folder, never here: the socket stays this
            // process's.
            (sockets.as_str(), SOCKET_DIR, Mount::OwnedReadOnly),
        ];
        if let Some(input) = &input {
            mounts.push((input.as_str(), CONFIDENTIAL_INPUT, Mount::ReadOnly));
        }
        let empty = match self.empty_preload() {
            Ok(empty) => empty,
            Err(reason) => return not_run(RunFailure::Container(reason.clone()), &reason),
        };
        self.mount_runtime(&mut mounts, &empty);
        let mut command = self.runtime.prefix.clone();
        command.extend(["--job".into(), WORK_DIR.into()]);
        let mut args = self.global.clone();
        match self.run_args(spec, &name, &mounts, &self.runtime.entrypoint, &command, true) {
            Ok(mut run) => {
                // The plaintext root: memory of the container (charged to its limit), private
                // to the image's user, gone with the container.
                let mut tmpfs = format!("type=tmpfs,destination={CONFIDENTIAL_PLAIN_ROOT},tmpfs-mode=0700");
                if let Some(bytes) = spec.limits.memory_bytes {
                    tmpfs.push_str(&format!(",tmpfs-size={bytes}"));
                }
                if self.kind == EngineKind::Podman {
                    tmpfs.push_str(",U=true");
                }
                run.splice(1..1, ["--mount".to_owned(), tmpfs]);
                args.extend(run);
            }
            Err(reason) => return not_run(RunFailure::Container(reason.clone()), &reason),
        }
        let life = ContainerLife {
            name: &name,
            args: &args,
            work_dir: files.job_dir,
            timeout,
            log_limit: spec.log_limit,
            keep_stdout: None,
        };
        let mut run = self.run_container(life, cancel, on_start).await;
        self.judge_exit(spec, &mut run);
        run
    }

    /// Runs the engine for one container's whole life, as `life` describes it. Killing the
    /// engine's CLI does not stop the container (the engine's monitor owns it), so a run that was
    /// interrupted (timeout, cancel, a failure) removes it.
    async fn run_container<'c>(
        &self,
        life: ContainerLife<'_>,
        cancel: impl std::future::Future<Output = ()> + Send + 'c,
        on_start: impl FnOnce() + Send + 'c,
    ) -> ScriptRun {
        let program = ProgramOptions {
            program: Program::Direct(&self.engine),
            args: life.args,
            work_dir: life.work_dir,
            env: &self.engine_env,
            // The engine holds the container to the job's limits; the CLI process is not.
            limits: &Limits {
                memory_bytes: None,
                cpu_millis: None,
                timeout: life.timeout,
            },
            cgroups: &CgroupSupport::None,
            slot: "",
            log_limit: life.log_limit,
            keep_stdout: life.keep_stdout,
        };
        let run = cloister_runtime::run_program(program, cancel, on_start).await;
        if run.failure.is_some() || run.exit_code.is_none() {
            self.remove(&[life.name.to_owned()]).await;
        }
        run
    }

    /// Turns the engine's own exit codes into failures (see [`classify_exit`]) and forgets the
    /// image of a container that could not run (it may have been removed behind our back).
    fn judge_exit(&self, spec: &JobSpec, run: &mut ScriptRun) {
        if run.failure.is_none() {
            classify_exit(run);
        }
        if matches!(run.failure, Some(RunFailure::Container(_))) {
            self.forget_image(&spec.placement.image);
        }
    }

    /// Forgets that an image is present (it may have been removed behind our back).
    fn forget_image(&self, image: &str) {
        if let Ok(mut present) = self.present.lock() {
            present.remove(image);
        }
        if let Ok(mut envs) = self.image_envs.lock() {
            envs.remove(image);
        }
    }

    /// Adds the runtime's read-only mounts and, when the host's loader starts it, `empty_preload`
    /// over the image's `/etc/ld.so.preload`. The loader would otherwise preload what the image
    /// lists there, and the image's variables (`LD_PRELOAD`, `LD_AUDIT`, `GLIBC_TUNABLES`) would
    /// reach it too: an image could run its code inside the runtime before the runtime guards
    /// itself. The runtime therefore starts without the image's variables (they reach the script
    /// through the job file) and with an empty preload list.
    fn mount_runtime<'a>(&'a self, mounts: &mut Vec<(&'a str, &'a str, Mount)>, empty_preload: &'a str) {
        mounts.extend(
            self.runtime
                .mounts
                .iter()
                .map(|(host, inside)| (host.as_str(), inside.as_str(), Mount::ReadOnly)),
        );
        if self.runtime.through_loader() {
            mounts.push((empty_preload, "/etc/ld.so.preload", Mount::ReadOnly));
        }
    }

    /// The empty file mounted over an image's `/etc/ld.so.preload`, as a mount source.
    fn empty_preload(&self) -> Result<String, String> {
        mountable(&self.private.path().join(EMPTY_FILE))
    }

    /// The variables `image` sets for its programs (`Config.Env`), read once per image.
    async fn image_env(&self, image: &str) -> Result<Arc<ImageEnv>, String> {
        if let Some(env) = self.image_envs.lock().ok().and_then(|e| e.get(image).cloned()) {
            return Ok(env);
        }
        let listed = self
            .inspect_image(image, "{{json .Config.Env}}")
            .await
            .map_err(|e| format!("cannot read the image's environment: {e}"))?;
        let mut env = parse_image_env(&listed)?;
        if self.kind == EngineKind::Podman && !env.iter().any(|(name, _)| name == "container") {
            // What Podman itself sets for a container's programs.
            env.push(("container".to_owned(), "podman".to_owned()));
        }
        let env = Arc::new(env);
        if let Ok(mut envs) = self.image_envs.lock() {
            envs.insert(image.to_owned(), env.clone());
        }
        Ok(env)
    }
}

/// One container's life as the engine's CLI runs it (see `Containers::run_container`).
struct ContainerLife<'a> {
    /// The container's name.
    name: &'a str,
    /// The engine's arguments (global ones and `run …`).
    args: &'a [String],
    /// Where the CLI process runs.
    work_dir: &'a Path,
    /// When the CLI process (and so the container) is ended.
    timeout: Duration,
    /// How much of the CLI's output (the container's, attached) is kept as the log.
    log_limit: usize,
    /// How much standard output is kept apart from the log, if any.
    keep_stdout: Option<usize>,
}

/// Where a confidential job's plaintext root is inside its container (a tmpfs of its own).
pub(crate) const CONFIDENTIAL_PLAIN_ROOT: &str = "/cloister/plain";
/// Where a confidential job's service volume folder (ciphertext) is inside its container.
pub(crate) const CONFIDENTIAL_VOLUMES: &str = "/cloister/volumes";
/// Where a confidential job's input ciphertext is inside its container, when it is mounted.
pub(crate) const CONFIDENTIAL_INPUT: &str = "/cloister/input";

/// The host files a confidential job's container mounts.
pub(crate) struct ConfidentialFiles<'a> {
    /// The job folder (`job.json`, the storage credential, the CAS relay's socket;
    /// `result.json` and the sealed log come back in it).
    pub job_dir: &'a Path,
    /// The input's ciphertext where the store keeps it (else it was fetched into the job folder).
    pub input: Option<&'a Path>,
    /// The service's volume folder (ciphertext).
    pub volumes: &'a Path,
    /// The folder of the job's S3 socket ([`Containers::confidential_socket`]).
    pub sockets: &'a Path,
}

/// A confidential job's S3 socket, served while it lives; its folder goes with it.
pub(crate) struct JobSocket {
    _stop: tokio::sync::oneshot::Sender<()>,
    folder: PathBuf,
}

impl JobSocket {
    /// The socket's folder.
    pub(crate) fn folder(&self) -> &Path {
        &self.folder
    }
}

impl Drop for JobSocket {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.folder)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, "cannot remove a job's S3 socket folder");
        }
    }
}

/// Most connections at once from one job's runtime to the CAS through its relay.
const CAS_RELAY_CONNECTIONS: usize = 16;

/// A relay from a Unix socket to the CAS's port, serving while it lives.
pub(crate) struct CasRelay {
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Binds `name` in `dir` and relays each connection made to it to the host and port of
/// `cas_url` (`https://host[:port]`): a confidential job's container has no network, and its
/// runtime's TLS session with the CAS (pinned) passes through this process as ciphertext.
/// Only that one address is reachable through it.
pub(crate) fn relay_to_cas(dir: &Path, name: &str, cas_url: &str) -> Result<CasRelay, String> {
    let (host, port) = cas_address(cas_url)?;
    let listener = bind_socket(dir, name)
        .and_then(tokio::net::UnixListener::from_std)
        .map_err(|e| format!("cannot bind the CAS relay's socket: {e}"))?;
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        // Dropped when the job ends: its connections go with it.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = listener.accept() => {
                    let Ok((mut inside, _)) = accepted else { continue };
                    if connections.len() >= CAS_RELAY_CONNECTIONS {
                        continue;
                    }
                    let host = host.clone();
                    connections.spawn(async move {
                        let connect = tokio::net::TcpStream::connect((host.as_str(), port));
                        let Ok(Ok(mut cas)) = tokio::time::timeout(Duration::from_secs(30), connect).await else {
                            return;
                        };
                        let _ = cas.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut inside, &mut cas).await;
                    });
                }
            }
        }
    });
    Ok(CasRelay { _stop: stop })
}

/// The host and port of a CAS URL (`https://host[:port]`, port 443 by default).
fn cas_address(url: &str) -> Result<(String, u16), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("the CAS URL {url:?} is invalid: {e}"))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("the CAS URL {url:?} is not https://host[:port]"));
    }
    let host = uri
        .host()
        .ok_or_else(|| format!("the CAS URL {url:?} names no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok((host, uri.port_u16().unwrap_or(443)))
}

/// The folder beside a contained job's control folder that holds its S3 socket.
fn socket_dir(control: &Path) -> PathBuf {
    let mut name = control.as_os_str().to_owned();
    name.push(".sock");
    PathBuf::from(name)
}

/// Readies a contained job's folders: the work directory (its three empty folders), a fresh
/// control folder (0700) with the job file (0600) and an inline input's bytes, and a fresh
/// socket folder (0700) with the job's S3 socket, bound here.
fn prepare_contained(
    work: &Path,
    control: &Path,
    sockets: &Path,
    job: ContainedJob,
    inline: Option<&[u8]>,
) -> Result<std::os::unix::net::UnixListener, String> {
    use std::io::Write;
    use std::os::unix::fs::DirBuilderExt;
    cloister_runtime::ready_work_dir(work).map_err(|e| format!("work directory: {e}"))?;
    for folder in [control, sockets] {
        if let Err(e) = std::fs::remove_dir_all(folder)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(format!("control folder: {e}"));
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(folder)
            .map_err(|e| format!("control folder: {e}"))?;
    }
    let text = serde_json::to_vec(&job).map_err(|e| format!("job file: {e}"))?;
    let write = |name: &str, bytes: &[u8]| {
        crate::create_private(&control.join(name))
            .and_then(|mut file| file.write_all(bytes))
            .map_err(|e| format!("{name}: {e}"))
    };
    write(JOB_FILE, &text)?;
    if let Some(bytes) = inline {
        write(INPUT_FILE, bytes)?;
    }
    bind_socket(sockets, SOCKET_FILE).map_err(|e| format!("S3 socket: {e}"))
}

/// Binds the socket `name` in `control` (non-blocking, for the runtime's reactor). A socket's
/// path is limited to 107 bytes; a longer one is bound through this process's descriptor of
/// the folder (`/proc/self/fd/N/…`).
fn bind_socket(control: &Path, name: &str) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::fd::AsRawFd;
    let path = control.join(name);
    let listener = if path.as_os_str().len() < 100 {
        std::os::unix::net::UnixListener::bind(&path)?
    } else {
        let folder = std::fs::File::open(control)?;
        let through = format!("/proc/self/fd/{}/{name}", folder.as_raw_fd());
        std::os::unix::net::UnixListener::bind(through)?
    };
    listener.set_nonblocking(true)?;
    Ok(listener)
}

async fn remove_control(control: &Path) {
    let control = control.to_path_buf();
    let removed = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&control)).await;
    if let Ok(Err(e)) = removed
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(error = %e, "cannot remove a job's control folder");
    }
}

/// A failed job's outcome from a run that did not report one.
fn failed_outcome(run: ScriptRun) -> JobOutcome {
    let mut log = run.log;
    let reason = run
        .failure
        .map_or_else(|| "the container could not run".to_owned(), |f| f.to_string());
    if !log.last().is_some_and(|line| line.text.ends_with(&reason)) {
        log.push(LogLine {
            time: time::OffsetDateTime::now_utc(),
            text: format!("cloister: {reason}"),
        });
    }
    JobOutcome {
        status: Status::Failed,
        exit_code: run.exit_code,
        reason: Some(reason),
        log,
        stdout: Vec::new(),
        files: Vec::new(),
        uploaded: Vec::new(),
        sealed_log: None,
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

/// An image's `Config.Env` as `image inspect --format '{{json .Config.Env}}'` prints it
/// (`null` for none): `NAME=value` strings, in order.
fn parse_image_env(listed: &str) -> Result<Vec<(String, String)>, String> {
    let entries: Option<Vec<String>> = serde_json::from_str(listed.trim())
        .map_err(|e| format!("the image's environment is not a list of variables: {e}"))?;
    Ok(entries
        .unwrap_or_default()
        .into_iter()
        .filter_map(|entry| {
            let (name, value) = entry.split_once('=')?;
            (!name.is_empty()).then(|| (name.to_owned(), value.to_owned()))
        })
        .collect())
}

/// Quotes a value for a POSIX shell: `'…'`, with `'` written as `'\''`.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// Writes the job's environment where the container's shell reads it (a file created anew,
/// readable by its owner only).
fn write_env_file(work: &Path, env: &[(String, String)]) -> std::io::Result<()> {
    use std::io::Write;
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
    crate::create_private(&work.join(ENV_FILE))?.write_all(text.as_bytes())
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
        let Ok(work) = mountable(job.work_dir) else {
            let reason = format!(
                "the work directory {} cannot be mounted (its path must be UTF-8 without ':' or ',')",
                job.work_dir.display()
            );
            return not_run(RunFailure::Container(reason.clone()), &reason);
        };
        let command = ["-c".to_owned(), PRELUDE.to_owned(), "cloister-job".to_owned()];
        let mut args = self.global.clone();
        match self.run_args(
            spec,
            &name,
            &[(work.as_str(), WORK_DIR, Mount::Owned)],
            "/bin/sh",
            &command,
            // The script itself runs here: the image's variables are its to have.
            false,
        ) {
            Ok(run) => args.extend(run),
            Err(reason) => return not_run(RunFailure::Container(reason.clone()), &reason),
        }
        // The pull counts against the job's timeout and yields to its cancellation.
        if let Err((failure, reason)) = self.pull_for(spec, &mut cancel).await {
            return not_run(failure, &reason);
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
        let life = ContainerLife {
            name: &name,
            args: &args,
            work_dir: job.work_dir,
            timeout: spec.limits.timeout,
            log_limit: spec.log_limit,
            keep_stdout: job.keep_stdout,
        };
        let mut run = self.run_container(life, cancel, on_start).await;
        self.judge_exit(spec, &mut run);
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

    /// The relay connects only where the CAS URL points; anything but `https://host[:port]` is
    /// refused rather than guessed at.
    #[test]
    fn the_cas_relay_reaches_the_urls_host_and_port_only() {
        assert_eq!(
            cas_address("https://127.0.0.1:8081").unwrap(),
            ("127.0.0.1".to_owned(), 8081)
        );
        assert_eq!(
            cas_address("https://cas.example/").unwrap(),
            ("cas.example".to_owned(), 443)
        );
        assert_eq!(cas_address("https://[::1]:9").unwrap(), ("::1".to_owned(), 9));
        for bad in [
            "http://127.0.0.1:8081",
            "127.0.0.1:8081",
            "unix:///x",
            "https://",
            "",
        ] {
            assert!(cas_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_images_environment_is_read_from_its_config() {
        assert_eq!(
            parse_image_env(r#"["PATH=/bin:/usr/bin","EMPTY=","EQ=a=b","=nameless","noequals"]"#).unwrap(),
            [
                ("PATH".to_owned(), "/bin:/usr/bin".to_owned()),
                ("EMPTY".to_owned(), String::new()),
                ("EQ".to_owned(), "a=b".to_owned()),
            ]
        );
        assert_eq!(parse_image_env("null\n").unwrap(), []);
        assert!(parse_image_env("{\"PATH\": 1}").is_err());
    }

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
    fn dynamically_linked_programs_are_told_from_static_ones() {
        let this = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(
            has_interpreter(&this).unwrap(),
            "test binaries are linked dynamically"
        );
        // The same file with its PT_INTERP header turned into PT_NULL.
        let mut stripped = this.clone();
        let phoff = u64::from_le_bytes(this[0x20..0x28].try_into().unwrap()) as usize;
        let size = usize::from(u16::from_le_bytes([this[0x36], this[0x37]]));
        let count = usize::from(u16::from_le_bytes([this[0x38], this[0x39]]));
        for index in 0..count {
            let at = phoff + index * size;
            if stripped[at..at + 4] == 3u32.to_le_bytes() {
                stripped[at..at + 4].copy_from_slice(&0u32.to_le_bytes());
            }
        }
        assert!(!has_interpreter(&stripped).unwrap());
        for bad in [&b""[..], b"#!/bin/sh\n", &this[..40]] {
            assert!(has_interpreter(bad).is_err());
        }
    }

    #[tokio::test]
    async fn a_socket_too_long_for_its_path_is_bound_through_its_folder() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let control = dir.path().join("c".repeat(120));
        std::fs::create_dir(&control).unwrap();
        let listener =
            tokio::net::UnixListener::from_std(bind_socket(&control, SOCKET_FILE).unwrap()).unwrap();
        assert!(control.join(SOCKET_FILE).exists());
        let folder = std::fs::File::open(&control).unwrap();
        let through = format!("/proc/self/fd/{}/{SOCKET_FILE}", folder.as_raw_fd());
        let (_client, accepted) = tokio::join!(tokio::net::UnixStream::connect(through), listener.accept());
        accepted.unwrap();
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
