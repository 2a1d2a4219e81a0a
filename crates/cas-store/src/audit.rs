//! The tamper-evident audit log: append-only, hash-chained, every entry signed by the CAS
//! identity key.
//!
//! Entries are stored and exported in clear so that anyone holding the CAS public key (see
//! [`crate::Vault::identity_public`]) can verify them offline with [`verify_audit`]. They must
//! therefore **never contain secrets**: callers pass names, hashes, measurements and reasons,
//! never secret values, keys or plaintext.
//!
//! # Hash and signature
//!
//! `hash` is the lowercase hex SHA-256 of
//!
//! ```text
//! "cloister-cas-audit-v1\n" || canonical JSON of
//!   {"actor":…,"detail":…,"kind":…,"prev":…,"seq":…,"subject":…,"time":"<RFC 3339>"}
//! ```
//!
//! where canonical JSON has no whitespace and object keys sorted (recursively, also inside
//! `detail`), strings escaped as `serde_json` escapes them. `signature` is the hex Ed25519
//! signature of the 32 raw hash bytes. `prev` is the previous entry's `hash`, 64 zeros for the
//! first entry, whose `seq` is 1.
//!
//! # File format
//!
//! [`export_jsonl`] writes one JSON object per line with exactly the fields of [`AuditEntry`];
//! [`parse_jsonl`] reads it back (blank lines allowed, unknown fields refused). This is the file
//! `cloister cas audit verify FILE` reads.
//!
//! # What verification does not prove
//!
//! A chain proves no entry was edited, inserted, removed or reordered *before the last one it
//! contains*. Cutting entries off the end leaves a valid shorter log: a verifier that must detect
//! truncation compares [`AuditReport::last_seq`] and [`AuditReport::head_hash`] with a head it
//! has seen before.

use std::fmt::Write as _;

#[cfg(test)]
use ed25519_dalek::SigningKey;
use ed25519_dalek::{Signature, VerifyingKey};

use crate::signer::IdentitySigner;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `prev` of the first entry: 64 zeros.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const HASH_DOMAIN: &str = "cloister-cas-audit-v1\n";

/// One audit log entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    /// Position in the log, starting at 1, without gaps.
    pub seq: u64,
    /// When the event happened (UTC). Events recorded while the vault was sealed keep their
    /// original time but are appended after the unseal, so times are not strictly increasing.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// What happened, e.g. `init`, `unseal`, `seal`, `unseal-share`, `unseal-fail`,
    /// `session-create`, `session-update`, `attest-ok`, `attest-fail`, `secret-release`,
    /// `secret-read`.
    pub kind: String,
    /// Who did it (a key fingerprint, an operator name, a workload identity).
    pub actor: String,
    /// What it was done to (a session name, a secret name).
    pub subject: String,
    /// Further non-secret facts (hashes, measurements, reasons).
    pub detail: Value,
    /// `hash` of the previous entry; [`GENESIS_PREV`] for the first.
    pub prev: String,
    /// Hex SHA-256 over the fields above (see the module documentation).
    pub hash: String,
    /// Hex Ed25519 signature over the 32 hash bytes by the CAS identity key.
    pub signature: String,
}

impl AuditEntry {
    /// Recomputes the hash of the content fields (everything but `hash` and `signature`).
    pub fn compute_hash(&self) -> Result<[u8; 32], String> {
        content_hash(
            self.seq,
            self.time,
            &self.kind,
            &self.actor,
            &self.subject,
            &self.detail,
            &self.prev,
        )
    }
}

fn json_str(s: &str, out: &mut String) {
    // Serialising a &str to JSON cannot fail; the fallback is never taken.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

fn canonical_json(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => json_str(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            // Sorted here rather than relying on serde_json's map order, which changes when any
            // crate in the build enables its `preserve_order` feature.
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_str(k, out);
                out.push(':');
                if let Some(item) = map.get(k.as_str()) {
                    canonical_json(item, out);
                }
            }
            out.push('}');
        }
    }
}

fn content_hash(
    seq: u64,
    time: OffsetDateTime,
    kind: &str,
    actor: &str,
    subject: &str,
    detail: &Value,
    prev: &str,
) -> Result<[u8; 32], String> {
    let time = time
        .format(&Rfc3339)
        .map_err(|e| format!("time cannot be written as RFC 3339: {e}"))?;
    let mut s = String::with_capacity(256);
    s.push_str(HASH_DOMAIN);
    s.push_str("{\"actor\":");
    json_str(actor, &mut s);
    s.push_str(",\"detail\":");
    canonical_json(detail, &mut s);
    s.push_str(",\"kind\":");
    json_str(kind, &mut s);
    s.push_str(",\"prev\":");
    json_str(prev, &mut s);
    let _ = write!(s, ",\"seq\":{seq},\"subject\":");
    json_str(subject, &mut s);
    s.push_str(",\"time\":");
    json_str(&time, &mut s);
    s.push('}');
    Ok(Sha256::digest(s.as_bytes()).into())
}

/// Builds and signs the entry that follows `(seq - 1, prev)`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn make_entry(
    signer: &IdentitySigner,
    seq: u64,
    prev: String,
    time: OffsetDateTime,
    kind: &str,
    actor: &str,
    subject: &str,
    detail: Value,
) -> Result<AuditEntry, String> {
    let hash = content_hash(seq, time, kind, actor, subject, &detail, &prev)?;
    let signature = signer.sign(&hash);
    Ok(AuditEntry {
        seq,
        time,
        kind: kind.to_owned(),
        actor: actor.to_owned(),
        subject: subject.to_owned(),
        detail,
        prev,
        hash: hex::encode(hash),
        signature: hex::encode(signature),
    })
}

/// What [`verify_audit`] found in a valid log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditReport {
    /// Number of entries checked.
    pub entries: usize,
    /// `seq` of the first entry (always 1).
    pub first_seq: u64,
    /// `seq` of the last entry.
    pub last_seq: u64,
    /// `hash` of the last entry: remember it to detect a later truncation.
    pub head_hash: String,
}

/// Why one entry failed verification.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuditFault {
    /// The entry is not where its `seq` says: an entry before it was removed, or entries were
    /// reordered.
    #[error("sequence break: expected seq {expected}")]
    Sequence {
        /// The seq this position should hold.
        expected: u64,
    },
    /// `prev` does not match the previous entry's hash (or is not zeros for the first entry).
    #[error("hash chain broken: prev does not match the previous entry")]
    Chain,
    /// A field was changed after the entry was written.
    #[error("hash mismatch: the entry was altered")]
    Hash,
    /// The signature is not the CAS key's signature over the hash.
    #[error("invalid signature for this CAS public key")]
    Signature,
    /// A field cannot be decoded (hex of the wrong length, unrepresentable time).
    #[error("malformed: {0}")]
    Malformed(String),
}

/// Audit log verification or parsing failure.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// No entries: a real log always holds at least its `init` entry.
    #[error("the audit log is empty")]
    Empty,
    /// The given bytes are not a valid Ed25519 public key.
    #[error("invalid CAS public key")]
    BadPublicKey,
    /// The first bad entry.
    #[error("entry at index {index} (seq {seq}): {fault}")]
    Invalid {
        /// 0-based position in the given slice.
        index: usize,
        /// The `seq` field as found.
        seq: u64,
        /// What is wrong.
        fault: AuditFault,
    },
    /// A JSONL line could not be read.
    #[error("line {line}: {message}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// The parser's message.
        message: String,
    },
}

/// Verifies a complete audit log (from seq 1) against the CAS public key.
///
/// Checks, for each entry in order: its `seq` follows the previous one (first is 1), its `prev`
/// is the previous entry's hash (first is zeros), its hash matches its fields, and its signature
/// verifies (strict Ed25519). Returns the first failure with its index.
pub fn verify_audit(entries: &[AuditEntry], cas_public_key: &[u8; 32]) -> Result<AuditReport, AuditError> {
    if entries.is_empty() {
        return Err(AuditError::Empty);
    }
    let key = VerifyingKey::from_bytes(cas_public_key).map_err(|_| AuditError::BadPublicKey)?;
    let mut expected_seq = 1u64;
    let mut expected_prev: &str = GENESIS_PREV;
    for (index, e) in entries.iter().enumerate() {
        let fail = |fault| AuditError::Invalid {
            index,
            seq: e.seq,
            fault,
        };
        if e.seq != expected_seq {
            return Err(fail(AuditFault::Sequence {
                expected: expected_seq,
            }));
        }
        if e.prev != expected_prev {
            return Err(fail(AuditFault::Chain));
        }
        let hash = e.compute_hash().map_err(|m| fail(AuditFault::Malformed(m)))?;
        if e.hash != hex::encode(hash) {
            return Err(fail(AuditFault::Hash));
        }
        // Only the lowercase form is accepted, so no field of a verified log can be changed
        // at all, not even in a way that decodes to the same bytes.
        let mut sig = [0u8; 64];
        if e.signature.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(fail(AuditFault::Malformed(
                "signature is not lowercase hex".into(),
            )));
        }
        hex::decode_to_slice(&e.signature, &mut sig)
            .map_err(|_| fail(AuditFault::Malformed("signature is not 128 hex digits".into())))?;
        key.verify_strict(&hash, &Signature::from_bytes(&sig))
            .map_err(|_| fail(AuditFault::Signature))?;
        expected_seq = e
            .seq
            .checked_add(1)
            .ok_or_else(|| fail(AuditFault::Malformed("seq overflow".into())))?;
        expected_prev = &e.hash;
    }
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
        return Err(AuditError::Empty);
    };
    Ok(AuditReport {
        entries: entries.len(),
        first_seq: first.seq,
        last_seq: last.seq,
        head_hash: last.hash.clone(),
    })
}

/// Writes entries as JSON Lines (one entry per line, `\n`-terminated).
///
/// Fails only for an entry whose time cannot be written as RFC 3339 (a year outside
/// 0..=9999), which entries made by the vault never have.
pub fn export_jsonl(entries: &[AuditEntry]) -> Result<String, AuditError> {
    let mut out = String::with_capacity(entries.len() * 400);
    for (i, e) in entries.iter().enumerate() {
        let line = serde_json::to_string(e).map_err(|err| AuditError::Parse {
            line: i + 1,
            message: err.to_string(),
        })?;
        out.push_str(&line);
        out.push('\n');
    }
    Ok(out)
}

/// Reads JSON Lines written by [`export_jsonl`]. Blank lines are skipped; anything else that is
/// not exactly an [`AuditEntry`] is an error naming the line. Parsing does not verify: call
/// [`verify_audit`] on the result.
pub fn parse_jsonl(text: &str) -> Result<Vec<AuditEntry>, AuditError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let entry = serde_json::from_str::<AuditEntry>(line).map_err(|e| AuditError::Parse {
            line: i + 1,
            message: e.to_string(),
        })?;
        out.push(entry);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_recursively() {
        let mut s = String::new();
        canonical_json(&json!({"b": 1, "a": {"d": [true, null], "c": "x\"y"}}), &mut s);
        assert_eq!(s, r#"{"a":{"c":"x\"y","d":[true,null]},"b":1}"#);
    }

    #[test]
    fn hash_survives_jsonl_round_trip() {
        let identity = SigningKey::from_bytes(&[9; 32]);
        let signer = IdentitySigner::new(&identity).unwrap();
        let time = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap();
        let e = make_entry(
            &signer,
            1,
            GENESIS_PREV.into(),
            time,
            "k",
            "a",
            "s",
            json!({"z": 1.5, "a": "é\n"}),
        )
        .unwrap();
        let back = parse_jsonl(&export_jsonl(std::slice::from_ref(&e)).unwrap()).unwrap();
        assert_eq!(back, vec![e.clone()]);
        assert_eq!(hex::encode(back[0].compute_hash().unwrap()), e.hash);
        verify_audit(&back, &identity.verifying_key().to_bytes()).unwrap();
    }

    #[test]
    fn empty_log_is_refused() {
        assert_eq!(verify_audit(&[], &[0; 32]).unwrap_err(), AuditError::Empty);
    }
}
