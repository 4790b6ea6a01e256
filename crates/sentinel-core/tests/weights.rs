//! The weighted choice's distribution, measured over many seeded draws.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use sentinel_core::{RawModel, RawTier, RawTierConfig, RawTiers, Tier, TierConfig};

fn config(costs: &[i64]) -> TierConfig {
    let models = costs
        .iter()
        .enumerate()
        .map(|(i, &c)| RawModel {
            provider: "openai".into(),
            model: format!("m{i}"),
            relative_cost: c,
            pricing: None,
            context_window: None,
        })
        .collect();
    TierConfig::validate(RawTierConfig {
        version: None,
        tiers: RawTiers {
            simple: Some(RawTier { models }),
            ..Default::default()
        },
    })
    .unwrap()
}

/// Draws `n` choices and returns the count per model index.
fn draw(config: &TierConfig, excluded: &[usize], n: usize, seed: u64) -> Vec<u64> {
    let tier = config.tier(Tier::Simple);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut counts = vec![0u64; tier.len()];
    for _ in 0..n {
        let m = tier
            .choose(
                |m| {
                    excluded
                        .iter()
                        .any(|&i| tier.models()[i].model() == m.model())
                },
                rng.u64(..),
            )
            .unwrap();
        let i = tier.models().iter().position(|x| x == m).unwrap();
        counts[i] += 1;
    }
    counts
}

/// Pearson's chi-square statistic of observed counts against expected probabilities.
fn chi_square(counts: &[u64], expected: &[f64]) -> f64 {
    let n: u64 = counts.iter().sum();
    counts
        .iter()
        .zip(expected)
        .filter(|&(_, &p)| p > 0.0)
        .map(|(&o, &p)| {
            let e = p * n as f64;
            (o as f64 - e).powi(2) / e
        })
        .sum()
}

#[test]
fn draws_follow_inverse_cost_weights() {
    // Weights 1, 1/2, 1/5, 1/10: probabilities 10/18, 5/18, 2/18, 1/18.
    let costs = [1, 2, 5, 10];
    let config = config(&costs);
    let expected: Vec<f64> = [10.0, 5.0, 2.0, 1.0].iter().map(|w| w / 18.0).collect();
    for seed in [1, 2, 3] {
        let counts = draw(&config, &[], 100_000, seed);
        let chi2 = chi_square(&counts, &expected);
        // 3 degrees of freedom: the 99.9th percentile is 16.27.
        assert!(chi2 < 16.27, "seed {seed}: chi2 {chi2}, counts {counts:?}");
    }
}

#[test]
fn exclusion_renormalises_over_the_remaining_models() {
    let config = config(&[1, 2, 5, 10]);
    // Without m0: weights 1/2, 1/5, 1/10 -> 5/8, 2/8, 1/8.
    let counts = draw(&config, &[0], 80_000, 9);
    assert_eq!(counts[0], 0);
    let expected = [0.0, 5.0 / 8.0, 2.0 / 8.0, 1.0 / 8.0];
    let chi2 = chi_square(&counts, &expected);
    // 2 degrees of freedom: the 99.9th percentile is 13.82.
    assert!(chi2 < 13.82, "chi2 {chi2}, counts {counts:?}");
}

#[test]
fn the_test_would_catch_uniform_choice() {
    // Guard on the statistic itself: uniform counts are far from the weights.
    let expected: Vec<f64> = [10.0, 5.0, 2.0, 1.0].iter().map(|w| w / 18.0).collect();
    let uniform = [25_000, 25_000, 25_000, 25_000];
    assert!(chi_square(&uniform, &expected) > 1_000.0);
}
