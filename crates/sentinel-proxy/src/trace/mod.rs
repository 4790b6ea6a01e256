//! OpenTelemetry traces of routed requests, exported over OTLP.
//!
//! Configured by OpenTelemetry's standard variables ([`TraceSettings`];
//! docs/configuration.md, "Traces"). Without an endpoint tracing is off and
//! costs a request one branch: no id, no span, no allocation.
//!
//! When on, a routed request gets one server span, from its arrival to the
//! last byte sent, and each upstream attempt one client span, child of the
//! server span, from the request sent to the end of the provider's body
//! (the head for a failed attempt). A client's W3C `traceparent` is the
//! server span's parent; each attempt sends the provider a `traceparent`
//! naming its client span (and the client's `tracestate` as it came). The
//! sampler (`OTEL_TRACES_SAMPLER`, by default `parentbased_always_on`)
//! decides once per request; an unsampled request still passes a
//! `traceparent` on, flagged unsampled.
//!
//! Spans carry the GenAI semantic conventions' attributes and Sentinel's
//! own ([`attr`]). An ended span goes into a bounded queue without
//! waiting; a full queue drops it and counts it
//! (`sentinel_trace_spans_dropped_total{reason="queue_full"}`). One
//! background task sends the queue in batches, one export at a time, each
//! bounded by the export timeout; a failed export drops its batch (counted,
//! `reason="export_failed"`) and is never retried. Exporting never blocks
//! or fails a request.

use std::sync::Arc;

use http::{HeaderMap, Uri};
use sentinel_layer::RoutingDecision;
use tokio::sync::mpsc;

mod context;
mod export;
mod settings;
mod span;

pub use export::{ExportTask, start};
pub use settings::{Protocol, Root, Sampler, TraceSettings};

use context::{SpanContext, TRACEPARENT, TRACESTATE, new_span_id, new_trace_id};
pub(crate) use span::SharedSpan;
use span::{Span, SpanKind, SpanRecord};

/// The attribute names spans carry.
pub mod attr {
    /// `chat` (chat completions and responses alike).
    pub const OPERATION: &str = "gen_ai.operation.name";
    /// The provider, as the tier config names it.
    pub const PROVIDER: &str = "gen_ai.provider.name";
    /// The tier as the client asked for it.
    pub const REQUEST_MODEL: &str = "gen_ai.request.model";
    /// The model that answered.
    pub const RESPONSE_MODEL: &str = "gen_ai.response.model";
    /// Input tokens of the answer.
    pub const INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
    /// Output tokens of the answer.
    pub const OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
    /// The tier routed to (higher than the one asked after an upgrade).
    pub const TIER: &str = "sentinel.tier";
    /// The tier asked for.
    pub const REQUESTED_TIER: &str = "sentinel.requested_tier";
    /// The model came from the session's pin.
    pub const SESSION_PINNED: &str = "sentinel.session.pinned";
    /// The attempt's number (server span: the last attempt's).
    pub const ATTEMPT: &str = "sentinel.attempt";
    /// Why the model was chosen: `weighted`, `sticky`, `upgrade`, `retry`,
    /// `continuation`.
    pub const SELECTION_REASON: &str = "sentinel.selection_reason";
    /// The model an attempt sent the request to (client spans: set also
    /// when it failed).
    pub const MODEL: &str = "sentinel.model";
    /// The response's status code.
    pub const STATUS_CODE: &str = "http.response.status_code";
    /// `POST`.
    pub const METHOD: &str = "http.request.method";
    /// The request's path (server spans).
    pub const PATH: &str = "url.path";
    /// The provider's host (client spans).
    pub const SERVER_ADDRESS: &str = "server.address";
    /// Why a span failed: a status code, `timeout`, `connect`,
    /// `stream_broken`...
    pub const ERROR_TYPE: &str = "error.type";
}

/// The GenAI operation of every routed request.
const OPERATION: &str = "chat";

/// Where ended spans go: the export queue, and the sampler.
#[derive(Debug)]
pub(crate) struct Tracer {
    sampler: Sampler,
    queue: mpsc::Sender<SpanRecord>,
    dropped: ::metrics::Counter,
    closed: ::metrics::Counter,
}

impl Tracer {
    /// Queues an ended span, or drops and counts it when the queue is full.
    fn export(&self, record: SpanRecord) {
        match self.queue.try_send(record) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.dropped.increment(1),
            // The exporter has stopped (the proxy is shutting down).
            Err(mpsc::error::TrySendError::Closed(_)) => self.closed.increment(1),
        }
    }
}

/// Tracing, on or off; cloning is a reference count.
#[derive(Debug, Clone, Default)]
pub struct Tracing(Option<Arc<Tracer>>);

impl Tracing {
    /// Tracing off.
    pub fn off() -> Self {
        Tracing(None)
    }

    /// Whether spans are recorded for anything.
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Starts a routed request's trace: its server span (when sampled) and
    /// the trace its attempts join, put into the request's extensions.
    /// `None` when tracing is off or the request is not sampled.
    pub(crate) fn start_request<B>(&self, request: &mut http::Request<B>) -> Option<SharedSpan> {
        let tracer = self.0.as_ref()?;
        // Exactly one valid `traceparent`, or the trace starts here (and
        // the client's `tracestate`, which belongs to it, stays behind).
        let mut values = request.headers().get_all(TRACEPARENT).iter();
        let parent = match (values.next(), values.next()) {
            (Some(value), None) => SpanContext::from_traceparent(value),
            _ => None,
        };
        if parent.is_none() {
            request.headers_mut().remove(TRACESTATE);
        }
        let trace_id = parent.map_or_else(new_trace_id, |p| p.trace_id);
        let sampled = tracer.sampler.sample(parent.map(|p| p.sampled), &trace_id);
        let context = SpanContext {
            trace_id,
            span_id: new_span_id(),
            sampled,
        };
        let server = sampled.then(|| {
            let mut span = Span::start(
                tracer.clone(),
                context,
                parent.map(|p| p.span_id),
                OPERATION.to_owned(),
                SpanKind::Server,
            );
            span.set(attr::OPERATION, OPERATION);
            span.set(attr::METHOD, method_name(request.method()));
            span.set(attr::PATH, request.uri().path().to_owned());
            SharedSpan::new(span)
        });
        request.extensions_mut().insert(RequestTrace {
            tracer: tracer.clone(),
            context,
            server: server.clone(),
        });
        server
    }
}

fn method_name(method: &http::Method) -> &'static str {
    match *method {
        http::Method::POST => "POST",
        http::Method::GET => "GET",
        _ => "_OTHER",
    }
}

/// Sets the attributes of `decision` on `span`.
fn routing_attributes(span: &mut Span, decision: &RoutingDecision) {
    span.set(attr::REQUEST_MODEL, decision.requested_tier.as_str());
    span.set(attr::PROVIDER, decision.provider.clone());
    span.set(attr::TIER, decision.tier.as_str());
    span.set(attr::REQUESTED_TIER, decision.requested_tier.as_str());
    span.set(
        attr::SESSION_PINNED,
        decision.session.is_some() && decision.reason == sentinel_layer::SelectionReason::Sticky,
    );
    span.set(attr::ATTEMPT, decision.attempt);
    span.set(attr::SELECTION_REASON, decision.reason.as_str());
}

impl SharedSpan {
    /// The response head is ready: names the span after the tier asked
    /// for, and sets what the decision and the status say.
    pub(crate) fn answered(&self, decision: Option<&RoutingDecision>, status: http::StatusCode) {
        self.with(|span| {
            if let Some(d) = decision {
                span.rename(format!("{OPERATION} {}", d.requested_tier.as_str()));
                routing_attributes(span, d);
                if status.is_success() {
                    span.set(attr::RESPONSE_MODEL, d.model.clone());
                }
            }
            span.set(attr::STATUS_CODE, u32::from(status.as_u16()));
            // A server span fails on 5xx only: a 4xx is the client's.
            if status.is_server_error() {
                span.fail(status.as_str().to_owned(), "answered with a server error");
            }
        });
    }

    /// The last byte went to the client (or the client left).
    pub(crate) fn end(&self) {
        self.with(Span::end_now);
    }
}

/// A routed request's trace, for its attempts (a request extension).
#[derive(Debug, Clone)]
pub(crate) struct RequestTrace {
    tracer: Arc<Tracer>,
    /// The server span's context.
    context: SpanContext,
    /// The server span, when sampled.
    server: Option<SharedSpan>,
}

impl RequestTrace {
    /// Starts an attempt: its `traceparent` goes into `headers` (replacing
    /// the client's), and its client span is recorded when sampled.
    pub(crate) fn attempt(
        &self,
        decision: &RoutingDecision,
        uri: &Uri,
        headers: &mut HeaderMap,
    ) -> Option<AttemptSpan> {
        let context = self.context.child();
        headers.insert(TRACEPARENT, context.traceparent());
        if !context.sampled {
            return None;
        }
        let mut span = Span::start(
            self.tracer.clone(),
            context,
            Some(self.context.span_id),
            format!("{OPERATION} {}", decision.requested_tier.as_str()),
            SpanKind::Client,
        );
        span.set(attr::OPERATION, OPERATION);
        routing_attributes(&mut span, decision);
        span.set(attr::MODEL, decision.model.clone());
        span.set(attr::METHOD, "POST");
        if let Some(host) = uri.host() {
            span.set(attr::SERVER_ADDRESS, host.to_owned());
        }
        Some(AttemptSpan {
            span,
            model: decision.model.clone(),
            server: self.server.clone(),
            // A continuation answers in place of the attempt that broke.
            continuation: (decision.reason == sentinel_layer::SelectionReason::Continuation)
                .then(|| Box::new(decision.clone())),
        })
    }
}

/// An upstream attempt's client span; exported when dropped.
#[derive(Debug)]
pub(crate) struct AttemptSpan {
    span: Span,
    model: Arc<str>,
    server: Option<SharedSpan>,
    /// A continuation's decision: when it answers, the request's span
    /// says so.
    continuation: Option<Box<RoutingDecision>>,
}

impl AttemptSpan {
    /// The attempt failed before an answer: `kind` is its `error.type`.
    pub(crate) fn failed(mut self, kind: &'static str, description: impl Into<String>) {
        self.span.fail(kind, description);
    }

    /// The provider's response head came.
    pub(crate) fn head(&mut self, status: http::StatusCode) {
        self.span.set(attr::STATUS_CODE, u32::from(status.as_u16()));
        if status.is_success() {
            self.span.set(attr::RESPONSE_MODEL, self.model.clone());
            if let (Some(decision), Some(server)) = (&self.continuation, &self.server) {
                server.with(|s| {
                    routing_attributes(s, decision);
                    s.set(attr::RESPONSE_MODEL, decision.model.clone());
                });
            }
        } else {
            self.span.fail(
                status.as_str().to_owned(),
                "the provider answered with an error",
            );
        }
    }

    /// The answer broke, stalled or carried the provider's error: `kind`
    /// is its `error.type` (`first_token`, `timeout`, `broken`,
    /// `idle_timeout`, `truncated`, `event_too_large`, `provider_error`).
    pub(crate) fn broke(&mut self, kind: &'static str) {
        self.span
            .fail(kind, "the answer's body did not end as it should");
    }

    /// The answer's token usage, on this span and the request's.
    pub(crate) fn usage(&mut self, input: u64, output: u64) {
        self.span.set(attr::INPUT_TOKENS, input);
        self.span.set(attr::OUTPUT_TOKENS, output);
        if let Some(server) = &self.server {
            server.with(|s| {
                s.set(attr::INPUT_TOKENS, input);
                s.set(attr::OUTPUT_TOKENS, output);
            });
        }
    }
}
