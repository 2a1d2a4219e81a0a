//! Request bodies, read within their route's limit and deadline: an attacker cannot make the
//! CAS buffer more than a route needs, or hold a request open by sending its body slowly.
//! Routes set their limit with [`body_limit`]; [`Body`] and `signed::Signed` read through
//! [`read_body`].

use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;

use super::error::{CasError, CasResult, bad};

/// Largest session YAML.
pub(super) const SESSION_BODY: usize = 8 << 20;
/// Largest attestation request: DCAP collateral is about 100 KiB of JSON.
pub(super) const ATTEST_BODY: usize = 1 << 20;
/// Largest volume commit (names, a grant and a hash).
pub(super) const VOLUME_COMMIT_BODY: usize = 16 << 10;
/// Largest counter increment (names and a grant).
pub(super) const COUNTER_BODY: usize = 16 << 10;
/// Largest platform registration (a key and a label).
pub(super) const PLATFORM_BODY: usize = 16 << 10;
/// How long a request body may take to arrive once its head has.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest body a route accepts, set per route by [`body_limit`]. A route without one
/// accepts no body at all.
#[derive(Debug, Clone, Copy)]
pub(super) struct BodyLimit(usize);

/// The layer that sets a route's body limit.
pub(super) fn body_limit(bytes: usize) -> axum::Extension<BodyLimit> {
    axum::Extension(BodyLimit(bytes))
}

/// Reads a request body within its route's [`BodyLimit`] and [`BODY_TIMEOUT`]: a declared
/// length over the limit is refused before a byte is read, an undeclared one as soon as the
/// limit is passed.
pub(super) async fn read_body(
    request: axum::extract::Request,
) -> CasResult<(axum::http::request::Parts, Bytes)> {
    let (parts, body) = request.into_parts();
    let limit = parts.extensions.get::<BodyLimit>().map_or(0, |l| l.0);
    let too_large = || {
        let message = if limit == 0 {
            format!("{} takes no request body", parts.uri.path())
        } else {
            format!(
                "request body too large: {} accepts at most {} KiB",
                parts.uri.path(),
                limit.div_ceil(1024)
            )
        };
        CasError::new(StatusCode::PAYLOAD_TOO_LARGE, message)
    };
    let declared = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > limit as u64 => return Err(too_large()),
        Some(0) => return Ok((parts, Bytes::new())),
        _ => {}
    }
    let read = tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, limit))
        .await
        .map_err(|_| CasError::new(StatusCode::REQUEST_TIMEOUT, "request body not received in time"))?;
    match read {
        Ok(body) => Ok((parts, body)),
        Err(e) => {
            let over_limit = std::error::Error::source(&e)
                .is_some_and(|cause| cause.is::<http_body_util::LengthLimitError>());
            Err(if over_limit {
                too_large()
            } else {
                bad("cannot read the request body")
            })
        }
    }
}

/// An unsigned request's body, within its route's limit.
pub(super) struct Body(pub(super) Bytes);

impl<S: Send + Sync> axum::extract::FromRequest<S> for Body {
    type Rejection = CasError;

    async fn from_request(request: axum::extract::Request, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(read_body(request).await?.1))
    }
}
