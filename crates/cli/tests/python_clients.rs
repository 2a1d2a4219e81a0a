//! boto3 and oscar-python-style HTTP against the real server (the script is
//! `tests/python/boto3_e2e.py`; `.ci/run` installs boto3).

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
