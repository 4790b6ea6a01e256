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
    /// A client with its own connection pool (see [`sentinel_net::http_client`]).
    pub fn new(settings: ZionSettings) -> Result<Self, ZionError> {
        let http = sentinel_net::http_client(settings.connect_timeout)
            .map_err(|e| ZionError::new(ZionErrorKind::Client, e.to_string()))?;
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
        decode(&body)
    }
}

/// Decodes and validates a response body: `NotJson` when it is not JSON,
/// `InvalidConfig` when it breaks the contract or a validation rule.
fn decode(body: &[u8]) -> Result<TierConfig, ZionError> {
    let raw: RawTierConfig = serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            // serde's data errors quote the document's strings in full
            // (`invalid type: string "..."`): keep the message short, as it
            // goes to the logs and into 503 answers.
            ZionError::new(
                ZionErrorKind::InvalidConfig,
                format!(
                    "the tier config does not match the contract: {}",
                    capped(e.to_string(), MAX_DETAIL_CHARS)
                ),
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

/// The most characters of a decoding error's detail kept in a message.
const MAX_DETAIL_CHARS: usize = 200;

/// `message` cut to `max_chars` characters, with `…` when cut.
fn capped(message: String, max_chars: usize) -> String {
    match message.char_indices().nth(max_chars) {
        None => message,
        Some((at, _)) => format!("{}…", &message[..at]),
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use sentinel_testkit::hostile::{config, mutated};

    /// The longest message `decode` may answer with, in bytes: its own text,
    /// a capped detail, or the core's `ConfigError` (names cut to 64
    /// characters each).
    const MAX_MESSAGE_BYTES: usize = 1024;

    /// `decode` must be the core's decoding and validation, with failures
    /// sorted into not JSON (syntax, end of input) and invalid config (shape
    /// or rules), and messages of bounded size.
    fn check_decode(body: &[u8]) -> Result<(), TestCaseError> {
        let got = decode(body);
        if let Err(e) = &got {
            let message = e.to_string();
            prop_assert!(!message.is_empty());
            prop_assert!(
                message.len() <= MAX_MESSAGE_BYTES,
                "{} bytes: {}",
                message.len(),
                message
            );
        }
        match (got, serde_json::from_slice::<RawTierConfig>(body)) {
            (Ok(config), Ok(raw)) => {
                prop_assert_eq!(
                    Ok(config),
                    TierConfig::validate(raw).map_err(|e| e.to_string())
                );
            }
            (Err(e), Ok(raw)) => {
                prop_assert_eq!(e.kind(), ZionErrorKind::InvalidConfig);
                prop_assert!(TierConfig::validate(raw).is_err());
            }
            (Err(e), Err(de)) => {
                let kind = if de.is_data() {
                    ZionErrorKind::InvalidConfig
                } else {
                    ZionErrorKind::NotJson
                };
                prop_assert_eq!(e.kind(), kind, "{}", e);
            }
            (Ok(config), Err(de)) => {
                prop_assert!(false, "accepted {:?} that serde rejects: {}", config, de);
            }
        }
        Ok(())
    }

    /// A value of any JSON type, leaning to the ones the contract uses.
    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (-3i64..14).prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("JSON numbers are finite", |f| f.is_finite())
                .prop_map(Value::from),
            prop::sample::select(vec!["openai", "anthropic", "m", "", " "]).prop_map(Value::from),
            any::<String>().prop_map(Value::from),
            Just(json!([])),
            Just(json!({})),
        ]
    }

    /// A field's value: the right kind mostly, any leaf sometimes, or absent.
    fn field(good: impl Strategy<Value = Value>) -> impl Strategy<Value = Option<Value>> {
        prop_oneof![
            8 => good.prop_map(Some),
            1 => leaf().prop_map(Some),
            1 => Just(None),
        ]
    }

    fn model() -> impl Strategy<Value = Value> {
        let name = || {
            prop::sample::select(vec!["openai", "anthropic", "gpt-4o-mini", "o3"])
                .prop_map(Value::from)
        };
        let price = || prop_oneof![(0.0f64..10.0).prop_map(Value::from), leaf()];
        let pricing = (price(), price())
            .prop_map(|(i, o)| json!({ "input_per_mtok_usd": i, "output_per_mtok_usd": o }));
        (
            field(name()),
            field(name()),
            field((1i64..=10).prop_map(Value::from)),
            field(pricing),
            field((0u64..1_000_000).prop_map(Value::from)),
        )
            .prop_map(|(provider, model, cost, pricing, window)| {
                let mut m = serde_json::Map::new();
                for (key, value) in [
                    ("provider", provider),
                    ("model", model),
                    ("relative_cost", cost),
                    ("pricing", pricing),
                    ("context_window", window),
                ] {
                    if let Some(value) = value {
                        m.insert(key.into(), value);
                    }
                }
                Value::Object(m)
            })
    }

    /// A document: known and unknown tiers of random models, or any leaf.
    fn document() -> impl Strategy<Value = Vec<u8>> {
        let tier =
            prop::collection::vec(model(), 0..4).prop_map(|models| json!({ "models": models }));
        let tiers = prop::collection::btree_map(
            prop::sample::select(vec!["simple", "moderate", "complex", "ultra", "Simple"]),
            prop_oneof![8 => tier, 1 => leaf()],
            0..4,
        )
        .prop_map(|tiers| Value::Object(tiers.into_iter().map(|(k, v)| (k.into(), v)).collect()));
        prop_oneof![
            12 => (field(any::<String>().prop_map(Value::from)), field(tiers)).prop_map(
                |(version, tiers)| {
                    let mut doc = serde_json::Map::new();
                    if let Some(version) = version {
                        doc.insert("version".into(), version);
                    }
                    if let Some(tiers) = tiers {
                        doc.insert("tiers".into(), tiers);
                    }
                    serde_json::to_vec(&Value::Object(doc)).unwrap()
                }
            ),
            1 => leaf().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        ]
    }

    /// A contract error over a document holding `long` where a number or a
    /// string belongs, as Zion might send by mistake.
    fn long_value_documents(long: &str) -> [Value; 4] {
        let model = |cost: Value, provider: Value| {
            json!({ "tiers": { "simple": { "models": [
                { "provider": provider, "model": "m", "relative_cost": cost }
            ] } } })
        };
        [
            model(Value::from(long), Value::from("openai")),
            model(Value::from(1), json!([long])),
            json!({ "tiers": { "moderate": long } }),
            json!({ "version": [long], "tiers": {} }),
        ]
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn decode_of_arbitrary_bytes_is_the_cores_reading(
            body in prop::collection::vec(any::<u8>(), 0..1024),
        ) {
            check_decode(&body)?;
        }

        #[test]
        fn decode_of_documents_is_the_cores_reading(
            body in prop_oneof![3 => document(), 2 => mutated(document())],
        ) {
            check_decode(&body)?;
        }

        /// A long string in the wrong place is not echoed in full, however
        /// long (the body cap is 1 MiB).
        #[test]
        fn decode_errors_do_not_echo_long_document_strings(
            long in "[a-zA-Z0-9]{201,3000}",
        ) {
            for doc in long_value_documents(&long) {
                let body = serde_json::to_vec(&doc).unwrap();
                let err = decode(&body).unwrap_err();
                prop_assert_eq!(err.kind(), ZionErrorKind::InvalidConfig);
                prop_assert!(!err.to_string().contains(&long), "{}", err);
                check_decode(&body)?;
            }
        }
    }

    /// Found by `decode_errors_do_not_echo_long_document_strings`: serde's
    /// `invalid type: string "..."` quoted a string of the document in
    /// full, so a 1 MiB string where a number belongs made a 1 MiB error
    /// message, logged and answered in the 503 of every request until a
    /// good config came.
    #[test]
    fn regression_contract_error_of_a_huge_string_is_short() {
        let long = "x".repeat(1 << 20);
        for doc in long_value_documents(&long) {
            let err = decode(&serde_json::to_vec(&doc).unwrap()).unwrap_err();
            assert_eq!(err.kind(), ZionErrorKind::InvalidConfig);
            let message = err.to_string();
            assert!(
                message.len() <= MAX_MESSAGE_BYTES,
                "{} bytes",
                message.len()
            );
            assert!(
                message.starts_with("the tier config does not match the contract: invalid type"),
                "{message}"
            );
        }
    }

    #[test]
    fn capped_cuts_on_characters() {
        assert_eq!(capped("abc".into(), 3), "abc");
        assert_eq!(capped("abcd".into(), 3), "abc…");
        assert_eq!(capped("ééé".into(), 2), "éé…");
        assert_eq!(capped(String::new(), 0), "");
    }
}
