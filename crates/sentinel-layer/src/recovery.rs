//! Early recovery: an open model is probed in the background, so traffic
//! returns the moment it recovers instead of after its whole backoff.
//!
//! While a model's breaker is open, a background task sends it a minimal
//! request through a [`ModelProbeClient`] (the proxy sends one short user
//! message with `max_tokens: 1`) every `interval` (10 s by default): the
//! first one interval after the breaker opened, and never before a
//! `Retry-After` the provider gave has passed. A `2xx` closes the breaker
//! and resets its backoff at once (unless it moved on while the probe ran);
//! anything else changes nothing (the `result` label follows
//! [`Probe`]: `down` for no answer, 429, 502, 503
//! or 504; `inconclusive` for any other status, such as a model that
//! refuses the probe's `max_tokens`), and
//! real traffic keeps the seed's schedule (30 s, doubling, at most 5 min).
//! Only models of the current tier config are probed. The
//! probes are counted in `sentinel_model_probes_total`; what they cost is
//! the client's to count (the proxy counts their tokens apart).
//!
//! Like the health checks, the layer does no HTTP itself, and the task
//! belongs to state shared by every clone of the layer: it starts with the
//! layer (never from a request) and stops with the last clone.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use sentinel_layer::recovery::{ModelProbeClient, ModelProbes, ProbeFuture};
//!
//! struct Ping;
//! impl ModelProbeClient for Ping {
//!     fn probe(&self, _provider: &str, _model: &str) -> ProbeFuture {
//!         // A real client sends one short message with `max_tokens: 1`.
//!         Box::pin(async { Ok(http::StatusCode::OK) })
//!     }
//! }
//!
//! let probes = ModelProbes::new(Ping).interval(Duration::from_secs(5));
//! # let _ = probes;
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

use crate::background::LastConfig;
use crate::breaker::state::Breakers;
use crate::classify::Probe;
use crate::error::InvalidConfig;
use crate::metrics as m;
use crate::upstream::BoxError;

/// The future a [`ModelProbeClient`] returns: the probe's status.
pub type ProbeFuture = Pin<Box<dyn Future<Output = Result<StatusCode, BoxError>> + Send>>;

/// Sends a model probe.
pub trait ModelProbeClient: Send + Sync + 'static {
    /// Sends a minimal request to `model` of `provider` (one short user
    /// message, `max_tokens: 1`) and returns the response status.
    fn probe(&self, provider: &str, model: &str) -> ProbeFuture;
}

/// Background probes of open models. See the [module docs](self).
#[derive(Clone)]
pub struct ModelProbes {
    pub(crate) client: Arc<dyn ModelProbeClient>,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
}

impl fmt::Debug for ModelProbes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelProbes")
            .field("interval", &self.interval)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ModelProbes {
    /// Default time between probes of an open model: 10 s.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
    /// Default bound on one probe: 30 s.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

    /// Probes through `client`, every 10 s, each bounded by 30 s.
    pub fn new(client: impl ModelProbeClient) -> Self {
        ModelProbes {
            client: Arc::new(client),
            interval: Self::DEFAULT_INTERVAL,
            timeout: Self::DEFAULT_TIMEOUT,
        }
    }

    /// Time between probes of an open model (and from its opening to the
    /// first probe).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// The longest one probe may take.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), InvalidConfig> {
        if self.interval.is_zero() || self.timeout.is_zero() {
            return Err(InvalidConfig::new(
                "the model probe interval and timeout must be greater than zero",
            ));
        }
        Ok(())
    }
}

/// The probing task: wakes every second (or every interval, when shorter),
/// probes the models of the current config that are due, each in a task of
/// its own.
pub(crate) async fn run(breakers: Weak<Breakers>, last_config: LastConfig, probes: ModelProbes) {
    let tick = probes.interval.min(Duration::from_secs(1));
    loop {
        tokio::time::sleep(tick).await;
        let Some(breakers) = breakers.upgrade() else {
            return;
        };
        let config = last_config.load_full();
        // Models no longer in the config are not probed.
        let Some(config) = config else { continue };
        let in_config = |p: &str, m: &str| config.models().any(|(_, e)| e.is(p, m));
        for (provider, model, generation) in
            breakers.due_for_probe(Instant::now(), probes.interval, in_config)
        {
            let run = ProbeRun {
                breakers: breakers.clone(),
                provider,
                model,
                generation,
                up: false,
            };
            let client = probes.client.clone();
            let timeout = probes.timeout;
            tokio::spawn(async move {
                let mut run = run;
                let result =
                    tokio::time::timeout(timeout, client.probe(&run.provider, &run.model)).await;
                // Only an answer closes the breaker; a 4xx but 429 (a model
                // that refuses the probe's shape, say) says nothing.
                let probe = match &result {
                    Ok(Ok(status)) => Probe::of(Ok(*status)),
                    _ => Probe::of(Err(())),
                };
                run.up = probe == Probe::Up;
                let result_label = probe.as_str();
                ::metrics::counter!(m::MODEL_PROBES,
                    "provider" => run.provider.clone(),
                    "model" => run.model.clone(),
                    "result" => result_label)
                .increment(1);
            });
        }
    }
}

/// One background probe: reports its end to the breaker when dropped, so
/// the breaker's probing flag is cleared whatever happens to the task.
struct ProbeRun {
    breakers: Arc<crate::breaker::state::Breakers>,
    provider: Arc<str>,
    model: Arc<str>,
    generation: u64,
    up: bool,
}

impl Drop for ProbeRun {
    fn drop(&mut self) {
        self.breakers.probed(
            &self.provider,
            &self.model,
            self.generation,
            self.up,
            Instant::now(),
        );
    }
}
