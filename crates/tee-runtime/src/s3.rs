//! The network [`JobIo`]: a job's input fetched and its outputs uploaded over S3 with the job's
//! own scoped credential, at an endpoint that is either a Unix socket (`unix:///path`, the one
//! a container executor mounts into a container without network) or `http://host:port` (a pod
//! reaching the platform's S3 service).
//!
//! Two requests are all it needs — `GetObject` into a file, `PutObject` from a file — so it is
//! hyper's bare HTTP/1 client (already here for the CAS client) and a SigV4 signer of a few
//! lines, not an SDK: `aws-sigv4` would bring the smithy runtime crates into the TEE's tree,
//! and general-purpose clients are kept out of it (see `tests/tcb.rs`). Uploads sign the
//! payload's SHA-256 (no `UNSIGNED-PAYLOAD`), so a body changed on its way is refused.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use cloister_runtime::{IoError, JobIo, StorageAccess};
use hmac::{Hmac, Mac};
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use zeroize::Zeroizing;

/// Time allowed to connect and exchange HTTP/1 handshakes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bytes of an error answer read for its code and message.
const MAX_ERROR_BODY: usize = 16 * 1024;
/// The SHA-256 of an empty payload.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Why a request to the job's S3 endpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// The endpoint is neither `unix:///path` nor `http://host[:port]`.
    #[error("the storage endpoint {0:?} is neither unix:///PATH nor http://HOST:PORT")]
    Endpoint(String),
    /// Connecting failed or timed out.
    #[error("cannot reach the storage endpoint {endpoint}: {source}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("the storage endpoint's connection failed: {0}")]
    Http(#[from] hyper::Error),
    /// The endpoint ended the connection while the body was being sent: it answers a refusal
    /// before reading a body and then closes (its answer is then often lost to the client).
    #[error(
        "the storage endpoint closed the connection while the file was sent ({0}): a refusal (the \
         job's credential may not write there) or the endpoint went away"
    )]
    Interrupted(hyper::Error),
    /// The request could not be built (a name that is not a valid header or path).
    #[error("cannot build the request: {0}")]
    Request(#[from] http::Error),
    /// The endpoint answered with an error.
    #[error("the storage endpoint refused it: {status} {code}{}", parenthesised(.message))]
    Refused {
        /// The HTTP status.
        status: u16,
        /// S3's error code.
        code: String,
        /// S3's message.
        message: String,
    },
    /// Reading or writing the local file failed.
    #[error("{0}")]
    File(#[from] std::io::Error),
}

fn parenthesised(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(" ({message})")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    Unix(PathBuf),
    Tcp { authority: String },
}

impl Endpoint {
    fn parse(text: &str) -> Result<Self, S3Error> {
        let bad = || S3Error::Endpoint(text.to_owned());
        if let Some(path) = text.strip_prefix("unix://") {
            return if path.starts_with('/') && !path.contains('\0') {
                Ok(Self::Unix(PathBuf::from(path)))
            } else {
                Err(bad())
            };
        }
        let authority = text.strip_prefix("http://").ok_or_else(bad)?;
        let authority = authority.strip_suffix('/').unwrap_or(authority);
        let valid = !authority.is_empty()
            && authority
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-.:[]_".contains(c));
        if valid {
            Ok(Self::Tcp {
                authority: authority.to_owned(),
            })
        } else {
            Err(bad())
        }
    }

    /// The `Host` header: what is signed and sent. A socket has no host name; any value the
    /// client signs is checked as sent.
    fn host(&self) -> &str {
        match self {
            Self::Unix(_) => "localhost",
            Self::Tcp { authority } => authority,
        }
    }
}

/// A job's S3 access over the network, as a [`JobIo`].
pub struct S3Io {
    endpoint: Endpoint,
    endpoint_text: String,
    region: String,
    access_key_id: String,
    secret_access_key: Zeroizing<String>,
}

impl std::fmt::Debug for S3Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Io")
            .field("endpoint", &self.endpoint_text)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl S3Io {
    /// A client for `access`'s endpoint, signing with its credential.
    pub fn new(access: &StorageAccess) -> Result<Self, S3Error> {
        Ok(Self {
            endpoint: Endpoint::parse(&access.endpoint)?,
            endpoint_text: access.endpoint.clone(),
            region: access.region.clone(),
            access_key_id: access.access_key_id.clone(),
            secret_access_key: Zeroizing::new(access.secret_access_key.clone()),
        })
    }

    /// Sends one signed request with `body` (whose SHA-256 is `payload_hash`) on a fresh
    /// connection.
    async fn send(
        &self,
        method: http::Method,
        bucket: &str,
        key: &str,
        body: FileBody,
        payload_hash: &str,
    ) -> Result<http::Response<hyper::body::Incoming>, S3Error> {
        let path = object_path(bucket, key);
        let now = OffsetDateTime::now_utc();
        let amz_date = amz_date(now);
        let host = self.endpoint.host();
        let headers = [
            ("host", host),
            ("x-amz-content-sha256", payload_hash),
            ("x-amz-date", amz_date.as_str()),
        ];
        let authorization = authorization(&Signing {
            method: method.as_str(),
            path: &path,
            headers: &headers,
            payload_hash,
            time: now,
            region: &self.region,
            access_key_id: &self.access_key_id,
            secret_access_key: &self.secret_access_key,
        });
        let mut request = http::Request::builder().method(method).uri(path.as_str());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let length = body.remaining;
        let request = request
            .header(http::header::AUTHORIZATION, authorization)
            .header(http::header::CONTENT_LENGTH, length)
            .body(body)?;
        let mut sender = self.connect().await?;
        Ok(sender.send_request(request).await?)
    }

    async fn connect(&self) -> Result<hyper::client::conn::http1::SendRequest<FileBody>, S3Error> {
        let unreachable = |source| S3Error::Connect {
            endpoint: self.endpoint_text.clone(),
            source,
        };
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, async {
            match &self.endpoint {
                Endpoint::Unix(path) => {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    handshake(TokioIo::new(stream)).await
                }
                Endpoint::Tcp { authority } => {
                    let stream = tokio::net::TcpStream::connect(authority.as_str()).await?;
                    let _ = stream.set_nodelay(true);
                    handshake(TokioIo::new(stream)).await
                }
            }
        })
        .await;
        match connected {
            Ok(Ok(sender)) => Ok(sender),
            Ok(Err(e)) => Err(unreachable(e)),
            Err(_) => Err(unreachable(std::io::ErrorKind::TimedOut.into())),
        }
    }
}

async fn handshake<T>(io: T) -> std::io::Result<hyper::client::conn::http1::SendRequest<FileBody>>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// An error answer as an [`S3Error::Refused`], with S3's code and message when the body has them.
async fn refusal(response: http::Response<hyper::body::Incoming>) -> S3Error {
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut text = Vec::new();
    while text.len() < MAX_ERROR_BODY {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    text.extend_from_slice(data);
                }
            }
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&text);
    let element = |name: &str| {
        let open = format!("<{name}>");
        text.split_once(open.as_str())
            .and_then(|(_, rest)| rest.split_once(&format!("</{name}>")))
            .map(|(value, _)| value.chars().take(500).collect::<String>())
            .unwrap_or_default()
    };
    S3Error::Refused {
        status,
        code: element("Code"),
        message: element("Message"),
    }
}

#[async_trait::async_trait]
impl JobIo for S3Io {
    async fn fetch(&self, bucket: &str, key: &str, dest: &Path) -> Result<u64, IoError> {
        let response = self
            .send(http::Method::GET, bucket, key, FileBody::empty(), EMPTY_SHA256)
            .await?;
        if !response.status().is_success() {
            return Err(refusal(response).await.into());
        }
        // Created, never opened if present: nothing in the work directory is written through.
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dest)
            .await
            .map_err(S3Error::File)?;
        let mut body = response.into_body();
        let mut written = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(S3Error::Http)?;
            if let Some(data) = frame.data_ref() {
                file.write_all(data).await.map_err(S3Error::File)?;
                written += data.len() as u64;
            }
        }
        file.flush().await.map_err(S3Error::File)?;
        Ok(written)
    }

    async fn upload(&self, bucket: &str, key: &str, src: &Path) -> Result<(), IoError> {
        let (hash, length) = {
            let src = src.to_owned();
            tokio::task::spawn_blocking(move || file_sha256(&src))
                .await
                .map_err(std::io::Error::other)
                .and_then(|hashed| hashed)
                .map_err(S3Error::File)?
        };
        let file = tokio::fs::File::open(src).await.map_err(S3Error::File)?;
        let response = match self
            .send(http::Method::PUT, bucket, key, FileBody::new(file, length), &hash)
            .await
        {
            Err(S3Error::Http(e)) => return Err(S3Error::Interrupted(e).into()),
            sent => sent?,
        };
        if !response.status().is_success() {
            return Err(refusal(response).await.into());
        }
        Ok(())
    }
}

/// The SHA-256 (hex) and length of a file.
fn file_sha256(path: &Path) -> std::io::Result<(String, u64)> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut length = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        length += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), length))
}

/// A request body streamed from a file, of exactly the length that was hashed: a file that
/// shrank meanwhile is an error, one that grew is sent as it was hashed (and refused by the
/// endpoint if its bytes changed).
struct FileBody {
    file: Option<tokio::fs::File>,
    remaining: u64,
    buf: Box<[u8]>,
}

impl FileBody {
    fn empty() -> Self {
        Self {
            file: None,
            remaining: 0,
            buf: Box::default(),
        }
    }

    fn new(file: tokio::fs::File, length: u64) -> Self {
        Self {
            file: Some(file),
            remaining: length,
            buf: vec![0u8; 64 * 1024].into_boxed_slice(),
        }
    }
}

impl hyper::body::Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        if this.remaining == 0 {
            this.file = None;
            return Poll::Ready(None);
        }
        let Some(file) = this.file.as_mut() else {
            return Poll::Ready(None);
        };
        let wanted = usize::try_from(this.remaining).map_or(this.buf.len(), |r| r.min(this.buf.len()));
        let mut buf = ReadBuf::new(&mut this.buf[..wanted]);
        match Pin::new(file).poll_read(cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) => {
                let read = buf.filled();
                if read.is_empty() {
                    return Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the file shrank while it was uploaded",
                    ))));
                }
                this.remaining -= read.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(read)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// The path-style URI of an object, each byte outside RFC 3986's unreserved set percent-encoded
/// (a key's `/` kept), as SigV4 wants S3's canonical URI: encoded once, never normalised.
fn object_path(bucket: &str, key: &str) -> String {
    let mut path = String::with_capacity(bucket.len() + key.len() + 2);
    path.push('/');
    encode_into(&mut path, bucket, false);
    path.push('/');
    encode_into(&mut path, key, true);
    path
}

fn encode_into(out: &mut String, text: &str, keep_slash: bool) {
    for byte in text.bytes() {
        let unreserved = byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~');
        if unreserved || (keep_slash && byte == b'/') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
}

/// `x-amz-date`: `YYYYMMDDTHHMMSSZ` in UTC.
fn amz_date(time: OffsetDateTime) -> String {
    let time = time.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        time.year(),
        u8::from(time.month()),
        time.day(),
        time.hour(),
        time.minute(),
        time.second()
    )
}

/// What a SigV4 signature of a request without query covers.
struct Signing<'a> {
    method: &'a str,
    /// The canonical (encoded) URI.
    path: &'a str,
    /// The signed headers: lowercase names in order, trimmed values.
    headers: &'a [(&'a str, &'a str)],
    payload_hash: &'a str,
    time: OffsetDateTime,
    region: &'a str,
    access_key_id: &'a str,
    secret_access_key: &'a str,
}

/// The `Authorization` header of AWS Signature Version 4 for S3.
fn authorization(input: &Signing<'_>) -> String {
    let amz_date = amz_date(input.time);
    let date = &amz_date[..8];
    let scope = format!("{date}/{}/s3/aws4_request", input.region);
    let mut canonical = format!("{}\n{}\n\n", input.method, input.path);
    for (name, value) in input.headers {
        canonical.push_str(name);
        canonical.push(':');
        canonical.push_str(value.trim());
        canonical.push('\n');
    }
    let signed_headers = input
        .headers
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(";");
    canonical.push('\n');
    canonical.push_str(&signed_headers);
    canonical.push('\n');
    canonical.push_str(input.payload_hash);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let secret = Zeroizing::new(format!("AWS4{}", input.secret_access_key));
    let mut key = hmac(secret.as_bytes(), date.as_bytes());
    for part in [input.region, "s3", "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let signature = hex::encode(hmac(&key, string_to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        input.access_key_id
    )
}

fn hmac(key: &[u8], data: &[u8]) -> Zeroizing<Vec<u8>> {
    // HMAC takes keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    Zeroizing::new(mac.finalize().into_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The GET example of AWS's SigV4 documentation for S3 ("Example: GET Object").
    #[test]
    fn signs_as_the_aws_documentation_example() {
        let time = time::macros::datetime!(2013-05-24 00:00:00 UTC);
        let headers = [
            ("host", "examplebucket.s3.amazonaws.com"),
            ("range", "bytes=0-9"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", "20130524T000000Z"),
        ];
        let header = authorization(&Signing {
            method: "GET",
            path: "/test.txt",
            headers: &headers,
            payload_hash: EMPTY_SHA256,
            time,
            region: "us-east-1",
            access_key_id: "AKIAIOSFODNN7EXAMPLE",
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        });
        assert_eq!(
            header,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
        assert_eq!(amz_date(time), "20130524T000000Z");
    }

    #[test]
    fn keys_are_encoded_once_with_their_slashes() {
        assert_eq!(object_path("b", "a b/ü+x~.txt"), "/b/a%20b/%C3%BC%2Bx~.txt");
        assert_eq!(object_path("b", "../x//y"), "/b/../x//y");
    }

    #[test]
    fn endpoints_are_a_socket_or_plain_http() {
        assert_eq!(
            Endpoint::parse("unix:///cloister/ctl/s3.sock").unwrap(),
            Endpoint::Unix(PathBuf::from("/cloister/ctl/s3.sock"))
        );
        assert_eq!(
            Endpoint::parse("http://10.0.0.1:9000/").unwrap().host(),
            "10.0.0.1:9000"
        );
        for bad in [
            "unix://relative",
            "https://s3.example:443",
            "http://user@host:1",
            "http://host/path",
            "http://",
            "ftp://x",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
