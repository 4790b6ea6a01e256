//! Redis commands that give up together with their caller.
//!
//! The session store and the shared breakers send every command through
//! [`BoundedRedis`], so that a command the layer stopped waiting for never
//! takes effect later: not after a Redis that hung (`SIGSTOP`, a long fork,
//! a saturated host) comes back, nor after a reconnection.
//!
//! fred alone cannot promise that. Its per-command timeout keeps a command
//! from being *written* when it elapses while the command is still queued,
//! but a command already written stays in the socket buffers, and a Redis
//! that resumes executes everything it finds there ("there's no reliable
//! mechanism to cancel a command once it has been written to the
//! connection", fred's `Options::timeout`). Measured: of 8 800 session
//! scripts sent to a Redis stopped for 10 s, each given up after 50 ms, all
//! ran when it resumed, and the process grew by 12 MiB over the last 7 s;
//! with the bounds below none ran (the ~190 written in the first second
//! reached Redis late and did nothing) and it grew by 0. So each command
//! gets three bounds:
//!
//! 1. **fred options**: its own timeout (the layer's session wait), one
//!    write attempt (never replayed after a reconnection) and fail fast (it
//!    fails at once while the connection is down, instead of queueing).
//! 2. **A deadline checked by Redis.** A script that writes takes, as its
//!    first argument, a deadline in Redis's clock (milliseconds since the
//!    epoch) and compares it with `TIME` before doing anything: arriving
//!    late, it changes nothing and answers only the time. The deadline is
//!    the local send time plus the timeout plus the offset of Redis's clock
//!    from ours, learned from the time every reply carries. The sample
//!    (Redis's time at execution minus our time at sending) is never below
//!    the true offset, so a command executed within its timeout is never
//!    dropped; it may overstate the offset by one round trip (less than the
//!    timeout), so a late command is dropped once it is later than about
//!    twice the timeout. The first command learns the offset with a `TIME`
//!    first; a command found late while its caller still waits (a clock
//!    step) is tried once more with the estimate its reply brought.
//! 3. **Stalled connections are replaced.** When a command is given up, the
//!    connection it went to is probed with a `PING` (1 s timeout). A
//!    connection that does not answer is closed and reopened: commands stop
//!    piling up in fred's in-flight buffer (memory stays bounded), and while
//!    it reconnects (fred answers `PING` before it counts as connected)
//!    commands fail at once. fred's own unresponsive-connection check does
//!    not help under load: it measures from the *latest* write. (A Redis
//!    busy for over a second, a long script say, counts as stalled too: it
//!    costs a reconnection.)
//!
//! The scripts call `TIME` before writing, which needs Redis 5 or later
//! (scripts replicated by their effects).
//!
//! The read-only breaker sync is a pipeline of `PTTL`s (so it works on a
//! cluster): it has the fred options but no deadline, as a late read
//! changes nothing; it starts with a `TIME`, which keeps the estimate of
//! Redis's clock fresh for the breakers' rare writes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fred::clients::{Client, Pool};
use fred::error::{Error, ErrorKind};
use fred::interfaces::{ClientLike, KeysInterface};
use fred::types::config::Options;
use fred::types::{ClusterHash, CustomCommand, Value};

use crate::metrics as m;

/// How long a probed connection has to answer `PING`.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a probe waits for the reconnection it asked for.
const RECONNECT_WAIT: Duration = Duration::from_secs(5);
/// The offset before the first reply: unknown.
const UNKNOWN: i64 = i64::MIN;

/// The Lua that starts every guarded script: `now` is Redis's time in ms;
/// past the deadline in `ARGV[1]` ('' for none) the script returns `{now}`
/// and does nothing else. A script's own arguments start at `ARGV[2]`; it
/// returns `{now, ...}`.
macro_rules! guarded_script {
    ($body:literal) => {
        concat!(
            "local t = redis.call('TIME')\n",
            "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n",
            "if ARGV[1] ~= '' and now > tonumber(ARGV[1]) then return {now} end\n",
            $body
        )
    };
}
pub(crate) use guarded_script;

/// What a guarded script answered.
#[derive(Debug)]
pub(crate) enum Guarded {
    /// The script ran: its reply after the time.
    Ran(Vec<Value>),
    /// The script reached Redis after its deadline and did nothing.
    Late,
}

/// A fred pool whose commands carry their own timeout and deadline, over
/// connections that are replaced when they stall. Cheap to clone: clones
/// share the timeout, the clock offset and the probes.
#[derive(Clone)]
pub(crate) struct BoundedRedis {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    /// Label of the metrics (`sessions`, `breakers`).
    component: &'static str,
    /// The command timeout, in microseconds (at least 1 ms).
    timeout_us: AtomicU64,
    /// Redis's clock minus ours, in ms ([`UNKNOWN`] before the first reply).
    offset_ms: AtomicI64,
    /// Round robin over the pool's clients.
    next: AtomicUsize,
    /// Per client of the pool: a probe is running.
    probing: Box<[AtomicBool]>,
}

impl BoundedRedis {
    pub(crate) fn new(pool: Pool, timeout: Duration, component: &'static str) -> Self {
        let probing = pool
            .clients()
            .iter()
            .map(|_| AtomicBool::new(false))
            .collect();
        let bounded = BoundedRedis {
            inner: Arc::new(Inner {
                pool,
                component,
                timeout_us: AtomicU64::new(0),
                offset_ms: AtomicI64::new(UNKNOWN),
                next: AtomicUsize::new(0),
                probing,
            }),
        };
        bounded.set_timeout(timeout);
        bounded
    }

    /// Sets the timeout of every command from now on (at least 1 ms).
    pub(crate) fn set_timeout(&self, timeout: Duration) {
        let us = timeout.max(Duration::from_millis(1)).as_micros();
        self.inner
            .timeout_us
            .store(u64::try_from(us).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The timeout of every command.
    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_micros(self.inner.timeout_us.load(Ordering::Relaxed))
    }

    fn options(&self) -> Options {
        Options {
            timeout: Some(self.timeout()),
            max_attempts: Some(1),
            fail_fast: true,
            ..Options::default()
        }
    }

    /// The next client, round robin, preferring connected ones.
    fn pick(&self) -> Result<(usize, &Client), Error> {
        let clients = self.inner.pool.clients();
        let n = clients.len();
        if n == 0 {
            return Err(Error::new(
                ErrorKind::Unknown,
                "the Redis pool has no client",
            ));
        }
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let index = (0..n)
            .map(|k| start.wrapping_add(k) % n)
            .find(|&i| clients[i].is_connected())
            .unwrap_or(start % n);
        Ok((index, &clients[index]))
    }

    /// Runs `script` (made with [`guarded_script!`]) on `key` with `args`
    /// (its `ARGV[2]` onwards) and a deadline. The first call learns Redis's
    /// clock with a `TIME` first. A call that arrives late although the
    /// caller still waits (our estimate of Redis's clock fell behind: a
    /// clock step) is tried once more with the estimate its reply brought.
    pub(crate) async fn eval(
        &self,
        script: &'static str,
        key: String,
        args: Vec<String>,
    ) -> Result<Guarded, Error> {
        if !self.knows_the_clock() {
            self.calibrate().await?;
        }
        match self.eval_once(script, &key, &args).await? {
            Guarded::Late => self.eval_once(script, &key, &args).await,
            ran => Ok(ran),
        }
    }

    async fn eval_once(
        &self,
        script: &'static str,
        key: &str,
        args: &[String],
    ) -> Result<Guarded, Error> {
        let (index, client) = self.pick()?;
        let sent = wall_ms();
        let timeout = i64::try_from(self.timeout().as_millis()).unwrap_or(i64::MAX);
        let deadline = sent
            .saturating_add(self.inner.offset_ms.load(Ordering::Relaxed))
            .saturating_add(timeout);

        // EVAL script 1 key deadline args...: sent as a custom command, as
        // fred 10.1's `WithOptions` does not implement `LuaInterface`
        // (`with_options(..).eval(..)` derefs to the plain client and drops
        // the options silently). Routed by the key's own slot: fred 10.1
        // does not route a custom command by `ClusterHash::Offset` (a
        // Redis Cluster then answers MOVED, which with one attempt fails).
        let mut command = Vec::with_capacity(args.len() + 4);
        command.push(Value::from(script));
        command.push(Value::Integer(1));
        command.push(Value::from(key));
        command.push(Value::from(deadline));
        command.extend(args.iter().map(|a| Value::from(a.as_str())));
        let eval = CustomCommand::new_static("EVAL", ClusterHash::from(key), false);

        let watch = Watch::new(self, index);
        let reply: Result<Value, Error> = client
            .with_options(&self.options())
            .custom(eval, command)
            .await;
        watch.finished(reply.as_ref().err());
        let Value::Array(mut items) = reply? else {
            return Err(unexpected());
        };
        if items.is_empty() {
            return Err(unexpected());
        }
        let now = items.remove(0).as_i64().ok_or_else(unexpected)?;
        self.learn(now, sent);
        if items.is_empty() {
            ::metrics::counter!(m::REDIS_LATE, "component" => self.inner.component).increment(1);
            tracing::debug!(
                component = self.inner.component,
                "a Redis command arrived after its deadline and was dropped"
            );
            return Ok(Guarded::Late);
        }
        Ok(Guarded::Ran(items))
    }

    /// Whether Redis's clock is known (a reply has brought its time).
    pub(crate) fn knows_the_clock(&self) -> bool {
        self.inner.offset_ms.load(Ordering::Relaxed) != UNKNOWN
    }

    /// Learns Redis's clock with `TIME`.
    pub(crate) async fn calibrate(&self) -> Result<(), Error> {
        let (index, client) = self.pick()?;
        let sent = wall_ms();
        let time = CustomCommand::new_static("TIME", ClusterHash::Random, false);
        let watch = Watch::new(self, index);
        let reply: Result<Value, Error> = client
            .with_options(&self.options())
            .custom(time, Vec::<Value>::new())
            .await;
        watch.finished(reply.as_ref().err());
        self.learn(redis_time_ms(reply?)?, sent);
        Ok(())
    }

    /// Takes Redis's time `now` (ms), read by a command sent at our `sent`,
    /// as the new offset estimate: never below the true offset, since Redis
    /// read its clock after we read ours.
    fn learn(&self, now: i64, sent: i64) {
        self.inner
            .offset_ms
            .store(now.saturating_sub(sent), Ordering::Relaxed);
    }

    /// `PTTL` of every key in one pipeline (read-only: no deadline), after
    /// a `TIME` that keeps the estimate of Redis's clock fresh.
    pub(crate) async fn pttl_many(&self, keys: Vec<String>) -> Result<Vec<i64>, Error> {
        let (index, client) = self.pick()?;
        let sent = wall_ms();
        let watch = Watch::new(self, index);
        let result = async {
            let pipeline = client.pipeline().with_options(&self.options());
            let time = CustomCommand::new_static("TIME", ClusterHash::Random, false);
            let () = pipeline.custom(time, Vec::<Value>::new()).await?;
            for key in keys {
                let () = pipeline.pttl(key).await?;
            }
            pipeline.all::<Vec<Value>>().await
        }
        .await;
        watch.finished(result.as_ref().err());
        let mut replies = result?.into_iter();
        let time = replies.next().ok_or_else(unexpected)?;
        self.learn(redis_time_ms(time)?, sent);
        replies
            .map(|ttl| ttl.as_i64().ok_or_else(unexpected))
            .collect()
    }

    /// A command on client `index` was given up: probe its connection.
    fn given_up(&self, index: usize) {
        let Some(flag) = self.inner.probing.get(index) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if flag.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = self.inner.clone();
        runtime.spawn(async move {
            inner.probe(index).await;
            if let Some(flag) = inner.probing.get(index) {
                flag.store(false, Ordering::Release);
            }
        });
    }
}

impl Inner {
    /// `PING`s client `index`; no answer in time: reconnects it.
    async fn probe(&self, index: usize) {
        let Some(client) = self.pool.clients().get(index) else {
            return;
        };
        let options = Options {
            timeout: Some(PROBE_TIMEOUT),
            max_attempts: Some(1),
            fail_fast: true,
            ..Options::default()
        };
        let pinged: Result<Value, Error> = client.with_options(&options).ping(None).await;
        // Any answer, even an error, shows the connection lives; Canceled:
        // it is down already and fred is reconnecting it.
        if !matches!(&pinged, Err(e) if *e.kind() == ErrorKind::Timeout) {
            return;
        }
        ::metrics::counter!(m::REDIS_STALLS, "component" => self.component).increment(1);
        tracing::warn!(
            component = self.component,
            "a Redis connection did not answer within {PROBE_TIMEOUT:?}; reconnecting it"
        );
        // The reconnection goes on after this wait if it has not finished.
        let _ = tokio::time::timeout(RECONNECT_WAIT, client.force_reconnection()).await;
    }
}

/// Notices a command that was given up: dropped before it finished (the
/// caller's timeout) or finished with fred's timeout.
struct Watch<'a> {
    redis: &'a BoundedRedis,
    index: usize,
    armed: bool,
}

impl<'a> Watch<'a> {
    fn new(redis: &'a BoundedRedis, index: usize) -> Self {
        Watch {
            redis,
            index,
            armed: true,
        }
    }

    fn finished(mut self, error: Option<&Error>) {
        self.armed = error.is_some_and(|e| *e.kind() == ErrorKind::Timeout);
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.redis.given_up(self.index);
        }
    }
}

/// The reply of `TIME` (seconds and microseconds) in ms.
fn redis_time_ms(reply: Value) -> Result<i64, Error> {
    match reply {
        Value::Array(parts) => match parts.as_slice() {
            [secs, micros] => {
                let secs = secs.as_i64().ok_or_else(unexpected)?;
                let micros = micros.as_i64().ok_or_else(unexpected)?;
                Ok(secs.saturating_mul(1000).saturating_add(micros / 1000))
            }
            _ => Err(unexpected()),
        },
        _ => Err(unexpected()),
    }
}

fn unexpected() -> Error {
    Error::new(ErrorKind::Parse, "unexpected reply from the script")
}

/// Our wall clock in ms since the epoch (0 before it).
fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentinel_testkit::{RedisServer, RespValue};

    /// Sets KEYS[1] to ARGV[2].
    const SET: &str = guarded_script!(
        r#"
redis.call('SET', KEYS[1], ARGV[2])
return {now, 1}
"#
    );

    async fn bounded(redis: &RedisServer, timeout: Duration) -> BoundedRedis {
        let pool = sentinel_testkit::redis::fred_pool(&redis.url())
            .await
            .unwrap();
        BoundedRedis::new(pool, timeout, "test")
    }

    fn exists(redis: &RedisServer, key: &str) -> bool {
        redis.query(&["EXISTS", key]).unwrap() == RespValue::Integer(1)
    }

    #[tokio::test]
    async fn a_script_past_its_deadline_changes_nothing_and_recalibrates_the_clock() {
        let redis = RedisServer::start().unwrap();
        let bounded = bounded(&redis, Duration::from_millis(500)).await;
        // The first call learns Redis's clock (`TIME`), then runs.
        assert_eq!(bounded.inner.offset_ms.load(Ordering::Relaxed), UNKNOWN);
        let ran = bounded.eval(SET, "first".into(), vec!["1".into()]).await;
        assert!(matches!(ran, Ok(Guarded::Ran(_))), "{ran:?}");
        assert!(exists(&redis, "first"));
        let learned = bounded.inner.offset_ms.load(Ordering::Relaxed);
        // Same host, same clock: the offset is the latency of one call.
        assert!((0..500).contains(&learned), "offset {learned} ms");

        // A clock believed an hour behind Redis's: the deadline is an hour
        // in Redis's past, as for a command that reaches Redis long after
        // its caller gave up. The script does nothing...
        let an_hour_behind = || {
            bounded.inner.offset_ms.store(-3_600_000, Ordering::Relaxed);
        };
        an_hour_behind();
        let late = bounded.eval_once(SET, "late", &["1".into()]).await;
        assert!(matches!(late, Ok(Guarded::Late)), "{late:?}");
        assert!(!exists(&redis, "late"));
        // ...and its reply carries Redis's time, so the next call is on time.
        let ran = bounded.eval_once(SET, "late", &["1".into()]).await;
        assert!(matches!(ran, Ok(Guarded::Ran(_))), "{ran:?}");
        assert!(exists(&redis, "late"));

        // `eval` tries a late call once more itself, with the new estimate.
        an_hour_behind();
        let ran = bounded.eval(SET, "retried".into(), vec!["1".into()]).await;
        assert!(matches!(ran, Ok(Guarded::Ran(_))), "{ran:?}");
        assert!(exists(&redis, "retried"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_that_stops_answering_is_replaced_and_calls_fail_fast_meanwhile() {
        let redis = RedisServer::start().unwrap();
        let bounded = bounded(&redis, Duration::from_millis(50)).await;
        bounded
            .eval(SET, "warm".into(), vec!["1".into()])
            .await
            .unwrap();

        redis.pause().unwrap();
        // Given up on every client of the pool: each is probed.
        for i in 0..bounded.inner.pool.clients().len() {
            let err = bounded
                .eval(SET, format!("frozen-{i}"), vec!["1".into()])
                .await
                .unwrap_err();
            assert_eq!(*err.kind(), ErrorKind::Timeout, "{err:?}");
        }
        // The probes time out after 1 s and the clients reconnect (fred
        // answers PING before it counts a connection as up, so they stay
        // down while Redis hangs): calls fail at once instead of waiting.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let started = tokio::time::Instant::now();
            let result = bounded.eval(SET, "during".into(), vec!["1".into()]).await;
            let err = result.unwrap_err();
            if *err.kind() == ErrorKind::Canceled {
                assert!(started.elapsed() < Duration::from_millis(40), "{err:?}");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "calls still wait for a Redis that hangs: {err:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        redis.resume().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while bounded
            .eval(SET, "after".into(), vec!["1".into()])
            .await
            .is_err()
        {
            assert!(tokio::time::Instant::now() < deadline, "no recovery");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // What was written to the frozen sockets reached Redis on resuming,
        // after its deadline: it did nothing.
        for i in 0..bounded.inner.pool.clients().len() {
            assert!(
                !exists(&redis, &format!("frozen-{i}")),
                "frozen-{i} ran late"
            );
        }
        assert!(!exists(&redis, "during"));
    }
}
