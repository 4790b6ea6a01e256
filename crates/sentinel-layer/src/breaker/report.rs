//! [`AttemptReport`]: how an attempt's outcome is known when it shows only
//! after the response head.

use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use super::state::{Breakers, Outcome, Ticket};

/// A handle in every routed request's extensions through which the inner
/// service says how an attempt that answered `2xx` ended.
///
/// A response head says little about a stream: it can still break, stall
/// past its idle timeout or carry a provider's error event. So when the
/// head is a success, the attempt's outcome waits for its report: the
/// attempt counts as a success of its model (closing its breakers) when
/// the last clone of the report is dropped, as a failure when
/// [`failed`](AttemptReport::failed) was called, and as nothing at all
/// when [`cancelled`](AttemptReport::cancelled) was (the client went away:
/// not the model's fault). An inner service that keeps no clone (an app's
/// plain handler) has its success counted when it drops the request.
///
/// # Example
///
/// ```
/// use sentinel_layer::AttemptReport;
///
/// fn on_stream_end(report: Option<AttemptReport>, broke: bool, client_left: bool) {
///     let Some(report) = report else { return };
///     if broke {
///         report.failed();
///     } else if client_left {
///         report.cancelled();
///     }
///     // Dropped after a clean end: a success.
/// }
/// # let _ = on_stream_end;
/// ```
#[derive(Clone, Default)]
pub struct AttemptReport(Arc<Slot>);

#[derive(Default)]
struct Slot(Mutex<Option<Pending>>);

/// An outcome waiting to be recorded.
struct Pending {
    breakers: Arc<Breakers>,
    provider: Arc<str>,
    model: Arc<str>,
    ticket: Ticket,
}

impl Slot {
    fn take(&self) -> Option<Pending> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(p) = self.take() {
            p.breakers.record(
                &p.provider,
                &p.model,
                Outcome::Success,
                p.ticket,
                Instant::now(),
            );
        }
    }
}

impl std::fmt::Debug for AttemptReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pending = self.0.0.lock().map(|p| p.is_some()).unwrap_or(false);
        f.debug_struct("AttemptReport")
            .field("pending", &pending)
            .finish()
    }
}

impl AttemptReport {
    /// The head was a success: the outcome waits for the report.
    pub(crate) fn arm(
        &self,
        breakers: Arc<Breakers>,
        provider: Arc<str>,
        model: Arc<str>,
        ticket: Ticket,
    ) {
        let mut slot = self.0.0.lock().unwrap_or_else(|p| p.into_inner());
        *slot = Some(Pending {
            breakers,
            provider,
            model,
            ticket,
        });
    }

    /// The attempt failed after its head: counted against the model. Later
    /// calls, and calls for an attempt whose head already failed, do
    /// nothing.
    pub fn failed(&self) {
        if let Some(p) = self.0.take() {
            let outcome = Outcome::ModelFailure { retry_after: None };
            p.breakers
                .record(&p.provider, &p.model, outcome, p.ticket, Instant::now());
        }
    }

    /// The attempt ended for a reason that is not the model's (the client
    /// went away): nothing is recorded, and a probe slot it held is freed.
    pub fn cancelled(&self) {
        drop(self.0.take());
    }
}
