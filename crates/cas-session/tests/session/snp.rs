//! The SEV-SNP rules of `snp` alternatives, against the real Milan (VCEK) and AWS (VLEK)
//! reports.
//!
//! Real reports cannot be re-signed, so the rules are exercised by varying the session around
//! each verified report. Where a rule needs report bits the vectors do not have (MIGRATE_MA,
//! DEBUG), a copy with the bit set is parsed (`inspect`) and handed to `match_evidence` as if
//! it had verified; the test first shows that the copy does not verify.

use cloister_attestation::{
    Endorsements, EvidenceVerifier, SnpEndorsements, SnpVerifier, VerifiedEvidence, inspect,
};
use cloister_cas_session::{Session, match_evidence};
use time::OffsetDateTime;
use time::macros::datetime;

use crate::common::*;

const MILAN_REPORT_HEX: &[u8] = include_bytes!("../../../attestation/testdata/snp/report-milan.hex");
const MILAN_VCEK: &[u8] = include_bytes!("../../../attestation/testdata/snp/vcek-milan.der");
const VLEK_REPORT: &[u8] = include_bytes!("../../../attestation/testdata/snp/report-vlek-milan.bin");
const VLEK_AUXBLOB: &[u8] = include_bytes!("../../../attestation/testdata/snp/auxblob-vlek-milan.bin");
/// Inside the Milan VCEK's validity (2023-04-03 .. 2030-04-03).
const AT_2025: OffsetDateTime = datetime!(2025-07-01 00:00:00 UTC);
/// Inside the VLEK's validity (2026-03-09 .. 2027-03-09).
const AT_VLEK: OffsetDateTime = datetime!(2026-06-01 00:00:00 UTC);

// What the vectors say (testdata/PROVENANCE.md).
const MILAN_MEASUREMENT: &str =
    "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f";
const VLEK_MEASUREMENT: &str =
    "7a89cceaaba0bbdddc4f775acca3ef15d1f9bf8abccdc6115cfad7fb8eae113df3ee0bb50efa34db9c53ae065b1dc766";
/// Guest policy 0x30000: SMT allowed, reserved bit 17, no migration agent, not debug.
const MILAN_POLICY: u64 = 0x3_0000;
const POLICY_MIGRATE_MA: u64 = 1 << 18;
const POLICY_DEBUG: u64 = 1 << 19;

fn milan_report() -> Vec<u8> {
    let text: Vec<u8> = MILAN_REPORT_HEX
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    hex::decode(text).expect("hex")
}

fn verified_milan() -> VerifiedEvidence {
    let e = SnpEndorsements::new(MILAN_VCEK, None).expect("VCEK");
    SnpVerifier::new()
        .verify(&milan_report(), &Endorsements::Snp(e), AT_2025)
        .expect("Milan vector verifies")
}

fn verified_vlek() -> VerifiedEvidence {
    let vlek = &VLEK_AUXBLOB[48..48 + 0x527];
    let e = SnpEndorsements::new(vlek, None).expect("VLEK");
    SnpVerifier::new()
        .verify(VLEK_REPORT, &Endorsements::Snp(e), AT_VLEK)
        .expect("VLEK vector verifies with the built-in chain")
}

/// A copy of the Milan report with guest policy bits `set`, parsed but (necessarily) not
/// verified.
fn milan_with_policy_bits(set: u64) -> VerifiedEvidence {
    let mut report = milan_report();
    let policy = u64::from_le_bytes(report[8..16].try_into().expect("8 bytes")) | set;
    report[8..16].copy_from_slice(&policy.to_le_bytes());
    let e = SnpEndorsements::new(MILAN_VCEK, None).expect("VCEK");
    assert!(
        SnpVerifier::new()
            .verify(&report, &Endorsements::Snp(e), AT_2025)
            .is_err(),
        "an edited report must not verify"
    );
    VerifiedEvidence {
        summary: inspect(&report).expect("parses"),
        tcb_status: "NotEvaluated".into(),
        advisories: Vec::new(),
        collateral_window: None,
    }
}

/// A session whose one service has one snp alternative: `measurement` plus `rules` (lines of
/// YAML at the alternative's indentation).
fn session(measurement: &str, rules: &str, tolerate: &str) -> Session {
    parse(&format!(
        "name: t/s\nsecurity:\n  attestation:\n    tolerate: [{tolerate}]\nservices:\n- name: svc\n  attestation:\n  - tee: snp\n    measurement: {measurement}\n{rules}"
    ))
}

fn milan(rules: &str) -> Session {
    session(MILAN_MEASUREMENT, rules, "")
}

/// The one refusal reason, without the `alternative 0 (snp): ` prefix.
fn refusal(r: Result<usize, Vec<String>>) -> String {
    match r {
        Ok(i) => panic!("alternative {i} matched"),
        Err(reasons) => {
            assert_eq!(reasons.len(), 1, "{reasons:?}");
            let reason = reasons.into_iter().next().unwrap_or_default();
            reason
                .strip_prefix("alternative 0 (snp): ")
                .unwrap_or_else(|| panic!("unexpected form: {reason}"))
                .to_string()
        }
    }
}

#[test]
fn measurement_alone_takes_the_safe_defaults() {
    let ev = verified_milan();
    assert_eq!(match_evidence(&milan(""), "svc", &ev), Ok(0));
    let s = milan("");
    let alt = &s.services[0].attestation[0];
    assert_eq!(alt.allow_migration_agent, Some(false), "default written out");
    assert_eq!(alt.allow_smt, Some(true), "default written out");
    assert_eq!(alt.min_tcb, Some(Default::default()), "default written out");
    assert_eq!(
        refusal(match_evidence(&session(H96, "", ""), "svc", &ev)),
        format!("measurement mismatch: expected {H96}, got {MILAN_MEASUREMENT}")
    );
}

#[test]
fn tcb_floor_at_the_reported_tcb_passes_and_one_above_is_refused_by_component() {
    let ev = verified_milan();
    // REPORTED_TCB of the vector: bootloader 3, tee 0, snp 8, microcode 115.
    let at = "    min_tcb: {bootloader: 3, tee: 0, snp: 8, microcode: 115}\n";
    assert_eq!(match_evidence(&milan(at), "svc", &ev), Ok(0));
    let below = "    min_tcb: {bootloader: 2, snp: 7, microcode: 100}\n";
    assert_eq!(match_evidence(&milan(below), "svc", &ev), Ok(0));
    for (component, rules, expected) in [
        (
            "bootloader",
            "    min_tcb: {bootloader: 4, tee: 0, snp: 8, microcode: 115}\n",
            "REPORTED_TCB bootloader SPL 3 is below min_tcb.bootloader 4",
        ),
        (
            "tee",
            "    min_tcb: {bootloader: 3, tee: 1, snp: 8, microcode: 115}\n",
            "REPORTED_TCB tee SPL 0 is below min_tcb.tee 1",
        ),
        (
            "snp",
            "    min_tcb: {bootloader: 3, tee: 0, snp: 9, microcode: 115}\n",
            "REPORTED_TCB snp SPL 8 is below min_tcb.snp 9",
        ),
        (
            "microcode",
            "    min_tcb: {bootloader: 3, tee: 0, snp: 8, microcode: 116}\n",
            "REPORTED_TCB microcode SPL 115 is below min_tcb.microcode 116",
        ),
    ] {
        assert_eq!(
            refusal(match_evidence(&milan(rules), "svc", &ev)),
            expected,
            "{component}"
        );
    }
    // Several components below: each is named.
    let reasons =
        match_evidence(&milan("    min_tcb: {snp: 9, microcode: 200}\n"), "svc", &ev).expect_err("below");
    assert!(
        reasons[0].contains("snp SPL 8 is below min_tcb.snp 9")
            && reasons[0].contains("microcode SPL 115 is below min_tcb.microcode 200"),
        "{reasons:?}"
    );
}

#[test]
fn fmc_floor_refuses_generations_without_fmc() {
    let ev = verified_milan();
    assert_eq!(
        match_evidence(&milan("    min_tcb: {fmc: 0}\n"), "svc", &ev),
        Ok(0)
    );
    assert_eq!(
        refusal(match_evidence(&milan("    min_tcb: {fmc: 1}\n"), "svc", &ev)),
        "REPORTED_TCB has no fmc SPL (a Milan part, before Turin) but min_tcb.fmc is 1"
    );
}

#[test]
fn smt_is_refused_when_not_allowed() {
    let ev = verified_milan();
    // The vector's policy allows SMT.
    assert_eq!(
        refusal(match_evidence(&milan("    allow_smt: false\n"), "svc", &ev)),
        "guest policy 0x0000000000030000 allows SMT (bit 16) but allow_smt is false"
    );
    assert_eq!(match_evidence(&milan("    allow_smt: true\n"), "svc", &ev), Ok(0));
}

#[test]
fn migration_agent_is_refused_unless_allowed() {
    // The vector's policy has no migration agent: accepted either way.
    let ev = verified_milan();
    assert_eq!(
        match_evidence(&milan("    allow_migration_agent: false\n"), "svc", &ev),
        Ok(0)
    );
    // With MIGRATE_MA set: refused by default and when false, accepted only when allowed.
    let ma = milan_with_policy_bits(POLICY_MIGRATE_MA);
    let expected = "guest policy 0x0000000000070000 allows a migration agent (MIGRATE_MA, bit 18), \
                    which can export the guest's memory (allow_migration_agent is false)";
    assert_eq!(refusal(match_evidence(&milan(""), "svc", &ma)), expected);
    assert_eq!(
        refusal(match_evidence(
            &milan("    allow_migration_agent: false\n"),
            "svc",
            &ma
        )),
        expected
    );
    assert_eq!(
        match_evidence(&milan("    allow_migration_agent: true\n"), "svc", &ma),
        Ok(0)
    );
}

#[test]
fn debug_bit_stays_with_the_debug_mode_tolerance() {
    let debug = milan_with_policy_bits(POLICY_DEBUG);
    assert_eq!(
        refusal(match_evidence(&milan(""), "svc", &debug)),
        "debug SEV-SNP guest not tolerated (tolerate debug-mode)"
    );
    let tolerant = session(MILAN_MEASUREMENT, "", "debug-mode");
    assert_eq!(match_evidence(&tolerant, "svc", &debug), Ok(0));
}

#[test]
fn policy_pin() {
    let ev = verified_milan();
    for pin in [
        "\"0x0000000000030000\"",
        "0000000000030000",
        "\"0X0000000000030000\"",
    ] {
        let s = milan(&format!("    policy: {pin}\n"));
        assert_eq!(
            s.services[0].attestation[0].policy.as_deref(),
            Some("0000000000030000"),
            "{pin} normalized"
        );
        assert_eq!(match_evidence(&s, "svc", &ev), Ok(0), "{pin}");
    }
    assert_eq!(
        refusal(match_evidence(
            &milan(&format!("    policy: \"{:016x}\"\n", MILAN_POLICY | 1 << 20)),
            "svc",
            &ev
        )),
        "policy mismatch: expected 0x0000000000130000, got 0x0000000000030000"
    );
    // The pin is checked in addition to the bit rules, not instead of them.
    assert_eq!(
        refusal(match_evidence(
            &milan("    policy: \"0x0000000000030000\"\n    allow_smt: false\n"),
            "svc",
            &ev
        )),
        "guest policy 0x0000000000030000 allows SMT (bit 16) but allow_smt is false"
    );
}

#[test]
fn vmpl_pin() {
    let ev = verified_milan();
    assert_eq!(match_evidence(&milan("    vmpl: 0\n"), "svc", &ev), Ok(0));
    assert_eq!(
        refusal(match_evidence(&milan("    vmpl: 1\n"), "svc", &ev)),
        "vmpl mismatch: expected 1, got 0"
    );
}

#[test]
fn host_data_pin() {
    let ev = verified_milan();
    let zero = "0".repeat(64);
    assert_eq!(
        match_evidence(&milan(&format!("    host_data: {zero}\n")), "svc", &ev),
        Ok(0)
    );
    assert_eq!(
        refusal(match_evidence(
            &milan(&format!("    host_data: {H64}\n")),
            "svc",
            &ev
        )),
        format!("host_data mismatch: expected {H64}, got {zero}")
    );
}

#[test]
fn vlek_vector_with_every_rule_pinned() {
    let ev = verified_vlek();
    // REPORTED_TCB bootloader 4, tee 0, snp 29, microcode 222; policy 0x2030000; VMPL 0.
    let rules = format!(
        "    min_tcb: {{bootloader: 4, tee: 0, snp: 29, microcode: 222}}\n    allow_migration_agent: false\n    allow_smt: true\n    policy: \"0000000002030000\"\n    vmpl: 0\n    host_data: {}\n",
        "0".repeat(64)
    );
    let s = session(VLEK_MEASUREMENT, &rules, "");
    assert_eq!(match_evidence(&s, "svc", &ev), Ok(0));
    let s = session(VLEK_MEASUREMENT, &edit(&rules, "snp: 29", "snp: 30"), "");
    assert_eq!(
        refusal(match_evidence(&s, "svc", &ev)),
        "REPORTED_TCB snp SPL 29 is below min_tcb.snp 30"
    );
    // The Milan VCEK vector's session does not accept the VLEK vector.
    assert!(refusal(match_evidence(&milan(""), "svc", &ev)).starts_with("measurement mismatch"),);
}
