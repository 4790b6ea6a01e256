//! `TierRoutingLayer`: Sentinel's Tower layer.
//!
//! Clients name a complexity tier (`simple`, `moderate`, `complex`), never
//! a model. The layer picks a concrete model for the tier from the tier
//! config (weighted toward cheaper models), keeps sessions on their model
//! (upgrades allowed, never downgrades), retries once on the next model of
//! the tier, backs off failing models and providers, probes providers, and
//! reports what it chose in `X-Sentinel-Model` / `X-Sentinel-Tier` and in
//! Prometheus metrics.
//!
//! | module | what |
//! | --- | --- |
//! | [`tier_routing`] | the layer, its builder and the routing service |
//! | [`retry`] | the retry policy: the next model of the tier, once |
//! | [`breaker`] | the circuit-breaking backoff stage |
//! | [`session`] | session stores: memory (bounded) and Redis |
//! | [`health`] | active health checks of providers |
//! | [`error`] | Sentinel's own errors in the OpenAI envelope |
//! | [`metrics`] | metric names and labels |
//!
//! The layer knows the tier config only through
//! [`sentinel_core::TierConfigSource`].
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use sentinel_core::{RawTierConfig, StaticConfig, TierConfig};
//! use sentinel_layer::{MemorySessionStore, TierRoutingLayer};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let raw: RawTierConfig = serde_json::from_str(r#"{ "tiers": {
//!     "simple": { "models": [ { "provider": "openai", "model": "gpt-4o-mini", "relative_cost": 1 } ] }
//! } }"#)?;
//! let layer = TierRoutingLayer::builder(StaticConfig::new(TierConfig::validate(raw)?))
//!     .session_store(MemorySessionStore::new())
//!     .failure_threshold(3)
//!     .backoff(Duration::from_secs(30), Duration::from_secs(300))
//!     .build()?;
//! // `.layer(layer)` on an axum Router, a tonic Server or any tower stack.
//! # let _ = layer;
//! # Ok(())
//! # }
//! ```

mod body;
pub mod breaker;
mod decision;
pub mod error;
mod grpc;
pub mod health;
pub mod metrics;
mod request;
pub mod retry;
mod rng;
mod select;
pub mod session;
pub mod tier_routing;
mod upstream;

pub use body::{ResponseBody, RoutedBody};
pub use breaker::{Backoff, BackoffFuture};
pub use decision::{RoutingDecision, SelectionReason};
pub use error::{ErrorCode, SentinelError};
pub use retry::NextModel;
pub use session::{MemorySessionStore, RedisSessionStore, SessionStore};
pub use tier_routing::service::{MODEL_HEADER, TIER_HEADER};
pub use tier_routing::{
    InvalidConfig, ResponseFuture, TierRouting, TierRoutingLayer, TierRoutingLayerBuilder,
};
pub use upstream::{BoxError, UpstreamError, UpstreamErrorKind};
