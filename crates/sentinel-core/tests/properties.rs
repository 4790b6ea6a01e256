//! Properties of the routing rules, checked over generated inputs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::time::Duration;

use proptest::prelude::*;
use sentinel_core::{
    BackoffSchedule, Pinned, RawModel, RawTier, RawTierConfig, RawTiers, SessionPlan, Tier,
    TierConfig,
};

fn tier_strategy() -> impl Strategy<Value = Tier> {
    prop_oneof![
        Just(Tier::Simple),
        Just(Tier::Moderate),
        Just(Tier::Complex)
    ]
}

fn config_with(costs: &[Vec<i64>; 3]) -> TierConfig {
    let tier = |t: usize| RawTier {
        models: costs[t]
            .iter()
            .enumerate()
            .map(|(i, &c)| RawModel {
                provider: "openai".into(),
                model: format!("t{t}-m{i}"),
                relative_cost: c,
                pricing: None,
                context_window: None,
            })
            .collect(),
    };
    TierConfig::validate(RawTierConfig {
        version: None,
        tiers: RawTiers {
            simple: Some(tier(0)),
            moderate: Some(tier(1)),
            complex: Some(tier(2)),
        },
    })
    .unwrap()
}

fn costs_strategy() -> impl Strategy<Value = [Vec<i64>; 3]> {
    let tier = || proptest::collection::vec(1i64..=10, 0..6);
    (tier(), tier(), tier()).prop_map(|(a, b, c)| [a, b, c])
}

proptest! {
    /// Over any sequence of requests, a session's tier never goes down, and
    /// each request runs in max(session tier, requested tier).
    #[test]
    fn session_tier_never_goes_down(
        costs in costs_strategy(),
        requests in proptest::collection::vec((tier_strategy(), any::<u64>(), any::<bool>()), 1..40),
    ) {
        let config = config_with(&costs);
        let mut pin: Option<Pinned> = None;
        for (requested, random, eligible) in requests {
            let before = pin.as_ref().map(|p| p.tier);
            let plan = SessionPlan::decide(pin.as_ref(), requested, &config, |_| eligible);
            let expected = before.map_or(requested, |b| b.max(requested));
            prop_assert_eq!(plan.tier(), expected);
            match plan {
                SessionPlan::Keep { tier } => {
                    prop_assert_eq!(Some(tier), before);
                }
                SessionPlan::Pick { tier, .. } => {
                    // When nothing can be picked the session keeps its pin.
                    if let Some(m) = config.tier(tier).choose(|_| !eligible, random) {
                        pin = Some(Pinned::new(tier, m.provider(), m.model()));
                    }
                }
            }
            if let (Some(b), Some(p)) = (before, pin.as_ref()) {
                prop_assert!(p.tier >= b, "session went from {} to {}", b, p.tier);
            }
        }
    }

    /// The wait never exceeds the cap, whatever the failures and Retry-After.
    #[test]
    fn wait_never_exceeds_the_cap(
        initial_ms in 1u64..100_000,
        extra_ms in 0u64..1_000_000,
        failures in any::<u32>(),
        retry_after_ms in proptest::option::of(any::<u64>()),
    ) {
        let s = BackoffSchedule::new(
            Duration::from_millis(initial_ms),
            Duration::from_millis(initial_ms + extra_ms),
        ).unwrap();
        let wait = s.wait(failures, retry_after_ms.map(Duration::from_millis));
        prop_assert!(wait <= s.cap());
        if failures > 0 {
            prop_assert!(wait >= s.initial());
        }
    }

    /// The first failure waits the initial value, and each further failure
    /// in a row doubles the wait until it reaches the cap. (The schedule
    /// holds no count: that a success resets the breaker's count is checked
    /// where the count lives, in the layer's
    /// `a_success_resets_the_breakers_backoff`.)
    #[test]
    fn wait_starts_at_initial_and_doubles_up_to_the_cap(
        initial_ms in 1u64..100_000,
        extra_ms in 0u64..1_000_000,
        failures in 1u32..64,
    ) {
        let s = BackoffSchedule::new(
            Duration::from_millis(initial_ms),
            Duration::from_millis(initial_ms + extra_ms),
        ).unwrap();
        prop_assert_eq!(s.wait(1, None), s.initial());
        let wait = s.wait(failures, None);
        let next = s.wait(failures + 1, None);
        prop_assert_eq!(next, (wait * 2).min(s.cap()));
    }

    /// A choice is always a model of the tier, never an excluded one, and
    /// there is a choice whenever some model is not excluded.
    #[test]
    fn choice_stays_in_the_tier_and_skips_excluded_models(
        costs in costs_strategy(),
        tier in tier_strategy(),
        excluded in proptest::collection::vec(any::<bool>(), 6),
        random in any::<u64>(),
    ) {
        let config = config_with(&costs);
        let models = config.tier(tier);
        let is_excluded = |m: &sentinel_core::ModelEntry| {
            let i = models.models().iter().position(|x| x == m).unwrap();
            excluded[i]
        };
        let any_eligible = models.models().iter().any(|m| !is_excluded(m));
        match models.choose(is_excluded, random) {
            Some(m) => {
                prop_assert!(models.models().contains(m));
                let prefix = format!("t{}-", tier.index());
                prop_assert!(m.model().starts_with(&prefix));
                prop_assert!(!is_excluded(m));
            }
            None => prop_assert!(!any_eligible),
        }
    }
}
