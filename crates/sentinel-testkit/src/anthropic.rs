//! A mock of Anthropic's Messages API.
//!
//! [`MockAnthropic`] answers `POST /v1/messages` as the model it was asked
//! for, in the shapes of Anthropic's API reference:
//!
//! | request | answer |
//! | --- | --- |
//! | no `tools`, or a `tool_result` in the last turn | a text message: [`MockAnthropic::text_for`] of the model (`end_turn`) |
//! | `tools` and no `tool_result` yet | a `tool_use` block calling the first tool with [`MockAnthropic::TOOL_INPUT`] (`tool_use`) |
//! | `"stream": true` | the same as events: `message_start`, `content_block_start`, `ping`, one `content_block_delta` per piece (`text_delta` or `input_json_delta`), `content_block_stop`, `message_delta` (stop reason, output tokens), `message_stop` |
//!
//! Usage is always [`MockAnthropic::INPUT_TOKENS`] in and
//! [`MockAnthropic::OUTPUT_TOKENS`] out. `GET /v1/models` lists the models
//! asked for so far. Every request is recorded with its headers and body; a
//! request without an `x-api-key` or `anthropic-version` header is answered
//! `401 authentication_error`; one without `content-type: application/json`
//! or `max_tokens`, or whose final assistant turn ends with whitespace,
//! `400`, as the real API does. Per-model
//! [`AnthropicFault`]s inject the provider's errors.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, StatusCode, header};
use serde_json::{Value, json};

use crate::server::{self, Restartable, lock};

/// A failure [`MockAnthropic`] injects into a model's answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnthropicFault {
    /// Answer this status with Anthropic's error body for it:
    /// `invalid_request_error` (400), `authentication_error` (401),
    /// `permission_error` (403), `not_found_error` (404),
    /// `rate_limit_error` (429, with `retry-after: 1`), `api_error` (500),
    /// `overloaded_error` (529).
    Status(u16),
    /// `400 invalid_request_error`: "prompt is too long".
    PromptTooLong,
    /// A stream that sends this many text deltas, then an `error` event
    /// (`overloaded_error`).
    ErrorEventAfter(usize),
    /// A stream that sends this many text deltas, then stops without
    /// `message_stop` (the connection closes).
    CutAfter(usize),
}

/// A request the mock received.
#[derive(Debug, Clone)]
pub struct AnthropicRequest {
    /// The path.
    pub path: String,
    /// The headers.
    pub headers: HeaderMap,
    /// The body as JSON (`Null` when it is not).
    pub body: Value,
}

#[derive(Debug, Default)]
struct AnthropicState {
    faults: Mutex<HashMap<String, AnthropicFault>>,
    requests: Mutex<Vec<AnthropicRequest>>,
    models: Mutex<Vec<String>>,
}

/// A mock Anthropic API on `127.0.0.1`, on a port of its own; dropping it
/// stops it.
#[derive(Debug)]
pub struct MockAnthropic {
    addr: SocketAddr,
    state: Arc<AnthropicState>,
    _server: Restartable,
}

impl MockAnthropic {
    /// Input tokens of every answer.
    pub const INPUT_TOKENS: u64 = 12;
    /// Output tokens of every answer.
    pub const OUTPUT_TOKENS: u64 = 7;
    /// The input of every `tool_use` block.
    pub const TOOL_INPUT: &'static str = r#"{"location":"Paris"}"#;

    /// The text a model answers: `Hello from MODEL`, streamed in three
    /// pieces (`Hello`, ` from`, ` MODEL`).
    pub fn text_for(model: &str) -> String {
        format!("Hello from {model}")
    }

    /// Starts on a free loopback port. Must be called within a tokio
    /// runtime.
    pub async fn start() -> io::Result<Self> {
        let listener = server::bind_any().await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(AnthropicState::default());
        let router = Router::new()
            .route("/v1/messages", post(messages))
            .route("/v1/models", get(models))
            .with_state(state.clone());
        Ok(MockAnthropic {
            addr,
            state,
            _server: Restartable::spawn(listener, addr, router),
        })
    }

    /// The base URL, `http://127.0.0.1:PORT` (no `/v1`, as Anthropic's).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Fails `model`'s answers with `fault` until cleared.
    pub fn set_fault(&self, model: &str, fault: AnthropicFault) {
        lock(&self.state.faults).insert(model.to_owned(), fault);
    }

    /// Answers `model` normally again.
    pub fn clear_fault(&self, model: &str) {
        lock(&self.state.faults).remove(model);
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<AnthropicRequest> {
        lock(&self.state.requests).clone()
    }

    /// `POST /v1/messages` calls for `model`.
    pub fn calls_for(&self, model: &str) -> usize {
        lock(&self.state.requests)
            .iter()
            .filter(|r| r.path == "/v1/messages" && r.body["model"] == model)
            .count()
    }

    /// `GET /v1/models` calls.
    pub fn model_list_calls(&self) -> usize {
        lock(&self.state.requests)
            .iter()
            .filter(|r| r.path == "/v1/models")
            .count()
    }
}

fn error(status: u16, kind: &str, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "type": "error", "error": { "type": kind, "message": message } }).to_string(),
    )
        .into_response();
    if status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, http::HeaderValue::from_static("1"));
    }
    response
}

fn status_fault(status: u16) -> Response {
    let kind = match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    error(status, kind, &format!("mock {kind}"))
}

fn authorized(headers: &HeaderMap) -> bool {
    headers.contains_key("x-api-key") && headers.contains_key("anthropic-version")
}

async fn models(State(state): State<Arc<AnthropicState>>, headers: HeaderMap) -> Response {
    lock(&state.requests).push(AnthropicRequest {
        path: "/v1/models".into(),
        headers: headers.clone(),
        body: Value::Null,
    });
    if !authorized(&headers) {
        return error(401, "authentication_error", "invalid x-api-key");
    }
    let data: Vec<Value> = lock(&state.models)
        .iter()
        .map(|m| json!({ "type": "model", "id": m, "display_name": m }))
        .collect();
    axum::Json(json!({ "data": data, "has_more": false })).into_response()
}

/// What a request asks the model to produce.
enum Output {
    Text(String),
    ToolUse { name: String },
}

fn output(body: &Value, model: &str) -> Output {
    let answered_tool = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_array())
        .is_some_and(|blocks| blocks.iter().any(|b| b["type"] == "tool_result"));
    match body["tools"].as_array().and_then(|t| t.first()) {
        Some(tool) if !answered_tool => Output::ToolUse {
            name: tool["name"].as_str().unwrap_or("tool").to_owned(),
        },
        _ => Output::Text(MockAnthropic::text_for(model)),
    }
}

async fn messages(
    State(state): State<Arc<AnthropicState>>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    lock(&state.requests).push(AnthropicRequest {
        path: "/v1/messages".into(),
        headers: headers.clone(),
        body: body.clone(),
    });
    if !authorized(&headers) {
        return error(401, "authentication_error", "invalid x-api-key");
    }
    if headers
        .get(header::CONTENT_TYPE)
        .is_none_or(|v| !v.as_bytes().starts_with(b"application/json"))
    {
        return error(
            400,
            "invalid_request_error",
            "content-type must be application/json",
        );
    }
    let Some(model) = body["model"].as_str().map(str::to_owned) else {
        return error(400, "invalid_request_error", "model: Field required");
    };
    if !body["max_tokens"].is_u64() {
        return error(400, "invalid_request_error", "max_tokens: Field required");
    }
    // As the real API: a final assistant turn (a prefill) must not end
    // with whitespace.
    let last = body["messages"].as_array().and_then(|m| m.last());
    if let Some(last) = last
        && last["role"] == "assistant"
    {
        let text = match &last["content"] {
            Value::String(s) => Some(s.as_str()),
            Value::Array(blocks) => blocks.last().and_then(|b| b["text"].as_str()),
            _ => None,
        };
        if text.is_some_and(|t| t.ends_with(char::is_whitespace)) {
            return error(
                400,
                "invalid_request_error",
                "messages: final assistant content cannot end with trailing whitespace",
            );
        }
    }
    {
        let mut models = lock(&state.models);
        if !models.contains(&model) {
            models.push(model.clone());
        }
    }
    let fault = lock(&state.faults).get(&model).cloned();
    match fault {
        Some(AnthropicFault::Status(status)) => return status_fault(status),
        Some(AnthropicFault::PromptTooLong) => {
            return error(
                400,
                "invalid_request_error",
                "prompt is too long: 250000 tokens > 200000 maximum",
            );
        }
        _ => {}
    }
    let output = output(&body, &model);
    if body["stream"] == true {
        return stream(&model, output, fault);
    }
    let (content, stop_reason) = match output {
        Output::Text(text) => (json!([{ "type": "text", "text": text }]), "end_turn"),
        Output::ToolUse { name } => (
            json!([{
                "type": "tool_use",
                "id": "toolu_01A09q90qw90lq917835lq9",
                "name": name,
                "input": serde_json::from_str::<Value>(MockAnthropic::TOOL_INPUT).unwrap_or(Value::Null),
            }]),
            "tool_use",
        ),
    };
    axum::Json(json!({
        "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": {
            "input_tokens": MockAnthropic::INPUT_TOKENS,
            "output_tokens": MockAnthropic::OUTPUT_TOKENS,
        },
    }))
    .into_response()
}

fn event(kind: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
}

fn stream(model: &str, output: Output, fault: Option<AnthropicFault>) -> Response {
    let mut events = vec![event(
        "message_start",
        &json!({ "type": "message_start", "message": {
            "id": "msg_01stream", "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": { "input_tokens": MockAnthropic::INPUT_TOKENS, "output_tokens": 1 },
        }}),
    )];
    let (block, deltas, stop_reason) = match output {
        Output::Text(text) => {
            let pieces: Vec<String> = {
                let words: Vec<&str> = text.split(' ').collect();
                words
                    .iter()
                    .enumerate()
                    .map(|(i, w)| {
                        if i == 0 {
                            (*w).to_owned()
                        } else {
                            format!(" {w}")
                        }
                    })
                    .collect()
            };
            let deltas: Vec<Value> = pieces
                .into_iter()
                .map(|p| json!({ "type": "text_delta", "text": p }))
                .collect();
            (json!({ "type": "text", "text": "" }), deltas, "end_turn")
        }
        Output::ToolUse { name } => {
            let input = MockAnthropic::TOOL_INPUT;
            let (a, b) = input.split_at(input.len() / 2);
            (
                json!({ "type": "tool_use", "id": "toolu_01stream", "name": name, "input": {} }),
                vec![
                    json!({ "type": "input_json_delta", "partial_json": a }),
                    json!({ "type": "input_json_delta", "partial_json": b }),
                ],
                "tool_use",
            )
        }
    };
    events.push(event(
        "content_block_start",
        &json!({ "type": "content_block_start", "index": 0, "content_block": block }),
    ));
    events.push(event("ping", &json!({ "type": "ping" })));
    let limit = match fault {
        Some(AnthropicFault::ErrorEventAfter(n) | AnthropicFault::CutAfter(n)) => n,
        _ => usize::MAX,
    };
    for (i, delta) in deltas.into_iter().enumerate() {
        if i == limit {
            break;
        }
        events.push(event(
            "content_block_delta",
            &json!({ "type": "content_block_delta", "index": 0, "delta": delta }),
        ));
    }
    match fault {
        Some(AnthropicFault::ErrorEventAfter(_)) => {
            events.push(event(
                "error",
                &json!({ "type": "error", "error": { "type": "overloaded_error", "message": "Overloaded" } }),
            ));
        }
        Some(AnthropicFault::CutAfter(_)) => {}
        _ => {
            events.push(event(
                "content_block_stop",
                &json!({ "type": "content_block_stop", "index": 0 }),
            ));
            events.push(event(
                "message_delta",
                &json!({ "type": "message_delta",
                    "delta": { "stop_reason": stop_reason, "stop_sequence": null },
                    "usage": { "output_tokens": MockAnthropic::OUTPUT_TOKENS } }),
            ));
            events.push(event("message_stop", &json!({ "type": "message_stop" })));
        }
    }
    // One event at a time, a little apart, as a real stream comes.
    let stream = futures_util::stream::unfold(events.into_iter(), |mut rest| async move {
        let next = rest.next()?;
        tokio::time::sleep(Duration::from_millis(2)).await;
        Some((Ok::<_, Infallible>(next), rest))
    });
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    /// `POST /v1/messages` with `body`, with or without the key: status
    /// and body text.
    async fn post(mock: &MockAnthropic, body: Value, keyed: bool) -> (u16, String) {
        let stream = tokio::net::TcpStream::connect(mock.addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut request = http::Request::post("/v1/messages")
            .header("host", "anthropic")
            .header("content-type", "application/json");
        if keyed {
            request = request
                .header("x-api-key", "k")
                .header("anthropic-version", "2023-06-01");
        }
        let request = request
            .body(http_body_util::Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn it_answers_as_the_model_streams_and_fails_on_demand() {
        let mock = MockAnthropic::start().await.unwrap();
        let ask = |stream: bool| {
            json!({ "model": "claude-x", "max_tokens": 10, "stream": stream,
                    "messages": [{ "role": "user", "content": "hi" }] })
        };
        let (status, _) = post(&mock, ask(false), false).await;
        assert_eq!(status, 401);
        let (status, text) = post(&mock, ask(false), true).await;
        assert_eq!(status, 200);
        let message: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(message["content"][0]["text"], "Hello from claude-x");
        assert_eq!(
            message["usage"]["output_tokens"],
            MockAnthropic::OUTPUT_TOKENS
        );

        let (status, text) = post(&mock, ask(true), true).await;
        assert_eq!(status, 200);
        let kinds: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(
            kinds,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );

        mock.set_fault("claude-x", AnthropicFault::Status(529));
        let (status, text) = post(&mock, ask(false), true).await;
        assert_eq!(status, 529);
        assert!(text.contains("overloaded_error"), "{text}");
        mock.set_fault("claude-x", AnthropicFault::ErrorEventAfter(1));
        let (_, text) = post(&mock, ask(true), true).await;
        assert!(
            text.contains("event: error") && !text.contains("message_stop"),
            "{text}"
        );
        assert_eq!(mock.calls_for("claude-x"), 5);
    }
}
