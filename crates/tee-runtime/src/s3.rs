//! The network [`JobIo`]: a job's input fetched and its outputs uploaded over S3 with the job's
//! own scoped credential, at an endpoint that is either a Unix socket (`unix:///path`, the one
//! a container executor mounts into a container without network) or `http://host:port` (a pod
//! reaching the platform's S3 service).
//!
//! Two requests are all it needs — `GetObject` into a file, `PutObject` from a file — so it is
//! hyper's bare HTTP/1 client (already here for the CAS client) and a SigV4 signer of a few
//! lines, not an SDK: `aws-sigv4` would bring the smithy runtime crates into the TEE's tree,
//! and general-purpose clients are kept out of it (see `tests/tcb.rs`). A plain job's uploads
//! sign the payload's SHA-256 (no `UNSIGNED-PAYLOAD`), so a body changed on its way is refused.
//!
//! A confidential job's outputs ([`S3Io::put_sealed`]) are encrypted while they are sent: one
//! thread seals the plaintext chunk by chunk a few chunks ahead of the body, so the encryption
//! overlaps the endpoint's ingest instead of preceding it, and no sealed copy is ever written.
//! Their body is `UNSIGNED-PAYLOAD` (hashing it first would read it twice): the ciphertext is
//! authenticated end to end by its AEAD and bound to its bucket and key, so a body changed on
//! its way is refused by the recipient who decrypts it, as one changed in storage would be.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use cloister_crypt::{EncryptOptions, ObjectBinding, Recipient};
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
/// The payload hash SigV4 signs for a body it does not cover.
const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// How long a streamed upload waits for the endpoint's `100 Continue` before it sends its body
/// anyway (RFC 9110 §10.1.1: a server may not send one). The wait is what lets a refusal
/// (scope, signature, a full disk) reach the client as an answer: a refusal to a body already
/// on its way is often lost when the endpoint closes under it.
const CONTINUE_WAIT: Duration = Duration::from_secs(2);
/// Plaintext bytes per chunk of a sealed output (the chunk buffer stays in cache).
const SEALED_CHUNK: u32 = 1 << 20;
/// Chunks the sealing thread may be ahead of the body.
const SEALED_AHEAD: usize = 4;

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

/// Why a sealed upload ([`S3Io::put_sealed`]) failed.
#[derive(Debug, thiserror::Error)]
pub enum PutSealedError {
    /// The plaintext could not be read, or changed while it was sealed.
    #[error("{0}")]
    Read(std::io::Error),
    /// The encryption itself failed.
    #[error(transparent)]
    Crypt(#[from] cloister_crypt::CryptError),
    /// The endpoint did not store the object.
    #[error(transparent)]
    Upload(#[from] S3Error),
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

    /// One request of `length` bytes of `body` (whose SHA-256 is `payload_hash`, or
    /// [`UNSIGNED_PAYLOAD`]), signed.
    fn signed<B>(
        &self,
        method: http::Method,
        bucket: &str,
        key: &str,
        body: B,
        length: u64,
        payload_hash: &str,
    ) -> Result<http::Request<B>, S3Error> {
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
        Ok(request
            .header(http::header::AUTHORIZATION, authorization)
            .header(http::header::CONTENT_LENGTH, length)
            .body(body)?)
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
        let length = body.remaining;
        let request = self.signed(method, bucket, key, body, length, payload_hash)?;
        // The connection serves until the answer's body has been read, then ends.
        let (mut sender, _connection) = self.connect().await?;
        Ok(sender.send_request(request).await?)
    }

    async fn connect<B>(
        &self,
    ) -> Result<
        (
            hyper::client::conn::http1::SendRequest<B>,
            tokio::task::JoinHandle<()>,
        ),
        S3Error,
    >
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
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
            Ok(Ok(connected)) => Ok(connected),
            Ok(Err(e)) => Err(unreachable(e)),
            Err(_) => Err(unreachable(std::io::ErrorKind::TimedOut.into())),
        }
    }

    /// Encrypts the regular file `src` to `recipients`, bound to `bucket/key`, and stores it
    /// there with one `PutObject`, while it is encrypted: a thread seals chunk after chunk a
    /// few chunks ahead of the body (see the module docs for why the body is unsigned). The
    /// object's length is known before it is sealed ([`cloister_crypt::encrypted_len`]), so it
    /// goes with its `Content-Length`; a body that ends short of it, or a failure of the
    /// sealing thread, cuts the request, and the endpoint stores nothing. Returns the
    /// ciphertext's length.
    pub async fn put_sealed(
        &self,
        src: &Path,
        bucket: &str,
        key: &str,
        recipients: &[Recipient],
    ) -> Result<u64, PutSealedError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        // A link or FIFO put in an output's place since the outputs were listed is refused,
        // not followed or waited on.
        let plain = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(src)
            .map_err(PutSealedError::Read)?;
        let metadata = plain.metadata().map_err(PutSealedError::Read)?;
        if !metadata.is_file() {
            return Err(PutSealedError::Read(std::io::Error::other("not a regular file")));
        }
        let length = cloister_crypt::encrypted_len(metadata.len(), recipients, SEALED_CHUNK);
        let (frames, body) = tokio::sync::mpsc::channel(SEALED_AHEAD);
        let sealing = {
            let (recipients, binding) = (recipients.to_vec(), ObjectBinding::new(bucket, key));
            let plain_len = metadata.len();
            tokio::task::spawn_blocking(move || seal_into(plain, plain_len, &recipients, &binding, frames))
        };
        let stored = self.put_stream(bucket, key, length, body).await;
        // The body's end (sent, or dropped with the connection) ends the thread.
        let sealed = sealing
            .await
            .map_err(|e| PutSealedError::Read(std::io::Error::other(e)))?;
        match (sealed, stored) {
            // The sealing thread stopped because the upload had ended: the upload says why.
            (Err(Sealing::Stopped), stored) => Err(stored
                .err()
                .unwrap_or_else(|| S3Error::File(std::io::Error::other("the body was not sent whole")))
                .into()),
            (Err(Sealing::Failed(failure)), _) => Err(failure),
            (Ok(()), Err(e)) => Err(e.into()),
            (Ok(()), Ok(())) => Ok(length),
        }
    }

    /// `PutObject` of exactly `length` bytes that `frames` brings (an `Err` frame cuts the
    /// request), unsigned, sent once the endpoint asked for it (`Expect: 100-continue`).
    pub async fn put_stream(
        &self,
        bucket: &str,
        key: &str,
        length: u64,
        frames: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    ) -> Result<(), S3Error> {
        let (continued, go_ahead) = tokio::sync::oneshot::channel::<()>();
        let body = ChannelBody {
            frames,
            remaining: length,
            go_ahead: Some(Box::pin(async move {
                let _ = tokio::time::timeout(CONTINUE_WAIT, go_ahead).await;
            })),
        };
        let mut request = self.signed(http::Method::PUT, bucket, key, body, length, UNSIGNED_PAYLOAD)?;
        request.headers_mut().insert(
            http::header::EXPECT,
            http::HeaderValue::from_static("100-continue"),
        );
        let continued = std::sync::Mutex::new(Some(continued));
        hyper::ext::on_informational(&mut request, move |answer| {
            if answer.status() == http::StatusCode::CONTINUE
                && let Some(continued) = continued.lock().ok().and_then(|mut c| c.take())
            {
                let _ = continued.send(());
            }
        });
        let (mut sender, connection) = self.connect().await?;
        // Whatever the answer, the connection (and with it the body, which would otherwise
        // keep the sealing thread waiting) ends here.
        let _connection = AbortOnDrop(connection);
        let response = match sender.send_request(request).await {
            Err(e) => return Err(S3Error::Interrupted(e)),
            Ok(response) => response,
        };
        if !response.status().is_success() {
            return Err(refusal(response).await);
        }
        Ok(())
    }
}

/// Ends a connection's task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why the sealing thread stopped early.
enum Sealing {
    /// The body is no longer read: the upload ended (refused, cut); it says why.
    Stopped,
    /// Reading or sealing the plaintext failed.
    Failed(PutSealedError),
}

/// Seals exactly `plain_len` bytes of `plain` into frames of at most one chunk each; on a
/// failure the body gets an error frame, which cuts the request.
fn seal_into(
    plain: std::fs::File,
    plain_len: u64,
    recipients: &[Recipient],
    binding: &ObjectBinding,
    frames: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
) -> Result<(), Sealing> {
    let sink = FrameSink {
        frames: &frames,
        pool: Arc::default(),
    };
    let options = EncryptOptions {
        chunk_size: SEALED_CHUNK,
    };
    let plain = ExactLen {
        file: plain,
        left: plain_len,
    };
    // The plaintext is read straight into the sealer's chunk buffer.
    let result = match cloister_crypt::encrypt(plain, sink, recipients, binding, &options) {
        Ok(_) => Ok(()),
        Err(cloister_crypt::CryptError::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            Err(Sealing::Stopped)
        }
        Err(cloister_crypt::CryptError::Io(e)) => Err(Sealing::Failed(PutSealedError::Read(e))),
        Err(e) => Err(Sealing::Failed(e.into())),
    };
    if let Err(Sealing::Failed(failure)) = &result {
        let _ = frames.blocking_send(Err(std::io::Error::other(failure.to_string())));
    }
    result
}

/// A file read as exactly `left` more bytes: one that shrank or grew meanwhile is an error
/// before its last chunk is sealed (the sealer looks for the end before it seals it), so what
/// was announced is what is sent, or nothing is stored.
struct ExactLen {
    file: std::fs::File,
    left: u64,
}

impl std::io::Read for ExactLen {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            return match self.file.read(&mut [0u8; 1])? {
                0 => Ok(0),
                _ => Err(std::io::Error::other("the file grew while it was encrypted")),
            };
        }
        let want = usize::try_from(self.left).map_or(buf.len(), |left| left.min(buf.len()));
        let n = self.file.read(buf.get_mut(..want).unwrap_or_default())?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file shrank while it was encrypted",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// The sealer's output, one frame per write (the header, then each sealed chunk), in buffers
/// that come back to `pool` once sent: a few chunks' worth of memory is reused for the whole
/// object instead of a fresh allocation per chunk.
struct FrameSink<'a> {
    frames: &'a tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    pool: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl std::io::Write for FrameSink<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut buf = self
            .pool
            .lock()
            .ok()
            .and_then(|mut pool| pool.pop())
            .unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(data);
        let frame = Bytes::from_owner(Pooled {
            buf,
            pool: self.pool.clone(),
        });
        self.frames
            .blocking_send(Ok(frame))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the upload ended"))?;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A frame's buffer, back to its pool when the frame has been sent.
struct Pooled {
    buf: Vec<u8>,
    pool: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Ok(mut pool) = self.pool.lock()
            && pool.len() <= SEALED_AHEAD
        {
            pool.push(std::mem::take(&mut self.buf));
        }
    }
}

/// A connection's request sender and the task that drives it (dropping the handle leaves the
/// task to end with the connection).
async fn handshake<T, B>(
    io: T,
) -> std::io::Result<(
    hyper::client::conn::http1::SendRequest<B>,
    tokio::task::JoinHandle<()>,
)>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(std::io::Error::other)?;
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((sender, task))
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
            .map(|(value, _)| xml_text(value).chars().take(500).collect::<String>())
            .unwrap_or_default()
    };
    S3Error::Refused {
        status,
        code: element("Code"),
        message: element("Message"),
    }
}

/// The text of an XML element's content: the five predefined entities replaced (S3's messages
/// hold no other markup).
fn xml_text(escaped: &str) -> String {
    escaped
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
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

/// A request body of exactly `remaining` bytes received from a producer, held back until
/// `go_ahead` resolves (the endpoint's `100 Continue`, or the wait for it ran out).
struct ChannelBody {
    frames: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    remaining: u64,
    go_ahead: Option<Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
}

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        if let Some(go_ahead) = this.go_ahead.as_mut() {
            if go_ahead.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.go_ahead = None;
        }
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        match this.frames.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(data))) => match this.remaining.checked_sub(data.len() as u64) {
                Some(remaining) => {
                    this.remaining = remaining;
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                None => Poll::Ready(Some(Err(std::io::Error::other(
                    "the body is longer than its Content-Length",
                )))),
            },
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the body ended before its Content-Length",
            )))),
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

    /// An output that changes while it is sealed fails before its last chunk: what was
    /// announced as the body's length is what is sent, or nothing is.
    #[test]
    fn a_file_that_grew_or_shrank_is_not_read_as_its_length() {
        use std::io::Read as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        std::fs::write(&path, b"0123456789").unwrap();
        let read = |left: u64| {
            let mut exact = ExactLen {
                file: std::fs::File::open(&path).unwrap(),
                left,
            };
            let mut got = Vec::new();
            exact.read_to_end(&mut got).map(|_| got)
        };
        assert_eq!(read(10).unwrap(), b"0123456789");
        let grew = read(8).unwrap_err().to_string();
        assert!(grew.contains("grew"), "{grew}");
        let shrank = read(12).unwrap_err().to_string();
        assert!(shrank.contains("shrank"), "{shrank}");
    }

    #[test]
    fn error_messages_are_unescaped_once() {
        assert_eq!(
            xml_text("The server&apos;s disk &lt;is&gt; &quot;full&quot; &amp;amp;"),
            "The server's disk <is> \"full\" &amp;"
        );
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
