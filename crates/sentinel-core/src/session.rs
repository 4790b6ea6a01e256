//! The session rule: a session keeps its model; upgrades are allowed,
//! downgrades never.
//!
//! Given what a session is pinned to (its tier and model) and the tier a new
//! request asks for, [`SessionPlan::decide`] says which tier the request
//! really runs in and whether to keep the pinned model or pick a new one:
//!
//! - no pin: pick in the requested tier ([`PickReason::New`]);
//! - a higher tier: pick in the higher tier ([`PickReason::Upgrade`]);
//! - an equal or lower tier: keep the pinned model, in the session's tier;
//!   but when that model is no longer in the config or is not eligible
//!   (backing off, unhealthy), pick anew in the session's tier
//!   ([`PickReason::Repin`]).
//!
//! The effective tier is always `max(session tier, requested tier)`.
//!
//! # Example
//!
//! ```
//! use sentinel_core::{PickReason, Pinned, RawTierConfig, SessionPlan, Tier, TierConfig};
//!
//! let raw: RawTierConfig = serde_json::from_str(r#"{ "tiers": {
//!   "simple":   { "models": [ { "provider": "openai", "model": "gpt-4o-mini", "relative_cost": 1 } ] },
//!   "moderate": { "models": [ { "provider": "openai", "model": "gpt-4o", "relative_cost": 3 } ] }
//! } }"#)?;
//! let config = TierConfig::validate(raw)?;
//! let pinned = Pinned::new(Tier::Moderate, "openai", "gpt-4o");
//!
//! // Asking for `simple` keeps the session on its moderate model.
//! let plan = SessionPlan::decide(Some(&pinned), Tier::Simple, &config, |_| true);
//! assert_eq!(plan, SessionPlan::Keep { tier: Tier::Moderate });
//!
//! // Asking for `complex` upgrades it.
//! let plan = SessionPlan::decide(Some(&pinned), Tier::Complex, &config, |_| true);
//! assert_eq!(plan, SessionPlan::Pick { tier: Tier::Complex, reason: PickReason::Upgrade });
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::Arc;

use crate::config::{ModelEntry, TierConfig};
use crate::tier::Tier;

/// What a session is pinned to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pinned {
    /// The session's tier.
    pub tier: Tier,
    /// The provider of the pinned model.
    pub provider: Arc<str>,
    /// The pinned model.
    pub model: Arc<str>,
}

impl Pinned {
    /// A pin of `model` served by `provider`, in `tier`.
    pub fn new(tier: Tier, provider: impl Into<Arc<str>>, model: impl Into<Arc<str>>) -> Self {
        Pinned {
            tier,
            provider: provider.into(),
            model: model.into(),
        }
    }
}

/// Why a model is picked anew instead of kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PickReason {
    /// No session, or a session with no pin yet.
    New,
    /// The request asks for a higher tier than the session's.
    Upgrade,
    /// The pinned model left the config or is not eligible now.
    Repin,
}

/// The outcome of the session rule for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionPlan {
    /// Use the pinned model; `tier` is the session's tier.
    Keep {
        /// The effective tier (the session's).
        tier: Tier,
    },
    /// Choose a model in `tier`.
    Pick {
        /// The effective tier.
        tier: Tier,
        /// Why a new model is needed.
        reason: PickReason,
    },
}

impl SessionPlan {
    /// Applies the session rule. `eligible` says whether a model may take
    /// traffic now (not backing off, provider healthy).
    pub fn decide(
        pinned: Option<&Pinned>,
        requested: Tier,
        config: &TierConfig,
        eligible: impl FnOnce(&ModelEntry) -> bool,
    ) -> SessionPlan {
        let Some(pin) = pinned else {
            return SessionPlan::Pick {
                tier: requested,
                reason: PickReason::New,
            };
        };
        if requested > pin.tier {
            return SessionPlan::Pick {
                tier: requested,
                reason: PickReason::Upgrade,
            };
        }
        match config.tier(pin.tier).find(&pin.provider, &pin.model) {
            Some(m) if eligible(m) => SessionPlan::Keep { tier: pin.tier },
            _ => SessionPlan::Pick {
                tier: pin.tier,
                reason: PickReason::Repin,
            },
        }
    }

    /// The tier the request runs in.
    pub fn tier(&self) -> Tier {
        match *self {
            SessionPlan::Keep { tier } | SessionPlan::Pick { tier, .. } => tier,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RawTierConfig;

    fn config() -> TierConfig {
        let raw: RawTierConfig = serde_json::from_str(
            r#"{ "tiers": {
              "simple":   { "models": [ { "provider": "openai", "model": "s1", "relative_cost": 1 },
                                        { "provider": "openai", "model": "s2", "relative_cost": 2 } ] },
              "moderate": { "models": [ { "provider": "openai", "model": "m1", "relative_cost": 3 } ] },
              "complex":  { "models": [ { "provider": "openai", "model": "c1", "relative_cost": 9 } ] }
            } }"#,
        )
        .unwrap();
        TierConfig::validate(raw).unwrap()
    }

    #[test]
    fn no_pin_picks_in_the_requested_tier() {
        for t in Tier::ALL {
            let plan = SessionPlan::decide(None, t, &config(), |_| true);
            assert_eq!(
                plan,
                SessionPlan::Pick {
                    tier: t,
                    reason: PickReason::New
                }
            );
        }
    }

    #[test]
    fn higher_tier_upgrades() {
        let pin = Pinned::new(Tier::Simple, "openai", "s1");
        for t in [Tier::Moderate, Tier::Complex] {
            let plan = SessionPlan::decide(Some(&pin), t, &config(), |_| true);
            assert_eq!(
                plan,
                SessionPlan::Pick {
                    tier: t,
                    reason: PickReason::Upgrade
                }
            );
        }
    }

    #[test]
    fn equal_or_lower_tier_keeps_the_pinned_model_in_the_session_tier() {
        let pin = Pinned::new(Tier::Complex, "openai", "c1");
        for t in Tier::ALL {
            let plan = SessionPlan::decide(Some(&pin), t, &config(), |_| true);
            assert_eq!(
                plan,
                SessionPlan::Keep {
                    tier: Tier::Complex
                }
            );
        }
    }

    #[test]
    fn a_pinned_model_gone_from_the_config_is_repicked_in_the_session_tier() {
        let pin = Pinned::new(Tier::Moderate, "openai", "retired");
        let plan = SessionPlan::decide(Some(&pin), Tier::Simple, &config(), |_| true);
        assert_eq!(
            plan,
            SessionPlan::Pick {
                tier: Tier::Moderate,
                reason: PickReason::Repin
            }
        );
        // Same model name, other provider: not the pinned model.
        let pin = Pinned::new(Tier::Moderate, "azure", "m1");
        let plan = SessionPlan::decide(Some(&pin), Tier::Moderate, &config(), |_| true);
        assert_eq!(plan.tier(), Tier::Moderate);
        assert!(matches!(
            plan,
            SessionPlan::Pick {
                reason: PickReason::Repin,
                ..
            }
        ));
    }

    #[test]
    fn a_pinned_model_that_is_not_eligible_is_repicked_in_the_session_tier() {
        let pin = Pinned::new(Tier::Simple, "openai", "s1");
        let plan = SessionPlan::decide(Some(&pin), Tier::Simple, &config(), |m| m.model() != "s1");
        assert_eq!(
            plan,
            SessionPlan::Pick {
                tier: Tier::Simple,
                reason: PickReason::Repin
            }
        );
    }
}
