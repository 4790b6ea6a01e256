//! Shared helpers of the layer tests.

#![allow(dead_code)] // each test file uses a different part

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use sentinel_core::{RawTierConfig, StaticConfig, TierConfig};
use sentinel_layer::RoutingDecision;
use serde_json::{Value, json};
use tower::ServiceExt;

/// simple: cheap (cost 1), pricey (cost 3); moderate: mid (cost 2);
/// complex: big (cost 5).
pub(crate) fn config() -> TierConfig {
    config_from(json!({ "tiers": {
        "simple": { "models": [
            { "provider": "openai", "model": "cheap", "relative_cost": 1 },
            { "provider": "openai", "model": "pricey", "relative_cost": 3 }
        ] },
        "moderate": { "models": [ { "provider": "openai", "model": "mid", "relative_cost": 2 } ] },
        "complex": { "models": [ { "provider": "openai", "model": "big", "relative_cost": 5 } ] }
    } }))
}

pub(crate) fn config_from(value: Value) -> TierConfig {
    let raw: RawTierConfig = serde_json::from_value(value).unwrap();
    TierConfig::validate(raw).unwrap()
}

pub(crate) fn source() -> StaticConfig {
    StaticConfig::new(config())
}

/// An app whose routed handler answers with what it received: the decision,
/// the body and its Content-Length.
pub(crate) fn echo_app(layer: sentinel_layer::TierRoutingLayer) -> Router {
    async fn echo(request: Request) -> Response {
        let decision = request.extensions().get::<RoutingDecision>().cloned();
        let length = request
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let transfer_encoding = request
            .headers()
            .get(http::header::TRANSFER_ENCODING)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = request.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let reply = json!({
            "model": decision.as_ref().map(|d| d.model.to_string()),
            "tier": decision.as_ref().map(|d| d.tier.as_str()),
            "requested_tier": decision.as_ref().map(|d| d.requested_tier.as_str()),
            "attempt": decision.as_ref().map(|d| d.attempt),
            "stream": decision.as_ref().map(|d| d.stream),
            "content_length": length,
            "transfer_encoding": transfer_encoding,
            "actual_length": bytes.len(),
            "body": body,
        });
        axum::Json(reply).into_response()
    }
    async fn other(body: axum::body::Bytes) -> Response {
        (StatusCode::OK, body).into_response()
    }
    Router::new()
        .route("/v1/chat/completions", post(echo))
        .route("/v1/responses", post(echo))
        .route("/v1/other", post(other))
        .route("/healthz", get(|| async { "ok" }))
        .layer(layer)
}

/// A routed handler that fails (500) the model named in `x-fail` (`*`: any
/// model) and otherwise answers with the model it was given.
pub(crate) async fn fail_on_header(request: Request) -> Response {
    let d = request
        .extensions()
        .get::<RoutingDecision>()
        .cloned()
        .unwrap();
    let fail = request
        .headers()
        .get("x-fail")
        .and_then(|v| v.to_str().ok());
    if fail.is_some_and(|f| f == "*" || f == &*d.model) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    axum::Json(json!({ "model": d.model.to_string() })).into_response()
}

pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Value,
    pub(crate) raw: bytes::Bytes,
}

impl Reply {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub(crate) fn error_code(&self) -> Option<&str> {
        self.body["error"]["code"].as_str()
    }
}

pub(crate) async fn send(app: &Router, request: http::Request<Body>) -> Reply {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let raw = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
        raw,
    }
}

pub(crate) fn chat(body: Value) -> http::Request<Body> {
    http::Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

pub(crate) fn chat_with(body: Value, headers: &[(&str, &str)]) -> http::Request<Body> {
    let mut builder =
        http::Request::post("/v1/chat/completions").header("content-type", "application/json");
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(Body::from(body.to_string())).unwrap()
}

pub(crate) fn messages() -> Value {
    json!([{ "role": "user", "content": "hi" }])
}

/// A shared counter source for checking the config is loaded per request.
pub(crate) type Shared<T> = Arc<std::sync::Mutex<T>>;
