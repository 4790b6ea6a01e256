//! Reading counters (and gauges) recorded through the `metrics` facade in a
//! test.
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
//!     metrics::gauge!("open").set(1.0);
//! });
//! let counters = Counters::take(&snapshotter);
//! assert_eq!(counters.get("requests_total", &[("tier", "simple")]), 2);
//! assert_eq!(counters.get("requests_total", &[("tier", "complex")]), 0);
//! assert_eq!(counters.gauge("open", &[]), Some(1.0));
//! assert_eq!(counters.gauge("closed", &[]), None);
//! ```

use metrics_util::debugging::{DebugValue, Snapshotter};

/// A metric's name and labels.
type MetricKey = (String, Vec<(String, String)>);

/// Counters drained from a debugging recorder, with the gauges' values at
/// that moment, ready to query. Taking a snapshot resets both in the
/// recorder: a counter starts again from 0, and a gauge reads 0 until it is
/// set again.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    counters: Vec<(MetricKey, u64)>,
    gauges: Vec<(MetricKey, f64)>,
}

impl Counters {
    /// Drains every counter from `snapshotter`, and reads every gauge.
    pub fn take(snapshotter: &Snapshotter) -> Self {
        let mut taken = Counters::default();
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let key = key.key();
            let labels = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            let key = (key.name().to_owned(), labels);
            match value {
                DebugValue::Counter(n) => taken.counters.push((key, n)),
                DebugValue::Gauge(value) => taken.gauges.push((key, value.0)),
                DebugValue::Histogram(_) => {}
            }
        }
        taken
    }

    /// The counter named `name` with exactly `labels` (in any order); 0 when absent.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.counters
            .iter()
            .filter(|(key, _)| matches(key, name, labels))
            .map(|(_, v)| v)
            .sum()
    }

    /// The sum of every counter named `name`, whatever its labels.
    pub fn total(&self, name: &str) -> u64 {
        self.counters
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|(_, v)| v)
            .sum()
    }

    /// The value of the gauge named `name` with exactly `labels` (in any
    /// order); `None` when it was never set.
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.gauges
            .iter()
            .find(|(key, _)| matches(key, name, labels))
            .map(|(_, v)| *v)
    }
}

/// Whether `key` is `name` with exactly `labels`, in any order.
fn matches((n, l): &MetricKey, name: &str, labels: &[(&str, &str)]) -> bool {
    n == name
        && l.len() == labels.len()
        && labels
            .iter()
            .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
}
