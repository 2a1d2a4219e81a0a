//! Integration tests of cloister-cas-session, in one binary to keep link time low.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod access;
mod common;
mod counters;
mod evidence;
mod governance;
mod hash;
mod parse;
mod props;
mod render;
mod secrets;
mod snp;
