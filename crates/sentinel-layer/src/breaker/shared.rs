//! The open state of model breakers, shared across replicas through Redis.
//!
//! When a model's breaker opens, the replica writes
//! `{prefix}breaker:{provider}/{model}` with `PX` = the wait. Every replica
//! reads the keys of the models in its current config every
//! [`SYNC_INTERVAL`] (one pipelined round trip) and treats a present key as
//! an open breaker until it expires, so all replicas stop sending to a
//! failing model within a second of the first opening. A replica that
//! closes the breaker (its probe succeeded) deletes the key. With Redis
//! down, each replica keeps its own state.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use fred::clients::Pool;
use fred::interfaces::KeysInterface;
use fred::types::Expiration;
use tokio::time::Instant;

use super::state::Breakers;
use crate::metrics as m;

/// How often a replica reads the shared open state.
pub(crate) const SYNC_INTERVAL: Duration = Duration::from_millis(250);

/// Where the shared open state lives.
#[derive(Clone)]
pub(crate) struct SharedOpenState {
    pool: Pool,
    prefix: Arc<str>,
}

impl fmt::Debug for SharedOpenState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedOpenState")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn fallback(op: &'static str, e: &fred::error::Error) {
    ::metrics::counter!(m::REDIS_FALLBACKS, "component" => "breakers").increment(1);
    tracing::debug!(op, error = %e.details(), "shared breaker state unavailable");
}

impl SharedOpenState {
    pub(crate) fn new(pool: Pool, prefix: &str) -> Self {
        SharedOpenState {
            pool,
            prefix: prefix.into(),
        }
    }

    fn key(&self, provider: &str, model: &str) -> String {
        format!("{}breaker:{provider}/{model}", self.prefix)
    }

    /// Writes the open state, in the background.
    pub(crate) fn publish_open(&self, provider: &str, model: &str, wait: Duration) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let key = self.key(provider, model);
        let pool = self.pool.clone();
        let ms = i64::try_from(wait.as_millis().max(1)).unwrap_or(i64::MAX);
        runtime.spawn(async move {
            let result: Result<(), _> = pool
                .set(key, "1", Some(Expiration::PX(ms)), None, false)
                .await;
            if let Err(e) = result {
                fallback("publish_open", &e);
            }
        });
    }

    /// Deletes the open state, in the background.
    pub(crate) fn publish_closed(&self, provider: &str, model: &str) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let key = self.key(provider, model);
        let pool = self.pool.clone();
        runtime.spawn(async move {
            let result: Result<i64, _> = pool.del(key).await;
            if let Err(e) = result {
                fallback("publish_closed", &e);
            }
        });
    }

    /// Reads the open state of `models` and applies it to `breakers`.
    pub(crate) async fn sync(&self, breakers: &Breakers, models: &[(Arc<str>, Arc<str>)]) {
        if models.is_empty() {
            return;
        }
        let pipeline = self.pool.next().pipeline();
        for (provider, model) in models {
            let queued: Result<(), _> = pipeline.pttl(self.key(provider, model)).await;
            if let Err(e) = queued {
                fallback("sync", &e);
                return;
            }
        }
        let ttls: Vec<i64> = match pipeline.all().await {
            Ok(ttls) => ttls,
            Err(e) => {
                fallback("sync", &e);
                return;
            }
        };
        let now = Instant::now();
        for ((provider, model), ttl) in models.iter().zip(ttls) {
            if ttl > 0 {
                let until = now + Duration::from_millis(ttl.unsigned_abs());
                breakers.open_remotely(provider, model, until);
            } else {
                breakers.close_remote(provider, model);
            }
        }
    }
}
