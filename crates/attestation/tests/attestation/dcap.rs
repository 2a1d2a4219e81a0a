//! SGX and TDX DCAP quotes against the vectors' collateral; both verification paths.

use cloister_attestation::{
    DcapVerifier, Endorsements, Error, EvidenceVerifier, Policy, TeeDetails, Tolerance, VerifiedEvidence,
    appraise, inspect,
};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use crate::common::*;

fn both() -> [(&'static str, DcapVerifier); 2] {
    [
        ("reference", DcapVerifier::reference()),
        ("cached", DcapVerifier::new()),
    ]
}

fn verify(
    v: &DcapVerifier,
    quote: &[u8],
    collateral_json: &[u8],
    at: OffsetDateTime,
) -> Result<VerifiedEvidence, Error> {
    v.verify(quote, &Endorsements::Dcap(collateral(collateral_json)), at)
}

/// What both paths must agree on: authentic or not, and then status and advisories.
fn outcome(r: &Result<VerifiedEvidence, Error>) -> Option<(String, Vec<String>)> {
    r.as_ref()
        .ok()
        .map(|v| (v.tcb_status.clone(), v.advisories.clone()))
}

#[test]
fn sgx_vector_matches_provenance() {
    for (path, v) in both() {
        let r = verify(&v, SGX_QUOTE, SGX_COLLATERAL, AT_2025).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(r.tcb_status, "ConfigurationAndSWHardeningNeeded", "{path}");
        assert_eq!(r.advisories, ["INTEL-SA-00289", "INTEL-SA-00615"], "{path}");
        let w = r.collateral_window.expect("window");
        assert_eq!(w.valid_from, datetime!(2025-06-19 10:56:11 UTC), "{path}");
        assert_eq!(w.valid_until, datetime!(2025-07-19 10:01:18 UTC), "{path}");
        assert_eq!(r.summary.tee, cloister_attestation::Tee::Sgx);
        assert!(!r.summary.debug);
    }
}

#[test]
fn tdx_vector_matches_provenance() {
    for (path, v) in both() {
        let r = verify(&v, TDX_QUOTE, TDX_COLLATERAL, AT_2025).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(r.tcb_status, "UpToDate", "{path}");
        assert!(r.advisories.is_empty(), "{path}: {:?}", r.advisories);
        let w = r.collateral_window.expect("window");
        assert_eq!(w.valid_from, datetime!(2025-06-19 10:32:27 UTC), "{path}");
        assert_eq!(w.valid_until, datetime!(2025-07-19 10:00:35 UTC), "{path}");
        assert_eq!(r.summary.tee, cloister_attestation::Tee::Tdx);
    }
}

#[test]
fn tdx_outdated_vector_is_authentic_but_not_up_to_date() {
    for (path, v) in both() {
        let r = verify(&v, TDX_OUTDATED_QUOTE, TDX_OUTDATED_COLLATERAL, AT_2026)
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(r.tcb_status, "OutOfDate", "{path}");
        let w = r.collateral_window.expect("window");
        assert_eq!(w.valid_from, datetime!(2026-02-18 10:58:51 UTC), "{path}");
        assert_eq!(w.valid_until, datetime!(2026-03-20 10:41:15 UTC), "{path}");
    }
}

#[test]
fn outdated_tcb_needs_the_outdated_tcb_tolerance() {
    let e = Endorsements::Dcap(collateral(TDX_OUTDATED_COLLATERAL));
    let v = DcapVerifier::new();

    let strict = Policy::default();
    let refused = appraise(&v, TDX_OUTDATED_QUOTE, &e, AT_2026, Some(&strict));
    assert!(refused.authentic, "{:?}", refused.failure);
    assert_eq!(refused.policy_ok, Some(false));
    assert_eq!(
        refused.policy_reasons,
        ["TCB status OutOfDate not tolerated (tolerate outdated-tcb)"]
    );
    assert!(!refused.accepted());

    let tolerant = Policy {
        tolerate: Tolerance::parse_list("outdated-tcb").expect("valid list"),
        ..Policy::default()
    };
    let accepted = appraise(&v, TDX_OUTDATED_QUOTE, &e, AT_2026, Some(&tolerant));
    assert_eq!(accepted.policy_ok, Some(true), "{:?}", accepted.policy_reasons);
    assert!(accepted.accepted());
}

#[test]
fn sgx_hardening_status_needs_tolerances_and_acknowledged_advisories() {
    let e = Endorsements::Dcap(collateral(SGX_COLLATERAL));
    let v = DcapVerifier::new();
    let tolerate = Tolerance::parse_list("configuration-needed, sw-hardening-needed").expect("valid list");

    let none = appraise(&v, SGX_QUOTE, &e, AT_2025, Some(&Policy::default()));
    assert_eq!(
        none.policy_reasons,
        [
            "TCB status ConfigurationAndSWHardeningNeeded not tolerated (tolerate sw-hardening-needed, configuration-needed)",
            "advisory INTEL-SA-00289 not ignored (ignore_advisories)",
            "advisory INTEL-SA-00615 not ignored (ignore_advisories)",
        ]
    );

    let partly = Policy {
        tolerate: tolerate.clone(),
        ignore_advisories: vec!["INTEL-SA-00289".into()],
        ..Policy::default()
    };
    let r = appraise(&v, SGX_QUOTE, &e, AT_2025, Some(&partly));
    assert_eq!(
        r.policy_reasons,
        ["advisory INTEL-SA-00615 not ignored (ignore_advisories)"]
    );

    for ignore in [
        vec!["INTEL-SA-00289".to_string(), "intel-sa-00615".to_string()],
        vec!["*".to_string()],
    ] {
        let full = Policy {
            tolerate: tolerate.clone(),
            ignore_advisories: ignore,
            ..Policy::default()
        };
        let r = appraise(&v, SGX_QUOTE, &e, AT_2025, Some(&full));
        assert_eq!(r.policy_ok, Some(true), "{:?}", r.policy_reasons);
    }
}

#[test]
fn expired_and_premature_collateral_is_not_authentic() {
    for case in dcap_cases() {
        let window = collateral(case.collateral).validity_window().expect("window");
        let after = window.valid_until + Duration::seconds(1);
        let before = window.valid_from - Duration::seconds(1);
        for (path, v) in both() {
            let r = verify(&v, case.quote, case.collateral, after);
            assert!(
                matches!(r, Err(Error::CollateralExpired { .. })),
                "{} {path}: {r:?}",
                case.name
            );
            let r = verify(&v, case.quote, case.collateral, before);
            assert!(
                matches!(r, Err(Error::CollateralNotYetValid { .. })),
                "{} {path}: {r:?}",
                case.name
            );

            let e = Endorsements::Dcap(collateral(case.collateral));
            let verdict = appraise(&v, case.quote, &e, after, Some(&Policy::default()));
            assert!(!verdict.authentic);
            assert!(verdict.collateral_expired);
            assert_eq!(verdict.policy_ok, Some(false));
            assert!(verdict.tcb_status.is_none());
        }
    }
}

#[test]
fn cache_is_not_used_outside_its_window() {
    let v = DcapVerifier::new();
    verify(&v, SGX_QUOTE, SGX_COLLATERAL, AT_2025).expect("fresh");
    assert_eq!(v.cached_entries(), (1, 1));
    // Same collateral, later than nextUpdate: the cached entries must not make it pass.
    let r = verify(&v, SGX_QUOTE, SGX_COLLATERAL, datetime!(2025-08-01 00:00 UTC));
    assert!(matches!(r, Err(Error::CollateralExpired { .. })), "{r:?}");
    // And still fine inside.
    verify(&v, SGX_QUOTE, SGX_COLLATERAL, datetime!(2025-07-10 00:00 UTC)).expect("cached");
    assert_eq!(v.cached_entries(), (1, 1));
    v.clear_cache();
    assert_eq!(v.cached_entries(), (0, 0));
}

#[test]
fn failures_are_not_cached() {
    let v = DcapVerifier::new();
    let mut bad = SGX_QUOTE.to_vec();
    bad[48 + 384 + 4] ^= 1; // the quote signature
    assert!(verify(&v, &bad, SGX_COLLATERAL, AT_2025).is_err());
    assert_eq!(v.cached_entries(), (1, 1), "collateral and PCK chain were fine");
    v.clear_cache();
    let mut coll: serde_json::Value = serde_json::from_slice(SGX_COLLATERAL).expect("json");
    let sig = coll["tcb_info_signature"].as_str().expect("hex").to_string();
    let flipped = format!("{}{}", if sig.starts_with('0') { "1" } else { "0" }, &sig[1..]);
    coll["tcb_info_signature"] = serde_json::Value::String(flipped);
    let bad_coll = serde_json::to_vec(&coll).expect("json");
    assert!(verify(&v, SGX_QUOTE, &bad_coll, AT_2025).is_err());
    assert_eq!(v.cached_entries().0, 0);
}

/// Positions inside the signed part of each quote: header, report body, and the quote
/// signature, attestation key, QE report, QE report signature and QE auth data.
fn tamper_positions(quote: &[u8]) -> Vec<(String, usize)> {
    let body_len = if quote[4] == 0x81 {
        584 + if u16::from_le_bytes([quote[0], quote[1]]) == 5 {
            6 + 64
        } else {
            0
        }
    } else {
        384
    };
    let signed = 48 + body_len;
    let auth = signed + 4;
    vec![
        ("header qe_svn".into(), 8),
        ("header user data".into(), 40),
        ("body start".into(), 48),
        ("body middle".into(), 48 + body_len / 2),
        ("report data".into(), signed - 1),
        ("quote signature".into(), auth),
        ("attestation key".into(), auth + 64),
        ("QE report (v3 layout) or cert data".into(), auth + 128 + 10),
        ("PCK leaf certificate".into(), pck_leaf_offset(quote) + 200),
    ]
}

/// Offset of the PCK leaf certificate's PEM in the quote's certification data. (Bytes of the
/// root certificate that the quote also carries are not covered by anything: the verifier uses
/// its built-in root.)
fn pck_leaf_offset(quote: &[u8]) -> usize {
    let marker = b"-----BEGIN CERTIFICATE-----";
    quote
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("PEM chain in quote")
        + marker.len()
}

#[test]
fn flipped_bytes_are_not_authentic() {
    for case in dcap_cases() {
        for (what, pos) in tamper_positions(case.quote) {
            let mut q = case.quote.to_vec();
            q[pos] ^= 0x01;
            for (path, v) in both() {
                let r = verify(&v, &q, case.collateral, case.at);
                assert!(
                    r.is_err(),
                    "{} {path}: flipping {what} (byte {pos}) still verifies",
                    case.name
                );
            }
        }
    }
}

#[test]
fn wrong_collateral_is_not_authentic() {
    for (path, v) in both() {
        assert!(verify(&v, SGX_QUOTE, TDX_COLLATERAL, AT_2025).is_err(), "{path}");
        assert!(verify(&v, TDX_QUOTE, SGX_COLLATERAL, AT_2025).is_err(), "{path}");
        assert!(
            verify(&v, TDX_OUTDATED_QUOTE, TDX_COLLATERAL, AT_2025).is_err(),
            "{path}"
        );
    }
}

#[test]
fn missing_collateral_is_reported() {
    let r = DcapVerifier::new().verify(SGX_QUOTE, &Endorsements::None, AT_2025);
    assert!(matches!(r, Err(Error::MissingEndorsements(_))), "{r:?}");
}

fn tampered_collaterals(json: &[u8]) -> Vec<(String, Vec<u8>)> {
    let original: serde_json::Value = serde_json::from_slice(json).expect("json");
    let mut out = Vec::new();
    for field in [
        "tcb_info",
        "qe_identity",
        "tcb_info_signature",
        "qe_identity_signature",
        "root_ca_crl",
        "pck_crl",
    ] {
        let mut c = original.clone();
        let s = c[field].as_str().expect("string field").to_string();
        // Change one character in the middle of the field, keeping it hex / JSON where it was.
        let mid = s.len() / 2;
        let ch = s.as_bytes()[mid];
        let replacement = match ch {
            b'0' => '1',
            b'1'..=b'9' => '0',
            b'a'..=b'f' | b'A'..=b'F' => '0',
            _ => continue,
        };
        let mut t = s.clone();
        t.replace_range(mid..mid + 1, &replacement.to_string());
        c[field] = serde_json::Value::String(t);
        out.push((field.to_string(), serde_json::to_vec(&c).expect("json")));
    }
    out
}

#[test]
fn both_paths_agree_on_vectors_tampering_and_times() {
    let cached = DcapVerifier::new();
    let reference = DcapVerifier::reference();
    let mut compared = 0;
    let mut authentic = 0;
    for case in dcap_cases() {
        let window = collateral(case.collateral).validity_window().expect("window");
        let times = [
            case.at,
            window.valid_from + Duration::seconds(1),
            window.valid_until - Duration::seconds(1),
            window.valid_until + Duration::days(1),
            window.valid_from - Duration::days(1),
        ];
        let mut quotes = vec![case.quote.to_vec()];
        for pos in (0..case.quote.len()).step_by(97) {
            let mut q = case.quote.to_vec();
            q[pos] ^= 0x80;
            quotes.push(q);
        }
        quotes.push(case.quote[..case.quote.len() - 1].to_vec());
        for q in &quotes {
            for at in times {
                let a = verify(&reference, q, case.collateral, at);
                let b = verify(&cached, q, case.collateral, at);
                assert_eq!(
                    outcome(&a),
                    outcome(&b),
                    "{} at {at}: reference {a:?} vs cached {b:?}",
                    case.name
                );
                compared += 1;
                authentic += usize::from(a.is_ok());
            }
        }
        for (field, c) in tampered_collaterals(case.collateral) {
            let a = verify(&reference, case.quote, &c, case.at);
            let b = verify(&cached, case.quote, &c, case.at);
            assert!(a.is_err(), "{}: tampered {field} still verifies", case.name);
            assert_eq!(outcome(&a), outcome(&b), "{} tampered {field}", case.name);
            compared += 1;
        }
    }
    assert!(compared > 300, "{compared}");
    // The untampered quotes verify at three of the five times; nothing else should.
    assert!(authentic >= 9, "{authentic}");
}

#[test]
fn inspect_reports_the_quote_fields() {
    let sgx = inspect(SGX_QUOTE).expect("sgx parses");
    let q = dcap_qvl::quote::Quote::parse(SGX_QUOTE).expect("dcap-qvl parses");
    let r = q.report.as_sgx().expect("sgx body");
    assert_eq!(sgx.version, 3);
    assert_eq!(sgx.measurement, hex::encode(r.mr_enclave));
    assert_eq!(sgx.report_data, hex::encode(r.report_data));
    let TeeDetails::Sgx(d) = &sgx.details else {
        panic!("not sgx: {:?}", sgx.details)
    };
    assert_eq!(d.mrsigner, hex::encode(r.mr_signer));
    assert_eq!((d.isv_prod_id, d.isv_svn), (r.isv_prod_id, r.isv_svn));
    assert!(d.fmspc.as_deref().is_some_and(|f| f.len() == 12));
    assert_eq!(sgx.debug, r.attributes[0] & 2 != 0);

    let tdx = inspect(TDX_QUOTE).expect("tdx parses");
    let q = dcap_qvl::quote::Quote::parse(TDX_QUOTE).expect("dcap-qvl parses");
    let r = q.report.as_td10().expect("td body");
    assert_eq!(tdx.version, 4);
    assert_eq!(tdx.measurement, hex::encode(r.mr_td));
    assert_eq!(tdx.report_data.len(), 128);
    let TeeDetails::Tdx(d) = &tdx.details else {
        panic!("not tdx")
    };
    assert_eq!(d.rtmr0, hex::encode(r.rt_mr0));
    assert_eq!(d.rtmr3, hex::encode(r.rt_mr3));
    assert_eq!(d.mrseam, hex::encode(r.mr_seam));
    assert_eq!(d.body, "td10");

    let outdated = inspect(TDX_OUTDATED_QUOTE).expect("v5 parses");
    assert_eq!(outdated.version, 5);
    let TeeDetails::Tdx(d) = &outdated.details else {
        panic!("not tdx")
    };
    assert_eq!(d.body, "td15");
    assert!(d.tee_tcb_svn2.is_some());
}

#[test]
fn hex_text_input_is_accepted() {
    let text = hex::encode(SGX_QUOTE);
    let wrapped: String = text
        .as_bytes()
        .chunks(60)
        .map(|c| format!("{}\n", String::from_utf8_lossy(c)))
        .collect();
    assert_eq!(
        inspect(wrapped.as_bytes()).expect("hex"),
        inspect(SGX_QUOTE).expect("bin")
    );
    let verdict = appraise(
        &cloister_attestation::Verifier::new(),
        wrapped.as_bytes(),
        &Endorsements::Dcap(collateral(SGX_COLLATERAL)),
        AT_2025,
        None,
    );
    assert!(verdict.authentic, "{:?}", verdict.failure);
    assert_eq!(verdict.policy_ok, None);
}

#[test]
fn debug_enclave_is_reported_and_refused_by_policy() {
    // Flip ATTRIBUTES.DEBUG in the SGX report: inspect sees it; the signature no longer holds.
    let mut q = SGX_QUOTE.to_vec();
    q[48 + 48] |= 0x02;
    assert!(inspect(&q).expect("parses").debug);
    assert!(!inspect(SGX_QUOTE).expect("parses").debug);
    let r = DcapVerifier::new().verify(&q, &Endorsements::Dcap(collateral(SGX_COLLATERAL)), AT_2025);
    assert!(r.is_err());
}

#[test]
fn root_ca_is_the_root_of_the_vector_chains() {
    // The cached path's embedded root must be dcap-qvl's: both must accept the same chains.
    for quote in [SGX_QUOTE, TDX_QUOTE, TDX_OUTDATED_QUOTE] {
        let q = dcap_qvl::quote::Quote::parse(quote).expect("parses");
        let chain = dcap_qvl::intel::extract_cert_chain(&q).expect("chain");
        let root = chain.last().expect("root");
        assert_eq!(
            sha256(root),
            sha256(include_bytes!("../../src/dcap/intel_sgx_root_ca.der"))
        );
    }
}

fn sha256(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}
