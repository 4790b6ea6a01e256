//! Test support for Sentinel: real servers on loopback, for tests only.
//!
//! | type | what it is |
//! | --- | --- |
//! | [`RedisServer`] | a real `redis-server` child process on a free port, with stop / restart |
//! | [`RedisCluster`] | a real Redis Cluster (`redis-server` nodes joined by `redis-cli --cluster create`), masters with replicas, optionally on TLS, with node kills and failover |
//! | [`RedisSentinels`] | a real Sentinel-managed Redis: a primary, a replica and three sentinels, optionally with a password or on TLS, with a primary kill and failover |
//! | [`TestCerts`] | a throw-away CA with server and client certificates (`openssl`), for TLS servers such as [`RedisServer::start_tls`] |
//! | [`MockZion`] | the Zion control plane serving `GET /api/v1/tiers/config`, with faults |
//! | [`MockUpstream`] | an OpenAI-compatible provider answering as the requested model, with per-model faults |
//! | [`MockAnthropic`] | Anthropic's Messages API answering as the requested model (text, tool use, streams), with per-model faults |
//! | [`MockCollector`] | an OpenTelemetry collector receiving OTLP traces over HTTP or gRPC, with faults |
//! | [`ClosedPort`] | a loopback address where nothing listens, held so that nothing will |
//!
//! Every instance binds its own port on `127.0.0.1` (never a fixed one) and
//! shares no state with any other instance, so tests can run in parallel.
//! The HTTP mocks run on the tokio runtime that starts them and stop when
//! they are dropped.
//!
//! # Example
//!
//! ```no_run
//! use sentinel_testkit::{MockUpstream, MockZion, RedisServer, ZionFault};
//!
//! async fn example() -> std::io::Result<()> {
//!     let redis = RedisServer::start()?;
//!     let zion = MockZion::start().await?;
//!     let upstream = MockUpstream::start().await?;
//!
//!     // Point the code under test at the three servers.
//!     let (_redis_url, _zion_url, _openai_base_url) = (redis.url(), zion.url(), upstream.url());
//!
//!     // Break Zion, then check what the code under test did.
//!     zion.set_fault(ZionFault::Status(500));
//!     assert_eq!(zion.calls(), 0);
//!     assert_eq!(upstream.total_calls(), 0);
//!     Ok(())
//! }
//!
//! fn main() {
//!     let runtime = tokio::runtime::Builder::new_current_thread()
//!         .enable_all()
//!         .build()
//!         .unwrap();
//!     runtime.block_on(example()).unwrap();
//! }
//! ```

pub mod anthropic;
mod closed_port;
pub mod cluster;
pub mod collector;
pub mod metrics;
pub mod redis;
pub mod sentinel;
mod server;
pub mod tls;
pub mod upstream;
pub mod zion;

pub mod hostile;

pub use anthropic::{AnthropicFault, AnthropicRequest, MockAnthropic};
pub use closed_port::ClosedPort;
pub use cluster::RedisCluster;
pub use collector::{CollectedSpan, CollectorFault, MockCollector};
pub use redis::{RedisServer, RespValue};
pub use sentinel::RedisSentinels;
pub use tls::TestCerts;
pub use upstream::{MockUpstream, RecordedRequest, RetryAfter, UpstreamFault};
pub use zion::{MockZion, ZionFault};
