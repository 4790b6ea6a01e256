//! Tier routing: the layer that turns a tier into a model.
//!
//! [`TierRoutingLayer`] wraps a service `S` (the one that forwards to the
//! provider) in three stages, outer to inner:
//!
//! 1. **tier routing** ([`TierRouting`]): reads the tier (body `tier`,
//!    `X-Sentinel-Tier`, or a `model` that is a tier name) and the session
//!    (`X-Sentinel-Session`), loads the tier config, applies the session
//!    rule, chooses a model by weight among the models whose breakers are
//!    closed, rewrites the body (`model` set, `tier` removed,
//!    `Content-Length` fixed) and stamps `X-Sentinel-Model` and
//!    `X-Sentinel-Tier` on the response;
//! 2. **retry** ([`NextModel`](crate::NextModel), a tower retry policy):
//!    once more on another model of the tier after a retryable failure;
//! 3. **backoff** ([`Backoff`](crate::Backoff)): refuses models whose
//!    breaker is open and records every attempt's outcome.
//!
//! It acts on `POST` to the routed paths (`/v1/chat/completions`,
//! `/v1/responses`) and on `application/grpc` requests; everything else
//! passes through untouched, so it can wrap a whole router. The inner
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

mod future;
mod layer;
pub(crate) mod service;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::{HeaderMap, Method, Uri};
use sentinel_core::{TierConfig, TierConfigSource};
use tokio::task::AbortHandle;

pub use future::ResponseFuture;
pub use layer::{InvalidConfig, TierRoutingLayer, TierRoutingLayerBuilder};
pub use service::TierRouting;

use crate::breaker::shared::SYNC_INTERVAL;
use crate::health::{self, HealthChecks};
use crate::select::Selector;
use crate::session::SessionStore;

type RoutePredicate = Arc<dyn Fn(&Method, &Uri) -> bool + Send + Sync>;

/// Which requests the layer acts on.
pub(crate) struct Routes {
    paths: Vec<String>,
    predicate: Option<RoutePredicate>,
    grpc: bool,
}

impl Default for Routes {
    fn default() -> Self {
        Routes {
            paths: vec!["/v1/chat/completions".into(), "/v1/responses".into()],
            predicate: None,
            grpc: true,
        }
    }
}

impl Routes {
    fn is_routed(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> bool {
        if self.grpc && crate::grpc::is_grpc(headers) {
            return true;
        }
        match &self.predicate {
            Some(predicate) => predicate(method, uri),
            None => method == Method::POST && self.paths.iter().any(|p| p == uri.path()),
        }
    }
}

pub(crate) struct Sessions {
    pub(crate) store: Arc<dyn SessionStore>,
    pub(crate) wait: Duration,
}

/// State shared by every clone of a layer and its services.
pub(crate) struct Shared {
    pub(crate) source: Arc<dyn TierConfigSource>,
    pub(crate) selector: Arc<Selector>,
    pub(crate) sessions: Option<Sessions>,
    routes: Routes,
    pub(crate) body_limit: usize,
    health: Option<HealthChecks>,
    /// The latest config seen by a request (for the shared-breaker sync).
    last_config: ArcSwapOption<TierConfig>,
    started: AtomicBool,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl Shared {
    fn new(
        source: Arc<dyn TierConfigSource>,
        selector: Arc<Selector>,
        sessions: Option<Sessions>,
        routes: Routes,
        body_limit: usize,
        health: Option<HealthChecks>,
    ) -> Self {
        Shared {
            source,
            selector,
            sessions,
            routes,
            body_limit,
            health,
            last_config: ArcSwapOption::empty(),
            started: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn is_routed(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> bool {
        self.routes.is_routed(method, uri, headers)
    }

    pub(crate) fn remember(&self, config: &Arc<TierConfig>) {
        let seen = self.last_config.load();
        if !seen.as_ref().is_some_and(|c| Arc::ptr_eq(c, config)) {
            self.last_config.store(Some(config.clone()));
        }
    }

    /// Starts the background tasks once, when inside a runtime. They hold
    /// only a weak reference and stop when the last clone of the layer goes.
    pub(crate) fn ensure_background(self: &Arc<Self>) {
        if self.started.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut handles = Vec::new();
        if let Some(checks) = &self.health {
            for target in &checks.targets {
                let task = health::run(Arc::downgrade(self), target.clone(), checks.clone());
                handles.push(runtime.spawn(task).abort_handle());
            }
        }
        if self.selector.breakers.shared().is_some() {
            let weak = Arc::downgrade(self);
            let task = async move {
                loop {
                    {
                        let Some(shared) = weak.upgrade() else {
                            return;
                        };
                        let models: Vec<_> = shared
                            .last_config
                            .load_full()
                            .map(|c| {
                                c.models()
                                    .map(|(_, m)| (m.provider_arc().clone(), m.model_arc().clone()))
                                    .collect()
                            })
                            .unwrap_or_default();
                        if let Some(state) = shared.selector.breakers.shared() {
                            let state = state.clone();
                            let breakers = shared.selector.breakers.clone();
                            drop(shared);
                            state.sync(&breakers, &models).await;
                        }
                    }
                    tokio::time::sleep(SYNC_INTERVAL).await;
                }
            };
            handles.push(runtime.spawn(task).abort_handle());
        }
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.extend(handles);
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let tasks = match self.tasks.get_mut() {
            Ok(tasks) => tasks,
            Err(poisoned) => poisoned.into_inner(),
        };
        for task in tasks.drain(..) {
            task.abort();
        }
    }
}
