//! Session counters through the real server (TLS, the vault, the group-commit writer): runs
//! counted by attestation and capped by `max_runs`, explicit increments by attested workloads
//! with their grant, reads by the session's readers, durability across restarts, concurrent
//! attestations, and the counter anchor refusing a restored older store.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloister_attestation::SimPlatform;
use cloister_cas::server::{CasConfig, RunningCas, serve};
use cloister_cas_client::client::{CasClient, ClientError};
use cloister_cas_client::protocol::{CounterIncrement, InitData, ReleasedConfig};
use cloister_cas_client::sign::ClientIdentity;
use cloister_cas_store::{ANCHOR_FILE, AuditEntry, DB_FILE, SealingConfig, StoreError, Vault};
use ed25519_dalek::Signer as _;

const ADMIN: u8 = 100;
const OWNER: u8 = 1;
const READER: u8 = 2;
const STRANGER: u8 = 3;
const MEASUREMENT: [u8; 32] = [4; 32];

fn key(n: u8) -> ClientIdentity {
    ClientIdentity::from_seed(&[n; 32])
}

fn platform() -> SimPlatform {
    SimPlatform::from_seed([9; 32])
}

struct Cas {
    running: RunningCas,
    vault: Arc<Vault>,
    url: String,
    pin: String,
}

/// Opens the vault in `dir` (a key-file vault, created if missing), waiting for a stopped
/// server to let go of it; a refusal to unseal is returned, not retried.
async fn open(dir: &Path) -> Result<Vault, StoreError> {
    if !Vault::exists(dir) {
        return Ok(Vault::init(dir, SealingConfig::KeyFile(dir.join("master.key")))?.0);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match Vault::open(dir, None) {
            Err(e @ StoreError::Rollback(_)) => return Err(e),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

impl Cas {
    async fn start(dir: &Path) -> Self {
        let vault = Arc::new(open(dir).await.unwrap());
        let pin = format!(
            "sha256:{}",
            cloister_cas_client::pin::pin_of(&vault.identity_public().unwrap())
        );
        let config = CasConfig {
            data_dir: dir.to_path_buf(),
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_names: Vec::new(),
            admins: vec![key(ADMIN).public()],
            nonce_ttl: Duration::from_secs(60),
            collateral: None,
            refusal_audit: Default::default(),
            governance: Default::default(),
        };
        let mut running = serve(config, vault.clone()).await.unwrap();
        let addr = running.network_addr().await.unwrap();
        let cas = Cas {
            running,
            vault,
            url: format!("https://{addr}"),
            pin,
        };
        cas.client(ADMIN)
            .add_platform(&hex::encode(platform().public_key()), "test")
            .await
            .unwrap();
        cas
    }

    async fn stop(self) {
        self.running.shutdown().await;
    }

    fn client(&self, n: u8) -> CasClient {
        CasClient::new(&self.url, &self.pin, Some(key(n))).unwrap()
    }

    fn workload(&self) -> CasClient {
        CasClient::new(&self.url, &self.pin, None).unwrap()
    }

    async fn attest(&self, session: &str, service: &str) -> Result<ReleasedConfig, ClientError> {
        let init = InitData::new(&self.pin, session, service).unwrap();
        let source = init.simulated(platform(), MEASUREMENT).unwrap();
        self.workload().attest(&init, &source, |_| {}).await
    }

    fn audit(&self) -> Vec<AuditEntry> {
        self.vault.audit_entries(0, usize::MAX).unwrap()
    }
}

/// A session with services `worker` (at most `max_runs` runs, if given) and `helper`, and a
/// counter `predictions` that only `worker` increments, up to `max`.
fn session(name: &str, predecessor: Option<&str>, max_runs: Option<u64>, max: Option<u64>) -> String {
    let predecessor = predecessor
        .map(|p| format!("predecessor: {p}\n"))
        .unwrap_or_default();
    let max_runs = max_runs.map(|n| format!("  max_runs: {n}\n")).unwrap_or_default();
    let max = max.map(|n| format!("  max: {n}\n")).unwrap_or_default();
    let alternative = format!(
        "  attestation:\n  - tee: sim\n    measurement: {}\n",
        hex::encode(MEASUREMENT)
    );
    format!(
        "name: {name}\n{predecessor}access_policy:\n  read: [CREATOR, \"{reader}\"]\nsecurity:\n  attestation:\n    tolerate: [simulation]\n\
         services:\n- name: worker\n  command: [run]\n{max_runs}{alternative}- name: helper\n  command: [help]\n{alternative}\
         counters:\n- name: predictions\n  services: [worker]\n{max}- name: anything\n",
        reader = key(READER).public()
    )
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

fn increment(session: &str, service: &str, counter: &str, grant: &str) -> CounterIncrement {
    CounterIncrement {
        session: session.into(),
        service: service.into(),
        counter: counter.into(),
        grant: grant.into(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn max_runs_refuses_the_run_after_the_last_and_audits_it() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::start(dir.path()).await;
    cas.client(OWNER)
        .create_session(&session("lic/app", None, Some(3), None))
        .await
        .unwrap();
    for _ in 0..3 {
        cas.attest("lic/app", "worker").await.unwrap();
    }
    refused(cas.attest("lic/app", "worker").await, 403, "max_runs 3, 3 so far");
    refused(cas.attest("lic/app", "worker").await, 403, "has used its runs");
    // Another service of the session has no limit.
    for _ in 0..4 {
        cas.attest("lic/app", "helper").await.unwrap();
    }
    let log = cas.audit();
    let refusals: Vec<&AuditEntry> = log
        .iter()
        .filter(|e| e.kind == "attest-fail" && e.subject == "lic/app#worker")
        .collect();
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    assert!(
        refusals[0].detail.to_string().contains("max_runs 3"),
        "{}",
        refusals[0].detail
    );
    let released = |service: &str| {
        log.iter()
            .filter(|e| e.kind == "secret-release" && e.subject == format!("lic/app#{service}"))
            .count()
    };
    assert_eq!((released("worker"), released("helper")), (3, 4));

    // Readers see the runs; others do not.
    let values = cas.client(READER).counters("lic/app").await.unwrap();
    assert_eq!(values.runs.get("worker"), Some(&3));
    assert_eq!(values.runs.get("helper"), Some(&4));
    refused(cas.client(STRANGER).counters("lic/app").await, 403, "not allowed");

    // The runs belong to the name: an update that raises the limit allows exactly the
    // difference, one that keeps it allows nothing more.
    let hash = cas.client(OWNER).get_session("lic/app").await.unwrap().hash;
    let hash = cas
        .client(OWNER)
        .update_session("lic/app", &session("lic/app", Some(&hash), Some(3), Some(9)))
        .await
        .unwrap()
        .hash;
    refused(cas.attest("lic/app", "worker").await, 403, "max_runs 3, 3 so far");
    cas.client(OWNER)
        .update_session("lic/app", &session("lic/app", Some(&hash), Some(4), None))
        .await
        .unwrap();
    cas.attest("lic/app", "worker").await.unwrap();
    refused(cas.attest("lic/app", "worker").await, 403, "max_runs 4, 4 so far");
    cas.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn explicit_increments_need_a_valid_grant_and_stay_within_max() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::start(dir.path()).await;
    let hash = cas
        .client(OWNER)
        .create_session(&session("ml/infer", None, None, Some(3)))
        .await
        .unwrap()
        .hash;
    let worker = cas.attest("ml/infer", "worker").await.unwrap();
    let helper = cas.attest("ml/infer", "helper").await.unwrap();
    let client = cas.workload();
    let grant = worker.volume_grant.clone();

    for expected in 1..=3 {
        let value = client
            .increment_counter(&increment("ml/infer", "worker", "predictions", &grant))
            .await
            .unwrap();
        assert_eq!((value.counter.as_str(), value.value), ("predictions", expected));
    }
    refused(
        client
            .increment_counter(&increment("ml/infer", "worker", "predictions", &grant))
            .await,
        403,
        "is at its max (3)",
    );
    // A counter open to every service, with no max.
    let value = client
        .increment_counter(&increment("ml/infer", "helper", "anything", &helper.volume_grant))
        .await
        .unwrap();
    assert_eq!(value.value, 1);

    // The helper's grant is the helper's, and the helper may not touch `predictions`.
    refused(
        client
            .increment_counter(&increment("ml/infer", "worker", "anything", &helper.volume_grant))
            .await,
        403,
        "not valid for this session",
    );
    refused(
        client
            .increment_counter(&increment(
                "ml/infer",
                "helper",
                "predictions",
                &helper.volume_grant,
            ))
            .await,
        403,
        "may not increment counter \"predictions\"",
    );
    refused(
        client
            .increment_counter(&increment("ml/infer", "worker", "undeclared", &grant))
            .await,
        403,
        "declares no counter \"undeclared\"",
    );
    // Forged: a grant-shaped signature by another key.
    let forger = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let forged = cloister_cas::volumes::issue_grant(
        |m| Ok::<_, ()>(forger.sign(m).to_bytes()),
        "ml/infer",
        "worker",
        &hash,
        i64::MAX,
    )
    .unwrap();
    refused(
        client
            .increment_counter(&increment("ml/infer", "worker", "anything", &forged))
            .await,
        403,
        "not valid for this session",
    );
    // Expired: signed by the CAS, but past its time.
    let identity = cas.vault.identity().unwrap();
    let expired = cloister_cas::volumes::issue_grant(
        |m| Ok::<_, ()>(identity.sign(m).to_bytes()),
        "ml/infer",
        "worker",
        &hash,
        1_000,
    )
    .unwrap();
    refused(
        client
            .increment_counter(&increment("ml/infer", "worker", "anything", &expired))
            .await,
        403,
        "expired",
    );
    refused(
        client
            .increment_counter(&increment("ml/infer", "worker", "anything", "not base64!"))
            .await,
        403,
        "malformed",
    );
    refused(
        client
            .increment_counter(&increment("ml/infer", "worker", "Bad Name", &grant))
            .await,
        400,
        "invalid counter name",
    );
    // A session update voids the grants of the version before.
    let hash = cas
        .client(OWNER)
        .update_session("ml/infer", &session("ml/infer", Some(&hash), None, Some(5)))
        .await
        .unwrap()
        .hash;
    refused(
        client
            .increment_counter(&increment("ml/infer", "worker", "predictions", &grant))
            .await,
        403,
        "not valid for this session",
    );
    let fresh = cas.attest("ml/infer", "worker").await.unwrap();
    assert_eq!(fresh.session_hash, hash);
    let value = client
        .increment_counter(&increment(
            "ml/infer",
            "worker",
            "predictions",
            &fresh.volume_grant,
        ))
        .await
        .unwrap();
    assert_eq!(value.value, 4, "the counter carried over the update");

    let values = cas.client(OWNER).counters("ml/infer").await.unwrap();
    assert_eq!(values.counters.get("predictions"), Some(&4));
    assert_eq!(values.counters.get("anything"), Some(&1));
    assert_eq!(values.runs.get("worker"), Some(&2));

    let log = cas.audit();
    let count = |kind: &str| log.iter().filter(|e| e.kind == kind).count();
    assert_eq!(count("counter-increment"), 5);
    assert_eq!(count("counter-increment-refused"), 1);
    cas.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn counters_are_durable_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::start(dir.path()).await;
    cas.client(OWNER)
        .create_session(&session("dur/app", None, Some(3), None))
        .await
        .unwrap();
    let released = cas.attest("dur/app", "worker").await.unwrap();
    for _ in 0..2 {
        cas.workload()
            .increment_counter(&increment(
                "dur/app",
                "worker",
                "predictions",
                &released.volume_grant,
            ))
            .await
            .unwrap();
    }
    cas.stop().await;

    let cas = Cas::start(dir.path()).await;
    // The grant was a signature: it still holds after the restart.
    let value = cas
        .workload()
        .increment_counter(&increment(
            "dur/app",
            "worker",
            "predictions",
            &released.volume_grant,
        ))
        .await
        .unwrap();
    assert_eq!(value.value, 3);
    cas.attest("dur/app", "worker").await.unwrap();
    cas.attest("dur/app", "worker").await.unwrap();
    refused(cas.attest("dur/app", "worker").await, 403, "max_runs 3, 3 so far");
    cas.stop().await;
}

/// Many attestations at once, round after round: each run is counted once, and a limit lets
/// exactly its number through however the attestations interleave in group commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_attestations_never_lose_or_double_count_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Arc::new(Cas::start(dir.path()).await);
    const ROUNDS: u64 = 6;
    const AT_ONCE: u64 = 12;
    const LIMIT: u64 = 7;
    for round in 0..ROUNDS {
        let name = format!("race/r{round}");
        cas.client(OWNER)
            .create_session(&session(&name, None, Some(LIMIT), None))
            .await
            .unwrap();
        let tasks: Vec<_> = (0..AT_ONCE)
            .flat_map(|_| {
                let (a, b) = (cas.clone(), cas.clone());
                let (na, nb) = (name.clone(), name.clone());
                [
                    tokio::spawn(async move { ("worker", a.attest(&na, "worker").await) }),
                    tokio::spawn(async move { ("helper", b.attest(&nb, "helper").await) }),
                ]
            })
            .collect();
        let (mut worker, mut helper) = (0, 0);
        for task in tasks {
            match task.await.unwrap() {
                ("worker", Ok(_)) => worker += 1,
                ("helper", Ok(_)) => helper += 1,
                ("worker", Err(e)) => match e {
                    ClientError::Refused { message, .. } if message.contains("has used its runs") => {}
                    other => panic!("{other:?}"),
                },
                (service, outcome) => panic!("{service}: {outcome:?}"),
            }
        }
        assert_eq!((worker, helper), (LIMIT, AT_ONCE), "round {round}");
        let values = cas.client(OWNER).counters(&name).await.unwrap();
        assert_eq!(values.runs.get("worker"), Some(&LIMIT), "round {round}");
        assert_eq!(values.runs.get("helper"), Some(&AT_ONCE), "round {round}");
        let log = cas.audit();
        let releases = |service: &str| {
            log.iter()
                .filter(|e| e.kind == "secret-release" && e.subject == format!("{name}#{service}"))
                .count() as u64
        };
        assert_eq!((releases("worker"), releases("helper")), (LIMIT, AT_ONCE));
    }
    let public = cas.vault.identity_public().unwrap();
    cloister_cas_store::verify_audit(&cas.audit(), &public).unwrap();
    Arc::try_unwrap(cas).ok().unwrap().stop().await;
}

fn store(dir: &Path) -> PathBuf {
    dir.join(DB_FILE)
}

/// Waits until the stopped server's last connections let go of the database, so that its file
/// can be copied and replaced safely.
async fn let_go(dir: &Path) {
    drop(open(dir).await.unwrap());
}

/// The defence against a restored store: a copy taken earlier, put back after more runs and
/// increments, is refused at unseal; the CAS does not come up on it.
#[tokio::test(flavor = "multi_thread")]
async fn a_restored_older_store_is_refused_at_unseal() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cas");
    std::fs::create_dir(&dir).unwrap();
    let cas = Cas::start(&dir).await;
    cas.client(OWNER)
        .create_session(&session("roll/app", None, Some(2), None))
        .await
        .unwrap();
    cas.attest("roll/app", "worker").await.unwrap();
    cas.stop().await;
    let_go(&dir).await;
    let copy = tmp.path().join("copy.redb");
    std::fs::copy(store(&dir), &copy).unwrap();

    let cas = Cas::start(&dir).await;
    let released = cas.attest("roll/app", "worker").await.unwrap();
    refused(
        cas.attest("roll/app", "worker").await,
        403,
        "max_runs 2, 2 so far",
    );
    cas.workload()
        .increment_counter(&increment(
            "roll/app",
            "worker",
            "predictions",
            &released.volume_grant,
        ))
        .await
        .unwrap();
    cas.stop().await;
    let_go(&dir).await;

    // Put back the copy, in which the worker has one run left.
    std::fs::copy(&copy, store(&dir)).unwrap();
    match open(&dir).await {
        Err(StoreError::Rollback(message)) => {
            assert!(
                message.contains("an older copy of the store was put back"),
                "{message}"
            )
        }
        Err(e) => panic!("expected a rollback refusal, got {e}"),
        Ok(_) => panic!("the restored store was unsealed"),
    }
}

/// A crash after a counter commit and before its anchor write leaves the anchor behind the
/// store: the CAS comes up, with every value.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_the_commit_and_the_anchor_still_unseals() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cas");
    std::fs::create_dir(&dir).unwrap();
    let cas = Cas::start(&dir).await;
    cas.client(OWNER)
        .create_session(&session("crash/app", None, None, None))
        .await
        .unwrap();
    let released = cas.attest("crash/app", "worker").await.unwrap();
    let anchor = dir.join(ANCHOR_FILE);
    let before = std::fs::read(&anchor).unwrap();
    let value = cas
        .workload()
        .increment_counter(&increment(
            "crash/app",
            "worker",
            "predictions",
            &released.volume_grant,
        ))
        .await
        .unwrap();
    assert_eq!(value.value, 1);
    cas.stop().await;
    // Opening settles the anchor again, so the old value goes back while nothing holds it.
    std::fs::write(&anchor, &before).unwrap();

    let cas = Cas::start(&dir).await;
    let values = cas.client(OWNER).counters("crash/app").await.unwrap();
    assert_eq!(values.counters.get("predictions"), Some(&1));
    assert_eq!(values.runs.get("worker"), Some(&1));
    let value = cas
        .workload()
        .increment_counter(&increment(
            "crash/app",
            "worker",
            "predictions",
            &released.volume_grant,
        ))
        .await
        .unwrap();
    assert_eq!(value.value, 2);
    cas.stop().await;
}
