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
//! # Deployments
//!
//! The URL's scheme says which (fred's URL forms):
//! - `redis://[:password@]host:port[/db]`: one server;
//! - `redis-cluster://host:port?node=host:port&node=...`: Redis Cluster,
//!   the nodes listed are where discovery starts;
//! - `redis-sentinel://[:password@]host:port[/db]?sentinelServiceName=NAME&node=host:port`:
//!   a Sentinel-managed primary, found by asking the sentinels listed (the
//!   password is the data nodes'); after a failover the pool reconnects to
//!   the primary the sentinels name.
//!
//! `rediss://`, `rediss-cluster://` and `rediss-sentinel://` are the same
//! over TLS (to the sentinels too): rustls with the `ring` provider, the
//! webpki roots plus the CAs of [`RedisTls`], and a client certificate
//! when the servers ask for one (`tls-auth-clients yes`). Names are checked
//! against the certificate: a host given as an IP address must be in its
//! IP subject alternative names.
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
use fred::types::config::{Config, ReconnectPolicy, TlsConnector};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// How to reach Redis.
#[derive(Clone)]
pub struct RedisSettings {
    url: String,
    pool_size: usize,
    command_timeout: Duration,
    connect_timeout: Duration,
    command_buffer: usize,
    tls: RedisTls,
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password: never print it.
        f.debug_struct("RedisSettings")
            .field("pool_size", &self.pool_size)
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_buffer", &self.command_buffer)
            .field("tls", &self.tls)
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

    /// Settings for the Redis at `url` (see [the deployments](self#deployments)).
    pub fn new(url: impl Into<String>) -> Self {
        RedisSettings {
            url: url.into(),
            pool_size: Self::DEFAULT_POOL_SIZE,
            command_timeout: Self::DEFAULT_COMMAND_TIMEOUT,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            command_buffer: Self::DEFAULT_COMMAND_BUFFER,
            tls: RedisTls::default(),
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

    /// The CAs and client certificate of a TLS URL (`rediss://`, ...).
    pub fn tls(mut self, tls: RedisTls) -> Self {
        self.tls = tls;
        self
    }
}

/// What TLS to Redis trusts and presents beyond the defaults: CAs added to
/// the webpki roots (a private CA, a self-signed server) and a client
/// certificate. Its `Debug` shows counts, never the key.
#[derive(Default)]
pub struct RedisTls {
    roots: Vec<CertificateDer<'static>>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

impl Clone for RedisTls {
    fn clone(&self) -> Self {
        RedisTls {
            roots: self.roots.clone(),
            identity: self
                .identity
                .as_ref()
                .map(|(chain, key)| (chain.clone(), key.clone_key())),
        }
    }
}

impl fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTls")
            .field("extra_roots", &self.roots.len())
            .field("client_certificate", &self.identity.is_some())
            .finish()
    }
}

impl RedisTls {
    /// Also trusts every certificate of `pem` (a PEM bundle of CAs).
    /// Fails when it holds no certificate or one that cannot be a root.
    pub fn add_roots_pem(mut self, pem: &[u8]) -> Result<Self, RedisTlsError> {
        let certs = certificates(pem)?;
        let mut check = rustls::RootCertStore::empty();
        for cert in &certs {
            check.add(cert.clone()).map_err(|_| {
                RedisTlsError::file("holds a certificate that cannot be a trust root")
            })?;
        }
        self.roots.extend(certs);
        Ok(self)
    }

    /// Presents the client certificate `chain_pem` (PEM, the leaf first)
    /// with its private key `key_pem` (PEM: PKCS#8, PKCS#1 or SEC1).
    pub fn client_certificate_pem(
        mut self,
        chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<Self, RedisTlsError> {
        let chain = certificates(chain_pem)?;
        // The parser's error could quote the key: never show it.
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|_| RedisTlsError::key("is not a PEM private key"))?;
        // A key that does not suit the certificate fails here, not at the
        // first connection.
        crate::tls::tls_config_with(&[], Some((&chain, &key))).map_err(|_| {
            RedisTlsError::key(
                "does not suit the certificate (not its key, or a key type the TLS provider does not take)",
            )
        })?;
        self.identity = Some((chain, key));
        Ok(self)
    }

    /// Whether a client certificate is set.
    pub fn has_client_certificate(&self) -> bool {
        self.identity.is_some()
    }

    fn connector(&self) -> Result<TlsConnector, RedisConnectError> {
        let identity = self
            .identity
            .as_ref()
            .map(|(chain, key)| (chain.as_slice(), key));
        crate::tls::tls_config_with(&self.roots, identity)
            .map(TlsConnector::from)
            .map_err(|_| RedisConnectError("the TLS settings of Redis could not be built"))
    }
}

/// The certificates of a PEM file: at least one, all well formed.
fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, RedisTlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| RedisTlsError::file("is not a PEM file of certificates"))?;
    if certs.is_empty() {
        return Err(RedisTlsError::file("holds no PEM certificate"));
    }
    Ok(certs)
}

/// A PEM file given to [`RedisTls`] cannot be used; the message says why
/// without quoting the file.
#[derive(Debug, Clone)]
pub struct RedisTlsError {
    reason: &'static str,
    key: bool,
}

impl RedisTlsError {
    fn file(reason: &'static str) -> Self {
        RedisTlsError { reason, key: false }
    }

    fn key(reason: &'static str) -> Self {
        RedisTlsError { reason, key: true }
    }

    /// Whether the private key is at fault (not a certificate file).
    pub fn is_about_key(&self) -> bool {
        self.key
    }
}

impl fmt::Display for RedisTlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason)
    }
}

impl std::error::Error for RedisTlsError {}

/// Waits until every connection of `pool` is up, for at most `within`.
/// Returns whether they all came up; a pool that did not keeps connecting
/// in the background.
pub async fn wait_connected(pool: &Pool, within: Duration) -> bool {
    matches!(
        tokio::time::timeout(within, pool.wait_for_connect()).await,
        Ok(Ok(()))
    )
}

/// The TLS schemes and their plain twins. fred's own TLS set-up (the
/// system's roots, a process-wide crypto provider) is never used:
/// [`connect`] parses the plain twin and gives fred Sentinel's TLS.
const TLS_SCHEMES: [(&str, &str); 3] = [
    ("rediss://", "redis://"),
    ("rediss-cluster://", "redis-cluster://"),
    ("rediss-sentinel://", "redis-sentinel://"),
];

/// `url` with a TLS scheme replaced by its plain twin, and whether it had
/// one.
fn split_tls(url: &str) -> (String, bool) {
    for (tls, plain) in TLS_SCHEMES {
        if let Some(rest) = url.strip_prefix(tls) {
            return (format!("{plain}{rest}"), true);
        }
    }
    (url.to_owned(), false)
}

/// Whether `url` asks for TLS (`rediss://`, `rediss-cluster://`,
/// `rediss-sentinel://`).
pub fn uses_tls(url: &str) -> bool {
    split_tls(url).1
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
    let (url, tls) = split_tls(&settings.url);
    // fred's message could echo the URL and its password: use our own.
    let mut config = Config::from_url(&url)
        .map_err(|_| RedisConnectError("the Redis URL is not a valid Redis URL"))?;
    if tls {
        config.tls = Some(settings.tls.connector()?.into());
    }
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
