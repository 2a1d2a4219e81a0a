//! The server itself: liveness, this API's OpenAPI document, server information and the
//! configuration OSCAR clients read their S3 endpoint from.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

use super::{AppState, Platform};

/// Liveness
#[utoipa::path(
    get,
    path = "/health",
    tag = "system",
    responses((status = 200, description = "Ok", body = String, content_type = "text/plain")),
)]
pub(super) async fn health() -> &'static str {
    "Ok"
}

/// This document
///
/// Generated from the server's own routes and types.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "system",
    responses((status = 200, description = "OpenAPI document", body = Object)),
)]
pub(super) async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        super::openapi_json(),
    )
}

/// The backend that runs jobs.
#[derive(Serialize, ToSchema)]
pub(super) struct ServerlessBackend {
    /// The executor (`local`).
    name: &'static str,
    /// Cloister's version.
    version: &'static str,
}

/// What `GET /system/info` answers (OSCAR's fields, and the simulation platform key).
#[derive(Serialize, ToSchema)]
pub(super) struct Info {
    /// Cloister's version.
    version: &'static str,
    /// The commit the server was built from, when known.
    git_commit: &'static str,
    /// The host's CPU architecture.
    architecture: &'static str,
    /// Always empty: no Kubernetes here.
    kubernetes_version: &'static str,
    serverless_backend: ServerlessBackend,
    /// This host's simulation TEE platform key (public, hex), which CAS administrators
    /// register to accept simulated evidence from this host.
    simulation_platform_key: String,
}

/// Server information
#[utoipa::path(
    get,
    path = "/system/info",
    tag = "system",
    responses((status = 200, description = "Info", body = Info)),
)]
pub(super) async fn info(State(platform): AppState) -> Json<Info> {
    Json(Info {
        version: env!("CARGO_PKG_VERSION"),
        git_commit: option_env!("CLOISTER_GIT_COMMIT").unwrap_or(""),
        architecture: std::env::consts::ARCH,
        kubernetes_version: "",
        serverless_backend: ServerlessBackend {
            name: platform.executor.name(),
            version: env!("CARGO_PKG_VERSION"),
        },
        simulation_platform_key: platform.sim_platform_public.clone(),
    })
}

/// The embedded S3 endpoint as OSCAR describes a MinIO provider.
#[derive(Serialize, ToSchema)]
pub(super) struct MinioProvider {
    /// The S3 endpoint's URL.
    pub(super) endpoint: String,
    /// The region to sign for (may be empty).
    pub(super) region: String,
    /// Whether clients should verify TLS (the endpoint is plain HTTP).
    pub(super) verify: bool,
    pub(super) access_key: String,
    pub(super) secret_key: String,
}

impl MinioProvider {
    pub(super) fn of(platform: &Platform) -> Self {
        Self {
            endpoint: platform.s3_endpoint.clone(),
            region: platform.config.s3_region.clone(),
            verify: false,
            access_key: platform.config.s3_access_key.clone(),
            secret_key: platform.config.s3_secret_key.clone(),
        }
    }
}

/// What `GET /system/config` answers: OSCAR's cluster configuration, of which clients use
/// `minio_provider`.
#[derive(Serialize, ToSchema)]
pub(super) struct Config {
    name: &'static str,
    namespace: &'static str,
    services_namespace: &'static str,
    gpu_available: bool,
    #[serde(rename = "interLink_available")]
    interlink_available: bool,
    yunikorn_enable: bool,
    oidc_groups: Vec<String>,
    minio_provider: MinioProvider,
}

fn config_of(platform: &Platform) -> Config {
    Config {
        name: "cloister",
        namespace: "cloister",
        services_namespace: "cloister-services",
        gpu_available: false,
        interlink_available: false,
        yunikorn_enable: false,
        oidc_groups: Vec::new(),
        minio_provider: MinioProvider::of(platform),
    }
}

/// Cluster configuration with the S3 endpoint
#[utoipa::path(
    get,
    path = "/system/config",
    tag = "system",
    responses((status = 200, description = "Config", body = Config)),
)]
pub(super) async fn config(State(platform): AppState) -> Json<Config> {
    Json(config_of(&platform))
}

/// Cluster configuration with the S3 endpoint (the path oscar-python's storage client uses)
#[utoipa::path(
    get,
    path = "/system/config/",
    tag = "system",
    responses((status = 200, description = "Config", body = Config)),
)]
pub(super) async fn config_with_slash(State(platform): AppState) -> Json<Config> {
    Json(config_of(&platform))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The typed answers must keep the bytes the handlers sent before they were typed: each
    /// `json!` below is the handler's former answer.
    #[test]
    fn info_and_config_keep_their_wire_format() {
        let info = Info {
            version: "0.1.0",
            git_commit: "",
            architecture: "x86_64",
            kubernetes_version: "",
            serverless_backend: ServerlessBackend {
                name: "local",
                version: "0.1.0",
            },
            simulation_platform_key: "00ff".to_owned(),
        };
        let legacy = json!({
            "version": "0.1.0",
            "git_commit": "",
            "architecture": "x86_64",
            "kubernetes_version": "",
            "serverless_backend": {"name": "local", "version": "0.1.0"},
            "simulation_platform_key": "00ff",
        });
        assert_eq!(
            serde_json::to_string(&info).unwrap(),
            serde_json::to_string(&legacy).unwrap()
        );

        let provider = || MinioProvider {
            endpoint: "http://127.0.0.1:9000".to_owned(),
            region: "us-east-1".to_owned(),
            verify: false,
            access_key: "access".to_owned(),
            secret_key: "secret".to_owned(),
        };
        let config = Config {
            name: "cloister",
            namespace: "cloister",
            services_namespace: "cloister-services",
            gpu_available: false,
            interlink_available: false,
            yunikorn_enable: false,
            oidc_groups: Vec::new(),
            minio_provider: provider(),
        };
        let legacy_provider = json!({
            "endpoint": "http://127.0.0.1:9000",
            "region": "us-east-1",
            "verify": false,
            "access_key": "access",
            "secret_key": "secret",
        });
        let legacy = json!({
            "name": "cloister",
            "namespace": "cloister",
            "services_namespace": "cloister-services",
            "gpu_available": false,
            "interLink_available": false,
            "yunikorn_enable": false,
            "oidc_groups": [],
            "minio_provider": legacy_provider,
        });
        assert_eq!(
            serde_json::to_string(&config).unwrap(),
            serde_json::to_string(&legacy).unwrap()
        );
    }
}
