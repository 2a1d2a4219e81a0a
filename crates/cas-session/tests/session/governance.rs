//! Boards in `access_policy.update`: their syntax, validation, canonical form, and a property
//! test of their decisions against a reference evaluator written here independently.

use std::collections::BTreeSet;

use cloister_cas_session::{ClientKey, Rule, SessionError, UpdatePolicy, parse_session};
use proptest::prelude::*;

use crate::common::*;

fn with_update(update: &str) -> String {
    format!("name: a/b\naccess_policy:\n  update:\n{update}")
}

fn invalid(yaml: &str, field: &str, reason: &str) {
    match parse_session(yaml) {
        Err(SessionError::Invalid { field: f, reason: r }) => {
            assert_eq!(f, field, "{r}");
            assert!(r.contains(reason), "expected {reason:?} in {r:?}");
        }
        other => panic!("expected {field}: {reason}, got {other:?}"),
    }
}

fn approvers(keys: &[&ClientKey]) -> BTreeSet<ClientKey> {
    keys.iter().map(|k| (*k).clone()).collect()
}

#[test]
fn boards_parse_decide_and_round_trip() {
    let (owner, a, b, c, h) = (key(1), key(2), key(3), key(4), key(5));
    let yaml = with_update(&format!(
        "    all:\n    - CREATOR\n    - at_least: 2\n      of: [{a}, {b}, {c}]\n    veto: [{h}]\n"
    ));
    let s = parse(&yaml);
    let policy = &s.access_policy.update;
    assert!(matches!(policy, UpdatePolicy::Board(_)));
    assert!(
        !policy.is_met(&approvers(&[&owner, &a]), &owner),
        "one of three is not two"
    );
    assert!(
        !policy.is_met(&approvers(&[&a, &b]), &owner),
        "the owner must approve"
    );
    assert!(policy.is_met(&approvers(&[&owner, &a, &c]), &owner));
    assert!(policy.is_member(&h, &owner) && policy.is_member(&owner, &owner));
    assert!(!policy.is_member(&key(9), &owner));
    assert_eq!(policy.veto_holders(&owner), approvers(&[&h]));
    assert!(policy.can_still_be_met(&approvers(&[&a]), &owner));
    assert!(!policy.can_still_be_met(&approvers(&[&a, &b]), &owner));
    assert!(!policy.can_still_be_met(&approvers(&[&owner]), &owner));
    // A single signer never meets a board, so `may_update` (one signer alone) is false.
    assert!(!s.access_policy.may_update(&owner, &owner));

    // The canonical form reads back as the same session, and the board is in the hash.
    let json = String::from_utf8(s.canonical_bytes()).unwrap();
    assert_eq!(parse(&json).hash(), s.hash());
    let other = parse(&yaml.replace("at_least: 2", "at_least: 3"));
    assert_ne!(other.hash(), s.hash());
    // Member order does not matter.
    let reordered = with_update(&format!(
        "    veto: [{h}]\n    all:\n    - at_least: 2\n      of: [{c}, {a}, {b}]\n    - CREATOR\n"
    ));
    assert_eq!(parse(&reordered).hash(), s.hash());
}

#[test]
fn the_list_form_keeps_its_meaning_and_bytes() {
    let s = parse("name: a/b\n");
    assert_eq!(s.access_policy.update, UpdatePolicy::default());
    let json = String::from_utf8(s.canonical_bytes()).unwrap();
    assert!(json.contains(r#""update":["CREATOR"]"#), "{json}");
    let (owner, a) = (key(1), key(2));
    assert!(s.access_policy.may_update(&owner, &owner));
    assert!(!s.access_policy.may_update(&a, &owner));
    let any = parse("name: a/b\naccess_policy: {update: [ANY]}\n");
    assert!(any.access_policy.update.is_member(&a, &owner));
    assert!(
        any.access_policy
            .update
            .can_still_be_met(&approvers(&[&owner, &a]), &owner)
    );
}

#[test]
fn malformed_boards_are_refused_with_their_path() {
    let (a, b) = (key(2), key(3));
    invalid(
        &with_update(&format!("    at_least: 3\n    of: [{a}, {b}]\n")),
        "access_policy.update.at_least",
        "between 1 and the number of members (2)",
    );
    invalid(
        &with_update(&format!("    at_least: 0\n    of: [{a}]\n")),
        "access_policy.update.at_least",
        "between 1",
    );
    invalid(
        &with_update(&format!("    at_least: 1\n    of: [{a}, {a}]\n")),
        "access_policy.update.of[1]",
        "listed twice",
    );
    // Groups equal up to order are duplicates too.
    invalid(
        &with_update(&format!(
            "    at_least: 2\n    of: [{{all: [{a}, {b}]}}, {{all: [{b}, {a}]}}]\n"
        )),
        "access_policy.update.of[1]",
        "listed twice",
    );
    invalid(
        &with_update("    all: [ANY]\n"),
        "access_policy.update.all[0]",
        "no place in a board",
    );
    invalid(
        &with_update("    all: []\n"),
        "access_policy.update.all",
        "at least one member",
    );
    invalid(
        &with_update(&format!("    all: [{{all: [{a}], veto: [{b}]}}]\n")),
        "access_policy.update.all[0]",
        "veto is allowed only at the top",
    );
    invalid(
        &with_update(&format!("    all: [{a}]\n    at_least: 1\n    of: [{b}]\n")),
        "access_policy.update",
        "either all or at_least",
    );
    invalid(
        &with_update(&format!("    all: [{a}]\n    quorum: 1\n")),
        "access_policy.update.quorum",
        "unknown field",
    );
    invalid(
        &with_update(&format!("    all: [{a}]\n    veto: [{b}, {b}]\n")),
        "access_policy.update.veto[1]",
        "listed twice",
    );
    let mut deep = format!("{a}");
    for _ in 0..9 {
        deep = format!("{{all: [{deep}]}}");
    }
    let yaml = with_update(&format!("    all: [{deep}]\n"));
    assert!(
        matches!(parse_session(&yaml), Err(SessionError::Invalid { ref reason, .. }) if reason.contains("nest at most")),
        "{:?}",
        parse_session(&yaml)
    );
    // Read rules are lists: governance there is refused.
    invalid(
        &format!("name: a/b\naccess_policy:\n  read:\n    at_least: 1\n    of: [{a}]\n"),
        "access_policy.read",
        "read rules cannot carry governance",
    );
}

// The reference: trees of this test's own type, written out as YAML, decided by counting.

/// Keys 0..POOL are keys; `POOL` stands for CREATOR, whose key is key 0.
const POOL: usize = 5;

#[derive(Debug, Clone, PartialEq)]
enum Tree {
    Leaf(usize),
    All(Vec<Tree>),
    AtLeast(usize, Vec<Tree>),
}

fn pool_key(i: usize) -> ClientKey {
    key(40 + i as u8)
}

fn yaml_of(tree: &Tree) -> String {
    match tree {
        Tree::Leaf(i) if *i == POOL => "CREATOR".into(),
        Tree::Leaf(i) => format!("\"{}\"", pool_key(*i)),
        Tree::All(members) => format!(
            "{{all: [{}]}}",
            members.iter().map(yaml_of).collect::<Vec<_>>().join(", ")
        ),
        Tree::AtLeast(n, members) => format!(
            "{{at_least: {n}, of: [{}]}}",
            members.iter().map(yaml_of).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// An order-free spelling of a tree, to find members equal up to order.
fn spelling(tree: &Tree) -> String {
    let members = |m: &[Tree]| {
        let mut parts: Vec<String> = m.iter().map(spelling).collect();
        parts.sort();
        parts.join(",")
    };
    match tree {
        Tree::Leaf(i) => format!("k{i}"),
        Tree::All(m) => format!("all({})", members(m)),
        Tree::AtLeast(n, m) => format!("least{n}({})", members(m)),
    }
}

/// Whether the tree is a valid rule: groups non-empty, thresholds in range, no member twice.
fn valid(tree: &Tree) -> bool {
    let members = match tree {
        Tree::Leaf(_) => return true,
        Tree::All(m) => m,
        Tree::AtLeast(n, m) => {
            if *n == 0 || *n > m.len() {
                return false;
            }
            m
        }
    };
    let spellings: BTreeSet<String> = members.iter().map(spelling).collect();
    !members.is_empty() && spellings.len() == members.len() && members.iter().all(valid)
}

/// The reference decision. `approved[i]` says key i approved; CREATOR is key 0. In a
/// threshold group each satisfied member contributes a token — its key for a signer, its
/// position for a group — and the tokens are counted as a set.
fn decide(tree: &Tree, approved: &[bool; POOL]) -> bool {
    let key_of = |i: usize| if i == POOL { 0 } else { i };
    match tree {
        Tree::Leaf(i) => approved[key_of(*i)],
        Tree::All(members) => members.iter().all(|m| decide(m, approved)),
        Tree::AtLeast(n, members) => {
            let tokens: BTreeSet<String> = members
                .iter()
                .enumerate()
                .filter(|(_, m)| decide(m, approved))
                .map(|(position, m)| match m {
                    Tree::Leaf(i) => format!("key{}", key_of(*i)),
                    _ => format!("group{position}"),
                })
                .collect();
            tokens.len() >= *n
        }
    }
}

fn tree() -> impl Strategy<Value = Tree> {
    let leaf = (0..=POOL).prop_map(Tree::Leaf);
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..4).prop_map(Tree::All),
            (0usize..5, prop::collection::vec(inner, 1..5)).prop_map(|(n, m)| Tree::AtLeast(n, m)),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn board_decisions_match_the_reference(top in tree(), approved in prop::array::uniform5(any::<bool>())) {
        // The top of a board is a group.
        let top = match top {
            leaf @ Tree::Leaf(_) => Tree::All(vec![leaf]),
            group => group,
        };
        let yaml = format!("name: a/b\naccess_policy:\n  update: {}\n", yaml_of(&top));
        match parse_session(&yaml) {
            Err(e) => prop_assert!(!valid(&top), "refused a valid rule {yaml}: {e}"),
            Ok(session) => {
                prop_assert!(valid(&top), "accepted an invalid rule {yaml}");
                let policy = &session.access_policy.update;
                let creator = pool_key(0);
                let set: BTreeSet<ClientKey> =
                    (0..POOL).filter(|i| approved[*i]).map(pool_key).collect();
                prop_assert_eq!(policy.is_met(&set, &creator), decide(&top, &approved), "{}", yaml);
                // Rejections: the rule can still be met iff everyone else approving meets it.
                let willing: [bool; POOL] = std::array::from_fn(|i| approved[i]);
                let rejecters: BTreeSet<ClientKey> =
                    (0..POOL).filter(|i| !approved[*i]).map(pool_key).collect();
                prop_assert_eq!(
                    policy.can_still_be_met(&rejecters, &creator),
                    decide(&top, &willing),
                    "{}", yaml
                );
                // The canonical form parses back to the same decision and hash.
                let again = parse_session(&String::from_utf8(session.canonical_bytes()).unwrap()).unwrap();
                prop_assert_eq!(again.hash(), session.hash());
                prop_assert_eq!(again.access_policy.update.is_met(&set, &creator), decide(&top, &approved));
                if let UpdatePolicy::Board(board) = &again.access_policy.update {
                    prop_assert!(!matches!(board.rule, Rule::Signer(_)));
                }
            }
        }
    }
}

#[test]
fn attested_members_resolve_through_the_cas() {
    use cloister_cas_session::Members;
    let (owner, bound, other) = (key(1), key(2), key(3));
    let s = parse(&with_update(
        "    at_least: 1\n    of: [\"attested:board/checks#checker\", CREATOR]\n",
    ));
    let policy = &s.access_policy.update;
    let resolver = |session: &str, service: &str| {
        if (session, service) == ("board/checks", "checker") {
            BTreeSet::from([bound.clone()])
        } else {
            BTreeSet::new()
        }
    };
    let members = Members {
        creator: &owner,
        attested: &resolver,
    };
    assert!(policy.is_met_with(&approvers(&[&bound]), &members));
    assert!(!policy.is_met_with(&approvers(&[&other]), &members));
    assert!(
        !policy.is_met(&approvers(&[&bound]), &owner),
        "without the CAS, nobody is bound"
    );
    assert!(policy.is_member_with(&bound, &members) && !policy.is_member_with(&other, &members));
    // Until one of its keys rejects, an attested member may still approve.
    assert!(policy.can_still_be_met_with(&approvers(&[&owner]), &Members::creator_only(&owner)));
    assert!(!policy.can_still_be_met_with(&approvers(&[&owner, &bound]), &members));
    let json = String::from_utf8(s.canonical_bytes()).unwrap();
    assert!(json.contains("attested:board/checks#checker"), "{json}");
    assert_eq!(parse(&json).hash(), s.hash());
    invalid(
        &with_update("    all: [\"attested:Bad Name#x\"]\n"),
        "access_policy.update.all[0]",
        "",
    );
    invalid(
        &with_update("    all: [\"attested:board/checks\"]\n"),
        "access_policy.update.all[0]",
        "attested:SESSION#SERVICE",
    );
}

#[test]
fn a_board_carries_its_own_veto_window_in_its_hash() {
    let (a, b, h) = (key(2), key(3), key(5));
    let board = |window: &str| {
        with_update(&format!(
            "    at_least: 1\n    of: [{a}, {b}]\n    veto: [{h}]\n{window}"
        ))
    };
    let none = parse(&board(""));
    assert_eq!(none.access_policy.update.veto_window(), None);
    assert!(
        !String::from_utf8(none.canonical_bytes())
            .unwrap()
            .contains("veto_window")
    );
    let hours = parse(&board("    veto_window: 36h\n"));
    assert_eq!(
        hours.access_policy.update.veto_window(),
        Some(std::time::Duration::from_secs(36 * 3600))
    );
    // Spelled another way, the same window and the same hash; another window, another hash.
    assert_eq!(parse(&board("    veto_window: 1d12h\n")).hash(), hours.hash());
    assert_ne!(hours.hash(), none.hash());
    assert_ne!(parse(&board("    veto_window: 0s\n")).hash(), none.hash());
    let json = String::from_utf8(hours.canonical_bytes()).unwrap();
    assert!(json.contains("\"veto_window\":\"36h\""), "{json}");
    assert_eq!(parse(&json).hash(), hours.hash());
    assert_eq!(
        parse(&board("    veto_window: 0s\n"))
            .access_policy
            .update
            .veto_window(),
        Some(std::time::Duration::ZERO)
    );

    for (window, reason) in [
        ("366d", "longer than 365d"),
        ("soon", "invalid duration"),
        ("5", "missing unit"),
    ] {
        match parse_session(&board(&format!("    veto_window: {window}\n"))) {
            Err(e) => assert!(e.to_string().contains(reason), "{window}: {e}"),
            Ok(_) => panic!("veto_window {window} accepted"),
        }
    }
    invalid(
        &with_update(&format!(
            "    at_least: 1\n    of: [{a}, {b}]\n    veto_window: 1h\n"
        )),
        "access_policy.update.veto_window",
        "needs a veto list",
    );
    match parse_session(&with_update(&format!(
        "    all:\n    - at_least: 1\n      of: [{a}, {b}]\n      veto_window: 1h\n    veto: [{h}]\n"
    ))) {
        Err(e) => assert!(e.to_string().contains("only at the top"), "{e}"),
        Ok(_) => panic!("a nested veto window accepted"),
    }
}
