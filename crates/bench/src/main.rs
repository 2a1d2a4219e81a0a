//! `cloister-bench`: the benchmarks and the canary scan. They are tools for developers and
//! auditors, kept out of the shipped `cloister` binary; the benchmarks that need a server run
//! the real `cloister` (and `cloister-runtime`) as separate processes.

mod canary;
mod cas;
mod compare;
mod confidential;
mod containers;
mod crypt;
mod governance;
mod instructions;
mod jobs;
mod process;
mod s3;
mod stats;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cloister_cli::client::{Exit, exit};

const AFTER_HELP: &str = "The `jobs`, `s3`, `cas` and `confidential` benchmarks start `cloister` (and `confidential` also \
`cloister-runtime`) from the same build as this program: build them first, e.g.\n  cargo build --release && \
cargo run --release -p cloister-bench -- jobs\nor name them with --cloister-bin / --runtime-bin.\n\nExit codes: 0 \
success, 1 failure, 2 usage error, 3-7 the server's answers as for `cloister`, 10 the canary scan found the \
canary, 11 `compare` found a figure that regressed beyond its spread.";

/// Benchmarks of Cloister on this machine, and the canary scan.
#[derive(Parser)]
#[command(name = "cloister-bench", version, about, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Measure the platform: upload→job-start latency, sustained trivial jobs per second and
    /// `/run` round trips, next to the process-spawn and durable-write floors (a private
    /// `cloister server`).
    Jobs(jobs::JobsArgs),
    /// Measure the container executor: upload → script start in a container against the
    /// engine's own floor (`podman run --rm IMAGE true`), and sustained trivial container jobs
    /// per second (a private `cloister server --executor container`; the image made offline by
    /// scripts/container-test-images).
    Containers(containers::ContainersArgs),
    /// Measure confidential against plain jobs (1 MiB and 256 MiB inputs) and the runtime's
    /// attestation and key release, with a private CAS and server (`cloister`,
    /// `cloister-runtime`).
    Confidential(confidential::ConfidentialArgs),
    /// Measure the CAS: end-to-end attestations, at saturation (closed loop) and at a fixed
    /// offered rate (open loop), optionally under a flood; DCAP quote verification and secret
    /// reads; with a private CAS (`cloister cas serve`).
    #[command(after_help = cas::AFTER_HELP)]
    Cas(cas::CasArgs),
    /// Measure CAS governance: a proposal, N approvals and the apply, for boards of N keys
    /// (3 and 10 by default), with a private CAS (`cloister cas serve`).
    Governance(governance::GovernanceArgs),
    /// Measure the S3 endpoint of a private `cloister server` next to the floor of the same disk:
    /// small PUT and GET latency, listing a large bucket, large multipart PUT and GET throughput,
    /// and the server's memory meanwhile.
    S3(s3::S3Args),
    /// Measure the encrypted object format against raw AES-256-GCM.
    Crypt(crypt::CryptArgs),
    /// Compare two runs of one benchmark (their `--json` outputs): each figure, baseline against
    /// current, and which moved beyond their spread; exit code 11 when one regressed.
    Compare(compare::CompareArgs),
    /// Look for a canary (plain, hex, base64) in data directories, API answers and process
    /// environments; exit code 10 when it is found.
    CanaryScan(canary::CanaryArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("CLOISTER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let code = error.downcast_ref::<Exit>().map_or(exit::FAILURE, |e| e.code);
            eprintln!("error: {error:#}");
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let json = cli.json;
    match cli.command {
        Command::Jobs(args) => jobs::run(args, json).await,
        Command::Containers(args) => containers::run(args, json).await,
        Command::Confidential(args) => confidential::run(args, json).await,
        Command::Cas(args) => cas::run(args, json).await,
        Command::Governance(args) => governance::run(args, json).await,
        Command::S3(args) => s3::run(args, json).await,
        Command::Crypt(args) => crypt::run(args, json),
        Command::Compare(args) => compare::run(args, json),
        Command::CanaryScan(args) => canary::run(args, json).await,
    }
}
