//! # cloister-attestation
//!
//! Parse, verify and collect TEE evidence for Cloister: Intel SGX DCAP quotes (v3), Intel TDX
//! quotes (v4/v5), AMD SEV-SNP attestation reports and a software *simulation* TEE.
//!
//! ## Public surface
//!
//! * [`inspect`] — parse-only summary of any supported evidence (raw bytes or hex text);
//!   never verifies anything and never panics.
//! * [`EvidenceVerifier`] — the one verification trait. Each TEE family has a module with one
//!   implementation: [`DcapVerifier`] (SGX and TDX share Intel's DCAP quote format and
//!   collateral), [`SnpVerifier`] and [`SimVerifier`]. [`Verifier`] dispatches on the detected
//!   evidence kind, so the CLI and CAS need only one object. Adding a TEE means adding a module
//!   with its parser and verifier, a [`Tee`] variant and, if it needs them, an [`Endorsements`]
//!   variant.
//! * [`appraise`] — runs a verifier at a caller-supplied time and, optionally, a [`Policy`],
//!   and returns a serialisable [`Verdict`] (`authentic`, TCB status, advisories, measurement,
//!   debug flag, `policy_ok` and refusal reasons). The library never reads the wall clock:
//!   every verification takes the time as an argument so results are reproducible.
//! * [`EvidenceSource`] — collection inside a workload: [`SimSource`], [`GramineSource`]
//!   (`/dev/attestation`) and [`TsmSource`] (Linux configfs-tsm for TDX and SEV-SNP). All take a
//!   configurable root directory so that tests run against a fake tree.
//!   [`EvidenceSource::collect_with_endorsements`] also returns what the platform delivers
//!   with the evidence ([`Collected`]): for SEV-SNP, the VCEK or VLEK out of the host's
//!   certificate table in configfs-tsm's `auxblob` (GHCB certificate table, parsed with every
//!   offset and length checked).
//! * [`CollateralSource`] — obtains the DCAP collateral of a quote from a PCCS or Intel's PCS
//!   (v4 API, blocking, 10 s timeout, 4 MiB responses) through an on-disk cache, or offline from
//!   files an operator placed; [`DcapPlatform`] is what selects it (TEE, FMSPC, PCK CA).
//! * [`CollateralFloor`] — the newest DCAP collateral seen, per part; refuses older collateral.
//!   Raised only by [`VerifiedCollateral`] from [`DcapVerifier::verify_collateral`].
//! * [`report_data_for`] / [`check_report_data`] — binding of a nonce and a public key into the
//!   64-byte report data: `SHA-512(nonce ‖ public_key)`.
//!
//! ## The `verify` feature
//!
//! Everything that *verifies* evidence is behind the default feature `verify`: the verifiers,
//! [`appraise`] and [`Policy`], DCAP collateral fetching, caching and the [`CollateralFloor`],
//! and the AMD certificate chains, with their dependencies (`reqwest`, `webpki`, `sev`, `p384`,
//! ...). Without it (`default-features = false`) the crate keeps what runs *inside* a TEE:
//! [`inspect`] and the parsers, the [`EvidenceSource`] collectors, the report-data binding and
//! the simulation platform's signing side ([`SimPlatform`], [`SimSource`]). `cloister-runtime`
//! and the CAS client build it that way, because the runtime's dependency tree is its trusted
//! computing base; the CAS, the CLI and the tests keep the default.
//!
//! ## Whose DCAP collateral, and how old it may be
//!
//! Every genuine piece of Intel collateral verifies until its `nextUpdate`, including collateral
//! from *before* a TCB recovery (a TCB info or QE identity with a lower
//! `tcbEvaluationDataNumber`, under which an unpatched platform is still `UpToDate`) or before a
//! PCK certificate was revoked (an older PCK CRL). Signatures alone therefore do not stop whoever
//! picks the collateral from picking an old one, and the attesting host must not be the one who
//! picks. The rule for a relying party such as the CAS:
//!
//! 1. Use its **own** [`CollateralSource`] (PCCS / Intel PCS, or an operator's offline
//!    directory). Collateral sent along with the evidence is a fallback only, when there is no
//!    source or the source has nothing for the platform.
//! 2. Keep a [`CollateralFloor`]: per TCB info (TEE and FMSPC), QE identity (`QE`, `TD_QE`),
//!    PCK CRL (processor or platform CA) and root CA CRL, the highest evaluation number and
//!    latest `issueDate` / `thisUpdate` seen. Collateral with any part below its floor is refused
//!    ([`Error::StaleCollateral`], naming the part) — whoever supplied it, the own source
//!    included, since its cache or directory may sit on a disk the host controls. An online
//!    source whose cached copy is below the floor is asked for a fresh copy
//!    ([`CollateralSource::refresh`]) first.
//! 3. Raise the floor with every collateral used, but only once every part is authenticated
//!    ([`DcapVerifier::verify_collateral`]): a forged part dated in the future would otherwise
//!    lock out all genuine collateral. Store it so that a restart cannot lower it.
//!
//! The floor compares each field separately, so collateral fetched at different times for
//! different platforms can refuse each other's shared parts (QE identity, PCK CRL) until both
//! are fetched again: offline directories should be filled from one fetch. Genuine but
//! early-release collateral (the PCS `update=early` channel) is newer than the standard
//! channel's and raises the floor like any other.
//!
//! ## DCAP caching and why it is sound
//!
//! A full DCAP verification (as done by `dcap-qvl`) re-verifies, for every quote, the same
//! collateral: the root CA CRL signature, the TCB-info and QE-identity signing chains and
//! signatures, and the PCK certificate chain of the platform. Only four checks really depend on
//! the quote: the QE report signature (by the PCK key), the QE report data binding of the
//! attestation key, the quote signature (by the attestation key), and the TCB level matching of
//! the quote's SVNs. [`DcapVerifier::new`] therefore keeps two caches:
//!
//! * **collateral entries**, keyed by SHA-256 over a length-prefixed encoding of every collateral
//!   field: the verified CRLs, the signature-checked and canonically ordered TCB info and the
//!   signature-checked QE identity;
//! * **PCK entries**, keyed by SHA-256 over the collateral key and the PCK chain bytes: the
//!   chain-verified (with CRLs) PCK leaf certificate and its SGX extension values.
//!
//! Each entry records a validity window: the latest of every `notBefore`, CRL `thisUpdate` and
//! JSON `issueDate` it depends on, and the earliest of every `notAfter`, CRL `nextUpdate` and JSON
//! `nextUpdate` (over *all* certificates supplied, not only those on the chosen path). An entry is
//! created only after a successful verification at a time strictly inside its window and is used
//! only for times strictly inside it. The only time-dependent steps of the verification are
//! comparisons of the verification time against exactly those bounds, so every such comparison
//! has the same outcome anywhere strictly inside the window, and the cached result equals what a
//! full verification would compute. Outside the window the full path runs (and reports the
//! expiry). Failures are never cached. All per-quote checks are still executed for every quote.
//! [`DcapVerifier::reference`] runs `dcap-qvl`'s own complete verification for every quote; the
//! test-suite checks that both paths agree on every vector, on tampered copies and at times
//! outside the windows.
//!
//! ## Decisions worth knowing
//!
//! * **Below every TCB level.** Intel's QVL (and dcap-qvl) reject a platform whose SVNs are
//!   below every level of the TCB info ("TCB not supported"). Cloister instead treats it as at
//!   least as bad as the lowest listed level converged with `OutOfDate` (so `OutOfDate`,
//!   `OutOfDateConfigurationNeeded` or `Revoked`), with that level's advisories, and lets the
//!   policy decide; `testdata/tdx/quote-outdated-tcb.bin` is such a platform. Both DCAP paths do
//!   this, after the TCB info signature has been verified.
//! * **Debug.** SGX: ATTRIBUTES.DEBUG. TDX: TD_ATTRIBUTES.TUD DEBUG or the profiling bits that
//!   dcap-qvl also treats as debug. SNP: guest policy bit 19. Verifiers accept debug evidence as
//!   authentic and report it; the policy refuses it unless `debug-mode` is tolerated.
//! * **SEV-SNP TCB.** AMD publishes no TCB status, so SNP evidence has status `NotEvaluated`
//!   (accepted by the policy); the VCEK's TCB extensions must equal the report's REPORTED_TCB.
//!   Minimum SPLs, guest policy bits, VMPL and HOST_DATA are judged by the relying party (the
//!   CAS session's `snp` alternatives), on the verified [`SnpDetails`].
//! * **SEV-SNP endorsement keys.** The report's SIGNING_KEY decides the chain: VCEK → ASK →
//!   ARK or VLEK → ASVK → ARK. The ARK, ASK and ASVK of Milan, Genoa and Turin are built in
//!   (`src/snp/certs/PROVENANCE.md`), so a VLEK (as AWS provisions) verifies without a supplied
//!   chain, and an ASVK can never stand in for an ASK or the other way round.
//!
//! ## Simulation evidence layout (version 2)
//!
//! All integers little-endian; total 236 bytes.
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0 | 8 | magic `b"CLSIMATT"` |
//! | 8 | 2 | format version = 2 |
//! | 10 | 2 | flags: bit 0 = debug; other bits must be zero |
//! | 12 | 32 | measurement (see [`sim_measurement`]) |
//! | 44 | 32 | config id: the launch configuration register (as TDX MRCONFIGID, SNP HOST_DATA) |
//! | 76 | 64 | report data |
//! | 140 | 32 | Ed25519 platform public key |
//! | 172 | 64 | Ed25519 signature over `b"cloister/sim-evidence/v2\0"` ‖ bytes 0..172 |
//!
//! Version 1 (no config id) is no longer accepted.
//!
//! The simulation TEE gives **no** confidentiality: it only lets the rest of the platform be
//! developed and tested without TEE hardware. Its TCB status is `Simulated`, which a [`Policy`]
//! accepts only when it tolerates `simulation`.

#![forbid(unsafe_code)]

mod binding;
mod collect;
mod dcap;
mod error;
mod evidence;
#[cfg(feature = "verify")]
mod policy;
mod sim;
mod snp;
#[cfg(feature = "verify")]
mod time_util;
#[cfg(feature = "verify")]
mod verify;

pub use binding::{check_report_data, report_data_for};
pub use collect::{Collected, EvidenceSource, GramineSource, SimSource, TsmProvider, TsmReport, TsmSource};
#[cfg(feature = "verify")]
pub use dcap::{
    CollateralFloor, CollateralSource, CollateralWindow, DEFAULT_REFRESH_MARGIN, DcapCollateral,
    DcapPlatform, DcapVerifier, INTEL_PCS_URL, INTEL_ROOT_CA_CRL_URL, MAX_RESPONSE_BYTES, PckCaKind,
    VerifiedCollateral,
};
pub use dcap::{SgxDetails, TdxDetails};
pub use error::Error;
pub use evidence::{EvidenceSummary, Tee, TeeDetails, decode_input, detect, inspect};
#[cfg(feature = "verify")]
pub use policy::{Policy, PolicyOutcome, Tolerance};
#[cfg(feature = "verify")]
pub use sim::SimVerifier;
pub use sim::{SIM_EVIDENCE_LEN, SimDetails, SimPlatform, sim_measurement};
pub use snp::{SnpDetails, SnpTcb};
#[cfg(feature = "verify")]
pub use snp::{SnpEndorsements, SnpVerifier};
#[cfg(feature = "verify")]
pub use verify::{Endorsements, EvidenceVerifier, Verdict, VerifiedEvidence, Verifier, appraise};
