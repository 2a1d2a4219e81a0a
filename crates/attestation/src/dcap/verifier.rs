//! Verification of DCAP quotes against collateral, and the collateral's validity window.

use std::time::Duration;

use dcap_qvl::QuoteCollateralV3;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::{VerifiedCollateral, cached, inspect_fmspc, parse_quote, summarize};
use crate::verify::{Endorsements, EvidenceVerifier, VerifiedEvidence};
use crate::{Error, time_util};

/// Intel SGX Provisioning Certification Root CA (DER), the trust anchor of every DCAP chain.
/// Same bytes as dcap-qvl's built-in root; the tests check it is the root of the vectors' chains.
pub(crate) const INTEL_ROOT_CA_DER: &[u8] = include_bytes!("intel_sgx_root_ca.der");

/// DCAP collateral (PCK CRL and its issuer chain, root CA CRL, TCB info and QE identity with
/// signatures and signing chains), parsed once and identified by a digest of its contents.
#[derive(Debug, Clone)]
pub struct DcapCollateral {
    pub(crate) inner: Box<QuoteCollateralV3>,
    pub(crate) digest: [u8; 32],
}

impl DcapCollateral {
    /// Parses collateral JSON in dcap-qvl's `QuoteCollateralV3` layout (CRLs and signatures as
    /// hex strings, chains as PEM, TCB info and QE identity as the signed JSON text).
    pub fn from_json(json: &[u8]) -> Result<Self, Error> {
        let inner: QuoteCollateralV3 =
            serde_json::from_slice(json).map_err(|e| Error::malformed("DCAP collateral", e))?;
        let digest = collateral_digest(&inner);
        Ok(DcapCollateral {
            inner: Box::new(inner),
            digest,
        })
    }

    /// SHA-256 over a length-prefixed encoding of every field; the cache key of the collateral.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// The period in which every part of the collateral is valid: from the latest issue date,
    /// CRL thisUpdate and certificate notBefore to the earliest nextUpdate and notAfter.
    pub fn validity_window(&self) -> Result<CollateralWindow, Error> {
        collateral_bounds(&self.inner)?.to_window()
    }
}

fn collateral_digest(c: &QuoteCollateralV3) -> [u8; 32] {
    let mut h = Sha256::new();
    let fields: [&[u8]; 9] = [
        c.pck_crl_issuer_chain.as_bytes(),
        &c.root_ca_crl,
        &c.pck_crl,
        c.tcb_info_issuer_chain.as_bytes(),
        c.tcb_info.as_bytes(),
        &c.tcb_info_signature,
        c.qe_identity_issuer_chain.as_bytes(),
        c.qe_identity.as_bytes(),
        &c.qe_identity_signature,
    ];
    for field in fields {
        h.update((field.len() as u64).to_le_bytes());
        h.update(field);
    }
    match &c.pck_certificate_chain {
        Some(chain) => {
            h.update([1]);
            h.update((chain.len() as u64).to_le_bytes());
            h.update(chain.as_bytes());
        }
        None => h.update([0]),
    }
    h.finalize().into()
}

/// Validity window of DCAP collateral.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollateralWindow {
    /// Start: latest issueDate / CRL thisUpdate / certificate notBefore.
    #[serde(with = "time::serde::rfc3339")]
    pub valid_from: OffsetDateTime,
    /// End: earliest nextUpdate / certificate notAfter.
    #[serde(with = "time::serde::rfc3339")]
    pub valid_until: OffsetDateTime,
}

/// A validity window in unix seconds, built by intersecting the validity of every dated item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bounds {
    pub(crate) from: u64,
    pub(crate) until: u64,
}

impl Bounds {
    pub(crate) const ALWAYS: Bounds = Bounds {
        from: 0,
        until: u64::MAX,
    };

    pub(crate) fn add(&mut self, from: u64, until: Option<u64>) {
        self.from = self.from.max(from);
        if let Some(until) = until {
            self.until = self.until.min(until);
        }
    }

    /// Strictly inside: every `<`, `<=`, `>` and `>=` comparison against either bound has the
    /// same outcome for all such times, which is what makes cached results reusable.
    pub(crate) fn strictly_contains(&self, t: u64) -> bool {
        self.from < t && t < self.until
    }

    /// Fails with the expiry errors used for any collateral-freshness failure.
    pub(crate) fn check(&self, t: u64) -> Result<(), Error> {
        if t > self.until {
            return Err(Error::CollateralExpired {
                at: time_util::rfc3339(t),
                valid_until: time_util::rfc3339(self.until),
            });
        }
        if t < self.from {
            return Err(Error::CollateralNotYetValid {
                at: time_util::rfc3339(t),
                valid_from: time_util::rfc3339(self.from),
            });
        }
        Ok(())
    }

    fn to_window(self) -> Result<CollateralWindow, Error> {
        Ok(CollateralWindow {
            valid_from: time_util::from_unix(self.from)?,
            valid_until: time_util::from_unix(self.until)?,
        })
    }
}

#[derive(Deserialize)]
struct IssueDates {
    #[serde(rename = "issueDate")]
    issue_date: String,
    #[serde(rename = "nextUpdate")]
    next_update: String,
}

fn json_bounds(json: &str, what: &'static str) -> Result<(u64, u64), Error> {
    let dates: IssueDates = serde_json::from_str(json).map_err(|e| Error::malformed(what, e))?;
    Ok((
        time_util::parse_rfc3339(&dates.issue_date).map_err(|e| Error::malformed(what, e))?,
        time_util::parse_rfc3339(&dates.next_update).map_err(|e| Error::malformed(what, e))?,
    ))
}

fn crl_bounds(der: &[u8], what: &'static str) -> Result<(u64, Option<u64>), Error> {
    use der::Decode as _;
    let crl = x509_cert::crl::CertificateList::<x509_cert::certificate::Rfc5280>::from_der(der)
        .map_err(|e| Error::malformed(what, e))?;
    let tbs = &crl.tbs_cert_list;
    Ok((
        tbs.this_update.to_unix_duration().as_secs(),
        tbs.next_update.map(|t| t.to_unix_duration().as_secs()),
    ))
}

pub(crate) fn cert_bounds(der: &[u8]) -> Result<(u64, u64), Error> {
    use der::Decode as _;
    let cert = x509_cert::Certificate::from_der(der).map_err(|e| Error::malformed("X.509 certificate", e))?;
    let validity = cert.tbs_certificate().validity();
    Ok((
        validity.not_before.to_unix_duration().as_secs(),
        validity.not_after.to_unix_duration().as_secs(),
    ))
}

pub(crate) fn pem_certs(pem_text: &[u8], what: &'static str) -> Result<Vec<Vec<u8>>, Error> {
    let certs = pem::parse_many(pem_text).map_err(|e| Error::malformed(what, e))?;
    Ok(certs.into_iter().map(pem::Pem::into_contents).collect())
}

/// The collateral's validity window (see [`DcapCollateral::validity_window`]).
pub(crate) fn collateral_bounds(c: &QuoteCollateralV3) -> Result<Bounds, Error> {
    let mut b = Bounds::ALWAYS;
    let (issue, next) = json_bounds(&c.tcb_info, "TCB info")?;
    b.add(issue, Some(next));
    let (issue, next) = json_bounds(&c.qe_identity, "QE identity")?;
    b.add(issue, Some(next));
    let (this, next) = crl_bounds(&c.root_ca_crl, "root CA CRL")?;
    b.add(this, next);
    let (this, next) = crl_bounds(&c.pck_crl, "PCK CRL")?;
    b.add(this, next);
    let mut chains = vec![
        pem_certs(c.tcb_info_issuer_chain.as_bytes(), "TCB info issuer chain")?,
        pem_certs(c.qe_identity_issuer_chain.as_bytes(), "QE identity issuer chain")?,
        pem_certs(c.pck_crl_issuer_chain.as_bytes(), "PCK CRL issuer chain")?,
        vec![INTEL_ROOT_CA_DER.to_vec()],
    ];
    if let Some(chain) = &c.pck_certificate_chain {
        chains.push(pem_certs(chain.as_bytes(), "PCK certificate chain")?);
    }
    for cert in chains.iter().flatten() {
        let (nb, na) = cert_bounds(cert)?;
        b.add(nb, Some(na));
    }
    Ok(b)
}

/// Result of a successful DCAP verification, the part both paths must agree on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DcapOutcome {
    pub(crate) tcb_status: String,
    pub(crate) advisories: Vec<String>,
    pub(crate) fmspc: Option<String>,
    /// Validity window of the collateral (not of the PCK chain), for the report.
    pub(crate) window: Bounds,
}

/// dcap-qvl's complete verification, run for every quote. Debug enclaves are allowed here so
/// that the [`crate::Policy`] decides about them and can say why it refused. The TCB-info hook
/// adds the floor level (see `cached::add_floor_level`); it runs after dcap-qvl has verified the
/// TCB info signature.
fn verify_reference(raw_quote: &[u8], c: &QuoteCollateralV3, now: u64) -> Result<DcapOutcome, Error> {
    let report = dcap_qvl::verify::QuoteVerifier::new_prod()
        .allow_debug(true)
        .dangerous_verify_with_tcb_override(raw_quote, c, now, |mut info| {
            cached::add_floor_level(&mut info);
            info
        })
        .map_err(|e| Error::verification(format!("{e:#}")))?;
    Ok(DcapOutcome {
        tcb_status: report.status,
        advisories: report.advisory_ids,
        fmspc: None,
        window: Bounds::ALWAYS,
    })
}

/// Verifier for SGX and TDX DCAP quotes against supplied collateral.
///
/// [`DcapVerifier::new`] caches verified collateral and PCK chains (see the crate docs for why
/// this is sound); [`DcapVerifier::reference`] runs dcap-qvl's full verification every time.
/// Both are `Send + Sync`; share one instance between threads to share its cache.
pub struct DcapVerifier {
    cache: Option<cached::DcapCache>,
}

impl DcapVerifier {
    /// A caching verifier: the per-quote work is two ECDSA verifications, two hashes and TCB
    /// level matching once the quote's collateral and PCK chain have been verified.
    pub fn new() -> Self {
        DcapVerifier {
            cache: Some(cached::DcapCache::new(cached::DEFAULT_CAPACITY)),
        }
    }

    /// The reference verifier: dcap-qvl's complete verification for every quote.
    pub fn reference() -> Self {
        DcapVerifier { cache: None }
    }

    /// Drops every cached collateral and PCK entry.
    pub fn clear_cache(&self) {
        if let Some(cache) = &self.cache {
            cache.clear();
        }
    }

    /// Number of cached (collateral, PCK chain) entries; `(0, 0)` for the reference verifier.
    pub fn cached_entries(&self) -> (usize, usize) {
        self.cache.as_ref().map_or((0, 0), cached::DcapCache::len)
    }

    /// Authenticates every part of `collateral` at `at`, the way verifying `quote` against it
    /// does: the TCB info and QE identity signatures and signing chains, the root CA CRL, and
    /// the quote's PCK certificate chain, whose revocation check verifies the PCK CRL's
    /// signature by its PCK CA. The quote's own signatures and TCB level are not checked here.
    ///
    /// The result is what may raise a [`CollateralFloor`]. The caching verifier keeps what it
    /// verified, so verifying the quote afterwards repeats none of this work.
    pub fn verify_collateral(
        &self,
        quote: &[u8],
        collateral: &DcapCollateral,
        at: OffsetDateTime,
    ) -> Result<VerifiedCollateral, Error> {
        let now = time_util::unix_secs(at)?;
        match &self.cache {
            Some(cache) => cache.authenticate(quote, collateral, now)?,
            // The reference verifier keeps nothing between calls, so neither does this; the
            // steps are the cached path's, which the tests hold equal to dcap-qvl's.
            None => cached::DcapCache::new(1).authenticate(quote, collateral, now)?,
        }
        VerifiedCollateral::new(collateral)
    }

    /// Verifies a binary quote against `collateral` at unix time `now` and returns the TCB
    /// status and advisories.
    pub(crate) fn verify_quote(
        &self,
        raw_quote: &[u8],
        collateral: &DcapCollateral,
        now: u64,
    ) -> Result<DcapOutcome, Error> {
        match &self.cache {
            Some(cache) => cache.verify(raw_quote, collateral, now),
            None => {
                let window = collateral_bounds(&collateral.inner)?;
                window.check(now)?;
                let outcome = verify_reference(raw_quote, &collateral.inner, now)?;
                Ok(DcapOutcome { window, ..outcome })
            }
        }
    }
}

impl Default for DcapVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for DcapVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DcapVerifier")
            .field("cached", &self.cache.is_some())
            .finish()
    }
}

impl EvidenceVerifier for DcapVerifier {
    fn verify(
        &self,
        evidence: &[u8],
        endorsements: &Endorsements,
        at: OffsetDateTime,
    ) -> Result<VerifiedEvidence, Error> {
        let quote = parse_quote(evidence)?;
        let Endorsements::Dcap(collateral) = endorsements else {
            return Err(Error::MissingEndorsements(
                "DCAP quotes are verified against collateral (TCB info, QE identity, CRLs)".into(),
            ));
        };
        let now = time_util::unix_secs(at)?;
        let outcome = self.verify_quote(evidence, collateral, now)?;
        // The reference path does not expose the PCK extension, so it is read again there.
        let fmspc = outcome.fmspc.or_else(|| inspect_fmspc(&quote));
        Ok(VerifiedEvidence {
            summary: summarize(&quote, fmspc)?,
            tcb_status: outcome.tcb_status,
            advisories: outcome.advisories,
            collateral_window: Some(outcome.window.to_window()?),
        })
    }
}

pub(crate) fn unix_time(secs: u64) -> rustls_pki_types::UnixTime {
    rustls_pki_types::UnixTime::since_unix_epoch(Duration::from_secs(secs))
}
