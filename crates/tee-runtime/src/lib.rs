//! `cloister runtime`: the first program of a confidential job, running inside its TEE.
//!
//! It proves to the CAS what it is (evidence over the runtime, the script it is about to run
//! and the image reference), receives the service's configuration sealed to a key only it
//! holds, and then does everything that touches plaintext itself: decrypting the input,
//! unpacking encrypted volumes, running the **unmodified** script with the released
//! environment and files, encrypting every output to the recipients the CAS named, and
//! committing volume versions to the CAS. Plaintext lives only in a memory-backed directory
//! outside the platform's data directory and is overwritten and removed at the end. What it
//! reports to the platform (its standard output and `result.json`) carries status, never
//! content: the script's own output is withheld.
//!
//! The executor's side of the contract is [`cloister_runtime::tee`].

mod job;
mod volumes;

pub use job::run_job_dir;
pub use volumes::{volume_binding, volume_file_name};

/// Identifies this runtime in the simulation measurement. Under simulation the runtime's
/// bytes cannot be protected anyway (the host signs the evidence); with hardware TEEs the
/// runtime is covered by the enclave or VM measurement itself.
pub const RUNTIME_ID: &str = concat!("cloister-runtime/", env!("CARGO_PKG_VERSION"));

/// The released environment variables the runtime consumes itself; the script never sees them.
pub mod reserved {
    /// The service's input identity: the X25519 secret (hex) that opens its input objects.
    pub const INPUT_KEY: &str = "CLOISTER_INPUT_KEY";
    /// The data owners' recipients (`cloister1x25519:…`, separated by spaces or commas) every
    /// output is encrypted to.
    pub const OUTPUT_RECIPIENTS: &str = "CLOISTER_OUTPUT_RECIPIENTS";
    /// The key (hex, 32 bytes) volumes are encrypted under.
    pub const VOLUME_KEY: &str = "CLOISTER_VOLUME_KEY";
    /// The service's volume names, comma separated.
    pub const VOLUMES: &str = "CLOISTER_VOLUMES";

    /// Whether `name` is reserved.
    pub fn is_reserved(name: &str) -> bool {
        [INPUT_KEY, OUTPUT_RECIPIENTS, VOLUME_KEY, VOLUMES].contains(&name)
    }
}

/// The simulation measurement of a confidential service: what `cloister apply` puts in the
/// session and what the runtime's evidence carries.
pub fn sim_measurement(script: &[u8], image: &str) -> [u8; 32] {
    cloister_attestation::sim_measurement(RUNTIME_ID.as_bytes(), script, image)
}
