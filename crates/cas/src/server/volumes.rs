//! Volume commits: an attested workload, holding the grant its attestation carried, moves one
//! of its session's volumes to the next version (compare and swap, with its audit entry in the
//! same transaction). The records and grants themselves are in [`crate::volumes`].

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use cloister_cas_client::protocol::{VolumeCommit, VolumeState};
use serde_json::json;
use time::OffsetDateTime;

use super::body::Body;
use super::error::{CasError, CasResult, bad, forbidden};
use super::{CasState, VOLUMES};

/// Why a workload's grant was not accepted.
#[derive(Debug)]
pub(super) enum GrantRefused {
    /// The session does not exist (any more).
    NoSession(String),
    /// The grant is not the CAS's, not for this service, not for the session's current
    /// version, or expired.
    Invalid(String),
}

impl std::fmt::Display for GrantRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoSession(name) => write!(f, "no session {name:?}"),
            Self::Invalid(reason) => f.write_str(reason),
        }
    }
}

impl super::Cas {
    /// The current version of `session`, once `grant` (the CAS-signed grant an attestation of
    /// `service` released) proves the caller is that service at that version. The outer error
    /// is the CAS's own fault; the inner one a refusal, which the caller may audit or not.
    pub(super) fn granted(
        &self,
        session: &str,
        service: &str,
        grant: &str,
    ) -> CasResult<Result<std::sync::Arc<super::session_cache::Loaded>, GrantRefused>> {
        let Some(loaded) = self.loaded(session)? else {
            return Ok(Err(GrantRefused::NoSession(session.to_owned())));
        };
        let identity = self
            .vault
            .identity_public()
            .and_then(|k| ed25519_dalek::VerifyingKey::from_bytes(&k).ok())
            .ok_or_else(|| CasError::new(StatusCode::SERVICE_UNAVAILABLE, "no identity"))?;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        Ok(
            match crate::volumes::check_grant(&identity, grant, session, service, &loaded.hash, now) {
                Ok(()) => Ok(loaded),
                Err(reason) => Err(GrantRefused::Invalid(reason.to_owned())),
            },
        )
    }
}

/// `POST /v1/volumes/commit`: version → version + 1 if the volume is still at the version the
/// workload started from (409 if not).
pub(super) async fn commit_volume(State(cas): CasState, Body(body): Body) -> CasResult<impl IntoResponse> {
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
    cas.granted(&request.session, &request.service, &request.grant)?
        .map_err(|refused| forbidden(refused.to_string()))?;
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
        Err(current) => Err(CasError::new(
            StatusCode::CONFLICT,
            format!(
                "volume {:?} is at version {}, not {}: it changed since this workload started",
                request.volume, current.version, request.from_version
            ),
        )),
    }
}
