//! Serving HTTP connections within limits, for every listener of the server (the S3 endpoint
//! and the REST API). A connection flood or a leak of idle clients must not take the file
//! descriptors the store, the state database and the jobs need, and must not fill the log:
//!
//! - at most `max_connections` connections are served at once; beyond, a few more are answered
//!   with a clear refusal (`503` with `Connection: close`) and the rest are closed at once;
//! - a connection with no request in progress is closed after `idle_timeout` without traffic,
//!   and one that started a request head but did not finish it within `header_read_timeout`
//!   is closed too (a slow-header client);
//! - accept errors (out of descriptors) back off instead of spinning, and repeated warnings
//!   are logged once per interval with the count of those suppressed.
//!
//! The timeouts are watched by one coarse ticker per connection, not by a timer per request:
//! hyper's own header-read timer costs an allocation and a timer registration per request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Semaphore;

/// Where a server accepts connections: TCP (the server's listeners), or a Unix socket (a
/// container's own S3 endpoint, mounted into a container that has no network).
pub trait Listener: Send + 'static {
    /// One accepted connection.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Waits for the next connection.
    fn accept_connection(&self) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Listener for TcpListener {
    type Io = TcpStream;

    async fn accept_connection(&self) -> std::io::Result<TcpStream> {
        let (socket, _) = TcpListener::accept(self).await?;
        let _ = socket.set_nodelay(true);
        Ok(socket)
    }
}

impl Listener for UnixListener {
    type Io = UnixStream;

    async fn accept_connection(&self) -> std::io::Result<UnixStream> {
        UnixListener::accept(self).await.map(|(socket, _)| socket)
    }
}

/// Connections answered with a refusal at once, beyond the cap; past these, a connection is
/// closed without an answer. Counted in [`default_max_connections`]'s budget.
const REFUSAL_SLOTS: usize = 16;

/// How long a refused client has to send its request head before it is dropped.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);

/// One warning per interval for a repeated condition.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The longest pause between accept attempts while they fail.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// The limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// A connection without a request in progress and without traffic for this long is closed.
    pub idle_timeout: Duration,
    /// A request head not complete this long after its first byte closes the connection.
    pub header_read_timeout: Duration,
}

impl Default for ConnectionLimits {
    /// The cap from this process's file limit, 90 s idle, 30 s for a request head.
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(fd_limit().unwrap_or(1024)),
            idle_timeout: Duration::from_secs(90),
            header_read_timeout: Duration::from_secs(30),
        }
    }
}

/// The soft limit on open files of this process, if it can be read.
pub fn fd_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    #[allow(unsafe_code)]
    let read = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) };
    (read == 0).then_some(limit.rlim_cur)
}

/// Raises the soft limit on open files to the hard limit (as Go programs do at start): the
/// usual soft limit of 1024 is a relic that would cap connections needlessly low.
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct we own.
    #[allow(unsafe_code)]
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit);
        }
    }
}

/// The default connection cap of each of the server's two listeners, for a limit of `fd_limit`
/// open files: a quarter of the descriptors (at least 128, at most half) stay for data files,
/// the databases, jobs and their pipes; the rest is shared by both listeners, refusal slots
/// included.
pub fn default_max_connections(fd_limit: u64) -> usize {
    let fd_limit = usize::try_from(fd_limit).unwrap_or(usize::MAX);
    let reserve = (fd_limit / 4).max(128).min(fd_limit / 2);
    ((fd_limit - reserve) / 2).saturating_sub(REFUSAL_SLOTS).max(1)
}

/// What a connection over the cap is answered (always `503` with `Connection: close` and
/// `Retry-After`).
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The body's media type.
    pub content_type: &'static str,
    /// The body, which says why.
    pub body: String,
}

impl Refusal {
    fn response(&self) -> Response<String> {
        let mut response = Response::new(self.body.clone());
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        response
    }
}

/// Lets a repeated warning through once per [`LOG_INTERVAL`], counting those held back.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    pub(crate) last: Option<Instant>,
    pub(crate) suppressed: u64,
}

impl Throttle {
    /// `Some(suppressed since the last one)` when this occurrence is to be logged.
    pub(crate) fn pass(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < LOG_INTERVAL)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// A listener's repeated warning, throttled.
struct Throttled {
    what: &'static str,
    listener: &'static str,
    throttle: Throttle,
}

impl Throttled {
    fn new(listener: &'static str, what: &'static str) -> Self {
        Self {
            what,
            listener,
            throttle: Throttle::default(),
        }
    }

    fn warn(&mut self, detail: &dyn std::fmt::Display) {
        if let Some(suppressed) = self.throttle.pass() {
            tracing::warn!(listener = self.listener, detail = %detail, suppressed, "{}", self.what);
        }
    }
}

/// What the idle watcher knows of a connection; written by its I/O and its service.
#[derive(Default)]
struct Activity {
    /// Bytes moved since the watcher last looked.
    traffic: AtomicBool,
    /// Bytes read since the last request started (a request head in progress).
    reading: AtomicBool,
    /// Requests being handled.
    in_flight: AtomicU32,
}

/// The connection's I/O, noting traffic for the idle watcher.
struct Watched<T> {
    io: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.traffic.store(true, Ordering::Relaxed);
            self.activity.reading.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.traffic.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.traffic.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Counts a request as in flight until its answer's head is ready.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        // The head is complete: what was read so far was a request, not a stalled one.
        activity.reading.store(false, Ordering::Relaxed);
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.traffic.store(true, Ordering::Relaxed);
        // What the request's body brought in is not the head of a next one.
        self.0.reading.store(false, Ordering::Relaxed);
    }
}

/// The listener's service, counting requests in flight for the idle watcher.
#[derive(Clone)]
struct Counted<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Counted<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<B>, S::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let guard = InFlight::start(&self.activity);
        let answer = self.inner.call(req);
        Box::pin(async move {
            let answer = answer.await;
            drop(guard);
            answer
        })
    }
}

/// Serves `service` on `listener` within `limits` until `shutdown` completes; `name` names the
/// listener in logs. Connections still open at shutdown get 5 s to finish.
pub async fn serve_within<S, B>(
    listener: impl Listener,
    service: S,
    limits: ConnectionLimits,
    refusal: Refusal,
    name: &'static str,
    shutdown: impl Future<Output = ()>,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let http = ConnBuilder::new(TokioExecutor::new());
    let mut refuse_http = ConnBuilder::new(TokioExecutor::new());
    refuse_http.http1().keep_alive(false);
    let refusal = Arc::new(refusal);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let refusals = Arc::new(Semaphore::new(REFUSAL_SLOTS));
    let mut accept_failed = Throttled::new(name, "cannot accept a connection (retrying with back-off)");
    let mut over_cap = Throttled::new(name, "connection cap reached: refusing new connections");
    let mut backoff = Duration::from_millis(5);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let socket = tokio::select! {
            accepted = listener.accept_connection() => match accepted {
                Ok(socket) => socket,
                Err(e) => {
                    // Out of descriptors (or memory): retrying at once would spin on the same
                    // error, so wait, longer while it lasts, still heeding shutdown.
                    accept_failed.warn(&e);
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.as_mut() => break,
                    }
                    backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                    continue;
                }
            },
            () = shutdown.as_mut() => break,
        };
        backoff = Duration::from_millis(5);
        let permit = match connections.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                over_cap.warn(&format_args!("{} connections", limits.max_connections));
                if let Ok(slot) = refusals.clone().try_acquire_owned() {
                    let refusal = refusal.clone();
                    let refuse_http = refuse_http.clone();
                    tokio::spawn(async move {
                        let _slot = slot;
                        let answer = hyper::service::service_fn(move |_req: Request<Incoming>| {
                            std::future::ready(Ok::<_, std::convert::Infallible>(refusal.response()))
                        });
                        let conn = refuse_http.serve_connection(TokioIo::new(socket), answer);
                        let _ = tokio::time::timeout(REFUSAL_TIMEOUT, conn).await;
                    });
                }
                // Without a slot the socket is dropped here: closed at once, freeing its
                // descriptor.
                continue;
            }
        };
        let activity = Arc::new(Activity::default());
        let io = Watched {
            io: socket,
            activity: activity.clone(),
        };
        let service = Counted {
            inner: service.clone(),
            activity: activity.clone(),
        };
        let conn = http.serve_connection(TokioIo::new(io), service).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _permit = permit;
            watch_connection(conn, &activity, limits).await;
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}

/// Drives `conn` until it ends or is idle past its limits.
async fn watch_connection(conn: impl Future, activity: &Activity, limits: ConnectionLimits) {
    // Coarse on purpose: a tenth of the shorter timeout bounds the overshoot.
    let period = (limits.idle_timeout.min(limits.header_read_timeout) / 10).max(Duration::from_millis(10));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn = std::pin::pin!(conn);
    let mut quiet_since = Instant::now();
    let mut head_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        if activity.traffic.swap(false, Ordering::Relaxed) {
            quiet_since = now;
        }
        if activity.in_flight.load(Ordering::Relaxed) > 0 {
            head_since = None;
            continue;
        }
        if activity.reading.load(Ordering::Relaxed) {
            let since = *head_since.get_or_insert(now);
            if now.duration_since(since) >= limits.header_read_timeout {
                tracing::debug!("closing a connection whose request head did not arrive in time");
                return;
            }
        } else {
            head_since = None;
        }
        if now.duration_since(quiet_since) >= limits.idle_timeout {
            tracing::debug!("closing an idle connection");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_leaves_descriptors_for_everything_else() {
        for limit in [64u64, 256, 1024, 4096, 1 << 20] {
            let cap = default_max_connections(limit);
            let used = 2 * (cap + REFUSAL_SLOTS);
            assert!(cap >= 1);
            assert!((used as u64) < limit, "{limit}: {cap} per listener");
            if limit >= 512 {
                assert!((used as u64) <= limit * 3 / 4, "{limit}: {cap} per listener");
            }
        }
        assert_eq!(default_max_connections(1024), 368);
    }
}
