//! Warm containers for synchronous invocations (`/run`) of services whose
//! `synchronous.min_scale` is above 0: a pool of started containers per service, each with
//! `cloister-runtime --warm` as its first program waiting on a connection to this process, so
//! that an invocation does not pay a container's start.
//!
//! A warm container takes one invocation at a time. This process prepares the invocation's
//! work directory (the container's only writable host folder, bound at [`WORK_DIR`]) as for a
//! host job, the runtime in the container runs the script and, before it answers, kills every
//! process the script left; this process then empties the work directory, and the runtime
//! removes what the invocation created in the container's scratch folders (`/tmp`, `/run`, …).
//! Invocations of one service share its containers' other state (what they changed in files
//! that were there at the container's start, SysV IPC objects, the kernel's caches): a warm
//! container is reused only for invocations of the service it was started for, and replaced
//! whenever the service changes. No storage credential is ever in a warm container: the input
//! and the outputs travel through the work directory.
//!
//! A container that dies (killed, out of memory, its runtime gone) is removed and replaced; so
//! is one whose invocation failed to answer, or whose work directory was not left as the next
//! invocation needs it. When a container cannot be started, the next try waits (1 s doubling
//! to a minute); meanwhile invocations run in containers of their own, as they do when every
//! warm container is busy.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloister_runtime::contained::{
    CONTROL_DIR, CONTROL_SOCKET, MAX_CONTROL_FRAME, WORK_DIR, WarmInvocation, WarmReport, read_frame,
    write_frame,
};
use cloister_runtime::{JobSpec, RunFailure, RunnerJob, ScriptRun};
use tokio::sync::{mpsc, oneshot};

use super::{
    Containers, ENGINE_COMMAND_TIMEOUT, Mount, bind_socket, engine_output, mountable, not_run, remove_control,
};

/// Most warm containers one service may keep, whatever its `min_scale` says.
const MAX_WARM_PER_SERVICE: u32 = 16;

/// The start of warm containers' names (a job's container is `cloister-<job uuid>`).
const WARM_PREFIX: &str = "cloister-warm-";

/// How long a started container's runtime may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long an invocation may take beyond its script's timeout (the runtime kills and answers).
const ANSWER_GRACE: Duration = Duration::from_secs(30);

/// The wait before trying again to start a service's container after a failure, at most.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The warm containers of every service.
#[derive(Debug)]
pub struct WarmPools {
    containers: Arc<Containers>,
    work_root: PathBuf,
    inner: Mutex<Inner>,
    closed: AtomicBool,
    /// Starts under way: [`WarmPools::shutdown`] waits for them before it removes containers.
    starting: std::sync::atomic::AtomicUsize,
}

#[derive(Debug, Default)]
struct Inner {
    services: HashMap<String, ServicePool>,
    /// Every warm container alive or starting: id → name (removed at shutdown).
    members: HashMap<u64, String>,
    next_id: u64,
    next_generation: u64,
}

#[derive(Debug)]
struct ServicePool {
    /// Changes with every change of the service: containers of another generation are retired.
    generation: u64,
    wanted: usize,
    template: Arc<JobSpec>,
    idle: Vec<Warm>,
    /// Checked out, of this generation.
    busy: usize,
    /// Being started, of this generation.
    starting: usize,
    backoff: Duration,
    /// A refill is scheduled after a failed start.
    retry_pending: bool,
}

/// One warm container, idle in its pool or checked out for an invocation.
#[derive(Debug)]
pub struct Warm {
    id: u64,
    service: String,
    generation: u64,
    /// The container's work directory on this host (bound at [`WORK_DIR`]).
    work: PathBuf,
    /// Its identity as the container bound it: a folder made afresh is not the one bound.
    work_identity: (u64, u64),
    requests: mpsc::Sender<Request>,
    /// The image's variables: the runtime starts without them (see `run_runtime`), and each
    /// invocation's script gets them first.
    image_env: Arc<super::ImageEnv>,
}

struct Request {
    invocation: WarmInvocation,
    deadline: Duration,
    reply: oneshot::Sender<Result<ScriptRun, String>>,
}

impl WarmPools {
    /// Pools of warm containers run by `containers`, their folders under `work_root`.
    pub fn new(containers: Arc<Containers>, work_root: &Path) -> Arc<Self> {
        Arc::new(Self {
            containers,
            work_root: work_root.to_path_buf(),
            inner: Mutex::default(),
            closed: AtomicBool::new(false),
            starting: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Keeps `replicas` warm containers (at most [`MAX_WARM_PER_SERVICE`]) for `service`,
    /// started as `template` describes (image, limits, devices, network). Any containers it
    /// had are retired (idle ones at once, busy ones when their invocation ends): the service
    /// changed. `template` `None` or 0 replicas keeps none.
    pub fn configure(self: &Arc<Self>, service: &str, replicas: u32, template: Option<JobSpec>) {
        let retired = {
            let Ok(mut inner) = self.inner.lock() else { return };
            inner.next_generation += 1;
            let generation = inner.next_generation;
            let old = inner.services.remove(service);
            if let Some(template) = template.filter(|_| replicas > 0) {
                if replicas > MAX_WARM_PER_SERVICE {
                    tracing::warn!(
                        service,
                        replicas,
                        "keeping {MAX_WARM_PER_SERVICE} warm containers at most"
                    );
                }
                inner.services.insert(
                    service.to_owned(),
                    ServicePool {
                        generation,
                        wanted: replicas.min(MAX_WARM_PER_SERVICE) as usize,
                        template: Arc::new(template),
                        idle: Vec::new(),
                        busy: 0,
                        starting: 0,
                        backoff: Duration::from_secs(1),
                        retry_pending: false,
                    },
                );
            }
            old.map(|pool| pool.idle).unwrap_or_default()
        };
        // Their connections close: each container's task removes it.
        drop(retired);
        self.refill(service);
    }

    /// An idle warm container of `service`, if one is ready.
    pub fn checkout(&self, service: &str) -> Option<Warm> {
        let mut inner = self.inner.lock().ok()?;
        let pool = inner.services.get_mut(service)?;
        let warm = pool.idle.pop()?;
        pool.busy += 1;
        Some(warm)
    }

    /// Returns a container after an invocation: back to its pool when it answered and its
    /// work directory is ready for the next one, else it is retired (and replaced).
    pub fn checkin(self: &Arc<Self>, warm: Warm, answered: bool) {
        let reusable = answered && work_dir_unchanged(&warm.work, warm.work_identity);
        let service = warm.service.clone();
        {
            let Ok(mut inner) = self.inner.lock() else { return };
            if let Some(pool) = inner.services.get_mut(&service)
                && pool.generation == warm.generation
            {
                pool.busy = pool.busy.saturating_sub(1);
                if reusable && !self.closed.load(Ordering::SeqCst) {
                    pool.idle.push(warm);
                    return;
                }
            }
        }
        if !reusable {
            tracing::info!(
                service,
                "retiring a warm container whose invocation did not end cleanly"
            );
        }
        drop(warm);
        self.refill(&service);
    }

    /// Removes every warm container (the server is stopping); none is started after.
    pub async fn shutdown(&self) {
        self.closed.store(true, Ordering::SeqCst);
        // A start under way would otherwise make its container after the removal below (each
        // gives up at its next step once closed).
        let deadline = tokio::time::Instant::now() + ENGINE_COMMAND_TIMEOUT;
        while self.starting.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The idle containers' connections stay open until they are removed: a runtime whose
        // connection closes ends its container, whose removal the engine would still be
        // finishing when this process is gone.
        let (names, pools) = match self.inner.lock() {
            Ok(mut inner) => (
                inner.members.values().cloned().collect::<Vec<String>>(),
                std::mem::take(&mut inner.services),
            ),
            Err(_) => (Vec::new(), HashMap::new()),
        };
        if !names.is_empty() {
            self.containers.remove(&names).await;
        }
        // Until the engine lists none: one that a start still in progress made, or one whose
        // runtime saw its connection end and which the engine is removing itself.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while let Ok(listed) = self.containers.ours().await {
            let left: Vec<String> = listed
                .into_iter()
                .filter(|n| n.starts_with(WARM_PREFIX))
                .collect();
            if left.is_empty() || tokio::time::Instant::now() >= deadline {
                break;
            }
            self.containers.remove(&left).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(pools);
    }

    /// Starts as many containers as `service` lacks.
    fn refill(self: &Arc<Self>, service: &str) {
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let starts = {
            let Ok(mut inner) = self.inner.lock() else { return };
            let Some(pool) = inner.services.get_mut(service) else {
                return;
            };
            if pool.retry_pending {
                return;
            }
            let have = pool.idle.len() + pool.busy + pool.starting;
            let missing = pool.wanted.saturating_sub(have);
            pool.starting += missing;
            let (generation, template) = (pool.generation, pool.template.clone());
            let mut starts = Vec::with_capacity(missing);
            for _ in 0..missing {
                inner.next_id += 1;
                starts.push((inner.next_id, generation, template.clone()));
            }
            starts
        };
        for (id, generation, template) in starts {
            self.starting.fetch_add(1, Ordering::SeqCst);
            let pools = self.clone();
            let service = service.to_owned();
            tokio::spawn(async move { pools.start(service, id, generation, template).await });
        }
    }

    async fn start(self: Arc<Self>, service: String, id: u64, generation: u64, template: Arc<JobSpec>) {
        self.start_one(service, id, generation, template).await;
        self.starting.fetch_sub(1, Ordering::SeqCst);
    }

    async fn start_one(self: &Arc<Self>, service: String, id: u64, generation: u64, template: Arc<JobSpec>) {
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let name = format!("{WARM_PREFIX}{}", uuid::Uuid::now_v7().simple());
        let control = self.work_root.join(format!("ctl-{name}"));
        if let Ok(mut inner) = self.inner.lock() {
            inner.members.insert(id, name.clone());
        }
        let started = self.launch(&service, &name, &control, &template).await;
        let mut retry_after = None;
        let accepted = match started {
            Ok((stream, work_identity, image_env)) => {
                let (requests, receiver) = mpsc::channel(1);
                let warm = Warm {
                    id,
                    service: service.clone(),
                    generation,
                    work: work_dir(&control),
                    work_identity,
                    requests,
                    image_env,
                };
                tokio::spawn(self.clone().serve(
                    warm.id,
                    service.clone(),
                    name.clone(),
                    control.clone(),
                    stream,
                    receiver,
                ));
                Some(warm)
            }
            Err(reason) => {
                if !self.closed.load(Ordering::SeqCst) {
                    tracing::warn!(service, %reason, "cannot start a warm container");
                }
                self.containers.remove(std::slice::from_ref(&name)).await;
                remove_control(&control).await;
                remove_control(&work_dir(&control)).await;
                if let Ok(mut inner) = self.inner.lock() {
                    inner.members.remove(&id);
                }
                None
            }
        };
        let Ok(mut inner) = self.inner.lock() else { return };
        let Some(pool) = inner
            .services
            .get_mut(&service)
            .filter(|p| p.generation == generation)
        else {
            // The service changed meanwhile: the container (if any) is dropped and removed.
            return;
        };
        pool.starting = pool.starting.saturating_sub(1);
        match accepted {
            Some(warm) if !self.closed.load(Ordering::SeqCst) => {
                pool.backoff = Duration::from_secs(1);
                tracing::debug!(service, container = %name, "a warm container is ready");
                pool.idle.push(warm);
            }
            Some(_) => {}
            None => {
                if !pool.retry_pending {
                    pool.retry_pending = true;
                    retry_after = Some(pool.backoff);
                    pool.backoff = (pool.backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        drop(inner);
        if let Some(wait) = retry_after {
            let pools = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                if let Ok(mut inner) = pools.inner.lock()
                    && let Some(pool) = inner.services.get_mut(&service)
                    && pool.generation == generation
                {
                    pool.retry_pending = false;
                } else {
                    return;
                }
                pools.refill(&service);
            });
        }
    }

    /// Starts a container and waits for its runtime's connection: the connection and the
    /// identity of the work directory the container bound.
    async fn launch(
        &self,
        service: &str,
        name: &str,
        control: &Path,
        template: &JobSpec,
    ) -> Result<(tokio::net::UnixStream, (u64, u64), Arc<super::ImageEnv>), String> {
        let containers = &self.containers;
        let placement = &template.placement;
        containers
            .ensure_image(
                &placement.image,
                placement.image_pull_policy,
                &placement.image_pull_secrets,
            )
            .await?;
        let image_env = containers.image_env(&placement.image).await?;
        let prepared = {
            let control = control.to_path_buf();
            tokio::task::spawn_blocking(move || prepare_warm(&control))
                .await
                .map_err(|e| e.to_string())
                .and_then(|prepared| prepared)
        }?;
        let (listener, work_identity) = prepared;
        let listener =
            tokio::net::UnixListener::from_std(listener).map_err(|e| format!("control socket: {e}"))?;
        let work = work_dir(control);
        let (work_host, control_host) = (mountable(&work)?, mountable(control)?);
        // The control folder is read-only inside: once the socket is gone it is empty, and an
        // invocation cannot leave anything there for the next.
        let mut mounts: Vec<(&str, &str, Mount)> = vec![
            (work_host.as_str(), WORK_DIR, Mount::Owned),
            (control_host.as_str(), CONTROL_DIR, Mount::OwnedReadOnly),
        ];
        mounts.extend(
            containers
                .runtime
                .mounts
                .iter()
                .map(|(host, inside)| (host.as_str(), inside.as_str(), Mount::ReadOnly)),
        );
        let empty = containers.empty_preload()?;
        if containers.runtime.through_loader() {
            mounts.push((empty.as_str(), "/etc/ld.so.preload", Mount::ReadOnly));
        }
        let mut command = containers.runtime.prefix.clone();
        command.extend(["--warm".into(), CONTROL_DIR.into()]);
        let mut template = template.clone();
        template.job_name = format!("{service}-warm");
        let mut run = containers.run_args(
            &template,
            name,
            &mounts,
            &containers.runtime.entrypoint,
            &command,
            true,
        )?;
        // Started in the background: the engine's CLI answers once the container runs.
        run.insert(1, "--detach".into());
        let mut args = containers.global.clone();
        args.extend(run);
        engine_output(
            &containers.engine,
            &containers.engine_env,
            &args,
            ENGINE_COMMAND_TIMEOUT,
        )
        .await?;
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        let stream = loop {
            // The server may be stopping meanwhile: it waits for this start. The container is
            // removed while its connection may still be pending: a runtime whose connection
            // closes ends its container itself, racing the removal.
            if self.closed.load(Ordering::SeqCst) {
                containers.remove(&[name.to_owned()]).await;
                return Err("the server is stopping".to_owned());
            }
            if tokio::time::Instant::now() >= deadline {
                containers.remove(&[name.to_owned()]).await;
                return Err(format!(
                    "its runtime did not connect in {} s",
                    CONNECT_TIMEOUT.as_secs()
                ));
            }
            if let Ok(accepted) = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await {
                break accepted.map_err(|e| format!("control socket: {e}"))?.0;
            }
        };
        // Nothing else may connect: the socket goes (the listener with it).
        drop(listener);
        let socket = control.join(CONTROL_SOCKET);
        if let Err(e) = tokio::fs::remove_file(&socket).await {
            return Err(format!("cannot remove {}: {e}", socket.display()));
        }
        Ok((stream, work_identity, image_env))
    }

    /// Owns a warm container's connection: runs the invocations sent to it, one at a time, and
    /// watches the connection while idle. When the container is gone, or is to go (its
    /// handle was dropped), the container is removed and its pool refilled.
    async fn serve(
        self: Arc<Self>,
        id: u64,
        service: String,
        name: String,
        control: PathBuf,
        mut stream: tokio::net::UnixStream,
        mut requests: mpsc::Receiver<Request>,
    ) {
        loop {
            tokio::select! {
                request = requests.recv() => {
                    let Some(request) = request else { break };
                    let answer = match tokio::time::timeout(request.deadline, exchange(&mut stream, &request.invocation)).await {
                        Ok(answer) => answer,
                        Err(_) => Err("the warm container did not answer in time".to_owned()),
                    };
                    match answer {
                        Ok(run) => {
                            let _ = request.reply.send(Ok(run));
                        }
                        Err(reason) => {
                            // Gone before the caller empties the work directory.
                            self.containers.remove(std::slice::from_ref(&name)).await;
                            let _ = request.reply.send(Err(reason));
                            break;
                        }
                    }
                }
                readable = stream.readable() => {
                    // While idle the runtime sends nothing: readable is its end (or a breach).
                    if readable.is_err() {
                        break;
                    }
                    match stream.try_read(&mut [0u8; 1]) {
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        _ => {
                            tracing::info!(service, container = %name, "a warm container ended; replacing it");
                            break;
                        }
                    }
                }
            }
        }
        // Removed before the connection closes (its runtime would end the container itself,
        // racing the removal).
        self.containers.remove(std::slice::from_ref(&name)).await;
        drop(stream);
        remove_control(&control).await;
        remove_control(&work_dir(&control)).await;
        let refill = match self.inner.lock() {
            Ok(mut inner) => {
                inner.members.remove(&id);
                if let Some(pool) = inner.services.get_mut(&service) {
                    pool.idle.retain(|warm| warm.id != id);
                }
                true
            }
            Err(_) => false,
        };
        if refill {
            self.refill(&service);
        }
    }
}

/// Sends an invocation and reads its answer.
async fn exchange(
    stream: &mut tokio::net::UnixStream,
    invocation: &WarmInvocation,
) -> Result<ScriptRun, String> {
    let broken = |e: std::io::Error| format!("the warm container's connection failed: {e}");
    let request = serde_json::to_vec(invocation).map_err(|e| e.to_string())?;
    write_frame(stream, &request).await.map_err(broken)?;
    let gone = || "the warm container ended during the invocation".to_owned();
    let report = read_frame(stream, MAX_CONTROL_FRAME)
        .await
        .map_err(broken)?
        .ok_or_else(gone)?;
    let report: WarmReport = serde_json::from_slice(&report)
        .map_err(|e| format!("the warm container's answer is not a report: {e}"))?;
    let stdout_limit = invocation
        .keep_stdout
        .map_or(0, |n| n as u64)
        .saturating_add(64 * 1024);
    let stdout = read_frame(stream, stdout_limit)
        .await
        .map_err(broken)?
        .ok_or_else(gone)?;
    Ok(report.into_run(stdout))
}

/// A warm container lent to one invocation: the runtime of this process runs the invocation
/// with it as its [`cloister_runtime::ScriptRunner`].
#[derive(Debug)]
pub struct Lease {
    warm: Mutex<Option<Warm>>,
    work: PathBuf,
    mount_point: PathBuf,
    answered: AtomicBool,
}

impl Lease {
    /// Lends `warm` to an invocation.
    pub fn new(warm: Warm) -> Self {
        Self {
            work: warm.work.clone(),
            warm: Mutex::new(Some(warm)),
            mount_point: PathBuf::from(WORK_DIR),
            answered: AtomicBool::new(false),
        }
    }

    /// The container's work directory on this host (the invocation's `RunOptions` use it).
    pub fn work(&self) -> &Path {
        &self.work
    }

    /// Gives the container back to `pools`.
    pub fn end(&self, pools: &Arc<WarmPools>) {
        let warm = self.warm.lock().ok().and_then(|mut warm| warm.take());
        if let Some(warm) = warm {
            pools.checkin(warm, self.answered.load(Ordering::SeqCst));
        }
    }
}

#[async_trait::async_trait]
impl cloister_runtime::ScriptRunner for Lease {
    fn mount_point(&self) -> &Path {
        &self.mount_point
    }

    async fn run<'a>(
        &'a self,
        job: RunnerJob<'a>,
        _cancel: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>,
        on_start: Box<dyn FnOnce() + Send + 'a>,
    ) -> ScriptRun {
        let sender = self
            .warm
            .lock()
            .ok()
            .and_then(|warm| warm.as_ref().map(|w| (w.requests.clone(), w.image_env.clone())));
        let Some((sender, image_env)) = sender else {
            return not_run(
                RunFailure::Container("no warm container".into()),
                "no warm container",
            );
        };
        let timeout = job.spec.limits.timeout;
        let (reply, answer) = oneshot::channel();
        let request = Request {
            invocation: WarmInvocation {
                env: image_env.iter().chain(job.env).cloned().collect(),
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                log_limit: job.spec.log_limit,
                keep_stdout: job.keep_stdout,
            },
            deadline: timeout.saturating_add(ANSWER_GRACE),
            reply,
        };
        on_start();
        let answer = match sender.send(request).await {
            Ok(()) => answer
                .await
                .unwrap_or_else(|_| Err("the warm container ended".to_owned())),
            Err(_) => Err("the warm container ended".to_owned()),
        };
        match answer {
            Ok(run) => {
                self.answered.store(true, Ordering::SeqCst);
                run
            }
            Err(reason) => not_run(RunFailure::Container(reason.clone()), &reason),
        }
    }
}

/// A warm container's work directory, beside its control folder (named so that a restarted
/// server removes both as stale).
fn work_dir(control: &Path) -> PathBuf {
    let mut name = control.as_os_str().to_owned();
    name.push(".work");
    PathBuf::from(name)
}

/// Readies a warm container's folders: a fresh control folder (0700) with the control socket
/// bound, and the work directory beside it; answers the socket and the work directory's
/// identity.
fn prepare_warm(control: &Path) -> Result<(std::os::unix::net::UnixListener, (u64, u64)), String> {
    use std::os::unix::fs::DirBuilderExt;
    if let Err(e) = std::fs::remove_dir_all(control)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        return Err(format!("control folder: {e}"));
    }
    if let Some(root) = control.parent() {
        std::fs::create_dir_all(root).map_err(|e| format!("work root: {e}"))?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(control)
        .map_err(|e| format!("control folder: {e}"))?;
    let work = work_dir(control);
    cloister_runtime::ready_work_dir(&work).map_err(|e| format!("work directory: {e}"))?;
    let meta = std::fs::metadata(&work).map_err(|e| format!("work directory: {e}"))?;
    let listener = bind_socket(control, CONTROL_SOCKET).map_err(|e| format!("control socket: {e}"))?;
    Ok((listener, (meta.dev(), meta.ino())))
}

/// Whether `work` is still the folder the container bound, holding only its empty folders.
fn work_dir_unchanged(work: &Path, identity: (u64, u64)) -> bool {
    std::fs::metadata(work).is_ok_and(|meta| (meta.dev(), meta.ino()) == identity)
        && cloister_runtime::work_dir_is_clean(work)
}
