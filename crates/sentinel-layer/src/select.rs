//! Choosing a model: the core's weighted choice, minus the models whose
//! breaker (or provider) is open.

use std::sync::Arc;
use std::time::Duration;

use sentinel_core::{ModelEntry, TierModels};
use tokio::time::Instant;

use crate::breaker::state::Breakers;
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
    /// and whose breakers are closed.
    pub(crate) fn choose<'c>(
        &self,
        models: &'c TierModels,
        exclude: impl Fn(&ModelEntry) -> bool,
        now: Instant,
    ) -> Result<&'c ModelEntry, NoModel> {
        let pick = models.choose(
            |m| exclude(m) || !self.breakers.available(m, now),
            self.rng.next(),
        );
        if let Some(m) = pick {
            return Ok(m);
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

    pub(crate) fn available(&self, m: &ModelEntry, now: Instant) -> bool {
        self.breakers.available(m, now)
    }
}
