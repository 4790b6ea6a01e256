//! What comes back from the provider: a small `400` read whole (for a
//! context-length code), and the body streamed to the client with usage
//! read on the way, whole SSE events, the attempt's report, and a
//! continuation when a chat stream breaks.
//!
//! The streamed body is two wrappers around hyper's `Incoming`:
//! `UpstreamBody<TimeoutBody<Incoming>>`. The inner one, `TimeoutBody`
//! (`timeout.rs`), only keeps time: it fails with a `TimeoutError` when the
//! provider sends nothing for the idle timeout. [`UpstreamBody`] decides what
//! any end means, a stall included, in one place: the attempt's report, the
//! usage counted or not, the SSE error event or a continuation.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header;
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sentinel_layer::{AttemptReport, BoxError, ErrorCode, SentinelError};
use serde::Deserialize;

use super::continuation::{Resume, Resuming};
use super::timeout::TimeoutError;
use super::usage::Usage;
use crate::metrics as m;
use crate::sse;

/// The largest `400` body read whole to look for a context-length failure.
pub(super) const CLIENT_ERROR_BODY_CAP: usize = 64 << 10;

/// How much of a `400` answer to read before passing it on: all of it when
/// its declared length is at most [`CLIENT_ERROR_BODY_CAP`], up to the cap
/// when it declares none (HTTP/2 and chunked answers); `None` for other
/// statuses and longer answers.
pub(super) fn client_error_to_read(parts: &http::response::Parts) -> Option<usize> {
    if parts.status != http::StatusCode::BAD_REQUEST {
        return None;
    }
    let Some(declared) = parts.headers.get(header::CONTENT_LENGTH) else {
        return Some(CLIENT_ERROR_BODY_CAP);
    };
    declared
        .to_str()
        .ok()?
        .parse::<usize>()
        .ok()
        .filter(|n| *n <= CLIENT_ERROR_BODY_CAP)
}

/// Reads `body` to its end, or until more than `cap` bytes came: then what
/// was read comes with the rest of the body.
pub(super) async fn read_prefix(
    mut body: Incoming,
    cap: usize,
) -> Result<(Bytes, Option<Incoming>), hyper::Error> {
    let mut read = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            read.extend_from_slice(&data);
            if read.len() > cap {
                return Ok((read.freeze(), Some(body)));
            }
        }
    }
    Ok((read.freeze(), None))
}

/// Bytes already read, then the rest of the body.
pub(super) struct Prefixed {
    pub(super) prefix: Option<Bytes>,
    pub(super) rest: Incoming,
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.is_end_stream()
    }
}

/// Whether an OpenAI error body says the prompt does not fit the model
/// (`"code": "context_length_exceeded"`).
pub(super) fn is_context_length_exceeded(body: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Envelope {
        error: Option<Detail>,
    }
    #[derive(Deserialize)]
    struct Detail {
        code: Option<String>,
    }
    serde_json::from_slice::<Envelope>(body).is_ok_and(|e| {
        e.error
            .and_then(|d| d.code)
            .is_some_and(|c| c == "context_length_exceeded")
    })
}

pin_project_lite::pin_project! {
    /// The upstream body: streamed through with `usage` read on the way,
    /// and an SSE error event when a stream breaks or stalls.
    ///
    /// `B` is the provider's body: `Incoming` up to the first token, then
    /// `TimeoutBody<Incoming>` (see [`UpstreamBody::map_inner`]), whose
    /// `TimeoutError` is a stall.
    pub(super) struct UpstreamBody<B> {
        #[pin]
        pub(super) inner: B,
        pub(super) done: bool,
        pub(super) usage: Option<Usage>,
        // SSE: passes whole events only (and leaves out the usage-only
        // chunk when Sentinel asked for it).
        pub(super) framer: Option<sse::Framer>,
        // Whole events read before the head went out (up to the first
        // token), sent first.
        pub(super) ready: VecDeque<Bytes>,
        // How the attempt ended, for its model's breaker.
        pub(super) report: Reported,
        // An error event was read before the head went out.
        pub(super) in_band_error: bool,
        // How to continue the stream on the next model if it breaks, with
        // what the client has been sent so far.
        pub(super) resume: Option<Box<Resume>>,
        // The stream broke and is being continued: what the client gets now.
        pub(super) resuming: Option<Resuming>,
    }
}

/// The attempt's [`AttemptReport`], held by the body: a clean end is a
/// success, a broken or stalled one a failure, and a body dropped before
/// its end (the client went away) is neither.
pub(super) struct Reported(pub(super) Option<AttemptReport>);

impl Reported {
    /// The body ended cleanly: the report goes, and with it a success
    /// (unless an error event was reported on the way).
    fn ended(&mut self) {
        self.0 = None;
    }

    /// The model failed.
    fn failed(&mut self) {
        if let Some(report) = self.0.take() {
            report.failed();
        }
    }
}

impl Drop for Reported {
    fn drop(&mut self) {
        if let Some(report) = self.0.take() {
            report.cancelled();
        }
    }
}

impl<B> UpstreamBody<B> {
    /// The same body around `f(inner)`: how the idle timer is put around
    /// the provider's body once the head goes to the client.
    pub(super) fn map_inner<C>(self, f: impl FnOnce(B) -> C) -> UpstreamBody<C> {
        let UpstreamBody {
            inner,
            done,
            usage,
            framer,
            ready,
            report,
            in_band_error,
            resume,
            resuming,
        } = self;
        UpstreamBody {
            inner: f(inner),
            done,
            usage,
            framer,
            ready,
            report,
            in_band_error,
            resume,
            resuming,
        }
    }

    /// Gives up on the body before the client saw it (`why`: the trace's
    /// `error.type`): no usage is recorded.
    pub(super) fn abandon(&mut self, why: &'static str) {
        self.done = true;
        if let Some(mut usage) = self.usage.take() {
            usage.abandon(why);
        }
    }
}

impl<B: http_body::Body<Data = Bytes>> UpstreamBody<B> {
    /// Reads an SSE stream up to its first token (see
    /// [`sse::first_token`]), keeping what it read for the client.
    /// `Err` when the stream ends, breaks or sends an error event first.
    pub(super) fn poll_first_token(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), &'static str>> {
        let mut this = self.project();
        loop {
            let frame = match http_body::Body::poll_frame(this.inner.as_mut(), cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    return Poll::Ready(Err("the stream ended before its first token"));
                }
                Poll::Ready(Some(Err(_))) => {
                    return Poll::Ready(Err("the stream broke before its first token"));
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if let Some(usage) = this.usage.as_mut() {
                usage.feed(&data);
            }
            let Some(framer) = this.framer.as_mut() else {
                this.ready.push_back(data);
                return Poll::Ready(Ok(()));
            };
            match framer.push(data) {
                Ok(Some(out)) => {
                    let start = sse::first_token(&out);
                    if start == sse::Start::Token && sse::carries_error(&out) {
                        // An error event right after the first token, in
                        // the same chunk: the provider failed in band. It
                        // is reported once the head is out (the report is
                        // armed then).
                        *this.in_band_error = true;
                    }
                    this.ready.push_back(out);
                    match start {
                        sse::Start::Token => return Poll::Ready(Ok(())),
                        sse::Start::Error => {
                            return Poll::Ready(Err(
                                "the stream sent an error before its first token",
                            ));
                        }
                        sse::Start::Preamble => {}
                    }
                }
                Ok(None) => {}
                Err(sse::EventTooLarge) => {
                    return Poll::Ready(Err("the stream sent an event larger than Sentinel holds"));
                }
            }
        }
    }
}

impl<B> http_body::Body for UpstreamBody<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        if let Some(resuming) = this.resuming.as_mut() {
            return resuming.poll_frame(cx);
        }
        if std::mem::take(this.in_band_error) {
            this.report.failed();
        }
        if let Some(out) = this.ready.pop_front() {
            if let Some(resume) = this.resume.as_mut() {
                resume.sent(&out);
            }
            return Poll::Ready(Some(Ok(Frame::data(out))));
        }
        if *this.done {
            return Poll::Ready(None);
        }
        let failure: &'static str = 'read: loop {
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let data = match frame.into_data() {
                        Ok(data) => data,
                        Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                    };
                    if let Some(usage) = this.usage.as_mut() {
                        usage.feed(&data);
                    }
                    let Some(framer) = this.framer.as_mut() else {
                        if this.inner.is_end_stream() {
                            // The last byte of a body of known length: the
                            // server writing it never polls again for the
                            // end, so the body ends here.
                            *this.done = true;
                            this.report.ended();
                            if let Some(mut usage) = this.usage.take() {
                                usage.finish();
                            }
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    };
                    match framer.push(data) {
                        Ok(Some(out)) => {
                            if sse::carries_error(&out) {
                                // The provider said it failed, in band.
                                this.report.failed();
                                if let Some(usage) = this.usage.as_mut() {
                                    usage.provider_error();
                                }
                            }
                            if let Some(resume) = this.resume.as_mut() {
                                resume.sent(&out);
                            }
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                        Ok(None) => continue,
                        Err(sse::EventTooLarge) => break 'read "event_too_large",
                    }
                }
                Poll::Ready(None) => {
                    let rest = this.framer.as_mut().and_then(sse::Framer::finish);
                    if this.framer.as_ref().is_some_and(|f| !f.complete()) {
                        // Closed cleanly, but without the stream's own end:
                        // an answer cut short, never presented as complete.
                        break 'read "truncated";
                    }
                    *this.done = true;
                    this.report.ended();
                    if let Some(mut usage) = this.usage.take() {
                        usage.finish();
                    }
                    if let Some(rest) = rest {
                        return Poll::Ready(Some(Ok(Frame::data(rest))));
                    }
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => {
                    if e.into().is::<TimeoutError>() {
                        // The provider sent nothing for the idle timeout.
                        break "idle_timeout";
                    }
                    break "broken";
                }
                Poll::Pending => return Poll::Pending,
            }
        };
        *this.done = true;
        if let Some(mut usage) = this.usage.take() {
            usage.abandon(failure);
        }
        ::metrics::counter!(m::STREAM_ERRORS, "reason" => failure).increment(1);
        tracing::warn!(reason = failure, "upstream response body ended abnormally");
        this.report.failed();
        match this.framer.as_mut() {
            Some(framer) => {
                let (code, message) = match failure {
                    "idle_timeout" => (
                        ErrorCode::UpstreamTimeout,
                        "the upstream stream stalled beyond the idle timeout",
                    ),
                    "event_too_large" => (
                        ErrorCode::UpstreamFailed,
                        "the upstream sent an event larger than Sentinel holds",
                    ),
                    "truncated" => (
                        ErrorCode::UpstreamFailed,
                        "the upstream stream ended before its end marker",
                    ),
                    _ => (
                        ErrorCode::UpstreamFailed,
                        "the upstream stream broke before it finished",
                    ),
                };
                let event = framer.fail(&SentinelError::new(code, message));
                // A break or a stall (not an oversized event, which the next
                // model would not help) is continued on the next model when
                // the answer can be; the client gets this event only if that
                // fails.
                let resume = this.resume.take().filter(|_| failure != "event_too_large");
                let event = match resume {
                    Some(resume) => match resume.start(event) {
                        Ok(resuming) => return this.resuming.insert(resuming).poll_frame(cx),
                        Err(event) => event,
                    },
                    None => event,
                };
                Poll::Ready(Some(Ok(Frame::data(event))))
            }
            None => Poll::Ready(Some(Err(failure.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
            && self.ready.is_empty()
            && self.resuming.as_ref().is_none_or(Resuming::is_end_stream)
    }
}
