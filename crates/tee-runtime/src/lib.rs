//! `cloister-runtime`: the first program of a confidential job, running inside its TEE.
//!
//! It proves to the CAS what it is (evidence over this runtime, launched for one CAS, session
//! and service: see [`cloister_cas_client::protocol::InitData`]), receives the service's
//! configuration sealed to a key only it holds — the program to run and its arguments, the
//! environment, injected files, keys, recipients, allowed input paths and output targets, volume
//! records — and then does everything that touches plaintext itself: decrypting the input,
//! unpacking encrypted volumes, running the program the session names (the service's script,
//! injected by the session, never a file the host wrote), encrypting every output and the
//! program's own output to the recipients the CAS named, and committing volume versions to the
//! CAS. Plaintext lives only in a checked, memory-backed folder and is removed at the end; what
//! it reports to the platform (its standard output and `result.json`) carries status, never
//! content.
//!
//! The executor's side of the contract is [`cloister_runtime::tee`].

mod job;
mod volumes;

pub use job::run_job_dir;
pub use volumes::{volume_binding, volume_file_name};

/// Identifies this runtime in the simulation measurement. Under simulation the runtime's bytes
/// cannot be protected anyway (the host signs the evidence); with hardware TEEs the runtime is
/// covered by the enclave or VM measurement itself.
pub const RUNTIME_ID: &str = concat!("cloister-runtime/", env!("CARGO_PKG_VERSION"));

/// Where a service's script is injected by its session, and so the word of the session's
/// `command` that names it.
pub const SCRIPT_PATH: &str = "/cloister/script.sh";

/// Under SGX (Gramine) the init-data is read from here, a trusted file of the manifest (so part
/// of MRENCLAVE), never from the host's `job.json`: an enclave has no launch configuration
/// register for the CAS to check.
pub const SGX_INIT_DATA: &str = "/cloister/init-data.json";

/// The simulation measurement of this runtime: the same for every service, since what a
/// service runs comes from its session.
pub fn sim_measurement() -> [u8; 32] {
    cloister_attestation::sim_measurement(RUNTIME_ID.as_bytes())
}

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
        ]
        .contains(&name)
    }
}
