//! The backoff stage as a Tower service.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use http_body_util::Either;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;

use super::report::AttemptReport;
use super::state::{Breakers, Outcome, Ticket, TicketSlot};
use crate::body::{ResponseBody, RoutedBody};
use crate::decision::RoutingDecision;
use crate::upstream::{BoxError, UpstreamError};

/// The circuit-breaking backoff stage: refuses an attempt on a model whose
/// breaker is open and records every attempt's outcome. Requests without a
/// [`RoutingDecision`] pass through untouched.
#[derive(Clone)]
pub struct Backoff<S> {
    inner: S,
    breakers: Arc<Breakers>,
}

impl<S> std::fmt::Debug for Backoff<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backoff").finish_non_exhaustive()
    }
}

impl<S> Backoff<S> {
    pub(crate) fn new(inner: S, breakers: Arc<Breakers>) -> Self {
        Backoff { inner, breakers }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the stage, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResBody> Service<Request<RoutedBody<B>>> for Backoff<S>
where
    S: Service<Request<RoutedBody<B>>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = UpstreamError;
    type Future = BackoffFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| UpstreamError::classify(e.into()))
    }

    fn call(&mut self, mut req: Request<RoutedBody<B>>) -> Self::Future {
        let Some(decision) = req.extensions().get::<RoutingDecision>().cloned() else {
            return BackoffFuture::called(self.inner.call(req), None);
        };
        // Chosen and admitted in one step by the selector; admitted here
        // only when the request was routed some other way.
        let ticket = match req
            .extensions()
            .get::<TicketSlot>()
            .and_then(TicketSlot::take)
        {
            Some(ticket) => ticket,
            None => match self
                .breakers
                .admit(&decision.provider, &decision.model, Instant::now())
            {
                Ok(ticket) => ticket,
                Err(until) => return BackoffFuture::refused(UpstreamError::backing_off(until)),
            },
        };
        let report = AttemptReport::default();
        req.extensions_mut().insert(report.clone());
        let record = Record::new(decision, ticket, self.breakers.clone(), report);
        BackoffFuture::called(self.inner.call(req), Some(record))
    }
}

/// What to record when an attempt ends.
pub(crate) struct Record {
    decision: RoutingDecision,
    ticket: Ticket,
    breakers: Arc<Breakers>,
    report: AttemptReport,
}

impl Record {
    pub(crate) fn new(
        decision: RoutingDecision,
        ticket: Ticket,
        breakers: Arc<Breakers>,
        report: AttemptReport,
    ) -> Self {
        Record {
            decision,
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
            let (provider, model) = (self.decision.provider, self.decision.model);
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
            &self.decision.provider,
            &self.decision.model,
            outcome,
            self.ticket,
            Instant::now(),
        );
    }
}

pin_project! {
    /// The future of [`Backoff`].
    pub struct BackoffFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Refused { error: Option<UpstreamError> },
        Called {
            #[pin]
            future: F,
            record: Option<Record>,
        },
    }
}

impl<F> BackoffFuture<F> {
    fn refused(error: UpstreamError) -> Self {
        BackoffFuture {
            state: State::Refused { error: Some(error) },
        }
    }

    fn called(future: F, record: Option<Record>) -> Self {
        BackoffFuture {
            state: State::Called { future, record },
        }
    }
}

impl<F, ResBody, E> Future for BackoffFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, UpstreamError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Refused { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| UpstreamError::other("polled after completion")))),
            StateProj::Called { future, record } => {
                let result = ready!(future.poll(cx));
                let Some(record) = record.take() else {
                    return Poll::Ready(
                        result
                            .map(|r| r.map(Either::Left))
                            .map_err(|e| UpstreamError::classify(e.into())),
                    );
                };
                match result {
                    Ok(response) => {
                        let outcome = Outcome::of_head(response.status(), response.headers());
                        let decision = record.decision.clone();
                        record.finish(outcome);
                        let mut response = response.map(Either::Left);
                        response.extensions_mut().insert(decision);
                        Poll::Ready(Ok(response))
                    }
                    Err(e) => {
                        let error = UpstreamError::classify(e.into());
                        record.finish(Outcome::of_error(&error));
                        Poll::Ready(Err(error))
                    }
                }
            }
        }
    }
}
