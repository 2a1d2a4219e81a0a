//! Who may read and who may update a session.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::SessionError;
use crate::governance::UpdatePolicy;

/// A client's public key, as CAS learns it from the client's authentication. Written (and
/// serialized) as `ed25519:<hex>` or `p256:<hex>`.
///
/// P-256 keys are kept in compressed SEC1 form (33 bytes), whatever form they were given in,
/// so that the same key always compares equal.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClientKey {
    /// An Ed25519 public key.
    Ed25519([u8; 32]),
    /// A P-256 public key, compressed SEC1 encoding.
    P256([u8; 33]),
}

impl ClientKey {
    /// An Ed25519 key; fails when the bytes are not a valid curve point.
    pub fn ed25519(bytes: &[u8]) -> Result<Self, String> {
        let raw: [u8; 32] = bytes
            .try_into()
            .map_err(|_| format!("an Ed25519 public key is 32 bytes, got {}", bytes.len()))?;
        ed25519_dalek::VerifyingKey::from_bytes(&raw)
            .map_err(|_| "not a valid Ed25519 public key".to_string())?;
        Ok(ClientKey::Ed25519(raw))
    }

    /// A P-256 key from its SEC1 encoding (compressed or uncompressed); fails when the bytes
    /// are not a point on the curve.
    pub fn p256(sec1: &[u8]) -> Result<Self, String> {
        use p256::elliptic_curve::sec1::ToEncodedPoint as _;
        let key = p256::PublicKey::from_sec1_bytes(sec1)
            .map_err(|_| "not a valid P-256 public key (SEC1)".to_string())?;
        let point = key.to_encoded_point(true);
        let compressed: [u8; 33] = point
            .as_bytes()
            .try_into()
            .map_err(|_| "not a valid P-256 public key (SEC1)".to_string())?;
        Ok(ClientKey::P256(compressed))
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientKey::Ed25519(k) => write!(f, "ed25519:{}", hex::encode(k)),
            ClientKey::P256(k) => write!(f, "p256:{}", hex::encode(k)),
        }
    }
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for ClientKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ClientKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ClientKey::from_str(&s).map_err(serde::de::Error::custom)
    }
}

impl FromStr for ClientKey {
    type Err = String;

    /// Accepts `ed25519:<64 hex>`, `p256:<hex SEC1>` and a bare 64-hex Ed25519 key.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (scheme, body) = match s.split_once(':') {
            Some((scheme, body)) => (scheme.to_ascii_lowercase(), body),
            None => ("ed25519".to_string(), s),
        };
        let bytes = hex::decode(body).map_err(|e| format!("key is not hex: {e}"))?;
        match scheme.as_str() {
            "ed25519" => ClientKey::ed25519(&bytes),
            "p256" => ClientKey::p256(&bytes),
            other => Err(format!("unknown key type '{other}' (expected ed25519 or p256)")),
        }
    }
}

/// One entry of an access list.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Principal {
    /// `CREATOR`: the client that created the session (CAS records its key).
    Creator,
    /// `ANY`: every client, authenticated or not.
    Any,
    /// `NONE`: nobody; must be the only entry of its list.
    Nobody,
    /// The holder of this key.
    Key(ClientKey),
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Creator => f.write_str("CREATOR"),
            Principal::Any => f.write_str("ANY"),
            Principal::Nobody => f.write_str("NONE"),
            Principal::Key(k) => k.fmt(f),
        }
    }
}

impl FromStr for Principal {
    type Err = String;

    /// `CREATOR`, `ANY`, `NONE` (case-insensitive) or a key as accepted by [`ClientKey`].
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_uppercase().as_str() {
            "CREATOR" => Ok(Principal::Creator),
            "ANY" => Ok(Principal::Any),
            "NONE" => Ok(Principal::Nobody),
            _ => ClientKey::from_str(s)
                .map(Principal::Key)
                .map_err(|e| format!("invalid principal: {e} (expected CREATOR, ANY, NONE or a public key)")),
        }
    }
}

impl Serialize for Principal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Principal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Principal::from_str(&s).map_err(serde::de::Error::custom)
    }
}

/// Who may read a session and who may update it.
///
/// Reading is not the same for everyone on the list (see the crate docs, "Access"): the
/// session's creator reads raw secret values; other readers get the session with explicit
/// values redacted and the public parts of `export_public` secrets only.
///
/// Both default to `[CREATOR]`. An empty list is invalid (write `[NONE]`), and `NONE` must
/// stand alone, so that a list's meaning is never ambiguous. `update` may instead be a board
/// ([`UpdatePolicy::Board`], see [`crate::governance`]); `read` is always a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessPolicy {
    /// Principals that may read the session.
    #[serde(
        default = "creator_only",
        deserialize_with = "crate::governance::deserialize_read"
    )]
    pub read: Vec<Principal>,
    /// Who must agree to replace the session with a successor.
    #[serde(default)]
    pub update: UpdatePolicy,
}

fn creator_only() -> Vec<Principal> {
    vec![Principal::Creator]
}

impl Default for AccessPolicy {
    fn default() -> Self {
        AccessPolicy {
            read: creator_only(),
            update: UpdatePolicy::default(),
        }
    }
}

pub(crate) fn allowed(list: &[Principal], who: &ClientKey, creator: &ClientKey) -> bool {
    list.iter().any(|p| match p {
        Principal::Any => true,
        Principal::Creator => who == creator,
        Principal::Nobody => false,
        Principal::Key(k) => k == who,
    })
}

/// A list is never empty, and `NONE` stands alone.
pub(crate) fn validate_list(field: &str, list: &[Principal]) -> Result<(), SessionError> {
    if list.is_empty() {
        return Err(SessionError::invalid(
            field,
            "must not be empty (write [NONE] to allow nobody)",
        ));
    }
    if list.contains(&Principal::Nobody) && list.len() > 1 {
        return Err(SessionError::invalid(field, "NONE must be the only entry"));
    }
    Ok(())
}

impl AccessPolicy {
    /// True when `who` may read the session whose creator is `creator`.
    pub fn may_read(&self, who: &ClientKey, creator: &ClientKey) -> bool {
        allowed(&self.read, who, creator)
    }

    /// True when `who`, alone, may update the session whose creator is `creator`.
    pub fn may_update(&self, who: &ClientKey, creator: &ClientKey) -> bool {
        self.update
            .is_met(&std::iter::once(who.clone()).collect(), creator)
    }

    pub(crate) fn normalize(&mut self) {
        self.read.sort();
        self.read.dedup();
        self.update.normalize();
    }
}
