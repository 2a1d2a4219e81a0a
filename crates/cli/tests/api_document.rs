//! The OpenAPI document the real server serves, against the routes that server answers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::Value;

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Every documented path answers exactly its documented methods, and every documented
/// operation is routed: without credentials an operation that needs them answers 401 (so a
/// route matched, its authentication ran), an open one answers 200.
#[tokio::test]
async fn every_documented_operation_is_routed_on_the_live_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let http = server.http();
    let doc: Value = http
        .get(server.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let probe = reqwest::Method::from_bytes(b"PROBE").unwrap();

    // The probe on a path no route serves is a 404, not a 405: a 405 below means a route.
    let missing = http
        .request(probe.clone(), server.url("/system/no-such-route"))
        .basic_auth(USER, Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 15, "{paths:?}");
    for (path, item) in paths {
        let concrete: String = path
            .split('/')
            .map(|s| if s.starts_with('{') { "probe" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        let documented: BTreeSet<String> = item
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| METHODS.contains(&k.as_str()))
            .map(|k| k.to_uppercase())
            .collect();
        assert!(!documented.is_empty(), "{path}");

        // A method no route takes: axum answers 405 and lists the methods the route takes
        // (past the authentication, which runs first on `/system/*`).
        let resp = http
            .request(probe.clone(), server.url(&concrete))
            .basic_auth(USER, Some(PASSWORD))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 405, "{path}");
        let allow = resp.headers()["allow"].to_str().unwrap().to_owned();
        let mut served: BTreeSet<String> = allow.split(',').map(|m| m.trim().to_owned()).collect();
        if served.contains("GET") {
            served.remove("HEAD");
        }
        assert_eq!(served, documented, "{path}: Allow: {allow}");

        for method in &documented {
            let operation = &item[method.to_lowercase()];
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let resp = http
                .request(method.clone(), server.url(&concrete))
                .send()
                .await
                .unwrap();
            let expected = if operation["security"].is_array() {
                401
            } else {
                200
            };
            assert_eq!(resp.status(), expected, "{method} {path}");
            assert!(
                operation["responses"][expected.to_string()].is_object(),
                "{method} {path} does not document its {expected}"
            );
        }
    }
}
