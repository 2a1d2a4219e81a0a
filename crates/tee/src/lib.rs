//! The TEE families Cloister knows, in one type with one spelling.
//!
//! The evidence parsers (`cloister-attestation`), the FDL and job descriptions
//! (`cloister-runtime`, `cloister-platform`), CAS sessions and the command line all name a TEE
//! the same way: `sgx`, `tdx`, `snp` or `sim`. That spelling is what [`Tee`] serialises to,
//! what [`Tee::as_str`] and `Display` print, and the only one serde reads, so a document
//! round-trips and hashes the same wherever it was written. Parsing a human's argument
//! ([`FromStr`]) is lenient in case and also takes the long names `simulation` and `sev-snp`.
//!
//! This crate is its own so that the runtime, which has no use for evidence parsing, can share
//! the type without linking `cloister-attestation`.

#![deny(missing_docs)]

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A trusted execution environment family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tee {
    /// Intel SGX enclave (DCAP quote v3).
    Sgx,
    /// Intel TDX trust domain (DCAP quote v4/v5), a confidential VM.
    Tdx,
    /// AMD SEV-SNP confidential VM.
    Snp,
    /// Cloister's software simulation TEE: no hardware protection (development; the CAS
    /// accepts it only where a session tolerates it).
    Sim,
}

impl Tee {
    /// The canonical name: `sgx`, `tdx`, `snp` or `sim`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tee::Sgx => "sgx",
            Tee::Tdx => "tdx",
            Tee::Snp => "snp",
            Tee::Sim => "sim",
        }
    }
}

impl fmt::Display for Tee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is no TEE family.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown TEE '{0}'")]
pub struct UnknownTee(pub String);

impl FromStr for Tee {
    type Err = UnknownTee;

    /// The canonical names, in any case and surrounded by white space, and the long names
    /// `simulation` and `sev-snp`.
    fn from_str(s: &str) -> Result<Self, UnknownTee> {
        match s.trim().to_ascii_lowercase().as_str() {
            "sgx" => Ok(Tee::Sgx),
            "tdx" => Ok(Tee::Tdx),
            "snp" | "sev-snp" => Ok(Tee::Snp),
            "sim" | "simulation" => Ok(Tee::Sim),
            other => Err(UnknownTee(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_spelling_in_and_out() {
        for tee in [Tee::Sgx, Tee::Tdx, Tee::Snp, Tee::Sim] {
            let json = format!("\"{}\"", tee.as_str());
            assert_eq!(tee.to_string(), tee.as_str());
            assert_eq!(serde_json::to_string(&tee).unwrap(), json);
            assert_eq!(serde_json::from_str::<Tee>(&json).unwrap(), tee);
            assert_eq!(tee.as_str().parse::<Tee>(), Ok(tee));
        }
    }

    #[test]
    fn humans_may_use_long_names_but_documents_may_not() {
        assert_eq!(" Simulation ".parse::<Tee>(), Ok(Tee::Sim));
        assert_eq!("SEV-SNP".parse::<Tee>(), Ok(Tee::Snp));
        assert_eq!(
            "quantum".parse::<Tee>().unwrap_err().to_string(),
            "unknown TEE 'quantum'"
        );
        // Documents are hashed and compared: only the canonical spelling is read.
        for alias in ["\"simulation\"", "\"sev-snp\"", "\"SGX\"", "\"quantum\""] {
            assert!(serde_json::from_str::<Tee>(alias).is_err(), "{alias}");
        }
    }
}
