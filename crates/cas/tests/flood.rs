//! The CAS's attestation endpoints under hostile load, against a real in-process CAS over TLS:
//! nonce floods, refusal floods, forged, expired, reused and pre-restart nonces, malformed
//! names and oversized bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cloister_attestation::{EvidenceSource, SimPlatform, SimSource};
use cloister_cas::server::{CasConfig, RefusalAuditLimits, RunningCas, serve};
use cloister_cas_client::client::{CasClient, ClientError};
use cloister_cas_client::protocol::{AttestRequest, InitData};
use cloister_cas_client::seal::WorkloadKey;
use cloister_cas_client::sign::ClientIdentity;
use cloister_cas_store::{AuditEntry, SealingConfig, Vault};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SESSION: &str = "flood/app";
const SERVICE: &str = "svc";
const MEASUREMENT: [u8; 32] = [5u8; 32];

/// A CAS on loopback with a registered simulation platform and a session that accepts it.
struct Fixture {
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    vault: Option<Arc<Vault>>,
    running: Option<RunningCas>,
    url: String,
    pin: String,
    platform: SimPlatform,
    config: CasConfig,
}

fn config(dir: &Path, admin: &ClientIdentity, nonce_ttl: Duration, limits: RefusalAuditLimits) -> CasConfig {
    CasConfig {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        tls_names: Vec::new(),
        admins: vec![admin.public()],
        nonce_ttl,
        collateral: None,
        refusal_audit: limits,
        governance: Default::default(),
    }
}

impl Fixture {
    async fn start(nonce_ttl: Duration, limits: RefusalAuditLimits) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let (vault, _) = Vault::init(&dir, SealingConfig::KeyFile(dir.join("master.key"))).unwrap();
        let vault = Arc::new(vault);
        let pin = format!(
            "sha256:{}",
            cloister_cas_client::pin::pin_of(&vault.identity_public().unwrap())
        );
        let admin = ClientIdentity::generate();
        let config = config(&dir, &admin, nonce_ttl, limits);
        let mut running = serve(config.clone(), vault.clone()).await.unwrap();
        let url = format!("https://{}", running.network_addr().await.unwrap());
        let platform = SimPlatform::generate();
        let fixture = Self {
            _dir: tmp,
            dir,
            vault: Some(vault),
            running: Some(running),
            url,
            pin,
            platform,
            config,
        };
        CasClient::new(&fixture.url, &fixture.pin, Some(admin))
            .unwrap()
            .add_platform(&hex::encode(fixture.platform.public_key()), "test")
            .await
            .unwrap();
        let session = format!(
            "name: {SESSION}\nsecurity:\n  attestation:\n    tolerate: [simulation]\nservices:\n- name: {SERVICE}\n  command: [run]\n  attestation:\n  - tee: sim\n    measurement: {}\n",
            hex::encode(MEASUREMENT)
        );
        CasClient::new(&fixture.url, &fixture.pin, Some(ClientIdentity::generate()))
            .unwrap()
            .create_session(&session)
            .await
            .unwrap();
        fixture
    }

    fn client(&self) -> CasClient {
        CasClient::new(&self.url, &self.pin, None).unwrap()
    }

    fn init(&self) -> InitData {
        InitData::new(&self.pin, SESSION, SERVICE).unwrap()
    }

    fn source(&self) -> SimSource {
        self.init()
            .simulated(SimPlatform::from_seed(self.platform.seed()), MEASUREMENT)
            .unwrap()
    }

    /// A well-formed request for `nonce` with evidence from `source`.
    fn request(&self, nonce: &str, source: &SimSource) -> AttestRequest {
        let workload = WorkloadKey::generate();
        let nonce_bytes = hex::decode(nonce).unwrap();
        let report = cloister_attestation::report_data_for(&nonce_bytes, &workload.public_bytes());
        AttestRequest {
            session: SESSION.into(),
            service: SERVICE.into(),
            nonce: nonce.into(),
            public_key: hex::encode(workload.public_bytes()),
            evidence: B64.encode(source.collect(&report).unwrap()),
            collateral: None,
            vcek: None,
            chain: None,
        }
    }

    fn vault(&self) -> &Vault {
        self.vault.as_ref().unwrap()
    }

    fn audit(&self) -> Vec<AuditEntry> {
        self.vault().audit_entries(0, usize::MAX).unwrap()
    }

    /// Stops the CAS, waits until it has let go of the vault, and starts it again on the same
    /// data directory: a new process as far as the CAS's state is concerned.
    async fn restart(&mut self) {
        self.running.take().unwrap().shutdown().await;
        self.vault = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        let vault = loop {
            match Vault::open(&self.dir, None) {
                Ok(vault) => break Arc::new(vault),
                Err(e) => assert!(Instant::now() < deadline, "cannot reopen the vault: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        self.vault = Some(vault.clone());
        let mut running = serve(self.config.clone(), vault).await.unwrap();
        self.url = format!("https://{}", running.network_addr().await.unwrap());
        self.running = Some(running);
    }

    /// Stops the CAS as `cloister cas serve` does on a signal: it was waiting for the server
    /// to stop on its own, gives that up and shuts the server down.
    async fn shutdown(&mut self) {
        if let Some(mut running) = self.running.take() {
            tokio::select! {
                () = running.wait() => panic!("the CAS stopped by itself"),
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            running.shutdown().await;
        }
    }
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

fn count(entries: &[AuditEntry], kind: &str) -> usize {
    entries.iter().filter(|e| e.kind == kind).count()
}

/// A flood of nonce requests from 16 connections: attestations keep succeeding during the
/// flood and right after it, and the flood's first nonce is still good at its end. (The old
/// design stored every nonce and refused all attestations once 100,000 were outstanding.
/// Issuing now stores nothing — `nonce::tests` issues 200,000 in process and finds the used
/// set empty — so the flood here is sized for a debug build's TLS stack, about 1,000
/// requests/s on two cores; `a_200k_nonce_flood_does_not_stop_attestation` sends the full
/// 200,000 in a release build.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nonce_flood_does_not_stop_attestation() {
    nonce_flood(10_000).await;
}

/// Twice the old table's capacity: `cargo test --release -p cloister-cas --test flood --
/// --ignored` (a few seconds in release, minutes in debug).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "200,000 TLS requests: run in release"]
async fn a_200k_nonce_flood_does_not_stop_attestation() {
    nonce_flood(200_000).await;
}

async fn nonce_flood(flood: usize) {
    let fixture = Fixture::start(Duration::from_secs(60), RefusalAuditLimits::default()).await;
    const FLOODERS: usize = 16;
    let first = fixture.client().nonce().await.unwrap().nonce;
    let issued = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let flooders: Vec<_> = (0..FLOODERS)
        .map(|_| {
            let client = fixture.client();
            let (issued, failed) = (issued.clone(), failed.clone());
            tokio::spawn(async move {
                while issued.fetch_add(1, Ordering::Relaxed) < flood {
                    if client.nonce().await.is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let (client, init, source) = (fixture.client(), fixture.init(), fixture.source());
    let mut during = 0;
    while flooders.iter().any(|f| !f.is_finished()) {
        client.attest(&init, &source, |_| {}).await.unwrap();
        during += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for flooder in flooders {
        flooder.await.unwrap();
    }
    let elapsed = started.elapsed();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "nonce requests failed under the flood"
    );
    assert!(during > 0, "no attestation ran during the flood");
    // Right after: still fine, repeatedly.
    for _ in 0..5 {
        client.attest(&init, &source, |_| {}).await.unwrap();
    }
    client
        .attest_raw(&fixture.request(&first, &source))
        .await
        .unwrap();
    eprintln!(
        "{flood} nonces in {elapsed:.1?} ({:.0}/s), {during} attestations during the flood",
        flood as f64 / elapsed.as_secs_f64()
    );
}

/// Every way a nonce can be wrong is refused before the evidence is looked at — and junk
/// evidence does not use a nonce up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_reused_and_pre_restart_nonces_are_refused() {
    let ttl = Duration::from_secs(2);
    let mut fixture = Fixture::start(ttl, RefusalAuditLimits::default()).await;
    let client = fixture.client();
    let source = fixture.source();

    // Forged: a flipped tag bit, and 32 bytes of nothing.
    let nonce = client.nonce().await.unwrap().nonce;
    let mut bytes = hex::decode(&nonce).unwrap();
    bytes[31] ^= 1;
    let forged = fixture.request(&hex::encode(&bytes), &source);
    refused(client.attest_raw(&forged).await, 403, "unknown nonce");
    let zeros = fixture.request(&"00".repeat(32), &source);
    refused(client.attest_raw(&zeros).await, 403, "unknown nonce");
    let short = fixture.request(&"00".repeat(16), &source);
    refused(client.attest_raw(&short).await, 403, "malformed nonce");

    // Junk with a valid nonce: refused, and the nonce stays usable.
    let stranger = fixture
        .init()
        .simulated(SimPlatform::generate(), MEASUREMENT)
        .unwrap();
    for _ in 0..3 {
        refused(
            client.attest_raw(&fixture.request(&nonce, &stranger)).await,
            403,
            "not authentic",
        );
    }
    let mut junk = fixture.request(&nonce, &source);
    junk.evidence = B64.encode(b"junk");
    refused(client.attest_raw(&junk).await, 403, "unrecognised evidence");
    // Genuine evidence bound to another key than the request's: not used up either.
    let mut unbound = fixture.request(&nonce, &source);
    unbound.public_key = hex::encode(WorkloadKey::generate().public_bytes());
    refused(client.attest_raw(&unbound).await, 403, "does not bind");

    // Used: once.
    let genuine = fixture.request(&nonce, &source);
    client.attest_raw(&genuine).await.unwrap();
    refused(client.attest_raw(&genuine).await, 403, "already used");
    refused(
        client.attest_raw(&fixture.request(&nonce, &source)).await,
        403,
        "already used",
    );

    // Expired: genuine evidence, too late.
    let old = client.nonce().await.unwrap().nonce;
    tokio::time::sleep(ttl + Duration::from_millis(300)).await;
    refused(
        client.attest_raw(&fixture.request(&old, &source)).await,
        403,
        "expired",
    );

    // Issued before a restart: the restarted CAS has another key.
    let before = client.nonce().await.unwrap().nonce;
    let request = fixture.request(&before, &source);
    drop(client);
    fixture.restart().await;
    let client = fixture.client();
    refused(
        client.attest_raw(&request).await,
        403,
        "not issued by this CAS, or issued before it restarted",
    );
    let after = client.nonce().await.unwrap().nonce;
    client
        .attest_raw(&fixture.request(&after, &source))
        .await
        .unwrap();
    fixture.shutdown().await;
}

/// Thousands of refused attestations with distinct subjects add a bounded number of audit
/// entries; the summary written at shutdown carries the counts per reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_flood_adds_a_bounded_number_of_audit_entries() {
    let mut fixture = Fixture::start(Duration::from_secs(60), RefusalAuditLimits::default()).await;
    let before = fixture.audit().len();
    const PER_CLASS: usize = 1500;
    let client = fixture.client();
    let nonce = client.nonce().await.unwrap().nonce;
    let source = fixture.source();
    let stranger = fixture
        .init()
        .simulated(SimPlatform::generate(), MEASUREMENT)
        .unwrap();
    let unknown = fixture.request(&"00".repeat(32), &source);
    let mut junk = fixture.request(&nonce, &source);
    junk.evidence = B64.encode(b"junk");
    let inauthentic = fixture.request(&nonce, &stranger);
    let requests: Arc<Vec<(AttestRequest, &str)>> = Arc::new(
        (0..PER_CLASS)
            .flat_map(|i| {
                let subject = |mut r: AttestRequest| {
                    r.session = format!("flood/s{i}");
                    r.service = format!("w{i}");
                    r
                };
                [
                    (subject(unknown.clone()), "unknown nonce"),
                    (subject(junk.clone()), "unrecognised evidence"),
                    (subject(inauthentic.clone()), "not authentic"),
                ]
            })
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let wrong = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..8)
        .map(|_| {
            let (client, requests, next, wrong) =
                (fixture.client(), requests.clone(), next.clone(), wrong.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((request, reason)) = requests.get(i) else {
                        return;
                    };
                    match client.attest_raw(request).await {
                        Err(ClientError::Refused { status, message })
                            if status == 403 && message.contains(reason) => {}
                        other => {
                            eprintln!("{reason}: {other:?}");
                            wrong.store(true, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.unwrap();
    }
    assert!(
        !wrong.load(Ordering::Relaxed),
        "every refusal is a 403 with its reason"
    );
    let entries = fixture.audit();
    let added = &entries[before..];
    // 10 per class (3 classes) and 30 in all per window.
    assert_eq!(count(added, "attest-fail"), 30);
    assert_eq!(added.len(), 30);
    for class in ["nonce", "malformed", "evidence"] {
        assert_eq!(
            added.iter().filter(|e| e.detail["class"] == class).count(),
            10,
            "{class}"
        );
    }
    // The valid nonce was never used up by the junk.
    client
        .attest_raw(&fixture.request(&nonce, &source))
        .await
        .unwrap();

    fixture.shutdown().await;
    let entries = fixture.audit();
    let summaries: Vec<_> = entries
        .iter()
        .filter(|e| e.kind == "attest-fail-summary")
        .collect();
    assert_eq!(summaries.len(), 1);
    let detail = &summaries[0].detail;
    let total = PER_CLASS as u64;
    assert_eq!(
        detail["refused"],
        serde_json::json!({"nonce": total, "malformed": total, "evidence": total})
    );
    assert_eq!(
        detail["unrecorded"],
        serde_json::json!({"nonce": total - 10, "malformed": total - 10, "evidence": total - 10})
    );
    assert_eq!(detail["unrecorded_total"], serde_json::json!(3 * (total - 10)));
    assert_eq!(
        entries.len() - before,
        30 + 2 + 1,
        "30 refusals, one release (2), one summary"
    );
    let key = fixture.vault().identity_public().unwrap();
    cloister_cas_store::verify_audit(&entries, &key).unwrap();
}

/// A closed window's summary is written without waiting for shutdown, and the next window
/// records refusals one by one again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_window_ends_with_its_summary() {
    let limits = RefusalAuditLimits {
        window: Duration::from_secs(2),
        per_class: 2,
        total: 3,
    };
    let mut fixture = Fixture::start(Duration::from_secs(60), limits).await;
    let before = fixture.audit().len();
    let client = fixture.client();
    let unknown = fixture.request(&"00".repeat(32), &fixture.source());
    for _ in 0..20 {
        refused(client.attest_raw(&unknown).await, 403, "unknown nonce");
    }
    assert_eq!(fixture.audit().len() - before, 2);
    // The window closes 2 s after its first refusal; its summary follows without a request.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let entries = loop {
        let entries = fixture.audit();
        if count(&entries[before..], "attest-fail-summary") > 0 || std::time::Instant::now() > deadline {
            break entries;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let added = &entries[before..];
    assert_eq!(count(added, "attest-fail-summary"), 1);
    assert_eq!(added[2].detail["unrecorded"], serde_json::json!({"nonce": 18}));
    for _ in 0..5 {
        refused(client.attest_raw(&unknown).await, 403, "unknown nonce");
    }
    fixture.shutdown().await;
    let added = &fixture.audit()[before..];
    assert_eq!(count(added, "attest-fail"), 4);
    assert_eq!(count(added, "attest-fail-summary"), 2);
}

/// Requests naming impossible sessions or services are answered 400 and leave no trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_names_get_400_and_no_audit_entry() {
    let mut fixture = Fixture::start(Duration::from_secs(60), RefusalAuditLimits::default()).await;
    let client = fixture.client();
    let nonce = client.nonce().await.unwrap().nonce;
    let request = fixture.request(&nonce, &fixture.source());
    let before = fixture.audit().len();
    let long = "a".repeat(129);
    for (session, service) in [
        ("Flood/App", SERVICE),
        ("../etc", SERVICE),
        ("a//b", SERVICE),
        ("", SERVICE),
        (long.as_str(), SERVICE),
        ("flood/a#b", SERVICE),
        (SESSION, "a/b"),
        (SESSION, ""),
        (SESSION, &long[..65]),
        (SESSION, "x\n"),
    ] {
        let bad = AttestRequest {
            session: session.into(),
            service: service.into(),
            ..request.clone()
        };
        refused(client.attest_raw(&bad).await, 400, "invalid");
    }
    assert_eq!(
        fixture.audit().len(),
        before,
        "malformed requests must not be audited"
    );
    // The nonce was not touched either.
    client.attest_raw(&request).await.unwrap();
    fixture.shutdown().await;
}

/// Sends `head` and `body` over pinned TLS and returns the status and the response.
async fn raw_exchange(fixture: &Fixture, head: &str, body: &[u8]) -> (u16, String) {
    let pin = cloister_cas_client::pin::parse_pin(&fixture.pin).unwrap();
    let tls = cloister_cas_client::pin::client_config(pin).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let addr = fixture.url.trim_start_matches("https://");
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = connector.connect(name, tcp).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    // The server may answer and close before the whole body is sent.
    let _ = stream.write_all(body).await;
    let _ = stream.flush().await;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    (status, text)
}

/// Bodies over their route's limit get 413 with the limit named, whether their length is
/// declared or not; bodies within it are read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413() {
    let mut fixture = Fixture::start(Duration::from_secs(60), RefusalAuditLimits::default()).await;
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(
            cloister_cas_client::pin::client_config(
                cloister_cas_client::pin::parse_pin(&fixture.pin).unwrap(),
            )
            .unwrap(),
        )
        .build()
        .unwrap();
    let post = |path: &str, body: Vec<u8>| http.post(format!("{}{path}", fixture.url)).body(body).send();
    let before = fixture.audit().len();
    // Small bodies just over their route's limit.
    for (path, size, limit) in [
        ("/v1/volumes/commit", (16 << 10) + 1, "at most 16 KiB"),
        ("/v1/platforms", (16 << 10) + 1, "at most 16 KiB"),
        ("/v1/attest/nonce", 1, "takes no request body"),
    ] {
        let response = post(path, vec![b' '; size]).await.unwrap();
        assert_eq!(response.status(), 413, "{path} with {size} bytes");
        let text = response.text().await.unwrap();
        assert!(text.contains(limit), "{path}: {text}");
    }
    // Signed routes without a body take none, before any signature is checked.
    let response = http
        .get(format!("{}/v1/audit", fixture.url))
        .body(vec![0u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);

    // A declared length over the limit is refused before a byte of the body is read.
    for (path, size, limit) in [
        ("/v1/attest", (1 << 20) + 1, "at most 1024 KiB"),
        ("/v1/attest", 1u64 << 40, "at most 1024 KiB"),
        ("/v1/sessions", (8 << 20) + 1, "at most 8192 KiB"),
        ("/v1/volumes/commit", 1 << 30, "at most 16 KiB"),
    ] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: cas\r\ncontent-length: {size}\r\nconnection: close\r\n\r\n"
        );
        let (status, text) = raw_exchange(&fixture, &head, b"").await;
        assert_eq!(status, 413, "{path}: {text}");
        assert!(text.contains(limit), "{path}: {text}");
    }

    // Undeclared length (chunked): refused once the limit is passed.
    let chunk = vec![b' '; 64 << 10];
    let mut chunked = Vec::new();
    for _ in 0..16 {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(&chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"a\r\n0123456789\r\n0\r\n\r\n");
    let head =
        "POST /v1/attest HTTP/1.1\r\nhost: cas\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    let (status, text) = raw_exchange(&fixture, head, &chunked).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("at most 1024 KiB"), "{text}");

    // Just under the limit: read and judged (an unknown nonce), not refused for its size.
    let mut large = fixture.request(&"00".repeat(32), &fixture.source());
    large.chain = Some("x".repeat((1 << 20) - 4096));
    let body = serde_json::to_vec(&large).unwrap();
    assert!(body.len() < 1 << 20);
    let response = post("/v1/attest", body).await.unwrap();
    assert_eq!(response.status(), 403);
    assert!(response.text().await.unwrap().contains("unknown nonce"));
    assert_eq!(
        fixture.audit().len(),
        before + 1,
        "only the judged request is audited"
    );
    fixture.shutdown().await;
}
