//! Metric names recorded by this crate (through the `metrics` facade).
//!
//! | name | type | labels | meaning |
//! | --- | --- | --- | --- |
//! | `sentinel_tier_config_lookups_total` | counter | `result`: `local_hit`, `backend_hit`, `miss`, `stale` | config lookups by where the config came from: the process's snapshot, the shared backend, Zion (or nowhere), or an expired snapshot served while refreshes fail |
//! | `sentinel_zion_fetches_total` | counter | `outcome`: `ok`, `unreachable`, `timeout`, `status`, `too_large`, `not_json`, `invalid_config`, `client_error` | tier-config fetches from Zion |
//! | `sentinel_zion_fetch_duration_seconds` | histogram | | time of one Zion fetch, failures included |
//! | `sentinel_redis_errors_total` | counter | `component`: `tier_config`; `op`: `get`, `set`, `lock`, `unlock` | Redis commands that failed or timed out (the request went on without Redis) |
//! | `sentinel_tier_config_age_seconds` | gauge | | age of the config in use, since it was fetched from Zion |
//! | `sentinel_tier_config_store_invalid_total` | counter | | configs read from the shared backend that failed validation (ignored) |
//!
//! Call [`describe`] once after installing a recorder to attach the help texts.

/// Cache lookups by result.
pub const TIER_CONFIG_LOOKUPS: &str = "sentinel_tier_config_lookups_total";
/// Zion fetches by outcome.
pub const ZION_FETCHES: &str = "sentinel_zion_fetches_total";
/// Zion fetch latency.
pub const ZION_FETCH_DURATION: &str = "sentinel_zion_fetch_duration_seconds";
/// Redis errors by component and operation.
pub const REDIS_ERRORS: &str = "sentinel_redis_errors_total";
/// Age of the config in use.
pub const TIER_CONFIG_AGE: &str = "sentinel_tier_config_age_seconds";
/// Invalid configs found in the shared backend.
pub const TIER_CONFIG_STORE_INVALID: &str = "sentinel_tier_config_store_invalid_total";

/// Registers the help text of every metric above with the installed recorder.
pub fn describe() {
    use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        TIER_CONFIG_LOOKUPS,
        "Tier-config lookups by result (local_hit, backend_hit, miss, stale)."
    );
    describe_counter!(ZION_FETCHES, "Tier-config fetches from Zion by outcome.");
    describe_histogram!(
        ZION_FETCH_DURATION,
        Unit::Seconds,
        "Duration of tier-config fetches from Zion."
    );
    describe_counter!(
        REDIS_ERRORS,
        "Redis commands that failed or timed out, by component and operation."
    );
    describe_gauge!(
        TIER_CONFIG_AGE,
        Unit::Seconds,
        "Age of the tier config in use, since it was fetched from Zion."
    );
    describe_counter!(
        TIER_CONFIG_STORE_INVALID,
        "Tier configs read from the shared backend that failed validation."
    );
}
