//! The proxy's tier-config source: Zion through the cache, or a fixed
//! config, minus the models of providers the proxy does not know.

use std::collections::HashSet;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use sentinel_core::{ConfigFuture, RawTierConfig, SourceStatus, TierConfig, TierConfigSource};

use crate::metrics as m;

/// The built-in v1 mappings, used without Zion and without a `[tiers]`
/// table: `simple` → `gpt-4o-mini`, `moderate` → `gpt-4o`, `complex` →
/// `gpt-4.1`, all on the `openai` provider, with OpenAI's list prices.
pub fn builtin() -> TierConfig {
    let raw: Result<RawTierConfig, _> = serde_json::from_value(serde_json::json!({
        "version": "builtin-v1",
        "tiers": {
            "simple": { "models": [ { "provider": "openai", "model": "gpt-4o-mini", "relative_cost": 1,
                "pricing": { "input_per_mtok_usd": 0.15, "output_per_mtok_usd": 0.60 } } ] },
            "moderate": { "models": [ { "provider": "openai", "model": "gpt-4o", "relative_cost": 5,
                "pricing": { "input_per_mtok_usd": 2.50, "output_per_mtok_usd": 10.00 } } ] },
            "complex": { "models": [ { "provider": "openai", "model": "gpt-4.1", "relative_cost": 8,
                "pricing": { "input_per_mtok_usd": 2.00, "output_per_mtok_usd": 8.00 } } ] }
        }
    }));
    // The literal above is valid (a unit test checks it).
    raw.ok()
        .and_then(|raw| TierConfig::validate(raw).ok())
        .unwrap_or_default()
}

/// Wraps a source and leaves out the models whose provider is unknown
/// (logged and counted once per config version).
pub struct KnownProviders<S> {
    inner: S,
    known: HashSet<String>,
    last: ArcSwapOption<(Arc<TierConfig>, Arc<TierConfig>)>,
}

impl<S> KnownProviders<S> {
    /// Filters `inner` down to the providers in `known`.
    pub fn new(inner: S, known: impl IntoIterator<Item = String>) -> Self {
        KnownProviders {
            inner,
            known: known.into_iter().collect(),
            last: ArcSwapOption::empty(),
        }
    }

    fn filter(&self, config: Arc<TierConfig>) -> Arc<TierConfig> {
        if let Some(pair) = self.last.load().as_ref()
            && Arc::ptr_eq(&pair.0, &config)
        {
            return pair.1.clone();
        }
        let (kept, dropped) = config.retain_providers(|p| self.known.contains(p));
        for (tier, model) in &dropped {
            tracing::warn!(%tier, provider = model.provider(), model = model.model(), "leaving out a model of an unknown provider");
            ::metrics::counter!(m::UNKNOWN_PROVIDER_MODELS, "provider" => model.provider().to_owned()).increment(1);
        }
        let kept = if dropped.is_empty() {
            config.clone()
        } else {
            Arc::new(kept)
        };
        self.last.store(Some(Arc::new((config, kept.clone()))));
        kept
    }
}

impl<S: TierConfigSource> TierConfigSource for KnownProviders<S> {
    fn load(&self) -> ConfigFuture<'_> {
        Box::pin(async move { self.inner.load().await.map(|c| self.filter(c)) })
    }

    fn cached(&self) -> Option<Arc<TierConfig>> {
        self.inner.cached().map(|c| self.filter(c))
    }

    fn status(&self) -> Option<SourceStatus> {
        self.inner.status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentinel_core::{StaticConfig, Tier};

    #[test]
    fn builtin_maps_every_tier_to_openai() {
        let c = builtin();
        assert_eq!(c.tier(Tier::Simple).models()[0].model(), "gpt-4o-mini");
        assert_eq!(c.tier(Tier::Moderate).models()[0].model(), "gpt-4o");
        assert_eq!(c.tier(Tier::Complex).models()[0].model(), "gpt-4.1");
        assert!(
            c.models()
                .all(|(_, m)| m.provider() == "openai" && m.pricing().is_some())
        );
    }

    #[test]
    fn unknown_providers_are_left_out_once_per_version() {
        let raw: RawTierConfig =
            serde_json::from_value(serde_json::json!({ "tiers": { "simple": { "models": [
            { "provider": "openai", "model": "a", "relative_cost": 1 },
            { "provider": "mystery", "model": "b", "relative_cost": 1 } ] } } }))
            .unwrap();
        let source = KnownProviders::new(
            StaticConfig::new(TierConfig::validate(raw).unwrap()),
            ["openai".to_owned()],
        );
        let first = source.cached().unwrap();
        assert_eq!(first.tier(Tier::Simple).len(), 1);
        let second = source.cached().unwrap();
        assert!(Arc::ptr_eq(&first, &second), "filtered once, then reused");
    }
}
