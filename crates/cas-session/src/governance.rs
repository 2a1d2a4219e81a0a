//! Governance: who must agree before a session is replaced (`access_policy.update`).
//!
//! `update` is written one of two ways:
//!
//! * the **list** form, `[CREATOR, ed25519:…]`: any one principal listed may replace the
//!   session alone (`[CREATOR]`, the owner alone, is the default; `[NONE]` freezes it);
//! * the **board** form, a rule over signers with an optional veto list:
//!
//! ```yaml
//! access_policy:
//!   update:
//!     all:
//!     - CREATOR
//!     - at_least: 2
//!       of: [ed25519:…, p256:…, ed25519:…]
//!     veto: [ed25519:…]
//! ```
//!
//! A rule is a signer (`CREATOR` or a key), an attested service (`attested:SESSION#SERVICE`:
//! a program that attested as that service of that session's current version and bound a
//! key to that attestation, see [`Members`]), `all: [rules]` or `at_least: N` `of: [rules]`,
//! nested at most [`MAX_DEPTH`] deep. It is met by a set of approvers: a signer when it
//! approved, `all` when every member is met, `at_least: N` when N members are met, where
//! members that are signers count once per distinct key (`CREATOR` and the creator's own key
//! side by side are one approval). One group may not list the same member twice. `veto` lists
//! signers whose rejection blocks the change whatever the approvals, and `veto_window` (next to
//! `veto`, optional: `12h`, `2d`, `0s`… at most `365d`) how long they have to object: a change
//! their silence would let through applies only once that long has passed since it was
//! proposed, unless every veto holder approved it (the CAS's `--veto-window` when absent; `0s`:
//! no wait). `ANY` and `NONE` have no place in a board. The rules are part of the session and of its hash; a change is judged by
//! the rules of the session it replaces, never by its own.

use std::collections::BTreeSet;
use std::fmt;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::access::{ClientKey, Principal};
use crate::error::SessionError;

/// How deep rules may nest.
pub const MAX_DEPTH: usize = 8;
/// How many members (signers and groups) a board may name in all.
pub const MAX_MEMBERS: usize = 256;

/// `access_policy.update`: who may replace the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdatePolicy {
    /// The list form: any one of these principals may replace the session alone.
    AnyOf(Vec<Principal>),
    /// The board form: a rule over signers and a veto list.
    Board(Board),
}

/// A governance board: the rule approvals must meet and who may veto.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Board {
    /// What the approvals must meet (the top node: `all` or `at_least`).
    pub rule: Rule,
    /// Signers whose rejection blocks a change.
    pub veto: Vec<Principal>,
    /// How long veto holders have to object; the CAS's default when absent.
    pub veto_window: Option<VetoWindow>,
}

/// How long veto holders have to object to a proposal: `0s` to `365d`, written like a
/// [`crate::Lifetime`] (`12h`, `2d`, `1d12h`) and written back in its largest exact unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VetoWindow {
    seconds: u64,
}

/// The longest veto window: a year.
const MAX_VETO_WINDOW: u64 = 365 * crate::model::DAY;

impl VetoWindow {
    /// The window as a duration.
    pub fn duration(self) -> std::time::Duration {
        std::time::Duration::from_secs(self.seconds)
    }
}

impl std::str::FromStr for VetoWindow {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let seconds = crate::model::parse_duration(s)?;
        if seconds > MAX_VETO_WINDOW {
            return Err(format!("a veto window of '{}' is longer than 365d", s.trim()));
        }
        Ok(VetoWindow { seconds })
    }
}

impl fmt::Display for VetoWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::model::format_duration(self.seconds, f)
    }
}

impl Serialize for VetoWindow {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for VetoWindow {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// A rule over signers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rule {
    /// Met when this signer (`CREATOR` or a key) approved.
    Signer(Principal),
    /// Met when a key bound to an attestation of this service approved (any of its bound
    /// keys; it counts once in a threshold).
    Attested {
        /// The service's session.
        session: String,
        /// The service.
        service: String,
    },
    /// Met when every member is met.
    All(Vec<Rule>),
    /// Met when at least `at_least` members are met.
    AtLeast {
        /// How many members must be met.
        at_least: u32,
        /// The members.
        of: Vec<Rule>,
    },
}

impl Default for UpdatePolicy {
    fn default() -> Self {
        UpdatePolicy::AnyOf(vec![Principal::Creator])
    }
}

/// Who a rule's members are, as the CAS knows them: the session's creator (`CREATOR`) and the
/// keys bound to attestations of a service (`attested:`), for the service's session as it is
/// now.
pub struct Members<'a> {
    /// The key `CREATOR` stands for.
    pub creator: &'a ClientKey,
    /// The keys bound to attestations of (session, service).
    pub attested: &'a dyn Fn(&str, &str) -> BTreeSet<ClientKey>,
}

impl<'a> Members<'a> {
    /// Members where `CREATOR` is `creator` and no attested service has a key.
    pub fn creator_only(creator: &'a ClientKey) -> Self {
        Members {
            creator,
            attested: &|_, _| BTreeSet::new(),
        }
    }
}

fn resolve<'a>(principal: &'a Principal, creator: &'a ClientKey) -> Option<&'a ClientKey> {
    match principal {
        Principal::Creator => Some(creator),
        Principal::Key(key) => Some(key),
        Principal::Any | Principal::Nobody => None,
    }
}

impl Rule {
    /// Whether the approvals of `approvers` meet this rule.
    pub fn is_met(&self, approvers: &BTreeSet<ClientKey>, members: &Members<'_>) -> bool {
        match self {
            Rule::Signer(p) => resolve(p, members.creator).is_some_and(|k| approvers.contains(k)),
            Rule::Attested { session, service } => (members.attested)(session, service)
                .iter()
                .any(|k| approvers.contains(k)),
            Rule::All(of) => of.iter().all(|m| m.is_met(approvers, members)),
            Rule::AtLeast { at_least, of } => {
                let mut keys = BTreeSet::new();
                let mut others = 0usize;
                for member in of {
                    match member {
                        Rule::Signer(p) => {
                            if let Some(key) = resolve(p, members.creator).filter(|k| approvers.contains(*k))
                            {
                                keys.insert(key);
                            }
                        }
                        other if other.is_met(approvers, members) => others += 1,
                        _ => {}
                    }
                }
                keys.len() + others >= *at_least as usize
            }
        }
    }

    /// Whether the rule is met if every member but `rejecters` approves. An attested service
    /// counts as willing until one of its bound keys rejected: no key may be bound yet.
    fn could_be_met(&self, rejecters: &BTreeSet<ClientKey>, members: &Members<'_>) -> bool {
        match self {
            Rule::Signer(p) => resolve(p, members.creator).is_some_and(|k| !rejecters.contains(k)),
            Rule::Attested { session, service } => !(members.attested)(session, service)
                .iter()
                .any(|k| rejecters.contains(k)),
            Rule::All(of) => of.iter().all(|m| m.could_be_met(rejecters, members)),
            Rule::AtLeast { at_least, of } => {
                let mut keys = BTreeSet::new();
                let mut others = 0usize;
                for member in of {
                    match member {
                        Rule::Signer(p) => {
                            if let Some(key) = resolve(p, members.creator).filter(|k| !rejecters.contains(*k))
                            {
                                keys.insert(key);
                            }
                        }
                        other if other.could_be_met(rejecters, members) => others += 1,
                        _ => {}
                    }
                }
                keys.len() + others >= *at_least as usize
            }
        }
    }

    fn signers(&self, members: &Members<'_>, out: &mut BTreeSet<ClientKey>) {
        match self {
            Rule::Signer(p) => out.extend(resolve(p, members.creator).cloned()),
            Rule::Attested { session, service } => out.extend((members.attested)(session, service)),
            Rule::All(of) | Rule::AtLeast { of, .. } => {
                for member in of {
                    member.signers(members, out);
                }
            }
        }
    }

    fn normalize(&mut self) {
        if let Rule::All(members) | Rule::AtLeast { of: members, .. } = self {
            for member in members.iter_mut() {
                member.normalize();
            }
            members.sort();
        }
    }
}

impl UpdatePolicy {
    /// Whether approvals by `approvers` meet the policy, `CREATOR` being `creator` (attested
    /// members are never met this way; see [`UpdatePolicy::is_met_with`]). The veto is judged
    /// separately ([`UpdatePolicy::veto_holders`]). The list form is met by any one listed
    /// approver.
    pub fn is_met(&self, approvers: &BTreeSet<ClientKey>, creator: &ClientKey) -> bool {
        self.is_met_with(approvers, &Members::creator_only(creator))
    }

    /// [`UpdatePolicy::is_met`] with attested members resolved by `members`.
    pub fn is_met_with(&self, approvers: &BTreeSet<ClientKey>, members: &Members<'_>) -> bool {
        match self {
            UpdatePolicy::AnyOf(list) => approvers
                .iter()
                .any(|a| crate::access::allowed(list, a, members.creator)),
            UpdatePolicy::Board(board) => board.rule.is_met(approvers, members),
        }
    }

    /// Whether `key` has a say: it is named by the rule or holds a veto (in the list form,
    /// whoever the list admits).
    pub fn is_member(&self, key: &ClientKey, creator: &ClientKey) -> bool {
        self.is_member_with(key, &Members::creator_only(creator))
    }

    /// [`UpdatePolicy::is_member`] with attested members resolved by `members`.
    pub fn is_member_with(&self, key: &ClientKey, members: &Members<'_>) -> bool {
        match self {
            UpdatePolicy::AnyOf(list) => crate::access::allowed(list, key, members.creator),
            UpdatePolicy::Board(board) => {
                let mut signers = BTreeSet::new();
                board.rule.signers(members, &mut signers);
                signers.contains(key) || self.veto_holders(members.creator).contains(key)
            }
        }
    }

    /// The board's own veto window, if it sets one (never in the list form).
    pub fn veto_window(&self) -> Option<std::time::Duration> {
        match self {
            UpdatePolicy::AnyOf(_) => None,
            UpdatePolicy::Board(board) => board.veto_window.map(VetoWindow::duration),
        }
    }

    /// The keys whose rejection blocks a change (none in the list form).
    pub fn veto_holders(&self, creator: &ClientKey) -> BTreeSet<ClientKey> {
        match self {
            UpdatePolicy::AnyOf(_) => BTreeSet::new(),
            UpdatePolicy::Board(board) => board
                .veto
                .iter()
                .filter_map(|p| resolve(p, creator))
                .cloned()
                .collect(),
        }
    }

    /// Whether the policy can still be met once `rejecters` refused (they will not approve),
    /// every other member approving.
    pub fn can_still_be_met(&self, rejecters: &BTreeSet<ClientKey>, creator: &ClientKey) -> bool {
        self.can_still_be_met_with(rejecters, &Members::creator_only(creator))
    }

    /// [`UpdatePolicy::can_still_be_met`] with attested members resolved by `members`.
    pub fn can_still_be_met_with(&self, rejecters: &BTreeSet<ClientKey>, members: &Members<'_>) -> bool {
        match self {
            UpdatePolicy::AnyOf(list) => list.iter().any(|p| match p {
                Principal::Any => true,
                Principal::Nobody => false,
                p => resolve(p, members.creator).is_some_and(|k| !rejecters.contains(k)),
            }),
            UpdatePolicy::Board(board) => board.rule.could_be_met(rejecters, members),
        }
    }

    pub(crate) fn normalize(&mut self) {
        match self {
            UpdatePolicy::AnyOf(list) => {
                list.sort();
                list.dedup();
            }
            UpdatePolicy::Board(board) => {
                board.rule.normalize();
                board.veto.sort();
                board.veto.dedup();
            }
        }
    }

    /// Checks the policy; `field` is its path (`access_policy.update`).
    pub(crate) fn validate(&self, field: &str) -> Result<(), SessionError> {
        match self {
            UpdatePolicy::AnyOf(list) => crate::access::validate_list(field, list),
            UpdatePolicy::Board(board) => {
                let mut count = 0;
                validate_rule(&board.rule, field, 1, &mut count)?;
                if board.veto_window.is_some() && board.veto.is_empty() {
                    return Err(SessionError::invalid(
                        format!("{field}.veto_window"),
                        "a veto window needs a veto list",
                    ));
                }
                let mut seen = BTreeSet::new();
                for (i, p) in board.veto.iter().enumerate() {
                    let at = format!("{field}.veto[{i}]");
                    check_signer(p, &at)?;
                    if !seen.insert(p) {
                        return Err(SessionError::invalid(at, format!("{p} is listed twice")));
                    }
                }
                Ok(())
            }
        }
    }
}

fn check_signer(p: &Principal, field: &str) -> Result<(), SessionError> {
    match p {
        Principal::Creator | Principal::Key(_) => Ok(()),
        Principal::Any | Principal::Nobody => Err(SessionError::invalid(
            field,
            format!("{p} has no place in a board: name CREATOR or keys (or use the list form)"),
        )),
    }
}

fn validate_rule(rule: &Rule, field: &str, depth: usize, count: &mut usize) -> Result<(), SessionError> {
    *count += 1;
    if *count > MAX_MEMBERS {
        return Err(SessionError::invalid(
            field,
            format!("a board names at most {MAX_MEMBERS} members in all"),
        ));
    }
    if depth > MAX_DEPTH {
        return Err(SessionError::invalid(
            field,
            format!("rules nest at most {MAX_DEPTH} deep"),
        ));
    }
    let (members, at) = match rule {
        Rule::Signer(p) => return check_signer(p, field),
        Rule::Attested { session, service } => {
            crate::validate::check_session_name(session).map_err(|r| SessionError::invalid(field, r))?;
            if !crate::validate::is_service_name(service) {
                return Err(SessionError::invalid(
                    field,
                    format!("{service:?} is not a service name"),
                ));
            }
            return Ok(());
        }
        Rule::All(members) => (members, format!("{field}.all")),
        Rule::AtLeast { at_least, of } => {
            if *at_least == 0 || *at_least as usize > of.len() {
                return Err(SessionError::invalid(
                    format!("{field}.at_least"),
                    format!("must be between 1 and the number of members ({})", of.len()),
                ));
            }
            (of, format!("{field}.of"))
        }
    };
    if members.is_empty() {
        return Err(SessionError::invalid(at, "a group needs at least one member"));
    }
    // Compared in normal form: groups equal up to order are one member written twice.
    let mut seen = BTreeSet::new();
    for (i, member) in members.iter().enumerate() {
        let here = format!("{at}[{i}]");
        let mut normal = member.clone();
        normal.normalize();
        if !seen.insert(normal) {
            return Err(SessionError::invalid(
                here,
                "listed twice in one group (one approval counts once)",
            ));
        }
        validate_rule(member, &here, depth + 1, count)?;
    }
    Ok(())
}

// The YAML and canonical JSON forms. The list form stays a list so that sessions written
// before boards existed keep their canonical bytes and hashes.

/// A rule node as written: `all`, or `at_least` with `of`, and `veto` at the top only.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    #[serde(default)]
    all: Option<Vec<Rule>>,
    #[serde(default)]
    at_least: Option<u32>,
    #[serde(default)]
    of: Option<Vec<Rule>>,
    #[serde(default)]
    veto: Option<Vec<Principal>>,
    #[serde(default)]
    veto_window: Option<VetoWindow>,
}

impl RawNode {
    /// The rule, and the veto list and window (allowed at the top only).
    #[allow(clippy::type_complexity)]
    fn into_rule<E: de::Error>(self) -> Result<(Rule, Option<Vec<Principal>>, Option<VetoWindow>), E> {
        let rule = match (self.all, self.at_least, self.of) {
            (Some(all), None, None) => Rule::All(all),
            (None, Some(at_least), Some(of)) => Rule::AtLeast { at_least, of },
            (None, Some(_), None) => return Err(E::custom("at_least needs of: [members]")),
            (None, None, Some(_)) => return Err(E::custom("of needs at_least: N")),
            (None, None, None) => {
                return Err(E::custom("a rule is all: [...] or at_least: N with of: [...]"));
            }
            _ => return Err(E::custom("a rule is either all or at_least/of, not both")),
        };
        Ok((rule, self.veto, self.veto_window))
    }
}

struct RuleVisitor;

impl<'de> Visitor<'de> for RuleVisitor {
    type Value = Rule;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a signer (CREATOR or a key) or a rule (all, or at_least with of)")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Rule, E> {
        if let Some(named) = v.trim().strip_prefix("attested:") {
            let (session, service) = named
                .rsplit_once('#')
                .ok_or_else(|| E::custom("an attested member is attested:SESSION#SERVICE"))?;
            return Ok(Rule::Attested {
                session: session.to_owned(),
                service: service.to_owned(),
            });
        }
        v.parse::<Principal>().map(Rule::Signer).map_err(E::custom)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Rule, A::Error> {
        let raw = RawNode::deserialize(de::value::MapAccessDeserializer::new(map))?;
        match raw.into_rule::<A::Error>()? {
            (rule, None, None) => Ok(rule),
            _ => Err(de::Error::custom(
                "veto is allowed only at the top of access_policy.update (so is veto_window)",
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Rule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RuleVisitor)
    }
}

impl Serialize for Rule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Rule::Signer(p) => p.serialize(s),
            Rule::Attested { session, service } => {
                s.collect_str(&format_args!("attested:{session}#{service}"))
            }
            Rule::All(members) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("all", members)?;
                map.end()
            }
            Rule::AtLeast { at_least, of } => {
                let mut map = s.serialize_map(Some(2))?;
                map.serialize_entry("at_least", at_least)?;
                map.serialize_entry("of", of)?;
                map.end()
            }
        }
    }
}

struct PolicyVisitor;

impl<'de> Visitor<'de> for PolicyVisitor {
    type Value = UpdatePolicy;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of principals, or a board (all, or at_least with of; optional veto)")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<UpdatePolicy, A::Error> {
        let mut list = Vec::new();
        while let Some(p) = seq.next_element::<Principal>()? {
            list.push(p);
        }
        Ok(UpdatePolicy::AnyOf(list))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<UpdatePolicy, A::Error> {
        let raw = RawNode::deserialize(de::value::MapAccessDeserializer::new(map))?;
        let (rule, veto, veto_window) = raw.into_rule::<A::Error>()?;
        Ok(UpdatePolicy::Board(Board {
            rule,
            veto: veto.unwrap_or_default(),
            veto_window,
        }))
    }
}

impl<'de> Deserialize<'de> for UpdatePolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PolicyVisitor)
    }
}

impl Serialize for UpdatePolicy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            UpdatePolicy::AnyOf(list) => {
                let mut seq = s.serialize_seq(Some(list.len()))?;
                for p in list {
                    seq.serialize_element(p)?;
                }
                seq.end()
            }
            UpdatePolicy::Board(board) => {
                let mut map = s.serialize_map(None)?;
                match &board.rule {
                    Rule::AtLeast { at_least, of } => {
                        map.serialize_entry("at_least", at_least)?;
                        map.serialize_entry("of", of)?;
                    }
                    Rule::All(members) => map.serialize_entry("all", members)?,
                    // Not produced by parsing; written as a one-member group so that it reads
                    // back as the same rule.
                    leaf @ (Rule::Signer(_) | Rule::Attested { .. }) => {
                        map.serialize_entry("all", std::slice::from_ref(leaf))?
                    }
                }
                map.serialize_entry("veto", &board.veto)?;
                // Left out when absent, so boards without one keep their canonical bytes.
                if let Some(window) = &board.veto_window {
                    map.serialize_entry("veto_window", window)?;
                }
                map.end()
            }
        }
    }
}

/// Parses a board or list on its own (YAML or JSON), as a namespace declares the rule for
/// creating sessions in it; validated and normalized like a session's `access_policy.update`.
pub fn parse_update_policy(text: &str) -> Result<UpdatePolicy, SessionError> {
    if text.len() > 1 << 20 {
        return Err(SessionError::Syntax("the rule is larger than 1 MiB".into()));
    }
    let mut policy: UpdatePolicy =
        serde_saphyr::from_str(text).map_err(|e| SessionError::invalid("rule", e.to_string()))?;
    policy.validate("rule")?;
    policy.normalize();
    Ok(policy)
}

/// `access_policy.read` as written: a list of principals only. A rule here is refused with a
/// reason rather than a type error.
pub(crate) fn deserialize_read<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Principal>, D::Error> {
    struct ReadVisitor;
    impl<'de> Visitor<'de> for ReadVisitor {
        type Value = Vec<Principal>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of principals")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut list = Vec::new();
            while let Some(p) = seq.next_element::<Principal>()? {
                list.push(p);
            }
            Ok(list)
        }
        fn visit_map<A: MapAccess<'de>>(self, _map: A) -> Result<Self::Value, A::Error> {
            Err(de::Error::custom(
                "read rules cannot carry governance (all, at_least, veto): read is a list of principals",
            ))
        }
    }
    d.deserialize_any(ReadVisitor)
}
