//! `sentinel-proxy`: Sentinel as a standalone OpenAI-compatible proxy.
//!
//! An axum server with [`TierRoutingLayer`]
//! around an upstream client that forwards to the chosen provider. The tier
//! config comes from Zion through `TierConfigCache` when `ZION_URL` is set
//! (shared through Redis when `REDIS_URL` is set), else from the built-in
//! mappings or a `[tiers]` table. See [`settings::REFERENCE`] for every
//! setting.
//!
//! The binary is a thin `main` over [`start`]; tests start the proxy
//! in-process the same way.
//!
//! # Example
//!
//! ```no_run
//! use sentinel_proxy::settings::{Cli, Settings};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let settings = Settings::load(&Cli::default(), &|name| std::env::var(name).ok())?;
//! let proxy = sentinel_proxy::start(settings).await?;
//! println!("listening on {}", proxy.addr());
//! proxy.shutdown();
//! proxy.wait().await?;
//! # Ok(())
//! # }
//! ```

mod anthropic;
pub mod demo;
pub mod metrics;
mod recent;
mod serve;
mod server;
pub mod settings;
pub mod source;
mod sse;
mod status;
mod timing;
pub mod trace;
pub mod upstream;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use http_body_util::Full;
use sentinel_core::{ConfigOrigin, StaticConfig, TierConfigSource};
use sentinel_layer::health::{HealthChecks, HealthClient, HealthFuture, HealthTarget};
use sentinel_layer::recovery::ModelProbes;
use sentinel_layer::{MemorySessionStore, RedisSessionStore, TierRoutingLayer};
use sentinel_net::RedisSettings;
use sentinel_zion::{RedisStore, TierConfigCache, ZionClient, ZionSettings};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::Layer;

pub use server::REQUEST_ID;
use settings::Settings;
use source::KnownProviders;
use upstream::{StreamContinuation, Timeouts, Upstream, UpstreamClient};

/// The proxy could not start: what it was setting up, and the cause (kept
/// as the error's source). Neither names a secret.
#[derive(Debug)]
pub struct StartError {
    context: String,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.context, self.source)
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

fn fail(context: &str, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StartError {
    StartError {
        context: context.to_owned(),
        source: e.into(),
    }
}

/// Health probes through the proxy's upstream client.
struct UpstreamProbe(UpstreamClient);

impl HealthClient for UpstreamProbe {
    fn get(&self, request: Request<()>) -> HealthFuture {
        let client = self.0.clone();
        Box::pin(async move {
            let response = client.request(request.map(|()| Full::default())).await?;
            Ok(response.status())
        })
    }
}

/// A running proxy.
pub struct Running {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<std::io::Result<()>>,
}

impl fmt::Debug for Running {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Running")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Running {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections and lets in-flight requests and streams
    /// finish, up to the drain timeout.
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits until the server has stopped.
    pub async fn wait(self) -> std::io::Result<()> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

/// Builds the proxy from `settings`, binds its address and serves in the
/// background. With `--demo` (`settings.demo`), first starts the mock
/// upstream and points the `openai` provider at it.
pub async fn start(mut settings: Settings) -> Result<Running, StartError> {
    if settings.demo {
        let url = demo::start_mock_upstream()
            .await
            .map_err(|e| fail("starting the demo upstream", e))?;
        settings.zion_url = None;
        settings.redis_url = None;
        if let Some(openai) = settings.providers.get_mut("openai") {
            openai.base_url = url;
            openai.api_key = Some(settings::Secret::from("demo-key"));
        }
    }
    let prometheus = metrics::prometheus();
    let client = upstream::upstream_client(settings.connect_timeout)
        .map_err(|e| fail("upstream client", e))?;

    let pool = match &settings.redis_url {
        Some(url) => Some(
            sentinel_net::redis::connect(
                &RedisSettings::new(url.expose()).tls(settings.redis_tls.clone()),
            )
            .map_err(|e| fail("REDIS_URL", e))?,
        ),
        None => None,
    };
    // Give the connections a moment before the first config load, so a
    // replica of a fleet starting at once finds the fetch lock instead of
    // going to Zion on its own for want of a connection. Redis down costs
    // start-up this wait, once.
    if let Some(pool) = &pool
        && !sentinel_net::redis::wait_connected(pool, RedisSettings::DEFAULT_CONNECT_TIMEOUT).await
    {
        tracing::warn!(
            "Redis did not answer within {:?} of start-up; serving from memory until it does",
            RedisSettings::DEFAULT_CONNECT_TIMEOUT
        );
    }

    let known: Vec<String> = settings.providers.keys().cloned().collect();
    let source: Arc<dyn TierConfigSource> = match &settings.zion_url {
        Some(url) => {
            let mut zion_settings = ZionSettings::new(url.clone());
            if let Some(key) = &settings.zion_api_key {
                zion_settings = zion_settings.api_key(key.expose());
            }
            let zion_http = sentinel_net::http_client(ZionSettings::DEFAULT_CONNECT_TIMEOUT)
                .map_err(|e| fail("Zion client", e))?;
            let zion = ZionClient::with_http_client(zion_http, zion_settings)
                .map_err(|e| fail("ZION_URL", e))?;
            let mut cache = TierConfigCache::builder(zion).ttl(settings.tier_config_ttl);
            if let Some(pool) = &pool {
                cache = cache.store(RedisStore::new(pool.clone(), &settings.redis_prefix));
            }
            let cache = cache
                .build()
                .map_err(|e| fail("TIER_CONFIG_TTL_SECONDS", e))?;
            Arc::new(KnownProviders::new(cache, known))
        }
        None => {
            let fixed = match settings.tiers.clone() {
                Some(config) => StaticConfig::new(config).origin(ConfigOrigin::File),
                None => StaticConfig::new(source::builtin()).origin(ConfigOrigin::Builtin),
            };
            Arc::new(KnownProviders::new(fixed, known))
        }
    };

    let mut layer = TierRoutingLayer::builder(source.clone())
        .failure_threshold(settings.failure_threshold)
        .backoff(settings.backoff_initial, settings.backoff_max)
        .session_wait(settings.session_wait)
        .body_limit(settings.body_limit)
        .body_timeout(settings.client.body_read_timeout)
        // Streams ask for their usage chunk, so their cost is counted.
        .stream_usage(true);
    // Anthropic models serve chat completions only (the Responses API is
    // not translated): the layer leaves them out of the choice elsewhere.
    let anthropic: std::collections::HashSet<String> = settings
        .providers
        .values()
        .filter(|p| p.kind == settings::ProviderKind::Anthropic)
        .map(|p| p.name.clone())
        .collect();
    if !anthropic.is_empty() {
        layer = layer.route_providers(move |path, provider| {
            path.ends_with("/chat/completions") || !anthropic.contains(provider)
        });
    }
    layer = match &pool {
        Some(pool) => layer
            .session_store(RedisSessionStore::new(
                pool.clone(),
                &settings.redis_prefix,
                settings.session_ttl,
            ))
            .shared_breakers(pool.clone(), settings.redis_prefix.clone()),
        None => layer.session_store(
            MemorySessionStore::new()
                .with_limits(settings.session_max_entries, settings.session_ttl),
        ),
    };
    if settings.health.enabled {
        let mut targets = Vec::new();
        for p in settings.providers.values() {
            // The provider's key and headers as its requests carry them,
            // and the path its API lists models at.
            let target = upstream::Target::of(p).map_err(|e| fail("providers", e))?;
            targets.push(
                HealthTarget::with_headers(
                    p.name.clone(),
                    target.base_url(),
                    target.headers.clone(),
                )
                .map_err(|e| fail("providers", e))?
                .path(target.health_path(&settings.health.path)),
            );
        }
        let checks = HealthChecks::new(targets, UpstreamProbe(client.clone()))
            .interval(settings.health.interval)
            .timeout(settings.health.timeout)
            .path(settings.health.path.clone());
        layer = layer.health_checks(checks);
    }
    let timeouts = Timeouts {
        first_byte: settings.first_byte_timeout,
        first_token: settings.first_token_timeout,
        stream_idle: settings.stream_idle_timeout,
    };
    let continuation = if settings.stream_continuation {
        StreamContinuation::On
    } else {
        StreamContinuation::Off
    };
    let upstream = Upstream::new(
        client,
        settings.providers.values().cloned(),
        timeouts,
        continuation,
        source.clone(),
    )
    .map_err(|e| fail("providers", e))?;
    if let Some(interval) = settings.model_probe_interval {
        layer = layer.model_probes(ModelProbes::new(upstream.clone()).interval(interval));
    }
    let layer = layer.build().map_err(|e| fail("settings", e))?;
    let (tracing, export) = match &settings.tracing {
        Some(trace) => {
            let (tracing, task) =
                trace::start(trace).map_err(|e| fail("OTEL_EXPORTER_OTLP_ENDPOINT", e))?;
            (tracing, Some(task))
        }
        None => (trace::Tracing::off(), None),
    };
    let state = server::AppState {
        source: source.clone(),
        prometheus,
        layer: layer.clone(),
        timings: Arc::default(),
    };
    let app = server::app(
        state,
        layer.layer(upstream),
        tracing,
        &settings.inbound_keys,
        settings.client.max_in_flight,
        &settings.cors_origins,
    );

    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| {
            fail(
                &format!("SENTINEL_LISTEN: cannot listen on {}", settings.listen),
                e,
            )
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| fail("SENTINEL_LISTEN", e))?;
    layer.start_background_tasks();
    warm_up(source);

    let (stop, stopped) = watch::channel(false);
    let builder = serve::builder(&settings.client);
    let limits = serve::ConnLimits::from(&settings.client);
    let serving = serve::serve(
        listener,
        app,
        builder,
        limits,
        stopped,
        settings.drain_timeout,
    );
    let task = tokio::spawn(async move {
        let served = serving.await;
        // Drained: the spans still queued go to the collector.
        if let Some(export) = export {
            export.finish().await;
        }
        served
    });
    Ok(Running { addr, stop, task })
}

/// Loads the tier config in the background until it is at hand, so that
/// `/readyz` turns ready without waiting for a request.
fn warm_up(source: Arc<dyn TierConfigSource>) {
    tokio::spawn(async move {
        loop {
            match source.load().await {
                Ok(_) => return,
                Err(e) => {
                    let wait = e.retry_after().max(Duration::from_millis(250));
                    tracing::warn!(error = %e, "no tier config yet; retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    });
}
