//! The CAS's TLS identity and the clients' pinning of it.
//!
//! The CAS's identity is its Ed25519 key (kept sealed in the vault). Its certificate is
//! self-signed and made afresh at every start; clients do not trust any CA for it but pin the
//! SHA-256 of the key's SubjectPublicKeyInfo — the value `cloister cas identity` prints. The
//! pin can be computed from the public key alone, so it is known even while the CAS is sealed.

use std::sync::Arc;

use der::{Decode, Encode};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// RFC 8410 PKCS#8 v1 prefix of an Ed25519 private key; the 32-byte seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// RFC 8410 SubjectPublicKeyInfo prefix of an Ed25519 public key; the 32-byte key follows.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Errors of the TLS setup.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Certificate generation or TLS configuration failed.
    #[error("TLS setup: {0}")]
    Setup(String),
    /// A pin is not 32 bytes of hex.
    #[error("a CAS identity pin is 64 hex digits (sha256:<hex> also accepted)")]
    BadPin,
}

/// The pin of an Ed25519 public key: hex SHA-256 of its SubjectPublicKeyInfo.
pub fn pin_of(public_key: &[u8; 32]) -> String {
    let mut spki = ED25519_SPKI_PREFIX.to_vec();
    spki.extend_from_slice(public_key);
    hex::encode(Sha256::digest(&spki))
}

/// Parses a pin (`<hex>` or `sha256:<hex>`).
pub fn parse_pin(text: &str) -> Result<[u8; 32], TlsError> {
    let hex_pin = text.trim().strip_prefix("sha256:").unwrap_or(text.trim());
    let mut pin = [0u8; 32];
    hex::decode_to_slice(hex_pin, &mut pin).map_err(|_| TlsError::BadPin)?;
    Ok(pin)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The client's provider is *ring*: aws-lc seeds its RNG with CPU-jitter entropy on first use
/// (10–20 ms measured here), which every short-lived `cloister runtime` process would pay on
/// its one handshake; ring reads the OS RNG directly.
fn client_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
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

/// A TLS 1.3 client configuration that accepts exactly the server whose key has `pin`.
pub fn client_config(pin: [u8; 32]) -> Result<rustls::ClientConfig, TlsError> {
    let provider = client_provider();
    let verifier = Arc::new(PinnedKey {
        pin,
        provider: provider.clone(),
    });
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// Accepts a server certificate only if its public key matches the pin; names and CAs do not
/// matter. The handshake signature is still verified with that key, so only the holder of the
/// pinned private key can complete the handshake.
#[derive(Debug)]
struct PinnedKey {
    pin: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

fn spki_hash(cert: &CertificateDer<'_>) -> Option<[u8; 32]> {
    let parsed = x509_cert::Certificate::from_der(cert.as_ref()).ok()?;
    let spki = parsed.tbs_certificate().subject_public_key_info().to_der().ok()?;
    Some(Sha256::digest(&spki).into())
}

impl ServerCertVerifier for PinnedKey {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match spki_hash(end_entity) {
            Some(hash) if constant_time_eq(&hash, &self.pin) => Ok(ServerCertVerified::assertion()),
            Some(_) => Err(rustls::Error::General(
                "the CAS's key does not match the pinned identity".into(),
            )),
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadEncoding,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not accepted".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

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
