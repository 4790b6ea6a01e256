//! Per-model and per-provider circuit breakers.
//!
//! A breaker counts consecutive failures. At the threshold it opens for the
//! core's backoff schedule (30 s, doubling, capped; `Retry-After` as a
//! floor). When the wait ends, one probe request is let through: success
//! closes it, failure reopens it for the next, doubled, wait. Requests only
//! read state and record outcomes; nothing blocks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use sentinel_core::{BackoffSchedule, ModelEntry};
use tokio::time::Instant;

use super::shared::SharedOpenState;
use crate::metrics as m;

/// How long a probe may stay unresolved before another may go (a probe whose
/// request vanished without an outcome releases itself on drop; this is
/// only a backstop).
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// What happened to one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The model answered (2xx, or a 4xx that is the client's fault).
    Success,
    /// The model failed (timeout, 429, 5xx).
    ModelFailure { retry_after: Option<Duration> },
    /// The provider could not be reached.
    ConnectFailure,
}

#[derive(Debug, Default)]
struct State {
    failures: u32,
    openings: u32,
    open_until: Option<Instant>,
    /// Opened by another replica through the shared store.
    remote: bool,
    probe_since: Option<Instant>,
}

impl State {
    fn refuses(&self, now: Instant) -> Option<Instant> {
        let until = self.open_until?;
        if now < until {
            return Some(until);
        }
        match self.probe_since {
            Some(since) if now < since + PROBE_TIMEOUT => Some(now + Duration::from_secs(1)),
            _ => None,
        }
    }
}

/// One breaker.
#[derive(Debug, Default)]
pub(crate) struct Breaker {
    state: Mutex<State>,
}

impl Breaker {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        // A poisoned lock only means a panic elsewhere while holding it; the
        // state is plain data and stays usable.
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut state)
    }
}

/// What the breaker says to an attempt.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Closed: go.
    Closed,
    /// The wait is over: go, as the one probe.
    Probe(ProbeGuard),
    /// Open until then.
    Refused { until: Instant },
}

/// Held by the one probe request of a half-open breaker; releases the probe
/// slot if dropped without an outcome.
#[derive(Debug)]
pub(crate) struct ProbeGuard {
    breaker: Option<Arc<Breaker>>,
}

impl ProbeGuard {
    pub(crate) fn resolve(mut self) {
        self.breaker = None;
    }
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        if let Some(b) = self.breaker.take() {
            b.with(|s| s.probe_since = None);
        }
    }
}

/// Breaker settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BreakerSettings {
    pub(crate) threshold: u32,
    pub(crate) schedule: BackoffSchedule,
}

type ModelMap = HashMap<Arc<str>, HashMap<Arc<str>, Arc<Breaker>>>;

/// Every breaker of a layer (shared by all its clones).
pub(crate) struct Breakers {
    settings: BreakerSettings,
    models: RwLock<ModelMap>,
    providers: RwLock<HashMap<Arc<str>, Arc<Breaker>>>,
    open_models: AtomicI64,
    shared: Option<SharedOpenState>,
}

impl Breakers {
    pub(crate) fn new(settings: BreakerSettings, shared: Option<SharedOpenState>) -> Self {
        Breakers {
            settings,
            models: RwLock::default(),
            providers: RwLock::default(),
            open_models: AtomicI64::new(0),
            shared,
        }
    }

    pub(crate) fn shared(&self) -> Option<&SharedOpenState> {
        self.shared.as_ref()
    }

    fn model(&self, provider: &str, model: &str) -> Option<Arc<Breaker>> {
        let map = self.models.read().unwrap_or_else(|p| p.into_inner());
        map.get(provider)?.get(model).cloned()
    }

    fn model_or_insert(&self, provider: &Arc<str>, model: &Arc<str>) -> Arc<Breaker> {
        if let Some(b) = self.model(provider, model) {
            return b;
        }
        let mut map = self.models.write().unwrap_or_else(|p| p.into_inner());
        map.entry(provider.clone())
            .or_default()
            .entry(model.clone())
            .or_default()
            .clone()
    }

    fn provider(&self, provider: &str) -> Option<Arc<Breaker>> {
        let map = self.providers.read().unwrap_or_else(|p| p.into_inner());
        map.get(provider).cloned()
    }

    fn provider_or_insert(&self, provider: &Arc<str>) -> Arc<Breaker> {
        if let Some(b) = self.provider(provider) {
            return b;
        }
        let mut map = self.providers.write().unwrap_or_else(|p| p.into_inner());
        map.entry(provider.clone()).or_default().clone()
    }

    /// When `m` may take traffic again, or `None` when it may now. A model
    /// is unavailable while its breaker or its provider's is open.
    pub(crate) fn blocked_until(&self, m: &ModelEntry, now: Instant) -> Option<Instant> {
        let model = self
            .model(m.provider(), m.model())
            .and_then(|b| b.with(|s| s.refuses(now)));
        let provider = self
            .provider(m.provider())
            .and_then(|b| b.with(|s| s.open_until.filter(|u| now < *u)));
        match (model, provider) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether `m` may take traffic now.
    pub(crate) fn available(&self, m: &ModelEntry, now: Instant) -> bool {
        self.blocked_until(m, now).is_none()
    }

    /// Admits an attempt on (`provider`, `model`), claiming the probe slot
    /// when the model's wait is over.
    pub(crate) fn admit(&self, provider: &Arc<str>, model: &Arc<str>, now: Instant) -> Admission {
        if let Some(until) = self
            .provider(provider)
            .and_then(|b| b.with(|s| s.open_until.filter(|u| now < *u)))
        {
            return Admission::Refused { until };
        }
        let Some(breaker) = self.model(provider, model) else {
            return Admission::Closed;
        };
        breaker.with(|s| {
            if s.open_until.is_none() {
                return Admission::Closed;
            }
            if let Some(until) = s.refuses(now) {
                return Admission::Refused { until };
            }
            s.probe_since = Some(now);
            Admission::Probe(ProbeGuard {
                breaker: Some(breaker.clone()),
            })
        })
    }

    /// Records the outcome of an attempt on (`provider`, `model`).
    pub(crate) fn record(
        &self,
        provider: &Arc<str>,
        model: &Arc<str>,
        outcome: Outcome,
        now: Instant,
    ) {
        match outcome {
            Outcome::Success => {
                if let Some(b) = self.model(provider, model) {
                    self.close(&b, "model", provider, Some(model));
                }
                if let Some(b) = self.provider(provider) {
                    self.close(&b, "provider", provider, None);
                }
            }
            Outcome::ModelFailure { retry_after } => {
                let b = self.model_or_insert(provider, model);
                self.fail(&b, "model", provider, Some(model), retry_after, now);
            }
            Outcome::ConnectFailure => {
                let b = self.provider_or_insert(provider);
                self.fail(&b, "provider", provider, None, None, now);
            }
        }
    }

    /// Records an active health check of `provider`: a success resets the
    /// provider's breaker only (never a model's), a failure feeds it.
    pub(crate) fn health(&self, provider: &Arc<str>, up: bool, now: Instant) {
        if up {
            if let Some(b) = self.provider(provider) {
                self.close(&b, "provider", provider, None);
            }
        } else {
            let b = self.provider_or_insert(provider);
            self.fail(&b, "provider", provider, None, None, now);
        }
    }

    /// Marks a model open until `until` because another replica opened it.
    pub(crate) fn open_remotely(&self, provider: &Arc<str>, model: &Arc<str>, until: Instant) {
        let b = self.model_or_insert(provider, model);
        let opened = b.with(|s| {
            let was_open = s.open_until.is_some();
            if s.open_until.is_none_or(|u| u < until) {
                s.open_until = Some(until);
                if !was_open {
                    s.remote = true;
                }
            }
            !was_open
        });
        if opened {
            self.transition("model", provider, Some(model), "open");
        }
    }

    /// Clears a model that another replica had opened and has closed since.
    pub(crate) fn close_remote(&self, provider: &Arc<str>, model: &Arc<str>) {
        if let Some(b) = self.model(provider, model) {
            let closed = b.with(|s| {
                if s.remote && s.open_until.is_some() {
                    *s = State::default();
                    true
                } else {
                    false
                }
            });
            if closed {
                self.transition("model", provider, Some(model), "closed");
            }
        }
    }

    fn close(
        &self,
        b: &Breaker,
        scope: &'static str,
        provider: &Arc<str>,
        model: Option<&Arc<str>>,
    ) {
        let was_open = b.with(|s| {
            let was_open = s.open_until.is_some();
            *s = State::default();
            was_open
        });
        if was_open {
            self.transition(scope, provider, model, "closed");
            if let (Some(shared), Some(model)) = (&self.shared, model) {
                shared.publish_closed(provider, model);
            }
        }
    }

    fn fail(
        &self,
        b: &Breaker,
        scope: &'static str,
        provider: &Arc<str>,
        model: Option<&Arc<str>>,
        retry_after: Option<Duration>,
        now: Instant,
    ) {
        let schedule = self.settings.schedule;
        let threshold = self.settings.threshold;
        let opened = b.with(|s| {
            let was_open = s.open_until.is_some();
            if was_open {
                // The probe (or a request that slipped in) failed: wait longer.
                if s.open_until.is_some_and(|u| now < u) && s.probe_since.is_none() {
                    return None;
                }
                s.openings = s.openings.saturating_add(1);
            } else {
                s.failures = s.failures.saturating_add(1);
                if s.failures < threshold {
                    return None;
                }
                s.openings = 1;
            }
            let wait = schedule.wait(s.openings, retry_after);
            s.open_until = Some(now + wait);
            s.remote = false;
            s.probe_since = None;
            Some((wait, !was_open))
        });
        if let Some((wait, newly)) = opened {
            if newly {
                self.transition(scope, provider, model, "open");
            }
            tracing::warn!(scope, provider = %provider, model = model.map(|m| &**m), wait_secs = wait.as_secs_f64(), "circuit open");
            if let (Some(shared), Some(model)) = (&self.shared, model) {
                shared.publish_open(provider, model, wait);
            }
        }
    }

    fn transition(
        &self,
        scope: &'static str,
        provider: &Arc<str>,
        model: Option<&Arc<str>>,
        to: &'static str,
    ) {
        let name = match model {
            Some(m) => format!("{provider}/{m}"),
            None => provider.to_string(),
        };
        ::metrics::counter!(m::BREAKER_TRANSITIONS, "scope" => scope, "name" => name, "to" => to)
            .increment(1);
        if scope == "model" {
            let delta = if to == "open" { 1 } else { -1 };
            let open = self.open_models.fetch_add(delta, Ordering::Relaxed) + delta;
            ::metrics::gauge!(m::MODELS_OPEN).set(open.max(0) as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breakers(threshold: u32) -> Breakers {
        Breakers::new(
            BreakerSettings {
                threshold,
                schedule: BackoffSchedule::default(),
            },
            None,
        )
    }

    fn names() -> (Arc<str>, Arc<str>) {
        (Arc::from("openai"), Arc::from("gpt-4o"))
    }

    const FAIL: Outcome = Outcome::ModelFailure { retry_after: None };

    fn is_open(b: &Breakers, now: Instant) -> bool {
        let (p, m) = names();
        matches!(b.admit(&p, &m, now), Admission::Refused { .. })
    }

    #[test]
    fn opens_after_the_threshold_of_consecutive_failures() {
        let b = breakers(3);
        let (p, m) = names();
        let now = Instant::now();
        b.record(&p, &m, FAIL, now);
        b.record(&p, &m, FAIL, now);
        assert!(!is_open(&b, now));
        b.record(&p, &m, Outcome::Success, now);
        b.record(&p, &m, FAIL, now);
        b.record(&p, &m, FAIL, now);
        assert!(!is_open(&b, now), "a success resets the count");
        b.record(&p, &m, FAIL, now);
        assert!(is_open(&b, now));
        assert!(is_open(&b, now + Duration::from_secs(29)));
    }

    #[test]
    fn one_probe_after_the_wait_then_doubling_or_reset() {
        let b = breakers(1);
        let (p, m) = names();
        let t0 = Instant::now();
        b.record(&p, &m, FAIL, t0);
        let t1 = t0 + Duration::from_secs(30);
        let Admission::Probe(guard) = b.admit(&p, &m, t1) else {
            panic!("expected the probe");
        };
        assert!(is_open(&b, t1), "only one probe at a time");
        b.record(&p, &m, FAIL, t1);
        guard.resolve();
        // Reopened for 60 s.
        assert!(is_open(&b, t1 + Duration::from_secs(59)));
        let t2 = t1 + Duration::from_secs(60);
        let Admission::Probe(guard) = b.admit(&p, &m, t2) else {
            panic!("expected the probe");
        };
        b.record(&p, &m, Outcome::Success, t2);
        guard.resolve();
        assert!(matches!(b.admit(&p, &m, t2), Admission::Closed));
    }

    #[test]
    fn a_dropped_probe_frees_the_slot() {
        let b = breakers(1);
        let (p, m) = names();
        let t0 = Instant::now();
        b.record(&p, &m, FAIL, t0);
        let t1 = t0 + Duration::from_secs(30);
        let probe = b.admit(&p, &m, t1);
        assert!(matches!(probe, Admission::Probe(_)));
        drop(probe);
        assert!(matches!(b.admit(&p, &m, t1), Admission::Probe(_)));
    }

    #[test]
    fn retry_after_is_a_floor() {
        let b = breakers(1);
        let (p, m) = names();
        let t0 = Instant::now();
        b.record(
            &p,
            &m,
            Outcome::ModelFailure {
                retry_after: Some(Duration::from_secs(90)),
            },
            t0,
        );
        assert!(is_open(&b, t0 + Duration::from_secs(89)));
        assert!(!is_open(&b, t0 + Duration::from_secs(90)));
    }

    #[test]
    fn provider_failures_block_its_models_and_health_success_resets_only_the_provider() {
        let b = breakers(1);
        let (p, m) = names();
        let t0 = Instant::now();
        b.record(&p, &m, FAIL, t0);
        b.record(&p, &m, Outcome::ConnectFailure, t0);
        let raw = sentinel_core::RawTierConfig {
            version: None,
            tiers: sentinel_core::RawTiers {
                simple: Some(sentinel_core::RawTier {
                    models: vec![sentinel_core::RawModel {
                        provider: "openai".into(),
                        model: "other".into(),
                        relative_cost: 1,
                        pricing: None,
                    }],
                }),
                ..Default::default()
            },
        };
        let config = sentinel_core::TierConfig::validate(raw).unwrap();
        let other = &config.tier(sentinel_core::Tier::Simple).models()[0];
        assert!(!b.available(other, t0), "the provider is open");
        b.health(&p, true, t0);
        assert!(b.available(other, t0));
        assert!(is_open(&b, t0), "the model's own breaker stays open");
    }
}
