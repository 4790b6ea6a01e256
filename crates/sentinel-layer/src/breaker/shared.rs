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
use tokio::time::Instant;

use crate::bounded_redis::{BoundedRedis, guarded_script};
use crate::metrics as m;

/// How often a replica reads the shared open state.
pub(crate) const SYNC_INTERVAL: Duration = Duration::from_millis(250);

/// Opens (`ARGV[2]` = the wait in ms) or closes (`ARGV[2]` = '') the
/// shared state of the model at KEYS[1], unless past the deadline in
/// `ARGV[1]`. Returns `{now, 1}`.
const PUBLISH: &str = guarded_script!(
    r#"
if ARGV[2] ~= '' then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
else
  redis.call('DEL', KEYS[1])
end
return {now, 1}
"#
);

/// Where the shared open state lives. Every command has the timeout given
/// to [`new`](Self::new) (the layer's session wait), and a publication
/// given up never takes effect later (see [`crate::bounded_redis`]).
#[derive(Clone)]
pub(crate) struct SharedOpenState {
    redis: BoundedRedis,
    prefix: Arc<str>,
}

impl fmt::Debug for SharedOpenState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedOpenState")
            .field("prefix", &self.prefix)
            .field("timeout", &self.redis.timeout())
            .finish_non_exhaustive()
    }
}

fn fallback(op: &'static str, e: &fred::error::Error) {
    ::metrics::counter!(m::REDIS_FALLBACKS, "component" => "breakers").increment(1);
    tracing::debug!(op, error = %e.details(), "shared breaker state unavailable");
}

impl SharedOpenState {
    /// Shared state under `{prefix}breaker:`, each command given up after
    /// `timeout`.
    pub(crate) fn new(pool: Pool, prefix: &str, timeout: Duration) -> Self {
        SharedOpenState {
            redis: BoundedRedis::new(pool, timeout, "breakers"),
            prefix: prefix.into(),
        }
    }

    fn key(&self, provider: &str, model: &str) -> String {
        format!("{}breaker:{provider}/{model}", self.prefix)
    }

    /// Writes the open state, in the background.
    pub(crate) fn publish_open(&self, provider: &str, model: &str, wait: Duration) {
        let ms = wait.as_millis().max(1).to_string();
        self.publish("publish_open", self.key(provider, model), ms);
    }

    /// Deletes the open state, in the background.
    pub(crate) fn publish_closed(&self, provider: &str, model: &str) {
        self.publish("publish_closed", self.key(provider, model), String::new());
    }

    fn publish(&self, op: &'static str, key: String, wait_ms: String) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let redis = self.redis.clone();
        runtime.spawn(async move {
            // A late publication did nothing; the next sync reads the truth.
            if let Err(e) = redis.eval(PUBLISH, key, vec![wait_ms]).await {
                fallback(op, &e);
            }
        });
    }

    /// Reads the open state of `models`: for each, until when another
    /// replica opened it (`None`: closed). `None` when Redis did not answer
    /// (or there is no config yet: then it learns Redis's clock meanwhile,
    /// so that the first opening goes out in one round trip).
    pub(crate) async fn read_open(
        &self,
        models: &[(Arc<str>, Arc<str>)],
    ) -> Option<Vec<Option<Instant>>> {
        if models.is_empty() {
            if !self.redis.knows_the_clock()
                && let Err(e) = self.redis.calibrate().await
            {
                fallback("sync", &e);
            }
            return None;
        }
        let keys = models.iter().map(|(p, m)| self.key(p, m)).collect();
        let ttls = match self.redis.pttl_many(keys).await {
            Ok(ttls) => ttls,
            Err(e) => {
                fallback("sync", &e);
                return None;
            }
        };
        let now = Instant::now();
        Some(
            ttls.into_iter()
                .map(|ttl| (ttl > 0).then(|| now + Duration::from_millis(ttl.unsigned_abs())))
                .collect(),
        )
    }
}
