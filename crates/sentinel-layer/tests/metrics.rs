//! The metrics of the layer's decisions, read from a local recorder: a
//! retry, a sticky pick, an upgrade and an open model, each with the labels
//! docs/metrics.md gives them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::time::Duration;

use axum::Router;
use axum::routing::post;
use http::StatusCode;
use metrics_util::debugging::DebuggingRecorder;
use sentinel_layer::metrics as m;
use sentinel_layer::{MemorySessionStore, TierRoutingLayer};
use sentinel_testkit::metrics::Counters;
use serde_json::json;
use support::{chat_with, send, source};

/// An app whose handler fails (500) the model named in `x-fail` (`*`: any).
fn failing_app(layer: TierRoutingLayer) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(support::fail_on_header))
        .layer(layer)
}

fn request(tier: &str, headers: &[(&str, &str)]) -> http::Request<axum::body::Body> {
    chat_with(json!({ "tier": tier, "messages": [] }), headers)
}

#[tokio::test]
async fn a_retry_counts_a_retry_and_a_retry_selection_of_the_next_model() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    // `cheap` always fails (and never opens); `pricey` answers.
    let app = failing_app(
        TierRoutingLayer::builder(source())
            .failure_threshold(100)
            .rng_seed(7)
            .build()
            .unwrap(),
    );
    for _ in 0..20 {
        let r = send(&app, request("simple", &[("x-fail", "cheap")])).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("x-sentinel-model"), Some("pricey"));
    }

    let c = Counters::take(&snapshotter);
    let selected = |model: &str, reason: &str| {
        c.get(
            m::SELECTIONS,
            &[
                ("tier", "simple"),
                ("model", model),
                ("provider", "openai"),
                ("reason", reason),
            ],
        )
    };
    // Every first pick of `cheap` was retried on `pricey`, and only those.
    let retried = selected("cheap", "weighted");
    assert!(retried > 0, "cheap was never picked first");
    assert_eq!(c.get(m::RETRIES, &[("tier", "simple")]), retried);
    assert_eq!(c.total(m::RETRIES), retried);
    assert_eq!(selected("pricey", "retry"), retried);
    assert_eq!(selected("cheap", "retry"), 0);
    assert_eq!(selected("pricey", "weighted"), 20 - retried);
    // The requests count the model that answered.
    let answered = |model: &str| {
        c.get(
            m::REQUESTS,
            &[
                ("tier", "simple"),
                ("model", model),
                ("provider", "openai"),
                ("status", "2xx"),
            ],
        )
    };
    assert_eq!((answered("pricey"), answered("cheap")), (20, 0));
    assert_eq!(c.total(m::REQUESTS), 20);
}

#[tokio::test]
async fn a_sticky_pick_is_counted_as_sticky_for_the_pinned_model() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let app = support::echo_app(
        TierRoutingLayer::builder(source())
            .session_store(MemorySessionStore::new())
            .build()
            .unwrap(),
    );
    let session = [("x-sentinel-session", "sticky-1")];
    let first = send(&app, request("simple", &session)).await;
    let pinned = first.header("x-sentinel-model").unwrap().to_owned();
    for _ in 0..4 {
        let r = send(&app, request("simple", &session)).await;
        assert_eq!(r.header("x-sentinel-model"), Some(pinned.as_str()));
    }

    let c = Counters::take(&snapshotter);
    let selected = |model: &str, reason: &str| {
        c.get(
            m::SELECTIONS,
            &[
                ("tier", "simple"),
                ("model", model),
                ("provider", "openai"),
                ("reason", reason),
            ],
        )
    };
    // The new session's pick is a weighted one; the four after it, sticky.
    assert_eq!(selected(&pinned, "weighted"), 1);
    assert_eq!(selected(&pinned, "sticky"), 4);
    assert_eq!(c.total(m::SELECTIONS), 5);
    assert_eq!(c.total(m::SESSION_UPGRADES), 0);
}

#[tokio::test]
async fn an_upgrade_is_counted_as_an_upgrade_from_and_to_its_tiers() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let app = support::echo_app(
        TierRoutingLayer::builder(source())
            .session_store(MemorySessionStore::new())
            .build()
            .unwrap(),
    );
    let session = [("x-sentinel-session", "up-1")];
    send(&app, request("simple", &session)).await;
    let _ = Counters::take(&snapshotter);

    // simple -> moderate: the one model of `moderate`, pinned by an upgrade.
    let r = send(&app, request("moderate", &session)).await;
    assert_eq!(r.header("x-sentinel-model"), Some("mid"));
    // Asking for simple again stays on `mid` (sticky, in moderate), and
    // asking for moderate is no upgrade any more.
    send(&app, request("simple", &session)).await;
    send(&app, request("moderate", &session)).await;

    let c = Counters::take(&snapshotter);
    let selected = |reason: &str| {
        c.get(
            m::SELECTIONS,
            &[
                ("tier", "moderate"),
                ("model", "mid"),
                ("provider", "openai"),
                ("reason", reason),
            ],
        )
    };
    assert_eq!(selected("upgrade"), 1);
    assert_eq!(selected("sticky"), 2);
    assert_eq!(c.total(m::SELECTIONS), 3);
    assert_eq!(
        c.get(
            m::SESSION_UPGRADES,
            &[("from", "simple"), ("to", "moderate")]
        ),
        1
    );
    assert_eq!(c.total(m::SESSION_UPGRADES), 1);
}

#[tokio::test(start_paused = true)]
async fn an_open_model_is_counted_while_open_and_when_it_closes() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let app = failing_app(
        TierRoutingLayer::builder(source())
            .failure_threshold(1)
            .build()
            .unwrap(),
    );
    let transitions = |c: &Counters, to: &str| {
        c.get(
            m::BREAKER_TRANSITIONS,
            &[("scope", "model"), ("name", "openai/mid"), ("to", to)],
        )
    };

    // `mid`, the one model of `moderate`, fails once (threshold 1): open.
    let r = send(&app, request("moderate", &[("x-fail", "mid")])).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    let r = send(&app, request("moderate", &[])).await;
    assert_eq!(r.error_code(), Some("all_models_backing_off"));
    let c = Counters::take(&snapshotter);
    assert_eq!(transitions(&c, "open"), 1);
    assert_eq!(transitions(&c, "closed"), 0);
    assert_eq!(
        c.total(m::BREAKER_TRANSITIONS),
        1,
        "the provider stays closed"
    );
    assert_eq!(c.gauge(m::MODELS_OPEN, &[]), Some(1.0));
    assert_eq!(c.get(m::ERRORS, &[("code", "all_models_backing_off")]), 1);
    // The refused request is counted with no model.
    assert_eq!(
        c.get(
            m::REQUESTS,
            &[
                ("tier", "moderate"),
                ("model", "none"),
                ("provider", "none"),
                ("status", "5xx"),
            ],
        ),
        1
    );

    // A second model opens: the gauge counts both. (A snapshot resets a
    // debugging recorder's gauges to 0, so each value read here was set
    // since the last one.)
    let r = send(&app, request("complex", &[("x-fail", "big")])).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    let c = Counters::take(&snapshotter);
    assert_eq!(
        c.get(
            m::BREAKER_TRANSITIONS,
            &[("scope", "model"), ("name", "openai/big"), ("to", "open")],
        ),
        1
    );
    assert_eq!(c.gauge(m::MODELS_OPEN, &[]), Some(2.0));

    // After its 30 s, a probe of `mid` succeeds: closed, one model left open.
    tokio::time::advance(Duration::from_secs(30)).await;
    let r = send(&app, request("moderate", &[])).await;
    assert_eq!(r.status, StatusCode::OK);
    let c = Counters::take(&snapshotter);
    assert_eq!(transitions(&c, "closed"), 1);
    assert_eq!(c.total(m::BREAKER_TRANSITIONS), 1);
    assert_eq!(c.gauge(m::MODELS_OPEN, &[]), Some(1.0));
}

#[tokio::test(start_paused = true)]
async fn the_breaker_state_gauge_shows_every_model_closed_open_and_half_open() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let layer = TierRoutingLayer::builder(source())
        .failure_threshold(1)
        .build()
        .unwrap();
    let app = failing_app(layer.clone());
    let state = |c: &Counters, scope: &str, model: &str| {
        c.gauge(
            m::BREAKER_STATE,
            &[("scope", scope), ("provider", "openai"), ("model", model)],
        )
    };

    // Every model of the config is there before any request, closed.
    layer.export_breaker_states();
    let c = Counters::take(&snapshotter);
    for model in ["cheap", "pricey", "mid", "big"] {
        assert_eq!(state(&c, "model", model), Some(0.0), "{model}");
    }
    assert_eq!(state(&c, "provider", ""), Some(0.0));

    // `mid` fails once (threshold 1): open for 30 s.
    let r = send(&app, request("moderate", &[("x-fail", "mid")])).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    layer.export_breaker_states();
    let c = Counters::take(&snapshotter);
    assert_eq!(state(&c, "model", "mid"), Some(1.0));
    assert_eq!(state(&c, "model", "big"), Some(0.0));
    assert_eq!(state(&c, "provider", ""), Some(0.0), "a 5xx is the model's");

    // Its wait is over, nothing has tried it yet: half-open.
    tokio::time::advance(Duration::from_secs(30)).await;
    layer.export_breaker_states();
    let c = Counters::take(&snapshotter);
    assert_eq!(state(&c, "model", "mid"), Some(2.0));

    // The next request is its probe, and succeeds: closed.
    let r = send(&app, request("moderate", &[])).await;
    assert_eq!(r.status, StatusCode::OK);
    layer.export_breaker_states();
    let c = Counters::take(&snapshotter);
    assert_eq!(state(&c, "model", "mid"), Some(0.0));
}
