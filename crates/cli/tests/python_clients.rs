//! Python clients against the real server: boto3 and oscar-python-style HTTP
//! (`tests/python/boto3_e2e.py`), and the real oscar-python client checked against the served
//! OpenAPI document (`tests/python/oscar_python_client.py`). `.ci/run` installs what they need.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;

#[test]
fn boto3_and_oscar_python_flows() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let script = repo_root().join("tests/python/boto3_e2e.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .env("CLOISTER_API", &server.api)
        .env("CLOISTER_S3", &server.s3)
        .env("CLOISTER_USER", USER)
        .env("CLOISTER_PASSWORD", PASSWORD)
        .env("S3_ACCESS_KEY", ACCESS_KEY)
        .env("S3_SECRET_KEY", SECRET_KEY)
        .output()
        .expect("python3 must be installed (see .ci/run)");
    assert!(
        out.status.success(),
        "boto3 flow failed (is boto3 installed? `python3 -m pip install boto3`):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The real oscar-python client (PyPI `oscar-python`) against the real server; the script
/// checks every request it sends and every answer against the served OpenAPI document
/// (`tests/python/oscar_python_client.py`; `.ci/run` installs oscar-python).
#[test]
fn oscar_python_client_matches_the_served_document() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let script = repo_root().join("tests/python/oscar_python_client.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .env("CLOISTER_API", &server.api)
        .env("CLOISTER_USER", USER)
        .env("CLOISTER_PASSWORD", PASSWORD)
        .output()
        .expect("python3 must be installed (see .ci/run)");
    assert!(
        out.status.success(),
        "oscar-python flow failed (is it installed? `python3 -m pip install oscar-python \
         openapi-spec-validator`):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(stdout.contains("oscar-python: 1 passed, 0 failed"), "{stdout}");
}
