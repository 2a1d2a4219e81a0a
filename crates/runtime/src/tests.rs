use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::*;

/// Storage as plain directories: `<root>/<bucket>/<key>`.
struct DirIo {
    root: PathBuf,
    uploads: Mutex<Vec<String>>,
}

/// The same storage, offering its files for direct copies as the local executor's does.
struct LocalDirIo(DirIo);

#[async_trait::async_trait]
impl JobIo for LocalDirIo {
    async fn fetch(&self, _: &str, _: &str, _: &Path) -> Result<u64, IoError> {
        Err("fetch must not be used when a local path is offered".into())
    }
    async fn upload(&self, bucket: &str, key: &str, src: &Path) -> Result<(), IoError> {
        self.0.upload(bucket, key, src).await
    }
    fn local_path(&self, bucket: &str, key: &str) -> Option<PathBuf> {
        Some(self.0.root.join(bucket).join(key))
    }
}

#[async_trait::async_trait]
impl JobIo for DirIo {
    async fn fetch(&self, bucket: &str, key: &str, dest: &Path) -> Result<u64, IoError> {
        Ok(tokio::fs::copy(self.root.join(bucket).join(key), dest).await?)
    }
    async fn upload(&self, bucket: &str, key: &str, src: &Path) -> Result<(), IoError> {
        let dest = self.root.join(bucket).join(key);
        tokio::fs::create_dir_all(dest.parent().ok_or("no parent")?).await?;
        tokio::fs::copy(src, dest).await?;
        self.uploads
            .lock()
            .map_err(|_| "poisoned")?
            .push(format!("{bucket}/{key}"));
        Ok(())
    }
}

fn spec(script: &str) -> JobSpec {
    JobSpec {
        job_name: "svc-job".into(),
        job_uuid: "0196b0c8-0000-7000-8000-000000000001".into(),
        service: "svc".into(),
        service_token: "t".repeat(64),
        script: script.into(),
        environment: BTreeMap::from([("GREETING".to_owned(), "hello".to_owned())]),
        input: JobInput::None,
        event: "{}".into(),
        event_time: OffsetDateTime::UNIX_EPOCH,
        outputs: Vec::new(),
        limits: Limits::default(),
        log_limit: 1 << 20,
        placement: Placement::default(),
        storage: None,
    }
}

/// Tests run concurrently (threads and processes); each run needs a cgroup slot of its own.
fn unique_slot() -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("runtime-test-{}-{n}", std::process::id())
}

fn options(dir: &Path, cgroups: CgroupSupport) -> RunOptions {
    RunOptions {
        work_root: dir.join("work"),
        cgroups,
        slot: unique_slot(),
        synchronous: false,
        max_sync_output: 1 << 20,
        runner: None,
        base_env: None,
    }
}

async fn run(spec: &JobSpec, io: &dyn JobIo, options: &RunOptions) -> JobOutcome {
    run_job(spec, io, options, std::future::pending(), || {}).await
}

fn log_text(outcome: &JobOutcome) -> String {
    outcome
        .log
        .iter()
        .map(|l| l.text.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn contract_environment_input_and_filtered_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let io = DirIo {
        root: dir.path().join("s3"),
        uploads: Mutex::new(Vec::new()),
    };
    std::fs::create_dir_all(io.root.join("in/folder")).unwrap();
    std::fs::write(io.root.join("in/folder/data.txt"), "abc\n").unwrap();
    let mut spec = spec(
        r#"set -e
echo "name=$OSCAR_SERVICE_NAME uuid=$JOB_UUID key=$STORAGE_OBJECT_KEY greet=$GREETING"
test "$(basename "$INPUT_FILE_PATH")" = data.txt
tr a-z A-Z < "$INPUT_FILE_PATH" > "$TMP_OUTPUT_DIR/result.txt"
mkdir "$TMP_OUTPUT_DIR/sub"
echo nested > "$TMP_OUTPUT_DIR/sub/result.txt"
echo skip > "$TMP_OUTPUT_DIR/other.log"
ln -s /etc/passwd "$TMP_OUTPUT_DIR/result-link.txt"
echo to-stderr >&2
"#,
    );
    spec.input = JobInput::Object {
        bucket: "in".into(),
        key: "folder/data.txt".into(),
    };
    spec.outputs = vec![OutputTarget {
        bucket: "out".into(),
        folder: "res".into(),
        prefix: vec!["result".into()],
        suffix: vec![".txt".into()],
    }];
    let outcome = run(&spec, &io, &options(dir.path(), CgroupSupport::None)).await;
    let log = log_text(&outcome);
    assert_eq!(outcome.status, Status::Succeeded, "{log}");
    assert!(
        log.contains("name=svc uuid=0196b0c8-0000-7000-8000-000000000001 key=folder/data.txt greet=hello")
    );
    assert!(log.contains("to-stderr"));
    assert_eq!(
        std::fs::read_to_string(io.root.join("out/res/result.txt")).unwrap(),
        "ABC\n"
    );
    assert_eq!(
        std::fs::read_to_string(io.root.join("out/res/sub/result.txt")).unwrap(),
        "nested\n"
    );
    let mut uploads = io.uploads.lock().unwrap().clone();
    uploads.sort();
    assert_eq!(
        uploads,
        ["out/res/result.txt", "out/res/sub/result.txt"],
        "symlink or filtered file uploaded"
    );
    assert!(
        !dir.path()
            .join("work/job-0196b0c8-0000-7000-8000-000000000001")
            .exists(),
        "work dir kept"
    );
}

#[tokio::test]
async fn environment_is_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let io = DirIo {
        root: dir.path().join("s3"),
        uploads: Mutex::new(Vec::new()),
    };
    // SAFETY: test-only; no other thread of this test reads the environment concurrently.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("CLOISTER_TEST_HOST_SECRET", "leak")
    };
    // The job's storage credential is the runtime's, not the script's.
    let mut spec = spec("env");
    spec.storage = Some(crate::StorageAccess {
        endpoint: "http://127.0.0.1:9".into(),
        region: "us-east-1".into(),
        access_key_id: "CJ0123".into(),
        secret_access_key: "job-secret-not-for-scripts".into(),
        expires: OffsetDateTime::UNIX_EPOCH,
    });
    assert!(!format!("{spec:?}").contains("job-secret-not-for-scripts"));
    let outcome = run(&spec, &io, &options(dir.path(), CgroupSupport::None)).await;
    assert_eq!(outcome.status, Status::Succeeded);
    let log = log_text(&outcome);
    assert!(
        !log.contains("CLOISTER_TEST_HOST_SECRET"),
        "host environment leaked into the job"
    );
    assert!(
        !log.contains("job-secret-not-for-scripts") && !log.contains("AWS_"),
        "{log}"
    );
    assert!(log.contains("GREETING=hello"));
}

#[tokio::test]
async fn non_zero_exit_fails_with_reason() {
    let dir = tempfile::tempdir().unwrap();
    let io = DirIo {
        root: dir.path().join("s3"),
        uploads: Mutex::new(Vec::new()),
    };
    let outcome = run(
        &spec("echo before; exit 3"),
        &io,
        &options(dir.path(), CgroupSupport::None),
    )
    .await;
    assert_eq!(outcome.status, Status::Failed);
    assert_eq!(outcome.exit_code, Some(3));
    assert_eq!(outcome.reason.as_deref(), Some("script exited with code 3"));
}

#[tokio::test]
async fn missing_input_fails_before_the_script_runs() {
    let dir = tempfile::tempdir().unwrap();
    let io = DirIo {
        root: dir.path().join("s3"),
        uploads: Mutex::new(Vec::new()),
    };
    let mut spec = spec("echo ran");
    spec.input = JobInput::Object {
        bucket: "in".into(),
        key: "absent".into(),
    };
    let outcome = run(&spec, &io, &options(dir.path(), CgroupSupport::None)).await;
    assert_eq!(outcome.status, Status::Failed);
    assert!(
        outcome
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("cannot fetch input in/absent")
    );
    assert!(!log_text(&outcome).contains("ran"));
}

#[tokio::test]
async fn local_inputs_are_copied_while_preparing() {
    let dir = tempfile::tempdir().unwrap();
    let io = LocalDirIo(DirIo {
        root: dir.path().join("s3"),
        uploads: Mutex::new(Vec::new()),
    });
    std::fs::create_dir_all(io.0.root.join("in/deep")).unwrap();
    std::fs::write(io.0.root.join("in/deep/file.bin"), "local content").unwrap();
    let mut spec = spec("cat \"$INPUT_FILE_PATH\"; echo; basename \"$INPUT_FILE_PATH\"");
    spec.input = JobInput::Object {
        bucket: "in".into(),
        key: "deep/file.bin".into(),
    };
    let outcome = run(&spec, &io, &options(dir.path(), CgroupSupport::None)).await;
    assert_eq!(outcome.status, Status::Succeeded, "{}", log_text(&outcome));
    assert!(
        log_text(&outcome).contains("local content\nfile.bin"),
        "{}",
        log_text(&outcome)
    );
    // A missing object, and a "folder" key, fail before the script runs.
    for key in ["deep/absent", "deep"] {
        spec.input = JobInput::Object {
            bucket: "in".into(),
            key: key.into(),
        };
        let outcome = run(&spec, &io, &options(dir.path(), CgroupSupport::None)).await;
        assert_eq!(outcome.status, Status::Failed, "{key}");
        assert_eq!(
            outcome.reason.as_deref(),
            Some(format!("cannot fetch input in/{key}: no such object").as_str())
        );
    }
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let io = DirIo {
        root: dir.path().join("s3"),
        uploads: Mutex::new(Vec::new()),
    };
    let pid_file = dir.path().join("survivor.pid");
    let mut spec = spec(&format!(
        "sh -c 'echo $$ > {}; exec sleep 30' & sleep 30",
        pid_file.display()
    ));
    spec.limits.timeout = Duration::from_millis(1000);
    let started = std::time::Instant::now();
    let outcome = run(&spec, &io, &options(dir.path(), CgroupSupport::None)).await;
    assert_eq!(outcome.status, Status::Failed);
    assert!(outcome.reason.unwrap().starts_with("timed out"));
    assert!(started.elapsed() < Duration::from_secs(5));
    let pid = std::fs::read_to_string(&pid_file).expect("the background process did not start");
    assert!(
        ended_within(pid.trim(), Duration::from_secs(5)).await,
        "a background process of the job survived the timeout"
    );
}

/// Waits until process `pid` has ended (gone, or a zombie not reaped yet): true if it did
/// before `limit`.
async fn ended_within(pid: &str, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state follows the command name, which is in parentheses and may hold spaces.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        if matches!(state, None | Some("Z" | "X")) {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The writable cgroup hierarchy, or `None` after a visible skip message. With
/// `CLOISTER_REQUIRE_CGROUPS` set (CI sets it where the hierarchy is writable) the skip is a
/// failure instead, so a test that needs cgroups cannot pass without running.
fn cgroups_or_skip(test: &str) -> Option<CgroupSupport> {
    let cgroups = CgroupSupport::detect();
    if cgroups.enabled() {
        return Some(cgroups);
    }
    assert!(
        std::env::var_os("CLOISTER_REQUIRE_CGROUPS").is_none(),
        "{test}: CLOISTER_REQUIRE_CGROUPS is set but no cgroup hierarchy is writable here"
    );
    eprintln!("SKIPPED: {test}: no writable cgroup hierarchy here (CLOISTER_REQUIRE_CGROUPS=1 fails)");
    None
}

#[tokio::test]
async fn memory_limit_is_enforced_with_rlimit() {
    let dir = tempfile::tempdir().unwrap();
    let io = DirIo {
        root: dir.path().join("s3"),
        uploads: Mutex::new(Vec::new()),
    };
    let mut spec = spec("python3 -c 'x = bytearray(512 * 1024 * 1024); print(\"allocated\")'");
    spec.limits.memory_bytes = Some(128 * 1024 * 1024);
    let outcome = run(&spec, &io, &options(dir.path(), CgroupSupport::None)).await;
    assert_eq!(outcome.status, Status::Failed, "{}", log_text(&outcome));
    assert!(!log_text(&outcome).contains("allocated"));
    // The same script runs without the limit, so the failure above is the limit's doing.
    spec.limits.memory_bytes = None;
    let outcome = run(&spec, &io, &options(dir.path(), CgroupSupport::None)).await;
    assert_eq!(outcome.status, Status::Succeeded, "{}", log_text(&outcome));
}

#[tokio::test]
async fn memory_limit_is_enforced_with_cgroups_where_writable() {
    // Without cgroups the memory limit is the rlimit one, tested above.
    let Some(cgroups) = cgroups_or_skip("memory_limit_is_enforced_with_cgroups_where_writable") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let io = DirIo {
        root: dir.path().join("s3"),
        uploads: Mutex::new(Vec::new()),
    };
    let mut spec = spec("python3 -c 'x = bytearray(512 * 1024 * 1024); print(\"allocated\")'");
    spec.limits.memory_bytes = Some(64 * 1024 * 1024);
    let mut options = options(dir.path(), cgroups);
    options.slot = unique_slot();
    let outcome = run(&spec, &io, &options).await;
    assert_eq!(outcome.status, Status::Failed, "{}", log_text(&outcome));
    assert!(!log_text(&outcome).contains("allocated"));
    // The slot is reused with other limits: no limit now, so the same script succeeds.
    spec.limits.memory_bytes = None;
    let outcome = run(&spec, &io, &options).await;
    assert_eq!(outcome.status, Status::Succeeded, "{}", log_text(&outcome));
}

#[tokio::test]
async fn processes_that_leave_the_process_group_die_with_the_job_where_cgroups_exist() {
    let Some(cgroups) =
        cgroups_or_skip("processes_that_leave_the_process_group_die_with_the_job_where_cgroups_exist")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let io = DirIo {
        root: dir.path().join("s3"),
        uploads: Mutex::new(Vec::new()),
    };
    let pid_file = dir.path().join("escaped.pid");
    // setsid puts the sleeper in a new session: killing the job's process group misses it. The
    // job ends once the sleeper has written its pid.
    let spec = spec(&format!(
        "setsid sh -c 'echo $$ > {pid}; exec sleep 30' >/dev/null 2>&1 < /dev/null &\n\
         while [ ! -s {pid} ]; do sleep 0.01; done",
        pid = pid_file.display()
    ));
    let mut options = options(dir.path(), cgroups);
    options.slot = unique_slot();
    let outcome = run(&spec, &io, &options).await;
    assert_eq!(outcome.status, Status::Succeeded, "{}", log_text(&outcome));
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    assert!(
        ended_within(pid.trim(), Duration::from_secs(5)).await,
        "a process that left the job's process group outlived the job"
    );
}

#[tokio::test]
async fn synchronous_run_returns_files_and_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let io = DirIo {
        root: dir.path().join("s3"),
        uploads: Mutex::new(Vec::new()),
    };
    let mut spec = spec("echo out; echo err >&2; cp \"$INPUT_FILE_PATH\" \"$TMP_OUTPUT_DIR/copy\"");
    spec.input = JobInput::Inline(b"payload".to_vec());
    let mut options = options(dir.path(), CgroupSupport::None);
    options.synchronous = true;
    let outcome = run(&spec, &io, &options).await;
    assert_eq!(outcome.status, Status::Succeeded);
    assert_eq!(outcome.stdout, b"out\n");
    assert_eq!(outcome.files, vec![("copy".to_owned(), b"payload".to_vec())]);
    assert!(io.uploads.lock().unwrap().is_empty());
}

/// OSCAR jobs see no positional parameters (as under `sh script.sh`); confidential jobs get
/// the session's arguments verbatim, spaces and quotes included, with or without cgroups.
#[tokio::test]
async fn scripts_see_exactly_their_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let io = DirIo {
        root: dir.path().join("s3"),
        uploads: Mutex::new(Vec::new()),
    };
    let mut options = options(dir.path(), CgroupSupport::None);
    options.synchronous = true;
    let outcome = run(&spec("echo \"$#:$*\""), &io, &options).await;
    assert_eq!(outcome.stdout, b"0:\n");

    let work = dir.path().join("direct");
    std::fs::create_dir_all(&work).unwrap();
    let script = work.join("script.sh");
    std::fs::write(&script, "for a do printf '[%s]' \"$a\"; done; echo \" $#\"").unwrap();
    let args = ["two words".to_owned(), "it's \"q\"".to_owned(), String::new()];
    for cgroups in [CgroupSupport::None, CgroupSupport::detect()] {
        let options = ProgramOptions {
            program: Program::Script(&script),
            args: &args,
            work_dir: &work,
            env: &[],
            limits: &Limits::default(),
            cgroups: &cgroups,
            slot: &unique_slot(),
            log_limit: 1 << 20,
            keep_stdout: Some(1 << 20),
        };
        let run = run_program(options, std::future::pending(), || {}).await;
        assert_eq!(run.exit_code, Some(0), "{:?}", run.log);
        assert_eq!(
            String::from_utf8_lossy(&run.stdout),
            "[two words][it's \"q\"][] 3\n"
        );
    }
}

#[tokio::test]
async fn log_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let io = DirIo {
        root: dir.path().join("s3"),
        uploads: Mutex::new(Vec::new()),
    };
    let mut spec = spec("i=0; while [ $i -lt 2000 ]; do echo line-$i; i=$((i+1)); done");
    spec.log_limit = 1000;
    let outcome = run(&spec, &io, &options(dir.path(), CgroupSupport::None)).await;
    assert_eq!(outcome.status, Status::Succeeded);
    let log = log_text(&outcome);
    assert!(
        log.len() < 2000 && log.contains("log truncated at 1000 bytes"),
        "{}",
        log.len()
    );
}

#[test]
fn output_filters() {
    let target = OutputTarget {
        bucket: "b".into(),
        folder: String::new(),
        prefix: vec!["a".into(), "b".into()],
        suffix: vec![".png".into()],
    };
    assert!(target.accepts("a1.png") && target.accepts("b.png"));
    assert!(!target.accepts("c.png") && !target.accepts("a.jpg"));
    assert_eq!(target.key_for("x/y"), "x/y");
}

/// A slot's work directory is reused, so what one job leaves must not reach the next: the next
/// job sees only its empty folders, its script and its input, and nothing left in the folder
/// is written through (a link planted where the next script or input goes).
#[tokio::test]
async fn the_next_job_in_a_slot_finds_nothing_of_the_last() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let io = LocalDirIo(DirIo {
        root: dir.path().join("s3"),
        uploads: Mutex::new(Vec::new()),
    });
    std::fs::create_dir_all(io.0.root.join("in")).unwrap();
    std::fs::write(io.0.root.join("in/data.txt"), "input\n").unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "untouched").unwrap();
    let options = options(dir.path(), CgroupSupport::None);
    let slot_dir = options.work_root.join(&options.slot);
    // Left by a crash: an unexpected file means the directory is made afresh.
    std::fs::create_dir_all(slot_dir.join("tmp")).unwrap();
    std::fs::write(slot_dir.join("stray"), "x").unwrap();
    let job = |script: &str| {
        let mut spec = spec(script);
        spec.input = JobInput::Object {
            bucket: "in".into(),
            key: "data.txt".into(),
        };
        spec
    };

    let messy = job(&format!(
        r#"set -e
touch "$HOME/.dotfile"
mkdir -p "$TMPDIR/a/b" "$TMP_OUTPUT_DIR/sub"
echo x > "$TMPDIR/a/b/f"
echo y > "$TMP_OUTPUT_DIR/sub/o"
rm "$INPUT_FILE_PATH" "$HOME/script.sh" "$EVENT_FILE"
ln -s {victim} "$INPUT_FILE_PATH"
ln -s {victim} "$HOME/script.sh"
ln -s {victim} "$EVENT_FILE"
"#,
        victim = victim.display()
    ));
    let outcome = run(&messy, &io, &options).await;
    assert_eq!(outcome.status, Status::Succeeded, "{}", log_text(&outcome));
    assert!(!slot_dir.join("stray").exists());
    // Reset for the next job: the three folders, empty, kept.
    assert!(work_dir_is_clean(&slot_dir));
    let folder = std::fs::metadata(slot_dir.join("input")).unwrap().ino();

    let listing = job(r#"cd "$HOME" && find . | sort | tr '\n' ' '"#);
    let outcome = run(&listing, &io, &options).await;
    let log = log_text(&outcome);
    assert_eq!(outcome.status, Status::Succeeded, "{log}");
    assert!(
        log.contains(". ./event.json ./input ./input/data.txt ./output ./script.sh ./tmp "),
        "{log}"
    );
    assert_eq!(
        std::fs::metadata(slot_dir.join("input")).unwrap().ino(),
        folder,
        "not reused"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");

    // A stale slot of a process that has ended, a directory moved aside, a per-job directory
    // of an older version and a container job's control folder (its socket and credential)
    // are removed when an executor starts; live slots stay.
    let stale = options.work_root.join("slot-4294967290-0");
    let aside = options.work_root.join("discarded-4294967290-3");
    let old = options.work_root.join("job-0196b0c8-0000-7000-8000-000000000009");
    let control = options.work_root.join("ctl-0196b0c8-0000-7000-8000-000000000009");
    let live = options.work_root.join(format!("slot-{}-7", std::process::id()));
    for d in [&stale, &aside, &old, &control, &live] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(control.join("job.json"), "{}").unwrap();
    remove_stale_work_dirs(&options.work_root);
    assert!(!stale.exists() && !aside.exists() && !old.exists() && !control.exists());
    assert!(live.exists() && slot_dir.exists());
}

fn wiring() -> AttestationWiring {
    AttestationWiring {
        cas: "https://cas.example:8081".into(),
        cas_pin: format!("sha256:{}", "ab".repeat(32)),
        service: "runner".into(),
        session: "team/inference".into(),
        tee: Tee::Sim,
    }
}

/// The wiring keeps the form of the variables' map it replaced: an empty map for none, the
/// variables' names otherwise. A partial map, an unknown variable or a TEE spelled otherwise
/// than canonically is refused rather than half-read.
#[test]
fn attestation_wiring_keeps_the_variables_map_form() {
    let plain = Placement::default();
    let json = serde_json::to_value(&plain).unwrap();
    assert_eq!(json["attestation"], serde_json::json!({}));
    assert_eq!(serde_json::from_value::<Placement>(json).unwrap(), plain);

    let placement = Placement {
        tee: Some(Tee::Sim),
        attestation: Some(wiring()),
        ..Placement::default()
    };
    let json = serde_json::to_value(&placement).unwrap();
    let variables = serde_json::json!({
        "CLOISTER_CAS": "https://cas.example:8081",
        "CLOISTER_CAS_PIN": format!("sha256:{}", "ab".repeat(32)),
        "CLOISTER_SERVICE": "runner",
        "CLOISTER_SESSION": "team/inference",
        "CLOISTER_TEE": "sim",
    });
    assert_eq!(json["attestation"], variables);
    assert_eq!(
        serde_json::from_value::<Placement>(json.clone()).unwrap(),
        placement
    );
    // The environment carries the same variables, in name order.
    let environment: Vec<(String, serde_json::Value)> = wiring()
        .environment()
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value.into()))
        .collect();
    let expected: Vec<(String, serde_json::Value)> =
        variables.as_object().unwrap().clone().into_iter().collect();
    assert_eq!(environment, expected);

    let mut partial = json.clone();
    partial["attestation"]
        .as_object_mut()
        .unwrap()
        .remove("CLOISTER_CAS");
    let mut foreign = json.clone();
    foreign["attestation"]["LD_PRELOAD"] = "x".into();
    let mut long_name = json;
    long_name["attestation"]["CLOISTER_TEE"] = "simulation".into();
    for bad in [partial, foreign, long_name] {
        assert!(serde_json::from_value::<Placement>(bad.clone()).is_err(), "{bad}");
    }
}

/// A job whose placement has wiring sees it as variables, as a pod of a Kubernetes executor
/// would.
#[tokio::test]
async fn attestation_wiring_reaches_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let io = DirIo {
        root: dir.path().join("s3"),
        uploads: Mutex::new(Vec::new()),
    };
    let mut options = options(dir.path(), CgroupSupport::None);
    options.synchronous = true;
    let mut spec = spec("echo \"$CLOISTER_TEE $CLOISTER_SESSION $CLOISTER_SERVICE\"");
    spec.placement.attestation = Some(wiring());
    let outcome = run(&spec, &io, &options).await;
    assert_eq!(outcome.stdout, b"sim team/inference runner\n");
}

fn direct<'a>(
    program: &'a Path,
    args: &'a [String],
    work: &'a Path,
    limits: &'a Limits,
) -> ProgramOptions<'a> {
    ProgramOptions {
        program: Program::Direct(program),
        args,
        work_dir: work,
        env: &[],
        limits,
        cgroups: &CgroupSupport::None,
        slot: "",
        log_limit: 1 << 20,
        keep_stdout: Some(1 << 20),
    }
}

/// A program started directly gets exactly its arguments and environment, and a start failure
/// names it (there is no shell to report "not found" as an exit code).
#[tokio::test]
async fn direct_programs_start_as_they_are() {
    let work = tempfile::tempdir().unwrap();
    let limits = Limits::default();
    let args = ["two words".to_owned(), String::new()];
    let env = [("ONLY".to_owned(), "this".to_owned())];
    let run = run_program(
        ProgramOptions {
            env: &env,
            ..direct(Path::new("/usr/bin/env"), &[], work.path(), &limits)
        },
        std::future::pending(),
        || {},
    )
    .await;
    assert!(run.failure.is_none(), "{:?}", run.failure);
    assert_eq!(run.stdout, b"ONLY=this\n");
    let run = run_program(
        direct(Path::new("/bin/echo"), &args, work.path(), &limits),
        std::future::pending(),
        || {},
    )
    .await;
    assert_eq!(
        (run.exit_code, run.stdout.as_slice()),
        (Some(0), &b"two words \n"[..])
    );

    let missing = work.path().join("no-such-runtime");
    let mut started = false;
    let run = run_program(
        direct(&missing, &[], work.path(), &limits),
        std::future::pending(),
        || started = true,
    )
    .await;
    assert!(!started);
    let failure = run.failure.expect("a missing program fails");
    assert!(matches!(failure, RunFailure::Start { .. }), "{failure:?}");
    assert!(
        failure
            .to_string()
            .starts_with(&format!("cannot start {}: ", missing.display())),
        "{failure}"
    );
}

/// Without the shell nothing applies memory, CPU or cgroup limits, so a direct program asked
/// for them is refused instead of running unconfined.
#[tokio::test]
async fn direct_programs_refuse_limits_they_cannot_get() {
    let work = tempfile::tempdir().unwrap();
    let echo = Path::new("/bin/echo");
    for limits in [
        Limits {
            memory_bytes: Some(64 << 20),
            ..Limits::default()
        },
        Limits {
            cpu_millis: Some(500),
            ..Limits::default()
        },
    ] {
        let mut started = false;
        let run = run_program(
            direct(echo, &[], work.path(), &limits),
            std::future::pending(),
            || started = true,
        )
        .await;
        assert!(
            matches!(run.failure, Some(RunFailure::Unconfinable)),
            "{:?}",
            run.failure
        );
        assert!(!started);
    }
    let limits = Limits::default();
    let prepared = CgroupSupport::Prepared(vec![work.path().join("cgroup.procs")]);
    let run = run_program(
        ProgramOptions {
            cgroups: &prepared,
            ..direct(echo, &[], work.path(), &limits)
        },
        std::future::pending(),
        || {},
    )
    .await;
    assert!(
        matches!(run.failure, Some(RunFailure::Unconfinable)),
        "{:?}",
        run.failure
    );
}

/// A direct program's whole process group goes at the timeout, children included.
#[tokio::test]
async fn direct_programs_are_stopped_with_their_children() {
    let work = tempfile::tempdir().unwrap();
    let pid_file = work.path().join("child.pid");
    let script = format!("sleep 60 & echo $! > {}; wait", pid_file.display());
    let args = ["-c".to_owned(), script];
    let limits = Limits {
        timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let started = std::time::Instant::now();
    let run = run_program(
        direct(Path::new("/bin/sh"), &args, work.path(), &limits),
        std::future::pending(),
        || {},
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(10));
    let failure = run.failure.expect("the timeout stops it");
    assert_eq!(failure.to_string(), "timed out after 1 s");
    let child = std::fs::read_to_string(&pid_file).unwrap();
    let proc = Path::new("/proc").join(child.trim());
    // Killed, and reaped by init shortly after (a zombie still has its /proc entry).
    let gone = (0..100).any(|_| {
        let state = std::fs::read_to_string(proc.join("stat")).unwrap_or_default();
        if state.is_empty() || state.contains(") Z ") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
        false
    });
    assert!(gone, "the program's child outlived it");
}

#[tokio::test]
async fn outputs_are_regular_files_inside_the_folder_only() {
    use std::os::unix::ffi::OsStrExt as _;
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("host");
    std::fs::create_dir_all(outside.join("deep")).unwrap();
    std::fs::write(outside.join("secret.txt"), "host").unwrap();
    std::fs::write(outside.join("deep/secret.txt"), "host").unwrap();
    let out = dir.path().join("output");
    std::fs::create_dir_all(out.join("sub/inner")).unwrap();
    std::fs::write(out.join("a.txt"), "a").unwrap();
    std::fs::write(out.join("sub/inner/b.txt"), "b").unwrap();
    // A link to a file and a link to a folder outside: neither is uploaded nor walked into.
    std::os::unix::fs::symlink(outside.join("secret.txt"), out.join("file-link.txt")).unwrap();
    std::os::unix::fs::symlink(&outside, out.join("dir-link")).unwrap();
    // A special file.
    let fifo = std::ffi::CString::new(out.join("pipe").as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates a file.
    #[allow(unsafe_code)]
    let made = unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) };
    assert_eq!(made, 0);
    // A folder whose name is not UTF-8 is skipped with what it holds.
    let odd = out.join(std::ffi::OsStr::from_bytes(b"bad\xff"));
    std::fs::create_dir(&odd).unwrap();
    std::fs::write(odd.join("c.txt"), "c").unwrap();

    let files = collect_outputs(&out).await.unwrap();
    assert_eq!(
        files,
        [
            ("a.txt".to_owned(), out.join("a.txt")),
            ("sub/inner/b.txt".to_owned(), out.join("sub/inner/b.txt")),
        ]
    );
    assert!(collect_outputs(&dir.path().join("missing")).await.is_err());
}

/// A script that replaces its output folder with a link (to the work root, the data
/// directory, `/`) gets nothing read through it: neither walked nor answered.
#[tokio::test]
async fn an_output_folder_replaced_by_a_link_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("host");
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::write(secret.join("credentials.json"), "HOST-SECRET").unwrap();
    let linked = dir.path().join("linked-output");
    std::os::unix::fs::symlink(&secret, &linked).unwrap();
    assert!(
        collect_outputs(&linked).await.is_err(),
        "a link as the output folder was walked"
    );

    let io = DirIo {
        root: dir.path().join("s3"),
        uploads: Mutex::new(Vec::new()),
    };
    let mut options = options(dir.path(), CgroupSupport::None);
    options.synchronous = true;
    let script = format!(
        "rmdir \"$TMP_OUTPUT_DIR\" && ln -s {} \"$TMP_OUTPUT_DIR\"",
        secret.display()
    );
    let outcome = run(&spec(&script), &io, &options).await;
    assert_eq!(outcome.status, Status::Failed, "{}", log_text(&outcome));
    assert!(outcome.files.is_empty());
    let answered = format!("{:?}{}", outcome.files, log_text(&outcome));
    assert!(!answered.contains("HOST-SECRET"), "{answered}");
}

/// Synchronous outputs are read beneath their folder: a folder swapped for a link after the
/// walk (by a process still running there) is not followed, and a file larger than what is
/// left of the budget is refused before it is read.
#[tokio::test]
async fn synchronous_outputs_are_read_beneath_their_folder_within_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("host");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("b.txt"), "HOST-SECRET").unwrap();
    let out = dir.path().join("output");
    std::fs::create_dir_all(out.join("sub")).unwrap();
    std::fs::write(out.join("a.txt"), "aaaa").unwrap();
    std::fs::write(out.join("sub/b.txt"), "bbbb").unwrap();
    let files = collect_outputs(&out).await.unwrap();

    let read = read_outputs(&out, &files, 8).unwrap();
    assert_eq!(
        read,
        [
            ("a.txt".to_owned(), b"aaaa".to_vec()),
            ("sub/b.txt".to_owned(), b"bbbb".to_vec())
        ]
    );
    assert!(matches!(
        read_outputs(&out, &files, 7),
        Err(ReadOutputsError::TooLarge)
    ));

    std::fs::remove_dir_all(out.join("sub")).unwrap();
    std::os::unix::fs::symlink(&outside, out.join("sub")).unwrap();
    match read_outputs(&out, &files, 1 << 20) {
        Err(ReadOutputsError::Io(relative, _)) => assert_eq!(relative, "sub/b.txt"),
        other => panic!("a folder swapped for a link was followed: {other:?}"),
    }
    std::fs::remove_file(out.join("sub")).unwrap();
    std::fs::create_dir(out.join("sub")).unwrap();
    std::os::unix::fs::symlink(outside.join("b.txt"), out.join("sub/b.txt")).unwrap();
    assert!(
        read_outputs(&out, &files, 1 << 20).is_err(),
        "a file swapped for a link was followed"
    );
}

/// Bodies of `/run` and `/job` reach the script as its input file and as the event: past what
/// one variable can hold (128 KiB on Linux), `EVENT` names the event file instead of failing
/// the start with "Argument list too long". `EVENT_FILE` always holds the whole event.
#[tokio::test]
async fn large_events_are_handed_over_as_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let io = DirIo {
        root: dir.path().join("s3"),
        uploads: Mutex::new(Vec::new()),
    };
    let script = r#"set -e
if [ "$EVENT" = "$EVENT_FILE" ]; then echo "event=file"; else echo "event=inline"; fi
cmp -s "$EVENT_FILE" "$INPUT_FILE_PATH" && echo "event-file-matches"
wc -c < "$INPUT_FILE_PATH"
"#;
    let mut options = options(dir.path(), CgroupSupport::None);
    options.synchronous = true;
    for size in [
        10,
        EVENT_INLINE_MAX,
        EVENT_INLINE_MAX + 1,
        100 * 1024,
        1 << 20,
        8 << 20,
    ] {
        let body = "x".repeat(size);
        let mut spec = spec(script);
        spec.event = body.clone();
        spec.input = JobInput::Inline(body.into_bytes());
        let outcome = run(&spec, &io, &options).await;
        assert_eq!(
            outcome.status,
            Status::Succeeded,
            "{size}: {}",
            log_text(&outcome)
        );
        let inline = if size <= EVENT_INLINE_MAX {
            "inline"
        } else {
            "file"
        };
        assert_eq!(
            String::from_utf8_lossy(&outcome.stdout),
            format!("event={inline}\nevent-file-matches\n{size}\n"),
        );
    }
}

/// A variable the kernel cannot pass fails the job with a reason naming it, before anything
/// is started.
#[tokio::test]
async fn an_oversized_variable_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let io = DirIo {
        root: dir.path().join("s3"),
        uploads: Mutex::new(Vec::new()),
    };
    let mut spec = spec("echo started");
    spec.environment.insert("HUGE".into(), "y".repeat(200 * 1024));
    let outcome = run(&spec, &io, &options(dir.path(), CgroupSupport::None)).await;
    assert_eq!(outcome.status, Status::Failed);
    let reason = outcome.reason.clone().unwrap();
    assert!(
        reason.contains("HUGE") && reason.contains("204800 bytes"),
        "{reason}"
    );
    assert!(!log_text(&outcome).contains("started"));
}

/// A synchronous run whose stdout passes the answer's limit fails (and is stopped) instead of
/// answering a silently cut prefix; at the limit exactly, the whole stdout is kept.
#[tokio::test]
async fn stdout_beyond_the_synchronous_limit_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let io = DirIo {
        root: dir.path().join("s3"),
        uploads: Mutex::new(Vec::new()),
    };
    let mut options = options(dir.path(), CgroupSupport::None);
    options.synchronous = true;
    options.max_sync_output = 64 * 1024;
    let exact = spec("head -c 65536 /dev/zero | tr '\\0' 'a'");
    let outcome = run(&exact, &io, &options).await;
    assert_eq!(outcome.status, Status::Succeeded, "{}", log_text(&outcome));
    assert_eq!(outcome.stdout.len(), 64 * 1024);

    // One byte more, then a small line the old cap would have let through: still refused.
    let over = spec("head -c 65537 /dev/zero | tr '\\0' 'a'; echo; echo small");
    let outcome = run(&over, &io, &options).await;
    assert_eq!(outcome.status, Status::Failed);
    let reason = outcome.reason.unwrap();
    assert!(
        reason.contains("stdout exceeds the limit of 65536 bytes"),
        "{reason}"
    );

    // A script that would write forever is stopped at the limit, not at its timeout.
    let endless = spec("yes");
    let started = std::time::Instant::now();
    let outcome = run(&endless, &io, &options).await;
    assert_eq!(outcome.status, Status::Failed);
    assert!(outcome.reason.unwrap().contains("stdout exceeds"));
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// A gated job's script process exists before its gate opens, but neither its first line nor
/// its input staging nor `on_start` comes before; a gate that closes kills it unrun.
#[tokio::test]
async fn gated_scripts_run_only_once_their_gate_opens() {
    let dir = tempfile::tempdir().unwrap();
    let io = LocalDirIo(DirIo {
        root: dir.path().join("s3"),
        uploads: Mutex::new(Vec::new()),
    });
    let marker = dir.path().join("ran");
    let mut spec = spec(&format!(
        "cat \"$INPUT_FILE_PATH\"; read -r line || echo 'stdin is empty'; date +%s%N > {}",
        marker.display()
    ));
    spec.input = JobInput::Object {
        bucket: "in".into(),
        key: "file.txt".into(),
    };
    let options = options(dir.path(), CgroupSupport::None);
    let work = options.work_root.join(&options.slot);

    for opens in [true, false] {
        let _ = std::fs::remove_file(&marker);
        // The object appears only as the gate decides, as an upload's does at its commit.
        let object = io.0.root.join("in/file.txt");
        let _ = std::fs::remove_file(&object);
        let (open, gate) = tokio::sync::oneshot::channel::<bool>();
        let gate = Gate::new(async move { gate.await.unwrap_or(false) });
        let started = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let on_start = {
            let started = started.clone();
            move || started.store(true, std::sync::atomic::Ordering::SeqCst)
        };
        let job = run_job_gated(&spec, &io, &options, Some(gate), std::future::pending(), on_start);
        let decide = async {
            // Long enough for the work directory and the shell to be ready.
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(
                work.join("script.sh").exists(),
                "the work directory was not readied meanwhile"
            );
            assert!(!marker.exists(), "the script ran before its gate opened");
            assert!(
                !started.load(std::sync::atomic::Ordering::SeqCst),
                "on_start before the gate"
            );
            assert!(
                std::fs::read_dir(work.join("input")).unwrap().next().is_none(),
                "the input was staged before the gate opened"
            );
            if opens {
                std::fs::create_dir_all(object.parent().unwrap()).unwrap();
                std::fs::write(&object, "committed content").unwrap();
            }
            let released = std::time::SystemTime::now();
            open.send(opens).unwrap();
            released
        };
        let (outcome, released) = tokio::join!(job, decide);
        if opens {
            assert_eq!(outcome.status, Status::Succeeded, "{}", log_text(&outcome));
            assert!(started.load(std::sync::atomic::Ordering::SeqCst));
            let text = log_text(&outcome);
            assert!(text.contains("committed content"), "{text}");
            assert!(
                text.contains("stdin is empty"),
                "the script saw the release on stdin: {text}"
            );
            let ran_at: u128 = std::fs::read_to_string(&marker).unwrap().trim().parse().unwrap();
            let released = released.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
            assert!(ran_at >= released, "the script ran before its release");
        } else {
            assert_eq!(outcome.status, Status::Failed);
            assert_eq!(outcome.reason.as_deref(), Some(GATE_CLOSED));
            assert!(!marker.exists(), "a job whose gate closed ran");
            assert!(!started.load(std::sync::atomic::Ordering::SeqCst));
        }
    }
}

/// How a gate that holds the upload's bytes and takes the release behaves.
#[derive(Clone, Copy, Debug)]
enum Decider {
    /// Takes the release, writes it, then decides `true`.
    Releases,
    /// Takes the release, closes it unwritten, then decides `false`.
    Closes,
    /// Gives the release back (decided meanwhile), then decides `true`: the runtime writes it.
    GivesBack,
}

/// A gated job stages the input the gate gave while the gate is shut, so the object need not
/// be visible; it hands the held script's release to the gate once nothing else is left to do,
/// and the script runs only once that release is written. A release closed unwritten ends the
/// script unrun; a release given back is written by the runtime once the gate opens.
#[tokio::test]
async fn gated_scripts_are_released_by_their_gate_with_the_input_it_gave() {
    let dir = tempfile::tempdir().unwrap();
    // No object anywhere: the input can only come from the gate.
    let io = DirIo {
        root: dir.path().join("s3"),
        uploads: Mutex::new(Vec::new()),
    };
    let marker = dir.path().join("ran");
    let mut spec = spec(&format!(
        "cat \"$INPUT_FILE_PATH\"; read -r line || echo 'stdin is empty'; date +%s%N > {}",
        marker.display()
    ));
    spec.input = JobInput::Object {
        bucket: "in".into(),
        key: "photo.txt".into(),
    };
    let options = options(dir.path(), CgroupSupport::None);
    let staged = options.work_root.join(&options.slot).join("input/photo.txt");

    for decider in [Decider::Releases, Decider::Closes, Decider::GivesBack] {
        let _ = std::fs::remove_file(&marker);
        let (decide, decision) = tokio::sync::oneshot::channel::<bool>();
        let (handed, pipes) = std::sync::mpsc::channel();
        let gate = Gate {
            decision: Box::pin(async move { decision.await.unwrap_or(false) }),
            input: Some(std::sync::Arc::from(&b"the upload's bytes"[..])),
            hand_over: Some(Box::new(move |pipe| match decider {
                Decider::GivesBack => {
                    handed.send(None).unwrap();
                    Err(pipe)
                }
                _ => {
                    handed.send(Some(pipe)).unwrap();
                    Ok(())
                }
            })),
        };
        let started = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let on_start = {
            let started = started.clone();
            move || started.store(true, std::sync::atomic::Ordering::SeqCst)
        };
        let job = run_job_gated(&spec, &io, &options, Some(gate), std::future::pending(), on_start);
        let decide = async {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let pipe = loop {
                if let Ok(pipe) = pipes.try_recv() {
                    break pipe;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the release was never handed over"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            assert_eq!(
                std::fs::read(&staged).unwrap(),
                b"the upload's bytes",
                "the input was not staged before the release was handed over"
            );
            // Time for a script that was not held to run.
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(!marker.exists(), "the script ran before its release");
            assert!(
                !started.load(std::sync::atomic::Ordering::SeqCst),
                "on_start before the gate"
            );
            let released = std::time::SystemTime::now();
            match (decider, pipe) {
                (Decider::Releases, Some(pipe)) => {
                    std::io::Write::write_all(&mut std::fs::File::from(pipe), b"\n").unwrap();
                    decide.send(true).unwrap();
                }
                (Decider::Closes, Some(pipe)) => {
                    drop(pipe);
                    // The script ends unrun before anyone decides.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    decide.send(false).unwrap();
                }
                (Decider::GivesBack, None) => decide.send(true).unwrap(),
                (decider, pipe) => panic!("{decider:?} with {pipe:?}"),
            }
            released
        };
        let (outcome, released) = tokio::join!(job, decide);
        if matches!(decider, Decider::Closes) {
            assert_eq!(outcome.status, Status::Failed);
            assert_eq!(outcome.reason.as_deref(), Some(GATE_CLOSED));
            assert!(!marker.exists(), "a script whose release was closed ran");
            assert!(!started.load(std::sync::atomic::Ordering::SeqCst));
            continue;
        }
        assert_eq!(
            outcome.status,
            Status::Succeeded,
            "{decider:?}: {}",
            log_text(&outcome)
        );
        assert!(started.load(std::sync::atomic::Ordering::SeqCst));
        let text = log_text(&outcome);
        assert!(text.contains("the upload's bytes"), "{text}");
        assert!(
            text.contains("stdin is empty"),
            "the script saw the release: {text}"
        );
        let ran_at: u128 = std::fs::read_to_string(&marker).unwrap().trim().parse().unwrap();
        let released = released.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        assert!(
            ran_at >= released,
            "{decider:?}: the script ran before its release"
        );
    }
}

/// The job file carries what the runtime in a container needs, the credential included (it is
/// the file's purpose), yet its `Debug` form shows no secret; a job without a credential
/// cannot be handed over; inline input travels beside it.
#[test]
fn a_contained_job_round_trips_and_hides_its_secret() {
    use crate::contained::{ContainedError, ContainedInput, ContainedJob};
    let mut job = spec("echo hi");
    job.input = JobInput::Object {
        bucket: "b".into(),
        key: "in/x".into(),
    };
    assert!(matches!(
        ContainedJob::new(&job, "unix:///s".into()),
        Err(ContainedError::NoCredential)
    ));
    job.storage = Some(StorageAccess {
        endpoint: "http://127.0.0.1:9000".into(),
        region: "us-east-1".into(),
        access_key_id: "CJ00".into(),
        secret_access_key: "very-secret-value".into(),
        expires: OffsetDateTime::UNIX_EPOCH,
    });
    let contained = ContainedJob::new(&job, "unix:///cloister/ctl/s3.sock".into()).unwrap();
    assert!(!format!("{contained:?}").contains("very-secret-value"));
    let text = serde_json::to_string(&contained).unwrap();
    let back: ContainedJob = serde_json::from_str(&text).unwrap();
    let back = back.into_spec(None);
    assert_eq!(back.input, job.input);
    assert_eq!(
        (back.script.as_str(), back.limits.timeout),
        ("echo hi", job.limits.timeout)
    );
    let storage = back.storage.unwrap();
    assert_eq!(storage.endpoint, "unix:///cloister/ctl/s3.sock");
    assert_eq!(storage.secret_access_key, "very-secret-value");

    job.input = JobInput::Inline(b"body".to_vec());
    let inline = ContainedJob::new(&job, "unix:///s".into()).unwrap();
    assert!(matches!(inline.input, Some(ContainedInput::Inline)));
    assert_eq!(inline.into_spec(Some(b"body".to_vec())).input, job.input);
    // A job file with a field it does not know is not a job.
    let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
    value["extra"] = serde_json::json!(1);
    assert!(serde_json::from_value::<ContainedJob>(value).is_err());
}
