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
use crate::recovery::{self, ModelProbes};
use crate::select::Selector;
use crate::session::SessionStore;

type RoutePredicate = Arc<dyn Fn(&Method, &Uri) -> bool + Send + Sync>;

/// Which requests the layer acts on, and how.
pub(crate) struct Routes {
    paths: Vec<String>,
    predicate: Option<RoutePredicate>,
    /// gRPC method paths (`/pkg.Service/Method`) and service prefixes
    /// (`/pkg.Service/`) routed as gRPC; empty: gRPC routing is off.
    grpc: Vec<String>,
}

impl Default for Routes {
    fn default() -> Self {
        Routes {
            paths: vec!["/v1/chat/completions".into(), "/v1/responses".into()],
            predicate: None,
            grpc: Vec::new(),
        }
    }
}

/// What the layer does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Not routed: the inner service gets it untouched.
    PassThrough,
    /// A routed JSON request: body buffered, checked and rewritten.
    Json,
    /// A routed gRPC call (opted into, on a configured gRPC path): tier from
    /// metadata, body streamed through, errors as gRPC statuses.
    Grpc,
}

impl Routes {
    /// The JSON routes come first: a gRPC content type on a JSON route is
    /// a JSON request with the wrong content type (415), never a way
    /// around the body checks.
    fn mode(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Mode {
        let json = match &self.predicate {
            Some(predicate) => predicate(method, uri),
            None => method == Method::POST && self.paths.iter().any(|p| p == uri.path()),
        };
        if json {
            return Mode::Json;
        }
        if method == Method::POST
            && self.grpc.iter().any(|p| grpc_path_matches(p, uri.path()))
            && crate::grpc::is_grpc(headers)
        {
            return Mode::Grpc;
        }
        Mode::PassThrough
    }
}

/// A configured gRPC path matches itself, and a service prefix (ending in
/// `/`) matches every method of the service.
fn grpc_path_matches(configured: &str, path: &str) -> bool {
    if configured.ends_with('/') {
        path.strip_prefix(configured)
            .is_some_and(|method| !method.is_empty() && !method.contains('/'))
    } else {
        configured == path
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
    pub(crate) body_timeout: Duration,
    health: Option<HealthChecks>,
    probes: Option<ModelProbes>,
    /// The latest config seen by a request (for the shared-breaker sync
    /// and the background probes).
    pub(crate) last_config: ArcSwapOption<TierConfig>,
    started: AtomicBool,
    tasks: Mutex<Vec<AbortHandle>>,
}

impl Shared {
    fn new(
        source: Arc<dyn TierConfigSource>,
        selector: Arc<Selector>,
        sessions: Option<Sessions>,
        routes: Routes,
        (body_limit, body_timeout): (usize, Duration),
        (health, probes): (Option<HealthChecks>, Option<ModelProbes>),
    ) -> Self {
        Shared {
            source,
            selector,
            sessions,
            routes,
            body_limit,
            body_timeout,
            health,
            probes,
            last_config: ArcSwapOption::empty(),
            started: AtomicBool::new(false),
            tasks: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn mode(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Mode {
        self.routes.mode(method, uri, headers)
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
        if let Some(probes) = &self.probes {
            let task = recovery::run(Arc::downgrade(self), probes.clone());
            handles.push(runtime.spawn(task).abort_handle());
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
