//! Policy evaluation independent of any TEE.

use std::collections::BTreeSet;

use cloister_attestation::{
    EvidenceSummary, Policy, SimDetails, Tee, TeeDetails, Tolerance, VerifiedEvidence,
};

fn evidence(tcb_status: &str, advisories: &[&str], debug: bool) -> VerifiedEvidence {
    VerifiedEvidence {
        summary: EvidenceSummary {
            tee: Tee::Sgx,
            version: 3,
            measurement: "ab".repeat(32),
            report_data: "00".repeat(64),
            debug,
            details: TeeDetails::Sim(SimDetails {
                platform_key: String::new(),
                flags: 0,
                config_id: String::new(),
            }),
        },
        tcb_status: tcb_status.into(),
        advisories: advisories.iter().map(|a| a.to_string()).collect(),
        collateral_window: None,
    }
}

fn set(list: &str) -> BTreeSet<Tolerance> {
    Tolerance::parse_list(list).expect("valid list")
}

#[test]
fn tcb_statuses_map_to_tolerances() {
    let cases: [(&str, Option<&str>); 11] = [
        ("UpToDate", Some("")),
        ("SWHardeningNeeded", Some("sw-hardening-needed")),
        ("ConfigurationNeeded", Some("configuration-needed")),
        (
            "ConfigurationAndSWHardeningNeeded",
            Some("configuration-needed,sw-hardening-needed"),
        ),
        ("OutOfDate", Some("outdated-tcb")),
        (
            "OutOfDateConfigurationNeeded",
            Some("outdated-tcb,configuration-needed"),
        ),
        ("TDRelaunchAdvised", Some("outdated-tcb")),
        (
            "TDRelaunchAdvisedConfigurationNeeded",
            Some("outdated-tcb,configuration-needed"),
        ),
        ("Simulated", Some("simulation")),
        ("Revoked", None),
        ("SomethingNew", None),
    ];
    for (status, needed) in cases {
        assert_eq!(
            Tolerance::required_for_tcb_status(status),
            needed.map(set),
            "{status}"
        );
        let all = Policy {
            tolerate: Tolerance::ALL.into_iter().collect(),
            ..Policy::default()
        };
        assert_eq!(
            all.evaluate(&evidence(status, &[], false)).ok,
            needed.is_some(),
            "{status}"
        );
        let none = Policy::default().evaluate(&evidence(status, &[], false));
        assert_eq!(none.ok, needed == Some(""), "{status}");
    }
}

#[test]
fn refusal_reasons_are_readable() {
    let out = Policy::default().evaluate(&evidence("OutOfDate", &[], false));
    assert_eq!(
        out.reasons,
        ["TCB status OutOfDate not tolerated (tolerate outdated-tcb)"]
    );
    let out = Policy::default().evaluate(&evidence("Revoked", &[], false));
    assert_eq!(out.reasons, ["TCB status Revoked is never acceptable"]);
    let out = Policy::default().evaluate(&evidence("UpToDate", &[], true));
    assert_eq!(out.reasons, ["debug enclave not tolerated (tolerate debug-mode)"]);
    let tolerant = Policy {
        tolerate: set("debug-mode"),
        ..Policy::default()
    };
    assert!(tolerant.evaluate(&evidence("UpToDate", &[], true)).ok);
}

#[test]
fn advisories_need_acknowledging_only_for_hardening_and_configuration() {
    let p = Policy {
        tolerate: set("sw-hardening-needed,outdated-tcb"),
        ..Policy::default()
    };
    let out = p.evaluate(&evidence("SWHardeningNeeded", &["INTEL-SA-00334"], false));
    assert_eq!(
        out.reasons,
        ["advisory INTEL-SA-00334 not ignored (ignore_advisories)"]
    );
    assert!(p.evaluate(&evidence("OutOfDate", &["INTEL-SA-00334"], false)).ok);
    let acked = Policy {
        ignore_advisories: vec!["INTEL-SA-00334".into()],
        ..p
    };
    assert!(
        acked
            .evaluate(&evidence("SWHardeningNeeded", &["INTEL-SA-00334"], false))
            .ok
    );
}

#[test]
fn measurement_comparison_normalises_hex() {
    let m = "ab".repeat(32);
    for expected in [m.clone(), m.to_uppercase(), format!("0x{m}"), format!("  {m}\n")] {
        let p = Policy {
            expected_measurement: Some(expected.clone()),
            ..Policy::default()
        };
        assert!(p.evaluate(&evidence("UpToDate", &[], false)).ok, "{expected:?}");
        p.validate().expect("valid");
    }
    let p = Policy {
        expected_measurement: Some("zz".into()),
        ..Policy::default()
    };
    assert!(p.validate().is_err());
    assert!(!p.evaluate(&evidence("UpToDate", &[], false)).ok);
    let short = Policy {
        expected_report_data: Some("00".into()),
        ..Policy::default()
    };
    assert!(short.validate().is_err());
}

#[test]
fn tolerance_names_parse_and_round_trip() {
    assert_eq!(
        set(" outdated-tcb , debug-mode,"),
        [Tolerance::OutdatedTcb, Tolerance::DebugMode].into()
    );
    assert!(Tolerance::parse_list("outdated").is_err());
    for t in Tolerance::ALL {
        assert_eq!(t.as_str().parse::<Tolerance>().expect("parses"), t);
        assert_eq!(
            serde_json::to_string(&t).expect("json"),
            format!("\"{}\"", t.as_str())
        );
    }
    let p: Policy = serde_json::from_str(
        r#"{"tolerate":["outdated-tcb","simulation"],"ignore_advisories":["*"],"expected_measurement":"00"}"#,
    )
    .expect("policy json");
    assert_eq!(p.tolerate, set("outdated-tcb,simulation"));
    assert!(serde_json::from_str::<Policy>(r#"{"tolerate":["nope"]}"#).is_err());
    assert!(serde_json::from_str::<Policy>(r#"{"tolerat":[]}"#).is_err());
}
