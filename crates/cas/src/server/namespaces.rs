//! Namespaces: the first segment of session names, each owned by one client key so that
//! nobody else creates sessions under it. Who may claim one when creating a session, and the
//! administrators' declarations and listing.

use std::collections::BTreeSet;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use cloister_cas_client::protocol::{NamespaceInfo, NamespaceRequest};
use cloister_cas_session::{ClientKey, UpdatePolicy};
use cloister_cas_store::{StoreError, WriteTxn};
use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::error::{CasResult, bad, corrupt, forbidden, internal};
use super::sessions::StoredSession;
use super::signed::Signed;
use super::{CasState, NAMESPACES, QUOTAS, SESSIONS};

/// Who owns a namespace (the first segment of session names), and how it came to.
#[derive(Serialize, Deserialize)]
pub(super) struct StoredNamespace {
    pub(super) owner: String,
    pub(super) how: NamespaceOrigin,
    #[serde(with = "time::serde::rfc3339")]
    pub(super) since: OffsetDateTime,
    /// The board whose approval creating a session here needs (`CREATOR`: the owner).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) rule: Option<UpdatePolicy>,
}

/// How a namespace came to its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum NamespaceOrigin {
    /// Its owner created its first session.
    Claimed,
    /// It held sessions before owners were recorded, all of one creator: theirs.
    Inherited,
    /// A CAS administrator declared it.
    Declared,
}

impl NamespaceOrigin {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Claimed => "claimed",
            Self::Inherited => "inherited",
            Self::Declared => "declared",
        }
    }
}

/// A namespace is one segment of a session name: `[a-z0-9][a-z0-9-_.]*`, at most 128
/// characters.
fn valid_namespace(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 128
        && matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

/// The namespace of a session name: its first segment.
pub(super) fn namespace_of(name: &str) -> &str {
    name.split('/').next().unwrap_or(name)
}

/// What creating a session in a namespace takes.
pub(super) enum NamespaceClaim {
    /// The creator owns it already.
    Owned,
    /// The creator becomes its owner, recorded with the session.
    Record(NamespaceOrigin),
}

/// Reads one record (from the vault or a transaction).
type ReadRecord<'a> = &'a dyn Fn(&str, &str) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError>;

/// Lists record keys by prefix (from the vault or a transaction).
type ListRecords<'a> = &'a dyn Fn(&str, &str) -> Result<Vec<String>, StoreError>;

/// The namespace `name`'s record, if declared or claimed.
pub(super) fn namespace_record(
    get: ReadRecord<'_>,
    name: &str,
) -> Result<Option<StoredNamespace>, StoreError> {
    match get(NAMESPACES, name)? {
        Some(raw) => Ok(Some(
            serde_json::from_slice(&raw).map_err(|_| corrupt("namespace"))?,
        )),
        None => Ok(None),
    }
}

/// Decides whether `client` may create a session in `namespace`, from the vault as `get` and
/// `keys` read it (inside the write transaction, so the decision and the claim are one). In
/// a namespace with a board, `approved` must be that board (its approvals were checked).
pub(super) fn namespace_claim(
    namespace: &str,
    client: &ClientKey,
    approved: Option<&UpdatePolicy>,
    get: ReadRecord<'_>,
    keys: ListRecords<'_>,
) -> Result<Result<NamespaceClaim, String>, StoreError> {
    if let Some(record) = namespace_record(get, namespace)? {
        if let Some(rule) = &record.rule {
            return Ok(if approved == Some(rule) {
                Ok(NamespaceClaim::Owned)
            } else {
                Err(format!(
                    "namespace {namespace:?} has a board: creating a session in it needs its approvals"
                ))
            });
        }
        return Ok(if record.owner == client.to_string() {
            Ok(NamespaceClaim::Owned)
        } else {
            Err(format!(
                "namespace {namespace:?} belongs to {} ({}): only its owner creates sessions in it; \
                 choose another namespace or ask a CAS administrator",
                record.owner,
                record.how.as_str()
            ))
        });
    }
    // Sessions created before owners were recorded: their creator owns the namespace if they
    // share one.
    let nested = format!("{namespace}/");
    let mut creators = BTreeSet::new();
    for name in keys(SESSIONS, namespace)? {
        if name != namespace && !name.starts_with(&nested) {
            continue;
        }
        let raw = get(SESSIONS, &name)?.ok_or_else(|| corrupt("session list"))?;
        let stored: StoredSession = serde_json::from_slice(&raw).map_err(|_| corrupt("session"))?;
        creators.insert(stored.creator);
    }
    let shown = client.to_string();
    Ok(match creators.len() {
        0 => Ok(NamespaceClaim::Record(NamespaceOrigin::Claimed)),
        1 if creators.contains(&shown) => Ok(NamespaceClaim::Record(NamespaceOrigin::Inherited)),
        1 => Err(format!(
            "namespace {namespace:?} belongs to {}, the creator of its sessions: only its owner \
             creates sessions in it",
            creators.first().map_or("", String::as_str)
        )),
        _ => Err(format!(
            "namespace {namespace:?} holds sessions of {} creators and has no declared owner: a CAS \
             administrator must declare it first (cloister cas namespace add {namespace} --owner KEY)",
            creators.len()
        )),
    })
}

/// The record of [`QUOTAS`] holding what open namespaces use.
const OPEN_USAGE: &str = "open-namespaces";

/// What every record a write adds costs besides its bytes (keys, audit entry, history).
const RECORD_OVERHEAD: u64 = 1024;

/// Bytes stored for sessions (their versions and proposals) in namespaces no administrator
/// declared, in all.
#[derive(Default, Serialize, Deserialize)]
struct OpenUsage {
    bytes: u64,
}

/// What the open namespaces' usage becomes when the session `name` stores `bytes` more (plus a
/// record's overhead), if `name` lives in a namespace no administrator declared: anyone may
/// claim such a namespace with a fresh key, so what they store there, in all, is bounded by
/// `budget`. Declared namespaces are not charged (`None`). Reads only: the caller writes the
/// charge with [`OpenCharge::record`] together with what it pays for, after every other check,
/// so that a refused write leaves nothing behind. `Ok(Err(reason))` refuses the write.
pub(super) fn open_charge(
    txn: &WriteTxn<'_>,
    name: &str,
    bytes: usize,
    budget: u64,
) -> Result<Result<Option<OpenCharge>, String>, StoreError> {
    let namespace = namespace_of(name);
    let declared = namespace_record(&|t, k| txn.get(t, k), namespace)?
        .is_some_and(|record| record.how == NamespaceOrigin::Declared);
    if declared {
        return Ok(Ok(None));
    }
    let usage: OpenUsage = match txn.get(QUOTAS, OPEN_USAGE)? {
        Some(raw) => serde_json::from_slice(&raw).map_err(|_| corrupt("open namespaces' usage"))?,
        None => OpenUsage::default(),
    };
    let after = usage
        .bytes
        .saturating_add(bytes as u64)
        .saturating_add(RECORD_OVERHEAD);
    if after > budget {
        return Ok(Err(format!(
            "namespace {namespace:?} is not declared, and the CAS's budget for undeclared namespaces \
             ({budget} bytes) is spent: ask a CAS administrator to declare it \
             (cloister cas namespace add {namespace} --owner KEY)"
        )));
    }
    Ok(Ok(Some(OpenCharge(OpenUsage { bytes: after }))))
}

/// The open namespaces' usage after a write that [`open_charge`] allowed.
pub(super) struct OpenCharge(OpenUsage);

impl OpenCharge {
    /// Writes the new usage in the transaction that stores what it was charged for.
    pub(super) fn record(&self, txn: &mut WriteTxn<'_>) -> Result<(), StoreError> {
        let raw = serde_json::to_vec(&self.0).map_err(|_| corrupt("open namespaces' usage"))?;
        txn.put(QUOTAS, OPEN_USAGE, &raw)
    }
}

/// `POST /v1/namespaces`: an administrator declares (or re-assigns) a namespace's owner.
pub(super) async fn declare_namespace(
    State(cas): CasState,
    Signed { client, body }: Signed,
) -> CasResult<impl IntoResponse> {
    if !cas.is_admin(&client) {
        cas.refuse_request(
            "namespace-declare-refused",
            &client,
            "namespaces",
            json!({"reason": "not an administrator"}),
        );
        return Err(forbidden("only CAS administrators declare namespaces"));
    }
    let request: NamespaceRequest =
        serde_json::from_slice(&body).map_err(|e| bad(format!("malformed namespace request: {e}")))?;
    if !valid_namespace(&request.name) {
        return Err(bad(format!(
            "{:?} is not a namespace: one segment of [a-z0-9][a-z0-9-_.]*",
            request.name
        )));
    }
    let owner: ClientKey = request.owner.parse().map_err(|e| bad(format!("owner: {e}")))?;
    let rule = request
        .rule
        .as_ref()
        .map(|rule| cloister_cas_session::parse_update_policy(&rule.to_string()))
        .transpose()
        .map_err(|e| bad(e.to_string()))?;
    let shown_rule = rule.as_ref().and_then(|r| serde_json::to_value(r).ok());
    let record = serde_json::to_vec(&StoredNamespace {
        owner: owner.to_string(),
        how: NamespaceOrigin::Declared,
        since: OffsetDateTime::now_utc(),
        rule,
    })
    .map_err(|_| internal("encode"))?;
    cas.vault.write(|txn| {
        let previous = match txn.get(NAMESPACES, &request.name)? {
            Some(raw) => Some(
                serde_json::from_slice::<StoredNamespace>(&raw)
                    .map_err(|_| corrupt("namespace"))?
                    .owner,
            ),
            None => None,
        };
        txn.put(NAMESPACES, &request.name, &record)?;
        txn.audit_append(
            "namespace-declare",
            &client.to_string(),
            &request.name,
            json!({"owner": owner.to_string(), "previous": previous, "rule": shown_rule}),
        )
        .map(|_| ())
    })?;
    Ok((
        StatusCode::CREATED,
        axum::Json(NamespaceInfo {
            name: request.name,
            owner: owner.to_string(),
            how: NamespaceOrigin::Declared.as_str().into(),
            rule: shown_rule,
        }),
    ))
}

/// `GET /v1/namespaces`: every namespace for administrators, one's own for anyone else.
pub(super) async fn list_namespaces(
    State(cas): CasState,
    Signed { client, .. }: Signed,
) -> CasResult<impl IntoResponse> {
    let admin = cas.is_admin(&client);
    let shown = client.to_string();
    let mut out = Vec::new();
    for name in cas.vault.keys(NAMESPACES, "")? {
        let Some(raw) = cas.vault.get(NAMESPACES, &name)? else {
            continue;
        };
        let record: StoredNamespace =
            serde_json::from_slice(&raw).map_err(|_| internal("corrupt namespace"))?;
        if admin || record.owner == shown {
            out.push(NamespaceInfo {
                name,
                owner: record.owner,
                how: record.how.as_str().into(),
                rule: record.rule.as_ref().and_then(|r| serde_json::to_value(r).ok()),
            });
        }
    }
    Ok(axum::Json(out))
}

#[cfg(test)]
mod namespace_tests {
    use std::collections::BTreeMap;

    use super::*;

    fn key(n: u8) -> ClientKey {
        cloister_cas_client::sign::ClientIdentity::from_seed(&[n; 32])
            .public()
            .parse()
            .unwrap()
    }

    /// A vault as two maps: records by (table, key).
    #[derive(Default)]
    struct Records(BTreeMap<(String, String), Vec<u8>>);

    impl Records {
        fn session(mut self, name: &str, creator: &ClientKey) -> Self {
            let stored = StoredSession {
                yaml: format!("name: {name}\n"),
                hash: "00".repeat(32),
                creator: creator.to_string(),
                updated: OffsetDateTime::UNIX_EPOCH,
            };
            self.0.insert(
                (SESSIONS.into(), name.into()),
                serde_json::to_vec(&stored).unwrap(),
            );
            self
        }

        fn namespace(mut self, name: &str, owner: &ClientKey) -> Self {
            let record = StoredNamespace {
                owner: owner.to_string(),
                how: NamespaceOrigin::Declared,
                since: OffsetDateTime::UNIX_EPOCH,
                rule: None,
            };
            self.0.insert(
                (NAMESPACES.into(), name.into()),
                serde_json::to_vec(&record).unwrap(),
            );
            self
        }

        /// The decision for `client` creating a session in `namespace`, as text.
        fn decide(&self, namespace: &str, client: &ClientKey) -> Result<&'static str, String> {
            let get = |table: &str, key: &str| {
                Ok(self
                    .0
                    .get(&(table.to_owned(), key.to_owned()))
                    .map(|v| Zeroizing::new(v.clone())))
            };
            let keys = |table: &str, prefix: &str| {
                Ok(self
                    .0
                    .keys()
                    .filter(|(t, k)| t == table && k.starts_with(prefix))
                    .map(|(_, k)| k.clone())
                    .collect())
            };
            namespace_claim(namespace, client, None, &get, &keys)
                .unwrap()
                .map(|claim| match claim {
                    NamespaceClaim::Owned => "owned",
                    NamespaceClaim::Record(how) => how.as_str(),
                })
        }
    }

    #[test]
    fn namespaces_go_to_their_first_creator_or_their_declared_owner() {
        let (x, y) = (key(1), key(2));
        assert_eq!(namespace_of("team/a/b"), "team");
        assert_eq!(namespace_of("team"), "team");
        assert!(valid_namespace("team-1.x") && !valid_namespace("team/a") && !valid_namespace("Team"));
        assert!(!valid_namespace(""));

        let empty = Records::default();
        assert_eq!(empty.decide("team", &x), Ok("claimed"));

        // Sessions from before owners were recorded, all of one creator: theirs. A namespace
        // that merely starts with the same letters does not count.
        let solo = Records::default()
            .session("solo", &x)
            .session("solo/a", &x)
            .session("solo2/b", &y);
        assert_eq!(solo.decide("solo", &x), Ok("inherited"));
        let refused = solo.decide("solo", &y).unwrap_err();
        assert!(refused.contains(&x.to_string()), "{refused}");
        assert_eq!(solo.decide("solo2", &y), Ok("inherited"));

        // Several creators: nobody, until an administrator declares it.
        let shared = Records::default().session("old/a", &x).session("old/b", &y);
        for client in [&x, &y] {
            let refused = shared.decide("old", client).unwrap_err();
            assert!(refused.contains("administrator must declare"), "{refused}");
        }
        let declared = shared.namespace("old", &y);
        assert_eq!(declared.decide("old", &y), Ok("owned"));
        let refused = declared.decide("old", &x).unwrap_err();
        assert!(
            refused.contains(&y.to_string()) && refused.contains("declared"),
            "{refused}"
        );
    }
}
