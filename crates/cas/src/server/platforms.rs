//! Simulation platforms: the keys whose simulated TEE evidence the CAS accepts, registered by
//! administrators and loaded into the simulation verifier at start and at every unseal.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use cloister_attestation::SimVerifier;
use cloister_cas_client::protocol::PlatformRequest;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::error::{CasResult, bad, forbidden, internal};
use super::signed::Signed;
use super::{Cas, CasState, PLATFORMS};

/// The stored form of a registered platform (its key is the record's key).
#[derive(Serialize, Deserialize)]
struct StoredPlatform {
    name: String,
    added_by: String,
}

impl Cas {
    /// Hands the registered platforms' keys to the simulation verifier.
    pub(super) fn load_platforms(&self) -> CasResult<()> {
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
}

/// `POST /v1/platforms`: an administrator registers a simulation platform's key.
pub(super) async fn add_platform(
    State(cas): CasState,
    Signed { client, body }: Signed,
) -> CasResult<impl IntoResponse> {
    if !cas.is_admin(&client) {
        cas.refuse_request(
            "platform-add-refused",
            &client,
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

/// `GET /v1/platforms`: the registered platforms' keys.
pub(super) async fn list_platforms(State(cas): CasState, _: Signed) -> CasResult<impl IntoResponse> {
    Ok(axum::Json(cas.vault.keys(PLATFORMS, "")?))
}
