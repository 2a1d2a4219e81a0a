//! `cloister`: run the platform, and drive it from the command line.

mod attest;
mod cas;
mod cas_governance;
mod commands;
mod confidential;
mod crypt;
mod server;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cloister_cli::client;

use crate::client::{ConnectArgs, Exit};

const EXIT_CODES: &str = "Exit codes: 0 success, 1 failure, 2 usage error, 3 not found, 4 missing or wrong \
credentials, 5 conflict (already exists / in use), 6 input refused by the server, 7 server failed or \
unreachable, 8 the job or invocation failed, 9 evidence not authentic or refused by the policy.";

/// Cloister: serverless file processing that is OSCAR-compatible and can run confidentially.
#[derive(Parser)]
#[command(name = "cloister", version, about, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    connect: ConnectArgs,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// How log lines on stderr look: `text` (coloured only on a terminal) or `json` (one object
    /// a line, for log collectors).
    #[arg(long, global = true, env = "CLOISTER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the platform: REST API, embedded S3 endpoint and local executor.
    Server(Box<server::ServerArgs>),
    /// Create or update the services of an FDL file.
    ///
    /// For a service with a `confidential` block (run this on your trusted computer) it first
    /// creates or updates the service's CAS session: the expected measurement, the service's
    /// input identity (kept in --keys-dir; its recipient is printed), the output recipients,
    /// volume keys and the FDL's secrets go to the CAS, and the platform gets the service
    /// without its secrets.
    Apply {
        /// The FDL file (script paths are relative to it).
        fdl: PathBuf,
        /// CAS client key that owns the sessions of confidential services (`cloister cas keygen`).
        #[arg(long, env = "CLOISTER_CAS_KEY")]
        cas_key: Option<PathBuf>,
        /// Where input identities of confidential services are kept (on this computer).
        #[arg(long, env = "CLOISTER_KEYS_DIR", default_value = "cloister-keys")]
        keys_dir: PathBuf,
    },
    /// List, show and delete services.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Invoke a service synchronously and print or save its output.
    Run {
        /// Service name.
        service: String,
        /// Input file (sent base64-encoded); no input when absent.
        #[arg(long)]
        input: Option<PathBuf>,
        /// Where to write the output (stdout when absent).
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// List jobs, read their logs, delete them.
    #[command(subcommand)]
    Job(JobCommand),
    /// Upload a local file to `bucket/key`.
    Put {
        /// Local file.
        local: PathBuf,
        /// Destination `bucket/key` (a trailing `/` appends the file name).
        remote: String,
        /// Encrypt on this computer first, to these recipients (`cloister1x25519:…`), bound to
        /// the destination bucket and key.
        #[arg(long = "encrypt", value_name = "RECIPIENT")]
        encrypt: Vec<String>,
        /// With --encrypt: authenticate the object as sent by this identity file (`cloister
        /// keygen`), so a recipient can require it (`--expect-sender`).
        #[arg(long, value_name = "KEYFILE", requires = "encrypt")]
        sender: Option<PathBuf>,
    },
    /// Download `bucket/key` to a local file (`-` for stdout).
    Get {
        /// Source `bucket/key`.
        remote: String,
        /// Local file; the key's file name when absent.
        local: Option<PathBuf>,
        /// Decrypt with this identity file after downloading (the object must be bound to
        /// this bucket and key).
        #[arg(long = "decrypt", value_name = "IDENTITY")]
        decrypt: Option<PathBuf>,
        /// With --decrypt: refuse the object unless it is authenticated by this sender
        /// (`cloister1x25519:…`); repeatable, any one of them suffices.
        #[arg(long = "expect-sender", value_name = "RECIPIENT", requires = "decrypt")]
        expect_sender: Vec<String>,
    },
    /// Make a data key pair for encrypted objects; prints its recipient.
    Keygen {
        /// Where to write the identity (mode 0600; never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Encrypt a file for recipients, bound to the bucket and key it will be stored under.
    Encrypt(crypt::EncryptArgs),
    /// Decrypt a file made by `encrypt` (or `put --encrypt`).
    Decrypt(crypt::DecryptArgs),
    /// Show the server's information: version, executor, this host's simulation TEE key.
    Info,
    /// Print shell `export` lines that point S3 clients at this server's S3 endpoint:
    /// `eval "$(cloister env)"`, then the AWS CLI, boto3, s3cmd (`--access_key=$AWS_ACCESS_KEY_ID`
    /// …) and rclone (remote `cloister:`) work. The lines carry the S3 secret key.
    Env,
    /// List objects under `bucket[/prefix]`.
    Ls {
        /// `bucket` or `bucket/prefix`.
        path: String,
    },
    /// The configuration and attestation service: run it, unseal it, manage sessions.
    #[command(subcommand)]
    Cas(cas::CasCommand),
    /// Inspect and verify TEE evidence (SGX/TDX DCAP quotes, SEV-SNP reports, simulation).
    #[command(subcommand)]
    Attest(attest::AttestCommand),
    /// Maintain the embedded object store of a stopped server.
    #[command(subcommand)]
    Store(StoreCommand),
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Check the object store's consistency (the server must be stopped): every object's data
    /// is present and no data file is left unreferenced. Exits 1 when something is wrong. It
    /// changes nothing: what a crash left (orphaned data files, an unfinished migration) is
    /// reported as found; the next server start repairs it.
    Check {
        /// The server's data directory.
        #[arg(long, env = "CLOISTER_DATA_DIR", default_value = "cloister-data")]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ServiceCommand {
    /// List services.
    Ls,
    /// Show one service (with its token; secrets hidden).
    Get {
        /// Service name.
        name: String,
    },
    /// Delete a service and its jobs.
    Rm {
        /// Service name.
        name: String,
    },
}

#[derive(Subcommand)]
enum JobCommand {
    /// List a service's jobs.
    Ls {
        /// Service name.
        service: String,
    },
    /// Print a job's log.
    Logs {
        /// Service name.
        service: String,
        /// Job name; the service's latest job when absent.
        job: Option<String>,
        /// Prefix each line with its time.
        #[arg(long)]
        timestamps: bool,
        /// Print the job's sealed log instead: a confidential job's output, encrypted to the
        /// data owner, downloaded and decrypted here with this identity file (`--json`: the
        /// lines as a JSON array).
        #[arg(long = "decrypt", value_name = "IDENTITY")]
        decrypt: Option<PathBuf>,
    },
    /// Wait until a job has finished; exit 0 when it succeeded, 8 when it failed.
    Wait {
        /// Service name.
        service: String,
        /// Job name; the service's latest job when absent.
        job: Option<String>,
        /// Give up after this long (exit 1).
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Delete one job, or the succeeded jobs of a service (all with --all).
    Rm {
        /// Service name.
        service: String,
        /// Job name; all succeeded jobs when absent.
        job: Option<String>,
        /// With no job: delete every job, not only succeeded ones.
        #[arg(long)]
        all: bool,
    },
}

/// Subcommands that do not talk to the platform's REST API: their help does not list its
/// connection flags (which are global so that `cloister ls --config F` works).
const OFFLINE_COMMANDS: &[&str] = &["server", "cas", "attest", "store", "keygen", "encrypt", "decrypt"];

fn parse_cli() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let mut command = Cli::command();
    // clap copies a global flag into a subcommand only where the subcommand has no flag of that
    // name: a hidden copy there is what its help, and its subcommands' help, then show.
    let hidden: Vec<clap::Arg> = command
        .get_arguments()
        .filter(|a| ["config", "endpoint", "user", "password"].contains(&a.get_id().as_str()))
        .map(|a| a.clone().hide(true))
        .collect();
    for name in OFFLINE_COMMANDS {
        command = command.mut_subcommand(name, |sub| sub.args(hidden.clone()));
    }
    let mut matches = command.get_matches();
    Cli::from_arg_matches_mut(&mut matches).unwrap_or_else(|e| e.exit())
}

fn main() -> ExitCode {
    let cli = parse_cli();
    // s3s logs every client error at ERROR; the store logs its own faults with their cause and
    // the endpoint logs each answer at the level it deserves. So s3s stays quiet unless
    // CLOISTER_LOG names it.
    let directives = match std::env::var("CLOISTER_LOG") {
        Ok(d) if d.contains("s3s") => d,
        Ok(d) => format!("{d},s3s=off"),
        Err(_) if matches!(cli.command, Command::Server(_)) => "info,s3s=off".to_owned(),
        Err(_) => "warn,s3s=off".to_owned(),
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,s3s=off"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        // Colour codes are noise in a file or a journal, and NO_COLOR asks for none anywhere.
        LogFormat::Text => logs
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .init(),
    }

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
            let code = error
                .downcast_ref::<Exit>()
                .map_or(client::exit::FAILURE, |e| e.code);
            eprintln!("error: {error:#}");
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let json = cli.json;
    match cli.command {
        Command::Server(args) => server::run(*args).await,
        Command::Attest(command) => attest::run(command, json),
        Command::Keygen { out } => crypt::keygen(&out),
        Command::Encrypt(args) => crypt::encrypt(args),
        Command::Decrypt(args) => crypt::decrypt(args, json),
        Command::Cas(command) => cas::run(command, json).await,
        Command::Store(StoreCommand::Check { data_dir }) => store_check(&data_dir, json),
        command => {
            let client = client::Client::new(cli.connect.resolve()?)?;
            match command {
                Command::Apply {
                    fdl,
                    cas_key,
                    keys_dir,
                } => commands::apply(&client, &fdl, cas_key.as_deref(), &keys_dir, json).await,
                Command::Service(ServiceCommand::Ls) => commands::service_ls(&client, json).await,
                Command::Service(ServiceCommand::Get { name }) => commands::service_get(&client, &name).await,
                Command::Service(ServiceCommand::Rm { name }) => commands::service_rm(&client, &name).await,
                Command::Run {
                    service,
                    input,
                    output,
                } => commands::run(&client, &service, input.as_deref(), output.as_deref()).await,
                Command::Job(JobCommand::Ls { service }) => commands::job_ls(&client, &service, json).await,
                Command::Job(JobCommand::Logs {
                    service,
                    job,
                    timestamps,
                    decrypt,
                }) => {
                    let job = match job {
                        Some(job) => job,
                        None => commands::latest_job(&client, &service).await?,
                    };
                    match decrypt {
                        Some(identity) => {
                            commands::job_sealed_logs(&client, &service, &job, timestamps, &identity, json)
                                .await
                        }
                        None => commands::job_logs(&client, &service, &job, timestamps).await,
                    }
                }
                Command::Job(JobCommand::Wait {
                    service,
                    job,
                    timeout,
                }) => commands::job_wait(&client, &service, job.as_deref(), timeout, json).await,
                Command::Info => commands::info(&client, json).await,
                Command::Env => commands::env(&client).await,
                Command::Job(JobCommand::Rm { service, job, all }) => {
                    commands::job_rm(&client, &service, job.as_deref(), all).await
                }
                Command::Put {
                    local,
                    remote,
                    encrypt,
                    sender,
                } => crypt::put(&client, &local, &remote, &encrypt, sender.as_deref(), json).await,
                Command::Get {
                    remote,
                    local,
                    decrypt,
                    expect_sender,
                } => {
                    let decrypt = decrypt.as_deref();
                    crypt::get(&client, &remote, local.as_deref(), decrypt, &expect_sender, json).await
                }
                Command::Ls { path } => commands::ls(&client, &path, json).await,
                Command::Server(_)
                | Command::Attest(_)
                | Command::Cas(_)
                | Command::Store(_)
                | Command::Keygen { .. }
                | Command::Encrypt(_)
                | Command::Decrypt(_) => {
                    unreachable!("handled above")
                }
            }
        }
    }
}

fn store_check(data_dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
    use anyhow::Context;
    let objects = data_dir.join("objects");
    if !objects.is_dir() {
        return Err(Exit {
            code: client::exit::NOT_FOUND,
            message: format!("{} holds no object store", data_dir.display()),
        }
        .into());
    }
    // A running server holds the claim: said with its pid, rather than as a lock error.
    let _claim = server::claim_data_dir(data_dir)?;
    let store = cloister_storage::Store::open(&objects, std::sync::Arc::new(cloister_storage::NoEvents))
        .with_context(|| {
            format!(
                "cannot open the object store in {} (is the server running?)",
                objects.display()
            )
        })?;
    let report = store.check()?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "objects": report.objects,
                "data_files": report.data_files,
                "missing_files": report.missing_files,
                "unreferenced_files": report.unreferenced_files,
            })
        );
    } else {
        println!(
            "{} objects, {} data files, {} missing, {} unreferenced",
            report.objects, report.data_files, report.missing_files, report.unreferenced_files
        );
    }
    if report.missing_files > 0 || report.unreferenced_files > 0 {
        return Err(Exit {
            code: client::exit::FAILURE,
            message: "the object store is inconsistent".to_owned(),
        }
        .into());
    }
    Ok(())
}
