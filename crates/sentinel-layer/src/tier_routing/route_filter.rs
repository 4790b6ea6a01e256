//! Which providers may serve a routed path
//! ([`TierRoutingLayerBuilder::route_providers`](super::TierRoutingLayerBuilder::route_providers)):
//! a request to a path is routed over the tier config without the models
//! whose provider cannot serve it, so the weighted choice, sessions and
//! the retry only ever meet models that can.

use std::sync::{Arc, Mutex, PoisonError};

use sentinel_core::TierConfig;

use crate::metrics as m;

/// Says whether `provider` may serve a request to `path`.
pub(crate) type Allows = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// Paths whose filtered config is kept (routed paths are few; past this
/// the oldest entry goes).
const CACHED_PATHS: usize = 16;

/// A path, the config as the source gave it, and the config for the path.
type Filtered = (Box<str>, Arc<TierConfig>, Arc<TierConfig>);

/// The filter and, per path, the last config filtered for it.
pub(crate) struct RouteFilter {
    allows: Allows,
    cache: Mutex<Vec<Filtered>>,
}

impl RouteFilter {
    pub(crate) fn new(allows: Allows) -> Self {
        RouteFilter {
            allows,
            cache: Mutex::new(Vec::new()),
        }
    }

    /// `config` without the models that cannot serve `path` (the same
    /// `Arc` when none is left out). Built once per config and path; each
    /// model left out is counted in `sentinel_route_models_excluded_total`.
    pub(crate) fn config_for(&self, path: &str, config: &Arc<TierConfig>) -> Arc<TierConfig> {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, _, filtered)) = cache
            .iter()
            .find(|(p, source, _)| &**p == path && Arc::ptr_eq(source, config))
        {
            return filtered.clone();
        }
        let (kept, dropped) = config.retain_providers(|provider| (self.allows)(path, provider));
        for (tier, model) in &dropped {
            ::metrics::counter!(m::ROUTE_MODELS_EXCLUDED,
                "tier" => tier.as_str(),
                "provider" => model.provider().to_owned(),
                "model" => model.model().to_owned())
            .increment(1);
        }
        let filtered = if dropped.is_empty() {
            config.clone()
        } else {
            Arc::new(kept)
        };
        cache.retain(|(p, _, _)| &**p != path);
        if cache.len() >= CACHED_PATHS {
            cache.remove(0);
        }
        cache.push((path.into(), config.clone(), filtered.clone()));
        filtered
    }
}

impl std::fmt::Debug for RouteFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteFilter").finish_non_exhaustive()
    }
}
