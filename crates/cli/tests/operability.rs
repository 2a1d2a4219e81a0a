//! What an operator reads and what a new user meets (issue 13): the server's log lines (plain
//! text off a terminal, or JSON; the start line; each job's lifecycle; refusals with their
//! reason; client errors never at ERROR), and the errors of first steps: their messages and
//! exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use object_store::{ObjectStoreExt, PutPayload};
use serde_json::{Value, json};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Waits until `log` holds a line with every one of `needles`, and returns that line.
fn wait_for_line(log: &Path, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {needles:?} in:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_log_tells_an_operator_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let data = dir.path().join("data");
    let server = Server::start_logged(&data, &["--concurrency", "3", "--job-timeout", "7m"], &log);

    // The start line names where the data is, where it listens, how jobs run.
    let start = wait_for_line(&log, &["cloister is serving"]);
    let api = server.api.trim_start_matches("http://");
    let s3 = server.s3.trim_start_matches("http://");
    let data_dir = data.canonicalize().unwrap();
    for field in [
        format!("data_dir={}", data_dir.display()),
        format!("api_addr={api}"),
        format!("s3_addr={s3}"),
        "executor=".to_owned(),
        "concurrency=3".to_owned(),
        "job_timeout=420s".to_owned(),
    ] {
        assert!(start.contains(&field), "{field} missing from: {start}");
    }

    // One job's life: created (service, object, job), started, finished (status, exit code,
    // duration).
    let service = json!({"name": "echo", "image": "none", "script": "cat \"$INPUT_FILE_PATH\"; exit 3",
        "input": [{"storage_provider": "minio.default", "path": "echo/in"}]});
    assert_eq!(server.post_json("/system/services", &service).await.status(), 201);
    server
        .s3_client("echo")
        .put(&"in/a.txt".into(), PutPayload::from_static(b"hello\n"))
        .await
        .unwrap();
    let jobs = server.wait_jobs("echo", 1).await;
    let job = jobs.keys().next().unwrap().clone();
    wait_for_line(
        &log,
        &[
            "job created",
            "service=echo",
            "object=echo/in/a.txt",
            &format!("job={job}"),
        ],
    );
    wait_for_line(&log, &["job started", "service=echo", &format!("job={job}")]);
    let finished = wait_for_line(&log, &["job finished", &format!("job={job}")]);
    for field in ["service=echo", "status=Failed", "exit_code=3", "duration="] {
        assert!(finished.contains(field), "{field} missing from: {finished}");
    }

    // Refusals are logged, with their reason, at INFO.
    let refused = reqwest::Client::new()
        .get(server.url("/system/services"))
        .basic_auth(USER, Some("not-the-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let line = wait_for_line(&log, &["request refused", "path=/system/services"]);
    assert!(line.contains("INFO") && line.contains("status=401"), "{line}");
    assert!(line.contains("missing or wrong credentials"), "{line}");
    assert!(
        !line.contains("not-the-password"),
        "a password in the log: {line}"
    );
    let token = server.token("echo").await;
    let refused = reqwest::Client::new()
        .post(server.url("/job/echo"))
        .bearer_auth(format!("{token}x"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let line = wait_for_line(&log, &["request refused", "path=/job/echo"]);
    assert!(line.contains("missing or wrong service token"), "{line}");
    assert!(!line.contains(&token), "a token in the log: {line}");

    // S3: a wrong secret is a refusal at INFO with its S3 code; a missing bucket or key is the
    // client's business (never ERROR, never a dumped response).
    let wrong = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(&server.s3)
        .with_access_key_id(ACCESS_KEY)
        .with_secret_access_key("wrong-secret-key-0123456789abcdef")
        .with_region("us-east-1")
        .with_bucket_name("echo")
        .with_allow_http(true)
        .build()
        .unwrap();
    assert!(wrong.get(&"in/a.txt".into()).await.is_err());
    let line = wait_for_line(&log, &["S3 request refused", "reason=SignatureDoesNotMatch"]);
    assert!(line.contains("INFO") && line.contains("status=403"), "{line}");
    assert_eq!(server.cli(&["ls", "nosuch"]).status.code(), Some(3));
    assert_eq!(
        server.cli(&["get", "echo/in/nothing", "-"]).status.code(),
        Some(3)
    );

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains('\x1b'), "colour codes in a log file:\n{text}");
    assert!(
        !text.contains("ERROR"),
        "client errors logged as server errors:\n{text}"
    );
    assert!(!text.contains("Response {"), "a dumped response:\n{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let server = Server::start_logged(&dir.path().join("data"), &["--log-format", "json"], &log);
    wait_for_line(&log, &["cloister is serving"]);
    assert_eq!(
        reqwest::Client::new()
            .get(server.url("/system/services"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    wait_for_line(&log, &["request refused"]);
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let start = lines
        .iter()
        .find(|l| l["fields"]["message"] == "cloister is serving")
        .unwrap();
    assert_eq!(start["level"], "INFO");
    assert_eq!(
        start["fields"]["api_addr"],
        server.api.trim_start_matches("http://")
    );
    let refusal = lines
        .iter()
        .find(|l| l["fields"]["message"] == "request refused")
        .unwrap();
    assert_eq!(refusal["fields"]["status"], 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn first_steps_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);

    // `ls` and `get` of something missing agree: exit 3, one plain sentence, no XML.
    for args in [
        &["ls", "nosuch"][..],
        &["ls", "nosuch/deeper"],
        &["get", "nosuch/key", "-"],
    ] {
        let out = server.cli(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {err}");
        assert!(err.contains("no such object or bucket"), "{args:?}: {err}");
        assert!(!err.contains('<'), "{args:?}: {err}");
    }

    // `run` on a confidential service is a refusal (4xx, exit 6), said once.
    let pin = format!("sha256:{}", "ab".repeat(32));
    let confidential = json!({"name": "secret", "image": "none", "script": "cat \"$INPUT_FILE_PATH\"",
        "input": [{"storage_provider": "minio.default", "path": "secret/in"}],
        "confidential": {"tee": "sim", "cas": "https://127.0.0.1:1", "cas_pin": pin, "session": "ns/secret"}});
    let created = server.post_json("/system/services", &confidential).await;
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    let input = dir.path().join("input.txt");
    std::fs::write(&input, "hello").unwrap();
    let out = server.cli(&["run", "secret", "--input", input.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(err.contains("400") && err.contains("confidential"), "{err}");
    assert!(err.contains("cloister put --encrypt"), "{err}");
    assert_eq!(
        err.matches("confidential:").count(),
        1,
        "said more than once: {err}"
    );

    // A misspelled nested field warns like a misspelled top-level one.
    let fdl = dir.path().join("typo.yaml");
    std::fs::write(
        &fdl,
        "functions:\n  oscar:\n  - c:\n      name: typo\n      script: script.sh\n      \
         input:\n      - storage_provder: minio.default\n        path: typo/in\n      colour: blue\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("script.sh"), "cat \"$INPUT_FILE_PATH\"\n").unwrap();
    let out = server.cli(&["apply", fdl.to_str().unwrap()]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("warning:") && err.contains("`colour`"), "{err}");
    assert!(
        err.contains("warning:") && err.contains("`input[0].storage_provder`"),
        "{err}"
    );
}

#[test]
fn a_second_server_on_the_same_data_dir_names_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let first = Server::start(dir.path(), &[]);
    let out = Command::new(bin())
        .args([
            "server",
            "--executor",
            "host",
            "--listen",
            "127.0.0.1:0",
            "--s3-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    let pid = first.pid().unwrap();
    assert!(
        err.contains(&format!("another cloister server (pid {pid}) is running")),
        "{err}"
    );
    assert!(!err.contains("Database already open"), "{err}");

    // The offline store check says the same of a running server.
    let out = Command::new(bin())
        .args(["store", "check", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains(&format!("(pid {pid}) is running")), "{err}");
}

fn spawn_server(data: &Path, password: Option<&str>) -> Child {
    let _ = std::fs::remove_file(data.join("client.json"));
    let mut command = Command::new(bin());
    command
        .args([
            "server",
            "--executor",
            "host",
            "--listen",
            "127.0.0.1:0",
            "--s3-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(password) = password {
        command.args(["--admin-password", password]);
    }
    let mut child = command.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !data.join("client.json").exists() {
        assert!(Instant::now() < deadline, "server did not start");
        assert!(child.try_wait().unwrap().is_none(), "server exited early");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn stop(mut child: Child) {
    // SAFETY: plain kill(2) on our own child process.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM)
    };
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_admin_password_is_kept_for_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    stop(spawn_server(&data, None));
    stop(spawn_server(&data, Some("the-new-password-0123")));
    let saved: Value =
        serde_json::from_slice(&std::fs::read(data.join("credentials.json")).unwrap()).unwrap();
    assert_eq!(saved["admin_password"], "the-new-password-0123");

    // Started again without the flag, the server takes the new password.
    let server = spawn_server(&data, None);
    let client: Value = serde_json::from_slice(&std::fs::read(data.join("client.json")).unwrap()).unwrap();
    let status = reqwest::Client::new()
        .get(format!(
            "{}/system/services",
            client["endpoint"].as_str().unwrap()
        ))
        .basic_auth("admin", Some("the-new-password-0123"))
        .send()
        .await
        .unwrap()
        .status();
    stop(server);
    assert_eq!(status, 200);
}

#[test]
fn cas_help_lists_cas_options_only() {
    let help = |args: &[&str]| {
        let out = Command::new(bin()).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for args in [
        &["cas", "session", "--help"][..],
        &["cas", "session", "create", "--help"],
        &["server", "--help"],
    ] {
        let text = help(args);
        for platform_flag in ["--endpoint", "--user ", "--password", "--config"] {
            assert!(
                !text.contains(platform_flag),
                "{args:?} lists {platform_flag}:\n{text}"
            );
        }
    }
    let create = help(&["cas", "session", "create", "--help"]);
    for cas_flag in ["--cas", "--pin", "--key"] {
        assert!(create.contains(cas_flag), "{create}");
    }
    // The platform's commands still list them.
    assert!(help(&["ls", "--help"]).contains("--endpoint"));
}

#[test]
fn a_share_given_twice_is_noticed() {
    let dir = tempfile::tempdir().unwrap();
    let cas_dir = dir.path().join("cas");
    let init = Command::new(bin())
        .args([
            "cas",
            "init",
            "--shares",
            "3",
            "--threshold",
            "2",
            "--json",
            "--data-dir",
        ])
        .arg(&cas_dir)
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", stderr(&init));
    let init: Value = serde_json::from_slice(&init.stdout).unwrap();
    let share = init["shares"][0].as_str().unwrap().to_owned();
    let mut cas = Command::new(bin())
        .args(["cas", "serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&cas_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cas_dir.join("cas.sock").exists() {
        assert!(Instant::now() < deadline, "CAS did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let unseal = || {
        Command::new(bin())
            .args(["cas", "unseal", &share, "--data-dir"])
            .arg(&cas_dir)
            .output()
            .unwrap()
    };
    let first = unseal();
    let second = unseal();
    let _ = cas.kill();
    let _ = cas.wait();
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(!stderr(&first).contains("already given"), "{}", stderr(&first));
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(
        stderr(&second).contains("this share was already given; still 1 of 2 shares"),
        "{}",
        stderr(&second)
    );
}
