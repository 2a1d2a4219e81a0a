//! SEV-SNP: the Milan report, its VCEK and AMD's chain.

use cloister_attestation::{
    Endorsements, Error, EvidenceVerifier, Policy, SnpEndorsements, SnpVerifier, TeeDetails, appraise,
    inspect,
};
use sev::parser::ByteParser as _;
use time::macros::datetime;

use crate::common::*;

fn verify(report: &[u8], e: &SnpEndorsements) -> Result<cloister_attestation::VerifiedEvidence, Error> {
    SnpVerifier::new().verify(report, &Endorsements::Snp(e.clone()), AT_2025)
}

#[test]
fn inspect_matches_the_sev_crate() {
    let report = snp_report();
    let ours = inspect(SNP_REPORT_HEX).expect("hex report parses");
    assert_eq!(ours, inspect(&report).expect("binary report parses"));
    let theirs = sev::firmware::guest::AttestationReport::from_bytes(&report).expect("sev parses");
    assert_eq!(ours.version, theirs.version);
    assert_eq!(ours.measurement, hex::encode(theirs.measurement));
    assert_eq!(ours.report_data, hex::encode(theirs.report_data));
    assert_eq!(ours.debug, theirs.policy.debug_allowed());
    let TeeDetails::Snp(d) = &ours.details else {
        panic!("not snp")
    };
    assert_eq!(d.host_data, hex::encode(theirs.host_data));
    assert_eq!(d.chip_id.as_deref(), Some(hex::encode(theirs.chip_id).as_str()));
    assert_eq!(d.reported_tcb.bootloader, theirs.reported_tcb.bootloader);
    assert_eq!(d.reported_tcb.tee, theirs.reported_tcb.tee);
    assert_eq!(d.reported_tcb.snp, theirs.reported_tcb.snp);
    assert_eq!(d.reported_tcb.microcode, theirs.reported_tcb.microcode);
    assert_eq!(d.guest_svn, theirs.guest_svn);
    assert_eq!(d.vmpl, theirs.vmpl);
    assert_eq!(d.signing_key, "vcek");
    assert_eq!(d.policy, format!("{:#018x}", u64::from(theirs.policy)));
}

#[test]
fn report_verifies_with_vcek_and_builtin_milan_chain() {
    let r = verify(&snp_report(), &snp_endorsements(false)).expect("verifies with built-in certs");
    assert_eq!(r.tcb_status, "NotEvaluated");
    assert!(r.advisories.is_empty());
    let TeeDetails::Snp(d) = &r.summary.details else {
        panic!("not snp")
    };
    assert_eq!(d.generation.as_deref(), Some("Milan"));
}

#[test]
fn report_verifies_with_supplied_chain_pem_and_pem_vcek() {
    verify(&snp_report(), &snp_endorsements(true)).expect("verifies with supplied chain");
    let pem_vcek = pem::encode(&pem::Pem::new("CERTIFICATE", SNP_VCEK_DER.to_vec()));
    let e = SnpEndorsements::new(pem_vcek.as_bytes(), None).expect("PEM VCEK parses");
    verify(&snp_report(), &e).expect("verifies with PEM VCEK");
}

#[test]
fn flipped_report_bytes_fail() {
    let report = snp_report();
    // version's high byte, policy, report data, measurement, reported TCB, chip id, a reserved
    // byte in the signed area, the signature and its reserved padding.
    for pos in [
        0x03,
        0x08,
        0x50,
        0x90,
        0x180,
        0x1A0,
        0x210,
        0x29F,
        0x2A0,
        0x2A0 + 72,
        0x2A0 + 144,
        0x49F,
    ] {
        let mut r = report.clone();
        r[pos] ^= 0x01;
        assert!(
            verify(&r, &snp_endorsements(false)).is_err(),
            "flipping byte {pos:#x} still verifies"
        );
    }
}

#[test]
fn wrong_vcek_fails() {
    assert!(SnpEndorsements::new(b"garbage", None).is_err());
    assert!(SnpEndorsements::new(&SNP_VCEK_DER[..SNP_VCEK_DER.len() - 1], None).is_err());

    // A genuine AMD certificate that is not this chip's VCEK: the Milan ASK.
    let ask = pem::parse_many(SNP_CHAIN_PEM).expect("chain")[0]
        .contents()
        .to_vec();
    let e = SnpEndorsements::new(&ask, None).expect("is a certificate");
    assert!(verify(&snp_report(), &e).is_err());

    // A VCEK whose signature bytes were altered: ASK no longer signs it.
    let mut vcek = SNP_VCEK_DER.to_vec();
    let n = vcek.len();
    vcek[n - 10] ^= 0x01;
    let e = SnpEndorsements::new(&vcek, None).expect("still parses");
    let err = verify(&snp_report(), &e).expect_err("tampered VCEK");
    assert!(err.to_string().contains("does not sign the VCEK"), "{err}");
}

#[test]
fn untrusted_or_mismatched_chains_fail() {
    let certs = pem::parse_many(SNP_CHAIN_PEM).expect("chain");
    // Only the ASK: no ARK.
    let only_ask = pem::encode(&certs[0]);
    assert!(SnpEndorsements::new(SNP_VCEK_DER, Some(only_ask.as_bytes())).is_err());

    // Genoa's chain is a trusted root, but not the one that issued this VCEK.
    let genoa = format!(
        "{}{}",
        include_str!("../../src/snp/certs/genoa-ask.pem"),
        include_str!("../../src/snp/certs/genoa-ark.pem")
    );
    let e = SnpEndorsements::new(SNP_VCEK_DER, Some(genoa.as_bytes())).expect("parses");
    assert!(verify(&snp_report(), &e).is_err());

    // ASK twice (no self-issued ARK).
    let twice = format!("{}{}", pem::encode(&certs[0]), pem::encode(&certs[0]));
    let e = SnpEndorsements::new(SNP_VCEK_DER, Some(twice.as_bytes())).expect("parses");
    assert!(verify(&snp_report(), &e).is_err());

    // Reversed order is fine: the ARK is recognised by being self-issued.
    let reversed = format!("{}{}", pem::encode(&certs[1]), pem::encode(&certs[0]));
    let e = SnpEndorsements::new(SNP_VCEK_DER, Some(reversed.as_bytes())).expect("parses");
    verify(&snp_report(), &e).expect("order does not matter");
}

#[test]
fn vcek_must_be_valid_at_the_verification_time() {
    let e = Endorsements::Snp(snp_endorsements(false));
    let v = SnpVerifier::new();
    assert!(
        v.verify(&snp_report(), &e, datetime!(2031-01-01 00:00 UTC))
            .is_err()
    );
    assert!(
        v.verify(&snp_report(), &e, datetime!(2022-01-01 00:00 UTC))
            .is_err()
    );
}

#[test]
fn missing_vcek_is_reported() {
    let r = SnpVerifier::new().verify(&snp_report(), &Endorsements::None, AT_2025);
    assert!(matches!(r, Err(Error::MissingEndorsements(_))), "{r:?}");
}

#[test]
fn appraise_and_measurement_policy() {
    let report = snp_report();
    let e = Endorsements::Snp(snp_endorsements(false));
    let measurement = inspect(&report).expect("parses").measurement;
    let ok = Policy {
        expected_measurement: Some(format!("0x{}", measurement.to_uppercase())),
        ..Policy::default()
    };
    let v = appraise(
        &cloister_attestation::Verifier::new(),
        SNP_REPORT_HEX,
        &e,
        AT_2025,
        Some(&ok),
    );
    assert!(v.authentic, "{:?}", v.failure);
    assert_eq!(v.policy_ok, Some(true), "{:?}", v.policy_reasons);

    let wrong = "00".repeat(48);
    let bad = Policy {
        expected_measurement: Some(wrong.clone()),
        ..Policy::default()
    };
    let v = appraise(
        &cloister_attestation::Verifier::new(),
        SNP_REPORT_HEX,
        &e,
        AT_2025,
        Some(&bad),
    );
    assert_eq!(v.policy_ok, Some(false));
    assert_eq!(
        v.policy_reasons,
        [format!(
            "measurement mismatch: expected {wrong}, got {measurement}"
        )]
    );
}
