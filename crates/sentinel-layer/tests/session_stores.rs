//! Session stores: the upgrade-only rule, TTLs and bounds, for the memory
//! store and for the Redis store against a real `redis-server`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use fred::clients::Pool;
use sentinel_core::{PinWrite, Pinned, Tier};
use sentinel_layer::session::{
    MemorySessionStore, PinOutcome, RedisSessionStore, SessionError, SessionStore,
};
use sentinel_testkit::{RedisServer, RespValue};

const TTL: Duration = Duration::from_secs(60);

fn pin(tier: Tier, model: &str) -> Pinned {
    Pinned::new(tier, "openai", model)
}

async fn pool(url: &str) -> Pool {
    sentinel_testkit::redis::fred_pool(url).await.unwrap()
}

async fn redis_store(redis: &RedisServer, ttl: Duration) -> RedisSessionStore {
    RedisSessionStore::new(pool(&redis.url()).await, "sentinel:", ttl)
}

fn get(redis: &RedisServer, key: &str) -> Option<String> {
    match redis.query(&["GET", key]).unwrap() {
        RespValue::Bulk(Some(bytes)) => Some(String::from_utf8(bytes).unwrap()),
        RespValue::Bulk(None) => None,
        other => panic!("GET {key}: {other:?}"),
    }
}

fn pttl(redis: &RedisServer, key: &str) -> i64 {
    redis.query(&["PTTL", key]).unwrap().as_integer().unwrap()
}

fn outcome(previous: Option<&Pinned>, current: Option<&Pinned>) -> PinOutcome {
    PinOutcome {
        previous: previous.cloned(),
        current: current.cloned(),
    }
}

/// Every case of the core rule ([`PinWrite::CASES`]) against a store: the
/// pin held is set with `repin` (which writes over no pin), then the write
/// is made, then the pin in force read back.
async fn follows_the_core_rule(store: &dyn SessionStore, prefix: &str) {
    for (i, (write, held, new, replaces)) in PinWrite::CASES.into_iter().enumerate() {
        let session = format!("{prefix}-case-{i}");
        let held = held.map(|tier| pin(tier, "held"));
        if let Some(held) = &held {
            store.repin(&session, held).await.unwrap();
        }
        let new = pin(new, "new");
        match write {
            PinWrite::Upgrade => {
                store.pin_or_get(&session, Some(&new)).await.unwrap();
            }
            PinWrite::Repin => {
                store.repin(&session, &new).await.unwrap();
            }
        }
        let current = store.pin_or_get(&session, None).await.unwrap().current;
        let expected = if replaces { Some(new) } else { held };
        assert_eq!(current, expected, "case {i}: {write:?} over {expected:?}");
    }
}

/// The behaviour both stores share: upgrade-only pinning and repinning.
async fn upgrade_only_rule(store: &dyn SessionStore) {
    let s1 = pin(Tier::Simple, "s1");
    let s2 = pin(Tier::Simple, "s2");
    let m1 = pin(Tier::Moderate, "m1");
    let m2 = pin(Tier::Moderate, "m2");
    let c1 = pin(Tier::Complex, "c1");

    // Reading a session that does not exist pins nothing.
    assert_eq!(
        store.pin_or_get("rule-a", None).await.unwrap(),
        outcome(None, None)
    );
    // A new session pins the candidate.
    assert_eq!(
        store.pin_or_get("rule-a", Some(&m1)).await.unwrap(),
        outcome(None, Some(&m1))
    );
    // An equal or lower candidate keeps the pin.
    assert_eq!(
        store.pin_or_get("rule-a", Some(&m2)).await.unwrap(),
        outcome(Some(&m1), Some(&m1))
    );
    assert_eq!(
        store.pin_or_get("rule-a", Some(&s1)).await.unwrap(),
        outcome(Some(&m1), Some(&m1))
    );
    // No candidate just reads.
    assert_eq!(
        store.pin_or_get("rule-a", None).await.unwrap(),
        outcome(Some(&m1), Some(&m1))
    );
    // A higher candidate upgrades.
    assert_eq!(
        store.pin_or_get("rule-a", Some(&c1)).await.unwrap(),
        outcome(Some(&m1), Some(&c1))
    );
    assert_eq!(
        store.pin_or_get("rule-a", None).await.unwrap(),
        outcome(Some(&c1), Some(&c1))
    );
    // Sessions are independent.
    assert_eq!(
        store.pin_or_get("rule-b", Some(&s1)).await.unwrap(),
        outcome(None, Some(&s1))
    );

    // Repin within the tier replaces the pin.
    assert_eq!(store.repin("rule-b", &s2).await.unwrap(), Some(s2.clone()));
    assert_eq!(
        store.pin_or_get("rule-b", None).await.unwrap(),
        outcome(Some(&s2), Some(&s2))
    );
    // Repin to a higher tier replaces it too.
    assert_eq!(store.repin("rule-b", &m2).await.unwrap(), Some(m2.clone()));
    // Repin to a lower tier is refused: the higher pin stays in force.
    assert_eq!(store.repin("rule-b", &s1).await.unwrap(), Some(m2.clone()));
    assert_eq!(store.repin("rule-a", &m1).await.unwrap(), Some(c1.clone()));
    assert_eq!(
        store.pin_or_get("rule-a", None).await.unwrap(),
        outcome(Some(&c1), Some(&c1))
    );
    // Repin on an empty session pins.
    assert_eq!(store.repin("rule-c", &s1).await.unwrap(), Some(s1.clone()));
    assert_eq!(
        store.pin_or_get("rule-c", None).await.unwrap(),
        outcome(Some(&s1), Some(&s1))
    );
}

/// For many sessions, a `simple` and a `complex` candidate race: the session
/// always ends on the complex pin.
async fn racing_candidates_end_on_the_higher_tier<S: SessionStore + Clone>(store: S) {
    let simple = pin(Tier::Simple, "s1");
    let complex = pin(Tier::Complex, "c1");
    let mut tasks = Vec::new();
    for i in 0..200 {
        let id = format!("race-{i}");
        let mut candidates = [simple.clone(), complex.clone()];
        if i % 2 == 1 {
            candidates.reverse();
        }
        for candidate in candidates {
            let store = store.clone();
            let id = id.clone();
            tasks.push(tokio::spawn(async move {
                let outcome = store.pin_or_get(&id, Some(&candidate)).await.unwrap();
                (candidate, outcome)
            }));
        }
    }
    for task in tasks {
        let (candidate, outcome) = task.await.unwrap();
        let current = outcome.current.unwrap();
        // Each call ends on its own candidate or on the higher tier.
        assert!(current == candidate || current == complex, "{current:?}");
    }
    for i in 0..200 {
        let id = format!("race-{i}");
        let outcome = store.pin_or_get(&id, None).await.unwrap();
        assert_eq!(outcome.current.as_ref(), Some(&complex), "session {id}");
    }
}

/// Waits for `f` to succeed, up to `limit`.
async fn eventually<T, F: Future<Output = Result<T, SessionError>>>(
    limit: Duration,
    mut f: impl FnMut() -> F,
) -> Result<T, SessionError> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let result = f().await;
        if result.is_ok() || tokio::time::Instant::now() >= deadline {
            return result;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---- memory ----

#[tokio::test]
async fn memory_follows_the_upgrade_only_rule() {
    let store = MemorySessionStore::new();
    upgrade_only_rule(&store).await;
    assert_eq!(store.len(), 3);
    assert!(!store.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_racing_candidates_end_on_the_higher_tier() {
    racing_candidates_end_on_the_higher_tier(MemorySessionStore::new()).await;
}

#[tokio::test(start_paused = true)]
async fn memory_sessions_expire_after_the_idle_ttl() {
    let store = MemorySessionStore::new().with_limits(10, TTL);
    let m1 = pin(Tier::Moderate, "m1");
    store.pin_or_get("idle", Some(&m1)).await.unwrap();

    tokio::time::advance(TTL).await;
    // Expired: absent, so a lower candidate pins anew.
    let s1 = pin(Tier::Simple, "s1");
    assert_eq!(
        store.pin_or_get("idle", None).await.unwrap(),
        outcome(None, None)
    );
    assert_eq!(
        store.pin_or_get("idle", Some(&s1)).await.unwrap(),
        outcome(None, Some(&s1))
    );
    // Expired before a repin: the repin pins whatever tier it carries.
    tokio::time::advance(TTL + Duration::from_secs(1)).await;
    assert_eq!(store.len(), 1, "not swept before the next call");
    assert_eq!(store.repin("other", &s1).await.unwrap(), Some(s1.clone()));
    assert_eq!(store.len(), 1, "the expired session was swept");
    tokio::time::advance(TTL).await;
    assert_eq!(store.repin("other", &s1).await.unwrap(), Some(s1.clone()));
}

#[tokio::test(start_paused = true)]
async fn memory_ttl_slides_on_every_access() {
    let store = MemorySessionStore::new().with_limits(10, TTL);
    let m1 = pin(Tier::Moderate, "m1");
    let s1 = pin(Tier::Simple, "s1");
    let almost = TTL - Duration::from_secs(1);
    store.pin_or_get("slide", Some(&m1)).await.unwrap();

    // Reads, kept candidates and refused repins all extend the TTL: the
    // session outlives several TTLs.
    tokio::time::advance(almost).await;
    assert_eq!(
        store.pin_or_get("slide", None).await.unwrap().current,
        Some(m1.clone())
    );
    tokio::time::advance(almost).await;
    assert_eq!(
        store.pin_or_get("slide", Some(&s1)).await.unwrap().current,
        Some(m1.clone())
    );
    tokio::time::advance(almost).await;
    assert_eq!(store.repin("slide", &s1).await.unwrap(), Some(m1.clone()));
    tokio::time::advance(almost).await;
    assert_eq!(
        store.pin_or_get("slide", None).await.unwrap().previous,
        Some(m1.clone())
    );
    // Then left alone for a whole TTL, it is gone.
    tokio::time::advance(TTL).await;
    assert_eq!(
        store.pin_or_get("slide", None).await.unwrap(),
        outcome(None, None)
    );
}

#[tokio::test]
async fn memory_never_holds_more_than_max_entries() {
    let store = MemorySessionStore::new().with_limits(3, TTL);
    let s1 = pin(Tier::Simple, "s1");
    for i in 0..10 {
        let id = format!("bound-{i}");
        store.pin_or_get(&id, Some(&s1)).await.unwrap();
        assert!(store.len() <= 3, "{} entries", store.len());
        assert_eq!(
            store.pin_or_get(&id, None).await.unwrap().current,
            Some(s1.clone()),
            "the newest session {id} was evicted"
        );
    }
    assert_eq!(store.len(), 3);
    // The oldest sessions went first.
    assert_eq!(
        store.pin_or_get("bound-0", None).await.unwrap().current,
        None
    );
    assert_eq!(
        store.pin_or_get("bound-9", None).await.unwrap().current,
        Some(s1)
    );
}

#[tokio::test(start_paused = true)]
async fn memory_drops_expired_sessions_before_evicting_live_ones() {
    let store = MemorySessionStore::new().with_limits(3, TTL);
    let s1 = pin(Tier::Simple, "s1");
    store.pin_or_get("old-1", Some(&s1)).await.unwrap();
    store.pin_or_get("old-2", Some(&s1)).await.unwrap();
    tokio::time::advance(TTL / 2).await;
    store.pin_or_get("live", Some(&s1)).await.unwrap();
    tokio::time::advance(TTL / 2).await;
    // Full, but two expired: the live session survives two new ones.
    store.pin_or_get("new-1", Some(&s1)).await.unwrap();
    store.pin_or_get("new-2", Some(&s1)).await.unwrap();
    assert_eq!(store.len(), 3);
    for id in ["live", "new-1", "new-2"] {
        assert_eq!(
            store.pin_or_get(id, None).await.unwrap().current,
            Some(s1.clone()),
            "{id}"
        );
    }
}

#[tokio::test]
async fn memory_clones_share_the_store() {
    let store = MemorySessionStore::new();
    let clone = store.clone();
    let c1 = pin(Tier::Complex, "c1");
    store.pin_or_get("shared", Some(&c1)).await.unwrap();
    assert_eq!(
        clone.pin_or_get("shared", None).await.unwrap().current,
        Some(c1)
    );
    assert_eq!(clone.len(), 1);
}

// ---- redis ----

#[tokio::test]
async fn memory_follows_every_case_of_the_core_rule() {
    follows_the_core_rule(&MemorySessionStore::new(), "memory").await;
}

#[tokio::test]
async fn redis_follows_every_case_of_the_core_rule() {
    let redis = RedisServer::start().unwrap();
    follows_the_core_rule(&redis_store(&redis, TTL).await, "redis").await;
}

#[tokio::test]
async fn redis_follows_the_upgrade_only_rule() {
    let redis = RedisServer::start().unwrap();
    let store = redis_store(&redis, TTL).await;
    upgrade_only_rule(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_racing_candidates_end_on_the_higher_tier() {
    let redis = RedisServer::start().unwrap();
    let store = redis_store(&redis, TTL).await;
    racing_candidates_end_on_the_higher_tier(store).await;
}

#[tokio::test]
async fn redis_stores_one_key_per_session_with_a_sliding_ttl() {
    let redis = RedisServer::start().unwrap();
    let store = redis_store(&redis, TTL).await;
    let key = "sentinel:session:abc-1";
    assert_eq!(store.key("abc-1"), key);
    assert_eq!(store.ttl(), TTL);

    let c1 = Pinned::new(Tier::Complex, "openai", "o3");
    store.pin_or_get("abc-1", Some(&c1)).await.unwrap();
    assert_eq!(get(&redis, key).as_deref(), Some("2\nopenai\no3"));
    let ttl = pttl(&redis, key);
    assert!((59_000..=60_000).contains(&ttl), "{ttl}");

    // Reading slides the TTL back up.
    redis.query(&["PEXPIRE", key, "5000"]).unwrap();
    store.pin_or_get("abc-1", None).await.unwrap();
    let ttl = pttl(&redis, key);
    assert!(ttl > 59_000, "{ttl}");
    // So does a candidate that is kept, and a refused repin.
    redis.query(&["PEXPIRE", key, "5000"]).unwrap();
    store
        .pin_or_get("abc-1", Some(&pin(Tier::Simple, "s1")))
        .await
        .unwrap();
    assert!(pttl(&redis, key) > 59_000);
    redis.query(&["PEXPIRE", key, "5000"]).unwrap();
    store
        .repin("abc-1", &pin(Tier::Moderate, "m1"))
        .await
        .unwrap();
    assert!(pttl(&redis, key) > 59_000);
    assert_eq!(get(&redis, key).as_deref(), Some("2\nopenai\no3"));

    // Reading a missing session writes nothing.
    store.pin_or_get("nobody", None).await.unwrap();
    assert_eq!(get(&redis, "sentinel:session:nobody"), None);

    // Expired in Redis: absent.
    redis.query(&["PEXPIRE", key, "1"]).unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        store.pin_or_get("abc-1", None).await.unwrap(),
        outcome(None, None)
    );
}

#[tokio::test]
async fn redis_treats_foreign_values_as_absent_and_overwrites_them() {
    let redis = RedisServer::start().unwrap();
    let store = redis_store(&redis, TTL).await;
    let s1 = pin(Tier::Simple, "s1");
    let m1 = pin(Tier::Moderate, "m1");

    for (i, garbage) in ["", "garbage", "7\nopenai\nm", "1\nopenai", "1\n\nm"]
        .into_iter()
        .enumerate()
    {
        let id = format!("foreign-{i}");
        let key = store.key(&id);
        redis.query(&["SET", &key, garbage]).unwrap();
        // Read only: absent, left alone.
        assert_eq!(
            store.pin_or_get(&id, None).await.unwrap(),
            outcome(None, None)
        );
        assert_eq!(get(&redis, &key).as_deref(), Some(garbage));
        // Pinning overwrites it, even with the lowest tier.
        assert_eq!(
            store.pin_or_get(&id, Some(&s1)).await.unwrap(),
            outcome(None, Some(&s1))
        );
        assert_eq!(get(&redis, &key).as_deref(), Some("0\nopenai\ns1"));
    }

    // A key of another type.
    let key = store.key("list");
    redis.query(&["RPUSH", &key, "x"]).unwrap();
    assert_eq!(
        store.pin_or_get("list", None).await.unwrap(),
        outcome(None, None)
    );
    assert_eq!(store.repin("list", &m1).await.unwrap(), Some(m1.clone()));
    assert_eq!(get(&redis, &key).as_deref(), Some("1\nopenai\nm1"));
}

#[tokio::test]
async fn redis_down_fails_fast_and_recovers_after_restart() {
    let mut redis = RedisServer::start().unwrap();
    let store = redis_store(&redis, TTL).await;
    let m1 = pin(Tier::Moderate, "m1");
    store.pin_or_get("down", Some(&m1)).await.unwrap();

    redis.stop();
    let err = tokio::time::timeout(Duration::from_secs(3), store.pin_or_get("down", None))
        .await
        .expect("pin_or_get hung while Redis was down")
        .unwrap_err();
    assert!(!err.to_string().contains(&redis.url()), "{err}");
    let err = tokio::time::timeout(Duration::from_secs(3), store.repin("down", &m1))
        .await
        .expect("repin hung while Redis was down")
        .unwrap_err();
    assert!(!err.to_string().contains("127.0.0.1"), "{err}");

    // Back, empty: the pool reconnects and the store works again.
    redis.restart().unwrap();
    let outcome = eventually(Duration::from_secs(10), || {
        store.pin_or_get("down", Some(&m1))
    })
    .await
    .expect("the store did not recover after Redis restarted");
    assert_eq!(outcome.current, Some(m1.clone()));
    assert_eq!(
        store.pin_or_get("down", None).await.unwrap().current,
        Some(m1)
    );
}

#[tokio::test]
async fn stores_work_as_trait_objects() {
    let stores: Vec<Arc<dyn SessionStore>> = vec![Arc::new(MemorySessionStore::new())];
    for store in stores {
        let c1 = pin(Tier::Complex, "c1");
        assert_eq!(
            store.pin_or_get("dyn", Some(&c1)).await.unwrap().current,
            Some(c1)
        );
    }
}
