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
//! | [`zion`], with [`TierConfigCache`] and [`ZionClient`] at the top level | `sentinel-zion`: the Zion client and the tier-config cache (memory or Redis) |
//!
//! # Example
//!
//! ```
//! use sentinel::{BackoffSchedule, Tier};
//!
//! assert_eq!("complex".parse::<Tier>()?, Tier::Complex);
//! assert_eq!(BackoffSchedule::default().wait(1, None).as_secs(), 30);
//! # Ok::<(), sentinel::UnknownTier>(())
//! ```

pub use sentinel_core as core;
pub use sentinel_core::{
    BackoffSchedule, ConfigError, ConfigUnavailable, ModelEntry, PickReason, Pinned, RawTierConfig,
    SessionPlan, StaticConfig, Tier, TierConfig, TierConfigSource, TierModels, UnknownTier,
};
pub use sentinel_zion as zion;
pub use sentinel_zion::{TierConfigCache, ZionClient, ZionSettings};
