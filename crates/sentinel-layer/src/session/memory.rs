//! An in-process, bounded [`SessionStore`].

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sentinel_core::Pinned;
use tokio::time::Instant;

use super::{PinOutcome, SessionError, SessionFuture, SessionStore};

/// Stale recency records tolerated before the queue is compacted, on top of
/// one per live entry.
const COMPACT_SLACK: usize = 1024;

/// The longest idle TTL; longer ones are clamped to it (ten years).
const MAX_IDLE_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// A [`SessionStore`] in process memory, bounded in entries and idle time.
///
/// Cloning is cheap: clones share one store. Use it when there is a single
/// Sentinel process; replicas behind a load balancer need a shared store
/// such as [`RedisSessionStore`](super::RedisSessionStore).
///
/// # Bounds and eviction policy
///
/// - **Idle TTL** (default 24 h): a session that is not used for this long
///   is forgotten. The TTL slides: every call that finds a pin (whether it
///   keeps, upgrades or replaces it) restarts it. An expired entry behaves
///   exactly as an absent one.
/// - **Entries** (default 100 000): at most this many sessions are held.
///   Inserting a new session into a full store first drops the expired
///   entries, and if the store is still full evicts the **least recently
///   seen** session (the one whose TTL would run out first).
///
/// Sessions are kept in a queue ordered by when they were last seen. Since
/// every session has the same idle TTL, that is also the order in which they
/// expire, so expired entries are always at the front: every call drops the
/// expired entries found there, and eviction takes the front entry. Both are
/// O(1) amortized per call; no call ever scans the whole store except a rare
/// compaction of the queue (O(n), at most once per n calls).
///
/// All work happens under a [`std::sync::Mutex`] that is never held across
/// an `.await`: the futures returned are already complete.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use sentinel_core::{Pinned, Tier};
/// use sentinel_layer::session::{MemorySessionStore, SessionStore};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), sentinel_layer::session::SessionError> {
/// let store = MemorySessionStore::new().with_limits(10_000, Duration::from_secs(3600));
/// let simple = Pinned::new(Tier::Simple, "openai", "gpt-4o-mini");
/// let complex = Pinned::new(Tier::Complex, "openai", "o3");
///
/// // A new session is pinned to the candidate.
/// let outcome = store.pin_or_get("session-1", Some(&complex)).await?;
/// assert_eq!(outcome.previous, None);
/// assert_eq!(outcome.current, Some(complex.clone()));
///
/// // A lower tier never downgrades it.
/// let outcome = store.pin_or_get("session-1", Some(&simple)).await?;
/// assert_eq!(outcome.current, Some(complex));
/// assert_eq!(store.len(), 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MemorySessionStore {
    inner: Arc<Mutex<Inner>>,
}

impl MemorySessionStore {
    /// The default maximum number of sessions: 100 000.
    pub const DEFAULT_MAX_ENTRIES: usize = 100_000;
    /// The default idle TTL: 24 hours.
    pub const DEFAULT_IDLE_TTL: Duration = Duration::from_secs(24 * 60 * 60);

    /// An empty store holding at most [`DEFAULT_MAX_ENTRIES`] sessions, each
    /// forgotten after [`DEFAULT_IDLE_TTL`] without use.
    ///
    /// [`DEFAULT_MAX_ENTRIES`]: Self::DEFAULT_MAX_ENTRIES
    /// [`DEFAULT_IDLE_TTL`]: Self::DEFAULT_IDLE_TTL
    pub fn new() -> Self {
        MemorySessionStore {
            inner: Arc::new(Mutex::new(Inner::new(
                Self::DEFAULT_MAX_ENTRIES,
                Self::DEFAULT_IDLE_TTL,
            ))),
        }
    }

    /// This store with other limits: at most `max_entries` sessions (at
    /// least 1: 0 is taken as 1), each forgotten after `idle_ttl` without
    /// use (at least 1 ms, at most ten years: values outside are clamped).
    ///
    /// Meant to be called right after [`new`](Self::new): it starts over with
    /// a new, empty store, and clones made before it keep the old one.
    pub fn with_limits(self, max_entries: usize, idle_ttl: Duration) -> Self {
        MemorySessionStore {
            inner: Arc::new(Mutex::new(Inner::new(max_entries, idle_ttl))),
        }
    }

    /// The number of sessions held. It may count sessions that have expired
    /// since the last call to the store (they are dropped on the next call);
    /// it never exceeds the maximum number of entries.
    pub fn len(&self) -> usize {
        // Reading a length cannot observe a broken invariant that matters.
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map
            .len()
    }

    /// Whether no session is held (see [`len`](Self::len) about expired
    /// sessions).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, SessionError> {
        self.inner
            .lock()
            .map_err(|_| SessionError::new("memory session store: lock poisoned"))
    }
}

impl Default for MemorySessionStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemorySessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("MemorySessionStore");
        if let Ok(inner) = self.inner.lock() {
            d.field("len", &inner.map.len())
                .field("max_entries", &inner.max_entries)
                .field("idle_ttl", &inner.idle_ttl);
        }
        d.finish_non_exhaustive()
    }
}

impl SessionStore for MemorySessionStore {
    fn pin_or_get<'a>(
        &'a self,
        session: &'a str,
        candidate: Option<&'a Pinned>,
    ) -> SessionFuture<'a, PinOutcome> {
        let result = self
            .lock()
            .map(|mut inner| inner.pin_or_get(session, candidate, Instant::now()));
        Box::pin(std::future::ready(result))
    }

    fn repin<'a>(&'a self, session: &'a str, pin: &'a Pinned) -> SessionFuture<'a, Option<Pinned>> {
        let result = self
            .lock()
            .map(|mut inner| inner.repin(session, pin, Instant::now()));
        Box::pin(std::future::ready(result))
    }
}

/// One session.
struct Entry {
    pin: Pinned,
    /// When the session expires unless it is seen again.
    deadline: Instant,
    /// The sequence number of the session's current record in the queue.
    seq: u64,
}

/// The store's state, behind the mutex.
struct Inner {
    map: HashMap<Arc<str>, Entry>,
    /// One record per time a session was seen, oldest first. A record is
    /// current when its sequence number is the entry's `seq`; the others are
    /// stale and skipped (or compacted away).
    queue: VecDeque<(Arc<str>, u64)>,
    next_seq: u64,
    max_entries: usize,
    idle_ttl: Duration,
}

impl Inner {
    fn new(max_entries: usize, idle_ttl: Duration) -> Self {
        Inner {
            map: HashMap::new(),
            queue: VecDeque::new(),
            next_seq: 0,
            max_entries: max_entries.max(1),
            idle_ttl: idle_ttl.clamp(Duration::from_millis(1), MAX_IDLE_TTL),
        }
    }

    fn pin_or_get(
        &mut self,
        session: &str,
        candidate: Option<&Pinned>,
        now: Instant,
    ) -> PinOutcome {
        self.drop_expired(now);
        let previous = self.live(session, now).map(|e| e.pin.clone());
        match candidate {
            Some(c) if previous.as_ref().is_none_or(|p| p.tier < c.tier) => {
                self.put(session, c, now);
                PinOutcome {
                    previous,
                    current: Some(c.clone()),
                }
            }
            _ => {
                if previous.is_some() {
                    self.touch(session, now);
                }
                PinOutcome {
                    current: previous.clone(),
                    previous,
                }
            }
        }
    }

    fn repin(&mut self, session: &str, pin: &Pinned, now: Instant) -> Option<Pinned> {
        self.drop_expired(now);
        match self.live(session, now).map(|e| e.pin.clone()) {
            Some(held) if held.tier > pin.tier => {
                self.touch(session, now);
                Some(held)
            }
            _ => {
                self.put(session, pin, now);
                Some(pin.clone())
            }
        }
    }

    /// The session's entry unless it is absent or expired (an expired one is
    /// removed).
    fn live(&mut self, session: &str, now: Instant) -> Option<&Entry> {
        let expired = self.map.get(session)?.deadline <= now;
        if expired {
            // Its queue record becomes stale and is skipped later.
            self.map.remove(session);
            return None;
        }
        self.map.get(session)
    }

    /// Pins `session` to `pin` and restarts its TTL, making room first when
    /// it is a new session and the store is full.
    fn put(&mut self, session: &str, pin: &Pinned, now: Instant) {
        if let Some(entry) = self.map.get_mut(session) {
            entry.pin = pin.clone();
        } else {
            // Expired entries were dropped by the caller; evict the least
            // recently seen ones while full.
            while self.map.len() >= self.max_entries && self.evict_oldest() {}
            let key: Arc<str> = Arc::from(session);
            self.map.insert(
                key,
                Entry {
                    pin: pin.clone(),
                    deadline: now,
                    seq: 0,
                },
            );
        }
        self.touch(session, now);
    }

    /// Restarts the TTL of `session`, which is held, and records it as the
    /// most recently seen.
    fn touch(&mut self, session: &str, now: Instant) {
        let Some((key, _)) = self.map.get_key_value(session) else {
            return;
        };
        let key = Arc::clone(key);
        let seq = self.next_seq;
        self.next_seq += 1;
        let deadline = now.checked_add(self.idle_ttl).unwrap_or(now);
        if let Some(entry) = self.map.get_mut(session) {
            entry.deadline = deadline;
            entry.seq = seq;
        }
        self.queue.push_back((key, seq));
        self.maybe_compact();
    }

    /// Drops the expired sessions. They are all at the front of the queue:
    /// a session's deadline is its last-seen time plus the one idle TTL.
    fn drop_expired(&mut self, now: Instant) {
        while let Some((key, seq)) = self.queue.front() {
            match self.map.get(&**key) {
                Some(entry) if entry.seq == *seq => {
                    if entry.deadline > now {
                        break;
                    }
                    self.map.remove(&**key);
                }
                // Stale: the session was seen again, or is gone.
                _ => {}
            }
            self.queue.pop_front();
        }
    }

    /// Evicts the least recently seen session. Returns false when there is
    /// none.
    fn evict_oldest(&mut self) -> bool {
        while let Some((key, seq)) = self.queue.pop_front() {
            if self.map.get(&*key).is_some_and(|e| e.seq == seq) {
                self.map.remove(&*key);
                return true;
            }
        }
        false
    }

    /// Drops the stale records once they outnumber the live entries (plus
    /// some slack), so the queue stays O(entries) and compaction is O(1)
    /// amortized.
    fn maybe_compact(&mut self) {
        let limit = self
            .map
            .len()
            .saturating_mul(2)
            .saturating_add(COMPACT_SLACK);
        if self.queue.len() > limit {
            let map = &self.map;
            self.queue
                .retain(|(key, seq)| map.get(&**key).is_some_and(|e| e.seq == *seq));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentinel_core::Tier;

    fn pin(tier: Tier, model: &str) -> Pinned {
        Pinned::new(tier, "openai", model)
    }

    #[test]
    fn the_queue_stays_bounded_under_repeated_touches() {
        let mut inner = Inner::new(10, Duration::from_secs(60));
        let now = Instant::now();
        let p = pin(Tier::Simple, "a");
        for _ in 0..10_000 {
            inner.pin_or_get("hot", Some(&p), now);
        }
        assert_eq!(inner.map.len(), 1);
        assert!(inner.queue.len() <= 2 + COMPACT_SLACK + 1);
    }

    #[test]
    fn eviction_takes_the_least_recently_seen_session() {
        let mut inner = Inner::new(2, Duration::from_secs(60));
        let now = Instant::now();
        let p = pin(Tier::Simple, "a");
        inner.pin_or_get("a", Some(&p), now);
        inner.pin_or_get("b", Some(&p), now);
        // Seeing `a` again makes `b` the least recently seen.
        inner.pin_or_get("a", None, now);
        inner.pin_or_get("c", Some(&p), now);
        assert!(inner.map.contains_key("a"));
        assert!(!inner.map.contains_key("b"));
        assert!(inner.map.contains_key("c"));
    }

    #[test]
    fn expired_sessions_are_dropped_before_any_live_one_is_evicted() {
        let mut inner = Inner::new(2, Duration::from_secs(60));
        let start = Instant::now();
        let p = pin(Tier::Simple, "a");
        inner.pin_or_get("old", Some(&p), start);
        let later = start + Duration::from_secs(30);
        inner.pin_or_get("young", Some(&p), later);
        let expired = start + Duration::from_secs(61);
        inner.pin_or_get("new", Some(&p), expired);
        assert_eq!(inner.map.len(), 2);
        assert!(inner.map.contains_key("young"));
        assert!(inner.map.contains_key("new"));
    }

    #[test]
    fn a_zero_limit_holds_one_session() {
        let mut inner = Inner::new(0, Duration::ZERO);
        assert_eq!(inner.max_entries, 1);
        assert_eq!(inner.idle_ttl, Duration::from_millis(1));
        let now = Instant::now();
        let p = pin(Tier::Simple, "a");
        inner.pin_or_get("a", Some(&p), now);
        inner.pin_or_get("b", Some(&p), now);
        assert_eq!(inner.map.len(), 1);
        assert!(inner.map.contains_key("b"));
    }
}
