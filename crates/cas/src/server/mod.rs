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
//!
//! This module starts the CAS and assembles its routes over the shared state. The rest, by
//! what each owns:
//! - `accept`: the TLS accept loop (connection cap, handshake deadline);
//! - `body`, `signed`: reading request bodies within their route's limit, and the
//!   signed-request extractor; `error`: how refusals are answered;
//! - `operator`: status, unseal, seal; `sessions` (with `session_cache`), `namespaces`,
//!   `secrets`, `platforms`: the owners' and administrators' resources;
//! - `attest`: nonces and attestation (each one counts a run of its service); `volumes`:
//!   volume commits of attested workloads; `counters`: their counter increments, and counter
//!   reads;
//! - `governance` (with `history`, `approvers`): boards' decisions on changes, proposals and
//!   votes, the sweep of open proposals, session histories, auditors, keys bound to
//!   attestations;
//! - `audit`: refusals recorded outside a write's own transaction, refusal summaries, and
//!   reading the log.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::handler::Handler as _;
use axum::http::StatusCode;
use axum::routing::{get, post};
use cloister_attestation::{DcapVerifier, SimVerifier, SnpVerifier};
use cloister_cas_session::ClientKey;
use cloister_cas_store::{AuditWriter, StoreError, Vault};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;

use crate::auth::Authenticator;
use crate::nonce::Nonces;
pub use crate::refusals::RefusalAuditLimits;
use crate::refusals::{ATTESTATIONS, REQUESTS, RefusalRecorder};
use body::{ATTEST_BODY, COUNTER_BODY, PLATFORM_BODY, SESSION_BODY, VOLUME_COMMIT_BODY, body_limit};
use error::{CasError, CasResult, sealed_message};
pub use governance::{DEFAULT_OPEN_NAMESPACE_BUDGET, GovernanceConfig};
use session_cache::{Loaded, SessionCache};

mod accept;
mod approvers;
mod attest;
mod audit;
mod body;
mod counters;
mod error;
mod governance;
mod history;
mod namespaces;
mod operator;
mod platforms;
mod secrets;
mod session_cache;
mod sessions;
mod signed;
mod volumes;

// The vault tables the server keeps its records in.
const SESSIONS: &str = "sessions";
const SECRETS: &str = "secrets";
const PLATFORMS: &str = "platforms";
const VOLUMES: &str = "volumes";
const NAMESPACES: &str = "namespaces";
const VERSIONS: &str = "session-versions";
const PROPOSALS: &str = "proposals";
/// Keys bound to attestations, by (session, service, session hash).
const APPROVERS: &str = "approvers";
/// The ids of pending proposals, so that the sweep reads only those.
const PROPOSALS_OPEN: &str = "proposals-open";
/// What the open (undeclared) namespaces use of their budget.
const QUOTAS: &str = "quotas";

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
    /// How many refused attestations, and refused requests of keys without standing, are
    /// audited one by one per window (the rest are summed up).
    pub refusal_audit: RefusalAuditLimits,
    /// Auditors, proposal lifetime and veto window.
    pub governance: GovernanceConfig,
}

/// A running CAS.
pub struct RunningCas {
    /// The operator socket.
    pub socket: PathBuf,
    /// The network address once bound (it binds when unsealed).
    pub addr: watch::Receiver<Option<SocketAddr>>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// How many of `tasks` [`RunningCas::wait`] saw end (they are not awaited again).
    finished: usize,
}

impl RunningCas {
    /// Waits until the network port is open (the CAS is unsealed) and returns its address.
    pub async fn network_addr(&mut self) -> Option<SocketAddr> {
        let addr = self.addr.wait_for(Option::is_some).await.ok()?;
        *addr
    }

    /// Stops both listeners and waits for every task, including the last refusal summary.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks.drain(self.finished..) {
            let _ = task.await;
        }
    }

    /// Waits until the server stops. Cancel-safe: dropped unfinished (a `select!` branch that
    /// lost to a signal), it leaves every task still running for [`RunningCas::shutdown`] to
    /// wait for, so the audit entries written at shutdown are not lost.
    pub async fn wait(&mut self) {
        while let Some(task) = self.tasks.get_mut(self.finished) {
            let _ = task.await;
            self.finished += 1;
        }
    }
}

/// The state both listeners serve; each module adds the methods its resource needs.
struct Cas {
    config: CasConfig,
    vault: Arc<Vault>,
    auth: Authenticator,
    nonces: Nonces,
    refusals: RefusalRecorder,
    /// Refused requests of keys without standing on what they asked about (see
    /// [`Cas::refuse_request`]).
    request_refusals: RefusalRecorder,
    dcap: DcapVerifier,
    dcap_collateral: crate::dcap_collateral::CollateralChoice,
    snp: SnpVerifier,
    sim: RwLock<SimVerifier>,
    unsealed: watch::Sender<bool>,
    /// The network port's address once it is open, so the unseal that opens it can answer
    /// when clients can connect.
    network_open: watch::Receiver<Option<SocketAddr>>,
    /// Parsed sessions with their secrets, so an attestation does not re-parse YAML.
    cache: SessionCache<Loaded>,
    /// Attestations' audit entries (releases and refusals), written by group commit.
    releases: AuditWriter,
}

/// Why [`serve`] could not start the CAS.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The operator socket could not be created.
    #[error(transparent)]
    Socket(#[from] std::io::Error),
    /// The registered platforms could not be read from the unsealed vault.
    #[error("cannot load platforms: {0}")]
    Platforms(String),
    /// The DCAP collateral floor could not be read from the unsealed vault.
    #[error("cannot load the DCAP collateral floor: {0}")]
    CollateralFloor(StoreError),
}

/// Starts the CAS on an initialized vault.
pub async fn serve(config: CasConfig, vault: Arc<Vault>) -> Result<RunningCas, ServeError> {
    let socket = config.data_dir.join("cas.sock");
    let _ = std::fs::remove_file(&socket);
    let unix = UnixListener::bind(&socket)?;
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let (unsealed, mut unsealed_rx) = watch::channel(!vault.status().sealed);
    let (auth, open_at) = Authenticator::starting_now();
    let (addr_tx, addr_rx) = watch::channel(None);
    let cas = Arc::new(Cas {
        vault: vault.clone(),
        auth,
        nonces: Nonces::new(config.nonce_ttl),
        refusals: RefusalRecorder::new(ATTESTATIONS, config.refusal_audit),
        request_refusals: RefusalRecorder::new(REQUESTS, config.refusal_audit),
        dcap: DcapVerifier::new(),
        dcap_collateral: Default::default(),
        snp: SnpVerifier::new(),
        sim: RwLock::new(SimVerifier::new(Vec::<[u8; 32]>::new())),
        unsealed,
        network_open: addr_rx.clone(),
        cache: SessionCache::default(),
        releases: AuditWriter::start(vault.clone()),
        config: config.clone(),
    });
    if !vault.status().sealed {
        cas.load_platforms()
            .map_err(|e| ServeError::Platforms(e.message))?;
        cas.dcap_collateral
            .load(&vault)
            .map_err(ServeError::CollateralFloor)?;
    }
    let (shutdown, shutdown_rx) = watch::channel(false);
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

    tasks.push(tokio::spawn(audit::write_refusal_summaries(
        cas.clone(),
        shutdown_rx.clone(),
    )));

    tasks.push(tokio::spawn(governance::sweep_proposals(
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
        accept::serve_tls(listener, tls, network, stop).await;
    }));
    Ok(RunningCas {
        socket,
        addr: addr_rx,
        shutdown,
        tasks,
        finished: 0,
    })
}

/// The operator socket's routes.
fn local_router(cas: Arc<Cas>) -> Router {
    Router::new()
        .route("/v1/status", get(operator::status))
        .route("/v1/unseal", post(operator::unseal))
        .route("/v1/seal", post(operator::seal))
        .with_state(cas)
}

/// The TLS port's routes, each body-taking one with its own body limit.
fn network_router(cas: Arc<Cas>) -> Router {
    Router::new()
        .route("/v1/status", get(operator::status))
        .route(
            "/v1/sessions",
            post(sessions::create_session.layer(body_limit(SESSION_BODY))).get(sessions::list_sessions),
        )
        .route(
            "/v1/sessions/{*name}",
            get(sessions::get_session).put(sessions::update_session.layer(body_limit(SESSION_BODY))),
        )
        .route("/v1/secret", get(secrets::read_secret))
        .route(
            "/v1/platforms",
            post(platforms::add_platform.layer(body_limit(PLATFORM_BODY))).get(platforms::list_platforms),
        )
        .route(
            "/v1/namespaces",
            post(namespaces::declare_namespace.layer(body_limit(PLATFORM_BODY)))
                .get(namespaces::list_namespaces),
        )
        .route("/v1/attest/nonce", post(attest::issue_nonce))
        .route("/v1/attest", post(attest::attest.layer(body_limit(ATTEST_BODY))))
        .route(
            "/v1/volumes/commit",
            post(volumes::commit_volume.layer(body_limit(VOLUME_COMMIT_BODY))),
        )
        .route(
            "/v1/counters/increment",
            post(counters::increment_counter.layer(body_limit(COUNTER_BODY))),
        )
        .route("/v1/counters", get(counters::read_counters))
        .route("/v1/audit", get(audit::audit))
        .route(
            "/v1/proposals",
            post(governance::propose.layer(body_limit(SESSION_BODY))).get(governance::list),
        )
        .route("/v1/proposals/{id}", get(governance::show))
        .route(
            "/v1/proposals/{id}/{action}",
            post(governance::vote.layer(body_limit(PLATFORM_BODY))),
        )
        .route(
            "/v1/updates",
            post(governance::signed_update.layer(body_limit(SESSION_BODY))),
        )
        .route("/v1/history/{*name}", get(history::history))
        .route(
            "/v1/approvers",
            post(approvers::bind.layer(body_limit(PLATFORM_BODY))),
        )
        .with_state(cas)
}

/// What every handler extracts first.
type CasState = State<Arc<Cas>>;

impl Cas {
    /// Refuses (503) while sealed: what is needed to answer is still encrypted.
    fn require_unsealed(&self) -> CasResult<()> {
        if self.vault.status().sealed {
            Err(CasError::new(StatusCode::SERVICE_UNAVAILABLE, sealed_message()))
        } else {
            Ok(())
        }
    }

    /// Whether `key` is one of the configured administrators.
    fn is_admin(&self, key: &ClientKey) -> bool {
        let shown = key.to_string();
        self.config.admins.iter().any(|a| a.trim() == shown)
    }
}

/// Whether a path is the operator socket of a data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("cas.sock")
}
