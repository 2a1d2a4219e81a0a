//! Parsing, canonical form, hashing and the predecessor rule.

use serde_saphyr::Error as YamlError;
use sha2::{Digest, Sha256};

use crate::error::SessionError;
use crate::model::{ServiceSpec, Session};
use crate::validate;

/// Largest accepted session text. Real sessions are a few KiB; the bound keeps hostile
/// input cheap.
const MAX_SESSION_YAML: usize = 1 << 20;

/// Parses a session from YAML, validates it and returns it in normalized form (defaults
/// explicit, unordered lists sorted; see the crate docs).
///
/// Unknown fields anywhere are errors naming the field's path, such as
/// `services[0].attestation[1].mrenclav: unknown field`. Errors never quote explicit secret
/// values.
pub fn parse_session(yaml: &str) -> Result<Session, SessionError> {
    if yaml.len() > MAX_SESSION_YAML {
        return Err(SessionError::Syntax(format!(
            "session text is larger than {MAX_SESSION_YAML} bytes"
        )));
    }
    let mut options = serde_saphyr::Options::default();
    // Snippets quote the input, which may hold explicit secret values.
    options.with_snippet = false;
    let mut path = String::new();
    let result = serde_saphyr::with_deserializer_from_str_with_options(yaml, options, |de| {
        serde_path_to_error::deserialize::<_, Session>(de).map_err(|e| {
            path = e.path().to_string();
            e.into_inner()
        })
    });
    let mut session = result.map_err(|e| yaml_error(&path, &e))?;
    validate::validate(&session)?;
    validate::normalize(&mut session);
    Ok(session)
}

/// The `name` of a session text, read without building or validating the rest of the
/// session: what the CAS needs to check a signer's standing on the session before it spends a
/// full parse on the text. Errors never quote the text.
pub fn session_name(yaml: &str) -> Result<String, SessionError> {
    #[derive(serde::Deserialize)]
    struct Named {
        name: String,
    }
    if yaml.len() > MAX_SESSION_YAML {
        return Err(SessionError::Syntax(format!(
            "session text is larger than {MAX_SESSION_YAML} bytes"
        )));
    }
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    serde_saphyr::from_str_with_options::<Named>(yaml, options)
        .map(|named| named.name)
        .map_err(|e| yaml_error("", &e))
}

fn location_suffix(e: &YamlError) -> String {
    e.location()
        .map(|l| format!(" at line {}, column {}", l.line(), l.column()))
        .unwrap_or_default()
}

fn join_path(parent: &str, field: &str) -> String {
    if parent.is_empty() || parent == "." {
        field.to_string()
    } else {
        format!("{parent}.{field}")
    }
}

/// Maps a YAML/serde error to a [`SessionError`] that names the field path.
fn yaml_error(path: &str, e: &YamlError) -> SessionError {
    let at = location_suffix(e);
    // serde_path_to_error writes `?` for a key it could not capture (a duplicate key).
    let path = path.trim_end_matches('?').trim_end_matches('.');
    let root = path.is_empty();
    let (field, reason) = match e {
        YamlError::SerdeUnknownField { expected, .. } => (
            path.to_string(),
            format!("unknown field (expected one of: {}){at}", expected.join(", ")),
        ),
        YamlError::SerdeMissingField { field, .. } => {
            (join_path(path, field), format!("missing required field{at}"))
        }
        YamlError::SerdeUnknownVariant {
            variant, expected, ..
        } => (
            path.to_string(),
            format!(
                "unknown value '{variant}' (expected one of: {}){at}",
                expected.join(", ")
            ),
        ),
        YamlError::DuplicateMappingKey { key, .. } => match key {
            Some(k) => (join_path(path, k), format!("duplicate key{at}")),
            None => (path.to_string(), format!("duplicate key{at}")),
        },
        YamlError::Message { .. }
        | YamlError::SerdeInvalidType { .. }
        | YamlError::SerdeInvalidValue { .. }
        | YamlError::SerdeInvalidLength { .. }
        | YamlError::InvalidScalar { .. }
        | YamlError::NullIntoString { .. }
        | YamlError::InvalidBooleanStrict { .. }
        | YamlError::NonFiniteFloat { .. }
        | YamlError::Unexpected { .. }
            if !root =>
        {
            (path.to_string(), e.to_string())
        }
        _ => return SessionError::Syntax(e.to_string()),
    };
    if root && field.is_empty() {
        return SessionError::Syntax(reason);
    }
    // Type errors quote the offending scalar; for an explicit secret value that scalar is the
    // secret.
    let reason = if field.starts_with("secrets[") && field.ends_with(".value") {
        format!("invalid explicit value (value not shown){at}")
    } else {
        reason
    };
    SessionError::Invalid { field, reason }
}

impl Session {
    /// Checks everything [`parse_session`] checks beyond syntax: names, hex lengths, which
    /// fields each kind and TEE allows, that placeholders name existing secrets in formats
    /// valid for their kinds, issuers, duplicates and the predecessor's form.
    pub fn validate(&self) -> Result<(), SessionError> {
        validate::validate(self)
    }

    /// The session's canonical bytes, the input of [`Session::hash`]; see the crate docs for
    /// the exact definition. Two sessions that differ only in YAML formatting, key order,
    /// the order of unordered lists or in spelling out defaults have the same canonical
    /// bytes.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut normalized = self.clone();
        validate::normalize(&mut normalized);
        let mut out = Vec::new();
        match serde_json::to_value(&normalized) {
            Ok(value) => write_canonical(&value, &mut out),
            // Serializing plain data structs into a Value cannot fail; still, never return
            // bytes that could collide with a real session's.
            Err(_) => out.extend_from_slice(b"!unserializable"),
        }
        out
    }

    /// Lowercase hex SHA-256 of [`Session::canonical_bytes`]: the session's identity, which
    /// its successor names as `predecessor`. It covers the predecessor too, so the hashes of
    /// a session's versions form a chain.
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.canonical_bytes()))
    }

    /// The predecessor rule. Creating (`current` is `None`): `predecessor` must be absent.
    /// Updating: it must be present and equal `current.hash()`; a different value means the
    /// update was written against an older version ([`SessionError::StalePredecessor`]).
    pub fn check_predecessor(&self, current: Option<&Session>) -> Result<(), SessionError> {
        match (current, &self.predecessor) {
            (None, None) => Ok(()),
            (None, Some(_)) => Err(SessionError::invalid(
                "predecessor",
                "must be absent when creating a session",
            )),
            (Some(cur), None) => Err(SessionError::invalid(
                "predecessor",
                format!(
                    "required when updating a session (the current session is {})",
                    cur.hash()
                ),
            )),
            (Some(cur), Some(given)) => {
                let current = cur.hash();
                if given.eq_ignore_ascii_case(&current) {
                    Ok(())
                } else {
                    Err(SessionError::StalePredecessor {
                        given: given.clone(),
                        current,
                    })
                }
            }
        }
    }

    /// The service called `name`.
    pub fn service(&self, name: &str) -> Option<&ServiceSpec> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// Writes canonical JSON: no whitespace, object keys sorted by their UTF-8 bytes, strings
/// escaped as serde_json escapes them, integers in decimal.
fn write_canonical(value: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            // Sorted here rather than relying on serde_json's map type, whose order depends
            // on a crate feature some other crate in the build may enable.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(k, out);
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
    }
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    match serde_json::to_vec(s) {
        Ok(bytes) => out.extend_from_slice(&bytes),
        Err(_) => out.extend_from_slice(b"null"),
    }
}
