//! Connecting to Redis with `fred`: a pool that reconnects on its own and
//! commands that time out instead of waiting forever.
//!
//! [`connect`] returns at once; the connections come up in the background
//! and come back after Redis restarts. A command sent while Redis is down
//! fails after the command timeout, and callers go on without Redis.
//!
//! fred's command buffer (the queue in front of each connection) is bounded
//! ([`RedisSettings::command_buffer`], 1024 commands per connection): while
//! a connection cannot take commands (it reconnects, or its socket is full
//! because Redis hangs), a command beyond the bound fails at once with a
//! backpressure error instead of growing memory. A command still queued
//! when its timeout elapses is never written. Components that must never
//! see a given-up command take effect later (the session store and the
//! shared breakers of `sentinel-layer`) add their own bounds on top.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use sentinel_net::redis::RedisSettings;
//!
//! # async fn run() -> Result<(), sentinel_net::redis::RedisConnectError> {
//! let settings = RedisSettings::new("redis://127.0.0.1:6379")
//!     .command_timeout(Duration::from_millis(250));
//! let pool = sentinel_net::redis::connect(&settings)?;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::time::Duration;

use fred::clients::Pool;
use fred::interfaces::ClientLike;
use fred::types::Builder;
use fred::types::config::{Config, ReconnectPolicy};

/// How to reach Redis.
#[derive(Clone)]
pub struct RedisSettings {
    url: String,
    pool_size: usize,
    command_timeout: Duration,
    connect_timeout: Duration,
    command_buffer: usize,
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password: never print it.
        f.debug_struct("RedisSettings")
            .field("pool_size", &self.pool_size)
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_buffer", &self.command_buffer)
            .finish_non_exhaustive()
    }
}

impl RedisSettings {
    /// Default pool size: 4 connections.
    pub const DEFAULT_POOL_SIZE: usize = 4;
    /// Default command timeout: 500 ms.
    pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(500);
    /// Default connect timeout: 2 s.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    /// Default bound of each connection's command buffer: 1024 commands.
    pub const DEFAULT_COMMAND_BUFFER: usize = 1024;

    /// Settings for the Redis at `url` (`redis://[:password@]host:port[/db]`).
    pub fn new(url: impl Into<String>) -> Self {
        RedisSettings {
            url: url.into(),
            pool_size: Self::DEFAULT_POOL_SIZE,
            command_timeout: Self::DEFAULT_COMMAND_TIMEOUT,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            command_buffer: Self::DEFAULT_COMMAND_BUFFER,
        }
    }

    /// Connections in the pool (at least 1).
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// The longest a command may take before it fails.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// The longest a connection attempt may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The most commands queued in front of each connection (at least 1);
    /// beyond it a command fails at once with a backpressure error.
    pub fn command_buffer(mut self, commands: usize) -> Self {
        self.command_buffer = commands.max(1);
        self
    }
}

/// The Redis settings could not make a client (a bad URL, a zero timeout).
#[derive(Debug, Clone)]
pub struct RedisConnectError(&'static str);

impl fmt::Display for RedisConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for RedisConnectError {}

/// Builds a pool and starts connecting it in the background; returns at
/// once. Must run inside a tokio runtime.
pub fn connect(settings: &RedisSettings) -> Result<Pool, RedisConnectError> {
    if settings.command_timeout.is_zero() {
        return Err(RedisConnectError(
            "the Redis command timeout must be greater than zero",
        ));
    }
    // fred's message could echo the URL and its password: use our own.
    let mut config = Config::from_url(&settings.url)
        .map_err(|_| RedisConnectError("the Redis URL is not a valid redis:// URL"))?;
    // Keep trying when Redis is down at start-up instead of failing once.
    config.fail_fast = false;
    let pool = Builder::from_config(config)
        .with_performance_config(|p| p.default_command_timeout = settings.command_timeout)
        .with_connection_config(|c| {
            c.connection_timeout = settings.connect_timeout;
            c.internal_command_timeout = settings.command_timeout.max(Duration::from_secs(1));
            c.max_command_attempts = 1;
            c.max_command_buffer_len = settings.command_buffer.max(1);
        })
        // Reconnect forever: 50 ms, doubling, at most 2 s between attempts.
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2))
        .build_pool(settings.pool_size)
        .map_err(|_| RedisConnectError("the Redis client could not be built"))?;
    let _connections = pool.connect();
    Ok(pool)
}
