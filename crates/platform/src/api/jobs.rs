//! `/system/logs`: a service's jobs, their logs and sealed logs, and their deletion.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ApiResult};
use super::{AppState, PageQuery, Platform, blocking, rfc3339};
use crate::state::JobStatus;

async fn require_service(platform: &Platform, name: &str) -> ApiResult<()> {
    let state = platform.state.clone();
    let owned = name.to_owned();
    match blocking(move || state.service(&owned)).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::not_found("service not found")),
    }
}

/// A job as listed.
#[derive(Serialize, ToSchema)]
pub(super) struct JobInfo {
    status: JobStatus,
    #[schema(format = DateTime)]
    creation_time: Option<String>,
    #[schema(format = DateTime)]
    start_time: Option<String>,
    #[schema(format = DateTime)]
    finish_time: Option<String>,
    exit_code: Option<i32>,
    /// Why the job failed, when it did.
    reason: Option<String>,
}

/// One page of a service's jobs, oldest first.
#[derive(Serialize, ToSchema)]
pub(super) struct JobList {
    /// The jobs, by name.
    jobs: BTreeMap<String, JobInfo>,
    /// Pass as `page` for the next page; empty on the last.
    next_page: String,
    /// How many jobs follow this page.
    remaining_jobs: u64,
}

/// List a service's jobs
#[utoipa::path(
    get,
    path = "/system/logs/{svc}",
    tag = "jobs",
    params(("svc" = String, Path, description = "The service's name"), PageQuery),
    responses(
        (status = 200, description = "Jobs", body = JobList),
        (status = 404, description = "No such service", body = String, content_type = "text/plain"),
    ),
)]
pub(super) async fn list_jobs(
    State(platform): AppState,
    Path(svc): Path<String>,
    Query(query): Query<PageQuery>,
) -> ApiResult<Json<JobList>> {
    require_service(&platform, &svc).await?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let after = query.page.filter(|p| !p.is_empty());
    let state = platform.state.clone();
    let page = blocking(move || state.jobs(&svc, after.as_deref(), limit)).await?;
    let jobs = page
        .jobs
        .iter()
        .map(|job| {
            let info = JobInfo {
                status: job.status,
                creation_time: rfc3339(Some(job.creation_time)),
                start_time: rfc3339(job.start_time),
                finish_time: rfc3339(job.finish_time),
                exit_code: job.exit_code,
                reason: job.reason.clone(),
            };
            (job.name.clone(), info)
        })
        .collect();
    Ok(Json(JobList {
        jobs,
        next_page: page.next.unwrap_or_default(),
        remaining_jobs: page.remaining,
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct LogQuery {
    /// Keep each line's timestamp (`true`, `1` or `yes`).
    #[param(value_type = Option<bool>)]
    timestamps: Option<String>,
}

/// A job's log
#[utoipa::path(
    get,
    path = "/system/logs/{svc}/{job}",
    tag = "jobs",
    params(
        ("svc" = String, Path, description = "The service's name"),
        ("job" = String, Path, description = "The job's name"),
        LogQuery,
    ),
    responses(
        (status = 200, description = "Log", body = String, content_type = "text/plain"),
        (status = 404, description = "No such job", body = String, content_type = "text/plain"),
    ),
)]
pub(super) async fn job_log(
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

/// A confidential job's sealed log
///
/// The script's output, encrypted by the job's runtime to the data owner's recipients and
/// bound to bucket cloister-job-logs, key <svc>/<job>. The platform cannot read it; `cloister
/// job logs SVC JOB --decrypt IDENTITY` decrypts it.
#[utoipa::path(
    get,
    path = "/system/logs/{svc}/{job}/sealed",
    tag = "jobs",
    params(
        ("svc" = String, Path, description = "The service's name"),
        ("job" = String, Path, description = "The job's name"),
    ),
    responses(
        (status = 200, description = "The ciphertext (Cloister encrypted object format)", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 404, description = "No such job, or the job has no sealed log", body = String, content_type = "text/plain"),
    ),
)]
pub(super) async fn job_sealed_log(
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

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct DeleteQuery {
    /// Delete every job, not only the succeeded ones (`true`, `1` or `yes`); running jobs
    /// are cancelled.
    #[param(value_type = Option<bool>)]
    all: Option<String>,
}

/// Delete succeeded jobs (all with all=true)
#[utoipa::path(
    delete,
    path = "/system/logs/{svc}",
    tag = "jobs",
    params(("svc" = String, Path, description = "The service's name"), DeleteQuery),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such service", body = String, content_type = "text/plain"),
    ),
)]
pub(super) async fn delete_jobs(
    State(platform): AppState,
    Path(svc): Path<String>,
    Query(query): Query<DeleteQuery>,
) -> ApiResult<StatusCode> {
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

/// Delete a job (cancelling it if running)
#[utoipa::path(
    delete,
    path = "/system/logs/{svc}/{job}",
    tag = "jobs",
    params(
        ("svc" = String, Path, description = "The service's name"),
        ("job" = String, Path, description = "The job's name"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such job", body = String, content_type = "text/plain"),
    ),
)]
pub(super) async fn delete_job(
    State(platform): AppState,
    Path((svc, job)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let state = platform.state.clone();
    let (s, j) = (svc.clone(), job.clone());
    let deleted = blocking(move || state.delete_jobs(&s, |r| r.name == j)).await?;
    if deleted.is_empty() {
        return Err(ApiError::not_found("job not found"));
    }
    platform.workers.cancel(&svc, &job);
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The typed answer must keep the bytes the handler sent before it was typed (the `json!`
    /// below), null fields included.
    #[test]
    fn the_job_list_keeps_its_wire_format() {
        let finished = JobInfo {
            status: JobStatus::Failed,
            creation_time: Some("2026-01-02T03:04:05Z".to_owned()),
            start_time: Some("2026-01-02T03:04:06Z".to_owned()),
            finish_time: Some("2026-01-02T03:04:07Z".to_owned()),
            exit_code: Some(3),
            reason: Some("exit status 3".to_owned()),
        };
        let waiting = JobInfo {
            status: JobStatus::Pending,
            creation_time: Some("2026-01-02T03:04:08Z".to_owned()),
            start_time: None,
            finish_time: None,
            exit_code: None,
            reason: None,
        };
        let list = JobList {
            jobs: BTreeMap::from([("svc-1".to_owned(), finished), ("svc-2".to_owned(), waiting)]),
            next_page: "svc-2".to_owned(),
            remaining_jobs: 7,
        };
        let mut jobs = serde_json::Map::new();
        jobs.insert(
            "svc-1".to_owned(),
            json!({
                "status": JobStatus::Failed,
                "creation_time": "2026-01-02T03:04:05Z",
                "start_time": "2026-01-02T03:04:06Z",
                "finish_time": "2026-01-02T03:04:07Z",
                "exit_code": 3,
                "reason": "exit status 3",
            }),
        );
        jobs.insert(
            "svc-2".to_owned(),
            json!({
                "status": JobStatus::Pending,
                "creation_time": "2026-01-02T03:04:08Z",
                "start_time": null,
                "finish_time": null,
                "exit_code": null,
                "reason": null,
            }),
        );
        let legacy = json!({"jobs": jobs, "next_page": "svc-2", "remaining_jobs": 7});
        assert_eq!(
            serde_json::to_string(&list).unwrap(),
            serde_json::to_string(&legacy).unwrap()
        );
    }
}
