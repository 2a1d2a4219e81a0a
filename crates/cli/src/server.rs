//! `cloister server`: settings, generated credentials, and the client file for the CLI.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::client::{ClientConfig, exit, fail};

/// Settings of `cloister server`; every flag can also come from its `CLOISTER_…` variable.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Where state, objects and job work directories live.
    #[arg(long, env = "CLOISTER_DATA_DIR", default_value = "cloister-data")]
    pub data_dir: PathBuf,
    /// REST API address.
    #[arg(long, env = "CLOISTER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Embedded S3 endpoint address.
    #[arg(long, env = "CLOISTER_S3_LISTEN", default_value = "127.0.0.1:9000")]
    pub s3_listen: SocketAddr,
    /// Admin user for /system/* (generated on first start when absent).
    #[arg(long, env = "CLOISTER_ADMIN_USER")]
    pub admin_user: Option<String>,
    /// Admin password (generated on first start when absent).
    #[arg(long, env = "CLOISTER_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// S3 access key (generated on first start when absent).
    #[arg(long, env = "CLOISTER_S3_ACCESS_KEY")]
    pub s3_access_key: Option<String>,
    /// S3 secret key (generated on first start when absent).
    #[arg(long, env = "CLOISTER_S3_SECRET_KEY", hide_env_values = true)]
    pub s3_secret_key: Option<String>,
    /// S3 region reported to clients.
    #[arg(long, env = "CLOISTER_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,
    /// Jobs running at once (default: twice the number of CPUs).
    #[arg(long, env = "CLOISTER_CONCURRENCY")]
    pub concurrency: Option<usize>,
    /// Wall-clock limit of a job, e.g. `10m`.
    #[arg(long, env = "CLOISTER_JOB_TIMEOUT", default_value = "1h", value_parser = humantime::parse_duration)]
    pub job_timeout: Duration,
    /// Delete finished jobs and their logs after this long, e.g. `7d` (kept forever when absent).
    #[arg(long, env = "CLOISTER_LOG_RETENTION", value_parser = humantime::parse_duration)]
    pub log_retention: Option<Duration>,
    /// Largest request body of the REST API, and largest answer of `/run` (output files or
    /// stdout; beyond it the invocation fails), in MiB.
    #[arg(long, env = "CLOISTER_MAX_BODY_MIB", default_value_t = 64)]
    pub max_body_mib: usize,
    /// Most jobs of one service waiting to start; beyond it `POST /job` answers 429 (uploads
    /// are never refused, but their jobs count).
    #[arg(long, env = "CLOISTER_MAX_QUEUED_JOBS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_queued_jobs: u64,
    /// Most MiB unfinished jobs may hold, across services (their events, and the payloads of
    /// `POST /job`); beyond it `POST /job` answers 429.
    #[arg(long, env = "CLOISTER_MAX_QUEUED_PAYLOAD_MIB", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_queued_payload_mib: u64,
    /// `POST /run` invocations admitted at once, running or waiting for a slot (default:
    /// twice --concurrency); beyond it the answer is 429, before the body is read.
    #[arg(long, env = "CLOISTER_MAX_SYNC_INVOCATIONS",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_sync_invocations: Option<usize>,
    /// MiB of each database (the state, the object index) kept in memory: the server's memory
    /// is bounded by this, not by how many jobs and objects it has seen.
    #[arg(long, env = "CLOISTER_DB_CACHE_MIB", default_value_t = 32,
          value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub db_cache_mib: u64,
    /// Most log kept per job, in KiB.
    #[arg(long, env = "CLOISTER_LOG_LIMIT_KIB", default_value_t = 1024)]
    pub log_limit_kib: usize,
    /// Where confidential jobs keep plaintext while they run: a memory-backed folder (tmpfs)
    /// outside the data directory (default: /dev/shm/cloister-plain).
    #[arg(long, env = "CLOISTER_PLAIN_DIR")]
    pub plain_dir: Option<PathBuf>,
    /// Where plain jobs' work directories (staged input, outputs, tmp) live while they run
    /// (default: <data-dir>/work). A tmpfs such as /dev/shm/cloister-work starts jobs sooner:
    /// creating them never waits behind the state store's fsyncs in the file system journal.
    /// Staged inputs then take memory.
    #[arg(long, env = "CLOISTER_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// Connections each listener (REST API, S3) serves at once; beyond it a new connection is
    /// answered 503 and closed (default: from the open-file limit, leaving a quarter of it,
    /// at least 128, for files and jobs).
    #[arg(long, env = "CLOISTER_MAX_CONNECTIONS",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections: Option<usize>,
    /// A connection with no request in progress and no traffic for this long is closed.
    #[arg(long, env = "CLOISTER_IDLE_TIMEOUT", default_value = "90s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// A connection whose request head is not complete this long after it began is closed.
    #[arg(long, env = "CLOISTER_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,
    /// The `cloister-runtime` binary that runs confidential jobs, and plain jobs in their
    /// containers (default: next to this binary, else on PATH). Without one, confidential jobs
    /// are refused and `--executor container` does not start.
    #[arg(long, env = "CLOISTER_RUNTIME_BINARY")]
    pub runtime_binary: Option<PathBuf>,
    /// Where jobs run: `container` (a container of the service's image per job, through
    /// Podman, or Docker's CLI where a daemon runs, with `cloister-runtime` inside: it stages
    /// a plain job's data over a socket of its own, and runs a confidential job — simulation
    /// TEE — with its plaintext in the container's memory), `host` (processes of this host, the
    /// service's image recorded only; for development), or `auto`, the default: `container`
    /// where Podman or Docker is found and works, else `host`, saying why at start.
    #[arg(long, env = "CLOISTER_EXECUTOR", value_enum, default_value_t = Executor::Auto)]
    pub executor: Executor,
    /// The container engine's CLI for `--executor container` (default: `podman`, else
    /// `docker`, on PATH).
    #[arg(long, env = "CLOISTER_CONTAINER_ENGINE")]
    pub container_engine: Option<PathBuf>,
    /// Registry credentials that services name in `image_pull_secrets`: `<name>.json` files in
    /// the engine's auth format (default: <data-dir>/registry-auth).
    #[arg(long, env = "CLOISTER_REGISTRY_AUTH_DIR")]
    pub registry_auth_dir: Option<PathBuf>,
    /// Also run a development CAS in this process, for one-machine setups: its state in
    /// --cas-data-dir (initialised on first start with its master key in a file there), its
    /// TLS port on --cas-listen, this host's simulated TEE registered with it. A production CAS
    /// runs apart, under the data owners' control (`cloister cas serve`).
    #[arg(long, env = "CLOISTER_WITH_CAS")]
    pub with_cas: bool,
    /// The embedded CAS's directory (default: `<data-dir>-cas`, outside the platform's data).
    #[arg(long, env = "CLOISTER_CAS_DATA_DIR")]
    pub cas_data_dir: Option<PathBuf>,
    /// The embedded CAS's TLS address.
    #[arg(long, env = "CLOISTER_CAS_LISTEN", default_value = "127.0.0.1:8081")]
    pub cas_listen: SocketAddr,
}

/// Where plain jobs' scripts run (`--executor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Executor {
    /// Processes of this host.
    Host,
    /// Containers of the services' images.
    Container,
    /// Containers where an engine works, else processes of this host.
    Auto,
}

/// `cloister-runtime` beside this binary (both come out of one `cargo build`), else on PATH.
fn default_runtime_binary() -> Option<PathBuf> {
    const NAME: &str = "cloister-runtime";
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(NAME)));
    beside.filter(|p| p.is_file()).or_else(|| {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(NAME))
                .find(|p| p.is_file())
        })
    })
}

fn default_plain_dir() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.join("cloister-plain")
    } else {
        std::env::temp_dir().join("cloister-plain")
    }
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
struct Credentials {
    admin_user: String,
    admin_password: String,
    s3_access_key: String,
    s3_secret_key: String,
}

fn random_token(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    rand::fill(raw.as_mut_slice());
    hex::encode(raw)
}

/// Writes a file readable only by its owner, atomically (write, sync, rename).
fn write_private(path: &Path, content: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(content)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Credentials from flags, else from the data directory, else generated and saved there.
fn credentials(args: &ServerArgs) -> anyhow::Result<Credentials> {
    let path = args.data_dir.join("credentials.json");
    let saved: Option<Credentials> = match std::fs::read(&path) {
        Ok(raw) => {
            Some(serde_json::from_slice(&raw).with_context(|| format!("{} is corrupt", path.display()))?)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let base = saved.clone().unwrap_or_else(|| Credentials {
        admin_user: "admin".to_owned(),
        admin_password: random_token(16),
        s3_access_key: format!("cloister{}", &random_token(6)),
        s3_secret_key: random_token(20),
    });
    let current = Credentials {
        admin_user: args.admin_user.clone().unwrap_or(base.admin_user),
        admin_password: args.admin_password.clone().unwrap_or(base.admin_password),
        s3_access_key: args.s3_access_key.clone().unwrap_or(base.s3_access_key),
        s3_secret_key: args.s3_secret_key.clone().unwrap_or(base.s3_secret_key),
    };
    for (name, value) in [
        ("admin user", &current.admin_user),
        ("admin password", &current.admin_password),
        ("S3 access key", &current.s3_access_key),
        ("S3 secret key", &current.s3_secret_key),
    ] {
        anyhow::ensure!(!value.is_empty(), "the {name} must not be empty");
    }
    anyhow::ensure!(
        !current.admin_user.contains(':'),
        "the admin user must not contain ':'"
    );
    // The file always holds what the server accepts: a flag that changed a credential changes
    // it there too, so the next start without the flag keeps it.
    if saved.as_ref() != Some(&current) {
        write_private(&path, &serde_json::to_vec_pretty(&current)?)?;
    }
    Ok(current)
}

fn connection_limits(args: &ServerArgs) -> cloister_storage::listen::ConnectionLimits {
    cloister_storage::listen::raise_fd_limit();
    let fd_limit = cloister_storage::listen::fd_limit().unwrap_or(1024);
    let derived = cloister_storage::listen::default_max_connections(fd_limit);
    let max_connections = args.max_connections.unwrap_or(derived);
    if max_connections > derived {
        // Allowed (the operator may know better), but descriptors can then run out: accepts
        // fail, back off and are logged once per interval.
        tracing::warn!(
            max_connections,
            fd_limit,
            "--max-connections leaves too few of the open-file limit for files and jobs"
        );
    }
    cloister_storage::listen::ConnectionLimits {
        max_connections,
        idle_timeout: args.idle_timeout.max(std::time::Duration::from_millis(100)),
        header_read_timeout: args
            .header_read_timeout
            .max(std::time::Duration::from_millis(100)),
    }
}

pub fn platform_config(args: &ServerArgs) -> anyhow::Result<cloister_platform::Config> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let creds = credentials(args)?;
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let concurrency = args.concurrency.unwrap_or(cpus * 2).max(1);
    Ok(cloister_platform::Config {
        data_dir: args.data_dir.clone(),
        listen: args.listen,
        s3_listen: args.s3_listen,
        admin_user: creds.admin_user,
        admin_password: creds.admin_password,
        s3_access_key: creds.s3_access_key,
        s3_secret_key: creds.s3_secret_key,
        s3_region: args.s3_region.clone(),
        concurrency,
        job_timeout: args.job_timeout,
        log_retention: args.log_retention,
        max_body: args.max_body_mib.saturating_mul(1024 * 1024),
        max_queued_jobs: args.max_queued_jobs,
        max_queued_bytes: args.max_queued_payload_mib.saturating_mul(1024 * 1024),
        // As many may wait as run: a burst is absorbed, a flood is refused.
        max_sync_invocations: args.max_sync_invocations.unwrap_or(concurrency.saturating_mul(2)),
        log_limit: args.log_limit_kib.saturating_mul(1024),
        runtime_binary: args.runtime_binary.clone().or_else(default_runtime_binary),
        plain_dir: args.plain_dir.clone().unwrap_or_else(default_plain_dir),
        work_dir: args.work_dir.clone(),
        db_cache_bytes: usize::try_from(args.db_cache_mib.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX),
        connections: connection_limits(args),
        executor: match args.executor {
            Executor::Host => cloister_platform::ExecutorKind::Host,
            Executor::Container => cloister_platform::ExecutorKind::Container,
            Executor::Auto => cloister_platform::ExecutorKind::Auto,
        },
        container_engine: args.container_engine.clone(),
        registry_auth_dir: args.registry_auth_dir.clone(),
    })
}

/// Claims the data directory for this process: the lock lasts as long as the returned file is
/// open (the kernel drops it when the process dies, however it dies), and the file names the
/// holder's pid for the next server that tries.
pub fn claim_data_dir(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::io::{Read, Seek};
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    let path = data_dir.join("server.pid");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0)?;
            file.rewind()?;
            write!(file, "{}", std::process::id())?;
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim().parse::<u32>() {
                Ok(pid) => format!(" (pid {pid})"),
                Err(_) => String::new(),
            };
            Err(fail(
                exit::CONFLICT,
                format!(
                    "another cloister server{holder} is running on the data directory {}",
                    data_dir.display()
                ),
            ))
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    let _claim = claim_data_dir(&args.data_dir)?;
    let config = platform_config(&args)?;
    match &config.runtime_binary {
        Some(runtime) => {
            tracing::info!(runtime = %runtime.display(), "confidential jobs run in this runtime")
        }
        None => eprintln!(
            "cloister: no cloister-runtime beside this binary or on PATH: confidential jobs will be refused \
             (build it with `cargo build --release`, or give --runtime-binary)"
        ),
    }
    let mut running = cloister_platform::start(config.clone()).await?;
    // The CLI (and tests) find the server and its credentials here; ports may have been 0.
    let client = ClientConfig {
        endpoint: format!("http://{}", running.api_addr),
        user: config.admin_user.clone(),
        password: config.admin_password.clone(),
        s3_endpoint: Some(format!("http://{}", running.s3_addr)),
    };
    let client_file = args.data_dir.join("client.json");
    let client_json = serde_json::to_vec_pretty(&client)?;
    // Rewritten only when it changed: a start on a full disk must not need to write.
    if std::fs::read(&client_file).ok().as_deref() != Some(client_json.as_slice())
        && let Err(e) = write_private(&client_file, &client_json)
    {
        // Serving matters more than the CLI's convenience file (e.g. on a full disk).
        eprintln!("cloister: warning: {e:#}; the CLI may find stale settings there");
        tracing::warn!(error = %e, "cannot update the client file");
    }
    println!(
        "cloister: REST API on http://{}  S3 endpoint on http://{}",
        running.api_addr, running.s3_addr
    );
    println!(
        "cloister: admin user {:?}; credentials for the CLI are in {} (use --config or CLOISTER_CONFIG)",
        config.admin_user,
        client_file.display()
    );

    let mut cas = if args.with_cas {
        Some(start_embedded_cas(&args).await?)
    } else {
        None
    };

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let cas_stopped = async {
        match &mut cas {
            Some(cas) => cas.wait().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
        () = running.wait() => anyhow::bail!("the servers stopped unexpectedly"),
        () = cas_stopped => anyhow::bail!("the embedded CAS stopped unexpectedly"),
    }
    tracing::info!("shutting down; queued jobs resume at the next start");
    running.shutdown().await;
    if let Some(cas) = cas {
        cas.shutdown().await;
    }
    Ok(())
}

/// Starts the development CAS of `--with-cas` beside the platform (its directory defaults to
/// `<data-dir>-cas`, outside the platform's data) and registers this host's simulated TEE.
async fn start_embedded_cas(args: &ServerArgs) -> anyhow::Result<cloister_cas::embedded::EmbeddedCas> {
    let data_dir = args.cas_data_dir.clone().unwrap_or_else(|| {
        let mut name = args.data_dir.file_name().unwrap_or_default().to_os_string();
        name.push("-cas");
        args.data_dir.with_file_name(name)
    });
    let cas = cloister_cas::embedded::start(cloister_cas::embedded::EmbeddedCasConfig {
        data_dir,
        listen: args.cas_listen,
        sim_platform_key: args.data_dir.join("sim-platform.key"),
    })
    .await?;
    print!("{}", cas.startup_message());
    Ok(cas)
}
