//! Property tests: no input makes a parser or verifier panic, and the two DCAP paths agree on
//! mutated quotes.

use std::sync::OnceLock;

use cloister_attestation::{
    DcapCollateral, DcapVerifier, Endorsements, EvidenceVerifier, SimPlatform, SimVerifier, SnpEndorsements,
    SnpVerifier, Verifier, appraise, decode_input, detect, inspect,
};
use proptest::prelude::*;

use crate::common::*;

struct Fixtures {
    sgx: Endorsements,
    tdx: Endorsements,
    snp: Endorsements,
    sim_key: [u8; 32],
    cached: DcapVerifier,
    reference: DcapVerifier,
}

fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| Fixtures {
        sgx: Endorsements::Dcap(collateral(SGX_COLLATERAL)),
        tdx: Endorsements::Dcap(collateral(TDX_COLLATERAL)),
        snp: Endorsements::Snp(snp_endorsements(false)),
        sim_key: SimPlatform::from_seed([1; 32]).public_key(),
        cached: DcapVerifier::new(),
        reference: DcapVerifier::reference(),
    })
}

fn all_verifiers_on(bytes: &[u8]) {
    let f = fixtures();
    let _ = inspect(bytes);
    let _ = decode_input(bytes);
    let _ = detect(bytes);
    for e in [&f.sgx, &f.tdx, &f.snp, &Endorsements::None] {
        let _ = f.cached.verify(bytes, e, AT_2025);
        let _ = SnpVerifier::new().verify(bytes, e, AT_2025);
        let _ = SimVerifier::new([f.sim_key]).verify(bytes, e, AT_2025);
        let _ = appraise(&Verifier::new(), bytes, e, AT_2025, Some(&Default::default()));
    }
}

/// A copy of `base` with some bytes replaced and possibly truncated or extended.
fn mutate(base: &[u8], edits: &[(usize, u8)], cut: Option<usize>, extra: &[u8]) -> Vec<u8> {
    let mut m = base.to_vec();
    for &(pos, byte) in edits {
        let i = pos % m.len();
        m[i] = byte;
    }
    if let Some(cut) = cut {
        m.truncate(cut % (m.len() + 1));
    }
    m.extend_from_slice(extra);
    m
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        all_verifiers_on(&bytes);
    }

    #[test]
    fn arbitrary_hex_text_never_panics(text in "[0-9a-fA-F \n]{0,600}") {
        all_verifiers_on(text.as_bytes());
    }

    #[test]
    fn headers_with_random_tails_never_panic(
        which in 0usize..4,
        tail in proptest::collection::vec(any::<u8>(), 0..1500),
    ) {
        // Valid headers make the parsers go deeper than random bytes would.
        let head: &[u8] = match which {
            0 => &SGX_QUOTE[..48],
            1 => &TDX_QUOTE[..48],
            2 => &TDX_OUTDATED_QUOTE[..54],
            _ => b"CLSIMATT\x01\x00",
        };
        let mut bytes = head.to_vec();
        bytes.extend_from_slice(&tail);
        all_verifiers_on(&bytes);
    }

    #[test]
    fn endorsement_parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let _ = DcapCollateral::from_json(&bytes);
        let _ = SnpEndorsements::new(&bytes, Some(&bytes));
        let _ = SnpEndorsements::new(SNP_VCEK_DER, Some(&bytes));
    }
}

proptest! {
    // Each case runs dcap-qvl's full verification; fewer cases keep the suite fast in debug.
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_quotes_never_panic_and_both_paths_agree(
        which in 0usize..3,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in proptest::option::weighted(0.2, any::<usize>()),
        extra in proptest::collection::vec(any::<u8>(), 0..3),
    ) {
        let f = fixtures();
        let (quote, e, at) = match which {
            0 => (SGX_QUOTE, &f.sgx, AT_2025),
            1 => (TDX_QUOTE, &f.tdx, AT_2025),
            _ => (TDX_OUTDATED_QUOTE, &f.tdx, AT_2025),
        };
        let m = mutate(quote, &edits, cut, &extra);
        let _ = inspect(&m);
        let a = f.reference.verify(&m, e, at);
        let b = f.cached.verify(&m, e, at);
        let key = |r: &Result<cloister_attestation::VerifiedEvidence, _>| {
            r.as_ref().ok().map(|v| (v.tcb_status.clone(), v.advisories.clone()))
        };
        // Soundness: the cached path never accepts what the reference refuses, and when both
        // accept they agree. The cached path may be stricter: dcap-qvl ignores bytes of the PCK
        // chain it does not use (e.g. a flipped character in the embedded root CA's PEM, found
        // by this test), which the cached path refuses.
        if b.is_ok() {
            prop_assert_eq!(key(&a), key(&b));
        }
    }

    #[test]
    fn mutated_snp_and_sim_evidence_never_panics(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cut in proptest::option::weighted(0.2, any::<usize>()),
    ) {
        let f = fixtures();
        let report = mutate(&snp_report(), &edits, cut, &[]);
        let _ = inspect(&report);
        let r = SnpVerifier::new().verify(&report, &f.snp, AT_2025);
        prop_assert_eq!(r.is_ok(), report == snp_report());
        let sim = SimPlatform::from_seed([1; 32]).produce_evidence(&[2; 32], &[4; 32], &[3; 64]);
        let m = mutate(&sim, &edits, cut, &[]);
        let r = SimVerifier::new([f.sim_key]).verify(&m, &Endorsements::None, AT_2025);
        prop_assert_eq!(r.is_ok(), m == sim);
    }
}
