//! Reading counters recorded through the `metrics` facade in a test.
//!
//! Install a `metrics_util` debugging recorder for the test's thread, run
//! the code, then [`Counters::take`] what it counted:
//!
//! ```
//! use metrics_util::debugging::DebuggingRecorder;
//! use sentinel_testkit::metrics::Counters;
//!
//! let recorder = DebuggingRecorder::new();
//! let snapshotter = recorder.snapshotter();
//! metrics::with_local_recorder(&recorder, || {
//!     metrics::counter!("requests_total", "tier" => "simple").increment(2);
//! });
//! let counters = Counters::take(&snapshotter);
//! assert_eq!(counters.get("requests_total", &[("tier", "simple")]), 2);
//! assert_eq!(counters.get("requests_total", &[("tier", "complex")]), 0);
//! ```

use metrics_util::debugging::{DebugValue, Snapshotter};

/// A counter's name and labels.
type CounterKey = (String, Vec<(String, String)>);

/// Counters drained from a debugging recorder (taking a snapshot resets
/// them), ready to query.
#[derive(Debug, Clone, Default)]
pub struct Counters(Vec<(CounterKey, u64)>);

impl Counters {
    /// Drains every counter from `snapshotter`.
    pub fn take(snapshotter: &Snapshotter) -> Self {
        Counters(
            snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .filter_map(|(key, _, _, value)| match value {
                    DebugValue::Counter(n) => {
                        let key = key.key();
                        let labels = key
                            .labels()
                            .map(|l| (l.key().to_owned(), l.value().to_owned()))
                            .collect();
                        Some(((key.name().to_owned(), labels), n))
                    }
                    _ => None,
                })
                .collect(),
        )
    }

    /// The counter named `name` with exactly `labels` (in any order); 0 when absent.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.0
            .iter()
            .filter(|((n, l), _)| {
                n == name
                    && l.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// The sum of every counter named `name`, whatever its labels.
    pub fn total(&self, name: &str) -> u64 {
        self.0
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|(_, v)| v)
            .sum()
    }
}
