//! Integration tests of cloister-attestation against the real vectors in `testdata/`.

mod collect;
mod common;
mod dcap;
mod fuzz;
mod policy;
mod sim;
mod snp;
