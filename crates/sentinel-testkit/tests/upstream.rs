//! `MockUpstream`: answers as the requested model, streams incrementally,
//! injects per-model faults and records what it received.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use sentinel_testkit::{MockUpstream, UpstreamFault};
use serde_json::{Value, json};

fn chat_url(upstream: &MockUpstream) -> String {
    format!("{}/chat/completions", upstream.url())
}

fn chat(model: &str) -> Value {
    json!({ "model": model, "messages": [{ "role": "user", "content": "hi" }] })
}

fn streamed_chat(model: &str, include_usage: bool) -> Value {
    let mut body = chat(model);
    body["stream"] = json!(true);
    if include_usage {
        body["stream_options"] = json!({ "include_usage": true });
    }
    body
}

#[tokio::test]
async fn answers_as_the_requested_model() {
    let upstream = MockUpstream::start().await.unwrap();
    assert_eq!(upstream.url(), format!("http://{}/v1", upstream.addr()));

    let reply = support::post_json(&chat_url(&upstream), &chat("gpt-4o"))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "gpt-4o");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello from gpt-4o"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["total_tokens"], 15);
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-mock-"));

    // Without the /v1 prefix too.
    let bare = format!("http://{}/chat/completions", upstream.addr());
    let reply = support::post_json(&bare, &chat("o3")).await.unwrap();
    assert_eq!(reply.json()["model"], "o3");
}

#[tokio::test]
async fn responses_api_answers_as_the_requested_model() {
    let upstream = MockUpstream::start().await.unwrap();
    let url = format!("{}/responses", upstream.url());
    let reply = support::post_json(&url, &json!({ "model": "gpt-4o-mini", "input": "hi" }))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    assert_eq!(body["object"], "response");
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(
        body["output"][0]["content"][0]["text"],
        "Hello from gpt-4o-mini"
    );
    assert_eq!(body["usage"]["input_tokens"], 10);

    let streamed = json!({ "model": "gpt-4o-mini", "input": "hi", "stream": true });
    let reply = support::post_json(&url, &streamed).await.unwrap();
    assert_eq!(reply.headers["content-type"], "text/event-stream");
    let events: Vec<Value> = support::sse_data(&reply.text())
        .iter()
        .map(|data| serde_json::from_str(data).unwrap())
        .collect();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "response.created",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.completed"
        ]
    );
    assert_eq!(events[4]["response"]["model"], "gpt-4o-mini");
}

#[tokio::test]
async fn bad_requests_get_openai_errors() {
    let upstream = MockUpstream::start().await.unwrap();
    let reply = support::fetch(Method::POST, &chat_url(&upstream), &[], Bytes::from("nope"))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");

    let reply = support::post_json(&chat_url(&upstream), &json!({ "messages": [] }))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);

    let reply = support::get(&format!("{}/nothing", upstream.url()), &[])
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.json()["error"]["message"].is_string());
    assert_eq!(
        upstream.total_calls(),
        2,
        "both completion requests are recorded"
    );
}

#[tokio::test]
async fn streams_chunks_naming_the_model_and_ends_with_done() {
    let upstream = MockUpstream::start().await.unwrap();
    let reply = support::post_json(&chat_url(&upstream), &streamed_chat("gpt-4o", false))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["content-type"], "text/event-stream");
    let data = support::sse_data(&reply.text());
    assert_eq!(
        data.len(),
        3 + 1 + 1,
        "3 content chunks, the stop chunk, [DONE]"
    );
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..4]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], "gpt-4o");
        assert!(chunk.get("usage").is_none());
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks[..3]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert!(text.contains("Hello from gpt-4o"), "{text}");
    assert_eq!(chunks[3]["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn include_usage_adds_a_usage_chunk_before_done() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_stream_chunks(5);
    let reply = support::post_json(&chat_url(&upstream), &streamed_chat("o3", true))
        .await
        .unwrap();
    let data = support::sse_data(&reply.text());
    assert_eq!(data.len(), 5 + 1 + 1 + 1);
    let usage: Value = serde_json::from_str(&data[6]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["model"], "o3");
    assert_eq!(usage["usage"]["prompt_tokens"], 10);
    assert_eq!(data[7], "[DONE]");
}

#[tokio::test]
async fn the_stream_is_incremental() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_chunk_delay(Duration::from_millis(150));
    let response = support::send(
        Method::POST,
        &chat_url(&upstream),
        &[("content-type", "application/json")],
        Bytes::from(streamed_chat("gpt-4o", false).to_string()),
    )
    .await
    .unwrap();
    let mut body = response.into_body();
    let first = support::next_data(&mut body, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    let first_at = Instant::now();
    let first = String::from_utf8_lossy(&first).into_owned();
    assert_eq!(support::sse_data(&first).len(), 1, "one event: {first}");
    assert!(first.contains("\"gpt-4o\""));

    let rest = body.collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&rest).ends_with("data: [DONE]\n\n"));
    // The four other events come 150 ms apart, after the first one arrived:
    // the first was not held back until the end.
    let waited = first_at.elapsed();
    assert!(
        waited >= Duration::from_millis(400),
        "rest after {waited:?}"
    );
}

#[tokio::test]
async fn status_fault_applies_to_its_model_only() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_fault(
        "gpt-4o",
        UpstreamFault::Status {
            status: 429,
            retry_after: Some(7),
        },
    );
    let reply = support::post_json(&chat_url(&upstream), &chat("gpt-4o"))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.headers["retry-after"], "7");
    assert!(reply.json()["error"]["message"].is_string());

    let reply = support::post_json(&chat_url(&upstream), &chat("o3"))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);

    upstream.set_fault(
        "o3",
        UpstreamFault::Status {
            status: 503,
            retry_after: None,
        },
    );
    let reply = support::post_json(&chat_url(&upstream), &chat("o3"))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(reply.headers.get("retry-after").is_none());
    assert_eq!(reply.json()["error"]["type"], "server_error");

    upstream.clear_fault("gpt-4o");
    let reply = support::post_json(&chat_url(&upstream), &chat("gpt-4o"))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    upstream.clear_all();
    let reply = support::post_json(&chat_url(&upstream), &chat("o3"))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn times_limited_fault_clears_itself() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_fault_times(
        "gpt-4o",
        UpstreamFault::Status {
            status: 500,
            retry_after: None,
        },
        2,
    );
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let reply = support::post_json(&chat_url(&upstream), &chat("gpt-4o"))
            .await
            .unwrap();
        statuses.push(reply.status.as_u16());
    }
    assert_eq!(statuses, [500, 500, 200, 200]);
    assert_eq!(upstream.calls_for("gpt-4o"), 4);
}

#[tokio::test]
async fn delay_fault_answers_late() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_fault("gpt-4o", UpstreamFault::Delay(Duration::from_millis(200)));
    let started = Instant::now();
    let reply = support::post_json(&chat_url(&upstream), &chat("gpt-4o"))
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(reply.json()["model"], "gpt-4o");
}

#[tokio::test]
async fn reset_fault_closes_the_connection_without_an_answer() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_fault_times("gpt-4o", UpstreamFault::Reset, 1);
    let error = support::post_json(&chat_url(&upstream), &chat("gpt-4o"))
        .await
        .unwrap_err();
    let error = error.downcast::<hyper::Error>().unwrap();
    assert!(error.is_incomplete_message(), "{error:?}");
    let reply = support::post_json(&chat_url(&upstream), &chat("gpt-4o"))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn break_stream_after_sends_some_chunks_then_fails_the_body() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_fault("gpt-4o", UpstreamFault::BreakStreamAfter(2));
    let response = support::send(
        Method::POST,
        &chat_url(&upstream),
        &[("content-type", "application/json")],
        Bytes::from(streamed_chat("gpt-4o", true).to_string()),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "the head goes out");
    let mut body = response.into_body();
    let mut received = String::new();
    let error = loop {
        match support::next_data(&mut body, Duration::from_secs(5)).await {
            Some(Ok(data)) => received.push_str(&String::from_utf8_lossy(&data)),
            Some(Err(error)) => break error,
            None => panic!("the body ended cleanly after {received:?}"),
        }
    };
    // hyper: "error reading a body from connection: unexpected EOF during
    // chunk size line".
    assert!(format!("{error:?}").contains("UnexpectedEof"), "{error:?}");
    assert_eq!(support::sse_data(&received).len(), 2, "{received}");
    assert!(!received.contains("[DONE]"));

    // Not streamed: the head and half a JSON body.
    let response = support::send(
        Method::POST,
        &chat_url(&upstream),
        &[("content-type", "application/json")],
        Bytes::from(chat("gpt-4o").to_string()),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.into_body().collect().await.is_err());
}

#[tokio::test]
async fn break_stream_after_zero_still_sends_the_head() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_fault("gpt-4o", UpstreamFault::BreakStreamAfter(0));
    let response = support::send(
        Method::POST,
        &chat_url(&upstream),
        &[("content-type", "application/json")],
        Bytes::from(streamed_chat("gpt-4o", false).to_string()),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.into_body().collect().await.is_err());
}

#[tokio::test]
async fn slow_stream_fault_spaces_the_chunks() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_stream_chunks(2);
    upstream.set_fault(
        "gpt-4o",
        UpstreamFault::SlowStream(Duration::from_millis(100)),
    );
    let started = Instant::now();
    let reply = support::post_json(&chat_url(&upstream), &streamed_chat("gpt-4o", false))
        .await
        .unwrap();
    // 2 chunks, the stop chunk and [DONE]: three pauses.
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(support::sse_data(&reply.text()).len(), 4);

    let started = Instant::now();
    support::post_json(&chat_url(&upstream), &streamed_chat("o3", false))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "other models are not slowed"
    );
}

#[tokio::test]
async fn records_paths_models_headers_and_bodies() {
    let upstream = MockUpstream::start().await.unwrap();
    support::post_json_with(
        &chat_url(&upstream),
        &[("authorization", "Bearer sk-provider"), ("x-custom", "1")],
        &chat("gpt-4o"),
    )
    .await
    .unwrap();
    support::post_json(
        &format!("{}/responses", upstream.url()),
        &json!({ "model": "o3", "input": "x" }),
    )
    .await
    .unwrap();
    support::get(&format!("{}/models", upstream.url()), &[])
        .await
        .unwrap();

    let requests = upstream.requests();
    assert_eq!(requests.len(), 2, "health checks are not recorded");
    assert_eq!(requests[0].path, "/v1/chat/completions");
    assert_eq!(requests[0].model.as_deref(), Some("gpt-4o"));
    assert_eq!(requests[0].headers["authorization"], "Bearer sk-provider");
    assert_eq!(requests[0].headers["x-custom"], "1");
    assert_eq!(requests[0].body, chat("gpt-4o"));
    assert_eq!(requests[1].path, "/v1/responses");
    assert_eq!(upstream.calls_for("gpt-4o"), 1);
    assert_eq!(upstream.calls_for("o3"), 1);
    assert_eq!(upstream.calls_for("gpt-4.1-mini"), 0);
    assert_eq!(upstream.total_calls(), 2);
    assert_eq!(upstream.health_calls(), 1);

    upstream.clear_requests();
    assert_eq!(upstream.total_calls(), 0);
    assert_eq!(upstream.health_calls(), 0);
}

#[tokio::test]
async fn models_endpoint_and_its_health_fault() {
    let upstream = MockUpstream::start().await.unwrap();
    let reply = support::get(&format!("{}/models", upstream.url()), &[])
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    assert_eq!(body["object"], "list");
    assert_eq!(
        body["data"][0],
        json!({ "id": "gpt-4o-mini", "object": "model", "created": 0, "owned_by": "mock" })
    );

    upstream.set_models(["only"]);
    let bare = format!("http://{}/models", upstream.addr());
    assert_eq!(
        support::get(&bare, &[]).await.unwrap().json()["data"][0]["id"],
        "only"
    );

    upstream.set_health_fault(Some(UpstreamFault::Status {
        status: 500,
        retry_after: None,
    }));
    let reply = support::get(&format!("{}/models", upstream.url()), &[])
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    upstream.set_health_fault(Some(UpstreamFault::Reset));
    assert!(
        support::get(&format!("{}/models", upstream.url()), &[])
            .await
            .is_err()
    );
    upstream.set_health_fault(None);
    let reply = support::get(&format!("{}/models", upstream.url()), &[])
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(upstream.health_calls(), 5);
    assert_eq!(upstream.total_calls(), 0);
}

#[tokio::test]
async fn drop_stops_the_server() {
    let upstream = MockUpstream::start().await.unwrap();
    let addr = upstream.addr();
    drop(upstream);
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
