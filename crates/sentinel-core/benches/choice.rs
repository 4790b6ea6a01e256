//! One weighted choice in a tier of 2 and of 16 models, with nothing
//! excluded and with one model excluded.
//!
//! Run with: `cargo bench -p sentinel-core --bench choice`

#![allow(clippy::expect_used)] // a fixed, valid benchmark config

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use sentinel_core::{RawModel, RawTier, RawTierConfig, RawTiers, Tier, TierConfig};

fn tier_config(n: usize) -> TierConfig {
    let models = (0..n)
        .map(|i| RawModel {
            provider: "openai".into(),
            model: format!("model-{i}"),
            relative_cost: (i % 10 + 1) as i64,
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
    TierConfig::validate(raw).expect("the benchmark config is valid")
}

fn choice(c: &mut Criterion) {
    let mut group = c.benchmark_group("choose");
    for n in [2, 16] {
        let config = tier_config(n);
        let tier = config.tier(Tier::Simple);
        let mut rng = fastrand::Rng::with_seed(7);
        group.bench_function(format!("{n}_models"), |b| {
            b.iter(|| black_box(tier.choose(|_| false, rng.u64(..))))
        });
        group.bench_function(format!("{n}_models_one_excluded"), |b| {
            b.iter(|| black_box(tier.choose(|m| m.model() == "model-0", rng.u64(..))))
        });
    }
    group.finish();
}

criterion_group!(benches, choice);
criterion_main!(benches);
