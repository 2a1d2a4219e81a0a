//! The CAS end to end: `cloister cas serve` on loopback, sealed and unsealed, sessions with
//! owners, simulated attestation with HPKE-sealed configuration, and every refusal with its
//! audit entry.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use cloister_attestation::SimPlatform;
use cloister_cas_client::client::{CasClient, ClientError, LocalClient};
use cloister_cas_client::protocol::{AttestRequest, InitData};
use cloister_cas_client::sign::ClientIdentity;
use serde_json::Value;

struct Cas {
    dir: PathBuf,
    child: Child,
    url: String,
    pin: String,
    public_key: String,
}

impl Drop for Cas {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(common::bin()).args(args).output().unwrap()
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Initializes a Shamir-sealed CAS with 3 shares (threshold 2) and starts it; returns the
/// shares (the CAS is still sealed).
fn start_sealed(dir: &Path, admin: &str) -> (Cas, Vec<String>) {
    let init: Value = serde_json::from_str(&ok(&cli(&[
        "cas",
        "init",
        "--data-dir",
        dir.to_str().unwrap(),
        "--shares",
        "3",
        "--threshold",
        "2",
        "--json",
    ])))
    .unwrap();
    let shares: Vec<String> = init["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    // An offline collateral directory with the SGX vector's collateral, named as the CAS
    // looks it up.
    let collateral_dir = dir.with_extension("collateral");
    std::fs::create_dir_all(&collateral_dir).unwrap();
    let vectors = common::repo_root().join("crates/attestation/testdata");
    let quote = std::fs::read(vectors.join("sgx/quote.bin")).unwrap();
    let key = cloister_attestation::CollateralSource::cache_key(&quote).unwrap();
    std::fs::copy(
        vectors.join("sgx/collateral.json"),
        collateral_dir.join(format!("{key}.json")),
    )
    .unwrap();
    let (child, rx) = common::spawn_cas_serve(
        [
            "--data-dir",
            dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin",
            admin,
            "--collateral-dir",
            collateral_dir.to_str().unwrap(),
        ],
        Stdio::inherit(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.join("cas.sock").exists() {
        assert!(Instant::now() < deadline, "CAS did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let cas = Cas {
        dir: dir.to_path_buf(),
        child,
        url: String::new(),
        pin: init["identity_pin"].as_str().unwrap().to_owned(),
        public_key: init["identity_public_key"].as_str().unwrap().to_owned(),
    };
    URL_RX.with(|cell| *cell.borrow_mut() = Some(rx));
    (cas, shares)
}

thread_local! {
    static URL_RX: std::cell::RefCell<Option<std::sync::mpsc::Receiver<String>>> = const { std::cell::RefCell::new(None) };
}

fn wait_url() -> String {
    URL_RX.with(|cell| {
        cell.borrow()
            .as_ref()
            .unwrap()
            .recv_timeout(Duration::from_secs(20))
            .expect("CAS network port did not open")
    })
}

fn session_yaml(name: &str, measurement: &str, tolerate: &str, predecessor: Option<&str>) -> String {
    // A session that does not tolerate simulation can only name hardware TEEs.
    let (tee, field) = if tolerate.contains("simulation") {
        ("sim", "measurement")
    } else {
        ("sgx", "mrenclave")
    };
    let predecessor = predecessor
        .map(|p| format!("predecessor: {p}\n"))
        .unwrap_or_default();
    format!(
        r#"name: {name}
version: "0.3"
{predecessor}security:
  attestation:
    mode: hardware
    tolerate: [{tolerate}]
services:
- name: worker
  command: ["/bin/sh", "run.sh", "--token", "$$CLOISTER::api_token$$"]
  environment:
    API_TOKEN: "$$CLOISTER::api_token$$"
    MODE: fast
  attestation:
  - tee: {tee}
    {field}: {measurement}
secrets:
- name: api_token
  kind: ascii
  size: 24
- name: db_password
  kind: ascii
  value: correct-horse-battery
files:
- path: /etc/worker/config.json
  content: '{{"password": "$$CLOISTER::db_password$$"}}'
  permission: "0600"
"#
    )
}

fn strict_name() -> &'static str {
    "hospital/strict"
}

fn refused(result: Result<impl std::fmt::Debug, ClientError>, status: u16, reason: &str) {
    match result {
        Err(ClientError::Refused { status: s, message }) => {
            assert_eq!(s.as_u16(), status, "{message}");
            assert!(message.contains(reason), "expected {reason:?} in {message:?}");
        }
        other => panic!("expected a {status} refusal containing {reason:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cas_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let key = |name: &str| keys.join(name);
    let admin_public = ok(&cli(&["cas", "keygen", "--out", key("admin").to_str().unwrap()]))
        .trim()
        .to_owned();
    let owner_public = ok(&cli(&["cas", "keygen", "--out", key("owner").to_str().unwrap()]))
        .trim()
        .to_owned();
    assert_ne!(admin_public, owner_public);
    let data = dir.path().join("cas");
    let (mut cas, shares) = start_sealed(&data, &admin_public);

    // Sealed: the operator socket answers status; the network port is not open yet.
    let local = LocalClient::new(&data).unwrap();
    let status = local.status().await.unwrap();
    assert!(status.sealed);
    assert_eq!(status.threshold, Some(2));
    assert_eq!(status.identity_pin.as_deref(), Some(cas.pin.as_str()));
    // A share of another CAS is refused and does not count.
    let other_dir = dir.path().join("other");
    let other: Value = serde_json::from_str(&ok(&cli(&[
        "cas",
        "init",
        "--data-dir",
        other_dir.to_str().unwrap(),
        "--shares",
        "2",
        "--threshold",
        "2",
        "--json",
    ])))
    .unwrap();
    let foreign = other["shares"][0].as_str().unwrap();
    assert!(local.unseal(foreign).await.is_err());
    assert!(
        local.unseal(&shares[0]).await.unwrap()["sealed"]
            .as_bool()
            .unwrap()
    );
    assert!(
        !local.unseal(&shares[2]).await.unwrap()["sealed"]
            .as_bool()
            .unwrap()
    );
    cas.url = wait_url();

    let client = |name: &str| {
        CasClient::new(
            &cas.url,
            &cas.pin,
            Some(ClientIdentity::load(&key(name)).unwrap()),
        )
        .unwrap()
    };
    let owner = client("owner");
    let admin = client("admin");
    let stranger = CasClient::new(&cas.url, &cas.pin, Some(ClientIdentity::generate())).unwrap();

    // A wrong pin: the TLS handshake fails.
    let wrong_pin = CasClient::new(&cas.url, &format!("sha256:{}", "00".repeat(32)), None).unwrap();
    assert!(matches!(wrong_pin.status().await, Err(ClientError::Transport(_))));

    // Sessions with owners and predecessors.
    let platform_file = dir.path().join("platform.key");
    let platform_public = ok(&cli(&[
        "cas",
        "platform",
        "keygen",
        "--out",
        platform_file.to_str().unwrap(),
    ]))
    .trim()
    .to_owned();
    let measurement = hex::encode([7u8; 32]);
    let name = "hospital/inference";
    let created = owner
        .create_session(&session_yaml(name, &measurement, "simulation", None))
        .await
        .unwrap();
    assert_eq!(created.hash.len(), 64);
    refused(
        owner
            .create_session(&session_yaml(name, &measurement, "simulation", None))
            .await,
        409,
        "exists",
    );
    refused(
        owner
            .update_session(name, &session_yaml(name, &measurement, "simulation", None))
            .await,
        400,
        "predecessor",
    );
    let stale = "ab".repeat(32);
    refused(
        owner
            .update_session(
                name,
                &session_yaml(name, &measurement, "simulation", Some(&stale)),
            )
            .await,
        409,
        "stale",
    );
    refused(
        stranger
            .update_session(
                name,
                &session_yaml(name, &measurement, "simulation", Some(&created.hash)),
            )
            .await,
        403,
        "not allowed",
    );
    refused(stranger.get_session(name).await, 403, "not allowed");
    refused(
        stranger.read_secret(name, "api_token", None).await,
        403,
        "not allowed",
    );
    let updated = owner
        .update_session(
            name,
            &session_yaml(name, &measurement, "simulation", Some(&created.hash)),
        )
        .await
        .unwrap();
    assert_ne!(updated.hash, created.hash);
    assert_eq!(owner.get_session(name).await.unwrap().hash, updated.hash);
    let token =
        String::from_utf8(owner.read_secret(name, "api_token", None).await.unwrap().to_vec()).unwrap();
    assert_eq!(token.len(), 24);
    // Unsigned, replayed or forged session requests are refused.
    let anonymous = CasClient::new(&cas.url, &cas.pin, None).unwrap();
    assert!(matches!(
        anonymous.get_session(name).await,
        Err(ClientError::NoIdentity)
    ));

    // A P-256 client key works the same way.
    let p256_public = ok(&cli(&[
        "cas",
        "keygen",
        "--algorithm",
        "p256",
        "--out",
        key("p256").to_str().unwrap(),
    ]))
    .trim()
    .to_owned();
    assert!(p256_public.starts_with("p256:"));
    let p256_owner = client("p256");
    let written = p256_owner
        .create_session(&session_yaml("p256/own", &measurement, "simulation", None))
        .await
        .unwrap();
    assert_eq!(
        p256_owner.get_session("p256/own").await.unwrap().creator,
        p256_public
    );
    refused(owner.get_session("p256/own").await, 403, "not allowed");
    assert_eq!(written.name, "p256/own");

    // Namespaces: `hospital` is the owner's (it created the first session there), `p256` the
    // P-256 key's. Nobody else creates sessions there; administrators declare namespaces.
    refused(
        stranger
            .create_session(&session_yaml("hospital/evil", &measurement, "simulation", None))
            .await,
        403,
        "namespace \"hospital\" belongs to",
    );
    let connect = |who: &str| {
        vec![
            "--cas".to_owned(),
            cas.url.clone(),
            "--pin".to_owned(),
            cas.pin.clone(),
            "--key".to_owned(),
            key(who).to_str().unwrap().to_owned(),
        ]
    };
    let namespace = |args: &[&str], who: &str| {
        let mut all: Vec<String> = ["cas", "namespace"].iter().map(|s| s.to_string()).collect();
        all.extend(args.iter().map(|s| s.to_string()));
        all.extend(connect(who));
        Command::new(common::bin()).args(&all).output().unwrap()
    };
    let own = ok(&namespace(&["ls"], "owner"));
    assert_eq!(own.trim(), format!("hospital  {owner_public}  claimed"));
    let not_admin = namespace(&["add", "shared", "--owner", &owner_public], "owner");
    assert_eq!(not_admin.status.code(), Some(9), "{not_admin:?}");
    ok(&namespace(&["add", "shared", "--owner", &owner_public], "admin"));
    let all: Value = serde_json::from_str(&ok(&namespace(&["ls", "--json"], "admin"))).unwrap();
    let all = all.as_array().unwrap();
    assert!(
        all.iter()
            .any(|n| n["name"] == "shared" && n["how"] == "declared")
    );
    assert!(
        all.iter()
            .any(|n| n["name"] == "p256" && n["owner"] == p256_public.as_str())
    );
    assert_eq!(all.len(), 3, "{all:?}");

    // Attestation with the simulation TEE: unknown platform first.

    let mut m = [0u8; 32];
    m.copy_from_slice(&hex::decode(&measurement).unwrap());
    let init = InitData::new(&cas.pin, name, "worker").unwrap();
    let source = init
        .simulated(SimPlatform::load_or_generate(&platform_file).unwrap(), m)
        .unwrap();
    refused(
        owner.attest(&init, &source, |_| {}).await,
        403,
        "unknown simulation platform",
    );
    refused(
        owner.add_platform(&platform_public, "dev box").await,
        403,
        "administrators",
    );
    admin.add_platform(&platform_public, "dev box").await.unwrap();

    let config = owner.attest(&init, &source, |_| {}).await.unwrap();
    assert_eq!(config.environment["API_TOKEN"], token.as_str());
    assert_eq!(config.environment["MODE"], "fast");
    assert!(config.command.iter().any(|a| a == token.as_str()));
    let file = &config.files[0];
    assert_eq!(file.path, "/etc/worker/config.json");
    let content = String::from_utf8(file.content.clone()).unwrap();
    assert!(content.contains("correct-horse-battery"), "{content}");

    // Debug-mode evidence from the same platform: the session does not tolerate debug-mode.
    let debug = init
        .simulated(
            SimPlatform::load_or_generate(&platform_file)
                .unwrap()
                .with_debug(true),
            m,
        )
        .unwrap();
    refused(owner.attest(&init, &debug, |_| {}).await, 403, "debug");

    // Wrong measurement: refused with the reason.
    let wrong = init
        .simulated(SimPlatform::load_or_generate(&platform_file).unwrap(), [8u8; 32])
        .unwrap();
    refused(owner.attest(&init, &wrong, |_| {}).await, 403, "measurement");

    // Evidence from a TEE launched for another CAS, session or service gets nothing, even with
    // the right measurement from a registered platform: the launch register names what it may
    // run. (The runtime refuses such a mismatch itself; a hostile host sends it raw.)
    let other_cas = format!("sha256:{}", "ee".repeat(32));
    for launched_for in [
        InitData::new(&other_cas, name, "worker").unwrap(),
        InitData::new(&cas.pin, strict_name(), "worker").unwrap(),
        InitData::new(&cas.pin, name, "other-worker").unwrap(),
    ] {
        let source = launched_for
            .simulated(SimPlatform::load_or_generate(&platform_file).unwrap(), m)
            .unwrap();
        let nonce = owner.nonce().await.unwrap();
        let workload = cloister_cas_client::seal::WorkloadKey::generate();
        let nonce_bytes = hex::decode(&nonce.nonce).unwrap();
        let report = cloister_attestation::report_data_for(&nonce_bytes, &workload.public_bytes());
        let evidence = cloister_attestation::EvidenceSource::collect(&source, &report).unwrap();
        let request = AttestRequest {
            session: name.into(),
            service: "worker".into(),
            nonce: nonce.nonce.clone(),
            public_key: hex::encode(workload.public_bytes()),
            evidence: base64::engine::general_purpose::STANDARD.encode(&evidence),
            collateral: None,
            vcek: None,
            chain: None,
        };
        refused(
            owner.attest_raw(&request).await,
            403,
            "launched for another CAS, session or service",
        );
        // The client refuses to send such evidence in the first place.
        let err = owner
            .attest(&init, &source, |_| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("launched for another"), "{err}");
    }
    // Replayed nonce and unbound report data.
    let nonce = owner.nonce().await.unwrap();
    let workload = cloister_cas_client::seal::WorkloadKey::generate();
    let nonce_bytes = hex::decode(&nonce.nonce).unwrap();
    let report = cloister_attestation::report_data_for(&nonce_bytes, &workload.public_bytes());
    let evidence = cloister_attestation::EvidenceSource::collect(&source, &report).unwrap();
    let mut request = AttestRequest {
        session: name.into(),
        service: "worker".into(),
        nonce: nonce.nonce.clone(),
        public_key: hex::encode(workload.public_bytes()),
        evidence: base64::engine::general_purpose::STANDARD.encode(&evidence),
        collateral: None,
        vcek: None,
        chain: None,
    };
    owner.attest_raw(&request).await.unwrap();
    refused(owner.attest_raw(&request).await, 403, "nonce");
    let fresh = owner.nonce().await.unwrap();
    request.nonce = fresh.nonce;
    refused(owner.attest_raw(&request).await, 403, "report data does not bind");
    // A session that does not tolerate simulation.
    let strict = strict_name();
    owner
        .create_session(&session_yaml(strict, &measurement, "debug-mode", None))
        .await
        .unwrap();
    let strict_init = InitData::new(&cas.pin, strict, "worker").unwrap();
    let strict_source = strict_init
        .simulated(SimPlatform::load_or_generate(&platform_file).unwrap(), m)
        .unwrap();
    refused(
        owner.attest(&strict_init, &strict_source, |_| {}).await,
        403,
        "simulation",
    );

    // Real DCAP evidence through the CAS: its 2025 collateral has expired by now.
    let vectors = common::repo_root().join("crates/attestation/testdata");
    let quote = std::fs::read(vectors.join("sgx/quote.bin")).unwrap();
    let collateral: Value =
        serde_json::from_slice(&std::fs::read(vectors.join("sgx/collateral.json")).unwrap()).unwrap();
    let nonce = owner.nonce().await.unwrap();
    let dcap = AttestRequest {
        session: strict.into(),
        service: "worker".into(),
        nonce: nonce.nonce,
        public_key: hex::encode(workload.public_bytes()),
        evidence: base64::engine::general_purpose::STANDARD.encode(&quote),
        collateral: Some(collateral),
        vcek: None,
        chain: None,
    };
    refused(owner.attest_raw(&dcap).await, 403, "expired");
    // Without collateral in the request, the CAS takes it from its collateral directory — and
    // finds the same expiry, not a missing-collateral error.
    let nonce = owner.nonce().await.unwrap();
    let from_dir = AttestRequest {
        nonce: nonce.nonce,
        collateral: None,
        ..dcap
    };
    refused(owner.attest_raw(&from_dir).await, 403, "expired");

    // The audit log: complete, verifiable offline, tamper-evident.
    let out = Command::new(common::bin())
        .args([
            "cas",
            "audit",
            "export",
            "--cas",
            &cas.url,
            "--pin",
            &cas.pin,
            "--key",
            key("admin").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let log = ok(&out);
    assert!(
        log.contains("debug"),
        "the debug refusal must be audited with its reason"
    );
    for kind in [
        "session-create",
        "session-update",
        "session-update-refused",
        "attest-ok",
        "attest-fail",
        "secret-release",
        "unseal",
        "platform-add",
        "namespace-claim",
        "namespace-declare",
        "session-create-refused",
        "secret-read",
    ] {
        assert!(
            log.contains(&format!("\"kind\":\"{kind}\"")),
            "audit log lacks {kind}"
        );
    }
    assert!(
        log.contains("\"simulation\":true"),
        "simulated releases must be marked"
    );
    assert!(!log.contains(&token), "a secret leaked into the audit log");
    let log_file = dir.path().join("audit.jsonl");
    std::fs::write(&log_file, &log).unwrap();
    ok(&cli(&[
        "cas",
        "audit",
        "verify",
        log_file.to_str().unwrap(),
        "--identity",
        &cas.public_key,
    ]));
    let edited = log.replacen("attest-fail", "attest-ok!", 1);
    std::fs::write(&log_file, &edited).unwrap();
    assert_eq!(
        cli(&[
            "cas",
            "audit",
            "verify",
            log_file.to_str().unwrap(),
            "--identity",
            &cas.public_key
        ])
        .status
        .code(),
        Some(9)
    );
    let mut lines: Vec<&str> = log.lines().collect();
    lines.remove(2);
    std::fs::write(&log_file, lines.join("\n")).unwrap();
    assert_eq!(
        cli(&[
            "cas",
            "audit",
            "verify",
            log_file.to_str().unwrap(),
            "--identity",
            &cas.public_key
        ])
        .status
        .code(),
        Some(9)
    );
    refused(owner.audit::<Value>(0).await, 403, "administrators");

    // Sealed again: every request but status is refused with a clear reason.
    local.seal().await.unwrap();
    refused(owner.get_session(name).await, 503, "sealed");
    refused(owner.nonce().await, 503, "sealed");
    assert!(owner.status().await.unwrap().sealed);

    // Nothing secret on disk in the clear.
    let marker = token.clone();
    for entry in common::files_under(&cas.dir) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
            "{} holds a secret in the clear",
            entry.display()
        );
        assert!(
            !bytes.windows(21).any(|w| w == b"correct-horse-battery"),
            "{} holds a secret in the clear",
            entry.display()
        );
    }
}
