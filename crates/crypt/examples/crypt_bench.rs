//! Throughput benchmark of the encrypted object format against raw AES-256-GCM.
//!
//! `cargo run --release -p cloister-crypt --example crypt_bench -- [SIZE_MIB] [ITERATIONS]`
//! runs 64 KiB, 256 KiB and 1 MiB chunks on one thread (defaults: 256 MiB, 3 iterations, best
//! kept), through the `Read`/`Write`, slice and in-place APIs, then file to file through
//! `encrypt_file`/`decrypt_file` on temporary files with one thread per available CPU.

fn main() -> Result<(), cloister_crypt::CryptError> {
    let mut args = std::env::args().skip(1);
    let size_mib: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(256);
    let iterations: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(3);
    for chunk in [64u32 << 10, 256 << 10, 1 << 20] {
        let report = cloister_crypt::bench::run(size_mib << 20, chunk, iterations)?;
        println!("{report}");
    }
    Ok(())
}
