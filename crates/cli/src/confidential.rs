//! The trusted-computer side of confidential services: `cloister apply` turns a service's
//! `confidential` block into its CAS session ([`cloister_platform::confidential_session`]) and
//! writes it to the CAS, so the platform never holds a secret or key of it, nor decides what
//! the service runs.

use std::path::{Path, PathBuf};

use anyhow::Context;
use cloister_cas_client::client::{CasClient, ClientError};
use cloister_cas_client::sign::ClientIdentity;
use cloister_crypt::Identity;
use cloister_platform::confidential_session::{CompiledService, compile};
use cloister_platform::fdl::Service;

use crate::client::{exit, fail};

/// What applying a confidential service did at the CAS.
pub struct SessionApplied {
    pub session: String,
    pub hash: String,
    pub action: &'static str,
    pub input_recipient: String,
    pub measurement: String,
    /// For TDX and SEV-SNP: the launch configuration register their VMs must be started with
    /// (its name and hex value), the digest of the service's init-data.
    pub launch_register: Option<(&'static str, String)>,
}

/// Creates or updates the CAS session of a confidential `service` and returns the service as
/// the platform may see it: secrets removed, the input recipient noted.
pub async fn apply_session(
    service: &Service,
    cas_key: Option<&Path>,
    keys_dir: &Path,
) -> anyhow::Result<(Service, SessionApplied)> {
    let Some(c) = &service.confidential else {
        anyhow::bail!("{} is not confidential", service.name);
    };
    let key_path = cas_key.ok_or_else(|| {
        fail(
            exit::USAGE,
            format!(
                "service {} is confidential: give the CAS client key that owns its session (--cas-key or \
                 CLOISTER_CAS_KEY)",
                service.name
            ),
        )
    })?;
    let identity = ClientIdentity::load(key_path).map_err(|e| fail(exit::FAILURE, e.to_string()))?;
    let cas = CasClient::new(&c.cas, &c.cas_pin, Some(identity)).map_err(cas_error)?;
    let input_identity = input_identity(keys_dir, &c.session, &service.name)?;
    let CompiledService {
        mut session,
        platform_service,
        input_recipient,
        measurement,
        launch_register,
    } = compile(service, &input_identity).map_err(|e| fail(exit::INVALID, e.to_string()))?;

    let existing = match cas.get_session(&c.session).await {
        Ok(record) => Some(record.hash),
        Err(ClientError::Refused { status, .. }) if status.as_u16() == 404 => None,
        Err(e) => return Err(cas_error(e)),
    };
    let action = if existing.is_some() { "updated" } else { "created" };
    session.predecessor = existing;
    let text = serde_json::to_string(&session)?;
    let written = match &session.predecessor {
        Some(_) => cas.update_session(&c.session, &text).await,
        None => cas.create_session(&text).await,
    }
    .map_err(cas_error)?;
    Ok((
        platform_service,
        SessionApplied {
            session: c.session.clone(),
            hash: written.hash,
            action,
            input_recipient,
            measurement,
            launch_register: launch_register.map(|r| (r.name, r.value)),
        },
    ))
}

/// The service's input identity, kept on this (trusted) computer so that re-applying keeps
/// the recipient data owners encrypt to; created on first use.
fn input_identity(keys_dir: &Path, session: &str, service: &str) -> anyhow::Result<Identity> {
    let file: PathBuf = keys_dir.join(format!("{}.{service}.input.key", session.replace('/', "_")));
    if file.exists() {
        return Identity::load(&file).with_context(|| format!("cannot read {}", file.display()));
    }
    std::fs::create_dir_all(keys_dir).with_context(|| format!("cannot create {}", keys_dir.display()))?;
    let identity = Identity::generate();
    identity
        .save(&file)
        .with_context(|| format!("cannot write {}", file.display()))?;
    Ok(identity)
}

fn cas_error(e: ClientError) -> anyhow::Error {
    let code = match &e {
        ClientError::Refused { status, .. } => match status.as_u16() {
            400 | 413 => exit::INVALID,
            401 | 403 => exit::UNAUTHORIZED,
            404 => exit::NOT_FOUND,
            409 => exit::CONFLICT,
            _ => exit::UNAVAILABLE,
        },
        ClientError::Transport(_) | ClientError::Unavailable { .. } => exit::UNAVAILABLE,
        ClientError::NoIdentity | ClientError::Local(_) => exit::FAILURE,
    };
    fail(code, format!("CAS: {e}"))
}
