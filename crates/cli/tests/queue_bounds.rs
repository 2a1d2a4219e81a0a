//! Floods of `POST /job` and `POST /run` are refused with 429 beyond the server's bounds,
//! leave nothing behind, and the bounds free up as work drains. Jobs are held by a gate file
//! the test creates, so every count here is exact (no timing assumptions).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use object_store::ObjectStoreExt;
use serde_json::{Value, json};

/// A service whose jobs wait for `gate` to exist, after touching a file in `marks`; uploads
/// under `<name>/in` start jobs too.
fn gated_service(name: &str, gate: &Path, marks: &Path) -> Value {
    let script = format!(
        "touch '{}/started-'\"$JOB_UUID\"\nwhile [ ! -e '{}' ]; do sleep 0.02; done\necho released",
        marks.display(),
        gate.display()
    );
    json!({"name": name, "image": "none", "script": script,
        "input": [{"storage_provider": "minio.default", "path": format!("{name}/in")}]})
}

async fn post_job(
    server: &Server,
    service: &str,
    token: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    server
        .http()
        .post(server.url(&format!("/job/{service}")))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn jobs_of(server: &Server, service: &str) -> serde_json::Map<String, Value> {
    server.get_json(&format!("/system/logs/{service}")).await["jobs"]
        .as_object()
        .cloned()
        .unwrap_or_default()
}

/// Waits until `marks` holds `count` files: that many jobs have started.
async fn wait_started(marks: &Path, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let started = std::fs::read_dir(marks).unwrap().count();
        if started >= count {
            assert_eq!(started, count, "more jobs started than expected");
            return;
        }
        assert!(Instant::now() < deadline, "{started}/{count} jobs started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn assert_too_many(response: reqwest::Response, reason: &str) {
    assert_eq!(response.status(), 429);
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(retry_after.is_some_and(|s| s > 0), "{:?}", response.headers());
    let text = response.text().await.unwrap();
    assert!(text.contains(reason), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn job_floods_beyond_a_services_waiting_jobs_are_refused_until_they_drain() {
    let dir = tempfile::tempdir().unwrap();
    let (gate, marks) = (dir.path().join("gate"), dir.path().join("marks"));
    std::fs::create_dir(&marks).unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--concurrency", "1", "--max-queued-jobs", "2"]);
    for name in ["slow", "other"] {
        let created = server
            .post_json("/system/services", &gated_service(name, &gate, &marks))
            .await;
        assert_eq!(created.status(), 201);
    }
    let token = server.token("slow").await;

    // One job runs (it no longer waits), two wait: the bound.
    assert_eq!(post_job(&server, "slow", &token, "aGk=").await.status(), 201);
    wait_started(&marks, 1).await;
    for _ in 0..2 {
        assert_eq!(post_job(&server, "slow", &token, "aGk=").await.status(), 201);
    }
    for _ in 0..5 {
        assert_too_many(
            post_job(&server, "slow", &token, "aGk=").await,
            "2 jobs waiting to start (at most 2)",
        )
        .await;
    }
    // Refusals leave no job record behind.
    assert_eq!(jobs_of(&server, "slow").await.len(), 3);
    // The bound is per service.
    let other = server.token("other").await;
    assert_eq!(post_job(&server, "other", &other, "aGk=").await.status(), 201);
    // Uploads are never refused, also when the service is at its bound: an acknowledged upload
    // always has its job. It waits too, so /job stays refused.
    server
        .s3_client("slow")
        .put(
            &object_store::path::Path::from("in/upload.txt"),
            object_store::PutPayload::from_static(b"uploaded"),
        )
        .await
        .unwrap();
    assert_eq!(jobs_of(&server, "slow").await.len(), 4);
    assert_too_many(post_job(&server, "slow", &token, "aGk=").await, "3 jobs waiting").await;

    // Once the jobs drain, /job is accepted again.
    std::fs::write(&gate, b"").unwrap();
    server.wait_jobs("slow", 4).await;
    server.wait_jobs("other", 1).await;
    for _ in 0..2 {
        assert_eq!(post_job(&server, "slow", &token, "aGk=").await.status(), 201);
    }
    let jobs = server.wait_jobs("slow", 6).await;
    assert_eq!(jobs.len(), 6);
    assert!(jobs.values().all(|j| j["status"] == "Succeeded"), "{jobs:?}");
}

/// POSTs `body` with chunked encoding, so the server learns its size only by reading it (no
/// Content-Length to refuse on early); returns the status code.
async fn post_chunked(server: &Server, path: &str, token: &str, body: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = server.api.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.chunks(16 * 1024) {
        stream
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .unwrap();
        stream.write_all(chunk).await.unwrap();
        stream.write_all(b"\r\n").await.unwrap();
    }
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn job_data_is_bounded_across_services() {
    let dir = tempfile::tempdir().unwrap();
    let (gate, marks) = (dir.path().join("gate"), dir.path().join("marks"));
    std::fs::create_dir(&marks).unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--concurrency", "1", "--max-queued-payload-mib", "1"]);
    for name in ["holder", "other"] {
        let created = server
            .post_json("/system/services", &gated_service(name, &gate, &marks))
            .await;
        assert_eq!(created.status(), 201);
    }
    let (holder, other) = (server.token("holder").await, server.token("other").await);
    // A JSON body is both the job's payload and its event: 100 kB holds 200 kB of the 1 MiB.
    let body = |size: usize| format!("\"{}\"", "x".repeat(size - 2));

    // A job that alone is larger than the whole bound can never fit: 413, not 429.
    let alone = post_job(&server, "holder", &holder, body(600_000)).await;
    assert_eq!(alone.status(), 413);
    assert!(jobs_of(&server, "holder").await.is_empty());

    // One small job runs and holds the only slot; five large ones wait, holding 1 000 000 bytes.
    assert_eq!(post_job(&server, "holder", &holder, "{}").await.status(), 201);
    wait_started(&marks, 1).await;
    for _ in 0..5 {
        assert_eq!(
            post_job(&server, "holder", &holder, body(100_000)).await.status(),
            201
        );
    }
    // Another service's job would exceed the bound: refused on its declared length, and also
    // when its length is known only once read.
    for _ in 0..3 {
        assert_too_many(
            post_job(&server, "other", &other, body(100_000)).await,
            "queue of job data is full",
        )
        .await;
        assert_eq!(
            post_chunked(&server, "/job/other", &other, body(100_000).as_bytes()).await,
            429
        );
    }
    assert!(jobs_of(&server, "other").await.is_empty());
    // Small ones still fit.
    assert_eq!(post_job(&server, "other", &other, "{}").await.status(), 201);
    assert_eq!(post_chunked(&server, "/job/other", &other, b"{}").await, 201);

    std::fs::write(&gate, b"").unwrap();
    server.wait_jobs("holder", 6).await;
    server.wait_jobs("other", 2).await;
    assert_eq!(
        post_job(&server, "other", &other, body(100_000)).await.status(),
        201
    );
    let jobs = server.wait_jobs("other", 3).await;
    assert!(jobs.values().all(|j| j["status"] == "Succeeded"), "{jobs:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn run_floods_beyond_the_admitted_invocations_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (gate, marks) = (dir.path().join("gate"), dir.path().join("marks"));
    std::fs::create_dir(&marks).unwrap();
    let data = dir.path().join("data");
    // One runs, one may wait for the slot: two admitted.
    let server = Server::start(&data, &["--concurrency", "1", "--max-sync-invocations", "2"]);
    let created = server
        .post_json("/system/services", &gated_service("sync", &gate, &marks))
        .await;
    assert_eq!(created.status(), 201);
    let token = server.token("sync").await;
    let invoke = || {
        let (http, url, token) = (server.http(), server.url("/run/sync"), token.clone());
        tokio::spawn(async move {
            http.post(url)
                .bearer_auth(token)
                .body("aGk=")
                .send()
                .await
                .unwrap()
        })
    };

    let first = invoke();
    wait_started(&marks, 1).await;
    // Of these, exactly one is admitted (to wait for the slot the first holds); the others are
    // refused at once, while the first is still running.
    let flood: Vec<_> = (0..5).map(|_| invoke()).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while flood.iter().filter(|h| h.is_finished()).count() < 4 {
        assert!(Instant::now() < deadline, "the refusals did not come");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!first.is_finished());
    let (mut refused, mut waiting) = (Vec::new(), Vec::new());
    for handle in flood {
        if handle.is_finished() {
            refused.push(handle.await.unwrap());
        } else {
            waiting.push(handle);
        }
    }
    assert_eq!(waiting.len(), 1);
    for response in refused {
        assert_too_many(response, "too many synchronous invocations").await;
    }

    // The admitted ones complete.
    std::fs::write(&gate, b"").unwrap();
    for handle in std::iter::once(first).chain(waiting) {
        let response = handle.await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "released\n");
    }
    assert_eq!(std::fs::read_dir(&marks).unwrap().count(), 2);
    // And their admissions are given back.
    let again = invoke().await.unwrap();
    assert_eq!(again.status(), 200);
}
