//! Detects the S3 clients the conformance tests drive (tests/s3_conformance.rs) and the
//! container engine the container executor's tests need (tests/containers.rs): a test whose
//! tools are missing is ignored, so the test runner reports it as skipped rather than passed;
//! with CLOISTER_REQUIRE_S3_CLIENTS=1 (CLOISTER_REQUIRE_PODMAN=1) a missing one fails the build
//! instead. Detection runs when PATH or those variables change (after installing a Python module
//! alone, `touch crates/cli/build.rs`).

use std::path::Path;
use std::process::Command;

fn on_path(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let executable =
        |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| executable(&dir.join(tool))))
}

fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn main() {
    println!("cargo::rerun-if-env-changed=PATH");
    println!("cargo::rerun-if-env-changed=CLOISTER_REQUIRE_S3_CLIENTS");
    println!("cargo::rerun-if-changed=build.rs");
    detect_podman();
    let required = std::env::var("CLOISTER_REQUIRE_S3_CLIENTS").as_deref() == Ok("1");
    // Each test's cfg and what it needs: Python modules, then programs.
    let suites: [(&str, &[&str], &[&str]); 3] = [
        ("has_s3_suite", &["boto3", "pytest", "requests"], &[]),
        (
            "has_s3_clients",
            &["boto3", "pytest"],
            &["rclone", "s3cmd", "aws"],
        ),
        ("has_s3_model", &["boto3", "pytest", "hypothesis"], &[]),
    ];
    let mut importable = std::collections::HashMap::new();
    for (cfg, modules, tools) in suites {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        let missing: Vec<String> = modules
            .iter()
            .filter(|m| !*importable.entry(**m).or_insert_with(|| python_has(m)))
            .map(|m| format!("the Python module {m}"))
            .chain(tools.iter().filter(|t| !on_path(t)).map(|t| t.to_string()))
            .collect();
        if missing.is_empty() {
            println!("cargo::rustc-cfg={cfg}");
        } else if required {
            println!(
                "cargo::error=CLOISTER_REQUIRE_S3_CLIENTS=1 but {} not installed (apt-get install -y \
                 rclone s3cmd awscli; python3 -m pip install boto3 pytest hypothesis requests)",
                missing.join(", ")
            );
        }
    }
}

/// `has_podman`: Podman, and Debian's static busybox the test images are built from
/// (scripts/container-test-images).
fn detect_podman() {
    println!("cargo::rerun-if-env-changed=CLOISTER_REQUIRE_PODMAN");
    println!("cargo::rustc-check-cfg=cfg(has_podman)");
    let missing: Vec<&str> = [
        (on_path("podman"), "podman"),
        (Path::new("/bin/busybox").is_file(), "busybox-static"),
    ]
    .into_iter()
    .filter(|(found, _)| !found)
    .map(|(_, package)| package)
    .collect();
    if missing.is_empty() {
        println!("cargo::rustc-cfg=has_podman");
    } else if std::env::var("CLOISTER_REQUIRE_PODMAN").as_deref() == Ok("1") {
        println!(
            "cargo::error=CLOISTER_REQUIRE_PODMAN=1 but {} not installed (apt-get install -y podman runc busybox-static)",
            missing.join(", ")
        );
    }
}
