//! A real `cloister server` process on loopback ports with a temporary data directory.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use object_store::aws::{AmazonS3, AmazonS3Builder};
use serde_json::Value;

pub const USER: &str = "admin";
pub const PASSWORD: &str = "test-password-0123456789";
pub const ACCESS_KEY: &str = "testaccesskey";
pub const SECRET_KEY: &str = "test-secret-key-0123456789abcdef";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_cloister")
}

/// The `cloister-runtime` binary beside `cloister` (where the server looks for it). It belongs
/// to another package, so `cargo test -p cloister-cli` alone does not build it: then, or when it
/// is older than `cloister`, it is built here once.
pub fn runtime_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cloister = Path::new(bin());
            let dir = cloister.parent().expect("target dir");
            let runtime = dir.join("cloister-runtime");
            let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            if modified(&runtime).is_none() || modified(&runtime) < modified(cloister) {
                let release = dir.file_name().is_some_and(|n| n == "release");
                let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
                cargo.args(["build", "-p", "cloister-tee-runtime", "--bin", "cloister-runtime"]);
                if release {
                    cargo.arg("--release");
                }
                let status = cargo.current_dir(repo_root()).status().expect("run cargo");
                assert!(status.success(), "cannot build cloister-runtime");
            }
            runtime
        })
        .clone()
}

/// The `cloister-bench` binary beside `cloister` (the canary scan lives there). It belongs to
/// another package, so it is built here, once per test process, from the same sources: cargo
/// does nothing when it is up to date.
pub fn bench_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = Path::new(bin()).parent().expect("target dir");
            let release = dir.file_name().is_some_and(|n| n == "release");
            let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            cargo.args(["build", "-p", "cloister-bench", "--bin", "cloister-bench"]);
            if release {
                cargo.arg("--release");
            }
            let status = cargo.current_dir(repo_root()).status().expect("run cargo");
            assert!(status.success(), "cannot build cloister-bench");
            dir.join("cloister-bench")
        })
        .clone()
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

pub struct Server {
    pub dir: PathBuf,
    pub api: String,
    pub s3: String,
    child: Option<Child>,
    extra: Vec<String>,
    log: Option<PathBuf>,
    fd_limit: Option<u64>,
}

impl Server {
    /// Starts a server on `dir` with fixed credentials and any extra flags.
    pub fn start(dir: &Path, extra: &[&str]) -> Self {
        Self::launch(dir, extra, None, None)
    }

    /// As [`Self::start`], with the server's log in `log` instead of the test's stderr.
    pub fn start_logged(dir: &Path, extra: &[&str], log: &Path) -> Self {
        Self::launch(dir, extra, Some(log), None)
    }

    /// As [`Self::start_logged`], the server limited to `fd_limit` open files (soft and hard).
    pub fn start_limited(dir: &Path, extra: &[&str], log: &Path, fd_limit: u64) -> Self {
        Self::launch(dir, extra, Some(log), Some(fd_limit))
    }

    fn launch(dir: &Path, extra: &[&str], log: Option<&Path>, fd_limit: Option<u64>) -> Self {
        let mut server = Self {
            dir: dir.to_path_buf(),
            api: String::new(),
            s3: String::new(),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            log: log.map(Path::to_path_buf),
            fd_limit,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(bin());
        command
            .args(["server", "--listen", "127.0.0.1:0", "--s3-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--admin-user", USER, "--admin-password", PASSWORD])
            .args(["--s3-access-key", ACCESS_KEY, "--s3-secret-key", SECRET_KEY])
            .arg("--runtime-binary")
            .arg(runtime_bin())
            .args(&self.extra)
            // The default executor is `auto` (containers where an engine works); tests that do
            // not ask for one run their scripts on the host, as written.
            .args(if self.extra.iter().any(|a| a == "--executor") {
                &[][..]
            } else {
                &["--executor", "host"][..]
            })
            .env("CLOISTER_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(match &self.log {
                Some(log) => Stdio::from(std::fs::File::create(log).expect("create the server log")),
                None => Stdio::inherit(),
            });
        if let Some(limit) = self.fd_limit {
            let rlimit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            // SAFETY: setrlimit between fork and exec touches only the child's own limits.
            #[allow(unsafe_code)]
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const rlimit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = command.spawn().expect("start cloister server");
        // The server says where it listens once it serves (its ports may have been 0); the
        // client file may be stale (it is not rewritten where it cannot be, e.g. a full disk).
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let (Some(tx), Some(rest)) = (&tx, line.strip_prefix("cloister: REST API on ")) {
                    let mut parts = rest.split_whitespace();
                    let api = parts.next().unwrap_or_default().to_owned();
                    let s3 = parts.nth(3).unwrap_or_default().to_owned();
                    let _ = tx.send((api, s3));
                }
                if line.starts_with("cloister: REST API on ") {
                    tx = None;
                }
            }
        });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok((api, s3)) => {
                    self.api = api;
                    self.s3 = s3;
                    return;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            assert!(Instant::now() < deadline, "server did not start");
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("server exited early: {status}");
            }
        }
    }

    /// The server process's id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the server as an operator would (SIGTERM) and waits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: plain kill(2) on our own child process.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM)
            };
            let _ = child.wait();
        }
    }

    /// Kills the server without warning (kill -9).
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn restart_after_crash(&mut self) {
        self.crash();
        self.spawn();
    }

    pub fn http(&self) -> reqwest::Client {
        reqwest::Client::new()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http()
            .get(self.url(path))
            .basic_auth(USER, Some(PASSWORD))
            .send()
            .await
            .unwrap()
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let resp = self.get(path).await;
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.json().await.unwrap()
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http()
            .post(self.url(path))
            .basic_auth(USER, Some(PASSWORD))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub fn s3_client(&self, bucket: &str) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_endpoint(&self.s3)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_region("us-east-1")
            .with_bucket_name(bucket)
            .with_allow_http(true)
            .build()
            .unwrap()
    }

    /// Runs the CLI against this server.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin())
            .args(args)
            .env("CLOISTER_CONFIG", self.dir.join("client.json"))
            .output()
            .expect("run cloister")
    }

    /// Runs `cloister-bench` with this server's client configuration.
    pub fn bench(&self, args: &[&str]) -> std::process::Output {
        Command::new(bench_bin())
            .args(args)
            .env("CLOISTER_CONFIG", self.dir.join("client.json"))
            .output()
            .expect("run cloister-bench")
    }

    pub async fn token(&self, service: &str) -> String {
        self.get_json(&format!("/system/services/{service}")).await["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Waits until `service` has `count` finished jobs and returns all its jobs.
    /// Every job record of a service, across the listing's pages.
    pub async fn all_jobs(&self, service: &str) -> serde_json::Map<String, Value> {
        let mut all = serde_json::Map::new();
        let mut page = String::new();
        loop {
            let answer = self
                .get_json(&format!("/system/logs/{service}?page={page}&limit=1000"))
                .await;
            all.extend(answer["jobs"].as_object().cloned().unwrap_or_default());
            match answer["next_page"].as_str() {
                Some(next) if !next.is_empty() => page = next.to_owned(),
                _ => return all,
            }
        }
    }

    pub async fn wait_jobs(&self, service: &str, count: usize) -> serde_json::Map<String, Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let jobs = self.all_jobs(service).await;
            let finished = jobs
                .values()
                .filter(|j| matches!(j["status"].as_str(), Some("Succeeded" | "Failed")))
                .count();
            if finished >= count {
                return jobs;
            }
            assert!(
                Instant::now() < deadline,
                "{service}: {finished}/{count} jobs finished: {jobs:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.crash();
    }
}

/// Every regular file under `dir`, recursively (for scans that look for leaked plaintext).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if path.is_file() {
            out.push(path);
        }
    }
    out
}

/// A tmpfs mounted for one test, unmounted on drop.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs with `options` (e.g. `size=64m,mode=0700`) at `path` (created), or says
    /// why not and returns `None` (not root, no CAP_SYS_ADMIN): the caller skips, unless CI
    /// requires the test with `CLOISTER_REQUIRE_TMPFS`.
    pub fn mount(path: &Path, options: &str) -> Option<Self> {
        std::fs::create_dir_all(path).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(path)
            .output();
        match mounted {
            Ok(out) if out.status.success() => Some(Self {
                path: path.to_path_buf(),
            }),
            other => {
                let why = match other {
                    Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                    Err(e) => e.to_string(),
                };
                assert!(
                    std::env::var_os("CLOISTER_REQUIRE_TMPFS").is_none(),
                    "CLOISTER_REQUIRE_TMPFS is set but a tmpfs cannot be mounted: {why}"
                );
                eprintln!(
                    "skipped: cannot mount a tmpfs here ({why}); set CLOISTER_REQUIRE_TMPFS to fail instead"
                );
                None
            }
        }
    }

    /// Fills the file system to the last byte; the filler is `filler`.
    pub fn fill(&self) -> PathBuf {
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0x5au8; 1 << 20];
        let mut size = chunk.len();
        while size > 0 {
            match std::io::Write::write(&mut file, &chunk[..size]) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => size /= 2,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        let _ = file.sync_all();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a process of the test may still hold a file there.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// `cloister cas serve ARGS` with its stdout read on a thread: the process, and a receiver of
/// the URL it prints once its network port is open (which needs the CAS unsealed).
pub fn spawn_cas_serve<I, S>(args: I, stderr: Stdio) -> (Child, std::sync::mpsc::Receiver<String>)
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    use std::io::BufRead;
    let mut child = Command::new(bin())
        .args(["cas", "serve"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("start cloister cas serve");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("cloister cas: listening on ") {
                let _ = tx.send(url.to_owned());
            }
        }
    });
    (child, rx)
}

/// Podman as the container executor calls it (see `container.rs`): runc where it is installed,
/// and the cgroupfs manager.
pub fn podman(args: &[&str]) -> std::process::Output {
    let mut command = Command::new("podman");
    if Command::new("sh")
        .args(["-c", "command -v runc"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        command.args(["--runtime", "runc"]);
    }
    command
        .args(["--cgroup-manager", "cgroupfs"])
        .args(args)
        .output()
        .expect("run podman")
}
