//! Session counters: explicit increments by attested workloads, holding the grant their
//! attestation released (as volume commits do), and reads by the session's readers. Runs are
//! counted by attestation itself (`attest`). Both kinds live in the vault's counters, which
//! stay monotonic across restored copies of the store (`cloister_cas_store`'s counter anchor).

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use cloister_cas_client::protocol::{CounterIncrement, CounterValue, CounterValues};
use cloister_cas_store::{AuditRecord, AuditWriteError, CounterStep};
use serde_json::json;

use super::body::Body;
use super::error::{CasError, CasResult, bad, forbidden, internal};
use super::signed::Signed;
use super::{Cas, CasState};

/// The vault counter that counts the attestations of `service` of `session`. Neither name
/// holds `#` or `:`, so the names of different counters never meet.
pub(super) fn run_counter(session: &str, service: &str) -> String {
    format!("{RUNS}{session}#{service}")
}

/// The vault counter behind the session's counter `name`.
fn session_counter(session: &str, name: &str) -> String {
    format!("{COUNTERS}{session}#{name}")
}

const RUNS: &str = "run:";
const COUNTERS: &str = "counter:";

/// Counter names are service names' shape.
fn valid_counter_name(name: &str) -> bool {
    crate::names::valid_service_name(name)
}

/// `POST /v1/counters/increment`: the counter's next value, within its `max`, recorded with its
/// audit entry in one durable transaction (group-committed with attestations) and anchored
/// before the answer.
pub(super) async fn increment_counter(
    State(cas): CasState,
    Body(body): Body,
) -> CasResult<impl IntoResponse> {
    cas.require_unsealed()?;
    let request: CounterIncrement =
        serde_json::from_slice(&body).map_err(|e| bad(format!("malformed counter increment: {e}")))?;
    if !crate::names::valid_session_name(&request.session)
        || !crate::names::valid_service_name(&request.service)
    {
        return Err(bad("invalid session or service name"));
    }
    if !valid_counter_name(&request.counter) {
        return Err(bad(
            "invalid counter name: [a-z0-9][a-z0-9-_.]*, at most 64 characters",
        ));
    }
    // Not audited, like a volume commit's: anyone can send a forged grant, and the log must
    // not grow with them.
    let loaded = cas
        .granted(&request.session, &request.service, &request.grant)?
        .map_err(|refused| forbidden(refused.to_string()))?;
    let subject = format!("{}#{}", request.session, request.service);
    let spec = loaded
        .session
        .counters
        .iter()
        .find(|c| c.name == request.counter)
        .ok_or_else(|| {
            forbidden(format!(
                "session {:?} declares no counter {:?}",
                request.session, request.counter
            ))
        })?;
    if !spec.admits(&request.service) {
        return Err(forbidden(format!(
            "service {:?} may not increment counter {:?} (its services: {})",
            request.service,
            request.counter,
            spec.services.join(", ")
        )));
    }
    let step = CounterStep {
        name: session_counter(&request.session, &request.counter),
        max: spec.max.unwrap_or(u64::MAX),
    };
    let record = AuditRecord {
        kind: "counter-increment".into(),
        actor: "workload".into(),
        subject: subject.clone(),
        detail: json!({"counter": request.counter, "session_hash": loaded.hash}),
    };
    let cas2 = cas.clone();
    let outcome = tokio::task::spawn_blocking(move || cas2.releases.append_counted(vec![record], step))
        .await
        .map_err(|_| internal("counter task failed"))?;
    match outcome {
        Ok(value) => Ok(axum::Json(CounterValue {
            counter: request.counter,
            value,
        })),
        Err(AuditWriteError::AtLimit { value }) => {
            let reason = format!(
                "counter {:?} of session {:?} is at its max ({value})",
                request.counter, request.session
            );
            let cas2 = cas.clone();
            let detail = json!({"counter": request.counter, "value": value, "reason": reason});
            let _ = tokio::task::spawn_blocking(move || {
                cas2.audit("counter-increment-refused", "workload", &subject, detail);
            })
            .await;
            Err(forbidden(reason))
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot commit a counter increment");
            Err(internal("cannot commit the counter increment"))
        }
    }
}

/// The query of `GET /v1/counters`.
#[derive(serde::Deserialize)]
pub(super) struct CountersQuery {
    session: String,
}

/// `GET /v1/counters?session=NAME`: the session's counters and runs, for its readers.
pub(super) async fn read_counters(
    State(cas): CasState,
    Query(CountersQuery { session: name }): Query<CountersQuery>,
    Signed { client, .. }: Signed,
) -> CasResult<impl IntoResponse> {
    let parsed = cas
        .load_session(&name)?
        .ok_or_else(|| CasError::new(StatusCode::NOT_FOUND, format!("no session {name:?}")))?;
    let creator = parsed.stored.creator()?;
    if !parsed.session.access_policy.may_read(&client, &creator) {
        cas.refuse_request(
            "session-read-refused",
            &client,
            &name,
            json!({"what": "counters"}),
        );
        return Err(forbidden(format!("not allowed to read session {name:?}")));
    }
    Ok(axum::Json(CounterValues {
        counters: values(&cas, &session_counter(&name, ""))?,
        runs: values(&cas, &run_counter(&name, ""))?,
        session: name,
    }))
}

/// The counters under `prefix`, by the rest of their names.
fn values(cas: &Cas, prefix: &str) -> CasResult<std::collections::BTreeMap<String, u64>> {
    Ok(cas
        .vault
        .counters(prefix)?
        .into_iter()
        .filter_map(|(name, value)| Some((name.strip_prefix(prefix)?.to_owned(), value)))
        .collect())
}
