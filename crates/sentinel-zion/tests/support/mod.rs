//! Shared helpers of the cache tests.

#![allow(dead_code)] // each test file uses a different part

use std::sync::Arc;
use std::time::Duration;

use sentinel_testkit::MockZion;
use sentinel_zion::{ConfigStore, TierConfigCache, ZionClient, ZionSettings};
use serde_json::{Value, json};

/// A Zion client with short timeouts, so fault tests stay quick.
pub(crate) fn zion_client(zion: &MockZion, timeout: Duration) -> ZionClient {
    ZionClient::new(
        ZionSettings::new(zion.url())
            .api_key("test-key")
            .connect_timeout(Duration::from_millis(500))
            .timeout(timeout),
    )
    .unwrap()
}

pub(crate) fn cache(
    zion: &MockZion,
    ttl: Duration,
    store: Arc<dyn ConfigStore>,
    timeout: Duration,
) -> TierConfigCache {
    TierConfigCache::builder(zion_client(zion, timeout))
        .ttl(ttl)
        .shared_store(store)
        .build()
        .unwrap()
}

/// The default mock config with another version label.
pub(crate) fn config_version(version: &str) -> Value {
    let mut config = sentinel_testkit::zion::default_config();
    config["version"] = json!(version);
    config
}
