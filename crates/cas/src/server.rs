//! The CAS server.
//!
//! Two listeners serve one state:
//! - a Unix socket in the data directory (mode 0600), for the operator on the CAS host:
//!   status, unseal and seal. Unseal shares never cross the network.
//! - the network port, TLS 1.3 with the CAS identity (pinned by clients), opened once the
//!   vault is unsealed: sessions, secrets, namespaces, platforms, attestation, audit.
//!
//! Who gets what (the rules are stated in `cloister_cas_session`'s docs, "Access" and "Exports
//! and namespaces"): raw secret values go to attested services and to a session's owner, whose
//! every raw read is committed to the audit log before the value leaves; other readers get the
//! session with explicit values redacted and public parts. Every write commits its decision,
//! its namespace claim and its audit entry in one vault transaction; refusals are recorded
//! before the answer.
//!
//! While sealed, every route but status and unseal answers 503.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::handler::Handler as _;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cloister_attestation::{
    DcapVerifier, Endorsements, EvidenceVerifier, SimVerifier, SnpEndorsements, SnpVerifier, Tee,
};
use cloister_cas_session::{ClientKey, ImportResolver, SecretValue, Secrets, Session, SessionError};
use cloister_cas_store::{Share, StoreError, Vault};
use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use zeroize::Zeroizing;

use cloister_cas_client::protocol::*;

use crate::auth::Authenticator;
use crate::nonce::{NonceError, Nonces};
pub use crate::refusals::RefusalAuditLimits;
use crate::refusals::{AuditRecord, Refusal, RefusalClass, RefusalRecorder};
use cloister_cas_client::sign::AuthError;

const SESSIONS: &str = "sessions";
const SECRETS: &str = "secrets";
const PLATFORMS: &str = "platforms";
const VOLUMES: &str = "volumes";
const NAMESPACES: &str = "namespaces";

/// Settings of `cloister cas serve`.
#[derive(Debug, Clone)]
pub struct CasConfig {
    /// The vault's directory; the operator socket `cas.sock` is created here.
    pub data_dir: PathBuf,
    /// Network address (TLS).
    pub listen: SocketAddr,
    /// Extra DNS names / IPs for the self-signed certificate (clients pin the key anyway).
    pub tls_names: Vec<String>,
    /// Client keys (`ed25519:<hex>`) allowed to register simulation platforms and read the
    /// audit log.
    pub admins: Vec<String>,
    /// How long an attestation nonce stays valid.
    pub nonce_ttl: Duration,
    /// Where DCAP collateral comes from (a PCCS / Intel PCS with a disk cache, or an offline
    /// directory). Collateral in a request is used only when this is unset or has nothing for
    /// the platform (see `dcap_collateral`).
    pub collateral: Option<Arc<cloister_attestation::CollateralSource>>,
    /// How many refused attestations are audited one by one (the rest are summed up).
    pub refusal_audit: RefusalAuditLimits,
}

/// A running CAS.
pub struct RunningCas {
    /// The operator socket.
    pub socket: PathBuf,
    /// The network address once bound (it binds when unsealed).
    pub addr: watch::Receiver<Option<SocketAddr>>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningCas {
    /// Waits until the network port is open (the CAS is unsealed) and returns its address.
    pub async fn network_addr(&mut self) -> Option<SocketAddr> {
        let addr = self.addr.wait_for(Option::is_some).await.ok()?;
        *addr
    }

    /// Stops both listeners.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// Waits until the server stops.
    pub async fn wait(&mut self) {
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

struct Cas {
    config: CasConfig,
    vault: Arc<Vault>,
    auth: Authenticator,
    nonces: Nonces,
    refusals: RefusalRecorder,
    dcap: DcapVerifier,
    dcap_collateral: crate::dcap_collateral::CollateralChoice,
    snp: SnpVerifier,
    sim: RwLock<SimVerifier>,
    unsealed: watch::Sender<bool>,
    /// Parsed sessions with their secrets, so an attestation does not re-parse YAML.
    cache: RwLock<SessionCache>,
    releases: ReleaseLog,
}

/// A session ready for attestation.
struct Loaded {
    session: Session,
    hash: String,
    secrets: Secrets,
}

/// The cache of [`Loaded`] sessions. A load reads the vault without holding the lock, so a
/// write can commit between its read and its insert; the generation makes sure such a load,
/// which may hold the replaced version, is never cached: every committed write bumps it (and
/// empties the cache, since importers follow their exporters), and a load inserts only if the
/// generation is the one it saw before reading the vault.
#[derive(Default)]
struct SessionCache {
    generation: u64,
    entries: HashMap<String, Arc<Loaded>>,
}

/// One attestation's audit entries, waiting for their group commit.
type ReleaseJob = (Vec<AuditRecord>, std::sync::mpsc::SyncSender<Result<(), String>>);

/// Group commit of attestation audit entries (releases and refusals): concurrent attestations
/// share one durable transaction, and each waits until its entries are on disk before it is
/// answered.
struct ReleaseLog {
    queue: std::sync::mpsc::Sender<ReleaseJob>,
}

impl ReleaseLog {
    fn start(vault: Arc<Vault>) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<ReleaseJob>();
        std::thread::spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                    if batch.len() >= 256 {
                        break;
                    }
                }
                let written = vault.write(|txn| {
                    for (records, _) in &batch {
                        for (kind, actor, subject, detail) in records {
                            txn.audit_append(kind, actor, subject, detail.clone())?;
                        }
                    }
                    Ok(())
                });
                let result = written.map_err(|e| e.to_string());
                for (_, reply) in batch {
                    let _ = reply.send(result.clone());
                }
            }
        });
        Self { queue: tx }
    }

    /// Appends the records durably (blocking until committed).
    fn append(&self, records: Vec<AuditRecord>) -> Result<(), String> {
        let (reply, wait) = std::sync::mpsc::sync_channel(1);
        self.queue
            .send((records, reply))
            .map_err(|_| "audit writer stopped".to_owned())?;
        wait.recv().map_err(|_| "audit writer stopped".to_owned())?
    }
}

/// Errors answered to clients: a status and a reason without secret content.
struct CasError(StatusCode, String);

impl IntoResponse for CasError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.1,
            ..ErrorBody::default()
        };
        (self.0, axum::Json(body)).into_response()
    }
}

impl From<StoreError> for CasError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Sealed => CasError(StatusCode::SERVICE_UNAVAILABLE, sealed_message()),
            other => {
                tracing::error!(error = %other, "vault failure");
                CasError(StatusCode::INTERNAL_SERVER_ERROR, "vault failure".into())
            }
        }
    }
}

impl From<SessionError> for CasError {
    fn from(e: SessionError) -> Self {
        let status = match e {
            SessionError::StalePredecessor { .. } => StatusCode::CONFLICT,
            SessionError::ImportRefused { .. } => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        };
        CasError(status, e.to_string())
    }
}

fn sealed_message() -> String {
    "the CAS is sealed: it answers only status and unseal".into()
}

type CasResult<T> = Result<T, CasError>;

fn bad(msg: impl Into<String>) -> CasError {
    CasError(StatusCode::BAD_REQUEST, msg.into())
}

fn forbidden(msg: impl Into<String>) -> CasError {
    CasError(StatusCode::FORBIDDEN, msg.into())
}

fn internal(msg: impl Into<String>) -> CasError {
    CasError(StatusCode::INTERNAL_SERVER_ERROR, msg.into())
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("stored {what} does not parse"))
}

/// The stored form of a session.
#[derive(Serialize, Deserialize)]
struct StoredSession {
    yaml: String,
    hash: String,
    creator: String,
    #[serde(with = "time::serde::rfc3339")]
    updated: OffsetDateTime,
}

impl StoredSession {
    fn creator(&self) -> CasResult<ClientKey> {
        self.creator
            .parse()
            .map_err(|_| CasError(StatusCode::INTERNAL_SERVER_ERROR, "corrupt creator".into()))
    }
}

/// Who owns a namespace (the first segment of session names), and how it came to.
#[derive(Serialize, Deserialize)]
struct StoredNamespace {
    owner: String,
    how: NamespaceOrigin,
    #[serde(with = "time::serde::rfc3339")]
    since: OffsetDateTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum NamespaceOrigin {
    /// Its owner created its first session.
    Claimed,
    /// It held sessions before owners were recorded, all of one creator: theirs.
    Inherited,
    /// A CAS administrator declared it.
    Declared,
}

impl NamespaceOrigin {
    fn as_str(self) -> &'static str {
        match self {
            Self::Claimed => "claimed",
            Self::Inherited => "inherited",
            Self::Declared => "declared",
        }
    }
}

/// A namespace is one segment of a session name: `[a-z0-9][a-z0-9-_.]*`, at most 128
/// characters.
fn valid_namespace(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 128
        && matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

/// The namespace of a session name: its first segment.
fn namespace_of(name: &str) -> &str {
    name.split('/').next().unwrap_or(name)
}

/// What creating a session in a namespace takes.
enum NamespaceClaim {
    /// The creator owns it already.
    Owned,
    /// The creator becomes its owner, recorded with the session.
    Record(NamespaceOrigin),
}

/// Reads one record (from the vault or a transaction).
type ReadRecord<'a> = &'a dyn Fn(&str, &str) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError>;
/// Lists record keys by prefix (from the vault or a transaction).
type ListRecords<'a> = &'a dyn Fn(&str, &str) -> Result<Vec<String>, StoreError>;

/// Decides whether `client` may create a session in `namespace`, from the vault as `get` and
/// `keys` read it (inside the write transaction, so the decision and the claim are one).
fn namespace_claim(
    namespace: &str,
    client: &ClientKey,
    get: ReadRecord<'_>,
    keys: ListRecords<'_>,
) -> Result<Result<NamespaceClaim, String>, StoreError> {
    if let Some(raw) = get(NAMESPACES, namespace)? {
        let record: StoredNamespace = serde_json::from_slice(&raw).map_err(|_| corrupt("namespace"))?;
        return Ok(if record.owner == client.to_string() {
            Ok(NamespaceClaim::Owned)
        } else {
            Err(format!(
                "namespace {namespace:?} belongs to {} ({}): only its owner creates sessions in it; \
                 choose another namespace or ask a CAS administrator",
                record.owner,
                record.how.as_str()
            ))
        });
    }
    // Sessions created before owners were recorded: their creator owns the namespace if they
    // share one.
    let nested = format!("{namespace}/");
    let mut creators = BTreeSet::new();
    for name in keys(SESSIONS, namespace)? {
        if name != namespace && !name.starts_with(&nested) {
            continue;
        }
        let raw = get(SESSIONS, &name)?.ok_or_else(|| corrupt("session list"))?;
        let stored: StoredSession = serde_json::from_slice(&raw).map_err(|_| corrupt("session"))?;
        creators.insert(stored.creator);
    }
    let shown = client.to_string();
    Ok(match creators.len() {
        0 => Ok(NamespaceClaim::Record(NamespaceOrigin::Claimed)),
        1 if creators.contains(&shown) => Ok(NamespaceClaim::Record(NamespaceOrigin::Inherited)),
        1 => Err(format!(
            "namespace {namespace:?} belongs to {}, the creator of its sessions: only its owner \
             creates sessions in it",
            creators.first().map_or("", String::as_str)
        )),
        _ => Err(format!(
            "namespace {namespace:?} holds sessions of {} creators and has no declared owner: a CAS \
             administrator must declare it first (cloister cas namespace add {namespace} --owner KEY)",
            creators.len()
        )),
    })
}

#[derive(Serialize, Deserialize)]
struct StoredPlatform {
    name: String,
    added_by: String,
}

/// Starts the CAS on an initialized vault.
pub async fn serve(config: CasConfig, vault: Arc<Vault>) -> anyhow::Result<RunningCas> {
    let socket = config.data_dir.join("cas.sock");
    let _ = std::fs::remove_file(&socket);
    let unix = UnixListener::bind(&socket)?;
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let (unsealed, mut unsealed_rx) = watch::channel(!vault.status().sealed);
    let (auth, open_at) = Authenticator::starting_now();
    let cas = Arc::new(Cas {
        vault: vault.clone(),
        auth,
        nonces: Nonces::new(config.nonce_ttl),
        refusals: RefusalRecorder::new(config.refusal_audit),
        dcap: DcapVerifier::new(),
        dcap_collateral: Default::default(),
        snp: SnpVerifier::new(),
        sim: RwLock::new(SimVerifier::new(Vec::<[u8; 32]>::new())),
        unsealed,
        cache: RwLock::default(),
        releases: ReleaseLog::start(vault.clone()),
        config: config.clone(),
    });
    if !vault.status().sealed {
        cas.load_platforms()
            .map_err(|e| anyhow::anyhow!("cannot load platforms: {}", e.1))?;
        cas.dcap_collateral
            .load(&vault)
            .map_err(|e| anyhow::anyhow!("cannot load the DCAP collateral floor: {e}"))?;
    }
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (addr_tx, addr_rx) = watch::channel(None);
    let mut tasks = Vec::new();

    let local = local_router(cas.clone());
    let mut stop = shutdown_rx.clone();
    tasks.push(tokio::spawn(async move {
        let _ = axum::serve(unix, local)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
    }));

    tasks.push(tokio::spawn(write_refusal_summaries(
        cas.clone(),
        shutdown_rx.clone(),
    )));

    let network = network_router(cas.clone());
    let mut stop = shutdown_rx.clone();
    tasks.push(tokio::spawn(async move {
        // The identity key is sealed: TLS can start only once the vault is open.
        tokio::select! {
            ready = unsealed_rx.wait_for(|open| *open) => if ready.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
        // Requests are accepted from the second after the start on (see `auth`): opening
        // then spares clients with a synchronised clock a refusal and a retry.
        if let Ok(wait) = open_at.duration_since(std::time::SystemTime::now()) {
            tokio::time::sleep(wait).await;
        }
        let tls =
            match cas.vault.identity().map_err(|e| e.to_string()).and_then(|key| {
                crate::tls::server_config(&key, &cas.config.tls_names).map_err(|e| e.to_string())
            }) {
                Ok(tls) => Arc::new(tls),
                Err(e) => {
                    tracing::error!(error = %e, "cannot set up TLS");
                    return;
                }
            };
        let listener = match TcpListener::bind(cas.config.listen).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, addr = %cas.config.listen, "cannot listen");
                return;
            }
        };
        let addr = listener.local_addr().ok();
        tracing::info!(?addr, "CAS network port open (TLS 1.3)");
        let _ = addr_tx.send(addr);
        serve_tls(listener, tls, network, stop).await;
    }));
    Ok(RunningCas {
        socket,
        addr: addr_rx,
        shutdown,
        tasks,
    })
}

/// Writes the summary of a window of refused attestations soon after the window closes (when
/// no later refusal does), and that of the open window at shutdown. A summary due while the
/// vault is sealed waits in the vault's queue for the next unseal.
async fn write_refusal_summaries(cas: Arc<Cas>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(cas.refusals.tick());
    loop {
        let closing = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        if let Some((kind, actor, subject, detail)) = cas.refusals.closed_summary(Instant::now(), closing) {
            let vault = cas.vault.clone();
            let written =
                tokio::task::spawn_blocking(move || vault.audit_note(&kind, &actor, &subject, detail)).await;
            let error = match written {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(e.to_string()),
            };
            if let Some(error) = error {
                tracing::error!(%error, "cannot record a summary of refused attestations in the audit log");
            }
        }
        if closing {
            return;
        }
    }
}

/// Connections served at once; beyond, the listener's backlog waits. Far below the file
/// limit, so a flood of connections cannot take the descriptors the vault needs.
const MAX_CONNECTIONS: usize = 4096;
/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    mut stop: watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    // No header-read timeout: hyper arms a timer for every request head, which measurably
    // slowed the attestation benchmark, and it would not stop a client that keeps its
    // connections busy anyway. The connection cap is what bounds a connection flood.
    let http = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors or memory: retrying at once would spin.
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let http = http.clone();
        tokio::spawn(async move {
            let _permit = permit;
            // A client that fails the handshake (e.g. a wrong pin on its side) just goes away.
            let Ok(Ok(stream)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
            else {
                return;
            };
            let _ = http
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

fn local_router(cas: Arc<Cas>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/unseal", post(unseal))
        .route("/v1/seal", post(seal))
        .with_state(cas)
}

/// Largest session YAML.
const SESSION_BODY: usize = 8 << 20;
/// Largest attestation request: DCAP collateral is about 100 KiB of JSON.
const ATTEST_BODY: usize = 1 << 20;
/// Largest volume commit (names, a grant and a hash).
const VOLUME_COMMIT_BODY: usize = 16 << 10;
/// Largest platform registration (a key and a label).
const PLATFORM_BODY: usize = 16 << 10;
/// How long a request body may take to arrive once its head has.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest body a route accepts, set per route by [`body_limit`]. A route without one
/// accepts no body at all.
#[derive(Debug, Clone, Copy)]
struct BodyLimit(usize);

fn body_limit(bytes: usize) -> axum::Extension<BodyLimit> {
    axum::Extension(BodyLimit(bytes))
}

fn network_router(cas: Arc<Cas>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route(
            "/v1/sessions",
            post(create_session.layer(body_limit(SESSION_BODY))).get(list_sessions),
        )
        .route(
            "/v1/sessions/{*name}",
            get(get_session).put(update_session.layer(body_limit(SESSION_BODY))),
        )
        .route("/v1/secret", get(read_secret))
        .route(
            "/v1/platforms",
            post(add_platform.layer(body_limit(PLATFORM_BODY))).get(list_platforms),
        )
        .route(
            "/v1/namespaces",
            post(declare_namespace.layer(body_limit(PLATFORM_BODY))).get(list_namespaces),
        )
        .route("/v1/attest/nonce", post(issue_nonce))
        .route("/v1/attest", post(attest.layer(body_limit(ATTEST_BODY))))
        .route(
            "/v1/volumes/commit",
            post(commit_volume.layer(body_limit(VOLUME_COMMIT_BODY))),
        )
        .route("/v1/audit", get(audit))
        .with_state(cas)
}

type CasState = State<Arc<Cas>>;

/// Reads a request body within its route's [`BodyLimit`] and [`BODY_TIMEOUT`]: a declared
/// length over the limit is refused before a byte is read, an undeclared one as soon as the
/// limit is passed.
async fn read_body(request: axum::extract::Request) -> CasResult<(axum::http::request::Parts, Bytes)> {
    let (parts, body) = request.into_parts();
    let limit = parts.extensions.get::<BodyLimit>().map_or(0, |l| l.0);
    let too_large = || {
        let message = if limit == 0 {
            format!("{} takes no request body", parts.uri.path())
        } else {
            format!(
                "request body too large: {} accepts at most {} KiB",
                parts.uri.path(),
                limit.div_ceil(1024)
            )
        };
        CasError(StatusCode::PAYLOAD_TOO_LARGE, message)
    };
    let declared = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > limit as u64 => return Err(too_large()),
        Some(0) => return Ok((parts, Bytes::new())),
        _ => {}
    }
    let read = tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, limit))
        .await
        .map_err(|_| {
            CasError(
                StatusCode::REQUEST_TIMEOUT,
                "request body not received in time".into(),
            )
        })?;
    match read {
        Ok(body) => Ok((parts, body)),
        Err(e) => {
            let over_limit = std::error::Error::source(&e)
                .is_some_and(|cause| cause.is::<http_body_util::LengthLimitError>());
            Err(if over_limit {
                too_large()
            } else {
                bad("cannot read the request body")
            })
        }
    }
}

/// An unsigned request's body, within its route's limit.
struct Body(Bytes);

impl<S: Send + Sync> axum::extract::FromRequest<S> for Body {
    type Rejection = CasError;

    async fn from_request(request: axum::extract::Request, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(read_body(request).await?.1))
    }
}

/// A request signed by a client key (see [`crate::auth`]): the key and the body it signed.
/// The body is read (within its route's limit) before the signature can be checked.
struct Signed(ClientKey, Bytes);

/// A signed request refused: the reason and, when its time was refused, the server's clock
/// and the earliest time accepted (so that the client can sign again).
struct Unauthenticated {
    error: CasError,
    clock: Option<(i64, i64)>,
}

impl From<CasError> for Unauthenticated {
    fn from(error: CasError) -> Self {
        Self { error, clock: None }
    }
}

impl IntoResponse for Unauthenticated {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.error.1,
            server_time: self.clock.map(|(now, _)| now),
            not_before: self.clock.map(|(_, not_before)| not_before),
        };
        (self.error.0, axum::Json(body)).into_response()
    }
}

impl axum::extract::FromRequest<Arc<Cas>> for Signed {
    type Rejection = Unauthenticated;

    async fn from_request(request: axum::extract::Request, cas: &Arc<Cas>) -> Result<Self, Self::Rejection> {
        let (parts, body) = read_body(request).await?;
        let client = cas.client(&parts.method, &parts.uri, &parts.headers, &body)?;
        Ok(Self(client, body))
    }
}

impl Cas {
    fn require_unsealed(&self) -> CasResult<()> {
        if self.vault.status().sealed {
            Err(CasError(StatusCode::SERVICE_UNAVAILABLE, sealed_message()))
        } else {
            Ok(())
        }
    }

    /// Authenticates a signed request; returns the client's key. A refusal for the request's
    /// time names the server's clock and the earliest time accepted, for the client's retry.
    fn client(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<ClientKey, Unauthenticated> {
        self.require_unsealed()?;
        let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let verified = self.auth.verify(
            |name| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned),
            method.as_str(),
            path,
            body,
            now,
        );
        let unauthorized = |message: String| CasError(StatusCode::UNAUTHORIZED, message);
        let key = match verified {
            Ok(key) => key,
            Err(e @ (AuthError::Stale | AuthError::BeforeStart)) => {
                let not_before = self.auth.not_before();
                let from = not_before.max(now - cloister_cas_client::sign::MAX_SKEW);
                return Err(Unauthenticated {
                    error: unauthorized(format!(
                        "{e}: the CAS's clock says {now}; sign with a time from {from} on"
                    )),
                    clock: Some((now, not_before)),
                });
            }
            Err(e) => return Err(unauthorized(e.to_string()).into()),
        };
        Ok(key.parse::<ClientKey>().map_err(unauthorized)?)
    }

    fn is_admin(&self, key: &ClientKey) -> bool {
        let shown = key.to_string();
        self.config.admins.iter().any(|a| a.trim() == shown)
    }

    fn load_session(&self, name: &str) -> CasResult<Option<(Session, StoredSession)>> {
        let Some(raw) = self.vault.get(SESSIONS, name)? else {
            return Ok(None);
        };
        let stored: StoredSession = serde_json::from_slice(&raw)
            .map_err(|_| CasError(StatusCode::INTERNAL_SERVER_ERROR, "corrupt session".into()))?;
        let session = cloister_cas_session::parse_session(&stored.yaml)?;
        Ok(Some((session, stored)))
    }

    fn load_secrets(&self, name: &str) -> CasResult<Secrets> {
        let raw = self.vault.get(SECRETS, name)?.ok_or_else(|| {
            CasError(
                StatusCode::INTERNAL_SERVER_ERROR,
                "session without secrets".into(),
            )
        })?;
        serde_json::from_slice(&raw)
            .map_err(|_| CasError(StatusCode::INTERNAL_SERVER_ERROR, "corrupt secrets".into()))
    }

    /// The session and its secrets, from the cache or the vault, with its imports checked
    /// against their exporters as they are now (see [`SessionCache`]).
    fn loaded(&self, name: &str) -> CasResult<Option<Arc<Loaded>>> {
        self.require_unsealed()?;
        let generation = match self.cache.read() {
            Ok(cache) => match cache.entries.get(name) {
                Some(hit) => return Ok(Some(hit.clone())),
                None => Some(cache.generation),
            },
            Err(_) => None,
        };
        let Some(loaded) = self.load_for_release(name)? else {
            return Ok(None);
        };
        let loaded = Arc::new(loaded);
        if let Ok(mut cache) = self.cache.write()
            && Some(cache.generation) == generation
        {
            cache.entries.insert(name.to_owned(), loaded.clone());
        }
        Ok(Some(loaded))
    }

    /// Reads a session and its secrets from one snapshot of the vault (so never a session with
    /// another version's secrets) and refreshes its imports.
    fn load_for_release(&self, name: &str) -> CasResult<Option<Loaded>> {
        let mut records = self
            .vault
            .get_all(&[(SESSIONS, name), (SECRETS, name)])?
            .into_iter();
        let (Some(session), secrets) = (records.next().flatten(), records.next().flatten()) else {
            return Ok(None);
        };
        let stored: StoredSession =
            serde_json::from_slice(&session).map_err(|_| internal("corrupt session"))?;
        let session = cloister_cas_session::parse_session(&stored.yaml)?;
        let secrets = secrets.ok_or_else(|| internal("session without secrets"))?;
        let mut secrets: Secrets =
            serde_json::from_slice(&secrets).map_err(|_| internal("corrupt secrets"))?;
        let owner = stored.creator()?;
        cloister_cas_session::refresh_imports(
            &session,
            &mut secrets,
            &Imports {
                cas: self,
                owner: &owner,
            },
        )
        .map_err(|e| forbidden(format!("session {name:?} cannot be released: {e}")))?;
        Ok(Some(Loaded {
            session,
            hash: stored.hash,
            secrets,
        }))
    }

    /// Called after a session write committed: no load that began before it is cached, and
    /// nothing cached before it is served again.
    fn invalidate(&self) {
        match self.cache.write() {
            Ok(mut cache) => {
                cache.generation = cache.generation.wrapping_add(1);
                cache.entries.clear();
            }
            Err(poisoned) => {
                let mut cache = poisoned.into_inner();
                cache.generation = cache.generation.wrapping_add(1);
                cache.entries.clear();
                self.cache.clear_poison();
            }
        }
    }

    fn load_platforms(&self) -> CasResult<()> {
        let mut keys = Vec::new();
        for hex_key in self.vault.keys(PLATFORMS, "")? {
            let mut key = [0u8; 32];
            if hex::decode_to_slice(&hex_key, &mut key).is_ok() {
                keys.push(key);
            }
        }
        if let Ok(mut sim) = self.sim.write() {
            *sim = SimVerifier::new(keys);
        }
        Ok(())
    }

    /// Records a refusal (or another event that must not change the answer) durably before
    /// the caller answers. If the record fails, the failure is logged and the request is still
    /// refused. Decisions that grant something are recorded in their own transaction instead
    /// (see [`Cas::record_read`] and the writes).
    fn audit(&self, kind: &str, actor: &str, subject: &str, detail: serde_json::Value) {
        if let Err(e) = self.vault.audit_append(kind, actor, subject, detail) {
            tracing::error!(error = %e, kind, "cannot append to the audit log");
        }
    }

    /// Commits the audit entry of a read that hands out secret material; the material goes
    /// out only if this succeeds.
    fn record_read(
        &self,
        kind: &str,
        client: &ClientKey,
        subject: &str,
        detail: serde_json::Value,
    ) -> CasResult<()> {
        self.vault
            .write(|txn| {
                txn.audit_append(kind, &client.to_string(), subject, detail)
                    .map(|_| ())
            })
            .map_err(|e| {
                tracing::error!(error = %e, kind, "cannot record a read; nothing is returned");
                internal("cannot record the read in the audit log; nothing was returned")
            })
    }
}

async fn status(State(cas): CasState) -> impl IntoResponse {
    let status = cas.vault.status();
    let public = cas.vault.identity_public();
    axum::Json(StatusResponse {
        initialized: status.initialized,
        sealed: status.sealed,
        sealing: status.sealing,
        threshold: status.threshold,
        shares_provided: status.shares_provided,
        identity_pin: public.map(|k| format!("sha256:{}", crate::tls::pin_of(&k))),
        identity_public_key: public.map(hex::encode),
    })
}

async fn unseal(State(cas): CasState, body: Bytes) -> CasResult<impl IntoResponse> {
    let request: UnsealRequest =
        serde_json::from_slice(&body).map_err(|e| bad(format!("malformed unseal request: {e}")))?;
    let share: Share = request
        .share
        .parse()
        .map_err(|e: StoreError| bad(e.to_string()))?;
    let vault = cas.vault.clone();
    let outcome = tokio::task::spawn_blocking(move || vault.unseal(&share))
        .await
        .map_err(|_| CasError(StatusCode::INTERNAL_SERVER_ERROR, "unseal task failed".into()))?;
    match outcome {
        Ok(status) => {
            if !status.sealed {
                cas.load_platforms()?;
                cas.dcap_collateral.load(&cas.vault)?;
                cas.audit(
                    "unseal",
                    "operator",
                    "vault",
                    json!({"shares": status.shares_provided}),
                );
                let _ = cas.unsealed.send(true);
                tracing::info!("CAS unsealed");
            }
            Ok(axum::Json(
                json!({"sealed": status.sealed, "shares_provided": status.shares_provided, "threshold": status.threshold}),
            ))
        }
        // The vault itself records rejected shares (queued until the next unseal).
        Err(e @ (StoreError::WrongKey | StoreError::BadShare(_))) => Err(bad(e.to_string())),
        Err(e) => Err(e.into()),
    }
}

async fn seal(State(cas): CasState) -> impl IntoResponse {
    // The vault audits its own sealing.
    cas.vault.seal();
    cas.invalidate();
    StatusCode::NO_CONTENT
}

fn session_text(body: &[u8]) -> CasResult<&str> {
    std::str::from_utf8(body).map_err(|_| bad("the session must be UTF-8 YAML"))
}

/// Resolves `import`s from other sessions' exported secrets, for an importing session owned
/// by `owner`: an export names the importer's owner as well as its name.
struct Imports<'a> {
    cas: &'a Cas,
    owner: &'a ClientKey,
}

impl ImportResolver for Imports<'_> {
    fn resolve(
        &self,
        from_session: &str,
        secret: &str,
        importing: &str,
    ) -> Result<SecretValue, SessionError> {
        let missing = || SessionError::ImportRefused {
            session: from_session.into(),
            secret: secret.into(),
            reason: "no such session or secret".into(),
        };
        let Ok(Some((exporting, _))) = self.cas.load_session(from_session) else {
            return Err(missing());
        };
        cloister_cas_session::check_export(&exporting, secret, importing, self.owner)?;
        let secrets = self.cas.load_secrets(from_session).map_err(|_| missing())?;
        secrets.get(secret).cloned().ok_or_else(missing)
    }
}

/// Why a prepared session write was not committed.
enum WriteRefused {
    /// The session changed after it was read for this write.
    Changed,
    /// The namespace belongs to someone else.
    Namespace(String),
}

async fn write_session(
    cas: &Cas,
    client: &ClientKey,
    body: &[u8],
    path_name: Option<&str>,
) -> CasResult<SessionWritten> {
    let text = session_text(body)?;
    let session = cloister_cas_session::parse_session(text)?;
    if let Some(name) = path_name
        && name != session.name
    {
        return Err(bad(format!(
            "the URL names session {name:?} but the body defines {:?}",
            session.name
        )));
    }
    let current = cas.load_session(&session.name)?;
    if path_name.is_none() && current.is_some() {
        return Err(CasError(
            StatusCode::CONFLICT,
            format!(
                "session {:?} exists; update it with its predecessor",
                session.name
            ),
        ));
    }
    if path_name.is_some() && current.is_none() {
        return Err(CasError(
            StatusCode::NOT_FOUND,
            format!("no session {:?}", session.name),
        ));
    }
    let creator = match &current {
        Some((old, stored)) => {
            let creator = stored.creator()?;
            if !old.access_policy.may_update(client, &creator) {
                cas.audit(
                    "session-update-refused",
                    &client.to_string(),
                    &session.name,
                    json!({"reason": "not allowed by the access policy"}),
                );
                return Err(forbidden(format!(
                    "not allowed to update session {:?}",
                    session.name
                )));
            }
            creator
        }
        None => client.clone(),
    };
    if let Err(e) = session.check_predecessor(current.as_ref().map(|(s, _)| s)) {
        cas.audit(
            "session-update-refused",
            &client.to_string(),
            &session.name,
            json!({"reason": e.to_string()}),
        );
        return Err(e.into());
    }
    let previous_secrets = match &current {
        Some(_) => Some(cas.load_secrets(&session.name)?),
        None => None,
    };
    let previous = current.as_ref().map(|(s, _)| s).zip(previous_secrets.as_ref());
    let refused_kind = if current.is_some() {
        "session-update-refused"
    } else {
        "session-create-refused"
    };
    let secrets = cloister_cas_session::materialize_secrets(
        &session,
        previous,
        &Imports { cas, owner: &creator },
        OffsetDateTime::now_utc(),
    )
    .map_err(|e| {
        if matches!(e, SessionError::ImportRefused { .. }) {
            cas.audit(
                refused_kind,
                &client.to_string(),
                &session.name,
                json!({"reason": e.to_string()}),
            );
        }
        CasError::from(e)
    })?;
    let hash = session.hash();
    let stored = StoredSession {
        yaml: text.to_owned(),
        hash: hash.clone(),
        creator: creator.to_string(),
        updated: OffsetDateTime::now_utc(),
    };
    let stored = serde_json::to_vec(&stored).map_err(|_| internal("encode"))?;
    let sealed_secrets = Zeroizing::new(serde_json::to_vec(&secrets).map_err(|_| internal("encode"))?);
    let name = session.name.clone();
    let predecessor = current.as_ref().map(|(_, s)| s.hash.clone());
    let kind = if current.is_some() {
        "session-update"
    } else {
        "session-create"
    };
    let actor = client.to_string();
    // The checks above are repeated against the transaction's view, so that the decision, the
    // namespace claim, the session and its audit entry are one commit.
    let committed = cas.vault.write(|txn| {
        let stored_now = match txn.get(SESSIONS, &name)? {
            Some(raw) => Some(
                serde_json::from_slice::<StoredSession>(&raw)
                    .map_err(|_| corrupt("session"))?
                    .hash,
            ),
            None => None,
        };
        if stored_now != predecessor {
            return Ok(Err(WriteRefused::Changed));
        }
        if current.is_none() {
            let namespace = namespace_of(&name);
            let claim = namespace_claim(namespace, client, &|t, k| txn.get(t, k), &|t, p| txn.keys(t, p))?;
            match claim {
                Err(reason) => return Ok(Err(WriteRefused::Namespace(reason))),
                Ok(NamespaceClaim::Owned) => {}
                Ok(NamespaceClaim::Record(how)) => {
                    let record = serde_json::to_vec(&StoredNamespace {
                        owner: actor.clone(),
                        how,
                        since: OffsetDateTime::now_utc(),
                    })
                    .map_err(|_| corrupt("namespace"))?;
                    txn.put(NAMESPACES, namespace, &record)?;
                    txn.audit_append(
                        "namespace-claim",
                        &actor,
                        namespace,
                        json!({"how": how.as_str(), "session": name}),
                    )?;
                }
            }
        }
        txn.put(SESSIONS, &name, &stored)?;
        txn.put(SECRETS, &name, &sealed_secrets)?;
        txn.audit_append(
            kind,
            &actor,
            &name,
            json!({"hash": hash, "predecessor": predecessor}),
        )?;
        Ok(Ok(()))
    })?;
    match committed {
        Ok(()) => {
            cas.invalidate();
            Ok(SessionWritten { name, hash })
        }
        Err(WriteRefused::Changed) => Err(CasError(
            StatusCode::CONFLICT,
            format!("session {name:?} changed while this write was prepared; read it again and retry"),
        )),
        Err(WriteRefused::Namespace(reason)) => {
            cas.audit(refused_kind, &actor, &name, json!({"reason": reason}));
            Err(forbidden(reason))
        }
    }
}

async fn create_session(State(cas): CasState, Signed(client, body): Signed) -> CasResult<impl IntoResponse> {
    let written = write_session(&cas, &client, &body, None).await?;
    Ok((StatusCode::CREATED, axum::Json(written)))
}

async fn update_session(
    State(cas): CasState,
    UrlPath(name): UrlPath<String>,
    Signed(client, body): Signed,
) -> CasResult<impl IntoResponse> {
    Ok(axum::Json(
        write_session(&cas, &client, &body, Some(&name)).await?,
    ))
}

/// The session for its owner (as submitted, explicit values included: the read is audited
/// when it holds any) or, for other readers, with every explicit secret value removed.
async fn get_session(
    State(cas): CasState,
    UrlPath(name): UrlPath<String>,
    Signed(client, _): Signed,
) -> CasResult<impl IntoResponse> {
    let (session, stored) = cas
        .load_session(&name)?
        .ok_or_else(|| CasError(StatusCode::NOT_FOUND, format!("no session {name:?}")))?;
    let creator = stored.creator()?;
    if !session.access_policy.may_read(&client, &creator) {
        cas.audit("session-read-refused", &client.to_string(), &name, json!({}));
        return Err(forbidden(format!("not allowed to read session {name:?}")));
    }
    let explicit: Vec<&str> = session
        .secrets
        .iter()
        .filter(|s| s.value.is_some())
        .map(|s| s.name.as_str())
        .collect();
    if client == creator {
        if !explicit.is_empty() {
            cas.record_read(
                "session-read",
                &client,
                &name,
                json!({"hash": stored.hash, "explicit_values": explicit}),
            )?;
        }
        return Ok(axum::Json(SessionRecord {
            name,
            hash: stored.hash,
            yaml: stored.yaml,
            creator: stored.creator,
            redacted: false,
        }));
    }
    let mut redacted = session.clone();
    for secret in &mut redacted.secrets {
        secret.value = None;
    }
    let yaml = serde_json::to_string_pretty(&redacted).map_err(|_| internal("encode"))?;
    Ok(axum::Json(SessionRecord {
        name,
        hash: stored.hash,
        yaml,
        creator: stored.creator,
        redacted: true,
    }))
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    prefix: String,
}

async fn list_sessions(
    State(cas): CasState,
    Query(query): Query<ListQuery>,
    Signed(client, _): Signed,
) -> CasResult<impl IntoResponse> {
    let mut readable = BTreeMap::new();
    for name in cas.vault.keys(SESSIONS, &query.prefix)? {
        if let Some((session, stored)) = cas.load_session(&name)?
            && let Ok(creator) = stored.creator()
            && session.access_policy.may_read(&client, &creator)
        {
            readable.insert(name, stored.hash);
        }
    }
    Ok(axum::Json(readable))
}

#[derive(Deserialize)]
struct SecretQuery {
    session: String,
    name: String,
    #[serde(default)]
    format: Option<String>,
}

/// A secret's raw value for the session's owner, or the public part of an `export_public`
/// secret for its other readers. Every answer is in the audit log before it goes out.
async fn read_secret(
    State(cas): CasState,
    Query(query): Query<SecretQuery>,
    Signed(client, _): Signed,
) -> CasResult<Response> {
    let no_session = || CasError(StatusCode::NOT_FOUND, format!("no session {:?}", query.session));
    let (session, stored) = cas.load_session(&query.session)?.ok_or_else(no_session)?;
    let creator = stored.creator()?;
    let refuse = |reason: &str| {
        cas.audit(
            "secret-read-refused",
            &client.to_string(),
            &query.session,
            json!({"secret": query.name, "reason": reason}),
        );
        forbidden(reason)
    };
    if !session.access_policy.may_read(&client, &creator) {
        return Err(refuse(&format!(
            "not allowed to read secrets of session {:?}",
            query.session
        )));
    }
    let not_found = || {
        CasError(
            StatusCode::NOT_FOUND,
            format!("no secret {:?} in session {:?}", query.name, query.session),
        )
    };
    let spec = session
        .secrets
        .iter()
        .find(|s| s.name == query.name)
        .ok_or_else(not_found)?;
    let secrets = cas.load_secrets(&query.session)?;
    let value = secrets.get(&query.name).ok_or_else(not_found)?;
    let owner = client == creator;
    let bytes = if owner {
        Zeroizing::new(cloister_cas_session::secret_bytes(
            value,
            query.format.as_deref(),
        )?)
    } else if !spec.export_public {
        return Err(refuse(
            "only the session's owner reads secret values; its other readers get the public part \
             of secrets marked export_public",
        ));
    } else {
        Zeroizing::new(
            cloister_cas_session::public_part(value, query.format.as_deref()).ok_or_else(|| {
                refuse(
                    "readers other than the session's owner get only the public part \
                     (publickey, crt, chain, hex or base64 of it)",
                )
            })?,
        )
    };
    let part = if owner { "secret" } else { "public part" };
    cas.record_read(
        "secret-read",
        &client,
        &query.session,
        json!({"secret": query.name, "part": part, "format": query.format}),
    )?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        bytes.to_vec(),
    )
        .into_response())
}

async fn add_platform(State(cas): CasState, Signed(client, body): Signed) -> CasResult<impl IntoResponse> {
    if !cas.is_admin(&client) {
        cas.audit(
            "platform-add-refused",
            &client.to_string(),
            "platforms",
            json!({"reason": "not an administrator"}),
        );
        return Err(forbidden("only CAS administrators register platforms"));
    }
    let request: PlatformRequest =
        serde_json::from_slice(&body).map_err(|e| bad(format!("malformed platform request: {e}")))?;
    let mut key = [0u8; 32];
    hex::decode_to_slice(request.public_key.trim(), &mut key)
        .map_err(|_| bad("public_key must be 64 hex digits"))?;
    let record = serde_json::to_vec(&StoredPlatform {
        name: request.name.clone(),
        added_by: client.to_string(),
    })
    .map_err(|_| internal("encode"))?;
    let id = hex::encode(key);
    cas.vault.write(|txn| {
        txn.put(PLATFORMS, &id, &record)?;
        txn.audit_append(
            "platform-add",
            &client.to_string(),
            &id,
            json!({"name": request.name, "tee": "sim"}),
        )
        .map(|_| ())
    })?;
    if let Ok(mut sim) = cas.sim.write() {
        sim.add_key(key);
    }
    Ok(StatusCode::CREATED)
}

/// `POST /v1/namespaces`: an administrator declares (or re-assigns) a namespace's owner.
async fn declare_namespace(
    State(cas): CasState,
    Signed(client, body): Signed,
) -> CasResult<impl IntoResponse> {
    if !cas.is_admin(&client) {
        cas.audit(
            "namespace-declare-refused",
            &client.to_string(),
            "namespaces",
            json!({"reason": "not an administrator"}),
        );
        return Err(forbidden("only CAS administrators declare namespaces"));
    }
    let request: NamespaceRequest =
        serde_json::from_slice(&body).map_err(|e| bad(format!("malformed namespace request: {e}")))?;
    if !valid_namespace(&request.name) {
        return Err(bad(format!(
            "{:?} is not a namespace: one segment of [a-z0-9][a-z0-9-_.]*",
            request.name
        )));
    }
    let owner: ClientKey = request.owner.parse().map_err(|e| bad(format!("owner: {e}")))?;
    let record = serde_json::to_vec(&StoredNamespace {
        owner: owner.to_string(),
        how: NamespaceOrigin::Declared,
        since: OffsetDateTime::now_utc(),
    })
    .map_err(|_| internal("encode"))?;
    cas.vault.write(|txn| {
        let previous = match txn.get(NAMESPACES, &request.name)? {
            Some(raw) => Some(
                serde_json::from_slice::<StoredNamespace>(&raw)
                    .map_err(|_| corrupt("namespace"))?
                    .owner,
            ),
            None => None,
        };
        txn.put(NAMESPACES, &request.name, &record)?;
        txn.audit_append(
            "namespace-declare",
            &client.to_string(),
            &request.name,
            json!({"owner": owner.to_string(), "previous": previous}),
        )
        .map(|_| ())
    })?;
    Ok((
        StatusCode::CREATED,
        axum::Json(NamespaceInfo {
            name: request.name,
            owner: owner.to_string(),
            how: NamespaceOrigin::Declared.as_str().into(),
        }),
    ))
}

/// `GET /v1/namespaces`: every namespace for administrators, one's own for anyone else.
async fn list_namespaces(State(cas): CasState, Signed(client, _): Signed) -> CasResult<impl IntoResponse> {
    let admin = cas.is_admin(&client);
    let shown = client.to_string();
    let mut out = Vec::new();
    for name in cas.vault.keys(NAMESPACES, "")? {
        let Some(raw) = cas.vault.get(NAMESPACES, &name)? else {
            continue;
        };
        let record: StoredNamespace =
            serde_json::from_slice(&raw).map_err(|_| internal("corrupt namespace"))?;
        if admin || record.owner == shown {
            out.push(NamespaceInfo {
                name,
                owner: record.owner,
                how: record.how.as_str().into(),
            });
        }
    }
    Ok(axum::Json(out))
}

async fn list_platforms(State(cas): CasState, _: Signed) -> CasResult<impl IntoResponse> {
    Ok(axum::Json(cas.vault.keys(PLATFORMS, "")?))
}

/// A fresh nonce. Nothing is stored and nothing read: the request has no body.
async fn issue_nonce(State(cas): CasState, _: Body) -> CasResult<impl IntoResponse> {
    cas.require_unsealed()?;
    Ok(axum::Json(NonceResponse {
        nonce: hex::encode(cas.nonces.issue()),
        expires_in: cas.nonces.ttl().as_secs(),
    }))
}

fn endorsements(cas: &Cas, request: &AttestRequest, tee: Tee, evidence: &[u8]) -> CasResult<Endorsements> {
    if matches!(tee, Tee::Sgx | Tee::Tdx) {
        return dcap_endorsements(cas, request, evidence);
    }
    if let Some(vcek) = &request.vcek {
        return snp_endorsements(vcek, request.chain.as_deref()).map(Endorsements::Snp);
    }
    Ok(Endorsements::None)
}

/// The CAS's own DCAP collateral first, the request's only as a fallback, and neither older
/// than what the CAS has already seen (see `dcap_collateral`).
fn dcap_endorsements(cas: &Cas, request: &AttestRequest, evidence: &[u8]) -> CasResult<Endorsements> {
    let chosen = cas
        .dcap_collateral
        .choose(
            &cas.vault,
            &cas.dcap,
            cas.config.collateral.as_deref(),
            request.collateral.as_ref(),
            evidence,
            OffsetDateTime::now_utc(),
        )
        .map_err(bad)?;
    Ok(chosen.map_or(Endorsements::None, Endorsements::Dcap))
}

/// The request's `vcek` (base64 DER or PEM): a VCEK, or a VLEK as clouds such as AWS
/// provision. The verifier chains either to AMD's built-in roots (VCEK → ASK → ARK, VLEK →
/// ASVK → ARK, as the report's SIGNING_KEY demands), so `chain` is optional for both.
fn snp_endorsements(vcek: &str, chain: Option<&str>) -> CasResult<SnpEndorsements> {
    let der = B64
        .decode(vcek.trim())
        .unwrap_or_else(|_| vcek.as_bytes().to_vec());
    SnpEndorsements::new(&der, chain.map(str::as_bytes)).map_err(|e| bad(format!("vcek: {e}")))
}

/// One attestation: a request naming a malformed session or service is answered 400 and not
/// recorded; every refusal after that is answered 403 with its reason and audited within the
/// bounds of [`RefusalRecorder`].
async fn attest(State(cas): CasState, Body(body): Body) -> CasResult<impl IntoResponse> {
    cas.require_unsealed()?;
    let request: AttestRequest =
        serde_json::from_slice(&body).map_err(|e| bad(format!("malformed attestation request: {e}")))?;
    drop(body);
    if !crate::names::valid_session_name(&request.session) {
        return Err(bad(
            "invalid session name: segments of [a-z0-9][a-z0-9-_.]* separated by '/', at most 128 characters",
        ));
    }
    if !crate::names::valid_service_name(&request.service) {
        return Err(bad(
            "invalid service name: [a-z0-9][a-z0-9-_.]*, at most 64 characters",
        ));
    }
    let cas2 = cas.clone();
    tokio::task::spawn_blocking(move || attest_blocking(&cas2, &request))
        .await
        .map_err(|_| {
            CasError(
                StatusCode::INTERNAL_SERVER_ERROR,
                "attestation task failed".into(),
            )
        })?
        .map(axum::Json)
}

/// Writes refusal audit records (durably, in the attestations' group commit). A refusal is
/// answered as one whether or not its record could be written; a failure is logged.
fn record_refusals(cas: &Cas, records: Vec<AuditRecord>) {
    if records.is_empty() {
        return;
    }
    if let Err(e) = cas.releases.append(records) {
        tracing::error!(error = %e, "cannot record a refused attestation in the audit log");
    }
}

/// The checks run cheapest first: the nonce (a MAC, a clock reading, a set lookup) and the
/// encodings before any signature or certificate, so junk costs the CAS little; the nonce is
/// used up only by evidence that verified and binds it, so junk cannot use up nonces either.
fn attest_blocking(cas: &Cas, request: &AttestRequest) -> CasResult<AttestResponse> {
    let subject = format!("{}#{}", request.session, request.service);
    let refuse = |class: RefusalClass, tee: Option<Tee>, measurement: Option<&str>, reason: String| {
        let refusal = Refusal {
            class,
            actor: format!("workload:{}", tee.map_or("unknown".to_owned(), |t| t.to_string())),
            subject: &subject,
            reason: &reason,
            measurement,
        };
        record_refusals(
            cas,
            cas.refusals
                .note(&refusal, Instant::now(), OffsetDateTime::now_utc()),
        );
        forbidden(reason)
    };
    let mut nonce = [0u8; crate::nonce::NONCE_LEN];
    hex::decode_to_slice(request.nonce.trim(), &mut nonce)
        .map_err(|_| refuse(RefusalClass::Nonce, None, None, NonceError::Malformed.to_string()))?;
    let fresh = cas
        .nonces
        .check(&nonce)
        .map_err(|e| refuse(RefusalClass::Nonce, None, None, e.to_string()))?;
    let mut public_key = [0u8; 32];
    hex::decode_to_slice(request.public_key.trim(), &mut public_key).map_err(|_| {
        refuse(
            RefusalClass::Malformed,
            None,
            None,
            "malformed public key: 64 hex digits (X25519)".into(),
        )
    })?;
    let evidence = B64.decode(request.evidence.trim()).map_err(|_| {
        refuse(
            RefusalClass::Malformed,
            None,
            None,
            "evidence is not base64".into(),
        )
    })?;
    let tee = cloister_attestation::detect(&evidence).map_err(|e| {
        refuse(
            RefusalClass::Malformed,
            None,
            None,
            format!("unrecognised evidence: {e}"),
        )
    })?;
    let endorsements = endorsements(cas, request, tee, &evidence)
        .map_err(|e| refuse(RefusalClass::Endorsements, Some(tee), None, e.1))?;
    let now = OffsetDateTime::now_utc();
    let verified = match tee {
        Tee::Sgx | Tee::Tdx => cas.dcap.verify(&evidence, &endorsements, now),
        Tee::Snp => cas.snp.verify(&evidence, &endorsements, now),
        Tee::Sim => match cas.sim.read() {
            Ok(sim) => sim.verify(&evidence, &endorsements, now),
            Err(_) => {
                return Err(CasError(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "verifier unavailable".into(),
                ));
            }
        },
    }
    .map_err(|e| {
        refuse(
            RefusalClass::Evidence,
            Some(tee),
            None,
            format!("evidence not authentic: {e}"),
        )
    })?;
    let measurement = verified.summary.measurement.clone();
    verified.check_binding(&nonce, &public_key).map_err(|_| {
        refuse(
            RefusalClass::Binding,
            Some(tee),
            Some(&measurement),
            "report data does not bind the nonce and the public key".into(),
        )
    })?;
    // Authentic evidence for this nonce: from here on, the nonce is spent whatever follows.
    cas.nonces
        .consume(&fresh)
        .map_err(|e| refuse(RefusalClass::Nonce, Some(tee), Some(&measurement), e.to_string()))?;
    check_launch(cas, request, &verified.summary)
        .map_err(|reason| refuse(RefusalClass::Launch, Some(tee), Some(&measurement), reason))?;
    // A load can be refused too (an import its exporter withdrew): audited like any refusal.
    let loaded = cas
        .loaded(&request.session)
        .map_err(|e| match e.0 {
            StatusCode::FORBIDDEN => refuse(RefusalClass::Session, Some(tee), Some(&measurement), e.1),
            _ => e,
        })?
        .ok_or_else(|| {
            refuse(
                RefusalClass::Session,
                Some(tee),
                Some(&measurement),
                format!("no session {:?}", request.session),
            )
        })?;
    let session = &loaded.session;
    if session.service(&request.service).is_none() {
        return Err(refuse(
            RefusalClass::Session,
            Some(tee),
            Some(&measurement),
            format!("session has no service {:?}", request.service),
        ));
    }
    if tee == Tee::Sim
        && !session
            .security
            .attestation
            .tolerate
            .contains(&cloister_attestation::Tolerance::Simulation)
    {
        return Err(refuse(
            RefusalClass::Policy,
            Some(tee),
            Some(&measurement),
            "simulation evidence is not tolerated by this session".into(),
        ));
    }
    let alternative =
        cloister_cas_session::match_evidence(session, &request.service, &verified).map_err(|reasons| {
            refuse(
                RefusalClass::Policy,
                Some(tee),
                Some(&measurement),
                reasons.join("; "),
            )
        })?;
    let config = cloister_cas_session::render_service(session, &request.service, &loaded.secrets)?;
    let hash = loaded.hash.clone();
    let plaintext = zeroize::Zeroizing::new(
        serde_json::to_vec(&released_config(
            cas,
            &request.session,
            &request.service,
            &hash,
            config,
        )?)
        .map_err(|_| CasError(StatusCode::INTERNAL_SERVER_ERROR, "encode".into()))?,
    );
    let (enc, ciphertext) = cloister_cas_client::seal::seal(
        &public_key,
        &cloister_cas_client::seal::config_info(&hash),
        &nonce,
        &plaintext,
    )
    .map_err(|e| {
        refuse(
            RefusalClass::Release,
            Some(tee),
            Some(&measurement),
            e.to_string(),
        )
    })?;
    let actor = format!("workload:{tee}");
    let released: Vec<&str> = session.secrets.iter().map(|s| s.name.as_str()).collect();
    let simulation = tee == Tee::Sim;
    // Both entries reach the disk (in a group commit shared with concurrent attestations)
    // before the configuration goes out: never a release without its record.
    cas.releases
        .append(vec![
            (
                "attest-ok".into(),
                actor.clone(),
                subject.clone(),
                json!({"measurement": measurement, "alternative": alternative, "tcb_status": verified.tcb_status, "simulation": simulation}),
            ),
            (
                "secret-release".into(),
                actor,
                subject.clone(),
                json!({"session_hash": hash, "secrets": released, "simulation": simulation}),
            ),
        ])
        .map_err(|e| {
            tracing::error!(error = %e, "cannot record a release");
            CasError(StatusCode::INTERNAL_SERVER_ERROR, "cannot record the release".into())
        })?;
    Ok(AttestResponse {
        session_hash: hash,
        enc: B64.encode(enc),
        ciphertext: B64.encode(ciphertext),
    })
}

/// Checks that the evidence's launch configuration register names this CAS, the session and
/// the service asked for (see [`InitData`]): a TEE the host launched for another CAS (one that
/// could hand its runtime other code to run), another session or another service gets nothing.
fn check_launch(
    cas: &Cas,
    request: &AttestRequest,
    summary: &cloister_attestation::EvidenceSummary,
) -> Result<(), String> {
    let identity = cas
        .vault
        .identity_public()
        .ok_or_else(|| "the CAS identity is unavailable".to_owned())?;
    let init = InitData::new(&crate::tls::pin_of(&identity), &request.session, &request.service)
        .map_err(|e| e.to_string())?;
    let Some(expected) = init.config_id(summary.tee).map_err(|e| e.to_string())? else {
        // SGX under Gramine: the init-data is a trusted file, covered by MRENCLAVE.
        return Ok(());
    };
    match summary.launch_config() {
        Some(actual) if actual.eq_ignore_ascii_case(&hex::encode(&expected)) => Ok(()),
        actual => Err(format!(
            "the TEE was launched for another CAS, session or service: its launch configuration \
             register holds {}, {}#{} at this CAS needs {}",
            actual.unwrap_or("nothing"),
            request.session,
            request.service,
            hex::encode(expected)
        )),
    }
}

/// The sealed answer to an attestation: the rendered service configuration, plus the records
/// of the service's encrypted volumes and the grant that lets this workload commit new ones.
fn released_config(
    cas: &Cas,
    session: &str,
    service: &str,
    session_hash: &str,
    config: cloister_cas_session::ServiceConfig,
) -> CasResult<ReleasedConfig> {
    let prefix = crate::volumes::service_prefix(session, service);
    let mut volumes = BTreeMap::new();
    for key in cas.vault.keys(VOLUMES, &prefix)? {
        let state = cas
            .vault
            .get(VOLUMES, &key)?
            .and_then(|bytes| crate::volumes::parse_state(&bytes))
            .unwrap_or_default();
        volumes.insert(key[prefix.len()..].to_owned(), state);
    }
    let expires = OffsetDateTime::now_utc().unix_timestamp() + crate::volumes::GRANT_LIFETIME_SECS;
    let volume_grant =
        crate::volumes::issue_grant(&cas.vault.identity()?, session, service, session_hash, expires);
    Ok(ReleasedConfig {
        session_hash: session_hash.to_owned(),
        command: config.command,
        environment: config.environment,
        pwd: config.pwd,
        files: config
            .files
            .into_iter()
            .map(|f| ReleasedFile {
                path: f.path,
                content: f.content,
                mode: f.mode,
            })
            .collect(),
        volumes,
        volume_grant,
    })
}

async fn commit_volume(State(cas): CasState, Body(body): Body) -> CasResult<impl IntoResponse> {
    cas.require_unsealed()?;
    let request: VolumeCommit =
        serde_json::from_slice(&body).map_err(|e| bad(format!("malformed volume commit: {e}")))?;
    if !crate::names::valid_session_name(&request.session)
        || !crate::names::valid_service_name(&request.service)
    {
        return Err(bad("invalid session or service name"));
    }
    if !crate::volumes::valid_volume_name(&request.volume) {
        return Err(bad("invalid volume name"));
    }
    if !crate::volumes::valid_tag(&request.tag) {
        return Err(bad("the tag must be a SHA-256 in lowercase hex"));
    }
    let loaded = cas
        .loaded(&request.session)?
        .ok_or_else(|| forbidden(format!("no session {:?}", request.session)))?;
    let identity = cas
        .vault
        .identity_public()
        .and_then(|k| ed25519_dalek::VerifyingKey::from_bytes(&k).ok())
        .ok_or_else(|| CasError(StatusCode::SERVICE_UNAVAILABLE, "no identity".into()))?;
    crate::volumes::check_grant(
        &identity,
        &request.grant,
        &request.session,
        &request.service,
        &loaded.hash,
        OffsetDateTime::now_utc().unix_timestamp(),
    )
    .map_err(forbidden)?;
    let key = crate::volumes::record_key(&request.session, &request.service, &request.volume);
    let subject = format!("{}#{}", request.session, request.service);
    let committed = cas.vault.write(|txn| {
        let current = txn
            .get(VOLUMES, &key)?
            .and_then(|bytes| crate::volumes::parse_state(&bytes))
            .unwrap_or_default();
        if current.version != request.from_version {
            return Ok(Err(current));
        }
        let next = VolumeState {
            version: current.version + 1,
            tag: request.tag.clone(),
        };
        let encoded =
            serde_json::to_vec(&next).map_err(|e| cloister_cas_store::StoreError::Corrupt(e.to_string()))?;
        txn.put(VOLUMES, &key, &encoded)?;
        txn.audit_append(
            "volume-commit",
            "workload",
            &subject,
            json!({"volume": request.volume, "version": next.version, "tag": next.tag}),
        )?;
        Ok(Ok(next))
    })?;
    match committed {
        Ok(state) => Ok(axum::Json(state)),
        Err(current) => Err(CasError(
            StatusCode::CONFLICT,
            format!(
                "volume {:?} is at version {}, not {}: it changed since this workload started",
                request.volume, current.version, request.from_version
            ),
        )),
    }
}

#[derive(Deserialize)]
struct AuditQuery {
    #[serde(default)]
    from: u64,
    #[serde(default)]
    limit: Option<usize>,
}

async fn audit(
    State(cas): CasState,
    Query(query): Query<AuditQuery>,
    Signed(client, _): Signed,
) -> CasResult<impl IntoResponse> {
    if !cas.is_admin(&client) {
        return Err(forbidden("only CAS administrators read the audit log"));
    }
    Ok(axum::Json(cas.vault.audit_entries(
        query.from,
        query.limit.unwrap_or(10_000).min(100_000),
    )?))
}

/// Whether a path is the operator socket of a data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("cas.sock")
}

#[cfg(test)]
mod snp_endorsement_tests {
    use cloister_attestation::{EvidenceVerifier as _, SnpVerifier};
    use time::macros::datetime;

    use super::*;

    const VLEK_REPORT: &[u8] = include_bytes!("../../attestation/testdata/snp/report-vlek-milan.bin");
    const VLEK_AUXBLOB: &[u8] = include_bytes!("../../attestation/testdata/snp/auxblob-vlek-milan.bin");

    /// A VLEK sent as `vcek`, base64 DER or PEM and without `chain`, verifies a VLEK-signed
    /// report through the built-in ASVK.
    #[test]
    fn vlek_in_the_vcek_field_verifies_with_the_built_in_chain() {
        let vlek = &VLEK_AUXBLOB[48..48 + 0x527];
        let pem_text = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            B64.encode(vlek)
        );
        for vcek in [B64.encode(vlek), pem_text] {
            let Ok(endorsement) = snp_endorsements(&vcek, None) else {
                panic!("VLEK refused");
            };
            SnpVerifier::new()
                .verify(
                    VLEK_REPORT,
                    &Endorsements::Snp(endorsement),
                    datetime!(2026-06-01 00:00:00 UTC),
                )
                .expect("verifies without a chain");
        }
        let err = snp_endorsements("bm90IGEgY2VydGlmaWNhdGU=", None).expect_err("not a certificate");
        assert_eq!(err.0, StatusCode::BAD_REQUEST);
        assert!(err.1.starts_with("vcek: "), "{}", err.1);
    }
}

#[cfg(test)]
mod namespace_tests {
    use super::*;

    fn key(n: u8) -> ClientKey {
        cloister_cas_client::sign::ClientIdentity::from_seed(&[n; 32])
            .public()
            .parse()
            .unwrap()
    }

    /// A vault as two maps: records by (table, key).
    #[derive(Default)]
    struct Records(BTreeMap<(String, String), Vec<u8>>);

    impl Records {
        fn session(mut self, name: &str, creator: &ClientKey) -> Self {
            let stored = StoredSession {
                yaml: format!("name: {name}\n"),
                hash: "00".repeat(32),
                creator: creator.to_string(),
                updated: OffsetDateTime::UNIX_EPOCH,
            };
            self.0.insert(
                (SESSIONS.into(), name.into()),
                serde_json::to_vec(&stored).unwrap(),
            );
            self
        }

        fn namespace(mut self, name: &str, owner: &ClientKey) -> Self {
            let record = StoredNamespace {
                owner: owner.to_string(),
                how: NamespaceOrigin::Declared,
                since: OffsetDateTime::UNIX_EPOCH,
            };
            self.0.insert(
                (NAMESPACES.into(), name.into()),
                serde_json::to_vec(&record).unwrap(),
            );
            self
        }

        /// The decision for `client` creating a session in `namespace`, as text.
        fn decide(&self, namespace: &str, client: &ClientKey) -> Result<&'static str, String> {
            let get = |table: &str, key: &str| {
                Ok(self
                    .0
                    .get(&(table.to_owned(), key.to_owned()))
                    .map(|v| Zeroizing::new(v.clone())))
            };
            let keys = |table: &str, prefix: &str| {
                Ok(self
                    .0
                    .keys()
                    .filter(|(t, k)| t == table && k.starts_with(prefix))
                    .map(|(_, k)| k.clone())
                    .collect())
            };
            namespace_claim(namespace, client, &get, &keys)
                .unwrap()
                .map(|claim| match claim {
                    NamespaceClaim::Owned => "owned",
                    NamespaceClaim::Record(how) => how.as_str(),
                })
        }
    }

    #[test]
    fn namespaces_go_to_their_first_creator_or_their_declared_owner() {
        let (x, y) = (key(1), key(2));
        assert_eq!(namespace_of("team/a/b"), "team");
        assert_eq!(namespace_of("team"), "team");
        assert!(valid_namespace("team-1.x") && !valid_namespace("team/a") && !valid_namespace("Team"));
        assert!(!valid_namespace(""));

        let empty = Records::default();
        assert_eq!(empty.decide("team", &x), Ok("claimed"));

        // Sessions from before owners were recorded, all of one creator: theirs. A namespace
        // that merely starts with the same letters does not count.
        let solo = Records::default()
            .session("solo", &x)
            .session("solo/a", &x)
            .session("solo2/b", &y);
        assert_eq!(solo.decide("solo", &x), Ok("inherited"));
        let refused = solo.decide("solo", &y).unwrap_err();
        assert!(refused.contains(&x.to_string()), "{refused}");
        assert_eq!(solo.decide("solo2", &y), Ok("inherited"));

        // Several creators: nobody, until an administrator declares it.
        let shared = Records::default().session("old/a", &x).session("old/b", &y);
        for client in [&x, &y] {
            let refused = shared.decide("old", client).unwrap_err();
            assert!(refused.contains("administrator must declare"), "{refused}");
        }
        let declared = shared.namespace("old", &y);
        assert_eq!(declared.decide("old", &y), Ok("owned"));
        let refused = declared.decide("old", &x).unwrap_err();
        assert!(
            refused.contains(&y.to_string()) && refused.contains("declared"),
            "{refused}"
        );
    }
}
