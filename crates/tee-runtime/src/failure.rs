//! Why a confidential job failed. The message becomes the job's reason in `result.json` and
//! its last status line, so it names what failed and never carries data content (no plaintext,
//! no key, no released value).

use std::path::PathBuf;

use cloister_cas_client::client::ClientError;
use cloister_cas_client::pin::TlsError;
use cloister_crypt::CryptError;
use cloister_runtime::RunFailure;

use crate::cas_wait::Unreachable;
use crate::reserved;

/// A job's failure.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JobFailure {
    /// The plaintext root or the job's folder in it failed its checks.
    #[error("{0}")]
    Plaintext(String),
    /// A file of the job could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// A file of the job is larger than it may be.
    #[error("{} is larger than {limit} bytes", .path.display())]
    TooLarge { path: PathBuf, limit: u64 },
    /// `job.json` does not describe a job the runtime accepts.
    #[error("malformed job.json: {0}")]
    MalformedJob(#[from] JobFileProblem),
    /// The SGX init-data file (a trusted file of the enclave) is not init-data.
    #[error("malformed {file}: {0}", file = crate::SGX_INIT_DATA)]
    MalformedInitData(serde_json::Error),
    /// The job names no simulation platform key although it runs under simulation.
    #[error("the job names no simulation platform key")]
    NoSimPlatformKey,
    /// The simulation platform key file does not hold a key.
    #[error("{} is not a 32-byte platform key", .0.display())]
    BadSimPlatformKey(PathBuf),
    /// The simulated TEE could not be launched for the init-data.
    #[error("{0}")]
    SimulatedTee(TlsError),
    /// The CAS client could not be made (a bad pin or URL).
    #[error("CAS client: {0}")]
    CasClient(ClientError),
    /// The CAS did not release the configuration.
    #[error("attestation refused: {0}")]
    Attestation(ClientError),
    /// The CAS could not be reached before the job's time ran out.
    #[error(transparent)]
    CasUnreachable(Unreachable),
    /// A reserved variable the CAS released is unusable.
    #[error(transparent)]
    Released(#[from] ReleasedProblem),
    /// The plaintext folder's layout could not be made.
    #[error("cannot prepare the plaintext folder: {0}")]
    PlainLayout(std::io::Error),
    /// An injected file names a path outside the files folder.
    #[error("the CAS released an unsafe file path {0:?}")]
    UnsafeFilePath(String),
    /// An injected file could not be written.
    #[error("cannot inject {path}: {source}")]
    Inject { path: String, source: std::io::Error },
    /// The input is not one the session lets the service read.
    #[error("input {bucket}/{key} is not under an input path of the session")]
    InputOutsidePaths { bucket: String, key: String },
    /// The job has an input the session gives no key for.
    #[error("the session releases no input key (CLOISTER_INPUT_KEY) but the job has an input")]
    NoInputKey,
    /// The input did not decrypt (tampered, moved, wrong key, unauthenticated sender).
    #[error("input {bucket}/{key} rejected: {source}")]
    InputRejected {
        bucket: String,
        key: String,
        source: InputProblem,
    },
    /// The session lists volumes without the key to open them.
    #[error("the session declares volumes but releases no volume key")]
    NoVolumeKey,
    /// A volume's folder could not be made.
    #[error("cannot prepare volume {name:?}: {source}")]
    VolumeFolder { name: String, source: std::io::Error },
    /// A volume could not be restored or sealed.
    #[error("{0}")]
    Volume(String),
    /// A volume's new version was not recorded by the CAS.
    #[error("volume {name:?} not committed: {source}")]
    VolumeCommit { name: String, source: ClientError },
    /// A volume's new version could not be committed: the CAS stayed unreachable.
    #[error("volume {name:?} not committed: {source}")]
    VolumeCommitUnreachable { name: String, source: Unreachable },
    /// A counter the session has the runtime increment per run was not incremented (at its
    /// max, or not the session's): the program does not run.
    #[error("counter {name:?} not incremented: {source}")]
    CounterIncrement { name: String, source: ClientError },
    /// A counter could not be incremented: the CAS stayed unreachable.
    #[error("counter {name:?} not incremented: {source}")]
    CounterIncrementUnreachable { name: String, source: Unreachable },
    /// The approver key could not be bound to this attestation: the program does not run.
    #[error("approver key not bound: {0}")]
    ApproverBind(ClientError),
    /// The approver key could not be bound: the CAS stayed unreachable.
    #[error("approver key not bound: {0}")]
    ApproverBindUnreachable(Unreachable),
    /// The runtime could not close its memory to the program (which would then reach the job's
    /// storage credential and keys).
    #[error("cannot make the runtime non-dumpable: {0}")]
    NotDumpable(std::io::Error),
    /// The job's storage credential file is unusable.
    #[error("{0}")]
    Storage(String),
    /// The job has outputs to store but the executor gave it no storage credential.
    #[error("the job has outputs to store but no storage credential (the platform gave it none)")]
    NoStorageAccess,
    /// The approver socket could not be opened in the plaintext folder.
    #[error("approver socket: {0}")]
    ApproverSocket(std::io::Error),
    /// The session gives the service nothing to run.
    #[error("the session names no command for this service: nothing to run")]
    NoCommand,
    /// The program could not run to its end.
    #[error(transparent)]
    Program(RunFailure),
    /// The program ended with another exit code than 0 (`None`: it did not exit normally).
    #[error("the program exited with code {}", exit_code_text(*.0))]
    ProgramExit(Option<i32>),
    /// A folder of the job directory could not be made.
    #[error("cannot create {}: {source}", .path.display())]
    CreateDir { path: PathBuf, source: std::io::Error },
    /// The program's log could not be sealed.
    #[error("cannot encrypt the program's log: {0}")]
    SealLog(FileCrypto),
    /// The output folder could not be listed.
    #[error("cannot read the output directory: {0}")]
    OutputDir(std::io::Error),
    /// The program made outputs the session lets no one read.
    #[error("the session names no output recipient (CLOISTER_OUTPUT_RECIPIENTS): outputs cannot leave")]
    NoOutputRecipient,
    /// An output could not be read or sealed.
    #[error("cannot encrypt output {relative}: {source}")]
    SealOutput {
        relative: String,
        source: crate::s3::PutSealedError,
    },
    /// An output was not stored.
    #[error("cannot upload output {bucket}/{key}: {source}")]
    UploadOutput {
        bucket: String,
        key: String,
        source: crate::s3::S3Error,
    },
}

/// An exit code as logs show it: the number, or `none` for a process that did not exit.
pub(crate) fn exit_code_text(code: Option<i32>) -> String {
    code.map_or_else(|| "none".to_owned(), |c| c.to_string())
}

/// What is wrong with `job.json`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JobFileProblem {
    /// Not the JSON of a [`cloister_runtime::tee::TeeJob`].
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// The job's UUID is not one.
    #[error("job_uuid is not a UUID")]
    NotUuid,
    /// A name (`job_name`, `service`) has characters or a length it may not have.
    #[error("invalid {0}")]
    InvalidName(&'static str),
    /// A cgroup path is not a `cgroup.procs` file under `/sys/fs/cgroup`.
    #[error("{} is not a cgroup.procs file", .0.display())]
    NotCgroupProcs(PathBuf),
    /// The event is not JSON, or too large.
    #[error("the event is not a JSON document of at most 64 KiB")]
    Event,
    /// The CAS pin, session or service do not make init-data.
    #[error("{0}")]
    InitData(TlsError),
}

/// A reserved variable of the released configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReleasedProblem {
    /// A key is not 32 bytes of hex.
    #[error("{0} must be 64 hex digits")]
    KeyNotHex(&'static str),
    /// A key, or a recipient, is not a valid one.
    #[error("{variable}: {source}")]
    Key {
        variable: &'static str,
        source: CryptError,
    },
    /// A list of input paths or output targets is not one.
    #[error("{variable}: {source}")]
    Targets {
        variable: &'static str,
        source: serde_json::Error,
    },
    /// A volume name is not one.
    #[error("{variable}: invalid volume name {0:?}", variable = reserved::VOLUMES)]
    VolumeName(String),
    /// A counter name is not one.
    #[error("{variable}: invalid counter name {0:?}", variable = reserved::COUNTERS)]
    CounterName(String),
    /// The approver switch is neither absent nor `1`.
    #[error("{variable} must be \"1\" when present", variable = reserved::APPROVER)]
    Approver,
}

/// Why the input did not decrypt into the plaintext folder.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InputProblem {
    /// Its ciphertext could not be opened.
    #[error("cannot open the ciphertext: {0}")]
    Open(std::io::Error),
    /// Its plaintext file could not be made.
    #[error("cannot write the plaintext: {0}")]
    Write(std::io::Error),
    /// It is not an encrypted object at all: most likely a plaintext upload.
    #[error(
        "it is not encrypted: this service takes inputs encrypted with `cloister put --encrypt <recipient>`"
    )]
    NotEncrypted,
    /// It did not decrypt, or no required sender authenticated it.
    #[error(transparent)]
    Crypt(CryptError),
}

/// Encrypting a file or the log failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FileCrypto {
    /// Opening, creating or writing a file.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The encryption itself.
    #[error(transparent)]
    Crypt(#[from] CryptError),
}

#[cfg(test)]
mod tests {
    use std::io::{Error, ErrorKind};
    use std::time::Duration;

    use super::*;

    /// The reasons are what jobs' status and logs show (and tests elsewhere look for): each
    /// reads exactly as the runtime has always written it.
    #[test]
    fn reasons_read_as_they_always_did() {
        let io = || Error::new(ErrorKind::NotFound, "gone");
        let cases: Vec<(JobFailure, &str)> = vec![
            (
                JobFileProblem::NotUuid.into(),
                "malformed job.json: job_uuid is not a UUID",
            ),
            (
                JobFileProblem::InvalidName("job_name").into(),
                "malformed job.json: invalid job_name",
            ),
            (
                JobFileProblem::NotCgroupProcs("/tmp/procs".into()).into(),
                "malformed job.json: /tmp/procs is not a cgroup.procs file",
            ),
            (
                JobFileProblem::Event.into(),
                "malformed job.json: the event is not a JSON document of at most 64 KiB",
            ),
            (
                JobFailure::Read {
                    path: "/j/job.json".into(),
                    source: io(),
                },
                "cannot read /j/job.json: gone",
            ),
            (
                JobFailure::TooLarge {
                    path: "/k".into(),
                    limit: 32,
                },
                "/k is larger than 32 bytes",
            ),
            (
                JobFailure::NoSimPlatformKey,
                "the job names no simulation platform key",
            ),
            (
                JobFailure::BadSimPlatformKey("/k".into()),
                "/k is not a 32-byte platform key",
            ),
            (
                JobFailure::Attestation(ClientError::Local("no evidence".into())),
                "attestation refused: no evidence",
            ),
            (
                JobFailure::CasClient(ClientError::Local("bad pin".into())),
                "CAS client: bad pin",
            ),
            (
                ReleasedProblem::KeyNotHex(reserved::INPUT_KEY).into(),
                "CLOISTER_INPUT_KEY must be 64 hex digits",
            ),
            (
                ReleasedProblem::VolumeName("../x".into()).into(),
                "CLOISTER_VOLUMES: invalid volume name \"../x\"",
            ),
            (
                JobFailure::PlainLayout(io()),
                "cannot prepare the plaintext folder: gone",
            ),
            (
                JobFailure::UnsafeFilePath("/../x".into()),
                "the CAS released an unsafe file path \"/../x\"",
            ),
            (
                JobFailure::Inject {
                    path: "/etc/app".into(),
                    source: io(),
                },
                "cannot inject /etc/app: gone",
            ),
            (
                JobFailure::InputOutsidePaths {
                    bucket: "b".into(),
                    key: "k/x".into(),
                },
                "input b/k/x is not under an input path of the session",
            ),
            (
                JobFailure::NoInputKey,
                "the session releases no input key (CLOISTER_INPUT_KEY) but the job has an input",
            ),
            (
                JobFailure::InputRejected {
                    bucket: "b".into(),
                    key: "k".into(),
                    source: InputProblem::Open(io()),
                },
                "input b/k rejected: cannot open the ciphertext: gone",
            ),
            (
                JobFailure::InputRejected {
                    bucket: "b".into(),
                    key: "k".into(),
                    source: InputProblem::Crypt(CryptError::HeaderMac),
                },
                "input b/k rejected: header authentication failed: header tampered or bucket/key binding differs",
            ),
            (
                JobFailure::InputRejected {
                    bucket: "b".into(),
                    key: "k".into(),
                    source: InputProblem::NotEncrypted,
                },
                "input b/k rejected: it is not encrypted: this service takes inputs encrypted with \
                 `cloister put --encrypt <recipient>`",
            ),
            (
                JobFailure::NoVolumeKey,
                "the session declares volumes but releases no volume key",
            ),
            (
                JobFailure::VolumeFolder {
                    name: "state".into(),
                    source: io(),
                },
                "cannot prepare volume \"state\": gone",
            ),
            (
                JobFailure::VolumeCommit {
                    name: "state".into(),
                    source: ClientError::Transport("reset".into()),
                },
                "volume \"state\" not committed: cannot reach the CAS: reset",
            ),
            (
                JobFailure::NoCommand,
                "the session names no command for this service: nothing to run",
            ),
            (
                JobFailure::Program(RunFailure::TimedOut(Duration::from_secs(5))),
                "timed out after 5 s",
            ),
            (
                JobFailure::Program(RunFailure::Killed { signal: 9 }),
                "script killed by signal 9 (memory limit or killed)",
            ),
            (JobFailure::ProgramExit(Some(3)), "the program exited with code 3"),
            (JobFailure::ProgramExit(None), "the program exited with code none"),
            (
                JobFailure::CreateDir {
                    path: "/j/sealed".into(),
                    source: io(),
                },
                "cannot create /j/sealed: gone",
            ),
            (
                JobFailure::SealLog(FileCrypto::Io(io())),
                "cannot encrypt the program's log: gone",
            ),
            (
                JobFailure::OutputDir(io()),
                "cannot read the output directory: gone",
            ),
            (
                JobFailure::NoOutputRecipient,
                "the session names no output recipient (CLOISTER_OUTPUT_RECIPIENTS): outputs cannot leave",
            ),
            (
                JobFailure::SealOutput {
                    relative: "a/b.txt".into(),
                    source: crate::s3::PutSealedError::Crypt(CryptError::Truncated),
                },
                "cannot encrypt output a/b.txt: truncated: the last chunk is missing",
            ),
            (
                JobFailure::UploadOutput {
                    bucket: "b".into(),
                    key: "out/x".into(),
                    source: crate::s3::S3Error::Refused {
                        status: 507,
                        code: "InsufficientStorage".into(),
                        message: "The server's disk is full".into(),
                    },
                },
                "cannot upload output b/out/x: the storage endpoint refused it: 507 InsufficientStorage \
                 (The server's disk is full)",
            ),
        ];
        for (failure, reason) in cases {
            assert_eq!(failure.to_string(), reason);
        }
        let json = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        let expected = format!("malformed /cloister/init-data.json: {json}");
        assert_eq!(JobFailure::MalformedInitData(json).to_string(), expected);
    }
}
