//! A mock OpenAI-compatible provider.
//!
//! [`MockUpstream`] answers `POST /v1/chat/completions` and
//! `POST /v1/responses` (also without the `/v1` prefix) as whatever model the
//! request body names, streamed (server-sent events) when the body has
//! `"stream": true`. `GET /v1/models` is its health-check endpoint. Faults
//! are set per model ([`MockUpstream::set_fault`]), optionally for the next
//! few requests only ([`MockUpstream::set_fault_times`]), and every
//! completion request is recorded, with the time it arrived, for assertions.
//!
//! | request | answer |
//! | --- | --- |
//! | chat, not streamed | a `chat.completion` whose content is `Hello from MODEL` |
//! | chat, streamed | one `chat.completion.chunk` per content piece, a `finish_reason: "stop"` chunk, a usage chunk when `stream_options.include_usage` is true, then `data: [DONE]` |
//! | responses, not streamed | a `response` object with one `output_text` (`Hello from MODEL`) |
//! | responses, streamed | `response.created`, one `response.output_text.delta` per piece, `response.completed` (its text: every piece) |
//! | body not a JSON object, or no `model` | `400` with an OpenAI error body |
//!
//! # Content and usage
//!
//! A streamed answer has `N` content pieces ([`MockUpstream::set_stream_chunks`],
//! default 3); piece `i` (1-based) is `"Hello from MODEL (i/N) "` (trailing
//! space included), so the whole streamed text of `gpt-4o` with `N = 3` is
//! `"Hello from gpt-4o (1/3) Hello from gpt-4o (2/3) Hello from gpt-4o (3/3) "`.
//!
//! **Continuation (assistant prefill).** When the request's last message
//! (chat: the last of `messages`; responses: the last item of an `input`
//! array) has role `assistant`, its text (a string `content`, or the
//! concatenated `text` of its content parts) is taken as what was already
//! said. Let `k` be the number of times `"Hello from "` occurs in it (capped
//! at `N`): the answer is the rest, pieces `k+1..=N` of the answering model
//! (`"Hello from MODEL (k+1/N) "` ...), streamed as usual, or, not streamed,
//! their concatenation as the content (instead of `Hello from MODEL`). A
//! prefill with no piece in it (`k = 0`) gets all `N` pieces. With
//! [`UpstreamFault::RejectPrefill`] such a request is refused instead.
//!
//! **Usage** is the same for every complete answer, whatever the model, the
//! number of pieces or a prefill: [`MockUpstream::PROMPT_TOKENS`] (10) prompt
//! / input tokens and [`MockUpstream::COMPLETION_TOKENS`] (5) completion /
//! output tokens, total 15: in `usage` of the JSON answers, of the
//! `response.completed` event, and of the chat usage chunk (sent only when
//! `stream_options.include_usage` is true). Faulted streams that end early
//! ([`BreakStreamAfter`](UpstreamFault::BreakStreamAfter),
//! [`StallAfter`](UpstreamFault::StallAfter), [`NoDone`](UpstreamFault::NoDone),
//! [`ErrorEvent`](UpstreamFault::ErrorEvent), ...) carry no usage at all.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, StatusCode, Uri};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::server::{self, Restartable, lock};

/// A failure [`MockUpstream`] injects for one model (or for its health
/// endpoint, see [`MockUpstream::set_health_fault`]).
///
/// "Pieces" are the content pieces of a streamed answer (see the
/// [module documentation](self)); on `/responses` the `response.created`
/// event always goes out before them and is not counted. Where a fault
/// takes a piece count `n` larger than the answer has, it applies after the
/// last piece.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamFault {
    /// Answer with this status and an OpenAI error body
    /// (`{"error":{"message","type","param","code"}}`), with a
    /// `Retry-After: SECONDS` header when `retry_after` is set. The type is
    /// `requests` for 429 (code `rate_limit_exceeded`),
    /// `invalid_request_error` for other 4xx and `server_error` otherwise
    /// (code `mock_error`). See [`Error`](Self::Error) to choose them.
    Status {
        /// The HTTP status code (an invalid one becomes 500).
        status: u16,
        /// Seconds for the `Retry-After` header.
        retry_after: Option<u64>,
    },
    /// Answer with this status and the OpenAI error body
    /// `{"error":{"message":MESSAGE,"type":TYPE,"param":PARAM,"code":CODE}}`
    /// (a `None` field is JSON `null`), plus a `Retry-After` header when
    /// `retry_after` is set. Streamed or not, on both APIs. The helpers
    /// [`rate_limited`](Self::rate_limited),
    /// [`context_length_exceeded`](Self::context_length_exceeded),
    /// [`content_filter`](Self::content_filter) and [`error`](Self::error)
    /// build the common ones.
    Error {
        /// The HTTP status code (an invalid one becomes 500).
        status: u16,
        /// `error.type`, such as `invalid_request_error`.
        error_type: Option<String>,
        /// `error.code`, such as `context_length_exceeded`.
        code: Option<String>,
        /// `error.param`, such as `messages`.
        param: Option<String>,
        /// `error.message`.
        message: String,
        /// The `Retry-After` header, if any.
        retry_after: Option<RetryAfter>,
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
    /// then answer normally. Never released: the request is never answered.
    Hold,
    /// Streamed: send the `200` head at once (on `/responses` also the
    /// `response.created` event; on chat nothing else), wait this long, then
    /// send the whole answer as usual (the first piece without the chunk
    /// delay). Not streamed: wait this long, then answer (as
    /// [`Delay`](Self::Delay)).
    FirstTokenDelay(Duration),
    /// Streamed: send the head and this many content pieces, then nothing:
    /// the body stays open until the client goes away (or the mock stops).
    /// Not streamed: send the head and the first half of the JSON body, then
    /// the same.
    StallAfter(usize),
    /// Streamed: after this many content pieces, send the event
    /// `data: {not json` followed by a blank line (`"data: {not json\n\n"`,
    /// on both APIs, no `event:` line), then go on normally: the remaining
    /// pieces, the end events and `[DONE]`. Not streamed: a `200` whose whole
    /// JSON-typed body is `{not json`.
    MalformedEvent(usize),
    /// Streamed: send this many content pieces, then end the body cleanly
    /// with nothing else: no `finish_reason` chunk, no usage chunk, no
    /// `data: [DONE]` (on `/responses`: no `response.completed`). Not
    /// streamed: no effect.
    NoDone(usize),
    /// Streamed: after this many content pieces, send an in-band error event
    /// and end the body cleanly (no `[DONE]`). Chat:
    /// `data: {"error":{"message":M,"type":"server_error","param":null,"code":null}}`;
    /// responses: `event: error` with
    /// `data: {"type":"error","code":"server_error","message":M,"param":null}`;
    /// M is [`MockUpstream::SERVER_ERROR_MESSAGE`]. Not streamed: a `500`
    /// with the chat event's JSON as its body.
    ErrorEvent(usize),
    /// When the request's last message (chat `messages`, or the `input`
    /// array on `/responses`) has role `assistant`, answer `400` with
    /// `{"error":{"message":"assistant prefill is not supported","type":
    /// "invalid_request_error","param":"messages","code":"invalid_request_error"}}`;
    /// otherwise answer normally. Each request counts towards
    /// [`set_fault_times`](MockUpstream::set_fault_times), refused or not.
    RejectPrefill,
}

impl UpstreamFault {
    /// [`Error`](Self::Error) with this status, type and code, no param
    /// and no `Retry-After`; the message is `mock upstream: CODE`.
    pub fn error(status: u16, error_type: &str, code: &str) -> Self {
        Self::Error {
            status,
            error_type: Some(error_type.to_owned()),
            code: Some(code.to_owned()),
            param: None,
            message: format!("mock upstream: {code}"),
            retry_after: None,
        }
    }

    /// `429`, type `requests`, code `rate_limit_exceeded`, message
    /// [`MockUpstream::RATE_LIMIT_MESSAGE`], with `Retry-After` when given.
    pub fn rate_limited(retry_after: Option<RetryAfter>) -> Self {
        Self::Error {
            status: 429,
            error_type: Some("requests".to_owned()),
            code: Some("rate_limit_exceeded".to_owned()),
            param: None,
            message: MockUpstream::RATE_LIMIT_MESSAGE.to_owned(),
            retry_after,
        }
    }

    /// `400`, type `invalid_request_error`, param `messages`, code
    /// `context_length_exceeded`, message
    /// [`MockUpstream::CONTEXT_LENGTH_MESSAGE`] (as OpenAI answers).
    pub fn context_length_exceeded() -> Self {
        Self::Error {
            status: 400,
            error_type: Some("invalid_request_error".to_owned()),
            code: Some("context_length_exceeded".to_owned()),
            param: Some("messages".to_owned()),
            message: MockUpstream::CONTEXT_LENGTH_MESSAGE.to_owned(),
            retry_after: None,
        }
    }

    /// `400`, type `null`, param `prompt`, code `content_filter`, message
    /// [`MockUpstream::CONTENT_FILTER_MESSAGE`] (as Azure OpenAI answers a
    /// filtered prompt).
    pub fn content_filter() -> Self {
        Self::Error {
            status: 400,
            error_type: None,
            code: Some("content_filter".to_owned()),
            param: Some("prompt".to_owned()),
            message: MockUpstream::CONTENT_FILTER_MESSAGE.to_owned(),
            retry_after: None,
        }
    }
}

/// The value of a `Retry-After` header [`UpstreamFault::Error`] sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryAfter {
    /// Delta-seconds: `Retry-After: 7`.
    Seconds(u64),
    /// Sent as it is, such as an HTTP-date
    /// (`Retry-After: Wed, 21 Oct 2015 07:28:00 GMT`, see
    /// [`at`](Self::at)). A string that is not a valid header value is not
    /// sent.
    Date(String),
}

impl RetryAfter {
    /// `time` as an HTTP-date (IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT`),
    /// whole seconds, rounded up.
    pub fn at(time: SystemTime) -> Self {
        let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut seconds = since_epoch.as_secs();
        if since_epoch.subsec_nanos() > 0 {
            seconds += 1;
        }
        Self::Date(http_date(seconds))
    }

    /// An HTTP-date `wait` from now ([`at`](Self::at) of now + `wait`, so
    /// between `wait` and `wait` + 1 s away).
    pub fn after(wait: Duration) -> Self {
        Self::at(SystemTime::now() + wait)
    }

    fn header_value(&self) -> Option<HeaderValue> {
        match self {
            Self::Seconds(seconds) => Some(HeaderValue::from(*seconds)),
            Self::Date(date) => HeaderValue::from_str(date).ok(),
        }
    }
}

/// Formats seconds since the Unix epoch as an IMF-fixdate.
fn http_date(seconds: u64) -> String {
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = seconds / 86_400;
    let of_day = seconds % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let weekday = WEEKDAYS.get((days % 7) as usize).copied().unwrap_or("Thu");
    let month = MONTHS.get((month - 1) as usize).copied().unwrap_or("Jan");
    format!(
        "{weekday}, {day:02} {month} {year} {:02}:{:02}:{:02} GMT",
        of_day / 3_600,
        of_day / 60 % 60,
        of_day % 60
    )
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
    /// When the mock had read the whole request (tokio's clock, so it
    /// follows a paused test clock; `into_std()` gives the std instant).
    pub at: Instant,
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
    /// Error answers without `Content-Length` (chunked).
    chunked_errors: bool,
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
    /// Answer bodies being sent piecewise, not yet finished nor dropped.
    open_streams: Arc<AtomicUsize>,
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
    server: Restartable,
}

impl MockUpstream {
    /// The number of content pieces a streamed answer has until
    /// [`set_stream_chunks`](Self::set_stream_chunks) changes it.
    pub const DEFAULT_STREAM_CHUNKS: usize = 3;

    /// `prompt_tokens` / `input_tokens` of every answer's usage.
    pub const PROMPT_TOKENS: u64 = 10;

    /// `completion_tokens` / `output_tokens` of every answer's usage.
    pub const COMPLETION_TOKENS: u64 = 5;

    /// The message of [`UpstreamFault::rate_limited`].
    pub const RATE_LIMIT_MESSAGE: &'static str = "Rate limit reached for requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again later.";

    /// The message of [`UpstreamFault::context_length_exceeded`].
    pub const CONTEXT_LENGTH_MESSAGE: &'static str = "This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens. Please reduce the length of the messages.";

    /// The message of [`UpstreamFault::content_filter`].
    pub const CONTENT_FILTER_MESSAGE: &'static str = "The response was filtered due to the prompt triggering Azure OpenAI's content management policy. Please modify your prompt and retry. To learn more about our content filtering policies please read our documentation: https://go.microsoft.com/fwlink/?linkid=2198766";

    /// The message of [`UpstreamFault::ErrorEvent`].
    pub const SERVER_ERROR_MESSAGE: &'static str =
        "The server had an error while processing your request. Sorry about that!";

    /// The message of [`UpstreamFault::RejectPrefill`].
    pub const PREFILL_MESSAGE: &'static str = "assistant prefill is not supported";

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
                chunked_errors: false,
            }),
            models: Mutex::new(
                ["gpt-4o-mini", "gpt-4.1-mini", "gpt-4o", "o3"]
                    .map(String::from)
                    .to_vec(),
            ),
            released: tokio::sync::watch::Sender::new(false),
            open_streams: Arc::new(AtomicUsize::new(0)),
        });
        let server = Restartable::spawn(listener, addr, router(Arc::clone(&state)));
        Ok(Self {
            addr,
            state,
            server,
        })
    }

    /// The base URL as OpenAI SDKs expect it: `http://127.0.0.1:PORT/v1`.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The address the mock listens on (kept across [`stop`](Self::stop) and
    /// [`resume`](Self::resume)).
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

    /// Takes `model` down: every request for it gets `503` (type
    /// `server_error`, no `Retry-After`) until [`up`](Self::up). Same as
    /// `set_fault(model, UpstreamFault::Status { status: 503, retry_after: None })`.
    pub fn down(&self, model: &str) {
        self.set_fault(
            model,
            UpstreamFault::Status {
                status: 503,
                retry_after: None,
            },
        );
    }

    /// Brings `model` back: clears its fault, whatever it is (as
    /// [`clear_fault`](Self::clear_fault)).
    pub fn up(&self, model: &str) {
        self.clear_fault(model);
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
    /// [`Status`](UpstreamFault::Status), [`Error`](UpstreamFault::Error),
    /// [`Delay`](UpstreamFault::Delay) and [`Reset`](UpstreamFault::Reset)
    /// apply there; the others are ignored.
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

    /// Whether [`UpstreamFault::Error`] answers are sent without a
    /// `Content-Length` (chunked, as HTTP/2 providers and proxies often
    /// send them; default: with one).
    pub fn set_chunked_errors(&self, chunked: bool) {
        lock(&self.state.stream).chunked_errors = chunked;
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

    /// When each completion request for `model` arrived, oldest first
    /// ([`RecordedRequest::at`]).
    pub fn request_times(&self, model: &str) -> Vec<Instant> {
        lock(&self.state.requests)
            .iter()
            .filter(|request| request.model.as_deref() == Some(model))
            .map(|request| request.at)
            .collect()
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

    /// How many answer bodies the mock is still sending piece by piece
    /// (streamed answers, and the faulted non-streamed ones cut or stalled
    /// midway): started, and neither finished nor dropped. A body is dropped
    /// when its client goes away, so after a client gave up on a
    /// [`StallAfter`](UpstreamFault::StallAfter) stream this comes back down.
    pub fn open_streams(&self) -> usize {
        self.state.open_streams.load(Ordering::SeqCst)
    }

    /// Forgets the recorded requests and the health-check count.
    pub fn clear_requests(&self) {
        lock(&self.state.requests).clear();
        self.state.health_calls.store(0, Ordering::SeqCst);
    }

    /// Makes the whole mock unreachable: closes the listener (connections
    /// are refused) and every open connection, and returns once they are
    /// closed. The port stays held meanwhile (without listening), so that
    /// no other server takes it. Does nothing if already stopped.
    pub async fn stop(&self) {
        self.server.stop().await;
    }

    /// Serves again on the same port with the same state (faults, recorded
    /// requests, settings). Does nothing if it is running.
    ///
    /// The port was held while stopped, so it is free to listen on again;
    /// this fails only if that hold could not be taken and the port cannot
    /// be bound again within a few seconds.
    pub async fn resume(&self) -> io::Result<()> {
        let state = Arc::clone(&self.state);
        self.server.resume(|| router(state)).await
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
    let at = Instant::now();
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let model = body.get("model").and_then(Value::as_str).map(str::to_owned);
    lock(&state.requests).push(RecordedRequest {
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        model: model.clone(),
        headers,
        body: body.clone(),
        at,
    });
    if !body.is_object() {
        return openai_error(
            StatusCode::BAD_REQUEST,
            Some("invalid_request_error"),
            Some("invalid_json"),
            "We could not parse the JSON body of your request.",
        );
    }
    let Some(model) = model else {
        return openai_error(
            StatusCode::BAD_REQUEST,
            Some("invalid_request_error"),
            Some("missing_model"),
            "you must provide a model parameter",
        );
    };

    let settings = *lock(&state.stream);
    let prefill = prefill(api, &body);
    let mut delay = settings.delay;
    let fault = state.take_fault(&model);
    let streamed = body.get("stream") == Some(&Value::Bool(true));
    match &fault {
        Some(UpstreamFault::Status {
            status,
            retry_after,
        }) => return injected_status(*status, *retry_after),
        Some(error @ UpstreamFault::Error { .. }) => {
            let response = injected_error(error);
            return if settings.chunked_errors {
                without_length(response)
            } else {
                response
            };
        }
        Some(UpstreamFault::Delay(wait)) => tokio::time::sleep(*wait).await,
        Some(UpstreamFault::FirstTokenDelay(wait)) if !streamed => {
            tokio::time::sleep(*wait).await;
        }
        Some(UpstreamFault::Reset) => return server::reset_response(),
        Some(UpstreamFault::SlowStream(wait)) => delay = *wait,
        Some(UpstreamFault::Hold) => {
            let mut released = state.released.subscribe();
            let _ = released.wait_for(|r| *r).await;
        }
        Some(UpstreamFault::RejectPrefill) if prefill.is_some() => {
            return openai_error_with_param(
                StatusCode::BAD_REQUEST,
                Some("invalid_request_error"),
                Some("messages"),
                Some("invalid_request_error"),
                MockUpstream::PREFILL_MESSAGE,
            );
        }
        _ => {}
    }

    let id = state.next_id.fetch_add(1, Ordering::SeqCst);
    let pieces = answer_pieces(&model, settings.chunks, prefill.as_deref());
    if streamed {
        let include_usage =
            body.pointer("/stream_options/include_usage") == Some(&Value::Bool(true));
        let parts = match api {
            Api::Chat => chat_events(&model, id, &pieces, include_usage),
            Api::Responses => responses_events(&model, id, &pieces),
        };
        let steps = stream_script(api, parts, fault.as_ref());
        return event_body(
            steps,
            delay,
            "text/event-stream",
            Arc::clone(&state.open_streams),
        );
    }

    let text = match prefill {
        Some(_) => pieces.concat(),
        None => hello(&model),
    };
    let answer = match api {
        Api::Chat => chat_completion(&model, id, &text),
        Api::Responses => response_object(&model, id, &text),
    }
    .to_string();
    let half = || {
        let answer = Bytes::from(answer.clone());
        Step::Send(answer.slice(..answer.len() / 2))
    };
    let piecewise = |last: Step| {
        event_body(
            vec![half(), last],
            Duration::ZERO,
            "application/json",
            Arc::clone(&state.open_streams),
        )
    };
    match fault {
        Some(UpstreamFault::BreakStreamAfter(_) | UpstreamFault::BreakMidEvent(_)) => {
            piecewise(Step::Break)
        }
        Some(UpstreamFault::StallAfter(_)) => piecewise(Step::Stall),
        Some(UpstreamFault::MalformedEvent(_)) => {
            json_response(StatusCode::OK, "{not json".to_owned())
        }
        Some(UpstreamFault::ErrorEvent(_)) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            chat_error_event_json().to_string(),
        ),
        _ => json_response(StatusCode::OK, answer),
    }
}

async fn models(State(state): State<Arc<UpstreamState>>) -> Response {
    state.health_calls.fetch_add(1, Ordering::SeqCst);
    let fault = lock(&state.health_fault).clone();
    match &fault {
        Some(UpstreamFault::Status {
            status,
            retry_after,
        }) => return injected_status(*status, *retry_after),
        Some(error @ UpstreamFault::Error { .. }) => return injected_error(error),
        Some(UpstreamFault::Delay(wait)) => tokio::time::sleep(*wait).await,
        Some(UpstreamFault::Reset) => return server::reset_response(),
        _ => {}
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
        Some("invalid_request_error"),
        Some("unknown_url"),
        &format!("Unknown request URL: {}", uri.path()),
    )
}

/// What every content piece starts with.
const PIECE_PREFIX: &str = "Hello from ";

fn hello(model: &str) -> String {
    format!("{PIECE_PREFIX}{model}")
}

/// The text of streamed content piece `index` (0-based) of `count`.
fn piece(model: &str, index: usize, count: usize) -> String {
    format!("{PIECE_PREFIX}{model} ({}/{count}) ", index + 1)
}

/// The text of the request's final assistant message, when its last message
/// is one.
fn prefill(api: Api, body: &Value) -> Option<String> {
    let list = match api {
        Api::Chat => body.get("messages"),
        Api::Responses => body.get("input"),
    }?;
    let last = list.as_array()?.last()?;
    if last.get("role").and_then(Value::as_str) != Some("assistant") {
        return None;
    }
    Some(match last.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    })
}

/// The content pieces of an answer: all `chunks` of them, or after a prefill
/// the ones it does not hold yet.
fn answer_pieces(model: &str, chunks: usize, prefill: Option<&str>) -> Vec<String> {
    let said = prefill.map_or(0, |text| text.matches(PIECE_PREFIX).count().min(chunks));
    (said..chunks)
        .map(|index| piece(model, index, chunks))
        .collect()
}

fn usage_chat() -> Value {
    json!({
        "prompt_tokens": MockUpstream::PROMPT_TOKENS,
        "completion_tokens": MockUpstream::COMPLETION_TOKENS,
        "total_tokens": MockUpstream::PROMPT_TOKENS + MockUpstream::COMPLETION_TOKENS
    })
}

fn usage_responses() -> Value {
    json!({
        "input_tokens": MockUpstream::PROMPT_TOKENS,
        "output_tokens": MockUpstream::COMPLETION_TOKENS,
        "total_tokens": MockUpstream::PROMPT_TOKENS + MockUpstream::COMPLETION_TOKENS
    })
}

fn chat_completion(model: &str, id: u64, text: &str) -> Value {
    json!({
        "id": format!("chatcmpl-mock-{id}"),
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": text },
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
        "usage": usage_responses()
    })
}

/// The events of a streamed answer: what precedes the content, one event
/// per content piece, and what ends a complete answer.
struct StreamParts {
    prelude: Vec<Bytes>,
    pieces: Vec<Bytes>,
    ending: Vec<Bytes>,
}

/// The SSE events of a streamed chat completion.
fn chat_events(model: &str, id: u64, pieces: &[String], include_usage: bool) -> StreamParts {
    let chunk = |choices: Value| {
        json!({
            "id": format!("chatcmpl-mock-{id}"),
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": choices
        })
    };
    let content = pieces
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let mut delta = json!({ "content": text });
            if index == 0 {
                delta["role"] = json!("assistant");
            }
            data_event(&chunk(
                json!([{ "index": 0, "delta": delta, "finish_reason": null }]),
            ))
        })
        .collect();
    let mut ending = vec![data_event(&chunk(
        json!([{ "index": 0, "delta": {}, "finish_reason": "stop" }]),
    ))];
    if include_usage {
        let mut last = chunk(json!([]));
        last["usage"] = usage_chat();
        ending.push(data_event(&last));
    }
    ending.push(Bytes::from_static(b"data: [DONE]\n\n"));
    StreamParts {
        prelude: Vec::new(),
        pieces: content,
        ending,
    }
}

/// The SSE events of a streamed Responses-API answer.
fn responses_events(model: &str, id: u64, pieces: &[String]) -> StreamParts {
    let mut created = response_object(model, id, "");
    created["status"] = json!("in_progress");
    created["output"] = json!([]);
    created["usage"] = Value::Null;
    let prelude = vec![named_event(
        "response.created",
        &json!({ "type": "response.created", "response": created }),
    )];
    let content = pieces
        .iter()
        .map(|text| {
            named_event(
                "response.output_text.delta",
                &json!({
                    "type": "response.output_text.delta",
                    "item_id": format!("msg-mock-{id}"),
                    "output_index": 0,
                    "content_index": 0,
                    "delta": text
                }),
            )
        })
        .collect();
    let ending = vec![named_event(
        "response.completed",
        &json!({
            "type": "response.completed",
            "response": response_object(model, id, &pieces.concat())
        }),
    )];
    StreamParts {
        prelude,
        pieces: content,
        ending,
    }
}

fn chat_error_event_json() -> Value {
    json!({
        "error": {
            "message": MockUpstream::SERVER_ERROR_MESSAGE,
            "type": "server_error",
            "param": null,
            "code": null
        }
    })
}

fn error_event(api: Api) -> Bytes {
    match api {
        Api::Chat => data_event(&chat_error_event_json()),
        Api::Responses => named_event(
            "error",
            &json!({
                "type": "error",
                "code": "server_error",
                "message": MockUpstream::SERVER_ERROR_MESSAGE,
                "param": null
            }),
        ),
    }
}

/// What a streamed answer sends, given its fault.
fn stream_script(api: Api, parts: StreamParts, fault: Option<&UpstreamFault>) -> Vec<Step> {
    let StreamParts {
        prelude,
        pieces,
        ending,
    } = parts;
    let sends = |events: Vec<Bytes>| events.into_iter().map(Step::Send);
    let first = |n: usize| pieces.iter().take(n).cloned().map(Step::Send);
    let mut steps: Vec<Step> = sends(prelude).collect();
    match fault {
        Some(UpstreamFault::BreakStreamAfter(n)) => {
            steps.extend(first(*n));
            steps.push(Step::Break);
        }
        Some(UpstreamFault::BreakMidEvent(n)) => {
            steps.extend(first(n.saturating_add(1)));
            if let Some(Step::Send(last)) = steps.last_mut() {
                *last = last.slice(..last.len() / 2);
            }
            steps.push(Step::Break);
        }
        Some(UpstreamFault::FirstTokenDelay(wait)) => {
            steps.push(Step::Wait(*wait));
            steps.extend(sends(pieces));
            steps.extend(sends(ending));
        }
        Some(UpstreamFault::StallAfter(n)) => {
            steps.extend(first(*n));
            steps.push(Step::Stall);
        }
        Some(UpstreamFault::MalformedEvent(n)) => {
            let at = (*n).min(pieces.len());
            steps.extend(first(at));
            steps.push(Step::Send(Bytes::from_static(b"data: {not json\n\n")));
            steps.extend(sends(pieces.into_iter().skip(at).collect()));
            steps.extend(sends(ending));
        }
        Some(UpstreamFault::NoDone(n)) => steps.extend(first(*n)),
        Some(UpstreamFault::ErrorEvent(n)) => {
            steps.extend(first(*n));
            steps.push(Step::Send(error_event(api)));
        }
        _ => {
            steps.extend(sends(pieces));
            steps.extend(sends(ending));
        }
    }
    steps
}

fn data_event(data: &Value) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

fn named_event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// One step of an answer body sent piecewise.
enum Step {
    /// Send these bytes (after the chunk delay, unless first or right after
    /// a `Wait`).
    Send(Bytes),
    /// Wait this long.
    Wait(Duration),
    /// Send nothing more, and never end.
    Stall,
    /// Fail the body (the connection closes mid-body).
    Break,
}

/// Counts an open body; uncounts it when dropped.
struct OpenStream(Arc<AtomicUsize>);

impl OpenStream {
    fn new(counter: Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A `200` whose body goes through `steps`: each sent chunk flushed on its
/// own, `delay` apart (a `Wait` replaces the delay it precedes); a `delay`
/// after the last step the body ends.
fn event_body(
    steps: Vec<Step>,
    delay: Duration,
    content_type: &'static str,
    open: Arc<AtomicUsize>,
) -> Response {
    struct Progress {
        steps: std::vec::IntoIter<Step>,
        sent: usize,
        waited: bool,
        _open: OpenStream,
    }
    let start = Progress {
        steps: steps.into_iter(),
        sent: 0,
        waited: false,
        _open: OpenStream::new(open),
    };
    let stream = futures_util::stream::unfold(start, move |mut progress| async move {
        loop {
            let Some(step) = progress.steps.next() else {
                if progress.sent > 0 && !progress.waited {
                    // As between events: the end comes a delay after the last.
                    pause(delay).await;
                }
                return None;
            };
            match step {
                Step::Send(event) => {
                    if progress.sent > 0 && !progress.waited {
                        // Returning `Pending` here makes hyper flush what it
                        // has, so the client receives every event as soon as
                        // it is produced.
                        pause(delay).await;
                    }
                    progress.sent += 1;
                    progress.waited = false;
                    return Some((Ok(event), progress));
                }
                Step::Wait(wait) => {
                    tokio::time::sleep(wait).await;
                    progress.waited = true;
                }
                Step::Stall => {
                    std::future::pending::<()>().await;
                }
                Step::Break => {
                    if progress.sent == 0 {
                        // Let the head go out first, unlike `Reset`.
                        tokio::task::yield_now().await;
                    } else if !progress.waited {
                        // Let what was sent go out before the break.
                        pause(delay).await;
                    }
                    let error =
                        io::Error::new(io::ErrorKind::BrokenPipe, "mock: stream broken on purpose");
                    return Some((Err(error), progress));
                }
            }
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
    let mut response = openai_error(status, Some(kind), Some(code), &message);
    if let Some(seconds) = retry_after {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// The answer of an [`UpstreamFault::Error`] (anything else: a plain 500).
fn injected_error(fault: &UpstreamFault) -> Response {
    let UpstreamFault::Error {
        status,
        error_type,
        code,
        param,
        message,
        retry_after,
    } = fault
    else {
        return injected_status(500, None);
    };
    let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = openai_error_with_param(
        status,
        error_type.as_deref(),
        param.as_deref(),
        code.as_deref(),
        message,
    );
    if let Some(value) = retry_after.as_ref().and_then(RetryAfter::header_value) {
        response.headers_mut().insert(RETRY_AFTER, value);
    }
    response
}

/// The same answer with a body of unknown length: sent chunked.
fn without_length(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(http::header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from_stream(body.into_data_stream()))
}

fn openai_error(
    status: StatusCode,
    kind: Option<&str>,
    code: Option<&str>,
    message: &str,
) -> Response {
    openai_error_with_param(status, kind, None, code, message)
}

fn openai_error_with_param(
    status: StatusCode,
    kind: Option<&str>,
    param: Option<&str>,
    code: Option<&str>,
    message: &str,
) -> Response {
    let body = json!({
        "error": { "message": message, "type": kind, "param": param, "code": code }
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
