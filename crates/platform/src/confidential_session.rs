//! The data owner's half of a confidential service: its FDL `confidential` block compiled into
//! the CAS session that decides everything its jobs do, so the platform never holds a secret or
//! key of it, nor decides what it runs.
//!
//! This runs on the owner's trusted computer (`cloister apply`), never on the platform's host:
//! the session carries the FDL's secrets and the input identity's secret key. [`compile`] gives
//! the session, the service as the platform may see it, and what the owner must know (the
//! input recipient, the runtime's measurement, the launch register of a confidential VM).

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cloister_attestation::{Tee, Tolerance};
use cloister_cas_client::pin::TlsError;
use cloister_cas_client::protocol::InitData;
use cloister_cas_session::{
    AccessPolicy, AttestationAlternative, AttestationMode, AttestationPolicy, FileSpec, SESSION_VERSION,
    SecretKind, SecretSpec, Security, ServiceSpec, Session, SessionError,
};
use cloister_crypt::Identity;
use cloister_runtime::OutputTarget;
use cloister_runtime::tee::{RUNTIME_ID, SCRIPT_PATH, reserved};

use crate::fdl::{Service, StorageIo};

/// Why a service's session cannot be built. Messages name the service and the FDL field, never
/// a secret.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// The service has no `confidential` block.
    #[error("{0} is not confidential")]
    NotConfidential(String),
    /// Outputs could leave only in plaintext.
    #[error("service {0}: confidential outputs need at least one recipient (confidential.output_recipients)")]
    NoOutputRecipient(String),
    /// A variable of the FDL uses a name the runtime reserves for itself.
    #[error("service {service}: the variable {variable} is reserved for the runtime")]
    ReservedVariable {
        /// The service.
        service: String,
        /// The variable.
        variable: String,
    },
    /// Under simulation the FDL pins a measurement, which is the runtime's own.
    #[error(
        "service {0}: under simulation the measurement is the runtime's own; drop \
         confidential.measurement and confidential.attestation"
    )]
    SimulationPins(String),
    /// A TDX service gives one measurement where MRTD and four RTMRs are needed.
    #[error(
        "service {0}: a TDX measurement is several registers: give confidential.attestation with \
         mrtd and rtmr0 … rtmr3 instead of confidential.measurement"
    )]
    TdxMeasurement(String),
    /// `confidential.attestation` is not an attestation alternative.
    #[error("service {service}: confidential.attestation: {source}")]
    Attestation {
        /// The service.
        service: String,
        /// What the alternative's parser said.
        source: serde_json::Error,
    },
    /// Input paths or output targets could not be written down.
    #[error("{0}")]
    Targets(serde_json::Error),
    /// The session the service compiles to is not a valid one.
    #[error("service {service}: {source}")]
    Invalid {
        /// The service.
        service: String,
        /// What the session's validation said.
        source: SessionError,
    },
    /// The CAS pin, session and service do not make init-data.
    #[error("{0}")]
    InitData(TlsError),
}

/// What applying a confidential service builds.
#[derive(Debug)]
pub struct CompiledService {
    /// The service's CAS session, validated, without `predecessor` (the caller sets it from
    /// the CAS's current version).
    pub session: Session,
    /// The service as the platform may see it: secrets removed, the input recipient noted.
    pub platform_service: Service,
    /// The recipient data owners encrypt inputs to.
    pub input_recipient: String,
    /// The measurement the session expects of the runtime (hex).
    pub measurement: String,
    /// For TDX and SEV-SNP: the launch configuration register the service's VMs must be
    /// started with.
    pub launch_register: Option<LaunchRegister>,
}

/// A launch configuration register and the value it must hold: the digest of the service's
/// init-data (its CAS, session and service), which the runtime and the CAS both check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchRegister {
    /// `MRCONFIGID` (TDX) or `HOST_DATA` (SEV-SNP).
    pub name: &'static str,
    /// Its value, hex.
    pub value: String,
}

/// Compiles a confidential `service`, whose input identity is `input_identity`, into its CAS
/// session and the rest of what `cloister apply` sends and shows.
pub fn compile(service: &Service, input_identity: &Identity) -> Result<CompiledService, CompileError> {
    let c = confidential(service)?;
    let session = service_session(service, input_identity)?;
    let measurement = session.services[0]
        .attestation
        .first()
        .map(primary_measurement)
        .unwrap_or_default();
    let init = InitData::new(
        &c.cas_pin,
        &c.session,
        c.service.as_deref().unwrap_or(&service.name),
    )
    .map_err(CompileError::InitData)?;
    let register = match c.tee {
        Tee::Tdx => Some("MRCONFIGID"),
        Tee::Snp => Some("HOST_DATA"),
        Tee::Sgx | Tee::Sim => None,
    };
    let launch_register = register.and_then(|name| {
        init.config_id(c.tee).ok().flatten().map(|digest| LaunchRegister {
            name,
            value: hex::encode(digest),
        })
    });
    let input_recipient = input_identity.public().to_string();
    let mut platform_service = service.clone();
    platform_service.environment.secrets.clear();
    if let Some(conf) = &mut platform_service.confidential {
        conf.input_recipient = Some(input_recipient.clone());
    }
    Ok(CompiledService {
        session,
        platform_service,
        input_recipient,
        measurement,
        launch_register,
    })
}

fn confidential(service: &Service) -> Result<&crate::fdl::Confidential, CompileError> {
    service
        .confidential
        .as_ref()
        .ok_or_else(|| CompileError::NotConfidential(service.name.clone()))
}

/// The CAS session of a confidential service (without `predecessor`), validated.
///
/// The session holds everything that decides what the job does, so that the platform cannot
/// change it: the service's script as an injected file and the command that runs it with the
/// FDL's arguments; the environment (FDL secrets become session secrets behind placeholders);
/// the input identity's secret; the output recipients; the input paths and output targets; the
/// volume key (generated by the CAS); and the runtime's expected measurement for the TEE.
pub fn service_session(service: &Service, input_identity: &Identity) -> Result<Session, CompileError> {
    let c = confidential(service)?;
    if !service.output.is_empty() && c.output_recipients.is_empty() {
        return Err(CompileError::NoOutputRecipient(service.name.clone()));
    }
    let cas_service = c.service.clone().unwrap_or_else(|| service.name.clone());

    let mut environment: BTreeMap<String, String> = service.environment.variables.clone();
    let mut secrets = vec![SecretSpec {
        value: Some(B64.encode(*input_identity.secret_bytes())),
        ..secret("input-key", SecretKind::Binary)
    }];
    for (name, value) in &service.environment.secrets {
        let secret_name = format!("env-{name}");
        secrets.push(SecretSpec {
            value: Some(value.clone()),
            ..secret(&secret_name, SecretKind::Ascii)
        });
        environment.insert(name.clone(), format!("$$CLOISTER::{secret_name}$$"));
    }
    if let Some(variable) = environment.keys().find(|k| reserved::is_reserved(k)) {
        return Err(CompileError::ReservedVariable {
            service: service.name.clone(),
            variable: variable.clone(),
        });
    }
    environment.insert(reserved::INPUT_KEY.into(), "$$CLOISTER::input-key:hex$$".into());
    environment.insert(reserved::OUTPUT_RECIPIENTS.into(), c.output_recipients.join(" "));
    if !c.input_senders.is_empty() {
        environment.insert(reserved::INPUT_SENDERS.into(), c.input_senders.join(" "));
    }
    let paths = |list: &[StorageIo]| {
        let targets: Vec<OutputTarget> = list.iter().map(StorageIo::target).collect();
        serde_json::to_string(&targets).map_err(CompileError::Targets)
    };
    environment.insert(reserved::INPUTS.into(), paths(&service.input)?);
    environment.insert(reserved::OUTPUTS.into(), paths(&service.output)?);
    if !c.volumes.is_empty() {
        // Generated by the CAS and kept across session updates: only attested runtimes see it.
        secrets.push(SecretSpec {
            size: Some(32),
            ..secret("volume-key", SecretKind::Binary)
        });
        environment.insert(reserved::VOLUME_KEY.into(), "$$CLOISTER::volume-key:hex$$".into());
        environment.insert(reserved::VOLUMES.into(), c.volumes.join(","));
    }

    if c.approver {
        environment.insert(reserved::APPROVER.into(), "1".into());
    }

    let mut command = vec!["/bin/sh".to_owned(), SCRIPT_PATH.to_owned()];
    command.extend(c.args.iter().cloned());
    let session = Session {
        name: c.session.clone(),
        version: SESSION_VERSION.to_owned(),
        predecessor: None,
        access_policy: AccessPolicy::default(),
        security: Security {
            attestation: AttestationPolicy {
                mode: AttestationMode::Hardware,
                tolerate: if c.tee == Tee::Sim {
                    [Tolerance::Simulation].into()
                } else {
                    Default::default()
                },
                ignore_advisories: Vec::new(),
            },
        },
        services: vec![ServiceSpec {
            name: cas_service.clone(),
            command,
            environment,
            pwd: None,
            attestation: vec![attestation_alternative(service)?],
            max_runs: None,
        }],
        secrets,
        files: vec![FileSpec {
            path: SCRIPT_PATH.to_owned(),
            content: service.script.clone(),
            permission: "0500".to_owned(),
            services: vec![cas_service],
        }],
        counters: Vec::new(),
    };
    session.validate().map_err(|source| CompileError::Invalid {
        service: service.name.clone(),
        source,
    })?;
    Ok(session)
}

/// The simulation measurement of `cloister-runtime`, which the session of a simulated service
/// expects: the same for every service, since what a service runs comes from its session.
fn runtime_sim_measurement() -> [u8; 32] {
    cloister_attestation::sim_measurement(RUNTIME_ID.as_bytes())
}

fn secret(name: &str, kind: SecretKind) -> SecretSpec {
    SecretSpec {
        name: name.to_owned(),
        kind,
        size: None,
        value: None,
        algorithm: None,
        issuer: None,
        common_name: None,
        san: Vec::new(),
        valid_for: None,
        export: Vec::new(),
        import: None,
        export_public: false,
    }
}

/// The evidence the session accepts: the runtime's measurement (the same for every service,
/// since the script comes from the session), plus what the FDL's `attestation` adds.
fn attestation_alternative(service: &Service) -> Result<AttestationAlternative, CompileError> {
    let c = confidential(service)?;
    let mut fields: serde_json::Map<String, serde_json::Value> = c.attestation.clone().into_iter().collect();
    fields.insert("tee".into(), serde_json::Value::String(c.tee.to_string()));
    let measured = |field: &str, fields: &mut serde_json::Map<String, serde_json::Value>| {
        if let Some(m) = &c.measurement {
            fields.insert(field.into(), serde_json::Value::String(m.to_ascii_lowercase()));
        }
    };
    match c.tee {
        Tee::Sim => {
            if c.measurement.is_some() || !c.attestation.is_empty() {
                return Err(CompileError::SimulationPins(service.name.clone()));
            }
            fields.insert(
                "measurement".into(),
                serde_json::Value::String(hex::encode(runtime_sim_measurement())),
            );
        }
        Tee::Sgx => measured("mrenclave", &mut fields),
        Tee::Snp => measured("measurement", &mut fields),
        Tee::Tdx if c.measurement.is_some() => {
            return Err(CompileError::TdxMeasurement(service.name.clone()));
        }
        Tee::Tdx => {}
    }
    serde_json::from_value(serde_json::Value::Object(fields)).map_err(|source| CompileError::Attestation {
        service: service.name.clone(),
        source,
    })
}

/// The value shown as "the measurement" of an alternative.
fn primary_measurement(alt: &AttestationAlternative) -> String {
    [&alt.measurement, &alt.mrenclave, &alt.mrtd, &alt.mrsigner]
        .into_iter()
        .find_map(|m| m.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(extra: &str) -> Service {
        let yaml = format!(
            r#"
name: svc
image: debian
script: "echo hi > $TMP_OUTPUT_DIR/x\n"
confidential:
  cas: https://cas.example:8081
  cas_pin: sha256:{pin}
  session: team/svc
  output_recipients: [{owner}]
  args: [one, "$$CLOISTER::env-TOKEN$$"]
{extra}
environment:
  variables: {{LABEL: x}}
  secrets: {{TOKEN: t0ken-value}}
input:
  - path: bucket/in
    suffix: [.txt]
output:
  - path: bucket/out
"#,
            pin = "ab".repeat(32),
            owner = Identity::generate().public(),
        );
        let fdl = format!(
            "functions:\n  oscar:\n  - c:\n{}",
            yaml.lines().map(|l| format!("      {l}\n")).collect::<String>()
        );
        let mut file = crate::fdl::parse_fdl(&fdl, None).unwrap();
        file.services.remove(0)
    }

    #[test]
    fn the_session_carries_the_script_command_secrets_and_paths() {
        let mut service = service("  tee: sim");
        service.confidential.as_mut().unwrap().volumes = vec!["state".into()];
        let id = Identity::generate();
        let session = service_session(&service, &id).unwrap();
        let svc = &session.services[0];
        assert_eq!(svc.name, "svc");
        assert_eq!(
            svc.command,
            ["/bin/sh", SCRIPT_PATH, "one", "$$CLOISTER::env-TOKEN$$"]
        );
        assert_eq!(session.files[0].path, SCRIPT_PATH);
        assert_eq!(session.files[0].content, service.script);
        // The FDL secret moved into the session, behind a placeholder.
        assert_eq!(svc.environment["TOKEN"], "$$CLOISTER::env-TOKEN$$");
        let token = session.secrets.iter().find(|s| s.name == "env-TOKEN").unwrap();
        assert_eq!(token.value.as_deref(), Some("t0ken-value"));
        assert_eq!(svc.environment["LABEL"], "x");
        assert_eq!(
            svc.environment[reserved::OUTPUT_RECIPIENTS],
            service.confidential.as_ref().unwrap().output_recipients[0]
        );
        let inputs: Vec<OutputTarget> = serde_json::from_str(&svc.environment[reserved::INPUTS]).unwrap();
        assert!(inputs[0].contains("bucket", "in/a.txt"));
        assert!(!inputs[0].contains("bucket", "in/a.bin"));
        let outputs: Vec<OutputTarget> = serde_json::from_str(&svc.environment[reserved::OUTPUTS]).unwrap();
        assert_eq!(
            (outputs[0].bucket.as_str(), outputs[0].folder.as_str()),
            ("bucket", "out")
        );
        assert_eq!(svc.environment[reserved::VOLUMES], "state");
        assert!(
            session
                .secrets
                .iter()
                .any(|s| s.name == "volume-key" && s.value.is_none())
        );
        // Simulation: the runtime's measurement, tolerated explicitly.
        assert_eq!(
            svc.attestation[0].measurement.as_deref(),
            Some(hex::encode(cloister_tee_runtime::sim_measurement()).as_str())
        );
        assert!(
            session
                .security
                .attestation
                .tolerate
                .contains(&Tolerance::Simulation)
        );
    }

    #[test]
    fn an_approver_is_marked_in_its_session_and_nowhere_else() {
        let id = Identity::generate();
        let plain = service_session(&service("  tee: sim"), &id).unwrap();
        assert!(!plain.services[0].environment.contains_key(reserved::APPROVER));
        let approver = service_session(&service("  tee: sim\n  approver: true"), &id).unwrap();
        assert_eq!(approver.services[0].environment[reserved::APPROVER], "1");
        // Part of the session, so of its hash: a session cannot become an approver unseen.
        assert_ne!(plain.hash(), approver.hash());
        // The FDL's own variables cannot switch it on.
        let mut sneaky = service("  tee: sim");
        sneaky
            .environment
            .variables
            .insert(reserved::APPROVER.into(), "1".into());
        assert!(matches!(
            service_session(&sneaky, &id),
            Err(CompileError::ReservedVariable { .. })
        ));
    }

    #[test]
    fn the_measurement_is_the_runtimes_whatever_the_script() {
        let id = Identity::generate();
        let a = service_session(&service("  tee: sim"), &id).unwrap();
        let mut other = service("  tee: sim");
        other.script = "cat $INPUT_FILE_PATH > /tmp/stolen\n".into();
        let b = service_session(&other, &id).unwrap();
        assert_eq!(a.services[0].attestation, b.services[0].attestation);
        // … while the session, and so its hash, differs with the script.
        assert_ne!(a.hash(), b.hash());
    }

    #[test]
    fn hardware_tees_take_their_pins_from_the_fdl() {
        let id = Identity::generate();
        let sgx = service_session(
            &service(&format!("  tee: sgx\n  measurement: {}", "AA".repeat(32))),
            &id,
        )
        .unwrap();
        assert_eq!(sgx.services[0].attestation[0].mrenclave, Some("aa".repeat(32)));
        assert!(sgx.security.attestation.tolerate.is_empty());
        let snp = service_session(
            &service(&format!("  tee: snp\n  measurement: {}", "bb".repeat(48))),
            &id,
        )
        .unwrap();
        assert_eq!(snp.services[0].attestation[0].measurement, Some("bb".repeat(48)));
        let rtmrs: String = (0..4)
            .map(|i| format!("    rtmr{i}: {}\n", "0c".repeat(48)))
            .collect();
        let tdx = service_session(
            &service(&format!(
                "  tee: tdx\n  attestation:\n    mrtd: {}\n{rtmrs}",
                "0d".repeat(48)
            )),
            &id,
        )
        .unwrap();
        let alt = &tdx.services[0].attestation[0];
        assert_eq!(alt.mrtd, Some("0d".repeat(48)));
        assert_eq!(alt.rtmr3, Some("0c".repeat(48)));
        // A single TDX "measurement" is refused: MRTD alone covers only the firmware.
        let err = service_session(
            &service(&format!("  tee: tdx\n  measurement: {}", "0d".repeat(48))),
            &id,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("rtmr0"), "{err}");
        // Simulation takes no pins of its own.
        let err = service_session(
            &service(&format!("  tee: sim\n  measurement: {}", "aa".repeat(32))),
            &id,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("runtime's own"), "{err}");
        // Unknown attestation fields are named.
        let err = service_session(&service("  tee: sgx\n  attestation: {mrenclav: x}"), &id)
            .unwrap_err()
            .to_string();
        assert!(err.contains("mrenclav"), "{err}");
    }

    #[test]
    fn reserved_variables_and_missing_recipients_are_refused() {
        let id = Identity::generate();
        let mut reserved_var = service("  tee: sim");
        reserved_var
            .environment
            .variables
            .insert(reserved::OUTPUTS.into(), "[]".into());
        assert!(
            service_session(&reserved_var, &id)
                .unwrap_err()
                .to_string()
                .contains("reserved")
        );
        let mut no_recipient = service("  tee: sim");
        no_recipient
            .confidential
            .as_mut()
            .unwrap()
            .output_recipients
            .clear();
        assert!(
            service_session(&no_recipient, &id)
                .unwrap_err()
                .to_string()
                .contains("recipient")
        );
    }

    /// The session builder names the runtime by the contract's identity; the runtime measures
    /// itself by its own: they must agree, or no simulated job would ever attest.
    #[test]
    fn the_expected_simulation_measurement_is_the_runtimes_own() {
        assert_eq!(runtime_sim_measurement(), cloister_tee_runtime::sim_measurement());
    }

    /// What `apply` sends and shows, per TEE: the platform's copy keeps no secret, the input
    /// recipient is the identity's, and confidential VMs get their launch register (the
    /// init-data digest: SHA-384 for TDX's MRCONFIGID, SHA-256 for SEV-SNP's HOST_DATA).
    #[test]
    fn compiling_binds_the_launch_register_of_confidential_vms() {
        let id = Identity::generate();
        let rtmrs: String = (0..4)
            .map(|i| format!("    rtmr{i}: {}\n", "0c".repeat(48)))
            .collect();
        let cases = [
            (
                "  tee: sim".to_owned(),
                None,
                hex::encode(runtime_sim_measurement()),
            ),
            (
                format!("  tee: sgx\n  measurement: {}", "aa".repeat(32)),
                None,
                "aa".repeat(32),
            ),
            (
                format!(
                    "  tee: tdx\n  attestation:\n    mrtd: {}\n{rtmrs}",
                    "0d".repeat(48)
                ),
                Some(("MRCONFIGID", 96)),
                "0d".repeat(48),
            ),
            (
                format!("  tee: snp\n  measurement: {}", "bb".repeat(48)),
                Some(("HOST_DATA", 64)),
                "bb".repeat(48),
            ),
        ];
        for (extra, register, measurement) in cases {
            let service = service(&extra);
            let compiled = compile(&service, &id).unwrap();
            assert_eq!(compiled.measurement, measurement, "{extra}");
            assert_eq!(compiled.input_recipient, id.public().to_string());
            assert!(compiled.platform_service.environment.secrets.is_empty());
            assert_eq!(
                compiled.platform_service.environment.variables,
                service.environment.variables
            );
            let conf = compiled.platform_service.confidential.as_ref().unwrap();
            assert_eq!(
                conf.input_recipient.as_deref(),
                Some(compiled.input_recipient.as_str())
            );
            assert_eq!(compiled.session, service_session(&service, &id).unwrap());
            match (register, &compiled.launch_register) {
                (None, None) => {}
                (Some((name, hex_len)), Some(got)) => {
                    assert_eq!((got.name, got.value.len()), (name, hex_len), "{extra}");
                    let tee = conf.tee;
                    let init = InitData::new(&conf.cas_pin, &conf.session, "svc").unwrap();
                    assert_eq!(got.value, hex::encode(init.config_id(tee).unwrap().unwrap()));
                    // Another session is another launch.
                    let other = InitData::new(&conf.cas_pin, "team/other", "svc").unwrap();
                    assert_ne!(got.value, hex::encode(other.config_id(tee).unwrap().unwrap()));
                }
                (expected, got) => panic!("{extra}: expected {expected:?}, got {got:?}"),
            }
        }
        let mut plain = service("  tee: sim");
        plain.confidential = None;
        assert!(matches!(
            compile(&plain, &id),
            Err(CompileError::NotConfidential(name)) if name == "svc"
        ));
    }
}
