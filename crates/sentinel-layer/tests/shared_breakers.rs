//! Breaker open state shared by two layers (two replicas) over one real Redis.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use http::StatusCode;
use sentinel_layer::TierRoutingLayer;
use sentinel_testkit::RedisServer;
use serde_json::json;
use support::{chat_with, send, source};

async fn pool(redis: &RedisServer) -> fred::clients::Pool {
    sentinel_testkit::redis::fred_pool(&redis.url())
        .await
        .unwrap()
}

async fn replica(redis: &RedisServer) -> Router {
    let layer = TierRoutingLayer::builder(source())
        .failure_threshold(1)
        .shared_breakers(pool(redis).await, "sentinel:")
        .build()
        .unwrap();
    Router::new()
        .route("/v1/chat/completions", post(support::fail_on_header))
        .layer(layer)
}

fn simple(fail: &str) -> http::Request<axum::body::Body> {
    chat_with(
        json!({ "tier": "simple", "messages": [] }),
        &[("x-fail", fail)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_stops_sending_to_a_model_within_a_second_of_its_opening() {
    let redis = RedisServer::start().unwrap();
    let a = replica(&redis).await;
    let b = replica(&redis).await;
    // B has seen the config (it syncs the models of its config).
    assert_eq!(send(&b, simple("none")).await.status, StatusCode::OK);

    // Open `cheap` on A (it is picked 75% of the time; retries go to `pricey`).
    let mut opened = false;
    for _ in 0..40 {
        let r = send(&a, simple("cheap")).await;
        assert_eq!(r.header("x-sentinel-model"), Some("pricey"));
        // Let the background write run.
        tokio::time::sleep(Duration::from_millis(20)).await;
        if redis
            .query(&["EXISTS", "sentinel:breaker:openai/cheap"])
            .unwrap()
            .as_integer()
            == Some(1)
        {
            opened = true;
            break;
        }
    }
    assert!(opened, "the opening was not published");
    let pttl = redis
        .query(&["PTTL", "sentinel:breaker:openai/cheap"])
        .unwrap()
        .as_integer()
        .unwrap();
    assert!((25_000..=30_000).contains(&pttl), "PX is the wait: {pttl}");

    let opened_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // B has not seen a single failure of `cheap`, yet leaves it out.
    for _ in 0..30 {
        let r = send(&b, simple("none")).await;
        assert_eq!(
            r.header("x-sentinel-model"),
            Some("pricey"),
            "B still sends to the open model"
        );
    }
    assert!(opened_at.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn with_redis_down_each_replica_keeps_its_own_state() {
    let mut redis = RedisServer::start().unwrap();
    let a = replica(&redis).await;
    redis.stop();
    // Requests still work and A's own breaker still opens.
    let mut saw_retry = false;
    for _ in 0..40 {
        let r = send(&a, simple("cheap")).await;
        assert_eq!(r.status, StatusCode::OK);
        saw_retry |= r.header("x-sentinel-model") == Some("pricey");
    }
    assert!(saw_retry);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opening_given_up_while_redis_hangs_is_not_published_when_it_resumes() {
    let redis = RedisServer::start().unwrap();
    let a = replica(&redis).await;
    let b = replica(&redis).await;
    assert_eq!(send(&a, simple("none")).await.status, StatusCode::OK);
    assert_eq!(send(&b, simple("none")).await.status, StatusCode::OK);
    // A few syncs: A knows Redis's clock, so its publication goes out at
    // once (with its deadline) rather than after a `TIME`.
    tokio::time::sleep(Duration::from_millis(600)).await;

    redis.pause().unwrap();
    // `cheap` opens on A while Redis hangs: its publication is written to a
    // connection that answers nothing, and given up after the session wait.
    let mut opened = false;
    for _ in 0..40 {
        let r = send(&a, simple("cheap")).await;
        assert_eq!(r.status, StatusCode::OK);
        if r.header("x-sentinel-model") == Some("pricey") {
            opened = true;
            break;
        }
    }
    assert!(opened, "cheap did not fail over");
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.resume().unwrap();

    // Redis runs what reached it during the hang: the opening, now late,
    // does nothing (a replayed one would hold the key for the 30 s wait and
    // take `cheap` away from B).
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        assert_eq!(
            redis
                .query(&["EXISTS", "sentinel:breaker:openai/cheap"])
                .unwrap()
                .as_integer(),
            Some(0),
            "an opening given up was published after Redis resumed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut b_sent_to_cheap = false;
    for _ in 0..40 {
        b_sent_to_cheap |=
            send(&b, simple("none")).await.header("x-sentinel-model") == Some("cheap");
    }
    assert!(b_sent_to_cheap, "B left cheap out");
}
