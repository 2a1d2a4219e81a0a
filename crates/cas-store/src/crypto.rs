//! The master key and the symmetric cryptography derived from it.

use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use aws_lc_rs::{hkdf, hmac};
use zeroize::Zeroizing;

use crate::StoreError;

/// Length in bytes of the master key.
pub const MASTER_KEY_LEN: usize = 32;

/// The CAS master key: 32 random bytes from which every record-encryption key is derived.
///
/// The bytes are wiped from memory when the value is dropped, and `Debug` never shows them. The
/// key itself never touches the disk in Shamir mode; in key-file mode it is the content of the
/// key file, in TEE mode it is sealed by the TEE.
pub struct MasterKey(Zeroizing<[u8; MASTER_KEY_LEN]>);

impl MasterKey {
    /// Generates a fresh key from the operating system's CSPRNG (through aws-lc).
    pub fn generate() -> Result<Self, StoreError> {
        let mut key = Zeroizing::new([0u8; MASTER_KEY_LEN]);
        fill_random(key.as_mut_slice())?;
        Ok(MasterKey(key))
    }

    /// Wraps existing key bytes (for example from a [`crate::TeeSealer`] that unsealed them).
    ///
    /// The caller remains responsible for wiping its own copy of `bytes`.
    pub fn from_bytes(bytes: &[u8; MASTER_KEY_LEN]) -> Self {
        MasterKey(Zeroizing::new(*bytes))
    }

    /// Wraps key bytes given as a slice; refuses any length other than 32.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, StoreError> {
        let mut key = Zeroizing::new([0u8; MASTER_KEY_LEN]);
        if bytes.len() != MASTER_KEY_LEN {
            return Err(StoreError::InvalidArgument(format!(
                "a master key is {MASTER_KEY_LEN} bytes, not {}",
                bytes.len()
            )));
        }
        key.copy_from_slice(bytes);
        Ok(MasterKey(key))
    }

    /// The raw key bytes, for a [`crate::TeeSealer`] to seal. Do not store or log them.
    pub fn as_bytes(&self) -> &[u8; MASTER_KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// Fills `out` with CSPRNG output.
pub(crate) fn fill_random(out: &mut [u8]) -> Result<(), StoreError> {
    aws_lc_rs::rand::fill(out).map_err(|_| StoreError::Crypto("random number generation failed"))
}

/// Format byte at the start of every encrypted blob, so a future format can be told apart.
const BLOB_VERSION: u8 = 1;
const TAG_LEN: usize = 16;
/// Smallest valid blob: version, nonce and tag around an empty plaintext.
const MIN_BLOB_LEN: usize = 1 + NONCE_LEN + TAG_LEN;

/// HKDF salt: fixed, because the input keying material is already a uniformly random key; the
/// salt only separates Cloister's derivations from any other use of the same bytes.
const HKDF_SALT: &[u8] = b"cloister-cas/v1/hkdf-salt";
const DATA_KEY_INFO: &[u8] = b"cloister-cas/v1/data-key/aes-256-gcm";

/// The AES-256-GCM key that encrypts everything secret in the store, derived from the master
/// key with HKDF-SHA256.
pub(crate) struct DataKey(RandomizedNonceKey);

/// What an encrypted blob is, bound into its AAD so a blob of one kind can never be accepted as
/// another.
#[derive(Clone, Copy)]
pub(crate) enum Purpose {
    KeyCheck,
    Identity,
    Record,
    Counter,
    /// The counters' generation and digest (see `vault::counters`).
    CounterState,
    /// A slot of the counter anchor file, outside the store.
    Anchor,
    /// A refused unseal, journaled beside the anchor until the next unseal audits it.
    UnsealRefusal,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::KeyCheck => b"key-check",
            Purpose::Identity => b"identity",
            Purpose::Record => b"record",
            Purpose::Counter => b"counter",
            Purpose::CounterState => b"counter-state",
            Purpose::Anchor => b"counter-anchor",
            Purpose::UnsealRefusal => b"unseal-refusal",
        }
    }
}

/// A 32-byte key derived from the master key for one use, named by `info` (HKDF-SHA256).
fn subkey(master: &MasterKey, info: &[u8]) -> Result<Zeroizing<[u8; 32]>, StoreError> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(master.as_bytes());
    let info = [info];
    let okm = prk
        .expand(&info, hkdf::HKDF_SHA256)
        .map_err(|_| StoreError::Crypto("HKDF expand failed"))?;
    let mut key = Zeroizing::new([0u8; 32]);
    okm.fill(key.as_mut_slice())
        .map_err(|_| StoreError::Crypto("HKDF expand failed"))?;
    Ok(key)
}

const DIGEST_KEY_INFO: &[u8] = b"cloister-cas/v1/counter-digest/hmac-sha256";

/// The HMAC-SHA256 key of the counters' digest (see `vault::counters`), derived from the
/// master key like the data key but with its own label.
pub(crate) struct DigestKey(hmac::Key);

impl DigestKey {
    pub(crate) fn derive(master: &MasterKey) -> Result<Self, StoreError> {
        let key = subkey(master, DIGEST_KEY_INFO)?;
        Ok(DigestKey(hmac::Key::new(hmac::HMAC_SHA256, key.as_slice())))
    }

    /// HMAC-SHA256 of `parts`, each length-prefixed.
    pub(crate) fn tag(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.0);
        for part in parts {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }
}

/// Builds the associated data for a blob: a domain label, the purpose, then each part with a
/// length prefix, so `("ab", "c")` and `("a", "bc")` can never produce the same AAD.
pub(crate) fn aad(purpose: Purpose, parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"cloister-cas/v1\0");
    for part in std::iter::once(purpose.label()).chain(parts.iter().copied()) {
        out.extend_from_slice(&(part.len() as u64).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

impl DataKey {
    /// Derives the data key from the master key.
    pub(crate) fn derive(master: &MasterKey) -> Result<Self, StoreError> {
        let key = subkey(master, DATA_KEY_INFO)?;
        let aead = RandomizedNonceKey::new(&AES_256_GCM, key.as_slice())
            .map_err(|_| StoreError::Crypto("AES-256-GCM key setup failed"))?;
        Ok(DataKey(aead))
    }

    /// Encrypts `plaintext`; returns `version || nonce || ciphertext || tag`.
    pub(crate) fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
        // Sized up front so appending the tag never reallocates, which would leave a copy of
        // the plaintext in freed memory.
        let mut buf = Vec::with_capacity(plaintext.len() + TAG_LEN);
        buf.extend_from_slice(plaintext);
        let nonce = self
            .0
            .seal_in_place_append_tag(Aad::from(aad), &mut buf)
            .map_err(|_| StoreError::Crypto("AES-256-GCM encryption failed"))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + buf.len());
        out.push(BLOB_VERSION);
        out.extend_from_slice(nonce.as_ref());
        out.extend_from_slice(&buf);
        Ok(out)
    }

    /// Decrypts a blob made by [`DataKey::seal`] with the same AAD. `None` when the blob is
    /// malformed or fails authentication; the caller names what failed.
    pub(crate) fn open(&self, aad: &[u8], blob: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if blob.len() < MIN_BLOB_LEN || blob.first() != Some(&BLOB_VERSION) {
            return None;
        }
        let nonce_bytes = blob.get(1..1 + NONCE_LEN)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce_bytes).ok()?;
        let mut buf = Zeroizing::new(blob.get(1 + NONCE_LEN..)?.to_vec());
        let len = self
            .0
            .open_in_place(nonce, Aad::from(aad), buf.as_mut_slice())
            .ok()?
            .len();
        buf.truncate(len);
        Some(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_aad_binding() {
        let key = DataKey::derive(&MasterKey::from_bytes(&[7; 32])).unwrap();
        let a = aad(Purpose::Record, &[b"t", b"k"]);
        let blob = key.seal(&a, b"hello").unwrap();
        assert_eq!(blob.len(), MIN_BLOB_LEN + 5);
        assert_eq!(key.open(&a, &blob).unwrap().as_slice(), b"hello");
        assert!(key.open(&aad(Purpose::Record, &[b"t", b"k2"]), &blob).is_none());
        assert!(key.open(&aad(Purpose::Counter, &[b"t", b"k"]), &blob).is_none());
        let other = DataKey::derive(&MasterKey::from_bytes(&[8; 32])).unwrap();
        assert!(other.open(&a, &blob).is_none());
        assert!(key.open(&a, &blob[..MIN_BLOB_LEN - 1]).is_none());
    }

    #[test]
    fn aad_parts_are_length_prefixed() {
        assert_ne!(
            aad(Purpose::Record, &[b"ab", b"c"]),
            aad(Purpose::Record, &[b"a", b"bc"])
        );
    }

    #[test]
    fn nonces_differ() {
        let key = DataKey::derive(&MasterKey::from_bytes(&[7; 32])).unwrap();
        let a = key.seal(b"", b"x").unwrap();
        let b = key.seal(b"", b"x").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn debug_redacts() {
        let key = MasterKey::from_bytes(&[0xab; 32]);
        let shown = format!("{key:?}");
        assert!(!shown.contains("ab"), "{shown}");
        assert!(!shown.contains("171"), "{shown}");
    }
}
