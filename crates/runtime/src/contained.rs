//! The contract between the container executor and `cloister-runtime --container-job`, the
//! runtime as the first program of a plain job's container (OSCAR's supervisor in its place).
//!
//! The executor bind-mounts the job's work directory at [`WORK_DIR`] (holding only its three
//! empty folders) and a control directory at [`CONTROL_DIR`], which holds [`JOB_FILE`] (a
//! [`ContainedJob`], with the job's storage credential: mode 0600, read and removed by the
//! runtime before the script starts), and a socket directory at [`SOCKET_DIR`], read-only
//! inside, holding the job's S3 socket [`SOCKET_FILE`] and nothing else: the script runs as
//! the runtime's user and may write to the control directory, so a socket there could be
//! replaced by one of the script's (faking its own job's uploads). The runtime runs
//! [`crate::run_job`] with a network [`crate::JobIo`] on that endpoint and writes one
//! [`ContainedResult`] as JSON to its standard output when the job has ended; nothing else goes
//! there (its own diagnostics go to standard error), and the script's output reaches it through
//! pipes, so a script cannot forge the result.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{JobInput, JobOutcome, JobSpec, Limits, LogLine, OutputTarget, Placement, Status, StorageAccess};

/// Where the job's work directory is mounted in the container (the contract's paths are there).
pub const WORK_DIR: &str = "/cloister/job";
/// Where the control directory is mounted in the container.
pub const CONTROL_DIR: &str = "/cloister/ctl";
/// The job's description in the control directory.
pub const JOB_FILE: &str = "job.json";
/// Where the job's socket directory is mounted in the container, read-only.
pub const SOCKET_DIR: &str = "/cloister/sock";
/// The job's S3 endpoint (a Unix socket) in the socket directory.
pub const SOCKET_FILE: &str = "s3.sock";
/// An inline input's bytes (a `POST /job` body) in the control directory.
pub const INPUT_FILE: &str = "input";
/// Where the runtime's own files (the binary, and for a dynamically linked one its loader and
/// libraries) are mounted, read-only.
pub const RUNTIME_DIR: &str = "/cloister/runtime";
/// Largest job file the runtime reads (the event is at most the body limit of `/job`).
pub const MAX_JOB_FILE: u64 = 64 * 1024 * 1024;

/// A plain job as the runtime in its container gets it. It holds the job's storage credential:
/// it is written only to the control directory (0600) and removed by the runtime once read.
/// Its `Debug` form hides the secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainedJob {
    /// Job name as listed by the API.
    pub job_name: String,
    /// The job's UUID (`JOB_UUID`).
    pub job_uuid: String,
    /// Service name (`OSCAR_SERVICE_NAME`).
    pub service: String,
    /// Service token (`OSCAR_SERVICE_TOKEN`).
    pub service_token: String,
    /// The script's content.
    pub script: String,
    /// The service's variables and secrets.
    pub environment: BTreeMap<String, String>,
    /// The input object, if any.
    pub input: Option<ContainedInput>,
    /// The event that started the job (`EVENT`), JSON text.
    pub event: String,
    /// When the event happened (`EVENT_TIME`).
    #[serde(with = "time::serde::rfc3339")]
    pub event_time: OffsetDateTime,
    /// Upload targets.
    pub outputs: Vec<OutputTarget>,
    /// Wall-clock limit of the script, seconds (memory and CPU are the container's limits).
    pub timeout_secs: u64,
    /// Most bytes of log kept.
    pub log_limit: usize,
    /// The job's storage endpoint and credential.
    pub storage: ContainedStorage,
    /// The image's own variables (its `PATH` above all), for the script. The engine starts the
    /// runtime without them: a variable such as `LD_PRELOAD` or `GLIBC_TUNABLES` in an image
    /// would otherwise reach the loader that starts the runtime, before the runtime can guard
    /// itself. `None`: the runtime's own environment is the image's.
    #[serde(default)]
    pub image_env: Option<Vec<(String, String)>>,
}

/// The input of a contained job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum ContainedInput {
    /// An object in storage, fetched with the job's credential.
    Object {
        /// Bucket name.
        bucket: String,
        /// Object key.
        key: String,
    },
    /// Bytes in [`INPUT_FILE`] of the control directory.
    Inline,
}

/// [`StorageAccess`] as the job file carries it.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainedStorage {
    /// `unix:///path` or `http://host:port`, as the runtime reaches it.
    pub endpoint: String,
    /// The region to sign for.
    pub region: String,
    /// The credential's access key id.
    pub access_key_id: String,
    /// The credential's secret.
    pub secret_access_key: String,
    /// When the credential stops working.
    #[serde(with = "time::serde::rfc3339")]
    pub expires: OffsetDateTime,
}

impl std::fmt::Debug for ContainedStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainedStorage")
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl ContainedStorage {
    /// `access` as a runtime reaches it at `endpoint`.
    pub fn new(access: &StorageAccess, endpoint: String) -> Self {
        Self {
            endpoint,
            region: access.region.clone(),
            access_key_id: access.access_key_id.clone(),
            secret_access_key: access.secret_access_key.clone(),
            expires: access.expires,
        }
    }

    /// The access it carries.
    pub fn into_access(self) -> StorageAccess {
        StorageAccess {
            endpoint: self.endpoint,
            region: self.region,
            access_key_id: self.access_key_id,
            secret_access_key: self.secret_access_key,
            expires: self.expires,
        }
    }
}

/// Why a job cannot be handed to a runtime in a container.
#[derive(Debug, thiserror::Error)]
pub enum ContainedError {
    /// The platform issued no storage credential for the job.
    #[error("the job has no storage credential (the platform could not issue one)")]
    NoCredential,
}

impl ContainedJob {
    /// The job file for `spec`, whose credential the runtime uses at `endpoint` (where the
    /// container sees the job's S3 endpoint). Inline input goes to [`INPUT_FILE`] beside it.
    pub fn new(spec: &JobSpec, endpoint: String) -> Result<Self, ContainedError> {
        let access = spec.storage.as_ref().ok_or(ContainedError::NoCredential)?;
        let input = match &spec.input {
            JobInput::None => None,
            JobInput::Object { bucket, key } => Some(ContainedInput::Object {
                bucket: bucket.clone(),
                key: key.clone(),
            }),
            JobInput::Inline(_) => Some(ContainedInput::Inline),
        };
        Ok(Self {
            job_name: spec.job_name.clone(),
            job_uuid: spec.job_uuid.clone(),
            service: spec.service.clone(),
            service_token: spec.service_token.clone(),
            script: spec.script.clone(),
            environment: spec.environment.clone(),
            input,
            event: spec.event.clone(),
            event_time: spec.event_time,
            outputs: spec.outputs.clone(),
            timeout_secs: spec.limits.timeout.as_secs().max(1),
            log_limit: spec.log_limit,
            storage: ContainedStorage::new(access, endpoint),
            image_env: None,
        })
    }

    /// The runtime's description of the job; `inline` is the content of [`INPUT_FILE`] when the
    /// input is inline.
    pub fn into_spec(self, inline: Option<Vec<u8>>) -> JobSpec {
        JobSpec {
            job_name: self.job_name,
            job_uuid: self.job_uuid,
            service: self.service,
            service_token: self.service_token,
            script: self.script,
            environment: self.environment,
            input: match self.input {
                Some(ContainedInput::Object { bucket, key }) => JobInput::Object { bucket, key },
                Some(ContainedInput::Inline) => JobInput::Inline(inline.unwrap_or_default()),
                None => JobInput::None,
            },
            event: self.event,
            event_time: self.event_time,
            outputs: self.outputs,
            limits: Limits {
                memory_bytes: None,
                cpu_millis: None,
                timeout: Duration::from_secs(self.timeout_secs.max(1)),
            },
            log_limit: self.log_limit,
            placement: Placement::default(),
            storage: Some(self.storage.into_access()),
        }
    }
}

/// What the runtime in the container reports on its standard output when the job has ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainedResult {
    /// Succeeded or Failed.
    pub status: Status,
    /// The script's exit code, if it exited normally.
    pub exit_code: Option<i32>,
    /// Why the job failed.
    pub reason: Option<String>,
    /// The log: (unix time in nanoseconds, line).
    pub log: Vec<(i128, String)>,
    /// Keys uploaded, as `bucket/key`.
    pub uploaded: Vec<String>,
}

impl ContainedResult {
    /// The report of an outcome.
    pub fn from_outcome(outcome: JobOutcome) -> Self {
        Self {
            status: outcome.status,
            exit_code: outcome.exit_code,
            reason: outcome.reason,
            log: outcome
                .log
                .into_iter()
                .map(|line| (line.time.unix_timestamp_nanos(), line.text))
                .collect(),
            uploaded: outcome.uploaded,
        }
    }

    /// The outcome it reports.
    pub fn into_outcome(self) -> JobOutcome {
        JobOutcome {
            status: self.status,
            exit_code: self.exit_code,
            reason: self.reason,
            log: log_lines(self.log),
            stdout: Vec::new(),
            files: Vec::new(),
            uploaded: self.uploaded,
            sealed_log: None,
        }
    }
}

/// Log lines as they travel (unix time in nanoseconds, text) back into [`LogLine`]s; a time out
/// of range becomes now.
fn log_lines(log: Vec<(i128, String)>) -> Vec<LogLine> {
    let now = OffsetDateTime::now_utc();
    log.into_iter()
        .map(|(nanos, text)| LogLine {
            time: OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(now),
            text,
        })
        .collect()
}

/// The socket in a warm container's control directory on which the platform waits for the
/// runtime to connect (`cloister-runtime --warm DIR`); the platform removes it once the runtime
/// has connected, so nothing else in the container can.
pub const CONTROL_SOCKET: &str = "control.sock";

/// Largest frame either side of a warm container's connection accepts: an invocation's
/// environment, or a report with its log; the script's stdout travels in a frame of its own,
/// bounded by what the invocation keeps.
pub const MAX_CONTROL_FRAME: u64 = 64 * 1024 * 1024;

/// One synchronous invocation for a warm container: its runtime (PID 1's child) runs
/// `script.sh` of the work directory ([`WORK_DIR`]), which the platform prepared, with the
/// image's environment and `env`, and answers a [`WarmReport`] followed by a frame of the
/// script's stdout. Before it answers, every process the script left is killed, so the
/// platform can empty the work directory for the next invocation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmInvocation {
    /// The script's variables (the contract's and the service's), paths inside the container.
    pub env: Vec<(String, String)>,
    /// Wall-clock limit of the script, milliseconds.
    pub timeout_ms: u64,
    /// Most bytes of log kept.
    pub log_limit: usize,
    /// Keep stdout on its own, up to this many bytes.
    pub keep_stdout: Option<usize>,
}

/// How a warm container's script ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmReport {
    /// The script's exit code, if it exited normally.
    pub exit_code: Option<i32>,
    /// Why it did not run to its end.
    pub failure: Option<WarmFailure>,
    /// The log: (unix time in nanoseconds, line).
    pub log: Vec<(i128, String)>,
}

/// [`crate::RunFailure`]s as a warm container reports them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum WarmFailure {
    /// The timeout passed (milliseconds).
    TimedOut(u64),
    /// Killed by a signal.
    Killed(i32),
    /// Stdout beyond what is kept (bytes).
    StdoutTooLarge(usize),
    /// Anything else, as its message.
    Other(String),
}

impl WarmReport {
    /// The report of a run.
    pub fn from_run(run: &mut crate::ScriptRun) -> Self {
        use crate::RunFailure;
        let failure = run.failure.take().map(|failure| match failure {
            RunFailure::TimedOut(after) => {
                WarmFailure::TimedOut(u64::try_from(after.as_millis()).unwrap_or(u64::MAX))
            }
            RunFailure::Killed { signal } => WarmFailure::Killed(signal),
            RunFailure::StdoutTooLarge(limit) => WarmFailure::StdoutTooLarge(limit),
            other => WarmFailure::Other(other.to_string()),
        });
        Self {
            exit_code: run.exit_code,
            failure,
            log: std::mem::take(&mut run.log)
                .into_iter()
                .map(|line| (line.time.unix_timestamp_nanos(), line.text))
                .collect(),
        }
    }

    /// The run it reports, with `stdout`.
    pub fn into_run(self, stdout: Vec<u8>) -> crate::ScriptRun {
        use crate::RunFailure;
        crate::ScriptRun {
            log: log_lines(self.log),
            stdout,
            exit_code: self.exit_code,
            failure: self.failure.map(|failure| match failure {
                WarmFailure::TimedOut(ms) => RunFailure::TimedOut(Duration::from_millis(ms)),
                WarmFailure::Killed(signal) => RunFailure::Killed { signal },
                WarmFailure::StdoutTooLarge(limit) => RunFailure::StdoutTooLarge(limit),
                WarmFailure::Other(reason) => RunFailure::Container(reason),
            }),
        }
    }
}

/// Writes one frame of a warm container's connection: its length (8 bytes, big-endian), then
/// its bytes.
pub async fn write_frame(
    stream: &mut (impl tokio::io::AsyncWrite + Unpin),
    bytes: &[u8],
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    stream.write_all(&(bytes.len() as u64).to_be_bytes()).await?;
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// Reads one frame of at most `limit` bytes; `None` when the other side closed the connection
/// before a frame began.
pub async fn read_frame(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    limit: u64,
) -> std::io::Result<Option<Vec<u8>>> {
    use tokio::io::AsyncReadExt;
    let mut length = [0u8; 8];
    match stream.read_exact(&mut length).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let length = u64::from_be_bytes(length);
    if length > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {length} bytes is larger than the {limit} accepted"),
        ));
    }
    let mut bytes = vec![0u8; usize::try_from(length).map_err(std::io::Error::other)?];
    stream.read_exact(&mut bytes).await?;
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversized_or_cut_ones_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_frame(&mut a, b"hello").await.unwrap();
        write_frame(&mut a, b"").await.unwrap();
        assert_eq!(read_frame(&mut b, 5).await.unwrap().unwrap(), b"hello");
        assert_eq!(read_frame(&mut b, 5).await.unwrap().unwrap(), b"");
        // A length beyond the limit is refused before anything is allocated for it.
        write_frame(&mut a, b"too long").await.unwrap();
        let refused = read_frame(&mut b, 4).await.unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::InvalidData);
        // A length claiming more than the peer sends before it hangs up is an error, not a frame.
        let (mut a, mut b) = tokio::io::duplex(1024);
        tokio::io::AsyncWriteExt::write_all(&mut a, &10u64.to_be_bytes())
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut a, b"abc").await.unwrap();
        drop(a);
        assert!(read_frame(&mut b, 64).await.is_err());
        // A peer that hangs up between frames ends the stream.
        let (a, mut b) = tokio::io::duplex(1024);
        drop(a);
        assert!(read_frame(&mut b, 64).await.unwrap().is_none());
    }

    #[test]
    fn a_warm_report_keeps_the_runs_failure() {
        let mut run = crate::ScriptRun {
            log: vec![LogLine {
                time: OffsetDateTime::now_utc(),
                text: "line".into(),
            }],
            stdout: b"out".to_vec(),
            exit_code: None,
            failure: Some(crate::RunFailure::TimedOut(Duration::from_secs(3))),
        };
        let report = WarmReport::from_run(&mut run);
        let json = serde_json::to_vec(&report).unwrap();
        let back: WarmReport = serde_json::from_slice(&json).unwrap();
        let run = back.into_run(b"out".to_vec());
        assert!(matches!(run.failure, Some(crate::RunFailure::TimedOut(d)) if d == Duration::from_secs(3)));
        assert_eq!(run.log[0].text, "line");
        assert_eq!(run.stdout, b"out");
        // A field the contract does not have is refused, not ignored.
        assert!(
            serde_json::from_slice::<WarmInvocation>(
                br#"{"env":[],"timeout_ms":1,"log_limit":1,"keep_stdout":null,"extra":1}"#
            )
            .is_err()
        );
    }
}
