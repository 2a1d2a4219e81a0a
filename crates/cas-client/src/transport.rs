//! HTTP/1 exchanges with the CAS: over pinned TLS on its network port, or over the operator's
//! Unix socket.
//!
//! A client keeps one connection alive between requests (the CAS benchmark makes thousands of
//! attestations per client; a TLS handshake for each would dominate) and opens another only
//! when that one is busy or was closed. Every answer is read in full, up to
//! [`MAX_ANSWER_BYTES`], and connecting and each exchange have a time limit, so a hostile or
//! black-holed server can neither exhaust memory nor hold a job forever.

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use crate::client::ClientError;

/// The largest answer body accepted. CAS answers are small JSON documents and secrets; a
/// bigger one is refused rather than buffered.
pub(crate) const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;
/// Time allowed for TCP connect, TLS handshake and HTTP/1 setup together.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed for one request: sending it and reading the whole answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A complete answer: its status and its whole body.
pub(crate) struct Response {
    pub(crate) status: StatusCode,
    pub(crate) body: Vec<u8>,
}

enum Endpoint {
    /// The CAS's network port; the TLS configuration accepts only the pinned key.
    Tls {
        host: String,
        port: u16,
        /// A Unix socket that carries the connection to `host:port` instead of TCP (a
        /// container without network reaches the CAS through a relay); the TLS session, and
        /// so the pin, is end to end either way.
        via: Option<PathBuf>,
        server_name: ServerName<'static>,
        connector: TlsConnector,
    },
    /// The operator socket on the CAS host.
    Unix(PathBuf),
}

/// An open HTTP/1 connection and the task that drives it.
struct Connection {
    sender: SendRequest<Full<Bytes>>,
    driver: tokio::task::AbortHandle,
}

impl Drop for Connection {
    /// A connection given up on (timed out, failed, or its client dropped) must not leave a
    /// task waiting on a silent server.
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Requests to one endpoint over a kept-alive connection.
pub(crate) struct Transport {
    endpoint: Endpoint,
    /// The `Host` header.
    authority: String,
    /// The endpoint in messages.
    name: String,
    idle: Mutex<Option<Connection>>,
    connect_timeout: Duration,
    request_timeout: Duration,
}

/// Why a request failed, and whether it may be sent again on a fresh connection.
enum Failure {
    /// The request never left: the kept-alive connection had closed in between.
    NotSent(Box<Request<Full<Bytes>>>, ClientError),
    Failed(ClientError),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::Failed(e)
    }
}

impl Transport {
    /// The CAS at `url` (`https://host[:port]`), through `tls`.
    pub(crate) fn https(url: &str, tls: rustls::ClientConfig) -> Result<Self, ClientError> {
        let (host, port, authority) = parse_https_url(url).map_err(ClientError::Local)?;
        let server_name = ServerName::try_from(host.clone())
            .map_err(|_| ClientError::Local(format!("'{host}' is neither a host name nor an IP address")))?;
        Ok(Self::new(
            Endpoint::Tls {
                host,
                port,
                via: None,
                server_name,
                connector: TlsConnector::from(std::sync::Arc::new(tls)),
            },
            authority.clone(),
            authority,
        ))
    }

    /// Carries the TLS connections through the Unix socket at `path` (a relay to the CAS's
    /// port) instead of connecting to the URL's host and port. Does nothing to a transport
    /// that is not TLS.
    pub(crate) fn through(&mut self, path: PathBuf) {
        if let Endpoint::Tls { via, .. } = &mut self.endpoint {
            self.name = format!("{} (through {})", self.authority, path.display());
            *via = Some(path);
        }
    }

    /// The Unix socket at `path`.
    pub(crate) fn unix(path: PathBuf) -> Self {
        let name = path.display().to_string();
        Self::new(Endpoint::Unix(path), "cas".into(), name)
    }

    fn new(endpoint: Endpoint, authority: String, name: String) -> Self {
        Self {
            endpoint,
            authority,
            name,
            idle: Mutex::new(None),
            connect_timeout: CONNECT_TIMEOUT,
            request_timeout: REQUEST_TIMEOUT,
        }
    }

    #[cfg(test)]
    pub(crate) fn set_timeouts(&mut self, connect: Duration, request: Duration) {
        self.connect_timeout = connect;
        self.request_timeout = request;
    }

    /// Sends `method path_and_query` with `headers` and `body`, and reads the whole answer.
    pub(crate) async fn request(
        &self,
        method: Method,
        path_and_query: &str,
        headers: impl IntoIterator<Item = (&'static str, String)>,
        body: Vec<u8>,
    ) -> Result<Response, ClientError> {
        let mut request = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(header::HOST, &self.authority)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| {
                ClientError::Local(format!("cannot form the request for '{path_and_query}': {e}"))
            })?;
        for (name, value) in headers {
            let bad =
                |e: &dyn std::fmt::Display| ClientError::Local(format!("cannot form the {name} header: {e}"));
            let header = HeaderName::from_bytes(name.as_bytes()).map_err(|e| bad(&e))?;
            let value = HeaderValue::try_from(value).map_err(|e| bad(&e))?;
            request.headers_mut().insert(header, value);
        }
        let mut kept = self.take_idle();
        loop {
            let reused = kept.is_some();
            let mut connection = match kept.take() {
                Some(connection) => connection,
                None => self.connect().await?,
            };
            let exchange = tokio::time::timeout(self.request_timeout, exchange(&mut connection, request));
            match exchange.await {
                Ok(Ok(response)) => {
                    self.keep(connection);
                    return Ok(response);
                }
                // A kept connection the server closed while it was idle: what reqwest (and
                // hyper-util's pool) do too, send once more on a new one. Only a request that
                // never left is sent again, so nothing runs twice.
                Ok(Err(Failure::NotSent(unsent, _))) if reused => request = *unsent,
                Ok(Err(Failure::NotSent(_, e) | Failure::Failed(e))) => return Err(e),
                Err(_) => {
                    return Err(ClientError::Unavailable {
                        message: format!("{} did not answer within {:?}", self.name, self.request_timeout),
                        sent: true,
                    });
                }
            }
        }
    }

    fn take_idle(&self) -> Option<Connection> {
        let connection = self.idle.lock().unwrap_or_else(PoisonError::into_inner).take()?;
        (!connection.sender.is_closed()).then_some(connection)
    }

    /// Keeps `connection` for the next request, unless another one already waits there (a
    /// client used by several tasks at once holds one connection per task meanwhile).
    fn keep(&self, connection: Connection) {
        if connection.sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.is_none() {
            *idle = Some(connection);
        }
    }

    async fn connect(&self) -> Result<Connection, ClientError> {
        match tokio::time::timeout(self.connect_timeout, self.open()).await {
            Ok(connection) => connection,
            Err(_) => Err(ClientError::Unavailable {
                message: format!(
                    "cannot connect to {} within {:?}",
                    self.name, self.connect_timeout
                ),
                sent: false,
            }),
        }
    }

    async fn open(&self) -> Result<Connection, ClientError> {
        let name = &self.name;
        match &self.endpoint {
            Endpoint::Tls {
                host,
                port,
                via,
                server_name,
                connector,
            } => {
                let cannot_connect =
                    |e: std::io::Error| unavailable(&format!("cannot connect to {name}"), &e, false);
                match via {
                    Some(path) => {
                        let stream = tokio::net::UnixStream::connect(path)
                            .await
                            .map_err(cannot_connect)?;
                        tls_handshake(connector, server_name, stream, name).await
                    }
                    None => {
                        let tcp = tokio::net::TcpStream::connect((host.as_str(), *port))
                            .await
                            .map_err(cannot_connect)?;
                        // Requests are small and answered at once: waiting to fill segments
                        // only adds latency.
                        tcp.set_nodelay(true).map_err(|e| {
                            unavailable(&format!("cannot set up the connection to {name}"), &e, false)
                        })?;
                        tls_handshake(connector, server_name, tcp, name).await
                    }
                }
            }
            Endpoint::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|e| unavailable(&format!("cannot connect to {name}"), &e, false))?;
                handshake(TokioIo::new(stream), name).await
            }
        }
    }
}

/// The pinned TLS session over `stream`, then HTTP/1 in it.
async fn tls_handshake<S>(
    connector: &TlsConnector,
    server_name: &ServerName<'static>,
    stream: S,
    name: &str,
) -> Result<Connection, ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let tls = connector
        .connect(server_name.clone(), stream)
        .await
        .map_err(|e| {
            let context = format!("TLS handshake with {name} failed");
            // rustls reports its verdicts (a certificate that does not match the pin) as invalid
            // data; anything else is the connection failing.
            if e.kind() == std::io::ErrorKind::InvalidData {
                failure(&context, &e)
            } else {
                unavailable(&context, &e, false)
            }
        })?;
    handshake(TokioIo::new(tls), name).await
}

async fn handshake<T>(io: T, name: &str) -> Result<Connection, ClientError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(io)
        .await
        .map_err(|e| unavailable(&format!("HTTP with {name} failed"), &e, false))?;
    let driver = tokio::spawn(async move {
        // Its errors reach the request that was in flight; none is left to tell otherwise.
        let _ = connection.await;
    })
    .abort_handle();
    Ok(Connection { sender, driver })
}

async fn exchange(connection: &mut Connection, request: Request<Full<Bytes>>) -> Result<Response, Failure> {
    if let Err(e) = connection.sender.ready().await {
        return Err(Failure::NotSent(
            Box::new(request),
            unavailable("the connection to the CAS closed", &e, false),
        ));
    }
    let response = match connection.sender.try_send_request(request).await {
        Ok(response) => response,
        Err(mut e) => {
            let context = "the request to the CAS failed";
            return Err(match e.take_message() {
                Some(request) => Failure::NotSent(Box::new(request), unavailable(context, e.error(), false)),
                None => Failure::Failed(unavailable(context, e.error(), true)),
            });
        }
    };
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<LengthLimitError>() {
                ClientError::Transport(format!(
                    "the CAS's answer is larger than {} MiB",
                    MAX_ANSWER_BYTES >> 20
                ))
            } else {
                unavailable("reading the CAS's answer failed", e.as_ref(), true)
            }
        })?;
    Ok(Response {
        status: parts.status,
        body: body.to_bytes().into(),
    })
}

/// A transport error with its whole cause chain (a TLS failure such as a pin mismatch is only
/// named deep in it).
fn failure(context: &str, error: &(dyn std::error::Error + 'static)) -> ClientError {
    ClientError::Transport(chain(context, error))
}

/// [`ClientError::Unavailable`] with the error's whole cause chain; `sent` when the request
/// may have reached the CAS.
fn unavailable(context: &str, error: &(dyn std::error::Error + 'static), sent: bool) -> ClientError {
    ClientError::Unavailable {
        message: chain(context, error),
        sent,
    }
}

fn chain(context: &str, error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = format!("{context}: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// Splits `https://host[:port]` (a trailing `/` allowed) into host, port and the authority for
/// the `Host` header. Anything else is refused: plain `http` would bypass the pin, and a path,
/// query or user part would not be what request signatures cover.
fn parse_https_url(url: &str) -> Result<(String, u16, String), String> {
    let bad = |why: &str| format!("the CAS URL '{url}' {why}: expected https://host[:port]");
    let scheme_end = url.find("://").ok_or_else(|| bad("has no scheme"))?;
    let (scheme, rest) = (&url[..scheme_end], &url[scheme_end + 3..]);
    if !scheme.eq_ignore_ascii_case("https") {
        return Err(bad("is not https (the CAS is only reached over pinned TLS)"));
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty()
        || authority.contains(['/', '?', '#', '@'])
        || authority.contains(char::is_whitespace)
    {
        return Err(bad("has a path, query, user part or no host"));
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| bad("has an unclosed '['"))?;
            (host, after)
        }
        None => match authority.find(':') {
            Some(colon) => authority.split_at(colon),
            None => (authority, ""),
        },
    };
    let port = match port {
        "" => 443,
        with_colon => with_colon
            .strip_prefix(':')
            .and_then(|digits| digits.parse::<u16>().ok())
            .filter(|&port| port != 0)
            .ok_or_else(|| bad("has an invalid port"))?,
    };
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    Ok((host.to_owned(), port, authority.to_owned()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

    use super::*;

    #[test]
    fn cas_urls_are_https_host_and_port_only() {
        let ok = |url: &str| parse_https_url(url).unwrap();
        assert_eq!(
            ok("https://127.0.0.1:8443"),
            ("127.0.0.1".into(), 8443, "127.0.0.1:8443".into())
        );
        assert_eq!(
            ok("https://cas.example/"),
            ("cas.example".into(), 443, "cas.example".into())
        );
        assert_eq!(ok("HTTPS://[::1]:9"), ("::1".into(), 9, "[::1]:9".into()));
        for bad in [
            "http://127.0.0.1:8443",
            "127.0.0.1:8443",
            "https://",
            "https://host:0",
            "https://host:65536",
            "https://host:",
            "https://host:x",
            "https://host/prefix",
            "https://host?x=1",
            "https://user@host",
            "https://[::1",
            "https://::1:9",
            "https://[::1]x",
            "https://ho st",
        ] {
            assert!(parse_https_url(bad).is_err(), "{bad} accepted");
        }
    }

    /// How a test server answers each request on a connection.
    #[derive(Clone, Copy)]
    enum Behaviour {
        /// `200` with the request count as body, keeping the connection open.
        Answer,
        /// Like `Answer`, then closes the connection without saying so.
        AnswerThenClose,
        /// `200` announcing and sending this many bytes.
        Body(usize),
        /// Reads the request and never answers.
        Silent,
    }

    /// Reads one request head and its body; false at the end of the stream.
    async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> bool {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8];
            match stream.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return false,
            }
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .map_or(0, |n| n.trim().parse::<usize>().unwrap());
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).await.is_ok()
    }

    async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
        mut stream: S,
        behaviour: Behaviour,
        requests: Arc<AtomicUsize>,
    ) {
        while read_request(&mut stream).await {
            let count = requests.fetch_add(1, Ordering::SeqCst) + 1;
            let answer =
                |body: &str| format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
            match behaviour {
                Behaviour::Answer => {
                    let _ = stream.write_all(answer(&count.to_string()).as_bytes()).await;
                }
                Behaviour::AnswerThenClose => {
                    let _ = stream.write_all(answer(&count.to_string()).as_bytes()).await;
                    return;
                }
                Behaviour::Body(len) => {
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\n\r\n");
                    let _ = stream.write_all(head.as_bytes()).await;
                    let chunk = vec![b'x'; 64 * 1024];
                    let mut left = len;
                    while left > 0 {
                        let n = left.min(chunk.len());
                        if stream.write_all(&chunk[..n]).await.is_err() {
                            return;
                        }
                        left -= n;
                    }
                }
                Behaviour::Silent => std::future::pending::<()>().await,
            }
        }
    }

    /// A server on a Unix socket; answers the number of connections and requests it saw.
    struct UnixServer {
        _dir: tempfile::TempDir,
        path: PathBuf,
        connections: Arc<AtomicUsize>,
        requests: Arc<AtomicUsize>,
    }

    fn unix_server(behaviour: Behaviour) -> UnixServer {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cas.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (seen, count) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                seen.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_connection(stream, behaviour, count.clone()));
            }
        });
        UnixServer {
            _dir: dir,
            path,
            connections,
            requests,
        }
    }

    /// One request; a client that hangs fails the test instead of hanging it.
    async fn get(transport: &Transport) -> Result<Response, ClientError> {
        let request = transport.request(Method::GET, "/v1/status", [], Vec::new());
        tokio::time::timeout(Duration::from_secs(20), request)
            .await
            .expect("the client hung")
    }

    #[tokio::test]
    async fn one_connection_is_kept_and_replaced_once_closed() {
        let server = unix_server(Behaviour::Answer);
        let transport = Transport::unix(server.path.clone());
        for expected in 1..=3 {
            let response = get(&transport).await.unwrap();
            assert_eq!(response.status, StatusCode::OK);
            assert_eq!(response.body, expected.to_string().as_bytes());
        }
        assert_eq!(server.connections.load(Ordering::SeqCst), 1);

        // A server that drops each connection after one answer: every request still gets
        // through, each on a new connection.
        let server = unix_server(Behaviour::AnswerThenClose);
        let transport = Transport::unix(server.path.clone());
        for _ in 0..20 {
            get(&transport).await.unwrap();
        }
        assert_eq!(server.requests.load(Ordering::SeqCst), 20);
        assert_eq!(server.connections.load(Ordering::SeqCst), 20);
    }

    #[tokio::test]
    async fn an_absent_server_is_unavailable_and_was_not_sent_to() {
        let dir = tempfile::tempdir().unwrap();
        let transport = Transport::unix(dir.path().join("absent.sock"));
        match get(&transport).await {
            Err(ClientError::Unavailable { message, sent: false }) => {
                assert!(message.contains("cannot connect"), "{message}")
            }
            other => panic!("{:?}", other.map(|r| r.status)),
        }
    }

    #[tokio::test]
    async fn answers_are_bounded() {
        let server = unix_server(Behaviour::Body(MAX_ANSWER_BYTES));
        let response = get(&Transport::unix(server.path.clone())).await.unwrap();
        assert_eq!(response.body.len(), MAX_ANSWER_BYTES);

        let server = unix_server(Behaviour::Body(MAX_ANSWER_BYTES + 1));
        match get(&Transport::unix(server.path.clone())).await {
            Err(ClientError::Transport(message)) => {
                assert!(message.contains("larger than 16 MiB"), "{message}")
            }
            other => panic!(
                "an oversized answer was accepted: {:?}",
                other.map(|r| r.body.len())
            ),
        }
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let server = unix_server(Behaviour::Silent);
        let mut transport = Transport::unix(server.path.clone());
        transport.set_timeouts(Duration::from_secs(5), Duration::from_millis(300));
        // The request left: trying again could make it twice.
        match get(&transport).await {
            Err(ClientError::Unavailable { message, sent: true }) => {
                assert!(message.contains("did not answer within"), "{message}")
            }
            other => panic!("{:?}", other.map(|r| r.status)),
        }

        // A TCP peer that accepts and never speaks TLS: the handshake hits the connect limit.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                open.push(stream);
            }
        });
        let tls = crate::pin::client_config([0; 32]).unwrap();
        let mut transport = Transport::https(&format!("https://{addr}"), tls).unwrap();
        transport.set_timeouts(Duration::from_millis(300), Duration::from_secs(5));
        match get(&transport).await {
            Err(ClientError::Unavailable { message, sent: false }) => {
                assert!(message.contains("cannot connect"), "{message}")
            }
            other => panic!("{:?}", other.map(|r| r.status)),
        }
        held.abort();
    }

    /// A TLS server with a fresh Ed25519 key; returns its URL and pin.
    async fn tls_server(connections: Arc<AtomicUsize>) -> (String, [u8; 32]) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let pin = crate::pin::spki_hash(cert.der()).unwrap();
        let private = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert.der().clone()], private)
                .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let requests = Arc::new(AtomicUsize::new(0));
            while let Ok((stream, _)) = listener.accept().await {
                connections.fetch_add(1, Ordering::SeqCst);
                let (acceptor, requests) = (acceptor.clone(), requests.clone());
                tokio::spawn(async move {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        serve_connection(stream, Behaviour::Answer, requests).await;
                    }
                });
            }
        });
        (url, pin)
    }

    #[tokio::test]
    async fn only_the_pinned_key_is_talked_to_and_a_mismatch_says_so() {
        let connections = Arc::new(AtomicUsize::new(0));
        let (url, pin) = tls_server(connections.clone()).await;
        let pinned = Transport::https(&url, crate::pin::client_config(pin).unwrap()).unwrap();
        for expected in 1..=3 {
            assert_eq!(get(&pinned).await.unwrap().body, expected.to_string().as_bytes());
        }
        assert_eq!(
            connections.load(Ordering::SeqCst),
            1,
            "the TLS connection was not kept"
        );

        let mut other = pin;
        other[0] ^= 1;
        let wrong = Transport::https(&url, crate::pin::client_config(other).unwrap()).unwrap();
        // A verdict, not an outage: trying again would meet the same key.
        match get(&wrong).await {
            Err(ClientError::Transport(message)) => {
                assert!(message.contains("TLS handshake"), "{message}");
                assert!(
                    message.contains("does not match the pinned identity"),
                    "{message}"
                );
            }
            other => panic!(
                "a server with another key was accepted: {:?}",
                other.map(|r| r.status)
            ),
        }
    }
}
