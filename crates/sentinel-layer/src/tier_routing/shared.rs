//! The state every clone of a layer and its services shares.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method, Uri};
use sentinel_core::{Tier, TierConfig, TierConfigSource};

use super::routes::{Mode, Routes};
use crate::background::{Background, LastConfig};
use crate::decision::SelectionReason;
use crate::health::HealthChecks;
use crate::metrics::CounterCache;
use crate::recovery::ModelProbes;
use crate::select::Selector;
use crate::session::SessionStore;

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
    /// config (the cached one, else the last one a request saw) and for
    /// each of their providers.
    pub(crate) fn export_breaker_states(&self) {
        let Some(config) = self
            .source
            .cached()
            .or_else(|| self.last_config.load_full())
        else {
            return;
        };
        let now = tokio::time::Instant::now();
        let breakers = &self.selector.breakers;
        let mut providers = std::collections::HashSet::new();
        let mut models = std::collections::HashSet::new();
        for (_, m) in config.models() {
            if !models.insert((m.provider(), m.model())) {
                continue;
            }
            let view = breakers.model_view(m.provider(), m.model(), now);
            ::metrics::gauge!(crate::metrics::BREAKER_STATE,
                "scope" => "model",
                "provider" => m.provider_arc().clone(),
                "model" => m.model_arc().clone())
            .set(view.gauge());
            if providers.insert(m.provider()) {
                let view = breakers.provider_view(m.provider(), now);
                ::metrics::gauge!(crate::metrics::BREAKER_STATE,
                    "scope" => "provider",
                    "provider" => m.provider_arc().clone(),
                    "model" => "")
                .set(view.gauge());
            }
        }
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
