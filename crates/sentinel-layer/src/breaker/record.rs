//! [`Record`]: what an attempt's end does to its model's breakers.

use std::sync::Arc;

use tokio::time::Instant;

use super::report::AttemptReport;
use super::state::{Breakers, Outcome, Ticket};

/// What to record when an attempt ends.
pub(crate) struct Record {
    provider: Arc<str>,
    model: Arc<str>,
    ticket: Ticket,
    breakers: Arc<Breakers>,
    report: AttemptReport,
}

impl Record {
    pub(crate) fn new(
        (provider, model): (Arc<str>, Arc<str>),
        ticket: Ticket,
        breakers: Arc<Breakers>,
        report: AttemptReport,
    ) -> Self {
        Record {
            provider,
            model,
            ticket,
            breakers,
            report,
        }
    }

    /// The attempt's report.
    pub(crate) fn report(&self) -> AttemptReport {
        self.report.clone()
    }

    /// Records the outcome of the head (or of its absence): a success arms
    /// the attempt's report, whose end decides.
    pub(crate) fn finish(self, outcome: Outcome) {
        if outcome == Outcome::Success {
            let now = Instant::now();
            let (provider, model) = (self.provider, self.model);
            let mut ticket = self.ticket;
            if ticket.is_probe() {
                // A probe that got its answer closes the breaker now: the
                // other requests need not wait for the end of its stream.
                // The rest of the stream is judged in the new generation.
                self.breakers
                    .record(&provider, &model, Outcome::Success, ticket, now);
                match self.breakers.admit(&provider, &model, now) {
                    Ok(fresh) => ticket = fresh,
                    // Opened again meanwhile: nothing left to judge.
                    Err(_) => return,
                }
            }
            // A head is not a whole answer: the outcome waits for the
            // attempt's report (a success when its last clone goes).
            self.report.arm(self.breakers, provider, model, ticket);
            return;
        }
        self.breakers.record(
            &self.provider,
            &self.model,
            outcome,
            self.ticket,
            Instant::now(),
        );
    }
}
