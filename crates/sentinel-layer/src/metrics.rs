//! Metric names recorded by the layer (through the `metrics` facade).
//!
//! Labels stay low-cardinality: tiers, models and providers come from the
//! tier config; no session id, request id or client value is ever a label.
//!
//! | name | type | labels | meaning |
//! | --- | --- | --- | --- |
//! | `sentinel_requests_total` | counter | `tier`, `model`, `provider`, `status` (`2xx`, `4xx`, `5xx`, ...) | routed requests, by effective tier and the model that answered (`none` when no model was chosen) |
//! | `sentinel_model_selections_total` | counter | `tier`, `model`, `provider`, `reason` (`weighted`, `sticky`, `upgrade`, `retry`, `continuation`) | models chosen, one per attempt |
//! | `sentinel_retries_total` | counter | `tier` | second attempts on the next model |
//! | `sentinel_breaker_transitions_total` | counter | `scope` (`model`, `provider`), `name`, `to` (`open`, `closed`) | circuit-breaker transitions |
//! | `sentinel_models_open` | gauge | | model breakers open right now in this process |
//! | `sentinel_breaker_state` | gauge | `scope` (`model`, `provider`), `provider`, `model` (empty for a provider) | 0 closed, 1 open, 2 half-open (its wait is over; the next attempt or probe decides), for every model of the tier config and its provider; set by [`TierRoutingLayer::export_breaker_states`](crate::TierRoutingLayer::export_breaker_states) |
//! | `sentinel_health_checks_total` | counter | `provider`, `result` (`up`, `down`, `inconclusive`) | active health-check probes |
//! | `sentinel_model_probes_total` | counter | `provider`, `model`, `result` (`up`, `down`, `inconclusive`) | background probes of open models (early recovery) |
//! | `sentinel_session_upgrades_total` | counter | `from`, `to` | sessions moved to a higher tier |
//! | `sentinel_redis_fallbacks_total` | counter | `component` (`sessions`, `breakers`) | Redis calls that failed or timed out; the request went on without them |
//! | `sentinel_redis_late_commands_total` | counter | `component` | Redis commands that reached Redis after their deadline and did nothing there (seen by a caller still waiting: a clock step between hosts) |
//! | `sentinel_redis_stalls_total` | counter | `component` | Redis connections that did not answer a probe after a command was given up; closed and reopened |
//! | `sentinel_route_models_excluded_total` | counter | `tier`, `provider`, `model` | models left out of the choice for a routed path whose requests their provider cannot serve ([`route_providers`](crate::TierRoutingLayerBuilder::route_providers)); counted once per config and path |
//! | `sentinel_errors_total` | counter | `code` | responses Sentinel made itself, by error code |
//!
//! Call [`describe`] once after installing a recorder to attach the help texts.

/// Routed requests.
pub const REQUESTS: &str = "sentinel_requests_total";
/// Model selections.
pub const SELECTIONS: &str = "sentinel_model_selections_total";
/// Retries on the next model.
pub const RETRIES: &str = "sentinel_retries_total";
/// Breaker transitions.
pub const BREAKER_TRANSITIONS: &str = "sentinel_breaker_transitions_total";
/// Open model breakers.
pub const MODELS_OPEN: &str = "sentinel_models_open";
/// The state of each breaker: 0 closed, 1 open, 2 half-open.
pub const BREAKER_STATE: &str = "sentinel_breaker_state";
/// Health-check results.
pub const HEALTH_CHECKS: &str = "sentinel_health_checks_total";
/// Background probes of open models.
pub const MODEL_PROBES: &str = "sentinel_model_probes_total";
/// Session upgrades.
pub const SESSION_UPGRADES: &str = "sentinel_session_upgrades_total";
/// Redis fallbacks.
pub const REDIS_FALLBACKS: &str = "sentinel_redis_fallbacks_total";
/// Redis commands dropped by Redis for arriving after their deadline.
pub const REDIS_LATE: &str = "sentinel_redis_late_commands_total";
/// Stalled Redis connections replaced.
pub const REDIS_STALLS: &str = "sentinel_redis_stalls_total";
/// Sentinel-made errors.
pub const ERRORS: &str = "sentinel_errors_total";
/// Models left out of the choice for a path their provider cannot serve.
pub const ROUTE_MODELS_EXCLUDED: &str = "sentinel_route_models_excluded_total";

/// Registers the help text of every metric above with the installed recorder.
pub fn describe() {
    use ::metrics::{describe_counter, describe_gauge};
    describe_counter!(
        REQUESTS,
        "Routed requests by effective tier, model, provider and status class."
    );
    describe_counter!(
        SELECTIONS,
        "Model selections by tier, model, provider and reason."
    );
    describe_counter!(RETRIES, "Second attempts on the next model of the tier.");
    describe_counter!(
        MODEL_PROBES,
        "Background probes of open models by provider, model and result."
    );
    describe_counter!(
        BREAKER_TRANSITIONS,
        "Circuit-breaker transitions by scope, name and target state."
    );
    describe_gauge!(
        MODELS_OPEN,
        "Model circuit breakers open right now in this process."
    );
    describe_gauge!(
        BREAKER_STATE,
        "Circuit-breaker state by scope, provider and model: 0 closed, 1 open, 2 half-open."
    );
    describe_counter!(
        HEALTH_CHECKS,
        "Active health-check probes by provider and result."
    );
    describe_counter!(SESSION_UPGRADES, "Sessions moved to a higher tier.");
    describe_counter!(
        REDIS_FALLBACKS,
        "Redis calls that failed or timed out; the request went on without them."
    );
    describe_counter!(
        REDIS_LATE,
        "Redis commands that reached Redis after their deadline and did nothing there."
    );
    describe_counter!(
        REDIS_STALLS,
        "Redis connections that stopped answering after a command was given up; reopened."
    );
    describe_counter!(ERRORS, "Responses Sentinel made itself, by error code.");
}

pub use crate::classify::status_class;

/// Metric handles (counters, histograms) by their label values, each
/// registered once: a registry lookup with freshly built labels on every
/// request costs more than the count itself. Keys come from the tier
/// config (tiers, models) and fixed sets (reasons, status classes), so it
/// holds what the metrics registry holds. One per layer or service, so
/// that a recorder installed for a test sees its own handles.
pub struct HandleCache<K, H>(std::sync::RwLock<std::collections::HashMap<K, H>>);

/// Counter handles by their label values.
pub(crate) type CounterCache<K> = HandleCache<K, metrics::Counter>;

impl<K, H> Default for HandleCache<K, H> {
    fn default() -> Self {
        HandleCache(std::sync::RwLock::default())
    }
}

impl<K, H> std::fmt::Debug for HandleCache<K, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandleCache").finish_non_exhaustive()
    }
}

impl<K: Eq + std::hash::Hash + Clone, H: Clone> HandleCache<K, H> {
    /// The handle for `key`, registered by `register` the first time.
    pub fn get(&self, key: &K, register: impl FnOnce() -> H) -> H {
        if let Some(handle) = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
        {
            return handle.clone();
        }
        let handle = register();
        self.0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key.clone())
            .or_insert(handle)
            .clone()
    }
}
