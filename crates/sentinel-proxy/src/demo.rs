//! `--demo`: an in-process mock OpenAI upstream.
//!
//! It answers `POST /v1/chat/completions` and `POST /v1/responses` as the
//! model it was asked for (non-streaming and SSE streaming, a chunk every
//! 100 ms, with a final usage chunk when `stream_options.include_usage` is
//! set), and `GET /v1/models`, on a free loopback port.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

/// Starts the mock upstream; returns its base URL (`http://127.0.0.1:PORT/v1`).
pub async fn start_mock_upstream() -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/responses", post(responses))
        .route("/v1/models", get(models));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "demo upstream stopped");
        }
    });
    Ok(format!("http://{addr}/v1"))
}

async fn models() -> Response {
    axum::Json(json!({ "object": "list", "data": [
        { "id": "gpt-4o-mini", "object": "model" },
        { "id": "gpt-4o", "object": "model" },
        { "id": "gpt-4.1", "object": "model" }
    ] }))
    .into_response()
}

fn model_of(body: &Value) -> String {
    body["model"].as_str().unwrap_or("unknown").to_owned()
}

fn sse(events: Vec<String>) -> Response {
    let stream =
        futures_util::stream::unfold(events.into_iter().enumerate(), |mut it| async move {
            let (i, event) = it.next()?;
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Some((Ok::<_, Infallible>(Bytes::from(event)), it))
        });
    (
        [
            (http::header::CONTENT_TYPE, "text/event-stream"),
            (http::header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn chat(body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = model_of(&body);
    let text = format!("Hello from {model} (Sentinel demo upstream).");
    let usage = json!({ "prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21 });
    if body["stream"] != Value::Bool(true) {
        return axum::Json(json!({
            "id": "chatcmpl-demo", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{ "index": 0, "message": { "role": "assistant", "content": text }, "finish_reason": "stop" }],
            "usage": usage
        }))
        .into_response();
    }
    let chunk = |delta: Value, finish: Value| {
        let c = json!({ "id": "chatcmpl-demo", "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }] });
        format!("data: {c}\n\n")
    };
    let mut events = vec![chunk(
        json!({ "role": "assistant", "content": "" }),
        Value::Null,
    )];
    for word in text.split_inclusive(' ') {
        events.push(chunk(json!({ "content": word }), Value::Null));
    }
    events.push(chunk(json!({}), json!("stop")));
    if body["stream_options"]["include_usage"] == Value::Bool(true) {
        let c = json!({ "id": "chatcmpl-demo", "object": "chat.completion.chunk", "created": 0, "model": model,
            "choices": [], "usage": usage });
        events.push(format!("data: {c}\n\n"));
    }
    events.push("data: [DONE]\n\n".into());
    sse(events)
}

async fn responses(body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = model_of(&body);
    let text = format!("Hello from {model} (Sentinel demo upstream).");
    let response = json!({
        "id": "resp-demo", "object": "response", "model": model, "status": "completed",
        "output": [{ "type": "message", "role": "assistant", "content": [{ "type": "output_text", "text": text }] }],
        "usage": { "input_tokens": 12, "output_tokens": 9, "total_tokens": 21 }
    });
    if body["stream"] != Value::Bool(true) {
        return axum::Json(response).into_response();
    }
    let mut events = vec![format!(
        "event: response.created\ndata: {}\n\n",
        json!({ "type": "response.created", "response": { "id": "resp-demo", "model": model } })
    )];
    for word in text.split_inclusive(' ') {
        events.push(format!(
            "event: response.output_text.delta\ndata: {}\n\n",
            json!({ "type": "response.output_text.delta", "delta": word })
        ));
    }
    events.push(format!(
        "event: response.completed\ndata: {}\n\n",
        json!({ "type": "response.completed", "response": response })
    ));
    sse(events)
}
