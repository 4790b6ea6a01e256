//! Settings: command line, TOML file and environment.
//!
//! Precedence: the environment wins over the file, the file over the
//! defaults. Secrets (`ZION_API_KEY`, `OPENAI_API_KEY`, provider keys,
//! `SENTINEL_API_KEYS`, and `REDIS_URL`, which may carry a password) come
//! only from the environment. Every value is validated at start-up; an
//! error names the setting (the environment variable, or the file key).
//! The full reference is [`REFERENCE`], also printed by `--help`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use sentinel_core::redact::redact_url;
use sentinel_core::{RawTierConfig, RawTiers, TierConfig};
use sentinel_net::RedisTls;
use serde::Deserialize;

/// Every setting, its environment variable, file key and default.
pub const REFERENCE: &str = "\
SETTINGS (environment variable / file key: meaning [default])
  SENTINEL_LISTEN / listen                      listen address [127.0.0.1:8080]
  ZION_URL / zion_url                           Zion base URL; unset: built-in tiers or [tiers] [unset]
  ZION_API_KEY (env only)                       bearer token for Zion [unset]
  REDIS_URL (env only)                          Redis for the config cache, sessions and breakers:
                                                redis://, redis-cluster://, redis-sentinel:// and their
                                                TLS forms rediss://...; unset: in memory [unset]
  REDIS_TLS_CA_FILE (env only)                  PEM CAs trusted for TLS to Redis, beside the webpki
                                                roots [unset]
  REDIS_TLS_CERT_FILE, REDIS_TLS_KEY_FILE (env only)
                                                PEM client certificate and key for TLS to Redis
                                                (servers with tls-auth-clients yes) [unset]
  SENTINEL_REDIS_PREFIX / redis_prefix          prefix of every Redis key [sentinel:]
  TIER_CONFIG_TTL_SECONDS / tier_config_ttl_seconds
                                                tier-config cache TTL, 1..=31536000 [1800]
  OPENAI_BASE_URL / providers.openai.base_url   the openai provider's base URL [https://api.openai.com/v1]
  OPENAI_API_KEY (env only)                     the openai provider's key [unset]
  ANTHROPIC_BASE_URL / providers.anthropic.base_url
                                                the anthropic provider's base URL [https://api.anthropic.com]
  ANTHROPIC_API_KEY (env only)                  the anthropic provider's key; set: the provider is known [unset]
  SENTINEL_API_KEYS (env only)                  comma-separated inbound keys guarding /v1/; unset: none [unset]
  SENTINEL_CONNECT_TIMEOUT_MS / upstream.connect_timeout_ms
                                                upstream connect timeout [5000]
  SENTINEL_FIRST_BYTE_TIMEOUT_MS / upstream.first_byte_timeout_ms
                                                non-streaming: upstream time to the response head
                                                (long generations take minutes) [600000]
  SENTINEL_FIRST_TOKEN_TIMEOUT_MS / upstream.first_token_timeout_ms
                                                streaming: upstream time to the first token; the head
                                                is held until then, so a stall before it is retried [60000]
  SENTINEL_STREAM_IDLE_TIMEOUT_MS / upstream.stream_idle_timeout_ms
                                                longest pause inside a response body [60000]
  SENTINEL_STREAM_CONTINUATION / upstream.stream_continuation
                                                continue a streamed chat answer that breaks after its
                                                head on the next model of the tier, true/false [true]
  SENTINEL_BODY_LIMIT_BYTES / body_limit_bytes  largest request body [33554432]
  SENTINEL_DRAIN_TIMEOUT_SECS / drain_timeout_secs
                                                graceful-shutdown drain [30]
  SENTINEL_HEADER_READ_TIMEOUT_MS / client.header_read_timeout_ms
                                                a request's head must arrive within this, counted from
                                                its first byte (from the accept for a connection's first
                                                request); else the connection is closed [10000]
  SENTINEL_BODY_READ_TIMEOUT_MS / client.body_read_timeout_ms
                                                a routed request's whole body must arrive within this;
                                                else 408 request_timeout [30000]
  SENTINEL_KEEPALIVE_IDLE_TIMEOUT_MS / client.keepalive_idle_timeout_ms
                                                an idle keep-alive connection is closed after this [75000]
  SENTINEL_SEND_TIMEOUT_MS / client.send_timeout_ms
                                                a client that takes no response data for this long (it
                                                stopped reading) has its connection closed [30000]
  SENTINEL_MAX_CONNECTIONS / client.max_connections
                                                client connections open at once; more wait in the
                                                listen backlog [20000]
  SENTINEL_MAX_IN_FLIGHT / client.max_in_flight routed requests served at once (streams until their end);
                                                beyond it 503 overloaded with Retry-After: 1 [10000]
  SENTINEL_MAX_HEADER_BYTES / client.max_header_bytes
                                                largest request head, 8192..=1048576; beyond it 431 [65536]
  SENTINEL_CORS_ALLOWED_ORIGINS / cors.allowed_origins
                                                origins browsers may call from (comma-separated in the
                                                environment, a list in the file; `*` for any); unset: CORS
                                                off, OPTIONS answers 405 [unset]
  SENTINEL_FAILURE_THRESHOLD / breaker.failure_threshold
                                                consecutive failures that open a breaker [3]
  SENTINEL_BACKOFF_INITIAL_SECS / breaker.backoff_initial_secs
                                                first backoff wait [30]
  SENTINEL_BACKOFF_MAX_SECS / breaker.backoff_max_secs
                                                longest backoff wait [300]
  SENTINEL_SESSION_TTL_SECS / sessions.ttl_secs sliding session TTL [86400]
  SENTINEL_SESSION_MAX_ENTRIES / sessions.max_entries
                                                sessions kept in memory (without Redis) [100000]
  SENTINEL_SESSION_WAIT_MS / sessions.wait_ms   longest a request waits on Redis for its session (and a
                                                breaker write), 1..=10000; past it the request goes on
                                                without the pin [50]
  SENTINEL_HEALTH_CHECKS / health.enabled       active provider health checks, true/false [true]
  SENTINEL_HEALTH_INTERVAL_SECS / health.interval_secs
                                                time between probes [15]
  SENTINEL_HEALTH_TIMEOUT_SECS / health.timeout_secs
                                                probe timeout [2]
  SENTINEL_HEALTH_PATH / health.path            probe path under each base URL [/models]
  SENTINEL_MODEL_PROBES / recovery.enabled      probe open models in the background (one short message,
                                                max_tokens 1), true/false [true]
  SENTINEL_MODEL_PROBE_INTERVAL_SECS / recovery.interval_secs
                                                time between probes of an open model [10]
  SENTINEL_LOG / log                            log level: error, warn, info, debug, trace [info]

TRACES (OpenTelemetry's variables, environment only; off without an endpoint)
  OTEL_EXPORTER_OTLP_ENDPOINT                   collector base URL (HTTP: + /v1/traces) [unset: off]
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT            the traces endpoint, used as it is [unset]
  OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL          http/protobuf or grpc [http/protobuf]
  OTEL_EXPORTER_OTLP_[TRACES_]HEADERS           key=value,... sent with exports (never shown) [unset]
  OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT           one export's bound, ms [10000]
  OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES   the resource [sentinel-proxy]
  OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG  sampler and ratio [parentbased_always_on]
  OTEL_BSP_MAX_QUEUE_SIZE, OTEL_BSP_MAX_EXPORT_BATCH_SIZE, OTEL_BSP_SCHEDULE_DELAY
                                                queue (drops past it), batch, delay ms [2048, 512, 5000]
  OTEL_SDK_DISABLED                             true: off [unset]

FILE ONLY
  [providers.NAME] base_url = \"...\", api_key_env = \"VAR\", kind = \"openai\"|\"anthropic\",
                   auth = \"bearer\"|\"api-key\", query = { k = \"v\" }, headers = { k = \"v\" }
                   an OpenAI-compatible provider Zion may name; its key is read from VAR
  [tiers.simple|moderate|complex] models = [{ provider, model, relative_cost, pricing }]
                   the tier mappings used when ZION_URL is unset (else the built-in ones)
";

/// The command line.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "sentinel-proxy",
    version,
    about = "Sentinel: an OpenAI-compatible LLM gateway that routes by complexity tier.",
    after_long_help = REFERENCE,
    after_help = "Run with --help for every setting and its environment variable."
)]
pub struct Cli {
    /// A TOML settings file (the environment wins over it).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Run with an in-process mock OpenAI upstream, the built-in tiers and
    /// memory caches: nothing else needed.
    #[arg(long)]
    pub demo: bool,
    /// Allow listening beyond loopback without inbound keys.
    #[arg(long)]
    pub allow_unauthenticated: bool,
}

/// A secret: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

/// The API a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI's API (and every compatible one): requests pass as they are.
    #[default]
    Openai,
    /// Anthropic's Messages API: chat completions are translated both ways.
    Anthropic,
}

impl ProviderKind {
    /// `openai` or `anthropic`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Openai => "openai",
            ProviderKind::Anthropic => "anthropic",
        }
    }
}

/// How an OpenAI-compatible provider takes its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthStyle {
    /// `Authorization: Bearer KEY` (OpenAI and most others).
    #[default]
    Bearer,
    /// `api-key: KEY` (Azure OpenAI).
    ApiKey,
}

/// A provider Sentinel can send requests to.
#[derive(Clone, PartialEq, Eq)]
pub struct Provider {
    /// The name Zion and the tier config use.
    pub name: String,
    /// The API it speaks.
    pub kind: ProviderKind,
    /// Its base URL, e.g. `https://api.openai.com/v1`, or
    /// `https://api.anthropic.com` for Anthropic (no `/v1`, as its SDKs).
    pub base_url: String,
    /// Its key.
    pub api_key: Option<Secret>,
    /// How an OpenAI-compatible provider takes its key (Anthropic's is
    /// always `x-api-key`).
    pub auth: AuthStyle,
    /// Query parameters added to every request (Azure's `api-version`).
    pub query: Vec<(String, String)>,
    /// Headers added to every request.
    pub headers: Vec<(String, String)>,
}

impl Provider {
    /// An OpenAI-compatible provider with a bearer key and nothing extra.
    pub fn openai(name: &str, base_url: &str, api_key: Option<Secret>) -> Self {
        Provider {
            name: name.to_owned(),
            kind: ProviderKind::Openai,
            base_url: base_url.to_owned(),
            api_key,
            auth: AuthStyle::Bearer,
            query: Vec::new(),
            headers: Vec::new(),
        }
    }
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Extra headers may carry keys: only their names are shown.
        let header_names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("base_url", &redact_url(&self.base_url))
            .field("api_key", &self.api_key)
            .field("auth", &self.auth)
            // Query values may be keys too.
            .field(
                "query",
                &self
                    .query
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("headers", &header_names)
            .finish()
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("listen", &self.listen)
            .field("zion_url", &self.zion_url.as_deref().map(redact_url))
            .field("zion_api_key", &self.zion_api_key)
            .field("redis_url", &self.redis_url)
            .field("redis_tls", &self.redis_tls)
            .field("redis_prefix", &self.redis_prefix)
            .field("tier_config_ttl", &self.tier_config_ttl)
            .field("providers", &self.providers)
            .field("tiers", &self.tiers.as_ref().map(|t| t.version()))
            .field("inbound_keys", &self.inbound_keys.len())
            .field("allow_unauthenticated", &self.allow_unauthenticated)
            .field("demo", &self.demo)
            .field("connect_timeout", &self.connect_timeout)
            .field("first_byte_timeout", &self.first_byte_timeout)
            .field("first_token_timeout", &self.first_token_timeout)
            .field("stream_idle_timeout", &self.stream_idle_timeout)
            .field("stream_continuation", &self.stream_continuation)
            .field("body_limit", &self.body_limit)
            .field("drain_timeout", &self.drain_timeout)
            .field("client", &self.client)
            .field("cors_origins", &self.cors_origins)
            .field("failure_threshold", &self.failure_threshold)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .field("session_ttl", &self.session_ttl)
            .field("session_max_entries", &self.session_max_entries)
            .field("session_wait", &self.session_wait)
            .field("health", &self.health)
            .field("model_probe_interval", &self.model_probe_interval)
            .field("log", &self.log)
            .finish()
    }
}

/// Health-check settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Whether providers are probed.
    pub enabled: bool,
    /// Time between probes.
    pub interval: Duration,
    /// Probe timeout.
    pub timeout: Duration,
    /// Probe path under the base URL.
    pub path: String,
}

/// Limits on the client side of the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// A request head must arrive within this, from its first byte.
    pub header_read_timeout: Duration,
    /// A routed request's whole body must arrive within this.
    pub body_read_timeout: Duration,
    /// An idle keep-alive connection is closed after this.
    pub keepalive_idle_timeout: Duration,
    /// A client that takes no response data this long is disconnected.
    pub send_timeout: Duration,
    /// Client connections open at once.
    pub max_connections: usize,
    /// Requests served at once; beyond it, 503 `overloaded`.
    pub max_in_flight: usize,
    /// Largest request head in bytes; beyond it, 431.
    pub max_header_bytes: usize,
}

/// The resolved, validated settings.
#[derive(Clone)]
pub struct Settings {
    /// Listen address.
    pub listen: SocketAddr,
    /// Zion base URL.
    pub zion_url: Option<String>,
    /// Zion key.
    pub zion_api_key: Option<Secret>,
    /// Redis URL (may carry a password).
    pub redis_url: Option<Secret>,
    /// The CAs and client certificate of TLS to Redis.
    pub redis_tls: RedisTls,
    /// Prefix of every Redis key.
    pub redis_prefix: String,
    /// Tier-config TTL.
    pub tier_config_ttl: Duration,
    /// Providers by name (`openai` always).
    pub providers: BTreeMap<String, Provider>,
    /// Tier mappings from the file (used without Zion).
    pub tiers: Option<TierConfig>,
    /// Inbound keys; empty: no inbound auth.
    pub inbound_keys: Vec<Secret>,
    /// `--allow-unauthenticated`.
    pub allow_unauthenticated: bool,
    /// `--demo`.
    pub demo: bool,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Non-streaming: upstream time to the response head.
    pub first_byte_timeout: Duration,
    /// Streaming: upstream time to the first token.
    pub first_token_timeout: Duration,
    /// Longest pause inside a response body.
    pub stream_idle_timeout: Duration,
    /// Continue broken chat streams on the next model.
    pub stream_continuation: bool,
    /// Largest request body.
    pub body_limit: usize,
    /// Graceful-shutdown drain.
    pub drain_timeout: Duration,
    /// Limits on what clients may hold.
    pub client: ClientLimits,
    /// Origins allowed by CORS; empty: CORS off.
    pub cors_origins: Vec<String>,
    /// Breaker threshold.
    pub failure_threshold: u32,
    /// First backoff wait.
    pub backoff_initial: Duration,
    /// Longest backoff wait.
    pub backoff_max: Duration,
    /// Sliding session TTL.
    pub session_ttl: Duration,
    /// Sessions kept in memory.
    pub session_max_entries: usize,
    /// Longest wait on Redis for a session.
    pub session_wait: Duration,
    /// Health checks.
    pub health: Health,
    /// Background probes of open models; `None`: off.
    pub model_probe_interval: Option<Duration>,
    /// Log level.
    pub log: String,
    /// OpenTelemetry traces; `None`: off (no endpoint set).
    pub tracing: Option<crate::trace::TraceSettings>,
}

/// A setting that cannot be used; the message names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError(String);

impl SettingsError {
    pub(crate) fn new(setting: &str, problem: impl fmt::Display) -> Self {
        SettingsError(format!("{setting}: {problem}"))
    }
}

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SettingsError {}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Option<String>,
    zion_url: Option<String>,
    redis_prefix: Option<String>,
    tier_config_ttl_seconds: Option<u64>,
    body_limit_bytes: Option<u64>,
    drain_timeout_secs: Option<u64>,
    log: Option<String>,
    #[serde(default)]
    upstream: FileUpstream,
    #[serde(default)]
    breaker: FileBreaker,
    #[serde(default)]
    sessions: FileSessions,
    #[serde(default)]
    health: FileHealth,
    #[serde(default)]
    recovery: FileRecovery,
    #[serde(default)]
    client: FileClient,
    #[serde(default)]
    cors: FileCors,
    #[serde(default)]
    providers: BTreeMap<String, FileProvider>,
    tiers: Option<RawTiers>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUpstream {
    connect_timeout_ms: Option<u64>,
    first_byte_timeout_ms: Option<u64>,
    first_token_timeout_ms: Option<u64>,
    stream_idle_timeout_ms: Option<u64>,
    stream_continuation: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBreaker {
    failure_threshold: Option<u64>,
    backoff_initial_secs: Option<u64>,
    backoff_max_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSessions {
    ttl_secs: Option<u64>,
    max_entries: Option<u64>,
    wait_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHealth {
    enabled: Option<bool>,
    interval_secs: Option<u64>,
    timeout_secs: Option<u64>,
    path: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRecovery {
    enabled: Option<bool>,
    interval_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileClient {
    header_read_timeout_ms: Option<u64>,
    body_read_timeout_ms: Option<u64>,
    keepalive_idle_timeout_ms: Option<u64>,
    send_timeout_ms: Option<u64>,
    max_connections: Option<u64>,
    max_in_flight: Option<u64>,
    max_header_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCors {
    allowed_origins: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileProvider {
    kind: Option<ProviderKind>,
    base_url: Option<String>,
    api_key_env: Option<String>,
    auth: Option<AuthStyle>,
    #[serde(default)]
    query: BTreeMap<String, String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// The default OpenAI base URL.
pub const OPENAI_DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
/// The default Anthropic base URL (no `/v1`: the SDKs' convention).
pub const ANTHROPIC_DEFAULT_BASE_URL: &str = "https://api.anthropic.com";

/// The largest PEM file read for TLS to Redis.
const PEM_FILE_LIMIT: u64 = 1024 * 1024;

/// `REDIS_TLS_CA_FILE`, `REDIS_TLS_CERT_FILE` and `REDIS_TLS_KEY_FILE`:
/// read and checked at start-up; set only with a TLS `REDIS_URL`.
fn redis_tls(
    env: &dyn Fn(&str) -> Option<String>,
    url: Option<&Secret>,
) -> Result<RedisTls, SettingsError> {
    let ca = var(env, "REDIS_TLS_CA_FILE");
    let cert = var(env, "REDIS_TLS_CERT_FILE");
    let key = var(env, "REDIS_TLS_KEY_FILE");
    let Some(name) = [
        ("REDIS_TLS_CA_FILE", &ca),
        ("REDIS_TLS_CERT_FILE", &cert),
        ("REDIS_TLS_KEY_FILE", &key),
    ]
    .iter()
    .find(|(_, v)| v.is_some())
    .map(|(name, _)| *name) else {
        return Ok(RedisTls::default());
    };
    if !url.is_some_and(|u| sentinel_net::redis::uses_tls(u.expose())) {
        return Err(SettingsError::new(
            name,
            "is set, but REDIS_URL does not use TLS (rediss://, rediss-cluster://, rediss-sentinel://)",
        ));
    }
    let mut tls = RedisTls::default();
    if let Some(path) = ca {
        let pem = read_pem("REDIS_TLS_CA_FILE", &path)?;
        tls = tls
            .add_roots_pem(&pem)
            .map_err(|e| SettingsError::new("REDIS_TLS_CA_FILE", format!("`{path}` {e}")))?;
    }
    match (cert, key) {
        (Some(cert), Some(key)) => {
            let chain = read_pem("REDIS_TLS_CERT_FILE", &cert)?;
            let key_pem = read_pem("REDIS_TLS_KEY_FILE", &key)?;
            tls = tls.client_certificate_pem(&chain, &key_pem).map_err(|e| {
                match e.is_about_key() {
                    true => SettingsError::new("REDIS_TLS_KEY_FILE", format!("`{key}`: {e}")),
                    false => SettingsError::new("REDIS_TLS_CERT_FILE", format!("`{cert}` {e}")),
                }
            })?;
        }
        (Some(_), None) => {
            return Err(SettingsError::new(
                "REDIS_TLS_KEY_FILE",
                "must be set with REDIS_TLS_CERT_FILE",
            ));
        }
        (None, Some(_)) => {
            return Err(SettingsError::new(
                "REDIS_TLS_CERT_FILE",
                "must be set with REDIS_TLS_KEY_FILE",
            ));
        }
        (None, None) => {}
    }
    Ok(tls)
}

/// The file at `path`, at most [`PEM_FILE_LIMIT`] bytes.
fn read_pem(name: &str, path: &str) -> Result<Vec<u8>, SettingsError> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .map_err(|e| SettingsError::new(name, format!("`{path}` cannot be read: {e}")))?;
    let mut bytes = Vec::new();
    file.take(PEM_FILE_LIMIT + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| SettingsError::new(name, format!("`{path}` cannot be read: {e}")))?;
    if bytes.len() as u64 > PEM_FILE_LIMIT {
        return Err(SettingsError::new(
            name,
            format!("`{path}` is larger than {PEM_FILE_LIMIT} bytes"),
        ));
    }
    Ok(bytes)
}

/// Reads `name` from the environment source; empty counts as unset.
pub(crate) fn var(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    env(name).filter(|v| !v.trim().is_empty())
}

pub(crate) fn number(
    env: &dyn Fn(&str) -> Option<String>,
    name: &str,
    key: &str,
    file: Option<u64>,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, SettingsError> {
    let (value, setting) = match var(env, name) {
        Some(v) => (
            v.trim()
                .parse::<u64>()
                .map_err(|_| SettingsError::new(name, format!("`{v}` is not a whole number")))?,
            name,
        ),
        None => match file {
            Some(v) => (v, key),
            None => return Ok(default),
        },
    };
    if !range.contains(&value) {
        return Err(SettingsError::new(
            setting,
            format!("{value} is outside {}..={}", range.start(), range.end()),
        ));
    }
    Ok(value)
}

/// A true/false setting: the environment (`true`/`1`/`yes`/`on` or
/// `false`/`0`/`no`/`off`), else the file, else `default`.
fn flag(
    env: &dyn Fn(&str) -> Option<String>,
    name: &str,
    file: Option<bool>,
    default: bool,
) -> Result<bool, SettingsError> {
    match var(env, name) {
        Some(v) => match v.trim() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(SettingsError::new(name, "must be true or false")),
        },
        None => Ok(file.unwrap_or(default)),
    }
}

fn url(setting: &str, value: &str) -> Result<String, SettingsError> {
    let trimmed = value.trim().trim_end_matches('/');
    if trimmed.contains(['?', '#']) {
        return Err(SettingsError::new(
            setting,
            "must be a base URL without a query or fragment (a provider's query parameters go in its `query` table)",
        ));
    }
    let ok = (trimmed.starts_with("http://") || trimmed.starts_with("https://"))
        && trimmed
            .parse::<http::Uri>()
            .is_ok_and(|u| u.host().is_some());
    if !ok {
        return Err(SettingsError::new(
            setting,
            "must be an http:// or https:// URL",
        ));
    }
    Ok(trimmed.to_owned())
}

impl Settings {
    /// Loads the settings from the command line, the file it names and the
    /// environment (`env` looks up one variable: `std::env::var(..).ok()` in
    /// the binary, a map in tests).
    pub fn load(
        cli: &Cli,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Settings, SettingsError> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => File::default(),
        };

        let listen_raw = var(env, "SENTINEL_LISTEN")
            .map(|v| (v, "SENTINEL_LISTEN"))
            .or(file.listen.clone().map(|v| (v, "listen")));
        let listen = match listen_raw {
            Some((v, setting)) => v.trim().parse::<SocketAddr>().map_err(|_| {
                SettingsError::new(
                    setting,
                    format!("`{v}` is not a socket address like 127.0.0.1:8080"),
                )
            })?,
            None => SocketAddr::from(([127, 0, 0, 1], 8080)),
        };

        let zion_url = match var(env, "ZION_URL") {
            Some(v) => Some(url("ZION_URL", &v)?),
            None => file
                .zion_url
                .as_deref()
                .map(|v| url("zion_url", v))
                .transpose()?,
        };
        let zion_api_key = var(env, "ZION_API_KEY").map(|v| Secret(v.trim().to_owned()));
        let redis_url = var(env, "REDIS_URL").map(|v| Secret(v.trim().to_owned()));
        if let Some(r) = &redis_url
            && ![
                "redis://",
                "rediss://",
                "redis-cluster://",
                "rediss-cluster://",
                "redis-sentinel://",
                "rediss-sentinel://",
            ]
            .iter()
            .any(|scheme| r.0.starts_with(scheme))
        {
            return Err(SettingsError::new(
                "REDIS_URL",
                "must start with redis://, redis-cluster://, redis-sentinel:// \
                 or their TLS forms rediss://, rediss-cluster://, rediss-sentinel://",
            ));
        }
        let redis_tls = redis_tls(env, redis_url.as_ref())?;
        let redis_prefix = var(env, "SENTINEL_REDIS_PREFIX")
            .or(file.redis_prefix.clone())
            .unwrap_or_else(|| "sentinel:".into());

        let ttl = match var(env, sentinel_zion::TTL_ENV) {
            Some(v) => sentinel_zion::parse_ttl_seconds(&v).map_err(|_| {
                SettingsError::new(
                    sentinel_zion::TTL_ENV,
                    "must be a whole number of seconds from 1 to 31536000",
                )
            })?,
            None => match file.tier_config_ttl_seconds {
                Some(v) => sentinel_zion::parse_ttl_seconds(&v.to_string()).map_err(|_| {
                    SettingsError::new("tier_config_ttl_seconds", "must be from 1 to 31536000")
                })?,
                None => sentinel_zion::DEFAULT_TTL,
            },
        };

        // Providers: openai is built in; the file may declare more.
        let mut providers = BTreeMap::new();
        for (name, p) in &file.providers {
            if name.trim().is_empty() {
                return Err(SettingsError::new("providers", "a provider name is empty"));
            }
            let key_setting = format!("providers.{name}.api_key_env");
            let base_setting = format!("providers.{name}.base_url");
            // `openai` and `anthropic` are of their own kind unless told.
            let kind = p.kind.unwrap_or(match name.as_str() {
                "anthropic" => ProviderKind::Anthropic,
                _ => ProviderKind::Openai,
            });
            let base_url = match (&p.base_url, name.as_str()) {
                (Some(b), _) => url(&base_setting, b)?,
                (None, "openai") => OPENAI_DEFAULT_BASE_URL.to_owned(),
                (None, "anthropic") => ANTHROPIC_DEFAULT_BASE_URL.to_owned(),
                (None, _) => return Err(SettingsError::new(&base_setting, "is required")),
            };
            if kind == ProviderKind::Anthropic && p.auth.is_some() {
                return Err(SettingsError::new(
                    &format!("providers.{name}.auth"),
                    "an anthropic provider always sends its key as x-api-key",
                ));
            }
            for (key, value) in &p.headers {
                let setting = format!("providers.{name}.headers");
                let name_ok = http::HeaderName::try_from(key.as_str()).is_ok();
                if !name_ok || http::HeaderValue::try_from(value.as_str()).is_err() {
                    return Err(SettingsError::new(
                        &setting,
                        format!(
                            "`{key}` is not a header name, or its value cannot go into a header"
                        ),
                    ));
                }
            }
            let api_key = match &p.api_key_env {
                Some(var_name) => {
                    if var_name.trim().is_empty() {
                        return Err(SettingsError::new(&key_setting, "names no variable"));
                    }
                    var(env, var_name).map(|v| Secret(v.trim().to_owned()))
                }
                None => None,
            };
            providers.insert(
                name.clone(),
                Provider {
                    name: name.clone(),
                    kind,
                    base_url,
                    api_key,
                    auth: p.auth.unwrap_or_default(),
                    query: p.query.clone().into_iter().collect(),
                    headers: p.headers.clone().into_iter().collect(),
                },
            );
        }
        let openai = providers
            .entry("openai".into())
            .or_insert_with(|| Provider::openai("openai", OPENAI_DEFAULT_BASE_URL, None));
        if let Some(base) = var(env, "OPENAI_BASE_URL") {
            openai.base_url = url("OPENAI_BASE_URL", &base)?;
        }
        if let Some(key) = var(env, "OPENAI_API_KEY") {
            openai.api_key = Some(Secret(key.trim().to_owned()));
        }
        // `anthropic` is known when its key or base URL is set, or the file
        // declares it.
        let anthropic_key = var(env, "ANTHROPIC_API_KEY");
        if anthropic_key.is_some()
            || var(env, "ANTHROPIC_BASE_URL").is_some()
            || providers.contains_key("anthropic")
        {
            let anthropic = providers
                .entry("anthropic".into())
                .or_insert_with(|| Provider {
                    kind: ProviderKind::Anthropic,
                    ..Provider::openai("anthropic", ANTHROPIC_DEFAULT_BASE_URL, None)
                });
            if let Some(base) = var(env, "ANTHROPIC_BASE_URL") {
                anthropic.base_url = url("ANTHROPIC_BASE_URL", &base)?;
            }
            if let Some(key) = anthropic_key {
                anthropic.api_key = Some(Secret(key.trim().to_owned()));
            }
        }

        let tiers = match file.tiers {
            Some(raw) => Some(
                TierConfig::validate(RawTierConfig {
                    version: Some("file".into()),
                    tiers: raw,
                })
                .map_err(|e| SettingsError::new("tiers", e))?,
            ),
            None => None,
        };

        let inbound_keys: Vec<Secret> = var(env, "SENTINEL_API_KEYS")
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(Secret::from)
                    .collect()
            })
            .unwrap_or_default();

        let ms = |n: u64| Duration::from_millis(n);
        let secs = Duration::from_secs;
        let connect_timeout = ms(number(
            env,
            "SENTINEL_CONNECT_TIMEOUT_MS",
            "upstream.connect_timeout_ms",
            file.upstream.connect_timeout_ms,
            5_000,
            1..=600_000,
        )?);
        let first_byte_timeout = ms(number(
            env,
            "SENTINEL_FIRST_BYTE_TIMEOUT_MS",
            "upstream.first_byte_timeout_ms",
            file.upstream.first_byte_timeout_ms,
            600_000,
            1..=3_600_000,
        )?);
        let first_token_timeout = ms(number(
            env,
            "SENTINEL_FIRST_TOKEN_TIMEOUT_MS",
            "upstream.first_token_timeout_ms",
            file.upstream.first_token_timeout_ms,
            60_000,
            1..=3_600_000,
        )?);
        let stream_idle_timeout = ms(number(
            env,
            "SENTINEL_STREAM_IDLE_TIMEOUT_MS",
            "upstream.stream_idle_timeout_ms",
            file.upstream.stream_idle_timeout_ms,
            60_000,
            1..=3_600_000,
        )?);
        let stream_continuation = flag(
            env,
            "SENTINEL_STREAM_CONTINUATION",
            file.upstream.stream_continuation,
            true,
        )?;
        let body_limit = number(
            env,
            "SENTINEL_BODY_LIMIT_BYTES",
            "body_limit_bytes",
            file.body_limit_bytes,
            32 << 20,
            1..=(1 << 30),
        )? as usize;
        let drain_timeout = secs(number(
            env,
            "SENTINEL_DRAIN_TIMEOUT_SECS",
            "drain_timeout_secs",
            file.drain_timeout_secs,
            30,
            0..=3600,
        )?);
        let client = ClientLimits {
            header_read_timeout: ms(number(
                env,
                "SENTINEL_HEADER_READ_TIMEOUT_MS",
                "client.header_read_timeout_ms",
                file.client.header_read_timeout_ms,
                10_000,
                1..=600_000,
            )?),
            body_read_timeout: ms(number(
                env,
                "SENTINEL_BODY_READ_TIMEOUT_MS",
                "client.body_read_timeout_ms",
                file.client.body_read_timeout_ms,
                30_000,
                1..=3_600_000,
            )?),
            keepalive_idle_timeout: ms(number(
                env,
                "SENTINEL_KEEPALIVE_IDLE_TIMEOUT_MS",
                "client.keepalive_idle_timeout_ms",
                file.client.keepalive_idle_timeout_ms,
                75_000,
                1..=3_600_000,
            )?),
            send_timeout: ms(number(
                env,
                "SENTINEL_SEND_TIMEOUT_MS",
                "client.send_timeout_ms",
                file.client.send_timeout_ms,
                30_000,
                1..=3_600_000,
            )?),
            max_connections: number(
                env,
                "SENTINEL_MAX_CONNECTIONS",
                "client.max_connections",
                file.client.max_connections,
                20_000,
                1..=1_000_000,
            )? as usize,
            max_in_flight: number(
                env,
                "SENTINEL_MAX_IN_FLIGHT",
                "client.max_in_flight",
                file.client.max_in_flight,
                10_000,
                1..=1_000_000,
            )? as usize,
            max_header_bytes: number(
                env,
                "SENTINEL_MAX_HEADER_BYTES",
                "client.max_header_bytes",
                file.client.max_header_bytes,
                64 << 10,
                8192..=(1 << 20),
            )? as usize,
        };
        let cors_origins = match var(env, "SENTINEL_CORS_ALLOWED_ORIGINS") {
            Some(v) => origins(
                "SENTINEL_CORS_ALLOWED_ORIGINS",
                v.split(',').map(str::to_owned).collect(),
            )?,
            None => match file.cors.allowed_origins.clone() {
                Some(list) => origins("cors.allowed_origins", list)?,
                None => Vec::new(),
            },
        };
        let failure_threshold = number(
            env,
            "SENTINEL_FAILURE_THRESHOLD",
            "breaker.failure_threshold",
            file.breaker.failure_threshold,
            3,
            1..=1000,
        )? as u32;
        let backoff_initial = secs(number(
            env,
            "SENTINEL_BACKOFF_INITIAL_SECS",
            "breaker.backoff_initial_secs",
            file.breaker.backoff_initial_secs,
            30,
            1..=86_400,
        )?);
        let backoff_max = secs(number(
            env,
            "SENTINEL_BACKOFF_MAX_SECS",
            "breaker.backoff_max_secs",
            file.breaker.backoff_max_secs,
            300,
            1..=86_400,
        )?);
        if backoff_max < backoff_initial {
            return Err(SettingsError::new(
                "SENTINEL_BACKOFF_MAX_SECS",
                "must be at least SENTINEL_BACKOFF_INITIAL_SECS",
            ));
        }
        let session_ttl = secs(number(
            env,
            "SENTINEL_SESSION_TTL_SECS",
            "sessions.ttl_secs",
            file.sessions.ttl_secs,
            86_400,
            1..=31_536_000,
        )?);
        let session_max_entries = number(
            env,
            "SENTINEL_SESSION_MAX_ENTRIES",
            "sessions.max_entries",
            file.sessions.max_entries,
            100_000,
            1..=100_000_000,
        )? as usize;
        let session_wait = Duration::from_millis(number(
            env,
            "SENTINEL_SESSION_WAIT_MS",
            "sessions.wait_ms",
            file.sessions.wait_ms,
            50,
            1..=10_000,
        )?);

        let enabled = flag(env, "SENTINEL_HEALTH_CHECKS", file.health.enabled, true)?;
        let probes = flag(env, "SENTINEL_MODEL_PROBES", file.recovery.enabled, true)?;
        let probe_interval = secs(number(
            env,
            "SENTINEL_MODEL_PROBE_INTERVAL_SECS",
            "recovery.interval_secs",
            file.recovery.interval_secs,
            10,
            1..=3_600,
        )?);
        let model_probe_interval = probes.then_some(probe_interval);
        let health = Health {
            enabled,
            interval: secs(number(
                env,
                "SENTINEL_HEALTH_INTERVAL_SECS",
                "health.interval_secs",
                file.health.interval_secs,
                15,
                1..=86_400,
            )?),
            timeout: secs(number(
                env,
                "SENTINEL_HEALTH_TIMEOUT_SECS",
                "health.timeout_secs",
                file.health.timeout_secs,
                2,
                1..=600,
            )?),
            path: var(env, "SENTINEL_HEALTH_PATH")
                .or(file.health.path.clone())
                .unwrap_or_else(|| "/models".into()),
        };
        if !health.path.starts_with('/') {
            return Err(SettingsError::new(
                "SENTINEL_HEALTH_PATH",
                "must start with `/`",
            ));
        }

        let log = var(env, "SENTINEL_LOG")
            .or(file.log.clone())
            .unwrap_or_else(|| "info".into());
        if !matches!(log.as_str(), "error" | "warn" | "info" | "debug" | "trace") {
            return Err(SettingsError::new(
                "SENTINEL_LOG",
                "must be error, warn, info, debug or trace",
            ));
        }

        let settings = Settings {
            listen,
            zion_url,
            zion_api_key,
            redis_url,
            redis_tls,
            redis_prefix,
            tier_config_ttl: ttl,
            providers,
            tiers,
            inbound_keys,
            allow_unauthenticated: cli.allow_unauthenticated,
            demo: cli.demo,
            connect_timeout,
            first_byte_timeout,
            first_token_timeout,
            stream_idle_timeout,
            stream_continuation,
            body_limit,
            drain_timeout,
            client,
            cors_origins,
            failure_threshold,
            backoff_initial,
            backoff_max,
            session_ttl,
            session_max_entries,
            session_wait,
            health,
            model_probe_interval,
            log,
            tracing: crate::trace::TraceSettings::load(env)?,
        };
        settings.check_exposure()?;
        Ok(settings)
    }

    /// Refuses to listen beyond loopback with no inbound keys, unless
    /// `--allow-unauthenticated` was given.
    fn check_exposure(&self) -> Result<(), SettingsError> {
        if !self.listen.ip().is_loopback()
            && self.inbound_keys.is_empty()
            && !self.allow_unauthenticated
        {
            return Err(SettingsError::new(
                "SENTINEL_LISTEN",
                format!(
                    "{} is beyond loopback and SENTINEL_API_KEYS is unset: set inbound keys or pass --allow-unauthenticated",
                    self.listen
                ),
            ));
        }
        Ok(())
    }
}

/// CORS origins: `*`, or `http(s)://host[:port]` each (no path), trimmed,
/// empty entries skipped.
fn origins(setting: &str, list: Vec<String>) -> Result<Vec<String>, SettingsError> {
    let list: Vec<String> = list
        .iter()
        .map(|o| o.trim().to_owned())
        .filter(|o| !o.is_empty())
        .collect();
    for origin in &list {
        if origin == "*" {
            continue;
        }
        let ok = (origin.starts_with("http://") || origin.starts_with("https://"))
            && origin.parse::<http::Uri>().is_ok_and(|u| {
                u.host().is_some()
                    && u.path() == "/"
                    && !origin.ends_with('/')
                    && u.query().is_none()
            })
            && !origin.contains('@')
            && http::HeaderValue::from_str(origin).is_ok();
        if !ok {
            return Err(SettingsError::new(
                setting,
                "each origin must be `*` or scheme://host[:port] (http or https, no path)",
            ));
        }
    }
    if list.len() > 1 && list.iter().any(|o| o == "*") {
        return Err(SettingsError::new(
            setting,
            "`*` allows every origin and cannot be listed with others",
        ));
    }
    Ok(list)
}

fn read_file(path: &Path) -> Result<File, SettingsError> {
    let setting = format!("--config {}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| SettingsError::new(&setting, e))?;
    toml::from_str(&text).map_err(|e| SettingsError::new(&setting, e.message()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(vars: &[(&str, &str)], cli: Cli) -> Result<Settings, SettingsError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load(&cli, &move |k| map.get(k).cloned())
    }

    #[test]
    fn defaults_need_nothing() {
        let s = load(&[], Cli::default()).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.tier_config_ttl, Duration::from_secs(1800));
        assert_eq!(s.providers["openai"].base_url, OPENAI_DEFAULT_BASE_URL);
        assert!(s.zion_url.is_none() && s.redis_url.is_none() && s.inbound_keys.is_empty());
        assert_eq!(s.failure_threshold, 3);
        assert_eq!(s.body_limit, 32 << 20);
    }

    #[test]
    fn the_environment_wins_over_the_file() {
        let dir = std::env::temp_dir().join(format!("sentinel-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.toml");
        std::fs::write(
            &path,
            r#"
listen = "127.0.0.1:9001"
tier_config_ttl_seconds = 60
[upstream]
connect_timeout_ms = 1234
[providers.azure]
base_url = "https://azure.example/v1"
api_key_env = "AZURE_KEY"
[tiers.simple]
models = [{ provider = "azure", model = "m", relative_cost = 2 }]
"#,
        )
        .unwrap();
        let cli = Cli {
            config: Some(path.clone()),
            ..Cli::default()
        };
        let s = load(
            &[("SENTINEL_LISTEN", "127.0.0.1:9002"), ("AZURE_KEY", "k")],
            cli.clone(),
        )
        .unwrap();
        assert_eq!(s.listen.port(), 9002);
        assert_eq!(s.tier_config_ttl, Duration::from_secs(60));
        assert_eq!(s.connect_timeout, Duration::from_millis(1234));
        assert_eq!(s.providers["azure"].api_key, Some(Secret::from("k")));
        assert_eq!(
            s.tiers.unwrap().tier(sentinel_core::Tier::Simple).models()[0].model(),
            "m"
        );
        let s = load(&[("TIER_CONFIG_TTL_SECONDS", "90")], cli).unwrap();
        assert_eq!(s.tier_config_ttl, Duration::from_secs(90));
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn errors_name_the_setting() {
        let cases = [
            ("SENTINEL_LISTEN", "nope"),
            ("ZION_URL", "ftp://x"),
            ("TIER_CONFIG_TTL_SECONDS", "0"),
            ("OPENAI_BASE_URL", "not a url"),
            ("SENTINEL_CONNECT_TIMEOUT_MS", "-1"),
            ("SENTINEL_FAILURE_THRESHOLD", "0"),
            ("REDIS_URL", "http://redis"),
            ("SENTINEL_LOG", "loud"),
            ("SENTINEL_HEALTH_CHECKS", "maybe"),
            ("SENTINEL_HEADER_READ_TIMEOUT_MS", "0"),
            ("SENTINEL_BODY_READ_TIMEOUT_MS", "x"),
            ("SENTINEL_KEEPALIVE_IDLE_TIMEOUT_MS", "0"),
            ("SENTINEL_MAX_IN_FLIGHT", "0"),
            ("SENTINEL_SEND_TIMEOUT_MS", "0"),
            ("SENTINEL_MAX_CONNECTIONS", "0"),
            ("SENTINEL_MAX_HEADER_BYTES", "4096"),
            ("SENTINEL_CORS_ALLOWED_ORIGINS", "https://app.example/path"),
            ("SENTINEL_CORS_ALLOWED_ORIGINS", "*,https://app.example"),
            ("SENTINEL_CORS_ALLOWED_ORIGINS", "ftp://app.example"),
        ];
        for (name, value) in cases {
            let err = load(&[(name, value)], Cli::default()).unwrap_err();
            assert!(err.to_string().starts_with(name), "{name}: {err}");
        }
    }

    #[test]
    fn the_session_wait_is_bounded() {
        let s = load(&[], Cli::default()).unwrap();
        assert_eq!(s.session_wait, Duration::from_millis(50));
        let s = load(&[("SENTINEL_SESSION_WAIT_MS", "2000")], Cli::default()).unwrap();
        assert_eq!(s.session_wait, Duration::from_secs(2));
        for bad in ["0", "10001", "soon"] {
            let err = load(&[("SENTINEL_SESSION_WAIT_MS", bad)], Cli::default()).unwrap_err();
            assert!(
                err.to_string().starts_with("SENTINEL_SESSION_WAIT_MS"),
                "{err}"
            );
        }
    }

    #[test]
    fn redis_urls_of_every_deployment_are_taken() {
        for url in [
            "redis://127.0.0.1:6380",
            "rediss://cache.example:6380",
            "redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001",
            "rediss-cluster://127.0.0.1:7000",
            "redis-sentinel://127.0.0.1:26379?sentinelServiceName=main&node=127.0.0.1:26380",
            "rediss-sentinel://127.0.0.1:26379?sentinelServiceName=main",
        ] {
            let s = load(&[("REDIS_URL", url)], Cli::default()).unwrap();
            assert_eq!(s.redis_url.unwrap().expose(), url);
        }
    }

    #[test]
    fn redis_tls_files_are_read_and_checked_at_start_up() {
        let certs = sentinel_testkit::TestCerts::generate().unwrap();
        let path = |p: PathBuf| p.to_string_lossy().into_owned();
        let (ca, cert, key) = (
            path(certs.ca()),
            path(certs.client_cert()),
            path(certs.client_key()),
        );
        let tls = [("REDIS_URL", "rediss://:pw@127.0.0.1:6380")];
        let all = [
            tls[0],
            ("REDIS_TLS_CA_FILE", ca.as_str()),
            ("REDIS_TLS_CERT_FILE", cert.as_str()),
            ("REDIS_TLS_KEY_FILE", key.as_str()),
        ];
        let s = load(&all, Cli::default()).unwrap();
        assert!(s.redis_tls.has_client_certificate());
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("PRIVATE KEY") && !shown.contains(":pw@"),
            "{shown}"
        );

        // The files only mean something with a TLS URL.
        let plain = [("REDIS_URL", "redis://127.0.0.1:6380"), all[1]];
        let err = load(&plain, Cli::default()).unwrap_err().to_string();
        assert!(
            err.starts_with("REDIS_TLS_CA_FILE") && err.contains("TLS"),
            "{err}"
        );
        assert!(load(&[all[1]], Cli::default()).is_err());

        // Each file is checked, and the error names its variable; a key's
        // contents never appear in one.
        let missing = [tls[0], ("REDIS_TLS_CA_FILE", "/nonexistent/ca.pem")];
        let err = load(&missing, Cli::default()).unwrap_err().to_string();
        assert!(err.starts_with("REDIS_TLS_CA_FILE"), "{err}");
        let not_certs = [tls[0], ("REDIS_TLS_CA_FILE", key.as_str())];
        let err = load(&not_certs, Cli::default()).unwrap_err().to_string();
        assert!(err.starts_with("REDIS_TLS_CA_FILE"), "{err}");
        assert!(!err.contains("PRIVATE"), "{err}");
        let lone_cert = [tls[0], all[2]];
        let err = load(&lone_cert, Cli::default()).unwrap_err().to_string();
        assert!(err.starts_with("REDIS_TLS_KEY_FILE"), "{err}");
        let lone_key = [tls[0], all[3]];
        let err = load(&lone_key, Cli::default()).unwrap_err().to_string();
        assert!(err.starts_with("REDIS_TLS_CERT_FILE"), "{err}");
        let server_key = path(certs.server_key());
        let wrong_key = [tls[0], all[2], ("REDIS_TLS_KEY_FILE", server_key.as_str())];
        let err = load(&wrong_key, Cli::default()).unwrap_err().to_string();
        assert!(
            err.starts_with("REDIS_TLS_KEY_FILE") && err.contains("does not suit"),
            "{err}"
        );
        let swapped = [
            tls[0],
            ("REDIS_TLS_CERT_FILE", key.as_str()),
            ("REDIS_TLS_KEY_FILE", cert.as_str()),
        ];
        let err = load(&swapped, Cli::default()).unwrap_err().to_string();
        assert!(err.starts_with("REDIS_TLS_CERT_FILE"), "{err}");
        assert!(!err.contains("PRIVATE"), "{err}");
    }

    #[test]
    fn beyond_loopback_needs_keys_or_the_flag() {
        let err = load(&[("SENTINEL_LISTEN", "0.0.0.0:8080")], Cli::default()).unwrap_err();
        assert!(err.to_string().contains("--allow-unauthenticated"));
        assert!(
            load(
                &[
                    ("SENTINEL_LISTEN", "0.0.0.0:8080"),
                    ("SENTINEL_API_KEYS", "a,b")
                ],
                Cli::default()
            )
            .is_ok()
        );
        let cli = Cli {
            allow_unauthenticated: true,
            ..Cli::default()
        };
        assert!(load(&[("SENTINEL_LISTEN", "0.0.0.0:8080")], cli).is_ok());
    }

    #[test]
    fn client_limits_and_cors_have_defaults_and_read_the_environment() {
        let s = load(&[], Cli::default()).unwrap();
        assert_eq!(
            s.client,
            ClientLimits {
                header_read_timeout: Duration::from_secs(10),
                body_read_timeout: Duration::from_secs(30),
                keepalive_idle_timeout: Duration::from_secs(75),
                send_timeout: Duration::from_secs(30),
                max_connections: 20_000,
                max_in_flight: 10_000,
                max_header_bytes: 65_536,
            }
        );
        assert!(s.cors_origins.is_empty(), "CORS is off by default");
        let s = load(
            &[
                ("SENTINEL_HEADER_READ_TIMEOUT_MS", "1500"),
                ("SENTINEL_MAX_IN_FLIGHT", "7"),
                (
                    "SENTINEL_CORS_ALLOWED_ORIGINS",
                    " https://app.example , http://localhost:3000,",
                ),
            ],
            Cli::default(),
        )
        .unwrap();
        assert_eq!(s.client.header_read_timeout, Duration::from_millis(1500));
        assert_eq!(s.client.max_in_flight, 7);
        assert_eq!(
            s.cors_origins,
            ["https://app.example", "http://localhost:3000"]
        );
    }

    #[test]
    fn secrets_are_redacted() {
        let dir =
            std::env::temp_dir().join(format!("sentinel-settings-url-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "[providers.local]\nbase_url = \"https://puser:ppass@llm.example/v1\"\n",
        )
        .unwrap();
        let s = load(
            &[
                ("OPENAI_API_KEY", "sk-very-secret"),
                ("SENTINEL_API_KEYS", "in-1"),
                ("ZION_API_KEY", "z-secret"),
                ("ZION_URL", "https://zuser:zpass@zion.example"),
                ("REDIS_URL", "redis://:rpass@127.0.0.1:1"),
            ],
            Cli {
                config: Some(path),
                ..Cli::default()
            },
        )
        .unwrap();
        std::fs::remove_dir_all(dir).ok();
        let shown = format!("{s:?}");
        assert!(shown.contains("llm.example") && shown.contains("zion.example"));
        for secret in [
            "sk-very-secret",
            "in-1",
            "z-secret",
            "puser",
            "ppass",
            "zuser",
            "zpass",
            "rpass",
        ] {
            assert!(!shown.contains(secret), "{secret} leaked");
        }
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let dir =
            std::env::temp_dir().join(format!("sentinel-settings-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("b.toml");
        std::fs::write(&path, "lisen = \"127.0.0.1:1\"\n").unwrap();
        let err = load(
            &[],
            Cli {
                config: Some(path),
                ..Cli::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
        std::fs::remove_dir_all(dir).ok();
    }
}
