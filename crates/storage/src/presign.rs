use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::signer::{Method, Signer};

use crate::names::{validate_bucket_name, validate_object_key};

/// Errors of [`Presigner`].
#[derive(Debug, thiserror::Error)]
pub enum PresignError {
    /// The bucket or key was refused.
    #[error(transparent)]
    InvalidName(#[from] crate::StorageError),
    /// The URL could not be signed.
    #[error("cannot sign URL: {0}")]
    Sign(String),
}

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
    pub async fn presign(
        &self,
        upload: bool,
        bucket: &str,
        key: &str,
        expires_in: Duration,
    ) -> Result<String, PresignError> {
        validate_bucket_name(bucket)?;
        validate_object_key(key)?;
        let path = object_store::path::Path::parse(key).map_err(|e| PresignError::Sign(e.to_string()))?;
        let method = if upload { Method::PUT } else { Method::GET };
        let url = self
            .client(bucket)?
            .signed_url(method, &path, expires_in)
            .await
            .map_err(|e| PresignError::Sign(e.to_string()))?;
        Ok(url.to_string())
    }
}
