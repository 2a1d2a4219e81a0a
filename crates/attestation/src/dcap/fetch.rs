//! Obtaining DCAP collateral for a quote: from a PCCS or Intel's PCS (v4 API), through an
//! on-disk cache, or from an operator-filled directory only (offline).
//!
//! The fetch mirrors dcap-qvl 0.7.1's `CollateralClient::fetch_for_fmspc_without_pck_chain`
//! (which needs its `report` feature and an async HTTP client) with reqwest's blocking client,
//! bounded time and size, and one deliberate difference: the TCB info and QE identity are kept as
//! the exact bytes of the response (`RawValue`) instead of being re-serialised, so the signed
//! text is stored unchanged.

use std::fs;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dcap_qvl::QuoteCollateralV3;
use dcap_qvl::config::{ParsedCert as _, X509Codec as _};
use dcap_qvl::configs::DefaultConfig;
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::verifier::{Bounds, DcapCollateral, collateral_bounds};
use super::{cached, parse_quote};
use crate::evidence::Tee;
use crate::{Error, time_util};

/// Intel's Provisioning Certification Service; usable as the base URL of
/// [`CollateralSource::pccs`] (the root CA CRL then comes from [`INTEL_ROOT_CA_CRL_URL`]).
pub const INTEL_PCS_URL: &str = "https://api.trustedservices.intel.com";

/// The CRL distribution point of the Intel SGX Root CA (DER), which Intel's PCS does not serve
/// under its own API.
pub const INTEL_ROOT_CA_CRL_URL: &str = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der";

/// Time limit of each HTTP request (connect, send, receive the head, each read of the body) and
/// of the whole body's receipt.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest accepted response body (Intel's biggest, a PCK CRL, is far below this).
pub const MAX_RESPONSE_BYTES: u64 = 4 * 1024 * 1024;
/// Default time before the collateral's earliest nextUpdate at which a cached copy is refreshed.
pub const DEFAULT_REFRESH_MARGIN: Duration = Duration::from_secs(3600);

/// The Intel PCK CA that issued a platform's PCK certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PckCaKind {
    /// "Intel SGX PCK Processor CA".
    Processor,
    /// "Intel SGX PCK Platform CA".
    Platform,
}

impl PckCaKind {
    /// The value of the PCS `ca` query parameter: `processor` or `platform`.
    pub fn as_str(self) -> &'static str {
        match self {
            PckCaKind::Processor => "processor",
            PckCaKind::Platform => "platform",
        }
    }
}

/// What selects a quote's collateral, read from the PCK leaf certificate in the quote's
/// certification data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DcapPlatform {
    /// [`Tee::Sgx`] or [`Tee::Tdx`]: chooses the `sgx` or `tdx` TCB info and QE identity.
    pub tee: Tee,
    /// FMSPC (6 bytes, upper-case hex as Intel's API writes it).
    pub fmspc: String,
    /// PCE-ID (2 bytes, upper-case hex); informative, the collateral does not depend on it.
    pub pce_id: String,
    /// Which PCK CA issued the leaf, i.e. which PCK CRL applies.
    pub ca: PckCaKind,
}

impl DcapPlatform {
    /// Reads TEE kind, FMSPC, PCE-ID and PCK CA from a DCAP quote (SGX v3, TDX v4/v5) that
    /// carries its PCK certificate chain (certification data type 5).
    pub fn from_quote(quote: &[u8]) -> Result<Self, Error> {
        let tee = match super::detect(quote) {
            Some(tee @ (Tee::Sgx | Tee::Tdx)) => tee,
            _ => return Err(Error::UnknownFormat("not an SGX or TDX DCAP quote".into())),
        };
        let parsed = parse_quote(quote)?;
        let chain = dcap_qvl::intel::extract_cert_chain(&parsed)
            .map_err(|e| Error::malformed("DCAP quote certification data", format!("{e:#}")))?;
        let leaf = chain.first().ok_or_else(|| {
            Error::malformed("DCAP quote certification data", "empty PCK certificate chain")
        })?;
        let ext = dcap_qvl::intel::parse_pck_extension(leaf)
            .map_err(|e| Error::malformed("PCK certificate", format!("{e:#}")))?;
        let cert = <DefaultConfig as dcap_qvl::config::Config>::X509::from_der(leaf)
            .map_err(|e| Error::malformed("PCK certificate", format!("{e:#}")))?;
        let ca = match cert.pck_ca() {
            Some(dcap_qvl::config::PckCa::Processor) => PckCaKind::Processor,
            Some(dcap_qvl::config::PckCa::Platform) => PckCaKind::Platform,
            None => {
                return Err(Error::malformed(
                    "PCK certificate",
                    "issuer is neither the Intel SGX PCK Processor CA nor the Platform CA",
                ));
            }
        };
        Ok(DcapPlatform {
            tee,
            fmspc: hex::encode_upper(ext.fmspc),
            pce_id: hex::encode_upper(&ext.pce_id),
            ca,
        })
    }

    /// The cache file stem: lower-case hex SHA-256 over a versioned, length-prefixed encoding of
    /// TEE kind, FMSPC and CA type.
    pub fn cache_key(&self) -> String {
        let tee = match self.tee {
            Tee::Tdx => "tdx",
            _ => "sgx",
        };
        let mut h = Sha256::new();
        for field in [
            "cloister/dcap-collateral-cache/v1",
            tee,
            &self.fmspc,
            self.ca.as_str(),
        ] {
            h.update((field.len() as u64).to_le_bytes());
            h.update(field.as_bytes());
        }
        hex::encode(h.finalize())
    }
}

/// Obtains DCAP collateral for quotes: from a PCCS / Intel PCS through an on-disk cache, or, in
/// offline mode, only from files an operator placed in the cache directory.
///
/// Cache files are named `<cache_key>.json` (see [`CollateralSource::cache_key`]) and hold the
/// collateral in the same JSON layout [`DcapCollateral::from_json`] reads. Fetched collateral is
/// verified on its own (CRLs, signing chains up to the Intel root, TCB info and QE identity
/// signatures, validity at the request time) before it is written, so a tampered response never
/// reaches the cache. The quote's PCK chain is not stored: collateral is shared by every platform
/// with the same FMSPC and CA, and the verifier reads the chain from each quote.
#[derive(Debug)]
pub struct CollateralSource {
    dir: PathBuf,
    online: Option<Online>,
    refresh_margin: u64,
}

#[derive(Debug)]
struct Online {
    base_url: String,
    root_crl_url: String,
    /// Made on first use: building a blocking client from inside an async runtime panics, and
    /// sources are built there (the fetches run on blocking threads).
    client: OnceLock<reqwest::blocking::Client>,
}

impl CollateralSource {
    /// A source fetching from the PCCS or PCS at `base_url` (Intel's PCS v4 API layout; a
    /// trailing `/sgx/certification/v4` is accepted and removed) and caching in `cache_dir`,
    /// which is created if missing. The root CA CRL is fetched from
    /// `{base}/sgx/certification/v4/rootcacrl`, or from [`INTEL_ROOT_CA_CRL_URL`] when the base
    /// is [`INTEL_PCS_URL`]; see [`CollateralSource::with_root_crl_url`].
    pub fn pccs(base_url: &str, cache_dir: &Path) -> Result<Self, Error> {
        let base_url = base_url
            .trim_end_matches('/')
            .trim_end_matches("/sgx/certification/v4")
            .trim_end_matches("/tdx/certification/v4")
            .to_owned();
        if !(base_url.starts_with("https://") || base_url.starts_with("http://"))
            || base_url.contains(['?', '#'])
        {
            return Err(Error::InvalidArgument(format!(
                "PCCS base URL must be an http(s) URL without query: {base_url:?}"
            )));
        }
        let root_crl_url = if base_url == INTEL_PCS_URL {
            INTEL_ROOT_CA_CRL_URL.to_owned()
        } else {
            format!("{base_url}/sgx/certification/v4/rootcacrl")
        };
        fs::create_dir_all(cache_dir).map_err(|e| Error::io(cache_dir, e))?;
        Ok(CollateralSource {
            dir: cache_dir.to_owned(),
            online: Some(Online {
                base_url,
                root_crl_url,
                client: OnceLock::new(),
            }),
            refresh_margin: DEFAULT_REFRESH_MARGIN.as_secs(),
        })
    }

    /// A source that only reads `<cache_key>.json` files from `cache_dir` (which must exist) and
    /// never connects anywhere. The file is returned as it is, whatever its validity window;
    /// the verifier reports expired collateral.
    pub fn offline(cache_dir: &Path) -> Result<Self, Error> {
        if !cache_dir.is_dir() {
            return Err(Error::io(
                cache_dir,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "offline collateral directory does not exist",
                ),
            ));
        }
        Ok(CollateralSource {
            dir: cache_dir.to_owned(),
            online: None,
            refresh_margin: DEFAULT_REFRESH_MARGIN.as_secs(),
        })
    }

    /// Fetches the root CA CRL from `url` instead (DER or hex body), e.g. a mirror of
    /// [`INTEL_ROOT_CA_CRL_URL`]. No effect on an offline source.
    pub fn with_root_crl_url(mut self, url: &str) -> Self {
        if let Some(online) = &mut self.online {
            online.root_crl_url = url.to_owned();
        }
        self
    }

    /// Refreshes a cached copy this long before its earliest nextUpdate (default one hour).
    pub fn with_refresh_margin(mut self, margin: Duration) -> Self {
        self.refresh_margin = margin.as_secs();
        self
    }

    /// The file stem under which the collateral of `quote` is cached:
    /// [`DcapPlatform::cache_key`] of the quote's platform. Operators name offline files
    /// `<cache_key>.json`. The base URL is not part of the key: every PCCS serves the same
    /// Intel-signed collateral, and offline files have no URL.
    pub fn cache_key(quote: &[u8]) -> Result<String, Error> {
        Ok(DcapPlatform::from_quote(quote)?.cache_key())
    }

    /// The cache file for `quote` in this source's directory.
    pub fn cache_path(&self, quote: &[u8]) -> Result<PathBuf, Error> {
        Ok(self.dir.join(format!("{}.json", Self::cache_key(quote)?)))
    }

    /// The collateral for `quote` at time `now`.
    ///
    /// Online: a cached copy is used while `now` is inside its validity window and more than the
    /// refresh margin before its end; otherwise the collateral is fetched, verified, stored and
    /// returned. If fetching fails and the cached copy is still valid at `now`, the cached copy
    /// is returned. Offline: the placed file, or an error when there is none.
    pub fn collateral_for(&self, quote: &[u8], now: OffsetDateTime) -> Result<DcapCollateral, Error> {
        self.collateral(quote, now, true)
    }

    /// The collateral for `quote` at time `now`, never from the cache: online, it is fetched,
    /// verified and stored even while the cached copy is fresh, and a failed fetch is an error
    /// (no cached fallback). For when the cached copy turned out older than collateral seen
    /// elsewhere (see [`crate::CollateralFloor`]). Offline: the placed file, read again.
    pub fn refresh(&self, quote: &[u8], now: OffsetDateTime) -> Result<DcapCollateral, Error> {
        self.collateral(quote, now, false)
    }

    fn collateral(
        &self,
        quote: &[u8],
        now: OffsetDateTime,
        use_cache: bool,
    ) -> Result<DcapCollateral, Error> {
        let platform = DcapPlatform::from_quote(quote)?;
        let now = time_util::unix_secs(now)?;
        let path = self.dir.join(format!("{}.json", platform.cache_key()));

        let Some(online) = &self.online else {
            let bytes = fs::read(&path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Error::CollateralFetch(format!(
                    "offline: no collateral file {} for {} FMSPC {} ({} CA)",
                    path.display(),
                    platform.tee,
                    platform.fmspc,
                    platform.ca.as_str()
                )),
                _ => Error::io(&path, e),
            })?;
            return DcapCollateral::from_json(&bytes);
        };

        // A missing, unreadable or corrupt cache file is simply replaced; a refresh ignores it.
        let cached = use_cache
            .then(|| fs::read(&path).ok())
            .flatten()
            .and_then(|bytes| DcapCollateral::from_json(&bytes).ok())
            .and_then(|c| collateral_bounds(&c.inner).ok().map(|b| (c, b)));
        if let Some((c, b)) = &cached
            && b.from <= now
            && now.saturating_add(self.refresh_margin) < b.until
        {
            return Ok(c.clone());
        }

        match online.fetch(&platform, now) {
            Ok((collateral, json)) => {
                write_atomically(&path, &json)?;
                Ok(collateral)
            }
            Err(e) => match cached {
                Some((c, b)) if still_valid(&b, now) => Ok(c),
                _ => Err(e),
            },
        }
    }
}

fn still_valid(b: &Bounds, now: u64) -> bool {
    b.from <= now && now < b.until
}

#[derive(Deserialize)]
struct TcbInfoResponse<'a> {
    #[serde(rename = "tcbInfo", borrow)]
    tcb_info: &'a RawValue,
    signature: String,
}

#[derive(Deserialize)]
struct QeIdentityResponse<'a> {
    #[serde(rename = "enclaveIdentity", borrow)]
    enclave_identity: &'a RawValue,
    signature: String,
}

#[derive(Deserialize)]
struct SignedId {
    id: String,
    #[serde(default)]
    fmspc: Option<String>,
}

struct Response {
    body: Vec<u8>,
    headers: reqwest::header::HeaderMap,
}

impl Response {
    /// A percent-encoded PEM chain header (the first of `names` present).
    fn chain(&self, names: &[&str]) -> Result<String, Error> {
        let value = names
            .iter()
            .find_map(|n| self.headers.get(*n))
            .ok_or_else(|| Error::CollateralFetch(format!("response has no {} header", names.join(" / "))))?;
        let value = value
            .to_str()
            .map_err(|_| Error::CollateralFetch(format!("{} header is not ASCII", names[0])))?;
        percent_decode(value).ok_or_else(|| {
            Error::CollateralFetch(format!("{} header is not valid percent-encoding", names[0]))
        })
    }
}

impl Online {
    fn client(&self) -> Result<&reqwest::blocking::Client, Error> {
        if let Some(client) = self.client.get() {
            return Ok(client);
        }
        let client = reqwest::blocking::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .map_err(|e| Error::CollateralFetch(format!("HTTP client: {e}")))?;
        Ok(self.client.get_or_init(|| client))
    }

    fn get(&self, url: &str) -> Result<Response, Error> {
        let deadline = Instant::now() + HTTP_TIMEOUT;
        let fail = |e: &dyn std::fmt::Display| Error::CollateralFetch(format!("GET {url}: {e}"));
        let mut resp = self.client()?.get(url).send().map_err(|e| fail(&e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(Error::CollateralFetch(format!("GET {url}: HTTP {status}")));
        }
        let over_limit = || {
            fail(&format!(
                "response body exceeds the limit of {MAX_RESPONSE_BYTES} bytes"
            ))
        };
        if resp.content_length().is_some_and(|len| len > MAX_RESPONSE_BYTES) {
            return Err(over_limit());
        }
        let headers = std::mem::take(resp.headers_mut());
        // Each read is bounded by the client's timeout; the deadline bounds them all, so a
        // server that trickles its body cannot hold a fetch for long.
        let mut body = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if Instant::now() >= deadline {
                return Err(fail(&"timed out reading the response body"));
            }
            let n = resp.read(&mut chunk).map_err(|e| fail(&e))?;
            let Some(read) = chunk.get(..n).filter(|read| !read.is_empty()) else {
                break;
            };
            if (body.len() + n) as u64 > MAX_RESPONSE_BYTES {
                return Err(over_limit());
            }
            body.extend_from_slice(read);
        }
        Ok(Response { body, headers })
    }

    /// Fetches the four collateral items, assembles them and verifies them at `now`.
    fn fetch(&self, p: &DcapPlatform, now: u64) -> Result<(DcapCollateral, Vec<u8>), Error> {
        let base = &self.base_url;
        let tee = if p.tee == Tee::Tdx { "tdx" } else { "sgx" };

        let resp = self.get(&format!(
            "{base}/sgx/certification/v4/pckcrl?ca={}&encoding=der",
            p.ca.as_str()
        ))?;
        let pck_crl_issuer_chain = resp.chain(&["SGX-PCK-CRL-Issuer-Chain"])?;
        let pck_crl = crl_body(resp.body, "PCK CRL")?;

        let resp = self.get(&format!("{base}/{tee}/certification/v4/tcb?fmspc={}", p.fmspc))?;
        let tcb_info_issuer_chain = resp.chain(&["TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain"])?;
        let tcb: TcbInfoResponse<'_> = serde_json::from_slice(&resp.body)
            .map_err(|e| Error::CollateralFetch(format!("TCB info response: {e}")))?;
        let tcb_info = tcb.tcb_info.get().to_owned();
        let tcb_info_signature = hex::decode(&tcb.signature)
            .map_err(|e| Error::CollateralFetch(format!("TCB info signature: {e}")))?;
        let id: SignedId =
            serde_json::from_str(&tcb_info).map_err(|e| Error::CollateralFetch(format!("TCB info: {e}")))?;
        let expected_id = if p.tee == Tee::Tdx { "TDX" } else { "SGX" };
        if id.id != expected_id || !id.fmspc.is_some_and(|f| f.eq_ignore_ascii_case(&p.fmspc)) {
            return Err(Error::CollateralFetch(format!(
                "TCB info is not the {expected_id} TCB info of FMSPC {}",
                p.fmspc
            )));
        }

        let resp = self.get(&format!("{base}/{tee}/certification/v4/qe/identity"))?;
        let qe_identity_issuer_chain = resp.chain(&["SGX-Enclave-Identity-Issuer-Chain"])?;
        let qe: QeIdentityResponse<'_> = serde_json::from_slice(&resp.body)
            .map_err(|e| Error::CollateralFetch(format!("QE identity response: {e}")))?;
        let qe_identity = qe.enclave_identity.get().to_owned();
        let qe_identity_signature = hex::decode(&qe.signature)
            .map_err(|e| Error::CollateralFetch(format!("QE identity signature: {e}")))?;

        let resp = self.get(&self.root_crl_url)?;
        let root_ca_crl = crl_body(resp.body, "root CA CRL")?;

        let assembled = QuoteCollateralV3 {
            pck_crl_issuer_chain,
            root_ca_crl,
            pck_crl,
            tcb_info_issuer_chain,
            tcb_info,
            tcb_info_signature,
            qe_identity_issuer_chain,
            qe_identity,
            qe_identity_signature,
            pck_certificate_chain: None,
        };
        let json = serde_json::to_vec(&assembled)
            .map_err(|e| Error::CollateralFetch(format!("encoding collateral: {e}")))?;
        let collateral = DcapCollateral::from_json(&json)?;
        cached::check_collateral(&collateral.inner, now)?;
        Ok((collateral, json))
    }
}

/// A CRL body: DER (starts with a SEQUENCE tag) or hex text, as a PCCS serves the root CA CRL.
fn crl_body(body: Vec<u8>, what: &str) -> Result<Vec<u8>, Error> {
    if body.first() == Some(&0x30) {
        return Ok(body);
    }
    let text = std::str::from_utf8(&body)
        .map_err(|_| Error::CollateralFetch(format!("{what} is neither DER nor hex")))?;
    hex::decode(text.trim()).map_err(|_| Error::CollateralFetch(format!("{what} is neither DER nor hex")))
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Writes `bytes` to a fresh, owner-only temporary file next to `path`, syncs it and renames it
/// over `path`, so readers see either the old or the new file, never a partial one.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("collateral");
    let tmp = dir.join(format!(
        ".{name}.{}.{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let result = options.open(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    let result = result.and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b%0A-").as_deref(), Some("a b\n-"));
        assert_eq!(percent_decode("%2"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
    }

    #[test]
    fn crl_bodies_are_der_or_hex() {
        assert_eq!(crl_body(vec![0x30, 1], "x").ok(), Some(vec![0x30, 1]));
        assert_eq!(crl_body(b"3001\n".to_vec(), "x").ok(), Some(vec![0x30, 1]));
        assert!(crl_body(b"<html>".to_vec(), "x").is_err());
    }

    #[test]
    fn base_url_must_be_http() {
        let dir = std::env::temp_dir();
        assert!(CollateralSource::pccs("ftp://x", &dir).is_err());
        assert!(CollateralSource::pccs("https://x/?a", &dir).is_err());
        let s = CollateralSource::pccs("https://pccs.example/sgx/certification/v4/", &dir).ok();
        let online = s.and_then(|s| s.online);
        assert_eq!(
            online.as_ref().map(|o| o.base_url.as_str()),
            Some("https://pccs.example")
        );
        assert_eq!(
            online.map(|o| o.root_crl_url),
            Some("https://pccs.example/sgx/certification/v4/rootcacrl".to_owned())
        );
        let pcs = CollateralSource::pccs(INTEL_PCS_URL, &dir)
            .ok()
            .and_then(|s| s.online);
        assert_eq!(
            pcs.map(|o| o.root_crl_url),
            Some(INTEL_ROOT_CA_CRL_URL.to_owned())
        );
    }
}
