//! Connecting to Redis with `fred`: moved to [`sentinel_net::redis`], and
//! re-exported here for the crates that reach it through this path.

pub use sentinel_net::redis::*;
