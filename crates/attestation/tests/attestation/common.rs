//! Test vectors and helpers shared by the test modules.

use cloister_attestation::{DcapCollateral, SnpEndorsements};
use time::OffsetDateTime;
use time::macros::datetime;

pub const SGX_QUOTE: &[u8] = include_bytes!("../../testdata/sgx/quote.bin");
pub const SGX_COLLATERAL: &[u8] = include_bytes!("../../testdata/sgx/collateral.json");
pub const TDX_QUOTE: &[u8] = include_bytes!("../../testdata/tdx/quote.bin");
pub const TDX_COLLATERAL: &[u8] = include_bytes!("../../testdata/tdx/collateral.json");
pub const TDX_OUTDATED_QUOTE: &[u8] = include_bytes!("../../testdata/tdx/quote-outdated-tcb.bin");
pub const TDX_OUTDATED_COLLATERAL: &[u8] = include_bytes!("../../testdata/tdx/collateral-outdated-tcb.json");
pub const SNP_REPORT_HEX: &[u8] = include_bytes!("../../testdata/snp/report-milan.hex");
pub const SNP_VCEK_DER: &[u8] = include_bytes!("../../testdata/snp/vcek-milan.der");
pub const SNP_CHAIN_PEM: &[u8] = include_bytes!("../../testdata/snp/cert-chain-milan.pem");
pub const SNP_VLEK_REPORT: &[u8] = include_bytes!("../../testdata/snp/report-vlek-milan.bin");
pub const SNP_VLEK_AUXBLOB: &[u8] = include_bytes!("../../testdata/snp/auxblob-vlek-milan.bin");
/// AMD's Milan ASK, ARK and ASVK, as AMD's KDS serves them.
pub const MILAN_ASK_ARK_ASVK: &[u8] = include_bytes!("../../testdata/snp/asvk/milan-ask-ark-asvk.pem");
pub const GENOA_ASK_ARK_ASVK: &[u8] = include_bytes!("../../testdata/snp/asvk/genoa-ask-ark-asvk.pem");
pub const TURIN_ASK_ARK_ASVK: &[u8] = include_bytes!("../../testdata/snp/asvk/turin-ask-ark-asvk.pem");

/// Inside every window PROVENANCE.md gives for the 2025 vectors.
pub const AT_2025: OffsetDateTime = datetime!(2025-07-01 00:00:00 UTC);
/// Inside the window of the outdated-TCB TDX vector.
pub const AT_2026: OffsetDateTime = datetime!(2026-03-01 00:00:00 UTC);
/// Inside the VLEK vector's certificate (2026-03-09 .. 2027-03-09) and the Milan VCEK's.
pub const AT_VLEK: OffsetDateTime = datetime!(2026-06-01 00:00:00 UTC);

pub fn collateral(json: &[u8]) -> DcapCollateral {
    DcapCollateral::from_json(json).expect("collateral vector parses")
}

pub fn snp_report() -> Vec<u8> {
    let text: Vec<u8> = SNP_REPORT_HEX
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    hex::decode(text).expect("SNP vector is hex")
}

/// The VLEK certificate of the VLEK vector: the one entry of its certificate table, which
/// starts after the entry and the terminator (48 bytes) and is 0x527 bytes long.
pub fn snp_vlek_der() -> Vec<u8> {
    SNP_VLEK_AUXBLOB[48..48 + 0x527].to_vec()
}

/// The certificates of a PEM bundle, DER, in order.
pub fn pem_ders(bundle: &[u8]) -> Vec<Vec<u8>> {
    pem::parse_many(bundle)
        .expect("PEM bundle")
        .into_iter()
        .map(pem::Pem::into_contents)
        .collect()
}

pub fn snp_endorsements(chain: bool) -> SnpEndorsements {
    SnpEndorsements::new(SNP_VCEK_DER, chain.then_some(SNP_CHAIN_PEM)).expect("VCEK parses")
}

/// A DCAP vector: quote, collateral and a time inside its window.
pub struct DcapCase {
    pub name: &'static str,
    pub quote: &'static [u8],
    pub collateral: &'static [u8],
    pub at: OffsetDateTime,
}

pub fn dcap_cases() -> [DcapCase; 3] {
    [
        DcapCase {
            name: "sgx",
            quote: SGX_QUOTE,
            collateral: SGX_COLLATERAL,
            at: AT_2025,
        },
        DcapCase {
            name: "tdx",
            quote: TDX_QUOTE,
            collateral: TDX_COLLATERAL,
            at: AT_2025,
        },
        DcapCase {
            name: "tdx-outdated",
            quote: TDX_OUTDATED_QUOTE,
            collateral: TDX_OUTDATED_COLLATERAL,
            at: AT_2026,
        },
    ]
}
