//! Confidential services end to end: a dev CAS and `cloister server` as real processes, the
//! FDL applied from the "trusted computer" (sessions created at the CAS), inputs encrypted on
//! the owner's side, jobs run by `cloister-runtime` under the simulation TEE, outputs
//! decrypted by the owner — and every refusal the issue lists.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cloister_attestation::SimPlatform;
use cloister_cas_client::client::CasClient;
use cloister_cas_client::protocol::InitData;
use cloister_cas_client::protocol::VolumeCommit;
use cloister_cas_client::sign::ClientIdentity;
use common::{Server, Tmpfs, repo_root};
use object_store::{ObjectStoreExt, PutPayload};
use serde_json::{Value, json};

struct Cas {
    child: Option<Child>,
    url: String,
    pin: String,
    data: PathBuf,
    admin: String,
}

impl Cas {
    /// Kills the CAS process (its state stays on disk).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the CAS again on its data and its address.
    fn start_again(&mut self) {
        self.stop();
        let listen = self.url.trim_start_matches("https://").to_owned();
        let (child, url) = serve_cas(&self.data, &self.admin, &listen);
        assert_eq!(url, self.url);
        self.child = Some(child);
    }
}

impl Drop for Cas {
    fn drop(&mut self) {
        self.stop();
    }
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

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(common::bin()).args(args).output().unwrap()
}

/// A development CAS (key-file sealing: it starts unsealed) with `admin` as administrator.
fn start_cas(dir: &Path, admin: &str) -> Cas {
    let data = dir.join("cas");
    let init: Value = serde_json::from_str(&ok(&cli(&[
        "cas",
        "init",
        "--data-dir",
        data.to_str().unwrap(),
        "--key-file",
        dir.join("cas.master").to_str().unwrap(),
        "--json",
    ])))
    .unwrap();
    let (child, url) = serve_cas(&data, admin, "127.0.0.1:0");
    Cas {
        child: Some(child),
        url,
        pin: init["identity_pin"].as_str().unwrap().to_owned(),
        data,
        admin: admin.to_owned(),
    }
}

/// `cloister cas serve` on `data`, listening on `listen`; returns the process and its URL.
fn serve_cas(data: &Path, admin: &str, listen: &str) -> (Child, String) {
    let (child, rx) = common::spawn_cas_serve(
        [
            "--listen",
            listen,
            "--admin",
            admin,
            "--data-dir",
            data.to_str().unwrap(),
        ],
        Stdio::inherit(),
    );
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("CAS did not open its port");
    (child, url)
}

struct World {
    dir: tempfile::TempDir,
    /// The separately run CAS; `None` when the server runs its own (`--with-cas`).
    cas: Option<Cas>,
    cas_url: String,
    cas_pin: String,
    server: Server,
    admin_key: PathBuf,
    owner_key: PathBuf,
    fdl: PathBuf,
    recipients: std::collections::BTreeMap<String, String>,
}

impl World {
    /// The production layout: the CAS runs apart and its administrator registers the host.
    async fn start() -> World {
        Self::start_with(tempfile::tempdir().unwrap(), &[]).await
    }

    /// [`Self::start`] in `dir`, with extra server flags.
    async fn start_with(dir: tempfile::TempDir, extra: &[&str]) -> World {
        Self::start_in(dir, extra, None).await
    }

    /// [`Self::start_with`], the example's services in `image` when given.
    async fn start_in(dir: tempfile::TempDir, extra: &[&str], image: Option<&str>) -> World {
        let admin_key = dir.path().join("admin.key");
        let admin = ok(&cli(&["cas", "keygen", "--out", admin_key.to_str().unwrap()]))
            .trim()
            .to_owned();
        let cas = start_cas(dir.path(), &admin);
        let plain = dir.path().join("plain");
        let mut args = vec!["--plain-dir", plain.to_str().unwrap()];
        args.extend(extra);
        let server = Server::start(&dir.path().join("data"), &args);
        // The CAS administrator registers this host's simulated TEE.
        let info = server.get_json("/system/info").await;
        let platform_key = info["simulation_platform_key"].as_str().unwrap().to_owned();
        ok(&cli(&[
            "cas",
            "platform",
            "add",
            &platform_key,
            "--name",
            "test-host",
            "--cas",
            &cas.url,
            "--pin",
            &cas.pin,
            "--key",
            admin_key.to_str().unwrap(),
        ]));
        let (url, pin) = (cas.url.clone(), cas.pin.clone());
        Self::finish(dir, Some(cas), url, pin, server, admin_key, image)
    }

    /// One machine: `cloister server --with-cas` runs the CAS and registers itself.
    async fn start_embedded() -> World {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        let cas_dir = dir.path().join("cas");
        let server = Server::start(
            &dir.path().join("data"),
            &[
                "--plain-dir",
                plain.to_str().unwrap(),
                "--with-cas",
                "--cas-data-dir",
                cas_dir.to_str().unwrap(),
                "--cas-listen",
                "127.0.0.1:0",
            ],
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !cas_dir.join("cas.json").exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the embedded CAS did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let found: Value = serde_json::from_slice(&std::fs::read(cas_dir.join("cas.json")).unwrap()).unwrap();
        let (url, pin) = (
            found["url"].as_str().unwrap().to_owned(),
            found["pin"].as_str().unwrap().to_owned(),
        );
        let admin_key = PathBuf::from(found["admin_key"].as_str().unwrap());
        Self::finish(dir, None, url, pin, server, admin_key, None)
    }

    fn finish(
        dir: tempfile::TempDir,
        cas: Option<Cas>,
        cas_url: String,
        cas_pin: String,
        server: Server,
        admin_key: PathBuf,
        image: Option<&str>,
    ) -> World {
        // The data owner's key, and the FDL filled in on the trusted computer.
        let owner_key = dir.path().join("owner.key");
        let owner = ok(&cli(&["keygen", "--out", owner_key.to_str().unwrap()]))
            .trim()
            .to_owned();
        let example = repo_root().join("examples/confidential");
        let fdl_dir = dir.path().join("fdl");
        std::fs::create_dir(&fdl_dir).unwrap();
        for script in ["upper.sh", "tally.sh"] {
            std::fs::copy(example.join(script), fdl_dir.join(script)).unwrap();
        }
        let fdl = std::fs::read_to_string(example.join("fdl.yaml"))
            .unwrap()
            .replace("CAS_URL", &cas_url)
            .replace("CAS_PIN", &cas_pin)
            .replace("OWNER_RECIPIENT", &owner)
            .replace(
                "image: docker.io/library/busybox:1.36",
                &format!("image: {}", image.unwrap_or("docker.io/library/busybox:1.36")),
            );
        let fdl_path = fdl_dir.join("fdl.yaml");
        std::fs::write(&fdl_path, fdl).unwrap();
        let mut world = World {
            dir,
            cas,
            cas_url,
            cas_pin,
            server,
            admin_key,
            owner_key,
            fdl: fdl_path,
            recipients: Default::default(),
        };
        world.apply();
        world
    }

    fn apply(&mut self) {
        let keys = self.dir.path().join("keys");
        let applied: Value = serde_json::from_str(&ok(&self.server.cli(&[
            "apply",
            self.fdl.to_str().unwrap(),
            "--cas-key",
            self.admin_key.to_str().unwrap(),
            "--keys-dir",
            keys.to_str().unwrap(),
            "--json",
        ])))
        .unwrap();
        for service in applied.as_array().unwrap() {
            self.recipients.insert(
                service["service"].as_str().unwrap().to_owned(),
                service["input_recipient"].as_str().unwrap().to_owned(),
            );
        }
    }

    /// Encrypts `content` on the owner's side (authenticated as the owner) and uploads it to
    /// `bucket/key`.
    fn put_encrypted(&self, service: &str, content: &[u8], remote: &str) {
        self.put_encrypted_as(service, content, remote, Some(&self.owner_key));
    }

    fn put_encrypted_as(&self, service: &str, content: &[u8], remote: &str, sender: Option<&Path>) {
        let local = self.dir.path().join("owner-input");
        std::fs::write(&local, content).unwrap();
        let mut args = vec![
            "put",
            local.to_str().unwrap(),
            remote,
            "--encrypt",
            &self.recipients[service],
        ];
        if let Some(sender) = sender {
            args.extend(["--sender", sender.to_str().unwrap()]);
        }
        ok(&self.server.cli(&args));
        std::fs::remove_file(&local).unwrap();
    }

    /// The job's sealed log, decrypted by the owner.
    fn sealed_log(&self, service: &str, job: &str) -> std::process::Output {
        self.server.cli(&[
            "job",
            "logs",
            service,
            job,
            "--decrypt",
            self.owner_key.to_str().unwrap(),
        ])
    }

    /// Downloads and decrypts `remote` with the owner's key.
    fn get_decrypted(&self, remote: &str) -> Vec<u8> {
        let local = self.dir.path().join("owner-output");
        let _ = std::fs::remove_file(&local);
        ok(&self.server.cli(&[
            "get",
            remote,
            local.to_str().unwrap(),
            "--decrypt",
            self.owner_key.to_str().unwrap(),
        ]));
        std::fs::read(&local).unwrap()
    }

    async fn raw_put(&self, bucket: &str, key: &str, bytes: Vec<u8>) {
        self.server
            .s3_client(bucket)
            .put(&key.into(), PutPayload::from(bytes))
            .await
            .unwrap();
    }

    async fn raw_get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let got = self.server.s3_client(bucket).get(&key.into()).await.ok()?;
        Some(got.bytes().await.unwrap().to_vec())
    }

    /// The job that processed `key` (by its event), once finished.
    async fn job_for(&self, service: &str, expected_jobs: usize, key: &str) -> (String, Value, String) {
        let jobs = self.server.wait_jobs(service, expected_jobs).await;
        for (name, job) in jobs {
            let log = self
                .server
                .get(&format!("/system/logs/{service}/{name}"))
                .await
                .text()
                .await
                .unwrap();
            if log.contains(key) {
                return (name, job, log);
            }
        }
        panic!("no job of {service} mentions {key}");
    }

    fn scan(&self, canary: &str) -> std::process::Output {
        self.server.bench(&[
            "canary-scan",
            "--canary",
            canary,
            "--dir",
            self.server.dir.to_str().unwrap(),
            "--api",
            "--processes",
            "--json",
        ])
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn confidential_jobs_end_to_end_with_every_refusal() {
    let world = World::start().await;
    let canary = format!("CANARY{}", uuid_like());

    // The platform holds no secret of a confidential service: the FDL's secret went to the CAS.
    let service = world.server.get_json("/system/services/secure-upper").await;
    assert!(
        service["environment"]["secrets"]
            .as_object()
            .is_none_or(|s| s.is_empty()),
        "{service}"
    );
    assert!(!service.to_string().contains("s3cr3t-stamp-0c5e"));

    // A plain service chained on the confidential service's output folder: the runtime's own
    // uploads raise the store's events as any upload does.
    let chained = world.dir.path().join("chained");
    std::fs::create_dir(&chained).unwrap();
    std::fs::write(
        chained.join("size.sh"),
        "wc -c < \"$INPUT_FILE_PATH\" | tr -d ' ' > \"$TMP_OUTPUT_DIR/$(basename \"$INPUT_FILE_PATH\").size\"\n",
    )
    .unwrap();
    std::fs::write(
        chained.join("fdl.yaml"),
        "functions:\n  oscar:\n    - local:\n        name: chained-size\n        image: busybox\n        \
         script: size.sh\n        input:\n          - storage_provider: minio\n            path: secure/out\n        \
         output:\n          - storage_provider: minio\n            path: chained/out\n",
    )
    .unwrap();
    ok(&world
        .server
        .cli(&["apply", chained.join("fdl.yaml").to_str().unwrap()]));

    // 1. A job on encrypted input gives encrypted output the owner decrypts.
    let input = format!("patient {canary} heart rate 72\nsecond line\n");
    world.put_encrypted("secure-upper", input.as_bytes(), "secure/in/record.txt");
    let (name, job, log) = world.job_for("secure-upper", 1, "secure/in/record.txt").await;
    assert_eq!(job["status"], "Succeeded", "{log}");
    assert!(log.contains("attested to the CAS"), "{log}");
    assert!(log.contains("authenticated from cloister1x25519:"), "{log}");
    assert!(!log.contains(&canary), "{log}");
    // The script's own output is the owner's: sealed on the platform, readable with the key.
    let sealed = ok(&world.sealed_log("secure-upper", &name));
    assert!(
        sealed.contains(&format!("upper-cased record.txt, first line: patient {canary}")),
        "{sealed}"
    );
    let output = world.get_decrypted("secure/out/record.txt");
    assert_eq!(
        String::from_utf8(output).unwrap(),
        format!(
            "{}label=reviewed stamp=s3cr3t-stamp-0c5e\nargs=v2 s3cr3t-stamp-0c5e\n",
            input.to_uppercase()
        )
    );
    // The stored output is ciphertext: without the owner's key it is noise.
    let stored = world.raw_get("secure", "out/record.txt").await.unwrap();
    assert!(!String::from_utf8_lossy(&stored).contains(&canary.to_uppercase()));
    // Its upload started the chained service's job, which saw the ciphertext.
    let jobs = world.server.wait_jobs("chained-size", 1).await;
    assert!(jobs.values().all(|j| j["status"] == "Succeeded"), "{jobs:?}");
    assert_eq!(
        world.raw_get("chained", "out/record.txt.size").await.unwrap(),
        format!("{}\n", stored.len()).into_bytes()
    );

    // 2. Nothing on the platform side holds the canary or the secret, in any encoding.
    for needle in [canary.as_str(), &canary.to_uppercase(), "s3cr3t-stamp-0c5e"] {
        let scan = world.scan(needle);
        assert_eq!(
            scan.status.code(),
            Some(0),
            "{needle}: {}{}",
            String::from_utf8_lossy(&scan.stdout),
            String::from_utf8_lossy(&scan.stderr)
        );
    }
    // Plaintext was wiped from the memory-backed folder.
    assert!(common::files_under(&world.dir.path().join("plain")).is_empty());

    // An input not authenticated by the owner (anyone who knows the service's public recipient
    // can make one, the host too) is refused: the session lists the owner as its only sender.
    world.put_encrypted_as(
        "secure-upper",
        b"forged by the host\n",
        "secure/in/forged.txt",
        None,
    );
    let (_, job, log) = world.job_for("secure-upper", 2, "secure/in/forged.txt").await;
    assert_eq!(job["status"], "Failed", "{log}");
    assert!(log.contains("rejected") && log.contains("sender"), "{log}");
    assert!(world.raw_get("secure", "out/forged.txt").await.is_none());

    // 3. A tampered ciphertext: Failed with a clear reason, no output.
    let mut tampered = world.raw_get("secure", "in/record.txt").await.unwrap();
    let middle = tampered.len() - 20;
    tampered[middle] ^= 0x01;
    world.raw_put("secure", "in/tampered.txt", tampered).await;
    let (_, job, log) = world.job_for("secure-upper", 3, "secure/in/tampered.txt").await;
    assert_eq!(job["status"], "Failed", "{log}");
    assert!(log.contains("input secure/in/tampered.txt rejected"), "{log}");
    assert!(world.raw_get("secure", "out/tampered.txt").await.is_none());

    // 4. A swapped object (a valid ciphertext stored under another key): detected.
    let original = world.raw_get("secure", "in/record.txt").await.unwrap();
    world.raw_put("secure", "in/swapped.txt", original).await;
    let (_, job, log) = world.job_for("secure-upper", 4, "secure/in/swapped.txt").await;
    assert_eq!(job["status"], "Failed", "{log}");
    assert!(log.contains("rejected"), "{log}");
    assert!(world.raw_get("secure", "out/swapped.txt").await.is_none());

    // 5. The script changed on the platform after the session was made: the platform's copy is
    //    never run (it does not even reach the runtime); the job runs the session's script.
    let stolen = world.dir.path().join("stolen");
    let mut changed = world.server.get_json("/system/services/secure-upper").await;
    changed["script"] = json!(format!("cat \"$INPUT_FILE_PATH\" > {}\n", stolen.display()));
    let put = world
        .server
        .http()
        .put(world.server.url("/system/services"))
        .basic_auth(common::USER, Some(common::PASSWORD))
        .json(&changed)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 204);
    world.put_encrypted("secure-upper", b"after the change\n", "secure/in/changed.txt");
    let (_, job, log) = world.job_for("secure-upper", 5, "secure/in/changed.txt").await;
    assert_eq!(job["status"], "Succeeded", "{log}");
    assert!(!stolen.exists(), "the platform's script ran");
    let output = world.get_decrypted("secure/out/changed.txt");
    assert!(
        String::from_utf8(output)
            .unwrap()
            .starts_with("AFTER THE CHANGE\n")
    );

    // A plaintext upload (the user forgot `--encrypt`): the reason says how to send inputs.
    world
        .raw_put("secure", "in/plain.txt", b"forgot to encrypt\n".to_vec())
        .await;
    let (_, job, log) = world.job_for("secure-upper", 6, "secure/in/plain.txt").await;
    assert_eq!(job["status"], "Failed", "{log}");
    assert!(
        log.contains("this service takes inputs encrypted with `cloister put --encrypt <recipient>`"),
        "{log}"
    );
    assert!(!log.contains("header truncated"), "{log}");

    // 6. A session that does not tolerate simulation: refused.
    let admin = ClientIdentity::load(&world.admin_key).unwrap();
    let cas = CasClient::new(&world.cas_url, &world.cas_pin, Some(admin)).unwrap();
    let record = cas.get_session("examples/secure-tally").await.unwrap();
    let mut strict: Value = serde_json::from_str(&record.yaml).unwrap();
    // The hardened session wants SGX hardware (the CAS refuses a sim alternative without
    // tolerating simulation, so the alternative moves to sgx with the same measurement).
    strict.as_object_mut().unwrap().remove("security");
    let measurement = strict["services"][0]["attestation"][0]["measurement"].clone();
    strict["services"][0]["attestation"] = json!([{"tee": "sgx", "mrenclave": measurement}]);
    strict["predecessor"] = json!(record.hash);
    cas.update_session("examples/secure-tally", &strict.to_string())
        .await
        .unwrap();
    world.put_encrypted("secure-tally", b"a\n", "tally/in/strict.txt");
    let (_, job, log) = world.job_for("secure-tally", 1, "tally/in/strict.txt").await;
    assert_eq!(job["status"], "Failed", "{log}");
    assert!(log.contains("simulation evidence is not tolerated"), "{log}");

    // 7. A session whose outputs go where the platform's copy of the service does not write
    //    (another service's output folder): the platform's storage is not the session's to
    //    write anywhere in. Failed, and nothing lands there.
    let record = cas.get_session("examples/secure-upper").await.unwrap();
    let mut elsewhere: Value = serde_json::from_str(&record.yaml).unwrap();
    let outputs = &mut elsewhere["services"][0]["environment"]["CLOISTER_OUTPUTS"];
    assert!(
        outputs.as_str().unwrap().contains(r#""bucket":"secure""#),
        "{outputs}"
    );
    *outputs = json!(r#"[{"bucket":"tally","folder":"out","prefix":[],"suffix":[]}]"#);
    elsewhere["predecessor"] = json!(record.hash);
    cas.update_session("examples/secure-upper", &elsewhere.to_string())
        .await
        .unwrap();
    world.put_encrypted("secure-upper", b"elsewhere\n", "secure/in/elsewhere.txt");
    let (_, job, log) = world.job_for("secure-upper", 7, "secure/in/elsewhere.txt").await;
    assert_eq!(job["status"], "Failed", "{log}");
    assert!(log.contains("tally/out/elsewhere.txt"), "{log}");
    assert!(world.raw_get("tally", "out/elsewhere.txt").await.is_none());
    assert!(world.raw_get("secure", "out/elsewhere.txt").await.is_none());
}

/// `cloister server --with-cas` on its own: the host registered itself, a confidential job runs
/// on encrypted input, the canary stays out of the platform, and the CAS comes back (same
/// identity) after a restart.
#[tokio::test(flavor = "multi_thread")]
async fn one_machine_with_the_servers_own_cas() {
    let mut world = World::start_embedded().await;
    let canary = format!("CANARY{}", uuid_like());
    let input = format!("record {canary}\n");
    world.put_encrypted("secure-upper", input.as_bytes(), "secure/in/one.txt");
    let (_, job, log) = world.job_for("secure-upper", 1, "secure/in/one.txt").await;
    assert_eq!(job["status"], "Succeeded", "{log}");
    assert!(log.contains("attested to the CAS"), "{log}");
    let output = String::from_utf8(world.get_decrypted("secure/out/one.txt")).unwrap();
    assert!(output.starts_with(&input.to_uppercase()), "{output}");
    assert!(output.ends_with("args=v2 s3cr3t-stamp-0c5e\n"), "{output}");
    let scan = world.scan(&canary);
    assert_eq!(
        scan.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&scan.stdout)
    );

    let cas_json = world.dir.path().join("cas/cas.json");
    let before: Value = serde_json::from_slice(&std::fs::read(&cas_json).unwrap()).unwrap();
    std::fs::remove_file(&cas_json).unwrap();
    world.server.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !cas_json.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the embedded CAS did not restart"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let after: Value = serde_json::from_slice(&std::fs::read(&cas_json).unwrap()).unwrap();
    assert_eq!(before["pin"], after["pin"]);
    // The CAS listens on a new port; the session still names the old one, so re-apply as the
    // owner would after moving the CAS.
    world.cas_url = after["url"].as_str().unwrap().to_owned();
    let fdl = std::fs::read_to_string(&world.fdl)
        .unwrap()
        .replace(before["url"].as_str().unwrap(), &world.cas_url);
    std::fs::write(&world.fdl, fdl).unwrap();
    world.apply();
    world.put_encrypted("secure-upper", b"again\n", "secure/in/two.txt");
    let (_, job, log) = world.job_for("secure-upper", 2, "secure/in/two.txt").await;
    assert_eq!(job["status"], "Succeeded", "{log}");
    assert!(world.get_decrypted("secure/out/two.txt").starts_with(b"AGAIN\n"));
}

/// The defaults of `--with-cas`, from a relative data directory: the CAS lives beside it.
#[test]
fn with_cas_defaults_beside_a_relative_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Command::new(common::bin())
        .current_dir(dir.path())
        .args([
            "server",
            "--executor",
            "host",
            "--data-dir",
            "data",
            "--listen",
            "127.0.0.1:0",
            "--s3-listen",
            "127.0.0.1:0",
        ])
        .args(["--with-cas", "--cas-listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let found = dir.path().join("data-cas/cas.json");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !found.exists() {
        if std::time::Instant::now() > deadline || server.try_wait().unwrap().is_some() {
            let _ = server.kill();
            panic!("the server with its CAS did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = server.kill();
    let _ = server.wait();
    let found: Value = serde_json::from_slice(&std::fs::read(found).unwrap()).unwrap();
    assert!(found["pin"].as_str().unwrap().starts_with("sha256:"));
    assert!(dir.path().join("data-cas/master.key").exists());
    assert!(!dir.path().join("data/master.key").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn encrypted_volumes_survive_restarts_and_refuse_rollback() {
    let mut world = World::start().await;
    let volumes = world.server.dir.join("volumes/secure-tally");
    let mut finished = 0;
    let mut run = |world: &World, name: &str, lines: usize| {
        finished += 1;
        let content = "x\n".repeat(lines);
        world.put_encrypted("secure-tally", content.as_bytes(), &format!("tally/in/{name}"));
        finished
    };

    let n = run(&world, "one.txt", 2);
    let (_, job, log) = world.job_for("secure-tally", n, "tally/in/one.txt").await;
    assert_eq!(job["status"], "Succeeded", "{log}");
    assert_eq!(
        world.get_decrypted("tally/out/one.txt.tally"),
        b"jobs=1 lines=2\n"
    );
    let snapshot = world.dir.path().join("volume-snapshot");
    copy_dir(&volumes, &snapshot);

    // Across a server restart the volume carries on (its version lives in the CAS).
    world.server.restart();
    let n = run(&world, "two.txt", 3);
    let (_, job, log) = world.job_for("secure-tally", n, "tally/in/two.txt").await;
    assert_eq!(job["status"], "Succeeded", "{log}");
    assert!(log.contains("at version 1"), "{log}");
    assert_eq!(
        world.get_decrypted("tally/out/two.txt.tally"),
        b"jobs=2 lines=5\n"
    );
    // No plaintext of the volume on the platform side.
    for file in common::files_under(&volumes) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(!bytes.windows(7).any(|w| w == b"lines=5"), "{}", file.display());
    }

    // The platform rolls the volume back to the snapshot: refused, nothing written.
    std::fs::remove_dir_all(&volumes).unwrap();
    copy_dir(&snapshot, &volumes);
    let n = run(&world, "three.txt", 1);
    let (_, job, log) = world.job_for("secure-tally", n, "tally/in/three.txt").await;
    assert_eq!(job["status"], "Failed", "{log}");
    assert!(log.contains("rollback"), "{log}");
    assert!(world.raw_get("tally", "out/three.txt.tally").await.is_none());

    // The old ciphertext renamed to the current version's file: refused as well.
    let current = std::fs::read_dir(&volumes)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains(".v1."))
        .unwrap();
    std::fs::remove_dir_all(&volumes).unwrap();
    std::fs::create_dir_all(&volumes).unwrap();
    let v2_name = world.last_volume_name(2).await;
    std::fs::copy(
        snapshot.join(current.file_name().unwrap()),
        volumes.join(&v2_name),
    )
    .unwrap();
    let n = run(&world, "four.txt", 1);
    let (_, job, log) = world.job_for("secure-tally", n, "tally/in/four.txt").await;
    assert_eq!(job["status"], "Failed", "{log}");
    assert!(log.contains("rollback or tampering"), "{log}");

    // Commits need the grant released with the configuration, and the current version.
    let admin = ClientIdentity::load(&world.admin_key).unwrap();
    let cas = CasClient::new(&world.cas_url, &world.cas_pin, Some(admin)).unwrap();
    let mut commit = VolumeCommit {
        session: "examples/secure-tally".into(),
        service: "secure-tally".into(),
        volume: "state".into(),
        grant: "AAAA".into(),
        from_version: 2,
        tag: "ab".repeat(32),
    };
    let refused = cas.commit_volume(&commit).await.unwrap_err().to_string();
    assert!(refused.contains("403") && refused.contains("grant"), "{refused}");
    let seed: [u8; 32] = std::fs::read(world.server.dir.join("sim-platform.key"))
        .unwrap()
        .try_into()
        .unwrap();
    let init = InitData::new(&world.cas_pin, "examples/secure-tally", "secure-tally").unwrap();
    let source = init
        .simulated(
            SimPlatform::from_seed(seed),
            cloister_tee_runtime::sim_measurement(),
        )
        .unwrap();
    let released = cas.attest(&init, &source, |_| {}).await.unwrap();
    assert_eq!(released.volumes["state"].version, 2, "{:?}", released.volumes);
    commit.grant = released.volume_grant.clone();
    commit.from_version = 1;
    let refused = cas.commit_volume(&commit).await.unwrap_err().to_string();
    assert!(
        refused.contains("409") && refused.contains("version 2"),
        "{refused}"
    );
    commit.from_version = 2;
    commit.service = "other".into();
    let refused = cas.commit_volume(&commit).await.unwrap_err().to_string();
    assert!(refused.contains("403"), "{refused}");
    commit.service = "secure-tally".into();
    commit.tag = "not-a-tag".into();
    let refused = cas.commit_volume(&commit).await.unwrap_err().to_string();
    assert!(refused.contains("400"), "{refused}");

    // A re-apply (same keys dir) keeps the input identity and the volume key.
    let before = world.recipients.clone();
    world.apply();
    assert_eq!(before, world.recipients);
}

impl World {
    /// The file name the runtime expects for `version` of the tally volume, from the CAS's
    /// audit log (administrators read it).
    async fn last_volume_name(&self, version: u64) -> String {
        let admin = ClientIdentity::load(&self.admin_key).unwrap();
        let cas = CasClient::new(&self.cas_url, &self.cas_pin, Some(admin)).unwrap();
        let entries: Vec<cloister_cas_store::AuditEntry> = cas.audit(0).await.unwrap();
        let entry = entries
            .iter()
            .rev()
            .find(|e| e.kind == "volume-commit" && e.detail["version"] == version)
            .expect("volume commit in the audit log");
        cloister_tee_runtime::volume_file_name("state", version, entry.detail["tag"].as_str().unwrap())
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn uuid_like() -> String {
    let mut bytes = [0u8; 8];
    getrandom(&mut bytes);
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(buf)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_confidential_job_killed_midway_leaves_no_plaintext() {
    let mut world = World::start().await;
    let fdl_dir = world.fdl.parent().unwrap().to_path_buf();
    std::fs::write(
        fdl_dir.join("slow.sh"),
        "cp \"$INPUT_FILE_PATH\" \"$TMPDIR/copy\"\nsleep 60\n",
    )
    .unwrap();
    let fdl = std::fs::read_to_string(&world.fdl).unwrap();
    let slow = fdl
        .replace("secure-upper", "secure-slow")
        .replace("upper.sh", "slow.sh")
        .replace("path: secure/", "path: slow/")
        .replace("examples/secure-tally", "examples/unused-tally")
        .replace("secure-tally", "unused-tally")
        .replace("path: tally/", "path: unused/");
    world.fdl = fdl_dir.join("slow.yaml");
    std::fs::write(&world.fdl, slow).unwrap();
    world.apply();

    world.put_encrypted("secure-slow", b"slow secret\n", "slow/in/a.txt");
    let plain = world.dir.path().join("plain");
    // While the script runs, its plaintext exists only in the memory-backed folder.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let job = loop {
        let jobs = world.server.get_json("/system/logs/secure-slow?page=").await["jobs"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let running = jobs
            .iter()
            .find(|(_, j)| j["status"] == "Running")
            .map(|(n, _)| n.clone());
        if let Some(name) = running
            && common::files_under(&plain)
                .iter()
                .any(|f| f.ends_with("tmp/copy"))
        {
            break name;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slow job did not start: {jobs:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let deleted = world
        .server
        .http()
        .delete(world.server.url(&format!("/system/logs/secure-slow/{job}")))
        .basic_auth(common::USER, Some(common::PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !common::files_under(&plain).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "plaintext left behind: {:?}",
            common::files_under(&plain)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The host writes `job.json`; the runtime trusts none of it. Run `cloister-runtime` by hand as
/// a hostile host would, with descriptions that try to move plaintext somewhere readable, make
/// it write host files, or talk to another CAS: each is refused before anything is released.
#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_job_description_releases_nothing() {
    let world = World::start().await;
    let base = |plain: &Path| {
        json!({
            "job_name": "secure-upper-0193a5e27c4e7b8a9f00aabbccddeeff",
            "job_uuid": "0193a5e2-7c4e-7b8a-9f00-aabbccddeeff",
            "service": "secure-upper",
            "tee": "sim",
            "cas": world.cas_url,
            "cas_pin": world.cas_pin,
            "session": "examples/secure-upper",
            "cas_service": "secure-upper",
            "sim_platform_key": world.server.dir.join("sim-platform.key"),
            "event": "{}",
            "event_time": "2026-11-29T00:00:00Z",
            "timeout_secs": 30,
            "log_limit": 65536,
            "plain_root": plain,
            "volumes_dir": world.dir.path().join("volumes"),
        })
    };
    let run = |name: &str, job: Value| -> (Option<i32>, Value, String) {
        let dir = world.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("job.json"), job.to_string()).unwrap();
        let out = Command::new(common::runtime_bin())
            .arg("--job")
            .arg(&dir)
            .env_clear()
            .output()
            .unwrap();
        let result: Value = serde_json::from_slice(&std::fs::read(dir.join("result.json")).unwrap()).unwrap();
        (
            out.status.code(),
            result,
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let released = || async {
        let admin = ClientIdentity::load(&world.admin_key).unwrap();
        let cas = CasClient::new(&world.cas_url, &world.cas_pin, Some(admin)).unwrap();
        let entries: Vec<cloister_cas_store::AuditEntry> = cas.audit(0).await.unwrap();
        entries.iter().filter(|e| e.kind == "secret-release").count()
    };
    let before = released().await;

    // A plaintext folder another local user prepared (they could read every input).
    let theirs = world.dir.path().join("their-plain");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    let (code, result, _) = run("theirs", base(&theirs));
    assert_eq!(code, Some(8));
    assert!(
        result["reason"]
            .as_str()
            .unwrap()
            .contains("belongs to uid 65534"),
        "{result}"
    );
    // …or one that anyone may write into.
    let open = world.dir.path().join("open-plain");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let (code, result, _) = run("open", base(&open));
    assert_eq!(code, Some(8));
    assert!(result["reason"].as_str().unwrap().contains("0777"), "{result}");

    let plain = world.dir.path().join("plain-hostile");
    // "cgroups" that are host files the runtime would write its pid into.
    let mut job = base(&plain);
    job["cgroup_procs"] = json!(["/etc/passwd"]);
    let (code, result, _) = run("cgroups", job);
    assert_eq!(code, Some(8));
    assert!(
        result["reason"]
            .as_str()
            .unwrap()
            .contains("not a cgroup.procs file"),
        "{result}"
    );
    // Another CAS than the one the service's session lives in: the pinned TLS to the real URL
    // fails, and nothing is attested.
    let mut job = base(&plain);
    job["cas_pin"] = json!(format!("sha256:{}", "ee".repeat(32)));
    let (code, result, _) = run("other-cas", job);
    assert_eq!(code, Some(8));
    assert!(
        result["reason"].as_str().unwrap().contains("attestation refused"),
        "{result}"
    );
    // A script the host wrote beside job.json is not even looked at: the job runs the session's
    // script (and, having no input, fails only for want of one).
    let dir = world.dir.path().join("script");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("script.sh"), "touch /tmp/host-script-ran\n").unwrap();
    let (_, result, stdout) = run("script", base(&plain));
    assert!(!Path::new("/tmp/host-script-ran").exists(), "{result} {stdout}");
    assert!(stdout.contains("attested to the CAS"), "{stdout}");

    // Only the last run (the genuine description) obtained anything from the CAS.
    assert_eq!(released().await, before + 1);
    assert!(common::files_under(&plain).is_empty());
}

impl World {
    fn cas(&mut self) -> &mut Cas {
        self.cas.as_mut().expect("a separately run CAS")
    }

    /// Adds services made from the example's by `rename` (pairs of text replaced in the FDL),
    /// with their scripts, and applies them.
    fn add_services(&mut self, name: &str, rename: &[(&str, &str)], scripts: &[(&str, String)]) {
        let fdl_dir = self.fdl.parent().unwrap().to_path_buf();
        for (file, script) in scripts {
            std::fs::write(fdl_dir.join(file), script).unwrap();
        }
        // The example's FDL as `finish` filled it in.
        let mut fdl = std::fs::read_to_string(fdl_dir.join("fdl.yaml")).unwrap();
        for (from, to) in rename {
            fdl = fdl.replace(from, to);
        }
        self.fdl = fdl_dir.join(format!("{name}.yaml"));
        std::fs::write(&self.fdl, fdl).unwrap();
        self.apply();
    }

    /// Waits until a file whose path ends with `suffix` exists under the plaintext folder (a
    /// runtime attested and decrypted its input).
    async fn wait_plaintext(&self, suffix: &str) {
        let plain = self.dir.path().join("plain");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !common::files_under(&plain).iter().any(|f| f.ends_with(suffix)) {
            assert!(std::time::Instant::now() < deadline, "no plaintext {suffix}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The CAS down when a confidential job starts: the runtime tries again with back-off within
/// the job's timeout, then the job fails with a reason naming the CAS. A CAS that comes back
/// in time is waited for; one that accepts connections and never answers is bounded the same.
#[tokio::test(flavor = "multi_thread")]
async fn a_cas_down_or_silent_at_job_start_is_waited_for_within_the_timeout() {
    let mut world = World::start_with(tempfile::tempdir().unwrap(), &["--job-timeout", "6s"]).await;
    let cas_url = world.cas_url.clone();
    world.cas().stop();

    // Down for good: Failed after the job's timeout, naming the CAS, nothing written.
    let started = std::time::Instant::now();
    world.put_encrypted("secure-upper", b"down\n", "secure/in/down.txt");
    let (_, job, log) = world.job_for("secure-upper", 1, "secure/in/down.txt").await;
    assert_eq!(job["status"], "Failed", "{log}");
    assert!(
        log.contains(&format!("the CAS at {cas_url} is unreachable: gave up after")),
        "{log}"
    );
    assert!(log.contains("trying again (attempt 2"), "{log}");
    assert!(started.elapsed() >= Duration::from_secs(5), "{log}");
    assert!(world.raw_get("secure", "out/down.txt").await.is_none());

    // Back while the job waits: it attests then, and succeeds.
    world.put_encrypted("secure-upper", b"back\n", "secure/in/back.txt");
    tokio::time::sleep(Duration::from_secs(2)).await;
    world.cas().start_again();
    let (_, job, log) = world.job_for("secure-upper", 2, "secure/in/back.txt").await;
    assert_eq!(job["status"], "Succeeded", "{log}");
    assert!(log.contains("is unavailable"), "{log}");
    let output = String::from_utf8(world.get_decrypted("secure/out/back.txt")).unwrap();
    assert!(output.starts_with("BACK\n"), "{output}");

    // Silent: something holds the CAS's port, accepts and never answers.
    world.cas().stop();
    let listener = std::net::TcpListener::bind(cas_url.trim_start_matches("https://")).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().map_while(Result::ok) {
            held.push(stream);
        }
    });
    let started = std::time::Instant::now();
    world.put_encrypted("secure-upper", b"silent\n", "secure/in/silent.txt");
    let (_, job, log) = world.job_for("secure-upper", 3, "secure/in/silent.txt").await;
    assert_eq!(job["status"], "Failed", "{log}");
    assert!(log.contains("is unreachable: gave up after"), "{log}");
    // The job's timeout (6 s), not the client's 30 s per connection, bounds the wait.
    assert!(started.elapsed() < Duration::from_secs(20), "{log}");
    assert!(world.raw_get("secure", "out/silent.txt").await.is_none());
}

/// The CAS restarted while jobs run: a job that has its keys finishes without it; a job that
/// needs it again at the end (a volume commit) waits for it to come back, and commits.
#[tokio::test(flavor = "multi_thread")]
async fn a_cas_restarted_mid_job_does_not_lose_the_job() {
    let mut world = World::start().await;
    let example = repo_root().join("examples/confidential");
    let slow = |script: &str| {
        let body = std::fs::read_to_string(example.join(script)).unwrap();
        format!("sleep 2\n{body}")
    };
    world.add_services(
        "restart",
        &[
            ("secure-upper", "wait-upper"),
            ("upper.sh", "wait-upper.sh"),
            ("path: secure/", "path: waitu/"),
            ("secure-tally", "wait-tally"),
            ("tally.sh", "wait-tally.sh"),
            ("path: tally/", "path: waitt/"),
        ],
        &[
            ("wait-upper.sh", slow("upper.sh")),
            ("wait-tally.sh", slow("tally.sh")),
        ],
    );
    world.put_encrypted("wait-upper", b"keys in hand\n", "waitu/in/a.txt");
    world.put_encrypted("wait-tally", b"x\ny\n", "waitt/in/b.txt");
    world.wait_plaintext("input/a.txt").await;
    world.wait_plaintext("input/b.txt").await;
    // Both runtimes have their configuration: the CAS goes away.
    world.cas().stop();

    let (_, job, log) = world.job_for("wait-upper", 1, "waitu/in/a.txt").await;
    assert_eq!(job["status"], "Succeeded", "{log}");
    let output = String::from_utf8(world.get_decrypted("waitu/out/a.txt")).unwrap();
    assert!(output.starts_with("KEYS IN HAND\n"), "{output}");

    // The tally's program has ended too and its commit is waiting: the CAS comes back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    world.cas().start_again();
    let (_, job, log) = world.job_for("wait-tally", 1, "waitt/in/b.txt").await;
    assert_eq!(job["status"], "Succeeded", "{log}");
    assert!(log.contains("is unavailable"), "{log}");
    assert!(log.contains("committed as version 1"), "{log}");
    assert_eq!(world.get_decrypted("waitt/out/b.txt.tally"), b"jobs=1 lines=2\n");
}

/// No room left while a confidential job's outputs are stored (the data directory): the job
/// fails with a reason that says so (the store's own answer: the runtime's upload waits for its
/// `100 Continue`), and no output object, whole or partial, is visible. An output is encrypted
/// as it is stored, so the memory-backed plaintext folder holds its plaintext only, never a
/// sealed copy beside it.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_store_fails_the_job_and_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let Some(data_fs) = Tmpfs::mount(&data, "size=64m,mode=0755") else {
        return;
    };
    let Some(plain_fs) = Tmpfs::mount(&dir.path().join("plain"), "size=12m,mode=0700") else {
        return;
    };
    let mut world = World::start_with(dir, &[]).await;
    let big = "set -eu\nhead -c $(cat \"$INPUT_FILE_PATH\") /dev/urandom > \"$TMP_OUTPUT_DIR/big.bin\"\n";
    world.add_services(
        "full",
        &[
            ("secure-upper", "full-out"),
            ("upper.sh", "big.sh"),
            ("path: secure/", "path: full/"),
            ("examples/secure-tally", "examples/unused-full"),
            ("secure-tally", "unused-full"),
            ("path: tally/", "path: unusedfull/"),
        ],
        &[("big.sh", big.to_owned())],
    );

    // 1. The data directory fills up while the output is stored: fill it but for the store's
    //    reserve (a sixteenth of this 64 MiB file system) and 2 MiB, so the small input is
    //    taken, then make 4 MiB of output.
    let available = |path: &Path| {
        let out = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    let filler = data_fs.path.join("filler");
    let fill = available(&data_fs.path).saturating_sub((64 << 20) / 16 + (2 << 20));
    std::fs::write(&filler, vec![0u8; fill as usize]).unwrap();
    world.put_encrypted("full-out", b"4194304", "full/in/storing.txt");
    let (_, job, log) = world.job_for("full-out", 1, "full/in/storing.txt").await;
    assert_eq!(job["status"], "Failed", "{log}");
    assert!(log.contains("cannot upload output full/out/big.bin"), "{log}");
    assert!(log.contains("disk is full"), "{log}");
    assert!(world.raw_get("full", "out/big.bin").await.is_none());
    std::fs::remove_file(&filler).unwrap();

    // With room again, the same job succeeds: nothing was left half-done.
    world.put_encrypted("full-out", b"4194304", "full/in/room.txt");
    let (_, job, log) = world.job_for("full-out", 2, "full/in/room.txt").await;
    assert_eq!(job["status"], "Succeeded", "{log}");
    assert_eq!(world.get_decrypted("full/out/big.bin").len(), 4 << 20);

    // 2. 8 MiB of output in the 12 MiB plaintext folder, which could not hold it and a sealed
    //    copy at once (a job like it failed there while outputs were sealed to files first).
    world.put_encrypted("full-out", b"8388608", "full/in/streamed.txt");
    let (_, job, log) = world.job_for("full-out", 3, "full/in/streamed.txt").await;
    assert_eq!(job["status"], "Succeeded", "{log}");
    assert_eq!(world.get_decrypted("full/out/big.bin").len(), 8 << 20);
    world.server.stop();
    drop(plain_fs);
    drop(data_fs);
}

/// The container tests' images, built offline once per test process.
fn container_images() {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        ok(&Command::new(repo_root().join("scripts/container-test-images"))
            .output()
            .unwrap())
        .clear()
    });
}

fn rot13(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            'a'..='z' => (((c as u8 - b'a' + 13) % 26) + b'a') as char,
            'A'..='Z' => (((c as u8 - b'A' + 13) % 26) + b'A') as char,
            _ => c,
        })
        .collect()
}

/// The container executor runs a confidential job in its service's image with
/// `cloister-runtime` inside: it attests through the relay socket (the container has no
/// network), its plaintext lives in the container's own tmpfs, the program is the session's,
/// and only ciphertext leaves. The canary scan finds nothing on the host: data and plaintext
/// folders, the engine's storage, the API, processes' environments.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(has_podman), ignore = "podman or busybox-static is not installed")]
async fn a_confidential_job_runs_in_its_service_image_and_leaves_no_plaintext() {
    const TOOLS: &str = "localhost/cloister-test/tools:1";
    const HOSTILE_SCRIPT: &str = "localhost/cloister-test/hostile-script:1";
    container_images();
    let mut world = World::start_in(
        tempfile::tempdir().unwrap(),
        &["--executor", "container"],
        Some(TOOLS),
    )
    .await;
    let info = world.server.get_json("/system/info").await;
    assert_eq!(info["serverless_backend"]["name"], "container", "{info}");
    let server_id = info["simulation_platform_key"].as_str().unwrap()[..16].to_owned();
    // The session's script needs a tool only the image has: it cannot have run on the host.
    let rot = concat!(
        "set -eu\nname=$(basename \"$INPUT_FILE_PATH\")\n",
        "cloister-rot13 < \"$INPUT_FILE_PATH\" > \"$TMP_OUTPUT_DIR/$name\"\n",
        "echo \"rot13 of $name: $(head -n 1 \"$INPUT_FILE_PATH\")\"\n"
    );
    world.add_services(
        "rot",
        &[
            ("name: secure-upper", "name: secure-rot"),
            ("session: examples/secure-upper", "session: examples/secure-rot"),
            ("script: upper.sh", "script: rot.sh"),
            ("path: secure/in", "path: rot/in"),
            ("path: secure/out", "path: rot/out"),
        ],
        &[("rot.sh", rot.to_owned())],
    );

    let canary = format!("CANARY{}", uuid_like());
    let input = format!("patient {canary} heart rate 72\nsecond line\n");
    world.put_encrypted("secure-rot", input.as_bytes(), "rot/in/record.txt");
    let (name, job, log) = world.job_for("secure-rot", 1, "rot/in/record.txt").await;
    assert_eq!(job["status"], "Succeeded", "{log}");
    assert!(log.contains("attested to the CAS"), "{log}");
    assert!(log.contains("authenticated from cloister1x25519:"), "{log}");
    assert!(!log.contains(&canary), "{log}");
    assert_eq!(
        String::from_utf8(world.get_decrypted("rot/out/record.txt")).unwrap(),
        rot13(&input)
    );
    let sealed = ok(&world.sealed_log("secure-rot", &name));
    assert!(
        sealed.contains(&format!("rot13 of record.txt: patient {canary}")),
        "{sealed}"
    );
    assert!(
        common::podman(&[
            "ps",
            "--all",
            "--filter",
            &format!("label=cloister.server={server_id}"),
            "--format",
            "{{.ID}}"
        ])
        .stdout
        .is_empty(),
        "the job's container stayed"
    );

    // Nothing on the host holds the plaintext, the script's output or the session's secret.
    let info = ok(&common::podman(&[
        "info",
        "--format",
        "{{.Store.GraphRoot}} {{.Store.RunRoot}}",
    ]));
    let plain = world.dir.path().join("plain");
    let mut dirs = vec![world.server.dir.clone(), plain.clone()];
    dirs.extend(info.split_whitespace().map(PathBuf::from));
    for needle in [canary.clone(), rot13(&canary), "s3cr3t-stamp-0c5e".to_owned()] {
        let mut args = vec![
            "canary-scan",
            "--canary",
            &needle,
            "--api",
            "--processes",
            "--json",
        ];
        for dir in &dirs {
            args.extend(["--dir", dir.to_str().unwrap()]);
        }
        let scan = world.server.bench(&args);
        assert_eq!(
            scan.status.code(),
            Some(0),
            "{needle}: {}{}",
            String::from_utf8_lossy(&scan.stdout),
            String::from_utf8_lossy(&scan.stderr)
        );
    }
    assert!(
        common::files_under(&plain).is_empty(),
        "{:?}",
        common::files_under(&plain)
    );

    // An image whose user is not root: the plaintext tmpfs and the job folder are that user's.
    let mut user = world.server.get_json("/system/services/secure-upper").await;
    user["image"] = json!("localhost/cloister-test/user:1");
    let put = world
        .server
        .http()
        .put(world.server.url("/system/services"))
        .basic_auth(common::USER, Some(common::PASSWORD))
        .json(&user)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 204);
    world.put_encrypted("secure-upper", b"as a user\n", "secure/in/user.txt");
    let (_, job, log) = world.job_for("secure-upper", 1, "secure/in/user.txt").await;
    assert_eq!(job["status"], "Succeeded", "{log}");
    assert!(
        String::from_utf8(world.get_decrypted("secure/out/user.txt"))
            .unwrap()
            .starts_with("AS A USER\n")
    );

    // The image is the host's choice. One holding its own /cloister/script.sh (the path the
    // session's command names), with the platform's copy of the script changed as well, still
    // runs the session's script: the runtime runs the copy the CAS released.
    let mut changed = world.server.get_json("/system/services/secure-rot").await;
    changed["image"] = json!(HOSTILE_SCRIPT);
    changed["script"] = json!("echo HOSTILE > \"$TMP_OUTPUT_DIR/$(basename \"$INPUT_FILE_PATH\")\"\n");
    let put = world
        .server
        .http()
        .put(world.server.url("/system/services"))
        .basic_auth(common::USER, Some(common::PASSWORD))
        .json(&changed)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 204);
    world.put_encrypted("secure-rot", b"after the swap\n", "rot/in/swapped.txt");
    let (_, job, log) = world.job_for("secure-rot", 2, "rot/in/swapped.txt").await;
    assert_eq!(job["status"], "Succeeded", "{log}");
    assert_eq!(
        String::from_utf8(world.get_decrypted("rot/out/swapped.txt")).unwrap(),
        rot13("after the swap\n")
    );
}

/// A runtime without network reaches the CAS through a relay socket of the host's: the TLS
/// session and its pin are end to end, so a relay that leads to another CAS gets nothing
/// released, and one that leads to the right CAS works.
#[tokio::test(flavor = "multi_thread")]
async fn a_cas_relay_cannot_stand_in_for_the_cas() {
    let world = World::start().await;
    let other_dir = world.dir.path().join("other");
    std::fs::create_dir(&other_dir).unwrap();
    let other = start_cas(&other_dir, &world.cas.as_ref().unwrap().admin);
    let relay = |name: &str, to: &str| {
        let path = world.dir.path().join(format!("{name}.sock"));
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let to = to.trim_start_matches("https://").to_owned();
        tokio::spawn(async move {
            while let Ok((mut inside, _)) = listener.accept().await {
                let to = to.clone();
                tokio::spawn(async move {
                    let mut cas = tokio::net::TcpStream::connect(to).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut inside, &mut cas).await;
                });
            }
        });
        path
    };
    let plain = world.dir.path().join("plain-relay");
    let run = |name: &str, socket: &Path| -> (Option<i32>, Value, String) {
        let dir = world.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let job = json!({
            "job_name": "secure-upper-0193a5e27c4e7b8a9f00aabbccddeeff",
            "job_uuid": "0193a5e2-7c4e-7b8a-9f00-aabbccddeeff",
            "service": "secure-upper",
            "tee": "sim",
            "cas": world.cas_url,
            "cas_pin": world.cas_pin,
            "cas_socket": socket,
            "session": "examples/secure-upper",
            "cas_service": "secure-upper",
            "sim_platform_key": world.server.dir.join("sim-platform.key"),
            "event": "{}",
            "event_time": "2026-11-29T00:00:00Z",
            "timeout_secs": 3,
            "log_limit": 65536,
            "plain_root": plain,
            "volumes_dir": world.dir.path().join("volumes"),
        });
        std::fs::write(dir.join("job.json"), job.to_string()).unwrap();
        let out = Command::new(common::runtime_bin())
            .arg("--job")
            .arg(&dir)
            .env_clear()
            .output()
            .unwrap();
        let result: Value = serde_json::from_slice(&std::fs::read(dir.join("result.json")).unwrap()).unwrap();
        (
            out.status.code(),
            result,
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let released = || async {
        let admin = ClientIdentity::load(&world.admin_key).unwrap();
        let cas = CasClient::new(&world.cas_url, &world.cas_pin, Some(admin)).unwrap();
        let entries: Vec<cloister_cas_store::AuditEntry> = cas.audit(0).await.unwrap();
        entries.iter().filter(|e| e.kind == "secret-release").count()
    };
    let before = released().await;

    let elsewhere = relay("elsewhere", &other.url);
    let (code, result, stdout) = run("elsewhere", &elsewhere);
    assert_eq!(code, Some(8), "{stdout}");
    let reason = result["reason"].as_str().unwrap();
    assert!(
        reason.contains("TLS handshake") || reason.contains("attestation refused"),
        "{result}"
    );
    assert!(!stdout.contains("attested to the CAS"), "{stdout}");

    let genuine = relay("genuine", &world.cas_url);
    let (_, result, stdout) = run("genuine", &genuine);
    assert!(stdout.contains("attested to the CAS"), "{result} {stdout}");
    assert_eq!(released().await, before + 1);
    assert!(common::files_under(&plain).is_empty());
}
