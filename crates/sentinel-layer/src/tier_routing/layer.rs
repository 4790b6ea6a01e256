//! [`TierRoutingLayer`] and its builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use fred::clients::Pool;
use http::{Method, Uri};
use sentinel_core::{BackoffSchedule, TierConfigSource};
use tower_layer::Layer;

use super::service::TierRouting;
use super::{Routes, Sessions, Shared};
use crate::breaker::shared::SharedOpenState;
use crate::breaker::state::{BreakerSettings, Breakers};
use crate::error::InvalidConfig;
use crate::health::HealthChecks;
use crate::recovery::ModelProbes;
use crate::rng::Randomness;
use crate::select::Selector;
use crate::session::SessionStore;

/// Adds tier routing, retry on the next model and circuit-breaking backoff
/// to a service. See the [module docs](crate::tier_routing).
#[derive(Clone)]
pub struct TierRoutingLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for TierRoutingLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TierRoutingLayer").finish_non_exhaustive()
    }
}

impl TierRoutingLayer {
    /// A layer with every default: no sessions, breakers at 3 failures with
    /// 30 s doubling to 300 s, no health checks, the default routed paths
    /// and a 32 MiB body limit. Never fails.
    pub fn new(source: impl TierConfigSource) -> Self {
        let shared = Arc::new(TierRoutingLayerBuilder::new(Arc::new(source)).shared());
        shared.start_background();
        TierRoutingLayer { shared }
    }

    /// A builder for the optional parts.
    pub fn builder(source: impl TierConfigSource) -> TierRoutingLayerBuilder {
        TierRoutingLayerBuilder::new(Arc::new(source))
    }

    /// Starts the background tasks (health checks, background model
    /// probes, shared breaker sync). They start by themselves when the layer
    /// is built, or wraps a service, inside a tokio runtime; call this for a
    /// layer built and applied outside one, from inside a runtime. Never
    /// from a request; does nothing the second time.
    pub fn start_background_tasks(&self) {
        self.shared.start_background();
    }

    /// Sets the `sentinel_breaker_state` gauge (0 closed, 1 open, 2
    /// half-open) of every model of the current tier config and of their
    /// providers. Half-open is a matter of time (a wait that ran out), so
    /// call it when the metrics are read, e.g. from the `/metrics` handler
    /// just before rendering. Cheap: one lock per breaker.
    pub fn export_breaker_states(&self) {
        self.shared.export_breaker_states();
    }

    /// What the layer is doing now: each model's share of new traffic and
    /// breaker, each provider's health and breaker (see
    /// [`state`](crate::state)). `None` until a tier config is at hand.
    pub fn routing_state(&self) -> Option<crate::state::RoutingState> {
        self.shared.routing_state()
    }
}

impl<S> Layer<S> for TierRoutingLayer {
    type Service = TierRouting<S>;

    fn layer(&self, inner: S) -> Self::Service {
        // A layer built outside a runtime starts its tasks here, if this is
        // inside one.
        self.shared.start_background();
        TierRouting::new(self.shared.clone(), inner)
    }
}

/// Builds a [`TierRoutingLayer`], validating every setting.
pub struct TierRoutingLayerBuilder {
    source: Arc<dyn TierConfigSource>,
    sessions: Option<Arc<dyn SessionStore>>,
    session_wait: Duration,
    backoff: Option<(Duration, Duration)>,
    threshold: u32,
    health: Option<HealthChecks>,
    probes: Option<ModelProbes>,
    routes: Routes,
    body_limit: usize,
    body_timeout: Duration,
    stream_usage: bool,
    seed: Option<u64>,
    shared_breakers: Option<(Pool, String)>,
    route_filter: Option<super::route_filter::Allows>,
}

impl fmt::Debug for TierRoutingLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TierRoutingLayerBuilder")
            .field("session_wait", &self.session_wait)
            .field("threshold", &self.threshold)
            .field("body_limit", &self.body_limit)
            .field("body_timeout", &self.body_timeout)
            .field("stream_usage", &self.stream_usage)
            .finish_non_exhaustive()
    }
}

impl TierRoutingLayerBuilder {
    /// Default body limit: 32 MiB.
    pub const DEFAULT_BODY_LIMIT: usize = 32 << 20;
    /// Default consecutive failures that open a breaker.
    pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;
    /// Default bound on waiting for the session store.
    pub const DEFAULT_SESSION_WAIT: Duration = Duration::from_millis(50);
    /// Default bound on reading a routed request's whole body: 30 s.
    pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

    fn new(source: Arc<dyn TierConfigSource>) -> Self {
        TierRoutingLayerBuilder {
            source,
            sessions: None,
            session_wait: Self::DEFAULT_SESSION_WAIT,
            backoff: None,
            threshold: Self::DEFAULT_FAILURE_THRESHOLD,
            health: None,
            probes: None,
            routes: Routes::default(),
            body_limit: Self::DEFAULT_BODY_LIMIT,
            body_timeout: Self::DEFAULT_BODY_TIMEOUT,
            stream_usage: false,
            seed: None,
            shared_breakers: None,
            route_filter: None,
        }
    }

    /// Keeps sessions (`X-Sentinel-Session`) in `store`.
    pub fn session_store(mut self, store: impl SessionStore) -> Self {
        self.sessions = Some(Arc::new(store));
        self
    }

    /// The longest a request waits for the session store before it is
    /// served without pinning (default 50 ms). Also the timeout of every
    /// Redis command of the session store
    /// ([`SessionStore::set_call_timeout`]) and of the shared breakers, so
    /// that a command given up never takes effect later.
    pub fn session_wait(mut self, wait: Duration) -> Self {
        self.session_wait = wait;
        self
    }

    /// The backoff schedule of open breakers (default 30 s doubling to 300 s).
    pub fn backoff(mut self, initial: Duration, cap: Duration) -> Self {
        self.backoff = Some((initial, cap));
        self
    }

    /// Consecutive failures that open a model's or provider's breaker
    /// (default 3; 1 allowed).
    pub fn failure_threshold(mut self, threshold: u32) -> Self {
        self.threshold = threshold;
        self
    }

    /// Probes providers actively.
    pub fn health_checks(mut self, checks: HealthChecks) -> Self {
        self.health = Some(checks);
        self
    }

    /// Probes open models in the background, so that one that recovers
    /// takes traffic again at once (see [`recovery`](crate::recovery)).
    pub fn model_probes(mut self, probes: ModelProbes) -> Self {
        self.probes = Some(probes);
        self
    }

    /// The paths routed for `POST` (default `/v1/chat/completions` and
    /// `/v1/responses`). Their bodies must be JSON.
    pub fn routed_paths<I, P>(mut self, paths: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<String>,
    {
        self.routes.paths = paths.into_iter().map(Into::into).collect();
        self
    }

    /// Routes the requests for which `predicate` is true instead of the
    /// `POST` + path rule, as JSON requests.
    pub fn route_if(
        mut self,
        predicate: impl Fn(&Method, &Uri) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.routes.predicate = Some(Arc::new(predicate));
        self
    }

    /// Turns gRPC routing on for these paths: each is a method path
    /// (`/pkg.Service/Method`) or a service prefix ending in `/`
    /// (`/pkg.Service/`, every method of the service). A `POST` to one of
    /// them with an `application/grpc` content type is routed as gRPC: the
    /// tier comes from `x-sentinel-tier` metadata, the body streams through
    /// untouched (it is never buffered, checked or retried) and errors are
    /// gRPC statuses.
    ///
    /// Off by default (no paths): a content type is only a client's claim,
    /// so the mode that skips the body checks must be asked for, per path.
    /// The JSON routes always win: a gRPC content type on one of them is
    /// answered `415`.
    pub fn grpc_paths<I, P>(mut self, paths: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<String>,
    {
        self.routes.grpc = paths.into_iter().map(Into::into).collect();
        self
    }

    /// The largest routed request body (default 32 MiB; 413 above it).
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// The longest a routed request's whole body may take to arrive
    /// (default 30 s; `408 request_timeout` after it).
    pub fn body_timeout(mut self, timeout: Duration) -> Self {
        self.body_timeout = timeout;
        self
    }

    /// Makes every routed chat-completions stream (`"stream": true` on a
    /// path ending in `/chat/completions`) ask for its usage chunk: the
    /// rewritten body gets `stream_options.include_usage: true`
    /// (default off: the body is the client's). When that changed the body,
    /// the request carries [`StreamUsageAdded`](crate::StreamUsageAdded),
    /// so the inner service can count the usage and leave the chunk out of
    /// what the client gets. Retries and continuations are rendered the
    /// same way.
    pub fn stream_usage(mut self, on: bool) -> Self {
        self.stream_usage = on;
        self
    }

    /// Which providers may serve a request to a routed path: `allows(path,
    /// provider)`. A request is routed over the tier config without the
    /// models whose provider `allows` refuses for its path, so the
    /// weighted choice and the retry only ever meet models that can serve
    /// it; a session whose model cannot has the request served by one that
    /// can (at its tier, or the one asked if higher) and keeps its model
    /// for the requests that follow. A tier left with no
    /// model for the path is answered `400 unsupported_route`. The models
    /// left out are counted in `sentinel_route_models_excluded_total`.
    /// Default: every provider serves every path.
    ///
    /// The proxy uses it to keep Anthropic models out of `/v1/responses`,
    /// which it translates for chat completions only.
    pub fn route_providers(
        mut self,
        allows: impl Fn(&str, &str) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.route_filter = Some(Arc::new(allows));
        self
    }

    /// Makes the weighted choice reproducible: draws come from `seed` and a
    /// counter shared by every clone of the layer (tests).
    pub fn rng_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Shares breaker open state across replicas through Redis, under
    /// `{prefix}breaker:` keys.
    pub fn shared_breakers(mut self, pool: Pool, prefix: impl Into<String>) -> Self {
        self.shared_breakers = Some((pool, prefix.into()));
        self
    }

    /// Validates the settings and builds the layer.
    pub fn build(self) -> Result<TierRoutingLayer, InvalidConfig> {
        if self.threshold == 0 {
            return Err(InvalidConfig::new(
                "the failure threshold must be at least 1",
            ));
        }
        if self.body_limit == 0 {
            return Err(InvalidConfig::new(
                "the body limit must be greater than zero",
            ));
        }
        if self.session_wait.is_zero() || self.session_wait > Duration::from_secs(10) {
            return Err(InvalidConfig::new(
                "the session wait must be greater than zero and at most 10 s",
            ));
        }
        if let Some((initial, cap)) = self.backoff {
            BackoffSchedule::new(initial, cap).map_err(|e| InvalidConfig::new(e.to_string()))?;
        }
        if let Some(health) = &self.health {
            health.validate()?;
        }
        if let Some(probes) = &self.probes {
            probes.validate()?;
        }
        if self.body_timeout.is_zero() {
            return Err(InvalidConfig::new(
                "the body timeout must be greater than zero",
            ));
        }
        if self.routes.paths.iter().any(|p| !p.starts_with('/')) {
            return Err(InvalidConfig::new("routed paths must start with `/`"));
        }
        if self
            .routes
            .grpc
            .iter()
            .any(|p| !p.starts_with('/') || p.len() < 2)
        {
            return Err(InvalidConfig::new(
                "gRPC paths must start with `/` and name a method or a service",
            ));
        }
        if let Some(p) = self.routes.grpc.iter().find(|p| {
            self.routes
                .paths
                .iter()
                .any(|json| json == *p || (p.ends_with('/') && json.starts_with(p.as_str())))
        }) {
            return Err(InvalidConfig::new(format!(
                "gRPC path `{p}` covers a JSON routed path: gRPC never applies to the JSON routes"
            )));
        }
        let shared = Arc::new(self.shared());
        shared.start_background();
        Ok(TierRoutingLayer { shared })
    }

    fn shared(self) -> Shared {
        let schedule = self
            .backoff
            .and_then(|(i, c)| BackoffSchedule::new(i, c).ok())
            .unwrap_or_default();
        let shared_state = self
            .shared_breakers
            .map(|(pool, prefix)| SharedOpenState::new(pool, &prefix, self.session_wait));
        let breakers = Arc::new(Breakers::new(
            BreakerSettings {
                threshold: self.threshold.max(1),
                schedule,
            },
            shared_state,
        ));
        let rng = match self.seed {
            Some(seed) => Randomness::seeded(seed),
            None => Randomness::ThreadLocal,
        };
        Shared::new(
            self.source,
            Arc::new(Selector::new(breakers, rng)),
            self.sessions.map(|store| {
                store.set_call_timeout(self.session_wait);
                Sessions {
                    store,
                    wait: self.session_wait,
                }
            }),
            self.routes,
            (self.body_limit.max(1), self.body_timeout, self.stream_usage),
            (self.health, self.probes),
        )
        .with_route_filter(self.route_filter.map(super::route_filter::RouteFilter::new))
    }
}
