//! Randomness for the weighted choice.
//!
//! axum clones the service for every request, so an RNG stored in the
//! service would replay the same draw forever. In production the draw comes
//! from a thread-local generator seeded from the OS; with a seed (tests),
//! from a counter shared by every clone, mixed by SplitMix64, so the
//! sequence advances across requests and is reproducible.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug)]
pub(crate) enum Randomness {
    ThreadLocal,
    Seeded { seed: u64, counter: AtomicU64 },
}

impl Randomness {
    pub(crate) fn seeded(seed: u64) -> Self {
        Randomness::Seeded {
            seed,
            counter: AtomicU64::new(0),
        }
    }

    /// A uniformly random `u64`.
    pub(crate) fn next(&self) -> u64 {
        match self {
            Randomness::ThreadLocal => fastrand::u64(..),
            Randomness::Seeded { seed, counter } => {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                splitmix64(seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
            }
        }
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_draws_advance_and_repeat_per_seed() {
        let a = Randomness::seeded(7);
        let b = Randomness::seeded(7);
        let xs: Vec<u64> = (0..5).map(|_| a.next()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.next()).collect();
        assert_eq!(xs, ys);
        assert!(xs.windows(2).all(|w| w[0] != w[1]));
        assert_ne!(Randomness::seeded(8).next(), xs[0]);
    }

    #[test]
    fn thread_local_draws_differ() {
        let r = Randomness::ThreadLocal;
        assert_ne!(r.next(), r.next());
    }
}
