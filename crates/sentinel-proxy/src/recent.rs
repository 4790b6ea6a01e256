//! The last minute of routed traffic, per tier, for the status page: how
//! many requests ended, how many of them were not `2xx`, and their latency
//! percentiles.
//!
//! Each tier keeps a ring of 60 one-second slots. A slot counts the
//! requests that ended in its second and sorts their durations into
//! log-spaced buckets, each 10 % wider than the one before, from 1 ms up
//! (the last bucket takes everything past an hour). A percentile is the
//! upper bound of the bucket it falls in: at most 10 % above the true
//! value. Recording is one uncontended lock and a few additions; reading
//! sums the slots of the last 60 seconds. Prometheus' histograms answer
//! the same questions over any window; this one exists so the page needs
//! no Prometheus.

use std::sync::Mutex;
use std::time::Duration;

use sentinel_core::Tier;
use tokio::time::Instant;

/// Seconds in the window.
const WINDOW: usize = 60;
/// The upper bound of the first bucket, in seconds.
const FIRST_BOUND: f64 = 0.001;
/// Each bucket's upper bound over the previous one's.
const GROWTH: f64 = 1.1;
/// Enough buckets to pass an hour (1 ms × 1.1^160 ≈ 4 h).
const BUCKETS: usize = 161;

/// The last minute of each tier's routed traffic.
#[derive(Debug)]
pub(crate) struct Recent {
    start: Instant,
    tiers: [Mutex<Ring>; 3],
}

impl Default for Recent {
    fn default() -> Self {
        Recent {
            start: Instant::now(),
            tiers: std::array::from_fn(|_| Mutex::new(Ring::default())),
        }
    }
}

/// A tier's traffic over the last minute.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Minute {
    /// Requests that ended in the window.
    pub(crate) requests: u64,
    /// Of those, the ones not answered `2xx`.
    pub(crate) errors: u64,
    /// Requests per second over the window (shorter while the proxy is
    /// younger than a minute).
    pub(crate) rate: f64,
    /// The median duration, arrival to the last byte (none without
    /// requests).
    pub(crate) p50: Option<Duration>,
    /// The 99th percentile.
    pub(crate) p99: Option<Duration>,
}

#[derive(Debug)]
struct Ring {
    slots: Box<[Slot]>,
}

impl Default for Ring {
    fn default() -> Self {
        Ring {
            slots: (0..WINDOW).map(|_| Slot::default()).collect(),
        }
    }
}

#[derive(Debug)]
struct Slot {
    /// The second (since the start) this slot counts; others are stale.
    second: u64,
    requests: u64,
    errors: u64,
    buckets: [u32; BUCKETS],
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            second: u64::MAX,
            requests: 0,
            errors: 0,
            buckets: [0; BUCKETS],
        }
    }
}

/// The bucket of a duration of `seconds`.
fn bucket(seconds: f64) -> usize {
    if seconds.is_nan() || seconds <= FIRST_BOUND {
        return 0;
    }
    let index = ((seconds / FIRST_BOUND).ln() / GROWTH.ln()).ceil();
    // A float-to-int cast saturates; the clamp keeps the last bucket open.
    (index as usize).min(BUCKETS - 1)
}

/// The upper bound of bucket `index`.
fn upper_bound(index: usize) -> Duration {
    let exponent = i32::try_from(index).unwrap_or(i32::MAX);
    Duration::from_secs_f64(FIRST_BOUND * GROWTH.powi(exponent))
}

impl Recent {
    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_secs()
    }

    /// A request of `tier` ended after `duration`; `error` when it was not
    /// answered `2xx`.
    pub(crate) fn record(&self, tier: Tier, duration: Duration, error: bool) {
        let second = self.second(Instant::now());
        let Ok(mut ring) = self.tiers[tier.index()].lock() else {
            return;
        };
        let index = usize::try_from(second % WINDOW as u64).unwrap_or(0);
        let slot = &mut ring.slots[index];
        if slot.second != second {
            *slot = Slot {
                second,
                ..Slot::default()
            };
        }
        slot.requests += 1;
        slot.errors += u64::from(error);
        let b = &mut slot.buckets[bucket(duration.as_secs_f64())];
        *b = b.saturating_add(1);
    }

    /// `tier`'s traffic over the last minute.
    pub(crate) fn last_minute(&self, tier: Tier) -> Minute {
        let now = Instant::now();
        let second = self.second(now);
        let oldest = second.saturating_sub(WINDOW as u64 - 1);
        let mut requests = 0;
        let mut errors = 0;
        let mut buckets = [0u64; BUCKETS];
        if let Ok(ring) = self.tiers[tier.index()].lock() {
            for slot in ring
                .slots
                .iter()
                .filter(|s| (oldest..=second).contains(&s.second))
            {
                requests += slot.requests;
                errors += slot.errors;
                for (sum, n) in buckets.iter_mut().zip(slot.buckets) {
                    *sum += u64::from(n);
                }
            }
        }
        let window = now
            .saturating_duration_since(self.start)
            .clamp(Duration::from_secs(1), Duration::from_secs(WINDOW as u64));
        Minute {
            requests,
            errors,
            rate: requests as f64 / window.as_secs_f64(),
            p50: quantile(&buckets, requests, 0.50),
            p99: quantile(&buckets, requests, 0.99),
        }
    }
}

/// The upper bound of the bucket holding the `q` quantile of `count`
/// values.
fn quantile(buckets: &[u64; BUCKETS], count: u64, q: f64) -> Option<Duration> {
    if count == 0 {
        return None;
    }
    // The rank of the value sought, 1-based.
    let rank = ((count as f64 * q).ceil() as u64).clamp(1, count);
    let mut seen = 0;
    for (index, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(upper_bound(index));
        }
    }
    Some(upper_bound(BUCKETS - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn buckets_bound_their_values_within_ten_percent() {
        for millis in [1u64, 2, 7, 50, 333, 1_000, 12_345, 120_000] {
            let d = ms(millis);
            let b = bucket(d.as_secs_f64());
            let upper = upper_bound(b);
            assert!(
                upper >= d.mul_f64(0.999_999),
                "{d:?} above its bucket's {upper:?}"
            );
            assert!(
                upper <= d.mul_f64(1.1 + 1e-9),
                "{d:?}: bound {upper:?} too far"
            );
        }
        assert_eq!(bucket(0.0), 0);
        assert_eq!(bucket(f64::NAN), 0);
        assert_eq!(bucket(1e12), BUCKETS - 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_minute_counts_rate_errors_and_percentiles() {
        let recent = Recent::default();
        tokio::time::advance(Duration::from_secs(120)).await;
        // 98 fast requests, 2 slow ones, over 10 seconds; 3 not 2xx.
        for i in 0..100u64 {
            let slow = i >= 98;
            let duration = if slow { ms(2_000) } else { ms(100) };
            recent.record(Tier::Simple, duration, i % 40 == 0);
            if i % 10 == 9 {
                tokio::time::advance(Duration::from_secs(1)).await;
            }
        }
        let minute = recent.last_minute(Tier::Simple);
        assert_eq!(minute.requests, 100);
        assert_eq!(minute.errors, 3);
        assert!((minute.rate - 100.0 / 60.0).abs() < 1e-9, "{minute:?}");
        let p50 = minute.p50.unwrap();
        assert!(p50 >= ms(100) && p50 <= ms(110), "{p50:?}");
        // The 99th of 100 values is one of the two slow ones.
        let p99 = minute.p99.unwrap();
        assert!(p99 >= ms(2_000) && p99 <= ms(2_200), "{p99:?}");
        // Other tiers saw nothing.
        let moderate = recent.last_minute(Tier::Moderate);
        assert_eq!((moderate.requests, moderate.p50), (0, None));
    }

    #[tokio::test(start_paused = true)]
    async fn requests_older_than_a_minute_leave_the_window() {
        let recent = Recent::default();
        recent.record(Tier::Complex, ms(5), false);
        tokio::time::advance(Duration::from_secs(30)).await;
        recent.record(Tier::Complex, ms(5), true);
        assert_eq!(recent.last_minute(Tier::Complex).requests, 2);
        // Young: the rate is over the 30 s lived so far.
        assert!((recent.last_minute(Tier::Complex).rate - 2.0 / 30.0).abs() < 1e-9);

        tokio::time::advance(Duration::from_secs(31)).await;
        let minute = recent.last_minute(Tier::Complex);
        assert_eq!((minute.requests, minute.errors), (1, 1));

        // A slot reused a minute later starts again from zero.
        tokio::time::advance(Duration::from_secs(60)).await;
        recent.record(Tier::Complex, ms(5), false);
        let minute = recent.last_minute(Tier::Complex);
        assert_eq!((minute.requests, minute.errors), (1, 0));
    }
}
