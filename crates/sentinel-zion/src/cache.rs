//! `TierConfigCache`: the validated tier config, from the process's
//! snapshot, the shared store, or Zion, in that order.
//!
//! - **Local snapshot.** An immutable config behind an `ArcSwap`: a request
//!   costs one atomic load. It expires after the TTL (30 min by default), or
//!   with the store's key when it was read from the store.
//! - **Refresh ahead.** In the last 10% of the TTL one background refresh
//!   runs; requests never wait for it.
//! - **Single flight.** Concurrent misses in one process make one fetch,
//!   which runs in a task of the cache's own: every waiter shares its
//!   result, and a caller that goes away (a client that disconnects) cancels
//!   nothing, so the fetch finishes, stores its value and releases its lock.
//!   Across processes sharing a store, a lock (`SET NX PX`, PX = the Zion
//!   timeout) lets one replica call Zion while the others wait for its value,
//!   at most PX, and then fetch themselves. The replica that takes the lock
//!   reads the store once more before calling Zion (its first read came
//!   before the lock, and another replica may have fetched, stored and
//!   released the lock in between), so a cold fleet calls Zion once, unless
//!   that call outlasts the Zion timeout or the store does not answer (a
//!   replica whose lock call fails has no one to wait for, and fetches). A fetch is bounded (twice the
//!   Zion timeout plus 5 s for the store's round trips), and a lock whose
//!   fetch is cut short anyway is released in the background.
//! - **Failures.** A failed refresh keeps the last good config in use, past
//!   its TTL if need be (counted as `stale`). With nothing in the process and
//!   nothing in the store, a lookup fails with
//!   [`ConfigUnavailable`], whose `retry_after` the
//!   routing layer sends as `Retry-After`. After a failed Zion fetch the
//!   next is spaced 1 s, doubling, at most 30 s; the first lookup after the
//!   spacing tries again, so the cache recovers on its own. An invalid
//!   config never replaces a good one. A store that fails (Redis down) is
//!   logged and counted, and the cache goes on with its snapshot and Zion.
//!
//! # Example
//!
//! In memory:
//!
//! ```no_run
//! use std::time::Duration;
//! use sentinel_zion::{TierConfigCache, ZionClient, ZionSettings};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let zion = ZionClient::new(ZionSettings::new("http://127.0.0.1:9000").api_key("secret"))?;
//! let cache = TierConfigCache::builder(zion)
//!     .ttl(Duration::from_secs(1800))
//!     .build()?;
//! let config = cache.get().await?;
//! # Ok(())
//! # }
//! ```
//!
//! Shared through Redis:
//!
//! ```no_run
//! use sentinel_zion::{RedisSettings, RedisStore, TierConfigCache, ZionClient, ZionSettings};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let zion = ZionClient::new(ZionSettings::new("http://127.0.0.1:9000"))?;
//! let pool = sentinel_zion::redis::connect(&RedisSettings::new("redis://127.0.0.1:6379"))?;
//! let cache = TierConfigCache::builder(zion)
//!     .store(RedisStore::new(pool, "sentinel:"))
//!     .build()?;
//! // `cache` implements sentinel_core::TierConfigSource: hand it to the routing layer.
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use sentinel_core::{
    ConfigFuture, ConfigOrigin, ConfigUnavailable, RawTierConfig, SourceStatus, TierConfig,
    TierConfigSource,
};
use tokio::time::Instant;

use crate::client::ZionClient;
use crate::metrics as m;
use crate::store::{ConfigStore, MemoryStore, Stored};

/// The first spacing after a failed Zion fetch.
const SPACING_INITIAL: Duration = Duration::from_secs(1);
/// The longest spacing between failed Zion fetches.
const SPACING_CAP: Duration = Duration::from_secs(30);
/// The longest TTL accepted.
const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// How often a replica that lost the lock race looks for the winner's value.
const LOCK_POLL: Duration = Duration::from_millis(25);
/// A fetch's bound beyond twice the Zion timeout (the lock wait and the
/// Zion call): the store's round trips.
const FETCH_SLACK: Duration = Duration::from_secs(5);

/// What a cold load ends with, shared by every waiter.
type Loaded = Result<Arc<TierConfig>, ConfigUnavailable>;
/// Where the waiters of a cold load watch for its result.
type ColdWatch = tokio::sync::watch::Receiver<Option<Loaded>>;

/// The tier-config cache. Cheap to clone: clones share one cache.
#[derive(Clone)]
pub struct TierConfigCache {
    inner: Arc<Inner>,
}

impl fmt::Debug for TierConfigCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TierConfigCache")
            .field("ttl", &self.inner.ttl)
            .field("has_snapshot", &self.inner.snapshot.load().is_some())
            .finish_non_exhaustive()
    }
}

/// Builds a [`TierConfigCache`].
pub struct TierConfigCacheBuilder {
    zion: ZionClient,
    store: Option<Arc<dyn ConfigStore>>,
    ttl: Duration,
}

impl fmt::Debug for TierConfigCacheBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TierConfigCacheBuilder")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl TierConfigCacheBuilder {
    /// The TTL of a fetched config (default 1800 s). Must be greater than
    /// zero and at most a year.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The shared store (default: a [`MemoryStore`] of this cache's own).
    pub fn store(mut self, store: impl ConfigStore) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// The shared store, already shared.
    pub fn shared_store(mut self, store: Arc<dyn ConfigStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Validates the settings and builds the cache. Fetches nothing yet.
    pub fn build(self) -> Result<TierConfigCache, InvalidCacheSettings> {
        if self.ttl.is_zero() {
            return Err(InvalidCacheSettings(
                "the tier-config TTL must be greater than zero",
            ));
        }
        if self.ttl > MAX_TTL {
            return Err(InvalidCacheSettings(
                "the tier-config TTL must be at most one year",
            ));
        }
        Ok(TierConfigCache {
            inner: Arc::new(Inner {
                zion: self.zion,
                store: self.store.unwrap_or_else(|| Arc::new(MemoryStore::new())),
                ttl: self.ttl,
                snapshot: ArcSwapOption::empty(),
                flight: tokio::sync::Mutex::new(()),
                cold: Mutex::new(None),
                refreshing: AtomicBool::new(false),
                spacing: Mutex::new(Spacing::default()),
            }),
        })
    }
}

/// The environment variable holding the TTL in seconds.
pub const TTL_ENV: &str = "TIER_CONFIG_TTL_SECONDS";

/// The default TTL: 1800 s (30 minutes).
pub const DEFAULT_TTL: Duration = Duration::from_secs(1800);

/// Parses a TTL in whole seconds, as [`TTL_ENV`] holds it: an integer from
/// 1 to one year.
pub fn parse_ttl_seconds(value: &str) -> Result<Duration, InvalidCacheSettings> {
    match value.trim().parse::<u64>() {
        Ok(secs) if secs > 0 && Duration::from_secs(secs) <= MAX_TTL => {
            Ok(Duration::from_secs(secs))
        }
        _ => Err(InvalidCacheSettings(
            "TIER_CONFIG_TTL_SECONDS must be a whole number of seconds from 1 to 31536000",
        )),
    }
}

/// The TTL from [`TTL_ENV`], or [`DEFAULT_TTL`] when it is unset.
pub fn ttl_from_env() -> Result<Duration, InvalidCacheSettings> {
    match std::env::var(TTL_ENV) {
        Ok(value) => parse_ttl_seconds(&value),
        Err(std::env::VarError::NotPresent) => Ok(DEFAULT_TTL),
        Err(std::env::VarError::NotUnicode(_)) => Err(InvalidCacheSettings(
            "TIER_CONFIG_TTL_SECONDS must be a whole number of seconds from 1 to 31536000",
        )),
    }
}

/// Cache settings that break a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidCacheSettings(&'static str);

impl fmt::Display for InvalidCacheSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for InvalidCacheSettings {}

struct Inner {
    zion: ZionClient,
    store: Arc<dyn ConfigStore>,
    ttl: Duration,
    snapshot: ArcSwapOption<Snapshot>,
    /// Single flight: held by the one task fetching for this process.
    flight: tokio::sync::Mutex<()>,
    /// The cold load in progress, if any: its task's result, for waiters.
    cold: Mutex<Option<ColdWatch>>,
    refreshing: AtomicBool,
    spacing: Mutex<Spacing>,
}

struct Snapshot {
    config: Arc<TierConfig>,
    origin: Source,
    /// When Zion produced it (estimated from the store's TTL when read from there).
    born: Instant,
    refresh_at: Instant,
    expires: Instant,
}

/// Spacing of Zion fetches after failures.
#[derive(Default)]
struct Spacing {
    failures: u32,
    not_before: Option<Instant>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Store,
    Zion,
}

impl TierConfigCache {
    /// A builder for a cache over `zion`.
    pub fn builder(zion: ZionClient) -> TierConfigCacheBuilder {
        TierConfigCacheBuilder {
            zion,
            store: None,
            ttl: DEFAULT_TTL,
        }
    }

    /// The TTL of a fetched config.
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// The config to route with. Waits only when the process holds no
    /// config at all; otherwise answers at once (refreshing in the
    /// background when due).
    pub async fn get(&self) -> Result<Arc<TierConfig>, ConfigUnavailable> {
        if let Some(config) = self.current() {
            return Ok(config);
        }
        self.inner.clone().load_cold().await
    }

    /// Whether the process holds a config (fresh or stale).
    pub fn is_loaded(&self) -> bool {
        self.inner.snapshot.load().is_some()
    }

    /// Fetches from Zion now, bypassing the snapshot, the store and the
    /// spacing (an operator's "reload"). A valid config replaces the
    /// snapshot and the store's copy; on failure both stay as they were.
    pub async fn refresh(&self) -> Result<Arc<TierConfig>, ConfigUnavailable> {
        let _flight = self.inner.flight.lock().await;
        self.inner.fetch_from_zion().await
    }

    /// The snapshot's config when there is one, counting the lookup and
    /// starting a refresh when one is due.
    fn current(&self) -> Option<Arc<TierConfig>> {
        let now = Instant::now();
        let guard = self.inner.snapshot.load();
        let snap = guard.as_ref()?;
        ::metrics::gauge!(m::TIER_CONFIG_AGE)
            .set(now.saturating_duration_since(snap.born).as_secs_f64());
        if now < snap.expires {
            ::metrics::counter!(m::TIER_CONFIG_LOOKUPS, "result" => "local_hit").increment(1);
            if now >= snap.refresh_at {
                self.inner.spawn_refresh();
            }
        } else {
            ::metrics::counter!(m::TIER_CONFIG_LOOKUPS, "result" => "stale").increment(1);
            self.inner.spawn_refresh();
        }
        Some(snap.config.clone())
    }
}

impl Inner {
    /// Waits for the cold load of this process, starting it when none runs.
    /// The load runs in a task of its own, so dropping this future (a
    /// client that went away) leaves it running for the other waiters.
    async fn load_cold(self: Arc<Self>) -> Loaded {
        let mut watch = self.join_cold()?;
        let loaded = match watch.wait_for(Option::is_some).await {
            Ok(loaded) => loaded.clone(),
            Err(_) => None,
        };
        loaded.unwrap_or_else(|| {
            Err(ConfigUnavailable::new(
                SPACING_INITIAL,
                "the tier-config fetch was cancelled",
            ))
        })
    }

    /// The watch of the cold load in progress, or of a new one.
    fn join_cold(self: &Arc<Self>) -> Result<ColdWatch, ConfigUnavailable> {
        let unavailable = |why: &str| ConfigUnavailable::new(SPACING_INITIAL, why.to_owned());
        let mut slot = self
            .cold
            .lock()
            .map_err(|_| unavailable("the tier-config cache is poisoned"))?;
        // A watch whose sender is gone belongs to a task that died (a panic,
        // a runtime shutting down): start afresh.
        if let Some(watch) = slot.as_ref()
            && watch.has_changed().is_ok()
        {
            return Ok(watch.clone());
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| unavailable("the tier-config cache needs a tokio runtime"))?;
        let (sender, watch) = tokio::sync::watch::channel(None);
        *slot = Some(watch.clone());
        let inner = self.clone();
        runtime.spawn(async move {
            let loaded = inner.cold_fetch().await;
            // Later lookups find the snapshot (or start a new load): this
            // one's waiters already hold the watch.
            if let Ok(mut slot) = inner.cold.lock() {
                *slot = None;
            }
            let _ = sender.send(Some(loaded));
        });
        Ok(watch)
    }

    /// The body of a cold load: under the flight, the snapshot if someone
    /// loaded it meanwhile, else the store or Zion.
    async fn cold_fetch(&self) -> Loaded {
        let _flight = self.flight.lock().await;
        // Whoever held the flight before us may have loaded it.
        if let Some(snap) = self.snapshot.load_full() {
            ::metrics::counter!(m::TIER_CONFIG_LOOKUPS, "result" => "local_hit").increment(1);
            return Ok(snap.config.clone());
        }
        if let Some(wait) = self.spacing_left() {
            ::metrics::counter!(m::TIER_CONFIG_LOOKUPS, "result" => "miss").increment(1);
            return Err(ConfigUnavailable::new(
                wait,
                "no tier config is cached and Zion failed recently",
            ));
        }
        let result = self.fetch(Duration::ZERO).await;
        let label = match result {
            Ok((_, Source::Store)) => "backend_hit",
            _ => "miss",
        };
        ::metrics::counter!(m::TIER_CONFIG_LOOKUPS, "result" => label).increment(1);
        result.map(|(c, _)| c)
    }

    /// Starts one background refresh unless one runs, the spacing forbids
    /// it, or there is no runtime to run it on.
    fn spawn_refresh(self: &Arc<Self>) {
        if self.spacing_left().is_some() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.clone();
        runtime.spawn(async move {
            {
                let _flight = inner.flight.lock().await;
                let due = inner
                    .snapshot
                    .load()
                    .as_ref()
                    .is_none_or(|s| Instant::now() >= s.refresh_at);
                if due {
                    // Failures are logged and counted inside.
                    let _ = inner.fetch(inner.ttl / 10).await;
                }
            }
            inner.refreshing.store(false, Ordering::Release);
        });
    }

    /// Time left before Zion may be asked again after failures.
    fn spacing_left(&self) -> Option<Duration> {
        let spacing = self.spacing.lock().ok()?;
        let until = spacing.not_before?;
        let now = Instant::now();
        (until > now).then(|| until - now)
    }

    /// Loads a config from the store (when it has more than `min_left` left)
    /// or from Zion, installs it and returns it, within twice the Zion
    /// timeout plus [`FETCH_SLACK`] (a store that hangs cannot hold the
    /// flight, or the cache, for ever). Call with the flight held.
    async fn fetch(
        &self,
        min_left: Duration,
    ) -> Result<(Arc<TierConfig>, Source), ConfigUnavailable> {
        let bound = self
            .zion
            .timeout()
            .saturating_mul(2)
            .saturating_add(FETCH_SLACK);
        match tokio::time::timeout(bound, self.fetch_unbounded(min_left)).await {
            Ok(result) => result,
            Err(_) => Err(ConfigUnavailable::new(
                self.record_failure(),
                "fetching the tier config took too long",
            )),
        }
    }

    async fn fetch_unbounded(
        &self,
        min_left: Duration,
    ) -> Result<(Arc<TierConfig>, Source), ConfigUnavailable> {
        if let Some(config) = self.load_from_store(min_left).await {
            return Ok((config, Source::Store));
        }

        let token = fastrand::u64(..);
        let hold = self.zion.timeout();
        let (locked, store_works) = match self.store.try_lock(token, hold).await {
            Ok(locked) => (locked, true),
            Err(e) => {
                store_error("lock", &e);
                // Without a working store there is no one to wait for.
                (true, false)
            }
        };
        if !locked {
            // Another replica is fetching: wait for its value, at most `hold`.
            let deadline = Instant::now() + hold;
            while Instant::now() < deadline {
                tokio::time::sleep(LOCK_POLL).await;
                if let Some(config) = self.load_from_store(min_left).await {
                    return Ok((config, Source::Store));
                }
            }
        }

        let lock = locked.then(|| HeldLock {
            store: self.store.clone(),
            token: Some(token),
        });
        // Read the store again under the lock: the read above came before
        // the lock, and a replica that fetched, stored its config and
        // released the lock in between has left it there. Without this a
        // cold fleet could call Zion twice.
        if locked
            && store_works
            && let Some(config) = self.load_from_store(min_left).await
        {
            if let Some(lock) = lock {
                lock.release().await;
            }
            return Ok((config, Source::Store));
        }
        let result = self.fetch_from_zion().await.map(|c| (c, Source::Zion));
        if let Some(lock) = lock {
            lock.release().await;
        }
        result
    }

    /// Fetches from Zion; on success writes the store and the snapshot and
    /// resets the spacing, on failure extends the spacing.
    async fn fetch_from_zion(&self) -> Result<Arc<TierConfig>, ConfigUnavailable> {
        match self.zion.get_tier_config().await {
            Ok(config) => {
                self.reset_spacing();
                let config = Arc::new(config);
                match serde_json::to_string(&*config) {
                    Ok(json) => {
                        if let Err(e) = self.store.put(json, self.ttl).await {
                            store_error("set", &e);
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "tier config could not be serialized"),
                }
                self.install(config.clone(), self.ttl, Source::Zion);
                Ok(config)
            }
            Err(e) => {
                let wait = self.record_failure();
                Err(ConfigUnavailable::new(
                    wait,
                    format!("fetching from Zion failed: {e}"),
                ))
            }
        }
    }

    async fn load_from_store(&self, min_left: Duration) -> Option<Arc<TierConfig>> {
        let Stored { json, ttl_left } = match self.store.get().await {
            Ok(Some(stored)) if stored.ttl_left > min_left => stored,
            Ok(_) => return None,
            Err(e) => {
                store_error("get", &e);
                return None;
            }
        };
        let parsed = serde_json::from_str::<RawTierConfig>(&json)
            .map_err(|e| e.to_string())
            .and_then(|raw| TierConfig::validate(raw).map_err(|e| e.to_string()));
        match parsed {
            Ok(config) => {
                let config = Arc::new(config);
                self.install(config.clone(), ttl_left, Source::Store);
                Some(config)
            }
            Err(e) => {
                ::metrics::counter!(m::TIER_CONFIG_STORE_INVALID).increment(1);
                tracing::warn!(error = %e, "ignoring an invalid tier config found in the store");
                None
            }
        }
    }

    fn install(&self, config: Arc<TierConfig>, ttl_left: Duration, origin: Source) {
        let now = Instant::now();
        let ttl_left = ttl_left.min(self.ttl);
        let expires = now + ttl_left;
        // checked_sub: the monotonic clock may have started less than a TTL ago.
        let snapshot = Snapshot {
            config,
            origin,
            born: now.checked_sub(self.ttl - ttl_left).unwrap_or(now),
            refresh_at: expires.checked_sub(self.ttl / 10).unwrap_or(now),
            expires,
        };
        self.snapshot.store(Some(Arc::new(snapshot)));
    }

    fn record_failure(&self) -> Duration {
        let Ok(mut spacing) = self.spacing.lock() else {
            return SPACING_INITIAL;
        };
        spacing.failures = spacing.failures.saturating_add(1);
        let factor = 1u32.checked_shl(spacing.failures - 1).unwrap_or(u32::MAX);
        let wait = SPACING_INITIAL.saturating_mul(factor).min(SPACING_CAP);
        spacing.not_before = Some(Instant::now() + wait);
        wait
    }

    fn reset_spacing(&self) {
        if let Ok(mut spacing) = self.spacing.lock() {
            *spacing = Spacing::default();
        }
    }
}

/// The store's fetch lock, while this process holds it. Released with
/// [`release`](Self::release); dropped unreleased (the fetch was cut short),
/// it is released in the background rather than left to expire.
struct HeldLock {
    store: Arc<dyn ConfigStore>,
    /// `None` once released.
    token: Option<u64>,
}

impl HeldLock {
    async fn release(mut self) {
        if let Some(token) = self.token.take()
            && let Err(e) = self.store.unlock(token).await
        {
            store_error("unlock", &e);
        }
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        let Some(token) = self.token.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.store.clone();
        runtime.spawn(async move {
            if let Err(e) = store.unlock(token).await {
                store_error("unlock", &e);
            }
        });
    }
}

fn store_error(op: &'static str, e: &crate::store::StoreError) {
    ::metrics::counter!(m::REDIS_ERRORS, "component" => "tier_config", "op" => op).increment(1);
    tracing::warn!(error = %e, op, "tier-config store unavailable; going on without it");
}

impl TierConfigSource for TierConfigCache {
    fn load(&self) -> ConfigFuture<'_> {
        Box::pin(self.get())
    }

    fn cached(&self) -> Option<Arc<TierConfig>> {
        self.current()
    }

    fn status(&self) -> Option<SourceStatus> {
        let now = Instant::now();
        let guard = self.inner.snapshot.load();
        let snap = guard.as_ref()?;
        Some(SourceStatus {
            origin: match snap.origin {
                Source::Zion => ConfigOrigin::Zion,
                Source::Store => ConfigOrigin::Store,
            },
            age: Some(now.saturating_duration_since(snap.born)),
            stale: now >= snap.expires,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_seconds_parse_and_validate() {
        assert_eq!(parse_ttl_seconds("1800"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_ttl_seconds(" 5 "), Ok(Duration::from_secs(5)));
        for bad in [
            "0",
            "-1",
            "1.5",
            "",
            "abc",
            "31536001",
            "99999999999999999999",
        ] {
            let err = parse_ttl_seconds(bad).unwrap_err();
            assert!(
                err.to_string().contains("TIER_CONFIG_TTL_SECONDS"),
                "{bad}: {err}"
            );
        }
    }
}
