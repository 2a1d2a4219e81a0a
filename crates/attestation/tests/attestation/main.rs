//! Integration tests of cloister-attestation against the real vectors in `testdata/`.

mod collateral_source;
mod collect;
mod common;
mod dcap;
mod floor;
mod fuzz;
mod policy;
mod sim;
mod snp;
