//! Choosing a model: the core's weighted choice, minus the models whose
//! breaker (or provider) is open.

use std::sync::Arc;
use std::time::Duration;

use sentinel_core::{ModelEntry, TierModels};
use tokio::time::Instant;

use crate::breaker::state::{Breakers, Ticket};
use crate::rng::Randomness;

/// Why no model could be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoModel {
    /// The tier has no model (or none left to try).
    Empty,
    /// Every candidate is backing off; the soonest may be tried after `wait`.
    BackingOff { wait: Duration },
}

pub(crate) struct Selector {
    pub(crate) breakers: Arc<Breakers>,
    rng: Randomness,
}

impl Selector {
    pub(crate) fn new(breakers: Arc<Breakers>, rng: Randomness) -> Self {
        Selector { breakers, rng }
    }

    /// A weighted choice among the models of `models` that `exclude` keeps
    /// and whose breakers let it through, admitted in the same step: the
    /// model comes with its [`Ticket`] (a probe slot claimed when its wait
    /// is over). A model lost to another request's probe between the look
    /// and the claim is left out and the choice made again, so a request
    /// never spends an attempt on a refusal.
    pub(crate) fn choose<'c>(
        &self,
        models: &'c TierModels,
        exclude: impl Fn(&ModelEntry) -> bool,
        now: Instant,
    ) -> Result<(&'c ModelEntry, Ticket), NoModel> {
        let mut lost: Vec<*const ModelEntry> = Vec::new();
        loop {
            let pick = models.choose(
                |m| {
                    exclude(m)
                        || lost.iter().any(|l| std::ptr::eq(*l, m))
                        || !self.breakers.available(m, now)
                },
                self.rng.next(),
            );
            let Some(m) = pick else { break };
            match self.admit(m, now) {
                Ok(ticket) => return Ok((m, ticket)),
                Err(_) => lost.push(m),
            }
        }
        models
            .models()
            .iter()
            .filter(|m| !exclude(m))
            .filter_map(|m| self.breakers.blocked_until(m, now))
            .min()
            .map_or(Err(NoModel::Empty), |until| {
                Err(NoModel::BackingOff {
                    wait: until.saturating_duration_since(now),
                })
            })
    }

    /// The model with the largest context window among those `exclude`
    /// keeps and whose breakers let it through, admitted. When the tried
    /// model's window is known (`tried_window`), only a larger one will do;
    /// when it is not and no model has a window, the weighted choice.
    pub(crate) fn choose_largest_window<'c>(
        &self,
        models: &'c TierModels,
        exclude: impl Fn(&ModelEntry) -> bool,
        tried_window: Option<u64>,
        now: Instant,
    ) -> Result<(&'c ModelEntry, Ticket), NoModel> {
        let mut candidates: Vec<&ModelEntry> = models
            .models()
            .iter()
            .filter(|m| {
                // Larger than the window the prompt did not fit, when known.
                m.context_window()
                    .is_some_and(|w| tried_window.is_none_or(|t| w > t))
                    && !exclude(m)
                    && self.available(m, now)
            })
            .collect();
        // Largest first; the cheaper model on a tie.
        candidates.sort_by_key(|m| (std::cmp::Reverse(m.context_window()), m.relative_cost()));
        for m in candidates {
            if let Ok(ticket) = self.admit(m, now) {
                return Ok((m, ticket));
            }
        }
        if tried_window.is_some() {
            // No model known to be larger: another try would fail the same way.
            return Err(NoModel::Empty);
        }
        self.choose(models, exclude, now)
    }

    /// Admits an attempt on `m` now, or says until when it is refused.
    pub(crate) fn admit(&self, m: &ModelEntry, now: Instant) -> Result<Ticket, Instant> {
        self.breakers.admit(m.provider_arc(), m.model_arc(), now)
    }

    pub(crate) fn available(&self, m: &ModelEntry, now: Instant) -> bool {
        self.breakers.available(m, now)
    }
}
