//! The Cloister platform: OSCAR-compatible services on one machine.
//!
//! [`start`] opens the durable [`state::State`], the embedded object store, and an executor,
//! then serves the REST API and the S3 endpoint. Uploads under a service's input path become
//! job records through [`dispatch::Dispatcher`] (the store's event sink) before the upload is
//! acknowledged; a pool of workers runs queued jobs through the executor.

mod api;
pub mod confidential;
pub mod confidential_session;
pub mod container;
pub mod dispatch;
pub mod executor;
pub mod fdl;
pub mod gate;
pub mod state;
mod workers;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cloister_storage::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::dispatch::Dispatcher;
use crate::executor::{Executor, LocalExecutor};
use crate::state::State;

/// Server settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where state, objects and job work directories live.
    pub data_dir: PathBuf,
    /// REST API address.
    pub listen: SocketAddr,
    /// S3 endpoint address.
    pub s3_listen: SocketAddr,
    /// Basic-auth user for `/system/*`.
    pub admin_user: String,
    /// Basic-auth password for `/system/*`.
    pub admin_password: String,
    /// S3 access key.
    pub s3_access_key: String,
    /// S3 secret key.
    pub s3_secret_key: String,
    /// Region reported to S3 clients.
    pub s3_region: String,
    /// Jobs running at once.
    pub concurrency: usize,
    /// Wall-clock limit of a job.
    pub job_timeout: Duration,
    /// Finished jobs older than this are deleted (with their logs); `None` keeps them.
    pub log_retention: Option<Duration>,
    /// Largest request body accepted by the REST API, and largest answer of `POST /run`
    /// (output files, or stdout).
    pub max_body: usize,
    /// Most jobs of one service waiting to start before `POST /job` answers 429 (jobs of
    /// uploads count too, but uploads are never refused).
    pub max_queued_jobs: u64,
    /// Most bytes unfinished jobs may hold (events and `POST /job` payloads, all services)
    /// before `POST /job` answers 429.
    pub max_queued_bytes: u64,
    /// `POST /run` invocations admitted at once, running or waiting for a slot; beyond it the
    /// answer is 429, given before the body is read.
    pub max_sync_invocations: usize,
    /// Most bytes of log kept per job.
    pub log_limit: usize,
    /// The `cloister-runtime` binary that runs confidential jobs and, with
    /// [`ExecutorKind::Container`], plain jobs in their containers; `None` refuses the former
    /// and the latter cannot start.
    pub runtime_binary: Option<PathBuf>,
    /// Memory-backed directory (tmpfs) where confidential jobs keep plaintext.
    pub plain_dir: PathBuf,
    /// Where plain jobs' work directories live while they run; `None` is `<data_dir>/work`.
    pub work_dir: Option<PathBuf>,
    /// How much of each database (the state, the object index) is kept in memory.
    pub db_cache_bytes: usize,
    /// The connection limits of each listener (REST API and S3).
    pub connections: cloister_storage::listen::ConnectionLimits,
    /// Where plain jobs' scripts run.
    pub executor: ExecutorKind,
    /// The container engine's CLI (`None`: `podman`, else `docker`, on PATH).
    pub container_engine: Option<PathBuf>,
    /// Registry credentials named by services' `image_pull_secrets` (`<name>.json`); `None`
    /// is `<data_dir>/registry-auth`.
    pub registry_auth_dir: Option<PathBuf>,
}

/// Where plain jobs' scripts run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ExecutorKind {
    /// As processes of this host (the image is recorded only).
    #[default]
    Host,
    /// In containers of the services' images, through a container engine.
    Container,
    /// In containers where a container engine works here (and `cloister-runtime` is found),
    /// else on this host; the choice and its reason are logged at start.
    Auto,
}

/// Shared by the API handlers, the dispatcher and the workers.
pub(crate) struct Platform {
    pub config: Config,
    pub state: Arc<State>,
    pub store: Store,
    pub dispatcher: Arc<Dispatcher>,
    pub executor: Arc<dyn Executor>,
    pub workers: workers::Workers,
    pub s3_endpoint: String,
    pub presigner: cloister_storage::Presigner,
    pub sync_slots: Arc<tokio::sync::Semaphore>,
    /// Admissions of `/run` (see [`Config::max_sync_invocations`]).
    pub sync_admission: tokio::sync::Semaphore,
    /// This host's simulated TEE platform key (public, hex): CAS administrators register it.
    pub sim_platform_public: String,
}

impl Platform {
    /// The bounds of `POST /job`.
    pub(crate) fn queue_bounds(&self) -> state::QueueBounds {
        state::QueueBounds {
            max_pending_jobs: self.config.max_queued_jobs,
            max_queued_bytes: self.config.max_queued_bytes,
        }
    }
}

/// A running server.
pub struct Running {
    /// Where the REST API listens.
    pub api_addr: SocketAddr,
    /// Where the S3 endpoint listens.
    pub s3_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting requests and waits for the servers to close.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// Waits until the servers stop (they stop only on shutdown or a fatal error).
    pub async fn wait(&mut self) {
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

/// Starts the platform: binds both ports, recovers unfinished work, and serves.
pub async fn start(mut config: Config) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    // Jobs run in their own working directories, so every path handed to them is absolute.
    config.data_dir = config.data_dir.canonicalize()?;
    let state = Arc::new(
        State::open_with_cache(&config.data_dir.join("state.redb"), config.db_cache_bytes)
            .context("cannot open the state database")?,
    );
    let (queue_tx, queue_rx) = tokio::sync::mpsc::unbounded_channel();
    let dispatcher = Arc::new(Dispatcher::new(state.clone(), queue_tx)?);
    let store = Store::open_with_cache(
        &config.data_dir.join("objects"),
        dispatcher.clone(),
        config.db_cache_bytes,
    )
    .context("cannot open the object store")?;

    let api_listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let s3_listener = TcpListener::bind(config.s3_listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.s3_listen))?;
    let api_addr = api_listener.local_addr()?;
    let s3_addr = s3_listener.local_addr()?;
    let s3_endpoint = format!("http://{s3_addr}");

    let sim_platform_key = config.data_dir.join("sim-platform.key");
    let sim_platform = cloister_attestation::SimPlatform::load_or_generate(&sim_platform_key)
        .context("cannot load the simulation platform key")?;
    let work_dir = match &config.work_dir {
        Some(dir) => {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("cannot create work directory {}", dir.display()))?;
            dir.canonicalize()?
        }
        None => config.data_dir.join("work"),
    };
    let mut local = LocalExecutor::new(store.clone(), &work_dir);
    if let Some(runtime_binary) = &config.runtime_binary {
        let host = confidential::ConfidentialHost {
            runtime_binary: runtime_binary.clone(),
            sim_platform_key,
            plain_root: config.plain_dir.clone(),
            // Named by this data directory's simulated platform key, which no other has.
            jobs_dir: config
                .plain_dir
                .join("jobs")
                .join(hex::encode(&sim_platform.public_key()[..8])),
            volumes_root: config.data_dir.join("volumes"),
        };
        host.sweep();
        local = local.with_confidential(host);
    }
    if config.executor != ExecutorKind::Host {
        let auth_dir = config
            .registry_auth_dir
            .clone()
            .unwrap_or_else(|| config.data_dir.join("registry-auth"));
        // Named like the confidential jobs' folder: no other data directory has this key.
        let server_id = hex::encode(&sim_platform.public_key()[..8]);
        const NO_RUNTIME: &str = "the container executor starts cloister-runtime in each job's \
             container: none beside this binary or on PATH (give --runtime-binary)";
        let containers = match config.runtime_binary.as_deref() {
            Some(runtime) => container::Containers::start(
                config.container_engine.as_deref(),
                &server_id,
                &auth_dir,
                runtime,
                store.s3_service(&config.s3_access_key, &config.s3_secret_key),
            )
            .await
            .map_err(|e| anyhow::Error::new(e).context("cannot use the container executor")),
            None => Err(anyhow::anyhow!(NO_RUNTIME)),
        };
        match containers {
            Ok(containers) => local = local.with_containers(containers),
            Err(e) if config.executor == ExecutorKind::Auto => {
                tracing::info!(
                    reason = %format!("{e:#}"),
                    "plain jobs run on this host (no working container engine; --executor host)"
                );
            }
            Err(e) => return Err(e),
        }
    }
    let executor: Arc<dyn Executor> = Arc::new(local);
    let presigner = cloister_storage::Presigner::new(
        &s3_endpoint,
        &config.s3_region,
        &config.s3_access_key,
        &config.s3_secret_key,
    );
    let platform = Arc::new(Platform {
        state: state.clone(),
        store: store.clone(),
        dispatcher: dispatcher.clone(),
        executor,
        workers: workers::Workers::default(),
        s3_endpoint,
        presigner,
        sync_slots: Arc::new(tokio::sync::Semaphore::new(config.concurrency.max(1))),
        sync_admission: tokio::sync::Semaphore::new(config.max_sync_invocations.max(1)),
        sim_platform_public: hex::encode(sim_platform.public_key()),
        config: config.clone(),
    });

    // Jobs already on disk are queued first, then uploads interrupted by a crash are resolved
    // (which queues their new jobs), all before anything new is accepted.
    workers::requeue_unfinished(&platform)?;
    dispatcher
        .recover(&store)
        .await
        .context("cannot recover interrupted uploads")?;

    for service in state.services().context("cannot list the services")? {
        workers::keep_warm(&platform, &service);
    }

    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    // What the executor keeps between jobs (warm containers) goes with the server.
    let (executor, mut rx) = (platform.executor.clone(), shutdown_rx.clone());
    tasks.push(tokio::spawn(async move {
        let _ = rx.wait_for(|stop| *stop).await;
        executor.shutdown().await;
    }));
    tasks.push(tokio::spawn(workers::run(
        platform.clone(),
        queue_rx,
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(
        dispatcher.clone().run_settler(store.clone(), shutdown_rx.clone()),
    ));
    if let Some(retention) = config.log_retention {
        tasks.push(tokio::spawn(workers::expire(
            platform.clone(),
            retention,
            shutdown_rx.clone(),
        )));
    }

    let s3_service = store.s3_service(&config.s3_access_key, &config.s3_secret_key);
    let mut rx = shutdown_rx.clone();
    tasks.push(tokio::spawn(async move {
        cloister_storage::serve(s3_listener, s3_service, config.connections, async move {
            let _ = rx.wait_for(|stop| *stop).await;
        })
        .await;
    }));
    let router = hyper_util::service::TowerToHyperService::new(api::router(platform.clone()));
    let refusal = cloister_storage::listen::Refusal {
        content_type: "text/plain; charset=utf-8",
        body: "The server has reached its limit of open connections; retry shortly.\n".to_owned(),
    };
    let mut rx = shutdown_rx;
    tasks.push(tokio::spawn(async move {
        cloister_storage::listen::serve_within(
            api_listener,
            router,
            config.connections,
            refusal,
            "REST API",
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            },
        )
        .await;
    }));
    tracing::info!(
        data_dir = %config.data_dir.display(),
        %api_addr,
        %s3_addr,
        executor = platform.executor.name(),
        concurrency = config.concurrency,
        job_timeout = ?config.job_timeout,
        "cloister is serving"
    );
    Ok(Running {
        api_addr,
        s3_addr,
        shutdown,
        tasks,
    })
}

/// Creates the new file `path` (never an existing one, nor through a link left in its place)
/// readable and writable by its owner only: job files, credentials and keys handed to a job.
pub(crate) fn create_private(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}
