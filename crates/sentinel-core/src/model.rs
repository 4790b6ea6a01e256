//! A validated model of a tier, and its prices: what the config module
//! builds and the weighted choice reads.

use std::sync::Arc;

/// Validated token prices, in US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pricing {
    input_per_mtok_usd: f64,
    output_per_mtok_usd: f64,
}

impl Pricing {
    /// Prices already checked (finite, not negative).
    pub(crate) fn new(input_per_mtok_usd: f64, output_per_mtok_usd: f64) -> Self {
        Pricing {
            input_per_mtok_usd,
            output_per_mtok_usd,
        }
    }

    /// Price of a million input tokens.
    pub fn input_per_mtok_usd(&self) -> f64 {
        self.input_per_mtok_usd
    }

    /// Price of a million output tokens.
    pub fn output_per_mtok_usd(&self) -> f64 {
        self.output_per_mtok_usd
    }

    /// The cost in US dollars of a request that used these token counts.
    pub fn cost_usd(&self, input_tokens: u64, output_tokens: u64) -> f64 {
        (input_tokens as f64 * self.input_per_mtok_usd
            + output_tokens as f64 * self.output_per_mtok_usd)
            / 1_000_000.0
    }
}

/// A validated model of a tier.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEntry {
    provider: Arc<str>,
    model: Arc<str>,
    relative_cost: u8,
    pricing: Option<Pricing>,
    context_window: Option<u64>,
}

impl ModelEntry {
    /// An entry already validated ([`TierConfig::validate`](crate::TierConfig::validate)).
    pub(crate) fn new(
        provider: Arc<str>,
        model: Arc<str>,
        relative_cost: u8,
        pricing: Option<Pricing>,
        context_window: Option<u64>,
    ) -> Self {
        ModelEntry {
            provider,
            model,
            relative_cost,
            pricing,
            context_window,
        }
    }

    /// The provider that serves the model.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// The provider name, shared (cheap to clone into metrics labels and extensions).
    pub fn provider_arc(&self) -> &Arc<str> {
        &self.provider
    }

    /// The upstream model name.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The model name, shared.
    pub fn model_arc(&self) -> &Arc<str> {
        &self.model
    }

    /// Relative cost in `1..=10`.
    pub fn relative_cost(&self) -> u8 {
        self.relative_cost
    }

    /// Token prices, when the config gave them.
    pub fn pricing(&self) -> Option<Pricing> {
        self.pricing
    }

    /// The context window in tokens, when the config gave it.
    pub fn context_window(&self) -> Option<u64> {
        self.context_window
    }

    /// Whether this entry is `model` served by `provider`.
    pub fn is(&self, provider: &str, model: &str) -> bool {
        &*self.provider == provider && &*self.model == model
    }
}
