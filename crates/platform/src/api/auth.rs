//! Who may call what: `/system/*` takes Basic auth with the admin credentials; `/job` and
//! `/run` take the service's token as a Bearer token and refuse Basic.

use std::sync::Arc;

use axum::Extension;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use subtle::ConstantTimeEq;

use super::error::{ApiError, ApiResult};
use super::{Platform, blocking};
use crate::fdl::Service;

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// The route layer of `/system/*`. The platform comes as a request extension (the router adds
/// it), so the routes can be listed, and documented, without one; a router that forgot it
/// answers 500 here, never the handler.
pub(super) async fn basic_auth(
    Extension(platform): Extension<Arc<Platform>>,
    request: Request,
    next: Next,
) -> Response {
    let authorized = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b64| B64.decode(b64.trim()).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|pair| {
            let (user, password) = pair.split_once(':')?;
            // Both comparisons always run, so timing does not tell which one failed.
            let user_ok = constant_time_eq(user, &platform.config.admin_user);
            let password_ok = constant_time_eq(password, &platform.config.admin_password);
            Some(user_ok & password_ok)
        })
        .unwrap_or(false);
    if authorized {
        next.run(request).await
    } else {
        ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong credentials").into_response()
    }
}

/// The service named `name` if `headers` carry its token as a Bearer token.
pub(super) async fn service_for_token(
    platform: &Arc<Platform>,
    name: &str,
    headers: &HeaderMap,
) -> ApiResult<Service> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "a Bearer service token is required"))?;
    let state = platform.state.clone();
    let owned = name.to_owned();
    let service = blocking(move || state.service(&owned)).await?;
    // An unknown service and a wrong token look the same, so tokens cannot probe names.
    match service {
        Some(service) if constant_time_eq(token, &service.token) => Ok(service),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong service token",
        )),
    }
}
