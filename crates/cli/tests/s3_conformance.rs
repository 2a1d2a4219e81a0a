//! S3 conformance of the embedded endpoint (issue 12), against a real server: the boto3 suite
//! (`tests/python/s3_conformance.py`, one test per S3 behaviour), real clients (rclone, s3cmd,
//! the AWS CLI: `tests/python/s3_clients.py`) and a model-based property test
//! (`tests/python/s3_model.py`, hypothesis). Each runs under pytest, whose summary lists every
//! failure in one line. A test whose tools were missing when the crate was built is ignored
//! (reported as skipped; see build.rs), and CLOISTER_REQUIRE_S3_CLIENTS=1 (`.ci/run` installs
//! them and sets it) makes a missing tool a build error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::*;

/// Runs one pytest script against a fresh server and fails with pytest's summary.
fn run_script(script: &str) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let work = dir.path().join("pytest");
    std::fs::create_dir_all(&work).unwrap();
    let out = Command::new("python3")
        .args(["-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider"])
        .arg(repo_root().join("tests/python").join(script))
        // Test ids relative to the scripts: `s3_conformance.py::test_...`.
        .arg("--rootdir")
        .arg(repo_root().join("tests/python"))
        // Outside the repository, so that no cache or example database is left in it.
        .current_dir(&work)
        // Wide enough that pytest does not cut the one-line failure messages.
        .env("COLUMNS", "400")
        .env("CLOISTER_S3", &server.s3)
        .env("S3_ACCESS_KEY", ACCESS_KEY)
        .env("S3_SECRET_KEY", SECRET_KEY)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "{script} failed against the embedded S3 endpoint:\n{stdout}"
    );
}

#[test]
#[cfg_attr(not(has_s3_suite), ignore = "boto3, pytest or requests is not installed")]
fn boto3_conformance_suite() {
    run_script("s3_conformance.py");
}

#[test]
#[cfg_attr(
    not(has_s3_clients),
    ignore = "boto3, pytest, rclone, s3cmd or the AWS CLI is not installed"
)]
fn real_clients_rclone_s3cmd_aws_cli() {
    run_script("s3_clients.py");
}

#[test]
#[cfg_attr(not(has_s3_model), ignore = "boto3, pytest or hypothesis is not installed")]
fn model_based_property_test() {
    run_script("s3_model.py");
}
