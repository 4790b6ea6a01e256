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
//! | [`retry`] | the retry rule: the next model of the tier, once |
//! | [`breaker`] | the circuit breakers of models and providers, and how an attempt reports its outcome |
//! | [`classify`] | what an answer says of its model: one rule per question |
//! | [`continuation`] | continuing a stream that broke after its head |
//! | [`session`] | session stores: memory (bounded) and Redis |
//! | [`state`] | what the layer is doing now: shares, breakers, provider health |
//! | [`headers`] | Sentinel's header names |
//! | [`health`] | active health checks of providers |
//! | [`recovery`] | background probes of open models (early recovery) |
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

mod background;
mod body;
mod bounded_redis;
pub mod breaker;
pub mod classify;
pub mod continuation;
mod decision;
pub mod error;
mod grpc;
pub mod headers;
pub mod health;
pub mod metrics;
pub mod recovery;
mod request;
pub mod retry;
mod rng;
mod select;
pub mod session;
pub mod state;
pub mod tier_routing;
mod upstream;

pub use body::{ResponseBody, RoutedBody, StreamUsageAdded};
pub use breaker::AttemptReport;
pub use continuation::{Continuation, ContinuationAttempt};
pub use decision::{RoutingDecision, SelectionReason};
pub use error::{ErrorCode, SentinelError, StreamApi};
pub use headers::{MODEL as MODEL_HEADER, TIER as TIER_HEADER};
pub use retry::ContextLengthExceeded;
pub use session::{MemorySessionStore, RedisSessionStore, SessionStore};
pub use tier_routing::{
    DEFAULT_ROUTED_PATHS, InvalidConfig, ResponseFuture, TierRouting, TierRoutingLayer,
    TierRoutingLayerBuilder,
};
pub use upstream::{BoxError, UpstreamError, UpstreamErrorKind};

/// Entry points for the benchmarks in `benches/`. **Not a stable API**: hidden
/// from the docs, may change or go at any time; do not use it outside
/// `benches/rewrite.rs`.
#[doc(hidden)]
pub mod __bench {
    use bytes::Bytes;
    use http::HeaderMap;

    use crate::SentinelError;
    use crate::request;

    /// What the layer does to a routed (non-gRPC) request's buffered body,
    /// minus choosing the model: reads the tier from `X-Sentinel-Tier`,
    /// parses the body, resolves the tier from both, builds the body
    /// template and renders it for `model`. Returns the body sent upstream
    /// (`model` set, `tier` removed), or the error the layer would answer.
    ///
    /// Not a stable API: it exists for `benches/rewrite.rs` and calls the
    /// same functions as the routing service, in the same order.
    pub fn extract_and_rewrite(
        headers: &HeaderMap,
        body: &[u8],
        model: &str,
    ) -> Result<Bytes, SentinelError> {
        let header_tier = request::header_tier(headers)?;
        let parsed = request::parse_body(body)?;
        request::resolve_tier(header_tier, &parsed)?;
        Ok(parsed.template().render(model))
    }

    #[cfg(test)]
    mod tests {
        use http::HeaderValue;
        use serde_json::{Value, json};

        use super::*;
        use crate::ErrorCode;

        #[test]
        fn returns_the_rewritten_body() {
            let original = json!({
                "tier": "simple",
                "messages": [{ "role": "user", "content": "hi" }],
                "temperature": 0.2,
                "stream": false,
            });
            let body = serde_json::to_vec(&original).unwrap();
            let rewritten = extract_and_rewrite(&HeaderMap::new(), &body, "gpt-4o-mini").unwrap();
            let rewritten: Value = serde_json::from_slice(&rewritten).unwrap();
            let mut expected = original;
            let map = expected.as_object_mut().unwrap();
            map.remove("tier");
            map.insert("model".into(), json!("gpt-4o-mini"));
            assert_eq!(rewritten, expected);
        }

        #[test]
        fn reads_the_tier_header_and_body_as_the_layer_does() {
            let mut headers = HeaderMap::new();
            headers.insert("x-sentinel-tier", HeaderValue::from_static("complex"));
            let body = br#"{"tier":"simple"}"#;
            let err = extract_and_rewrite(&headers, body, "m").unwrap_err();
            assert_eq!(err.code(), ErrorCode::ConflictingTier);
            let err = extract_and_rewrite(&HeaderMap::new(), b"[]", "m").unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidJson);
            let err = extract_and_rewrite(&HeaderMap::new(), br#"{"model":"gpt"}"#, "m");
            assert_eq!(err.unwrap_err().code(), ErrorCode::ModelNotAllowed);
        }
    }
}
