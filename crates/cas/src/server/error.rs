//! How the server answers what it refuses: a status and a reason in an [`ErrorBody`], never
//! secret content, and how vault and session errors map to statuses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cloister_cas_client::protocol::ErrorBody;
use cloister_cas_session::SessionError;
use cloister_cas_store::StoreError;

/// Errors answered to clients: a status and a reason without secret content.
pub(super) struct CasError {
    pub(super) status: StatusCode,
    /// Shown to the client as it is.
    pub(super) message: String,
}

impl CasError {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for CasError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
            ..ErrorBody::default()
        };
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<StoreError> for CasError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Sealed => CasError::new(StatusCode::SERVICE_UNAVAILABLE, sealed_message()),
            // The operator's unseal: what was found and how to proceed, no secret in it.
            e @ StoreError::Rollback(_) => CasError::new(StatusCode::CONFLICT, e.to_string()),
            other => {
                tracing::error!(error = %other, "vault failure");
                CasError::new(StatusCode::INTERNAL_SERVER_ERROR, "vault failure")
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
        CasError::new(status, e.to_string())
    }
}

/// Why everything but status and unseal is refused while sealed.
pub(super) fn sealed_message() -> String {
    "the CAS is sealed: it answers only status and unseal".into()
}

/// What handlers return.
pub(super) type CasResult<T> = Result<T, CasError>;

/// 400: the request is malformed.
pub(super) fn bad(msg: impl Into<String>) -> CasError {
    CasError::new(StatusCode::BAD_REQUEST, msg)
}

/// 403: the request is understood and refused.
pub(super) fn forbidden(msg: impl Into<String>) -> CasError {
    CasError::new(StatusCode::FORBIDDEN, msg)
}

/// 500: the CAS failed; the message says what without secret content.
pub(super) fn internal(msg: impl Into<String>) -> CasError {
    CasError::new(StatusCode::INTERNAL_SERVER_ERROR, msg)
}

/// A stored record that does not parse: a vault failure, answered 500.
pub(super) fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("stored {what} does not parse"))
}
