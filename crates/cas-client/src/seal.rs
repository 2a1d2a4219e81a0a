//! Configuration released to a workload is encrypted to the fresh key the workload bound into
//! its evidence, with HPKE (RFC 9180) in base mode: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
//! ChaCha20-Poly1305. The `info` names the protocol and the session hash; the AAD is the nonce,
//! so a released configuration opens only for the attestation it answered.

use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, OpModeR, Serializable};
use zeroize::Zeroizing;

/// Domain tag at the start of every `info`.
pub const CONFIG_INFO: &[u8] = b"cloister-cas-config-v1";

/// Errors of sealing and opening.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// The public key is not an X25519 key.
    #[error("workload public key is not a 32-byte X25519 key")]
    BadPublicKey,
    /// The encapsulated key is malformed.
    #[error("malformed encapsulated key")]
    BadEncappedKey,
    /// Decryption failed: wrong key, info, AAD, or a modified ciphertext.
    #[error("cannot open the sealed configuration")]
    Open,
    /// Encryption failed.
    #[error("cannot seal the configuration")]
    Seal,
}

/// A workload's ephemeral HPKE key pair.
pub struct WorkloadKey {
    private: <X25519HkdfSha256 as Kem>::PrivateKey,
    public: <X25519HkdfSha256 as Kem>::PublicKey,
}

impl WorkloadKey {
    /// A fresh key pair.
    pub fn generate() -> Self {
        let (private, public) = X25519HkdfSha256::gen_keypair();
        Self { private, public }
    }

    /// The public key bytes (bound into the evidence's report data).
    pub fn public_bytes(&self) -> Vec<u8> {
        self.public.to_bytes().to_vec()
    }

    /// Opens what [`seal`] made for this key.
    pub fn open(
        &self,
        enc: &[u8],
        ciphertext: &[u8],
        info: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let encapped =
            <X25519HkdfSha256 as Kem>::EncappedKey::from_bytes(enc).map_err(|_| SealError::BadEncappedKey)?;
        hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
            &OpModeR::Base,
            &self.private,
            &encapped,
            info,
            ciphertext,
            aad,
        )
        .map(Zeroizing::new)
        .map_err(|_| SealError::Open)
    }
}

/// Encrypts `plaintext` to `public_key`; returns (encapsulated key, ciphertext). The CAS seals
/// with AWS-LC's HPKE instead (`cloister-cas`'s `seal`); this one checks the open side here.
#[cfg(test)]
fn seal(
    public_key: &[u8],
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), SealError> {
    let public =
        <X25519HkdfSha256 as Kem>::PublicKey::from_bytes(public_key).map_err(|_| SealError::BadPublicKey)?;
    let (encapped, ciphertext) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
        &hpke::OpModeS::Base,
        &public,
        info,
        plaintext,
        aad,
    )
    .map_err(|_| SealError::Seal)?;
    Ok((encapped.to_bytes().to_vec(), ciphertext))
}

/// The `info` for a session: the domain tag and the session hash.
pub fn config_info(session_hash: &str) -> Vec<u8> {
    let mut info = CONFIG_INFO.to_vec();
    info.push(0);
    info.extend_from_slice(session_hash.as_bytes());
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_binding() {
        let key = WorkloadKey::generate();
        let info = config_info("abc");
        let (enc, ct) = seal(&key.public_bytes(), &info, b"nonce", b"secret config").unwrap();
        assert_eq!(
            &key.open(&enc, &ct, &info, b"nonce").unwrap()[..],
            b"secret config"
        );
        assert_eq!(
            key.open(&enc, &ct, &config_info("abd"), b"nonce").err(),
            Some(SealError::Open)
        );
        assert_eq!(
            key.open(&enc, &ct, &info, b"other nonce").err(),
            Some(SealError::Open)
        );
        let mut tampered = ct.clone();
        tampered[0] ^= 1;
        assert_eq!(
            key.open(&enc, &tampered, &info, b"nonce").err(),
            Some(SealError::Open)
        );
        assert_eq!(
            WorkloadKey::generate().open(&enc, &ct, &info, b"nonce").err(),
            Some(SealError::Open)
        );
        assert_eq!(
            seal(b"short", &info, b"", b"x").err(),
            Some(SealError::BadPublicKey)
        );
    }
}
