//! `cloister-bench jobs`: starts a private `cloister server` on loopback ports and a temporary
//! data directory, then measures upload→job-start latency, sustained trivial jobs per second
//! and `/run` round trips, each next to the process-spawn floor measured in the same round.
//!
//! The measurement runs in rounds; each round measures the floors (process spawn, durable
//! write) and then the platform (upload→job start, throughput, `/run`), so a slow phase of the
//! machine hits the floor and the path measured against it alike. A round's figure is the ratio
//! or difference to its own round's floor; the table prints each figure's median over the
//! rounds with their range, and `--json` every round's value. With `--instructions`, the work
//! per job in CPU instructions is counted too (see the `instructions` module); with `--stages`,
//! each round's uploads are broken into the stages the server times itself (its debug events of
//! the `cloister::stages` target: object data, object commit with its event, jobs' commit, work
//! directory, spawn).

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

use crate::instructions::{Counter, PerJob};
use crate::process::{CloisterBin, Launch, load_average, spinner, start_server_with};
use crate::stats::{Metrics, Target, ms, percentile};

/// Sizes of the benchmark. The defaults take about a minute on an idle 2-CPU machine (a round
/// is ~6 s): seven rounds give a median that one or two slow phases of the machine cannot
/// move, and each round has enough samples for its own p50 and p99.
#[derive(Debug, Clone, clap::Args)]
pub struct JobsArgs {
    /// Rounds; each measures the floors and then the platform, and the table shows the median of
    /// the rounds with their range.
    #[arg(long, default_value_t = 7)]
    pub rounds: usize,
    /// Process spawns measured for the floor, per round.
    #[arg(long, default_value_t = 300)]
    pub spawns: usize,
    /// Sequential uploads measured for upload→job-start latency, per round.
    #[arg(long, default_value_t = 100)]
    pub latency_jobs: usize,
    /// Uploads for the sustained-throughput run, per round.
    #[arg(long, default_value_t = 1000)]
    pub throughput_jobs: usize,
    /// Sequential `/run` invocations, per round.
    #[arg(long, default_value_t = 200)]
    pub runs: usize,
    /// Jobs running at once (default: twice the CPUs).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// The server's `--work-dir` (default: in its data directory, on disk).
    #[arg(long)]
    pub work_dir: Option<std::path::PathBuf>,
    /// Also count the CPU instructions per job of the floor and the job path, with `perf stat`
    /// where the machine has the counter, else valgrind (slow: a minute or more). With
    /// CLOISTER_BENCH_KEEP_COUNTS=DIR the raw counts are kept there (callgrind's files, for
    /// `callgrind_annotate`).
    #[arg(long)]
    pub instructions: bool,
    /// Also record the stages of each upload→job start (object data, object commit with its
    /// event, job commit, work directory, spawn) from the server's `cloister::stages` debug
    /// events; writing them costs the server a little.
    #[arg(long)]
    pub stages: bool,
    /// Uploads in the instruction-counted run.
    #[arg(long, default_value_t = 50)]
    pub instruction_jobs: usize,
    #[command(flatten)]
    pub cloister_bin: CloisterBin,
}

impl JobsArgs {
    fn validate(&self) -> anyhow::Result<()> {
        crate::stats::require_at_least_one(&[
            (self.rounds, "--rounds"),
            (self.spawns, "--spawns"),
            (self.latency_jobs, "--latency-jobs"),
            (self.throughput_jobs, "--throughput-jobs"),
            (self.runs, "--runs"),
            (self.instruction_jobs, "--instruction-jobs"),
        ])?;
        Ok(())
    }
}

/// Echoes the input with shell builtins only, so the round trip measures the platform and one
/// process, not the cost of extra programs the script might start.
const RUN_SCRIPT: &str =
    r#"while IFS= read -r line || [ -n "$line" ]; do printf '%s\n' "$line"; done < "$INPUT_FILE_PATH""#;

/// The services of the benchmark: latency, throughput and `/run`.
const SERVICES: [(&str, &str); 3] = [("bench-lat", ":"), ("bench-tp", ":"), ("bench-run", RUN_SCRIPT)];

/// p50 and p99 in milliseconds.
fn p50_p99(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |p| percentile(&samples, p).map_or(0.0, ms);
    (at(50.0), at(99.0))
}

pub async fn run(args: JobsArgs, json: bool) -> anyhow::Result<()> {
    args.validate()?;
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
    let load_before = load_average();
    let stage_log = dir.path().join("stages.jsonl");
    let launch = Launch {
        wrapper: &[],
        stage_log: args.stages.then_some(stage_log.as_path()),
    };
    let data_dir = dir.path().join("data");
    let (server, client) = start_server_with(&launch, &cloister, &data_dir, &flags).await?;
    let client = Arc::new(client);
    for (name, script) in SERVICES {
        let body = json!({"name": name, "image": "none", "script": script,
            "input": [{"storage_provider": "minio.default", "path": format!("{name}/in")}]});
        client
            .system(reqwest::Method::POST, "/system/services", Some(&body))
            .await?;
    }

    let mut metrics = Metrics::default();
    for round in 0..args.rounds {
        let label = |what: &str| format!("round {}/{}: {what}", round + 1, args.rounds);
        measure_round(&args, &client, &data_dir, round, &mut metrics, &label, json).await?;
        // Every round starts from the same job list, so none pays for the ones before it.
        for (name, _) in SERVICES {
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
    let load_after = load_average();
    if args.stages {
        let log = std::fs::read_to_string(&stage_log).context("cannot read the server's stage log")?;
        record_stages(&mut metrics, &log, args.rounds)?;
    }

    let instructions = if args.instructions {
        let bar = spinner(json, "counting instructions per job (slow)");
        let counted = match Counter::detect() {
            Ok(counter) => instructions_of(counter, &cloister, &flags, args.instruction_jobs).await,
            Err(why) => Err(why),
        };
        bar.finish_and_clear();
        if let Ok(per_job) = &counted {
            record_instructions(&mut metrics, per_job);
        }
        Some(counted)
    } else {
        None
    };

    let targets = targets(&metrics);
    if json {
        let out = json!({
            "command": "jobs",
            "cloister_bin": cloister.display().to_string(),
            "cpus": cpus,
            "load_average": {"before": load_before, "after": load_after},
            "work_dir": args.work_dir.as_ref().map(|d| d.display().to_string()),
            "concurrency": concurrency,
            "rounds": args.rounds,
            "parameters": {"spawns": args.spawns, "latency_jobs": args.latency_jobs,
                "throughput_jobs": args.throughput_jobs, "runs": args.runs,
                "concurrency": concurrency, "work_dir": args.work_dir.as_ref().map(|d| d.display().to_string())},
            "instructions": instructions.as_ref().map(|counted| match counted {
                Ok(per_job) => per_job.to_json(),
                Err(why) => json!({"available": false, "reason": why}),
            }),
            "targets": Target::to_json(&targets),
            "measures": metrics.to_json(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let work_dirs = args.work_dir.as_ref().map_or_else(
        || "in the data directory".to_owned(),
        |d| format!("in {}", d.display()),
    );
    println!(
        "cloister bench — {cpus} CPUs, load {} before / {} after, {concurrency} concurrent jobs, work directories \
         {work_dirs}, {} rounds (median, min–max)",
        load_before.as_deref().unwrap_or("?"),
        load_after.as_deref().unwrap_or("?"),
        args.rounds,
    );
    metrics.print_table();
    match &instructions {
        Some(Ok(per_job)) => println!(
            "instructions counted with {} ({}), {} jobs",
            per_job.counter.name(),
            per_job.scope,
            per_job.jobs
        ),
        Some(Err(why)) => println!("instructions: not available ({why})"),
        None => {}
    }
    Target::print_all(&targets);
    Ok(())
}

/// The instruction counts, or why there are none: a counter that fails is reported, not fatal,
/// since the wall-time figures stand on their own.
async fn instructions_of(
    counter: Counter,
    cloister: &std::path::Path,
    flags: &[&OsStr],
    jobs: usize,
) -> Result<PerJob, String> {
    crate::instructions::measure(counter, cloister, flags, jobs)
        .await
        .map_err(|e| format!("{} failed: {e:#}", counter.name()))
}

fn record_instructions(metrics: &mut Metrics, per_job: &PerJob) {
    const UNIT: &str = "instructions";
    metrics.record_floor(
        "instructions_floor",
        "instructions: spawn floor (sh -c true)",
        UNIT,
        per_job.floor,
    );
    metrics.record(
        "instructions_per_job",
        "instructions: upload → job, per job",
        UNIT,
        per_job.total,
    );
    if let Some(server) = per_job.server {
        metrics.record(
            "instructions_server_per_job",
            "  of which: the server",
            UNIT,
            server,
        );
    }
    if let Some(processes) = per_job.processes {
        metrics.record(
            "instructions_processes_per_job",
            "  of which: the job's processes",
            UNIT,
            processes,
        );
    }
    metrics.record(
        "instructions_over_floor",
        "instructions: job / floor",
        "×",
        per_job.total / per_job.floor.max(1.0),
    );
}

/// One upload's stages, in microseconds, as the server's `cloister::stages` events give them.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Stages {
    /// `upload recorded`: the object's data received and written.
    data: Option<f64>,
    /// The object's commit, with its event in the outbox.
    commit: Option<f64>,
    /// The jobs' (lazy) commit.
    jobs: Option<f64>,
    /// `job started`: the job readied — its work directory, its input when the upload's bytes
    /// came with it, and (for an upload's job, on the same thread) its held script's process.
    prepare: Option<f64>,
    /// Readied → started: for an upload's job, mostly the wait for its upload's commit and
    /// record (its gate), which releases the script.
    spawn: Option<f64>,
}

/// The stages of every upload of `log` (the server's JSON log lines), by object key.
fn parse_stages(log: &str) -> std::collections::HashMap<String, Stages> {
    let mut by_key: std::collections::HashMap<String, Stages> = std::collections::HashMap::new();
    for line in log.lines() {
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if event["target"] != "cloister::stages" {
            continue;
        }
        let fields = &event["fields"];
        let micros = |name: &str| {
            let v = &fields[name];
            v.as_f64().or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        };
        let (key, upload) = match fields["message"].as_str() {
            Some("upload recorded") => (fields["key"].as_str(), true),
            Some("job started") => (fields["input"].as_str(), false),
            _ => continue,
        };
        let Some(key) = key.filter(|k| !k.is_empty()) else {
            continue;
        };
        let stages = by_key.entry(key.to_owned()).or_default();
        if upload {
            stages.data = micros("data_us");
            stages.commit = micros("commit_us");
            stages.jobs = micros("jobs_us");
        } else {
            stages.prepare = micros("prepare_us");
            stages.spawn = micros("spawn_us");
        }
    }
    by_key
}

/// Records per round the p50 of each stage over that round's sequential uploads (the latency
/// phase: one job at a time, nothing else in flight).
fn record_stages(metrics: &mut Metrics, log: &str, rounds: usize) -> anyhow::Result<()> {
    let by_key = parse_stages(log);
    type Pick = fn(&Stages) -> Option<f64>;
    let stages: [(&str, &str, Pick); 5] = [
        ("stage_data_p50_ms", "  stage: object data write p50", |s| s.data),
        ("stage_commit_p50_ms", "  stage: object + event commit p50", |s| {
            s.commit
        }),
        ("stage_jobs_p50_ms", "  stage: job commit p50", |s| s.jobs),
        (
            "stage_prepare_p50_ms",
            "  stage: job readied (dir, input, process) p50",
            |s| s.prepare,
        ),
        ("stage_spawn_p50_ms", "  stage: readied → started p50", |s| {
            s.spawn
        }),
    ];
    for round in 0..rounds {
        let prefix = format!("in/r{round}-lat-");
        let uploads: Vec<&Stages> = by_key
            .iter()
            .filter(|(key, _)| key.starts_with(&prefix))
            .map(|(_, stages)| stages)
            .collect();
        anyhow::ensure!(
            !uploads.is_empty(),
            "the server logged no stages for round {}: is it a build without them?",
            round + 1
        );
        for (key, label, pick) in stages {
            let mut values: Vec<f64> = uploads.iter().filter_map(|s| pick(s)).collect();
            values.sort_by(f64::total_cmp);
            if let Some(p50) = percentile(&values, 50.0) {
                metrics.record(key, label, "ms", p50 / 1000.0);
            }
        }
    }
    Ok(())
}

/// One round: the floors, then upload→job start, throughput and `/run`, each recorded with its
/// ratio or difference to this round's spawn floor.
async fn measure_round(
    args: &JobsArgs,
    client: &Client,
    data_dir: &std::path::Path,
    round: usize,
    metrics: &mut Metrics,
    label: &impl Fn(&str) -> String,
    json: bool,
) -> anyhow::Result<()> {
    let bar = spinner(json, &label("process-spawn floor"));
    let mut floor = Vec::with_capacity(args.spawns);
    for _ in 0..args.spawns {
        let started = Instant::now();
        std::process::Command::new("/bin/sh")
            .args(["-c", "true"])
            .status()?;
        floor.push(started.elapsed());
    }
    let floor = p50_p99(floor);
    bar.finish_and_clear();
    metrics.record_floor(
        "spawn_floor_p50_ms",
        "process spawn floor (sh -c true) p50",
        "ms",
        floor.0,
    );
    metrics.record_floor(
        "spawn_floor_p99_ms",
        "process spawn floor (sh -c true) p99",
        "ms",
        floor.1,
    );

    // The upload path commits durably once (the object with its event); how long a flush takes on this
    // disk at this moment is the other floor the latency stands on.
    let bar = spinner(json, &label("durable-write floor"));
    let fsync_floor = p50_p99(durable_write_floor(&data_dir.join("fsync-probe"), 200)?);
    bar.finish_and_clear();
    metrics.record_floor(
        "fsync_floor_p50_ms",
        "durable write floor (fdatasync) p50",
        "ms",
        fsync_floor.0,
    );

    let bar = spinner(json, &label("upload→job-start latency"));
    let (latency, dispatch) = start_latency(client, round, args.latency_jobs).await?;
    let (latency, dispatch) = (p50_p99(latency), p50_p99(dispatch));
    bar.finish_and_clear();
    metrics.record("job_start_p50_ms", "upload → job start p50", "ms", latency.0);
    metrics.record("job_start_p99_ms", "upload → job start p99", "ms", latency.1);
    metrics.record(
        "job_start_over_floor",
        "upload → job start p50 / spawn floor p50",
        "×",
        latency.0 / floor.0.max(1e-9),
    );
    metrics.record(
        "recorded_to_start_p50_ms",
        "  of which: job recorded → start p50",
        "ms",
        dispatch.0,
    );

    let bar = spinner(json, &label("sustained trivial jobs/s"));
    let jobs_per_s = throughput(client, round, args.throughput_jobs).await?;
    bar.finish_and_clear();
    metrics.record("jobs_per_s", "sustained trivial jobs", "jobs/s", jobs_per_s);

    let bar = spinner(json, &label("/run round trips"));
    let run_rtt = p50_p99(run_round_trips(client, args.runs).await?);
    bar.finish_and_clear();
    metrics.record("run_p50_ms", "/run round trip p50", "ms", run_rtt.0);
    metrics.record("run_p99_ms", "/run round trip p99", "ms", run_rtt.1);
    metrics.record(
        "run_minus_floor_ms",
        "/run round trip p50 − spawn floor p50",
        "ms",
        run_rtt.0 - floor.0,
    );
    Ok(())
}

/// The targets of the jobs benchmark, judged on the medians of the rounds.
fn targets(metrics: &Metrics) -> Vec<Target> {
    let mut out = Vec::new();
    if let Some(ratio) = metrics.median("job_start_over_floor") {
        out.push(Target {
            text: format!("upload → job start p50 ≤ 3× spawn floor ({ratio:.2}×)"),
            met: ratio <= 3.0,
        });
    }
    if let Some(rate) = metrics.median("jobs_per_s") {
        out.push(Target {
            text: format!("sustained trivial jobs ≥ 300/s ({rate:.0}/s)"),
            met: rate >= 300.0,
        });
    }
    if let Some(over) = metrics.median("run_minus_floor_ms") {
        out.push(Target {
            text: format!("/run round trip p50 ≤ spawn floor + 2 ms (+{over:.2} ms)"),
            met: over <= 2.0,
        });
    }
    out
}

/// Times `count` durable 4 KiB overwrites (write, then fdatasync) of a file at `path`, on the
/// file system the server's state lives on.
pub(crate) fn durable_write_floor(path: &std::path::Path, count: usize) -> anyhow::Result<Vec<Duration>> {
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
async fn start_latency(
    client: &Client,
    round: usize,
    count: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let store = client.s3("bench-lat").await?;
    let mut samples = Vec::with_capacity(count);
    let mut dispatch = Vec::with_capacity(count);
    let mut last = String::new();
    for i in 0..count {
        let path = object_store::path::Path::from(format!("in/r{round}-lat-{i}"));
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

/// Jobs per second from the first upload to the last job's finish.
async fn throughput(client: &Client, round: usize, count: usize) -> anyhow::Result<f64> {
    let store = Arc::new(client.s3("bench-tp").await?);
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
            return Ok(count as f64 / elapsed.as_secs_f64().max(1e-9));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as `cloister server` writes them with `CLOISTER_LOG_FORMAT=json`.
    const LOG: &str = r#"{"timestamp":"2026-11-30T04:55:55.502446Z","level":"DEBUG","fields":{"message":"upload recorded","bucket":"bench-lat","key":"in/r0-lat-0","data_us":334,"commit_us":1284,"jobs_us":1233},"target":"cloister::stages"}
{"timestamp":"2026-11-30T04:55:55.506759Z","level":"DEBUG","fields":{"message":"job started","job":"bench-lat-01a2","input":"in/r0-lat-0","prepare_us":454,"spawn_us":"3052"},"target":"cloister::stages"}
{"timestamp":"2026-11-30T04:55:55.506759Z","level":"WARN","fields":{"message":"job started","input":"in/r0-lat-1","prepare_us":1},"target":"cloister_platform::workers"}
not json at all
{"timestamp":"2026-11-30T04:55:56.000000Z","level":"DEBUG","fields":{"message":"upload recorded","bucket":"bench-tp","key":"in/r0-tp-0","data_us":20,"commit_us":30,"jobs_us":40},"target":"cloister::stages"}
"#;

    #[test]
    fn stages_are_read_from_the_servers_json_log_by_object_key() {
        let stages = parse_stages(LOG);
        assert_eq!(stages.len(), 2, "only cloister::stages events count: {stages:?}");
        assert_eq!(
            stages["in/r0-lat-0"],
            Stages {
                data: Some(334.0),
                commit: Some(1284.0),
                jobs: Some(1233.0),
                prepare: Some(454.0),
                spawn: Some(3052.0),
            }
        );
        assert_eq!(stages["in/r0-tp-0"].prepare, None, "its job has not started");

        let mut metrics = Metrics::default();
        record_stages(&mut metrics, LOG, 1).unwrap();
        assert_eq!(metrics.median("stage_commit_p50_ms"), Some(1.284));
        assert_eq!(metrics.median("stage_spawn_p50_ms"), Some(3.052));
        assert!(
            record_stages(&mut metrics, LOG, 2).is_err(),
            "a round without stages is an error, not an empty figure"
        );
    }

    #[test]
    fn sizes_of_zero_are_refused() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: JobsArgs,
        }
        let parse = |extra: &[&str]| {
            Cli::try_parse_from([&["bench"], extra].concat())
                .unwrap()
                .args
                .validate()
        };
        assert!(parse(&[]).is_ok());
        for flag in [
            "--rounds",
            "--spawns",
            "--latency-jobs",
            "--throughput-jobs",
            "--runs",
        ] {
            assert!(parse(&[flag, "0"]).is_err(), "{flag} 0");
        }
    }
}
