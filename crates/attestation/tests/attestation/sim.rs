//! The simulation TEE.

use cloister_attestation::{
    Endorsements, Error, EvidenceVerifier, Policy, SIM_EVIDENCE_LEN, SimPlatform, SimVerifier, Tee,
    TeeDetails, Tolerance, Verifier, appraise, check_report_data, inspect, report_data_for, sim_measurement,
};
use sha2::{Digest, Sha256, Sha512};

use crate::common::AT_2025;

fn platform() -> SimPlatform {
    SimPlatform::from_seed([7; 32])
}

fn measurement() -> [u8; 32] {
    sim_measurement(b"runtime binary")
}

const CONFIG: [u8; 32] = [0xC0; 32];

#[test]
fn round_trip() {
    let p = platform();
    let rd = report_data_for(b"nonce-0123456789abcdef0123456789", b"workload public key");
    let evidence = p.produce_evidence(&measurement(), &CONFIG, &rd);
    assert_eq!(evidence.len(), SIM_EVIDENCE_LEN);
    let v = SimVerifier::new([p.public_key()]);
    let r = v
        .verify(&evidence, &Endorsements::None, AT_2025)
        .expect("verifies");
    assert_eq!(r.tcb_status, "Simulated");
    assert!(!r.summary.debug);
    assert_eq!(r.summary.tee, Tee::Sim);
    assert_eq!(r.summary.measurement, hex::encode(measurement()));
    assert_eq!(r.summary.report_data, hex::encode(rd));
    let TeeDetails::Sim(d) = &r.summary.details else {
        panic!("not sim")
    };
    assert_eq!(d.platform_key, hex::encode(p.public_key()));
    assert_eq!(d.config_id, hex::encode(CONFIG));
    assert_eq!(r.summary.launch_config(), Some(hex::encode(CONFIG).as_str()));
    r.check_binding(b"nonce-0123456789abcdef0123456789", b"workload public key")
        .expect("binding holds");
    assert_eq!(inspect(&evidence).expect("inspects"), r.summary);
}

#[test]
fn layout_is_as_documented() {
    let p = platform();
    let evidence = p.produce_evidence(&[0xAA; 32], &[0xCC; 32], &[0xBB; 64]);
    assert_eq!(evidence.len(), 236);
    assert_eq!(&evidence[0..8], b"CLSIMATT");
    assert_eq!(&evidence[8..10], &[2, 0]);
    assert_eq!(&evidence[10..12], &[0, 0]);
    assert_eq!(&evidence[12..44], &[0xAA; 32]);
    assert_eq!(&evidence[44..76], &[0xCC; 32]);
    assert_eq!(&evidence[76..140], &[0xBB; 64]);
    assert_eq!(&evidence[140..172], &p.public_key());
    let key = ed25519_dalek::VerifyingKey::from_bytes(&p.public_key()).expect("key");
    let mut msg = b"cloister/sim-evidence/v2\0".to_vec();
    msg.extend_from_slice(&evidence[..172]);
    let sig = ed25519_dalek::Signature::from_bytes(evidence[172..236].try_into().expect("64 bytes"));
    key.verify_strict(&msg, &sig)
        .expect("signature over the documented message");
}

#[test]
fn measurement_is_length_prefixed_sha256() {
    let mut h = Sha256::new();
    h.update(b"cloister/sim-measurement/v2\0");
    h.update(2u64.to_le_bytes());
    h.update(b"ab");
    let expected: [u8; 32] = h.finalize().into();
    assert_eq!(sim_measurement(b"ab"), expected);
    assert_ne!(sim_measurement(b"ab"), sim_measurement(b"ab "));
}

#[test]
fn report_data_binding_is_sha512_of_nonce_and_key() {
    let expected: [u8; 64] = Sha512::digest(b"noncekey").into();
    assert_eq!(report_data_for(b"nonce", b"key"), expected);
    check_report_data(&expected, b"nonce", b"key").expect("matches");
    let err = check_report_data(&expected, b"nonce", b"other key").expect_err("wrong key");
    assert!(matches!(err, Error::ReportDataMismatch { .. }), "{err}");
}

#[test]
fn wrong_report_data_binding_is_refused() {
    let p = platform();
    let evidence = p.produce_evidence(&measurement(), &CONFIG, &report_data_for(b"nonce A", b"key"));
    let v = SimVerifier::new([p.public_key()]);
    let r = v
        .verify(&evidence, &Endorsements::None, AT_2025)
        .expect("authentic");
    assert!(matches!(
        r.check_binding(b"nonce B", b"key"),
        Err(Error::ReportDataMismatch { .. })
    ));

    let policy = Policy {
        tolerate: [Tolerance::Simulation].into(),
        expected_report_data: Some(hex::encode(report_data_for(b"nonce B", b"key"))),
        ..Policy::default()
    };
    let verdict = appraise(&v, &evidence, &Endorsements::None, AT_2025, Some(&policy));
    assert!(verdict.authentic);
    assert_eq!(verdict.policy_ok, Some(false));
    assert!(
        verdict.policy_reasons[0].starts_with("report data mismatch: expected "),
        "{:?}",
        verdict.policy_reasons
    );
}

#[test]
fn unknown_platform_key_is_rejected() {
    let evidence = platform().produce_evidence(&measurement(), &CONFIG, &[0; 64]);
    let v = SimVerifier::new([SimPlatform::from_seed([8; 32]).public_key()]);
    let err = v
        .verify(&evidence, &Endorsements::None, AT_2025)
        .expect_err("unknown key");
    assert!(matches!(err, Error::UnknownSimKey(_)));
    assert!(
        err.to_string().starts_with("unknown simulation platform key"),
        "{err}"
    );
    // No key registered at all (the default dispatcher).
    let verdict = appraise(&Verifier::new(), &evidence, &Endorsements::None, AT_2025, None);
    assert!(!verdict.authentic);
    assert!(
        verdict
            .failure
            .as_deref()
            .is_some_and(|f| f.contains("unknown simulation platform key"))
    );
}

#[test]
fn every_tampered_byte_is_rejected() {
    let p = platform();
    let evidence = p.produce_evidence(&measurement(), &CONFIG, &[3; 64]);
    let v = SimVerifier::new([p.public_key()]);
    for pos in 0..evidence.len() {
        for bit in [0x01u8, 0x80] {
            let mut e = evidence.clone();
            e[pos] ^= bit;
            assert!(
                v.verify(&e, &Endorsements::None, AT_2025).is_err(),
                "byte {pos} bit {bit:#x}"
            );
        }
    }
    assert!(
        v.verify(&evidence[..SIM_EVIDENCE_LEN - 1], &Endorsements::None, AT_2025)
            .is_err()
    );
    let mut longer = evidence.clone();
    longer.push(0);
    assert!(v.verify(&longer, &Endorsements::None, AT_2025).is_err());
}

#[test]
fn simulation_and_debug_need_tolerances() {
    let p = platform().with_debug(true);
    let evidence = p.produce_evidence(&measurement(), &CONFIG, &[0; 64]);
    let v = Verifier::new().with_sim(SimVerifier::new([p.public_key()]));

    let verdict = appraise(
        &v,
        &evidence,
        &Endorsements::None,
        AT_2025,
        Some(&Policy::default()),
    );
    assert!(verdict.authentic, "{:?}", verdict.failure);
    assert_eq!(verdict.debug, Some(true));
    assert_eq!(
        verdict.policy_reasons,
        [
            "TCB status Simulated not tolerated (tolerate simulation)",
            "debug simulation not tolerated (tolerate debug-mode)",
        ]
    );

    let both = Policy {
        tolerate: Tolerance::parse_list("simulation,debug-mode").expect("list"),
        expected_measurement: Some(hex::encode(measurement())),
        ..Policy::default()
    };
    let verdict = appraise(&v, &evidence, &Endorsements::None, AT_2025, Some(&both));
    assert_eq!(verdict.policy_ok, Some(true), "{:?}", verdict.policy_reasons);

    let other = Policy {
        tolerate: Tolerance::parse_list("simulation,debug-mode").expect("list"),
        expected_measurement: Some(hex::encode([1u8; 32])),
        ..Policy::default()
    };
    let verdict = appraise(&v, &evidence, &Endorsements::None, AT_2025, Some(&other));
    assert_eq!(
        verdict.policy_reasons,
        [format!(
            "measurement mismatch: expected {}, got {}",
            hex::encode([1u8; 32]),
            hex::encode(measurement())
        )]
    );
}

#[test]
fn platform_keys_are_deterministic_and_persistable() {
    assert_eq!(
        SimPlatform::from_seed([1; 32]).public_key(),
        SimPlatform::from_seed([1; 32]).public_key()
    );
    assert_ne!(
        SimPlatform::from_seed([1; 32]).public_key(),
        SimPlatform::from_seed([2; 32]).public_key()
    );
    assert_ne!(
        SimPlatform::generate().public_key(),
        SimPlatform::generate().public_key()
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sim-platform.key");
    let first = SimPlatform::load_or_generate(&path).expect("creates");
    let second = SimPlatform::load_or_generate(&path).expect("loads");
    assert_eq!(first.public_key(), second.public_key());
    assert_eq!(std::fs::read(&path).expect("file").len(), 32);
    std::fs::write(&path, b"short").expect("write");
    assert!(SimPlatform::load_or_generate(&path).is_err());
}
