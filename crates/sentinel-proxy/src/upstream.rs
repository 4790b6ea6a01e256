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

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, header};
use http_body::Frame;
use http_body_util::BodyExt;
use sentinel_core::{Pricing, TierConfigSource};
use sentinel_layer::{ErrorCode, RoutedBody, RoutingDecision, SentinelError, UpstreamError};
use tokio::time::Sleep;
use tower::Service;

use crate::metrics as m;
use crate::settings::Provider;

pub use sentinel_zion::http_client;

struct Target {
    base_url: String,
    authorization: Option<HeaderValue>,
}

/// Timeouts of upstream calls.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From sending the request to the response head.
    pub first_byte: Duration,
    /// The longest pause inside the response body.
    pub stream_idle: Duration,
}

/// Forwards routed requests to providers.
#[derive(Clone)]
pub struct Upstream {
    client: reqwest::Client,
    targets: Arc<HashMap<String, Target>>,
    timeouts: Timeouts,
    config: Arc<dyn TierConfigSource>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// Forwards through `client` to `providers`; `config` gives the prices
    /// for cost metrics.
    pub fn new(
        client: reqwest::Client,
        providers: impl IntoIterator<Item = Provider>,
        timeouts: Timeouts,
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
        Ok(Upstream {
            client,
            targets: Arc::new(targets),
            timeouts,
            config,
        })
    }
}

/// Request headers that never go upstream.
fn dropped_request_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "authorization"
            | "openai-organization"
            | "openai-project"
            | "host"
            | "content-length"
            | "accept-encoding"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "x-sentinel-tier"
            | "x-sentinel-session"
    )
}

/// Response headers that are the connection's, not the response's, or
/// that name the provider account behind Sentinel.
fn dropped_response_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "openai-organization"
            | "openai-project"
    )
}

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
        let Some(decision) = req.extensions().get::<RoutingDecision>().cloned() else {
            // A non-POST request on a routed path: Sentinel does not serve it.
            let err = SentinelError::new(ErrorCode::NotFound, "this path takes POST");
            return Ok(err.into_response().map(Body::new));
        };
        let Some(target) = self.targets.get(&*decision.provider) else {
            return Err(UpstreamError::other(format!(
                "unknown provider `{}`",
                decision.provider
            )));
        };
        let (parts, body) = req.into_parts();
        let path = parts.uri.path();
        let rest = path.strip_prefix("/v1").unwrap_or(path);
        let query = parts
            .uri
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        let url = format!("{}{rest}{query}", target.base_url);
        let Ok(url) = url.parse::<reqwest::Url>() else {
            return Err(UpstreamError::other("the upstream URL is invalid"));
        };

        let mut headers = HeaderMap::new();
        for (name, value) in &parts.headers {
            if !dropped_request_header(name) {
                headers.append(name.clone(), value.clone());
            }
        }
        if let Some(auth) = &target.authorization {
            headers.insert(header::AUTHORIZATION, auth.clone());
        }
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        let bytes = body
            .collect()
            .await
            .map_err(|e| UpstreamError::other(e.into_inner()))?
            .to_bytes();
        // Streaming chat completions: ask for the usage chunk so costs can be
        // counted, and hide it from a client that did not ask for it.
        let (bytes, hide_usage) = if decision.stream && rest.ends_with("/chat/completions") {
            with_include_usage(bytes)
        } else {
            (bytes, false)
        };

        let mut request = reqwest::Request::new(parts.method, url);
        *request.headers_mut() = headers;
        *request.body_mut() = Some(reqwest::Body::from(bytes));

        let sent =
            tokio::time::timeout(self.timeouts.first_byte, self.client.execute(request)).await;
        let response = match sent {
            Err(_) => {
                return Err(UpstreamError::timeout(
                    "no response head within the first-byte timeout",
                ));
            }
            Ok(Err(e)) if e.is_connect() => return Err(UpstreamError::connect(e)),
            Ok(Err(e)) if e.is_timeout() => return Err(UpstreamError::timeout(e)),
            Ok(Err(e)) => return Err(UpstreamError::other(e)),
            Ok(Ok(response)) => response,
        };

        let response: Response<reqwest::Body> = response.into();
        let (mut parts, body) = response.into_parts();
        let mut kept = HeaderMap::with_capacity(parts.headers.len());
        for (name, value) in &parts.headers {
            if !dropped_response_header(name) {
                kept.append(name.clone(), value.clone());
            }
        }
        parts.headers = kept;
        let sse = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let pricing = self.pricing(&decision);
        let usage = parts
            .status
            .is_success()
            .then(|| Usage::new(&decision, pricing, sse));
        let body = UpstreamBody {
            inner: body,
            idle: Box::pin(tokio::time::sleep(self.timeouts.stream_idle)),
            idle_timeout: self.timeouts.stream_idle,
            sse,
            done: false,
            usage,
            hidden: (sse && hide_usage).then(BytesMut::new),
        };
        Ok(Response::from_parts(parts, Body::new(body)))
    }

    fn pricing(&self, decision: &RoutingDecision) -> Option<Pricing> {
        let config = self.config.cached()?;
        config
            .tier(decision.tier)
            .find(&decision.provider, &decision.model)
            .and_then(|m| m.pricing())
    }
}

/// Largest non-streaming body kept for reading `usage`.
const USAGE_BODY_CAP: usize = 4 << 20;

/// Token usage read from a response, recorded when the body ends.
struct Usage {
    tier: &'static str,
    model: String,
    provider: String,
    pricing: Option<Pricing>,
    sse: bool,
    buffer: BytesMut,
    overflow: bool,
    found: Option<(u64, u64)>,
    finished: bool,
}

impl Usage {
    fn new(decision: &RoutingDecision, pricing: Option<Pricing>, sse: bool) -> Self {
        Usage {
            tier: decision.tier.as_str(),
            model: decision.model.to_string(),
            provider: decision.provider.to_string(),
            pricing,
            sse,
            buffer: BytesMut::new(),
            overflow: false,
            found: None,
            finished: false,
        }
    }

    /// Drops the usage of a body that broke: nothing is recorded.
    fn abandon(&mut self) {
        self.finished = true;
    }

    fn feed(&mut self, data: &Bytes) {
        if self.sse {
            self.buffer.extend_from_slice(data);
            while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line = self.buffer.split_to(end + 1);
                if let Some(payload) = line.strip_prefix(b"data:")
                    && let Some(found) = usage_in_event(payload)
                {
                    self.found = Some(found);
                }
            }
            if self.buffer.len() > USAGE_BODY_CAP {
                self.buffer.clear();
            }
        } else if !self.overflow {
            if self.buffer.len() + data.len() > USAGE_BODY_CAP {
                self.overflow = true;
                self.buffer = BytesMut::new();
            } else {
                self.buffer.extend_from_slice(data);
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
            self.found = serde_json::from_slice::<serde_json::Value>(&self.buffer)
                .ok()
                .and_then(|v| usage_of(&v));
        }
        let Some((input, output)) = self.found else {
            ::metrics::counter!(m::USAGE_MISSING, "tier" => self.tier, "model" => self.model.clone(), "provider" => self.provider.clone())
                .increment(1);
            return;
        };
        let labels = [
            ("tier", self.tier.to_owned()),
            ("model", self.model.clone()),
            ("provider", self.provider.clone()),
        ];
        ::metrics::counter!(
            m::TOKENS,
            &[&labels[..], &[("kind", "input".to_owned())]].concat()
        )
        .increment(input);
        ::metrics::counter!(
            m::TOKENS,
            &[&labels[..], &[("kind", "output".to_owned())]].concat()
        )
        .increment(output);
        if let Some(p) = self.pricing {
            let micro = (p.cost_usd(input, output) * 1_000_000.0).round() as u64;
            ::metrics::counter!(m::COST_MICRO_USD, &labels).increment(micro);
        }
    }
}

impl Drop for Usage {
    fn drop(&mut self) {
        self.finish();
    }
}

/// `(input, output)` tokens of a usage object: chat completions
/// (`prompt_tokens`, `completion_tokens`) or responses (`input_tokens`,
/// `output_tokens`), at the top level or under `response` (the Responses
/// API's `response.completed` event).
fn usage_of(value: &serde_json::Value) -> Option<(u64, u64)> {
    let usage = value.get("usage").filter(|u| u.is_object()).or_else(|| {
        value
            .get("response")?
            .get("usage")
            .filter(|u| u.is_object())
    })?;
    let get = |a: &str, b: &str| {
        usage
            .get(a)
            .or_else(|| usage.get(b))
            .and_then(|v| v.as_u64())
    };
    Some((
        get("prompt_tokens", "input_tokens")?,
        get("completion_tokens", "output_tokens")?,
    ))
}

fn usage_in_event(payload: &[u8]) -> Option<(u64, u64)> {
    // Only events that mention usage are parsed.
    if !payload.windows(7).any(|w| w == b"\"usage\"") {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(payload.trim_ascii()).ok()?;
    usage_of(&value)
}

pin_project_lite::pin_project! {
    /// The upstream body: streamed through with an idle timeout, `usage`
    /// read on the way, and an SSE error event when a stream breaks.
    struct UpstreamBody {
        #[pin]
        inner: reqwest::Body,
        idle: Pin<Box<Sleep>>,
        idle_timeout: Duration,
        sse: bool,
        done: bool,
        usage: Option<Usage>,
        // Set when Sentinel added `include_usage`: incomplete SSE events,
        // held until whole so the usage-only chunk can be left out.
        hidden: Option<BytesMut>,
    }
}

/// Adds `"stream_options":{"include_usage":true}` to a streaming chat
/// request that does not ask for usage; says whether it did (then the
/// usage-only chunk is hidden from the client).
fn with_include_usage(body: Bytes) -> (Bytes, bool) {
    let Ok(mut value) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&body)
    else {
        return (body, false);
    };
    let options = value
        .entry("stream_options")
        .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
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

/// Takes the whole SSE events out of `pending` and returns them, minus the
/// usage-only chunk (`"choices":[]` with a `usage`), which the client did
/// not ask for.
fn whole_events_without_usage(pending: &mut BytesMut) -> Bytes {
    let mut out = BytesMut::new();
    while let Some(end) = event_end(pending) {
        let event = pending.split_to(end);
        if !is_usage_only(&event) {
            out.extend_from_slice(&event);
        }
    }
    out.freeze()
}

/// The end of the first whole event (after its blank line), if any.
fn event_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn is_usage_only(event: &[u8]) -> bool {
    if !event.windows(7).any(|w| w == b"\"usage\"") {
        return false;
    }
    event
        .split(|&b| b == b'\n')
        .filter_map(|line| line.strip_prefix(b"data:"))
        .filter_map(|payload| {
            serde_json::from_slice::<serde_json::Value>(payload.trim_ascii()).ok()
        })
        .any(|v| {
            v.get("choices")
                .and_then(|c| c.as_array())
                .is_some_and(Vec::is_empty)
                && v.get("usage").is_some_and(|u| u.is_object())
        })
}

/// The SSE event that ends a broken stream.
fn stream_error_event(message: &str) -> Bytes {
    let event = serde_json::json!({
        "error": { "message": message, "type": "server_error", "param": null, "code": "upstream_failed" }
    });
    Bytes::from(format!("data: {event}\n\n"))
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        let failure: &'static str = loop {
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let deadline = tokio::time::Instant::now() + *this.idle_timeout;
                    this.idle.as_mut().reset(deadline);
                    let Some(data) = frame.data_ref() else {
                        return Poll::Ready(Some(Ok(frame)));
                    };
                    if let Some(usage) = this.usage.as_mut() {
                        usage.feed(data);
                    }
                    let Some(pending) = this.hidden.as_mut() else {
                        return Poll::Ready(Some(Ok(frame)));
                    };
                    pending.extend_from_slice(data);
                    let out = whole_events_without_usage(pending);
                    if out.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
                Poll::Ready(None) => {
                    *this.done = true;
                    if let Some(mut usage) = this.usage.take() {
                        usage.finish();
                    }
                    // A last event without its blank line: pass it on as it is.
                    if let Some(rest) = this.hidden.take().filter(|r| !r.is_empty()) {
                        return Poll::Ready(Some(Ok(Frame::data(rest.freeze()))));
                    }
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(_))) => break "broken",
                Poll::Pending => match this.idle.as_mut().poll(cx) {
                    Poll::Ready(()) => break "idle_timeout",
                    Poll::Pending => return Poll::Pending,
                },
            }
        };
        *this.done = true;
        if let Some(mut usage) = this.usage.take() {
            usage.abandon();
        }
        ::metrics::counter!(m::STREAM_ERRORS, "reason" => failure).increment(1);
        tracing::warn!(reason = failure, "upstream response body ended abnormally");
        if *this.sse {
            let message = match failure {
                "idle_timeout" => "the upstream stream stalled beyond the idle timeout",
                _ => "the upstream stream broke before it finished",
            };
            let mut out = this.hidden.take().map(|b| b.to_vec()).unwrap_or_default();
            if !out.is_empty() && !out.ends_with(b"\n\n") {
                out.extend_from_slice(b"\n\n");
            }
            out.extend_from_slice(&stream_error_event(message));
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))))
        } else {
            Poll::Ready(Some(Err(failure.into())))
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
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
        assert!(http_client(Duration::from_secs(1)).is_ok());
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
    fn the_usage_only_chunk_is_hidden_and_everything_else_kept() {
        let usage = r#"data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#;
        let content = r#"data: {"choices":[{"delta":{"content":"usage"}}]}"#;
        let text = format!("{content}\n\n{usage}\n\ndata: [DONE]\n\ndata: {{\"par");
        let mut pending = BytesMut::from(text.as_bytes());
        let out = whole_events_without_usage(&mut pending);
        assert_eq!(
            &out[..],
            format!("{content}\n\ndata: [DONE]\n\n").as_bytes()
        );
        assert_eq!(&pending[..], br#"data: {"par"#, "an incomplete event waits");
    }

    #[test]
    fn usage_is_read_from_chat_and_responses_shapes() {
        let chat = serde_json::json!({ "usage": { "prompt_tokens": 10, "completion_tokens": 5 } });
        assert_eq!(usage_of(&chat), Some((10, 5)));
        let responses = serde_json::json!({ "usage": { "input_tokens": 7, "output_tokens": 3 } });
        assert_eq!(usage_of(&responses), Some((7, 3)));
        let completed = serde_json::json!({ "type": "response.completed", "response": { "usage": { "input_tokens": 1, "output_tokens": 2 } } });
        assert_eq!(usage_of(&completed), Some((1, 2)));
        assert_eq!(usage_of(&serde_json::json!({ "usage": null })), None);
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
