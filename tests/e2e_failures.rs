//! End to end, over real sockets: every error of the proxy's contract comes
//! back with its status and the OpenAI envelope, failing models are retried
//! on the next model of the tier and then kept out by their breaker, a tier
//! whose models all fail answers 502 and then 503 with `Retry-After`,
//! timeouts answer 504, and a stream that breaks or stalls mid-way ends
//! with an SSE error event.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::time::{Duration, Instant};

use sentinel_testkit::{MockUpstream, MockZion, UpstreamFault};
use serde_json::{Value, json};
use support::{Env, Proxy, Reply, UPSTREAM_KEY, chat_body, eventually, raw_http, zion_config};

fn status(code: u16) -> UpstreamFault {
    UpstreamFault::Status {
        status: code,
        retry_after: None,
    }
}

/// `POST /v1/chat/completions` with a raw body and extra headers.
async fn post_raw(proxy: &Proxy, body: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = proxy
        .request(reqwest::Method::POST, "/v1/chat/completions")
        .header("content-type", "application/json")
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    Reply::read(request.send().await.unwrap()).await
}

/// A bad request: its body, its extra headers, the expected error code.
type Case<'a> = (String, Vec<(&'a str, &'a str)>, &'static str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_400_in_the_openai_envelope() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(&Env::new(&upstream)).await;
    let long_session = "s".repeat(129);

    let cases: Vec<Case<'_>> = vec![
        // invalid_json: not JSON, not an object, truncated, trailing data.
        ("this is not json".into(), vec![], "invalid_json"),
        ("[1, 2, 3]".into(), vec![], "invalid_json"),
        (r#"{"tier": "simple""#.into(), vec![], "invalid_json"),
        (r#"{"tier": "simple"} {}"#.into(), vec![], "invalid_json"),
        (String::new(), vec![], "invalid_json"),
        // invalid_tier: in the body or the header.
        (
            json!({ "tier": "huge" }).to_string(),
            vec![],
            "invalid_tier",
        ),
        (json!({ "tier": 3 }).to_string(), vec![], "invalid_tier"),
        (
            json!({}).to_string(),
            vec![("x-sentinel-tier", "enormous")],
            "invalid_tier",
        ),
        // conflicting_tier: any two sources disagreeing.
        (
            json!({ "tier": "simple" }).to_string(),
            vec![("x-sentinel-tier", "complex")],
            "conflicting_tier",
        ),
        (
            json!({ "tier": "simple", "model": "moderate" }).to_string(),
            vec![],
            "conflicting_tier",
        ),
        (
            json!({ "model": "complex" }).to_string(),
            vec![("x-sentinel-tier", "moderate")],
            "conflicting_tier",
        ),
        // model_not_allowed: a concrete model.
        (
            json!({ "model": "gpt-4o" }).to_string(),
            vec![],
            "model_not_allowed",
        ),
        (
            json!({ "tier": "simple", "model": "gpt-4o-mini" }).to_string(),
            vec![],
            "model_not_allowed",
        ),
        // invalid_session: bad characters, too long, empty.
        (
            json!({}).to_string(),
            vec![("x-sentinel-session", "has space")],
            "invalid_session",
        ),
        (
            json!({}).to_string(),
            vec![("x-sentinel-session", "semi;colon")],
            "invalid_session",
        ),
        (
            json!({}).to_string(),
            vec![("x-sentinel-session", long_session.as_str())],
            "invalid_session",
        ),
        (
            json!({}).to_string(),
            vec![("x-sentinel-session", "")],
            "invalid_session",
        ),
    ];
    for (body, headers, code) in &cases {
        let reply = post_raw(&proxy, body, headers).await;
        reply.assert_error(400, code);
        assert_eq!(reply.model(), None, "{body}: no model was chosen");
    }

    // The tier error lists the valid tiers.
    let reply = post_raw(&proxy, &json!({ "tier": "huge" }).to_string(), &[]).await;
    let message = reply.json["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("simple") && message.contains("moderate") && message.contains("complex"),
        "{message}"
    );
    // The Responses API is checked the same way.
    let reply = Reply::read(
        proxy
            .post_json("/v1/responses", &json!({ "model": "o3", "input": "x" }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    reply.assert_error(400, "model_not_allowed");

    // A valid session passes.
    post_raw(
        &proxy,
        &chat_body(None).to_string(),
        &[("x-sentinel-session", "Valid.session_id:1-2")],
    )
    .await
    .assert_served("simple", "gpt-4o-mini");
    assert_eq!(
        upstream.total_calls(),
        1,
        "only the valid request went upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_keys_guard_the_v1_routes_only() {
    let upstream = MockUpstream::start().await.unwrap();
    let env = Env::new(&upstream).set("SENTINEL_API_KEYS", "inbound-one, inbound-two");
    let proxy = Proxy::start(&env).await;
    let body = chat_body(Some("moderate"));

    let send = |key: Option<&'static str>, path: &'static str| {
        let mut request = if path == "/v1/models" {
            proxy.request(reqwest::Method::GET, path)
        } else {
            proxy.post_json(path, &body)
        };
        if let Some(key) = key {
            request = request.header("authorization", key);
        }
        async move { Reply::read(request.send().await.unwrap()).await }
    };

    for (key, path) in [
        (None, "/v1/chat/completions"),
        (Some("Bearer wrong-key"), "/v1/chat/completions"),
        (
            Some("Bearer inbound-one-but-longer"),
            "/v1/chat/completions",
        ),
        (Some("inbound-one"), "/v1/chat/completions"),
        (Some("Bearer "), "/v1/chat/completions"),
        (None, "/v1/responses"),
        (None, "/v1/models"),
    ] {
        let reply = send(key, path).await;
        reply.assert_error(401, "invalid_api_key");
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"), "{key:?}");
    }
    assert_eq!(upstream.total_calls(), 0);

    // Either key passes; the upstream gets the provider's key, not the client's.
    for key in ["Bearer inbound-one", "Bearer inbound-two"] {
        send(Some(key), "/v1/chat/completions")
            .await
            .assert_served("moderate", "gpt-4o");
    }
    assert_eq!(
        send(Some("Bearer inbound-two"), "/v1/models").await.status,
        200
    );
    for request in upstream.requests() {
        assert_eq!(
            request.headers["authorization"].to_str().unwrap(),
            format!("Bearer {UPSTREAM_KEY}")
        );
    }

    // Probes and metrics need no key.
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(proxy.get(path).await.status, 200, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_sentinel_does_not_serve_are_404_not_found() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(&Env::new(&upstream)).await;

    for (method, path) in [
        (reqwest::Method::GET, "/v1/embeddings"),
        (reqwest::Method::POST, "/v1/embeddings"),
        (reqwest::Method::POST, "/v1/nope"),
        (reqwest::Method::GET, "/nope"),
        (reqwest::Method::GET, "/v1/models/gpt-4o"),
    ] {
        let reply = Reply::read(
            proxy
                .request(method.clone(), path)
                .header("content-type", "application/json")
                .body(chat_body(None).to_string())
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(reply.status, 404, "{method} {path}");
        reply.assert_error(404, "not_found");
    }
    assert_eq!(upstream.total_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_paths_answer_405_with_allow_to_other_methods() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(&Env::new(&upstream)).await;
    for path in ["/v1/chat/completions", "/v1/responses"] {
        for method in [
            reqwest::Method::GET,
            reqwest::Method::PUT,
            reqwest::Method::DELETE,
            reqwest::Method::PATCH,
            reqwest::Method::OPTIONS,
        ] {
            let response = proxy
                .request(method.clone(), path)
                .header("content-type", "application/json")
                .body(chat_body(None).to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(
                response
                    .headers()
                    .get("allow")
                    .and_then(|v| v.to_str().ok()),
                Some("POST"),
                "{method} {path}"
            );
            let reply = Reply::read(response).await;
            reply.assert_error(405, "method_not_allowed");
        }
    }
    assert_eq!(upstream.total_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_are_413_with_or_without_content_length() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = Proxy::start(&Env::new(&upstream).set("SENTINEL_BODY_LIMIT_BYTES", "512")).await;
    let mut big = chat_body(Some("simple"));
    big["padding"] = json!("x".repeat(2_000));

    // With Content-Length (reqwest sets it).
    let reply = proxy.chat(&big).await;
    reply.assert_error(413, "body_too_large");

    // A declared length over the limit is refused without reading the body:
    // none is sent, and the answer still comes.
    let (code, head, body) = raw_http(
        proxy.addr(),
        "POST /v1/chat/completions HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 10000000",
        b"",
    )
    .await;
    assert_eq!(code, 413, "{head}");
    let json: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"]["code"], "body_too_large");

    // Chunked, without Content-Length: counted while reading.
    let payload = big.to_string();
    let chunked = format!("{:x}\r\n{payload}\r\n0\r\n\r\n", payload.len());
    let (code, head, body) = raw_http(
        proxy.addr(),
        "POST /v1/chat/completions HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked",
        chunked.as_bytes(),
    )
    .await;
    assert_eq!(code, 413, "{head}");
    let json: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"]["code"], "body_too_large");
    assert_eq!(json["error"]["type"], "invalid_request_error");

    // A small chunked body passes.
    let payload = chat_body(Some("simple")).to_string();
    let chunked = format!("{:x}\r\n{payload}\r\n0\r\n\r\n", payload.len());
    let (code, head, _) = raw_http(
        proxy.addr(),
        "POST /v1/chat/completions HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked",
        chunked.as_bytes(),
    )
    .await;
    assert_eq!(code, 200, "{head}");
    assert_eq!(upstream.total_calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_model_is_retried_on_the_next_and_then_kept_out() {
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    // simple: gpt-4o-mini (cost 1) and gpt-4.1-mini (cost 2). Default
    // breaker: opens after 3 consecutive failures, for 30 s.
    upstream.set_fault("gpt-4o-mini", status(500));
    let proxy = Proxy::start(&Env::new(&upstream).zion(&zion)).await;

    let mut requests = 0;
    while upstream.calls_for("gpt-4o-mini") < 3 {
        requests += 1;
        assert!(
            requests <= 60,
            "gpt-4o-mini was chosen only {} times in 60 requests",
            upstream.calls_for("gpt-4o-mini")
        );
        let reply = proxy.chat(&chat_body(Some("simple"))).await;
        // Every request is served, by the other model.
        reply.assert_served("simple", "gpt-4.1-mini");
    }
    let failed = upstream.calls_for("gpt-4o-mini");
    assert_eq!(failed, 3);

    // The breaker is open: gpt-4o-mini gets no more traffic.
    for _ in 0..10 {
        proxy
            .chat(&chat_body(Some("simple")))
            .await
            .assert_served("simple", "gpt-4.1-mini");
    }
    assert_eq!(upstream.calls_for("gpt-4o-mini"), failed);

    // Each retry went to the other model with the same rewritten body.
    let requests = upstream.requests();
    for pair in requests.windows(2) {
        if pair[0].model.as_deref() == Some("gpt-4o-mini") {
            assert_eq!(pair[1].model.as_deref(), Some("gpt-4.1-mini"));
            let mut first = pair[0].body.clone();
            first["model"] = json!("gpt-4.1-mini");
            assert_eq!(first, pair[1].body);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_whose_models_all_fail_is_502_then_503_backing_off_then_recovers() {
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    upstream.set_fault("gpt-4o-mini", status(500));
    upstream.set_fault("gpt-4.1-mini", status(503));
    let proxy = Proxy::start(&Env::new(&upstream).zion(&zion).fast_failures()).await;

    // Both models tried once (the first and the retry), both failed.
    let reply = proxy.chat(&chat_body(Some("simple"))).await;
    reply.assert_error(502, "upstream_failed");
    assert_eq!(reply.tier(), Some("simple"));
    assert_eq!(upstream.calls_for("gpt-4o-mini"), 1);
    assert_eq!(upstream.calls_for("gpt-4.1-mini"), 1);
    let second = upstream.requests()[1].model.clone().unwrap();
    assert_eq!(
        reply.model(),
        Some(second.as_str()),
        "names the last model tried"
    );

    // Threshold 1: both breakers are open now.
    let reply = proxy.chat(&chat_body(Some("simple"))).await;
    reply.assert_error(503, "all_models_backing_off");
    let wait = reply.retry_after();
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    assert_eq!(upstream.total_calls(), 2, "nothing went upstream");
    // Other tiers are unaffected.
    proxy
        .chat(&chat_body(Some("moderate")))
        .await
        .assert_served("moderate", "gpt-4o");

    // After the backoff (1 s), the healed models serve again.
    upstream.clear_all();
    let started = Instant::now();
    let recovered = eventually(Duration::from_secs(4), || async {
        proxy.chat(&chat_body(Some("simple"))).await.status == 200
    })
    .await;
    assert!(recovered, "still failing after {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_on_every_model_of_the_tier_is_504() {
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    upstream.set_fault("gpt-4o-mini", UpstreamFault::Delay(Duration::from_secs(2)));
    upstream.set_fault("gpt-4.1-mini", UpstreamFault::Delay(Duration::from_secs(2)));
    // First-byte timeout 300 ms.
    let proxy = Proxy::start(&Env::new(&upstream).zion(&zion).fast_failures()).await;

    let started = Instant::now();
    let reply = proxy.chat(&chat_body(Some("simple"))).await;
    let took = started.elapsed();
    reply.assert_error(504, "upstream_timeout");
    assert_eq!(reply.tier(), Some("simple"));
    assert_eq!(upstream.calls_for("gpt-4o-mini"), 1);
    assert_eq!(upstream.calls_for("gpt-4.1-mini"), 1);
    // Two attempts of 300 ms, not the upstream's 2 s.
    assert!(took < Duration::from_millis(1_500), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_times_out_is_retried_on_the_next() {
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    upstream.set_fault("gpt-4o-mini", UpstreamFault::Delay(Duration::from_secs(2)));
    let proxy = Proxy::start(&Env::new(&upstream).zion(&zion).fast_failures()).await;

    // Until gpt-4o-mini is chosen first once, every request is served by
    // gpt-4.1-mini, directly or after gpt-4o-mini's 300 ms timeout.
    let mut requests = 0;
    while upstream.calls_for("gpt-4o-mini") == 0 {
        requests += 1;
        assert!(requests <= 40, "gpt-4o-mini never chosen");
        let started = Instant::now();
        let reply = proxy.chat(&chat_body(Some("simple"))).await;
        reply.assert_served("simple", "gpt-4.1-mini");
        if upstream.calls_for("gpt-4o-mini") == 1 {
            assert!(started.elapsed() >= Duration::from_millis(300));
            assert!(started.elapsed() < Duration::from_millis(1_500));
        }
    }
    let last = upstream.requests();
    let n = last.len();
    assert_eq!(last[n - 2].model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(last[n - 1].model.as_deref(), Some("gpt-4.1-mini"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_retryable_upstream_answers_pass_through_as_they_are() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_fault("gpt-4o", status(400));
    upstream.set_fault(
        "gpt-4.1",
        UpstreamFault::Status {
            status: 429,
            retry_after: Some(7),
        },
    );
    let proxy = Proxy::start(&Env::new(&upstream)).await;

    // 400 from the upstream: its own body, not retried.
    let reply = proxy.chat(&chat_body(Some("moderate"))).await;
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.json["error"]["code"],
        "mock_error",
        "{}",
        reply.text()
    );
    assert_eq!(reply.model(), Some("gpt-4o"));
    assert_eq!(reply.tier(), Some("moderate"));
    assert_eq!(upstream.calls_for("gpt-4o"), 1);

    // 429 is retryable; with no second model the last attempt answers 429
    // `rate_limited` with the provider's Retry-After, so an SDK backs off.
    let reply = proxy.chat(&chat_body(Some("complex"))).await;
    reply.assert_error(429, "rate_limited");
    assert_eq!(reply.retry_after(), 7);
    assert_eq!(reply.model(), Some("gpt-4.1"));
    assert_eq!(upstream.calls_for("gpt-4.1"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tier_missing_or_empty_in_the_config_is_503_tier_unavailable() {
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    let mut config = zion_config(&[("simple", &["gpt-4o-mini"]), ("complex", &[])]);
    assert_eq!(config["tiers"]["complex"]["models"], json!([]));
    config["tiers"].as_object_mut().unwrap().remove("moderate");
    zion.set_config(config);
    let proxy = Proxy::start(&Env::new(&upstream).zion(&zion)).await;

    for tier in ["complex", "moderate"] {
        let reply = proxy.chat(&chat_body(Some(tier))).await;
        reply.assert_error(503, "tier_unavailable");
        assert_eq!(reply.tier(), Some(tier));
    }
    // The rest of the config is in use.
    proxy
        .chat(&chat_body(Some("simple")))
        .await
        .assert_served("simple", "gpt-4o-mini");
    assert_eq!(upstream.total_calls(), 1);
}

/// The SSE events of a body, split on blank lines.
fn events(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// The JSON `data:` of an event.
fn data(event: &str) -> Value {
    let payload = event
        .lines()
        .find_map(|l| l.strip_prefix("data:"))
        .unwrap_or_else(|| panic!("no data line: {event}"));
    serde_json::from_str(payload.trim()).unwrap_or_else(|e| panic!("{e}: {event}"))
}

async fn stream_text(proxy: &Proxy, tier: &str) -> (Reply, Vec<String>) {
    let reply = proxy.chat_stream(tier).await;
    let events = events(&reply.text());
    (reply, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_broken_or_stalled_midway_ends_with_an_sse_error_event() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_stream_chunks(3);
    upstream.set_fault("gpt-4o", UpstreamFault::BreakStreamAfter(1));
    upstream.set_fault("gpt-4.1", UpstreamFault::SlowStream(Duration::from_secs(2)));
    let proxy = Proxy::start(&Env::new(&upstream).fast_failures()).await;

    // Broken after the first piece.
    let (reply, events) = stream_text(&proxy, "moderate").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.model(), Some("gpt-4o"));
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(
        data(&events[0])["choices"][0]["delta"]["content"],
        "Hello from gpt-4o (1/3) "
    );
    let error = data(&events[1]);
    assert_eq!(error["error"]["code"], "upstream_failed", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("broke")
    );
    assert!(!reply.text().contains("[DONE]"));

    // Stalled beyond the idle timeout (300 ms) after the first piece.
    let started = Instant::now();
    let (reply, events) = stream_text(&proxy, "complex").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.model(), Some("gpt-4.1"));
    assert_eq!(events.len(), 2, "{events:?}");
    let error = data(&events[1]);
    // The idle timeout is Sentinel's own: `upstream_timeout`, as the contract reserves it.
    assert_eq!(error["error"]["code"], "upstream_timeout", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("idle timeout")
    );
    assert!(
        started.elapsed() < Duration::from_millis(1_800),
        "the idle timeout did not cut the stall"
    );

    // A stream never restarts on another model once it began: one call each.
    assert_eq!(upstream.calls_for("gpt-4o"), 1);
    assert_eq!(upstream.calls_for("gpt-4.1"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_failing_its_health_checks_is_kept_out_until_it_recovers() {
    let upstream = MockUpstream::start().await.unwrap();
    // 503: the provider says it cannot serve (a 404 or 500 would be inconclusive).
    upstream.set_health_fault(Some(status(503)));
    let env = Env::new(&upstream)
        .fast_failures()
        .set("SENTINEL_HEALTH_CHECKS", "true")
        .set("SENTINEL_HEALTH_INTERVAL_SECS", "1");
    let proxy = Proxy::start(&env).await;

    // The first probe (at start-up) fails: the provider's models are out.
    let down = eventually(Duration::from_secs(3), || async {
        upstream.health_calls() >= 1 && proxy.chat(&chat_body(Some("moderate"))).await.status == 503
    })
    .await;
    assert!(down, "the failed probe did not take the provider out");
    let reply = proxy.chat(&chat_body(Some("moderate"))).await;
    reply.assert_error(503, "all_models_backing_off");
    assert!(reply.retry_after() >= 1);
    let before = upstream.calls_for("gpt-4o");

    // The provider heals: the next probe brings its models back.
    upstream.set_health_fault(None);
    let up = eventually(Duration::from_secs(5), || async {
        proxy.chat(&chat_body(Some("moderate"))).await.status == 200
    })
    .await;
    assert!(up, "the provider did not come back");
    assert_eq!(upstream.calls_for("gpt-4o"), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_connection_or_an_unreachable_provider_is_502_upstream_failed() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_fault("gpt-4o", UpstreamFault::Reset);
    let proxy = Proxy::start(&Env::new(&upstream)).await;
    let reply = proxy.chat(&chat_body(Some("moderate"))).await;
    reply.assert_error(502, "upstream_failed");
    assert_eq!(reply.model(), Some("gpt-4o"));
    assert_eq!(upstream.calls_for("gpt-4o"), 1);

    // Nothing listens at the provider's address: a connect error.
    let closed = sentinel_testkit::ClosedPort::new().unwrap();
    let url = format!("http://{}/v1", closed.addr());
    let proxy = Proxy::start(&Env::new(&upstream).set("OPENAI_BASE_URL", &url)).await;
    let started = Instant::now();
    let reply = proxy.chat(&chat_body(Some("complex"))).await;
    reply.assert_error(502, "upstream_failed");
    assert_eq!(reply.model(), Some("gpt-4.1"));
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_without_the_probe_path_stays_in() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_health_fault(Some(status(404)));
    let env = Env::new(&upstream)
        .fast_failures()
        .set("SENTINEL_HEALTH_CHECKS", "true")
        .set("SENTINEL_HEALTH_INTERVAL_SECS", "1");
    let proxy = Proxy::start(&env).await;
    let probed = eventually(Duration::from_secs(4), || async {
        upstream.health_calls() >= 2
    })
    .await;
    assert!(probed, "the provider was not probed");
    let reply = proxy.chat(&chat_body(Some("moderate"))).await;
    assert_eq!(reply.status, 200, "a 404 probe took the provider out");
}
