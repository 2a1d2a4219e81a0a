//! The CAS's wire types (JSON over HTTPS).

use serde::{Deserialize, Serialize};

/// `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusResponse {
    /// Whether the data directory is initialized.
    pub initialized: bool,
    /// Whether the master key is unavailable (only status and unseal are answered).
    pub sealed: bool,
    /// `shamir`, `key-file` or `tee:<name>`.
    pub sealing: String,
    /// Shares needed (Shamir).
    pub threshold: Option<u8>,
    /// Shares given so far.
    pub shares_provided: u8,
    /// Pin of the CAS identity (`sha256:<hex>` of its public key's SPKI), when known.
    pub identity_pin: Option<String>,
    /// The CAS identity public key (Ed25519, hex): verifies audit logs offline.
    pub identity_public_key: Option<String>,
}

/// `POST /v1/unseal` (local socket only).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnsealRequest {
    /// One Shamir share as printed by `cloister cas init`.
    pub share: String,
}

/// Answer to session create/update.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionWritten {
    /// Session name.
    pub name: String,
    /// The new session hash (the next update's `predecessor`).
    pub hash: String,
}

/// `GET /v1/sessions/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionRecord {
    /// Session name.
    pub name: String,
    /// Session hash.
    pub hash: String,
    /// The session as submitted.
    pub yaml: String,
    /// The creator's public key.
    pub creator: String,
}

/// `POST /v1/platforms`: registers a simulation platform key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformRequest {
    /// Ed25519 public key of the simulation platform (64 hex).
    pub public_key: String,
    /// A label for humans.
    #[serde(default)]
    pub name: String,
}

/// `POST /v1/attest/nonce`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NonceResponse {
    /// 32 random bytes, hex; single use.
    pub nonce: String,
    /// Seconds the nonce stays valid.
    pub expires_in: u64,
}

/// `POST /v1/attest`: evidence for a session's service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestRequest {
    /// Session name.
    pub session: String,
    /// Service within the session.
    pub service: String,
    /// The nonce from `/v1/attest/nonce` (hex).
    pub nonce: String,
    /// The workload's HPKE X25519 public key (hex); report data must be SHA-512(nonce ‖ key).
    pub public_key: String,
    /// The evidence (base64).
    pub evidence: String,
    /// Intel DCAP collateral (JSON object) for SGX/TDX evidence; its signatures are verified.
    #[serde(default)]
    pub collateral: Option<serde_json::Value>,
    /// AMD VCEK/VLEK certificate (base64 DER or PEM) for SEV-SNP evidence.
    #[serde(default)]
    pub vcek: Option<String>,
    /// ASK/ARK chain PEM for SEV-SNP (the built-in roots otherwise).
    #[serde(default)]
    pub chain: Option<String>,
}

/// The released configuration, HPKE-sealed to the workload key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AttestResponse {
    /// Session hash the configuration comes from (part of the HPKE info).
    pub session_hash: String,
    /// HPKE encapsulated key (base64).
    pub enc: String,
    /// Ciphertext of the JSON `ServiceConfig` (base64); the AAD is the nonce.
    pub ciphertext: String,
}

/// Error bodies.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// What went wrong (never secret content).
    pub error: String,
}

/// The recorded state of an encrypted volume: which ciphertext is current.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VolumeState {
    /// Version, starting at 1 with the first commit; 0 means "never written".
    pub version: u64,
    /// SHA-256 of the current ciphertext (hex); empty for version 0.
    #[serde(default)]
    pub tag: String,
}

/// `POST /v1/volumes/commit`: an attested workload records a volume's new ciphertext.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeCommit {
    /// Session name.
    pub session: String,
    /// Service within the session.
    pub service: String,
    /// Volume name (`[a-z0-9][a-z0-9-_.]*`, at most 64 characters).
    pub volume: String,
    /// The volume grant released with the configuration (`volume_grant`).
    pub grant: String,
    /// The version the workload started from; the commit is refused if it moved since.
    pub from_version: u64,
    /// SHA-256 of the new ciphertext (hex); it becomes version `from_version + 1`.
    pub tag: String,
}
