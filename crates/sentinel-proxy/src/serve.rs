//! Serving connections: hyper-util's connection builder (HTTP/1.1 and
//! HTTP/2) with a tokio timer, so hyper's own limits apply, plus a
//! watchdog per connection for the client-side time limits.
//!
//! What a client can hold, and for how long:
//!
//! - **a request head**: `header_read_timeout` from its first byte (from the
//!   accept, for a connection's first request); then the connection is
//!   closed. A head larger than `max_header_bytes` (or with more than 100
//!   fields) is answered `431` by hyper.
//! - **an idle keep-alive connection**: `keepalive_idle_timeout` after its
//!   last response ended; then it is closed gracefully (HTTP/2: `GOAWAY`).
//! - **a request body**: the routing layer's body timeout (`408`).
//!
//! hyper counts its own header-read timeout from the moment a connection
//! waits for a head, so on a keep-alive connection it would be the idle
//! limit too. The watchdog keeps the two apart: it knows whether a request
//! is in flight (every response body carries a guard) and whether bytes of
//! a new head have arrived (the connection's reads are watched). hyper's
//! timeout stays on as a backstop at the sum of both limits, which the
//! watchdog always reaches first.
//!
//! Shutdown: the accept loop stops, every connection is asked to finish
//! gracefully (in-flight requests and streams go on), and whatever is left
//! after the drain timeout is closed.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response, Version};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::settings::ClientLimits;

/// The connection limits the watchdog enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnLimits {
    pub(crate) header_read: Duration,
    pub(crate) keepalive_idle: Duration,
}

impl From<&ClientLimits> for ConnLimits {
    fn from(limits: &ClientLimits) -> Self {
        ConnLimits {
            header_read: limits.header_read_timeout,
            keepalive_idle: limits.keepalive_idle_timeout,
        }
    }
}

/// The connection builder with the client limits set.
pub(crate) fn builder(limits: &ClientLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(limits.header_read_timeout + limits.keepalive_idle_timeout)
        // hyper answers 431 when a head does not fit in its read buffer.
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// The application the connections serve.
pub(crate) trait App:
    tower::Service<
        Request<Body>,
        Response = Response<Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S> App for S where
    S: tower::Service<
            Request<Body>,
            Response = Response<Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// Accepts connections on `listener` and serves `app` on each until `stop`
/// turns true; then drains for at most `drain`.
pub(crate) async fn serve<A: App>(
    listener: TcpListener,
    app: A,
    builder: auto::Builder<TokioExecutor>,
    limits: ConnLimits,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) -> io::Result<()> {
    let builder = Arc::new(builder);
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            accepted = listener.accept() => accepted,
        };
        // Finished connections are collected as we go, so the set holds
        // only live ones.
        while connections.try_join_next().is_some() {}
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Per-connection errors (reset before accept) are nothing;
                // out of file descriptors, back off a little instead of spinning.
                if !matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionRefused
                ) {
                    tracing::warn!(error = %e, "accept failed; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        // Responses and SSE chunks go out as soon as they are written: no
        // Nagle delay waiting for the client's ACK.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        connections.spawn(connection(
            builder.clone(),
            tcp,
            app.clone(),
            limits,
            stop.clone(),
        ));
    }
    drop(listener);
    let drained = tokio::time::timeout(drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            drain_secs = drain.as_secs(),
            open = connections.len(),
            "drain timeout passed; closing the remaining connections"
        );
        connections.shutdown().await;
    }
    Ok(())
}

/// Serves one connection, with the watchdog and the graceful shutdown.
async fn connection<A: App>(
    builder: Arc<auto::Builder<TokioExecutor>>,
    tcp: TcpStream,
    app: A,
    limits: ConnLimits,
    mut stop: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::new(Instant::now()));
    let io = TokioIo::new(Watched {
        inner: tcp,
        activity: activity.clone(),
    });
    let service = TowerToHyperService::new(Tracked {
        inner: app,
        activity: activity.clone(),
    });
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let watchdog = tokio::time::sleep(limits.header_read);
    tokio::pin!(watchdog);
    let mut closing = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stop.wait_for(|s| *s), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = watchdog.as_mut() => {
                let now = Instant::now();
                match activity.verdict(now, limits) {
                    Verdict::Wait(until) => watchdog.as_mut().reset(until),
                    Verdict::HeaderTimeout => {
                        tracing::debug!("request head not received in time; closing the connection");
                        return;
                    }
                    Verdict::Idle if closing => return,
                    Verdict::Idle => {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                        // Idle means no request in flight: nothing to wait for.
                        watchdog.as_mut().reset(now + Duration::from_secs(1));
                    }
                }
            }
        }
    }
}

/// What a connection is doing, as the watchdog sees it.
#[derive(Debug)]
struct Activity {
    origin: Instant,
    /// Requests whose response has not ended.
    in_flight: AtomicUsize,
    /// Bytes of a request head have arrived and no request is in flight.
    reading_head: AtomicBool,
    /// When the head began to arrive, or the connection went idle
    /// (nanoseconds after `origin`).
    since: AtomicU64,
    /// An HTTP/2 connection: its reads between requests are frames (pings,
    /// settings), not a head, and never start the header clock.
    h2: AtomicBool,
}

/// What the watchdog does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Look again then.
    Wait(Instant),
    /// A head took too long: close now.
    HeaderTimeout,
    /// Idle too long: close gracefully.
    Idle,
}

impl Activity {
    /// A new connection waits for its first head from `now`.
    fn new(now: Instant) -> Self {
        Activity {
            origin: now,
            in_flight: AtomicUsize::new(0),
            reading_head: AtomicBool::new(true),
            since: AtomicU64::new(0),
            h2: AtomicBool::new(false),
        }
    }

    fn mark(&self, now: Instant) {
        let nanos = now.saturating_duration_since(self.origin).as_nanos();
        self.since
            .store(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Bytes arrived.
    fn on_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && !self.h2.load(Ordering::Relaxed)
            && !self.reading_head.swap(true, Ordering::AcqRel)
        {
            self.mark(Instant::now());
        }
    }

    /// A request reached the service.
    fn on_request(&self, version: Version) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.reading_head.store(false, Ordering::Release);
        if version == Version::HTTP_2 {
            self.h2.store(true, Ordering::Relaxed);
        }
    }

    /// A response ended (or was dropped).
    fn on_response_end(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.mark(Instant::now());
        }
    }

    fn verdict(&self, now: Instant, limits: ConnLimits) -> Verdict {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Verdict::Wait(now + limits.header_read.min(limits.keepalive_idle));
        }
        let since = self.origin + Duration::from_nanos(self.since.load(Ordering::Relaxed));
        if self.reading_head.load(Ordering::Acquire) {
            let deadline = since + limits.header_read;
            if now >= deadline {
                Verdict::HeaderTimeout
            } else {
                Verdict::Wait(deadline)
            }
        } else {
            let deadline = since + limits.keepalive_idle;
            if now >= deadline {
                Verdict::Idle
            } else {
                Verdict::Wait(deadline)
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The connection's socket, its reads reported to the watchdog.
    struct Watched {
        #[pin]
        inner: TcpStream,
        activity: Arc<Activity>,
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = this.inner.poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.on_read();
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The app on one connection: counts requests in flight until their
/// response bodies end.
#[derive(Clone)]
struct Tracked<A> {
    inner: A,
    activity: Arc<Activity>,
}

/// Ends a request's time in flight when dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.on_response_end();
    }
}

impl<A: App> tower::Service<Request<Incoming>> for Tracked<A> {
    type Response = Response<Guarded<Body, InFlight>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        self.activity.on_request(request.version());
        let guard = InFlight(self.activity.clone());
        let call = tower::ServiceExt::oneshot(self.inner.clone(), request.map(Body::new));
        Box::pin(async move {
            let response = call.await?;
            Ok(response.map(|body| Guarded { inner: body, guard }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds `guard` until it ends or is dropped.
    pub(crate) struct Guarded<B, G> {
        #[pin]
        inner: B,
        guard: G,
    }
}

impl<B, G> Guarded<B, G> {
    pub(crate) fn new(inner: B, guard: G) -> Self {
        Guarded { inner, guard }
    }
}

impl<B, G> http_body::Body for Guarded<B, G>
where
    B: http_body::Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ConnLimits = ConnLimits {
        header_read: Duration::from_secs(10),
        keepalive_idle: Duration::from_secs(75),
    };

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_has_the_header_read_limit_from_its_accept() {
        let t0 = Instant::now();
        let a = Activity::new(t0);
        assert_eq!(
            a.verdict(t0, LIMITS),
            Verdict::Wait(t0 + Duration::from_secs(10))
        );
        // Bytes of the head arriving do not move the clock.
        tokio::time::advance(Duration::from_secs(4)).await;
        a.on_read();
        assert_eq!(
            a.verdict(Instant::now(), LIMITS),
            Verdict::Wait(t0 + Duration::from_secs(10))
        );
        assert_eq!(
            a.verdict(t0 + Duration::from_secs(10), LIMITS),
            Verdict::HeaderTimeout
        );
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_requests_are_never_cut_and_idle_counts_from_the_last_response() {
        let t0 = Instant::now();
        let a = Activity::new(t0);
        a.on_request(Version::HTTP_11);
        // A long request: only rechecks.
        tokio::time::advance(Duration::from_secs(500)).await;
        let now = Instant::now();
        assert!(matches!(a.verdict(now, LIMITS), Verdict::Wait(_)));
        a.on_response_end();
        let idle_since = Instant::now();
        assert_eq!(
            a.verdict(idle_since, LIMITS),
            Verdict::Wait(idle_since + Duration::from_secs(75))
        );
        assert_eq!(
            a.verdict(idle_since + Duration::from_secs(75), LIMITS),
            Verdict::Idle
        );
        // The next head starts the header clock at its first byte.
        tokio::time::advance(Duration::from_secs(30)).await;
        a.on_read();
        let first_byte = Instant::now();
        assert_eq!(
            a.verdict(first_byte, LIMITS),
            Verdict::Wait(first_byte + Duration::from_secs(10))
        );
        assert_eq!(
            a.verdict(first_byte + Duration::from_secs(10), LIMITS),
            Verdict::HeaderTimeout
        );
    }

    #[tokio::test(start_paused = true)]
    async fn reads_during_a_request_or_on_http2_do_not_start_a_head() {
        let t0 = Instant::now();
        let a = Activity::new(t0);
        a.on_request(Version::HTTP_2);
        a.on_read();
        a.on_response_end();
        let idle_since = Instant::now();
        tokio::time::advance(Duration::from_secs(20)).await;
        a.on_read(); // a PING between requests
        assert_eq!(
            a.verdict(Instant::now(), LIMITS),
            Verdict::Wait(idle_since + Duration::from_secs(75))
        );
    }
}
