//! Rendering service configurations and keeping secrets out of Debug output.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cloister_cas_session::{ServiceConfig, SessionError, render_service, secret_bytes};

use crate::common::*;

fn text(secrets: &cloister_cas_session::Secrets, name: &str, format: Option<&str>) -> String {
    let v = secrets.get(name).unwrap_or_else(|| panic!("no {name}"));
    String::from_utf8(secret_bytes(v, format).expect("format")).expect("utf8")
}

#[test]
fn placeholders_are_substituted_everywhere_in_every_format() {
    let s = parse(&full_example());
    let secrets = materialize(&s);
    let cfg = render_service(&s, "model-runner", &secrets).expect("render");

    let api = text(&secrets, "api_key", None);
    let model_raw = B64.decode(text(&secrets, "model_key", None)).expect("b64");
    assert_eq!(
        cfg.command,
        [
            "python3".to_string(),
            "/app/run.py".into(),
            "--key".into(),
            hex::encode(&model_raw),
            "--token".into(),
            api.clone()
        ]
    );
    assert_eq!(cfg.environment["API_KEY"], api);
    assert_eq!(cfg.environment["MODEL_KEY_B64"], B64.encode(&model_raw));
    assert_eq!(
        cfg.environment["TLS_KEY"],
        text(&secrets, "server_cert", Some("privatekey"))
    );
    assert!(cfg.environment["TLS_KEY"].starts_with("-----BEGIN PRIVATE KEY-----\n"));
    assert_eq!(
        cfg.environment["SIGNING_PUB"],
        text(&secrets, "signing_key", Some("publickey"))
    );
    assert!(cfg.environment["SIGNING_PUB"].starts_with("-----BEGIN PUBLIC KEY-----\n"));
    assert_eq!(cfg.environment["FIXED"], "explicit-token");
    assert_eq!(cfg.pwd.as_deref(), Some("/app/explicit-token"));

    assert_eq!(cfg.files.len(), 2);
    let config = &cfg.files[0];
    assert_eq!(config.path, "/etc/app/config.json");
    assert_eq!(config.mode, 0o640);
    assert_eq!(
        String::from_utf8(config.content.clone()).expect("utf8"),
        format!(r#"{{"key": "{api}", "blob": "00010203"}}"#)
    );
    let chain = &cfg.files[1];
    assert_eq!(chain.path, "/etc/app/tls/chain.pem");
    assert_eq!(chain.mode, 0o600);
    assert_eq!(
        chain.content,
        text(&secrets, "server_cert", Some("chain")).into_bytes()
    );
    assert_eq!(pem::parse_many(&chain.content).expect("pem").len(), 2);

    // The auditor gets only the files for every service, and its crt placeholder.
    let auditor = render_service(&s, "auditor", &secrets).expect("render");
    assert_eq!(auditor.files.len(), 1);
    assert_eq!(auditor.files[0].path, "/etc/app/config.json");
    assert_eq!(auditor.command[2], text(&secrets, "ca", Some("crt")));
    assert!(auditor.command[2].starts_with("-----BEGIN CERTIFICATE-----\n"));
    assert_eq!(auditor.pwd, None);
}

#[test]
fn substitution_is_one_pass() {
    let s = parse(
        "name: a/b\nsecurity: {attestation: {mode: none, tolerate: [simulation]}}\nservices:\n- name: svc\n  environment: {A: \"x$$CLOISTER::outer$$y\", B: \"$$ not a placeholder $$\"}\nsecrets:\n- {name: outer, kind: ascii, value: \"$$CLOISTER::inner$$\"}\n- {name: inner, kind: ascii, value: secret-inner}\n",
    );
    let secrets = materialize(&s);
    let cfg = render_service(&s, "svc", &secrets).expect("render");
    assert_eq!(cfg.environment["A"], "x$$CLOISTER::inner$$y");
    assert_eq!(cfg.environment["B"], "$$ not a placeholder $$");
    assert!(cfg.command.is_empty());
}

#[test]
fn render_errors() {
    let s = parse(&full_example());
    let secrets = materialize(&s);
    assert_eq!(
        render_service(&s, "nope", &secrets).map(|_| ()),
        Err(SessionError::UnknownService("nope".into()))
    );
    let empty = cloister_cas_session::Secrets::default();
    match render_service(&s, "model-runner", &empty) {
        Err(SessionError::Secret { reason, .. }) => assert!(reason.contains("no value"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn debug_output_contains_no_secret_bytes() {
    let s = parse(&full_example());
    let secrets = materialize(&s);
    let cfg = render_service(&s, "model-runner", &secrets).expect("render");
    let debug = format!("{secrets:?} {cfg:?} {:?} {:?}", secrets.get("api_key"), cfg.files);
    let api = text(&secrets, "api_key", None);
    let model_b64 = text(&secrets, "model_key", None);
    let model_hex = text(&secrets, "model_key", Some("hex"));
    let key_pem = text(&secrets, "signing_key", None);
    let key_body: String = key_pem.lines().nth(1).expect("pem body").to_string();
    let key_hex = text(&secrets, "signing_key", Some("hex"));
    for needle in [
        api.as_str(),
        &model_b64,
        &model_hex,
        &key_body,
        &key_hex,
        "explicit-token",
        "00010203",
        "AAECAw==",
    ] {
        assert!(!debug.contains(needle), "Debug leaks {needle}: {debug}");
    }
    // The rendered values really are there (so the check above means something).
    assert!(cfg.environment.values().any(|v| v == &api));
    // Shape is visible.
    assert!(debug.contains("API_KEY"), "{debug}");
    assert!(debug.contains("/etc/app/config.json"), "{debug}");
    assert!(debug.contains("redacted"), "{debug}");
}

#[test]
fn service_config_serializes() {
    let s = parse(&full_example());
    let secrets = materialize(&s);
    let cfg = render_service(&s, "model-runner", &secrets).expect("render");
    let json = serde_json::to_string(&cfg).expect("json");
    let back: ServiceConfig = serde_json::from_str(&json).expect("parse");
    assert_eq!(back, cfg);
}
