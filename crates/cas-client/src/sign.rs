//! Client identity and signed requests.
//!
//! A CAS client is an Ed25519 or a P-256 key. Every request that acts on sessions carries four headers:
//! `x-cloister-key: ed25519:<hex public key>` (or `p256:<hex compressed SEC1 point>`), `x-cloister-time: <unix seconds>`,
//! `x-cloister-nonce: <32 hex>` (random, so two identical requests in one second differ) and
//! `x-cloister-signature: <hex>`, the signature over [`signing_payload`] — a domain tag, the
//! method, the path with query, the time, the nonce and the SHA-256 of the body. P-256
//! signatures are `r ‖ s` with a low `s` (at most n/2): the server refuses the other form, so
//! that a signature has one encoding.
//!
//! The server accepts a time at most [`MAX_SKEW`] behind and [`MAX_AHEAD`] ahead of its clock,
//! and not before it started (see `cloister_cas::auth`), and remembers the requests it accepted
//! for as long as they are valid, so a captured request cannot be replayed. A refusal for the
//! time answers 401 with the server's time and the earliest time it accepts
//! ([`crate::protocol::ErrorBody`]); the client retries once with them. TLS (with the CAS
//! identity pinned) protects confidentiality; the signature binds the request to its author even
//! through a terminating proxy.

use std::path::Path;

use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// How far a request's time may be behind the server's clock, in seconds.
pub const MAX_SKEW: i64 = 300;

/// How far a request's time may be ahead of the server's clock, in seconds. Small, because
/// a request dated in the future stays valid that much longer — across a restart of the
/// server, whose replay memory is empty (the server refuses requests dated before its start
/// plus this margin).
pub const MAX_AHEAD: i64 = 10;

/// Header names.
pub const KEY_HEADER: &str = "x-cloister-key";
/// Header carrying the request time (unix seconds).
pub const TIME_HEADER: &str = "x-cloister-time";
/// Header carrying the request's random nonce.
pub const NONCE_HEADER: &str = "x-cloister-nonce";
/// Header carrying the hex signature.
pub const SIGNATURE_HEADER: &str = "x-cloister-signature";

/// Errors of authentication.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// A header is missing.
    #[error("missing header {0}")]
    Missing(&'static str),
    /// A header is malformed.
    #[error("malformed header {0}")]
    Malformed(&'static str),
    /// The time is outside the accepted window.
    #[error("request time is more than {MAX_SKEW} s behind or {MAX_AHEAD} s ahead of the CAS's clock")]
    Stale,
    /// The request is dated before the server started: it may have been captured then, and
    /// the server does not remember what it accepted before its restart.
    #[error("request time is before this CAS started (requests from before a restart are refused)")]
    BeforeStart,
    /// A P-256 signature with a high `s`: `(r, n − s)` verifies too, so only one of the two
    /// forms is accepted.
    #[error("bad request signature: a P-256 signature must have a low s (s ≤ n/2)")]
    HighS,
    /// The signature does not verify.
    #[error("bad request signature")]
    BadSignature,
    /// The same signed request was seen before.
    #[error("replayed request")]
    Replayed,
    /// A key file could not be used.
    #[error("key file: {0}")]
    KeyFile(String),
}

/// The bytes a client signs.
pub fn signing_payload(method: &str, path_and_query: &str, time: i64, nonce: &str, body: &[u8]) -> Vec<u8> {
    let body_hash = hex::encode(Sha256::digest(body));
    format!("cloister-cas-request-v2\n{method}\n{path_and_query}\n{time}\n{nonce}\n{body_hash}").into_bytes()
}

/// Signature algorithms of client keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// Ed25519 (the default).
    Ed25519,
    /// ECDSA over P-256 with SHA-256; signatures are the 64-byte `r ‖ s`.
    P256,
}

enum Key {
    Ed25519(SigningKey),
    P256(p256::ecdsa::SigningKey),
}

/// A client's key pair.
pub struct ClientIdentity {
    key: Key,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientIdentity({})", self.public())
    }
}

impl ClientIdentity {
    /// A fresh random Ed25519 key.
    pub fn generate() -> Self {
        Self::generate_with(KeyAlgorithm::Ed25519)
    }

    /// A fresh random key of the given algorithm.
    pub fn generate_with(algorithm: KeyAlgorithm) -> Self {
        loop {
            let mut seed = Zeroizing::new([0u8; 32]);
            rand::fill(&mut seed[..]);
            match algorithm {
                KeyAlgorithm::Ed25519 => return Self::from_seed(&seed),
                // A random 32-byte string is a valid P-256 scalar except with negligible
                // probability; draw again in that case.
                KeyAlgorithm::P256 => {
                    if let Ok(key) = p256::ecdsa::SigningKey::from_slice(&seed[..]) {
                        return Self { key: Key::P256(key) };
                    }
                }
            }
        }
    }

    /// The Ed25519 key from a 32-byte seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self {
            key: Key::Ed25519(SigningKey::from_bytes(seed)),
        }
    }

    /// Loads a key file (`ed25519-seed:<hex>` or `p256-secret:<hex>`).
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| AuthError::KeyFile(format!("{}: {e}", path.display())))?,
        );
        let malformed = || AuthError::KeyFile(format!("{} holds a malformed key", path.display()));
        let (algorithm, hex_secret) = match text.trim().split_once(':') {
            Some(("ed25519-seed", hex)) => (KeyAlgorithm::Ed25519, hex),
            Some(("p256-secret", hex)) => (KeyAlgorithm::P256, hex),
            _ => {
                return Err(AuthError::KeyFile(format!(
                    "{} is not a Cloister key file",
                    path.display()
                )));
            }
        };
        let mut secret = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(hex_secret, &mut secret[..]).map_err(|_| malformed())?;
        match algorithm {
            KeyAlgorithm::Ed25519 => Ok(Self::from_seed(&secret)),
            KeyAlgorithm::P256 => p256::ecdsa::SigningKey::from_slice(&secret[..])
                .map(|key| Self { key: Key::P256(key) })
                .map_err(|_| malformed()),
        }
    }

    /// Writes the key file, readable only by its owner; refuses to overwrite.
    pub fn save(&self, path: &Path) -> Result<(), AuthError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let text = Zeroizing::new(match &self.key {
            Key::Ed25519(key) => format!("ed25519-seed:{}\n", hex::encode(key.to_bytes())),
            Key::P256(key) => format!("p256-secret:{}\n", hex::encode(key.to_bytes())),
        });
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| AuthError::KeyFile(format!("{}: {e}", path.display())))?;
        file.write_all(text.as_bytes())
            .map_err(|e| AuthError::KeyFile(e.to_string()))?;
        file.sync_all().map_err(|e| AuthError::KeyFile(e.to_string()))
    }

    /// The public key as `ed25519:<hex>` or `p256:<hex compressed point>`.
    pub fn public(&self) -> String {
        match &self.key {
            Key::Ed25519(key) => format!("ed25519:{}", hex::encode(key.verifying_key().as_bytes())),
            Key::P256(key) => format!(
                "p256:{}",
                hex::encode(key.verifying_key().to_encoded_point(true).as_bytes())
            ),
        }
    }

    /// The 64-byte signature of `message` (P-256: `r ‖ s` with a low `s`).
    fn sign_bytes(&self, message: &[u8]) -> [u8; 64] {
        match &self.key {
            Key::Ed25519(key) => key.sign(message).to_bytes(),
            Key::P256(key) => {
                let signature: p256::ecdsa::Signature = p256::ecdsa::signature::Signer::sign(key, message);
                signature.normalize_s().unwrap_or(signature).to_bytes().into()
            }
        }
    }

    /// A detached vote on `change` (see [`crate::governance`]); fails only when the change's
    /// hashes are malformed.
    pub fn sign_vote(
        &self,
        change: &crate::governance::Change,
        vote: crate::governance::Vote,
    ) -> Result<crate::governance::DetachedSignature, String> {
        let bytes = change.signed_bytes(vote)?;
        Ok(crate::governance::DetachedSignature {
            key: self.public(),
            signature: hex::encode(self.sign_bytes(&bytes)),
        })
    }

    /// The authentication headers for a request.
    pub fn sign(
        &self,
        method: &str,
        path_and_query: &str,
        time: i64,
        body: &[u8],
    ) -> [(&'static str, String); 4] {
        let mut nonce = [0u8; 16];
        rand::fill(&mut nonce);
        let nonce = hex::encode(nonce);
        let payload = signing_payload(method, path_and_query, time, &nonce, body);
        let signature = self.sign_bytes(&payload);
        [
            (KEY_HEADER, self.public()),
            (TIME_HEADER, time.to_string()),
            (NONCE_HEADER, nonce),
            (SIGNATURE_HEADER, hex::encode(signature)),
        ]
    }
}
