//! `cloister-bench jobs`: starts a private `cloister server` on loopback ports and a temporary
//! data directory, then measures upload→job-start latency, sustained trivial jobs per second
//! and `/run` round trips, each next to the process-spawn floor measured in the same run.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;
use cloister_cli::client::Client;
use futures::StreamExt;
use object_store::{ObjectStoreExt, PutPayload};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::process::{CloisterBin, spinner, start_server};
use crate::stats::{ms, percentile};

/// Sizes of the benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct JobsArgs {
    /// Process spawns measured for the floor.
    #[arg(long, default_value_t = 500)]
    pub spawns: usize,
    /// Sequential uploads measured for upload→job-start latency.
    #[arg(long, default_value_t = 200)]
    pub latency_jobs: usize,
    /// Uploads for the sustained-throughput run.
    #[arg(long, default_value_t = 2000)]
    pub throughput_jobs: usize,
    /// Sequential `/run` invocations.
    #[arg(long, default_value_t = 300)]
    pub runs: usize,
    /// Jobs running at once (default: twice the CPUs).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// The server's `--work-dir` (default: in its data directory, on disk).
    #[arg(long)]
    pub work_dir: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub cloister_bin: CloisterBin,
}

/// Echoes the input with shell builtins only, so the round trip measures the platform and one
/// process, not the cost of extra programs the script might start.
const RUN_SCRIPT: &str =
    r#"while IFS= read -r line || [ -n "$line" ]; do printf '%s\n' "$line"; done < "$INPUT_FILE_PATH""#;

struct Stats {
    p50: Duration,
    p99: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    Stats {
        p50: percentile(&samples, 50.0).unwrap_or_default(),
        p99: percentile(&samples, 99.0).unwrap_or_default(),
    }
}

pub async fn run(args: JobsArgs, json: bool) -> anyhow::Result<()> {
    let cloister = args.cloister_bin.path()?;
    let dir = tempfile::tempdir().context("cannot create a temporary data directory")?;
    // The server runs as its own process, as it does in real use: sharing this process's async
    // runtime with the measuring clients would slow it down and blur the figures.
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let concurrency = args.concurrency.unwrap_or(cpus * 2).max(1);
    let concurrency_flag = concurrency.to_string();
    let mut flags = [
        "--job-timeout",
        "60s",
        "--log-limit-kib",
        "64",
        "--concurrency",
        &concurrency_flag,
    ]
    .map(OsStr::new)
    .to_vec();
    if let Some(work_dir) = &args.work_dir {
        flags.extend([OsStr::new("--work-dir"), work_dir.as_os_str()]);
    }
    let (server, client) = start_server(&cloister, dir.path(), &flags).await?;
    let client = Arc::new(client);
    for (name, script) in [("bench-lat", ":"), ("bench-tp", ":"), ("bench-run", RUN_SCRIPT)] {
        let body = json!({"name": name, "image": "none", "script": script,
            "input": [{"storage_provider": "minio.default", "path": format!("{name}/in")}]});
        client
            .system(reqwest::Method::POST, "/system/services", Some(&body))
            .await?;
    }

    let bar = spinner(json, "measuring the process-spawn floor");
    let mut floor = Vec::with_capacity(args.spawns);
    for _ in 0..args.spawns {
        let started = Instant::now();
        std::process::Command::new("/bin/sh")
            .args(["-c", "true"])
            .status()?;
        floor.push(started.elapsed());
    }
    let floor = stats(floor);
    bar.finish_and_clear();

    // The upload path commits durably once (the upload intent); how long a flush takes on this
    // disk at this moment is the other floor the latency stands on.
    let bar = spinner(json, "measuring the durable-write floor");
    let fsync_floor = stats(durable_write_floor(&dir.path().join("fsync-probe"), 200)?);
    bar.finish_and_clear();

    let bar = spinner(json, "measuring upload→job-start latency");
    let (latency, dispatch) = start_latency(&client, args.latency_jobs).await?;
    let (latency, dispatch) = (stats(latency), stats(dispatch));
    bar.finish_and_clear();

    let bar = spinner(json, "measuring sustained trivial jobs/s");
    let (jobs_per_s, tp_elapsed) = throughput(&client, args.throughput_jobs).await?;
    bar.finish_and_clear();

    let bar = spinner(json, "measuring /run round trips");
    let run_rtt = stats(run_round_trips(&client, args.runs).await?);
    bar.finish_and_clear();
    drop(server);

    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let start_ratio = ms(latency.p50) / ms(floor.p50).max(1e-9);
    let run_over_floor = ms(run_rtt.p50) - ms(floor.p50);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "cpus": cpus,
                "work_dir": args.work_dir.as_ref().map(|d| d.display().to_string()),
                "concurrency": concurrency,
                "spawn_floor_ms": {"p50": ms(floor.p50), "p99": ms(floor.p99)},
                "fsync_floor_ms": {"p50": ms(fsync_floor.p50), "p99": ms(fsync_floor.p99)},
                "job_start_ms": {"p50": ms(latency.p50), "p99": ms(latency.p99), "p50_over_floor": start_ratio},
                "recorded_to_start_ms": {"p50": ms(dispatch.p50), "p99": ms(dispatch.p99)},
                "jobs_per_second": jobs_per_s,
                "throughput_jobs": args.throughput_jobs,
                "throughput_seconds": tp_elapsed.as_secs_f64(),
                "run_round_trip_ms": {"p50": ms(run_rtt.p50), "p99": ms(run_rtt.p99), "p50_minus_floor": run_over_floor},
            }))?
        );
        return Ok(());
    }
    let work_dirs = args.work_dir.as_ref().map_or_else(
        || "in the data directory".to_owned(),
        |d| format!("in {}", d.display()),
    );
    println!("cloister bench — {cpus} CPUs, {concurrency} concurrent jobs, work directories {work_dirs}");
    println!(
        "{:<34} {:>10} {:>10} {:>22} {:>8}",
        "measure", "p50", "p99", "target", ""
    );
    println!(
        "{:<34} {:>7.3} ms {:>7.3} ms {:>22} {:>8}",
        "process spawn floor (sh -c true)",
        ms(floor.p50),
        ms(floor.p99),
        "",
        ""
    );
    println!(
        "{:<34} {:>7.3} ms {:>7.3} ms {:>22} {:>8}",
        "durable write floor (fdatasync)",
        ms(fsync_floor.p50),
        ms(fsync_floor.p99),
        "",
        ""
    );
    println!(
        "{:<34} {:>7.3} ms {:>7.3} ms {:>22} {:>8}",
        "upload → job start",
        ms(latency.p50),
        ms(latency.p99),
        format!("p50 ≤ 3× floor ({start_ratio:.2}×)"),
        verdict(start_ratio <= 3.0)
    );
    println!(
        "{:<34} {:>7.3} ms {:>7.3} ms {:>22} {:>8}",
        "  of which: job recorded → start",
        ms(dispatch.p50),
        ms(dispatch.p99),
        "",
        ""
    );
    println!(
        "{:<34} {:>10} {:>10} {:>22} {:>8}",
        "sustained trivial jobs",
        format!("{jobs_per_s:.0}/s"),
        "",
        "≥ 300/s",
        verdict(jobs_per_s >= 300.0)
    );
    println!(
        "{:<34} {:>7.3} ms {:>7.3} ms {:>22} {:>8}",
        "/run round trip",
        ms(run_rtt.p50),
        ms(run_rtt.p99),
        format!("p50 ≤ floor+2 ms (+{run_over_floor:.2})"),
        verdict(run_over_floor <= 2.0)
    );
    Ok(())
}

/// Times `count` durable 4 KiB overwrites (write, then fdatasync) of a file at `path`, on the
/// file system the server's state lives on.
fn durable_write_floor(path: &std::path::Path, count: usize) -> anyhow::Result<Vec<Duration>> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::create(path).context("cannot create the fsync probe file")?;
    let page = [0x5a_u8; 4096];
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        file.write_at(&page, 0)?;
        file.sync_data()?;
        samples.push(started.elapsed());
    }
    drop(file);
    std::fs::remove_file(path)?;
    Ok(samples)
}

fn parse_time(v: &Value) -> Option<OffsetDateTime> {
    v.as_str().and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
}

/// Jobs of a service listed after `after`.
async fn jobs_after(
    client: &Client,
    service: &str,
    after: &str,
) -> anyhow::Result<serde_json::Map<String, Value>> {
    let answer = client
        .get_json(&format!("/system/logs/{service}?page={after}&limit=1000"))
        .await?;
    Ok(answer["jobs"].as_object().cloned().unwrap_or_default())
}

/// Per job: PUT sent → script started, and (server side) object recorded → script started.
async fn start_latency(client: &Client, count: usize) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let store = client.s3("bench-lat").await?;
    let mut samples = Vec::with_capacity(count);
    let mut dispatch = Vec::with_capacity(count);
    let mut last = String::new();
    for i in 0..count {
        let path = object_store::path::Path::from(format!("in/lat-{i}"));
        let sent = OffsetDateTime::now_utc();
        store.put(&path, PutPayload::from_static(b"x")).await?;
        // Polling right away would compete with the job's start for the two CPUs; the job's
        // own start time is recorded by the server, so waiting first costs no accuracy.
        tokio::time::sleep(Duration::from_millis(15)).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let jobs = jobs_after(client, "bench-lat", &last).await?;
            let done = jobs
                .iter()
                .find(|(_, j)| matches!(j["status"].as_str(), Some("Succeeded" | "Failed")));
            if let Some((name, job)) = done {
                let started = parse_time(&job["start_time"]).context("job without start time")?;
                let created = parse_time(&job["creation_time"]).context("job without creation time")?;
                samples.push(Duration::try_from(started - sent).unwrap_or_default());
                dispatch.push(Duration::try_from(started - created).unwrap_or_default());
                last.clone_from(name);
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "a benchmark job did not finish in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    Ok((samples, dispatch))
}

async fn throughput(client: &Client, count: usize) -> anyhow::Result<(f64, Duration)> {
    let store = Arc::new(client.s3("bench-tp").await?);
    let started_at = OffsetDateTime::now_utc();
    let uploads = futures::stream::iter(0..count).map(|i| {
        let store = store.clone();
        async move {
            store
                .put(
                    &object_store::path::Path::from(format!("in/tp-{i}")),
                    PutPayload::from_static(b"x"),
                )
                .await
        }
    });
    let results: Vec<_> = uploads.buffer_unordered(16).collect().await;
    for result in results {
        result?;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let mut finished = 0usize;
        let mut last_finish = started_at;
        let mut page = String::new();
        loop {
            let answer = client
                .get_json(&format!("/system/logs/bench-tp?page={page}&limit=1000"))
                .await?;
            for job in answer["jobs"].as_object().into_iter().flat_map(|m| m.values()) {
                if let Some(t) = parse_time(&job["finish_time"]) {
                    finished += 1;
                    last_finish = last_finish.max(t);
                }
            }
            match answer["next_page"].as_str() {
                Some(next) if !next.is_empty() => page = next.to_owned(),
                _ => break,
            }
        }
        if finished >= count {
            let elapsed = Duration::try_from(last_finish - started_at).unwrap_or_default();
            return Ok((count as f64 / elapsed.as_secs_f64().max(1e-9), elapsed));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "throughput jobs did not finish in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run_round_trips(client: &Client, count: usize) -> anyhow::Result<Vec<Duration>> {
    let svc = client.get_json("/system/services/bench-run").await?;
    let token = svc["token"].as_str().context("no token")?.to_owned();
    let body = base64::engine::general_purpose::STANDARD.encode(b"hello");
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let response = client
            .invoke("/run/bench-run", &token, body.clone().into_bytes())
            .await?;
        let answer = response.bytes().await?;
        samples.push(started.elapsed());
        anyhow::ensure!(!answer.is_empty(), "empty /run answer");
    }
    Ok(samples)
}
