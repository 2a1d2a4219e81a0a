//! Governance: changes to a session judged by the board of the version they replace
//! (`access_policy.update`, see `cloister_cas_session::governance`).
//!
//! A change is approved by votes signed over its triple (session, predecessor, new hash; see
//! `cloister_cas_client::governance`). Votes arrive either all at once with the new version
//! (`POST /v1/updates`, or a plain update whose signer alone meets the rule) or one by one on
//! a **proposal** kept in the vault (`/v1/proposals`). A proposal applies, in the transaction
//! that records the vote completing it, as soon as its rule is met and no veto can come any
//! more: every veto holder approved, or the veto window has passed since it was proposed (a
//! background sweep applies those). It closes as `vetoed` when a veto holder rejects it,
//! `rejected` when its rule can no longer be met, `void` when its predecessor is no longer
//! current, `expired` after its time, `failed` when it cannot be applied. Every step and every
//! refused vote is an audit entry naming the voter and the change.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use cloister_cas_client::governance::{
    Change, DetachedSignature, ProposalInfo, SignedUpdate, Vote, VoteRecord, VoteRequest,
};
use cloister_cas_session::{ClientKey, Members, Session, UpdatePolicy};
use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::watch;

use super::error::{CasError, CasResult, bad, corrupt, forbidden, internal};
use super::namespaces::{StoredNamespace, namespace_of, namespace_record, open_charge};
use super::sessions::{Approved, ParsedSession, Prepared, WriteRefused, commit_write, write_session};
use super::signed::Signed;
use super::{Cas, CasState, PROPOSALS, PROPOSALS_OPEN};

/// The CAS's governance settings.
#[derive(Debug, Clone)]
pub struct GovernanceConfig {
    /// Keys that read every session (never a raw secret value), every proposal, every history
    /// and the whole audit log.
    pub auditors: Vec<String>,
    /// How long a proposal stays open.
    pub proposal_ttl: Duration,
    /// How long veto holders have to object, unless their board sets its own `veto_window`: a
    /// change under a board with a veto list applies before this has passed since it was
    /// proposed only when every veto holder approved it.
    pub veto_window: Duration,
    /// How often open proposals are checked for expiry, voiding and a passed veto window.
    pub sweep_interval: Duration,
    /// How many bytes sessions, their versions and proposals may take, in all, in namespaces
    /// that no administrator declared (claimed by whoever created their first session, with
    /// any key). 0 closes claiming: sessions then live only in declared namespaces.
    pub open_namespace_budget: u64,
}

/// The default of [`GovernanceConfig::open_namespace_budget`]: 64 MiB, thousands of sessions.
pub const DEFAULT_OPEN_NAMESPACE_BUDGET: u64 = 64 << 20;

impl Default for GovernanceConfig {
    fn default() -> Self {
        Self {
            auditors: Vec::new(),
            proposal_ttl: Duration::from_secs(7 * 24 * 3600),
            veto_window: Duration::from_secs(24 * 3600),
            sweep_interval: Duration::from_secs(1),
            open_namespace_budget: DEFAULT_OPEN_NAMESPACE_BUDGET,
        }
    }
}

/// A proposal as stored.
#[derive(Clone, Serialize, Deserialize)]
struct StoredProposal {
    id: String,
    change: Change,
    yaml: String,
    proposer: String,
    #[serde(with = "time::serde::rfc3339")]
    created: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    expires: OffsetDateTime,
    state: Stage,
    reason: Option<String>,
    approvals: Vec<VoteRecord>,
    rejections: Vec<VoteRecord>,
}

/// Where a proposal stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Stage {
    Pending,
    Applied,
    Rejected,
    Vetoed,
    Expired,
    Void,
    Failed,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Pending => "pending",
            Stage::Applied => "applied",
            Stage::Rejected => "rejected",
            Stage::Vetoed => "vetoed",
            Stage::Expired => "expired",
            Stage::Void => "void",
            Stage::Failed => "failed",
        }
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn keys_of(votes: &[VoteRecord]) -> BTreeSet<ClientKey> {
    votes.iter().filter_map(|v| v.key.parse().ok()).collect()
}

/// Verifies a vote's signature over `change`; returns the voter's key.
fn verify_vote(change: &Change, vote: Vote, signature: &DetachedSignature) -> Result<ClientKey, String> {
    let bytes = change.signed_bytes(vote)?;
    let key = crate::auth::verify_detached(&signature.key, &bytes, &signature.signature).map_err(|e| {
        format!(
            "the {} signature of {} does not verify over this change (session {:?}, predecessor {}, \
             hash {}): {e}; it may have been made for another version",
            vote.as_str(),
            signature.key,
            change.session,
            change.predecessor.as_deref().unwrap_or("none"),
            change.hash
        )
    })?;
    key.parse().map_err(|e: String| e)
}

impl Cas {
    /// Whether `key` is a configured auditor.
    pub(super) fn is_auditor(&self, key: &ClientKey) -> bool {
        let shown = key.to_string();
        self.config.governance.auditors.iter().any(|a| a.trim() == shown)
    }

    /// Whether `client` may see a session's proposals and history: its readers, its board's
    /// members, auditors and administrators.
    pub(super) fn may_oversee(&self, session: &Session, client: &ClientKey, creator: &ClientKey) -> bool {
        session.access_policy.may_read(client, creator)
            || self.is_board_member(&session.access_policy.update, client, creator)
            || self.is_auditor(client)
            || self.is_admin(client)
    }

    /// How long the veto holders of `policy` have to object: its board's own window, or the
    /// CAS's.
    fn veto_window_of(&self, policy: &UpdatePolicy) -> Duration {
        policy.veto_window().unwrap_or(self.config.governance.veto_window)
    }

    /// Whether `key` is a member of `policy` (attested members resolved to their bound keys).
    pub(super) fn is_board_member(
        &self,
        policy: &UpdatePolicy,
        key: &ClientKey,
        creator: &ClientKey,
    ) -> bool {
        let attested = |session: &str, service: &str| self.attested_keys(session, service);
        policy.is_member_with(
            key,
            &Members {
                creator,
                attested: &attested,
            },
        )
    }

    /// Decides an update submitted whole (`PUT` or `POST /v1/updates`) by the board of
    /// `current`. Returns the approvals to record; every refusal is audited.
    pub(super) fn authorize_direct(
        &self,
        client: &ClientKey,
        current: &ParsedSession,
        creator: &ClientKey,
        session: &Session,
        signatures: &[DetachedSignature],
    ) -> CasResult<Vec<VoteRecord>> {
        let policy = &current.session.access_policy.update;
        let name = &session.name;
        let refuse = |status: StatusCode, reason: String| {
            self.refuse_request(
                "session-update-refused",
                client,
                name,
                json!({"reason": reason, "hash": session.hash()}),
            );
            CasError::new(status, reason)
        };
        if signatures.is_empty() && matches!(policy, UpdatePolicy::AnyOf(_)) {
            if !policy.is_met(&BTreeSet::from([client.clone()]), creator) {
                self.refuse_request(
                    "session-update-refused",
                    client,
                    name,
                    json!({"reason": "not allowed by the access policy"}),
                );
                return Err(forbidden(format!("not allowed to update session {name:?}")));
            }
            return Ok(vec![VoteRecord {
                key: client.to_string(),
                signature: String::new(),
                at: rfc3339(OffsetDateTime::now_utc()),
                submitted_by: None,
            }]);
        }
        let change = Change {
            session: name.clone(),
            predecessor: Some(current.stored.hash.clone()),
            hash: session.hash(),
        };
        self.gather_approvals(client, policy, creator, &change, signatures, &refuse)
    }

    /// Decides the creation of `session` in a namespace whose board is `rule` (`CREATOR`
    /// being the namespace's `owner`): the signer and the detached `signatures` (over the
    /// change with no predecessor) are its approvers.
    pub(super) fn authorize_creation(
        &self,
        client: &ClientKey,
        rule: &UpdatePolicy,
        owner: &ClientKey,
        session: &Session,
        signatures: &[DetachedSignature],
    ) -> CasResult<Vec<VoteRecord>> {
        let change = Change {
            session: session.name.clone(),
            predecessor: None,
            hash: session.hash(),
        };
        let refuse = |status: StatusCode, reason: String| {
            self.refuse_request(
                "session-create-refused",
                client,
                &session.name,
                json!({"reason": reason, "hash": change.hash}),
            );
            CasError::new(status, reason)
        };
        self.gather_approvals(client, rule, owner, &change, signatures, &refuse)
    }

    /// The approvals of a change submitted whole: the signer when it is a member, and each
    /// detached signature, which must verify over `change` and come from a member (one key
    /// counts once). Refused when they do not meet `policy` or leave a veto holder silent
    /// (unless the veto window is zero).
    fn gather_approvals(
        &self,
        client: &ClientKey,
        policy: &UpdatePolicy,
        creator: &ClientKey,
        change: &Change,
        signatures: &[DetachedSignature],
        refuse: &dyn Fn(StatusCode, String) -> CasError,
    ) -> CasResult<Vec<VoteRecord>> {
        let name = &change.session;
        let now = rfc3339(OffsetDateTime::now_utc());
        let attested = |session: &str, service: &str| self.attested_keys(session, service);
        let members = Members {
            creator,
            attested: &attested,
        };
        let mut approvals = Vec::new();
        let mut approvers = BTreeSet::new();
        if policy.is_member_with(client, &members) {
            approvers.insert(client.clone());
            approvals.push(VoteRecord {
                key: client.to_string(),
                signature: String::new(),
                at: now.clone(),
                submitted_by: None,
            });
        }
        for signature in signatures {
            let key = verify_vote(change, Vote::Approve, signature)
                .map_err(|reason| refuse(StatusCode::FORBIDDEN, reason))?;
            if !policy.is_member_with(&key, &members) {
                return Err(refuse(
                    StatusCode::FORBIDDEN,
                    format!("{key} is not a member of the board of {name:?}: its approval does not count"),
                ));
            }
            // Two approvals by one key count once.
            if approvers.insert(key.clone()) {
                approvals.push(VoteRecord {
                    key: key.to_string(),
                    signature: signature.signature.clone(),
                    at: now.clone(),
                    submitted_by: Some(client.to_string()),
                });
            }
        }
        if !policy.is_met_with(&approvers, &members) {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "the approvals ({} distinct member key(s)) do not meet the update rule of {name:?} \
                     in force: propose the change (cloister cas session propose) or add signatures \
                     (cloister cas session sign)",
                    approvers.len()
                ),
            ));
        }
        let silent: Vec<String> = policy
            .veto_holders(creator)
            .into_iter()
            .filter(|k| !approvers.contains(k))
            .map(|k| k.to_string())
            .collect();
        if !silent.is_empty() && !self.veto_window_of(policy).is_zero() {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "{name:?} has veto holders who have not approved ({}): propose the change so that \
                     they can object within the veto window, or include their signatures",
                    silent.join(", ")
                ),
            ));
        }
        Ok(approvals)
    }

    /// The board of the namespace of session `name` and the namespace's owner (`CREATOR`), if
    /// the namespace has one: it decides the creation of sessions in it.
    fn namespace_board(&self, name: &str) -> CasResult<Option<(UpdatePolicy, ClientKey)>> {
        let record = namespace_record(&|t, k| self.vault.get(t, k), namespace_of(name))?;
        match record {
            Some(StoredNamespace {
                rule: Some(rule),
                owner,
                ..
            }) => {
                let owner = owner.parse().map_err(|_| internal("corrupt namespace owner"))?;
                Ok(Some((rule, owner)))
            }
            _ => Ok(None),
        }
    }

    /// The board that decides `change` now and what `CREATOR` stands for in it: the board of
    /// the session's current version for an update, the namespace's for a creation; `None`
    /// when there is none any more (the proposal is settled as void).
    fn board_in_force(&self, change: &Change) -> CasResult<Option<(UpdatePolicy, ClientKey)>> {
        match (&change.predecessor, self.load_session(&change.session)?) {
            (Some(_), Some(current)) => Ok(Some((
                current.session.access_policy.update,
                current.stored.creator()?,
            ))),
            (None, None) => self.namespace_board(&change.session),
            _ => Ok(None),
        }
    }

    /// Whether `client` may see the proposal of `change` (see [`Cas::may_oversee`]); for a
    /// creation, also its namespace's board members and owner.
    fn may_oversee_change(&self, change: &Change, client: &ClientKey) -> CasResult<bool> {
        if self.is_auditor(client) || self.is_admin(client) {
            return Ok(true);
        }
        if let Some(current) = self.load_session(&change.session)?
            && self.may_oversee(&current.session, client, &current.stored.creator()?)
        {
            return Ok(true);
        }
        Ok(change.predecessor.is_none()
            && self
                .namespace_board(&change.session)?
                .is_some_and(|(rule, owner)| owner == *client || self.is_board_member(&rule, client, &owner)))
    }

    fn load_proposal(&self, id: &str) -> CasResult<StoredProposal> {
        let raw = self
            .vault
            .get(PROPOSALS, id)?
            .ok_or_else(|| CasError::new(StatusCode::NOT_FOUND, format!("no proposal {id:?}")))?;
        serde_json::from_slice(&raw).map_err(|_| internal("corrupt proposal"))
    }

    fn info(&self, p: &StoredProposal, client: &ClientKey, with_yaml: bool) -> ProposalInfo {
        let (yaml, redacted) = if !with_yaml {
            (None, false)
        } else if client.to_string() == p.proposer
            || self.owner_of(&p.change.session).as_ref() == Some(client)
        {
            (Some(p.yaml.clone()), false)
        } else {
            let redacted = cloister_cas_session::parse_session(&p.yaml)
                .ok()
                .and_then(|mut s| {
                    for secret in &mut s.secrets {
                        secret.value = None;
                    }
                    serde_json::to_string_pretty(&s).ok()
                });
            (redacted, true)
        };
        ProposalInfo {
            id: p.id.clone(),
            change: p.change.clone(),
            proposer: p.proposer.clone(),
            state: p.state.as_str().into(),
            reason: p.reason.clone(),
            created: rfc3339(p.created),
            expires: rfc3339(p.expires),
            approvals: p.approvals.clone(),
            rejections: p.rejections.clone(),
            yaml,
            redacted,
        }
    }

    fn owner_of(&self, name: &str) -> Option<ClientKey> {
        self.load_session(name)
            .ok()
            .flatten()
            .and_then(|p| p.stored.creator().ok())
    }

    /// Records `vote` (when given) on proposal `id` and settles it: closes it when it expired,
    /// lost its predecessor, was vetoed or can no longer be met, and applies it when its rule
    /// is met and no veto can come any more — the vote, the new version and every audit entry
    /// in one transaction. Returns the proposal as it stands, or the refusal of the vote.
    fn settle(
        &self,
        id: &str,
        vote: Option<(Vote, VoteRecord)>,
        actor: &ClientKey,
    ) -> CasResult<StoredProposal> {
        let snapshot = self.load_proposal(id)?;
        if snapshot.state != Stage::Pending {
            return Ok(snapshot);
        }
        let now = OffsetDateTime::now_utc();
        let current = self.load_session(&snapshot.change.session)?;
        // The version is submitted by its proposer, whoever's vote or sweep completes it.
        let proposer: ClientKey = snapshot
            .proposer
            .parse()
            .map_err(|_| internal("corrupt proposer"))?;
        let mut prospect = snapshot.clone();
        if let Some((kind, record)) = &vote {
            match kind {
                Vote::Approve => prospect.approvals.push(record.clone()),
                Vote::Reject => prospect.rejections.push(record.clone()),
            }
        }
        // What the proposal comes to with this vote, judged on the snapshot; the transaction
        // below re-checks what it relies on.
        let mut outcome: Option<(Stage, String)> = None;
        let mut prepared: Option<Prepared> = None;
        let mut namespace_rule: Option<UpdatePolicy> = None;
        let open_budget = self.config.governance.open_namespace_budget;
        let target = match (&snapshot.change.predecessor, current) {
            (_, _) if now >= snapshot.expires => {
                outcome = Some((Stage::Expired, "its time ran out before its rule was met".into()));
                None
            }
            (Some(_), None) => {
                outcome = Some((Stage::Void, "the session no longer exists".into()));
                None
            }
            (None, Some(c)) => {
                outcome = Some((
                    Stage::Void,
                    format!("the session was created meanwhile (at {})", c.stored.hash),
                ));
                None
            }
            (Some(predecessor), Some(c)) if *predecessor != c.stored.hash => {
                outcome = Some((
                    Stage::Void,
                    format!(
                        "its predecessor is no longer current (the session is at {})",
                        c.stored.hash
                    ),
                ));
                None
            }
            (Some(_), Some(c)) => {
                let creator = c.stored.creator()?;
                Some((c.session.access_policy.update.clone(), creator, Some(c)))
            }
            (None, None) => match self.namespace_board(&snapshot.change.session)? {
                Some((rule, owner)) => {
                    namespace_rule = Some(rule.clone());
                    Some((rule, owner, None))
                }
                None => {
                    outcome = Some((Stage::Void, "the namespace no longer has a board".into()));
                    None
                }
            },
        };
        if let Some((policy, creator, current)) = &target {
            let approvers = keys_of(&prospect.approvals);
            let rejecters = keys_of(&prospect.rejections);
            let vetoes = policy.veto_holders(creator);
            let attested = |session: &str, service: &str| self.attested_keys(session, service);
            let members = Members {
                creator,
                attested: &attested,
            };
            if let Some(veto) = rejecters.intersection(&vetoes).next() {
                outcome = Some((Stage::Vetoed, format!("vetoed by {veto}")));
            } else if !policy.can_still_be_met_with(&rejecters, &members) {
                outcome = Some((
                    Stage::Rejected,
                    "enough members rejected it that its rule can no longer be met".into(),
                ));
            } else if policy.is_met_with(&approvers, &members) {
                let window_passed = now - snapshot.created >= self.veto_window_of(policy);
                if vetoes.is_subset(&approvers) || window_passed {
                    // A creation's owner is its proposer, as if it had submitted it whole.
                    let owner = if current.is_some() { creator } else { &proposer };
                    match cloister_cas_session::parse_session(&snapshot.yaml)
                        .map_err(CasError::from)
                        .and_then(|s| {
                            self.prepare_write(&proposer, &snapshot.yaml, &s, current.as_ref(), owner)
                        }) {
                        Ok(p) => prepared = Some(p),
                        Err(e) => outcome = Some((Stage::Failed, e.message)),
                    }
                }
            }
        }
        if vote.is_none() && outcome.is_none() && prepared.is_none() {
            return Ok(snapshot);
        }
        let actor_text = actor.to_string();
        let result = self.vault.write(|txn| {
            let raw = txn.get(PROPOSALS, id)?.ok_or_else(|| corrupt("proposal"))?;
            let mut p: StoredProposal = serde_json::from_slice(&raw).map_err(|_| corrupt("proposal"))?;
            if p.state != Stage::Pending {
                // Settled meanwhile (by the sweep or another request): a vote comes too late,
                // a settling finds nothing left to do.
                return Ok(match vote {
                    Some(_) => Err(format!("proposal {id} is {} meanwhile", p.state.as_str())),
                    None => Ok(p),
                });
            }
            let detail = |p: &StoredProposal| {
                json!({"proposal": p.id, "predecessor": p.change.predecessor, "hash": p.change.hash})
            };
            if let Some((kind, record)) = &vote {
                if p.approvals.iter().chain(&p.rejections).any(|v| v.key == record.key) {
                    return Ok(Err(format!("{} has voted on proposal {id} already", record.key)));
                }
                match kind {
                    Vote::Approve => p.approvals.push(record.clone()),
                    Vote::Reject => p.rejections.push(record.clone()),
                }
                let mut entry = detail(&p);
                entry["voter"] = json!(record.key);
                entry["signature"] = json!(record.signature);
                txn.audit_append(
                    &format!("proposal-{}", kind.as_str()),
                    &actor_text,
                    &p.change.session,
                    entry,
                )?;
            }
            let mut closing = outcome.clone();
            if let Some(prepared) = &prepared
                && closing.is_none()
            {
                let approved = Approved {
                    by: &p.approvals,
                    proposal: Some(&p.id),
                    namespace_rule: namespace_rule.as_ref(),
                };
                match commit_write(txn, prepared, &proposer, &approved, open_budget)? {
                    Ok(()) => closing = Some((Stage::Applied, format!("applied as {}", prepared.hash))),
                    Err(WriteRefused::Changed) => {
                        closing = Some((Stage::Void, "its predecessor is no longer current".into()));
                    }
                    Err(WriteRefused::Namespace(reason) | WriteRefused::Budget(reason)) => {
                        closing = Some((Stage::Failed, reason))
                    }
                }
            }
            if let Some((state, reason)) = closing {
                p.state = state;
                p.reason = Some(reason.clone());
                let mut entry = detail(&p);
                entry["reason"] = json!(reason);
                entry["approvals"] = json!(p.approvals.iter().map(|v| &v.key).collect::<Vec<_>>());
                txn.audit_append(
                    &format!("proposal-{}", state.as_str()),
                    &actor_text,
                    &p.change.session,
                    entry,
                )?;
                txn.delete(PROPOSALS_OPEN, id)?;
            }
            let bytes = serde_json::to_vec(&p).map_err(|_| corrupt("proposal"))?;
            txn.put(PROPOSALS, id, &bytes)?;
            Ok(Ok(p))
        })?;
        match result {
            Ok(p) => {
                if p.state == Stage::Applied {
                    self.cache.invalidate();
                }
                // A vote that landed between the snapshot and the transaction may have met the
                // rule: settle once more (the sweep would, a second later).
                if vote.is_some() && p.state == Stage::Pending && prepared.is_none() {
                    return self.settle(id, None, actor);
                }
                Ok(p)
            }
            Err(reason) => {
                self.refuse_request(
                    "proposal-vote-refused",
                    actor,
                    &snapshot.change.session,
                    json!({"proposal": id, "reason": reason}),
                );
                Err(CasError::new(StatusCode::CONFLICT, reason))
            }
        }
    }

    /// Settles every open proposal (expiry, voiding, passed veto windows).
    fn sweep(&self) {
        let Ok(open) = self.vault.keys(PROPOSALS_OPEN, "") else {
            return;
        };
        let Some(identity) = self
            .vault
            .identity_public()
            .and_then(|k| ClientKey::ed25519(&k).ok())
        else {
            return;
        };
        for id in open {
            if let Err(e) = self.settle(&id, None, &identity) {
                tracing::warn!(proposal = %id, error = %e.message, "cannot settle a proposal");
            }
        }
    }
}

/// Settles open proposals every `sweep_interval` while unsealed, until shutdown.
pub(super) async fn sweep_proposals(cas: Arc<Cas>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(cas.config.governance.sweep_interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if cas.vault.status().sealed {
            continue;
        }
        let cas = cas.clone();
        let _ = tokio::task::spawn_blocking(move || cas.sweep()).await;
    }
}

/// `POST /v1/proposals`: proposes a new version of a session to its board, or a new session
/// to its namespace's board. Only a member of the board in force proposes; the YAML must name
/// the current version as its predecessor (none for a creation).
pub(super) async fn propose(
    State(cas): CasState,
    Signed { client, body }: Signed,
) -> CasResult<impl IntoResponse> {
    // Anyone can make keys: the signer's standing is checked on the session's name alone, so a
    // stranger's text costs a scan for its name and a limited refusal, never a full parse.
    let unreadable = |reason: String| {
        cas.refuse_request("proposal-create-refused", &client, "", json!({"reason": reason}));
        bad(reason)
    };
    let text = std::str::from_utf8(&body).map_err(|_| unreadable("the session must be UTF-8 YAML".into()))?;
    let name = cloister_cas_session::session_name(text).map_err(|e| unreadable(e.to_string()))?;
    if !crate::names::valid_session_name(&name) {
        return Err(unreadable("invalid session name".into()));
    }
    let current = cas.load_session(&name)?;
    let refuse = |status: StatusCode, reason: String| {
        cas.refuse_request(
            "proposal-create-refused",
            &client,
            &name,
            json!({"reason": reason}),
        );
        CasError::new(status, reason)
    };
    // An update is decided by the current version's board; a creation by its namespace's.
    let (policy, creator) = match &current {
        Some(current) => (
            current.session.access_policy.update.clone(),
            current.stored.creator()?,
        ),
        None => cas.namespace_board(&name)?.ok_or_else(|| {
            CasError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "no session {name:?}, and its namespace has no board: create it directly \
                     (only namespaces with a board take creation proposals)"
                ),
            )
        })?,
    };
    if !cas.is_board_member(&policy, &client, &creator) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            match &current {
                Some(_) => format!("only members of session {name:?}'s board propose changes to it"),
                None => format!(
                    "only members of namespace {:?}'s board propose sessions in it",
                    namespace_of(&name)
                ),
            },
        ));
    }
    let session = cloister_cas_session::parse_session(text).map_err(|e| {
        let error = CasError::from(e.clone());
        refuse(error.status, e.to_string());
        error
    })?;
    if session.name != name {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "the session names itself twice".into(),
        ));
    }
    if let Err(e) = session.check_predecessor(current.as_ref().map(|c| &c.session)) {
        return Err(refuse(CasError::from(e.clone()).status, e.to_string()));
    }
    let change = Change {
        session: name.clone(),
        predecessor: current.as_ref().map(|c| c.stored.hash.clone()),
        hash: session.hash(),
    };
    for id in cas.vault.keys(PROPOSALS_OPEN, "")? {
        if let Ok(open) = cas.load_proposal(&id)
            && open.change == change
            && open.state == Stage::Pending
        {
            return Err(refuse(
                StatusCode::CONFLICT,
                format!("this change is already proposed as {id}"),
            ));
        }
    }
    let mut raw_id = [0u8; 8];
    rand::fill(&mut raw_id);
    let now = OffsetDateTime::now_utc();
    let proposal = StoredProposal {
        id: hex::encode(raw_id),
        change,
        yaml: text.to_owned(),
        proposer: client.to_string(),
        created: now,
        expires: now + cas.config.governance.proposal_ttl,
        state: Stage::Pending,
        reason: None,
        approvals: Vec::new(),
        rejections: Vec::new(),
    };
    let bytes = serde_json::to_vec(&proposal).map_err(|_| internal("encode"))?;
    let charged = cas.vault.write(|txn| {
        match open_charge(
            txn,
            &name,
            bytes.len(),
            cas.config.governance.open_namespace_budget,
        )? {
            Ok(Some(charge)) => charge.record(txn)?,
            Ok(None) => {}
            Err(reason) => return Ok(Err(reason)),
        }
        txn.put(PROPOSALS, &proposal.id, &bytes)?;
        txn.put(PROPOSALS_OPEN, &proposal.id, name.as_bytes())?;
        txn.audit_append(
            "proposal-create",
            &client.to_string(),
            &name,
            json!({
                "proposal": proposal.id,
                "predecessor": proposal.change.predecessor,
                "hash": proposal.change.hash,
                "expires": rfc3339(proposal.expires),
            }),
        )?;
        Ok(Ok(()))
    })?;
    if let Err(reason) = charged {
        return Err(refuse(StatusCode::FORBIDDEN, reason));
    }
    Ok((
        StatusCode::CREATED,
        axum::Json(cas.info(&proposal, &client, true)),
    ))
}

/// The query of `GET /v1/proposals`.
#[derive(Deserialize)]
pub(super) struct ListQuery {
    #[serde(default)]
    prefix: String,
}

/// `GET /v1/proposals`: the proposals (open and closed) of the sessions the signer oversees.
pub(super) async fn list(
    State(cas): CasState,
    Query(query): Query<ListQuery>,
    Signed { client, .. }: Signed,
) -> CasResult<impl IntoResponse> {
    let mut out = Vec::new();
    for id in cas.vault.keys(PROPOSALS, "")? {
        let p = cas.load_proposal(&id)?;
        if !p.change.session.starts_with(&query.prefix) {
            continue;
        }
        if cas.may_oversee_change(&p.change, &client)? {
            out.push(cas.info(&p, &client, false));
        }
    }
    out.sort_by(|a, b| a.created.cmp(&b.created));
    Ok(axum::Json(out))
}

/// `GET /v1/proposals/{id}`: one proposal with its session text, settled first.
pub(super) async fn show(
    State(cas): CasState,
    UrlPath(id): UrlPath<String>,
    Signed { client, .. }: Signed,
) -> CasResult<impl IntoResponse> {
    let p = cas.load_proposal(&id)?;
    if !cas.may_oversee_change(&p.change, &client)? {
        cas.refuse_request(
            "proposal-read-refused",
            &client,
            &p.change.session,
            json!({"proposal": id}),
        );
        return Err(forbidden(format!("not allowed to see proposal {id}")));
    }
    let p = cas.settle(&id, None, &client)?;
    Ok(axum::Json(cas.info(&p, &client, true)))
}

/// `POST /v1/proposals/{id}/{approve|reject}`: a vote signed over the proposal's change, by a
/// member of the board in force. Forged signatures, votes over another change, non-members,
/// second votes of one key and votes on closed proposals are refused and audited.
pub(super) async fn vote(
    State(cas): CasState,
    UrlPath((id, action)): UrlPath<(String, String)>,
    Signed { client, body }: Signed,
) -> CasResult<impl IntoResponse> {
    let kind = match action.as_str() {
        "approve" => Vote::Approve,
        "reject" => Vote::Reject,
        other => {
            return Err(CasError::new(
                StatusCode::NOT_FOUND,
                format!("no action {other:?}"),
            ));
        }
    };
    let request: VoteRequest =
        serde_json::from_slice(&body).map_err(|e| bad(format!("malformed vote: {e}")))?;
    let p = cas.settle(&id, None, &client)?;
    let refuse = |status: StatusCode, reason: String| {
        cas.refuse_request(
            "proposal-vote-refused",
            &client,
            &p.change.session,
            json!({"proposal": id, "vote": kind.as_str(), "voter": request.signature.key, "reason": reason}),
        );
        CasError::new(status, reason)
    };
    if p.state != Stage::Pending {
        let reason = p.reason.clone().unwrap_or_default();
        return Err(refuse(
            StatusCode::CONFLICT,
            format!(
                "proposal {id} is {} ({reason}): votes are closed",
                p.state.as_str()
            ),
        ));
    }
    let voter = verify_vote(&p.change, kind, &request.signature)
        .map_err(|reason| refuse(StatusCode::FORBIDDEN, reason))?;
    let (policy, creator) = cas
        .board_in_force(&p.change)?
        .ok_or_else(|| CasError::new(StatusCode::CONFLICT, "the board deciding this proposal is gone"))?;
    if !cas.is_board_member(&policy, &voter, &creator) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!(
                "{voter} is not a member of the board deciding {:?}: its vote does not count",
                p.change.session
            ),
        ));
    }
    if p.approvals
        .iter()
        .chain(&p.rejections)
        .any(|v| v.key == voter.to_string())
    {
        return Err(refuse(
            StatusCode::CONFLICT,
            format!("{voter} has voted on proposal {id} already: one key counts once"),
        ));
    }
    let record = VoteRecord {
        key: voter.to_string(),
        signature: request.signature.signature.clone(),
        at: rfc3339(OffsetDateTime::now_utc()),
        submitted_by: (voter != client).then(|| client.to_string()),
    };
    let p = cas.settle(&id, Some((kind, record)), &client)?;
    Ok(axum::Json(cas.info(&p, &client, false)))
}

/// `POST /v1/updates`: a new version (or a new session in a namespace with a board) with
/// detached approvals, applied at once when they (with the signer's own) meet the board in
/// force.
pub(super) async fn signed_update(
    State(cas): CasState,
    Signed { client, body }: Signed,
) -> CasResult<impl IntoResponse> {
    let request: SignedUpdate =
        serde_json::from_slice(&body).map_err(|e| bad(format!("malformed update: {e}")))?;
    let name = cloister_cas_session::parse_session(&request.yaml)?.name;
    // A session that does not exist yet is created (in a namespace with a board).
    let exists = cas.load_session(&name)?.is_some();
    Ok(axum::Json(
        write_session(
            &cas,
            &client,
            request.yaml.as_bytes(),
            exists.then_some(name.as_str()),
            &request.signatures,
        )
        .await?,
    ))
}
