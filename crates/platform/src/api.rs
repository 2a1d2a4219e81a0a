//! The OSCAR-compatible REST API.
//!
//! Paths, shapes and status codes follow OSCAR so that oscar-cli, oscar-python and the
//! dashboard work unchanged (see `shared/OSCAR-COMPAT.md`). `/system/*` takes Basic auth with
//! the admin credentials; `/job` and `/run` take the service's token as a Bearer token and
//! refuse Basic. Bodies are read as bytes and parsed here, so every malformed body gets a 400
//! that names the field.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cloister_runtime::{JobInput, Status};
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::Platform;
use crate::dispatch::{decode_event_key, new_job};
use crate::fdl::{FdlError, Service};
use crate::state::{BucketSettings, JobSource, JobStatus, NewJob, QueueFull, StateError};

type AppState = State<Arc<Platform>>;

/// Seconds a client refused for a full `/job` queue is asked to wait (jobs take a while).
const JOB_RETRY_AFTER_SECS: u64 = 5;
/// Seconds a client refused for too many `/run` invocations is asked to wait.
const RUN_RETRY_AFTER_SECS: u64 = 1;

/// An error answer: a status and a plain-text reason, and for 429 when to try again.
#[derive(Debug)]
pub(crate) struct ApiError(StatusCode, String, Option<u64>);

impl ApiError {
    fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        Self(status, msg.into(), None)
    }
    fn too_many(msg: impl Into<String>, retry_after_secs: u64) -> Self {
        Self(StatusCode::TOO_MANY_REQUESTS, msg.into(), Some(retry_after_secs))
    }
    fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, msg)
    }
    fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, what)
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
        resp
    }
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
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal state error")
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
            other => {
                tracing::error!(error = %other, "storage failure");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "storage error")
            }
        }
    }
}

impl From<FdlError> for ApiError {
    fn from(e: FdlError) -> Self {
        Self::bad_request(e.to_string())
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Runs blocking state-store work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StateError> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal task failed"))?
        .map_err(ApiError::from)
}

pub(crate) fn router(platform: Arc<Platform>) -> Router {
    let system = Router::new()
        .route("/system/info", get(info))
        .route("/system/config", get(config))
        .route("/system/config/", get(config))
        .route(
            "/system/services",
            get(list_services).post(create_service).put(update_service),
        )
        .route("/system/services/{name}", get(get_service).delete(delete_service))
        .route("/system/logs/{svc}", get(list_jobs).delete(delete_jobs))
        .route("/system/logs/{svc}/{job}", get(job_log).delete(delete_job))
        .route("/system/logs/{svc}/{job}/sealed", get(job_sealed_log))
        .route(
            "/system/buckets",
            get(list_buckets).post(create_bucket).put(update_bucket),
        )
        .route(
            "/system/buckets/{bucket}",
            get(list_objects).delete(delete_bucket),
        )
        .route("/system/buckets/{bucket}/presign", post(presign))
        .route_layer(middleware::from_fn_with_state(platform.clone(), basic_auth));
    Router::new()
        .merge(system)
        .route("/health", get(|| async { "Ok" }))
        .route("/openapi.json", get(openapi))
        .route("/job/{svc}", post(invoke_async))
        .route("/run/{svc}", post(invoke_sync))
        .layer(DefaultBodyLimit::max(platform.config.max_body))
        .with_state(platform)
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

async fn basic_auth(State(platform): AppState, request: Request, next: Next) -> Response {
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
async fn service_for_token(platform: &Arc<Platform>, name: &str, headers: &HeaderMap) -> ApiResult<Service> {
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

async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
}

async fn info(State(platform): AppState) -> impl IntoResponse {
    axum::Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "git_commit": option_env!("CLOISTER_GIT_COMMIT").unwrap_or(""),
        "architecture": std::env::consts::ARCH,
        "kubernetes_version": "",
        "serverless_backend": {"name": platform.executor.name(), "version": env!("CARGO_PKG_VERSION")},
        "simulation_platform_key": platform.sim_platform_public,
    }))
}

fn minio_provider(platform: &Platform) -> Value {
    json!({
        "endpoint": platform.s3_endpoint,
        "region": platform.config.s3_region,
        "verify": false,
        "access_key": platform.config.s3_access_key,
        "secret_key": platform.config.s3_secret_key,
    })
}

async fn config(State(platform): AppState) -> impl IntoResponse {
    axum::Json(json!({
        "name": "cloister",
        "namespace": "cloister",
        "services_namespace": "cloister-services",
        "gpu_available": false,
        "interLink_available": false,
        "yunikorn_enable": false,
        "oidc_groups": [],
        "minio_provider": minio_provider(&platform),
    }))
}

// ---- services ----

/// The service as GET answers it: secrets hidden, the embedded store as its provider.
fn shown(platform: &Platform, service: &Service) -> Value {
    let mut shown = service.redacted();
    shown.storage_providers = Some(json!({"minio": {"default": minio_provider(platform)}}));
    serde_json::to_value(shown).unwrap_or(Value::Null)
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

async fn list_services(State(platform): AppState) -> ApiResult<impl IntoResponse> {
    let state = platform.state.clone();
    let services = blocking(move || state.services()).await?;
    Ok(axum::Json(
        services.iter().map(|s| shown(&platform, s)).collect::<Vec<_>>(),
    ))
}

async fn get_service(State(platform): AppState, Path(name): Path<String>) -> ApiResult<impl IntoResponse> {
    let state = platform.state.clone();
    let service = blocking(move || state.service(&name)).await?;
    let service = service.ok_or_else(|| ApiError::not_found("service not found"))?;
    Ok(axum::Json(shown(&platform, &service)))
}

async fn create_service(State(platform): AppState, body: Bytes) -> ApiResult<impl IntoResponse> {
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
    tracing::info!(service = %service.name, "service created");
    Ok((StatusCode::CREATED, axum::Json(shown(&platform, &service))))
}

async fn update_service(State(platform): AppState, body: Bytes) -> ApiResult<impl IntoResponse> {
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
    tracing::info!(service = %service.name, "service updated");
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_service(State(platform): AppState, Path(name): Path<String>) -> ApiResult<impl IntoResponse> {
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
    tracing::info!(service = %name, "service deleted");
    Ok(StatusCode::NO_CONTENT)
}

// ---- invocations ----

/// OSCAR's rule for invocation bodies: valid JSON is taken as is, anything else is base64.
fn decode_payload(body: &[u8]) -> ApiResult<Vec<u8>> {
    if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
        return Ok(body.to_vec());
    }
    let text: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    B64.decode(&text)
        .map_err(|_| ApiError::bad_request("the body is neither JSON nor base64"))
}

/// The object an OSCAR/MinIO event names, if the body is such an event.
fn event_object(body: &[u8]) -> ApiResult<Option<(String, String)>> {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return Ok(None);
    };
    let Some(s3) = value.pointer("/Records/0/s3") else {
        return Ok(None);
    };
    let bucket = s3.pointer("/bucket/name").and_then(Value::as_str);
    let key = s3.pointer("/object/key").and_then(Value::as_str);
    match (bucket, key) {
        (Some(bucket), Some(key)) => {
            let key = decode_event_key(key).ok_or_else(|| {
                ApiError::bad_request("invalid field `Records[0].s3.object.key`: not URL-encoded UTF-8")
            })?;
            cloister_storage::names::validate_bucket_name(bucket).map_err(|e| {
                ApiError::bad_request(format!("invalid field `Records[0].s3.bucket.name`: {e}"))
            })?;
            cloister_storage::names::validate_object_key(&key).map_err(|e| {
                ApiError::bad_request(format!("invalid field `Records[0].s3.object.key`: {e}"))
            })?;
            Ok(Some((bucket.to_owned(), key)))
        }
        _ => Err(ApiError::bad_request(
            "invalid field `Records[0].s3`: bucket.name and object.key are required",
        )),
    }
}

/// The request's body, within the router's body limit (413 beyond it).
async fn read_body(request: Request) -> ApiResult<Bytes> {
    Bytes::from_request(request, &())
        .await
        .map_err(|rejection| ApiError::new(rejection.status(), rejection.body_text()))
}

/// The body length a request declares, if it does.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn too_large_for_queue(held: u64, max: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("this job's data ({held} bytes with its event) is more than the server queues ({max} bytes)"),
    )
}

async fn invoke_async(
    State(platform): AppState,
    Path(name): Path<String>,
    request: Request,
) -> ApiResult<impl IntoResponse> {
    let service = service_for_token(&platform, &name, request.headers()).await?;
    // A full queue refuses before the body is read, so a flood against it buffers nothing;
    // the bounds are checked again, exactly, where the job is recorded.
    let bounds = platform.queue_bounds();
    let state = platform.state.clone();
    let owned = name.clone();
    let usage = blocking(move || state.queue_usage(&owned)).await?;
    let declared = declared_length(request.headers()).unwrap_or(0);
    if declared > bounds.max_queued_bytes {
        return Err(too_large_for_queue(declared, bounds.max_queued_bytes));
    }
    if usage.pending_jobs >= bounds.max_pending_jobs {
        return Err(QueueFull::Jobs {
            service: name,
            pending: usage.pending_jobs,
            max: bounds.max_pending_jobs,
        }
        .into());
    }
    if usage.queued_bytes.saturating_add(declared) > bounds.max_queued_bytes {
        return Err(QueueFull::Bytes {
            max: bounds.max_queued_bytes,
        }
        .into());
    }
    let body = read_body(request).await?;
    let job = match event_object(&body)? {
        Some((bucket, key)) => {
            // A token must not become a way to read other buckets: the object has to be one
            // this service's inputs would have picked up anyway.
            if !service.input.iter().any(|io| io.matches(&bucket, &key)) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("{bucket}/{key} is not under an input path of service {name:?}"),
                ));
            }
            let event = String::from_utf8_lossy(&body).into_owned();
            NewJob {
                record: new_job(&service, JobSource::Object { bucket, key }, event),
                payload: None,
            }
        }
        None => {
            let payload = decode_payload(&body)?;
            let event = String::from_utf8_lossy(&body).into_owned();
            NewJob {
                record: new_job(&service, JobSource::Payload, event),
                payload: Some(payload),
            }
        }
    };
    let held =
        (job.record.event.len() as u64).saturating_add(job.payload.as_ref().map_or(0, |p| p.len() as u64));
    if held > bounds.max_queued_bytes {
        return Err(too_large_for_queue(held, bounds.max_queued_bytes));
    }
    let dispatcher = platform.dispatcher.clone();
    let created = blocking(move || dispatcher.submit_bounded(job, bounds)).await?;
    Ok((StatusCode::CREATED, axum::Json(json!({"job_name": created.name}))))
}

async fn invoke_sync(
    State(platform): AppState,
    Path(name): Path<String>,
    request: Request,
) -> ApiResult<Response> {
    let service = service_for_token(&platform, &name, request.headers()).await?;
    // Admitted before the body is read: a flood beyond the bound is refused without
    // buffering its bodies. The admission lasts until the answer is built.
    let Ok(_admitted) = platform.sync_admission.try_acquire() else {
        return Err(ApiError::too_many(
            format!(
                "too many synchronous invocations at once (at most {}); try again shortly",
                platform.config.max_sync_invocations.max(1)
            ),
            RUN_RETRY_AFTER_SECS,
        ));
    };
    let body = read_body(request).await?;
    let payload = decode_payload(&body)?;
    let uuid = uuid::Uuid::now_v7();
    let event = String::from_utf8_lossy(&body).into_owned();
    let spec = crate::workers::spec_for(
        &platform,
        &service,
        &format!("{}-run-{}", service.name, uuid.simple()),
        &uuid.to_string(),
        JobInput::Inline(payload),
        event,
        OffsetDateTime::now_utc(),
    );
    let _slot = platform
        .sync_slots
        .acquire()
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down"))?;
    let max_output = platform.config.max_body as u64;
    let outcome = platform.executor.run_sync(spec, max_output).await;
    if outcome.status != Status::Succeeded {
        let tail: Vec<&str> = outcome
            .log
            .iter()
            .rev()
            .take(20)
            .map(|l| l.text.as_str())
            .collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        let reason = outcome.reason.as_deref().unwrap_or("failed");
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{reason}\n{}", tail.join("\n")),
        ));
    }
    let (kind, content) = match outcome.files.len() {
        0 => ("stdout", outcome.stdout),
        1 => ("file", B64.encode(&outcome.files[0].1).into_bytes()),
        _ => ("zip", B64.encode(zip_files(&outcome.files)?).into_bytes()),
    };
    let mut response = (StatusCode::OK, content).into_response();
    response
        .headers_mut()
        .insert("x-cloister-output", HeaderValue::from_static(kind));
    if let Some((name, _)) = outcome.files.first().filter(|_| kind == "file")
        && let Ok(value) = HeaderValue::from_str(name)
    {
        response.headers_mut().insert("x-cloister-output-name", value);
    }
    Ok(response)
}

fn zip_files(files: &[(String, Vec<u8>)]) -> ApiResult<Vec<u8>> {
    let failed = |_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "cannot build the zip answer");
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, content) in files {
        zip.start_file(name.as_str(), options).map_err(failed)?;
        zip.write_all(content)
            .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "zip"))?;
    }
    Ok(zip.finish().map_err(failed)?.into_inner())
}

// ---- jobs and logs ----

#[derive(Deserialize)]
struct PageQuery {
    page: Option<String>,
    limit: Option<usize>,
}

fn rfc3339(t: Option<OffsetDateTime>) -> Value {
    t.and_then(|t| t.format(&Rfc3339).ok())
        .map_or(Value::Null, Value::String)
}

async fn require_service(platform: &Platform, name: &str) -> ApiResult<()> {
    let state = platform.state.clone();
    let owned = name.to_owned();
    match blocking(move || state.service(&owned)).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::not_found("service not found")),
    }
}

async fn list_jobs(
    State(platform): AppState,
    Path(svc): Path<String>,
    Query(query): Query<PageQuery>,
) -> ApiResult<impl IntoResponse> {
    require_service(&platform, &svc).await?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let after = query.page.filter(|p| !p.is_empty());
    let state = platform.state.clone();
    let page = blocking(move || state.jobs(&svc, after.as_deref(), limit)).await?;
    let mut jobs = serde_json::Map::new();
    for job in &page.jobs {
        jobs.insert(
            job.name.clone(),
            json!({
                "status": job.status,
                "creation_time": rfc3339(Some(job.creation_time)),
                "start_time": rfc3339(job.start_time),
                "finish_time": rfc3339(job.finish_time),
                "exit_code": job.exit_code,
                "reason": job.reason,
            }),
        );
    }
    Ok(axum::Json(json!({
        "jobs": jobs,
        "next_page": page.next.unwrap_or_default(),
        "remaining_jobs": page.remaining,
    })))
}

#[derive(Deserialize)]
struct LogQuery {
    timestamps: Option<String>,
}

async fn job_log(
    State(platform): AppState,
    Path((svc, job)): Path<(String, String)>,
    Query(query): Query<LogQuery>,
) -> ApiResult<impl IntoResponse> {
    let state = platform.state.clone();
    let (s, j) = (svc.clone(), job.clone());
    let record = blocking(move || state.job(&s, &j)).await?;
    if record.is_none() {
        return Err(ApiError::not_found("job not found"));
    }
    let state = platform.state.clone();
    let log = blocking(move || state.log(&svc, &job)).await?.unwrap_or_default();
    let timestamps = matches!(query.timestamps.as_deref(), Some("true" | "1" | "yes"));
    let text = String::from_utf8_lossy(&log);
    let body: String = if timestamps {
        text.into_owned()
    } else {
        text.lines()
            .map(|l| l.split_once(' ').map_or(l, |(_, rest)| rest))
            .fold(String::new(), |mut acc, l| {
                acc.push_str(l);
                acc.push('\n');
                acc
            })
    };
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body))
}

/// A confidential job's sealed log: the ciphertext its runtime made for the data owner,
/// served as stored (the platform cannot read it).
async fn job_sealed_log(
    State(platform): AppState,
    Path((svc, job)): Path<(String, String)>,
) -> ApiResult<Response> {
    let state = platform.state.clone();
    let sealed = blocking(move || {
        Ok(match state.sealed_log(&svc, &job)? {
            Some(sealed) => Ok(sealed),
            None => Err(state.job(&svc, &job)?.is_some()),
        })
    })
    .await?;
    match sealed {
        Ok(sealed) => Ok(([(header::CONTENT_TYPE, "application/octet-stream")], sealed).into_response()),
        Err(true) => Err(ApiError::not_found("this job has no sealed log")),
        Err(false) => Err(ApiError::not_found("job not found")),
    }
}

#[derive(Deserialize)]
struct DeleteQuery {
    all: Option<String>,
}

async fn delete_jobs(
    State(platform): AppState,
    Path(svc): Path<String>,
    Query(query): Query<DeleteQuery>,
) -> ApiResult<impl IntoResponse> {
    require_service(&platform, &svc).await?;
    let all = matches!(query.all.as_deref(), Some("true" | "1" | "yes"));
    let state = platform.state.clone();
    let owned = svc.clone();
    let deleted = blocking(move || {
        state.delete_jobs(&owned, |j| {
            if all {
                true
            } else {
                j.status == JobStatus::Succeeded
            }
        })
    })
    .await?;
    for job in deleted.iter().filter(|j| !j.status.is_final()) {
        platform.workers.cancel(&svc, &job.name);
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_job(
    State(platform): AppState,
    Path((svc, job)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    let state = platform.state.clone();
    let (s, j) = (svc.clone(), job.clone());
    let deleted = blocking(move || state.delete_jobs(&s, |r| r.name == j)).await?;
    if deleted.is_empty() {
        return Err(ApiError::not_found("job not found"));
    }
    platform.workers.cancel(&svc, &job);
    Ok(StatusCode::NO_CONTENT)
}

// ---- buckets ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BucketBody {
    bucket_name: String,
    #[serde(default)]
    visibility: Option<String>,
    #[serde(default)]
    allowed_users: Vec<String>,
}

fn parse_bucket_body(body: &[u8]) -> ApiResult<BucketBody> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed: BucketBody = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| ApiError::bad_request(format!("invalid field `{}`: {}", e.path(), e.inner())))?;
    cloister_storage::names::validate_bucket_name(&parsed.bucket_name)
        .map_err(|e| ApiError::bad_request(format!("invalid field `bucket_name`: {e}")))?;
    if let Some(v) = &parsed.visibility
        && !["private", "public", "restricted"].contains(&v.as_str())
    {
        return Err(ApiError::bad_request(
            "invalid field `visibility`: must be private, public or restricted",
        ));
    }
    Ok(parsed)
}

fn bucket_settings(platform: &Platform, parsed: &BucketBody) -> BucketSettings {
    BucketSettings {
        visibility: parsed.visibility.clone().unwrap_or_else(|| "private".to_owned()),
        allowed_users: parsed.allowed_users.clone(),
        owner: platform.config.admin_user.clone(),
    }
}

async fn create_bucket(State(platform): AppState, body: Bytes) -> ApiResult<impl IntoResponse> {
    let parsed = parse_bucket_body(&body)?;
    platform.store.create_bucket(&parsed.bucket_name, false).await?;
    let settings = bucket_settings(&platform, &parsed);
    let state = platform.state.clone();
    blocking(move || state.put_bucket(&parsed.bucket_name, &settings)).await?;
    Ok(StatusCode::CREATED)
}

async fn update_bucket(State(platform): AppState, body: Bytes) -> ApiResult<impl IntoResponse> {
    let parsed = parse_bucket_body(&body)?;
    if !platform.store.bucket_exists(&parsed.bucket_name).await? {
        return Err(ApiError::not_found("bucket not found"));
    }
    let settings = bucket_settings(&platform, &parsed);
    let state = platform.state.clone();
    blocking(move || state.put_bucket(&parsed.bucket_name, &settings)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_buckets(State(platform): AppState) -> ApiResult<impl IntoResponse> {
    let buckets = platform.store.list_buckets().await?;
    let mut out = Vec::new();
    for bucket in buckets {
        let state = platform.state.clone();
        let name = bucket.name.clone();
        let settings = blocking(move || state.bucket(&name)).await?;
        let settings = settings.unwrap_or(BucketSettings {
            visibility: "private".to_owned(),
            allowed_users: Vec::new(),
            owner: platform.config.admin_user.clone(),
        });
        out.push(json!({
            "bucket_name": bucket.name,
            "visibility": settings.visibility,
            "allowed_users": settings.allowed_users,
            "owner": settings.owner,
            "creation_date": rfc3339(bucket.created),
        }));
    }
    Ok(axum::Json(out))
}

async fn list_objects(
    State(platform): AppState,
    Path(bucket): Path<String>,
    Query(query): Query<PageQuery>,
) -> ApiResult<impl IntoResponse> {
    if !platform.store.bucket_exists(&bucket).await? {
        return Err(ApiError::not_found("bucket not found"));
    }
    let limit = u32::try_from(query.limit.unwrap_or(1000).clamp(1, 1000)).unwrap_or(1000);
    let page = platform
        .store
        .list_objects(
            &bucket,
            "",
            query.page.as_deref().filter(|p| !p.is_empty()),
            limit,
        )
        .await?;
    let objects: Vec<Value> = page
        .objects
        .iter()
        .map(|o| json!({"object_name": o.key, "size_bytes": o.size, "last_modified": rfc3339(o.last_modified)}))
        .collect();
    Ok(axum::Json(json!({
        "objects": objects,
        "is_truncated": page.next.is_some(),
        "next_page": page.next.unwrap_or_default(),
        "returned_items": objects.len(),
    })))
}

async fn delete_bucket(
    State(platform): AppState,
    Path(bucket): Path<String>,
) -> ApiResult<impl IntoResponse> {
    cloister_storage::names::validate_bucket_name(&bucket)?;
    let state = platform.state.clone();
    let services = blocking(move || state.services()).await?;
    if let Some(user) = services.iter().find(|s| {
        s.input
            .iter()
            .chain(&s.output)
            .any(|io| io.bucket_and_folder().0 == bucket)
    }) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("bucket is used by service {:?}", user.name),
        ));
    }
    if !platform.store.bucket_exists(&bucket).await? {
        return Err(ApiError::not_found("bucket not found"));
    }
    platform.store.delete_bucket(&bucket, true).await?;
    let state = platform.state.clone();
    blocking(move || state.delete_bucket(&bucket)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PresignBody {
    object_key: String,
    #[serde(default = "default_operation")]
    operation: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

fn default_operation() -> String {
    "download".to_owned()
}

/// Longest validity SigV4 allows for presigned URLs.
const MAX_PRESIGN: u64 = 7 * 24 * 3600;

async fn presign(
    State(platform): AppState,
    Path(bucket): Path<String>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let mut de = serde_json::Deserializer::from_slice(&body);
    let parsed: PresignBody = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| ApiError::bad_request(format!("invalid field `{}`: {}", e.path(), e.inner())))?;
    let upload = match parsed.operation.as_str() {
        "upload" | "put" | "PUT" => true,
        "download" | "get" | "GET" => false,
        _ => {
            return Err(ApiError::bad_request(
                "invalid field `operation`: must be upload or download",
            ));
        }
    };
    let expires = parsed.expires_in.unwrap_or(3600);
    if expires == 0 || expires > MAX_PRESIGN {
        return Err(ApiError::bad_request(format!(
            "invalid field `expires_in`: must be 1 to {MAX_PRESIGN} seconds"
        )));
    }
    cloister_storage::names::validate_object_key(&parsed.object_key)
        .map_err(|e| ApiError::bad_request(format!("invalid field `object_key`: {e}")))?;
    if !platform.store.bucket_exists(&bucket).await? {
        return Err(ApiError::not_found("bucket not found"));
    }
    let url = platform
        .presigner
        .presign(upload, &bucket, &parsed.object_key, Duration::from_secs(expires))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let expires_at = OffsetDateTime::now_utc() + Duration::from_secs(expires);
    Ok(axum::Json(json!({
        "url": url,
        "method": if upload { "PUT" } else { "GET" },
        "expires_at": rfc3339(Some(expires_at)),
        "headers": BTreeMap::<String, String>::new(),
    })))
}
