//! A streamed chat answer that breaks after its head is continued on the
//! next model of the tier, over real sockets: the client gets one answer
//! (the first model's part, then the continuation's, same `id`, one
//! `finish_reason`, one usage chunk, a comment naming the continuing
//! model); a refused or failed continuation leaves the client the first
//! failure's error event; a request whose retry is spent, a Responses API
//! stream, or continuation turned off end with the error event.
//!
//! The tiers have a cheap model `a` (cost 1), which carries the fault, and a
//! dear one `b` (cost 10): a test sends streams until one starts on `a`
//! (about 10 in 11 do). Models are named after the test: the metrics
//! recorder is shared by the tests of this binary.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use sentinel_testkit::{MockUpstream, MockZion, RecordedRequest, UpstreamFault};
use serde_json::{Value, json};
use support::{Env, Proxy, Reply, chat_body, metric};

fn models(test: &str) -> (String, String) {
    (format!("a-{test}"), format!("b-{test}"))
}

fn config(test: &str) -> Value {
    let (a, b) = models(test);
    let priced = |model: &str, cost: i64| {
        json!({ "provider": "openai", "model": model, "relative_cost": cost,
                "pricing": { "input_per_mtok_usd": 1.0, "output_per_mtok_usd": 2.0 } })
    };
    let tier = json!({ "models": [priced(&a, 1), priced(&b, 10)] });
    json!({ "version": test, "tiers": { "simple": tier, "moderate": tier, "complex": tier } })
}

/// A proxy and mocks where `a` carries `fault`; breakers never open (the
/// tests count calls), timeouts are 300 ms.
async fn setup(
    test: &str,
    fault: UpstreamFault,
    extra: &[(&str, &str)],
) -> (MockUpstream, MockZion, Proxy) {
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    zion.set_config(config(test));
    upstream.set_fault(&models(test).0, fault);
    let mut env = Env::new(&upstream)
        .zion(&zion)
        .set("SENTINEL_FAILURE_THRESHOLD", "100")
        .set("SENTINEL_FIRST_BYTE_TIMEOUT_MS", "300")
        .set("SENTINEL_FIRST_TOKEN_TIMEOUT_MS", "300")
        .set("SENTINEL_STREAM_IDLE_TIMEOUT_MS", "300");
    for (name, value) in extra {
        env = env.set(name, value);
    }
    let proxy = Proxy::start(&env).await;
    (upstream, zion, proxy)
}

/// Streams `body` until one is first sent to `first` (the tier's choice,
/// not a retry) and answered under `served` (the head names it); returns
/// it with the requests the provider saw for it.
async fn stream_on(
    proxy: &Proxy,
    upstream: &MockUpstream,
    path: &str,
    body: &Value,
    first: &str,
    served: &str,
) -> (Reply, Vec<RecordedRequest>) {
    for _ in 0..30 {
        let before = upstream.requests().len();
        let reply = Reply::read(proxy.post_json(path, body).send().await.unwrap()).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let seen = upstream.requests().split_off(before);
        if seen.first().and_then(|r| r.model.as_deref()) == Some(first)
            && reply.model() == Some(served)
        {
            return (reply, seen);
        }
    }
    panic!("no stream went first to {first} and was served by {served} in 30 tries");
}

/// A streamed chat completion (asking for usage when `include_usage`) that
/// starts on `model` and keeps its head.
async fn chat_stream_on(
    proxy: &Proxy,
    upstream: &MockUpstream,
    include_usage: bool,
    model: &str,
) -> (Reply, Vec<RecordedRequest>) {
    let body = stream_body(include_usage);
    started_on(proxy, upstream, "/v1/chat/completions", &body, model).await
}

/// [`stream_on`] for a stream that starts on `model` and keeps its head.
async fn started_on(
    proxy: &Proxy,
    upstream: &MockUpstream,
    path: &str,
    body: &Value,
    model: &str,
) -> (Reply, Vec<RecordedRequest>) {
    stream_on(proxy, upstream, path, body, model, model).await
}

fn stream_body(include_usage: bool) -> Value {
    let mut body = chat_body(Some("simple"));
    body["stream"] = json!(true);
    if include_usage {
        body["stream_options"] = json!({ "include_usage": true });
    }
    body
}

/// The JSON chunks of an SSE reply (not `[DONE]`).
fn chunks(reply: &Reply) -> Vec<Value> {
    reply
        .text()
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|p| *p != "[DONE]")
        .map(|p| serde_json::from_str(p).unwrap())
        .collect()
}

fn content(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

fn piece(model: &str, i: usize) -> String {
    format!("Hello from {model} ({i}/3) ")
}

fn continuations(proxy_metrics: &str, model: &str, outcome: &str) -> f64 {
    metric(
        proxy_metrics,
        "sentinel_stream_continuations_total",
        &[("model", model), ("outcome", outcome)],
    )
    .unwrap_or(0.0)
}

/// What every broken-then-continued stream must look like to the client.
fn assert_spliced(reply: &Reply, a: &str, b: &str) {
    let text = reply.text();
    assert!(!text.contains("\"error\""), "{text}");
    assert!(
        text.ends_with(&format!(
            ": x-sentinel-continued-model: {b}\n\ndata: [DONE]\n\n"
        )),
        "{text}"
    );
    let chunks = chunks(reply);
    assert_eq!(
        content(&chunks),
        format!("{}{}{}", piece(a, 1), piece(b, 2), piece(b, 3)),
        "one answer: a's first piece, then b's rest"
    );
    let id = &chunks[0]["id"];
    assert!(chunks.iter().all(|c| &c["id"] == id), "one id: {text}");
    let finishes = chunks
        .iter()
        .filter(|c| !c["choices"][0]["finish_reason"].is_null())
        .count();
    assert_eq!(finishes, 1, "one finish_reason: {text}");
    let roles = chunks
        .iter()
        .filter(|c| !c["choices"][0]["delta"]["role"].is_null())
        .count();
    assert_eq!(roles, 1, "one role announcement: {text}");
}

/// `b` was asked to continue: the client's messages, then a's first piece
/// as the final assistant message, with the provider's key.
fn assert_prefilled(seen: &[RecordedRequest], b: &str, a: &str) {
    let asked: Vec<_> = seen
        .iter()
        .filter(|r| r.model.as_deref() == Some(b))
        .collect();
    assert_eq!(asked.len(), 1);
    let messages = asked[0].body["messages"].as_array().unwrap();
    assert_eq!(messages[0]["role"], "user");
    assert_eq!(
        messages.last().unwrap(),
        &json!({ "role": "assistant", "content": piece(a, 1) })
    );
    assert!(
        asked[0].headers.get("authorization").is_some(),
        "the provider's key"
    );
}

async fn a_broken_stream_is_continued(test: &str, fault: UpstreamFault) {
    let (a, b) = models(test);
    let (upstream, _zion, proxy) = setup(test, fault, &[]).await;
    let (reply, seen) = chat_stream_on(&proxy, &upstream, false, &a).await;
    assert_spliced(&reply, &a, &b);
    assert_prefilled(&seen, &b, &a);
    let metrics = proxy.metrics().await;
    assert_eq!(continuations(&metrics, &b, "continued"), 1.0);
    assert_eq!(
        metric(
            &metrics,
            "sentinel_model_selections_total",
            &[("model", b.as_str()), ("reason", "continuation")]
        ),
        Some(1.0)
    );
    // The tokens are b's alone: the broken attempt reported none.
    let tokens =
        |model: &str| metric(&metrics, "sentinel_tokens_total", &[("model", model)]).unwrap_or(0.0);
    assert_eq!(tokens(&a), 0.0);
    let per_answer = (MockUpstream::PROMPT_TOKENS + MockUpstream::COMPLETION_TOKENS) as f64;
    let b_answers = upstream.calls_for(&b) as f64;
    assert_eq!(tokens(&b), b_answers * per_answer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_after_its_first_token_is_continued_on_the_next_model() {
    a_broken_stream_is_continued("cut", UpstreamFault::BreakStreamAfter(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_inside_an_event_is_continued_without_the_partial_event() {
    a_broken_stream_is_continued("mid-event", UpstreamFault::BreakMidEvent(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_stalls_mid_way_is_continued_on_the_next_model() {
    a_broken_stream_is_continued("stall", UpstreamFault::StallAfter(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_ends_without_done_is_continued_on_the_next_model() {
    a_broken_stream_is_continued("no-done", UpstreamFault::NoDone(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continued_stream_still_counts_against_the_model_that_broke() {
    let test = "counted";
    let (a, b) = models(test);
    let (upstream, _zion, proxy) = setup(
        test,
        UpstreamFault::BreakStreamAfter(1),
        &[("SENTINEL_FAILURE_THRESHOLD", "1")],
    )
    .await;
    let (reply, _) = chat_stream_on(&proxy, &upstream, false, &a).await;
    assert_spliced(&reply, &a, &b);
    let opened = metric(
        &proxy.metrics().await,
        "sentinel_breaker_transitions_total",
        &[("name", &format!("openai/{a}")), ("to", "open")],
    );
    assert_eq!(opened, Some(1.0), "a is out after its one failure");
    let calls = upstream.calls_for(&a);
    for _ in 0..5 {
        let reply = Reply::read(
            proxy
                .post_json("/v1/chat/completions", &stream_body(false))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(reply.model(), Some(b.as_str()));
    }
    assert_eq!(upstream.calls_for(&a), calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_asked_for_usage_gets_one_usage_chunk() {
    let test = "usage";
    let (a, b) = models(test);
    let (upstream, _zion, proxy) = setup(test, UpstreamFault::BreakStreamAfter(1), &[]).await;
    let (reply, _) = chat_stream_on(&proxy, &upstream, true, &a).await;
    assert_spliced(&reply, &a, &b);
    let usage: Vec<_> = chunks(&reply)
        .into_iter()
        .filter(|c| c["usage"].is_object())
        .collect();
    assert_eq!(usage.len(), 1, "{}", reply.text());
    assert_eq!(
        usage[0]["usage"]["prompt_tokens"],
        MockUpstream::PROMPT_TOKENS,
        "the continuation's usage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_continuation_leaves_the_client_the_first_failures_error() {
    let test = "refused";
    let (a, b) = models(test);
    let (upstream, _zion, proxy) = setup(test, UpstreamFault::BreakStreamAfter(1), &[]).await;
    upstream.set_fault(&b, UpstreamFault::RejectPrefill);
    let (reply, seen) = chat_stream_on(&proxy, &upstream, false, &a).await;
    let text = reply.text();
    let chunks = chunks(&reply);
    assert_eq!(content(&chunks), piece(&a, 1));
    let error = &chunks.last().unwrap()["error"];
    assert_eq!(error["code"], "upstream_failed", "{text}");
    assert!(
        !text.contains(MockUpstream::PREFILL_MESSAGE),
        "never the fallback's error: {text}"
    );
    assert!(!text.contains("[DONE]"));
    let asked = seen
        .iter()
        .filter(|r| r.model.as_deref() == Some(b.as_str()));
    assert_eq!(asked.count(), 1, "b was asked once");
    let metrics = proxy.metrics().await;
    assert_eq!(continuations(&metrics, &b, "refused"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_that_fails_before_its_first_token_leaves_the_first_error() {
    let test = "fallback-fails";
    let (a, b) = models(test);
    let (upstream, _zion, proxy) = setup(test, UpstreamFault::StallAfter(1), &[]).await;
    upstream.set_fault(&b, UpstreamFault::FirstTokenDelay(Duration::from_secs(5)));
    let (reply, _) = chat_stream_on(&proxy, &upstream, false, &a).await;
    let chunks = chunks(&reply);
    assert_eq!(content(&chunks), piece(&a, 1));
    // The first failure was a stall: Sentinel's own timeout.
    assert_eq!(chunks.last().unwrap()["error"]["code"], "upstream_timeout");
    let metrics = proxy.metrics().await;
    assert_eq!(continuations(&metrics, &b, "failed"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_that_breaks_too_ends_with_an_error_never_as_complete() {
    let test = "both-break";
    let (a, b) = models(test);
    let (upstream, _zion, proxy) = setup(test, UpstreamFault::BreakStreamAfter(1), &[]).await;
    upstream.set_fault(&b, UpstreamFault::BreakStreamAfter(1));
    let (reply, _) = chat_stream_on(&proxy, &upstream, false, &a).await;
    let text = reply.text();
    let chunks = chunks(&reply);
    assert_eq!(
        content(&chunks),
        format!("{}{}", piece(&a, 1), piece(&b, 2))
    );
    assert_eq!(
        chunks.last().unwrap()["error"]["code"],
        "upstream_failed",
        "{text}"
    );
    assert!(!text.contains("[DONE]"), "{text}");
    let comment = format!(": x-sentinel-continued-model: {b}\n\ndata: {{\"error\"");
    assert!(
        text.contains(&comment),
        "the comment, then the error event: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_continuation_off_a_broken_stream_ends_with_the_error_event() {
    let test = "off";
    let (a, b) = models(test);
    let (upstream, _zion, proxy) = setup(
        test,
        UpstreamFault::BreakStreamAfter(1),
        &[("SENTINEL_STREAM_CONTINUATION", "false")],
    )
    .await;
    let (reply, seen) = chat_stream_on(&proxy, &upstream, false, &a).await;
    let chunks = chunks(&reply);
    assert_eq!(content(&chunks), piece(&a, 1));
    assert_eq!(chunks.last().unwrap()["error"]["code"], "upstream_failed");
    assert_eq!(seen.len(), 1, "{b} was never asked to continue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_responses_stream_is_not_continued() {
    let test = "responses";
    let (a, b) = models(test);
    let (upstream, _zion, proxy) = setup(test, UpstreamFault::BreakStreamAfter(1), &[]).await;
    let body = json!({ "tier": "simple", "input": "hi", "stream": true });
    let (reply, seen) = started_on(&proxy, &upstream, "/v1/responses", &body, &a).await;
    let text = reply.text();
    assert!(text.contains("event: error"), "{text}");
    assert!(!text.contains("response.completed"), "{text}");
    assert_eq!(seen.len(), 1, "{b} was never asked to continue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_retry_is_spent_is_not_continued() {
    // `a` fails before its head (a 500), the retry goes to `b`, and `b`
    // breaks: the one retry is spent, so the error event ends the stream.
    let test = "spent";
    let (a, b) = models(test);
    let (upstream, _zion, proxy) = setup(
        test,
        UpstreamFault::Status {
            status: 500,
            retry_after: None,
        },
        &[],
    )
    .await;
    upstream.set_fault(&b, UpstreamFault::BreakStreamAfter(1));
    let (reply, seen) = stream_on(
        &proxy,
        &upstream,
        "/v1/chat/completions",
        &stream_body(false),
        &a,
        &b,
    )
    .await;
    let chunks = chunks(&reply);
    assert_eq!(content(&chunks), piece(&b, 1));
    assert_eq!(chunks.last().unwrap()["error"]["code"], "upstream_failed");
    // `a` failed before its head, `b` took the retry and broke: no third call.
    let asked: Vec<_> = seen.iter().map(|r| r.model.clone().unwrap()).collect();
    assert_eq!(asked, [a, b]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_with_one_model_ends_with_the_error_event() {
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    let model = "only-continuation";
    let tier = json!({ "models": [{ "provider": "openai", "model": model, "relative_cost": 1 }] });
    zion.set_config(
        json!({ "version": "one", "tiers": { "simple": tier, "moderate": tier, "complex": tier } }),
    );
    upstream.set_fault(model, UpstreamFault::BreakStreamAfter(1));
    let proxy = Proxy::start(&Env::new(&upstream).zion(&zion)).await;
    let (reply, seen) = started_on(
        &proxy,
        &upstream,
        "/v1/chat/completions",
        &stream_body(false),
        model,
    )
    .await;
    let chunks = chunks(&reply);
    assert_eq!(chunks.last().unwrap()["error"]["code"], "upstream_failed");
    assert_eq!(seen.len(), 1);
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "sentinel_stream_continuations_total",
            &[("tier", "simple"), ("outcome", "unavailable")]
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_sdk_reads_a_continued_stream_as_one_clean_answer() {
    let test = "sdk";
    let (a, b) = models(test);
    let (_upstream, _zion, proxy) = setup(test, UpstreamFault::BreakStreamAfter(1), &[]).await;
    let client = support::openai_sdk(&proxy, "unused");
    let request = support::sdk_request("simple");
    for _ in 0..30 {
        let mut stream = client.chat().create_stream(request.clone()).await.unwrap();
        let (mut text, mut ids, mut finishes) = (String::new(), Vec::new(), 0);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.expect("no stream error: the answer was continued");
            ids.push(chunk.id.clone());
            if let Some(choice) = chunk.choices.first() {
                text.push_str(choice.delta.content.as_deref().unwrap_or(""));
                finishes += usize::from(choice.finish_reason.is_some());
            }
        }
        assert_eq!(finishes, 1);
        ids.dedup();
        assert_eq!(ids.len(), 1, "one id");
        if text.starts_with(&piece(&a, 1)) {
            assert_eq!(
                text,
                format!("{}{}{}", piece(&a, 1), piece(&b, 2), piece(&b, 3))
            );
            return;
        }
    }
    panic!("no stream started on {a} in 30 tries");
}
