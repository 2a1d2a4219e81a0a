//! Semantic validation and normalization of sessions.
//!
//! Validation runs on the session as written (so that list indices in error paths match the
//! YAML), and treats absent optional fields as their defaults. Normalization then makes
//! defaults explicit and puts everything whose order carries no meaning into a fixed order;
//! it never changes what a valid session means.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cloister_attestation::{Tee, Tolerance};

use crate::error::SessionError;
use crate::model::{
    AttestationAlternative, AttestationMode, CounterSpec, ExportTarget, FileSpec, KeyAlgorithm, Lifetime,
    SESSION_VERSION, SecretKind, SecretSpec, ServiceSpec, Session, SnpTcbFloor,
};
use crate::placeholder::{self, Piece};

/// Default length of generated `ascii` and `binary` secrets.
pub(crate) const DEFAULT_SECRET_SIZE: u32 = 32;
/// Largest `ascii`/`binary` secret, generated or explicit.
pub(crate) const MAX_SECRET_SIZE: u32 = 64 * 1024;
/// Default validity of `x509` certificates.
pub(crate) const DEFAULT_LEAF_LIFETIME: Lifetime = Lifetime::days(365);
/// Default validity of `x509-ca` certificates.
pub(crate) const DEFAULT_CA_LIFETIME: Lifetime = Lifetime::days(3650);
const MAX_SESSION_NAME: usize = 128;
const MAX_SERVICE_NAME: usize = 64;
const MAX_SECRET_NAME: usize = 128;
const MAX_FILE_CONTENT: usize = 1 << 20;
const MAX_PATH: usize = 4096;
const MAX_SANS: usize = 100;
/// Importer versions one export entry may pin: enough for a transition or a few variants.
const MAX_PINNED_HASHES: usize = 64;

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> SessionError {
    SessionError::invalid(field, reason)
}

fn is_lower_word(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

/// Checks a session name: `/`-separated segments of `[a-z0-9][a-z0-9-_.]*`, at most 128
/// characters in all.
pub(crate) fn check_session_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_SESSION_NAME {
        return Err(format!("longer than {MAX_SESSION_NAME} characters"));
    }
    if !name.split('/').all(is_lower_word) {
        return Err(format!(
            "invalid session name '{name}' (segments of [a-z0-9][a-z0-9-_.]* separated by '/')"
        ));
    }
    Ok(())
}

/// Secret names appear inside placeholders, so they exclude `:` and `$`.
pub(crate) fn is_secret_name(s: &str) -> bool {
    let mut chars = s.chars();
    s.len() <= MAX_SECRET_NAME
        && matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

pub(crate) fn is_service_name(s: &str) -> bool {
    s.len() <= MAX_SERVICE_NAME && is_lower_word(s)
}

fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_hex_of_len(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').enumerate().all(|(i, label)| {
            (label == "*" && i == 0)
                || (!label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        })
}

/// Parses a file permission: up to four octal digits, optionally prefixed with `0o`.
pub(crate) fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.trim().strip_prefix("0o").unwrap_or(s.trim());
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(format!("invalid permission '{s}' (octal, e.g. \"0600\")"));
    }
    u32::from_str_radix(digits, 8).map_err(|e| format!("invalid permission '{s}': {e}"))
}

/// Length of an explicit value, when it is well-formed for its kind.
fn explicit_len(kind: SecretKind, value: &str) -> Option<usize> {
    match kind {
        SecretKind::Ascii => Some(value.len()),
        SecretKind::Binary => B64.decode(value.trim()).ok().map(|v| v.len()),
        _ => None,
    }
}

struct Ctx<'a> {
    secrets: BTreeMap<&'a str, &'a SecretSpec>,
}

impl Ctx<'_> {
    /// Checks that every placeholder in `text` names a secret of this session with a format
    /// valid for its kind.
    fn check_template(&self, field: &str, text: &str) -> Result<(), SessionError> {
        if text.contains('\0') {
            return Err(invalid(field, "contains a NUL character"));
        }
        for piece in placeholder::parse(text).map_err(|r| invalid(field, r))? {
            if let Piece::Placeholder { name, format } = piece {
                let spec = self.secrets.get(name).ok_or_else(|| {
                    invalid(field, format!("placeholder refers to unknown secret '{name}'"))
                })?;
                if !format.valid_for(spec.kind) {
                    return Err(invalid(
                        field,
                        format!(
                            "format '{format}' is not valid for secret '{name}' of kind {}",
                            spec.kind
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

pub(crate) fn validate(s: &Session) -> Result<(), SessionError> {
    check_session_name(&s.name).map_err(|r| invalid("name", r))?;
    if s.version != SESSION_VERSION {
        return Err(invalid(
            "version",
            format!(
                "unsupported version '{}' (expected \"{SESSION_VERSION}\")",
                s.version
            ),
        ));
    }
    if let Some(p) = &s.predecessor
        && !is_hex_of_len(p, 64)
    {
        return Err(invalid("predecessor", "must be a session hash (64 hex digits)"));
    }
    crate::access::validate_list("access_policy.read", &s.access_policy.read)?;
    s.access_policy.update.validate("access_policy.update")?;
    let att = &s.security.attestation;
    for (i, a) in att.ignore_advisories.iter().enumerate() {
        let a = a.trim();
        let ok = a == "*"
            || (!a.is_empty()
                && a.len() <= 64
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        if !ok {
            return Err(invalid(
                format!("security.attestation.ignore_advisories[{i}]"),
                "not an advisory ID (such as INTEL-SA-00615) or \"*\"",
            ));
        }
    }
    if att.mode == AttestationMode::None && !att.tolerate.contains(&Tolerance::Simulation) {
        return Err(invalid(
            "security.attestation.mode",
            "mode none (configuration without evidence) is for development only and requires \
             tolerate: [simulation]",
        ));
    }

    let mut ctx = Ctx {
        secrets: BTreeMap::new(),
    };
    for (i, spec) in s.secrets.iter().enumerate() {
        if ctx.secrets.insert(spec.name.as_str(), spec).is_some() {
            return Err(invalid(
                format!("secrets[{i}].name"),
                format!("duplicate secret name '{}'", spec.name),
            ));
        }
    }
    for (i, spec) in s.secrets.iter().enumerate() {
        validate_secret(s, &ctx, i, spec)?;
    }

    let mut service_names = BTreeSet::new();
    for (i, svc) in s.services.iter().enumerate() {
        if !service_names.insert(svc.name.as_str()) {
            return Err(invalid(
                format!("services[{i}].name"),
                format!("duplicate service name '{}'", svc.name),
            ));
        }
        validate_service(s, &ctx, i, svc)?;
    }

    let mut counter_names = BTreeSet::new();
    for (i, counter) in s.counters.iter().enumerate() {
        if !counter_names.insert(counter.name.as_str()) {
            return Err(invalid(
                format!("counters[{i}].name"),
                format!("duplicate counter name '{}'", counter.name),
            ));
        }
        validate_counter(&service_names, i, counter)?;
    }

    let mut paths = BTreeSet::new();
    for (i, file) in s.files.iter().enumerate() {
        if !paths.insert(file.path.as_str()) {
            return Err(invalid(
                format!("files[{i}].path"),
                format!("duplicate file path '{}'", file.path),
            ));
        }
        validate_file(&ctx, &service_names, i, file)?;
    }
    Ok(())
}

fn validate_counter(services: &BTreeSet<&str>, i: usize, counter: &CounterSpec) -> Result<(), SessionError> {
    let f = |field: &str| format!("counters[{i}].{field}");
    if !is_service_name(&counter.name) {
        return Err(invalid(
            f("name"),
            format!(
                "invalid counter name '{}' ([a-z0-9][a-z0-9-_.]*, at most {MAX_SERVICE_NAME} characters)",
                counter.name
            ),
        ));
    }
    for (j, svc) in counter.services.iter().enumerate() {
        if !services.contains(svc.as_str()) {
            return Err(invalid(
                f(&format!("services[{j}]")),
                format!("unknown service '{svc}'"),
            ));
        }
    }
    if counter.max == Some(0) {
        return Err(invalid(f("max"), "must be at least 1"));
    }
    Ok(())
}

fn validate_secret(s: &Session, ctx: &Ctx<'_>, i: usize, spec: &SecretSpec) -> Result<(), SessionError> {
    let f = |field: &str| format!("secrets[{i}].{field}");
    if !is_secret_name(&spec.name) {
        return Err(invalid(
            f("name"),
            format!(
                "invalid secret name '{}' ([A-Za-z0-9_][A-Za-z0-9_.-]*, at most {MAX_SECRET_NAME} characters)",
                spec.name
            ),
        ));
    }
    let kind = spec.kind;
    // Each field that the kind (or an import) does not use is an error rather than being
    // ignored: a silently ignored `size` or `issuer` is a policy that does not do what it says.
    let present = [
        ("size", spec.size.is_some()),
        ("value", spec.value.is_some()),
        ("algorithm", spec.algorithm.is_some()),
        ("issuer", spec.issuer.is_some()),
        ("common_name", spec.common_name.is_some()),
        ("san", !spec.san.is_empty()),
        ("valid_for", spec.valid_for.is_some()),
    ];
    if let Some(import) = &spec.import {
        if let Some((field, _)) = present.iter().find(|(_, p)| *p) {
            return Err(invalid(
                f(field),
                "not allowed for an imported secret (the exporting session defines it)",
            ));
        }
        check_session_name(&import.session).map_err(|r| invalid(f("import.session"), r))?;
        if import.session == s.name {
            return Err(invalid(
                f("import.session"),
                "a session cannot import from itself",
            ));
        }
        if !is_secret_name(&import.secret) {
            return Err(invalid(f("import.secret"), "invalid secret name"));
        }
        if !spec.export.is_empty() {
            return Err(invalid(
                f("export"),
                "an imported secret cannot be re-exported (only its owner may share it)",
            ));
        }
    } else {
        let allowed: &[&str] = match kind {
            SecretKind::Ascii | SecretKind::Binary => &["size", "value"],
            SecretKind::PrivateKey => &["algorithm"],
            SecretKind::X509 | SecretKind::X509Ca => {
                &["algorithm", "issuer", "common_name", "san", "valid_for"]
            }
        };
        if let Some((field, _)) = present.iter().find(|(name, p)| *p && !allowed.contains(name)) {
            return Err(invalid(f(field), format!("not allowed for kind {kind}")));
        }
    }

    if let Some(size) = spec.size
        && !(1..=MAX_SECRET_SIZE).contains(&size)
    {
        return Err(invalid(
            f("size"),
            format!("must be between 1 and {MAX_SECRET_SIZE}"),
        ));
    }
    if let Some(value) = &spec.value {
        // The value itself never goes into the message.
        let len = match kind {
            SecretKind::Ascii if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) => {
                return Err(invalid(
                    f("value"),
                    "an ascii value must consist of printable ASCII characters (value not shown)",
                ));
            }
            _ => explicit_len(kind, value)
                .ok_or_else(|| invalid(f("value"), "a binary value must be base64 (value not shown)"))?,
        };
        if len == 0 || len > MAX_SECRET_SIZE as usize {
            return Err(invalid(
                f("value"),
                format!("length must be between 1 and {MAX_SECRET_SIZE}"),
            ));
        }
        if let Some(size) = spec.size
            && size as usize != len
        {
            return Err(invalid(
                f("size"),
                format!("{size} does not match the explicit value's length {len}"),
            ));
        }
    }
    if let Some(issuer) = &spec.issuer {
        match ctx.secrets.get(issuer.as_str()) {
            None => return Err(invalid(f("issuer"), format!("unknown secret '{issuer}'"))),
            Some(_) if *issuer == spec.name => {
                return Err(invalid(
                    f("issuer"),
                    "a certificate cannot name itself as issuer (omit issuer for self-signed)",
                ));
            }
            Some(other) if other.kind != SecretKind::X509Ca => {
                return Err(invalid(
                    f("issuer"),
                    format!("secret '{issuer}' is of kind {}, not x509-ca", other.kind),
                ));
            }
            Some(_) => {}
        }
        // Follow the issuer chain: it must end at a self-signed (or imported) CA.
        let mut seen = BTreeSet::from([spec.name.as_str()]);
        let mut next = Some(issuer.as_str());
        while let Some(name) = next {
            if !seen.insert(name) {
                return Err(invalid(f("issuer"), "the issuer chain forms a cycle"));
            }
            next = ctx.secrets.get(name).and_then(|s| s.issuer.as_deref());
        }
    }
    if let Some(cn) = &spec.common_name
        && (cn.is_empty() || cn.chars().count() > 64 || cn.chars().any(char::is_control))
    {
        return Err(invalid(
            f("common_name"),
            "must be 1 to 64 characters without control characters",
        ));
    }
    if spec.san.len() > MAX_SANS {
        return Err(invalid(f("san"), format!("at most {MAX_SANS} names")));
    }
    for (j, san) in spec.san.iter().enumerate() {
        if san.parse::<IpAddr>().is_err() && !is_dns_name(san) {
            return Err(invalid(
                f(&format!("san[{j}]")),
                format!("'{san}' is neither a DNS name nor an IP address"),
            ));
        }
    }
    for (j, target) in spec.export.iter().enumerate() {
        if let ExportTarget::Session { session, hashes, .. } = target {
            check_session_name(session).map_err(|r| invalid(f(&format!("export[{j}].session")), r))?;
            if hashes.len() > MAX_PINNED_HASHES {
                return Err(invalid(
                    f(&format!("export[{j}].hashes")),
                    format!("at most {MAX_PINNED_HASHES} hashes"),
                ));
            }
            for (k, hash) in hashes.iter().enumerate() {
                if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(invalid(
                        f(&format!("export[{j}].hashes[{k}]")),
                        format!(
                            "'{hash}' is not a session hash (64 hex digits, as `cloister cas session verify` prints)"
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

fn validate_service(s: &Session, ctx: &Ctx<'_>, i: usize, svc: &ServiceSpec) -> Result<(), SessionError> {
    let f = |field: &str| format!("services[{i}].{field}");
    if !is_service_name(&svc.name) {
        return Err(invalid(
            f("name"),
            format!(
                "invalid service name '{}' ([a-z0-9][a-z0-9-_.]*, at most {MAX_SERVICE_NAME} characters)",
                svc.name
            ),
        ));
    }
    for (j, word) in svc.command.iter().enumerate() {
        ctx.check_template(&f(&format!("command[{j}]")), word)?;
    }
    for (name, value) in &svc.environment {
        let field = f(&format!("environment.{name}"));
        if !is_env_name(name) {
            return Err(invalid(field, "invalid variable name ([A-Za-z_][A-Za-z0-9_]*)"));
        }
        ctx.check_template(&field, value)?;
    }
    if let Some(pwd) = &svc.pwd {
        if !pwd.starts_with('/') {
            return Err(invalid(f("pwd"), "must be an absolute path"));
        }
        ctx.check_template(&f("pwd"), pwd)?;
    }
    let att = &s.security.attestation;
    if svc.attestation.is_empty() && att.mode == AttestationMode::Hardware {
        return Err(invalid(
            f("attestation"),
            "at least one alternative is required (unless security.attestation.mode is none)",
        ));
    }
    for (j, alt) in svc.attestation.iter().enumerate() {
        validate_alternative(&f(&format!("attestation[{j}]")), alt, &att.tolerate)?;
    }
    if svc.max_runs == Some(0) {
        return Err(invalid(
            f("max_runs"),
            "must be at least 1 (a service that may never run needs no entry)",
        ));
    }
    Ok(())
}

fn validate_alternative(
    prefix: &str,
    alt: &AttestationAlternative,
    tolerate: &BTreeSet<Tolerance>,
) -> Result<(), SessionError> {
    let f = |field: &str| format!("{prefix}.{field}");
    let hex_fields: [(&str, &Option<String>); 8] = [
        ("mrenclave", &alt.mrenclave),
        ("mrsigner", &alt.mrsigner),
        ("mrtd", &alt.mrtd),
        ("rtmr0", &alt.rtmr0),
        ("rtmr1", &alt.rtmr1),
        ("rtmr2", &alt.rtmr2),
        ("rtmr3", &alt.rtmr3),
        ("measurement", &alt.measurement),
    ];
    let (allowed, hex_len): (&[&str], usize) = match alt.tee {
        Tee::Sgx => (&["mrenclave", "mrsigner", "isvprodid", "isvsvn_min"], 64),
        Tee::Tdx => (&["mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3"], 96),
        Tee::Snp => (
            &[
                "measurement",
                "min_tcb",
                "allow_migration_agent",
                "allow_smt",
                "policy",
                "vmpl",
                "host_data",
            ],
            96,
        ),
        Tee::Sim => (&["measurement"], 64),
    };
    let present = hex_fields.iter().map(|(name, v)| (*name, v.is_some())).chain([
        ("isvprodid", alt.isvprodid.is_some()),
        ("isvsvn_min", alt.isvsvn_min.is_some()),
        ("min_tcb", alt.min_tcb.is_some()),
        ("allow_migration_agent", alt.allow_migration_agent.is_some()),
        ("allow_smt", alt.allow_smt.is_some()),
        ("policy", alt.policy.is_some()),
        ("vmpl", alt.vmpl.is_some()),
        ("host_data", alt.host_data.is_some()),
    ]);
    for (name, is_present) in present {
        if is_present && !allowed.contains(&name) {
            return Err(invalid(f(name), format!("not valid for tee {}", alt.tee)));
        }
    }
    for (name, value) in hex_fields {
        if let Some(v) = value
            && !is_hex_of_len(v, hex_len)
        {
            return Err(invalid(
                f(name),
                format!(
                    "must be {hex_len} hex digits ({} bytes), got {} characters",
                    hex_len / 2,
                    v.len()
                ),
            ));
        }
    }
    if let Some(v) = &alt.host_data
        && !is_hex_of_len(v, 64)
    {
        return Err(invalid(
            f("host_data"),
            format!("must be 64 hex digits (32 bytes), got {} characters", v.len()),
        ));
    }
    if let Some(p) = &alt.policy {
        parse_snp_policy(p).map_err(|r| invalid(f("policy"), r))?;
    }
    if let Some(vmpl) = alt.vmpl
        && vmpl > 3
    {
        return Err(invalid(f("vmpl"), format!("{vmpl} is not a VMPL (0 to 3)")));
    }
    match alt.tee {
        Tee::Sgx if alt.mrenclave.is_none() && (alt.mrsigner.is_none() || alt.isvprodid.is_none()) => {
            return Err(invalid(
                prefix,
                "an sgx alternative needs mrenclave, or mrsigner and isvprodid",
            ));
        }
        Tee::Tdx => {
            // MRTD measures only the firmware: without the RTMRs any kernel and image the host
            // boots on that firmware would match.
            for (name, value) in [
                ("mrtd", &alt.mrtd),
                ("rtmr0", &alt.rtmr0),
                ("rtmr1", &alt.rtmr1),
                ("rtmr2", &alt.rtmr2),
                ("rtmr3", &alt.rtmr3),
            ] {
                if value.is_none() {
                    return Err(invalid(
                        f(name),
                        "required: a tdx alternative pins mrtd and rtmr0 to rtmr3 (MRTD covers \
                         only the firmware; the RTMRs cover the kernel, its command line and \
                         the image)",
                    ));
                }
            }
        }
        Tee::Snp | Tee::Sim if alt.measurement.is_none() => {
            return Err(invalid(prefix, "needs measurement"));
        }
        _ => {}
    }
    if alt.tee == Tee::Sim && !tolerate.contains(&Tolerance::Simulation) {
        return Err(invalid(
            f("tee"),
            "a sim alternative can never match unless security.attestation.tolerate contains simulation",
        ));
    }
    Ok(())
}

/// Parses an `snp` `policy` pin: 16 hex digits, optionally prefixed with `0x`, so that the
/// value `cloister attest` prints can be pasted as it is.
pub(crate) fn parse_snp_policy(text: &str) -> Result<u64, String> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    if !is_hex_of_len(digits, 16) {
        return Err(format!(
            "'{text}' is not a guest policy: 16 hex digits, optionally prefixed with 0x"
        ));
    }
    u64::from_str_radix(digits, 16).map_err(|e| format!("'{text}' is not a guest policy: {e}"))
}

fn validate_file(
    ctx: &Ctx<'_>,
    services: &BTreeSet<&str>,
    i: usize,
    file: &FileSpec,
) -> Result<(), SessionError> {
    let f = |field: &str| format!("files[{i}].{field}");
    let p = &file.path;
    let segments_ok = p.strip_prefix('/').is_some_and(|rest| {
        rest.split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
    });
    if !segments_ok || p.len() > MAX_PATH || p.contains('\0') {
        return Err(invalid(
            f("path"),
            "must be an absolute path without empty, '.' or '..' segments",
        ));
    }
    parse_mode(&file.permission).map_err(|r| invalid(f("permission"), r))?;
    for (j, svc) in file.services.iter().enumerate() {
        if !services.contains(svc.as_str()) {
            return Err(invalid(
                f(&format!("services[{j}]")),
                format!("unknown service '{svc}'"),
            ));
        }
    }
    if file.content.len() > MAX_FILE_CONTENT {
        return Err(invalid(
            f("content"),
            format!("larger than {MAX_FILE_CONTENT} bytes"),
        ));
    }
    ctx.check_template(&f("content"), &file.content)
}

/// Makes defaults explicit and orders everything whose order has no meaning. Infallible:
/// fields that do not parse are left as they are for validation to report.
pub(crate) fn normalize(s: &mut Session) {
    if let Some(p) = &mut s.predecessor {
        p.make_ascii_lowercase();
    }
    s.access_policy.normalize();
    let advisories = &mut s.security.attestation.ignore_advisories;
    for a in advisories.iter_mut() {
        *a = a.trim().to_ascii_uppercase();
    }
    advisories.sort();
    advisories.dedup();

    s.services.sort_by(|a, b| a.name.cmp(&b.name));
    for svc in &mut s.services {
        // Alternative order is kept: match_evidence reports the index of the first match.
        for alt in &mut svc.attestation {
            for v in [
                &mut alt.mrenclave,
                &mut alt.mrsigner,
                &mut alt.mrtd,
                &mut alt.rtmr0,
                &mut alt.rtmr1,
                &mut alt.rtmr2,
                &mut alt.rtmr3,
                &mut alt.measurement,
                &mut alt.host_data,
            ]
            .into_iter()
            .flatten()
            {
                v.make_ascii_lowercase();
            }
            if alt.tee == Tee::Snp {
                normalize_snp(alt);
            }
        }
    }

    s.secrets.sort_by(|a, b| a.name.cmp(&b.name));
    for spec in &mut s.secrets {
        normalize_secret(spec);
    }

    s.counters.sort_by(|a, b| a.name.cmp(&b.name));
    for counter in &mut s.counters {
        counter.services.sort();
        counter.services.dedup();
    }

    s.files.sort_by(|a, b| a.path.cmp(&b.path));
    for file in &mut s.files {
        if let Ok(mode) = parse_mode(&file.permission) {
            file.permission = format!("{mode:04o}");
        }
        file.services.sort();
        file.services.dedup();
    }
}

/// The SEV-SNP rules' defaults, written out (what `match_evidence` applies when they are
/// absent), and the policy pin as 16 lowercase hex digits.
fn normalize_snp(alt: &mut AttestationAlternative) {
    alt.min_tcb.get_or_insert_with(SnpTcbFloor::default);
    alt.allow_migration_agent.get_or_insert(false);
    alt.allow_smt.get_or_insert(true);
    if let Some(p) = &mut alt.policy
        && let Ok(value) = parse_snp_policy(p)
    {
        *p = format!("{value:016x}");
    }
}

fn normalize_secret(spec: &mut SecretSpec) {
    for target in &mut spec.export {
        if let ExportTarget::Session { hashes, .. } = target {
            for hash in hashes.iter_mut() {
                hash.make_ascii_lowercase();
            }
            hashes.sort();
            hashes.dedup();
        }
    }
    spec.export.sort();
    spec.export.dedup();
    if spec.import.is_some() {
        return;
    }
    match spec.kind {
        SecretKind::Ascii | SecretKind::Binary => {
            if spec.kind == SecretKind::Binary
                && let Some(v) = &mut spec.value
                && let Ok(bytes) = B64.decode(v.trim())
            {
                *v = B64.encode(bytes);
            }
            if spec.size.is_none() {
                let len = spec.value.as_deref().and_then(|v| explicit_len(spec.kind, v));
                spec.size = Some(match len {
                    Some(len) => u32::try_from(len).unwrap_or(u32::MAX),
                    None => DEFAULT_SECRET_SIZE,
                });
            }
        }
        SecretKind::PrivateKey => {
            spec.algorithm.get_or_insert(KeyAlgorithm::default());
        }
        SecretKind::X509 | SecretKind::X509Ca => {
            spec.algorithm.get_or_insert(KeyAlgorithm::default());
            if spec.common_name.is_none() {
                spec.common_name = Some(spec.name.clone());
            }
            spec.valid_for.get_or_insert(if spec.kind == SecretKind::X509Ca {
                DEFAULT_CA_LIFETIME
            } else {
                DEFAULT_LEAF_LIFETIME
            });
        }
    }
}
