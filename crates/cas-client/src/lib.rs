//! The client side of Cloister's configuration and attestation service (CAS): what a workload
//! inside a TEE and an owner's computer need to talk to it, and nothing of the server.
//!
//! - [`protocol`]: the wire types, the [`protocol::InitData`] a confidential workload is launched
//!   for and the [`protocol::ReleasedConfig`] it receives.
//! - [`client`]: the network client (pinned TLS, signed requests, the attestation flow) and the
//!   operator's client on the CAS host's socket, on hyper's bare HTTP/1 client (this crate runs
//!   inside the TEE, so it carries no general-purpose HTTP stack).
//! - [`governance`]: the changes boards approve, signed votes, proposals and history.
//! - [`sign`]: client keys and request signatures; [`pin`]: pinning the CAS identity;
//!   [`seal`]: HPKE sealing of released configuration.

pub mod client;
pub mod governance;
pub mod pin;
pub mod protocol;
pub mod seal;
pub mod sign;
mod transport;
