//! The tier-config cache with the memory store, on paused tokio time.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod support;

use std::sync::Arc;
use std::time::Duration;

use metrics_util::debugging::DebuggingRecorder;
use sentinel_core::TierConfigSource;
use sentinel_testkit::metrics::Counters;
use sentinel_testkit::{MockZion, ZionFault};
use sentinel_zion::{MemoryStore, TierConfigCache};
use serde_json::json;
use support::{cache, config_version};

const TTL: Duration = Duration::from_secs(100);
const TIMEOUT: Duration = Duration::from_secs(5);

fn memory_cache(zion: &MockZion) -> TierConfigCache {
    cache(zion, TTL, Arc::new(MemoryStore::new()), TIMEOUT)
}

async fn version(cache: &TierConfigCache) -> String {
    cache.get().await.unwrap().version().unwrap().to_owned()
}

/// Lets spawned refreshes run to completion (time is paused: sleeping
/// advances it by that much, and no more).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[tokio::test(start_paused = true)]
async fn ttl_is_honoured_with_a_refresh_ahead_in_the_last_tenth() {
    let zion = MockZion::start().await.unwrap();
    let cache = memory_cache(&zion);
    assert_eq!(version(&cache).await, "mock-1");
    zion.set_config(config_version("v2"));

    tokio::time::advance(Duration::from_secs(85)).await;
    assert_eq!(version(&cache).await, "mock-1");
    settle().await;
    assert_eq!(
        zion.calls(),
        1,
        "no refresh before the last tenth of the TTL"
    );

    tokio::time::advance(Duration::from_secs(6)).await; // 91 s: refresh window.
    // The request that notices is not kept waiting: it gets the old config.
    assert_eq!(version(&cache).await, "mock-1");
    settle().await;
    assert_eq!(zion.calls(), 2);
    assert_eq!(version(&cache).await, "v2");
    // One refresh, not one per request.
    for _ in 0..10 {
        cache.get().await.unwrap();
    }
    settle().await;
    assert_eq!(zion.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_memory_store_expires_with_the_ttl() {
    let zion = MockZion::start().await.unwrap();
    let store = Arc::new(MemoryStore::new());
    let first = cache(&zion, TTL, store.clone(), TIMEOUT);
    first.get().await.unwrap();

    tokio::time::advance(Duration::from_secs(50)).await;
    let second = cache(&zion, TTL, store.clone(), TIMEOUT);
    second.get().await.unwrap();
    assert_eq!(zion.calls(), 1, "the second cache read the store");

    tokio::time::advance(Duration::from_secs(51)).await; // 101 s: the stored copy is gone.
    let third = cache(&zion, TTL, store, TIMEOUT);
    third.get().await.unwrap();
    assert_eq!(zion.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_hundred_concurrent_cold_lookups_make_one_zion_call() {
    let zion = MockZion::start().await.unwrap();
    zion.set_fault(ZionFault::Delay(Duration::from_millis(200)));
    let cache = memory_cache(&zion);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let cache = cache.clone();
        tasks.spawn(async move { cache.get().await.map(|c| c.version().map(str::to_owned)) });
    }
    while let Some(result) = tasks.join_next().await {
        assert_eq!(result.unwrap().unwrap().as_deref(), Some("mock-1"));
    }
    assert_eq!(zion.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn zion_down_with_a_warm_cache_serves_past_the_ttl_as_stale() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let zion = MockZion::start().await.unwrap();
    let cache = memory_cache(&zion);
    cache.get().await.unwrap();
    zion.stop().await;

    tokio::time::advance(Duration::from_secs(250)).await;
    for _ in 0..3 {
        assert_eq!(version(&cache).await, "mock-1");
        settle().await;
    }
    let counters = Counters::take(&snapshotter);
    let lookups = "sentinel_tier_config_lookups_total";
    assert_eq!(counters.get(lookups, &[("result", "stale")]), 3);
    assert!(counters.get("sentinel_zion_fetches_total", &[("outcome", "unreachable")]) >= 1);
    assert_eq!(
        counters.get(lookups, &[("result", "miss")]),
        1,
        "the first, cold lookup"
    );

    // Zion back: the next refresh after the spacing brings the cache up to date.
    zion.set_config(config_version("v2"));
    zion.resume().await.unwrap();
    tokio::time::advance(Duration::from_secs(31)).await;
    cache.get().await.unwrap();
    settle().await;
    assert_eq!(version(&cache).await, "v2");
}

#[tokio::test(start_paused = true)]
async fn zion_down_and_nothing_cached_is_a_typed_error_then_recovers() {
    let zion = MockZion::start().await.unwrap();
    zion.set_fault(ZionFault::Status(503));
    let cache = memory_cache(&zion);

    let err = cache.get().await.unwrap_err();
    assert_eq!(err.retry_after(), Duration::from_secs(1));
    assert!(err.to_string().contains("503"), "{err}");
    assert_eq!(zion.calls(), 1);

    // Within the spacing, lookups fail at once without calling Zion.
    let err = cache.load().await.unwrap_err();
    assert!(err.retry_after() <= Duration::from_secs(1));
    assert_eq!(zion.calls(), 1);

    // After it, Zion is tried again; a second failure doubles the spacing.
    tokio::time::advance(Duration::from_secs(1)).await;
    let err = cache.get().await.unwrap_err();
    assert_eq!(err.retry_after(), Duration::from_secs(2));
    assert_eq!(zion.calls(), 2);

    // Zion back: the first lookup after the spacing recovers, no restart needed.
    zion.clear_fault();
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(version(&cache).await, "mock-1");
    assert_eq!(zion.calls(), 3);
    assert!(cache.is_loaded());
}

#[tokio::test(start_paused = true)]
async fn the_spacing_is_capped_at_thirty_seconds() {
    let zion = MockZion::start().await.unwrap();
    zion.set_fault(ZionFault::Status(500));
    let cache = memory_cache(&zion);
    let mut last = Duration::ZERO;
    for _ in 0..8 {
        let err = cache.get().await.unwrap_err();
        last = err.retry_after();
        tokio::time::advance(last).await;
    }
    assert_eq!(last, Duration::from_secs(30));
    assert_eq!(zion.calls(), 8);
}

#[tokio::test(start_paused = true)]
async fn an_invalid_config_never_replaces_a_good_one() {
    let zion = MockZion::start().await.unwrap();
    let cache = memory_cache(&zion);
    assert_eq!(version(&cache).await, "mock-1");

    let bad = json!({ "version": "bad", "tiers": { "simple": { "models": [
        { "provider": "openai", "model": "x", "relative_cost": 11 } ] } } });
    zion.set_config(bad);
    let err = cache.refresh().await.unwrap_err();
    assert!(err.to_string().contains("relative_cost"), "{err}");
    assert_eq!(version(&cache).await, "mock-1");

    // Past the TTL, with Zion still serving garbage: still the good one.
    zion.set_fault(ZionFault::NotJson);
    tokio::time::advance(Duration::from_secs(150)).await;
    assert_eq!(version(&cache).await, "mock-1");
    settle().await;
    assert_eq!(version(&cache).await, "mock-1");
}

#[tokio::test]
async fn a_zero_ttl_is_rejected() {
    let zion = MockZion::start().await.unwrap();
    let result = TierConfigCache::builder(support::zion_client(&zion, TIMEOUT))
        .ttl(Duration::ZERO)
        .build();
    assert!(result.is_err());
}

#[tokio::test(start_paused = true)]
async fn a_cold_fetch_outlives_its_caller_and_serves_the_next_waiters() {
    let zion = MockZion::start().await.unwrap();
    zion.set_fault(ZionFault::Delay(Duration::from_secs(1)));
    let cache = memory_cache(&zion);

    // The first caller goes away 100 ms into the fetch.
    let first = tokio::spawn({
        let cache = cache.clone();
        async move { cache.get().await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());

    // Callers that come later wait for the same fetch, not a new one.
    let mut waiters = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let cache = cache.clone();
        waiters.spawn(async move { cache.get().await.map(|c| c.version().map(str::to_owned)) });
    }
    let started = tokio::time::Instant::now();
    while let Some(result) = waiters.join_next().await {
        assert_eq!(result.unwrap().unwrap().as_deref(), Some("mock-1"));
    }
    // The rest of the first fetch's second, not a second of their own.
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(zion.calls(), 1);
}

/// A memory store whose writes never finish, counting unlocks.
struct HangingPut {
    inner: MemoryStore,
    unlocks: Arc<std::sync::atomic::AtomicUsize>,
}

impl sentinel_zion::ConfigStore for HangingPut {
    fn get(&self) -> sentinel_zion::store::StoreFuture<'_, Option<sentinel_zion::Stored>> {
        self.inner.get()
    }
    fn put(&self, _: String, _: Duration) -> sentinel_zion::store::StoreFuture<'_, ()> {
        Box::pin(std::future::pending())
    }
    fn try_lock(&self, token: u64, hold: Duration) -> sentinel_zion::store::StoreFuture<'_, bool> {
        self.inner.try_lock(token, hold)
    }
    fn unlock(&self, token: u64) -> sentinel_zion::store::StoreFuture<'_, ()> {
        self.unlocks
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.unlock(token)
    }
}

#[tokio::test(start_paused = true)]
async fn a_fetch_cut_short_by_its_bound_releases_its_lock() {
    use sentinel_zion::ConfigStore;
    let zion = MockZion::start().await.unwrap();
    let memory = MemoryStore::new();
    let unlocks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let store = HangingPut {
        inner: memory.clone(),
        unlocks: unlocks.clone(),
    };
    let cache = cache(&zion, TTL, Arc::new(store), TIMEOUT);

    // The store never finishes writing: the fetch is cut short at twice the
    // Zion timeout plus 5 s, and the lookup fails instead of hanging.
    let started = tokio::time::Instant::now();
    let err = cache.get().await.unwrap_err();
    assert!(err.reason().contains("too long"), "{err}");
    assert_eq!(started.elapsed(), 2 * TIMEOUT + Duration::from_secs(5));
    // The lock it held is released in the background, not left to expire.
    settle().await;
    assert_eq!(unlocks.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(memory.try_lock(7, Duration::from_secs(1)).await.unwrap());
}

/// A memory store on which another replica's whole fetch lands between this
/// replica's first read and its lock: the first `get` misses, and by the
/// time it answers the other replica has written its config (version
/// `other`) and released the lock. This is the interleaving of a cold
/// fleet in which one replica is slow between its two round trips.
struct WrittenMeanwhile {
    inner: MemoryStore,
    missed: std::sync::atomic::AtomicBool,
}

impl sentinel_zion::ConfigStore for WrittenMeanwhile {
    fn get(&self) -> sentinel_zion::store::StoreFuture<'_, Option<sentinel_zion::Stored>> {
        if self.missed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return self.inner.get();
        }
        Box::pin(async move {
            let other = config_version("other").to_string();
            self.inner.put(other, TTL).await?;
            Ok(None)
        })
    }
    fn put(&self, json: String, ttl: Duration) -> sentinel_zion::store::StoreFuture<'_, ()> {
        self.inner.put(json, ttl)
    }
    fn try_lock(&self, token: u64, hold: Duration) -> sentinel_zion::store::StoreFuture<'_, bool> {
        self.inner.try_lock(token, hold)
    }
    fn unlock(&self, token: u64) -> sentinel_zion::store::StoreFuture<'_, ()> {
        self.inner.unlock(token)
    }
}

#[tokio::test(start_paused = true)]
async fn a_config_stored_between_the_miss_and_the_lock_is_used_without_calling_zion() {
    use sentinel_zion::ConfigStore;
    let zion = MockZion::start().await.unwrap();
    let memory = MemoryStore::new();
    let store = WrittenMeanwhile {
        inner: memory.clone(),
        missed: std::sync::atomic::AtomicBool::new(false),
    };
    let cache = cache(&zion, TTL, Arc::new(store), TIMEOUT);

    // The lock is free (the other replica released it), so this replica
    // takes it; it reads the store again under the lock before calling
    // Zion, and finds the other replica's config.
    assert_eq!(version(&cache).await, "other");
    assert_eq!(
        zion.calls(),
        0,
        "a cold replica called Zion for a stored config"
    );
    // And it released the lock it took.
    assert!(memory.try_lock(7, Duration::from_secs(1)).await.unwrap());
}
