//! Cloister's configuration and attestation service (CAS): the party that decides from
//! hardware evidence whether a workload runs the expected code in a genuine TEE, and only then
//! releases its configuration and secrets.
//!
//! - [`server`]: the service (operator socket + TLS network port).
//! - [`client`]: the network client (pinned TLS, signed requests, attestation) and the operator
//!   client.
//! - [`auth`]: client keys and request signatures; [`tls`]: the CAS identity and pinning;
//!   [`seal`]: HPKE sealing of released configuration; [`nonce`]: attestation nonces.
//! - [`protocol`]: the wire types.

pub mod auth;
pub mod client;
mod dcap_collateral;
pub mod nonce;
pub mod protocol;
pub mod seal;
pub mod server;
pub mod tls;
pub mod volumes;
