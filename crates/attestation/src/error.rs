//! The crate's single error type.

use std::path::PathBuf;

/// Everything that can go wrong while parsing, verifying or collecting evidence.
///
/// Messages are written for operators: they name the part of the evidence or endorsement that
/// was rejected and, where useful, the expected and actual values.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes are not any evidence format this crate knows.
    #[error("unrecognised evidence: {0}")]
    UnknownFormat(String),

    /// The evidence or an endorsement could be identified but not parsed.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// Which structure was malformed (e.g. "SGX quote", "DCAP collateral").
        what: &'static str,
        /// Why it was rejected.
        reason: String,
    },

    /// The verifier needs endorsements (collateral, VCEK, ...) that were not supplied.
    #[error("missing endorsements: {0}")]
    MissingEndorsements(String),

    /// The verification time is after the end of the collateral's validity window.
    #[error("collateral expired: verification time {at} is after the collateral's next update {valid_until}")]
    CollateralExpired {
        /// Verification time (RFC 3339).
        at: String,
        /// Earliest nextUpdate / notAfter of the collateral (RFC 3339).
        valid_until: String,
    },

    /// The verification time is before the start of the collateral's validity window.
    #[error("collateral not yet valid: verification time {at} is before {valid_from}")]
    CollateralNotYetValid {
        /// Verification time (RFC 3339).
        at: String,
        /// Latest issueDate / thisUpdate / notBefore of the collateral (RFC 3339).
        valid_from: String,
    },

    /// DCAP collateral is older than collateral already seen for the same platform (see
    /// [`crate::CollateralFloor`]): it may predate a TCB recovery or a revocation.
    #[error("collateral for {platform} is older than collateral already seen: {detail}")]
    StaleCollateral {
        /// The collateral's TEE and FMSPC, e.g. `TDX FMSPC B0C06F000000`.
        platform: String,
        /// Every older part with its value and the newest seen, e.g.
        /// `TCB info evaluation number 17 < 18`.
        detail: String,
    },

    /// A signature, certificate chain, revocation or binding check failed.
    #[error("verification failed: {0}")]
    Verification(String),

    /// Simulation evidence was signed by a platform key that is not registered.
    #[error("unknown simulation platform key {0}")]
    UnknownSimKey(String),

    /// The evidence's report data does not match the expected binding.
    #[error("report data mismatch: expected {expected}, got {actual}")]
    ReportDataMismatch {
        /// Expected report data (hex).
        expected: String,
        /// Report data found in the evidence (hex).
        actual: String,
    },

    /// A policy or policy input could not be understood.
    #[error("invalid policy: {0}")]
    InvalidPolicy(String),

    /// Invalid argument from the caller (e.g. a time before 1970).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// Collecting evidence inside the workload failed.
    #[error("evidence collection failed: {0}")]
    Collection(String),

    /// Collateral could not be fetched from a PCCS / Intel PCS (network, HTTP status, size
    /// limit, malformed response) or found in an offline collateral cache.
    #[error("collateral fetch failed: {0}")]
    CollateralFetch(String),

    /// A file-system operation failed while collecting evidence or caching collateral.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The path that was being accessed.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn malformed(what: &'static str, reason: impl std::fmt::Display) -> Self {
        Error::Malformed {
            what,
            reason: reason.to_string(),
        }
    }

    #[cfg(feature = "verify")]
    pub(crate) fn verification(reason: impl std::fmt::Display) -> Self {
        Error::Verification(reason.to_string())
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
