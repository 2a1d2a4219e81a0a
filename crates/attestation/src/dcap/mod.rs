//! Intel DCAP quotes: SGX (quote v3) and TDX (quote v4/v5) share one quote format, one
//! collateral format and one verifier.
//!
//! Parsing is here; verification, collateral fetching, caching and the floor come with the
//! `verify` feature.

#[cfg(feature = "verify")]
mod cached;
#[cfg(feature = "verify")]
mod fetch;
#[cfg(feature = "verify")]
mod floor;
#[cfg(feature = "verify")]
mod verifier;

#[cfg(feature = "verify")]
pub use fetch::{
    CollateralSource, DEFAULT_REFRESH_MARGIN, DcapPlatform, INTEL_PCS_URL, INTEL_ROOT_CA_CRL_URL,
    MAX_RESPONSE_BYTES, PckCaKind,
};
#[cfg(feature = "verify")]
pub use floor::{CollateralFloor, VerifiedCollateral};
#[cfg(feature = "verify")]
pub(crate) use verifier::pem_certs;
#[cfg(feature = "verify")]
pub use verifier::{CollateralWindow, DcapCollateral, DcapVerifier};

use dcap_qvl::quote::{Quote, Report};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::evidence::{EvidenceSummary, Tee, TeeDetails, hex};

const TEE_TYPE_SGX: u32 = 0x0000_0000;
const TEE_TYPE_TDX: u32 = 0x0000_0081;

/// SGX ATTRIBUTES.DEBUG (bit 1 of the first byte).
const SGX_ATTR_DEBUG: u8 = 0x02;
/// TDX TD_ATTRIBUTES.TUD: DEBUG (bit 0) and the profiling bits dcap-qvl treats as debug (4..6).
const TDX_TUD_DEBUG_MASK: u8 = 0x71;

/// Parsed fields of an SGX quote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SgxDetails {
    /// MRENCLAVE (hex).
    pub mrenclave: String,
    /// MRSIGNER (hex).
    pub mrsigner: String,
    /// ISV product ID.
    pub isv_prod_id: u16,
    /// ISV security version number.
    pub isv_svn: u16,
    /// ATTRIBUTES (16 bytes, hex).
    pub attributes: String,
    /// MISCSELECT.
    pub misc_select: u32,
    /// CPUSVN of the report (hex).
    pub cpu_svn: String,
    /// Quoting enclave SVN from the quote header.
    pub qe_svn: u16,
    /// PCE SVN from the quote header.
    pub pce_svn: u16,
    /// Attestation key type (2 = ECDSA P-256).
    pub attestation_key_type: u16,
    /// Certification data type (5 = PCK certificate chain in the quote).
    pub certification_data_type: u16,
    /// FMSPC of the platform, from the PCK certificate when the quote carries it (hex).
    pub fmspc: Option<String>,
}

/// Parsed fields of a TDX quote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TdxDetails {
    /// TD report body: `td10` (TDX 1.0), `td15` (TDX 1.5) or `td15ex`.
    pub body: String,
    /// MRTD: measurement of the initial TD contents (hex).
    pub mrtd: String,
    /// RTMR0 (hex).
    pub rtmr0: String,
    /// RTMR1 (hex).
    pub rtmr1: String,
    /// RTMR2 (hex).
    pub rtmr2: String,
    /// RTMR3 (hex).
    pub rtmr3: String,
    /// MRSEAM: measurement of the TDX module (hex).
    pub mrseam: String,
    /// MRSIGNERSEAM (hex).
    pub mrsignerseam: String,
    /// MRCONFIGID (hex).
    pub mrconfigid: String,
    /// MROWNER (hex).
    pub mrowner: String,
    /// MROWNERCONFIG (hex).
    pub mrownerconfig: String,
    /// TEE_TCB_SVN (hex).
    pub tee_tcb_svn: String,
    /// TEE_TCB_SVN2 of a TDX 1.5 report (hex).
    pub tee_tcb_svn2: Option<String>,
    /// MRSERVICETD of a TDX 1.5 report (hex).
    pub mr_service_td: Option<String>,
    /// TD_ATTRIBUTES (hex).
    pub td_attributes: String,
    /// XFAM (hex).
    pub xfam: String,
    /// SEAM_ATTRIBUTES (hex).
    pub seam_attributes: String,
    /// Quoting enclave SVN from the quote header.
    pub qe_svn: u16,
    /// PCE SVN from the quote header.
    pub pce_svn: u16,
    /// Attestation key type (2 = ECDSA P-256).
    pub attestation_key_type: u16,
    /// Certification data type (5 = PCK certificate chain in the quote).
    pub certification_data_type: u16,
    /// FMSPC of the platform, from the PCK certificate when the quote carries it (hex).
    pub fmspc: Option<String>,
}

/// Recognises a DCAP quote header: version 3/4/5, an ECDSA attestation key type and the SGX or
/// TDX TEE type.
pub(crate) fn detect(b: &[u8]) -> Option<Tee> {
    let version = u16::from_le_bytes(b.get(0..2)?.try_into().ok()?);
    let key_type = u16::from_le_bytes(b.get(2..4)?.try_into().ok()?);
    let tee_type = u32::from_le_bytes(b.get(4..8)?.try_into().ok()?);
    if !matches!(version, 3..=5) || !matches!(key_type, 2 | 3) {
        return None;
    }
    match tee_type {
        TEE_TYPE_SGX => Some(Tee::Sgx),
        TEE_TYPE_TDX => Some(Tee::Tdx),
        _ => None,
    }
}

fn parse_quote(bytes: &[u8]) -> Result<Quote, Error> {
    Quote::parse(bytes).map_err(|e| Error::malformed("DCAP quote", format!("{e:#}")))
}

pub(crate) fn inspect(bytes: &[u8]) -> Result<EvidenceSummary, Error> {
    let quote = parse_quote(bytes)?;
    // FMSPC is informative only; a quote without a parsable PCK chain is still inspectable.
    summarize(&quote, inspect_fmspc(&quote))
}

fn certification_data_type(quote: &Quote) -> u16 {
    match &quote.auth_data {
        dcap_qvl::quote::AuthData::V3(a) => a.certification_data.cert_type,
        dcap_qvl::quote::AuthData::V4(a) => a.qe_report_data.certification_data.cert_type,
    }
}

fn summarize(quote: &Quote, fmspc: Option<String>) -> Result<EvidenceSummary, Error> {
    let h = &quote.header;
    let cert_type = certification_data_type(quote);
    if let Some(r) = quote.report.as_sgx() {
        return Ok(EvidenceSummary {
            tee: Tee::Sgx,
            version: u32::from(h.version),
            measurement: hex(&r.mr_enclave),
            report_data: hex(&r.report_data),
            debug: r.attributes[0] & SGX_ATTR_DEBUG != 0,
            details: TeeDetails::Sgx(SgxDetails {
                mrenclave: hex(&r.mr_enclave),
                mrsigner: hex(&r.mr_signer),
                isv_prod_id: r.isv_prod_id,
                isv_svn: r.isv_svn,
                attributes: hex(&r.attributes),
                misc_select: r.misc_select,
                cpu_svn: hex(&r.cpu_svn),
                qe_svn: h.qe_svn,
                pce_svn: h.pce_svn,
                attestation_key_type: h.attestation_key_type,
                certification_data_type: cert_type,
                fmspc,
            }),
        });
    }
    let Some(r) = quote.report.as_td10() else {
        return Err(Error::malformed("DCAP quote", "unknown report body"));
    };
    let body = match &quote.report {
        Report::TD15(_) => "td15",
        Report::TD15Ex(_) => "td15ex",
        _ => "td10",
    };
    let td15 = quote.report.as_td15();
    Ok(EvidenceSummary {
        tee: Tee::Tdx,
        version: u32::from(h.version),
        measurement: hex(&r.mr_td),
        report_data: hex(&r.report_data),
        debug: r.td_attributes[0] & TDX_TUD_DEBUG_MASK != 0,
        details: TeeDetails::Tdx(TdxDetails {
            body: body.into(),
            mrtd: hex(&r.mr_td),
            rtmr0: hex(&r.rt_mr0),
            rtmr1: hex(&r.rt_mr1),
            rtmr2: hex(&r.rt_mr2),
            rtmr3: hex(&r.rt_mr3),
            mrseam: hex(&r.mr_seam),
            mrsignerseam: hex(&r.mr_signer_seam),
            mrconfigid: hex(&r.mr_config_id),
            mrowner: hex(&r.mr_owner),
            mrownerconfig: hex(&r.mr_owner_config),
            tee_tcb_svn: hex(&r.tee_tcb_svn),
            tee_tcb_svn2: td15.map(|t| hex(&t.tee_tcb_svn2)),
            mr_service_td: td15.map(|t| hex(&t.mr_service_td)),
            td_attributes: hex(&r.td_attributes),
            xfam: hex(&r.xfam),
            seam_attributes: hex(&r.seam_attributes),
            qe_svn: h.qe_svn,
            pce_svn: h.pce_svn,
            attestation_key_type: h.attestation_key_type,
            certification_data_type: cert_type,
            fmspc,
        }),
    })
}

fn inspect_fmspc(quote: &Quote) -> Option<String> {
    dcap_qvl::intel::extract_cert_chain(quote)
        .ok()
        .and_then(|chain| chain.into_iter().next())
        .and_then(|leaf| dcap_qvl::intel::parse_pck_extension(&leaf).ok())
        .map(|ext| hex(&ext.fmspc))
}
