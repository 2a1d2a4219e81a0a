//! The CAS identity key as a signer of audit entries and volume grants.
//!
//! Every attestation signs three times with the identity key (two audit entries, one volume
//! grant), and the audit entries are signed on the one thread that writes the log, so signing
//! speed bounds how fast that thread drains. aws-lc (already linked for TLS) signs about twice
//! as fast as ed25519-dalek on x86-64; Ed25519 signatures are deterministic (RFC 8032), so both
//! give the same bytes for the same key and message, and nothing that verifies them changes.

use aws_lc_rs::signature::Ed25519KeyPair;
#[cfg(test)]
use aws_lc_rs::signature::KeyPair as _;
use ed25519_dalek::SigningKey;

use crate::StoreError;

/// The identity key in aws-lc's form, for signing.
pub(crate) struct IdentitySigner(Ed25519KeyPair);

impl IdentitySigner {
    /// The signer of `identity`; aws-lc checks that the seed gives the same public key.
    pub(crate) fn new(identity: &SigningKey) -> Result<Self, StoreError> {
        Ed25519KeyPair::from_seed_and_public_key(identity.as_bytes(), identity.verifying_key().as_bytes())
            .map(Self)
            .map_err(|e| StoreError::Corrupt(format!("the identity key is refused by the signer: {e}")))
    }

    /// The Ed25519 signature of `message`.
    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut signature = [0u8; 64];
        signature.copy_from_slice(self.0.sign(message).as_ref());
        signature
    }

    /// The public key.
    #[cfg(test)]
    pub(crate) fn public(&self) -> &[u8] {
        self.0.public_key().as_ref()
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer as _, Verifier as _};

    use super::*;

    /// The same key signs the same bytes as ed25519-dalek did, so logs and grants written
    /// before and after verify alike; and the signatures verify under the identity's public key.
    #[test]
    fn signs_exactly_as_ed25519_dalek() {
        for seed in [[0u8; 32], [9; 32], [0xff; 32]] {
            let dalek = SigningKey::from_bytes(&seed);
            let signer = IdentitySigner::new(&dalek).unwrap();
            assert_eq!(signer.public(), dalek.verifying_key().as_bytes());
            for message in [&b""[..], b"audit entry hash", &[7u8; 1000]] {
                let signature = signer.sign(message);
                assert_eq!(signature, dalek.sign(message).to_bytes());
                let parsed = ed25519_dalek::Signature::from_bytes(&signature);
                dalek.verifying_key().verify(message, &parsed).unwrap();
                let mut other = message.to_vec();
                other.push(1);
                assert!(dalek.verifying_key().verify(&other, &parsed).is_err());
            }
        }
    }
}
