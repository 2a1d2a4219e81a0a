//! The crash-test harness: rounds of concurrent puts, overwrites, multipart uploads and deletes
//! while jobs run, the server killed with SIGKILL at a random moment and restarted. After each
//! round every acknowledged write is there (or was replaced by the write in flight on the same
//! key); at the end every object under the input path has exactly one job record, every job
//! succeeded (a job the kill interrupted runs again) and wrote its output, and no data file is
//! orphaned (`cloister store check`).
//!
//! `CLOISTER_STORE_CRASH_ROUNDS` sets the rounds (default 3, CI's short version;
//! `scripts/crash-test` runs 20), `CLOISTER_CRASH_SEED` replays the kill moments of a failed
//! run (its seed is printed).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde_json::json;

/// What a key holds: `None` when deleted.
type Content = Option<Vec<u8>>;

#[derive(Default)]
struct Ledger {
    /// The last acknowledged content of each key.
    acked: HashMap<String, Content>,
    /// The content a write in flight may have left.
    in_flight: HashMap<String, Content>,
}

fn content(writer: usize, i: usize, large: bool) -> Vec<u8> {
    let line = format!("writer {writer} write {i}\n");
    let size = if large { 300 * 1024 } else { line.len() };
    line.bytes().cycle().take(size).collect()
}

async fn write_loop(store: Arc<dyn ObjectStore>, writer: usize, round: usize, ledger: Arc<Mutex<Ledger>>) {
    for i in 0.. {
        let (key, value): (String, Content) = match i % 6 {
            0 | 3 => (
                format!("in/r{round}-w{writer}-{i}"),
                Some(content(writer, i, i % 12 == 3)),
            ),
            1 => (
                format!("data/w{writer}-{}", i % 5),
                Some(content(writer, i, i % 4 == 1)),
            ),
            2 => (format!("data/w{writer}-{}", (i + 2) % 5), None),
            4 => (
                format!("data/w{writer}-mp"),
                Some(content(writer, i, true).repeat(20)),
            ),
            _ => (
                format!("data/w{writer}-{}", i % 5),
                Some(content(writer, i, false)),
            ),
        };
        ledger
            .lock()
            .unwrap()
            .in_flight
            .insert(key.clone(), value.clone());
        let path = ObjectPath::from(key.as_str());
        let done = match &value {
            None => store.delete(&path).await.map(|_| ()),
            Some(bytes) if bytes.len() > 5 * 1024 * 1024 => {
                async {
                    let mut upload = store.put_multipart(&path).await?;
                    let (first, rest) = bytes.split_at(5 * 1024 * 1024);
                    upload.put_part(PutPayload::from(first.to_vec())).await?;
                    upload.put_part(PutPayload::from(rest.to_vec())).await?;
                    upload.complete().await.map(|_| ())
                }
                .await
            }
            Some(bytes) => store
                .put(&path, PutPayload::from(bytes.clone()))
                .await
                .map(|_| ()),
        };
        if done.is_err() {
            // The server died under this write; it stays in flight.
            return;
        }
        let mut ledger = ledger.lock().unwrap();
        ledger.in_flight.remove(&key);
        ledger.acked.insert(key, value);
    }
}

/// Kill moments from a seed, so a failing run can be replayed (splitmix64).
struct KillClock(u64);

impl KillClock {
    fn from_env() -> Self {
        let seed = std::env::var("CLOISTER_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                use std::hash::{BuildHasher, Hasher};
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u128(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos()),
                );
                h.finish()
            });
        eprintln!("crash test seed: {seed} (CLOISTER_CRASH_SEED={seed} replays it)");
        Self(seed)
    }

    /// How long the writers run before the kill: 100 ms to 1.1 s.
    fn next(&mut self) -> Duration {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Duration::from_millis(100 + (z ^ (z >> 31)) % 1000)
    }
}

async fn current(store: &dyn ObjectStore, key: &str) -> Content {
    match store.get(&ObjectPath::from(key)).await {
        Ok(got) => Some(got.bytes().await.unwrap().to_vec()),
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => panic!("{key}: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_uploads_survive_kill_9_with_exactly_one_job_and_its_output() {
    let rounds: usize = std::env::var("CLOISTER_STORE_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let service = json!({"name": "count", "image": "none",
        "script": "cp \"$INPUT_FILE_PATH\" \"$TMP_OUTPUT_DIR/\"",
        "input": [{"storage_provider": "minio.default", "path": "crash/in"}],
        "output": [{"storage_provider": "minio.default", "path": "crash/out"}]});
    assert_eq!(server.post_json("/system/services", &service).await.status(), 201);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut clock = KillClock::from_env();
    for round in 0..rounds {
        let store: Arc<dyn ObjectStore> = Arc::new(server.s3_client("crash"));
        let writers: Vec<_> = (0..4)
            .map(|w| tokio::spawn(write_loop(store.clone(), w, round, ledger.clone())))
            .collect();
        tokio::time::sleep(clock.next()).await;
        server.crash();
        for writer in writers {
            writer.abort();
            let _ = writer.await;
        }
        server.restart_after_crash();
        let store = server.s3_client("crash");
        let (acked_map, in_flight) = {
            let ledger = ledger.lock().unwrap();
            (ledger.acked.clone(), ledger.in_flight.clone())
        };
        assert!(
            !acked_map.is_empty(),
            "round {round}: no write was acknowledged before the kill"
        );
        let keys: Vec<String> = acked_map.keys().chain(in_flight.keys()).cloned().collect();
        for key in keys {
            let now = current(&store, &key).await;
            let acked = acked_map.get(&key).cloned().unwrap_or(None);
            let possible = in_flight.get(&key);
            assert!(
                now == acked || possible.is_some_and(|p| *p == now),
                "round {round}: {key} holds {:?} bytes; acknowledged {:?}, in flight {:?}",
                now.as_ref().map(Vec::len),
                acked.as_ref().map(Vec::len),
                possible.map(|p| p.as_ref().map(Vec::len))
            );
        }
        // Writes in flight at the kill are settled by now: either they are there or not.
        for (key, value) in in_flight {
            let now = current(&store, &key).await;
            let mut ledger = ledger.lock().unwrap();
            ledger.in_flight.remove(&key);
            if now == value {
                ledger.acked.insert(key, value);
            }
        }
    }
    // Every object under the input path has exactly one job, which succeeded and wrote its
    // output: as many jobs as inputs, and each input's output there, means one job each.
    let store = server.s3_client("crash");
    let inputs = {
        use futures::TryStreamExt;
        store
            .list(Some(&ObjectPath::from("in")))
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
    };
    assert!(!inputs.is_empty());
    let jobs = server.wait_jobs("count", inputs.len()).await;
    assert_eq!(
        jobs.len(),
        inputs.len(),
        "{} input objects but {} jobs",
        inputs.len(),
        jobs.len()
    );
    let failed: Vec<_> = jobs.values().filter(|j| j["status"] != "Succeeded").collect();
    assert!(failed.is_empty(), "jobs that did not succeed: {failed:?}");
    for input in &inputs {
        let key = input.location.as_ref();
        let name = key.strip_prefix("in/").unwrap();
        let output = current(&store, &format!("out/{name}")).await;
        assert_eq!(output, current(&store, key).await, "the output of {key}");
    }
    server.stop();
    let checked = std::process::Command::new(bin())
        .args(["--json", "store", "check", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&checked.stdout).unwrap_or_else(|_| {
        panic!(
            "store check: {}{}",
            String::from_utf8_lossy(&checked.stdout),
            String::from_utf8_lossy(&checked.stderr)
        )
    });
    assert!(checked.status.success(), "{report}");
    assert_eq!(report["missing_files"], 0, "{report}");
    assert_eq!(report["unreferenced_files"], 0, "{report}");
}
