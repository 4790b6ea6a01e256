//! The upstream client: forwards a routed request to the chosen provider.
//!
//! [`Upstream`] is the inner service of `TierRoutingLayer` in the proxy. It
//! sends the rewritten body to `{provider base URL}{path without /v1}` with
//! the provider's key (the client's `Authorization`, `OpenAI-Organization`
//! and `OpenAI-Project` never go upstream), asks for an identity encoding so
//! `usage` can be read, and streams the response back unbuffered. Failures
//! before the response head are [`UpstreamError`]s (connect or timeout) for
//! the layer's retry and breakers.
//!
//! Costs of streams: a streaming chat completion that does not ask for
//! `stream_options.include_usage` gets it added, so the final usage chunk
//! can be counted; that chunk (`"choices":[]` with `usage`) is then left
//! out of what the client receives, so the client never sees a chunk it
//! did not ask for. A client that asked for it gets it unchanged. Inside
//! the body, a pause longer than the idle timeout or a broken upstream ends
//! an SSE stream with an SSE error event (counted), never a silent clean
//! end (unless a chat stream is continued on the next model).
//!
//! | file | concern |
//! | --- | --- |
//! | `mod.rs` | the forward path: the provider's URL and key, the headers that go, the attempt's clocks |
//! | `client.rs` | the HTTP client and its TLS |
//! | `body.rs` | what comes back: a small `400` read whole, the streamed body (whole SSE events, usage, the attempt's report, what a break or a stall means) |
//! | `timeout.rs` | the idle timer around the provider's body, shaped like tower-http's `TimeoutBody` |
//! | `usage.rs` | token usage: asked for on streams, read on the way, counted per model |
//! | `continuation.rs` | a broken chat stream continued on the next model |

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Request, Response, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use sentinel_core::{Pricing, TierConfigSource};
use sentinel_layer::{
    AttemptReport, ContextLengthExceeded, Continuation, ErrorCode, RoutedBody, RoutingDecision,
    SentinelError, StreamUsageAdded, UpstreamError,
};
use tokio::time::Instant;
use tower::Service;

use crate::metrics as m;
use crate::settings::{Provider, ProviderKind};
use crate::sse;
use crate::timing::UpstreamWait;
use crate::trace::RequestTrace;
use sentinel_layer::metrics::HandleCache;

mod anthropic;
mod body;
mod client;
mod continuation;
mod target;
mod timeout;
mod usage;

pub(crate) use client::https_connector;
pub use client::{UpstreamClient, upstream_client};
pub use target::InvalidProviderKey;
pub(crate) use target::Target;

use anthropic::ProviderBody;
use body::{
    CLIENT_ERROR_BODY_CAP, Prefixed, Reported, UpstreamBody, client_error_to_read,
    is_context_length_exceeded, read_prefix,
};
use continuation::Resume;
use timeout::TimeoutBody;
use usage::{Usage, UsageCounterCache, usage_of};

/// Whether a response is a server-sent event stream.
fn is_event_stream(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// How an attempt's body is read.
struct BodyPlan {
    api: sse::Api,
    /// Sentinel asked for the usage chunk: it is left out for the client.
    hide_usage: bool,
    report: Option<AttemptReport>,
    /// How a broken chat stream is continued (first attempts only).
    resume: Option<Box<Resume>>,
    /// Where the time spent waiting on the provider goes (the overhead
    /// histogram's subtrahend).
    wait: Option<UpstreamWait>,
    /// The request's trace (tracing on): the attempt's client span and
    /// the `traceparent` it sends.
    trace: Option<RequestTrace>,
}

/// Whether a streamed chat answer that breaks after its head is continued
/// on the next model of the tier (docs/configuration.md, "Continuing a broken stream").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamContinuation {
    /// Continue it (the default).
    On,
    /// End it with the error event.
    Off,
}

/// Timeouts of upstream calls.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Non-streaming: from sending the request to the response head.
    pub first_byte: Duration,
    /// Streaming: from sending the request to the first token (the head is
    /// held until then).
    pub first_token: Duration,
    /// The longest pause inside the response body.
    pub stream_idle: Duration,
}

/// Forwards routed requests to providers.
///
/// Cloning is one reference count: the layer's stack clones its inner
/// service several times per request.
#[derive(Clone)]
pub struct Upstream(Arc<Inner>);

struct Inner {
    client: UpstreamClient,
    targets: HashMap<String, Target>,
    timeouts: Timeouts,
    continuation: StreamContinuation,
    config: Arc<dyn TierConfigSource>,
    counters: UsageCounterCache,
    /// `sentinel_upstream_first_byte_seconds` by (provider, model).
    first_byte: HandleCache<(Arc<str>, Arc<str>), ::metrics::Histogram>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("timeouts", &self.0.timeouts)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// Forwards through `client` to `providers`; `config` gives the prices
    /// for cost metrics.
    pub fn new(
        client: UpstreamClient,
        providers: impl IntoIterator<Item = Provider>,
        timeouts: Timeouts,
        continuation: StreamContinuation,
        config: Arc<dyn TierConfigSource>,
    ) -> Result<Self, InvalidProviderKey> {
        let mut targets = HashMap::new();
        for p in providers {
            targets.insert(p.name.clone(), Target::of(&p)?);
        }
        Ok(Upstream(Arc::new(Inner {
            client,
            targets,
            timeouts,
            continuation,
            config,
            counters: UsageCounterCache::default(),
            first_byte: HandleCache::default(),
        })))
    }
}

/// The client's request headers that go upstream: what an
/// OpenAI-compatible provider needs to read the request and to tie it to
/// the client's own records. Everything else stays behind: the client's
/// credentials and account (`Authorization`, `OpenAI-Organization`,
/// `OpenAI-Project`), cookies, `X-Forwarded-*`, hop-by-hop headers and
/// whatever `Connection` names, the body's framing (the body is
/// rewritten), and Sentinel's own headers. Sentinel then sets the
/// provider's `Authorization` and `Accept-Encoding: identity`.
pub const FORWARDED_REQUEST_HEADERS: [HeaderName; 7] = [
    header::CONTENT_TYPE,
    header::ACCEPT,
    header::USER_AGENT,
    IDEMPOTENCY_KEY,
    sentinel_layer::headers::REQUEST_ID_NAME,
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
];

/// The client's idempotency key: forwarded with the request (not with a
/// continuation, which is another request).
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The client's headers that go upstream ([`FORWARDED_REQUEST_HEADERS`],
/// minus any its `Connection` header names).
fn forwarded_headers(client: &http::HeaderMap) -> http::HeaderMap {
    let mut headers = http::HeaderMap::with_capacity(FORWARDED_REQUEST_HEADERS.len() + 2);
    for name in &FORWARDED_REQUEST_HEADERS {
        if named_in_connection(client, name) {
            continue;
        }
        for value in client.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers
}

/// Whether the client's `Connection` header names `name`: such a header is
/// for this hop only.
fn named_in_connection(headers: &http::HeaderMap, name: &HeaderName) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case(name.as_str()))
}

/// Response headers that are the connection's, not the response's, or
/// that name the provider account behind Sentinel.
const DROPPED_RESPONSE_HEADERS: [HeaderName; 10] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("openai-organization"),
    HeaderName::from_static("openai-project"),
    HeaderName::from_static("anthropic-organization-id"),
];

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl Service<Request<RoutedBody<Body>>> for Upstream {
    type Response = Response<Body>;
    type Error = UpstreamError;
    type Future = BoxFuture<Result<Response<Body>, UpstreamError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<RoutedBody<Body>>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.forward(req).await })
    }
}

impl Upstream {
    async fn forward(
        self,
        req: Request<RoutedBody<Body>>,
    ) -> Result<Response<Body>, UpstreamError> {
        let (parts, body) = req.into_parts();
        let http::request::Parts {
            method,
            uri,
            headers: client_headers,
            extensions,
            ..
        } = parts;
        let Some(decision) = extensions.get::<RoutingDecision>() else {
            // The server sends only routed requests here; anything else is
            // not Sentinel's to forward.
            let err = SentinelError::new(ErrorCode::NotFound, "this request is not routed");
            return Ok(err.into_response().map(Body::new));
        };
        let Some(target) = self.0.targets.get(&*decision.provider) else {
            return Err(UpstreamError::other(format!(
                "unknown provider `{}`",
                decision.provider
            )));
        };
        let report = extensions.get::<AttemptReport>().cloned();
        let path = uri.path();
        let rest = path.strip_prefix("/v1").unwrap_or(path);
        // The client's query string stays behind: neither routed API takes one.
        let upstream_uri = target.uri(rest)?;
        // Streaming chat completions: ask for the usage chunk so costs can be
        // counted, and hide it from a client that did not ask for it.
        let chat = rest.ends_with("/chat/completions");
        if !chat && target.kind == ProviderKind::Anthropic {
            // The layer leaves Anthropic models out of other routes (see
            // `route_providers` in `start`); an app that wires this
            // upstream without that gets a clear 400, never a failure
            // counted against the model.
            ::metrics::counter!(m::UNTRANSLATED_ROUTE, "provider" => decision.provider.to_string())
                .increment(1);
            let err = SentinelError::new(
                ErrorCode::UnsupportedRoute,
                "the Responses API is not served by Anthropic models yet: \
                 use /v1/chat/completions, or a tier without them",
            );
            return Ok(err.into_response().map(Body::new));
        }
        let api = if chat {
            sse::Api::Chat
        } else {
            sse::Api::Responses
        };
        let headers = forwarded_headers(&client_headers);
        // The layer hands over the body it buffered: no second read.
        let bytes = match body.as_bytes() {
            Some(bytes) => bytes.clone(),
            None => body
                .collect()
                .await
                .map_err(|e| UpstreamError::other(e.into_inner()))?
                .to_bytes(),
        };
        // The layer asked for the usage chunk on the client's behalf (see
        // `TierRoutingLayerBuilder::stream_usage`): it is hidden from them.
        let hide_usage = extensions.get::<StreamUsageAdded>().is_some();
        // A streamed chat answer that breaks after its head is continued on
        // the next model, while the request's retry is unused. It keeps the
        // client's headers (no copy: they are not needed past this point).
        let trace = extensions.get::<RequestTrace>().cloned();
        let resume = if chat && decision.stream && self.0.continuation == StreamContinuation::On {
            Continuation::of(&extensions).map(|handle| {
                Resume::new(
                    self.clone(),
                    handle,
                    client_headers,
                    method.clone(),
                    rest,
                    hide_usage,
                    trace.clone(),
                )
            })
        } else {
            None
        };
        let plan = BodyPlan {
            api,
            hide_usage,
            report,
            resume,
            wait: extensions.get::<UpstreamWait>().cloned(),
            trace,
        };
        self.send(decision, target, method, upstream_uri, headers, bytes, plan)
            .await
    }

    /// Sends one attempt to `target` and reads its answer up to the point
    /// where it can go to the client: the head, a whole small `400`, or a
    /// stream's first token.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        decision: &RoutingDecision,
        target: &Target,
        method: http::Method,
        uri: Uri,
        mut headers: http::HeaderMap,
        bytes: Bytes,
        plan: BodyPlan,
    ) -> Result<Response<Body>, UpstreamError> {
        // An Anthropic provider gets the request in its own API; one it
        // cannot take is the client's error, answered here.
        let (bytes, translated) = match target.kind {
            ProviderKind::Openai => (bytes, None),
            ProviderKind::Anthropic => match anthropic::request(&bytes) {
                Ok((bytes, translated)) => (bytes, Some(translated)),
                Err(refusal) => return Ok(anthropic::refused(refusal)),
            },
        };
        // The provider's key, as it takes it, and its extra headers. The
        // body is JSON whatever the client said (it was rendered).
        for (name, value) in &target.headers {
            headers.insert(name.clone(), value.clone());
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        // Tracing on: the attempt's `traceparent` replaces the client's.
        let mut span = plan
            .trace
            .as_ref()
            .and_then(|t| t.attempt(decision, &uri, &mut headers));
        let mut request = Request::new(Full::new(bytes));
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;

        // A stream's clock runs to its first token, an answer's to its head.
        let (limit, what) = if decision.stream {
            (self.0.timeouts.first_token, "first-token")
        } else {
            (self.0.timeouts.first_byte, "first-byte")
        };
        // Until this returns, the request waits on the provider.
        let _waiting = plan.wait.as_ref().map(UpstreamWait::waiting);
        let sent = Instant::now();
        let deadline = sent + limit;
        let response = match tokio::time::timeout_at(deadline, self.0.client.request(request)).await
        {
            Err(_) => {
                let message = format!("no response head within the {what} timeout");
                if let Some(span) = span {
                    span.failed("timeout", message.clone());
                }
                return Err(UpstreamError::timeout(message));
            }
            Ok(Err(e)) => {
                let connect = e.is_connect();
                if let Some(span) = span {
                    let kind = if connect { "connect" } else { "transport" };
                    span.failed(
                        kind,
                        "the provider could not be reached or broke the connection",
                    );
                }
                return Err(if connect {
                    UpstreamError::connect(e)
                } else {
                    UpstreamError::other(e)
                });
            }
            Ok(Ok(response)) => response,
        };
        if let Some(span) = span.as_mut() {
            span.head(response.status());
        }
        self.0
            .first_byte
            .get(&(decision.provider.clone(), decision.model.clone()), || {
                ::metrics::histogram!(m::UPSTREAM_FIRST_BYTE,
                    "model" => decision.model.clone(),
                    "provider" => decision.provider.clone())
            })
            .record(sent.elapsed().as_secs_f64());

        let (mut parts, body) = response.into_parts();
        for name in &DROPPED_RESPONSE_HEADERS {
            parts.headers.remove(name);
        }
        let body = match translated {
            Some(translated) => {
                match anthropic::answer(&mut parts, body, &translated, deadline).await {
                    Ok(anthropic::Answer::Body(body)) => body,
                    Ok(anthropic::Answer::Error(response)) => return Ok(response),
                    Err(e) => {
                        if let Some(span) = span {
                            span.failed("translation", e.to_string());
                        }
                        return Err(e);
                    }
                }
            }
            None => {
                if let Some(cap) = client_error_to_read(&parts) {
                    // Read it whole when it is small: a context-length failure is
                    // tried once more on a model with a larger window.
                    let read = tokio::time::timeout_at(deadline, read_prefix(body, cap)).await;
                    let Ok(Ok((bytes, rest))) = read else {
                        return Err(UpstreamError::other(
                            "the provider's 400 answer broke before it was complete",
                        ));
                    };
                    let body = match rest {
                        None => {
                            if is_context_length_exceeded(&bytes) {
                                parts.extensions.insert(ContextLengthExceeded);
                            }
                            Body::from(bytes)
                        }
                        // Longer than any error envelope: passed on as it is.
                        Some(rest) => Body::new(Prefixed {
                            prefix: Some(bytes),
                            rest,
                        }),
                    };
                    return Ok(Response::from_parts(parts, body));
                }
                ProviderBody::passed(body)
            }
        };
        let sse = is_event_stream(&parts.headers);
        let answer = sse && parts.status.is_success();
        let usage = parts.status.is_success().then(|| Usage {
            counters: self.0.counters.get(decision),
            pricing: self.pricing(decision),
            sse,
            buffer: BytesMut::new(),
            overflow: false,
            found: None,
            // A stream's usage counts once its head goes to the client (a
            // client that leaves during the first-token wait got nothing).
            finished: answer,
            // The span ends with the answer's body.
            trace: span.take(),
        });
        let mut body = UpstreamBody {
            inner: body,
            done: false,
            usage,
            // Only an answer is framed: a 4xx event stream passes as it is.
            framer: answer.then(|| sse::Framer::new(plan.api, plan.hide_usage)),
            ready: VecDeque::new(),
            report: Reported(plan.report),
            in_band_error: false,
            resume: plan.resume.filter(|_| answer),
            resuming: None,
        };
        if answer {
            // The head waits for the first token: a stream that stalls,
            // breaks or errs before it is a failure before the first byte,
            // retried on the next model.
            let first = tokio::time::timeout_at(
                deadline,
                std::future::poll_fn(|cx| Pin::new(&mut body).poll_first_token(cx)),
            )
            .await;
            match first {
                Ok(Ok(())) => {
                    if let Some(usage) = body.usage.as_mut() {
                        usage.finished = false;
                    }
                }
                Ok(Err(reason)) => {
                    body.abandon("first_token");
                    return Err(UpstreamError::other(reason));
                }
                Err(_) => {
                    body.abandon("timeout");
                    return Err(UpstreamError::timeout(
                        "no first token within the first-token timeout",
                    ));
                }
            }
        }
        // The idle clock starts here: at a stream's first token, at the head
        // otherwise.
        let idle = self.0.timeouts.stream_idle;
        let body = body.map_inner(|inner| TimeoutBody::new(inner, idle));
        Ok(Response::from_parts(parts, Body::new(body)))
    }

    fn pricing(&self, decision: &RoutingDecision) -> Option<Pricing> {
        let config = self.0.config.cached()?;
        config
            .tier(decision.tier)
            .find(&decision.provider, &decision.model)
            .and_then(|m| m.pricing())
    }
}

impl sentinel_layer::recovery::ModelProbeClient for Upstream {
    /// `POST {base}/chat/completions` with one short user message and
    /// `max_tokens: 1` and the provider's key (bounded by the probes'
    /// timeout, and by the first-byte timeout); its tokens are counted in
    /// `sentinel_probe_tokens_total` and their cost in
    /// `sentinel_probe_cost_micro_usd_total`.
    fn probe(&self, provider: &str, model: &str) -> sentinel_layer::recovery::ProbeFuture {
        let this = self.clone();
        let (provider, model) = (provider.to_owned(), model.to_owned());
        Box::pin(async move { this.probe_model(&provider, &model).await })
    }
}

impl Upstream {
    async fn probe_model(
        &self,
        provider: &str,
        model: &str,
    ) -> Result<http::StatusCode, sentinel_layer::BoxError> {
        let target = self
            .0
            .targets
            .get(provider)
            .ok_or_else(|| format!("unknown provider `{provider}`"))?;
        // The same message in either API: `max_tokens` 1, one user turn.
        let body = serde_json::json!({
            "model": model,
            "messages": [{ "role": "user", "content": "ping" }],
            "max_tokens": 1,
        });
        let mut request = Request::new(Full::new(Bytes::from(body.to_string())));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = target.uri("/chat/completions")?;
        let headers = request.headers_mut();
        *headers = target.headers.clone();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        let limit = self.0.timeouts.first_byte;
        let answer = tokio::time::timeout(limit, async {
            let response = self.0.client.request(request).await?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), CLIENT_ERROR_BODY_CAP)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            Ok::<_, sentinel_layer::BoxError>((status, bytes))
        })
        .await
        .map_err(|_| "the model probe timed out")??;
        if let Some((input, output)) = usage_of(&answer.1) {
            let labels = [
                ("provider", provider.to_owned()),
                ("model", model.to_owned()),
            ];
            let kind = |kind: &'static str| [&labels[..], &[("kind", kind.to_owned())]].concat();
            ::metrics::counter!(m::PROBE_TOKENS, &kind("input")).increment(input);
            ::metrics::counter!(m::PROBE_TOKENS, &kind("output")).increment(output);
            let pricing = self.0.config.cached().and_then(|config| {
                config
                    .models()
                    .find(|(_, entry)| entry.is(provider, model))
                    .and_then(|(_, entry)| entry.pricing())
            });
            if let Some(p) = pricing {
                let micro = (p.cost_usd(input, output) * 1_000_000.0).round() as u64;
                ::metrics::counter!(m::PROBE_COST_MICRO_USD, &labels).increment(micro);
            }
        }
        Ok(answer.0)
    }
}
