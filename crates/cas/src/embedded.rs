//! A development CAS inside another process: what `cloister server --with-cas` runs for
//! one-machine setups and tests.
//!
//! It is the same CAS, with the trust separation given up: its master key is a file in its own
//! directory, so whoever runs the process holds it. Production runs `cloister cas serve` under
//! the data owners' control. On start it registers this host's simulated TEE, as the CAS's
//! administrator would, and writes `cas.json` (URL, pin, administrator key) for clients and
//! tests, since its port may have been picked by the system.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cloister_cas_client::client::{CasClient, ClientError};
use cloister_cas_client::sign::{AuthError, ClientIdentity};
use cloister_cas_store::{SealingConfig, StoreError, Vault};

use crate::server::{CasConfig, RunningCas, ServeError};

/// How long an attestation nonce of the embedded CAS stays valid.
const NONCE_TTL: Duration = Duration::from_secs(60);

/// Where and how to run an embedded CAS.
#[derive(Debug, Clone)]
pub struct EmbeddedCasConfig {
    /// The CAS's own directory, created (mode 0700) if missing and initialised on first use:
    /// the vault with its master key in `master.key`, the administrator key `admin.key`, and
    /// `cas.json`. Keep it outside the platform's data.
    pub data_dir: PathBuf,
    /// The TLS address; port 0 lets the system pick one.
    pub listen: SocketAddr,
    /// This host's simulation platform key file (created if missing), whose public key is
    /// registered with the CAS.
    pub sim_platform_key: PathBuf,
}

/// Why an embedded CAS did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmbeddedCasError {
    /// The CAS directory could not be created or resolved.
    #[error("cannot create the CAS directory {}", dir.display())]
    Directory {
        /// The directory asked for.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A new vault could not be initialised.
    #[error("cannot initialise a CAS in {}", dir.display())]
    Init {
        /// The CAS directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// The existing vault could not be opened.
    #[error("the CAS in {}: {error}", dir.display())]
    Open {
        /// The CAS directory.
        dir: PathBuf,
        /// Why.
        error: StoreError,
    },
    /// The vault is sealed with Shamir shares: it is no development CAS.
    #[error("the CAS in {} is sealed; run it apart with `cloister cas serve` and unseal it", dir.display())]
    Sealed {
        /// The CAS directory.
        dir: PathBuf,
    },
    /// The vault has no identity key.
    #[error("the CAS has no identity")]
    NoIdentity,
    /// The administrator key could not be read or written.
    #[error(transparent)]
    AdminKey(#[from] AuthError),
    /// The CAS did not start.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// The CAS started but its network port did not open.
    #[error("the CAS did not open its port")]
    NoPort,
    /// This host's simulation platform key could not be loaded or created.
    #[error("cannot load this host's simulation platform key")]
    PlatformKey(#[source] cloister_attestation::Error),
    /// This host's simulated TEE could not be registered with the CAS.
    #[error("cannot register this host with the CAS")]
    Register(#[source] ClientError),
    /// `cas.json` could not be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A running embedded CAS, with what its clients need to reach it.
pub struct EmbeddedCas {
    running: RunningCas,
    data_dir: PathBuf,
    url: String,
    pin: String,
    admin_key: PathBuf,
    /// Whether this start initialised the CAS.
    created: bool,
}

impl EmbeddedCas {
    /// The TLS URL (`https://<address>`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The identity pin clients check (`sha256:<hex>`).
    pub fn pin(&self) -> &str {
        &self.pin
    }

    /// The administrator's key file (for `cloister apply --cas-key`).
    pub fn admin_key(&self) -> &Path {
        &self.admin_key
    }

    /// What the operator is told at start, one line each: that the CAS was just created and
    /// is not for production (first start only), where it answers, and where its
    /// administrator key is.
    pub fn startup_message(&self) -> String {
        let mut lines = String::new();
        if self.created {
            lines.push_str(&format!(
                "cloister: initialised a development CAS in {} (its master key is a file there: not for production)\n",
                self.data_dir.display()
            ));
        }
        lines.push_str(&format!("cloister: CAS on {}  pin {}\n", self.url, self.pin));
        lines.push_str(&format!(
            "cloister: CAS administrator key in {} (for `cloister apply --cas-key`)\n",
            self.admin_key.display()
        ));
        lines
    }

    /// Waits until the CAS stops.
    pub async fn wait(&mut self) {
        self.running.wait().await;
    }

    /// Stops the CAS.
    pub async fn shutdown(self) {
        self.running.shutdown().await;
    }
}

/// Starts the embedded CAS (initialising it on first use), registers this host's simulated TEE
/// with it, and writes `cas.json`.
pub async fn start(config: EmbeddedCasConfig) -> Result<EmbeddedCas, EmbeddedCasError> {
    let directory_error = |source| EmbeddedCasError::Directory {
        dir: config.data_dir.clone(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.data_dir)
        .map_err(directory_error)?;
    // The vault records its key file's path; relative paths would depend on the directory the
    // process was started from.
    let dir = config.data_dir.canonicalize().map_err(directory_error)?;
    let (vault, created) = match Vault::open(&dir, None) {
        Ok(vault) => (vault, false),
        Err(StoreError::NotInitialized(_)) => {
            let (vault, _) =
                Vault::init(&dir, SealingConfig::KeyFile(dir.join("master.key"))).map_err(|source| {
                    EmbeddedCasError::Init {
                        dir: dir.clone(),
                        source,
                    }
                })?;
            (vault, true)
        }
        Err(error) => return Err(EmbeddedCasError::Open { dir, error }),
    };
    if vault.status().sealed {
        return Err(EmbeddedCasError::Sealed { dir });
    }
    let identity = vault.identity_public().ok_or(EmbeddedCasError::NoIdentity)?;
    let pin = format!("sha256:{}", cloister_cas_client::pin::pin_of(&identity));
    let admin_key = dir.join("admin.key");
    let admin = if admin_key.exists() {
        ClientIdentity::load(&admin_key)?
    } else {
        let admin = ClientIdentity::generate();
        admin.save(&admin_key)?;
        admin
    };
    let cas_config = CasConfig {
        data_dir: dir.clone(),
        listen: config.listen,
        tls_names: Vec::new(),
        admins: vec![admin.public()],
        nonce_ttl: NONCE_TTL,
        collateral: None,
        refusal_audit: Default::default(),
        governance: Default::default(),
    };
    let mut running = crate::server::serve(cas_config, Arc::new(vault)).await?;
    let addr = running.network_addr().await.ok_or(EmbeddedCasError::NoPort)?;
    let url = format!("https://{addr}");
    let platform = cloister_attestation::SimPlatform::load_or_generate(&config.sim_platform_key)
        .map_err(EmbeddedCasError::PlatformKey)?;
    CasClient::new(&url, &pin, Some(admin))
        .map_err(EmbeddedCasError::Register)?
        .add_platform(&hex::encode(platform.public_key()), "this host (cloister server)")
        .await
        .map_err(EmbeddedCasError::Register)?;
    let found = serde_json::json!({"url": url, "pin": pin, "admin_key": admin_key});
    write_private(&dir.join("cas.json"), format!("{found:#}").as_bytes())?;
    Ok(EmbeddedCas {
        running,
        data_dir: dir,
        url,
        pin,
        admin_key,
        created,
    })
}

/// Replaces `path` with `content`, readable by the owner only, whole or not at all (written
/// beside it, synced, renamed), so a client polling for the file never reads half of it.
fn write_private(path: &Path, content: &[u8]) -> Result<(), EmbeddedCasError> {
    let tmp = path.with_extension("tmp");
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut file| {
            file.write_all(content)?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    written.map_err(|source| EmbeddedCasError::Write {
        path: path.to_path_buf(),
        source,
    })
}
