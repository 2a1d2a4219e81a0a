//! `cloister attest`: parse and verify TEE evidence offline.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Context;
use cloister_attestation::{
    DcapCollateral, Endorsements, Policy, SimVerifier, SnpEndorsements, Tolerance, Verifier, appraise,
    inspect,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::client::fail;

/// Exit code when evidence is not authentic or the policy refuses it.
const REFUSED: i32 = 9;

#[derive(clap::Subcommand)]
pub enum AttestCommand {
    /// Parse evidence without verifying it: TEE, version, measurements, report data, debug flag.
    Inspect {
        /// Evidence file, binary or hex.
        file: PathBuf,
    },
    /// Verify evidence: signatures and certificate chains to the vendor's root, collateral
    /// freshness, TCB status and advisories. The verdict (and exit code 9 when negative) is about
    /// authenticity; the TCB status is judged only when policy flags are given.
    Verify(VerifyArgs),
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// Evidence file, binary or hex.
    #[arg(long)]
    evidence: PathBuf,
    /// Intel DCAP collateral (JSON) for SGX and TDX quotes.
    #[arg(long, conflicts_with_all = ["vcek", "chain"])]
    collateral: Option<PathBuf>,
    /// AMD VCEK or VLEK certificate (DER or PEM) for SEV-SNP reports.
    #[arg(long)]
    vcek: Option<PathBuf>,
    /// ARK/ASK (or ASVK) chain in PEM, overriding the built-in Milan, Genoa and Turin roots.
    #[arg(long, requires = "vcek")]
    chain: Option<PathBuf>,
    /// Simulation platform public key (hex) to accept; repeatable.
    #[arg(long = "sim-key")]
    sim_keys: Vec<String>,
    /// Verify as of this time (RFC 3339) instead of now; collateral expires.
    #[arg(long)]
    at: Option<String>,
    /// Weaknesses to accept: debug-mode, outdated-tcb, sw-hardening-needed,
    /// configuration-needed, simulation (comma-separated).
    #[arg(long)]
    tolerate: Option<String>,
    /// Advisory IDs to accept (comma-separated; `*` for all).
    #[arg(long)]
    ignore_advisories: Option<String>,
    /// The measurement the evidence must carry (hex).
    #[arg(long)]
    expect_measurement: Option<String>,
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

pub fn run(command: AttestCommand, json: bool) -> anyhow::Result<()> {
    match command {
        AttestCommand::Inspect { file } => {
            let summary =
                inspect(&read(&file)?).map_err(|e| fail(REFUSED, format!("{}: {e}", file.display())))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!("tee          {}", summary.tee);
                println!("version      {}", summary.version);
                println!("measurement  {}", summary.measurement);
                println!("report data  {}", summary.report_data);
                println!("debug        {}", summary.debug);
            }
            Ok(())
        }
        AttestCommand::Verify(args) => verify(args, json),
    }
}

fn verify(args: VerifyArgs, json: bool) -> anyhow::Result<()> {
    let evidence = read(&args.evidence)?;
    let endorsements = if let Some(path) = &args.collateral {
        Endorsements::Dcap(DcapCollateral::from_json(&read(path)?).map_err(|e| fail(REFUSED, e.to_string()))?)
    } else if let Some(vcek) = &args.vcek {
        let chain = args.chain.as_deref().map(read).transpose()?;
        Endorsements::Snp(
            SnpEndorsements::new(&read(vcek)?, chain.as_deref()).map_err(|e| fail(REFUSED, e.to_string()))?,
        )
    } else {
        Endorsements::None
    };
    let at = match &args.at {
        Some(text) => OffsetDateTime::parse(text, &Rfc3339).map_err(|e| {
            fail(
                crate::client::exit::FAILURE,
                format!("--at {text:?} is not RFC 3339: {e}"),
            )
        })?,
        None => OffsetDateTime::now_utc(),
    };
    let mut sim_keys = Vec::new();
    for key in &args.sim_keys {
        let bytes: [u8; 32] = hex::decode(key.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                fail(
                    crate::client::exit::FAILURE,
                    format!("--sim-key {key:?} is not 32 bytes of hex"),
                )
            })?;
        sim_keys.push(bytes);
    }
    let verifier = Verifier::new().with_sim(SimVerifier::new(sim_keys));
    let policy = policy(&args)?;
    let verdict = appraise(&verifier, &evidence, &endorsements, at, policy.as_ref());
    if json {
        println!("{}", serde_json::to_string_pretty(&verdict)?);
    } else {
        println!(
            "tee           {}",
            verdict.tee.map_or("unknown".to_owned(), |t| t.to_string())
        );
        println!("authentic     {}", verdict.authentic);
        if let Some(failure) = &verdict.failure {
            println!("failure       {failure}");
        }
        if let Some(status) = &verdict.tcb_status {
            println!("tcb status    {status}");
            println!("advisories    {}", verdict.advisories.join(", "));
        }
        if let Some(m) = &verdict.measurement {
            println!("measurement   {m}");
        }
        if let Some(ok) = verdict.policy_ok {
            println!("policy        {}", if ok { "accepted" } else { "refused" });
            for reason in &verdict.policy_reasons {
                println!("              {reason}");
            }
        }
    }
    if verdict.accepted() {
        Ok(())
    } else {
        let why = verdict
            .failure
            .clone()
            .unwrap_or_else(|| format!("refused by policy: {}", verdict.policy_reasons.join("; ")));
        Err(fail(REFUSED, why))
    }
}

fn policy(args: &VerifyArgs) -> anyhow::Result<Option<Policy>> {
    if args.tolerate.is_none() && args.ignore_advisories.is_none() && args.expect_measurement.is_none() {
        return Ok(None);
    }
    let tolerate: BTreeSet<Tolerance> = match &args.tolerate {
        Some(list) => {
            Tolerance::parse_list(list).map_err(|e| fail(crate::client::exit::FAILURE, e.to_string()))?
        }
        None => BTreeSet::new(),
    };
    let ignore_advisories = args
        .ignore_advisories
        .as_deref()
        .map(|l| {
            l.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let policy = Policy {
        tolerate,
        ignore_advisories,
        expected_measurement: args.expect_measurement.clone(),
        expected_report_data: None,
    };
    policy
        .validate()
        .map_err(|e| fail(crate::client::exit::FAILURE, e.to_string()))?;
    Ok(Some(policy))
}
