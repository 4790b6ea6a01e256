//! An axum app that routes its own chat endpoint by complexity tier.
//!
//! Run with: cargo run --example axum_app
//!
//! (`PORT=8080 cargo run --example axum_app` listens on another port.)
//!
//! The app adds [`TierRoutingLayer`] to its own `Router`, with a built-in
//! static tier config ([`TIER_CONFIG`]) and an in-memory session store.
//! Clients name a tier (`"tier"` in the body, `X-Sentinel-Tier`, or a
//! `"model"` that is a tier name), never a model. The layer picks the model,
//! rewrites the body (`model` set, `tier` removed), puts a
//! [`RoutingDecision`] in the request extensions and stamps
//! `X-Sentinel-Model` / `X-Sentinel-Tier` on the response. Routes it does
//! not route (here `GET /healthz`) pass through untouched.
//!
//! To stay dependency-light and run offline, the handler answers itself
//! with an OpenAI-shaped `chat.completion` naming the chosen model. A real
//! app would forward the rewritten body to the base URL of
//! `decision.provider` (for example `https://api.openai.com` +
//! `/v1/chat/completions`) with the provider's API key, and return the
//! provider's response; failing with a `sentinel::UpstreamError` lets the
//! layer retry once on the next model of the tier and back off the failing
//! one.

#![allow(clippy::print_stdout)] // an example: it prints where it listens and curl lines to try

use std::error::Error;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use sentinel::core::RawTierConfig;
use sentinel::{MemorySessionStore, RoutingDecision, StaticConfig, TierConfig, TierRoutingLayer};
use serde_json::{Value, json};

/// The tier config: the document Zion would serve, built in for the example.
pub(crate) const TIER_CONFIG: &str = r#"{
  "version": "example-1",
  "tiers": {
    "simple": { "models": [
      { "provider": "openai", "model": "gpt-4o-mini", "relative_cost": 1 },
      { "provider": "anthropic", "model": "claude-3-5-haiku-latest", "relative_cost": 2 }
    ] },
    "moderate": { "models": [
      { "provider": "openai", "model": "gpt-4o", "relative_cost": 4 }
    ] },
    "complex": { "models": [
      { "provider": "openai", "model": "o3", "relative_cost": 8 }
    ] }
  }
}"#;

/// The app: `POST /v1/chat/completions` behind the tier-routing layer, and
/// `GET /healthz`, which the layer passes through.
pub(crate) fn app() -> Result<Router, Box<dyn Error>> {
    let raw: RawTierConfig = serde_json::from_str(TIER_CONFIG)?;
    let config = TierConfig::validate(raw)?;
    let layer = TierRoutingLayer::builder(StaticConfig::new(config))
        .session_store(MemorySessionStore::new())
        .build()?;
    Ok(Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/healthz", get(|| async { "ok" }))
        .layer(layer))
}

/// The app's own handler: reads the layer's decision and the rewritten body
/// and answers in the OpenAI shape. A real app forwards the body to
/// `decision.provider` here instead.
async fn chat_completions(request: Request) -> Response {
    let Some(decision) = request.extensions().get::<RoutingDecision>().cloned() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no routing decision: is the TierRoutingLayer in front of this handler?",
        );
    };
    // The layer has already buffered the body under its own limit, so this
    // reads bytes in memory (and no `DefaultBodyLimit` applies).
    let body = match axum::body::to_bytes(request.into_body(), usize::MAX).await {
        Ok(bytes) => serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    let last_user_message = body["messages"]
        .as_array()
        .and_then(|messages| messages.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or("");
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let content = format!(
        "[{} tier, {}/{}, {}] You said: {last_user_message}",
        decision.tier.as_str(),
        decision.provider,
        decision.model,
        decision.reason.as_str(),
    );
    Json(json!({
        "id": format!("chatcmpl-sentinel-example-{created}"),
        "object": "chat.completion",
        "created": created,
        // The rewritten body's `model` is the chosen model too.
        "model": decision.model.as_ref(),
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": content },
            "finish_reason": "stop"
        }],
        "usage": { "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0 }
    }))
    .into_response()
}

/// An error in the OpenAI envelope.
fn error(status: StatusCode, message: &str) -> Response {
    let body = json!({ "error": { "message": message, "type": "server_error", "code": null } });
    (status, Json(body)).into_response()
}

/// The port to listen on: `PORT`, or `default`.
fn port(default: u16) -> Result<u16, Box<dyn Error>> {
    match std::env::var("PORT") {
        Ok(port) => Ok(port.parse()?),
        Err(_) => Ok(default),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let app = app()?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port(3000)?)).await?;
    let addr = listener.local_addr()?;
    let url = format!("http://{addr}/v1/chat/completions");
    println!("Sentinel axum example listening on http://{addr}");
    println!("Try:");
    println!(
        r#"  curl -si {url} -H 'content-type: application/json' -d '{{"tier":"moderate","messages":[{{"role":"user","content":"Summarise this paragraph."}}]}}'"#
    );
    println!(
        r#"  curl -si {url} -H 'content-type: application/json' -H 'x-sentinel-tier: complex' -H 'x-sentinel-session: demo' -d '{{"messages":[{{"role":"user","content":"Prove it."}}]}}'"#
    );
    println!(
        r#"  curl -si {url} -H 'content-type: application/json' -d '{{"model":"simple","messages":[{{"role":"user","content":"Hi"}}]}}'"#
    );
    println!(
        r#"  curl -si {url} -H 'content-type: application/json' -d '{{"tier":"huge","messages":[]}}'   # 400 invalid_tier"#
    );
    println!("  curl -s http://{addr}/healthz   # not routed: passes through");
    axum::serve(listener, app).await?;
    Ok(())
}
