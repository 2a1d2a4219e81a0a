//! Sealed job logs: a confidential job's output, encrypted to the data owner, stored beside the
//! job by the platform, served by `GET /system/logs/{svc}/{job}/sealed` and decrypted on the
//! owner's side by `cloister job logs --decrypt`. The runtime that seals them is not part of
//! this test: the logs are stored the way the workers store them (`State::finish`, with the
//! server stopped), then served by the real server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use cloister_crypt::{EncryptOptions, Identity, ObjectBinding};
use cloister_platform::state::{JobRecord, JobSource, JobStatus, NewJob, State};
use cloister_runtime::LogLine;
use cloister_runtime::tee::{render_log, sealed_log_binding};
use common::*;
use serde_json::{Value, json};
use time::OffsetDateTime;

const LINES: [&str; 3] = [
    "reading 3 records",
    "patient 17: risk 0.93 — ünïcödé survives",
    "  indented, with a trailing space ",
];

fn seal(plain: &[u8], owner: &Identity, service: &str, job: &str) -> Vec<u8> {
    let (bucket, key) = sealed_log_binding(service, job);
    cloister_crypt::encrypt_to_vec(
        plain,
        &[owner.public()],
        &ObjectBinding::new(bucket, key),
        &EncryptOptions::default(),
    )
    .unwrap()
}

/// Records a finished job of `service` with `sealed` as its sealed log, as a worker does.
fn store_finished_job(
    state: &State,
    service: &str,
    sealed: Option<&[u8]>,
    finished: OffsetDateTime,
) -> String {
    let svc = state.service(service).unwrap().unwrap();
    let mut record: JobRecord = state
        .create_jobs(vec![NewJob {
            record: cloister_platform::dispatch::new_job(&svc, JobSource::Payload, "{}".into()),
            payload: Some(b"{}".to_vec()),
        }])
        .unwrap()
        .remove(0);
    record.status = JobStatus::Succeeded;
    record.start_time = Some(finished);
    record.finish_time = Some(finished);
    record.exit_code = Some(0);
    let status = format!(
        "{} cloister: confidential job; the script's output is sealed for the data owner\n",
        finished
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    );
    assert!(state.finish(&record, status.as_bytes(), sealed).unwrap());
    record.name
}

fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn refused(out: &std::process::Output, code: i32, reason: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    assert!(stderr.contains(reason), "{stderr}");
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[tokio::test(flavor = "multi_thread")]
async fn sealed_logs_are_served_decrypted_by_the_owner_and_deleted_with_their_job() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start(&data, &[]);
    let service = json!({"name": "conf", "image": "none", "script": "true"});
    assert_eq!(server.post_json("/system/services", &service).await.status(), 201);
    server.stop();

    let owner = Identity::generate();
    let owner_file = dir.path().join("owner.key");
    owner.save(&owner_file).unwrap();
    let stranger_file = dir.path().join("stranger.key");
    Identity::generate().save(&stranger_file).unwrap();

    let now = OffsetDateTime::now_utc();
    let log_lines: Vec<LogLine> = LINES
        .iter()
        .map(|text| LogLine {
            time: now,
            text: (*text).to_owned(),
        })
        .collect();
    let plain = render_log(&log_lines);
    let (sealed_job, moved_job, tampered_job, plain_job, sealed);
    {
        let state = State::open(&data.join("state.redb")).unwrap();
        // A job's sealed log is bound to the job, so it is made once the job is named.
        sealed_job = store_finished_job(&state, "conf", None, now);
        sealed = seal(&plain, &owner, "conf", &sealed_job);
        let record = state.job("conf", &sealed_job).unwrap().unwrap();
        assert!(state.finish(&record, b"status\n", Some(&sealed)).unwrap());
        // Another job's sealed log, moved here by the platform.
        moved_job = store_finished_job(&state, "conf", Some(&sealed), now);
        // A byte of the ciphertext changed.
        tampered_job = store_finished_job(&state, "conf", None, now);
        let mut tampered = seal(&plain, &owner, "conf", &tampered_job);
        let at = tampered.len() - 20;
        tampered[at] ^= 0x01;
        let record = state.job("conf", &tampered_job).unwrap().unwrap();
        assert!(state.finish(&record, b"status\n", Some(&tampered)).unwrap());
        // A plain job has none.
        plain_job = store_finished_job(&state, "conf", None, now);
    }
    server.restart();

    // The owner reads the lines, without and with their times, and as JSON.
    let printed = stdout(&server.cli(&[
        "job",
        "logs",
        "conf",
        &sealed_job,
        "--decrypt",
        owner_file.to_str().unwrap(),
    ]));
    assert_eq!(printed, format!("{}\n", LINES.join("\n")));
    let stamped = stdout(&server.cli(&[
        "job",
        "logs",
        "conf",
        &sealed_job,
        "--timestamps",
        "--decrypt",
        owner_file.to_str().unwrap(),
    ]));
    assert_eq!(stamped.as_bytes(), plain.as_slice());
    let listed: Value = serde_json::from_str(&stdout(&server.cli(&[
        "job",
        "logs",
        "conf",
        &sealed_job,
        "--decrypt",
        owner_file.to_str().unwrap(),
        "--json",
    ])))
    .unwrap();
    assert_eq!(listed, json!(LINES));
    // Without --decrypt, the plain (status) log as before.
    assert_eq!(
        stdout(&server.cli(&["job", "logs", "conf", &sealed_job])),
        "status\n"
    );

    // The API serves the ciphertext as stored, to the administrator only.
    let response = server
        .get(&format!("/system/logs/conf/{sealed_job}/sealed"))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/octet-stream");
    assert_eq!(response.bytes().await.unwrap().as_ref(), sealed.as_slice());
    let anonymous = server
        .http()
        .get(server.url(&format!("/system/logs/conf/{sealed_job}/sealed")))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    // Refusals: another identity, a log moved from another job, a changed byte: exit 6, and
    // not one line printed.
    let decrypt = |job: &str, identity: &Path| {
        server.cli(&[
            "job",
            "logs",
            "conf",
            job,
            "--decrypt",
            identity.to_str().unwrap(),
        ])
    };
    refused(
        &decrypt(&sealed_job, &stranger_file),
        6,
        "does not open with this identity",
    );
    refused(
        &decrypt(&moved_job, &owner_file),
        6,
        "does not open with this identity",
    );
    refused(&decrypt(&tampered_job, &owner_file), 6, "failed authentication");
    refused(&decrypt(&plain_job, &owner_file), 3, "this job has no sealed log");
    refused(&decrypt("conf-nope", &owner_file), 3, "job not found");
    refused(
        &decrypt(&sealed_job, &dir.path().join("missing.key")),
        6,
        "missing.key",
    );

    // Deleting the job deletes its sealed log.
    stdout(&server.cli(&["job", "rm", "conf", &sealed_job]));
    let gone = server
        .get(&format!("/system/logs/conf/{sealed_job}/sealed"))
        .await;
    assert_eq!(gone.status(), 404);
    assert_eq!(gone.text().await.unwrap(), "job not found\n");

    // Log retention expires the others, sealed logs included.
    server.stop();
    let mut server = Server::start(&data, &["--log-retention", "1ms"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !server.get_json("/system/logs/conf").await["jobs"]
        .as_object()
        .unwrap()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the jobs did not expire");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop();
    let state = State::open(&data.join("state.redb")).unwrap();
    for job in [&sealed_job, &moved_job, &tampered_job, &plain_job] {
        assert_eq!(state.sealed_log("conf", job).unwrap(), None, "{job}");
        assert!(state.job("conf", job).unwrap().is_none(), "{job}");
    }
}
