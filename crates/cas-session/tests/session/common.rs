//! Shared fixtures.

use cloister_attestation::{
    Endorsements, EvidenceVerifier, SimPlatform, SimVerifier, VerifiedEvidence, sim_measurement,
};
use cloister_cas_session::{
    ClientKey, ImportResolver, SecretValue, Secrets, Session, SessionError, materialize_secrets,
    parse_session,
};
use time::OffsetDateTime;
use time::macros::datetime;

pub const NOW: OffsetDateTime = datetime!(2026-01-15 12:00:00 UTC);

pub const H64: &str = "1111111111111111111111111111111111111111111111111111111111111111";
pub const H96: &str =
    "222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222222";

/// A client key, the same for the same `n`.
pub fn key(n: u8) -> ClientKey {
    let public = ed25519_dalek::SigningKey::from_bytes(&[n; 32]).verifying_key();
    ClientKey::ed25519(public.as_bytes()).expect("valid key")
}

/// The owner of `hospital/inference` (the full example).
pub fn inference_owner() -> ClientKey {
    key(1)
}

/// The owner of `hospital/other`, to which the full example exports `server_cert`.
pub fn other_owner() -> ClientKey {
    key(2)
}

/// The simulated workload every sim test attests as.
pub fn sim_workload() -> [u8; 32] {
    sim_measurement(b"cloister-runtime")
}

/// A full example session using every feature.
pub fn full_example() -> String {
    let sim = hex::encode(sim_workload());
    let other = other_owner();
    format!(
        r#"# The hospital's inference session.
name: hospital/inference
version: "0.3"
access_policy:
  read: [CREATOR, "ed25519:d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"]
  update: [CREATOR]
security:
  attestation:
    mode: hardware
    tolerate: [simulation, outdated-tcb]
    ignore_advisories: [INTEL-SA-00615, intel-sa-00289]
services:
- name: model-runner
  command: python3 /app/run.py --key $$CLOISTER::model_key:hex$$ --token "$$CLOISTER::api_key$$"
  environment:
    API_KEY: "$$CLOISTER::api_key$$"
    MODEL_KEY_B64: "$$CLOISTER::model_key:base64$$"
    TLS_KEY: "$$CLOISTER::server_cert:privatekey$$"
    SIGNING_PUB: "$$CLOISTER::signing_key:publickey$$"
    FIXED: "$$CLOISTER::fixed_token$$"
  pwd: /app/$$CLOISTER::fixed_token$$
  attestation:
  - tee: sgx
    mrenclave: {H64}
    mrsigner: {H64}
    isvprodid: 1
    isvsvn_min: 2
  - tee: tdx
    mrtd: {H96}
    rtmr0: {H96}
    rtmr1: {H96}
    rtmr2: {H96}
    rtmr3: {H96}
  - tee: snp
    measurement: {H96}
    min_tcb: {{bootloader: 3, snp: 8, microcode: 115}}
    allow_smt: false
    policy: "0x0000000000030000"
    vmpl: 0
    host_data: {H64}
  - tee: sim
    measurement: {sim}
- name: auditor
  command: [/bin/audit, --ca, "$$CLOISTER::ca:crt$$"]
  attestation:
  - tee: sim
    measurement: {sim}
secrets:
- name: api_key
  kind: ascii
  size: 24
- name: model_key
  kind: binary
- name: fixed_token
  kind: ascii
  value: explicit-token
- name: fixed_blob
  kind: binary
  value: "AAECAw=="
- name: signing_key
  kind: private-key
  algorithm: ed25519
  export_public: true
- name: ca
  kind: x509-ca
  algorithm: p384
  common_name: Hospital CA
  valid_for: 3650d
  export_public: true
- name: server_cert
  kind: x509
  issuer: ca
  common_name: model-runner
  san: [model-runner.local, 10.0.0.1]
  valid_for: 365d
  export: [{{session: hospital/other, owner: "{other}"}}]
- name: shared_key
  kind: binary
  import: {{session: provider/models, secret: model_key}}
files:
- path: /etc/app/config.json
  content: '{{"key": "$$CLOISTER::api_key$$", "blob": "$$CLOISTER::fixed_blob:hex$$"}}'
  permission: "0640"
- path: /etc/app/tls/chain.pem
  content: "$$CLOISTER::server_cert:chain$$"
  services: [model-runner]
"#
    )
}

/// A small valid session: one sim service, one ascii secret.
pub fn minimal() -> String {
    let sim = hex::encode(sim_workload());
    format!(
        r#"name: a/b
security:
  attestation:
    tolerate: [simulation]
services:
- name: svc
  command: [run, "$$CLOISTER::k$$"]
  attestation:
  - tee: sim
    measurement: {sim}
secrets:
- name: k
  kind: ascii
"#
    )
}

pub fn parse(yaml: &str) -> Session {
    parse_session(yaml).unwrap_or_else(|e| panic!("session does not parse: {e}\n{yaml}"))
}

/// `base` with `from` replaced by `to`; fails the test if `from` does not occur, so that a
/// case can never pass by testing the unmodified text.
pub fn edit(base: &str, from: &str, to: &str) -> String {
    assert!(base.contains(from), "fixture does not contain {from:?}");
    base.replacen(from, to, 1)
}

/// Resolves no import.
pub struct NoImports;

impl ImportResolver for NoImports {
    fn resolve(&self, from: &str, secret: &str, _: &str, _: &str) -> Result<SecretValue, SessionError> {
        Err(SessionError::ImportRefused {
            session: from.into(),
            secret: secret.into(),
            reason: "no imports in this test".into(),
        })
    }
}

/// Resolves imports from a fixed set of exporting sessions, enforcing their export lists as
/// the CAS server does, for an importing session owned by `importer_owner`.
pub struct Exporters {
    pub exporters: Vec<(Session, Secrets)>,
    pub importer_owner: ClientKey,
}

impl Exporters {
    /// For an importer owned by [`inference_owner`].
    pub fn new(exporters: Vec<(Session, Secrets)>) -> Self {
        Self::owned_by(exporters, inference_owner())
    }

    pub fn owned_by(exporters: Vec<(Session, Secrets)>, importer_owner: ClientKey) -> Self {
        Exporters {
            exporters,
            importer_owner,
        }
    }
}

impl ImportResolver for Exporters {
    fn resolve(
        &self,
        from: &str,
        secret: &str,
        importing: &str,
        importing_hash: &str,
    ) -> Result<SecretValue, SessionError> {
        let (session, secrets) = self
            .exporters
            .iter()
            .find(|(s, _)| s.name == from)
            .ok_or_else(|| SessionError::ImportRefused {
                session: from.into(),
                secret: secret.into(),
                reason: "no such session".into(),
            })?;
        let importer = cloister_cas_session::Importer {
            session: importing,
            owner: &self.importer_owner,
            hash: importing_hash,
        };
        cloister_cas_session::check_export(session, secret, &importer)?;
        secrets.get(secret).cloned().ok_or_else(|| SessionError::Secret {
            name: secret.into(),
            reason: "not materialized".into(),
        })
    }
}

/// The exporter of `provider/models` used by the full example.
pub fn provider() -> (Session, Secrets) {
    let s = parse(&format!(
        r#"name: provider/models
secrets:
- name: model_key
  kind: binary
  size: 16
  export: [{{session: hospital/inference, owner: "{}"}}]
"#,
        inference_owner()
    ));
    let secrets = materialize_secrets(&s, None, &NoImports, NOW).expect("provider secrets");
    (s, secrets)
}

pub fn materialize(s: &Session) -> Secrets {
    materialize_secrets(s, None, &Exporters::new(vec![provider()]), NOW).unwrap_or_else(|e| panic!("{e}"))
}

/// Verified simulation evidence for `measurement`, from a platform in debug mode or not.
pub fn sim_evidence(measurement: [u8; 32], debug: bool) -> VerifiedEvidence {
    let platform = SimPlatform::from_seed([7; 32]).with_debug(debug);
    let evidence = platform.produce_evidence(&measurement, &[0x3c; 32], &[0x5a; 64]);
    SimVerifier::new([platform.public_key()])
        .verify(&evidence, &Endorsements::None, NOW)
        .expect("sim evidence verifies")
}
