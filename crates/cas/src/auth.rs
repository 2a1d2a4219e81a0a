//! Client identity and signed requests.
//!
//! A CAS client is an Ed25519 key. Every request that acts on sessions carries four headers:
//! `x-cloister-key: ed25519:<hex public key>`, `x-cloister-time: <unix seconds>`,
//! `x-cloister-nonce: <32 hex>` (random, so two identical requests in one second differ) and
//! `x-cloister-signature: <hex>`, the signature over [`signing_payload`] — a domain tag, the
//! method, the path with query, the time, the nonce and the SHA-256 of the body. The server accepts a time
//! within [`MAX_SKEW`] of its clock and remembers signatures for that long, so a captured request
//! cannot be replayed. TLS (with the CAS identity pinned) protects confidentiality; the
//! signature binds the request to its author even through a terminating proxy.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// How far a request's time may be from the server's clock, in seconds.
pub const MAX_SKEW: i64 = 300;

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
    #[error("request time is more than {MAX_SKEW} s away from the server's clock")]
    Stale,
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

/// A client's key pair.
pub struct ClientIdentity {
    key: SigningKey,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientIdentity({})", self.public())
    }
}

impl ClientIdentity {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rand::fill(&mut seed[..]);
        Self {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// The key from a 32-byte seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(seed),
        }
    }

    /// Loads a key file (`ed25519-seed:<hex>`).
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| AuthError::KeyFile(format!("{}: {e}", path.display())))?,
        );
        let hex_seed = text
            .trim()
            .strip_prefix("ed25519-seed:")
            .ok_or_else(|| AuthError::KeyFile(format!("{} is not a Cloister key file", path.display())))?;
        let mut seed = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(hex_seed, &mut seed[..])
            .map_err(|_| AuthError::KeyFile(format!("{} holds a malformed key", path.display())))?;
        Ok(Self::from_seed(&seed))
    }

    /// Writes the key file, readable only by its owner; refuses to overwrite.
    pub fn save(&self, path: &Path) -> Result<(), AuthError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let text = Zeroizing::new(format!("ed25519-seed:{}\n", hex::encode(self.key.to_bytes())));
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

    /// The public key as `ed25519:<hex>`.
    pub fn public(&self) -> String {
        format!("ed25519:{}", hex::encode(self.key.verifying_key().as_bytes()))
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
        let signature = self
            .key
            .sign(&signing_payload(method, path_and_query, time, &nonce, body));
        [
            (KEY_HEADER, self.public()),
            (TIME_HEADER, time.to_string()),
            (NONCE_HEADER, nonce),
            (SIGNATURE_HEADER, hex::encode(signature.to_bytes())),
        ]
    }
}

/// Parses `ed25519:<hex>` (or bare hex) into a verifying key.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, AuthError> {
    let hex_key = text.trim().strip_prefix("ed25519:").unwrap_or(text.trim());
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(hex_key, &mut bytes).map_err(|_| AuthError::Malformed(KEY_HEADER))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| AuthError::Malformed(KEY_HEADER))
}

/// Verifies signed requests and remembers recent signatures.
#[derive(Default)]
pub struct Authenticator {
    seen: Mutex<HashMap<[u8; 64], i64>>,
}

impl Authenticator {
    /// Checks a request; returns the client's public key as `ed25519:<hex>`.
    pub fn verify(
        &self,
        header: impl Fn(&'static str) -> Option<String>,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        now: i64,
    ) -> Result<String, AuthError> {
        let key_text = header(KEY_HEADER).ok_or(AuthError::Missing(KEY_HEADER))?;
        let time_text = header(TIME_HEADER).ok_or(AuthError::Missing(TIME_HEADER))?;
        let sig_text = header(SIGNATURE_HEADER).ok_or(AuthError::Missing(SIGNATURE_HEADER))?;
        let nonce = header(NONCE_HEADER).ok_or(AuthError::Missing(NONCE_HEADER))?;
        if nonce.len() != 32 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(AuthError::Malformed(NONCE_HEADER));
        }
        let key = parse_public_key(&key_text)?;
        let time: i64 = time_text
            .trim()
            .parse()
            .map_err(|_| AuthError::Malformed(TIME_HEADER))?;
        if (now - time).abs() > MAX_SKEW {
            return Err(AuthError::Stale);
        }
        let mut sig = [0u8; 64];
        hex::decode_to_slice(sig_text.trim(), &mut sig)
            .map_err(|_| AuthError::Malformed(SIGNATURE_HEADER))?;
        key.verify(
            &signing_payload(method, path_and_query, time, &nonce, body),
            &Signature::from_bytes(&sig),
        )
        .map_err(|_| AuthError::BadSignature)?;
        let mut seen = self.seen.lock().map_err(|_| AuthError::Replayed)?;
        if seen.len() > 100_000 {
            seen.retain(|_, t| now - *t <= MAX_SKEW);
        }
        if seen.insert(sig, time).is_some() {
            return Err(AuthError::Replayed);
        }
        Ok(format!("ed25519:{}", hex::encode(key.as_bytes())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers<'a>(signed: &'a [(&'static str, String); 4]) -> impl Fn(&'static str) -> Option<String> + 'a {
        move |name| signed.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn signed_requests_verify_once() {
        let client = ClientIdentity::generate();
        let auth = Authenticator::default();
        let signed = client.sign("POST", "/v1/sessions", 1000, b"body");
        assert_eq!(
            auth.verify(headers(&signed), "POST", "/v1/sessions", b"body", 1010),
            Ok(client.public())
        );
        assert_eq!(
            auth.verify(headers(&signed), "POST", "/v1/sessions", b"body", 1010),
            Err(AuthError::Replayed)
        );
    }

    #[test]
    fn any_change_breaks_the_signature() {
        let client = ClientIdentity::generate();
        let auth = Authenticator::default();
        let signed = client.sign("PUT", "/v1/sessions/a", 1000, b"body");
        for (method, path, body) in [
            ("POST", "/v1/sessions/a", &b"body"[..]),
            ("PUT", "/v1/sessions/b", b"body"),
            ("PUT", "/v1/sessions/a", b"bodY"),
        ] {
            assert_eq!(
                auth.verify(headers(&signed), method, path, body, 1000),
                Err(AuthError::BadSignature)
            );
        }
        let other = ClientIdentity::generate();
        let mut forged = signed.clone();
        forged[0].1 = other.public();
        let mut renonced = signed.clone();
        renonced[2].1 = "0".repeat(32);
        assert_eq!(
            auth.verify(headers(&renonced), "PUT", "/v1/sessions/a", b"body", 1000),
            Err(AuthError::BadSignature)
        );
        // The same request twice in one second is two requests, not a replay.
        let again = client.sign("PUT", "/v1/sessions/a", 1000, b"body");
        assert_ne!(again[3].1, signed[3].1);
        assert_eq!(
            auth.verify(headers(&forged), "PUT", "/v1/sessions/a", b"body", 1000),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            auth.verify(
                headers(&signed),
                "PUT",
                "/v1/sessions/a",
                b"body",
                1000 + MAX_SKEW + 1
            ),
            Err(AuthError::Stale)
        );
        assert_eq!(
            auth.verify(|_| None, "PUT", "/", b"", 0),
            Err(AuthError::Missing(KEY_HEADER))
        );
    }

    #[test]
    fn key_files_round_trip_and_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let client = ClientIdentity::generate();
        client.save(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(ClientIdentity::load(&path).unwrap().public(), client.public());
        assert!(client.save(&path).is_err(), "overwrote a key file");
        std::fs::write(dir.path().join("bad"), "ed25519-seed:zz").unwrap();
        assert!(ClientIdentity::load(&dir.path().join("bad")).is_err());
    }
}
