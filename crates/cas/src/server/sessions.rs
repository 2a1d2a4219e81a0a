//! Sessions: creating and updating them (the decision, the namespace claim, the session, its
//! secrets and the audit entry in one vault transaction), reading them (raw for the owner,
//! redacted for other readers), listing them, and loading them for release with their imports
//! checked against their exporters as they are now.

use std::collections::BTreeMap;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use cloister_cas_client::governance::{DetachedSignature, VoteRecord};
use cloister_cas_client::protocol::{SessionRecord, SessionWritten};
use cloister_cas_session::{
    ClientKey, ImportResolver, Importer, SecretValue, Secrets, Session, SessionError, UpdatePolicy,
};
use cloister_cas_store::{StoreError, WriteTxn};
use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::error::{CasError, CasResult, bad, corrupt, forbidden, internal};
use super::namespaces::{
    NamespaceClaim, StoredNamespace, namespace_claim, namespace_of, namespace_record, open_charge,
};
use super::session_cache::Loaded;
use super::signed::Signed;
use super::{Cas, CasState, NAMESPACES, SECRETS, SESSIONS};

/// The stored form of a session.
#[derive(Serialize, Deserialize)]
pub(super) struct StoredSession {
    pub(super) yaml: String,
    pub(super) hash: String,
    /// The client key that created it: its owner.
    pub(super) creator: String,
    #[serde(with = "time::serde::rfc3339")]
    pub(super) updated: OffsetDateTime,
}

impl StoredSession {
    /// The owner's key.
    pub(super) fn creator(&self) -> CasResult<ClientKey> {
        self.creator
            .parse()
            .map_err(|_| CasError::new(StatusCode::INTERNAL_SERVER_ERROR, "corrupt creator"))
    }
}

/// A session as stored and as parsed.
pub(super) struct ParsedSession {
    pub(super) session: Session,
    pub(super) stored: StoredSession,
}

impl Cas {
    /// The session `name` from the vault, or `None`.
    pub(super) fn load_session(&self, name: &str) -> CasResult<Option<ParsedSession>> {
        let Some(raw) = self.vault.get(SESSIONS, name)? else {
            return Ok(None);
        };
        let stored: StoredSession = serde_json::from_slice(&raw)
            .map_err(|_| CasError::new(StatusCode::INTERNAL_SERVER_ERROR, "corrupt session"))?;
        let session = cloister_cas_session::parse_session(&stored.yaml)?;
        Ok(Some(ParsedSession { session, stored }))
    }

    /// The secrets of the session `name`, which must exist.
    pub(super) fn load_secrets(&self, name: &str) -> CasResult<Secrets> {
        let raw = self
            .vault
            .get(SECRETS, name)?
            .ok_or_else(|| CasError::new(StatusCode::INTERNAL_SERVER_ERROR, "session without secrets"))?;
        serde_json::from_slice(&raw)
            .map_err(|_| CasError::new(StatusCode::INTERNAL_SERVER_ERROR, "corrupt secrets"))
    }

    /// Reads a session and its secrets from one snapshot of the vault (so never a session with
    /// another version's secrets) and refreshes its imports.
    pub(super) fn load_for_release(&self, name: &str) -> CasResult<Option<Loaded>> {
        let mut records = self
            .vault
            .get_all(&[(SESSIONS, name), (SECRETS, name)])?
            .into_iter();
        let (Some(session), secrets) = (records.next().flatten(), records.next().flatten()) else {
            return Ok(None);
        };
        let stored: StoredSession =
            serde_json::from_slice(&session).map_err(|_| internal("corrupt session"))?;
        let session = cloister_cas_session::parse_session(&stored.yaml)?;
        let secrets = secrets.ok_or_else(|| internal("session without secrets"))?;
        let mut secrets: Secrets =
            serde_json::from_slice(&secrets).map_err(|_| internal("corrupt secrets"))?;
        let owner = stored.creator()?;
        cloister_cas_session::refresh_imports(
            &session,
            &mut secrets,
            &Imports {
                cas: self,
                owner: &owner,
            },
        )
        .map_err(|e| forbidden(format!("session {name:?} cannot be released: {e}")))?;
        Ok(Some(Loaded {
            session,
            hash: stored.hash,
            secrets,
        }))
    }
}

fn session_text(body: &[u8]) -> CasResult<&str> {
    std::str::from_utf8(body).map_err(|_| bad("the session must be UTF-8 YAML"))
}

/// Resolves `import`s from other sessions' exported secrets, for an importing session owned
/// by `owner`: an export names the importer's owner as well as its name, and may pin the
/// importing version's hash.
struct Imports<'a> {
    cas: &'a Cas,
    owner: &'a ClientKey,
}

impl ImportResolver for Imports<'_> {
    fn resolve(
        &self,
        from_session: &str,
        secret: &str,
        importing: &str,
        importing_hash: &str,
    ) -> Result<SecretValue, SessionError> {
        let missing = || SessionError::ImportRefused {
            session: from_session.into(),
            secret: secret.into(),
            reason: "no such session or secret".into(),
        };
        let Ok(Some(ParsedSession {
            session: exporting, ..
        })) = self.cas.load_session(from_session)
        else {
            return Err(missing());
        };
        let importer = Importer {
            session: importing,
            owner: self.owner,
            hash: importing_hash,
        };
        cloister_cas_session::check_export(&exporting, secret, &importer)?;
        let secrets = self.cas.load_secrets(from_session).map_err(|_| missing())?;
        secrets.get(secret).cloned().ok_or_else(missing)
    }
}

/// Why a prepared session write was not committed.
pub(super) enum WriteRefused {
    /// The session changed after it was read for this write.
    Changed,
    /// The namespace belongs to someone else.
    Namespace(String),
    /// The namespace is undeclared and the open namespaces' budget is spent.
    Budget(String),
}

/// A session version checked and with its secrets materialized, ready to be committed.
pub(super) struct Prepared {
    pub(super) name: String,
    pub(super) hash: String,
    /// The stored hash it replaces (`None` when creating).
    pub(super) predecessor: Option<String>,
    stored: Vec<u8>,
    secrets: Zeroizing<Vec<u8>>,
    pub(super) yaml: String,
}

/// What a commit records with the version: who approved it and through which proposal, and
/// for a creation in a namespace with a board, that board (its approvals were checked).
pub(super) struct Approved<'a> {
    pub(super) by: &'a [VoteRecord],
    pub(super) proposal: Option<&'a str>,
    pub(super) namespace_rule: Option<&'a UpdatePolicy>,
}

impl Cas {
    /// Checks `session` (parsed from `text`) against `current` (the predecessor rule) and
    /// materializes its secrets; refusals are audited. `creator` is the owner it will have.
    pub(super) fn prepare_write(
        &self,
        client: &ClientKey,
        text: &str,
        session: &Session,
        current: Option<&ParsedSession>,
        creator: &ClientKey,
    ) -> CasResult<Prepared> {
        if let Err(e) = session.check_predecessor(current.map(|c| &c.session)) {
            self.refuse_request(
                "session-update-refused",
                client,
                &session.name,
                json!({"reason": e.to_string()}),
            );
            return Err(e.into());
        }
        let previous_secrets = match current {
            Some(_) => Some(self.load_secrets(&session.name)?),
            None => None,
        };
        let previous = current.map(|c| &c.session).zip(previous_secrets.as_ref());
        let refused_kind = if current.is_some() {
            "session-update-refused"
        } else {
            "session-create-refused"
        };
        let secrets = cloister_cas_session::materialize_secrets(
            session,
            previous,
            &Imports {
                cas: self,
                owner: creator,
            },
            OffsetDateTime::now_utc(),
        )
        .map_err(|e| {
            if matches!(e, SessionError::ImportRefused { .. }) {
                self.refuse_request(
                    refused_kind,
                    client,
                    &session.name,
                    json!({"reason": e.to_string()}),
                );
            }
            CasError::from(e)
        })?;
        let hash = session.hash();
        let stored = StoredSession {
            yaml: text.to_owned(),
            hash: hash.clone(),
            creator: creator.to_string(),
            updated: OffsetDateTime::now_utc(),
        };
        Ok(Prepared {
            name: session.name.clone(),
            hash,
            predecessor: current.map(|c| c.stored.hash.clone()),
            stored: serde_json::to_vec(&stored).map_err(|_| internal("encode"))?,
            secrets: Zeroizing::new(serde_json::to_vec(&secrets).map_err(|_| internal("encode"))?),
            yaml: text.to_owned(),
        })
    }
}

/// Commits a prepared version inside `txn`: re-checks that the session did not change since
/// it was read, claims the namespace when creating, stores the session, its secrets and the
/// version (for the history) with its approvals, and appends the audit entry. `actor` is who
/// submitted it; `open_budget` bounds what undeclared namespaces store in all.
pub(super) fn commit_write(
    txn: &mut WriteTxn<'_>,
    prepared: &Prepared,
    actor: &ClientKey,
    approved: &Approved<'_>,
    open_budget: u64,
) -> Result<Result<(), WriteRefused>, StoreError> {
    let name = &prepared.name;
    let actor_text = actor.to_string();
    let current = match txn.get(SESSIONS, name)? {
        Some(raw) => Some(serde_json::from_slice::<StoredSession>(&raw).map_err(|_| corrupt("session"))?),
        None => None,
    };
    if current.as_ref().map(|c| &c.hash) != prepared.predecessor.as_ref() {
        return Ok(Err(WriteRefused::Changed));
    }
    // Every refusal is decided before anything is written: `write` commits whatever the
    // closure put once it returns `Ok`, refusals included.
    let namespace = namespace_of(name);
    let claim = match current {
        Some(_) => NamespaceClaim::Owned,
        None => match namespace_claim(
            namespace,
            actor,
            approved.namespace_rule,
            &|t, k| txn.get(t, k),
            &|t, p| txn.keys(t, p),
        )? {
            Ok(claim) => claim,
            Err(reason) => return Ok(Err(WriteRefused::Namespace(reason))),
        },
    };
    let stored_bytes = prepared.stored.len() + prepared.secrets.len() + prepared.yaml.len();
    let charge = match open_charge(txn, name, stored_bytes, open_budget)? {
        Ok(charge) => charge,
        Err(reason) => return Ok(Err(WriteRefused::Budget(reason))),
    };
    if let NamespaceClaim::Record(how) = claim {
        let record = serde_json::to_vec(&StoredNamespace {
            owner: actor_text.clone(),
            how,
            since: OffsetDateTime::now_utc(),
            rule: None,
        })
        .map_err(|_| corrupt("namespace"))?;
        txn.put(NAMESPACES, namespace, &record)?;
        txn.audit_append(
            "namespace-claim",
            &actor_text,
            namespace,
            json!({"how": how.as_str(), "session": name}),
        )?;
    }
    if let Some(charge) = charge {
        charge.record(txn)?;
    }
    txn.put(SESSIONS, name, &prepared.stored)?;
    txn.put(SECRETS, name, &prepared.secrets)?;
    let version = super::history::record_version(txn, prepared, current.as_ref(), &actor_text, approved)?;
    let approvers: Vec<&str> = approved.by.iter().map(|v| v.key.as_str()).collect();
    let kind = if current.is_some() {
        "session-update"
    } else {
        "session-create"
    };
    txn.audit_append(
        kind,
        &actor_text,
        name,
        json!({
            "hash": prepared.hash,
            "predecessor": prepared.predecessor,
            "version": version,
            "approvals": approvers,
            "proposal": approved.proposal,
        }),
    )?;
    Ok(Ok(()))
}

/// Creates (`path_name` unset) or updates a session from its YAML, with the approvals in
/// `signatures` besides the signer's own (see `governance`).
pub(super) async fn write_session(
    cas: &Cas,
    client: &ClientKey,
    body: &[u8],
    path_name: Option<&str>,
    signatures: &[DetachedSignature],
) -> CasResult<SessionWritten> {
    let text = session_text(body)?;
    let session = cloister_cas_session::parse_session(text)?;
    if let Some(name) = path_name
        && name != session.name
    {
        return Err(bad(format!(
            "the URL names session {name:?} but the body defines {:?}",
            session.name
        )));
    }
    let current = cas.load_session(&session.name)?;
    if path_name.is_none() && current.is_some() {
        return Err(CasError::new(
            StatusCode::CONFLICT,
            format!(
                "session {:?} exists; update it with its predecessor",
                session.name
            ),
        ));
    }
    if path_name.is_some() && current.is_none() {
        return Err(CasError::new(
            StatusCode::NOT_FOUND,
            format!("no session {:?}", session.name),
        ));
    }
    let mut namespace_rule = None;
    let (creator, approvals) = match &current {
        Some(current) => {
            let creator = current.stored.creator()?;
            let approvals = cas.authorize_direct(client, current, &creator, &session, signatures)?;
            (creator, approvals)
        }
        None => {
            let record = namespace_record(&|t, k| cas.vault.get(t, k), namespace_of(&session.name))?;
            let approvals = match record {
                Some(StoredNamespace {
                    rule: Some(rule),
                    owner,
                    ..
                }) => {
                    let owner: ClientKey = owner.parse().map_err(|_| internal("corrupt namespace owner"))?;
                    let approvals = cas.authorize_creation(client, &rule, &owner, &session, signatures)?;
                    namespace_rule = Some(rule);
                    approvals
                }
                _ => Vec::new(),
            };
            (client.clone(), approvals)
        }
    };
    let prepared = cas.prepare_write(client, text, &session, current.as_ref(), &creator)?;
    let approved = Approved {
        by: &approvals,
        proposal: None,
        namespace_rule: namespace_rule.as_ref(),
    };
    // The checks above are repeated against the transaction's view, so that the decision, the
    // namespace claim, the session and its audit entry are one commit.
    let committed = cas.vault.write(|txn| {
        commit_write(
            txn,
            &prepared,
            client,
            &approved,
            cas.config.governance.open_namespace_budget,
        )
    })?;
    let Prepared { name, hash, .. } = prepared;
    match committed {
        Ok(()) => {
            cas.cache.invalidate();
            Ok(SessionWritten { name, hash })
        }
        Err(WriteRefused::Changed) => Err(CasError::new(
            StatusCode::CONFLICT,
            format!("session {name:?} changed while this write was prepared; read it again and retry"),
        )),
        Err(WriteRefused::Namespace(reason)) => {
            cas.refuse_request("session-create-refused", client, &name, json!({"reason": reason}));
            Err(forbidden(reason))
        }
        Err(WriteRefused::Budget(reason)) => {
            let kind = match current {
                Some(_) => "session-update-refused",
                None => "session-create-refused",
            };
            cas.refuse_request(kind, client, &name, json!({"reason": reason}));
            Err(forbidden(reason))
        }
    }
}

/// `POST /v1/sessions`: a new session, owned by its signer.
pub(super) async fn create_session(
    State(cas): CasState,
    Signed { client, body }: Signed,
) -> CasResult<impl IntoResponse> {
    let written = write_session(&cas, &client, &body, None, &[]).await?;
    Ok((StatusCode::CREATED, axum::Json(written)))
}

/// `PUT /v1/sessions/{name}`: the next version of a session, naming its predecessor.
pub(super) async fn update_session(
    State(cas): CasState,
    UrlPath(name): UrlPath<String>,
    Signed { client, body }: Signed,
) -> CasResult<impl IntoResponse> {
    Ok(axum::Json(
        write_session(&cas, &client, &body, Some(&name), &[]).await?,
    ))
}

/// The session for its owner (as submitted, explicit values included: the read is audited
/// when it holds any) or, for other readers, with every explicit secret value removed.
pub(super) async fn get_session(
    State(cas): CasState,
    UrlPath(name): UrlPath<String>,
    Signed { client, .. }: Signed,
) -> CasResult<impl IntoResponse> {
    let ParsedSession { session, stored } = cas
        .load_session(&name)?
        .ok_or_else(|| CasError::new(StatusCode::NOT_FOUND, format!("no session {name:?}")))?;
    let creator = stored.creator()?;
    // Board members read the version they decide on (redacted, unless they own it).
    if !session.access_policy.may_read(&client, &creator)
        && !cas.is_auditor(&client)
        && !cas.is_board_member(&session.access_policy.update, &client, &creator)
    {
        cas.refuse_request("session-read-refused", &client, &name, json!({}));
        return Err(forbidden(format!("not allowed to read session {name:?}")));
    }
    let explicit: Vec<&str> = session
        .secrets
        .iter()
        .filter(|s| s.value.is_some())
        .map(|s| s.name.as_str())
        .collect();
    if client == creator {
        if !explicit.is_empty() {
            cas.record_read(
                "session-read",
                &client,
                &name,
                json!({"hash": stored.hash, "explicit_values": explicit}),
            )?;
        }
        return Ok(axum::Json(SessionRecord {
            name,
            hash: stored.hash,
            yaml: stored.yaml,
            creator: stored.creator,
            redacted: false,
        }));
    }
    let mut redacted = session.clone();
    for secret in &mut redacted.secrets {
        secret.value = None;
    }
    let yaml = serde_json::to_string_pretty(&redacted).map_err(|_| internal("encode"))?;
    Ok(axum::Json(SessionRecord {
        name,
        hash: stored.hash,
        yaml,
        creator: stored.creator,
        redacted: true,
    }))
}

#[derive(Deserialize)]
/// The query of `GET /v1/sessions`.
pub(super) struct ListQuery {
    #[serde(default)]
    prefix: String,
}

/// `GET /v1/sessions`: the names and hashes of the sessions the signer may read.
pub(super) async fn list_sessions(
    State(cas): CasState,
    Query(query): Query<ListQuery>,
    Signed { client, .. }: Signed,
) -> CasResult<impl IntoResponse> {
    let mut readable = BTreeMap::new();
    for name in cas.vault.keys(SESSIONS, &query.prefix)? {
        if let Some(ParsedSession { session, stored }) = cas.load_session(&name)?
            && let Ok(creator) = stored.creator()
            && (session.access_policy.may_read(&client, &creator) || cas.is_auditor(&client))
        {
            readable.insert(name, stored.hash);
        }
    }
    Ok(axum::Json(readable))
}
