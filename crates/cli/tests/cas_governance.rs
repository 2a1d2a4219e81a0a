//! CAS governance through the `cloister` command against `cloister cas serve`: a session
//! governed by a board, changed by a proposal (`session propose`, `proposals ls|show`,
//! `approve`, `reject`) and by offline signatures (`session sign`, `session update
//! --signature`), its history, and an auditor who verifies the whole log offline.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn cli(args: &[&str]) -> Output {
    Command::new(common::bin()).args(args).output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused(out: &Output, code: i32, reason: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    assert!(stderr.contains(reason), "expected {reason:?} in {stderr}");
}

fn keygen(dir: &Path, name: &str) -> (String, String) {
    let path = dir.join(format!("{name}.key"));
    let public = ok(&cli(&["cas", "keygen", "--out", path.to_str().unwrap()]));
    (path.to_str().unwrap().to_owned(), public.trim().to_owned())
}

fn session(predecessor: Option<&str>, marker: &str, board: &[&str]) -> String {
    let predecessor = predecessor
        .map(|p| format!("predecessor: {p}\n"))
        .unwrap_or_default();
    format!(
        "name: ward/triage\n{predecessor}access_policy:\n  update:\n    all:\n    - CREATOR\n    - at_least: 2\n      \
         of: [{}, {}, {}]\n    veto: [{}]\nsecurity:\n  attestation:\n    tolerate: [simulation]\n    mode: none\n\
         services:\n- name: triage\n  command: [run, {marker}]\nsecrets:\n- name: key\n  kind: ascii\n",
        board[0], board[1], board[2], board[3]
    )
}

/// A `cloister cas serve` of its own (key-file vault) and how to reach it.
struct Env {
    _serve: Serve,
    url: String,
    pin: String,
    identity: String,
}

impl Env {
    fn start(dir: &Path, extra: &[&str]) -> Self {
        let data = dir.join("cas");
        let data_s = data.to_str().unwrap();
        let init: Value = serde_json::from_str(&ok(&cli(&[
            "cas",
            "init",
            "--data-dir",
            data_s,
            "--key-file",
            dir.join("master.key").to_str().unwrap(),
            "--json",
        ])))
        .unwrap();
        let args = ["--data-dir", data_s, "--listen", "127.0.0.1:0"];
        let (child, rx) = common::spawn_cas_serve(args.iter().chain(extra), Stdio::inherit());
        let serve = Serve(child);
        Env {
            _serve: serve,
            url: rx.recv_timeout(Duration::from_secs(20)).unwrap(),
            pin: init["identity_pin"].as_str().unwrap().to_owned(),
            identity: init["identity_public_key"].as_str().unwrap().to_owned(),
        }
    }

    /// `cloister ARGS --cas … --pin … --key KEY`.
    fn run(&self, key: &str, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--cas", &self.url, "--pin", &self.pin, "--key", key]);
        cli(&all)
    }
}

fn write(dir: &Path, name: &str, yaml: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, yaml).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn a_board_governs_a_session_through_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (owner, _) = keygen(dir, "owner");
    let (a, a_pub) = keygen(dir, "a");
    let (b, b_pub) = keygen(dir, "b");
    let (c, c_pub) = keygen(dir, "c");
    let (veto, veto_pub) = keygen(dir, "veto");
    let (auditor, auditor_pub) = keygen(dir, "auditor");
    let (outsider, _) = keygen(dir, "outsider");
    let env = Env::start(dir, &["--auditor", &auditor_pub, "--veto-window", "1h"]);
    let run = |key: &str, args: &[&str]| env.run(key, args);
    let identity = env.identity.clone();
    let write = |name: &str, yaml: &str| write(dir, name, yaml);
    let board = [a_pub.as_str(), b_pub.as_str(), c_pub.as_str(), veto_pub.as_str()];

    let v1_file = write("v1.yaml", &session(None, "one", &board));
    let v1 = ok(&run(&owner, &["cas", "session", "create", &v1_file, "--json"]));
    let v1: Value = serde_json::from_str(&v1).unwrap();
    let v1 = v1["hash"].as_str().unwrap().to_owned();

    // The owner alone cannot change it any more.
    let v2_file = write("v2.yaml", &session(Some(&v1), "two", &board));
    refused(
        &run(&owner, &["cas", "session", "update", &v2_file]),
        9,
        "do not meet the update rule",
    );

    // A proposal, approved by the owner, A and B and the veto holder: applied.
    let proposed: Value =
        serde_json::from_str(&ok(&run(&a, &["cas", "session", "propose", &v2_file, "--json"]))).unwrap();
    let id = proposed["id"].as_str().unwrap().to_owned();
    let listed: Value = serde_json::from_str(&ok(&run(&b, &["cas", "proposals", "ls", "--json"]))).unwrap();
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["state"], "pending");
    let shown = ok(&run(&owner, &["cas", "proposals", "show", &id]));
    assert!(
        shown.contains("state       pending") && shown.contains("command"),
        "{shown}"
    );
    refused(
        &run(&outsider, &["cas", "approve", &id]),
        9,
        "not allowed to see proposal",
    );
    for key in [&owner, &a, &b] {
        assert!(ok(&run(key, &["cas", "approve", &id])).contains("pending"));
    }
    refused(&run(&a, &["cas", "approve", &id]), 5, "counts once");
    assert!(ok(&run(&veto, &["cas", "approve", &id])).contains("applied"));

    // Offline: the next version signed by B and C on their own machines, submitted by the
    // owner, whom the rule requires as well; the veto holder signs too (its window is open).
    let history: Value = serde_json::from_str(&ok(&run(
        &auditor,
        &["cas", "session", "history", "ward/triage", "--json"],
    )))
    .unwrap();
    let v2 = history[1]["hash"].as_str().unwrap().to_owned();
    let v3_file = write("v3.yaml", &session(Some(&v2), "three", &board));
    let sign = |key: &str| {
        ok(&cli(&["cas", "session", "sign", &v3_file, "--key", key]))
            .trim()
            .to_owned()
    };
    let (sig_b, sig_c, sig_veto) = (sign(&b), sign(&c), sign(&veto));
    // Without the veto holder the change must go through a proposal.
    refused(
        &run(
            &owner,
            &[
                "cas",
                "session",
                "update",
                &v3_file,
                "--signature",
                &sig_b,
                "--signature",
                &sig_c,
            ],
        ),
        9,
        "veto holders",
    );
    let updated = ok(&run(
        &owner,
        &[
            "cas",
            "session",
            "update",
            &v3_file,
            "--signature",
            &sig_b,
            "--signature",
            &sig_c,
            "--signature",
            &sig_veto,
        ],
    ));
    assert!(updated.starts_with("written ward/triage"), "{updated}");

    // A proposal the veto holder rejects.
    let v4_file = write(
        "v4.yaml",
        &session(Some(updated.split_whitespace().last().unwrap()), "four", &board),
    );
    let proposed: Value =
        serde_json::from_str(&ok(&run(&c, &["cas", "session", "propose", &v4_file, "--json"]))).unwrap();
    let vetoed = proposed["id"].as_str().unwrap().to_owned();
    assert!(ok(&run(&veto, &["cas", "reject", &vetoed])).contains("vetoed"));
    refused(&run(&a, &["cas", "approve", &vetoed]), 5, "is vetoed");

    // The history: three versions, each with its approvals.
    let history: Value = serde_json::from_str(&ok(&run(
        &auditor,
        &["cas", "session", "history", "ward/triage", "--json"],
    )))
    .unwrap();
    let versions = history.as_array().unwrap();
    assert_eq!(versions.len(), 3);
    assert_eq!(versions[1]["predecessor"], v1.as_str());
    assert_eq!(versions[1]["proposal"], id.as_str());
    assert_eq!(versions[1]["approvals"].as_array().unwrap().len(), 4);
    assert_eq!(versions[2]["approvals"].as_array().unwrap().len(), 4);
    let text = ok(&run(&auditor, &["cas", "session", "history", "ward/triage"]));
    assert!(text.contains(&format!("approved by  {b_pub}")), "{text}");

    // The auditor reads the session redacted, never a secret, and verifies the whole log.
    let got = run(&auditor, &["cas", "session", "get", "ward/triage"]);
    assert!(String::from_utf8_lossy(&got.stderr).contains("redacted"));
    refused(
        &run(&auditor, &["cas", "secret", "ward/triage", "key"]),
        9,
        "only the session's owner",
    );
    let log = ok(&run(&auditor, &["cas", "audit", "export"]));
    for kind in [
        "proposal-create",
        "proposal-approve",
        "proposal-applied",
        "proposal-reject",
        "proposal-vetoed",
        "proposal-vote-refused",
        "session-update-refused",
        "secret-read-refused",
    ] {
        assert!(
            log.contains(&format!("\"kind\":\"{kind}\"")),
            "no {kind} in the log"
        );
    }
    let log_file = write("audit.jsonl", &log);
    assert!(
        ok(&cli(&[
            "cas",
            "audit",
            "verify",
            &log_file,
            "--identity",
            &identity
        ]))
        .contains("intact")
    );
}

/// `cas serve --open-namespace-budget 0`: nobody claims a namespace by creating its first
/// session; a namespace an administrator declares takes its owner's sessions.
#[test]
fn a_closed_cas_takes_sessions_only_in_declared_namespaces() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (admin, admin_pub) = keygen(dir, "admin");
    let (owner, owner_pub) = keygen(dir, "owner");
    let env = Env::start(dir, &["--admin", &admin_pub, "--open-namespace-budget", "0"]);
    let file = write(
        dir,
        "s.yaml",
        "name: ward/notes\nsecrets:\n- name: key\n  kind: ascii\n",
    );
    let refusal = env.run(&owner, &["cas", "session", "create", &file]);
    assert!(!refusal.status.success());
    let stderr = String::from_utf8_lossy(&refusal.stderr);
    assert!(
        stderr.contains("ask a CAS administrator to declare it"),
        "{stderr}"
    );
    ok(&env.run(
        &admin,
        &["cas", "namespace", "add", "ward", "--owner", &owner_pub],
    ));
    ok(&env.run(&owner, &["cas", "session", "create", &file]));
}
