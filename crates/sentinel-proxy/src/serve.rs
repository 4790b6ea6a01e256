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
//! - **a response it does not read**: `send_timeout` during which a
//!   response body that has something to send is not taken by the
//!   connection (the socket is full, or an HTTP/2 peer grants no window);
//!   then the connection is closed, and with it what its requests held (an
//!   in-flight place, an upstream connection).
//! - **a connection at all**: at most `max_connections` are open; past
//!   that, new ones wait in the listen backlog until one closes.
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
use std::task::{Context, Poll, ready};
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
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::metrics as m;
use crate::settings::ClientLimits;

/// The connection limits the watchdog enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnLimits {
    pub(crate) header_read: Duration,
    pub(crate) keepalive_idle: Duration,
    pub(crate) send: Duration,
    pub(crate) max_connections: usize,
}

impl From<&ClientLimits> for ConnLimits {
    fn from(limits: &ClientLimits) -> Self {
        ConnLimits {
            header_read: limits.header_read_timeout,
            keepalive_idle: limits.keepalive_idle_timeout,
            send: limits.send_timeout,
            max_connections: limits.max_connections,
        }
    }
}

/// Streams one HTTP/2 connection may have open at once.
const MAX_CONCURRENT_STREAMS: u32 = 100;

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
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        // Pings find peers that went away without closing.
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
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
    let slots = Arc::new(Semaphore::new(
        limits.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let mut connections = JoinSet::new();
    loop {
        // A free slot first: past the cap, new connections wait in the
        // listen backlog instead of taking file descriptors.
        let slot = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            slot = slots.clone().acquire_owned() => slot,
        };
        let Ok(slot) = slot else { break };
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
        let open = ::metrics::gauge!(m::CONNECTIONS_OPEN);
        open.increment(1.0);
        let task = connection(builder.clone(), tcp, app.clone(), limits, stop.clone());
        connections.spawn(async move {
            task.await;
            open.decrement(1.0);
            drop(slot);
        });
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
                    Verdict::SendStalled => {
                        tracing::debug!("the client took no response data in time; closing the connection");
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
    /// Since when a response body has had something for the connection to
    /// take (a head just handed over, or a frame it yielded) without being
    /// polled again (nanoseconds after `origin`, plus one; 0: none).
    waiting_since: AtomicU64,
}

/// What the watchdog does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Look again then.
    Wait(Instant),
    /// A head took too long: close now.
    HeaderTimeout,
    /// The client took no response data for too long: close now.
    SendStalled,
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
            waiting_since: AtomicU64::new(0),
        }
    }

    fn nanos(&self, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(nanos).unwrap_or(u64::MAX - 1)
    }

    fn mark(&self, now: Instant) {
        self.since.store(self.nanos(now), Ordering::Relaxed);
    }

    /// A response body has something for the connection to take: starts the
    /// send clock unless it runs already.
    fn on_body_ready(&self) {
        let now = self.nanos(Instant::now()) + 1;
        let _ = self
            .waiting_since
            .compare_exchange(0, now, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// The connection polled a response body: it is taking data.
    fn on_body_polled(&self) {
        self.waiting_since.store(0, Ordering::Release);
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
            // A body that ended without being polled (an empty one) leaves
            // nothing waiting for the next request.
            self.waiting_since.store(0, Ordering::Release);
        }
    }

    fn verdict(&self, now: Instant, limits: ConnLimits) -> Verdict {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            let recheck = now + limits.header_read.min(limits.keepalive_idle);
            let waiting = self.waiting_since.load(Ordering::Acquire);
            if waiting == 0 {
                return Verdict::Wait(recheck.min(now + limits.send));
            }
            let deadline = self.origin + Duration::from_nanos(waiting - 1) + limits.send;
            return if now >= deadline {
                Verdict::SendStalled
            } else {
                Verdict::Wait(deadline.min(recheck))
            };
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
struct InFlight(Option<Arc<Activity>>);

impl InFlight {
    /// The head goes to the connection now; its body waits to be taken.
    fn on_body_ready(&self) {
        if let Some(activity) = &self.0 {
            activity.on_body_ready();
        }
    }

    /// The connection takes from the body.
    fn on_body_polled(&self) {
        if let Some(activity) = &self.0 {
            activity.on_body_polled();
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(activity) = self.0.take() {
            activity.on_response_end();
        }
    }
}

impl<A: App> tower::Service<Request<Incoming>> for Tracked<A> {
    type Response = Response<ConnBody>;
    type Error = Infallible;
    type Future = TrackedFuture<A::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        self.activity.on_request(request.version());
        let guard = InFlight(Some(self.activity.clone()));
        TrackedFuture {
            call: self.inner.call(request.map(Body::new)),
            guard,
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Tracked`]: the app's call, then the response body
    /// tied to the request's time in flight.
    struct TrackedFuture<F> {
        #[pin]
        call: F,
        guard: InFlight,
    }
}

impl<F> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<ConnBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.call.poll(cx))?;
        // The guard moves to the body (an inert one stays behind).
        let guard = std::mem::replace(this.guard, InFlight(None));
        guard.on_body_ready();
        Poll::Ready(Ok(response.map(|body| ConnBody { inner: body, guard })))
    }
}

pin_project_lite::pin_project! {
    /// A response body on its connection: reports to the watchdog when the
    /// connection takes from it, and ends its request's time in flight when
    /// it ends or is dropped.
    pub(crate) struct ConnBody {
        #[pin]
        inner: Body,
        guard: InFlight,
    }
}

impl http_body::Body for ConnBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.project();
        this.guard.on_body_polled();
        let polled = this.inner.poll_frame(cx);
        if matches!(polled, Poll::Ready(Some(Ok(_)))) {
            this.guard.on_body_ready();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
        send: Duration::from_secs(30),
        max_connections: 10,
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
    async fn a_response_the_client_does_not_take_is_cut_after_the_send_timeout() {
        let a = Activity::new(Instant::now());
        a.on_request(Version::HTTP_11);
        // Waiting on the upstream (no head yet): never stalled.
        tokio::time::advance(Duration::from_secs(100)).await;
        assert!(matches!(
            a.verdict(Instant::now(), LIMITS),
            Verdict::Wait(_)
        ));
        // The head is handed over and its body polled: taking data.
        a.on_body_ready();
        a.on_body_polled();
        tokio::time::advance(Duration::from_secs(100)).await;
        assert!(matches!(
            a.verdict(Instant::now(), LIMITS),
            Verdict::Wait(_)
        ));
        // A frame is yielded and the connection does not come back for it.
        a.on_body_ready();
        let ready = Instant::now();
        assert_eq!(
            a.verdict(ready, LIMITS),
            Verdict::Wait(ready + Duration::from_secs(10))
        );
        tokio::time::advance(Duration::from_secs(29)).await;
        a.on_body_ready(); // a second frame does not restart the clock
        assert!(matches!(
            a.verdict(Instant::now(), LIMITS),
            Verdict::Wait(_)
        ));
        assert_eq!(
            a.verdict(ready + Duration::from_secs(30), LIMITS),
            Verdict::SendStalled
        );
        // Once polled again, it is fine.
        a.on_body_polled();
        assert!(matches!(
            a.verdict(ready + Duration::from_secs(30), LIMITS),
            Verdict::Wait(_)
        ));
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
