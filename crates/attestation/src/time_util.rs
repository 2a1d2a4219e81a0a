//! Conversions between the caller's `OffsetDateTime`, unix seconds and RFC 3339 text.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::Error;

/// Unix seconds of `at`; times before 1970 are rejected because no evidence predates them.
pub(crate) fn unix_secs(at: OffsetDateTime) -> Result<u64, Error> {
    u64::try_from(at.unix_timestamp())
        .map_err(|_| Error::InvalidArgument(format!("verification time {at} is before 1970")))
}

/// The `OffsetDateTime` of unix seconds, clamped to the largest representable time.
pub(crate) fn from_unix(secs: u64) -> Result<OffsetDateTime, Error> {
    let max = time::PrimitiveDateTime::MAX.assume_utc();
    match i64::try_from(secs) {
        Ok(s) if s <= max.unix_timestamp() => OffsetDateTime::from_unix_timestamp(s)
            .map_err(|e| Error::InvalidArgument(format!("time {secs} out of range: {e}"))),
        _ => Ok(max),
    }
}

/// RFC 3339 rendering of unix seconds for messages.
pub(crate) fn rfc3339(secs: u64) -> String {
    from_unix(secs)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("@{secs}"))
}

/// Parses an RFC 3339 timestamp into unix seconds.
pub(crate) fn parse_rfc3339(s: &str) -> Result<u64, String> {
    let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|e| format!("bad RFC 3339 time '{s}': {e}"))?;
    u64::try_from(t.unix_timestamp()).map_err(|_| format!("time '{s}' is before 1970"))
}
