//! The audit log as the server uses it outside a resource's own write transaction: refusals
//! recorded before they are answered, reads of secret material committed before the material
//! goes out, the summaries of refused attestations, and `GET /v1/audit` for administrators.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Query, State};
use axum::response::IntoResponse;
use cloister_cas_session::ClientKey;
use serde::Deserialize;
use tokio::sync::watch;

use super::error::{CasResult, forbidden, internal};
use super::signed::Signed;
use super::{Cas, CasState};

/// Writes the summary of a window of refused attestations soon after the window closes (when
/// no later refusal does), and that of the open window at shutdown. A summary due while the
/// vault is sealed waits in the vault's queue for the next unseal.
pub(super) async fn write_refusal_summaries(cas: Arc<Cas>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(cas.refusals.tick());
    loop {
        let closing = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        if let Some(summary) = cas.refusals.closed_summary(Instant::now(), closing) {
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
                tracing::error!(%error, "cannot record a summary of refused attestations in the audit log");
            }
        }
        if closing {
            return;
        }
    }
}

impl Cas {
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
