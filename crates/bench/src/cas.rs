//! `cloister-bench cas`: a private CAS (`cloister cas serve`, key-file vault in a temporary
//! directory) as its own process, measured end to end by real clients in this process.
//!
//! Two questions, two loads:
//! - **Capacity** (closed loop): `--clients` clients attest back to back, each on its own kept
//!   connection; attestations per second is the CAS's capacity on this machine. Their
//!   latencies are reported but mean little: at saturation every request waits behind the
//!   others, so they measure the queue the clients themselves build.
//! - **Latency at a given load** (open loop): attestations start on a fixed schedule,
//!   `--rate` per second, whether or not earlier ones have finished, and each latency runs
//!   from the attestation's *scheduled* start to its end. A CAS that falls behind makes every
//!   later attestation late and the figure shows it; nothing is left out because a client was
//!   busy (no coordinated omission). The target "p99 < 10 ms at 2,000/s" is judged here.
//!
//! The measurement runs in rounds; each round runs both loads (and, with `--flood`, both again
//! under a flood), durable counter increments by an attested workload (as many clients as the
//! closed loop, then one alone), a few sequential secret reads, and DCAP quote verifications in
//! this process. The table prints each figure's median over the rounds with their range, and
//! `--json` every round's value, in the shape `compare` reads.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;
use cloister_attestation::{
    DcapCollateral, DcapVerifier, Endorsements, EvidenceVerifier, SimPlatform, SimSource,
};
use cloister_cas_client::client::{CasClient, ClientError};
use cloister_cas_client::protocol::{AttestRequest, CounterIncrement, InitData};
use cloister_cas_client::sign::ClientIdentity;
use cloister_cas_store::Vault;
use serde_json::json;
use time::OffsetDateTime;

use crate::process::{CloisterBin, PrivateCas, load_average, spinner, start_cas};
use crate::stats::{Metrics, Target, ms, percentile};

/// What `--help` says after the options: why the latency target is judged at a fixed offered
/// rate rather than at saturation.
pub const AFTER_HELP: &str = "Why two loads. The CAS and this program share the machine's CPUs (on the \
project's 2-core VM, the clients' Ed25519 signing, X25519 and HPKE work competes with the CAS's). \
A closed loop of N clients at saturation measures capacity: its latencies are mostly the queue the N \
clients build (by Little's law, N / rate), not the CAS's work. The latency target is therefore \
judged in an open loop: attestations are started on a fixed schedule (--rate per second), each \
latency counts from its scheduled start (so a stall delays every attestation behind it and is \
counted, not omitted), and the rate the CAS sustains is judged separately in the closed loop.";

/// Sizes of the CAS benchmark. The defaults take about a minute on an idle 2-CPU machine
/// (a round is ~5 s, ~10 s with `--flood`).
#[derive(Debug, Clone, clap::Args)]
pub struct CasArgs {
    /// Rounds; each runs both loads (and the flood), and the table shows the median of the
    /// rounds with their range.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Attestations per load and round.
    #[arg(long, default_value_t = 4000)]
    pub attestations: usize,
    /// Concurrent attesting clients of the closed loop (capacity).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Attestations started per second in the open loop (latency at a given load).
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Connections the open loop's attestations take turns on, each kept open; an
    /// attestation that finds them all busy waits for one, and the wait counts.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// DCAP verifications per path (cached and dcap-qvl's full path), per round.
    #[arg(long, default_value_t = 500)]
    pub dcap: usize,
    /// Sequential secret reads, per round.
    #[arg(long, default_value_t = 200)]
    pub reads: usize,
    /// Counter increments per round by `--clients` clients at once, and a tenth of them by
    /// one client alone (each answered once committed and anchored).
    #[arg(long, default_value_t = 2000)]
    pub increments: usize,
    /// Run both loads a second time under a flood (clients hammering the nonce endpoint and
    /// sending junk attestations) and show both side by side.
    #[arg(long)]
    pub flood: bool,
    /// Flooding clients requesting nonces as fast as they can.
    #[arg(long, default_value_t = 8)]
    pub flood_clients: usize,
    /// Flooding clients sending junk attestations: a valid nonce with evidence from an
    /// unregistered platform, naming a new session each time.
    #[arg(long, default_value_t = 2)]
    pub junk_clients: usize,
    /// Also record where the open loop's releases spend their time inside the CAS (waiting
    /// for a thread, checks, sealing, the audit commit), from its `cloister::stages` debug
    /// events; writing them costs the CAS a little.
    #[arg(long)]
    pub stages: bool,
    #[command(flatten)]
    pub cloister_bin: CloisterBin,
}

impl CasArgs {
    fn validate(&self) -> anyhow::Result<()> {
        crate::stats::require_at_least_one(&[
            (self.rounds, "--rounds"),
            (self.attestations, "--attestations"),
            (self.clients, "--clients"),
            (self.connections, "--connections"),
            (self.dcap, "--dcap"),
            (self.reads, "--reads"),
            (self.increments, "--increments"),
        ])?;
        anyhow::ensure!(
            self.rate.is_finite() && self.rate > 0.0,
            "--rate must be a positive number of attestations per second"
        );
        Ok(())
    }
}

/// The services the closed and the open loop attest as.
const CLOSED_SERVICE: &str = "closed";
const OPEN_SERVICE: &str = "open";

/// The target of issue 10, judged on the medians of the rounds.
const TARGET_RATE: f64 = 2000.0;
const TARGET_P99_MS: f64 = 10.0;

/// One attesting client: its own kept connection, and evidence of the benchmark's platform.
struct Attester {
    client: CasClient,
    init: InitData,
    source: SimSource,
}

/// What every attester is made from.
struct Setup {
    url: String,
    pin: String,
    platform_file: std::path::PathBuf,
    measurement: [u8; 32],
}

impl Setup {
    /// An attester of `service`: the closed and the open loop attest as different services of
    /// the session, so the CAS's stage events tell them apart.
    fn attester(&self, service: &str) -> anyhow::Result<Attester> {
        let client = CasClient::new(&self.url, &self.pin, None)?;
        let platform =
            SimPlatform::load_or_generate(&self.platform_file).map_err(|e| anyhow::anyhow!("{e}"))?;
        let init = InitData::new(&self.pin, "bench/session", service).map_err(|e| anyhow::anyhow!("{e}"))?;
        let source = init
            .simulated(platform, self.measurement)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Attester { client, init, source })
    }
}

impl Attester {
    /// One whole attestation: nonce, evidence, the TLS request, verification, HPKE release,
    /// and opening the released configuration.
    async fn attest(&self) -> Result<(), ClientError> {
        self.client
            .attest(&self.init, &self.source, |_| {})
            .await
            .map(|_| ())
    }

    /// One piece of a closed loop's work.
    async fn run(&self, work: &Work) -> Result<(), ClientError> {
        match work {
            Work::Attest => self.attest().await,
            Work::Increment(increment) => self.client.increment_counter(increment).await.map(|_| ()),
        }
    }
}

/// What a closed loop's clients do back to back.
#[derive(Clone)]
enum Work {
    Attest,
    /// A counter increment, with the grant an attestation released.
    Increment(Arc<CounterIncrement>),
}

/// Latencies of one load, sorted, and the rate it ran at.
struct LoadRun {
    samples: Vec<Duration>,
    per_second: f64,
}

impl LoadRun {
    fn p(&self, p: f64) -> f64 {
        percentile(&self.samples, p).map_or(0.0, ms)
    }
}

/// The closed loop: `clients` clients do `work` back to back until `count` are done.
async fn closed_loop(attesters: &[Arc<Attester>], count: usize, work: &Work) -> anyhow::Result<LoadRun> {
    let per_client = count.div_ceil(attesters.len().max(1));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for attester in attesters {
        let (attester, work) = (attester.clone(), work.clone());
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                let t = Instant::now();
                attester.run(&work).await?;
                samples.push(t.elapsed());
            }
            Ok::<_, ClientError>(samples)
        }));
    }
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await??);
    }
    let elapsed = started.elapsed();
    samples.sort();
    Ok(LoadRun {
        per_second: samples.len() as f64 / elapsed.as_secs_f64(),
        samples,
    })
}

/// Attesters the open loop's attestations take turns on (first come, first served).
struct Pool {
    free: Mutex<Vec<Arc<Attester>>>,
    turns: tokio::sync::Semaphore,
}

impl Pool {
    fn new(attesters: Vec<Arc<Attester>>) -> Self {
        Self {
            turns: tokio::sync::Semaphore::new(attesters.len()),
            free: Mutex::new(attesters),
        }
    }

    async fn attest(&self) -> anyhow::Result<()> {
        // The semaphore queues waiters in order, so no attestation is overtaken for long.
        let _turn = self.turns.acquire().await?;
        let attester = self
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .context("a turn without a free connection")?;
        let outcome = attester.attest().await;
        self.free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(attester);
        Ok(outcome?)
    }
}

/// The open loop: attestation `i` starts at `i / rate` seconds, whatever the ones before it
/// are doing, and its latency counts from then. The rate is the attestations done over the
/// time from the first scheduled start to the last end: below `rate` when the CAS fell behind.
async fn open_loop(pool: &Arc<Pool>, rate: f64, count: usize) -> anyhow::Result<LoadRun> {
    let start = tokio::time::Instant::now() + Duration::from_millis(5);
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let scheduled = start + Duration::from_secs_f64(i as f64 / rate);
        // Late wake-ups (the timer's millisecond grain, a busy CPU) count against the CAS:
        // the latency starts at the schedule, not at the wake-up.
        tokio::time::sleep_until(scheduled).await;
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            pool.attest().await?;
            Ok::<_, anyhow::Error>((scheduled.elapsed(), tokio::time::Instant::now()))
        }));
    }
    let mut samples = Vec::with_capacity(count);
    let mut last_end = start;
    for task in tasks {
        let (latency, end) = task.await??;
        samples.push(latency);
        last_end = last_end.max(end);
    }
    samples.sort();
    let elapsed = last_end.saturating_duration_since(start).as_secs_f64();
    Ok(LoadRun {
        per_second: count as f64 / elapsed.max(1e-9),
        samples,
    })
}

/// Counters of a running flood.
#[derive(Default)]
struct FloodCounts {
    stop: AtomicBool,
    nonces: AtomicU64,
    junk_refused: AtomicU64,
    errors: AtomicU64,
}

impl FloodCounts {
    fn snapshot(&self) -> [u64; 3] {
        [&self.nonces, &self.junk_refused, &self.errors].map(|c| c.load(Ordering::Relaxed))
    }
}

/// Starts the flooding clients; they run until `counts.stop` is set.
fn start_flood(
    setup: &Setup,
    args: &CasArgs,
    counts: &Arc<FloodCounts>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut tasks = Vec::new();
    for _ in 0..args.flood_clients {
        let client = CasClient::new(&setup.url, &setup.pin, None)?;
        let counts = counts.clone();
        tasks.push(tokio::spawn(async move {
            while !counts.stop.load(Ordering::Relaxed) {
                let counter = match client.nonce().await {
                    Ok(_) => &counts.nonces,
                    Err(_) => &counts.errors,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Junk: genuine-looking evidence from a platform the CAS does not know, bound to a
    // valid nonce (so it passes the cheap checks and costs a verification), naming a new
    // session each time (so a per-subject audit would grow without bound).
    let init = InitData::new(&setup.pin, "junk/session", "svc").map_err(|e| anyhow::anyhow!("{e}"))?;
    let source = Arc::new(
        init.simulated(SimPlatform::generate(), [1u8; 32])
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    for worker in 0..args.junk_clients {
        let client = CasClient::new(&setup.url, &setup.pin, None)?;
        let counts = counts.clone();
        let source = source.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(nonce) = client.nonce().await else {
                counts.errors.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let key = cloister_cas_client::seal::WorkloadKey::generate();
            let nonce_bytes = hex::decode(&nonce.nonce).unwrap_or_default();
            let report = cloister_attestation::report_data_for(&nonce_bytes, &key.public_bytes());
            let Ok(evidence) = cloister_attestation::EvidenceSource::collect(&*source, &report) else {
                counts.errors.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let mut request = AttestRequest {
                session: String::new(),
                service: "svc".into(),
                nonce: nonce.nonce,
                public_key: hex::encode(key.public_bytes()),
                evidence: base64::engine::general_purpose::STANDARD.encode(evidence),
                collateral: None,
                vcek: None,
                chain: None,
            };
            let mut n = 0u64;
            while !counts.stop.load(Ordering::Relaxed) {
                n += 1;
                request.session = format!("junk/w{worker}-{n}");
                let counter = match client.attest_raw(&request).await {
                    Err(ClientError::Refused { status, .. }) if status == 403 => &counts.junk_refused,
                    _ => &counts.errors,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    Ok(tasks)
}

// The real SGX quote and its offline collateral from the attestation crate's test vectors.
const SGX_QUOTE: &[u8] = include_bytes!("../../attestation/testdata/sgx/quote.bin");
const SGX_COLLATERAL: &[u8] = include_bytes!("../../attestation/testdata/sgx/collateral.json");

/// DCAP verifications per second of `verifier` on every CPU.
fn dcap_rate(
    verifier: Arc<DcapVerifier>,
    endorsements: &Arc<Endorsements>,
    count: usize,
) -> anyhow::Result<f64> {
    let at = OffsetDateTime::parse(
        "2025-07-01T00:00:00Z",
        &time::format_description::well_known::Rfc3339,
    )?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let per_thread = count.div_ceil(threads);
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let verifier = verifier.clone();
            let endorsements = endorsements.clone();
            std::thread::spawn(move || {
                for _ in 0..per_thread {
                    verifier.verify(SGX_QUOTE, &endorsements, at).map(|_| ())?;
                }
                Ok::<_, cloister_attestation::Error>(())
            })
        })
        .collect();
    for handle in handles {
        handle
            .join()
            .map_err(|_| anyhow::anyhow!("DCAP thread panicked"))??;
    }
    Ok((per_thread * threads) as f64 / started.elapsed().as_secs_f64())
}

/// The CAS, its clients and what every round uses.
struct Bench {
    setup: Setup,
    closed: Vec<Arc<Attester>>,
    pool: Arc<Pool>,
    owner: CasClient,
    /// An increment of the session's counter, with the grant of an attestation.
    increment: Arc<CounterIncrement>,
    dcap: [(&'static str, Arc<DcapVerifier>); 2],
    endorsements: Arc<Endorsements>,
}

/// Records a load's rate, p50 and p99 as `{prefix}_per_s`, `{prefix}_p50_ms`, `{prefix}_p99_ms`.
fn record_load(metrics: &mut Metrics, prefix: &str, label: &str, run: &LoadRun) {
    metrics.record(
        format!("{prefix}_per_s"),
        format!("{label}: rate"),
        "attestations/s",
        run.per_second,
    );
    metrics.record(
        format!("{prefix}_p50_ms"),
        format!("{label}: p50"),
        "ms",
        run.p(50.0),
    );
    metrics.record(
        format!("{prefix}_p99_ms"),
        format!("{label}: p99"),
        "ms",
        run.p(99.0),
    );
}

/// One round: capacity, latency at `--rate`, the same under a flood, secret reads and DCAP.
async fn measure_round(
    args: &CasArgs,
    bench: &Bench,
    data_dir: &Path,
    metrics: &mut Metrics,
    label: &impl Fn(&str) -> String,
    json: bool,
) -> anyhow::Result<()> {
    // Every release waits for its audit records' fsync (group-committed): how long a flush takes
    // on this disk at this moment is the floor the latencies stand on.
    let bar = spinner(json, &label("durable-write floor"));
    let mut floor = crate::jobs::durable_write_floor(&data_dir.join("fsync-probe"), 200)?;
    floor.sort();
    bar.finish_and_clear();
    for (p, key) in [(50.0, "fsync_floor_p50_ms"), (99.0, "fsync_floor_p99_ms")] {
        metrics.record_floor(
            key,
            format!("durable write floor (fdatasync) p{p:.0}"),
            "ms",
            percentile(&floor, p).map_or(0.0, ms),
        );
    }
    let closed_label = format!("closed loop, {} clients", args.clients);
    let flood = format!("flood {}+{}", args.flood_clients, args.junk_clients);
    let open_label = format!("open loop at {:.0}/s", args.rate);
    let bar = spinner(json, &label(&closed_label));
    let closed = closed_loop(&bench.closed, args.attestations, &Work::Attest).await?;
    bar.finish_and_clear();
    record_load(metrics, "closed", &closed_label, &closed);

    let bar = spinner(json, &label(&open_label));
    let open = open_loop(&bench.pool, args.rate, args.attestations).await?;
    bar.finish_and_clear();
    record_load(metrics, "open", &open_label, &open);

    if args.flood {
        let bar = spinner(json, &label("the same under a flood"));
        let counts = Arc::new(FloodCounts::default());
        let flooders = start_flood(&bench.setup, args, &counts)?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = counts.snapshot();
        let started = Instant::now();
        let loads = async {
            let closed = closed_loop(&bench.closed, args.attestations, &Work::Attest).await?;
            let open = open_loop(&bench.pool, args.rate, args.attestations).await?;
            Ok::<_, anyhow::Error>((closed, open))
        }
        .await;
        let elapsed = started.elapsed().as_secs_f64();
        let after = counts.snapshot();
        counts.stop.store(true, Ordering::Relaxed);
        for flooder in flooders {
            flooder.await?;
        }
        bar.finish_and_clear();
        let (closed, open) = loads?;
        record_load(
            metrics,
            "flood_closed",
            &format!("  {flood}, {closed_label}"),
            &closed,
        );
        record_load(metrics, "flood_open", &format!("  {flood}, {open_label}"), &open);
        metrics.record(
            "flood_nonces_per_s",
            "  nonces served during the flood",
            "nonces/s",
            (after[0] - before[0]) as f64 / elapsed,
        );
        metrics.record(
            "flood_junk_refused_per_s",
            "  junk attestations refused (403) during it",
            "refusals/s",
            (after[1] - before[1]) as f64 / elapsed,
        );
        metrics.record(
            "flood_errors",
            "  flood requests that failed otherwise",
            "errors",
            (after[2] - before[2]) as f64,
        );
    }

    // Each increment is committed with its audit entry (group-committed like attestations) and
    // the counter anchor written before the answer.
    let increment = Work::Increment(bench.increment.clone());
    for (prefix, attesters, count) in [
        ("counter", &bench.closed[..], args.increments),
        ("counter_one", &bench.closed[..1], args.increments.div_ceil(10)),
    ] {
        let what = format!("counter increments, {} client(s)", attesters.len());
        let bar = spinner(json, &label(&what));
        let run = closed_loop(attesters, count, &increment).await?;
        bar.finish_and_clear();
        metrics.record(
            format!("{prefix}_per_s"),
            format!("{what}: rate"),
            "increments/s",
            run.per_second,
        );
        metrics.record(
            format!("{prefix}_p50_ms"),
            format!("{what}: p50"),
            "ms",
            run.p(50.0),
        );
        metrics.record(
            format!("{prefix}_p99_ms"),
            format!("{what}: p99"),
            "ms",
            run.p(99.0),
        );
    }

    let bar = spinner(json, &label("secret reads"));
    let mut reads = Vec::with_capacity(args.reads);
    for _ in 0..args.reads {
        let t = Instant::now();
        bench
            .owner
            .read_secret("bench/session", "key", Some("hex"))
            .await?;
        reads.push(t.elapsed());
    }
    reads.sort();
    bar.finish_and_clear();
    let at = |p| percentile(&reads, p).map_or(0.0, ms);
    metrics.record(
        "secret_read_p50_ms",
        "secret read (signed, owner): p50",
        "ms",
        at(50.0),
    );
    metrics.record(
        "secret_read_p99_ms",
        "secret read (signed, owner): p99",
        "ms",
        at(99.0),
    );

    let bar = spinner(json, &label("DCAP quote verification"));
    for (name, verifier) in &bench.dcap {
        let rate = dcap_rate(verifier.clone(), &bench.endorsements, args.dcap)?;
        metrics.record(
            format!("dcap_{}_per_s", name.replace('-', "_")),
            format!("DCAP quote verification ({name}), this process"),
            "quotes/s",
            rate,
        );
    }
    bar.finish_and_clear();
    Ok(())
}

/// Registers the benchmark's platform and session at the CAS and opens every client.
async fn prepare(
    args: &CasArgs,
    cas: &PrivateCas,
    admin: ClientIdentity,
    dir: &Path,
) -> anyhow::Result<Bench> {
    let platform_file = dir.join("platform.key");
    let platform = SimPlatform::load_or_generate(&platform_file).map_err(|e| anyhow::anyhow!("{e}"))?;
    CasClient::new(&cas.url, &cas.pin, Some(admin))?
        .add_platform(&hex::encode(platform.public_key()), "bench")
        .await?;
    let owner = CasClient::new(&cas.url, &cas.pin, Some(ClientIdentity::generate()))?;
    let measurement = [9u8; 32];
    let service = |name: &str| {
        format!(
            "- name: {name}\n  command: [run]\n  environment: {{KEY: \"$$CLOISTER::key:hex$$\"}}\n  attestation:\n  - tee: sim\n    measurement: {}\n",
            hex::encode(measurement)
        )
    };
    let session = format!(
        "name: bench/session\nsecurity:\n  attestation:\n    tolerate: [simulation]\nservices:\n{}{}secrets:\n- name: key\n  kind: binary\n  size: 32\ncounters:\n- name: hits\n",
        service(CLOSED_SERVICE),
        service(OPEN_SERVICE),
    );
    owner.create_session(&session).await?;
    let setup = Setup {
        url: cas.url.clone(),
        pin: cas.pin.clone(),
        platform_file,
        measurement,
    };
    let closed = (0..args.clients)
        .map(|_| setup.attester(CLOSED_SERVICE).map(Arc::new))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let pooled = (0..args.connections)
        .map(|_| setup.attester(OPEN_SERVICE).map(Arc::new))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let grant = match closed.first() {
        Some(attester) => {
            attester
                .client
                .attest(&attester.init, &attester.source, |_| {})
                .await?
                .volume_grant
        }
        None => anyhow::bail!("no client"),
    };
    let increment = Arc::new(CounterIncrement {
        session: "bench/session".into(),
        service: CLOSED_SERVICE.into(),
        counter: "hits".into(),
        grant,
    });
    let collateral = DcapCollateral::from_json(SGX_COLLATERAL).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Bench {
        increment,
        setup,
        closed,
        pool: Arc::new(Pool::new(pooled)),
        owner,
        dcap: [
            ("cached", Arc::new(DcapVerifier::new())),
            ("dcap-qvl", Arc::new(DcapVerifier::reference())),
        ],
        endorsements: Arc::new(Endorsements::Dcap(collateral)),
    })
}

/// Refused attestations and the audit entries that record them, read from the stopped CAS's
/// vault (the last summary is written at shutdown).
fn refusal_audit(data_dir: &Path) -> anyhow::Result<(u64, usize)> {
    let options = cloister_cas_store::VaultOptions {
        counter_anchor: Some(cloister_cas_store::anchor_beside(data_dir)),
        accept_rollback: false,
    };
    let vault = Vault::open_with(data_dir, None, options).map_err(|e| anyhow::anyhow!("{e}"))?;
    let audit = vault
        .audit_entries(0, usize::MAX)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let entries = audit
        .iter()
        .filter(|e| e.kind == "attest-fail" || e.kind == "attest-fail-summary")
        .count();
    let refusals = audit
        .iter()
        .map(|e| match e.kind.as_str() {
            "attest-fail" => 1,
            "attest-fail-summary" => e.detail["unrecorded_total"].as_u64().unwrap_or(0),
            _ => 0,
        })
        .sum();
    Ok((refusals, entries))
}

/// The stages of a release as the CAS times them (its `cloister::stages` events), in the
/// order they happen: the event's field and the table's label.
const STAGES: [(&str, &str); 4] = [
    ("queue_us", "wait for a thread"),
    ("check_us", "checks"),
    ("seal_us", "render + seal"),
    ("audit_us", "audit commit"),
];

/// Records p50 and p99 of each stage of the open loop's releases over the whole run (the
/// events carry no round), from the CAS's JSON log.
fn record_stages(metrics: &mut Metrics, log: &str) -> anyhow::Result<()> {
    let subject = format!("bench/session#{OPEN_SERVICE}");
    let mut by_stage: [Vec<f64>; 4] = Default::default();
    for line in log.lines() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let fields = &event["fields"];
        if event["target"] != "cloister::stages" || fields["subject"] != subject.as_str() {
            continue;
        }
        for ((field, _), values) in STAGES.iter().zip(by_stage.iter_mut()) {
            let value = &fields[*field];
            if let Some(micros) = value
                .as_f64()
                .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
            {
                values.push(micros / 1000.0);
            }
        }
    }
    for ((field, label), mut values) in STAGES.into_iter().zip(by_stage) {
        anyhow::ensure!(
            !values.is_empty(),
            "the CAS logged no stages: is it a build without them?"
        );
        values.sort_by(f64::total_cmp);
        let name = field.trim_end_matches("_us");
        for p in [50.0, 99.0] {
            if let Some(value) = percentile(&values, p) {
                metrics.record(
                    format!("stage_{name}_p{p:.0}_ms"),
                    format!("  CAS stage (open loop): {label} p{p:.0}"),
                    "ms",
                    value,
                );
            }
        }
    }
    Ok(())
}

fn targets(metrics: &Metrics, rate: f64) -> Vec<Target> {
    let mut out = Vec::new();
    if let Some(capacity) = metrics.median("closed_per_s") {
        out.push(Target {
            text: format!("attestations ≥ {TARGET_RATE:.0}/s, closed loop ({capacity:.0}/s)"),
            met: capacity >= TARGET_RATE,
        });
    }
    if let (Some(p99), Some(kept)) = (metrics.median("open_p99_ms"), metrics.median("open_per_s")) {
        // The open loop must also have kept up with its schedule, or its latencies describe a
        // lighter load than the one asked for.
        out.push(Target {
            text: format!(
                "p99 < {TARGET_P99_MS:.0} ms at {rate:.0}/s offered, open loop ({p99:.2} ms, {kept:.0}/s kept)"
            ),
            met: p99 < TARGET_P99_MS && rate >= TARGET_RATE && kept >= 0.98 * rate,
        });
    }
    out
}

pub async fn run(args: CasArgs, json: bool) -> anyhow::Result<()> {
    args.validate()?;
    let cloister = args.cloister_bin.path()?;
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load_before = load_average();
    let admin = ClientIdentity::generate();
    // The CAS runs as its own process, as in real use: in this process it would share the
    // async runtime with the clients and every figure would be theirs as much as its own.
    let stage_log = dir.path().join("cas-stages.jsonl");
    let cas = start_cas(
        &cloister,
        dir.path(),
        &admin.public(),
        args.stages.then_some(stage_log.as_path()),
    )?;
    let bench = prepare(&args, &cas, admin, dir.path()).await?;
    // Every connection opened and the CAS's caches warm before the first round counts.
    let bar = spinner(json, "warming up");
    closed_loop(&bench.closed, args.clients * 8, &Work::Attest).await?;
    // At once, so that each of the open loop's connections is opened.
    futures::future::try_join_all((0..args.connections).map(|_| bench.pool.attest())).await?;
    bar.finish_and_clear();

    let mut metrics = Metrics::default();
    for round in 0..args.rounds {
        let label = |what: &str| format!("round {}/{}: {what}", round + 1, args.rounds);
        measure_round(&args, &bench, &cas.data_dir, &mut metrics, &label, json).await?;
    }
    drop(bench);
    let data_dir = cas.data_dir.clone();
    cas.stop().await?;
    let load_after = load_average();
    let (refusals, refusal_entries) = refusal_audit(&data_dir)?;
    if args.stages {
        let log = std::fs::read_to_string(&stage_log).context("cannot read the CAS's stage log")?;
        record_stages(&mut metrics, &log)?;
    }

    let targets = targets(&metrics, args.rate);
    if json {
        let out = json!({
            "command": "cas",
            "cloister_bin": cloister.display().to_string(),
            "cpus": cpus,
            "load_average": {"before": load_before, "after": load_after},
            "rounds": args.rounds,
            "parameters": {"attestations": args.attestations, "clients": args.clients,
                "rate": args.rate, "connections": args.connections, "dcap": args.dcap,
                "reads": args.reads, "increments": args.increments, "stages": args.stages, "flood": args.flood.then_some(json!({
                    "nonce_clients": args.flood_clients, "junk_clients": args.junk_clients}))},
            "refusal_audit": {"refusals": refusals, "entries": refusal_entries},
            "targets": Target::to_json(&targets),
            "measures": metrics.to_json(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "cloister cas bench — {cpus} CPUs, load {} before / {} after, CAS in its own process, {} rounds \
         (median, min–max)",
        load_before.as_deref().unwrap_or("?"),
        load_after.as_deref().unwrap_or("?"),
        args.rounds,
    );
    metrics.print_table();
    if args.flood {
        println!("refusal audit entries for {refusals} refused attestations: {refusal_entries} (bounded)");
    }
    Target::print_all(&targets);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_of_zero_and_bad_rates_are_refused() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: CasArgs,
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
            "--attestations",
            "--clients",
            "--connections",
            "--dcap",
            "--reads",
        ] {
            assert!(parse(&[flag, "0"]).is_err(), "{flag} 0");
        }
        for rate in ["0", "-5", "NaN", "inf"] {
            assert!(parse(&[&format!("--rate={rate}")]).is_err(), "--rate {rate}");
        }
    }

    #[test]
    fn the_latency_target_needs_the_schedule_kept() {
        let mut metrics = Metrics::default();
        for (capacity, p99, kept) in [
            (2500.0, 6.0, 2000.0),
            (2400.0, 7.0, 1999.0),
            (2600.0, 8.0, 2001.0),
        ] {
            metrics.record("closed_per_s", "", "attestations/s", capacity);
            metrics.record("open_p99_ms", "", "ms", p99);
            metrics.record("open_per_s", "", "attestations/s", kept);
        }
        assert!(targets(&metrics, 2000.0).iter().all(|t| t.met));
        assert!(
            !targets(&metrics, 1000.0)[1].met,
            "a latency at a lower offered rate than the target's is no answer"
        );
        let mut behind = Metrics::default();
        behind.record("closed_per_s", "", "attestations/s", 2500.0);
        behind.record("open_p99_ms", "", "ms", 5.0);
        behind.record("open_per_s", "", "attestations/s", 1500.0);
        let judged = targets(&behind, 2000.0);
        assert!(judged[0].met);
        assert!(!judged[1].met, "an open loop that fell behind its schedule");
    }
}
