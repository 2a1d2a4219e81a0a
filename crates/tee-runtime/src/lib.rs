//! `cloister-runtime`: the first program of a confidential job, running inside its TEE.
//!
//! It proves to the CAS what it is (evidence over this runtime, launched for one CAS, session
//! and service: see [`cloister_cas_client::protocol::InitData`]), receives the service's
//! configuration sealed to a key only it holds — the program to run and its arguments, the
//! environment, injected files, keys, recipients, allowed input paths and output targets, volume
//! records — and then does everything that touches plaintext itself: decrypting the input,
//! unpacking encrypted volumes, running the program the session names (the service's script,
//! injected by the session, never a file the host wrote), encrypting every output and the
//! program's own output to the recipients the CAS named, committing volume versions to the
//! CAS, and storing the outputs over S3 while they are encrypted, with the job's own credential
//! ([`s3::S3Io::put_sealed`]). Plaintext lives only in a checked, memory-backed folder and is removed at the end; what
//! it reports to the platform (its standard output and `result.json`) carries status, never
//! content.
//!
//! The executor's side of the contract is [`cloister_runtime::tee`].
//!
//! The same binary is also the first program of a *plain* job's container
//! ([`run_container_job`], contract [`cloister_runtime::contained`]): there it stages the
//! input, runs the script and uploads the outputs over the network with the job's scoped S3
//! credential ([`s3::S3Io`]), as OSCAR's supervisor does in a pod; and of a *warm* container
//! ([`run_warm`]), where it runs a service's synchronous invocations one after another. In a
//! container it is PID 1 and reaps the script's orphans ([`init`]).

mod approver;
mod cas_wait;
mod contained;
mod failure;
pub mod init;
mod job;
pub mod s3;
mod volumes;
mod warm;

pub use contained::run_container_job;
pub use job::run_job_dir;
pub use volumes::{volume_binding, volume_file_name};
pub use warm::run_warm;

// The runtime's contract with the sessions that configure it: shared with the session builder
// (`cloister-platform`), which must not link the TEE side.
pub use cloister_runtime::tee::{RUNTIME_ID, SCRIPT_PATH, reserved};

/// Under SGX (Gramine) the init-data is read from here, a trusted file of the manifest (so part
/// of MRENCLAVE), never from the host's `job.json`: an enclave has no launch configuration
/// register for the CAS to check.
pub const SGX_INIT_DATA: &str = "/cloister/init-data.json";

/// The simulation measurement of this runtime: the same for every service, since what a
/// service runs comes from its session.
pub fn sim_measurement() -> [u8; 32] {
    cloister_attestation::sim_measurement(RUNTIME_ID.as_bytes())
}
