//! The README's walkthrough, run as written: every `sh` block from "## Walkthrough" to
//! "## Command line", in order, in one bash session in a fresh directory laid out like the
//! checkout (`target/release/` holding the built binaries, `examples/`, `scripts/`, the
//! attestation test data), so the README cannot drift from what the commands do.
//!
//! The server runs in "another terminal": the harness starts it before the first block (the
//! README's first command), and a README line that starts `target/release/cloister server`
//! (re)starts it in the background with that line's flags. A block after the comment
//! `<!-- readme-test: stop-server -->` runs with the server stopped, as its text asks. The only
//! rewriting is of the ports (127.0.0.1:8080, :9000, :8081, :8181 become free ones), so the test
//! runs beside anything else.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

use common::*;

/// One fenced `sh` block of the walkthrough and whether the README asks for the server stopped.
struct Block {
    text: String,
    server_stopped: bool,
}

fn walkthrough_blocks(readme: &str) -> Vec<Block> {
    let start = readme
        .find("\n## Walkthrough")
        .expect("the README has a Walkthrough section");
    let end = readme[start..]
        .find("\n## Command line")
        .map_or(readme.len(), |e| start + e);
    let mut blocks = Vec::new();
    let mut lines = readme[start..end].lines();
    let mut previous = "";
    while let Some(line) = lines.next() {
        if line.trim_end() == "```sh" {
            let text: Vec<&str> = lines.by_ref().take_while(|l| l.trim_end() != "```").collect();
            blocks.push(Block {
                text: text.join("\n"),
                server_stopped: previous.trim() == "<!-- readme-test: stop-server -->",
            });
        }
        if !line.trim().is_empty() {
            previous = line;
        }
    }
    blocks
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Bash functions the blocks run with: the server in the background, and the S3 clients
/// reported as skipped where they are not installed (CI installs and requires them).
const PRELUDE: &str = r#"set -euo pipefail
shopt -s expand_aliases
SERVER_PID=
SERVER_STARTS=0
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
stop_server() {
  if [ -n "$SERVER_PID" ]; then
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID" || true
    SERVER_PID=
  fi
}
start_server() {
  stop_server
  SERVER_STARTS=$((SERVER_STARTS + 1))
  local log="server-$SERVER_STARTS.log" want="REST API on"
  case " $* " in *" --with-cas "*) want="CAS on" ;; esac
  target/release/cloister server "$@" --listen 127.0.0.1:8080 --s3-listen 127.0.0.1:9000 \
    --cas-listen 127.0.0.1:8081 > "$log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 600); do
    grep -q "$want" "$log" && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$log" >&2; echo "the server exited" >&2; return 1; }
    sleep 0.1
  done
  cat "$log" >&2
  echo "the server did not start" >&2
  return 1
}
for tool in aws rclone s3cmd; do
  if ! command -v "$tool" > /dev/null; then
    [ -n "${CLOISTER_REQUIRE_S3_CLIENTS:-}" ] && { echo "$tool is required" >&2; exit 1; }
    eval "$tool() { echo \"SKIPPED: $tool is not installed\" >&2; }"
  fi
done
"#;

/// The walkthrough as one bash script: the server started first, server lines turned into
/// restarts, stop markers into stops, and the README's ports into free ones.
fn script(blocks: &[Block], ports: &[(&str, u16)]) -> String {
    let mut script = String::from(PRELUDE);
    script.push_str("start_server\n");
    for block in blocks {
        if block.server_stopped {
            script.push_str("stop_server\n");
        }
        for line in block.text.lines() {
            match line.trim_start().strip_prefix("target/release/cloister server") {
                Some(flags) if flags.is_empty() || flags.starts_with(' ') => {
                    script.push_str(&format!("start_server{flags}\n"));
                }
                _ => {
                    script.push_str(line);
                    script.push('\n');
                }
            }
        }
    }
    script.push_str("stop_server\n");
    for (readme_address, port) in ports {
        script = script.replace(readme_address, &format!("127.0.0.1:{port}"));
    }
    script
}

#[test]
fn the_readme_walkthrough_runs_as_written() {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let blocks = walkthrough_blocks(&readme);
    assert!(blocks.len() >= 6, "walkthrough blocks found: {}", blocks.len());

    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let release = work.join("target/release");
    std::fs::create_dir_all(&release).unwrap();
    std::os::unix::fs::symlink(bin(), release.join("cloister")).unwrap();
    std::os::unix::fs::symlink(runtime_bin(), release.join("cloister-runtime")).unwrap();
    std::os::unix::fs::symlink(bench_bin(), release.join("cloister-bench")).unwrap();
    copy_dir(&root.join("examples"), &work.join("examples"));
    std::os::unix::fs::symlink(root.join("scripts"), work.join("scripts")).unwrap();
    std::fs::create_dir_all(work.join("crates/attestation")).unwrap();
    std::os::unix::fs::symlink(
        root.join("crates/attestation/testdata"),
        work.join("crates/attestation/testdata"),
    )
    .unwrap();

    let ports = [
        ("127.0.0.1:8080", free_port()),
        ("127.0.0.1:9000", free_port()),
        ("127.0.0.1:8081", free_port()),
        ("127.0.0.1:8181", free_port()),
    ];
    let script = script(&blocks, &ports);
    std::fs::write(work.join("walkthrough.sh"), &script).unwrap();
    let output = Command::new("bash")
        .arg("-x")
        .arg("walkthrough.sh")
        .current_dir(work)
        // The walkthrough's environment is the reader's shell, not the test harness's.
        .env_remove("CLOISTER_CONFIG")
        .env_remove("CLOISTER_CAS")
        .env_remove("CLOISTER_CAS_PIN")
        .env_remove("CLOISTER_CAS_KEY")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        // The server's side of what went wrong (a job's failure reason is logged there).
        let mut servers = String::new();
        for start in 1.. {
            let Ok(log) = std::fs::read_to_string(work.join(format!("server-{start}.log"))) else {
                break;
            };
            servers.push_str(&format!("--- server-{start}.log\n{log}"));
        }
        panic!(
            "the walkthrough failed ({}):\n--- stdout\n{stdout}\n--- stderr (trace)\n{stderr}\n{servers}",
            output.status
        );
    }
    // What the README says the commands print.
    for expected in [
        "HELLO CLOISTER",
        "created my/session",
        "audit log intact",
        "PATIENT 7: GLUCOSE 5.4 MMOL/L",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing from the walkthrough's output:\n{stdout}\n--- trace\n{stderr}"
        );
    }
}
