//! A [`SessionStore`] in Redis, shared by every Sentinel replica.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use fred::clients::Pool;
use fred::types::Value;
use sentinel_core::{Pinned, Tier};

use super::{PinOutcome, SessionError, SessionFuture, SessionStore};
use crate::bounded_redis::{BoundedRedis, Guarded, guarded_script};

/// Reads the pin and, when the candidate is an upgrade (or there is no pin),
/// writes the candidate; otherwise slides the TTL of the pin in force.
///
/// KEYS[1]: the session key. ARGV[1]: the deadline (see
/// [`guarded_script!`]). ARGV[2]: TTL in ms. ARGV[3]: the candidate's
/// encoded value, or '' for none. ARGV[4]: the candidate's tier index.
/// Returns `{now, previous, current}`, '' meaning none (a Lua `nil` inside a
/// table would truncate it). A value that is not a pin (written by someone
/// else, or not a string) counts as none and is overwritten when pinning.
/// The comparison is [`sentinel_core::PinWrite::Upgrade`]'s (a strictly
/// higher tier); the store is tested against every case of
/// [`PinWrite::CASES`](sentinel_core::PinWrite::CASES) on a real server.
const PIN_OR_GET: &str = guarded_script!(
    r#"
local key = KEYS[1]
local prev = redis.pcall('GET', key)
local prev_tier = nil
if type(prev) == 'string' then
  prev_tier = tonumber(string.match(prev, '^([012])\n[^%c]+\n[^%c]+$'))
end
if prev_tier == nil then
  prev = ''
end
local cand = ARGV[3]
if cand ~= '' then
  if prev_tier == nil or prev_tier < tonumber(ARGV[4]) then
    redis.call('SET', key, cand, 'PX', ARGV[2])
    return {now, prev, cand}
  end
end
if prev_tier ~= nil then
  redis.call('PEXPIRE', key, ARGV[2])
end
return {now, prev, prev}
"#
);

/// Replaces the pin unless the pin in force has a higher tier
/// ([`sentinel_core::PinWrite::Repin`]), and slides the TTL either way.
///
/// KEYS[1]: the session key. ARGV[1]: the deadline. ARGV[2]: TTL in ms.
/// ARGV[3]: the new pin's encoded value. ARGV[4]: its tier index. Returns
/// `{now, value in force}`.
const REPIN: &str = guarded_script!(
    r#"
local key = KEYS[1]
local prev = redis.pcall('GET', key)
if type(prev) == 'string' then
  local prev_tier = tonumber(string.match(prev, '^([012])\n[^%c]+\n[^%c]+$'))
  if prev_tier ~= nil and prev_tier > tonumber(ARGV[4]) then
    redis.call('PEXPIRE', key, ARGV[2])
    return {now, prev}
  end
end
redis.call('SET', key, ARGV[3], 'PX', ARGV[2])
return {now, ARGV[3]}
"#
);

/// The longest session TTL; longer ones are clamped to it (ten years).
const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// A [`SessionStore`] in Redis through a `fred` [`Pool`], so that several
/// Sentinel replicas agree on each session's pin.
///
/// A session is one string key, `{prefix}session:{id}`, holding
/// `"{tier index}\n{provider}\n{model}"` (tier index 0, 1 or 2 for simple,
/// moderate and complex) with a sliding TTL: every call that finds a pin
/// sets the TTL again. Each call is one Lua script (`EVAL`), one round trip,
/// so the upgrade-only rule holds even when replicas race on a session.
///
/// A key holding anything else (written by another program) counts as no
/// pin and is overwritten by the next pin. Errors carry fred's error details
/// only, never the Redis URL or password.
///
/// Every call gives up after the call timeout (the routing layer sets it to
/// its session wait through [`SessionStore::set_call_timeout`]; used alone,
/// [`DEFAULT_CALL_TIMEOUT`], 500 ms) and a call given up never takes
/// effect later: it has its own fred timeout, one attempt and fails at once
/// while the connection is down; its script carries a deadline in Redis's
/// clock and does nothing when it reaches Redis after it (a Redis that hung
/// and resumed, a command buffered in a socket); a connection that stops
/// answering is replaced. Clones share the timeout.
///
/// [`DEFAULT_CALL_TIMEOUT`]: RedisSessionStore::DEFAULT_CALL_TIMEOUT
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
/// use fred::interfaces::ClientLike;
/// use fred::types::Builder;
/// use fred::types::config::Config;
/// use sentinel_core::{Pinned, Tier};
/// use sentinel_layer::session::{RedisSessionStore, SessionStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = Builder::from_config(Config::from_url("redis://127.0.0.1:6379")?)
///     .with_performance_config(|p| p.default_command_timeout = Duration::from_millis(500))
///     .build_pool(4)?;
/// let _connections = pool.connect();
/// pool.wait_for_connect().await?;
///
/// let store = RedisSessionStore::new(pool, "sentinel:", Duration::from_secs(24 * 3600));
/// let pin = Pinned::new(Tier::Moderate, "openai", "gpt-4o");
/// let outcome = store.pin_or_get("session-1", Some(&pin)).await?;
/// assert_eq!(outcome.current, Some(pin));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisSessionStore {
    redis: BoundedRedis,
    prefix: Arc<str>,
    /// The TTL in milliseconds, at least 1.
    ttl_ms: u64,
}

impl RedisSessionStore {
    /// The call timeout until [`SessionStore::set_call_timeout`] changes it
    /// (the routing layer does, to its session wait): 500 ms.
    pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_millis(500);

    /// A store over `pool` whose keys are `{prefix}session:{id}` (the proxy
    /// uses the prefix `sentinel:`) and whose sessions expire after `ttl`
    /// without use (at least 1 ms and at most ten years: TTLs outside are
    /// clamped).
    pub fn new(pool: Pool, prefix: &str, ttl: Duration) -> Self {
        RedisSessionStore {
            redis: BoundedRedis::new(pool, Self::DEFAULT_CALL_TIMEOUT, "sessions"),
            prefix: Arc::from(format!("{prefix}session:")),
            ttl_ms: ttl_ms(ttl),
        }
    }

    /// The Redis key of `session`.
    pub fn key(&self, session: &str) -> String {
        format!("{}{session}", self.prefix)
    }

    /// The sliding TTL of a session.
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms)
    }

    /// The longest a call waits before it is given up.
    pub fn call_timeout(&self) -> Duration {
        self.redis.timeout()
    }
}

impl fmt::Debug for RedisSessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The pool's config holds the URL and maybe a password: leave it out.
        f.debug_struct("RedisSessionStore")
            .field("prefix", &&*self.prefix)
            .field("ttl", &self.ttl())
            .field("call_timeout", &self.call_timeout())
            .finish_non_exhaustive()
    }
}

impl SessionStore for RedisSessionStore {
    fn pin_or_get<'a>(
        &'a self,
        session: &'a str,
        candidate: Option<&'a Pinned>,
    ) -> SessionFuture<'a, PinOutcome> {
        Box::pin(async move {
            let (value, tier) = match candidate {
                Some(c) => (encode(c), c.tier.index().to_string()),
                None => (String::new(), String::new()),
            };
            let reply = self
                .redis
                .eval(
                    PIN_OR_GET,
                    self.key(session),
                    vec![self.ttl_ms.to_string(), value, tier],
                )
                .await
                .map_err(redis_err("pin"))?;
            match ran(reply, "pin")?.as_slice() {
                [previous, current] => Ok(PinOutcome {
                    previous: decode_value(previous),
                    current: decode_value(current),
                }),
                _ => Err(SessionError::new(
                    "redis session pin: unexpected reply from the script",
                )),
            }
        })
    }

    fn repin<'a>(&'a self, session: &'a str, pin: &'a Pinned) -> SessionFuture<'a, Option<Pinned>> {
        Box::pin(async move {
            let reply = self
                .redis
                .eval(
                    REPIN,
                    self.key(session),
                    vec![
                        self.ttl_ms.to_string(),
                        encode(pin),
                        pin.tier.index().to_string(),
                    ],
                )
                .await
                .map_err(redis_err("repin"))?;
            match ran(reply, "repin")?.as_slice() {
                [current] => Ok(decode_value(current)),
                _ => Err(SessionError::new(
                    "redis session repin: unexpected reply from the script",
                )),
            }
        })
    }

    fn set_call_timeout(&self, timeout: Duration) {
        self.redis.set_timeout(timeout);
    }
}

/// The reply of a script that ran; an error for one that arrived late.
fn ran(reply: Guarded, op: &'static str) -> Result<Vec<Value>, SessionError> {
    match reply {
        Guarded::Ran(items) => Ok(items),
        Guarded::Late => Err(SessionError::new(format!(
            "redis session {op}: the call reached Redis after its deadline and was dropped"
        ))),
    }
}

/// `ttl` in whole milliseconds, clamped to 1 ms ..= [`MAX_TTL`].
fn ttl_ms(ttl: Duration) -> u64 {
    let ms = ttl.clamp(Duration::from_millis(1), MAX_TTL).as_millis();
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// Maps a fred error to a [`SessionError`] naming the operation. fred's
/// details never carry the URL or password.
fn redis_err(op: &'static str) -> impl FnOnce(fred::error::Error) -> SessionError {
    move |e| SessionError::with_source(format!("redis session {op}: {}", e.details()), e)
}

/// The stored form of a pin: `"{tier index}\n{provider}\n{model}"`.
fn encode(pin: &Pinned) -> String {
    format!("{}\n{}\n{}", pin.tier.index(), pin.provider, pin.model)
}

/// A pin from a reply item: `None` for nil, '' or anything that is not a pin.
fn decode_value(value: &Value) -> Option<Pinned> {
    value.as_bytes().and_then(decode)
}

/// The inverse of [`encode`], accepting exactly what the scripts accept: a
/// tier index 0 to 2, then a non-empty provider and model without control
/// characters. Anything else is `None`. Bytes that are not UTF-8 are
/// replaced (U+FFFD) rather than rejected, so that this agrees with the
/// scripts (which see bytes): such a pin names no configured model, and the
/// layer re-pins the session in its tier.
fn decode(bytes: &[u8]) -> Option<Pinned> {
    let mut parts = bytes.split(|&b| b == b'\n');
    let tier = match parts.next()? {
        b"0" => Tier::Simple,
        b"1" => Tier::Moderate,
        b"2" => Tier::Complex,
        _ => return None,
    };
    let provider = name(parts.next()?)?;
    let model = name(parts.next()?)?;
    if parts.next().is_some() {
        return None;
    }
    Some(Pinned::new(tier, provider, model))
}

/// A provider or model name: non-empty, no ASCII control character (as Lua's
/// `%c` in the C locale).
fn name(bytes: &[u8]) -> Option<Cow<'_, str>> {
    if bytes.is_empty() || bytes.iter().any(|b| b.is_ascii_control()) {
        return None;
    }
    Some(String::from_utf8_lossy(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_decodes_every_tier() {
        for tier in Tier::ALL {
            let pin = Pinned::new(tier, "openai", "gpt-4o-mini");
            let encoded = encode(&pin);
            assert_eq!(encoded, format!("{}\nopenai\ngpt-4o-mini", tier.index()));
            assert_eq!(decode(encoded.as_bytes()), Some(pin));
        }
    }

    #[test]
    fn malformed_values_decode_as_none() {
        for bad in [
            &b""[..],
            b"1",
            b"1\nopenai",
            b"3\nopenai\nm",
            b"-1\nopenai\nm",
            b"01\nopenai\nm",
            b"1\n\nm",
            b"1\nopenai\n",
            b"1\nopenai\nm\nextra",
            b"1\nopen\tai\nm",
            b"1\nopenai\nm\r",
            b"{\"json\":true}",
        ] {
            assert_eq!(decode(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(decode_value(&Value::Null), None);
        assert_eq!(decode_value(&Value::Integer(1)), None);
    }

    #[test]
    fn bytes_that_are_not_utf8_are_replaced_not_rejected() {
        let pin = decode(b"1\nopenai\nm\xff").unwrap();
        assert_eq!(&*pin.model, "m\u{fffd}");
    }

    #[test]
    fn the_ttl_is_clamped_to_one_millisecond_and_ten_years() {
        assert_eq!(ttl_ms(Duration::ZERO), 1);
        assert_eq!(ttl_ms(Duration::from_micros(1500)), 1);
        assert_eq!(ttl_ms(Duration::from_secs(60)), 60_000);
        assert_eq!(ttl_ms(Duration::MAX), 10 * 365 * 24 * 3_600_000);
    }
}
