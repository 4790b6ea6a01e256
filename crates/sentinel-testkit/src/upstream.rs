//! A mock OpenAI-compatible provider.
//!
//! [`MockUpstream`] answers `POST /v1/chat/completions` and
//! `POST /v1/responses` (also without the `/v1` prefix) as whatever model the
//! request body names, streamed (server-sent events) when the body has
//! `"stream": true`. `GET /v1/models` is its health-check endpoint. Faults
//! are set per model ([`MockUpstream::set_fault`]), optionally for the next
//! few requests only ([`MockUpstream::set_fault_times`]), and every
//! completion request is recorded for assertions.
//!
//! | request | answer |
//! | --- | --- |
//! | chat, not streamed | a `chat.completion` whose content is `Hello from MODEL` |
//! | chat, streamed | one `chat.completion.chunk` per content piece, a `finish_reason: "stop"` chunk, a usage chunk when `stream_options.include_usage` is true, then `data: [DONE]` |
//! | responses, not streamed | a `response` object with one `output_text` |
//! | responses, streamed | `response.created`, one `response.output_text.delta` per piece, `response.completed` |
//! | body not a JSON object, or no `model` | `400` with an OpenAI error body |

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, StatusCode, Uri};
use serde_json::{Value, json};

use crate::server::{self, Server, lock};

/// A failure [`MockUpstream`] injects for one model (or for its health
/// endpoint, see [`MockUpstream::set_health_fault`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamFault {
    /// Answer with this status and an OpenAI error body
    /// (`{"error":{"message","type","param","code"}}`), with a
    /// `Retry-After: SECONDS` header when `retry_after` is set.
    Status {
        /// The HTTP status code (an invalid one becomes 500).
        status: u16,
        /// Seconds for the `Retry-After` header.
        retry_after: Option<u64>,
    },
    /// Sleep this long, then answer normally.
    Delay(Duration),
    /// Close the connection without answering: over HTTP/1.1 the client
    /// gets no status line, only the connection closing ("connection closed
    /// before message completed" in hyper).
    Reset,
    /// Streamed: send the response head and this many content pieces (the
    /// `response.created` event too, on `/responses`), then break the body:
    /// the connection closes in the middle of the chunked body and the
    /// client's body read fails. Not streamed: send the head and half of the
    /// JSON body, then break it the same way.
    BreakStreamAfter(usize),
    /// Streamed: wait this long between events instead of the configured
    /// chunk delay. Not streamed: no effect.
    SlowStream(Duration),
    /// Streamed: send this many content pieces, then the first half of
    /// the next event (no blank line after it), then break the body as
    /// [`BreakStreamAfter`](Self::BreakStreamAfter) does. Not streamed: as
    /// `BreakStreamAfter`.
    BreakMidEvent(usize),
    /// Hold the request until [`MockUpstream::release_held`] is called,
    /// then answer normally.
    Hold,
}

/// A completion request as [`MockUpstream`] received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The request path, such as `/v1/chat/completions`.
    pub path: String,
    /// The query string, when there was one.
    pub query: Option<String>,
    /// The body's `model` field, when it is a string.
    pub model: Option<String>,
    /// The request headers.
    pub headers: HeaderMap,
    /// The body as JSON, or `Value::Null` when it is not JSON.
    pub body: Value,
}

#[derive(Debug)]
struct ArmedFault {
    fault: UpstreamFault,
    /// Requests left before the fault clears itself; `None`: until cleared.
    remaining: Option<usize>,
}

#[derive(Debug, Clone, Copy)]
struct StreamSettings {
    chunks: usize,
    delay: Duration,
}

#[derive(Debug)]
struct UpstreamState {
    faults: Mutex<HashMap<String, ArmedFault>>,
    health_fault: Mutex<Option<UpstreamFault>>,
    requests: Mutex<Vec<RecordedRequest>>,
    health_calls: AtomicUsize,
    next_id: AtomicU64,
    stream: Mutex<StreamSettings>,
    models: Mutex<Vec<String>>,
    /// Whether held requests may go on.
    released: tokio::sync::watch::Sender<bool>,
}

impl UpstreamState {
    /// The fault for this request to `model`, counting it down.
    fn take_fault(&self, model: &str) -> Option<UpstreamFault> {
        let mut faults = lock(&self.faults);
        let armed = faults.get_mut(model)?;
        let fault = armed.fault.clone();
        if let Some(remaining) = &mut armed.remaining {
            *remaining = remaining.saturating_sub(1);
            if *remaining == 0 {
                faults.remove(model);
            }
        }
        Some(fault)
    }
}

/// A mock OpenAI-compatible provider on `127.0.0.1`, on a port of its own.
///
/// It runs on the tokio runtime that started it; dropping it stops it.
#[derive(Debug)]
pub struct MockUpstream {
    addr: SocketAddr,
    state: Arc<UpstreamState>,
    _server: Server,
}

impl MockUpstream {
    /// The number of content pieces a streamed answer has until
    /// [`set_stream_chunks`](Self::set_stream_chunks) changes it.
    pub const DEFAULT_STREAM_CHUNKS: usize = 3;

    /// Starts the mock on a free loopback port.
    ///
    /// Must be called within a tokio runtime.
    pub async fn start() -> io::Result<Self> {
        let listener = server::bind_any().await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(UpstreamState {
            faults: Mutex::new(HashMap::new()),
            health_fault: Mutex::new(None),
            requests: Mutex::new(Vec::new()),
            health_calls: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            stream: Mutex::new(StreamSettings {
                chunks: Self::DEFAULT_STREAM_CHUNKS,
                delay: Duration::ZERO,
            }),
            models: Mutex::new(
                ["gpt-4o-mini", "gpt-4.1-mini", "gpt-4o", "o3"]
                    .map(String::from)
                    .to_vec(),
            ),
            released: tokio::sync::watch::Sender::new(false),
        });
        let server = Server::spawn(listener, router(Arc::clone(&state)));
        Ok(Self {
            addr,
            state,
            _server: server,
        })
    }

    /// The base URL as OpenAI SDKs expect it: `http://127.0.0.1:PORT/v1`.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The address the mock listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Applies `fault` to every request for `model` until cleared.
    pub fn set_fault(&self, model: &str, fault: UpstreamFault) {
        self.arm(model, fault, None);
    }

    /// Applies `fault` to the next `times` requests for `model`, then
    /// answers normally again (`times == 0` clears the model's fault).
    pub fn set_fault_times(&self, model: &str, fault: UpstreamFault, times: usize) {
        if times == 0 {
            self.clear_fault(model);
        } else {
            self.arm(model, fault, Some(times));
        }
    }

    /// Answers `model` normally again.
    pub fn clear_fault(&self, model: &str) {
        lock(&self.state.faults).remove(model);
    }

    /// Lets every request held by [`UpstreamFault::Hold`] go on (and those
    /// held later pass at once).
    pub fn release_held(&self) {
        self.state.released.send_replace(true);
    }

    /// Clears every model's fault and the health fault.
    pub fn clear_all(&self) {
        lock(&self.state.faults).clear();
        *lock(&self.state.health_fault) = None;
    }

    /// Sets (or with `None` clears) the fault of `GET /v1/models`. Only
    /// [`Status`](UpstreamFault::Status), [`Delay`](UpstreamFault::Delay)
    /// and [`Reset`](UpstreamFault::Reset) apply there; the stream faults
    /// are ignored.
    pub fn set_health_fault(&self, fault: Option<UpstreamFault>) {
        *lock(&self.state.health_fault) = fault;
    }

    /// How many content pieces a streamed answer has (default 3).
    pub fn set_stream_chunks(&self, chunks: usize) {
        lock(&self.state.stream).chunks = chunks;
    }

    /// How long to wait between the events of a streamed answer (default
    /// none). [`UpstreamFault::SlowStream`] overrides it per model.
    pub fn set_chunk_delay(&self, delay: Duration) {
        lock(&self.state.stream).delay = delay;
    }

    /// The model ids `GET /v1/models` lists.
    pub fn set_models<I, S>(&self, ids: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        *lock(&self.state.models) = ids.into_iter().map(Into::into).collect();
    }

    /// Every completion request received so far (chat and responses, faulted
    /// ones included), oldest first. Health checks (`GET /v1/models`) are not
    /// recorded: see [`health_calls`](Self::health_calls).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.requests).clone()
    }

    /// How many completion requests named `model`.
    pub fn calls_for(&self, model: &str) -> usize {
        lock(&self.state.requests)
            .iter()
            .filter(|request| request.model.as_deref() == Some(model))
            .count()
    }

    /// How many completion requests were received, whatever the model.
    pub fn total_calls(&self) -> usize {
        lock(&self.state.requests).len()
    }

    /// How many `GET /v1/models` requests were received.
    pub fn health_calls(&self) -> usize {
        self.state.health_calls.load(Ordering::SeqCst)
    }

    /// Forgets the recorded requests and the health-check count.
    pub fn clear_requests(&self) {
        lock(&self.state.requests).clear();
        self.state.health_calls.store(0, Ordering::SeqCst);
    }

    fn arm(&self, model: &str, fault: UpstreamFault, remaining: Option<usize>) {
        lock(&self.state.faults).insert(model.to_owned(), ArmedFault { fault, remaining });
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Chat,
    Responses,
}

fn router(state: Arc<UpstreamState>) -> Router {
    Router::new()
        .route("/chat/completions", post(chat))
        .route("/v1/chat/completions", post(chat))
        .route("/responses", post(responses))
        .route("/v1/responses", post(responses))
        .route("/models", get(models))
        .route("/v1/models", get(models))
        .fallback(not_found)
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

async fn chat(
    State(state): State<Arc<UpstreamState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    complete(&state, Api::Chat, uri, headers, &body).await
}

async fn responses(
    State(state): State<Arc<UpstreamState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    complete(&state, Api::Responses, uri, headers, &body).await
}

async fn complete(
    state: &UpstreamState,
    api: Api,
    uri: Uri,
    headers: HeaderMap,
    body: &[u8],
) -> Response {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let model = body.get("model").and_then(Value::as_str).map(str::to_owned);
    lock(&state.requests).push(RecordedRequest {
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        model: model.clone(),
        headers,
        body: body.clone(),
    });
    if !body.is_object() {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("invalid_json"),
            "We could not parse the JSON body of your request.",
        );
    }
    let Some(model) = model else {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("missing_model"),
            "you must provide a model parameter",
        );
    };

    let settings = *lock(&state.stream);
    let mut delay = settings.delay;
    let mut break_after = None;
    let mut mid_event = false;
    match state.take_fault(&model) {
        None => {}
        Some(UpstreamFault::Status {
            status,
            retry_after,
        }) => return injected_status(status, retry_after),
        Some(UpstreamFault::Delay(wait)) => tokio::time::sleep(wait).await,
        Some(UpstreamFault::Reset) => return server::reset_response(),
        Some(UpstreamFault::BreakStreamAfter(pieces)) => break_after = Some(pieces),
        Some(UpstreamFault::BreakMidEvent(pieces)) => {
            break_after = Some(pieces + 1);
            mid_event = true;
        }
        Some(UpstreamFault::SlowStream(wait)) => delay = wait,
        Some(UpstreamFault::Hold) => {
            let mut released = state.released.subscribe();
            let _ = released.wait_for(|r| *r).await;
        }
    }

    let id = state.next_id.fetch_add(1, Ordering::SeqCst);
    let streamed = body.get("stream") == Some(&Value::Bool(true));
    if streamed {
        let include_usage =
            body.pointer("/stream_options/include_usage") == Some(&Value::Bool(true));
        let mut events = match api {
            Api::Chat => chat_events(&model, id, settings.chunks, include_usage, break_after),
            Api::Responses => responses_events(&model, id, settings.chunks, break_after),
        };
        if mid_event && let Some(last) = events.last_mut() {
            *last = last.slice(..last.len() / 2);
        }
        return event_stream(events, delay, break_after.is_some());
    }

    let answer = match api {
        Api::Chat => chat_completion(&model, id),
        Api::Responses => response_object(&model, id, &hello(&model)),
    }
    .to_string();
    match break_after {
        None => json_response(StatusCode::OK, answer),
        Some(_) => {
            let answer = Bytes::from(answer);
            let half = answer.slice(..answer.len() / 2);
            event_body(vec![half], Duration::ZERO, true, "application/json")
        }
    }
}

async fn models(State(state): State<Arc<UpstreamState>>) -> Response {
    state.health_calls.fetch_add(1, Ordering::SeqCst);
    let fault = lock(&state.health_fault).clone();
    match fault {
        Some(UpstreamFault::Status {
            status,
            retry_after,
        }) => return injected_status(status, retry_after),
        Some(UpstreamFault::Delay(wait)) => tokio::time::sleep(wait).await,
        Some(UpstreamFault::Reset) => return server::reset_response(),
        Some(
            UpstreamFault::BreakStreamAfter(_)
            | UpstreamFault::BreakMidEvent(_)
            | UpstreamFault::SlowStream(_)
            | UpstreamFault::Hold,
        )
        | None => {}
    }
    let data: Vec<Value> = lock(&state.models)
        .iter()
        .map(|id| json!({ "id": id, "object": "model", "created": 0, "owned_by": "mock" }))
        .collect();
    json_response(
        StatusCode::OK,
        json!({ "object": "list", "data": data }).to_string(),
    )
}

async fn not_found(uri: Uri) -> Response {
    openai_error(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        Some("unknown_url"),
        &format!("Unknown request URL: {}", uri.path()),
    )
}

fn hello(model: &str) -> String {
    format!("Hello from {model}")
}

/// The text of streamed content piece `index` (0-based) of `count`.
fn piece(model: &str, index: usize, count: usize) -> String {
    format!("Hello from {model} ({}/{count}) ", index + 1)
}

fn usage_chat() -> Value {
    json!({ "prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15 })
}

fn chat_completion(model: &str, id: u64) -> Value {
    json!({
        "id": format!("chatcmpl-mock-{id}"),
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": hello(model) },
            "finish_reason": "stop"
        }],
        "usage": usage_chat()
    })
}

fn response_object(model: &str, id: u64, text: &str) -> Value {
    json!({
        "id": format!("resp-mock-{id}"),
        "object": "response",
        "created_at": 0,
        "status": "completed",
        "model": model,
        "output": [{
            "type": "message",
            "id": format!("msg-mock-{id}"),
            "role": "assistant",
            "content": [{ "type": "output_text", "text": text }]
        }],
        "usage": { "input_tokens": 10, "output_tokens": 5, "total_tokens": 15 }
    })
}

/// The SSE events of a streamed chat completion.
fn chat_events(
    model: &str,
    id: u64,
    chunks: usize,
    include_usage: bool,
    break_after: Option<usize>,
) -> Vec<Bytes> {
    let chunk = |choices: Value| {
        json!({
            "id": format!("chatcmpl-mock-{id}"),
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": choices
        })
    };
    let mut events: Vec<Bytes> = (0..chunks)
        .map(|index| {
            let mut delta = json!({ "content": piece(model, index, chunks) });
            if index == 0 {
                delta["role"] = json!("assistant");
            }
            data_event(&chunk(
                json!([{ "index": 0, "delta": delta, "finish_reason": null }]),
            ))
        })
        .collect();
    if let Some(pieces) = break_after {
        events.truncate(pieces);
        return events;
    }
    events.push(data_event(&chunk(
        json!([{ "index": 0, "delta": {}, "finish_reason": "stop" }]),
    )));
    if include_usage {
        let mut last = chunk(json!([]));
        last["usage"] = usage_chat();
        events.push(data_event(&last));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}

/// The SSE events of a streamed Responses-API answer.
fn responses_events(model: &str, id: u64, chunks: usize, break_after: Option<usize>) -> Vec<Bytes> {
    let mut created = response_object(model, id, "");
    created["status"] = json!("in_progress");
    created["output"] = json!([]);
    created["usage"] = Value::Null;
    let mut events = vec![named_event(
        "response.created",
        &json!({ "type": "response.created", "response": created }),
    )];
    let pieces = break_after.map_or(chunks, |pieces| pieces.min(chunks));
    events.extend((0..pieces).map(|index| {
        named_event(
            "response.output_text.delta",
            &json!({
                "type": "response.output_text.delta",
                "item_id": format!("msg-mock-{id}"),
                "output_index": 0,
                "content_index": 0,
                "delta": piece(model, index, chunks)
            }),
        )
    }));
    if break_after.is_none() {
        let text: String = (0..chunks)
            .map(|index| piece(model, index, chunks))
            .collect();
        events.push(named_event(
            "response.completed",
            &json!({ "type": "response.completed", "response": response_object(model, id, &text) }),
        ));
    }
    events
}

fn data_event(data: &Value) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

fn named_event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

fn event_stream(events: Vec<Bytes>, delay: Duration, broken: bool) -> Response {
    event_body(events, delay, broken, "text/event-stream")
}

/// A `200` whose body sends `events` one by one, `delay` apart, each flushed
/// on its own, and then ends (or, when `broken`, fails).
fn event_body(
    events: Vec<Bytes>,
    delay: Duration,
    broken: bool,
    content_type: &'static str,
) -> Response {
    struct Progress {
        events: std::vec::IntoIter<Bytes>,
        sent: usize,
        broken: bool,
    }
    let start = Progress {
        events: events.into_iter(),
        sent: 0,
        broken,
    };
    let stream = futures_util::stream::unfold(start, move |mut progress| async move {
        if progress.sent > 0 {
            // Returning `Pending` here makes hyper flush what it has, so the
            // client receives every event as soon as it is produced.
            pause(delay).await;
        }
        match progress.events.next() {
            Some(event) => {
                progress.sent += 1;
                Some((Ok(event), progress))
            }
            None if progress.broken => {
                if progress.sent == 0 {
                    // Let the head go out first, unlike `Reset`.
                    tokio::task::yield_now().await;
                }
                progress.broken = false;
                let error =
                    io::Error::new(io::ErrorKind::BrokenPipe, "mock: stream broken on purpose");
                Some((Err(error), progress))
            }
            None => None,
        }
    });
    (
        StatusCode::OK,
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn pause(delay: Duration) {
    if delay.is_zero() {
        tokio::task::yield_now().await;
    } else {
        tokio::time::sleep(delay).await;
    }
}

fn injected_status(status: u16, retry_after: Option<u64>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (kind, code) = match status.as_u16() {
        429 => ("requests", "rate_limit_exceeded"),
        400..=499 => ("invalid_request_error", "mock_error"),
        _ => ("server_error", "mock_error"),
    };
    let message = format!("mock upstream: injected status {}", status.as_u16());
    let mut response = openai_error(status, kind, Some(code), &message);
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

fn openai_error(status: StatusCode, kind: &str, code: Option<&str>, message: &str) -> Response {
    let body = json!({
        "error": { "message": message, "type": kind, "param": null, "code": code }
    });
    json_response(status, body.to_string())
}

fn json_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response()
}
