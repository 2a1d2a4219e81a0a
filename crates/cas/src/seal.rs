//! Sealing a released configuration to the workload's key with AWS-LC's HPKE (RFC 9180, base
//! mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305): the suite that
//! `cloister_cas_client::seal` opens in the runtime with the `hpke` crate. The CAS seals one
//! configuration per attestation, and the `hpke` crate's X25519 (curve25519-dalek's portable
//! ladder) was about a sixth of the CAS's processor time under load; AWS-LC's is assembly,
//! already linked for TLS, and its HPKE is BoringSSL's, so no construction is written here.

use std::ptr::NonNull;

use aws_lc_sys::{
    EVP_HPKE_CTX, EVP_HPKE_CTX_free, EVP_HPKE_CTX_max_overhead, EVP_HPKE_CTX_new, EVP_HPKE_CTX_seal,
    EVP_HPKE_CTX_setup_sender, EVP_hpke_chacha20_poly1305, EVP_hpke_hkdf_sha256, EVP_hpke_x25519_hkdf_sha256,
};
use cloister_cas_client::seal::SealError;

/// An X25519 public key's length, and so an encapsulated key's.
const X25519_LEN: usize = 32;

/// An HPKE context, freed on drop.
struct Context(NonNull<EVP_HPKE_CTX>);

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: the context came from EVP_HPKE_CTX_new and is freed once, here; freeing also
        // wipes its keys.
        #[allow(unsafe_code)]
        unsafe {
            EVP_HPKE_CTX_free(self.0.as_ptr())
        }
    }
}

/// Encrypts `plaintext` to the X25519 `public_key` with `info` and `aad`; returns (encapsulated
/// key, ciphertext), as `cloister_cas_client::seal::WorkloadKey::open` takes them.
pub(crate) fn seal(
    public_key: &[u8],
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), SealError> {
    if public_key.len() != X25519_LEN {
        return Err(SealError::BadPublicKey);
    }
    // SAFETY: EVP_HPKE_CTX_new takes nothing and returns an owned context or null.
    #[allow(unsafe_code)]
    let context = Context(NonNull::new(unsafe { EVP_HPKE_CTX_new() }).ok_or(SealError::Seal)?);
    let mut enc = vec![0u8; X25519_LEN];
    let mut enc_len = 0usize;
    // SAFETY: the context is live and ours; every pointer comes with its slice's length and
    // outlives the call; the algorithm descriptors are static. AWS-LC writes at most `enc.len()`
    // bytes to `enc` and refuses a public key whose shared secret would be all zero.
    #[allow(unsafe_code)]
    let set_up = unsafe {
        EVP_HPKE_CTX_setup_sender(
            context.0.as_ptr(),
            enc.as_mut_ptr(),
            &mut enc_len,
            enc.len(),
            EVP_hpke_x25519_hkdf_sha256(),
            EVP_hpke_hkdf_sha256(),
            EVP_hpke_chacha20_poly1305(),
            public_key.as_ptr(),
            public_key.len(),
            info.as_ptr(),
            info.len(),
        )
    };
    if set_up != 1 || enc_len != X25519_LEN {
        return Err(SealError::BadPublicKey);
    }
    // SAFETY: the context is live and set up.
    #[allow(unsafe_code)]
    let overhead = unsafe { EVP_HPKE_CTX_max_overhead(context.0.as_ptr()) };
    let mut ciphertext = vec![0u8; plaintext.len() + overhead];
    let mut written = 0usize;
    // SAFETY: as above; AWS-LC writes at most `ciphertext.len()` bytes.
    #[allow(unsafe_code)]
    let sealed = unsafe {
        EVP_HPKE_CTX_seal(
            context.0.as_ptr(),
            ciphertext.as_mut_ptr(),
            &mut written,
            ciphertext.len(),
            plaintext.as_ptr(),
            plaintext.len(),
            aad.as_ptr(),
            aad.len(),
        )
    };
    if sealed != 1 || written > ciphertext.len() {
        return Err(SealError::Seal);
    }
    ciphertext.truncate(written);
    Ok((enc, ciphertext))
}

#[cfg(test)]
mod tests {
    use cloister_cas_client::seal::{WorkloadKey, config_info};

    use super::*;

    /// What AWS-LC seals, the runtime's `hpke` crate opens, and only with the same key, info,
    /// nonce and bytes.
    #[test]
    fn the_runtime_opens_it_and_every_binding_holds() {
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
        let mut other_enc = enc.clone();
        other_enc[5] ^= 1;
        assert_eq!(
            key.open(&other_enc, &ct, &info, b"nonce").err(),
            Some(SealError::Open)
        );
        assert_eq!(
            WorkloadKey::generate().open(&enc, &ct, &info, b"nonce").err(),
            Some(SealError::Open)
        );
        // Each seal is fresh.
        let (enc2, ct2) = seal(&key.public_bytes(), &info, b"nonce", b"secret config").unwrap();
        assert!(enc2 != enc && ct2 != ct);
    }

    /// Keys that are not X25519 keys, or whose shared secret would be all zero, are refused.
    #[test]
    fn bad_public_keys_are_refused() {
        for bad in [&[][..], &[1u8; 31][..], &[1u8; 33][..], &[0u8; 32][..]] {
            assert_eq!(
                seal(bad, b"i", b"a", b"p").err(),
                Some(SealError::BadPublicKey),
                "{bad:?}"
            );
        }
        // u = 1, a point of small order: its shared secret with any clamped scalar is zero.
        let mut low_order = [0u8; 32];
        low_order[0] = 1;
        assert_eq!(
            seal(&low_order, b"i", b"a", b"p").err(),
            Some(SealError::BadPublicKey)
        );
    }
}
