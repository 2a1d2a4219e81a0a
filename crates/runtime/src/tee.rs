//! The contract between an executor and `cloister-runtime`, the process that runs a
//! confidential job inside its TEE.
//!
//! The executor (untrusted) prepares a job directory holding only ciphertext and public facts:
//! `job.json` ([`TeeJob`]). It starts `cloister-runtime --job <dir>`, reads the runtime's
//! standard output as the job's log (status lines, never content), and after it exits reads
//! `result.json` ([`TeeResult`]) and uploads the ciphertexts it lists. The program the job runs
//! is not in the job directory: it comes from the CAS session, released after attestation.
//!
//! The program's own output is the data owner's: the runtime hands it to the platform only
//! encrypted (a *sealed log*, [`crate::JobOutcome::sealed_log`]), bound with
//! [`sealed_log_binding`], and the platform stores it beside the job without reading it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;

use crate::{LogLine, Status, TeeKind};

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
    pub tee: TeeKind,
    /// CAS URL (`https://host:port`).
    pub cas: String,
    /// Pin of the CAS identity (`sha256:<hex>`).
    pub cas_pin: String,
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
    /// Encrypted outputs to upload, in order.
    pub outputs: Vec<TeeOutput>,
    /// File name, inside `sealed/`, of the program's output encrypted to the data owners
    /// (binding: [`sealed_log_binding`]).
    #[serde(default)]
    pub sealed_log: Option<String>,
}

/// One encrypted output, bound to where it must be stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeeOutput {
    /// Target bucket.
    pub bucket: String,
    /// Target key.
    pub key: String,
    /// File name of the ciphertext inside the job directory's `sealed/` folder.
    pub file: String,
}
