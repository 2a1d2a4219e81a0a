//! The CAS's wire types (JSON over HTTPS), and the two documents a confidential workload acts
//! on: the [`InitData`] it is launched for and the [`ReleasedConfig`] it receives.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cloister_attestation::Tee;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256, Sha384};

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
    /// The session as submitted (for its owner), or, when `redacted`, the stored session as
    /// JSON (which is YAML too) without any explicit secret `value`.
    pub yaml: String,
    /// The creator's public key: the session's owner.
    pub creator: String,
    /// Whether explicit secret values were removed (the reader is not the owner). `hash` is
    /// the stored session's, values included.
    #[serde(default)]
    pub redacted: bool,
}

/// `POST /v1/namespaces` (administrators): declares who owns a namespace, the first segment of
/// session names; only its owner creates sessions in it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceRequest {
    /// The namespace (`team` for sessions `team/...`).
    pub name: String,
    /// The owner's client key (`ed25519:<hex>` or `p256:<hex>`).
    pub owner: String,
    /// A board whose approval creating a session in the namespace needs (an
    /// `access_policy.update` rule as JSON, `CREATOR` meaning the namespace's owner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<serde_json::Value>,
}

/// A namespace and its owner, as `GET /v1/namespaces` lists them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NamespaceInfo {
    /// The namespace.
    pub name: String,
    /// Its owner's client key.
    pub owner: String,
    /// `claimed` (its owner created its first session), `inherited` (it held sessions of one
    /// creator before owners were recorded) or `declared` (by an administrator).
    pub how: String,
    /// The board that approves creating sessions in it, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<serde_json::Value>,
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
    /// 32 bytes, hex, opaque to clients (an issue time, 16 random bytes and the CAS's MAC);
    /// single use, valid only at the CAS process that issued it.
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
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// What went wrong (never secret content).
    pub error: String,
    /// With a 401 for the request's time: the server's clock (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_time: Option<i64>,
    /// With a 401 for the request's time: the earliest request time the server accepts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<i64>,
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

/// `POST /v1/counters/increment`: an attested workload increments one of its session's
/// counters (see `cloister_cas_session::CounterSpec`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CounterIncrement {
    /// Session name.
    pub session: String,
    /// The attested service within the session.
    pub service: String,
    /// The counter's name in the session.
    pub counter: String,
    /// The grant released with the configuration (`volume_grant`): it authorises the attested
    /// workload of this session version's service.
    pub grant: String,
}

/// A counter's value, as an increment answers it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CounterValue {
    /// The counter's name in the session.
    pub counter: String,
    /// Its value after the increment (the first increment gives 1).
    pub value: u64,
}

/// `GET /v1/counters?session=NAME`: a session's counters and its services' runs, for the
/// session's readers. Names never incremented are absent (their value is 0).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CounterValues {
    /// Session name.
    pub session: String,
    /// Explicit counters by name.
    pub counters: BTreeMap<String, u64>,
    /// Attestations (runs) so far, by service.
    pub runs: BTreeMap<String, u64>,
}

/// Whether `name` is a valid volume name (`[a-z0-9][a-z0-9-_.]*`, at most 64 characters).
pub fn valid_volume_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
}

/// What a confidential workload is launched for: the CAS it may trust (by identity pin), and the
/// session and service whose configuration it may run.
///
/// The host chooses these at launch, so the TEE binds them: the digest of [`InitData`] is the
/// launch-time configuration register of the evidence ([`InitData::config_id`]: TDX MRCONFIGID,
/// SEV-SNP HOST_DATA, the simulation TEE's config id), which the host sets when it starts the
/// TEE and cannot change afterwards. The runtime refuses to act on init-data that does not match
/// its own evidence, and the CAS refuses evidence whose register does not name *it* (its own
/// pin), the session and the service asked for. So a runtime started for one CAS, session and
/// service can neither be pointed at another CAS (whose configuration could make it run other
/// code that attests with the same register) nor obtain another session's secrets. Under SGX
/// (Gramine), which has no such register, the init-data file is a trusted file of the manifest
/// and so part of MRENCLAVE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitData {
    /// Pin of the CAS identity (`sha256:<64 hex>`).
    pub cas_pin: String,
    /// The CAS session.
    pub session: String,
    /// The service within the session.
    pub service: String,
}

/// Domain tag of the init-data digest.
const INIT_DATA_CONTEXT: &[u8] = b"cloister/init-data/v1\0";

impl InitData {
    /// The init-data for `session`/`service` at the CAS with identity `pin` (any accepted pin
    /// spelling; normalised to `sha256:<hex>`).
    pub fn new(pin: &str, session: &str, service: &str) -> Result<Self, crate::pin::TlsError> {
        let pin = crate::pin::parse_pin(pin)?;
        Ok(Self {
            cas_pin: format!("sha256:{}", hex::encode(pin)),
            session: session.to_owned(),
            service: service.to_owned(),
        })
    }

    /// The encoding digests are taken over: the context, then the pin's 32 bytes, the session
    /// and the service, each length-prefixed (u32 big-endian) so the encoding is injective.
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, crate::pin::TlsError> {
        let pin = crate::pin::parse_pin(&self.cas_pin)?;
        let mut out = INIT_DATA_CONTEXT.to_vec();
        for part in [&pin[..], self.session.as_bytes(), self.service.as_bytes()] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
        Ok(out)
    }

    /// The value `tee`'s launch configuration register must hold: SHA-384 of the canonical
    /// bytes for TDX (MRCONFIGID, 48 bytes), SHA-256 for SEV-SNP (HOST_DATA, 32 bytes) and the
    /// simulation TEE (32 bytes). `None` for SGX, which has no such register under Gramine.
    pub fn config_id(&self, tee: Tee) -> Result<Option<Vec<u8>>, crate::pin::TlsError> {
        let bytes = self.canonical_bytes()?;
        Ok(match tee {
            Tee::Tdx => Some(Sha384::digest(&bytes).to_vec()),
            Tee::Snp | Tee::Sim => Some(Sha256::digest(&bytes).to_vec()),
            Tee::Sgx => None,
        })
    }

    /// A simulated TEE launched for this init-data: evidence for `measurement`, signed by
    /// `platform`, with the launch register set as a hypervisor would set it.
    pub fn simulated(
        &self,
        platform: cloister_attestation::SimPlatform,
        measurement: [u8; 32],
    ) -> Result<cloister_attestation::SimSource, crate::pin::TlsError> {
        let config_id: [u8; 32] = Sha256::digest(self.canonical_bytes()?).into();
        Ok(cloister_attestation::SimSource::new(
            platform,
            measurement,
            config_id,
        ))
    }
}

/// What an attested workload receives, sealed to its key: its service's configuration from the
/// session (placeholders replaced by secrets), the records of its encrypted volumes and the
/// grant to commit new ones. It holds secrets: `Debug` shows only its shape.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleasedConfig {
    /// The session hash this configuration comes from.
    pub session_hash: String,
    /// The program and its arguments. Words equal to an injected file's path name that file.
    pub command: Vec<String>,
    /// Environment variables.
    pub environment: BTreeMap<String, String>,
    /// Working directory (absolute), if the session sets one.
    pub pwd: Option<String>,
    /// Files injected before the program starts.
    pub files: Vec<ReleasedFile>,
    /// The service's encrypted volumes: which ciphertext is current.
    #[serde(default)]
    pub volumes: BTreeMap<String, VolumeState>,
    /// The grant that lets this workload commit volume versions (see `POST /v1/volumes/commit`).
    #[serde(default)]
    pub volume_grant: String,
}

/// One injected file.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleasedFile {
    /// Absolute path.
    pub path: String,
    /// Content (base64 on the wire).
    #[serde(serialize_with = "to_base64", deserialize_with = "from_base64")]
    pub content: Vec<u8>,
    /// Permission bits, such as `0o600`.
    pub mode: u32,
}

fn to_base64<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&B64.encode(bytes))
}

fn from_base64<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let text = String::deserialize(d)?;
    B64.decode(text).map_err(serde::de::Error::custom)
}

impl fmt::Debug for ReleasedConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReleasedConfig")
            .field("session_hash", &self.session_hash)
            .field(
                "command",
                &format_args!("<{} words redacted>", self.command.len()),
            )
            .field("environment", &self.environment.keys().collect::<Vec<_>>())
            .field("pwd", &self.pwd.as_ref().map(|_| "<redacted>"))
            .field("files", &self.files)
            .field("volumes", &self.volumes)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for ReleasedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReleasedFile")
            .field("path", &self.path)
            .field(
                "content",
                &format_args!("<{} bytes redacted>", self.content.len()),
            )
            .field("mode", &format_args!("{:04o}", self.mode))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_data_digests_differ_per_field_and_tee() {
        let pin = format!("sha256:{}", "ab".repeat(32));
        let base = InitData::new(&pin, "team/app", "worker").unwrap();
        let sim = base.config_id(Tee::Sim).unwrap().unwrap();
        assert_eq!(sim.len(), 32);
        assert_eq!(base.config_id(Tee::Tdx).unwrap().unwrap().len(), 48);
        assert_eq!(base.config_id(Tee::Snp).unwrap().unwrap(), sim);
        assert!(base.config_id(Tee::Sgx).unwrap().is_none());
        // Pin spellings normalise to one value.
        let bare = InitData::new(&"AB".repeat(32), "team/app", "worker").unwrap();
        assert_eq!(bare, base);
        for other in [
            InitData::new(&format!("sha256:{}", "ac".repeat(32)), "team/app", "worker").unwrap(),
            InitData::new(&pin, "team/ap", "pworker").unwrap(),
            InitData::new(&pin, "team/app", "worker2").unwrap(),
        ] {
            assert_ne!(other.config_id(Tee::Sim).unwrap().unwrap(), sim, "{other:?}");
        }
        assert!(InitData::new("zz", "a", "b").is_err());
    }

    #[test]
    fn released_config_round_trips_and_hides_secrets_in_debug() {
        let config = ReleasedConfig {
            session_hash: "h".into(),
            command: vec!["/bin/sh".into(), "s3cret-arg".into()],
            environment: [("KEY".to_owned(), "s3cret-value".to_owned())].into(),
            pwd: None,
            files: vec![ReleasedFile {
                path: "/cloister/script.sh".into(),
                content: b"s3cret-file".to_vec(),
                mode: 0o500,
            }],
            volumes: BTreeMap::new(),
            volume_grant: String::new(),
        };
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(serde_json::from_str::<ReleasedConfig>(&json).unwrap(), config);
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
