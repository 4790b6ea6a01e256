//! The facade re-exports the core's API under `sentinel::`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use sentinel::{RawTierConfig, SessionPlan, Tier, TierConfig};

#[test]
fn the_facade_routes_a_tier_end_to_end_through_the_core() {
    let raw: RawTierConfig = serde_json::from_str(
        r#"{ "tiers": { "moderate": { "models": [
            { "provider": "openai", "model": "gpt-4o", "relative_cost": 3 } ] } } }"#,
    )
    .unwrap();
    let config = TierConfig::validate(raw).unwrap();
    let plan = SessionPlan::decide(None, Tier::Moderate, &config, |_| true);
    assert_eq!(plan.tier(), Tier::Moderate);
    let model = config.tier(plan.tier()).choose(|_| false, 42).unwrap();
    assert_eq!(model.model(), "gpt-4o");
    assert!(config.tier(Tier::Simple).is_empty());
}
