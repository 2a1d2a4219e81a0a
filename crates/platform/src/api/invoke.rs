//! Invocations with a service's token: `POST /job/{svc}` records an asynchronous job,
//! `POST /run/{svc}` runs the service and answers with its output.

use std::io::Write;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cloister_runtime::{JobInput, Status};
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::auth::service_for_token;
use super::error::{ApiError, ApiResult};
use super::{AppState, blocking};
use crate::dispatch::{decode_event_key, new_job};
use crate::state::{JobSource, NewJob, QueueFull};

/// Seconds a client refused for too many `/run` invocations is asked to wait.
const RUN_RETRY_AFTER_SECS: u64 = 1;

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

/// What `POST /job` answers.
#[derive(Serialize, ToSchema)]
pub(super) struct JobCreated {
    /// The job's name (`<service>-<uuid>`), for `/system/logs/{svc}/{job}`.
    job_name: String,
}

/// Start an asynchronous job
///
/// A MinIO event names an input object; any other JSON is the input as is; anything else is
/// base64 of the input (whatever the Content-Type says). The job's script gets the body as
/// its event: `EVENT_FILE` holds it; `EVENT` holds it too up to 64 KiB, else the path of
/// `EVENT_FILE`.
#[utoipa::path(
    post,
    path = "/job/{svc}",
    tag = "invocations",
    params(("svc" = String, Path, description = "The service's name")),
    request_body(
        description = "A MinIO event, JSON input, or base64 of the input",
        content(
            (Value = "application/json"),
            (String = "text/plain"),
        ),
    ),
    responses(
        (status = 201, description = "Job created", body = JobCreated),
        (status = 400, description = "Bad body", body = String, content_type = "text/plain"),
        (status = 401, description = "Missing or wrong service token", body = String, content_type = "text/plain"),
        (status = 403, description = "Object outside the service's inputs", body = String, content_type = "text/plain"),
        (status = 413, description = "Body too large, or the job's data alone exceeds --max-queued-payload-mib", body = String, content_type = "text/plain"),
        (status = 429, description = "The service has as many jobs waiting to start as the server allows (--max-queued-jobs), or unfinished jobs hold as many bytes of events and payloads as it allows (--max-queued-payload-mib); nothing was recorded", body = String, content_type = "text/plain",
            headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    ),
    security(("serviceToken" = [])),
)]
pub(super) async fn invoke_async(
    State(platform): AppState,
    Path(name): Path<String>,
    request: Request,
) -> ApiResult<(StatusCode, Json<JobCreated>)> {
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
    // The job and its payload go to the state database, on the store's disk.
    platform.store.ensure_room(declared)?;
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
    Ok((
        StatusCode::CREATED,
        Json(JobCreated {
            job_name: created.name,
        }),
    ))
}

/// Run synchronously
///
/// Answers base64 of the single output file, base64 of a zip of several, or the script's
/// stdout (header X-Cloister-Output says which). An answer is never cut short: output files
/// or stdout larger than the body limit (--max-body-mib) fail the invocation with 500 (a
/// script writing more stdout is stopped there). Refused for confidential services: the body
/// would cross the platform in plaintext.
///
/// The script gets the body as its input file (`INPUT_FILE_PATH`) and the body as text as its
/// event: `EVENT_FILE` holds it; `EVENT` holds it too up to 64 KiB, else the path of
/// `EVENT_FILE`.
#[utoipa::path(
    post,
    path = "/run/{svc}",
    tag = "invocations",
    params(("svc" = String, Path, description = "The service's name")),
    request_body(
        description = "JSON input, or base64 of the input",
        content(
            (Value = "application/json"),
            (String = "text/plain"),
        ),
    ),
    responses(
        (status = 200, description = "Output: base64 text for `file` and `zip`, the script's output as is for `stdout`", body = String, content_type = "application/octet-stream",
            headers(
                ("X-Cloister-Output" = String, description = "`file` (base64 of the one output file), `zip` (base64 of a zip of the output files) or `stdout` (the script's output, as is)"),
                ("X-Cloister-Output-Name" = String, description = "The output file's name, for `file`"),
            )),
        (status = 400, description = "Bad body, or a confidential service (they take no synchronous invocations)", body = String, content_type = "text/plain"),
        (status = 401, description = "Missing or wrong service token", body = String, content_type = "text/plain"),
        (status = 413, description = "Body too large", body = String, content_type = "text/plain"),
        (status = 429, description = "As many synchronous invocations as the server admits (--max-sync-invocations) are running or waiting; refused before the body is read", body = String, content_type = "text/plain",
            headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
        (status = 500, description = "The script failed, or its output files or stdout are larger than the body limit (--max-body-mib): the body gives the reason and the log's last lines", body = String, content_type = "text/plain"),
    ),
    security(("serviceToken" = [])),
)]
pub(super) async fn invoke_sync(
    State(platform): AppState,
    Path(name): Path<String>,
    request: Request,
) -> ApiResult<Response> {
    let service = service_for_token(&platform, &name, request.headers()).await?;
    if service.confidential.is_some() {
        // A synchronous body travels through the platform in plaintext: refused as a request
        // this service cannot take, not reported as the service failing.
        return Err(ApiError::bad_request(format!(
            "service {:?} is confidential: it takes no synchronous invocations (their input and output \
             would cross the platform in plaintext); upload inputs encrypted with `cloister put \
             --encrypt <recipient>` to its input bucket instead",
            service.name
        )));
    }
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
        return Err(ApiError::internal(format!("{reason}\n{}", tail.join("\n"))));
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
    let failed = |_| ApiError::internal("cannot build the zip answer");
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, content) in files {
        zip.start_file(name.as_str(), options).map_err(failed)?;
        zip.write_all(content).map_err(|_| ApiError::internal("zip"))?;
    }
    Ok(zip.finish().map_err(failed)?.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The typed answer must keep the bytes the handler sent before it was typed.
    #[test]
    fn the_created_job_keeps_its_wire_format() {
        let created = JobCreated {
            job_name: "svc-0190".to_owned(),
        };
        let legacy = serde_json::json!({"job_name": "svc-0190"});
        assert_eq!(
            serde_json::to_string(&created).unwrap(),
            serde_json::to_string(&legacy).unwrap()
        );
    }
}
