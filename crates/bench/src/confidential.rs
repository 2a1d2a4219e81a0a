//! `cloister-bench confidential`: a private CAS and `cloister server` on loopback, the same
//! workloads as a plain and as a confidential service, and the job wall times side by side;
//! plus the attestation-and-key-release time each confidential job's runtime measured.
//!
//! The measurement runs in rounds; within a round each size and workload runs its jobs in
//! pairs, one plain and then one confidential, so a slow phase of the machine hits both modes.
//! A round's figure is the median of its jobs per mode and their ratio; the table prints each
//! figure's median over the rounds with their range, and `--json` every round's value.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use cloister_cas_client::client::CasClient;
use cloister_cas_client::sign::ClientIdentity;
use cloister_cli::client::Client;
use cloister_crypt::{EncryptOptions, Identity, ObjectBinding};
use object_store::{ObjectStoreExt, PutPayload};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::process::load_average;
use crate::process::{CloisterBin, runtime_bin, spinner, start_cas, start_server};
use crate::stats::{Metrics, Target, ms, percentile};

/// Sizes of the confidential benchmark. The defaults take two to three minutes on an idle 2-CPU
/// machine, mostly the 28 jobs at 256 MiB (a round is ~20 s): seven rounds give a median that
/// one or two slow phases of the machine cannot move.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfidentialArgs {
    /// Rounds; each runs every size and workload in both modes, and the table shows the median
    /// of the rounds with their range.
    #[arg(long, default_value_t = 7)]
    pub rounds: usize,
    /// Jobs per workload and mode with 1 MiB inputs, per round.
    #[arg(long, default_value_t = 4)]
    pub small_jobs: usize,
    /// Jobs per workload and mode with large inputs, per round.
    #[arg(long, default_value_t = 1)]
    pub large_jobs: usize,
    /// Size of the large input in MiB.
    #[arg(long, default_value_t = 256)]
    pub large_mib: usize,
    /// Keep the private server's data directory (objects, job records) on disk instead of in
    /// memory (/dev/shm). On disk, write-back of earlier jobs lands at random in later ones and
    /// the medians swing by ±50% in both modes; in memory the comparison is steady (and
    /// stricter: the plain path gets faster, the crypto stays).
    #[arg(long)]
    pub on_disk: bool,
    #[command(flatten)]
    pub cloister_bin: CloisterBin,
    /// The `cloister-runtime` binary confidential jobs run (default: beside `cloister`).
    #[arg(long, env = "CLOISTER_RUNTIME_BIN", value_name = "PATH")]
    pub runtime_bin: Option<std::path::PathBuf>,
}

/// The workloads, as scripts: the same bytes run plain and confidential.
const WORKLOADS: [(&str, &str); 2] = [
    // No computation at all: the worst case for the confidential path's crypto.
    ("copy", "cp \"$INPUT_FILE_PATH\" \"$TMP_OUTPUT_DIR/out\"\n"),
    // A streaming filter, the shape of typical file-processing work.
    (
        "transform",
        "tr 'a-z' 'A-Z' < \"$INPUT_FILE_PATH\" > \"$TMP_OUTPUT_DIR/out\"\n",
    ),
];

/// Text-like pseudo-random content (so `tr` has letters to change).
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let alphabet = b"abcdefghijklmnopqrstuvwxyz ABCDEFGHIJ0123456789\n";
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            alphabet[(state % alphabet.len() as u64) as usize]
        })
        .collect()
}

fn parse_time(v: &Value) -> Option<OffsetDateTime> {
    v.as_str().and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
}

struct Mode {
    service: String,
    bucket: String,
    recipient: Option<cloister_crypt::Recipient>,
}

pub async fn run(args: ConfidentialArgs, json: bool) -> anyhow::Result<()> {
    for (value, flag) in [
        (args.rounds, "--rounds"),
        (args.small_jobs, "--small-jobs"),
        (args.large_jobs, "--large-jobs"),
        (args.large_mib, "--large-mib"),
    ] {
        anyhow::ensure!(value >= 1, "{flag} must be at least 1");
    }
    let cloister = args.cloister_bin.path()?;
    let runtime = runtime_bin(args.runtime_bin.as_deref(), &cloister)?;
    let shm = Path::new("/dev/shm");
    let dir = if !args.on_disk && shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .context("cannot create a temporary directory")?;
    let storage = if !args.on_disk && shm.is_dir() {
        "in memory"
    } else {
        "on disk"
    };
    let admin = ClientIdentity::generate();
    let admin_file = dir.path().join("admin.key");
    admin.save(&admin_file).map_err(|e| anyhow::anyhow!("{e}"))?;
    let bar = spinner(json, "starting a private CAS and server");
    let cas = start_cas(&cloister, dir.path(), &admin.public(), None)?;
    let (cas_url, pin) = (cas.url.clone(), cas.pin.clone());
    let data = dir.path().join("data");
    let flags = [
        OsStr::new("--job-timeout"),
        OsStr::new("600s"),
        OsStr::new("--concurrency"),
        OsStr::new("1"),
        OsStr::new("--runtime-binary"),
        runtime.as_os_str(),
    ];
    let (_server, client) = start_server(&cloister, &data, &flags).await?;
    let info = client.get_json("/system/info").await?;
    let platform = info["simulation_platform_key"]
        .as_str()
        .context("no platform key")?;
    CasClient::new(&cas_url, &pin, Some(admin))
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .add_platform(platform, "bench")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let owner = Identity::generate();
    let mut services = Vec::new();
    for (workload, script) in WORKLOADS {
        let script_file = format!("{workload}.sh");
        std::fs::write(dir.path().join(&script_file), script)?;
        for confidential in [false, true] {
            let name = format!("{}-{workload}", if confidential { "conf" } else { "plain" });
            let mut service = json!({
                // Plaintext of a confidential job lives in memory (tmpfs), charged to the job:
                // both modes get room for a 256 MiB input and its output, and a whole CPU.
                "name": name, "image": "bench", "script": script_file, "memory": "1536Mi", "cpu": "1",
                "input": [{"storage_provider": "minio", "path": format!("{name}/in")}],
                "output": [{"storage_provider": "minio", "path": format!("{name}/out")}],
            });
            if confidential {
                service["confidential"] = json!({
                    "tee": "sim", "cas": cas_url, "cas_pin": pin, "session": format!("bench/{name}"),
                    "output_recipients": [owner.public().to_string()],
                });
            }
            services.push((workload, json!({ "bench": service })));
        }
    }
    // `cloister apply` creates the sessions of the confidential services and then the services,
    // as a data owner does.
    let fdl = dir.path().join("fdl.yaml");
    let entries: Vec<&Value> = services.iter().map(|(_, entry)| entry).collect();
    std::fs::write(
        &fdl,
        serde_json::to_vec(&json!({"functions": {"oscar": entries}}))?,
    )?;
    let applied = Command::new(&cloister)
        .args(["apply", "--json", "--config"])
        .arg(data.join("client.json"))
        .arg("--cas-key")
        .arg(&admin_file)
        .arg("--keys-dir")
        .arg(dir.path().join("keys"))
        .arg(&fdl)
        .stderr(Stdio::inherit())
        .output()?;
    anyhow::ensure!(applied.status.success(), "cloister apply failed");
    let applied: Vec<Value> = serde_json::from_slice(&applied.stdout).context("cloister apply --json")?;
    let mut modes = Vec::new();
    for (workload, entry) in &services {
        let name = entry["bench"]["name"].as_str().context("no service name")?;
        let result = applied
            .iter()
            .find(|r| r["service"] == name)
            .with_context(|| format!("cloister apply did not report {name}"))?;
        let recipient = match result["input_recipient"].as_str() {
            Some(r) => Some(r.parse()?),
            None => None,
        };
        modes.push((
            *workload,
            Mode {
                service: name.to_owned(),
                bucket: name.to_owned(),
                recipient,
            },
        ));
    }
    bar.finish_and_clear();

    let load_before = load_average();
    let sizes = [
        ("small", "1 MiB".to_owned(), 1usize << 20, args.small_jobs),
        (
            "large",
            format!("{} MiB", args.large_mib),
            args.large_mib << 20,
            args.large_jobs,
        ),
    ]
    .map(|(key, label, size, jobs)| (key, label, Arc::new(content(size, size as u64)), jobs));
    let mut metrics = Metrics::default();
    let mut attestations = 0;
    for round in 0..args.rounds {
        let mut attest_ms = Vec::new();
        for (size_key, size_label, data, jobs) in &sizes {
            for (workload, _) in WORKLOADS {
                let pair: Vec<&Mode> = modes
                    .iter()
                    .filter(|(w, _)| *w == workload)
                    .map(|(_, mode)| mode)
                    .collect();
                let bar = spinner(
                    json,
                    &format!(
                        "round {}/{}: {size_label} {workload}, plain and confidential",
                        round + 1,
                        args.rounds
                    ),
                );
                let mut walls = [Vec::new(), Vec::new()];
                for i in 0..*jobs {
                    for (slot, mode) in pair.iter().enumerate() {
                        let key = format!("in/r{round}-{size_key}-{i}");
                        let (wall, attested) = one_job(&client, mode, data, &key).await?;
                        if let Some(w) = walls.get_mut(slot) {
                            w.push(wall);
                        }
                        attest_ms.extend(attested);
                    }
                }
                bar.finish_and_clear();
                let [plain, conf] = walls.map(|mut w| {
                    w.sort();
                    percentile(&w, 50.0).map_or(0.0, ms)
                });
                let name = format!("{size_label} {workload}");
                metrics.record(
                    format!("{size_key}_{workload}_plain_ms"),
                    format!("{name}: plain"),
                    "ms",
                    plain,
                );
                metrics.record(
                    format!("{size_key}_{workload}_confidential_ms"),
                    format!("{name}: confidential"),
                    "ms",
                    conf,
                );
                metrics.record(
                    format!("{size_key}_{workload}_ratio"),
                    format!("{name}: confidential / plain"),
                    "×",
                    conf / plain.max(1e-9),
                );
            }
        }
        attest_ms.sort_by(f64::total_cmp);
        attestations += attest_ms.len();
        if let Some(p50) = percentile(&attest_ms, 50.0) {
            metrics.record(
                "attestation_p50_ms",
                "attestation + key release p50 (in the runtime)",
                "ms",
                p50,
            );
        }
    }
    let load_after = load_average();
    let targets = targets(&metrics, &sizes[1].1);

    if json {
        let out = json!({
            "command": "confidential",
            "cloister_bin": cloister.display().to_string(),
            "load_average": {"before": load_before, "after": load_after},
            "data": storage,
            "rounds": args.rounds,
            "parameters": {"small_jobs": args.small_jobs, "large_jobs": args.large_jobs,
                "large_mib": args.large_mib, "on_disk": args.on_disk},
            "attestations": attestations,
            "targets": Target::to_json(&targets),
            "measures": metrics.to_json(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "cloister confidential-bench — job wall time (created → finished); simulation TEE; data {storage}; load {} \
         before / {} after; {} rounds (median, min–max); {attestations} attestations",
        load_before.as_deref().unwrap_or("?"),
        load_after.as_deref().unwrap_or("?"),
        args.rounds,
    );
    metrics.print_table();
    Target::print_all(&targets);
    Ok(())
}

/// The targets of the confidential benchmark, judged on the medians of the rounds.
fn targets(metrics: &Metrics, large: &str) -> Vec<Target> {
    let mut out = Vec::new();
    for (workload, _) in WORKLOADS {
        if let Some(ratio) = metrics.median(&format!("large_{workload}_ratio")) {
            out.push(Target {
                text: format!("{large} {workload}: confidential ≤ 1.15× plain ({ratio:.2}×)"),
                met: ratio <= 1.15,
            });
        }
    }
    if let Some(p50) = metrics.median("attestation_p50_ms") {
        out.push(Target {
            text: format!("attestation + key release p50 ≤ 10 ms ({p50:.2} ms)"),
            met: p50 <= 10.0,
        });
    }
    out
}

/// Uploads `data` as `key` for `mode`'s service (encrypted to its recipient when it is
/// confidential), waits for the job and returns its wall time (created → finished) and the
/// attestation time its runtime logged.
async fn one_job(
    client: &Client,
    mode: &Mode,
    data: &[u8],
    key: &str,
) -> anyhow::Result<(Duration, Option<f64>)> {
    let body = match &mode.recipient {
        Some(r) => {
            let mut out = Vec::with_capacity(data.len() + data.len() / 1000 + 1024);
            cloister_crypt::encrypt(
                data,
                &mut out,
                std::slice::from_ref(r),
                &ObjectBinding::new(&mode.bucket, key),
                &EncryptOptions { chunk_size: 1 << 20 },
            )?;
            out
        }
        None => data.to_vec(),
    };
    // Write-back of the previous job's files would otherwise land in this job's time, in
    // either mode.
    let _ = Command::new("sync").status();
    let store = client.s3(&mode.bucket).await?;
    store.put(&key.into(), PutPayload::from(body)).await?;
    let (job, log) = wait_job(client, &mode.service).await?;
    anyhow::ensure!(
        job["status"] == "Succeeded",
        "benchmark job of {} failed: {log}",
        mode.service,
    );
    let created = parse_time(&job["creation_time"]).context("no creation time")?;
    let finished = parse_time(&job["finish_time"]).context("no finish time")?;
    // Where a large job's time goes, from its log's timestamps (opt-in: `BENCH_LOGS=1`).
    if data.len() >= 16 << 20 && std::env::var_os("BENCH_LOGS").is_some() {
        eprintln!(
            "--- {} {key}: created {} started {} finished {}\n{log}",
            mode.service, job["creation_time"], job["start_time"], job["finish_time"]
        );
    }
    Ok((
        Duration::try_from(finished - created).unwrap_or_default(),
        attested_ms(&log),
    ))
}

/// The runtime's own measurement of attestation and configuration release, from its log line.
fn attested_ms(log: &str) -> Option<f64> {
    let line = log.lines().find(|l| l.contains("attested to the CAS"))?;
    let (_, after) = line.rsplit_once(") in ")?;
    after.split(' ').next()?.parse().ok()
}

/// Waits for the job of `service` to finish and returns it with its log, then deletes it:
/// jobs run one at a time here, so the one finished job is the one just started.
async fn wait_job(client: &Client, service: &str) -> anyhow::Result<(Value, String)> {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let jobs = client
            .get_json(&format!("/system/logs/{service}?limit=1000"))
            .await?;
        let finished = jobs["jobs"]
            .as_object()
            .into_iter()
            .flatten()
            .find(|(_, job)| matches!(job["status"].as_str(), Some("Succeeded" | "Failed")));
        if let Some((name, job)) = finished {
            let path = format!("/system/logs/{service}/{name}");
            let log = client
                .system(reqwest::Method::GET, &path, None)
                .await?
                .text()
                .await?;
            client.system(reqwest::Method::DELETE, &path, None).await?;
            return Ok((job.clone(), log));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "a benchmark job did not finish in 15 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
