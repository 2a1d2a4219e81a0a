//! Clients of the CAS: the network client (pinned TLS, signed requests, the attestation flow)
//! and the operator's client on the local socket.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cloister_attestation::EvidenceSource;
use http::{Method, StatusCode};
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::protocol::*;
use crate::sign::ClientIdentity;
use crate::transport::{Response, Transport};

/// Errors of the clients.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The CAS answered with an error status.
    #[error("{status}: {message}")]
    Refused {
        /// HTTP status.
        status: StatusCode,
        /// The CAS's reason.
        message: String,
    },
    /// The connection to the CAS failed or closed, or connecting or the exchange took too
    /// long: the CAS is down, restarting or overloaded, and may answer a later attempt.
    #[error("cannot reach the CAS: {message}")]
    Unavailable {
        /// What failed.
        message: String,
        /// Whether the request may have reached the CAS (it failed or timed out after it was
        /// sent): trying again could then do it twice.
        sent: bool,
    },
    /// TLS failed (for instance a pin mismatch), or the answer was too large or not HTTP:
    /// trying again would meet the same CAS.
    #[error("cannot reach the CAS: {0}")]
    Transport(String),
    /// A request needs a client key.
    #[error("this request must be signed: give a client key (--key / CLOISTER_CAS_KEY)")]
    NoIdentity,
    /// Local trouble (bad pin, evidence collection, decryption).
    #[error("{0}")]
    Local(String),
}

/// The answer's JSON, or [`ClientError::Refused`] for an error status. (Async although the
/// answer has been read already, so that every request reads `answer(self.send(..).await?).await`.)
async fn answer<T: DeserializeOwned>(response: Response) -> Result<T, ClientError> {
    let Response { status, body } = response;
    if !status.is_success() {
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map(|b| b.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        return Err(ClientError::Refused { status, message });
    }
    serde_json::from_slice(&body).map_err(|e| ClientError::Local(format!("unexpected answer: {e}")))
}

/// A client of the CAS's network port. It keeps its connection open between requests.
pub struct CasClient {
    http: Transport,
    pin: [u8; 32],
    identity: Option<ClientIdentity>,
    /// Seconds to add to this machine's clock when signing, learned from the CAS when it
    /// refused a request's time (a clock that lags or runs ahead, or a CAS that just started).
    clock_offset: std::sync::atomic::AtomicI64,
}

impl CasClient {
    /// A client for `url` (`https://host:port`) that accepts only the CAS whose identity has
    /// `pin`, signing with `identity` when given.
    pub fn new(url: &str, pin: &str, identity: Option<ClientIdentity>) -> Result<Self, ClientError> {
        let pin = crate::pin::parse_pin(pin).map_err(|e| ClientError::Local(e.to_string()))?;
        let tls = crate::pin::client_config(pin).map_err(|e| ClientError::Local(e.to_string()))?;
        Ok(Self {
            http: Transport::https(url, tls)?,
            pin,
            identity,
            clock_offset: std::sync::atomic::AtomicI64::new(0),
        })
    }

    /// Carries this client's connections through the Unix socket at `path`, a relay to the
    /// CAS's port, instead of connecting to the URL's host and port: the TLS session and its
    /// pin are end to end, so the relay sees ciphertext only and cannot stand in for the CAS.
    #[must_use]
    pub fn through_socket(mut self, path: PathBuf) -> Self {
        self.http.through(path);
        self
    }

    /// Sends a request. A signed request that the CAS refuses for its time (401 with the CAS's
    /// clock, see [`crate::sign`]) is signed again, once, with the CAS's time, and later
    /// requests keep the learned offset.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        sign: bool,
    ) -> Result<Response, ClientError> {
        let first = self.send_once(&method, path, &body, sign).await?;
        if !sign || first.status != StatusCode::UNAUTHORIZED {
            return Ok(first);
        }
        let refusal = serde_json::from_slice::<ErrorBody>(&first.body).ok();
        let Some(server_time) = refusal.as_ref().and_then(|r| r.server_time) else {
            return Ok(first);
        };
        let not_before = refusal.and_then(|r| r.not_before).unwrap_or(server_time);
        let local = time::OffsetDateTime::now_utc().unix_timestamp();
        self.clock_offset.store(
            server_time.max(not_before) - local,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.send_once(&method, path, &body, sign).await
    }

    async fn send_once(
        &self,
        method: &Method,
        path: &str,
        body: &[u8],
        sign: bool,
    ) -> Result<Response, ClientError> {
        let mut headers = Vec::new();
        if sign {
            let identity = self.identity.as_ref().ok_or(ClientError::NoIdentity)?;
            let offset = self.clock_offset.load(std::sync::atomic::Ordering::Relaxed);
            let now = time::OffsetDateTime::now_utc().unix_timestamp() + offset;
            headers.extend(identity.sign(method.as_str(), path, now, body));
        }
        self.http
            .request(method.clone(), path, headers, body.to_vec())
            .await
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<StatusResponse, ClientError> {
        answer(self.send(Method::GET, "/v1/status", Vec::new(), false).await?).await
    }

    /// Creates a session from its YAML.
    pub async fn create_session(&self, yaml: &str) -> Result<SessionWritten, ClientError> {
        answer(
            self.send(Method::POST, "/v1/sessions", yaml.as_bytes().to_vec(), true)
                .await?,
        )
        .await
    }

    /// Updates a session (its YAML must name the current hash as `predecessor`).
    pub async fn update_session(&self, name: &str, yaml: &str) -> Result<SessionWritten, ClientError> {
        answer(
            self.send(
                Method::PUT,
                &format!("/v1/sessions/{name}"),
                yaml.as_bytes().to_vec(),
                true,
            )
            .await?,
        )
        .await
    }

    /// Reads a session (redacted for readers other than its owner).
    pub async fn get_session(&self, name: &str) -> Result<SessionRecord, ClientError> {
        answer(
            self.send(Method::GET, &format!("/v1/sessions/{name}"), Vec::new(), true)
                .await?,
        )
        .await
    }

    /// Names and hashes of the sessions this client may read.
    pub async fn list_sessions(
        &self,
        prefix: &str,
    ) -> Result<std::collections::BTreeMap<String, String>, ClientError> {
        let path = format!("/v1/sessions?prefix={}", query_escape(prefix));
        answer(self.send(Method::GET, &path, Vec::new(), true).await?).await
    }

    /// Reads a secret: its value for the session's owner, the public part of an
    /// `export_public` secret for the session's other readers.
    pub async fn read_secret(
        &self,
        session: &str,
        name: &str,
        format: Option<&str>,
    ) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        let mut path = format!(
            "/v1/secret?session={}&name={}",
            query_escape(session),
            query_escape(name)
        );
        if let Some(format) = format {
            path.push_str(&format!("&format={}", query_escape(format)));
        }
        let Response { status, body } = self.send(Method::GET, &path, Vec::new(), true).await?;
        let bytes = Zeroizing::new(body);
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|b| b.error)
                .unwrap_or_default();
            return Err(ClientError::Refused { status, message });
        }
        Ok(bytes)
    }

    /// Registers a simulation platform key (administrators only).
    pub async fn add_platform(&self, public_key: &str, name: &str) -> Result<(), ClientError> {
        let body = serde_json::to_vec(&PlatformRequest {
            public_key: public_key.to_owned(),
            name: name.to_owned(),
        })
        .map_err(|e| ClientError::Local(e.to_string()))?;
        let Response { status, body } = self.send(Method::POST, "/v1/platforms", body, true).await?;
        if status.is_success() {
            return Ok(());
        }
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map(|b| b.error)
            .unwrap_or_default();
        Err(ClientError::Refused { status, message })
    }

    /// Declares the owner of a namespace (administrators only).
    pub async fn declare_namespace(&self, name: &str, owner: &str) -> Result<NamespaceInfo, ClientError> {
        self.declare_governed_namespace(name, owner, None).await
    }

    /// Declares the owner of a namespace and the board (an update rule as JSON) whose approval
    /// creating sessions in it needs (administrators only).
    pub async fn declare_governed_namespace(
        &self,
        name: &str,
        owner: &str,
        rule: Option<serde_json::Value>,
    ) -> Result<NamespaceInfo, ClientError> {
        let body = serde_json::to_vec(&NamespaceRequest {
            name: name.to_owned(),
            owner: owner.to_owned(),
            rule,
        })
        .map_err(|e| ClientError::Local(e.to_string()))?;
        answer(self.send(Method::POST, "/v1/namespaces", body, true).await?).await
    }

    /// Namespaces and their owners: all of them for administrators, one's own otherwise.
    pub async fn namespaces(&self) -> Result<Vec<NamespaceInfo>, ClientError> {
        answer(self.send(Method::GET, "/v1/namespaces", Vec::new(), true).await?).await
    }

    /// Audit entries from `from` on (administrators only), as the caller's entry type.
    pub async fn audit<T: DeserializeOwned>(&self, from: u64) -> Result<Vec<T>, ClientError> {
        answer(
            self.send(Method::GET, &format!("/v1/audit?from={from}"), Vec::new(), true)
                .await?,
        )
        .await
    }

    /// Proposes a new session version (its YAML names its predecessor) to the session's board.
    pub async fn propose(&self, yaml: &str) -> Result<crate::governance::ProposalInfo, ClientError> {
        answer(
            self.send(Method::POST, "/v1/proposals", yaml.as_bytes().to_vec(), true)
                .await?,
        )
        .await
    }

    /// The proposals this client may see, of sessions whose name starts with `prefix`.
    pub async fn proposals(&self, prefix: &str) -> Result<Vec<crate::governance::ProposalInfo>, ClientError> {
        let path = format!("/v1/proposals?prefix={}", query_escape(prefix));
        answer(self.send(Method::GET, &path, Vec::new(), true).await?).await
    }

    /// One proposal, with the proposed session.
    pub async fn proposal(&self, id: &str) -> Result<crate::governance::ProposalInfo, ClientError> {
        let path = format!("/v1/proposals/{}", query_escape(id));
        answer(self.send(Method::GET, &path, Vec::new(), true).await?).await
    }

    /// Submits a vote signed over a proposal's change (by this client's key or another's).
    pub async fn vote(
        &self,
        id: &str,
        vote: crate::governance::Vote,
        signature: crate::governance::DetachedSignature,
    ) -> Result<crate::governance::ProposalInfo, ClientError> {
        let body = serde_json::to_vec(&crate::governance::VoteRequest { signature })
            .map_err(|e| ClientError::Local(e.to_string()))?;
        let path = format!("/v1/proposals/{}/{}", query_escape(id), vote.as_str());
        answer(self.send(Method::POST, &path, body, true).await?).await
    }

    /// Fetches a proposal, signs `vote` on its change (as the pinned CAS states it) with this
    /// client's key and submits it. Whoever wants to check the change against the session text
    /// first does so and calls [`CasClient::vote`].
    pub async fn vote_on(
        &self,
        id: &str,
        vote: crate::governance::Vote,
    ) -> Result<crate::governance::ProposalInfo, ClientError> {
        let proposal = self.proposal(id).await?;
        let signature = self.sign_vote(&proposal.change, vote)?;
        self.vote(id, vote, signature).await
    }

    /// This client's vote on `change`, signed with its key (which never leaves it).
    pub fn sign_vote(
        &self,
        change: &crate::governance::Change,
        vote: crate::governance::Vote,
    ) -> Result<crate::governance::DetachedSignature, ClientError> {
        let identity = self.identity.as_ref().ok_or(ClientError::NoIdentity)?;
        identity.sign_vote(change, vote).map_err(ClientError::Local)
    }

    /// Replaces a session with detached approvals (`POST /v1/updates`).
    pub async fn update_signed(
        &self,
        yaml: &str,
        signatures: Vec<crate::governance::DetachedSignature>,
    ) -> Result<SessionWritten, ClientError> {
        let body = serde_json::to_vec(&crate::governance::SignedUpdate {
            yaml: yaml.to_owned(),
            signatures,
        })
        .map_err(|e| ClientError::Local(e.to_string()))?;
        answer(self.send(Method::POST, "/v1/updates", body, true).await?).await
    }

    /// Binds this client's key to the attestation whose released configuration carried
    /// `grant`: the key then votes as `attested:SESSION#SERVICE` on boards.
    pub async fn bind_approver(
        &self,
        session: &str,
        service: &str,
        grant: &str,
    ) -> Result<crate::governance::ApproverBound, ClientError> {
        let body = serde_json::to_vec(&crate::governance::ApproverBinding {
            session: session.to_owned(),
            service: service.to_owned(),
            grant: grant.to_owned(),
        })
        .map_err(|e| ClientError::Local(e.to_string()))?;
        answer(self.send(Method::POST, "/v1/approvers", body, true).await?).await
    }

    /// Every recorded version of a session, oldest first.
    pub async fn history(&self, name: &str) -> Result<Vec<crate::governance::VersionInfo>, ClientError> {
        answer(
            self.send(Method::GET, &format!("/v1/history/{name}"), Vec::new(), true)
                .await?,
        )
        .await
    }

    /// Attests as the service `init` names, with evidence from `source`, and returns the released
    /// configuration. Before anything is sent, the evidence's launch configuration register must
    /// hold `init`'s digest ([`InitData::config_id`]): a TEE launched for another CAS, session or
    /// service refuses to act on this `init` (whoever handed it over). The CAS's pin must be
    /// `init.cas_pin`. `endorse` adds collateral to the request for hardware TEEs.
    pub async fn attest(
        &self,
        init: &InitData,
        source: &dyn EvidenceSource,
        endorse: impl FnOnce(&mut AttestRequest),
    ) -> Result<ReleasedConfig, ClientError> {
        if self.pin != crate::pin::parse_pin(&init.cas_pin).map_err(|e| ClientError::Local(e.to_string()))? {
            return Err(ClientError::Local(
                "the init-data names another CAS than this client's pin".into(),
            ));
        }
        let nonce: NonceResponse = answer(
            self.send(Method::POST, "/v1/attest/nonce", Vec::new(), false)
                .await?,
        )
        .await?;
        let nonce_bytes =
            hex::decode(&nonce.nonce).map_err(|_| ClientError::Local("malformed nonce".into()))?;
        let key = crate::seal::WorkloadKey::generate();
        let report_data = cloister_attestation::report_data_for(&nonce_bytes, &key.public_bytes());
        let collected = source
            .collect_with_endorsements(&report_data)
            .map_err(|e| ClientError::Local(format!("cannot collect evidence: {e}")))?;
        check_launch(init, &collected.evidence)?;
        let mut request = AttestRequest {
            session: init.session.clone(),
            service: init.service.clone(),
            nonce: nonce.nonce.clone(),
            public_key: hex::encode(key.public_bytes()),
            evidence: B64.encode(&collected.evidence),
            collateral: None,
            // SEV-SNP: the VCEK or VLEK the platform delivered with the report (configfs-tsm's
            // certificate table), so the CAS needs no AMD KDS access.
            vcek: collected.vcek.as_deref().map(|der| B64.encode(der)),
            chain: None,
        };
        endorse(&mut request);
        let body = serde_json::to_vec(&request).map_err(|e| ClientError::Local(e.to_string()))?;
        let released: AttestResponse =
            answer(self.send(Method::POST, "/v1/attest", body, false).await?).await?;
        let enc = B64
            .decode(&released.enc)
            .map_err(|_| ClientError::Local("malformed answer".into()))?;
        let ciphertext = B64
            .decode(&released.ciphertext)
            .map_err(|_| ClientError::Local("malformed answer".into()))?;
        let plaintext = key
            .open(
                &enc,
                &ciphertext,
                &crate::seal::config_info(&released.session_hash),
                &nonce_bytes,
            )
            .map_err(|e| ClientError::Local(e.to_string()))?;
        let config: ReleasedConfig = serde_json::from_slice(&plaintext)
            .map_err(|e| ClientError::Local(format!("malformed configuration: {e}")))?;
        if config.session_hash != released.session_hash {
            return Err(ClientError::Local(
                "the configuration names another session version than its envelope".into(),
            ));
        }
        Ok(config)
    }

    /// Records a volume's new ciphertext (see [`crate::volumes`]); answers the new state, or
    /// `409` when the volume moved on since `from_version`.
    pub async fn commit_volume(&self, commit: &VolumeCommit) -> Result<VolumeState, ClientError> {
        let body = serde_json::to_vec(commit).map_err(|e| ClientError::Local(e.to_string()))?;
        answer(self.send(Method::POST, "/v1/volumes/commit", body, false).await?).await
    }

    /// Increments one of the session's counters, as the attested workload holding `grant`;
    /// answers the new value (`403` at the counter's `max`, or when the grant does not hold).
    pub async fn increment_counter(&self, increment: &CounterIncrement) -> Result<CounterValue, ClientError> {
        let body = serde_json::to_vec(increment).map_err(|e| ClientError::Local(e.to_string()))?;
        answer(
            self.send(Method::POST, "/v1/counters/increment", body, false)
                .await?,
        )
        .await
    }

    /// The session's counters and runs (signed: for the session's readers).
    pub async fn counters(&self, session: &str) -> Result<CounterValues, ClientError> {
        answer(
            self.send(
                Method::GET,
                &format!("/v1/counters?session={}", query_escape(session)),
                Vec::new(),
                true,
            )
            .await?,
        )
        .await
    }

    /// Sends a raw attestation request (for tests of refusals: replays, wrong bindings).
    pub async fn attest_raw(&self, request: &AttestRequest) -> Result<AttestResponse, ClientError> {
        let body = serde_json::to_vec(request).map_err(|e| ClientError::Local(e.to_string()))?;
        answer(self.send(Method::POST, "/v1/attest", body, false).await?).await
    }

    /// A fresh nonce.
    pub async fn nonce(&self) -> Result<NonceResponse, ClientError> {
        answer(
            self.send(Method::POST, "/v1/attest/nonce", Vec::new(), false)
                .await?,
        )
        .await
    }
}

fn query_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Checks that `evidence` was produced by a TEE launched for `init` (see [`InitData`]).
pub fn check_launch(init: &InitData, evidence: &[u8]) -> Result<(), ClientError> {
    let summary = cloister_attestation::inspect(evidence)
        .map_err(|e| ClientError::Local(format!("collected evidence does not parse: {e}")))?;
    let Some(expected) = init
        .config_id(summary.tee)
        .map_err(|e| ClientError::Local(e.to_string()))?
    else {
        return Ok(());
    };
    match summary.launch_config() {
        Some(actual) if actual.eq_ignore_ascii_case(&hex::encode(&expected)) => Ok(()),
        actual => Err(ClientError::Local(format!(
            "this TEE was launched for another CAS, session or service: its launch configuration \
             register holds {}, the init-data needs {}",
            actual.unwrap_or("nothing"),
            hex::encode(expected)
        ))),
    }
}

/// The operator socket of a CAS data directory.
pub fn socket_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("cas.sock")
}

/// The operator's client on the CAS host's socket.
pub struct LocalClient {
    http: Transport,
}

impl LocalClient {
    /// A client of the socket in `data_dir`.
    pub fn new(data_dir: &Path) -> Result<Self, ClientError> {
        Ok(Self {
            http: Transport::unix(socket_path(data_dir)),
        })
    }

    async fn send(&self, method: Method, path: &str, body: Vec<u8>) -> Result<Response, ClientError> {
        self.http.request(method, path, [], body).await
    }

    /// The CAS's status.
    pub async fn status(&self) -> Result<StatusResponse, ClientError> {
        answer(self.send(Method::GET, "/v1/status", Vec::new()).await?).await
    }

    /// Submits one unseal share.
    pub async fn unseal(&self, share: &str) -> Result<serde_json::Value, ClientError> {
        let body = serde_json::to_vec(&UnsealRequest {
            share: share.to_owned(),
        })
        .map_err(|e| ClientError::Local(e.to_string()))?;
        answer(self.send(Method::POST, "/v1/unseal", body).await?).await
    }

    /// Seals the CAS.
    pub async fn seal(&self) -> Result<(), ClientError> {
        let Response { status, .. } = self.send(Method::POST, "/v1/seal", Vec::new()).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(ClientError::Refused {
                status,
                message: "seal refused".into(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloister_attestation::{EvidenceSource, SimPlatform, decode_input};

    fn vector(path: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../attestation/testdata")
            .join(path);
        decode_input(&std::fs::read(&path).unwrap()).unwrap().into_owned()
    }

    fn init() -> InitData {
        InitData::new(&format!("sha256:{}", "ab".repeat(32)), "team/app", "worker").unwrap()
    }

    #[test]
    fn hardware_evidence_launched_for_something_else_is_not_acted_on() {
        // Real TDX and SEV-SNP evidence: their MRCONFIGID / HOST_DATA do not hold this
        // init-data's digest, as when a host hands a runtime another CAS, session or service
        // than the TEE was launched for.
        for evidence in [vector("tdx/quote.bin"), vector("snp/report-milan.hex")] {
            let err = check_launch(&init(), &evidence).unwrap_err().to_string();
            assert!(
                err.contains("launched for another CAS, session or service"),
                "{err}"
            );
        }
        // SGX has no launch register: its init-data is a trusted file inside MRENCLAVE.
        check_launch(&init(), &vector("sgx/quote.bin")).unwrap();
        assert!(check_launch(&init(), b"not evidence").is_err());
    }

    #[test]
    fn simulated_evidence_carries_its_launch_init_data() {
        let source = init()
            .simulated(SimPlatform::from_seed([3; 32]), [4; 32])
            .unwrap();
        let evidence = source.collect(&[0; 64]).unwrap();
        check_launch(&init(), &evidence).unwrap();
        let other = InitData::new(&init().cas_pin, "team/app", "other").unwrap();
        assert!(check_launch(&other, &evidence).is_err());
    }
}
