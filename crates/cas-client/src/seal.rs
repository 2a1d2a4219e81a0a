//! Configuration released to a workload is encrypted to the fresh key the workload bound into
//! its evidence, with HPKE (RFC 9180) in base mode: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
//! ChaCha20-Poly1305. The `info` names the protocol and the session hash; the AAD is the nonce,
//! so a released configuration opens only for the attestation it answered. The CAS seals with
//! AWS-LC's implementation of the same suite (`cloister-cas`'s `seal`, whose tests open what it
//! seals with [`WorkloadKey::open`]).

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

/// The `info` for a session: the domain tag and the session hash.
pub fn config_info(session_hash: &str) -> Vec<u8> {
    let mut info = CONFIG_INFO.to_vec();
    info.push(0);
    info.extend_from_slice(session_hash.as_bytes());
    info
}
