//! Key pairs and certificates (rcgen on aws-lc-rs).

use rand::RngExt as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData as _, RsaKeySize, SerialNumber, SignatureAlgorithm,
};
use time::{Duration, OffsetDateTime, UtcOffset};
use zeroize::Zeroizing;

use crate::model::{KeyAlgorithm, SecretKind};

/// Certificates start a little before `now`, so that a peer whose clock is slightly behind
/// does not reject a freshly issued certificate.
const BACKDATE: Duration = Duration::minutes(5);

fn signature_algorithm(alg: KeyAlgorithm) -> &'static SignatureAlgorithm {
    match alg {
        KeyAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
        KeyAlgorithm::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyAlgorithm::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 => &rcgen::PKCS_RSA_SHA256,
    }
}

/// A fresh key pair.
pub(crate) fn generate(alg: KeyAlgorithm) -> Result<Zeroizing<KeyPair>, String> {
    let sig = signature_algorithm(alg);
    let key = match alg {
        KeyAlgorithm::Rsa2048 => KeyPair::generate_rsa_for(sig, RsaKeySize::_2048),
        KeyAlgorithm::Rsa3072 => KeyPair::generate_rsa_for(sig, RsaKeySize::_3072),
        _ => KeyPair::generate_for(sig),
    };
    key.map(Zeroizing::new)
        .map_err(|e| format!("key generation failed: {e}"))
}

/// Loads a PKCS#8 DER private key of algorithm `alg`.
pub(crate) fn load(pkcs8: &[u8], alg: KeyAlgorithm) -> Result<Zeroizing<KeyPair>, String> {
    KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8.into(), signature_algorithm(alg))
        .map(Zeroizing::new)
        .map_err(|e| format!("stored private key does not load: {e}"))
}

/// PKCS#8 DER of a key pair.
pub(crate) fn pkcs8(key: &KeyPair) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(key.serialize_der())
}

/// SubjectPublicKeyInfo DER of a key pair.
pub(crate) fn spki(key: &KeyPair) -> Vec<u8> {
    key.subject_public_key_info()
}

/// What a certificate says about its subject.
pub(crate) struct Subject<'a> {
    pub kind: SecretKind,
    pub algorithm: KeyAlgorithm,
    pub common_name: &'a str,
    pub san: &'a [String],
    pub lifetime_seconds: u64,
}

/// The CA that signs a certificate.
pub(crate) struct CaRef<'a> {
    pub cert_der: &'a [u8],
    pub key: &'a KeyPair,
}

/// Issues a certificate for `key`, self-signed when `ca` is `None`. Returns its DER.
///
/// The validity starts [`BACKDATE`] before `now` and never extends past the issuer's own
/// expiry, since a chain is only as valid as its shortest-lived link.
pub(crate) fn issue(
    subject: &Subject<'_>,
    key: &KeyPair,
    ca: Option<&CaRef<'_>>,
    now: OffsetDateTime,
) -> Result<Vec<u8>, String> {
    let now = now.to_offset(UtcOffset::UTC).replace_nanosecond(0).unwrap_or(now);
    let lifetime = Duration::seconds(i64::try_from(subject.lifetime_seconds).unwrap_or(i64::MAX));
    let mut not_after = now
        .checked_add(lifetime)
        .ok_or("certificate lifetime overflows")?;
    if let Some(ca) = ca
        && let Some(ca_end) = not_after_of(ca.cert_der)
    {
        not_after = not_after.min(ca_end);
    }

    let mut params = CertificateParams::new(subject.san.to_vec()).map_err(|e| format!("invalid SAN: {e}"))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, subject.common_name);
    params.not_before = now.checked_sub(BACKDATE).unwrap_or(now);
    params.not_after = not_after;
    params.serial_number = Some(random_serial());
    if subject.kind == SecretKind::X509Ca {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
    } else {
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if matches!(subject.algorithm, KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072) {
            // RSA key exchange in TLS 1.2 encrypts to the certificate's key.
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
    }
    let cert = match ca {
        None => params.self_signed(key),
        Some(ca) => {
            params.use_authority_key_identifier_extension = true;
            let issuer = Issuer::from_ca_cert_der(&ca.cert_der.into(), ca.key)
                .map_err(|e| format!("issuer certificate does not parse: {e}"))?;
            params.signed_by(key, &issuer)
        }
    }
    .map_err(|e| format!("certificate issuance failed: {e}"))?;
    Ok(cert.der().to_vec())
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rng().fill(&mut bytes[..]);
    // A positive INTEGER whose first byte is not zero keeps the DER encoding at 16 bytes.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

/// The certificate's notAfter, if it parses.
pub(crate) fn not_after_of(cert_der: &[u8]) -> Option<OffsetDateTime> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    Some(cert.validity().not_after.to_datetime())
}

/// The certificate's SubjectPublicKeyInfo DER, if it parses.
pub(crate) fn spki_of_cert(cert_der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    Some(cert.public_key().raw.to_vec())
}
