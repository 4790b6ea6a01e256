//! Where the routing layer gets its tier config from.
//!
//! The layer knows configs only through [`TierConfigSource`]: the Zion
//! cache implements it, and so does [`StaticConfig`] for a fixed mapping
//! (the proxy's built-in tiers, tests). The trait is runtime-agnostic: a
//! source returns a boxed future, and may offer a synchronous fast path,
//! [`TierConfigSource::cached`], that the layer tries first so that a warm
//! cache costs one atomic load and no allocation.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use sentinel_core::source::{StaticConfig, TierConfigSource};
//! use sentinel_core::{RawTierConfig, TierConfig};
//!
//! let raw: RawTierConfig = serde_json::from_str(r#"{ "tiers": { "simple": { "models": [
//!     { "provider": "openai", "model": "gpt-4o-mini", "relative_cost": 1 } ] } } }"#)?;
//! let source = StaticConfig::new(TierConfig::validate(raw)?);
//! let config = source.cached().expect("a static config is always at hand");
//! assert_eq!(config.models().count(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::future::{self, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::config::TierConfig;

/// The future a [`TierConfigSource`] returns.
pub type ConfigFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Arc<TierConfig>, ConfigUnavailable>> + Send + 'a>>;

/// A provider of validated tier configs.
pub trait TierConfigSource: Send + Sync + 'static {
    /// The current config, fetching or refreshing it as needed.
    fn load(&self) -> ConfigFuture<'_>;

    /// The current config when it is at hand without waiting (a warm
    /// cache); `None` sends the caller to [`load`](Self::load). The default
    /// is always `None`.
    fn cached(&self) -> Option<Arc<TierConfig>> {
        None
    }

    /// Where the config at hand came from, how old it is and whether it is
    /// past its TTL, for an operator; `None` when the source does not say
    /// (the default) or holds no config.
    fn status(&self) -> Option<SourceStatus> {
        None
    }
}

/// Where a tier config in use came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigOrigin {
    /// Fetched from Zion by this process.
    Zion,
    /// Read from the shared store (another replica fetched it from Zion).
    Store,
    /// A configuration file.
    File,
    /// Built into the program.
    Builtin,
}

/// What a source says of the config it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceStatus {
    /// Where it came from.
    pub origin: ConfigOrigin,
    /// How long ago Zion produced it; `None` for a config that does not age
    /// (a file, the built-in one).
    pub age: Option<Duration>,
    /// Past its TTL: served while refreshing it fails.
    pub stale: bool,
}

impl<T: TierConfigSource + ?Sized> TierConfigSource for Arc<T> {
    fn load(&self) -> ConfigFuture<'_> {
        (**self).load()
    }

    fn cached(&self) -> Option<Arc<TierConfig>> {
        (**self).cached()
    }

    fn status(&self) -> Option<SourceStatus> {
        (**self).status()
    }
}

/// A fixed tier config.
#[derive(Debug, Clone)]
pub struct StaticConfig(Arc<TierConfig>, Option<ConfigOrigin>);

impl StaticConfig {
    /// A source that always answers `config`.
    pub fn new(config: impl Into<Arc<TierConfig>>) -> Self {
        StaticConfig(config.into(), None)
    }

    /// Says where the config came from ([`TierConfigSource::status`]).
    pub fn origin(mut self, origin: ConfigOrigin) -> Self {
        self.1 = Some(origin);
        self
    }
}

impl TierConfigSource for StaticConfig {
    fn load(&self) -> ConfigFuture<'_> {
        Box::pin(future::ready(Ok(self.0.clone())))
    }

    fn cached(&self) -> Option<Arc<TierConfig>> {
        Some(self.0.clone())
    }

    fn status(&self) -> Option<SourceStatus> {
        self.1.map(|origin| SourceStatus {
            origin,
            age: None,
            stale: false,
        })
    }
}

/// No tier config can be had right now (Zion unreachable and nothing cached).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigUnavailable {
    retry_after: Duration,
    reason: String,
}

impl ConfigUnavailable {
    /// An error that suggests retrying after `retry_after`; `reason` is
    /// logged and shown to clients, so it must hold no secret.
    pub fn new(retry_after: Duration, reason: impl Into<String>) -> Self {
        ConfigUnavailable {
            retry_after,
            reason: reason.into(),
        }
    }

    /// How long a client should wait before trying again.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// Why no config is available.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for ConfigUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tier config unavailable: {}", self.reason)
    }
}

impl std::error::Error for ConfigUnavailable {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RawTierConfig, RawTiers};
    use std::task::{Context, Poll, Waker};

    #[test]
    fn static_config_answers_at_once_through_both_paths() {
        let config = TierConfig::validate(RawTierConfig {
            version: Some("v1".into()),
            tiers: RawTiers::default(),
        })
        .unwrap();
        let source: Arc<dyn TierConfigSource> = Arc::new(StaticConfig::new(config));
        assert_eq!(source.cached().unwrap().version(), Some("v1"));
        let mut fut = source.load();
        let mut cx = Context::from_waker(Waker::noop());
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(c)) => assert_eq!(c.version(), Some("v1")),
            other => panic!("expected a ready config, got {other:?}"),
        }
    }

    #[test]
    fn config_unavailable_carries_retry_after_and_reason() {
        let e = ConfigUnavailable::new(Duration::from_secs(5), "zion: timed out");
        assert_eq!(e.retry_after(), Duration::from_secs(5));
        assert_eq!(e.to_string(), "tier config unavailable: zion: timed out");
    }
}
