//! The simulation TEE: Ed25519-signed evidence from a per-host software key.
//!
//! It exists so that the platform can be developed and tested without TEE hardware. The byte
//! layout is documented in the crate docs.

use std::path::Path;

use ed25519_dalek::{Signer, SigningKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Error;
use crate::evidence::{EvidenceSummary, Tee, TeeDetails, hex};

/// Magic at the start of simulation evidence.
pub(crate) const SIM_MAGIC: [u8; 8] = *b"CLSIMATT";
const SIM_VERSION: u16 = 2;
const FLAG_DEBUG: u16 = 0x0001;
const KNOWN_FLAGS: u16 = FLAG_DEBUG;
/// Domain separation: a signature over simulation evidence can never be mistaken for a
/// signature over anything else made with the same key.
const SIGNATURE_CONTEXT: &[u8] = b"cloister/sim-evidence/v2\0";
const MEASUREMENT_CONTEXT: &[u8] = b"cloister/sim-measurement/v2\0";

const OFF_VERSION: usize = 8;
const OFF_FLAGS: usize = 10;
const OFF_MEASUREMENT: usize = 12;
const OFF_CONFIG_ID: usize = 44;
const OFF_REPORT_DATA: usize = 76;
const OFF_KEY: usize = 140;
const OFF_SIGNATURE: usize = 172;
/// Length in bytes of version-2 simulation evidence.
pub const SIM_EVIDENCE_LEN: usize = 236;

/// The measurement of a simulated workload:
/// `SHA-256("cloister/sim-measurement/v2\0" ‖ u64le(len(runtime)) ‖ runtime)`, where `runtime`
/// identifies the program that runs first in the simulated TEE.
///
/// Like an enclave or VM measurement, it covers that program only: what the program then runs
/// (a service's script) comes from the CAS, never from the host, so one measurement serves
/// every service.
pub fn sim_measurement(runtime: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(MEASUREMENT_CONTEXT);
    h.update((runtime.len() as u64).to_le_bytes());
    h.update(runtime);
    h.finalize().into()
}

/// Parsed fields of simulation evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimDetails {
    /// Ed25519 public key of the simulated platform (hex).
    pub platform_key: String,
    /// Raw flags word.
    pub flags: u16,
    /// The launch configuration register (hex, 32 bytes): what the host launched the workload
    /// for, the simulated counterpart of TDX's MRCONFIGID and SEV-SNP's HOST_DATA.
    pub config_id: String,
}

/// A host's simulated TEE: an Ed25519 platform key that signs evidence.
pub struct SimPlatform {
    key: SigningKey,
    debug: bool,
}

impl std::fmt::Debug for SimPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimPlatform")
            .field("public_key", &hex(&self.public_key()))
            .field("debug", &self.debug)
            .finish_non_exhaustive()
    }
}

impl SimPlatform {
    /// A platform with a fresh random key.
    pub fn generate() -> Self {
        Self::from_seed(rand::random())
    }

    /// A platform whose key is derived from a 32-byte secret seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        SimPlatform {
            key: SigningKey::from_bytes(&seed),
            debug: false,
        }
    }

    /// Loads the seed from `path`, or creates it (mode 0600 on Unix) with a fresh random seed, so
    /// that a host keeps one platform key across restarts.
    pub fn load_or_generate(path: &Path) -> Result<Self, Error> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let seed: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    Error::malformed(
                        "simulation platform key file",
                        format!("{} bytes, expected 32", bytes.len()),
                    )
                })?;
                Ok(Self::from_seed(seed))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let seed: [u8; 32] = rand::random();
                write_secret(path, &seed)?;
                Ok(Self::from_seed(seed))
            }
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// The secret seed, for persisting the key elsewhere. Treat it like a private key.
    pub fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The platform public key a verifier registers.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Marks evidence produced from now on as coming from a debug-mode TEE, so that policies
    /// can be tested against debug evidence.
    pub fn with_debug(mut self, debug: bool) -> Self {
        self.debug = debug;
        self
    }

    /// Signed evidence for `measurement`, the launch configuration `config_id` and `report_data`.
    pub fn produce_evidence(
        &self,
        measurement: &[u8; 32],
        config_id: &[u8; 32],
        report_data: &[u8; 64],
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(SIM_EVIDENCE_LEN);
        out.extend_from_slice(&SIM_MAGIC);
        out.extend_from_slice(&SIM_VERSION.to_le_bytes());
        let flags = if self.debug { FLAG_DEBUG } else { 0 };
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(measurement);
        out.extend_from_slice(config_id);
        out.extend_from_slice(report_data);
        out.extend_from_slice(&self.public_key());
        let signature = self.key.sign(&signed_message(&out));
        out.extend_from_slice(&signature.to_bytes());
        out
    }
}

#[cfg(unix)]
fn write_secret(path: &Path, seed: &[u8; 32]) -> Result<(), Error> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    f.write_all(seed).map_err(|e| Error::io(path, e))
}

#[cfg(not(unix))]
fn write_secret(path: &Path, seed: &[u8; 32]) -> Result<(), Error> {
    std::fs::write(path, seed).map_err(|e| Error::io(path, e))
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SIGNATURE_CONTEXT.len() + body.len());
    msg.extend_from_slice(SIGNATURE_CONTEXT);
    msg.extend_from_slice(body);
    msg
}

struct SimEvidence<'a> {
    flags: u16,
    measurement: &'a [u8],
    config_id: &'a [u8],
    report_data: &'a [u8],
    key: [u8; 32],
    // Only the verifier looks at the signature; parsing still requires all of it.
    #[cfg_attr(not(feature = "verify"), allow(dead_code))]
    signature: [u8; 64],
    #[cfg_attr(not(feature = "verify"), allow(dead_code))]
    signed: &'a [u8],
}

fn field<const N: usize>(b: &[u8], at: usize) -> Result<[u8; N], Error> {
    b.get(at..at.saturating_add(N))
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| Error::malformed("simulation evidence", "truncated"))
}

fn parse(b: &[u8]) -> Result<SimEvidence<'_>, Error> {
    if !b.starts_with(&SIM_MAGIC) {
        return Err(Error::malformed("simulation evidence", "bad magic"));
    }
    if b.len() != SIM_EVIDENCE_LEN {
        return Err(Error::malformed(
            "simulation evidence",
            format!("{} bytes, expected {SIM_EVIDENCE_LEN}", b.len()),
        ));
    }
    let version = u16::from_le_bytes(field(b, OFF_VERSION)?);
    if version != SIM_VERSION {
        return Err(Error::malformed(
            "simulation evidence",
            format!("unsupported version {version}"),
        ));
    }
    let flags = u16::from_le_bytes(field(b, OFF_FLAGS)?);
    if flags & !KNOWN_FLAGS != 0 {
        return Err(Error::malformed(
            "simulation evidence",
            format!("unknown flags {flags:#06x}"),
        ));
    }
    let slice = |from: usize, to: usize| {
        b.get(from..to)
            .ok_or_else(|| Error::malformed("simulation evidence", "truncated"))
    };
    Ok(SimEvidence {
        flags,
        measurement: slice(OFF_MEASUREMENT, OFF_CONFIG_ID)?,
        config_id: slice(OFF_CONFIG_ID, OFF_REPORT_DATA)?,
        report_data: slice(OFF_REPORT_DATA, OFF_KEY)?,
        key: field(b, OFF_KEY)?,
        signature: field(b, OFF_SIGNATURE)?,
        signed: slice(0, OFF_SIGNATURE)?,
    })
}

fn summarize(e: &SimEvidence<'_>) -> EvidenceSummary {
    EvidenceSummary {
        tee: Tee::Sim,
        version: u32::from(SIM_VERSION),
        measurement: hex(e.measurement),
        report_data: hex(e.report_data),
        debug: e.flags & FLAG_DEBUG != 0,
        details: TeeDetails::Sim(SimDetails {
            platform_key: hex(&e.key),
            flags: e.flags,
            config_id: hex(e.config_id),
        }),
    }
}

pub(crate) fn inspect(b: &[u8]) -> Result<EvidenceSummary, Error> {
    Ok(summarize(&parse(b)?))
}

#[cfg(feature = "verify")]
pub use verifier::SimVerifier;

/// The verifying side, with the `verify` feature.
#[cfg(feature = "verify")]
mod verifier {
    use std::collections::BTreeSet;

    use ed25519_dalek::{Signature, VerifyingKey};
    use time::OffsetDateTime;

    use super::{parse, signed_message, summarize};
    use crate::Error;
    use crate::evidence::hex;
    use crate::verify::{Endorsements, EvidenceVerifier, VerifiedEvidence};

    /// TCB status of simulation evidence.
    const SIM_TCB_STATUS: &str = "Simulated";

    /// Verifies simulation evidence against the set of registered platform public keys.
    #[derive(Debug, Clone, Default)]
    pub struct SimVerifier {
        keys: BTreeSet<[u8; 32]>,
    }

    impl SimVerifier {
        /// A verifier that accepts evidence signed by any of `keys` (Ed25519 public keys).
        pub fn new(keys: impl IntoIterator<Item = [u8; 32]>) -> Self {
            SimVerifier {
                keys: keys.into_iter().collect(),
            }
        }

        /// Registers one more platform key.
        pub fn add_key(&mut self, key: [u8; 32]) {
            self.keys.insert(key);
        }
    }

    impl EvidenceVerifier for SimVerifier {
        fn verify(
            &self,
            evidence: &[u8],
            _: &Endorsements,
            _at: OffsetDateTime,
        ) -> Result<VerifiedEvidence, Error> {
            let e = parse(evidence)?;
            if !self.keys.contains(&e.key) {
                return Err(Error::UnknownSimKey(hex(&e.key)));
            }
            let key = VerifyingKey::from_bytes(&e.key)
                .map_err(|err| Error::verification(format!("invalid simulation platform key: {err}")))?;
            key.verify_strict(&signed_message(e.signed), &Signature::from_bytes(&e.signature))
                .map_err(|_| Error::verification("simulation evidence signature is invalid"))?;
            Ok(VerifiedEvidence {
                summary: summarize(&e),
                tcb_status: SIM_TCB_STATUS.into(),
                advisories: Vec::new(),
                collateral_window: None,
            })
        }
    }
}
