//! Verification of SEV-SNP reports: the report signature is checked over the raw bytes
//! 0x000..0x2A0 (the `sev` crate verifies a re-encoding of its parsed structure, which would not
//! notice changes to reserved bytes); the `sev` crate checks the RSA-PSS signatures of the
//! ARK → ASK/ASVK → VCEK/VLEK chain.

use der::{Decode as _, Encode as _};
use p384::ecdsa::signature::Verifier as _;
use sev::certs::snp::{Certificate as SevCertificate, Verifiable as _};
use time::OffsetDateTime;
use x509_cert::Certificate;

use super::{Generation, REPORT_LEN, Report, SigningKey, SnpTcb};
use crate::verify::{Endorsements, EvidenceVerifier, VerifiedEvidence};
use crate::{Error, time_util};

/// The signature covers bytes 0x000..0x2A0.
const SIGNED_LEN: usize = 0x2A0;
const OFF_SIGNATURE: usize = 0x2A0;
/// SIGNATURE_ALGO 1: ECDSA P-384 with SHA-384.
const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;
/// TCB status for SNP: AMD publishes no status comparable to Intel's.
const SNP_TCB_STATUS: &str = "NotEvaluated";

/// AMD's built-in certificates per generation: the root (ARK), the VCEK signing key (ASK) and
/// the VLEK signing key (ASVK). The ARKs and ASKs are copied from the `sev` crate (virtee/sev
/// 8.0.0, src/certs/snp/builtin); the ASVKs are the third certificates of AMD's
/// `ask_ark_asvk` bundles (`certs/PROVENANCE.md`; the bundles themselves are in
/// `testdata/snp/asvk/`, and a test checks both agree).
const BUILTIN: [(Generation, &str, &str, &str); 3] = [
    (
        Generation::Milan,
        include_str!("certs/milan-ark.pem"),
        include_str!("certs/milan-ask.pem"),
        include_str!("certs/milan-asvk.pem"),
    ),
    (
        Generation::Genoa,
        include_str!("certs/genoa-ark.pem"),
        include_str!("certs/genoa-ask.pem"),
        include_str!("certs/genoa-asvk.pem"),
    ),
    (
        Generation::Turin,
        include_str!("certs/turin-ark.pem"),
        include_str!("certs/turin-ask.pem"),
        include_str!("certs/turin-asvk.pem"),
    ),
];

// AMD's VCEK/VLEK certificate extensions (VCEK spec 57230, table "VCEK extensions").
const OID_BL_SPL: &str = "1.3.6.1.4.1.3704.1.3.1";
const OID_TEE_SPL: &str = "1.3.6.1.4.1.3704.1.3.2";
const OID_SNP_SPL: &str = "1.3.6.1.4.1.3704.1.3.3";
const OID_UCODE_SPL: &str = "1.3.6.1.4.1.3704.1.3.8";
const OID_FMC_SPL: &str = "1.3.6.1.4.1.3704.1.3.9";
const OID_HWID: &str = "1.3.6.1.4.1.3704.1.4";

impl SigningKey {
    /// The subject CN AMD gives the endorsement certificate.
    fn leaf_cn(self) -> &'static str {
        match self {
            SigningKey::Vcek => "SEV-VCEK",
            SigningKey::Vlek => "SEV-VLEK",
        }
    }

    /// The subject CN of the intermediate that issues it for `generation`.
    fn issuer_cn(self, generation: Generation) -> String {
        match self {
            SigningKey::Vcek => format!("SEV-{}", generation.name()),
            SigningKey::Vlek => format!("SEV-VLEK-{}", generation.name()),
        }
    }

    fn issuer_name(self) -> &'static str {
        match self {
            SigningKey::Vcek => "ASK",
            SigningKey::Vlek => "ASVK",
        }
    }
}

impl Report<'_> {
    fn reported_tcb(&self) -> Result<[u8; 8], Error> {
        self.arr(0x180)
    }
}

/// The endorsement of one SEV-SNP report: the VCEK (or VLEK) certificate and optionally the
/// ASK (or ASVK) + ARK chain.
#[derive(Debug, Clone)]
pub struct SnpEndorsements {
    vek_der: Vec<u8>,
    chain: Option<Vec<Vec<u8>>>,
}

impl SnpEndorsements {
    /// `vek` is the VCEK or VLEK certificate, DER or PEM. `chain_pem` is AMD's `cert_chain`
    /// (ASK or ASVK, and ARK, in either order); without it the built-in certificates are used.
    pub fn new(vek: &[u8], chain_pem: Option<&[u8]>) -> Result<Self, Error> {
        let vek_der = if Certificate::from_der(vek).is_ok() {
            vek.to_vec()
        } else {
            let der = pem::parse(vek)
                .map_err(|e| Error::malformed("VCEK/VLEK certificate", format!("neither DER nor PEM: {e}")))?
                .into_contents();
            Certificate::from_der(&der).map_err(|e| Error::malformed("VCEK/VLEK certificate", e))?;
            der
        };
        let chain = match chain_pem {
            None => None,
            Some(pem_text) => {
                let certs = crate::dcap::pem_certs(pem_text, "AMD certificate chain")?;
                if certs.len() != 2 {
                    return Err(Error::malformed(
                        "AMD certificate chain",
                        format!(
                            "{} certificates, expected the ASK (or ASVK) and the ARK",
                            certs.len()
                        ),
                    ));
                }
                Some(certs)
            }
        };
        Ok(SnpEndorsements { vek_der, chain })
    }
}

/// One trusted AMD root with its two signing key certificates.
#[derive(Debug, Clone)]
struct Root {
    generation: Generation,
    ark_der: Vec<u8>,
    ask_der: Vec<u8>,
    asvk_der: Vec<u8>,
}

impl Root {
    /// The built-in intermediate that issues `kind` endorsements.
    fn issuer_der(&self, kind: SigningKey) -> &[u8] {
        match kind {
            SigningKey::Vcek => &self.ask_der,
            SigningKey::Vlek => &self.asvk_der,
        }
    }
}

/// Verifies SEV-SNP reports: the report signature with the VCEK/VLEK, the endorsement chain to
/// AMD's ARK (self-signed and one of the built-in roots), certificate validity at the
/// verification time, and that the certificate's TCB and hardware ID extensions match the
/// report's REPORTED_TCB and CHIP_ID.
///
/// The report's SIGNING_KEY decides the chain: a VCEK-signed report needs a `SEV-VCEK`
/// certificate issued by the generation's ASK (`SEV-<generation>`), a VLEK-signed one a
/// `SEV-VLEK` certificate issued by its ASVK (`SEV-VLEK-<generation>`); any other combination is
/// refused. The ARK, ASK and ASVK of Milan, Genoa and Turin are built in, so neither kind needs
/// a supplied chain.
///
/// AMD publishes no TCB status like Intel's, so the TCB status is `NotEvaluated`; a relying
/// party that needs minimum SPLs checks [`SnpDetails::reported_tcb`] (the CAS session's
/// `min_tcb`).
#[derive(Debug, Clone)]
pub struct SnpVerifier {
    roots: Vec<Root>,
}

impl Default for SnpVerifier {
    fn default() -> Self {
        Self::new()
    }
}

fn pem_to_der(text: &str) -> Option<Vec<u8>> {
    pem::parse(text).ok().map(pem::Pem::into_contents)
}

fn parse_cert(der: &[u8], what: &'static str) -> Result<Certificate, Error> {
    Certificate::from_der(der).map_err(|e| Error::malformed(what, e))
}

fn spki_der(cert: &Certificate) -> Result<Vec<u8>, Error> {
    cert.tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|e| Error::malformed("certificate", e))
}

/// The full distinguished name (RFC 4514 text), for comparing issuers with subjects.
fn dn(cert: &Certificate, subject: bool) -> String {
    let name = if subject {
        cert.tbs_certificate().subject()
    } else {
        cert.tbs_certificate().issuer()
    };
    name.to_string()
}

/// The subject's common name, empty when there is none.
fn common_name(cert: &Certificate) -> String {
    cert.tbs_certificate()
        .subject()
        .common_name()
        .ok()
        .flatten()
        .map(String::from)
        .unwrap_or_default()
}

fn sev_cert(der: &[u8], what: &'static str) -> Result<SevCertificate, Error> {
    SevCertificate::from_der(der).map_err(|e| Error::malformed(what, e))
}

fn check_validity(cert: &Certificate, at: u64, what: &str) -> Result<(), Error> {
    let v = cert.tbs_certificate().validity();
    let not_before = v.not_before.to_unix_duration().as_secs();
    let not_after = v.not_after.to_unix_duration().as_secs();
    if at < not_before || at > not_after {
        return Err(Error::verification(format!(
            "{what} certificate is not valid at {} (valid {} .. {})",
            time_util::rfc3339(at),
            time_util::rfc3339(not_before),
            time_util::rfc3339(not_after)
        )));
    }
    Ok(())
}

/// The DER contents of a certificate extension, if present exactly once.
fn extension(cert: &Certificate, oid: &str) -> Result<Option<Vec<u8>>, Error> {
    let oid = const_oid_parse(oid)?;
    let mut found = cert
        .tbs_certificate()
        .extensions()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .filter(|e| e.extn_id == oid);
    let first = found.next();
    if found.next().is_some() {
        return Err(Error::verification(format!(
            "certificate extension {oid} appears more than once"
        )));
    }
    Ok(first.map(|e| e.extn_value.as_bytes().to_vec()))
}

fn const_oid_parse(oid: &str) -> Result<der::asn1::ObjectIdentifier, Error> {
    der::asn1::ObjectIdentifier::new(oid).map_err(|e| Error::malformed("OID", e))
}

fn spl_extension(cert: &Certificate, oid: &str, name: &str) -> Result<u8, Error> {
    let value = extension(cert, oid)?
        .ok_or_else(|| Error::verification(format!("VCEK/VLEK certificate lacks the {name} extension")))?;
    let int = der::asn1::Uint::from_der(&value)
        .map_err(|e| Error::malformed("VCEK/VLEK certificate", format!("{name} extension: {e}")))?;
    match int.as_bytes() {
        [] => Ok(0),
        [b] => Ok(*b),
        _ => Err(Error::malformed(
            "VCEK/VLEK certificate",
            format!("{name} extension out of range"),
        )),
    }
}

impl SnpVerifier {
    /// A verifier that trusts AMD's Milan, Genoa and Turin roots.
    pub fn new() -> Self {
        let roots = BUILTIN
            .iter()
            .filter_map(|(generation, ark, ask, asvk)| {
                Some(Root {
                    generation: *generation,
                    ark_der: pem_to_der(ark)?,
                    ask_der: pem_to_der(ask)?,
                    asvk_der: pem_to_der(asvk)?,
                })
            })
            .collect();
        SnpVerifier { roots }
    }

    /// Finds the trusted root and the intermediate (ASK for a VCEK, ASVK for a VLEK) for `vek`.
    fn chain_for(
        &self,
        vek: &Certificate,
        kind: SigningKey,
        supplied: Option<&[Vec<u8>]>,
    ) -> Result<(Generation, Vec<u8>, Vec<u8>), Error> {
        let vek_issuer = dn(vek, false);
        match supplied {
            None => self
                .roots
                .iter()
                .find(|root| {
                    parse_cert(root.issuer_der(kind), "built-in ASK/ASVK")
                        .is_ok_and(|issuer| dn(&issuer, true) == vek_issuer)
                })
                .map(|root| {
                    (
                        root.generation,
                        root.ark_der.clone(),
                        root.issuer_der(kind).to_vec(),
                    )
                })
                .ok_or_else(|| {
                    Error::verification(format!(
                        "no built-in AMD {} issues '{vek_issuer}' (the report is signed by a {})",
                        kind.issuer_name(),
                        kind.leaf_cn()
                    ))
                }),
            Some(certs) => {
                let parsed: Vec<Certificate> = certs
                    .iter()
                    .map(|der| parse_cert(der, "AMD certificate chain"))
                    .collect::<Result<_, _>>()?;
                let ark_index = parsed
                    .iter()
                    .position(|c| dn(c, true) == dn(c, false))
                    .ok_or_else(|| Error::verification("supplied AMD chain has no self-issued ARK"))?;
                let (ark, ark_der) = parsed
                    .get(ark_index)
                    .zip(certs.get(ark_index))
                    .ok_or_else(|| Error::verification("supplied AMD chain has no ARK"))?;
                let (_, ask_der) = parsed
                    .iter()
                    .zip(certs)
                    .enumerate()
                    .find(|(i, _)| *i != ark_index)
                    .map(|(_, pair)| pair)
                    .ok_or_else(|| Error::verification("supplied AMD chain has no ASK/ASVK"))?;
                let ark_spki = spki_der(ark)?;
                let root = self
                    .roots
                    .iter()
                    .find(|root| {
                        parse_cert(&root.ark_der, "built-in ARK")
                            .and_then(|a| spki_der(&a))
                            .is_ok_and(|spki| spki == ark_spki)
                    })
                    .ok_or_else(|| {
                        Error::verification("supplied ARK is not one of AMD's built-in root keys")
                    })?;
                // The ARK signs both intermediates, so its signature alone would let an ASVK
                // stand in for an ASK: the name says which one it is.
                let expected_cn = kind.issuer_cn(root.generation);
                let intermediate_cn = common_name(&parse_cert(ask_der, "AMD certificate chain")?);
                if intermediate_cn != expected_cn {
                    return Err(Error::verification(format!(
                        "supplied AMD chain has '{intermediate_cn}' where a {} needs its {} '{expected_cn}'",
                        kind.leaf_cn(),
                        kind.issuer_name()
                    )));
                }
                Ok((root.generation, ark_der.clone(), ask_der.clone()))
            }
        }
    }
}

impl EvidenceVerifier for SnpVerifier {
    fn verify(
        &self,
        evidence: &[u8],
        endorsements: &Endorsements,
        at: OffsetDateTime,
    ) -> Result<VerifiedEvidence, Error> {
        let report = Report::parse(evidence)?;
        let Endorsements::Snp(endorsements) = endorsements else {
            return Err(Error::MissingEndorsements(
                "SEV-SNP reports are verified with the chip's VCEK (or VLEK) certificate".into(),
            ));
        };
        let now = time_util::unix_secs(at)?;
        let sig_algo = report.u32(0x34)?;
        if sig_algo != SIG_ALGO_ECDSA_P384_SHA384 {
            return Err(Error::verification(format!(
                "unsupported SEV-SNP signature algorithm {sig_algo}"
            )));
        }
        let signing_key = report.signing_key()?;
        let kind = SigningKey::from_field(signing_key).ok_or_else(|| {
            Error::verification(format!(
                "report is not signed by a VCEK or VLEK (SIGNING_KEY {signing_key})"
            ))
        })?;
        let expected_cn = kind.leaf_cn();

        let vek = parse_cert(&endorsements.vek_der, "VCEK/VLEK certificate")?;
        let vek_cn = common_name(&vek);
        if vek_cn != expected_cn {
            return Err(Error::verification(format!(
                "report is signed by a {expected_cn} (SIGNING_KEY {signing_key}) but the certificate is for '{vek_cn}'"
            )));
        }

        // Chain: ARK self-signed, ARK signs the ASK (VCEK) or ASVK (VLEK), which signs the leaf.
        let (generation, ark_der, ask_der) = self.chain_for(&vek, kind, endorsements.chain.as_deref())?;
        let ark = parse_cert(&ark_der, "ARK certificate")?;
        let ask = parse_cert(&ask_der, "ASK certificate")?;
        if dn(&ask, false) != dn(&ark, true) || dn(&vek, false) != dn(&ask, true) {
            return Err(Error::verification(
                "certificate names do not chain VCEK/VLEK -> ASK/ASVK -> ARK",
            ));
        }
        let sev_ark = sev_cert(&ark_der, "ARK certificate")?;
        let sev_ask = sev_cert(&ask_der, "ASK certificate")?;
        let sev_vek = sev_cert(&endorsements.vek_der, "VCEK/VLEK certificate")?;
        (&sev_ark, &sev_ark)
            .verify()
            .map_err(|e| Error::verification(format!("ARK is not validly self-signed: {e}")))?;
        (&sev_ark, &sev_ask)
            .verify()
            .map_err(|e| Error::verification(format!("ARK does not sign the ASK/ASVK: {e}")))?;
        (&sev_ask, &sev_vek)
            .verify()
            .map_err(|e| Error::verification(format!("ASK/ASVK does not sign the VCEK/VLEK: {e}")))?;
        check_validity(&ark, now, "ARK")?;
        check_validity(&ask, now, "ASK/ASVK")?;
        check_validity(&vek, now, "VCEK/VLEK")?;

        // Report signature over the raw signed bytes.
        let key_bytes = vek
            .tbs_certificate()
            .subject_public_key_info()
            .subject_public_key
            .raw_bytes();
        let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(key_bytes)
            .map_err(|e| Error::verification(format!("VCEK/VLEK key is not a P-384 key: {e}")))?;
        let signature = report_signature(&report)?;
        let signed = report.bytes(0, SIGNED_LEN)?;
        key.verify(signed, &signature)
            .map_err(|_| Error::verification("VCEK/VLEK does not sign the attestation report"))?;

        // The certificate is for exactly the TCB (and, for a VCEK, the chip) in the report.
        let tcb = SnpTcb::decode(report.reported_tcb()?, generation.turin_layout());
        let mut expected = vec![
            ("blSPL", OID_BL_SPL, tcb.bootloader),
            ("teeSPL", OID_TEE_SPL, tcb.tee),
            ("snpSPL", OID_SNP_SPL, tcb.snp),
            ("ucodeSPL", OID_UCODE_SPL, tcb.microcode),
        ];
        if let Some(fmc) = tcb.fmc {
            expected.push(("fmcSPL", OID_FMC_SPL, fmc));
        }
        for (name, oid, value) in expected {
            let cert_value = spl_extension(&vek, oid, name)?;
            if cert_value != value {
                return Err(Error::verification(format!(
                    "REPORTED_TCB {name} is {value} but the certificate is for {cert_value}"
                )));
            }
        }
        if kind == SigningKey::Vcek {
            let chip_id = report.chip_id()?;
            if !chip_id.iter().all(|&b| b == 0) {
                let hwid_der = extension(&vek, OID_HWID)?
                    .ok_or_else(|| Error::verification("VCEK certificate lacks the hwID extension"))?;
                let hwid = der::asn1::OctetString::from_der(&hwid_der)
                    .map(|o| o.as_bytes().to_vec())
                    .unwrap_or(hwid_der);
                if chip_id.get(..hwid.len()) != Some(hwid.as_slice()) || hwid.is_empty() {
                    return Err(Error::verification("report CHIP_ID does not match the VCEK hwID"));
                }
            }
        }

        Ok(VerifiedEvidence {
            summary: report.summarize(Some(generation))?,
            tcb_status: SNP_TCB_STATUS.into(),
            advisories: Vec::new(),
            collateral_window: None,
        })
    }
}

/// The report's r and s are 72-byte little-endian fields of which P-384 uses 48 bytes.
fn report_signature(report: &Report<'_>) -> Result<p384::ecdsa::Signature, Error> {
    let r_le = report.bytes(OFF_SIGNATURE, 72)?;
    let s_le = report.bytes(OFF_SIGNATURE + 72, 72)?;
    let (r_low, r_high) = r_le.split_at(48);
    let (s_low, s_high) = s_le.split_at(48);
    if r_high.iter().chain(s_high).any(|&b| b != 0) {
        return Err(Error::verification("report signature component out of range"));
    }
    // The rest of the signature field is reserved and unsigned; requiring zeros means no byte
    // of an accepted report can be changed.
    let padding = report.bytes(OFF_SIGNATURE + 144, REPORT_LEN - OFF_SIGNATURE - 144)?;
    if padding.iter().any(|&b| b != 0) {
        return Err(Error::verification(
            "reserved bytes after the report signature are not zero",
        ));
    }
    let r: Vec<u8> = r_low.iter().rev().copied().collect();
    let s: Vec<u8> = s_low.iter().rev().copied().collect();
    p384::ecdsa::Signature::from_scalars(
        p384::FieldBytes::clone_from_slice(&r),
        p384::FieldBytes::clone_from_slice(&s),
    )
    .map_err(|e| Error::verification(format!("invalid report signature encoding: {e}")))
}
