//! match_evidence against real simulation evidence and the real SGX/TDX vectors.

use cloister_attestation::{
    DcapCollateral, DcapVerifier, Endorsements, EvidenceVerifier, Tolerance, VerifiedEvidence,
};
use cloister_cas_session::{Session, match_evidence};
use time::OffsetDateTime;
use time::macros::datetime;

use crate::common::*;

const SGX_QUOTE: &[u8] = include_bytes!("../../../attestation/testdata/sgx/quote.bin");
const SGX_COLLATERAL: &[u8] = include_bytes!("../../../attestation/testdata/sgx/collateral.json");
const TDX_QUOTE: &[u8] = include_bytes!("../../../attestation/testdata/tdx/quote.bin");
const TDX_COLLATERAL: &[u8] = include_bytes!("../../../attestation/testdata/tdx/collateral.json");
const TDX_OUTDATED_QUOTE: &[u8] = include_bytes!("../../../attestation/testdata/tdx/quote-outdated-tcb.bin");
const TDX_OUTDATED_COLLATERAL: &[u8] =
    include_bytes!("../../../attestation/testdata/tdx/collateral-outdated-tcb.json");
/// Inside the 2025 vectors' collateral windows (PROVENANCE.md).
const AT_2025: OffsetDateTime = datetime!(2025-07-01 00:00:00 UTC);
/// Inside the outdated-TCB TDX vector's window.
const AT_2026: OffsetDateTime = datetime!(2026-03-01 00:00:00 UTC);

// Identity of the vectors, read once from the quotes and pinned here.
const SGX_MRENCLAVE: &str = "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb";
const SGX_MRSIGNER: &str = "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6";
const TDX_MRTD: &str =
    "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7";
const TDX_RTMR0: &str =
    "44c0197b39157fdd7a4dcc44767f9d6b0bb3977c7a8e347b8492f827fe9d9e5c48aca29b220b80b6a540cf994b9bc9c0";
const TDX_RTMR1: &str =
    "0084452c01668329d4bc06acdf58a7205c26743304509973949e5619bf81a6a7aea8c323c173019b3093d54e579e9378";
const TDX_RTMR2: &str =
    "d833feef2cd945148aa38ead2c53e9b7f138190aaaebfc551dccd829fc207aa3ba80b70870d7330733642e01d48c3132";
const TDX_OUTDATED_MRTD: &str =
    "273828c46252fcbdd8ad2dd907130222b03466d52a2911d70c1a5950895d6bd1ae451d382d5a9b1b4c0ed0e5ae9a3dbd";

fn dcap(quote: &[u8], collateral: &[u8], at: OffsetDateTime) -> VerifiedEvidence {
    let collateral = DcapCollateral::from_json(collateral).expect("collateral parses");
    DcapVerifier::new()
        .verify(quote, &Endorsements::Dcap(collateral), at)
        .expect("vector verifies")
}

fn session(security: &str, alternatives: &str) -> Session {
    parse(&format!(
        "name: t/s\nsecurity:\n  attestation:\n{security}\nservices:\n- name: svc\n  attestation:\n{alternatives}"
    ))
}

fn sim_alt(measurement: &str) -> String {
    format!("  - tee: sim\n    measurement: {measurement}\n")
}

fn one_reason(r: Result<usize, Vec<String>>) -> String {
    match r {
        Ok(i) => panic!("alternative {i} matched"),
        Err(reasons) => {
            assert_eq!(reasons.len(), 1, "{reasons:?}");
            reasons.into_iter().next().unwrap_or_default()
        }
    }
}

#[test]
fn sim_evidence_with_simulation_tolerated_matches() {
    let m = hex::encode(sim_workload());
    let s = session("    tolerate: [simulation]", &sim_alt(&m));
    assert_eq!(
        match_evidence(&s, "svc", &sim_evidence(sim_workload(), false)),
        Ok(0)
    );
    // The first matching alternative is reported.
    let two = session(
        "    tolerate: [simulation]",
        &format!(
            "  - tee: sgx\n    mrenclave: {SGX_MRENCLAVE}\n{}{}",
            sim_alt(H64),
            sim_alt(&m)
        ),
    );
    assert_eq!(
        match_evidence(&two, "svc", &sim_evidence(sim_workload(), false)),
        Ok(2)
    );
}

#[test]
fn wrong_measurement_is_refused_with_a_reason_per_alternative() {
    let s = session(
        "    tolerate: [simulation]",
        &format!("  - tee: sgx\n    mrenclave: {SGX_MRENCLAVE}\n{}", sim_alt(H64)),
    );
    let reasons = match_evidence(&s, "svc", &sim_evidence(sim_workload(), false)).expect_err("refused");
    assert_eq!(reasons.len(), 2);
    assert_eq!(reasons[0], "alternative 0 (sgx): evidence is from sim, not sgx");
    assert_eq!(
        reasons[1],
        format!(
            "alternative 1 (sim): measurement mismatch: expected {H64}, got {}",
            hex::encode(sim_workload())
        )
    );
}

#[test]
fn sim_evidence_without_simulation_tolerance_is_refused() {
    let m = hex::encode(sim_workload());
    let mut s = session("    tolerate: [simulation]", &sim_alt(&m));
    // Validation refuses a sim alternative without the tolerance, so remove it afterwards:
    // match_evidence must not rely on validation for this.
    s.security.attestation.tolerate.remove(&Tolerance::Simulation);
    let reason = one_reason(match_evidence(&s, "svc", &sim_evidence(sim_workload(), false)));
    assert!(reason.contains("Simulated not tolerated"), "{reason}");
    // And a session without any sim alternative never accepts sim evidence.
    let hw = session(
        "    tolerate: []",
        &format!("  - tee: sgx\n    mrenclave: {SGX_MRENCLAVE}\n"),
    );
    assert!(
        one_reason(match_evidence(&hw, "svc", &sim_evidence(sim_workload(), false)))
            .contains("evidence is from sim")
    );
}

#[test]
fn debug_evidence_needs_debug_mode() {
    let m = hex::encode(sim_workload());
    let s = session("    tolerate: [simulation]", &sim_alt(&m));
    let debug = sim_evidence(sim_workload(), true);
    let reason = one_reason(match_evidence(&s, "svc", &debug));
    assert!(reason.contains("debug simulation not tolerated"), "{reason}");
    let tolerant = session("    tolerate: [simulation, debug-mode]", &sim_alt(&m));
    assert_eq!(match_evidence(&tolerant, "svc", &debug), Ok(0));
}

#[test]
fn unknown_service_and_no_alternatives() {
    let s = session("    tolerate: [simulation]", &sim_alt(H64));
    assert_eq!(
        match_evidence(&s, "other", &sim_evidence(sim_workload(), false)),
        Err(vec!["unknown service 'other'".to_string()])
    );
    let none = parse(
        "name: a/b\nsecurity: {attestation: {mode: none, tolerate: [simulation]}}\nservices: [{name: svc}]\n",
    );
    assert!(match_evidence(&none, "svc", &sim_evidence(sim_workload(), false)).is_err());
}

const SGX_TOLERANT: &str = "    tolerate: [configuration-needed, sw-hardening-needed]\n    ignore_advisories: [INTEL-SA-00289, INTEL-SA-00615]";

#[test]
fn sgx_vector_identity_fields() {
    let ev = dcap(SGX_QUOTE, SGX_COLLATERAL, AT_2025);
    let full = format!(
        "  - tee: sgx\n    mrenclave: {SGX_MRENCLAVE}\n    mrsigner: {SGX_MRSIGNER}\n    isvprodid: 0\n    isvsvn_min: 0\n"
    );
    assert_eq!(match_evidence(&session(SGX_TOLERANT, &full), "svc", &ev), Ok(0));
    // Upper-case hex in the session matches too.
    let upper = full.replace(SGX_MRENCLAVE, &SGX_MRENCLAVE.to_uppercase());
    assert_eq!(match_evidence(&session(SGX_TOLERANT, &upper), "svc", &ev), Ok(0));
    // Signer-based identity.
    let by_signer = format!("  - tee: sgx\n    mrsigner: {SGX_MRSIGNER}\n    isvprodid: 0\n");
    assert_eq!(
        match_evidence(&session(SGX_TOLERANT, &by_signer), "svc", &ev),
        Ok(0)
    );

    let cases = [
        (
            SGX_MRENCLAVE.to_string(),
            H64.to_string(),
            format!("mrenclave mismatch: expected {H64}, got {SGX_MRENCLAVE}"),
        ),
        (
            SGX_MRSIGNER.to_string(),
            H64.to_string(),
            format!("mrsigner mismatch: expected {H64}, got {SGX_MRSIGNER}"),
        ),
        (
            "isvprodid: 0".into(),
            "isvprodid: 1".into(),
            "isvprodid mismatch: expected 1, got 0".into(),
        ),
        (
            "isvsvn_min: 0".into(),
            "isvsvn_min: 1".into(),
            "isvsvn 0 is below isvsvn_min 1".into(),
        ),
    ];
    for (from, to, expected) in cases {
        let s = session(SGX_TOLERANT, &edit(&full, &from, &to));
        assert_eq!(
            one_reason(match_evidence(&s, "svc", &ev)),
            format!("alternative 0 (sgx): {expected}")
        );
    }
}

#[test]
fn sgx_vector_tcb_policy() {
    let ev = dcap(SGX_QUOTE, SGX_COLLATERAL, AT_2025);
    assert_eq!(ev.tcb_status, "ConfigurationAndSWHardeningNeeded");
    let alt = format!("  - tee: sgx\n    mrenclave: {SGX_MRENCLAVE}\n");
    // No tolerance: refused for the status.
    let reason = one_reason(match_evidence(&session("    tolerate: []", &alt), "svc", &ev));
    assert!(
        reason.contains("ConfigurationAndSWHardeningNeeded not tolerated"),
        "{reason}"
    );
    // Tolerated status but an advisory not ignored.
    let partial =
        "    tolerate: [configuration-needed, sw-hardening-needed]\n    ignore_advisories: [INTEL-SA-00289]";
    let reason = one_reason(match_evidence(&session(partial, &alt), "svc", &ev));
    assert!(reason.contains("advisory INTEL-SA-00615 not ignored"), "{reason}");
    assert!(!reason.contains("INTEL-SA-00289"), "{reason}");
    // "*" ignores all.
    let star = "    tolerate: [configuration-needed, sw-hardening-needed]\n    ignore_advisories: [\"*\"]";
    assert_eq!(match_evidence(&session(star, &alt), "svc", &ev), Ok(0));
}

#[test]
fn tdx_vector_identity_fields() {
    let ev = dcap(TDX_QUOTE, TDX_COLLATERAL, AT_2025);
    let zero = "0".repeat(96);
    let full = format!(
        "  - tee: tdx\n    mrtd: {TDX_MRTD}\n    rtmr0: {TDX_RTMR0}\n    rtmr1: {TDX_RTMR1}\n    rtmr2: {TDX_RTMR2}\n    rtmr3: {zero}\n"
    );
    // UpToDate: no tolerance needed.
    assert_eq!(
        match_evidence(&session("    tolerate: []", &full), "svc", &ev),
        Ok(0)
    );
    let s = session(
        "    tolerate: []",
        &edit(&full, &format!("rtmr3: {zero}"), &format!("rtmr3: {H96}")),
    );
    assert_eq!(
        one_reason(match_evidence(&s, "svc", &ev)),
        format!("alternative 0 (tdx): rtmr3 mismatch: expected {H96}, got {zero}")
    );
    let s = session("    tolerate: []", &edit(&full, TDX_MRTD, H96));
    assert!(one_reason(match_evidence(&s, "svc", &ev)).contains("mrtd mismatch"));
    // TDX evidence against an SGX alternative.
    let s = session(
        "    tolerate: []",
        &format!("  - tee: sgx\n    mrenclave: {SGX_MRENCLAVE}\n"),
    );
    assert_eq!(
        one_reason(match_evidence(&s, "svc", &ev)),
        "alternative 0 (sgx): evidence is from tdx, not sgx"
    );
}

#[test]
fn outdated_tcb_needs_its_tolerance() {
    let ev = dcap(TDX_OUTDATED_QUOTE, TDX_OUTDATED_COLLATERAL, AT_2026);
    let zero = "0".repeat(96);
    let alt = format!(
        "  - tee: tdx\n    mrtd: {TDX_OUTDATED_MRTD}\n    rtmr0: {zero}\n    rtmr1: {zero}\n    rtmr2: {zero}\n    rtmr3: {zero}\n"
    );
    let reason = one_reason(match_evidence(&session("    tolerate: []", &alt), "svc", &ev));
    assert!(
        reason.contains("not tolerated (tolerate outdated-tcb)"),
        "{reason}"
    );
    assert_eq!(
        match_evidence(&session("    tolerate: [outdated-tcb]", &alt), "svc", &ev),
        Ok(0)
    );
}
