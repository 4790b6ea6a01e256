//! Weighted choice of a model within a tier.
//!
//! Each model's weight is `1 / relative_cost`, computed once when a
//! [`TierConfig`](crate::TierConfig) is validated. A choice takes a predicate
//! for the models to leave out (backing off, unhealthy, already tried) and a
//! uniformly random `u64` from the caller; excluding models needs no rebuild,
//! only a linear scan over the tier's weights. The same inputs always give
//! the same model.
//!
//! # Example
//!
//! ```
//! use sentinel_core::{RawTierConfig, Tier, TierConfig};
//!
//! let raw: RawTierConfig = serde_json::from_str(r#"{ "tiers": { "simple": { "models": [
//!     { "provider": "openai", "model": "cheap", "relative_cost": 1 },
//!     { "provider": "openai", "model": "pricey", "relative_cost": 4 }
//! ] } } }"#)?;
//! let config = TierConfig::validate(raw)?;
//! let simple = config.tier(Tier::Simple);
//!
//! // `cheap` has weight 1, `pricey` 1/4: cheap wins 80% of the draws.
//! assert_eq!(simple.probability(0), Some(0.8));
//! assert_eq!(simple.choose(|_| false, 0).map(|m| m.model()), Some("cheap"));
//! assert_eq!(simple.choose(|_| false, u64::MAX).map(|m| m.model()), Some("pricey"));
//!
//! // Leave `cheap` out (say it is backing off): only `pricey` remains.
//! let pick = simple.choose(|m| m.model() == "cheap", 0);
//! assert_eq!(pick.map(|m| m.model()), Some("pricey"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::model::ModelEntry;

/// The models of one tier and their selection weights.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TierModels {
    models: Vec<ModelEntry>,
    weights: Vec<f64>,
    total: f64,
}

impl TierModels {
    pub(crate) fn new(models: Vec<ModelEntry>) -> Self {
        let weights: Vec<f64> = models
            .iter()
            .map(|m| 1.0 / f64::from(m.relative_cost()))
            .collect();
        let total = weights.iter().sum();
        TierModels {
            models,
            weights,
            total,
        }
    }

    /// The models, in config order.
    pub fn models(&self) -> &[ModelEntry] {
        &self.models
    }

    /// How many models the tier has.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// Whether the tier has no model (it is unroutable).
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// The model `model` of `provider`, if the tier has it.
    pub fn find(&self, provider: &str, model: &str) -> Option<&ModelEntry> {
        self.models.iter().find(|m| m.is(provider, model))
    }

    /// The chance that model `index` is chosen when no model is excluded.
    pub fn probability(&self, index: usize) -> Option<f64> {
        self.weights.get(index).map(|w| w / self.total)
    }

    /// The chance that [`choose`](Self::choose) picks each model (in config
    /// order) when the models for which `exclude` is true are left out: `0`
    /// for those, and shares that sum to 1 when any model is left, all `0`
    /// when none is.
    pub fn shares(&self, mut exclude: impl FnMut(&ModelEntry) -> bool) -> Vec<f64> {
        let kept: Vec<f64> = self
            .models
            .iter()
            .zip(&self.weights)
            .map(|(m, w)| if exclude(m) { 0.0 } else { *w })
            .collect();
        let eligible: f64 = kept.iter().sum();
        if eligible <= 0.0 {
            return vec![0.0; kept.len()];
        }
        kept.into_iter().map(|w| w / eligible).collect()
    }

    /// Chooses a model with probability proportional to `1 / relative_cost`
    /// among the models for which `exclude` is false. `random` is any
    /// uniformly distributed `u64`. `None` when every model is excluded or
    /// the tier is empty.
    pub fn choose(
        &self,
        mut exclude: impl FnMut(&ModelEntry) -> bool,
        random: u64,
    ) -> Option<&ModelEntry> {
        // One pass to find the eligible weight, one to land on the draw.
        // Tiers hold a few dozen models at most, so the predicate is cheap to
        // evaluate twice; a bitmask keeps it to once for the first 64.
        let mut mask: u64 = 0;
        let mut eligible = 0.0;
        for (i, (m, w)) in self.models.iter().zip(&self.weights).enumerate() {
            if !exclude(m) {
                eligible += w;
                if i < 64 {
                    mask |= 1 << i;
                }
            }
        }
        if eligible <= 0.0 {
            return None;
        }
        let mut target = unit_interval(random) * eligible;
        let mut last = None;
        for (i, (m, w)) in self.models.iter().zip(&self.weights).enumerate() {
            let included = if i < 64 {
                mask & (1 << i) != 0
            } else {
                !exclude(m)
            };
            if !included {
                continue;
            }
            if target < *w {
                return Some(m);
            }
            target -= w;
            last = Some(m);
        }
        // Rounding left `target` a hair above the last weight: that is the last model.
        last
    }
}

/// Maps a uniformly random `u64` onto `[0, 1)` using its top 53 bits.
fn unit_interval(random: u64) -> f64 {
    (random >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RawModel, RawTier, RawTierConfig, RawTiers, Tier, TierConfig};

    fn tier_of(costs: &[i64]) -> TierModels {
        let models = costs
            .iter()
            .enumerate()
            .map(|(i, &c)| RawModel {
                provider: "p".into(),
                model: format!("m{i}"),
                relative_cost: c,
                pricing: None,
                context_window: None,
            })
            .collect();
        let raw = RawTierConfig {
            version: None,
            tiers: RawTiers {
                simple: Some(RawTier { models }),
                ..Default::default()
            },
        };
        TierConfig::validate(raw)
            .unwrap()
            .tier(Tier::Simple)
            .clone()
    }

    fn index_of(t: &TierModels, m: &ModelEntry) -> usize {
        t.models().iter().position(|x| x == m).unwrap()
    }

    #[test]
    fn unit_interval_covers_zero_to_one() {
        assert_eq!(unit_interval(0), 0.0);
        let top = unit_interval(u64::MAX);
        assert!(top < 1.0 && top > 0.999_999_9);
    }

    #[test]
    fn weights_are_inverse_relative_cost() {
        let t = tier_of(&[1, 2, 4]);
        // weights 1, 1/2, 1/4; total 7/4.
        assert!((t.probability(0).unwrap() - 4.0 / 7.0).abs() < 1e-12);
        assert!((t.probability(1).unwrap() - 2.0 / 7.0).abs() < 1e-12);
        assert!((t.probability(2).unwrap() - 1.0 / 7.0).abs() < 1e-12);
        assert_eq!(t.probability(3), None);
    }

    #[test]
    fn the_draw_maps_onto_cumulative_weights() {
        let t = tier_of(&[1, 1]);
        assert_eq!(index_of(&t, t.choose(|_| false, 0).unwrap()), 0);
        assert_eq!(
            index_of(&t, t.choose(|_| false, u64::MAX / 2 - 4096).unwrap()),
            0
        );
        assert_eq!(
            index_of(&t, t.choose(|_| false, u64::MAX / 2 + 4096).unwrap()),
            1
        );
        assert_eq!(index_of(&t, t.choose(|_| false, u64::MAX).unwrap()), 1);
    }

    #[test]
    fn excluded_models_are_never_chosen() {
        let t = tier_of(&[1, 1, 1]);
        for r in [0, u64::MAX / 3, u64::MAX / 2, u64::MAX] {
            let m = t.choose(|m| m.model() == "m1", r).unwrap();
            assert_ne!(m.model(), "m1");
        }
        let only = t.choose(|m| m.model() != "m2", 0).unwrap();
        assert_eq!(only.model(), "m2");
    }

    #[test]
    fn nothing_to_choose_gives_none() {
        assert!(tier_of(&[]).choose(|_| false, 7).is_none());
        assert!(tier_of(&[1, 2]).choose(|_| true, 7).is_none());
    }

    #[test]
    fn exclusion_works_beyond_the_first_64_models() {
        let t = tier_of(&[1; 100]);
        for r in [0, u64::MAX / 7, u64::MAX / 2, u64::MAX] {
            let m = t.choose(|m| m.model() != "m99", r).unwrap();
            assert_eq!(m.model(), "m99");
            let m = t
                .choose(|m| m.model() == "m99" || m.model() == "m70", r)
                .unwrap();
            assert!(m.model() != "m99" && m.model() != "m70");
        }
    }

    #[test]
    fn find_looks_up_by_provider_and_model() {
        let t = tier_of(&[1, 2]);
        assert_eq!(t.find("p", "m1").unwrap().relative_cost(), 2);
        assert!(t.find("q", "m1").is_none());
        assert!(t.find("p", "m9").is_none());
    }

    #[test]
    fn shares_are_the_chances_of_choose_with_the_same_exclusions() {
        let raw: RawTierConfig = serde_json::from_value(serde_json::json!({ "tiers": {
            "simple": { "models": [
                { "provider": "p", "model": "a", "relative_cost": 1 },
                { "provider": "p", "model": "b", "relative_cost": 2 },
                { "provider": "p", "model": "c", "relative_cost": 4 }
            ] }
        } }))
        .unwrap();
        let config = TierConfig::validate(raw).unwrap();
        let tier = config.tier(Tier::Simple);
        for excluded in [None, Some("a"), Some("b"), Some("c")] {
            let exclude = |m: &ModelEntry| Some(m.model()) == excluded;
            let shares = tier.shares(exclude);
            assert!(
                (shares.iter().sum::<f64>() - 1.0).abs() < 1e-12,
                "{shares:?}"
            );
            // `choose` over evenly spread draws lands on each model in
            // proportion to its share.
            const DRAWS: u64 = 70_000;
            let mut counts = [0u64; 3];
            for i in 0..DRAWS {
                let random = i * (u64::MAX / DRAWS);
                let m = tier.choose(exclude, random).unwrap();
                counts[tier.models().iter().position(|x| x == m).unwrap()] += 1;
            }
            for (count, share) in counts.iter().zip(&shares) {
                let seen = *count as f64 / DRAWS as f64;
                assert!(
                    (seen - share).abs() < 1e-3,
                    "{excluded:?}: {counts:?} vs {shares:?}"
                );
            }
        }
        assert_eq!(tier.shares(|_| true), vec![0.0; 3]);
        assert_eq!(
            tier.shares(|_| false),
            vec![4.0 / 7.0, 2.0 / 7.0, 1.0 / 7.0]
        );
    }
}
