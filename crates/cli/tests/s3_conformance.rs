//! S3 conformance of the embedded endpoint (issue 12), against a real server: the boto3 suite
//! (`tests/python/s3_conformance.py`, one test per S3 behaviour), real clients (rclone, s3cmd,
//! the AWS CLI: `tests/python/s3_clients.py`) and a model-based property test
//! (`tests/python/s3_model.py`, hypothesis). Each runs under pytest, whose summary lists every
//! failure in one line. Missing tools skip with a message, unless CLOISTER_REQUIRE_S3_CLIENTS=1
//! (`.ci/run` installs them and sets it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;

use common::*;

fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// Which of these Python modules and programs are not installed.
fn missing(modules: &[&str], tools: &[&str]) -> Vec<String> {
    let modules = modules
        .iter()
        .filter(|m| !python_has(m))
        .map(|m| format!("python3 -m {m}"));
    let tools = tools.iter().filter(|t| !on_path(t)).map(|t| t.to_string());
    modules.chain(tools).collect()
}

/// True (after saying so) when the test must be skipped; fails instead under
/// CLOISTER_REQUIRE_S3_CLIENTS=1.
fn skip_without(test: &str, missing: &[String]) -> bool {
    if missing.is_empty() {
        return false;
    }
    let message = format!(
        "{test}: {} not installed (apt-get install -y rclone s3cmd awscli; \
         python3 -m pip install boto3 pytest hypothesis)",
        missing.join(", ")
    );
    assert!(
        std::env::var("CLOISTER_REQUIRE_S3_CLIENTS").as_deref() != Ok("1"),
        "CLOISTER_REQUIRE_S3_CLIENTS=1 but {message}"
    );
    eprintln!("SKIPPED {message}");
    true
}

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
fn boto3_conformance_suite() {
    if skip_without(
        "s3_conformance.py",
        &missing(&["boto3", "pytest", "requests"], &[]),
    ) {
        return;
    }
    run_script("s3_conformance.py");
}

#[test]
fn real_clients_rclone_s3cmd_aws_cli() {
    let missing = missing(&["boto3", "pytest"], &["rclone", "s3cmd", "aws"]);
    if skip_without("s3_clients.py", &missing) {
        return;
    }
    run_script("s3_clients.py");
}

#[test]
fn model_based_property_test() {
    if skip_without("s3_model.py", &missing(&["boto3", "pytest", "hypothesis"], &[])) {
        return;
    }
    run_script("s3_model.py");
}
