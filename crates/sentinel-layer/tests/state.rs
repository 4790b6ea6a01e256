//! The routing state an operator reads: shares of new traffic, breakers
//! with the time left, provider health.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::time::Duration;

use axum::Router;
use axum::routing::post;
use http::StatusCode;
use sentinel_core::Tier;
use sentinel_layer::TierRoutingLayer;
use sentinel_layer::state::{BreakerStatus, Health};
use serde_json::json;
use support::{chat_with, send, source};

fn shares(layer: &TierRoutingLayer, tier: Tier) -> Vec<(String, f64, BreakerStatus)> {
    let state = layer.routing_state().unwrap();
    state
        .tier(tier)
        .iter()
        .map(|m| (m.model.to_string(), m.share, m.breaker))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn shares_follow_the_breakers_and_sum_to_one_while_any_model_is_up() {
    let layer = TierRoutingLayer::builder(source())
        .failure_threshold(1)
        .rng_seed(3)
        .build()
        .unwrap();
    let app: Router = Router::new()
        .route("/v1/chat/completions", post(support::fail_on_header))
        .layer(layer.clone());

    // simple: cheap (cost 1) and pricey (cost 3): 3/4 and 1/4.
    assert_eq!(
        shares(&layer, Tier::Simple),
        vec![
            ("cheap".into(), 0.75, BreakerStatus::Closed),
            ("pricey".into(), 0.25, BreakerStatus::Closed)
        ]
    );
    let state = layer.routing_state().unwrap();
    assert_eq!(state.providers.len(), 1);
    assert_eq!(state.providers[0].health, Health::Unknown);
    assert_eq!(state.providers[0].breaker, BreakerStatus::Closed);

    // `cheap` fails once (threshold 1): open for 30 s, `pricey` takes it all.
    let mut opened = false;
    for _ in 0..20 {
        let request = chat_with(
            json!({ "tier": "simple", "messages": [] }),
            &[("x-fail", "cheap")],
        );
        let reply = send(&app, request).await;
        assert_eq!(reply.status, StatusCode::OK, "the retry on pricey answers");
        if layer.routing_state().unwrap().tier(Tier::Simple)[0].breaker == BreakerStatus::Open {
            opened = true;
            break;
        }
    }
    assert!(opened, "cheap was never chosen in 20 draws");
    let state = layer.routing_state().unwrap();
    let cheap = &state.tier(Tier::Simple)[0];
    assert_eq!((cheap.share, cheap.breaker), (0.0, BreakerStatus::Open));
    assert_eq!(cheap.retry_in, Some(Duration::from_secs(30)));
    assert_eq!(state.tier(Tier::Simple)[1].share, 1.0);

    // 10 s later, 20 s left.
    tokio::time::advance(Duration::from_secs(10)).await;
    let state = layer.routing_state().unwrap();
    assert_eq!(
        state.tier(Tier::Simple)[0].retry_in,
        Some(Duration::from_secs(20))
    );

    // Its wait over, it is half-open and may take a new request again.
    tokio::time::advance(Duration::from_secs(20)).await;
    assert_eq!(
        shares(&layer, Tier::Simple),
        vec![
            ("cheap".into(), 0.75, BreakerStatus::HalfOpen),
            ("pricey".into(), 0.25, BreakerStatus::Closed)
        ]
    );

    // `mid`, the only model of `moderate`, fails: nothing left, all shares 0.
    let request = chat_with(
        json!({ "tier": "moderate", "messages": [] }),
        &[("x-fail", "mid")],
    );
    assert_eq!(send(&app, request).await.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        shares(&layer, Tier::Moderate),
        vec![("mid".into(), 0.0, BreakerStatus::Open)]
    );
}
