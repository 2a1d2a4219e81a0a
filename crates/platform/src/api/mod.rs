//! The OSCAR-compatible REST API and its OpenAPI document.
//!
//! Paths, shapes and status codes follow OSCAR so that oscar-cli, oscar-python and the
//! dashboard work unchanged (see `shared/OSCAR-COMPAT.md`). `/system/*` takes Basic auth with
//! the admin credentials; `/job` and `/run` take the service's token as a Bearer token and
//! refuse Basic. Bodies are read as bytes and parsed here, so every malformed body gets a 400
//! that names the field.
//!
//! [`routes`] is the one list of routes: the router and the OpenAPI document served at
//! `/openapi.json` are both built from it, each handler's `#[utoipa::path]` giving its path,
//! method, parameters, bodies and answers.

mod auth;
mod buckets;
mod error;
mod invoke;
mod jobs;
mod services;
mod system;
#[cfg(test)]
mod tests;

use std::sync::{Arc, LazyLock};

use axum::extract::{DefaultBodyLimit, State};
use axum::{Extension, Router, middleware};
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, ResponseBuilder};
use utoipa::openapi::{RefOr, Required};
use utoipa::{IntoParams, PartialSchema};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use utoipa_axum::routes;

use self::error::{ApiError, ApiResult};
use crate::Platform;
use crate::state::StateError;

type AppState = State<Arc<Platform>>;

/// The security scheme of `/system/*`.
const BASIC_AUTH: &str = "basicAuth";
/// The security scheme of `/job` and `/run`.
const SERVICE_TOKEN: &str = "serviceToken";

/// Every route of the API. Routes enter only through `routes!`, which takes each handler's
/// path and method from its `#[utoipa::path]`, so nothing is served undocumented (the tests
/// walk the built router to hold that).
fn routes() -> OpenApiRouter<Arc<Platform>> {
    let system = OpenApiRouter::new()
        .routes(routes!(system::info))
        .routes(routes!(system::config))
        .routes(routes!(system::config_with_slash))
        .routes(routes!(
            services::list_services,
            services::create_service,
            services::update_service
        ))
        .routes(routes!(services::get_service, services::delete_service))
        .routes(routes!(jobs::list_jobs, jobs::delete_jobs))
        .routes(routes!(jobs::job_log, jobs::delete_job))
        .routes(routes!(jobs::job_sealed_log))
        .routes(routes!(
            buckets::list_buckets,
            buckets::create_bucket,
            buckets::update_bucket
        ))
        .routes(routes!(buckets::list_objects, buckets::delete_bucket))
        .routes(routes!(buckets::presign));
    let system = behind_basic_auth(system);
    OpenApiRouter::with_openapi(document_base())
        .merge(system)
        .routes(routes!(system::health))
        .routes(routes!(system::openapi))
        .routes(body_optional(routes!(invoke::invoke_async)))
        .routes(body_optional(routes!(invoke::invoke_sync)))
}

/// Marks the request bodies of `routes` optional (utoipa makes every body required): an
/// invocation without a body runs the service on an empty input.
fn body_optional(mut routes: UtoipaMethodRouter<Arc<Platform>>) -> UtoipaMethodRouter<Arc<Platform>> {
    for item in routes.1.paths.values_mut() {
        for operation in operations_mut(item) {
            if let Some(RefOr::T(body)) = &mut operation.request_body {
                body.required = Some(Required::False);
            }
        }
    }
    routes
}

/// Puts `routes` behind the admin's Basic auth, and says so in each of their operations.
fn behind_basic_auth(mut routes: OpenApiRouter<Arc<Platform>>) -> OpenApiRouter<Arc<Platform>> {
    let unauthorized = ResponseBuilder::new()
        .description("Missing or wrong credentials")
        .content(
            "text/plain",
            ContentBuilder::new().schema(Some(String::schema())).build(),
        )
        .build();
    for item in routes.get_openapi_mut().paths.paths.values_mut() {
        for operation in operations_mut(item) {
            operation.security = Some(vec![SecurityRequirement::new(BASIC_AUTH, Vec::<String>::new())]);
            operation
                .responses
                .responses
                .insert("401".to_owned(), unauthorized.clone().into());
        }
    }
    routes.route_layer(middleware::from_fn(auth::basic_auth))
}

/// The operations of a path item, whatever their methods.
fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .flatten()
}

/// What the document says beyond its routes: the API's name and its security schemes.
fn document_base() -> OpenApi {
    let info = InfoBuilder::new()
        .title("Cloister API")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "OSCAR-compatible REST API of Cloister. /system/* uses HTTP Basic auth with the admin \
             credentials; /job and /run use the service token as a Bearer token.",
        ))
        .build();
    let mut doc = OpenApiBuilder::new().info(info).build();
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        BASIC_AUTH,
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
    );
    components.add_security_scheme(
        SERVICE_TOKEN,
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    doc
}

/// The API's OpenAPI document.
pub(crate) fn openapi() -> OpenApi {
    routes().into_openapi()
}

/// The OpenAPI document as served (made once).
fn openapi_json() -> &'static str {
    static DOCUMENT: LazyLock<String> =
        LazyLock::new(|| openapi().to_pretty_json().unwrap_or_else(|_| "{}".to_owned()));
    &DOCUMENT
}

/// The REST API of `platform`.
pub(crate) fn router(platform: Arc<Platform>) -> Router {
    let (router, _) = routes().split_for_parts();
    router
        .layer(DefaultBodyLimit::max(platform.config.max_body))
        .layer(Extension(platform.clone()))
        .layer(middleware::from_fn(error::log_refusals))
        .with_state(platform)
}

/// Runs blocking state-store work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StateError> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ApiError::internal("internal task failed"))?
        .map_err(ApiError::from)
}

/// A time as OSCAR shows it (RFC 3339), or null.
fn rfc3339(t: Option<OffsetDateTime>) -> Option<String> {
    t.and_then(|t| t.format(&Rfc3339).ok())
}

/// Paging of long lists.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct PageQuery {
    /// Where the page starts: the previous page's `next_page` (the first page when empty).
    page: Option<String>,
    /// Most items on the page.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}
