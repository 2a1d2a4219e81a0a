//! Secret values: generation, carry-over across updates, imports and formatting.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rand::RngExt as _;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::error::SessionError;
use crate::keys;
use crate::model::{ExportTarget, Importer, KeyAlgorithm, SecretKind, SecretSpec, Session};
use crate::placeholder::Format;
use crate::validate::{self, DEFAULT_SECRET_SIZE};

/// The value of one secret.
///
/// | kind | `value` | `public` | `chain` |
/// |------|---------|----------|---------|
/// | `ascii` | the characters | — | — |
/// | `binary` | the bytes | — | — |
/// | `private-key` | PKCS#8 DER | SubjectPublicKeyInfo DER | — |
/// | `x509`, `x509-ca` | PKCS#8 DER of the certificate's key | certificate DER | issuer certificates DER, nearest first |
///
/// Serialized (for sealed storage) with byte strings in base64. `Debug` shows only lengths.
#[derive(Clone, Serialize, Deserialize)]
pub struct SecretValue {
    /// The kind of secret.
    pub kind: SecretKind,
    /// The key algorithm, for key kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<KeyAlgorithm>,
    #[serde(with = "b64_secret")]
    value: Zeroizing<Vec<u8>>,
    /// Public key (SPKI DER) for `private-key`, certificate DER for `x509`/`x509-ca`.
    #[serde(default, with = "b64_opt", skip_serializing_if = "Option::is_none")]
    pub public: Option<Vec<u8>>,
    /// Issuer certificates (DER), nearest issuer first.
    #[serde(default, with = "b64_list", skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<Vec<u8>>,
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretValue")
            .field("kind", &self.kind)
            .field("algorithm", &self.algorithm)
            .field("value", &format_args!("<{} bytes redacted>", self.value.len()))
            .field(
                "public",
                &self.public.as_ref().map(|p| format!("<{} bytes>", p.len())),
            )
            .field("chain", &format_args!("<{} certificates>", self.chain.len()))
            .finish()
    }
}

impl SecretValue {
    fn plain(kind: SecretKind, value: Vec<u8>) -> Self {
        SecretValue {
            kind,
            algorithm: None,
            value: Zeroizing::new(value),
            public: None,
            chain: Vec::new(),
        }
    }
}

/// The values of all secrets of one session, by name. `Debug` shows no secret bytes.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secrets(BTreeMap<String, SecretValue>);

impl Secrets {
    /// The value of the secret called `name`.
    pub fn get(&self, name: &str) -> Option<&SecretValue> {
        self.0.get(name)
    }

    /// The secrets' names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// The number of secrets.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no secrets.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter()).finish()
    }
}

/// Fetches the value of a secret exported by another session.
///
/// The CAS server implements it by loading `from_session`, calling [`check_export`] on it with
/// the importer — its name, **its owner's key** (the importing session's creator, which the
/// server records) and the hash of the importing version — and returning the secret's current
/// value from that session's [`Secrets`].
pub trait ImportResolver {
    /// The value of `secret` in session `from_session`, for the version of
    /// `importing_session` whose hash is `importing_hash`.
    fn resolve(
        &self,
        from_session: &str,
        secret: &str,
        importing_session: &str,
        importing_hash: &str,
    ) -> Result<SecretValue, SessionError>;
}

/// Checks that `exporting` lets `importer` import its secret `secret`: the secret must exist,
/// must not itself be imported, and its `export` list must hold `"*"` or an entry naming
/// the importer's session and owner and, if the entry pins hashes, the importing version's
/// hash (see [`crate::ExportTarget`]). A session of the right name owned by another key, or a
/// version the exporter has not pinned, gets nothing.
pub fn check_export(exporting: &Session, secret: &str, importer: &Importer<'_>) -> Result<(), SessionError> {
    let refuse = |reason: &str| SessionError::ImportRefused {
        session: exporting.name.clone(),
        secret: secret.to_string(),
        reason: reason.to_string(),
    };
    let spec = exporting
        .secrets
        .iter()
        .find(|s| s.name == secret)
        .ok_or_else(|| refuse("no such secret"))?;
    if spec.import.is_some() {
        return Err(refuse("the secret is itself imported and cannot be re-exported"));
    }
    if spec.export.iter().any(|target| target.admits(importer)) {
        return Ok(());
    }
    let named = spec.export.iter().any(|target| {
        matches!(target, ExportTarget::Session { session, owner, .. }
            if session == importer.session && owner == importer.owner)
    });
    Err(refuse(&if named {
        format!(
            "the export to session '{}' pins other versions than {}: the exporter must pin this \
             hash before this version can import",
            importer.session, importer.hash
        )
    } else {
        format!(
            "session '{}' owned by {} is not in its export list",
            importer.session, importer.owner
        )
    }))
}

/// Produces the values of all secrets of `session`.
///
/// `previous` is the session being replaced and its secrets (`None` when creating). For each
/// secret, in this order of rules:
///
/// 1. **Imported** secrets are resolved through `imports` every time, so that they follow the
///    exporter's current value; the value must be of the declared kind.
/// 2. **Explicit** values (`value:`) are used as given.
/// 3. **Generated** secrets keep their previous value when the previous session had a
///    generated secret of the same name with the same generation parameters, and
///    `previous`'s secrets hold a value of the same kind and algorithm:
///    * `ascii`/`binary`: same kind and `size`;
///    * `private-key`: same kind and `algorithm`;
///    * `x509`/`x509-ca`: the **key** is kept on same kind and `algorithm`. The
///      **certificate** is kept too only if, in addition, `issuer`, `common_name`, `san` and
///      `valid_for` are unchanged, the issuer's certificate (if any) is the one that signed
///      the previous certificate, and the previous certificate has not expired at `now`;
///      otherwise a new certificate is issued for the kept key. A re-issued CA therefore
///      re-issues every certificate it signs.
///
///    Anything else (a new secret, a changed kind or parameter, a secret that was explicit or
///    imported before) generates a new value. Only the immediately previous session is
///    consulted, so a secret removed in one update and re-added in a later one is new.
///    Comparisons are made on normalized specs, so spelling out a default does not rotate a
///    secret. Changing `export` or `export_public` never changes a value.
///
/// The session is validated first ([`Session::validate`]).
///
/// Certificates are valid from five minutes before `now` for `valid_for`, but never beyond
/// their issuer's expiry.
pub fn materialize_secrets(
    session: &Session,
    previous: Option<(&Session, &Secrets)>,
    imports: &dyn ImportResolver,
    now: OffsetDateTime,
) -> Result<Secrets, SessionError> {
    // The session may come from storage or from code rather than from parse_session; its
    // sizes and issuer links must be sane before anything is generated.
    session.validate()?;
    let mut current = session.clone();
    validate::normalize(&mut current);
    let previous = previous.map(|(s, secrets)| {
        let mut s = s.clone();
        validate::normalize(&mut s);
        (s, secrets)
    });
    let mut m = Materializer {
        session_name: &current.name,
        session_hash: session.hash(),
        specs: current.secrets.iter().map(|s| (s.name.as_str(), s)).collect(),
        previous: previous.as_ref().map(|(s, secrets)| Previous {
            specs: s.secrets.iter().map(|s| (s.name.as_str(), s)).collect(),
            secrets,
        }),
        imports,
        now,
        out: BTreeMap::new(),
    };
    let names: Vec<&str> = m.specs.keys().copied().collect();
    for name in names {
        m.materialize(name, 0)?;
    }
    Ok(Secrets(m.out))
}

/// Re-resolves the imported secrets of `session` in `secrets` (its stored values), so that a
/// session about to be released follows its exporters: a value the exporter rotated is
/// replaced, and an import the exporter has since withdrawn (or whose owner no longer
/// matches, or that pins other versions of the importer) is an error, [`SessionError::ImportRefused`] from `imports`. Generated and
/// explicit secrets are left as they are.
pub fn refresh_imports(
    session: &Session,
    secrets: &mut Secrets,
    imports: &dyn ImportResolver,
) -> Result<(), SessionError> {
    // Hashed only when something is imported: the exporters may pin the importing version.
    let mut hash = None;
    for spec in &session.secrets {
        let Some(import) = &spec.import else {
            continue;
        };
        let hash = hash.get_or_insert_with(|| session.hash());
        let value = imports.resolve(&import.session, &import.secret, &session.name, hash)?;
        if value.kind != spec.kind {
            return Err(SessionError::secret(
                &spec.name,
                format!(
                    "imported secret is of kind {}, but the session declares {}",
                    value.kind, spec.kind
                ),
            ));
        }
        secrets.0.insert(spec.name.clone(), value);
    }
    Ok(())
}

struct Previous<'a> {
    specs: BTreeMap<&'a str, &'a SecretSpec>,
    secrets: &'a Secrets,
}

struct Materializer<'a> {
    session_name: &'a str,
    /// The hash of the version being materialized, which exporters may pin.
    session_hash: String,
    specs: BTreeMap<&'a str, &'a SecretSpec>,
    previous: Option<Previous<'a>>,
    imports: &'a dyn ImportResolver,
    now: OffsetDateTime,
    out: BTreeMap<String, SecretValue>,
}

const ALPHANUMERIC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

impl Materializer<'_> {
    /// Materializes `name` after its issuer, so that the issuer's (possibly new) certificate
    /// is known when deciding whether to keep this one.
    fn materialize(&mut self, name: &str, depth: usize) -> Result<(), SessionError> {
        if self.out.contains_key(name) {
            return Ok(());
        }
        if depth > self.specs.len() {
            return Err(SessionError::secret(name, "issuer chain forms a cycle"));
        }
        let spec = *self
            .specs
            .get(name)
            .ok_or_else(|| SessionError::secret(name, "no such secret in the session"))?;
        if spec.import.is_none()
            && let Some(issuer) = &spec.issuer
        {
            self.materialize(issuer, depth + 1)?;
        }
        let value = self.produce(spec).map_err(|reason| match reason {
            Produce::Error(e) => e,
            Produce::Reason(r) => SessionError::secret(name, r),
        })?;
        self.out.insert(name.to_string(), value);
        Ok(())
    }

    /// The previous value of `spec`'s secret when the previous session generated it from
    /// a spec for which `same` holds.
    fn previous_generated(
        &self,
        spec: &SecretSpec,
        same: impl Fn(&SecretSpec) -> bool,
    ) -> Option<&SecretValue> {
        let prev = self.previous.as_ref()?;
        let old = prev.specs.get(spec.name.as_str())?;
        let generated = old.import.is_none() && old.value.is_none();
        if !generated || old.kind != spec.kind || !same(old) {
            return None;
        }
        prev.secrets
            .get(&spec.name)
            .filter(|v| v.kind == spec.kind && v.algorithm == spec.algorithm)
    }

    fn produce(&self, spec: &SecretSpec) -> Result<SecretValue, Produce> {
        if let Some(import) = &spec.import {
            let value = self
                .imports
                .resolve(
                    &import.session,
                    &import.secret,
                    self.session_name,
                    &self.session_hash,
                )
                .map_err(Produce::Error)?;
            if value.kind != spec.kind {
                return Err(Produce::Reason(format!(
                    "imported secret is of kind {}, but the session declares {}",
                    value.kind, spec.kind
                )));
            }
            return Ok(value);
        }
        match spec.kind {
            SecretKind::Ascii | SecretKind::Binary => self.produce_plain(spec),
            SecretKind::PrivateKey => self.produce_key(spec),
            SecretKind::X509 | SecretKind::X509Ca => self.produce_cert(spec),
        }
    }

    fn produce_plain(&self, spec: &SecretSpec) -> Result<SecretValue, Produce> {
        if let Some(v) = &spec.value {
            let bytes = match spec.kind {
                SecretKind::Binary => B64
                    .decode(v.trim())
                    .map_err(|_| Produce::Reason("explicit value is not base64".into()))?,
                _ => v.as_bytes().to_vec(),
            };
            return Ok(SecretValue::plain(spec.kind, bytes));
        }
        if let Some(old) = self.previous_generated(spec, |old| old.size == spec.size) {
            return Ok(old.clone());
        }
        let size = spec.size.unwrap_or(DEFAULT_SECRET_SIZE) as usize;
        let mut rng = rand::rng();
        let bytes: Vec<u8> = match spec.kind {
            SecretKind::Ascii => (0..size)
                .map(|_| {
                    let i = rng.random_range(0..ALPHANUMERIC.len());
                    ALPHANUMERIC.get(i).copied().unwrap_or(b'A')
                })
                .collect(),
            _ => {
                let mut buf = vec![0u8; size];
                rng.fill(&mut buf[..]);
                buf
            }
        };
        Ok(SecretValue::plain(spec.kind, bytes))
    }

    fn produce_key(&self, spec: &SecretSpec) -> Result<SecretValue, Produce> {
        if let Some(old) = self.previous_generated(spec, |old| old.algorithm == spec.algorithm) {
            return Ok(old.clone());
        }
        let alg = spec.algorithm.unwrap_or_default();
        let key = keys::generate(alg).map_err(Produce::Reason)?;
        Ok(SecretValue {
            kind: spec.kind,
            algorithm: Some(alg),
            value: keys::pkcs8(&key),
            public: Some(keys::spki(&key)),
            chain: Vec::new(),
        })
    }

    fn produce_cert(&self, spec: &SecretSpec) -> Result<SecretValue, Produce> {
        let alg = spec.algorithm.unwrap_or_default();
        let issuer = match &spec.issuer {
            None => None,
            Some(name) => Some(
                self.out
                    .get(name)
                    .ok_or_else(|| Produce::Reason(format!("issuer '{name}' has no value")))?,
            ),
        };
        let issuer_cert = match issuer {
            None => None,
            Some(ca) => Some(
                ca.public
                    .as_deref()
                    .ok_or_else(|| Produce::Reason("issuer has no certificate".into()))?,
            ),
        };

        let old = self.previous_generated(spec, |old| old.algorithm == spec.algorithm);
        let keep_cert = old.is_some_and(|old_value| {
            self.previous
                .as_ref()
                .and_then(|p| p.specs.get(spec.name.as_str()))
                .is_some_and(|old_spec| {
                    old_spec.issuer == spec.issuer
                        && old_spec.common_name == spec.common_name
                        && old_spec.san == spec.san
                        && old_spec.valid_for == spec.valid_for
                })
                && old_value.chain.first().map(Vec::as_slice) == issuer_cert
                && old_value
                    .public
                    .as_deref()
                    .and_then(keys::not_after_of)
                    .is_some_and(|end| end > self.now)
        });
        if keep_cert && let Some(old) = old {
            return Ok(old.clone());
        }

        let key = match old {
            Some(old) => keys::load(&old.value, alg).map_err(Produce::Reason)?,
            None => keys::generate(alg).map_err(Produce::Reason)?,
        };
        let ca_key = match issuer {
            None => None,
            Some(ca) => {
                let ca_alg = ca
                    .algorithm
                    .ok_or_else(|| Produce::Reason("issuer has no key algorithm".into()))?;
                Some(keys::load(&ca.value, ca_alg).map_err(Produce::Reason)?)
            }
        };
        let ca_ref = match (issuer_cert, ca_key.as_deref()) {
            (Some(cert_der), Some(key)) => Some(keys::CaRef { cert_der, key }),
            _ => None,
        };
        let common_name = spec.common_name.as_deref().unwrap_or(&spec.name);
        let lifetime = spec.valid_for.map_or_else(
            || {
                if spec.kind == SecretKind::X509Ca {
                    validate::DEFAULT_CA_LIFETIME.seconds()
                } else {
                    validate::DEFAULT_LEAF_LIFETIME.seconds()
                }
            },
            |l| l.seconds(),
        );
        let subject = keys::Subject {
            kind: spec.kind,
            algorithm: alg,
            common_name,
            san: &spec.san,
            lifetime_seconds: lifetime,
        };
        let cert = keys::issue(&subject, &key, ca_ref.as_ref(), self.now).map_err(Produce::Reason)?;
        let chain = match issuer {
            None => Vec::new(),
            Some(ca) => ca.public.iter().chain(ca.chain.iter()).cloned().collect(),
        };
        Ok(SecretValue {
            kind: spec.kind,
            algorithm: Some(alg),
            value: keys::pkcs8(&key),
            public: Some(cert),
            chain,
        })
    }
}

enum Produce {
    Error(SessionError),
    Reason(String),
}

fn pem(tag: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(tag, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

fn public_key_der(secret: &SecretValue) -> Option<Vec<u8>> {
    let public = secret.public.as_deref()?;
    match secret.kind {
        SecretKind::PrivateKey => Some(public.to_vec()),
        SecretKind::X509 | SecretKind::X509Ca => keys::spki_of_cert(public),
        SecretKind::Ascii | SecretKind::Binary => None,
    }
}

fn cert_pem(secret: &SecretValue, with_chain: bool) -> Option<Vec<u8>> {
    let cert = secret.public.as_deref()?;
    let mut out = pem("CERTIFICATE", cert);
    if with_chain {
        for c in &secret.chain {
            out.push_str(&pem("CERTIFICATE", c));
        }
    }
    Some(out.into_bytes())
}

/// Formats a secret; the message of an error names no secret bytes.
pub(crate) fn format_secret(secret: &SecretValue, format: Format) -> Result<Vec<u8>, String> {
    if !format.valid_for(secret.kind) {
        return Err(format!("format '{format}' is not valid for kind {}", secret.kind));
    }
    let missing = || format!("the stored {} value is incomplete", secret.kind);
    // x509 values are represented by their certificate in the binary-to-text formats: the
    // certificate is what a peer needs, and `privatekey` gives the key.
    let primary: &[u8] = if secret.kind.is_cert() {
        secret.public.as_deref().ok_or_else(missing)?
    } else {
        &secret.value
    };
    Ok(match format {
        Format::Hex => hex::encode(primary).into_bytes(),
        Format::Base64 => B64.encode(primary).into_bytes(),
        Format::Default => match secret.kind {
            SecretKind::Ascii => secret.value.to_vec(),
            SecretKind::Binary => B64.encode(&*secret.value).into_bytes(),
            SecretKind::PrivateKey => pem("PRIVATE KEY", &secret.value).into_bytes(),
            SecretKind::X509 | SecretKind::X509Ca => cert_pem(secret, false).ok_or_else(missing)?,
        },
        Format::Crt => cert_pem(secret, false).ok_or_else(missing)?,
        Format::Chain => cert_pem(secret, true).ok_or_else(missing)?,
        Format::PrivateKey => pem("PRIVATE KEY", &secret.value).into_bytes(),
        Format::PublicKey => pem("PUBLIC KEY", &public_key_der(secret).ok_or_else(missing)?).into_bytes(),
    })
}

/// The secret in `format`, for its owner (and for placeholders):
///
/// | format | `ascii` | `binary` | `private-key` | `x509`, `x509-ca` |
/// |--------|---------|----------|---------------|-------------------|
/// | none | the characters | base64 | PKCS#8 PEM | certificate PEM |
/// | `hex`, `base64` | of the characters | of the bytes | of the PKCS#8 DER | of the certificate DER |
/// | `privatekey` | — | — | PKCS#8 PEM | PKCS#8 PEM |
/// | `publickey` | — | — | SPKI PEM | SPKI PEM |
/// | `crt` | — | — | — | certificate PEM |
/// | `chain` | — | — | — | certificate then issuers, PEM |
///
/// PEM uses LF line endings. An unknown format or one marked — is an error.
pub fn secret_bytes(secret: &SecretValue, format: Option<&str>) -> Result<Vec<u8>, SessionError> {
    let format = Format::parse(format).map_err(|r| SessionError::invalid("format", r))?;
    format_secret(secret, format).map_err(|r| SessionError::invalid("format", r))
}

/// The public part of a secret in `format`, for readers of a secret marked `export_public`
/// (the caller checks that flag): `None` for `ascii`/`binary`, for `privatekey` and for
/// unknown formats.
///
/// For `private-key`: none or `publickey` → SPKI PEM; `hex`/`base64` → of the SPKI DER. For
/// `x509`/`x509-ca`: none or `crt` → certificate PEM; `chain` → with issuers; `publickey` →
/// SPKI PEM; `hex`/`base64` → of the certificate DER.
pub fn public_part(secret: &SecretValue, format: Option<&str>) -> Option<Vec<u8>> {
    let format = Format::parse(format).ok()?;
    if !secret.kind.is_key() || format == Format::PrivateKey {
        return None;
    }
    match (secret.kind, format) {
        (SecretKind::PrivateKey, Format::Default | Format::PublicKey) => {
            Some(pem("PUBLIC KEY", secret.public.as_deref()?).into_bytes())
        }
        (SecretKind::PrivateKey, Format::Hex) => Some(hex::encode(secret.public.as_deref()?).into_bytes()),
        (SecretKind::PrivateKey, Format::Base64) => Some(B64.encode(secret.public.as_deref()?).into_bytes()),
        (SecretKind::PrivateKey, _) => None,
        // Every remaining format of a certificate kind reads only public material.
        (_, format) => format_secret(secret, format).ok(),
    }
}

mod b64_secret {
    use super::*;

    pub(super) fn serialize<S: serde::Serializer>(v: &Zeroizing<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        let text = Zeroizing::new(B64.encode(v.as_slice()));
        s.serialize_str(&text)
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Zeroizing<Vec<u8>>, D::Error> {
        let text = Zeroizing::new(String::deserialize(d)?);
        B64.decode(text.as_bytes())
            .map(Zeroizing::new)
            .map_err(|_| serde::de::Error::custom("secret value is not base64"))
    }
}

mod b64_opt {
    use super::*;

    pub(super) fn serialize<S: serde::Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(bytes) => s.serialize_some(&B64.encode(bytes)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|t| B64.decode(t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

pub(crate) mod b64_list {
    use super::*;

    pub(crate) fn serialize<S: serde::Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|b| B64.encode(b)))
    }

    pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        Vec::<String>::deserialize(d)?
            .into_iter()
            .map(|t| B64.decode(t).map_err(serde::de::Error::custom))
            .collect()
    }
}

pub(crate) mod b64_bytes {
    use super::*;

    pub(crate) fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }

    pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = Zeroizing::new(String::deserialize(d)?);
        B64.decode(text.as_bytes()).map_err(serde::de::Error::custom)
    }
}
