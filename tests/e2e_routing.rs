//! End to end, over real sockets: the proxy started in-process routes each
//! tier to the right model from each tier source (built-in, a `[tiers]`
//! table in `--config`, Zion), reads the tier from the body, the header or
//! the `model` alias, rewrites what goes upstream, stamps its headers on
//! every response, streams SSE unbuffered, lists the tiers and exposes its
//! metrics.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::time::{Duration, Instant};

use sentinel_proxy::settings::Cli;
use sentinel_testkit::{MockUpstream, MockZion};
use serde_json::{Value, json};
use support::{
    Env, Proxy, Reply, TempFile, UPSTREAM_KEY, ZION_KEY, chat_body, eventually, metric, unique,
    zion_config,
};

/// The body of the last request the upstream received.
fn last_upstream_body(upstream: &MockUpstream) -> Value {
    upstream
        .requests()
        .last()
        .expect("the upstream was called")
        .body
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_tiers_map_each_tier_to_its_model() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(&Env::new(&upstream)).await;

    for (tier, model) in [
        ("simple", "gpt-4o-mini"),
        ("moderate", "gpt-4o"),
        ("complex", "gpt-4.1"),
    ] {
        let reply = proxy.chat(&chat_body(Some(tier))).await;
        reply.assert_served(tier, model);
        let sent = last_upstream_body(&upstream);
        assert_eq!(sent["model"], model);
        assert!(sent.get("tier").is_none(), "{sent}");
    }
    // No tier at all: simple.
    proxy
        .chat(&chat_body(None))
        .await
        .assert_served("simple", "gpt-4o-mini");
    assert_eq!(upstream.total_calls(), 4);

    let ready = proxy.get("/readyz").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json["tier_config_version"], "builtin-v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiers_table_in_the_config_file_replaces_the_builtin_tiers() {
    let upstream = MockUpstream::start().await.unwrap();
    let file = TempFile::new(
        "toml",
        r#"
# Ignored: the environment's OPENAI_BASE_URL wins.
[providers.openai]
base_url = "http://127.0.0.1:9/v1"

[tiers.simple]
models = [{ provider = "openai", model = "file-simple", relative_cost = 1 }]
[tiers.moderate]
models = [{ provider = "openai", model = "file-moderate", relative_cost = 4, pricing = { input_per_mtok_usd = 1.0, output_per_mtok_usd = 2.0 } }]
[tiers.complex]
models = [{ provider = "openai", model = "file-complex", relative_cost = 9 }]
"#,
    );
    let cli = Cli {
        config: Some(file.path()),
        ..Cli::default()
    };
    let proxy = Proxy::start_with(&cli, &Env::new(&upstream)).await;

    for (tier, model) in [
        ("simple", "file-simple"),
        ("moderate", "file-moderate"),
        ("complex", "file-complex"),
    ] {
        proxy
            .chat(&chat_body(Some(tier)))
            .await
            .assert_served(tier, model);
        assert_eq!(upstream.calls_for(model), 1, "{model}");
    }
    assert_eq!(upstream.calls_for("gpt-4o"), 0);
    let ready = proxy.get("/readyz").await;
    assert_eq!(ready.json["tier_config_version"], "file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zion_tiers_are_used_without_redis() {
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    let proxy = Proxy::start(&Env::new(&upstream).zion(&zion)).await;

    assert!(proxy.wait_ready(Duration::from_secs(5)).await);
    let ready = proxy.get("/readyz").await;
    assert_eq!(ready.json["tier_config_version"], "mock-1");
    assert_eq!(
        zion.last_authorization().as_deref(),
        Some(format!("Bearer {ZION_KEY}").as_str())
    );
    let calls = zion.calls();
    assert!(calls >= 1);

    proxy
        .chat(&chat_body(Some("moderate")))
        .await
        .assert_served("moderate", "gpt-4o");
    proxy
        .chat(&chat_body(Some("complex")))
        .await
        .assert_served("complex", "o3");
    for _ in 0..4 {
        let reply = proxy.chat(&chat_body(Some("simple"))).await;
        let model = reply.model().unwrap().to_owned();
        assert!(
            model == "gpt-4o-mini" || model == "gpt-4.1-mini",
            "{model} is not a simple model"
        );
        reply.assert_served("simple", &model);
    }
    // The cached config serves every request: Zion is not asked again.
    assert_eq!(zion.calls(), calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tier_comes_from_the_body_the_header_or_the_model_alias() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(&Env::new(&upstream)).await;

    // Body field `tier`.
    proxy
        .chat(&chat_body(Some("complex")))
        .await
        .assert_served("complex", "gpt-4.1");

    // Header `X-Sentinel-Tier`.
    let reply = Reply::read(
        proxy
            .post_json("/v1/chat/completions", &chat_body(None))
            .header("x-sentinel-tier", "moderate")
            .send()
            .await
            .unwrap(),
    )
    .await;
    reply.assert_served("moderate", "gpt-4o");

    // `model` naming a tier (what stock SDKs send).
    let mut body = chat_body(None);
    body["model"] = json!("complex");
    proxy.chat(&body).await.assert_served("complex", "gpt-4.1");

    // All three, agreeing.
    let mut body = chat_body(Some("moderate"));
    body["model"] = json!("moderate");
    let reply = Reply::read(
        proxy
            .post_json("/v1/chat/completions", &body)
            .header("x-sentinel-tier", "moderate")
            .send()
            .await
            .unwrap(),
    )
    .await;
    reply.assert_served("moderate", "gpt-4o");

    // Upstream: the chosen model, never the tier or the alias.
    let requests = upstream.requests();
    assert_eq!(requests.len(), 4);
    let models: Vec<_> = requests.iter().map(|r| r.model.clone().unwrap()).collect();
    assert_eq!(models, ["gpt-4.1", "gpt-4o", "gpt-4.1", "gpt-4o"]);
    for request in &requests {
        assert!(request.body.get("tier").is_none(), "{}", request.body);
        assert!(request.headers.get("x-sentinel-tier").is_none());
        assert_eq!(request.body["messages"][0]["content"], "Hello, Sentinel.");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_gets_the_rewritten_body_and_the_providers_key_only() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(&Env::new(&upstream)).await;

    let body = json!({
        "tier": "moderate",
        "messages": [{ "role": "user", "content": "Keep me byte for byte: \u{e9}\u{4e2d}" }],
        "temperature": 0.25,
        "metadata": { "nested": [1, 2, { "deep": null }] }
    });
    let reply = Reply::read(
        proxy
            .post_json("/v1/chat/completions?trace=1", &body)
            .header("authorization", "Bearer client-secret-key")
            .header("openai-organization", "org-client")
            .header("openai-project", "proj-client")
            .header("accept-encoding", "gzip, br")
            .header("x-sentinel-session", "session-headers-1")
            .header("x-custom-header", "dropped")
            .header("cookie", "session=client-cookie")
            .header("x-forwarded-for", "10.0.0.1")
            .header("x-forwarded-host", "evil.example")
            .header("forwarded", "for=10.0.0.1")
            .header("x-secret-hop", "hop-value")
            .header("connection", "x-secret-hop")
            .header("proxy-authorization", "Basic Y2xpZW50")
            .header("user-agent", "OpenAI/Python 1.99.0")
            .header("idempotency-key", "idem-1")
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .header("tracestate", "vendor=value")
            .header("x-request-id", "client-request-1")
            .header("accept", "application/json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    reply.assert_served("moderate", "gpt-4o");
    assert_eq!(
        reply.json["choices"][0]["message"]["content"],
        "Hello from gpt-4o"
    );

    let requests = upstream.requests();
    assert_eq!(requests.len(), 1);
    let sent = &requests[0];
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.query, None, "the client's query string stays behind");
    assert_eq!(sent.model.as_deref(), Some("gpt-4o"));
    let header = |name: &str| {
        sent.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(
        header("authorization"),
        Some(format!("Bearer {UPSTREAM_KEY}"))
    );
    assert_eq!(header("openai-organization"), None);
    assert_eq!(header("openai-project"), None);
    assert_eq!(header("accept-encoding").as_deref(), Some("identity"));
    assert_eq!(header("x-sentinel-session"), None);
    // An allow-list: only what a provider needs goes upstream.
    for dropped in [
        "x-custom-header",
        "cookie",
        "x-forwarded-for",
        "x-forwarded-host",
        "forwarded",
        "x-secret-hop",
        "proxy-authorization",
        "x-sentinel-tier",
    ] {
        assert_eq!(header(dropped), None, "{dropped} went upstream");
    }
    for (kept, value) in [
        ("user-agent", "OpenAI/Python 1.99.0"),
        ("idempotency-key", "idem-1"),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("tracestate", "vendor=value"),
        ("x-request-id", "client-request-1"),
        ("accept", "application/json"),
        ("content-type", "application/json"),
    ] {
        assert_eq!(header(kept).as_deref(), Some(value), "{kept}");
    }
    let mut expected = body.clone();
    expected.as_object_mut().unwrap().remove("tier");
    expected["model"] = json!("gpt-4o");
    assert_eq!(sent.body, expected);
    // Content-Length fits the rewritten body.
    let length: usize = header("content-length").unwrap().parse().unwrap();
    assert_eq!(length, serde_json::to_vec(&sent.body).unwrap().len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_responses_api_is_routed_the_same_way() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(&Env::new(&upstream)).await;

    let reply = Reply::read(
        proxy
            .post_json(
                "/v1/responses",
                &json!({ "model": "complex", "input": "Plan a trip." }),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    reply.assert_served("complex", "gpt-4.1");
    assert_eq!(reply.json["object"], "response");
    let sent = &upstream.requests()[0];
    assert_eq!(sent.path, "/v1/responses");
    assert_eq!(
        sent.body,
        json!({ "input": "Plan a trip.", "model": "gpt-4.1" })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_carries_a_request_id_and_routed_ones_the_sentinel_headers() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(&Env::new(&upstream)).await;
    let sane = "req-e2e.1:abc_DEF";

    // A routed response: all three headers, the id echoed.
    let reply = Reply::read(
        proxy
            .post_json("/v1/chat/completions", &chat_body(Some("moderate")))
            .header("x-request-id", sane)
            .send()
            .await
            .unwrap(),
    )
    .await;
    reply.assert_served("moderate", "gpt-4o");
    assert_eq!(reply.header("x-request-id"), Some(sane));

    // A streamed one: the headers come with the head.
    let mut body = chat_body(Some("complex"));
    body["stream"] = json!(true);
    let streamed = Reply::read(
        proxy
            .post_json("/v1/chat/completions", &body)
            .header("x-request-id", sane)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(streamed.status, 200);
    assert_eq!(streamed.model(), Some("gpt-4.1"));
    assert_eq!(streamed.tier(), Some("complex"));
    assert_eq!(streamed.header("x-request-id"), Some(sane));

    // Sentinel's own errors and the other routes keep the id too.
    let error = Reply::read(
        proxy
            .post_json("/v1/chat/completions", &json!({ "tier": "huge" }))
            .header("x-request-id", sane)
            .send()
            .await
            .unwrap(),
    )
    .await;
    error.assert_error(400, "invalid_tier");
    assert_eq!(error.header("x-request-id"), Some(sane));
    for path in ["/healthz", "/readyz", "/metrics", "/v1/models", "/v1/nope"] {
        let reply = Reply::read(
            proxy
                .request(reqwest::Method::GET, path)
                .header("x-request-id", sane)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(reply.header("x-request-id"), Some(sane), "{path}");
    }

    // An insane id is replaced; none gets one generated, a fresh one each time.
    let mut seen = Vec::new();
    for id in [Some("has spaces in it"), Some(&*"x".repeat(129)), None] {
        let mut request = proxy.post_json("/v1/chat/completions", &chat_body(None));
        if let Some(id) = id {
            request = request.header("x-request-id", id);
        }
        let reply = Reply::read(request.send().await.unwrap()).await;
        reply.assert_served("simple", "gpt-4o-mini");
        let got = reply.header("x-request-id").unwrap().to_owned();
        assert_ne!(Some(got.as_str()), id);
        assert!(
            got.len() == 32 && got.bytes().all(|b| b.is_ascii_hexdigit()),
            "{got}"
        );
        seen.push(got);
    }
    seen.dedup();
    assert_eq!(seen.len(), 3, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_passes_through_unbuffered() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_stream_chunks(3);
    upstream.set_chunk_delay(Duration::from_millis(250));
    let proxy = Proxy::start(&Env::new(&upstream)).await;

    let mut body = chat_body(Some("moderate"));
    body["stream"] = json!(true);
    let started = Instant::now();
    let mut response = proxy
        .post_json("/v1/chat/completions", &body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert_eq!(headers["x-sentinel-model"], "gpt-4o");
    assert_eq!(headers["x-sentinel-tier"], "moderate");
    assert!(headers.contains_key("x-request-id"));

    let mut first = None;
    let mut text = String::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        if first.is_none() && !chunk.is_empty() {
            first = Some(started.elapsed());
        }
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let total = started.elapsed();
    let first = first.expect("at least one chunk");
    // Five events 250 ms apart: the upstream takes about a second; the first
    // event must reach the client long before the last.
    assert!(total >= Duration::from_millis(900), "total {total:?}");
    assert!(
        first + Duration::from_millis(600) <= total,
        "first chunk at {first:?}, end at {total:?}: buffered"
    );

    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .collect();
    assert_eq!(events.len(), 5, "{text}");
    for (i, event) in events[..3].iter().enumerate() {
        let chunk: Value = serde_json::from_str(event.strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], "gpt-4o");
        assert_eq!(
            chunk["choices"][0]["delta"]["content"],
            format!("Hello from gpt-4o ({}/3) ", i + 1)
        );
    }
    assert_eq!(events[4], "data: [DONE]");
    assert_eq!(upstream.requests()[0].body["stream"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_lists_the_tiers_and_health_answers() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(&Env::new(&upstream)).await;

    let models = proxy.get("/v1/models").await;
    assert_eq!(models.status, 200);
    assert_eq!(models.json["object"], "list");
    let ids: Vec<&str> = models.json["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["simple", "moderate", "complex"]);
    for model in models.json["data"].as_array().unwrap() {
        assert_eq!(model["object"], "model");
    }
    let health = proxy.get("/healthz").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json["status"], "ok");
    // Nothing went upstream for these.
    assert_eq!(upstream.total_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_selections_and_tokens_by_tier_model_and_provider() {
    // Model names unique to this test: the Prometheus recorder is global.
    let model = unique("metrics-model");
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    zion.set_config(zion_config(&[
        ("simple", &["gpt-4o-mini"]),
        ("moderate", &[model.as_str()]),
        ("complex", &["o3"]),
    ]));
    let proxy = Proxy::start(&Env::new(&upstream).zion(&zion)).await;

    proxy
        .chat(&chat_body(Some("moderate")))
        .await
        .assert_served("moderate", &model);

    let labels = [
        ("tier", "moderate"),
        ("model", model.as_str()),
        ("provider", "openai"),
    ];
    let text = proxy.metrics().await;
    assert_eq!(
        metric(
            &text,
            "sentinel_requests_total",
            &[&labels[..], &[("status", "2xx")]].concat()
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "sentinel_model_selections_total",
            &[&labels[..], &[("reason", "weighted")]].concat()
        ),
        Some(1.0),
        "{text}"
    );
    // Usage is recorded when the upstream body ends: poll briefly.
    let tokens = |text: &str, kind: &str| {
        metric(
            text,
            "sentinel_tokens_total",
            &[&labels[..], &[("kind", kind)]].concat(),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    let text = loop {
        let text = proxy.metrics().await;
        if tokens(&text, "input").is_some() || Instant::now() >= deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The mock reports 10 prompt and 5 completion tokens.
    assert_eq!(tokens(&text, "input"), Some(10.0), "{text}");
    assert_eq!(tokens(&text, "output"), Some(5.0), "{text}");
    // 10 * $1 + 5 * $2 per million tokens = 20 micro-USD.
    assert_eq!(
        metric(&text, "sentinel_cost_micro_usd_total", &labels),
        Some(20.0),
        "{text}"
    );
    assert!(
        text.contains("# TYPE sentinel_requests_total counter"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_usage_is_counted_whether_or_not_the_client_asked_for_it() {
    let model = unique("stream-usage-model");
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    zion.set_config(zion_config(&[("complex", &[model.as_str()])]));
    let proxy = Proxy::start(&Env::new(&upstream).zion(&zion)).await;
    let labels = [
        ("tier", "complex"),
        ("model", model.as_str()),
        ("provider", "openai"),
    ];
    let input = [&labels[..], &[("kind", "input")]].concat();
    let output = [&labels[..], &[("kind", "output")]].concat();
    let stream = |include_usage: bool| {
        let mut body = chat_body(Some("complex"));
        body["stream"] = json!(true);
        if include_usage {
            body["stream_options"] = json!({ "include_usage": true });
        }
        let request = proxy.post_json("/v1/chat/completions", &body);
        async move { Reply::read(request.send().await.unwrap()).await }
    };

    // Asked for: the usage chunk reaches the client, and is counted.
    let reply = stream(true).await;
    assert_eq!(reply.status, 200);
    assert!(reply.text().contains("\"usage\""), "{}", reply.text());
    let counted = eventually(Duration::from_secs(3), || async {
        metric(&proxy.metrics().await, "sentinel_tokens_total", &input) == Some(10.0)
    })
    .await;
    assert!(counted, "{}", proxy.metrics().await);
    let text = proxy.metrics().await;
    assert_eq!(metric(&text, "sentinel_tokens_total", &output), Some(5.0));

    // Not asked for: Sentinel asks the upstream, counts the usage and keeps
    // the chunk from the client, whose stream is otherwise whole.
    let reply = stream(false).await;
    assert_eq!(reply.status, 200);
    let text = reply.text();
    assert!(!text.contains("\"usage\""), "{text}");
    assert!(
        text.contains("(3/3)") && text.trim_end().ends_with("data: [DONE]"),
        "{text}"
    );
    let sent = upstream.requests().last().unwrap().body.clone();
    assert_eq!(sent["stream_options"]["include_usage"], true, "{sent}");
    let counted = eventually(Duration::from_secs(3), || async {
        metric(&proxy.metrics().await, "sentinel_tokens_total", &input) == Some(20.0)
    })
    .await;
    assert!(counted, "{}", proxy.metrics().await);
    let text = proxy.metrics().await;
    assert_eq!(metric(&text, "sentinel_tokens_total", &output), Some(10.0));
    // The model's usage series exist from its first response on; none was
    // missing.
    assert_eq!(
        metric(&text, "sentinel_usage_missing_total", &labels),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_of_a_provider_the_proxy_does_not_know_are_left_out() {
    let provider = unique("mystery");
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    let unknown = |model: &str| json!({ "provider": provider, "model": model, "relative_cost": 1 });
    zion.set_config(json!({
        "version": "with-unknown",
        "tiers": {
            "simple": { "models": [
                unknown("mystery-simple"),
                { "provider": "openai", "model": "gpt-4o-mini", "relative_cost": 1 }
            ] },
            "moderate": { "models": [
                { "provider": "openai", "model": "gpt-4o", "relative_cost": 1 }
            ] },
            "complex": { "models": [unknown("mystery-complex")] }
        }
    }));
    let proxy = Proxy::start(&Env::new(&upstream).zion(&zion)).await;

    for _ in 0..6 {
        proxy
            .chat(&chat_body(Some("simple")))
            .await
            .assert_served("simple", "gpt-4o-mini");
    }
    proxy
        .chat(&chat_body(Some("moderate")))
        .await
        .assert_served("moderate", "gpt-4o");
    // A tier left with no known model is unavailable, not the config.
    let reply = proxy.chat(&chat_body(Some("complex"))).await;
    reply.assert_error(503, "tier_unavailable");
    assert_eq!(upstream.calls_for("mystery-simple"), 0);
    assert_eq!(upstream.calls_for("mystery-complex"), 0);
    let text = proxy.metrics().await;
    assert!(
        metric(
            &text,
            "sentinel_unknown_provider_models_total",
            &[("provider", provider.as_str())]
        )
        .is_some_and(|n| n >= 2.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_an_open_stream_finish_and_refuses_new_connections() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_stream_chunks(3);
    upstream.set_chunk_delay(Duration::from_millis(200));
    let proxy = Proxy::start(&Env::new(&upstream).set("SENTINEL_DRAIN_TIMEOUT_SECS", "10")).await;
    let addr = proxy.addr();

    let mut body = chat_body(Some("moderate"));
    body["stream"] = json!(true);
    let mut response = proxy
        .post_json("/v1/chat/completions", &body)
        .send()
        .await
        .unwrap();
    let first = response.chunk().await.unwrap().expect("a first chunk");
    proxy.shutdown();

    // The open stream runs to its end.
    let mut text = String::from_utf8(first.to_vec()).unwrap();
    while let Some(chunk) = response.chunk().await.unwrap() {
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert!(text.contains("(3/3)"), "{text}");

    // The server stops well within the drain timeout, then refuses.
    let started = Instant::now();
    proxy.stop().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
