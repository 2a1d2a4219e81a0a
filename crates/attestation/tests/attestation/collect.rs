//! Evidence collection against fake Gramine and configfs-tsm trees.

use std::fs;
use std::path::{Path, PathBuf};

use cloister_attestation::{
    Endorsements, Error, EvidenceSource, EvidenceVerifier, GramineSource, SimPlatform, SimSource,
    SimVerifier, TsmProvider, TsmSource, inspect,
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
