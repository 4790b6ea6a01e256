//! Sessions through the layer: sticky models, upgrades, never a downgrade,
//! re-pinning after a failover or when the pinned model backs off, and a
//! store that does not answer.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::response::IntoResponse;
use axum::routing::post;
use http::StatusCode;
use metrics_util::debugging::DebuggingRecorder;
use sentinel_core::{Pinned, StaticConfig};
use sentinel_layer::session::{PinOutcome, SessionFuture, SessionStore};
use sentinel_layer::{MemorySessionStore, RoutingDecision, TierRoutingLayer};
use sentinel_testkit::metrics::Counters;
use serde_json::json;
use support::{chat_with, echo_app, send, source};

fn with_session(tier: &str, session: &str) -> http::Request<axum::body::Body> {
    chat_with(
        json!({ "tier": tier, "messages": [] }),
        &[("x-sentinel-session", session)],
    )
}

#[tokio::test]
async fn a_session_keeps_its_model_and_only_goes_up() {
    let store = MemorySessionStore::new();
    let app = echo_app(
        TierRoutingLayer::builder(source())
            .session_store(store.clone())
            .build()
            .unwrap(),
    );
    let first = send(&app, with_session("simple", "s-1")).await;
    let model = first.body["model"].as_str().unwrap().to_owned();
    for _ in 0..20 {
        let r = send(&app, with_session("simple", "s-1")).await;
        assert_eq!(r.body["model"], *model, "sticky");
    }
    // Upgrade to moderate, then asking for simple stays on moderate.
    let r = send(&app, with_session("moderate", "s-1")).await;
    assert_eq!(
        (r.body["model"].as_str(), r.header("x-sentinel-tier")),
        (Some("mid"), Some("moderate"))
    );
    let r = send(&app, with_session("simple", "s-1")).await;
    assert_eq!(r.body["model"], "mid");
    assert_eq!(
        r.header("x-sentinel-tier"),
        Some("moderate"),
        "effective tier is the session's"
    );
    assert_eq!(r.body["requested_tier"], "simple");
    // Another session is independent.
    let r = send(&app, with_session("complex", "s-2")).await;
    assert_eq!(r.body["model"], "big");
    assert_eq!(
        send(&app, with_session("simple", "s-1")).await.body["model"],
        "mid"
    );
}

#[tokio::test]
async fn after_a_failover_the_session_follows_the_model_that_served_it() {
    // The handler fails `cheap` with 503 while `cheap_down` is set, and
    // records the models it is asked for; `pricey` always answers.
    let cheap_down = Arc::new(AtomicBool::new(false));
    let asked = Arc::new(Mutex::new(Vec::<String>::new()));
    let handler = {
        let (cheap_down, asked) = (cheap_down.clone(), asked.clone());
        move |request: Request| {
            let (cheap_down, asked) = (cheap_down.clone(), asked.clone());
            async move {
                let d = request
                    .extensions()
                    .get::<RoutingDecision>()
                    .cloned()
                    .unwrap();
                asked.lock().unwrap().push(d.model.to_string());
                if &*d.model == "cheap" && cheap_down.load(Ordering::SeqCst) {
                    return StatusCode::SERVICE_UNAVAILABLE.into_response();
                }
                axum::Json(json!({ "model": d.model.to_string() })).into_response()
            }
        }
    };
    let store = MemorySessionStore::new();
    let layer = TierRoutingLayer::builder(source())
        .session_store(store.clone())
        .failure_threshold(100)
        .rng_seed(11)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/v1/chat/completions", post(handler))
        .layer(layer);
    let mut failed_over = 0;
    for i in 0..20 {
        let session = format!("f-{i}");
        // The session's first request: `cheap` is down.
        cheap_down.store(true, Ordering::SeqCst);
        asked.lock().unwrap().clear();
        let r = send(&app, with_session("simple", &session)).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("x-sentinel-model"), Some("pricey"));
        let first = std::mem::take(&mut *asked.lock().unwrap());
        match first.as_slice() {
            [a, b] if a == "cheap" && b == "pricey" => failed_over += 1,
            [only] if only == "pricey" => {}
            other => panic!("{session}: unexpected attempts {other:?}"),
        }

        // `cheap` is back: a session still pinned to it would go there now.
        cheap_down.store(false, Ordering::SeqCst);
        for _ in 0..3 {
            let r = send(&app, with_session("simple", &session)).await;
            assert_eq!(
                r.header("x-sentinel-model"),
                Some("pricey"),
                "{session} went back to the model that failed ({first:?})"
            );
        }
        let pin = store.pin_or_get(&session, None).await.unwrap().current;
        assert_eq!(pin.map(|p| p.model.to_string()).as_deref(), Some("pricey"));
    }
    // `cheap` is the first pick of about 3 sessions in 4.
    assert!(
        failed_over >= 5,
        "only {failed_over} sessions started on cheap"
    );
}

#[tokio::test]
async fn a_pinned_model_that_backs_off_is_replaced_within_the_tier() {
    let handler = support::fail_on_header;
    let store = MemorySessionStore::new();
    let layer = TierRoutingLayer::builder(source())
        .session_store(store.clone())
        .failure_threshold(1)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/v1/chat/completions", post(handler))
        .layer(layer);
    let r = send(&app, with_session("simple", "p-1")).await;
    let pinned = r.header("x-sentinel-model").unwrap().to_owned();
    // Fail both attempts: the pinned model and the other one open.
    let mut failing = with_session("simple", "p-1");
    failing.headers_mut().insert("x-fail", "*".parse().unwrap());
    assert_eq!(send(&app, failing).await.status, StatusCode::BAD_GATEWAY);
    // Everything in `simple` backs off now.
    let r = send(&app, with_session("simple", "p-1")).await;
    assert_eq!(r.error_code(), Some("all_models_backing_off"));

    // With only the pinned model open, the session moves within its tier.
    let store = MemorySessionStore::new();
    let layer = TierRoutingLayer::builder(source())
        .session_store(store.clone())
        .failure_threshold(1)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/v1/chat/completions", post(handler))
        .layer(layer);
    let other = if pinned == "cheap" { "pricey" } else { "cheap" };
    store
        .pin_or_get(
            "p-2",
            Some(&Pinned::new(
                sentinel_core::Tier::Simple,
                "openai",
                pinned.as_str(),
            )),
        )
        .await
        .unwrap();
    // Open the pinned model only, with requests outside the session.
    for _ in 0..30 {
        let mut failing = support::chat(json!({ "messages": [] }));
        failing
            .headers_mut()
            .insert("x-fail", pinned.parse().unwrap());
        assert_eq!(send(&app, failing).await.status, StatusCode::OK);
    }
    let r = send(&app, with_session("simple", "p-2")).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.header("x-sentinel-model"), Some(other));
    let now = store
        .pin_or_get("p-2", None)
        .await
        .unwrap()
        .current
        .unwrap();
    assert_eq!(&*now.model, other, "re-pinned");
}

/// A store that never answers.
struct Stuck;

impl SessionStore for Stuck {
    fn pin_or_get<'a>(
        &'a self,
        _: &'a str,
        _: Option<&'a Pinned>,
    ) -> SessionFuture<'a, PinOutcome> {
        Box::pin(std::future::pending())
    }
    fn repin<'a>(&'a self, _: &'a str, _: &'a Pinned) -> SessionFuture<'a, Option<Pinned>> {
        Box::pin(std::future::pending())
    }
}

#[tokio::test]
async fn an_unresponsive_store_costs_a_bounded_wait_and_is_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let app = echo_app(
        TierRoutingLayer::builder(StaticConfig::new(support::config()))
            .session_store(Stuck)
            .session_wait(Duration::from_millis(50))
            .build()
            .unwrap(),
    );
    let started = Instant::now();
    let r = send(&app, with_session("moderate", "slow")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["model"], "mid");
    assert!(started.elapsed() < Duration::from_secs(2));
    let counters = Counters::take(&snapshotter);
    assert_eq!(
        counters.get(
            "sentinel_redis_fallbacks_total",
            &[("component", "sessions")]
        ),
        1
    );
}
