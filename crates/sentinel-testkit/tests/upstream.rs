//! `MockUpstream`: answers as the requested model, streams incrementally,
//! injects per-model faults, continues prefills and records what it received
//! and when.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use sentinel_testkit::upstream::RetryAfter;
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

// ---- The failure matrix: errors, stream faults, prefills, outages. ----

fn responses_url(upstream: &MockUpstream) -> String {
    format!("{}/responses", upstream.url())
}

fn streamed_responses(model: &str) -> Value {
    json!({ "model": model, "input": "hi", "stream": true })
}

/// Sends `body` as JSON and returns the head with the body still open.
async fn open(url: &str, body: &Value) -> http::Response<Incoming> {
    support::send(
        Method::POST,
        url,
        &[("content-type", "application/json")],
        Bytes::from(body.to_string()),
    )
    .await
    .unwrap()
}

/// How a body read by [`read_body`] stopped.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The body ended cleanly.
    Clean,
    /// The body read failed (the connection broke mid-body).
    Failed,
    /// Nothing came for the quiet period; the body is still open.
    Quiet,
}

/// Reads `body` until it ends, fails, or sends nothing for `quiet`.
async fn read_body(body: &mut Incoming, quiet: Duration) -> (String, End) {
    let mut text = String::new();
    loop {
        match tokio::time::timeout(quiet, body.frame()).await {
            Err(_) => return (text, End::Quiet),
            Ok(None) => return (text, End::Clean),
            Ok(Some(Err(_))) => return (text, End::Failed),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    text.push_str(&String::from_utf8_lossy(&data));
                }
            }
        }
    }
}

/// The `data:` payloads of an SSE body, parsed where they are JSON
/// (anything else as a JSON string).
fn payloads(text: &str) -> Vec<Value> {
    support::sse_data(text)
        .into_iter()
        .map(|data| serde_json::from_str(&data).unwrap_or(Value::String(data)))
        .collect()
}

fn chat_piece(model: &str, index: usize, count: usize, role: bool) -> Value {
    let mut delta = json!({ "content": format!("Hello from {model} ({index}/{count}) ") });
    if role {
        delta["role"] = json!("assistant");
    }
    json!([{ "index": 0, "delta": delta, "finish_reason": null }])
}

/// The chat chunks' `choices` (or the whole payload when it has none).
fn choices(payloads: &[Value]) -> Vec<Value> {
    payloads
        .iter()
        .map(|p| p.get("choices").cloned().unwrap_or_else(|| p.clone()))
        .collect()
}

fn responses_types(payloads: &[Value]) -> Vec<String> {
    payloads
        .iter()
        .map(|p| p["type"].as_str().unwrap_or("?").to_owned())
        .collect()
}

fn error_body(message: &str, kind: Value, param: Value, code: Value) -> Value {
    json!({ "error": { "message": message, "type": kind, "param": param, "code": code } })
}

#[tokio::test]
async fn error_fault_sends_the_chosen_status_type_code_param_message_and_retry_after() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_fault(
        "gpt-4o",
        UpstreamFault::Error {
            status: 503,
            error_type: Some("server_error".into()),
            code: Some("overloaded".into()),
            param: None,
            message: "busy".into(),
            retry_after: Some(RetryAfter::Seconds(3)),
        },
    );
    let expected = error_body(
        "busy",
        json!("server_error"),
        Value::Null,
        json!("overloaded"),
    );
    let requests = [
        (chat_url(&upstream), chat("gpt-4o")),
        (chat_url(&upstream), streamed_chat("gpt-4o", true)),
        (
            responses_url(&upstream),
            json!({ "model": "gpt-4o", "input": "hi" }),
        ),
        (responses_url(&upstream), streamed_responses("gpt-4o")),
    ];
    for (url, body) in &requests {
        let reply = support::post_json(url, body).await.unwrap();
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{url} {body}"
        );
        assert_eq!(reply.headers["retry-after"], "3");
        assert_eq!(reply.headers["content-type"], "application/json");
        assert_eq!(reply.json(), expected, "{url} {body}");
    }

    // An HTTP-date goes out as it is; a string that is no header value does not.
    let date = "Wed, 21 Oct 2015 07:28:00 GMT";
    upstream.set_fault(
        "gpt-4o",
        UpstreamFault::Error {
            status: 429,
            error_type: None,
            code: None,
            param: Some("model".into()),
            message: "slow down".into(),
            retry_after: Some(RetryAfter::Date(date.into())),
        },
    );
    let reply = support::post_json(&chat_url(&upstream), &chat("gpt-4o"))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.headers["retry-after"], date);
    assert_eq!(
        reply.json(),
        error_body("slow down", Value::Null, json!("model"), Value::Null)
    );
    upstream.set_fault(
        "gpt-4o",
        UpstreamFault::Error {
            status: 429,
            error_type: None,
            code: None,
            param: None,
            message: "x".into(),
            retry_after: Some(RetryAfter::Date("bad\nvalue".into())),
        },
    );
    let reply = support::post_json(&chat_url(&upstream), &chat("gpt-4o"))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(reply.headers.get("retry-after").is_none());

    // The helper, and the health endpoint takes it too.
    upstream.set_health_fault(Some(UpstreamFault::error(
        502,
        "server_error",
        "bad_gateway",
    )));
    let reply = support::get(&format!("{}/models", upstream.url()), &[])
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        reply.json(),
        error_body(
            "mock upstream: bad_gateway",
            json!("server_error"),
            Value::Null,
            json!("bad_gateway")
        )
    );
    assert_eq!(
        upstream.calls_for("gpt-4o"),
        6,
        "faulted requests are recorded"
    );
}

#[tokio::test]
async fn retry_after_dates_are_imf_fixdates_rounded_up_to_the_second() {
    let at = |seconds: u64, nanos: u32| RetryAfter::at(UNIX_EPOCH + Duration::new(seconds, nanos));
    // RFC 9110's example, and a leap day.
    assert_eq!(
        at(784_111_777, 0),
        RetryAfter::Date("Sun, 06 Nov 1994 08:49:37 GMT".into())
    );
    assert_eq!(
        at(784_111_777, 1),
        RetryAfter::Date("Sun, 06 Nov 1994 08:49:38 GMT".into())
    );
    assert_eq!(
        at(1_709_208_000, 0),
        RetryAfter::Date("Thu, 29 Feb 2024 12:00:00 GMT".into())
    );
    assert_eq!(
        at(0, 0),
        RetryAfter::Date("Thu, 01 Jan 1970 00:00:00 GMT".into())
    );
    assert_eq!(
        at(951_868_799, 0),
        RetryAfter::Date("Tue, 29 Feb 2000 23:59:59 GMT".into())
    );
    let now = SystemTime::now();
    let after = RetryAfter::after(Duration::from_secs(30));
    let candidates = [
        RetryAfter::at(now + Duration::from_secs(30)),
        RetryAfter::at(now + Duration::from_secs(31)),
    ];
    assert!(candidates.contains(&after), "{after:?} {candidates:?}");
}

#[tokio::test]
async fn rate_limited_with_and_without_retry_after() {
    let upstream = MockUpstream::start().await.unwrap();
    let expected = error_body(
        MockUpstream::RATE_LIMIT_MESSAGE,
        json!("requests"),
        Value::Null,
        json!("rate_limit_exceeded"),
    );
    upstream.set_fault(
        "gpt-4o",
        UpstreamFault::rate_limited(Some(RetryAfter::Seconds(20))),
    );
    upstream.set_fault("o3", UpstreamFault::rate_limited(None));
    let reply = support::post_json(&chat_url(&upstream), &streamed_chat("gpt-4o", false))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.headers["retry-after"], "20");
    assert_eq!(reply.json(), expected);

    let reply = support::post_json(&chat_url(&upstream), &chat("o3"))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(reply.headers.get("retry-after").is_none());
    assert_eq!(reply.json(), expected);

    let date = RetryAfter::at(UNIX_EPOCH + Duration::from_secs(1_709_208_000));
    upstream.set_fault("o3", UpstreamFault::rate_limited(Some(date)));
    let reply = support::post_json(&responses_url(&upstream), &streamed_responses("o3"))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        reply.headers["retry-after"],
        "Thu, 29 Feb 2024 12:00:00 GMT"
    );
}

#[tokio::test]
async fn context_length_and_content_filter_errors_look_like_openai_and_azure() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_fault("gpt-4o", UpstreamFault::context_length_exceeded());
    upstream.set_fault("o3", UpstreamFault::content_filter());
    for body in [chat("gpt-4o"), streamed_chat("gpt-4o", false)] {
        let reply = support::post_json(&chat_url(&upstream), &body)
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert!(reply.headers.get("retry-after").is_none());
        assert_eq!(
            reply.json(),
            json!({ "error": {
                "message": "This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens. Please reduce the length of the messages.",
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded"
            } })
        );
    }
    let reply = support::post_json(&responses_url(&upstream), &streamed_responses("o3"))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let body = reply.json();
    assert_eq!(
        body,
        error_body(
            MockUpstream::CONTENT_FILTER_MESSAGE,
            Value::Null,
            json!("prompt"),
            json!("content_filter")
        )
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("The response was filtered")
    );
}

#[tokio::test]
async fn down_answers_503_until_up_and_each_request_time_is_recorded() {
    let upstream = MockUpstream::start().await.unwrap();
    let started = tokio::time::Instant::now();
    upstream.down("gpt-4o");
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let reply = support::post_json(&chat_url(&upstream), &chat("gpt-4o"))
            .await
            .unwrap();
        statuses.push(reply.status.as_u16());
        assert_eq!(reply.json()["error"]["type"], "server_error");
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let other = support::post_json(&chat_url(&upstream), &chat("o3"))
        .await
        .unwrap();
    assert_eq!(other.status, StatusCode::OK, "other models stay up");
    upstream.up("gpt-4o");
    let reply = support::post_json(&chat_url(&upstream), &chat("gpt-4o"))
        .await
        .unwrap();
    statuses.push(reply.status.as_u16());
    assert_eq!(statuses, [503, 503, 503, 200]);

    let times = upstream.request_times("gpt-4o");
    assert_eq!(times.len(), 4);
    assert!(times[0] >= started);
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(60),
            "{:?}",
            pair[1] - pair[0]
        );
    }
    let recorded = upstream.requests();
    assert_eq!(recorded.len(), 5);
    assert_eq!(recorded[3].model.as_deref(), Some("o3"));
    assert!(recorded[3].at >= recorded[2].at && recorded[3].at <= recorded[4].at);
    assert_eq!(upstream.request_times("o3"), [recorded[3].at]);
}

#[tokio::test]
async fn first_token_delay_sends_the_head_then_waits_before_the_first_piece() {
    let upstream = MockUpstream::start().await.unwrap();
    let wait = Duration::from_millis(700);
    upstream.set_fault("gpt-4o", UpstreamFault::FirstTokenDelay(wait));

    // Chat: the head at once, then nothing until the first piece.
    let started = Instant::now();
    let response = open(&chat_url(&upstream), &streamed_chat("gpt-4o", false)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let head_after = started.elapsed();
    assert!(
        head_after < Duration::from_millis(500),
        "head after {head_after:?}"
    );
    let mut body = response.into_body();
    let first = support::next_data(&mut body, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() >= wait,
        "first piece after {:?}",
        started.elapsed()
    );
    let first = payloads(&String::from_utf8_lossy(&first));
    assert_eq!(choices(&first), [chat_piece("gpt-4o", 1, 3, true)]);
    let (rest, end) = read_body(&mut body, Duration::from_secs(5)).await;
    assert_eq!(end, End::Clean);
    assert_eq!(payloads(&rest).len(), 2 + 1 + 1, "{rest}");
    assert!(rest.ends_with("data: [DONE]\n\n"));

    // Responses: `response.created` at once, then the wait.
    let started = Instant::now();
    let response = open(&responses_url(&upstream), &streamed_responses("gpt-4o")).await;
    let mut body = response.into_body();
    let created = support::next_data(&mut body, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(
        responses_types(&payloads(&String::from_utf8_lossy(&created))),
        ["response.created"]
    );
    let delta = support::next_data(&mut body, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    assert!(started.elapsed() >= wait);
    let delta = payloads(&String::from_utf8_lossy(&delta));
    assert_eq!(responses_types(&delta), ["response.output_text.delta"]);
    assert_eq!(delta[0]["delta"], "Hello from gpt-4o (1/3) ");
    let (rest, end) = read_body(&mut body, Duration::from_secs(5)).await;
    assert_eq!(end, End::Clean);
    assert_eq!(
        responses_types(&payloads(&rest)),
        [
            "response.output_text.delta",
            "response.output_text.delta",
            "response.completed"
        ]
    );

    // Not streamed: the whole answer is late.
    let started = Instant::now();
    let reply = support::post_json(&chat_url(&upstream), &chat("gpt-4o"))
        .await
        .unwrap();
    assert!(started.elapsed() >= wait);
    assert_eq!(
        reply.json()["choices"][0]["message"]["content"],
        "Hello from gpt-4o"
    );
}

#[tokio::test]
async fn stall_after_sends_pieces_then_nothing_until_the_client_goes_away() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_fault("gpt-4o", UpstreamFault::StallAfter(1));
    assert_eq!(upstream.open_streams(), 0);

    let response = open(&chat_url(&upstream), &streamed_chat("gpt-4o", true)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let (received, end) = read_body(&mut body, Duration::from_millis(400)).await;
    assert_eq!(end, End::Quiet, "the body stays open");
    assert_eq!(
        choices(&payloads(&received)),
        [chat_piece("gpt-4o", 1, 3, true)]
    );
    assert_eq!(upstream.open_streams(), 1);

    // The client goes away: the mock lets go of the stalled body.
    drop(body);
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.open_streams() > 0 {
        assert!(
            Instant::now() < deadline,
            "the stalled body was never dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Responses, after no piece: only `response.created`.
    upstream.set_fault("o3", UpstreamFault::StallAfter(0));
    let response = open(&responses_url(&upstream), &streamed_responses("o3")).await;
    let mut body = response.into_body();
    let (received, end) = read_body(&mut body, Duration::from_millis(300)).await;
    assert_eq!(end, End::Quiet);
    assert_eq!(responses_types(&payloads(&received)), ["response.created"]);

    // Not streamed: the head and half the JSON, then nothing.
    let response = open(&chat_url(&upstream), &chat("gpt-4o")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let (received, end) = read_body(&mut body, Duration::from_millis(300)).await;
    assert_eq!(end, End::Quiet);
    assert!(received.starts_with("{\"choices\":[{"), "{received}");
    assert!(serde_json::from_str::<Value>(&received).is_err());
    assert_eq!(upstream.open_streams(), 2);
}

#[tokio::test]
async fn malformed_event_comes_after_n_pieces_then_the_stream_goes_on() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_fault("gpt-4o", UpstreamFault::MalformedEvent(1));
    let response = open(&chat_url(&upstream), &streamed_chat("gpt-4o", false)).await;
    let mut body = response.into_body();
    let (text, end) = read_body(&mut body, Duration::from_secs(5)).await;
    assert_eq!(end, End::Clean);
    assert!(text.contains("\n\ndata: {not json\n\ndata: {"), "{text}");
    let events = payloads(&text);
    assert_eq!(
        choices(&events),
        [
            chat_piece("gpt-4o", 1, 3, true),
            json!("{not json"),
            chat_piece("gpt-4o", 2, 3, false),
            chat_piece("gpt-4o", 3, 3, false),
            json!([{ "index": 0, "delta": {}, "finish_reason": "stop" }]),
            json!("[DONE]"),
        ]
    );

    // Beyond the last piece: just before the end events; on /responses too.
    upstream.set_fault("o3", UpstreamFault::MalformedEvent(9));
    let reply = support::post_json(&responses_url(&upstream), &streamed_responses("o3"))
        .await
        .unwrap();
    let events = payloads(&reply.text());
    let mut types = responses_types(&events);
    types[4] = events[4].as_str().unwrap().to_owned();
    assert_eq!(
        types,
        [
            "response.created",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "{not json",
            "response.completed"
        ]
    );

    // Not streamed: a 200 whose JSON body is not JSON.
    let reply = support::post_json(&chat_url(&upstream), &chat("gpt-4o"))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["content-type"], "application/json");
    assert_eq!(reply.text(), "{not json");
}

#[tokio::test]
async fn no_done_ends_the_stream_cleanly_without_finish_reason_usage_or_done() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_fault("gpt-4o", UpstreamFault::NoDone(2));
    let response = open(&chat_url(&upstream), &streamed_chat("gpt-4o", true)).await;
    let mut body = response.into_body();
    let (text, end) = read_body(&mut body, Duration::from_secs(5)).await;
    assert_eq!(end, End::Clean, "the body ends cleanly");
    assert_eq!(
        choices(&payloads(&text)),
        [
            chat_piece("gpt-4o", 1, 3, true),
            chat_piece("gpt-4o", 2, 3, false)
        ]
    );
    assert!(
        !text.contains("[DONE]") && !text.contains("usage"),
        "{text}"
    );

    let reply = support::post_json(&responses_url(&upstream), &streamed_responses("gpt-4o"))
        .await
        .unwrap();
    assert_eq!(
        responses_types(&payloads(&reply.text())),
        [
            "response.created",
            "response.output_text.delta",
            "response.output_text.delta"
        ]
    );

    // Not streamed: no effect.
    let reply = support::post_json(&chat_url(&upstream), &chat("gpt-4o"))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn error_event_ends_the_stream_with_an_in_band_error() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_fault("gpt-4o", UpstreamFault::ErrorEvent(1));
    let server_error = error_body(
        "The server had an error while processing your request. Sorry about that!",
        json!("server_error"),
        Value::Null,
        Value::Null,
    );
    let response = open(&chat_url(&upstream), &streamed_chat("gpt-4o", true)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let (text, end) = read_body(&mut body, Duration::from_secs(5)).await;
    assert_eq!(end, End::Clean);
    let events = payloads(&text);
    assert_eq!(events.len(), 2, "{text}");
    assert_eq!(events[0]["choices"], chat_piece("gpt-4o", 1, 3, true));
    assert_eq!(events[1], server_error);
    assert!(!text.contains("[DONE]"));

    let reply = support::post_json(&responses_url(&upstream), &streamed_responses("gpt-4o"))
        .await
        .unwrap();
    let text = reply.text();
    let events = payloads(&text);
    assert_eq!(
        responses_types(&events),
        ["response.created", "response.output_text.delta", "error"]
    );
    assert_eq!(
        events[2],
        json!({
            "type": "error",
            "code": "server_error",
            "message": MockUpstream::SERVER_ERROR_MESSAGE,
            "param": null
        })
    );
    assert!(text.contains("\n\nevent: error\ndata: "), "{text}");

    // Not streamed: a 500 with the same error.
    let reply = support::post_json(&chat_url(&upstream), &chat("gpt-4o"))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.json(), server_error);
}

fn with_prefill(model: &str, prefill: Value, stream: bool) -> Value {
    let mut body = json!({
        "model": model,
        "messages": [
            { "role": "user", "content": "hi" },
            { "role": "assistant", "content": prefill }
        ]
    });
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({ "include_usage": true });
    }
    body
}

#[tokio::test]
async fn reject_prefill_refuses_only_a_final_assistant_message() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_fault("gpt-4o", UpstreamFault::RejectPrefill);
    let refused = error_body(
        "assistant prefill is not supported",
        json!("invalid_request_error"),
        json!("messages"),
        json!("invalid_request_error"),
    );
    let prefill = json!("Hello from o3 (1/3) ");
    for body in [
        with_prefill("gpt-4o", prefill.clone(), false),
        with_prefill("gpt-4o", prefill.clone(), true),
    ] {
        let reply = support::post_json(&chat_url(&upstream), &body)
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert_eq!(reply.json(), refused);
    }
    let responses_prefill = json!({
        "model": "gpt-4o",
        "input": [
            { "role": "user", "content": "hi" },
            { "role": "assistant", "content": [{ "type": "output_text", "text": "Hello" }] }
        ]
    });
    let reply = support::post_json(&responses_url(&upstream), &responses_prefill)
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);

    // Without a final assistant message: answered normally.
    let mut ends_with_user = with_prefill("gpt-4o", prefill.clone(), false);
    ends_with_user["messages"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "role": "user", "content": "go on" }));
    for (url, body) in [
        (chat_url(&upstream), ends_with_user),
        (chat_url(&upstream), streamed_chat("gpt-4o", false)),
        (responses_url(&upstream), streamed_responses("gpt-4o")),
    ] {
        let reply = support::post_json(&url, &body).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{body}");
    }

    // Counted per request, refused or not.
    upstream.set_fault_times("gpt-4o", UpstreamFault::RejectPrefill, 1);
    let reply = support::post_json(&chat_url(&upstream), &chat("gpt-4o"))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let reply = support::post_json(
        &chat_url(&upstream),
        &with_prefill("gpt-4o", prefill, false),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "the fault was used up");
}

#[tokio::test]
async fn a_prefill_is_continued_with_the_remaining_pieces_and_the_usual_usage() {
    let upstream = MockUpstream::start().await.unwrap();
    // Streamed chat: the prefill holds piece 1 (of another model).
    let body = with_prefill("gpt-4.1", json!("Hello from gpt-4o (1/3) "), true);
    let reply = support::post_json(&chat_url(&upstream), &body)
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let events = payloads(&reply.text());
    assert_eq!(
        choices(&events),
        [
            chat_piece("gpt-4.1", 2, 3, true),
            chat_piece("gpt-4.1", 3, 3, false),
            json!([{ "index": 0, "delta": {}, "finish_reason": "stop" }]),
            json!([]),
            json!("[DONE]"),
        ]
    );
    assert_eq!(
        events[3]["usage"],
        json!({ "prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15 })
    );
    assert_eq!(
        (MockUpstream::PROMPT_TOKENS, MockUpstream::COMPLETION_TOKENS),
        (10, 5)
    );

    // Not streamed, the prefill as content parts holding two pieces.
    let parts = json!([
        { "type": "text", "text": "Hello from o3 (1/3) " },
        { "type": "text", "text": "Hello from o3 (2/3) " }
    ]);
    let reply = support::post_json(&chat_url(&upstream), &with_prefill("gpt-4o", parts, false))
        .await
        .unwrap();
    let answer = reply.json();
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "Hello from gpt-4o (3/3) "
    );
    assert_eq!(answer["usage"]["total_tokens"], 15);

    // Everything said already: no content piece, just the end.
    let all = json!("Hello from o3 (1/3) Hello from o3 (2/3) Hello from o3 (3/3) ");
    let reply = support::post_json(&chat_url(&upstream), &with_prefill("gpt-4o", all, true))
        .await
        .unwrap();
    let events = payloads(&reply.text());
    assert_eq!(events.len(), 3, "stop, usage, [DONE]");
    assert_eq!(events[0]["choices"][0]["finish_reason"], "stop");

    // A prefill with no piece in it: all of them.
    let reply = support::post_json(
        &chat_url(&upstream),
        &with_prefill("gpt-4o", json!("Sure, "), false),
    )
    .await
    .unwrap();
    assert_eq!(
        reply.json()["choices"][0]["message"]["content"],
        "Hello from gpt-4o (1/3) Hello from gpt-4o (2/3) Hello from gpt-4o (3/3) "
    );

    // Responses, streamed: the input array's last item is the prefill.
    let body = json!({
        "model": "o3",
        "stream": true,
        "input": [
            { "role": "user", "content": "hi" },
            { "role": "assistant", "content": [{ "type": "output_text", "text": "Hello from gpt-4o (1/3) " }] }
        ]
    });
    let reply = support::post_json(&responses_url(&upstream), &body)
        .await
        .unwrap();
    let events = payloads(&reply.text());
    assert_eq!(
        responses_types(&events),
        [
            "response.created",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.completed"
        ]
    );
    assert_eq!(events[1]["delta"], "Hello from o3 (2/3) ");
    assert_eq!(events[2]["delta"], "Hello from o3 (3/3) ");
    let done = &events[3]["response"];
    assert_eq!(
        done["output"][0]["content"][0]["text"],
        "Hello from o3 (2/3) Hello from o3 (3/3) "
    );
    assert_eq!(
        done["usage"],
        json!({ "input_tokens": 10, "output_tokens": 5, "total_tokens": 15 })
    );
}

#[tokio::test]
async fn stop_refuses_connections_then_resume_serves_again_with_the_same_state() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_fault("o3", UpstreamFault::rate_limited(None));
    support::post_json(&chat_url(&upstream), &chat("gpt-4o"))
        .await
        .unwrap();

    // A stream left open is closed by the stop.
    upstream.set_fault("gpt-4o", UpstreamFault::StallAfter(1));
    let response = open(&chat_url(&upstream), &streamed_chat("gpt-4o", false)).await;
    let mut body = response.into_body();
    upstream.stop().await;
    upstream.stop().await; // stopping twice is harmless
    let (_, end) = read_body(&mut body, Duration::from_secs(5)).await;
    assert_ne!(end, End::Quiet, "the open stream was closed");
    assert!(
        support::post_json(&chat_url(&upstream), &chat("gpt-4o"))
            .await
            .is_err(),
        "connections are refused"
    );

    upstream.resume().await.unwrap();
    upstream.resume().await.unwrap(); // resuming twice is harmless
    upstream.clear_fault("gpt-4o");
    let reply = support::post_json(&chat_url(&upstream), &chat("gpt-4o"))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let reply = support::post_json(&chat_url(&upstream), &chat("o3"))
        .await
        .unwrap();
    assert_eq!(
        reply.status,
        StatusCode::TOO_MANY_REQUESTS,
        "faults are kept"
    );
    assert_eq!(upstream.calls_for("gpt-4o"), 3, "records are kept");
}
