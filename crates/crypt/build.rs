//! Detects the reference `age` binary for the interoperability tests: with it they run, without
//! it they are ignored (reported as skipped, never counted as passed), and with
//! CLOISTER_REQUIRE_AGE=1 a missing `age` fails the build instead.

use std::path::Path;

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| is_executable(&dir.join(tool))))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn main() {
    println!("cargo::rustc-check-cfg=cfg(has_age)");
    println!("cargo::rerun-if-env-changed=PATH");
    println!("cargo::rerun-if-env-changed=CLOISTER_REQUIRE_AGE");
    println!("cargo::rerun-if-changed=build.rs");
    let found = on_path("age") && on_path("age-keygen");
    let required = std::env::var("CLOISTER_REQUIRE_AGE").is_ok_and(|v| !v.is_empty() && v != "0");
    if required && !found {
        println!(
            "cargo::error=CLOISTER_REQUIRE_AGE is set but `age` and `age-keygen` are not both on PATH \
             (apt-get install age)"
        );
    }
    if found {
        println!("cargo::rustc-cfg=has_age");
    }
}
