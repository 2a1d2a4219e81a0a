//! The operator's routes on the local socket: status (also on the network port), unseal with
//! Shamir shares (which so never cross the network), and seal.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use cloister_cas_client::protocol::{StatusResponse, UnsealRequest};
use cloister_cas_store::{Share, StoreError};
use serde_json::json;

use super::CasState;
use super::error::{CasError, CasResult, bad};

/// `GET /v1/status`: sealed or not, the shares collected, and the identity clients pin.
pub(super) async fn status(State(cas): CasState) -> impl IntoResponse {
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

/// `POST /v1/unseal`: one Shamir share; the last one opens the vault and the network port,
/// and is answered once the port is open.
pub(super) async fn unseal(State(cas): CasState, body: Bytes) -> CasResult<impl IntoResponse> {
    let request: UnsealRequest =
        serde_json::from_slice(&body).map_err(|e| bad(format!("malformed unseal request: {e}")))?;
    let share: Share = request
        .share
        .parse()
        .map_err(|e: StoreError| bad(e.to_string()))?;
    let vault = cas.vault.clone();
    let outcome = tokio::task::spawn_blocking(move || vault.unseal(&share))
        .await
        .map_err(|_| CasError::new(StatusCode::INTERNAL_SERVER_ERROR, "unseal task failed"))?;
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
                // Answer once the network port accepts connections (it opens about a second
                // after the start at the earliest), so a script can use it right away.
                let mut open = cas.network_open.clone();
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    open.wait_for(|addr| addr.is_some()),
                )
                .await;
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

/// `POST /v1/seal`: forgets the keys; the network port answers 503 until the next unseal.
pub(super) async fn seal(State(cas): CasState) -> impl IntoResponse {
    // The vault audits its own sealing.
    cas.vault.seal();
    cas.cache.invalidate();
    StatusCode::NO_CONTENT
}
