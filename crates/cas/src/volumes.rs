//! Rollback protection for encrypted volumes.
//!
//! A volume's ciphertext lives in untrusted storage; the CAS records only its version and the
//! SHA-256 of the current ciphertext. An attested workload receives the records of its
//! service's volumes with its configuration, refuses any ciphertext that is not the recorded
//! one, and commits a new (version + 1, tag) with a compare-and-swap, so an old ciphertext can
//! never be presented as current and two concurrent writers cannot both win.
//!
//! Commits are authorised by a *grant* released inside the sealed configuration: the CAS
//! identity's Ed25519 signature over (session, service, session hash, expiry). It needs no
//! server-side state, survives CAS restarts, and dies with a session update.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};

use cloister_cas_client::protocol::VolumeState;
pub use cloister_cas_client::protocol::valid_volume_name;

const GRANT_CONTEXT: &[u8] = b"cloister/volume-grant/v1\0";
/// How long a grant stays usable: longer than any job may run.
pub const GRANT_LIFETIME_SECS: i64 = 24 * 3600;

/// Vault key of a volume record. `#` occurs in neither session nor service names.
pub fn record_key(session: &str, service: &str, volume: &str) -> String {
    format!("{session}#{service}#{volume}")
}

/// The vault key prefix of all volumes of a service.
pub fn service_prefix(session: &str, service: &str) -> String {
    format!("{session}#{service}#")
}

fn grant_message(session: &str, service: &str, session_hash: &str, expires: i64) -> Vec<u8> {
    let mut m = Vec::with_capacity(GRANT_CONTEXT.len() + session.len() + service.len() + 80);
    m.extend_from_slice(GRANT_CONTEXT);
    for part in [session, service, session_hash] {
        m.extend_from_slice(part.as_bytes());
        m.push(0);
    }
    m.extend_from_slice(&expires.to_be_bytes());
    m
}

/// A grant for `service` of `session` (at `session_hash`), valid until `expires` (Unix time),
/// signed by `sign` with the CAS identity key (see `Vault::sign_as_identity`).
pub fn issue_grant<E>(
    sign: impl FnOnce(&[u8]) -> Result<[u8; 64], E>,
    session: &str,
    service: &str,
    session_hash: &str,
    expires: i64,
) -> Result<String, E> {
    let signature = sign(&grant_message(session, service, session_hash, expires))?;
    let mut bytes = expires.to_be_bytes().to_vec();
    bytes.extend_from_slice(&signature);
    Ok(B64.encode(bytes))
}

/// Checks a grant; the error says why it is refused.
pub fn check_grant(
    identity: &VerifyingKey,
    grant: &str,
    session: &str,
    service: &str,
    session_hash: &str,
    now: i64,
) -> Result<(), &'static str> {
    let bytes = B64.decode(grant.trim()).map_err(|_| "malformed volume grant")?;
    let (expires, signature) = bytes.split_at_checked(8).ok_or("malformed volume grant")?;
    let expires = i64::from_be_bytes(expires.try_into().map_err(|_| "malformed volume grant")?);
    let signature = Signature::from_slice(signature).map_err(|_| "malformed volume grant")?;
    identity
        .verify(
            &grant_message(session, service, session_hash, expires),
            &signature,
        )
        .map_err(|_| "volume grant is not valid for this session (updated since the attestation?)")?;
    if now > expires {
        return Err("volume grant has expired");
    }
    Ok(())
}

/// Parses a stored record.
pub fn parse_state(bytes: &[u8]) -> Option<VolumeState> {
    serde_json::from_slice(bytes).ok()
}

/// Whether `tag` looks like a SHA-256 in hex.
pub fn valid_tag(tag: &str) -> bool {
    tag.len() == 64
        && tag
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer as _, SigningKey};

    use super::*;

    #[test]
    fn grants_verify_only_for_their_subject_and_time() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let public = key.verifying_key();
        let grant = issue_grant(|m| Ok::<_, ()>(key.sign(m).to_bytes()), "s", "svc", "h1", 1000).unwrap();
        assert!(check_grant(&public, &grant, "s", "svc", "h1", 999).is_ok());
        assert!(check_grant(&public, &grant, "s", "svc", "h1", 1001).is_err());
        assert!(check_grant(&public, &grant, "s", "other", "h1", 999).is_err());
        assert!(check_grant(&public, &grant, "s", "svc", "h2", 999).is_err());
        assert!(check_grant(&public, &grant, "t", "svc", "h1", 999).is_err());
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert!(check_grant(&other, &grant, "s", "svc", "h1", 999).is_err());
        // A later expiry cannot be spliced onto the signature.
        let mut bytes = B64.decode(&grant).unwrap();
        bytes[..8].copy_from_slice(&5000i64.to_be_bytes());
        assert!(check_grant(&public, &B64.encode(bytes), "s", "svc", "h1", 2000).is_err());
        assert!(check_grant(&public, "!!", "s", "svc", "h1", 0).is_err());
        assert!(check_grant(&public, "AAAA", "s", "svc", "h1", 0).is_err());
    }

    #[test]
    fn volume_names() {
        assert!(valid_volume_name("state"));
        assert!(valid_volume_name("model-v1.2"));
        for bad in ["", "State", "-x", "a/b", "a#b", &"x".repeat(65)] {
            assert!(!valid_volume_name(bad), "{bad}");
        }
    }
}
