//! `CollateralSource` against a local fake PCS that serves the vectors' collateral the way
//! Intel's PCS v4 API / a PCCS does, and against an offline cache directory.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use cloister_attestation::{
    CollateralSource, DcapCollateral, DcapPlatform, DcapVerifier, Endorsements, Error, EvidenceVerifier,
    PckCaKind, Tee, VerifiedEvidence,
};
use serde::Deserialize;
use time::OffsetDateTime;
use time::macros::datetime;

use crate::common::*;

/// SGX vector: earliest nextUpdate is 2025-07-19T10:01:18Z, so this is inside the last hour
/// (refresh due) but still valid.
const SGX_REFRESH_DUE: OffsetDateTime = datetime!(2025-07-19 09:30:00 UTC);
/// After the SGX vector's nextUpdate.
const SGX_EXPIRED: OffsetDateTime = datetime!(2025-07-19 10:30:00 UTC);

#[derive(Deserialize)]
struct VectorCollateral {
    pck_crl_issuer_chain: String,
    root_ca_crl: String,
    pck_crl: String,
    tcb_info_issuer_chain: String,
    tcb_info: String,
    tcb_info_signature: String,
    qe_identity_issuer_chain: String,
    qe_identity: String,
    qe_identity_signature: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Normal,
    /// One byte of the signed TCB info changed.
    TamperedTcb,
    /// The TCB info endpoint answers non-JSON.
    GarbageTcb,
    /// The TCB info body ends before its Content-Length.
    TruncatedTcb,
    /// The PCK CRL body is larger than the 4 MiB limit.
    OversizedCrl,
    /// The same, without a Content-Length: the body ends when the connection closes.
    OversizedUnannouncedCrl,
    /// Every endpoint answers 404.
    NotFound,
}

/// A one-request-per-connection HTTP/1.1 server on 127.0.0.1 answering the PCS v4 paths for one
/// vector. It records every request target.
struct FakePcs {
    base: String,
    log: Arc<Mutex<Vec<String>>>,
    mode: Arc<Mutex<Mode>>,
}

impl FakePcs {
    fn start(tee: &'static str, collateral_json: &'static [u8]) -> FakePcs {
        let v: VectorCollateral = serde_json::from_slice(collateral_json).expect("vector JSON");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let mode = Arc::new(Mutex::new(Mode::Normal));
        let (log2, mode2) = (log.clone(), mode.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let m = *mode2.lock().unwrap();
                serve(stream, &v, tee, m, &log2);
            }
        });
        FakePcs { base, log, mode }
    }

    fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn set_mode(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn serve(mut stream: TcpStream, v: &VectorCollateral, tee: &str, mode: Mode, log: &Mutex<Vec<String>>) {
    stream.set_read_timeout(Some(StdDuration::from_secs(5))).ok();
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let req = String::from_utf8_lossy(&req);
    let target = req.split(' ').nth(1).unwrap_or("").to_owned();
    log.lock().unwrap().push(target.clone());
    let path = target.split('?').next().unwrap_or("");

    let mut headers: Vec<(String, String)> = Vec::new();
    let mut declared_len = None;
    let body: Vec<u8> = if mode == Mode::NotFound {
        return respond(&mut stream, 404, &[], b"not found", None);
    } else if path == "/sgx/certification/v4/pckcrl" {
        headers.push((
            "SGX-PCK-CRL-Issuer-Chain".into(),
            url_encode(&v.pck_crl_issuer_chain),
        ));
        if mode == Mode::OversizedUnannouncedCrl {
            let head = "HTTP/1.1 200 X\r\nConnection: close\r\n\r\n";
            let _ = stream
                .write_all(head.as_bytes())
                .and_then(|()| stream.write_all(&vec![0x30; 5 * 1024 * 1024]));
            return;
        }
        if mode == Mode::OversizedCrl {
            vec![0x30; 5 * 1024 * 1024]
        } else {
            hex::decode(&v.pck_crl).unwrap()
        }
    } else if path == format!("/{tee}/certification/v4/tcb") {
        // Intel's PCS names the header TCB-Info-Issuer-Chain for TDX, a PCCS SGX-TCB-Info-…
        let name = if tee == "tdx" {
            "TCB-Info-Issuer-Chain"
        } else {
            "SGX-TCB-Info-Issuer-Chain"
        };
        headers.push((name.into(), url_encode(&v.tcb_info_issuer_chain)));
        let tcb_info = match mode {
            Mode::TamperedTcb => v.tcb_info.replacen("\"OutOfDate\"", "\"UpToDate\"", 1),
            _ => v.tcb_info.clone(),
        };
        let body = format!(
            "{{\"tcbInfo\":{tcb_info},\"signature\":\"{}\"}}",
            v.tcb_info_signature
        )
        .into_bytes();
        match mode {
            Mode::GarbageTcb => b"<html>service unavailable</html>".to_vec(),
            Mode::TruncatedTcb => {
                declared_len = Some(body.len());
                body[..body.len() / 2].to_vec()
            }
            _ => body,
        }
    } else if path == format!("/{tee}/certification/v4/qe/identity") {
        headers.push((
            "SGX-Enclave-Identity-Issuer-Chain".into(),
            url_encode(&v.qe_identity_issuer_chain),
        ));
        format!(
            "{{\"enclaveIdentity\":{},\"signature\":\"{}\"}}",
            v.qe_identity, v.qe_identity_signature
        )
        .into_bytes()
    } else if path == "/sgx/certification/v4/rootcacrl" {
        // A PCCS answers the root CA CRL as hex text.
        v.root_ca_crl.clone().into_bytes()
    } else {
        return respond(&mut stream, 404, &[], b"not found", None);
    };
    respond(&mut stream, 200, &headers, &body, declared_len);
}

fn respond(s: &mut TcpStream, status: u16, headers: &[(String, String)], body: &[u8], len: Option<usize>) {
    let mut head = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        len.unwrap_or(body.len())
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    // The client may hang up early (size limit); that is not the server's problem.
    let _ = s
        .write_all(head.as_bytes())
        .and_then(|()| s.write_all(body))
        .and_then(|()| s.flush());
}

fn verify(quote: &[u8], c: DcapCollateral, at: OffsetDateTime) -> Result<VerifiedEvidence, Error> {
    DcapVerifier::new().verify(quote, &Endorsements::Dcap(c), at)
}

fn tcb_fmspc(collateral_json: &[u8]) -> String {
    let v: VectorCollateral = serde_json::from_slice(collateral_json).unwrap();
    let info: serde_json::Value = serde_json::from_str(&v.tcb_info).unwrap();
    info["fmspc"].as_str().unwrap().to_owned()
}

/// The CA named by the vector's PCK CRL issuer (its first certificate is the PCK CA itself).
fn crl_issuer_ca(collateral_json: &[u8]) -> &'static str {
    let v: VectorCollateral = serde_json::from_slice(collateral_json).unwrap();
    let first = pem::parse_many(v.pck_crl_issuer_chain.as_bytes())
        .unwrap()
        .remove(0);
    let der = first.contents();
    if der.windows(26).any(|w| w == b"Intel SGX PCK Processor CA") {
        "processor"
    } else {
        assert!(der.windows(25).any(|w| w == b"Intel SGX PCK Platform CA"));
        "platform"
    }
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn fetch_case(tee: &'static str, quote: &[u8], json: &'static [u8], status: &str) {
    let pcs = FakePcs::start(tee, json);
    let dir = tempfile::tempdir().unwrap();
    let src = CollateralSource::pccs(&format!("{}/", pcs.base), dir.path()).unwrap();
    let fetched = src.collateral_for(quote, AT_2025).unwrap();

    let fmspc = tcb_fmspc(json);
    let ca = crl_issuer_ca(json);
    assert_eq!(
        pcs.requests(),
        [
            format!("/sgx/certification/v4/pckcrl?ca={ca}&encoding=der"),
            format!("/{tee}/certification/v4/tcb?fmspc={fmspc}"),
            format!("/{tee}/certification/v4/qe/identity"),
            "/sgx/certification/v4/rootcacrl".to_owned(),
        ]
    );
    // Byte for byte the vector's collateral (no PCK chain attached).
    assert_eq!(fetched.digest(), collateral(json).digest());
    let r = verify(quote, fetched, AT_2025).unwrap();
    assert_eq!(r.tcb_status, status);
}

#[test]
fn sgx_fetch_yields_the_vector_collateral() {
    fetch_case(
        "sgx",
        SGX_QUOTE,
        SGX_COLLATERAL,
        "ConfigurationAndSWHardeningNeeded",
    );
}

#[test]
fn tdx_fetch_yields_the_vector_collateral() {
    fetch_case("tdx", TDX_QUOTE, TDX_COLLATERAL, "UpToDate");
}

#[test]
fn platform_is_read_from_the_pck_leaf() {
    let sgx = DcapPlatform::from_quote(SGX_QUOTE).unwrap();
    assert_eq!((sgx.tee, sgx.ca), (Tee::Sgx, PckCaKind::Processor));
    assert_eq!(sgx.fmspc, tcb_fmspc(SGX_COLLATERAL).to_uppercase());
    assert_eq!(sgx.pce_id, "0000");
    let tdx = DcapPlatform::from_quote(TDX_QUOTE).unwrap();
    assert_eq!((tdx.tee, tdx.ca), (Tee::Tdx, PckCaKind::Platform));
    assert_eq!(tdx.fmspc, tcb_fmspc(TDX_COLLATERAL).to_uppercase());
    let (k1, k2) = (
        CollateralSource::cache_key(SGX_QUOTE).unwrap(),
        CollateralSource::cache_key(TDX_QUOTE).unwrap(),
    );
    assert_ne!(k1, k2);
    assert!(k1.len() == 64 && k1.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(CollateralSource::cache_key(b"not a quote").is_err());
    assert!(CollateralSource::cache_key(&SGX_QUOTE[..600]).is_err());
}

#[test]
fn cache_serves_inside_window_and_refetches_near_and_after_next_update() {
    let pcs = FakePcs::start("sgx", SGX_COLLATERAL);
    let dir = tempfile::tempdir().unwrap();
    let src = CollateralSource::pccs(&pcs.base, dir.path()).unwrap();
    src.collateral_for(SGX_QUOTE, AT_2025).unwrap();
    assert_eq!(pcs.requests().len(), 4);

    // Inside the window: from disk, also through a fresh source on the same directory.
    let c = src
        .collateral_for(SGX_QUOTE, datetime!(2025-07-10 00:00:00 UTC))
        .unwrap();
    let again = CollateralSource::pccs(&pcs.base, dir.path()).unwrap();
    again.collateral_for(SGX_QUOTE, AT_2025).unwrap();
    assert_eq!(pcs.requests().len(), 4, "served from the disk cache");
    assert!(verify(SGX_QUOTE, c, AT_2025).is_ok());

    // Within the refresh margin of nextUpdate: fetched again (the server has nothing newer).
    let c = src.collateral_for(SGX_QUOTE, SGX_REFRESH_DUE).unwrap();
    assert_eq!(pcs.requests().len(), 8);
    assert!(verify(SGX_QUOTE, c, SGX_REFRESH_DUE).is_ok());

    // After nextUpdate: fetched again; the server's copy is expired too, so it is an error.
    let e = src.collateral_for(SGX_QUOTE, SGX_EXPIRED).unwrap_err();
    assert_eq!(pcs.requests().len(), 12);
    assert!(matches!(e, Error::CollateralExpired { .. }), "{e}");

    // A zero margin keeps using the cache until nextUpdate.
    let no_margin = CollateralSource::pccs(&pcs.base, dir.path())
        .unwrap()
        .with_refresh_margin(StdDuration::ZERO);
    no_margin.collateral_for(SGX_QUOTE, SGX_REFRESH_DUE).unwrap();
    assert_eq!(pcs.requests().len(), 12);
}

fn dead_base() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

#[test]
fn server_down_falls_back_to_a_still_valid_cache_only() {
    let base = dead_base();
    let dir = tempfile::tempdir().unwrap();
    let src = CollateralSource::pccs(&base, dir.path()).unwrap();

    let e = src.collateral_for(SGX_QUOTE, AT_2025).unwrap_err();
    assert!(matches!(e, Error::CollateralFetch(_)), "{e}");
    assert!(dir_entries(dir.path()).is_empty());

    std::fs::write(src.cache_path(SGX_QUOTE).unwrap(), SGX_COLLATERAL).unwrap();
    // Refresh due, server down, cached copy still valid: the cached copy.
    let c = src.collateral_for(SGX_QUOTE, SGX_REFRESH_DUE).unwrap();
    assert_eq!(c.digest(), collateral(SGX_COLLATERAL).digest());
    // Cached copy expired: the fetch error.
    let e = src.collateral_for(SGX_QUOTE, SGX_EXPIRED).unwrap_err();
    assert!(matches!(e, Error::CollateralFetch(_)), "{e}");
    // The SGX file is not the TDX quote's collateral.
    assert!(src.collateral_for(TDX_QUOTE, AT_2025).is_err());
}

#[test]
fn refresh_fetches_past_a_fresh_cache_and_never_falls_back_to_it() {
    let pcs = FakePcs::start("sgx", SGX_COLLATERAL);
    let dir = tempfile::tempdir().unwrap();
    let src = CollateralSource::pccs(&pcs.base, dir.path()).unwrap();
    src.collateral_for(SGX_QUOTE, AT_2025).unwrap();
    src.collateral_for(SGX_QUOTE, AT_2025).unwrap();
    assert_eq!(pcs.requests().len(), 4, "the second came from the cache");
    let c = src.refresh(SGX_QUOTE, AT_2025).unwrap();
    assert_eq!(pcs.requests().len(), 8, "a refresh always fetches");
    assert_eq!(c.digest(), collateral(SGX_COLLATERAL).digest());

    // Server down: the fresh cached copy still serves `collateral_for`, but not a refresh,
    // whose caller has just found that copy wanting.
    let down = CollateralSource::pccs(&dead_base(), dir.path()).unwrap();
    down.collateral_for(SGX_QUOTE, AT_2025).unwrap();
    let e = down.refresh(SGX_QUOTE, AT_2025).unwrap_err();
    assert!(matches!(e, Error::CollateralFetch(_)), "{e}");

    // Offline, a refresh reads the placed file again.
    let offline = CollateralSource::offline(dir.path()).unwrap();
    let c = offline.refresh(SGX_QUOTE, AT_2025).unwrap();
    assert_eq!(c.digest(), collateral(SGX_COLLATERAL).digest());
}

#[test]
fn bad_responses_are_errors_and_never_cached() {
    let pcs = FakePcs::start("sgx", SGX_COLLATERAL);
    let dir = tempfile::tempdir().unwrap();
    let src = CollateralSource::pccs(&pcs.base, dir.path()).unwrap();
    for (mode, verification) in [
        (Mode::TamperedTcb, true),
        (Mode::GarbageTcb, false),
        (Mode::TruncatedTcb, false),
        (Mode::OversizedCrl, false),
        (Mode::NotFound, false),
    ] {
        pcs.set_mode(mode);
        let e = src.collateral_for(SGX_QUOTE, AT_2025).unwrap_err();
        if verification {
            // The fetch got well-formed collateral whose TCB info signature does not verify.
            assert!(
                matches!(&e, Error::Verification(m) if m.contains("TCB info")),
                "{mode:?}: {e}"
            );
        } else {
            assert!(matches!(e, Error::CollateralFetch(_)), "{mode:?}: {e}");
        }
        assert!(dir_entries(dir.path()).is_empty(), "{mode:?} left files");
    }
    // The size limit is named.
    pcs.set_mode(Mode::OversizedCrl);
    let e = src.collateral_for(SGX_QUOTE, AT_2025).unwrap_err().to_string();
    assert!(e.contains("limit"), "{e}");

    // With a still-valid cached copy, a refresh that gets tampered data keeps the cached copy.
    pcs.set_mode(Mode::Normal);
    src.collateral_for(SGX_QUOTE, AT_2025).unwrap();
    pcs.set_mode(Mode::TamperedTcb);
    let before = pcs.requests().len();
    let c = src.collateral_for(SGX_QUOTE, SGX_REFRESH_DUE).unwrap();
    assert!(pcs.requests().len() > before);
    assert_eq!(c.digest(), collateral(SGX_COLLATERAL).digest());
}

#[test]
fn a_body_without_a_length_is_cut_at_the_limit() {
    let pcs = FakePcs::start("sgx", SGX_COLLATERAL);
    let dir = tempfile::tempdir().unwrap();
    let src = CollateralSource::pccs(&pcs.base, dir.path()).unwrap();
    pcs.set_mode(Mode::OversizedUnannouncedCrl);
    let e = src.collateral_for(SGX_QUOTE, AT_2025).unwrap_err();
    assert!(
        matches!(&e, Error::CollateralFetch(m) if m.contains("limit")),
        "{e}"
    );
    assert!(dir_entries(dir.path()).is_empty());
}

#[test]
fn a_tampered_tcb_info_would_be_refused_by_the_verifier_too() {
    let mut v: serde_json::Value = serde_json::from_slice(SGX_COLLATERAL).unwrap();
    let tampered = v["tcb_info"]
        .as_str()
        .unwrap()
        .replacen("\"OutOfDate\"", "\"UpToDate\"", 1);
    v["tcb_info"] = tampered.into();
    let c = DcapCollateral::from_json(&serde_json::to_vec(&v).unwrap()).unwrap();
    assert!(matches!(
        verify(SGX_QUOTE, c, AT_2025),
        Err(Error::Verification(_))
    ));
}

#[test]
fn offline_reads_placed_files_only() {
    let dir = tempfile::tempdir().unwrap();
    assert!(CollateralSource::offline(&dir.path().join("missing")).is_err());
    let src = CollateralSource::offline(dir.path()).unwrap();
    let e = src.collateral_for(TDX_QUOTE, AT_2025).unwrap_err();
    assert!(matches!(e, Error::CollateralFetch(_)), "{e}");

    let key = CollateralSource::cache_key(TDX_QUOTE).unwrap();
    std::fs::write(dir.path().join(format!("{key}.json")), TDX_COLLATERAL).unwrap();
    let c = src.collateral_for(TDX_QUOTE, AT_2025).unwrap();
    assert_eq!(verify(TDX_QUOTE, c, AT_2025).unwrap().tcb_status, "UpToDate");
    // Even when a refresh would be due, offline never fetches: the file as it is.
    let late = datetime!(2025-08-01 00:00:00 UTC);
    let c = src.collateral_for(TDX_QUOTE, late).unwrap();
    assert!(matches!(
        verify(TDX_QUOTE, c, late),
        Err(Error::CollateralExpired { .. })
    ));

    std::fs::write(dir.path().join(format!("{key}.json")), b"{").unwrap();
    assert!(matches!(
        src.collateral_for(TDX_QUOTE, AT_2025),
        Err(Error::Malformed { .. })
    ));
}

#[test]
fn cache_file_is_owner_only_and_replaced_atomically() {
    let pcs = FakePcs::start("tdx", TDX_COLLATERAL);
    let dir = tempfile::tempdir().unwrap();
    let src = CollateralSource::pccs(&pcs.base, dir.path()).unwrap();
    let path = src.cache_path(TDX_QUOTE).unwrap();
    // A corrupt leftover is replaced, not trusted.
    std::fs::write(&path, b"garbage").unwrap();
    src.collateral_for(TDX_QUOTE, AT_2025).unwrap();
    assert_eq!(pcs.requests().len(), 4);
    let key = CollateralSource::cache_key(TDX_QUOTE).unwrap();
    assert_eq!(
        dir_entries(dir.path()),
        [format!("{key}.json")],
        "no temporary files left"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // The stored file is the vector's layout: the offline source reads it.
    let stored = std::fs::read(&path).unwrap();
    assert_eq!(
        DcapCollateral::from_json(&stored).unwrap().digest(),
        collateral(TDX_COLLATERAL).digest()
    );
    let offline = CollateralSource::offline(dir.path()).unwrap();
    assert_eq!(
        offline.collateral_for(TDX_QUOTE, AT_2025).unwrap().digest(),
        collateral(TDX_COLLATERAL).digest()
    );
}
