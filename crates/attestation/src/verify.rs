//! The verifier trait, endorsements, verification results and the verdict.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::dcap::{CollateralWindow, DcapCollateral, DcapVerifier};
use crate::evidence::{EvidenceSummary, Tee, decode_input, detect};
use crate::policy::Policy;
use crate::sim::SimVerifier;
use crate::snp::{SnpEndorsements, SnpVerifier};
use crate::{Error, binding};

/// Verifies one kind of evidence.
///
/// Implementations check everything that makes evidence *authentic*: signatures, certificate
/// chains up to the vendor's root, revocation and the freshness of endorsements at `at`. They do
/// not judge whether the result is *acceptable*: that is [`Policy`]'s job, so that a refusal can
/// say why.
pub trait EvidenceVerifier: Send + Sync {
    /// Verifies binary `evidence` (see [`decode_input`] for hex text) against `endorsements` at
    /// time `at`, which must come from the caller and is never read from the clock here.
    ///
    /// Returns [`Error::MissingEndorsements`] when the endorsements are of the wrong kind,
    /// [`Error::Malformed`] when the evidence does not parse, and [`Error::Verification`],
    /// [`Error::CollateralExpired`], [`Error::CollateralNotYetValid`] or
    /// [`Error::UnknownSimKey`] when it is not authentic.
    fn verify(
        &self,
        evidence: &[u8],
        endorsements: &Endorsements,
        at: OffsetDateTime,
    ) -> Result<VerifiedEvidence, Error>;
}

/// Vendor material that vouches for evidence, by TEE family.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum Endorsements {
    /// No endorsements: enough for simulation evidence, whose keys the verifier holds.
    #[default]
    None,
    /// Intel DCAP collateral for SGX and TDX quotes.
    Dcap(DcapCollateral),
    /// AMD VCEK/VLEK certificate and optional ASK/ARK chain for SEV-SNP reports.
    Snp(SnpEndorsements),
}

/// Evidence whose authenticity has been established.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedEvidence {
    /// The parsed evidence; all of it is covered by the verified signature.
    pub summary: EvidenceSummary,
    /// TCB status as the vendor names it (`UpToDate`, `OutOfDate`,
    /// `ConfigurationAndSWHardeningNeeded`, ...), `Simulated` for simulation evidence, or
    /// `NotEvaluated` for SEV-SNP (AMD publishes no TCB status; see [`crate::SnpVerifier`]).
    pub tcb_status: String,
    /// Security advisory IDs that apply to the platform's TCB.
    pub advisories: Vec<String>,
    /// Validity window of the DCAP collateral used.
    pub collateral_window: Option<CollateralWindow>,
}

impl VerifiedEvidence {
    /// Checks that the evidence's report data is `SHA-512(nonce ‖ public_key)`.
    pub fn check_binding(&self, nonce: &[u8], public_key: &[u8]) -> Result<(), Error> {
        let report_data =
            hex::decode(&self.summary.report_data).map_err(|e| Error::malformed("report data", e))?;
        binding::check_report_data(&report_data, nonce, public_key)
    }
}

/// The outcome of [`appraise`]: authenticity, the verified claims and the policy decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// The detected TEE, if the evidence was recognised at all.
    pub tee: Option<Tee>,
    /// True when signatures, certificate chains, revocation and endorsement freshness all
    /// check out at `verified_at`.
    pub authentic: bool,
    /// Why the evidence is not authentic.
    pub failure: Option<String>,
    /// True when authenticity failed because the collateral had expired at `verified_at`.
    pub collateral_expired: bool,
    /// The time the verification was done for.
    #[serde(with = "time::serde::rfc3339")]
    pub verified_at: OffsetDateTime,
    /// TCB status (only when authentic).
    pub tcb_status: Option<String>,
    /// Advisory IDs (only when authentic).
    pub advisories: Vec<String>,
    /// Primary measurement, lowercase hex (only when authentic).
    pub measurement: Option<String>,
    /// Report data, lowercase hex (only when authentic).
    pub report_data: Option<String>,
    /// Debug mode flag (only when authentic).
    pub debug: Option<bool>,
    /// Validity window of DCAP collateral.
    pub collateral_window: Option<CollateralWindow>,
    /// All parsed fields (only when authentic).
    pub evidence: Option<EvidenceSummary>,
    /// The policy decision, when a policy was given.
    pub policy_ok: Option<bool>,
    /// Human-readable reasons for a policy refusal.
    pub policy_reasons: Vec<String>,
}

impl Verdict {
    /// True when the evidence is authentic and, if a policy was given, the policy accepts it.
    pub fn accepted(&self) -> bool {
        self.authentic && self.policy_ok != Some(false)
    }
}

/// Verifies evidence (raw binary or hex text) with `verifier` at `at` and applies `policy`.
///
/// Never fails: every problem, including unparsable evidence, becomes a non-authentic verdict
/// with a `failure` message, which is what the CLI prints and the CAS logs.
pub fn appraise(
    verifier: &dyn EvidenceVerifier,
    evidence: &[u8],
    endorsements: &Endorsements,
    at: OffsetDateTime,
    policy: Option<&Policy>,
) -> Verdict {
    let mut verdict = Verdict {
        tee: None,
        authentic: false,
        failure: None,
        collateral_expired: false,
        verified_at: at,
        tcb_status: None,
        advisories: Vec::new(),
        measurement: None,
        report_data: None,
        debug: None,
        collateral_window: None,
        evidence: None,
        policy_ok: None,
        policy_reasons: Vec::new(),
    };
    let result = decode_input(evidence).and_then(|bytes| {
        verdict.tee = detect(&bytes).ok();
        verifier.verify(&bytes, endorsements, at)
    });
    match result {
        Ok(verified) => {
            if let Some(policy) = policy {
                let outcome = policy.evaluate(&verified);
                verdict.policy_ok = Some(outcome.ok);
                verdict.policy_reasons = outcome.reasons;
            }
            verdict.tee = Some(verified.summary.tee);
            verdict.authentic = true;
            verdict.tcb_status = Some(verified.tcb_status);
            verdict.advisories = verified.advisories;
            verdict.measurement = Some(verified.summary.measurement.clone());
            verdict.report_data = Some(verified.summary.report_data.clone());
            verdict.debug = Some(verified.summary.debug);
            verdict.collateral_window = verified.collateral_window;
            verdict.evidence = Some(verified.summary);
        }
        Err(e) => {
            verdict.collateral_expired = matches!(e, Error::CollateralExpired { .. });
            let failure = e.to_string();
            if policy.is_some() {
                verdict.policy_ok = Some(false);
                verdict.policy_reasons = vec![format!("evidence is not authentic: {failure}")];
            }
            verdict.failure = Some(failure);
        }
    }
    verdict
}

/// Dispatches to the verifier of the detected TEE; accepts raw binary or hex text.
#[derive(Debug, Default)]
pub struct Verifier {
    dcap: DcapVerifier,
    snp: SnpVerifier,
    sim: SimVerifier,
}

impl Verifier {
    /// A caching DCAP verifier, an SNP verifier with AMD's built-in roots and a simulation
    /// verifier that knows no platform key (so simulation evidence fails until keys are added).
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the DCAP verifier (e.g. with [`DcapVerifier::reference`]).
    pub fn with_dcap(mut self, dcap: DcapVerifier) -> Self {
        self.dcap = dcap;
        self
    }

    /// Replaces the SEV-SNP verifier.
    pub fn with_snp(mut self, snp: SnpVerifier) -> Self {
        self.snp = snp;
        self
    }

    /// Replaces the simulation verifier (e.g. with one that knows the registered host keys).
    pub fn with_sim(mut self, sim: SimVerifier) -> Self {
        self.sim = sim;
        self
    }
}

impl EvidenceVerifier for Verifier {
    fn verify(
        &self,
        evidence: &[u8],
        endorsements: &Endorsements,
        at: OffsetDateTime,
    ) -> Result<VerifiedEvidence, Error> {
        let bytes = decode_input(evidence)?;
        let inner: &dyn EvidenceVerifier = match detect(&bytes)? {
            Tee::Sgx | Tee::Tdx => &self.dcap,
            Tee::Snp => &self.snp,
            Tee::Sim => &self.sim,
        };
        inner.verify(&bytes, endorsements, at)
    }
}
