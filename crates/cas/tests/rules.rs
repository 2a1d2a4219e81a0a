//! The CAS's access rules through the real server (TLS, signed requests, the vault): who reads
//! what, exports bound to owner keys, namespaces, sessions that stay updated under concurrent
//! attestations, signed requests that cannot be replayed across a restart, and the bounded
//! budget of namespaces nobody declared.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cloister_attestation::SimPlatform;
use cloister_cas::server::{CasConfig, GovernanceConfig, RunningCas, serve};
use cloister_cas_client::client::{CasClient, ClientError};
use cloister_cas_client::protocol::{ErrorBody, InitData};
use cloister_cas_client::sign::ClientIdentity;
use cloister_cas_store::{AuditEntry, SealingConfig, Vault};

const ADMIN: u8 = 100;

fn key(n: u8) -> ClientIdentity {
    ClientIdentity::from_seed(&[n; 32])
}

fn public(n: u8) -> String {
    key(n).public()
}

struct Cas {
    running: RunningCas,
    url: String,
    pin: String,
}

impl Cas {
    /// Starts a CAS on the vault in `dir` (a key-file vault, created if missing).
    async fn start(dir: &Path) -> Self {
        Self::start_with(dir, Default::default()).await
    }

    /// [`Cas::start`] with its governance settings.
    async fn start_with(dir: &Path, governance: GovernanceConfig) -> Self {
        let vault = if Vault::exists(dir) {
            // The previous server's connections may still be closing, holding the database.
            let mut tries = 0;
            loop {
                match Vault::open(dir, None) {
                    Ok(vault) => break vault,
                    Err(e) if tries < 50 => {
                        tries += 1;
                        wait_a_little(&e).await;
                    }
                    Err(e) => panic!("cannot reopen the vault: {e}"),
                }
            }
        } else {
            Vault::init(dir, SealingConfig::KeyFile(dir.join("master.key")))
                .unwrap()
                .0
        };
        let pin = format!(
            "sha256:{}",
            cloister_cas_client::pin::pin_of(&vault.identity_public().unwrap())
        );
        let config = CasConfig {
            data_dir: dir.to_path_buf(),
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_names: Vec::new(),
            admins: vec![public(ADMIN)],
            nonce_ttl: Duration::from_secs(60),
            collateral: None,
            refusal_audit: Default::default(),
            governance,
        };
        let mut running = serve(config, Arc::new(vault)).await.unwrap();
        let addr = running.network_addr().await.unwrap();
        Cas {
            running,
            url: format!("https://{addr}"),
            pin,
        }
    }

    fn client(&self, n: u8) -> CasClient {
        CasClient::new(&self.url, &self.pin, Some(key(n))).unwrap()
    }

    async fn audit(&self) -> Vec<AuditEntry> {
        self.client(ADMIN).audit::<AuditEntry>(1).await.unwrap()
    }
}

async fn wait_a_little(_: &cloister_cas_store::StoreError) {
    tokio::time::sleep(Duration::from_millis(100)).await;
}

fn refused<T: std::fmt::Debug>(result: Result<T, ClientError>, status: u16, reason: &str) {
    match result {
        Err(ClientError::Refused { status: s, message }) => {
            assert_eq!(s.as_u16(), status, "{message}");
            assert!(message.contains(reason), "expected {reason:?} in {message:?}");
        }
        other => panic!("expected a {status} refusal containing {reason:?}, got {other:?}"),
    }
}

fn text(bytes: zeroize::Zeroizing<Vec<u8>>) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// A session with one simulated service that gets `secrets` (names) in its environment.
fn session(
    name: &str,
    measurement: &[u8; 32],
    predecessor: Option<&str>,
    secrets: &str,
    env: &[&str],
) -> String {
    let predecessor = predecessor
        .map(|p| format!("predecessor: {p}\n"))
        .unwrap_or_default();
    let environment: String = env
        .iter()
        .map(|s| format!("    {}: \"$$CLOISTER::{s}$$\"\n", s.to_uppercase()))
        .collect();
    let secrets = if secrets.is_empty() {
        " []\n".to_owned()
    } else {
        format!("\n{secrets}")
    };
    let environment = if environment.is_empty() {
        "    MODE: test\n".to_owned()
    } else {
        environment
    };
    format!(
        "name: {name}\n{predecessor}security:\n  attestation:\n    tolerate: [simulation]\nservices:\n- name: worker\n  \
         command: [run]\n  environment:\n{environment}  attestation:\n  - tee: sim\n    measurement: {}\nsecrets:{secrets}",
        hex::encode(measurement)
    )
}

fn platform() -> SimPlatform {
    SimPlatform::from_seed([9; 32])
}

async fn register_platform(cas: &Cas) {
    cas.client(ADMIN)
        .add_platform(&hex::encode(platform().public_key()), "test")
        .await
        .unwrap();
}

async fn attest(
    cas: &Cas,
    client: &CasClient,
    session: &str,
    measurement: [u8; 32],
) -> Result<cloister_cas_client::protocol::ReleasedConfig, ClientError> {
    let init = InitData::new(&cas.pin, session, "worker").unwrap();
    let source = init.simulated(platform(), measurement).unwrap();
    client.attest(&init, &source, |_| {}).await
}

#[tokio::test(flavor = "multi_thread")]
async fn readers_get_public_parts_and_redacted_sessions_and_only_the_owner_reads_values() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::start(dir.path()).await;
    let (owner, auditor, stranger) = (cas.client(1), cas.client(2), cas.client(3));
    let secrets = format!(
        "- name: token\n  kind: ascii\n  value: correct-horse-battery\n\
         - name: signing\n  kind: private-key\n  export_public: true\n\
         - name: hidden\n  kind: binary\naccess_policy:\n  read: [CREATOR, \"{}\"]\n",
        public(2)
    );
    let yaml = session("team/app", &[1; 32], None, &secrets, &["token"]);
    let written = owner.create_session(&yaml).await.unwrap();

    // The owner: the session as submitted and raw values.
    let own = owner.get_session("team/app").await.unwrap();
    assert!(!own.redacted);
    assert!(own.yaml.contains("correct-horse-battery"));
    assert_eq!(
        text(owner.read_secret("team/app", "token", None).await.unwrap()),
        "correct-horse-battery"
    );
    assert!(
        text(owner.read_secret("team/app", "signing", None).await.unwrap())
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );

    // A reader: the session without explicit values, the stored hash, public parts only.
    let seen = auditor.get_session("team/app").await.unwrap();
    assert!(seen.redacted);
    assert_eq!(seen.hash, written.hash);
    assert_eq!(seen.creator, public(1));
    assert!(!seen.yaml.contains("correct-horse-battery"), "{}", seen.yaml);
    let reparsed = cloister_cas_session::parse_session(&seen.yaml).unwrap();
    assert!(reparsed.secrets.iter().all(|s| s.value.is_none()));
    assert_eq!(reparsed.secrets.len(), 3);
    refused(
        auditor.read_secret("team/app", "token", None).await,
        403,
        "only the session's owner reads secret values",
    );
    refused(
        auditor.read_secret("team/app", "hidden", Some("hex")).await,
        403,
        "only the session's owner",
    );
    assert!(
        text(auditor.read_secret("team/app", "signing", None).await.unwrap())
            .starts_with("-----BEGIN PUBLIC KEY-----")
    );
    refused(
        auditor
            .read_secret("team/app", "signing", Some("privatekey"))
            .await,
        403,
        "only the public part",
    );

    // Neither owner nor reader: nothing, not even a public part.
    refused(stranger.get_session("team/app").await, 403, "not allowed");
    refused(
        stranger.read_secret("team/app", "signing", None).await,
        403,
        "not allowed",
    );

    // Every read of secret material is in the log, with who read which part; refusals too.
    let log = cas.audit().await;
    let reads = |actor: &str, part: &str| {
        log.iter()
            .filter(|e| e.kind == "secret-read" && e.actor == actor && e.detail["part"] == part)
            .count()
    };
    assert_eq!(reads(&public(1), "secret"), 2);
    assert_eq!(reads(&public(2), "public part"), 1);
    assert_eq!(reads(&public(2), "secret"), 0);
    assert!(
        log.iter()
            .any(|e| e.kind == "session-read" && e.actor == public(1) && e.subject == "team/app")
    );
    let refusals = log.iter().filter(|e| e.kind == "secret-read-refused").count();
    assert_eq!(refusals, 4);
    let json = serde_json::to_string(&log).unwrap();
    assert!(!json.contains("correct-horse-battery"));
    cas.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exports_go_to_the_named_owner_and_namespaces_to_their_owner() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::start(dir.path()).await;
    register_platform(&cas).await;
    let (exporter, consumer, squatter, admin) =
        (cas.client(1), cas.client(2), cas.client(3), cas.client(ADMIN));

    // The squatter takes `lab/consumer` before anything is exported to it.
    let squat = session("lab/consumer", &[3; 32], None, "", &[]);
    let squat_hash = squatter.create_session(&squat).await.unwrap().hash;

    // A bare name in an export is refused with what to write.
    let bare = "name: provider/keys\nsecrets:\n- {name: model_key, kind: binary, export: [team/consumer]}\n";
    refused(
        exporter.create_session(bare).await,
        400,
        "write {session: team/consumer, owner:",
    );
    let provider = |predecessor: Option<&str>, exports: &str| {
        let predecessor = predecessor
            .map(|p| format!("predecessor: {p}\n"))
            .unwrap_or_default();
        format!(
            "name: provider/keys\n{predecessor}secrets:\n- name: model_key\n  kind: binary\n  export: [{exports}]\n\
             - name: shared\n  kind: ascii\n  export: [\"*\"]\n"
        )
    };
    let exports = format!(
        "{{session: team/consumer, owner: \"{c}\"}}, {{session: lab/consumer, owner: \"{c}\"}}",
        c = public(2)
    );
    let provider_hash = exporter
        .create_session(&provider(None, &exports))
        .await
        .unwrap()
        .hash;
    let model_key = text(
        exporter
            .read_secret("provider/keys", "model_key", Some("hex"))
            .await
            .unwrap(),
    );

    // The squatter's session of the exported name gets nothing...
    let import = |secret: &str| {
        format!("- name: imported\n  kind: binary\n  import: {{session: provider/keys, secret: {secret}}}\n")
    };
    refused(
        squatter
            .update_session(
                "lab/consumer",
                &session(
                    "lab/consumer",
                    &[3; 32],
                    Some(&squat_hash),
                    &import("model_key"),
                    &[],
                ),
            )
            .await,
        403,
        "not in its export list",
    );
    // ...nor does a session of the name created after the export by another key.
    refused(
        squatter
            .create_session(&session(
                "team/consumer",
                &[3; 32],
                None,
                &import("model_key"),
                &[],
            ))
            .await,
        403,
        "not in its export list",
    );
    // An export to "*" reaches every session.
    let star = "- name: imported\n  kind: ascii\n  import: {session: provider/keys, secret: shared}\n";
    squatter
        .update_session(
            "lab/consumer",
            &session("lab/consumer", &[3; 32], Some(&squat_hash), star, &[]),
        )
        .await
        .unwrap();

    // The named owner imports, and its attested service receives the value.
    let consumer_yaml = session(
        "team/consumer",
        &[2; 32],
        None,
        &import("model_key"),
        &["imported"],
    );
    let consumer_hash = consumer
        .create_session(
            &consumer_yaml.replace("\"$$CLOISTER::imported$$\"", "\"$$CLOISTER::imported:hex$$\""),
        )
        .await
        .unwrap()
        .hash;
    let released = attest(&cas, &consumer, "team/consumer", [2; 32]).await.unwrap();
    assert_eq!(released.environment["IMPORTED"], model_key);

    // Namespaces: `team` is the consumer's now, `lab` the squatter's.
    refused(
        squatter
            .create_session(&session("team/evil", &[3; 32], None, "", &[]))
            .await,
        403,
        "namespace \"team\" belongs to",
    );
    refused(
        consumer
            .create_session(&session("lab/other", &[2; 32], None, "", &[]))
            .await,
        403,
        "namespace \"lab\" belongs to",
    );
    // The administrator gives `lab` to the consumer; nobody else declares namespaces.
    refused(
        squatter.declare_namespace("lab", &public(3)).await,
        403,
        "administrators",
    );
    refused(
        admin.declare_namespace("lab/x", &public(2)).await,
        400,
        "not a namespace",
    );
    refused(admin.declare_namespace("lab", "ed25519:00").await, 400, "owner");
    admin.declare_namespace("lab", &public(2)).await.unwrap();
    consumer
        .create_session(&session("lab/other", &[2; 32], None, "", &[]))
        .await
        .unwrap();
    refused(
        squatter
            .create_session(&session("lab/more", &[3; 32], None, "", &[]))
            .await,
        403,
        "namespace \"lab\" belongs to",
    );
    let all = admin.namespaces().await.unwrap();
    let owners: Vec<(&str, &str, &str)> = all
        .iter()
        .map(|n| (n.name.as_str(), n.owner.as_str(), n.how.as_str()))
        .collect();
    assert!(
        owners.contains(&("lab", public(2).as_str(), "declared")),
        "{owners:?}"
    );
    assert!(
        owners.contains(&("team", public(2).as_str(), "claimed")),
        "{owners:?}"
    );
    assert!(
        owners.contains(&("provider", public(1).as_str(), "claimed")),
        "{owners:?}"
    );
    let own: Vec<String> = squatter
        .namespaces()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert!(own.is_empty(), "{own:?}");

    // Revocation: the exporter withdraws the export; the importer's next attestation and its
    // next write are refused.
    exporter
        .update_session(
            "provider/keys",
            &provider(
                Some(&provider_hash),
                &format!("{{session: lab/consumer, owner: \"{}\"}}", public(2)),
            ),
        )
        .await
        .unwrap();
    refused(
        attest(&cas, &consumer, "team/consumer", [2; 32]).await,
        403,
        "cannot be released",
    );
    // …and that refusal is in the audit log like any other attestation refusal.
    assert!(
        cas.audit().await.iter().any(|e| e.kind == "attest-fail"
            && e.detail["reason"]
                .as_str()
                .is_some_and(|r| r.contains("cannot be released"))),
        "the revoked import's refusal is not audited"
    );
    refused(
        consumer
            .update_session(
                "team/consumer",
                &session(
                    "team/consumer",
                    &[2; 32],
                    Some(&consumer_hash),
                    &import("model_key"),
                    &[],
                ),
            )
            .await,
        403,
        "not in its export list",
    );

    // Each claim is in the log, in the transaction of the session that made it.
    let log = cas.audit().await;
    for (namespace, session) in [
        ("lab", "lab/consumer"),
        ("team", "team/consumer"),
        ("provider", "provider/keys"),
    ] {
        let claim = log
            .iter()
            .position(|e| e.kind == "namespace-claim" && e.subject == namespace)
            .unwrap_or_else(|| panic!("no claim of {namespace}"));
        let created = &log[claim + 1];
        assert_eq!(
            (created.kind.as_str(), created.subject.as_str()),
            ("session-create", session)
        );
    }
    assert!(
        log.iter()
            .any(|e| e.kind == "namespace-declare" && e.subject == "lab")
    );
    // Refusals too: three for namespaces, one for the squatter's import at creation; the
    // import refusals at updates as updates.
    let count = |kind: &str| log.iter().filter(|e| e.kind == kind).count();
    assert_eq!(count("session-create-refused"), 4);
    assert_eq!(count("session-update-refused"), 2);
    cas.running.shutdown().await;
}

/// An export that pins the importer's hashes reaches only those versions: the importer's
/// creation, its updates and its attestations are refused (with a reason and an audit entry)
/// until the exporter pins the version.
#[tokio::test(flavor = "multi_thread")]
async fn exports_pinned_by_hash_reach_only_the_pinned_versions() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::start(dir.path()).await;
    register_platform(&cas).await;
    let (exporter, consumer, squatter) = (cas.client(1), cas.client(2), cas.client(3));
    let hash_of = |yaml: &str| cloister_cas_session::parse_session(yaml).unwrap().hash();
    let provider = |predecessor: Option<&str>, hashes: &[&str]| {
        let predecessor = predecessor
            .map(|p| format!("predecessor: {p}\n"))
            .unwrap_or_default();
        format!(
            "name: provider/pinned\n{predecessor}secrets:\n- name: model_key\n  kind: binary\n  \
             export: [{{session: pinned/consumer, owner: \"{}\", hashes: [{}]}}]\n",
            public(2),
            hashes.join(", ")
        )
    };
    let import =
        "- name: imported\n  kind: binary\n  import: {session: provider/pinned, secret: model_key}\n";
    let v1 = session("pinned/consumer", &[2; 32], None, import, &["imported"]);
    let h1 = hash_of(&v1);
    let unrelated = "ab".repeat(32);

    // Pinned to another version: the consumer cannot even create v1.
    let mut provider_hash = exporter
        .create_session(&provider(None, &[&unrelated]))
        .await
        .unwrap()
        .hash;
    refused(consumer.create_session(&v1).await, 403, "pins other versions");
    let last_refusal = |log: Vec<AuditEntry>, kind: &str| {
        log.into_iter()
            .rev()
            .find(|e| e.kind == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    let entry = last_refusal(cas.audit().await, "session-create-refused");
    assert_eq!(entry.subject, "pinned/consumer");
    assert!(
        entry.detail["reason"]
            .as_str()
            .unwrap()
            .contains("pins other versions")
    );

    // The exporter pins v1: created, and its attested service gets the key.
    provider_hash = exporter
        .update_session("provider/pinned", &provider(Some(&provider_hash), &[&h1]))
        .await
        .unwrap()
        .hash;
    let created = consumer.create_session(&v1).await.unwrap();
    assert_eq!(created.hash, h1);
    attest(&cas, &consumer, "pinned/consumer", [2; 32]).await.unwrap();

    // v2 runs other code: refused until the exporter pins it too.
    let v2 = session("pinned/consumer", &[4; 32], Some(&h1), import, &["imported"]);
    let h2 = hash_of(&v2);
    refused(
        consumer.update_session("pinned/consumer", &v2).await,
        403,
        "pins other versions",
    );
    let entry = last_refusal(cas.audit().await, "session-update-refused");
    assert!(entry.detail["reason"].as_str().unwrap().contains(&h2));
    provider_hash = exporter
        .update_session("provider/pinned", &provider(Some(&provider_hash), &[&h1, &h2]))
        .await
        .unwrap()
        .hash;
    consumer.update_session("pinned/consumer", &v2).await.unwrap();
    attest(&cas, &consumer, "pinned/consumer", [4; 32]).await.unwrap();

    // The exporter drops v2's pin: the running version's next attestation is refused.
    exporter
        .update_session("provider/pinned", &provider(Some(&provider_hash), &[&h1]))
        .await
        .unwrap();
    refused(
        attest(&cas, &consumer, "pinned/consumer", [4; 32]).await,
        403,
        "pins other versions",
    );
    let entry = last_refusal(cas.audit().await, "attest-fail");
    assert!(
        entry.detail["reason"]
            .as_str()
            .unwrap()
            .contains("pins other versions")
    );

    // The same text under another name and owner gets nothing.
    let squat = v1.replace("pinned/consumer", "other/consumer");
    refused(
        squatter.create_session(&squat).await,
        403,
        "not in its export list",
    );
    cas.running.shutdown().await;
}

/// Updates race with a burst of attestations, which load the session into the cache. After
/// each update returns, the measurement it replaced must never attest again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_update_is_never_undone_by_concurrent_loads() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Arc::new(Cas::start(dir.path()).await);
    register_platform(&cas).await;
    let owner = cas.client(1);
    // Many secrets make a load (parse and decode) slow, which widens the window a stale load
    // would need.
    let secrets: String = (0..150)
        .map(|i| format!("- {{name: s{i}, kind: ascii}}\n"))
        .collect();
    let measurement = |i: u8| [i; 32];
    let mut hash = owner
        .create_session(&session("race/s", &measurement(0), None, &secrets, &[]))
        .await
        .unwrap()
        .hash;
    let current = Arc::new(std::sync::atomic::AtomicU8::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut burst = Vec::new();
    for _ in 0..6 {
        let (cas, current, stop) = (cas.clone(), current.clone(), stop.clone());
        burst.push(tokio::spawn(async move {
            let client = cas.client(5);
            while !stop.load(Ordering::Relaxed) {
                let m = current.load(Ordering::Relaxed);
                let _ = attest(&cas, &client, "race/s", measurement(m)).await;
            }
        }));
    }
    let checker = cas.client(6);
    for i in 1..=15u8 {
        let written = owner
            .update_session(
                "race/s",
                &session("race/s", &measurement(i), Some(&hash), &secrets, &[]),
            )
            .await
            .unwrap();
        hash = written.hash;
        current.store(i, Ordering::Relaxed);
        for _ in 0..3 {
            refused(
                attest(&cas, &checker, "race/s", measurement(i - 1)).await,
                403,
                "measurement",
            );
            tokio::task::yield_now().await;
        }
        assert_eq!(
            attest(&cas, &checker, "race/s", measurement(i))
                .await
                .unwrap()
                .session_hash,
            hash
        );
    }
    stop.store(true, Ordering::Relaxed);
    for task in burst {
        task.await.unwrap();
    }
}

/// Sends a GET with fixed authentication headers, as an eavesdropper on a terminating proxy
/// would replay them.
async fn send_raw(cas: &Cas, path: &str, headers: &[(&'static str, String); 4]) -> (u16, ErrorBody) {
    let pin = cloister_cas_client::pin::parse_pin(&cas.pin).unwrap();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(cloister_cas_client::pin::client_config(pin).unwrap())
        .build()
        .unwrap();
    let mut request = http.get(format!("{}{path}", cas.url));
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.bytes().await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_captured_before_a_restart_is_refused_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::start(dir.path()).await;
    let path = "/v1/sessions?prefix=";
    let client = key(1);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    // Signed with this machine's clock: accepted, or refused with the CAS's clock to sign
    // with (it has just started).
    let mut captured = client.sign("GET", path, now, b"");
    let (status, body) = send_raw(&cas, path, &captured).await;
    if status == 401 {
        let not_before = body.not_before.expect("a time refusal names the earliest time");
        assert!(body.server_time.is_some(), "{body:?}");
        assert!(body.error.contains("the CAS's clock says"), "{}", body.error);
        captured = client.sign("GET", path, not_before.max(now), b"");
        assert_eq!(send_raw(&cas, path, &captured).await.0, 200);
    } else {
        assert_eq!(status, 200, "{body:?}");
    }
    let (status, body) = send_raw(&cas, path, &captured).await;
    assert_eq!(status, 401);
    assert!(body.error.contains("replayed"), "{}", body.error);
    cas.running.shutdown().await;

    // A new process: it remembers nothing of the requests it accepted, and refuses them all.
    let cas = Cas::start(dir.path()).await;
    let (status, body) = send_raw(&cas, path, &captured).await;
    assert_eq!(
        status, 401,
        "a request from before the restart was accepted again"
    );
    assert!(body.error.contains("before this CAS started"), "{}", body.error);
    assert!(body.not_before.is_some() && body.server_time.is_some());
    // An honest client signs again with the CAS's time and goes on.
    assert!(cas.client(1).list_sessions("").await.unwrap().is_empty());
    cas.running.shutdown().await;
}

/// A stranger's session in a namespace it claims with `key`, about `size` bytes long.
fn stranger_session(name: &str, size: usize) -> String {
    format!(
        "name: {name}\nsecrets:\n- name: note\n  kind: ascii\n  value: \"{}\"\n",
        "x".repeat(size)
    )
}

/// Anyone can claim an undeclared namespace with a fresh key, so what such namespaces hold is
/// bounded in all (durably, across a restart); namespaces an administrator declared are not
/// charged, and a budget of 0 leaves only declared namespaces.
#[tokio::test(flavor = "multi_thread")]
async fn undeclared_namespaces_share_a_bounded_budget_and_declared_ones_are_not_charged() {
    let dir = tempfile::tempdir().unwrap();
    let budget = 16 * 1024;
    let governance = || GovernanceConfig {
        open_namespace_budget: budget,
        ..Default::default()
    };
    let cas = Cas::start_with(dir.path(), governance()).await;

    // Fresh keys, each claiming its own namespace, until the budget is spent.
    let mut created = 0;
    let mut refusal = None;
    for n in 0..64u8 {
        let stranger = cas.client(n);
        match stranger
            .create_session(&stranger_session(&format!("open{n}/s"), 1000))
            .await
        {
            Ok(_) => created += 1,
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    // Each session costs its text twice (session and history), its secrets and the overhead.
    assert!(
        (3..16).contains(&created),
        "{created} sessions fit in {budget} bytes"
    );
    refused(
        Err::<(), _>(refusal.expect("the budget was never spent")),
        403,
        "budget for undeclared namespaces",
    );
    // Updates in a claimed namespace are charged too.
    let first = cas.client(0);
    let current = first.get_session("open0/s").await.unwrap().hash;
    let update = format!("predecessor: {current}\n{}", stranger_session("open0/s", 1000));
    refused(
        first.update_session("open0/s", &update).await,
        403,
        "ask a CAS administrator",
    );

    // A declared namespace is not charged: its owner goes on creating sessions.
    let tenant = cas.client(50);
    cas.client(ADMIN)
        .declare_namespace("tenant", &public(50))
        .await
        .unwrap();
    for i in 0..20 {
        tenant
            .create_session(&stranger_session(&format!("tenant/s{i}"), 1000))
            .await
            .unwrap();
    }

    // A flood of refused strangers adds a bounded number of audit entries.
    for n in 0..40u8 {
        let _ = cas
            .client(n.wrapping_add(150))
            .create_session(&stranger_session(&format!("flood{n}/s"), 10))
            .await;
    }
    let refused_entries = cas
        .audit()
        .await
        .iter()
        .filter(|e| e.kind == "session-create-refused")
        .count();
    assert!(
        refused_entries <= 10,
        "{refused_entries} refusals audited one by one"
    );

    // The usage survives a restart: the budget stays spent. Open connections hold the vault.
    drop((first, tenant));
    cas.running.shutdown().await;
    let cas = Cas::start_with(dir.path(), governance()).await;
    refused(
        cas.client(200)
            .create_session(&stranger_session("late/s", 10))
            .await,
        403,
        "budget for undeclared namespaces",
    );
    cas.running.shutdown().await;

    // A budget of 0: only declared namespaces hold sessions.
    let closed_dir = tempfile::tempdir().unwrap();
    let closed = Cas::start_with(
        closed_dir.path(),
        GovernanceConfig {
            open_namespace_budget: 0,
            ..Default::default()
        },
    )
    .await;
    refused(
        closed
            .client(1)
            .create_session(&stranger_session("mine/s", 10))
            .await,
        403,
        "ask a CAS administrator to declare it",
    );
    closed
        .client(ADMIN)
        .declare_namespace("mine", &public(1))
        .await
        .unwrap();
    closed
        .client(1)
        .create_session(&stranger_session("mine/s", 10))
        .await
        .unwrap();
    closed.running.shutdown().await;
}
