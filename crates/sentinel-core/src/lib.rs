//! Sentinel's routing core: the rules, with no I/O, no async runtime and no
//! clock.
//!
//! | module | what it decides |
//! | --- | --- |
//! | [`tier`] | the three complexity tiers and their order |
//! | [`config`] | the Zion tier-config document and its validation into a ready-to-route [`TierConfig`] |
//! | [`choice`] | the weighted pick of a model within a tier (weight = 1 / relative cost) |
//! | [`session`] | the session rule: upgrades allowed, never a downgrade |
//! | [`backoff`] | how long a failing model or provider waits |
//! | [`redact`] | URLs made safe to print (credentials and queries hidden) |
//! | [`source`] | the [`TierConfigSource`] trait the routing layer loads configs through |
//!
//! Everything that needs time, randomness or the network takes it from the
//! caller, so every rule here is deterministic under test.
//!
//! # Example
//!
//! ```
//! use sentinel_core::{RawTierConfig, Tier, TierConfig};
//!
//! let raw: RawTierConfig = serde_json::from_str(r#"{
//!   "tiers": { "simple": { "models": [
//!     { "provider": "openai", "model": "gpt-4o-mini", "relative_cost": 1 },
//!     { "provider": "openai", "model": "gpt-4.1-nano", "relative_cost": 2 }
//!   ] } }
//! }"#)?;
//! let config = TierConfig::validate(raw)?;
//!
//! // The caller supplies the randomness: any uniformly random u64.
//! let pick = config.tier(Tier::Simple).choose(|_| false, 0x1234_5678_9abc_def0);
//! assert!(pick.is_some());
//! // `moderate` was not in the document: that tier is unroutable, the rest works.
//! assert!(config.tier(Tier::Moderate).is_empty());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod backoff;
pub mod choice;
pub mod config;
mod model;
pub mod redact;
pub mod session;
pub mod source;
mod store_error;
pub mod tier;

pub use backoff::{BackoffSchedule, InvalidBackoff};
pub use choice::TierModels;
pub use config::{
    ConfigError, ModelEntry, Pricing, RawModel, RawPricing, RawTier, RawTierConfig, RawTiers,
    TierConfig,
};
pub use session::{PickReason, PinWrite, Pinned, SessionPlan};
pub use source::{
    ConfigFuture, ConfigOrigin, ConfigUnavailable, SourceStatus, StaticConfig, TierConfigSource,
};
pub use store_error::StoreError;
pub use tier::{Tier, UnknownTier};
