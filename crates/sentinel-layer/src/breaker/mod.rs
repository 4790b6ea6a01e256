//! The circuit breakers: a model that keeps failing is backed off.
//!
//! Every model and every provider has a breaker. A model is chosen and
//! admitted in one step (its breaker hands out a ticket; a half-open
//! breaker hands out one probe ticket at a time), and each attempt's
//! outcome is recorded against that ticket when the attempt ends: a
//! success closes the model's and the provider's breakers; a timeout, 429
//! or 5xx (the [`classify`](crate::classify) rule) counts against the
//! model; a connection failure against the provider. Only outcomes of the
//! breaker's current generation move it, so late answers from before it
//! opened cannot double its wait.
//!
//! Open models are excluded when the layer chooses a model, never through
//! `poll_ready`, so one open model never stalls the others.
//!
//! An inner service reports a failure before the response head as an
//! [`UpstreamError`](crate::UpstreamError), so that a connection failure
//! counts against the provider and a timeout against the model; a failure
//! after the head (a broken or stalled stream, an error event) through the
//! [`AttemptReport`] in the request's extensions.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use sentinel_core::{RawTierConfig, StaticConfig, TierConfig};
//! use sentinel_layer::TierRoutingLayer;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let config = TierConfig::validate(serde_json::from_str::<RawTierConfig>(r#"{"tiers":{}}"#)?)?;
//! // Open a model after 2 failures in a row; wait 10 s, doubling up to 2 min.
//! let layer = TierRoutingLayer::builder(StaticConfig::new(config))
//!     .failure_threshold(2)
//!     .backoff(Duration::from_secs(10), Duration::from_secs(120))
//!     .build()?;
//! # let _ = layer;
//! # Ok(())
//! # }
//! ```

pub(crate) mod record;
mod report;
pub(crate) mod shared;
pub(crate) mod state;

pub use report::AttemptReport;
