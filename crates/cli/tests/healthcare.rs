//! The healthcare scenario (README, "Governance: the healthcare scenario") run as written
//! against the `cloister` of this build: four stakeholders, a board with a veto, keys that
//! reach only the attested inference service, and an auditor who verifies the whole log.
//! Its outcome is checked in the audit log the walkthrough exports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::TcpListener;
use std::process::Command;

use serde_json::Value;

fn scenario_block(readme: &str) -> String {
    let start = readme
        .find("\n### Governance: the healthcare scenario")
        .expect("the README has the healthcare scenario");
    let rest = &readme[start..];
    let open = rest.find("```sh\n").expect("a sh block") + "```sh\n".len();
    let close = rest[open..].find("\n```").expect("the block ends") + open;
    rest[open..close].to_owned()
}

#[test]
fn the_healthcare_scenario_runs_as_the_readme_says() {
    let root = common::repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let block = scenario_block(&readme).replace("127.0.0.1:8181", &format!("127.0.0.1:{port}"));
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(root.join("examples"), dir.path().join("examples")).unwrap();
    let bin_dir = std::path::Path::new(common::bin()).parent().unwrap().to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = format!("set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{block}\n");
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env("PATH", path)
        .env_remove("CLOISTER_CAS")
        .env_remove("CLOISTER_CAS_KEY")
        .env_remove("CLOISTER_CAS_PIN")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("the service at M1 gets both keys"), "{stdout}");
    assert!(stdout.contains("refused: M2 gets nothing"), "{stdout}");
    assert!(stdout.contains("the service at M3 gets both keys"), "{stdout}");
    assert_eq!(stdout.lines().filter(|l| *l == "refused").count(), 4, "{stdout}");
    assert!(stdout.contains("audit log intact"), "{stdout}");

    let public = |who: &str| {
        std::fs::read_to_string(dir.path().join(format!("{who}.pub")))
            .unwrap()
            .trim()
            .to_owned()
    };
    let log: Vec<Value> = std::fs::read_to_string(dir.path().join("hc-audit.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of_kind = |kind: &str| log.iter().filter(|e| e["kind"] == kind).collect::<Vec<_>>();
    // Three refused secret reads, the operator's update alone, the veto, the refused M2.
    assert_eq!(of_kind("secret-read-refused").len(), 3);
    let refused_update = of_kind("session-update-refused");
    assert_eq!(refused_update.len(), 1);
    assert_eq!(refused_update[0]["actor"], public("operator").as_str());
    let vetoed = of_kind("proposal-vetoed");
    assert_eq!(vetoed.len(), 1);
    assert!(
        vetoed[0]["detail"]["reason"]
            .as_str()
            .unwrap()
            .contains(&public("hospital"))
    );
    assert!(!of_kind("attest-fail").is_empty());
    // The key holders pinned M3's version (one update each) before it was applied...
    let updates_of = |subject: &str| {
        log.iter()
            .filter(|e| e["kind"] == "session-update" && e["subject"] == subject)
            .count()
    };
    assert_eq!(updates_of("provider/model"), 1);
    assert_eq!(updates_of("hospital/data"), 1);
    let position = |kind: &str, subject: &str| {
        log.iter()
            .position(|e| e["kind"] == kind && e["subject"] == subject)
            .unwrap()
    };
    assert!(position("session-update", "hospital/data") < position("session-update", "inference/triage"));
    // ...and the applied change, with the approvals of the provider and the hospital.
    let applied: Vec<&Value> = of_kind("session-update")
        .into_iter()
        .filter(|e| e["subject"] == "inference/triage")
        .collect();
    assert_eq!(applied.len(), 1);
    let approvals: Vec<&str> = applied[0]["detail"]["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(approvals.len(), 2);
    for who in ["provider", "hospital"] {
        assert!(approvals.contains(&public(who).as_str()), "{approvals:?}");
    }
    // The history the auditor printed names both approvers of version 2.
    assert!(
        stdout.contains(&format!("approved by  {}", public("hospital"))),
        "{stdout}"
    );
}
