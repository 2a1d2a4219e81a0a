//! The signed-request extractor: a handler that takes [`Signed`] runs only for a request whose
//! signature by a client key verifies (see [`crate::auth`]), and gets that key. A refusal for
//! the request's time tells the client the CAS's clock, so that it can sign again.

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use cloister_cas_client::protocol::ErrorBody;
use cloister_cas_client::sign::AuthError;
use cloister_cas_session::ClientKey;
use time::OffsetDateTime;

use super::Cas;
use super::body::read_body;
use super::error::CasError;

/// A request signed by a client key (see [`crate::auth`]): the key and the body it signed.
/// The body is read (within its route's limit) before the signature can be checked.
pub(super) struct Signed {
    /// Who signed the request.
    pub(super) client: ClientKey,
    /// The body they signed.
    pub(super) body: Bytes,
}

/// A signed request refused: the reason and, when its time was refused, the CAS's clock (so
/// that the client can sign again).
pub(super) struct Unauthenticated {
    error: CasError,
    clock: Option<ServerClock>,
}

/// The CAS's clock, as a refusal for a request's time reports it.
#[derive(Clone, Copy)]
struct ServerClock {
    /// The CAS's time (Unix seconds).
    now: i64,
    /// The earliest request time accepted: the CAS's start (see [`crate::auth`]).
    not_before: i64,
}

impl From<CasError> for Unauthenticated {
    fn from(error: CasError) -> Self {
        Self { error, clock: None }
    }
}

impl IntoResponse for Unauthenticated {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.error.message,
            server_time: self.clock.map(|clock| clock.now),
            not_before: self.clock.map(|clock| clock.not_before),
        };
        (self.error.status, axum::Json(body)).into_response()
    }
}

impl axum::extract::FromRequest<Arc<Cas>> for Signed {
    type Rejection = Unauthenticated;

    async fn from_request(request: axum::extract::Request, cas: &Arc<Cas>) -> Result<Self, Self::Rejection> {
        let (parts, body) = read_body(request).await?;
        let client = cas.client(&parts.method, &parts.uri, &parts.headers, &body)?;
        Ok(Self { client, body })
    }
}

impl Cas {
    /// Authenticates a signed request; returns the client's key. A refusal for the request's
    /// time names the server's clock and the earliest time accepted, for the client's retry.
    fn client(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<ClientKey, Unauthenticated> {
        self.require_unsealed()?;
        let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let verified = self.auth.verify(
            |name| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned),
            method.as_str(),
            path,
            body,
            now,
        );
        let unauthorized = |message: String| CasError::new(StatusCode::UNAUTHORIZED, message);
        let key = match verified {
            Ok(key) => key,
            Err(e @ (AuthError::Stale | AuthError::BeforeStart)) => {
                let not_before = self.auth.not_before();
                let from = not_before.max(now - cloister_cas_client::sign::MAX_SKEW);
                return Err(Unauthenticated {
                    error: unauthorized(format!(
                        "{e}: the CAS's clock says {now}; sign with a time from {from} on"
                    )),
                    clock: Some(ServerClock { now, not_before }),
                });
            }
            Err(e) => return Err(unauthorized(e.to_string()).into()),
        };
        Ok(key.parse::<ClientKey>().map_err(unauthorized)?)
    }
}
