//! Governance on the wire: the change a board approves, the bytes its members sign, proposals
//! and session history.
//!
//! A change is the triple (session name, predecessor hash, new session hash). A vote on it is
//! an Ed25519 or P-256 signature (as client keys sign, see [`crate::sign`]) over
//! [`Change::signed_bytes`]: a domain tag, the vote (`approve` or `reject`) and the triple, so
//! a vote can never pass for a request signature or for a vote on another version. Creating a
//! session (no predecessor) is the triple with 32 zero bytes as predecessor.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The domain tag that starts every signed vote.
pub const VOTE_CONTEXT: &[u8] = b"cloister-cas/governance-vote/v1\0";

/// A vote on a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vote {
    /// Agrees to the change.
    Approve,
    /// Refuses it (a veto when the voter holds one).
    Reject,
}

impl Vote {
    /// `approve` or `reject`.
    pub fn as_str(self) -> &'static str {
        match self {
            Vote::Approve => "approve",
            Vote::Reject => "reject",
        }
    }
}

/// The change a board decides on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The session's name.
    pub session: String,
    /// The hash of the version it replaces; `None` when it creates the session.
    pub predecessor: Option<String>,
    /// The hash of the new version.
    pub hash: String,
}

fn hash32(field: &str, text: &str) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out)
        .map_err(|_| format!("{field} is not a session hash (64 hex)"))?;
    Ok(out)
}

impl Change {
    /// The bytes a vote signs: [`VOTE_CONTEXT`], then the vote word and the session name, each
    /// length-prefixed (u32 big-endian), then the predecessor's 32 bytes (zeros when creating)
    /// and the new hash's 32 bytes.
    pub fn signed_bytes(&self, vote: Vote) -> Result<Vec<u8>, String> {
        let predecessor = match &self.predecessor {
            Some(p) => hash32("predecessor", p)?,
            None => [0u8; 32],
        };
        let hash = hash32("hash", &self.hash)?;
        let mut out = VOTE_CONTEXT.to_vec();
        for part in [vote.as_str().as_bytes(), self.session.as_bytes()] {
            let len = u32::try_from(part.len()).map_err(|_| "session name too long".to_string())?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(part);
        }
        out.extend_from_slice(&predecessor);
        out.extend_from_slice(&hash);
        Ok(out)
    }
}

/// A detached vote signature: who signed and the signature (hex `r ‖ s` or Ed25519), written
/// `KEY:SIGNATURE`, as `ed25519:<hex>:<128 hex>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetachedSignature {
    /// The signer's public key (`ed25519:<hex>` or `p256:<hex>`).
    pub key: String,
    /// The signature, 64 bytes in hex.
    pub signature: String,
}

impl fmt::Display for DetachedSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.key, self.signature)
    }
}

impl FromStr for DetachedSignature {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (key, signature) = s.trim().rsplit_once(':').ok_or_else(|| {
            "a signature is KEY:SIGNATURE (as `cloister cas session sign` prints it)".to_string()
        })?;
        if signature.len() != 128 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("the signature part is 128 hex digits".into());
        }
        Ok(Self {
            key: key.to_owned(),
            signature: signature.to_ascii_lowercase(),
        })
    }
}

/// `POST /v1/updates`: a session version with the detached approvals that let it replace the
/// current one (the request's signer counts as an approver too).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedUpdate {
    /// The new version's YAML (naming its predecessor).
    pub yaml: String,
    /// Approvals over its change.
    pub signatures: Vec<DetachedSignature>,
}

/// One recorded vote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteRecord {
    /// The voter's key.
    pub key: String,
    /// Its signature over the change (empty when the vote is the signature of the request
    /// that submitted the change).
    #[serde(default)]
    pub signature: String,
    /// When the CAS recorded it (RFC 3339).
    pub at: String,
    /// Who submitted it, when not the voter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_by: Option<String>,
}

/// A proposal as the CAS shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalInfo {
    /// Its identifier.
    pub id: String,
    /// The change.
    pub change: Change,
    /// Who proposed it.
    pub proposer: String,
    /// `pending`, `applied`, `rejected` (it can no longer be met), `vetoed`, `expired`, `void`
    /// (its predecessor is no longer current) or `failed` (it could not be applied).
    pub state: String,
    /// Why it closed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Created (RFC 3339).
    pub created: String,
    /// Expires (RFC 3339).
    pub expires: String,
    /// Approvals so far.
    pub approvals: Vec<VoteRecord>,
    /// Rejections so far.
    pub rejections: Vec<VoteRecord>,
    /// The proposed session: as submitted for the session's owner and the proposer, without
    /// explicit secret values (`redacted`) for everyone else; absent in listings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub yaml: Option<String>,
    /// Whether `yaml` had explicit secret values removed.
    #[serde(default)]
    pub redacted: bool,
}

/// `POST /v1/proposals/{id}/approve` or `/reject`: a vote signed over the change.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoteRequest {
    /// The vote's signature.
    pub signature: DetachedSignature,
}

/// `POST /v1/approvers`: an attested workload binds the key that signs the request to its
/// attestation, as a member `attested:SESSION#SERVICE` of boards, with the grant its released
/// configuration carried (`volume_grant`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproverBinding {
    /// The session the workload attested for.
    pub session: String,
    /// Its service.
    pub service: String,
    /// The grant of its released configuration.
    pub grant: String,
}

/// The answer to an [`ApproverBinding`]: the key is a member for this version of the session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApproverBound {
    /// The bound key.
    pub key: String,
    /// The session.
    pub session: String,
    /// The service.
    pub service: String,
    /// The session version the binding holds for (a new version needs a new attestation).
    pub hash: String,
}

/// One version of a session, as `GET /v1/history/{name}` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// 1 for the first version recorded.
    pub version: u64,
    /// The version's hash.
    pub hash: String,
    /// The hash it replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predecessor: Option<String>,
    /// When it was applied (RFC 3339).
    pub applied: String,
    /// Who submitted it.
    pub submitted_by: String,
    /// The proposal it came from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proposal: Option<String>,
    /// The approvals it was applied with.
    pub approvals: Vec<VoteRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_bytes_bind_every_part_of_the_change_and_the_vote() {
        let change = Change {
            session: "team/app".into(),
            predecessor: Some("ab".repeat(32)),
            hash: "cd".repeat(32),
        };
        let base = change.signed_bytes(Vote::Approve).unwrap();
        assert!(base.starts_with(VOTE_CONTEXT));
        assert_ne!(change.signed_bytes(Vote::Reject).unwrap(), base);
        let others = [
            Change {
                session: "team/apq".into(),
                ..change.clone()
            },
            Change {
                predecessor: Some("ac".repeat(32)),
                ..change.clone()
            },
            Change {
                predecessor: None,
                ..change.clone()
            },
            Change {
                hash: "ce".repeat(32),
                ..change.clone()
            },
        ];
        for other in others {
            assert_ne!(other.signed_bytes(Vote::Approve).unwrap(), base, "{other:?}");
        }
        assert!(
            Change {
                hash: "zz".into(),
                ..change
            }
            .signed_bytes(Vote::Approve)
            .is_err()
        );
    }

    #[test]
    fn detached_signatures_round_trip_as_text() {
        let text = format!("ed25519:{}:{}", "11".repeat(32), "AB".repeat(64));
        let parsed: DetachedSignature = text.parse().unwrap();
        assert_eq!(parsed.key, format!("ed25519:{}", "11".repeat(32)));
        assert_eq!(parsed.to_string(), text.to_lowercase());
        assert!("nokey".parse::<DetachedSignature>().is_err());
        assert!(
            format!("ed25519:{}:abcd", "11".repeat(32))
                .parse::<DetachedSignature>()
                .is_err()
        );
    }
}
