//! Matching verified evidence against a service's attestation alternatives.

use cloister_attestation::{Policy, SnpDetails, Tee, TeeDetails, VerifiedEvidence};

use crate::model::{AttestationAlternative, Session};
use crate::validate::parse_snp_policy;

/// Guest POLICY bit 16: SMT is allowed (SEV-SNP ABI spec, table "GUEST_POLICY").
const POLICY_SMT: u64 = 1 << 16;
/// Guest POLICY bit 18: a migration agent may be associated with the guest.
const POLICY_MIGRATE_MA: u64 = 1 << 18;

/// Decides whether `evidence` (already verified as authentic) identifies service `service`.
///
/// Returns the index of the first alternative that matches, or one human-readable reason per
/// alternative, such as `alternative 0 (sgx): mrenclave mismatch: expected …, got …`.
///
/// An alternative matches when the evidence comes from its TEE, every field it names is equal
/// (`isvsvn_min` is a lower bound; hex is compared case-insensitively), the SEV-SNP rules of an
/// `snp` alternative hold (each REPORTED_TCB component at least `min_tcb`'s, no MIGRATE_MA
/// unless `allow_migration_agent`, no SMT when `allow_smt` is false, and the pinned `policy`,
/// `vmpl` and `host_data`; absent rules take their defaults) and the session's
/// `security.attestation` policy accepts the evidence: it is evaluated by
/// [`cloister_attestation::Policy::evaluate`] with the session's `tolerate` and
/// `ignore_advisories`, so simulation evidence needs `simulation`, debug evidence needs
/// `debug-mode`, and non-`UpToDate` TCB statuses need their tolerances and advisories. The
/// policy is applied in `mode: none` as well: evidence that is presented is always judged.
///
/// The caller must also check the evidence's report data binding (nonce and key) and its
/// freshness; this function looks only at identity and TCB.
pub fn match_evidence(
    session: &Session,
    service: &str,
    evidence: &VerifiedEvidence,
) -> Result<usize, Vec<String>> {
    let svc = session
        .service(service)
        .ok_or_else(|| vec![format!("unknown service '{service}'")])?;
    if svc.attestation.is_empty() {
        return Err(vec![format!(
            "service '{service}' lists no attestation alternatives"
        )]);
    }
    let att = &session.security.attestation;
    let policy = Policy {
        tolerate: att.tolerate.clone(),
        ignore_advisories: att.ignore_advisories.clone(),
        expected_measurement: None,
        expected_report_data: None,
    };
    let policy_reasons = policy.evaluate(evidence).reasons;
    let mut failures = Vec::with_capacity(svc.attestation.len());
    for (i, alt) in svc.attestation.iter().enumerate() {
        let mut reasons = identity_mismatches(alt, evidence);
        // A TEE mismatch says everything; TCB reasons about another TEE's evidence would only
        // confuse.
        if alt.tee == evidence.summary.tee {
            reasons.extend(policy_reasons.iter().cloned());
        }
        if reasons.is_empty() {
            return Ok(i);
        }
        failures.push(format!("alternative {i} ({}): {}", alt.tee, reasons.join("; ")));
    }
    Err(failures)
}

fn compare_hex(name: &str, expected: Option<&String>, actual: &str, out: &mut Vec<String>) {
    if let Some(expected) = expected
        && !expected.eq_ignore_ascii_case(actual)
    {
        out.push(format!(
            "{name} mismatch: expected {}, got {actual}",
            expected.to_ascii_lowercase()
        ));
    }
}

fn identity_mismatches(alt: &AttestationAlternative, evidence: &VerifiedEvidence) -> Vec<String> {
    let s = &evidence.summary;
    let mut out = Vec::new();
    if alt.tee != s.tee {
        out.push(format!("evidence is from {}, not {}", s.tee, alt.tee));
        return out;
    }
    match (&s.details, alt.tee) {
        (TeeDetails::Sgx(d), Tee::Sgx) => {
            compare_hex("mrenclave", alt.mrenclave.as_ref(), &d.mrenclave, &mut out);
            compare_hex("mrsigner", alt.mrsigner.as_ref(), &d.mrsigner, &mut out);
            if let Some(expected) = alt.isvprodid
                && expected != d.isv_prod_id
            {
                out.push(format!(
                    "isvprodid mismatch: expected {expected}, got {}",
                    d.isv_prod_id
                ));
            }
            if let Some(min) = alt.isvsvn_min
                && d.isv_svn < min
            {
                out.push(format!("isvsvn {} is below isvsvn_min {min}", d.isv_svn));
            }
        }
        (TeeDetails::Tdx(d), Tee::Tdx) => {
            compare_hex("mrtd", alt.mrtd.as_ref(), &d.mrtd, &mut out);
            compare_hex("rtmr0", alt.rtmr0.as_ref(), &d.rtmr0, &mut out);
            compare_hex("rtmr1", alt.rtmr1.as_ref(), &d.rtmr1, &mut out);
            compare_hex("rtmr2", alt.rtmr2.as_ref(), &d.rtmr2, &mut out);
            compare_hex("rtmr3", alt.rtmr3.as_ref(), &d.rtmr3, &mut out);
        }
        (TeeDetails::Snp(d), Tee::Snp) => {
            compare_hex("measurement", alt.measurement.as_ref(), &s.measurement, &mut out);
            snp_mismatches(alt, d, &mut out);
        }
        (TeeDetails::Sim(_), Tee::Sim) => {
            compare_hex("measurement", alt.measurement.as_ref(), &s.measurement, &mut out);
        }
        _ => out.push(format!("evidence details do not belong to tee {}", alt.tee)),
    }
    out
}

/// The SEV-SNP rules of an `snp` alternative. Absent rules take the defaults normalization
/// writes out, so a session that was never normalized is judged the same way.
fn snp_mismatches(alt: &AttestationAlternative, d: &SnpDetails, out: &mut Vec<String>) {
    let floor = alt.min_tcb.unwrap_or_default();
    let tcb = &d.reported_tcb;
    for (name, value, min) in [
        ("bootloader", tcb.bootloader, floor.bootloader),
        ("tee", tcb.tee, floor.tee),
        ("snp", tcb.snp, floor.snp),
        ("microcode", tcb.microcode, floor.microcode),
    ] {
        if value < min {
            out.push(format!(
                "REPORTED_TCB {name} SPL {value} is below min_tcb.{name} {min}"
            ));
        }
    }
    if floor.fmc > 0 {
        match tcb.fmc {
            Some(fmc) if fmc >= floor.fmc => {}
            Some(fmc) => out.push(format!(
                "REPORTED_TCB fmc SPL {fmc} is below min_tcb.fmc {}",
                floor.fmc
            )),
            None => out.push(format!(
                "REPORTED_TCB has no fmc SPL (a {} part, before Turin) but min_tcb.fmc is {}",
                d.generation.as_deref().unwrap_or("pre-Turin"),
                floor.fmc
            )),
        }
    }

    let Some(policy) = d.guest_policy() else {
        out.push(format!("guest policy '{}' is not a 64-bit value", d.policy));
        return;
    };
    if policy & POLICY_MIGRATE_MA != 0 && !alt.allow_migration_agent.unwrap_or(false) {
        out.push(format!(
            "guest policy {policy:#018x} allows a migration agent (MIGRATE_MA, bit 18), which can \
             export the guest's memory (allow_migration_agent is false)"
        ));
    }
    if policy & POLICY_SMT != 0 && !alt.allow_smt.unwrap_or(true) {
        out.push(format!(
            "guest policy {policy:#018x} allows SMT (bit 16) but allow_smt is false"
        ));
    }
    if let Some(pin) = &alt.policy {
        match parse_snp_policy(pin) {
            Ok(expected) if expected == policy => {}
            Ok(expected) => out.push(format!(
                "policy mismatch: expected {expected:#018x}, got {policy:#018x}"
            )),
            Err(reason) => out.push(format!("policy: {reason}")),
        }
    }
    if let Some(vmpl) = alt.vmpl
        && vmpl != d.vmpl
    {
        out.push(format!("vmpl mismatch: expected {vmpl}, got {}", d.vmpl));
    }
    compare_hex("host_data", alt.host_data.as_ref(), &d.host_data, out);
}
