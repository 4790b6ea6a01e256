//! The layer against hostile requests: content types that would skip the
//! body checks, framing headers that could smuggle, bodies that never end.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::IntoResponse;
use axum::routing::post;
use http::StatusCode;
use sentinel_layer::{RoutingDecision, TierRoutingLayer};
use serde_json::json;
use support::{echo_app, messages, send, source};

fn app() -> Router {
    echo_app(
        TierRoutingLayer::builder(source())
            .rng_seed(1)
            .build()
            .unwrap(),
    )
}

fn post_with(path: &str, content_types: &[&str], body: &str) -> http::Request<Body> {
    let mut builder = http::Request::post(path);
    for ct in content_types {
        builder = builder.header("content-type", *ct);
    }
    builder.body(Body::from(body.to_owned())).unwrap()
}

#[tokio::test]
async fn a_routed_path_answers_415_to_any_content_type_but_json() {
    let app = app();
    let body = json!({ "model": "gpt-4o", "messages": messages() }).to_string();
    for content_types in [
        &["application/grpc"][..],
        &["application/grpc+json"],
        &["application/grpc+proto"],
        &["application/grpc-web+json"],
        &["text/plain"],
        &["application/x-www-form-urlencoded"],
        &["multipart/form-data; boundary=x"],
        &["application/jsonx"],
        &["application/+json"],
        &["application/vnd.example+json"],
        &["application/json", "application/grpc"],
        &[""],
    ] {
        let r = send(
            &app,
            post_with("/v1/chat/completions", content_types, &body),
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_types:?}"
        );
        assert_eq!(
            r.error_code(),
            Some("unsupported_media_type"),
            "{content_types:?}"
        );
        assert!(
            r.body.get("model").is_none(),
            "the handler was never called"
        );
    }
}

#[tokio::test]
async fn a_compressed_body_is_415() {
    let app = app();
    let body = json!({ "tier": "simple", "messages": messages() }).to_string();
    for encoding in ["gzip", "br", "deflate, identity"] {
        let request = http::Request::post("/v1/chat/completions")
            .header("content-type", "application/json")
            .header("content-encoding", encoding)
            .body(Body::from(body.clone()))
            .unwrap();
        let r = send(&app, request).await;
        assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{encoding}");
        assert!(
            r.body.get("model").is_none(),
            "the handler was never called"
        );
    }
    let request = http::Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("content-encoding", "identity")
        .body(Body::from(body))
        .unwrap();
    assert_eq!(send(&app, request).await.status, StatusCode::OK);
}

#[tokio::test]
async fn json_content_types_and_none_are_routed() {
    let app = app();
    let body = json!({ "model": "complex", "messages": messages() }).to_string();
    for content_types in [
        &[][..],
        &["application/json"],
        &["application/json; charset=utf-8"],
        &["Application/JSON"],
    ] {
        let r = send(
            &app,
            post_with("/v1/chat/completions", content_types, &body),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{content_types:?}");
        assert_eq!(r.body["model"], "big", "{content_types:?}");
        assert_eq!(r.body["body"]["model"], "big");
    }
}

/// A handler at a gRPC-looking path that says whether the layer routed it.
fn grpc_app(layer: TierRoutingLayer) -> Router {
    async fn handler(request: Request) -> axum::response::Response {
        let decision = request.extensions().get::<RoutingDecision>().cloned();
        axum::Json(json!({ "routed_to": decision.map(|d| d.model.to_string()) })).into_response()
    }
    Router::new()
        .route("/pkg.Completer/Complete", post(handler))
        .route("/pkg.Other/Call", post(handler))
        .route("/v1/chat/completions", post(handler))
        .layer(layer)
}

fn grpc_call(path: &str) -> http::Request<Body> {
    http::Request::post(path)
        .header("content-type", "application/grpc")
        .header("x-sentinel-tier", "complex")
        .body(Body::from(&b"\0\0\0\0\0"[..]))
        .unwrap()
}

#[tokio::test]
async fn grpc_routing_is_off_unless_asked_for() {
    let app = grpc_app(TierRoutingLayer::builder(source()).build().unwrap());
    let r = send(&app, grpc_call("/pkg.Completer/Complete")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.body["routed_to"],
        serde_json::Value::Null,
        "passed through"
    );
    assert!(r.header("x-sentinel-model").is_none());
}

#[tokio::test]
async fn grpc_routing_applies_only_to_its_paths_and_never_to_the_json_routes() {
    let layer = TierRoutingLayer::builder(source())
        .grpc_paths(["/pkg.Completer/"])
        .build()
        .unwrap();
    let app = grpc_app(layer);
    let r = send(&app, grpc_call("/pkg.Completer/Complete")).await;
    assert_eq!(r.body["routed_to"], "big", "a configured service is routed");
    assert_eq!(r.header("x-sentinel-model"), Some("big"));

    let r = send(&app, grpc_call("/pkg.Other/Call")).await;
    assert_eq!(
        r.body["routed_to"],
        serde_json::Value::Null,
        "not configured"
    );

    let r = send(&app, grpc_call("/v1/chat/completions")).await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(r.error_code(), Some("unsupported_media_type"));
}

#[test]
fn grpc_paths_are_validated() {
    for bad in [
        &["pkg.Svc/"][..],
        &["/"],
        &["/v1/"],
        &["/v1/chat/completions"],
    ] {
        let err = TierRoutingLayer::builder(source())
            .grpc_paths(bad.iter().copied())
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("gRPC"), "{bad:?}: {err}");
    }
}

#[tokio::test]
async fn the_rewritten_request_has_its_length_and_no_transfer_encoding() {
    let app = app();
    let chunks: Vec<Result<&'static str, std::io::Error>> = vec![
        Ok(r#"{"tier":"complex","#),
        Ok(r#""messages":[{"role":"user","content":"hi"}]}"#),
    ];
    let request = http::Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .unwrap();
    let r = send(&app, request).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["transfer_encoding"], serde_json::Value::Null);
    let sent = r.body["actual_length"].as_u64().unwrap();
    assert_eq!(r.body["content_length"], sent.to_string());
    assert_eq!(r.body["body"]["model"], "big");
}

#[tokio::test(start_paused = true)]
async fn a_body_that_does_not_arrive_in_time_is_408() {
    let app = echo_app(
        TierRoutingLayer::builder(source())
            .body_timeout(Duration::from_secs(5))
            .build()
            .unwrap(),
    );
    let first: Result<&'static str, std::io::Error> = Ok(r#"{"tier":"#);
    let stalled = futures_util::StreamExt::chain(
        futures_util::stream::iter([first]),
        futures_util::stream::pending(),
    );
    let request = http::Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from_stream(stalled))
        .unwrap();
    let started = tokio::time::Instant::now();
    let r = send(&app, request).await;
    assert_eq!(r.status, StatusCode::REQUEST_TIMEOUT);
    assert_eq!(r.error_code(), Some("request_timeout"));
    assert_eq!(started.elapsed(), Duration::from_secs(5));
}
