//! Who may do what on the S3 endpoint: the administrator's key pair may do everything; a job
//! credential ([`crate::credentials`]) only what its scope allows. s3s checks signatures with the
//! secret [`Gate`] hands it (`S3Auth`), then asks `S3Access` about each operation before its
//! body is read.

use std::sync::Arc;

use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::dto::{CopyObjectInput, CopySource, UploadPartCopyInput};
use s3s::path::S3Path;
use s3s::{S3Request, S3Result, s3_error};

use crate::credentials::{JobCredentials, Known, now};

/// The endpoint's authentication and authorization.
#[derive(Clone)]
pub(crate) struct Gate {
    pub admin_access_key: String,
    pub admin_secret_key: SecretKey,
    /// `None` for a store handle that issues no job credentials.
    pub jobs: Option<Arc<JobCredentials>>,
}

/// What a job credential may do with an object.
enum Need {
    Read,
    Write,
}

impl Gate {
    fn job(&self, access_key: &str) -> Option<Arc<Known>> {
        self.jobs.as_ref()?.get(access_key)
    }

    /// The job credential a request was signed with, `None` for the administrator's. A job
    /// credential revoked since its signature was checked is refused here.
    fn job_of(&self, access_key: &str) -> S3Result<Option<Arc<Known>>> {
        if access_key == self.admin_access_key {
            return Ok(None);
        }
        match self.job(access_key) {
            Some(known) => Ok(Some(known)),
            None => Err(s3_error!(
                AccessDenied,
                "The job credential {access_key} has been revoked."
            )),
        }
    }
}

#[async_trait::async_trait]
impl S3Auth for Gate {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        if access_key == self.admin_access_key {
            return Ok(self.admin_secret_key.clone());
        }
        match self.job(access_key) {
            Some(known) if known.grant.expired(now()) => Err(s3_error!(
                AccessDenied,
                "The job credential {access_key} expired at {}.",
                known.grant.expiry()
            )),
            Some(known) => Ok(known.secret.clone()),
            // S3 calls an unknown key `InvalidAccessKeyId` (s3s's `SimpleAuth` says
            // `NotSignedUp`, which clients do not recognise). A revoked job credential is unknown.
            None => Err(s3_error!(
                InvalidAccessKeyId,
                "The AWS Access Key Id you provided does not exist in our records."
            )),
        }
    }
}

/// What an operation needs from a job credential's scope; `None` for operations a job may never
/// perform.
fn need_of(operation: &str) -> Option<Need> {
    match operation {
        "GetObject" | "HeadObject" => Some(Need::Read),
        "PutObject"
        | "CopyObject"
        | "CreateMultipartUpload"
        | "UploadPart"
        | "UploadPartCopy"
        | "CompleteMultipartUpload"
        | "AbortMultipartUpload"
        | "ListParts" => Some(Need::Write),
        _ => None,
    }
}

fn denied(access_key: &str, operation: &str, target: &str) -> s3s::S3Error {
    s3_error!(
        AccessDenied,
        "Access Denied: the job credential {access_key} may read only its input objects and write \
         only under its output folders; {operation} of {target} is outside its scope."
    )
}

/// A copy's source must be an object the credential may read.
fn check_copy_source(known: &Known, access_key: &str, operation: &str, source: &CopySource) -> S3Result<()> {
    match source {
        CopySource::Bucket { bucket, key, .. } if known.grant.scope.may_read(bucket, key) => Ok(()),
        CopySource::Bucket { bucket, key, .. } => Err(denied(
            access_key,
            operation,
            &format!("the source {bucket}/{key}"),
        )),
        _ => Err(denied(access_key, operation, "a source outside a bucket")),
    }
}

#[async_trait::async_trait]
impl S3Access for Gate {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let Some(credentials) = cx.credentials() else {
            return Err(s3_error!(AccessDenied, "Signature is required"));
        };
        let access_key = credentials.access_key.as_str();
        let Some(known) = self.job_of(access_key)? else {
            return Ok(());
        };
        let operation = cx.s3_op().name();
        let allowed = match (need_of(operation), cx.s3_path()) {
            (Some(Need::Read), S3Path::Object { bucket, key }) => known.grant.scope.may_read(bucket, key),
            (Some(Need::Write), S3Path::Object { bucket, key }) => known.grant.scope.may_write(bucket, key),
            _ => false,
        };
        if allowed {
            return Ok(());
        }
        let target = match cx.s3_path() {
            S3Path::Root => "the service".to_owned(),
            S3Path::Bucket { bucket } => format!("the bucket {bucket}"),
            S3Path::Object { bucket, key } => format!("{bucket}/{key}"),
        };
        Err(denied(access_key, operation, &target))
    }

    async fn copy_object(&self, req: &mut S3Request<CopyObjectInput>) -> S3Result<()> {
        let Some(credentials) = &req.credentials else {
            return Err(s3_error!(AccessDenied, "Signature is required"));
        };
        match self.job_of(&credentials.access_key)? {
            None => Ok(()),
            Some(known) => check_copy_source(
                &known,
                &credentials.access_key,
                "CopyObject",
                &req.input.copy_source,
            ),
        }
    }

    async fn upload_part_copy(&self, req: &mut S3Request<UploadPartCopyInput>) -> S3Result<()> {
        let Some(credentials) = &req.credentials else {
            return Err(s3_error!(AccessDenied, "Signature is required"));
        };
        match self.job_of(&credentials.access_key)? {
            None => Ok(()),
            Some(known) => check_copy_source(
                &known,
                &credentials.access_key,
                "UploadPartCopy",
                &req.input.copy_source,
            ),
        }
    }
}
