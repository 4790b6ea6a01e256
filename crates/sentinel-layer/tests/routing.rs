//! Tier routing through an axum `Router`: tier sources, errors, the body
//! rewrite, headers, pass-through routes and the weighted choice.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body;
use http::StatusCode;
use sentinel_core::{ConfigFuture, ConfigUnavailable, TierConfigSource};
use sentinel_layer::TierRoutingLayer;
use serde_json::json;
use support::{chat, chat_with, echo_app, messages, send, source};

fn app() -> axum::Router {
    echo_app(
        TierRoutingLayer::builder(source())
            .rng_seed(1)
            .build()
            .unwrap(),
    )
}

#[tokio::test]
async fn the_tier_comes_from_the_body_the_header_or_the_model_alias() {
    let app = app();
    let r = send(
        &app,
        chat(json!({ "tier": "moderate", "messages": messages() })),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["model"], "mid");
    assert_eq!(r.header("x-sentinel-model"), Some("mid"));
    assert_eq!(r.header("x-sentinel-tier"), Some("moderate"));

    let r = send(
        &app,
        chat_with(
            json!({ "messages": messages() }),
            &[("x-sentinel-tier", "complex")],
        ),
    )
    .await;
    assert_eq!(r.body["model"], "big");
    assert_eq!(r.header("x-sentinel-tier"), Some("complex"));

    let r = send(
        &app,
        chat(json!({ "model": "complex", "messages": messages() })),
    )
    .await;
    assert_eq!(r.body["model"], "big");

    // All three agreeing is fine.
    let r = send(
        &app,
        chat_with(
            json!({ "tier": "moderate", "model": "moderate", "messages": messages() }),
            &[("x-sentinel-tier", "moderate")],
        ),
    )
    .await;
    assert_eq!(r.body["model"], "mid");

    // None: simple.
    let r = send(&app, chat(json!({ "messages": messages() }))).await;
    assert_eq!(r.header("x-sentinel-tier"), Some("simple"));
    assert_eq!(r.body["requested_tier"], "simple");
}

#[tokio::test]
async fn the_body_is_rewritten_for_the_chosen_model() {
    let app = app();
    let request = json!({
        "tier": "moderate",
        "messages": messages(),
        "temperature": 0.2,
        "stream": true,
        "metadata": { "tier": "kept: nested fields are not ours" }
    });
    let r = send(&app, chat(request)).await;
    let body = &r.body["body"];
    assert_eq!(body["model"], "mid");
    assert!(body.get("tier").is_none());
    assert_eq!(body["messages"], messages());
    assert_eq!(body["temperature"], 0.2);
    assert_eq!(body["stream"], true);
    assert_eq!(body["metadata"]["tier"], "kept: nested fields are not ours");
    assert_eq!(r.body["stream"], true);
    assert_eq!(
        r.body["content_length"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap(),
        r.body["actual_length"].as_u64().unwrap()
    );
}

#[tokio::test]
async fn bad_requests_get_the_contract_error_codes() {
    let app = app();
    let cases = [
        (chat(json!({ "tier": "huge" })), 400, "invalid_tier"),
        (
            chat_with(json!({}), &[("x-sentinel-tier", "HUGE")]),
            400,
            "invalid_tier",
        ),
        (
            chat(json!({ "tier": "simple", "model": "complex" })),
            400,
            "conflicting_tier",
        ),
        (
            chat_with(
                json!({ "tier": "simple" }),
                &[("x-sentinel-tier", "moderate")],
            ),
            400,
            "conflicting_tier",
        ),
        (
            chat_with(
                json!({ "model": "simple" }),
                &[("x-sentinel-tier", "complex")],
            ),
            400,
            "conflicting_tier",
        ),
        (chat(json!({ "model": "gpt-4o" })), 400, "model_not_allowed"),
        (chat(json!(["not", "an", "object"])), 400, "invalid_json"),
        (
            chat_with(json!({}), &[("x-sentinel-session", "bad session!")]),
            400,
            "invalid_session",
        ),
        (
            chat_with(json!({}), &[("x-sentinel-session", &"x".repeat(129))]),
            400,
            "invalid_session",
        ),
    ];
    for (request, status, code) in cases {
        let r = send(&app, request).await;
        assert_eq!(r.status.as_u16(), status, "{code}: {:?}", r.body);
        assert_eq!(r.error_code(), Some(code));
        assert!(
            r.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        assert!(r.body["error"]["type"].is_string());
    }
    let r = send(
        &app,
        http::Request::post("/v1/chat/completions")
            .body(Body::from("{oops"))
            .unwrap(),
    )
    .await;
    assert_eq!(r.error_code(), Some("invalid_json"));
    let r = send(&app, chat(json!({ "tier": "huge" }))).await;
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("simple, moderate, complex")
    );
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_from_content_length_or_while_reading() {
    let app = echo_app(
        TierRoutingLayer::builder(source())
            .body_limit(64)
            .build()
            .unwrap(),
    );
    let big = json!({ "messages": "x".repeat(100) }).to_string();
    let r = send(
        &app,
        http::Request::post("/v1/chat/completions")
            .body(Body::from(big.clone()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.error_code(), Some("body_too_large"));

    // Content-Length lies low or is absent: the limit holds while reading.
    let stream = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from(big))]);
    let request = http::Request::post("/v1/chat/completions")
        .body(Body::from_stream(stream))
        .unwrap();
    let r = send(&app, request).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);

    // Decided from Content-Length alone: the body is never read.
    let never = futures_util::stream::pending::<Result<bytes::Bytes, std::io::Error>>();
    let request = http::Request::post("/v1/chat/completions")
        .header("content-length", "1000000")
        .body(Body::from_stream(never))
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), send(&app, request))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn an_empty_or_missing_tier_is_503_tier_unavailable() {
    let config = support::config_from(json!({ "tiers": {
        "simple": { "models": [ { "provider": "openai", "model": "a", "relative_cost": 1 } ] },
        "moderate": { "models": [] }
    } }));
    let app = echo_app(TierRoutingLayer::new(sentinel_core::StaticConfig::new(
        config,
    )));
    for tier in ["moderate", "complex"] {
        let r = send(&app, chat(json!({ "tier": tier }))).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.error_code(), Some("tier_unavailable"));
        assert_eq!(r.header("x-sentinel-tier"), Some(tier));
    }
    assert_eq!(send(&app, chat(json!({}))).await.status, StatusCode::OK);
}

struct Unavailable;

impl TierConfigSource for Unavailable {
    fn load(&self) -> ConfigFuture<'_> {
        Box::pin(async {
            Err(ConfigUnavailable::new(
                Duration::from_millis(2500),
                "zion is down",
            ))
        })
    }
}

#[tokio::test]
async fn no_config_is_503_with_retry_after() {
    let app = echo_app(TierRoutingLayer::new(Unavailable));
    let r = send(&app, chat(json!({}))).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.error_code(), Some("tier_config_unavailable"));
    assert_eq!(r.header("retry-after"), Some("3"));
    // Routes the layer does not act on still work.
    let r = send(
        &app,
        http::Request::get("/healthz").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn other_routes_and_methods_pass_through_untouched() {
    let app = app();
    let r = send(
        &app,
        http::Request::get("/healthz").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!((r.status, &r.raw[..]), (StatusCode::OK, &b"ok"[..]));
    assert!(r.header("x-sentinel-model").is_none());

    // Not JSON, a tier that does not exist: the layer does not look.
    let raw = r#"{"tier":"huge","model":"gpt-4o"} trailing"#;
    let r = send(
        &app,
        http::Request::post("/v1/other")
            .body(Body::from(raw))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.raw[..], raw.as_bytes());

    // GET on a routed path is not routed: axum answers 405 itself.
    let r = send(
        &app,
        http::Request::get("/v1/chat/completions")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(r.header("x-sentinel-tier").is_none());

    // Unknown paths reach the router's fallback.
    let r = send(
        &app,
        http::Request::post("/nope").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // /v1/responses is routed like chat completions.
    let request = http::Request::post("/v1/responses")
        .body(Body::from(r#"{"tier":"complex"}"#))
        .unwrap();
    assert_eq!(send(&app, request).await.body["model"], "big");
}

/// Draws many requests through a Router and returns the count per model.
async fn draw(app: &axum::Router, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let r = send(app, chat(json!({ "messages": messages() }))).await;
        *counts
            .entry(r.body["model"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    counts
}

#[tokio::test]
async fn the_weighted_choice_advances_across_requests_through_a_router() {
    // cheap: weight 1, pricey: 1/3 -> 75% / 25%.
    let n = 4000;
    for app in [app(), echo_app(TierRoutingLayer::new(source()))] {
        let counts = draw(&app, n).await;
        let cheap = counts.get("cheap").copied().unwrap_or(0) as f64 / n as f64;
        let pricey = counts.get("pricey").copied().unwrap_or(0) as f64 / n as f64;
        // Binomial sd ~ 0.7%: 4 sd of tolerance.
        assert!((cheap - 0.75).abs() < 0.03, "{counts:?}");
        assert!((pricey - 0.25).abs() < 0.03, "{counts:?}");
    }
}

#[tokio::test]
async fn a_seed_makes_the_sequence_reproducible_across_layers() {
    let a = draw(&app(), 200).await;
    let b = draw(&app(), 200).await;
    assert_eq!(a, b);
}

#[test]
fn the_builder_validates_its_settings() {
    assert!(
        TierRoutingLayer::builder(source())
            .failure_threshold(0)
            .build()
            .is_err()
    );
    assert!(
        TierRoutingLayer::builder(source())
            .failure_threshold(1)
            .build()
            .is_ok()
    );
    assert!(
        TierRoutingLayer::builder(source())
            .body_limit(0)
            .build()
            .is_err()
    );
    assert!(
        TierRoutingLayer::builder(source())
            .backoff(Duration::from_secs(10), Duration::from_secs(5))
            .build()
            .is_err()
    );
    assert!(
        TierRoutingLayer::builder(source())
            .session_wait(Duration::ZERO)
            .build()
            .is_err()
    );
    assert!(
        TierRoutingLayer::builder(source())
            .routed_paths(["no-slash"])
            .build()
            .is_err()
    );
    // `new` never fails, even outside a runtime.
    let _ = TierRoutingLayer::new(source());
}
