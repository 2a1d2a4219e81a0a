//! `/system/buckets`: buckets of the embedded store, their objects, and presigned URLs.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
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

/// Longest validity SigV4 allows for presigned URLs (7 days).
const MAX_PRESIGN: i64 = 7 * 24 * 3600;

/// OSCAR's validity when none is asked for.
const DEFAULT_PRESIGN: u64 = 900;

/// Headers a presigned request cannot be bound to: the HTTP client sets them itself, they are
/// hop-by-hop (a proxy may drop or rewrite them), or they belong to the signature mechanism.
const UNSIGNABLE_HEADERS: [&str; 17] = [
    "host",
    "authorization",
    "content-length",
    "user-agent",
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
    "x-amz-date",
    "x-amz-content-sha256",
    "x-amz-security-token",
    "x-amz-decoded-content-length",
];

/// A presigned URL to make, as OSCAR takes it (`expires_in`) and as oscar-python sends it
/// (`expires`).
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
    /// How long the URL is valid, in seconds; `0` or absent means 900 (OSCAR's default). At
    /// most 604800 (7 days), the longest a SigV4 presigned URL can be valid.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 604800, default = 900)]
    expires_in: Option<i64>,
    /// The same as `expires_in`, under the name oscar-python sends; give one of the two.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 604800, default = 900)]
    expires: Option<i64>,
    /// Uploads: the `Content-Type` the upload must carry (bound into the signature).
    /// Downloads: the `Content-Type` the answer is served with (`response-content-type`,
    /// signed into the URL). Empty means none.
    #[serde(default)]
    content_type: String,
    /// Headers the request will carry, each bound into the signature with its value. Headers
    /// the HTTP client sets itself (`Host`, `Content-Length`, `User-Agent`...), hop-by-hop
    /// headers and the signature's own (`Authorization`, `X-Amz-Date`...) are refused.
    #[serde(default)]
    extra_headers: BTreeMap<String, String>,
}

fn default_operation() -> String {
    "download".to_owned()
}

/// What `POST /system/buckets/{bucket}/presign` answers (OSCAR's fields).
#[derive(Serialize, ToSchema)]
pub(super) struct Presigned {
    /// The object's key, as asked.
    object_key: String,
    /// `upload` or `download`.
    #[schema(pattern = "^(upload|download)$")]
    operation: &'static str,
    /// The HTTP method to use with the URL: `GET` or `PUT`.
    method: &'static str,
    /// The presigned URL (on the embedded S3 endpoint).
    url: String,
    #[schema(format = DateTime)]
    expires_at: Option<String>,
    /// Headers the request must send with exactly these values (they are signed): the upload's
    /// `Content-Type` and the `extra_headers` asked for.
    headers: BTreeMap<String, String>,
}

/// Why a presign request is refused.
fn invalid(field: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("invalid field `{field}`: {why}"))
}

/// The validity asked for, from either name of the field.
fn presign_validity(parsed: &PresignBody) -> ApiResult<Duration> {
    let (field, asked) = match (parsed.expires_in, parsed.expires) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give `expires` or `expires_in`, not both: they are the same field",
            ));
        }
        (Some(seconds), None) => ("expires_in", seconds),
        (None, Some(seconds)) => ("expires", seconds),
        (None, None) => ("expires", 0),
    };
    match asked {
        0 => Ok(Duration::from_secs(DEFAULT_PRESIGN)),
        1..=MAX_PRESIGN => Ok(Duration::from_secs(asked.unsigned_abs())),
        _ if asked < 0 => Err(invalid(field, format!("{asked} is negative"))),
        _ => Err(invalid(
            field,
            format!(
                "{asked} s is longer than {MAX_PRESIGN} s (7 days), the longest a SigV4 \
                 presigned URL can be valid"
            ),
        )),
    }
}

/// A header value the request can send as is: visible ASCII, no surrounding whitespace (which
/// HTTP strips, so the signed value would not match the sent one).
fn header_value(field: &str, value: &str) -> ApiResult<HeaderValue> {
    if value.trim() != value || value.is_empty() {
        return Err(invalid(
            field,
            "a header value must be non-empty, without surrounding spaces",
        ));
    }
    let parsed = HeaderValue::from_str(value).map_err(|e| invalid(field, e))?;
    if parsed.to_str().is_err() || value.contains("  ") {
        return Err(invalid(
            field,
            "a header value must be printable ASCII, without runs of spaces",
        ));
    }
    Ok(parsed)
}

/// `content-type` as HTTP writes it, `Content-Type`, as OSCAR answers its header names.
fn canonical_header_name(name: &HeaderName) -> String {
    name.as_str()
        .split('-')
        .map(|word| {
            let mut chars = word.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// The headers the presigned request must carry: the upload's `Content-Type`, then the extra
/// headers (a `Content-Type` among them must agree).
fn presign_headers(parsed: &PresignBody, upload: bool) -> ApiResult<HeaderMap> {
    let mut headers = HeaderMap::new();
    if !parsed.content_type.is_empty() {
        // A download's type goes into the URL, but it must make a valid header all the same.
        let content_type = header_value("content_type", &parsed.content_type)?;
        if upload {
            headers.insert(CONTENT_TYPE, content_type);
        }
    }
    let mut named = BTreeMap::new();
    for (name, value) in &parsed.extra_headers {
        let field = format!("extra_headers.{name}");
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|e| invalid(&field, e))?;
        if UNSIGNABLE_HEADERS.contains(&header.as_str()) {
            return Err(invalid(
                &field,
                "this header cannot be bound to a presigned URL: the HTTP client or the \
                 signature sets it",
            ));
        }
        if let Some(earlier) = named.insert(header.as_str().to_owned(), name) {
            return Err(invalid(&field, format!("the same header as `{earlier}`")));
        }
        let value = header_value(&field, value)?;
        match headers.get(&header) {
            Some(bound) if *bound != value => {
                return Err(invalid(&field, "differs from `content_type`"));
            }
            Some(_) => {}
            None => {
                headers.insert(header, value);
            }
        }
    }
    Ok(headers)
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
        _ => return Err(invalid("operation", "must be upload or download")),
    };
    let validity = presign_validity(&parsed)?;
    let headers = presign_headers(&parsed, upload)?;
    let query: Vec<(&str, &str)> = if upload || parsed.content_type.is_empty() {
        Vec::new()
    } else {
        vec![("response-content-type", parsed.content_type.as_str())]
    };
    cloister_storage::names::validate_object_key(&parsed.object_key).map_err(|e| invalid("object_key", e))?;
    if !platform.store.bucket_exists(&bucket).await? {
        return Err(ApiError::not_found("bucket not found"));
    }
    let url = platform
        .presigner
        .presign(upload, &bucket, &parsed.object_key, validity, &headers, &query)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let expires_at = OffsetDateTime::now_utc() + validity;
    Ok(Json(Presigned {
        object_key: parsed.object_key,
        operation: if upload { "upload" } else { "download" },
        method: if upload { "PUT" } else { "GET" },
        url,
        expires_at: rfc3339(Some(expires_at)),
        headers: headers
            .iter()
            .filter_map(|(name, value)| Some((canonical_header_name(name), value.to_str().ok()?.to_owned())))
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use axum::response::IntoResponse;
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
            object_key: "in/a.txt".to_owned(),
            operation: "upload",
            method: "PUT",
            url: "http://127.0.0.1:9000/data/in/a.txt?X-Amz-Signature=00".to_owned(),
            expires_at: Some("2026-01-02T04:04:05Z".to_owned()),
            headers: BTreeMap::from([("Content-Type".to_owned(), "text/csv".to_owned())]),
        };
        // OSCAR's answer, field for field.
        let legacy = json!({
            "object_key": "in/a.txt",
            "operation": "upload",
            "method": "PUT",
            "url": "http://127.0.0.1:9000/data/in/a.txt?X-Amz-Signature=00",
            "expires_at": "2026-01-02T04:04:05Z",
            "headers": {"Content-Type": "text/csv"},
        });
        assert_eq!(
            serde_json::to_string(&presigned).unwrap(),
            serde_json::to_string(&legacy).unwrap()
        );
    }

    fn body(value: serde_json::Value) -> PresignBody {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn validity_follows_oscar_and_stays_within_sigv4() {
        let validity = |value| presign_validity(&body(value)).map(|d| d.as_secs());
        assert_eq!(validity(json!({"object_key": "a"})).unwrap(), 900);
        assert_eq!(validity(json!({"object_key": "a", "expires": 0})).unwrap(), 900);
        assert_eq!(
            validity(json!({"object_key": "a", "expires_in": 0})).unwrap(),
            900
        );
        assert_eq!(validity(json!({"object_key": "a", "expires": 1})).unwrap(), 1);
        assert_eq!(
            validity(json!({"object_key": "a", "expires_in": 604800})).unwrap(),
            604800
        );
        for refused in [
            json!({"object_key": "a", "expires": 604801}),
            json!({"object_key": "a", "expires_in": 604801}),
            json!({"object_key": "a", "expires": -1}),
            json!({"object_key": "a", "expires_in": i64::MIN}),
            json!({"object_key": "a", "expires": 60, "expires_in": 60}),
        ] {
            let error = validity(refused.clone()).err().unwrap();
            assert_eq!(
                error.into_response().status(),
                StatusCode::BAD_REQUEST,
                "{refused}"
            );
        }
        let too_long = validity(json!({"object_key": "a", "expires": 604801}))
            .err()
            .unwrap();
        assert!(format!("{too_long:?}").contains("7 days"), "{too_long:?}");
    }

    #[test]
    fn bound_headers_are_checked() {
        let headers = |value, upload| presign_headers(&body(value), upload);
        let bound = headers(
            json!({"object_key": "a", "content_type": "text/csv", "extra_headers": {"X-Amz-Meta-Origin": "lab"}}),
            true,
        )
        .unwrap();
        assert_eq!(bound[CONTENT_TYPE], "text/csv");
        assert_eq!(bound["x-amz-meta-origin"], "lab");
        assert_eq!(
            canonical_header_name(&HeaderName::from_static("x-amz-meta-origin")),
            "X-Amz-Meta-Origin"
        );
        // A download's content type is the answer's, not a request header.
        assert!(
            headers(json!({"object_key": "a", "content_type": "text/csv"}), false)
                .unwrap()
                .is_empty()
        );
        // What oscar-python sends by default binds nothing.
        assert!(
            headers(
                json!({"object_key": "a", "content_type": "", "extra_headers": {}}),
                true
            )
            .unwrap()
            .is_empty()
        );
        // Agreeing twice is fine.
        headers(
            json!({"object_key": "a", "content_type": "text/csv", "extra_headers": {"content-type": "text/csv"}}),
            true,
        )
        .unwrap();
        for refused in [
            json!({"extra_headers": {"Host": "elsewhere"}}),
            json!({"extra_headers": {"Content-Length": "5"}}),
            json!({"extra_headers": {"Authorization": "x"}}),
            json!({"extra_headers": {"X-Amz-Date": "20260101T000000Z"}}),
            json!({"extra_headers": {"Transfer-Encoding": "chunked"}}),
            json!({"extra_headers": {"bad name": "x"}}),
            json!({"extra_headers": {"x-a": "line\nbreak"}}),
            json!({"extra_headers": {"x-a": " padded"}}),
            json!({"extra_headers": {"x-a": ""}}),
            json!({"extra_headers": {"x-a": "caf\u{e9}"}}),
            json!({"extra_headers": {"X-A": "1", "x-a": "2"}}),
            json!({"content_type": "text/csv", "extra_headers": {"Content-Type": "text/plain"}}),
            json!({"content_type": "text/\u{1}csv"}),
        ] {
            let mut value = refused.clone();
            value["object_key"] = json!("a");
            let error = headers(value, true).err().unwrap();
            assert_eq!(
                error.into_response().status(),
                StatusCode::BAD_REQUEST,
                "{refused}"
            );
        }
        let error = headers(json!({"object_key": "a", "content_type": "a\nb"}), false)
            .err()
            .unwrap();
        assert_eq!(error.into_response().status(), StatusCode::BAD_REQUEST);
    }
}
