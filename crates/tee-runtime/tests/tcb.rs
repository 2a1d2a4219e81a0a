//! What runs inside the TEE is `cloister-runtime` alone, so its dependency tree is its trusted
//! computing base: it must never pull in the servers (an HTTP server, the platform, the CAS
//! server or its store), which would put their code — and their attack surface — in the TEE,
//! nor what it has no use for there: a general-purpose HTTP client (it talks to one pinned CAS
//! over hyper's bare HTTP/1 client), evidence verification and collateral fetching (it only
//! collects evidence), CA roots or the system's certificate store (nothing it trusts is
//! CA-verified).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::process::Command;

/// Packages of the runtime's normal (linked) dependency tree, with the features enabled on them.
fn tree() -> (BTreeSet<String>, String) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "tree",
            "-p",
            "cloister-tee-runtime",
            "-e",
            "normal,features",
            "--prefix",
            "none",
            "--offline",
            "--locked",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("utf-8");
    let packages = text
        .lines()
        .filter(|line| !line.contains(" feature \""))
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    (packages, text)
}

#[test]
fn the_runtime_links_no_server() {
    let (packages, text) = tree();
    // The parts it is made of are there (so this test looks at the right tree)...
    for needed in [
        "cloister-cas-client",
        "cloister-crypt",
        "cloister-attestation",
        "cloister-runtime",
        "hyper",
        "tokio-rustls",
    ] {
        assert!(
            packages.contains(needed),
            "{needed} missing from the runtime's tree"
        );
    }
    // ...and no server, store or platform crate.
    for forbidden in [
        "axum",
        "axum-core",
        "redb",
        "s3s",
        "s3s-fs",
        "rcgen",
        "cloister-cas",
        "cloister-cas-store",
        "cloister-cas-session",
        "cloister-platform",
        "cloister-storage",
        "cloister-cli",
    ] {
        assert!(
            !packages.contains(forbidden),
            "the runtime's dependency tree gained {forbidden}: it would run inside the TEE"
        );
    }
    // hyper is there as the CAS client's; its server half must not be.
    for forbidden in ["hyper feature \"server\"", "hyper-util feature \"server\""] {
        assert!(
            !text.contains(forbidden),
            "the runtime's dependency tree enables {forbidden}"
        );
    }
}

#[test]
fn the_runtime_links_no_general_http_client_nor_verifier() {
    let (packages, text) = tree();
    for forbidden in [
        // HTTP clients with their URL, proxy, pool and middleware stacks.
        "reqwest",
        "ureq",
        "ureq-proto",
        "hyper-rustls",
        "tower",
        "tower-http",
        "url",
        "idna",
        // CA roots and the system's certificate store.
        "webpki-roots",
        "rustls-native-certs",
        "rustls-platform-verifier",
        "openssl-probe",
        // The verifying half of cloister-attestation: AMD chains and report signatures.
        "sev",
        "p384",
        "rsa",
    ] {
        assert!(
            !packages.contains(forbidden),
            "the runtime's dependency tree gained {forbidden}: it would run inside the TEE"
        );
    }
    for forbidden in [
        // Verifiers, policies and collateral fetching (see cloister-attestation's docs).
        "cloister-attestation feature \"verify\"",
        // hyper-util's pooled client, with its proxy and DNS machinery.
        "hyper-util feature \"client-legacy\"",
        // The client speaks TLS 1.3 with ring only.
        "rustls feature \"tls12\"",
        "rustls feature \"aws_lc_rs\"",
    ] {
        assert!(
            !text.contains(forbidden),
            "the runtime's dependency tree enables {forbidden}"
        );
    }
}
