//! Active health checks of providers.
//!
//! One background task per provider sends `GET {base_url}{path}` (path
//! `/models` by default: it costs no tokens) with the provider's key: first
//! at start-up, then every `interval` (15 s by default), each bounded by
//! `timeout` (2 s). A 2xx marks the provider up (the body is not read) and
//! resets the provider's breaker only, never a model's. No answer in time,
//! no connection, 429, 502, 503 or 504 feed the provider's breaker, which
//! excludes all its models while open. Any other status (a provider without
//! the probe path answers 404 or 501) shows the provider reachable but not
//! up: it changes nothing and is counted as `inconclusive`.
//!
//! The layer does no HTTP itself: the embedding application hands it a
//! [`HealthClient`] that sends the probe (the proxy uses its upstream
//! client). The tasks belong to state shared by every clone of the layer,
//! start with the layer (see [`TierRoutingLayer::start_background_tasks`](crate::TierRoutingLayer::start_background_tasks) for when exactly), never
//! from a request, and stop when the last clone is dropped; they never
//! block a request.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use sentinel_layer::health::{HealthChecks, HealthClient, HealthFuture, HealthTarget};
//!
//! struct AlwaysUp;
//! impl HealthClient for AlwaysUp {
//!     fn get(&self, _request: http::Request<()>) -> HealthFuture {
//!         Box::pin(async { Ok(http::StatusCode::OK) })
//!     }
//! }
//!
//! let target = HealthTarget::new("openai", "https://api.openai.com/v1", Some("sk-..."))?;
//! let checks = HealthChecks::new(vec![target], AlwaysUp).interval(Duration::from_secs(30));
//! # Ok::<(), sentinel_layer::InvalidConfig>(())
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::{HeaderValue, Request, StatusCode, Uri, header};
use tokio::time::Instant;

use crate::breaker::state::Breakers;
use crate::classify::Probe;
use crate::error::InvalidConfig;
use crate::metrics as m;
use crate::upstream::BoxError;

/// The future a [`HealthClient`] returns: the probe's status.
pub type HealthFuture = Pin<Box<dyn Future<Output = Result<StatusCode, BoxError>> + Send>>;

/// Sends a health probe.
pub trait HealthClient: Send + Sync + 'static {
    /// Sends `request` (a `GET` with the provider's `Authorization`) and
    /// returns the response status.
    fn get(&self, request: Request<()>) -> HealthFuture;
}

/// One provider to probe.
#[derive(Clone)]
pub struct HealthTarget {
    provider: Arc<str>,
    base_url: String,
    /// Sent with every probe: the provider's key, as it takes it.
    headers: http::HeaderMap,
    /// The path probed, when the checks' own does not fit this provider.
    path: Option<String>,
}

impl fmt::Debug for HealthTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthTarget")
            .field("provider", &self.provider)
            .field(
                "base_url",
                &sentinel_core::redact::redact_url(&self.base_url),
            )
            .finish_non_exhaustive()
    }
}

impl HealthTarget {
    /// Probes `provider` at `base_url` (`https://api.openai.com/v1`) with
    /// `api_key` as a bearer token.
    pub fn new(
        provider: impl Into<Arc<str>>,
        base_url: &str,
        api_key: Option<&str>,
    ) -> Result<Self, InvalidConfig> {
        let authorization = match api_key {
            None => None,
            Some(key) => {
                let mut value = HeaderValue::try_from(format!("Bearer {key}")).map_err(|_| {
                    InvalidConfig::new(
                        "a provider API key holds characters that cannot go into a header",
                    )
                })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        let mut headers = http::HeaderMap::new();
        if let Some(auth) = authorization {
            headers.insert(header::AUTHORIZATION, auth);
        }
        HealthTarget::with_headers(provider, base_url, headers)
    }

    /// Probes `provider` at `base_url` with `headers` (its key as it takes
    /// it: `api-key`, `x-api-key`, ...; mark them sensitive).
    pub fn with_headers(
        provider: impl Into<Arc<str>>,
        base_url: &str,
        headers: http::HeaderMap,
    ) -> Result<Self, InvalidConfig> {
        let base_url = base_url.trim_end_matches('/').to_owned();
        if base_url.parse::<Uri>().is_err() {
            return Err(InvalidConfig::new("a provider base URL is not a valid URL"));
        }
        Ok(HealthTarget {
            provider: provider.into(),
            base_url,
            headers,
            path: None,
        })
    }

    /// Probes this provider at `path` (under its base URL, query allowed)
    /// instead of the checks' path: for a provider whose API differs.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    fn request(&self, path: &str) -> Option<Request<()>> {
        let path = self.path.as_deref().unwrap_or(path);
        let uri: Uri = format!("{}{path}", self.base_url).parse().ok()?;
        let mut request = Request::get(uri).body(()).ok()?;
        *request.headers_mut() = self.headers.clone();
        Some(request)
    }
}

/// The health-check settings of a layer.
#[derive(Clone)]
pub struct HealthChecks {
    pub(crate) targets: Vec<HealthTarget>,
    pub(crate) client: Arc<dyn HealthClient>,
    pub(crate) path: String,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
}

impl fmt::Debug for HealthChecks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthChecks")
            .field("targets", &self.targets)
            .field("path", &self.path)
            .field("interval", &self.interval)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HealthChecks {
    /// Default probe path, under the provider's base URL.
    pub const DEFAULT_PATH: &'static str = "/models";
    /// Default interval between probes.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(15);
    /// Default probe timeout.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

    /// Probes `targets` through `client` with the defaults.
    pub fn new(targets: Vec<HealthTarget>, client: impl HealthClient) -> Self {
        HealthChecks {
            targets,
            client: Arc::new(client),
            path: Self::DEFAULT_PATH.into(),
            interval: Self::DEFAULT_INTERVAL,
            timeout: Self::DEFAULT_TIMEOUT,
        }
    }

    /// The path probed under each base URL (default `/models`).
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// Time between probes (default 15 s).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Probe timeout (default 2 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), InvalidConfig> {
        if self.interval.is_zero() || self.timeout.is_zero() {
            return Err(InvalidConfig::new(
                "health-check interval and timeout must be greater than zero",
            ));
        }
        if !self.path.starts_with('/') {
            return Err(InvalidConfig::new(
                "the health-check path must start with `/`",
            ));
        }
        Ok(())
    }
}

/// Probes one target forever, until the layer is gone.
pub(crate) async fn run(breakers: Weak<Breakers>, target: HealthTarget, checks: HealthChecks) {
    let Some(request) = target.request(&checks.path) else {
        tracing::error!(provider = %target.provider, "health-check URL is invalid; not probing");
        return;
    };
    loop {
        let probe = Request::get(request.uri().clone()).body(()).map(|mut r| {
            *r.headers_mut() = request.headers().clone();
            r
        });
        let result = match probe {
            Ok(probe) => {
                let answer = tokio::time::timeout(checks.timeout, checks.client.get(probe)).await;
                Probe::of(answer.map_err(|_| ()).and_then(|r| r.map_err(|_| ())))
            }
            Err(_) => Probe::Down,
        };
        {
            let Some(breakers) = breakers.upgrade() else {
                return;
            };
            match result {
                Probe::Up => breakers.health(&target.provider, true, Instant::now()),
                Probe::Down => breakers.health(&target.provider, false, Instant::now()),
                Probe::Inconclusive => {}
            }
        }
        ::metrics::counter!(m::HEALTH_CHECKS, "provider" => target.provider.to_string(), "result" => result.as_str())
            .increment(1);
        match result {
            Probe::Down => tracing::warn!(provider = %target.provider, "health check failed"),
            Probe::Inconclusive => {
                tracing::debug!(provider = %target.provider, "health check inconclusive")
            }
            Probe::Up => {}
        }
        tokio::time::sleep(checks.interval).await;
    }
}
