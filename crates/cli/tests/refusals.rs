//! Every refusal the API promises, against the real server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use serde_json::json;

fn service(name: &str) -> serde_json::Value {
    json!({"name": name, "image": "none", "script": "cat \"$INPUT_FILE_PATH\"",
        "input": [{"storage_provider": "minio.default", "path": format!("{name}/in")}]})
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let http = server.http();
    assert_eq!(
        server
            .post_json("/system/services", &service("guarded"))
            .await
            .status(),
        201
    );
    let token = server.token("guarded").await;

    // /system/*: no credentials, wrong password, wrong user, a Bearer token.
    assert_eq!(
        http.get(server.url("/system/services"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    for (user, password) in [(USER, "wrong"), ("root", PASSWORD), (USER, "")] {
        let status = http
            .get(server.url("/system/services"))
            .basic_auth(user, Some(password))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 401, "{user}:{password}");
    }
    let status = http
        .get(server.url("/system/services"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);
    // Health needs nothing.
    assert_eq!(
        http.get(server.url("/health")).send().await.unwrap().status(),
        200
    );

    // /run and /job: Basic is refused, a wrong or missing token too, the right one works.
    for path in ["/run/guarded", "/job/guarded"] {
        let basic = http
            .post(server.url(path))
            .basic_auth(USER, Some(PASSWORD))
            .body("aGk=")
            .send()
            .await
            .unwrap();
        assert_eq!(basic.status(), 401, "{path} with Basic");
        let none = http.post(server.url(path)).body("aGk=").send().await.unwrap();
        assert_eq!(none.status(), 401, "{path} without auth");
        let wrong = http
            .post(server.url(path))
            .bearer_auth("0".repeat(64))
            .body("aGk=")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path} with a wrong token");
    }
    let ok = http
        .post(server.url("/run/guarded"))
        .bearer_auth(&token)
        .body("aGk=")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "hi");
    // Another service's token does not open this one.
    assert_eq!(
        server
            .post_json("/system/services", &service("other"))
            .await
            .status(),
        201
    );
    let other = server.token("other").await;
    let cross = http
        .post(server.url("/run/guarded"))
        .bearer_auth(&other)
        .body("aGk=")
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 401);

    // The CLI maps a wrong password to exit code 4.
    let out = std::process::Command::new(bin())
        .args([
            "service",
            "ls",
            "--endpoint",
            &server.api,
            "--user",
            USER,
            "--password",
            "nope",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_bodies_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let cases = [
        (json!({"name": 5, "script": "true"}), "`name`"),
        (
            json!({"name": "ok", "script": "true", "memory": "lots"}),
            "`memory`",
        ),
        (json!({"name": "ok", "script": "true", "cpu": "-1"}), "`cpu`"),
        (json!({"name": "Bad_Name", "script": "true"}), "`name`"),
        (json!({"name": "../etc", "script": "true"}), "`name`"),
        (json!({"name": "ok", "script": ""}), "`script`"),
        (
            json!({"name": "ok", "script": "true", "input": [{"path": "../up"}]}),
            "`input[0].path`",
        ),
        (
            json!({"name": "ok", "script": "true", "input": [{"path": "b/in/../../x"}]}),
            "`input[0].path`",
        ),
        (
            json!({"name": "ok", "script": "true", "input": [{"path": "b/in", "storage_provider": "s3.aws"}]}),
            "`input[0].storage_provider`",
        ),
        (
            json!({"name": "ok", "script": "true", "input": "notalist"}),
            "`input`",
        ),
        (
            json!({"name": "ok", "script": "true", "environment": {"variables": {"BAD-NAME": "x"}}}),
            "`environment.BAD-NAME`",
        ),
    ];
    for (body, field) in cases {
        let response = server.post_json("/system/services", &body).await;
        assert_eq!(response.status(), 400, "{body}");
        let text = response.text().await.unwrap();
        assert!(text.contains(field), "{body}: {text}");
    }
    let raw = server
        .http()
        .post(server.url("/system/services"))
        .basic_auth(USER, Some(PASSWORD))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    // Nothing half-made: no service appeared.
    assert_eq!(
        server
            .get_json("/system/services")
            .await
            .as_array()
            .unwrap()
            .len(),
        0
    );

    // Malformed FDL through the CLI: exit code 6 and the field's path.
    let fdl = dir.path().join("bad.yaml");
    std::fs::write(
        &fdl,
        "functions:\n  oscar:\n  - c1:\n      name: x\n      memory: 12XB\n      script: s.sh\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("s.sh"), "true\n").unwrap();
    let out = server.cli(&["apply", fdl.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("functions.oscar[0].c1.memory"));
    std::fs::write(&fdl, "functions: [unclosed").unwrap();
    assert_eq!(
        server.cli(&["apply", fdl.to_str().unwrap()]).status.code(),
        Some(6)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn conflicts_missing_things_and_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-body-mib", "1"]);
    assert_eq!(
        server
            .post_json("/system/services", &service("dup"))
            .await
            .status(),
        201
    );
    assert_eq!(
        server
            .post_json("/system/services", &service("dup"))
            .await
            .status(),
        409
    );
    assert_eq!(server.get("/system/services/nope").await.status(), 404);
    assert_eq!(server.get("/system/logs/nope").await.status(), 404);
    assert_eq!(server.get("/system/logs/dup/nope-job").await.status(), 404);
    let missing = server
        .http()
        .delete(server.url("/system/services/nope"))
        .basic_auth(USER, Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let update = server
        .http()
        .put(server.url("/system/services"))
        .basic_auth(USER, Some(PASSWORD))
        .json(&service("nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(update.status(), 404);
    // The CLI's exit codes follow.
    assert_eq!(server.cli(&["service", "get", "nope"]).status.code(), Some(3));

    // Oversize bodies get 413 on every body-taking route.
    let token = server.token("dup").await;
    let big = "A".repeat(2 * 1024 * 1024);
    let run = server
        .http()
        .post(server.url("/run/dup"))
        .bearer_auth(&token)
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(run.status(), 413);
    let create = server
        .http()
        .post(server.url("/system/services"))
        .basic_auth(USER, Some(PASSWORD))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(create.status(), 413);
    // Not base64, not JSON.
    let junk = server
        .http()
        .post(server.url("/run/dup"))
        .bearer_auth(&token)
        .body("%%%not base64")
        .send()
        .await
        .unwrap();
    assert_eq!(junk.status(), 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_object_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    assert_eq!(
        server
            .post_json("/system/services", &service("keys"))
            .await
            .status(),
        201
    );
    let token = server.token("keys").await;
    // Keys S3 cannot carry are refused; keys that look like paths are only names (below).
    let overlong = format!("in%2F{}", "k".repeat(1100));
    for key in ["in%2Fnul%00byte", overlong.as_str()] {
        let event = json!({"Records": [{"s3": {"bucket": {"name": "keys"}, "object": {"key": key}}}]});
        let response = server
            .http()
            .post(server.url("/job/keys"))
            .bearer_auth(&token)
            .json(&event)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{key}");
    }
    // A key that leaves the input path only on a file system is outside the service's inputs
    // here too: `/etc/passwd` is not under `in/`.
    let event =
        json!({"Records": [{"s3": {"bucket": {"name": "keys"}, "object": {"key": "%2Fetc%2Fpasswd"}}}]});
    let response = server
        .http()
        .post(server.url("/job/keys"))
        .bearer_auth(&token)
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    // An event naming an object outside the service's inputs is refused: a token is not a key
    // to the whole store.
    let event = json!({"Records": [{"s3": {"bucket": {"name": "keys"}, "object": {"key": "secret%2Fx"}}}]});
    let response = server
        .http()
        .post(server.url("/job/keys"))
        .bearer_auth(&token)
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    // Presign and bucket routes validate too.
    for key in ["nul\u{0}", "tab\tkey"] {
        let response = server
            .post_json("/system/buckets/keys/presign", &json!({"object_key": key}))
            .await;
        assert_eq!(response.status(), 400, "{key:?}");
    }
    assert_eq!(
        server
            .post_json("/system/buckets", &json!({"bucket_name": "../etc"}))
            .await
            .status(),
        400
    );
    // Nothing ran.
    assert_eq!(
        server.get_json("/system/logs/keys").await["jobs"]
            .as_object()
            .unwrap()
            .len(),
        0
    );
    // No file escaped the data directory.
    assert!(!dir.path().join("etc").exists());
}

/// Client errors are the client's: a burst of them leaves no ERROR line in the server's log
/// (s3s logs each at ERROR; ours go to DEBUG), while the answers still carry a request id.
#[tokio::test(flavor = "multi_thread")]
async fn client_errors_are_not_logged_as_server_errors() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let server = Server::start_logged(dir.path(), &[], &log);
    let store = server.s3_client("nosuchbucket");
    for i in 0..50 {
        let missing = object_store::path::Path::from(format!("missing/{i}"));
        assert!(matches!(
            object_store::ObjectStoreExt::get(&store, &missing).await,
            Err(object_store::Error::NotFound { .. })
        ));
    }
    let answer = reqwest::get(format!("{}/nosuchbucket/x", server.s3))
        .await
        .unwrap();
    assert_eq!(answer.status(), 403);
    assert!(answer.headers().contains_key("x-amz-request-id"));
    let text = std::fs::read_to_string(&log).unwrap();
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "client errors logged as errors: {errors:?}");
}
