//! Integration tests of cloister-attestation against the real vectors in `testdata/`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod collateral_source;
mod collect;
mod common;
mod dcap;
mod floor;
mod fuzz;
mod policy;
mod sim;
mod snp;
