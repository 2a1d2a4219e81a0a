//! `cloister-bench cas`: a private CAS on loopback (key-file vault in a temporary directory),
//! measured end to end from real clients in this process.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;
use cloister_attestation::{DcapCollateral, DcapVerifier, Endorsements, EvidenceVerifier, SimPlatform};
use cloister_cas_client::client::{CasClient, ClientError};
use cloister_cas_client::protocol::{AttestRequest, InitData};
use cloister_cas_client::sign::ClientIdentity;
use cloister_cas_store::{SealingConfig, Vault};
use serde_json::json;
use time::OffsetDateTime;

use crate::stats::{ms, percentile};

/// Sizes of the CAS benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct CasArgs {
    /// Attestations in the end-to-end run.
    #[arg(long, default_value_t = 4000)]
    pub attestations: usize,
    /// Concurrent attesting clients.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// DCAP verifications per path (cached and dcap-qvl's full path).
    #[arg(long, default_value_t = 2000)]
    pub dcap: usize,
    /// Sequential secret reads.
    #[arg(long, default_value_t = 1000)]
    pub reads: usize,
    /// Run the attestations a second time under a flood (clients hammering the nonce
    /// endpoint and sending junk attestations) and show both runs side by side.
    #[arg(long)]
    pub flood: bool,
    /// Flooding clients requesting nonces as fast as they can.
    #[arg(long, default_value_t = 8)]
    pub flood_clients: usize,
    /// Flooding clients sending junk attestations: a valid nonce with evidence from an
    /// unregistered platform, naming a new session each time.
    #[arg(long, default_value_t = 2)]
    pub junk_clients: usize,
}

/// One run of end-to-end attestations.
struct AttestRun {
    /// Latencies, sorted.
    samples: Vec<Duration>,
    per_second: f64,
}

impl AttestRun {
    fn json(&self, clients: usize) -> serde_json::Value {
        json!({"count": self.samples.len(), "clients": clients, "per_second": self.per_second,
            "p50_ms": percentile_ms(&self.samples, 50.0), "p99_ms": percentile_ms(&self.samples, 99.0)})
    }
}

/// Attestations by `clients` concurrent clients, each with its own connection: nonce,
/// evidence, TLS request, verification, HPKE release, open.
async fn attest_run(
    url: &str,
    pin: &str,
    platform_file: &Path,
    measurement: [u8; 32],
    attestations: usize,
    clients: usize,
) -> anyhow::Result<AttestRun> {
    let per_client = attestations.div_ceil(clients.max(1));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let client = CasClient::new(url, pin, None)?;
        let platform = SimPlatform::load_or_generate(platform_file).map_err(|e| anyhow::anyhow!("{e}"))?;
        let pin = pin.to_owned();
        tasks.push(tokio::spawn(async move {
            let init =
                InitData::new(&pin, "bench/session", "svc").map_err(|e| ClientError::Local(e.to_string()))?;
            let source = init
                .simulated(platform, measurement)
                .map_err(|e| ClientError::Local(e.to_string()))?;
            let mut samples = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                let t = Instant::now();
                client.attest(&init, &source, |_| {}).await?;
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
    Ok(AttestRun {
        per_second: samples.len() as f64 / elapsed.as_secs_f64(),
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
    fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.nonces.load(Ordering::Relaxed),
            self.junk_refused.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }
}

/// Starts the flooding clients; they run until `counts.stop` is set.
fn start_flood(
    url: &str,
    pin: &str,
    args: &CasArgs,
    counts: &Arc<FloodCounts>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut tasks = Vec::new();
    for _ in 0..args.flood_clients {
        let client = CasClient::new(url, pin, None)?;
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
    let init = InitData::new(pin, "junk/session", "svc").map_err(|e| anyhow::anyhow!("{e}"))?;
    let source = Arc::new(
        init.simulated(SimPlatform::generate(), [1u8; 32])
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    for worker in 0..args.junk_clients {
        let client = CasClient::new(url, pin, None)?;
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

/// What the flood did while the attestations ran under it.
struct FloodResult {
    run: AttestRun,
    nonces_per_second: f64,
    junk_per_second: f64,
    errors: u64,
}

/// The `p`-th percentile of sorted latencies in milliseconds (0 without samples).
fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    percentile(sorted, p).map_or(0.0, ms)
}

// The real SGX quote and its offline collateral from the attestation crate's test vectors.
const SGX_QUOTE: &[u8] = include_bytes!("../../attestation/testdata/sgx/quote.bin");
const SGX_COLLATERAL: &[u8] = include_bytes!("../../attestation/testdata/sgx/collateral.json");

pub async fn run(args: CasArgs, json_out: bool) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (vault, _) = Vault::init(dir.path(), SealingConfig::KeyFile(dir.path().join("master.key")))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let admin = ClientIdentity::generate();
    let owner_seed = {
        let mut seed = [0u8; 32];
        rand::fill(&mut seed);
        seed
    };
    let pin = vault
        .identity_public()
        .map(|k| cloister_cas_client::pin::pin_of(&k))
        .context("no identity")?;
    let config = cloister_cas::server::CasConfig {
        data_dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse()?,
        tls_names: Vec::new(),
        admins: vec![admin.public()],
        nonce_ttl: Duration::from_secs(60),
        collateral: None,
        refusal_audit: Default::default(),
    };
    let vault = Arc::new(vault);
    let mut running = cloister_cas::server::serve(config, vault.clone()).await?;
    let url = format!(
        "https://{}",
        running
            .network_addr()
            .await
            .context("CAS did not open its port")?
    );

    let platform_file = dir.path().join("platform.key");
    let platform = SimPlatform::load_or_generate(&platform_file).map_err(|e| anyhow::anyhow!("{e}"))?;
    CasClient::new(&url, &pin, Some(admin))?
        .add_platform(&hex::encode(platform.public_key()), "bench")
        .await?;
    let owner = CasClient::new(&url, &pin, Some(ClientIdentity::from_seed(&owner_seed)))?;
    let measurement = [9u8; 32];
    let session = format!(
        "name: bench/session\nsecurity:\n  attestation:\n    tolerate: [simulation]\nservices:\n- name: svc\n  command: [run]\n  environment: {{KEY: \"$$CLOISTER::key:hex$$\"}}\n  attestation:\n  - tee: sim\n    measurement: {}\nsecrets:\n- name: key\n  kind: binary\n  size: 32\n",
        hex::encode(measurement)
    );
    owner.create_session(&session).await?;

    eprintln!(
        "bench: {} simulated attestations from {} clients",
        args.attestations, args.clients
    );
    let calm = attest_run(
        &url,
        &pin,
        &platform_file,
        measurement,
        args.attestations,
        args.clients,
    )
    .await?;
    let flood = if args.flood {
        eprintln!(
            "bench: again under a flood of {} nonce and {} junk-attestation clients",
            args.flood_clients, args.junk_clients
        );
        let counts = Arc::new(FloodCounts::default());
        let flooders = start_flood(&url, &pin, &args, &counts)?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (nonces, junk, errors) = counts.snapshot();
        let started = Instant::now();
        let run = attest_run(
            &url,
            &pin,
            &platform_file,
            measurement,
            args.attestations,
            args.clients,
        )
        .await;
        let elapsed = started.elapsed().as_secs_f64();
        let (nonces_after, junk_after, errors_after) = counts.snapshot();
        counts.stop.store(true, Ordering::Relaxed);
        for flooder in flooders {
            flooder.await?;
        }
        Some(FloodResult {
            run: run?,
            nonces_per_second: (nonces_after - nonces) as f64 / elapsed,
            junk_per_second: (junk_after - junk) as f64 / elapsed,
            errors: errors_after - errors,
        })
    } else {
        None
    };

    // Secret reads by the owner (signed request, access check, unseal of the record).
    eprintln!("bench: {} secret reads", args.reads);
    let mut reads = Vec::with_capacity(args.reads);
    for _ in 0..args.reads {
        let t = Instant::now();
        owner.read_secret("bench/session", "key", Some("hex")).await?;
        reads.push(t.elapsed());
    }
    reads.sort();
    running.shutdown().await;
    // After the shutdown, which writes the last refusal summary.
    let audit = vault
        .audit_entries(0, usize::MAX)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let refusal_entries = audit
        .iter()
        .filter(|e| e.kind == "attest-fail" || e.kind == "attest-fail-summary")
        .count();
    let refusals: u64 = audit
        .iter()
        .map(|e| match e.kind.as_str() {
            "attest-fail" => 1,
            "attest-fail-summary" => e.detail["unrecorded_total"].as_u64().unwrap_or(0),
            _ => 0,
        })
        .sum();

    // DCAP: the cached path and dcap-qvl's full path, side by side, on both CPUs.
    eprintln!("bench: {} DCAP verifications per path", args.dcap);
    let collateral = DcapCollateral::from_json(SGX_COLLATERAL).map_err(|e| anyhow::anyhow!("{e}"))?;
    let at = OffsetDateTime::parse(
        "2025-07-01T00:00:00Z",
        &time::format_description::well_known::Rfc3339,
    )?;
    let endorsements = Arc::new(Endorsements::Dcap(collateral));
    let mut dcap_rates = Vec::new();
    for (label, verifier) in [
        ("cached", Arc::new(DcapVerifier::new())),
        ("dcap-qvl", Arc::new(DcapVerifier::reference())),
    ] {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let per_thread = args.dcap.div_ceil(threads);
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
        dcap_rates.push((
            label,
            (per_thread * threads) as f64 / started.elapsed().as_secs_f64(),
        ));
    }

    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    if json_out {
        let flood_json = flood.as_ref().map(|f| {
            json!({
                "nonce_clients": args.flood_clients,
                "junk_clients": args.junk_clients,
                "nonces_per_second": f.nonces_per_second,
                "junk_refused_per_second": f.junk_per_second,
                "errors": f.errors,
                "attestations": f.run.json(args.clients),
                "refusals": refusals,
                "refusal_audit_entries": refusal_entries,
            })
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "cpus": cpus,
                "attestations": calm.json(args.clients),
                "flood": flood_json,
                "dcap_per_second": dcap_rates.iter().map(|(l, r)| (l.to_string(), *r)).collect::<std::collections::BTreeMap<_, _>>(),
                "secret_read_ms": {"p50": percentile_ms(&reads, 50.0), "p99": percentile_ms(&reads, 99.0)},
            }))?
        );
        return Ok(());
    }
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!("cloister cas bench — {cpus} CPUs");
    println!(
        "{:<52} {:>12} {:>10} {:>10} {:>24}",
        "measure", "rate", "p50", "p99", "target"
    );
    let attestation_row = |label: String, run: &AttestRun, target: String| {
        println!(
            "{:<52} {:>10.0}/s {:>7.2} ms {:>7.2} ms {:>24}",
            label,
            run.per_second,
            percentile_ms(&run.samples, 50.0),
            percentile_ms(&run.samples, 99.0),
            target
        );
    };
    let p99 = percentile_ms(&calm.samples, 99.0);
    attestation_row(
        format!("simulated attestation, TLS+HPKE ({} clients)", args.clients),
        &calm,
        format!(
            "≥2000/s, p99<10ms {}",
            verdict(calm.per_second >= 2000.0 && p99 < 10.0)
        ),
    );
    if let Some(flood) = &flood {
        attestation_row(
            format!(
                "  the same under flood ({}+{} flooding clients)",
                args.flood_clients, args.junk_clients
            ),
            &flood.run,
            format!("{} flood errors", flood.errors),
        );
        println!(
            "{:<52} {:>10.0}/s {:>10} {:>10} {:>24}",
            "  nonce requests served during the flood", flood.nonces_per_second, "", "", ""
        );
        println!(
            "{:<52} {:>10.0}/s {:>10} {:>10} {:>24}",
            "  junk attestations refused (403) during it", flood.junk_per_second, "", "", ""
        );
        println!(
            "{:<52} {:>12} {:>10} {:>10} {:>24}",
            format!("  refusal audit entries for {refusals} refusals"),
            refusal_entries,
            "",
            "",
            "bounded"
        );
    }
    for (label, rate) in &dcap_rates {
        let target = if *label == "cached" {
            format!("≥1000/s {}", verdict(*rate >= 1000.0))
        } else {
            "reference".to_owned()
        };
        println!(
            "{:<52} {:>10.0}/s {:>10} {:>10} {:>24}",
            format!("DCAP quote verification ({label})"),
            rate,
            "",
            "",
            target
        );
    }
    println!(
        "{:<52} {:>12} {:>7.2} ms {:>7.2} ms {:>24}",
        "secret read (signed, owner)",
        "",
        percentile_ms(&reads, 50.0),
        percentile_ms(&reads, 99.0),
        ""
    );
    Ok(())
}
