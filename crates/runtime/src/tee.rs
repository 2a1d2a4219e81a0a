//! The contracts of `cloister-runtime`, the process that runs a confidential job inside its
//! TEE: with the executor that starts it, and with the CAS session that configures it.
//!
//! The executor (untrusted) prepares a job directory holding only ciphertext and public facts:
//! `job.json` ([`TeeJob`]), and the job's storage credential in [`STORAGE_FILE`]. It starts
//! `cloister-runtime --job <dir>`, reads the runtime's standard output as the job's log (status
//! lines, never content), and after it exits reads `result.json` ([`TeeResult`]), which lists
//! the ciphertexts the runtime stored. The program the job runs is not in the job directory: it
//! comes from the CAS session, released after attestation.
//!
//! The runtime stores each output itself, encrypting it while it is sent, over S3 with the
//! job's own credential, which may write only under the service's output folders. The program
//! runs as the runtime's user and can reach the job directory, so the runtime reads and removes
//! the credential before the program starts; anything in the job directory may also have been
//! written by the program, so the executor reads it without following links.
//!
//! The program's own output is the data owner's: the runtime hands it to the platform only
//! encrypted (a *sealed log*, [`crate::JobOutcome::sealed_log`]), bound with
//! [`sealed_log_binding`], and the platform stores it beside the job without reading it.
//!
//! The session names the script to run at [`SCRIPT_PATH`] and hands the runtime its keys and
//! settings in the [`reserved`] variables; the simulation measurement it expects is that of
//! [`RUNTIME_ID`]. These live here, with the executor's contract, so that the session builder
//! shares them without linking the runtime itself.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;

use crate::{LogLine, Status, Tee};

/// Identifies `cloister-runtime` in the simulation measurement (the workspace shares one
/// version, so this crate's is the runtime's). Under simulation the runtime's bytes cannot be
/// protected anyway (the host signs the evidence); with hardware TEEs the runtime is covered by
/// the enclave or VM measurement itself.
pub const RUNTIME_ID: &str = concat!("cloister-runtime/", env!("CARGO_PKG_VERSION"));

/// Where a service's script is injected by its session, and so the word of the session's
/// `command` that names it.
pub const SCRIPT_PATH: &str = "/cloister/script.sh";

/// The released environment variables the runtime consumes itself; the program never sees them.
pub mod reserved {
    /// The service's input identity: the X25519 secret (hex) that opens its input objects.
    pub const INPUT_KEY: &str = "CLOISTER_INPUT_KEY";
    /// Recipients (`cloister1x25519:…`, separated by spaces or commas) one of which must have
    /// authenticated an input as its sender; when absent, inputs are accepted from anyone who
    /// knows the service's public recipient.
    pub const INPUT_SENDERS: &str = "CLOISTER_INPUT_SENDERS";
    /// The data owners' recipients (`cloister1x25519:…`, separated by spaces or commas) every
    /// output, and the program's log, is encrypted to.
    pub const OUTPUT_RECIPIENTS: &str = "CLOISTER_OUTPUT_RECIPIENTS";
    /// The paths inputs may come from: a JSON list of `{bucket, folder, prefix, suffix}`.
    pub const INPUTS: &str = "CLOISTER_INPUTS";
    /// Where outputs go: a JSON list of `{bucket, folder, prefix, suffix}` output targets.
    pub const OUTPUTS: &str = "CLOISTER_OUTPUTS";
    /// The key (hex, 32 bytes) volumes are encrypted under.
    pub const VOLUME_KEY: &str = "CLOISTER_VOLUME_KEY";
    /// The service's volume names, comma separated.
    pub const VOLUMES: &str = "CLOISTER_VOLUMES";
    /// Session counters (names, comma separated) the runtime increments once per run, with
    /// the grant of its attestation, before the program starts; the program sees each new
    /// value in `CLOISTER_COUNTER_<NAME>`. A refused increment (a counter at its `max`) fails
    /// the job before the program runs.
    pub const COUNTERS: &str = "CLOISTER_COUNTERS";
    /// `1` when the service is an attested approver: after attesting, the runtime generates an
    /// Ed25519 key, binds it to its attestation at the CAS (`attested:SESSION#SERVICE` on
    /// boards) and offers the program [`super::APPROVER_SOCKET_VARIABLE`]; the key never leaves
    /// the runtime.
    pub const APPROVER: &str = "CLOISTER_APPROVER";

    /// Whether `name` is reserved.
    pub fn is_reserved(name: &str) -> bool {
        [
            INPUT_KEY,
            INPUT_SENDERS,
            OUTPUT_RECIPIENTS,
            INPUTS,
            OUTPUTS,
            VOLUME_KEY,
            VOLUMES,
            COUNTERS,
            APPROVER,
        ]
        .contains(&name)
    }
}

/// The variable that gives an approver service's program the path of its runtime's approver
/// socket: one request per line, `show ID` (the proposal and the version it replaces, as one
/// JSON line), `approve ID` or `reject ID` (of a proposal shown before on this run); every
/// answer is one JSON line, `{"error": …}` when refused.
pub const APPROVER_SOCKET_VARIABLE: &str = "CLOISTER_APPROVER_SOCKET";

/// The job's storage credential in the job directory: a [`crate::contained::ContainedStorage`]
/// (mode 0600), whose endpoint is where the runtime reaches the platform's S3 service (a Unix
/// socket in a container, which has no network). The runtime removes it before the program
/// starts.
pub const STORAGE_FILE: &str = "storage.json";

/// The bucket bound into every sealed log. It names no stored bucket: it keeps a sealed log
/// and a stored object from ever sharing a binding.
pub const SEALED_LOG_BUCKET: &str = "cloister-job-logs";

/// Bytes a sealed log may take beyond the job's log limit (the ciphertext's header with its
/// recipient stanzas, and 16 bytes per chunk). The runtime caps the plaintext at the log limit;
/// the platform drops, with a note in the plain log, a sealed log longer than the two together.
pub const SEALED_LOG_OVERHEAD: usize = 64 * 1024;

/// The binding (bucket, key) of a job's sealed log: [`SEALED_LOG_BUCKET`] and
/// `<service>/<job>`, with the platform's service and job names. The runtime encrypts with it
/// and the data owner decrypts with it, so a sealed log moved to another job does not open.
pub fn sealed_log_binding(service: &str, job: &str) -> (String, String) {
    (SEALED_LOG_BUCKET.to_owned(), format!("{service}/{job}"))
}

/// Log lines as the platform stores a job's log, and as a sealed log's plaintext is written:
/// one `<RFC 3339 time> <text>` line each.
pub fn render_log(lines: &[LogLine]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in lines {
        out.extend_from_slice(line.time.format(&Rfc3339).unwrap_or_default().as_bytes());
        out.push(b' ');
        out.extend_from_slice(line.text.as_bytes());
        out.push(b'\n');
    }
    out
}

/// `job.json`: a confidential job as the executor describes it. Nothing here is secret, and
/// the runtime trusts none of it: the CAS, session and service are checked against the TEE's
/// launch configuration register; the program, its arguments and environment, the keys,
/// recipients, allowed input paths, output targets and volume versions come from the CAS after
/// attestation; the input is authenticated ciphertext bound to its location; the plaintext
/// folder must pass ownership and mode checks. What remains (names, the event, limits) can only
/// make the job fail or describe it wrongly to its own script.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeeJob {
    /// Job name as listed by the API.
    pub job_name: String,
    /// The job's UUID.
    pub job_uuid: String,
    /// Platform service name (`OSCAR_SERVICE_NAME`).
    pub service: String,
    /// The TEE the evidence comes from.
    pub tee: Tee,
    /// CAS URL (`https://host:port`).
    pub cas: String,
    /// Pin of the CAS identity (`sha256:<hex>`).
    pub cas_pin: String,
    /// A Unix socket that relays connections to the CAS's port: a runtime in a container
    /// without network reaches the CAS through it. TLS, and so the CAS's pin, is end to end:
    /// the relay carries ciphertext and cannot answer for the CAS.
    #[serde(default)]
    pub cas_socket: Option<PathBuf>,
    /// CAS session name.
    pub session: String,
    /// Service name within the session.
    pub cas_service: String,
    /// Seed file of the simulated platform key (simulation TEE only).
    #[serde(default)]
    pub sim_platform_key: Option<PathBuf>,
    /// The input object: where it is stored (its binding) and a local file holding its
    /// ciphertext.
    #[serde(default)]
    pub input: Option<TeeInput>,
    /// The triggering event (`EVENT`), JSON text.
    #[serde(default)]
    pub event: String,
    /// `EVENT_TIME`, RFC 3339.
    #[serde(default)]
    pub event_time: String,
    /// Memory limit of the script, applied with `RLIMIT_AS` when there is no cgroup slot.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// Wall-clock limit of the script, seconds.
    pub timeout_secs: u64,
    /// Most bytes of the program's output kept (the plaintext of its sealed log).
    pub log_limit: usize,
    /// `cgroup.procs` files of the slot the executor prepared with the job's limits; the
    /// script joins them.
    #[serde(default)]
    pub cgroup_procs: Vec<PathBuf>,
    /// Where plaintext may live while the job runs: memory-backed (tmpfs), outside the
    /// platform's data directory.
    pub plain_root: PathBuf,
    /// Where the service's encrypted volumes are kept (ciphertext, untrusted storage).
    pub volumes_dir: PathBuf,
}

/// The input of a confidential job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeeInput {
    /// Bucket (part of the ciphertext's binding).
    pub bucket: String,
    /// Object key (part of the binding; its last segment names the plaintext file).
    pub key: String,
    /// Local file holding the ciphertext.
    pub file: PathBuf,
}

/// `result.json`: what the runtime reports. No content of the job's data.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeeResult {
    /// Succeeded or Failed.
    pub status: Status,
    /// The script's exit code, if it ran and exited normally.
    pub exit_code: Option<i32>,
    /// Why the job failed.
    pub reason: Option<String>,
    /// The encrypted outputs the runtime stored, in order.
    pub outputs: Vec<TeeOutput>,
    /// File name, inside `sealed/`, of the program's output encrypted to the data owners
    /// (binding: [`sealed_log_binding`]).
    #[serde(default)]
    pub sealed_log: Option<String>,
}

/// One encrypted output the runtime stored (bound to where it is stored).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeeOutput {
    /// Bucket.
    pub bucket: String,
    /// Key.
    pub key: String,
}
