//! OSCAR's Functions Definition Language: service definitions, as YAML files and as the JSON
//! bodies of the REST API (the same types serve both).
//!
//! Parsing never silently drops anything: fields this version does not know are kept (so a
//! service round-trips unchanged) and reported as warnings; invalid values are errors that
//! name the field and the reason.

use std::collections::BTreeMap;
use std::path::Path;

use cloister_attestation::Tee;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// Errors of FDL parsing and validation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FdlError {
    /// The document is not well-formed YAML/JSON or does not have the expected shape.
    #[error("malformed service definition: {0}")]
    Syntax(String),
    /// A field has an invalid value.
    #[error("invalid field `{field}`: {reason}")]
    Invalid {
        /// Path of the field, e.g. `functions.oscar[0].c1.memory`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl FdlError {
    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    fn prefixed(self, prefix: &str) -> Self {
        match self {
            Self::Invalid { field, reason } => Self::Invalid {
                field: format!("{prefix}.{field}"),
                reason,
            },
            other => other,
        }
    }
}

/// Where a service reads or writes objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[schema(as = StorageIO)]
pub struct StorageIo {
    /// `minio` or `minio.<id>` (the embedded store is `minio.default`).
    #[serde(default = "default_provider")]
    pub storage_provider: String,
    /// `bucket` or `bucket/folder/...`.
    #[serde(default)]
    pub path: String,
    /// Only objects/files whose name starts with one of these (all when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefix: Vec<String>,
    /// Only objects/files whose name ends with one of these (all when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suffix: Vec<String>,
    /// Names of fields this version does not know: warned about, then dropped (their values
    /// are not kept: a misspelled `secrets` must not end up where secrets are listed).
    #[serde(flatten, default, skip_serializing, deserialize_with = "unknown_field_names")]
    #[schema(ignore)]
    pub unknown: Vec<String>,
}

fn unknown_field_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let fields = BTreeMap::<String, serde::de::IgnoredAny>::deserialize(d)?;
    Ok(fields.into_keys().collect())
}

fn default_provider() -> String {
    "minio.default".to_owned()
}

impl StorageIo {
    /// The bucket and folder of `path` (folder without leading/trailing `/`).
    pub fn bucket_and_folder(&self) -> (&str, &str) {
        let path = self.path.trim_matches('/');
        match path.split_once('/') {
            Some((bucket, folder)) => (bucket, folder.trim_matches('/')),
            None => (path, ""),
        }
    }

    /// This path as a runtime target (outputs go there; confidential sessions list inputs the
    /// same way).
    pub fn target(&self) -> cloister_runtime::OutputTarget {
        let (bucket, folder) = self.bucket_and_folder();
        cloister_runtime::OutputTarget {
            bucket: bucket.to_owned(),
            folder: folder.to_owned(),
            prefix: self.prefix.clone(),
            suffix: self.suffix.clone(),
        }
    }

    /// Whether an object key in this path's bucket is under its folder and passes the filters.
    pub fn matches(&self, bucket: &str, key: &str) -> bool {
        let (own_bucket, folder) = self.bucket_and_folder();
        if own_bucket != bucket {
            return false;
        }
        let relative = if folder.is_empty() {
            key
        } else {
            match key.strip_prefix(folder).and_then(|rest| rest.strip_prefix('/')) {
                Some(rest) => rest,
                None => return false,
            }
        };
        let name = relative.rsplit('/').next().unwrap_or(relative);
        (self.prefix.is_empty() || self.prefix.iter().any(|p| name.starts_with(p.as_str())))
            && (self.suffix.is_empty() || self.suffix.iter().any(|s| name.ends_with(s.as_str())))
    }
}

/// A service's environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
pub struct Environment {
    /// Plain variables.
    #[serde(default, alias = "Variables")]
    pub variables: BTreeMap<String, String>,
    /// Secret variables: given to the job like variables, never listed by the API.
    #[serde(default, alias = "Secrets")]
    pub secrets: BTreeMap<String, String>,
    /// Names of fields this version does not know: warned about, then dropped (their values
    /// are not kept: a misspelled `secrets` must not end up where secrets are listed).
    #[serde(flatten, default, skip_serializing, deserialize_with = "unknown_field_names")]
    #[schema(ignore)]
    pub unknown: Vec<String>,
}

/// The `confidential` block of a service (a Cloister addition to OSCAR's FDL).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Confidential {
    /// `sgx`, `tdx`, `snp` or `sim`.
    #[schema(value_type = String)]
    pub tee: Tee,
    /// The CAS URL (`https://…`).
    pub cas: String,
    /// The CAS identity pin (`sha256:<64 hex>`), from `cloister cas identity`.
    pub cas_pin: String,
    /// The CAS session holding this service's policy.
    pub session: String,
    /// The service's name within the session (the service's own name when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Kubernetes runtime class for confidential VMs (TDX: `kata-qemu-tdx`, SEV-SNP:
    /// `kata-qemu-snp` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class: Option<String>,
    /// The data owners' public keys (`cloister1x25519:…`, from `cloister keygen`) every
    /// output is encrypted to. `cloister apply` puts them in the CAS session; the runtime
    /// takes them from there, never from the platform.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_recipients: Vec<String>,
    /// Encrypted volumes: names of folders that persist across jobs (rollback-protected by
    /// the CAS). The script finds each at `$CLOISTER_VOLUME_<NAME>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// The script's arguments (`$1`, `$2`, …). They go into the CAS session with the rest of
    /// the policy, so the platform cannot change them; `$$CLOISTER::env-NAME$$` in an
    /// argument is replaced by the CAS with the secret `NAME` of `environment.secrets`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Expected measurement of the runtime's enclave or VM for hardware TEEs: SGX MRENCLAVE or
    /// SEV-SNP MEASUREMENT (hex). TDX needs more than one register: use `attestation`. Under
    /// simulation `cloister apply` uses the runtime's simulation measurement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measurement: Option<String>,
    /// Further attestation requirements, with the field names of a CAS session's attestation
    /// alternative (TDX: `mrtd`, `rtmr0`…`rtmr3`; SGX: `mrsigner`, `isvprodid`,
    /// `isvsvn_min`; SEV-SNP: `min_tcb`, `allow_smt`, `vmpl`, …). `cloister apply` checks them
    /// when it builds the session; the platform only keeps them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = BTreeMap<String, Value>)]
    pub attestation: BTreeMap<String, serde_json::Value>,
    /// Data owners (`cloister1x25519:…`) whose sender authentication an input must carry
    /// (`cloister put --encrypt R --sender KEY`); when empty, any holder of the service's
    /// input recipient can submit inputs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub input_senders: Vec<String>,
    /// Whether the service is an attested approver (`attested:SESSION#SERVICE` on boards): its
    /// runtime binds a key of its own to each attestation and lets the script ask for
    /// proposals and vote on them through `$CLOISTER_APPROVER_SOCKET`; the key never leaves
    /// the runtime. Part of the CAS session, so of its hash.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub approver: bool,
    /// The service's input recipient, written by `cloister apply` for reference. Data owners
    /// should take it from `apply`'s output or the CAS, not from the platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_recipient: Option<String>,
}

/// Scaling bounds of synchronous services: the container executor keeps `min_scale` warm
/// containers per service for `/run`; `max_scale` is recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
pub struct Synchronous {
    /// Minimum replicas.
    #[serde(default)]
    pub min_scale: u32,
    /// Maximum replicas.
    #[serde(default)]
    pub max_scale: u32,
    /// Names of fields this version does not know: warned about, then dropped (their values
    /// are not kept: a misspelled `secrets` must not end up where secrets are listed).
    #[serde(flatten, default, skip_serializing, deserialize_with = "unknown_field_names")]
    #[schema(ignore)]
    pub unknown: Vec<String>,
}

/// A service: the unit users deploy. Field names and shapes are OSCAR's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default, utoipa::ToSchema)]
pub struct Service {
    /// DNS-label-safe name, 1–39 characters.
    #[serde(default)]
    #[schema(required = true, pattern = r"^[a-z0-9]([-a-z0-9]{0,37}[a-z0-9])?$")]
    pub name: String,
    /// The cluster the FDL assigned it to.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster_id: String,
    /// Container image: where the script runs under the container executor (the host
    /// executor records it and runs the script on the host).
    #[serde(default)]
    pub image: String,
    /// The script's content (in an FDL file: a path, inlined when the file is read).
    #[serde(default)]
    #[schema(required = true)]
    pub script: String,
    /// CPU request in cores ("0.5") or millicores ("500m").
    #[serde(default = "default_cpu", deserialize_with = "string_or_number")]
    #[schema(schema_with = cpu_schema)]
    pub cpu: String,
    /// Memory in Kubernetes quantity syntax ("256Mi").
    #[serde(default = "default_memory", deserialize_with = "string_or_number")]
    #[schema(schema_with = memory_schema)]
    pub memory: String,
    /// Request a GPU.
    #[serde(default)]
    pub enable_gpu: bool,
    /// Run in an Intel SGX enclave.
    #[serde(default)]
    pub enable_sgx: bool,
    /// SGX enclave page cache to request (Kubernetes quantity); the service's `memory` when
    /// absent. A Cloister addition to OSCAR's FDL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sgx_epc: Option<String>,
    /// Confidential execution: which TEE, and where and as what the runtime attests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidential: Option<Confidential>,
    /// Input paths: uploads here start jobs.
    #[serde(default)]
    pub input: Vec<StorageIo>,
    /// Output paths: files a job leaves in `TMP_OUTPUT_DIR` go here.
    #[serde(default)]
    pub output: Vec<StorageIo>,
    /// Environment variables and secrets.
    #[serde(default)]
    pub environment: Environment,
    /// Log level of the supervisor.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub log_level: String,
    /// Image pull secrets: names of registry credentials (under the container executor, files
    /// `<name>.json` in the server's `--registry-auth-dir`, in the Docker/Podman auth format).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<String>,
    /// When the container executor pulls the image: `Always`, `IfNotPresent` (the default) or
    /// `Never`, as Kubernetes' `imagePullPolicy`. A Cloister addition to OSCAR's FDL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// Let the job's container reach the network (scripts that download models need it); off
    /// by default, so a job sees no network at all. A Cloister addition to OSCAR's FDL (OSCAR
    /// jobs always have one); the host executor does not isolate the network.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enable_network: bool,
    /// Annotations for the job.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Labels for the job.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `private` (default), `public` or `restricted`.
    #[serde(default = "default_visibility")]
    #[schema(schema_with = visibility_schema)]
    pub visibility: String,
    /// Users allowed for `restricted` services.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_users: Vec<String>,
    /// Synchronous scaling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synchronous: Option<Synchronous>,
    /// Exposed-service settings (recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Value>)]
    pub expose: Option<Value>,
    /// A bucket mounted into the job (recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<StorageIo>,
    /// Stage the input file before the script runs (always true for the local executor).
    #[serde(default)]
    pub file_stage_in: bool,
    /// Storage providers (filled by the server on GET with the embedded endpoint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>, read_only)]
    pub storage_providers: Option<Value>,
    /// The service's token for `/job` and `/run` (generated by the server).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schema(read_only)]
    pub token: String,
    /// Fields this version does not know, kept as they came (the schema allows any).
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: BTreeMap<String, Value>,
}

fn default_cpu() -> String {
    "0.2".to_owned()
}

fn default_memory() -> String {
    "256Mi".to_owned()
}

fn default_visibility() -> String {
    "private".to_owned()
}

// The schemas below replace derived ones where the field's type says less than its parser.

/// `cpu` and `memory` are strings in OSCAR's API, but FDL files often write plain numbers.
fn string_or_number_schema(description: &str, default: fn() -> String) -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::String))
        .item(ObjectBuilder::new().schema_type(Type::Number))
        .description(Some(description))
        .default(Some(Value::from(default())))
        .build()
        .into()
}

fn cpu_schema() -> utoipa::openapi::schema::Schema {
    string_or_number_schema(
        "CPU request in cores (\"0.5\") or millicores (\"500m\").",
        default_cpu,
    )
}

fn memory_schema() -> utoipa::openapi::schema::Schema {
    string_or_number_schema(
        "Memory in Kubernetes quantity syntax (\"256Mi\").",
        default_memory,
    )
}

fn visibility_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some("`private` (default), `public` or `restricted`."))
        .enum_values(Some(["private", "public", "restricted"]))
        .default(Some(Value::from(default_visibility())))
        .build()
}

fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        S(String),
        F(f64),
        I(i64),
    }
    Ok(match Either::deserialize(d)? {
        Either::S(s) => s,
        Either::F(f) => f.to_string(),
        Either::I(i) => i.to_string(),
    })
}

/// Fields OSCAR clients send that Cloister accepts without acting on them; no warning for these.
const KNOWN_OSCAR_EXTRAS: &[&str] = &[
    "alpine",
    "total_memory",
    "total_cpu",
    "replicas",
    "rescheduler_threshold",
    "clusters",
    "vo",
    "interlink_node_name",
    "owner",
    "isolation_level",
    "lifecycle",
    "creation_time",
];

impl Service {
    /// Parses one service from a JSON body of the REST API.
    pub fn from_json(body: &[u8]) -> Result<Self, FdlError> {
        serde_json::from_slice(body).map_err(|e| FdlError::Syntax(e.to_string()))
    }

    /// Warnings about fields this version does not know: at the top level they are kept, not
    /// acted on; in nested blocks they are dropped.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings: Vec<String> = self
            .extra
            .keys()
            .filter(|k| !KNOWN_OSCAR_EXTRAS.contains(&k.as_str()))
            .map(|k| {
                format!(
                    "unknown field `{k}` in service {:?} is kept but ignored",
                    self.name
                )
            })
            .collect();
        let ios = self
            .input
            .iter()
            .enumerate()
            .map(|(i, io)| (format!("input[{i}]"), io));
        let outputs = self
            .output
            .iter()
            .enumerate()
            .map(|(i, io)| (format!("output[{i}]"), io));
        let mount = self.mount.iter().map(|io| ("mount".to_owned(), io));
        let nested = ios
            .chain(outputs)
            .chain(mount)
            .map(|(block, io)| (block, &io.unknown))
            .chain([("environment".to_owned(), &self.environment.unknown)])
            .chain(
                self.synchronous
                    .iter()
                    .map(|s| ("synchronous".to_owned(), &s.unknown)),
            );
        for (block, unknown) in nested {
            warnings.extend(unknown.iter().map(|k| {
                format!(
                    "unknown field `{block}.{k}` in service {:?} is ignored",
                    self.name
                )
            }));
        }
        warnings
    }

    /// Checks every field; the error names the first invalid one.
    pub fn validate(&self) -> Result<(), FdlError> {
        validate_service_name(&self.name).map_err(|reason| FdlError::invalid("name", reason))?;
        if self.script.trim().is_empty() {
            return Err(FdlError::invalid("script", "must not be empty"));
        }
        parse_cpu_millis(&self.cpu).map_err(|reason| FdlError::invalid("cpu", reason))?;
        parse_quantity(&self.memory).map_err(|reason| FdlError::invalid("memory", reason))?;
        if let Some(epc) = &self.sgx_epc {
            parse_quantity(epc).map_err(|reason| FdlError::invalid("sgx_epc", reason))?;
        }
        if let Some(policy) = &self.image_pull_policy {
            policy
                .parse::<cloister_runtime::PullPolicy>()
                .map_err(|reason| FdlError::invalid("image_pull_policy", reason))?;
        }
        for (i, name) in self.image_pull_secrets.iter().enumerate() {
            validate_pull_secret_name(name)
                .map_err(|reason| FdlError::invalid(format!("image_pull_secrets[{i}]"), reason))?;
        }
        if let Some(confidential) = &self.confidential {
            validate_confidential(confidential, self.enable_sgx).map_err(|e| e.prefixed("confidential"))?;
        }
        if !["private", "public", "restricted"].contains(&self.visibility.as_str()) {
            return Err(FdlError::invalid(
                "visibility",
                "must be private, public or restricted",
            ));
        }
        for (list, ios) in [("input", &self.input), ("output", &self.output)] {
            for (i, io) in ios.iter().enumerate() {
                validate_io(io).map_err(|e| e.prefixed(&format!("{list}[{i}]")))?;
            }
        }
        if let Some(mount) = &self.mount {
            validate_io(mount).map_err(|e| e.prefixed("mount"))?;
        }
        let env = self.environment.variables.iter().chain(&self.environment.secrets);
        for (name, value) in env {
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(FdlError::invalid(
                    format!("environment.{name}"),
                    "variable names must be letters, digits and '_', not starting with a digit",
                ));
            }
            if value.contains('\0') {
                return Err(FdlError::invalid(
                    format!("environment.{name}"),
                    "must not contain NUL",
                ));
            }
        }
        Ok(())
    }

    /// Normalises input paths the way OSCAR does: a path without a `/` is a folder of a bucket
    /// named after the service.
    pub fn normalize(&mut self) {
        for io in self.input.iter_mut().chain(self.output.iter_mut()) {
            let trimmed = io.path.trim_matches('/');
            io.path = if trimmed.contains('/') {
                trimmed.to_owned()
            } else {
                format!("{}/{trimmed}", self.name)
            };
            if io.storage_provider == "minio" {
                io.storage_provider = default_provider();
            }
        }
    }

    /// Memory limit in bytes.
    pub fn memory_bytes(&self) -> Option<u64> {
        parse_quantity(&self.memory).ok()
    }

    /// CPU limit in thousandths of a core.
    pub fn cpu_millis(&self) -> Option<u64> {
        parse_cpu_millis(&self.cpu).ok()
    }

    /// The service as the API lists it: secrets' values are never shown.
    pub fn redacted(&self) -> Self {
        let mut shown = self.clone();
        for value in shown.environment.secrets.values_mut() {
            *value = "********".to_owned();
        }
        shown
    }
}

/// A pull secret names a file of the registry-auth folder, so it must be a plain name
/// (Kubernetes' rule for secret names: a DNS subdomain).
fn validate_pull_secret_name(name: &str) -> Result<(), String> {
    let valid = (1..=253).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        Ok(())
    } else {
        Err("must be a lowercase name of letters, digits, '-' and '.' (a Kubernetes secret name)".to_owned())
    }
}

/// Most script arguments a confidential service may declare.
const MAX_ARGS: usize = 64;

fn validate_confidential(c: &Confidential, enable_sgx: bool) -> Result<(), FdlError> {
    if enable_sgx && c.tee != Tee::Sgx {
        return Err(FdlError::invalid(
            "tee",
            "enable_sgx: true asks for SGX; set tee: sgx or drop enable_sgx",
        ));
    }
    if !c.cas.starts_with("https://") || c.cas.len() <= "https://".len() {
        return Err(FdlError::invalid(
            "cas",
            "must be an https:// URL (the CAS speaks TLS only)",
        ));
    }
    let pin = c.cas_pin.strip_prefix("sha256:").unwrap_or(&c.cas_pin);
    if pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(FdlError::invalid(
            "cas_pin",
            "must be sha256:<64 hex digits> as `cloister cas identity` prints",
        ));
    }
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.len() <= 128
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
    };
    if !name_ok(&c.session) {
        return Err(FdlError::invalid(
            "session",
            "must be a CAS session name like team/app",
        ));
    }
    if let Some(service) = &c.service
        && !name_ok(service)
    {
        return Err(FdlError::invalid(
            "service",
            "must be a service name of the session",
        ));
    }
    for (field, list) in [
        ("output_recipients", &c.output_recipients),
        ("input_senders", &c.input_senders),
    ] {
        for (i, recipient) in list.iter().enumerate() {
            let hexpart = recipient.strip_prefix("cloister1x25519:").unwrap_or("");
            if hexpart.len() != 64 || !hexpart.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(FdlError::invalid(
                    format!("{field}[{i}]"),
                    "must be a recipient cloister1x25519:<64 hex digits> (cloister keygen prints one)",
                ));
            }
        }
    }
    if c.attestation.len() > 32 || c.attestation.contains_key("tee") {
        return Err(FdlError::invalid(
            "attestation",
            "at most 32 fields of an attestation alternative; the TEE is `tee`",
        ));
    }
    for (i, volume) in c.volumes.iter().enumerate() {
        let b = volume.as_bytes();
        let valid = !b.is_empty()
            && b.len() <= 64
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"-_.".contains(c));
        if !valid || c.volumes[..i].contains(volume) {
            return Err(FdlError::invalid(
                format!("volumes[{i}]"),
                "volume names are unique, 1-64 characters of a-z, 0-9, '-', '_', '.'",
            ));
        }
    }
    if c.args.len() > MAX_ARGS {
        return Err(FdlError::invalid("args", format!("at most {MAX_ARGS} arguments")));
    }
    for (i, arg) in c.args.iter().enumerate() {
        if arg.len() > 4096 || arg.contains('\0') {
            return Err(FdlError::invalid(
                format!("args[{i}]"),
                "arguments are at most 4096 bytes, without NUL",
            ));
        }
    }
    if let Some(m) = &c.measurement
        && (m.is_empty() || m.len() > 96 || !m.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(FdlError::invalid("measurement", "must be hex (64 or 96 digits)"));
    }
    if c.runtime_class.is_some() && matches!(c.tee, Tee::Sgx | Tee::Sim) {
        return Err(FdlError::invalid(
            "runtime_class",
            "only TDX and SEV-SNP services run in a runtime class",
        ));
    }
    Ok(())
}

fn validate_io(io: &StorageIo) -> Result<(), FdlError> {
    if io.storage_provider != "minio" && io.storage_provider != "minio.default" {
        return Err(FdlError::invalid(
            "storage_provider",
            format!(
                "{:?} is not available: this server's storage is the embedded store, `minio.default`",
                io.storage_provider
            ),
        ));
    }
    let (bucket, folder) = io.bucket_and_folder();
    cloister_storage::names::validate_bucket_name(bucket)
        .map_err(|e| FdlError::invalid("path", e.to_string()))?;
    if !folder.is_empty() {
        cloister_storage::names::validate_object_key(folder)
            .map_err(|e| FdlError::invalid("path", e.to_string()))?;
    }
    for (name, filters) in [("prefix", &io.prefix), ("suffix", &io.suffix)] {
        if filters.iter().any(|f| f.is_empty() || f.contains('\0')) {
            return Err(FdlError::invalid(
                name,
                "filters must be non-empty and free of NUL",
            ));
        }
    }
    Ok(())
}

/// Checks a service name: 1–39 characters, lowercase letters, digits and `-`, starting and
/// ending with a letter or digit (a DNS label, short enough for Kubernetes' derived names).
pub fn validate_service_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 39 {
        return Err("must be 1 to 39 characters long".to_owned());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("only lowercase letters, digits and '-' are allowed".to_owned());
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("must start and end with a letter or digit".to_owned());
    }
    Ok(())
}

/// The most CPU a service may ask for, in millicores (1024 cores).
const MAX_CPU_MILLIS: u64 = 1024 * 1000;

/// Parses a CPU amount into millicores: cores ("0.5", "2", "1e3") or millicores ("500m"), any
/// Kubernetes quantity of at most 1024 cores. Read exactly; a fraction of a millicore is rounded
/// to the nearest.
pub fn parse_cpu_millis(cpu: &str) -> Result<u64, String> {
    let cpu = cpu.trim();
    let quantity = Quantity::parse(cpu).map_err(|e| match e {
        QuantityError::Syntax => format!("{cpu:?} is not a CPU amount like \"0.5\" or \"500m\""),
        other => other.describe(cpu),
    })?;
    let millis = quantity
        .scaled(3, Rounding::Nearest)
        .filter(|&m| m <= MAX_CPU_MILLIS)
        .ok_or_else(|| format!("{cpu:?} is out of range"))?;
    if millis == 0 {
        return Err("must be more than zero".to_owned());
    }
    Ok(millis)
}

/// Parses a Kubernetes quantity ("256Mi", "1G", "1.5Gi", "128974848", "129e6") into bytes, at
/// least 1Mi. Read exactly; a fraction of a byte is rounded up.
pub fn parse_quantity(quantity: &str) -> Result<u64, String> {
    let q = quantity.trim();
    let bytes = Quantity::parse(q)
        .map_err(|e| match e {
            QuantityError::Syntax => format!("{q:?} is not a Kubernetes quantity like \"256Mi\" or \"1G\""),
            other => other.describe(q),
        })?
        .scaled(0, Rounding::Up)
        .ok_or_else(|| QuantityError::TooLarge.describe(q))?;
    if bytes < 1024 * 1024 {
        return Err(format!("{q:?} is below the minimum of 1Mi"));
    }
    Ok(bytes)
}

/// A Kubernetes quantity read exactly: `digits` × 10^`exp10` × 1024^`pow1024`.
#[derive(Debug, PartialEq)]
struct Quantity {
    digits: u128,
    exp10: i64,
    pow1024: u32,
}

#[derive(Debug, PartialEq)]
enum QuantityError {
    Syntax,
    Negative,
    TooLarge,
    TooManyDigits,
}

impl QuantityError {
    fn describe(&self, text: &str) -> String {
        match self {
            QuantityError::Syntax => format!("{text:?} is not a Kubernetes quantity"),
            QuantityError::Negative => format!("{text:?} is negative"),
            QuantityError::TooLarge => format!("{text:?} is too large"),
            QuantityError::TooManyDigits => format!("{text:?} has too many digits"),
        }
    }
}

#[derive(Clone, Copy)]
enum Rounding {
    Up,
    Nearest,
}

/// Exponents beyond this are refused outright (as too large, or too small to be anything but 0).
const MAX_EXPONENT: i64 = 1000;

impl Quantity {
    /// `[+]digits[.digits][suffix]`, the suffix one of Ki Mi Gi Ti Pi Ei, m k M G T P E, or an
    /// exponent `e3` / `E-2`. A leading or trailing decimal point is refused.
    fn parse(text: &str) -> Result<Quantity, QuantityError> {
        if let Some(rest) = text.strip_prefix('-') {
            return Err(match Quantity::parse(rest) {
                Ok(_) | Err(QuantityError::TooLarge | QuantityError::TooManyDigits) => {
                    QuantityError::Negative
                }
                Err(_) => QuantityError::Syntax,
            });
        }
        let text = text.strip_prefix('+').unwrap_or(text);
        let number_end = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, suffix) = text.split_at(number_end);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(whole) || (number.contains('.') && !all_digits(fraction)) {
            return Err(QuantityError::Syntax);
        }
        let fraction = fraction.trim_end_matches('0');
        let mut digits: u128 = 0;
        for b in whole.bytes().chain(fraction.bytes()) {
            digits = digits
                .checked_mul(10)
                .and_then(|d| d.checked_add(u128::from(b - b'0')))
                .ok_or(QuantityError::TooManyDigits)?;
        }
        let (suffix_exp10, pow1024) = match suffix {
            "" => (0, 0),
            "Ki" => (0, 1),
            "Mi" => (0, 2),
            "Gi" => (0, 3),
            "Ti" => (0, 4),
            "Pi" => (0, 5),
            "Ei" => (0, 6),
            "m" => (-3, 0),
            "k" => (3, 0),
            "M" => (6, 0),
            "G" => (9, 0),
            "T" => (12, 0),
            "P" => (15, 0),
            "E" => (18, 0),
            _ => {
                let exponent = suffix.strip_prefix(['e', 'E']).ok_or(QuantityError::Syntax)?;
                let (negative, magnitude) = match exponent.strip_prefix('-') {
                    Some(m) => (true, m),
                    None => (false, exponent.strip_prefix('+').unwrap_or(exponent)),
                };
                if !all_digits(magnitude) {
                    return Err(QuantityError::Syntax);
                }
                let magnitude = magnitude.parse::<i64>().unwrap_or(i64::MAX).min(MAX_EXPONENT);
                (if negative { -magnitude } else { magnitude }, 0)
            }
        };
        let fraction_len = i64::try_from(fraction.len()).map_err(|_| QuantityError::TooManyDigits)?;
        Ok(Quantity {
            digits,
            exp10: suffix_exp10 - fraction_len,
            pow1024,
        })
    }

    /// The quantity × 10^`scale` as an integer, rounded as asked; `None` past `u64::MAX`.
    fn scaled(&self, scale: i64, rounding: Rounding) -> Option<u64> {
        if self.digits == 0 {
            return Some(0);
        }
        let n = self.digits.checked_mul(1024u128.checked_pow(self.pow1024)?)?;
        let exp10 = self.exp10.checked_add(scale)?;
        let value = if exp10 >= 0 {
            n.checked_mul(10u128.checked_pow(u32::try_from(exp10).ok()?)?)?
        } else {
            // n < 2^128 < 10^39: past 10^38 the quotient is 0 and the remainder n itself.
            let (quotient, remainder, divisor) =
                match u32::try_from(-exp10).ok().and_then(|p| 10u128.checked_pow(p)) {
                    Some(divisor) => (n / divisor, n % divisor, Some(divisor)),
                    None => (0, n, None),
                };
            let round_up = match rounding {
                Rounding::Up => remainder > 0,
                // remainder < divisor ≤ 10^38, so doubling it cannot overflow.
                Rounding::Nearest => divisor.is_some_and(|d| remainder * 2 >= d),
            };
            quotient + u128::from(round_up)
        };
        u64::try_from(value).ok()
    }
}

/// A parsed FDL file.
#[derive(Debug, Clone, PartialEq)]
pub struct FdlFile {
    /// Services with their cluster id set.
    pub services: Vec<Service>,
    /// Warnings (unknown fields and the like).
    pub warnings: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFdl {
    functions: RawFunctions,
    #[serde(default)]
    storage_providers: Option<Value>,
    #[serde(default)]
    clusters: Option<BTreeMap<String, Value>>,
}

#[derive(Deserialize)]
struct RawFunctions {
    #[serde(default)]
    oscar: Vec<BTreeMap<String, Service>>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

/// Parses an FDL file. `base_dir` is where relative `script` paths are read from; `None`
/// takes `script` values as the scripts' content.
pub fn parse_fdl(text: &str, base_dir: Option<&Path>) -> Result<FdlFile, FdlError> {
    let raw: RawFdl = serde_saphyr::from_str(text).map_err(|e| FdlError::Syntax(e.to_string()))?;
    let mut warnings = Vec::new();
    for key in raw.functions.other.keys() {
        warnings.push(format!(
            "functions.{key}: only `oscar` functions are deployed; this section is ignored"
        ));
    }
    if raw.functions.oscar.is_empty() {
        return Err(FdlError::invalid("functions.oscar", "no services defined"));
    }
    let _ = (&raw.storage_providers, &raw.clusters);
    let mut services = Vec::new();
    for (i, entry) in raw.functions.oscar.into_iter().enumerate() {
        if entry.len() != 1 {
            return Err(FdlError::invalid(
                format!("functions.oscar[{i}]"),
                "each entry must be a single `<cluster-id>: <service>` mapping",
            ));
        }
        for (cluster, mut service) in entry {
            let field = format!("functions.oscar[{i}].{cluster}");
            if let Some(dir) = base_dir {
                if service.script.trim().is_empty() {
                    return Err(FdlError::invalid(
                        format!("{field}.script"),
                        "must name the script file",
                    ));
                }
                let path = dir.join(&service.script);
                service.script = std::fs::read_to_string(&path).map_err(|e| {
                    FdlError::invalid(
                        format!("{field}.script"),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
            }
            service.cluster_id = cluster.clone();
            service.validate().map_err(|e| e.prefixed(&field))?;
            warnings.extend(service.warnings().into_iter().map(|w| format!("{field}: {w}")));
            services.push(service);
        }
    }
    Ok(FdlFile { services, warnings })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FDL: &str = r#"
functions:
  oscar:
  - my-cluster:
      name: grayify
      image: ghcr.io/example/imagemagick
      cpu: 0.5
      memory: 1Gi
      script: echo hi
      enable_sgx: true
      favourite_colour: blue
      input:
      - storage_provider: minio.default
        path: grayify/in
        suffix: [".png"]
      output:
      - storage_provider: minio
        path: grayify/out
      environment:
        variables:
          MODE: fast
        secrets:
          API_KEY: s3cret
storage_providers:
  minio:
    default:
      endpoint: http://localhost:9000
clusters:
  my-cluster:
    endpoint: http://localhost:8080
"#;

    #[test]
    fn parses_oscar_fdl_with_warnings() {
        let fdl = parse_fdl(FDL, None).unwrap();
        let svc = &fdl.services[0];
        assert_eq!(svc.name, "grayify");
        assert_eq!(svc.cluster_id, "my-cluster");
        assert_eq!(svc.cpu, "0.5");
        assert_eq!(svc.cpu_millis(), Some(500));
        assert_eq!(svc.memory_bytes(), Some(1 << 30));
        assert!(svc.enable_sgx);
        assert_eq!(svc.input[0].suffix, [".png"]);
        assert_eq!(svc.environment.secrets["API_KEY"], "s3cret");
        assert_eq!(fdl.warnings.len(), 1);
        assert!(fdl.warnings[0].contains("favourite_colour"), "{:?}", fdl.warnings);
    }

    #[test]
    fn defaults_apply() {
        let svc = Service::from_json(br#"{"name":"a","script":"true"}"#).unwrap();
        assert_eq!(
            (svc.cpu.as_str(), svc.memory.as_str(), svc.visibility.as_str()),
            ("0.2", "256Mi", "private")
        );
        svc.validate().unwrap();
    }

    #[test]
    fn container_options_are_checked_and_kept() {
        let svc = Service::from_json(
            br#"{"name":"a","script":"true","enable_network":true,"image_pull_policy":"Never",
                "image_pull_secrets":["regcred"]}"#,
        )
        .unwrap();
        svc.validate().unwrap();
        assert!(svc.warnings().is_empty(), "{:?}", svc.warnings());
        let placement = crate::workers::placement_for(&svc);
        assert!(placement.network);
        assert_eq!(placement.image_pull_policy, cloister_runtime::PullPolicy::Never);
        // Off by default, and not written back when off.
        let plain = Service::from_json(br#"{"name":"a","script":"true"}"#).unwrap();
        assert!(!crate::workers::placement_for(&plain).network);
        assert!(!serde_json::to_string(&plain).unwrap().contains("enable_network"));
        for (body, field) in [
            (
                r#"{"name":"a","script":"true","image_pull_policy":"always"}"#,
                "image_pull_policy",
            ),
            (
                r#"{"name":"a","script":"true","image_pull_secrets":["../x"]}"#,
                "image_pull_secrets[0]",
            ),
            (
                r#"{"name":"a","script":"true","image_pull_secrets":["ok","Bad"]}"#,
                "image_pull_secrets[1]",
            ),
        ] {
            let err = Service::from_json(body.as_bytes())
                .unwrap()
                .validate()
                .unwrap_err();
            assert!(
                matches!(&err, FdlError::Invalid { field: f, .. } if f == field),
                "{body}: {err}"
            );
        }
    }

    #[test]
    fn errors_name_the_field() {
        let bad = FDL.replace("memory: 1Gi", "memory: lots");
        let err = parse_fdl(&bad, None).unwrap_err();
        assert!(
            matches!(&err, FdlError::Invalid { field, .. } if field == "functions.oscar[0].my-cluster.memory"),
            "{err}"
        );
        let bad = FDL.replace("path: grayify/in", "path: Bad_Bucket/in");
        let err = parse_fdl(&bad, None).unwrap_err();
        assert!(
            matches!(&err, FdlError::Invalid { field, .. } if field == "functions.oscar[0].my-cluster.input[0].path"),
            "{err}"
        );
        let bad = FDL.replace("name: grayify", "name: ../etc");
        assert!(
            matches!(parse_fdl(&bad, None), Err(FdlError::Invalid { field, .. }) if field.ends_with(".name"))
        );
        assert!(matches!(
            parse_fdl("functions: [", None),
            Err(FdlError::Syntax(_))
        ));
        assert!(matches!(
            parse_fdl("nothing: here", None),
            Err(FdlError::Syntax(_))
        ));
    }

    #[test]
    fn scripts_are_read_relative_to_the_fdl() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("script.sh"), "echo from file\n").unwrap();
        let fdl = parse_fdl(
            &FDL.replace("script: echo hi", "script: script.sh"),
            Some(dir.path()),
        )
        .unwrap();
        assert_eq!(fdl.services[0].script, "echo from file\n");
        let err = parse_fdl(
            &FDL.replace("script: echo hi", "script: missing.sh"),
            Some(dir.path()),
        )
        .unwrap_err();
        assert!(err.to_string().contains("missing.sh"));
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("256Mi"), Ok(256 << 20));
        assert_eq!(parse_quantity("1G"), Ok(1_000_000_000));
        assert_eq!(parse_quantity("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_quantity("129e6"), Ok(129_000_000));
        for bad in ["", "Mi", "1.2.3Mi", "12XB", "-5Mi", "1e99", "10", ".5Gi"] {
            assert!(parse_quantity(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_cpu_millis("500m"), Ok(500));
        assert_eq!(parse_cpu_millis("2"), Ok(2000));
        for bad in ["0", "abc", "-1", "NaN", "1e9"] {
            assert!(parse_cpu_millis(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn quantities_are_exact() {
        // Values a binary float would get wrong, or lose.
        assert_eq!(parse_quantity("1.1Gi"), Ok(1_181_116_006 + 1)); // 1.1 × 2^30 = 1181116006.4
        assert_eq!(parse_quantity("9007199254740993"), Ok((1 << 53) + 1));
        assert_eq!(parse_quantity("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(
            parse_quantity("18446744073709551616"),
            Err("\"18446744073709551616\" is too large".into())
        );
        assert_eq!(parse_quantity("16Ei"), Err("\"16Ei\" is too large".into()));
        assert_eq!(parse_quantity("15Ei"), Ok(15 << 60));
        assert_eq!(parse_quantity("1e19"), Ok(10_000_000_000_000_000_000));
        assert_eq!(parse_quantity("1e20"), Err("\"1e20\" is too large".into()));
        assert_eq!(parse_quantity("1.5e6"), Ok(1_500_000));
        assert_eq!(parse_quantity("2E6"), Ok(2_000_000));
        assert_eq!(parse_quantity("1E"), Ok(1_000_000_000_000_000_000));
        assert_eq!(parse_quantity("1048576001m"), Ok(1_048_577));
        assert_eq!(
            parse_quantity("2.000000000000000000000000000000000000000000000Mi"),
            Ok(2 << 20)
        );
        assert_eq!(parse_quantity(" +1Mi "), Ok(1 << 20));
        assert_eq!(
            parse_quantity("1e-3"),
            Err("\"1e-3\" is below the minimum of 1Mi".into())
        );
        assert_eq!(parse_quantity("1Mi"), Ok(1 << 20));
        assert_eq!(
            parse_quantity("1048575"),
            Err("\"1048575\" is below the minimum of 1Mi".into())
        );
        assert_eq!(parse_quantity("-5Mi"), Err("\"-5Mi\" is negative".into()));
        assert_eq!(
            parse_quantity("1e99999999999999999999"),
            Err("\"1e99999999999999999999\" is too large".into())
        );
        assert_eq!(
            parse_quantity(&"9".repeat(39)),
            Err(format!("{:?} has too many digits", "9".repeat(39)))
        );
        for junk in [
            "5.", "1..5", "1.5.Mi", "1 Mi", "1mi", "1KI", "1K", "1e", "1e+", "1e3Mi", "1ee3", "0x10", "--1",
            "+-1", "1_000", "1,5Gi", "١", "NaN", "inf",
        ] {
            let e = parse_quantity(junk).unwrap_err();
            assert!(e.contains("not a Kubernetes quantity"), "{junk}: {e}");
        }

        assert_eq!(parse_cpu_millis("0.5"), Ok(500));
        assert_eq!(parse_cpu_millis("0.1"), Ok(100));
        assert_eq!(parse_cpu_millis("1.0005"), Ok(1001));
        assert_eq!(parse_cpu_millis("0.0004"), Err("must be more than zero".into()));
        assert_eq!(parse_cpu_millis("1e3"), Ok(1_000_000));
        assert_eq!(parse_cpu_millis("1k"), Ok(1_000_000));
        assert_eq!(parse_cpu_millis("1024"), Ok(1_024_000));
        assert_eq!(parse_cpu_millis("1024000m"), Ok(1_024_000));
        assert_eq!(
            parse_cpu_millis("1024.001"),
            Err("\"1024.001\" is out of range".into())
        );
        assert_eq!(parse_cpu_millis("1.5m"), Ok(2));
        assert_eq!(parse_cpu_millis("250e-3"), Ok(250));
        assert_eq!(parse_cpu_millis("-0.5"), Err("\"-0.5\" is negative".into()));
        assert_eq!(
            parse_cpu_millis(".5"),
            Err("\".5\" is not a CPU amount like \"0.5\" or \"500m\"".into())
        );
    }

    #[test]
    fn path_matching_honours_folder_and_filters() {
        let io = StorageIo {
            storage_provider: "minio.default".into(),
            path: "b/in".into(),
            prefix: vec!["img".into()],
            suffix: vec![".png".into(), ".jpg".into()],
            unknown: Vec::new(),
        };
        assert!(io.matches("b", "in/img1.png"));
        assert!(io.matches("b", "in/sub/img2.jpg"));
        assert!(!io.matches("b", "in/doc.png"));
        assert!(!io.matches("b", "in/img1.gif"));
        assert!(!io.matches("b", "inside/img1.png"));
        assert!(!io.matches("c", "in/img1.png"));
        let whole = StorageIo {
            path: "b".into(),
            ..Default::default()
        };
        assert!(whole.matches("b", "anything/at/all"));
    }

    #[test]
    fn misspelled_nested_fields_are_warned_about_and_not_kept() {
        let fdl = r#"
functions:
  oscar:
  - c:
      name: typos
      script: echo hi
      input:
      - storage_provder: minio.default
        path: typos/in
      output:
      - path: typos/out
        sufix: [".txt"]
      mount:
        path: typos/mnt
        prefx: ["a"]
      environment:
        variables:
          MODE: fast
        secret:
          API_KEY: s3cret
      synchronous:
        min_scale: 1
        max_scael: 3
"#;
        let parsed = parse_fdl(fdl, None).unwrap();
        for field in [
            "input[0].storage_provder",
            "output[0].sufix",
            "mount.prefx",
            "environment.secret",
            "synchronous.max_scael",
        ] {
            assert!(
                parsed.warnings.iter().any(|w| w.contains(&format!("`{field}`"))),
                "no warning for {field}: {:?}",
                parsed.warnings
            );
        }
        assert_eq!(parsed.warnings.len(), 5, "{:?}", parsed.warnings);
        // The misspelled block's values go nowhere: not into the stored service, not to the API.
        let stored = serde_json::to_string(&parsed.services[0]).unwrap();
        assert!(
            !stored.contains("s3cret") && !stored.contains("sufix"),
            "{stored}"
        );
        // The same through the REST API's JSON.
        let svc = Service::from_json(
            br#"{"name":"s","script":"true","input":[{"path":"s/in","storage_provder":"x"}]}"#,
        )
        .unwrap();
        assert_eq!(svc.warnings().len(), 1, "{:?}", svc.warnings());
    }

    #[test]
    fn normalize_prefixes_bare_paths_with_the_service_name() {
        let mut svc = Service::from_json(
            br#"{"name":"s","script":"true","input":[{"storage_provider":"minio","path":"in"}]}"#,
        )
        .unwrap();
        svc.normalize();
        assert_eq!(svc.input[0].path, "s/in");
        assert_eq!(svc.input[0].storage_provider, "minio.default");
    }

    #[test]
    fn redaction_hides_secret_values() {
        let fdl = parse_fdl(FDL, None).unwrap();
        let shown = serde_json::to_string(&fdl.services[0].redacted()).unwrap();
        assert!(!shown.contains("s3cret"));
        assert!(shown.contains("API_KEY"));
    }
}
