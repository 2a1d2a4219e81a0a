//! `cloister cas bench`: a private CAS on loopback (key-file vault in a temporary directory),
//! measured end to end from real clients.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use cloister_attestation::{DcapCollateral, DcapVerifier, Endorsements, EvidenceVerifier, SimPlatform};
use cloister_cas_client::client::CasClient;
use cloister_cas_client::protocol::InitData;
use cloister_cas_client::sign::ClientIdentity;
use cloister_cas_store::{SealingConfig, Vault};
use serde_json::json;
use time::OffsetDateTime;

/// Sizes of the CAS benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct CasBenchArgs {
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
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

const SGX_QUOTE: &[u8] = include_bytes!("../../attestation/testdata/sgx/quote.bin");
const SGX_COLLATERAL: &[u8] = include_bytes!("../../attestation/testdata/sgx/collateral.json");

pub async fn run(args: CasBenchArgs, json_out: bool) -> anyhow::Result<()> {
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
    };
    let mut running = cloister_cas::server::serve(config, Arc::new(vault)).await?;
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

    // End-to-end attestations: nonce, evidence, TLS request, verification, HPKE release, open.
    eprintln!(
        "bench: {} simulated attestations from {} clients",
        args.attestations, args.clients
    );
    let per_client = args.attestations.div_ceil(args.clients.max(1));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.clients.max(1) {
        let client = CasClient::new(&url, &pin, None)?;
        let platform = SimPlatform::load_or_generate(&platform_file).map_err(|e| anyhow::anyhow!("{e}"))?;
        let pin = pin.clone();
        tasks.push(tokio::spawn(async move {
            let init = InitData::new(&pin, "bench/session", "svc")
                .map_err(|e| cloister_cas_client::client::ClientError::Local(e.to_string()))?;
            let source = init
                .simulated(platform, measurement)
                .map_err(|e| cloister_cas_client::client::ClientError::Local(e.to_string()))?;
            let mut samples = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                let t = Instant::now();
                client.attest(&init, &source, |_| {}).await?;
                samples.push(t.elapsed());
            }
            Ok::<_, cloister_cas_client::client::ClientError>(samples)
        }));
    }
    let mut attest = Vec::new();
    for task in tasks {
        attest.extend(task.await??);
    }
    let attest_elapsed = started.elapsed();
    attest.sort();
    let attest_rate = attest.len() as f64 / attest_elapsed.as_secs_f64();

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
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "cpus": cpus,
                "attestations": {"count": attest.len(), "clients": args.clients, "per_second": attest_rate,
                    "p50_ms": percentile(&attest, 50.0), "p99_ms": percentile(&attest, 99.0)},
                "dcap_per_second": dcap_rates.iter().map(|(l, r)| (l.to_string(), *r)).collect::<std::collections::BTreeMap<_, _>>(),
                "secret_read_ms": {"p50": percentile(&reads, 50.0), "p99": percentile(&reads, 99.0)},
            }))?
        );
        return Ok(());
    }
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!("cloister cas bench — {cpus} CPUs");
    println!(
        "{:<44} {:>12} {:>10} {:>10} {:>24}",
        "measure", "rate", "p50", "p99", "target"
    );
    let (p50, p99) = (percentile(&attest, 50.0), percentile(&attest, 99.0));
    println!(
        "{:<44} {:>10.0}/s {:>7.2} ms {:>7.2} ms {:>24}",
        format!("simulated attestation, TLS+HPKE ({} clients)", args.clients),
        attest_rate,
        p50,
        p99,
        format!(
            "≥2000/s, p99<10ms {}",
            verdict(attest_rate >= 2000.0 && p99 < 10.0)
        )
    );
    for (label, rate) in &dcap_rates {
        let target = if *label == "cached" {
            format!("≥1000/s {}", verdict(*rate >= 1000.0))
        } else {
            "reference".to_owned()
        };
        println!(
            "{:<44} {:>10.0}/s {:>10} {:>10} {:>24}",
            format!("DCAP quote verification ({label})"),
            rate,
            "",
            "",
            target
        );
    }
    println!(
        "{:<44} {:>12} {:>7.2} ms {:>7.2} ms {:>24}",
        "secret read (signed, owner)",
        "",
        percentile(&reads, 50.0),
        percentile(&reads, 99.0),
        ""
    );
    Ok(())
}
