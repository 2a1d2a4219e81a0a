//! Reading one secret of a session: the raw value for its owner, the public part of an
//! `export_public` secret for its other readers, each answer committed to the audit log before
//! it goes out.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use zeroize::Zeroizing;

use super::CasState;
use super::error::{CasError, CasResult, forbidden};
use super::sessions::ParsedSession;
use super::signed::Signed;

/// The query of `GET /v1/secret`.
#[derive(Deserialize)]
pub(super) struct SecretQuery {
    session: String,
    name: String,
    #[serde(default)]
    format: Option<String>,
}

/// A secret's raw value for the session's owner, or the public part of an `export_public`
/// secret for its other readers. Every answer is in the audit log before it goes out.
pub(super) async fn read_secret(
    State(cas): CasState,
    Query(query): Query<SecretQuery>,
    Signed { client, .. }: Signed,
) -> CasResult<Response> {
    let no_session = || CasError::new(StatusCode::NOT_FOUND, format!("no session {:?}", query.session));
    let ParsedSession { session, stored } = cas.load_session(&query.session)?.ok_or_else(no_session)?;
    let creator = stored.creator()?;
    let refuse = |reason: &str| {
        cas.refuse_request(
            "secret-read-refused",
            &client,
            &query.session,
            json!({"secret": query.name, "reason": reason}),
        );
        forbidden(reason)
    };
    if !session.access_policy.may_read(&client, &creator) && !cas.is_auditor(&client) {
        return Err(refuse(&format!(
            "not allowed to read secrets of session {:?}",
            query.session
        )));
    }
    let not_found = || {
        CasError::new(
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
