//! Pinning of the CAS's TLS identity.
//!
//! The CAS's identity is its Ed25519 key. Its certificate is self-signed and made afresh at
//! every start; clients do not trust any CA for it but pin the SHA-256 of the key's
//! SubjectPublicKeyInfo — the value `cloister cas identity` prints. The pin can be computed from
//! the public key alone, so it is known even while the CAS is sealed.

use std::sync::Arc;

use der::{Decode, Encode};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

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

/// The client's provider is *ring*: aws-lc seeds its RNG with CPU-jitter entropy on first use
/// (a cost of milliseconds), which every short-lived `cloister-runtime` process would pay on
/// its one handshake; ring reads the OS RNG directly.
fn client_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
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

/// SHA-256 of a certificate's SubjectPublicKeyInfo (what a pin is compared with).
pub fn spki_hash(cert: &CertificateDer<'_>) -> Option<[u8; 32]> {
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
