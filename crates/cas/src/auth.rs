//! Verification of signed requests (the client side is [`cloister_cas_client::sign`]).
//!
//! The server accepts a request time within [`MAX_SKEW`] of its clock and remembers signatures
//! for that long, so a captured request cannot be replayed.

use std::collections::HashMap;
use std::sync::Mutex;

use cloister_cas_client::sign::{
    AuthError, KEY_HEADER, MAX_SKEW, NONCE_HEADER, SIGNATURE_HEADER, TIME_HEADER, signing_payload,
};
use ed25519_dalek::{Signature, Verifier, VerifyingKey};

/// A client's public key, as it verifies signatures.
enum PublicKey {
    Ed25519(VerifyingKey),
    P256(p256::ecdsa::VerifyingKey),
}

impl PublicKey {
    /// Parses `ed25519:<hex>` (or bare hex) or `p256:<hex SEC1 point>`.
    fn parse(text: &str) -> Result<Self, AuthError> {
        let text = text.trim();
        if let Some(hex_key) = text.strip_prefix("p256:") {
            let bytes = hex::decode(hex_key).map_err(|_| AuthError::Malformed(KEY_HEADER))?;
            return p256::ecdsa::VerifyingKey::from_sec1_bytes(&bytes)
                .map(Self::P256)
                .map_err(|_| AuthError::Malformed(KEY_HEADER));
        }
        let hex_key = text.strip_prefix("ed25519:").unwrap_or(text);
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_key, &mut bytes).map_err(|_| AuthError::Malformed(KEY_HEADER))?;
        VerifyingKey::from_bytes(&bytes)
            .map(Self::Ed25519)
            .map_err(|_| AuthError::Malformed(KEY_HEADER))
    }

    fn verify(&self, payload: &[u8], signature: &[u8; 64]) -> Result<(), AuthError> {
        match self {
            Self::Ed25519(key) => key
                .verify(payload, &Signature::from_bytes(signature))
                .map_err(|_| AuthError::BadSignature),
            Self::P256(key) => {
                let signature =
                    p256::ecdsa::Signature::from_slice(signature).map_err(|_| AuthError::BadSignature)?;
                p256::ecdsa::signature::Verifier::verify(key, payload, &signature)
                    .map_err(|_| AuthError::BadSignature)
            }
        }
    }

    /// The canonical text form (`p256` keys compressed), as sessions name principals.
    fn canonical(&self) -> String {
        match self {
            Self::Ed25519(key) => format!("ed25519:{}", hex::encode(key.as_bytes())),
            Self::P256(key) => format!("p256:{}", hex::encode(key.to_encoded_point(true).as_bytes())),
        }
    }
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
        let key = PublicKey::parse(&key_text)?;
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
        key.verify(&signing_payload(method, path_and_query, time, &nonce, body), &sig)?;
        let mut seen = self.seen.lock().map_err(|_| AuthError::Replayed)?;
        if seen.len() > 100_000 {
            seen.retain(|_, t| now - *t <= MAX_SKEW);
        }
        if seen.insert(sig, time).is_some() {
            return Err(AuthError::Replayed);
        }
        Ok(key.canonical())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloister_cas_client::sign::{ClientIdentity, KeyAlgorithm};

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
    fn p256_keys_sign_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let client = ClientIdentity::generate_with(KeyAlgorithm::P256);
        assert!(client.public().starts_with("p256:02") || client.public().starts_with("p256:03"));
        client.save(&dir.path().join("p256")).unwrap();
        let loaded = ClientIdentity::load(&dir.path().join("p256")).unwrap();
        assert_eq!(loaded.public(), client.public());
        let auth = Authenticator::default();
        let signed = loaded.sign("GET", "/v1/sessions/x", 50, b"");
        assert_eq!(
            auth.verify(headers(&signed), "GET", "/v1/sessions/x", b"", 50),
            Ok(client.public())
        );
        let tampered = loaded.sign("GET", "/v1/sessions/x", 50, b"");
        assert_eq!(
            auth.verify(headers(&tampered), "GET", "/v1/sessions/y", b"", 50),
            Err(AuthError::BadSignature)
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
