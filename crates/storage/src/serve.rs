//! The S3 endpoint over HTTP: the `s3s` service wrapped for what S3 does around every
//! operation — request ids, CORS (preflights answered from the bucket's rules), the 7-day
//! limit of presigned URLs — and logging at the right level (client errors are not the
//! server's: they log at DEBUG; server faults at ERROR, their cause logged where they arose).

use std::future::Future;
use std::pin::Pin;

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use s3s::Body;
use s3s::service::S3Service;

use crate::Store;
use crate::index::CorsRule;
use crate::listen::{ConnectionLimits, Refusal};

/// Longest validity of a SigV4 presigned URL, as in S3.
const MAX_PRESIGNED_SECONDS: u64 = 7 * 24 * 3600;

/// The S3 HTTP service of a [`Store`], for [`serve`].
#[derive(Clone)]
pub struct S3Http {
    pub(crate) s3: S3Service,
    pub(crate) store: Store,
}

impl std::fmt::Debug for S3Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Http").finish_non_exhaustive()
    }
}

/// The region a SigV4 request is signed for, from its `Authorization` header or its presigned
/// `X-Amz-Credential` (`AKID/date/region/s3/aws4_request`).
fn signed_region<B>(req: &Request<B>) -> Option<String> {
    let from_header = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.starts_with("AWS4-HMAC-SHA256"))
        .and_then(|v| v.split("Credential=").nth(1))
        .map(|c| c.split([',', ' ']).next().unwrap_or_default().to_owned());
    let credential = from_header.or_else(|| {
        req.uri().query().and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "X-Amz-Credential")
                .map(|(_, v)| v.into_owned())
        })
    })?;
    credential.split('/').nth(2).map(str::to_owned)
}

/// S3 answers a request signed for another region with `AuthorizationHeaderMalformed` naming
/// its own region, and clients (s3cmd with its default `US`, the SDKs) re-sign for it. s3s
/// refuses a region outside `[a-z0-9-]+` as a bare `InvalidRequest` that no client follows.
fn wrong_region(region: &str) -> bool {
    region.is_empty()
        || !region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn error_response(status: StatusCode, code: &str, message: &str, request_id: &str) -> Response<Body> {
    error_response_with(status, code, message, request_id, "")
}

fn error_response_with(
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: &str,
    extra_xml: &str,
) -> Response<Body> {
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message>{extra_xml}<RequestId>{}</RequestId></Error>",
        escape(code),
        escape(message),
        escape(request_id)
    );
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    response
}

/// Whether a presigned URL asks for more than S3 allows: a week, as SigV4's `X-Amz-Expires`
/// in seconds, or as SigV2's `Expires` (a Unix time, counted from `now`), which S3 itself
/// caps only by the signing key's life but which this endpoint holds to the same week.
fn presign_too_long(uri: &http::Uri, now: i64) -> bool {
    uri.query().is_some_and(|q| {
        let pairs: Vec<_> = form_urlencoded::parse(q.as_bytes()).collect();
        let sigv2 = pairs.iter().any(|(k, _)| k == "AWSAccessKeyId");
        pairs.iter().any(|(k, v)| {
            if k.eq_ignore_ascii_case("X-Amz-Expires") {
                v.parse::<u64>().map_or(true, |n| n > MAX_PRESIGNED_SECONDS)
            } else if sigv2 && k == "Expires" {
                v.parse::<i64>()
                    .map_or(true, |at| at.saturating_sub(now) > MAX_PRESIGNED_SECONDS as i64)
            } else {
                false
            }
        })
    })
}

/// The bucket a path-style request names.
fn bucket_of(uri: &http::Uri) -> Option<&str> {
    uri.path()
        .trim_start_matches('/')
        .split('/')
        .next()
        .filter(|b| !b.is_empty())
}

fn origin_matches(pattern: &str, origin: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern.eq_ignore_ascii_case(origin),
        Some((head, tail)) => {
            origin.len() >= head.len() + tail.len()
                && origin[..head.len()].eq_ignore_ascii_case(head)
                && origin[origin.len() - tail.len()..].eq_ignore_ascii_case(tail)
        }
    }
}

fn header_allowed(rule: &CorsRule, header: &str) -> bool {
    rule.allowed_headers
        .iter()
        .any(|allowed| allowed == "*" || origin_matches(allowed, header))
}

/// The first rule that allows `origin` to use `method` with `headers` (as S3 picks it).
fn matching_rule<'a>(
    rules: &'a [CorsRule],
    origin: &str,
    method: &str,
    headers: &[String],
) -> Option<&'a CorsRule> {
    rules.iter().find(|rule| {
        rule.allowed_origins.iter().any(|o| origin_matches(o, origin))
            && rule
                .allowed_methods
                .iter()
                .any(|m| m.eq_ignore_ascii_case(method))
            && headers.iter().all(|h| header_allowed(rule, h))
    })
}

fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

fn cors_headers(headers: &mut HeaderMap, rule: &CorsRule, origin: &str) {
    let any = rule.allowed_origins.iter().any(|o| o == "*");
    set(
        headers,
        "access-control-allow-origin",
        if any { "*" } else { origin },
    );
    if !rule.expose_headers.is_empty() {
        set(
            headers,
            "access-control-expose-headers",
            &rule.expose_headers.join(", "),
        );
    }
    if !any {
        set(headers, "vary", "Origin");
    }
}

/// Puts the request id into an error body s3s serialised without one (its errors are whole
/// in memory, so this is a splice, not a re-read).
/// The `<Code>` of an S3 error document.
fn error_code(body: &[u8]) -> Option<&str> {
    let body = std::str::from_utf8(body).ok()?;
    let start = body.find("<Code>")? + "<Code>".len();
    let len = body[start..].find("</Code>")?;
    Some(&body[start..start + len])
}

fn with_request_id(response: &mut Response<Body>, request_id: &str) {
    let Some(bytes) = response.body().bytes() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return;
    };
    if text.contains("<RequestId>") {
        return;
    }
    let Some(end) = text.rfind("</Error>") else { return };
    let body = format!(
        "{}<RequestId>{request_id}</RequestId>{}",
        &text[..end],
        &text[end..]
    );
    response.headers_mut().remove(http::header::CONTENT_LENGTH);
    *response.body_mut() = Body::from(body);
}

impl S3Http {
    async fn handle(self, req: Request<hyper::body::Incoming>) -> Response<Body> {
        let request_id = format!("{:016X}", rand::random::<u64>());
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let origin = req
            .headers()
            .get(http::header::ORIGIN)
            .and_then(|o| o.to_str().ok())
            .map(str::to_owned);
        let bucket = bucket_of(req.uri()).map(str::to_owned);
        let has_body = req.headers().contains_key(http::header::TRANSFER_ENCODING)
            || req
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .is_some_and(|n| n > 0);
        let region = signed_region(&req).filter(|r| wrong_region(r));
        let mut response = if let Some(region) = region {
            let escaped = region
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;");
            error_response_with(
                StatusCode::BAD_REQUEST,
                "AuthorizationHeaderMalformed",
                &format!(
                    "The authorization header is malformed; the region '{region}' is wrong; expecting '{}'",
                    crate::REGION
                ),
                &request_id,
                &format!(
                    "<Region>{}</Region><SignedRegion>{escaped}</SignedRegion>",
                    crate::REGION
                ),
            )
        } else if presign_too_long(req.uri(), time::OffsetDateTime::now_utc().unix_timestamp()) {
            error_response(
                StatusCode::BAD_REQUEST,
                "AuthorizationQueryParametersError",
                "X-Amz-Expires must be less than a week (in seconds) that is; 604800",
                &request_id,
            )
        } else if method == Method::OPTIONS {
            self.preflight(&req, origin.as_deref(), bucket.as_deref(), &request_id)
        } else {
            match self.s3.call(req.map(Body::from)).await {
                Ok(response) => response,
                Err(e) => {
                    tracing::error!(error = ?e, %method, %path, request_id, "S3 request failed");
                    error_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "InternalError",
                        "We encountered an internal error. Please try again.",
                        &request_id,
                    )
                }
            }
        };
        if method != Method::OPTIONS
            && let (Some(origin), Some(bucket)) = (origin.as_deref(), bucket.as_deref())
            && let Some(rules) = self.store.cors_rules(bucket)
            && let Some(rule) = matching_rule(&rules, origin, method.as_str(), &[])
        {
            cors_headers(response.headers_mut(), rule, origin);
        }
        if response.status().is_client_error() || response.status().is_server_error() {
            with_request_id(&mut response, &request_id);
            // A refusal may come before the body was read (a failed precondition, a bad
            // signature), while a client that sent `Expect: 100-continue` may have sent the body
            // anyway: the connection's next bytes are then in doubt, so it ends here.
            if has_body {
                response
                    .headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
        }
        set(response.headers_mut(), "x-amz-request-id", &request_id);
        set(response.headers_mut(), "x-amz-id-2", &request_id);
        let status = response.status();
        // A full disk was logged where it was found (once per interval): one line per refused
        // write would flood the log of a server that has no space for it.
        if status.is_server_error() && status != StatusCode::INSUFFICIENT_STORAGE {
            tracing::error!(%status, %method, %path, request_id, "S3 request failed");
        } else if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            // A refusal is the client's doing, but an operator wants to see who is locked out.
            let body = response.body().bytes();
            let reason = body.as_deref().and_then(error_code).unwrap_or("");
            tracing::info!(%status, %method, %path, request_id, %reason, "S3 request refused");
        } else {
            tracing::debug!(%status, %method, %path, request_id, "S3 request");
        }
        response
    }

    fn preflight(
        &self,
        req: &Request<hyper::body::Incoming>,
        origin: Option<&str>,
        bucket: Option<&str>,
        request_id: &str,
    ) -> Response<Body> {
        let requested_method = req
            .headers()
            .get("access-control-request-method")
            .and_then(|m| m.to_str().ok());
        let (Some(origin), Some(requested_method)) = (origin, requested_method) else {
            return error_response(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "Insufficient information. Origin request header needed.",
                request_id,
            );
        };
        let requested_headers: Vec<String> = req
            .headers()
            .get_all("access-control-request-headers")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        let rules = bucket.and_then(|b| self.store.cors_rules(b));
        let Some(rules) = rules else {
            return error_response(
                StatusCode::FORBIDDEN,
                "AccessForbidden",
                "CORSResponse: CORS is not enabled for this bucket.",
                request_id,
            );
        };
        let Some(rule) = matching_rule(&rules, origin, requested_method, &requested_headers) else {
            return error_response(
                StatusCode::FORBIDDEN,
                "AccessForbidden",
                "CORSResponse: This CORS request is not allowed. This is usually because the evalution of Origin, request method / Access-Control-Request-Method or Access-Control-Request-Headers are not whitelisted by the resource's CORS spec.",
                request_id,
            );
        };
        let mut response = Response::new(Body::empty());
        let headers = response.headers_mut();
        cors_headers(headers, rule, origin);
        set(
            headers,
            "access-control-allow-methods",
            &rule.allowed_methods.join(", "),
        );
        if !requested_headers.is_empty() {
            set(
                headers,
                "access-control-allow-headers",
                &requested_headers.join(", "),
            );
        }
        if let Some(age) = rule.max_age_seconds {
            set(headers, "access-control-max-age", &age.to_string());
        }
        response
    }
}

impl hyper::service::Service<Request<hyper::body::Incoming>> for S3Http {
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, req: Request<hyper::body::Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(req).await) })
    }
}

/// Serves the S3 protocol on `listener` within `limits` until `shutdown` completes. A
/// connection over the cap is answered `503 SlowDown`, which S3 clients retry with back-off.
pub async fn serve(
    listener: impl crate::listen::Listener,
    service: S3Http,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let refusal = Refusal {
        content_type: "application/xml",
        body: "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>The \
               server has reached its limit of open connections; please reduce your request rate \
               and retry.</Message></Error>"
            .to_owned(),
    };
    crate::listen::serve_within(listener, service, limits, refusal, "S3", shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_get_the_request_id() {
        let mut response = Response::new(Body::from(
            "<?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code><Message>m</Message></Error>".to_owned(),
        ));
        with_request_id(&mut response, "ABC123");
        let body = response.body().bytes().unwrap();
        assert!(body.ends_with(b"<Message>m</Message><RequestId>ABC123</RequestId></Error>"));
        // An id already there is left alone.
        with_request_id(&mut response, "OTHER");
        assert!(!response.body().bytes().unwrap().windows(5).any(|w| w == b"OTHER"));
    }

    #[test]
    fn presigned_urls_longer_than_a_week_are_refused() {
        let uri = |q: &str| format!("/b/k?{q}").parse::<http::Uri>().unwrap();
        let now = 1_800_000_000;
        assert!(!presign_too_long(&uri("X-Amz-Expires=604800"), now));
        assert!(presign_too_long(&uri("X-Amz-Expires=604801"), now));
        assert!(presign_too_long(&uri("x-amz-expires=-1"), now));
        assert!(!presign_too_long(&uri("list-type=2"), now));
        // SigV2: `Expires` is a time; a week from now at most.
        let v2 = |at: i64| uri(&format!("AWSAccessKeyId=AK&Signature=s&Expires={at}"));
        assert!(!presign_too_long(&v2(now + 604_800), now));
        assert!(presign_too_long(&v2(now + 604_801), now));
        assert!(presign_too_long(&v2(i64::MAX), now));
        assert!(presign_too_long(&uri("AWSAccessKeyId=AK&Expires=soon"), now));
        // `Expires` means nothing to a request that is not a SigV2 presigned URL.
        assert!(!presign_too_long(&uri("Expires=99999999999"), now));
    }

    #[test]
    fn requests_signed_for_a_region_s3_cannot_have_are_sent_to_ours() {
        let signed = |credential: &str| {
            Request::builder()
                .uri("/bucket")
                .header(
                    "authorization",
                    format!("AWS4-HMAC-SHA256 Credential={credential}, SignedHeaders=host, Signature=00"),
                )
                .body(())
                .unwrap()
        };
        let region = |credential: &str| signed_region(&signed(credential));
        assert_eq!(region("AK/20261130/US/s3/aws4_request").as_deref(), Some("US"));
        assert!(wrong_region("US"));
        assert!(!wrong_region("us-east-1"));
        assert_eq!(
            region("AK/20261130/eu-west-1/s3/aws4_request").as_deref(),
            Some("eu-west-1")
        );
        let presigned = Request::builder()
            .uri("/b/k?X-Amz-Credential=AK%2F20261130%2FUS%2Fs3%2Faws4_request&X-Amz-Expires=60")
            .body(())
            .unwrap();
        assert_eq!(signed_region(&presigned).as_deref(), Some("US"));
        let v2 = Request::builder()
            .uri("/b")
            .header("authorization", "AWS AK:sig")
            .body(())
            .unwrap();
        assert_eq!(signed_region(&v2), None);
    }

    #[test]
    fn cors_rules_match_origins_methods_and_headers() {
        let rule = CorsRule {
            allowed_origins: vec!["https://*.example.org".into()],
            allowed_methods: vec!["GET".into(), "PUT".into()],
            allowed_headers: vec!["content-type".into(), "x-amz-*".into()],
            ..Default::default()
        };
        let rules = [rule];
        let ok = |o: &str, m: &str, h: &[&str]| {
            let h: Vec<String> = h.iter().map(|s| (*s).to_owned()).collect();
            matching_rule(&rules, o, m, &h).is_some()
        };
        assert!(ok(
            "https://app.example.org",
            "PUT",
            &["content-type", "x-amz-date"]
        ));
        assert!(!ok("https://example.com", "PUT", &[]));
        assert!(!ok("https://app.example.org", "DELETE", &[]));
        assert!(!ok("https://app.example.org", "GET", &["authorization"]));
    }
}
