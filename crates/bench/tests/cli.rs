//! `cloister-bench` as a user runs it: the canary scan's verdicts and exit codes, a short crypt
//! benchmark, and the refusal to start without the `cloister` binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output};

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cloister-bench"))
        .args(args)
        .output()
        .expect("run cloister-bench")
}

#[test]
fn canary_scan_of_directories_exits_10_when_found_and_0_when_not() {
    let canary = "CANARY-5e2b9d41";
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("deep/er")).unwrap();
    std::fs::write(data.join("deep/er/clean.txt"), "nothing here").unwrap();
    let data_arg = data.to_str().unwrap();
    let clean = bench(&["canary-scan", "--canary", canary, "--dir", data_arg, "--json"]);
    assert_eq!(clean.status.code(), Some(0), "{clean:?}");
    let report: serde_json::Value = serde_json::from_slice(&clean.stdout).unwrap();
    assert_eq!(report["scanned"], 1, "{report}");
    assert_eq!(report["findings"], serde_json::json!([]), "{report}");

    // Hex-encoded and buried in a file bigger than the scan's block.
    let mut leaked = vec![b'.'; 3 << 20];
    leaked.extend_from_slice(hex_encode(canary).as_bytes());
    std::fs::write(data.join("deep/er/leak.bin"), leaked).unwrap();
    let found = bench(&["canary-scan", "--canary", canary, "--dir", data_arg, "--json"]);
    assert_eq!(found.status.code(), Some(10), "{found:?}");
    let report: serde_json::Value = serde_json::from_slice(&found.stdout).unwrap();
    assert_eq!(report["findings"][0]["form"], "hex", "{report}");
    assert!(
        report["findings"][0]["path"]
            .as_str()
            .unwrap()
            .ends_with("leak.bin"),
        "{report}"
    );

    let short = bench(&["canary-scan", "--canary", "short", "--dir", data_arg]);
    assert_eq!(short.status.code(), Some(1), "{short:?}");
}

fn hex_encode(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn crypt_benchmark_reports_every_rate() {
    let out = bench(&["crypt", "--size-mib", "1", "--iterations", "1", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["size"], 1 << 20);
    for rate in [
        "raw_seal_gbps",
        "encrypt_gbps",
        "open_in_place_gbps",
        "file_decrypt_gbps",
    ] {
        assert!(report[rate].as_f64().unwrap() > 0.0, "{rate}: {report}");
    }
    let refused = bench(&["crypt", "--size-mib", "1", "--chunk-kib", "0"]);
    assert_eq!(refused.status.code(), Some(6), "{refused:?}");
}

#[test]
fn server_benchmarks_need_the_cloister_binary() {
    for command in ["jobs", "confidential"] {
        let out = bench(&[command, "--cloister-bin", "/nonexistent/cloister"]);
        assert_eq!(out.status.code(), Some(1), "{command}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("no cloister binary at /nonexistent/cloister"),
            "{command}: {stderr}"
        );
    }
}
