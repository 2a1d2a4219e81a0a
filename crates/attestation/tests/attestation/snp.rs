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

fn vlek_endorsements(chain: Option<&[u8]>) -> SnpEndorsements {
    SnpEndorsements::new(&snp_vlek_der(), chain).expect("VLEK parses")
}

fn verify_at(
    report: &[u8],
    e: &SnpEndorsements,
    at: time::OffsetDateTime,
) -> Result<cloister_attestation::VerifiedEvidence, Error> {
    SnpVerifier::new().verify(report, &Endorsements::Snp(e.clone()), at)
}

fn pem_of(ders: &[&Vec<u8>]) -> String {
    ders.iter()
        .map(|der| pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec())))
        .collect()
}

#[test]
fn vlek_report_verifies_with_the_built_in_asvk_and_no_chain() {
    let r = verify_at(SNP_VLEK_REPORT, &vlek_endorsements(None), AT_VLEK).expect("VLEK report verifies");
    let TeeDetails::Snp(d) = &r.summary.details else {
        panic!("not snp")
    };
    assert_eq!(d.signing_key, "vlek");
    assert_eq!(d.generation.as_deref(), Some("Milan"));
    assert_eq!(d.chip_id, None, "a VLEK report carries no CHIP_ID");
    assert_eq!(d.guest_policy(), Some(0x0203_0000));
    assert_eq!(
        (
            d.reported_tcb.bootloader,
            d.reported_tcb.tee,
            d.reported_tcb.snp,
            d.reported_tcb.microcode
        ),
        (4, 0, 0x1d, 0xde)
    );
    // The VLEK's validity starts 2026-03-09.
    let err = verify_at(SNP_VLEK_REPORT, &vlek_endorsements(None), AT_2025).expect_err("before notBefore");
    assert!(
        err.to_string().contains("VCEK/VLEK certificate is not valid"),
        "{err}"
    );
}

#[test]
fn vlek_report_verifies_with_amds_vlek_chain_but_not_the_vcek_chain() {
    let milan = pem_ders(MILAN_ASK_ARK_ASVK);
    let (ask, ark, asvk) = (&milan[0], &milan[1], &milan[2]);
    let vlek_chain = pem_of(&[asvk, ark]);
    verify_at(
        SNP_VLEK_REPORT,
        &vlek_endorsements(Some(vlek_chain.as_bytes())),
        AT_VLEK,
    )
    .expect("ASVK + ARK chain");
    // The ASK is genuine and signed by the same ARK, but it does not issue VLEKs.
    let vcek_chain = pem_of(&[ask, ark]);
    let err = verify_at(
        SNP_VLEK_REPORT,
        &vlek_endorsements(Some(vcek_chain.as_bytes())),
        AT_VLEK,
    )
    .expect_err("ASK in place of the ASVK");
    assert!(
        err.to_string()
            .contains("has 'SEV-Milan' where a SEV-VLEK needs its ASVK 'SEV-VLEK-Milan'"),
        "{err}"
    );
    // And the other way round: a VCEK report with the ASVK as its intermediate.
    let e = SnpEndorsements::new(SNP_VCEK_DER, Some(vlek_chain.as_bytes())).expect("parses");
    let err = verify(&snp_report(), &e).expect_err("ASVK in place of the ASK");
    assert!(
        err.to_string()
            .contains("has 'SEV-VLEK-Milan' where a SEV-VCEK needs its ASK 'SEV-Milan'"),
        "{err}"
    );
}

#[test]
fn endorsement_kind_must_match_the_reports_signing_key() {
    // A VLEK offered for a VCEK-signed report, and a VCEK for a VLEK-signed one.
    let err = verify(&snp_report(), &vlek_endorsements(None)).expect_err("VLEK as VCEK");
    assert!(
        err.to_string()
            .contains("signed by a SEV-VCEK (SIGNING_KEY 0) but the certificate is for 'SEV-VLEK'"),
        "{err}"
    );
    let err = verify_at(SNP_VLEK_REPORT, &snp_endorsements(false), AT_VLEK).expect_err("VCEK as VLEK");
    assert!(
        err.to_string()
            .contains("signed by a SEV-VLEK (SIGNING_KEY 1) but the certificate is for 'SEV-VCEK'"),
        "{err}"
    );
    // The VLEK report relabelled as VCEK-signed (flags at 0x48, SIGNING_KEY in bits 2..4):
    // refused for the kind before the signature is even looked at.
    let mut relabelled = SNP_VLEK_REPORT.to_vec();
    relabelled[0x48] &= !0b1_1100;
    let err = verify_at(&relabelled, &vlek_endorsements(None), AT_VLEK).expect_err("relabelled");
    assert!(
        err.to_string().contains("signed by a SEV-VCEK (SIGNING_KEY 0)"),
        "{err}"
    );
    // SIGNING_KEY 7: not signed at all.
    relabelled[0x48] |= 0b1_1100;
    let err = verify_at(&relabelled, &vlek_endorsements(None), AT_VLEK).expect_err("unsigned");
    assert!(err.to_string().contains("not signed by a VCEK or VLEK"), "{err}");
}

#[test]
fn flipped_vlek_report_or_certificate_bytes_fail() {
    for pos in [
        0x08,
        0x30,
        0x50,
        0x90,
        0xC0,
        0x180,
        0x1A0,
        0x2A0,
        0x2A0 + 72,
        0x49F,
    ] {
        let mut r = SNP_VLEK_REPORT.to_vec();
        r[pos] ^= 0x01;
        assert!(
            verify_at(&r, &vlek_endorsements(None), AT_VLEK).is_err(),
            "flipping byte {pos:#x} still verifies"
        );
    }
    let mut vlek = snp_vlek_der();
    let n = vlek.len();
    vlek[n - 10] ^= 0x01;
    let e = SnpEndorsements::new(&vlek, None).expect("still parses");
    let err = verify_at(SNP_VLEK_REPORT, &e, AT_VLEK).expect_err("tampered VLEK");
    assert!(err.to_string().contains("ASK/ASVK does not sign"), "{err}");
}

/// The built-in certificates are AMD's published bundles, byte for byte, and each ARK signs its
/// ASK and ASVK.
#[test]
fn built_in_asvks_are_amds_and_chain_to_the_built_in_arks() {
    use sev::certs::snp::{Certificate, Verifiable as _};

    let builtin = |pem_text: &str| pem::parse(pem_text).expect("PEM").into_contents();
    let cases = [
        (
            "Milan",
            MILAN_ASK_ARK_ASVK,
            include_str!("../../src/snp/certs/milan-ask.pem"),
            include_str!("../../src/snp/certs/milan-ark.pem"),
            include_str!("../../src/snp/certs/milan-asvk.pem"),
        ),
        (
            "Genoa",
            GENOA_ASK_ARK_ASVK,
            include_str!("../../src/snp/certs/genoa-ask.pem"),
            include_str!("../../src/snp/certs/genoa-ark.pem"),
            include_str!("../../src/snp/certs/genoa-asvk.pem"),
        ),
        (
            "Turin",
            TURIN_ASK_ARK_ASVK,
            include_str!("../../src/snp/certs/turin-ask.pem"),
            include_str!("../../src/snp/certs/turin-ark.pem"),
            include_str!("../../src/snp/certs/turin-asvk.pem"),
        ),
    ];
    for (name, bundle, ask, ark, asvk) in cases {
        let ders = pem_ders(bundle);
        assert_eq!(ders.len(), 3, "{name}");
        assert_eq!(ders[0], builtin(ask), "{name} ASK");
        assert_eq!(ders[1], builtin(ark), "{name} ARK");
        assert_eq!(ders[2], builtin(asvk), "{name} ASVK");

        let ark = Certificate::from_der(&ders[1]).expect("ARK");
        let asvk = Certificate::from_der(&ders[2]).expect("ASVK");
        (&ark, &ark).verify().expect("ARK self-signed");
        (&ark, &asvk)
            .verify()
            .unwrap_or_else(|e| panic!("{name} ARK signs its ASVK: {e}"));

        // A flipped bit in the ASVK's signature, or in its signed body, breaks it.
        let mut tampered = ders[2].clone();
        let n = tampered.len();
        tampered[n - 10] ^= 0x01;
        let bad = Certificate::from_der(&tampered).expect("still parses");
        assert!(
            (&ark, &bad).verify().is_err(),
            "{name}: tampered ASVK signature verifies"
        );
        // Another generation's ARK does not sign it either.
        let other = if name == "Milan" {
            &GENOA_ASK_ARK_ASVK
        } else {
            &MILAN_ASK_ARK_ASVK
        };
        let other_ark = Certificate::from_der(&pem_ders(other)[1]).expect("ARK");
        assert!(
            (&other_ark, &asvk).verify().is_err(),
            "{name} ASVK under another ARK"
        );
    }
}

#[test]
fn tampered_asvk_in_a_supplied_chain_is_refused() {
    let milan = pem_ders(MILAN_ASK_ARK_ASVK);
    let mut asvk = milan[2].clone();
    let n = asvk.len();
    asvk[n - 10] ^= 0x01;
    let chain = pem_of(&[&asvk, &milan[1]]);
    let err = verify_at(
        SNP_VLEK_REPORT,
        &vlek_endorsements(Some(chain.as_bytes())),
        AT_VLEK,
    )
    .expect_err("tampered ASVK");
    assert!(
        err.to_string().contains("ARK does not sign the ASK/ASVK"),
        "{err}"
    );
}
