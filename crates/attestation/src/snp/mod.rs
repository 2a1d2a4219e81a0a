//! AMD SEV-SNP attestation reports (ABI spec table "ATTESTATION_REPORT", versions 2–5).
//!
//! The report is parsed here at its fixed offsets; its verification (with the `verify`
//! feature) is in `verifier.rs`.

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::evidence::{EvidenceSummary, Tee, TeeDetails, hex};

pub(crate) mod cert_table;
#[cfg(feature = "verify")]
mod verifier;

#[cfg(feature = "verify")]
pub use verifier::{SnpEndorsements, SnpVerifier};

/// Size of an SEV-SNP attestation report.
pub(crate) const REPORT_LEN: usize = 0x4A0;
/// Guest policy bit 19: DEBUG.
const POLICY_DEBUG: u64 = 1 << 19;

/// Processor generation; it decides the TCB_VERSION layout and the root certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Generation {
    Milan,
    Genoa,
    Turin,
    Venice,
}

impl Generation {
    fn name(self) -> &'static str {
        match self {
            Generation::Milan => "Milan",
            Generation::Genoa => "Genoa",
            Generation::Turin => "Turin",
            Generation::Venice => "Venice",
        }
    }

    /// Turin and later lay TCB_VERSION out differently and add an FMC SPL.
    fn turin_layout(self) -> bool {
        matches!(self, Generation::Turin | Generation::Venice)
    }

    /// From the report's CPUID fields (report version 3 and later), as the `sev` crate does.
    fn from_cpuid(family: u8, model: u8) -> Option<Generation> {
        match (family, model) {
            (0x19, 0x00..=0x0F) => Some(Generation::Milan),
            (0x19, 0x10..=0x1F | 0xA0..=0xAF) => Some(Generation::Genoa),
            (0x1A, 0x00..=0x11) => Some(Generation::Turin),
            (0x1A, 0x50..=0x57 | 0x90..=0x9F | 0xA0..=0xAF | 0xC0..=0xC7) => Some(Generation::Venice),
            _ => None,
        }
    }
}

/// The key that signed a report (the report's SIGNING_KEY field), which decides the AMD
/// certificate that must have issued the endorsement: a VCEK is issued by the generation's ASK,
/// a VLEK by its ASVK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SigningKey {
    Vcek,
    Vlek,
}

impl SigningKey {
    /// From SIGNING_KEY; `None` for 7 (unsigned) and the reserved values.
    fn from_field(value: u32) -> Option<SigningKey> {
        match value {
            0 => Some(SigningKey::Vcek),
            1 => Some(SigningKey::Vlek),
            _ => None,
        }
    }
}

/// The key that signed `report` (binary, already recognised as an SEV-SNP report).
pub(crate) fn report_signing_key(report: &[u8]) -> Result<Option<SigningKey>, Error> {
    Ok(SigningKey::from_field(Report::parse(report)?.signing_key()?))
}

/// A decoded TCB_VERSION.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnpTcb {
    /// The raw 64-bit value, as 16 hex digits (little-endian bytes rendered as a number).
    pub raw: String,
    /// PSP bootloader SPL.
    pub bootloader: u8,
    /// PSP OS (TEE) SPL.
    pub tee: u8,
    /// SNP firmware SPL.
    pub snp: u8,
    /// CPU microcode SPL.
    pub microcode: u8,
    /// FMC SPL (Turin and later).
    pub fmc: Option<u8>,
}

impl SnpTcb {
    fn decode(b: [u8; 8], turin_layout: bool) -> Self {
        let raw = format!("{:016x}", u64::from_le_bytes(b));
        if turin_layout {
            SnpTcb {
                raw,
                fmc: Some(b[0]),
                bootloader: b[1],
                tee: b[2],
                snp: b[3],
                microcode: b[7],
            }
        } else {
            SnpTcb {
                raw,
                fmc: None,
                bootloader: b[0],
                tee: b[1],
                snp: b[6],
                microcode: b[7],
            }
        }
    }
}

/// Parsed fields of an SEV-SNP attestation report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnpDetails {
    /// Processor generation (from the trusted root when verified, else guessed from CPUID or
    /// CHIP_ID); decides how TCB values are decoded.
    pub generation: Option<String>,
    /// MEASUREMENT: launch digest of the guest (hex, 48 bytes).
    pub measurement: String,
    /// HOST_DATA supplied by the host at launch (hex).
    pub host_data: String,
    /// Guest POLICY as 0x-prefixed hex.
    pub policy: String,
    /// GUEST_SVN.
    pub guest_svn: u32,
    /// VMPL that requested the report.
    pub vmpl: u32,
    /// SIGNATURE_ALGO (1 = ECDSA P-384 with SHA-384).
    pub signature_algorithm: u32,
    /// Which key signed the report: `vcek`, `vlek` or `none`.
    pub signing_key: String,
    /// FAMILY_ID (hex).
    pub family_id: String,
    /// IMAGE_ID (hex).
    pub image_id: String,
    /// ID_KEY_DIGEST (hex).
    pub id_key_digest: String,
    /// AUTHOR_KEY_DIGEST (hex).
    pub author_key_digest: String,
    /// REPORT_ID (hex).
    pub report_id: String,
    /// REPORT_ID_MA (hex).
    pub report_id_ma: String,
    /// PLATFORM_INFO as 0x-prefixed hex.
    pub platform_info: String,
    /// CHIP_ID (hex); `None` when masked (all zero).
    pub chip_id: Option<String>,
    /// REPORTED_TCB: the TCB the VCEK was derived for.
    pub reported_tcb: SnpTcb,
    /// CURRENT_TCB.
    pub current_tcb: SnpTcb,
    /// COMMITTED_TCB.
    pub committed_tcb: SnpTcb,
    /// LAUNCH_TCB.
    pub launch_tcb: SnpTcb,
    /// Firmware version `major.minor.build` (CURRENT_*).
    pub current_version: String,
    /// CPUID family (report version 3 and later).
    pub cpuid_family: Option<u8>,
    /// CPUID model (report version 3 and later).
    pub cpuid_model: Option<u8>,
    /// CPUID stepping (report version 3 and later).
    pub cpuid_stepping: Option<u8>,
}

impl SnpDetails {
    /// The guest POLICY as a number (see [`SnpDetails::policy`]); `None` only if `policy` was
    /// edited into something that is not 64-bit hex.
    pub fn guest_policy(&self) -> Option<u64> {
        let digits = self.policy.strip_prefix("0x").unwrap_or(&self.policy);
        u64::from_str_radix(digits, 16).ok()
    }
}

/// Accessors over the raw report at the ABI's offsets; every read is bounds-checked.
struct Report<'a> {
    b: &'a [u8],
}

impl<'a> Report<'a> {
    fn parse(b: &'a [u8]) -> Result<Self, Error> {
        if b.len() != REPORT_LEN {
            return Err(Error::malformed(
                "SEV-SNP report",
                format!("{} bytes, expected {REPORT_LEN}", b.len()),
            ));
        }
        let r = Report { b };
        let version = r.u32(0x00)?;
        if !(2..=5).contains(&version) {
            return Err(Error::malformed(
                "SEV-SNP report",
                format!("unsupported version {version}"),
            ));
        }
        Ok(r)
    }

    fn bytes(&self, at: usize, len: usize) -> Result<&'a [u8], Error> {
        self.b
            .get(at..at.saturating_add(len))
            .ok_or_else(|| Error::malformed("SEV-SNP report", "truncated"))
    }

    fn arr<const N: usize>(&self, at: usize) -> Result<[u8; N], Error> {
        self.bytes(at, N)?
            .try_into()
            .map_err(|_| Error::malformed("SEV-SNP report", "truncated"))
    }

    fn u32(&self, at: usize) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.arr(at)?))
    }

    fn u64(&self, at: usize) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(self.arr(at)?))
    }

    fn version(&self) -> Result<u32, Error> {
        self.u32(0x00)
    }

    fn policy(&self) -> Result<u64, Error> {
        self.u64(0x08)
    }

    fn signing_key(&self) -> Result<u32, Error> {
        Ok((self.u32(0x48)? >> 2) & 0x7)
    }

    fn report_data(&self) -> Result<&'a [u8], Error> {
        self.bytes(0x50, 64)
    }

    fn measurement(&self) -> Result<&'a [u8], Error> {
        self.bytes(0x90, 48)
    }

    fn chip_id(&self) -> Result<&'a [u8], Error> {
        self.bytes(0x1A0, 64)
    }

    /// The generation implied by the report alone (CPUID fields from version 3; a CHIP_ID
    /// heuristic for version 2, as the `sev` crate uses).
    fn guess_generation(&self) -> Result<Option<Generation>, Error> {
        if self.version()? >= 3 {
            let [family, model]: [u8; 2] = self.arr(0x188)?;
            return Ok(Generation::from_cpuid(family, model));
        }
        let chip_id = self.chip_id()?;
        if chip_id.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        // Turin's CHIP_ID is 8 bytes; older generations fill all 64.
        if chip_id.get(8..).is_some_and(|rest| rest.iter().all(|&b| b == 0)) {
            Ok(Some(Generation::Turin))
        } else {
            Ok(None)
        }
    }

    fn summarize(&self, generation: Option<Generation>) -> Result<EvidenceSummary, Error> {
        let turin = generation.is_some_and(Generation::turin_layout);
        let tcb = |at: usize| -> Result<SnpTcb, Error> { Ok(SnpTcb::decode(self.arr(at)?, turin)) };
        let version = self.version()?;
        let policy = self.policy()?;
        let chip_id = self.chip_id()?;
        let cpuid = |at: usize| -> Result<Option<u8>, Error> {
            Ok(if version >= 3 {
                Some(self.arr::<1>(at)?[0])
            } else {
                None
            })
        };
        let [build, minor, major]: [u8; 3] = self.arr(0x1E8)?;
        let details = SnpDetails {
            generation: generation.map(|g| g.name().to_string()),
            measurement: hex(self.measurement()?),
            host_data: hex(self.bytes(0xC0, 32)?),
            policy: format!("{policy:#018x}"),
            guest_svn: self.u32(0x04)?,
            vmpl: self.u32(0x30)?,
            signature_algorithm: self.u32(0x34)?,
            signing_key: match self.signing_key()? {
                0 => "vcek".to_string(),
                1 => "vlek".to_string(),
                7 => "none".to_string(),
                other => format!("reserved({other})"),
            },
            family_id: hex(self.bytes(0x10, 16)?),
            image_id: hex(self.bytes(0x20, 16)?),
            id_key_digest: hex(self.bytes(0xE0, 48)?),
            author_key_digest: hex(self.bytes(0x110, 48)?),
            report_id: hex(self.bytes(0x140, 32)?),
            report_id_ma: hex(self.bytes(0x160, 32)?),
            platform_info: format!("{:#018x}", self.u64(0x40)?),
            chip_id: (!chip_id.iter().all(|&b| b == 0)).then(|| hex(chip_id)),
            reported_tcb: tcb(0x180)?,
            current_tcb: tcb(0x38)?,
            committed_tcb: tcb(0x1E0)?,
            launch_tcb: tcb(0x1F0)?,
            current_version: format!("{major}.{minor}.{build}"),
            cpuid_family: cpuid(0x188)?,
            cpuid_model: cpuid(0x189)?,
            cpuid_stepping: cpuid(0x18A)?,
        };
        Ok(EvidenceSummary {
            tee: Tee::Snp,
            version,
            measurement: details.measurement.clone(),
            report_data: hex(self.report_data()?),
            debug: policy & POLICY_DEBUG != 0,
            details: TeeDetails::Snp(details),
        })
    }
}

pub(crate) fn looks_like_report(b: &[u8]) -> bool {
    b.len() == REPORT_LEN
        && b.get(0..4)
            .and_then(|v| v.try_into().ok())
            .map(u32::from_le_bytes)
            .is_some_and(|v| (2..=5).contains(&v))
}

pub(crate) fn inspect(b: &[u8]) -> Result<EvidenceSummary, Error> {
    let report = Report::parse(b)?;
    report.summarize(report.guess_generation()?)
}
