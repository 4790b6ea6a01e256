//! Sentinel: an LLM gateway that routes requests by complexity tier.
//!
//! Clients name a tier (`simple`, `moderate`, `complex`), never a model;
//! Sentinel picks a concrete upstream model for the tier from a global
//! config, weighted toward cheaper models, keeps sessions on their model
//! (upgrades allowed, never downgrades), retries once on the next model and
//! backs off failing models.
//!
//! This crate is the facade: it re-exports the public API of the workspace's
//! crates so that applications depend on one crate.
//!
//! | re-export | from |
//! | --- | --- |
//! | [`core`] and its main types at the top level | `sentinel-core`: tiers, config validation, weighted choice, the session rule, the backoff schedule |
//! | [`layer`], with [`TierRoutingLayer`] and [`RoutingDecision`] at the top level | `sentinel-layer`: the Tower layer (routing, retry, breakers, sessions, health checks) |
//! | [`zion`], with [`TierConfigCache`] and [`ZionClient`] at the top level | `sentinel-zion`: the Zion client and the tier-config cache (memory or Redis) |
//!
//! # Example
//!
//! ```
//! use sentinel::{BackoffSchedule, StaticConfig, Tier, TierConfig, TierRoutingLayer};
//!
//! assert_eq!("complex".parse::<Tier>()?, Tier::Complex);
//! assert_eq!(BackoffSchedule::default().wait(1, None).as_secs(), 30);
//! let config = TierConfig::validate(serde_json::from_str(r#"{"tiers":{}}"#)?)?;
//! let _layer = TierRoutingLayer::new(StaticConfig::new(config));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub use sentinel_core as core;
pub use sentinel_core::{
    BackoffSchedule, ConfigError, ConfigUnavailable, ModelEntry, PickReason, Pinned, RawTierConfig,
    SessionPlan, StaticConfig, Tier, TierConfig, TierConfigSource, TierModels, UnknownTier,
};
pub use sentinel_layer as layer;
pub use sentinel_layer::{
    MemorySessionStore, RedisSessionStore, RoutingDecision, TierRoutingLayer, UpstreamError,
};
pub use sentinel_zion as zion;
pub use sentinel_zion::{TierConfigCache, ZionClient, ZionSettings};
