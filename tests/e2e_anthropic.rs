//! Anthropic models in a tier, end to end: a stock OpenAI SDK client
//! (async-openai) talks to the proxy; the proxy talks to a mock of
//! Anthropic's Messages API (`MockAnthropic`) and a mock OpenAI provider.
//! Answers, streams, tool calls, usage and errors come back in OpenAI's
//! shapes; a mixed tier splits by cost and retries across vendors. Also:
//! an Azure-style OpenAI provider (an `api-key` header and `api-version`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::time::Duration;

use async_openai::types::chat::{
    ChatCompletionRequestSystemMessageArgs, ChatCompletionRequestUserMessageArgs,
    ChatCompletionTool, ChatCompletionTools, CreateChatCompletionRequest,
    CreateChatCompletionRequestArgs, FinishReason, FunctionObjectArgs,
};
use futures_util::StreamExt;
use sentinel_proxy::settings::Cli;
use sentinel_testkit::{AnthropicFault, MockAnthropic, MockUpstream, MockZion};
use serde_json::{Value, json};
use support::{Env, Proxy, eventually, metric, unique};

const ANTHROPIC_KEY: &str = "sk-ant-test-key";

/// A model of a tier: (provider, model, relative cost).
type Model<'a> = (&'a str, &'a str, u8);
/// Tiers and their models.
type Tiers<'a> = [(&'a str, &'a [Model<'a>])];

/// A Zion config whose models name their provider and cost.
fn config(tiers: &Tiers<'_>) -> Value {
    let mut map = serde_json::Map::new();
    for (tier, models) in tiers {
        let models: Vec<Value> = models
            .iter()
            .map(|(provider, model, cost)| {
                json!({ "provider": provider, "model": model, "relative_cost": cost,
                        "pricing": { "input_per_mtok_usd": 3.0, "output_per_mtok_usd": 15.0 } })
            })
            .collect();
        map.insert((*tier).to_owned(), json!({ "models": models }));
    }
    json!({ "version": unique("anthropic"), "tiers": map })
}

struct Setup {
    openai: MockUpstream,
    anthropic: MockAnthropic,
    _zion: MockZion,
    proxy: Proxy,
}

/// The two mock providers and a proxy with `tiers`, Anthropic's key set.
async fn setup(tiers: &Tiers<'_>, env: impl FnOnce(Env) -> Env) -> Setup {
    let openai = MockUpstream::start().await.unwrap();
    let anthropic = MockAnthropic::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    zion.set_config(config(tiers));
    let base = Env::new(&openai)
        .zion(&zion)
        .set("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
        .set("ANTHROPIC_BASE_URL", &anthropic.url());
    let proxy = Proxy::start(&env(base)).await;
    assert!(
        proxy.wait_ready(Duration::from_secs(10)).await,
        "Zion's config loads"
    );
    Setup {
        openai,
        anthropic,
        _zion: zion,
        proxy,
    }
}

/// A proxy whose `complex` tier is the Anthropic `model` alone.
async fn setup_claude(model: &str, env: impl FnOnce(Env) -> Env) -> Setup {
    setup(
        &[
            ("simple", &[("openai", "gpt-simple", 1)]),
            ("moderate", &[("openai", "gpt-moderate", 1)]),
            ("complex", &[("anthropic", model, 1)]),
        ],
        env,
    )
    .await
}

fn with_system(model: &str) -> CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model(model)
        .max_tokens(256u32)
        .messages([
            ChatCompletionRequestSystemMessageArgs::default()
                .content("Be brief.")
                .build()
                .unwrap()
                .into(),
            ChatCompletionRequestUserMessageArgs::default()
                .content("Say hello.")
                .build()
                .unwrap()
                .into(),
        ])
        .build()
        .unwrap()
}

fn with_tool(model: &str) -> CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model(model)
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("What is the weather in Paris?")
            .build()
            .unwrap()
            .into()])
        .tools([ChatCompletionTools::Function(ChatCompletionTool {
            function: FunctionObjectArgs::default()
                .name("get_weather")
                .description("The weather in a city")
                .parameters(json!({
                    "type": "object",
                    "properties": { "location": { "type": "string" } },
                    "required": ["location"]
                }))
                .build()
                .unwrap(),
        })])
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anthropic_model_answers_a_stock_sdk_in_openais_shape() {
    let claude = unique("claude-answer");
    let s = setup_claude(&claude, |e| e).await;
    let client = support::openai_sdk(&s.proxy, "unused");

    let response = s.proxy_sdk_create(&client, with_system("complex")).await;
    assert_eq!(response.model, claude);
    let choice = &response.choices[0];
    assert_eq!(
        choice.message.content.as_deref(),
        Some(MockAnthropic::text_for(&claude).as_str())
    );
    assert_eq!(choice.finish_reason, Some(FinishReason::Stop));
    let usage = response.usage.unwrap();
    assert_eq!(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.total_tokens
        ),
        (12, 7, 19)
    );

    // What went to Anthropic: its API, its key, its version; never the
    // OpenAI key; the system prompt on top.
    let sent = s.anthropic.requests();
    let sent = sent.iter().find(|r| r.path == "/v1/messages").unwrap();
    assert_eq!(sent.headers["x-api-key"], ANTHROPIC_KEY);
    assert_eq!(sent.headers["anthropic-version"], "2023-06-01");
    assert!(sent.headers.get("authorization").is_none());
    assert_eq!(sent.body["model"], claude.as_str());
    assert_eq!(sent.body["max_tokens"], 256);
    assert_eq!(sent.body["system"], "Be brief.");
    assert_eq!(sent.body["messages"][0]["role"], "user");
    assert_eq!(s.openai.total_calls(), 0);

    // Tokens and cost are counted from the translated usage.
    let text = s.proxy.metrics().await;
    let tokens = |kind: &str| {
        metric(
            &text,
            "sentinel_tokens_total",
            &[
                ("model", claude.as_str()),
                ("provider", "anthropic"),
                ("kind", kind),
            ],
        )
    };
    assert_eq!((tokens("input"), tokens("output")), (Some(12.0), Some(7.0)));
    s.proxy.stop().await;
}

impl Setup {
    async fn proxy_sdk_create(
        &self,
        client: &async_openai::Client<async_openai::config::OpenAIConfig>,
        request: CreateChatCompletionRequest,
    ) -> async_openai::types::chat::CreateChatCompletionResponse {
        client.chat().create(request).await.expect("an answer")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anthropic_stream_reaches_the_sdk_as_chunks_with_usage() {
    let claude = unique("claude-stream");
    let s = setup_claude(&claude, |e| e).await;
    let client = support::openai_sdk(&s.proxy, "unused");

    let mut request = with_system("complex");
    request.stream_options = Some(async_openai::types::chat::ChatCompletionStreamOptions {
        include_usage: Some(true),
        include_obfuscation: None,
    });
    let mut stream = client.chat().create_stream(request).await.unwrap();
    let (mut text, mut finish, mut usage) = (String::new(), None, None);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("no stream error");
        assert_eq!(chunk.model, claude);
        if let Some(choice) = chunk.choices.first() {
            if let Some(content) = &choice.delta.content {
                text.push_str(content);
            }
            if choice.finish_reason.is_some() {
                finish = choice.finish_reason;
            }
        }
        if let Some(u) = chunk.usage {
            usage = Some((u.prompt_tokens, u.completion_tokens));
        }
    }
    assert_eq!(text, MockAnthropic::text_for(&claude));
    assert_eq!(finish, Some(FinishReason::Stop));
    assert_eq!(usage, Some((12, 7)));
    let sent = s.anthropic.requests();
    assert_eq!(sent.last().unwrap().body["stream"], true);
    s.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_go_both_ways_answered_and_streamed() {
    let claude = unique("claude-tools");
    let s = setup_claude(&claude, |e| e).await;
    let client = support::openai_sdk(&s.proxy, "unused");

    let response = s.proxy_sdk_create(&client, with_tool("complex")).await;
    let choice = &response.choices[0];
    assert_eq!(choice.finish_reason, Some(FinishReason::ToolCalls));
    let calls = choice.message.tool_calls.as_ref().expect("tool calls");
    let async_openai::types::chat::ChatCompletionMessageToolCalls::Function(call) = &calls[0]
    else {
        panic!("a function call: {calls:?}");
    };
    assert_eq!(call.function.name, "get_weather");
    let arguments: Value = serde_json::from_str(&call.function.arguments).unwrap();
    assert_eq!(
        arguments,
        serde_json::from_str::<Value>(MockAnthropic::TOOL_INPUT).unwrap()
    );
    let sent = s.anthropic.requests();
    let tools = &sent.last().unwrap().body["tools"];
    assert_eq!(tools[0]["name"], "get_weather");
    assert_eq!(tools[0]["input_schema"]["required"][0], "location");

    // Streamed: the call's name, then its arguments in pieces.
    let mut stream = client
        .chat()
        .create_stream(with_tool("complex"))
        .await
        .unwrap();
    let (mut name, mut args, mut finish) = (String::new(), String::new(), None);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("no stream error");
        if let Some(choice) = chunk.choices.first() {
            for call in choice.delta.tool_calls.iter().flatten() {
                assert_eq!(call.index, 0);
                if let Some(f) = &call.function {
                    name.push_str(f.name.as_deref().unwrap_or(""));
                    args.push_str(f.arguments.as_deref().unwrap_or(""));
                }
            }
            if choice.finish_reason.is_some() {
                finish = choice.finish_reason;
            }
        }
    }
    assert_eq!(name, "get_weather");
    assert_eq!(args, MockAnthropic::TOOL_INPUT);
    assert_eq!(finish, Some(FinishReason::ToolCalls));
    s.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_tier_splits_by_cost_and_retries_across_vendors() {
    let (gpt, claude) = (unique("gpt-mixed"), unique("claude-mixed"));
    let s = setup(
        &[
            (
                "simple",
                &[
                    ("openai", gpt.as_str(), 1),
                    ("anthropic", claude.as_str(), 3),
                ],
            ),
            ("moderate", &[("openai", gpt.as_str(), 1)]),
            ("complex", &[("openai", gpt.as_str(), 1)]),
        ],
        |e| e.set("SENTINEL_FAILURE_THRESHOLD", "1000"),
    )
    .await;

    // The cost-weighted shares, from the state API: 3/4 and 1/4.
    let state: Value = serde_json::from_str(&s.proxy.get("/admin/state").await.text()).unwrap();
    let share = |model: &str| {
        state["tiers"]["simple"]["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["model"] == model)
            .unwrap()["share"]
            .as_f64()
            .unwrap()
    };
    assert!((share(&gpt) - 0.75).abs() < 1e-9);
    assert!((share(&claude) - 0.25).abs() < 1e-9);
    // Both vendors take traffic (the odds of one never being picked in
    // 120 requests are below 1e-14).
    for _ in 0..120 {
        let reply = s.proxy.chat(&support::chat_body(Some("simple"))).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let (to_claude, to_gpt) = (s.anthropic.calls_for(&claude), s.openai.calls_for(&gpt));
    assert_eq!(to_claude + to_gpt, 120);
    assert!(to_claude >= 1 && to_gpt >= 1, "{to_claude} / {to_gpt}");

    // The Responses API is not translated: the layer keeps Anthropic
    // models out of the choice there, so every such request goes to OpenAI.
    let before = s.anthropic.requests().len();
    for _ in 0..20 {
        let reply = support::Reply::read(
            s.proxy
                .post_json(
                    "/v1/responses",
                    &json!({ "model": "simple", "input": "Hi" }),
                )
                .send()
                .await
                .unwrap(),
        )
        .await;
        reply.assert_served("simple", &gpt);
    }
    assert_eq!(s.anthropic.requests().len(), before);
    let text = s.proxy.metrics().await;
    assert_eq!(
        metric(
            &text,
            "sentinel_route_models_excluded_total",
            &[("provider", "anthropic"), ("model", claude.as_str())]
        ),
        Some(1.0)
    );

    // Anthropic overloaded (529): the request is retried on OpenAI.
    s.anthropic.set_fault(&claude, AnthropicFault::Status(529));
    let mut retried = 0;
    for _ in 0..40 {
        let before = s.anthropic.calls_for(&claude);
        let reply = s.proxy.chat(&support::chat_body(Some("simple"))).await;
        reply.assert_served("simple", &gpt);
        if s.anthropic.calls_for(&claude) > before {
            retried += 1;
        }
    }
    assert!(retried >= 1, "some request met the overloaded model first");
    // And the other way: OpenAI failing, Anthropic answers.
    s.anthropic.clear_fault(&claude);
    s.openai.set_fault(
        &gpt,
        sentinel_testkit::UpstreamFault::Status {
            status: 500,
            retry_after: None,
        },
    );
    for _ in 0..10 {
        let reply = s.proxy.chat(&support::chat_body(Some("simple"))).await;
        reply.assert_served("simple", &claude);
    }
    s.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropics_errors_become_openai_envelopes_and_stream_errors_end_the_stream() {
    let claude = unique("claude-errors");
    let s = setup_claude(&claude, |e| e.set("SENTINEL_FAILURE_THRESHOLD", "1000")).await;

    // A client error: its status and the provider's message, in OpenAI's
    // envelope.
    s.anthropic.set_fault(&claude, AnthropicFault::Status(400));
    let reply = s.proxy.chat(&support::chat_body(Some("complex"))).await;
    assert_eq!(reply.status, 400);
    let body: Value = serde_json::from_str(&reply.text()).unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(body["error"]["message"].as_str().unwrap().contains("mock"));

    // Overloaded with no other model: Sentinel's own answer.
    s.anthropic.set_fault(&claude, AnthropicFault::Status(529));
    let reply = s.proxy.chat(&support::chat_body(Some("complex"))).await;
    reply.assert_error(502, "upstream_failed");

    // An error event after the first token: the content so far, then
    // Sentinel's SSE error event.
    s.anthropic
        .set_fault(&claude, AnthropicFault::ErrorEventAfter(1));
    let reply = s.proxy.chat_stream("complex").await;
    assert_eq!(reply.status, 200);
    let text = reply.text();
    assert!(text.contains("\"content\":\"Hello\""), "{text}");
    assert!(text.contains("\"error\""), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");

    // `/v1/responses` is not served by Anthropic models: a clear 400.
    s.anthropic.clear_fault(&claude);
    let reply = support::Reply::read(
        s.proxy
            .post_json(
                "/v1/responses",
                &json!({ "model": "complex", "input": "Hi" }),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    reply.assert_error(400, "unsupported_route");
    s.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_health_checks_list_its_models_with_its_headers() {
    let claude = unique("claude-health");
    let s = setup_claude(&claude, |e| {
        e.set("SENTINEL_HEALTH_CHECKS", "true")
            .set("SENTINEL_HEALTH_INTERVAL_SECS", "1")
    })
    .await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            s.anthropic.model_list_calls() >= 1
        })
        .await
    );
    let probe = s
        .anthropic
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/models")
        .unwrap();
    assert_eq!(probe.headers["x-api-key"], ANTHROPIC_KEY);
    assert_eq!(probe.headers["anthropic-version"], "2023-06-01");
    let healthy = eventually(Duration::from_secs(20), || async {
        let state: Value = serde_json::from_str(&s.proxy.get("/admin/state").await.text()).unwrap();
        state["providers"]["anthropic"]["health"] == "up"
    })
    .await;
    assert!(healthy);
    s.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_azure_style_provider_gets_its_key_header_and_api_version() {
    let azure = MockUpstream::start().await.unwrap();
    let openai = MockUpstream::start().await.unwrap();
    let file = support::TempFile::new(
        "toml",
        &format!(
            r#"
[providers.azure]
base_url = "{}"
api_key_env = "AZURE_TEST_KEY"
auth = "api-key"
query = {{ "api-version" = "2024-10-21" }}
headers = {{ "x-ms-client" = "sentinel" }}
[tiers.simple]
models = [{{ provider = "azure", model = "gpt-4o-mini", relative_cost = 1 }}]
[tiers.moderate]
models = [{{ provider = "azure", model = "gpt-4o", relative_cost = 1 }}]
[tiers.complex]
models = [{{ provider = "openai", model = "gpt-4.1", relative_cost = 1 }}]
"#,
            azure.url()
        ),
    );
    let cli = Cli {
        config: Some(file.path()),
        ..Cli::default()
    };
    let proxy = Proxy::start_with(&cli, &Env::new(&openai).set("AZURE_TEST_KEY", "az-key")).await;
    proxy
        .chat(&support::chat_body(Some("simple")))
        .await
        .assert_served("simple", "gpt-4o-mini");
    let sent = azure.requests();
    let sent = sent.last().unwrap();
    assert_eq!(sent.headers["api-key"], "az-key");
    assert!(sent.headers.get("authorization").is_none());
    assert_eq!(sent.headers["x-ms-client"], "sentinel");
    assert_eq!(sent.query.as_deref(), Some("api-version=2024-10-21"));
    assert_eq!(openai.total_calls(), 0);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_anthropic_model_is_probed_back_with_a_one_token_message() {
    let (gpt, claude) = (unique("gpt-probe"), unique("claude-probe"));
    let s = setup(
        &[
            ("simple", &[("openai", gpt.as_str(), 1)]),
            ("moderate", &[("openai", gpt.as_str(), 1)]),
            ("complex", &[("anthropic", claude.as_str(), 1)]),
        ],
        |e| {
            e.set("SENTINEL_FAILURE_THRESHOLD", "1")
                .set("SENTINEL_BACKOFF_INITIAL_SECS", "30")
                .set("SENTINEL_MODEL_PROBE_INTERVAL_SECS", "1")
        },
    )
    .await;
    s.anthropic.set_fault(&claude, AnthropicFault::Status(529));
    let reply = s.proxy.chat(&support::chat_body(Some("complex"))).await;
    reply.assert_error(502, "upstream_failed");
    let breaker = |state: &Value| state["tiers"]["complex"]["models"][0]["breaker"].clone();
    let state: Value = serde_json::from_str(&s.proxy.get("/admin/state").await.text()).unwrap();
    assert_eq!(breaker(&state), "open");

    // Recovered: a background probe (well before the 30 s wait ends)
    // closes it again.
    s.anthropic.clear_fault(&claude);
    let closed = eventually(Duration::from_secs(20), || async {
        let state: Value = serde_json::from_str(&s.proxy.get("/admin/state").await.text()).unwrap();
        breaker(&state) == "closed"
    })
    .await;
    assert!(closed, "the probe closed the breaker");
    let probe = s
        .anthropic
        .requests()
        .into_iter()
        .rfind(|r| r.path == "/v1/messages" && r.body["max_tokens"] == 1)
        .expect("a probe");
    assert_eq!(probe.headers["x-api-key"], ANTHROPIC_KEY);
    assert_eq!(probe.body["model"], claude.as_str());
    s.proxy
        .chat(&support::chat_body(Some("complex")))
        .await
        .assert_served("complex", &claude);
    s.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_broken_on_openai_is_continued_on_anthropic() {
    let (gpt, claude) = (unique("gpt-cont"), unique("claude-cont"));
    let s = setup(
        &[
            (
                "simple",
                &[
                    ("openai", gpt.as_str(), 1),
                    ("anthropic", claude.as_str(), 1),
                ],
            ),
            ("moderate", &[("openai", gpt.as_str(), 1)]),
            ("complex", &[("openai", gpt.as_str(), 1)]),
        ],
        |e| e.set("SENTINEL_FAILURE_THRESHOLD", "1000"),
    )
    .await;
    // `gpt` breaks after its first piece, whenever it is picked.
    s.openai
        .set_fault(&gpt, sentinel_testkit::UpstreamFault::BreakStreamAfter(1));
    let mut continued = None;
    for _ in 0..40 {
        let reply = s.proxy.chat_stream("simple").await;
        assert_eq!(reply.status, 200);
        let prefilled = s.anthropic.requests().into_iter().find(|r| {
            r.body["messages"]
                .as_array()
                .and_then(|m| m.last())
                .is_some_and(|m| m["role"] == "assistant")
        });
        if let Some(prefilled) = prefilled {
            continued = Some((reply, prefilled));
            break;
        }
    }
    let (reply, prefilled) = continued.expect("a request met `gpt` first within 40");
    let text = reply.text();
    // The client got gpt's first piece, then Claude's continuation, and a
    // clean end.
    assert!(text.contains(&format!("Hello from {gpt}")), "{text}");
    assert!(text.contains(&claude), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert!(!text.contains("\"error\""), "{text}");
    // The prefill went as Anthropic takes it: no trailing whitespace.
    let last = prefilled.body["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    let prefill = last["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(prefill.starts_with(&format!("Hello from {gpt}")), "{last}");
    assert!(!prefill.ends_with(char::is_whitespace), "{last}");
    s.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_on_an_anthropic_model_keeps_it_across_a_responses_request() {
    let (gpt, claude) = (unique("gpt-session"), unique("claude-session"));
    let s = setup(
        &[
            ("simple", &[("anthropic", claude.as_str(), 1)]),
            (
                "moderate",
                &[
                    ("openai", gpt.as_str(), 1),
                    ("anthropic", claude.as_str(), 1),
                ],
            ),
            ("complex", &[("openai", gpt.as_str(), 1)]),
        ],
        |e| e,
    )
    .await;
    // A `moderate` session pinned to Claude (the pick is weighted at
    // random: new sessions until one is).
    let mut pinned = None;
    for _ in 0..40 {
        let session = unique("s");
        let reply = s
            .proxy
            .chat_in_session(&session, &support::chat_body(Some("moderate")))
            .await;
        if reply.model() == Some(claude.as_str()) {
            pinned = Some(session);
            break;
        }
    }
    let session = pinned.expect("a session pinned to Claude within 40");
    // A `/v1/responses` request in it: Claude cannot serve that route, so
    // OpenAI's model of the tier does...
    for _ in 0..3 {
        let reply = support::Reply::read(
            s.proxy
                .post_json(
                    "/v1/responses",
                    &json!({ "model": "moderate", "input": "Hi" }),
                )
                .header("x-sentinel-session", &session)
                .send()
                .await
                .unwrap(),
        )
        .await;
        reply.assert_served("moderate", &gpt);
    }
    // ...and the session keeps Claude for its chat completions.
    for _ in 0..3 {
        s.proxy
            .chat_in_session(&session, &support::chat_body(Some("moderate")))
            .await
            .assert_served("moderate", &claude);
    }
    // `simple` has no model for the Responses API at all: a clear 400.
    let reply = support::Reply::read(
        s.proxy
            .post_json(
                "/v1/responses",
                &json!({ "model": "simple", "input": "Hi" }),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    reply.assert_error(400, "unsupported_route");
    s.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_too_long_a_cut_stream_and_a_request_without_content_type() {
    let claude = unique("claude-limits");
    let s = setup_claude(&claude, |e| e.set("SENTINEL_FAILURE_THRESHOLD", "1000")).await;

    // Too long for the only model: the provider's answer, in OpenAI's
    // shape, with OpenAI's code for it.
    s.anthropic
        .set_fault(&claude, AnthropicFault::PromptTooLong);
    let reply = s.proxy.chat(&support::chat_body(Some("complex"))).await;
    assert_eq!(reply.status, 400);
    let body: Value = serde_json::from_str(&reply.text()).unwrap();
    assert_eq!(body["error"]["code"], "context_length_exceeded");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("prompt is too long")
    );

    // A stream cut after its first piece: the content so far, then
    // Sentinel's error event, never a clean end.
    s.anthropic.set_fault(&claude, AnthropicFault::CutAfter(1));
    let reply = s.proxy.chat_stream("complex").await;
    assert_eq!(reply.status, 200);
    let text = reply.text();
    assert!(text.contains("\"content\":\"Hello\""), "{text}");
    assert!(text.contains("\"error\""), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");

    // No content type from the client: Anthropic still gets JSON's.
    s.anthropic.clear_fault(&claude);
    let reply = support::Reply::read(
        s.proxy
            .request(reqwest::Method::POST, "/v1/chat/completions")
            .body(support::chat_body(Some("complex")).to_string())
            .send()
            .await
            .unwrap(),
    )
    .await;
    reply.assert_served("complex", &claude);
    let sent = s.anthropic.requests();
    assert_eq!(
        sent.last().unwrap().headers["content-type"],
        "application/json"
    );
    s.proxy.stop().await;
}
