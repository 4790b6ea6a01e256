//! Tier routing: the layer that turns a tier into a model.
//!
//! [`TierRoutingLayer`] wraps a service `S` (the one that forwards to the
//! provider) in [`TierRouting`], whose one future per request does, in
//! order:
//!
//! 1. **routing**: reads the tier (body `tier`, `X-Sentinel-Tier`, or a
//!    `model` that is a tier name) and the session (`X-Sentinel-Session`),
//!    loads the tier config, applies the session rule, and chooses and
//!    admits a model by weight among the models whose breakers are closed
//!    (one step: the breaker hands the attempt its ticket);
//! 2. **attempts**: renders the body for the model (`model` set, `tier`
//!    removed, `Content-Length` fixed), calls `S`, records the outcome in
//!    the model's breakers ([`breaker`](crate::breaker)) and, after a
//!    retryable failure, tries once more on another model of the tier
//!    ([`retry`](crate::retry));
//! 3. **answer**: stamps `X-Sentinel-Model` and `X-Sentinel-Tier` on the
//!    response, counts it, and after a failover moves the session to the
//!    model that answered.
//!
//! It acts on `POST` to the routed paths (`/v1/chat/completions`,
//! `/v1/responses`), whose body must be JSON (an absent content type is
//! read as JSON; any other is answered `415 unsupported_media_type`), and,
//! only when the builder opts in with
//! [`grpc_paths`](TierRoutingLayerBuilder::grpc_paths), on `application/grpc`
//! calls to those gRPC paths. Everything else passes through untouched, so
//! it can wrap a whole router. The rewritten request carries the new
//! `Content-Length` and no `Transfer-Encoding`, so an app that forwards its
//! headers cannot be made to smuggle a second request. The inner
//! service learns the decision from the [`RoutingDecision`] request
//! extension (tier, provider, model, attempt) and the rewritten body; the
//! response carries the final decision as an extension too.
//!
//! Errors the layer makes are responses in the OpenAI error envelope (for
//! gRPC, trailers-only statuses), never panics or service errors.
//!
//! # Example
//!
//! ```
//! use axum::{Router, routing::post, extract::Request, Json};
//! use sentinel_core::{RawTierConfig, StaticConfig, TierConfig};
//! use sentinel_layer::{RoutingDecision, TierRoutingLayer};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let raw: RawTierConfig = serde_json::from_str(r#"{ "tiers": {
//!     "simple": { "models": [ { "provider": "openai", "model": "gpt-4o-mini", "relative_cost": 1 } ] }
//! } }"#)?;
//! let source = StaticConfig::new(TierConfig::validate(raw)?);
//!
//! async fn forward(request: Request) -> Json<serde_json::Value> {
//!     // The layer chose the model; a real handler forwards to the provider.
//!     let decision = request.extensions().get::<RoutingDecision>().cloned();
//!     Json(serde_json::json!({ "model": decision.map(|d| d.model.to_string()) }))
//! }
//!
//! let app: Router = Router::new()
//!     .route("/v1/chat/completions", post(forward))
//!     .layer(TierRoutingLayer::new(source));
//! # Ok(())
//! # }
//! ```
//!
//! [`RoutingDecision`]: crate::RoutingDecision

mod attempts;
mod future;
mod layer;
mod route_filter;
mod routes;
pub(crate) mod service;
mod shared;

pub use future::ResponseFuture;
pub use layer::{TierRoutingLayer, TierRoutingLayerBuilder};
pub use service::TierRouting;

pub use crate::error::InvalidConfig;
pub use routes::DEFAULT_ROUTED_PATHS;
pub(crate) use routes::{Mode, Routes};
pub(crate) use shared::{Sessions, Shared};
