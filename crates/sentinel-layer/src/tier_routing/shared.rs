//! The state every clone of a layer and its services shares.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method, Uri};
use sentinel_core::{Tier, TierConfig, TierConfigSource};

use super::route_filter::RouteFilter;
use super::routes::{Mode, Routes};
use crate::background::{Background, LastConfig};
use crate::decision::SelectionReason;
use crate::health::HealthChecks;
use crate::metrics::CounterCache;
use crate::recovery::ModelProbes;
use crate::select::Selector;
use crate::session::SessionStore;
use crate::state::RoutingState;

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
    /// Streams ask for their usage chunk ([`crate::StreamUsageAdded`]).
    pub(crate) stream_usage: bool,
    /// The latest config seen by a request (for the shared-breaker sync
    /// and the background probes).
    last_config: LastConfig,
    background: Background,
    /// `sentinel_model_selections_total` of first attempts, by (tier,
    /// provider, model, reason).
    pub(crate) selections: CounterCache<(Tier, Arc<str>, Arc<str>, SelectionReason)>,
    /// `sentinel_requests_total` of answered requests, by (tier, provider,
    /// model, status class).
    pub(crate) requests: CounterCache<(Tier, Arc<str>, Arc<str>, &'static str)>,
    /// Which providers may serve which path (none: all, all).
    route_filter: Option<RouteFilter>,
}

impl Shared {
    pub(crate) fn new(
        source: Arc<dyn TierConfigSource>,
        selector: Arc<Selector>,
        sessions: Option<Sessions>,
        routes: Routes,
        (body_limit, body_timeout, stream_usage): (usize, Duration, bool),
        (health, probes): (Option<HealthChecks>, Option<ModelProbes>),
    ) -> Self {
        Shared {
            source,
            selector,
            sessions,
            routes,
            body_limit,
            body_timeout,
            stream_usage,
            last_config: LastConfig::default(),
            background: Background::new(health, probes),
            selections: CounterCache::default(),
            requests: CounterCache::default(),
            route_filter: None,
        }
    }

    pub(crate) fn with_route_filter(mut self, filter: Option<RouteFilter>) -> Self {
        self.route_filter = filter;
        self
    }

    /// The config a request to `path` is routed over: `config` without the
    /// models that cannot serve the path.
    pub(crate) fn config_for(&self, path: &str, config: Arc<TierConfig>) -> Arc<TierConfig> {
        match &self.route_filter {
            Some(filter) => filter.config_for(path, &config),
            None => config,
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

    /// Sets `sentinel_breaker_state` for every model of the current tier
    /// config and for each of their providers, from the routing state.
    pub(crate) fn export_breaker_states(&self) {
        let Some(state) = self.routing_state() else {
            return;
        };
        for (_, models) in &state.tiers {
            for m in models {
                ::metrics::gauge!(crate::metrics::BREAKER_STATE,
                    "scope" => "model",
                    "provider" => m.provider.clone(),
                    "model" => m.model.clone())
                .set(m.breaker.gauge());
            }
        }
        for p in &state.providers {
            ::metrics::gauge!(crate::metrics::BREAKER_STATE,
                "scope" => "provider",
                "provider" => p.name.clone(),
                "model" => "")
            .set(p.breaker.gauge());
        }
    }

    /// What the layer is doing now ([`crate::state`]); `None` until a tier
    /// config is at hand.
    pub(crate) fn routing_state(&self) -> Option<RoutingState> {
        let config = self.current_config()?;
        Some(RoutingState::take(
            config,
            &self.selector.breakers,
            tokio::time::Instant::now(),
        ))
    }

    /// The current config (the cached one, else the last one a request saw).
    pub(crate) fn current_config(&self) -> Option<Arc<TierConfig>> {
        self.source
            .cached()
            .or_else(|| self.last_config.load_full())
    }

    /// Starts the background tasks once, when inside a runtime (see
    /// [`crate::background`]).
    pub(crate) fn start_background(&self) {
        self.background
            .start(&self.selector.breakers, &self.last_config);
    }
}
