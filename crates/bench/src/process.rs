//! The programs the benchmarks start: where `cloister` and `cloister-runtime` are, a guard that
//! ends a child process however the benchmark ends, and a private `cloister server`.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use cloister_cli::client::{Client, ClientConfig};

/// Where the `cloister` binary is.
#[derive(Debug, Clone, clap::Args)]
pub struct CloisterBin {
    /// The `cloister` binary the benchmark starts (default: beside this program, as `cargo
    /// build` leaves it).
    #[arg(long, env = "CLOISTER_BIN", value_name = "PATH")]
    cloister_bin: Option<PathBuf>,
}

impl CloisterBin {
    /// The `cloister` binary, which must exist.
    pub fn path(&self) -> anyhow::Result<PathBuf> {
        let path = match &self.cloister_bin {
            Some(path) => path.clone(),
            None => beside_this_program("cloister")?,
        };
        existing(path, "cloister", "-p cloister-cli", "--cloister-bin")
    }
}

/// The `cloister-runtime` binary, `named` or else beside `cloister`, which must exist.
pub fn runtime_bin(named: Option<&Path>, cloister: &Path) -> anyhow::Result<PathBuf> {
    let path = match named {
        Some(path) => path.to_path_buf(),
        None => cloister.with_file_name("cloister-runtime"),
    };
    existing(
        path,
        "cloister-runtime",
        "-p cloister-tee-runtime",
        "--runtime-bin",
    )
}

fn beside_this_program(name: &str) -> anyhow::Result<PathBuf> {
    let this = std::env::current_exe().context("cannot find this program")?;
    Ok(this.with_file_name(name))
}

fn existing(path: PathBuf, name: &str, package: &str, flag: &str) -> anyhow::Result<PathBuf> {
    anyhow::ensure!(
        path.is_file(),
        "no {name} binary at {}: build it (`cargo build --release {package}`, or `cargo build --release` for \
         all) or name it with {flag}",
        path.display(),
    );
    eprintln!("bench: using {}", path.display());
    Ok(path)
}

/// A child process that is killed and reaped when the guard is dropped, so a benchmark that
/// fails half-way leaves no server behind.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// Asks the process `pid` (this child, or a process it started) to shut down with SIGTERM
    /// and waits up to `timeout` for this child to exit; it is killed if it does not.
    pub async fn terminate(mut self, pid: u32, timeout: Duration) -> anyhow::Result<()> {
        let pid = i32::try_from(pid).context("a pid out of range")?;
        // SAFETY: kill(2) sends a signal to a process; no memory is involved.
        #[allow(unsafe_code)]
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        anyhow::ensure!(
            sent == 0,
            "cannot signal process {pid}: {}",
            std::io::Error::last_os_error()
        );
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.0.try_wait()? {
                anyhow::ensure!(status.success(), "the benchmark server exited with {status}");
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the benchmark server did not stop within {timeout:?} of SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cloister server` on loopback ports with `data_dir` and the `extra` flags, and waits
/// until it has written its client configuration.
pub async fn start_server(
    cloister: &Path,
    data_dir: &Path,
    extra: &[&OsStr],
) -> anyhow::Result<(ChildGuard, Client)> {
    start_server_with(&Launch::default(), cloister, data_dir, extra).await
}

/// How [`start_server_with`] starts the server.
#[derive(Debug, Default)]
pub struct Launch<'a> {
    /// A program and arguments that start the server (an instruction counter), or none.
    pub wrapper: &'a [OsString],
    /// Where the server's stderr goes with its stage timings as JSON lines (the debug events of
    /// the `cloister::stages` target), or none: warnings only, on this program's stderr.
    pub stage_log: Option<&'a Path>,
}

/// As [`start_server`], started as `launch` says.
pub async fn start_server_with(
    launch: &Launch<'_>,
    cloister: &Path,
    data_dir: &Path,
    extra: &[&OsStr],
) -> anyhow::Result<(ChildGuard, Client)> {
    let wrapper = launch.wrapper;
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(cloister);
            command
        }
        None => Command::new(cloister),
    };
    log_stages(&mut command, launch.stage_log, "server")?;
    // The benchmarks measure the host executor unless they ask for another (`--executor` wins
    // over the variable); a variable rather than a flag, so that a baseline binary older than
    // the flag starts too.
    command.env("CLOISTER_EXECUTOR", "host");
    let mut server = ChildGuard(
        command
            .args([
                "server",
                "--listen",
                "127.0.0.1:0",
                "--s3-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start the benchmark server")?,
    );
    let client_file = data_dir.join("client.json");
    // An instruction counter slows the server's start by tens of times.
    let patience = Duration::from_secs(if wrapper.is_empty() { 30 } else { 300 });
    let deadline = Instant::now() + patience;
    while !client_file.exists() {
        anyhow::ensure!(Instant::now() < deadline, "the benchmark server did not start");
        if let Some(status) = server.0.try_wait()? {
            anyhow::bail!("the benchmark server exited: {status}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let config: ClientConfig = serde_json::from_slice(&std::fs::read(&client_file)?)?;
    Ok((server, Client::new(config)?))
}

/// A spinner on a terminal; a plain line on stderr otherwise (and with `--json`).
pub fn spinner(json: bool, message: &str) -> indicatif::ProgressBar {
    if json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!("bench: {message}");
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message(message.to_owned());
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// The 1, 5 and 15 minute load averages, as the kernel prints them.
pub fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let fields: Vec<&str> = text.split_whitespace().take(3).collect();
    (fields.len() == 3).then(|| fields.join(" "))
}

/// A private development CAS started by [`start_cas`]: its process, URL, pin and data directory.
pub struct PrivateCas {
    /// The `cloister cas serve` process.
    pub process: ChildGuard,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The identity pin clients check.
    pub pin: String,
    /// The vault's directory.
    pub data_dir: PathBuf,
}

impl PrivateCas {
    /// Stops the CAS as an operator would (SIGTERM), so it writes what it keeps for its
    /// shutdown (the last refusal summary), and waits for it to exit.
    pub async fn stop(self) -> anyhow::Result<()> {
        let pid = self.process.0.id();
        self.process.terminate(pid, Duration::from_secs(30)).await
    }
}

/// Starts a development CAS (key-file sealed, so it starts unsealed) in `dir/cas`, with the
/// administrator `admin`, as its own `cloister cas serve` process. With `stage_log`, its stderr
/// goes there with its stage timings as JSON lines (the debug events of `cloister::stages`).
pub fn start_cas(
    cloister: &Path,
    dir: &Path,
    admin: &str,
    stage_log: Option<&Path>,
) -> anyhow::Result<PrivateCas> {
    let data_dir = dir.join("cas");
    let init = Command::new(cloister)
        .args(["cas", "init", "--json", "--data-dir"])
        .arg(&data_dir)
        .arg("--key-file")
        .arg(dir.join("cas.master"))
        .output()?;
    anyhow::ensure!(
        init.status.success(),
        "cas init failed: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let init: serde_json::Value = serde_json::from_slice(&init.stdout)?;
    let pin = init["identity_pin"].as_str().context("no pin")?.to_owned();
    let mut command = Command::new(cloister);
    log_stages(&mut command, stage_log, "CAS")?;
    let mut process = ChildGuard(
        command
            .args([
                "cas",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin",
                admin,
                "--data-dir",
            ])
            .arg(&data_dir)
            .stdout(Stdio::piped())
            .spawn()?,
    );
    let stdout = process.0.stdout.take().context("no CAS stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("cloister cas: listening on ") {
                let _ = tx.send(url.to_owned());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .context("the benchmark CAS did not open its port")?;
    Ok(PrivateCas {
        process,
        url,
        pin,
        data_dir,
    })
}

/// Warnings only to our stderr; or, with `stage_log`, also the `cloister::stages` debug events,
/// as JSON lines into that file (what `--stages` reads).
fn log_stages(command: &mut Command, stage_log: Option<&Path>, who: &str) -> anyhow::Result<()> {
    match stage_log {
        Some(path) => {
            let log = std::fs::File::create(path)
                .with_context(|| format!("cannot create the {who}'s log {}", path.display()))?;
            command
                .env("CLOISTER_LOG", "warn,cloister::stages=debug")
                .env("CLOISTER_LOG_FORMAT", "json")
                .stderr(log);
        }
        None => {
            command.env("CLOISTER_LOG", "warn").stderr(Stdio::inherit());
        }
    }
    Ok(())
}
