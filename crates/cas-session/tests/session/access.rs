//! Access policy decisions and principal keys.

use cloister_cas_session::{AccessPolicy, ClientKey, Principal, UpdatePolicy};

use crate::common::*;

const ED: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
// A P-256 public key (the generator point), compressed and uncompressed.
const P256_COMPRESSED: &str = "036b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296";
const P256_UNCOMPRESSED: &str = "046b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c2964fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5";

fn key(s: &str) -> ClientKey {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

#[test]
fn decisions() {
    let creator = key(ED);
    let alice = key(&format!("p256:{P256_COMPRESSED}"));
    let default = AccessPolicy::default();
    assert!(default.may_read(&creator, &creator));
    assert!(default.may_update(&creator, &creator));
    assert!(!default.may_read(&alice, &creator));

    let s = parse(&format!(
        "name: a/b\naccess_policy:\n  read: [ANY]\n  update: [\"p256:{P256_UNCOMPRESSED}\"]\n"
    ));
    let p = &s.access_policy;
    assert!(p.may_read(&alice, &creator));
    assert!(
        p.may_update(&alice, &creator),
        "uncompressed and compressed forms are one key"
    );
    assert!(!p.may_update(&creator, &creator), "the creator is not listed");
    assert_eq!(p.update, UpdatePolicy::AnyOf(vec![Principal::Key(alice.clone())]));
    assert_eq!(alice.to_string(), format!("p256:{P256_COMPRESSED}"));

    let none = parse("name: a/b\naccess_policy: {read: [NONE], update: [CREATOR]}\n");
    assert!(!none.access_policy.may_read(&creator, &creator));
    assert!(none.access_policy.may_update(&creator, &creator));

    let bare = parse(&format!("name: a/b\naccess_policy: {{read: [\"{ED}\"]}}\n"));
    assert!(bare.access_policy.may_read(&creator, &alice));
    assert_eq!(bare.access_policy.read[0].to_string(), format!("ed25519:{ED}"));
}

#[test]
fn invalid_keys_are_refused() {
    assert!("p256:0011".parse::<ClientKey>().is_err());
    // Right length, not on the curve.
    assert!(
        format!("p256:02{}", "ff".repeat(32))
            .parse::<ClientKey>()
            .is_err()
    );
    assert!("rsa:00".parse::<ClientKey>().is_err());
    assert!(format!("ed25519:{}", &ED[..62]).parse::<ClientKey>().is_err());
    assert!("ed25519:zz".parse::<ClientKey>().is_err());
    assert_eq!(key(ED), key(&format!("ED25519:{}", ED.to_uppercase())));
}

#[test]
fn client_keys_serialize_as_text() {
    let k = key(&format!("p256:{P256_UNCOMPRESSED}"));
    let json = serde_json::to_string(&k).expect("json");
    assert_eq!(json, format!("\"p256:{P256_COMPRESSED}\""));
    assert_eq!(serde_json::from_str::<ClientKey>(&json).expect("parse"), k);
    assert!(serde_json::from_str::<ClientKey>("\"p256:00\"").is_err());
}
