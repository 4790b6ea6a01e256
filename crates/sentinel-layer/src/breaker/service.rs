//! The backoff stage as a Tower service.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::Either;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;

use super::report::AttemptReport;
use super::state::{Breakers, Outcome, Ticket, TicketSlot};
use crate::body::{ResponseBody, RoutedBody};
use crate::decision::RoutingDecision;
use crate::upstream::{BoxError, UpstreamError, UpstreamErrorKind};

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

/// Whether a response status is a retryable failure: 429 or 5xx.
pub(crate) fn is_retryable_status(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// Whether a trailers-only gRPC response says the model could not serve:
/// `grpc-status` UNAVAILABLE (14), RESOURCE_EXHAUSTED (8) or
/// DEADLINE_EXCEEDED (4). (A status in the trailers of a streamed body is
/// not seen: the outcome is decided on the response head.)
pub(crate) fn is_grpc_unavailable(headers: &HeaderMap) -> bool {
    matches!(
        headers.get("grpc-status").map(|v| v.as_bytes()),
        Some(b"14" | b"8" | b"4")
    )
}

/// The upstream's `Retry-After`, in delta-seconds or as an HTTP-date (then
/// the time left until it, zero when it has passed), when it sent one.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    // A day at most: a provider's word is a hint, not a reason to park a
    // model for years (or to overflow a clock).
    const CAP: Duration = Duration::from_secs(86_400);
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(CAP));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .min(CAP),
    )
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

/// What a response head says of its model: a retryable status or an
/// unavailable gRPC status is a failure (with the provider's
/// `Retry-After`); anything else, a success so far.
pub(crate) fn head_outcome(status: StatusCode, headers: &HeaderMap) -> Outcome {
    if is_retryable_status(status) || is_grpc_unavailable(headers) {
        Outcome::ModelFailure {
            retry_after: retry_after(headers),
        }
    } else {
        Outcome::Success
    }
}

/// What a failure before the head says: the provider when it could not be
/// reached, else the model.
pub(crate) fn error_outcome(error: &UpstreamError) -> Outcome {
    match error.kind() {
        UpstreamErrorKind::Connect => Outcome::ConnectFailure,
        _ => Outcome::ModelFailure { retry_after: None },
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
                        let outcome = head_outcome(response.status(), response.headers());
                        let decision = record.decision.clone();
                        record.finish(outcome);
                        let mut response = response.map(Either::Left);
                        response.extensions_mut().insert(decision);
                        Poll::Ready(Ok(response))
                    }
                    Err(e) => {
                        let error = UpstreamError::classify(e.into());
                        record.finish(error_outcome(&error));
                        Poll::Ready(Err(error))
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_read_from_the_head() {
        assert!(is_retryable_status(StatusCode::TOO_MANY_REQUESTS));
        assert!(is_retryable_status(StatusCode::BAD_GATEWAY));
        assert!(!is_retryable_status(StatusCode::BAD_REQUEST));
        let mut headers = HeaderMap::new();
        assert!(!is_grpc_unavailable(&headers));
        headers.insert("grpc-status", http::HeaderValue::from_static("14"));
        assert!(is_grpc_unavailable(&headers));
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
        assert!(
            !is_grpc_unavailable(&headers),
            "INVALID_ARGUMENT is the caller's"
        );
        headers.insert(header::RETRY_AFTER, http::HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        let date = httpdate::fmt_http_date(later);
        headers.insert(header::RETRY_AFTER, date.parse().unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(
            (Duration::from_secs(115)..=Duration::from_secs(120)).contains(&wait),
            "{wait:?}"
        );
        headers.insert(
            header::RETRY_AFTER,
            http::HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO), "a date passed");
        headers.insert(header::RETRY_AFTER, http::HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
        headers.insert(
            header::RETRY_AFTER,
            http::HeaderValue::from_static("18446744073709551615"),
        );
        assert_eq!(
            retry_after(&headers),
            Some(Duration::from_secs(86_400)),
            "capped at a day"
        );
    }
}
