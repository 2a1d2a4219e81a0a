//! Attested approvers: a workload that attested as a service binds a key of its own to that
//! attestation, and the key then counts as the board member `attested:SESSION#SERVICE`.
//!
//! The proof of the attestation is the grant of its released configuration (the CAS identity's
//! signature over session, service, session hash and expiry, sealed to the attested workload's
//! key); the request is signed with the key being bound, so whoever binds it holds it. A
//! binding holds for the session version it was made for: once that session changes (other
//! code, other secrets), its keys stop counting until the new version's workloads attest.

use std::collections::BTreeSet;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use cloister_cas_client::governance::{ApproverBinding, ApproverBound};
use cloister_cas_session::ClientKey;
use serde_json::json;

use super::error::{CasResult, bad, corrupt, forbidden};
use super::signed::Signed;
use super::{APPROVERS, Cas, CasState};

/// The record key of the keys bound to (session, service) at `hash`.
fn record_key(session: &str, service: &str, hash: &str) -> String {
    format!("{session}#{service}@{hash}")
}

impl Cas {
    /// The keys bound to attestations of `service` of `session` as it is now.
    pub(super) fn attested_keys(&self, session: &str, service: &str) -> BTreeSet<ClientKey> {
        let Ok(Some(current)) = self.load_session(session) else {
            return BTreeSet::new();
        };
        let Ok(Some(raw)) = self
            .vault
            .get(APPROVERS, &record_key(session, service, &current.stored.hash))
        else {
            return BTreeSet::new();
        };
        serde_json::from_slice::<Vec<String>>(&raw)
            .unwrap_or_default()
            .iter()
            .filter_map(|k| k.parse().ok())
            .collect()
    }
}

/// `POST /v1/approvers`: binds the request's key to the attestation whose grant it presents.
pub(super) async fn bind(
    State(cas): CasState,
    Signed { client, body }: Signed,
) -> CasResult<impl IntoResponse> {
    let request: ApproverBinding =
        serde_json::from_slice(&body).map_err(|e| bad(format!("malformed approver binding: {e}")))?;
    if !crate::names::valid_session_name(&request.session)
        || !crate::names::valid_service_name(&request.service)
    {
        return Err(bad("invalid session or service name"));
    }
    let subject = format!("{}#{}", request.session, request.service);
    let refuse = |reason: String| {
        cas.refuse_request(
            "approver-bind-refused",
            &client,
            &subject,
            json!({"reason": reason}),
        );
        forbidden(reason)
    };
    let loaded = cas
        .granted(&request.session, &request.service, &request.grant)?
        .map_err(|refused| {
            refuse(match refused {
                super::volumes::GrantRefused::NoSession(_) => refused.to_string(),
                super::volumes::GrantRefused::Invalid(e) => {
                    format!("not an attestation of this service's current version: {e}")
                }
            })
        })?;
    let key = record_key(&request.session, &request.service, &loaded.hash);
    let shown = client.to_string();
    cas.vault.write(|txn| {
        let mut keys: Vec<String> = match txn.get(APPROVERS, &key)? {
            Some(raw) => serde_json::from_slice(&raw).map_err(|_| corrupt("approvers"))?,
            None => Vec::new(),
        };
        if !keys.contains(&shown) {
            keys.push(shown.clone());
        }
        let bytes = serde_json::to_vec(&keys).map_err(|_| corrupt("approvers"))?;
        txn.put(APPROVERS, &key, &bytes)?;
        txn.audit_append("approver-bind", &shown, &subject, json!({"hash": loaded.hash}))
            .map(|_| ())
    })?;
    Ok((
        StatusCode::CREATED,
        axum::Json(ApproverBound {
            key: shown,
            session: request.session,
            service: request.service,
            hash: loaded.hash.clone(),
        }),
    ))
}
