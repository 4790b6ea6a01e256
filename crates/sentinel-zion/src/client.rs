//! The Zion client: `GET {base}/api/v1/tiers/config`, validated.
//!
//! [`ZionClient::get_tier_config`] sends the bearer key, bounds the connect
//! and total time, caps the response size, decodes the JSON and validates
//! it with the core's rules. Each failure is a [`ZionError`] whose
//! [`kind`](ZionError::kind) says what went wrong; neither the error, its
//! `Debug` form nor any log line holds the key.
//!
//! # Example
//!
//! ```no_run
//! use sentinel_zion::{ZionClient, ZionSettings};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let settings = ZionSettings::new("https://zion.internal")
//!     .api_key(std::env::var("ZION_API_KEY")?);
//! let zion = ZionClient::new(settings)?;
//! let config = zion.get_tier_config().await?;
//! println!("{} models", config.models().count());
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::time::{Duration, Instant};

use http::{HeaderValue, StatusCode, header};
use sentinel_core::{RawTierConfig, TierConfig};

use crate::metrics as m;

/// The path of the tier-config endpoint under the Zion base URL.
pub const TIER_CONFIG_PATH: &str = "/api/v1/tiers/config";

/// How to reach Zion.
#[derive(Clone)]
pub struct ZionSettings {
    base_url: String,
    api_key: Option<String>,
    connect_timeout: Duration,
    timeout: Duration,
    max_body_bytes: usize,
}

impl ZionSettings {
    /// Default connect timeout: 2 s.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    /// Default total timeout (connect, headers and body): 5 s.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
    /// Default response-size cap: 1 MiB.
    pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

    /// Settings for the Zion service at `base_url` (`https://zion.internal`),
    /// with no key and the default limits.
    pub fn new(base_url: impl Into<String>) -> Self {
        ZionSettings {
            base_url: base_url.into(),
            api_key: None,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            timeout: Self::DEFAULT_TIMEOUT,
            max_body_bytes: Self::DEFAULT_MAX_BODY_BYTES,
        }
    }

    /// The bearer token sent to Zion.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// The connect timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The total timeout of one fetch, body included.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The largest response body accepted.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// The total timeout of one fetch.
    pub fn total_timeout(&self) -> Duration {
        self.timeout
    }
}

impl fmt::Debug for ZionSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZionSettings")
            .field(
                "base_url",
                &sentinel_core::redact::redact_url(&self.base_url),
            )
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish()
    }
}

/// The TLS settings of Sentinel's HTTP clients: rustls with the webpki
/// roots and the `ring` crypto provider passed explicitly (the only provider
/// in the build, so nothing depends on a process-wide default). No ALPN
/// protocols: each client sets its own.
pub fn tls_config() -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A pooled HTTP client with [`tls_config`], HTTP/1.1 and HTTP/2 by ALPN.
pub fn http_client(connect_timeout: Duration) -> Result<reqwest::Client, String> {
    let mut tls = tls_config()?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
        .map_err(|e| format!("HTTP client set-up failed: {e}"))
}

/// A client for Zion's tier-config endpoint.
#[derive(Clone)]
pub struct ZionClient {
    http: reqwest::Client,
    url: String,
    auth: Option<HeaderValue>,
    timeout: Duration,
    max_body_bytes: usize,
}

impl fmt::Debug for ZionClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZionClient")
            .field("url", &sentinel_core::redact::redact_url(&self.url))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ZionClient {
    /// A client with its own connection pool (see [`http_client`]).
    pub fn new(settings: ZionSettings) -> Result<Self, ZionError> {
        let http = http_client(settings.connect_timeout)
            .map_err(|e| ZionError::new(ZionErrorKind::Client, e))?;
        Self::with_http_client(http, settings)
    }

    /// A client over an existing `reqwest` client (to share its pool or its
    /// TLS set-up). The connect timeout is then the given client's; the total
    /// timeout and the size cap still apply.
    pub fn with_http_client(
        http: reqwest::Client,
        settings: ZionSettings,
    ) -> Result<Self, ZionError> {
        let base = settings.base_url.trim_end_matches('/');
        let url = format!("{base}{TIER_CONFIG_PATH}");
        let parsed = reqwest::Url::parse(&url).map_err(|_| {
            ZionError::new(
                ZionErrorKind::Client,
                "the Zion URL is not a valid http(s) URL",
            )
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ZionError::new(
                ZionErrorKind::Client,
                "the Zion URL must start with http:// or https://",
            ));
        }
        let auth = match settings.api_key {
            None => None,
            Some(key) => {
                let mut value = HeaderValue::try_from(format!("Bearer {key}")).map_err(|_| {
                    ZionError::new(
                        ZionErrorKind::Client,
                        "the Zion API key holds characters that cannot go into a header",
                    )
                })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(ZionClient {
            http,
            url,
            auth,
            timeout: settings.timeout,
            max_body_bytes: settings.max_body_bytes,
        })
    }

    /// The total timeout of one fetch.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Fetches and validates the tier config. Records the
    /// `sentinel_zion_fetches_total` and `sentinel_zion_fetch_duration_seconds` metrics.
    pub async fn get_tier_config(&self) -> Result<TierConfig, ZionError> {
        let started = Instant::now();
        let result = self.fetch().await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.kind.as_label(),
        };
        ::metrics::counter!(m::ZION_FETCHES, "outcome" => outcome).increment(1);
        ::metrics::histogram!(m::ZION_FETCH_DURATION).record(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            tracing::warn!(error = %e, "tier config fetch from Zion failed");
        }
        result
    }

    async fn fetch(&self) -> Result<TierConfig, ZionError> {
        let mut request = self
            .http
            .get(&self.url)
            .timeout(self.timeout)
            .header(header::ACCEPT, "application/json");
        if let Some(auth) = &self.auth {
            request = request.header(header::AUTHORIZATION, auth.clone());
        }
        let mut response = request.send().await.map_err(ZionError::from_reqwest)?;
        let status = response.status();
        if !status.is_success() {
            return Err(ZionError::new(
                ZionErrorKind::Status(status),
                format!("Zion answered {status}"),
            ));
        }
        let limit = self.max_body_bytes;
        if response.content_length().is_some_and(|n| n > limit as u64) {
            return Err(ZionError::too_large(limit));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(ZionError::from_reqwest)? {
            if body.len() + chunk.len() > limit {
                return Err(ZionError::too_large(limit));
            }
            body.extend_from_slice(&chunk);
        }
        let raw: RawTierConfig = serde_json::from_slice(&body).map_err(|e| {
            if e.is_data() {
                ZionError::new(
                    ZionErrorKind::InvalidConfig,
                    format!("the tier config does not match the contract: {e}"),
                )
            } else {
                ZionError::new(
                    ZionErrorKind::NotJson,
                    format!("the response is not JSON: {e}"),
                )
            }
        })?;
        TierConfig::validate(raw).map_err(|e| {
            ZionError::new(
                ZionErrorKind::InvalidConfig,
                format!("invalid tier config: {e}"),
            )
        })
    }
}

/// What went wrong with a Zion fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ZionErrorKind {
    /// The client could not be built (bad URL, bad key characters).
    Client,
    /// Zion could not be reached (connection refused, reset, DNS).
    Unreachable,
    /// The connect or total timeout passed.
    Timeout,
    /// Zion answered with a non-2xx status.
    Status(StatusCode),
    /// The response was larger than the cap.
    TooLarge,
    /// The response was not JSON.
    NotJson,
    /// The JSON broke the contract or a validation rule.
    InvalidConfig,
}

impl ZionErrorKind {
    /// The `outcome` label of the fetch metric.
    pub fn as_label(self) -> &'static str {
        match self {
            ZionErrorKind::Client => "client_error",
            ZionErrorKind::Unreachable => "unreachable",
            ZionErrorKind::Timeout => "timeout",
            ZionErrorKind::Status(_) => "status",
            ZionErrorKind::TooLarge => "too_large",
            ZionErrorKind::NotJson => "not_json",
            ZionErrorKind::InvalidConfig => "invalid_config",
        }
    }
}

/// A failed Zion fetch. Its message names the failure and never the key.
#[derive(Debug, Clone)]
pub struct ZionError {
    kind: ZionErrorKind,
    message: String,
}

impl ZionError {
    fn new(kind: ZionErrorKind, message: impl Into<String>) -> Self {
        ZionError {
            kind,
            message: message.into(),
        }
    }

    fn too_large(limit: usize) -> Self {
        ZionError::new(
            ZionErrorKind::TooLarge,
            format!("the response is larger than {limit} bytes"),
        )
    }

    fn from_reqwest(e: reqwest::Error) -> Self {
        // reqwest's message names the URL; the key travels in a header, so
        // the URL is safe, but keep the text to the failure itself.
        if e.is_timeout() {
            ZionError::new(ZionErrorKind::Timeout, "Zion did not answer in time")
        } else if e.is_connect() {
            ZionError::new(ZionErrorKind::Unreachable, "Zion could not be reached")
        } else {
            ZionError::new(
                ZionErrorKind::Unreachable,
                "the connection to Zion failed before the response was complete",
            )
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> ZionErrorKind {
        self.kind
    }
}

impl fmt::Display for ZionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ZionError {}
