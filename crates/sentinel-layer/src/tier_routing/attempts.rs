//! The attempts of a routed request: the first on the model the routing
//! step chose and admitted, and at most one retry on the next model of the
//! tier ([`crate::retry`]'s rule).
//!
//! Each attempt carries its own [`RoutingDecision`], [`AttemptReport`] and
//! (for a buffered body) [`RouteContext`] to the inner service, and its
//! outcome goes to its model's breakers through a [`Record`] when its
//! head (or its failure) comes back. This is what tower's `Retry` over a
//! backoff service did as two stages; done here in one future, a request
//! is not copied per stage, and the head a retry needs is kept only when
//! the tier has another model to retry on.
//!
//! An inner service that fails to get ready was not called: that attempt
//! is not recorded and not retried (tower's contract is that such a
//! service is discarded), and the request is answered from the error.

use std::future::poll_fn;

use bytes::Bytes;
use http::request::Parts;
use http::{Extensions, HeaderMap, HeaderValue, Method, Request, Response, Uri, Version, header};
use http_body_util::Either;
use tokio::time::Instant;
use tower_service::Service;

use super::Shared;
use crate::body::{ResponseBody, RoutedBody, StreamUsageAdded};
use crate::breaker::AttemptReport;
use crate::breaker::record::Record;
use crate::breaker::state::{Outcome, Ticket};
use crate::decision::{RoutingDecision, SelectionReason};
use crate::retry::{Failure, MAX_ATTEMPTS, RouteContext, next_decision};
use crate::upstream::{BoxError, UpstreamError};

/// An attempt about to be made: its model, admitted.
pub(super) struct Attempt {
    pub(super) decision: RoutingDecision,
    pub(super) ticket: Ticket,
    /// The layer asked for the stream's usage chunk ([`StreamUsageAdded`]).
    pub(super) usage_added: bool,
}

/// The request head a retry is sent with: the client's method, URI,
/// version, headers and the extensions the caller set (the layer's own are
/// made again for each attempt).
struct RetryHead {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: Extensions,
}

impl RetryHead {
    fn of(parts: &Parts) -> Self {
        RetryHead {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            extensions: parts.extensions.clone(),
        }
    }

    fn into_parts(self) -> Parts {
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.method = self.method;
        parts.uri = self.uri;
        parts.version = self.version;
        parts.headers = self.headers;
        parts.extensions = self.extensions;
        parts
    }
}

/// The answer of a request's attempts, with the decision of the attempt
/// that gave it; or the error its last attempt failed with, when that is
/// not answered in Sentinel's envelope here (a gRPC call, an inner service
/// that failed to get ready).
pub(super) type Answered<ResBody> =
    Result<(Response<ResponseBody<ResBody>>, RoutingDecision), (UpstreamError, RoutingDecision)>;

/// Runs the attempts of a routed request whose head is `parts`: `body` is
/// the untouched body of a gRPC call (`context` is `None` then, and it is
/// never retried), else each attempt's body is rendered from `context`.
/// A buffered request's last failure is answered in Sentinel's envelope
/// ([`Failure::final_answer`]).
pub(super) async fn run<S, B, ResBody>(
    shared: &Shared,
    mut inner: S,
    mut parts: Parts,
    mut body: Option<RoutedBody<B>>,
    context: Option<RouteContext>,
    first: Attempt,
) -> Answered<ResBody>
where
    S: Service<Request<RoutedBody<B>>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    let usage_added = first.usage_added;
    // The head is copied only when a retry could use it.
    let mut retry_head = context
        .as_ref()
        .filter(|c| c.config.tier(first.decision.tier).len() > 1)
        .map(|_| RetryHead::of(&parts));
    let (mut decision, mut ticket) = (first.decision, first.ticket);
    loop {
        let report = AttemptReport::default();
        let record = Record::new(
            (decision.provider.clone(), decision.model.clone()),
            ticket,
            shared.selector.breakers.clone(),
            report.clone(),
        );
        let attempt_body = match &context {
            Some(context) => {
                let bytes = context.template.render(&decision.model);
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                parts.extensions.insert(context.clone());
                RoutedBody::buffered(bytes)
            }
            // Only a gRPC call has no context, and it has one attempt.
            None => body
                .take()
                .unwrap_or_else(|| RoutedBody::buffered(Bytes::new())),
        };
        parts.extensions.insert(decision.clone());
        parts.extensions.insert(report);
        if usage_added {
            parts.extensions.insert(StreamUsageAdded);
        }
        let request = Request::from_parts(parts, attempt_body);
        let result = match call(&mut inner, request, record).await {
            Called::Answered(result) => result,
            Called::NotReady(e) => return Err((e, decision)),
        };

        let Some(context) = &context else {
            return match result {
                Ok(response) => Ok((response.map(Either::Left), decision)),
                Err(e) => Err((e, decision)),
            };
        };
        let Some(failure) = Failure::of(&result) else {
            // The answer stands (`Failure::of` is `None` only for a response).
            return match result {
                Ok(response) => Ok((response.map(Either::Left), decision)),
                Err(e) => Err((e, decision)),
            };
        };
        if decision.attempt < MAX_ATTEMPTS
            && let Some(head) = retry_head.take()
            && let Some((next, next_ticket)) =
                failure.next_model(context, &decision, Instant::now())
        {
            decision = next_decision(&decision, next, SelectionReason::Retry);
            ticket = next_ticket;
            parts = head.into_parts();
            continue;
        }
        return match failure.final_answer(&decision) {
            Some(error) => Ok((error.into_response().map(Either::Right), decision)),
            // No larger model: the provider's own answer (a `400`) stands.
            None => match result {
                Ok(response) => Ok((response.map(Either::Left), decision)),
                Err(e) => Err((e, decision)),
            },
        };
    }
}

/// How an attempt went.
enum Called<ResBody> {
    /// The inner service was called: its answer, or its failure.
    Answered(Result<Response<ResBody>, UpstreamError>),
    /// The inner service failed to get ready, and was not called.
    NotReady(UpstreamError),
}

/// One attempt: the inner service called once it is ready, and the outcome
/// of the head (or of its absence) recorded. An inner service that fails
/// to get ready was not called: nothing is recorded, and the ticket goes.
async fn call<S, B, ResBody>(
    inner: &mut S,
    request: Request<RoutedBody<B>>,
    record: Record,
) -> Called<ResBody>
where
    S: Service<Request<RoutedBody<B>>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    if let Err(e) = poll_fn(|cx| inner.poll_ready(cx)).await {
        return Called::NotReady(UpstreamError::classify(e.into()));
    }
    let result = inner
        .call(request)
        .await
        .map_err(|e| UpstreamError::classify(e.into()));
    match &result {
        Ok(response) => record.finish(Outcome::of_head(response.status(), response.headers())),
        Err(e) => record.finish(Outcome::of_error(e)),
    }
    Called::Answered(result)
}
