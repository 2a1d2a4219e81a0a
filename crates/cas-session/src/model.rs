//! The session data model, as written in YAML and stored as JSON.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use cloister_attestation::{Tee, Tolerance};
use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::access::{AccessPolicy, ClientKey};

/// The only session language version this crate speaks.
pub const SESSION_VERSION: &str = "0.3";

/// A CAS session: which code (by TEE measurement) receives which configuration and secrets.
///
/// Obtain one with [`crate::parse_session`], which also validates and normalizes it; a
/// session loaded from storage should be checked with [`Session::validate`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Session {
    /// `a/b/c`: segments of `[a-z0-9][a-z0-9-_.]*`, at most 128 characters in all.
    pub name: String,
    /// Language version; only `"0.3"` (the default) is accepted.
    #[serde(default = "default_version")]
    pub version: String,
    /// Hash ([`Session::hash`]) of the session this one replaces; absent when creating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predecessor: Option<String>,
    /// Who may read and update the session.
    #[serde(default)]
    pub access_policy: AccessPolicy,
    /// Attestation requirements common to all services.
    #[serde(default)]
    pub security: Security,
    /// The services (programs) that may obtain configuration.
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
    /// The secrets, generated, explicit or imported.
    #[serde(default)]
    pub secrets: Vec<SecretSpec>,
    /// Files injected into services.
    #[serde(default)]
    pub files: Vec<FileSpec>,
    /// Monotonic counters that attested services increment (see [`CounterSpec`]). Left out of
    /// the canonical form when empty, so sessions without counters keep their hashes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub counters: Vec<CounterSpec>,
}

/// A monotonic counter of a session, kept by the CAS: an attested workload of one of
/// `services` increments it (`POST /v1/counters/increment` with the grant its attestation
/// released) and gets the new value; readers of the session read it. The value belongs to the
/// session's name and the counter's name, so it survives session updates; it never decreases,
/// and `max` caps it. A confidential job's runtime (`cloister-runtime`) increments the counters
/// its service's environment names in `CLOISTER_COUNTERS` (`"name,…"`) once per run, before
/// the program starts, and gives the program the new values (`CLOISTER_COUNTER_<NAME>`); a
/// counter at its `max` refuses the run.
///
/// ```yaml
/// counters:
/// - name: predictions
///   services: [inference]
///   max: 100000
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CounterSpec {
    /// `[a-z0-9][a-z0-9-_.]*`, at most 64 characters.
    pub name: String,
    /// The services that may increment it; empty (the default) means every service.
    #[serde(default)]
    pub services: Vec<String>,
    /// The highest value increments may reach (at least 1); unbounded when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u64>,
}

impl CounterSpec {
    /// Whether `service` may increment this counter.
    pub fn admits(&self, service: &str) -> bool {
        self.services.is_empty() || self.services.iter().any(|s| s == service)
    }
}

fn default_version() -> String {
    SESSION_VERSION.to_string()
}

/// Security settings of a session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Security {
    /// How evidence is judged.
    #[serde(default)]
    pub attestation: AttestationPolicy,
}

/// How the evidence of every service of the session is judged, beyond its measurements.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationPolicy {
    /// Whether evidence is required at all.
    #[serde(default)]
    pub mode: AttestationMode,
    /// Weaknesses accepted: `debug-mode`, `outdated-tcb`, `sw-hardening-needed`,
    /// `configuration-needed`, `simulation`.
    #[serde(default)]
    pub tolerate: BTreeSet<Tolerance>,
    /// Advisory IDs (such as `INTEL-SA-00615`) accepted; `*` accepts all.
    #[serde(default)]
    pub ignore_advisories: Vec<String>,
}

/// Whether services must present evidence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttestationMode {
    /// Every service must present authentic evidence that matches one of its alternatives
    /// and the session's tolerances (see [`crate::match_evidence`]).
    #[default]
    Hardware,
    /// **Development only.** The server may release configuration without any evidence.
    /// Validation accepts it only together with `tolerate: [simulation]`, so that a session
    /// can never drop hardware protection by a one-word change; evidence that *is* presented
    /// is still judged as in `hardware` mode.
    None,
}

/// One service: a program that receives configuration after attesting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Service name: `[a-z0-9][a-z0-9-_.]*`, at most 64 characters.
    pub name: String,
    /// Command line. In YAML either a list or one string split like a POSIX shell would
    /// (quotes and backslashes; no expansion). Empty: the image's default command.
    #[serde(default, deserialize_with = "deserialize_command")]
    pub command: Vec<String>,
    /// Environment variables (names `[A-Za-z_][A-Za-z0-9_]*`).
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// Working directory (absolute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pwd: Option<String>,
    /// Accepted evidence: alternatives ORed, fields within one alternative ANDed.
    #[serde(default)]
    pub attestation: Vec<AttestationAlternative>,
    /// How many times the service may obtain its configuration, over the life of the session
    /// name (licence limits): each attestation counts one run, in the transaction that
    /// releases it, and attestations beyond the limit are refused. Runs are counted whether or
    /// not a limit is set. Left out of the canonical form when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_runs: Option<u64>,
}

/// One acceptable identity of a service. Which fields apply depends on `tee`:
///
/// | tee | required | optional |
/// |-----|----------|----------|
/// | `sgx` | `mrenclave`, or `mrsigner` + `isvprodid` | the others of `mrenclave`, `mrsigner`, `isvprodid`, `isvsvn_min` |
/// | `tdx` | `mrtd` and `rtmr0` … `rtmr3` | |
/// | `snp` | `measurement` (96 hex) | `min_tcb`, `allow_migration_agent`, `allow_smt`, `policy`, `vmpl`, `host_data` |
/// | `sim` | `measurement` (64 hex) | |
///
/// TDX: MRTD measures only the TD's firmware (TDVF); the kernel, its command line and the
/// image are measured into the RTMRs. An alternative with MRTD alone would accept any kernel
/// and image the host boots on that firmware, so all four RTMRs are required.
///
/// SEV-SNP, each field naming a check on the verified report:
///
/// * `min_tcb`: every component of REPORTED_TCB (the TCB the VCEK/VLEK is certified for) must
///   be at least the floor's. SPL numbers are per processor generation, so a session that
///   accepts several generations needs one alternative per generation. Defaults to all zero.
/// * `allow_migration_agent` (default `false`): whether a guest POLICY with MIGRATE_MA (bit
///   18) is accepted; a migration agent can export the guest's memory.
/// * `allow_smt` (default `true`): whether a guest POLICY that allows SMT (bit 16) is accepted;
///   `false` demands a guest that the firmware refuses to run with SMT enabled.
/// * `policy`: the whole guest POLICY, pinned (16 hex digits, optionally `0x`-prefixed). It is
///   checked in addition to the rules above. The DEBUG bit (19) stays governed by the
///   session's `debug-mode` tolerance.
/// * `vmpl`: the VMPL (0–3) the report was requested from.
/// * `host_data`: HOST_DATA (64 hex), which the host supplied at launch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationAlternative {
    /// The TEE family: `sgx`, `tdx`, `snp` or `sim`.
    pub tee: Tee,
    /// SGX MRENCLAVE (64 hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mrenclave: Option<String>,
    /// SGX MRSIGNER (64 hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mrsigner: Option<String>,
    /// SGX ISVPRODID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isvprodid: Option<u16>,
    /// Minimum SGX ISVSVN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isvsvn_min: Option<u16>,
    /// TDX MRTD (96 hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mrtd: Option<String>,
    /// TDX RTMR0 (96 hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtmr0: Option<String>,
    /// TDX RTMR1 (96 hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtmr1: Option<String>,
    /// TDX RTMR2 (96 hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtmr2: Option<String>,
    /// TDX RTMR3 (96 hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtmr3: Option<String>,
    /// SEV-SNP MEASUREMENT (96 hex) or simulation measurement (64 hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measurement: Option<String>,
    /// SEV-SNP: lowest acceptable REPORTED_TCB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_tcb: Option<SnpTcbFloor>,
    /// SEV-SNP: accept a guest policy that allows a migration agent (default `false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_migration_agent: Option<bool>,
    /// SEV-SNP: accept a guest policy that allows SMT (default `true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_smt: Option<bool>,
    /// SEV-SNP: the exact guest POLICY (16 hex digits; `0x` accepted on input).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// SEV-SNP: the VMPL the report was requested from (0–3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmpl: Option<u32>,
    /// SEV-SNP: HOST_DATA (64 hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_data: Option<String>,
}

/// The lowest SEV-SNP TCB an alternative accepts, per component of REPORTED_TCB. Components
/// left out are 0 (no floor).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpTcbFloor {
    /// PSP bootloader SPL.
    #[serde(default)]
    pub bootloader: u8,
    /// PSP OS (TEE) SPL.
    #[serde(default)]
    pub tee: u8,
    /// SNP firmware SPL.
    #[serde(default)]
    pub snp: u8,
    /// CPU microcode SPL.
    #[serde(default)]
    pub microcode: u8,
    /// FMC SPL, which Turin and later report. A floor above 0 refuses earlier generations,
    /// whose reports have no FMC component.
    #[serde(default)]
    pub fmc: u8,
}

/// The kind of a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecretKind {
    /// Random printable characters (`A-Za-z0-9`), or an explicit ASCII value.
    Ascii,
    /// Random bytes, or an explicit value given as base64.
    Binary,
    /// A key pair.
    PrivateKey,
    /// A key pair and a leaf certificate (TLS server and client use).
    X509,
    /// A key pair and a CA certificate that can issue the session's other certificates.
    X509Ca,
}

impl SecretKind {
    /// The kebab-case name used in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            SecretKind::Ascii => "ascii",
            SecretKind::Binary => "binary",
            SecretKind::PrivateKey => "private-key",
            SecretKind::X509 => "x509",
            SecretKind::X509Ca => "x509-ca",
        }
    }

    pub(crate) fn is_key(self) -> bool {
        matches!(
            self,
            SecretKind::PrivateKey | SecretKind::X509 | SecretKind::X509Ca
        )
    }

    pub(crate) fn is_cert(self) -> bool {
        matches!(self, SecretKind::X509 | SecretKind::X509Ca)
    }
}

impl fmt::Display for SecretKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key algorithm for `private-key`, `x509` and `x509-ca` secrets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAlgorithm {
    /// Ed25519.
    Ed25519,
    /// ECDSA on P-256 with SHA-256 (the default: accepted by every TLS stack).
    #[default]
    P256,
    /// ECDSA on P-384 with SHA-384.
    P384,
    /// RSA 2048 bits, PKCS#1 v1.5 signatures with SHA-256.
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    /// RSA 3072 bits, PKCS#1 v1.5 signatures with SHA-256. `rsa` in YAML means this.
    #[serde(rename = "rsa-3072", alias = "rsa")]
    Rsa3072,
}

impl KeyAlgorithm {
    /// The kebab-case name used in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::Ed25519 => "ed25519",
            KeyAlgorithm::P256 => "p256",
            KeyAlgorithm::P384 => "p384",
            KeyAlgorithm::Rsa2048 => "rsa-2048",
            KeyAlgorithm::Rsa3072 => "rsa-3072",
        }
    }
}

/// One secret of a session.
///
/// Which fields apply depends on `kind` and on whether the secret is imported; validation
/// rejects fields that do not apply rather than ignoring them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSpec {
    /// Name, used in placeholders: `[A-Za-z0-9_][A-Za-z0-9_.-]*`, at most 128 characters.
    pub name: String,
    /// What the secret is.
    pub kind: SecretKind,
    /// `ascii`/`binary`: length in characters/bytes (default 32; with an explicit value,
    /// its length).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u32>,
    /// `ascii`/`binary`: explicit value (`binary` as base64) instead of a generated one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `private-key`/`x509`/`x509-ca`: key algorithm (default `p256`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<KeyAlgorithm>,
    /// `x509`/`x509-ca`: name of the `x509-ca` secret of this session that signs the
    /// certificate; self-signed when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// `x509`/`x509-ca`: subject common name (default: the secret's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_name: Option<String>,
    /// `x509`/`x509-ca`: subject alternative names, DNS names or IP addresses.
    #[serde(default)]
    pub san: Vec<String>,
    /// `x509`/`x509-ca`: validity (default `365d` for `x509`, `3650d` for `x509-ca`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_for: Option<Lifetime>,
    /// Who may import this secret: sessions named together with their owner's key, or
    /// `"*"` for every session.
    #[serde(default)]
    pub export: Vec<ExportTarget>,
    /// Take the value from another session's exported secret instead of generating it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import: Option<ImportSpec>,
    /// Whether readers of the session may read the public part (public key, certificate).
    #[serde(default)]
    pub export_public: bool,
}

impl fmt::Debug for SecretSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretSpec")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("size", &self.size)
            .field("value", &self.value.as_ref().map(|_| "<redacted>"))
            .field("algorithm", &self.algorithm)
            .field("issuer", &self.issuer)
            .field("common_name", &self.common_name)
            .field("san", &self.san)
            .field("valid_for", &self.valid_for)
            .field("export", &self.export)
            .field("import", &self.import)
            .field("export_public", &self.export_public)
            .finish()
    }
}

/// One entry of a secret's `export` list: who may import the secret.
///
/// Session names are first come, first served, so a name alone does not identify the party an
/// exporter means to share with: anyone could create a session of that name. An export
/// therefore names the importing session **and the key that owns it** (the key that created
/// it, as the CAS records it), and may pin the importing session's **hashes**, the versions
/// the exporter has read and approved:
///
/// ```yaml
/// export:
/// - {session: team/consumer, owner: "ed25519:3b6a…(64 hex)"}
/// - session: hospital/inference
///   owner: "ed25519:9c41…(64 hex)"
///   hashes: ["5d0f…(64 hex)"]   # only this version of hospital/inference
/// - "*"            # every session, whoever owns it
/// ```
///
/// With `hashes`, the importer gets the secret only while its current version is one of them,
/// at its write and at every attestation. A session's hash covers its services' measurements,
/// its secrets and its `predecessor`, so **every update of the importer needs the exporter to
/// pin the new hash first**: the exporter approves what code gets its secret, whoever governs
/// the importer. To move the importer from version A to B, the exporter lists both (`[A, B]`),
/// the importer's update to B is written, and the exporter drops A. The hash of a version to
/// come is computed offline (`cloister cas session verify FILE`). Without `hashes`, any
/// version of the named session and owner imports.
///
/// A bare session name is an error that says what to write. Keys are written in their
/// canonical form ([`ClientKey`]), hashes in lower-case hex, sorted; entries are ordered `"*"`
/// first, then by session name, then by owner key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExportTarget {
    /// `"*"`: every session, whoever owns it.
    Anyone,
    /// The session called `session`, while the key that owns it is `owner` (and, when
    /// `hashes` is not empty, while its hash is one of them).
    Session {
        /// The importing session's name.
        session: String,
        /// The importing session's owner (its creator's key).
        owner: ClientKey,
        /// The importing session's versions ([`Session::hash`]) that may import; empty: any.
        hashes: Vec<String>,
    },
}

/// The importing side of an import, as the CAS knows it: the session's name, the key that
/// owns it and the hash of the version that imports.
#[derive(Debug, Clone, Copy)]
pub struct Importer<'a> {
    /// The importing session's name.
    pub session: &'a str,
    /// Its owner (creator's key).
    pub owner: &'a ClientKey,
    /// The hash of the importing version ([`Session::hash`]).
    pub hash: &'a str,
}

impl ExportTarget {
    /// Whether this entry lets `importer` import the secret.
    pub fn admits(&self, importer: &Importer<'_>) -> bool {
        match self {
            ExportTarget::Anyone => true,
            ExportTarget::Session {
                session,
                owner,
                hashes,
            } => {
                session == importer.session
                    && owner == importer.owner
                    && (hashes.is_empty() || hashes.iter().any(|h| h.eq_ignore_ascii_case(importer.hash)))
            }
        }
    }
}

/// The map form of an [`ExportTarget::Session`], as written in YAML.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NamedExport {
    session: String,
    owner: ClientKey,
    // Left out when empty, so that exports without pins keep their canonical bytes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    hashes: Vec<String>,
}

impl Serialize for ExportTarget {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ExportTarget::Anyone => s.serialize_str("*"),
            ExportTarget::Session {
                session,
                owner,
                hashes,
            } => NamedExport {
                session: session.clone(),
                owner: owner.clone(),
                hashes: hashes.clone(),
            }
            .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ExportTarget {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TargetVisitor;

        impl<'de> Visitor<'de> for TargetVisitor {
            type Value = ExportTarget;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"*\" or {session: NAME, owner: KEY, hashes: [HASH…] (optional)}")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ExportTarget, E> {
                if v.trim() == "*" {
                    return Ok(ExportTarget::Anyone);
                }
                Err(E::custom(format!(
                    "'{v}' names a session but not its owner, and session names are first come, \
                     first served: write {{session: {v}, owner: <the key that owns {v}, \
                     ed25519:<hex> or p256:<hex>>}}, or \"*\" to export to every session"
                )))
            }

            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<ExportTarget, A::Error> {
                let named = NamedExport::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(ExportTarget::Session {
                    session: named.session,
                    owner: named.owner,
                    hashes: named.hashes,
                })
            }
        }

        d.deserialize_any(TargetVisitor)
    }
}

/// Where an imported secret comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportSpec {
    /// The exporting session's name.
    pub session: String,
    /// The secret's name in the exporting session.
    pub secret: String,
}

/// A file injected into services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Absolute path, without `.` or `..` segments.
    pub path: String,
    /// Content; placeholders are substituted.
    #[serde(default)]
    pub content: String,
    /// Octal mode (default `"0600"`: files usually carry secrets).
    #[serde(default = "default_permission")]
    pub permission: String,
    /// Services that receive the file; empty (the default) means every service.
    #[serde(default)]
    pub services: Vec<String>,
}

fn default_permission() -> String {
    "0600".to_string()
}

/// A duration written like `365d`, `12h`, `90m`, `2w` or `1d12h` (units `w`, `d`, `h`, `m`,
/// `s`), between one minute and 100 years. It is written back in its largest exact unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lifetime {
    seconds: u64,
}

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
pub(crate) const DAY: u64 = 24 * HOUR;
const WEEK: u64 = 7 * DAY;
const MAX_LIFETIME: u64 = 36_525 * DAY;

impl Lifetime {
    /// A lifetime of this many whole days.
    pub const fn days(days: u64) -> Self {
        Lifetime { seconds: days * DAY }
    }

    /// The lifetime in seconds.
    pub fn seconds(self) -> u64 {
        self.seconds
    }
}

/// Parses `365d`, `12h`, `1d12h`… (units `w`, `d`, `h`, `m`, `s`) into seconds, unbounded.
pub(crate) fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            'w' => WEEK,
            'd' => DAY,
            'h' => HOUR,
            'm' => MINUTE,
            's' => 1,
            _ => return Err(format!("invalid duration '{s}' (use e.g. 365d, 12h, 1d12h)")),
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("invalid duration '{s}' (a number must precede each unit)"))?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("duration '{s}' is too long"))?;
    }
    if !digits.is_empty() {
        return Err(format!("invalid duration '{s}' (missing unit: w, d, h, m or s)"));
    }
    Ok(total)
}

/// Writes `seconds` in its largest exact unit among days, hours, minutes and seconds (`0s`
/// for zero).
pub(crate) fn format_duration(seconds: u64, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    if seconds == 0 {
        return f.write_str("0s");
    }
    // Weeks are not used on output so that `365d` stays `365d`.
    for (unit, suffix) in [(DAY, "d"), (HOUR, "h"), (MINUTE, "m")] {
        if seconds.is_multiple_of(unit) {
            return write!(f, "{}{suffix}", seconds / unit);
        }
    }
    write!(f, "{seconds}s")
}

impl FromStr for Lifetime {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let total = parse_duration(s)?;
        if !(MINUTE..=MAX_LIFETIME).contains(&total) {
            return Err(format!("duration '{}' must be between 1m and 36525d", s.trim()));
        }
        Ok(Lifetime { seconds: total })
    }
}

impl fmt::Display for Lifetime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        format_duration(self.seconds, f)
    }
}

impl Serialize for Lifetime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lifetime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Lifetime::from_str(&s).map_err(de::Error::custom)
    }
}

/// Upper bound on the number of command-line words, to keep hostile input cheap.
const MAX_COMMAND_WORDS: usize = 4096;

fn deserialize_command<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct CommandVisitor;

    impl<'de> Visitor<'de> for CommandVisitor {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a command line string or a list of strings")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<String>, E> {
            let words = shlex::split(v)
                .ok_or_else(|| E::custom("unbalanced quotes or trailing backslash in command"))?;
            if words.len() > MAX_COMMAND_WORDS {
                return Err(E::custom("command has too many words"));
            }
            Ok(words)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut out = Vec::new();
            while let Some(word) = seq.next_element::<String>()? {
                if out.len() >= MAX_COMMAND_WORDS {
                    return Err(de::Error::custom("command has too many words"));
                }
                out.push(word);
            }
            Ok(out)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Vec<String>, E> {
            Ok(Vec::new())
        }

        fn visit_none<E: de::Error>(self) -> Result<Vec<String>, E> {
            Ok(Vec::new())
        }
    }

    d.deserialize_any(CommandVisitor)
}
