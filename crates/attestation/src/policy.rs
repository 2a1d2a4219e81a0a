//! Acceptance policy over verified evidence.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::evidence::Tee;
use crate::verify::VerifiedEvidence;

/// A weakness a policy may accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tolerance {
    /// The TEE runs in debug mode: the host can read its memory.
    DebugMode,
    /// The platform's TCB is out of date (`OutOfDate*`, `TDRelaunchAdvised*`).
    OutdatedTcb,
    /// Software hardening against known issues is needed (`*SWHardeningNeeded`).
    SwHardeningNeeded,
    /// Platform configuration is needed (`*ConfigurationNeeded`).
    ConfigurationNeeded,
    /// Simulation evidence: no hardware protection at all.
    Simulation,
}

impl Tolerance {
    /// All tolerances, in their canonical order.
    pub const ALL: [Tolerance; 5] = [
        Tolerance::DebugMode,
        Tolerance::OutdatedTcb,
        Tolerance::SwHardeningNeeded,
        Tolerance::ConfigurationNeeded,
        Tolerance::Simulation,
    ];

    /// The kebab-case name used on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Tolerance::DebugMode => "debug-mode",
            Tolerance::OutdatedTcb => "outdated-tcb",
            Tolerance::SwHardeningNeeded => "sw-hardening-needed",
            Tolerance::ConfigurationNeeded => "configuration-needed",
            Tolerance::Simulation => "simulation",
        }
    }

    /// Parses a comma-separated list such as `outdated-tcb,sw-hardening-needed` (as given to
    /// `--tolerate`). Empty items are ignored.
    pub fn parse_list(list: &str) -> Result<BTreeSet<Tolerance>, Error> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Tolerance::from_str)
            .collect()
    }

    /// The tolerances needed to accept a TCB status; `None` for statuses that are never
    /// acceptable (`Revoked`, and any status this crate does not know).
    pub fn required_for_tcb_status(status: &str) -> Option<BTreeSet<Tolerance>> {
        use Tolerance::*;
        let needed: &[Tolerance] = match status {
            "UpToDate" => &[],
            // AMD publishes no TCB status; see SnpVerifier.
            "NotEvaluated" => &[],
            "SWHardeningNeeded" => &[SwHardeningNeeded],
            "ConfigurationNeeded" => &[ConfigurationNeeded],
            "ConfigurationAndSWHardeningNeeded" => &[ConfigurationNeeded, SwHardeningNeeded],
            "OutOfDate" | "TDRelaunchAdvised" => &[OutdatedTcb],
            "OutOfDateConfigurationNeeded" | "TDRelaunchAdvisedConfigurationNeeded" => {
                &[OutdatedTcb, ConfigurationNeeded]
            }
            "Simulated" => &[Simulation],
            _ => return None,
        };
        Some(needed.iter().copied().collect())
    }
}

impl fmt::Display for Tolerance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tolerance {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let s = s.trim();
        Tolerance::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let known: Vec<&str> = Tolerance::ALL.iter().map(|t| t.as_str()).collect();
                Error::InvalidPolicy(format!("unknown tolerance '{s}' (known: {})", known.join(", ")))
            })
    }
}

/// What a relying party accepts beyond authenticity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Weaknesses that are accepted.
    #[serde(default)]
    pub tolerate: BTreeSet<Tolerance>,
    /// Advisory IDs that are accepted; `*` accepts every advisory. When the TCB status is
    /// `SWHardeningNeeded` or `*ConfigurationNeeded`, every reported advisory must be listed here:
    /// those statuses mean the platform is safe only if each advisory is mitigated by the
    /// workload or the configuration. For statuses that need only `outdated-tcb`, tolerating
    /// `outdated-tcb` accepts the advisories that make the TCB out of date.
    #[serde(default)]
    pub ignore_advisories: Vec<String>,
    /// Expected primary measurement (hex, case-insensitive, optional `0x`): SGX MRENCLAVE,
    /// TDX MRTD, SNP MEASUREMENT or simulation measurement.
    #[serde(default)]
    pub expected_measurement: Option<String>,
    /// Expected report data (hex, 64 bytes), e.g. from [`crate::report_data_for`].
    #[serde(default)]
    pub expected_report_data: Option<String>,
}

/// The decision of [`Policy::evaluate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyOutcome {
    /// True when nothing was refused.
    pub ok: bool,
    /// One human-readable reason per refusal.
    pub reasons: Vec<String>,
}

fn normalize_hex(s: &str) -> Result<String, String> {
    let t = s.trim();
    let t = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")).unwrap_or(t);
    let lower = t.to_ascii_lowercase();
    match hex::decode(&lower) {
        Ok(bytes) if !bytes.is_empty() => Ok(lower),
        Ok(_) => Err("empty".into()),
        Err(e) => Err(e.to_string()),
    }
}

impl Policy {
    /// Checks that the expected values are valid hex, so that a typo is reported up front
    /// instead of as a refusal.
    pub fn validate(&self) -> Result<(), Error> {
        if let Some(m) = &self.expected_measurement {
            normalize_hex(m)
                .map_err(|e| Error::InvalidPolicy(format!("expected measurement '{m}' is not hex: {e}")))?;
        }
        if let Some(r) = &self.expected_report_data {
            let n = normalize_hex(r)
                .map_err(|e| Error::InvalidPolicy(format!("expected report data '{r}' is not hex: {e}")))?;
            if n.len() != 128 {
                return Err(Error::InvalidPolicy(format!(
                    "expected report data must be 64 bytes, got {}",
                    n.len() / 2
                )));
            }
        }
        Ok(())
    }

    /// Decides whether `evidence` is acceptable and lists every reason it is not.
    pub fn evaluate(&self, evidence: &VerifiedEvidence) -> PolicyOutcome {
        let mut reasons = Vec::new();
        let s = &evidence.summary;

        let status = evidence.tcb_status.as_str();
        match Tolerance::required_for_tcb_status(status) {
            None => reasons.push(format!("TCB status {status} is never acceptable")),
            Some(needed) => {
                let missing: Vec<&str> = needed.difference(&self.tolerate).map(|t| t.as_str()).collect();
                if !missing.is_empty() {
                    reasons.push(format!(
                        "TCB status {status} not tolerated (tolerate {})",
                        missing.join(", ")
                    ));
                }
            }
        }

        // SWHardeningNeeded / ConfigurationNeeded mean "safe only if each listed advisory is
        // mitigated by the workload or the platform configuration", so each one must be
        // acknowledged. For statuses that need only outdated-tcb, the advisories are the known
        // reasons the TCB is out of date, and tolerating outdated-tcb is that acknowledgement.
        let needs_ack = Tolerance::required_for_tcb_status(status).is_some_and(|needed| {
            needed.contains(&Tolerance::SwHardeningNeeded) || needed.contains(&Tolerance::ConfigurationNeeded)
        });
        if needs_ack {
            let ignore_all = self.ignore_advisories.iter().any(|a| a.trim() == "*");
            for advisory in &evidence.advisories {
                let ignored = ignore_all
                    || self
                        .ignore_advisories
                        .iter()
                        .any(|a| a.trim().eq_ignore_ascii_case(advisory));
                if !ignored {
                    reasons.push(format!("advisory {advisory} not ignored (ignore_advisories)"));
                }
            }
        }

        if s.debug && !self.tolerate.contains(&Tolerance::DebugMode) {
            let what = match s.tee {
                Tee::Sgx => "enclave",
                Tee::Tdx => "trust domain",
                Tee::Snp => "SEV-SNP guest",
                Tee::Sim => "simulation",
            };
            reasons.push(format!("debug {what} not tolerated (tolerate debug-mode)"));
        }

        if let Some(expected) = &self.expected_measurement {
            match normalize_hex(expected) {
                Ok(e) if e == s.measurement => {}
                Ok(e) => reasons.push(format!(
                    "measurement mismatch: expected {e}, got {}",
                    s.measurement
                )),
                Err(err) => reasons.push(format!("expected measurement '{expected}' is not hex: {err}")),
            }
        }

        if let Some(expected) = &self.expected_report_data {
            match normalize_hex(expected) {
                Ok(e) if e == s.report_data => {}
                Ok(e) => reasons.push(format!(
                    "report data mismatch: expected {e}, got {}",
                    s.report_data
                )),
                Err(err) => reasons.push(format!("expected report data '{expected}' is not hex: {err}")),
            }
        }

        PolicyOutcome {
            ok: reasons.is_empty(),
            reasons,
        }
    }
}
