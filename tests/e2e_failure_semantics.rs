//! Failures a provider commits after it said `200`, over real sockets: a
//! stream that stalls, breaks or errs before its first token is retried
//! on the next model; one that fails after its first token counts against
//! the model; a client that goes away does not; a 429 on the last attempt
//! is the client's 429 with the provider's `Retry-After`.
//!
//! The tiers here have a cheap model `a` (relative cost 1) and a dear one
//! `b` (cost 10): `a` is the first choice about 10 times in 11, so a test
//! that needs `a` tried sends a few requests (the chance that none starts
//! on `a` is below one in a million). Each test names its models after
//! itself: the metrics recorder is the process's, shared by the tests that
//! run at the same time.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::time::Duration;

use sentinel_testkit::{MockUpstream, MockZion, RetryAfter, UpstreamFault};
use serde_json::{Value, json};
use support::{Env, Proxy, Reply, chat_body, eventually, metric};

/// The models `a` and `b` of a test.
fn models(test: &str) -> (String, String) {
    (format!("a-{test}"), format!("b-{test}"))
}

/// Every tier: `a` (cost 1) and `b` (cost 10), or `a` alone.
fn config(test: &str, with_b: bool) -> Value {
    let (a, b) = models(test);
    let mut models = vec![json!({ "provider": "openai", "model": a, "relative_cost": 1 })];
    if with_b {
        models.push(json!({ "provider": "openai", "model": b, "relative_cost": 10 }));
    }
    let tier = json!({ "models": models });
    json!({ "version": "semantics", "tiers": { "simple": tier, "moderate": tier, "complex": tier } })
}

/// A proxy over `upstream` with the tiers of [`config`], timeouts of
/// 300 ms, and breakers that open at `threshold` failures for 30 s.
async fn proxy(upstream: &MockUpstream, zion: &MockZion, threshold: u32) -> Proxy {
    Proxy::start(&env(upstream, zion, threshold)).await
}

fn env(upstream: &MockUpstream, zion: &MockZion, threshold: u32) -> Env {
    Env::new(upstream)
        .zion(zion)
        .set("SENTINEL_FAILURE_THRESHOLD", &threshold.to_string())
        .set("SENTINEL_FIRST_BYTE_TIMEOUT_MS", "300")
        .set("SENTINEL_FIRST_TOKEN_TIMEOUT_MS", "300")
        .set("SENTINEL_STREAM_IDLE_TIMEOUT_MS", "300")
}

async fn stream(proxy: &Proxy) -> Reply {
    proxy.chat_stream("simple").await
}

/// Whether an SSE answer is complete: content, then `[DONE]`, no error.
fn complete(reply: &Reply) -> bool {
    let text = reply.text();
    text.contains("\"content\"")
        && text.ends_with("data: [DONE]\n\n")
        && !text.contains("\"error\"")
}

fn opened(metrics: &str, model: &str) -> f64 {
    metric(
        metrics,
        "sentinel_breaker_transitions_total",
        &[("name", &format!("openai/{model}")), ("to", "open")],
    )
    .unwrap_or(0.0)
}

async fn a_fault_before_the_first_token_is_retried(test: &str, fault: UpstreamFault) {
    let (a, b) = models(test);
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    zion.set_config(config(test, true));
    upstream.set_fault(&a, fault);
    let proxy = proxy(&upstream, &zion, 100).await;
    for _ in 0..6 {
        let reply = stream(&proxy).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(
            reply.model(),
            Some(b.as_str()),
            "the head named the model that answered"
        );
        assert!(complete(&reply), "{}", reply.text());
    }
    assert!(upstream.calls_for(&a) >= 1, "a was tried");
    assert_eq!(upstream.calls_for(&b), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_stalls_before_its_first_token_is_retried_on_the_next_model() {
    a_fault_before_the_first_token_is_retried(
        "stall-first",
        UpstreamFault::FirstTokenDelay(Duration::from_secs(5)),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_breaks_before_its_first_token_is_retried_on_the_next_model() {
    a_fault_before_the_first_token_is_retried("break-first", UpstreamFault::BreakStreamAfter(0))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_errs_before_its_first_token_is_retried_on_the_next_model() {
    a_fault_before_the_first_token_is_retried("err-first", UpstreamFault::ErrorEvent(0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_ends_before_its_first_token_is_retried_on_the_next_model() {
    a_fault_before_the_first_token_is_retried("end-first", UpstreamFault::NoDone(0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_other_model_a_first_token_timeout_is_504() {
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    zion.set_config(config("alone-504", false));
    let (a, _) = models("alone-504");
    upstream.set_fault(&a, UpstreamFault::FirstTokenDelay(Duration::from_secs(5)));
    let proxy = proxy(&upstream, &zion, 100).await;
    let reply = stream(&proxy).await;
    reply.assert_error(504, "upstream_timeout");
}

/// Failures after the first token reach the client as the SSE error event
/// (continuation off: `e2e_continuation.rs` covers it on) and count
/// against the model: after `threshold` of them it is kept out.
async fn failures_after_the_first_token_count(test: &str, fault: UpstreamFault) {
    let (a, _) = models(test);
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    zion.set_config(config(test, true));
    upstream.set_fault(&a, fault);
    let proxy =
        Proxy::start(&env(&upstream, &zion, 2).set("SENTINEL_STREAM_CONTINUATION", "false")).await;
    let mut broken = 0;
    for _ in 0..20 {
        let reply = stream(&proxy).await;
        assert_eq!(reply.status, 200);
        if reply.model() == Some(a.as_str()) {
            assert!(
                !complete(&reply),
                "never a broken answer presented as complete"
            );
            assert!(reply.text().contains("\"error\""), "{}", reply.text());
            broken += 1;
        } else {
            assert!(complete(&reply), "{}", reply.text());
        }
    }
    // Two failures open `a` for 30 s: every later stream goes to `b`.
    assert_eq!(broken, 2, "a kept getting streams after it failed twice");
    assert_eq!(upstream.calls_for(&a), 2);
    assert_eq!(opened(&proxy.metrics().await, &a), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_after_its_first_token_counts_against_the_model() {
    failures_after_the_first_token_count("cut-after", UpstreamFault::BreakStreamAfter(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_stalls_after_its_first_token_counts_against_the_model() {
    failures_after_the_first_token_count("stall-after", UpstreamFault::StallAfter(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_event_after_the_first_token_counts_against_the_model() {
    failures_after_the_first_token_count("err-after", UpstreamFault::ErrorEvent(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_ends_without_its_end_marker_is_a_failure_not_an_answer() {
    failures_after_the_first_token_count("no-done", UpstreamFault::NoDone(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_is_not_counted_and_its_upstream_call_is_cancelled() {
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    zion.set_config(config("hang-up", false));
    let (a, _) = models("hang-up");
    upstream.set_stream_chunks(50);
    upstream.set_chunk_delay(Duration::from_millis(100));
    let proxy = proxy(&upstream, &zion, 1).await;
    for _ in 0..3 {
        let mut body = chat_body(Some("simple"));
        body["stream"] = json!(true);
        let mut response = proxy
            .post_json("/v1/chat/completions", &body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        // The first chunk, then the client hangs up.
        assert!(response.chunk().await.unwrap().is_some());
        drop(response);
        assert!(
            eventually(Duration::from_secs(10), || async {
                upstream.open_streams() == 0
            })
            .await,
            "the upstream stream was not cancelled"
        );
    }
    // Threshold 1, three hang-ups: the model was never opened.
    assert_eq!(opened(&proxy.metrics().await, &a), 0.0);
    let reply = stream(&proxy).await;
    assert!(complete(&reply));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_on_the_last_attempt_is_429_with_the_providers_retry_after() {
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    zion.set_config(config("rate", false));
    let (a, _) = models("rate");
    let proxy = proxy(&upstream, &zion, 100).await;

    upstream.set_fault_times(
        &a,
        UpstreamFault::rate_limited(Some(RetryAfter::Seconds(9))),
        1,
    );
    let reply = proxy.chat(&chat_body(Some("simple"))).await;
    reply.assert_error(429, "rate_limited");
    assert_eq!(reply.retry_after(), 9);

    // An HTTP-date is passed on in seconds.
    upstream.set_fault_times(
        &a,
        UpstreamFault::rate_limited(Some(RetryAfter::after(Duration::from_secs(120)))),
        1,
    );
    let reply = proxy.chat(&chat_body(Some("simple"))).await;
    reply.assert_error(429, "rate_limited");
    let wait = reply.retry_after();
    assert!((100..=121).contains(&wait), "{wait}");

    // Without one, none.
    upstream.set_fault_times(&a, UpstreamFault::rate_limited(None), 1);
    let reply = proxy.chat(&chat_body(Some("simple"))).await;
    reply.assert_error(429, "rate_limited");
    assert_eq!(reply.header("retry-after"), None);
}

/// A context-length failure, its `400` sent with a `Content-Length` or
/// chunked (`chunked`), is tried once more on the largest window.
async fn a_context_length_failure_is_retried(chunked: bool) {
    let name = |m: &str| {
        if chunked {
            format!("{m}-chunked")
        } else {
            m.to_owned()
        }
    };
    let (small, mid, large) = (name("small-ctx"), name("mid-ctx"), name("large-ctx"));
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_chunked_errors(chunked);
    let zion = MockZion::start().await.unwrap();
    // Two small models the prompt does not fit (cheap, so chosen first most
    // of the time) and a large, dear one.
    let models = json!([
        { "provider": "openai", "model": small, "relative_cost": 1, "context_window": 8000 },
        { "provider": "openai", "model": mid, "relative_cost": 1, "context_window": 32000 },
        { "provider": "openai", "model": large, "relative_cost": 10, "context_window": 200000 }
    ]);
    let tier = json!({ "models": models });
    zion.set_config(
        json!({ "version": "ctx", "tiers": { "simple": tier, "moderate": tier, "complex": tier } }),
    );
    upstream.set_fault(&small, UpstreamFault::context_length_exceeded());
    upstream.set_fault(&mid, UpstreamFault::context_length_exceeded());
    let proxy = proxy(&upstream, &zion, 1).await;
    for _ in 0..8 {
        let reply = proxy.chat(&chat_body(Some("simple"))).await;
        // The weighted next model would often be the other small one, which
        // fails too: only the largest window answers every time.
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.model(), Some(large.as_str()));
    }
    assert_eq!(upstream.calls_for(&large), 8);
    assert!(upstream.calls_for(&small) + upstream.calls_for(&mid) >= 1);
    // Not the models' fault: threshold 1, and neither opened.
    let metrics = proxy.metrics().await;
    assert_eq!(opened(&metrics, &small), 0.0);
    assert_eq!(opened(&metrics, &mid), 0.0);

    // With no larger model left to try, the provider's own 400 stands.
    upstream.set_fault(&large, UpstreamFault::context_length_exceeded());
    let reply = proxy.chat(&chat_body(Some("simple"))).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json["error"]["code"], "context_length_exceeded");
    assert_eq!(
        reply.json["error"]["message"],
        MockUpstream::CONTEXT_LENGTH_MESSAGE
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_length_failure_is_tried_once_more_on_the_largest_window() {
    a_context_length_failure_is_retried(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_context_length_failure_is_read_and_retried_too() {
    a_context_length_failure_is_retried(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_chunked_400_passes_through_whole() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_chunked_errors(true);
    let zion = MockZion::start().await.unwrap();
    zion.set_config(config("long-400", true));
    let (a, b) = models("long-400");
    // Longer than the 64 KiB Sentinel reads to look for a context-length
    // code: what was read and the rest reach the client as one body.
    let message = "x".repeat(100_000);
    for model in [&a, &b] {
        upstream.set_fault(
            model,
            UpstreamFault::Error {
                status: 400,
                error_type: Some("invalid_request_error".into()),
                code: Some("context_length_exceeded".into()),
                param: None,
                message: message.clone(),
                retry_after: None,
            },
        );
    }
    let proxy = proxy(&upstream, &zion, 1).await;
    let reply = proxy.chat(&chat_body(Some("simple"))).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json["error"]["message"], message.as_str());
    assert_eq!(upstream.total_calls(), 1, "not read, so not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_before_the_first_token_is_charged_nothing() {
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    zion.set_config(config("leaves-early", false));
    let (a, _) = models("leaves-early");
    upstream.set_fault(&a, UpstreamFault::FirstTokenDelay(Duration::from_secs(2)));
    let proxy = Proxy::start(
        &Env::new(&upstream)
            .zion(&zion)
            .set("SENTINEL_FIRST_TOKEN_TIMEOUT_MS", "10000"),
    )
    .await;
    let mut body = chat_body(Some("simple"));
    body["stream"] = json!(true);
    let request = proxy.post_json("/v1/chat/completions", &body).send();
    // Gone while Sentinel holds the head for the first token.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), request)
            .await
            .is_err()
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            upstream.calls_for(&a) == 1 && upstream.open_streams() == 0
        })
        .await,
        "the upstream stream was not cancelled"
    );
    let metrics = proxy.metrics().await;
    let counted = |name: &str| metric(&metrics, name, &[("model", a.as_str())]).unwrap_or(0.0);
    assert_eq!(counted("sentinel_usage_missing_total"), 0.0);
    assert_eq!(counted("sentinel_tokens_total"), 0.0);
    assert_eq!(opened(&metrics, &a), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_filter_refusal_passes_through_without_a_retry() {
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    zion.set_config(config("filter", true));
    let (a, b) = models("filter");
    upstream.set_fault(&a, UpstreamFault::content_filter());
    upstream.set_fault(&b, UpstreamFault::content_filter());
    let proxy = proxy(&upstream, &zion, 1).await;
    let reply = proxy.chat(&chat_body(Some("simple"))).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json["error"]["code"], "content_filter");
    assert_eq!(upstream.total_calls(), 1, "no retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_recovers_takes_traffic_again_within_a_probe_interval() {
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    zion.set_config(config("recover", false));
    let (a, _) = models("recover");
    let proxy = Proxy::start(
        &Env::new(&upstream)
            .zion(&zion)
            .set("SENTINEL_FAILURE_THRESHOLD", "1")
            .set("SENTINEL_MODEL_PROBE_INTERVAL_SECS", "1"),
    )
    .await;

    // Down: the first request opens the breaker for the default 30 s.
    upstream.down(&a);
    proxy
        .chat(&chat_body(Some("simple")))
        .await
        .assert_error(502, "upstream_failed");
    let opened_at = std::time::Instant::now();
    // Steady traffic while it is down: refused without calling it; the
    // background probes alone reach it, about once a second.
    for _ in 0..10 {
        proxy
            .chat(&chat_body(Some("simple")))
            .await
            .assert_error(503, "all_models_backing_off");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let probes: Vec<_> = upstream
        .requests()
        .into_iter()
        .filter(|r| r.model.as_deref() == Some(a.as_str()))
        .skip(1)
        .collect();
    assert!(!probes.is_empty(), "the open model was probed");
    assert!(
        probes.len() <= 4,
        "no hammering: {} probes in 3 s",
        probes.len()
    );
    for probe in &probes {
        assert_eq!(probe.body["max_tokens"], 1, "a minimal request");
        assert_eq!(probe.body["messages"].as_array().map(Vec::len), Some(1));
    }
    for pair in probes.windows(2) {
        assert!(pair[1].at - pair[0].at >= Duration::from_millis(900));
    }

    // Back up: traffic returns within about one probe interval, long
    // before the 30 s backoff would have ended.
    upstream.up(&a);
    let back = eventually(Duration::from_secs(10), || async {
        proxy.chat(&chat_body(Some("simple"))).await.status == 200
    })
    .await;
    assert!(back, "the recovered model took no traffic");
    assert!(opened_at.elapsed() < Duration::from_secs(20));
    let metrics = proxy.metrics().await;
    assert!(
        metric(
            &metrics,
            "sentinel_model_probes_total",
            &[("model", a.as_str()), ("result", "up")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    assert!(
        metric(
            &metrics,
            "sentinel_probe_tokens_total",
            &[("model", a.as_str())]
        )
        .unwrap_or(0.0)
            > 0.0,
        "probe tokens are counted apart"
    );
}

/// The scenario at full scale, default breaker and probe settings:
/// a model down for 60 s under steady traffic. Before the early probes it
/// was opened at 8 s, failed the real-request probe at 40 s and stayed out
/// until about 100 s, 40 s after it recovered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_down_for_a_minute_takes_traffic_again_within_a_probe_interval() {
    const OUTAGE: Duration = Duration::from_secs(60);
    const PROBE_INTERVAL: Duration = Duration::from_secs(10);
    let test = "minute";
    let (a, b) = models(test);
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    zion.set_config(config(test, true));
    // Defaults: threshold 3, backoff 30 s doubling, probes every 10 s.
    let proxy = Proxy::start(&Env::new(&upstream).zion(&zion)).await;
    async fn steady(proxy: &Proxy) -> Reply {
        let reply = proxy.chat(&chat_body(Some("simple"))).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        tokio::time::sleep(Duration::from_millis(200)).await;
        reply
    }
    // Traffic reaches `a` before the outage.
    let mut served_by_a = false;
    for _ in 0..20 {
        served_by_a |= steady(&proxy).await.model() == Some(a.as_str());
    }
    assert!(served_by_a);

    upstream.down(&a);
    let down_at = tokio::time::Instant::now();
    let before = upstream.calls_for(&a);
    while down_at.elapsed() < OUTAGE {
        // Every request is answered: `b` takes the retries and the traffic.
        let reply = steady(&proxy).await;
        assert_eq!(reply.model(), Some(b.as_str()));
    }
    let during: Vec<_> = upstream
        .requests()
        .into_iter()
        .filter(|r| r.model.as_deref() == Some(a.as_str()))
        .skip(before)
        .collect();
    let timeline: Vec<String> = during
        .iter()
        .map(|r| {
            let kind = if r.body["max_tokens"] == 1 {
                "probe"
            } else {
                "request"
            };
            format!("{kind} at {:.1} s", (r.at - down_at).as_secs_f64())
        })
        .collect();
    // Three failures open it; then background probes (about one per
    // interval) and at most a few real requests at the end of a backoff.
    assert!(
        (3..=12).contains(&during.len()),
        "{} calls to the down model in a minute: {timeline:?}",
        during.len()
    );
    // Background probes about one interval apart (counted from a probe's
    // end or from a request's probe); real requests reach it only when its
    // backoff (30 s) ends, so at most twice in the minute.
    let probes: Vec<_> = during
        .iter()
        .filter(|r| r.body["max_tokens"] == 1)
        .collect();
    assert!(probes.len() >= 3, "probed while down: {timeline:?}");
    for pair in probes.windows(2) {
        assert!(
            pair[1].at - pair[0].at >= PROBE_INTERVAL - Duration::from_secs(1),
            "no hammering while open: {timeline:?}"
        );
    }
    let requests = during.len() - probes.len();
    assert!(
        requests <= 3 + 2,
        "real requests reached the open model: {timeline:?}"
    );

    upstream.up(&a);
    let up_at = tokio::time::Instant::now();
    loop {
        if steady(&proxy).await.model() == Some(a.as_str()) {
            break;
        }
        assert!(
            up_at.elapsed() < PROBE_INTERVAL + Duration::from_secs(5),
            "no traffic on the recovered model within a probe interval"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_charged_only_to_the_model_that_answered() {
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    let (a, b) = models("charged");
    let priced = |model: &str, cost: i64| {
        json!({ "provider": "openai", "model": model, "relative_cost": cost,
                "pricing": { "input_per_mtok_usd": 1.0, "output_per_mtok_usd": 2.0 } })
    };
    let tier = json!({ "models": [priced(&a, 1), priced(&b, 10)] });
    zion.set_config(json!({ "version": "charged", "tiers": { "simple": tier, "moderate": tier, "complex": tier } }));
    upstream.set_fault(&a, UpstreamFault::FirstTokenDelay(Duration::from_secs(5)));
    let proxy = proxy(&upstream, &zion, 100).await;
    for _ in 0..4 {
        let reply = stream(&proxy).await;
        assert!(complete(&reply));
        let reply = proxy.chat(&chat_body(Some("simple"))).await;
        assert_eq!(reply.status, 200);
    }
    assert!(upstream.calls_for(&a) >= 1);
    let metrics = proxy.metrics().await;
    let tokens =
        |model: &str| metric(&metrics, "sentinel_tokens_total", &[("model", model)]).unwrap_or(0.0);
    let per_answer = (MockUpstream::PROMPT_TOKENS + MockUpstream::COMPLETION_TOKENS) as f64;
    // Eight answers from `b`, each charged once (streams through the usage
    // chunk Sentinel asked for); nothing from the stalled `a`.
    assert_eq!(tokens(&b), 8.0 * per_answer);
    assert_eq!(tokens(&a), 0.0);
    assert_eq!(
        metric(
            &metrics,
            "sentinel_cost_micro_usd_total",
            &[("model", a.as_str())]
        )
        .unwrap_or(0.0),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_answer_resets_the_failure_count() {
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    zion.set_config(config("consecutive", false));
    let (a, _) = models("consecutive");
    let proxy = proxy(&upstream, &zion, 3).await;
    let fail = UpstreamFault::Status {
        status: 500,
        retry_after: None,
    };
    // Three failures, but not in a row: a JSON answer (a body of known
    // length, which the server stops polling at its last byte) in between.
    upstream.set_fault_times(&a, fail.clone(), 1);
    proxy
        .chat(&chat_body(Some("simple")))
        .await
        .assert_error(502, "upstream_failed");
    assert_eq!(proxy.chat(&chat_body(Some("simple"))).await.status, 200);
    upstream.set_fault_times(&a, fail, 2);
    for _ in 0..2 {
        proxy
            .chat(&chat_body(Some("simple")))
            .await
            .assert_error(502, "upstream_failed");
    }
    assert_eq!(opened(&proxy.metrics().await, &a), 0.0, "not consecutive");
    assert_eq!(proxy.chat(&chat_body(Some("simple"))).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_model_is_left_alone_for_its_retry_after() {
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    zion.set_config(config("no-hammer", false));
    let (a, _) = models("no-hammer");
    let proxy = Proxy::start(
        &Env::new(&upstream)
            .zion(&zion)
            .set("SENTINEL_FAILURE_THRESHOLD", "1")
            .set("SENTINEL_BACKOFF_INITIAL_SECS", "1")
            .set("SENTINEL_MODEL_PROBE_INTERVAL_SECS", "1"),
    )
    .await;
    upstream.set_fault(
        &a,
        UpstreamFault::rate_limited(Some(RetryAfter::Seconds(30))),
    );
    let reply = proxy.chat(&chat_body(Some("simple"))).await;
    reply.assert_error(429, "rate_limited");
    assert_eq!(reply.retry_after(), 30);
    // Steady traffic for 2.5 s: neither requests nor background probes
    // reach the model before its Retry-After (30 s), though the backoff
    // alone (1 s) and the probe interval (1 s) would have allowed it.
    for _ in 0..10 {
        let reply = proxy.chat(&chat_body(Some("simple"))).await;
        reply.assert_error(503, "all_models_backing_off");
        assert!(reply.retry_after() >= 20, "{}", reply.retry_after());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(upstream.calls_for(&a), 1, "no hammering");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_event_after_the_first_token_passes_as_the_provider_sent_it() {
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    zion.set_config(config("malformed", false));
    let (a, _) = models("malformed");
    upstream.set_fault(&a, UpstreamFault::MalformedEvent(1));
    let proxy = proxy(&upstream, &zion, 100).await;
    let reply = stream(&proxy).await;
    assert_eq!(reply.status, 200);
    let text = reply.text();
    // Passed through as sent (documented), and the answer goes on to its end.
    assert!(text.contains("data: {not json\n\n"), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
}
