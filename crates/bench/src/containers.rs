//! `cloister-bench containers`: the container executor against the floor of its engine. A
//! private `cloister server --executor container` runs trivial jobs in an image, and each
//! round measures, in this order, the engine floor (`podman run --rm IMAGE true`, the cost of
//! a container's life), upload → script start in a container, and sustained trivial container
//! jobs per second. As in `jobs`, a round's ratio is to its own floor, and the table shows the
//! median of the rounds with their range. The floor is measured twice: the whole life of
//! `run --rm IMAGE true` (the floor, teardown included), and `run` → its script's start,
//! which compares like with like.
//!
//! Each round then measures `/run` (a trivial script, stdout answered) on a warm container
//! (`synchronous.min_scale: 1`) against `/run` on a second private server with the host
//! executor, in the same run, invocation by invocation in turn (which goes first alternates by
//! round), so that both see the same machine load.
//!
//! The script's start is read inside the container from `/proc/uptime` (the host's boot clock:
//! containers have no time namespace here), so it is exact to its 10 ms resolution whatever the
//! engine does before the script runs; the upload's time is read from the same clock.

use std::ffi::OsStr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use cloister_cli::client::Client;
use futures::StreamExt;
use object_store::{ObjectStoreExt, PutPayload};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::process::{CloisterBin, load_average, spinner, start_server};
use crate::stats::{Metrics, Target, ms, percentile};

/// Sizes of the benchmark. The defaults take about three minutes on a 2-CPU machine.
#[derive(Debug, Clone, clap::Args)]
pub struct ContainersArgs {
    /// Rounds; each measures the engine floor, then the platform.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// `podman run --rm IMAGE true` runs for the floor, per round.
    #[arg(long, default_value_t = 10)]
    pub floor_runs: usize,
    /// Sequential uploads measured for upload → script start, per round.
    #[arg(long, default_value_t = 10)]
    pub latency_jobs: usize,
    /// Uploads for the sustained-throughput run, per round.
    #[arg(long, default_value_t = 40)]
    pub throughput_jobs: usize,
    /// `/run` invocations per round on a warm container and, interleaved with them, on a
    /// server with the host executor.
    #[arg(long, default_value_t = 40)]
    pub run_invocations: usize,
    /// Jobs running at once (default: twice the CPUs).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// The image the jobs run in (made offline by scripts/container-test-images).
    #[arg(long, default_value = "localhost/cloister-test/busybox:1")]
    pub image: String,
    /// The engine's CLI, for the floor and the server's `--container-engine`.
    #[arg(long, default_value = "podman")]
    pub engine: String,
    #[command(flatten)]
    pub cloister_bin: CloisterBin,
}

impl ContainersArgs {
    fn validate(&self) -> anyhow::Result<()> {
        crate::stats::require_at_least_one(&[
            (self.rounds, "--rounds"),
            (self.floor_runs, "--floor-runs"),
            (self.latency_jobs, "--latency-jobs"),
            (self.throughput_jobs, "--throughput-jobs"),
            (self.run_invocations, "--run-invocations"),
        ])?;
        Ok(())
    }
}

/// Prints the host's boot clock as the script starts (a shell builtin: no process before it).
const START_SCRIPT: &str = "read up _ < /proc/uptime; echo \"started $up\"";

/// The engine as the server calls it: Podman with runc and cgroupfs, and `--ulimit`s at the
/// hard limits (see `cloister_platform::container`).
fn engine_command(engine: &str) -> Command {
    let mut command = Command::new(engine);
    let podman = std::path::Path::new(engine)
        .file_name()
        .is_some_and(|n| n == "podman");
    if podman {
        let runc = Command::new("sh")
            .args(["-c", "command -v runc"])
            .output()
            .is_ok_and(|o| o.status.success());
        if runc {
            command.args(["--runtime", "runc"]);
        }
        command.args(["--cgroup-manager", "cgroupfs"]);
    }
    command
}

fn ulimit_args() -> Vec<String> {
    let hard = |resource| {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the limit into the struct we own.
        #[allow(unsafe_code)]
        let ok = unsafe { libc::getrlimit(resource, &raw mut limit) } == 0;
        ok.then_some(limit.rlim_max)
    };
    let mut args = Vec::new();
    for (name, resource, ceiling) in [
        ("nofile", libc::RLIMIT_NOFILE, 1 << 20),
        ("nproc", libc::RLIMIT_NPROC, 32768),
    ] {
        if let Some(n) = hard(resource) {
            let n = n.min(ceiling);
            args.extend(["--ulimit".to_owned(), format!("{name}={n}:{n}")]);
        }
    }
    args
}

/// The host's boot clock, as `/proc/uptime` gives it inside a container.
fn uptime() -> anyhow::Result<f64> {
    let text = std::fs::read_to_string("/proc/uptime")?;
    text.split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .context("unreadable /proc/uptime")
}

fn p50_p99(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at = |p| percentile(&samples, p).unwrap_or(0.0);
    (at(50.0), at(99.0))
}

pub async fn run(args: ContainersArgs, json: bool) -> anyhow::Result<()> {
    args.validate()?;
    let cloister = args.cloister_bin.path()?;
    let present = engine_command(&args.engine)
        .args(["image", "inspect", "--format", "{{.Id}}", &args.image])
        .output()
        .with_context(|| format!("cannot run {}", args.engine))?;
    anyhow::ensure!(
        present.status.success(),
        "the image {} is not present: run scripts/container-test-images (or give --image)",
        args.image
    );
    let dir = tempfile::tempdir().context("cannot create a temporary data directory")?;
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let concurrency = args.concurrency.unwrap_or(cpus * 2).max(1);
    let concurrency_flag = concurrency.to_string();
    let engine = which(&args.engine)?;
    let flags = [
        OsStr::new("--executor"),
        OsStr::new("container"),
        OsStr::new("--container-engine"),
        engine.as_os_str(),
        OsStr::new("--job-timeout"),
        OsStr::new("60s"),
        OsStr::new("--log-limit-kib"),
        OsStr::new("64"),
        OsStr::new("--concurrency"),
        OsStr::new(&concurrency_flag),
    ];
    let load_before = load_average();
    let data_dir = dir.path().join("data");
    let (server, client) = start_server(&cloister, &data_dir, &flags).await?;
    let client = Arc::new(client);
    for (name, script) in [("ctr-lat", START_SCRIPT), ("ctr-tp", ":")] {
        let body = json!({"name": name, "image": args.image, "script": script, "cpu": "1",
            "input": [{"storage_provider": "minio.default", "path": format!("{name}/in")}]});
        client
            .system(reqwest::Method::POST, "/system/services", Some(&body))
            .await?;
    }

    // The same trivial synchronous service on a warm container and on the host executor.
    let run_script = "cat \"$INPUT_FILE_PATH\"";
    let warm = json!({"name": "run-warm", "image": args.image, "script": run_script, "cpu": "1",
        "synchronous": {"min_scale": 1, "max_scale": 1}});
    client
        .system(reqwest::Method::POST, "/system/services", Some(&warm))
        .await?;
    let host_flags = [
        OsStr::new("--executor"),
        OsStr::new("host"),
        OsStr::new("--job-timeout"),
        OsStr::new("60s"),
        OsStr::new("--concurrency"),
        OsStr::new(&concurrency_flag),
    ];
    let (host_server, host_client) = start_server(&cloister, &dir.path().join("host"), &host_flags).await?;
    let mut host_service = warm.clone();
    host_service["name"] = json!("run-host");
    host_client
        .system(reqwest::Method::POST, "/system/services", Some(&host_service))
        .await?;
    let warm_token = service_token(&client, "run-warm").await?;
    let host_token = service_token(&host_client, "run-host").await?;
    // The warm container starts in the background: the first answer says it is ready.
    wait_warm(&client, &warm_token).await?;

    let mut metrics = Metrics::default();
    for round in 0..args.rounds {
        let label = |what: &str| format!("round {}/{}: {what}", round + 1, args.rounds);
        let bar = spinner(json, &label("engine floor (podman run --rm IMAGE true)"));
        let (floor, start_floor) = engine_floor(&args)?;
        let (floor, start_floor) = (p50_p99(floor), p50_p99(start_floor));
        bar.finish_and_clear();
        metrics.record_floor(
            "engine_floor_p50_ms",
            "engine floor (run --rm IMAGE true) p50",
            "ms",
            floor.0,
        );
        metrics.record_floor(
            "engine_start_floor_p50_ms",
            "engine floor: run → script start (no network) p50",
            "ms",
            start_floor.0,
        );

        let bar = spinner(json, &label("upload → script start in a container"));
        let (start, finish) = start_latency(&client, round, args.latency_jobs).await?;
        let (start, finish) = (p50_p99(start), p50_p99(finish));
        bar.finish_and_clear();
        metrics.record(
            "container_start_p50_ms",
            "upload → script start p50",
            "ms",
            start.0,
        );
        metrics.record(
            "container_start_p99_ms",
            "upload → script start p99",
            "ms",
            start.1,
        );
        metrics.record(
            "container_start_over_floor",
            "upload → script start p50 / engine floor p50",
            "×",
            start.0 / floor.0.max(1e-9),
        );
        metrics.record(
            "container_start_over_start_floor",
            "upload → script start p50 / run → script start p50",
            "×",
            start.0 / start_floor.0.max(1e-9),
        );
        metrics.record(
            "container_job_done_p50_ms",
            "upload → job finished p50",
            "ms",
            finish.0,
        );

        let bar = spinner(json, &label("sustained trivial container jobs/s"));
        let rate = throughput(&client, round, args.throughput_jobs).await?;
        bar.finish_and_clear();
        metrics.record(
            "container_jobs_per_s",
            "sustained trivial container jobs",
            "jobs/s",
            rate,
        );
        let bar = spinner(json, &label("/run: warm container against the host executor"));
        let (warm_ms, host_ms) = run_pairs(
            (&client, &warm_token),
            (&host_client, &host_token),
            args.run_invocations,
            round % 2 == 1,
        )
        .await?;
        let (warm_ms, host_ms) = (p50_p99(warm_ms), p50_p99(host_ms));
        bar.finish_and_clear();
        metrics.record_floor(
            "host_run_p50_ms",
            "/run on the host executor p50",
            "ms",
            host_ms.0,
        );
        metrics.record("warm_run_p50_ms", "/run on a warm container p50", "ms", warm_ms.0);
        metrics.record("warm_run_p99_ms", "/run on a warm container p99", "ms", warm_ms.1);
        metrics.record(
            "warm_run_over_host_ms",
            "/run p50: warm container − host executor",
            "ms",
            warm_ms.0 - host_ms.0,
        );
        for name in ["ctr-lat", "ctr-tp"] {
            client
                .system(
                    reqwest::Method::DELETE,
                    &format!("/system/logs/{name}?all=true"),
                    None,
                )
                .await?;
        }
    }
    drop(server);
    drop(host_server);
    let load_after = load_average();

    let targets = targets(&metrics);
    if json {
        let out = json!({
            "command": "containers",
            "cloister_bin": cloister.display().to_string(),
            "cpus": cpus,
            "load_average": {"before": load_before, "after": load_after},
            "concurrency": concurrency,
            "rounds": args.rounds,
            "parameters": {"floor_runs": args.floor_runs, "latency_jobs": args.latency_jobs,
                "throughput_jobs": args.throughput_jobs, "run_invocations": args.run_invocations,
                "concurrency": concurrency,
                "image": args.image, "engine": args.engine},
            "targets": Target::to_json(&targets),
            "measures": metrics.to_json(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "cloister bench containers — {cpus} CPUs, load {} before / {} after, {concurrency} concurrent jobs, \
         image {}, {} rounds (median, min–max)",
        load_before.as_deref().unwrap_or("?"),
        load_after.as_deref().unwrap_or("?"),
        args.image,
        args.rounds,
    );
    metrics.print_table();
    Target::print_all(&targets);
    Ok(())
}

fn which(engine: &str) -> anyhow::Result<std::path::PathBuf> {
    if engine.contains('/') {
        return Ok(engine.into());
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(engine))
                .find(|p| p.is_file())
        })
        .with_context(|| format!("{engine} is not on PATH"))
}

/// Wall time of `run --rm IMAGE true`, each run start to end (the engine's whole cost of a
/// container, the floor, with the engine's default network), and apart from those
/// runs, the time from `run --rm --network none --read-only` (as a job's container) to its
/// script's start, read in the container as the jobs' start is.
fn engine_floor(args: &ContainersArgs) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let ulimits = ulimit_args();
    let mut whole = Vec::with_capacity(args.floor_runs);
    let mut starts = Vec::with_capacity(args.floor_runs);
    for _ in 0..args.floor_runs {
        let started = Instant::now();
        let status = engine_command(&args.engine)
            .args(["run", "--rm"])
            .args(&ulimits)
            .args([&args.image, "true"])
            .status()?;
        anyhow::ensure!(status.success(), "{} run failed: {status}", args.engine);
        whole.push(ms(started.elapsed()));

        let sent = uptime()?;
        // As a job's container is run: without a network (whose setup the whole-life floor
        // pays) and with a read-only root.
        let out = engine_command(&args.engine)
            .args(["run", "--rm", "--network", "none", "--read-only"])
            .args(&ulimits)
            .args([&args.image, "/bin/sh", "-c", START_SCRIPT])
            .output()?;
        anyhow::ensure!(out.status.success(), "{} run failed: {}", args.engine, out.status);
        let text = String::from_utf8_lossy(&out.stdout);
        let started: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("started "))
            .and_then(|s| s.trim().parse().ok())
            .with_context(|| format!("no start in the floor run's output: {text}"))?;
        starts.push((started - sent) * 1000.0);
    }
    Ok((whole, starts))
}

fn parse_time(v: &Value) -> Option<OffsetDateTime> {
    v.as_str().and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
}

/// Per job, in milliseconds: upload sent → the script's first line (read in the container), and
/// upload sent → the job's record finished.
async fn start_latency(client: &Client, round: usize, count: usize) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let store = client.s3("ctr-lat").await?;
    let mut starts = Vec::with_capacity(count);
    let mut finishes = Vec::with_capacity(count);
    let mut last = String::new();
    for i in 0..count {
        let path = object_store::path::Path::from(format!("in/r{round}-lat-{i}"));
        let (sent_boot, sent_wall) = (uptime()?, OffsetDateTime::now_utc());
        store.put(&path, PutPayload::from_static(b"x")).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let answer = client
                .get_json(&format!("/system/logs/ctr-lat?page={last}&limit=1000"))
                .await?;
            let jobs = answer["jobs"].as_object().cloned().unwrap_or_default();
            let done = jobs
                .iter()
                .find(|(_, j)| matches!(j["status"].as_str(), Some("Succeeded" | "Failed")));
            if let Some((name, job)) = done {
                anyhow::ensure!(job["status"] == "Succeeded", "a benchmark job failed: {job}");
                let log = client
                    .system(
                        reqwest::Method::GET,
                        &format!("/system/logs/ctr-lat/{name}"),
                        None,
                    )
                    .await?
                    .text()
                    .await?;
                let started: f64 = log
                    .lines()
                    .find_map(|l| l.strip_prefix("started "))
                    .and_then(|s| s.trim().parse().ok())
                    .with_context(|| format!("the job's log has no start: {log}"))?;
                starts.push((started - sent_boot) * 1000.0);
                let finished = parse_time(&job["finish_time"]).context("job without finish time")?;
                finishes.push(ms(Duration::try_from(finished - sent_wall).unwrap_or_default()));
                last.clone_from(name);
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "a benchmark job did not finish in 60 s"
            );
        }
    }
    Ok((starts, finishes))
}

/// Jobs per second from the first upload to the last job's finish.
async fn throughput(client: &Client, round: usize, count: usize) -> anyhow::Result<f64> {
    let store = Arc::new(client.s3("ctr-tp").await?);
    let started_at = OffsetDateTime::now_utc();
    let uploads = futures::stream::iter(0..count).map(|i| {
        let store = store.clone();
        async move {
            store
                .put(
                    &object_store::path::Path::from(format!("in/r{round}-tp-{i}")),
                    PutPayload::from_static(b"x"),
                )
                .await
        }
    });
    for result in uploads.buffer_unordered(16).collect::<Vec<_>>().await {
        result?;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let answer = client.get_json("/system/logs/ctr-tp?limit=1000").await?;
        let jobs = answer["jobs"].as_object().cloned().unwrap_or_default();
        let finished: Vec<OffsetDateTime> = jobs
            .values()
            .filter_map(|j| parse_time(&j["finish_time"]))
            .collect();
        if finished.len() >= count {
            let failed = jobs.values().filter(|j| j["status"] == "Failed").count();
            anyhow::ensure!(failed == 0, "{failed} throughput job(s) failed");
            let last = finished.into_iter().max().unwrap_or(started_at);
            let elapsed = Duration::try_from(last - started_at).unwrap_or_default();
            return Ok(count as f64 / elapsed.as_secs_f64().max(1e-9));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "throughput jobs did not finish in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn service_token(client: &Client, service: &str) -> anyhow::Result<String> {
    let svc = client.get_json(&format!("/system/services/{service}")).await?;
    Ok(svc["token"].as_str().context("no token")?.to_owned())
}

/// One `/run` with a body of `x`, its answer checked: its wall time in milliseconds.
async fn invoke_once(client: &Client, service: &str, token: &str) -> anyhow::Result<f64> {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(b"x");
    let started = Instant::now();
    let response = client
        .invoke(&format!("/run/{service}"), token, body.into_bytes())
        .await?;
    let answer = response.bytes().await?;
    let took = ms(started.elapsed());
    anyhow::ensure!(answer.as_ref() == b"x", "unexpected /run answer: {answer:?}");
    Ok(took)
}

/// Waits until the warm container answers (it starts in the background once the service is
/// created; until then invocations run cold).
async fn wait_warm(client: &Client, token: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // A cold invocation pays a container's start (hundreds of ms); a warm one does not.
        if invoke_once(client, "run-warm", token).await? < 50.0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the warm container did not answer within 2 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `count` invocations of each, in turn: (warm container, host executor) in milliseconds.
async fn run_pairs(
    (warm, warm_token): (&Client, &str),
    (host, host_token): (&Client, &str),
    count: usize,
    host_first: bool,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let (mut warm_ms, mut host_ms) = (Vec::with_capacity(count), Vec::with_capacity(count));
    for _ in 0..count {
        if host_first {
            host_ms.push(invoke_once(host, "run-host", host_token).await?);
            warm_ms.push(invoke_once(warm, "run-warm", warm_token).await?);
        } else {
            warm_ms.push(invoke_once(warm, "run-warm", warm_token).await?);
            host_ms.push(invoke_once(host, "run-host", host_token).await?);
        }
    }
    Ok((warm_ms, host_ms))
}

/// The targets: upload → script start within 1.5× the engine's own floor; `/run` on a
/// warm container within 2 ms of the host executor's.
fn targets(metrics: &Metrics) -> Vec<Target> {
    let mut out = Vec::new();
    if let Some(extra) = metrics.median("warm_run_over_host_ms") {
        out.push(Target {
            text: format!("/run p50 on a warm container ≤ host executor's + 2 ms ({extra:+.2} ms)"),
            met: extra <= 2.0,
        });
    }
    if let Some(ratio) = metrics.median("container_start_over_floor") {
        out.push(Target {
            text: format!("upload → script start p50 ≤ 1.5× engine floor ({ratio:.2}×)"),
            met: ratio <= 1.5,
        });
    }
    out
}
