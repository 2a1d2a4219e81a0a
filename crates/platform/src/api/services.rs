//! `/system/services`: create, read, update and delete services.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;

use super::error::{ApiError, ApiResult};
use super::system::MinioProvider;
use super::{AppState, Platform, blocking};
use crate::fdl::Service;

/// The storage providers a service is shown with: the embedded store, as OSCAR's default
/// MinIO provider.
#[derive(Serialize)]
struct StorageProviders {
    minio: DefaultProvider,
}

#[derive(Serialize)]
struct DefaultProvider {
    default: MinioProvider,
}

/// The service as GET answers it: secrets hidden, the embedded store as its provider.
fn shown(service: &Service, provider: MinioProvider) -> Service {
    let mut shown = service.redacted();
    let providers = StorageProviders {
        minio: DefaultProvider { default: provider },
    };
    shown.storage_providers = serde_json::to_value(providers).ok();
    shown
}

fn parse_service(body: &[u8]) -> ApiResult<Service> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let mut service: Service = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." || path.is_empty() {
            ApiError::bad_request(format!("malformed service definition: {}", e.inner()))
        } else {
            ApiError::bad_request(format!("invalid field `{path}`: {}", e.inner()))
        }
    })?;
    service.validate()?;
    service.normalize();
    service.validate()?;
    for warning in service.warnings() {
        tracing::warn!("{warning}");
    }
    Ok(service)
}

async fn ensure_buckets(platform: &Platform, service: &Service) -> ApiResult<()> {
    for io in service.input.iter().chain(&service.output) {
        let (bucket, _) = io.bucket_and_folder();
        platform.store.create_bucket(bucket, true).await?;
    }
    Ok(())
}

/// List services (secrets hidden)
#[utoipa::path(
    get,
    path = "/system/services",
    tag = "services",
    responses((status = 200, description = "Services", body = Vec<Service>)),
)]
pub(super) async fn list_services(State(platform): AppState) -> ApiResult<Json<Vec<Service>>> {
    let state = platform.state.clone();
    let services = blocking(move || state.services()).await?;
    Ok(Json(
        services
            .iter()
            .map(|s| shown(s, MinioProvider::of(&platform)))
            .collect(),
    ))
}

/// Get a service with its token
#[utoipa::path(
    get,
    path = "/system/services/{name}",
    tag = "services",
    params(("name" = String, Path, description = "The service's name", pattern = r"^[a-z0-9]([-a-z0-9]{0,37}[a-z0-9])?$")),
    responses(
        (status = 200, description = "Service", body = Service),
        (status = 404, description = "No such service", body = String, content_type = "text/plain"),
    ),
)]
pub(super) async fn get_service(
    State(platform): AppState,
    Path(name): Path<String>,
) -> ApiResult<Json<Service>> {
    let state = platform.state.clone();
    let service = blocking(move || state.service(&name)).await?;
    let service = service.ok_or_else(|| ApiError::not_found("service not found"))?;
    Ok(Json(shown(&service, MinioProvider::of(&platform))))
}

/// Create a service
///
/// The server generates the service's token; the script arrives inlined in `script`.
#[utoipa::path(
    post,
    path = "/system/services",
    tag = "services",
    request_body = Service,
    responses(
        (status = 201, description = "Created", body = Service),
        (status = 400, description = "Invalid definition", body = String, content_type = "text/plain"),
        (status = 409, description = "Service exists", body = String, content_type = "text/plain"),
        (status = 413, description = "Body too large", body = String, content_type = "text/plain"),
    ),
)]
pub(super) async fn create_service(
    State(platform): AppState,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Service>)> {
    let mut service = parse_service(&body)?;
    let mut token = [0u8; 32];
    rand::fill(&mut token);
    service.token = hex::encode(token);
    service.storage_providers = None;
    let state = platform.state.clone();
    let name = service.name.clone();
    if blocking(move || state.service(&name)).await?.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("service {:?} already exists", service.name),
        ));
    }
    ensure_buckets(&platform, &service).await?;
    let state = platform.state.clone();
    let stored = service.clone();
    if !blocking(move || state.put_service(&stored, true)).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("service {:?} already exists", service.name),
        ));
    }
    platform.dispatcher.refresh()?;
    crate::workers::keep_warm(&platform, &service);
    tracing::info!(service = %service.name, "service created");
    Ok((
        StatusCode::CREATED,
        Json(shown(&service, MinioProvider::of(&platform))),
    ))
}

/// Update a service (its token is kept)
///
/// Secrets sent back as the `********` a GET shows keep their stored values.
#[utoipa::path(
    put,
    path = "/system/services",
    tag = "services",
    request_body = Service,
    responses(
        (status = 204, description = "Updated"),
        (status = 400, description = "Invalid definition", body = String, content_type = "text/plain"),
        (status = 404, description = "No such service", body = String, content_type = "text/plain"),
    ),
)]
pub(super) async fn update_service(State(platform): AppState, body: Bytes) -> ApiResult<StatusCode> {
    let mut service = parse_service(&body)?;
    let state = platform.state.clone();
    let name = service.name.clone();
    let old = blocking(move || state.service(&name))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("service {:?} not found", service.name)))?;
    service.token = old.token.clone();
    service.storage_providers = None;
    // A client that round-trips a GET sends the redaction placeholder back: keep the secret.
    for (name, value) in service.environment.secrets.iter_mut() {
        if value == "********"
            && let Some(old_value) = old.environment.secrets.get(name)
        {
            value.clone_from(old_value);
        }
    }
    ensure_buckets(&platform, &service).await?;
    let state = platform.state.clone();
    let stored = service.clone();
    if !blocking(move || state.put_service(&stored, false)).await? {
        return Err(ApiError::not_found(format!(
            "service {:?} not found",
            service.name
        )));
    }
    platform.dispatcher.refresh()?;
    crate::workers::keep_warm(&platform, &service);
    tracing::info!(service = %service.name, "service updated");
    Ok(StatusCode::NO_CONTENT)
}

/// Delete a service and its jobs
#[utoipa::path(
    delete,
    path = "/system/services/{name}",
    tag = "services",
    params(("name" = String, Path, description = "The service's name", pattern = r"^[a-z0-9]([-a-z0-9]{0,37}[a-z0-9])?$")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such service", body = String, content_type = "text/plain"),
    ),
)]
pub(super) async fn delete_service(
    State(platform): AppState,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let state = platform.state.clone();
    let owned = name.clone();
    let running = blocking(move || state.jobs(&owned, None, usize::MAX)).await?;
    let state = platform.state.clone();
    let owned = name.clone();
    if !blocking(move || state.delete_service(&owned)).await? {
        return Err(ApiError::not_found("service not found"));
    }
    for job in running.jobs.iter().filter(|j| !j.status.is_final()) {
        platform.workers.cancel(&name, &job.name);
    }
    platform.dispatcher.refresh()?;
    platform.executor.keep_warm(&name, 0, None);
    tracing::info!(service = %name, "service deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Services used to be answered through `serde_json::Value`; the typed answer must keep
    /// those bytes, unknown fields and the storage providers included.
    #[test]
    fn a_shown_service_keeps_its_wire_format() {
        let mut service = Service::from_json(
            br#"{"name":"svc","script":"true","cpu":"0.5","alpine":true,"zz_unknown":{"a":1},
                "input":[{"path":"svc/in"}],"environment":{"secrets":{"KEY":"v"}}}"#,
        )
        .unwrap();
        service.token = "t".repeat(64);
        let provider = MinioProvider {
            endpoint: "http://127.0.0.1:9000".to_owned(),
            region: String::new(),
            verify: false,
            access_key: "access".to_owned(),
            secret_key: "secret".to_owned(),
        };
        let shown = shown(&service, provider);
        let mut legacy = service.redacted();
        legacy.storage_providers = Some(json!({"minio": {"default": {
            "endpoint": "http://127.0.0.1:9000",
            "region": "",
            "verify": false,
            "access_key": "access",
            "secret_key": "secret",
        }}}));
        let legacy = serde_json::to_value(legacy).unwrap();
        assert_eq!(
            serde_json::to_string(&shown).unwrap(),
            serde_json::to_string(&legacy).unwrap()
        );
        assert!(!serde_json::to_string(&shown).unwrap().contains("\"v\""));
    }
}
