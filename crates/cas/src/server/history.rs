//! Session history: every version as it was applied, with who submitted it, its approvals and
//! the proposal it came from, recorded in the transaction that applies it.

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use cloister_cas_client::governance::{VersionInfo, VoteRecord};
use cloister_cas_store::{StoreError, WriteTxn};
use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::error::{CasError, CasResult, corrupt, forbidden, internal};
use super::sessions::{Approved, ParsedSession, Prepared, StoredSession};
use super::signed::Signed;
use super::{CasState, VERSIONS};

/// One applied version (the session text included, so that its hash can be checked later).
#[derive(Serialize, Deserialize)]
struct StoredVersion {
    version: u64,
    hash: String,
    predecessor: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    applied: OffsetDateTime,
    submitted_by: String,
    proposal: Option<String>,
    approvals: Vec<VoteRecord>,
    yaml: String,
}

/// The record key of a version: names never hold `@`, so `name@` prefixes only its versions.
fn version_key(name: &str, version: u64) -> String {
    format!("{name}@{version:012}")
}

fn last_version(txn: &WriteTxn<'_>, name: &str) -> Result<u64, StoreError> {
    Ok(txn
        .keys(VERSIONS, &format!("{name}@"))?
        .iter()
        .filter_map(|k| k.rsplit_once('@').and_then(|(_, n)| n.parse::<u64>().ok()))
        .max()
        .unwrap_or(0))
}

/// Records `prepared` as the session's next version and returns its number. A session written
/// before versions were recorded gets its replaced version recorded first, as far as it is
/// known (its creator as submitter, no approvals).
pub(super) fn record_version(
    txn: &mut WriteTxn<'_>,
    prepared: &Prepared,
    replaced: Option<&StoredSession>,
    submitted_by: &str,
    approved: &Approved<'_>,
) -> Result<u64, StoreError> {
    let mut last = last_version(txn, &prepared.name)?;
    if last == 0
        && let Some(old) = replaced
    {
        last = 1;
        let predecessor = cloister_cas_session::parse_session(&old.yaml)
            .ok()
            .and_then(|s| s.predecessor);
        let record = StoredVersion {
            version: last,
            hash: old.hash.clone(),
            predecessor,
            applied: old.updated,
            submitted_by: old.creator.clone(),
            proposal: None,
            approvals: Vec::new(),
            yaml: old.yaml.clone(),
        };
        let bytes = serde_json::to_vec(&record).map_err(|_| corrupt("version"))?;
        txn.put(VERSIONS, &version_key(&prepared.name, last), &bytes)?;
    }
    let version = last + 1;
    let record = StoredVersion {
        version,
        hash: prepared.hash.clone(),
        predecessor: prepared.predecessor.clone(),
        applied: OffsetDateTime::now_utc(),
        submitted_by: submitted_by.to_owned(),
        proposal: approved.proposal.map(str::to_owned),
        approvals: approved.by.to_vec(),
        yaml: prepared.yaml.clone(),
    };
    let bytes = serde_json::to_vec(&record).map_err(|_| corrupt("version"))?;
    txn.put(VERSIONS, &version_key(&prepared.name, version), &bytes)?;
    Ok(version)
}

/// `GET /v1/history/{name}`: every recorded version, oldest first, for the session's readers,
/// its board's members and auditors. A session never written since versions were recorded
/// shows its current version alone.
pub(super) async fn history(
    State(cas): CasState,
    UrlPath(name): UrlPath<String>,
    Signed { client, .. }: Signed,
) -> CasResult<impl IntoResponse> {
    let ParsedSession { session, stored } = cas
        .load_session(&name)?
        .ok_or_else(|| CasError::new(StatusCode::NOT_FOUND, format!("no session {name:?}")))?;
    let creator = stored.creator()?;
    if !(cas.may_oversee(&session, &client, &creator)) {
        cas.refuse_request("history-read-refused", &client, &name, json!({}));
        return Err(forbidden(format!(
            "not allowed to read the history of session {name:?}"
        )));
    }
    let mut out = Vec::new();
    for key in cas.vault.keys(VERSIONS, &format!("{name}@"))? {
        let raw = cas
            .vault
            .get(VERSIONS, &key)?
            .ok_or_else(|| internal("version vanished"))?;
        let v: StoredVersion = serde_json::from_slice(&raw).map_err(|_| internal("corrupt version"))?;
        out.push(VersionInfo {
            version: v.version,
            hash: v.hash,
            predecessor: v.predecessor,
            applied: v.applied.format(&Rfc3339).unwrap_or_default(),
            submitted_by: v.submitted_by,
            proposal: v.proposal,
            approvals: v.approvals,
        });
    }
    if out.is_empty() {
        out.push(VersionInfo {
            version: 1,
            hash: stored.hash,
            predecessor: session.predecessor.clone(),
            applied: stored.updated.format(&Rfc3339).unwrap_or_default(),
            submitted_by: stored.creator,
            proposal: None,
            approvals: Vec::new(),
        });
    }
    Ok(axum::Json(out))
}
