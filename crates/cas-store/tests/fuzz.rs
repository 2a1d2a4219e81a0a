//! Parsers of untrusted text never panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cloister_cas_store::{Share, export_jsonl, parse_jsonl, verify_audit};
use common::key_file_vault;
use proptest::prelude::*;
use serde_json::json;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn share_from_str_never_panics(s in ".{0,200}") {
        let _ = s.parse::<Share>();
    }

    #[test]
    fn share_like_strings_never_panic(
        fields in proptest::collection::vec("[0-9a-ft-]{0,70}", 0..10),
    ) {
        let s = format!("cloister-share-{}", fields.join("-"));
        let _ = s.parse::<Share>();
    }

    #[test]
    fn parse_jsonl_never_panics(s in ".{0,400}") {
        let _ = parse_jsonl(&s);
    }

    #[test]
    fn json_like_lines_never_panic(s in r#"[{}\[\]":,0-9a-z \n.eE+-]{0,300}"#) {
        let _ = parse_jsonl(&s);
    }
}

#[test]
fn every_single_byte_mutation_of_an_export_is_refused_or_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let vault = key_file_vault(dir.path());
    vault
        .audit_append("attest-ok", "w", "s", json!({"n": 1.5, "k": [true]}))
        .unwrap();
    let entries = vault.audit_entries(1, 100).unwrap();
    let public = vault.identity_public().unwrap();
    let text = export_jsonl(&entries).unwrap();
    let mut refused = 0;
    for (pos, &original) in text.as_bytes().iter().enumerate() {
        // A look-alike of the same class (the likeliest undetected edit) and a structural byte.
        let similar = match original {
            b'0'..=b'8' | b'a'..=b'e' | b'A'..=b'Y' => original + 1,
            b'9' => b'0',
            b'f' => b'a',
            b'Z' => b'z',
            _ => b'1',
        };
        for r in [similar, b'"'] {
            if r == original {
                continue;
            }
            let mut mutated = text.as_bytes().to_vec();
            mutated[pos] = r;
            let mutated = String::from_utf8_lossy(&mutated).into_owned();
            match parse_jsonl(&mutated) {
                Ok(parsed) if verify_audit(&parsed, &public).is_ok() => {
                    // Only a change that parses to the very same entries may verify: RFC 3339
                    // parsing accepts `z` for `Z` and other date-time separators than `T`.
                    assert_eq!(parsed, entries, "mutation at {pos} to {:?} verified", r as char);
                }
                _ => refused += 1,
            }
        }
    }
    assert!(refused > text.len(), "{refused}");
}
