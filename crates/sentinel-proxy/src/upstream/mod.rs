//! The upstream client: forwards a routed request to the chosen provider.
//!
//! [`Upstream`] is the inner service of `TierRoutingLayer` in the proxy. It
//! sends the rewritten body to `{provider base URL}{path without /v1}` with
//! the provider's key (the client's `Authorization`, `OpenAI-Organization`
//! and `OpenAI-Project` never go upstream), asks for an identity encoding so
//! `usage` can be read, and streams the response back unbuffered. Failures
//! before the response head are [`UpstreamError`]s (connect or timeout) for
//! the retry and backoff stages.
//!
//! Costs of streams: a streaming chat completion that does not ask for
//! `stream_options.include_usage` gets it added, so the final usage chunk
//! can be counted; that chunk (`"choices":[]` with `usage`) is then left
//! out of what the client receives, so the client never sees a chunk it
//! did not ask for. A client that asked for it gets it unchanged. Inside the body, a pause longer than the
//! idle timeout or a broken upstream ends an SSE stream with an SSE error
//! event (counted), never a silent clean end.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Request, Response, Uri, header};
use http_body::Frame;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use metrics::Counter;
use sentinel_core::{Pricing, Tier, TierConfigSource};
use sentinel_layer::{
    AttemptReport, ContextLengthExceeded, Continuation, ErrorCode, RoutedBody, RoutingDecision,
    SentinelError, UpstreamError,
};
use serde::Deserialize;
use serde::de::IgnoredAny;
use tokio::time::{Instant, Sleep};
use tower::Service;

use crate::metrics as m;
use crate::settings::Provider;
use crate::sse::{self, contains};

mod continuation;

use continuation::{Resume, Resuming};

/// The upstream HTTP client: hyper's pooled client over rustls
/// ([`sentinel_zion::tls_config`]: webpki roots, `ring` passed explicitly),
/// HTTP/1.1 and HTTP/2 by ALPN, plain HTTP allowed (local providers).
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Builds the [`UpstreamClient`]: TCP connects time out after
/// `connect_timeout`; idle pooled connections close after 90 s.
pub fn upstream_client(connect_timeout: Duration) -> Result<UpstreamClient, String> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(sentinel_zion::tls_config()?)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(https))
}

struct Target {
    /// The base URL without its trailing `/`.
    base_url: String,
    authorization: Option<HeaderValue>,
}

impl Target {
    /// The provider's URL for `rest`, the client's path without `/v1`.
    fn uri(&self, rest: &str) -> Result<Uri, UpstreamError> {
        Uri::try_from(format!("{}{rest}", self.base_url))
            .map_err(|_| UpstreamError::other("the upstream URL is invalid"))
    }
}

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
    ) -> Result<Self, String> {
        let mut targets = HashMap::new();
        for p in providers {
            let authorization = match &p.api_key {
                Some(key) => {
                    let mut v = HeaderValue::try_from(format!("Bearer {}", key.expose())).map_err(
                        |_| format!("the key of provider `{}` cannot go into a header", p.name),
                    )?;
                    v.set_sensitive(true);
                    Some(v)
                }
                None => None,
            };
            targets.insert(
                p.name.clone(),
                Target {
                    base_url: p.base_url.trim_end_matches('/').to_owned(),
                    authorization,
                },
            );
        }
        Ok(Upstream(Arc::new(Inner {
            client,
            targets,
            timeouts,
            continuation,
            config,
            counters: UsageCounterCache::default(),
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
const DROPPED_RESPONSE_HEADERS: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("openai-organization"),
    HeaderName::from_static("openai-project"),
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
        let (bytes, hide_usage) = if decision.stream && chat {
            with_include_usage(bytes)
        } else {
            (bytes, false)
        };
        // A streamed chat answer that breaks after its head is continued on
        // the next model, while the request's retry is unused. It keeps the
        // client's headers (no copy: they are not needed past this point).
        let resume = if chat && decision.stream && self.0.continuation == StreamContinuation::On {
            Continuation::of(&extensions).map(|handle| {
                Resume::new(
                    self.clone(),
                    handle,
                    client_headers,
                    method.clone(),
                    rest,
                    hide_usage,
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
        if let Some(auth) = &target.authorization {
            headers.insert(header::AUTHORIZATION, auth.clone());
        }
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
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
        let deadline = Instant::now() + limit;
        let response = match tokio::time::timeout_at(deadline, self.0.client.request(request)).await
        {
            Err(_) => {
                return Err(UpstreamError::timeout(format!(
                    "no response head within the {what} timeout"
                )));
            }
            Ok(Err(e)) if e.is_connect() => return Err(UpstreamError::connect(e)),
            Ok(Err(e)) => return Err(UpstreamError::other(e)),
            Ok(Ok(response)) => response,
        };

        let (mut parts, body) = response.into_parts();
        for name in &DROPPED_RESPONSE_HEADERS {
            parts.headers.remove(name);
        }
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
        });
        let mut body = UpstreamBody {
            inner: body,
            idle: Box::pin(tokio::time::sleep(self.0.timeouts.stream_idle)),
            idle_timeout: self.0.timeouts.stream_idle,
            last_data: Instant::now(),
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
                    body.abandon();
                    return Err(UpstreamError::other(reason));
                }
                Err(_) => {
                    body.abandon();
                    return Err(UpstreamError::timeout(
                        "no first token within the first-token timeout",
                    ));
                }
            }
            // The stream's idle clock starts at its first token.
            body.last_data = Instant::now();
        }
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
        let body = serde_json::json!({
            "model": model,
            "messages": [{ "role": "user", "content": "ping" }],
            "max_tokens": 1,
        });
        let mut request = Request::new(Full::new(Bytes::from(body.to_string())));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = Uri::try_from(format!("{}/chat/completions", target.base_url))?;
        let headers = request.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        if let Some(auth) = &target.authorization {
            headers.insert(header::AUTHORIZATION, auth.clone());
        }
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

/// The largest `400` body read whole to look for a context-length failure.
const CLIENT_ERROR_BODY_CAP: usize = 64 << 10;

/// How much of a `400` answer to read before passing it on: all of it when
/// its declared length is at most [`CLIENT_ERROR_BODY_CAP`], up to the cap
/// when it declares none (HTTP/2 and chunked answers); `None` for other
/// statuses and longer answers.
fn client_error_to_read(parts: &http::response::Parts) -> Option<usize> {
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
async fn read_prefix(
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
struct Prefixed {
    prefix: Option<Bytes>,
    rest: Incoming,
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
fn is_context_length_exceeded(body: &[u8]) -> bool {
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

/// The usage counters of one (tier, provider, model), registered once.
struct UsageCounters {
    input: Counter,
    output: Counter,
    cost: Counter,
    missing: Counter,
}

/// [`UsageCounters`] by (tier, provider, model): counter handles are looked
/// up once per model instead of once per response (a registry lookup with
/// freshly allocated labels each time). It holds one entry per model the
/// tier configs have named, as the metrics registry itself does.
#[derive(Default)]
struct UsageCounterCache(RwLock<HashMap<ModelKey, Arc<UsageCounters>>>);

/// Tier, provider, model.
type ModelKey = (Tier, Arc<str>, Arc<str>);

impl UsageCounterCache {
    fn get(&self, decision: &RoutingDecision) -> Arc<UsageCounters> {
        let key = (
            decision.tier,
            decision.provider.clone(),
            decision.model.clone(),
        );
        if let Some(counters) = self
            .0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return counters.clone();
        }
        let labels = [
            ("tier", decision.tier.as_str().to_owned()),
            ("model", decision.model.to_string()),
            ("provider", decision.provider.to_string()),
        ];
        let kind = |kind: &'static str| [&labels[..], &[("kind", kind.to_owned())]].concat();
        let counters = Arc::new(UsageCounters {
            input: ::metrics::counter!(m::TOKENS, &kind("input")),
            output: ::metrics::counter!(m::TOKENS, &kind("output")),
            cost: ::metrics::counter!(m::COST_MICRO_USD, &labels),
            missing: ::metrics::counter!(m::USAGE_MISSING, &labels),
        });
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key)
            .or_insert(counters)
            .clone()
    }
}

/// Largest non-streaming body kept for reading `usage`.
const USAGE_BODY_CAP: usize = 4 << 20;

/// Token usage read from a response, recorded when the body ends.
struct Usage {
    counters: Arc<UsageCounters>,
    pricing: Option<Pricing>,
    sse: bool,
    /// Non-streaming: the body so far. SSE: the incomplete last line.
    buffer: BytesMut,
    overflow: bool,
    found: Option<(u64, u64)>,
    finished: bool,
}

impl Usage {
    /// Drops the usage of a body that broke: nothing is recorded.
    fn abandon(&mut self) {
        self.finished = true;
    }

    fn feed(&mut self, data: &Bytes) {
        if self.sse {
            self.feed_sse(data);
        } else if !self.overflow {
            if self.buffer.len() + data.len() > USAGE_BODY_CAP {
                self.overflow = true;
                self.buffer = BytesMut::new();
            } else {
                self.buffer.extend_from_slice(data);
            }
        }
    }

    /// Reads the whole lines of an SSE stream in place; only an incomplete
    /// last line is copied, to be completed by the next frame.
    fn feed_sse(&mut self, data: &[u8]) {
        let Some(last_newline) = data.iter().rposition(|&b| b == b'\n') else {
            self.carry(data);
            return;
        };
        let (lines, rest) = data.split_at(last_newline + 1);
        if self.buffer.is_empty() {
            self.scan_lines(lines);
        } else {
            self.buffer.extend_from_slice(lines);
            let carried = std::mem::take(&mut self.buffer);
            self.scan_lines(&carried);
        }
        self.carry(rest);
    }

    fn carry(&mut self, partial: &[u8]) {
        if self.buffer.len() + partial.len() > USAGE_BODY_CAP {
            self.buffer.clear();
        } else {
            self.buffer.extend_from_slice(partial);
        }
    }

    fn scan_lines(&mut self, lines: &[u8]) {
        if !contains(lines, b"\"usage\"") {
            return;
        }
        for line in lines.split(|&b| b == b'\n') {
            if let Some(payload) = line.strip_prefix(b"data:")
                && let Some(found) = usage_in_event(payload)
            {
                self.found = Some(found);
            }
        }
    }

    /// Records the usage. Runs when the body ends, or when it is dropped
    /// (a server that stops at `Content-Length` never polls for the end).
    fn finish(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        if !self.sse && !self.overflow {
            self.found = usage_of(&self.buffer);
        }
        let Some((input, output)) = self.found else {
            self.counters.missing.increment(1);
            return;
        };
        self.counters.input.increment(input);
        self.counters.output.increment(output);
        if let Some(p) = self.pricing {
            let micro = (p.cost_usd(input, output) * 1_000_000.0).round() as u64;
            self.counters.cost.increment(micro);
        }
    }
}

impl Drop for Usage {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The parts of a response (or of an SSE event) that carry usage; every
/// other member is skipped without building a tree.
#[derive(Deserialize)]
struct UsageDocument {
    usage: Option<TokenUsage>,
    /// The Responses API's `response.completed` event.
    response: Option<ResponseDocument>,
}

#[derive(Deserialize)]
struct ResponseDocument {
    usage: Option<TokenUsage>,
}

#[derive(Deserialize)]
struct TokenUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
}

/// `(input, output)` tokens of a usage object: chat completions
/// (`prompt_tokens`, `completion_tokens`) or responses (`input_tokens`,
/// `output_tokens`), at the top level or under `response` (the Responses
/// API's `response.completed` event).
fn usage_of(json: &[u8]) -> Option<(u64, u64)> {
    let document: UsageDocument = serde_json::from_slice(json).ok()?;
    let usage = document
        .usage
        .or_else(|| document.response.and_then(|r| r.usage))?;
    Some((
        usage.prompt_tokens.or(usage.input_tokens)?,
        usage.completion_tokens.or(usage.output_tokens)?,
    ))
}

fn usage_in_event(payload: &[u8]) -> Option<(u64, u64)> {
    // Only events that mention usage are parsed.
    if !contains(payload, b"\"usage\"") {
        return None;
    }
    usage_of(payload.trim_ascii())
}

pin_project_lite::pin_project! {
    /// The upstream body: streamed through with an idle timeout, `usage`
    /// read on the way, and an SSE error event when a stream breaks.
    struct UpstreamBody {
        #[pin]
        inner: Incoming,
        // Fires at the latest `idle_timeout` after `last_data`; it is not
        // reset on every frame, only moved on when it fires early.
        idle: Pin<Box<Sleep>>,
        idle_timeout: Duration,
        last_data: Instant,
        done: bool,
        usage: Option<Usage>,
        // SSE: passes whole events only (and leaves out the usage-only
        // chunk when Sentinel asked for it).
        framer: Option<sse::Framer>,
        // Whole events read before the head went out (up to the first
        // token), sent first.
        ready: VecDeque<Bytes>,
        // How the attempt ended, for its model's breaker.
        report: Reported,
        // An error event was read before the head went out.
        in_band_error: bool,
        // How to continue the stream on the next model if it breaks, with
        // what the client has been sent so far.
        resume: Option<Box<Resume>>,
        // The stream broke and is being continued: what the client gets now.
        resuming: Option<Resuming>,
    }
}

/// Whether a member is present, whatever its value (even `null`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(d).map(|_| true)
}

/// Adds `"stream_options":{"include_usage":true}` to a streaming chat
/// request that does not ask for usage; says whether it did (then the
/// usage-only chunk is hidden from the client).
///
/// The common case, a body without `stream_options`, is spliced: the member
/// goes in before the closing brace, and nothing else is parsed into a tree
/// or written again.
fn with_include_usage(body: Bytes) -> (Bytes, bool) {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default, deserialize_with = "present")]
        stream_options: bool,
    }
    match serde_json::from_slice::<Probe>(&body) {
        Ok(Probe {
            stream_options: false,
        }) => splice_include_usage(body),
        Ok(Probe {
            stream_options: true,
        }) => merge_include_usage(body),
        Err(_) => (body, false),
    }
}

/// Appends the member to a JSON object known to lack `stream_options`.
fn splice_include_usage(body: Bytes) -> (Bytes, bool) {
    const MEMBER: &[u8] = br#""stream_options":{"include_usage":true}}"#;
    let Some(close) = body.iter().rposition(|&b| b == b'}') else {
        return (body, false);
    };
    let head = &body[..close];
    let empty = head.trim_ascii_end().ends_with(b"{");
    let mut out = Vec::with_capacity(head.len() + MEMBER.len() + 1);
    out.extend_from_slice(head);
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(MEMBER);
    (Bytes::from(out), true)
}

/// Sets `include_usage` inside an existing `stream_options`.
fn merge_include_usage(body: Bytes) -> (Bytes, bool) {
    let Ok(mut value) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&body)
    else {
        return (body, false);
    };
    let options = value
        .entry("stream_options")
        .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
    if options.is_null() {
        *options = serde_json::Value::Object(serde_json::Map::new());
    }
    let Some(options) = options.as_object_mut() else {
        return (body, false);
    };
    if options.get("include_usage") == Some(&serde_json::Value::Bool(true)) {
        return (body, false);
    }
    options.insert("include_usage".into(), serde_json::Value::Bool(true));
    match serde_json::to_vec(&value) {
        Ok(bytes) => (Bytes::from(bytes), true),
        Err(_) => (body, false),
    }
}

/// The attempt's [`AttemptReport`], held by the body: a clean end is a
/// success, a broken or stalled one a failure, and a body dropped before
/// its end (the client went away) is neither.
struct Reported(Option<AttemptReport>);

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

impl UpstreamBody {
    /// Reads an SSE stream up to its first token (see
    /// [`sse::first_token`]), keeping what it read for the client.
    /// `Err` when the stream ends, breaks or sends an error event first.
    fn poll_first_token(
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

    /// Gives up on the body before the client saw it: no usage is recorded.
    fn abandon(&mut self) {
        self.done = true;
        if let Some(mut usage) = self.usage.take() {
            usage.abandon();
        }
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

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
                    *this.last_data = Instant::now();
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
                Poll::Ready(Some(Err(_))) => break "broken",
                Poll::Pending => loop {
                    match this.idle.as_mut().poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(()) => {
                            // Armed before the last frame came: move it on
                            // to `idle_timeout` after that frame.
                            let deadline = *this.last_data + *this.idle_timeout;
                            if Instant::now() >= deadline {
                                break 'read "idle_timeout";
                            }
                            this.idle.as_mut().reset(deadline);
                        }
                    }
                },
            }
        };
        *this.done = true;
        if let Some(mut usage) = this.usage.take() {
            usage.abandon();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_crypto_provider_is_built_in() {
        // Panics when more than one provider is compiled in (or none).
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        assert!(!config.crypto_provider().cipher_suites.is_empty());
    }

    #[tokio::test]
    async fn the_upstream_client_builds() {
        assert!(upstream_client(Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn include_usage_is_spliced_into_objects_of_any_shape() {
        for (body, expected) in [
            (r#"{"stream":true}"#, serde_json::json!({ "stream": true })),
            ("{ }", serde_json::json!({})),
            (
                "{\"a\":[1,{\"b\":\"}\"}]}\n",
                serde_json::json!({ "a": [1, { "b": "}" }] }),
            ),
        ] {
            let (out, added) = with_include_usage(Bytes::from(body));
            assert!(added, "{body}");
            let mut v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            let options = v.as_object_mut().unwrap().remove("stream_options");
            assert_eq!(options, Some(serde_json::json!({ "include_usage": true })));
            assert_eq!(v, expected);
        }
        // `null` options are replaced, not duplicated.
        let (out, added) = with_include_usage(Bytes::from(r#"{"stream_options":null}"#));
        assert!(added);
        assert_eq!(&out[..], br#"{"stream_options":{"include_usage":true}}"#);
        // Not an object: left alone.
        let list = Bytes::from("[1]");
        assert_eq!(with_include_usage(list.clone()), (list, false));
    }

    #[test]
    fn usage_is_found_in_sse_lines_split_anywhere() {
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":6}}\n\ndata: [DONE]\n\n";
        for split in 0..stream.len() {
            let mut usage = noop_usage(true);
            usage.feed(&Bytes::copy_from_slice(&stream.as_bytes()[..split]));
            usage.feed(&Bytes::copy_from_slice(&stream.as_bytes()[split..]));
            assert_eq!(usage.found, Some((4, 6)), "split at {split}");
            usage.abandon();
        }
    }

    fn noop_usage(sse: bool) -> Usage {
        Usage {
            counters: Arc::new(UsageCounters {
                input: Counter::noop(),
                output: Counter::noop(),
                cost: Counter::noop(),
                missing: Counter::noop(),
            }),
            pricing: None,
            sse,
            buffer: BytesMut::new(),
            overflow: false,
            found: None,
            finished: false,
        }
    }

    proptest::proptest! {
        #![proptest_config(sentinel_testkit::hostile::config())]

        /// The usage scanner over arbitrary bytes cut anywhere: never a
        /// panic, and what it keeps stays under its cap.
        #[test]
        fn the_usage_scanner_takes_any_bytes(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            cuts in proptest::collection::vec(0usize..600, 0..6),
            sse in proptest::prelude::any::<bool>(),
        ) {
            let mut usage = noop_usage(sse);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut start = 0;
            for end in cuts.into_iter().chain([bytes.len()]) {
                usage.feed(&Bytes::copy_from_slice(&bytes[start..end]));
                start = end;
                proptest::prop_assert!(usage.buffer.len() <= USAGE_BODY_CAP);
            }
            usage.finish();
        }

        /// A stream with content chunks and one usage chunk, cut anywhere
        /// and with any line ends: the usage is found.
        #[test]
        fn the_usage_chunk_is_found_however_the_stream_is_cut(
            contents in proptest::collection::vec("[a-z \"{}:,]{0,30}", 0..5),
            prompt in 0u64..1_000_000,
            completion in 0u64..1_000_000,
            crlf in proptest::prelude::any::<bool>(),
            cuts in proptest::collection::vec(0usize..2000, 0..6),
        ) {
            let end = if crlf { "\r\n" } else { "\n" };
            let mut stream = String::new();
            for text in &contents {
                let chunk = serde_json::json!({ "choices": [{ "delta": { "content": text } }] });
                stream.push_str(&format!("data: {chunk}{end}{end}"));
            }
            stream.push_str(&format!(
                "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":{prompt},\"completion_tokens\":{completion}}}}}{end}{end}data: [DONE]{end}{end}"
            ));
            let bytes = stream.as_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut usage = noop_usage(true);
            let mut start = 0;
            for cut in cuts.into_iter().chain([bytes.len()]) {
                usage.feed(&Bytes::copy_from_slice(&bytes[start..cut]));
                start = cut;
            }
            proptest::prop_assert_eq!(usage.found, Some((prompt, completion)));
            usage.abandon();
        }
    }

    #[test]
    fn include_usage_is_added_only_when_missing() {
        let (body, added) = with_include_usage(Bytes::from(r#"{"stream":true,"model":"m"}"#));
        assert!(added);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["model"], "m");
        let asked = Bytes::from(r#"{"stream":true,"stream_options":{"include_usage":true}}"#);
        assert_eq!(with_include_usage(asked.clone()), (asked, false));
        let (body, added) = with_include_usage(Bytes::from(
            r#"{"stream_options":{"include_usage":false,"x":1}}"#,
        ));
        assert!(added);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v["stream_options"],
            serde_json::json!({ "include_usage": true, "x": 1 })
        );
    }

    #[test]
    fn usage_is_read_from_chat_and_responses_shapes() {
        let chat = br#"{"id":"x","choices":[{"message":{"content":"usage"}}],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}}"#;
        assert_eq!(usage_of(chat), Some((10, 5)));
        let responses = br#"{"usage":{"input_tokens":7,"output_tokens":3}}"#;
        assert_eq!(usage_of(responses), Some((7, 3)));
        let completed = br#"{"type":"response.completed","response":{"id":"r","usage":{"input_tokens":1,"output_tokens":2}}}"#;
        assert_eq!(usage_of(completed), Some((1, 2)));
        assert_eq!(usage_of(br#"{"usage":null}"#), None);
        assert_eq!(usage_of(br#"{"usage":{"prompt_tokens":1}}"#), None);
        assert_eq!(usage_of(b"not json"), None);
        assert_eq!(
            usage_in_event(br#" {"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":6}}"#),
            Some((4, 6))
        );
        assert_eq!(
            usage_in_event(br#" {"choices":[{"delta":{"content":"usage"}}]}"#),
            None
        );
    }
}
