use std::time::Duration;

use http::HeaderMap;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::signer::{Method, SignedUrlOptions, Signer};

use crate::names::{validate_bucket_name, validate_object_key};

/// Errors of [`Presigner`].
#[derive(Debug, thiserror::Error)]
pub enum PresignError {
    /// The bucket or key was refused.
    #[error(transparent)]
    InvalidName(#[from] crate::StorageError),
    /// The validity is zero or longer than SigV4 allows.
    #[error("a presigned URL must be valid for 1 s to {MAX_EXPIRY:?}, not {0:?}")]
    Expiry(Duration),
    /// The URL could not be signed.
    #[error("cannot sign URL: {0}")]
    Sign(String),
}

/// Longest validity of a SigV4 presigned URL (7 days): S3 refuses longer ones.
pub(crate) const MAX_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

/// Makes SigV4 presigned URLs (query-string authentication) for the S3 endpoint, so that a
/// holder of the URL can upload or download one object without the credentials.
#[derive(Debug, Clone)]
pub struct Presigner {
    endpoint: String,
    region: String,
    access_key: String,
    secret_key: String,
}

impl Presigner {
    /// A presigner for `endpoint` (e.g. `http://127.0.0.1:9000`) and one key pair.
    pub fn new(endpoint: &str, region: &str, access_key: &str, secret_key: &str) -> Self {
        Self {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            region: region.to_owned(),
            access_key: access_key.to_owned(),
            secret_key: secret_key.to_owned(),
        }
    }

    fn client(&self, bucket: &str) -> Result<AmazonS3, PresignError> {
        AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_region(&self.region)
            .with_bucket_name(bucket)
            .with_access_key_id(&self.access_key)
            .with_secret_access_key(&self.secret_key)
            .with_allow_http(true)
            .build()
            .map_err(|e| PresignError::Sign(e.to_string()))
    }

    /// A URL for `PUT` (upload) or `GET` (download) of one object, valid for `expires_in`.
    ///
    /// `headers` are bound into the signature: the request must carry each with exactly that
    /// value (e.g. the `content-type` of an upload). `query` parameters are signed into the URL
    /// (e.g. `response-content-type` of a download), so a holder cannot change them either.
    pub async fn presign(
        &self,
        upload: bool,
        bucket: &str,
        key: &str,
        expires_in: Duration,
        headers: &HeaderMap,
        query: &[(&str, &str)],
    ) -> Result<String, PresignError> {
        validate_bucket_name(bucket)?;
        validate_object_key(key)?;
        if expires_in.is_zero() || expires_in > MAX_EXPIRY {
            return Err(PresignError::Expiry(expires_in));
        }
        let path = object_store::path::Path::parse(key).map_err(|e| PresignError::Sign(e.to_string()))?;
        let method = if upload { Method::PUT } else { Method::GET };
        let mut options = SignedUrlOptions::default().with_query(query.iter().copied());
        options.signed_headers = headers.clone();
        let url = self
            .client(bucket)?
            .signed_url_opts(method, &path, expires_in, &options)
            .await
            .map_err(|e| PresignError::Sign(e.to_string()))?;
        Ok(url.to_string())
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use http::header::CONTENT_TYPE;

    use super::*;

    fn presigner() -> Presigner {
        Presigner::new("http://127.0.0.1:9000", "us-east-1", "access", "secret")
    }

    #[tokio::test]
    async fn validity_beyond_what_sigv4_allows_is_refused() {
        let none = HeaderMap::new();
        for expires in [Duration::ZERO, MAX_EXPIRY + Duration::from_secs(1)] {
            let refused = presigner()
                .presign(true, "data", "a.txt", expires, &none, &[])
                .await;
            assert!(
                matches!(refused, Err(PresignError::Expiry(_))),
                "{expires:?}: {refused:?}"
            );
        }
        let url = presigner()
            .presign(false, "data", "a.txt", MAX_EXPIRY, &none, &[])
            .await
            .unwrap();
        assert!(url.contains("X-Amz-Expires=604800&"), "{url}");
    }

    #[tokio::test]
    async fn bound_headers_and_query_are_signed() {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/csv"));
        let url = presigner()
            .presign(true, "data", "a.txt", Duration::from_secs(60), &headers, &[])
            .await
            .unwrap();
        assert!(url.contains("X-Amz-SignedHeaders=content-type%3Bhost&"), "{url}");
        let url = presigner()
            .presign(
                false,
                "data",
                "a.txt",
                Duration::from_secs(60),
                &HeaderMap::new(),
                &[("response-content-type", "text/csv")],
            )
            .await
            .unwrap();
        assert!(url.contains("response-content-type=text%2Fcsv&"), "{url}");
        assert!(url.contains("X-Amz-SignedHeaders=host&"), "{url}");
    }
}
