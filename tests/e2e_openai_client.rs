//! End to end with a stock OpenAI SDK (async-openai), used unchanged: only
//! its base URL points at the proxy. `model = "moderate"` routes by tier
//! (built-in tiers: gpt-4o), streams end cleanly, the tiers list as models,
//! Sentinel's errors reach the SDK as API errors, and a stream that breaks
//! mid-way surfaces as an error, not a clean end.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::CreateChatCompletionRequest;
use futures_util::StreamExt;
use sentinel_testkit::{MockUpstream, UpstreamFault};
use support::{Env, Proxy, UPSTREAM_KEY};

const CLIENT_KEY: &str = "sk-e2e-client-key";

fn sdk(proxy: &Proxy, key: &str) -> Client<OpenAIConfig> {
    support::openai_sdk(proxy, key)
}

fn request(model: &str) -> CreateChatCompletionRequest {
    support::sdk_request(model)
}

/// The proxy with built-in tiers, guarded by [`CLIENT_KEY`].
async fn proxy(upstream: &MockUpstream) -> Proxy {
    Proxy::start(&Env::new(upstream).set("SENTINEL_API_KEYS", CLIENT_KEY)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_completion_with_a_tier_as_model_is_served_by_the_tiers_model() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = proxy(&upstream).await;
    let client = sdk(&proxy, CLIENT_KEY);

    let response = client.chat().create(request("moderate")).await.unwrap();
    assert_eq!(response.model, "gpt-4o");
    assert_eq!(
        response.choices[0].message.content.as_deref(),
        Some("Hello from gpt-4o")
    );
    let usage = response.usage.unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (10, 5));

    let sent = &upstream.requests()[0];
    assert_eq!(sent.body["model"], "gpt-4o");
    assert_eq!(
        sent.headers["authorization"].to_str().unwrap(),
        format!("Bearer {UPSTREAM_KEY}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_chat_completion_yields_chunks_and_ends_cleanly() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_stream_chunks(4);
    let proxy = proxy(&upstream).await;
    let client = sdk(&proxy, CLIENT_KEY);

    let mut stream = client
        .chat()
        .create_stream(request("complex"))
        .await
        .unwrap();
    let mut chunks = 0;
    let mut text = String::new();
    let mut finish = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("no stream error");
        assert_eq!(chunk.model, "gpt-4.1");
        chunks += 1;
        if let Some(choice) = chunk.choices.first() {
            if let Some(content) = &choice.delta.content {
                text.push_str(content);
            }
            if choice.finish_reason.is_some() {
                finish = choice.finish_reason;
            }
        }
    }
    assert_eq!(chunks, 5, "four pieces and the finish chunk");
    assert_eq!(
        text,
        "Hello from gpt-4.1 (1/4) Hello from gpt-4.1 (2/4) Hello from gpt-4.1 (3/4) Hello from gpt-4.1 (4/4) "
    );
    assert!(finish.is_some());
    assert_eq!(upstream.requests()[0].body["stream"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_models_lists_the_tiers() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = proxy(&upstream).await;
    let client = sdk(&proxy, CLIENT_KEY);

    let list = client.models().list().await.unwrap();
    let ids: Vec<&str> = list.data.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["simple", "moderate", "complex"]);
}

/// The API error of a failed call.
fn api_error(result: Result<impl std::fmt::Debug, OpenAIError>) -> (u16, Option<String>) {
    match result {
        Err(OpenAIError::ApiError(e)) => (e.status_code.as_u16(), e.api_error.code),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_errors_reach_the_sdk_as_api_errors() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = proxy(&upstream).await;

    let wrong = sdk(&proxy, "sk-wrong");
    let (status, code) = api_error(wrong.chat().create(request("moderate")).await);
    assert_eq!((status, code.as_deref()), (401, Some("invalid_api_key")));
    let (status, code) = api_error(wrong.models().list().await);
    assert_eq!((status, code.as_deref()), (401, Some("invalid_api_key")));

    let client = sdk(&proxy, CLIENT_KEY);
    let (status, code) = api_error(client.chat().create(request("gpt-4o")).await);
    assert_eq!((status, code.as_deref()), (400, Some("model_not_allowed")));
    let (status, code) = api_error(client.chat().create(request("huge")).await);
    assert_eq!((status, code.as_deref()), (400, Some("model_not_allowed")));
    assert_eq!(upstream.total_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_broken_midway_is_an_error_in_the_sdk_not_a_clean_end() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_fault("gpt-4o", UpstreamFault::BreakStreamAfter(2));
    let proxy = proxy(&upstream).await;
    let client = sdk(&proxy, CLIENT_KEY);

    let mut stream = client
        .chat()
        .create_stream(request("moderate"))
        .await
        .unwrap();
    let mut ok = 0;
    let mut errors = 0;
    while let Some(item) = stream.next().await {
        match item {
            Ok(_) if errors == 0 => ok += 1,
            Ok(chunk) => panic!("a chunk after the error: {chunk:?}"),
            Err(_) => errors += 1,
        }
    }
    assert_eq!(ok, 2, "the pieces sent before the break arrive");
    assert_eq!(errors, 1, "the break is reported");
}
