//! The proxy's default breaker, through the routing layer it builds, with
//! paused time: a model opens after 3 failures in a row, waits 30 s, doubling
//! up to 300 s, and a success starts the schedule over at 30 s.
//!
//! The layer is built from the proxy's default settings the way
//! `sentinel_proxy::start` builds it; the inner service is a handler that
//! answers as the test tells it and counts its calls.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::response::IntoResponse;
use axum::routing::post;
use http::StatusCode;
use http_body_util::BodyExt;
use sentinel_core::{RawTierConfig, StaticConfig, TierConfig};
use sentinel_layer::TierRoutingLayer;
use sentinel_proxy::settings::{Cli, Settings};
use serde_json::{Value, json};
use tower::ServiceExt;

/// A proxy-shaped app around a handler whose status the test sets.
struct App {
    router: Router,
    status: Arc<AtomicU16>,
    calls: Arc<AtomicUsize>,
}

/// What one request got.
struct Got {
    status: StatusCode,
    retry_after: Option<u64>,
    code: Option<String>,
    /// Whether it reached the model (the inner service).
    reached: bool,
}

impl App {
    fn new(settings: &Settings) -> Self {
        let raw: RawTierConfig = serde_json::from_value(json!({ "tiers": {
            "moderate": { "models": [ { "provider": "openai", "model": "solo", "relative_cost": 1 } ] }
        } }))
        .unwrap();
        let config = StaticConfig::new(TierConfig::validate(raw).unwrap());
        // As `sentinel_proxy::start` builds it.
        let layer = TierRoutingLayer::builder(config)
            .failure_threshold(settings.failure_threshold)
            .backoff(settings.backoff_initial, settings.backoff_max)
            .body_limit(settings.body_limit)
            .body_timeout(settings.client.body_read_timeout)
            .stream_usage(true)
            .build()
            .unwrap();
        let status = Arc::new(AtomicU16::new(200));
        let calls = Arc::new(AtomicUsize::new(0));
        let handler = {
            let (status, calls) = (status.clone(), calls.clone());
            move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                StatusCode::from_u16(status.load(Ordering::SeqCst))
                    .unwrap()
                    .into_response()
            }
        };
        App {
            router: Router::new()
                .route("/v1/chat/completions", post(handler))
                .layer(layer),
            status,
            calls,
        }
    }

    /// One request of tier `moderate`, the model answering `upstream`.
    async fn send(&self, upstream: u16) -> Got {
        self.status.store(upstream, Ordering::SeqCst);
        let before = self.calls.load(Ordering::SeqCst);
        let request = http::Request::post("/v1/chat/completions")
            .header("content-type", "application/json")
            .body(Body::from(
                json!({ "tier": "moderate", "messages": [] }).to_string(),
            ))
            .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().parse().unwrap());
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Got {
            status,
            retry_after,
            code: body["error"]["code"].as_str().map(str::to_owned),
            reached: self.calls.load(Ordering::SeqCst) > before,
        }
    }

    /// A request the model would fail: asserts it reached the model.
    async fn fails(&self) {
        let got = self.send(500).await;
        assert!(got.reached, "the model was open");
        assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    }

    /// A request refused because the model is open: its `Retry-After`.
    async fn refused(&self) -> u64 {
        let got = self.send(200).await;
        assert!(!got.reached, "the model was not open");
        assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(got.code.as_deref(), Some("all_models_backing_off"));
        got.retry_after.expect("a Retry-After")
    }
}

fn default_settings() -> Settings {
    Settings::load(&Cli::default(), &|_| None).unwrap()
}

#[test]
fn the_defaults_are_three_failures_and_30s_doubling_to_300s() {
    let s = default_settings();
    assert_eq!(s.failure_threshold, 3);
    assert_eq!(s.backoff_initial, Duration::from_secs(30));
    assert_eq!(s.backoff_max, Duration::from_secs(300));
}

#[tokio::test(start_paused = true)]
async fn the_default_schedule_doubles_from_30s_to_300s_and_a_success_starts_it_over() {
    let app = App::new(&default_settings());
    // Two failures in a row leave it closed; the third opens it.
    for _ in 0..3 {
        app.fails().await;
    }

    // Each wait ends with one probe, which fails and doubles the wait.
    let mut waits = Vec::new();
    for _ in 0..7 {
        let wait = app.refused().await;
        waits.push(wait);
        tokio::time::advance(Duration::from_secs(wait - 1)).await;
        assert_eq!(app.refused().await, 1, "open until its wait ends");
        tokio::time::advance(Duration::from_secs(1)).await;
        if waits.len() < 7 {
            app.fails().await;
        }
    }
    assert_eq!(waits, [30, 60, 120, 240, 300, 300, 300]);

    // The probe succeeds: closed, and the count starts over.
    let got = app.send(200).await;
    assert!(got.reached);
    assert_eq!(got.status, StatusCode::OK);
    for _ in 0..3 {
        app.fails().await;
    }
    assert_eq!(app.refused().await, 30, "back to 30 s after a success");
}
