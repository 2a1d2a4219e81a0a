//! Verification of signed requests (the client side is [`cloister_cas_client::sign`]).
//!
//! A request is accepted once: its time must be at most [`MAX_SKEW`] behind and [`MAX_AHEAD`]
//! ahead of the server's clock, and the server remembers every request it accepted for as long
//! as its time stays acceptable. The memory is keyed on the **signed content** (SHA-256 of the
//! client's key and the signing payload), not on the signature bytes, and P-256 signatures must
//! have a low `s`: an ECDSA signature `(r, s)` has the twin `(r, n − s)`, which verifies too,
//! and a cache keyed on signature bytes would take the twin for a new request.
//!
//! ## Restarts
//!
//! The memory of accepted requests lives in the process, so it is empty after a restart. Rather
//! than making every request a durable write, the server refuses requests dated before it
//! started: [`Authenticator::starting_now`] sets the earliest acceptable time to the next whole
//! second after the start plus [`MAX_AHEAD`]. A request the previous process could have accepted
//! is dated at most [`MAX_AHEAD`] after that process's last second, and the vault's database is
//! held exclusively by one process, so the previous one had stopped before this one started:
//! no request it saw is accepted again. (This assumes the server's clock does not step back
//! across the restart.)
//!
//! An honest client whose request is refused for its time — its clock lags or runs ahead, or
//! the server has just started — gets a 401 naming the server's time and the earliest time
//! accepted, and the client signs the request again once with them.

use std::collections::HashMap;
use std::sync::Mutex;

use cloister_cas_client::sign::{
    AuthError, KEY_HEADER, MAX_AHEAD, MAX_SKEW, NONCE_HEADER, SIGNATURE_HEADER, TIME_HEADER, signing_payload,
};
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

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
                if signature.normalize_s().is_some() {
                    return Err(AuthError::HighS);
                }
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

/// Verifies a detached signature (64 bytes, hex; P-256 with a low `s`) by the client key
/// `key_text` over `message`, as governance votes are signed; returns the key in its canonical
/// text form.
pub fn verify_detached(key_text: &str, message: &[u8], signature_hex: &str) -> Result<String, String> {
    let key = PublicKey::parse(key_text).map_err(|_| format!("{key_text:?} is not a client public key"))?;
    let mut signature = [0u8; 64];
    hex::decode_to_slice(signature_hex.trim(), &mut signature)
        .map_err(|_| "the signature is not 64 bytes of hex".to_string())?;
    key.verify(message, &signature).map_err(|e| e.to_string())?;
    Ok(key.canonical())
}

/// Verifies signed requests and remembers the ones it accepted.
pub struct Authenticator {
    /// Digests of accepted requests' signed content, with their times.
    seen: Mutex<HashMap<[u8; 32], i64>>,
    not_before: i64,
}

impl Authenticator {
    /// An authenticator that refuses requests dated before `not_before` (unix seconds).
    pub fn new(not_before: i64) -> Self {
        Self {
            seen: Mutex::default(),
            not_before,
        }
    }

    /// An authenticator for a server starting now (see the module docs), and the instant from
    /// which a request signed with the server's own clock is accepted: the server opens its
    /// port then, so that clients with a synchronised clock are not refused.
    pub fn starting_now() -> (Self, std::time::SystemTime) {
        let now = std::time::SystemTime::now();
        let seconds = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let next_second = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds + 1);
        let not_before = i64::try_from(seconds).unwrap_or(i64::MAX - MAX_AHEAD - 1) + 1 + MAX_AHEAD;
        (Self::new(not_before), next_second)
    }

    /// The earliest request time accepted.
    pub fn not_before(&self) -> i64 {
        self.not_before
    }

    /// Checks a request; returns the client's public key in its canonical text form.
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
        if time < now.saturating_sub(MAX_SKEW) || time > now.saturating_add(MAX_AHEAD) {
            return Err(AuthError::Stale);
        }
        if time < self.not_before {
            return Err(AuthError::BeforeStart);
        }
        let mut sig = [0u8; 64];
        hex::decode_to_slice(sig_text.trim(), &mut sig)
            .map_err(|_| AuthError::Malformed(SIGNATURE_HEADER))?;
        let payload = signing_payload(method, path_and_query, time, &nonce, body);
        key.verify(&payload, &sig)?;
        let canonical = key.canonical();
        let mut digest = Sha256::new();
        digest.update(canonical.as_bytes());
        digest.update([0u8]);
        digest.update(&payload);
        let signed: [u8; 32] = digest.finalize().into();
        let mut seen = self.seen.lock().map_err(|_| AuthError::Replayed)?;
        if seen.len() > 100_000 {
            seen.retain(|_, t| now - *t <= MAX_SKEW);
        }
        if seen.insert(signed, time).is_some() {
            return Err(AuthError::Replayed);
        }
        Ok(canonical)
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
        let auth = Authenticator::new(0);
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
        let auth = Authenticator::new(0);
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
        let auth = Authenticator::new(0);
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

    /// P-256 headers for `payload`'s request, signed by `key` with the nonce `k` (so that
    /// one request can carry several valid signatures).
    fn p256_headers(
        key: &p256::ecdsa::SigningKey,
        k: u64,
        time: i64,
        nonce: &str,
        payload: &[u8],
    ) -> ([(&'static str, String); 4], p256::ecdsa::Signature) {
        use ecdsa::hazmat::SignPrimitive as _;
        let z = p256::FieldBytes::from(<[u8; 32]>::from(Sha256::digest(payload)));
        let (signature, _) = key
            .as_nonzero_scalar()
            .try_sign_prehashed(p256::Scalar::from(k), &z)
            .unwrap();
        let signature = signature.normalize_s().unwrap_or(signature);
        let public = hex::encode(key.verifying_key().to_encoded_point(true).as_bytes());
        let headers = [
            (KEY_HEADER, format!("p256:{public}")),
            (TIME_HEADER, time.to_string()),
            (NONCE_HEADER, nonce.to_owned()),
            (SIGNATURE_HEADER, hex::encode(signature.to_bytes())),
        ];
        (headers, signature)
    }

    #[test]
    fn p256_twins_and_resignatures_are_replays() {
        let key = p256::ecdsa::SigningKey::from_slice(&[0x42; 32]).unwrap();
        let nonce = "ab".repeat(16);
        let payload = signing_payload("PUT", "/v1/sessions/a", 1000, &nonce, b"body");
        let (low, signature) = p256_headers(&key, 7, 1000, &nonce, &payload);
        // The twin (r, n − s) of a valid signature is itself valid ECDSA...
        let (r, s) = signature.split_scalars();
        let twin = p256::ecdsa::Signature::from_scalars(r.to_bytes(), (-*s).to_bytes()).unwrap();
        assert!(twin.normalize_s().is_some(), "the twin has a high s");
        p256::ecdsa::signature::Verifier::verify(key.verifying_key(), &payload, &twin)
            .expect("ECDSA accepts both forms");
        let mut high = low.clone();
        high[3].1 = hex::encode(twin.to_bytes());
        // ...but the CAS takes only the low form, before or after the original.
        let auth = Authenticator::new(0);
        assert_eq!(
            auth.verify(headers(&high), "PUT", "/v1/sessions/a", b"body", 1000),
            Err(AuthError::HighS)
        );
        assert!(
            auth.verify(headers(&low), "PUT", "/v1/sessions/a", b"body", 1000)
                .is_ok()
        );
        assert_eq!(
            auth.verify(headers(&high), "PUT", "/v1/sessions/a", b"body", 1000),
            Err(AuthError::HighS)
        );
        // Another valid (low-s) signature of the same request is the same request again.
        let (resigned, other) = p256_headers(&key, 11, 1000, &nonce, &payload);
        assert_ne!(other, signature);
        assert_eq!(
            auth.verify(headers(&resigned), "PUT", "/v1/sessions/a", b"body", 1000),
            Err(AuthError::Replayed)
        );
        // The client only ever sends low-s signatures.
        let client = ClientIdentity::generate_with(KeyAlgorithm::P256);
        for i in 0..64 {
            let signed = client.sign("GET", "/v1/sessions/x", 50 + i, b"");
            let bytes = hex::decode(&signed[3].1).unwrap();
            let parsed = p256::ecdsa::Signature::from_slice(&bytes).unwrap();
            assert!(parsed.normalize_s().is_none(), "a high s from the client");
        }
    }

    /// A request captured before a restart (an Authenticator with an empty memory) is refused
    /// after it, even one dated ahead of the old server's clock; a request signed with the
    /// new server's time is accepted.
    #[test]
    fn requests_from_before_a_start_are_refused() {
        let client = ClientIdentity::generate();
        let (before, open_at) = Authenticator::starting_now();
        let start = open_at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        assert_eq!(before.not_before(), start + MAX_AHEAD);
        // What the previous process could have accepted: dated up to MAX_AHEAD past its last
        // second, which is before this start.
        let captured = client.sign("GET", "/v1/sessions/x", start - 1 + MAX_AHEAD, b"");
        let restarted = Authenticator::new(before.not_before());
        assert_eq!(
            restarted.verify(headers(&captured), "GET", "/v1/sessions/x", b"", start),
            Err(AuthError::BeforeStart)
        );
        // Signed again at the time the refusal names: accepted from the second the port opens.
        let fresh = client.sign("GET", "/v1/sessions/x", restarted.not_before(), b"");
        assert!(
            restarted
                .verify(headers(&fresh), "GET", "/v1/sessions/x", b"", start)
                .is_ok()
        );
        // Dated further ahead than MAX_AHEAD: refused as out of the window.
        let ahead = client.sign("GET", "/v1/sessions/x", start + MAX_AHEAD + 1, b"");
        assert_eq!(
            restarted.verify(headers(&ahead), "GET", "/v1/sessions/x", b"", start),
            Err(AuthError::Stale)
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
