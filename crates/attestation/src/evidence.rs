//! Evidence detection and parse-only inspection.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::dcap::{SgxDetails, TdxDetails};
use crate::sim::SimDetails;
use crate::snp::SnpDetails;
use crate::{Error, dcap, sim, snp};

/// Upper bound on accepted evidence input. Real quotes are a few KiB; the bound keeps hex
/// decoding and parsing of hostile input cheap.
const MAX_EVIDENCE_LEN: usize = 1 << 20;

/// A trusted execution environment family (shared with the job runtime, hence its own crate).
pub use cloister_tee::Tee;

/// Parse-only summary of a piece of evidence. Nothing in it is verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceSummary {
    /// Which TEE produced the evidence.
    pub tee: Tee,
    /// Quote / report / format version.
    pub version: u32,
    /// The primary measurement, lowercase hex: SGX MRENCLAVE, TDX MRTD, SNP MEASUREMENT,
    /// simulation measurement. This is what [`crate::Policy::expected_measurement`] compares.
    pub measurement: String,
    /// The 64-byte report data, lowercase hex.
    pub report_data: String,
    /// Whether the TEE runs in a debug (or profiling) mode that lets the host read its memory.
    pub debug: bool,
    /// TEE-specific fields.
    pub details: TeeDetails,
}

impl EvidenceSummary {
    /// The launch configuration register, lowercase hex: what the host launched the TEE for,
    /// fixed before the workload's first instruction and covered by the evidence signature
    /// (TDX MRCONFIGID, SEV-SNP HOST_DATA, the simulation TEE's config id). `None` for SGX, whose
    /// enclaves under Gramine have none.
    pub fn launch_config(&self) -> Option<&str> {
        match &self.details {
            TeeDetails::Tdx(d) => Some(&d.mrconfigid),
            TeeDetails::Snp(d) => Some(&d.host_data),
            TeeDetails::Sim(d) => Some(&d.config_id),
            TeeDetails::Sgx(_) => None,
        }
    }
}

/// TEE-specific parsed fields of an [`EvidenceSummary`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TeeDetails {
    /// SGX quote fields.
    Sgx(SgxDetails),
    /// TDX quote fields.
    Tdx(TdxDetails),
    /// SEV-SNP report fields.
    Snp(SnpDetails),
    /// Simulation evidence fields.
    Sim(SimDetails),
}

/// Returns the binary evidence: `input` itself, or its decoding when it is hex text.
///
/// Input is taken as hex when it is non-empty and consists only of ASCII hex digits and ASCII
/// whitespace (as produced by `xxd -p` or the SNP test vectors). Whitespace is ignored.
pub fn decode_input(input: &[u8]) -> Result<Cow<'_, [u8]>, Error> {
    // Hex text of the largest accepted evidence, with generous room for line breaks.
    if input.len() > MAX_EVIDENCE_LEN * 3 {
        return Err(Error::UnknownFormat(format!(
            "input is {} bytes, larger than any supported evidence",
            input.len()
        )));
    }
    let is_hex_text = input.iter().any(u8::is_ascii_hexdigit)
        && input
            .iter()
            .all(|b| b.is_ascii_hexdigit() || b.is_ascii_whitespace());
    let bytes: Cow<'_, [u8]> = if is_hex_text {
        let digits: Vec<u8> = input
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        let decoded = hex::decode(&digits).map_err(|e| {
            Error::UnknownFormat(format!("input looks like hex text but does not decode: {e}"))
        })?;
        Cow::Owned(decoded)
    } else {
        Cow::Borrowed(input)
    };
    if bytes.is_empty() {
        return Err(Error::UnknownFormat("input is empty".into()));
    }
    if bytes.len() > MAX_EVIDENCE_LEN {
        return Err(Error::UnknownFormat(format!(
            "input is {} bytes, larger than any supported evidence",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// Identifies the TEE that produced `evidence` (binary; see [`decode_input`] for hex) from its
/// header alone.
pub fn detect(evidence: &[u8]) -> Result<Tee, Error> {
    if evidence.starts_with(&sim::SIM_MAGIC) {
        return Ok(Tee::Sim);
    }
    if let Some(tee) = dcap::detect(evidence) {
        return Ok(tee);
    }
    if snp::looks_like_report(evidence) {
        return Ok(Tee::Snp);
    }
    Err(Error::UnknownFormat(format!(
        "{} bytes that are neither a DCAP quote (v3/v4/v5 header), an SEV-SNP report ({} bytes, version 2-5) \
         nor Cloister simulation evidence",
        evidence.len(),
        snp::REPORT_LEN
    )))
}

/// Parses evidence (raw binary or hex text) and summarises it without verifying anything.
///
/// Never panics, whatever the input; malformed input gives [`Error::UnknownFormat`] or
/// [`Error::Malformed`].
pub fn inspect(input: &[u8]) -> Result<EvidenceSummary, Error> {
    let bytes = decode_input(input)?;
    match detect(&bytes)? {
        Tee::Sgx | Tee::Tdx => dcap::inspect(&bytes),
        Tee::Snp => snp::inspect(&bytes),
        Tee::Sim => sim::inspect(&bytes),
    }
}

/// Lowercase hex, the crate's one rendering of binary values.
pub(crate) fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}
