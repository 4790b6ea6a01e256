//! The tier-config cache over a real `redis-server` on a free port.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sentinel_core::{RawTierConfig, TierConfig};
use sentinel_testkit::{MockZion, RedisServer, RespValue, ZionFault};
use sentinel_zion::{ConfigStore, RedisSettings, RedisStore, TierConfigCache};
use support::{cache, config_version};

const TIMEOUT: Duration = Duration::from_millis(800);
const KEY: &str = "sentinel:tier_config";
const LOCK: &str = "sentinel:tier_config:lock";

fn store(redis: &RedisServer) -> Arc<dyn ConfigStore> {
    let settings = RedisSettings::new(redis.url()).command_timeout(Duration::from_millis(300));
    let pool = sentinel_zion::redis::connect(&settings).unwrap();
    Arc::new(RedisStore::new(pool, "sentinel:"))
}

fn redis_cache(zion: &MockZion, redis: &RedisServer, ttl: Duration) -> TierConfigCache {
    cache(zion, ttl, store(redis), TIMEOUT)
}

async fn version(cache: &TierConfigCache) -> String {
    cache.get().await.unwrap().version().unwrap().to_owned()
}

/// Polls `check` every 50 ms until it holds or `within` passes.
async fn eventually(within: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn the_redis_key_holds_the_validated_config_with_the_ttl_and_expires() {
    let redis = RedisServer::start().unwrap();
    let zion = MockZion::start().await.unwrap();
    let cache = redis_cache(&zion, &redis, Duration::from_secs(2));
    let config = cache.get().await.unwrap();

    let ttl = redis.query(&["TTL", KEY]).unwrap().as_integer().unwrap();
    assert!((1..=2).contains(&ttl), "TTL {ttl}");
    let RespValue::Bulk(Some(json)) = redis.query(&["GET", KEY]).unwrap() else {
        panic!("no value under {KEY}");
    };
    let raw: RawTierConfig = serde_json::from_slice(&json).unwrap();
    assert_eq!(&TierConfig::validate(raw).unwrap(), &*config);
    // The fetch lock is released (compare-and-delete) once the fetch ends.
    assert!(redis.query(&["GET", LOCK]).unwrap().is_nil());

    // The TTL is honoured: the key goes, and the next lookup past the TTL
    // brings the new config in (the stale one is served meanwhile).
    zion.set_config(config_version("v2"));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(redis.query(&["EXISTS", KEY]).unwrap().as_integer(), Some(0));
    assert!(
        eventually(Duration::from_secs(5), async || version(&cache).await
            == "v2")
        .await,
        "the cache did not pick up the new config after its TTL"
    );
    assert_eq!(zion.calls(), 2);
}

#[tokio::test]
async fn a_second_instance_over_the_same_redis_does_not_call_zion() {
    let redis = RedisServer::start().unwrap();
    let zion = MockZion::start().await.unwrap();
    let first = redis_cache(&zion, &redis, Duration::from_secs(60));
    first.get().await.unwrap();
    let second = redis_cache(&zion, &redis, Duration::from_secs(60));
    assert_eq!(version(&second).await, "mock-1");
    assert_eq!(zion.calls(), 1);
}

#[tokio::test]
async fn two_cold_instances_over_one_redis_make_one_zion_call() {
    let redis = RedisServer::start().unwrap();
    let zion = MockZion::start().await.unwrap();
    zion.set_fault(ZionFault::Delay(Duration::from_millis(300)));
    let a = redis_cache(&zion, &redis, Duration::from_secs(60));
    let b = redis_cache(&zion, &redis, Duration::from_secs(60));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..100 {
        let cache = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.spawn(async move { cache.get().await.map(|c| c.version().map(str::to_owned)) });
    }
    while let Some(result) = tasks.join_next().await {
        assert_eq!(result.unwrap().unwrap().as_deref(), Some("mock-1"));
    }
    assert_eq!(zion.calls(), 1);
}

#[tokio::test]
async fn a_held_lock_is_waited_for_at_most_its_time_and_left_alone() {
    let redis = RedisServer::start().unwrap();
    let zion = MockZion::start().await.unwrap();
    // Another replica holds the lock and never writes a value.
    redis.query(&["SET", LOCK, "other", "PX", "10000"]).unwrap();
    let cache = redis_cache(&zion, &redis, Duration::from_secs(60));
    let started = Instant::now();
    assert_eq!(version(&cache).await, "mock-1");
    assert!(
        started.elapsed() >= TIMEOUT,
        "did not wait for the lock holder"
    );
    assert_eq!(zion.calls(), 1);
    // Compare-and-delete: the other replica's lock is not ours to delete.
    assert_eq!(redis.query(&["GET", LOCK]).unwrap().as_str(), Some("other"));
}

#[tokio::test]
async fn redis_down_keeps_lookups_working_and_writes_resume_after_restart() {
    let mut redis = RedisServer::start().unwrap();
    let zion = MockZion::start().await.unwrap();
    let cache = redis_cache(&zion, &redis, Duration::from_secs(60));
    cache.get().await.unwrap();

    redis.stop();
    // The warm cache answers from its snapshot.
    assert_eq!(version(&cache).await, "mock-1");
    // A cold instance goes to Zion, bounded by the command timeout.
    let cold = redis_cache(&zion, &redis, Duration::from_secs(60));
    let started = Instant::now();
    assert_eq!(version(&cold).await, "mock-1");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(zion.calls(), 2);

    // Redis back (empty): the pool reconnects and writes land again.
    redis.restart().unwrap();
    zion.set_config(config_version("v3"));
    let wrote = eventually(Duration::from_secs(10), async || {
        let _ = cold.refresh().await;
        matches!(redis.query(&["GET", KEY]), Ok(RespValue::Bulk(Some(_))))
    })
    .await;
    assert!(wrote, "no write reached Redis after its restart");
    assert_eq!(version(&cold).await, "v3");
}

#[tokio::test]
async fn zion_down_and_the_redis_key_expired_is_unavailable_for_a_new_replica() {
    let redis = RedisServer::start().unwrap();
    let zion = MockZion::start().await.unwrap();
    let warm = redis_cache(&zion, &redis, Duration::from_secs(1));
    warm.get().await.unwrap();
    zion.stop().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // The process that holds a config keeps it, past the TTL.
    assert_eq!(version(&warm).await, "mock-1");
    // A new replica finds nothing: a typed error with a Retry-After.
    let fresh = redis_cache(&zion, &redis, Duration::from_secs(1));
    let err = fresh.get().await.unwrap_err();
    assert_eq!(err.retry_after(), Duration::from_secs(1));

    // Zion back: the new replica recovers on its own after the spacing.
    zion.resume().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(version(&fresh).await, "mock-1");
}

#[tokio::test]
async fn an_invalid_config_in_redis_is_ignored_and_replaced_from_zion() {
    let redis = RedisServer::start().unwrap();
    let zion = MockZion::start().await.unwrap();
    redis
        .query(&[
            "SET",
            KEY,
            r#"{"tiers":{"simple":{"models":[{"provider":"","model":"x","relative_cost":1}]}}}"#,
            "EX",
            "60",
        ])
        .unwrap();
    let cache = redis_cache(&zion, &redis, Duration::from_secs(60));
    assert_eq!(version(&cache).await, "mock-1");
    assert_eq!(zion.calls(), 1);
}

#[tokio::test]
async fn a_caller_that_goes_away_mid_fetch_leaves_no_lock_behind() {
    let redis = RedisServer::start().unwrap();
    let zion = MockZion::start().await.unwrap();
    zion.set_fault(ZionFault::Delay(Duration::from_millis(800)));
    // Zion timeout 5 s: the lock is taken for 5 s (PX).
    let hold = Duration::from_secs(5);
    let a = cache(&zion, Duration::from_secs(60), store(&redis), hold);

    // The first lookup's caller goes away (its client disconnected) while
    // the fetch waits on Zion, holding the cross-replica lock.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), a.get())
            .await
            .is_err()
    );
    let dropped_at = Instant::now();
    assert!(
        !redis.query(&["GET", LOCK]).unwrap().is_nil(),
        "the fetch holds the lock"
    );

    // The fetch is the cache's, not the caller's: it goes on, stores the
    // config and releases the lock, long before the lock's 5 s.
    assert!(
        eventually(Duration::from_secs(3), async || redis
            .query(&["GET", LOCK])
            .unwrap()
            .is_nil())
        .await,
        "the lock was left to expire"
    );
    assert_eq!(redis.query(&["EXISTS", KEY]).unwrap().as_integer(), Some(1));

    // Another replica finds the config in Redis at once, and this one holds
    // it: one Zion call in all.
    let b = cache(&zion, Duration::from_secs(60), store(&redis), hold);
    assert_eq!(version(&b).await, "mock-1");
    assert_eq!(version(&a).await, "mock-1");
    assert!(dropped_at.elapsed() < Duration::from_secs(3));
    assert_eq!(zion.calls(), 1);
}
