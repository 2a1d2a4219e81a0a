//! Property tests: no input makes parsing or substitution panic.

use cloister_cas_session::{FileSpec, Session, parse_session, render_service};
use proptest::prelude::*;

use crate::common::*;

/// Characters that matter to YAML and to placeholders, so mutations hit interesting paths.
const ALPHABET: &[char] = &[
    ':', '-', ' ', '\n', '\t', '[', ']', '{', '}', ',', '"', '\'', '#', '&', '*', '!', '|', '>', '%', '@',
    '`', '$', '?', '\\', 'a', 'Z', '0', '9', '.', '/', '_', 'é', '\u{0}', '\u{feff}',
];

fn mutated_yaml() -> impl Strategy<Value = String> {
    let base: Vec<char> = full_example().chars().collect();
    let len = base.len();
    let edit = (
        0..len,
        0usize..40,
        proptest::collection::vec(proptest::sample::select(ALPHABET), 0..6),
    );
    proptest::collection::vec(edit, 1..5).prop_map(move |edits| {
        let mut text = base.clone();
        for (at, delete, insert) in edits {
            let at = at.min(text.len());
            let end = (at + delete).min(text.len());
            text.splice(at..end, insert);
        }
        text.into_iter().collect()
    })
}

/// Checks what must hold for any accepted session.
fn accepted_session_is_consistent(s: &Session) -> Result<(), TestCaseError> {
    prop_assert!(s.validate().is_ok());
    let yaml = serde_saphyr::to_string(s).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let again = parse_session(&yaml).map_err(|e| TestCaseError::fail(format!("{e}\n{yaml}")))?;
    prop_assert_eq!(again.hash(), s.hash());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn parse_never_panics_on_arbitrary_text(text in ".{0,400}") {
        if let Ok(s) = parse_session(&text) {
            accepted_session_is_consistent(&s)?;
        }
    }

    #[test]
    fn parse_never_panics_on_mutated_sessions(text in mutated_yaml()) {
        if let Ok(s) = parse_session(&text) {
            accepted_session_is_consistent(&s)?;
        }
    }

    #[test]
    fn substitution_never_panics(
        pieces in proptest::collection::vec(
            prop_oneof![
                Just("$$CLOISTER::".to_string()),
                Just("$$".to_string()),
                Just("k".to_string()),
                Just(":hex".to_string()),
                Just(":crt".to_string()),
                Just(":".to_string()),
                Just("é".to_string()),
                ".{0,5}",
            ],
            0..12,
        )
    ) {
        let template: String = pieces.concat();
        let mut s = parse(&minimal());
        let secrets = materialize(&s);
        // Bypass validation on purpose: render_service must cope with any stored template.
        s.files.push(FileSpec {
            path: "/t".into(),
            content: template.clone(),
            permission: "0600".into(),
            services: vec![],
        });
        s.services[0].command.push(template.clone());
        s.services[0].environment.insert("T".into(), template.clone());
        s.services[0].pwd = Some(template.clone());
        match render_service(&s, "svc", &secrets) {
            Ok(cfg) => {
                // Text without any placeholder start comes through unchanged.
                if !template.contains("$$CLOISTER::") {
                    prop_assert_eq!(&cfg.environment["T"], &template);
                    prop_assert_eq!(&cfg.files[0].content, &template.as_bytes().to_vec());
                }
            }
            Err(e) => prop_assert!(template.contains("$$CLOISTER::"), "{}", e),
        }
    }
}
