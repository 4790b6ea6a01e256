//! The soak's client: sends one chat completion, reads the answer to its
//! end, and says what it was.
//!
//! Every answer falls in one of three groups:
//!
//! - answered: a `2xx` JSON `chat.completion`; a `2xx` stream whose last
//!   event is `data: [DONE]` or an SSE error event whose code is in
//!   design.md's table; or a non-`2xx` status with Sentinel's error
//!   envelope and a `(status, code)` pair from that table (with
//!   `Retry-After` where the table says so);
//! - undocumented: anything else, a dropped connection included;
//! - hung: no complete answer within the client's bound.
//!
//! The status class of every response head is kept apart from that, so it
//! can be compared with the proxy's own request counter.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The pooled HTTP/1.1 client every request goes through.
pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Builds the client.
pub(crate) fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// The `(status, code)` pairs of design.md's error table, and whether the
/// answer must carry `Retry-After`.
pub(crate) const DOCUMENTED: &[(u16, &str, bool)] = &[
    (400, "invalid_json", false),
    (400, "invalid_tier", false),
    (400, "conflicting_tier", false),
    (400, "model_not_allowed", false),
    (400, "invalid_session", false),
    (401, "invalid_api_key", false),
    (404, "not_found", false),
    (405, "method_not_allowed", false),
    (408, "request_timeout", false),
    (413, "body_too_large", false),
    (415, "unsupported_media_type", false),
    (429, "rate_limited", true),
    (502, "upstream_failed", false),
    (503, "tier_config_unavailable", true),
    (503, "tier_unavailable", false),
    (503, "all_models_backing_off", true),
    (503, "overloaded", true),
    (504, "upstream_timeout", false),
];

/// The largest answer body read; a longer one is undocumented.
const BODY_CAP: usize = 1 << 20;

/// One request to send.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    /// `true`: `"stream":true`.
    pub(crate) stream: bool,
    /// `simple`, `moderate` or `complex`, sent as `model`.
    pub(crate) tier: &'static str,
    /// The `x-sentinel-session` header, if any.
    pub(crate) session: Option<String>,
    /// `stream_options.include_usage` (streams only).
    pub(crate) include_usage: bool,
}

impl Spec {
    /// A random request: half streamed, tiers evenly, 30 % with one of
    /// `sessions` session ids.
    pub(crate) fn random(sessions: u32) -> Spec {
        let stream = fastrand::bool();
        Spec {
            stream,
            tier: ["simple", "moderate", "complex"][fastrand::usize(0..3)],
            session: (sessions > 0 && fastrand::f64() < 0.3)
                .then(|| format!("soak-{}", fastrand::u32(0..sessions))),
            include_usage: stream && fastrand::bool(),
        }
    }

    fn body(&self) -> Bytes {
        let mut body = serde_json::json!({
            "model": self.tier,
            "messages": [
                { "role": "system", "content": "You are a terse assistant." },
                { "role": "user", "content": "Name three rivers of Europe and one fact about each." }
            ],
            "stream": self.stream,
        });
        if self.include_usage {
            body["stream_options"] = serde_json::json!({ "include_usage": true });
        }
        Bytes::from(body.to_string())
    }
}

/// What the client made of one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// `2xx` with a `chat.completion` body.
    JsonOk,
    /// `2xx` stream ending with `data: [DONE]`.
    StreamDone,
    /// `2xx` stream ending with an SSE error event with this code.
    StreamErrorEvent(String),
    /// A documented error: status and code.
    Documented(u16, String),
    /// Anything else, described.
    Undocumented(String),
}

/// One request's result.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) spec_stream: bool,
    /// The response head's status, if one arrived.
    pub(crate) head: Option<StatusCode>,
    /// `None`: hung (no complete answer within the bound).
    pub(crate) answer: Option<Answer>,
    pub(crate) elapsed: Duration,
}

/// Sends `spec` to the proxy at `addr` and classifies the answer, giving up
/// after `bound`.
pub(crate) async fn send(
    client: &HttpClient,
    addr: SocketAddr,
    spec: Spec,
    bound: Duration,
) -> Outcome {
    let started = Instant::now();
    let mut head = None;
    let answer = tokio::time::timeout(bound, exchange(client, addr, &spec, &mut head))
        .await
        .ok();
    Outcome {
        spec_stream: spec.stream,
        head,
        answer,
        elapsed: started.elapsed(),
    }
}

async fn exchange(
    client: &HttpClient,
    addr: SocketAddr,
    spec: &Spec,
    head: &mut Option<StatusCode>,
) -> Answer {
    let mut request = Request::post(format!("http://{addr}/v1/chat/completions"))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(session) = &spec.session {
        request = request.header("x-sentinel-session", session.as_str());
    }
    let request = match request.body(Full::new(spec.body())) {
        Ok(r) => r,
        Err(e) => return Answer::Undocumented(format!("building the request: {e}")),
    };
    let response = match client.request(request).await {
        Ok(r) => r,
        Err(e) => return Answer::Undocumented(format!("no HTTP answer: {}", error_chain(&e))),
    };
    let status = response.status();
    *head = Some(status);
    let has_model = response.headers().contains_key("x-sentinel-model");
    let retry_after = response.headers().contains_key(header::RETRY_AFTER);
    let mut body = response.into_body();
    let mut bytes = BytesMut::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    bytes.extend_from_slice(data);
                    if bytes.len() > BODY_CAP {
                        return Answer::Undocumented(format!(
                            "{status}: body over {BODY_CAP} bytes"
                        ));
                    }
                }
            }
            Err(e) => {
                return Answer::Undocumented(format!(
                    "{status}: body broken after {} bytes: {}",
                    bytes.len(),
                    error_chain(&e)
                ));
            }
        }
    }
    classify(status, has_model, retry_after, spec.stream, &bytes)
}

/// Classifies a complete answer.
pub(crate) fn classify(
    status: StatusCode,
    has_model: bool,
    retry_after: bool,
    stream: bool,
    body: &[u8],
) -> Answer {
    if status.is_success() {
        if !has_model {
            return Answer::Undocumented(format!("{status} without X-Sentinel-Model"));
        }
        return if stream {
            stream_end(body)
        } else {
            json_completion(body)
        };
    }
    let code = error_code(body);
    let Some(code) = code else {
        return Answer::Undocumented(format!(
            "{status} without an error envelope: {}",
            snippet(body)
        ));
    };
    match DOCUMENTED
        .iter()
        .find(|(s, c, _)| *s == status.as_u16() && *c == code)
    {
        Some((_, _, true)) if !retry_after => {
            Answer::Undocumented(format!("{status} {code} without Retry-After"))
        }
        Some(_) => Answer::Documented(status.as_u16(), code),
        None => Answer::Undocumented(format!("{status} with code {code:?}: {}", snippet(body))),
    }
}

/// `error.code` of an OpenAI error envelope.
fn error_code(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("error")?.get("code")?.as_str().map(str::to_owned)
}

fn json_completion(body: &[u8]) -> Answer {
    let value: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return Answer::Undocumented(format!("2xx JSON unreadable ({e}): {}", snippet(body)));
        }
    };
    let is_completion = value.get("object").and_then(|o| o.as_str()) == Some("chat.completion")
        && value
            .get("choices")
            .and_then(|c| c.as_array())
            .is_some_and(|c| !c.is_empty());
    if is_completion {
        Answer::JsonOk
    } else {
        Answer::Undocumented(format!("2xx JSON is not a completion: {}", snippet(body)))
    }
}

/// How a `2xx` stream ended: its last event must be `[DONE]` (the only
/// one) or an error event with a documented code.
fn stream_end(body: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(body).replace("\r\n", "\n");
    if !text.is_empty() && !text.ends_with("\n\n") {
        return Answer::Undocumented(format!("2xx stream ends inside an event: …{}", tail(&text)));
    }
    // An event without a `data:` line (a comment such as Sentinel's
    // `: x-sentinel-continued-model:`) dispatches nothing.
    let payloads: Vec<String> = text
        .split("\n\n")
        .filter(|e| e.lines().any(|l| l.starts_with("data:")))
        .map(|event| {
            event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim)
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect();
    let dones = payloads.iter().filter(|p| *p == "[DONE]").count();
    let Some(last) = payloads.last() else {
        return Answer::Undocumented("2xx stream with no events".into());
    };
    if last == "[DONE]" {
        return if dones == 1 {
            Answer::StreamDone
        } else {
            Answer::Undocumented(format!("2xx stream with {dones} [DONE] events"))
        };
    }
    if dones > 0 {
        return Answer::Undocumented(format!(
            "2xx stream with events after [DONE]: …{}",
            tail(&text)
        ));
    }
    match error_code(last.as_bytes()) {
        Some(code) if DOCUMENTED.iter().any(|(_, c, _)| *c == code) => {
            Answer::StreamErrorEvent(code)
        }
        Some(code) => Answer::Undocumented(format!("2xx stream error event with code {code:?}")),
        None => Answer::Undocumented(format!(
            "2xx stream ended without [DONE] or an error event: …{}",
            tail(&text)
        )),
    }
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.chars().take(160).collect()
}

fn tail(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    chars[chars.len().saturating_sub(120)..].iter().collect()
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// Everything the client saw, summed.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) sent: u64,
    pub(crate) sent_stream: u64,
    pub(crate) sent_session: u64,
    pub(crate) json_ok: u64,
    pub(crate) stream_done: u64,
    pub(crate) stream_error_events: BTreeMap<String, u64>,
    pub(crate) documented: BTreeMap<(u16, String), u64>,
    pub(crate) undocumented: u64,
    pub(crate) undocumented_kinds: BTreeMap<String, u64>,
    pub(crate) undocumented_examples: Vec<String>,
    pub(crate) hung: u64,
    pub(crate) hung_after_head: u64,
    /// Response heads by status class (`2xx`, `4xx`, `5xx`, ...).
    pub(crate) heads: BTreeMap<&'static str, u64>,
    /// Milliseconds of every complete answer.
    pub(crate) latencies_ms: Vec<f32>,
    /// A task of the client itself panicked (a harness bug).
    pub(crate) client_panics: u64,
}

impl Stats {
    /// Requests answered with a 2xx or a documented error.
    pub(crate) fn answered(&self) -> u64 {
        self.json_ok
            + self.stream_done
            + self.stream_error_events.values().sum::<u64>()
            + self.documented.values().sum::<u64>()
    }

    pub(crate) fn record(&mut self, outcome: Outcome) {
        if let Some(status) = outcome.head {
            *self.heads.entry(status_class(status)).or_default() += 1;
        }
        let Some(answer) = outcome.answer else {
            self.hung += 1;
            if outcome.head.is_some() {
                self.hung_after_head += 1;
            }
            return;
        };
        self.latencies_ms
            .push(outcome.elapsed.as_secs_f32() * 1000.0);
        match answer {
            Answer::JsonOk => self.json_ok += 1,
            Answer::StreamDone => self.stream_done += 1,
            Answer::StreamErrorEvent(code) => {
                *self.stream_error_events.entry(code).or_default() += 1
            }
            Answer::Documented(status, code) => {
                *self.documented.entry((status, code)).or_default() += 1
            }
            Answer::Undocumented(what) => {
                self.undocumented += 1;
                *self.undocumented_kinds.entry(kind_of(&what)).or_default() += 1;
                if self.undocumented_examples.len() < 8 {
                    let kind = if outcome.spec_stream { "sse" } else { "json" };
                    self.undocumented_examples.push(format!("[{kind}] {what}"));
                }
            }
        }
    }
}

/// The first words of an undocumented answer's description, to group them.
fn kind_of(what: &str) -> String {
    what.split([':', '…'])
        .next()
        .unwrap_or(what)
        .trim()
        .to_owned()
}

/// The status class, as the proxy's `status` label spells it (the layer's
/// own rule).
pub(crate) use sentinel_layer::classify::status_class;

#[cfg(test)]
mod tests {
    use super::*;

    fn done_stream() -> Vec<u8> {
        b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n".to_vec()
    }

    #[test]
    fn streams_must_end_with_done_or_a_documented_error_event() {
        let ok = StatusCode::OK;
        assert_eq!(
            classify(ok, true, false, true, &done_stream()),
            Answer::StreamDone
        );
        let error = b"data: {\"choices\":[]}\n\ndata: {\"error\":{\"message\":\"x\",\"type\":\"server_error\",\"code\":\"upstream_failed\"}}\n\n";
        assert_eq!(
            classify(ok, true, false, true, error),
            Answer::StreamErrorEvent("upstream_failed".into())
        );
        // A comment is not an event: a continued stream ends the same way.
        let continued =
            b"data: {\"choices\":[]}\n\n: x-sentinel-continued-model: m\n\ndata: [DONE]\n\n";
        assert_eq!(
            classify(ok, true, false, true, continued),
            Answer::StreamDone
        );
        let commented = b"data: {\"choices\":[]}\n\n: x-sentinel-continued-model: m\n\n";
        assert!(matches!(
            classify(ok, true, false, true, commented),
            Answer::Undocumented(_)
        ));
        let truncated = b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n";
        assert!(matches!(
            classify(ok, true, false, true, truncated),
            Answer::Undocumented(_)
        ));
        let cut = b"data: {\"choices\":[{\"delta\":{\"con";
        assert!(matches!(
            classify(ok, true, false, true, cut),
            Answer::Undocumented(_)
        ));
        let mut twice = done_stream();
        twice.extend_from_slice(b"data: [DONE]\n\n");
        assert!(matches!(
            classify(ok, true, false, true, &twice),
            Answer::Undocumented(_)
        ));
        assert!(matches!(
            classify(ok, false, false, true, &done_stream()),
            Answer::Undocumented(_)
        ));
    }

    #[test]
    fn errors_must_be_in_the_table() {
        let body = |code: &str| {
            format!("{{\"error\":{{\"message\":\"m\",\"type\":\"t\",\"code\":\"{code}\"}}}}")
        };
        let bad_gateway = StatusCode::BAD_GATEWAY;
        assert_eq!(
            classify(
                bad_gateway,
                false,
                false,
                false,
                body("upstream_failed").as_bytes()
            ),
            Answer::Documented(502, "upstream_failed".into())
        );
        // Right code, wrong status.
        assert!(matches!(
            classify(
                StatusCode::INTERNAL_SERVER_ERROR,
                false,
                false,
                false,
                body("upstream_failed").as_bytes()
            ),
            Answer::Undocumented(_)
        ));
        // Retry-After is required for 429.
        let limited = StatusCode::TOO_MANY_REQUESTS;
        assert!(matches!(
            classify(
                limited,
                false,
                false,
                false,
                body("rate_limited").as_bytes()
            ),
            Answer::Undocumented(_)
        ));
        assert_eq!(
            classify(limited, false, true, false, body("rate_limited").as_bytes()),
            Answer::Documented(429, "rate_limited".into())
        );
        assert!(matches!(
            classify(
                bad_gateway,
                false,
                false,
                false,
                b"<html>bad gateway</html>"
            ),
            Answer::Undocumented(_)
        ));
    }

    #[test]
    fn json_answers_must_be_completions() {
        let ok = StatusCode::OK;
        let completion = br#"{"object":"chat.completion","choices":[{"index":0}]}"#;
        assert_eq!(classify(ok, true, false, false, completion), Answer::JsonOk);
        assert!(matches!(
            classify(ok, true, false, false, br#"{"object":"chat.comp"#),
            Answer::Undocumented(_)
        ));
    }

    #[test]
    fn stats_count_heads_apart_from_answers() {
        let mut stats = Stats::default();
        stats.record(Outcome {
            spec_stream: true,
            head: Some(StatusCode::OK),
            answer: None,
            elapsed: Duration::from_secs(30),
        });
        stats.record(Outcome {
            spec_stream: false,
            head: Some(StatusCode::BAD_GATEWAY),
            answer: Some(Answer::Documented(502, "upstream_failed".into())),
            elapsed: Duration::from_millis(3),
        });
        assert_eq!(stats.hung, 1);
        assert_eq!(stats.hung_after_head, 1);
        assert_eq!(stats.answered(), 1);
        assert_eq!(stats.heads.get("2xx"), Some(&1));
        assert_eq!(stats.heads.get("5xx"), Some(&1));
    }
}
