//! Times DCAP verification of the test vectors: dcap-qvl's full path against the cached path.
//!
//! `cargo run --release -p cloister-attestation --example dcap_timing`

use std::time::Instant;

use cloister_attestation::{DcapCollateral, DcapVerifier, Endorsements, EvidenceVerifier};
use time::macros::datetime;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cases = [
        (
            "sgx",
            &include_bytes!("../testdata/sgx/quote.bin")[..],
            &include_bytes!("../testdata/sgx/collateral.json")[..],
            datetime!(2025-07-01 00:00 UTC),
        ),
        (
            "tdx",
            &include_bytes!("../testdata/tdx/quote.bin")[..],
            &include_bytes!("../testdata/tdx/collateral.json")[..],
            datetime!(2025-07-01 00:00 UTC),
        ),
    ];
    for (name, quote, json, at) in cases {
        let e = Endorsements::Dcap(DcapCollateral::from_json(json)?);
        for (path, v, n) in [
            ("reference", DcapVerifier::reference(), 300u32),
            ("cached", DcapVerifier::new(), 5000),
        ] {
            v.verify(quote, &e, at)?;
            let start = Instant::now();
            for _ in 0..n {
                v.verify(quote, &e, at)?;
            }
            let per = start.elapsed() / n;
            println!(
                "{name} {path:9}: {per:?} per verification ({:.0}/s on one core)",
                1.0 / per.as_secs_f64()
            );
        }
        // Two threads sharing one cached verifier, as a CAS on two cores would.
        let v = DcapVerifier::new();
        v.verify(quote, &e, at)?;
        let n = 5000u32;
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..n {
                        let _ = v.verify(quote, &e, at);
                    }
                });
            }
        });
        let elapsed = start.elapsed();
        println!(
            "{name} cached, 2 threads: {:.0} verifications/s",
            f64::from(2 * n) / elapsed.as_secs_f64()
        );
    }
    Ok(())
}
