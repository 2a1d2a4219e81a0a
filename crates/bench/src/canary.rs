//! `cloister-bench canary-scan`: looks for a unique marker (a canary planted in a job's input) on the
//! platform side — its data directory (state, objects, work dirs), what its API answers, and
//! the environment of every process on the host — in plain, hex and base64 forms. For a plain
//! service it must find the canary (which proves the scan works); for a confidential one it
//! must find nothing.

use std::io::Read;
use std::path::{Path, PathBuf};

use base64::Engine;
use reqwest::Method;
use serde_json::{Value, json};

use cloister_cli::client::{Client, ConnectArgs, exit, fail};

/// Exit code when the canary was found.
pub const FOUND: i32 = 10;

/// What to look for and where.
#[derive(clap::Args)]
pub struct CanaryArgs {
    /// The canary text to look for (at least 8 bytes, so that it is unique).
    #[arg(long)]
    canary: String,
    /// Data directories to scan (the server's, the CAS's); repeatable.
    #[arg(long = "dir")]
    dirs: Vec<PathBuf>,
    /// Also scan everything the REST API answers (services, logs, buckets, object listings).
    #[arg(long)]
    api: bool,
    /// Also scan the environment of every process on this host.
    #[arg(long)]
    processes: bool,
    /// The server to ask with --api, as for `cloister`.
    #[command(flatten)]
    connect: ConnectArgs,
}

/// The byte patterns the canary may appear as.
fn patterns(canary: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![
        ("plain".to_owned(), canary.to_vec()),
        ("hex".to_owned(), hex::encode(canary).into_bytes()),
        ("HEX".to_owned(), hex::encode_upper(canary).into_bytes()),
    ];
    // Base64 of the canary depends on its offset within the encoded data; for each of the three
    // alignments, the characters that do not touch a neighbour byte are fixed.
    for shift in 0..3usize {
        for (name, engine) in [
            ("base64", &base64::engine::general_purpose::STANDARD_NO_PAD),
            ("base64url", &base64::engine::general_purpose::URL_SAFE_NO_PAD),
        ] {
            let mut padded = vec![0u8; shift];
            padded.extend_from_slice(canary);
            let encoded = engine.encode(&padded);
            let start = (shift * 4).div_ceil(3) + 1;
            let end = (padded.len() * 4 / 3).saturating_sub(1);
            if end > start + 6 && end <= encoded.len() {
                out.push((format!("{name}+{shift}"), encoded.as_bytes()[start..end].to_vec()));
            }
        }
    }
    out
}

fn find(haystack: &[u8], patterns: &[(String, Vec<u8>)]) -> Option<String> {
    patterns
        .iter()
        .find(|(_, p)| !p.is_empty() && haystack.windows(p.len()).any(|w| w == p.as_slice()))
        .map(|(name, _)| name.clone())
}

/// Scans a file in overlapping blocks, so large objects do not have to fit in memory.
fn scan_file(path: &Path, patterns: &[(String, Vec<u8>)]) -> Option<String> {
    let mut file = std::fs::File::open(path).ok()?;
    let overlap = patterns.iter().map(|(_, p)| p.len()).max().unwrap_or(0);
    let mut buf = vec![0u8; 1 << 20];
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let n = file.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        carry.extend_from_slice(&buf[..n]);
        if let Some(found) = find(&carry, patterns) {
            return Some(found);
        }
        let keep = carry.len().saturating_sub(overlap);
        carry.drain(..keep);
    }
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_dir() {
            files_under(&entry.path(), out);
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
}

async fn api_answers(client: &Client) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut answers = Vec::new();
    let fetch = |path: String| async move {
        let body = client
            .system(Method::GET, &path, None)
            .await
            .ok()?
            .bytes()
            .await
            .ok()?;
        Some((path, body.to_vec()))
    };
    for path in [
        "/system/config",
        "/system/info",
        "/system/services",
        "/system/buckets",
    ] {
        answers.extend(fetch(path.to_owned()).await);
    }
    let services: Value = client.get_json("/system/services").await?;
    for service in services.as_array().into_iter().flatten() {
        let Some(name) = service["name"].as_str() else {
            continue;
        };
        answers.extend(fetch(format!("/system/services/{name}")).await);
        let jobs: Value = client
            .get_json(&format!("/system/logs/{name}?page=&limit=1000"))
            .await?;
        answers.push((format!("/system/logs/{name}"), jobs.to_string().into_bytes()));
        for job in jobs["jobs"].as_object().into_iter().flat_map(|m| m.keys()) {
            answers.extend(fetch(format!("/system/logs/{name}/{job}?timestamps=true")).await);
            // A confidential job's own output, as the platform serves it (ciphertext).
            answers.extend(fetch(format!("/system/logs/{name}/{job}/sealed")).await);
        }
    }
    let buckets: Value = client.get_json("/system/buckets").await?;
    for bucket in buckets.as_array().into_iter().flatten() {
        if let Some(name) = bucket["bucket_name"].as_str() {
            answers.extend(fetch(format!("/system/buckets/{name}?limit=1000")).await);
        }
    }
    Ok(answers)
}

pub async fn run(args: CanaryArgs, json_out: bool) -> anyhow::Result<()> {
    if args.canary.len() < 8 {
        return Err(fail(exit::FAILURE, "the canary must be at least 8 bytes long"));
    }
    let patterns = patterns(args.canary.as_bytes());
    let mut findings = Vec::new();
    let mut scanned = 0usize;
    for dir in &args.dirs {
        let mut files = Vec::new();
        files_under(dir, &mut files);
        for file in files {
            scanned += 1;
            if let Some(form) = scan_file(&file, &patterns) {
                findings.push(json!({"where": "file", "path": file, "form": form}));
            }
        }
    }
    if args.api {
        let client = Client::new(args.connect.resolve()?)?;
        for (path, body) in api_answers(&client).await? {
            scanned += 1;
            if let Some(form) = find(&body, &patterns) {
                findings.push(json!({"where": "api", "path": path, "form": form}));
            }
        }
    }
    if args.processes {
        let own = std::process::id().to_string();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let pid = entry.file_name().to_string_lossy().into_owned();
            // This scanner's own environment and arguments are not the platform's.
            if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == own {
                continue;
            }
            let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
                continue;
            };
            scanned += 1;
            if let Some(form) = find(&environ, &patterns) {
                findings.push(json!({"where": "process-environment", "pid": pid, "form": form}));
            }
        }
    }
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"scanned": scanned, "findings": findings}))?
        );
    } else {
        for finding in &findings {
            println!("FOUND {finding}");
        }
        println!("{} places scanned, {} with the canary", scanned, findings.len());
    }
    if findings.is_empty() {
        Ok(())
    } else {
        Err(fail(
            FOUND,
            format!("the canary was found in {} places", findings.len()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_encoding_at_every_alignment() {
        let canary = b"CANARY-0123456789";
        let patterns = patterns(canary);
        for shift in 0..3 {
            let mut data = vec![b'x'; shift];
            data.extend_from_slice(canary);
            data.extend_from_slice(b"tail");
            for encoded in [
                base64::engine::general_purpose::STANDARD.encode(&data),
                base64::engine::general_purpose::URL_SAFE.encode(&data),
                hex::encode(&data),
                hex::encode_upper(&data),
            ] {
                assert!(
                    find(format!("noise {encoded} noise").as_bytes(), &patterns).is_some(),
                    "{encoded}"
                );
            }
        }
        assert!(find(b"nothing to see", &patterns).is_none());
        assert!(
            find(b"CANARY-012345678", &patterns).is_none(),
            "a prefix is not the canary"
        );
    }
}
