//! Conditional requests (RFC 9110 §13 as S3 applies them): `If-Match` and
//! `If-Unmodified-Since` fail with 412, `If-None-Match` and `If-Modified-Since` answer 304 to
//! reads; a header that the RFC says to ignore in the presence of another is ignored.

use s3s::dto::{ETagCondition, Timestamp};
use s3s::{S3Result, s3_error};

use crate::index::ObjectRecord;
use crate::store::{no_such_key, time_of};

fn precondition_failed() -> s3s::S3Error {
    s3_error!(
        PreconditionFailed,
        "At least one of the pre-conditions you specified did not hold"
    )
}

pub(crate) fn etag_matches(condition: &ETagCondition, etag: &str) -> bool {
    match condition {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.value() == etag,
    }
}

/// HTTP dates have whole seconds: compare at that precision.
fn modified_secs(record: &ObjectRecord) -> i64 {
    time_of(record.modified).unix_timestamp()
}

fn secs(ts: &Timestamp) -> i64 {
    time::OffsetDateTime::from(ts.clone()).unix_timestamp()
}

/// Conditions of a GET or HEAD.
pub(crate) fn check_read(
    record: &ObjectRecord,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
) -> S3Result<()> {
    match if_match {
        Some(condition) if !etag_matches(condition, &record.etag) => {
            return Err(precondition_failed());
        }
        Some(_) => {}
        None => {
            if let Some(since) = if_unmodified_since
                && modified_secs(record) > secs(since)
            {
                return Err(precondition_failed());
            }
        }
    }
    match if_none_match {
        Some(condition) if etag_matches(condition, &record.etag) => Err(s3_error!(NotModified)),
        Some(_) => Ok(()),
        None => match if_modified_since {
            Some(since) if modified_secs(record) <= secs(since) => Err(s3_error!(NotModified)),
            _ => Ok(()),
        },
    }
}

/// `x-amz-copy-source-if-*`: every failure is a 412.
pub(crate) fn check_copy_source(
    record: &ObjectRecord,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
) -> S3Result<()> {
    match check_read(
        record,
        if_match,
        if_none_match,
        if_modified_since,
        if_unmodified_since,
    ) {
        Err(e) if *e.code() == s3s::S3ErrorCode::NotModified => Err(precondition_failed()),
        other => other,
    }
}

/// Conditions of a write on the current version (`None`: no object).
pub(crate) fn check_write(
    existing: Option<&ObjectRecord>,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    key: &str,
) -> S3Result<()> {
    if let Some(condition) = if_match {
        match existing {
            None => return Err(no_such_key(key)),
            Some(record) if !etag_matches(condition, &record.etag) => {
                return Err(precondition_failed());
            }
            Some(_) => {}
        }
    }
    if let (Some(condition), Some(record)) = (if_none_match, existing)
        && etag_matches(condition, &record.etag)
    {
        return Err(precondition_failed());
    }
    Ok(())
}
