//! The container executor end to end: a real server (`--executor container`) on loopback runs
//! each job in its service's image through a real Podman, with images built offline
//! (scripts/container-test-images). Ignored where Podman or busybox-static is missing, required
//! in CI (CLOISTER_REQUIRE_PODMAN=1, see build.rs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use object_store::{ObjectStoreExt, PutPayload};
use serde_json::{Value, json};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const BUSYBOX: &str = "localhost/cloister-test/busybox:1";
const TOOLS: &str = "localhost/cloister-test/tools:1";

/// Builds the test images once per test process (cheap when they exist).
fn images() {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let out = Command::new(repo_root().join("scripts/container-test-images"))
            .output()
            .expect("run scripts/container-test-images");
        assert!(
            out.status.success(),
            "cannot build the test images: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

fn container_server(dir: &std::path::Path, extra: &[&str]) -> Server {
    images();
    let mut args = vec!["--executor", "container"];
    args.extend_from_slice(extra);
    Server::start(dir, &args)
}

/// The label value a server puts on its containers: its data directory's id.
async fn server_id(server: &Server) -> String {
    let info = server.get_json("/system/info").await;
    assert_eq!(info["serverless_backend"]["name"], "container", "{info}");
    info["simulation_platform_key"].as_str().unwrap()[..16].to_owned()
}

/// IDs of the containers (running or not) labelled as `id`'s.
fn containers_of(id: &str) -> Vec<String> {
    let out = podman(&[
        "ps",
        "--all",
        "--filter",
        &format!("label=cloister.server={id}"),
        "--format",
        "{{.ID}}",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

async fn wait_for(what: &str, mut ready: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn create(server: &Server, service: Value) {
    let response = server.post_json("/system/services", &service).await;
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
}

/// Deletes `service` (and with it its warm containers).
async fn delete_service(server: &Server, service: &str) {
    let response = server
        .http()
        .delete(server.url(&format!("/system/services/{service}")))
        .basic_auth(USER, Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "delete {service}: {}",
        response.status()
    );
}

/// Starts a job of `service` with `body` as its input file.
async fn submit(server: &Server, service: &str, body: &str) {
    let token = server.token(service).await;
    let response = server
        .http()
        .post(server.url(&format!("/job/{service}")))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(B64.encode(body))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
}

/// Runs one job of `service` to its end: (status, reason, log).
async fn run_one(server: &Server, service: &str, body: &str) -> (String, String, String) {
    let before = server.all_jobs(service).await.len();
    submit(server, service, body).await;
    let jobs = server.wait_jobs(service, before + 1).await;
    let (name, job) = jobs.iter().max_by_key(|(name, _)| name.as_str()).unwrap();
    let log = server
        .get(&format!("/system/logs/{service}/{name}"))
        .await
        .text()
        .await
        .unwrap();
    let reason = server.get_json(&format!("/system/logs/{service}")).await["jobs"][name]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (job["status"].as_str().unwrap().to_owned(), reason, log)
}

async fn read_object(server: &Server, bucket: &str, key: &str) -> Vec<u8> {
    let object = server
        .s3_client(bucket)
        .get(&object_store::path::Path::from(key))
        .await;
    object.unwrap().bytes().await.unwrap().to_vec()
}

fn service(name: &str, image: &str, script: &str) -> Value {
    json!({"name": name, "image": image, "script": script, "memory": "64Mi", "cpu": "0.5",
        "output": [{"storage_provider": "minio.default", "path": format!("{name}/out")}]})
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(has_podman), ignore = "podman or busybox-static is not installed")]
async fn scripts_run_in_their_service_image_with_the_oscar_contract() {
    let dir = tempfile::tempdir().unwrap();
    let server = container_server(&dir.path().join("containers"), &[]);
    let host = Server::start(&dir.path().join("host"), &[]);
    let id = server_id(&server).await;

    // OSCAR's contract inside the image: the input staged, the output uploaded, the paths those
    // of the mount point, and nothing of the server's own environment (it has CLOISTER_LOG).
    let upper = concat!(
        "env | sort; name=$(basename \"$INPUT_FILE_PATH\"); ",
        "tr '[:lower:]' '[:upper:]' < \"$INPUT_FILE_PATH\" > \"$TMP_OUTPUT_DIR/$name\""
    );
    let mut upper_service = service("upper", BUSYBOX, &format!("echo \"tricky=[$TRICKY]\"; {upper}"));
    // A value the shell must not interpret on its way into the container.
    upper_service["environment"] = json!({"secrets": {"TRICKY": "it's $(echo run) `echo x` \"q\"\nline2"}});
    create(&server, upper_service).await;
    let (status, reason, log) = run_one(&server, "upper", "hello container\n").await;
    assert_eq!(status, "Succeeded", "{reason}\n{log}");
    assert!(
        log.contains("tricky=[it's $(echo run) `echo x` \"q\"\nline2]"),
        "{log}"
    );
    assert_eq!(
        read_object(&server, "upper", "out/input").await,
        b"HELLO CONTAINER\n"
    );
    assert!(log.contains("INPUT_FILE_PATH=/cloister/job/input/input"), "{log}");
    assert!(log.contains("TMP_OUTPUT_DIR=/cloister/job/output"), "{log}");
    assert!(log.contains("container=podman"), "not in a container: {log}");
    assert!(
        !log.contains("CLOISTER_LOG"),
        "the server's environment leaked: {log}"
    );

    // A synchronous invocation runs in the image too.
    let response = server
        .http()
        .post(server.url("/run/upper"))
        .bearer_auth(server.token("upper").await)
        .header("content-type", "application/json")
        .body(B64.encode("sync input\n"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer = response.text().await.unwrap();
    assert_eq!(B64.decode(answer.trim()).unwrap(), b"SYNC INPUT\n");
    // Finished containers do not stay behind.
    assert_eq!(containers_of(&id), Vec::<String>::new());

    // A tool only the image has: it works in the container, not on the host.
    let rot = "cloister-rot13 < \"$INPUT_FILE_PATH\" > \"$TMP_OUTPUT_DIR/out.txt\"";
    for server in [&server, &host] {
        create(server, service("rot", TOOLS, rot)).await;
    }
    let (status, reason, log) = run_one(&server, "rot", "Hello").await;
    assert_eq!(status, "Succeeded", "{reason}\n{log}");
    assert_eq!(read_object(&server, "rot", "out/out.txt").await, b"Uryyb");
    let (status, _, log) = run_one(&host, "rot", "Hello").await;
    assert_eq!(status, "Failed", "{log}");
    assert!(log.contains("not found"), "{log}");

    // An image that is not there, with the policy that forbids pulling it, fails the job.
    let mut absent = service("absent", "localhost/cloister-test/absent:1", "true");
    absent["image_pull_policy"] = json!("Never");
    create(&server, absent).await;
    let (status, reason, _) = run_one(&server, "absent", "x").await;
    assert_eq!(status, "Failed");
    assert!(reason.contains("image_pull_policy is Never"), "{reason}");
    // A GPU where the host has none (no CDI spec) is a clear failure, never a run without it.
    if !std::path::Path::new("/etc/cdi").exists() && !std::path::Path::new("/var/run/cdi").exists() {
        let mut gpu = service("gpu", BUSYBOX, "echo ran-without-gpu");
        gpu["enable_gpu"] = json!(true);
        create(&server, gpu).await;
        let (status, reason, log) = run_one(&server, "gpu", "x").await;
        assert_eq!(status, "Failed");
        assert!(reason.contains("enable_gpu"), "{reason}");
        assert!(!log.contains("ran-without-gpu"), "{log}");
    }
    // A pull secret the server does not have is named in the failure, not skipped.
    let mut secret = service("secret", "registry.invalid/app:1", "true");
    secret["image_pull_secrets"] = json!(["regcred"]);
    create(&server, secret).await;
    let (status, reason, _) = run_one(&server, "secret", "x").await;
    assert_eq!(status, "Failed");
    assert!(reason.contains("pull secret \"regcred\""), "{reason}");
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(has_podman), ignore = "podman or busybox-static is not installed")]
async fn an_upload_runs_under_the_runtime_in_its_container_over_its_own_socket() {
    let dir = tempfile::tempdir().unwrap();
    let server = container_server(dir.path(), &[]);
    let id = server_id(&server).await;
    // The script looks at what started it, and for the credential where it was handed over.
    let script = concat!(
        "echo \"pid1=$(tr '\\000' ' ' < /proc/1/cmdline)\"; echo \"parent=$(tr '\\000' ' ' < /proc/$PPID/cmdline)\"; ",
        "ls -a /cloister/ctl /cloister/sock; test -e /cloister/ctl/job.json && echo job-file-visible; ",
        // The S3 socket is the runtime's way out: a script that could replace it could fake
        // its job's uploads.
        "for s in /cloister/ctl/s3.sock /cloister/sock/s3.sock; do if test -S \"$s\"; then ",
        "rm -f \"$s\" 2> /dev/null; test -e \"$s\" || echo \"socket-gone=$s\"; fi; done; ",
        "mkdir /cloister/sock/x 2> /dev/null && echo socket-folder-writable; ",
        "cat /proc/$PPID/environ > /dev/null 2>&1 && echo runtime-environ-readable; ",
        "echo forged 2> /dev/null > /proc/$PPID/fd/1 && echo runtime-stdout-writable; ",
        "echo forged 2> /dev/null > /proc/1/fd/1 && echo init-stdout-writable; ",
        "cat /proc/1/environ > /dev/null 2>&1 && echo init-environ-readable; ",
        "readlink /proc/$PPID/fd/1 > /dev/null 2>&1 && echo runtime-fds-readable; ",
        "env | grep -i -e aws -e secret; ",
        "grep -c : /proc/net/dev | sed 's/^/interfaces=/'; ",
        "name=$(basename \"$INPUT_FILE_PATH\"); ",
        "tr '[:lower:]' '[:upper:]' < \"$INPUT_FILE_PATH\" > \"$TMP_OUTPUT_DIR/$name\""
    );
    let mut svc = service("staged", BUSYBOX, script);
    svc["input"] = json!([{"storage_provider": "minio.default", "path": "staged/in"}]);
    create(&server, svc).await;
    server
        .s3_client("staged")
        .put(
            &object_store::path::Path::from("in/note.txt"),
            "through the socket\n".into(),
        )
        .await
        .unwrap();
    let jobs = server.wait_jobs("staged", 1).await;
    let (name, job) = jobs.iter().next().unwrap();
    let log = server
        .get(&format!("/system/logs/staged/{name}"))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(job["status"], "Succeeded", "{job}\n{log}");
    // The container's first program is cloister-runtime, and the script the child of its
    // worker (PID 1 only reaps).
    assert!(log.contains("pid1=/cloister/runtime/"), "{log}");
    assert!(
        log.contains("/cloister/runtime/cloister-runtime --container-job /cloister/ctl"),
        "{log}"
    );
    // The output went up through the runtime, with the job's credential, over the socket.
    assert_eq!(
        read_object(&server, "staged", "out/note.txt").await,
        b"THROUGH THE SOCKET\n"
    );
    assert!(log.contains("cloister: uploaded 1 output object(s)"), "{log}");
    // The socket is where the runtime left it, in a folder the script cannot change.
    assert!(!log.contains("socket-gone="), "{log}");
    assert!(!log.contains("socket-folder-writable"), "{log}");
    // Only the socket is left in the control folders; the credential is nowhere the script
    // could read it: not in a file, not in its environment, not in the runtime's /proc; nor can
    // it write to the runtime's standard output, where the result goes.
    assert!(log.contains("s3.sock"), "{log}");
    let leaks = [
        "job-file-visible",
        "runtime-environ-readable",
        "runtime-stdout-writable",
        "init-stdout-writable",
        "init-environ-readable",
        "runtime-fds-readable",
        "AWS_",
    ];
    for leak in leaks {
        assert!(!log.contains(leak), "{leak}: {log}");
    }
    assert!(!names_a_credential(&log), "{log}");
    // No network but the loopback: `lo` and the header lines of /proc/net/dev.
    assert!(log.contains("interfaces=1\n"), "{log}");
    let record = server.get_json("/system/logs/staged").await.to_string();
    assert!(!names_a_credential(&record), "{record}");
    assert_eq!(containers_of(&id), Vec::<String>::new());
}

/// Whether `text` holds a job credential's access key id (`CJ` and 32 hex digits).
fn names_a_credential(text: &str) -> bool {
    text.match_indices("CJ").any(|(at, _)| {
        let id = &text[at + 2..];
        id.len() >= 32 && id.as_bytes()[..32].iter().all(u8::is_ascii_hexdigit)
    })
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(has_podman), ignore = "podman or busybox-static is not installed")]
async fn the_root_is_read_only_and_the_network_is_off_unless_asked() {
    let dir = tempfile::tempdir().unwrap();
    let server = container_server(dir.path(), &[]);

    // /tmp is writable, the root is not.
    let ro = "echo scratch > /tmp/t && cat /tmp/t && echo x > /evil && echo wrote-root";
    create(&server, service("readonly", BUSYBOX, ro)).await;
    let (status, _, log) = run_one(&server, "readonly", "x").await;
    assert_eq!(status, "Failed", "{log}");
    assert!(log.contains("scratch"), "{log}");
    assert!(log.contains("Read-only file system"), "{log}");
    assert!(!log.contains("wrote-root"), "{log}");

    // A listener on every address of this host; each connection is answered and counted.
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = std::io::Write::write_all(&mut &stream, b"reached-the-host\n");
        }
    });
    // With the network asked for, the job reaches the host through its gateway.
    let dial = "gw=${HOST:-$(ip route | awk '/default/ {print $3}')}; echo \"host=$gw\"; \
                echo hi | nc -w 3 \"$gw\" \"$PORT\"";
    let mut online = service("online", BUSYBOX, dial);
    online["enable_network"] = json!(true);
    online["environment"] = json!({"variables": {"PORT": port.to_string()}});
    create(&server, online).await;
    let (status, reason, log) = run_one(&server, "online", "x").await;
    assert_eq!(status, "Succeeded", "{reason}\n{log}");
    assert!(log.contains("reached-the-host"), "{log}");
    let host_address = log
        .lines()
        .find_map(|l| l.split("host=").nth(1))
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);

    // By default the same address cannot be reached.
    let mut offline = service("offline", BUSYBOX, dial);
    offline["environment"] = json!({"variables": {"PORT": port.to_string(), "HOST": host_address}});
    create(&server, offline).await;
    let (status, _, log) = run_one(&server, "offline", "x").await;
    assert_eq!(status, "Failed", "{log}");
    assert!(!log.contains("reached-the-host"), "{log}");
    assert!(log.contains("Network is unreachable"), "{log}");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// The host ids a job's container ids 0–65535 map to, from the `uid_map` or `gid_map` line its
/// script printed after `label`.
fn mapped_ids(log: &str, label: &str) -> (u64, u64, u64) {
    let line = log
        .lines()
        .find_map(|l| l.split_once(label).map(|(_, rest)| rest.to_owned()))
        .unwrap_or_else(|| panic!("no {label} line in {log}"));
    let numbers: Vec<u64> = line.split_whitespace().map(|n| n.parse().unwrap()).collect();
    (numbers[0], numbers[1], numbers[2])
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(has_podman), ignore = "podman or busybox-static is not installed")]
async fn a_containers_root_is_an_unprivileged_host_id_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let server = container_server(dir.path(), &[]);
    // Root inside, writing its mounted folders (the work directory, the output upload).
    let script = "echo \"uid_map: $(cat /proc/self/uid_map)\"; echo \"gid_map: $(cat /proc/self/gid_map)\"; \
                  echo \"id: $(id -u)\"; echo done > \"$TMP_OUTPUT_DIR/done\"";
    create(&server, service("mapped", BUSYBOX, script)).await;
    let mut firsts = Vec::new();
    for _ in 0..2 {
        let (status, reason, log) = run_one(&server, "mapped", "x").await;
        assert_eq!(status, "Succeeded", "{reason}\n{log}");
        assert!(log.contains("id: 0"), "{log}");
        for label in ["uid_map: ", "gid_map: "] {
            // Unmapped, root's line is `0 0 4294967295`: the host's root on every mount.
            let (inside, host, count) = mapped_ids(&log, label);
            assert_eq!((inside, count), (0, 65536), "{log}");
            assert!((0x1000_0000..0x8000_0000).contains(&host), "{log}");
        }
        firsts.push(mapped_ids(&log, "uid_map: ").1);
    }
    // Each container gets ids of its own (two of 24,576 blocks drawn at random).
    assert_ne!(firsts[0], firsts[1]);
    assert_eq!(read_object(&server, "mapped", "out/done").await, b"done\n");
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(has_podman), ignore = "podman or busybox-static is not installed")]
async fn the_memory_limit_is_the_containers() {
    let dir = tempfile::tempdir().unwrap();
    let server = container_server(dir.path(), &[]);
    // 64 MB held by the shell against a 32 MiB limit.
    let hog = "x=$(head -c 64000000 /dev/zero | tr '\\0' a); echo survived";
    let mut hungry = service("hungry", BUSYBOX, hog);
    hungry["memory"] = json!("32Mi");
    create(&server, hungry).await;
    let (status, reason, log) = run_one(&server, "hungry", "x").await;
    assert_eq!(status, "Failed", "{log}");
    assert!(!log.contains("survived"), "{log}");
    assert!(reason.contains("signal 9"), "{reason}");
    // The same script within a larger limit survives: the limit is what killed it.
    let mut fed = service("fed", BUSYBOX, hog);
    fed["memory"] = json!("512Mi");
    create(&server, fed).await;
    let (status, reason, log) = run_one(&server, "fed", "x").await;
    assert_eq!(status, "Succeeded", "{reason}\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(has_podman), ignore = "podman or busybox-static is not installed")]
async fn a_timed_out_jobs_container_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let server = container_server(dir.path(), &["--job-timeout", "2s"]);
    let id = server_id(&server).await;
    create(&server, service("sleepy", BUSYBOX, "echo sleeping; sleep 60")).await;
    let (status, reason, log) = run_one(&server, "sleepy", "x").await;
    assert_eq!(status, "Failed", "{log}");
    assert!(reason.contains("timed out"), "{reason}");
    assert_eq!(containers_of(&id), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(has_podman), ignore = "podman or busybox-static is not installed")]
async fn a_cancelled_jobs_container_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let server = container_server(dir.path(), &[]);
    let id = server_id(&server).await;
    create(&server, service("sleepy", BUSYBOX, "sleep 600")).await;
    submit(&server, "sleepy", "x").await;
    wait_for("the job's container", async || containers_of(&id).len() == 1).await;
    let jobs = server.all_jobs("sleepy").await;
    let name = jobs.keys().next().unwrap();
    let response = server
        .http()
        .delete(server.url(&format!("/system/logs/sleepy/{name}")))
        .basic_auth(USER, Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    wait_for("the container's removal", async || containers_of(&id).is_empty()).await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(has_podman), ignore = "podman or busybox-static is not installed")]
async fn a_restarted_server_removes_what_its_crash_left_and_runs_the_job_once_more() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = container_server(dir.path(), &["--job-timeout", "3s"]);
    let id = server_id(&server).await;
    create(&server, service("sleepy", BUSYBOX, "echo started; sleep 600")).await;
    submit(&server, "sleepy", "x").await;
    wait_for("the job's container", async || containers_of(&id).len() == 1).await;
    let orphan = containers_of(&id).remove(0);
    // kill -9: the engine's monitor keeps the container running without its server.
    server.restart_after_crash();
    let gone = !podman(&["container", "exists", &orphan]).status.success();
    assert!(gone, "the crashed run's container {orphan} is still there");
    // The job was running: it runs again (and times out), under the same single record.
    let jobs = server.wait_jobs("sleepy", 1).await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let job = jobs.values().next().unwrap();
    assert_eq!(job["status"], "Failed", "{job}");
    assert_eq!(containers_of(&id), Vec::<String>::new());
}

/// Names of the warm containers labelled as `id`'s.
fn warm_containers_of(id: &str) -> Vec<String> {
    let out = podman(&[
        "ps",
        "--all",
        "--filter",
        &format!("label=cloister.server={id}"),
        "--format",
        "{{.Names}}",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|n| n.starts_with("cloister-warm-"))
        .map(str::to_owned)
        .collect();
    names.sort();
    names
}

/// `POST /run/{service}` with `body`: (status, answer decoded when it is base64).
async fn invoke(server: &Server, service: &str, body: &str) -> (u16, String) {
    let response = server
        .http()
        .post(server.url(&format!("/run/{service}")))
        .bearer_auth(server.token(service).await)
        .header("content-type", "application/json")
        .body(B64.encode(body))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let text = B64
        .decode(text.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or(text);
    (status, text)
}

fn warm_service(name: &str, script: &str, replicas: u32) -> Value {
    json!({"name": name, "image": BUSYBOX, "script": script, "memory": "64Mi", "cpu": "0.5",
        "synchronous": {"min_scale": replicas, "max_scale": replicas}})
}

/// What an invocation sees of its container: its first program, what earlier invocations left
/// (files in the scratch folders, in its home, in the control folder; processes), then what it
/// leaves for the next one.
const PROBE: &str = concat!(
    "echo \"pid1=$(tr '\\000' ' ' < /proc/1/cmdline)\"; echo \"home=$HOME\"; ",
    "for f in /tmp/left /var/tmp/left /run/left /dev/shm/left \"$HOME/left\" \"$TMP_OUTPUT_DIR/left\" ",
    "/cloister/ctl/left; do test -e \"$f\" && echo \"leftover=$f\"; done; ",
    "echo \"ctl=$(ls -A /cloister/ctl | tr '\\n' ' ')\"; ",
    "n=0; for f in /proc/[0-9]*/cmdline; do case \"$(tr '\\000' ' ' < \"$f\" 2>/dev/null)\" in ",
    "'sleep 600 ') n=$((n+1));; esac; done; echo \"sleepers=$n\"; ",
    "for f in /tmp/left /var/tmp/left /run/left /dev/shm/left \"$HOME/left\"; do echo x > \"$f\"; done; ",
    "mkdir -p /tmp/deep/er && echo x > /tmp/deep/er/left; ",
    "echo x > /cloister/ctl/left 2>/dev/null && echo wrote-ctl; ",
    "sleep 600 & setsid sleep 600 > /dev/null 2>&1 & ",
    "echo \"input=$(tr '[:lower:]' '[:upper:]' < \"$INPUT_FILE_PATH\")\""
);

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(has_podman), ignore = "podman or busybox-static is not installed")]
async fn a_warm_container_answers_run_and_keeps_invocations_apart() {
    let dir = tempfile::tempdir().unwrap();
    let server = container_server(dir.path(), &[]);
    let id = server_id(&server).await;
    create(&server, warm_service("warm", PROBE, 1)).await;
    wait_for("the warm container", async || warm_containers_of(&id).len() == 1).await;
    let container = warm_containers_of(&id);

    let mut answers = Vec::new();
    for input in ["first", "second", "third"] {
        let started = Instant::now();
        let (status, answer) = invoke(&server, "warm", input).await;
        assert_eq!(status, 200, "{answer}");
        assert!(
            answer.contains(&format!("input={}", input.to_uppercase())),
            "{answer}"
        );
        answers.push((answer, started.elapsed()));
    }
    // The runtime is the container's first program, and the same container took each one.
    for (answer, _) in &answers {
        assert!(answer.contains("--warm /cloister/ctl"), "{answer}");
        assert!(answer.contains("home=/cloister/job\n"), "{answer}");
        // Nothing an earlier invocation left is there: no file, no process; the control folder
        // is empty and read-only.
        assert!(!answer.contains("leftover="), "{answer}");
        assert!(answer.contains("sleepers=0\n"), "{answer}");
        assert!(
            answer.contains("ctl= \n") || answer.contains("ctl=\n"),
            "{answer}"
        );
        assert!(!answer.contains("wrote-ctl"), "{answer}");
    }
    assert_eq!(warm_containers_of(&id), container);
    // No cold container ran meanwhile: the only one there is the warm one.
    assert_eq!(containers_of(&id).len(), 1);

    // A service with no min_scale runs each invocation cold, in a container of its own.
    create(&server, warm_service("cold", PROBE, 0)).await;
    let (status, answer) = invoke(&server, "cold", "cold").await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("input=COLD"), "{answer}");
    assert!(!answer.contains("--warm"), "{answer}");
    assert_eq!(warm_containers_of(&id), container);
    // A failing script fails the invocation and the container stays for the next.
    create(&server, warm_service("failing", "echo failing; exit 3", 1)).await;
    wait_for("the second service's warm container", async || {
        warm_containers_of(&id).len() == 2
    })
    .await;
    let both = warm_containers_of(&id);
    let (status, answer) = invoke(&server, "failing", "x").await;
    assert_eq!(status, 500, "{answer}");
    assert!(answer.contains("exited with code 3"), "{answer}");
    assert_eq!(warm_containers_of(&id), both);

    // Deleting a service removes its containers.
    for service in ["warm", "failing"] {
        delete_service(&server, service).await;
    }
    wait_for("the warm containers' removal", async || {
        containers_of(&id).is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(has_podman), ignore = "podman or busybox-static is not installed")]
async fn warm_containers_are_replaced_when_they_die_or_the_service_changes() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = container_server(dir.path(), &[]);
    let id = server_id(&server).await;
    let script = "echo \"colour=$COLOUR\"; cat \"$INPUT_FILE_PATH\"";
    let mut svc = warm_service("paint", script, 2);
    svc["environment"] = json!({"variables": {"COLOUR": "red"}});
    create(&server, svc.clone()).await;
    wait_for("two warm containers", async || warm_containers_of(&id).len() == 2).await;
    let first = warm_containers_of(&id);

    // A killed container is replaced.
    let killed = podman(&["kill", &first[0]]);
    assert!(
        killed.status.success(),
        "{}",
        String::from_utf8_lossy(&killed.stderr)
    );
    wait_for("the killed container's replacement", async || {
        let now = warm_containers_of(&id);
        now.len() == 2 && !now.contains(&first[0])
    })
    .await;
    assert!(warm_containers_of(&id).contains(&first[1]));
    let (status, answer) = invoke(&server, "paint", "canvas").await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("colour=red\ncanvas"), "{answer}");

    // An update replaces the pool.
    let before = warm_containers_of(&id);
    svc["environment"] = json!({"variables": {"COLOUR": "blue"}});
    let response = server
        .http()
        .put(server.url("/system/services"))
        .basic_auth(USER, Some(PASSWORD))
        .json(&svc)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    wait_for("the new pool", async || {
        let now = warm_containers_of(&id);
        now.len() == 2 && now.iter().all(|n| !before.contains(n))
    })
    .await;
    let (status, answer) = invoke(&server, "paint", "canvas").await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("colour=blue"), "{answer}");

    // A crash leaves them to the next start, which removes them and starts the pool anew.
    let orphans = warm_containers_of(&id);
    server.restart_after_crash();
    wait_for("the pool after the restart", async || {
        let now = warm_containers_of(&id);
        now.len() == 2 && now.iter().all(|n| !orphans.contains(n))
    })
    .await;
    let (status, answer) = invoke(&server, "paint", "again").await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("colour=blue\nagain"), "{answer}");

    // A server that stops removes its warm containers (one still starting ends itself as its
    // connection to the server does).
    server.stop();
    wait_for("the warm containers' removal", async || {
        containers_of(&id).is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(has_podman), ignore = "podman or busybox-static is not installed")]
async fn the_runtime_as_pid_1_reaps_orphans_and_the_job_ends() {
    let dir = tempfile::tempdir().unwrap();
    let server = container_server(dir.path(), &[]);
    // Orphans re-parented to PID 1 that have exited: zombies unless PID 1 reaps them. A
    // background process that left the job's process group still holds the job's output.
    let script = concat!(
        "(sleep 0.2 &); (sleep 0.2 &); setsid sleep 600 & sleep 1; ",
        "echo \"zombies=$(grep -l 'State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l)\"; ",
        "echo \"pid1=$(tr '\\000' ' ' < /proc/1/cmdline)\""
    );
    create(&server, service("orphans", BUSYBOX, script)).await;
    let started = Instant::now();
    let (status, reason, log) = run_one(&server, "orphans", "x").await;
    assert_eq!(status, "Succeeded", "{reason}\n{log}");
    assert!(log.contains("--container-job"), "{log}");
    assert!(log.contains("zombies=0\n"), "{log}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    // The same in a warm container, whose life outlasts the invocation.
    create(&server, warm_service("orphans-warm", script, 1)).await;
    let id = server_id(&server).await;
    wait_for("the warm container", async || warm_containers_of(&id).len() == 1).await;
    for _ in 0..2 {
        let (status, answer) = invoke(&server, "orphans-warm", "x").await;
        assert_eq!(status, 200, "{answer}");
        assert!(answer.contains("zombies=0\n"), "{answer}");
        assert!(answer.contains("--warm"), "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(has_podman), ignore = "podman or busybox-static is not installed")]
async fn a_crash_mid_job_reruns_it_to_success_and_keeps_queued_jobs_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = container_server(dir.path(), &["--concurrency", "1"]);
    let id = server_id(&server).await;
    let script = concat!(
        "echo \"run of $(cat \"$INPUT_FILE_PATH\")\"; sleep 3; ",
        "cp \"$INPUT_FILE_PATH\" \"$TMP_OUTPUT_DIR/$(cat \"$INPUT_FILE_PATH\").txt\""
    );
    create(&server, service("steady", BUSYBOX, script)).await;
    // One job runs, the other waits for the only worker.
    submit(&server, "steady", "first").await;
    submit(&server, "steady", "second").await;
    wait_for("the first job's container", async || {
        containers_of(&id).len() == 1
    })
    .await;
    let orphan = containers_of(&id).remove(0);
    server.restart_after_crash();
    assert!(
        !podman(&["container", "exists", &orphan]).status.success(),
        "the crashed run's container {orphan} is still there"
    );
    // Both run to their end after the restart, each under its one record.
    let jobs = server.wait_jobs("steady", 2).await;
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    for (name, job) in &jobs {
        let log = server
            .get(&format!("/system/logs/steady/{name}"))
            .await
            .text()
            .await
            .unwrap();
        assert_eq!(job["status"], "Succeeded", "{job}\n{log}");
        // The record's log is the run that finished, not the interrupted one's too.
        assert_eq!(log.matches("run of ").count(), 1, "{log}");
    }
    for input in ["first", "second"] {
        assert_eq!(
            read_object(&server, "steady", &format!("out/{input}.txt")).await,
            input.as_bytes()
        );
    }
    assert_eq!(containers_of(&id), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(has_podman), ignore = "podman or busybox-static is not installed")]
async fn auto_picks_containers_where_an_engine_works_and_says_why_not_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let server = container_server(&dir.path().join("found"), &[]);
    let auto = Server::start(&dir.path().join("auto"), &["--executor", "auto"]);
    let info = auto.get_json("/system/info").await;
    assert_eq!(info["serverless_backend"]["name"], "container", "{info}");
    // And `auto` is what a server given no `--executor` runs with.
    let help = Command::new(bin()).args(["server", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let executor = help.split("--executor <EXECUTOR>").nth(1).unwrap_or_default();
    assert!(
        executor
            .split("--container-engine")
            .next()
            .unwrap_or_default()
            .contains("[default: auto]"),
        "{help}"
    );
    drop((server, auto));
    // An engine that does not work: the host executor, and the log says why.
    let log = dir.path().join("broken.log");
    let broken = Server::start_logged(
        &dir.path().join("broken"),
        &["--executor", "auto", "--container-engine", "/bin/false"],
        &log,
    );
    let info = broken.get_json("/system/info").await;
    assert_eq!(info["serverless_backend"]["name"], "local", "{info}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("plain jobs run on this host") && text.contains("/bin/false"),
        "{text}"
    );
    // Asked for explicitly, a broken engine stops the server instead.
    let mut refused = Command::new(bin())
        .args([
            "server",
            "--executor",
            "container",
            "--container-engine",
            "/bin/false",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("refused"))
        .args(["--listen", "127.0.0.1:0", "--s3-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    refused.stderr.truncate(4096);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("container"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(has_podman), ignore = "podman or busybox-static is not installed")]
async fn an_image_whose_user_is_not_root_runs_jobs_and_run() {
    const USER_IMAGE: &str = "localhost/cloister-test/user:1";
    let dir = tempfile::tempdir().unwrap();
    let server = container_server(dir.path(), &[]);
    let script = concat!(
        "echo \"uid=$(id -u)\"; name=$(basename \"$INPUT_FILE_PATH\"); echo scratch > \"$TMPDIR/t\"; ",
        "tr '[:lower:]' '[:upper:]' < \"$INPUT_FILE_PATH\" > \"$TMP_OUTPUT_DIR/$name\""
    );
    create(&server, service("app", USER_IMAGE, script)).await;
    let (status, reason, log) = run_one(&server, "app", "as a user\n").await;
    assert_eq!(status, "Succeeded", "{reason}\n{log}");
    assert!(log.contains("uid=1000\n"), "{log}");
    assert_eq!(read_object(&server, "app", "out/input").await, b"AS A USER\n");
    // Its folders were handed to uid 1000, which may be someone else on this host: none of
    // them can be reached through the work root.
    let work_root = std::fs::metadata(dir.path().join("work")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&work_root.permissions()) & 0o077,
        0
    );
    // `/run`, cold and warm.
    let mut warm = warm_service("app-warm", script, 1);
    warm["image"] = json!(USER_IMAGE);
    create(&server, warm).await;
    let id = server_id(&server).await;
    for service in ["app", "app-warm"] {
        if service == "app-warm" {
            wait_for("the warm container", async || warm_containers_of(&id).len() == 1).await;
        }
        for _ in 0..2 {
            let (status, answer) = invoke(&server, service, "sync").await;
            assert_eq!(status, 200, "{service}: {answer}");
            assert_eq!(answer, "SYNC", "{service}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(has_podman), ignore = "podman or busybox-static is not installed")]
async fn a_warm_invocation_that_times_out_leaves_its_container_for_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let server = container_server(dir.path(), &["--job-timeout", "2s"]);
    let id = server_id(&server).await;
    let script = "if [ \"$(cat \"$INPUT_FILE_PATH\")\" = slow ]; then setsid sleep 60; fi; echo fine";
    create(&server, warm_service("slow", script, 1)).await;
    wait_for("the warm container", async || warm_containers_of(&id).len() == 1).await;
    let container = warm_containers_of(&id);
    let started = Instant::now();
    let (status, answer) = invoke(&server, "slow", "slow").await;
    assert_eq!(status, 500, "{answer}");
    assert!(answer.contains("timed out after 2 s"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let (status, answer) = invoke(&server, "slow", "quick").await;
    assert_eq!((status, answer.as_str()), (200, "fine\n"));
    assert_eq!(warm_containers_of(&id), container);
}

/// An image cannot put its code into the runtime that starts its jobs (which holds the job's
/// credential and reports its result): neither with `ENV LD_PRELOAD` nor with an
/// `/etc/ld.so.preload` naming a library that would end PID 1 at once. The image's variables
/// still reach the script. (And the container has its pid limit.)
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(has_podman), ignore = "podman or busybox-static is not installed")]
async fn an_image_cannot_load_its_code_into_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let server = container_server(dir.path(), &[]);
    for (name, image) in [
        ("preload-env", "localhost/cloister-test/preload-env:1"),
        ("preload-file", "localhost/cloister-test/preload-file:1"),
    ] {
        let script = concat!(
            "echo \"image-var=[$CLOISTER_IMAGE_VAR] container=$container\"; ",
            "echo \"pids-max=$(cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max)\"; ",
            "cp \"$INPUT_FILE_PATH\" \"$TMP_OUTPUT_DIR/copy\""
        );
        create(&server, service(name, image, script)).await;
        let (status, reason, log) = run_one(&server, name, "kept\n").await;
        assert_eq!(
            status, "Succeeded",
            "{name}: the image's library ran in the runtime: {reason}\n{log}"
        );
        assert_eq!(read_object(&server, name, "out/copy").await, b"kept\n");
        // A fork bomb is held by the container's pid limit, which holds root too.
        assert!(log.contains("pids-max=4096\n"), "{log}");
        if name == "preload-env" {
            assert!(log.contains("image-var=[from-image] container=podman"), "{log}");
        }
        // A warm container's runtime too: it starts (and answers) without the library, and
        // its invocations get the image's variables.
        let warm = format!("{name}-warm");
        let probe = "tr '\\000' ' ' < /proc/1/cmdline; echo; echo \"image-var=[$CLOISTER_IMAGE_VAR]\"";
        let mut svc = warm_service(&warm, probe, 1);
        svc["image"] = json!(image);
        create(&server, svc).await;
        let id = server_id(&server).await;
        wait_for("the warm container", async || warm_containers_of(&id).len() == 1).await;
        let (status, answer) = invoke(&server, &warm, "warm\n").await;
        assert_eq!(status, 200, "{name}: {answer}");
        // Served by the warm container (a failed start would have run it cold).
        assert!(answer.contains("--warm /cloister/ctl"), "{name}: {answer}");
        if name == "preload-env" {
            assert!(answer.contains("image-var=[from-image]"), "{answer}");
        }
        delete_service(&server, &warm).await;
        wait_for("the warm container's removal", async || {
            warm_containers_of(&id).is_empty()
        })
        .await;
    }
}

/// A `/run` script that replaces its output folder with a link to the folder above it (on the
/// host: the work root, beside other jobs' control folders and the data directory) gets an
/// error, not the files there.
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(has_podman), ignore = "podman or busybox-static is not installed")]
async fn a_run_cannot_answer_with_host_files_through_a_linked_output_folder() {
    let dir = tempfile::tempdir().unwrap();
    let server = container_server(dir.path(), &[]);
    let script = "rmdir \"$TMP_OUTPUT_DIR\" && ln -s .. \"$TMP_OUTPUT_DIR\" && ls -la /cloister/job/";
    create(&server, service("linker", BUSYBOX, script)).await;
    // Something to find up there if the link were followed.
    std::fs::write(dir.path().join("host-secret.txt"), "HOST-SECRET").unwrap();
    let response = server
        .http()
        .post(server.url("/run/linker"))
        .bearer_auth(server.token("linker").await)
        .header("content-type", "application/json")
        .body(B64.encode("x"))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let answer = response.text().await.unwrap();
    assert!(!status.is_success(), "{status}: {answer}");
    assert!(answer.contains("output folder is not a folder"), "{answer}");
    let decoded = B64.decode(answer.trim()).unwrap_or_default();
    for text in [answer.as_bytes(), &decoded] {
        let text = String::from_utf8_lossy(text);
        assert!(
            !text.contains("HOST-SECRET") && !text.contains("job.json"),
            "{text}"
        );
    }
}

/// The examples of the README (uppercase, wordcount's suffix filter, the two-service pipeline)
/// run in their image, `docker.io/library/busybox:1.36`, made present by
/// `scripts/example-images` (pulled, or its offline stand-in).
#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(has_podman), ignore = "podman or busybox-static is not installed")]
async fn the_examples_run_in_their_images() {
    let out = Command::new(repo_root().join("scripts/example-images"))
        .arg("podman")
        .output()
        .expect("run scripts/example-images");
    assert!(
        out.status.success(),
        "cannot make the examples' image present: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let server = container_server(dir.path(), &[]);
    let id = server_id(&server).await;
    for example in ["uppercase", "wordcount", "pipeline"] {
        let fdl = repo_root().join(format!("examples/{example}/fdl.yaml"));
        let applied = server.cli(&["apply", fdl.to_str().unwrap()]);
        assert!(
            applied.status.success(),
            "{}",
            String::from_utf8_lossy(&applied.stderr)
        );
    }
    let put = |bucket: &'static str, key: &'static str, body: &'static [u8]| {
        let store = server.s3_client(bucket);
        async move {
            store
                .put(
                    &object_store::path::Path::from(key),
                    PutPayload::from_static(body),
                )
                .await
                .unwrap();
        }
    };
    put("uppercase", "in/note.txt", b"hello cloister\n").await;
    put("wordcount", "in/skip.csv", b"a,b\n").await;
    put("wordcount", "in/words.txt", b"the cat and the hat\n").await;
    put("pipeline", "in/data.txt", b"some data to compress\n").await;
    for service in ["uppercase", "wordcount", "compress", "checksum"] {
        let jobs = server.wait_jobs(service, 1).await;
        assert!(
            jobs.values().all(|j| j["status"] == "Succeeded"),
            "{service}: {jobs:?}"
        );
        // Each job ran in a container of the server, which is gone once it ended.
        let log = server.get_json(&format!("/system/logs/{service}")).await;
        assert_eq!(log["jobs"].as_object().unwrap().len(), 1, "{service}: {log}");
    }
    wait_for("the jobs' containers to be gone", async || {
        containers_of(&id).is_empty()
    })
    .await;
    assert_eq!(
        read_object(&server, "uppercase", "out/note.txt").await,
        b"HELLO CLOISTER\n"
    );
    assert_eq!(
        String::from_utf8(read_object(&server, "wordcount", "out/words/counts.txt").await).unwrap(),
        "lines 1\nwords 5\nbytes 20\n"
    );
    let digest = read_object(&server, "pipeline", "out/data.txt.gz.sha256").await;
    let gz = read_object(&server, "pipeline", "stage/data.txt.gz").await;
    let gz_file = dir.path().join("data.txt.gz");
    std::fs::write(&gz_file, &gz).unwrap();
    let sum = Command::new("sha256sum").arg(&gz_file).output().unwrap();
    let expected = String::from_utf8(sum.stdout).unwrap();
    assert_eq!(
        String::from_utf8(digest).unwrap().trim(),
        expected.split_whitespace().next().unwrap()
    );
}
