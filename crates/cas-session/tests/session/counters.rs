//! Counters and `max_runs`: parsed, validated with their paths, normalized, and left out of
//! the canonical form when absent so that sessions without them keep their hashes.

use cloister_cas_session::{SessionError, parse_session};

use crate::common::*;

fn with_counters(counters: &str) -> String {
    format!("{}{counters}", minimal())
}

fn assert_invalid(yaml: &str, field: &str, reason: &str) {
    match parse_session(yaml) {
        Err(SessionError::Invalid { field: f, reason: r }) => {
            assert_eq!(f, field, "reason was: {r}");
            assert!(r.contains(reason), "{f}: {r:?} does not contain {reason:?}");
        }
        other => panic!("expected Invalid at {field}, got {other:?}"),
    }
}

#[test]
fn counters_and_max_runs_parse_and_normalize() {
    let yaml = edit(
        &with_counters("counters:\n- {name: zeta, services: [svc, svc]}\n- {name: alpha, max: 10}\n"),
        "  command: [run,",
        "  max_runs: 5\n  command: [run,",
    );
    let s = parse(&yaml);
    assert_eq!(s.service("svc").unwrap().max_runs, Some(5));
    let names: Vec<&str> = s.counters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["alpha", "zeta"]);
    assert_eq!(s.counters[0].max, Some(10));
    assert!(s.counters[0].admits("svc") && s.counters[0].admits("anything"));
    assert_eq!(s.counters[1].services, ["svc"]);
    assert!(s.counters[1].admits("svc") && !s.counters[1].admits("other"));
    let text = String::from_utf8(s.canonical_bytes()).unwrap();
    assert!(
        text.contains(r#""counters":[{"max":10,"name":"alpha","services":[]}"#),
        "{text}"
    );
    assert!(text.contains(r#""max_runs":5"#), "{text}");
}

#[test]
fn sessions_without_counters_keep_their_canonical_form() {
    let s = parse(&minimal());
    let text = String::from_utf8(s.canonical_bytes()).unwrap();
    assert!(!text.contains("counters") && !text.contains("max_runs"), "{text}");
    // Declaring counters changes the hash, as any change of the session does.
    let counted = parse(&with_counters("counters:\n- name: c\n"));
    assert_ne!(counted.hash(), s.hash());
}

#[test]
fn counter_rules_name_their_field() {
    assert_invalid(
        &with_counters("counters:\n- name: c\n- name: c\n"),
        "counters[1].name",
        "duplicate counter name 'c'",
    );
    assert_invalid(
        &with_counters("counters:\n- name: Not-Lower\n"),
        "counters[0].name",
        "invalid counter name",
    );
    assert_invalid(
        &with_counters("counters:\n- {name: c, services: [svc, ghost]}\n"),
        "counters[0].services[1]",
        "unknown service 'ghost'",
    );
    assert_invalid(
        &with_counters("counters:\n- {name: c, max: 0}\n"),
        "counters[0].max",
        "at least 1",
    );
    assert_invalid(
        &edit(&minimal(), "  command: [run,", "  max_runs: 0\n  command: [run,"),
        "services[0].max_runs",
        "at least 1",
    );
    assert!(matches!(
        parse_session(&with_counters("counters:\n- {name: c, limit: 3}\n")),
        Err(SessionError::Invalid { .. })
    ));
    assert!(
        parse_session(&edit(
            &minimal(),
            "  command: [run,",
            "  max_runs: -1\n  command: [run,"
        ))
        .is_err()
    );
}
