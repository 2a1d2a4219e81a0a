//! Evidence collection against fake Gramine and configfs-tsm trees.

use std::fs;
use std::path::{Path, PathBuf};

use cloister_attestation::{
    Collected, Endorsements, Error, EvidenceSource, EvidenceVerifier, GramineSource, SimPlatform, SimSource,
    SimVerifier, SnpEndorsements, SnpVerifier, TsmProvider, TsmSource, inspect,
};

use crate::common::*;

fn report_data_of(evidence: &[u8]) -> [u8; 64] {
    hex::decode(inspect(evidence).expect("parses").report_data)
        .expect("hex")
        .try_into()
        .expect("64 bytes")
}

fn gramine_tree(kind: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("attestation_type"), format!("{kind}\n")).expect("write");
    fs::write(dir.path().join("user_report_data"), b"").expect("write");
    fs::write(dir.path().join("quote"), SGX_QUOTE).expect("write");
    dir
}

#[test]
fn gramine_writes_report_data_and_reads_the_quote() {
    let dir = gramine_tree("dcap");
    let rd = report_data_of(SGX_QUOTE);
    let quote = GramineSource::with_root(dir.path())
        .collect(&rd)
        .expect("collects");
    assert_eq!(quote, SGX_QUOTE);
    assert_eq!(fs::read(dir.path().join("user_report_data")).expect("read"), rd);
}

#[test]
fn gramine_rejects_stale_quotes_and_wrong_modes() {
    let dir = gramine_tree("dcap");
    let err = GramineSource::with_root(dir.path())
        .collect(&[9; 64])
        .expect_err("stale quote");
    assert!(err.to_string().contains("instead of the requested"), "{err}");

    let none = gramine_tree("none");
    let err = GramineSource::with_root(none.path())
        .collect(&report_data_of(SGX_QUOTE))
        .expect_err("no attestation");
    assert!(err.to_string().contains("attestation type is 'none'"), "{err}");

    let missing = tempfile::tempdir().expect("tempdir");
    let err = GramineSource::with_root(missing.path().join("nope"))
        .collect(&[0; 64])
        .expect_err("no device");
    assert!(matches!(err, Error::Io { .. }), "{err}");
}

/// A fake configfs-tsm with one pre-created entry, as the kernel would populate it.
fn tsm_tree(provider: &str, outblob: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let entry = dir.path().join("sys/kernel/config/tsm/report/entry0");
    fs::create_dir_all(&entry).expect("mkdir");
    fs::write(entry.join("provider"), format!("{provider}\n")).expect("write");
    fs::write(entry.join("inblob"), b"").expect("write");
    fs::write(entry.join("generation"), b"4\n").expect("write");
    fs::write(entry.join("outblob"), outblob).expect("write");
    (dir, entry)
}

fn tsm(root: &Path, provider: TsmProvider) -> TsmSource {
    TsmSource::new(provider).with_root(root).with_entry_name("entry0")
}

#[test]
fn tsm_tdx_round_trip() {
    let (dir, entry) = tsm_tree("tdx_guest", TDX_QUOTE);
    let rd = report_data_of(TDX_QUOTE);
    let report = tsm(dir.path(), TsmProvider::Tdx)
        .collect_report(&rd)
        .expect("collects");
    assert_eq!(report.outblob, TDX_QUOTE);
    assert_eq!(report.generation, 4);
    assert_eq!(report.auxblob, None);
    assert_eq!(fs::read(entry.join("inblob")).expect("read"), rd);
    assert!(entry.is_dir(), "an explicitly named entry is left in place");
}

#[test]
fn tsm_snp_reads_auxblob() {
    let report = snp_report();
    let (dir, entry) = tsm_tree("sev_guest", &report);
    fs::write(entry.join("auxblob"), b"certificate table").expect("write");
    let got = tsm(dir.path(), TsmProvider::SevSnp)
        .collect_report(&report_data_of(&report))
        .expect("collects");
    assert_eq!(got.outblob, report);
    assert_eq!(got.auxblob.as_deref(), Some(&b"certificate table"[..]));
}

#[test]
fn tsm_provider_mismatch_is_rejected() {
    let (dir, _) = tsm_tree("sev_guest", TDX_QUOTE);
    let err = tsm(dir.path(), TsmProvider::Tdx)
        .collect(&report_data_of(TDX_QUOTE))
        .expect_err("wrong provider");
    assert!(
        err.to_string()
            .contains("provider is 'sev_guest', expected 'tdx_guest'"),
        "{err}"
    );
}

#[test]
fn tsm_wrong_evidence_kind_or_report_data_is_rejected() {
    let (dir, _) = tsm_tree("tdx_guest", SGX_QUOTE);
    assert!(
        tsm(dir.path(), TsmProvider::Tdx)
            .collect(&report_data_of(SGX_QUOTE))
            .is_err()
    );
    let (dir, _) = tsm_tree("tdx_guest", TDX_QUOTE);
    assert!(tsm(dir.path(), TsmProvider::Tdx).collect(&[1; 64]).is_err());
}

#[test]
fn tsm_generation_change_is_detected() {
    let (dir, entry) = tsm_tree("tdx_guest", b"");
    let outblob = entry.join("outblob");
    fs::remove_file(&outblob).expect("rm");
    let status = std::process::Command::new("mkfifo")
        .arg(&outblob)
        .status()
        .expect("mkfifo runs");
    assert!(status.success());
    // Plays a second writer: when the collector opens outblob, bump generation, then serve it.
    let generation = entry.join("generation");
    let fifo = outblob.clone();
    let writer = std::thread::spawn(move || {
        let mut f = fs::OpenOptions::new().write(true).open(&fifo).expect("open fifo");
        fs::write(&generation, b"5\n").expect("bump generation");
        std::io::Write::write_all(&mut f, TDX_QUOTE).expect("serve outblob");
    });
    let err = tsm(dir.path(), TsmProvider::Tdx)
        .collect(&report_data_of(TDX_QUOTE))
        .expect_err("race detected");
    writer.join().expect("writer");
    assert!(
        err.to_string().contains("generation changed from 4 to 5"),
        "{err}"
    );
}

#[test]
fn tsm_fresh_entry_is_created_and_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("sys/kernel/config/tsm/report");
    fs::create_dir_all(&base).expect("mkdir");
    // A plain directory does not get the kernel's attribute files, so collection fails, but the
    // entry it created must be gone afterwards.
    let err = TsmSource::new(TsmProvider::Tdx)
        .with_root(dir.path())
        .collect(&[0; 64])
        .expect_err("no attributes");
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert_eq!(fs::read_dir(&base).expect("list").count(), 0);

    let missing = TsmSource::new(TsmProvider::Tdx)
        .with_root(dir.path().join("nope"))
        .collect(&[0; 64]);
    assert!(matches!(missing, Err(Error::Collection(_))), "{missing:?}");
    let bad_name = TsmSource::new(TsmProvider::Tdx)
        .with_root(dir.path())
        .with_entry_name("../x")
        .collect(&[0; 64]);
    assert!(matches!(bad_name, Err(Error::InvalidArgument(_))), "{bad_name:?}");
}

#[test]
fn sim_source_produces_verifiable_evidence() {
    let platform = SimPlatform::from_seed([5; 32]);
    let key = platform.public_key();
    let source = SimSource::new(platform, [6; 32], [8; 32]);
    let evidence = source.collect(&[7; 64]).expect("collects");
    let verified = SimVerifier::new([key])
        .verify(&evidence, &Endorsements::None, AT_2025)
        .expect("verifies");
    assert_eq!(verified.summary.report_data, hex::encode([7; 64]));
    assert_eq!(verified.summary.measurement, hex::encode([6; 32]));
    assert_eq!(
        verified.summary.launch_config(),
        Some(hex::encode([8; 32]).as_str())
    );
}

/// GHCB certificate table GUIDs, as the bytes on the wire.
const GUID_VCEK: &str = "63da758de6644564adc5f4b93be8accd";
const GUID_VLEK: &str = "a8074bc2a25a483eaae639c045a0b8a1";
const GUID_ASK: &str = "4ab7b379bbac4fe4a02f05aef327c782";
const GUID_ARK: &str = "c0b406a4a803495297433fb6014cd0ae";

/// A certificate table: entries (GUID hex, offset, length), the all-zero terminator, then
/// `data` (offsets count from the start of the table).
fn raw_table(entries: &[(&str, u32, u32)], data: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    for (guid, offset, length) in entries {
        t.extend_from_slice(&hex::decode(guid).expect("GUID hex"));
        t.extend_from_slice(&offset.to_le_bytes());
        t.extend_from_slice(&length.to_le_bytes());
    }
    t.extend_from_slice(&[0; 24]);
    t.extend_from_slice(data);
    t
}

/// A well-formed table carrying `certs` in order.
fn table(certs: &[(&str, &[u8])]) -> Vec<u8> {
    let mut offset = u32::try_from((certs.len() + 1) * 24).expect("small");
    let mut entries = Vec::new();
    let mut data = Vec::new();
    for (guid, der) in certs {
        let len = u32::try_from(der.len()).expect("small");
        entries.push((*guid, offset, len));
        data.extend_from_slice(der);
        offset += len;
    }
    raw_table(&entries, &data)
}

fn snp_tree(report: &[u8], auxblob: Option<&[u8]>) -> tempfile::TempDir {
    let (dir, entry) = tsm_tree("sev_guest", report);
    if let Some(aux) = auxblob {
        fs::write(entry.join("auxblob"), aux).expect("write");
    }
    dir
}

fn collect_snp(report: &[u8], auxblob: Option<&[u8]>) -> Result<Collected, Error> {
    let dir = snp_tree(report, auxblob);
    tsm(dir.path(), TsmProvider::SevSnp).collect_with_endorsements(&report_data_of(report))
}

fn milan_chain() -> Vec<Vec<u8>> {
    pem_ders(SNP_CHAIN_PEM)
}

#[test]
fn tsm_snp_returns_the_vcek_from_the_auxblob() {
    let report = snp_report();
    let chain = milan_chain();
    let aux = table(&[
        (GUID_ARK, &chain[1]),
        (GUID_ASK, &chain[0]),
        (GUID_VCEK, SNP_VCEK_DER),
    ]);
    let got = collect_snp(&report, Some(&aux)).expect("collects");
    assert_eq!(got.evidence, report);
    assert_eq!(got.vcek.as_deref(), Some(SNP_VCEK_DER));
    // What was collected verifies as it is.
    let e = SnpEndorsements::new(got.vcek.as_deref().unwrap_or_default(), None).expect("DER");
    SnpVerifier::new()
        .verify(&got.evidence, &Endorsements::Snp(e), AT_2025)
        .expect("collected VCEK verifies the collected report");

    // Zero padding after the certificate (some hosts pad entries) is dropped.
    let mut padded = SNP_VCEK_DER.to_vec();
    padded.extend_from_slice(&[0; 100]);
    let got = collect_snp(&report, Some(&table(&[(GUID_VCEK, &padded)]))).expect("collects");
    assert_eq!(got.vcek.as_deref(), Some(SNP_VCEK_DER));
}

#[test]
fn tsm_snp_returns_the_vlek_of_a_real_aws_auxblob() {
    let got = collect_snp(SNP_VLEK_REPORT, Some(SNP_VLEK_AUXBLOB)).expect("collects");
    assert_eq!(got.evidence, SNP_VLEK_REPORT);
    assert_eq!(got.vcek, Some(snp_vlek_der()));
    let e = SnpEndorsements::new(got.vcek.as_deref().unwrap_or_default(), None).expect("DER");
    SnpVerifier::new()
        .verify(&got.evidence, &Endorsements::Snp(e), AT_VLEK)
        .expect("collected VLEK verifies the collected report with the built-in chain");
}

#[test]
fn tsm_snp_picks_the_key_that_signed_the_report() {
    // A VCEK-signed report and a table with only a VLEK (or a VLEK-signed report and only a
    // VCEK): nothing to hand over, and nothing wrong with the table.
    let only_vlek = table(&[(GUID_VLEK, &snp_vlek_der())]);
    assert_eq!(
        collect_snp(&snp_report(), Some(&only_vlek))
            .expect("collects")
            .vcek,
        None
    );
    let only_vcek = table(&[(GUID_VCEK, SNP_VCEK_DER)]);
    assert_eq!(
        collect_snp(SNP_VLEK_REPORT, Some(&only_vcek))
            .expect("collects")
            .vcek,
        None
    );
    let both = table(&[(GUID_VCEK, SNP_VCEK_DER), (GUID_VLEK, &snp_vlek_der())]);
    assert_eq!(
        collect_snp(&snp_report(), Some(&both))
            .expect("collects")
            .vcek
            .as_deref(),
        Some(SNP_VCEK_DER)
    );
    // No auxblob at all, or an empty one.
    assert_eq!(collect_snp(&snp_report(), None).expect("collects").vcek, None);
    assert_eq!(
        collect_snp(&snp_report(), Some(b"")).expect("collects").vcek,
        None
    );
}

#[test]
fn malformed_auxblob_tables_are_refused() {
    let report = snp_report();
    let vcek = SNP_VCEK_DER;
    let len = u32::try_from(vcek.len()).expect("small");
    let two_entries_end = 3 * 24;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "offset beyond the end",
            raw_table(&[(GUID_VCEK, 10_000, len)], vcek),
            "past the end",
        ),
        (
            "length beyond the end",
            raw_table(&[(GUID_VCEK, 48, len + 1)], vcek),
            "past the end",
        ),
        (
            "huge length",
            raw_table(&[(GUID_VCEK, 48, u32::MAX)], vcek),
            "past the end",
        ),
        (
            "offset + length overflows u32",
            raw_table(&[(GUID_VCEK, u32::MAX, u32::MAX)], vcek),
            "past the end",
        ),
        (
            "overlapping entries",
            raw_table(
                &[
                    (GUID_VCEK, two_entries_end, len),
                    (GUID_ASK, two_entries_end + 8, 100),
                ],
                vcek,
            ),
            "overlaps",
        ),
        (
            "data inside the table",
            raw_table(&[(GUID_VCEK, 0, len)], vcek),
            "inside the table",
        ),
        ("empty entry", raw_table(&[(GUID_VCEK, 48, 0)], vcek), "is empty"),
        (
            "the same key twice",
            raw_table(
                &[
                    (GUID_VCEK, two_entries_end, len),
                    (GUID_VCEK, two_entries_end, len),
                ],
                vcek,
            ),
            "overlaps",
        ),
        (
            "not a certificate",
            table(&[(GUID_VCEK, b"certificate table")]),
            "not a DER certificate",
        ),
        (
            "bytes after the certificate",
            table(&[(GUID_VCEK, &[vcek, b"x"].concat())]),
            "not padding",
        ),
        (
            "zero GUID with a length",
            raw_table(&[("00000000000000000000000000000000", 48, 1)], b"x"),
            "terminator's zero GUID",
        ),
    ];
    for (name, aux, expected) in cases {
        let err = collect_snp(&report, Some(&aux)).expect_err(name);
        assert!(
            matches!(err, Error::Malformed { .. }) && err.to_string().contains(expected),
            "{name}: {err}"
        );
        // The evidence alone is still there for callers that do not want the certificate.
        let dir = snp_tree(&report, Some(&aux));
        assert_eq!(
            tsm(dir.path(), TsmProvider::SevSnp)
                .collect(&report_data_of(&report))
                .expect("collect ignores the table"),
            report
        );
    }

    // Duplicate keys in disjoint places.
    let mut data = vcek.to_vec();
    data.extend_from_slice(vcek);
    let dup = raw_table(
        &[
            (GUID_VCEK, two_entries_end, len),
            (GUID_VCEK, two_entries_end + len, len),
        ],
        &data,
    );
    let err = collect_snp(&report, Some(&dup)).expect_err("duplicate");
    assert!(err.to_string().contains("appears twice"), "{err}");

    // No terminator: entries all the way to the end of the blob.
    let mut unterminated = hex::decode(GUID_VCEK).expect("hex");
    unterminated.extend_from_slice(&24u32.to_le_bytes());
    unterminated.extend_from_slice(&len.to_le_bytes());
    let err = collect_snp(&report, Some(&unterminated)).expect_err("no terminator");
    assert!(err.to_string().contains("no all-zero terminating entry"), "{err}");
    let err = collect_snp(&report, Some(&[0x55; 100])).expect_err("garbage");
    assert!(err.to_string().contains("no all-zero terminating entry"), "{err}");

    // More than a megabyte: refused before parsing.
    let mut huge = vec![0; 24];
    huge.resize((1 << 20) + 1, 0);
    let err = collect_snp(&report, Some(&huge)).expect_err("huge");
    assert!(err.to_string().contains("larger than"), "{err}");
}

#[test]
fn sources_without_endorsements_return_none() {
    let (dir, _) = tsm_tree("tdx_guest", TDX_QUOTE);
    let got = tsm(dir.path(), TsmProvider::Tdx)
        .collect_with_endorsements(&report_data_of(TDX_QUOTE))
        .expect("collects");
    assert_eq!(got.evidence, TDX_QUOTE);
    assert_eq!(got.vcek, None);
    let sim = SimSource::new(SimPlatform::from_seed([5; 32]), [6; 32], [7; 32]);
    let got = sim.collect_with_endorsements(&[7; 64]).expect("collects");
    assert_eq!(got.vcek, None);
    assert_eq!(
        inspect(&got.evidence).expect("parses").report_data,
        hex::encode([7; 64])
    );
}
