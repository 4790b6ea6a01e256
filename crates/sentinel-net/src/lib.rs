//! Sentinel's network helpers, shared by the crates that call out:
//!
//! - [`tls_config`] and [`http_client`]: rustls with the webpki roots and
//!   the `ring` provider passed explicitly, and a pooled `reqwest` client
//!   on it (the Zion client; the proxy builds its hyper client for
//!   providers on the same TLS settings);
//! - [`redis::connect`]: a `fred` pool that reconnects on its own, with a
//!   command timeout and a bounded command buffer (the tier-config store,
//!   the session store and the shared breakers use one pool).

pub mod redis;
mod tls;

pub use redis::{RedisConnectError, RedisSettings, RedisTls, RedisTlsError};
pub use tls::{ClientBuildError, http_client, tls_config};
