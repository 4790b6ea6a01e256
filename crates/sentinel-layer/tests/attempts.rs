//! The attempts of a routed request, as the inner service sees them: what
//! a retry's request carries, and an inner service that fails to get
//! ready (tower-test mock, paused time).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use metrics_util::debugging::DebuggingRecorder;
use sentinel_core::StaticConfig;
use sentinel_layer::{RoutedBody, RoutingDecision, TierRoutingLayer};
use sentinel_testkit::metrics::Counters;
use serde_json::{Value, json};
use tower::{Layer, ServiceExt};
use tower_test::mock;

type Inner = Request<RoutedBody<Full<Bytes>>>;

/// A marker the caller puts in the request's extensions.
#[derive(Debug, Clone, PartialEq)]
struct CallerMark(&'static str);

fn two_models() -> StaticConfig {
    StaticConfig::new(support::config_from(json!({ "tiers": {
        "simple": { "models": [
            { "provider": "openai", "model": "a", "relative_cost": 1 },
            { "provider": "other", "model": "b", "relative_cost": 1 }
        ] }
    } })))
}

fn chat(body: Value) -> Request<Full<Bytes>> {
    let mut request = Request::post("/v1/chat/completions?trace=1")
        .header("x-custom", "kept")
        .header(header::TRANSFER_ENCODING, "chunked")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    request.extensions_mut().insert(CallerMark("caller"));
    request
}

#[tokio::test(start_paused = true)]
async fn a_retry_carries_the_clients_head_and_a_body_rendered_for_its_model() {
    let layer = TierRoutingLayer::builder(two_models())
        .rng_seed(5)
        .build()
        .unwrap();
    let (mock, mut handle) = mock::pair::<Inner, Response<Full<Bytes>>>();
    let service = layer.layer(mock);
    let task = tokio::spawn(service.oneshot(chat(json!({ "tier": "simple", "messages": [] }))));

    let mut seen = Vec::new();
    for answer in [503, 200] {
        let (request, respond) =
            tokio::time::timeout(Duration::from_secs(5), handle.next_request())
                .await
                .expect("an attempt")
                .unwrap();
        let (parts, body) = request.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let decision = parts.extensions.get::<RoutingDecision>().cloned().unwrap();
        assert_eq!(parts.method, http::Method::POST);
        assert_eq!(parts.uri, "/v1/chat/completions?trace=1");
        assert_eq!(parts.headers["x-custom"], "kept");
        assert!(
            !parts.headers.contains_key(header::TRANSFER_ENCODING),
            "the body is rendered: no other framing goes on"
        );
        assert_eq!(
            parts.headers[header::CONTENT_LENGTH],
            body.len().to_string(),
            "attempt {}",
            decision.attempt
        );
        assert_eq!(
            parts.extensions.get::<CallerMark>(),
            Some(&CallerMark("caller")),
            "the caller's extensions go with every attempt"
        );
        let sent: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(sent["model"], *decision.model);
        seen.push(decision);
        respond.send_response(
            Response::builder()
                .status(answer)
                .body(Full::new(Bytes::from("{}")))
                .unwrap(),
        );
    }
    let response = task.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        seen.iter().map(|d| d.attempt).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_ne!(seen[0].model, seen[1].model);
    assert_eq!(response.headers()["x-sentinel-model"], &*seen[1].model);
}

#[tokio::test(start_paused = true)]
async fn an_inner_service_that_fails_to_get_ready_is_not_retried() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let layer = TierRoutingLayer::builder(two_models())
        .failure_threshold(1)
        .rng_seed(5)
        .build()
        .unwrap();
    let (mock, mut handle) = mock::pair::<Inner, Response<Full<Bytes>>>();
    handle.send_error(std::io::Error::other("not ready"));
    let service = layer.layer(mock);
    // Bounded: a retry would wait for an answer nobody sends (paused time
    // runs the clock out at once).
    let call = service
        .clone()
        .oneshot(chat(json!({ "tier": "simple", "messages": [] })));
    let response = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("answered without trying another model")
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let chosen = response.headers()["x-sentinel-model"].clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "upstream_failed");

    // Nothing reached the inner service, nothing was retried.
    tokio::task::yield_now().await;
    let next = tokio::time::timeout(Duration::from_millis(10), handle.next_request()).await;
    assert!(
        next.is_err(),
        "no attempt may reach a service that is not ready"
    );
    let counters = Counters::take(&snapshotter);
    assert_eq!(counters.total("sentinel_retries_total"), 0);

    // The model was not called, so its breaker did not hear of it: with a
    // threshold of 1 it would be open now, and every request would go to
    // the other model. Equal weights: 20 draws all missing it would be a
    // one-in-a-million chance (and the seed is fixed).
    let mut models = Vec::new();
    for _ in 0..20 {
        let task = tokio::spawn(
            service
                .clone()
                .oneshot(chat(json!({ "tier": "simple", "messages": [] }))),
        );
        let (request, respond) = handle.next_request().await.unwrap();
        models.push(
            request
                .extensions()
                .get::<RoutingDecision>()
                .unwrap()
                .model
                .clone(),
        );
        respond.send_response(Response::new(Full::new(Bytes::from("{}"))));
        assert_eq!(task.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    assert!(
        models.iter().any(|m| **m == *chosen.to_str().unwrap()),
        "{chosen:?} was never chosen again: {models:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn route_providers_keeps_a_path_to_the_models_that_can_serve_it() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    // `other` serves chat completions only.
    let layer = TierRoutingLayer::builder(two_models())
        .route_providers(|path, provider| {
            path.ends_with("/chat/completions") || provider != "other"
        })
        .build()
        .unwrap();
    let (mock, mut handle) = mock::pair::<Inner, Response<Full<Bytes>>>();
    let service = layer.layer(mock);
    let responses = |body: Value| {
        Request::post("/v1/responses")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };

    // `/v1/responses`: always `a`, and a failure of `a` is not retried on
    // `b` (it cannot serve the path).
    for answer in [200, 200, 200, 200, 503] {
        let task = tokio::spawn(
            service
                .clone()
                .oneshot(responses(json!({ "tier": "simple", "input": "hi" }))),
        );
        let (request, respond) = handle.next_request().await.unwrap();
        let decision = request
            .extensions()
            .get::<RoutingDecision>()
            .cloned()
            .unwrap();
        assert_eq!(&*decision.model, "a");
        respond.send_response(
            Response::builder()
                .status(answer)
                .body(Full::new(Bytes::from("{}")))
                .unwrap(),
        );
        let response = task.await.unwrap().unwrap();
        assert_eq!(
            response.status().as_u16(),
            if answer == 200 { 200 } else { 502 }
        );
    }
    // Chat completions reach both models.
    let mut models = std::collections::HashSet::new();
    for _ in 0..40 {
        let task = tokio::spawn(
            service
                .clone()
                .oneshot(chat(json!({ "tier": "simple", "messages": [] }))),
        );
        let (request, respond) = handle.next_request().await.unwrap();
        models.insert(
            request
                .extensions()
                .get::<RoutingDecision>()
                .unwrap()
                .model
                .clone(),
        );
        respond.send_response(Response::new(Full::new(Bytes::from("{}"))));
        assert_eq!(task.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    assert_eq!(models.len(), 2, "{models:?}");
    let counters = Counters::take(&snapshotter);
    assert_eq!(
        counters.get(
            "sentinel_route_models_excluded_total",
            &[("tier", "simple"), ("provider", "other"), ("model", "b")]
        ),
        1,
        "counted once per config and path"
    );
}

#[tokio::test(start_paused = true)]
async fn a_tier_with_no_model_for_the_path_is_a_clear_400() {
    let layer = TierRoutingLayer::builder(two_models())
        .route_providers(|path, _| path.ends_with("/chat/completions"))
        .build()
        .unwrap();
    let (mock, _handle) = mock::pair::<Inner, Response<Full<Bytes>>>();
    let response = layer
        .layer(mock)
        .oneshot(
            Request::post("/v1/responses")
                .body(Full::new(Bytes::from(r#"{"tier":"simple","input":"hi"}"#)))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["error"]["code"], "unsupported_route");
}
