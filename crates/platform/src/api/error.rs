//! Error answers: a status and a plain-text reason (OSCAR clients read bodies as text).

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::fdl::FdlError;
use crate::state::{QueueFull, StateError};

/// Seconds a client refused for a full `/job` queue is asked to wait (jobs take a while).
const JOB_RETRY_AFTER_SECS: u64 = 5;

/// An error answer: a status and a plain-text reason, and for 429 when to try again.
#[derive(Debug)]
pub(crate) struct ApiError(StatusCode, String, Option<u64>);

pub(crate) type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub(crate) fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        Self(status, msg.into(), None)
    }
    pub(crate) fn too_many(msg: impl Into<String>, retry_after_secs: u64) -> Self {
        Self(StatusCode::TOO_MANY_REQUESTS, msg.into(), Some(retry_after_secs))
    }
    pub(crate) fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, msg)
    }
    pub(crate) fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, what)
    }
    pub(crate) fn internal(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, msg)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.0, format!("{}\n", self.1)).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"cloister\""),
            );
        }
        if let Some(secs) = self.2 {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if matches!(self.0, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            resp.extensions_mut().insert(Refusal(self.1));
        }
        resp
    }
}

/// Why a request was refused (401/403), for [`log_refusals`], which knows the request.
#[derive(Clone)]
struct Refusal(String);

/// Logs each refused request (401/403) with its reason: an operator sees who is locked out, and
/// why, where a silent refusal would hide a misconfigured client or a probe.
pub(super) async fn log_refusals(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    if let Some(Refusal(reason)) = response.extensions().get::<Refusal>() {
        tracing::info!(status = response.status().as_u16(), %method, %path, %reason, "request refused");
    }
    response
}

impl From<QueueFull> for ApiError {
    fn from(full: QueueFull) -> Self {
        Self::too_many(full.to_string(), JOB_RETRY_AFTER_SECS)
    }
}

impl From<StateError> for ApiError {
    fn from(e: StateError) -> Self {
        if let StateError::QueueFull(full) = e {
            return full.into();
        }
        tracing::error!(error = %e, "state store failure");
        Self::internal("internal state error")
    }
}

impl From<cloister_storage::StorageError> for ApiError {
    fn from(e: cloister_storage::StorageError) -> Self {
        use cloister_storage::StorageError as E;
        match e {
            E::InvalidName(m) => Self::bad_request(m),
            E::NoSuchBucket => Self::not_found("bucket not found"),
            E::NoSuchKey => Self::not_found("object not found"),
            E::BucketExists => Self::new(StatusCode::CONFLICT, "bucket already exists"),
            E::BucketNotEmpty => Self::new(StatusCode::CONFLICT, "bucket is not empty"),
            E::InsufficientStorage => Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "the server's disk is full: nothing was stored; retry once space has been freed",
            ),
            other => {
                tracing::error!(error = %other, "storage failure");
                Self::internal("storage error")
            }
        }
    }
}

impl From<FdlError> for ApiError {
    fn from(e: FdlError) -> Self {
        Self::bad_request(e.to_string())
    }
}
