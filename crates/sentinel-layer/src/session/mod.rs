//! Session stores: which model a session is pinned to.
//!
//! A session (the `X-Sentinel-Session` header) keeps the model it was given;
//! a request for a higher tier upgrades it, never a lower one. The store
//! enforces the upgrade-only rule atomically, so two requests of one
//! session racing with different tiers can never leave it on the lower
//! tier: [`SessionStore::pin_or_get`] reads and, when it is an upgrade,
//! writes in one step (one Lua script, one round trip, in Redis).
//!
//! TTLs are sliding: every call that finds a pin extends it.
//!
//! Two implementations: [`MemorySessionStore`] (bounded: a maximum number of
//! entries and an idle TTL) and [`RedisSessionStore`] (through `fred`).
//!
//! # Example
//!
//! ```
//! use sentinel_core::{Pinned, Tier};
//! use sentinel_layer::session::{MemorySessionStore, SessionStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), sentinel_layer::session::SessionError> {
//! let store = MemorySessionStore::new();
//! let moderate = Pinned::new(Tier::Moderate, "openai", "gpt-4o");
//! let simple = Pinned::new(Tier::Simple, "openai", "gpt-4o-mini");
//!
//! store.pin_or_get("s-1", Some(&moderate)).await?;
//! // A lower tier never replaces the pin: the session stays on gpt-4o.
//! let outcome = store.pin_or_get("s-1", Some(&simple)).await?;
//! assert_eq!(outcome.current, Some(moderate));
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use sentinel_core::Pinned;

mod memory;
mod redis;

pub use memory::MemorySessionStore;
pub use redis::RedisSessionStore;

/// The future a [`SessionStore`] method returns.
pub type SessionFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, SessionError>> + Send + 'a>>;

/// What [`SessionStore::pin_or_get`] found and left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinOutcome {
    /// The pin before the call (`None`: a new session).
    pub previous: Option<Pinned>,
    /// The pin in force after the call.
    pub current: Option<Pinned>,
}

/// Where sessions are pinned.
pub trait SessionStore: Send + Sync + 'static {
    /// Atomically: when `candidate` is given and the session has no pin, or a
    /// pin of a lower tier than `candidate.tier`, pins `candidate`. Extends
    /// the session's TTL when it has a pin. Returns the pin before and after.
    fn pin_or_get<'a>(
        &'a self,
        session: &'a str,
        candidate: Option<&'a Pinned>,
    ) -> SessionFuture<'a, PinOutcome>;

    /// Atomically replaces the pin with `pin` unless the pin in force has a
    /// higher tier (never a downgrade); equal tiers are replaced (a failover
    /// within the tier). Extends the TTL. Returns the pin in force after.
    fn repin<'a>(&'a self, session: &'a str, pin: &'a Pinned) -> SessionFuture<'a, Option<Pinned>>;

    /// How long a caller waits for a call. The routing layer calls this with
    /// its session wait when it is built. A store whose calls can outlive
    /// their caller (a network store) gives each call up after `timeout`, so
    /// that a call the layer stopped waiting for never takes effect later
    /// ([`RedisSessionStore`] does). The default does nothing.
    fn set_call_timeout(&self, timeout: Duration) {
        let _ = timeout;
    }
}

/// A session store operation failed (Redis unreachable, timed out, ...):
/// the same error as the tier-config store's.
pub type SessionError = sentinel_core::StoreError;
