//! Evidence collection inside the workload.
//!
//! Every source takes a configurable root directory so that tests can run against a fake tree
//! that plays the kernel's (or Gramine's) part.

use std::fs;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use crate::Error;
use crate::evidence::{Tee, hex, inspect};
use crate::sim::SimPlatform;
use crate::snp::{self, SigningKey, cert_table};

/// Produces evidence that binds the given 64 bytes of report data.
pub trait EvidenceSource: Send + Sync {
    /// Returns binary evidence whose report data is `report_data`.
    fn collect(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, Error>;

    /// Like [`EvidenceSource::collect`], and also returns the endorsement the platform hands
    /// out with the evidence (SEV-SNP: the VCEK or VLEK from the host's certificate table).
    /// Sources without any return only the evidence, which is what this default does.
    fn collect_with_endorsements(&self, report_data: &[u8; 64]) -> Result<Collected, Error> {
        Ok(Collected {
            evidence: self.collect(report_data)?,
            vcek: None,
        })
    }
}

/// Evidence and the endorsement delivered with it, from
/// [`EvidenceSource::collect_with_endorsements`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collected {
    /// The evidence, as [`EvidenceSource::collect`] returns it.
    pub evidence: Vec<u8>,
    /// SEV-SNP: the DER certificate of the key that signed the report, per its SIGNING_KEY (a
    /// VCEK, or a VLEK on clouds that provision one), when the host's certificate table has it.
    /// It comes from the host, so it proves nothing by itself: the verifier chains it to AMD's
    /// roots. Send it as the attestation request's `vcek`.
    pub vcek: Option<Vec<u8>>,
}

/// Checks that freshly collected evidence is of the expected TEE and carries the requested
/// report data; a mismatch means a stale or foreign report was read.
fn check_collected(evidence: &[u8], tee: &[Tee], report_data: &[u8; 64]) -> Result<(), Error> {
    let summary = inspect(evidence)
        .map_err(|e| Error::Collection(format!("collected evidence does not parse: {e}")))?;
    if !tee.contains(&summary.tee) {
        return Err(Error::Collection(format!(
            "collected evidence is {} evidence",
            summary.tee
        )));
    }
    if summary.report_data != hex(report_data) {
        return Err(Error::Collection(format!(
            "collected evidence carries report data {} instead of the requested {}",
            summary.report_data,
            hex(report_data)
        )));
    }
    Ok(())
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    fs::read(path).map_err(|e| Error::io(path, e))
}

fn read_text(path: &Path) -> Result<String, Error> {
    Ok(String::from_utf8_lossy(&read(path)?).trim().to_string())
}

/// Writes to an attribute file that must already exist (the kernel or Gramine creates them).
fn write_existing(path: &Path, data: &[u8]) -> Result<(), Error> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    f.write_all(data).map_err(|e| Error::io(path, e))
}

/// Simulation evidence from a [`SimPlatform`] for a workload with a fixed measurement, launched
/// with a fixed configuration register (the simulated MRCONFIGID / HOST_DATA).
#[derive(Debug)]
pub struct SimSource {
    platform: SimPlatform,
    measurement: [u8; 32],
    config_id: [u8; 32],
}

impl SimSource {
    /// Evidence for `measurement` (see [`crate::sim_measurement`]) and `config_id`, signed by
    /// `platform`.
    pub fn new(platform: SimPlatform, measurement: [u8; 32], config_id: [u8; 32]) -> Self {
        SimSource {
            platform,
            measurement,
            config_id,
        }
    }
}

impl EvidenceSource for SimSource {
    fn collect(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, Error> {
        Ok(self
            .platform
            .produce_evidence(&self.measurement, &self.config_id, report_data))
    }
}

/// SGX DCAP quotes from Gramine's pseudo-filesystem: write the report data to
/// `<root>/user_report_data`, read `<root>/quote`.
#[derive(Debug, Clone)]
pub struct GramineSource {
    root: PathBuf,
}

impl Default for GramineSource {
    fn default() -> Self {
        Self::new()
    }
}

impl GramineSource {
    /// Gramine's `/dev/attestation`.
    pub fn new() -> Self {
        Self::with_root("/dev/attestation")
    }

    /// A different directory (for tests or a non-default mount).
    pub fn with_root(root: impl Into<PathBuf>) -> Self {
        GramineSource { root: root.into() }
    }
}

impl EvidenceSource for GramineSource {
    fn collect(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, Error> {
        let kind = self.root.join("attestation_type");
        if kind.exists() {
            let kind = read_text(&kind)?;
            if kind != "dcap" {
                return Err(Error::Collection(format!(
                    "Gramine attestation type is '{kind}', DCAP quotes need 'dcap'"
                )));
            }
        }
        write_existing(&self.root.join("user_report_data"), report_data)?;
        let quote = read(&self.root.join("quote"))?;
        check_collected(&quote, &[Tee::Sgx], report_data)?;
        Ok(quote)
    }
}

/// The TEE behind a configfs-tsm report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsmProvider {
    /// Intel TDX (`tdx_guest`): outblob is a TD quote.
    Tdx,
    /// AMD SEV-SNP (`sev_guest`): outblob is the attestation report, auxblob the certificates.
    SevSnp,
}

impl TsmProvider {
    /// The name the kernel writes to the `provider` attribute.
    pub fn kernel_name(self) -> &'static str {
        match self {
            TsmProvider::Tdx => "tdx_guest",
            TsmProvider::SevSnp => "sev_guest",
        }
    }

    fn tee(self) -> Tee {
        match self {
            TsmProvider::Tdx => Tee::Tdx,
            TsmProvider::SevSnp => Tee::Snp,
        }
    }
}

/// A report read from configfs-tsm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TsmReport {
    /// The evidence (TD quote or SNP report).
    pub outblob: Vec<u8>,
    /// Auxiliary data (SNP: the certificate table with the VCEK, when the host provides it).
    pub auxblob: Option<Vec<u8>>,
    /// The `generation` value the report belongs to.
    pub generation: u64,
}

/// TDX and SEV-SNP evidence through Linux configfs-tsm
/// (`<root>/sys/kernel/config/tsm/report/<entry>`).
///
/// A fresh entry directory is created (the kernel populates it), the report data is written to
/// `inblob`, `outblob` is read between two reads of `generation` (a change means another writer
/// raced us), and the directory is removed again. With [`TsmSource::with_entry_name`] an
/// already existing entry is used and kept, which is how tests provide a fake entry.
#[derive(Debug, Clone)]
pub struct TsmSource {
    root: PathBuf,
    provider: TsmProvider,
    entry: Option<String>,
}

impl TsmSource {
    /// configfs-tsm under `/`.
    pub fn new(provider: TsmProvider) -> Self {
        TsmSource {
            root: PathBuf::from("/"),
            provider,
            entry: None,
        }
    }

    /// Uses `root` instead of `/` (so the tree is `<root>/sys/kernel/config/tsm/report`).
    pub fn with_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.root = root.into();
        self
    }

    /// Uses the entry `name`, accepting one that already exists (and then leaving it in place).
    pub fn with_entry_name(mut self, name: impl Into<String>) -> Self {
        self.entry = Some(name.into());
        self
    }

    /// Collects a report including SNP's auxiliary blob.
    pub fn collect_report(&self, report_data: &[u8; 64]) -> Result<TsmReport, Error> {
        let base = self.root.join("sys/kernel/config/tsm/report");
        if !base.is_dir() {
            return Err(Error::Collection(format!(
                "configfs-tsm is not available at {}",
                base.display()
            )));
        }
        let (name, explicit) = match &self.entry {
            Some(name) => {
                if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                    return Err(Error::InvalidArgument(format!(
                        "invalid configfs-tsm entry name '{name}'"
                    )));
                }
                (name.clone(), true)
            }
            None => (
                format!("cloister-{}-{:016x}", std::process::id(), rand::random::<u64>()),
                false,
            ),
        };
        let dir = base.join(&name);
        let created = match fs::create_dir(&dir) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && explicit => false,
            Err(e) => return Err(Error::io(&dir, e)),
        };
        let result = self.collect_in(&dir, report_data);
        if created {
            // Best effort: configfs frees the entry on rmdir; a failure only leaks one entry.
            let _ = fs::remove_dir(&dir);
        }
        result
    }

    /// Collects a report and, for SEV-SNP, takes the certificate of the key that signed it
    /// (VCEK or VLEK, per the report's SIGNING_KEY) out of the auxblob's certificate table.
    ///
    /// A table that does not parse is an error (see the checks of the table parser: bounds,
    /// overlaps, terminator, duplicates, DER); a missing auxblob, or a table without that
    /// certificate, gives `vcek: None`.
    fn collect_snp(&self, report_data: &[u8; 64]) -> Result<Collected, Error> {
        let report = self.collect_report(report_data)?;
        let vcek = match (&report.auxblob, snp::report_signing_key(&report.outblob)?) {
            (Some(aux), Some(kind)) => {
                let table = cert_table::parse(aux)?;
                match kind {
                    SigningKey::Vcek => table.vcek,
                    SigningKey::Vlek => table.vlek,
                }
            }
            _ => None,
        };
        Ok(Collected {
            evidence: report.outblob,
            vcek,
        })
    }

    fn collect_in(&self, dir: &Path, report_data: &[u8; 64]) -> Result<TsmReport, Error> {
        let provider = read_text(&dir.join("provider"))?;
        if provider != self.provider.kernel_name() {
            return Err(Error::Collection(format!(
                "configfs-tsm provider is '{provider}', expected '{}'",
                self.provider.kernel_name()
            )));
        }
        write_existing(&dir.join("inblob"), report_data)?;
        let generation_path = dir.join("generation");
        let read_generation = || -> Result<u64, Error> {
            let text = read_text(&generation_path)?;
            text.parse::<u64>()
                .map_err(|_| Error::Collection(format!("configfs-tsm generation '{text}' is not a number")))
        };
        let before = read_generation()?;
        let outblob = read(&dir.join("outblob"))?;
        let auxblob = match self.provider {
            TsmProvider::SevSnp => read_auxblob(&dir.join("auxblob"))?,
            TsmProvider::Tdx => None,
        };
        let after = read_generation()?;
        if before != after {
            return Err(Error::Collection(format!(
                "configfs-tsm generation changed from {before} to {after} while reading: another writer raced this report"
            )));
        }
        check_collected(&outblob, &[self.provider.tee()], report_data)?;
        Ok(TsmReport {
            outblob,
            auxblob,
            generation: after,
        })
    }
}

/// Reads the auxblob, bounded: the host fills it, and a real one is a few KiB.
fn read_auxblob(path: &Path) -> Result<Option<Vec<u8>>, Error> {
    let file = match fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let limit = u64::try_from(cert_table::MAX_TABLE_LEN).unwrap_or(u64::MAX);
    let mut aux = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut aux)
        .map_err(|e| Error::io(path, e))?;
    if aux.len() > cert_table::MAX_TABLE_LEN {
        return Err(Error::Collection(format!(
            "configfs-tsm auxblob is larger than {} bytes",
            cert_table::MAX_TABLE_LEN
        )));
    }
    Ok((!aux.is_empty()).then_some(aux))
}

impl EvidenceSource for TsmSource {
    fn collect(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, Error> {
        Ok(self.collect_report(report_data)?.outblob)
    }

    fn collect_with_endorsements(&self, report_data: &[u8; 64]) -> Result<Collected, Error> {
        match self.provider {
            TsmProvider::SevSnp => self.collect_snp(report_data),
            TsmProvider::Tdx => Ok(Collected {
                evidence: self.collect(report_data)?,
                vcek: None,
            }),
        }
    }
}
