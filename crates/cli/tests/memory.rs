//! The server's memory is bounded by its configuration, not by its history: redb keeps up to
//! `--db-cache-mib` of each database in memory (its own default, 1 GiB, let resident memory
//! grow with every job recorded). Jobs that each leave a 512 KiB log grow the state database by
//! ~125 MB here; resident memory must stay within a few MiB of where it was early on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use serde_json::json;

fn resident_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024
}

/// Submits `count` jobs through `POST /job`, waiting out 429s, eight at a time.
async fn submit(server: &Server, token: &str, count: usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (http, url, token, next) = (
            server.http(),
            server.url("/job/chatty"),
            token.to_owned(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < count {
                loop {
                    let answer = http
                        .post(&url)
                        .bearer_auth(&token)
                        .body("eA==")
                        .send()
                        .await
                        .unwrap();
                    if answer.status() == 201 {
                        break;
                    }
                    assert_eq!(answer.status(), 429, "{:?}", answer.text().await);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

const CACHE_MIB: &str = "2";

#[tokio::test(flavor = "multi_thread")]
async fn resident_memory_is_bounded_by_the_database_cache_not_by_the_job_history() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--db-cache-mib", CACHE_MIB, "--concurrency", "4"]);
    let service = json!({"name": "chatty", "image": "none",
        "script": "head -c 524288 /dev/zero | tr '\\0' 'x' | fold -w 1024",
        "input": [{"storage_provider": "minio.default", "path": "chatty/in"}]});
    assert_eq!(server.post_json("/system/services", &service).await.status(), 201);
    let token = server.token("chatty").await;

    submit(&server, &token, 50).await;
    server.wait_jobs("chatty", 50).await;
    let early = resident_mib(server.pid().unwrap());
    let early_db = std::fs::metadata(dir.path().join("state.redb")).unwrap().len() >> 20;
    submit(&server, &token, 250).await;
    server.wait_jobs("chatty", 300).await;
    let late = resident_mib(server.pid().unwrap());
    let late_db = std::fs::metadata(dir.path().join("state.redb")).unwrap().len() >> 20;
    assert!(
        late_db >= early_db + 80,
        "the state database grew from {early_db} to {late_db} MiB: too little to tell"
    );
    assert!(
        late <= early + 16,
        "resident memory grew from {early} to {late} MiB while the database grew from \
         {early_db} to {late_db} MiB (cache: {CACHE_MIB} MiB per database)"
    );
}
