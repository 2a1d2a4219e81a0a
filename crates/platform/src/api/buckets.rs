//! `/system/buckets`: buckets of the embedded store, their objects, and presigned URLs.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::error::{ApiError, ApiResult};
use super::{AppState, PageQuery, Platform, blocking, rfc3339};
use crate::state::BucketSettings;

/// A bucket to create, or new settings of one.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Bucket)]
pub(super) struct BucketBody {
    /// An S3 bucket name.
    bucket_name: String,
    /// `private` (the default), `public` or `restricted`.
    #[serde(default)]
    #[schema(value_type = Option<String>, pattern = "^(private|public|restricted)$")]
    visibility: Option<String>,
    /// Users allowed for `restricted` buckets.
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

/// Create a bucket
#[utoipa::path(
    post,
    path = "/system/buckets",
    tag = "buckets",
    request_body = BucketBody,
    responses(
        (status = 201, description = "Created"),
        (status = 400, description = "Invalid", body = String, content_type = "text/plain"),
        (status = 409, description = "Exists", body = String, content_type = "text/plain"),
    ),
)]
pub(super) async fn create_bucket(State(platform): AppState, body: Bytes) -> ApiResult<StatusCode> {
    let parsed = parse_bucket_body(&body)?;
    platform.store.create_bucket(&parsed.bucket_name, false).await?;
    let settings = bucket_settings(&platform, &parsed);
    let state = platform.state.clone();
    blocking(move || state.put_bucket(&parsed.bucket_name, &settings)).await?;
    Ok(StatusCode::CREATED)
}

/// Update a bucket's visibility
#[utoipa::path(
    put,
    path = "/system/buckets",
    tag = "buckets",
    request_body = BucketBody,
    responses(
        (status = 204, description = "Updated"),
        (status = 400, description = "Invalid", body = String, content_type = "text/plain"),
        (status = 404, description = "No such bucket", body = String, content_type = "text/plain"),
    ),
)]
pub(super) async fn update_bucket(State(platform): AppState, body: Bytes) -> ApiResult<StatusCode> {
    let parsed = parse_bucket_body(&body)?;
    if !platform.store.bucket_exists(&parsed.bucket_name).await? {
        return Err(ApiError::not_found("bucket not found"));
    }
    let settings = bucket_settings(&platform, &parsed);
    let state = platform.state.clone();
    blocking(move || state.put_bucket(&parsed.bucket_name, &settings)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A bucket as listed.
#[derive(Serialize, ToSchema)]
pub(super) struct BucketInfo {
    bucket_name: String,
    visibility: String,
    allowed_users: Vec<String>,
    /// The user that created it (the admin).
    owner: String,
    #[schema(format = DateTime)]
    creation_date: Option<String>,
}

/// List buckets
#[utoipa::path(
    get,
    path = "/system/buckets",
    tag = "buckets",
    responses((status = 200, description = "Buckets", body = Vec<BucketInfo>)),
)]
pub(super) async fn list_buckets(State(platform): AppState) -> ApiResult<Json<Vec<BucketInfo>>> {
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
        out.push(BucketInfo {
            bucket_name: bucket.name,
            visibility: settings.visibility,
            allowed_users: settings.allowed_users,
            owner: settings.owner,
            creation_date: rfc3339(bucket.created),
        });
    }
    Ok(Json(out))
}

/// An object as listed.
#[derive(Serialize, ToSchema)]
pub(super) struct ObjectInfo {
    /// The object's key.
    object_name: String,
    size_bytes: u64,
    #[schema(format = DateTime)]
    last_modified: Option<String>,
}

/// One page of a bucket's objects, in key order.
#[derive(Serialize, ToSchema)]
pub(super) struct ObjectList {
    objects: Vec<ObjectInfo>,
    /// Whether more objects follow.
    is_truncated: bool,
    /// Pass as `page` for the next page; empty on the last.
    next_page: String,
    /// How many objects this page holds.
    returned_items: usize,
}

/// List objects
#[utoipa::path(
    get,
    path = "/system/buckets/{bucket}",
    tag = "buckets",
    params(("bucket" = String, Path, description = "The bucket's name"), PageQuery),
    responses(
        (status = 200, description = "Objects", body = ObjectList),
        (status = 404, description = "No such bucket", body = String, content_type = "text/plain"),
    ),
)]
pub(super) async fn list_objects(
    State(platform): AppState,
    Path(bucket): Path<String>,
    Query(query): Query<PageQuery>,
) -> ApiResult<Json<ObjectList>> {
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
    let objects: Vec<ObjectInfo> = page
        .objects
        .iter()
        .map(|o| ObjectInfo {
            object_name: o.key.clone(),
            size_bytes: o.size,
            last_modified: rfc3339(o.last_modified),
        })
        .collect();
    Ok(Json(ObjectList {
        returned_items: objects.len(),
        objects,
        is_truncated: page.next.is_some(),
        next_page: page.next.unwrap_or_default(),
    }))
}

/// Delete a bucket and its objects
#[utoipa::path(
    delete,
    path = "/system/buckets/{bucket}",
    tag = "buckets",
    params(("bucket" = String, Path, description = "The bucket's name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such bucket", body = String, content_type = "text/plain"),
        (status = 409, description = "Used by a service", body = String, content_type = "text/plain"),
    ),
)]
pub(super) async fn delete_bucket(
    State(platform): AppState,
    Path(bucket): Path<String>,
) -> ApiResult<StatusCode> {
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

/// Longest validity SigV4 allows for presigned URLs.
const MAX_PRESIGN: u64 = 7 * 24 * 3600;

/// A presigned URL to make.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Presign)]
pub(super) struct PresignBody {
    /// The object's key in the bucket.
    object_key: String,
    /// `download` (the default) or `upload`; `get`/`GET` and `put`/`PUT` are taken too.
    #[serde(default = "default_operation")]
    #[schema(pattern = "^(upload|download|put|PUT|get|GET)$", default = "download")]
    operation: String,
    /// How long the URL is valid, in seconds (3600 when absent).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 604800, default = 3600)]
    expires_in: Option<u64>,
}

fn default_operation() -> String {
    "download".to_owned()
}

/// What `POST /system/buckets/{bucket}/presign` answers.
#[derive(Serialize, ToSchema)]
pub(super) struct Presigned {
    /// The presigned URL (on the embedded S3 endpoint).
    url: String,
    /// The HTTP method to use with it: `GET` or `PUT`.
    method: &'static str,
    #[schema(format = DateTime)]
    expires_at: Option<String>,
    /// Headers to send with the request (none).
    headers: BTreeMap<String, String>,
}

/// A presigned S3 URL for one object
#[utoipa::path(
    post,
    path = "/system/buckets/{bucket}/presign",
    tag = "buckets",
    params(("bucket" = String, Path, description = "The bucket's name")),
    request_body = PresignBody,
    responses(
        (status = 200, description = "URL", body = Presigned),
        (status = 400, description = "Invalid", body = String, content_type = "text/plain"),
        (status = 404, description = "No such bucket", body = String, content_type = "text/plain"),
    ),
)]
pub(super) async fn presign(
    State(platform): AppState,
    Path(bucket): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Presigned>> {
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
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let expires_at = OffsetDateTime::now_utc() + Duration::from_secs(expires);
    Ok(Json(Presigned {
        url,
        method: if upload { "PUT" } else { "GET" },
        expires_at: rfc3339(Some(expires_at)),
        headers: BTreeMap::new(),
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The typed answers must keep the bytes the handlers sent before they were typed: each
    /// `json!` below is the handler's former answer.
    #[test]
    fn bucket_answers_keep_their_wire_format() {
        let bucket = BucketInfo {
            bucket_name: "data".to_owned(),
            visibility: "restricted".to_owned(),
            allowed_users: vec!["ana".to_owned()],
            owner: "admin".to_owned(),
            creation_date: None,
        };
        let legacy = json!({
            "bucket_name": "data",
            "visibility": "restricted",
            "allowed_users": ["ana"],
            "owner": "admin",
            "creation_date": null,
        });
        assert_eq!(
            serde_json::to_string(&vec![bucket]).unwrap(),
            serde_json::to_string(&vec![legacy]).unwrap()
        );

        let objects = ObjectList {
            objects: vec![ObjectInfo {
                object_name: "in/a.txt".to_owned(),
                size_bytes: 12,
                last_modified: Some("2026-01-02T03:04:05Z".to_owned()),
            }],
            is_truncated: true,
            next_page: "in/a.txt".to_owned(),
            returned_items: 1,
        };
        let legacy = json!({
            "objects": [{"object_name": "in/a.txt", "size_bytes": 12, "last_modified": "2026-01-02T03:04:05Z"}],
            "is_truncated": true,
            "next_page": "in/a.txt",
            "returned_items": 1,
        });
        assert_eq!(
            serde_json::to_string(&objects).unwrap(),
            serde_json::to_string(&legacy).unwrap()
        );

        let presigned = Presigned {
            url: "http://127.0.0.1:9000/data/in/a.txt?X-Amz-Signature=00".to_owned(),
            method: "GET",
            expires_at: Some("2026-01-02T04:04:05Z".to_owned()),
            headers: BTreeMap::new(),
        };
        let legacy = json!({
            "url": "http://127.0.0.1:9000/data/in/a.txt?X-Amz-Signature=00",
            "method": "GET",
            "expires_at": "2026-01-02T04:04:05Z",
            "headers": BTreeMap::<String, String>::new(),
        });
        assert_eq!(
            serde_json::to_string(&presigned).unwrap(),
            serde_json::to_string(&legacy).unwrap()
        );
    }
}
