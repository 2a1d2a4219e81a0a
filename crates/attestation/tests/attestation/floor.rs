//! The collateral floor against the real vectors.
//!
//! The two TDX collaterals are for different FMSPCs (B0C06F000000 from 2025, 90C06F000000 from
//! 2026) but share the TD_QE identity (evaluation number 17 vs 18), the PCK Platform CA's CRL
//! (June 2025 vs February 2026) and the root CA CRL (the same one). So the 2026 collateral is a
//! genuine "newer" for three of the 2025 collateral's parts; the TCB info, which is per FMSPC,
//! is covered at the type level.

use cloister_attestation::{CollateralFloor, DcapCollateral, DcapVerifier, Error};
use serde_json::Value;
use time::OffsetDateTime;

use crate::common::*;

fn both() -> [(&'static str, DcapVerifier); 2] {
    [
        ("reference", DcapVerifier::reference()),
        ("cached", DcapVerifier::new()),
    ]
}

fn observe(floor: &mut CollateralFloor, quote: &[u8], json: &[u8], at: OffsetDateTime) -> bool {
    let verified = DcapVerifier::new()
        .verify_collateral(quote, &collateral(json), at)
        .expect("vector collateral authenticates");
    floor.observe(&verified)
}

fn stale(r: Result<(), Error>) -> (String, String) {
    match r {
        Err(Error::StaleCollateral { platform, detail }) => (platform, detail),
        other => panic!("expected a stale-collateral refusal, got {other:?}"),
    }
}

/// A copy of collateral JSON with `edit` applied to one of its string fields.
fn edited(json: &[u8], field: &str, edit: impl FnOnce(&str) -> String) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(json).unwrap();
    let old = v[field].as_str().unwrap().to_owned();
    let new = edit(&old);
    assert_ne!(old, new, "the edit of {field} changed nothing");
    v[field] = Value::String(new);
    serde_json::to_vec(&v).unwrap()
}

/// Replaces one ASCII date inside a hex-encoded DER CRL.
fn crl_date(hex_der: &str, from: &str, to: &str) -> String {
    let (from, to) = (hex::encode(from), hex::encode(to));
    assert!(hex_der.contains(&from), "date {from} not in the CRL");
    hex_der.replacen(&from, &to, 1)
}

#[test]
fn older_tdx_collateral_is_refused_once_the_newer_was_seen() {
    let mut floor = CollateralFloor::new();
    // Nothing seen: anything passes.
    floor.check(&collateral(TDX_COLLATERAL)).unwrap();
    assert!(observe(
        &mut floor,
        TDX_OUTDATED_QUOTE,
        TDX_OUTDATED_COLLATERAL,
        AT_2026
    ));
    assert!(
        !observe(&mut floor, TDX_OUTDATED_QUOTE, TDX_OUTDATED_COLLATERAL, AT_2026),
        "the same collateral again raises nothing"
    );
    floor.check(&collateral(TDX_OUTDATED_COLLATERAL)).unwrap();

    let (platform, detail) = stale(floor.check(&collateral(TDX_COLLATERAL)));
    assert_eq!(platform, "TDX FMSPC B0C06F000000");
    assert_eq!(
        detail,
        "QE identity TD_QE evaluation number 17 < 18; \
         QE identity TD_QE issue date 2025-06-19T10:32:27Z < 2026-02-18T10:42:15Z; \
         PCK CRL (platform CA) thisUpdate 2025-06-19T10:00:35Z < 2026-02-18T10:41:15Z"
    );
    let message = floor.check(&collateral(TDX_COLLATERAL)).unwrap_err().to_string();
    assert!(
        message.starts_with(
            "collateral for TDX FMSPC B0C06F000000 is older than collateral already seen: QE identity"
        ),
        "{message}"
    );

    // SGX shares only the root CA CRL (the same one): its QE, CA and TCB info are other parts.
    floor.check(&collateral(SGX_COLLATERAL)).unwrap();
}

#[test]
fn seeing_the_older_collateral_first_does_not_block_the_newer() {
    let mut floor = CollateralFloor::new();
    assert!(observe(&mut floor, TDX_QUOTE, TDX_COLLATERAL, AT_2025));
    floor.check(&collateral(TDX_OUTDATED_COLLATERAL)).unwrap();
    assert!(observe(
        &mut floor,
        TDX_OUTDATED_QUOTE,
        TDX_OUTDATED_COLLATERAL,
        AT_2026
    ));
    stale(floor.check(&collateral(TDX_COLLATERAL)));
    // The SGX vector raises its own parts and the (unchanged) root CRL; TDX stays refused.
    assert!(observe(&mut floor, SGX_QUOTE, SGX_COLLATERAL, AT_2025));
    floor.check(&collateral(SGX_COLLATERAL)).unwrap();
    stale(floor.check(&collateral(TDX_COLLATERAL)));
}

#[test]
fn tcb_info_floor_is_per_tee_and_fmspc() {
    // The stored form of a floor that has seen evaluation number 18 for the 2025 vector's FMSPC
    // (no such genuine collateral is in the vectors, so the floor is built from its parts).
    let tcb = |tee: &str, number: u32, issued: i64| {
        serde_json::from_value::<CollateralFloor>(serde_json::json!({
            "tcb_info": {
                format!("{tee}/B0C06F000000"): {"evaluation_number": number, "issue_date": issued}
            }
        }))
        .unwrap()
    };
    // 2025-06-19T10:16:03Z, the vector's own TCB info issue date.
    let issued = datetime_unix(2025, 6, 19, 10, 16, 3);
    let (platform, detail) = stale(tcb("TDX", 18, issued).check(&collateral(TDX_COLLATERAL)));
    assert_eq!(platform, "TDX FMSPC B0C06F000000");
    assert_eq!(detail, "TCB info evaluation number 17 < 18");
    // Same number, a later issue: refused for the date alone.
    let (_, detail) = stale(tcb("TDX", 17, issued + 86_400).check(&collateral(TDX_COLLATERAL)));
    assert_eq!(
        detail,
        "TCB info issue date 2025-06-19T10:16:03Z < 2025-06-20T10:16:03Z"
    );
    // Equal to the floor passes; an SGX TCB info of the same FMSPC is another part.
    tcb("TDX", 17, issued).check(&collateral(TDX_COLLATERAL)).unwrap();
    tcb("SGX", 99, issued + 86_400)
        .check(&collateral(TDX_COLLATERAL))
        .unwrap();

    // The same through a genuine newer TCB info: the 2026 collateral's, observed, and the 2025
    // TCB info relabelled to its FMSPC (an unsigned edit: `check` reads, it does not verify).
    let mut floor = CollateralFloor::new();
    observe(&mut floor, TDX_OUTDATED_QUOTE, TDX_OUTDATED_COLLATERAL, AT_2026);
    let relabelled = edited(TDX_COLLATERAL, "tcb_info", |t| {
        t.replace("\"fmspc\":\"B0C06F000000\"", "\"fmspc\":\"90C06F000000\"")
    });
    let (platform, detail) = stale(floor.check(&DcapCollateral::from_json(&relabelled).unwrap()));
    assert_eq!(platform, "TDX FMSPC 90C06F000000");
    assert!(
        detail.starts_with(
            "TCB info evaluation number 17 < 18; TCB info issue date 2025-06-19T10:16:03Z < 2026-02-18T10:58:51Z; "
        ),
        "{detail}"
    );
}

fn datetime_unix(y: i32, mo: u8, d: u8, h: u8, mi: u8, s: u8) -> i64 {
    let date = time::Date::from_calendar_date(y, time::Month::try_from(mo).unwrap(), d).unwrap();
    date.with_hms(h, mi, s).unwrap().assume_utc().unix_timestamp()
}

/// Forged parts that look newer pass `check` (it reads without verifying) but can never be
/// observed, so they cannot lift the floor above genuine collateral.
#[test]
fn forged_newer_parts_cannot_raise_the_floor() {
    let forgeries: [(&str, Vec<u8>); 4] = [
        (
            "TCB info evaluation number",
            edited(TDX_COLLATERAL, "tcb_info", |t| {
                t.replace("\"tcbEvaluationDataNumber\":17", "\"tcbEvaluationDataNumber\":18")
            }),
        ),
        (
            "QE identity evaluation number",
            edited(TDX_COLLATERAL, "qe_identity", |t| {
                t.replace("\"tcbEvaluationDataNumber\":17", "\"tcbEvaluationDataNumber\":18")
            }),
        ),
        // Still inside the window at AT_2025, so only the CRL signatures can catch these.
        (
            "PCK CRL thisUpdate",
            edited(TDX_COLLATERAL, "pck_crl", |c| {
                crl_date(c, "250619100035Z", "250630100035Z")
            }),
        ),
        (
            "root CA CRL thisUpdate",
            edited(TDX_COLLATERAL, "root_ca_crl", |c| {
                crl_date(c, "250320112157Z", "250321112157Z")
            }),
        ),
    ];
    let mut genuine = CollateralFloor::new();
    observe(&mut genuine, TDX_QUOTE, TDX_COLLATERAL, AT_2025);
    for (what, json) in forgeries {
        let forged = DcapCollateral::from_json(&json).unwrap();
        genuine.check(&forged).unwrap_or_else(|e| panic!("{what}: {e}"));
        for (path, v) in both() {
            let e = v
                .verify_collateral(TDX_QUOTE, &forged, AT_2025)
                .expect_err(&format!("{path}: forged {what} authenticated"));
            assert!(matches!(e, Error::Verification(_)), "{path}: {what}: {e}");
        }
    }
    // Had any of them been observed, the genuine collateral would now be refused.
    genuine.check(&collateral(TDX_COLLATERAL)).unwrap();
}

#[test]
fn collateral_authenticates_only_with_a_matching_pck_chain() {
    for (path, v) in both() {
        for case in dcap_cases() {
            v.verify_collateral(case.quote, &collateral(case.collateral), case.at)
                .unwrap_or_else(|e| panic!("{path} {}: {e}", case.name));
        }
        // The SGX PCK comes from the processor CA; the TDX collateral carries the platform CA's
        // CRL, which says nothing about it.
        let e = v
            .verify_collateral(SGX_QUOTE, &collateral(TDX_COLLATERAL), AT_2025)
            .unwrap_err();
        assert!(matches!(e, Error::Verification(_)), "{path}: {e}");
        // Expired collateral does not authenticate either.
        let e = v
            .verify_collateral(TDX_QUOTE, &collateral(TDX_COLLATERAL), AT_2026)
            .unwrap_err();
        assert!(matches!(e, Error::CollateralExpired { .. }), "{path}: {e}");
    }
}

#[test]
fn the_floor_round_trips_and_only_rises() {
    let mut newer = CollateralFloor::new();
    observe(&mut newer, TDX_OUTDATED_QUOTE, TDX_OUTDATED_COLLATERAL, AT_2026);
    let mut older = CollateralFloor::new();
    observe(&mut older, TDX_QUOTE, TDX_COLLATERAL, AT_2025);

    let stored = serde_json::to_vec(&newer).unwrap();
    let loaded: CollateralFloor = serde_json::from_slice(&stored).unwrap();
    assert_eq!(loaded, newer);

    let mut merged = newer.clone();
    assert!(merged.merge(&older), "the 2025 FMSPC's TCB info is new to it");
    assert!(!merged.merge(&older) && !merged.merge(&newer));
    stale(merged.check(&collateral(TDX_COLLATERAL)));
    // Observing the older collateral never lowers anything.
    let before = merged.clone();
    observe(&mut merged, TDX_QUOTE, TDX_COLLATERAL, AT_2025);
    assert_eq!(merged, before);

    // A stored form this version does not understand is an error, not an empty floor.
    assert!(serde_json::from_str::<CollateralFloor>(r#"{"tcb_info":{},"future":1}"#).is_err());
    assert!(serde_json::from_str::<CollateralFloor>(r#"{"root_ca_crl":"x"}"#).is_err());
    assert_eq!(
        serde_json::from_str::<CollateralFloor>("{}").unwrap(),
        CollateralFloor::new()
    );
}

#[test]
fn malformed_collateral_is_refused_by_check() {
    let floor = CollateralFloor::new();
    let no_number = edited(TDX_COLLATERAL, "qe_identity", |t| {
        t.replace("\"tcbEvaluationDataNumber\":17,", "")
    });
    let e = floor
        .check(&DcapCollateral::from_json(&no_number).unwrap())
        .unwrap_err();
    assert!(matches!(e, Error::Malformed { .. }), "{e}");
    let bad_crl = edited(TDX_COLLATERAL, "pck_crl", |_| "3000".to_owned());
    let e = floor
        .check(&DcapCollateral::from_json(&bad_crl).unwrap())
        .unwrap_err();
    assert!(matches!(e, Error::Malformed { .. }), "{e}");
}
