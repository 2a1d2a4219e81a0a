//! The CAS's TLS identity: a self-signed certificate for its Ed25519 key, made afresh at every
//! start. Clients pin the key ([`cloister_cas_client::pin`]), so no CA is involved.

use std::sync::Arc;

pub use cloister_cas_client::pin::{TlsError, pin_of};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use zeroize::Zeroizing;

/// RFC 8410 PKCS#8 v1 prefix of an Ed25519 private key; the 32-byte seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A TLS 1.3 server configuration presenting a fresh self-signed certificate for `identity`.
pub fn server_config(
    identity: &ed25519_dalek::SigningKey,
    names: &[String],
) -> Result<rustls::ServerConfig, TlsError> {
    let mut pkcs8 = Zeroizing::new(ED25519_PKCS8_PREFIX.to_vec());
    pkcs8.extend_from_slice(&identity.to_bytes());
    let der = PrivatePkcs8KeyDer::from(pkcs8.to_vec());
    let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ED25519)
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let mut sans = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    sans.extend(names.iter().cloned());
    let mut params = rcgen::CertificateParams::new(sans).map_err(|e| TlsError::Setup(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "cloister-cas");
    let cert = params
        .self_signed(&key_pair)
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], PrivateKeyDer::Pkcs8(der))
        .map_err(|e| TlsError::Setup(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloister_cas_client::pin::{parse_pin, spki_hash};

    #[test]
    fn pin_matches_the_certificate_key() {
        let mut seed = [0u8; 32];
        rand::fill(&mut seed);
        let identity = ed25519_dalek::SigningKey::from_bytes(&seed);
        server_config(&identity, &[]).unwrap();
        // The certificate's SPKI hash equals the pin computed from the bare public key.
        let mut pkcs8 = ED25519_PKCS8_PREFIX.to_vec();
        pkcs8.extend_from_slice(&identity.to_bytes());
        let der = PrivatePkcs8KeyDer::from(pkcs8);
        let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ED25519).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".to_owned()])
            .unwrap()
            .self_signed(&key_pair)
            .unwrap();
        let hash = spki_hash(cert.der()).unwrap();
        assert_eq!(hex::encode(hash), pin_of(identity.verifying_key().as_bytes()));
        assert_eq!(parse_pin(&format!("sha256:{}", hex::encode(hash))).unwrap(), hash);
        assert!(parse_pin("abc").is_err());
    }
}
