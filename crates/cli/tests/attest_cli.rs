//! `cloister attest` gives PROVENANCE.md's answers for every vector, through the binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn vectors() -> PathBuf {
    common::repo_root().join("crates/attestation/testdata")
}

fn attest(args: &[&str]) -> (Option<i32>, Value) {
    let out = Command::new(common::bin())
        .arg("attest")
        .args(args)
        .arg("--json")
        .current_dir(vectors())
        .output()
        .unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), json)
}

#[test]
fn verify_gives_the_documented_answers() {
    let (code, v) = attest(&[
        "verify",
        "--evidence",
        "sgx/quote.bin",
        "--collateral",
        "sgx/collateral.json",
        "--at",
        "2025-07-01T00:00:00Z",
    ]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["authentic"], true);
    assert_eq!(v["tcb_status"], "ConfigurationAndSWHardeningNeeded");
    assert_eq!(
        v["advisories"],
        serde_json::json!(["INTEL-SA-00289", "INTEL-SA-00615"])
    );

    let (code, v) = attest(&[
        "verify",
        "--evidence",
        "tdx/quote.bin",
        "--collateral",
        "tdx/collateral.json",
        "--at",
        "2025-07-01T00:00:00Z",
    ]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["tcb_status"], "UpToDate");
    assert_eq!(v["advisories"], serde_json::json!([]));

    let outdated = [
        "verify",
        "--evidence",
        "tdx/quote-outdated-tcb.bin",
        "--collateral",
        "tdx/collateral-outdated-tcb.json",
        "--at",
        "2026-03-01T00:00:00Z",
    ];
    let (code, v) = attest(&outdated);
    assert_eq!(code, Some(0), "authentic without a policy: {v}");
    assert_ne!(v["tcb_status"], "UpToDate");
    let (code, v) = attest(&[&outdated[..], &["--tolerate", "debug-mode"]].concat());
    assert_eq!(code, Some(9), "a policy without outdated-tcb must refuse: {v}");
    assert_eq!(v["policy_ok"], false);
    let (code, _) = attest(&[&outdated[..], &["--tolerate", "outdated-tcb"]].concat());
    assert_eq!(code, Some(0));

    // After nextUpdate: expired collateral.
    let (code, v) = attest(&[
        "verify",
        "--evidence",
        "sgx/quote.bin",
        "--collateral",
        "sgx/collateral.json",
        "--at",
        "2025-08-01T00:00:00Z",
    ]);
    assert_eq!(code, Some(9));
    assert_eq!(v["collateral_expired"], true);

    let (code, v) = attest(&[
        "verify",
        "--evidence",
        "snp/report-milan.hex",
        "--vcek",
        "snp/vcek-milan.der",
        "--chain",
        "snp/cert-chain-milan.pem",
    ]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["tee"], "snp");

    // Wrong measurement expectation.
    let (code, v) = attest(&[
        "verify",
        "--evidence",
        "tdx/quote.bin",
        "--collateral",
        "tdx/collateral.json",
        "--at",
        "2025-07-01T00:00:00Z",
        "--expect-measurement",
        &"00".repeat(48),
    ]);
    assert_eq!(code, Some(9), "{v}");
}

#[test]
fn a_flipped_byte_is_not_authentic() {
    let dir = tempfile::tempdir().unwrap();
    let mut quote = std::fs::read(vectors().join("sgx/quote.bin")).unwrap();
    quote[200] ^= 1;
    let tampered = dir.path().join("tampered.bin");
    std::fs::write(&tampered, &quote).unwrap();
    let (code, v) = attest(&[
        "verify",
        "--evidence",
        tampered.to_str().unwrap(),
        "--collateral",
        "sgx/collateral.json",
        "--at",
        "2025-07-01T00:00:00Z",
    ]);
    assert_eq!(code, Some(9));
    assert_eq!(v["authentic"], false);
    let (code, v) = attest(&["inspect", "sgx/quote.bin"]);
    assert_eq!(code, Some(0));
    assert_eq!(v["tee"], "sgx");
    assert_eq!(v["version"], 3);
}
