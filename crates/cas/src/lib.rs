//! Cloister's configuration and attestation service (CAS): the party that decides from
//! hardware evidence whether a workload runs the expected code in a genuine TEE, and only then
//! releases its configuration and secrets. This crate is the server; what clients and
//! workloads need is in `cloister-cas-client`.
//!
//! - [`server`]: the service (operator socket + TLS network port); [`embedded`]: the same
//!   service started inside another process for development (`cloister server --with-cas`).
//! - [`auth`]: verification of signed requests; [`tls`]: the CAS's TLS identity;
//!   [`nonce`]: attestation nonces; [`volumes`]: volume records and grants; which DCAP
//!   collateral an attestation is judged with is decided in `dcap_collateral`; how refused
//!   attestations are audited without letting a flood grow the log, in `refusals`; released
//!   configurations are sealed with AWS-LC's HPKE in `seal`.

pub mod auth;
mod dcap_collateral;
pub mod embedded;
mod names;
pub mod nonce;
mod refusals;
mod seal;
pub mod server;
pub mod tls;
pub mod volumes;
