//! The collateral floor: the newest DCAP collateral a relying party has seen, part by part, so
//! that older collateral — still inside its validity window, still signed by Intel, but from
//! before a TCB recovery or a revocation — is refused instead of silently trusted.
//!
//! DCAP collateral is four separately issued parts, each shared by a different set of
//! platforms, so each has its own floor:
//!
//! | part | shared by | compared |
//! |---|---|---|
//! | TCB info | one TEE (`SGX`/`TDX`) and FMSPC | `tcbEvaluationDataNumber`, `issueDate` |
//! | QE identity | one quoting enclave (`QE`, `TD_QE`) | `tcbEvaluationDataNumber`, `issueDate` |
//! | PCK CRL | one PCK CA (processor or platform) | `thisUpdate` |
//! | root CA CRL | every platform | `thisUpdate` |
//!
//! Each field is a floor of its own (the largest value seen), and collateral passes only if
//! every one of its fields is at or above the floor of its part. Genuine Intel collateral only
//! ever moves all of them forward together, so this is the same as "no older than anything
//! seen".
//!
//! Checking may read unverified collateral: at worst it lets through collateral that the
//! verifier then rejects. Raising may not: a forged part dated far in the future would lock out
//! every genuine one. So [`CollateralFloor::observe`] takes only a [`VerifiedCollateral`], which
//! exists only once every part has been authenticated up to the Intel root
//! ([`crate::DcapVerifier::verify_collateral`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{DcapCollateral, PckCaKind};
use crate::{Error, time_util};

/// The newest DCAP collateral seen, per part (see the module docs); serialisable so that it can
/// be stored and survive restarts. Starts empty, only ever rises.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollateralFloor {
    /// Per `"<TEE>/<FMSPC>"` (e.g. `TDX/B0C06F000000`).
    #[serde(default)]
    tcb_info: BTreeMap<String, SignedMark>,
    /// Per QE identity id (`QE`, `TD_QE`).
    #[serde(default)]
    qe_identity: BTreeMap<String, SignedMark>,
    /// `thisUpdate` (unix seconds) per PCK CA (`processor`, `platform`, or the issuer's name).
    #[serde(default)]
    pck_crl: BTreeMap<String, u64>,
    /// `thisUpdate` (unix seconds) of the Intel SGX Root CA CRL.
    #[serde(default)]
    root_ca_crl: Option<u64>,
}

/// The version marks of a signed JSON part (TCB info, QE identity).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignedMark {
    evaluation_number: u32,
    /// `issueDate` in unix seconds.
    issue_date: u64,
}

impl SignedMark {
    fn raise(&mut self, other: SignedMark) -> bool {
        let before = *self;
        self.evaluation_number = self.evaluation_number.max(other.evaluation_number);
        self.issue_date = self.issue_date.max(other.issue_date);
        *self != before
    }
}

/// The version marks of one collateral, read from its parts without verifying anything.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Marks {
    /// `SGX` or `TDX` (the TCB info's `id`).
    tee: String,
    /// Upper-case hex.
    fmspc: String,
    tcb_info: SignedMark,
    qe_id: String,
    qe_identity: SignedMark,
    pck_ca: String,
    pck_crl: u64,
    root_ca_crl: u64,
}

/// Collateral whose every part has been authenticated: the TCB info and QE identity signatures
/// and signing chains, the root CA CRL's signature by the Intel root, and the PCK CRL's
/// signature by the PCK CA of a chain to the Intel root. The only thing that can raise a
/// [`CollateralFloor`]; made by [`crate::DcapVerifier::verify_collateral`].
#[derive(Debug, Clone)]
pub struct VerifiedCollateral {
    marks: Marks,
}

impl VerifiedCollateral {
    /// Reads the marks of collateral that the caller has just authenticated.
    pub(super) fn new(collateral: &DcapCollateral) -> Result<Self, Error> {
        Ok(VerifiedCollateral {
            marks: Marks::of(collateral)?,
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignedHead {
    id: String,
    issue_date: String,
    tcb_evaluation_data_number: u32,
    #[serde(default)]
    fmspc: Option<String>,
}

fn signed_head(json: &str, what: &'static str) -> Result<(SignedHead, SignedMark), Error> {
    let head: SignedHead = serde_json::from_str(json).map_err(|e| Error::malformed(what, e))?;
    let issue_date = time_util::parse_rfc3339(&head.issue_date).map_err(|e| Error::malformed(what, e))?;
    let mark = SignedMark {
        evaluation_number: head.tcb_evaluation_data_number,
        issue_date,
    };
    Ok((head, mark))
}

/// `thisUpdate` and the issuing CA of a CRL. Intel's two PCK CAs get their short names, any
/// other issuer (which no genuine PCK chain would accept) its full name.
fn crl_marks(der: &[u8], what: &'static str) -> Result<(u64, String), Error> {
    use der::Decode as _;
    let crl = x509_cert::crl::CertificateList::<x509_cert::certificate::Rfc5280>::from_der(der)
        .map_err(|e| Error::malformed(what, e))?;
    let tbs = &crl.tbs_cert_list;
    let common_name = tbs
        .issuer
        .common_name()
        .map_err(|e| Error::malformed(what, e))?
        .map(String::from);
    let ca = match common_name.as_deref() {
        Some("Intel SGX PCK Processor CA") => PckCaKind::Processor.as_str().to_owned(),
        Some("Intel SGX PCK Platform CA") => PckCaKind::Platform.as_str().to_owned(),
        _ => tbs.issuer.to_string(),
    };
    Ok((tbs.this_update.to_unix_duration().as_secs(), ca))
}

impl Marks {
    fn of(collateral: &DcapCollateral) -> Result<Self, Error> {
        let c = &collateral.inner;
        let (tcb, tcb_info) = signed_head(&c.tcb_info, "TCB info")?;
        let fmspc = tcb
            .fmspc
            .ok_or_else(|| Error::malformed("TCB info", "no fmspc"))?
            .to_ascii_uppercase();
        let (qe, qe_identity) = signed_head(&c.qe_identity, "QE identity")?;
        let (pck_crl, pck_ca) = crl_marks(&c.pck_crl, "PCK CRL")?;
        let (root_ca_crl, _) = crl_marks(&c.root_ca_crl, "root CA CRL")?;
        Ok(Marks {
            tee: tcb.id,
            fmspc,
            tcb_info,
            qe_id: qe.id,
            qe_identity,
            pck_ca,
            pck_crl,
            root_ca_crl,
        })
    }

    fn tcb_key(&self) -> String {
        format!("{}/{}", self.tee, self.fmspc)
    }
}

fn older_signed(out: &mut Vec<String>, part: &str, seen: Option<&SignedMark>, got: SignedMark) {
    let Some(seen) = seen else { return };
    if got.evaluation_number < seen.evaluation_number {
        out.push(format!(
            "{part} evaluation number {} < {}",
            got.evaluation_number, seen.evaluation_number
        ));
    }
    if got.issue_date < seen.issue_date {
        out.push(format!(
            "{part} issue date {} < {}",
            time_util::rfc3339(got.issue_date),
            time_util::rfc3339(seen.issue_date)
        ));
    }
}

fn older_crl(out: &mut Vec<String>, part: &str, seen: Option<u64>, got: u64) {
    if let Some(seen) = seen
        && got < seen
    {
        out.push(format!(
            "{part} thisUpdate {} < {}",
            time_util::rfc3339(got),
            time_util::rfc3339(seen)
        ));
    }
}

impl CollateralFloor {
    /// An empty floor: accepts any collateral.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts `collateral` if none of its parts is older than the same part already observed;
    /// otherwise [`Error::StaleCollateral`] naming every older part. Reads the collateral
    /// without verifying it (see the module docs for why that is safe here).
    pub fn check(&self, collateral: &DcapCollateral) -> Result<(), Error> {
        let m = Marks::of(collateral)?;
        let mut older = Vec::new();
        older_signed(
            &mut older,
            "TCB info",
            self.tcb_info.get(&m.tcb_key()),
            m.tcb_info,
        );
        older_signed(
            &mut older,
            &format!("QE identity {}", m.qe_id),
            self.qe_identity.get(&m.qe_id),
            m.qe_identity,
        );
        older_crl(
            &mut older,
            &format!("PCK CRL ({} CA)", m.pck_ca),
            self.pck_crl.get(&m.pck_ca).copied(),
            m.pck_crl,
        );
        older_crl(&mut older, "root CA CRL", self.root_ca_crl, m.root_ca_crl);
        if older.is_empty() {
            return Ok(());
        }
        Err(Error::StaleCollateral {
            platform: format!("{} FMSPC {}", m.tee, m.fmspc),
            detail: older.join("; "),
        })
    }

    /// Raises every part's floor to the verified collateral's marks; returns whether anything
    /// rose (and so needs storing).
    pub fn observe(&mut self, verified: &VerifiedCollateral) -> bool {
        let m = &verified.marks;
        let mut rose = self.tcb_info.entry(m.tcb_key()).or_default().raise(m.tcb_info);
        rose |= self
            .qe_identity
            .entry(m.qe_id.clone())
            .or_default()
            .raise(m.qe_identity);
        rose |= raise_time(self.pck_crl.entry(m.pck_ca.clone()).or_default(), m.pck_crl);
        rose |= raise_time(self.root_ca_crl.get_or_insert_default(), m.root_ca_crl);
        rose
    }

    /// Raises this floor to `other` wherever `other` is higher (e.g. a stored floor and the one
    /// in memory); returns whether anything rose.
    pub fn merge(&mut self, other: &CollateralFloor) -> bool {
        let mut rose = false;
        for (key, mark) in &other.tcb_info {
            rose |= self.tcb_info.entry(key.clone()).or_default().raise(*mark);
        }
        for (key, mark) in &other.qe_identity {
            rose |= self.qe_identity.entry(key.clone()).or_default().raise(*mark);
        }
        for (key, time) in &other.pck_crl {
            rose |= raise_time(self.pck_crl.entry(key.clone()).or_default(), *time);
        }
        if let Some(time) = other.root_ca_crl {
            rose |= raise_time(self.root_ca_crl.get_or_insert_default(), time);
        }
        rose
    }
}

fn raise_time(floor: &mut u64, seen: u64) -> bool {
    let rose = seen > *floor;
    *floor = (*floor).max(seen);
    rose
}
