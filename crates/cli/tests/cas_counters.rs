//! Counters through `cloister cas`: the counter anchor beside the data directory, `cas
//! counters`, and `cas serve` refusing a restored older store until `--accept-rollback`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cloister_attestation::SimPlatform;
use cloister_cas_client::client::CasClient;
use cloister_cas_client::protocol::{CounterIncrement, InitData};
use cloister_cas_client::sign::ClientIdentity;
use serde_json::Value;

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(common::bin()).args(args).output().unwrap()
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Serving {
    child: Child,
    url: String,
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(data: &Path, admin: &str, extra: &[&str]) -> Result<Serving, String> {
    let args = [
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--admin",
        admin,
    ];
    let (mut child, rx) = common::spawn_cas_serve(args.iter().chain(extra), Stdio::piped());
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(url) => Ok(Serving { child, url }),
        Err(_) => {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_refuses_a_restored_store_until_the_rollback_is_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("cas");
    let key = tmp.path().join("admin.key");
    let admin = ok(&cli(&["cas", "keygen", "--out", key.to_str().unwrap()]))
        .trim()
        .to_owned();
    let init: Value = serde_json::from_str(&ok(&cli(&[
        "cas",
        "init",
        "--data-dir",
        data.to_str().unwrap(),
        "--key-file",
        data.join("master.key").to_str().unwrap(),
        "--json",
    ])))
    .unwrap();
    let pin = init["identity_pin"].as_str().unwrap().to_owned();
    let anchor = tmp.path().join("cas.counter-anchor");
    assert!(anchor.is_file(), "the anchor lives beside the data directory");

    let cas = serve(&data, &admin, &[]).unwrap();
    let client = CasClient::new(&cas.url, &pin, Some(ClientIdentity::load(&key).unwrap())).unwrap();
    let platform = SimPlatform::from_seed([3; 32]);
    client
        .add_platform(&hex::encode(platform.public_key()), "test")
        .await
        .unwrap();
    let measurement = [6u8; 32];
    client
        .create_session(&format!(
            "name: cnt/app\nsecurity:\n  attestation:\n    tolerate: [simulation]\nservices:\n- name: worker\n  \
             command: [run]\n  attestation:\n  - tee: sim\n    measurement: {}\ncounters:\n- name: hits\n",
            hex::encode(measurement)
        ))
        .await
        .unwrap();
    let attest = |url: String| {
        let pin = pin.clone();
        async move {
            let init = InitData::new(&pin, "cnt/app", "worker").unwrap();
            let source = init
                .simulated(SimPlatform::from_seed([3; 32]), measurement)
                .unwrap();
            CasClient::new(&url, &pin, None)
                .unwrap()
                .attest(&init, &source, |_| {})
                .await
                .unwrap()
        }
    };
    let released = attest(cas.url.clone()).await;
    let increment = CounterIncrement {
        session: "cnt/app".into(),
        service: "worker".into(),
        counter: "hits".into(),
        grant: released.volume_grant.clone(),
    };
    assert_eq!(client.increment_counter(&increment).await.unwrap().value, 1);
    let counters = |url: &str| {
        ok(&cli(&[
            "cas",
            "counters",
            "cnt/app",
            "--cas",
            url,
            "--pin",
            &pin,
            "--key",
            key.to_str().unwrap(),
        ]))
    };
    assert_eq!(counters(&cas.url), "counter hits: 1\nruns of worker: 1\n");
    drop(cas);
    let copy = tmp.path().join("copy.redb");
    std::fs::copy(data.join("cas.redb"), &copy).unwrap();

    let cas = serve(&data, &admin, &[]).unwrap();
    let client = CasClient::new(&cas.url, &pin, None).unwrap();
    assert_eq!(client.increment_counter(&increment).await.unwrap().value, 2);
    assert_eq!(client.increment_counter(&increment).await.unwrap().value, 3);
    drop(cas);

    std::fs::copy(&copy, data.join("cas.redb")).unwrap();
    let refused = serve(&data, &admin, &[])
        .err()
        .expect("the restored store is refused");
    assert!(refused.contains("refusing to unseal"), "{refused}");
    assert!(refused.contains("--accept-rollback"), "{refused}");

    let cas = serve(&data, &admin, &["--accept-rollback"]).unwrap();
    assert_eq!(counters(&cas.url), "counter hits: 1\nruns of worker: 1\n");
    let admin_client = CasClient::new(&cas.url, &pin, Some(ClientIdentity::load(&key).unwrap())).unwrap();
    let audit: Vec<Value> = admin_client.audit(1).await.unwrap();
    assert!(
        audit.iter().any(|e| e["kind"] == "counter-rollback-accepted"),
        "the accepted rollback is in the log"
    );
    // The refused start exited before its log could take it: journaled, audited now.
    let refused_unseal = audit
        .iter()
        .find(|e| e["kind"] == "unseal-refused")
        .expect("the refused unseal is in the log");
    assert!(
        refused_unseal["detail"]["reason"]
            .as_str()
            .unwrap()
            .contains("older copy"),
        "{refused_unseal}"
    );
    drop(cas);
    // Accepted once, the store is ordered again: a plain start works.
    let _cas = serve(&data, &admin, &[]).unwrap();
}

/// `cloister-runtime` under the simulation TEE counts each run in the session's counters that
/// its session names in `CLOISTER_COUNTERS`, with the grant of its attestation (which never
/// leaves it), before the program starts: the program sees the new value, and a counter at
/// its max refuses the run before the program, audited by the CAS.
#[tokio::test(flavor = "multi_thread")]
async fn the_runtime_counts_its_runs_in_the_sessions_counters() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("cas");
    let key = tmp.path().join("admin.key");
    let admin = ok(&cli(&["cas", "keygen", "--out", key.to_str().unwrap()]))
        .trim()
        .to_owned();
    let init: Value = serde_json::from_str(&ok(&cli(&[
        "cas",
        "init",
        "--data-dir",
        data.to_str().unwrap(),
        "--key-file",
        data.join("master.key").to_str().unwrap(),
        "--json",
    ])))
    .unwrap();
    let pin = init["identity_pin"].as_str().unwrap().to_owned();
    let cas = serve(&data, &admin, &[]).unwrap();
    let client = CasClient::new(&cas.url, &pin, Some(ClientIdentity::load(&key).unwrap())).unwrap();
    let platform_key = tmp.path().join("platform.key");
    let platform = ok(&cli(&[
        "cas",
        "platform",
        "keygen",
        "--out",
        platform_key.to_str().unwrap(),
    ]));
    client.add_platform(platform.trim(), "test").await.unwrap();
    // The program exits with the value it was given: the job's exit code shows what it saw.
    client
        .create_session(&format!(
            "name: cnt/job\nsecurity:\n  attestation:\n    tolerate: [simulation]\nservices:\n- name: worker\n  \
             command: [/bin/sh, /cloister/script.sh]\n  environment: {{CLOISTER_COUNTERS: \"runs\"}}\n  \
             attestation:\n  - tee: sim\n    measurement: {}\nfiles:\n- path: /cloister/script.sh\n  \
             content: 'exit \"$CLOISTER_COUNTER_RUNS\"'\ncounters:\n- name: runs\n  max: 2\n",
            hex::encode(cloister_tee_runtime::sim_measurement())
        ))
        .await
        .unwrap();
    let run = |n: usize| -> Value {
        let dir = tmp.path().join(format!("job-{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        let job = serde_json::json!({
            "job_name": format!("counted-{n}"),
            "job_uuid": format!("0193a5e2-7c4e-7b8a-9f00-aabbccddee{n:02}"),
            "service": "counted",
            "tee": "sim",
            "cas": cas.url,
            "cas_pin": pin,
            "session": "cnt/job",
            "cas_service": "worker",
            "sim_platform_key": platform_key,
            "event": "{}",
            "event_time": "2026-11-29T00:00:00Z",
            "timeout_secs": 30,
            "log_limit": 65536,
            "plain_root": tmp.path().join("plain"),
            "volumes_dir": tmp.path().join("volumes"),
        });
        std::fs::write(dir.join("job.json"), job.to_string()).unwrap();
        let out = Command::new(common::runtime_bin())
            .arg("--job")
            .arg(&dir)
            .env_clear()
            .output()
            .unwrap();
        let mut result: Value =
            serde_json::from_slice(&std::fs::read(dir.join("result.json")).unwrap()).unwrap();
        result["stdout"] = String::from_utf8_lossy(&out.stdout).into();
        result
    };
    for n in 1..=2 {
        let result = run(n);
        assert_eq!(result["exit_code"], n, "{result}");
        assert!(
            result["stdout"]
                .as_str()
                .unwrap()
                .contains(&format!("counter \"runs\" at {n}")),
            "{result}"
        );
    }
    // At its max: refused before the program runs, and the CAS audits the refusal.
    let result = run(3);
    assert!(result["exit_code"].is_null(), "{result}");
    assert!(
        result["reason"]
            .as_str()
            .unwrap()
            .contains("counter \"runs\" not incremented"),
        "{result}"
    );
    assert!(
        result["reason"].as_str().unwrap().contains("at its max"),
        "{result}"
    );
    let values = client.counters("cnt/job").await.unwrap();
    assert_eq!(values.counters["runs"], 2);
    assert_eq!(values.runs["worker"], 3, "three attestations, two counted runs");
    let audit: Vec<Value> = client.audit(1).await.unwrap();
    assert_eq!(
        audit.iter().filter(|e| e["kind"] == "counter-increment").count(),
        2
    );
    assert!(audit.iter().any(|e| e["kind"] == "counter-increment-refused"));
}
