//! Per-model and per-provider circuit breakers.
//!
//! A breaker counts consecutive failures. At the threshold it opens for the
//! core's backoff schedule (30 s, doubling, capped; `Retry-After` as a
//! floor). When the wait ends, one probe request is let through: success
//! closes it, failure reopens it for the next, doubled, wait. Model and
//! provider breakers work alike. Requests only read state and record
//! outcomes; nothing blocks.
//!
//! An attempt is admitted with a [`Ticket`]: the generation of each breaker
//! it passed (a generation ends at every transition) and, when it is a
//! probe, the probe slot. Only failures of the breaker's current generation
//! move it, so requests admitted before a breaker opened (stragglers) cannot
//! double its wait, and the slot is freed whatever the probe's outcome (or
//! when the ticket is dropped without one).

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

impl Outcome {
    /// What a response head means for the breakers: a failure (with the
    /// provider's `Retry-After`) by the [`classify`](crate::classify) rule,
    /// or an answer so far.
    pub(crate) fn of_head(status: http::StatusCode, headers: &http::HeaderMap) -> Self {
        if crate::classify::is_failure(status, headers) {
            Outcome::ModelFailure {
                retry_after: crate::classify::retry_after(headers),
            }
        } else {
            Outcome::Success
        }
    }

    /// What a failure before the head means for the breakers: the
    /// provider's when it could not be reached, else the model's.
    pub(crate) fn of_error(error: &crate::UpstreamError) -> Self {
        match error.kind() {
            crate::UpstreamErrorKind::Connect => Outcome::ConnectFailure,
            _ => Outcome::ModelFailure { retry_after: None },
        }
    }
}

#[derive(Debug, Default)]
struct State {
    failures: u32,
    openings: u32,
    open_until: Option<Instant>,
    /// Opened by another replica through the shared store.
    remote: bool,
    probe_since: Option<Instant>,
    /// Advances at every open, reopen and close.
    generation: u64,
    /// When it opened (not when it reopened): the background probes count
    /// from here.
    opened_at: Option<Instant>,
    /// No background probe before this (the provider's `Retry-After`).
    not_before: Option<Instant>,
    /// The last probe (in the background, or a request's half-open
    /// probe) started then; background probes one at a time.
    background_probe: Option<Instant>,
    background_probing: bool,
}

impl State {
    /// Back to closed, in a new generation.
    fn reset(&mut self) {
        *self = State {
            generation: self.generation + 1,
            ..State::default()
        };
    }
}

/// What a breaker says now ([`crate::state::BreakerStatus`] with its deadline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BreakerView {
    /// Taking traffic.
    Closed,
    /// Backing off until then.
    Open(Instant),
    /// Its wait is over: the next attempt (or background probe) decides.
    HalfOpen,
}

impl State {
    fn view(&self, now: Instant) -> BreakerView {
        match self.open_until {
            None => BreakerView::Closed,
            Some(until) if now < until => BreakerView::Open(until),
            Some(_) => BreakerView::HalfOpen,
        }
    }

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

/// One breaker's word on an attempt: the generation it was admitted in,
/// and the probe slot when it is the probe.
#[derive(Debug, Default)]
pub(crate) struct Pass {
    generation: u64,
    /// Held for its `Drop`, which frees the probe slot.
    _probe: Option<ProbeGuard>,
}

/// An admitted attempt: its pass of the provider's and of the model's
/// breaker. Dropping it frees any probe slot it holds.
#[derive(Debug, Default)]
pub(crate) struct Ticket {
    provider: Pass,
    model: Pass,
}

impl Ticket {
    /// Whether the attempt is a probe of either breaker.
    pub(crate) fn is_probe(&self) -> bool {
        self.provider._probe.is_some() || self.model._probe.is_some()
    }
}

/// Held by the one probe request of a half-open breaker; frees the probe
/// slot when dropped, whatever became of the probe.
#[derive(Debug)]
pub(crate) struct ProbeGuard {
    breaker: Arc<Breaker>,
    since: Instant,
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        self.breaker.with(|s| {
            if s.probe_since == Some(self.since) {
                s.probe_since = None;
            }
        });
    }
}

impl Breaker {
    /// Admits an attempt now: closed, or open with the wait over and the
    /// probe slot free (then it is the probe). `Err(until)`: refused.
    fn pass(self: &Arc<Self>, now: Instant) -> Result<Pass, Instant> {
        self.with(|s| {
            if s.open_until.is_none() {
                return Ok(Pass {
                    generation: s.generation,
                    _probe: None,
                });
            }
            if let Some(until) = s.refuses(now) {
                return Err(until);
            }
            s.probe_since = Some(now);
            // A request probing the model is a probe too: the background
            // probes keep their interval from it.
            s.background_probe = Some(now);
            Ok(Pass {
                generation: s.generation,
                _probe: Some(ProbeGuard {
                    breaker: self.clone(),
                    since: now,
                }),
            })
        })
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
    /// The last health check of each provider: up or not.
    health: RwLock<HashMap<Arc<str>, bool>>,
}

impl Breakers {
    pub(crate) fn new(settings: BreakerSettings, shared: Option<SharedOpenState>) -> Self {
        Breakers {
            settings,
            models: RwLock::default(),
            providers: RwLock::default(),
            open_models: AtomicI64::new(0),
            shared,
            health: RwLock::default(),
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
    /// is unavailable while its breaker or its provider's refuses.
    pub(crate) fn blocked_until(&self, m: &ModelEntry, now: Instant) -> Option<Instant> {
        let model = self
            .model(m.provider(), m.model())
            .and_then(|b| b.with(|s| s.refuses(now)));
        let provider = self
            .provider(m.provider())
            .and_then(|b| b.with(|s| s.refuses(now)));
        match (model, provider) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// What the breaker of (`provider`, `model`) says now; closed when it
    /// never saw an attempt.
    pub(crate) fn model_view(&self, provider: &str, model: &str, now: Instant) -> BreakerView {
        self.model(provider, model)
            .map_or(BreakerView::Closed, |b| b.with(|s| s.view(now)))
    }

    /// The last health check of `provider`: `Some(up)`, or `None` before
    /// the first (or without health checks).
    pub(crate) fn last_health(&self, provider: &str) -> Option<bool> {
        let map = self.health.read().unwrap_or_else(|p| p.into_inner());
        map.get(provider).copied()
    }

    /// What `provider`'s breaker says now.
    pub(crate) fn provider_view(&self, provider: &str, now: Instant) -> BreakerView {
        self.provider(provider)
            .map_or(BreakerView::Closed, |b| b.with(|s| s.view(now)))
    }

    /// Whether `m` may take traffic now.
    pub(crate) fn available(&self, m: &ModelEntry, now: Instant) -> bool {
        self.blocked_until(m, now).is_none()
    }

    /// Admits an attempt on (`provider`, `model`) in one step: both breakers
    /// must let it through, and it claims the probe slot of any whose wait
    /// is over. `Err(until)`: refused until then (nothing claimed).
    pub(crate) fn admit(
        &self,
        provider: &Arc<str>,
        model: &Arc<str>,
        now: Instant,
    ) -> Result<Ticket, Instant> {
        let provider_pass = match self.provider(provider) {
            Some(b) => b.pass(now)?,
            None => Pass::default(),
        };
        // A refusal here drops the provider's pass, and with it any probe slot.
        let model_pass = match self.model(provider, model) {
            Some(b) => b.pass(now)?,
            None => Pass::default(),
        };
        Ok(Ticket {
            provider: provider_pass,
            model: model_pass,
        })
    }

    /// Records the outcome of the attempt that `ticket` admitted. A failure
    /// moves a breaker only in the generation the attempt was admitted in;
    /// a success closes both. The ticket is spent: its probe slots are free.
    pub(crate) fn record(
        &self,
        provider: &Arc<str>,
        model: &Arc<str>,
        outcome: Outcome,
        ticket: Ticket,
        now: Instant,
    ) {
        match outcome {
            Outcome::Success => {
                // Like a failure, a success speaks for the generation it was
                // admitted in: a long stream admitted before an opening does
                // not close it.
                if let Some(b) = self.model(provider, model)
                    && b.with(|s| s.generation) == ticket.model.generation
                {
                    self.close(&b, "model", provider, Some(model));
                }
                if let Some(b) = self.provider(provider)
                    && b.with(|s| s.generation) == ticket.provider.generation
                {
                    self.close(&b, "provider", provider, None);
                }
            }
            Outcome::ModelFailure { retry_after } => {
                let b = self.model_or_insert(provider, model);
                let generation = Some(ticket.model.generation);
                self.fail(
                    &b,
                    "model",
                    provider,
                    Some(model),
                    retry_after,
                    generation,
                    now,
                );
            }
            Outcome::ConnectFailure => {
                let b = self.provider_or_insert(provider);
                let generation = Some(ticket.provider.generation);
                self.fail(&b, "provider", provider, None, None, generation, now);
            }
        }
        drop(ticket);
    }

    /// The open models due for a background probe at `now`, among those
    /// `keep` names (the current config's): open at least `interval`, not
    /// probed in the last `interval` (by a background probe or a request's
    /// half-open probe), past any `Retry-After`, and not being probed. Each is marked as being probed; with each comes the
    /// generation its probe speaks for.
    pub(crate) fn due_for_probe(
        &self,
        now: Instant,
        interval: Duration,
        keep: impl Fn(&str, &str) -> bool,
    ) -> Vec<(Arc<str>, Arc<str>, u64)> {
        let map = self.models.read().unwrap_or_else(|p| p.into_inner());
        let mut due = Vec::new();
        for (provider, models) in map.iter() {
            for (model, breaker) in models {
                if !keep(provider, model) {
                    continue;
                }
                let claimed = breaker.with(|s| {
                    let ready = s.open_until.is_some()
                        && !s.background_probing
                        && s.opened_at.is_some_and(|at| now >= at + interval)
                        && s.background_probe.is_none_or(|at| now >= at + interval)
                        && s.not_before.is_none_or(|at| now >= at);
                    if ready {
                        s.background_probing = true;
                        s.background_probe = Some(now);
                    }
                    ready.then_some(s.generation)
                });
                if let Some(generation) = claimed {
                    due.push((provider.clone(), model.clone(), generation));
                }
            }
        }
        due
    }

    /// A background probe of (`provider`, `model`), started in
    /// `generation`, ended: `up` closes the model's breaker and resets its
    /// backoff, unless it moved on meanwhile; otherwise nothing changes.
    pub(crate) fn probed(
        &self,
        provider: &Arc<str>,
        model: &Arc<str>,
        generation: u64,
        up: bool,
        now: Instant,
    ) {
        let Some(b) = self.model(provider, model) else {
            return;
        };
        let current = b.with(|s| {
            s.background_probing = false;
            // Keep the spacing from the probe's end, not its start.
            s.background_probe = Some(now);
            s.generation == generation
        });
        if up && current {
            self.close(&b, "model", provider, Some(model));
        }
    }

    /// Records an active health check of `provider`: a success resets the
    /// provider's breaker only (never a model's), a failure feeds it.
    pub(crate) fn health(&self, provider: &Arc<str>, up: bool, now: Instant) {
        self.health
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(provider.clone(), up);
        if up {
            if let Some(b) = self.provider(provider) {
                self.close(&b, "provider", provider, None);
            }
        } else {
            let b = self.provider_or_insert(provider);
            self.fail(&b, "provider", provider, None, None, None, now);
        }
    }

    /// Reads the shared open state of `models` (when the breakers are
    /// shared across replicas) and applies it: a model another replica
    /// opened is open here until then; one it closed since is closed.
    pub(crate) async fn sync_shared(&self, models: &[(Arc<str>, Arc<str>)]) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let Some(open) = shared.read_open(models).await else {
            return;
        };
        for ((provider, model), until) in models.iter().zip(open) {
            match until {
                Some(until) => self.open_remotely(provider, model, until),
                None => self.close_remote(provider, model),
            }
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
                    s.generation += 1;
                    s.opened_at = Some(Instant::now());
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
                    s.reset();
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
            if was_open {
                s.reset();
            } else {
                s.failures = 0;
            }
            was_open
        });
        if was_open {
            self.transition(scope, provider, model, "closed");
            if let (Some(shared), Some(model)) = (&self.shared, model) {
                shared.publish_closed(provider, model);
            }
        }
    }

    /// A failure: counted toward the threshold while closed; while open,
    /// only the probe's failure (the one attempt admitted in this
    /// generation) reopens it for a longer wait. `generation` is the
    /// attempt's (`None`: not a request, an active health check, which
    /// always counts).
    #[allow(clippy::too_many_arguments)]
    fn fail(
        &self,
        b: &Breaker,
        scope: &'static str,
        provider: &Arc<str>,
        model: Option<&Arc<str>>,
        retry_after: Option<Duration>,
        generation: Option<u64>,
        now: Instant,
    ) {
        let schedule = self.settings.schedule;
        let threshold = self.settings.threshold;
        let opened = b.with(|s| {
            if generation.is_some_and(|g| g != s.generation) {
                // Admitted before the last transition: not about this state.
                return None;
            }
            let was_open = s.open_until.is_some();
            if was_open {
                if generation.is_none() && s.open_until.is_some_and(|u| now < u) {
                    // A health check while the wait runs: nothing new.
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
            s.generation += 1;
            if !was_open {
                s.opened_at = Some(now);
            }
            if let Some(floor) = retry_after {
                s.not_before = now.checked_add(floor);
            }
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

    /// Admits and records one attempt ending in `outcome`.
    fn attempt(b: &Breakers, outcome: Outcome, now: Instant) {
        let (p, m) = names();
        let ticket = b.admit(&p, &m, now).expect("admitted");
        b.record(&p, &m, outcome, ticket, now);
    }

    fn is_open(b: &Breakers, now: Instant) -> bool {
        let (p, m) = names();
        b.admit(&p, &m, now).is_err()
    }

    #[test]
    fn opens_after_the_threshold_of_consecutive_failures() {
        let b = breakers(3);
        let now = Instant::now();
        attempt(&b, FAIL, now);
        attempt(&b, FAIL, now);
        assert!(!is_open(&b, now));
        attempt(&b, Outcome::Success, now);
        attempt(&b, FAIL, now);
        attempt(&b, FAIL, now);
        assert!(!is_open(&b, now), "a success resets the count");
        attempt(&b, FAIL, now);
        assert!(is_open(&b, now));
        assert!(is_open(&b, now + Duration::from_secs(29)));
    }

    #[test]
    fn one_probe_after_the_wait_then_doubling_or_reset() {
        let b = breakers(1);
        let (p, m) = names();
        let t0 = Instant::now();
        attempt(&b, FAIL, t0);
        let t1 = t0 + Duration::from_secs(30);
        let probe = b.admit(&p, &m, t1).expect("the probe");
        assert!(probe.is_probe());
        assert!(is_open(&b, t1), "only one probe at a time");
        b.record(&p, &m, FAIL, probe, t1);
        // Reopened for 60 s.
        assert!(is_open(&b, t1 + Duration::from_secs(59)));
        let t2 = t1 + Duration::from_secs(60);
        let probe = b.admit(&p, &m, t2).expect("the probe");
        b.record(&p, &m, Outcome::Success, probe, t2);
        let ticket = b.admit(&p, &m, t2).expect("closed");
        assert!(!ticket.is_probe());
    }

    #[test]
    fn background_probes_keep_their_interval_from_a_requests_probe() {
        let b = breakers(1);
        let (p, m) = names();
        let every = Duration::from_secs(10);
        let due = |at: Instant| b.due_for_probe(at, every, |_, _| true);
        let t0 = Instant::now();
        attempt(&b, FAIL, t0);
        // Background probes at 10 s and 20 s (each one's end noted).
        for at in [10, 20] {
            let at = t0 + Duration::from_secs(at);
            let claimed = due(at);
            assert_eq!(claimed.len(), 1, "due at {at:?}");
            b.probed(&p, &m, claimed[0].2, false, at);
        }
        // At 30 s the backoff ends and a request probes the model and fails:
        // the next background probe waits an interval from it, not from 20 s.
        let t30 = t0 + Duration::from_secs(30) + Duration::from_millis(800);
        let probe = b.admit(&p, &m, t30).expect("the request's probe");
        b.record(&p, &m, FAIL, probe, t30);
        assert!(
            due(t0 + Duration::from_secs(31)).is_empty(),
            "no probe 0.2 s after the request's"
        );
        assert!(due(t30 + every - Duration::from_millis(1)).is_empty());
        assert_eq!(due(t30 + every).len(), 1);
    }

    #[test]
    fn a_dropped_probe_frees_the_slot() {
        let b = breakers(1);
        let (p, m) = names();
        let t0 = Instant::now();
        attempt(&b, FAIL, t0);
        let t1 = t0 + Duration::from_secs(30);
        let probe = b.admit(&p, &m, t1).expect("the probe");
        drop(probe);
        assert!(b.admit(&p, &m, t1).expect("the probe again").is_probe());
    }

    #[test]
    fn a_probe_that_fails_to_connect_frees_the_models_slot() {
        // Two failures open a breaker: one connect failure leaves the
        // provider closed, so the model's own slot is what is checked.
        let b = breakers(2);
        let (p, m) = names();
        let t0 = Instant::now();
        attempt(&b, FAIL, t0);
        attempt(&b, FAIL, t0);
        let t1 = t0 + Duration::from_secs(30);
        let probe = b.admit(&p, &m, t1).expect("the probe");
        // A connect failure is the provider's: the model's wait does not
        // grow, and its slot is free for the next attempt.
        b.record(&p, &m, Outcome::ConnectFailure, probe, t1);
        let next = b.admit(&p, &m, t1).expect("the model's probe slot is free");
        assert!(next.is_probe());
    }

    #[test]
    fn stragglers_admitted_before_the_breaker_opened_do_not_move_it() {
        let b = breakers(1);
        let (p, m) = names();
        let t0 = Instant::now();
        let stragglers: Vec<Ticket> = (0..5).map(|_| b.admit(&p, &m, t0).unwrap()).collect();
        attempt(&b, FAIL, t0);
        assert!(is_open(&b, t0));
        for ticket in stragglers {
            b.record(&p, &m, FAIL, ticket, t0 + Duration::from_secs(1));
        }
        // Still the first wait (30 s), not doubled five times toward the cap.
        assert!(is_open(&b, t0 + Duration::from_secs(29)));
        let probe = b.admit(&p, &m, t0 + Duration::from_secs(30));
        assert!(probe.is_ok_and(|t| t.is_probe()));
    }

    #[test]
    fn provider_breakers_let_one_probe_through_after_their_wait() {
        let b = breakers(1);
        let (p, m) = names();
        let other: Arc<str> = Arc::from("gpt-4o-mini");
        let t0 = Instant::now();
        let ticket = b.admit(&p, &m, t0).unwrap();
        b.record(&p, &m, Outcome::ConnectFailure, ticket, t0);
        assert!(b.admit(&p, &other, t0).is_err(), "the provider is open");
        let t1 = t0 + Duration::from_secs(30);
        let probe = b.admit(&p, &other, t1).expect("the provider's probe");
        assert!(probe.is_probe());
        assert!(
            b.admit(&p, &m, t1).is_err(),
            "one probe per provider, whatever the model"
        );
        b.record(&p, &other, Outcome::ConnectFailure, probe, t1);
        assert!(
            b.admit(&p, &m, t1 + Duration::from_secs(59)).is_err(),
            "the provider's wait doubled"
        );
        let probe = b.admit(&p, &m, t1 + Duration::from_secs(60)).unwrap();
        b.record(
            &p,
            &m,
            Outcome::Success,
            probe,
            t1 + Duration::from_secs(60),
        );
        assert!(
            !b.admit(&p, &other, t1 + Duration::from_secs(60))
                .unwrap()
                .is_probe()
        );
    }

    #[test]
    fn retry_after_is_a_floor() {
        let b = breakers(1);
        let t0 = Instant::now();
        attempt(
            &b,
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
        let (p, _) = names();
        let t0 = Instant::now();
        attempt(&b, FAIL, t0);
        b.health(&p, false, t0);
        let raw = sentinel_core::RawTierConfig {
            version: None,
            tiers: sentinel_core::RawTiers {
                simple: Some(sentinel_core::RawTier {
                    models: vec![sentinel_core::RawModel {
                        provider: "openai".into(),
                        model: "other".into(),
                        relative_cost: 1,
                        pricing: None,
                        context_window: None,
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
