//! Sentinel's tier config from Zion, and the cache that serves it.
//!
//! - [`ZionClient`]: `GET {zion}/api/v1/tiers/config` with bearer auth,
//!   timeouts, a size cap and the core's validation.
//! - [`TierConfigCache`]: the process's snapshot, then a shared
//!   [`ConfigStore`] ([`RedisStore`] through `fred`, or [`MemoryStore`]),
//!   then Zion; single flight, refresh ahead, stale-on-error. It implements
//!   [`sentinel_core::TierConfigSource`], which is all the routing layer
//!   knows of it.
//! - [`redis::connect`] (from `sentinel-net`, re-exported): a `fred` pool with a reconnect policy and a
//!   command timeout.
//! - [`metrics`]: the names of the metrics recorded here.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use sentinel_core::TierConfigSource;
//! use sentinel_zion::{MemoryStore, TierConfigCache, ZionClient, ZionSettings};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let zion = ZionClient::new(ZionSettings::new("http://127.0.0.1:9000"))?;
//! let cache = TierConfigCache::builder(zion)
//!     .ttl(Duration::from_secs(600))
//!     .store(MemoryStore::new())
//!     .build()?;
//! let config = cache.load().await?;
//! println!("config version {:?}", config.version());
//! # Ok(())
//! # }
//! ```

pub mod cache;
pub mod client;
pub mod metrics;
pub mod redis;
pub mod store;

pub use cache::{
    DEFAULT_TTL, InvalidCacheSettings, TTL_ENV, TierConfigCache, TierConfigCacheBuilder,
    parse_ttl_seconds, ttl_from_env,
};
pub use client::{ZionClient, ZionError, ZionErrorKind, ZionSettings};
pub use redis::RedisSettings;
pub use sentinel_net::{ClientBuildError, http_client, tls_config};
pub use store::{ConfigStore, MemoryStore, RedisStore, StoreError, Stored};
