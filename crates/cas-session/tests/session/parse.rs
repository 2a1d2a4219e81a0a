//! Parsing, unknown fields and validation errors.

use cloister_cas_session::{
    AttestationMode, ExportTarget, KeyAlgorithm, Lifetime, Principal, SecretKind, Session, SessionError,
    parse_session,
};

use crate::common::*;

fn err(yaml: &str) -> SessionError {
    match parse_session(yaml) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => e,
    }
}

/// Asserts an `Invalid` error at exactly `field` whose reason contains `reason`.
fn assert_invalid(yaml: &str, field: &str, reason: &str) {
    match err(yaml) {
        SessionError::Invalid { field: f, reason: r } => {
            assert_eq!(f, field, "reason was: {r}");
            assert!(
                r.contains(reason),
                "{f}: reason {r:?} does not contain {reason:?}"
            );
        }
        other => panic!("expected Invalid at {field}, got {other:?}"),
    }
}

#[test]
fn full_example_parses_with_every_feature() {
    let s = parse(&full_example());
    assert_eq!(s.name, "hospital/inference");
    assert_eq!(s.version, "0.3");
    assert_eq!(s.predecessor, None);
    assert_eq!(s.access_policy.read.len(), 2);
    assert_eq!(
        s.access_policy.update,
        cloister_cas_session::UpdatePolicy::AnyOf(vec![Principal::Creator])
    );
    assert_eq!(s.security.attestation.mode, AttestationMode::Hardware);
    assert_eq!(s.security.attestation.tolerate.len(), 2);
    // Normalized: upper case, sorted.
    assert_eq!(
        s.security.attestation.ignore_advisories,
        ["INTEL-SA-00289", "INTEL-SA-00615"]
    );
    // Normalized: services sorted by name.
    assert_eq!(
        s.services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["auditor", "model-runner"]
    );
    let runner = s.service("model-runner").expect("service");
    assert_eq!(
        runner.command,
        [
            "python3",
            "/app/run.py",
            "--key",
            "$$CLOISTER::model_key:hex$$",
            "--token",
            "$$CLOISTER::api_key$$"
        ]
    );
    assert_eq!(runner.environment.len(), 5);
    assert_eq!(runner.pwd.as_deref(), Some("/app/$$CLOISTER::fixed_token$$"));
    assert_eq!(runner.attestation.len(), 4);
    assert_eq!(runner.attestation[0].isvprodid, Some(1));
    assert_eq!(runner.attestation[0].isvsvn_min, Some(2));
    assert!(s.service("nope").is_none());

    let secret = |n: &str| s.secrets.iter().find(|x| x.name == n).expect("secret");
    assert_eq!(secret("api_key").size, Some(24));
    assert_eq!(secret("model_key").size, Some(32), "default size made explicit");
    assert_eq!(secret("fixed_token").size, Some(14), "explicit value's length");
    assert_eq!(secret("fixed_blob").size, Some(4));
    assert_eq!(secret("signing_key").algorithm, Some(KeyAlgorithm::Ed25519));
    assert!(secret("signing_key").export_public);
    assert_eq!(secret("ca").kind, SecretKind::X509Ca);
    assert_eq!(secret("ca").valid_for, Some(Lifetime::days(3650)));
    assert_eq!(secret("server_cert").issuer.as_deref(), Some("ca"));
    assert_eq!(
        secret("server_cert").algorithm,
        Some(KeyAlgorithm::P256),
        "default algorithm"
    );
    assert_eq!(secret("server_cert").san, ["model-runner.local", "10.0.0.1"]);
    assert_eq!(
        secret("server_cert").export,
        [ExportTarget::Session {
            session: "hospital/other".into(),
            owner: other_owner(),
            hashes: Vec::new(),
        }]
    );
    assert_eq!(
        secret("shared_key").import.as_ref().map(|i| i.session.as_str()),
        Some("provider/models")
    );
    assert_eq!(s.files.len(), 2);
    assert_eq!(s.files[0].permission, "0640");
    assert_eq!(s.files[1].permission, "0600", "default permission");
    assert_eq!(s.files[1].services, ["model-runner"]);
}

#[test]
fn full_example_round_trips_through_yaml_and_json() {
    let s = parse(&full_example());
    let yaml = serde_saphyr::to_string(&s).expect("serializes to YAML");
    let again = parse(&yaml);
    assert_eq!(again, s, "YAML round trip:\n{yaml}");
    let json = serde_json::to_string(&s).expect("serializes to JSON");
    let from_json: Session = serde_json::from_str(&json).expect("JSON parses");
    assert_eq!(from_json, s);
    from_json.validate().expect("still valid");
    assert_eq!(from_json.hash(), s.hash());
}

#[test]
fn unknown_fields_anywhere_name_their_path() {
    let base = full_example();
    let cases = [
        (
            "name: hospital/inference",
            "name: hospital/inference\nnmae: x",
            "nmae",
        ),
        (
            "  update: [CREATOR]",
            "  update: [CREATOR]\n  delete: [ANY]",
            "access_policy.delete",
        ),
        (
            "    mode: hardware",
            "    mode: hardware\n    strict: true",
            "security.attestation.strict",
        ),
        ("security:\n", "security:\n  tls: {}\n", "security.tls"),
        (
            "  pwd: /app/",
            "  workdir: /x\n  pwd: /app/",
            "services[0].workdir",
        ),
        (
            "    isvprodid: 1",
            "    isvprodid: 1\n    isvprodid_min: 1",
            "services[0].attestation[0].isvprodid_min",
        ),
        (
            "    rtmr0: ",
            "    mrenclav: x\n    rtmr0: ",
            "services[0].attestation[1].mrenclav",
        ),
        ("  size: 24", "  size: 24\n  length: 3", "secrets[0].length"),
        (
            "secret: model_key}",
            "secret: model_key, version: 2}",
            "secrets[7].import.version",
        ),
        (
            "  permission: \"0640\"",
            "  permission: \"0640\"\n  owner: root",
            "files[0].owner",
        ),
    ];
    for (from, to, path) in cases {
        assert_invalid(&edit(&base, from, to), path, "unknown field");
    }
}

#[test]
fn unknown_field_error_message_matches_the_documented_form() {
    let yaml = edit(&full_example(), "    rtmr0: ", "    mrenclav: x\n    rtmr0: ");
    let msg = err(&yaml).to_string();
    assert!(
        msg.starts_with("services[0].attestation[1].mrenclav: unknown field"),
        "{msg}"
    );
}

#[test]
fn invalid_values_name_their_field() {
    let base = full_example();
    let h63 = &H64[..63];
    let cases: Vec<(String, &str, &str)> = vec![
        (
            edit(&base, &format!("mrenclave: {H64}"), &format!("mrenclave: {h63}")),
            "services[0].attestation[0].mrenclave",
            "64 hex digits",
        ),
        (
            edit(
                &base,
                &format!("mrsigner: {H64}"),
                "mrsigner: zz11111111111111111111111111111111111111111111111111111111111111",
            ),
            "services[0].attestation[0].mrsigner",
            "64 hex digits",
        ),
        (
            edit(&base, &format!("mrtd: {H96}"), &format!("mrtd: {H64}")),
            "services[0].attestation[1].mrtd",
            "96 hex digits",
        ),
        (
            edit(
                &base,
                &format!("  - tee: snp\n    measurement: {H96}"),
                &format!("  - tee: snp\n    measurement: {H64}"),
            ),
            "services[0].attestation[2].measurement",
            "96 hex digits",
        ),
        (
            edit(
                &base,
                "    isvprodid: 1",
                &format!("    isvprodid: 1\n    mrtd: {H96}"),
            ),
            "services[0].attestation[0].mrtd",
            "not valid for tee sgx",
        ),
        (
            edit(&base, "    rtmr0: ", "    isvsvn_min: 3\n    rtmr0: "),
            "services[0].attestation[1].isvsvn_min",
            "not valid for tee tdx",
        ),
        (
            edit(&base, "    isvprodid: 1", "    isvprodid: 70000"),
            "services[0].attestation[0].isvprodid",
            "invalid",
        ),
        (
            edit(&base, "  - tee: snp", "  - tee: sev"),
            "services[0].attestation[2].tee",
            "unknown value 'sev'",
        ),
        (
            edit(&base, "name: hospital/inference", "name: Hospital/Inference"),
            "name",
            "invalid session name",
        ),
        (
            edit(&base, "name: hospital/inference", "name: hospital//inference"),
            "name",
            "invalid session name",
        ),
        (
            edit(
                &base,
                "name: hospital/inference",
                &format!("name: {}", "a".repeat(129)),
            ),
            "name",
            "longer than 128",
        ),
        (
            edit(&base, "version: \"0.3\"", "version: \"0.4\""),
            "version",
            "unsupported version",
        ),
        (
            edit(&base, "- name: auditor", "- name: Auditor!"),
            "services[1].name",
            "invalid service name",
        ),
        (
            edit(&base, "- name: auditor", "- name: model-runner"),
            "services[1].name",
            "duplicate service name",
        ),
        (
            edit(&base, "- name: model_key", "- name: api_key"),
            "secrets[1].name",
            "duplicate secret name",
        ),
        (
            edit(&base, "- name: model_key", "- name: model:key"),
            "secrets[1].name",
            "invalid secret name",
        ),
        (
            edit(
                &base,
                "tolerate: [simulation, outdated-tcb]",
                "tolerate: [simulation, outdated]",
            ),
            "security.attestation.tolerate[1]",
            "unknown value 'outdated'",
        ),
        (
            edit(&base, "mode: hardware", "mode: software"),
            "security.attestation.mode",
            "unknown value 'software'",
        ),
        (
            edit(
                &base,
                "ignore_advisories: [INTEL-SA-00615",
                "ignore_advisories: [\"INTEL SA\"",
            ),
            "security.attestation.ignore_advisories[0]",
            "advisory",
        ),
        (
            edit(
                &base,
                "API_KEY: \"$$CLOISTER::api_key$$\"",
                "API_KEY: \"$$CLOISTER::apikey$$\"",
            ),
            "services[0].environment.API_KEY",
            "unknown secret 'apikey'",
        ),
        (
            edit(
                &base,
                "--key $$CLOISTER::model_key:hex$$",
                "--key $$CLOISTER::nope:hex$$",
            ),
            "services[0].command[3]",
            "unknown secret 'nope'",
        ),
        (
            edit(
                &base,
                "pwd: /app/$$CLOISTER::fixed_token$$",
                "pwd: /app/$$CLOISTER::fixed_token:crt$$",
            ),
            "services[0].pwd",
            "format 'crt' is not valid for secret 'fixed_token' of kind ascii",
        ),
        (
            edit(
                &base,
                "$$CLOISTER::fixed_blob:hex$$",
                "$$CLOISTER::fixed_blob:privatekey$$",
            ),
            "files[0].content",
            "not valid for secret 'fixed_blob' of kind binary",
        ),
        (
            edit(
                &base,
                "$$CLOISTER::signing_key:publickey$$",
                "$$CLOISTER::signing_key:chain$$",
            ),
            "services[0].environment.SIGNING_PUB",
            "not valid for secret 'signing_key' of kind private-key",
        ),
        (
            edit(&base, "$$CLOISTER::ca:crt$$", "$$CLOISTER::ca:pem$$"),
            "services[1].command[2]",
            "unknown format 'pem'",
        ),
        (
            edit(
                &base,
                "$$CLOISTER::server_cert:chain$$",
                "$$CLOISTER::server_cert:chain",
            ),
            "files[1].content",
            "unterminated placeholder",
        ),
        (
            edit(&base, "  issuer: ca", "  issuer: signing_key"),
            "secrets[6].issuer",
            "not x509-ca",
        ),
        (
            edit(&base, "  issuer: ca", "  issuer: nobody"),
            "secrets[6].issuer",
            "unknown secret 'nobody'",
        ),
        (
            edit(
                &base,
                "  common_name: Hospital CA",
                "  common_name: Hospital CA\n  issuer: server_cert",
            ),
            "secrets[5].issuer",
            "not x509-ca",
        ),
        (
            edit(&base, "  size: 24", "  size: 24\n  algorithm: p256"),
            "secrets[0].algorithm",
            "not allowed for kind ascii",
        ),
        (
            edit(
                &base,
                "  algorithm: ed25519",
                "  algorithm: ed25519\n  san: [x.local]",
            ),
            "secrets[4].san",
            "not allowed for kind private-key",
        ),
        (
            edit(&base, "  size: 24", "  size: 0"),
            "secrets[0].size",
            "between 1 and",
        ),
        (
            edit(
                &base,
                "  value: explicit-token",
                "  value: explicit-token\n  size: 3",
            ),
            "secrets[2].size",
            "does not match",
        ),
        (
            edit(
                &base,
                "  kind: binary\n  import",
                "  kind: binary\n  size: 3\n  import",
            ),
            "secrets[7].size",
            "not allowed for an imported secret",
        ),
        (
            edit(
                &base,
                "secret: model_key}",
                "secret: model_key}\n  export: [\"*\"]",
            ),
            "secrets[7].export",
            "cannot be re-exported",
        ),
        (
            edit(&base, "{session: provider/models", "{session: hospital/inference"),
            "secrets[7].import.session",
            "itself",
        ),
        (
            edit(&base, "  kind: ascii\n  size: 24", "  kind: text\n  size: 24"),
            "secrets[0].kind",
            "unknown value 'text'",
        ),
        (
            edit(&base, "  algorithm: p384", "  algorithm: dsa"),
            "secrets[5].algorithm",
            "unknown value 'dsa'",
        ),
        (
            edit(
                &base,
                "san: [model-runner.local, 10.0.0.1]",
                "san: [model_runner!, 10.0.0.1]",
            ),
            "secrets[6].san[0]",
            "neither a DNS name",
        ),
        (
            edit(&base, "  valid_for: 365d", "  valid_for: 365x"),
            "secrets[6].valid_for",
            "invalid duration",
        ),
        (
            edit(&base, "  valid_for: 365d", "  valid_for: 30"),
            "secrets[6].valid_for",
            "missing unit",
        ),
        (
            edit(&base, "{session: hospital/other,", "{session: Other,"),
            "secrets[6].export[0].session",
            "invalid session name",
        ),
        (
            edit(
                &base,
                "{session: hospital/other, owner",
                "{session: hospital/other, ownr",
            ),
            "secrets[6].export[0].ownr",
            "unknown field",
        ),
        (
            edit(
                &base,
                &format!("owner: \"{}\"", other_owner()),
                "owner: \"ed25519:00\"",
            ),
            "secrets[6].export[0].owner",
            "Ed25519 public key is 32 bytes",
        ),
        (
            edit(&base, "{session: hospital/other, ", "{"),
            "secrets[6].export[0].session",
            "missing",
        ),
        (
            edit(
                &base,
                "- path: /etc/app/config.json",
                "- path: etc/app/config.json",
            ),
            "files[0].path",
            "absolute",
        ),
        (
            edit(
                &base,
                "- path: /etc/app/config.json",
                "- path: /etc/../config.json",
            ),
            "files[0].path",
            "'..'",
        ),
        (
            edit(
                &base,
                "- path: /etc/app/tls/chain.pem",
                "- path: /etc/app/config.json",
            ),
            "files[1].path",
            "duplicate file path",
        ),
        (
            edit(&base, "permission: \"0640\"", "permission: \"0800\""),
            "files[0].permission",
            "invalid permission",
        ),
        (
            edit(&base, "services: [model-runner]", "services: [runner]"),
            "files[1].services[0]",
            "unknown service 'runner'",
        ),
        (
            edit(&base, "read: [CREATOR,", "read: [EVERYONE,"),
            "access_policy.read[0]",
            "invalid principal",
        ),
        (
            edit(&base, "read: [CREATOR,", "read: [CREATOR, \"ed25519:00\","),
            "access_policy.read[1]",
            "32 bytes",
        ),
        (
            edit(&base, "update: [CREATOR]", "update: [NONE, CREATOR]"),
            "access_policy.update",
            "NONE must be the only entry",
        ),
        (
            edit(&base, "update: [CREATOR]", "update: []"),
            "access_policy.update",
            "must not be empty",
        ),
        (
            edit(&base, "    MODEL_KEY_B64:", "    1BAD: x\n    MODEL_KEY_B64:"),
            "services[0].environment.1BAD",
            "invalid variable name",
        ),
        (
            edit(&base, "  pwd: /app/", "  pwd: app/"),
            "services[0].pwd",
            "absolute",
        ),
        (
            edit(
                &base,
                "  command: [/bin/audit, --ca, \"$$CLOISTER::ca:crt$$\"]",
                "  command: \"/bin/audit 'unclosed\"",
            ),
            "services[1].command",
            "unbalanced quotes",
        ),
    ];
    for (yaml, field, reason) in cases {
        assert_invalid(&yaml, field, reason);
    }
}

#[test]
fn a_bare_export_name_says_what_to_write() {
    let base = full_example();
    let owner = format!("owner: \"{}\"", other_owner());
    let bare = edit(
        &base,
        &format!("[{{session: hospital/other, {owner}}}]"),
        "[hospital/other]",
    );
    match err(&bare) {
        SessionError::Invalid { field, reason } => {
            assert_eq!(field, "secrets[6].export[0]");
            assert!(
                reason.contains("{session: hospital/other, owner: <the key that owns hospital/other"),
                "{reason}"
            );
            assert!(reason.contains("\"*\""), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // "*" stays a plain string, and an explicit "*" among named entries is kept.
    let star = parse(&edit(
        &base,
        &format!("[{{session: hospital/other, {owner}}}]"),
        "[\"*\"]",
    ));
    let cert = star
        .secrets
        .iter()
        .find(|s| s.name == "server_cert")
        .expect("cert");
    assert_eq!(cert.export, [ExportTarget::Anyone]);
}

#[test]
fn structural_rules() {
    let min = minimal();
    // Hardware mode needs at least one alternative per service.
    let no_alternatives = "name: a/b\nservices:\n- name: svc\n  command: [run]\nsecrets: []\n";
    assert_invalid(
        no_alternatives,
        "services[0].attestation",
        "at least one alternative",
    );
    // mode none is dev-only: refused without tolerate simulation, accepted with it.
    let none_mode = "name: a/b\nsecurity:\n  attestation:\n    mode: none\nservices:\n- name: svc\n";
    assert_invalid(
        none_mode,
        "security.attestation.mode",
        "requires tolerate: [simulation]",
    );
    let ok = parse(&none_mode.replace("mode: none", "mode: none\n    tolerate: [simulation]"));
    assert_eq!(ok.security.attestation.mode, AttestationMode::None);
    // A sim alternative without simulation tolerance could never match.
    assert_invalid(
        &edit(&min, "    tolerate: [simulation]", "    tolerate: [debug-mode]"),
        "services[0].attestation[0].tee",
        "simulation",
    );
    // sgx needs mrenclave, or mrsigner with isvprodid.
    let sgx_only_signer =
        format!("name: a/b\nservices:\n- name: svc\n  attestation:\n  - tee: sgx\n    mrsigner: {H64}\n");
    assert_invalid(
        &sgx_only_signer,
        "services[0].attestation[0]",
        "mrsigner and isvprodid",
    );
    parse(&sgx_only_signer.replace(
        &format!("mrsigner: {H64}"),
        &format!("mrsigner: {H64}\n    isvprodid: 3"),
    ));
    // Issuer cycles.
    let cycle = "name: a/b\nsecrets:\n- name: c1\n  kind: x509-ca\n  issuer: c2\n- name: c2\n  kind: x509-ca\n  issuer: c1\n";
    assert_invalid(cycle, "secrets[0].issuer", "cycle");
    assert_invalid(
        "name: a/b\nsecrets:\n- name: c1\n  kind: x509-ca\n  issuer: c1\n",
        "secrets[0].issuer",
        "itself",
    );
    // Missing required fields are named.
    assert_invalid("version: \"0.3\"\n", "name", "missing required field");
    assert_invalid(
        "name: a/b\nsecrets:\n- name: x\n",
        "secrets[0].kind",
        "missing required field",
    );
    // Duplicate YAML keys are refused, not resolved silently.
    assert_invalid(
        "name: a/b\nservices: []\nservices: []\n",
        "services",
        "duplicate key",
    );
}

#[test]
fn syntax_errors() {
    for yaml in ["", "name: [a/b\n", "- a\n- b\n", "name: a/b\n---\nname: c/d\n"] {
        match err(yaml) {
            SessionError::Syntax(_) | SessionError::Invalid { .. } => {}
            other => panic!("{yaml:?}: {other:?}"),
        }
    }
    assert!(matches!(
        err("name: [a/b\n"),
        SessionError::Syntax(_) | SessionError::Invalid { .. }
    ));
    assert!(matches!(err(""), SessionError::Syntax(_)));
    assert!(matches!(err(&"x".repeat(2 << 20)), SessionError::Syntax(m) if m.contains("larger")));
}

#[test]
fn explicit_values_never_appear_in_errors_or_debug() {
    let base = full_example();
    for (from, to, secret) in [
        (
            "  value: \"AAECAw==\"",
            "  value: \"hunter2-not-base64!\"",
            "hunter2-not-base64!",
        ),
        ("  value: explicit-token", "  value: \"hunter2\\ttab\"", "hunter2"),
        ("  value: explicit-token", "  value: [hunter2]", "hunter2"),
        ("  value: explicit-token", "  value: {hunter2: 1}", "hunter2"),
    ] {
        let e = err(&edit(&base, from, to));
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains(secret), "{shown}");
        assert!(shown.contains("value"), "{shown}");
    }
    let s = parse(&base);
    let debug = format!("{s:?}");
    assert!(!debug.contains("explicit-token"), "{debug}");
    assert!(!debug.contains("AAECAw=="), "{debug}");
}

#[test]
fn scalars_are_read_as_written() {
    let s = parse(&format!(
        "name: a/b\nservices:\n- name: svc\n  environment: {{N: 0600, B: true, F: 1.50}}\n  attestation:\n  - tee: sgx\n    mrenclave: {}\nfiles:\n- path: /x\n  permission: 0640\n",
        "1".repeat(64)
    ));
    let env = &s.services[0].environment;
    assert_eq!(env["N"], "0600");
    assert_eq!(env["B"], "true");
    assert_eq!(env["F"], "1.50");
    assert_eq!(s.files[0].permission, "0640");
    // Hex that looks like a number stays a string and is lower-cased.
    let upper = parse(&format!(
        "name: a/b\nservices:\n- name: svc\n  attestation:\n  - tee: sgx\n    mrenclave: {}\n",
        "AB".repeat(32)
    ));
    assert_eq!(
        upper.services[0].attestation[0].mrenclave.as_deref(),
        Some("ab".repeat(32).as_str())
    );
}

#[test]
fn rsa_spelling_and_lifetimes() {
    let s = parse(
        "name: a/b\nsecrets:\n- name: k\n  kind: private-key\n  algorithm: rsa\n- name: c\n  kind: x509\n  valid_for: 1d12h\n",
    );
    assert_eq!(s.secrets[1].algorithm, Some(KeyAlgorithm::Rsa3072));
    let lifetime = s.secrets[0].valid_for.expect("default made explicit");
    assert_eq!(lifetime.seconds(), 36 * 3600);
    assert_eq!(lifetime.to_string(), "36h");
    assert_eq!(s.secrets[0].common_name.as_deref(), Some("c"));
    assert_eq!(
        "2w".parse::<Lifetime>().map(|l| l.to_string()),
        Ok("14d".to_string())
    );
    assert!("0m".parse::<Lifetime>().is_err());
    assert!("36526d".parse::<Lifetime>().is_err());
    assert!("99999999999999999999d".parse::<Lifetime>().is_err());
}

#[test]
fn tdx_alternatives_pin_mrtd_and_every_rtmr() {
    let base = full_example();
    // MRTD alone (the old minimum) is refused, naming the first missing register.
    let mrtd_only = edit(
        &base,
        &format!("    rtmr0: {H96}\n    rtmr1: {H96}\n    rtmr2: {H96}\n    rtmr3: {H96}\n"),
        "",
    );
    assert_invalid(
        &mrtd_only,
        "services[0].attestation[1].rtmr0",
        "a tdx alternative pins mrtd and rtmr0 to rtmr3",
    );
    for rtmr in ["rtmr0", "rtmr1", "rtmr2", "rtmr3"] {
        let yaml = edit(&base, &format!("    {rtmr}: {H96}\n"), "");
        assert_invalid(
            &yaml,
            &format!("services[0].attestation[1].{rtmr}"),
            "MRTD covers only the firmware",
        );
    }
    let no_mrtd = edit(&base, &format!("    mrtd: {H96}\n"), "");
    assert_invalid(&no_mrtd, "services[0].attestation[1].mrtd", "required");
}

#[test]
fn snp_rules_are_validated_with_their_paths() {
    let base = full_example();
    let snp = "services[0].attestation[2]";
    let cases: Vec<(String, String, &str)> = vec![
        (
            edit(&base, "    vmpl: 0", "    vmpl: 4"),
            format!("{snp}.vmpl"),
            "not a VMPL",
        ),
        (
            edit(&base, "\"0x0000000000030000\"", "\"0x30000\""),
            format!("{snp}.policy"),
            "16 hex digits",
        ),
        (
            edit(&base, "\"0x0000000000030000\"", "\"00000000000300zz\""),
            format!("{snp}.policy"),
            "not a guest policy",
        ),
        (
            edit(&base, "\"0x0000000000030000\"", "196608"),
            format!("{snp}.policy"),
            "not a guest policy",
        ),
        (
            edit(&base, &format!("host_data: {H64}"), &format!("host_data: {H96}")),
            format!("{snp}.host_data"),
            "64 hex digits",
        ),
        (
            edit(&base, "snp: 8, microcode", "snp: 256, microcode"),
            format!("{snp}.min_tcb.snp"),
            "invalid",
        ),
        (
            edit(&base, "snp: 8, microcode", "snp: -1, microcode"),
            format!("{snp}.min_tcb.snp"),
            "invalid",
        ),
        (
            edit(
                &base,
                "min_tcb: {bootloader: 3,",
                "min_tcb: {ucode: 1, bootloader: 3,",
            ),
            format!("{snp}.min_tcb.ucode"),
            "unknown field",
        ),
        (
            edit(&base, "    allow_smt: false", "    allow_smt: no-thanks"),
            format!("{snp}.allow_smt"),
            "invalid",
        ),
        (
            edit(
                &base,
                &format!("  - tee: snp\n    measurement: {H96}\n"),
                "  - tee: snp\n",
            ),
            snp.to_string(),
            "needs measurement",
        ),
    ];
    for (yaml, field, reason) in cases {
        assert_invalid(&yaml, &field, reason);
    }

    // Every SNP rule is refused on the other TEEs, at its own path.
    let rules = [
        "min_tcb: {snp: 1}",
        "allow_migration_agent: false",
        "allow_smt: true",
        "policy: \"0000000000030000\"",
        "vmpl: 0",
        &format!("host_data: {H64}"),
    ];
    for rule in rules {
        let name = rule.split(':').next().unwrap_or_default();
        for (index, anchor, tee) in [
            (0, "    isvsvn_min: 2\n", "sgx"),
            (1, &*format!("    rtmr3: {H96}\n"), "tdx"),
            (
                3,
                &*format!("  - tee: sim\n    measurement: {}\n", hex::encode(sim_workload())),
                "sim",
            ),
        ] {
            let yaml = edit(&base, anchor, &format!("{anchor}    {rule}\n"));
            assert_invalid(
                &yaml,
                &format!("services[0].attestation[{index}].{name}"),
                &format!("not valid for tee {tee}"),
            );
        }
    }
}

#[test]
fn snp_rules_normalize_to_one_form() {
    let s = parse(&full_example());
    let alt = &s.service("model-runner").expect("service").attestation[2];
    let floor = alt.min_tcb.expect("min_tcb");
    assert_eq!(
        (floor.bootloader, floor.tee, floor.snp, floor.microcode, floor.fmc),
        (3, 0, 8, 115, 0),
        "components not given are 0"
    );
    assert_eq!(alt.allow_migration_agent, Some(false), "default written out");
    assert_eq!(alt.allow_smt, Some(false));
    assert_eq!(alt.policy.as_deref(), Some("0000000000030000"), "0x dropped");
    assert_eq!(alt.vmpl, Some(0));
    // Other TEEs get none of the SNP defaults.
    let sgx = &s.service("model-runner").expect("service").attestation[0];
    assert_eq!(
        (sgx.min_tcb, sgx.allow_migration_agent, sgx.allow_smt),
        (None, None, None)
    );

    // Written with explicit defaults, upper-case hex and an unquoted 0x policy, or with
    // nothing at all: the same session.
    let sim = hex::encode(sim_workload());
    let head = format!(
        "name: a/b\nsecurity: {{attestation: {{tolerate: [simulation]}}}}\nservices:\n- name: svc\n  attestation:\n  - tee: sim\n    measurement: {sim}\n  - tee: snp\n    measurement: {H96}\n"
    );
    let bare = parse(&head);
    let explicit = parse(&format!(
        "{head}    min_tcb: {{bootloader: 0, tee: 0, snp: 0, microcode: 0, fmc: 0}}\n    allow_migration_agent: false\n    allow_smt: true\n"
    ));
    let empty_floor = parse(&format!("{head}    min_tcb: {{}}\n"));
    assert_eq!(bare, explicit);
    assert_eq!(bare.hash(), explicit.hash());
    assert_eq!(bare.hash(), empty_floor.hash());

    let lower = parse(&format!(
        "{head}    policy: \"0000000000030000\"\n    host_data: {}\n",
        "ab".repeat(32)
    ));
    let upper = parse(&format!(
        "{head}    policy: 0x0000000000030000\n    host_data: {}\n",
        "AB".repeat(32)
    ));
    assert_eq!(lower.hash(), upper.hash());
    assert_eq!(
        upper.services[0].attestation[1].host_data.as_deref(),
        Some("ab".repeat(32).as_str())
    );
    // The canonical JSON writes the rules out.
    let text = String::from_utf8(bare.canonical_bytes()).expect("UTF-8");
    assert!(
        text.contains(r#"{"allow_migration_agent":false,"allow_smt":true,"measurement":"#)
            && text
                .contains(r#""min_tcb":{"bootloader":0,"fmc":0,"microcode":0,"snp":0,"tee":0},"tee":"snp"}"#),
        "{text}"
    );
}

#[test]
fn the_name_is_read_without_the_rest_of_the_session() {
    use cloister_cas_session::session_name;
    // The rest need not be a session: the CAS checks standing on the name before parsing it.
    assert_eq!(
        session_name("name: team/app\nservices: 12\nno_such_field: [1]\n").unwrap(),
        "team/app"
    );
    assert!(parse_session("name: team/app\nservices: 12\n").is_err());
    for bad in ["{not: [yaml", "services: []\n", "name: [a, b]\n", ""] {
        assert!(session_name(bad).is_err(), "{bad:?}");
    }
    let huge = format!("name: team/app\nx: \"{}\"\n", "a".repeat(2 << 20));
    assert!(session_name(&huge).is_err());
    // Errors do not quote the text, which may hold explicit secret values.
    let leaked = session_name("name: [s3cret-value-7f, 1]\n").unwrap_err();
    assert!(!leaked.to_string().contains("s3cret-value-7f"), "{leaked}");
}
