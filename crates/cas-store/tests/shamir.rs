//! Shamir splitting, recombination and the share text format.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use cloister_cas_store::{MasterKey, Share, StoreError, combine, split};

fn subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
    if k == 0 {
        return vec![vec![]];
    }
    if n < k {
        return vec![];
    }
    let mut with_last = subsets(n - 1, k - 1);
    for s in &mut with_last {
        s.push(n - 1);
    }
    let mut out = subsets(n - 1, k);
    out.extend(with_last);
    out
}

#[test]
fn any_threshold_subset_in_any_order_recombines() {
    let key = MasterKey::generate().unwrap();
    let shares = split(&key, 5, 3).unwrap();
    assert_eq!(shares.len(), 5);
    let all = subsets(5, 3);
    assert_eq!(all.len(), 10);
    for subset in all {
        let mut picked: Vec<Share> = subset.iter().map(|&i| shares[i].clone()).collect();
        picked.reverse();
        assert_eq!(combine(&picked).unwrap().as_bytes(), key.as_bytes(), "{subset:?}");
    }
    // More than the threshold, and all of them, also work.
    assert_eq!(combine(&shares[1..]).unwrap().as_bytes(), key.as_bytes());
    assert_eq!(combine(&shares).unwrap().as_bytes(), key.as_bytes());
}

#[test]
fn shares_carry_their_split_parameters() {
    let key = MasterKey::generate().unwrap();
    let shares = split(&key, 4, 2).unwrap();
    let set = shares[0].set_id();
    for (i, s) in shares.iter().enumerate() {
        assert_eq!(usize::from(s.index()), i + 1);
        assert_eq!((s.shares(), s.threshold()), (4, 2));
        assert_eq!(s.set_id(), set);
    }
    assert_ne!(
        split(&key, 4, 2).unwrap()[0].set_id(),
        set,
        "each split gets a new set id"
    );
}

#[test]
fn fewer_than_threshold_are_refused() {
    let key = MasterKey::generate().unwrap();
    let shares = split(&key, 5, 3).unwrap();
    let err = combine(&shares[..2]).unwrap_err();
    assert!(
        matches!(&err, StoreError::BadShare(m) if m.contains("2 distinct share(s) given, 3 needed")),
        "{err}"
    );
    // Duplicates do not count twice.
    let dup = vec![shares[0].clone(), shares[1].clone(), shares[0].clone()];
    assert!(matches!(combine(&dup), Err(StoreError::BadShare(_))));
    assert!(matches!(combine(&[]), Err(StoreError::BadShare(_))));
}

#[test]
fn shares_of_different_splits_are_refused() {
    let key = MasterKey::generate().unwrap();
    let a = split(&key, 3, 2).unwrap();
    let b = split(&key, 3, 2).unwrap();
    let err = combine(&[a[0].clone(), b[1].clone()]).unwrap_err();
    assert!(err.to_string().contains("different splits"), "{err}");
}

#[test]
fn split_parameters_are_checked() {
    let key = MasterKey::generate().unwrap();
    for (n, t) in [(5, 1), (5, 0), (2, 3), (0, 0)] {
        assert!(
            matches!(split(&key, n, t), Err(StoreError::InvalidArgument(_))),
            "{n} {t}"
        );
    }
    let max = split(&key, 255, 255).unwrap();
    assert_eq!(max.len(), 255);
    assert_eq!(max[254].index(), 255);
    assert_eq!(combine(&max).unwrap().as_bytes(), key.as_bytes());
    assert_eq!(
        combine(&split(&key, 2, 2).unwrap()).unwrap().as_bytes(),
        key.as_bytes()
    );
}

#[test]
fn text_form_round_trips() {
    let key = MasterKey::generate().unwrap();
    let shares = split(&key, 5, 3).unwrap();
    for s in &shares {
        let text = s.to_string();
        assert!(
            text.starts_with(&format!("cloister-share-{}-of-5-t3-{}-", s.index(), s.set_id())),
            "{text}"
        );
        let back: Share = text.parse().unwrap();
        assert_eq!(back.to_string(), text);
        assert_eq!((back.index(), back.shares(), back.threshold()), (s.index(), 5, 3));
    }
    // Whitespace from copy and paste and upper case are accepted.
    let text = shares[2].to_string();
    let (a, b) = text.split_at(40);
    let messy = format!("  {}\n  {}  \n", a.to_uppercase(), b);
    let back: Share = messy.parse().unwrap();
    assert_eq!(back.to_string(), text);
    let parsed: Vec<Share> = shares[..3]
        .iter()
        .map(|s| s.to_string().parse().unwrap())
        .collect();
    assert_eq!(combine(&parsed).unwrap().as_bytes(), key.as_bytes());
}

#[test]
fn every_single_character_typo_is_refused() {
    let key = MasterKey::generate().unwrap();
    let text = split(&key, 9, 3).unwrap()[4].to_string();
    let prefix = "cloister-share-".len();
    let mut checksum_refusals = 0;
    for (pos, c) in text.char_indices().skip(prefix) {
        if c == '-' {
            continue;
        }
        let replacement = match c {
            '0'..='8' => char::from(c as u8 + 1),
            '9' => '0',
            'a'..='e' => char::from(c as u8 + 1),
            'f' => 'a',
            _ => 'x',
        };
        let mut typo = text.clone();
        typo.replace_range(pos..pos + 1, &replacement.to_string());
        match typo.parse::<Share>() {
            Ok(_) => panic!("typo at {pos} accepted"),
            Err(StoreError::BadShare(m)) => {
                assert!(
                    !m.contains(&text[text.len() - 73..text.len() - 9]),
                    "message echoes the value"
                );
                if m.contains("checksum mismatch") {
                    checksum_refusals += 1;
                }
            }
            Err(other) => panic!("unexpected error {other}"),
        }
    }
    // The value (64), set id (8) and checksum (8) digits at least are all caught by the checksum.
    assert!(checksum_refusals >= 80, "{checksum_refusals}");
    // Dropped and doubled characters too.
    let mut short = text.clone();
    short.remove(30);
    assert!(short.parse::<Share>().is_err());
    let mut long = text.clone();
    long.insert(30, 'a');
    assert!(long.parse::<Share>().is_err());
}

#[test]
fn malformed_text_gives_clear_errors() {
    let cases = [
        ("", "starts with"),
        ("hello", "starts with"),
        ("cloister-share-1-of-3", "fields"),
        ("cloister-share-1-by-3-t2-00000000-00-00000000", "-of-"),
        ("cloister-share-x-of-3-t2-00000000-00-00000000", "share number"),
        ("cloister-share-1-of-3-2-00000000-00-00000000", "t<n>"),
        (
            "cloister-share-1-of-3-t2-0000-00-00000000",
            "set id must be 8 hex digits",
        ),
        (
            "cloister-share-1-of-3-t2-00000000-00-00000000",
            "share value must be 64 hex digits",
        ),
    ];
    for (input, expected) in cases {
        let err = input.parse::<Share>().unwrap_err();
        assert!(err.to_string().contains(expected), "{input:?}: {err}");
    }
}
