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
//! What a store writes over the pin it holds follows the same rule,
//! written once in [`PinWrite::replaces`]: a session's first pin or an
//! upgrade replaces only a lower tier; a re-pin after a failover replaces
//! the same or a lower tier; nothing ever replaces a higher tier.
//! [`PinWrite::CASES`] lists every case, for the stores' tests (the Redis
//! store's script is checked against it on a real server).
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

/// How a store writes a new pin over the one a session holds. See
/// [`PinWrite::replaces`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PinWrite {
    /// A request's candidate (`pin_or_get`): pins a new session, or
    /// upgrades one to a strictly higher tier.
    Upgrade,
    /// The model a failover landed on (`repin`): replaces a pin of the same
    /// or a lower tier, never a higher one.
    Repin,
}

impl PinWrite {
    /// The upgrade-only rule: whether a pin of tier `new` replaces the pin
    /// held (`None`: no pin, or one that cannot be read).
    ///
    /// ```
    /// use sentinel_core::{PinWrite, Tier};
    ///
    /// assert!(PinWrite::Upgrade.replaces(None, Tier::Simple));
    /// assert!(PinWrite::Upgrade.replaces(Some(Tier::Simple), Tier::Moderate));
    /// assert!(!PinWrite::Upgrade.replaces(Some(Tier::Moderate), Tier::Moderate));
    /// assert!(PinWrite::Repin.replaces(Some(Tier::Moderate), Tier::Moderate));
    /// assert!(!PinWrite::Repin.replaces(Some(Tier::Complex), Tier::Moderate));
    /// ```
    pub fn replaces(self, held: Option<Tier>, new: Tier) -> bool {
        match (self, held) {
            (_, None) => true,
            (PinWrite::Upgrade, Some(held)) => new > held,
            (PinWrite::Repin, Some(held)) => new >= held,
        }
    }

    /// Every case of the rule, written out by hand: `(write, held, new,
    /// replaces)`. Both session stores are tested against it.
    pub const CASES: [(PinWrite, Option<Tier>, Tier, bool); 24] = {
        use PinWrite::{Repin, Upgrade};
        use Tier::{Complex as C, Moderate as M, Simple as S};
        [
            (Upgrade, None, S, true),
            (Upgrade, None, M, true),
            (Upgrade, None, C, true),
            (Upgrade, Some(S), S, false),
            (Upgrade, Some(S), M, true),
            (Upgrade, Some(S), C, true),
            (Upgrade, Some(M), S, false),
            (Upgrade, Some(M), M, false),
            (Upgrade, Some(M), C, true),
            (Upgrade, Some(C), S, false),
            (Upgrade, Some(C), M, false),
            (Upgrade, Some(C), C, false),
            (Repin, None, S, true),
            (Repin, None, M, true),
            (Repin, None, C, true),
            (Repin, Some(S), S, true),
            (Repin, Some(S), M, true),
            (Repin, Some(S), C, true),
            (Repin, Some(M), S, false),
            (Repin, Some(M), M, true),
            (Repin, Some(M), C, true),
            (Repin, Some(C), S, false),
            (Repin, Some(C), M, false),
            (Repin, Some(C), C, true),
        ]
    };
}

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
        if PinWrite::Upgrade.replaces(Some(pin.tier), requested) {
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

    #[test]
    fn the_pin_rule_follows_its_table_of_cases() {
        for (write, held, new, replaces) in PinWrite::CASES {
            assert_eq!(
                write.replaces(held, new),
                replaces,
                "{write:?} of {new:?} over {held:?}"
            );
        }
        // Every (write, held, new) appears once.
        let mut seen = std::collections::HashSet::new();
        for (write, held, new, _) in PinWrite::CASES {
            assert!(seen.insert((write, held, new)));
        }
    }

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
