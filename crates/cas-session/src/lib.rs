//! # cloister-cas-session
//!
//! The policy language of Cloister's configuration and attestation service (CAS), modelled on
//! SCONE CAS sessions v0.3: which code, identified by its TEE measurement, receives which
//! configuration and secrets.
//!
//! * [`parse_session`] reads YAML (unknown fields anywhere are errors that name the field's
//!   path), validates and normalizes it; [`Session::validate`] re-checks a stored session.
//! * [`Session::hash`] identifies a session version; [`Session::check_predecessor`] enforces
//!   that an update names the hash of the version it replaces.
//! * [`AccessPolicy::may_read`] / [`AccessPolicy::may_update`] decide who may read or
//!   update a session (see [Access](#access) for what a reader gets).
//! * [`materialize_secrets`] generates, carries over and imports secret values
//!   ([`Secrets`]); [`check_export`] is the exporter's side of an import.
//! * [`match_evidence`] decides whether verified evidence identifies a service;
//!   [`render_service`] then produces its [`ServiceConfig`], with placeholders replaced.
//! * [`secret_bytes`] (owner reads) and [`public_part`] (`export_public` reads) format a
//!   secret.
//!
//! ## Access
//!
//! The CAS records the key that created a session: the session's **owner**. Who gets what:
//!
//! * **Attested services** receive their rendered configuration, raw secret values included,
//!   through attestation only.
//! * The **owner** reads raw secret values and the session as submitted (explicit `value`s
//!   included), provided `access_policy.read` admits it (`CREATOR`, the default, does; a
//!   session whose `read` list leaves its creator out is readable by nobody raw). Every raw
//!   read is committed to the audit log before the value is returned.
//! * **Readers** (`access_policy.read`) who are not the owner — auditors — get the session
//!   with every explicit secret `value` removed (the answer says `redacted`; the hash is the
//!   stored one) and the public part ([`public_part`]) of secrets marked `export_public`;
//!   never a raw value. Literal text in `files` or `environment` is not redacted: secrets
//!   belong in `secrets`.
//! * **Updaters** (`access_policy.update`) may replace the session; the owner stays its
//!   creator. `update` is a list (any one principal listed suffices) or a board: a rule over
//!   signers (`all`, `at_least: N of`) with a veto list, met by approvals signed over the
//!   change ([`governance`]). A change is judged by the rules of the version it replaces.
//!
//! ## Exports and namespaces
//!
//! A secret is shared by its exporter listing the importer — its session name **and its
//! owner's key**, and optionally the importing versions' **hashes** — in `export`
//! ([`ExportTarget`]), or `"*"` for everyone; the importer names the exporter in `import`.
//! Pinned hashes make the exporter approve each version of the importer (every update of the
//! importer needs the exporter to pin its new hash first). The import is checked when the importer is written, and the
//! exporter's current state is checked again whenever the CAS loads the importer to attest
//! it, so removing an entry from `export` revokes it at the importer's next write or
//! attestation.
//!
//! The server also guards session names: the **namespace** of `a/b/c` is its first segment
//! `a`. The key that creates the first session of a namespace owns it (claimed in the same
//! transaction as the session), or a CAS administrator declares its owner; only the
//! namespace's owner creates sessions in it. Namespaces that held sessions before the server
//! recorded owners belong to their sessions' creator when there is exactly one; otherwise an
//! administrator must declare them before anything new is created there.
//!
//! ## Example
//!
//! ```yaml
//! name: hospital/inference
//! security:
//!   attestation:
//!     tolerate: [outdated-tcb]
//! services:
//! - name: model-runner
//!   command: python3 /app/run.py --key $$CLOISTER::model_key:hex$$
//!   environment: {API_KEY: "$$CLOISTER::api_key$$"}
//!   attestation:
//!   - tee: sgx
//!     mrenclave: 9f8e…(64 hex)
//!   - tee: snp
//!     measurement: 7a1e…(96 hex)
//!     min_tcb: {bootloader: 3, snp: 8, microcode: 115}
//!     allow_smt: false
//! secrets:
//! - name: api_key
//!   kind: ascii
//! - name: model_key
//!   kind: binary
//!   size: 32
//! files:
//! - path: /etc/app/config.json
//!   content: '{"key": "$$CLOISTER::api_key$$"}'
//! ```
//!
//! ## Placeholders
//!
//! `$$CLOISTER::name$$` or `$$CLOISTER::name:format$$` in a command word, an environment
//! value, `pwd` or a file's content. Formats: none (the kind's natural form: the characters
//! of an `ascii` secret, base64 of a `binary` one, PEM for keys and certificates), `hex`,
//! `base64`, `crt`, `chain`, `privatekey`, `publickey`; [`secret_bytes`] has the full table.
//! Validation rejects placeholders naming unknown secrets or formats that do not apply to
//! the secret's kind. There is no escape: the text `$$CLOISTER::` always starts a
//! placeholder.
//!
//! ## Normalization and the canonical form
//!
//! [`parse_session`] returns the session in normalized form, and
//! [`Session::canonical_bytes`] normalizes a copy before encoding, so the canonical bytes do
//! not depend on how a session was written or obtained. Normalization:
//!
//! * makes defaults explicit: `version: "0.3"`, `access_policy` `[CREATOR]`, attestation
//!   `mode: hardware`; on `snp` alternatives `min_tcb` with all five components (0 where not
//!   given), `allow_migration_agent: false` and `allow_smt: true`;
//!   `ascii`/`binary` `size` (32, or the explicit value's length);
//!   `algorithm: p256` for key kinds; for certificates `common_name` (the secret's name) and
//!   `valid_for` (`365d`, or `3650d` for `x509-ca`, written in the largest exact unit);
//!   file `permission` as four octal digits (`"0600"` by default);
//! * writes each value one way: hex in lowercase (an `snp` `policy` as 16 digits without
//!   `0x`), principals as `CREATOR`/`ANY`/`NONE`/
//!   `ed25519:<hex>`/`p256:<hex of the compressed point>`, advisory IDs in upper case, a
//!   `command` string as the list of words it splits into, binary values in padded
//!   standard base64, `rsa` as `rsa-3072`;
//! * orders what has no meaningful order: services and secrets by name, files by path,
//!   counters by name, principals, export lists, a file's and a counter's `services` sorted
//!   and de-duplicated, `tolerate`
//!   in [`cloister_attestation::Tolerance`] order. An export entry is `"*"` or the object
//!   `{"owner": KEY, "session": NAME}` with the key in the principal form above; `"*"` sorts
//!   first, then entries by session name and owner key. The order of attestation alternatives
//!   (reported by [`match_evidence`]), of command words and of SANs is kept.
//!
//! The canonical bytes are the normalized session serialized as JSON with the field names
//! of the YAML form, then written canonically: no insignificant whitespace, object keys
//! sorted by their UTF-8 bytes, strings escaped as `serde_json` escapes them (`"`, `\` and
//! control characters only; other characters as UTF-8), integers in decimal. Absent
//! optional values (`predecessor`, `pwd`, unused alternative or secret fields, such as an
//! `snp` alternative's `policy`, `vmpl` and `host_data` when not pinned, a service's
//! `max_runs`, a counter's `max`) and an empty `counters` list are omitted;
//! every other field, including empty lists and `false`, is present. [`Session::hash`] is
//! the lowercase hex SHA-256 of these bytes; it covers `predecessor`, so the versions of a
//! session form a hash chain.
//!
//! ## Secrets across updates
//!
//! [`materialize_secrets`] documents the exact carry-over rule. In short: imported secrets
//! always follow their exporter, explicit values are used as given, and a generated secret
//! keeps its value while its name, kind and generation parameters (`size`, `algorithm`) are
//! unchanged; certificates keep their key but are re-issued when their subject, validity,
//! issuer (or the issuer's certificate) change or when they have expired.
//!
//! ## Counters
//!
//! A service's `max_runs: N` caps how many times it may obtain its configuration: the CAS
//! counts every attestation of the service (a run) in the transaction that releases it and
//! refuses the one after the Nth. A session's `counters` ([`CounterSpec`]) are incremented by
//! its attested services. Both are kept per session name, so an update keeps their values
//! (raising `max_runs` allows the difference); the CAS keeps them monotonic, even against a
//! restored older copy of its store.
//!
//! ## Attestation mode `none`
//!
//! `security.attestation.mode: none` lets the server release configuration without
//! evidence. It is for development only and is accepted only together with
//! `tolerate: [simulation]`; services may then have no attestation alternatives.

#![forbid(unsafe_code)]

mod access;
mod error;
pub mod governance;
mod keys;
mod matching;
mod model;
mod placeholder;
mod render;
mod secrets;
mod session;
mod validate;

pub use access::{AccessPolicy, ClientKey, Principal};
pub use error::SessionError;
pub use governance::{Board, Members, Rule, UpdatePolicy, VetoWindow, parse_update_policy};
pub use matching::match_evidence;
pub use model::{
    AttestationAlternative, AttestationMode, AttestationPolicy, CounterSpec, ExportTarget, FileSpec,
    ImportSpec, Importer, KeyAlgorithm, Lifetime, SESSION_VERSION, SecretKind, SecretSpec, Security,
    ServiceSpec, Session, SnpTcbFloor,
};
pub use render::{RenderedFile, ServiceConfig, render_service};
pub use secrets::{
    ImportResolver, SecretValue, Secrets, check_export, materialize_secrets, public_part, refresh_imports,
    secret_bytes,
};
pub use session::{parse_session, session_name};
