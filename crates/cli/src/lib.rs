//! The `cloister` command's client half as a library: the REST and S3 client and the exit codes,
//! shared with the benchmark and audit tools (`cloister-bench`), which drive a real server the
//! way the command does.

pub mod client;
