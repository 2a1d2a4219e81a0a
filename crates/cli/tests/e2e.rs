//! End to end: the real server binary on loopback ports, real S3 clients, real job processes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use base64::Engine;
use common::*;
use object_store::{ObjectStoreExt, PutPayload};
use serde_json::{Value, json};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

async fn read_object(server: &Server, bucket: &str, key: &str) -> Option<Vec<u8>> {
    let store = server.s3_client(bucket);
    match store.get(&object_store::path::Path::from(key)).await {
        Ok(r) => Some(r.bytes().await.unwrap().to_vec()),
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => panic!("get {bucket}/{key}: {e}"),
    }
}

async fn put_object(server: &Server, bucket: &str, key: &str, content: &'static [u8]) {
    server
        .s3_client(bucket)
        .put(
            &object_store::path::Path::from(key),
            PutPayload::from_static(content),
        )
        .await
        .unwrap();
}

fn assert_ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "cloister failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn upload_runs_a_job_and_everything_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let root = repo_root();
    let fdl = root.join("examples/uppercase/fdl.yaml");
    let applied = assert_ok(&server.cli(&["apply", fdl.to_str().unwrap()]));
    assert!(applied.contains("created service uppercase"), "{applied}");
    // Applying again updates, and keeps the token.
    let token_before = server.token("uppercase").await;
    let applied = assert_ok(&server.cli(&["apply", fdl.to_str().unwrap()]));
    assert!(applied.contains("updated service uppercase"), "{applied}");
    assert_eq!(server.token("uppercase").await, token_before);
    assert_eq!(token_before.len(), 64);
    assert!(token_before.bytes().all(|b| b.is_ascii_hexdigit()));

    // A real S3 client uploads; exactly one job runs and writes the output.
    put_object(&server, "uppercase", "in/note.txt", b"hello cloister\n").await;
    let jobs = server.wait_jobs("uppercase", 1).await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let (job_name, job) = jobs.iter().next().unwrap();
    assert_eq!(job["status"], "Succeeded", "{job}");
    for field in ["creation_time", "start_time", "finish_time"] {
        assert!(
            job[field].as_str().is_some_and(|t| t.len() >= 20),
            "{field} missing: {job}"
        );
    }
    assert_eq!(
        read_object(&server, "uppercase", "out/note.txt").await.as_deref(),
        Some(&b"HELLO CLOISTER\n"[..])
    );

    // The log is readable, with and without timestamps.
    let log = assert_ok(&server.cli(&["job", "logs", "uppercase", job_name]));
    assert!(log.contains("upper-casing note.txt"), "{log}");
    let stamped = server
        .get(&format!("/system/logs/uppercase/{job_name}?timestamps=true"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        stamped
            .lines()
            .any(|l| l.starts_with("20") && l.ends_with("upper-casing note.txt")),
        "{stamped}"
    );

    // Uploads outside the input path start nothing.
    put_object(&server, "uppercase", "elsewhere/x.txt", b"x").await;

    // /run round trip: base64 in, base64 of the single output file out.
    let response = server
        .http()
        .post(server.url("/run/uppercase"))
        .bearer_auth(&token_before)
        .header("content-type", "application/json")
        .body(B64.encode("sync input\n"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer = response.text().await.unwrap();
    assert_eq!(B64.decode(answer.trim()).unwrap(), b"SYNC INPUT\n");
    // The CLI does the same.
    let input = dir.path().join("cli-input.txt");
    std::fs::write(&input, "via cli\n").unwrap();
    let out = assert_ok(&server.cli(&["run", "uppercase", "--input", input.to_str().unwrap()]));
    assert_eq!(out, "VIA CLI\n");

    // `cloister env` points S3 clients at this server, with values a shell reads back intact;
    // `cloister info` shows the server's fields, the simulation platform key among them.
    let config = server.get_json("/system/config").await;
    let exports = assert_ok(&server.cli(&["env"]));
    let echoed = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{exports}\necho \"$AWS_ACCESS_KEY_ID $AWS_SECRET_ACCESS_KEY $AWS_ENDPOINT_URL\""
        ))
        .output()
        .unwrap();
    let provider = &config["minio_provider"];
    assert_eq!(
        String::from_utf8_lossy(&echoed.stdout).trim(),
        format!(
            "{} {} {}",
            provider["access_key"].as_str().unwrap(),
            provider["secret_key"].as_str().unwrap(),
            provider["endpoint"].as_str().unwrap()
        )
    );
    let info = assert_ok(&server.cli(&["info"]));
    let key = server.get_json("/system/info").await["simulation_platform_key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        info.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["simulation_platform_key", &key]),
        "{info}"
    );

    // The CLI moves files through S3 and lists them.
    let local = dir.path().join("cli-put.txt");
    std::fs::write(&local, "put by the cli\n").unwrap();
    assert_ok(&server.cli(&["put", local.to_str().unwrap(), "uppercase/in/"]));
    let jobs = server.wait_jobs("uppercase", 2).await;
    assert_eq!(
        jobs.len(),
        2,
        "the elsewhere/ upload must not start a job: {jobs:?}"
    );
    let fetched = dir.path().join("fetched.txt");
    assert_ok(&server.cli(&["get", "uppercase/out/cli-put.txt", fetched.to_str().unwrap()]));
    assert_eq!(std::fs::read_to_string(&fetched).unwrap(), "PUT BY THE CLI\n");
    let listing: Value =
        serde_json::from_str(&assert_ok(&server.cli(&["ls", "uppercase/out", "--json"]))).unwrap();
    let keys: Vec<&str> = listing
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["key"].as_str())
        .collect();
    assert_eq!(keys, ["out/cli-put.txt", "out/note.txt"]);

    // Everything is still there after a restart.
    server.restart();
    let services = server.get_json("/system/services").await;
    assert_eq!(services.as_array().unwrap().len(), 1);
    assert_eq!(server.token("uppercase").await, token_before);
    let jobs = server.get_json("/system/logs/uppercase?page=").await;
    assert_eq!(jobs["jobs"].as_object().unwrap().len(), 2);
    assert_eq!(jobs["jobs"][job_name]["status"], "Succeeded");
    let log = assert_ok(&server.cli(&["job", "logs", "uppercase", job_name]));
    assert!(log.contains("upper-casing note.txt"));
    assert_eq!(
        read_object(&server, "uppercase", "out/note.txt").await.as_deref(),
        Some(&b"HELLO CLOISTER\n"[..])
    );

    // Deleting succeeded jobs empties the list; the service then goes too.
    assert_ok(&server.cli(&["job", "rm", "uppercase"]));
    assert_eq!(
        server.get_json("/system/logs/uppercase").await["jobs"]
            .as_object()
            .unwrap()
            .len(),
        0
    );
    assert_ok(&server.cli(&["service", "rm", "uppercase"]));
    assert_eq!(server.get("/system/services/uppercase").await.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_script_marks_the_job_failed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let service = json!({"name": "broken", "image": "none",
        "script": "echo about to fail; exit 7",
        "input": [{"storage_provider": "minio.default", "path": "broken/in"}],
        "output": [{"storage_provider": "minio.default", "path": "broken/out"}]});
    assert_eq!(server.post_json("/system/services", &service).await.status(), 201);
    put_object(&server, "broken", "in/x", b"x").await;
    let jobs = server.wait_jobs("broken", 1).await;
    let (name, job) = jobs.iter().next().unwrap();
    assert_eq!(job["status"], "Failed");
    assert_eq!(job["exit_code"], 7);
    let log = server
        .get(&format!("/system/logs/broken/{name}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        log.contains("about to fail") && log.contains("script exited with code 7"),
        "{log}"
    );
    // `job wait` and `job logs` without a job name take the latest job; a failed one exits 8.
    let waited = server.cli(&["job", "wait", "broken"]);
    assert_eq!(waited.status.code(), Some(8), "{waited:?}");
    assert!(String::from_utf8_lossy(&waited.stdout).contains(&format!("{name} Failed")));
    let latest = server.cli(&["job", "logs", "broken"]);
    assert_ok(&latest);
    assert!(String::from_utf8_lossy(&latest.stdout).contains("about to fail"));
    let none = server.cli(&["job", "wait", "nosuch", "--timeout", "1s"]);
    assert_eq!(none.status.code(), Some(3), "{none:?}");
    // A failing synchronous invocation answers 500 and the CLI exits with 8.
    let out = server.cli(&["run", "broken"]);
    assert_eq!(
        out.status.code(),
        Some(8),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Failed jobs are kept by a plain delete and go with --all.
    assert_ok(&server.cli(&["job", "rm", "broken"]));
    assert_eq!(
        server.get_json("/system/logs/broken").await["jobs"]
            .as_object()
            .unwrap()
            .len(),
        1
    );
    assert_ok(&server.cli(&["job", "rm", "broken", "--all"]));
    assert_eq!(
        server.get_json("/system/logs/broken").await["jobs"]
            .as_object()
            .unwrap()
            .len(),
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn queued_jobs_run_after_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let mut server = Server::start(dir.path(), &["--concurrency", "1"]);
    let script = format!(
        "while [ ! -e {} ]; do sleep 0.05; done\ncp \"$INPUT_FILE_PATH\" \"$TMP_OUTPUT_DIR/\"",
        gate.display()
    );
    let service = json!({"name": "gated", "image": "none", "script": script,
        "input": [{"storage_provider": "minio.default", "path": "gated/in"}],
        "output": [{"storage_provider": "minio.default", "path": "gated/out"}]});
    assert_eq!(server.post_json("/system/services", &service).await.status(), 201);
    put_object(&server, "gated", "in/first", b"1").await;
    put_object(&server, "gated", "in/second", b"2").await;
    // With one slot, the first job runs (waiting at the gate) and the second waits in the queue.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let jobs = server.get_json("/system/logs/gated").await["jobs"]
            .as_object()
            .cloned()
            .unwrap();
        let statuses: Vec<&str> = jobs.values().filter_map(|j| j["status"].as_str()).collect();
        if statuses == ["Running", "Pending"] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expected one job running and one pending: {jobs:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    server.restart_after_crash();
    std::fs::write(&gate, "").unwrap();
    let jobs = server.wait_jobs("gated", 2).await;
    assert_eq!(
        jobs.len(),
        2,
        "acknowledged uploads must yield exactly one job each: {jobs:?}"
    );
    assert!(jobs.values().all(|j| j["status"] == "Succeeded"), "{jobs:?}");
    assert_eq!(
        read_object(&server, "gated", "out/first").await.as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(
        read_object(&server, "gated", "out/second").await.as_deref(),
        Some(&b"2"[..])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pipeline_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let root = repo_root();
    assert_ok(&server.cli(&["apply", root.join("examples/pipeline/fdl.yaml").to_str().unwrap()]));
    assert_ok(&server.cli(&[
        "apply",
        root.join("examples/wordcount/fdl.yaml").to_str().unwrap(),
    ]));
    put_object(&server, "pipeline", "in/data.txt", b"some data to compress\n").await;
    server.wait_jobs("compress", 1).await;
    let jobs = server.wait_jobs("checksum", 1).await;
    assert!(jobs.values().all(|j| j["status"] == "Succeeded"), "{jobs:?}");
    let gz = read_object(&server, "pipeline", "stage/data.txt.gz")
        .await
        .unwrap();
    let digest = read_object(&server, "pipeline", "out/data.txt.gz.sha256")
        .await
        .unwrap();
    let expected = std::process::Command::new("sh")
        .arg("-c")
        .arg("sha256sum | cut -d' ' -f1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(&gz)?;
            child.wait_with_output()
        })
        .unwrap()
        .stdout;
    assert_eq!(digest, expected);

    // The suffix filter: a .csv upload starts nothing, a .txt one does.
    put_object(&server, "wordcount", "in/skip.csv", b"a,b\n").await;
    put_object(&server, "wordcount", "in/words.txt", b"the cat and the hat\n").await;
    let jobs = server.wait_jobs("wordcount", 1).await;
    // Jobs are recorded before an upload is acknowledged, so the listing is already complete.
    assert_eq!(
        server.get_json("/system/logs/wordcount").await["jobs"]
            .as_object()
            .unwrap()
            .len(),
        1,
        "{jobs:?}"
    );
    let counts = read_object(&server, "wordcount", "out/words/counts.txt")
        .await
        .unwrap();
    assert_eq!(String::from_utf8(counts).unwrap(), "lines 1\nwords 5\nbytes 20\n");
    let top = String::from_utf8(
        read_object(&server, "wordcount", "out/words/top-words.txt")
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(top.lines().next().unwrap().trim().starts_with("2 the"), "{top}");
}

#[tokio::test(flavor = "multi_thread")]
async fn job_endpoint_takes_events_and_payloads() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let service = json!({"name": "echo", "image": "none",
        "script": "echo \"key=$STORAGE_OBJECT_KEY\"; cat \"$INPUT_FILE_PATH\"; echo; echo \"$EVENT\" | head -c 200",
        "input": [{"storage_provider": "minio.default", "path": "echo/in"}]});
    assert_eq!(server.post_json("/system/services", &service).await.status(), 201);
    let token = server.token("echo").await;
    put_object(&server, "echo", "in/with space.txt", b"object content").await;
    server.wait_jobs("echo", 1).await;

    // A MinIO event naming an object under the input path runs on that object.
    let event = json!({"EventName": "s3:ObjectCreated:Put", "Key": "echo/in/with space.txt",
        "Records": [{"s3": {"bucket": {"name": "echo"}, "object": {"key": "in%2Fwith+space.txt"}}}]});
    let response = server
        .http()
        .post(server.url("/job/echo"))
        .bearer_auth(&token)
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    // Plain base64 payloads become the input file.
    let response = server
        .http()
        .post(server.url("/job/echo"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(B64.encode("payload content"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let jobs = server.wait_jobs("echo", 3).await;
    let mut logs = Vec::new();
    for name in jobs.keys() {
        logs.push(
            server
                .get(&format!("/system/logs/echo/{name}"))
                .await
                .text()
                .await
                .unwrap(),
        );
    }
    assert_eq!(
        logs.iter()
            .filter(|l| l.contains("key=in/with space.txt\nobject content"))
            .count(),
        2,
        "{logs:?}"
    );
    assert!(logs.iter().any(|l| l.contains("payload content")), "{logs:?}");
    // The upload's event has MinIO's shape.
    assert!(
        logs.iter().any(|l| l.contains("\"eventSource\":\"minio:s3\"")),
        "{logs:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn work_dir_option_moves_job_scratch_out_of_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let work = scratch.path().join("work");
    let server = Server::start(dir.path(), &["--work-dir", work.to_str().unwrap()]);
    let service = json!({"name": "scratch", "image": "none",
        "script": "echo \"home=$HOME\"; cp \"$INPUT_FILE_PATH\" \"$TMP_OUTPUT_DIR/copy.txt\"",
        "input": [{"storage_provider": "minio.default", "path": "scratch/in"}],
        "output": [{"storage_provider": "minio.default", "path": "scratch/out"}]});
    assert_eq!(server.post_json("/system/services", &service).await.status(), 201);
    put_object(&server, "scratch", "in/a.txt", b"scratch content").await;
    let jobs = server.wait_jobs("scratch", 1).await;
    let (name, job) = jobs.iter().next().unwrap();
    assert_eq!(job["status"], "Succeeded", "{job}");
    let log = server
        .get(&format!("/system/logs/scratch/{name}"))
        .await
        .text()
        .await
        .unwrap();
    let expected = format!("home={}/slot-", work.canonicalize().unwrap().display());
    assert!(log.contains(&expected), "{log}");
    assert_eq!(
        read_object(&server, "scratch", "out/copy.txt").await.as_deref(),
        Some(&b"scratch content"[..])
    );
    // After the job its slot's directory is left with empty folders for the next one, and
    // nothing was made in the data directory.
    let left = common::files_under(&work);
    assert!(left.is_empty(), "{left:?}");
    assert!(!dir.path().join("work").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn log_retention_expires_finished_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--log-retention", "1s"]);
    let service = json!({"name": "quick", "image": "none", "script": "true",
        "input": [{"storage_provider": "minio.default", "path": "quick/in"}]});
    assert_eq!(server.post_json("/system/services", &service).await.status(), 201);
    put_object(&server, "quick", "in/a", b"a").await;
    server.wait_jobs("quick", 1).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let jobs = server.get_json("/system/logs/quick").await["jobs"]
            .as_object()
            .cloned()
            .unwrap();
        if jobs.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "job not expired: {jobs:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn buckets_api_and_presigned_urls() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let created = server
        .post_json("/system/buckets", &json!({"bucket_name": "shared-data"}))
        .await;
    assert_eq!(created.status(), 201);
    assert_eq!(
        server
            .post_json("/system/buckets", &json!({"bucket_name": "shared-data"}))
            .await
            .status(),
        409
    );
    let buckets = server.get_json("/system/buckets").await;
    assert!(
        buckets
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["bucket_name"] == "shared-data" && b["visibility"] == "private")
    );
    let updated = server
        .http()
        .put(server.url("/system/buckets"))
        .basic_auth(USER, Some(PASSWORD))
        .json(&json!({"bucket_name": "shared-data", "visibility": "public"}))
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), 204);
    let buckets = server.get_json("/system/buckets").await;
    assert!(
        buckets
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["bucket_name"] == "shared-data" && b["visibility"] == "public")
    );

    // A presigned upload URL works without credentials; so does the download URL.
    let presigned = server
        .post_json(
            "/system/buckets/shared-data/presign",
            &json!({"object_key": "docs/readme.txt", "operation": "upload"}),
        )
        .await;
    assert_eq!(presigned.status(), 200);
    let url = presigned.json::<Value>().await.unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let put = reqwest::Client::new()
        .put(&url)
        .body("presigned content")
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let presigned = server
        .post_json(
            "/system/buckets/shared-data/presign",
            &json!({"object_key": "docs/readme.txt", "operation": "download"}),
        )
        .await;
    let url = presigned.json::<Value>().await.unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        reqwest::get(&url).await.unwrap().text().await.unwrap(),
        "presigned content"
    );
    // Tampering with the signed URL is refused.
    let tampered = url.replace("docs/readme.txt", "docs/other.txt");
    assert_eq!(reqwest::get(&tampered).await.unwrap().status(), 403);

    let listing = server.get_json("/system/buckets/shared-data").await;
    assert_eq!(listing["objects"][0]["object_name"], "docs/readme.txt");
    assert_eq!(listing["objects"][0]["size_bytes"], 17);
    for i in 0..3 {
        put_object(&server, "shared-data", &format!("many/{i}"), b"x").await;
    }
    let page = server.get_json("/system/buckets/shared-data?limit=2").await;
    assert_eq!(page["returned_items"], 2);
    assert_eq!(page["is_truncated"], true);
    let next = page["next_page"].as_str().unwrap();
    let page2 = server
        .get_json(&format!("/system/buckets/shared-data?limit=2&page={next}"))
        .await;
    assert_eq!(page2["returned_items"], 2);
    assert_eq!(page2["is_truncated"], false);

    let deleted = server
        .http()
        .delete(server.url("/system/buckets/shared-data"))
        .basic_auth(USER, Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(server.get("/system/buckets/shared-data").await.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn sgx_services_do_not_run_without_sgx() {
    if std::path::Path::new("/dev/sgx_enclave").exists() {
        eprintln!("this host has SGX; the refusal cannot be observed here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let service = json!({"name": "enclave", "image": "registry/scone-app", "script": "echo ran",
        "enable_sgx": true, "sgx_epc": "128Mi",
        "input": [{"storage_provider": "minio.default", "path": "enclave/in"}]});
    assert_eq!(server.post_json("/system/services", &service).await.status(), 201);
    let shown = server.get_json("/system/services/enclave").await;
    assert_eq!(shown["enable_sgx"], true);
    assert_eq!(shown["sgx_epc"], "128Mi");
    put_object(&server, "enclave", "in/x", b"x").await;
    let jobs = server.wait_jobs("enclave", 1).await;
    let (name, job) = jobs.iter().next().unwrap();
    assert_eq!(job["status"], "Failed");
    assert!(job["reason"].as_str().unwrap().contains("no SGX device"), "{job}");
    let log = server
        .get(&format!("/system/logs/enclave/{name}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(!log.contains("ran"), "the script ran outside SGX: {log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn encrypted_objects_stay_ciphertext_in_storage() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    assert_eq!(
        server
            .post_json("/system/buckets", &json!({"bucket_name": "vault"}))
            .await
            .status(),
        201
    );
    let identity = dir.path().join("owner.key");
    let recipient = assert_ok(&server.cli(&["keygen", "--out", identity.to_str().unwrap()]))
        .trim()
        .to_owned();
    assert!(recipient.starts_with("cloister1x25519:"), "{recipient}");
    let canary = "CANARY-7f3a9c1e-patient-record";
    let plain = dir.path().join("record.txt");
    std::fs::write(&plain, format!("{canary}\n").repeat(5000)).unwrap();

    assert_ok(&server.cli(&[
        "put",
        plain.to_str().unwrap(),
        "vault/in/record.txt",
        "--encrypt",
        &recipient,
    ]));
    // What the storage holds is ciphertext: no canary in the object or anywhere in the data dir.
    let stored = read_object(&server, "vault", "in/record.txt").await.unwrap();
    assert!(!stored.windows(canary.len()).any(|w| w == canary.as_bytes()));
    for entry in files_under(&dir.path().join("objects")) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes.windows(canary.len()).any(|w| w == canary.as_bytes()),
            "{} holds plaintext",
            entry.display()
        );
    }
    let back = dir.path().join("back.txt");
    assert_ok(&server.cli(&[
        "get",
        "vault/in/record.txt",
        back.to_str().unwrap(),
        "--decrypt",
        identity.to_str().unwrap(),
    ]));
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&plain).unwrap());

    // The owner authenticates an upload as theirs; a reader can require it.
    let sender_key = dir.path().join("sender.key");
    let sender = assert_ok(&server.cli(&["keygen", "--out", sender_key.to_str().unwrap()]))
        .trim()
        .to_owned();
    assert_ok(&server.cli(&[
        "put",
        plain.to_str().unwrap(),
        "vault/in/sent.txt",
        "--encrypt",
        &recipient,
        "--sender",
        sender_key.to_str().unwrap(),
    ]));
    let sent_back = dir.path().join("sent-back.txt");
    let report: Value = serde_json::from_str(&assert_ok(&server.cli(&[
        "get",
        "vault/in/sent.txt",
        sent_back.to_str().unwrap(),
        "--decrypt",
        identity.to_str().unwrap(),
        "--expect-sender",
        &sender,
        "--json",
    ])))
    .unwrap();
    assert_eq!(report["sender"], sender.as_str(), "{report}");
    assert_eq!(std::fs::read(&sent_back).unwrap(), std::fs::read(&plain).unwrap());
    // The object uploaded without a sender is refused when one is required.
    let unsent = dir.path().join("unsent.txt");
    let out = server.cli(&[
        "get",
        "vault/in/record.txt",
        unsent.to_str().unwrap(),
        "--decrypt",
        identity.to_str().unwrap(),
        "--expect-sender",
        &sender,
    ]);
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!unsent.exists());
    // --sender only makes sense with --encrypt, --expect-sender with --decrypt.
    let out = server.cli(&[
        "put",
        plain.to_str().unwrap(),
        "vault/in/x.txt",
        "--sender",
        sender_key.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = server.cli(&["get", "vault/in/sent.txt", "--expect-sender", &sender]);
    assert_eq!(out.status.code(), Some(2));

    // A swapped object (the same ciphertext under another key) is detected, and no plaintext
    // file is left behind.
    server
        .s3_client("vault")
        .put(
            &object_store::path::Path::from("in/other.txt"),
            PutPayload::from(stored.clone()),
        )
        .await
        .unwrap();
    let swapped = dir.path().join("swapped.txt");
    let out = server.cli(&[
        "get",
        "vault/in/other.txt",
        swapped.to_str().unwrap(),
        "--decrypt",
        identity.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!swapped.exists());
    // A flipped byte is detected.
    let mut tampered = stored.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 1;
    server
        .s3_client("vault")
        .put(
            &object_store::path::Path::from("in/record.txt"),
            PutPayload::from(tampered),
        )
        .await
        .unwrap();
    let out = server.cli(&[
        "get",
        "vault/in/record.txt",
        back.to_str().unwrap(),
        "--decrypt",
        identity.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(6));

    // Export for stock age, when the age tool is installed (CI installs it and requires it).
    let age_available = std::process::Command::new("age")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if std::env::var_os("CLOISTER_REQUIRE_AGE").is_some() {
        assert!(
            age_available,
            "CLOISTER_REQUIRE_AGE is set but `age` is not installed"
        );
    }
    if age_available {
        let age_file = dir.path().join("record.age");
        let age_identity = dir.path().join("age.key");
        let keygen = std::process::Command::new("age-keygen")
            .arg("-o")
            .arg(&age_identity)
            .output()
            .unwrap();
        assert!(keygen.status.success());
        let age_recipient = String::from_utf8_lossy(&keygen.stderr)
            .trim()
            .trim_start_matches("Public key: ")
            .to_owned();
        assert_ok(&server.cli(&[
            "encrypt",
            plain.to_str().unwrap(),
            age_file.to_str().unwrap(),
            "--format",
            "age",
            "-r",
            &age_recipient,
        ]));
        let decrypted = std::process::Command::new("age")
            .arg("-d")
            .arg("-i")
            .arg(&age_identity)
            .arg(&age_file)
            .output()
            .unwrap();
        assert!(
            decrypted.status.success(),
            "{}",
            String::from_utf8_lossy(&decrypted.stderr)
        );
        assert_eq!(decrypted.stdout, std::fs::read(&plain).unwrap());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn canary_scan_finds_plain_data_and_not_encrypted_data() {
    let canary = "CANARY4F1D9E7B2C0A";
    // A plain service: the canary passes through storage and the scan must find it.
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = Server::start(plain_dir.path(), &[]);
    assert_ok(&plain.cli(&[
        "apply",
        repo_root().join("examples/uppercase/fdl.yaml").to_str().unwrap(),
    ]));
    put_object(
        &plain,
        "uppercase",
        "in/record.txt",
        b"patient CANARY4F1D9E7B2C0A heart rate 72\n",
    )
    .await;
    plain.wait_jobs("uppercase", 1).await;
    let data = plain_dir.path().to_str().unwrap().to_owned();
    let out = plain.bench(&[
        "canary-scan",
        "--canary",
        canary,
        "--dir",
        &data,
        "--api",
        "--processes",
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(10),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["where"] == "file"),
        "{report}"
    );

    // Encrypted on the owner's side: nothing on the platform side holds the canary.
    let sealed_dir = tempfile::tempdir().unwrap();
    let sealed = Server::start(sealed_dir.path(), &[]);
    assert_eq!(
        sealed
            .post_json("/system/buckets", &json!({"bucket_name": "vault"}))
            .await
            .status(),
        201
    );
    let owner = tempfile::tempdir().unwrap();
    let identity = owner.path().join("owner.key");
    let recipient = assert_ok(&sealed.cli(&["keygen", "--out", identity.to_str().unwrap()]))
        .trim()
        .to_owned();
    let input = owner.path().join("record.txt");
    std::fs::write(&input, format!("patient {canary} heart rate 72\n")).unwrap();
    assert_ok(&sealed.cli(&[
        "put",
        input.to_str().unwrap(),
        "vault/in/record.txt",
        "--encrypt",
        &recipient,
    ]));
    let data = sealed_dir.path().to_str().unwrap().to_owned();
    let out = sealed.bench(&[
        "canary-scan",
        "--canary",
        canary,
        "--dir",
        &data,
        "--api",
        "--processes",
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["scanned"].as_u64().unwrap() > 5, "{report}");
}

/// Bodies of `/run` and `/job` of 100 KiB, 1 MiB and exactly the body limit reach the script
/// whole, as the input file and as the event (`EVENT` names `EVENT_FILE` beyond 64 KiB): no
/// "Argument list too long" at start, no job that is accepted and then fails. One byte over
/// the limit is refused with 413.
#[tokio::test(flavor = "multi_thread")]
async fn large_invocation_bodies_reach_the_script_whole() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-body-mib", "8"]);
    let script = r#"set -e
wc -c < "$INPUT_FILE_PATH"
cksum < "$INPUT_FILE_PATH"
if [ "$EVENT" = "$EVENT_FILE" ]; then echo event=file; else echo event=inline; fi
wc -c < "$EVENT_FILE"
"#;
    let service = json!({"name": "big", "image": "none", "script": script});
    assert_eq!(server.post_json("/system/services", &service).await.status(), 201);
    let token = server.token("big").await;
    let limit = 8 << 20;
    // Base64 bodies: 4 characters per 3 bytes, so `size` characters decode to size*3/4 bytes.
    let sizes = [100 << 10, 1 << 20, limit];
    let mut expected_logs = Vec::new();
    for (i, size) in sizes.into_iter().enumerate() {
        let input: Vec<u8> = (0..size / 4 * 3).map(|n| (n * 7 + i) as u8).collect();
        let body = B64.encode(&input);
        assert_eq!(body.len(), size);
        let local = dir.path().join("input");
        std::fs::write(&local, &input).unwrap();
        let cksum = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("cksum < {}", local.display()))
            .output()
            .unwrap();
        let expected = format!(
            "{}\n{}event={}\n{size}\n",
            input.len(),
            String::from_utf8_lossy(&cksum.stdout),
            if size <= 64 << 10 { "inline" } else { "file" },
        );
        let response = server
            .http()
            .post(server.url("/run/big"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let answer = response.text().await.unwrap();
        assert_eq!(status, 200, "{size}: {answer}");
        assert_eq!(answer, expected, "{size}");

        let response = server
            .http()
            .post(server.url("/job/big"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{size}");
        expected_logs.push(expected);
    }
    let jobs = server.wait_jobs("big", sizes.len()).await;
    let mut logs = Vec::new();
    for (name, job) in &jobs {
        let log = server
            .get(&format!("/system/logs/big/{name}"))
            .await
            .text()
            .await
            .unwrap();
        assert_eq!(job["status"], "Succeeded", "{log}");
        logs.push(log);
    }
    for expected in &expected_logs {
        assert!(
            logs.iter()
                .any(|log| expected.lines().all(|line| log.contains(line))),
            "{expected:?} not in {logs:?}"
        );
    }

    // One byte over the body limit: refused, nothing run or recorded.
    for path in ["/run/big", "/job/big"] {
        let response = server
            .http()
            .post(server.url(path))
            .bearer_auth(&token)
            .body(vec![b'A'; limit + 1])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 413, "{path}");
    }
    assert_eq!(server.wait_jobs("big", sizes.len()).await.len(), sizes.len());
}

/// `/run` answers stdout whole or not at all: up to the answer's limit (the body limit) it is
/// answered in full; a script printing more fails the invocation with 500 and the reason.
#[tokio::test(flavor = "multi_thread")]
async fn run_stdout_over_the_limit_is_an_error_not_a_cut() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-body-mib", "16"]);
    let service = json!({"name": "loud", "image": "none",
        "script": "head -c \"$(cat \"$INPUT_FILE_PATH\")\" /dev/zero | tr '\\0' 'a'"});
    assert_eq!(server.post_json("/system/services", &service).await.status(), 201);
    let token = server.token("loud").await;
    let run = |bytes: usize| {
        let (server, token) = (&server, &token);
        async move {
            let response = server
                .http()
                .post(server.url("/run/loud"))
                .bearer_auth(token)
                .body(B64.encode(bytes.to_string()))
                .send()
                .await
                .unwrap();
            let status = response.status();
            (status, response.bytes().await.unwrap())
        }
    };
    let (status, answer) = run(16 << 20).await;
    assert_eq!(status, 200);
    assert_eq!(answer.len(), 16 << 20);
    assert!(answer.iter().all(|&b| b == b'a'));
    let (status, answer) = run(17 << 20).await;
    assert_eq!(status, 500);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.contains("stdout exceeds the limit of 16777216 bytes"),
        "{}",
        answer.get(..500).unwrap_or(&answer)
    );
}
