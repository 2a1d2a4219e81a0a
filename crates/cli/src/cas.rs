//! `cloister cas`: run the configuration and attestation service, and talk to it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cloister_cas_client::client::{CasClient, ClientError, LocalClient};
use cloister_cas_client::governance::Vote;
use cloister_cas_client::sign::ClientIdentity;
use cloister_cas_store::{InitOutput, SealingConfig, Vault, VaultOptions, anchor_beside};

use crate::client::{exit, fail};

/// Exit code when the CAS refused (policy, attestation, access).
const REFUSED: i32 = 9;

#[derive(clap::Subcommand)]
pub enum CasCommand {
    /// Initialize a CAS data directory: master key, identity, and how the key is sealed.
    Init {
        #[arg(long, env = "CLOISTER_CAS_DATA_DIR", default_value = "cas-data")]
        data_dir: PathBuf,
        /// Split the master key into this many Shamir shares (printed once, never stored).
        #[arg(long, default_value_t = 5)]
        shares: u8,
        /// Shares needed to unseal.
        #[arg(long, default_value_t = 3)]
        threshold: u8,
        /// Development: keep the master key in this file instead (mode 0600); the CAS then
        /// starts unsealed.
        #[arg(long, conflicts_with_all = ["shares", "threshold"])]
        key_file: Option<PathBuf>,
        /// The counter anchor, kept outside the store (default: `<data-dir>.counter-anchor`
        /// beside the data directory). Keep it off the store's disk and backups.
        #[arg(long, env = "CLOISTER_CAS_COUNTER_ANCHOR")]
        counter_anchor: Option<PathBuf>,
    },
    /// Run the CAS: operator socket in the data directory, TLS port once unsealed.
    Serve {
        #[arg(long, env = "CLOISTER_CAS_DATA_DIR", default_value = "cas-data")]
        data_dir: PathBuf,
        /// Network address (TLS 1.3).
        #[arg(long, env = "CLOISTER_CAS_LISTEN", default_value = "127.0.0.1:8081")]
        listen: SocketAddr,
        /// Client keys (`ed25519:<hex>`) that may register platforms and read the audit log.
        #[arg(long = "admin", env = "CLOISTER_CAS_ADMINS", value_delimiter = ',')]
        admins: Vec<String>,
        /// Seconds an attestation nonce stays valid.
        #[arg(long, default_value_t = 60)]
        nonce_ttl: u64,
        /// PCCS or Intel PCS base URL for DCAP collateral (cached under --collateral-dir).
        #[arg(long, env = "CLOISTER_CAS_PCCS_URL", requires = "collateral_dir")]
        pccs_url: Option<String>,
        /// Collateral cache; without --pccs-url, an offline directory of collateral files.
        #[arg(long, env = "CLOISTER_CAS_COLLATERAL_DIR")]
        collateral_dir: Option<PathBuf>,
        /// The counter anchor the store is compared with at unseal (default:
        /// `<data-dir>.counter-anchor` beside the data directory).
        #[arg(long, env = "CLOISTER_CAS_COUNTER_ANCHOR")]
        counter_anchor: Option<PathBuf>,
        /// Unseal a store older than its counter anchor (a backup restored on purpose): its
        /// counters go on from the restored values. Recorded in the audit log.
        #[arg(long)]
        accept_rollback: bool,
        /// Client keys that read every session (never raw secret values), proposal and history,
        /// and the whole audit log.
        #[arg(long = "auditor", env = "CLOISTER_CAS_AUDITORS", value_delimiter = ',')]
        auditors: Vec<String>,
        /// How long a proposal stays open.
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        proposal_ttl: Duration,
        /// How long veto holders have to object to a proposal they have not approved.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        veto_window: Duration,
        /// Bytes that sessions, their versions and proposals may take, in all, in namespaces no
        /// administrator declared (anyone can claim one with a fresh key). 0: sessions live only
        /// in namespaces declared with `cloister cas namespace add`.
        #[arg(long, env = "CLOISTER_CAS_OPEN_NAMESPACE_BUDGET",
              default_value_t = cloister_cas::server::DEFAULT_OPEN_NAMESPACE_BUDGET)]
        open_namespace_budget: u64,
    },
    /// Status of the local CAS (operator socket).
    Status {
        #[arg(long, env = "CLOISTER_CAS_DATA_DIR", default_value = "cas-data")]
        data_dir: PathBuf,
        /// Wait up to this long for a CAS that is starting (`cas serve &`) to answer.
        #[arg(long, value_parser = humantime::parse_duration)]
        wait: Option<std::time::Duration>,
    },
    /// Give one unseal share to the local CAS.
    Unseal {
        /// A share as printed by `cloister cas init`.
        share: String,
        #[arg(long, env = "CLOISTER_CAS_DATA_DIR", default_value = "cas-data")]
        data_dir: PathBuf,
    },
    /// Seal the local CAS (forget the master key until unsealed again).
    Seal {
        #[arg(long, env = "CLOISTER_CAS_DATA_DIR", default_value = "cas-data")]
        data_dir: PathBuf,
    },
    /// Print the CAS identity pin (clients pin it) and public key (verifies audit logs).
    Identity {
        #[arg(long, env = "CLOISTER_CAS_DATA_DIR", default_value = "cas-data")]
        data_dir: PathBuf,
    },
    /// Make a client key and print its public key.
    Keygen {
        /// Where to write the key (mode 0600; never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// ed25519 or p256.
        #[arg(long, default_value = "ed25519", value_parser = ["ed25519", "p256"])]
        algorithm: String,
    },
    /// Sessions: create, update, read, hash, list.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Read a secret of a session: its value for the session's owner, the public part of an
    /// `export_public` secret for the session's other readers.
    Secret {
        session: String,
        name: String,
        /// hex, base64, crt, chain, privatekey, publickey.
        #[arg(long)]
        format: Option<String>,
        #[command(flatten)]
        connect: CasConnect,
    },
    /// A session's counters and its services' runs (for the session's readers).
    Counters {
        session: String,
        #[command(flatten)]
        connect: CasConnect,
    },
    /// Simulation platforms.
    #[command(subcommand)]
    Platform(PlatformCommand),
    /// Namespaces (the first segment of session names) and who owns them.
    #[command(subcommand)]
    Namespace(NamespaceCommand),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Proposals of session changes awaiting their board's approvals.
    #[command(subcommand)]
    Proposals(crate::cas_governance::ProposalsCommand),
    /// Approve a proposal: sign its change with --key.
    Approve {
        id: String,
        #[command(flatten)]
        connect: CasConnect,
    },
    /// Reject a proposal (a veto when --key holds one): sign the rejection with --key.
    Reject {
        id: String,
        #[command(flatten)]
        connect: CasConnect,
    },
    /// Attest with the simulation TEE and print the released configuration (development).
    Attest {
        #[arg(long)]
        session: String,
        #[arg(long)]
        service: String,
        /// Simulation platform key file (see `cas platform keygen`).
        #[arg(long)]
        platform: PathBuf,
        /// Measurement to claim (64 hex).
        #[arg(long)]
        measurement: String,
        #[command(flatten)]
        connect: CasConnect,
    },
}

#[derive(clap::Subcommand)]
pub enum SessionCommand {
    /// Create a session from a YAML file (with approvals from `session sign` in a namespace
    /// with a board).
    Create {
        file: PathBuf,
        /// A detached approval (`KEY:SIGNATURE`, from `cloister cas session sign`); repeat.
        #[arg(long = "signature")]
        signatures: Vec<String>,
        #[command(flatten)]
        connect: CasConnect,
    },
    /// Update a session (the file names the current hash as `predecessor`), with approvals
    /// from `session sign` when its board needs more than the signer.
    Update {
        file: PathBuf,
        /// A detached approval (`KEY:SIGNATURE`, from `cloister cas session sign`); repeat.
        #[arg(long = "signature")]
        signatures: Vec<String>,
        #[command(flatten)]
        connect: CasConnect,
    },
    /// Propose a new version to the session's board (the file names the current hash as
    /// `predecessor`), or a new session to its namespace's board (no `predecessor`); it
    /// applies once the board's rule is met.
    Propose {
        file: PathBuf,
        #[command(flatten)]
        connect: CasConnect,
    },
    /// Sign an approval of a session file's change offline (prints `KEY:SIGNATURE`).
    Sign {
        file: PathBuf,
        /// The approving key file.
        #[arg(long)]
        key: PathBuf,
    },
    /// Every version of a session with its hash, predecessor and approvals.
    History {
        name: String,
        #[command(flatten)]
        connect: CasConnect,
    },
    /// Print a session.
    Get {
        name: String,
        #[command(flatten)]
        connect: CasConnect,
    },
    /// Print the hash of a session file (offline), or of a stored session with --name.
    Verify {
        /// Session YAML file.
        file: Option<PathBuf>,
        /// A stored session instead.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        connect: CasConnect,
    },
    /// List the sessions this key may read.
    Ls {
        #[arg(default_value = "")]
        prefix: String,
        #[command(flatten)]
        connect: CasConnect,
    },
}

#[derive(clap::Subcommand)]
pub enum PlatformCommand {
    /// Make a simulation platform key for this host and print its public key.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Register a simulation platform's public key (administrators).
    Add {
        public_key: String,
        #[arg(long, default_value = "")]
        name: String,
        #[command(flatten)]
        connect: CasConnect,
    },
}

#[derive(clap::Subcommand)]
pub enum NamespaceCommand {
    /// Declare who owns a namespace; only its owner creates sessions in it (administrators).
    Add {
        /// The namespace: `team` for sessions `team/...`.
        name: String,
        /// The owner's client key (`ed25519:<hex>` or `p256:<hex>`).
        #[arg(long)]
        owner: String,
        /// A board (YAML, as `access_policy.update`; `CREATOR` is the owner) whose approval
        /// creating a session in the namespace needs.
        #[arg(long)]
        rule: Option<PathBuf>,
        #[command(flatten)]
        connect: CasConnect,
    },
    /// List namespaces and their owners: all of them for administrators, your own otherwise.
    Ls {
        #[command(flatten)]
        connect: CasConnect,
    },
}

#[derive(clap::Subcommand)]
pub enum AuditCommand {
    /// Print the audit log as JSON lines (administrators).
    Export {
        #[command(flatten)]
        connect: CasConnect,
    },
    /// Check an exported audit log offline: any edited, removed or reordered entry is found.
    Verify {
        file: PathBuf,
        /// The CAS public key (hex), from `cloister cas identity`.
        #[arg(long)]
        identity: String,
    },
}

/// Where the CAS is and who we are.
#[derive(Debug, Clone, clap::Args)]
pub struct CasConnect {
    /// CAS URL.
    #[arg(long, env = "CLOISTER_CAS", default_value = "https://127.0.0.1:8081")]
    cas: String,
    /// The CAS identity pin (`cloister cas identity`).
    #[arg(long, env = "CLOISTER_CAS_PIN")]
    pin: String,
    /// Client key file (`cloister cas keygen`).
    #[arg(long, env = "CLOISTER_CAS_KEY")]
    key: Option<PathBuf>,
}

impl CasConnect {
    /// The client key file, if given.
    pub(crate) fn key_path(&self) -> Option<&Path> {
        self.key.as_deref()
    }

    pub(crate) fn client(&self) -> anyhow::Result<CasClient> {
        let identity = self
            .key
            .as_deref()
            .map(ClientIdentity::load)
            .transpose()
            .map_err(|e| fail(exit::FAILURE, e.to_string()))?;
        CasClient::new(&self.cas, &self.pin, identity).map_err(client_error)
    }
}

pub(crate) fn client_error(e: ClientError) -> anyhow::Error {
    let code = match &e {
        ClientError::Refused { status, .. } => match status.as_u16() {
            400 | 413 => exit::INVALID,
            401 => exit::UNAUTHORIZED,
            403 => REFUSED,
            404 => exit::NOT_FOUND,
            409 => exit::CONFLICT,
            _ => exit::UNAVAILABLE,
        },
        ClientError::Transport(_) | ClientError::Unavailable { .. } => exit::UNAVAILABLE,
        ClientError::NoIdentity | ClientError::Local(_) => exit::FAILURE,
    };
    fail(code, e.to_string())
}

pub(crate) fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// The configuration `cloister cas serve` runs with.
pub fn cas_config(
    data_dir: &Path,
    listen: SocketAddr,
    admins: Vec<String>,
    nonce_ttl: u64,
    collateral: Option<Arc<cloister_attestation::CollateralSource>>,
    governance: cloister_cas::server::GovernanceConfig,
) -> cloister_cas::server::CasConfig {
    cloister_cas::server::CasConfig {
        data_dir: data_dir.to_path_buf(),
        listen,
        tls_names: Vec::new(),
        admins,
        nonce_ttl: Duration::from_secs(nonce_ttl.max(1)),
        collateral,
        refusal_audit: Default::default(),
        governance,
    }
}

pub async fn run(command: CasCommand, json: bool) -> anyhow::Result<()> {
    match command {
        CasCommand::Init {
            data_dir,
            shares,
            threshold,
            key_file,
            counter_anchor,
        } => {
            std::fs::create_dir_all(&data_dir)
                .with_context(|| format!("cannot create {}", data_dir.display()))?;
            let sealing = match key_file {
                Some(path) => SealingConfig::KeyFile(path),
                None => SealingConfig::Shamir { shares, threshold },
            };
            let options = VaultOptions {
                counter_anchor: Some(counter_anchor.unwrap_or_else(|| anchor_beside(&data_dir))),
                accept_rollback: false,
            };
            let (vault, output) = Vault::init_with(&data_dir, sealing, options)
                .map_err(|e| fail(exit::FAILURE, e.to_string()))?;
            let public = vault.identity_public().map(hex::encode).unwrap_or_default();
            let pin = vault
                .identity_public()
                .map(|k| format!("sha256:{}", cloister_cas_client::pin::pin_of(&k)))
                .unwrap_or_default();
            match output {
                InitOutput::Shares(shares) => {
                    let shares: Vec<String> = shares.iter().map(ToString::to_string).collect();
                    if json {
                        print_json(
                            &serde_json::json!({"shares": shares, "identity_pin": pin, "identity_public_key": public}),
                        )?;
                    } else {
                        println!("Unseal shares — give one to each operator; they are not stored anywhere:");
                        for share in &shares {
                            println!("  {share}");
                        }
                        println!("identity pin: {pin}\npublic key:   {public}");
                    }
                }
                other => {
                    if json {
                        print_json(&serde_json::json!({"identity_pin": pin, "identity_public_key": public}))?;
                    } else {
                        println!(
                            "initialized ({}); identity pin: {pin}",
                            match other {
                                InitOutput::KeyFile(p) => format!("master key in {}", p.display()),
                                _ => "sealed by the TEE".to_owned(),
                            }
                        );
                    }
                }
            }
            Ok(())
        }
        CasCommand::Serve {
            data_dir,
            listen,
            admins,
            nonce_ttl,
            pccs_url,
            collateral_dir,
            counter_anchor,
            accept_rollback,
            auditors,
            proposal_ttl,
            veto_window,
            open_namespace_budget,
        } => {
            let collateral = match (pccs_url, collateral_dir) {
                (Some(url), Some(dir)) => Some(cloister_attestation::CollateralSource::pccs(&url, &dir)),
                (None, Some(dir)) => Some(cloister_attestation::CollateralSource::offline(&dir)),
                _ => None,
            }
            .transpose()
            .map_err(|e| fail(exit::FAILURE, format!("collateral source: {e}")))?
            .map(Arc::new);
            let options = VaultOptions {
                counter_anchor: Some(counter_anchor.unwrap_or_else(|| anchor_beside(&data_dir))),
                accept_rollback,
            };
            let vault = Arc::new(
                Vault::open_with(&data_dir, None, options)
                    .map_err(|e| fail(exit::FAILURE, format!("{}: {e}", data_dir.display())))?,
            );
            let sealed = vault.status().sealed;
            let governance = cloister_cas::server::GovernanceConfig {
                auditors,
                proposal_ttl,
                veto_window,
                open_namespace_budget,
                ..Default::default()
            };
            let config = cas_config(&data_dir, listen, admins, nonce_ttl, collateral, governance);
            let mut running = cloister_cas::server::serve(config, vault.clone()).await?;
            println!("cloister cas: operator socket {}", running.socket.display());
            if sealed {
                println!(
                    "cloister cas: sealed — give shares with `cloister cas unseal SHARE --data-dir {}`",
                    data_dir.display()
                );
            }
            let mut addr = running.addr.clone();
            tokio::spawn(async move {
                if let Ok(open) = addr.wait_for(Option::is_some).await
                    && let Some(addr) = *open
                {
                    println!("cloister cas: listening on https://{addr}");
                }
            });
            let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
                () = running.wait() => anyhow::bail!("the CAS stopped unexpectedly"),
            }
            running.shutdown().await;
            Ok(())
        }
        CasCommand::Status { data_dir, wait } => {
            let deadline = tokio::time::Instant::now() + wait.unwrap_or_default();
            let client = LocalClient::new(&data_dir).map_err(client_error)?;
            let status = loop {
                match client.status().await {
                    Ok(status) => break status,
                    Err(_) if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                    Err(e) => return Err(client_error(e)),
                }
            };
            print_json(&status)
        }
        CasCommand::Unseal { share, data_dir } => {
            let client = LocalClient::new(&data_dir).map_err(client_error)?;
            let before = client.status().await.map_err(client_error)?;
            let answer = client.unseal(&share).await.map_err(client_error)?;
            // The CAS ignores a share it already holds, and any share once unsealed: say so, or
            // the operator takes the unchanged count for a share that counted.
            let sealed = answer["sealed"].as_bool().unwrap_or(true);
            let provided = answer["shares_provided"].as_u64().unwrap_or(0);
            if !before.sealed {
                eprintln!("cloister: the CAS was already unsealed; this share was not needed");
            } else if sealed && provided <= u64::from(before.shares_provided) {
                eprintln!(
                    "cloister: this share was already given; still {provided} of {} shares",
                    before.threshold.unwrap_or_default()
                );
            }
            print_json(&answer)
        }
        CasCommand::Seal { data_dir } => LocalClient::new(&data_dir)
            .map_err(client_error)?
            .seal()
            .await
            .map_err(client_error),
        CasCommand::Identity { data_dir } => {
            let status = LocalClient::new(&data_dir)
                .map_err(client_error)?
                .status()
                .await
                .map_err(client_error)?;
            if json {
                print_json(&status)
            } else {
                println!("pin        {}", status.identity_pin.unwrap_or_default());
                println!("public key {}", status.identity_public_key.unwrap_or_default());
                Ok(())
            }
        }
        CasCommand::Keygen { out, algorithm } => {
            let algorithm = if algorithm == "p256" {
                cloister_cas_client::sign::KeyAlgorithm::P256
            } else {
                cloister_cas_client::sign::KeyAlgorithm::Ed25519
            };
            let identity = ClientIdentity::generate_with(algorithm);
            identity
                .save(&out)
                .map_err(|e| fail(exit::FAILURE, e.to_string()))?;
            println!("{}", identity.public());
            Ok(())
        }
        CasCommand::Session(command) => session(command, json).await,
        CasCommand::Secret {
            session,
            name,
            format,
            connect,
        } => {
            let bytes = connect
                .client()?
                .read_secret(&session, &name, format.as_deref())
                .await
                .map_err(client_error)?;
            std::io::Write::write_all(&mut std::io::stdout(), &bytes)?;
            Ok(())
        }
        CasCommand::Counters { session, connect } => {
            let values = connect.client()?.counters(&session).await.map_err(client_error)?;
            if json {
                print_json(&values)?;
            } else {
                for (name, value) in &values.counters {
                    println!("counter {name}: {value}");
                }
                for (service, runs) in &values.runs {
                    println!("runs of {service}: {runs}");
                }
            }
            Ok(())
        }
        CasCommand::Platform(PlatformCommand::Keygen { out }) => {
            anyhow::ensure!(
                !out.exists(),
                "{} exists; not overwriting a platform key",
                out.display()
            );
            let platform = cloister_attestation::SimPlatform::load_or_generate(&out)
                .map_err(|e| fail(exit::FAILURE, e.to_string()))?;
            println!("{}", hex::encode(platform.public_key()));
            Ok(())
        }
        CasCommand::Platform(PlatformCommand::Add {
            public_key,
            name,
            connect,
        }) => connect
            .client()?
            .add_platform(&public_key, &name)
            .await
            .map_err(client_error),
        CasCommand::Namespace(NamespaceCommand::Add {
            name,
            owner,
            rule,
            connect,
        }) => {
            let rule = match rule {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    let policy = cloister_cas_session::parse_update_policy(&text)
                        .map_err(|e| fail(exit::INVALID, e.to_string()))?;
                    Some(serde_json::to_value(policy)?)
                }
                None => None,
            };
            let declared = connect
                .client()?
                .declare_governed_namespace(&name, &owner, rule)
                .await
                .map_err(client_error)?;
            if json {
                print_json(&declared)
            } else {
                println!("namespace {} owned by {}", declared.name, declared.owner);
                Ok(())
            }
        }
        CasCommand::Namespace(NamespaceCommand::Ls { connect }) => {
            let namespaces = connect.client()?.namespaces().await.map_err(client_error)?;
            if json {
                print_json(&namespaces)
            } else {
                for namespace in namespaces {
                    println!("{}  {}  {}", namespace.name, namespace.owner, namespace.how);
                }
                Ok(())
            }
        }
        CasCommand::Audit(AuditCommand::Export { connect }) => {
            let entries = connect.client()?.audit(0).await.map_err(client_error)?;
            print!(
                "{}",
                cloister_cas_store::export_jsonl(&entries).map_err(|e| fail(exit::FAILURE, e.to_string()))?
            );
            Ok(())
        }
        CasCommand::Audit(AuditCommand::Verify { file, identity }) => audit_verify(&file, &identity, json),
        CasCommand::Proposals(command) => crate::cas_governance::proposals(command, json).await,
        CasCommand::Approve { id, connect } => {
            crate::cas_governance::vote(&id, Vote::Approve, &connect, json).await
        }
        CasCommand::Reject { id, connect } => {
            crate::cas_governance::vote(&id, Vote::Reject, &connect, json).await
        }
        CasCommand::Attest {
            session,
            service,
            platform,
            measurement,
            connect,
        } => {
            let platform = cloister_attestation::SimPlatform::load_or_generate(&platform)
                .map_err(|e| fail(exit::FAILURE, e.to_string()))?;
            let mut m = [0u8; 32];
            hex::decode_to_slice(measurement.trim(), &mut m)
                .map_err(|_| fail(exit::FAILURE, "--measurement is 64 hex digits"))?;
            let init = cloister_cas_client::protocol::InitData::new(&connect.pin, &session, &service)
                .map_err(|e| fail(exit::USAGE, e.to_string()))?;
            let source = init
                .simulated(platform, m)
                .map_err(|e| fail(exit::USAGE, e.to_string()))?;
            let config = connect
                .client()?
                .attest(&init, &source, |_| {})
                .await
                .map_err(client_error)?;
            print_json(&config)
        }
    }
}

async fn session(command: SessionCommand, json: bool) -> anyhow::Result<()> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    };
    match command {
        SessionCommand::Create {
            file,
            signatures,
            connect,
        } if !signatures.is_empty() => {
            crate::cas_governance::update_signed(&file, &signatures, &connect, json).await
        }
        SessionCommand::Create { file, connect, .. } => {
            let written = connect
                .client()?
                .create_session(&read(&file)?)
                .await
                .map_err(client_error)?;
            if json {
                print_json(&written)
            } else {
                println!("created {} {}", written.name, written.hash);
                Ok(())
            }
        }
        SessionCommand::Update {
            file,
            signatures,
            connect,
        } if !signatures.is_empty() => {
            crate::cas_governance::update_signed(&file, &signatures, &connect, json).await
        }
        SessionCommand::Propose { file, connect } => {
            crate::cas_governance::propose(&file, &connect, json).await
        }
        SessionCommand::Sign { file, key } => crate::cas_governance::sign(&file, &key, json),
        SessionCommand::History { name, connect } => {
            crate::cas_governance::history(&name, &connect, json).await
        }
        SessionCommand::Update { file, connect, .. } => {
            let yaml = read(&file)?;
            let parsed =
                cloister_cas_session::parse_session(&yaml).map_err(|e| fail(exit::INVALID, e.to_string()))?;
            let written = connect
                .client()?
                .update_session(&parsed.name, &yaml)
                .await
                .map_err(client_error)?;
            if json {
                print_json(&written)
            } else {
                println!("updated {} {}", written.name, written.hash);
                Ok(())
            }
        }
        SessionCommand::Get { name, connect } => {
            let record = connect.client()?.get_session(&name).await.map_err(client_error)?;
            if json {
                print_json(&record)
            } else {
                if record.redacted {
                    eprintln!(
                        "cloister: explicit secret values are redacted: only the session's owner ({}) sees them",
                        record.creator
                    );
                }
                print!("{}", record.yaml);
                Ok(())
            }
        }
        SessionCommand::Verify { file, name, connect } => {
            let hash = match (file, name) {
                (Some(file), None) => cloister_cas_session::parse_session(&read(&file)?)
                    .map_err(|e| fail(exit::INVALID, e.to_string()))?
                    .hash(),
                (None, Some(name)) => {
                    connect
                        .client()?
                        .get_session(&name)
                        .await
                        .map_err(client_error)?
                        .hash
                }
                _ => return Err(fail(exit::FAILURE, "give a session file or --name")),
            };
            println!("{hash}");
            Ok(())
        }
        SessionCommand::Ls { prefix, connect } => {
            let sessions = connect
                .client()?
                .list_sessions(&prefix)
                .await
                .map_err(client_error)?;
            if json {
                print_json(&sessions)
            } else {
                for (name, hash) in sessions {
                    println!("{name}  {hash}");
                }
                Ok(())
            }
        }
    }
}

fn audit_verify(file: &Path, identity: &str, json: bool) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut key = [0u8; 32];
    hex::decode_to_slice(identity.trim(), &mut key)
        .map_err(|_| fail(exit::FAILURE, "--identity is 64 hex digits"))?;
    let entries = cloister_cas_store::parse_jsonl(&text).map_err(|e| fail(REFUSED, e.to_string()))?;
    let report =
        cloister_cas_store::verify_audit(&entries, &key).map_err(|e| fail(REFUSED, e.to_string()))?;
    if json {
        print_json(&report)
    } else {
        println!("audit log intact: {} entries", entries.len());
        Ok(())
    }
}
