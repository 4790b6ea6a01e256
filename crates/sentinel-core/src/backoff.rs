//! How long a failing model or provider waits before it is tried again.
//!
//! After `n` consecutive failures the wait is
//! `min(max(initial * 2^(n-1), retry_after), cap)`: 30 s, 60 s, 120 s, ...
//! capped at 300 s by default. A `Retry-After` from the upstream is a floor,
//! never above the cap. A success resets the count, so the next failure
//! waits `initial` again. The schedule holds no clock: deadlines belong to
//! the caller.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use sentinel_core::BackoffSchedule;
//!
//! let s = BackoffSchedule::default();
//! assert_eq!(s.wait(1, None), Duration::from_secs(30));
//! assert_eq!(s.wait(2, None), Duration::from_secs(60));
//! assert_eq!(s.wait(9, None), Duration::from_secs(300));
//! // Retry-After is a floor below the cap.
//! assert_eq!(s.wait(1, Some(Duration::from_secs(90))), Duration::from_secs(90));
//! assert_eq!(s.wait(1, Some(Duration::from_secs(9000))), Duration::from_secs(300));
//!
//! assert!(BackoffSchedule::new(Duration::from_secs(10), Duration::from_secs(5)).is_err());
//! ```

use std::fmt;
use std::time::Duration;

/// The backoff schedule: an initial wait that doubles per consecutive failure, up to a cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffSchedule {
    initial: Duration,
    cap: Duration,
}

impl BackoffSchedule {
    /// The default initial wait: 30 s.
    pub const DEFAULT_INITIAL: Duration = Duration::from_secs(30);
    /// The default cap: 300 s.
    pub const DEFAULT_CAP: Duration = Duration::from_secs(300);

    /// A schedule starting at `initial` and capped at `cap`. Requires
    /// `initial > 0` and `cap >= initial`.
    pub fn new(initial: Duration, cap: Duration) -> Result<Self, InvalidBackoff> {
        if initial.is_zero() {
            return Err(InvalidBackoff("the initial wait must be greater than zero"));
        }
        if cap < initial {
            return Err(InvalidBackoff("the cap must be at least the initial wait"));
        }
        Ok(BackoffSchedule { initial, cap })
    }

    /// The initial wait.
    pub fn initial(&self) -> Duration {
        self.initial
    }

    /// The longest wait.
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// The wait after `consecutive_failures` failures in a row, with an
    /// optional `Retry-After` from the upstream. Zero failures: no wait.
    pub fn wait(&self, consecutive_failures: u32, retry_after: Option<Duration>) -> Duration {
        if consecutive_failures == 0 {
            return Duration::ZERO;
        }
        // 2^(n-1), saturating: past 2^31 the cap has long been reached.
        let factor = 1u32
            .checked_shl(consecutive_failures - 1)
            .unwrap_or(u32::MAX);
        let doubled = self.initial.saturating_mul(factor);
        doubled
            .max(retry_after.unwrap_or(Duration::ZERO))
            .min(self.cap)
    }
}

impl Default for BackoffSchedule {
    fn default() -> Self {
        BackoffSchedule {
            initial: Self::DEFAULT_INITIAL,
            cap: Self::DEFAULT_CAP,
        }
    }
}

/// A backoff schedule that breaks a rule (zero initial wait, cap below it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidBackoff(&'static str);

impl fmt::Display for InvalidBackoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid backoff: {}", self.0)
    }
}

impl std::error::Error for InvalidBackoff {}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn doubles_from_initial_up_to_the_cap() {
        let s = BackoffSchedule::default();
        let waits: Vec<_> = (0..8).map(|n| s.wait(n, None)).collect();
        assert_eq!(
            waits,
            [S(0), S(30), S(60), S(120), S(240), S(300), S(300), S(300)]
        );
        assert_eq!(s.wait(u32::MAX, None), S(300));
        assert_eq!(s.wait(33, None), S(300));
    }

    #[test]
    fn retry_after_is_a_floor_below_the_cap() {
        let s = BackoffSchedule::default();
        assert_eq!(s.wait(3, Some(S(10))), S(120));
        assert_eq!(s.wait(3, Some(S(200))), S(200));
        assert_eq!(s.wait(3, Some(S(301))), S(300));
        assert_eq!(s.wait(3, Some(Duration::MAX)), S(300));
    }

    #[test]
    fn custom_schedules_are_validated() {
        assert!(BackoffSchedule::new(Duration::ZERO, S(1)).is_err());
        assert!(BackoffSchedule::new(S(2), S(1)).is_err());
        let err = BackoffSchedule::new(S(2), S(1)).unwrap_err();
        assert!(err.to_string().contains("cap"), "{err}");
        let s =
            BackoffSchedule::new(Duration::from_millis(100), Duration::from_millis(100)).unwrap();
        assert_eq!(s.wait(5, None), Duration::from_millis(100));
        let s = BackoffSchedule::new(S(1), S(10)).unwrap();
        assert_eq!((s.initial(), s.cap()), (S(1), S(10)));
        assert_eq!(s.wait(4, None), S(8));
        assert_eq!(s.wait(5, None), S(10));
    }
}
