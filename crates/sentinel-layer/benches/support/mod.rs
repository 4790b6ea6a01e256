//! What the layer benchmarks share.

use sentinel_core::{RawTierConfig, StaticConfig, TierConfig};
use sentinel_layer::{MemorySessionStore, TierRoutingLayer};

/// A layer over a fixed config (two `simple` models, one `moderate`), with
/// a memory session store when `sessions`.
pub(crate) fn layer(sessions: bool) -> TierRoutingLayer {
    let raw: RawTierConfig = serde_json::from_value(serde_json::json!({ "tiers": {
        "simple": { "models": [
            { "provider": "openai", "model": "gpt-4o-mini", "relative_cost": 1 },
            { "provider": "openai", "model": "gpt-4.1-mini", "relative_cost": 2 }
        ] },
        "moderate": { "models": [ { "provider": "openai", "model": "gpt-4o", "relative_cost": 4 } ] }
    } }))
    .expect("valid config");
    let source = StaticConfig::new(TierConfig::validate(raw).expect("valid config"));
    let mut builder = TierRoutingLayer::builder(source);
    if sessions {
        builder = builder.session_store(MemorySessionStore::new());
    }
    builder.build().expect("valid layer")
}
