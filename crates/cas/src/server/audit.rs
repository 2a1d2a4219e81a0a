//! The audit log as the server uses it outside a resource's own write transaction: refusals
//! recorded before they are answered, reads of secret material committed before the material
//! goes out, the summaries of refused attestations, and `GET /v1/audit` for administrators.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Query, State};
use axum::response::IntoResponse;
use cloister_cas_session::{ClientKey, Principal, UpdatePolicy};
use cloister_cas_store::AuditRecord;
use serde::Deserialize;
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::refusals::{request_class, truncated};

use super::error::{CasResult, forbidden, internal};
use super::namespaces::{namespace_of, namespace_record};
use super::signed::Signed;
use super::{Cas, CasState};

/// Writes the summary of a window of refusals (attestations, requests) soon after the window
/// closes (when no later refusal does), and that of the open windows at shutdown. A summary
/// due while the vault is sealed waits in the vault's queue for the next unseal.
pub(super) async fn write_refusal_summaries(cas: Arc<Cas>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(cas.refusals.tick().min(cas.request_refusals.tick()));
    loop {
        let closing = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        let now = Instant::now();
        let summaries: Vec<AuditRecord> = [&cas.refusals, &cas.request_refusals]
            .into_iter()
            .filter_map(|recorder| recorder.closed_summary(now, closing))
            .collect();
        for summary in summaries {
            let vault = cas.vault.clone();
            let written = tokio::task::spawn_blocking(move || {
                vault.audit_note(&summary.kind, &summary.actor, &summary.subject, summary.detail)
            })
            .await;
            let error = match written {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(e.to_string()),
            };
            if let Some(error) = error {
                tracing::error!(%error, "cannot record a summary of refusals in the audit log");
            }
        }
        if closing {
            return;
        }
    }
}

/// Longest subject (bytes) a limited refusal keeps: session names are at most 128, but a
/// refused read names whatever the URL held.
const MAX_SUBJECT: usize = 256;
/// Longest string value in a limited refusal's detail.
const MAX_DETAIL_TEXT: usize = 512;

/// `value` with every string cut to [`MAX_DETAIL_TEXT`] bytes.
fn bounded(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) => Value::String(truncated(&s, MAX_DETAIL_TEXT)),
        Value::Array(items) => Value::Array(items.into_iter().map(bounded).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, bounded(v))).collect()),
        other => other,
    }
}

impl Cas {
    /// Records the refusal of a signed request. A key with standing on `subject` (see
    /// [`Cas::has_standing`]) is accountable for its requests, so its refusal is audited in
    /// full, one entry each (a board member's bad vote stays on record). Anyone else can make
    /// keys at will, so their refusals go through the per-window limiter: the first few per
    /// kind one by one (subject and texts cut short), the rest counted in a
    /// `request-refused-summary`.
    pub(super) fn refuse_request(
        &self,
        kind: &str,
        client: &ClientKey,
        subject: &str,
        detail: serde_json::Value,
    ) {
        if self.has_standing(client, subject) {
            self.audit(kind, &client.to_string(), subject, detail);
            return;
        }
        let records = self.request_refusals.note_class(
            request_class(kind),
            || AuditRecord {
                kind: kind.to_owned(),
                actor: client.to_string(),
                subject: truncated(subject, MAX_SUBJECT),
                detail: bounded(detail),
            },
            Instant::now(),
            OffsetDateTime::now_utc(),
        );
        for record in records {
            self.audit(&record.kind, &record.actor, &record.subject, record.detail);
        }
    }

    /// Whether `client` has standing on the session `name`: an administrator, an auditor, the
    /// session's owner, or named by its read list or its board — or, for a session that does
    /// not exist, the owner or a board member of its namespace. `ANY` names nobody in
    /// particular: it gives no standing.
    pub(super) fn has_standing(&self, client: &ClientKey, name: &str) -> bool {
        if self.is_admin(client) || self.is_auditor(client) {
            return true;
        }
        let named = |list: &[Principal], creator: &ClientKey| {
            list.iter().any(|p| match p {
                Principal::Creator => client == creator,
                Principal::Key(key) => key == client,
                Principal::Any | Principal::Nobody => false,
            })
        };
        let member = |policy: &UpdatePolicy, creator: &ClientKey| match policy {
            UpdatePolicy::AnyOf(list) => named(list, creator),
            board @ UpdatePolicy::Board(_) => self.is_board_member(board, client, creator),
        };
        if let Ok(Some(current)) = self.load_session(name) {
            return current.stored.creator().is_ok_and(|creator| {
                creator == *client
                    || named(&current.session.access_policy.read, &creator)
                    || member(&current.session.access_policy.update, &creator)
            });
        }
        match namespace_record(&|t, k| self.vault.get(t, k), namespace_of(name)) {
            Ok(Some(record)) => record.owner.parse::<ClientKey>().is_ok_and(|owner| {
                owner == *client || record.rule.as_ref().is_some_and(|rule| member(rule, &owner))
            }),
            _ => false,
        }
    }

    /// Records a refusal (or another event that must not change the answer) durably before
    /// the caller answers. If the record fails, the failure is logged and the request is still
    /// refused. Decisions that grant something are recorded in their own transaction instead
    /// (see [`Cas::record_read`] and the writes).
    pub(super) fn audit(&self, kind: &str, actor: &str, subject: &str, detail: serde_json::Value) {
        if let Err(e) = self.vault.audit_append(kind, actor, subject, detail) {
            tracing::error!(error = %e, kind, "cannot append to the audit log");
        }
    }

    /// Commits the audit entry of a read that hands out secret material; the material goes
    /// out only if this succeeds.
    pub(super) fn record_read(
        &self,
        kind: &str,
        client: &ClientKey,
        subject: &str,
        detail: serde_json::Value,
    ) -> CasResult<()> {
        self.vault
            .write(|txn| {
                txn.audit_append(kind, &client.to_string(), subject, detail)
                    .map(|_| ())
            })
            .map_err(|e| {
                tracing::error!(error = %e, kind, "cannot record a read; nothing is returned");
                internal("cannot record the read in the audit log; nothing was returned")
            })
    }
}

/// The query of `GET /v1/audit`.
#[derive(Deserialize)]
pub(super) struct AuditQuery {
    #[serde(default)]
    from: u64,
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /v1/audit`: entries from `from` on, at most `limit` (10,000 unless given, 100,000 at
/// most), for administrators and auditors.
pub(super) async fn audit(
    State(cas): CasState,
    Query(query): Query<AuditQuery>,
    Signed { client, .. }: Signed,
) -> CasResult<impl IntoResponse> {
    if !cas.is_admin(&client) && !cas.is_auditor(&client) {
        return Err(forbidden(
            "only CAS administrators and auditors read the audit log",
        ));
    }
    Ok(axum::Json(cas.vault.audit_entries(
        query.from,
        query.limit.unwrap_or(10_000).min(100_000),
    )?))
}
