//! Governance through the real server (TLS, signed requests, the vault): boards in
//! `access_policy.update`, proposals and votes, updates with detached signatures, the
//! history, auditors. Every refusal is checked for its error and its audit entry.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cloister_cas::server::{CasConfig, GovernanceConfig, RunningCas, serve};
use cloister_cas_client::client::{CasClient, ClientError};
use cloister_cas_client::governance::{Change, ProposalInfo, Vote};
use cloister_cas_client::protocol::ErrorBody;
use cloister_cas_client::sign::{ClientIdentity, KeyAlgorithm};
use cloister_cas_store::{AuditEntry, SealingConfig, Vault};

const OWNER: u8 = 1;
const A: u8 = 2;
const B: u8 = 3;
const C: u8 = 4;
const HOSPITAL: u8 = 5;
const AUDITOR: u8 = 7;
const OUTSIDER: u8 = 9;
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
    async fn start(dir: &Path, governance: GovernanceConfig) -> Self {
        let vault = Vault::init(dir, SealingConfig::KeyFile(dir.join("master.key")))
            .unwrap()
            .0;
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
            // The default limits over a window long enough that a flood on a loaded machine
            // still falls in one.
            refusal_audit: cloister_cas::server::RefusalAuditLimits {
                window: Duration::from_secs(600),
                ..Default::default()
            },
            governance: GovernanceConfig {
                auditors: vec![public(AUDITOR)],
                sweep_interval: Duration::from_millis(100),
                ..governance
            },
        };
        let mut running = serve(config, Arc::new(vault)).await.unwrap();
        let addr = running.network_addr().await.unwrap();
        Cas {
            running,
            url: format!("https://{addr}"),
            pin,
        }
    }

    /// Stops the server (writing the summaries of open refusal windows) and reads the whole
    /// audit log from its vault.
    async fn stop_and_read_log(self, dir: &Path) -> Vec<AuditEntry> {
        self.running.shutdown().await;
        for _ in 0..50 {
            if let Ok(vault) = Vault::open(dir, None) {
                return vault.audit_entries(1, usize::MAX).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("cannot reopen the vault");
    }

    fn client(&self, n: u8) -> CasClient {
        self.client_with(key(n))
    }

    fn client_with(&self, identity: ClientIdentity) -> CasClient {
        CasClient::new(&self.url, &self.pin, Some(identity)).unwrap()
    }

    async fn audit(&self) -> Vec<AuditEntry> {
        self.client(ADMIN).audit::<AuditEntry>(1).await.unwrap()
    }

    /// The last audit entry of `kind`, which must exist.
    async fn last(&self, kind: &str) -> AuditEntry {
        self.audit()
            .await
            .into_iter()
            .rev()
            .find(|e| e.kind == kind)
            .unwrap_or_else(|| panic!("no {kind} entry in the audit log"))
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

/// A session whose board is `update` (YAML lines under `update:`, indented four spaces) and
/// whose service runs `marker`.
fn session(name: &str, predecessor: Option<&str>, marker: &str, update: &str) -> String {
    let predecessor = predecessor
        .map(|p| format!("predecessor: {p}\n"))
        .unwrap_or_default();
    format!(
        "name: {name}\n{predecessor}access_policy:\n  read: [CREATOR]\n  update:\n{update}security:\n  \
         attestation:\n    tolerate: [simulation]\n    mode: none\nservices:\n- name: worker\n  command: [run, \
         {marker}]\nsecrets:\n- name: db\n  kind: ascii\n- name: token\n  kind: ascii\n  value: s3cret-token\n"
    )
}

/// Two of A, B, C, and the owner; HOSPITAL may veto.
fn board() -> String {
    format!(
        "    all:\n    - CREATOR\n    - at_least: 2\n      of: [{}, {}, {}]\n    veto: [{}]\n",
        public(A),
        public(B),
        public(C),
        public(HOSPITAL)
    )
}

/// Two of A, B, C; no veto.
fn two_of_three() -> String {
    format!(
        "    at_least: 2\n    of: [{}, {}, {}]\n",
        public(A),
        public(B),
        public(C)
    )
}

async fn create(cas: &Cas, yaml: &str) -> String {
    cas.client(OWNER).create_session(yaml).await.unwrap().hash
}

async fn current(cas: &Cas, name: &str) -> String {
    cas.client(OWNER).get_session(name).await.unwrap().hash
}

async fn approve(cas: &Cas, n: u8, id: &str) -> Result<ProposalInfo, ClientError> {
    cas.client(n).vote_on(id, Vote::Approve).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_applies_when_its_board_agrees_and_is_in_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::start(
        dir.path(),
        GovernanceConfig {
            veto_window: Duration::from_secs(3600),
            ..Default::default()
        },
    )
    .await;
    let name = "clinic/model";
    let v1 = create(&cas, &session(name, None, "one", &board())).await;

    // The owner alone no longer changes it.
    let v2_yaml = session(name, Some(&v1), "two", &board());
    refused(
        cas.client(OWNER).update_session(name, &v2_yaml).await,
        403,
        "do not meet the update rule",
    );
    assert_eq!(cas.last("session-update-refused").await.actor, public(OWNER));

    // Proposed by a member; outsiders may not propose.
    refused(cas.client(OUTSIDER).propose(&v2_yaml).await, 403, "only members");
    assert_eq!(cas.last("proposal-create-refused").await.actor, public(OUTSIDER));
    let proposal = cas.client(A).propose(&v2_yaml).await.unwrap();
    assert_eq!(proposal.state, "pending");
    assert_eq!(proposal.change.predecessor.as_deref(), Some(v1.as_str()));
    let id = proposal.id.clone();
    refused(cas.client(B).propose(&v2_yaml).await, 409, "already proposed");

    // Not met yet: owner + A is one of the two; the veto holder has not spoken.
    assert_eq!(approve(&cas, OWNER, &id).await.unwrap().state, "pending");
    assert_eq!(approve(&cas, A, &id).await.unwrap().state, "pending");
    assert_eq!(
        approve(&cas, B, &id).await.unwrap().state,
        "pending",
        "the veto window is open"
    );
    assert_eq!(current(&cas, name).await, v1);
    // The veto holder's approval closes the window: applied in that transaction.
    let applied = approve(&cas, HOSPITAL, &id).await.unwrap();
    assert_eq!(applied.state, "applied", "{applied:?}");
    let v2 = current(&cas, name).await;
    assert_eq!(v2, proposal.change.hash);
    let entry = cas.last("proposal-applied").await;
    assert_eq!(entry.detail["proposal"], id.as_str());
    let update = cas.last("session-update").await;
    assert_eq!(update.detail["proposal"], id.as_str());
    assert_eq!(update.detail["approvals"].as_array().unwrap().len(), 4);

    // Votes on a closed proposal are refused.
    refused(approve(&cas, C, &id).await, 409, "is applied");
    assert_eq!(
        cas.last("proposal-vote-refused").await.detail["proposal"],
        id.as_str()
    );

    // The history: both versions, chained, with the approvals of the second.
    let history = cas.client(A).history(name).await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].hash, v1);
    assert_eq!(history[1].hash, v2);
    assert_eq!(history[1].predecessor.as_deref(), Some(v1.as_str()));
    assert_eq!(history[1].proposal.as_deref(), Some(id.as_str()));
    let approvers: Vec<&str> = history[1].approvals.iter().map(|a| a.key.as_str()).collect();
    for n in [OWNER, A, B, HOSPITAL] {
        assert!(approvers.contains(&public(n).as_str()), "{approvers:?}");
    }
    // Approvals carry signatures anyone can check against the change.
    let change = Change {
        session: name.into(),
        predecessor: Some(v1.clone()),
        hash: v2.clone(),
    };
    let bytes = change.signed_bytes(Vote::Approve).unwrap();
    for a in &history[1].approvals {
        cloister_cas::auth::verify_detached(&a.key, &bytes, &a.signature).unwrap();
    }
    refused(cas.client(OUTSIDER).history(name).await, 403, "not allowed");
    assert_eq!(cas.last("history-read-refused").await.actor, public(OUTSIDER));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_votes_are_refused_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::start(dir.path(), GovernanceConfig::default()).await;
    let name = "clinic/votes";
    let v1 = create(&cas, &session(name, None, "one", &two_of_three())).await;
    let v2_yaml = session(name, Some(&v1), "two", &two_of_three());
    let proposal = cas.client(A).propose(&v2_yaml).await.unwrap();
    let id = proposal.id.clone();

    // A forged signature: B's key, A's signature bytes.
    let mut forged = key(A).sign_vote(&proposal.change, Vote::Approve).unwrap();
    forged.key = public(B);
    refused(
        cas.client(A).vote(&id, Vote::Approve, forged).await,
        403,
        "does not verify over this change",
    );
    let entry = cas.last("proposal-vote-refused").await;
    assert_eq!(entry.detail["voter"], public(B).as_str());

    // An approval signed over another predecessor (a replay from an older version).
    let stale = Change {
        predecessor: Some("00".repeat(32)),
        ..proposal.change.clone()
    };
    let replayed = key(B).sign_vote(&stale, Vote::Approve).unwrap();
    refused(
        cas.client(B).vote(&id, Vote::Approve, replayed).await,
        403,
        "made for another version",
    );
    // A rejection's signature does not pass for an approval.
    let rejection = key(B).sign_vote(&proposal.change, Vote::Reject).unwrap();
    refused(
        cas.client(B).vote(&id, Vote::Approve, rejection).await,
        403,
        "does not verify",
    );

    // A non-member's approval, correctly signed.
    let outsider = key(OUTSIDER).sign_vote(&proposal.change, Vote::Approve).unwrap();
    refused(
        cas.client(OUTSIDER).vote(&id, Vote::Approve, outsider).await,
        403,
        "not a member",
    );
    assert!(
        cas.last("proposal-vote-refused").await.detail["reason"]
            .as_str()
            .unwrap()
            .contains("not a member")
    );

    // Two approvals by one key count once: the second is refused and nothing applies.
    assert_eq!(approve(&cas, A, &id).await.unwrap().state, "pending");
    refused(approve(&cas, A, &id).await, 409, "counts once");
    assert!(
        cas.last("proposal-vote-refused").await.detail["reason"]
            .as_str()
            .unwrap()
            .contains("counts once")
    );
    let shown = cas.client(A).proposal(&id).await.unwrap();
    assert_eq!(shown.approvals.len(), 1);
    assert_eq!(current(&cas, name).await, v1, "one key is not two approvals");

    // Someone else submits C's detached approval: it counts as C's, and completes the rule.
    let c_signature = key(C).sign_vote(&proposal.change, Vote::Approve).unwrap();
    let applied = cas
        .client(OUTSIDER)
        .vote(&id, Vote::Approve, c_signature)
        .await
        .unwrap();
    assert_eq!(applied.state, "applied");
    assert_eq!(
        applied.approvals[1].submitted_by.as_deref(),
        Some(public(OUTSIDER).as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vetoes_rejections_expiry_and_voiding_close_proposals() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::start(
        dir.path(),
        GovernanceConfig {
            proposal_ttl: Duration::from_secs(3),
            veto_window: Duration::from_millis(600),
            ..Default::default()
        },
    )
    .await;
    let name = "clinic/board";
    let v1 = create(&cas, &session(name, None, "one", &board())).await;

    // A veto holder's rejection blocks, whatever the approvals.
    let vetoed = cas
        .client(A)
        .propose(&session(name, Some(&v1), "vetoed", &board()))
        .await
        .unwrap();
    approve(&cas, A, &vetoed.id).await.unwrap();
    let after = cas
        .client(HOSPITAL)
        .vote_on(&vetoed.id, Vote::Reject)
        .await
        .unwrap();
    assert_eq!(after.state, "vetoed");
    assert!(
        cas.last("proposal-vetoed").await.detail["reason"]
            .as_str()
            .unwrap()
            .contains(&public(HOSPITAL))
    );
    refused(approve(&cas, B, &vetoed.id).await, 409, "is vetoed");
    refused(approve(&cas, OWNER, &vetoed.id).await, 409, "is vetoed");
    assert_eq!(current(&cas, name).await, v1);

    // Two of three rejecting: the rule can no longer be met.
    let rejected = cas
        .client(B)
        .propose(&session(name, Some(&v1), "rejected", &board()))
        .await
        .unwrap();
    cas.client(A).vote_on(&rejected.id, Vote::Reject).await.unwrap();
    let after = cas.client(B).vote_on(&rejected.id, Vote::Reject).await.unwrap();
    assert_eq!(after.state, "rejected");
    cas.last("proposal-rejected").await;

    // Expired: nobody completed it in time; the sweep closes it and votes are refused.
    let expiring = cas
        .client(A)
        .propose(&session(name, Some(&v1), "late", &board()))
        .await
        .unwrap();
    // Met without the silent veto holder: applies once the veto window has passed (the sweep).
    let windowed = cas
        .client(C)
        .propose(&session(name, Some(&v1), "windowed", &board()))
        .await
        .unwrap();
    for n in [OWNER, A, C] {
        approve(&cas, n, &windowed.id).await.unwrap();
    }
    let mut state = String::new();
    for _ in 0..50 {
        state = cas.client(A).proposal(&windowed.id).await.unwrap().state;
        if state == "applied" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state, "applied");
    let v2 = current(&cas, name).await;
    assert_eq!(v2, windowed.change.hash);

    // The other open proposal named v1: void now.
    let shown = cas.client(A).proposal(&expiring.id).await.unwrap();
    assert_eq!(shown.state, "void", "{shown:?}");
    assert_eq!(
        cas.last("proposal-void").await.detail["proposal"],
        expiring.id.as_str()
    );

    let late = cas
        .client(A)
        .propose(&session(name, Some(&v2), "late", &board()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(3300)).await;
    refused(approve(&cas, A, &late.id).await, 409, "is expired");
    assert_eq!(
        cas.last("proposal-expired").await.detail["proposal"],
        late.id.as_str()
    );
    let entry = cas.last("proposal-vote-refused").await;
    assert_eq!(entry.actor, public(A));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_updates_meet_the_rules_in_force_not_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::start(dir.path(), GovernanceConfig::default()).await;
    let name = "clinic/direct";
    let v1 = create(&cas, &session(name, None, "one", &two_of_three())).await;

    // Changing the rules to "A alone" still needs two of the old three.
    let alone = format!("    - {}\n", public(A));
    let takeover = session(name, Some(&v1), "one", &alone);
    refused(
        cas.client(A).update_session(name, &takeover).await,
        403,
        "do not meet",
    );
    assert!(
        cas.last("session-update-refused").await.detail["reason"]
            .as_str()
            .unwrap()
            .contains("do not meet")
    );
    let change = Change {
        session: name.into(),
        predecessor: Some(v1.clone()),
        hash: cloister_cas_session::parse_session(&takeover).unwrap().hash(),
    };
    let a_sig = key(A).sign_vote(&change, Vote::Approve).unwrap();
    // Threshold not met: A's signature twice is one approval.
    refused(
        cas.client(OUTSIDER)
            .update_signed(&takeover, vec![a_sig.clone(), a_sig.clone()])
            .await,
        403,
        "1 distinct member key",
    );
    // A forged signature.
    let mut forged = key(OUTSIDER).sign_vote(&change, Vote::Approve).unwrap();
    forged.key = public(B);
    refused(
        cas.client(A).update_signed(&takeover, vec![forged]).await,
        403,
        "does not verify",
    );
    // A non-member's signature.
    let outsider = key(OUTSIDER).sign_vote(&change, Vote::Approve).unwrap();
    refused(
        cas.client(A).update_signed(&takeover, vec![outsider]).await,
        403,
        "not a member",
    );
    assert_eq!(current(&cas, name).await, v1);

    // P-256 members sign too; A (the request's signer) and a P-256 key meet a 2-of-3 rule.
    let p256 = ClientIdentity::generate_with(KeyAlgorithm::P256);
    let mixed = format!(
        "    at_least: 2\n    of: [{}, {}, {}]\n",
        public(A),
        public(B),
        p256.public()
    );
    let v2_yaml = session(name, Some(&v1), "two", &mixed);
    let v2_change = Change {
        session: name.into(),
        predecessor: Some(v1.clone()),
        hash: cloister_cas_session::parse_session(&v2_yaml).unwrap().hash(),
    };
    let b_sig = key(B).sign_vote(&v2_change, Vote::Approve).unwrap();
    let v2 = cas
        .client(A)
        .update_signed(&v2_yaml, vec![b_sig.clone()])
        .await
        .unwrap()
        .hash;
    // Replaying B's approval of v2 for the next change fails: it names another predecessor.
    let v3_yaml = session(name, Some(&v2), "three", &mixed);
    refused(
        cas.client(A).update_signed(&v3_yaml, vec![b_sig]).await,
        403,
        "made for another version",
    );
    let v3_change = Change {
        session: name.into(),
        predecessor: Some(v2.clone()),
        hash: cloister_cas_session::parse_session(&v3_yaml).unwrap().hash(),
    };
    let p_sig = p256.sign_vote(&v3_change, Vote::Approve).unwrap();
    let v3 = cas
        .client(A)
        .update_signed(&v3_yaml, vec![p_sig])
        .await
        .unwrap()
        .hash;
    let history = cas.client(A).history(name).await.unwrap();
    assert_eq!(
        history.iter().map(|v| v.hash.as_str()).collect::<Vec<_>>(),
        [v1.as_str(), v2.as_str(), v3.as_str()]
    );
    assert_eq!(history[2].approvals.len(), 2);

    // An owner-only session still updates with a plain PUT by its owner, recorded in history.
    let solo = "clinic/solo";
    let s1 = create(&cas, &session(solo, None, "one", "    - CREATOR\n")).await;
    let s2 = cas
        .client(OWNER)
        .update_session(solo, &session(solo, Some(&s1), "two", "    - CREATOR\n"))
        .await
        .unwrap()
        .hash;
    let history = cas.client(OWNER).history(solo).await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[1].hash, s2);
    assert_eq!(history[1].approvals[0].key, public(OWNER));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auditors_read_sessions_and_the_log_but_never_raw_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::start(dir.path(), GovernanceConfig::default()).await;
    let name = "clinic/audited";
    create(&cas, &session(name, None, "one", &two_of_three())).await;

    let auditor = cas.client(AUDITOR);
    let record = auditor.get_session(name).await.unwrap();
    assert!(record.redacted);
    assert!(!record.yaml.contains("s3cret-token"));
    assert!(auditor.list_sessions("clinic/").await.unwrap().contains_key(name));
    assert!(!auditor.history(name).await.unwrap().is_empty());
    for secret in ["db", "token"] {
        refused(
            auditor.read_secret(name, secret, None).await,
            403,
            "only the session's owner reads secret values",
        );
        let entry = cas.last("secret-read-refused").await;
        assert_eq!(entry.actor, public(AUDITOR));
        assert_eq!(entry.detail["secret"], secret);
    }
    // The whole log, refusals included.
    let log = auditor.audit::<AuditEntry>(1).await.unwrap();
    assert!(log.iter().any(|e| e.kind == "secret-read-refused"));
    // Others read neither.
    refused(cas.client(OUTSIDER).get_session(name).await, 403, "not allowed");
    refused(
        cas.client(OUTSIDER).audit::<AuditEntry>(1).await,
        403,
        "administrators and auditors",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_board_approves_new_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::start(dir.path(), GovernanceConfig::default()).await;
    let rule = serde_json::json!({"at_least": 2, "of": ["CREATOR", public(A), public(B)]});
    refused(
        cas.client(OWNER)
            .declare_governed_namespace("ward", &public(OWNER), Some(rule.clone()))
            .await,
        403,
        "only CAS administrators",
    );
    let bad = serde_json::json!({"at_least": 4, "of": [public(A)]});
    refused(
        cas.client(ADMIN)
            .declare_governed_namespace("ward", &public(OWNER), Some(bad))
            .await,
        400,
        "at_least",
    );
    let declared = cas
        .client(ADMIN)
        .declare_governed_namespace("ward", &public(OWNER), Some(rule))
        .await
        .unwrap();
    assert!(declared.rule.is_some());

    // Even the namespace's owner needs a second approval.
    let yaml = session("ward/new", None, "one", "    - CREATOR\n");
    refused(cas.client(OWNER).create_session(&yaml).await, 403, "do not meet");
    let entry = cas.last("session-create-refused").await;
    assert_eq!(entry.actor, public(OWNER));
    let change = Change {
        session: "ward/new".into(),
        predecessor: None,
        hash: cloister_cas_session::parse_session(&yaml).unwrap().hash(),
    };
    // A forged approval and a non-member's are refused.
    let mut forged = key(C).sign_vote(&change, Vote::Approve).unwrap();
    forged.key = public(A);
    refused(
        cas.client(OWNER).update_signed(&yaml, vec![forged]).await,
        403,
        "does not verify",
    );
    let c = key(C).sign_vote(&change, Vote::Approve).unwrap();
    refused(
        cas.client(OWNER).update_signed(&yaml, vec![c]).await,
        403,
        "not a member",
    );
    // The owner with A's approval: created, owned by the signer, approvals in the history.
    let a = key(A).sign_vote(&change, Vote::Approve).unwrap();
    let written = cas.client(OWNER).update_signed(&yaml, vec![a]).await.unwrap();
    assert_eq!(written.hash, change.hash);
    let history = cas.client(OWNER).history("ward/new").await.unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].approvals.len(), 2);
    assert_eq!(
        cas.last("session-create").await.detail["approvals"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // B, a board member but not the owner, creates another with A: allowed, B owns it.
    let other = session("ward/other", None, "one", "    - CREATOR\n");
    let change = Change {
        session: "ward/other".into(),
        predecessor: None,
        hash: cloister_cas_session::parse_session(&other).unwrap().hash(),
    };
    let a = key(A).sign_vote(&change, Vote::Approve).unwrap();
    cas.client(B).update_signed(&other, vec![a]).await.unwrap();
    assert_eq!(
        cas.client(B).get_session("ward/other").await.unwrap().creator,
        public(B)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_attestation_of_the_named_service_binds_an_approver() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::start(dir.path(), GovernanceConfig::default()).await;
    let platform = cloister_attestation::SimPlatform::from_seed([9; 32]);
    cas.client(ADMIN)
        .add_platform(&hex::encode(platform.public_key()), "test")
        .await
        .unwrap();
    let measurement = [0xc4; 32];
    let checks = format!(
        "name: board/checks\nsecurity:\n  attestation:\n    tolerate: [simulation]\nservices:\n- name: checker\n  \
         command: [check]\n  attestation:\n  - tee: sim\n    measurement: {}\n- name: other\n  command: [other]\n  \
         attestation:\n  - tee: sim\n    measurement: {}\n",
        hex::encode(measurement),
        hex::encode(measurement)
    );
    create(&cas, &checks).await;
    let init = cloister_cas_client::protocol::InitData::new(&cas.pin, "board/checks", "other").unwrap();
    let source = init.simulated(platform, measurement).unwrap();
    let released = CasClient::new(&cas.url, &cas.pin, None)
        .unwrap()
        .attest(&init, &source, |_| {})
        .await
        .unwrap();
    // The grant of `other` does not make a `checker`, and garbage is no grant.
    let approver = cas.client(OUTSIDER);
    for grant in [released.volume_grant.as_str(), "00"] {
        refused(
            approver.bind_approver("board/checks", "checker", grant).await,
            403,
            "not an attestation of this service's current version",
        );
        assert_eq!(cas.last("approver-bind-refused").await.actor, public(OUTSIDER));
    }
    let bound = approver
        .bind_approver("board/checks", "other", &released.volume_grant)
        .await
        .unwrap();
    assert_eq!(bound.key, public(OUTSIDER));
    cas.last("approver-bind").await;

    // A board naming attested:board/checks#other: the bound key votes for it; once the checker
    // session changes, the binding no longer counts.
    let name = "clinic/attested";
    let rule = "    at_least: 1\n    of: [\"attested:board/checks#other\"]\n";
    let v1 = create(&cas, &session(name, None, "one", rule)).await;
    let proposal = cas
        .client(OUTSIDER)
        .propose(&session(name, Some(&v1), "two", rule))
        .await
        .unwrap();
    let v2 = approve(&cas, OUTSIDER, &proposal.id).await.unwrap();
    assert_eq!(v2.state, "applied");
    let checks_hash = current(&cas, "board/checks").await;
    let mut changed = checks.replace("command: [check]", "command: [check, -v]");
    changed.insert_str(0, &format!("predecessor: {checks_hash}\n"));
    cas.client(OWNER)
        .update_session("board/checks", &changed)
        .await
        .unwrap();
    let v2_hash = current(&cas, name).await;
    refused(
        cas.client(OUTSIDER)
            .propose(&session(name, Some(&v2_hash), "three", rule))
            .await,
        403,
        "only members",
    );
}

/// Anyone can make keys: 2,000 proposals refused to 2,000 keys without standing add a bounded
/// number of entries to the audit log (the first few one by one, then one summary counting
/// them all), while a member's refusals stay on record one by one and a member's proposal
/// still goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refused_proposals_by_strangers_adds_a_bounded_number_of_entries() {
    const FLOOD: usize = 2_000;
    const OPEN_FLOOD: usize = 30;
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::start(dir.path(), GovernanceConfig::default()).await;
    let v1 = create(&cas, &session("flood/s", None, "one", &two_of_three())).await;
    let v2 = session("flood/s", Some(&v1), "two", &two_of_three());

    let before = cas.audit().await.len();
    let pin = cloister_cas_client::pin::parse_pin(&cas.pin).unwrap();
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(cloister_cas_client::pin::client_config(pin).unwrap())
        .build()
        .unwrap();
    let url = format!("{}/v1/proposals", cas.url);
    let statuses = futures_statuses(&http, &url, &v2, FLOOD).await;
    drop(http);
    assert!(statuses.iter().all(|s| *s == 403), "{:?}", &statuses[..10]);

    // A session anyone may read gives strangers no standing: their refusals are limited too.
    let readable = |predecessor: Option<&str>, marker: &str| {
        session("flood/open", predecessor, marker, &two_of_three()).replace("read: [CREATOR]", "read: [ANY]")
    };
    let open_v1 = create(&cas, &readable(None, "one")).await;
    let open_v2 = readable(Some(&open_v1), "two");
    for i in 0..OPEN_FLOOD {
        let mut seed = [0xe2u8; 32];
        seed[0] = i as u8;
        refused(
            cas.client_with(ClientIdentity::from_seed(&seed))
                .propose(&open_v2)
                .await,
            403,
            "only members",
        );
    }

    // A member's refusals are its own: each one is on record, past the strangers' limit.
    let stale = session("flood/s", Some(&"0".repeat(64)), "stale", &two_of_three());
    for _ in 0..12 {
        refused(cas.client(A).propose(&stale).await, 409, "predecessor");
    }
    let proposal = cas.client(A).propose(&v2).await.unwrap();
    assert_eq!(proposal.state, "pending");

    let log = cas.stop_and_read_log(dir.path()).await;
    // Opening the vault to read the log recorded its unseal.
    let added: Vec<AuditEntry> = log[before..]
        .iter()
        .filter(|e| e.kind != "unseal")
        .cloned()
        .collect();
    let strangers = added
        .iter()
        .filter(|e| e.kind == "proposal-create-refused" && e.actor != public(A))
        .count();
    let members = added
        .iter()
        .filter(|e| e.kind == "proposal-create-refused" && e.actor == public(A))
        .count();
    assert_eq!(strangers, 10, "the default limit per kind and window");
    assert_eq!(members, 12);
    let summaries: Vec<&AuditEntry> = added
        .iter()
        .filter(|e| e.kind == "request-refused-summary")
        .collect();
    assert!(!summaries.is_empty() && summaries.len() <= 2, "{summaries:?}");
    let counted: u64 = summaries
        .iter()
        .map(|e| {
            e.detail["refused"]["proposal-create-refused"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(counted, (FLOOD + OPEN_FLOOD) as u64);
    // Besides: the open session's creation and the member's proposal.
    assert!(
        added.len() <= strangers + members + summaries.len() + 2,
        "{} entries for a flood of {FLOOD}: {:?}",
        added.len(),
        added.iter().map(|e| &e.kind).collect::<Vec<_>>()
    );
    assert!(added.iter().any(|e| e.kind == "proposal-create"));
}

/// A stranger's proposal is refused on its session's name, before its text is parsed, and one
/// whose name cannot be read is a refusal limited like any other stranger's; a member's
/// malformed proposal is on record one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_proposals_are_refused_on_standing_before_they_are_parsed() {
    const GARBAGE: usize = 30;
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::start(dir.path(), GovernanceConfig::default()).await;
    create(&cas, &session("junk/s", None, "one", &two_of_three())).await;
    let before = cas.audit().await.len();

    // Named, but nothing else of a session: a stranger hears that it is not a member (a full
    // parse would have answered 400 about the model).
    let named_garbage = "name: junk/s
services: 12
no_such_field: [1, 2]
";
    refused(
        cas.client(OUTSIDER).propose(named_garbage).await,
        403,
        "only members",
    );
    // Nothing to name a session by: refused as malformed, through the strangers' limiter.
    for i in 0..GARBAGE {
        let mut seed = [0xd3u8; 32];
        seed[0] = i as u8;
        let stranger = cas.client_with(ClientIdentity::from_seed(&seed));
        refused(stranger.propose("{not: [yaml").await, 400, "");
    }
    // A member's malformed proposal is its own: audited in full.
    for _ in 0..12 {
        refused(cas.client(A).propose(named_garbage).await, 400, "services");
    }

    let log = cas.stop_and_read_log(dir.path()).await;
    let added: Vec<&AuditEntry> = log[before..].iter().filter(|e| e.kind != "unseal").collect();
    let refusals = |member: bool| {
        added
            .iter()
            .filter(|e| e.kind == "proposal-create-refused" && (e.actor == public(A)) == member)
            .count()
    };
    assert_eq!(refusals(false), 10, "the default limit per kind and window");
    assert_eq!(refusals(true), 12);
    let counted: u64 = added
        .iter()
        .filter(|e| e.kind == "request-refused-summary")
        .map(|e| {
            e.detail["refused"]["proposal-create-refused"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(counted, (GARBAGE + 1) as u64);
}

/// Sends `count` proposals of `yaml`, each signed by a fresh key, 16 at a time; their statuses.
async fn futures_statuses(http: &reqwest::Client, url: &str, yaml: &str, count: usize) -> Vec<u16> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let offset = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (http, url, yaml, next, offset) = (
            http.clone(),
            url.to_owned(),
            yaml.to_owned(),
            next.clone(),
            offset.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= count {
                    return statuses;
                }
                let mut seed = [0xf1u8; 32];
                seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
                let stranger = ClientIdentity::from_seed(&seed);
                let now = time::OffsetDateTime::now_utc().unix_timestamp()
                    + offset.load(std::sync::atomic::Ordering::Relaxed);
                let mut request = http.post(&url).body(yaml.clone());
                for (name, value) in stranger.sign("POST", "/v1/proposals", now, yaml.as_bytes()) {
                    request = request.header(name, value);
                }
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                if status == 401 {
                    // Too early for the CAS's clock: learn its time and send this one again.
                    let body: ErrorBody = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
                    let not_before = body.not_before.unwrap().max(body.server_time.unwrap());
                    offset.store(not_before - now, std::sync::atomic::Ordering::Relaxed);
                    next.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                }
                statuses.push(status);
            }
        }));
    }
    let mut statuses = Vec::new();
    for worker in workers {
        statuses.extend(worker.await.unwrap());
    }
    statuses
}

/// Two of A, B, C; HOSPITAL may veto within `window` (the CAS's window when `None`).
fn vetoable(window: Option<&str>) -> String {
    let window = window
        .map(|w| format!("    veto_window: {w}\n"))
        .unwrap_or_default();
    format!("{}    veto: [{}]\n{window}", two_of_three(), public(HOSPITAL))
}

/// A board's own `veto_window` replaces the CAS's (24 h here): a short one lets a change its
/// veto holder left silent apply once it passed, `0s` lets signatures given at once apply
/// without the veto holder's, while a board without one still waits for the CAS's window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_board_sets_its_own_veto_window() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::start(dir.path(), GovernanceConfig::default()).await;

    // One second to object: applied by the sweep once it passed, the veto holder silent.
    let fast = "clinic/fast";
    let v1 = create(&cas, &session(fast, None, "one", &vetoable(Some("1s")))).await;
    let proposal = cas
        .client(A)
        .propose(&session(fast, Some(&v1), "two", &vetoable(Some("1s"))))
        .await
        .unwrap();
    approve(&cas, A, &proposal.id).await.unwrap();
    let after = approve(&cas, B, &proposal.id).await.unwrap();
    assert_eq!(after.state, "pending", "the veto holder still has its second");
    let mut state = String::new();
    for _ in 0..50 {
        state = cas.client(A).proposal(&proposal.id).await.unwrap().state;
        if state == "applied" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state, "applied");

    // Without its own window, the same board waits for the CAS's 24 h.
    let slow = "clinic/slow";
    let v1 = create(&cas, &session(slow, None, "one", &vetoable(None))).await;
    let proposal = cas
        .client(A)
        .propose(&session(slow, Some(&v1), "two", &vetoable(None)))
        .await
        .unwrap();
    approve(&cas, A, &proposal.id).await.unwrap();
    approve(&cas, B, &proposal.id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        cas.client(A).proposal(&proposal.id).await.unwrap().state,
        "pending"
    );
    // Nor do signatures given at once apply while the veto holder is silent: refused, audited.
    let next = session(slow, Some(&v1), "three", &vetoable(None));
    let change = |yaml: &str, predecessor: &str, name: &str| Change {
        session: name.into(),
        predecessor: Some(predecessor.into()),
        hash: cloister_cas_session::parse_session(yaml).unwrap().hash(),
    };
    let signatures = |change: &Change| {
        [A, B]
            .map(|n| key(n).sign_vote(change, Vote::Approve).unwrap())
            .to_vec()
    };
    refused(
        cas.client(A)
            .update_signed(&next, signatures(&change(&next, &v1, slow)))
            .await,
        403,
        "veto holders who have not approved",
    );
    assert!(
        cas.last("session-update-refused").await.detail["reason"]
            .as_str()
            .unwrap()
            .contains("veto holders")
    );

    // `0s`: no time to object, so signatures given at once suffice.
    let instant = "clinic/instant";
    let v1 = create(&cas, &session(instant, None, "one", &vetoable(Some("0s")))).await;
    let next = session(instant, Some(&v1), "two", &vetoable(Some("0s")));
    let written = cas
        .client(A)
        .update_signed(&next, signatures(&change(&next, &v1, instant)))
        .await
        .unwrap();
    assert_eq!(current(&cas, instant).await, written.hash);
}

/// Creating a session in a namespace with a board can go through a proposal, approved by the
/// namespace board's members one by one: it applies with the approval that meets the rule,
/// owned by its proposer. Strangers cannot propose or vote; a creation proposal is void once
/// the name is taken; a namespace without a board takes no creation proposals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_board_approves_creation_proposals() {
    let dir = tempfile::tempdir().unwrap();
    let cas = Cas::start(dir.path(), GovernanceConfig::default()).await;
    let rule = serde_json::json!({"at_least": 2, "of": ["CREATOR", public(A), public(B)]});
    cas.client(ADMIN)
        .declare_governed_namespace("ward", &public(OWNER), Some(rule))
        .await
        .unwrap();
    let yaml = session("ward/proposed", None, "one", "    - CREATOR\n");

    // A stranger proposes nothing there (refused, audited).
    refused(
        cas.client(OUTSIDER).propose(&yaml).await,
        403,
        "only members of namespace \"ward\"'s board",
    );
    assert_eq!(cas.last("proposal-create-refused").await.actor, public(OUTSIDER));
    // A creation names no predecessor.
    refused(
        cas.client(A)
            .propose(&session(
                "ward/proposed",
                Some(&"0".repeat(64)),
                "one",
                "    - CREATOR\n",
            ))
            .await,
        400,
        "must be absent when creating",
    );

    // B proposes; A approves: pending (CREATOR, the namespace's owner, or B must add theirs).
    let proposal = cas.client(B).propose(&yaml).await.unwrap();
    assert_eq!(proposal.change.predecessor, None);
    assert_eq!(proposal.state, "pending");
    assert_eq!(approve(&cas, A, &proposal.id).await.unwrap().state, "pending");
    // The stranger neither votes nor reads it.
    let outsider_vote = key(OUTSIDER).sign_vote(&proposal.change, Vote::Approve).unwrap();
    refused(
        cas.client(OUTSIDER)
            .vote(&proposal.id, Vote::Approve, outsider_vote)
            .await,
        403,
        "not a member of the board deciding",
    );
    assert_eq!(cas.last("proposal-vote-refused").await.actor, public(OUTSIDER));
    refused(
        cas.client(OUTSIDER).proposal(&proposal.id).await,
        403,
        "not allowed to see",
    );
    assert!(cas.client(OUTSIDER).proposals("").await.unwrap().is_empty());
    // The namespace's owner sees it and approves: created, owned by the proposer.
    assert_eq!(cas.client(OWNER).proposals("ward/").await.unwrap().len(), 1);
    let applied = approve(&cas, OWNER, &proposal.id).await.unwrap();
    assert_eq!(applied.state, "applied");
    let created = cas.client(B).get_session("ward/proposed").await.unwrap();
    assert_eq!(
        (created.hash.as_str(), created.creator.as_str()),
        (proposal.change.hash.as_str(), public(B).as_str())
    );
    let entry = cas.last("session-create").await;
    assert_eq!(entry.detail["proposal"], proposal.id.as_str());
    assert_eq!(entry.detail["approvals"].as_array().unwrap().len(), 2);
    let history = cas.client(B).history("ward/proposed").await.unwrap();
    assert_eq!(history[0].approvals.len(), 2);

    // A second creation proposal of the same name is void once the name is taken.
    let rival = cas
        .client(A)
        .propose(&session("ward/rival", None, "one", "    - CREATOR\n"))
        .await
        .unwrap();
    let sign = |n: u8| key(n).sign_vote(&rival.change, Vote::Approve).unwrap();
    cas.client(A)
        .update_signed(
            &session("ward/rival", None, "one", "    - CREATOR\n"),
            vec![sign(B)],
        )
        .await
        .unwrap();
    let shown = cas.client(A).proposal(&rival.id).await.unwrap();
    assert_eq!(shown.state, "void", "{shown:?}");
    assert!(shown.reason.unwrap().contains("created meanwhile"));

    // A namespace without a board: create directly, no proposals.
    refused(
        cas.client(OWNER)
            .propose(&session("free/new", None, "one", "    - CREATOR\n"))
            .await,
        404,
        "its namespace has no board",
    );
}
