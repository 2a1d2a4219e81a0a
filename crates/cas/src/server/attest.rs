//! Attestation: nonces, and judging a workload's evidence (endorsements, verification,
//! binding, launch configuration, the session's policy) before its configuration is released,
//! sealed to the workload's key, with the release recorded by group commit. Every refusal is
//! answered 403 and audited within the bounds of
//! [`RefusalRecorder`](crate::refusals::RefusalRecorder).

use std::collections::BTreeMap;
use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cloister_attestation::{Endorsements, EvidenceVerifier, SnpEndorsements, Tee};
use cloister_cas_client::protocol::{
    AttestRequest, AttestResponse, InitData, NonceResponse, ReleasedConfig, ReleasedFile,
};
use cloister_cas_store::{AuditRecord, AuditWriteError, CounterStep};
use serde_json::json;
use time::OffsetDateTime;

use super::body::Body;
use super::error::{CasError, CasResult, bad, forbidden};
use super::{Cas, CasState, VOLUMES};
use crate::nonce::NonceError;
use crate::refusals::{Refusal, RefusalClass};

/// `POST /v1/attest/nonce`: a fresh nonce. Nothing is stored and nothing read: the request has
/// no body.
pub(super) async fn issue_nonce(State(cas): CasState, _: Body) -> CasResult<impl IntoResponse> {
    cas.require_unsealed()?;
    Ok(axum::Json(NonceResponse {
        nonce: hex::encode(cas.nonces.issue()),
        expires_in: cas.nonces.ttl().as_secs(),
    }))
}

/// What the evidence of `tee` is verified with.
fn endorsements(cas: &Cas, request: &AttestRequest, tee: Tee, evidence: &[u8]) -> CasResult<Endorsements> {
    if matches!(tee, Tee::Sgx | Tee::Tdx) {
        return dcap_endorsements(cas, request, evidence);
    }
    if let Some(vcek) = &request.vcek {
        return snp_endorsements(vcek, request.chain.as_deref()).map(Endorsements::Snp);
    }
    Ok(Endorsements::None)
}

/// The CAS's own DCAP collateral first, the request's only as a fallback, and neither older
/// than what the CAS has already seen (see `dcap_collateral`).
fn dcap_endorsements(cas: &Cas, request: &AttestRequest, evidence: &[u8]) -> CasResult<Endorsements> {
    let chosen = cas
        .dcap_collateral
        .choose(
            &cas.vault,
            &cas.dcap,
            cas.config.collateral.as_deref(),
            request.collateral.as_ref(),
            evidence,
            OffsetDateTime::now_utc(),
        )
        .map_err(bad)?;
    Ok(chosen.map_or(Endorsements::None, Endorsements::Dcap))
}

/// The request's `vcek` (base64 DER or PEM): a VCEK, or a VLEK as clouds such as AWS
/// provision. The verifier chains either to AMD's built-in roots (VCEK → ASK → ARK, VLEK →
/// ASVK → ARK, as the report's SIGNING_KEY demands), so `chain` is optional for both.
fn snp_endorsements(vcek: &str, chain: Option<&str>) -> CasResult<SnpEndorsements> {
    let der = B64
        .decode(vcek.trim())
        .unwrap_or_else(|_| vcek.as_bytes().to_vec());
    SnpEndorsements::new(&der, chain.map(str::as_bytes)).map_err(|e| bad(format!("vcek: {e}")))
}

/// One attestation: a request naming a malformed session or service is answered 400 and not
/// recorded; every refusal after that is answered 403 with its reason and audited within the
/// bounds of [`RefusalRecorder`](crate::refusals::RefusalRecorder).
pub(super) async fn attest(State(cas): CasState, Body(body): Body) -> CasResult<impl IntoResponse> {
    cas.require_unsealed()?;
    let request: AttestRequest =
        serde_json::from_slice(&body).map_err(|e| bad(format!("malformed attestation request: {e}")))?;
    drop(body);
    if !crate::names::valid_session_name(&request.session) {
        return Err(bad(
            "invalid session name: segments of [a-z0-9][a-z0-9-_.]* separated by '/', at most 128 characters",
        ));
    }
    if !crate::names::valid_service_name(&request.service) {
        return Err(bad(
            "invalid service name: [a-z0-9][a-z0-9-_.]*, at most 64 characters",
        ));
    }
    let received = Instant::now();
    // The checks and the sealing read the vault, whose reads can wait for a commit's sync:
    // they run on a blocking thread. The group commit is then awaited without holding one,
    // so a burst of attestations waiting for the disk cannot take the blocking pool.
    let (judged, refusals) = tokio::task::spawn_blocking({
        let cas = cas.clone();
        move || {
            let refusals = std::cell::RefCell::new(Vec::new());
            let judged = judge(&cas, &request, &refusals);
            (judged, refusals.into_inner())
        }
    })
    .await
    .map_err(|_| CasError::new(StatusCode::INTERNAL_SERVER_ERROR, "attestation task failed"))?;
    if !refusals.is_empty() {
        record_refusals(&cas, refusals).await;
    }
    let mut release = judged?;
    let counted = cas
        .releases
        .append_counted_async(std::mem::take(&mut release.records), release.runs.clone())
        .await;
    match counted {
        Ok(_) => {}
        Err(AuditWriteError::AtLimit { value }) => {
            let reason = release.limit_reason(value);
            let refusal = Refusal {
                class: RefusalClass::Limit,
                actor: release.refusal_actor,
                subject: &release.subject,
                reason: &reason,
                measurement: Some(&release.measurement),
            };
            let records = cas
                .refusals
                .note(&refusal, Instant::now(), OffsetDateTime::now_utc());
            record_refusals(&cas, records).await;
            return Err(forbidden(reason));
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot record a release");
            return Err(CasError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot record the release",
            ));
        }
    }
    // Where a release's time goes, for `cloister-bench cas --stages`: waiting for a blocking
    // thread, checking the evidence and the session, rendering and sealing the
    // configuration, and the audit records' group commit.
    let micros = |from: Instant, to: Instant| {
        u64::try_from(to.saturating_duration_since(from).as_micros()).unwrap_or(u64::MAX)
    };
    tracing::debug!(
        target: "cloister::stages",
        subject = release.subject,
        queue_us = micros(received, release.started),
        check_us = micros(release.started, release.checked),
        seal_us = micros(release.checked, release.sealed),
        audit_us = micros(release.sealed, Instant::now()),
        "attestation released"
    );
    Ok(axum::Json(release.response))
}

/// Writes refusal audit records (durably, in the attestations' group commit). A refusal is
/// answered as one whether or not its record could be written; a failure is logged.
async fn record_refusals(cas: &Cas, records: Vec<AuditRecord>) {
    if records.is_empty() {
        return;
    }
    if let Err(e) = cas.releases.append_async(records).await {
        tracing::error!(error = %e, "cannot record a refused attestation in the audit log");
    }
}

/// A release judged and sealed, waiting for its audit records (and its run) to commit.
struct Release {
    records: Vec<AuditRecord>,
    runs: CounterStep,
    response: AttestResponse,
    subject: String,
    refusal_actor: String,
    measurement: String,
    session: String,
    service: String,
    started: Instant,
    checked: Instant,
    sealed: Instant,
}

impl Release {
    fn limit_reason(&self, value: u64) -> String {
        runs_used(&self.session, &self.service, self.runs.max, value)
    }
}

fn runs_used(session: &str, service: &str, max: u64, value: u64) -> String {
    format!("service {service:?} of session {session:?} has used its runs: max_runs {max}, {value} so far")
}

/// The checks run cheapest first: the nonce (a MAC, a clock reading, a set lookup) and the
/// encodings before any signature or certificate, so junk costs the CAS little; the nonce is
/// used up only by evidence that verified and binds it, so junk cannot use up nonces either.
/// Refusals are noted in `refusals`, for the caller to record before it answers.
fn judge(
    cas: &Cas,
    request: &AttestRequest,
    refusals: &std::cell::RefCell<Vec<AuditRecord>>,
) -> CasResult<Release> {
    let started = Instant::now();
    let subject = format!("{}#{}", request.session, request.service);
    let refuse = |class: RefusalClass, tee: Option<Tee>, measurement: Option<&str>, reason: String| {
        let refusal = Refusal {
            class,
            actor: format!("workload:{}", tee.map_or("unknown".to_owned(), |t| t.to_string())),
            subject: &subject,
            reason: &reason,
            measurement,
        };
        refusals.borrow_mut().extend(
            cas.refusals
                .note(&refusal, Instant::now(), OffsetDateTime::now_utc()),
        );
        forbidden(reason)
    };
    let mut nonce = [0u8; crate::nonce::NONCE_LEN];
    hex::decode_to_slice(request.nonce.trim(), &mut nonce)
        .map_err(|_| refuse(RefusalClass::Nonce, None, None, NonceError::Malformed.to_string()))?;
    let fresh = cas
        .nonces
        .check(&nonce)
        .map_err(|e| refuse(RefusalClass::Nonce, None, None, e.to_string()))?;
    let mut public_key = [0u8; 32];
    hex::decode_to_slice(request.public_key.trim(), &mut public_key).map_err(|_| {
        refuse(
            RefusalClass::Malformed,
            None,
            None,
            "malformed public key: 64 hex digits (X25519)".into(),
        )
    })?;
    let evidence = B64.decode(request.evidence.trim()).map_err(|_| {
        refuse(
            RefusalClass::Malformed,
            None,
            None,
            "evidence is not base64".into(),
        )
    })?;
    let tee = cloister_attestation::detect(&evidence).map_err(|e| {
        refuse(
            RefusalClass::Malformed,
            None,
            None,
            format!("unrecognised evidence: {e}"),
        )
    })?;
    let endorsements = endorsements(cas, request, tee, &evidence)
        .map_err(|e| refuse(RefusalClass::Endorsements, Some(tee), None, e.message))?;
    let now = OffsetDateTime::now_utc();
    let verified = match tee {
        Tee::Sgx | Tee::Tdx => cas.dcap.verify(&evidence, &endorsements, now),
        Tee::Snp => cas.snp.verify(&evidence, &endorsements, now),
        Tee::Sim => match cas.sim.read() {
            Ok(sim) => sim.verify(&evidence, &endorsements, now),
            Err(_) => {
                return Err(CasError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "verifier unavailable",
                ));
            }
        },
    }
    .map_err(|e| {
        refuse(
            RefusalClass::Evidence,
            Some(tee),
            None,
            format!("evidence not authentic: {e}"),
        )
    })?;
    let measurement = verified.summary.measurement.clone();
    verified.check_binding(&nonce, &public_key).map_err(|_| {
        refuse(
            RefusalClass::Binding,
            Some(tee),
            Some(&measurement),
            "report data does not bind the nonce and the public key".into(),
        )
    })?;
    // Authentic evidence for this nonce: from here on, the nonce is spent whatever follows.
    cas.nonces
        .consume(&fresh)
        .map_err(|e| refuse(RefusalClass::Nonce, Some(tee), Some(&measurement), e.to_string()))?;
    check_launch(cas, request, &verified.summary)
        .map_err(|reason| refuse(RefusalClass::Launch, Some(tee), Some(&measurement), reason))?;
    // A load can be refused too (an import its exporter withdrew): audited like any refusal.
    let loaded = cas
        .loaded(&request.session)
        .map_err(|e| match e.status {
            StatusCode::FORBIDDEN => refuse(RefusalClass::Session, Some(tee), Some(&measurement), e.message),
            _ => e,
        })?
        .ok_or_else(|| {
            refuse(
                RefusalClass::Session,
                Some(tee),
                Some(&measurement),
                format!("no session {:?}", request.session),
            )
        })?;
    let session = &loaded.session;
    let Some(service) = session.service(&request.service) else {
        return Err(refuse(
            RefusalClass::Session,
            Some(tee),
            Some(&measurement),
            format!("session has no service {:?}", request.service),
        ));
    };
    if tee == Tee::Sim
        && !session
            .security
            .attestation
            .tolerate
            .contains(&cloister_attestation::Tolerance::Simulation)
    {
        return Err(refuse(
            RefusalClass::Policy,
            Some(tee),
            Some(&measurement),
            "simulation evidence is not tolerated by this session".into(),
        ));
    }
    let alternative =
        cloister_cas_session::match_evidence(session, &request.service, &verified).map_err(|reasons| {
            refuse(
                RefusalClass::Policy,
                Some(tee),
                Some(&measurement),
                reasons.join("; "),
            )
        })?;
    // Runs are counted in the release's own transaction (below); this early look only spares
    // a service that has used its runs the rendering and sealing.
    let runs = CounterStep {
        name: super::counters::run_counter(&request.session, &request.service),
        max: service.max_runs.unwrap_or(u64::MAX),
    };
    let runs_used = |value: u64| runs_used(&request.session, &request.service, runs.max, value);
    if service.max_runs.is_some() {
        let value = cas.vault.counter_get(&runs.name)?;
        if value >= runs.max {
            return Err(refuse(
                RefusalClass::Limit,
                Some(tee),
                Some(&measurement),
                runs_used(value),
            ));
        }
    }
    let checked = Instant::now();
    let config = cloister_cas_session::render_service(session, &request.service, &loaded.secrets)?;
    let hash = loaded.hash.clone();
    let plaintext = zeroize::Zeroizing::new(
        serde_json::to_vec(&released_config(
            cas,
            &request.session,
            &request.service,
            &hash,
            config,
        )?)
        .map_err(|_| CasError::new(StatusCode::INTERNAL_SERVER_ERROR, "encode"))?,
    );
    let (enc, ciphertext) = crate::seal::seal(
        &public_key,
        &cloister_cas_client::seal::config_info(&hash),
        &nonce,
        &plaintext,
    )
    .map_err(|e| {
        refuse(
            RefusalClass::Release,
            Some(tee),
            Some(&measurement),
            e.to_string(),
        )
    })?;
    let sealed = Instant::now();
    let actor = format!("workload:{tee}");
    let released: Vec<&str> = session.secrets.iter().map(|s| s.name.as_str()).collect();
    let simulation = tee == Tee::Sim;
    // Both entries and the run reach the disk (in a group commit shared with concurrent
    // attestations) before the configuration goes out: never a release without its record,
    // never one beyond `max_runs`.
    let records = vec![
        AuditRecord {
            kind: "attest-ok".into(),
            actor: actor.clone(),
            subject: subject.clone(),
            detail: json!({"measurement": measurement, "alternative": alternative, "tcb_status": verified.tcb_status, "simulation": simulation}),
        },
        AuditRecord {
            kind: "secret-release".into(),
            actor: actor.clone(),
            subject: subject.clone(),
            detail: json!({"session_hash": hash, "secrets": released, "simulation": simulation}),
        },
    ];
    Ok(Release {
        records,
        runs,
        response: AttestResponse {
            session_hash: hash,
            enc: B64.encode(enc),
            ciphertext: B64.encode(ciphertext),
        },
        subject,
        refusal_actor: actor,
        measurement,
        session: request.session.clone(),
        service: request.service.clone(),
        started,
        checked,
        sealed,
    })
}

/// Checks that the evidence's launch configuration register names this CAS, the session and
/// the service asked for (see [`InitData`]): a TEE the host launched for another CAS (one that
/// could hand its runtime other code to run), another session or another service gets nothing.
fn check_launch(
    cas: &Cas,
    request: &AttestRequest,
    summary: &cloister_attestation::EvidenceSummary,
) -> Result<(), String> {
    let identity = cas
        .vault
        .identity_public()
        .ok_or_else(|| "the CAS identity is unavailable".to_owned())?;
    let init = InitData::new(&crate::tls::pin_of(&identity), &request.session, &request.service)
        .map_err(|e| e.to_string())?;
    let Some(expected) = init.config_id(summary.tee).map_err(|e| e.to_string())? else {
        // SGX under Gramine: the init-data is a trusted file, covered by MRENCLAVE.
        return Ok(());
    };
    match summary.launch_config() {
        Some(actual) if actual.eq_ignore_ascii_case(&hex::encode(&expected)) => Ok(()),
        actual => Err(format!(
            "the TEE was launched for another CAS, session or service: its launch configuration \
             register holds {}, {}#{} at this CAS needs {}",
            actual.unwrap_or("nothing"),
            request.session,
            request.service,
            hex::encode(expected)
        )),
    }
}

/// The sealed answer to an attestation: the rendered service configuration, plus the records
/// of the service's encrypted volumes and the grant that lets this workload commit new ones.
fn released_config(
    cas: &Cas,
    session: &str,
    service: &str,
    session_hash: &str,
    config: cloister_cas_session::ServiceConfig,
) -> CasResult<ReleasedConfig> {
    let prefix = crate::volumes::service_prefix(session, service);
    let mut volumes = BTreeMap::new();
    for key in cas.vault.keys(VOLUMES, &prefix)? {
        let state = cas
            .vault
            .get(VOLUMES, &key)?
            .and_then(|bytes| crate::volumes::parse_state(&bytes))
            .unwrap_or_default();
        volumes.insert(key[prefix.len()..].to_owned(), state);
    }
    let expires = OffsetDateTime::now_utc().unix_timestamp() + crate::volumes::GRANT_LIFETIME_SECS;
    let volume_grant = crate::volumes::issue_grant(
        |m| cas.vault.sign_as_identity(m),
        session,
        service,
        session_hash,
        expires,
    )?;
    Ok(ReleasedConfig {
        session_hash: session_hash.to_owned(),
        command: config.command,
        environment: config.environment,
        pwd: config.pwd,
        files: config
            .files
            .into_iter()
            .map(|f| ReleasedFile {
                path: f.path,
                content: f.content,
                mode: f.mode,
            })
            .collect(),
        volumes,
        volume_grant,
    })
}

#[cfg(test)]
mod snp_endorsement_tests {
    use cloister_attestation::{EvidenceVerifier as _, SnpVerifier};
    use time::macros::datetime;

    use super::*;

    const VLEK_REPORT: &[u8] = include_bytes!("../../../attestation/testdata/snp/report-vlek-milan.bin");
    const VLEK_AUXBLOB: &[u8] = include_bytes!("../../../attestation/testdata/snp/auxblob-vlek-milan.bin");

    /// A VLEK sent as `vcek`, base64 DER or PEM and without `chain`, verifies a VLEK-signed
    /// report through the built-in ASVK.
    #[test]
    fn vlek_in_the_vcek_field_verifies_with_the_built_in_chain() {
        let vlek = &VLEK_AUXBLOB[48..48 + 0x527];
        let pem_text = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            B64.encode(vlek)
        );
        for vcek in [B64.encode(vlek), pem_text] {
            let Ok(endorsement) = snp_endorsements(&vcek, None) else {
                panic!("VLEK refused");
            };
            SnpVerifier::new()
                .verify(
                    VLEK_REPORT,
                    &Endorsements::Snp(endorsement),
                    datetime!(2026-06-01 00:00:00 UTC),
                )
                .expect("verifies without a chain");
        }
        let err = snp_endorsements("bm90IGEgY2VydGlmaWNhdGU=", None).expect_err("not a certificate");
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert!(err.message.starts_with("vcek: "), "{}", err.message);
    }
}
