//! The shared level of the tier-config cache: one narrow trait,
//! [`ConfigStore`], with a Redis ([`RedisStore`]) and an in-memory
//! ([`MemoryStore`]) implementation.
//!
//! A store holds the validated config as JSON under one key with a TTL, and
//! a short-lived lock that keeps a cold fleet from stampeding Zion.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use sentinel_zion::{ConfigStore, MemoryStore, RedisSettings, RedisStore};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // In memory: nothing to run.
//! let memory: Arc<dyn ConfigStore> = Arc::new(MemoryStore::new());
//!
//! // Redis: the value lives under `sentinel:tier_config`.
//! let pool = sentinel_zion::redis::connect(&RedisSettings::new("redis://127.0.0.1:6379"))?;
//! let redis: Arc<dyn ConfigStore> = Arc::new(RedisStore::new(pool, "sentinel:"));
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::clients::Pool;
use fred::interfaces::{ClientLike, KeysInterface, LuaInterface};
use fred::types::{Expiration, SetOptions};
use tokio::time::Instant;

/// The future a [`ConfigStore`] method returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A config read from a store, with the time it has left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The config document, as JSON.
    pub json: String,
    /// How long until the store drops it.
    pub ttl_left: Duration,
}

/// The shared level of the config cache.
pub trait ConfigStore: Send + Sync + 'static {
    /// The stored config, if any.
    fn get(&self) -> StoreFuture<'_, Option<Stored>>;
    /// Stores `json` for `ttl`.
    fn put(&self, json: String, ttl: Duration) -> StoreFuture<'_, ()>;
    /// Takes the fetch lock for `hold` unless someone holds it; `true` when taken.
    fn try_lock(&self, token: u64, hold: Duration) -> StoreFuture<'_, bool>;
    /// Releases the fetch lock if `token` still holds it.
    fn unlock(&self, token: u64) -> StoreFuture<'_, ()>;
}

pub use sentinel_core::StoreError;

/// The config store kept in this process's memory (for a single replica;
/// deadlines follow tokio's clock, so paused-time tests can age it).
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    state: Arc<Mutex<MemoryState>>,
}

#[derive(Debug, Default)]
struct MemoryState {
    value: Option<(String, Instant)>,
    lock: Option<(u64, Instant)>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut MemoryState) -> T) -> Result<T, StoreError> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| StoreError::new("memory store lock poisoned"))?;
        Ok(f(&mut state))
    }
}

impl ConfigStore for MemoryStore {
    fn get(&self) -> StoreFuture<'_, Option<Stored>> {
        let now = Instant::now();
        let result = self.with(|s| match &s.value {
            Some((json, expires)) if *expires > now => Some(Stored {
                json: json.clone(),
                ttl_left: *expires - now,
            }),
            _ => None,
        });
        Box::pin(std::future::ready(result))
    }

    fn put(&self, json: String, ttl: Duration) -> StoreFuture<'_, ()> {
        let result = self.with(|s| s.value = Some((json, Instant::now() + ttl)));
        Box::pin(std::future::ready(result))
    }

    fn try_lock(&self, token: u64, hold: Duration) -> StoreFuture<'_, bool> {
        let now = Instant::now();
        let result = self.with(|s| match s.lock {
            Some((_, until)) if until > now => false,
            _ => {
                s.lock = Some((token, now + hold));
                true
            }
        });
        Box::pin(std::future::ready(result))
    }

    fn unlock(&self, token: u64) -> StoreFuture<'_, ()> {
        let result = self.with(|s| {
            if s.lock.is_some_and(|(t, _)| t == token) {
                s.lock = None;
            }
        });
        Box::pin(std::future::ready(result))
    }
}

/// Deletes the lock only if it still holds our token.
const COMPARE_AND_DELETE: &str = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

/// The config store in Redis: the value under `{prefix}tier_config` with
/// `EX` = the TTL, the fetch lock under `{prefix}tier_config:lock`.
#[derive(Clone)]
pub struct RedisStore {
    pool: Pool,
    key: String,
    lock_key: String,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store over `pool`, with keys under `prefix` (`sentinel:` by default
    /// in the proxy, giving `sentinel:tier_config`).
    pub fn new(pool: Pool, prefix: &str) -> Self {
        RedisStore {
            pool,
            key: format!("{prefix}tier_config"),
            lock_key: format!("{prefix}tier_config:lock"),
        }
    }

    /// The key holding the config.
    pub fn key(&self) -> &str {
        &self.key
    }
}

fn redis_err(op: &'static str) -> impl FnOnce(fred::error::Error) -> StoreError {
    move |e| StoreError::with_source(format!("redis {op}: {}", e.details()), e)
}

impl ConfigStore for RedisStore {
    fn get(&self) -> StoreFuture<'_, Option<Stored>> {
        Box::pin(async move {
            let pipeline = self.pool.next().pipeline();
            let _: () = pipeline.get(&self.key).await.map_err(redis_err("get"))?;
            let _: () = pipeline.pttl(&self.key).await.map_err(redis_err("get"))?;
            let (json, pttl): (Option<String>, i64) =
                pipeline.all().await.map_err(redis_err("get"))?;
            Ok(match (json, pttl) {
                (Some(json), ms) if ms > 0 => Some(Stored {
                    json,
                    ttl_left: Duration::from_millis(ms.unsigned_abs()),
                }),
                // A key without expiry was not written by Sentinel; treat it as
                // just fetched so it is used and refreshed on schedule.
                (Some(json), -1) => Some(Stored {
                    json,
                    ttl_left: Duration::MAX,
                }),
                _ => None,
            })
        })
    }

    fn put(&self, json: String, ttl: Duration) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
            let _: () = self
                .pool
                .set(&self.key, json, Some(Expiration::EX(secs)), None, false)
                .await
                .map_err(redis_err("set"))?;
            Ok(())
        })
    }

    fn try_lock(&self, token: u64, hold: Duration) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            let ms = i64::try_from(hold.as_millis().max(1)).unwrap_or(i64::MAX);
            let reply: Option<String> = self
                .pool
                .set(
                    &self.lock_key,
                    token.to_string(),
                    Some(Expiration::PX(ms)),
                    Some(SetOptions::NX),
                    false,
                )
                .await
                .map_err(redis_err("lock"))?;
            Ok(reply.is_some())
        })
    }

    fn unlock(&self, token: u64) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let _: i64 = self
                .pool
                .eval(
                    COMPARE_AND_DELETE,
                    vec![self.lock_key.as_str()],
                    vec![token.to_string()],
                )
                .await
                .map_err(redis_err("unlock"))?;
            Ok(())
        })
    }
}

/// Whether the pool has a live connection right now (for readiness reports).
pub fn is_connected(pool: &Pool) -> bool {
    pool.is_connected()
}
