//! What the layer is doing now, for an operator: per tier, each model's
//! share of new traffic and its breaker; per provider, its health and its
//! breaker. [`TierRoutingLayer::routing_state`](crate::TierRoutingLayer::routing_state)
//! takes the snapshot; the proxy serves it as `GET /admin/state`.
//!
//! A model's `share` is the chance that a new request without a session
//! gets it right now: the weighted rule over the models that may take
//! traffic, `0` for one backing off (its own breaker or its provider's).
//! The shares of a tier sum to 1 when any of its models is available.
//!
//! # Example
//!
//! ```
//! use sentinel_core::{RawTierConfig, StaticConfig, Tier, TierConfig};
//! use sentinel_layer::TierRoutingLayer;
//! use sentinel_layer::state::BreakerStatus;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let raw: RawTierConfig = serde_json::from_str(r#"{ "tiers": { "simple": { "models": [
//!     { "provider": "openai", "model": "cheap", "relative_cost": 1 },
//!     { "provider": "openai", "model": "pricey", "relative_cost": 3 } ] } } }"#)?;
//! let layer = TierRoutingLayer::new(StaticConfig::new(TierConfig::validate(raw)?));
//! let state = layer.routing_state().expect("a static config is always at hand");
//! let simple = state.tier(Tier::Simple);
//! assert_eq!(simple[0].share, 0.75);
//! assert_eq!(simple[1].breaker, BreakerStatus::Closed);
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use sentinel_core::{Tier, TierConfig};
use tokio::time::Instant;

use crate::breaker::state::{BreakerView, Breakers};

/// A breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerStatus {
    /// Taking traffic.
    Closed,
    /// Backing off.
    Open,
    /// Its wait is over: the next attempt, or a background probe, decides.
    HalfOpen,
}

impl BreakerStatus {
    /// `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerStatus::Closed => "closed",
            BreakerStatus::Open => "open",
            BreakerStatus::HalfOpen => "half_open",
        }
    }

    /// The `sentinel_breaker_state` gauge's value: 0 closed, 1 open, 2
    /// half-open.
    pub(crate) fn gauge(self) -> f64 {
        match self {
            BreakerStatus::Closed => 0.0,
            BreakerStatus::Open => 1.0,
            BreakerStatus::HalfOpen => 2.0,
        }
    }

    fn of(view: BreakerView, now: Instant) -> (Self, Option<Duration>) {
        match view {
            BreakerView::Closed => (BreakerStatus::Closed, None),
            BreakerView::Open(until) => (BreakerStatus::Open, Some(until - now)),
            BreakerView::HalfOpen => (BreakerStatus::HalfOpen, None),
        }
    }
}

/// A provider's health, from the active health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Its last check answered.
    Up,
    /// Its last check failed.
    Down,
    /// Not checked yet, or health checks are off.
    Unknown,
}

impl Health {
    /// `up`, `down` or `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Down => "down",
            Health::Unknown => "unknown",
        }
    }
}

/// One model of a tier, now.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelState {
    /// Its provider.
    pub provider: Arc<str>,
    /// The model.
    pub model: Arc<str>,
    /// Its relative cost in the tier config.
    pub relative_cost: u8,
    /// The chance that a new request without a session gets it now.
    pub share: f64,
    /// Its own breaker.
    pub breaker: BreakerStatus,
    /// While open: how long until it may be tried again.
    pub retry_in: Option<Duration>,
}

/// One provider, now.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderState {
    /// The provider's name in the tier config.
    pub name: Arc<str>,
    /// Its health.
    pub health: Health,
    /// Its breaker (connection failures and failed health checks).
    pub breaker: BreakerStatus,
    /// While open: how long until it may be tried again.
    pub retry_in: Option<Duration>,
}

/// A snapshot of the routing state.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingState {
    /// The tier config it was taken against.
    pub config: Arc<TierConfig>,
    /// Every tier, in [`Tier::ALL`] order, with its models in config order.
    pub tiers: Vec<(Tier, Vec<ModelState>)>,
    /// Every provider of the config, in the order first met.
    pub providers: Vec<ProviderState>,
}

impl RoutingState {
    /// The models of `tier`.
    pub fn tier(&self, tier: Tier) -> &[ModelState] {
        self.tiers
            .iter()
            .find(|(t, _)| *t == tier)
            .map_or(&[], |(_, models)| models.as_slice())
    }

    pub(crate) fn take(config: Arc<TierConfig>, breakers: &Breakers, now: Instant) -> Self {
        let tiers = Tier::ALL
            .into_iter()
            .map(|tier| {
                let models = config.tier(tier);
                let shares = models.shares(|m| breakers.blocked_until(m, now).is_some());
                let states = models
                    .models()
                    .iter()
                    .zip(shares)
                    .map(|(m, share)| {
                        let view = breakers.model_view(m.provider(), m.model(), now);
                        let (breaker, retry_in) = BreakerStatus::of(view, now);
                        ModelState {
                            provider: m.provider_arc().clone(),
                            model: m.model_arc().clone(),
                            relative_cost: m.relative_cost(),
                            share,
                            breaker,
                            retry_in,
                        }
                    })
                    .collect();
                (tier, states)
            })
            .collect();
        let mut providers: Vec<ProviderState> = Vec::new();
        for (_, m) in config.models() {
            if providers.iter().any(|p| *p.name == *m.provider()) {
                continue;
            }
            let view = breakers.provider_view(m.provider(), now);
            let (breaker, retry_in) = BreakerStatus::of(view, now);
            let health = match breakers.last_health(m.provider()) {
                Some(true) => Health::Up,
                Some(false) => Health::Down,
                None => Health::Unknown,
            };
            providers.push(ProviderState {
                name: m.provider_arc().clone(),
                health,
                breaker,
                retry_in,
            });
        }
        RoutingState {
            config,
            tiers,
            providers,
        }
    }
}

#[cfg(test)]
mod tests {
    use sentinel_core::{BackoffSchedule, RawTierConfig};

    use super::*;
    use crate::breaker::state::BreakerSettings;

    #[tokio::test(start_paused = true)]
    async fn a_provider_shows_its_last_health_check_and_its_breaker() {
        let raw: RawTierConfig = serde_json::from_value(serde_json::json!({ "tiers": {
            "simple": { "models": [ { "provider": "p", "model": "m", "relative_cost": 1 } ] }
        } }))
        .unwrap();
        let config = Arc::new(TierConfig::validate(raw).unwrap());
        let breakers = Breakers::new(
            BreakerSettings {
                threshold: 1,
                schedule: BackoffSchedule::default(),
            },
            None,
        );
        let provider = |b: &Breakers| {
            RoutingState::take(config.clone(), b, Instant::now()).providers[0].clone()
        };
        assert_eq!(provider(&breakers).health, Health::Unknown);

        let p: Arc<str> = Arc::from("p");
        breakers.health(&p, false, Instant::now());
        let down = provider(&breakers);
        assert_eq!(
            (down.health, down.breaker),
            (Health::Down, BreakerStatus::Open)
        );
        assert_eq!(down.retry_in, Some(Duration::from_secs(30)));
        let state = RoutingState::take(config.clone(), &breakers, Instant::now());
        assert_eq!(
            state.tier(Tier::Simple)[0].share,
            0.0,
            "its models back off too"
        );

        breakers.health(&p, true, Instant::now());
        let up = provider(&breakers);
        assert_eq!((up.health, up.breaker), (Health::Up, BreakerStatus::Closed));
    }
}
