//! The server under resource exhaustion, as a real process: connections beyond its cap are
//! refused clearly, idle and slow-header connections are closed, running out of file
//! descriptors neither spins nor floods the log, and a full disk leaves it serving reads,
//! refusing writes with `507 InsufficientStorage` and taking them again once space returns.
//!
//! The disk tests mount a small tmpfs (root only); where mounting is not permitted they are
//! skipped, unless `CLOISTER_REQUIRE_TMPFS` is set (CI), which makes that a failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn lines_with(log: &Path, needle: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

async fn expect_507(what: &str, result: Result<impl std::fmt::Debug, object_store::Error>) {
    let e = result.expect_err(&format!("{what} succeeded on a full disk"));
    let text = e.to_string();
    assert!(
        text.contains("507") || text.contains("InsufficientStorage"),
        "{what}: {text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_serves_reads_refuses_writes_with_507_and_recovers_when_space_returns() {
    let base = tempfile::tempdir().unwrap();
    let Some(disk) = Tmpfs::mount(&base.path().join("disk"), "size=64m") else {
        return;
    };
    let dir = disk.path.join("data");
    let log = base.path().join("server.log");
    let mut server = Server::start_logged(&dir, &[], &log);
    let service = json!({"name": "full", "image": "none", "script": "cat \"$INPUT_FILE_PATH\"",
        "input": [{"storage_provider": "minio.default", "path": "full/in"}]});
    assert_eq!(server.post_json("/system/services", &service).await.status(), 201);
    let store = server.s3_client("full");
    let large: Vec<u8> = (0..300 * 1024u32).map(|i| (i % 251) as u8).collect();
    store
        .put(&ObjectPath::from("data/large"), PutPayload::from(large.clone()))
        .await
        .unwrap();
    store
        .put(&ObjectPath::from("in/before"), PutPayload::from_static(b"before"))
        .await
        .unwrap();
    server.wait_jobs("full", 1).await;

    // A start on a full disk: nothing at start needs to write.
    server.stop();
    let filler = disk.fill();
    let full_since = std::time::Instant::now();
    server.restart();
    let store = server.s3_client("full");

    // Reads work.
    let got = store
        .get(&ObjectPath::from("data/large"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.as_ref(), large.as_slice());
    assert_eq!(server.get("/system/services/full").await.status(), 200);
    assert_eq!(
        server.get_json("/system/logs/full").await["jobs"]
            .as_object()
            .unwrap()
            .len(),
        1
    );

    // Writes are refused with 507 and a message, and leave nothing behind.
    expect_507(
        "a small PUT",
        store
            .put(&ObjectPath::from("data/small"), PutPayload::from_static(b"small"))
            .await,
    )
    .await;
    expect_507(
        "a large PUT",
        store
            .put(&ObjectPath::from("data/large2"), PutPayload::from(large.clone()))
            .await,
    )
    .await;
    expect_507(
        "an upload to an input path",
        store
            .put(&ObjectPath::from("in/refused"), PutPayload::from_static(b"x"))
            .await,
    )
    .await;
    expect_507(
        "a copy",
        store
            .copy(&ObjectPath::from("data/large"), &ObjectPath::from("data/copy"))
            .await,
    )
    .await;
    expect_507(
        "a multipart upload",
        async {
            let mut upload = store.put_multipart(&ObjectPath::from("data/multi")).await?;
            upload.put_part(PutPayload::from(vec![1u8; 5 << 20])).await?;
            upload.complete().await
        }
        .await,
    )
    .await;
    let token = server.token("full").await;
    let job = server
        .http()
        .post(server.url("/job/full"))
        .bearer_auth(&token)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(job.status(), 507);
    assert!(job.text().await.unwrap().contains("disk is full"));
    for key in [
        "data/small",
        "data/large2",
        "in/refused",
        "data/copy",
        "data/multi",
    ] {
        assert!(
            matches!(
                store.head(&ObjectPath::from(key)).await,
                Err(object_store::Error::NotFound { .. })
            ),
            "{key} is visible after a refused write"
        );
    }
    // A delete on a full disk needs a metadata commit; whether it fits or not, the store goes on.
    let _ = store.delete(&ObjectPath::from("in/before")).await;
    let got = store
        .get(&ObjectPath::from("data/large"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.as_ref(), large.as_slice());
    assert_eq!(
        server.get_json("/system/logs/full").await["jobs"]
            .as_object()
            .unwrap()
            .len(),
        1
    );

    // Space returns: writes work again, without a restart.
    std::fs::remove_file(&filler).unwrap();
    store
        .put(&ObjectPath::from("data/small"), PutPayload::from_static(b"small"))
        .await
        .unwrap();
    store
        .put(&ObjectPath::from("in/after"), PutPayload::from_static(b"after"))
        .await
        .unwrap();
    store
        .copy(&ObjectPath::from("data/large"), &ObjectPath::from("data/copy"))
        .await
        .unwrap();
    let mut upload = store
        .put_multipart(&ObjectPath::from("data/multi"))
        .await
        .unwrap();
    upload
        .put_part(PutPayload::from(vec![1u8; 5 << 20]))
        .await
        .unwrap();
    upload.complete().await.unwrap();
    let job = server
        .http()
        .post(server.url("/job/full"))
        .bearer_auth(&token)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(job.status(), 201);
    // Jobs: the first upload's, the one after, and POST /job's; none of a refused upload.
    let jobs = server.wait_jobs("full", 3).await;
    assert_eq!(jobs.len(), 3, "{jobs:?}");
    // One line per 10 s interval for the refusals, not one per request (the S3 client retries
    // each 507 with back-off, so the full-disk phase lasts tens of seconds on a slow machine).
    let intervals = usize::try_from(full_since.elapsed().as_secs() / 10).unwrap() + 1;
    let refusals = lines_with(&log, "writes are refused");
    assert!(
        (1..=intervals).contains(&refusals),
        "{refusals} log lines about the full disk in {intervals} interval(s)"
    );
    server.stop();
    drop(disk);
}

/// Raises this process's soft limit on open files (the test opens hundreds of sockets).
fn raise_own_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a struct we own.
    #[allow(unsafe_code)]
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit);
        }
    }
}

fn addr(endpoint: &str) -> String {
    endpoint.trim_start_matches("http://").to_owned()
}

/// Sends one request on a new connection and reads the whole answer (the server closes it).
async fn one_request(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    let _ = stream.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "a connection over the cap hung");
    String::from_utf8_lossy(&answer).into_owned()
}

/// Whether the server closed `stream` (EOF or reset) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_beyond_the_cap_get_a_clear_refusal_and_idle_ones_are_closed() {
    raise_own_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    // 256 descriptors: each listener's derived cap is 48 (the rest stays for files and jobs).
    let mut server = Server::start_limited(
        &dir.path().join("data"),
        &["--idle-timeout", "3s", "--header-read-timeout", "1s"],
        &log,
        256,
    );
    const CAP: usize = 48;
    let endpoints = [
        (addr(&server.api), "/health", "limit of open connections"),
        (addr(&server.s3), "/", "<Code>SlowDown</Code>"),
    ];
    for (addr, path, refusal) in &endpoints {
        let mut idle = Vec::new();
        for _ in 0..CAP {
            idle.push(TcpStream::connect(addr.as_str()).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let opened = Instant::now();
        let answer = one_request(addr, path).await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{addr}: {answer}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
        assert!(answer.contains(refusal), "{answer}");
        // A flood beyond the refusal slots is answered or closed, never left hanging.
        let flood: Vec<_> = (0..40)
            .map(|_| {
                let (addr, path) = (addr.clone(), path.to_string());
                tokio::spawn(async move { one_request(&addr, &path).await })
            })
            .collect();
        for answer in flood {
            let answer = answer.await.unwrap();
            assert!(
                answer.is_empty() || answer.starts_with("HTTP/1.1 503"),
                "{answer}"
            );
        }
        // The idle connections are closed after the idle timeout, not before.
        let first = idle.first_mut().unwrap();
        assert!(
            !closed_within(first, Duration::from_millis(1500)).await,
            "closed too early"
        );
        for stream in &mut idle {
            let left = Duration::from_secs(6).saturating_sub(opened.elapsed());
            assert!(
                closed_within(stream, left).await,
                "{addr}: an idle connection was kept"
            );
        }
    }
    // A client that never finishes its request head is closed after the header-read timeout,
    // however it trickles.
    for (addr, _, _) in &endpoints {
        let mut slow = TcpStream::connect(addr.as_str()).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let started = Instant::now();
        let mut closed = false;
        while started.elapsed() < Duration::from_secs(5) {
            if slow.write_all(b"X-Slow: a\r\n").await.is_err()
                || closed_within(&mut slow, Duration::from_millis(200)).await
            {
                closed = true;
                break;
            }
        }
        assert!(closed, "{addr}: a slow request head was kept");
        assert!(
            started.elapsed() < Duration::from_millis(2900),
            "{:?}",
            started.elapsed()
        );
    }
    // Normal clients work again.
    assert_eq!(server.get("/health").await.status(), 200);
    let store = server.s3_client("after");
    assert!(store.head(&ObjectPath::from("k")).await.is_err());
    let refusals = lines_with(&log, "connection cap reached");
    assert!((1..=4).contains(&refusals), "{refusals} log lines about the cap");
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn running_out_of_descriptors_backs_off_logs_rarely_and_recovers() {
    raise_own_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    // A cap above what 128 descriptors allow: accepts fail with EMFILE.
    let mut server = Server::start_limited(
        &dir.path().join("data"),
        &["--max-connections", "1000", "--idle-timeout", "30s"],
        &log,
        128,
    );
    let s3 = addr(&server.s3);
    let started = Instant::now();
    let mut connecting = tokio::task::JoinSet::new();
    for _ in 0..250 {
        let s3 = s3.clone();
        connecting.spawn(async move {
            tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(s3.as_str())).await
        });
    }
    let mut held = Vec::new();
    while let Some(connected) = connecting.join_next().await {
        if let Ok(Ok(Ok(stream))) = connected {
            held.push(stream);
        }
    }
    assert!(held.len() > 150, "only {} connections", held.len());
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(started.elapsed())).await;
    let failures = lines_with(&log, "cannot accept a connection");
    assert!(
        (1..=2).contains(&failures),
        "{failures} log lines about failed accepts:\n{}",
        std::fs::read_to_string(&log).unwrap()
    );
    let size = std::fs::metadata(&log).unwrap().len();
    assert!(size < 64 * 1024, "the log grew to {size} bytes");
    drop(held);
    // The server recovers: once descriptors are free again, clients are served.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let store = server.s3_client("after");
        let listed = tokio::time::timeout(Duration::from_secs(5), store.head(&ObjectPath::from("k"))).await;
        if matches!(listed, Ok(Err(object_store::Error::NotFound { .. }))) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the S3 endpoint did not recover: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(server.get("/health").await.status(), 200);
    server.stop();
}
