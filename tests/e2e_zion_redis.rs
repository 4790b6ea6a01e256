//! End to end with a real `redis-server` and a mock Zion: the tier config is
//! shared through Redis (a replica started while Zion is down serves from
//! the Redis copy without calling Zion), sessions pinned on one replica hold
//! on another, and with Zion down and nothing cached the proxy answers 503
//! `tier_config_unavailable` until Zion is back, then recovers by itself.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::time::Duration;

use sentinel_testkit::{MockUpstream, MockZion, RedisServer, RespValue, UpstreamFault};
use serde_json::Value;
use support::{Env, Proxy, Reply, chat_body, unique};

/// `POST /v1/chat/completions` for `tier` within `session`.
async fn in_session(proxy: &Proxy, session: &str, tier: &str) -> Reply {
    proxy.chat_in_session(session, &chat_body(Some(tier))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_zion_config_is_cached_in_redis_with_its_ttl() {
    let redis = RedisServer::start().unwrap();
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    let env = Env::new(&upstream)
        .zion(&zion)
        .redis(&redis)
        .set("TIER_CONFIG_TTL_SECONDS", "120");
    let proxy = Proxy::start(&env).await;

    assert!(proxy.wait_ready(Duration::from_secs(5)).await);
    proxy
        .chat(&chat_body(Some("complex")))
        .await
        .assert_served("complex", "o3");
    proxy
        .chat(&chat_body(Some("moderate")))
        .await
        .assert_served("moderate", "gpt-4o");

    let stored = redis.query(&["GET", "sentinel:tier_config"]).unwrap();
    let RespValue::Bulk(Some(json)) = stored else {
        panic!("no tier config in Redis: {stored:?}");
    };
    let config: Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(config["tiers"]["complex"]["models"][0]["model"], "o3");
    let ttl = redis
        .query(&["TTL", "sentinel:tier_config"])
        .unwrap()
        .as_integer()
        .unwrap();
    assert!((1..=120).contains(&ttl), "TTL {ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_while_zion_is_down_serves_from_the_redis_copy() {
    let redis = RedisServer::start().unwrap();
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    let env = Env::new(&upstream).zion(&zion).redis(&redis);

    // A loads the config from Zion and writes it to Redis.
    let a = Proxy::start(&env).await;
    assert!(a.wait_ready(Duration::from_secs(5)).await);
    a.chat(&chat_body(Some("moderate")))
        .await
        .assert_served("moderate", "gpt-4o");
    assert!(zion.calls() >= 1);

    // Zion goes away; B starts after that.
    zion.stop().await;
    let calls = zion.calls();
    let b = Proxy::start(&env).await;
    assert!(
        b.wait_ready(Duration::from_secs(5)).await,
        "B found no config"
    );
    b.chat(&chat_body(Some("complex")))
        .await
        .assert_served("complex", "o3");
    b.chat(&chat_body(Some("moderate")))
        .await
        .assert_served("moderate", "gpt-4o");
    let ready = b.get("/readyz").await;
    assert_eq!(ready.json["tier_config_version"], "mock-1");
    // Zion stayed down all along (a stopped mock counts nothing; the next
    // test shows that B does not call a Zion that is up either).
    assert_eq!(zion.calls(), calls);
    // A goes on too.
    a.chat(&chat_body(Some("complex")))
        .await
        .assert_served("complex", "o3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_finds_the_config_in_redis_does_not_call_zion() {
    let redis = RedisServer::start().unwrap();
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    let env = Env::new(&upstream).zion(&zion).redis(&redis);

    let a = Proxy::start(&env).await;
    assert!(a.wait_ready(Duration::from_secs(5)).await);
    let calls = zion.calls();
    assert!(calls >= 1);

    // Zion stays up: B still takes the Redis copy.
    let b = Proxy::start(&env).await;
    assert!(b.wait_ready(Duration::from_secs(5)).await);
    b.chat(&chat_body(Some("moderate")))
        .await
        .assert_served("moderate", "gpt-4o");
    assert_eq!(zion.calls(), calls, "B called Zion");

    // The state API says where each replica's config came from.
    for (replica, source) in [(&a, "zion"), (&b, "redis")] {
        let reply = replica.get("/admin/state").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let state: serde_json::Value = serde_json::from_str(&reply.text()).unwrap();
        assert_eq!(state["tier_config"]["source"], source, "{state}");
        assert_eq!(state["tier_config"]["stale"], false);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_pinned_on_one_replica_holds_on_another() {
    let redis = RedisServer::start().unwrap();
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    let env = Env::new(&upstream).zion(&zion).redis(&redis);
    let a = Proxy::start(&env).await;
    let b = Proxy::start(&env).await;
    let session = unique("session");

    // Pinned on A to the moderate model.
    in_session(&a, &session, "moderate")
        .await
        .assert_served("moderate", "gpt-4o");

    // B, asked for simple in that session: the session's model and tier.
    let reply = in_session(&b, &session, "simple").await;
    reply.assert_served("moderate", "gpt-4o");
    assert_eq!(upstream.requests().last().unwrap().body["model"], "gpt-4o");
    // Without the session, B serves simple with a simple model.
    let reply = b.chat(&chat_body(Some("simple"))).await;
    assert_eq!(reply.tier(), Some("simple"));
    assert!(
        matches!(reply.model(), Some("gpt-4o-mini" | "gpt-4.1-mini")),
        "{:?}",
        reply.model()
    );

    // An upgrade on B holds on A; it never goes back down.
    in_session(&b, &session, "complex")
        .await
        .assert_served("complex", "o3");
    for tier in ["simple", "moderate", "complex"] {
        in_session(&a, &session, tier)
            .await
            .assert_served("complex", "o3");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zion_down_with_nothing_cached_is_503_until_zion_comes_back() {
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    zion.stop().await;
    let proxy = Proxy::start(&Env::new(&upstream).zion(&zion)).await;

    // The proxy is up but not ready.
    assert_eq!(proxy.get("/healthz").await.status, 200);
    let ready = proxy.get("/readyz").await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json["status"], "not_ready");

    let reply = proxy.chat(&chat_body(Some("moderate"))).await;
    reply.assert_error(503, "tier_config_unavailable");
    let wait = reply.retry_after();
    assert!((1..=30).contains(&wait), "Retry-After {wait}");
    assert_eq!(upstream.total_calls(), 0);

    // Zion comes back: the proxy recovers on its own, without a restart.
    zion.resume().await.unwrap();
    assert!(
        proxy.wait_ready(Duration::from_secs(6)).await,
        "not ready after Zion came back"
    );
    proxy
        .chat(&chat_body(Some("moderate")))
        .await
        .assert_served("moderate", "gpt-4o");
    assert!(zion.calls() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zion_down_with_redis_empty_is_503_too_and_recovers() {
    let redis = RedisServer::start().unwrap();
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    zion.stop().await;
    let proxy = Proxy::start(&Env::new(&upstream).zion(&zion).redis(&redis)).await;

    let reply = proxy.chat(&chat_body(Some("complex"))).await;
    reply.assert_error(503, "tier_config_unavailable");
    assert!(reply.retry_after() >= 1);
    assert_eq!(proxy.get("/readyz").await.status, 503);
    assert!(
        redis
            .query(&["EXISTS", "sentinel:tier_config"])
            .unwrap()
            .as_integer()
            == Some(0)
    );

    zion.resume().await.unwrap();
    assert!(proxy.wait_ready(Duration::from_secs(6)).await);
    proxy
        .chat(&chat_body(Some("complex")))
        .await
        .assert_served("complex", "o3");
    // The config went to Redis on the way.
    assert_eq!(
        redis
            .query(&["EXISTS", "sentinel:tier_config"])
            .unwrap()
            .as_integer(),
        Some(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_config_outlives_its_ttl_but_an_expired_redis_copy_serves_no_new_replica() {
    let redis = RedisServer::start().unwrap();
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    let env = Env::new(&upstream)
        .zion(&zion)
        .redis(&redis)
        .set("TIER_CONFIG_TTL_SECONDS", "1");

    let a = Proxy::start(&env).await;
    assert!(a.wait_ready(Duration::from_secs(5)).await);
    zion.stop().await;

    // The Redis copy expires with its 1 s TTL.
    let expired = support::eventually(Duration::from_secs(4), || async {
        redis
            .query(&["EXISTS", "sentinel:tier_config"])
            .unwrap()
            .as_integer()
            == Some(0)
    })
    .await;
    assert!(expired, "the Redis copy did not expire");

    // A keeps its config past the TTL (stale) while Zion is down.
    a.chat(&chat_body(Some("moderate")))
        .await
        .assert_served("moderate", "gpt-4o");
    assert_eq!(a.get("/readyz").await.status, 200);

    // A new replica finds nothing: 503, explicitly.
    let b = Proxy::start(&env).await;
    let reply = b.chat(&chat_body(Some("moderate"))).await;
    reply.assert_error(503, "tier_config_unavailable");
    assert!(reply.retry_after() >= 1);
    assert_eq!(b.get("/readyz").await.status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_zion_config_is_picked_up_after_the_ttl() {
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    let env = Env::new(&upstream)
        .zion(&zion)
        .set("TIER_CONFIG_TTL_SECONDS", "1");
    let proxy = Proxy::start(&env).await;

    proxy
        .chat(&chat_body(Some("moderate")))
        .await
        .assert_served("moderate", "gpt-4o");
    let model = unique("moderate-v2");
    zion.set_config(support::zion_config(&[("moderate", &[model.as_str()])]));

    // Refreshed in the background near the end of the TTL; requests never
    // wait for it and are served all along.
    let switched = support::eventually(Duration::from_secs(4), || async {
        let reply = proxy.chat(&chat_body(Some("moderate"))).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.model() == Some(model.as_str())
    })
    .await;
    assert!(switched, "the new config was not picked up");
    assert!(zion.calls() >= 2);
    // The new config's missing tiers are unavailable now.
    proxy
        .chat(&chat_body(Some("complex")))
        .await
        .assert_error(503, "tier_unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_opened_on_one_replica_keeps_the_others_off_the_model() {
    let redis = RedisServer::start().unwrap();
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    upstream.set_fault(
        "gpt-4o",
        UpstreamFault::Status {
            status: 500,
            retry_after: None,
        },
    );
    let env = Env::new(&upstream)
        .zion(&zion)
        .redis(&redis)
        .set("SENTINEL_BACKOFF_INITIAL_SECS", "30");
    // A opens after one failure; B only after many of its own, so a 503 on
    // B can only come from A's shared state.
    let a = Proxy::start(&env.clone().set("SENTINEL_FAILURE_THRESHOLD", "1")).await;
    let b = Proxy::start(&env.set("SENTINEL_FAILURE_THRESHOLD", "100")).await;

    a.chat(&chat_body(Some("moderate")))
        .await
        .assert_error(502, "upstream_failed");
    // A publishes in the background, racing its answer to the client.
    let published = support::eventually(Duration::from_secs(2), || async {
        let pttl = redis
            .query(&["PTTL", "sentinel:breaker:openai/gpt-4o"])
            .unwrap();
        pttl.as_integer().is_some_and(|ms| ms > 0)
    })
    .await;
    assert!(published, "no shared breaker key");

    let shared = support::eventually(Duration::from_secs(3), || async {
        b.chat(&chat_body(Some("moderate"))).await.status == 503
    })
    .await;
    assert!(shared, "B kept sending to the model A found failing");
    let reply = b.chat(&chat_body(Some("moderate"))).await;
    reply.assert_error(503, "all_models_backing_off");
    assert!(reply.retry_after() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failover_the_session_follows_the_model_that_served_it() {
    let redis = RedisServer::start().unwrap();
    let upstream = MockUpstream::start().await.unwrap();
    let zion = MockZion::start().await.unwrap();
    let env = Env::new(&upstream).zion(&zion).redis(&redis);
    let a = Proxy::start(&env).await;
    let b = Proxy::start(&env).await;
    let session = unique("failover");

    // Pinned to one of the two simple models.
    let first = in_session(&a, &session, "simple").await;
    let pinned = first.model().unwrap().to_owned();
    first.assert_served("simple", &pinned);
    let other = if pinned == "gpt-4o-mini" {
        "gpt-4.1-mini"
    } else {
        "gpt-4o-mini"
    };
    in_session(&b, &session, "simple")
        .await
        .assert_served("simple", &pinned);

    // The pinned model fails once: retried on the other, which keeps the session.
    upstream.set_fault_times(
        &pinned,
        UpstreamFault::Status {
            status: 500,
            retry_after: None,
        },
        1,
    );
    in_session(&a, &session, "simple")
        .await
        .assert_served("simple", other);
    for proxy in [&b, &a] {
        in_session(proxy, &session, "simple")
            .await
            .assert_served("simple", other);
    }
}
