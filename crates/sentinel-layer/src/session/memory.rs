//! An in-process, bounded [`SessionStore`].

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sentinel_core::{PinWrite, Pinned};
use tokio::time::Instant;

use super::{PinOutcome, SessionError, SessionFuture, SessionStore};

/// The longest idle TTL; longer ones are clamped to it (ten years).
const MAX_IDLE_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// The most sessions a store can hold (`u32::MAX - 1`): slots are indexed by
/// `u32`, and [`NIL`] is not an index.
const MAX_ENTRIES: usize = (u32::MAX - 1) as usize;

/// "No slot": the end of a list.
const NIL: u32 = u32::MAX;

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
/// - **Entries** (default 100 000, at most `u32::MAX - 1`): at most this
///   many sessions are held. Inserting a new session into a full store first
///   drops the expired entries, and if the store is still full evicts the
///   **least recently seen** session (the one whose TTL would run out first).
///
/// Sessions live in a slab of fixed-size slots, linked in a doubly-linked
/// list ordered by when they were last seen (seeing a session moves it to
/// the back). Since every session has the same idle TTL, that is also the
/// order in which they expire, so expired sessions are always at the front:
/// every call drops the expired sessions found there, and eviction takes the
/// front one. A hash table maps each session to its slot. Every call is
/// O(1) (amortized over the growth of the slab and the table); none ever
/// scans the store. The slab never holds more slots than the maximum number
/// of entries: a slot freed by expiry or eviction is reused.
///
/// # Memory
///
/// A session costs the same whatever the length of its id:
///
/// - the id is not stored: the store keeps a 128-bit keyed hash of it
///   (std's SipHash-1-3 under a random secret key per store, so clients
///   cannot craft colliding ids). Two distinct ids that collide would share
///   one pin; among a million live sessions the chance that any two collide
///   is about 2<sup>-89</sup>, and for a new id to hit any of them about
///   2<sup>-108</sup>;
/// - a slot (40 bytes) holds that hash, the deadline, the list links and the
///   index of the pin in a table of the distinct pins held (a pin is a tier,
///   a provider and a model, so there are about as many as configured
///   models); the table counts the slots using each pin and drops a pin no
///   slot uses;
/// - a hash-table bucket (24 bytes and a control byte) maps the 128-bit hash
///   to the slot, without hashing the hash again.
///
/// With a million sessions held that is about 95 bytes a session. The slab
/// and the hash table grow by doubling, so the figure depends on where the
/// count falls between two powers of two: from about 70 to about 130 bytes,
/// up to about 180 after heavy churn has made the hash table double to make
/// room for its tombstones. Memory follows the most sessions held at once:
/// it is not given back when sessions expire.
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
    /// least 1, at most `u32::MAX - 1`: 0 is taken as 1, larger values are
    /// clamped), each forgotten after `idle_ttl` without use (at least 1 ms,
    /// at most ten years: values outside are clamped).
    ///
    /// Meant to be called right after [`new`](Self::new): it starts over with
    /// a new, empty store, and clones made before it keep the old one. No
    /// memory is reserved up front: the store grows with the sessions held.
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
            d.field("len", &inner.len())
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

/// A session id as the store knows it: a 128-bit keyed hash of the id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key([u64; 2]);

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already a keyed hash: its first half is a fine hash of the whole
        // (equal keys have equal halves).
        state.write_u64(self.0[0]);
    }
}

/// The hasher of the index: passes a [`Key`]'s first half through instead
/// of hashing it again. Its input is unpredictable to clients (a keyed
/// hash), so this does not open the table to collision attacks.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached: a `Key` writes one `u64`. A plain fold, for safety.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
}

/// One session, or a free slot.
#[derive(Debug, Clone, Copy)]
struct Slot {
    key: Key,
    /// When the session expires unless it is seen again, in nanoseconds
    /// since [`Inner::base`].
    deadline: u64,
    /// The session seen just before this one ([`NIL`]: this is the front).
    prev: u32,
    /// The session seen just after this one ([`NIL`]: this is the back);
    /// in a free slot, the next free slot.
    next: u32,
    /// The index of the session's pin in [`Inner::pins`].
    pin: u32,
}

/// The distinct pins of the held sessions, each stored once with the number
/// of slots using it. A pin no slot uses is dropped and its index reused, so
/// the table never holds more entries than the most distinct pins the held
/// sessions had at one time (at most `max_entries`, in practice about the
/// number of configured models).
#[derive(Default)]
struct PinTable {
    /// A pin and the number of slots using it; 0: a free index (its pin is
    /// a leftover).
    entries: Vec<(Pinned, u32)>,
    ids: HashMap<Pinned, u32>,
    /// The free indices of `entries`.
    free: Vec<u32>,
}

impl PinTable {
    /// The index of `pin`, counting one more slot using it.
    fn acquire(&mut self, pin: &Pinned) -> u32 {
        if let Some(&id) = self.ids.get(pin) {
            self.entries[id as usize].1 += 1;
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.entries[id as usize] = (pin.clone(), 1);
                id
            }
            None => {
                self.entries.push((pin.clone(), 1));
                // At most one pin per slot, and slots are indexed by u32.
                (self.entries.len() - 1) as u32
            }
        };
        self.ids.insert(pin.clone(), id);
        id
    }

    /// Counts one slot less using the pin at `id`, dropping it when unused.
    fn release(&mut self, id: u32) {
        let (pin, uses) = &mut self.entries[id as usize];
        *uses -= 1;
        if *uses == 0 {
            self.ids.remove(pin);
            self.free.push(id);
        }
    }

    fn get(&self, id: u32) -> &Pinned {
        &self.entries[id as usize].0
    }
}

/// The store's state, behind the mutex.
struct Inner {
    /// Keys the hash of session ids; random per store.
    hasher: RandomState,
    /// The slot of each held session.
    index: HashMap<Key, u32, BuildHasherDefault<KeyHasher>>,
    /// The held sessions, and free slots; never more than `max_entries`.
    slots: Vec<Slot>,
    /// The least recently seen session ([`NIL`]: none).
    head: u32,
    /// The most recently seen session ([`NIL`]: none).
    tail: u32,
    /// The first free slot ([`NIL`]: none); free slots are chained through
    /// [`Slot::next`].
    free: u32,
    pins: PinTable,
    /// The instant deadlines count from.
    base: Instant,
    /// The latest time seen, in nanoseconds since `base`. It never goes
    /// back, so the list is always ordered by deadline.
    clock: u64,
    max_entries: usize,
    idle_ttl: Duration,
    /// `idle_ttl` in nanoseconds.
    idle_ttl_nanos: u64,
}

impl Inner {
    fn new(max_entries: usize, idle_ttl: Duration) -> Self {
        let idle_ttl = idle_ttl.clamp(Duration::from_millis(1), MAX_IDLE_TTL);
        Inner {
            hasher: RandomState::new(),
            index: HashMap::default(),
            slots: Vec::new(),
            head: NIL,
            tail: NIL,
            free: NIL,
            pins: PinTable::default(),
            base: Instant::now(),
            clock: 0,
            max_entries: max_entries.clamp(1, MAX_ENTRIES),
            idle_ttl,
            idle_ttl_nanos: nanos(idle_ttl),
        }
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    fn pin_or_get(
        &mut self,
        session: &str,
        candidate: Option<&Pinned>,
        now: Instant,
    ) -> PinOutcome {
        let now = self.tick(now);
        self.drop_expired(now);
        let key = self.key(session);
        let held = self.live(key, now);
        let previous = held.map(|slot| self.pin_of(slot).clone());
        match candidate {
            Some(c) if PinWrite::Upgrade.replaces(previous.as_ref().map(|p| p.tier), c.tier) => {
                self.put(key, held, c, now);
                PinOutcome {
                    previous,
                    current: Some(c.clone()),
                }
            }
            _ => {
                if let Some(slot) = held {
                    self.touch(slot, now);
                }
                PinOutcome {
                    current: previous.clone(),
                    previous,
                }
            }
        }
    }

    fn repin(&mut self, session: &str, pin: &Pinned, now: Instant) -> Option<Pinned> {
        let now = self.tick(now);
        self.drop_expired(now);
        let key = self.key(session);
        let held = self.live(key, now);
        match held {
            Some(slot) if !PinWrite::Repin.replaces(Some(self.pin_of(slot).tier), pin.tier) => {
                self.touch(slot, now);
                Some(self.pin_of(slot).clone())
            }
            _ => {
                self.put(key, held, pin, now);
                Some(pin.clone())
            }
        }
    }

    /// The key of `session`: two keyed hashes of it. Both come from the
    /// store's one secret key, on distinct inputs (two `RandomState`s made
    /// one after the other would have related keys).
    fn key(&self, session: &str) -> Key {
        Key([
            self.hasher.hash_one((0u8, session)),
            self.hasher.hash_one((1u8, session)),
        ])
    }

    /// `now` in nanoseconds since `base`, and never earlier than the time of
    /// the previous call.
    fn tick(&mut self, now: Instant) -> u64 {
        self.clock = self
            .clock
            .max(nanos(now.saturating_duration_since(self.base)));
        self.clock
    }

    fn pin_of(&self, slot: u32) -> &Pinned {
        self.pins.get(self.slots[slot as usize].pin)
    }

    /// The slot of the session with `key` unless it is absent or expired (an
    /// expired one is removed).
    fn live(&mut self, key: Key, now: u64) -> Option<u32> {
        let slot = *self.index.get(&key)?;
        if self.slots[slot as usize].deadline <= now {
            self.remove(slot);
            return None;
        }
        Some(slot)
    }

    /// Pins the session with `key`, held in slot `held` if any, to `pin`
    /// and restarts its TTL, making room first when it is a new session and
    /// the store is full.
    fn put(&mut self, key: Key, held: Option<u32>, pin: &Pinned, now: u64) {
        match held {
            Some(slot) => {
                if self.pin_of(slot) != pin {
                    // Release first, so the table never holds more pins
                    // than the sessions use.
                    self.pins.release(self.slots[slot as usize].pin);
                    self.slots[slot as usize].pin = self.pins.acquire(pin);
                }
                self.touch(slot, now);
            }
            None => self.insert(key, pin, now),
        }
    }

    /// Holds a new session, evicting the least recently seen ones while the
    /// store is full (the caller dropped the expired ones).
    fn insert(&mut self, key: Key, pin: &Pinned, now: u64) {
        while self.len() >= self.max_entries && self.head != NIL {
            self.remove(self.head);
        }
        let new = Slot {
            key,
            deadline: now.saturating_add(self.idle_ttl_nanos),
            prev: NIL,
            next: NIL,
            pin: self.pins.acquire(pin),
        };
        let slot = if self.free != NIL {
            let slot = self.free;
            self.free = self.slots[slot as usize].next;
            self.slots[slot as usize] = new;
            slot
        } else {
            // No free slot: every slot is held, so fewer than `max_entries`.
            // Grow by doubling, but never past `max_entries`.
            if self.slots.len() == self.slots.capacity() {
                let room = self.max_entries - self.slots.len();
                let more = self.slots.len().max(4).min(room);
                self.slots.reserve_exact(more);
            }
            self.slots.push(new);
            // Below `max_entries`, which fits in u32.
            (self.slots.len() - 1) as u32
        };
        self.index.insert(key, slot);
        self.link_back(slot);
    }

    /// Restarts the TTL of the session in `slot` and makes it the most
    /// recently seen.
    fn touch(&mut self, slot: u32, now: u64) {
        self.slots[slot as usize].deadline = now.saturating_add(self.idle_ttl_nanos);
        if slot != self.tail {
            self.unlink(slot);
            self.link_back(slot);
        }
    }

    /// Drops the expired sessions. They are all at the front of the list: a
    /// session's deadline is its last-seen time plus the one idle TTL.
    fn drop_expired(&mut self, now: u64) {
        while self.head != NIL && self.slots[self.head as usize].deadline <= now {
            self.remove(self.head);
        }
    }

    /// Forgets the session in `slot` and frees the slot.
    fn remove(&mut self, slot: u32) {
        self.unlink(slot);
        let s = &mut self.slots[slot as usize];
        self.index.remove(&s.key);
        self.pins.release(s.pin);
        s.next = self.free;
        self.free = slot;
    }

    /// Takes `slot` out of the list.
    fn unlink(&mut self, slot: u32) {
        let Slot { prev, next, .. } = self.slots[slot as usize];
        if prev == NIL {
            self.head = next;
        } else {
            self.slots[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.slots[next as usize].prev = prev;
        }
    }

    /// Puts `slot`, which is not in the list, at its back.
    fn link_back(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        s.prev = self.tail;
        s.next = NIL;
        if self.tail == NIL {
            self.head = slot;
        } else {
            self.slots[self.tail as usize].next = slot;
        }
        self.tail = slot;
    }
}

/// `d` in nanoseconds, saturating (u64 nanoseconds last 584 years).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentinel_core::Tier;

    const TTL: Duration = Duration::from_secs(60);

    fn pin(tier: Tier, model: &str) -> Pinned {
        Pinned::new(tier, "openai", model)
    }

    impl Inner {
        fn holds(&self, session: &str) -> bool {
            self.index.contains_key(&self.key(session))
        }

        /// Checks every invariant of the slab, the list, the index and the
        /// pin table.
        fn check(&self) {
            assert!(self.slots.len() <= self.max_entries);
            assert!(self.slots.capacity() <= self.max_entries);
            let mut seen = vec![false; self.slots.len()];
            let mut uses: HashMap<u32, u32> = HashMap::new();
            // The list, front to back: linked both ways, ordered by deadline,
            // and exactly the indexed sessions.
            let (mut prev, mut at, mut linked) = (NIL, self.head, 0);
            while at != NIL {
                let slot = &self.slots[at as usize];
                assert!(!seen[at as usize], "a cycle through slot {at}");
                seen[at as usize] = true;
                assert_eq!(slot.prev, prev);
                if prev != NIL {
                    assert!(self.slots[prev as usize].deadline <= slot.deadline);
                }
                assert_eq!(self.index.get(&slot.key), Some(&at));
                *uses.entry(slot.pin).or_default() += 1;
                linked += 1;
                (prev, at) = (at, slot.next);
            }
            assert_eq!(self.tail, prev);
            assert_eq!(linked, self.index.len());
            // The free list: every other slot.
            let (mut at, mut free) = (self.free, 0);
            while at != NIL {
                assert!(!seen[at as usize], "slot {at} both free and linked");
                seen[at as usize] = true;
                free += 1;
                at = self.slots[at as usize].next;
            }
            assert_eq!(linked + free, self.slots.len());
            // The pin table: exactly the pins in use, with their counts.
            let table = &self.pins;
            assert_eq!(table.ids.len(), uses.len());
            assert_eq!(table.ids.len() + table.free.len(), table.entries.len());
            for (pin, &id) in &table.ids {
                assert_eq!(&table.entries[id as usize].0, pin);
                assert_eq!(Some(&table.entries[id as usize].1), uses.get(&id));
            }
            for &id in &table.free {
                assert_eq!(table.entries[id as usize].1, 0);
            }
        }
    }

    /// What the store must do, the plain way: sessions by id, each with its
    /// pin, deadline and when it was last seen.
    struct Model {
        max_entries: usize,
        map: HashMap<String, (Pinned, Instant, u64)>,
        seen: u64,
    }

    impl Model {
        fn expire(&mut self, now: Instant) {
            self.map.retain(|_, (_, deadline, _)| *deadline > now);
        }

        fn see(&mut self, session: &str, pin: Pinned, now: Instant) {
            if !self.map.contains_key(session) {
                while self.map.len() >= self.max_entries {
                    let oldest = self
                        .map
                        .iter()
                        .min_by_key(|(_, (_, _, seen))| *seen)
                        .map(|(id, _)| id.clone())
                        .unwrap();
                    self.map.remove(&oldest);
                }
            }
            self.seen += 1;
            self.map
                .insert(session.to_owned(), (pin, now + TTL, self.seen));
        }

        fn pin_or_get(
            &mut self,
            session: &str,
            candidate: Option<&Pinned>,
            now: Instant,
        ) -> PinOutcome {
            self.expire(now);
            let previous = self.map.get(session).map(|(p, _, _)| p.clone());
            let current = match candidate {
                Some(c)
                    if PinWrite::Upgrade.replaces(previous.as_ref().map(|p| p.tier), c.tier) =>
                {
                    Some(c.clone())
                }
                _ => previous.clone(),
            };
            if let Some(p) = &current {
                self.see(session, p.clone(), now);
            }
            PinOutcome { previous, current }
        }

        fn repin(&mut self, session: &str, pin: &Pinned, now: Instant) -> Option<Pinned> {
            self.expire(now);
            let current = match self.map.get(session) {
                Some((held, _, _)) if !PinWrite::Repin.replaces(Some(held.tier), pin.tier) => {
                    held.clone()
                }
                _ => pin.clone(),
            };
            self.see(session, current.clone(), now);
            Some(current)
        }
    }

    #[test]
    fn the_store_matches_a_plain_model_under_random_calls() {
        let tiers = [Tier::Simple, Tier::Moderate, Tier::Complex];
        let pins: Vec<Pinned> = tiers
            .iter()
            .flat_map(|&t| [pin(t, "a"), pin(t, "b")])
            .collect();
        let ids: Vec<String> = (0..10).map(|i| format!("s-{i}")).collect();
        for seed in 0..200 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let max_entries = rng.usize(1..=6);
            let mut inner = Inner::new(max_entries, TTL);
            let mut model = Model {
                max_entries,
                map: HashMap::new(),
                seen: 0,
            };
            let mut now = Instant::now();
            for step in 0..300 {
                now += match rng.u8(0..20) {
                    0..10 => Duration::ZERO,
                    10..14 => Duration::from_secs(1),
                    14..17 => Duration::from_secs(20),
                    17 => TTL - Duration::from_nanos(1),
                    18 => TTL,
                    _ => Duration::from_nanos(1),
                };
                let id = &ids[rng.usize(..ids.len())];
                let p = &pins[rng.usize(..pins.len())];
                let context = format!("seed {seed}, step {step}");
                match rng.u8(0..3) {
                    0 => assert_eq!(
                        inner.pin_or_get(id, None, now),
                        model.pin_or_get(id, None, now),
                        "{context}"
                    ),
                    1 => assert_eq!(
                        inner.pin_or_get(id, Some(p), now),
                        model.pin_or_get(id, Some(p), now),
                        "{context}"
                    ),
                    _ => assert_eq!(
                        inner.repin(id, p, now),
                        model.repin(id, p, now),
                        "{context}"
                    ),
                }
                inner.check();
                assert_eq!(inner.len(), model.map.len(), "{context}");
                assert!(inner.len() <= max_entries, "{context}");
                for id in &ids {
                    let held = inner.index.get(&inner.key(id)).map(|&slot| {
                        (
                            inner.pin_of(slot).clone(),
                            inner.slots[slot as usize].deadline,
                        )
                    });
                    let expected = model
                        .map
                        .get(id)
                        .map(|(p, deadline, _)| (p.clone(), nanos(*deadline - inner.base)));
                    assert_eq!(held, expected, "{context}, {id}");
                }
            }
        }
    }

    #[test]
    fn repeated_touches_use_one_slot() {
        let mut inner = Inner::new(10, TTL);
        let now = Instant::now();
        let p = pin(Tier::Simple, "a");
        for _ in 0..10_000 {
            inner.pin_or_get("hot", Some(&p), now);
        }
        inner.check();
        assert_eq!(inner.len(), 1);
        assert_eq!(inner.slots.len(), 1);
    }

    #[test]
    fn eviction_takes_the_least_recently_seen_session() {
        let mut inner = Inner::new(2, TTL);
        let now = Instant::now();
        let p = pin(Tier::Simple, "a");
        inner.pin_or_get("a", Some(&p), now);
        inner.pin_or_get("b", Some(&p), now);
        // Seeing `a` again makes `b` the least recently seen.
        inner.pin_or_get("a", None, now);
        inner.pin_or_get("c", Some(&p), now);
        inner.check();
        assert!(inner.holds("a"));
        assert!(!inner.holds("b"));
        assert!(inner.holds("c"));
    }

    #[test]
    fn expired_sessions_are_dropped_before_any_live_one_is_evicted() {
        let mut inner = Inner::new(2, TTL);
        let start = Instant::now();
        let p = pin(Tier::Simple, "a");
        inner.pin_or_get("old", Some(&p), start);
        let later = start + Duration::from_secs(30);
        inner.pin_or_get("young", Some(&p), later);
        let expired = start + Duration::from_secs(61);
        inner.pin_or_get("new", Some(&p), expired);
        inner.check();
        assert_eq!(inner.len(), 2);
        assert!(inner.holds("young"));
        assert!(inner.holds("new"));
    }

    #[test]
    fn a_session_expires_exactly_one_idle_ttl_after_it_was_last_seen() {
        let mut inner = Inner::new(10, TTL);
        let start = Instant::now();
        let p = pin(Tier::Simple, "a");
        inner.pin_or_get("s", Some(&p), start);
        let almost = start + TTL - Duration::from_nanos(1);
        assert_eq!(inner.pin_or_get("s", None, almost).current, Some(p));
        assert_eq!(inner.pin_or_get("s", None, almost + TTL).current, None);
        inner.check();
        assert_eq!((inner.len(), inner.head, inner.tail), (0, NIL, NIL));
    }

    #[test]
    fn the_store_never_exceeds_its_max_entries_and_reuses_its_slots() {
        let mut inner = Inner::new(10, TTL);
        let mut now = Instant::now();
        let p = pin(Tier::Simple, "a");
        // Eviction: a thousand new sessions, ten slots.
        for i in 0..1_000 {
            inner.pin_or_get(&format!("evicted-{i}"), Some(&p), now);
            assert!(inner.len() <= 10);
        }
        inner.check();
        assert_eq!(inner.len(), 10);
        assert_eq!(inner.slots.len(), 10);
        // Expiry: rounds of fewer sessions than the limit, each round
        // expiring the one before; the freed slots are reused.
        for round in 0..100 {
            now += TTL;
            for i in 0..7 {
                inner.repin(&format!("expired-{round}-{i}"), &p, now);
            }
            inner.check();
            assert_eq!(inner.len(), 7);
        }
        assert_eq!(inner.slots.len(), 10);
        assert!(inner.slots.capacity() <= 10);
    }

    #[test]
    fn the_pin_table_holds_only_the_pins_in_use() {
        let mut inner = Inner::new(4, TTL);
        let now = Instant::now();
        // A thousand distinct pins over time, at most four held at once.
        for i in 0..1_000 {
            let p = pin(Tier::Simple, &format!("model-{i}"));
            inner.pin_or_get(&format!("s-{i}"), Some(&p), now);
            inner.check();
            assert!(inner.pins.entries.len() <= 4);
        }
        // One session moving through many pins holds one.
        for i in 0..1_000 {
            let p = pin(Tier::Complex, &format!("model-{i}"));
            inner.repin("moving", &p, now);
            inner.check();
            assert!(inner.pins.entries.len() <= 4);
        }
        // Many sessions on one pin share one entry.
        let mut inner = Inner::new(100, TTL);
        for i in 0..100 {
            let p = pin(Tier::Simple, "shared");
            inner.pin_or_get(&format!("s-{i}"), Some(&p), now);
        }
        inner.check();
        assert_eq!(inner.pins.entries.len(), 1);
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
        inner.check();
        assert_eq!(inner.len(), 1);
        assert!(inner.holds("b"));
    }

    #[test]
    fn huge_limits_are_clamped_and_reserve_nothing() {
        let inner = Inner::new(usize::MAX, Duration::MAX);
        assert_eq!(inner.max_entries, u32::MAX as usize - 1);
        assert_eq!(inner.idle_ttl, MAX_IDLE_TTL);
        assert_eq!(inner.slots.capacity(), 0);
    }

    #[test]
    fn keys_are_stable_within_a_store_and_differ_across_stores() {
        let (a, b) = (Inner::new(1, TTL), Inner::new(1, TTL));
        assert_eq!(a.key("session"), a.key("session"));
        assert_ne!(a.key("session"), a.key("session2"));
        assert_ne!(a.key("session"), b.key("session"));
        let Key([low, high]) = a.key("session");
        assert_ne!(low, high);
    }

    #[test]
    fn a_session_costs_a_40_byte_slot_and_a_24_byte_bucket() {
        assert!(std::mem::size_of::<Slot>() <= 40);
        assert!(std::mem::size_of::<(Key, u32)>() <= 24);
    }
}
